/**
 * A set-associative translation cache keyed by (domain id, IOVA page) holding (host frame, permission): the IOTLB of
 * the system IOMMU, and (with a single key space) the device-side ATC of ats.ts.
 *
 * Layout. `entries` slots in `entries / ways` sets, all in typed arrays: tag domain, tag page, frame, prot, the
 * domain generation at fill time, and a replacement stamp. A lookup hashes to one set and compares `ways` tags; it
 * allocates nothing and returns a slot index (or -1) whose frame and prot are read with `frame(slot)`/`prot(slot)`.
 *
 * Invalidation, as VT-d's invalidation descriptors:
 * - page and range (page-selective): probe the sets of each page, or scan every slot when that is cheaper;
 * - domain (domain-selective): O(1), by bumping the domain's generation; slots filled under an older generation no
 *   longer match and are reused as if invalid;
 * - global: O(entries).
 * After an invalidation returns, no lookup can return a translation filled before it: that is the property the
 * tests check against a Map-based model.
 *
 * Entries cache 4 KiB translations even when the page table maps a superpage (a superpage fills one entry per 4 KiB
 * page touched); real IOTLBs keep one entry per superpage, which only changes hit rates, not correctness.
 * `entries: 0` disables the cache (every lookup misses; fills are dropped). No negative caching: a not-present
 * result is never stored, so a new mapping needs no invalidation.
 */
import { Errno, KernelError, type Rng } from "../core/index.ts";

export type Replacement = "lru" | "fifo" | "random";

export interface IotlbOptions {
  /** Total slots; 0 disables the cache. Must be a multiple of `ways`. */
  readonly entries: number;
  /** Slots per set (1 = direct mapped; `entries` = fully associative). */
  readonly ways: number;
  readonly replacement: Replacement;
  /** Needed for 'random' replacement. */
  readonly rng?: Rng;
}

export interface IotlbStats {
  readonly entries: number;
  readonly ways: number;
  readonly replacement: Replacement;
  readonly hits: number;
  readonly misses: number;
  readonly fills: number;
  readonly evictions: number;
  /** Valid slots right now (slots of domains invalidated by generation are not counted). */
  readonly occupied: number;
  readonly pageInvalidations: number;
  readonly rangeInvalidations: number;
  readonly domainInvalidations: number;
  readonly globalInvalidations: number;
}

/** Tag domain of an empty slot. Domain ids are >= 0. */
const EMPTY = -1;

export class Iotlb {
  readonly entries: number;
  readonly ways: number;
  readonly sets: number;
  readonly replacement: Replacement;

  private readonly tagDomain: Int32Array;
  private readonly tagPage: Float64Array;
  private readonly frames: Float64Array;
  private readonly prots: Uint8Array;
  private readonly gens: Uint32Array;
  private readonly stamps: Float64Array;
  /** Current generation per domain id (grown on demand). */
  private domainGen = new Uint32Array(64);
  private readonly setMask: number;
  private readonly rng: Rng | undefined;
  private readonly policy: 0 | 1 | 2;
  private tick = 0;

  hits = 0;
  misses = 0;
  fills = 0;
  evictions = 0;
  pageInvalidations = 0;
  rangeInvalidations = 0;
  domainInvalidations = 0;
  globalInvalidations = 0;

  constructor(opts: IotlbOptions) {
    const { entries, ways, replacement } = opts;
    if (!Number.isInteger(entries) || entries < 0) {
      throw new KernelError(Errno.EINVAL, `IOTLB size ${entries} is invalid: expected an integer >= 0`);
    }
    if (entries > 0 && (!Number.isInteger(ways) || ways < 1 || entries % ways !== 0)) {
      throw new KernelError(
        Errno.EINVAL,
        `IOTLB associativity ${ways} is invalid: it must be a positive divisor of the size (${entries})`,
      );
    }
    if (replacement !== "lru" && replacement !== "fifo" && replacement !== "random") {
      throw new KernelError(Errno.EINVAL, `IOTLB replacement '${String(replacement)}' is not lru, fifo or random`);
    }
    if (replacement === "random" && opts.rng === undefined) {
      throw new KernelError(Errno.EINVAL, "random IOTLB replacement needs an injected Rng");
    }
    this.entries = entries;
    this.ways = entries === 0 ? 1 : ways;
    this.sets = entries === 0 ? 0 : entries / ways;
    this.replacement = replacement;
    this.policy = replacement === "lru" ? 0 : replacement === "fifo" ? 1 : 2;
    this.rng = opts.rng;
    // A power-of-two set count indexes with a mask; otherwise -1 selects the modulo path.
    this.setMask = this.sets > 0 && (this.sets & (this.sets - 1)) === 0 ? this.sets - 1 : -1;
    this.tagDomain = new Int32Array(entries).fill(EMPTY);
    this.tagPage = new Float64Array(entries);
    this.frames = new Float64Array(entries);
    this.prots = new Uint8Array(entries);
    this.gens = new Uint32Array(entries);
    this.stamps = new Float64Array(entries);
  }

  /** Slot holding the translation of (domain, page), or -1 on a miss. Counts the hit or miss. */
  lookup(domain: number, page: number): number {
    if (this.sets === 0) {
      this.misses++;
      return -1;
    }
    const gen = domain < this.domainGen.length ? this.domainGen[domain]! : 0;
    const base = this.setOf(domain, page) * this.ways;
    const end = base + this.ways;
    for (let s = base; s < end; s++) {
      if (this.tagPage[s] === page && this.tagDomain[s] === domain && this.gens[s] === gen) {
        this.hits++;
        if (this.policy === 0) this.stamps[s] = ++this.tick;
        return s;
      }
    }
    this.misses++;
    return -1;
  }

  /**
   * `lookup` that counts nothing: the IOMMU's second probe for a superpage entry after a 4 KiB miss (one access is
   * one hit or one miss, whatever the number of probes). A hit still refreshes LRU.
   */
  probe(domain: number, page: number): number {
    const s = this.lookup(domain, page);
    if (s >= 0) this.hits--;
    else this.misses--;
    return s;
  }

  /** Host frame number cached in `slot` (from `lookup`). */
  frame(slot: number): number {
    return this.frames[slot]!;
  }

  /** Permission bits cached in `slot`. */
  prot(slot: number): number {
    return this.prots[slot]!;
  }

  /** Caches (domain, page) -> (frame, prot); replaces an existing entry for the same key. Returns the slot used. */
  fill(domain: number, page: number, frame: number, prot: number): number {
    if (this.sets === 0) return -1;
    const gen = this.genOf(domain);
    const base = this.setOf(domain, page) * this.ways;
    const end = base + this.ways;
    let victim = -1;
    let free = -1;
    for (let s = base; s < end; s++) {
      const d = this.tagDomain[s]!;
      if (d === EMPTY || this.gens[s] !== (d < this.domainGen.length ? this.domainGen[d]! : 0)) {
        if (free < 0) free = s;
      } else if (d === domain && this.tagPage[s] === page) {
        victim = s;
        break;
      }
    }
    if (victim < 0) {
      if (free >= 0) {
        victim = free;
      } else {
        victim = this.chooseVictim(base, end);
        this.evictions++;
      }
    }
    this.tagDomain[victim] = domain;
    this.tagPage[victim] = page;
    this.frames[victim] = frame;
    this.prots[victim] = prot;
    this.gens[victim] = gen;
    this.stamps[victim] = ++this.tick;
    this.fills++;
    return victim;
  }

  /** Drops the translation of one page of one domain. */
  invalidatePage(domain: number, page: number): void {
    this.pageInvalidations++;
    this.dropPage(domain, page);
  }

  /** Drops translations of pages [firstPage, firstPage + pages) of one domain. */
  invalidateRange(domain: number, firstPage: number, pages: number): void {
    this.rangeInvalidations++;
    if (this.sets === 0 || pages <= 0) return;
    const endPage = firstPage + pages;
    if (pages * this.ways <= this.entries) {
      for (let p = firstPage; p < endPage; p++) this.dropPage(domain, p);
      return;
    }
    for (let s = 0; s < this.entries; s++) {
      if (this.tagDomain[s] === domain) {
        const p = this.tagPage[s]!;
        if (p >= firstPage && p < endPage) this.tagDomain[s] = EMPTY;
      }
    }
  }

  /** Drops every translation of one domain in O(1): its generation moves on. */
  invalidateDomain(domain: number): void {
    this.domainInvalidations++;
    this.genOf(domain);
    // Wrapping after 2^32 invalidations of one domain could revive a slot filled 2^32 generations ago; clear instead.
    if (this.domainGen[domain] === 0xffffffff) {
      for (let s = 0; s < this.entries; s++) if (this.tagDomain[s] === domain) this.tagDomain[s] = EMPTY;
      this.domainGen[domain] = 0;
    } else {
      this.domainGen[domain]!++;
    }
  }

  /** Drops everything. */
  invalidateAll(): void {
    this.globalInvalidations++;
    this.tagDomain.fill(EMPTY);
  }

  /** Valid slots (a scan: for stats, not hot paths). */
  occupied(): number {
    let n = 0;
    for (let s = 0; s < this.entries; s++) {
      const d = this.tagDomain[s]!;
      if (d !== EMPTY && this.gens[s] === (d < this.domainGen.length ? this.domainGen[d]! : 0)) n++;
    }
    return n;
  }

  resetCounters(): void {
    this.hits = 0;
    this.misses = 0;
    this.fills = 0;
    this.evictions = 0;
    this.pageInvalidations = 0;
    this.rangeInvalidations = 0;
    this.domainInvalidations = 0;
    this.globalInvalidations = 0;
  }

  stats(): IotlbStats {
    return {
      entries: this.entries,
      ways: this.ways,
      replacement: this.replacement,
      hits: this.hits,
      misses: this.misses,
      fills: this.fills,
      evictions: this.evictions,
      occupied: this.occupied(),
      pageInvalidations: this.pageInvalidations,
      rangeInvalidations: this.rangeInvalidations,
      domainInvalidations: this.domainInvalidations,
      globalInvalidations: this.globalInvalidations,
    };
  }

  // ---- internals -----------------------------------------------------------------------------------------------------

  private setOf(domain: number, page: number): number {
    // Low page bits pick the set so that consecutive pages spread; the domain and the high page bits are mixed in.
    const h = (page ^ Math.imul(domain, 0x9e3779b1) ^ Math.floor(page / 4294967296)) >>> 0;
    return this.setMask >= 0 ? h & this.setMask : h % this.sets;
  }

  private genOf(domain: number): number {
    if (domain >= this.domainGen.length) {
      let n = this.domainGen.length;
      while (n <= domain) n *= 2;
      const g = new Uint32Array(n);
      g.set(this.domainGen);
      this.domainGen = g;
    }
    return this.domainGen[domain]!;
  }

  private dropPage(domain: number, page: number): void {
    if (this.sets === 0) return;
    const base = this.setOf(domain, page) * this.ways;
    const end = base + this.ways;
    for (let s = base; s < end; s++) {
      if (this.tagPage[s] === page && this.tagDomain[s] === domain) this.tagDomain[s] = EMPTY;
    }
  }

  private chooseVictim(base: number, end: number): number {
    if (this.policy === 2) return base + this.rng!.int(0, this.ways - 1);
    // lru and fifo both evict the smallest stamp: lru refreshes stamps on hits, fifo only on fills.
    let victim = base;
    let oldest = this.stamps[base]!;
    for (let s = base + 1; s < end; s++) {
      if (this.stamps[s]! < oldest) {
        oldest = this.stamps[s]!;
        victim = s;
      }
    }
    return victim;
  }
}
