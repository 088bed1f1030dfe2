/**
 * A range allocator for graphics memory: hands out contiguous, page-aligned pieces of one range [start, end) of GM,
 * first fit from the lowest address (drm_mm's default bottom-up search, which GVT-g uses for vGPU partitions), and
 * coalesces neighbours on free.
 *
 * The host graphics driver keeps one per region: its own aperture and hidden reservations, and the vGPU aperture and
 * hidden regions. Allocation counts are small (tens of partitions, a few hundred shadow buffers), so free extents are a
 * sorted array searched linearly; frees locate their extent by binary search.
 *
 * Invariants (checked by `check()`): free extents are sorted, disjoint, non-adjacent and inside the range; allocated
 * pieces are inside the range and disjoint from each other and from free extents; free + allocated bytes = the range.
 */
import { Errno, type Gma, hex, KernelError, PAGE_SIZE } from "../core/index.ts";

export class GmRegionAllocator {
  readonly name: string;
  readonly start: number;
  readonly end: number;
  /** Free extents, sorted by base. */
  private readonly freeBase: number[] = [];
  private readonly freeSize: number[] = [];
  private readonly live = new Map<number, number>();
  private freeBytes: number;

  constructor(name: string, start: number, size: number) {
    if (start % PAGE_SIZE !== 0 || size % PAGE_SIZE !== 0 || size < 0 || start < 0) {
      throw new KernelError(Errno.EINVAL, `GM region ${name} [${hex(start)}, +${hex(size)}) is not page aligned`);
    }
    this.name = name;
    this.start = start;
    this.end = start + size;
    this.freeBytes = size;
    if (size > 0) {
      this.freeBase.push(start);
      this.freeSize.push(size);
    }
  }

  get size(): number {
    return this.end - this.start;
  }

  get free(): number {
    return this.freeBytes;
  }

  get used(): number {
    return this.size - this.freeBytes;
  }

  largestFree(): number {
    let m = 0;
    for (const s of this.freeSize) if (s > m) m = s;
    return m;
  }

  /**
   * The lowest base of a free piece of `size` bytes (a multiple of 4 KiB) aligned to `align`, or undefined when no
   * free extent holds one. The allocator is where graphics memory addresses are minted: its pieces are `Gma`s.
   */
  alloc(size: number, align = PAGE_SIZE): Gma | undefined {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `GM allocation of ${size} bytes in ${this.name}: not a positive multiple of 4 KiB`,
      );
    }
    for (let i = 0; i < this.freeBase.length; i++) {
      const b = this.freeBase[i]!;
      const s = this.freeSize[i]!;
      const at = Math.ceil(b / align) * align;
      if (at + size > b + s) continue;
      // Split the extent into [b, at) and [at + size, b + s).
      const before = at - b;
      const after = b + s - (at + size);
      if (before === 0 && after === 0) {
        this.freeBase.splice(i, 1);
        this.freeSize.splice(i, 1);
      } else if (before === 0) {
        this.freeBase[i] = at + size;
        this.freeSize[i] = after;
      } else if (after === 0) {
        this.freeSize[i] = before;
      } else {
        this.freeSize[i] = before;
        this.freeBase.splice(i + 1, 0, at + size);
        this.freeSize.splice(i + 1, 0, after);
      }
      this.live.set(at, size);
      this.freeBytes -= size;
      return at as Gma;
    }
    return undefined;
  }

  /** Frees the piece allocated at `base`; returns its size. EINVAL if nothing is allocated there. */
  release(base: Gma): number {
    const size = this.live.get(base);
    if (size === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `GM ${hex(base)} is not allocated in ${this.name} (double free or wrong region)`,
      );
    }
    this.live.delete(base);
    this.freeBytes += size;
    // Insertion point: first extent above base.
    let lo = 0;
    let hi = this.freeBase.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.freeBase[mid]! < base) lo = mid + 1;
      else hi = mid;
    }
    const prevJoins = lo > 0 && this.freeBase[lo - 1]! + this.freeSize[lo - 1]! === base;
    const nextJoins = lo < this.freeBase.length && this.freeBase[lo] === base + size;
    if (prevJoins && nextJoins) {
      this.freeSize[lo - 1] = this.freeSize[lo - 1]! + size + this.freeSize[lo]!;
      this.freeBase.splice(lo, 1);
      this.freeSize.splice(lo, 1);
    } else if (prevJoins) {
      this.freeSize[lo - 1] = this.freeSize[lo - 1]! + size;
    } else if (nextJoins) {
      this.freeBase[lo] = base;
      this.freeSize[lo] = this.freeSize[lo]! + size;
    } else {
      this.freeBase.splice(lo, 0, base);
      this.freeSize.splice(lo, 0, size);
    }
    return size;
  }

  /** Size of the piece allocated at `base`, or undefined. */
  sizeAt(base: Gma): number | undefined {
    return this.live.get(base);
  }

  /** Allocated pieces, sorted by base. */
  allocations(): { base: number; size: number }[] {
    return [...this.live].map(([base, size]) => ({ base, size })).sort((a, b) => a.base - b.base);
  }

  /** Free extents, sorted by base. */
  freeExtents(): { base: number; size: number }[] {
    return this.freeBase.map((base, i) => ({ base, size: this.freeSize[i]! }));
  }

  contains(base: number, size: number): boolean {
    return base >= this.start && base + size <= this.end;
  }

  /** Throws if an invariant of the module comment does not hold. */
  check(): void {
    const fail = (what: string): never => {
      throw new Error(`GM allocator ${this.name} invariant violated: ${what}`);
    };
    const pieces = [
      ...this.freeExtents().map((e) => ({ ...e, free: true })),
      ...this.allocations().map((e) => ({ ...e, free: false })),
    ].sort((a, b) => a.base - b.base);
    let at = this.start;
    let freeSum = 0;
    let prevFree = false;
    for (const p of pieces) {
      if (p.size <= 0) fail(`empty piece at ${hex(p.base)}`);
      if (p.base !== at) fail(`gap or overlap at ${hex(at)} (next piece at ${hex(p.base)})`);
      if (p.free && prevFree) fail(`adjacent free extents at ${hex(p.base)} were not merged`);
      if (p.free) freeSum += p.size;
      prevFree = p.free;
      at = p.base + p.size;
    }
    if (at !== this.end) fail(`pieces end at ${hex(at)}, region ends at ${hex(this.end)}`);
    if (freeSum !== this.freeBytes) fail(`free bytes ${freeSum} != counted ${this.freeBytes}`);
  }
}
