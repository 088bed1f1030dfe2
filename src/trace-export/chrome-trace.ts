/**
 * Chrome Trace Event JSON (the format Perfetto's UI and chrome://tracing open) from the model's trace records.
 *
 * Layout. One process per run (`vgpu compare` adds one per design), and in it one track (a thread) per VM, per vGPU,
 * per GPU engine, for the GPU scheduler, the IOMMU, the IOVA allocator, the DMA API, the guest drivers and the
 * scenario's steps; everything else on a "host kernel" track. What becomes what:
 * - slices: engine work (async slices: `gpu.exec` from its start, `i915.context.complete` ending at its record,
 *   each `busyNs` long), scheduler time slices (from one `vgpu.sched.slice` to the next, named after the vGPU that runs), and the
 *   scenario's steps (async slices from a step's start to its end, given by `addSteps`);
 * - instant events for pins, maps, unmaps, faults, rejected attacks and isolation violations (and every other record
 *   kept, so nothing the model traced is lost);
 * - counters: pinned pages, IOVA pages allocated, and the IOTLB hit rate (read at every IOTLB miss);
 * - flow arrows through the stages of one access (`addChain`), each stage a short slice on its own track.
 * Names follow Linux's GVT-g and IOMMU tracepoints and QEMU's trace-events where one exists (`NAMES`); the model's
 * own event name stays in the event's args.
 *
 * Time. Records carry virtual nanoseconds; trace timestamps are microseconds. The model does a great deal at one
 * virtual instant (a VM boots at t = 0), so records sharing an instant are spread 1 ns apart in trace order, which
 * keeps their order visible and the file's slices well nested.
 *
 * Not done: Perfetto's protobuf format (JSON is enough for both viewers), per-VM attribution of guest driver events
 * (the guest driver's records do not name their VM).
 */
import type { TraceRecord } from "../core/index.ts";

/** One event of the Trace Event Format. */
export interface ChromeTraceEvent {
  readonly name: string;
  readonly ph: "X" | "i" | "C" | "M" | "b" | "e" | "s" | "t" | "f";
  /** Microseconds. */
  readonly ts: number;
  readonly pid: number;
  readonly tid: number;
  readonly cat?: string;
  readonly dur?: number;
  readonly id?: number;
  /** Instant scope ("t": thread). */
  readonly s?: "t" | "p" | "g";
  /** Flow binding point ("e": the enclosing slice). */
  readonly bp?: "e";
  readonly args?: Readonly<Record<string, unknown>>;
}

export interface ChromeTrace {
  readonly traceEvents: readonly ChromeTraceEvent[];
  readonly displayTimeUnit: "ns";
  readonly otherData: Readonly<Record<string, string>>;
}

/** A trace record as `TraceRecord`, or as a parsed JSON line of `vgpu run --trace` ({seq, time, name, ...fields}). */
export type TraceInput =
  | TraceRecord
  | { readonly seq: number; readonly time: number; readonly name: string; readonly [field: string]: unknown };

/** A step of a scenario run (ScenarioRun.steps), for step slices. */
export interface StepSpan {
  readonly action: string;
  readonly vm: string | undefined;
  readonly atNs: number;
  readonly endNs: number;
  readonly ok: boolean;
  readonly summary: string;
}

/** One stage of an access's chain: the record it is, and its label. */
export interface ChainStage {
  readonly label: string;
  /** The record (by seq) that is this stage, or a stage made up by the caller (`at` and `track`). */
  readonly seq?: number;
  readonly at?: number;
  readonly track?: string;
  readonly args?: Readonly<Record<string, unknown>>;
}

/**
 * Display names after Linux tracepoints (GVT-g's gvt/trace.h, iommu's events/iommu.h, intel-iommu's qi_submit,
 * dma's dma_map_page, vfio's) and QEMU's trace-events (hw/vfio, hw/i386/intel_iommu), where one exists.
 */
export const NAMES: Readonly<Record<string, string>> = {
  "vgpu.ppgtt.spt_alloc": "spt_alloc",
  "vgpu.ppgtt.spt_change": "spt_change",
  "vgpu.ppgtt.spt_guest_change": "spt_guest_change",
  "vgpu.ppgtt.gma_translate": "gma_translate",
  "gpu.ppgtt.gma_translate": "gma_translate",
  "vgpu.gvt_command": "gvt_command",
  "vgpu.virq": "inject_msi",
  "vgpu.gtt.write": "ggtt_write (guest GTT entry)",
  "vgpu.gtt.shadow": "shadow GGTT entry",
  "vgpu.ppgtt.shadow_entry": "shadow PPGTT entry",
  "vgpu.gfn.pin": "gvt_dma_map_page",
  "vgpu.gfn.unpin": "gvt_dma_unmap_page",
  "vfio.type1.pin": "vfio_pin_pages",
  "vfio.type1.unpin": "vfio_unpin_pages",
  "vfio.type1.map": "vfio_dma_map",
  "vfio.region.read": "vfio_region_read",
  "vfio.region.write": "vfio_region_write",
  "mm.pin": "pin_user_pages",
  "mm.unpin": "unpin_user_pages",
  "dma.map": "dma_map_page",
  "dma.unmap": "dma_unmap_page",
  "dma.alloc_coherent": "dma_alloc_coherent",
  "dma.free_coherent": "dma_free_coherent",
  "iommu.map": "map",
  "iommu.unmap": "unmap",
  "iommu.fault": "io_page_fault",
  "iommu.iotlb.inval": "qi_submit (iotlb)",
  "ats.invalidate": "qi_submit (dev-iotlb)",
  "iommu.walk": "vtd_iotlb_page_update",
  "ats.translate": "ats translation request",
  "iommu.attach": "attach_device_to_domain",
  "iommu.detach": "detach_device_from_domain",
  "iova.alloc": "alloc_iova",
  "iova.free": "free_iova",
  "vfio-user.dma.map": "vfio_user_dma_map",
  "vfio-user.dma.unmap": "vfio_user_dma_unmap",
};

/** Records too many to draw one by one and of little use on a timeline (page faults of guest RAM, accounting). */
const SKIPPED = new Set(["mm.fault", "mm.gup", "mm.locked_vm", "vfio.type1.locked_vm", "gpu.ppgtt.gma_translate"]);

/** Instant categories: what a reader filters on. */
function categoryOf(name: string): string {
  if (/\.(pin|unpin)$/.test(name) || name === "vgpu.gfn.pin" || name === "vgpu.gfn.unpin") return "pin";
  if (/^(dma|iommu)\.(map|unmap|alloc_coherent|free_coherent)$/.test(name)) return "map";
  if (/fault/.test(name)) return "fault";
  if (/violation|clash/.test(name)) return "violation";
  if (/reject|ignored|failsafe/.test(name)) return "attack";
  if (name.startsWith("iova.")) return "iova";
  if (/inval/.test(name)) return "invalidate";
  return name.split(".")[0]!;
}

const FIELD = (r: TraceInput, k: string): unknown =>
  "fields" in r ? (r.fields as Readonly<Record<string, unknown>>)[k] : (r as Readonly<Record<string, unknown>>)[k];

function fieldsOf(r: TraceInput): Record<string, unknown> {
  if ("fields" in r) return { ...(r.fields as object) };
  const { seq: _s, time: _t, name: _n, ...rest } = r as Record<string, unknown>;
  return rest;
}

/** Builds one Chrome trace from any number of runs (`beginProcess` per run). */
export class ChromeTraceWriter {
  private readonly events: ChromeTraceEvent[] = [];
  private pid = 0;
  private tids = new Map<string, number>();
  /** Per process: the record time -> the ts it got, by seq. */
  private tsBySeq = new Map<number, number>();
  private trackBySeq = new Map<number, string>();
  private nameBySeq = new Map<number, string>();
  private lastTime = -1;
  private spread = 0;
  private vmOfPid = new Map<number, string>();
  private vmOfVgpu = new Map<number, string>();
  private pinned = 0;
  private iovaPages = 0;
  private sched: { tid: number; ts: number; name: string } | undefined;
  private nextFlow = 1;
  private nextAsync = 1;

  /** Starts the process the following records belong to (a run, or a design of a comparison). */
  beginProcess(name: string): void {
    this.closeScheduler();
    this.pid++;
    this.tids = new Map();
    this.tsBySeq = new Map();
    this.trackBySeq = new Map();
    this.nameBySeq = new Map();
    this.lastTime = -1;
    this.spread = 0;
    this.vmOfPid = new Map();
    this.vmOfVgpu = new Map();
    this.pinned = 0;
    this.iovaPages = 0;
    this.events.push({ name: "process_name", ph: "M", ts: 0, pid: this.pid, tid: 0, args: { name } });
    this.events.push({
      name: "process_sort_index",
      ph: "M",
      ts: 0,
      pid: this.pid,
      tid: 0,
      args: { sort_index: this.pid },
    });
  }

  /** Adds one record (in trace order). */
  add(r: TraceInput): void {
    if (this.pid === 0) this.beginProcess("vgpu");
    const name = r.name;
    const ts = this.stamp(r.time);
    this.tsBySeq.set(r.seq, ts);
    this.learn(r);
    const track = this.trackOf(r);
    this.trackBySeq.set(r.seq, track);
    this.nameBySeq.set(r.seq, name);
    if (SKIPPED.has(name)) return;
    const tid = this.tid(track);
    const args = { event: name, ...fieldsOf(r) };
    const display = NAMES[name] ?? name;
    switch (name) {
      case "gpu.exec": {
        // Async: a whole GPU runs work as its tail is written, so one engine's executions can overlap in time.
        const busy = Number(FIELD(r, "busyNs") ?? 0);
        this.async(display, "engine", ts, ts + Math.max(busy, 1) / 1000, tid, args);
        return;
      }
      case "i915.context.complete":
      case "vgpu.workload.complete": {
        const busy = Number(FIELD(r, "busyNs") ?? 0);
        const start = Math.max(0, r.time - busy) / 1000;
        this.async(display, "engine", start, ts, tid, args);
        return;
      }
      case "vgpu.sched.slice": {
        this.closeScheduler(ts);
        const to = Number(FIELD(r, "to"));
        const vm = this.vmOfVgpu.get(to);
        this.sched = { tid, ts, name: to === 0 ? "idle" : `vgpu${to}${vm !== undefined ? ` (${vm})` : ""}` };
        break;
      }
      case "mm.pin":
      case "mm.unpin": {
        this.pinned += (name === "mm.pin" ? 1 : -1) * Number(FIELD(r, "pages") ?? 0);
        this.counter("pinned pages", ts, { pages: this.pinned });
        break;
      }
      case "iova.alloc":
      case "iova.free": {
        this.iovaPages += (name === "iova.alloc" ? 1 : -1) * Number(FIELD(r, "pages") ?? 0);
        this.counter("IOVA space (pages)", ts, { pages: this.iovaPages });
        break;
      }
      case "iommu.walk": {
        const h = Number(FIELD(r, "iotlbHits"));
        const m = Number(FIELD(r, "iotlbMisses"));
        if (h + m > 0) this.counter("IOTLB hit rate", ts, { percent: (100 * h) / (h + m) });
        break;
      }
    }
    this.events.push({ name: display, cat: categoryOf(name), ph: "i", s: "t", ts, pid: this.pid, tid, args });
  }

  /** Slices for a run's steps (ScenarioRun.steps), on their VM's track or the scenario's. */
  addSteps(steps: readonly StepSpan[]): void {
    for (const s of steps) {
      const tid = this.tid(s.vm !== undefined ? `VM ${s.vm}` : "scenario");
      const name = s.action === "workload" ? `workload: ${s.summary.split(":")[0]}` : s.action;
      this.async(
        name,
        s.action === "attack" ? "attack" : "step",
        s.atNs / 1000,
        Math.max(s.endNs, s.atNs + 1) / 1000,
        tid,
        {
          ok: s.ok,
          summary: s.summary,
        },
      );
    }
  }

  /**
   * Flow arrows through the stages of one access, in order. Each stage is drawn as a short slice ("chain: <label>")
   * on the track of its record (or the given one) at the record's time, and the flow binds to those slices.
   */
  addChain(title: string, stages: readonly ChainStage[]): number {
    const id = this.nextFlow++;
    stages.forEach((st, i) => {
      const ts = st.seq !== undefined ? this.tsBySeq.get(st.seq) : st.at !== undefined ? st.at / 1000 : undefined;
      const track = st.seq !== undefined ? this.trackBySeq.get(st.seq) : st.track;
      if (ts === undefined || track === undefined) throw new Error(`chain "${title}": stage ${st.label} has no record`);
      const tid = this.tid(`chain: ${track}`);
      const event = st.seq !== undefined ? this.nameBySeq.get(st.seq) : undefined;
      const args = {
        chain: title,
        stage: i + 1,
        ...(event !== undefined ? { event, seq: st.seq } : {}),
        ...(st.args ?? {}),
      };
      this.events.push({ name: st.label, cat: "chain", ph: "X", ts, dur: 0.001, pid: this.pid, tid, args });
      const ph = i === 0 ? "s" : i === stages.length - 1 ? "f" : "t";
      this.events.push({
        name: title,
        cat: "chain",
        ph,
        ts,
        pid: this.pid,
        tid,
        id,
        ...(ph === "f" ? { bp: "e" } : {}),
      });
    });
    return id;
  }

  /** The track a record was put on (after `add`). */
  trackOfSeq(seq: number): string | undefined {
    return this.trackBySeq.get(seq);
  }

  toJSON(): ChromeTrace {
    this.closeScheduler();
    return {
      traceEvents: this.events,
      displayTimeUnit: "ns",
      otherData: { generator: "vgpu-mdev", clock: "virtual (the model's VirtualClock, ns)" },
    };
  }

  // ---- internals -----------------------------------------------------------------------------------------------

  private stamp(timeNs: number): number {
    if (timeNs === this.lastTime) this.spread++;
    else {
      // A later instant that the spread of the previous one already passed stays after it.
      this.spread =
        this.lastTime >= 0 && timeNs < this.lastTime + this.spread + 1 ? this.lastTime + this.spread + 1 - timeNs : 0;
      this.lastTime = timeNs;
    }
    return (timeNs + this.spread) / 1000;
  }

  private learn(r: TraceInput): void {
    if (r.name === "proc.spawn") {
      const comm = String(FIELD(r, "comm") ?? "");
      if (comm.startsWith("qemu-")) this.vmOfPid.set(Number(FIELD(r, "pid")), comm.slice(5));
    } else if (r.name === "scenario.step" && FIELD(r, "action") === "start") {
      const m = /\(vgpu(\d+)\)/.exec(String(FIELD(r, "summary") ?? ""));
      const vm = FIELD(r, "vm");
      if (m !== null && typeof vm === "string") this.vmOfVgpu.set(Number(m[1]), vm);
    }
  }

  private trackOf(r: TraceInput): string {
    const name = r.name;
    const engine = FIELD(r, "engine");
    const bdf = FIELD(r, "bdf");
    if ((name.startsWith("gpu.") || name.startsWith("i915.")) && typeof engine === "string") {
      return `engine ${engine}${typeof bdf === "string" ? ` (${bdf})` : ""}`;
    }
    if (name.startsWith("vgpu.sched.")) return "GPU scheduler";
    const vgpu = FIELD(r, "vgpu");
    if ((name.startsWith("vgpu.") || name.startsWith("compare.")) && typeof vgpu === "number") {
      const vm = this.vmOfVgpu.get(vgpu);
      return `vgpu${vgpu}${vm !== undefined ? ` (${vm})` : ""}`;
    }
    if (name.startsWith("iommu.") || name.startsWith("ats.")) return "IOMMU";
    if (name.startsWith("iova.")) return "IOVA allocator";
    if (name.startsWith("dma.")) return `DMA API${typeof bdf === "string" ? ` ${bdf}` : ""}`;
    if (name.startsWith("guest.")) return "guest drivers";
    if (name.startsWith("scenario.")) {
      const vm = FIELD(r, "vm");
      return typeof vm === "string" && vm !== "" ? `VM ${vm}` : "scenario";
    }
    const pid = FIELD(r, "pid");
    if (typeof pid === "number" && this.vmOfPid.has(pid)) return `VM ${this.vmOfPid.get(pid)}`;
    if (name.startsWith("gpu.") || name.startsWith("i915.")) return `GPU${typeof bdf === "string" ? ` ${bdf}` : ""}`;
    return "host kernel";
  }

  private tid(track: string): number {
    let t = this.tids.get(track);
    if (t === undefined) {
      t = this.tids.size + 1;
      this.tids.set(track, t);
      this.events.push({ name: "thread_name", ph: "M", ts: 0, pid: this.pid, tid: t, args: { name: track } });
      this.events.push({
        name: "thread_sort_index",
        ph: "M",
        ts: 0,
        pid: this.pid,
        tid: t,
        args: { sort_index: sortKey(track) },
      });
    }
    return t;
  }

  private counter(name: string, ts: number, values: Record<string, number>): void {
    this.events.push({ name, ph: "C", ts, pid: this.pid, tid: 0, args: values });
  }

  private async(
    name: string,
    cat: string,
    startUs: number,
    endUs: number,
    tid: number,
    args: Readonly<Record<string, unknown>>,
  ): void {
    const id = this.nextAsync++;
    this.events.push({ name, cat, ph: "b", ts: startUs, pid: this.pid, tid, id, args });
    this.events.push({ name, cat, ph: "e", ts: Math.max(endUs, startUs), pid: this.pid, tid, id });
  }

  private closeScheduler(endTs?: number): void {
    const s = this.sched;
    if (s === undefined) return;
    this.sched = undefined;
    const end = endTs ?? Math.max(s.ts, this.lastTime / 1000);
    if (end > s.ts) {
      this.events.push({ name: s.name, cat: "sched", ph: "X", ts: s.ts, dur: end - s.ts, pid: this.pid, tid: s.tid });
    }
  }
}

/** Tracks in a reading order: scenario, VMs, vGPUs, scheduler, engines, IOMMU and the rest. */
function sortKey(track: string): number {
  const order = [
    "scenario",
    "VM ",
    "guest",
    "vgpu",
    "GPU scheduler",
    "engine",
    "GPU",
    "DMA API",
    "IOVA",
    "IOMMU",
    "host",
    "chain",
  ];
  const i = order.findIndex((p) => track.startsWith(p));
  return (i < 0 ? order.length : i) * 100;
}
