/**
 * The IOVA allocator of one DMA domain, with the semantics of Linux's drivers/iommu/iova.c (the rbtree allocator of
 * current 6.x kernels, with iova_find_limit restarts and depot trimming) and a search that is O(log n) in the worst
 * case instead of linear.
 *
 * Semantics reproduced (see iova-reference.ts for a line-by-line port used as the test oracle):
 * - A tree of allocated ranges [pfnLo, pfnHi] (inclusive) with an anchor node above every usable pfn.
 * - Two cached nodes: `cached32` for requests whose limit is within the 32-bit space (limit + 1 <= dma32Pfn) and
 *   `cached` for the others. alloc_iova searches top-down starting just below the cached node's pfnLo (clipped to the
 *   limit); a new range becomes the cached node of its half (__cached_rbnode_insert_update); freeing a range at or above
 *   a cached node moves that cache to the freed range's successor (__cached_rbnode_delete_update).
 * - size-aligned requests start at a multiple of 2^fls(size - 1) (the size rounded up to a power of two).
 * - When nothing fits below the cached node, one retry searches from the limit down to just above the cached node's
 *   pfnHi (retry_pfn + 1). Still failing: max32_alloc_size = size, and later requests within the 32-bit space of that
 *   size or larger fail at once ("fail-fast max32") until a range below dma32Pfn is freed. As in the rbtree kernel code
 *   the failed size is remembered whatever the limit of the failing request; only 32-bit requests consult it. (A
 *   maple-tree version of iova.c records it only for 32-bit limits; as a failed 64-bit search has covered the whole
 *   space, a 32-bit request of that size would fail too, so the difference is only which request pays.)
 * - reserve_iova walks the overlapping ranges in order: it lowers the first one's pfnLo to the request, continues
 *   with the remainder above each, and inserts what is left as a new range (ranges are extended, never merged). It
 *   does not touch the cached nodes or max32_alloc_size.
 * - The fast path (alloc_iova_fast, free_iova_fast): sizes below 32 pages are rounded up to a power of two, and
 *   ranges of up to 32 pages go through the per-CPU caches of iova-rcache.ts; on failure with flushRcache, every
 *   cache is emptied into the tree and the allocation retried once.
 *
 * The search. Nodes live in an AVL tree keyed by pfnLo. Each node also stores `gapLo`, the first pfn of the free gap
 * just below it (its predecessor's pfnHi + 1, or 0), and two subtree maxima over those gaps:
 * - `aggLen`: the largest gap length. Exact pruning for unaligned requests (a gap fits iff its length >= size).
 * - `aggKey`: the largest "aligned-fit key" 2^(o+1) + r, where o is the largest order such that an aligned block of
 *   2^o pages fits in the gap and r is the room left in the gap after its first 2^(o+1)-aligned pfn (r < 2^(o+1)).
 *   An aligned request of s pages with alignment A = 2^k fits in a gap iff the gap's key >= A + s: if o >= k a whole
 *   aligned 2^k block fits; if o = k - 1 it fits iff the room after the first A-aligned pfn is at least s; below that
 *   it cannot fit (an aligned fit of s > 2^(k-1) pages would contain an aligned 2^(k-1) block). The key is monotone in
 *   (o, r), so its subtree maximum prunes exactly, for power-of-two and other sizes alike (exact for sizes up to 2^51
 *   pages, which the arguments are limited to).
 * Linux's walk returns the highest position fitting in a gap at or below the start node, then checks it against the
 * pass's lower bound; the candidate positions only decrease along the walk, so "the rightmost node at or below the
 * start whose gap fits" is the same answer. With exact subtree maxima that node is found on one root-to-leaf path
 * and one descent: O(log n) however fragmented the space is. Insert, erase, find, successor: O(log n).
 *
 * Storage: one Float64Array, 8 slots (64 bytes) per node, nodes linked by index with a free list; capacity doubles as
 * needed, so 1 million live ranges take 64 to 128 MiB. The anchor is a node at pfn 2^53, above every pfn a caller may pass (pfns are safe integers).
 *
 * Not modelled: the best-fit mode (iovad->best_fit, removed from Linux), locking, the flush queue (it belongs to
 * iommu-dma), CPU hotplug itself (freeCpuCachedIovas is its hook). pfn 0 is alloc_iova_fast's failure value, so `startPfn` must be at least 1 (iommu-dma uses
 * max(1, aperture start) too). free_iova_fast, as in Linux, trusts its caller: caching a pfn that is not allocated
 * corrupts the domain (only pfn 0, the failure value, is rejected).
 */
import {
  defineTraceEvents,
  Errno,
  type IovaPfn,
  KernelError,
  PAGE_SIZE,
  type SchedulingClock,
  type Tracer,
} from "../core/index.ts";
import { CostMeter } from "../cost/index.ts";
import { IovaRcache } from "./iova-rcache.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "iova.alloc": { domain: string; pfnLo: number; pages: number; limitPfn: number; source: "tree" | "rcache" };
    "iova.free": { domain: string; pfnLo: number; pages: number; dest: "tree" | "rcache" };
    "iova.reserve": { domain: string; pfnLo: number; pfnHi: number; resultPfnLo: number; resultPfnHi: number };
    "iova.alloc.fail": {
      domain: string;
      pages: number;
      limitPfn: number;
      reason: "limit" | "fail-fast max32";
      max32AllocSize: number;
    };
    "iova.rcache.flush": { domain: string; ranges: number };
    "iova.domain.destroy": { domain: string; ranges: number; cached: number };
  }
}
defineTraceEvents("host", {
  "iova.alloc": "{domain}: {pages} page(s) at pfn {pfnLo} (limit pfn {limitPfn}) from the {source}",
  "iova.free": "{domain}: {pages} page(s) at pfn {pfnLo} freed to the {dest}",
  "iova.reserve": "{domain}: reserved pfn {pfnLo}..{pfnHi} as range {resultPfnLo}..{resultPfnHi}",
  "iova.alloc.fail":
    "{domain}: no room for {pages} page(s) under limit pfn {limitPfn} ({reason}; max32_alloc_size {max32AllocSize})",
  "iova.rcache.flush": "{domain}: flushed the IOVA caches, {ranges} range(s) back to the tree",
  "iova.domain.destroy": "{domain}: destroyed with {ranges} range(s) in the tree, {cached} of them cached",
});

export interface IovaDomainOptions {
  /** IOVA page size in bytes: a power of two, at most 4096 (default 4096). */
  granule?: number;
  /** Lowest pfn alloc_iova hands out (>= 1). Lower pfns can still be reserved. */
  startPfn: number;
  /** First pfn above the 32-bit space (default 2^32 / granule). */
  dma32Pfn?: number;
  /** Online CPUs for the range caches (default 2). */
  cpus?: number;
  clock: SchedulingClock;
  tracer: Tracer;
  /** Name in trace events (default "iova"). */
  name?: string;
  /** Counts allocations, search steps and frees (the host's meter; default one of its own). */
  meter?: CostMeter;
}

/** An allocated or reserved range of IOVA pages, both ends inclusive. */
export interface IovaRange {
  readonly pfnLo: IovaPfn;
  readonly pfnHi: IovaPfn;
}

/** Allocator state beyond the ranges, for tests, the oracle comparison and the dashboard. */
export interface IovaDomainState {
  readonly max32AllocSize: number;
  /** pfnLo of the 32-bit cached node, or null while it is the anchor. */
  readonly cached32PfnLo: number | null;
  /** pfnLo of the 64-bit cached node, or null while it is the anchor. */
  readonly cachedPfnLo: number | null;
}

/** Sizes of small fast-path requests are rounded up to a power of two below this (1 << (IOVA_RANGE_CACHE_MAX_SIZE-1)). */
const ROUND_BELOW = 32;
/** Largest request, in pages, for which the aligned-fit keys stay exact (see the module comment). */
export const IOVA_MAX_ALLOC_PAGES = 2 ** 51;
/** pfn of the anchor node: above every safe-integer pfn. */
const ANCHOR_PFN = 2 ** 53;

// Node slots. Node 0 is NIL: all its slots stay 0, so a missing child reads as height 0 and empty aggregates.
const STRIDE = 8;
const LO = 0;
const HI = 1;
const GAPLO = 2;
const AGGLEN = 3;
const AGGKEY = 4;
const LEFT = 5;
const RIGHT = 6;
const HEIGHT = 7;
const NIL = 0;
const INITIAL_NODES = 64;
/** AVL height is below 1.45 log2(n + 2): 64 levels hold far more nodes than memory does. */
const MAX_DEPTH = 96;

const FAIL_NONE = 0;
const FAIL_LIMIT = 1;
const FAIL_MAX32 = 2;

const POW2 = Float64Array.from({ length: 60 }, (_, i) => 2 ** i);

/** floor(log2(x)) for an integer 1 <= x <= 2^53. */
function floorLog2(x: number): number {
  if (x < 4294967296) return 31 - Math.clz32(x);
  let k = Math.floor(Math.log2(x));
  if (POW2[k]! > x) k--;
  else if (POW2[k + 1]! <= x) k++;
  return k;
}

/** Linux fls_long: 1-based index of the highest set bit, 0 for 0. */
function fls(x: number): number {
  return x <= 0 ? 0 : floorLog2(x) + 1;
}

/** The aligned-fit key of the gap [gapLo, lo - 1] (0 when empty); see the module comment. */
function gapKey(gapLo: number, lo: number): number {
  if (lo <= gapLo) return 0;
  let o = floorLog2(lo - gapLo);
  const p = POW2[o]!;
  if (Math.ceil(gapLo / p) * p + p > lo) o--;
  const q = POW2[o + 1]!;
  const room = lo - Math.ceil(gapLo / q) * q;
  return room > 0 ? q + room : q;
}

function checkSize(size: number, what: string): void {
  if (!Number.isSafeInteger(size) || size < 1 || size > IOVA_MAX_ALLOC_PAGES) {
    throw new KernelError(Errno.EINVAL, `${what}: size ${size} pages; expected an integer in [1, 2^51]`);
  }
}

function checkPfn(pfn: number, what: string): void {
  if (!Number.isSafeInteger(pfn) || pfn < 0) {
    throw new KernelError(Errno.EINVAL, `${what}: pfn ${pfn} is not an integer in [0, 2^53)`);
  }
}

export class IovaDomain {
  readonly name: string;
  readonly granule: number;
  readonly startPfn: number;
  readonly dma32Pfn: number;
  readonly cpus: number;

  private readonly tracer: Tracer;
  private readonly rcache: IovaRcache;
  /** Allocations, the tree nodes their searches visited (`iovaSearchSteps`), frees: the cost model's counts. */
  readonly meter: CostMeter;

  // ---- the tree ----
  private t: Float64Array;
  private capacity: number;
  private freeHead = NIL;
  private fresh = 1;
  private root = NIL;
  /** Nodes in the tree, anchor included. */
  private count = 0;
  private anchor = NIL;
  private readonly stack = new Int32Array(MAX_DEPTH);

  // ---- iova.c allocator state ----
  private cached32 = NIL;
  private cached = NIL;
  private max32AllocSize: number;
  private failReason = FAIL_NONE;

  constructor(opts: IovaDomainOptions) {
    const granule = opts.granule ?? PAGE_SIZE;
    if (!Number.isSafeInteger(granule) || granule < 1 || granule > PAGE_SIZE || (granule & (granule - 1)) !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `IOVA granule ${granule} must be a power of two no larger than the ${PAGE_SIZE}-byte CPU page`,
      );
    }
    if (!Number.isSafeInteger(opts.startPfn) || opts.startPfn < 1) {
      throw new KernelError(
        Errno.EINVAL,
        `IOVA start pfn ${opts.startPfn} must be an integer >= 1: pfn 0 is how alloc_iova_fast reports failure`,
      );
    }
    const dma32Pfn = opts.dma32Pfn ?? 2 ** 32 / granule;
    if (!Number.isSafeInteger(dma32Pfn) || dma32Pfn < 1) {
      throw new KernelError(Errno.EINVAL, `IOVA dma32 pfn ${dma32Pfn} must be a positive integer`);
    }
    this.granule = granule;
    this.startPfn = opts.startPfn;
    this.dma32Pfn = dma32Pfn;
    this.max32AllocSize = dma32Pfn;
    this.name = opts.name ?? "iova";
    this.tracer = opts.tracer;
    this.meter = opts.meter ?? new CostMeter();
    this.cpus = opts.cpus ?? 2;
    this.rcache = new IovaRcache({
      cpus: this.cpus,
      clock: opts.clock,
      tracer: opts.tracer,
      name: this.name,
      owner: { releaseCachedPfn: (pfn) => this.releaseCachedPfn(pfn) },
    });
    this.capacity = INITIAL_NODES;
    this.t = new Float64Array(INITIAL_NODES * STRIDE);
    this.initTree();
  }

  // ---- alloc_iova / free_iova / find_iova / reserve_iova ----------------------------------------------------

  /**
   * alloc_iova: `size` pages at or below `limitPfn` (inclusive), top-down from the cached node; aligned to the size
   * rounded up to a power of two when `sizeAligned`. Undefined when nothing fits (an expected outcome).
   */
  allocIova(size: number, limitPfn: number, sizeAligned: boolean): IovaRange | undefined {
    checkSize(size, "alloc_iova");
    checkPfn(limitPfn, "alloc_iova limit");
    const pfn = this.allocPfn(size, limitPfn + 1, sizeAligned);
    if (pfn < 0) {
      if (this.tracer.enabled) this.traceFail(size, limitPfn);
      return undefined;
    }
    if (this.tracer.enabled) {
      this.tracer.emit("iova.alloc", { domain: this.name, pfnLo: pfn, pages: size, limitPfn, source: "tree" });
    }
    return { pfnLo: pfn as IovaPfn, pfnHi: (pfn + size - 1) as IovaPfn };
  }

  /** find_iova: the range containing `pfn`, or undefined. */
  findIova(pfn: number): IovaRange | undefined {
    checkPfn(pfn, "find_iova");
    const x = this.findNode(pfn);
    return x === NIL ? undefined : this.rangeOf(x);
  }

  /** free_iova: frees the range containing `pfn`. False (and nothing changes) when no range contains it. */
  freeIova(pfn: number): boolean {
    checkPfn(pfn, "free_iova");
    const x = this.findNode(pfn);
    if (x === NIL) return false;
    const b = x * STRIDE;
    const lo = this.t[b + LO]!;
    const pages = this.t[b + HI]! - lo + 1;
    this.meter.iovaFrees++;
    this.removeRange(x);
    if (this.tracer.enabled) this.tracer.emit("iova.free", { domain: this.name, pfnLo: lo, pages, dest: "tree" });
    return true;
  }

  /**
   * reserve_iova: keeps [pfnLo, pfnHi] from ever being allocated. Overlapped ranges are extended down to the request
   * and the part above them inserted as new ranges; returns the last range touched (an existing range that now covers
   * the end of the request, or the new one).
   */
  reserveIova(pfnLo: number, pfnHi: number): IovaRange {
    checkPfn(pfnLo, "reserve_iova");
    checkPfn(pfnHi, "reserve_iova");
    if (pfnLo > pfnHi) {
      throw new KernelError(Errno.EINVAL, `reserve_iova: pfn range ${pfnLo}..${pfnHi} is empty (lo > hi)`);
    }
    const t = this.t;
    let lo = pfnLo;
    let x = this.lowerBoundHi(pfnLo);
    let result = NIL;
    while (x !== NIL && t[x * STRIDE + LO]! <= pfnHi) {
      if (lo < t[x * STRIDE + LO]!) this.lowerPfnLo(x, lo);
      const hi = t[x * STRIDE + HI]!;
      if (pfnHi <= hi) {
        result = x;
        break;
      }
      lo = hi + 1;
      x = this.successor(x);
    }
    if (result === NIL) result = this.insert(lo, pfnHi);
    const r = this.rangeOf(result);
    if (this.tracer.enabled) {
      this.tracer.emit("iova.reserve", {
        domain: this.name,
        pfnLo,
        pfnHi,
        resultPfnLo: r.pfnLo,
        resultPfnHi: r.pfnHi,
      });
    }
    return r;
  }

  // ---- alloc_iova_fast / free_iova_fast -------------------------------------------------------------------------

  /**
   * alloc_iova_fast: a size-aligned range of `size` pages (rounded up to a power of two below 32) at or below
   * `limitPfn`, from `cpu`'s cache when it has one, else from the tree; with `flushRcache`, a tree failure empties all
   * caches and retries once. Returns the first pfn, or 0 on failure (as Linux).
   */
  allocIovaFast(size: number, limitPfn: number, flushRcache: boolean, cpu = 0): IovaPfn {
    if (!(size >= 1 && size <= IOVA_MAX_ALLOC_PAGES) || size % 1 !== 0) checkSize(size, "alloc_iova_fast");
    if (!(limitPfn >= 0 && limitPfn <= Number.MAX_SAFE_INTEGER) || limitPfn % 1 !== 0) {
      checkPfn(limitPfn, "alloc_iova_fast limit");
    }
    if (!(cpu >= 0 && cpu < this.cpus) || cpu % 1 !== 0) this.badCpu(cpu);
    if (size < ROUND_BELOW) size = size <= 1 ? 1 : 1 << (32 - Math.clz32(size - 1));
    const limit = limitPfn + 1;
    let pfn = this.rcache.get(size, limit, cpu);
    if (pfn !== 0) {
      this.meter.iovaCachedAllocs++;
      if (this.tracer.enabled) {
        this.tracer.emit("iova.alloc", { domain: this.name, pfnLo: pfn, pages: size, limitPfn, source: "rcache" });
      }
      return pfn as IovaPfn;
    }
    pfn = this.allocPfn(size, limit, true);
    if (pfn < 0 && flushRcache) {
      if (this.tracer.enabled) this.traceFail(size, limitPfn);
      const ranges = this.rcache.flushAll();
      if (this.tracer.enabled) this.tracer.emit("iova.rcache.flush", { domain: this.name, ranges });
      pfn = this.allocPfn(size, limit, true);
    }
    if (pfn < 0) {
      if (this.tracer.enabled) this.traceFail(size, limitPfn);
      return 0 as IovaPfn;
    }
    if (this.tracer.enabled) {
      this.tracer.emit("iova.alloc", { domain: this.name, pfnLo: pfn, pages: size, limitPfn, source: "tree" });
    }
    return pfn as IovaPfn;
  }

  /**
   * free_iova_fast: caches the range at `pfn` on `cpu` when `size` is cacheable (up to 32 pages), else frees it in
   * the tree. `size` may be the size asked of allocIovaFast or the rounded one: both have the same class.
   */
  freeIovaFast(pfn: number, size: number, cpu = 0): void {
    if (!(size >= 1) || size % 1 !== 0) checkSize(size, "free_iova_fast");
    if (!(pfn >= 1 && pfn <= Number.MAX_SAFE_INTEGER) || pfn % 1 !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `free_iova_fast: pfn ${pfn} is not an allocated pfn (0 is what a failed alloc_iova_fast returns)`,
      );
    }
    if (!(cpu >= 0 && cpu < this.cpus) || cpu % 1 !== 0) this.badCpu(cpu);
    if (this.rcache.insert(pfn, size, cpu)) {
      this.meter.iovaFrees++;
      if (this.tracer.enabled) {
        this.tracer.emit("iova.free", { domain: this.name, pfnLo: pfn, pages: size, dest: "rcache" });
      }
      return;
    }
    this.freeIova(pfn);
  }

  /** Empties every CPU's caches and the depots into the tree (what alloc_iova_fast does before its retry). */
  flushRcache(): number {
    const ranges = this.rcache.flushAll();
    if (this.tracer.enabled) this.tracer.emit("iova.rcache.flush", { domain: this.name, ranges });
    return ranges;
  }

  /** free_cpu_cached_iovas (CPU hotplug): empties one CPU's magazines into the tree. */
  freeCpuCachedIovas(cpu: number): number {
    if (!(cpu >= 0 && cpu < this.cpus) || cpu % 1 !== 0) this.badCpu(cpu);
    return this.rcache.freeCpuCachedIovas(cpu);
  }

  /** The range caches, read-only use: fill levels, depot sizes. */
  get rcaches(): Pick<IovaRcache, "depotSize" | "magazineFill" | "trimArmed" | "cachedPfns"> {
    return this.rcache;
  }

  /**
   * put_iova_domain: forgets every cached pfn, cancels the depot trims and removes every range from the tree. The
   * domain is left empty (as freshly constructed) and can be used again.
   */
  destroy(): void {
    const ranges = this.count - 1;
    const cached = this.rcache.cachedPfns();
    this.rcache.destroy();
    this.t = new Float64Array(INITIAL_NODES * STRIDE);
    this.capacity = INITIAL_NODES;
    this.initTree();
    this.max32AllocSize = this.dma32Pfn;
    if (this.tracer.enabled) this.tracer.emit("iova.domain.destroy", { domain: this.name, ranges, cached });
  }

  // ---- inspection ---------------------------------------------------------------------------------------------

  /**
   * Ranges in the tree, anchor excluded. Ranges sitting in the range caches are included (a cached pfn keeps its
   * range in the tree until the cache gives it back), so the ranges held by callers are liveRanges() - cachedPfns().
   */
  liveRanges(): number {
    return this.count - 1;
  }

  /** Pfns sitting in the range caches (every CPU's magazines and the depots). */
  cachedPfns(): number {
    return this.rcache.cachedPfns();
  }

  /** Every range in the tree (cached ones included), ascending. O(n): for tests and the dashboard. */
  ranges(): IovaRange[] {
    const out: IovaRange[] = [];
    const t = this.t;
    const st: number[] = [];
    let x = this.root;
    while (x !== NIL || st.length > 0) {
      while (x !== NIL) {
        st.push(x);
        x = t[x * STRIDE + LEFT]!;
      }
      x = st.pop()!;
      if (x !== this.anchor) out.push(this.rangeOf(x));
      x = t[x * STRIDE + RIGHT]!;
    }
    return out;
  }

  state(): IovaDomainState {
    return {
      max32AllocSize: this.max32AllocSize,
      cached32PfnLo: this.cached32 === this.anchor ? null : this.t[this.cached32 * STRIDE + LO]!,
      cachedPfnLo: this.cached === this.anchor ? null : this.t[this.cached * STRIDE + LO]!,
    };
  }

  /**
   * Checks every structural invariant (order, disjointness, AVL balance, gap bounds, subtree maxima, node count,
   * cached nodes in the tree) and throws an Error naming the first broken one. O(n): tests only.
   */
  verify(): void {
    const t = this.t;
    let n = 0;
    let prevHi = -1;
    let seen32 = false;
    let seen64 = false;
    const walk = (x: number): void => {
      if (x === NIL) return;
      const b = x * STRIDE;
      walk(t[b + LEFT]!);
      const lo = t[b + LO]!;
      const hi = t[b + HI]!;
      if (lo > hi) throw new Error(`iova verify: node ${x} has lo ${lo} > hi ${hi}`);
      if (lo <= prevHi) throw new Error(`iova verify: node ${x} [${lo}, ${hi}] overlaps or precedes pfn ${prevHi}`);
      if (t[b + GAPLO] !== prevHi + 1) throw new Error(`iova verify: node ${x} gapLo ${t[b + GAPLO]} != ${prevHi + 1}`);
      prevHi = hi;
      n++;
      if (x === this.cached32) seen32 = true;
      if (x === this.cached) seen64 = true;
      walk(t[b + RIGHT]!);
      const l = t[b + LEFT]! * STRIDE;
      const r = t[b + RIGHT]! * STRIDE;
      const hl = t[l + HEIGHT]!;
      const hr = t[r + HEIGHT]!;
      if (t[b + HEIGHT] !== 1 + Math.max(hl, hr) || Math.abs(hl - hr) > 1) {
        throw new Error(`iova verify: node ${x} height ${t[b + HEIGHT]} with children ${hl}/${hr}`);
      }
      const len = Math.max(lo - t[b + GAPLO]!, t[l + AGGLEN]!, t[r + AGGLEN]!);
      const key = Math.max(gapKey(t[b + GAPLO]!, lo), t[l + AGGKEY]!, t[r + AGGKEY]!);
      if (t[b + AGGLEN] !== len || t[b + AGGKEY] !== key) {
        throw new Error(`iova verify: node ${x} aggregates ${t[b + AGGLEN]}/${t[b + AGGKEY]} != ${len}/${key}`);
      }
    };
    walk(this.root);
    if (n !== this.count) throw new Error(`iova verify: ${n} nodes reachable, count says ${this.count}`);
    if (!seen32 || !seen64) throw new Error("iova verify: a cached node is not in the tree");
    if (prevHi !== ANCHOR_PFN) throw new Error("iova verify: the anchor is not the last node");
  }

  // ---- __alloc_and_insert_iova_range ----------------------------------------------------------------------------

  /** The allocation proper; `limit` is exclusive (limit_pfn + 1). Returns the pfn, or -1 with failReason set. */
  private allocPfn(size: number, limit: number, aligned: boolean): number {
    this.meter.iovaTreeAllocs++;
    if (limit <= this.dma32Pfn && size >= this.max32AllocSize) {
      this.failReason = FAIL_MAX32;
      return -1;
    }
    const align = aligned ? POW2[fls(size - 1)]! : 1;
    const key = aligned ? align + size : 0;
    const start = limit <= this.dma32Pfn ? this.cached32 : this.cached;
    const retryPfn = this.t[start * STRIDE + HI]!;
    this.meter.iovaSearchSteps++;
    let pfn = this.searchPass(start, size, limit, align, key, this.startPfn);
    // The retry of Linux (low_pfn == start_pfn holds in the first pass): the space above the cached node.
    if (pfn < 0 && retryPfn < limit) pfn = this.searchPass(this.anchor, size, limit, align, key, retryPfn + 1);
    if (pfn < 0) {
      this.max32AllocSize = size;
      this.failReason = FAIL_LIMIT;
      return -1;
    }
    const x = this.insert(pfn, pfn + size - 1);
    if (pfn + size - 1 < this.dma32Pfn) this.cached32 = x;
    else this.cached = x;
    return pfn;
  }

  /**
   * One pass of Linux's walk: the highest position for `size` pages (aligned to `align`) in a gap below node `start`
   * and below `limit`, accepted only if >= `low`. `key` is the aligned-fit threshold (0 for unaligned requests).
   */
  private searchPass(start: number, size: number, limit: number, align: number, key: number, low: number): number {
    const t = this.t;
    // Nodes above m (the lowest node reaching the limit) have no room under the limit; m's gap is clipped to it.
    const m = this.lowerBoundHi(limit);
    const e = t[start * STRIDE + LO]! >= t[m * STRIDE + LO]! ? m : start;
    const eLo = t[e * STRIDE + LO]!;
    const top = Math.min(eLo, limit);
    if (top < size) return -1;
    let pfn = top - size;
    if (align > 1) pfn = Math.floor(pfn / align) * align;
    if (pfn < t[e * STRIDE + GAPLO]!) {
      const f = this.findFit(e, size, align, key);
      if (f === NIL) return -1;
      pfn = t[f * STRIDE + LO]! - size;
      if (align > 1) pfn = Math.floor(pfn / align) * align;
    }
    return pfn >= low ? pfn : -1;
  }

  /** The rightmost node before `e` whose own gap fits the request, or NIL. */
  private findFit(e: number, size: number, align: number, key: number): number {
    const t = this.t;
    const st = this.stack;
    const eLo = t[e * STRIDE + LO]!;
    let d = 0;
    let y = this.root;
    let sub = NIL;
    const meter = this.meter;
    while (y !== NIL) {
      meter.iovaSearchSteps++;
      const yLo = t[y * STRIDE + LO]!;
      if (yLo < eLo) {
        st[d++] = y;
        y = t[y * STRIDE + RIGHT]!;
      } else if (yLo > eLo) {
        y = t[y * STRIDE + LEFT]!;
      } else {
        sub = t[y * STRIDE + LEFT]!;
        break;
      }
    }
    // Nodes before e, right to left: e's left subtree, then each ancestor we passed on its right and its left subtree.
    if (sub !== NIL && this.subtreeFits(sub, size, key)) return this.rightmostFit(sub, size, align, key);
    for (let i = d - 1; i >= 0; i--) {
      meter.iovaSearchSteps++;
      y = st[i]!;
      if (this.ownFits(y, size, align)) return y;
      const l = t[y * STRIDE + LEFT]!;
      if (l !== NIL && this.subtreeFits(l, size, key)) return this.rightmostFit(l, size, align, key);
    }
    return NIL;
  }

  /** The rightmost fitting node of a subtree known to contain one. */
  private rightmostFit(x: number, size: number, align: number, key: number): number {
    const t = this.t;
    for (;;) {
      this.meter.iovaSearchSteps++;
      const r = t[x * STRIDE + RIGHT]!;
      if (r !== NIL && this.subtreeFits(r, size, key)) {
        x = r;
        continue;
      }
      if (this.ownFits(x, size, align)) return x;
      x = t[x * STRIDE + LEFT]!;
      if (x === NIL) return NIL; // unreachable while the subtree maxima are exact
    }
  }

  private subtreeFits(x: number, size: number, key: number): boolean {
    return key === 0 ? this.t[x * STRIDE + AGGLEN]! >= size : this.t[x * STRIDE + AGGKEY]! >= key;
  }

  /** Whether the gap just below node x holds the request, placed as Linux places it (as high as possible). */
  private ownFits(x: number, size: number, align: number): boolean {
    const b = x * STRIDE;
    const lo = this.t[b + LO]!;
    if (lo < size) return false;
    let pfn = lo - size;
    if (align > 1) pfn = Math.floor(pfn / align) * align;
    return pfn >= this.t[b + GAPLO]!;
  }

  // ---- tree primitives ---------------------------------------------------------------------------------------

  private initTree(): void {
    this.freeHead = NIL;
    this.fresh = 1;
    this.root = NIL;
    this.count = 0;
    this.anchor = this.insert(ANCHOR_PFN, ANCHOR_PFN);
    this.cached32 = this.anchor;
    this.cached = this.anchor;
  }

  private rangeOf(x: number): IovaRange {
    const b = x * STRIDE;
    return { pfnLo: this.t[b + LO]! as IovaPfn, pfnHi: this.t[b + HI]! as IovaPfn };
  }

  /** private_find_iova: the node whose range contains pfn, or NIL. */
  private findNode(pfn: number): number {
    const t = this.t;
    let x = this.root;
    while (x !== NIL) {
      const b = x * STRIDE;
      if (pfn < t[b + LO]!) x = t[b + LEFT]!;
      else if (pfn > t[b + HI]!) x = t[b + RIGHT]!;
      else return x;
    }
    return NIL;
  }

  /** The lowest node with hi >= pfn (the anchor at worst). */
  private lowerBoundHi(pfn: number): number {
    const t = this.t;
    let x = this.root;
    let best = NIL;
    while (x !== NIL) {
      if (t[x * STRIDE + HI]! >= pfn) {
        best = x;
        x = t[x * STRIDE + LEFT]!;
      } else {
        x = t[x * STRIDE + RIGHT]!;
      }
    }
    return best;
  }

  /** rb_next. */
  private successor(x: number): number {
    const t = this.t;
    const key = t[x * STRIDE + LO]!;
    let y = this.root;
    let s = NIL;
    while (y !== NIL && y !== x) {
      if (key < t[y * STRIDE + LO]!) {
        s = y;
        y = t[y * STRIDE + LEFT]!;
      } else {
        y = t[y * STRIDE + RIGHT]!;
      }
    }
    y = t[x * STRIDE + RIGHT]!;
    if (y === NIL) return s;
    for (let l = t[y * STRIDE + LEFT]!; l !== NIL; l = t[y * STRIDE + LEFT]!) y = l;
    return y;
  }

  /** The rcache owner hook: a magazine's pfn goes back to the tree (iova_magazine_free_pfns). */
  private releaseCachedPfn(pfn: number): void {
    const x = this.findNode(pfn);
    if (x !== NIL) this.removeRange(x);
  }

  /** remove_iova: __cached_rbnode_delete_update, then rb_erase. */
  private removeRange(x: number): void {
    const t = this.t;
    const lo = t[x * STRIDE + LO]!;
    const hi = t[x * STRIDE + HI]!;
    const next = this.successor(x);
    if (x === this.cached32 || (hi < this.dma32Pfn && lo >= t[this.cached32 * STRIDE + LO]!)) this.cached32 = next;
    if (lo < this.dma32Pfn) this.max32AllocSize = this.dma32Pfn;
    if (lo >= t[this.cached * STRIDE + LO]!) this.cached = next;
    this.erase(x);
  }

  /** Recomputes height and subtree maxima of x from its children. */
  private update(x: number): void {
    const t = this.t;
    const b = x * STRIDE;
    const l = t[b + LEFT]! * STRIDE;
    const r = t[b + RIGHT]! * STRIDE;
    const hl = t[l + HEIGHT]!;
    const hr = t[r + HEIGHT]!;
    t[b + HEIGHT] = Math.max(hl, hr) + 1;
    const lo = t[b + LO]!;
    const g = t[b + GAPLO]!;
    let len = lo - g;
    const ll = t[l + AGGLEN]!;
    const rl = t[r + AGGLEN]!;
    if (ll > len) len = ll;
    if (rl > len) len = rl;
    t[b + AGGLEN] = len;
    let key = gapKey(g, lo);
    const lk = t[l + AGGKEY]!;
    const rk = t[r + AGGKEY]!;
    if (lk > key) key = lk;
    if (rk > key) key = rk;
    t[b + AGGKEY] = key;
  }

  private rotateLeft(x: number): number {
    const t = this.t;
    const y = t[x * STRIDE + RIGHT]!;
    t[x * STRIDE + RIGHT] = t[y * STRIDE + LEFT]!;
    t[y * STRIDE + LEFT] = x;
    this.update(x);
    this.update(y);
    return y;
  }

  private rotateRight(x: number): number {
    const t = this.t;
    const y = t[x * STRIDE + LEFT]!;
    t[x * STRIDE + LEFT] = t[y * STRIDE + RIGHT]!;
    t[y * STRIDE + RIGHT] = x;
    this.update(x);
    this.update(y);
    return y;
  }

  /** Updates x and restores the AVL balance at x; returns the subtree's new root. */
  private rebalance(x: number): number {
    const t = this.t;
    const l = t[x * STRIDE + LEFT]!;
    const r = t[x * STRIDE + RIGHT]!;
    const bal = t[l * STRIDE + HEIGHT]! - t[r * STRIDE + HEIGHT]!;
    if (bal > 1) {
      if (t[t[l * STRIDE + LEFT]! * STRIDE + HEIGHT]! < t[t[l * STRIDE + RIGHT]! * STRIDE + HEIGHT]!) {
        t[x * STRIDE + LEFT] = this.rotateLeft(l);
      }
      return this.rotateRight(x);
    }
    if (bal < -1) {
      if (t[t[r * STRIDE + RIGHT]! * STRIDE + HEIGHT]! < t[t[r * STRIDE + LEFT]! * STRIDE + HEIGHT]!) {
        t[x * STRIDE + RIGHT] = this.rotateRight(r);
      }
      return this.rotateLeft(x);
    }
    this.update(x);
    return x;
  }

  /** Rebalances and updates stack[depth-1] .. stack[0] (each the parent of the next), up to the root. */
  private retrace(depth: number): void {
    const t = this.t;
    const st = this.stack;
    for (let i = depth - 1; i >= 0; i--) {
      const x = st[i]!;
      const y = this.rebalance(x);
      if (y === x) continue;
      if (i === 0) {
        this.root = y;
      } else {
        const p = st[i - 1]! * STRIDE;
        if (t[p + LEFT] === x) t[p + LEFT] = y;
        else t[p + RIGHT] = y;
      }
    }
  }

  /** Links a new node [lo, hi] (disjoint from every node) and returns it. */
  private insert(lo: number, hi: number): number {
    const x = this.allocNode();
    const t = this.t;
    const st = this.stack;
    let d = 0;
    let y = this.root;
    let pred = NIL;
    let succ = NIL;
    while (y !== NIL) {
      st[d++] = y;
      if (lo < t[y * STRIDE + LO]!) {
        succ = y;
        y = t[y * STRIDE + LEFT]!;
      } else {
        pred = y;
        y = t[y * STRIDE + RIGHT]!;
      }
    }
    const b = x * STRIDE;
    t[b + LO] = lo;
    t[b + HI] = hi;
    t[b + GAPLO] = pred === NIL ? 0 : t[pred * STRIDE + HI]! + 1;
    t[b + LEFT] = NIL;
    t[b + RIGHT] = NIL;
    this.update(x);
    // The successor is an ancestor of the new leaf, so the retrace below recomputes its shrunken gap.
    if (succ !== NIL) t[succ * STRIDE + GAPLO] = hi + 1;
    if (d === 0) {
      this.root = x;
    } else {
      const p = st[d - 1]! * STRIDE;
      if (lo < t[p + LO]!) t[p + LEFT] = x;
      else t[p + RIGHT] = x;
    }
    this.retrace(d);
    this.count++;
    return x;
  }

  /** Unlinks node x (relinking nodes, never moving their contents, so node indices stay valid) and frees it. */
  private erase(x: number): void {
    const t = this.t;
    const st = this.stack;
    const key = t[x * STRIDE + LO]!;
    let d = 0;
    let y = this.root;
    let succ = NIL;
    while (y !== x) {
      st[d++] = y;
      if (key < t[y * STRIDE + LO]!) {
        succ = y;
        y = t[y * STRIDE + LEFT]!;
      } else {
        y = t[y * STRIDE + RIGHT]!;
      }
    }
    const dx = d;
    const xb = x * STRIDE;
    const l = t[xb + LEFT]!;
    const r = t[xb + RIGHT]!;
    let replacement: number;
    if (r === NIL) {
      // The successor is the ancestor where the path last turned left; it inherits x's gap.
      replacement = l;
      if (succ !== NIL) t[succ * STRIDE + GAPLO] = t[xb + GAPLO]!;
    } else if (l === NIL) {
      // AVL: a lone right child is a leaf, and it is the successor.
      replacement = r;
      t[r * STRIDE + GAPLO] = t[xb + GAPLO]!;
      this.update(r);
    } else {
      // Two children: the leftmost node of the right subtree takes x's place.
      st[d++] = x; // placeholder for the successor's new position
      let s = r;
      while (t[s * STRIDE + LEFT] !== NIL) {
        st[d++] = s;
        s = t[s * STRIDE + LEFT]!;
      }
      if (s !== r) {
        const sp = st[d - 1]! * STRIDE;
        t[sp + LEFT] = t[s * STRIDE + RIGHT]!;
        t[s * STRIDE + RIGHT] = r;
      }
      t[s * STRIDE + LEFT] = l;
      t[s * STRIDE + GAPLO] = t[xb + GAPLO]!;
      st[dx] = s;
      replacement = s;
    }
    if (dx === 0) {
      this.root = replacement;
    } else {
      const p = st[dx - 1]! * STRIDE;
      if (t[p + LEFT] === x) t[p + LEFT] = replacement;
      else t[p + RIGHT] = replacement;
    }
    this.retrace(d);
    this.freeNode(x);
    this.count--;
  }

  /** Lowers node x's pfnLo (reserve_iova extending a range into the gap below it) and fixes the maxima above it. */
  private lowerPfnLo(x: number, lo: number): void {
    const t = this.t;
    const st = this.stack;
    const key = t[x * STRIDE + LO]!;
    let d = 0;
    let y = this.root;
    while (y !== x) {
      st[d++] = y;
      y = key < t[y * STRIDE + LO]! ? t[y * STRIDE + LEFT]! : t[y * STRIDE + RIGHT]!;
    }
    t[x * STRIDE + LO] = lo;
    this.update(x);
    for (let i = d - 1; i >= 0; i--) this.update(st[i]!);
  }

  private allocNode(): number {
    let x = this.freeHead;
    if (x !== NIL) {
      this.freeHead = this.t[x * STRIDE + LEFT]!;
      return x;
    }
    if (this.fresh === this.capacity) {
      const cap = this.capacity * 2;
      const grown = new Float64Array(cap * STRIDE);
      grown.set(this.t);
      this.t = grown;
      this.capacity = cap;
    }
    x = this.fresh++;
    return x;
  }

  private freeNode(x: number): void {
    const b = x * STRIDE;
    this.t.fill(0, b, b + STRIDE);
    this.t[b + LEFT] = this.freeHead;
    this.freeHead = x;
  }

  private traceFail(size: number, limitPfn: number): void {
    this.tracer.emit("iova.alloc.fail", {
      domain: this.name,
      pages: size,
      limitPfn,
      reason: this.failReason === FAIL_MAX32 ? "fail-fast max32" : "limit",
      max32AllocSize: this.max32AllocSize,
    });
  }

  private badCpu(cpu: number): never {
    throw new KernelError(Errno.EINVAL, `IOVA domain ${this.name}: cpu ${cpu} is not in [0, ${this.cpus})`);
  }
}
