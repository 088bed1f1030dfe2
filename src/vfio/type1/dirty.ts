/**
 * Dirty page bitmaps of vfio type1 (VFIO_IOMMU_DIRTY_PAGES and UNMAP_DMA with GET_DIRTY_BITMAP), as Linux keeps and
 * reports them:
 *
 * - While tracking is on, every mapping has a bitmap of one bit per page of the smallest IOMMU page size (4 KiB), plus
 *   8 spare bytes for the shift below (vfio_dma_bitmap_alloc). A page is dirty when an emulated device pinned it
 *   (pinned pages count as dirty for as long as they stay pinned) or wrote it through vfio_dma_rw; a mapping that an
 *   IOMMU-backed group without selective pinning can reach is reported wholly dirty.
 * - Reporting copies each mapping's bits into the caller's bitmap at the mapping's bit offset from the requested base
 *   IOVA (update_user_bitmap). When that offset is not a multiple of 64 the bits are shifted, and the caller's first
 *   u64 word at that spot is read back and ORed in (the whole word, as __bitmap_or on one long does), so the bits of a
 *   preceding mapping sharing the word survive. The copy writes whole bytes up to the end of the shifted bits rounded
 *   to 64 bits, zeroing the tail of the last word.
 * - The caller's bitmap lives in user memory (its `data` field is a pointer): reads and writes go through the
 *   container owner's address space and fault as copy_from_user/copy_to_user would (EFAULT).
 *
 * Bit order is Linux's on a little-endian machine: bit i is bit (i % 8) of byte (i / 8).
 *
 * Not modelled: bitmaps of page sizes other than the smallest (the kernel refuses them too).
 */
import { Errno, type Hva, hex, KernelError } from "../../core/index.ts";

/** DIRTY_BITMAP_PAGES_MAX: INT_MAX bits (__bitmap_set takes an int count). */
export const DIRTY_BITMAP_PAGES_MAX = 0x7fff_ffff;
/** DIRTY_BITMAP_BYTES(n): n bits rounded up to whole u64 words, in bytes. */
export function dirtyBitmapBytes(npages: number): number {
  return Math.ceil(npages / 64) * 8;
}
/** DIRTY_BITMAP_SIZE_MAX: 256 MiB, the largest bitmap a caller may pass (8 TiB of 4 KiB pages). */
export const DIRTY_BITMAP_SIZE_MAX = dirtyBitmapBytes(DIRTY_BITMAP_PAGES_MAX);

/** What the bitmap copy needs from user memory (an AddressSpace). */
export interface UserMemory {
  read(addr: Hva, dst: Uint8Array, off?: number, len?: number): void;
  write(addr: Hva, src: Uint8Array, off?: number, len?: number): void;
}

/** verify_bitmap_size: EINVAL unless the caller's bitmap is non-empty, within the maximum and big enough. */
export function verifyBitmapSize(npages: number, bitmapSize: number, what: string): void {
  if (npages === 0 || bitmapSize === 0 || bitmapSize > DIRTY_BITMAP_SIZE_MAX || bitmapSize < dirtyBitmapBytes(npages)) {
    throw new KernelError(
      Errno.EINVAL,
      `${what}: a bitmap of ${bitmapSize} byte(s) for ${npages} page(s) is invalid: it must be non-empty, at most ` +
        `${DIRTY_BITMAP_SIZE_MAX} bytes and hold at least ${dirtyBitmapBytes(npages)} bytes`,
      { npages, bitmapSize },
    );
  }
}

/** vfio_dma_bitmap_alloc: EINVAL beyond INT_MAX pages; 8 spare bytes as Linux allocates. */
export function allocDirtyBitmap(npages: number, what: string): Uint8Array {
  if (npages > DIRTY_BITMAP_PAGES_MAX) {
    throw new KernelError(
      Errno.EINVAL,
      `${what}: ${npages} pages exceed the ${DIRTY_BITMAP_PAGES_MAX} a dirty bitmap can describe`,
    );
  }
  return new Uint8Array(dirtyBitmapBytes(npages) + 8);
}

export function setBit(bitmap: Uint8Array, bit: number): void {
  bitmap[bit >>> 3]! |= 1 << (bit & 7);
}

export function testBit(bitmap: Uint8Array, bit: number): boolean {
  return (bitmap[Math.floor(bit / 8)]! & (1 << (bit % 8))) !== 0;
}

/** bitmap_set(bitmap, start, n). */
export function setBits(bitmap: Uint8Array, start: number, n: number): void {
  let i = start;
  const end = start + n;
  while (i < end && i % 8 !== 0) setBit(bitmap, i++);
  if (i + 8 <= end) {
    const from = i / 8;
    const to = Math.floor(end / 8);
    bitmap.fill(0xff, from, to);
    i = to * 8;
  }
  while (i < end) setBit(bitmap, i++);
}

/** Number of set bits in the first `nbits` bits. */
export function countBits(bitmap: Uint8Array, nbits: number): number {
  let n = 0;
  const whole = Math.floor(nbits / 8);
  for (let i = 0; i < whole; i++) {
    let b = bitmap[i]!;
    while (b !== 0) {
      b &= b - 1;
      n++;
    }
  }
  for (let i = whole * 8; i < nbits; i++) if (testBit(bitmap, i)) n++;
  return n;
}

/**
 * update_user_bitmap's copy: writes the first `nbits` bits of `bits` into the user bitmap at `userData`, starting at
 * bit `bitOffset` (see the module comment for the shift and the OR of the first word). EFAULT when the user memory
 * cannot be read or written.
 */
export function copyBitsToUser(
  mem: UserMemory,
  userData: number,
  bits: Uint8Array,
  nbits: number,
  bitOffset: number,
): void {
  const wordOffset = Math.floor(bitOffset / 64);
  const shift = bitOffset % 64;
  const bytes = dirtyBitmapBytes(nbits + shift);
  const out = new Uint8Array(bytes);
  const at = userData + wordOffset * 8;
  if (shift === 0) {
    out.set(bits.subarray(0, Math.min(bits.length, bytes)));
    // Bits past nbits in the last byte are not part of this mapping.
    clearFrom(out, nbits);
  } else {
    const byteShift = shift >>> 3;
    const bitShift = shift & 7;
    const srcBytes = Math.ceil(nbits / 8);
    for (let j = 0; j < srcBytes; j++) {
      let v = bits[j]!;
      if (j === srcBytes - 1 && nbits % 8 !== 0) v &= (1 << (nbits % 8)) - 1;
      if (v === 0) continue;
      const k = j + byteShift;
      out[k]! |= (v << bitShift) & 0xff;
      if (bitShift !== 0 && k + 1 < bytes) out[k + 1]! |= v >>> (8 - bitShift);
    }
    const leftover = new Uint8Array(8);
    userCopy(() => mem.read(at as Hva, leftover), "read", at, 8);
    for (let k = 0; k < 8; k++) out[k]! |= leftover[k]!;
  }
  userCopy(() => mem.write(at as Hva, out), "write", at, bytes);
}

function clearFrom(out: Uint8Array, bit: number): void {
  const byte = Math.floor(bit / 8);
  if (byte >= out.length) return;
  if (bit % 8 !== 0) {
    out[byte]! &= (1 << (bit % 8)) - 1;
    out.fill(0, byte + 1);
  } else {
    out.fill(0, byte);
  }
}

function userCopy(fn: () => void, op: "read" | "write", at: number, len: number): void {
  try {
    fn();
  } catch (e) {
    if (e instanceof KernelError) {
      throw new KernelError(
        Errno.EFAULT,
        `cannot ${op} the dirty bitmap at ${hex(at)} (${len} bytes) in user memory: ${e.message}`,
      );
    }
    throw e;
  }
}
