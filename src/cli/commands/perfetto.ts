/**
 * `--perfetto FILE` of `vgpu run`, `vgpu demo` and `vgpu compare`: collects a run's trace records and writes them as
 * Chrome Trace Event JSON (src/trace-export), which ui.perfetto.dev and chrome://tracing open. Each run (each design
 * of a comparison) is a process in the file. Flow arrows follow the explained access of each `explain` step
 * (guest GTT write -> pin -> dma_map_page -> shadow entry -> engine DMA -> IOMMU translation; when no engine touched
 * that page during the run the last two stages are the explanation's own resolution, at the explain step) and the
 * first access of the run whose six stages are all in the trace.
 */
import { writeFileSync } from "node:fs";
import { resolve } from "node:path";
import type { TraceRecord } from "../../core/index.ts";
import type { ScenarioRun } from "../../scenario/index.ts";
import {
  type ChainStage,
  type ChromeTraceWriter,
  findAccessChain,
  firstCompleteChain,
  type TraceInput,
} from "../../trace-export/index.ts";
import type { CliIo } from "./common.ts";

/** Records not worth keeping for the export (page faults of guest RAM, memory accounting): the biggest volume. */
const DROP = new Set(["mm.fault", "mm.gup", "mm.locked_vm", "vfio.type1.locked_vm"]);

/** Collects one run's records (from `--trace`-style JSON lines or from a tracer). */
export class PerfettoCollector {
  readonly records: TraceInput[] = [];

  /** For ScenarioRunOptions.traceLine. */
  readonly line = (l: string): void => {
    if (l.includes('"name":"mm.fault"')) return;
    const r = JSON.parse(l) as TraceInput;
    if (!DROP.has(r.name)) this.records.push(r);
  };

  /** For Tracer.subscribe. */
  readonly record = (r: TraceRecord): void => {
    if (!DROP.has(r.name)) this.records.push(r);
  };
}

/** Adds one run to `w`: its records, its steps, and the chains of its explained accesses. */
export function addRun(w: ChromeTraceWriter, name: string, c: PerfettoCollector, run?: ScenarioRun): number {
  w.beginProcess(name);
  for (const r of c.records) w.add(r);
  let chains = 0;
  if (run !== undefined) {
    w.addSteps(run.steps);
    const seen = new Set<string>();
    for (const e of run.explanations) {
      const key = `${e.vm}/${e.gma}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const v = run.vms.get(e.vm);
      const vgpu = v?.vgpu?.id;
      if (e.mode !== "vgpu" || vgpu === undefined) continue;
      const gpa = e.layers[0]?.value ?? -1;
      const shadow = e.layers.find((l) => /physical GGTT|shadow/i.test(l.layer))?.value ?? -1;
      const hpa = e.layers[e.layers.length - 1]?.value ?? -1;
      if (gpa < 0 || shadow < 0) continue;
      const found = findAccessChain(c.records, { vgpu, gfn: Math.floor(gpa / 4096), dmaAddr: shadow, gma: e.gma });
      const stages: ChainStage[] = found.map((s) => ({ label: s.label, seq: s.seq }));
      const at = run.steps.find((s) => s.action === "explain" && s.vm === e.vm)?.atNs ?? 0;
      const hex = (n: number) => `0x${n.toString(16)}`;
      if (stages.length === 4) {
        const how = { resolvedBy: "vgpu explain (no engine touched this page during the run)" };
        stages.push({
          label: "engine DMA at the IOVA",
          at,
          track: "GPU engines (explain)",
          args: { ...how, gma: hex(e.gma), dmaAddr: hex(shadow) },
        });
        stages.push({
          label: "IOMMU translation (IOVA -> HPA)",
          at: at + 1,
          track: "IOMMU",
          args: { ...how, iova: hex(shadow), hpa: hex(hpa) },
        });
      }
      if (stages.length >= 2) {
        w.addChain(`${e.vm} GMA ${hex(e.gma)} (explained)`, stages);
        chains++;
      }
    }
  }
  const full = firstCompleteChain(c.records);
  if (full !== undefined) {
    w.addChain(
      `vgpu${full.key.vgpu} gfn 0x${full.key.gfn.toString(16)} (first complete access)`,
      full.stages.map((s) => ({ label: s.label, seq: s.seq })),
    );
    chains++;
  }
  return chains;
}

/** Writes the file; returns its size in bytes. */
export function writePerfetto(path: string, io: CliIo, w: ChromeTraceWriter): number {
  const text = JSON.stringify(w.toJSON());
  writeFileSync(resolve(io.cwd, path), text);
  return text.length;
}
