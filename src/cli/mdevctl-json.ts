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
 * The pure half (UUIDs, names, listings) lives in mdevctl-text.ts, re-exported here, so the command line's quick
 * path needs no zod; this module adds the schemas that read files. Callout scripts are callouts.ts.
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
import { attrNameProblem, jsonErrorOffset, lineColumn, type MdevAttr, type MdevDefinition } from "./mdevctl-text.ts";

export * from "./mdevctl-text.ts";

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

export type AttrsParseResult =
  | { readonly ok: true; readonly attrs: MdevAttr[] }
  | { readonly ok: false; readonly problem: string };

const attrListSchema = z.array(attrEntry, { error: "must be an array" }).nullable();

/** A JSON attribute list (`[{"name": "value"}, ...]`, or null for none), as a `get attributes` callout prints it. */
export function parseAttrsJson(text: string): AttrsParseResult {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, problem: `not valid JSON (${lineColumn(text, jsonErrorOffset(text))})` };
  }
  const r = attrListSchema.safeParse(value);
  if (!r.success) return { ok: false, problem: describeZodError(r.error) };
  return { ok: true, attrs: r.data ?? [] };
}
