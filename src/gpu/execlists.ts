/**
 * Execlists: how an engine with GFX_MODE's RUN_LIST bit set takes work. Software writes a pair of context
 * descriptors to ELSP (four dword writes: element 1 high, element 1 low, element 0 high, element 0 low; the fourth
 * submits), the engine restores each context from its logical ring context image (lrc.ts), runs its ring, saves it
 * back, and reports every switch in the context status buffer (CSB): six entries of (status, context id) written to
 * the hardware status page (RING_HWS_PGA) at dword 0x10 + 2 * slot with the write pointer at dword 0x1f, mirrored in
 * the CSB registers, each with a context-switch interrupt.
 *
 * Events (gen9, two ports):
 * - submission to an idle engine: element 0 is restored, IDLE_TO_ACTIVE;
 * - element 0 completes (HEAD reaches TAIL with no batch in progress) and element 1 is valid: ELEMENT_SWITCH |
 *   COMPLETE for element 0, element 1 is restored and runs;
 * - the last element completes: ACTIVE_TO_IDLE | COMPLETE; the engine is idle;
 * - submission while a context is still active (it waits on a semaphore, or for the rest of a command at TAIL): if
 *   element 0 is that context, a lite restore: PREEMPTED | LITE_RESTORE, the engine re-reads only TAIL from the image
 *   and goes on; otherwise a preemption: the running context is saved, PREEMPTED (its id), and the new element 0 is
 *   restored.
 * - an engine error (RING_EIR) switches the running element out with ACTIVE_TO_IDLE | COMPLETE; element 1 of its pair
 *   is dropped; the engine is halted (ELSP is ignored) until RING_EIR is cleared or the engine reset.
 * The write pointer advances before each entry (slot = write pointer + 1, mod 6); after a reset it is 5, so the first
 * entry lands in slot 0 (a pointer of 7, GVT-g's "none", behaves the same).
 *
 * Restore reads the register state page (page 1) at the CTX_* indices: CONTEXT_CONTROL, ring HEAD, TAIL, START, CTL,
 * PDP0 (the PML4 of the context's PPGTT; 0 = none) always; batch state and CTX_TIMESTAMP only without
 * ENGINE_CTX_RESTORE_INHIBIT (with it the engine starts them from 0). Save (unless ENGINE_CTX_SAVE_INHIBIT) writes
 * back HEAD, TAIL, batch state, CTX_TIMESTAMP (advanced by the context's busy time at the CS timestamp rate) and
 * CONTEXT_CONTROL with restore-inhibit cleared (the image is now restorable). A descriptor whose addressing mode is not
 * 3 (legacy 64-bit, 4-level PPGTT: the only one Skylake uses) or an image the engine cannot read is an engine error.
 *
 * Everything happens synchronously in the ELSP write (as the legacy ring runs in its TAIL write); an ELSP write that
 * arrives while the engine runs (an LRI, an interrupt handler) or while STOP_RING is set is held and submitted when
 * the engine is free. A waiting context is re-evaluated by `resume`.
 *
 * Not modelled: the pending execlist queue (a second pair while one is active: the model preempts or lite-restores at
 * once), preemption to idle, FORCE_RESTORE / FORCE_PD_RESTORE (a restore always reloads the ring context and PDP0),
 * legacy 32-bit (3-level, PDP0..3) and advanced contexts, engine state beyond the ring context (pages 2..).
 */
import { defineTraceEvents } from "../core/index.ts";
import type { Engine, EngineContext } from "./engine.ts";
import {
  type CsbEvent,
  CTX_BB_ADDR,
  CTX_BB_ADDR_UDW,
  CTX_BB_STATE,
  CTX_CONTEXT_CONTROL,
  CTX_PDP0_LDW,
  CTX_PDP0_UDW,
  CTX_RING_CTL,
  CTX_RING_HEAD,
  CTX_RING_START,
  CTX_RING_TAIL,
  CTX_TIMESTAMP,
  csbStatusName,
  descriptorAddressingMode,
  descriptorLrca,
  descriptorValid,
  LRC_RESTORE_DWORDS,
  LRC_STATE_OFFSET,
} from "./lrc.ts";
import { describeFault } from "./memory.ts";
import { ppgttEntryAddress } from "./ppgtt.ts";
import {
  CS_TIMESTAMP_HZ,
  CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT,
  CTX_CTRL_ENGINE_CTX_SAVE_INHIBIT,
  EXECLIST_STATUS_ARB_ENABLE,
  EXECLIST_STATUS_ELEMENT0_ACTIVE,
  EXECLIST_STATUS_ELEMENT1_ACTIVE,
  EXECLIST_STATUS_LIST_VALID,
  EXECLIST_STATUS_SWITCH_REASON_SHIFT,
  GEN8_CSB_ENTRIES,
  GEN8_CTX_STATUS_ACTIVE_IDLE,
  GEN8_CTX_STATUS_COMPLETE,
  GEN8_CTX_STATUS_ELEMENT_SWITCH,
  GEN8_CTX_STATUS_IDLE_ACTIVE,
  GEN8_CTX_STATUS_LITE_RESTORE,
  GEN8_CTX_STATUS_PREEMPTED,
  GT_CONTEXT_SWITCH_INTERRUPT,
  type GtEngineId,
  HEAD_ADDR,
  I915_ERROR_INSTRUCTION,
  I915_ERROR_PAGE_TABLE,
  I915_HWS_CSB_BUF0_INDEX,
  I915_HWS_CSB_WRITE_INDEX,
  INTEL_LEGACY_64B_CONTEXT,
  maskedWrite,
  RING_BB_PPGTT,
  RING_CONTEXT_CONTROL,
  RING_CONTEXT_STATUS_BUF_BASE,
  RING_CONTEXT_STATUS_PTR,
  RING_ELSP,
  RING_EXECLIST_STATUS_HI,
  RING_EXECLIST_STATUS_LO,
  RING_NR_PAGES,
  RING_VALID,
  TAIL_ADDR,
} from "./regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "gpu.execlist.submit": {
      bdf: string;
      engine: string;
      ctx0: number;
      lrca0: number;
      ctx1: number | null;
      lrca1: number | null;
      result: string;
    };
    "gpu.execlist.in": {
      bdf: string;
      engine: string;
      ctxId: number;
      lrca: number;
      head: number;
      tail: number;
      restore: string;
    };
    "gpu.execlist.out": {
      bdf: string;
      engine: string;
      ctxId: number;
      lrca: number;
      head: number;
      timestamp: number;
      outcome: string;
      saved: boolean;
    };
    "gpu.execlist.csb": { bdf: string; engine: string; slot: number; status: string; ctxId: number };
  }
}
defineTraceEvents("gpu", {
  "gpu.execlist.submit": "{bdf} {engine}: ELSP ctx {ctx0} (lrca {lrca0}), ctx {ctx1} (lrca {lrca1}): {result}",
  "gpu.execlist.in": "{bdf} {engine}: ctx {ctxId} (lrca {lrca}) in, {restore} restore, head {head} tail {tail}",
  "gpu.execlist.out":
    "{bdf} {engine}: ctx {ctxId} (lrca {lrca}) out ({outcome}), head {head}, timestamp {timestamp}, saved {saved}",
  "gpu.execlist.csb": "{bdf} {engine}: CSB[{slot}] = {status}, ctx {ctxId}",
});

/** What one element did, from its restore to its switch-out (the model's record: hardware reports only the CSB). */
export interface ContextRun {
  readonly engine: GtEngineId;
  /** The descriptor's high dword (what the CSB reports) and the image's GGTT address. */
  readonly ctxId: number;
  readonly lrca: number;
  /** HEAD and TAIL at switch-out: HEAD is what the save wrote back into the image (unless save-inhibit). */
  readonly head: number;
  readonly tail: number;
  /** CTX_TIMESTAMP at switch-out. */
  readonly timestamp: number;
  readonly commands: number;
  readonly busyNs: number;
  /** GTT, PPGTT and IOMMU faults while it ran. */
  readonly faults: number;
  readonly userInterrupts: number;
  /** The CSB entries written for it (its schedule-in, lite restores, its switch-out). */
  readonly events: readonly CsbEvent[];
  /** Completed (HEAD reached TAIL), preempted (another context replaced it), or stopped by an engine error. */
  readonly outcome: "complete" | "preempted" | "error";
  readonly error?: string;
}

interface Element {
  readonly lo: number;
  readonly hi: number;
  readonly lrca: number;
}

interface Loaded {
  elem: Element;
  /** CONTEXT_CONTROL as restored (bits 0..15). */
  ctxControl: number;
  saveInhibit: boolean;
  timestampBase: number;
  readonly events: CsbEvent[];
  error: string | undefined;
  // Monotonic counters at restore.
  readonly commands0: number;
  readonly busy0: number;
  readonly faults0: number;
  readonly irq0: number;
}

/** The write (and read) pointer after a reset: the first entry lands in slot 0. */
const CSB_RESET = GEN8_CSB_ENTRIES - 1;
const TWO32 = 4294967296;

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function element(lo: number, hi: number): Element {
  return { lo: lo >>> 0, hi: hi >>> 0, lrca: descriptorLrca(lo) };
}

export class Execlists {
  /** The most recent element switched out, and how many have been (monotonic). */
  lastOut: ContextRun | undefined = undefined;
  outCount = 0;
  /** The CSB pointers (3 bits each). */
  csbWrite = CSB_RESET;
  csbRead = CSB_RESET;

  private readonly latch = new Uint32Array(4);
  private latched = 0;
  private pair: [Element | undefined, Element | undefined] = [undefined, undefined];
  private current = -1;
  private loaded: Loaded | undefined = undefined;
  private deferred: [Element, Element | undefined] | undefined = undefined;
  private readonly csbMmio = new Uint32Array(2 * GEN8_CSB_ENTRIES);
  private lastStatus = 0;
  private readonly image = new Uint8Array(LRC_RESTORE_DWORDS * 4);
  private readonly imageView = new DataView(this.image.buffer);

  constructor(
    private readonly engine: Engine,
    private readonly ctx: EngineContext,
  ) {}

  /** A context is loaded on the engine (running, or waiting). */
  get active(): boolean {
    return this.loaded !== undefined;
  }

  /** The context id of the loaded context, or undefined. */
  get activeContext(): number | undefined {
    return this.loaded?.elem.hi;
  }

  // ---- registers ---------------------------------------------------------------------------------------------------

  readRegister(off: number): number {
    switch (off) {
      case RING_EXECLIST_STATUS_LO: {
        let v = (this.lastStatus & 0x1ff) << EXECLIST_STATUS_SWITCH_REASON_SHIFT;
        if (this.pair[0] !== undefined) v |= EXECLIST_STATUS_LIST_VALID;
        if (this.engine.arbEnabled) v |= EXECLIST_STATUS_ARB_ENABLE;
        if (this.loaded !== undefined) {
          v |= this.current === 1 ? EXECLIST_STATUS_ELEMENT1_ACTIVE : EXECLIST_STATUS_ELEMENT0_ACTIVE;
        }
        return v >>> 0;
      }
      case RING_EXECLIST_STATUS_HI:
        return this.loaded?.elem.hi ?? 0;
      case RING_CONTEXT_CONTROL:
        return this.loaded?.ctxControl ?? 0;
      case RING_CONTEXT_STATUS_PTR:
        return (this.csbRead << 8) | this.csbWrite;
      default:
        if (off >= RING_CONTEXT_STATUS_BUF_BASE && off < RING_CONTEXT_STATUS_BUF_BASE + 8 * GEN8_CSB_ENTRIES) {
          return this.csbMmio[(off - RING_CONTEXT_STATUS_BUF_BASE) / 4]!;
        }
        return 0;
    }
  }

  writeRegister(off: number, v: number): void {
    switch (off) {
      case RING_ELSP:
        this.latch[this.latched++] = v;
        if (this.latched === 4) {
          this.latched = 0;
          // Element 1 came first: high, low; then element 0: high, low.
          this.submit(element(this.latch[3]!, this.latch[2]!), element(this.latch[1]!, this.latch[0]!));
        }
        return;
      case RING_CONTEXT_STATUS_PTR: {
        const nv = maskedWrite((this.csbRead << 8) | this.csbWrite, v);
        this.csbWrite = nv & 7;
        this.csbRead = (nv >>> 8) & 7;
        return;
      }
      case RING_CONTEXT_CONTROL:
        if (this.loaded !== undefined) this.loaded.ctxControl = maskedWrite(this.loaded.ctxControl, v);
        return;
      default:
        return;
    }
  }

  /** CTX_TIMESTAMP of the loaded context now (0 when none). */
  contextTimestamp(): number {
    const l = this.loaded;
    if (l === undefined) return 0;
    return (l.timestampBase + this.ticks(this.engine.busyTotal - l.busy0)) >>> 0;
  }

  /** Engine reset: no context, no pending pair, CSB pointers to their reset value. The HWSP is not touched. */
  reset(): void {
    this.latch.fill(0);
    this.latched = 0;
    this.pair = [undefined, undefined];
    this.current = -1;
    this.loaded = undefined;
    this.deferred = undefined;
    this.csbWrite = CSB_RESET;
    this.csbRead = CSB_RESET;
    this.csbMmio.fill(0);
    this.lastStatus = 0;
  }

  /** The engine recorded an error: it belongs to the loaded context. */
  noteError(message: string): void {
    if (this.loaded !== undefined && this.loaded.error === undefined) this.loaded.error = message;
  }

  /**
   * Re-evaluates the loaded context (a semaphore, STOP_RING released), or submits a pair held while the engine was
   * busy. Does nothing while the engine runs or is halted.
   */
  resume(): void {
    const e = this.engine;
    if (e.isRunning || e.stopped || !e.execlistsEnabled) return;
    const d = this.deferred;
    if (d !== undefined) {
      this.deferred = undefined;
      this.submit(d[0], d[1] ?? element(0, 0));
      return;
    }
    if (this.loaded !== undefined && e.eir === 0) e.activate(() => this.process());
  }

  /** End of an engine activation: a pair submitted meanwhile goes in now. */
  afterActivation(): void {
    if (this.deferred !== undefined) this.resume();
  }

  // ---- submission --------------------------------------------------------------------------------------------------

  private submit(e0: Element, e1: Element): void {
    const e = this.engine;
    const ctx = this.ctx;
    const second = descriptorValid(e1.lo) ? e1 : undefined;
    const result = !e.execlistsEnabled
      ? "ignored: the run list is disabled (GFX_MODE)"
      : e.halted
        ? "ignored: the engine is halted (RING_EIR)"
        : !descriptorValid(e0.lo)
          ? "ignored: element 0 is not valid"
          : e.isRunning || e.stopped
            ? "held until the engine is free"
            : "submitted";
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.execlist.submit", {
        bdf: ctx.bdf,
        engine: e.id,
        ctx0: e0.hi,
        lrca0: e0.lrca,
        ctx1: second?.hi ?? null,
        lrca1: second?.lrca ?? null,
        result,
      });
    }
    if (result === "held until the engine is free") {
      this.deferred = [e0, second];
      return;
    }
    if (result !== "submitted") return;
    e.activate(() => this.schedule(e0, second));
  }

  /** Inside an activation: the new pair replaces whatever is loaded (lite restore, preemption, or from idle). */
  private schedule(e0: Element, e1: Element | undefined): void {
    const e = this.engine;
    const epoch = e.resetEpoch;
    const cur = this.loaded;
    this.pair = [e0, e1];
    this.current = 0;
    if (cur !== undefined && cur.elem.lrca === e0.lrca) {
      cur.elem = e0;
      this.liteRestore(cur);
    } else {
      if (cur !== undefined) this.switchOut(GEN8_CTX_STATUS_PREEMPTED, "preempted");
      if (epoch !== e.resetEpoch) return;
      this.restore(e0);
      if (cur === undefined) this.csb(GEN8_CTX_STATUS_IDLE_ACTIVE, e0.hi);
    }
    if (epoch !== e.resetEpoch) return;
    this.process();
  }

  /** Runs the loaded element; switches to the next one as each completes. Inside an activation. */
  private process(): void {
    const e = this.engine;
    const epoch = e.resetEpoch;
    while (this.loaded !== undefined) {
      if (e.eir === 0) e.execute();
      if (epoch !== e.resetEpoch) return;
      if (e.eir !== 0) {
        this.switchOut(GEN8_CTX_STATUS_ACTIVE_IDLE | GEN8_CTX_STATUS_COMPLETE, "error");
        this.pair = [undefined, undefined];
        this.current = -1;
        return;
      }
      const ringValid = (e.ctl & RING_VALID) !== 0;
      if (e.waiting || e.stopped || (ringValid && (e.bbActive || e.head !== e.tail))) return;
      const next = this.current === 0 ? this.pair[1] : undefined;
      if (next !== undefined) {
        this.switchOut(GEN8_CTX_STATUS_ELEMENT_SWITCH | GEN8_CTX_STATUS_COMPLETE, "complete");
        if (epoch !== e.resetEpoch) return;
        this.current = 1;
        this.restore(next);
        continue;
      }
      this.switchOut(GEN8_CTX_STATUS_ACTIVE_IDLE | GEN8_CTX_STATUS_COMPLETE, "complete");
      this.pair = [undefined, undefined];
      this.current = -1;
    }
  }

  // ---- context restore and save ------------------------------------------------------------------------------------

  private restore(elem: Element): void {
    const e = this.engine;
    const ctx = this.ctx;
    const mem = ctx.memory;
    const l: Loaded = {
      elem,
      ctxControl: 0,
      saveInhibit: true,
      timestampBase: 0,
      events: [],
      error: undefined,
      commands0: e.totalCommands + e.last.commands,
      busy0: e.busyTotal,
      faults0: mem.gttFaults + mem.ppgttFaults + mem.iommuFaults,
      irq0: e.totalUserInterrupts,
    };
    this.loaded = l;
    e.charge(ctx.cost.contextSwitchNs);
    e.contextLoaded = true;
    e.statusPage = elem.lrca;
    e.waiting = false;
    e.bbActive = false;
    e.ppgtt.load(-1);
    const mode = descriptorAddressingMode(elem.lo);
    if (mode !== INTEL_LEGACY_64B_CONTEXT) {
      e.fail(
        I915_ERROR_INSTRUCTION,
        elem.lrca,
        `context descriptor ${hex(elem.lo)}: addressing mode ${mode} is not implemented (only 3, legacy 64-bit: a 4-level PPGTT)`,
      );
      return;
    }
    mem.use(e.id, mem.ggtt);
    if (!mem.read(elem.lrca + LRC_STATE_OFFSET, this.image, 0, this.image.length)) {
      e.fail(I915_ERROR_PAGE_TABLE, elem.lrca, `context restore of lrca ${hex(elem.lrca)}: ${describeFault(mem)}`);
      return;
    }
    const w = (i: number): number => this.imageView.getUint32(i * 4, true);
    l.ctxControl = maskedWrite(0, w(CTX_CONTEXT_CONTROL));
    l.saveInhibit = (l.ctxControl & CTX_CTRL_ENGINE_CTX_SAVE_INHIBIT) !== 0;
    const inhibit = (l.ctxControl & CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT) !== 0;
    e.head = w(CTX_RING_HEAD) & HEAD_ADDR;
    e.tail = w(CTX_RING_TAIL) & TAIL_ADDR;
    e.start = (w(CTX_RING_START) & 0xfffff000) >>> 0;
    e.ctl = (w(CTX_RING_CTL) & (RING_NR_PAGES | RING_VALID)) >>> 0;
    const pml4 = ppgttEntryAddress(w(CTX_PDP0_LDW), w(CTX_PDP0_UDW));
    e.ppgtt.load(pml4 === 0 ? -1 : pml4);
    if (!inhibit) {
      const bb = w(CTX_BB_ADDR);
      e.bbActive = (bb & 1) !== 0;
      e.bbAddr = ((bb & ~3) >>> 0) + (w(CTX_BB_ADDR_UDW) & 0xffff) * TWO32;
      e.bbStart = e.bbAddr;
      e.bbPpgtt = (w(CTX_BB_STATE) & RING_BB_PPGTT) !== 0;
      l.timestampBase = w(CTX_TIMESTAMP);
    } else {
      e.bbAddr = 0;
      e.bbStart = 0;
      e.bbPpgtt = false;
    }
    e.acthd = e.bbActive ? e.bbAddr : e.start + e.head;
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.execlist.in", {
        bdf: ctx.bdf,
        engine: e.id,
        ctxId: elem.hi,
        lrca: elem.lrca,
        head: e.head,
        tail: e.tail,
        restore: inhibit ? "ring context (restore inhibited)" : "full",
      });
    }
  }

  /** Resubmission of the loaded context: only TAIL is read again. */
  private liteRestore(l: Loaded): void {
    const e = this.engine;
    const ctx = this.ctx;
    const mem = ctx.memory;
    mem.use(e.id, mem.ggtt);
    const tail = mem.readU32(l.elem.lrca + LRC_STATE_OFFSET + 4 * CTX_RING_TAIL);
    if (tail < 0) {
      e.fail(I915_ERROR_PAGE_TABLE, l.elem.lrca, `lite restore of lrca ${hex(l.elem.lrca)}: ${describeFault(mem)}`);
      return;
    }
    e.tail = tail & TAIL_ADDR;
    this.csb(GEN8_CTX_STATUS_PREEMPTED | GEN8_CTX_STATUS_LITE_RESTORE, l.elem.hi);
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.execlist.in", {
        bdf: ctx.bdf,
        engine: e.id,
        ctxId: l.elem.hi,
        lrca: l.elem.lrca,
        head: e.head,
        tail: e.tail,
        restore: "lite",
      });
    }
  }

  /** Saves the loaded context into its image, writes the CSB entry `status`, records the run. */
  private switchOut(status: number, outcome: ContextRun["outcome"]): void {
    const e = this.engine;
    const ctx = this.ctx;
    const mem = ctx.memory;
    const l = this.loaded!;
    const timestamp = (l.timestampBase + this.ticks(e.busyTotal - l.busy0)) >>> 0;
    let saved = false;
    if (!l.saveInhibit) {
      mem.use(e.id, mem.ggtt);
      const base = l.elem.lrca + LRC_STATE_OFFSET;
      const words: readonly [number, number][] = [
        [CTX_RING_HEAD, e.head],
        [CTX_RING_TAIL, e.tail],
        [CTX_BB_ADDR, (((e.bbAddr % TWO32) & ~3) | (e.bbActive ? 1 : 0)) >>> 0],
        [CTX_BB_ADDR_UDW, Math.floor(e.bbAddr / TWO32) & 0xffff],
        [CTX_BB_STATE, e.bbPpgtt ? RING_BB_PPGTT : 0],
        [CTX_TIMESTAMP, timestamp],
        [CTX_CONTEXT_CONTROL, ((0xffff << 16) | (l.ctxControl & ~CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT)) >>> 0],
      ];
      saved = true;
      for (const [i, v] of words) {
        if (!mem.writeU32(base + 4 * i, v)) {
          saved = false;
          e.fail(I915_ERROR_PAGE_TABLE, l.elem.lrca, `context save of lrca ${hex(l.elem.lrca)}: ${describeFault(mem)}`);
          break;
        }
      }
    }
    // The record first, then the CSB entry: a driver whose interrupt handler runs inside the entry's write finds
    // the record of the context that entry reports (`lastOut`).
    const run: ContextRun = {
      engine: e.id,
      ctxId: l.elem.hi,
      lrca: l.elem.lrca,
      head: e.head,
      tail: e.tail,
      timestamp,
      commands: e.totalCommands + e.last.commands - l.commands0,
      busyNs: Math.round(e.busyTotal - l.busy0),
      faults: mem.gttFaults + mem.ppgttFaults + mem.iommuFaults - l.faults0,
      userInterrupts: e.totalUserInterrupts - l.irq0,
      events: l.events,
      outcome,
      ...(l.error !== undefined ? { error: l.error } : {}),
    };
    this.lastOut = run;
    this.outCount++;
    this.csb(status, l.elem.hi);
    this.loaded = undefined;
    e.contextLoaded = false;
    e.ppgtt.load(-1);
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.execlist.out", {
        bdf: ctx.bdf,
        engine: e.id,
        ctxId: run.ctxId,
        lrca: run.lrca,
        head: run.head,
        timestamp,
        outcome,
        saved,
      });
    }
  }

  /** Writes one CSB entry (MMIO copy and the HWSP) and raises the context-switch interrupt. */
  private csb(status: number, ctxId: number): void {
    const e = this.engine;
    const ctx = this.ctx;
    const mem = ctx.memory;
    const slot = this.csbWrite >= GEN8_CSB_ENTRIES - 1 ? 0 : this.csbWrite + 1;
    this.csbWrite = slot;
    this.csbMmio[2 * slot] = status;
    this.csbMmio[2 * slot + 1] = ctxId;
    this.lastStatus = status;
    this.loaded?.events.push({ status, ctxId });
    mem.use(e.id, mem.ggtt);
    const hws = e.hwsPga;
    const ok =
      mem.writeU32(hws + 4 * (I915_HWS_CSB_BUF0_INDEX + 2 * slot), status) &&
      mem.writeU32(hws + 4 * (I915_HWS_CSB_BUF0_INDEX + 2 * slot + 1), ctxId) &&
      mem.writeU32(hws + 4 * I915_HWS_CSB_WRITE_INDEX, slot);
    if (ctx.tracer.enabled) {
      ctx.tracer.emit("gpu.execlist.csb", { bdf: ctx.bdf, engine: e.id, slot, status: csbStatusName(status), ctxId });
    }
    if (!ok) e.fail(I915_ERROR_PAGE_TABLE, hws, `context status buffer write: ${describeFault(mem)}`);
    e.raise(GT_CONTEXT_SWITCH_INTERRUPT);
  }

  /** CS timestamp ticks in `ns` of engine time. */
  private ticks(ns: number): number {
    return Math.floor((ns * CS_TIMESTAMP_HZ) / 1e9);
  }
}
