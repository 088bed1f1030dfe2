/**
 * The global graphics translation table (GGTT): 1 Mi gen8 PTEs mapping graphics memory addresses (GMA, 4 GiB) to DMA
 * addresses, one entry per 4 KiB page (entry index = GMA >> 12).
 *
 * A PTE is stored as a number (bits 0..51 of the 64-bit hardware entry; bits 52..63 are not implemented and read as
 * zero): bit 0 is GEN8_PAGE_PRESENT, bits 12..51 the DMA address, which the GPU then puts on the bus, where the system
 * IOMMU translates it (an IOVA) or not (a host-physical address). Bits 1..11 (caching attributes on hardware) are
 * stored and ignored.
 *
 * Software writes entries through the GTT window of BAR0 (8-byte writes, or two 4-byte halves that each update their
 * half at once, as on hardware: a driver writing halves sees a half-updated entry in between). Entries hold no TLB in
 * the model: a write takes effect for the next access (hardware needs a GFX_FLSH_CNTL write; the model needs none).
 *
 * Invariant: every stored entry is an integer in [0, 2^52), so decoding is exact double arithmetic.
 */
import type { GpuAddressSpace } from "./memory.ts";
import { GEN8_PAGE_PRESENT, GTT_ENTRIES } from "./regs.ts";

const TWO32 = 4294967296;
const TWO52 = 2 ** 52;
/** High half bits kept: bits 32..51 of the entry. */
const HIGH_MASK = 0xfffff;

/** The stored form of a 64-bit PTE value: an integer in [0, 2^52). */
function normalizePte(pte: number): number {
  const v = Math.floor(pte);
  return v >= 0 && v < TWO52 ? v : ((v % TWO52) + TWO52) % TWO52;
}

/** DMA page address of a stored entry, or -1 if not present. */
function decode(pte: number): number {
  const flags = pte % 4096;
  return (flags & GEN8_PAGE_PRESENT) === 0 ? -1 : pte - flags;
}

export class Ggtt implements GpuAddressSpace {
  readonly kind = "ggtt";
  /** The entries, by index (read-only outside this class: writes must keep `pageAddr` in step). */
  readonly entries = new Float64Array(GTT_ENTRIES);
  /**
   * Each entry decoded: its DMA page address, or -1 when not present. Kept beside the raw entries because decoding
   * needs `pte % 4096`, a floating-point modulo once addresses pass 2^31, which would cost as much as the IOMMU
   * translation on every page a blit touches.
   */
  private readonly pageAddr = new Float64Array(GTT_ENTRIES).fill(-1);

  /** The entry at `index` (caller checks the index). */
  read(index: number): number {
    return this.entries[index]!;
  }

  /** Writes a whole entry; bits above 51 are dropped. */
  write(index: number, pte: number): void {
    const v = normalizePte(pte);
    this.entries[index] = v;
    this.pageAddr[index] = decode(v);
  }

  /** The low (bits 0..31) or high (bits 32..63) half of an entry. */
  readHalf(index: number, high: boolean): number {
    const e = this.entries[index]!;
    const hi = Math.floor(e / TWO32);
    return high ? hi : e - hi * TWO32;
  }

  /** Replaces one half of an entry, keeping the other. */
  writeHalf(index: number, high: boolean, value: number): void {
    const e = this.entries[index]!;
    const hi = Math.floor(e / TWO32);
    const lo = e - hi * TWO32;
    const v = high ? (value & HIGH_MASK) * TWO32 + lo : hi * TWO32 + (value >>> 0);
    this.entries[index] = v;
    this.pageAddr[index] = decode(v);
  }

  /** Sets `count` entries from `first` to `pte` (the driver's clear-range loop, in one call). */
  fill(first: number, count: number, pte: number): void {
    const v = normalizePte(pte);
    this.entries.fill(v, first, first + count);
    this.pageAddr.fill(decode(v), first, first + count);
  }

  /**
   * The DMA address of graphics page `gmaPage` (a GMA >> 12), or -1 if the entry is not present or the page is
   * beyond the table. Hot path: no allocation.
   */
  pageDma(gmaPage: number): number {
    if (!(gmaPage >= 0 && gmaPage < GTT_ENTRIES)) return -1;
    return this.pageAddr[gmaPage]!;
  }

  /** The GGTT never stops an access: a missing entry is a GTT fault that reads zeros and drops writes. */
  faultReason(): string {
    return "";
  }

  /** Every entry to zero (not present): the power-on state. */
  reset(): void {
    this.entries.fill(0);
    this.pageAddr.fill(-1);
  }
}
