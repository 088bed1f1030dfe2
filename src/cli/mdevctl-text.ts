/**
 * mdevctl's data as text, with no schema library: UUIDs, the rules for parent, type and attribute names, the
 * definition file's JSON form, and the `list`/`types` listings (text and `--dumpjson`). Everything here is pure, and
 * it is what the command line needs on its quick path (`vgpu list`, `vgpu types`); mdevctl-json.ts adds the zod
 * schemas that read definition files and re-exports all of this. See mdevctl-json.ts for the formats' rules.
 */

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

/**
 * The one sentence for a malformed UUID, wherever one is given (`-u`, `--uuid` of `vgpu serve`, the control
 * socket), naming where it came from.
 */
export function invalidUuidMessage(text: string, where: string): string {
  return `invalid UUID '${text}' for ${where}: expected 32 hex digits as 8-4-4-4-12, like 17c20459-7bfe-4c59-abcc-469533972698`;
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

// ---- JSON syntax errors -------------------------------------------------------------------------------------------

/** The 1-based line and column of a character offset, for JSON syntax errors. */
export function lineColumn(text: string, offset: number): string {
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
