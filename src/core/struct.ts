/**
 * Binary struct codecs: a C struct declared as a table of fields with explicit byte offsets, little-endian.
 *
 * ```ts
 * const VfioIrqInfo = defineStruct("vfio_irq_info", {
 *   argsz: u32(0), flags: u32(4), index: u32(8), count: u32(12),
 * }, { minsz: "count" });
 * type VfioIrqInfo = StructValue<typeof VfioIrqInfo>;   // { argsz: number; flags: number; index: number; count: number }
 * const info = VfioIrqInfo.decode(bytes);                // throws EINVAL if bytes hold fewer than 16 bytes
 * VfioIrqInfo.encode({ ...info, count: 1 }, bytes);      // writes back in place
 * ```
 *
 * What it does: the TypeScript type of a decoded struct is inferred from its table (u8/u16/u32/s32 -> number,
 * u64 -> bigint, bytes -> Uint8Array), so no interface is written twice. `defineStruct` checks the table when the
 * module loads: every field naturally aligned (as the C compiler would place it on x86_64/arm64), no two fields
 * overlapping, `sizeof` rounded up to the largest alignment as C's sizeof is. Gaps between fields are allowed (C's
 * implicit padding) and are written as zero.
 *
 * What it does not do: nested structs, unions, bitfields, big-endian, flexible array members. A nested struct is
 * flattened into its fields (a capability header becomes `id`, `version`, `next`); a union is declared as the one field
 * the model uses; a trailing `data[]` is not a field: `sizeof` covers the fixed part and the payload is read with
 * `decodeArray` or the primitive readers below.
 *
 * Invariants: decoded objects are plain and detached (bytes fields are copies, never views into the source), so a
 * decoded struct stays valid after the buffer is reused. u64 is bigint at the edge; `getNumber`, `readU64Number` and
 * `u64ToNumber` (address.ts) give a checked number for the model's arithmetic (exact below 2^53, EOVERFLOW above).
 * Decoding fewer bytes than needed throws `KernelError(EINVAL)` naming the struct and both sizes, which is what an ioctl
 * with a short argsz gets. Encoding a value that does not fit its field throws EINVAL naming `struct.field`.
 *
 * Cost: per decode one result object (plus one bigint per u64 and one copy per bytes field); the field loop reads
 * bytes directly with shifts (no DataView per call). `get`/`set`/`getNumber` touch one field and allocate nothing
 * (except the bigint `get` returns for a u64).
 */
import { hex } from "./address.ts";
import { Errno } from "./errno.ts";
import { KernelError } from "./error.ts";

export type ScalarKind = "u8" | "u16" | "u32" | "s32" | "u64";
export type FieldKind = ScalarKind | "bytes";

/** One field of a struct table. `reserved` fields (pad, reserved) may be left out when encoding; they are written 0. */
export interface FieldSpec<K extends FieldKind = FieldKind, R extends boolean = boolean> {
  readonly kind: K;
  /** Byte offset from the start of the struct. */
  readonly offset: number;
  /** Bytes the field occupies (1, 2, 4, 8, or the declared length for `bytes`). */
  readonly size: number;
  readonly reserved: R;
}
export type FieldTable = { readonly [name: string]: FieldSpec };

export const u8 = (offset: number): FieldSpec<"u8", false> => ({ kind: "u8", offset, size: 1, reserved: false });
export const u16 = (offset: number): FieldSpec<"u16", false> => ({ kind: "u16", offset, size: 2, reserved: false });
export const u32 = (offset: number): FieldSpec<"u32", false> => ({ kind: "u32", offset, size: 4, reserved: false });
export const s32 = (offset: number): FieldSpec<"s32", false> => ({ kind: "s32", offset, size: 4, reserved: false });
export const u64 = (offset: number): FieldSpec<"u64", false> => ({ kind: "u64", offset, size: 8, reserved: false });
/** A fixed-length byte array (`__u8 name[length]`); alignment 1. */
export const bytes = (offset: number, length: number): FieldSpec<"bytes", false> => ({
  kind: "bytes",
  offset,
  size: length,
  reserved: false,
});
/** Marks a pad/reserved field: optional when encoding (written 0), still present when decoding. */
export function reserved<K extends FieldKind>(field: FieldSpec<K, boolean>): FieldSpec<K, true> {
  return { kind: field.kind, offset: field.offset, size: field.size, reserved: true };
}

/** What decoding a field yields. */
export type FieldValue<F extends FieldSpec> = F["kind"] extends "u64"
  ? bigint
  : F["kind"] extends "bytes"
    ? Uint8Array
    : number;
/** What encoding a field accepts: a u64 may also be given as a safe-integer number (the model's addresses). */
export type FieldInput<F extends FieldSpec> = F["kind"] extends "u64" ? bigint | number : FieldValue<F>;

type Simplify<T> = { [K in keyof T]: T[K] } & {};
type ReservedKeys<F extends FieldTable> = {
  [K in keyof F]: F[K] extends { readonly reserved: true } ? K : never;
}[keyof F];

/** The plain object a struct decodes to, inferred from its table. Mutable, so it can be edited and encoded back. */
export type Decoded<F extends FieldTable> = { -readonly [K in keyof F]: FieldValue<F[K]> };
/** What `encode` accepts: every field, except that reserved ones may be omitted. */
export type Encodable<F extends FieldTable> = Simplify<
  { [K in Exclude<keyof F, ReservedKeys<F>>]: FieldInput<F[K]> } & { [K in ReservedKeys<F>]?: FieldInput<F[K]> }
>;
/** `StructValue<typeof Codec>`: the decoded type of a codec, for use in signatures. */
export type StructValue<C> = C extends StructCodec<infer F> ? Decoded<F> : never;
/** `StructInput<typeof Codec>`: what the codec's `encode` accepts. */
export type StructInput<C> = C extends StructCodec<infer F> ? Encodable<F> : never;

export interface StructOptions<F extends FieldTable> {
  /**
   * The minimum size a caller must supply, as the kernel computes it for argsz checks: `offsetofend` of the named field
   * (the last mandatory one), or a byte count. Defaults to `sizeof`.
   */
  readonly minsz?: (keyof F & string) | number;
  /** Override `sizeof` (e.g. a struct with explicit tail padding); must cover every field and keep the alignment. */
  readonly sizeof?: number;
}

const K_U8 = 0;
const K_U16 = 1;
const K_U32 = 2;
const K_S32 = 3;
const K_U64 = 4;
const K_BYTES = 5;
const KIND_CODE: Readonly<Record<FieldKind, number>> = {
  u8: K_U8,
  u16: K_U16,
  u32: K_U32,
  s32: K_S32,
  u64: K_U64,
  bytes: K_BYTES,
};
const NATURAL_ALIGN: Readonly<Record<FieldKind, number>> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8, bytes: 1 };
const TWO_32 = 0x1_0000_0000;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

// ---------------------------------------------------------------------------------------------------------------------
// Primitive little-endian access. Callers check bounds (`requireBytes`); these read what is there.

export function readU16LE(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}
export function readU32LE(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}
export function readS32LE(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24);
}
export function readU64LE(b: Uint8Array, o: number): bigint {
  const hi = readU32LE(b, o + 4);
  // Below 2^53 (every address the model uses) one exact double makes one bigint.
  if (hi < 0x20_0000) return BigInt(hi * TWO_32 + readU32LE(b, o));
  return (BigInt(hi) << 32n) | BigInt(readU32LE(b, o));
}
/** Reads a u64 as a number without a bigint; EOVERFLOW if it is 2^53 or more (`what` names it in the message). */
export function readU64Number(b: Uint8Array, o: number, what: string): number {
  const hi = readU32LE(b, o + 4);
  if (hi >= 0x20_0000) {
    throw new KernelError(
      Errno.EOVERFLOW,
      `${what} = ${hex(readU64LE(b, o))} is beyond 2^53, which this model cannot represent`,
    );
  }
  return hi * TWO_32 + readU32LE(b, o);
}
export function writeU16LE(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
}
export function writeU32LE(b: Uint8Array, o: number, v: number): void {
  b[o] = v & 0xff;
  b[o + 1] = (v >>> 8) & 0xff;
  b[o + 2] = (v >>> 16) & 0xff;
  b[o + 3] = (v >>> 24) & 0xff;
}
/** Writes a u64 given as a bigint or a non-negative safe integer (unchecked; see `encode` for checked writes). */
export function writeU64LE(b: Uint8Array, o: number, v: bigint | number): void {
  if (typeof v === "number") {
    // ToUint32 is the value modulo 2^32, exact for any integer double (`%` on a double is a call into C).
    writeU32LE(b, o, v >>> 0);
    writeU32LE(b, o + 4, Math.floor(v / TWO_32));
  } else {
    writeU32LE(b, o, Number(v & 0xffff_ffffn));
    writeU32LE(b, o + 4, Number((v >> 32n) & 0xffff_ffffn));
  }
}

/** Throws EINVAL unless `b` holds `need` bytes from `offset`: "<what> needs N bytes at offset O but the buffer has M". */
export function requireBytes(b: Uint8Array, offset: number, need: number, what: string): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new KernelError(Errno.EINVAL, `${what}: offset ${offset} is not a non-negative integer`);
  }
  if (b.length - offset < need) {
    throw new KernelError(
      Errno.EINVAL,
      `${what} needs ${need} bytes at offset ${offset} but the buffer has ${Math.max(0, b.length - offset)}`,
      { need, offset, have: b.length },
    );
  }
}

function asBytes(src: Uint8Array | DataView): Uint8Array {
  return src instanceof Uint8Array ? src : new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
}

// ---------------------------------------------------------------------------------------------------------------------

/**
 * Any codec, with its field types erased: for code that handles structs generically (tests, struct viewers, dumps).
 * Every `StructCodec<F>` is one.
 */
export interface AnyStructCodec {
  readonly name: string;
  readonly fields: FieldTable;
  readonly sizeof: number;
  readonly minsz: number;
  readonly align: number;
  readonly fieldNames: readonly string[];
  decode(src: Uint8Array | DataView, offset?: number): Record<string, number | bigint | Uint8Array>;
  encode(value: Readonly<Record<string, number | bigint | Uint8Array>>, into?: Uint8Array, offset?: number): Uint8Array;
}

/** A struct codec; build with `defineStruct`. */
export class StructCodec<F extends FieldTable> {
  readonly name: string;
  readonly fields: F;
  /** C's sizeof: the last field's end rounded up to the largest field alignment. */
  readonly sizeof: number;
  /** The smallest argsz the kernel accepts for this struct (see `StructOptions.minsz`). */
  readonly minsz: number;
  /** Largest natural alignment of any field. */
  readonly align: number;
  /** Field names in offset order. */
  readonly fieldNames: readonly (keyof F & string)[];
  private readonly kinds: Uint8Array;
  private readonly offsets: Uint32Array;
  private readonly sizes: Uint32Array;
  private readonly optional: Uint8Array;
  /** `read` and `encode`'s field loop compiled for this table (see `compileCodec`). */
  private readonly compiled: CompiledCodec;
  private readonly indexByName: ReadonlyMap<string, number>;

  constructor(name: string, fields: F, options: StructOptions<F> = {}) {
    this.name = name;
    this.fields = fields;
    const entries = Object.entries(fields).sort((a, b) => a[1].offset - b[1].offset);
    if (entries.length === 0) throw new Error(`struct ${name} declares no fields`);
    let align = 1;
    let end = 0;
    let prev = "";
    for (const [field, spec] of entries) {
      const natural = NATURAL_ALIGN[spec.kind];
      if (natural === undefined) throw new Error(`${name}.${field}: unknown field kind '${String(spec.kind)}'`);
      if (!Number.isSafeInteger(spec.offset) || spec.offset < 0) {
        throw new Error(`${name}.${field}: offset ${spec.offset} is not a non-negative integer`);
      }
      if (!Number.isSafeInteger(spec.size) || spec.size <= 0) {
        throw new Error(`${name}.${field}: length ${spec.size} is not a positive integer`);
      }
      if (spec.offset % natural !== 0) {
        throw new Error(`${name}.${field}: ${spec.kind} at offset ${spec.offset} is not ${natural}-byte aligned`);
      }
      if (spec.offset < end) {
        throw new Error(`${name}.${field}: offset ${spec.offset} overlaps ${prev}, which ends at ${end}`);
      }
      end = spec.offset + spec.size;
      prev = field;
      if (natural > align) align = natural;
    }
    this.align = align;
    const natural = Math.ceil(end / align) * align;
    if (options.sizeof !== undefined) {
      if (options.sizeof < end || options.sizeof % align !== 0) {
        throw new Error(`${name}: sizeof ${options.sizeof} must be >= ${end} and a multiple of ${align}`);
      }
      this.sizeof = options.sizeof;
    } else {
      this.sizeof = natural;
    }
    this.fieldNames = entries.map(([n]) => n as keyof F & string);
    this.kinds = Uint8Array.from(entries, ([, s]) => KIND_CODE[s.kind]);
    this.offsets = Uint32Array.from(entries, ([, s]) => s.offset);
    this.sizes = Uint32Array.from(entries, ([, s]) => s.size);
    this.optional = Uint8Array.from(entries, ([, s]) => (s.reserved ? 1 : 0));
    this.indexByName = new Map(entries.map(([n], i) => [n, i]));
    this.compiled = compileCodec(
      entries,
      (b, base, i, x) => this.writeField(b, base, i, x),
      (i) => this.missing(i),
    );
    const m = options.minsz;
    if (m === undefined) this.minsz = this.sizeof;
    else if (typeof m === "number") {
      if (!Number.isSafeInteger(m) || m <= 0 || m > this.sizeof) {
        throw new Error(`${name}: minsz ${m} must be in [1, ${this.sizeof}]`);
      }
      this.minsz = m;
    } else {
      this.minsz = this.offsetofend(m);
    }
  }

  /** offsetof(struct, field). */
  offsetof(field: keyof F & string): number {
    return this.spec(field).offset;
  }

  /** offsetofend(struct, field): the first byte after the field, the kernel's way of saying "through this field". */
  offsetofend(field: keyof F & string): number {
    const s = this.spec(field);
    return s.offset + s.size;
  }

  /** Decodes the whole struct at `offset`; EINVAL naming the struct if fewer than `sizeof` bytes are there. */
  decode(src: Uint8Array | DataView, offset = 0): Decoded<F> {
    const b = asBytes(src);
    requireBytes(b, offset, this.sizeof, this.name);
    return this.read(b, offset, this.sizeof);
  }

  /**
   * Decodes as the kernel does `copy_from_user(&s, arg, minsz)` into a zeroed struct: needs `minsz` bytes (else
   * EINVAL), reads the fields that end within them, and yields 0 (or zero bytes) for the rest.
   */
  decodeMin(src: Uint8Array | DataView, offset = 0): Decoded<F> {
    const b = asBytes(src);
    requireBytes(b, offset, this.minsz, this.name);
    return this.read(b, offset, this.minsz);
  }

  /** Decodes `count` consecutive structs (a C array; stride `sizeof`). */
  decodeArray(src: Uint8Array | DataView, offset: number, count: number): Decoded<F>[] {
    const b = asBytes(src);
    if (!Number.isSafeInteger(count) || count < 0) {
      throw new KernelError(Errno.EINVAL, `${this.name}[]: count ${count} is not a non-negative integer`);
    }
    requireBytes(b, offset, this.sizeof * count, `${this.name}[${count}]`);
    const out: Decoded<F>[] = new Array(count);
    for (let i = 0; i < count; i++) out[i] = this.read(b, offset + i * this.sizeof, this.sizeof);
    return out;
  }

  /**
   * Encodes `value` into `into` at `offset` (or into a new array of `offset + sizeof` bytes) and returns the array
   * written to.
   * All `sizeof` bytes are written: gaps and omitted reserved fields become 0. EINVAL for a value that does not fit its
   * field or a destination too small.
   */
  encode(value: Encodable<F>, into?: Uint8Array, offset = 0): Uint8Array {
    const b = into ?? new Uint8Array(offset + this.sizeof);
    if (into !== undefined) {
      requireBytes(into, offset, this.sizeof, this.name);
      // A loop: fill() is a C++ builtin call, dearer than the few stores of an ioctl struct.
      for (let k = offset, end = offset + this.sizeof; k < end; k++) into[k] = 0;
    }
    this.compiled.write(value as Readonly<Record<string, unknown>>, b, offset);
    return b;
  }

  private missing(i: number): void {
    if (this.optional[i] === 1) return;
    throw new KernelError(Errno.EINVAL, `${this.name}.${this.fieldNames[i]!} is missing`);
  }

  /** Encodes an array of structs back to back (stride `sizeof`). */
  encodeArray(values: readonly Encodable<F>[], into?: Uint8Array, offset = 0): Uint8Array {
    const b = into ?? new Uint8Array(offset + this.sizeof * values.length);
    if (into !== undefined) requireBytes(into, offset, this.sizeof * values.length, `${this.name}[${values.length}]`);
    for (let i = 0; i < values.length; i++) this.encode(values[i]!, b, offset + i * this.sizeof);
    return b;
  }

  /** Reads one field of the struct at `offset` (bounds-checked against that field only). */
  get<K extends keyof F & string>(src: Uint8Array, field: K, offset = 0): FieldValue<F[K]> {
    const i = this.index(field);
    const at = offset + this.offsets[i]!;
    requireBytes(src, at, this.sizes[i]!, `${this.name}.${field}`);
    return this.readField(src, at, i) as FieldValue<F[K]>;
  }

  /** Reads one numeric field as a number; a u64 must be below 2^53 (EOVERFLOW otherwise). Allocates nothing. */
  getNumber(src: Uint8Array, field: keyof F & string, offset = 0): number {
    const i = this.index(field);
    const at = offset + this.offsets[i]!;
    requireBytes(src, at, this.sizes[i]!, `${this.name}.${field}`);
    switch (this.kinds[i]) {
      case K_U8:
        return src[at]!;
      case K_U16:
        return readU16LE(src, at);
      case K_U32:
        return readU32LE(src, at);
      case K_S32:
        return readS32LE(src, at);
      case K_U64:
        return readU64Number(src, at, `${this.name}.${field}`);
      default:
        throw new Error(`${this.name}.${field} is a byte array, not a number`);
    }
  }

  /** Writes one field of the struct at `offset`, checked like `encode`. */
  set<K extends keyof F & string>(dst: Uint8Array, field: K, value: FieldInput<F[K]>, offset = 0): void {
    const i = this.index(field);
    requireBytes(dst, offset + this.offsets[i]!, this.sizes[i]!, `${this.name}.${field}`);
    this.writeField(dst, offset, i, value);
  }

  private spec(field: string): FieldSpec {
    const s = this.fields[field];
    if (s === undefined) throw new Error(`struct ${this.name} has no field '${field}'`);
    return s;
  }

  private index(field: string): number {
    const i = this.indexByName.get(field);
    if (i === undefined) throw new Error(`struct ${this.name} has no field '${field}'`);
    return i;
  }

  /** Reads every field that ends within `limit` bytes; later fields read as zero. */
  private read(b: Uint8Array, base: number, limit: number): Decoded<F> {
    return this.compiled.read(b, base, limit) as Decoded<F>;
  }

  private readField(b: Uint8Array, at: number, i: number): number | bigint | Uint8Array {
    switch (this.kinds[i]) {
      case K_U8:
        return b[at]!;
      case K_U16:
        return readU16LE(b, at);
      case K_U32:
        return readU32LE(b, at);
      case K_S32:
        return readS32LE(b, at);
      case K_U64:
        return readU64LE(b, at);
      default:
        return b.slice(at, at + this.sizes[i]!);
    }
  }

  private writeField(b: Uint8Array, base: number, i: number, x: unknown): void {
    const at = base + this.offsets[i]!;
    const kind = this.kinds[i]!;
    if (kind === K_U64) {
      if (typeof x === "bigint" ? x < 0n || x > U64_MAX : !(Number.isSafeInteger(x) && (x as number) >= 0)) {
        this.bad(i, x, "a u64: a bigint in [0, 2^64) or a non-negative safe integer");
      }
      writeU64LE(b, at, x as bigint | number);
      return;
    }
    if (kind === K_BYTES) {
      const len = this.sizes[i]!;
      if (!(x instanceof Uint8Array) || x.length !== len) this.bad(i, x, `a Uint8Array of exactly ${len} bytes`);
      b.set(x as Uint8Array, at);
      return;
    }
    if (typeof x !== "number" || !Number.isInteger(x)) this.bad(i, x, "an integer");
    const n = x as number;
    switch (kind) {
      case K_U8:
        if (n < 0 || n > 0xff) this.bad(i, x, "a u8 in [0, 255]");
        b[at] = n;
        return;
      case K_U16:
        if (n < 0 || n > 0xffff) this.bad(i, x, "a u16 in [0, 65535]");
        writeU16LE(b, at, n);
        return;
      case K_U32:
        if (n < 0 || n > 0xffff_ffff) this.bad(i, x, "a u32 in [0, 2^32)");
        writeU32LE(b, at, n);
        return;
      default:
        if (n < -0x8000_0000 || n > 0x7fff_ffff) this.bad(i, x, "an s32 in [-2^31, 2^31)");
        writeU32LE(b, at, n >>> 0);
    }
  }

  private bad(i: number, x: unknown, want: string): never {
    const shown = x instanceof Uint8Array ? `Uint8Array(${x.length})` : typeof x === "bigint" ? `${x}n` : String(x);
    throw new KernelError(
      Errno.EINVAL,
      `${this.name}.${this.fieldNames[i]!} = ${shown} does not fit: expected ${want}`,
    );
  }
}

/**
 * Declares a struct. Throws (a plain Error: a wrong table is a bug, found when the module loads) if a field is not
 * naturally aligned, two fields overlap, or `sizeof`/`minsz` options are inconsistent.
 */
export function defineStruct<const F extends FieldTable>(
  name: string,
  fields: F,
  options?: StructOptions<F>,
): StructCodec<F> {
  return new StructCodec(name, fields, options);
}

// ---------------------------------------------------------------------------------------------------------------------
// Compiled field loops

interface CompiledCodec {
  read(b: Uint8Array, base: number, limit: number): Record<string, number | bigint | Uint8Array>;
  write(v: Readonly<Record<string, unknown>>, b: Uint8Array, base: number): void;
}

/** What the compiled functions call: the primitive readers, and the codec's checked field writer. */
const READERS = {
  u8: (b: Uint8Array, o: number) => b[o]!,
  u16: readU16LE,
  u32: readU32LE,
  s32: readS32LE,
  u64: readU64LE,
  bytes: (b: Uint8Array, o: number, n: number) => b.slice(o, o + n),
};

/**
 * Compiles a table's decode and encode loops into one function each, with the field names as literal property names.
 * A generic loop stores and loads properties by computed name, which V8 handles through a megamorphic cache shared by
 * every struct; compiled per table, each decode builds its object from a literal (one hidden class from the start) and
 * each encode reads named properties, monomorphic at every site. The generated text uses only the table's own field
 * names (JSON-quoted) and numbers, so no input reaches it.
 */
function compileCodec(
  entries: readonly (readonly [string, FieldSpec])[],
  writeField: (b: Uint8Array, base: number, i: number, x: unknown) => void,
  missing: (i: number) => void,
): CompiledCodec {
  const props: string[] = [];
  const writes: string[] = [];
  entries.forEach(([name, spec], i) => {
    const key = JSON.stringify(name);
    const zero = spec.kind === "u64" ? "0n" : spec.kind === "bytes" ? `new Uint8Array(${spec.size})` : "0";
    const call =
      spec.kind === "bytes"
        ? `R.bytes(b, base + ${spec.offset}, ${spec.size})`
        : `R.${spec.kind}(b, base + ${spec.offset})`;
    props.push(`${key}: ${spec.offset + spec.size} <= limit ? ${call} : ${zero}`);
    writes.push(`x = v[${key}]; if (x === undefined) M(${i}); else W(b, base, ${i}, x);`);
  });
  const read = new Function("R", `return function read(b, base, limit) { return { ${props.join(", ")} }; };`)(
    READERS,
  ) as CompiledCodec["read"];
  const write = new Function("W", "M", `return function write(v, b, base) { let x; ${writes.join(" ")} };`)(
    writeField,
    missing,
  ) as CompiledCodec["write"];
  return { read, write };
}
