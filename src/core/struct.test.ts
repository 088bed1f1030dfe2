import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno } from "./errno.ts";
import { KernelError } from "./error.ts";
import {
  bytes,
  type Decoded,
  defineStruct,
  type FieldTable,
  readS32LE,
  readU64LE,
  readU64Number,
  reserved,
  type StructCodec,
  type StructValue,
  s32,
  u8,
  u16,
  u32,
  u64,
  writeU64LE,
} from "./struct.ts";

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const fromHex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/\s+/g, ""), "hex"));

/** Every kind, a gap (10..11) and trailing padding (36..39): sizeof must be 40. */
const Mixed = defineStruct(
  "mixed",
  {
    a: u8(0),
    b: u16(2),
    c: u32(4),
    d: s32(8),
    e: u64(16),
    f: bytes(24, 3),
    g: u32(28),
    pad: reserved(u32(32)),
  },
  { minsz: "d" },
);
type Mixed = StructValue<typeof Mixed>;

function isKernelError(errno: number, pattern: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof KernelError, `expected KernelError, got ${String(e)}`);
    assert.equal(e.errno, errno);
    assert.match(e.message, pattern);
    return true;
  };
}

/** Arbitrary valid value for any struct, derived from its table. */
function arbitraryOf<F extends FieldTable>(codec: StructCodec<F>): fc.Arbitrary<Decoded<F>> {
  const parts: Record<string, fc.Arbitrary<unknown>> = {};
  for (const name of codec.fieldNames) {
    const f = codec.fields[name]!;
    parts[name] =
      f.kind === "u8"
        ? fc.integer({ min: 0, max: 0xff })
        : f.kind === "u16"
          ? fc.integer({ min: 0, max: 0xffff })
          : f.kind === "u32"
            ? fc.oneof(fc.constantFrom(0, 0xffff_ffff), fc.integer({ min: 0, max: 0xffff_ffff }))
            : f.kind === "s32"
              ? fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff })
              : f.kind === "u64"
                ? fc.oneof(fc.constantFrom(0n, 2n ** 64n - 1n, 2n ** 53n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }))
                : fc.uint8Array({ minLength: f.size, maxLength: f.size });
  }
  // fc.record builds null-prototype objects; decode builds plain ones, and deepEqual compares prototypes.
  return fc.record(parts).map((r) => ({ ...r })) as unknown as fc.Arbitrary<Decoded<F>>;
}

describe("defineStruct", () => {
  it("computes sizeof like C (trailing padding to the largest alignment), alignment and minsz", () => {
    assert.equal(Mixed.sizeof, 40);
    assert.equal(Mixed.align, 8);
    assert.equal(Mixed.minsz, 12);
    assert.equal(Mixed.offsetof("e"), 16);
    assert.equal(Mixed.offsetofend("f"), 27);
    assert.equal(defineStruct("t", { x: u64(0), y: u32(8) }).sizeof, 16);
    assert.equal(defineStruct("t", { x: u32(0), y: u32(4), z: u32(8) }).sizeof, 12);
    assert.equal(defineStruct("t", { x: u8(0) }).minsz, 1);
    assert.equal(defineStruct("t", { x: u32(0), y: u32(4) }, { minsz: 4 }).minsz, 4);
  });

  it("rejects misaligned fields, overlaps and inconsistent sizes when the table is defined", () => {
    assert.throws(() => defineStruct("bad", { x: u32(2) }), /bad\.x: u32 at offset 2 is not 4-byte aligned/);
    assert.throws(() => defineStruct("bad", { x: u32(0), y: u64(4) }), /bad\.y: u64 at offset 4 is not 8-byte/);
    assert.throws(() => defineStruct("bad", { x: u16(1) }), /not 2-byte aligned/);
    assert.throws(() => defineStruct("bad", { x: u64(0), y: u32(4) }), /bad\.y: offset 4 overlaps x, which ends at 8/);
    assert.throws(() => defineStruct("bad", { x: bytes(0, 5), y: u8(4) }), /overlaps x/);
    assert.throws(() => defineStruct("bad", { x: bytes(0, 0) }), /length 0/);
    assert.throws(() => defineStruct("bad", { x: u32(-4) }), /offset -4/);
    assert.throws(() => defineStruct("bad", {}), /no fields/);
    assert.throws(() => defineStruct("bad", { x: u64(0) }, { sizeof: 4 }), /sizeof 4 must be >= 8/);
    assert.throws(() => defineStruct("bad", { x: u64(0) }, { sizeof: 12 }), /multiple of 8/);
    assert.throws(() => defineStruct("bad", { x: u32(0) }, { minsz: 8 }), /minsz 8/);
    assert.equal(defineStruct("ok", { x: u32(0) }, { sizeof: 8 }).sizeof, 8);
  });
});

describe("encode/decode", () => {
  const value: Mixed = {
    a: 0x11,
    b: 0x2233,
    c: 0x44556677,
    d: -2,
    e: 0x0102030405060708n,
    f: new Uint8Array([0xaa, 0xbb, 0xcc]),
    g: 0xffffffff,
    pad: 0,
  };

  it("lays fields out little-endian at their offsets, gaps zero (golden bytes)", () => {
    assert.equal(
      hexOf(Mixed.encode(value)),
      "11003322 77665544 feffffff 00000000 0807060504030201 aabbcc00 ffffffff 00000000 00000000".replace(/ /g, ""),
    );
  });

  it("round-trips and decodes at an offset, from a Uint8Array or a DataView", () => {
    const buf = new Uint8Array(64).fill(0x5a);
    Mixed.encode(value, buf, 8);
    assert.equal(buf[7], 0x5a, "byte before untouched");
    assert.equal(buf[48], 0x5a, "byte after untouched");
    assert.equal(buf[9], 0, "gap zeroed");
    assert.deepEqual(Mixed.decode(buf, 8), value);
    assert.deepEqual(Mixed.decode(new DataView(buf.buffer, 8, 40)), value);
    const fresh = Mixed.encode(value, undefined, 8);
    assert.equal(fresh.length, 48, "a new array covers offset + sizeof");
    assert.deepEqual(Mixed.decode(fresh, 8), value);
  });

  it("decoded byte arrays are copies, not views into the source", () => {
    const buf = Mixed.encode(value);
    const d = Mixed.decode(buf);
    buf[24] = 0;
    assert.equal(d.f[0], 0xaa);
  });

  it("omitted reserved fields are written as zero; missing mandatory ones are EINVAL", () => {
    const { pad: _pad, ...rest } = value;
    const b = new Uint8Array(40).fill(0xff);
    Mixed.encode(rest, b);
    assert.equal(Mixed.get(b, "pad"), 0);
    const { c: _c, ...noC } = value;
    assert.throws(() => Mixed.encode(noC as unknown as Mixed), isKernelError(Errno.EINVAL, /mixed\.c is missing/));
  });

  it("u64 accepts safe-integer numbers and bigints, and its extremes round-trip", () => {
    const hi = Mixed.encode({ ...value, e: 2n ** 64n - 1n });
    assert.equal(hexOf(hi.subarray(16, 24)), "ffffffffffffffff");
    assert.equal(Mixed.decode(hi).e, 2n ** 64n - 1n);
    const n = Mixed.encode({ ...value, e: Number.MAX_SAFE_INTEGER });
    assert.equal(Mixed.decode(n).e, BigInt(Number.MAX_SAFE_INTEGER));
    assert.equal(Mixed.getNumber(n, "e"), Number.MAX_SAFE_INTEGER);
  });

  it("rejects values that do not fit their field, naming struct.field", () => {
    const cases: [Partial<Record<keyof Mixed, unknown>>, RegExp][] = [
      [{ a: 256 }, /^mixed\.a = 256 does not fit: expected a u8 in \[0, 255\]$/],
      [{ b: -1 }, /^mixed\.b = -1 does not fit: expected a u16/],
      [{ c: 2 ** 32 }, /^mixed\.c = 4294967296 does not fit: expected a u32/],
      [{ c: 1.5 }, /^mixed\.c = 1\.5 does not fit: expected an integer$/],
      [{ d: 2 ** 31 }, /^mixed\.d = 2147483648 does not fit: expected an s32/],
      [{ e: 2n ** 64n }, /^mixed\.e = 18446744073709551616n does not fit: expected a u64/],
      [{ e: -1n }, /^mixed\.e = -1n does not fit/],
      [{ e: 2 ** 60 }, /^mixed\.e = 1152921504606847000 does not fit: expected a u64/],
      [{ f: new Uint8Array(4) }, /^mixed\.f = Uint8Array\(4\) does not fit: expected a Uint8Array of exactly 3 bytes$/],
      [{ g: "1" }, /^mixed\.g = 1 does not fit: expected an integer$/],
    ];
    for (const [patch, re] of cases) {
      assert.throws(() => Mixed.encode({ ...value, ...patch } as Mixed), isKernelError(Errno.EINVAL, re));
    }
  });

  it("a short buffer is EINVAL naming the struct and both sizes", () => {
    assert.throws(
      () => Mixed.decode(new Uint8Array(39)),
      isKernelError(Errno.EINVAL, /^mixed needs 40 bytes at offset 0 but the buffer has 39$/),
    );
    assert.throws(
      () => Mixed.decode(new Uint8Array(48), 16),
      isKernelError(Errno.EINVAL, /^mixed needs 40 bytes at offset 16 but the buffer has 32$/),
    );
    assert.throws(() => Mixed.decode(new Uint8Array(48), 60), /but the buffer has 0/);
    assert.throws(() => Mixed.encode(value, new Uint8Array(20)), isKernelError(Errno.EINVAL, /mixed needs 40 bytes/));
    assert.throws(() => Mixed.decode(new Uint8Array(48), -1), /offset -1/);
  });

  it("decodeMin reads minsz bytes like copy_from_user(minsz) into a zeroed struct", () => {
    const full = Mixed.encode(value);
    const d = Mixed.decodeMin(full.subarray(0, 12));
    assert.deepEqual(d, { a: 0x11, b: 0x2233, c: 0x44556677, d: -2, e: 0n, f: new Uint8Array(3), g: 0, pad: 0 });
    assert.deepEqual(Mixed.decodeMin(full), { ...d }, "only minsz bytes are read, even from a longer buffer");
    assert.throws(
      () => Mixed.decodeMin(full.subarray(0, 11)),
      isKernelError(Errno.EINVAL, /mixed needs 12 bytes at offset 0 but the buffer has 11/),
    );
  });

  it("get/set/getNumber touch one field, bounds-checked against that field", () => {
    const b = new Uint8Array(12);
    Mixed.set(b, "d", -5);
    Mixed.set(b, "c", 0xdeadbeef);
    assert.equal(Mixed.get(b, "d"), -5);
    assert.equal(Mixed.getNumber(b, "c"), 0xdeadbeef);
    assert.throws(() => Mixed.get(b, "e"), isKernelError(Errno.EINVAL, /mixed\.e needs 8 bytes at offset 16/));
    assert.throws(() => Mixed.set(b, "a", 300), /mixed\.a = 300/);
    const big = Mixed.encode({ ...value, e: 2n ** 53n });
    assert.throws(() => Mixed.getNumber(big, "e"), isKernelError(Errno.EOVERFLOW, /mixed\.e = 0x20000000000000/));
    assert.throws(() => Mixed.getNumber(big, "f"), /byte array/);
    assert.throws(() => Mixed.get(b, "nope" as "a"), /no field 'nope'/);
  });

  it("arrays: consecutive structs at stride sizeof", () => {
    const Pair = defineStruct("pair", { lo: u64(0), hi: u64(8) });
    const vals = [
      { lo: 1n, hi: 2n },
      { lo: 3n, hi: 2n ** 64n - 1n },
    ];
    const b = Pair.encodeArray(vals);
    assert.equal(b.length, 32);
    assert.deepEqual(Pair.decodeArray(b, 0, 2), vals);
    assert.deepEqual(Pair.decodeArray(b, 16, 1), [vals[1]]);
    assert.deepEqual(Pair.decodeArray(b, 32, 0), []);
    assert.throws(() => Pair.decodeArray(b, 0, 3), isKernelError(Errno.EINVAL, /pair\[3\] needs 48 bytes/));
  });

  it("property: decode(encode(x)) = x for every valid value", () => {
    fc.assert(
      fc.property(arbitraryOf(Mixed), fc.integer({ min: 0, max: 24 }), (x, at) => {
        const buf = new Uint8Array(at + Mixed.sizeof);
        Mixed.encode(x, buf, at);
        assert.deepEqual(Mixed.decode(buf, at), x);
        assert.deepEqual(Mixed.decode(Mixed.encode(x)), x);
      }),
      { numRuns: 300 },
    );
  });

  it("property: encode(decode(bytes)) = bytes outside the gaps", () => {
    const Dense = defineStruct("dense", { a: u32(0), b: s32(4), c: u64(8), d: u16(16), e: u8(18), f: bytes(19, 5) });
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 24, maxLength: 24 }), (raw) => {
        assert.deepEqual(Dense.encode(Dense.decode(raw)), raw);
      }),
      { numRuns: 300 },
    );
  });
});

describe("primitive readers", () => {
  it("read and write little-endian words", () => {
    const b = fromHex("ffffffff 00000080 efcdab8967452301");
    assert.equal(readS32LE(b, 0), -1);
    assert.equal(readS32LE(b, 4), -0x8000_0000);
    assert.equal(readU64LE(b, 8), 0x0123456789abcdefn);
    const w = new Uint8Array(8);
    writeU64LE(w, 0, 2 ** 52 + 5);
    assert.equal(readU64Number(w, 0, "x"), 2 ** 52 + 5);
    writeU64LE(w, 0, 2n ** 63n);
    assert.throws(() => readU64Number(w, 0, "x.y"), isKernelError(Errno.EOVERFLOW, /x\.y = 0x8000000000000000/));
  });
});

describe("types", () => {
  it("decoded types are inferred from the table", () => {
    const d = Mixed.decode(new Uint8Array(40));
    const n: number = d.c;
    const big: bigint = d.e;
    const arr: Uint8Array = d.f;
    // @ts-expect-error a u64 decodes to bigint, not number
    const wrong: number = d.e;
    // @ts-expect-error unknown field
    assert.throws(() => Mixed.offsetof("zz"), /no field 'zz'/);
    assert.equal(typeof n + typeof big + typeof arr + typeof wrong, "numberbigintobjectbigint");
  });
});
