/**
 * The IOVA ranges a type1 container accepts in MAP_DMA (the `iova_list` of vfio_iommu_type1.c), and the list surgery
 * done when IOMMU-backed groups come and go.
 *
 * - A container without an IOMMU domain has an empty list, which allows any IOVA (a container holding only mdev
 *   groups: the vendor driver decides what it can reach).
 * - Attaching an IOMMU-backed group works on a copy: `resize` to the domain's aperture (dropping ranges outside it,
 *   clipping the ones across its edges; an empty list becomes the aperture), then `exclude` each reserved region of
 *   the group (splitting ranges around it; EINVAL if nothing is left). The copy replaces the list only if the attach
 *   succeeds (vfio_iommu_iova_get_copy / vfio_iommu_iova_insert_copy).
 * - Detaching refreshes the list from the remaining domains and groups (vfio_iommu_aper_expand then
 *   vfio_iommu_resv_refresh): once the last domain is gone the list is the whole 64-bit space, not empty.
 *
 * Ranges are inclusive [start, end], as the kernel and the IOVA_RANGE capability state them. Numbers are exact below
 * 2^53; the one value above that the kernel uses, the top of the 64-bit space (2^64 - 1, `(dma_addr_t)~0`), is stood
 * for by `IOVA_TOP` (2^64, the nearest double) and converted back at the UAPI edge (`toU64`).
 *
 * Not modelled: IOMMU_RESV_DIRECT_RELAXABLE regions (the host's IOMMU reports none), multiple domains with different
 * apertures (a type1 container here has at most one domain).
 */
import { Errno, hex, KernelError } from "../../core/index.ts";

/** Stands for 2^64 - 1, the last IOVA of the 64-bit space (see the module comment). */
export const IOVA_TOP = 2 ** 64;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** A number from this module as the u64 the UAPI carries (IOVA_TOP becomes 2^64 - 1). */
export function toU64(n: number): bigint {
  return n >= IOVA_TOP ? U64_MAX : BigInt(n);
}

/** "0xfee00000" or "0xffffffffffffffff" for the top of the space. */
function show(n: number): string {
  return n >= IOVA_TOP ? "0xffffffffffffffff" : hex(n);
}

export interface IovaRange {
  start: number;
  /** Inclusive. */
  end: number;
}

/** A sorted list of disjoint inclusive ranges. */
export class IovaRanges {
  private list: IovaRange[];

  constructor(ranges: readonly IovaRange[] = []) {
    this.list = ranges.map((r) => ({ start: r.start, end: r.end }));
  }

  get length(): number {
    return this.list.length;
  }

  isEmpty(): boolean {
    return this.list.length === 0;
  }

  /** vfio_iommu_iova_get_copy. */
  copy(): IovaRanges {
    return new IovaRanges(this.list);
  }

  ranges(): readonly Readonly<IovaRange>[] {
    return this.list.map((r) => ({ start: r.start, end: r.end }));
  }

  /**
   * vfio_iommu_iova_dma_valid: is [start, end] (inclusive) inside one range? An empty list allows everything (a
   * container with only emulated groups).
   */
  allows(start: number, end: number): boolean {
    if (this.list.length === 0) return true;
    for (const r of this.list) if (start >= r.start && end <= r.end) return true;
    return false;
  }

  /**
   * vfio_iommu_aper_conflict, first half: would narrowing to the aperture [start, end] leave the current ranges
   * disjoint from it? (The second half, existing mappings outside the aperture, needs the mapping tree; see groups.ts.)
   */
  disjointFrom(start: number, end: number): boolean {
    if (this.list.length === 0) return false;
    return start > this.list[this.list.length - 1]!.end || end < this.list[0]!.start;
  }

  /** First and last bounds, for the mapping checks of vfio_iommu_aper_conflict (undefined when empty). */
  bounds(): { start: number; end: number } | undefined {
    if (this.list.length === 0) return undefined;
    return { start: this.list[0]!.start, end: this.list[this.list.length - 1]!.end };
  }

  /**
   * vfio_iommu_aper_resize: narrows the list to [start, end]. An empty list becomes exactly the aperture. Ranges wholly
   * outside are dropped, ranges across an edge are clipped to it.
   */
  resize(start: number, end: number): void {
    if (this.list.length === 0) {
      this.list.push({ start, end });
      return;
    }
    const out: IovaRange[] = [];
    for (const r of this.list) {
      if (r.end < start || r.start > end) continue;
      out.push({ start: Math.max(r.start, start), end: Math.min(r.end, end) });
    }
    this.list = out;
  }

  /**
   * vfio_iommu_resv_exclude: removes each reserved region [start, end] from the ranges, splitting those it falls
   * inside. EINVAL when nothing is left (a group whose reserved regions cover the whole aperture cannot be used).
   */
  exclude(regions: readonly { readonly start: number; readonly end: number }[]): void {
    for (const resv of regions) {
      const out: IovaRange[] = [];
      for (const n of this.list) {
        if (resv.start > n.end || resv.end < n.start) {
          out.push(n);
          continue;
        }
        if (resv.start > n.start) out.push({ start: n.start, end: resv.start - 1 });
        if (resv.end < n.end) out.push({ start: resv.end + 1, end: n.end });
      }
      this.list = out;
    }
    if (this.list.length === 0) {
      throw new KernelError(
        Errno.EINVAL,
        `no usable IOVA range is left once reserved region(s) ${regions.map((r) => `[${show(r.start)}, ${show(r.end)}]`).join(", ")} are excluded`,
      );
    }
  }

  /**
   * vfio_iommu_aper_expand: after a domain went away, widen the first range's start and the last range's end to the
   * intersection of the remaining apertures (the whole 64-bit space when none remain). An empty list stays empty.
   */
  expand(start: number, end: number): void {
    if (this.list.length === 0) return;
    this.list[0]!.start = start;
    this.list[this.list.length - 1]!.end = end;
  }

  /**
   * vfio_iommu_resv_refresh: rebuild from the outer bounds minus the reserved regions of the groups still attached.
   * Returns false (the caller keeps its current list) when this list is empty or nothing would be left.
   */
  refresh(regions: readonly { readonly start: number; readonly end: number }[]): boolean {
    const b = this.bounds();
    if (b === undefined) return false;
    this.list = [{ start: b.start, end: b.end }];
    try {
      this.exclude(regions);
      return true;
    } catch {
      return false;
    }
  }

  /** "[0x0, 0xfedfffff], [0xfef00000, 0xffffffffffff]" */
  toString(): string {
    return this.list.length === 0 ? "(any)" : this.list.map((r) => `[${show(r.start)}, ${show(r.end)}]`).join(", ");
  }
}
