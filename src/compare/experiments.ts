/**
 * The cost model's experiments: three effects the literature reports, reproduced on the host model's own structures
 * and priced with a `CostModel`, so tests can assert their direction and rough size (test/compare-costs.test.ts)
 * and docs/cost-model.md can show them. Modelled time only: nothing here reads a clock.
 *
 * - `iovaFragmentation`: FAST'15 (Malka, Amit, Tsafrir) found Linux's IOVA allocator linear in the number of live
 *   ranges under fragmentation: the walk from the cached node visits every range above a gap that fits. Same
 *   operations on `LinearIovaDomain` (a port of iova.c's walk) and on `IovaDomain` (ours, O(log n)).
 * - `strictVsDeferred`: unmapping with an IOTLB invalidation each time (strict) or deferring invalidations to a flush
 *   every 256 unmaps (Linux's flush queue, IOVA_FQ_SIZE); and the price of deferring: the device can still use an
 *   unmapped page until the flush.
 * - `iotlbReach`: sweeping a working set larger than the IOTLB's reach makes every access walk (the "reach wall");
 *   2 MiB pages (one IOTLB entry per 2 MiB, `IommuOptions.iotlb.superpages`) push the wall 512 times further.
 */
import { type Hpa, type Iova, PAGE_SIZE, type SchedulingClock, Tracer, VirtualClock } from "../core/index.ts";
import { CostMeter, type CostModel, costModel, price } from "../cost/index.ts";
import { GiB, Host, IOMMU_READ, IOMMU_WRITE, IovaDomain, LinearIovaDomain, parseBdf } from "../host/index.ts";

// ---- FAST'15: IOVA allocation under fragmentation ----------------------------------------------------------------

export interface FragmentationPoint {
  /** Live ranges when the measured allocations run. */
  readonly liveRanges: number;
  /** Tree nodes visited per allocation: Linux's walk, ours. */
  readonly linuxSteps: number;
  readonly oursSteps: number;
  /** Modelled ns per allocation (iovaTreeAllocNs + steps x iovaSearchStepNs). */
  readonly linuxNs: number;
  readonly oursNs: number;
}

/**
 * For each n: n one-page ranges allocated top-down below 4 GiB, every other one freed (n/2 one-page holes that no
 * two-page aligned request fits), then `probes` two-page aligned allocations, each of which must search past every
 * hole to the free space below the lowest range.
 */
export function iovaFragmentation(
  sizes: readonly number[],
  model: CostModel = costModel(),
  probes = 8,
): FragmentationPoint[] {
  const clock: SchedulingClock = new VirtualClock();
  const tracer = new Tracer(clock);
  const limit = 2 ** 32 / PAGE_SIZE - 1;
  return sizes.map((n) => {
    const linux = new LinearIovaDomain({ startPfn: 1 });
    const meter = new CostMeter();
    const ours = new IovaDomain({ startPfn: 1, clock, tracer, meter });
    const lo: number[] = [];
    for (let i = 0; i < n; i++) {
      const a = linux.allocIova(1, limit, true)!;
      const b = ours.allocIova(1, limit, true)!;
      if (a.pfnLo !== b.pfnLo) throw new Error(`iovaFragmentation: the allocators disagree at ${i}`);
      lo.push(a.pfnLo);
    }
    for (let i = 0; i < n; i += 2) {
      linux.freeIova(lo[i]!);
      ours.freeIova(lo[i]!);
    }
    const l0 = linux.steps;
    const o0 = meter.iovaSearchSteps;
    for (let k = 0; k < probes; k++) {
      const a = linux.allocIova(2, limit, true)!;
      const b = ours.allocIova(2, limit, true)!;
      if (a.pfnLo !== b.pfnLo) throw new Error(`iovaFragmentation: the allocators disagree on probe ${k}`);
    }
    const linuxSteps = (linux.steps - l0) / probes;
    const oursSteps = (meter.iovaSearchSteps - o0) / probes;
    const perAlloc = (steps: number) => model.iovaTreeAllocNs + steps * model.iovaSearchStepNs;
    return {
      liveRanges: linux.liveRanges(),
      linuxSteps,
      oursSteps,
      linuxNs: perAlloc(linuxSteps),
      oursNs: perAlloc(oursSteps),
    };
  });
}

// ---- strict vs deferred unmap ----------------------------------------------------------------------------------------

export interface UnmapModeResult {
  readonly mode: "strict" | "deferred";
  readonly unmaps: number;
  readonly iotlbInvalidations: number;
  readonly atcInvalidations: number;
  /** Modelled ns per map + unmap pair (IOVA allocation and free, map, unmap, invalidations). */
  readonly nsPerPair: number;
  /** After an unmap and before any flush, a DMA to the unmapped IOVA still reached the old frame. */
  readonly staleTranslationUsable: boolean;
}

/** Flush queue size of Linux's iommu-dma (IOVA_FQ_SIZE): a deferred flush every this many unmaps. */
export const FLUSH_QUEUE_SIZE = 256;

/**
 * `pairs` dma_map/dma_unmap pairs of one page on a device (with ATS when `ats`), each mapped page touched once by
 * the device, unmapped strictly or deferred; then the stale-translation probe.
 */
export function strictVsDeferred(
  mode: "strict" | "deferred",
  pairs: number,
  opts: { readonly ats?: boolean; readonly model?: CostModel } = {},
): UnmapModeResult {
  const host = new Host({ memoryBytes: 1 * GiB, seed: 1 });
  const bdf = parseBdf("0000:00:05.0");
  host.iommu.addDevice(bdf, { ats: opts.ats ?? false });
  const dom = host.iommu.domainOf(bdf);
  const iovad = new IovaDomain({ startPfn: 1, clock: host.clock, tracer: host.tracer, meter: host.costs });
  const frame = host.physmem.allocFrame(0);
  const before = host.costs.snapshot();
  let pending: number[] = [];
  const flush = () => {
    dom.flush();
    for (const p of pending) iovad.freeIovaFast(p, 1);
    pending = [];
  };
  for (let i = 0; i < pairs; i++) {
    const pfn = iovad.allocIovaFast(1, 2 ** 32 / PAGE_SIZE - 1, true);
    const iova = (pfn * PAGE_SIZE) as Iova;
    dom.map(iova, (frame * PAGE_SIZE) as Hpa, PAGE_SIZE, IOMMU_READ | IOMMU_WRITE);
    host.iommu.translate(bdf, iova, IOMMU_WRITE);
    if (mode === "strict") {
      dom.unmap(iova, PAGE_SIZE);
      iovad.freeIovaFast(pfn, 1);
    } else {
      dom.unmap(iova, PAGE_SIZE, { flush: false });
      pending.push(pfn);
      if (pending.length >= FLUSH_QUEUE_SIZE) flush();
    }
  }
  if (pending.length > 0) flush();
  const st = host.iommu.stats();
  const counts = {
    ...host.costs.since(before),
    iotlbHits: st.iotlb.hits,
    atcHits: st.atsHits,
    atsTranslationRequests: st.atsTranslationRequests,
  };
  const priced = price(counts, opts.model ?? costModel());
  // The price of deferring: map, touch, unmap without a flush, touch again.
  const pfn = iovad.allocIovaFast(1, 2 ** 32 / PAGE_SIZE - 1, true);
  const iova = (pfn * PAGE_SIZE) as Iova;
  dom.map(iova, (frame * PAGE_SIZE) as Hpa, PAGE_SIZE, IOMMU_READ | IOMMU_WRITE);
  host.iommu.translate(bdf, iova, IOMMU_WRITE);
  dom.unmap(iova, PAGE_SIZE, { flush: mode === "strict" });
  const stale = host.iommu.translate(bdf, iova, IOMMU_WRITE) >= 0;
  return {
    mode,
    unmaps: counts.iommuUnmapCalls,
    iotlbInvalidations: counts.iotlbInvalidations,
    atcInvalidations: counts.atcInvalidations,
    nsPerPair: priced.totalNs / pairs,
    staleTranslationUsable: stale,
  };
}

// ---- the IOTLB reach wall ----------------------------------------------------------------------------------------

export interface ReachPoint {
  /** Working set swept, in 4 KiB pages. */
  readonly pages: number;
  readonly pageSize: "4K" | "2M";
  readonly iotlbEntries: number;
  readonly hitRate: number;
  /** Modelled ns of translation per access (walk reads priced; hits are free). */
  readonly nsPerAccess: number;
}

/**
 * A device sweeps a working set of `pages` pages `rounds` times (one access per page, in order), mapped with 4 KiB or
 * 2 MiB pages, through an IOTLB of the model's default geometry (1024 entries, 8 ways, LRU) that keeps one entry per
 * 2 MiB of a superpage. The first sweep warms up and is not counted.
 */
export function iotlbReach(
  pages: number,
  pageSize: "4K" | "2M",
  rounds = 4,
  model: CostModel = costModel(),
): ReachPoint {
  const host = new Host({ memoryBytes: 2 * GiB, seed: 1, iommu: { iotlb: { superpages: true } } });
  const bdf = parseBdf("0000:00:06.0");
  host.iommu.addDevice(bdf);
  const dom = host.iommu.domainOf(bdf);
  const base = 1 * GiB;
  if (pageSize === "2M") {
    dom.map(base as Iova, base as Hpa, Math.ceil(pages / 512) * 512 * PAGE_SIZE, IOMMU_READ);
  } else {
    for (let p = 0; p < pages; p++)
      dom.map((base + p * PAGE_SIZE) as Iova, (base + p * PAGE_SIZE) as Hpa, PAGE_SIZE, IOMMU_READ);
  }
  const sweep = () => {
    for (let p = 0; p < pages; p++) host.iommu.translate(bdf, (base + p * PAGE_SIZE) as Iova, IOMMU_READ);
  };
  sweep();
  const before = host.costs.snapshot();
  const h0 = host.iommu.iotlb.hits;
  const m0 = host.iommu.iotlb.misses;
  for (let r = 1; r < rounds; r++) sweep();
  const counts = host.costs.since(before);
  const hits = host.iommu.iotlb.hits - h0;
  const misses = host.iommu.iotlb.misses - m0;
  const accesses = pages * (rounds - 1);
  return {
    pages,
    pageSize,
    iotlbEntries: host.iommu.iotlb.entries,
    hitRate: hits / (hits + misses),
    nsPerAccess: (counts.pageWalkReads * model.pageWalkReadNs) / accesses,
  };
}

/** The three experiments at the sizes docs/cost-model.md and the HTML page show (about two seconds). */
export function runExperiments(model: CostModel = costModel()): {
  fragmentation: FragmentationPoint[];
  unmap: { ats: boolean; result: UnmapModeResult }[];
  reach: ReachPoint[];
} {
  const unmap: { ats: boolean; result: UnmapModeResult }[] = [];
  for (const ats of [false, true]) {
    for (const mode of ["strict", "deferred"] as const)
      unmap.push({ ats, result: strictVsDeferred(mode, 2048, { ats, model }) });
  }
  const reach: ReachPoint[] = [];
  for (const pages of [512, 1024, 2048, 4096])
    for (const ps of ["4K", "2M"] as const) reach.push(iotlbReach(pages, ps, 4, model));
  return { fragmentation: iovaFragmentation([1000, 4000, 16000], model), unmap, reach };
}
