/**
 * The IOVA range caches ("rcaches") of Linux's drivers/iommu/iova.c: the per-CPU magazines behind alloc_iova_fast and
 * free_iova_fast, after Bonwick and Adams' magazine allocator.
 *
 * There is one cache per size class ("order"): ranges of 1, 2, 4, 8, 16 and 32 pages (IOVA_RANGE_CACHE_MAX_SIZE = 6
 * classes; the class of a range is order_base_2(pages), so a 3-page range lives with the 4-page ones). Each class has,
 * per CPU, a `loaded` and a `prev` magazine of up to IOVA_MAG_SIZE = 127 pfns, and one global depot: a stack of full
 * magazines.
 *
 * - insert (free_iova_fast): push on `loaded`; if full, swap with `prev` when that has room; if both are full, push
 *   `loaded` onto the depot, take a new empty magazine and arm the depot trim (100 ms).
 * - get (alloc_iova_fast): pop from `loaded`; if empty, swap with `prev` when that has entries; if both are empty, drop
 *   `loaded` and take a full magazine from the depot. The pop takes the topmost pfn that satisfies the caller's limit
 *   (scanning down the magazine), and reports a miss (0) if none does.
 * - trim (iova_depot_work_func): 100 ms after a push, while the depot holds more magazines than there are online
 *   CPUs, one magazine's ranges go back to the tree and the trim is re-armed for another 100 ms. Arming an armed trim
 *   does nothing (schedule_delayed_work semantics), so a busy depot shrinks by at most one magazine per 100 ms.
 *
 * A cached pfn still owns its range in the tree: the cache only delays the tree removal. Giving a range back to the
 * tree goes through `IovaRcacheOwner.releaseCachedPfn`, which the IOVA domain implements.
 *
 * Costs: magazines are slices of one Float64Array (stride 128), linked by index; get and insert allocate nothing and
 * cost a few array reads. Trim callbacks are created once per class at construction.
 *
 * Not modelled: locking and preemption (a caller names the CPU it runs on), magazine allocation failure
 * (GFP_ATOMIC), CPU hotplug (free_cpu_cached_iovas is available to callers that model it).
 */
import {
  defineTraceEvents,
  Errno,
  KernelError,
  NS_PER_MS,
  type SchedulingClock,
  type TimerHandle,
  type Tracer,
} from "../core/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "iova.depot.trim": { domain: string; order: number; ranges: number; depotSize: number };
  }
}
defineTraceEvents("host", {
  "iova.depot.trim":
    "{domain}: depot of order {order} trimmed, {ranges} range(s) back to the tree, {depotSize} magazine(s) left",
});

/** Number of size classes (orders 0..5: 1 to 32 pages). */
export const IOVA_RANGE_CACHE_MAX_SIZE = 6;
/** Pfns per magazine (so that a Linux magazine is 1 KiB). */
export const IOVA_MAG_SIZE = 127;
/** Delay between a depot push and the trim that follows it. */
export const IOVA_DEPOT_DELAY_NS = 100 * NS_PER_MS;

/** Magazine stride in the pfn pool: a power of two >= IOVA_MAG_SIZE, so a magazine's base is `mag * 128`. */
const MAG_STRIDE = 128;
const NONE = -1;

/**
 * The size class of a range of `pages` pages: order_base_2(pages) (ceil(log2)), or IOVA_RANGE_CACHE_MAX_SIZE and
 * above for ranges too large to cache (more than 32 pages).
 */
export function iovaCacheOrder(pages: number): number {
  if (pages <= 1) return 0;
  if (pages > 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)) return IOVA_RANGE_CACHE_MAX_SIZE;
  return 32 - Math.clz32(pages - 1);
}

/** Where cached ranges go when a magazine is emptied into the tree. */
export interface IovaRcacheOwner {
  /** Removes the tree range containing `pfn` (iova_magazine_free_pfns); a pfn with no range is ignored. */
  releaseCachedPfn(pfn: number): void;
}

export interface IovaRcacheOptions {
  /** Online CPUs (each has its own magazines; the depot keeps at most this many magazines past a trim). */
  readonly cpus: number;
  readonly clock: SchedulingClock;
  readonly tracer: Tracer;
  /** Domain name for trace events. */
  readonly name: string;
  readonly owner: IovaRcacheOwner;
}

/** Fill levels of one CPU's magazines for one class, for tests and the dashboard. */
export interface MagazineFill {
  readonly loaded: number;
  readonly prev: number;
}

export class IovaRcache {
  readonly cpus: number;
  private readonly clock: SchedulingClock;
  private readonly tracer: Tracer;
  private readonly name: string;
  private readonly owner: IovaRcacheOwner;

  /** Magazine pool: pfns of magazine m at [m * 128, m * 128 + size[m]). */
  private pfns: Float64Array;
  private magSize: Int32Array;
  /** Next magazine in the depot stack or in the free list. */
  private magNext: Int32Array;
  private magCapacity: number;
  private freeMag = NONE;
  private freshMag = 0;

  /** Per (cpu, order) slot `cpu * 6 + order`: the loaded and the spare magazine. */
  private readonly loaded: Int32Array;
  private readonly prev: Int32Array;
  private readonly depotHead = new Int32Array(IOVA_RANGE_CACHE_MAX_SIZE).fill(NONE);
  private readonly depotCount = new Int32Array(IOVA_RANGE_CACHE_MAX_SIZE);
  private readonly trimTimers: (TimerHandle | undefined)[] = new Array(IOVA_RANGE_CACHE_MAX_SIZE).fill(undefined);
  private readonly trimFns: (() => void)[] = [];
  private cached = 0;

  constructor(opts: IovaRcacheOptions) {
    if (!Number.isSafeInteger(opts.cpus) || opts.cpus < 1 || opts.cpus > 4096) {
      throw new KernelError(Errno.EINVAL, `IOVA rcache: cpus = ${opts.cpus}; expected an integer in [1, 4096]`);
    }
    this.cpus = opts.cpus;
    this.clock = opts.clock;
    this.tracer = opts.tracer;
    this.name = opts.name;
    this.owner = opts.owner;
    const slots = this.cpus * IOVA_RANGE_CACHE_MAX_SIZE;
    // Two magazines per slot, plus room for a few depot magazines before the first growth.
    this.magCapacity = 2 * slots + 8;
    this.pfns = new Float64Array(this.magCapacity * MAG_STRIDE);
    this.magSize = new Int32Array(this.magCapacity);
    this.magNext = new Int32Array(this.magCapacity);
    this.loaded = new Int32Array(slots);
    this.prev = new Int32Array(slots);
    for (let s = 0; s < slots; s++) {
      this.loaded[s] = this.allocMagazine();
      this.prev[s] = this.allocMagazine();
    }
    for (let order = 0; order < IOVA_RANGE_CACHE_MAX_SIZE; order++) this.trimFns.push(() => this.trimDepot(order));
  }

  /**
   * iova_rcache_get: a cached pfn for a range of `pages` pages that ends below `limitPfnExclusive`, taken from `cpu`'s
   * magazines (or the depot), or 0 on a miss (uncacheable size, nothing cached, or nothing under the limit).
   */
  get(pages: number, limitPfnExclusive: number, cpu: number): number {
    const order = iovaCacheOrder(pages);
    if (order >= IOVA_RANGE_CACHE_MAX_SIZE) return 0;
    const slot = cpu * IOVA_RANGE_CACHE_MAX_SIZE + order;
    let mag = this.loaded[slot]!;
    if (this.magSize[mag] === 0) {
      const spare = this.prev[slot]!;
      if (this.magSize[spare] !== 0) {
        this.prev[slot] = mag;
        this.loaded[slot] = spare;
        mag = spare;
      } else {
        const full = this.depotHead[order]!;
        if (full === NONE) return 0;
        this.depotHead[order] = this.magNext[full]!;
        this.depotCount[order]!--;
        this.releaseMagazine(mag);
        this.loaded[slot] = full;
        mag = full;
      }
    }
    return this.pop(mag, limitPfnExclusive - pages);
  }

  /**
   * iova_rcache_insert: caches the range of `pages` pages starting at `pfn` on `cpu`. False when the size is not
   * cacheable (more than 32 pages): the caller frees the range in the tree.
   */
  insert(pfn: number, pages: number, cpu: number): boolean {
    const order = iovaCacheOrder(pages);
    if (order >= IOVA_RANGE_CACHE_MAX_SIZE) return false;
    const slot = cpu * IOVA_RANGE_CACHE_MAX_SIZE + order;
    let mag = this.loaded[slot]!;
    if (this.magSize[mag] === IOVA_MAG_SIZE) {
      const spare = this.prev[slot]!;
      if (this.magSize[spare] !== IOVA_MAG_SIZE) {
        this.prev[slot] = mag;
        this.loaded[slot] = spare;
        mag = spare;
      } else {
        this.magNext[mag] = this.depotHead[order]!;
        this.depotHead[order] = mag;
        this.depotCount[order]!++;
        this.armTrim(order);
        mag = this.allocMagazine();
        this.loaded[slot] = mag;
      }
    }
    const n = this.magSize[mag]!;
    this.pfns[mag * MAG_STRIDE + n] = pfn;
    this.magSize[mag] = n + 1;
    this.cached++;
    return true;
  }

  /** free_cpu_cached_iovas: empties `cpu`'s loaded and spare magazines of every class into the tree. */
  freeCpuCachedIovas(cpu: number): number {
    let n = 0;
    for (let order = 0; order < IOVA_RANGE_CACHE_MAX_SIZE; order++) {
      const slot = cpu * IOVA_RANGE_CACHE_MAX_SIZE + order;
      n += this.emptyIntoTree(this.loaded[slot]!);
      n += this.emptyIntoTree(this.prev[slot]!);
    }
    return n;
  }

  /** free_global_cached_iovas: empties every depot magazine into the tree and frees the magazines. */
  freeGlobalCachedIovas(): number {
    let n = 0;
    for (let order = 0; order < IOVA_RANGE_CACHE_MAX_SIZE; order++) {
      for (;;) {
        const mag = this.depotHead[order]!;
        if (mag === NONE) break;
        this.depotHead[order] = this.magNext[mag]!;
        this.depotCount[order]!--;
        n += this.emptyIntoTree(mag);
        this.releaseMagazine(mag);
      }
    }
    return n;
  }

  /** Every CPU's magazines and then the depot, as alloc_iova_fast does before its retry. Returns the ranges freed. */
  flushAll(): number {
    let n = 0;
    for (let cpu = 0; cpu < this.cpus; cpu++) n += this.freeCpuCachedIovas(cpu);
    return n + this.freeGlobalCachedIovas();
  }

  /** Pfns sitting in magazines (loaded, spare and depot) of every CPU and class. */
  cachedPfns(): number {
    return this.cached;
  }

  /** Full magazines in the depot of class `order`. */
  depotSize(order: number): number {
    return this.depotCount[order] ?? 0;
  }

  magazineFill(cpu: number, order: number): MagazineFill {
    const slot = cpu * IOVA_RANGE_CACHE_MAX_SIZE + order;
    return { loaded: this.magSize[this.loaded[slot]!]!, prev: this.magSize[this.prev[slot]!]! };
  }

  /** True while the depot trim of class `order` is armed. */
  trimArmed(order: number): boolean {
    return this.trimTimers[order] !== undefined;
  }

  /**
   * free_iova_rcaches: cancels the trims and forgets every cached pfn without touching the tree (the domain is
   * tearing the tree down). The cache is left empty and usable.
   */
  destroy(): void {
    for (let order = 0; order < IOVA_RANGE_CACHE_MAX_SIZE; order++) {
      this.trimTimers[order]?.cancel();
      this.trimTimers[order] = undefined;
      for (;;) {
        const mag = this.depotHead[order]!;
        if (mag === NONE) break;
        this.depotHead[order] = this.magNext[mag]!;
        this.releaseMagazine(mag);
      }
      this.depotCount[order] = 0;
    }
    for (let s = 0; s < this.loaded.length; s++) {
      this.magSize[this.loaded[s]!] = 0;
      this.magSize[this.prev[s]!] = 0;
    }
    this.cached = 0;
  }

  // ---- internals ----------------------------------------------------------------------------------------------

  /** iova_magazine_pop: the topmost pfn <= maxPfn, swapped out with the last entry; 0 if there is none. */
  private pop(mag: number, maxPfn: number): number {
    const base = mag * MAG_STRIDE;
    const pfns = this.pfns;
    let i = this.magSize[mag]! - 1;
    while (pfns[base + i]! > maxPfn) {
      if (i === 0) return 0;
      i--;
    }
    const pfn = pfns[base + i]!;
    const last = this.magSize[mag]! - 1;
    pfns[base + i] = pfns[base + last]!;
    this.magSize[mag] = last;
    this.cached--;
    return pfn;
  }

  private emptyIntoTree(mag: number): number {
    const n = this.magSize[mag]!;
    const base = mag * MAG_STRIDE;
    for (let i = 0; i < n; i++) this.owner.releaseCachedPfn(this.pfns[base + i]!);
    this.magSize[mag] = 0;
    this.cached -= n;
    return n;
  }

  private armTrim(order: number): void {
    if (this.trimTimers[order] === undefined) {
      this.trimTimers[order] = this.clock.after(IOVA_DEPOT_DELAY_NS, this.trimFns[order]!);
    }
  }

  /** iova_depot_work_func. */
  private trimDepot(order: number): void {
    this.trimTimers[order] = undefined;
    if (this.depotCount[order]! <= this.cpus) return;
    const mag = this.depotHead[order]!;
    this.depotHead[order] = this.magNext[mag]!;
    this.depotCount[order]!--;
    const n = this.emptyIntoTree(mag);
    this.releaseMagazine(mag);
    if (this.tracer.enabled) {
      this.tracer.emit("iova.depot.trim", {
        domain: this.name,
        order,
        ranges: n,
        depotSize: this.depotCount[order]!,
      });
    }
    this.armTrim(order);
  }

  private allocMagazine(): number {
    let mag = this.freeMag;
    if (mag !== NONE) {
      this.freeMag = this.magNext[mag]!;
    } else {
      if (this.freshMag === this.magCapacity) this.grow();
      mag = this.freshMag++;
    }
    this.magSize[mag] = 0;
    this.magNext[mag] = NONE;
    return mag;
  }

  private releaseMagazine(mag: number): void {
    this.magSize[mag] = 0;
    this.magNext[mag] = this.freeMag;
    this.freeMag = mag;
  }

  private grow(): void {
    const cap = this.magCapacity * 2;
    const pfns = new Float64Array(cap * MAG_STRIDE);
    pfns.set(this.pfns);
    const size = new Int32Array(cap);
    size.set(this.magSize);
    const next = new Int32Array(cap);
    next.set(this.magNext);
    this.pfns = pfns;
    this.magSize = size;
    this.magNext = next;
    this.magCapacity = cap;
  }
}
