/**
 * mdevctl's data, byte for byte: the definition file (`/etc/mdevctl.d/<parent>/<uuid>`), the `list` and `types`
 * listings in text and `--dumpjson` form, and UUID parsing. Everything here is pure: no files, no sockets.
 *
 * The shapes follow mdevctl's src/mdev.rs and src/main.rs (serde_json with `preserve_order`, pretty printed):
 * - a definition is `{"mdev_type": T, "start": "auto"|"manual", "attrs": [{"name": "value"}, ...]}`, keys in that
 *   order, printed with two-space indentation and no trailing newline (serde_json's `to_string_pretty`, which
 *   `JSON.stringify(v, null, 2)` reproduces for these shapes: `[]` for an empty array, `": "` after keys);
 * - `list --dumpjson` is `[{"<parent>": [{"<uuid>": <definition>}, ...], ...}]`, parents in byte order, devices by
 *   UUID, or `[]` when nothing matches; with `-u` and exactly one match, just that device's definition;
 * - `types --dumpjson` is `[{"<parent>": [{"<type>": {"available_instances": N, "device_api": ..., "name": ...,
 *   "description": ...}}]}]`, `name` and `description` omitted when empty, the description's newlines joined by ", ";
 * - a text listing line is `UUID PARENT TYPE auto|manual`, followed by ` (defined)` for a running device that also has
 *   a definition under the same parent, or ` (active)` for a definition that is running; `-v` adds the attributes as
 *   `  Attrs:` then `    @{i}: {"name":"value"}` lines.
 *
 * What it does not model: mdevctl's callout scripts (no `get-attributes` callout: a running device reports the
 * attributes the host applied when it started it), and the `lsmdev` executable name.
 *
 * Validation is stricter than mdevctl in two places, on purpose: `start` must be "auto" or "manual" (mdevctl reads
 * anything else as manual), so a typo in a hand-edited file is reported instead of silently changing behaviour; and
 * an attribute name must be a path inside the device's sysfs folder (`attrNameProblem`; mdevctl joins any name to the
 * device path). The same field schemas serve the file, the control API (protocol.ts) and the store's writer.
 * Problems are reported with the JSON path of the bad field (`attrs[2].assign_adapter: must be a string`).
 *
 * Names are data, never object keys to look up: attributes are lists of `{name, value}`, and the JSON objects the
 * formats need are built with Object.fromEntries, so `__proto__`, `constructor` or `toString` are ordinary names.
 */
import { z } from "zod";

export type StartMode = "auto" | "manual";

/** One entry of a definition's ordered attribute list; the same name may appear several times. */
export interface MdevAttr {
  readonly name: string;
  readonly value: string;
}

/** A definition, as the service handles it (the file format is `DefinitionFile`). */
export interface MdevDefinition {
  readonly mdevType: string;
  readonly start: StartMode;
  readonly attrs: readonly MdevAttr[];
}

/** One row of a listing: a running device, a definition, or both. */
export interface ListedDevice {
  readonly uuid: string;
  readonly parent: string;
  readonly mdevType: string;
  readonly start: StartMode;
  readonly attrs: readonly MdevAttr[];
  /** Running now under this parent with this type. */
  readonly active: boolean;
  /** A definition exists under this parent. */
  readonly defined: boolean;
  /** The daemon's vfio-user socket for this running device (shown by `list -v`; not an mdevctl field). */
  readonly vfioUserSocket?: string;
}

/** One type of a parent, as `types` prints it. */
export interface TypeInfo {
  /** The sysfs directory name, `<driver>-<id>` ("mtty-2"). */
  readonly type: string;
  readonly availableInstances: number;
  readonly deviceApi: string;
  readonly name: string;
  readonly description: string;
  /** Why few or none fit ("ports: 1 left, needs 2"); not part of mdevctl's JSON. */
  readonly reason?: string;
}

/** A parent and its types (possibly none). */
export interface ParentTypes {
  readonly parent: string;
  readonly types: readonly TypeInfo[];
}

// ---- UUIDs ---------------------------------------------------------------------------------------------------------

const HYPHENATED = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SIMPLE = /^[0-9a-f]{32}$/i;

/**
 * Parses a UUID the way mdevctl's `Uuid::parse_str` does (hyphenated, simple 32 digits, `{braced}` or
 * `urn:uuid:` forms, any letter case) and returns it in the canonical lower-case hyphenated form, or undefined.
 */
export function parseUuid(text: string): string | undefined {
  let s = text;
  if (s.length > 9 && s.slice(0, 9).toLowerCase() === "urn:uuid:") s = s.slice(9);
  else if (s.startsWith("{") && s.endsWith("}")) s = s.slice(1, -1);
  if (HYPHENATED.test(s)) return s.toLowerCase();
  if (SIMPLE.test(s)) {
    const h = s.toLowerCase();
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }
  return undefined;
}

/** Whether `text` is already a canonical (lower-case, hyphenated) UUID. */
export function isCanonicalUuid(text: string): boolean {
  return HYPHENATED.test(text) && text === text.toLowerCase();
}

/** Bytes of `s` in UTF-8: what a file system counts against NAME_MAX. */
export function utf8Length(s: string): number {
  return new TextEncoder().encode(s).length;
}

/** NAME_MAX: the longest file name, in bytes. */
const NAME_MAX = 255;

/**
 * A parent or type name is used as a directory name: it must be a single, visible path component. Returns the
 * problem as a sentence fragment, or undefined when the name is usable.
 */
export function badComponentName(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.includes("/")) return "contains '/'";
  if (name.includes("\0")) return "contains a NUL byte";
  if (name.startsWith(".")) return "starts with '.'";
  if (utf8Length(name) > NAME_MAX) return `is longer than ${NAME_MAX} bytes`;
  return undefined;
}

/**
 * The one rule for a vendor attribute name, wherever a name comes in (a definition file, `--jsonfile`, `--addattr`,
 * a control-socket request) and before the store writes one: a path relative to the device's sysfs folder made of
 * plain components, as the mdev core names vendor attributes ("assign_adapter", GVT-g's "intel_vgpu/vgpu_id"). So
 * `../../x`, `/etc/x`, `a//b` and "" are refused everywhere. Names such as `__proto__` or `constructor` are ordinary
 * names (nothing here keeps attributes in a plain object). Returns the problem as a sentence fragment, or undefined.
 */
export function attrNameProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.includes("\0")) return "contains a NUL byte";
  if (name.startsWith("/")) return "starts with '/' (it is a path inside the device's sysfs folder)";
  for (const part of name.split("/")) {
    if (part === "") return "has an empty path component ('//' or a trailing '/')";
    if (part === "." || part === "..")
      return `has a '${part}' path component (it must stay inside the device's folder)`;
    if (utf8Length(part) > NAME_MAX) return `has a path component longer than ${NAME_MAX} bytes`;
  }
  return undefined;
}

/** The rule for an mdev type name in a definition: not empty (the loader refuses an empty `mdev_type`). */
export function mdevTypeProblem(type: string): string | undefined {
  return type.length === 0 ? "is empty" : undefined;
}

// ---- the definition file -------------------------------------------------------------------------------------------

/** The sentence for a refused attribute name. */
function attrNameMessage(name: string, problem: string): string {
  return `attribute name ${JSON.stringify(name)} ${problem}; an attribute name is a path inside the device's sysfs folder, like "assign_adapter" or "vendor/name"`;
}

/** An attribute name (see `attrNameProblem`), for every schema that carries one. */
export const attrNameSchema = z.string().superRefine((name, ctx) => {
  const problem = attrNameProblem(name);
  if (problem !== undefined) ctx.addIssue({ code: "custom", message: attrNameMessage(name, problem) });
});

/** An mdev type name in a definition (see `mdevTypeProblem`). */
export const mdevTypeSchema = z
  .string({ error: (iss) => (iss.input === undefined ? "is required" : "must be a string") })
  .min(1, { error: "must not be empty" });

export const startModeSchema = z.enum(["auto", "manual"], {
  error: (iss) => (iss.input === undefined ? "is required" : 'must be "auto" or "manual"'),
});

/** One attribute in the typed form (the control API's and the service's). */
export const mdevAttrSchema = z.object({ name: attrNameSchema, value: z.string() });

/** A definition in the typed form: what the control API carries and what the store's writer accepts. */
export const mdevDefinitionSchema = z.object({
  mdevType: mdevTypeSchema,
  start: startModeSchema,
  attrs: z.array(mdevAttrSchema),
});

/**
 * `{"name": "value"}`: exactly one member, whose value is a string, read into an `MdevAttr`. Read with
 * Object.entries, not a zod record: a record rebuilds the object by assignment, and `o["__proto__"] = v` sets a
 * prototype instead of a member, so an attribute named `__proto__` would vanish.
 */
const attrEntry = z.unknown().transform((entry, ctx): MdevAttr => {
  if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
    ctx.addIssue({ code: "custom", message: 'must be an object {"name": "value"}' });
    return z.NEVER;
  }
  const members = Object.entries(entry);
  if (members.length !== 1) {
    ctx.addIssue({ code: "custom", message: 'must have exactly one member {"name": "value"}' });
    return z.NEVER;
  }
  const [name, value] = members[0]!;
  const problem = attrNameProblem(name);
  if (problem !== undefined) {
    ctx.addIssue({ code: "custom", message: attrNameMessage(name, problem) });
    return z.NEVER;
  }
  if (typeof value !== "string") {
    ctx.addIssue({ code: "custom", message: "must be a string", path: [name] });
    return z.NEVER;
  }
  return { name, value };
});

/** The on-disk (and `--jsonfile`) format. Unknown members are ignored, as mdevctl does. */
export const definitionFileSchema = z.object(
  {
    mdev_type: mdevTypeSchema,
    start: startModeSchema,
    attrs: z.array(attrEntry, { error: "must be an array" }).nullish(),
  },
  { error: "must be a JSON object" },
);

export type DefinitionFile = z.input<typeof definitionFileSchema>;

/** `attrs[2].assign_adapter`, or "(top level)" for the document itself. */
export function formatJsonPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += out === "" ? String(p) : `.${String(p)}`;
  }
  return out === "" ? "(top level)" : out;
}

/** The first problem zod found, as "path: message". */
export function describeZodError(error: z.ZodError): string {
  const issue = error.issues[0];
  if (!issue) return "invalid";
  return `${formatJsonPath(issue.path)}: ${issue.message}`;
}

/** The 1-based line and column of a character offset, for JSON syntax errors. */
function lineColumn(text: string, offset: number): string {
  let line = 1;
  let col = 1;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      col = 1;
    } else {
      col++;
    }
  }
  return `line ${line} column ${col}`;
}

/**
 * Where JSON.parse gave up: the offset of the first character that cannot continue a JSON document (V8's messages
 * carry a position only for some errors, so a small scanner finds it). Used only after JSON.parse has failed.
 */
export function jsonErrorOffset(text: string): number {
  let i = 0;
  const n = text.length;
  const fail = (): never => {
    throw new RangeError(String(i));
  };
  const ws = () => {
    while (i < n && (text[i] === " " || text[i] === "\t" || text[i] === "\n" || text[i] === "\r")) i++;
  };
  const number = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  const str = () => {
    i++;
    for (;;) {
      if (i >= n) fail();
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return;
      }
      if (c < 0x20) fail();
      if (c === 0x5c) {
        i++;
        const e = text[i];
        if (e === "u") {
          for (let k = 1; k <= 4; k++) {
            if (!/[0-9a-fA-F]/.test(text[i + k] ?? "")) {
              i += k;
              fail();
            }
          }
          i += 5;
          continue;
        }
        if (e === undefined || !'"\\/bfnrt'.includes(e)) fail();
      }
      i++;
    }
  };
  const value = (depth: number): void => {
    if (depth > 512) fail();
    ws();
    const c = text[i];
    if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      i++;
      ws();
      if (text[i] === close) {
        i++;
        return;
      }
      for (;;) {
        if (c === "{") {
          ws();
          if (text[i] !== '"') fail();
          str();
          ws();
          if (text[i] !== ":") fail();
          i++;
        }
        value(depth + 1);
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === close) {
          i++;
          return;
        }
        fail();
      }
    }
    if (c === '"') {
      str();
      return;
    }
    number.lastIndex = i;
    if (number.test(text)) {
      i = number.lastIndex;
      return;
    }
    for (const lit of ["true", "false", "null"]) {
      if (text.startsWith(lit, i)) {
        i += lit.length;
        return;
      }
    }
    fail();
  };
  try {
    value(0);
    ws();
    if (i < n) fail();
    return -1;
  } catch (e) {
    if (e instanceof RangeError && /^\d+$/.test(e.message)) return Number(e.message);
    throw e;
  }
}

export type ParseResult =
  | { readonly ok: true; readonly definition: MdevDefinition }
  | { readonly ok: false; readonly problem: string };

/**
 * Parses a definition file's text. A problem is a sentence fragment naming where it is: "not valid JSON (line 3
 * column 5)" or "attrs[1]: must be an object ...".
 */
export function parseDefinitionText(text: string): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    if (text.trim() === "") return { ok: false, problem: "not valid JSON (the file is empty)" };
    return { ok: false, problem: `not valid JSON (${lineColumn(text, jsonErrorOffset(text))})` };
  }
  return parseDefinitionValue(value);
}

/** Validates an already-parsed JSON value as a definition. */
export function parseDefinitionValue(value: unknown): ParseResult {
  const r = definitionFileSchema.safeParse(value);
  if (!r.success) return { ok: false, problem: describeZodError(r.error) };
  return { ok: true, definition: { mdevType: r.data.mdev_type, start: r.data.start, attrs: r.data.attrs ?? [] } };
}

/**
 * An object with exactly these own members, in this order. Object.fromEntries defines members, so a name such as
 * `__proto__` becomes a member as JSON.stringify expects; assigning `o[name] = v` into `{}` would set the prototype.
 */
function jsonObject<T>(entries: Iterable<readonly [string, T]>): Record<string, T> {
  return Object.fromEntries(entries);
}

/** The JSON value mdevctl writes for a definition (key order is part of the format). */
export function definitionToJson(def: MdevDefinition): {
  mdev_type: string;
  start: StartMode;
  attrs: Record<string, string>[];
} {
  return {
    mdev_type: def.mdevType,
    start: def.start,
    attrs: def.attrs.map((a) => jsonObject([[a.name, a.value]])),
  };
}

/** serde_json's `to_string_pretty`: two-space indentation, no trailing newline. */
export function prettyJson(value: unknown): string {
  return JSON.stringify(value, null, 2);
}

/** The definition file's contents, as mdevctl writes them. */
export function formatDefinitionFile(def: MdevDefinition): string {
  return prettyJson(definitionToJson(def));
}

// ---- listings ------------------------------------------------------------------------------------------------------

/** Rust's `String` order (byte-wise), which BTreeMap and `sort` use in mdevctl. */
export function byteOrder(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function groupByParent<T extends { readonly parent: string }>(items: readonly T[]): [string, T[]][] {
  const map = new Map<string, T[]>();
  for (const it of items) {
    let list = map.get(it.parent);
    if (!list) {
      list = [];
      map.set(it.parent, list);
    }
    list.push(it);
  }
  return [...map.entries()].sort((a, b) => byteOrder(a[0], b[0]));
}

/** Devices in mdevctl's order: parents in byte order, devices by UUID within each parent. */
export function sortDevices(devices: readonly ListedDevice[]): ListedDevice[] {
  return groupByParent(devices).flatMap(([, list]) => list.sort((a, b) => byteOrder(a.uuid, b.uuid)));
}

/**
 * `list --dumpjson`. With `uuid` given and at most one device, only that device's definition (or `[]`), which can
 * be piped into a definition file; otherwise the whole hierarchy.
 */
export function formatListJson(devices: readonly ListedDevice[], uuidGiven: boolean): string {
  if (uuidGiven && devices.length <= 1) {
    const d = devices[0];
    return prettyJson(d ? definitionToJson(d) : []);
  }
  const groups = groupByParent(devices);
  if (groups.length === 0) return prettyJson([]);
  const parents = jsonObject(
    groups.map(([parent, list]) => [
      parent,
      list.sort((a, b) => byteOrder(a.uuid, b.uuid)).map((d) => jsonObject([[d.uuid, definitionToJson(d)]])),
    ]),
  );
  return prettyJson([parents]);
}

function formatAttrs(attrs: readonly MdevAttr[]): string {
  if (attrs.length === 0) return "";
  let out = "  Attrs:\n";
  attrs.forEach((a, i) => {
    out += `    @{${i}}: {"${a.name}":"${a.value}"}\n`;
  });
  return out;
}

/** The plain listing; `defined` selects the `list -d` suffix rule. */
export function formatListText(devices: readonly ListedDevice[], defined: boolean, verbose: boolean): string {
  let out = "";
  for (const d of sortDevices(devices)) {
    out += `${d.uuid} ${d.parent} ${d.mdevType} ${d.start}`;
    if (defined && d.active) out += " (active)";
    if (!defined && d.defined) out += " (defined)";
    out += "\n";
    if (verbose) {
      out += formatAttrs(d.attrs);
      if (d.vfioUserSocket !== undefined) out += `  vfio-user: ${d.vfioUserSocket}\n`;
    }
  }
  return out;
}

/** A type's description as mdevctl shows it: trimmed, lines joined with ", ". */
export function flattenDescription(description: string): string {
  return description.trim().replace(/\n/g, ", ");
}

function sortParents(parents: readonly ParentTypes[]): ParentTypes[] {
  return [...parents]
    .sort((a, b) => byteOrder(a.parent, b.parent))
    .map((p) => ({ parent: p.parent, types: [...p.types].sort((a, b) => byteOrder(a.type, b.type)) }));
}

/** `types --dumpjson`. A parent with no types still appears, with an empty list, as in mdevctl. */
export function formatTypesJson(parents: readonly ParentTypes[]): string {
  if (parents.length === 0) return prettyJson([]);
  const out = jsonObject(
    sortParents(parents).map((p) => [
      p.parent,
      p.types.map((t) => {
        const body: Record<string, unknown> = { available_instances: t.availableInstances, device_api: t.deviceApi };
        const name = t.name.trim();
        const description = flattenDescription(t.description);
        if (name !== "") body.name = name;
        if (description !== "") body.description = description;
        return jsonObject([[t.type, body]]);
      }),
    ]),
  );
  return prettyJson([out]);
}

/**
 * `types` as text. One addition to mdevctl's layout: when the parent says why few or no instances fit, the reason
 * follows the count in parentheses ("Available instances: 0 (ports: 1 left, needs 2)").
 */
export function formatTypesText(parents: readonly ParentTypes[]): string {
  let out = "";
  for (const p of sortParents(parents)) {
    out += `${p.parent}\n`;
    for (const t of p.types) {
      out += `  ${t.type}\n`;
      out += `    Available instances: ${t.availableInstances}${t.reason ? ` (${t.reason})` : ""}\n`;
      out += `    Device API: ${t.deviceApi}\n`;
      const name = t.name.trim();
      const description = flattenDescription(t.description);
      if (name !== "") out += `    Name: ${name}\n`;
      if (description !== "") out += `    Description: ${description}\n`;
    }
  }
  return out;
}
