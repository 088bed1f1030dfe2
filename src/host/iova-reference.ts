/**
 * `LinearIovaDomain`: a straightforward port of the tree half of Linux's drivers/iommu/iova.c (the rbtree allocator
 * of current 6.x kernels), kept as the test oracle for `IovaDomain` and as the "Linux-style linear search" contrast in
 * the benchmark. Same alloc_iova / free_iova / find_iova / reserve_iova API; no range caches.
 *
 * It follows the kernel statement by statement: the allocation walks backwards (rb_prev) from the cached node,
 * retries once from the limit down to just above the cached node's pfn_hi, remembers a failed size in
 * max32_alloc_size; freeing updates the cached nodes with __cached_rbnode_delete_update; reserve_iova scans every
 * range from the first (rb_first) and extends overlapped ones. The walk is linear in the number of ranges below the
 * cached node, as in Linux: under fragmentation one allocation visits every range.
 *
 * Differences of form, not of result:
 * - Ranges sit in one sorted array (a gap buffer: pfn_lo and pfn_hi arrays with a movable hole), not an rbtree.
 *   rb_prev/rb_next are index - 1 / + 1, find_iova a binary search, and inserting or erasing next to the last
 *   position is O(1), so building a million ranges top-down stays cheap. The walk over an array is faster than
 *   Linux's pointer chasing, which flatters this port, not the fast allocator.
 * - iova_find_limit (the retry's starting node) is the lowest range reaching the limit, or the anchor for limits
 *   above the 32-bit space, as in Linux; the kernel's tree walk may start a few ranges higher, all of them above the
 *   limit, which the walk passes over without effect.
 * - The kernel retries while low_pfn == start_pfn; the retry sets low_pfn = retry_pfn + 1, which cannot equal
 *   start_pfn because a cached node always ends at or above start_pfn. An explicit flag says "retry once" instead.
 * - Arguments are validated (EINVAL) where the kernel would WARN or misbehave.
 */
import { Errno, KernelError, PAGE_SIZE } from "../core/index.ts";

export interface LinearIovaDomainOptions {
  readonly startPfn: number;
  /** Default 2^32 / granule. */
  readonly dma32Pfn?: number;
  /** Default 4096. */
  readonly granule?: number;
}

/** Inclusive range, as IovaRange. */
export interface LinearIovaRange {
  readonly pfnLo: number;
  readonly pfnHi: number;
}

const IOVA_ANCHOR = 2 ** 53;

function fls(x: number): number {
  let n = 0;
  while (x >= 1) {
    x = Math.floor(x / 2);
    n++;
  }
  return n;
}

function checkPfn(pfn: number, what: string): void {
  if (!Number.isSafeInteger(pfn) || pfn < 0) {
    throw new KernelError(Errno.EINVAL, `${what}: pfn ${pfn} is not an integer in [0, 2^53)`);
  }
}

export class LinearIovaDomain {
  readonly startPfn: number;
  readonly dma32Pfn: number;
  /** Range visits made by the allocation walks so far (for the benchmark and tests of the linear behaviour). */
  steps = 0;

  // Gap buffer: logical index i lives at i, or at i + (ge - gs) once past the hole [gs, ge).
  private lo: Float64Array;
  private hi: Float64Array;
  private gs = 0;
  private ge: number;
  private cap: number;

  /** Logical indices of the cached nodes. */
  private cached32 = 0;
  private cached = 0;
  private max32AllocSize: number;

  constructor(opts: LinearIovaDomainOptions) {
    const granule = opts.granule ?? PAGE_SIZE;
    if (!Number.isSafeInteger(opts.startPfn) || opts.startPfn < 1) {
      throw new KernelError(Errno.EINVAL, `IOVA start pfn ${opts.startPfn} must be an integer >= 1`);
    }
    this.startPfn = opts.startPfn;
    this.dma32Pfn = opts.dma32Pfn ?? 2 ** 32 / granule;
    this.max32AllocSize = this.dma32Pfn;
    this.cap = 64;
    this.lo = new Float64Array(this.cap);
    this.hi = new Float64Array(this.cap);
    this.ge = this.cap;
    // The anchor: logical index 0 of an otherwise empty array.
    this.insertAt(0, IOVA_ANCHOR, IOVA_ANCHOR);
    this.cached32 = 0;
    this.cached = 0;
  }

  allocIova(size: number, limitPfn: number, sizeAligned: boolean): LinearIovaRange | undefined {
    if (!Number.isSafeInteger(size) || size < 1 || size > 2 ** 51) {
      throw new KernelError(Errno.EINVAL, `alloc_iova: size ${size} pages; expected an integer in [1, 2^51]`);
    }
    checkPfn(limitPfn, "alloc_iova limit");
    const pfn = this.allocAndInsert(size, limitPfn + 1, sizeAligned);
    return pfn < 0 ? undefined : { pfnLo: pfn, pfnHi: pfn + size - 1 };
  }

  findIova(pfn: number): LinearIovaRange | undefined {
    checkPfn(pfn, "find_iova");
    const i = this.find(pfn);
    return i < 0 ? undefined : { pfnLo: this.loAt(i), pfnHi: this.hiAt(i) };
  }

  freeIova(pfn: number): boolean {
    checkPfn(pfn, "free_iova");
    const i = this.find(pfn);
    if (i < 0) return false;
    this.cachedDeleteUpdate(i);
    this.removeAt(i);
    return true;
  }

  reserveIova(pfnLo: number, pfnHi: number): LinearIovaRange {
    checkPfn(pfnLo, "reserve_iova");
    checkPfn(pfnHi, "reserve_iova");
    if (pfnLo > pfnHi) {
      throw new KernelError(Errno.EINVAL, `reserve_iova: pfn range ${pfnLo}..${pfnHi} is empty (lo > hi)`);
    }
    let lo = pfnLo;
    let overlap = false;
    const n = this.length;
    for (let i = 0; i < n; i++) {
      if (lo <= this.hiAt(i) && pfnHi >= this.loAt(i)) {
        // __adjust_overlap_range
        if (lo < this.loAt(i)) this.setLoAt(i, lo);
        if (pfnHi > this.hiAt(i)) lo = this.hiAt(i) + 1;
        if (lo >= this.loAt(i) && pfnHi <= this.hiAt(i)) return { pfnLo: this.loAt(i), pfnHi: this.hiAt(i) };
        overlap = true;
      } else if (overlap) {
        break;
      }
    }
    // __insert_new_range: plain tree insert, no cached-node update.
    const at = this.lowerBoundLo(lo);
    this.insertAt(at, lo, pfnHi);
    return { pfnLo: lo, pfnHi };
  }

  liveRanges(): number {
    return this.length - 1;
  }

  ranges(): LinearIovaRange[] {
    const out: LinearIovaRange[] = [];
    for (let i = 0; i < this.length - 1; i++) out.push({ pfnLo: this.loAt(i), pfnHi: this.hiAt(i) });
    return out;
  }

  /** Same shape as IovaDomain.state(). */
  state(): { max32AllocSize: number; cached32PfnLo: number | null; cachedPfnLo: number | null } {
    const anchor = this.length - 1;
    return {
      max32AllocSize: this.max32AllocSize,
      cached32PfnLo: this.cached32 === anchor ? null : this.loAt(this.cached32),
      cachedPfnLo: this.cached === anchor ? null : this.loAt(this.cached),
    };
  }

  // ---- __alloc_and_insert_iova_range ----------------------------------------------------------------------------

  private allocAndInsert(size: number, limitPfn: number, sizeAligned: boolean): number {
    const align = sizeAligned ? 2 ** fls(size - 1) : 1;
    const alignDown = (x: number): number => Math.floor(x / align) * align;
    if (limitPfn <= this.dma32Pfn && size >= this.max32AllocSize) return -1; // iova32_full
    let curr = limitPfn <= this.dma32Pfn ? this.cached32 : this.cached;
    const retryPfn = this.hiAt(curr);
    let highPfn = limitPfn;
    let lowPfn = this.startPfn;
    let newPfn = 0;
    let prev = curr;
    let retried = false;
    for (;;) {
      do {
        this.steps++;
        highPfn = Math.min(highPfn, this.loAt(curr));
        // Below zero where C's unsigned subtraction wraps: either way the loop ends and highPfn < size fails it.
        newPfn = alignDown(highPfn - size);
        prev = curr;
        curr = curr - 1;
      } while (curr >= 0 && newPfn <= this.hiAt(curr) && newPfn >= lowPfn);
      if (highPfn < size || newPfn < lowPfn) {
        if (!retried && lowPfn === this.startPfn && retryPfn < limitPfn) {
          retried = true;
          highPfn = limitPfn;
          lowPfn = retryPfn + 1;
          curr = this.findLimit(limitPfn);
          continue;
        }
        this.max32AllocSize = size;
        return -1;
      }
      break;
    }
    // The new range goes just before `prev` (between rb_prev(prev) and prev).
    this.insertAt(prev, newPfn, newPfn + size - 1);
    // __cached_rbnode_insert_update
    if (newPfn + size - 1 < this.dma32Pfn) this.cached32 = prev;
    else this.cached = prev;
    return newPfn;
  }

  /** iova_find_limit: where the retry starts. */
  private findLimit(limitPfn: number): number {
    if (limitPfn > this.dma32Pfn) return this.length - 1;
    // Lowest range with pfn_hi >= limitPfn.
    let a = 0;
    let b = this.length - 1;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (this.hiAt(mid) >= limitPfn) b = mid;
      else a = mid + 1;
    }
    return a;
  }

  /** __cached_rbnode_delete_update for the range at index i (before it is erased). */
  private cachedDeleteUpdate(i: number): void {
    const lo = this.loAt(i);
    const hi = this.hiAt(i);
    const next = i + 1;
    if (i === this.cached32 || (hi < this.dma32Pfn && lo >= this.loAt(this.cached32))) this.cached32 = next;
    if (lo < this.dma32Pfn) this.max32AllocSize = this.dma32Pfn;
    if (lo >= this.loAt(this.cached)) this.cached = next;
  }

  // ---- the sorted array ----------------------------------------------------------------------------------------

  private get length(): number {
    return this.cap - (this.ge - this.gs);
  }

  private phys(i: number): number {
    return i < this.gs ? i : i + (this.ge - this.gs);
  }

  private loAt(i: number): number {
    return this.lo[this.phys(i)]!;
  }

  private hiAt(i: number): number {
    return this.hi[this.phys(i)]!;
  }

  private setLoAt(i: number, v: number): void {
    this.lo[this.phys(i)] = v;
  }

  /** private_find_iova: index of the range containing pfn, or -1. */
  private find(pfn: number): number {
    // Last range with pfn_lo <= pfn.
    let a = 0;
    let b = this.length;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (this.loAt(mid) <= pfn) a = mid + 1;
      else b = mid;
    }
    const i = a - 1;
    return i >= 0 && this.hiAt(i) >= pfn ? i : -1;
  }

  /** Index of the first range with pfn_lo > pfn (where a range starting at pfn is inserted). */
  private lowerBoundLo(pfn: number): number {
    let a = 0;
    let b = this.length;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (this.loAt(mid) < pfn) a = mid + 1;
      else b = mid;
    }
    return a;
  }

  private moveGap(i: number): void {
    if (i < this.gs) {
      const k = this.gs - i;
      this.lo.copyWithin(this.ge - k, i, this.gs);
      this.hi.copyWithin(this.ge - k, i, this.gs);
      this.gs = i;
      this.ge -= k;
    } else if (i > this.gs) {
      const k = i - this.gs;
      this.lo.copyWithin(this.gs, this.ge, this.ge + k);
      this.hi.copyWithin(this.gs, this.ge, this.ge + k);
      this.gs = i;
      this.ge += k;
    }
  }

  private insertAt(i: number, lo: number, hi: number): void {
    if (this.gs === this.ge) this.grow();
    this.moveGap(i);
    this.lo[this.gs] = lo;
    this.hi[this.gs] = hi;
    this.gs++;
    if (this.cached32 >= i) this.cached32++;
    if (this.cached >= i) this.cached++;
  }

  private removeAt(i: number): void {
    this.moveGap(i);
    this.ge++;
    if (this.cached32 > i) this.cached32--;
    if (this.cached > i) this.cached--;
  }

  private grow(): void {
    const cap = this.cap * 2;
    const tail = this.cap - this.ge;
    const lo = new Float64Array(cap);
    const hi = new Float64Array(cap);
    lo.set(this.lo.subarray(0, this.gs));
    hi.set(this.hi.subarray(0, this.gs));
    lo.set(this.lo.subarray(this.ge), cap - tail);
    hi.set(this.hi.subarray(this.ge), cap - tail);
    this.lo = lo;
    this.hi = hi;
    this.ge = cap - tail;
    this.cap = cap;
  }
}
