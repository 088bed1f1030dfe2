/**
 * The guest's graphics-memory allocator: hands out GMA ranges, page-granular, only inside the ranges the device said
 * the guest owns. This is ballooning (i915's intel_vgt_balloon): a vGPU guest sees the whole 4 GiB graphics address
 * space, but PVINFO names its mappable (aperture) and non-mappable (hidden) partitions, and the driver simply never
 * allocates anything else. A guest on a whole physical GPU gets everything except the GPU's reserved ranges.
 *
 * Allocation is first fit, lowest address first, over a sorted free list per zone; `free` coalesces neighbours. The
 * allocator is not a hot path (buffers are allocated once per workload), so the free lists are plain arrays.
 *
 * Invariants: free extents of a zone are sorted, page-aligned, non-empty, never adjacent (coalesced) and never
 * overlap an allocation; every allocation lies inside exactly one owned range; `freeBytes + usedBytes` equals the
 * total owned size.
 */
import { Errno, type Gma, gma, hex, KernelError, PAGE_SIZE } from "../core/index.ts";

/** Where graphics memory lives: CPU-visible through the aperture (BAR2), or not. */
export type GmZone = "mappable" | "nonmappable";

/** A range [base, base + size) of graphics memory addresses. */
export interface GmExtent {
  readonly base: Gma;
  readonly size: number;
}

export interface GmAllocOptions {
  /** Zone to allocate from; default: non-mappable first, then mappable. */
  readonly zone?: GmZone;
  /** Alignment in bytes (a multiple of the page size); default one page. */
  readonly align?: number;
}

export interface GmAllocation extends GmExtent {
  readonly zone: GmZone;
}

interface Extent {
  start: number;
  end: number;
}

export class GmAllocator {
  private readonly free = new Map<GmZone, Extent[]>([
    ["mappable", []],
    ["nonmappable", []],
  ]);
  private readonly owned: Record<GmZone, readonly GmExtent[]>;
  /** Live allocations: base -> (end, zone). */
  private readonly live = new Map<number, { end: number; zone: GmZone }>();
  usedBytes = 0;

  /** `mappable` and `nonmappable` are the owned ranges of each zone (page-aligned, non-overlapping). */
  constructor(mappable: readonly GmExtent[], nonmappable: readonly GmExtent[]) {
    this.owned = { mappable: [...mappable], nonmappable: [...nonmappable] };
    const all: Extent[] = [];
    for (const zone of ["mappable", "nonmappable"] as const) {
      for (const r of this.owned[zone]) {
        if (r.base % PAGE_SIZE !== 0 || r.size % PAGE_SIZE !== 0 || r.size < 0) {
          throw new KernelError(Errno.EINVAL, `GM range ${hex(r.base)} +${hex(r.size)} is not page-aligned`);
        }
        if (r.size === 0) continue;
        const e = { start: r.base as number, end: r.base + r.size };
        all.push(e);
        this.free.get(zone)!.push({ ...e });
      }
      this.free.get(zone)!.sort((a, b) => a.start - b.start);
    }
    all.sort((a, b) => a.start - b.start);
    for (let i = 1; i < all.length; i++) {
      if (all[i]!.start < all[i - 1]!.end) {
        throw new KernelError(Errno.EINVAL, `GM ranges overlap at ${hex(all[i]!.start)}`);
      }
    }
  }

  /** The ranges this guest owns, per zone (what ballooning leaves it). */
  ranges(zone: GmZone): readonly GmExtent[] {
    return this.owned[zone];
  }

  totalBytes(zone?: GmZone): number {
    const zones: readonly GmZone[] = zone ? [zone] : ["mappable", "nonmappable"];
    let n = 0;
    for (const z of zones) for (const r of this.owned[z]) n += r.size;
    return n;
  }

  freeBytes(zone?: GmZone): number {
    const zones: readonly GmZone[] = zone ? [zone] : ["mappable", "nonmappable"];
    let n = 0;
    for (const z of zones) for (const e of this.free.get(z)!) n += e.end - e.start;
    return n;
  }

  /** Whether [addr, addr + size) lies entirely inside one owned range (ballooning's test). */
  owns(addr: number, size = 1): boolean {
    return this.zoneOf(addr, size) !== undefined;
  }

  /** The zone whose owned range holds all of [addr, addr + size), or undefined. */
  zoneOf(addr: number, size = 1): GmZone | undefined {
    for (const zone of ["mappable", "nonmappable"] as const) {
      for (const r of this.owned[zone]) if (addr >= r.base && addr + size <= r.base + r.size) return zone;
    }
    return undefined;
  }

  /** Allocates `size` bytes (rounded up to pages); ENOSPC naming the zone and its free space if nothing fits. */
  alloc(size: number, opts: GmAllocOptions = {}): GmAllocation {
    const bytes = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
    const align = opts.align ?? PAGE_SIZE;
    if (!(bytes > 0) || !Number.isSafeInteger(bytes) || align <= 0 || align % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `GM allocation of ${size} bytes aligned to ${align}: bad size or alignment`);
    }
    const zones: readonly GmZone[] = opts.zone ? [opts.zone] : ["nonmappable", "mappable"];
    for (const zone of zones) {
      const list = this.free.get(zone)!;
      for (let i = 0; i < list.length; i++) {
        const e = list[i]!;
        const start = Math.ceil(e.start / align) * align;
        if (start + bytes > e.end) continue;
        // Split the extent into what is left before and after the allocation.
        const tail = { start: start + bytes, end: e.end };
        const parts: Extent[] = [];
        if (start > e.start) parts.push({ start: e.start, end: start });
        if (tail.end > tail.start) parts.push(tail);
        list.splice(i, 1, ...parts);
        this.live.set(start, { end: start + bytes, zone });
        this.usedBytes += bytes;
        return { base: gma(start), size: bytes, zone };
      }
    }
    throw new KernelError(
      Errno.ENOSPC,
      `no ${bytes}-byte GM range (aligned ${hex(align)}) free in ${zones.join(" or ")} graphics memory: ` +
        zones.map((z) => `${z} has ${this.freeBytes(z)} of ${this.totalBytes(z)} bytes free`).join(", "),
    );
  }

  /** Returns an allocation made by `alloc` (by its base). EINVAL if `base` is not a live allocation. */
  release(base: Gma): void {
    const a = this.live.get(base);
    if (!a) throw new KernelError(Errno.EINVAL, `GMA ${hex(base)} is not the start of a live GM allocation`);
    this.live.delete(base);
    this.usedBytes -= a.end - base;
    const list = this.free.get(a.zone)!;
    let i = 0;
    while (i < list.length && list[i]!.start < base) i++;
    const prev = list[i - 1];
    const next = list[i];
    const joinPrev = prev !== undefined && prev.end === base;
    const joinNext = next !== undefined && next.start === a.end;
    if (joinPrev && joinNext) {
      prev.end = next.end;
      list.splice(i, 1);
    } else if (joinPrev) prev.end = a.end;
    else if (joinNext) next.start = base;
    else list.splice(i, 0, { start: base, end: a.end });
  }

  /** Number of live allocations. */
  get allocations(): number {
    return this.live.size;
  }

  /** Throws if an invariant does not hold (tests call it after random operation sequences). */
  checkInvariants(): void {
    let free = 0;
    for (const zone of ["mappable", "nonmappable"] as const) {
      const list = this.free.get(zone)!;
      for (let i = 0; i < list.length; i++) {
        const e = list[i]!;
        if (e.end <= e.start) throw new Error(`empty free extent in ${zone}`);
        if (i > 0 && list[i - 1]!.end >= e.start) throw new Error(`free extents of ${zone} not coalesced/sorted`);
        if (this.zoneOf(e.start, e.end - e.start) !== zone) throw new Error(`free extent outside ${zone} ranges`);
        for (const [b, a] of this.live) {
          if (b < e.end && a.end > e.start) throw new Error(`free extent overlaps allocation ${hex(b)}`);
        }
        free += e.end - e.start;
      }
    }
    for (const [b, a] of this.live) {
      if (this.zoneOf(b, a.end - b) !== a.zone) throw new Error(`allocation ${hex(b)} outside its zone`);
    }
    if (free + this.usedBytes !== this.totalBytes()) throw new Error("free + used != total");
  }
}
