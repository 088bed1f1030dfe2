/**
 * The cost model: a price in nanoseconds for every operation of the DMA chain the host model counts (meter.ts), each
 * with its published default and where that default comes from (docs/cost-model.md is the same table for people).
 * A scenario file overrides any of them in its `costs` section; `validateCost` is the one range check, so a file, a
 * test and the command line refuse the same values with the same sentence.
 *
 * `price(counts, model)` turns a run's counts into modelled time per operation and in total. Nothing here reads a
 * clock: the same counts and costs give the same figures.
 *
 * Not modelled: contention (two CPUs invalidating at once), the IOMMU's paging-structure caches (a walk always reads
 * every level), cache effects of the data copied. The defaults are one machine's orders of magnitude, not a claim
 * about any particular one: the point is the direction and size of effects (which design maps more, which walks
 * more), and each figure can be set to a measured one.
 */
import type { CostCounter, CostCounts } from "./meter.ts";

/** One priced operation. */
export interface CostEntry {
  /** The key in a scenario's `costs` section. */
  readonly key: CostKey;
  /** The counter it multiplies. */
  readonly counter: CostCounter;
  /** What is priced, for tables and the JSON schema. */
  readonly what: string;
  /** The unit of the counter ("call", "page", ...): the price is ns per one of these. */
  readonly per: string;
  readonly defaultNs: number;
  /** Accepted range, inclusive, in ns. */
  readonly minNs: number;
  readonly maxNs: number;
  /** Where the default comes from. */
  readonly source: string;
}

export const COST_KEYS = [
  "iommuMapCallNs",
  "iommuMapPageNs",
  "iommuUnmapCallNs",
  "iommuUnmapPageNs",
  "iotlbInvalidationNs",
  "atcInvalidationNs",
  "pageWalkReadNs",
  "atsTranslationRequestNs",
  "iovaTreeAllocNs",
  "iovaSearchStepNs",
  "iovaCachedAllocNs",
  "iovaFreeNs",
  "pinCallNs",
  "pinPageNs",
  "dmaApiCallNs",
  "vfioUserRoundTripNs",
] as const;
export type CostKey = (typeof COST_KEYS)[number];

const US = 1_000;
const MS = 1_000_000;

export const COST_TABLE: readonly CostEntry[] = [
  {
    key: "iommuMapCallNs",
    counter: "iommuMapCalls",
    what: "iommu_map: fixed part of one call",
    per: "call",
    defaultNs: 54,
    minNs: 0,
    maxNs: 1 * MS,
    source: "fit to ~55 ns for one 4 KiB page and ~380-405 ns for a 256-page batch (figures quoted in issue 15)",
  },
  {
    key: "iommuMapPageNs",
    counter: "iommuMapPages",
    what: "iommu_map: each 4 KiB page of a call",
    per: "page",
    defaultNs: 1.3,
    minNs: 0,
    maxNs: 100 * US,
    source: "same fit: (387 - 54) ns / 256 pages",
  },
  {
    key: "iommuUnmapCallNs",
    counter: "iommuUnmapCalls",
    what: "iommu_unmap: one call (page-table clear, without the IOTLB flush)",
    per: "call",
    defaultNs: 70,
    minNs: 0,
    maxNs: 1 * MS,
    source: "~70 ns per iommu_unmap (issue 15)",
  },
  {
    key: "iommuUnmapPageNs",
    counter: "iommuUnmapPages",
    what: "iommu_unmap: each 4 KiB page cleared",
    per: "page",
    defaultNs: 0.5,
    minNs: 0,
    maxNs: 100 * US,
    source: "assumed: clearing a PTE in a cache-hot table page",
  },
  {
    key: "iotlbInvalidationNs",
    counter: "iotlbInvalidations",
    what: "IOTLB invalidation descriptor, waited for, with the cache flushing it implies",
    per: "invalidation",
    defaultNs: 250,
    minNs: 0,
    maxNs: 1 * MS,
    source: "~250 ns per IOTLB invalidation with cache flushing (issue 15)",
  },
  {
    key: "atcInvalidationNs",
    counter: "atcInvalidations",
    what: "device-IOTLB (ATC) invalidation: a PCIe message to the device and its completion, waited for",
    per: "invalidation",
    defaultNs: 2 * US,
    minNs: 0,
    maxNs: 10 * MS,
    source: "assumed: a PCIe round trip to the device (~1 us) plus the device's flush; PCIe lets it take far longer",
  },
  {
    key: "pageWalkReadNs",
    counter: "pageWalkReads",
    what: "one page-table read of an IOTLB-miss walk (4 for a 4 KiB leaf of a 4-level table, 3 for 2 MiB)",
    per: "read",
    defaultNs: 90,
    minNs: 0,
    maxNs: 100 * US,
    source: "assumed: one DRAM access per level (~90 ns); the IOMMU's paging-structure caches are not modelled",
  },
  {
    key: "atsTranslationRequestNs",
    counter: "atsTranslationRequests",
    what: "ATS translation request: the device's round trip to the IOMMU (its walk is priced apart)",
    per: "request",
    defaultNs: 1 * US,
    minNs: 0,
    maxNs: 10 * MS,
    source: "assumed: one PCIe round trip (~1 us)",
  },
  {
    key: "iovaTreeAllocNs",
    counter: "iovaTreeAllocs",
    what: "alloc_iova: fixed part (lock, node allocation, insert and rebalance)",
    per: "allocation",
    defaultNs: 150,
    minNs: 0,
    maxNs: 1 * MS,
    source: "assumed, of the order FAST'15 (Malka, Amit, Tsafrir) measures for an allocation that finds room at once",
  },
  {
    key: "iovaSearchStepNs",
    counter: "iovaSearchSteps",
    what: "one tree node visited by the allocation's search (rb_prev in Linux's linear walk)",
    per: "node",
    defaultNs: 15,
    minNs: 0,
    maxNs: 100 * US,
    source: "assumed: a dependent pointer load; FAST'15 shows the walk's length, not this constant, makes Linux slow",
  },
  {
    key: "iovaCachedAllocNs",
    counter: "iovaCachedAllocs",
    what: "alloc_iova_fast served by the per-CPU range cache",
    per: "allocation",
    defaultNs: 25,
    minNs: 0,
    maxNs: 1 * MS,
    source: "assumed: a magazine pop under a per-CPU lock",
  },
  {
    key: "iovaFreeNs",
    counter: "iovaFrees",
    what: "free_iova / free_iova_fast",
    per: "free",
    defaultNs: 60,
    minNs: 0,
    maxNs: 1 * MS,
    source: "assumed",
  },
  {
    key: "pinCallNs",
    counter: "pinCalls",
    what: "pin_user_pages: fixed part of a call (VMA lookup, mmap lock)",
    per: "call",
    defaultNs: 300,
    minNs: 0,
    maxNs: 1 * MS,
    source: "assumed",
  },
  {
    key: "pinPageNs",
    counter: "pinPages",
    what: "pin_user_pages: each 4 KiB page pinned",
    per: "page",
    defaultNs: 1024,
    minNs: 0,
    maxNs: 1 * MS,
    source: "page pinning at ~4 GB/s (issue 15): 4096 bytes / 4 bytes per ns",
  },
  {
    key: "dmaApiCallNs",
    counter: "dmaApiCalls",
    what: "DMA API call overhead (dma_map_page and friends, besides the IOVA and the IOMMU work they cause)",
    per: "call",
    defaultNs: 40,
    minNs: 0,
    maxNs: 1 * MS,
    source: "assumed: an indirect call and the mapping's bookkeeping",
  },
  {
    key: "vfioUserRoundTripNs",
    counter: "vfioUserRoundTrips",
    what: "a vfio-user message and its reply over the UNIX socket",
    per: "round trip",
    defaultNs: 39 * US,
    minNs: 0,
    maxNs: 1000 * MS,
    source: "measured here: 25.7 K REGION_READ round trips/s (BENCHMARKS.md, vfio-user)",
  },
];

export type CostModel = Readonly<Record<CostKey, number>>;

export const DEFAULT_COSTS: CostModel = Object.fromEntries(COST_TABLE.map((e) => [e.key, e.defaultNs])) as Record<
  CostKey,
  number
>;

export function costEntry(key: CostKey): CostEntry {
  return COST_TABLE.find((e) => e.key === key)!;
}

export function isCostKey(k: string): k is CostKey {
  return (COST_KEYS as readonly string[]).includes(k);
}

/** Formats ns for messages: "250 ns", "39 us", "1 ms". */
export function formatNs(ns: number): string {
  if (ns >= MS && ns % (MS / 1000) === 0) return `${ns / MS} ms`;
  if (ns >= US) return `${+(ns / US).toFixed(3)} us`;
  return `${+ns.toFixed(3)} ns`;
}

/**
 * The range check of one cost: undefined when `ns` is acceptable, else the sentence saying what is ("must be a time
 * from 0 ns to 1 ms per call, e.g. \"54 ns\"").
 */
export function validateCost(key: CostKey, ns: number): string | undefined {
  const e = costEntry(key);
  if (Number.isFinite(ns) && ns >= e.minNs && ns <= e.maxNs) return undefined;
  return `must be a time from ${formatNs(e.minNs)} to ${formatNs(e.maxNs)} per ${e.per}, e.g. "${formatNs(e.defaultNs)}"`;
}

/** The defaults with `overrides` applied (already validated). */
export function costModel(overrides: Partial<Record<CostKey, number>> = {}): CostModel {
  return { ...DEFAULT_COSTS, ...overrides };
}

/** Modelled time of a run: per priced operation, and the total. */
export interface PricedRun {
  readonly totalNs: number;
  /** Per cost key: the count it multiplied and the ns it contributes. */
  readonly items: readonly { readonly key: CostKey; readonly count: number; readonly ns: number }[];
}

export function price(counts: CostCounts, model: CostModel): PricedRun {
  let total = 0;
  const items = COST_TABLE.map((e) => {
    const count = counts[e.counter];
    const ns = count * model[e.key];
    total += ns;
    return { key: e.key, count, ns };
  });
  return { totalNs: total, items };
}
