/**
 * The isolation checker: the invariant of the seed's design, checked on every DMA a GPU makes.
 *
 *   A DMA issued for vGPU k reaches only pages that VMM k mapped for it (frames of VMM k's process: its anonymous
 *   guest RAM, which is what type1 pins for k), or host pages the host driver owns for k: the shadow batch buffers
 *   allocated for k's submissions (read only), the host's rings (read only: the engine fetches k's commands from
 *   them), and the scratch pages (read and write: unused and failed GTT entries point there; the vendor driver gives
 *   each vGPU its own, and the host driver has one). With execlists also k's shadow rings and shadow page tables
 *   (read only: the engine fetches k's commands from the one and walks k's PPGTT through the other), k's shadow
 *   context images (read and write: restore, save, store-index post-syncs), and the frames the GPU itself uses during
 *   anyone's work (`HostGpuDriver.hostGpuFrames`: the kernel contexts' images and the status pages it writes, the
 *   aliasing PPGTT's tables it reads). Never another VM's page.
 *   For a GPU assigned whole to a VM: its DMA reaches only that VM's frames.
 *
 * How: a `DeviceDma` observer on each GPU (called once per page piece a DMA touches, with the IOVA and the host
 * frame). The DMA is attributed to the vGPU whose work the engines are executing (`HostGpuDriver.executingOwner`, the
 * running `Submission.owner`); for an assigned GPU, to the VM it is assigned to. The frame's owner tag
 * (`PhysicalMemory.owner`: a process's anonymous frames carry its pid) decides the first case without a lookup;
 * host frames are kept in small per-GPU tables: the scratch page, the ring pages, the GPU's own frames, and shadow
 * buffers by the vGPU they were allocated for: the vendor driver's observer (`GvtParent.setShadowObserver`) names the
 * vGPU, the use and whether the engines write each shadow it allocates (every shadow of a vGPU, legacy batches and
 * execlist contexts alike, is allocated through its `VgpuShadows`). The GPU's own frames change as the host driver's aliasing PPGTT grows tables: a frame not found is looked up again in a
 * fresh `hostGpuFrames()` before it is called a violation (the slow path only).
 *
 * Anything else is a violation, counted per context and recorded (the first `maxSamples` with the GMA found by a
 * reverse GGTT lookup, the frame's owner and the time). The observer allocates nothing unless it finds a violation.
 *
 * Per context the checker also counts DMA pieces and bytes and attributes the translation-cache hits and misses
 * (the IOTLB, or the GPU's ATC when it uses ATS) and the GPU's GTT and IOMMU faults that occur while the context's
 * work runs: counters are sampled when the executing context changes, which is exact because engines run
 * synchronously (no two contexts' DMAs interleave).
 *
 * Not covered: CPU accesses (the vendor driver's vfio_dma_rw and the host driver's own CPU writes are not device
 * DMA), DMA by devices other than the watched GPUs, ATS translation requests made outside a context.
 */
import { defineTraceEvents, hex, type Iova, iova, PAGE_SIZE, type Pfn } from "../core/index.ts";
import { GTT_ENTRIES, gen8PteDecode } from "../gpu/index.ts";
import type { Atc, DeviceDma, Host } from "../host/index.ts";
import type { GpuInstance } from "./gpus.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "scenario.violation": {
      gpu: string;
      vm: string;
      vgpu: number | null;
      iova: number;
      pfn: number;
      write: boolean;
      owner: string;
    };
  }
}
defineTraceEvents("scenario", {
  "scenario.violation":
    "ISOLATION VIOLATION on {gpu}: DMA for {vm} (vgpu {vgpu}, write {write}) at iova {iova} reached pfn {pfn} owned by {owner}",
});

/** One DMA the invariant forbids. */
export interface Violation {
  readonly timeNs: number;
  readonly gpu: string;
  /** The VM the DMA was for ("" when no work was executing). */
  readonly vm: string;
  /** The vGPU id, or undefined for an assigned GPU or idle DMA. */
  readonly vgpu: number | undefined;
  readonly iova: number;
  /** Graphics memory address whose GGTT entry led there, if found (samples only). */
  readonly gma: number | undefined;
  readonly pfn: number;
  readonly write: boolean;
  /** Owner tag of the frame (a pid, or 0). */
  readonly frameOwner: number;
  /** Who the frame belongs to, in words. */
  readonly frameOwnerName: string;
}

/** What the checker counted for one context (a vGPU, an assigned GPU's VM, or idle DMA on a GPU). */
export interface ContextStats {
  readonly pieces: number;
  readonly bytes: number;
  readonly violations: number;
  /** Translation-cache lookups that hit / missed (the IOTLB, or the ATC for an ATS GPU). */
  readonly tlbHits: number;
  readonly tlbMisses: number;
  readonly gttFaults: number;
  readonly iommuFaults: number;
}

class Context implements ContextStats {
  pieces = 0;
  bytes = 0;
  violations = 0;
  tlbHits = 0;
  tlbMisses = 0;
  gttFaults = 0;
  iommuFaults = 0;

  constructor(
    readonly watch: GpuWatch,
    /** Pid of the VMM whose frames are allowed, -1 for none. */
    public pid: number,
    public vm: string,
    readonly vgpu: number | undefined,
    /** The vGPU's own scratch page, if it has one (-1: none). */
    readonly scratchPfn = -1,
  ) {}
}

/**
 * One guest context of a vGPU as the checker saw it run (execlists): its DMA, PPGTT walks of its shadow tables and
 * accesses through them included, attributed by the host driver's `executingContext` (the engine and the label the
 * vendor driver gave the shadow context: the guest's context id and LRCA).
 */
export interface GuestContextStats {
  readonly gpu: string;
  readonly vm: string;
  readonly vgpu: number;
  readonly engine: string;
  readonly label: string;
  readonly pieces: number;
  readonly bytes: number;
  readonly violations: number;
}

/** A stretch of DMA on one engine for one guest context: how the scheduler interleaved contexts on an engine. */
export interface ContextRun {
  readonly gpu: string;
  readonly engine: string;
  readonly vm: string;
  readonly vgpu: number;
  readonly label: string;
  /** Virtual time of its first DMA. */
  readonly atNs: number;
}

/** Runs kept per GPU (the first ones: enough to show interleaving). */
const MAX_RUNS = 4096;

class GuestContext implements GuestContextStats {
  pieces = 0;
  bytes = 0;
  violations = 0;
  constructor(
    readonly gpu: string,
    readonly vm: string,
    readonly vgpu: number,
    readonly engine: string,
    readonly label: string,
  ) {}
}

/** Executing owner of an assigned GPU's DMA (no host driver: it is always the VM's). */
const ASSIGNED = -2;

class GpuWatch {
  readonly dma: DeviceDma;
  readonly atc: Atc | undefined;
  /** Host frames a vGPU may read: the rings. */
  readonly hostFrames = new Set<number>();
  /** Shadow frames the vendor driver reported: vGPU id, and whether the engines may write them. */
  readonly vgpuFrames = new Map<number, { readonly vgpu: number; readonly write: boolean }>();
  /** Frames the GPU itself uses during anyone's work (execlists): whether it writes them. */
  readonly gpuFrames = new Map<number, boolean>();
  detachVgpuShadows: (() => void) | undefined;
  /** Contexts by vGPU id (index), for a mediated GPU. */
  readonly byOwner: (Context | undefined)[] = [];
  readonly idle: Context;
  assigned: Context | undefined;
  /** Guest contexts by owner, engine and label; the last one seen; the runs recorded. */
  readonly guestContexts = new Map<string, GuestContext>();
  lastGuest: GuestContext | undefined;
  lastInfo: object | undefined;
  readonly runs: ContextRun[] = [];
  readonly lastRunOn = new Map<string, GuestContext>();
  scratchPfn = -1;
  gttFaultBase = 0;
  iommuFaultBase = 0;

  constructor(
    readonly inst: GpuInstance,
    host: Host,
  ) {
    this.dma = host.deviceDma(inst.gpu.bdf);
    this.atc = host.iommu.hasDevice(inst.gpu.bdf) ? host.iommu.device(inst.gpu.bdf).atc : undefined;
    this.idle = new Context(this, -1, "", undefined);
  }
}

export interface CheckerOptions {
  readonly host: Host;
  /** Detailed violation records kept (default 32); all are counted. */
  readonly maxSamples?: number;
}

export class IsolationChecker {
  private readonly host: Host;
  private readonly maxSamples: number;
  private readonly watches = new Map<string, GpuWatch>();
  private readonly samples: Violation[] = [];
  private readonly vmByPid = new Map<number, string>();
  private current: Context | undefined;
  private currentGuest: GuestContext | undefined;
  private tlbHitBase = 0;
  private tlbMissBase = 0;
  private total = 0;
  /** Contexts replaced by a later binding of the same vGPU id (their counts still add to the totals). */
  private readonly retired: Context[] = [];

  constructor(opts: CheckerOptions) {
    this.host = opts.host;
    this.maxSamples = opts.maxSamples ?? 32;
  }

  /** Starts checking every DMA of `inst` (installs its DeviceDma observer). */
  watch(inst: GpuInstance): void {
    if (this.watches.has(inst.name)) return;
    const w = new GpuWatch(inst, this.host);
    this.watches.set(inst.name, w);
    const hd = inst.hostDriver;
    if (hd !== undefined) {
      w.scratchPfn = hd.scratch.pfn;
      for (const engine of hd.engines) {
        const gma = hd.ringGma(engine);
        for (let off = 0; off < hd.ringBytes; off += PAGE_SIZE) {
          const f = this.frameOfGma(w, gma + off);
          if (f >= 0) w.hostFrames.add(f);
        }
      }
      this.refreshGpuFrames(w);
    }
    const parent = inst.parent;
    if (parent !== undefined) {
      parent.setShadowObserver((e) => {
        for (let off = 0; off < e.buffer.size; off += PAGE_SIZE) {
          const f = this.frameOfGma(w, e.buffer.gma + off);
          if (f < 0) continue;
          if (e.alive) w.vgpuFrames.set(f, { vgpu: e.vgpu, write: e.write });
          else w.vgpuFrames.delete(f);
        }
      });
      w.detachVgpuShadows = () => parent.setShadowObserver(undefined);
    }
    w.gttFaultBase = inst.gpu.memory.gttFaults;
    w.iommuFaultBase = inst.gpu.memory.iommuFaults;
    const physmem = this.host.physmem;
    const scratch = w.scratchPfn;
    w.dma.setObserver((_bdf, iova, pfn, _offset, len, write) => {
      const owner = hd !== undefined ? hd.executingOwner : ASSIGNED;
      const ctx = owner === ASSIGNED ? (w.assigned ?? w.idle) : owner >= 0 ? (w.byOwner[owner] ?? w.idle) : w.idle;
      if (ctx !== this.current) this.switchTo(ctx);
      ctx.pieces++;
      ctx.bytes += len;
      const gc = owner >= 0 && ctx !== w.idle ? this.guestContextOf(w, ctx, hd!) : undefined;
      this.currentGuest = gc;
      if (gc !== undefined) {
        gc.pieces++;
        gc.bytes += len;
      }
      if (ctx.pid > 0 && physmem.owner(pfn) === ctx.pid) return;
      if (pfn === scratch || pfn === ctx.scratchPfn) return;
      if (!write && w.hostFrames.has(pfn)) return;
      const own = w.vgpuFrames.get(pfn);
      if (own !== undefined && own.vgpu === owner && (!write || own.write)) return;
      const gpu = w.gpuFrames.get(pfn);
      if (gpu !== undefined && (!write || gpu)) return;
      if (this.refreshGpuFrames(w)) {
        const again = w.gpuFrames.get(pfn);
        if (again !== undefined && (!write || again)) return;
      }
      this.violation(ctx, iova, pfn, write);
    });
  }

  /**
   * vGPU `vgpuId` on GPU `gpu` now serves VM `vm` (VMM process `pid`); `scratchPfn` is the vGPU's own scratch page
   * when the vendor driver gives each vGPU one (its partition's unused entries point there).
   */
  bindVgpu(gpu: string, vgpuId: number, vm: string, pid: number, scratchPfn = -1): void {
    const w = this.watchOf(gpu);
    const ctx = w.byOwner[vgpuId];
    if (ctx !== undefined && ctx.pid === pid) return;
    if (ctx !== undefined) this.retired.push(ctx);
    w.byOwner[vgpuId] = new Context(w, pid, vm, vgpuId, scratchPfn);
    this.vmByPid.set(pid, vm);
  }

  /** The whole GPU `gpu` is assigned to VM `vm`. */
  bindAssigned(gpu: string, vm: string, pid: number): void {
    const w = this.watchOf(gpu);
    w.assigned = new Context(w, pid, vm, undefined);
    this.vmByPid.set(pid, vm);
  }

  /** Names a process in violation reports (any VMM, bound or not). */
  nameProcess(pid: number, vm: string): void {
    this.vmByPid.set(pid, vm);
  }

  /** Counters of one context: a vGPU on a mediated GPU, or (vgpuId undefined) the VM of an assigned GPU. */
  stats(gpu: string, vgpuId?: number): ContextStats {
    this.sync();
    const w = this.watchOf(gpu);
    const ctx = vgpuId === undefined ? w.assigned : w.byOwner[vgpuId];
    return snapshot(ctx);
  }

  /** The guest contexts (execlists) seen on GPU `gpu`, of vGPU `vgpuId` or of all, in order of first DMA. */
  guestContexts(gpu: string, vgpuId?: number): readonly GuestContextStats[] {
    const all = [...this.watchOf(gpu).guestContexts.values()];
    return (vgpuId === undefined ? all : all.filter((c) => c.vgpu === vgpuId)).map((c) => ({ ...c }));
  }

  /** Which guest context each engine of GPU `gpu` ran, in order (the first 4096 changes). */
  contextRuns(gpu: string): readonly ContextRun[] {
    return this.watchOf(gpu).runs;
  }

  /** Totals over a GPU's contexts (idle DMA included). */
  gpuStats(gpu: string): ContextStats {
    this.sync();
    const w = this.watchOf(gpu);
    const all = [w.idle, ...(w.assigned ? [w.assigned] : []), ...w.byOwner.filter((c) => c !== undefined)];
    const sum = (k: keyof ContextStats) => all.reduce((n, c) => n + c[k], 0);
    return {
      pieces: sum("pieces"),
      bytes: sum("bytes"),
      violations: sum("violations"),
      tlbHits: sum("tlbHits"),
      tlbMisses: sum("tlbMisses"),
      gttFaults: sum("gttFaults"),
      iommuFaults: sum("iommuFaults"),
    };
  }

  get violationCount(): number {
    return this.total;
  }

  /** DMA page pieces checked, and their bytes, over every GPU. */
  get checked(): { readonly pieces: number; readonly bytes: number } {
    let pieces = 0;
    let bytes = 0;
    for (const c of this.retired) {
      pieces += c.pieces;
      bytes += c.bytes;
    }
    for (const w of this.watches.values()) {
      for (const c of [w.idle, w.assigned, ...w.byOwner]) {
        if (c === undefined) continue;
        pieces += c.pieces;
        bytes += c.bytes;
      }
    }
    return { pieces, bytes };
  }

  /** The recorded violations (the first `maxSamples`). */
  violations(): readonly Violation[] {
    return this.samples;
  }

  /** Removes every observer. */
  dispose(): void {
    this.sync();
    for (const w of this.watches.values()) {
      w.dma.setObserver(undefined);
      w.detachVgpuShadows?.();
    }
  }

  // ---- internals ---------------------------------------------------------------------------------------------------

  /** Attributes counters accumulated since the last switch to the context that was running, then moves on. */
  private switchTo(next: Context | undefined): void {
    const cur = this.current;
    const iotlb = this.host.iommu.iotlb;
    if (cur !== undefined) {
      const w = cur.watch;
      if (w.atc !== undefined) {
        cur.tlbHits += w.atc.hits - this.tlbHitBase;
        cur.tlbMisses += w.atc.misses - this.tlbMissBase;
      } else {
        cur.tlbHits += iotlb.hits - this.tlbHitBase;
        cur.tlbMisses += iotlb.misses - this.tlbMissBase;
      }
      const mem = w.inst.gpu.memory;
      cur.gttFaults += mem.gttFaults - w.gttFaultBase;
      cur.iommuFaults += mem.iommuFaults - w.iommuFaultBase;
      w.gttFaultBase = mem.gttFaults;
      w.iommuFaultBase = mem.iommuFaults;
    }
    this.current = next;
    if (next !== undefined) {
      const w = next.watch;
      this.tlbHitBase = w.atc !== undefined ? w.atc.hits : iotlb.hits;
      this.tlbMissBase = w.atc !== undefined ? w.atc.misses : iotlb.misses;
      // Faults of this GPU since its last context ended happened outside any context: not attributed.
      w.gttFaultBase = w.inst.gpu.memory.gttFaults;
      w.iommuFaultBase = w.inst.gpu.memory.iommuFaults;
    }
  }

  /** Brings the running context's counters up to date (reports read them). */
  private sync(): void {
    const cur = this.current;
    if (cur !== undefined) {
      this.switchTo(undefined);
      this.switchTo(cur);
    }
  }

  /** The guest context the engines run for `ctx` now (undefined for ring work), recording a run when it changes. */
  private guestContextOf(
    w: GpuWatch,
    ctx: Context,
    hd: NonNullable<GpuInstance["hostDriver"]>,
  ): GuestContext | undefined {
    const ec = hd.executingContext;
    if (ec === undefined) return undefined;
    // The same shadow context as the last piece (the common case: its info object is made once per submission).
    if (ec === w.lastInfo && w.lastGuest !== undefined) return w.lastGuest;
    w.lastInfo = ec;
    const key = `${ctx.vgpu}/${ec.engine}/${ec.label}`;
    let gc = w.guestContexts.get(key);
    if (gc === undefined) {
      gc = new GuestContext(w.inst.name, ctx.vm, ctx.vgpu!, ec.engine, ec.label);
      w.guestContexts.set(key, gc);
    }
    w.lastGuest = gc;
    if (w.lastRunOn.get(ec.engine) !== gc) {
      w.lastRunOn.set(ec.engine, gc);
      if (w.runs.length < MAX_RUNS) {
        w.runs.push({
          gpu: w.inst.name,
          engine: ec.engine,
          vm: ctx.vm,
          vgpu: gc.vgpu,
          label: ec.label,
          atNs: this.host.clock.now(),
        });
      }
    }
    return gc;
  }

  private violation(ctx: Context, iova: Iova, pfn: Pfn, write: boolean): void {
    ctx.violations++;
    if (this.currentGuest !== undefined) this.currentGuest.violations++;
    this.total++;
    const tracer = this.host.tracer;
    if (tracer.enabled) {
      tracer.emit("scenario.violation", {
        gpu: ctx.watch.inst.name,
        vm: ctx.vm,
        vgpu: ctx.vgpu ?? null,
        iova,
        pfn,
        write,
        owner: String(this.host.physmem.owner(pfn)),
      });
    }
    if (this.samples.length >= this.maxSamples) return;
    const owner = this.host.physmem.owner(pfn);
    const w = ctx.watch;
    const vm = this.vmByPid.get(owner);
    const ownerName =
      owner === 0
        ? pfn === w.scratchPfn
          ? "the host's scratch page"
          : w.vgpuFrames.has(pfn)
            ? `a shadow buffer of vgpu${w.vgpuFrames.get(pfn)!.vgpu}`
            : w.hostFrames.has(pfn)
              ? "the host driver's ring"
              : "the host (no owner)"
        : vm !== undefined
          ? `VM ${vm} (pid ${owner})`
          : `process ${owner}`;
    this.samples.push({
      timeNs: this.host.clock.now(),
      gpu: w.inst.name,
      vm: ctx.vm,
      vgpu: ctx.vgpu,
      iova,
      gma: this.gmaOf(w, iova, ctx.vgpu),
      pfn,
      write,
      frameOwner: owner,
      frameOwnerName: ownerName,
    });
  }

  /**
   * Reverse GGTT lookup of the DMA page holding `iova` (slow: only for recorded violations). Several entries may map
   * one page; the vGPU's own partition is searched first, as its work can only have used its own GMAs.
   */
  private gmaOf(w: GpuWatch, iova: Iova, vgpu: number | undefined): number | undefined {
    const page = iova - (iova % PAGE_SIZE);
    const ggtt = w.inst.gpu.ggtt;
    const find = (first: number, count: number): number | undefined => {
      for (let i = first; i < first + count; i++) {
        if (ggtt.pageDma(i) === page) return i * PAGE_SIZE + (iova - page);
      }
      return undefined;
    };
    const res = vgpu !== undefined ? w.inst.parent?.vgpus().find((v) => v.id === vgpu)?.resources : undefined;
    for (const r of res !== undefined ? [res.aperture, res.hidden] : []) {
      const gma = find(r.base / PAGE_SIZE, r.size / PAGE_SIZE);
      if (gma !== undefined) return gma;
    }
    return find(0, GTT_ENTRIES);
  }

  /**
   * Re-reads the frames the GPU itself uses (`HostGpuDriver.hostGpuFrames`: with execlists, the kernel contexts, the
   * status pages and the aliasing PPGTT's tables). Returns whether the table changed.
   */
  private refreshGpuFrames(w: GpuWatch): boolean {
    const hd = w.inst.hostDriver;
    if (hd === undefined) return false;
    const frames = hd.hostGpuFrames();
    let changed = frames.length !== w.gpuFrames.size;
    for (const f of frames) {
      if (w.gpuFrames.get(f.pfn) !== f.write) changed = true;
    }
    if (!changed) return false;
    w.gpuFrames.clear();
    for (const f of frames) w.gpuFrames.set(f.pfn, f.write || (w.gpuFrames.get(f.pfn) ?? false));
    return true;
  }

  /** The host frame behind graphics memory address `gma` of a mediated GPU (GGTT, then the IOMMU), or -1. */
  private frameOfGma(w: GpuWatch, gma: number): number {
    const dmaAddr = gen8PteDecode(w.inst.gpu.ggtt.read(Math.floor(gma / PAGE_SIZE)));
    if (dmaAddr < 0) return -1;
    const iommu = this.host.iommu;
    if (!iommu.enabled) return Math.floor(dmaAddr / PAGE_SIZE);
    // A GGTT entry holds a DMA address, an IOVA behind the IOMMU: the PTE decode is where it gets its kind.
    const hpa = iommu.domainOf(w.inst.gpu.bdf).iovaToPhys(iova(dmaAddr));
    return hpa < 0 ? -1 : Math.floor(hpa / PAGE_SIZE);
  }

  private watchOf(gpu: string): GpuWatch {
    const w = this.watches.get(gpu);
    if (w === undefined) throw new Error(`isolation checker: GPU ${gpu} is not watched`);
    return w;
  }
}

function snapshot(c: ContextStats | undefined): ContextStats {
  return {
    pieces: c?.pieces ?? 0,
    bytes: c?.bytes ?? 0,
    violations: c?.violations ?? 0,
    tlbHits: c?.tlbHits ?? 0,
    tlbMisses: c?.tlbMisses ?? 0,
    gttFaults: c?.gttFaults ?? 0,
    iommuFaults: c?.iommuFaults ?? 0,
  };
}

/** "vgpu2 on gpu0 wrote iova 0x... (GMA 0x...) = frame 0x... of VM vm1 (pid 1000) at 12.3 ms" */
export function describeViolation(v: Violation): string {
  const who = v.vgpu !== undefined ? `vgpu${v.vgpu} (${v.vm})` : v.vm !== "" ? v.vm : "idle DMA";
  const gma = v.gma !== undefined ? ` (GMA ${hex(v.gma)})` : "";
  return (
    `${who} on ${v.gpu} ${v.write ? "wrote" : "read"} iova ${hex(v.iova)}${gma}: frame ${hex(v.pfn)} of ` +
    `${v.frameOwnerName}`
  );
}
