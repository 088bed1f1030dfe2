/**
 * Virtual execlists of one engine of one vGPU, as GVT-g's execlist.c and the submission half of scheduler.c: the ELSP
 * port, the per-engine workload queue, and the context status buffer (CSB) the guest reads, in its MMIO copy and in
 * the guest's hardware status page. The state machine of the two execlist slots is execlist-state.ts; what executes a
 * workload is a `VirtualEngineBackend` (virtual-engine.ts).
 *
 * ELSP: the guest writes four dwords (element 1 high, low, element 0 high, low); the port stores dword k of a write
 * sequence at data[3 - k] (GVT-g's elsp_mmio_write) and submits on the fourth. A submission is checked whole before
 * anything is queued (GVT-g checks descriptor by descriptor and may queue element 0 before refusing element 1): it is
 * rejected, with a reason traced and counted, when element 0 is not valid, when a valid element lacks PRIVILEGE
 * (bit 8: GVT-g refuses GGTT contexts), when a valid element's addressing mode is not legacy 32-bit (1) or legacy
 * 64-bit (3), or when the engine is not in execlist mode (GFX_MODE RUN_LIST). A rejected write changes nothing the
 * guest can see.
 *
 * Workloads: each valid element becomes one workload, queued in order; element 0's carries the pair for the
 * schedule-in. The head of the queue is handed to the backend when the engine has none in flight; when the backend
 * accepts it, the schedule-in is emulated (for element 0 of a write) and its CSB events written. When it completes,
 * the user interrupt (if its context executed MI_USER_INTERRUPT) is raised first, then, unless the next queued
 * workload is the same context (a lite restore: no schedule-out, as GVT-g's complete_execlist_workload), the
 * schedule-out is emulated. A workload the backend refuses stays at the head, pending, with the refusal kept as the
 * engine's `pendingReason`; the next ELSP write retries it. A workload that fails, or whose schedule-in finds both
 * slots taken, emulates a hang as GVT-g does: no CSB event, and every workload queued on the engine is dropped.
 *
 * CSB update (GVT-g's emulate_csb_update, exactly): write pointer wp = the CSB pointer register's bits 2..0; wp = 0
 * if it is 7 (nothing written since reset), else (wp + 1) % 6; the entry goes to the MMIO copy at +0x370 + 8 wp and,
 * when the guest set the engine's HWS_PGA, into the guest's status page at +0x40 + 8 wp, with wp itself at +0x7c
 * (guest GGTT address -> the guest's own GGTT entry -> GPA -> vfio_dma_rw); the pointer register's write field
 * becomes wp; then, unless another entry follows at once, the engine's context-switch interrupt.
 *
 * Resets: an engine reset (GDRST) drops the queue, tells the backend to forget the workload in flight, empties the
 * slots and puts the CSB pointer back to read 0 / write 7; a full GPU reset or a device reset also leaves execlist
 * mode. Invariants: at most one workload in flight; the in-flight workload, if any, is the head of the queue.
 */
import { defineTraceEvents, hex, type KernelError, type Tracer } from "../core/index.ts";
import { GT_RENDER_USER_INTERRUPT } from "../gpu/index.ts";
import type { VEngineInfo } from "./engines.ts";
import {
  type ContextDescriptor,
  type CsbEvent,
  CTX_ADDRESSING_LEGACY_32,
  CTX_ADDRESSING_LEGACY_64,
  decodeDescriptor,
  describeContext,
  ExeclistState,
  sameContext,
} from "./execlist-state.ts";
import {
  CSB_ENTRIES,
  CSB_WRITE_PTR_MASK,
  CSB_WRITE_PTR_RESET,
  HWSP_CSB_BUF0,
  HWSP_CSB_WRITE_PTR,
  RING_CONTEXT_STATUS_BUF,
  RING_CONTEXT_STATUS_PTR,
  RING_EXECLIST_STATUS_HI,
  RING_EXECLIST_STATUS_LO,
} from "./gvt-regs.ts";
import type { ExeclistWorkload, VirtualEngineBackend, WorkloadCompletion } from "./virtual-engine.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.execlist.mode": { vgpu: number; engine: string; mode: string };
    "vgpu.execlist.submit": { vgpu: number; engine: string; elements: readonly string[] };
    "vgpu.execlist.reject": { vgpu: number; engine: string; reason: string };
    "vgpu.execlist.pending": { vgpu: number; engine: string; seq: number; reason: string };
    "vgpu.execlist.csb": { vgpu: number; engine: string; slot: number; status: number; ctx: number; hwsp: string };
    "vgpu.execlist.complete": { vgpu: number; engine: string; seq: number; outcome: string };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.execlist.mode": "vgpu{vgpu}: {engine} submission mode: {mode}",
  "vgpu.execlist.submit": "vgpu{vgpu}: {engine} ELSP submission of {elements}",
  "vgpu.execlist.reject": "vgpu{vgpu}: {engine} ELSP submission rejected: {reason}",
  "vgpu.execlist.pending": "vgpu{vgpu}: {engine} workload {seq} stays pending: {reason}",
  "vgpu.execlist.csb": "vgpu{vgpu}: {engine} CSB[{slot}] = {status} (ctx {ctx}); status page: {hwsp}",
  "vgpu.execlist.complete": "vgpu{vgpu}: {engine} workload {seq} {outcome}",
});

/** GT_CONTEXT_SWITCH_INTERRUPT: bit 8 of an engine's interrupt field. */
export const GT_CONTEXT_SWITCH_INTERRUPT = 1 << 8;

/** What one engine's virtual execlist needs from its vGPU. */
export interface ExeclistDeps {
  readonly vgpuId: number;
  readonly engine: VEngineInfo;
  /** The vGPU's MMIO registers by dword: the status register, the CSB copy and the CSB pointer live there. */
  readonly vreg: Uint32Array;
  readonly backend: VirtualEngineBackend;
  readonly tracer: Tracer;
  /** The engine's status page address as the guest set it in HWS_PGA (0: none). */
  hwsPga(): number;
  /**
   * Writes `data` to guest GGTT address `gma` through the guest's own GGTT entry (GMA -> GPA -> vfio_dma_rw). Returns
   * undefined, or why it could not (no entry, no DMA session, outside the guest's memory).
   */
  writeGuestGgtt(gma: number, data: Uint8Array): string | undefined;
  /** Raises `bits` of the engine's interrupt field. */
  raise(bits: number, event: string): void;
}

/** Counters of one engine's virtual execlist. */
export interface ExeclistStats {
  readonly submissions: number;
  readonly rejected: number;
  readonly completed: number;
  readonly failed: number;
  readonly csbEvents: number;
  /** Workloads queued (including one in flight or pending at the backend). */
  readonly queued: number;
  readonly hwspWriteFailures: number;
}

interface Queued {
  readonly workload: ExeclistWorkload;
  /** Element 0 of an ELSP write carries the pair for the schedule-in. */
  readonly pair: readonly [ContextDescriptor, ContextDescriptor] | undefined;
}

export class VirtualExeclist {
  readonly state = new ExeclistState();
  private readonly elsp = new Uint32Array(4);
  private elspIndex = 0;
  private readonly queue: Queued[] = [];
  private inFlight: Queued | undefined;
  private pumping = false;
  private seq = 0;
  private execlistMode = false;
  private refusal: KernelError | undefined;
  private counts = { submissions: 0, rejected: 0, completed: 0, failed: 0, csbEvents: 0, hwspWriteFailures: 0 };
  /** Why the last ELSP write was rejected (tests and diagnostics). */
  lastRejection: string | undefined;

  constructor(private readonly deps: ExeclistDeps) {
    this.writeRegisters();
  }

  /** Whether GFX_MODE put the engine in execlist mode. */
  get enabled(): boolean {
    return this.execlistMode;
  }

  /** No workload queued, pending or in flight: the engine's MI_MODE reads MODE_IDLE. */
  get idle(): boolean {
    return this.queue.length === 0;
  }

  /** Why the head workload is pending (the backend refused it), if it is. */
  get pendingReason(): KernelError | undefined {
    return this.refusal;
  }

  stats(): ExeclistStats {
    return { ...this.counts, queued: this.queue.length };
  }

  /** GFX_MODE enabled RUN_LIST: the engine enters execlist mode with empty slots (GVT-g's init_vgpu_execlist). */
  enable(): void {
    this.reset(false);
    this.execlistMode = true;
    this.traceMode("execlists");
  }

  /** A write of `value` to the ELSP port. */
  elspWrite(value: number): void {
    this.elsp[3 - this.elspIndex] = value >>> 0;
    const last = this.elspIndex === 3;
    this.elspIndex = (this.elspIndex + 1) & 3;
    if (last) this.submit();
  }

  /** Engine reset (`leaveExeclistMode` for a full GPU or device reset). */
  reset(leaveExeclistMode: boolean): void {
    const flying = this.inFlight;
    this.inFlight = undefined;
    this.queue.length = 0;
    this.refusal = undefined;
    if (flying !== undefined) this.deps.backend.cancel(flying.workload);
    this.elsp.fill(0);
    this.elspIndex = 0;
    this.state.reset();
    const ptr = this.reg(RING_CONTEXT_STATUS_PTR);
    this.setReg(RING_CONTEXT_STATUS_PTR, (ptr & ~0x0000_07ff) | CSB_WRITE_PTR_RESET);
    this.writeRegisters();
    if (leaveExeclistMode && this.execlistMode) {
      this.execlistMode = false;
      this.traceMode("ring buffer");
    }
  }

  // ---- submission --------------------------------------------------------------------------------------------------

  private submit(): void {
    const d0 = decodeDescriptor(this.elsp[0]!, this.elsp[1]!);
    const d1 = decodeDescriptor(this.elsp[2]!, this.elsp[3]!);
    const why = this.check(d0, d1);
    if (why !== undefined) {
      this.counts.rejected++;
      this.lastRejection = why;
      if (this.deps.tracer.enabled) {
        this.deps.tracer.emit("vgpu.execlist.reject", { vgpu: this.deps.vgpuId, engine: this.name, reason: why });
      }
      return;
    }
    this.counts.submissions++;
    if (this.deps.tracer.enabled) {
      const elements = [d0, d1].filter((d) => d.valid).map(describeContext);
      this.deps.tracer.emit("vgpu.execlist.submit", { vgpu: this.deps.vgpuId, engine: this.name, elements });
    }
    for (const [i, d] of [d0, d1].entries()) {
      if (!d.valid) continue;
      const workload: ExeclistWorkload = {
        vgpuId: this.deps.vgpuId,
        engine: this.deps.engine.id,
        descriptor: d,
        seq: ++this.seq,
      };
      this.queue.push({ workload, pair: i === 0 ? [d0, d1] : undefined });
    }
    this.pump();
  }

  /** Why an ELSP write of (d0, d1) is refused, or undefined. */
  private check(d0: ContextDescriptor, d1: ContextDescriptor): string | undefined {
    if (!this.execlistMode) {
      return "the engine is not in execlist mode (GFX_MODE has not enabled RUN_LIST)";
    }
    if (!d0.valid) return `element 0 is not valid (descriptor ${hex(d0.hi)}:${hex(d0.lo)})`;
    for (const [i, d] of [d0, d1].entries()) {
      if (!d.valid) continue;
      if (!d.privileged) {
        return `element ${i} (${describeContext(d)}) lacks PRIVILEGE (bit 8): a GGTT context, which the vGPU refuses`;
      }
      if (d.addressingMode !== CTX_ADDRESSING_LEGACY_32 && d.addressingMode !== CTX_ADDRESSING_LEGACY_64) {
        return (
          `element ${i} (${describeContext(d)}) uses addressing mode ${d.addressingMode}: only legacy 32-bit (1) ` +
          "and legacy 64-bit (3) contexts are supported (advanced/SVM modes are not)"
        );
      }
    }
    return undefined;
  }

  /** Hands the head of the queue to the backend while the engine has nothing in flight. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.inFlight === undefined && this.queue.length > 0) {
        const q = this.queue[0]!;
        if (q.pair !== undefined && this.state.hasPending) {
          this.hang(q, "its schedule-in found both virtual execlist slots taken");
          continue;
        }
        this.inFlight = q;
        let inRun = true;
        let early: WorkloadCompletion | undefined;
        const refused = this.deps.backend.run(q.workload, (c) => {
          if (inRun) early = c;
          else this.completed(q, c);
        });
        inRun = false;
        if (refused !== undefined) {
          this.inFlight = undefined;
          if (this.refusal?.message !== refused.message && this.deps.tracer.enabled) {
            this.deps.tracer.emit("vgpu.execlist.pending", {
              vgpu: this.deps.vgpuId,
              engine: this.name,
              seq: q.workload.seq,
              reason: refused.message,
            });
          }
          this.refusal = refused;
          return;
        }
        this.refusal = undefined;
        // A workload that failed before it ran never reached the (virtual) hardware: no schedule-in (GVT-g emulates
        // it when the workload is dispatched, after its creation and scan succeeded).
        const failedAtOnce = early?.error !== undefined;
        if (q.pair !== undefined && !failedAtOnce) this.apply(this.state.scheduleIn(q.pair[0], q.pair[1]));
        if (early !== undefined) this.completed(q, early);
      }
    } finally {
      this.pumping = false;
    }
  }

  private completed(q: Queued, c: WorkloadCompletion): void {
    if (this.inFlight !== q) return; // its engine was reset meanwhile
    this.inFlight = undefined;
    this.queue.shift();
    if (c.error !== undefined) {
      this.hang(q, c.error.message);
    } else {
      this.counts.completed++;
      this.traceComplete(q, "completed");
      if (c.userInterrupt) this.deps.raise(GT_RENDER_USER_INTERRUPT, `${this.name} user interrupt`);
      const next = this.queue[0];
      if (next === undefined || !sameContext(next.workload.descriptor, q.workload.descriptor)) {
        this.apply(this.state.scheduleOut(q.workload.descriptor));
      }
    }
    this.pump();
  }

  /** A failed workload: the guest sees a hang (no CSB event); everything queued on the engine is dropped. */
  private hang(q: Queued, reason: string): void {
    this.counts.failed++;
    if (this.queue[0] === q) this.queue.shift();
    this.traceComplete(q, `failed: ${reason}; ${this.queue.length} queued workload(s) dropped`);
    this.queue.length = 0;
  }

  // ---- context status buffer ---------------------------------------------------------------------------------------

  private apply(t: ReturnType<ExeclistState["scheduleIn"]>): void {
    this.writeRegisters();
    if (!t.ok) {
      if (this.deps.tracer.enabled) {
        this.deps.tracer.emit("vgpu.execlist.reject", { vgpu: this.deps.vgpuId, engine: this.name, reason: t.reason });
      }
      return;
    }
    for (const e of t.events) this.csbUpdate(e);
  }

  /** emulate_csb_update. */
  private csbUpdate(e: CsbEvent): void {
    const ptr = this.reg(RING_CONTEXT_STATUS_PTR);
    let wp = ptr & CSB_WRITE_PTR_MASK;
    wp = wp === CSB_WRITE_PTR_RESET ? 0 : (wp + 1) % CSB_ENTRIES;
    this.setReg(RING_CONTEXT_STATUS_BUF + 8 * wp, e.status);
    this.setReg(RING_CONTEXT_STATUS_BUF + 8 * wp + 4, e.contextId);
    this.setReg(RING_CONTEXT_STATUS_PTR, (ptr & ~CSB_WRITE_PTR_MASK) | wp);
    this.counts.csbEvents++;
    let hwsp = "no HWS_PGA";
    const hws = this.deps.hwsPga();
    if (hws !== 0) {
      const entry = new Uint8Array(8);
      const dv = new DataView(entry.buffer);
      dv.setUint32(0, e.status, true);
      dv.setUint32(4, e.contextId, true);
      const wpBytes = new Uint8Array(4);
      new DataView(wpBytes.buffer).setUint32(0, wp, true);
      const bad =
        this.deps.writeGuestGgtt(hws + HWSP_CSB_BUF0 + 8 * wp, entry) ??
        this.deps.writeGuestGgtt(hws + HWSP_CSB_WRITE_PTR, wpBytes);
      if (bad === undefined) hwsp = `written at ${hex(hws)}`;
      else {
        this.counts.hwspWriteFailures++;
        hwsp = `not written: ${bad}`;
      }
    }
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.execlist.csb", {
        vgpu: this.deps.vgpuId,
        engine: this.name,
        slot: wp,
        status: e.status,
        ctx: e.contextId,
        hwsp,
      });
    }
    if (e.interrupt) this.deps.raise(GT_CONTEXT_SWITCH_INTERRUPT, `${this.name} context switch`);
  }

  private writeRegisters(): void {
    const s = this.state.status();
    this.setReg(RING_EXECLIST_STATUS_LO, s.lo);
    this.setReg(RING_EXECLIST_STATUS_HI, s.hi);
  }

  private get name(): string {
    return this.deps.engine.id;
  }

  private reg(r: number): number {
    return this.deps.vreg[(this.deps.engine.base + r) / 4]!;
  }

  private setReg(r: number, v: number): void {
    this.deps.vreg[(this.deps.engine.base + r) / 4] = v >>> 0;
  }

  private traceMode(mode: string): void {
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.execlist.mode", { vgpu: this.deps.vgpuId, engine: this.name, mode });
    }
  }

  private traceComplete(q: Queued, outcome: string): void {
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.execlist.complete", {
        vgpu: this.deps.vgpuId,
        engine: this.name,
        seq: q.workload.seq,
        outcome,
      });
    }
  }
}
