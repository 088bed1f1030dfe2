/**
 * How the vGPU scheduler shared a GPU's engines while several vGPUs all had work: a fairness window per GPU, opened
 * when a wait starts with at least two of its vGPUs' VMs having workloads in flight, and closed as soon as one of them
 * has finished all its work (from then on the others no longer contend), or when the wait ends.
 *
 * Over the window each vGPU's share is its engine busy time over the total, its expected share its weight over the
 * total weight, and the window's figure is Jain's index of share / expected share (1 = exactly the weights' shares,
 * 1/n = one vGPU had it all). A closed window is a `scenario.fairness` trace event and a `FairnessWindow` record.
 *
 * What it does not do: let time pass (the wait does), judge the result (a check step or a reader does), measure
 * whole GPUs assigned to one VM (nothing to share) or mtty.
 *
 * Invariant: busy times are read from the vGPUs' own accounting (`Vgpu.stats().busyNs`) at open and at close only.
 */
import { defineTraceEvents, type Tracer } from "../core/index.ts";
import type { VmRun } from "./vm-run.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "scenario.fairness": { gpu: string; vms: readonly string[]; shares: readonly number[]; jain: number };
  }
}
defineTraceEvents("scenario", {
  "scenario.fairness": "{gpu}: engine shares of {vms} while all had work: {shares} (Jain {jain})",
});

/** Engine sharing while several vGPUs of one GPU all had work (a wait step). */
export interface FairnessWindow {
  readonly gpu: string;
  readonly startNs: number;
  readonly endNs: number;
  readonly vgpus: readonly {
    readonly vm: string;
    readonly vgpu: number;
    readonly weight: number;
    readonly busyNs: number;
    readonly share: number;
    readonly expectedShare: number;
  }[];
  /** Jain's index of share / expected share: 1 = exactly the weights' shares. */
  readonly jain: number;
}

/** Jain's fairness index of `xs`: (sum x)^2 / (n * sum x^2); 1 for all equal (and for all zero). */
export function jainIndex(xs: readonly number[]): number {
  let s = 0;
  let s2 = 0;
  for (const x of xs) {
    s += x;
    s2 += x * x;
  }
  return s2 === 0 ? 1 : (s * s) / (xs.length * s2);
}

/** The fairness windows of one wait (see the module comment). */
export class FairnessMeter {
  private readonly windows: [string, VmRun[]][];
  private readonly busy0 = new Map<VmRun, number>();
  private open: boolean;

  /** Opens a window per GPU on which at least two of `runs` (VMs with work in flight) have a vGPU. */
  constructor(
    private readonly runs: readonly VmRun[],
    private readonly startNs: number,
    private readonly tracer: Tracer,
  ) {
    const byGpu = new Map<string, VmRun[]>();
    for (const v of runs) {
      if (v.vgpu === undefined) continue;
      byGpu.set(v.gpu!.name, [...(byGpu.get(v.gpu!.name) ?? []), v]);
    }
    this.windows = [...byGpu.entries()].filter(([, vs]) => vs.length >= 2);
    for (const [, vs] of this.windows) for (const v of vs) this.busy0.set(v, v.vgpu!.stats().busyNs);
    this.open = this.windows.length > 0;
  }

  /**
   * After time passed: closes the windows once one contender has finished all its work. Polls `done()` in the order
   * of the runs given at open (a workload notes the time `done()` first sees it finished).
   */
  poll(nowNs: number): FairnessWindow[] {
    if (!this.open) return [];
    if (this.runs.some((v) => this.busy0.has(v) && v.pending.every((w) => w.done()))) return this.close(nowNs);
    return [];
  }

  /** Closes the windows still open (the wait is over). */
  close(nowNs: number): FairnessWindow[] {
    if (!this.open) return [];
    this.open = false;
    const out: FairnessWindow[] = [];
    for (const [gpu, vs] of this.windows) {
      const rows = vs.map((v) => ({
        v,
        busy: v.vgpu!.stats().busyNs - this.busy0.get(v)!,
        weight: v.vgpu!.type.weight,
      }));
      const totalBusy = rows.reduce((n, r) => n + r.busy, 0);
      const totalWeight = rows.reduce((n, r) => n + r.weight, 0);
      const vgpus = rows.map((r) => ({
        vm: r.v.spec.name,
        vgpu: r.v.vgpu!.id,
        weight: r.weight,
        busyNs: r.busy,
        share: totalBusy === 0 ? 0 : r.busy / totalBusy,
        expectedShare: r.weight / totalWeight,
      }));
      const jain = jainIndex(vgpus.map((x) => (x.expectedShare === 0 ? 0 : x.share / x.expectedShare)));
      out.push({ gpu, startNs: this.startNs, endNs: nowNs, vgpus, jain });
      if (this.tracer.enabled) {
        this.tracer.emit("scenario.fairness", {
          gpu,
          vms: vgpus.map((x) => x.vm),
          shares: vgpus.map((x) => Math.round(x.share * 1e4) / 1e4),
          jain: Math.round(jain * 1e4) / 1e4,
        });
      }
    }
    return out;
  }
}
