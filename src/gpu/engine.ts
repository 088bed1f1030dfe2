/**
 * One command streamer (engine) of the GPU: its registers, the command parser and the execution of the commands the
 * model implements. An engine runs in one of two submission modes, chosen by GFX_MODE's RUN_LIST bit:
 *
 * - Legacy ring buffer (RUN_LIST clear, the power-on mode): RING_START is the GMA of the ring (page aligned),
 *   RING_CTL its length ((pages - 1) << 12) and valid bit, RING_HEAD the byte offset the engine reads next, RING_TAIL
 *   the byte offset software has written up to (8-byte aligned). HEAD == TAIL means empty; both wrap to 0 at the
 *   ring's length, and a command may straddle the wrap. A write to RING_TAIL runs the engine from HEAD to TAIL inside
 *   that write. There is no PPGTT in this mode.
 * - Execlists (RUN_LIST set): the ring registers are the running context's, restored from and saved to its logical
 *   ring context image; software submits contexts through ELSP and hears of switches through the context status
 *   buffer (execlists.ts). Commands may address the context's PPGTT (ppgtt.ts).
 *
 * Execution is synchronous: there are no threads in the model. A run goes until the ring is empty (HEAD == TAIL with
 * no batch in progress), the next command is not wholly before TAIL (the engine waits for the rest, as hardware
 * does), an MI_SEMAPHORE_WAIT is not satisfied (the engine waits at it: `waiting`), STOP_RING is set, or an error
 * stops it. A waiting engine is re-evaluated when another engine of the GPU has executed commands, on an ELSP
 * submission to it, and on `GpuDevice.pollSemaphores` (gpu.ts). Time is accounted, not spent: the cost model
 * (cost.ts) turns what ran into busy ns, and `busyUntil` is the engine's timeline on the injected clock (a run starts
 * at max(now, busyUntil)). `last` summarises the most recent run.
 *
 * Commands (gen8/9 encodings, command-table.ts; the datasheet's section 7 for each): MI_NOOP, MI_USER_INTERRUPT,
 * MI_ARB_CHECK, MI_ARB_ON_OFF, MI_BATCH_BUFFER_START (GGTT, or PPGTT in a context; one level: a batch may not start
 * another), MI_BATCH_BUFFER_END (ends a batch; a no-op in the ring), MI_STORE_DATA_IMM (GGTT or PPGTT, dword or
 * qword), MI_LOAD_REGISTER_IMM (writes the GPU's own MMIO registers, as a CPU write would), MI_FLUSH_DW and
 * PIPE_CONTROL (with their post-sync writes), MI_SEMAPHORE_WAIT (poll mode), XY_COLOR_BLT and XY_SRC_COPY_BLT
 * (32 bpp, linear), and every other render-client command decoded by length and skipped (there is no 3D or media
 * pipeline). The render and blitter engines accept every command (real hardware takes 2D commands on the blitter and
 * render commands on the render engine only); the video engines (vcs, vecs) accept MI commands only.
 *
 * Errors stop the engine: the failing command's RING_EIR bit is set (I915_ERROR_INSTRUCTION for a command it cannot
 * execute, I915_ERROR_PAGE_TABLE for a PPGTT or IOMMU fault), GT_CS_MASTER_ERROR_INTERRUPT is raised, and the engine
 * stays halted (TAIL writes and ELSP submissions do nothing) until software clears RING_EIR by writing 1s, or resets
 * the engine (GDRST). After an unknown command in the ring, HEAD stays at it; after a command that fails, HEAD is
 * past it (an IOMMU fault stopped it at the faulting page). ACTHD holds the GMA of the failing command. A batch
 * buffer is abandoned on error and HEAD is past its MI_BATCH_BUFFER_START. GTT faults (not-present GGTT entries) do
 * not stop anything: reads see zeros, writes are dropped, and they are counted.
 *
 * Not modelled: second-level and chained batch buffers, RING_WAIT, semaphore signalling (signal-mode waits are polled
 * like poll-mode ones), the per-context workaround batches (BB_PER_CTX_PTR, INDIRECT_CTX: stored in the image, not
 * run), tiled surfaces, the media and 3D pipelines.
 */
import { type Clock, defineTraceEvents, type Tracer } from "../core/index.ts";
import type { Bdf } from "../host/index.ts";
import type { Blitter } from "./blitter.ts";
import {
  commandKind,
  commandLength,
  K_3DPRIMITIVE,
  K_ARB_CHECK,
  K_ARB_ON_OFF,
  K_BB_END,
  K_BB_START,
  K_COLOR_BLT,
  K_FLUSH_DW,
  K_GFX_STATE,
  K_LRI,
  K_NOOP,
  K_PIPE_CONTROL,
  K_PIPELINE_SELECT,
  K_SEMAPHORE_WAIT,
  K_SO_DECL_LIST,
  K_SRC_COPY_BLT,
  K_STORE,
  K_UNKNOWN,
  K_USER_INTERRUPT,
  K_VF_STATISTICS,
  MAX_COMMAND_DWORDS,
} from "./command-table.ts";
import type { CostModel } from "./cost.ts";
import { Execlists } from "./execlists.ts";
import type { GtInterrupts } from "./interrupts.ts";
import { describeFault, type GpuAddressSpace, type GpuMemory } from "./memory.ts";
import { Ppgtt } from "./ppgtt.ts";
import {
  BR13_32BPP,
  BR13_COLOR_DEPTH_MASK,
  BR13_ROP_SHIFT,
  CS_TIMESTAMP_HZ,
  GFX_RUN_LIST_ENABLE,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_ENGINE_BASE,
  GT_ENGINE_IRQ,
  GT_RENDER_USER_INTERRUPT,
  type GtEngineId,
  gen8RingPdpLdw,
  gen8RingPdpUdw,
  HEAD_ADDR,
  I915_ERROR_INSTRUCTION,
  I915_ERROR_PAGE_TABLE,
  MI_ARB_ENABLE,
  MI_BATCH_PPGTT,
  MI_FLUSH_DW_OP_MASK,
  MI_FLUSH_DW_OP_NONE,
  MI_FLUSH_DW_OP_STAMP,
  MI_FLUSH_DW_OP_STOREDW,
  MI_FLUSH_DW_STORE_INDEX,
  MI_FLUSH_DW_USE_GTT,
  MI_INVALIDATE_TLB,
  MI_SEMAPHORE_GLOBAL_GTT,
  MI_SEMAPHORE_SAD_SHIFT,
  MI_USE_GGTT,
  MODE_IDLE,
  maskedWrite,
  PIPE_CONTROL_GLOBAL_GTT_IVB,
  PIPE_CONTROL_POST_SYNC_OP_MASK,
  PIPE_CONTROL_QW_WRITE,
  PIPE_CONTROL_STORE_DATA_INDEX,
  PIPE_CONTROL_TLB_INVALIDATE,
  PIPE_CONTROL_WRITE_DEPTH_COUNT,
  PIPE_CONTROL_WRITE_TIMESTAMP,
  RESET_CTL_READY_TO_RESET,
  RESET_CTL_REQUEST_RESET,
  RING_ACTHD,
  RING_BB_PPGTT,
  RING_BBADDR,
  RING_BBADDR_UDW,
  RING_BBSTATE,
  RING_CTL,
  RING_CTX_TIMESTAMP,
  RING_EIR,
  RING_EMR,
  RING_ESR,
  RING_HEAD,
  RING_HWS_PGA,
  RING_MI_MODE,
  RING_MODE_GEN7,
  RING_NR_PAGES,
  RING_RESET_CTL,
  RING_START,
  RING_TAIL,
  RING_VALID,
  ROP_PATCOPY,
  ROP_SRCCOPY,
  ringCtlLength,
  STOP_RING,
  TAIL_ADDR,
  XY_SRC_COPY_BLT_DST_TILED,
  XY_SRC_COPY_BLT_SRC_TILED,
} from "./regs.ts";
import { BCS_DST_Y, BCS_SRC_Y, BCS_SWCTRL, bltPitchBytes, checkPitch, type Tiling } from "./tiling.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "gpu.ring.start": { bdf: string; engine: string; start: number; size: number; head: number; tail: number };
    "gpu.ring.stop": { bdf: string; engine: string };
    "gpu.ring.tail": { bdf: string; engine: string; head: number; tail: number };
    "gpu.exec": {
      bdf: string;
      engine: string;
      head: number;
      commands: number;
      busyNs: number;
      gttFaults: number;
      iommuFaults: number;
      error: string | null;
    };
    "gpu.blit": {
      bdf: string;
      engine: string;
      op: string;
      dstGma: number;
      srcGma: number;
      width: number;
      height: number;
      dstPitch: number;
      srcPitch: number;
      ok: boolean;
    };
    "gpu.error": { bdf: string; engine: string; gma: number; eir: number; message: string };
    "gpu.mode": { bdf: string; engine: string; execlists: boolean };
    "gpu.semaphore": {
      bdf: string;
      engine: string;
      gma: number;
      value: number;
      op: string;
      data: number;
      met: boolean;
    };
    "gpu.post_sync": { bdf: string; engine: string; command: string; space: string; gma: number; bytes: number };
  }
}
defineTraceEvents("gpu", {
  "gpu.ring.start": "{bdf} {engine}: ring enabled at gma {start}, {size} bytes, head {head} tail {tail}",
  "gpu.ring.stop": "{bdf} {engine}: ring disabled",
  "gpu.ring.tail": "{bdf} {engine}: RING_TAIL = {tail} (head {head})",
  "gpu.exec":
    "{bdf} {engine}: executed {commands} command(s) in {busyNs} ns, head now {head}, faults gtt {gttFaults} iommu {iommuFaults}, error {error}",
  "gpu.blit":
    "{bdf} {engine}: {op} {width}x{height} px to gma {dstGma} (pitch {dstPitch}) from gma {srcGma} (pitch {srcPitch}), ok {ok}",
  "gpu.error": "{bdf} {engine}: engine halted at gma {gma} (RING_EIR {eir}): {message}",
  "gpu.mode": "{bdf} {engine}: GFX_MODE run list {execlists}",
  "gpu.semaphore": "{bdf} {engine}: semaphore wait at gma {gma}: {value} {op} {data}: {met}",
  "gpu.post_sync": "{bdf} {engine}: {command} post-sync write of {bytes} bytes at {space} {gma}",
});

/** What an engine needs from the device around it. */
export interface EngineContext {
  readonly bdf: Bdf;
  readonly memory: GpuMemory;
  readonly blitter: Blitter;
  readonly irq: GtInterrupts;
  readonly cost: CostModel;
  readonly clock: Clock;
  readonly tracer: Tracer;
  /** An MMIO register write of the device (MI_LOAD_REGISTER_IMM's target). */
  writeRegister(offset: number, value: number): void;
  busMasterEnabled(): boolean;
  /** The engine starts (id) or stops (undefined) executing: the device knows whose DMA is whose. */
  executing?(engine: GtEngineId | undefined): void;
  /** After a run that executed commands: the device re-evaluates the engines waiting on a semaphore. */
  afterRun?(engine: Engine, progressed: boolean): void;
}

/** Summary of one run (one activation of the engine: a TAIL write's or an ELSP write's worth). Reused: copy it. */
export class RunStats {
  commands = 0;
  busyNs = 0;
  gttFaults = 0;
  ppgttFaults = 0;
  iommuFaults = 0;
  userInterrupts = 0;
  /** First error of the run, if it stopped on one. */
  error: string | undefined = undefined;

  reset(): void {
    this.commands = 0;
    this.busyNs = 0;
    this.gttFaults = 0;
    this.ppgttFaults = 0;
    this.iommuFaults = 0;
    this.userInterrupts = 0;
    this.error = undefined;
  }
}

/** A batch buffer without MI_BATCH_BUFFER_END stops with an error after this many bytes. */
export const MAX_BATCH_BYTES = 4 * 1024 * 1024;
const TWO32 = 4294967296;

// What executing one command leads to.
const STOP = 0;
const GO = 1;
/** An MI_SEMAPHORE_WAIT not satisfied: the engine waits at it. */
const WAIT = 2;

const SEMAPHORE_OPS = [">", ">=", "<", "<=", "==", "!="] as const;

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

export class Engine {
  readonly id: GtEngineId;
  /** MMIO base of the engine's register block. */
  readonly base: number;
  tail = 0;
  head = 0;
  start = 0;
  ctl = 0;
  acthd = 0;
  hwsPga = 0;
  eir = 0;
  emr = 0;
  /** Low 16 bits of the masked registers. */
  miMode = 0;
  gfxMode = 0;
  resetCtl = 0;
  /** BCS_SWCTRL's low bits (a masked register; the blitter engine's only): which blit surfaces are Y-tiled. */
  swctrl = 0;
  /** A batch buffer in progress: the next dword's address, where it started, whether it is a PPGTT address. */
  bbActive = false;
  bbAddr = 0;
  bbStart = 0;
  bbPpgtt = false;
  /** MI_ARB_ON_OFF state. */
  arbEnabled = true;
  /** Stopped at an MI_SEMAPHORE_WAIT that was not satisfied (HEAD or the batch address is at it). */
  waiting = false;
  /** Clock time (ns) at which the engine finishes the work it has been given. */
  busyUntil = 0;
  totalBusyNs = 0;
  totalCommands = 0;
  runs = 0;
  /** MI_USER_INTERRUPT commands executed, monotonic. */
  totalUserInterrupts = 0;
  readonly last = new RunStats();
  /** The PPGTT of the context loaded in execlists mode (its root is -1 otherwise). */
  readonly ppgtt: Ppgtt;
  /** The execlists submission unit (ELSP, the context status buffer, context switches). */
  readonly execlists: Execlists;
  /** Whether the loaded context's commands may address its PPGTT (execlists mode with a context loaded). */
  contextLoaded = false;
  /** The GGTT address of the loaded context's PPHWSP (its image's page 0), where store-index writes go. */
  statusPage = 0;

  private readonly ctx: EngineContext;
  private readonly irqBank: number;
  private readonly irqShift: number;
  private readonly cmd = new Uint32Array(MAX_COMMAND_DWORDS);
  private readonly videoOnly: boolean;
  private running = false;
  /** Bumped by reset: a run in progress (an LRI to GDRST) notices and stops. */
  private epoch = 0;
  /** Busy time of the current run, fractional. */
  private busy = 0;

  constructor(id: GtEngineId, ctx: EngineContext) {
    this.id = id;
    this.base = GT_ENGINE_BASE[id];
    this.irqBank = GT_ENGINE_IRQ[id].bank;
    this.irqShift = GT_ENGINE_IRQ[id].shift;
    this.videoOnly = id === "vcs" || id === "vecs";
    this.ctx = ctx;
    this.ppgtt = new Ppgtt(ctx.memory.dma, ctx.tracer, ctx.bdf, id, () => {
      this.busy += ctx.cost.ppgttWalkNs;
    });
    this.execlists = new Execlists(this, ctx);
  }

  /** Ring length in bytes from RING_CTL. */
  get ringSize(): number {
    return ringCtlLength(this.ctl);
  }

  /** True while the engine is halted by an error (RING_EIR != 0). */
  get halted(): boolean {
    return this.eir !== 0;
  }

  /** Execlists submission (GFX_MODE RUN_LIST) is enabled. */
  get execlistsEnabled(): boolean {
    return (this.gfxMode & GFX_RUN_LIST_ENABLE) !== 0;
  }

  /** STOP_RING is set in MI_MODE: the engine does not start work. */
  get stopped(): boolean {
    return (this.miMode & STOP_RING) !== 0;
  }

  /** Whether the engine is executing right now (inside a run). */
  get isRunning(): boolean {
    return this.running;
  }

  /** Epoch of resets: changes when the engine is reset. */
  get resetEpoch(): number {
    return this.epoch;
  }

  /** MODE_IDLE: not running, and stopped or without work (no active context, no ring work, not waiting). */
  get idle(): boolean {
    if (this.running) return false;
    if (this.stopped) return true;
    if (this.execlistsEnabled) return !this.execlists.active;
    return !this.waiting && !((this.ctl & RING_VALID) !== 0 && this.head !== this.tail && this.eir === 0);
  }

  /** Engine busy ns so far, including the run in progress (for per-context accounting). */
  get busyTotal(): number {
    return this.totalBusyNs + this.busy;
  }

  /** The engine's timestamp (RING_TIMESTAMP) in CS ticks: its timeline, now. */
  timestampTicks(): number {
    const ns = Math.max(this.ctx.clock.now(), this.busyUntil) + this.busy;
    return Math.floor((ns * CS_TIMESTAMP_HZ) / 1e9);
  }

  /** A 4-byte register read at `off` from the engine's base. */
  readRegister(off: number): number {
    switch (off) {
      case RING_TAIL:
        return this.tail;
      case RING_HEAD:
        return this.head;
      case RING_START:
        return this.start;
      case RING_CTL:
        return this.ctl;
      case RING_ACTHD:
        return this.acthd;
      case RING_HWS_PGA:
        return this.hwsPga;
      case RING_EIR:
        return this.eir;
      case RING_EMR:
        return this.emr;
      case RING_ESR:
        return 0;
      case RING_RESET_CTL:
        return (this.resetCtl | ((this.resetCtl & RESET_CTL_REQUEST_RESET) !== 0 ? RESET_CTL_READY_TO_RESET : 0)) >>> 0;
      case RING_MI_MODE:
        return (this.miMode & ~MODE_IDLE) | (this.idle ? MODE_IDLE : 0);
      case RING_MODE_GEN7:
        return this.gfxMode;
      case RING_BBADDR:
        return ((this.bbAddr % TWO32) | (this.bbActive ? 1 : 0)) >>> 0;
      case RING_BBADDR_UDW:
        return Math.floor(this.bbAddr / TWO32) >>> 0;
      case BCS_SWCTRL:
        if (this.id === "bcs") return this.swctrl;
        return this.execlists.readRegister(off);
      case RING_BBSTATE:
        return this.bbPpgtt ? RING_BB_PPGTT : 0;
      case RING_CTX_TIMESTAMP:
        return this.execlists.contextTimestamp();
      default:
        if (off === gen8RingPdpLdw(0)) return this.ppgtt.root < 0 ? 0 : (this.ppgtt.root % TWO32) >>> 0;
        if (off === gen8RingPdpUdw(0)) return this.ppgtt.root < 0 ? 0 : Math.floor(this.ppgtt.root / TWO32) >>> 0;
        return this.execlists.readRegister(off);
    }
  }

  writeRegister(off: number, value: number): void {
    const v = value >>> 0;
    if (off === BCS_SWCTRL && this.id === "bcs") {
      const mask = (v >>> 16) & (BCS_SRC_Y | BCS_DST_Y);
      this.swctrl = ((this.swctrl & ~mask) | (v & mask)) >>> 0;
      return;
    }
    switch (off) {
      case RING_TAIL:
        this.tail = v & TAIL_ADDR;
        if (this.ctx.tracer.enabled) {
          this.ctx.tracer.emit("gpu.ring.tail", {
            bdf: this.ctx.bdf,
            engine: this.id,
            head: this.head,
            tail: this.tail,
          });
        }
        this.run();
        return;
      case RING_HEAD:
        this.head = v & HEAD_ADDR;
        return;
      case RING_START:
        this.start = (v & 0xfffff000) >>> 0;
        return;
      case RING_CTL: {
        const was = (this.ctl & RING_VALID) !== 0;
        this.ctl = (v & (RING_NR_PAGES | RING_VALID)) >>> 0;
        const now = (this.ctl & RING_VALID) !== 0;
        if (this.ctx.tracer.enabled && now !== was) {
          if (now) {
            this.ctx.tracer.emit("gpu.ring.start", {
              bdf: this.ctx.bdf,
              engine: this.id,
              start: this.start,
              size: this.ringSize,
              head: this.head,
              tail: this.tail,
            });
          } else this.ctx.tracer.emit("gpu.ring.stop", { bdf: this.ctx.bdf, engine: this.id });
        }
        return;
      }
      case RING_HWS_PGA:
        this.hwsPga = (v & 0xfffff000) >>> 0;
        return;
      case RING_EIR:
        this.eir = (this.eir & ~v) >>> 0;
        return;
      case RING_EMR:
        this.emr = v;
        return;
      case RING_RESET_CTL:
        this.resetCtl = maskedWrite(this.resetCtl, v) & ~RESET_CTL_READY_TO_RESET;
        return;
      case RING_MI_MODE: {
        const wasStopped = this.stopped;
        this.miMode = maskedWrite(this.miMode, v) & ~MODE_IDLE;
        if (wasStopped && !this.stopped) this.kick();
        return;
      }
      case RING_MODE_GEN7: {
        const was = this.execlistsEnabled;
        this.gfxMode = maskedWrite(this.gfxMode, v);
        if (was !== this.execlistsEnabled && this.ctx.tracer.enabled) {
          this.ctx.tracer.emit("gpu.mode", { bdf: this.ctx.bdf, engine: this.id, execlists: this.execlistsEnabled });
        }
        return;
      }
      default:
        this.execlists.writeRegister(off, v);
        return;
    }
  }

  /** Engine reset (GDRST): ring, execlists and error state to 0; the timeline, totals and RESET_CTL stay. */
  reset(): void {
    this.epoch++;
    this.tail = 0;
    this.head = 0;
    this.start = 0;
    this.ctl = 0;
    this.acthd = 0;
    this.hwsPga = 0;
    this.eir = 0;
    this.emr = 0;
    this.miMode = 0;
    this.gfxMode = 0;
    this.bbActive = false;
    this.bbAddr = 0;
    this.bbStart = 0;
    this.bbPpgtt = false;
    this.swctrl = 0;
    this.arbEnabled = true;
    this.waiting = false;
    this.contextLoaded = false;
    this.statusPage = 0;
    this.ppgtt.load(-1);
    this.execlists.reset();
  }

  /** Re-evaluates a waiting MI_SEMAPHORE_WAIT (the device calls this; see `GpuDevice.pollSemaphores`). */
  retryWait(): void {
    if (!this.waiting || this.running) return;
    if (this.execlistsEnabled) this.execlists.resume();
    else this.run();
  }

  // ---- execution ---------------------------------------------------------------------------------------------------

  /** Resumes work held back by STOP_RING. */
  private kick(): void {
    if (this.execlistsEnabled) this.execlists.resume();
    else this.run();
  }

  /** Legacy ring mode: runs the ring (a RING_TAIL write, a STOP_RING release, a semaphore re-evaluation). */
  private run(): void {
    // A TAIL write from inside a run (an LRI, or an interrupt handler) only moves TAIL: the running loop sees it.
    if (this.running || this.execlistsEnabled || this.stopped) return;
    if ((this.ctl & RING_VALID) === 0 || this.eir !== 0) return;
    this.activate(() => this.execute());
  }

  /**
   * One activation of the engine: `body` executes (the ring, or execlists' context switches and runs); around it the
   * run's statistics, its busy time on the engine's timeline and its trace. Bus Master Enable clear: nothing runs.
   */
  activate(body: () => void): void {
    const ctx = this.ctx;
    const mem = ctx.memory;
    const s = this.last;
    s.reset();
    this.busy = 0;
    const gtt0 = mem.gttFaults;
    const ppgtt0 = mem.ppgttFaults;
    const iommu0 = mem.iommuFaults;
    this.running = true;
    ctx.executing?.(this.id);
    try {
      if (!ctx.busMasterEnabled()) {
        s.error = "Bus Master Enable is clear in the command register: the engine cannot fetch commands";
        if (ctx.tracer.enabled) {
          ctx.tracer.emit("gpu.error", {
            bdf: ctx.bdf,
            engine: this.id,
            gma: this.start + this.head,
            eir: 0,
            message: s.error,
          });
        }
      } else {
        this.ppgtt.invalidate();
        body();
      }
    } finally {
      this.running = false;
      ctx.executing?.(undefined);
      mem.use("", mem.ggtt);
    }
    s.gttFaults = mem.gttFaults - gtt0;
    s.ppgttFaults = mem.ppgttFaults - ppgtt0;
    s.iommuFaults = mem.iommuFaults - iommu0;
    s.busyNs = Math.ceil(this.busy);
    this.busy = 0;
    const startAt = Math.max(ctx.clock.now(), this.busyUntil);
    this.busyUntil = startAt + s.busyNs;
    this.totalBusyNs += s.busyNs;
    this.totalCommands += s.commands;
    this.runs++;
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.exec", {
        bdf: ctx.bdf,
        engine: this.id,
        head: this.head,
        commands: s.commands,
        busyNs: s.busyNs,
        gttFaults: s.gttFaults,
        iommuFaults: s.iommuFaults,
        error: s.error ?? null,
      });
    }
    this.execlists.afterActivation();
    ctx.afterRun?.(this, s.commands > 0);
  }

  /** Adds busy time to the run in progress (context switches, charged by execlists.ts). */
  charge(ns: number): void {
    this.busy += ns;
  }

  /**
   * Executes from HEAD (or the batch in progress) until the ring is empty, a command waits for the rest of itself or
   * for a semaphore, STOP_RING, or an error or reset stops the engine. Called inside `activate`.
   */
  execute(): void {
    const mem = this.ctx.memory;
    const epoch = this.epoch;
    if ((this.ctl & RING_VALID) === 0) return;
    const len = this.ringSize;
    if (this.head >= len || this.tail >= len) {
      this.fail(
        I915_ERROR_INSTRUCTION,
        this.start + this.head,
        `RING_HEAD ${hex(this.head)} or RING_TAIL ${hex(this.tail)} is beyond the ${len}-byte ring`,
      );
      return;
    }
    const cmd = this.cmd;
    this.waiting = false;
    while (epoch === this.epoch && this.eir === 0 && (this.ctl & RING_VALID) !== 0 && !this.stopped) {
      let at: number;
      let n: number;
      let kind: number;
      const inBatch = this.bbActive;
      const head = this.head;
      if (inBatch) {
        at = this.bbAddr;
        if (at >= this.bbStart + MAX_BATCH_BYTES) {
          this.fail(
            I915_ERROR_INSTRUCTION,
            at,
            `batch buffer at GMA ${hex(this.bbStart)} has no MI_BATCH_BUFFER_END in its first ${MAX_BATCH_BYTES} bytes`,
          );
          return;
        }
        mem.use(this.id, this.bbPpgtt ? this.ppgtt : mem.ggtt);
        const header = mem.readU32(at);
        if (header < 0) {
          this.fail(I915_ERROR_PAGE_TABLE, at, `batch fetch: ${describeFault(mem)}`);
          return;
        }
        kind = commandKind(header);
        if (kind === K_UNKNOWN) {
          this.fail(
            I915_ERROR_INSTRUCTION,
            at,
            `unknown command ${hex(header)} in the batch buffer at GMA ${hex(this.bbStart)}`,
          );
          return;
        }
        n = commandLength(kind, header);
        cmd[0] = header;
        for (let i = 1; i < n; i++) {
          const v = mem.readU32(at + 4 * i);
          if (v < 0) {
            this.fail(I915_ERROR_PAGE_TABLE, at, `batch fetch: ${describeFault(mem)}`);
            return;
          }
          cmd[i] = v;
        }
        this.acthd = at;
        this.bbAddr = at + 4 * n;
        if (kind === K_BB_END) {
          this.bbActive = false;
          this.last.commands++;
          this.busy += this.ctx.cost.commandNs;
          continue;
        }
      } else {
        if (head === this.tail) break;
        at = this.start + head;
        mem.use(this.id, mem.ggtt);
        const header = mem.readU32(at);
        if (header < 0) {
          this.fail(I915_ERROR_PAGE_TABLE, at, `command fetch: ${describeFault(mem)}`);
          return;
        }
        kind = commandKind(header);
        if (kind === K_UNKNOWN) {
          this.fail(I915_ERROR_INSTRUCTION, at, `unknown command ${hex(header)}`);
          return;
        }
        n = commandLength(kind, header);
        const avail = (this.tail - head + len) % len;
        // The command is not wholly before TAIL: wait for software to write the rest.
        if (n * 4 > avail) break;
        cmd[0] = header;
        for (let i = 1; i < n; i++) {
          const v = mem.readU32(this.start + ((head + 4 * i) % len));
          if (v < 0) {
            this.fail(I915_ERROR_PAGE_TABLE, at, `command fetch: ${describeFault(mem)}`);
            return;
          }
          cmd[i] = v;
        }
        this.head = (head + 4 * n) % len;
        this.acthd = at;
      }
      const r = this.exec(kind, n, inBatch, at, epoch);
      if (r === STOP) return;
      if (r === WAIT) {
        // Back to the wait: it is evaluated again when the engine is re-run.
        if (inBatch) this.bbAddr = at;
        else this.head = head;
        this.waiting = true;
        return;
      }
    }
    if (!this.bbActive) this.acthd = this.start + this.head;
  }

  /** Executes the command in `cmd[0..n)` fetched from `at`: GO on, STOP (error or reset), or WAIT at it. */
  private exec(kind: number, n: number, inBatch: boolean, at: number, epoch: number): number {
    const ctx = this.ctx;
    const cost = ctx.cost;
    const cmd = this.cmd;
    const h = cmd[0]!;
    this.last.commands++;
    this.busy += cost.commandNs;
    if (this.videoOnly && (kind === K_COLOR_BLT || kind === K_SRC_COPY_BLT || kind >= K_PIPE_CONTROL)) {
      const what = kind >= K_PIPE_CONTROL ? "a render command (there is no media pipeline)" : "a 2D command";
      return this.failGo(I915_ERROR_INSTRUCTION, at, `${this.id} executes MI commands only: ${hex(h)} is ${what}`);
    }
    switch (kind) {
      case K_NOOP:
      case K_BB_END: // in the ring: nothing to end
      case K_ARB_CHECK: // nothing preempts a running context in the model
        return GO;
      case K_ARB_ON_OFF:
        this.arbEnabled = (h & MI_ARB_ENABLE) !== 0;
        return GO;
      case K_USER_INTERRUPT:
        this.busy += cost.interruptNs;
        this.last.userInterrupts++;
        this.totalUserInterrupts++;
        this.raise(GT_RENDER_USER_INTERRUPT);
        return GO;
      case K_STORE:
        return this.store(n, at);
      case K_LRI: {
        if ((n - 1) % 2 !== 0) {
          return this.failGo(
            I915_ERROR_INSTRUCTION,
            at,
            `MI_LOAD_REGISTER_IMM of ${n} dwords: not (offset, value) pairs`,
          );
        }
        for (let i = 1; i < n; i += 2) {
          this.busy += cost.registerWriteNs;
          ctx.writeRegister(cmd[i]! & 0x7ffffc, cmd[i + 1]!);
          if (epoch !== this.epoch) return STOP;
        }
        return GO;
      }
      case K_BB_START: {
        if (n !== 3) return this.failGo(I915_ERROR_INSTRUCTION, at, `MI_BATCH_BUFFER_START of ${n} dwords (3)`);
        if (inBatch) {
          return this.failGo(I915_ERROR_INSTRUCTION, at, "MI_BATCH_BUFFER_START inside a batch buffer: one level only");
        }
        const ppgtt = (h & MI_BATCH_PPGTT) !== 0;
        if (ppgtt && !this.contextLoaded) {
          return this.failGo(
            I915_ERROR_INSTRUCTION,
            at,
            "MI_BATCH_BUFFER_START in PPGTT: there is no PPGTT in legacy ring mode (execlists contexts only)",
          );
        }
        this.busy += cost.batchStartNs;
        const addr = ((cmd[1]! & ~3) >>> 0) + (cmd[2]! & 0xffff) * TWO32;
        this.bbActive = true;
        this.bbAddr = addr;
        this.bbStart = addr;
        this.bbPpgtt = ppgtt;
        return GO;
      }
      case K_SEMAPHORE_WAIT:
        return this.semaphoreWait(n, at);
      case K_FLUSH_DW:
        return this.flushDw(n, at);
      case K_PIPE_CONTROL:
        return this.pipeControl(n, at);
      case K_PIPELINE_SELECT:
      case K_VF_STATISTICS:
      case K_SO_DECL_LIST:
      case K_3DPRIMITIVE:
      case K_GFX_STATE:
        return GO; // decoded by length and skipped: no 3D or media pipeline
      case K_COLOR_BLT:
        return this.colorBlt(n, at) ? GO : STOP;
      case K_SRC_COPY_BLT:
        return this.srcCopyBlt(n, at) ? GO : STOP;
      default:
        return this.failGo(I915_ERROR_INSTRUCTION, at, `unknown command ${hex(h)}`);
    }
  }

  /** Where store-index post-sync writes go: the loaded context's PPHWSP, else the engine's status page. */
  private get statusPageGma(): number {
    return this.contextLoaded ? this.statusPage : this.hwsPga;
  }

  /** The space of a command's address: the GGTT when `global`, else the context's PPGTT; undefined without one. */
  private spaceFor(global: boolean): GpuAddressSpace | undefined {
    if (global) return this.ctx.memory.ggtt;
    return this.contextLoaded ? this.ppgtt : undefined;
  }

  /** The address space commands use for surfaces with no GGTT selector (blits): the context's PPGTT, or the GGTT. */
  private get surfaceSpace(): GpuAddressSpace {
    return this.contextLoaded ? this.ppgtt : this.ctx.memory.ggtt;
  }

  private store(n: number, at: number): number {
    const ctx = this.ctx;
    const cmd = this.cmd;
    const h = cmd[0]!;
    if (n !== 4 && n !== 5) return this.failGo(I915_ERROR_INSTRUCTION, at, `MI_STORE_DATA_IMM of ${n} dwords (4 or 5)`);
    const space = this.spaceFor((h & MI_USE_GGTT) !== 0);
    if (space === undefined) {
      return this.failGo(
        I915_ERROR_INSTRUCTION,
        at,
        "MI_STORE_DATA_IMM without MI_USE_GGTT: a PPGTT address, and there is no PPGTT in legacy ring mode",
      );
    }
    const addr = (cmd[1]! & ~3) >>> 0;
    const gma = addr + (cmd[2]! & 0xffff) * TWO32;
    if (n === 5 && addr % 8 !== 0) {
      return this.failGo(I915_ERROR_INSTRUCTION, at, `MI_STORE_DATA_IMM qword to unaligned GMA ${hex(gma)}`);
    }
    this.busy += ctx.cost.storeNs * (n - 3);
    ctx.memory.use(this.id, space);
    if (!ctx.memory.writeU32(gma, cmd[3]!)) return this.failGo(I915_ERROR_PAGE_TABLE, at, describeFault(ctx.memory));
    if (n === 5 && !ctx.memory.writeU32(gma + 4, cmd[4]!)) {
      return this.failGo(I915_ERROR_PAGE_TABLE, at, describeFault(ctx.memory));
    }
    return GO;
  }

  private semaphoreWait(n: number, at: number): number {
    const ctx = this.ctx;
    const cmd = this.cmd;
    const h = cmd[0]!;
    if (n !== 4) return this.failGo(I915_ERROR_INSTRUCTION, at, `MI_SEMAPHORE_WAIT of ${n} dwords (4)`);
    const op = (h >>> MI_SEMAPHORE_SAD_SHIFT) & 7;
    if (op >= SEMAPHORE_OPS.length) {
      return this.failGo(I915_ERROR_INSTRUCTION, at, `MI_SEMAPHORE_WAIT with reserved compare operation ${op}`);
    }
    const space = this.spaceFor((h & MI_SEMAPHORE_GLOBAL_GTT) !== 0);
    if (space === undefined) {
      return this.failGo(
        I915_ERROR_INSTRUCTION,
        at,
        "MI_SEMAPHORE_WAIT without MI_SEMAPHORE_GLOBAL_GTT: a PPGTT address, and there is no PPGTT in legacy ring mode",
      );
    }
    const gma = ((cmd[2]! & ~3) >>> 0) + (cmd[3]! & 0xffff) * TWO32;
    const data = cmd[1]!;
    this.busy += ctx.cost.semaphoreNs;
    ctx.memory.use(this.id, space);
    const value = ctx.memory.readU32(gma);
    if (value < 0) return this.failGo(I915_ERROR_PAGE_TABLE, at, `MI_SEMAPHORE_WAIT: ${describeFault(ctx.memory)}`);
    const met =
      op === 0
        ? value > data
        : op === 1
          ? value >= data
          : op === 2
            ? value < data
            : op === 3
              ? value <= data
              : op === 4
                ? value === data
                : value !== data;
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.semaphore", {
        bdf: ctx.bdf,
        engine: this.id,
        gma,
        value,
        op: SEMAPHORE_OPS[op]!,
        data,
        met,
      });
    }
    if (met) return GO;
    // Not satisfied: the evaluation is not a command executed, only its cost.
    this.last.commands--;
    this.busy -= ctx.cost.commandNs;
    return WAIT;
  }

  /** MI_FLUSH_DW: a TLB invalidation if asked, and the post-sync write. */
  private flushDw(n: number, at: number): number {
    const cmd = this.cmd;
    const h = cmd[0]!;
    if (n < 3 || n > 5) return this.failGo(I915_ERROR_INSTRUCTION, at, `MI_FLUSH_DW of ${n} dwords (3 to 5)`);
    this.busy += this.ctx.cost.flushNs;
    if ((h & MI_INVALIDATE_TLB) !== 0) this.ppgtt.invalidate();
    const op = h & MI_FLUSH_DW_OP_MASK;
    if (op === MI_FLUSH_DW_OP_NONE) return GO;
    if (op !== MI_FLUSH_DW_OP_STOREDW && op !== MI_FLUSH_DW_OP_STAMP) {
      return this.failGo(I915_ERROR_INSTRUCTION, at, `MI_FLUSH_DW with reserved post-sync operation ${op >>> 14}`);
    }
    if (n < 4) return this.failGo(I915_ERROR_INSTRUCTION, at, "MI_FLUSH_DW with a post-sync write needs 4 dwords");
    const lo = cmd[1]!;
    const index = (h & MI_FLUSH_DW_STORE_INDEX) !== 0;
    const global = index || (lo & MI_FLUSH_DW_USE_GTT) !== 0;
    const gma = index ? this.statusPageGma + (lo & 0xff8) : ((lo & ~7) >>> 0) + (cmd[2]! & 0xffff) * TWO32;
    if (op === MI_FLUSH_DW_OP_STAMP) {
      const t = this.timestampTicks();
      return this.postSync("MI_FLUSH_DW", global, gma, t % TWO32, Math.floor(t / TWO32), true, at);
    }
    return this.postSync("MI_FLUSH_DW", global, gma, cmd[3]!, n === 5 ? cmd[4]! : 0, n === 5, at);
  }

  /** PIPE_CONTROL: a TLB invalidation if asked, and the post-sync operation (the flushes have nothing to flush). */
  private pipeControl(n: number, at: number): number {
    const cmd = this.cmd;
    if (n < 2) return this.failGo(I915_ERROR_INSTRUCTION, at, `PIPE_CONTROL of ${n} dwords`);
    const flags = cmd[1]!;
    this.busy += this.ctx.cost.flushNs;
    if ((flags & PIPE_CONTROL_TLB_INVALIDATE) !== 0) this.ppgtt.invalidate();
    const op = flags & PIPE_CONTROL_POST_SYNC_OP_MASK;
    if (op === 0) return GO;
    if (n < 6) {
      return this.failGo(I915_ERROR_INSTRUCTION, at, `PIPE_CONTROL of ${n} dwords: a post-sync write needs 6`);
    }
    const index = (flags & PIPE_CONTROL_STORE_DATA_INDEX) !== 0;
    const global = index || (flags & PIPE_CONTROL_GLOBAL_GTT_IVB) !== 0;
    const gma = index ? this.statusPageGma + (cmd[2]! & 0xff8) : ((cmd[2]! & ~7) >>> 0) + (cmd[3]! & 0xffff) * TWO32;
    if (op === PIPE_CONTROL_QW_WRITE) return this.postSync("PIPE_CONTROL", global, gma, cmd[4]!, cmd[5]!, true, at);
    if (op === PIPE_CONTROL_WRITE_DEPTH_COUNT) {
      return this.postSync("PIPE_CONTROL", global, gma, 0, 0, true, at); // no 3D pipeline: no pixels were counted
    }
    if (op === PIPE_CONTROL_WRITE_TIMESTAMP) {
      const t = this.timestampTicks();
      return this.postSync("PIPE_CONTROL", global, gma, t % TWO32, Math.floor(t / TWO32), true, at);
    }
    return GO;
  }

  /** A flush's post-sync write of a dword (or a qword) at `gma` in the GGTT (`global`) or the context's PPGTT. */
  private postSync(
    command: string,
    global: boolean,
    gma: number,
    lo: number,
    hi: number,
    qword: boolean,
    at: number,
  ): number {
    const ctx = this.ctx;
    const space = this.spaceFor(global);
    if (space === undefined) {
      return this.failGo(
        I915_ERROR_INSTRUCTION,
        at,
        `${command} post-sync write to a PPGTT address, and there is no PPGTT in legacy ring mode`,
      );
    }
    this.busy += ctx.cost.storeNs * (qword ? 2 : 1);
    ctx.memory.use(this.id, space);
    if (!ctx.memory.writeU32(gma, lo >>> 0) || (qword && !ctx.memory.writeU32(gma + 4, hi >>> 0))) {
      return this.failGo(I915_ERROR_PAGE_TABLE, at, `${command} post-sync write: ${describeFault(ctx.memory)}`);
    }
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.post_sync", {
        bdf: ctx.bdf,
        engine: this.id,
        command,
        space: space.kind,
        gma,
        bytes: qword ? 8 : 4,
      });
    }
    return GO;
  }

  private colorBlt(n: number, at: number): boolean {
    const ctx = this.ctx;
    const cmd = this.cmd;
    if (n !== 7) return this.fail(I915_ERROR_INSTRUCTION, at, `XY_COLOR_BLT of ${n} dwords (7)`);
    const br13 = cmd[1]!;
    const bad = this.checkBlt(cmd[0]!, br13, ROP_PATCOPY, "XY_COLOR_BLT");
    if (bad !== undefined) return this.fail(I915_ERROR_INSTRUCTION, at, bad);
    const tiling = this.bltTiling(cmd[0]!, XY_SRC_COPY_BLT_DST_TILED, BCS_DST_Y);
    const pitch = bltPitchBytes(br13, tiling !== "linear");
    const badPitch = checkPitch(tiling, pitch);
    if (badPitch !== undefined) return this.fail(I915_ERROR_INSTRUCTION, at, `XY_COLOR_BLT: ${badPitch}`);
    const x1 = cmd[2]! & 0xffff;
    const y1 = cmd[2]! >>> 16;
    const x2 = cmd[3]! & 0xffff;
    const y2 = cmd[3]! >>> 16;
    const dst = cmd[4]! + (cmd[5]! & 0xffff) * TWO32;
    const bytes = Math.max(0, x2 - x1) * 4 * Math.max(0, y2 - y1);
    this.busy += ctx.cost.blitSetupNs + bytes / ctx.cost.fillBytesPerNs;
    ctx.memory.use(this.id, this.surfaceSpace);
    const ok = ctx.blitter.fill(dst, pitch, x1, y1, x2, y2, cmd[6]!, tiling);
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.blit", {
        bdf: ctx.bdf,
        engine: this.id,
        op: "XY_COLOR_BLT",
        dstGma: dst + y1 * pitch + x1 * 4,
        srcGma: -1,
        width: x2 - x1,
        height: y2 - y1,
        dstPitch: pitch,
        srcPitch: 0,
        ok,
      });
    }
    return ok || this.fail(I915_ERROR_PAGE_TABLE, at, `XY_COLOR_BLT: ${describeFault(ctx.memory)}`);
  }

  private srcCopyBlt(n: number, at: number): boolean {
    const ctx = this.ctx;
    const cmd = this.cmd;
    if (n !== 10) return this.fail(I915_ERROR_INSTRUCTION, at, `XY_SRC_COPY_BLT of ${n} dwords (10)`);
    const br13 = cmd[1]!;
    const bad = this.checkBlt(cmd[0]!, br13, ROP_SRCCOPY, "XY_SRC_COPY_BLT");
    if (bad !== undefined) return this.fail(I915_ERROR_INSTRUCTION, at, bad);
    const dstTiling = this.bltTiling(cmd[0]!, XY_SRC_COPY_BLT_DST_TILED, BCS_DST_Y);
    const srcTiling = this.bltTiling(cmd[0]!, XY_SRC_COPY_BLT_SRC_TILED, BCS_SRC_Y);
    const dstPitch = bltPitchBytes(br13, dstTiling !== "linear");
    const srcPitch = bltPitchBytes(cmd[7]!, srcTiling !== "linear");
    const badPitch = checkPitch(dstTiling, dstPitch) ?? checkPitch(srcTiling, srcPitch);
    if (badPitch !== undefined) return this.fail(I915_ERROR_INSTRUCTION, at, `XY_SRC_COPY_BLT: ${badPitch}`);
    const x1 = cmd[2]! & 0xffff;
    const y1 = cmd[2]! >>> 16;
    const x2 = cmd[3]! & 0xffff;
    const y2 = cmd[3]! >>> 16;
    const dst = cmd[4]! + (cmd[5]! & 0xffff) * TWO32;
    const sx = cmd[6]! & 0xffff;
    const sy = cmd[6]! >>> 16;
    const src = cmd[8]! + (cmd[9]! & 0xffff) * TWO32;
    const bytes = Math.max(0, x2 - x1) * 4 * Math.max(0, y2 - y1);
    this.busy += ctx.cost.blitSetupNs + bytes / ctx.cost.copyBytesPerNs;
    ctx.memory.use(this.id, this.surfaceSpace);
    const ok = ctx.blitter.copy(dst, dstPitch, x1, y1, x2, y2, src, srcPitch, sx, sy, dstTiling, srcTiling);
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.blit", {
        bdf: ctx.bdf,
        engine: this.id,
        op: "XY_SRC_COPY_BLT",
        dstGma: dst + y1 * dstPitch + x1 * 4,
        srcGma: src + sy * srcPitch + sx * 4,
        width: x2 - x1,
        height: y2 - y1,
        dstPitch,
        srcPitch,
        ok,
      });
    }
    return ok || this.fail(I915_ERROR_PAGE_TABLE, at, `XY_SRC_COPY_BLT: ${describeFault(ctx.memory)}`);
  }

  /**
   * A blit surface's layout: linear unless the header's tiled bit is set; then Y-tiled when BCS_SWCTRL (blitter
   * engine only) has the surface's Y bit, else X-tiled.
   */
  private bltTiling(header: number, tiledBit: number, swctrlYBit: number): Tiling {
    if ((header & tiledBit) === 0) return "linear";
    return (this.swctrl & swctrlYBit) !== 0 ? "y" : "x";
  }

  /** Why a blit header / BR13 cannot run, or undefined. */
  private checkBlt(_header: number, br13: number, rop: number, name: string): string | undefined {
    if ((br13 & BR13_COLOR_DEPTH_MASK) !== BR13_32BPP) {
      return `${name} with colour depth ${(br13 & BR13_COLOR_DEPTH_MASK) >>> 24}: only 32 bpp (3) is implemented`;
    }
    const r = (br13 >>> BR13_ROP_SHIFT) & 0xff;
    if (r !== rop) return `${name} with raster operation ${hex(r)}: only ${hex(rop)} is implemented`;
    return undefined;
  }

  /** Raises `bits` of the engine's interrupt field. */
  raise(bits: number): void {
    this.ctx.irq.eventIn(this.irqBank, (bits << this.irqShift) >>> 0);
  }

  private failGo(eirBit: number, gma: number, message: string): number {
    this.fail(eirBit, gma, message);
    return STOP;
  }

  /**
   * Halts the engine: sets RING_EIR, raises the CS error interrupt, records the run's first error, abandons the batch
   * in progress. Returns false.
   */
  fail(eirBit: number, gma: number, message: string): false {
    const ctx = this.ctx;
    this.eir = (this.eir | eirBit) >>> 0;
    this.acthd = gma;
    this.bbActive = false;
    this.waiting = false;
    if (this.last.error === undefined) this.last.error = message;
    this.execlists.noteError(message);
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.error", { bdf: ctx.bdf, engine: this.id, gma, eir: this.eir, message });
    }
    this.raise(GT_CS_MASTER_ERROR_INTERRUPT);
    return false;
  }
}
