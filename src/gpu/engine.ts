/**
 * One command streamer (engine) of the GPU with a legacy ring buffer, as gen8 hardware runs one without execlists:
 * its ring registers, the command parser and the execution of the commands the model implements.
 *
 * Ring: RING_START is the GMA of the ring (page aligned), RING_CTL its length ((pages - 1) << 12) and valid bit,
 * RING_HEAD the byte offset the engine reads next, RING_TAIL the byte offset software has written up to (8-byte
 * aligned). HEAD == TAIL means empty; both wrap to 0 at the ring's length, and a command may straddle the wrap.
 *
 * Execution is synchronous: there are no threads in the model. A write to RING_TAIL (with the ring valid and no error
 * pending) runs the engine from HEAD to TAIL inside that write; when it returns, HEAD == TAIL, or HEAD is at a command
 * that is not wholly before TAIL (the engine waits for the rest, as hardware does), or the engine stopped on an error.
 * Time is accounted, not spent: the cost model (cost.ts) turns what ran into busy ns, and `busyUntil` is the engine's
 * timeline on the injected clock (a run starts at max(now, busyUntil)). `last` summarises the most recent run.
 *
 * Commands (gen8 encodings, regs.ts): MI_NOOP, MI_USER_INTERRUPT, MI_BATCH_BUFFER_START (GGTT, one level: a batch
 * may not start another), MI_BATCH_BUFFER_END (ends a batch; a no-op in the ring), MI_STORE_DATA_IMM (GGTT, dword or
 * qword), MI_LOAD_REGISTER_IMM (writes the GPU's own MMIO registers, as a CPU write would), XY_COLOR_BLT and
 * XY_SRC_COPY_BLT (32 bpp, linear). Both engines accept every command (real hardware takes 2D commands on the
 * blitter engine only; a portable driver sends blits to bcs).
 *
 * Errors stop the engine: the failing command's RING_EIR bit is set (I915_ERROR_INSTRUCTION for a command it cannot
 * execute, I915_ERROR_PAGE_TABLE for an IOMMU fault), GT_CS_MASTER_ERROR_INTERRUPT is raised, and the engine stays
 * halted (TAIL writes do nothing) until software clears RING_EIR by writing 1s, or resets the engine (GDRST). After
 * an unknown or malformed command in the ring, HEAD stays at it; after an IOMMU fault, HEAD is past the faulting
 * command (which stopped at the faulting page). ACTHD holds the GMA of the failing command. A batch buffer is
 * abandoned on error and HEAD is past its MI_BATCH_BUFFER_START. GTT faults (not-present entries) do not stop
 * anything: reads see zeros, writes are dropped, and they are counted.
 *
 * Not modelled: execlists and contexts, PPGTT, semaphores and waits, MI_FLUSH_DW / PIPE_CONTROL, the hardware status
 * page's automatic writes (RING_HWS_PGA is stored only), RING_WAIT, chained and second-level batches, tiled surfaces.
 */
import { type Clock, defineTraceEvents, type Tracer } from "../core/index.ts";
import type { Bdf } from "../host/index.ts";
import type { Blitter } from "./blitter.ts";
import type { CostModel } from "./cost.ts";
import type { GtInterrupts } from "./interrupts.ts";
import { describeFault, type GpuMemory } from "./memory.ts";
import {
  BR13_32BPP,
  BR13_COLOR_DEPTH_MASK,
  BR13_PITCH_MASK,
  BR13_ROP_SHIFT,
  ENGINE_BASE,
  ENGINE_IRQ_SHIFT,
  type EngineId,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_RENDER_USER_INTERRUPT,
  HEAD_ADDR,
  I915_ERROR_INSTRUCTION,
  I915_ERROR_PAGE_TABLE,
  INSTR_BC_CLIENT,
  INSTR_CLIENT_SHIFT,
  INSTR_MI_CLIENT,
  MI_BATCH_PPGTT,
  MI_USE_GGTT,
  RING_ACTHD,
  RING_CTL,
  RING_EIR,
  RING_HEAD,
  RING_HWS_PGA,
  RING_NR_PAGES,
  RING_START,
  RING_TAIL,
  RING_VALID,
  ROP_PATCOPY,
  ROP_SRCCOPY,
  ringCtlLength,
  TAIL_ADDR,
  XY_COLOR_BLT_OPCODE,
  XY_SRC_COPY_BLT_DST_TILED,
  XY_SRC_COPY_BLT_OPCODE,
  XY_SRC_COPY_BLT_SRC_TILED,
} from "./regs.ts";

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
}

/** Summary of one run (one TAIL write's worth of execution). Reused: copy what you keep. */
export class RunStats {
  commands = 0;
  busyNs = 0;
  gttFaults = 0;
  iommuFaults = 0;
  userInterrupts = 0;
  /** First error of the run, if it stopped on one. */
  error: string | undefined = undefined;

  reset(): void {
    this.commands = 0;
    this.busyNs = 0;
    this.gttFaults = 0;
    this.iommuFaults = 0;
    this.userInterrupts = 0;
    this.error = undefined;
  }
}

/** A batch buffer without MI_BATCH_BUFFER_END stops with an error after this many bytes. */
export const MAX_BATCH_BYTES = 4 * 1024 * 1024;
/** Longest command: MI_LOAD_REGISTER_IMM with an 8-bit length field, 0xff + 2 dwords. */
const MAX_COMMAND_DWORDS = 0xff + 2;
const TWO32 = 4294967296;

// Command kinds, from the client and opcode fields (the same decoding as regs.ts COMMANDS, without a table search).
const K_UNKNOWN = 0;
const K_NOOP = 1;
const K_USER_INTERRUPT = 2;
const K_BB_END = 3;
const K_STORE = 4;
const K_LRI = 5;
const K_BB_START = 6;
const K_COLOR_BLT = 7;
const K_SRC_COPY_BLT = 8;

function commandKind(header: number): number {
  const client = header >>> INSTR_CLIENT_SHIFT;
  if (client === INSTR_MI_CLIENT) {
    switch ((header >>> 23) & 0x3f) {
      case 0x00:
        return K_NOOP;
      case 0x02:
        return K_USER_INTERRUPT;
      case 0x0a:
        return K_BB_END;
      case 0x20:
        return K_STORE;
      case 0x22:
        return K_LRI;
      case 0x31:
        return K_BB_START;
      default:
        return K_UNKNOWN;
    }
  }
  if (client === INSTR_BC_CLIENT) {
    const op = (header >>> 22) & 0x7f;
    if (op === XY_COLOR_BLT_OPCODE) return K_COLOR_BLT;
    if (op === XY_SRC_COPY_BLT_OPCODE) return K_SRC_COPY_BLT;
  }
  return K_UNKNOWN;
}

/** Length in dwords of a command of a known kind. */
function commandLength(kind: number, header: number): number {
  switch (kind) {
    case K_STORE:
      return (header & 0x3ff) + 2;
    case K_LRI:
    case K_BB_START:
    case K_COLOR_BLT:
    case K_SRC_COPY_BLT:
      return (header & 0xff) + 2;
    default:
      return 1;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

export class Engine {
  readonly id: EngineId;
  /** MMIO base of the engine's register block. */
  readonly base: number;
  tail = 0;
  head = 0;
  start = 0;
  ctl = 0;
  acthd = 0;
  hwsPga = 0;
  eir = 0;
  /** Clock time (ns) at which the engine finishes the work it has been given. */
  busyUntil = 0;
  totalBusyNs = 0;
  totalCommands = 0;
  runs = 0;
  readonly last = new RunStats();

  private readonly ctx: EngineContext;
  private readonly irqShift: number;
  private readonly cmd = new Uint32Array(MAX_COMMAND_DWORDS);
  private running = false;
  /** Bumped by reset: a run in progress (an LRI to GDRST) notices and stops. */
  private epoch = 0;
  /** Busy time of the current run, fractional. */
  private busy = 0;

  constructor(id: EngineId, ctx: EngineContext) {
    this.id = id;
    this.base = ENGINE_BASE[id];
    this.irqShift = ENGINE_IRQ_SHIFT[id];
    this.ctx = ctx;
  }

  /** Ring length in bytes from RING_CTL. */
  get ringSize(): number {
    return ringCtlLength(this.ctl);
  }

  /** True while the engine is halted by an error (RING_EIR != 0). */
  get halted(): boolean {
    return this.eir !== 0;
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
      default:
        return 0;
    }
  }

  writeRegister(off: number, value: number): void {
    const v = value >>> 0;
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
      default:
        return;
    }
  }

  /** Engine reset (GDRST): ring registers and error state to 0; the timeline and totals stay. */
  reset(): void {
    this.epoch++;
    this.tail = 0;
    this.head = 0;
    this.start = 0;
    this.ctl = 0;
    this.acthd = 0;
    this.hwsPga = 0;
    this.eir = 0;
  }

  // ---- execution ---------------------------------------------------------------------------------------------------

  private run(): void {
    // A TAIL write from inside a run (an LRI, or an interrupt handler) only moves TAIL: the running loop sees it.
    if (this.running || (this.ctl & RING_VALID) === 0 || this.eir !== 0) return;
    const ctx = this.ctx;
    const mem = ctx.memory;
    const s = this.last;
    s.reset();
    this.busy = 0;
    const gtt0 = mem.gttFaults;
    const iommu0 = mem.iommuFaults;
    this.running = true;
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
        this.runRing();
      }
    } finally {
      this.running = false;
    }
    s.gttFaults = mem.gttFaults - gtt0;
    s.iommuFaults = mem.iommuFaults - iommu0;
    s.busyNs = Math.ceil(this.busy);
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
  }

  private runRing(): void {
    const mem = this.ctx.memory;
    const epoch = this.epoch;
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
    while (this.head !== this.tail && epoch === this.epoch && this.eir === 0 && (this.ctl & RING_VALID) !== 0) {
      const head = this.head;
      const at = this.start + head;
      mem.agent = this.id;
      const header = mem.readU32(at);
      if (header < 0) {
        this.fail(I915_ERROR_PAGE_TABLE, at, `command fetch: ${describeFault(mem)}`);
        return;
      }
      const kind = commandKind(header);
      if (kind === K_UNKNOWN) {
        this.fail(I915_ERROR_INSTRUCTION, at, `unknown command ${hex(header)}`);
        return;
      }
      const n = commandLength(kind, header);
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
      if (!this.exec(kind, n, false, at, epoch)) return;
    }
    this.acthd = this.start + this.head;
  }

  /** Runs the batch buffer at GMA `addr` to its MI_BATCH_BUFFER_END. False if it stopped on an error or a reset. */
  private runBatch(addr: number, epoch: number): boolean {
    const mem = this.ctx.memory;
    const cmd = this.cmd;
    const end = addr + MAX_BATCH_BYTES;
    let p = addr;
    for (;;) {
      if (epoch !== this.epoch || this.eir !== 0) return false;
      if (p >= end) {
        this.fail(
          I915_ERROR_INSTRUCTION,
          p,
          `batch buffer at GMA ${hex(addr)} has no MI_BATCH_BUFFER_END in its first ${MAX_BATCH_BYTES} bytes`,
        );
        return false;
      }
      mem.agent = this.id;
      const header = mem.readU32(p);
      if (header < 0) {
        this.fail(I915_ERROR_PAGE_TABLE, p, `batch fetch: ${describeFault(mem)}`);
        return false;
      }
      const kind = commandKind(header);
      if (kind === K_UNKNOWN) {
        this.fail(I915_ERROR_INSTRUCTION, p, `unknown command ${hex(header)} in the batch buffer at GMA ${hex(addr)}`);
        return false;
      }
      const n = commandLength(kind, header);
      cmd[0] = header;
      for (let i = 1; i < n; i++) {
        const v = mem.readU32(p + 4 * i);
        if (v < 0) {
          this.fail(I915_ERROR_PAGE_TABLE, p, `batch fetch: ${describeFault(mem)}`);
          return false;
        }
        cmd[i] = v;
      }
      this.acthd = p;
      const at = p;
      p += 4 * n;
      if (kind === K_BB_END) {
        this.last.commands++;
        this.busy += this.ctx.cost.commandNs;
        return true;
      }
      if (!this.exec(kind, n, true, at, epoch)) return false;
    }
  }

  /** Executes the command in `cmd[0..n)` fetched from GMA `at`. False: stop (error or reset). */
  private exec(kind: number, n: number, inBatch: boolean, at: number, epoch: number): boolean {
    const ctx = this.ctx;
    const cost = ctx.cost;
    const cmd = this.cmd;
    const h = cmd[0]!;
    this.last.commands++;
    this.busy += cost.commandNs;
    switch (kind) {
      case K_NOOP:
      case K_BB_END: // in the ring: nothing to end
        return true;
      case K_USER_INTERRUPT:
        this.busy += cost.interruptNs;
        this.last.userInterrupts++;
        ctx.irq.event(GT_RENDER_USER_INTERRUPT << this.irqShift);
        return true;
      case K_STORE: {
        if (n !== 4 && n !== 5)
          return this.fail(I915_ERROR_INSTRUCTION, at, `MI_STORE_DATA_IMM of ${n} dwords (4 or 5)`);
        if ((h & MI_USE_GGTT) === 0) {
          return this.fail(
            I915_ERROR_INSTRUCTION,
            at,
            "MI_STORE_DATA_IMM without MI_USE_GGTT: PPGTT is not implemented",
          );
        }
        const addr = (cmd[1]! & ~3) >>> 0;
        const gma = addr + (cmd[2]! & 0xffff) * TWO32;
        if (n === 5 && addr % 8 !== 0) {
          return this.fail(I915_ERROR_INSTRUCTION, at, `MI_STORE_DATA_IMM qword to unaligned GMA ${hex(gma)}`);
        }
        this.busy += cost.storeNs * (n - 3);
        ctx.memory.agent = this.id;
        if (!ctx.memory.writeU32(gma, cmd[3]!)) return this.fail(I915_ERROR_PAGE_TABLE, at, describeFault(ctx.memory));
        if (n === 5 && !ctx.memory.writeU32(gma + 4, cmd[4]!)) {
          return this.fail(I915_ERROR_PAGE_TABLE, at, describeFault(ctx.memory));
        }
        return true;
      }
      case K_LRI: {
        if ((n - 1) % 2 !== 0) {
          return this.fail(
            I915_ERROR_INSTRUCTION,
            at,
            `MI_LOAD_REGISTER_IMM of ${n} dwords: not (offset, value) pairs`,
          );
        }
        for (let i = 1; i < n; i += 2) {
          this.busy += cost.registerWriteNs;
          ctx.writeRegister(cmd[i]! & 0x7ffffc, cmd[i + 1]!);
          if (epoch !== this.epoch) return false;
        }
        return true;
      }
      case K_BB_START: {
        if (n !== 3) return this.fail(I915_ERROR_INSTRUCTION, at, `MI_BATCH_BUFFER_START of ${n} dwords (3)`);
        if (inBatch) {
          return this.fail(I915_ERROR_INSTRUCTION, at, "MI_BATCH_BUFFER_START inside a batch buffer: one level only");
        }
        if ((h & MI_BATCH_PPGTT) !== 0) {
          return this.fail(I915_ERROR_INSTRUCTION, at, "MI_BATCH_BUFFER_START in PPGTT: not implemented");
        }
        this.busy += cost.batchStartNs;
        return this.runBatch(((cmd[1]! & ~3) >>> 0) + (cmd[2]! & 0xffff) * TWO32, epoch);
      }
      case K_COLOR_BLT:
        return this.colorBlt(n, at);
      case K_SRC_COPY_BLT:
        return this.srcCopyBlt(n, at);
      default:
        return this.fail(I915_ERROR_INSTRUCTION, at, `unknown command ${hex(h)}`);
    }
  }

  private colorBlt(n: number, at: number): boolean {
    const ctx = this.ctx;
    const cmd = this.cmd;
    if (n !== 7) return this.fail(I915_ERROR_INSTRUCTION, at, `XY_COLOR_BLT of ${n} dwords (7)`);
    const br13 = cmd[1]!;
    const bad = this.checkBlt(cmd[0]!, br13, ROP_PATCOPY, "XY_COLOR_BLT");
    if (bad !== undefined) return this.fail(I915_ERROR_INSTRUCTION, at, bad);
    const pitch = br13 & BR13_PITCH_MASK;
    const x1 = cmd[2]! & 0xffff;
    const y1 = cmd[2]! >>> 16;
    const x2 = cmd[3]! & 0xffff;
    const y2 = cmd[3]! >>> 16;
    const dst = cmd[4]! + (cmd[5]! & 0xffff) * TWO32;
    const bytes = Math.max(0, x2 - x1) * 4 * Math.max(0, y2 - y1);
    this.busy += ctx.cost.blitSetupNs + bytes / ctx.cost.fillBytesPerNs;
    ctx.memory.agent = this.id;
    const ok = ctx.blitter.fill(dst, pitch, x1, y1, x2, y2, cmd[6]!);
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
    const dstPitch = br13 & BR13_PITCH_MASK;
    const x1 = cmd[2]! & 0xffff;
    const y1 = cmd[2]! >>> 16;
    const x2 = cmd[3]! & 0xffff;
    const y2 = cmd[3]! >>> 16;
    const dst = cmd[4]! + (cmd[5]! & 0xffff) * TWO32;
    const sx = cmd[6]! & 0xffff;
    const sy = cmd[6]! >>> 16;
    const srcPitch = cmd[7]! & BR13_PITCH_MASK;
    const src = cmd[8]! + (cmd[9]! & 0xffff) * TWO32;
    const bytes = Math.max(0, x2 - x1) * 4 * Math.max(0, y2 - y1);
    this.busy += ctx.cost.blitSetupNs + bytes / ctx.cost.copyBytesPerNs;
    ctx.memory.agent = this.id;
    const ok = ctx.blitter.copy(dst, dstPitch, x1, y1, x2, y2, src, srcPitch, sx, sy);
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

  /** Why a blit header / BR13 cannot run, or undefined. */
  private checkBlt(header: number, br13: number, rop: number, name: string): string | undefined {
    if ((header & (XY_SRC_COPY_BLT_SRC_TILED | XY_SRC_COPY_BLT_DST_TILED)) !== 0) {
      return `${name} with a tiled surface: only linear surfaces are implemented`;
    }
    if ((br13 & BR13_COLOR_DEPTH_MASK) !== BR13_32BPP) {
      return `${name} with colour depth ${(br13 & BR13_COLOR_DEPTH_MASK) >>> 24}: only 32 bpp (3) is implemented`;
    }
    const r = (br13 >>> BR13_ROP_SHIFT) & 0xff;
    if (r !== rop) return `${name} with raster operation ${hex(r)}: only ${hex(rop)} is implemented`;
    return undefined;
  }

  /** Halts the engine: sets RING_EIR, raises the CS error interrupt, records the run's first error. Returns false. */
  private fail(eirBit: number, gma: number, message: string): false {
    const ctx = this.ctx;
    this.eir = (this.eir | eirBit) >>> 0;
    this.acthd = gma;
    if (this.last.error === undefined) this.last.error = message;
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.error", { bdf: ctx.bdf, engine: this.id, gma, eir: this.eir, message });
    }
    ctx.irq.event(GT_CS_MASTER_ERROR_INTERRUPT << this.irqShift);
    return false;
  }
}
