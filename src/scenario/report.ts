/**
 * Reports of a scenario run: `buildReport` gathers the figures (JSON for tools: `vgpu run --json`), `formatReport`
 * lays them out for people (`vgpu run`, `vgpu demo`).
 *
 * Per VM: state, RAM, locked memory (locked_vm), pinned pages (pins taken through its address space), IOVAs its
 * devices use, workloads and attacks, violations. Per vGPU: type and weight, pages pinned (its gfn cache), IOVAs it
 * DMA-mapped, shadow GTT entries, scratch fallbacks, translation-cache hit rate and faults of its DMA (the isolation
 * checker's attribution), rejected commands, engine busy and scheduled time. Per whole-GPU assignment: the same where
 * it applies (its IOVAs are the VM's pinned RAM: type1 maps it all). Per GPU: the DMA API's live mappings (the host
 * driver's own plus the vGPUs'), engine busy time, and fairness (engine sharing while vGPUs contended: Jain's index of
 * busy share / weight share). Then the isolation summary (DMA pieces and bytes checked, violations: must be 0), the
 * translation chains explained, and the teardown check.
 *
 * Numbers are as the model holds them at the time of the call: build the report before `teardown()` to see live
 * figures (the runner keeps a run alive with `keepAlive`), after it to see that nothing is left.
 */
import { PAGE_SIZE } from "../core/index.ts";
import type { AttackOutcome, WorkloadResult } from "../guest/index.ts";
import { type ContextRun, describeViolation, type GuestContextStats, type Violation } from "./checker.ts";
import { type Explanation, formatExplanation } from "./explain.ts";
import type { FairnessWindow } from "./fairness.ts";
import { rejectedContexts } from "./metrics.ts";
import { type RunError, ScenarioRun, type ScenarioRunOptions, type StepRecord } from "./runner.ts";
import type { TeardownResult } from "./teardown.ts";
import { formatPercent, formatSize, formatStamp, formatTime } from "./units.ts";

export interface VmReport {
  readonly name: string;
  readonly pid: number;
  readonly state: string;
  readonly memoryBytes: number;
  readonly memlockBytes: number | "unlimited";
  readonly lockedBytes: number;
  readonly pinnedPages: number;
  readonly residentBytes: number;
  /** IOVAs in use for its GPU device: the vGPU's DMA mappings, or (whole GPU) its type1-mapped pinned pages. */
  readonly iovas: number;
  readonly devices: readonly string[];
  readonly workloads: { readonly run: number; readonly verified: number; readonly bytes: number };
  readonly attacks: Readonly<Record<AttackOutcome, number>>;
  readonly violations: number;
}

export interface DeviceReport {
  readonly vm: string;
  readonly gpu: string;
  /** "vgpu" or "whole GPU". */
  readonly kind: "vgpu" | "gpu";
  readonly vgpu: number | undefined;
  readonly uuid: string | undefined;
  readonly type: string;
  readonly weight: number | undefined;
  readonly pinnedPages: number;
  readonly iovas: number;
  readonly shadowEntries: number | undefined;
  readonly scratchFallbacks: number | undefined;
  readonly rejectedCommands: number | undefined;
  /** Guest contexts the vendor driver refused (ELSP writes and workloads, every stage); undefined for a whole GPU. */
  readonly rejectedContexts: number | undefined;
  readonly tlbHits: number;
  readonly tlbMisses: number;
  /** hits / (hits + misses), NaN with no lookups. */
  readonly tlbHitRate: number;
  readonly gttFaults: number;
  readonly iommuFaults: number;
  readonly busyNs: number;
  readonly scheduledNs: number | undefined;
  readonly dmaBytes: number;
  readonly violations: number;
}

export interface GpuReport {
  readonly name: string;
  readonly bdf: string;
  readonly driver: "i915" | "vfio-pci";
  readonly apertureBytes: number;
  readonly ats: boolean;
  /** Live mappings of the GPU's DMA API (host driver buffers + vGPU guest pages). */
  readonly dmaMappings: number;
  readonly dmaMappedBytes: number;
  readonly busyNs: number;
  readonly tlbHitRate: number;
  readonly faults: number;
  readonly violations: number;
  readonly fairness: readonly FairnessWindow[];
  /** Guest contexts (execlists) whose DMA the isolation checker attributed, in order of first DMA. */
  readonly contexts: readonly GuestContextStats[];
  /** Per fairness window and engine: the order in which the scheduler ran the VMs' contexts. */
  readonly interleaving: readonly Interleaving[];
}

/** The contexts one engine ran during a fairness window, consecutive runs of one context merged. */
export interface Interleaving {
  readonly engine: string;
  readonly startNs: number;
  readonly endNs: number;
  /** Context switches between different VMs' contexts in the window. */
  readonly switches: number;
  readonly sequence: readonly { readonly vm: string; readonly label: string }[];
}

/** Context runs of `runs` on each engine inside [start, end), merged, for engines where several VMs ran. */
function interleavings(runs: readonly ContextRun[], startNs: number, endNs: number): Interleaving[] {
  const byEngine = new Map<string, { vm: string; label: string }[]>();
  for (const r of runs) {
    if (r.atNs < startNs || r.atNs >= endNs) continue;
    let seq = byEngine.get(r.engine);
    if (seq === undefined) {
      seq = [];
      byEngine.set(r.engine, seq);
    }
    const last = seq[seq.length - 1];
    if (last === undefined || last.vm !== r.vm || last.label !== r.label) seq.push({ vm: r.vm, label: r.label });
  }
  const out: Interleaving[] = [];
  for (const [engine, sequence] of byEngine) {
    if (new Set(sequence.map((x) => x.vm)).size < 2) continue;
    out.push({ engine, startNs, endNs, switches: sequence.length - 1, sequence });
  }
  return out;
}

export interface ScenarioReport {
  readonly scenario: string;
  readonly source: string | null;
  readonly seed: number;
  readonly ok: boolean;
  readonly error: RunError | null;
  readonly failures: readonly string[];
  readonly timeNs: number;
  readonly host: {
    readonly memoryBytes: number;
    readonly iommu: boolean;
    readonly allocatedFrames: number;
    readonly pinnedFrames: number;
  };
  readonly gpus: readonly GpuReport[];
  readonly vms: readonly VmReport[];
  readonly devices: readonly DeviceReport[];
  readonly isolation: {
    readonly pieces: number;
    readonly bytes: number;
    readonly violations: number;
    readonly samples: readonly Violation[];
  };
  readonly steps: readonly Omit<StepRecord, "detail">[];
  readonly explanations: readonly Explanation[];
  readonly teardown: TeardownResult | null;
}

function rate(hits: number, misses: number): number {
  return hits + misses === 0 ? Number.NaN : hits / (hits + misses);
}

/** Gathers every figure of a run (see the module comment). */
export function buildReport(run: ScenarioRun): ScenarioReport {
  const sys = run.system as ScenarioRun["system"] | undefined;
  const checker = run.checker as ScenarioRun["checker"] | undefined;
  const devices: DeviceReport[] = [];
  const vms: VmReport[] = [];
  for (const v of run.vms.values()) {
    const mm = v.vmm?.process.mm;
    const mmStats = mm?.stats();
    const ctx = v.gpu !== undefined && checker !== undefined ? checker.stats(v.gpu.name, v.vgpu?.id) : undefined;
    const st = v.vgpu?.stats();
    const wholeIovas = v.gpu !== undefined && v.vgpu === undefined && v.state === "running" ? (mm?.lockedVm() ?? 0) : 0;
    const attacks: Record<AttackOutcome, number> = { rejected: 0, ignored: 0, executed: 0 };
    for (const a of v.attacks) attacks[a.outcome]++;
    const done: readonly WorkloadResult[] = v.workloads;
    vms.push({
      name: v.spec.name,
      pid: v.pid,
      state: v.state,
      memoryBytes: v.spec.memoryBytes,
      memlockBytes: Number.isFinite(v.spec.memlockBytes) ? v.spec.memlockBytes : "unlimited",
      lockedBytes: (mm?.lockedVm() ?? 0) * PAGE_SIZE,
      pinnedPages: mmStats?.pinnedPages ?? 0,
      residentBytes: (mmStats?.residentPages ?? 0) * PAGE_SIZE,
      iovas: st !== undefined ? st.iovasMapped : wholeIovas,
      devices: v.spec.devices.map((d) =>
        d.kind === "vgpu"
          ? `vgpu ${d.type} on ${d.gpu}`
          : d.kind === "gpu"
            ? `whole ${d.gpu}`
            : `${d.type ?? "mtty-1"}`,
      ),
      workloads: {
        run: done.length,
        verified: done.filter((w) => w.ok).length,
        bytes: done.reduce((n, w) => n + w.bytes, 0),
      },
      attacks,
      violations: ctx?.violations ?? 0,
    });
    if (v.gpu === undefined || ctx === undefined) continue;
    const busyWhole = (() => {
      if (v.vgpu !== undefined) return 0;
      const e = v.gpu.gpu.stats().engines;
      return e.rcs.busyNs + e.bcs.busyNs;
    })();
    devices.push({
      vm: v.spec.name,
      gpu: v.gpu.name,
      kind: v.vgpu !== undefined ? "vgpu" : "gpu",
      vgpu: v.vgpu?.id,
      uuid: v.vgpu?.name,
      type: v.vgpu?.type.id ?? "whole GPU",
      weight: v.vgpu?.type.weight,
      pinnedPages: st !== undefined ? st.pinnedPages : (mmStats?.pinnedPages ?? 0),
      iovas: st !== undefined ? st.iovasMapped : wholeIovas,
      shadowEntries: st?.shadowEntries,
      scratchFallbacks: st?.scratchFallbacks,
      rejectedCommands: st?.rejectedCommands,
      rejectedContexts: st !== undefined ? rejectedContexts(st) : undefined,
      tlbHits: ctx.tlbHits,
      tlbMisses: ctx.tlbMisses,
      tlbHitRate: rate(ctx.tlbHits, ctx.tlbMisses),
      gttFaults: ctx.gttFaults,
      iommuFaults: ctx.iommuFaults,
      busyNs: st !== undefined ? st.busyNs : busyWhole,
      scheduledNs: st?.scheduledNs,
      dmaBytes: ctx.bytes,
      violations: ctx.violations,
    });
  }
  const gpus: GpuReport[] = [];
  for (const g of sys?.gpus ?? []) {
    const dma = sys!.host.dmaApi(g.gpu.bdf);
    const gs = checker?.gpuStats(g.name);
    const e = g.gpu.stats().engines;
    gpus.push({
      name: g.name,
      bdf: g.bdf,
      driver: g.driver,
      apertureBytes: g.gpu.apertureSize,
      ats: sys!.host.iommu.hasDevice(g.gpu.bdf) && sys!.host.iommu.device(g.gpu.bdf).atc !== undefined,
      dmaMappings: dma.mappings(),
      dmaMappedBytes: dma.mappedBytes(),
      busyNs: e.rcs.busyNs + e.bcs.busyNs,
      tlbHitRate: gs !== undefined ? rate(gs.tlbHits, gs.tlbMisses) : Number.NaN,
      faults: gs !== undefined ? gs.gttFaults + gs.iommuFaults : 0,
      violations: gs?.violations ?? 0,
      fairness: run.fairness.filter((f) => f.gpu === g.name),
      contexts: checker?.guestContexts(g.name) ?? [],
      interleaving:
        checker === undefined
          ? []
          : run.fairness
              .filter((f) => f.gpu === g.name)
              .flatMap((f) => interleavings(checker.contextRuns(g.name), f.startNs, f.endNs)),
    });
  }
  const mem = sys?.host.physmem.stats();
  const checked = checker?.checked ?? { pieces: 0, bytes: 0 };
  return {
    scenario: run.scenario.name,
    source: run.scenario.source ?? null,
    seed: run.seed,
    ok: run.ok,
    error: run.error ?? null,
    failures: run.failures,
    timeNs: run.timeNs,
    host: {
      memoryBytes: run.scenario.host.memoryBytes,
      iommu: run.scenario.host.iommu,
      allocatedFrames: mem?.allocatedFrames ?? 0,
      pinnedFrames: mem?.pinnedFrames ?? 0,
    },
    gpus,
    vms,
    devices,
    isolation: {
      pieces: checked.pieces,
      bytes: checked.bytes,
      violations: checker?.violationCount ?? 0,
      samples: checker?.violations() ?? [],
    },
    steps: run.steps.map(({ detail: _detail, ...s }) => s),
    explanations: run.explanations,
    teardown: run.teardownResult ?? null,
  };
}

/** The report as JSON text (NaN rates become null). */
export function reportJson(r: ScenarioReport): string {
  return JSON.stringify(r, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2);
}

/** Left-aligned columns; numbers (cells that start with a digit) right-aligned. */
function table(header: readonly string[], rows: readonly (readonly string[])[], indent = "  "): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) =>
    indent +
    cells
      .map((c, i) => (/^[0-9-]/.test(c) && i > 0 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

const n = (x: number | undefined): string => (x === undefined ? "-" : x.toLocaleString("en-US"));

export interface FormatOptions {
  /** Include every step line (default true). */
  readonly steps?: boolean;
}

/** The report for people, top to bottom: what ran, the chain, the tables, isolation, teardown. */
export function formatReport(r: ScenarioReport, opts: FormatOptions = {}): string[] {
  const out: string[] = [];
  const verdict = r.ok ? "ok" : r.error !== null ? `FAILED (${r.error.errno})` : "FAILED";
  out.push(`scenario ${r.scenario}${r.source !== null ? ` (${r.source})` : ""}, seed ${r.seed}: ${verdict}`);
  const gpuText = r.gpus.map(
    (g) =>
      `${g.name} ${g.bdf} ${g.driver === "i915" ? "i915 + GVT-g vGPUs" : "bound to vfio-pci"}, aperture ${formatSize(g.apertureBytes)}${g.ats ? ", ATS" : ""}`,
  );
  out.push(
    `host: ${formatSize(r.host.memoryBytes)} RAM, IOMMU ${r.host.iommu ? "on" : "off"}` +
      (gpuText.length > 0 ? `; ${gpuText.join("; ")}` : ""),
  );
  if (opts.steps ?? true) {
    out.push("");
    out.push("steps (virtual time)");
    for (const s of r.steps) {
      const mark = s.ok ? " " : "!";
      out.push(`${mark} ${formatStamp(s.atNs)}  ${s.action.padEnd(8)} ${s.summary}`);
      if (s.note !== undefined) out.push(`  ${" ".repeat(14)}  ${"".padEnd(8)} (${s.note})`);
    }
  }
  for (const e of r.explanations) {
    out.push("");
    out.push(...formatExplanation(e));
  }
  if (r.vms.length > 0) {
    out.push("");
    out.push("VMs");
    out.push(
      ...table(
        [
          "vm",
          "state",
          "RAM",
          "memlock",
          "locked",
          "pinned pages",
          "IOVAs",
          "workloads ok",
          "attacks r/i/x",
          "violations",
        ],
        r.vms.map((v) => [
          v.name,
          v.state,
          formatSize(v.memoryBytes),
          v.memlockBytes === "unlimited" ? "unlimited" : formatSize(v.memlockBytes),
          formatSize(v.lockedBytes),
          n(v.pinnedPages),
          n(v.iovas),
          `${v.workloads.verified}/${v.workloads.run}`,
          `${v.attacks.rejected}/${v.attacks.ignored}/${v.attacks.executed}`,
          n(v.violations),
        ]),
      ),
    );
  }
  if (r.devices.length > 0) {
    out.push("");
    out.push("GPU devices (vGPUs and whole GPUs)");
    out.push(
      ...table(
        [
          "vm",
          "device",
          "type",
          "pinned",
          "IOVAs",
          "shadow GTT",
          "TLB hit",
          "faults",
          "rejected cmd/ctx",
          "engine busy",
          "DMA",
          "violations",
        ],
        r.devices.map((d) => [
          d.vm,
          d.kind === "vgpu" ? `vgpu${d.vgpu} on ${d.gpu}` : `${d.gpu} (whole)`,
          d.weight !== undefined ? `${d.type} w${d.weight}` : d.type,
          n(d.pinnedPages),
          n(d.iovas),
          n(d.shadowEntries),
          formatPercent(d.tlbHitRate),
          n(d.gttFaults + d.iommuFaults),
          d.rejectedCommands === undefined ? "-" : `${n(d.rejectedCommands)}/${n(d.rejectedContexts)}`,
          formatTime(d.busyNs),
          formatSize(d.dmaBytes),
          n(d.violations),
        ]),
      ),
    );
  }
  if (r.gpus.length > 0) {
    out.push("");
    out.push("GPUs");
    out.push(
      ...table(
        ["gpu", "driver", "DMA mappings (IOVAs)", "mapped", "engine busy", "TLB hit", "faults", "violations"],
        r.gpus.map((g) => [
          g.name,
          g.driver === "i915" ? "i915 + GVT-g" : "vfio-pci",
          n(g.dmaMappings),
          formatSize(g.dmaMappedBytes),
          formatTime(g.busyNs),
          formatPercent(g.tlbHitRate),
          n(g.faults),
          n(g.violations),
        ]),
      ),
    );
  }
  for (const g of r.gpus) {
    for (const f of g.fairness) {
      out.push("");
      out.push(
        `${g.name} fairness while ${f.vgpus.map((v) => v.vm).join(", ")} all had work ` +
          `[${formatTime(f.startNs)} .. ${formatTime(f.endNs)}]: Jain's index ${f.jain.toFixed(4)} (1 = shares as weights)`,
      );
      out.push(
        ...table(
          ["vm", "weight", "engine busy", "share", "by weight"],
          f.vgpus.map((v) => [
            v.vm,
            String(v.weight),
            formatTime(v.busyNs),
            formatPercent(v.share),
            formatPercent(v.expectedShare),
          ]),
          "    ",
        ),
      );
    }
    for (const i of g.interleaving) {
      const shown = i.sequence.slice(0, 9).map((x) => x.vm);
      out.push(
        `    ${i.engine}: the scheduler interleaved the VMs' contexts, ${i.switches} switch(es): ${shown.join(" -> ")}` +
          (i.sequence.length > shown.length ? " -> ..." : ""),
      );
    }
  }
  for (const g of r.gpus) {
    if (g.contexts.length === 0) continue;
    out.push("");
    out.push(`${g.name} guest contexts (execlists: DMA of each, PPGTT walks included, attributed by the checker)`);
    out.push(
      ...table(
        ["vm", "vGPU", "engine", "context", "DMA pieces", "DMA", "violations"],
        g.contexts.map((c) => [
          c.vm,
          `vgpu${c.vgpu}`,
          c.engine,
          c.label,
          n(c.pieces),
          formatSize(c.bytes),
          n(c.violations),
        ]),
      ),
    );
  }
  out.push("");
  const iso = r.isolation;
  out.push(
    `isolation: ${n(iso.pieces)} DMA page pieces (${formatSize(iso.bytes)}) checked against the invariant: ` +
      `${n(iso.violations)} violation(s)`,
  );
  for (const v of iso.samples.slice(0, 10)) out.push(`  ! ${formatStamp(v.timeNs)} ${describeViolation(v)}`);
  if (iso.violations > iso.samples.slice(0, 10).length) {
    out.push(`  ... ${n(iso.violations - Math.min(10, iso.samples.length))} more`);
  }
  if (r.error !== null) {
    out.push(
      `error at ${r.error.step < 0 ? r.error.action : `step ${r.error.step} (${r.error.action})`}` +
        `${r.error.vm !== undefined ? ` of ${r.error.vm}` : ""}: ${r.error.errno}: ${r.error.message}`,
    );
  }
  for (const f of r.failures) out.push(`failed: ${f}`);
  if (r.teardown !== null) {
    out.push(
      r.teardown.clean
        ? "teardown: clean (no VMM process, vfio container, pinned frame or guest DMA mapping left)"
        : `teardown: NOT clean: ${r.teardown.problems.join("; ")}`,
    );
  }
  return out;
}

export interface ReportedRun {
  readonly run: ScenarioRun;
  /** Figures at the end of the steps (live), with the teardown's result. */
  readonly report: ScenarioReport;
}

/**
 * Runs a scenario, reports its live figures at the end of the steps, then tears the host down (whatever happened:
 * nothing is left running) and adds the teardown's verdict. `beforeTeardown` sees the live run (`vgpu explain`).
 */
export function runWithReport(
  scenario: ScenarioRun["scenario"],
  opts: Omit<ScenarioRunOptions, "keepAlive"> = {},
  beforeTeardown?: (run: ScenarioRun) => void,
): ReportedRun {
  const run = new ScenarioRun(scenario, { ...opts, keepAlive: true });
  let live: ScenarioReport | undefined;
  try {
    run.run();
    beforeTeardown?.(run);
    live = buildReport(run);
  } finally {
    run.teardown();
  }
  return { run, report: { ...live, teardown: run.teardownResult ?? null, ok: run.ok } };
}
