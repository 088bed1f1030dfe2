/**
 * Dirty bitmap helpers: sizes, bit setting, and the copy into user memory with the kernel's shift and first-word OR.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, type Hva, KernelError } from "../../core/index.ts";
import {
  allocDirtyBitmap,
  copyBitsToUser,
  countBits,
  DIRTY_BITMAP_SIZE_MAX,
  dirtyBitmapBytes,
  setBits,
  testBit,
  type UserMemory,
  verifyBitmapSize,
} from "./dirty.ts";

/** Flat user memory for the copy; faults (EFAULT-like KernelError) outside [0, size). */
function flat(size: number): UserMemory & { mem: Uint8Array } {
  const mem = new Uint8Array(size);
  const check = (a: number, n: number) => {
    if (a < 0 || a + n > size) throw new KernelError(Errno.EFAULT, `fault at ${a}`);
  };
  return {
    mem,
    read(addr: Hva, dst: Uint8Array, off = 0, len = dst.length - off) {
      check(addr, len);
      dst.set(mem.subarray(addr, addr + len), off);
    },
    write(addr: Hva, src: Uint8Array, off = 0, len = src.length - off) {
      check(addr, len);
      mem.set(src.subarray(off, off + len), addr);
    },
  };
}

describe("dirty bitmap sizes", () => {
  it("rounds to u64 words; the maximum is 256 MiB", () => {
    assert.equal(dirtyBitmapBytes(1), 8);
    assert.equal(dirtyBitmapBytes(64), 8);
    assert.equal(dirtyBitmapBytes(65), 16);
    assert.equal(DIRTY_BITMAP_SIZE_MAX, 2 ** 28);
    assert.equal(allocDirtyBitmap(65, "t").length, 24);
    assert.throws(() => allocDirtyBitmap(2 ** 31, "t"), /exceed/);
  });

  it("verify_bitmap_size refuses empty, too small and too large", () => {
    verifyBitmapSize(64, 8, "t");
    for (const [n, s] of [
      [0, 8],
      [64, 0],
      [65, 8],
      [1, DIRTY_BITMAP_SIZE_MAX + 8],
    ] as const) {
      assert.throws(
        () => verifyBitmapSize(n, s, "t"),
        (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL,
      );
    }
  });

  it("setBits sets exactly the range (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 200 }), (start, n) => {
        const bm = new Uint8Array(64);
        setBits(bm, start, n);
        for (let i = 0; i < 512; i++) assert.equal(testBit(bm, i), i >= start && i < start + n);
        assert.equal(countBits(bm, 512), n);
      }),
      { numRuns: 200 },
    );
  });
});

describe("copyBitsToUser", () => {
  it("word-aligned: copies whole words, zeroing the tail of the last one", () => {
    const u = flat(64);
    u.mem.fill(0xff);
    const bits = new Uint8Array(16);
    setBits(bits, 0, 3);
    copyBitsToUser(u, 0, bits, 10, 64);
    assert.deepEqual(
      [...u.mem.subarray(0, 24)],
      [...Array(8).fill(0xff), 0x07, 0, 0, 0, 0, 0, 0, 0, ...Array(8).fill(0xff)],
    );
  });

  it("unaligned: shifts into place and ORs the whole first word read back from the user", () => {
    const u = flat(64);
    u.mem[0] = 0b0000_0101; // bits 0 and 2 from an earlier mapping
    u.mem[7] = 0x80; // bit 63 set by the user: kept too (the whole word is ORed)
    const bits = new Uint8Array(16);
    setBits(bits, 0, 2);
    setBits(bits, 69, 1);
    copyBitsToUser(u, 0, bits, 70, 5);
    const got: number[] = [];
    for (let i = 0; i < 128; i++) if (testBit(u.mem, i)) got.push(i);
    assert.deepEqual(got, [0, 2, 5, 6, 63, 74]);
  });

  it("EFAULT when the user bitmap is not there", () => {
    const u = flat(8);
    assert.throws(
      () => copyBitsToUser(u, 0, new Uint8Array(16), 100, 0),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.EFAULT,
    );
    assert.throws(
      () => copyBitsToUser(u, 100, new Uint8Array(16), 8, 3),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.EFAULT,
    );
  });

  it("agrees with a bit-by-bit reference (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 0, max: 300 }),
        fc.uint8Array({ minLength: 48, maxLength: 48 }),
        fc.uint8Array({ minLength: 128, maxLength: 128 }),
        (nbits, offset, src, before) => {
          const u = flat(128);
          u.mem.set(before);
          const bits = new Uint8Array(48);
          for (let i = 0; i < nbits; i++) if (testBit(src, i)) setBits(bits, i, 1);
          copyBitsToUser(u, 0, bits, nbits, offset);
          const word = Math.floor(offset / 64) * 64;
          const endBit = word + dirtyBitmapBytes(nbits + (offset % 64)) * 8;
          for (let i = 0; i < 1024; i++) {
            let want: boolean;
            if (i < word || i >= endBit) want = testBit(before, i);
            else if (i >= offset && i < offset + nbits)
              want = testBit(src, i - offset) || (offset % 64 !== 0 && i < word + 64 && testBit(before, i));
            else want = offset % 64 !== 0 && i < word + 64 && testBit(before, i);
            assert.equal(testBit(u.mem, i), want, `bit ${i}`);
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});
