/**
 * PCIe Address Translation Services: the device-side translation cache (ATC, "device IOTLB") of one device.
 *
 * Protocol as modelled:
 * 1. On an ATC miss the device sends a *translation request* for one page to the IOMMU, which translates it exactly as
 *    for an untranslated request (IOTLB, then page walk) and answers with the host frame and the R/W permission of the
 *    mapping. The device caches that answer here (`fill`).
 * 2. Later accesses to that page hit the ATC and go out as *pre-translated* requests: the IOMMU does not walk.
 * 3. Whenever the IOMMU invalidates its IOTLB for a domain (a page, a range or the whole domain) it also sends a
 *    *device-IOTLB invalidation* to the ATC of every ATS-enabled device attached to that domain, and waits for the
 *    completion before the unmap returns; so the ATC never serves a translation that the IOTLB could no longer serve.
 *    A device changing domain (attach/detach) has its ATC flushed whole.
 *
 * The cache is an `Iotlb` with one key space (the device only ever sees its own domain's IOVAs), so it shares that
 * module's replacement policies and its no-allocation lookup. The translation logic itself lives in `Iommu`
 * (`translateFrame`, and `translateDevice` on top of it), which consults this cache first for ATS-enabled devices.
 *
 * Not modelled: PRI (page requests), PASID-tagged requests, invalidation queue latency, untrusted devices abusing
 * pre-translated requests (VT-d lets any ATS-enabled device send them; the model only ever sends what the ATC holds).
 */
import type { Rng } from "../core/index.ts";
import type { Bdf } from "./bdf.ts";
import { Iotlb, type IotlbStats, type Replacement } from "./iotlb.ts";

export interface AtcOptions {
  readonly entries: number;
  readonly ways: number;
  readonly replacement: Replacement;
  readonly rng?: Rng;
}

export const DEFAULT_ATC_OPTIONS: AtcOptions = { entries: 64, ways: 4, replacement: "lru" };

export interface AtcStats {
  readonly bdf: Bdf;
  /** Accesses served from the ATC (pre-translated requests). */
  readonly hits: number;
  readonly misses: number;
  /** Translation requests sent to the IOMMU that succeeded and were cached. */
  readonly translationRequests: number;
  /** Device-IOTLB invalidations received (page/range and whole-cache). */
  readonly invalidations: number;
  readonly cache: IotlbStats;
}

/** Key-space id used in the underlying Iotlb: an ATC belongs to one device, so one key space suffices. */
const ATC_SPACE = 0;

export class Atc {
  readonly bdf: Bdf;
  private readonly cache: Iotlb;
  translationRequests = 0;
  invalidations = 0;

  constructor(bdf: Bdf, opts: AtcOptions = DEFAULT_ATC_OPTIONS) {
    this.bdf = bdf;
    this.cache = new Iotlb(opts);
  }

  /** Slot caching IOVA page `page`, or -1. */
  lookup(page: number): number {
    return this.cache.lookup(ATC_SPACE, page);
  }

  frame(slot: number): number {
    return this.cache.frame(slot);
  }

  prot(slot: number): number {
    return this.cache.prot(slot);
  }

  /** Caches the answer to a translation request. */
  fill(page: number, frame: number, prot: number): void {
    this.translationRequests++;
    this.cache.fill(ATC_SPACE, page, frame, prot);
  }

  /** Device-IOTLB invalidation of pages [firstPage, firstPage + pages). */
  invalidateRange(firstPage: number, pages: number): void {
    this.invalidations++;
    if (pages === 1) this.cache.invalidatePage(ATC_SPACE, firstPage);
    else this.cache.invalidateRange(ATC_SPACE, firstPage, pages);
  }

  /** Device-IOTLB invalidation of everything (domain-selective, or a change of domain). */
  invalidateAll(): void {
    this.invalidations++;
    this.cache.invalidateDomain(ATC_SPACE);
  }

  get hits(): number {
    return this.cache.hits;
  }

  get misses(): number {
    return this.cache.misses;
  }

  stats(): AtcStats {
    return {
      bdf: this.bdf,
      hits: this.cache.hits,
      misses: this.cache.misses,
      translationRequests: this.translationRequests,
      invalidations: this.invalidations,
      cache: this.cache.stats(),
    };
  }
}
