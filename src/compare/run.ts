/**
 * The comparison: one scenario run once per design (designs.ts), each on a fresh host with the same seed, and the
 * figures that tell the designs apart gathered from each run (isolation verdict, translations per DMA, IOTLB and ATC
 * hit rates, IOVA space, pins, map/unmap/invalidate calls, modelled time priced by the cost model).
 *
 * Every design runs with the same host memory placement (`placeHostMemory`): before the VMs start, the host is made
 * to have used its RAM up to the lowest IOVA its graphics driver has mapped, so the first guest pages land on frames
 * whose HPAs are also the host driver's IOVAs. Which frames a guest gets is the page allocator's business; on a host
 * with RAM under its IOVA range some guest page eventually sits at such an HPA (the thread's "an HPA could overlap an
 * IOVA"), and the placement makes that happen on the first pins instead of by chance, for every design alike.
 *
 * Designs run one after the other on this thread; each run is torn down before the next starts. A design the
 * scenario's host cannot run is refused (designs.ts `refusal`) before any runs.
 */
import {
  defineTraceEvents,
  Errno,
  type Hpa,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type TraceRecord,
} from "../core/index.ts";
import {
  type CostCounts,
  type CostKey,
  CostMeter,
  type CostModel,
  costModel,
  type PricedRun,
  price,
  validateCost,
} from "../cost/index.ts";
import { IOMMU_WRITE, IovaDomain, MSI_WINDOW_END, MSI_WINDOW_START } from "../host/index.ts";
import {
  buildReport,
  DESIGN_IDS,
  type DesignId,
  describeViolation,
  type RunError,
  type Scenario,
  ScenarioRun,
  type System,
} from "../scenario/index.ts";
import { configure, type Design, design, refusal } from "./designs.ts";
import { type AddressClash, GpaMapper, IdentityMapper, PerVmIovaMapper } from "./mappers.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "compare.placement": { fromPfn: number; toPfn: number; frames: number };
  }
}
defineTraceEvents("compare", {
  "compare.placement":
    "host memory in use up to pfn {toPfn} ({frames} frame(s) from pfn {fromPfn}): the next guest pages sit at the host driver's IOVAs",
});

export interface CompareOptions {
  /** Designs to run, in order (default: the scenario's `designs`, else all six). */
  readonly designs?: readonly DesignId[];
  /** Overrides the scenario's seed. */
  readonly seed?: number;
  /** Cost overrides in ns, over the scenario's `costs` (validated: EINVAL naming the key). */
  readonly costs?: Readonly<Partial<Record<CostKey, number>>>;
  /** A trace sink per design (a Perfetto writer's), or undefined for none. */
  readonly trace?: (design: DesignId) => ((r: TraceRecord) => void) | undefined;
  /** Told as each design starts. */
  readonly progress?: (design: DesignId, index: number, count: number) => void;
  /** Given each design's run once measured and torn down (its steps and records stay readable). */
  readonly onRun?: (design: DesignId, run: ScenarioRun) => void;
}

/** A translated request probe: the ATS trust boundary (or its absence). */
export interface TrustProbe {
  /** Whom the probe's target frame belongs to, and where it is. */
  readonly target: string;
  readonly hpa: number;
  /** A translated write to `hpa` from the GPU: reached memory or was blocked by the IOMMU. */
  readonly translatedWrite: "reached" | "blocked";
  /** The same after the IOMMU's ATS enable control is turned off for the GPU (undefined: no IOMMU to ask). */
  readonly afterAtsDisabled: "reached" | "blocked" | undefined;
  /** Bytes a device sending translated requests can reach (all of RAM when they pass unchecked). */
  readonly reachableBytes: number;
}

export interface DesignResult {
  readonly design: Design;
  /** Why the design was not run (then nothing else is filled). */
  readonly refused: string | undefined;
  readonly error: RunError | undefined;
  readonly failures: readonly string[];
  readonly verdict: {
    /** No isolation violation, no clash, and no run error. */
    readonly isolated: boolean;
    readonly violations: number;
    /** The first violations, as the checker describes them. */
    readonly examples: readonly string[];
    /** Addresses meaning two things under the design (identity, gpa), in order found. */
    readonly clashes: number;
    readonly clashExamples: readonly AddressClash[];
    readonly trust: TrustProbe | undefined;
    /** One line for people. */
    readonly summary: string;
  };
  readonly dma: { readonly pieces: number; readonly bytes: number };
  readonly translations: {
    /** GPU MMU (GGTT) lookups per DMA page piece. */
    readonly gpuMmuPerDma: number;
    /** IOMMU translations (IOTLB lookup or walk) per DMA page piece. */
    readonly iommuPerDma: number;
    /** Pre-translated requests (ATC hits) per DMA page piece. */
    readonly preTranslatedPerDma: number;
  };
  /** Hit rates, NaN where there is no such cache or no lookup. */
  readonly iotlbHitRate: number;
  readonly atcHitRate: number;
  /** DMA address space in use at the end of the workload: iova.c ranges plus entries the design adds itself. */
  readonly iovaSpaceBytes: number;
  readonly pinnedPagesAtEnd: number;
  readonly counts: CostCounts;
  readonly priced: PricedRun;
  /** Modelled time of the DMA chain (priced counts), of the engines, and both. */
  readonly chainNs: number;
  readonly engineNs: number;
  readonly modelledNs: number;
}

export interface CompareResult {
  readonly scenario: string;
  readonly seed: number;
  readonly costs: CostModel;
  readonly results: readonly DesignResult[];
}

/** Checks every design first (refusals) then runs the others in order. */
export function runCompare(scenario: Scenario, opts: CompareOptions = {}): CompareResult {
  const ids = opts.designs ?? scenario.designs ?? DESIGN_IDS;
  const overrides = { ...scenario.costs, ...(opts.costs ?? {}) };
  for (const [k, v] of Object.entries(overrides) as [CostKey, number][]) {
    const bad = validateCost(k, v);
    if (bad !== undefined) throw new KernelError(Errno.EINVAL, `costs.${k}: ${bad} (got ${v})`, { path: ["costs", k] });
  }
  const model = costModel(overrides);
  const seed = opts.seed ?? scenario.seed;
  const refusals = new Map(ids.map((id) => [id, refusal(id, scenario)]));
  const results: DesignResult[] = [];
  ids.forEach((id, i) => {
    const d = design(id);
    const why = refusals.get(id);
    if (why !== undefined) {
      results.push(refusedResult(d, why));
      return;
    }
    opts.progress?.(id, i, ids.length);
    results.push(runDesign(d, configure(id, scenario), seed, model, opts.trace?.(id), opts.onRun));
  });
  return { scenario: scenario.name, seed, costs: model, results };
}

/** The designs refused for `scenario` (id and reason), before anything runs. */
export function refusals(
  scenario: Scenario,
  ids: readonly DesignId[] = DESIGN_IDS,
): { id: DesignId; reason: string }[] {
  const out: { id: DesignId; reason: string }[] = [];
  for (const id of ids) {
    const reason = refusal(id, scenario);
    if (reason !== undefined) out.push({ id, reason });
  }
  return out;
}

// ---- one design ------------------------------------------------------------------------------------------------------

interface Installed {
  identity?: IdentityMapper;
  gpa?: GpaMapper;
  perVm?: PerVmIovaMapper;
  placedAt: number;
}

function runDesign(
  d: Design,
  scenario: Scenario,
  seed: number,
  model: CostModel,
  sink: ((r: TraceRecord) => void) | undefined,
  onRun: CompareOptions["onRun"],
): DesignResult {
  const installed: Installed = { placedAt: 0 };
  let before: CostCounts | undefined;
  let detach: (() => void) | undefined;
  const run = new ScenarioRun(scenario, {
    seed,
    keepAlive: true,
    maxViolationSamples: 8,
    prepare: (system) => {
      if (sink !== undefined) detach = system.host.tracer.subscribe(sink);
      install(d, system, installed, (vgpu) => gpaSpanOf(run, vgpu));
      before = system.host.costs.snapshot();
    },
  });
  run.run();
  try {
    return measure(d, run, installed, before, model);
  } finally {
    run.teardown();
    detach?.();
    onRun?.(d.id, run);
  }
}

/** Bytes of guest-physical space of the VM behind vGPU `vgpu`: below 4 GiB and its RAM above (PC layout). */
function gpaSpanOf(run: ScenarioRun, vgpu: number): number {
  for (const v of run.vms.values()) {
    if (v.vgpu?.id === vgpu) return 4 * 2 ** 30 + (v.spec.maxMemoryBytes ?? v.spec.memoryBytes);
  }
  throw new KernelError(Errno.ENODEV, `per-VM IOVA: no VM has vgpu${vgpu}`);
}

function mediated(system: System) {
  const g = system.gpus.find((x) => x.parent !== undefined);
  if (g === undefined) throw new KernelError(Errno.ENODEV, "the compare workload needs a GPU driven by i915");
  return g;
}

function install(d: Design, system: System, out: Installed, span: (vgpu: number) => number): void {
  const g = mediated(system);
  const host = system.host;
  const domainOf = () => host.iommu.domainOf(g.gpu.bdf);
  out.placedAt = placeHostMemory(system);
  if (d.mapper === "identity") out.identity = new IdentityMapper(domainOf, host.tracer);
  if (d.mapper === "gpa") out.gpa = new GpaMapper(domainOf, host.tracer);
  if (d.mapper === "per-vm-iova") out.perVm = new PerVmIovaMapper(domainOf, span, host.tracer);
  const mapper = out.identity ?? out.gpa ?? out.perVm;
  if (mapper !== undefined) g.parent!.setGuestPageMapper(mapper);
}

/** Frames left free above the placement for the VMs' own pages (1 GiB). */
const RESERVE_FOR_GUESTS = 2 ** 30 / PAGE_SIZE;

/**
 * Uses host RAM up to the lowest IOVA the host graphics driver has mapped (4 GiB - 1 MiB without an IOMMU), so the
 * guest pages pinned next sit at HPAs that are also host IOVAs (module comment); nothing on a host whose RAM ends
 * below that (less 1 GiB left for the VMs). Returns the frame the next fresh allocation gets.
 */
export function placeHostMemory(system: System): number {
  const host = system.host;
  const g = mediated(system);
  let target = (4 * 2 ** 30 - 2 ** 20) / PAGE_SIZE;
  if (host.iommu.enabled) {
    const cookie = host.iommu.domainOf(g.gpu.bdf).cookie;
    if (cookie instanceof IovaDomain) {
      const msiLo = MSI_WINDOW_START / PAGE_SIZE;
      const msiHi = Math.floor(MSI_WINDOW_END / PAGE_SIZE);
      const lows = cookie
        .ranges()
        .filter((r) => !(r.pfnLo >= msiLo && r.pfnHi <= msiHi))
        .map((r) => r.pfnLo);
      if (lows.length > 0) target = Math.min(...lows);
    }
  }
  const pm = host.physmem;
  // A host whose RAM ends below its IOVAs (or leaves the guests too little above them) has no HPA that is also an
  // IOVA to place guest pages on: nothing to do.
  if (target + RESERVE_FOR_GUESTS > pm.totalFrames) return pm.allocationCursor().fresh;
  const before = pm.allocationCursor().fresh;
  // Frames freed earlier are handed out first: take them (the host keeps them), then the fresh ones below target.
  for (let n = pm.allocationCursor().reusable; n > 0; n--) pm.allocFrame(0);
  const fresh = pm.allocationCursor().fresh;
  if (target > fresh) pm.allocContiguous(target - fresh, 0);
  if (host.tracer.enabled) {
    host.tracer.emit("compare.placement", { fromPfn: before, toPfn: target, frames: Math.max(0, target - fresh) });
  }
  return target;
}

function measure(
  d: Design,
  run: ScenarioRun,
  inst: Installed,
  before: CostCounts | undefined,
  model: CostModel,
): DesignResult {
  const report = buildReport(run);
  const host = run.system.host;
  const g = mediated(run.system);
  const st = host.iommu.stats();
  const atc = st.atcs.find((a) => a.bdf === g.gpu.bdf);
  const meterCounts = before !== undefined ? host.costs.since(before) : host.costs.snapshot();
  const counts: CostCounts = {
    ...meterCounts,
    iotlbHits: st.iotlb.hits,
    atcHits: atc?.hits ?? 0,
    atsTranslationRequests: st.atsTranslationRequests,
  };
  const priced = price(counts, model);
  const pieces = report.isolation.pieces;
  const per = (n: number) => (pieces === 0 ? 0 : n / pieces);
  const iommuTranslations = st.enabled ? st.translations - st.atsHits : 0;
  const clashes = [...(inst.identity?.clashes ?? []), ...(inst.gpa?.clashes ?? [])];
  const trust = probeTrust(run, inst.placedAt);
  const violations = report.isolation.violations;
  const engineNs = report.gpus.reduce((n, x) => n + x.busyNs, 0);
  const error = report.error ?? undefined;
  return {
    design: d,
    refused: undefined,
    error,
    failures: report.failures,
    verdict: {
      isolated: violations === 0 && clashes.length === 0 && error === undefined,
      violations,
      examples: [...new Set(report.isolation.samples.map(describeViolation))].slice(0, 3),
      clashes: clashes.length,
      clashExamples: clashes.slice(0, 5),
      trust,
      summary: summarize(d, violations, clashes, trust, error),
    },
    dma: { pieces, bytes: report.isolation.bytes },
    translations: {
      gpuMmuPerDma: pieces === 0 ? 0 : 1,
      iommuPerDma: per(iommuTranslations),
      preTranslatedPerDma: per(st.atsHits),
    },
    iotlbHitRate: st.enabled ? rate(st.iotlb.hits, st.iotlb.misses) : Number.NaN,
    atcHitRate: atc !== undefined ? rate(atc.hits, atc.misses) : Number.NaN,
    iovaSpaceBytes: iovaSpace(run, inst),
    pinnedPagesAtEnd: host.physmem.stats().pinnedFrames,
    counts,
    priced,
    chainNs: priced.totalNs,
    engineNs,
    modelledNs: priced.totalNs + engineNs,
  };
}

function rate(hits: number, misses: number): number {
  return hits + misses === 0 ? Number.NaN : hits / (hits + misses);
}

function iovaSpace(run: ScenarioRun, inst: Installed): number {
  const host = run.system.host;
  if (!host.iommu.enabled) return 0;
  const cookie = host.iommu.domainOf(mediated(run.system).gpu.bdf).cookie;
  let pages = 0;
  if (cookie instanceof IovaDomain) {
    const msiLo = MSI_WINDOW_START / PAGE_SIZE;
    const msiHi = Math.floor(MSI_WINDOW_END / PAGE_SIZE);
    for (const r of cookie.ranges()) if (!(r.pfnLo >= msiLo && r.pfnHi <= msiHi)) pages += r.pfnHi - r.pfnLo + 1;
  }
  pages += inst.identity?.mappedPages ?? 0;
  pages += inst.gpa?.mappedPages ?? 0;
  return pages * PAGE_SIZE;
}

/**
 * The trust boundary: the GPU sends a write marked as translated to a frame of another VM's. With no IOMMU it reaches
 * memory (nothing checks any address); through an IOMMU with ATS enabled for the GPU it passes unchecked; with ATS
 * disabled it is blocked. For the ATS design the IOMMU's control is then turned off and the probe repeated.
 */
function probeTrust(run: ScenarioRun, from: number): TrustProbe | undefined {
  const host = run.system.host;
  const g = mediated(run.system);
  const bdf = g.gpu.bdf;
  const target = victimFrame(run, from);
  if (target === undefined) return undefined;
  const hpa = target.pfn * PAGE_SIZE;
  const iommu = host.iommu;
  const reached = (r: number): "reached" | "blocked" => (r >= 0 ? "reached" : "blocked");
  const first = reached(iommu.translatedRequest(bdf, hpa as Hpa, IOMMU_WRITE));
  let after: "reached" | "blocked" | undefined;
  if (iommu.enabled) {
    const wasOn = iommu.device(bdf).atc !== undefined;
    iommu.setAtsEnabled(bdf, false);
    after = reached(iommu.translatedRequest(bdf, hpa as Hpa, IOMMU_WRITE));
    iommu.setAtsEnabled(bdf, wasOn);
  }
  return {
    target: `${target.vm}'s frame ${`0x${target.pfn.toString(16)}`}`,
    hpa,
    translatedWrite: first,
    afterAtsDisabled: after,
    reachableBytes: first === "reached" ? run.scenario.host.memoryBytes : 0,
  };
}

/** A pinned frame of the last running VM with a vGPU (the first VM is usually the one a probe would come from). */
function victimFrame(run: ScenarioRun, from: number): { vm: string; pfn: Pfn } | undefined {
  const pm = run.system.host.physmem;
  const vms = [...run.vms.values()].filter((v) => v.state === "running" && v.vgpu !== undefined && v.pid > 0);
  const victim = vms[vms.length - 1];
  if (victim === undefined) return undefined;
  const end = Math.min(pm.totalFrames, from + (1 << 20));
  for (let f = from; f < end; f++) {
    if (pm.isAllocated(f as Pfn) && pm.owner(f as Pfn) === victim.pid && pm.pinCount(f as Pfn) > 0) {
      return { vm: victim.spec.name, pfn: f as Pfn };
    }
  }
  return undefined;
}

function summarize(
  d: Design,
  violations: number,
  clashes: readonly AddressClash[],
  trust: TrustProbe | undefined,
  error: RunError | undefined,
): string {
  const parts: string[] = [];
  if (d.id === "identity" && clashes.length > 0) {
    const c = clashes[0]!;
    parts.push(
      `collision: ${hex(c.address)} is vgpu${c.vgpu}'s guest page HPA and a host driver IOVA (-> frame ` +
        `${hex(c.reachesPfn)}); ${clashes.length} such address(es)`,
    );
  }
  if (d.id === "gpa" && clashes.length > 0) {
    const c = clashes[0]!;
    parts.push(
      `conflict: GPA ${hex(c.address)} of vgpu${c.vgpu} is already ${c.holder === "vgpu" ? `vgpu${c.holderVgpu}'s` : "the host's"} ` +
        `(-> frame ${hex(c.reachesPfn)}); ${clashes.length} such GPA(s)`,
    );
  }
  parts.push(`${violations} violation(s)`);
  if (error !== undefined) parts.push(`run stopped: ${error.errno} at ${error.action}`);
  if (d.id === "ats" && trust !== undefined) {
    parts.push(
      `trust: a translated write to ${trust.target} ${trust.translatedWrite === "reached" ? "passes unchecked" : "is blocked"}` +
        (trust.afterAtsDisabled !== undefined ? `, ${trust.afterAtsDisabled} once ATS is disabled` : ""),
    );
  }
  if (d.id === "no-iommu" && trust !== undefined) parts.push("nothing but the mediator checks an address");
  return parts.join("; ");
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function refusedResult(d: Design, why: string): DesignResult {
  return {
    design: d,
    refused: why,
    error: undefined,
    failures: [],
    verdict: {
      isolated: false,
      violations: 0,
      examples: [],
      clashes: 0,
      clashExamples: [],
      trust: undefined,
      summary: `refused: ${why}`,
    },
    dma: { pieces: 0, bytes: 0 },
    translations: { gpuMmuPerDma: 0, iommuPerDma: 0, preTranslatedPerDma: 0 },
    iotlbHitRate: Number.NaN,
    atcHitRate: Number.NaN,
    iovaSpaceBytes: 0,
    pinnedPagesAtEnd: 0,
    counts: new CostMeter().snapshot(),
    priced: { totalNs: 0, items: [] },
    chainNs: 0,
    engineNs: 0,
    modelledNs: 0,
  };
}
