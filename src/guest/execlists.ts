/**
 * Execlist submission as the guest driver does it (i915's intel_execlists_submission.c, cut down to one port): a
 * logical ring context per engine (an image of LRC_PAGES pages and a ring, both in graphics memory through the GGTT;
 * PDP0 = the guest-physical address of a PPGTT's PML4), the ELSP port of the engine, and the context status buffer
 * (CSB) the engine writes into the driver's status page for that engine. Written from docs/gpu-programming.md 6.6,
 * 6.7, 10.2 and 10.11 only.
 *
 * `LogicalContext` is the `RingIo` of its ring: HEAD is the image's CTX_RING_HEAD (the engine, or the vGPU, writes it
 * back when the context is switched out: the datasheet's "software never needs to update CTX_RING_HEAD"), and
 * publishing a TAIL queues one submission on the port. `ExeclistPort` writes one ELSP per submission (element 0
 * only; CTX_RING_TAIL = that submission's TAIL, written just before), so each submission is one unit of work for the
 * device, as each RING_TAIL write is in ring mode (a vGPU schedules and audits per ELSP write). At most
 * `MAX_IN_FLIGHT` (2) ELSP writes are outstanding between two completions: the first to an idle engine, the second a
 * lite restore of the same context (PREEMPTED | LITE_RESTORE); a third could find both execlist slots taken (a vGPU
 * then hangs the engine, as GVT-g), so it waits for the entry that completes the context (COMPLETE without
 * IDLE_TO_ACTIVE or PREEMPTED, the datasheet's rule). i915 coalesces requests into one TAIL instead; keeping them
 * apart keeps the scheduler's time slices as fine as the guest's submissions.
 *
 * Hangs: on a vGPU a context the vendor driver refuses never completes (no CSB entry: GVT-g's hang). The driver then
 * resets the engine as i915 does (RING_RESET_CTL request, wait for READY_TO_RESET, GEN6_GDRST of the engine's domain),
 * enables execlists again and forgets what was in flight (`reset`); the caller skips the context's ring to its TAIL.
 *
 * Invariants: `active` is undefined or the context whose descriptor was written last; 0 <= `inFlight` <= 2; `csbHead`
 * is in 0..5; submissions reach the device in the order they were published, whatever their context (the engine's
 * breadcrumbs then complete in order); a submission of another context than `active` waits for the COMPLETE.
 */
import { defineTraceEvents, Errno, type Gma, type Gpa, gpa, hex, KernelError, type Tracer } from "../core/index.ts";
import {
  type ContextDescriptor,
  CTX_RING_HEAD,
  CTX_RING_TAIL,
  csbStatusName,
  ENGINE_BASE,
  ENGINE_RESET_DOMAIN,
  type EngineId,
  GEN6_GDRST,
  GEN8_CSB_ENTRIES,
  GEN8_CTX_STATUS_IDLE_ACTIVE,
  GEN8_CTX_STATUS_PREEMPTED,
  GFX_RUN_LIST_ENABLE,
  I915_HWS_CSB_BUF0_INDEX,
  I915_HWS_CSB_WRITE_INDEX,
  LRC_STATE_OFFSET,
  lrcDescriptor,
  lrcRegisterState,
  maskedBitDisable,
  maskedBitEnable,
  RESET_CTL_READY_TO_RESET,
  RESET_CTL_REQUEST_RESET,
  RING_CONTEXT_STATUS_PTR,
  RING_ELSP,
  RING_HEAD,
  RING_HWS_PGA,
  RING_MI_MODE,
  RING_MODE_GEN7,
  RING_RESET_CTL,
  RING_TAIL,
  STOP_RING,
} from "../gpu/index.ts";
import type { GuestRam } from "./platform.ts";
import type { GuestPpgtt } from "./ppgtt.ts";
import { GuestRing, type RingIo } from "./ring.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "guest.execlists.enable": { engine: string; hws: number };
    "guest.context.create": { engine: string; ccid: number; lrca: number; ring: number; pml4: number };
    "guest.elsp": { engine: string; ccid: number; lrca: number; tail: number };
    "guest.csb": { engine: string; slot: number; status: string; ccid: number };
    "guest.engine.reset": { engine: string; ccid: number; reason: string };
  }
}
defineTraceEvents("guest", {
  "guest.execlists.enable": "guest: {engine} in execlist mode, status page at gma {hws}",
  "guest.context.create": "guest: {engine} context {ccid}: image at gma {lrca}, ring at gma {ring}, PML4 at gpa {pml4}",
  "guest.elsp": "guest: {engine} ELSP context {ccid} (LRCA {lrca}), CTX_RING_TAIL = {tail}",
  "guest.csb": "guest: {engine} CSB[{slot}] {status} (context {ccid})",
  "guest.engine.reset": "guest: {engine} reset with context {ccid} in flight: {reason}",
});

/** The driver's view of a buffer in graphics memory (structurally `GpuBuffer` of driver.ts). */
export interface GgttBuffer {
  readonly gma: Gma;
  readonly gpa: Gpa;
  readonly size: number;
}

/** What a port needs of its driver. */
export interface ExeclistHost {
  readonly memory: GuestRam;
  mmioRead32(offset: number): number;
  mmioWrite32(offset: number, value: number): void;
  /** Lets guest time pass until `done()` or the driver's timeout. */
  wait(done: () => boolean): boolean;
  readonly tracer: Tracer | undefined;
}

/** ELSP writes outstanding between two completions: one to an idle engine, one lite restore. */
export const MAX_IN_FLIGHT = 2;
/** The CSB's reset position: the next entry goes to slot 0. */
const CSB_RESET_HEAD = GEN8_CSB_ENTRIES - 1;
/** RING_CONTEXT_STATUS_PTR as i915's reset_csb_pointers writes it: read and write pointers 5 (masked). */
const CSB_PTR_RESET = 0x0707_0505;

/** One engine's logical ring context of the driver. */
export class LogicalContext implements RingIo {
  readonly ring: GuestRing;
  readonly descriptor: ContextDescriptor;
  /** The TAIL published last. */
  publishedTail = 0;
  /** CTX_RING_TAIL of the last ELSP. */
  submittedTail = 0;
  private readonly state: number;

  constructor(
    readonly port: ExeclistPort,
    /** The image (LRC_PAGES pages; page 1 the register state), GGTT-mapped. */
    readonly image: GgttBuffer,
    readonly ringBuffer: GgttBuffer,
    readonly ppgtt: GuestPpgtt,
    /** The context id the CSB reports (i915: (1 + tag) << 5). */
    readonly ccid: number,
  ) {
    const mem = port.host.memory;
    mem.write(image.gpa, new Uint8Array(image.size));
    mem.write(ringBuffer.gpa, new Uint8Array(ringBuffer.size));
    const regs = lrcRegisterState(port.engine, {
      ringStart: ringBuffer.gma,
      ringBytes: ringBuffer.size,
      pml4: ppgtt.pml4,
    });
    mem.write(gpa(image.gpa + LRC_STATE_OFFSET), new Uint8Array(regs.buffer));
    this.state = image.gpa + LRC_STATE_OFFSET;
    this.descriptor = lrcDescriptor(image.gma, ccid);
    this.ring = new GuestRing(mem, this, ringBuffer.gpa, ringBuffer.gma, ringBuffer.size);
    const t = port.host.tracer;
    if (t?.enabled) {
      t.emit("guest.context.create", {
        engine: port.engine,
        ccid,
        lrca: image.gma,
        ring: ringBuffer.gma,
        pml4: ppgtt.pml4,
      });
    }
  }

  /** A register-state dword (a CTX_* index). */
  reg(index: number): number {
    return this.port.host.memory.readU32(gpa(this.state + 4 * index));
  }

  setReg(index: number, value: number): void {
    this.port.host.memory.writeU32(gpa(this.state + 4 * index), value >>> 0);
  }

  /** RingIo: HEAD and TAIL are the image's; other registers are the engine's. */
  readEngine(offset: number): number {
    if (offset === RING_HEAD) return this.reg(CTX_RING_HEAD);
    if (offset === RING_TAIL) return this.reg(CTX_RING_TAIL);
    return this.port.host.mmioRead32(this.port.base + offset);
  }

  /** RingIo: publishing TAIL submits the context. */
  writeEngine(offset: number, value: number): void {
    if (offset === RING_TAIL) this.port.submit(this, value);
    else if (offset === RING_HEAD) this.setReg(CTX_RING_HEAD, value);
    else this.port.host.mmioWrite32(this.port.base + offset, value);
  }

  wait(done: () => boolean): boolean {
    return this.port.host.wait(done);
  }

  /** After a hang or an error: skip everything published (HEAD = TAIL = the last published TAIL). */
  skipToTail(): void {
    this.setReg(CTX_RING_HEAD, this.publishedTail);
    this.setReg(CTX_RING_TAIL, this.publishedTail);
    this.submittedTail = this.publishedTail;
    this.ring.resync(this.publishedTail);
  }
}

export interface PortStats {
  readonly elspWrites: number;
  readonly csbEntries: number;
  readonly completions: number;
  readonly resets: number;
}

/** The ELSP port and CSB of one engine. */
export class ExeclistPort {
  readonly base: number;
  /** The context whose descriptor is in flight. */
  active: LogicalContext | undefined;
  /** ELSP writes since the engine was last idle (at most MAX_IN_FLIGHT). */
  inFlight = 0;
  private pumping = false;
  /** The last CSB slot read (5 after a reset: the next entry is slot 0). */
  csbHead = CSB_RESET_HEAD;
  /** Published submissions not yet written to ELSP, oldest first (one ELSP each). */
  private readonly waiting: { readonly ctx: LogicalContext; readonly tail: number }[] = [];
  private elspWrites = 0;
  private csbEntries = 0;
  private completions = 0;
  private resets = 0;

  constructor(
    readonly host: ExeclistHost,
    readonly engine: EngineId,
    /** This engine's status page (the CSB lands there), GGTT-mapped. */
    readonly hws: GgttBuffer,
    /** Whether the engine stopped on an error (no ELSP then: a halted engine ignores it). */
    private readonly halted: () => boolean,
  ) {
    this.base = ENGINE_BASE[engine];
  }

  /** Datasheet 6.6 "Enabling": status page, RUN_LIST, STOP_RING cleared, CSB emptied, pointers reset. */
  enable(): void {
    const h = this.host;
    h.mmioWrite32(this.base + RING_HWS_PGA, this.hws.gma);
    h.mmioWrite32(this.base + RING_MODE_GEN7, maskedBitEnable(GFX_RUN_LIST_ENABLE));
    h.mmioWrite32(this.base + RING_MI_MODE, maskedBitDisable(STOP_RING));
    for (let i = 0; i < 2 * GEN8_CSB_ENTRIES; i++) h.memory.writeU32(this.hwsDword(I915_HWS_CSB_BUF0_INDEX + i), ~0);
    h.memory.writeU32(this.hwsDword(I915_HWS_CSB_WRITE_INDEX), CSB_RESET_HEAD);
    h.mmioWrite32(this.base + RING_CONTEXT_STATUS_PTR, CSB_PTR_RESET);
    this.csbHead = CSB_RESET_HEAD;
    if ((h.mmioRead32(this.base + RING_MODE_GEN7) & GFX_RUN_LIST_ENABLE) === 0) {
      throw new KernelError(
        Errno.EIO,
        `${this.engine}: GFX_MODE reads ${hex(h.mmioRead32(this.base + RING_MODE_GEN7))} after enabling RUN_LIST ` +
          "(the device does not take execlists: open the driver with submission 'ring')",
      );
    }
    if (h.tracer?.enabled) h.tracer.emit("guest.execlists.enable", { engine: this.engine, hws: this.hws.gma });
  }

  /** `ctx` published work up to `tail`: one submission, ELSP'd now or when the port has room. */
  submit(ctx: LogicalContext, tail: number): void {
    ctx.publishedTail = tail;
    this.waiting.push({ ctx, tail });
    this.dequeue();
  }

  /** Reads the CSB entries the engine wrote since the last call; a completion lets a waiting context go in. */
  processCsb(): void {
    const mem = this.host.memory;
    const tail = mem.readU32(this.hwsDword(I915_HWS_CSB_WRITE_INDEX));
    if (tail >= GEN8_CSB_ENTRIES) return;
    while (this.csbHead !== tail) {
      this.csbHead = (this.csbHead + 1) % GEN8_CSB_ENTRIES;
      const at = I915_HWS_CSB_BUF0_INDEX + 2 * this.csbHead;
      const status = mem.readU32(this.hwsDword(at));
      const ccid = mem.readU32(this.hwsDword(at + 1));
      mem.writeU32(this.hwsDword(at), ~0);
      this.csbEntries++;
      if (this.host.tracer?.enabled) {
        this.host.tracer.emit("guest.csb", {
          engine: this.engine,
          slot: this.csbHead,
          status: csbStatusName(status),
          ccid,
        });
      }
      // gen8_csb_parse: IDLE_TO_ACTIVE or PREEMPTED promote the submission; anything else completes element 0.
      if ((status & (GEN8_CTX_STATUS_IDLE_ACTIVE | GEN8_CTX_STATUS_PREEMPTED)) !== 0) continue;
      if (this.active !== undefined && this.active.descriptor.hi === ccid) {
        this.active = undefined;
        this.inFlight = 0;
        this.completions++;
      }
    }
    this.dequeue();
  }

  /** Submissions published and not yet written to ELSP. */
  get queued(): number {
    return this.waiting.length;
  }

  /**
   * Submits waiting work in order while the port has room and the engine is not halted: a submission of the context
   * in flight goes in as a lite restore, one of another context waits until the one in flight completes.
   */
  dequeue(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.inFlight < MAX_IN_FLIGHT && this.waiting.length > 0 && !this.halted()) {
        const next = this.waiting[0]!;
        if (this.active !== undefined && this.active !== next.ctx) return;
        this.waiting.shift();
        this.elsp(next.ctx, next.tail);
      }
    } finally {
      this.pumping = false;
    }
  }

  /** i915's engine reset: request, wait for READY_TO_RESET, GDRST of the engine's domain; then execlists again. */
  reset(reason: string): void {
    const h = this.host;
    const ccid = this.active?.ccid ?? 0;
    h.mmioWrite32(this.base + RING_RESET_CTL, maskedBitEnable(RESET_CTL_REQUEST_RESET));
    h.wait(() => (h.mmioRead32(this.base + RING_RESET_CTL) & RESET_CTL_READY_TO_RESET) !== 0);
    h.mmioWrite32(GEN6_GDRST, ENGINE_RESET_DOMAIN[this.engine]);
    h.wait(() => (h.mmioRead32(GEN6_GDRST) & ENGINE_RESET_DOMAIN[this.engine]) === 0);
    h.mmioWrite32(this.base + RING_RESET_CTL, maskedBitDisable(RESET_CTL_REQUEST_RESET));
    this.forget();
    this.resets++;
    if (h.tracer?.enabled) h.tracer.emit("guest.engine.reset", { engine: this.engine, ccid, reason });
    this.enable();
  }

  /** Forgets what was in flight and waiting (after an error the engine reported: its CSB already said so). */
  forget(): void {
    this.active = undefined;
    this.inFlight = 0;
    this.waiting.length = 0;
  }

  /** Leaves execlist mode (shutdown). */
  disable(): void {
    this.host.mmioWrite32(this.base + RING_MODE_GEN7, maskedBitDisable(GFX_RUN_LIST_ENABLE));
    this.forget();
  }

  stats(): PortStats {
    return {
      elspWrites: this.elspWrites,
      csbEntries: this.csbEntries,
      completions: this.completions,
      resets: this.resets,
    };
  }

  /** Element 1 (absent: 0, 0) high, low, then element 0 high, low: the fourth write submits. */
  private elsp(ctx: LogicalContext, tail: number): void {
    ctx.setReg(CTX_RING_TAIL, tail);
    ctx.submittedTail = tail;
    // In flight before the write: on a whole GPU the engine runs (and interrupts) inside it.
    this.active = ctx;
    this.inFlight++;
    this.elspWrites++;
    if (this.host.tracer?.enabled) {
      this.host.tracer.emit("guest.elsp", {
        engine: this.engine,
        ccid: ctx.ccid,
        lrca: ctx.image.gma,
        tail,
      });
    }
    const at = this.base + RING_ELSP;
    this.host.mmioWrite32(at, 0);
    this.host.mmioWrite32(at, 0);
    this.host.mmioWrite32(at, ctx.descriptor.hi);
    this.host.mmioWrite32(at, ctx.descriptor.lo);
  }

  private hwsDword(index: number): Gpa {
    return gpa(this.hws.gpa + 4 * index);
  }
}

/** PVINFO `pdp[0]` (lo, hi) and the g2v_notify values for a 4-level PPGTT (datasheet 10.1, 10.2). */
export const VGT_PVINFO_PDP0 = 0x838;
export const VGT_G2V_PPGTT_L4_CREATE = 4;
export const VGT_G2V_PPGTT_L4_DESTROY = 5;
