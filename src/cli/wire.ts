/**
 * The control API's wire without a schema library: the line framing (`encodeLine`, `LineSplitter`), and the checks
 * the command line applies to the host's answers (`checkResponse`, `checkResult`). protocol.ts describes the same
 * messages with zod for the host, which decodes requests; the command line, which only reads answers, checks them
 * against the small shape tables here so that `vgpu list` does not load zod (about 70 ms of a ~150 ms start).
 *
 * A shape is a leaf (`"string"`, `"int"`, `"boolean"`, `"start"`: "auto" or "manual"), a leaf with `?` (may be
 * absent), a one-element array (every element has that shape) or an object of field shapes (other fields are
 * ignored, as zod's objects do). `wire.test.ts` checks the tables against protocol.ts's schemas.
 */

export const PROTOCOL_VERSION = 1;
export const MAX_LINE_BYTES = 1 << 20;

type Leaf = "string" | "int" | "boolean" | "start";
export type Shape = Leaf | `${Leaf}?` | readonly [Shape] | { readonly [field: string]: Shape };

const attr: Shape = { name: "string", value: "string" };

const listedDevice: Shape = {
  uuid: "string",
  parent: "string",
  mdevType: "string",
  start: "start",
  attrs: [attr],
  active: "boolean",
  defined: "boolean",
  iommuGroup: "int?",
  sysfsPath: "string?",
  driver: "string?",
  vfioUserSocket: "string?",
};

const typeInfo: Shape = {
  type: "string",
  availableInstances: "int",
  deviceApi: "string",
  name: "string",
  description: "string",
  reason: "string?",
};

const autostartReport: Shape = {
  parent: "string",
  started: ["string"],
  failed: [{ uuid: "string", message: "string" }],
};

/** Each method's result, as the command line checks it. */
export const resultShapes = {
  hello: { server: "string", protocol: "int", pid: "int", root: "string", parents: ["string"] },
  types: { parents: [{ parent: "string", types: [typeInfo] }] },
  list: { devices: [listedDevice] },
  define: { uuid: "string", parent: "string", generated: "boolean" },
  undefine: { removed: [{ uuid: "string", parent: "string" }] },
  modify: { uuid: "string", parent: "string" },
  start: { uuid: "string", parent: "string", mdevType: "string", generated: "boolean" },
  stop: { uuid: "string", parent: "string" },
  startParent: autostartReport,
} as const satisfies Record<string, Shape>;

function leafProblem(value: unknown, leaf: Leaf): string | undefined {
  switch (leaf) {
    case "string":
      return typeof value === "string" ? undefined : "must be a string";
    case "int":
      return Number.isInteger(value) ? undefined : "must be an integer";
    case "boolean":
      return typeof value === "boolean" ? undefined : "must be a boolean";
    case "start":
      return value === "auto" || value === "manual" ? undefined : 'must be "auto" or "manual"';
  }
}

function at(path: string, field: string | number): string {
  return typeof field === "number" ? `${path}[${field}]` : path === "" ? field : `${path}.${field}`;
}

/** The first place `value` departs from `shape`, as "path: problem", or undefined. */
export function shapeProblem(value: unknown, shape: Shape, path = ""): string | undefined {
  const where = (p: string) => `${path === "" ? "(top level)" : path}: ${p}`;
  if (typeof shape === "string") {
    if (shape.endsWith("?")) {
      if (value === undefined) return undefined;
      const p = leafProblem(value, shape.slice(0, -1) as Leaf);
      return p === undefined ? undefined : where(p);
    }
    const p = value === undefined ? "is required" : leafProblem(value, shape as Leaf);
    return p === undefined ? undefined : where(p);
  }
  if (value === undefined) return where("is required");
  if (Array.isArray(shape)) {
    if (!Array.isArray(value)) return where("must be an array");
    const element = (shape as readonly [Shape])[0];
    for (let i = 0; i < value.length; i++) {
      const p = shapeProblem(value[i], element, at(path, i));
      if (p !== undefined) return p;
    }
    return undefined;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return where("must be an object");
  for (const [field, fieldShape] of Object.entries(shape as { readonly [field: string]: Shape })) {
    const v = Object.hasOwn(value, field) ? (value as Record<string, unknown>)[field] : undefined;
    const p = shapeProblem(v, fieldShape, at(path, field));
    if (p !== undefined) return p;
  }
  return undefined;
}

/** A response line's envelope, checked. */
export type CheckedResponse =
  | { readonly id: number; readonly ok: true; readonly result: unknown; readonly warnings: readonly string[] }
  | {
      readonly id: number;
      readonly ok: false;
      readonly error: { readonly errno: number; readonly code: string; readonly message: string };
      readonly warnings: readonly string[];
    };

const okEnvelope: Shape = { id: "int", warnings: ["string"] };
const errorEnvelope: Shape = {
  id: "int",
  warnings: ["string"],
  error: { errno: "int", code: "string", message: "string" },
};

/** Checks a parsed response line: `{ok: true, ...}` or `{ok: false, error}`. Returns the problem or the response. */
export function checkResponse(raw: unknown): { readonly problem: string } | { readonly response: CheckedResponse } {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw))
    return { problem: "(top level): must be an object" };
  const ok = (raw as { ok?: unknown }).ok;
  if (ok !== true && ok !== false) return { problem: "ok: must be true or false" };
  const problem = shapeProblem(raw, ok ? okEnvelope : errorEnvelope);
  if (problem !== undefined) return { problem };
  if (!ok && !((raw as { error: { errno: number } }).error.errno > 0))
    return { problem: "error.errno: must be positive" };
  return { response: raw as CheckedResponse };
}

/** One line on the wire. */
export function encodeLine(message: unknown): string {
  return `${JSON.stringify(message)}\n`;
}

/** What `LineSplitter.push` found in one chunk. */
export interface SplitLines {
  /** The complete lines, decoded as UTF-8, without their newline; blank lines are dropped. */
  readonly lines: string[];
  /**
   * A line ran past the limit after `lines`: the caller answers EMSGSIZE and closes. The splitter then holds nothing
   * and ignores everything pushed after.
   */
  readonly overflow: boolean;
}

/**
 * Splits a byte stream into lines, holding at most `maxBytes` bytes of an unfinished line: a line is measured in
 * bytes (UTF-8), not in characters, and the rest of a line past the limit is never buffered. Each chunk is scanned
 * once, so a long line arriving in many chunks costs linear time.
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private pendingBytes = 0;
  private spent = false;

  constructor(private readonly maxBytes: number = MAX_LINE_BYTES) {}

  push(chunk: Buffer | string): SplitLines {
    const lines: string[] = [];
    if (this.spent) return { lines, overflow: true };
    const buf = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk;
    let start = 0;
    for (let nl = buf.indexOf(0x0a); nl >= 0; nl = buf.indexOf(0x0a, start)) {
      const piece = buf.subarray(start, nl);
      if (this.pendingBytes + piece.length > this.maxBytes) return this.overflow(lines);
      const line = this.parts.length === 0 ? piece : Buffer.concat([...this.parts, piece]);
      this.parts = [];
      this.pendingBytes = 0;
      const text = line.toString("utf8");
      if (text.trim() !== "") lines.push(text);
      start = nl + 1;
    }
    const rest = buf.length - start;
    if (this.pendingBytes + rest > this.maxBytes) return this.overflow(lines);
    if (rest > 0) {
      // A copy: a view would keep the whole chunk alive.
      this.parts.push(Buffer.from(buf.subarray(start)));
      this.pendingBytes += rest;
    }
    return { lines, overflow: false };
  }

  private overflow(lines: string[]): SplitLines {
    this.spent = true;
    this.parts = [];
    this.pendingBytes = 0;
    return { lines, overflow: true };
  }
}
