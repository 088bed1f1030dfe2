/**
 * Submission through execlists, as i915 does on gen8+ (the host driver's `submission: "execlists"` mode): every
 * engine of the GPU (rcs, bcs, vcs, vecs) gets, at probe, a kernel context (a logical ring context image of
 * `LRC_PAGES` pages and a ring of `ringBytes`, both in the host's aperture reservation, the aliasing PPGTT of
 * host-ppgtt.ts as its PPGTT) and a hardware status page, and is switched to execlists (i915's enable_execlists:
 * GFX_MODE run list, STOP_RING cleared, HWS_PGA, CSB pointers reset).
 *
 * Work runs one item at a time per engine, in one queue:
 * - `submit` (the legacy contract): the dwords are copied into the kernel context's ring (in pieces when they do not
 *   fit), CTX_RING_TAIL in the image is updated and the kernel context's descriptor is written to ELSP. A piece that
 *   leaves the context active (a command cut by the piece boundary) is continued by the next piece's ELSP (a lite
 *   restore).
 * - `submitContext` (GVT-g's workloads): the image's PDP0 is pointed at the shadow PML4 and the image's descriptor
 *   (with a context id of the driver's) is written to ELSP.
 * The engine runs inside the ELSP write. Completion is read from the context status buffer in the status page
 * (i915's process_csb: from the driver's head to the write pointer at dword 0x1f), by the interrupt handler
 * (context-switch interrupt) and after every ELSP write; the figures of the switched-out context come from the
 * engine's record (`Execlists.lastOut`, the model's accounting, as `Engine.last` is for rings). The item completes
 * (`onComplete`, from a clock timer) when the engine's busy time has elapsed. A context that waits on a semaphore
 * stays in flight; its completion, found by the interrupt handler during another engine's run, continues the queue
 * from a clock timer at the same time (i915's tasklet), never inside the engine's run.
 *
 * Errors: a context switched out by an engine error is reported with its message; the driver clears RING_EIR and,
 * for its kernel context, moves the image's HEAD to the driver's TAIL (skipping the rest of the submission), so the
 * next item runs normally. A submission that ends inside a command (the engine waits for the rest, forever) is an
 * error too: the driver resets the engine (RESET_CTL handshake, GDRST), enables execlists again and skips the rest.
 *
 * While an engine executes, `executingOwner` names the owner of its in-flight item (restore, commands and save: every
 * DMA of that run), so the isolation checker attributes every DMA exactly.
 *
 * Invariants: at most one item in flight per engine; an engine with nothing in flight has no active context; the
 * driver's CSB head equals the engine's write pointer after each processing.
 */
import {
  defineTraceEvents,
  Errno,
  type Gma,
  KernelError,
  PAGE_SIZE,
  type SchedulingClock,
  type Tracer,
} from "../core/index.ts";
import { type Bdf, type PhysicalMemory, pfnToHpa } from "../host/index.ts";
import type {
  ContextSubmission,
  ContextSubmissionResult,
  ShadowBuffer,
  Submission,
  SubmissionResult,
} from "./contract.ts";
import type { ContextRun } from "./execlists.ts";
import type { GpuDevice } from "./gpu.ts";
import type { HostBuffers, MappedHostBuffer } from "./host-buffers.ts";
import { mmioRead, mmioWrite } from "./host-mmio.ts";
import { type EngineSubmissionStats, submissionStats, writeToRing } from "./host-submission.ts";
import {
  type ContextDescriptor,
  type CsbEvent,
  CTX_PDP0_LDW,
  CTX_PDP0_UDW,
  CTX_RING_HEAD,
  CTX_RING_TAIL,
  CTX_TIMESTAMP,
  LRC_PAGES,
  LRC_STATE_OFFSET,
  lrcDescriptor,
  lrcRegisterState,
} from "./lrc.ts";
import {
  ENGINE_RESET_DOMAIN,
  GEN6_GDRST,
  GEN8_CSB_ENTRIES,
  GEN8_CSB_READ_PTR_MASK,
  GEN8_CSB_WRITE_PTR_MASK,
  GEN8_CTX_STATUS_IDLE_ACTIVE,
  GEN8_CTX_STATUS_PREEMPTED,
  GFX_RUN_LIST_ENABLE,
  GT_ENGINE_BASE,
  GT_ENGINES,
  type GtEngineId,
  I915_HWS_CSB_BUF0_INDEX,
  I915_HWS_CSB_WRITE_INDEX,
  MI_NOOP,
  maskedBitDisable,
  maskedBitEnable,
  maskedField,
  RESET_CTL_REQUEST_RESET,
  RING_CONTEXT_STATUS_PTR,
  RING_EIR,
  RING_ELSP,
  RING_HEAD,
  RING_HWS_PGA,
  RING_MI_MODE,
  RING_MODE_GEN7,
  RING_RESET_CTL,
  STOP_RING,
} from "./regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "i915.context.submit": { bdf: string; engine: string; owner: number; lrca: number; ctxId: number; queued: number };
    "i915.context.complete": {
      bdf: string;
      engine: string;
      owner: number;
      ctxId: number;
      head: number;
      busyNs: number;
      commands: number;
      events: number;
      error: string | null;
    };
    "i915.engine.reset": { bdf: string; engine: string; reason: string };
  }
}
defineTraceEvents("gpu", {
  "i915.context.submit": "{bdf} {engine}: context {ctxId} (lrca {lrca}) for owner {owner} ({queued} queued)",
  "i915.context.complete":
    "{bdf} {engine}: context {ctxId} for owner {owner} switched out at head {head}: {commands} command(s), {busyNs} ns, {events} CSB event(s), error {error}",
  "i915.engine.reset": "{bdf} {engine}: engine reset: {reason}",
});

const TWO32 = 4294967296;
/** Context ids: kernel contexts (1 + engine index) << 5 as i915's ccid; shadow contexts from here, 0x20 apart. */
const FIRST_SHADOW_CCID = 0x10_0000;

type Work =
  | { readonly kind: "ring"; readonly s: Submission; off: number; readonly acc: Acc }
  | {
      readonly kind: "context";
      readonly cs: ContextSubmission;
      readonly ctxId: number;
      readonly acc: Acc;
      /** What `executingContext` returns while it runs (made once: the checker asks for every DMA piece). */
      readonly info: { readonly engine: GtEngineId; readonly label: string };
    };

/** What the engine's records of an item's elements add up to. */
interface Acc {
  commands: number;
  busyNs: number;
  faults: number;
  userInterrupts: number;
  error: string | undefined;
  events: CsbEvent[];
  last: ContextRun | undefined;
}

interface XEngine {
  readonly id: GtEngineId;
  readonly base: number;
  readonly lrc: MappedHostBuffer;
  readonly ring: MappedHostBuffer;
  readonly hws: MappedHostBuffer;
  readonly desc: ContextDescriptor;
  /** Where the driver writes next in the kernel ring. */
  tail: number;
  readonly queue: Work[];
  inFlight: Work | undefined;
  /** The descriptor written to ELSP is active (no completion read yet). */
  active: boolean;
  /** The driver is inside its own ELSP write for this engine (completions are handled by the writer). */
  submitting: boolean;
  /** A tasklet is scheduled to continue this engine. */
  tasklet: boolean;
  csbHead: number;
  submissions: number;
  commands: number;
  faults: number;
  errors: number;
  busyNs: number;
}

export interface HostExeclistsOptions {
  readonly bdf: Bdf;
  readonly gpu: GpuDevice;
  readonly physmem: PhysicalMemory;
  readonly clock: SchedulingClock;
  readonly tracer: Tracer;
  readonly buffers: HostBuffers;
  /** The kernel contexts' PPGTT root (the aliasing PPGTT's PML4). */
  readonly pml4: number;
  readonly ringBytes: number;
  /** Whose work this is not (a shadow buffer of this driver's?): validates `ContextSubmission.image`. */
  readonly isShadow: (b: ShadowBuffer) => boolean;
}

export class HostExeclists {
  readonly ringBytes: number;
  private readonly bdf: Bdf;
  private readonly gpu: GpuDevice;
  private readonly physmem: PhysicalMemory;
  private readonly clock: SchedulingClock;
  private readonly tracer: Tracer;
  private readonly buffers: HostBuffers;
  private readonly isShadow: (b: ShadowBuffer) => boolean;
  private readonly engineState: Record<GtEngineId, XEngine>;
  private readonly busyByOwner = new Map<number, number>();
  private nextCcid = FIRST_SHADOW_CCID;
  private stopped = false;

  constructor(opts: HostExeclistsOptions) {
    this.bdf = opts.bdf;
    this.gpu = opts.gpu;
    this.physmem = opts.physmem;
    this.clock = opts.clock;
    this.tracer = opts.tracer;
    this.buffers = opts.buffers;
    this.ringBytes = opts.ringBytes;
    this.isShadow = opts.isShadow;
    const state = {} as Record<GtEngineId, XEngine>;
    GT_ENGINES.forEach((id, i) => {
      const lrc = this.buffers.map("context", LRC_PAGES[id] * PAGE_SIZE);
      const ring = this.buffers.map("ring", opts.ringBytes);
      const hws = this.buffers.map("status page", PAGE_SIZE);
      this.physmem.fill(pfnToHpa(lrc.buf.pfn), 0, lrc.buf.size);
      this.physmem.fill(pfnToHpa(hws.buf.pfn), 0, PAGE_SIZE);
      const regs = lrcRegisterState(id, { ringStart: ring.gma, ringBytes: opts.ringBytes, pml4: opts.pml4 });
      this.physmem.write(
        pfnToHpa(lrc.buf.pfn, LRC_STATE_OFFSET),
        new Uint8Array(regs.buffer, regs.byteOffset, regs.byteLength),
      );
      const e: XEngine = {
        id,
        base: GT_ENGINE_BASE[id],
        lrc,
        ring,
        hws,
        desc: lrcDescriptor(lrc.gma, (1 + i) << 5),
        tail: 0,
        queue: [],
        inFlight: undefined,
        active: false,
        submitting: false,
        tasklet: false,
        csbHead: GEN8_CSB_ENTRIES - 1,
        submissions: 0,
        commands: 0,
        faults: 0,
        errors: 0,
        busyNs: 0,
      };
      state[id] = e;
      this.enable(e);
    });
    this.engineState = state;
  }

  /** enable_execlists + reset_csb_pointers: run list on, STOP_RING off, status page, CSB pointers at 5. */
  private enable(e: XEngine): void {
    mmioWrite(this.gpu, e.base + RING_HWS_PGA, e.hws.gma);
    mmioWrite(this.gpu, e.base + RING_MODE_GEN7, maskedBitEnable(GFX_RUN_LIST_ENABLE));
    mmioWrite(this.gpu, e.base + RING_MI_MODE, maskedBitDisable(STOP_RING));
    const last = GEN8_CSB_ENTRIES - 1;
    for (let i = 0; i < 2 * GEN8_CSB_ENTRIES; i++) this.hwsWrite(e, I915_HWS_CSB_BUF0_INDEX + i, 0xffffffff);
    this.hwsWrite(e, I915_HWS_CSB_WRITE_INDEX, last);
    e.csbHead = last;
    mmioWrite(
      this.gpu,
      e.base + RING_CONTEXT_STATUS_PTR,
      maskedField(GEN8_CSB_READ_PTR_MASK, last << 8) | maskedField(GEN8_CSB_WRITE_PTR_MASK, last),
    );
  }

  // ---- the HostGpu face ------------------------------------------------------------------------------------------

  submit(s: Submission): void {
    const e = this.engineState[s.engine];
    if (e === undefined || (s.engine !== "rcs" && s.engine !== "bcs")) {
      throw new KernelError(Errno.EINVAL, `engine ${String(s.engine)} does not exist on ${this.bdf} (rcs, bcs)`);
    }
    if (!(s.commands instanceof Uint32Array)) {
      throw new KernelError(Errno.EINVAL, "submission commands must be a Uint32Array of dwords");
    }
    e.queue.push({ kind: "ring", s, off: 0, acc: newAcc() });
    if (this.tracer.enabled) {
      this.tracer.emit("i915.submit", {
        bdf: this.bdf,
        engine: e.id,
        owner: s.owner,
        dwords: s.commands.length,
        queued: e.queue.length,
      });
    }
    this.startNext(e);
  }

  submitContext(cs: ContextSubmission): void {
    const e = this.engineState[cs.engine];
    if (e === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `engine ${String(cs.engine)} does not exist on ${this.bdf} (${GT_ENGINES.join(", ")})`,
      );
    }
    if (!this.isShadow(cs.image) || cs.image.size < LRC_STATE_OFFSET + PAGE_SIZE) {
      throw new KernelError(
        Errno.EINVAL,
        `context image at GMA 0x${cs.image.gma.toString(16)} is not a live shadow buffer of ${this.bdf} of at least 2 pages`,
      );
    }
    if (!Number.isSafeInteger(cs.pml4) || cs.pml4 <= 0 || cs.pml4 % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `PML4 DMA address ${cs.pml4} is not a page-aligned address above 0`);
    }
    const ctxId = this.nextCcid;
    this.nextCcid = this.nextCcid + 0x20 >= TWO32 ? FIRST_SHADOW_CCID : this.nextCcid + 0x20;
    const info = { engine: e.id, label: cs.label ?? `ctx 0x${ctxId.toString(16)}` };
    e.queue.push({ kind: "context", cs, ctxId, acc: newAcc(), info });
    if (this.tracer.enabled) {
      this.tracer.emit("i915.context.submit", {
        bdf: this.bdf,
        engine: e.id,
        owner: cs.owner,
        lrca: cs.image.gma,
        ctxId,
        queued: e.queue.length,
      });
    }
    this.startNext(e);
  }

  busy(): boolean {
    for (const e of Object.values(this.engineState)) if (e.inFlight !== undefined || e.queue.length > 0) return true;
    return false;
  }

  /** Stops every engine (STOP_RING, run list off) and frees the contexts, rings and status pages (idle only). */
  stop(): void {
    this.stopped = true;
    for (const e of Object.values(this.engineState)) {
      mmioWrite(this.gpu, e.base + RING_MI_MODE, maskedBitEnable(STOP_RING));
      mmioWrite(this.gpu, e.base + RING_MODE_GEN7, maskedBitDisable(GFX_RUN_LIST_ENABLE));
      this.buffers.unmap(e.lrc);
      this.buffers.unmap(e.ring);
      this.buffers.unmap(e.hws);
    }
  }

  stats(id: GtEngineId): EngineSubmissionStats {
    return submissionStats(this.engineState[id]);
  }

  /** The owner of the work the executing engine runs, or -1. */
  get executingOwner(): number {
    const id = this.gpu.executingEngine;
    const w = id === undefined ? undefined : this.engineState[id].inFlight;
    return w === undefined ? -1 : w.kind === "ring" ? w.s.owner : w.cs.owner;
  }

  /** The engine and the label of the context the executing engine runs (a shadow context's), or undefined. */
  get executingContext(): { readonly engine: GtEngineId; readonly label: string } | undefined {
    const id = this.gpu.executingEngine;
    const w = id === undefined ? undefined : this.engineState[id].inFlight;
    return w === undefined || w.kind !== "context" ? undefined : w.info;
  }

  ownerBusyNs(owner: number): number {
    return this.busyByOwner.get(owner) ?? 0;
  }

  ringGma(id: GtEngineId): Gma {
    return this.engineState[id].ring.gma;
  }

  /** GMA of an engine's kernel context image and status page (for tests and the isolation checker). */
  contextGma(id: GtEngineId): { readonly lrca: Gma; readonly hws: Gma } {
    const e = this.engineState[id];
    return { lrca: e.lrc.gma, hws: e.hws.gma };
  }

  /** The interrupt handler saw a context-switch interrupt of `id`. */
  contextSwitchInterrupt(id: GtEngineId): void {
    this.processCsb(this.engineState[id]);
  }

  // ---- the queue ---------------------------------------------------------------------------------------------------

  private startNext(e: XEngine): void {
    if (e.inFlight !== undefined || this.stopped) return;
    const w = e.queue.shift();
    if (w === undefined) return;
    e.inFlight = w;
    this.advance(e);
  }

  /** Drives the in-flight item as far as it goes now (outside any engine run). */
  private advance(e: XEngine): void {
    const w = e.inFlight;
    if (w === undefined || e.active) return;
    if (w.acc.error !== undefined) {
      if (w.kind === "ring") this.recoverKernel(e);
      this.finish(e, w);
      return;
    }
    if (w.kind === "context") {
      if (w.acc.last !== undefined) {
        this.finish(e, w);
        return;
      }
      const pml4 = w.cs.pml4;
      w.cs.image.write(LRC_STATE_OFFSET + 4 * CTX_PDP0_UDW, u32(Math.floor(pml4 / TWO32)));
      w.cs.image.write(LRC_STATE_OFFSET + 4 * CTX_PDP0_LDW, u32(pml4 % TWO32));
      this.elsp(e, lrcDescriptor(w.cs.image.gma, w.ctxId));
      if (e.active && !this.gpu.engine(e.id).waiting) this.endsInsideCommand(e, w);
      else if (!e.active) this.finish(e, w);
      return;
    }
    this.pumpRing(e, w);
  }

  /** Copies the rest of a ring submission into the kernel ring, piece by piece, each submitted with ELSP. */
  private pumpRing(e: XEngine, w: Work & { kind: "ring" }): void {
    const cmds = w.s.commands;
    const total = cmds.length;
    const len = this.ringBytes;
    while (w.off < total) {
      const head = e.active ? mmioRead(this.gpu, e.base + RING_HEAD) : this.lrcRead(e, CTX_RING_HEAD);
      const used = (e.tail - head + len) % len;
      // Keep 8 bytes free: HEAD == TAIL means empty. Pieces are whole qwords except the last.
      const room = Math.floor((len - 8 - used) / 8) * 2;
      const n = Math.min(total - w.off, room);
      if (n <= 0) {
        w.acc.error = `ring of ${len} bytes is full with a command the engine cannot complete`;
        this.resetEngine(e, w.acc.error);
        this.finish(e, w);
        return;
      }
      this.writeRing(e, cmds, w.off, n);
      w.off += n;
      if (w.off === total && n % 2 === 1) this.writeRing(e, PAD, 0, 1);
      this.lrcWrite(e, CTX_RING_TAIL, e.tail);
      this.elsp(e, e.desc);
      if (w.acc.error !== undefined) {
        this.recoverKernel(e);
        this.finish(e, w);
        return;
      }
      // A wait on a semaphore: the completion comes later (the interrupt handler, then a tasklet).
      if (e.active && this.gpu.engine(e.id).waiting) return;
    }
    if (e.active) {
      this.endsInsideCommand(e, w);
      return;
    }
    this.finish(e, w);
  }

  /** The item's last command runs past what was submitted: the engine waits for ever. Reset it, skip the rest. */
  private endsInsideCommand(e: XEngine, w: Work): void {
    w.acc.error = "the submission ends inside a command (the engine is waiting for the rest of it)";
    this.resetEngine(e, w.acc.error);
    this.finish(e, w);
  }

  private finish(e: XEngine, w: Work): void {
    const a = w.acc;
    const base: SubmissionResult = {
      busyNs: a.busyNs,
      commands: a.commands,
      faults: a.faults,
      userInterrupts: a.userInterrupts,
      ...(a.error !== undefined ? { error: a.error } : {}),
    };
    let result: SubmissionResult | ContextSubmissionResult = base;
    if (w.kind === "context") {
      const img = new Uint8Array(4);
      const word = (i: number): number => {
        w.cs.image.read(LRC_STATE_OFFSET + 4 * i, img);
        return new DataView(img.buffer).getUint32(0, true);
      };
      result = {
        ...base,
        ctxId: w.ctxId,
        head: word(CTX_RING_HEAD),
        tail: word(CTX_RING_TAIL),
        timestamp: word(CTX_TIMESTAMP),
        events: a.events,
      };
    }
    const doneAt = Math.max(this.clock.now(), this.gpu.engine(e.id).busyUntil);
    this.clock.at(doneAt, () => this.complete(e, w, result));
  }

  private complete(e: XEngine, w: Work, result: SubmissionResult | ContextSubmissionResult): void {
    e.inFlight = undefined;
    e.submissions++;
    e.commands += result.commands;
    e.faults += result.faults;
    e.busyNs += result.busyNs;
    if (result.error !== undefined) e.errors++;
    const owner = w.kind === "ring" ? w.s.owner : w.cs.owner;
    this.busyByOwner.set(owner, (this.busyByOwner.get(owner) ?? 0) + result.busyNs);
    if (this.tracer.enabled) {
      if (w.kind === "ring") {
        this.tracer.emit("i915.complete", {
          bdf: this.bdf,
          engine: e.id,
          owner,
          busyNs: result.busyNs,
          commands: result.commands,
          faults: result.faults,
          error: result.error ?? null,
        });
      } else {
        const r = result as ContextSubmissionResult;
        this.tracer.emit("i915.context.complete", {
          bdf: this.bdf,
          engine: e.id,
          owner,
          ctxId: r.ctxId,
          head: r.head,
          busyNs: r.busyNs,
          commands: r.commands,
          events: r.events.length,
          error: r.error ?? null,
        });
      }
    }
    try {
      if (w.kind === "ring") w.s.onComplete(result);
      else w.cs.onComplete(result as ContextSubmissionResult);
    } finally {
      this.startNext(e);
    }
  }

  // ---- ELSP and the CSB --------------------------------------------------------------------------------------------

  /** execlists_submit_ports with one element; then process_csb (the handler may already have). */
  private elsp(e: XEngine, d: ContextDescriptor): void {
    e.active = true;
    e.submitting = true;
    try {
      mmioWrite(this.gpu, e.base + RING_ELSP, 0);
      mmioWrite(this.gpu, e.base + RING_ELSP, 0);
      mmioWrite(this.gpu, e.base + RING_ELSP, d.hi);
      mmioWrite(this.gpu, e.base + RING_ELSP, d.lo);
    } finally {
      e.submitting = false;
    }
    this.processCsb(e);
  }

  /** Reads the CSB entries from the driver's head to the write pointer; an entry that is not a promotion ends the item's element. */
  private processCsb(e: XEngine): void {
    const wp = this.hwsRead(e, I915_HWS_CSB_WRITE_INDEX);
    if (wp >= GEN8_CSB_ENTRIES) return;
    const w = e.inFlight;
    while (e.csbHead !== wp) {
      e.csbHead = (e.csbHead + 1) % GEN8_CSB_ENTRIES;
      const status = this.hwsRead(e, I915_HWS_CSB_BUF0_INDEX + 2 * e.csbHead);
      const ctxId = this.hwsRead(e, I915_HWS_CSB_BUF0_INDEX + 2 * e.csbHead + 1);
      this.hwsWrite(e, I915_HWS_CSB_BUF0_INDEX + 2 * e.csbHead, 0xffffffff);
      this.hwsWrite(e, I915_HWS_CSB_BUF0_INDEX + 2 * e.csbHead + 1, 0xffffffff);
      if (w === undefined) continue;
      w.acc.events.push({ status, ctxId });
      if ((status & (GEN8_CTX_STATUS_IDLE_ACTIVE | GEN8_CTX_STATUS_PREEMPTED)) !== 0) continue;
      // The element is out: its record is the engine's last switch-out.
      e.active = false;
      const run = this.gpu.engine(e.id).execlists.lastOut;
      if (run !== undefined && run.ctxId === ctxId) {
        w.acc.commands += run.commands;
        w.acc.busyNs += run.busyNs;
        w.acc.faults += run.faults;
        w.acc.userInterrupts += run.userInterrupts;
        w.acc.last = run;
        if (run.error !== undefined && w.acc.error === undefined) w.acc.error = run.error;
      }
      if (run?.error !== undefined) mmioWrite(this.gpu, e.base + RING_EIR, 0xffffffff);
      // Completed outside the driver's own ELSP write (a semaphore released by another engine's run): go on from a
      // tasklet, never inside the engine's run.
      if (!e.submitting && !e.tasklet) {
        e.tasklet = true;
        this.clock.at(this.clock.now(), () => {
          e.tasklet = false;
          this.advance(e);
        });
      }
    }
  }

  // ---- recovery ----------------------------------------------------------------------------------------------------

  /** After an error in the kernel context: skip the rest of the submission (the engine's error is cleared). */
  private recoverKernel(e: XEngine): void {
    this.lrcWrite(e, CTX_RING_HEAD, e.tail);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.recover", {
        bdf: this.bdf,
        engine: e.id,
        head: e.tail,
        message: e.inFlight?.acc.error ?? "",
      });
    }
  }

  /** gen8_engine_reset: RESET_CTL handshake, GDRST of the engine, execlists enabled again, the kernel ring skipped. */
  private resetEngine(e: XEngine, reason: string): void {
    mmioWrite(this.gpu, e.base + RING_RESET_CTL, maskedBitEnable(RESET_CTL_REQUEST_RESET));
    mmioWrite(this.gpu, GEN6_GDRST, ENGINE_RESET_DOMAIN[e.id]);
    mmioWrite(this.gpu, e.base + RING_RESET_CTL, maskedBitDisable(RESET_CTL_REQUEST_RESET));
    this.enable(e);
    e.active = false;
    this.lrcWrite(e, CTX_RING_HEAD, e.tail);
    if (this.tracer.enabled) this.tracer.emit("i915.engine.reset", { bdf: this.bdf, engine: e.id, reason });
  }

  // ---- the kernel's mappings of its buffers -------------------------------------------------------------------------

  private writeRing(e: XEngine, cmds: Uint32Array, off: number, n: number): void {
    e.tail = writeToRing(this.physmem, e.ring.buf.pfn, this.ringBytes, e.tail, cmds, off, n);
  }

  private lrcRead(e: XEngine, index: number): number {
    return this.physmem.readU32(pfnToHpa(e.lrc.buf.pfn, LRC_STATE_OFFSET + 4 * index));
  }

  private lrcWrite(e: XEngine, index: number, v: number): void {
    this.physmem.writeU32(pfnToHpa(e.lrc.buf.pfn, LRC_STATE_OFFSET + 4 * index), v >>> 0);
  }

  private hwsRead(e: XEngine, index: number): number {
    return this.physmem.readU32(pfnToHpa(e.hws.buf.pfn, 4 * index));
  }

  private hwsWrite(e: XEngine, index: number, v: number): void {
    this.physmem.writeU32(pfnToHpa(e.hws.buf.pfn, 4 * index), v >>> 0);
  }
}

const PAD = new Uint32Array([MI_NOOP]);

function newAcc(): Acc {
  return { commands: 0, busyNs: 0, faults: 0, userInterrupts: 0, error: undefined, events: [], last: undefined };
}

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}
