/**
 * `CostMeter`: what the host model did, counted per operation of the DMA chain (IOMMU map and unmap calls and pages,
 * IOTLB and device-IOTLB invalidations, page-walk memory reads, IOVA allocations and the tree nodes their searches
 * visited, page pins, DMA API calls). The host's modules bump these counters where the operation happens; a
 * `CostModel` (model.ts) prices them afterwards.
 *
 * Why counts and not time charged on the clock: charging the virtual clock inside an IOMMU map would move every later
 * event of a run (the scheduler's slices, the golden demo), and would price a run once for one set of costs. Counting
 * keeps every run byte-identical to what it was, and one run can be priced under any cost file (`price`).
 *
 * Counters are plain fields, bumped with `+=` on paths that are not per-access hot paths (a map, an invalidation, an
 * IOTLB miss's walk). Per-access figures (IOTLB hits, ATC hits, ATS translation requests) come from the IOMMU's own
 * statistics and are added to a snapshot by whoever takes it (`CostCounts`).
 */

/** Everything a run is priced on: the meter's counters plus the IOMMU's per-access counters. */
export interface CostCounts {
  readonly iommuMapCalls: number;
  readonly iommuMapPages: number;
  readonly iommuUnmapCalls: number;
  readonly iommuUnmapPages: number;
  /** IOTLB invalidation descriptors (page, range, domain or global). */
  readonly iotlbInvalidations: number;
  /** Device-IOTLB (ATC) invalidations sent to ATS devices, each waited for. */
  readonly atcInvalidations: number;
  /** IOTLB misses that walked the I/O page table. */
  readonly pageWalks: number;
  /** Page-table entries read by those walks (4 per 4 KiB leaf of a 4-level table, 3 per 2 MiB leaf). */
  readonly pageWalkReads: number;
  /** IOTLB lookups that hit. */
  readonly iotlbHits: number;
  /** Accesses served by a device ATC (pre-translated requests). */
  readonly atcHits: number;
  /** ATS translation requests (ATC misses answered by the IOMMU). */
  readonly atsTranslationRequests: number;
  /** IOVA allocations that searched the tree (alloc_iova), and the tree nodes the searches visited. */
  readonly iovaTreeAllocs: number;
  readonly iovaSearchSteps: number;
  /** IOVA allocations served by the per-CPU range caches (alloc_iova_fast hits). */
  readonly iovaCachedAllocs: number;
  readonly iovaFrees: number;
  /** pin_user_pages calls and pages. */
  readonly pinCalls: number;
  readonly pinPages: number;
  readonly unpinPages: number;
  /** DMA API calls (dma_map_page, dma_unmap_page, map_sg, alloc/free_coherent). */
  readonly dmaApiCalls: number;
  /** vfio-user messages that waited for a reply (round trips). */
  readonly vfioUserRoundTrips: number;
}

export type CostCounter = keyof CostCounts;

export const COST_COUNTERS: readonly CostCounter[] = [
  "iommuMapCalls",
  "iommuMapPages",
  "iommuUnmapCalls",
  "iommuUnmapPages",
  "iotlbInvalidations",
  "atcInvalidations",
  "pageWalks",
  "pageWalkReads",
  "iotlbHits",
  "atcHits",
  "atsTranslationRequests",
  "iovaTreeAllocs",
  "iovaSearchSteps",
  "iovaCachedAllocs",
  "iovaFrees",
  "pinCalls",
  "pinPages",
  "unpinPages",
  "dmaApiCalls",
  "vfioUserRoundTrips",
];

/** The counters a host's modules bump. One per host; shared by its IOMMU, DMA API, IOVA domains and processes. */
export class CostMeter implements CostCounts {
  iommuMapCalls = 0;
  iommuMapPages = 0;
  iommuUnmapCalls = 0;
  iommuUnmapPages = 0;
  iotlbInvalidations = 0;
  atcInvalidations = 0;
  pageWalks = 0;
  pageWalkReads = 0;
  iotlbHits = 0;
  atcHits = 0;
  atsTranslationRequests = 0;
  iovaTreeAllocs = 0;
  iovaSearchSteps = 0;
  iovaCachedAllocs = 0;
  iovaFrees = 0;
  pinCalls = 0;
  pinPages = 0;
  unpinPages = 0;
  dmaApiCalls = 0;
  vfioUserRoundTrips = 0;

  /** A copy of the counters, with the per-access figures the meter does not count itself given by the caller. */
  snapshot(perAccess: Partial<Pick<CostCounts, "iotlbHits" | "atcHits" | "atsTranslationRequests">> = {}): CostCounts {
    const out: Record<CostCounter, number> = {} as Record<CostCounter, number>;
    for (const k of COST_COUNTERS) out[k] = this[k];
    return { ...out, ...perAccess };
  }

  /** Counts since `before` (a snapshot). */
  since(before: CostCounts): CostCounts {
    const out: Record<CostCounter, number> = {} as Record<CostCounter, number>;
    for (const k of COST_COUNTERS) out[k] = this[k] - before[k];
    return out;
  }
}

/** A meter no one reads: the default of components built without a host (unit tests, benchmarks). */
export function detachedMeter(): CostMeter {
  return new CostMeter();
}
