/**
 * Submission on the physical engines, i915's legacy ring-buffer path: each engine has a ring and a hardware status
 * page of the host's (host-buffers.ts), programmed at probe, and a queue of `Submission`s of which one runs at a time.
 *
 * A submission's dwords are copied into the host's ring (split into pieces when they do not fit; the engine waits on
 * a command cut by a piece boundary), TAIL is written and the GPU executes synchronously (see engine.ts); the
 * submission is complete when the engine's busy time has elapsed on the clock: `onComplete` runs from a clock timer at
 * that time (so with a VirtualClock, when the clock is advanced past it), and the next queued submission starts then.
 * After an engine error the driver clears RING_EIR and skips the rest of the submission (HEAD = TAIL), and reports the
 * error in the result. While an engine executes, `executingOwner` names whose work it is (`Submission.owner`): every
 * DMA the GPU makes happens inside a TAIL write, so the isolation checker can attribute it exactly.
 *
 * Not here: what the work may touch (the vendor driver audits it before submitting), interrupts (the driver's
 * handler, host-driver.ts), execlists and GuC submission, hang detection (errors are reported at once).
 *
 * Invariants: at most one submission per engine is in flight; the driver's TAIL is the engine's TAIL after every
 * piece; HEAD = TAIL whenever an engine is idle (a submission that leaves HEAD elsewhere is an error and recovered).
 */
import {
  defineTraceEvents,
  Errno,
  type Gma,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type SchedulingClock,
  type Tracer,
} from "../core/index.ts";
import { type Bdf, type PhysicalMemory, pfnToHpa } from "../host/index.ts";
import type { Submission, SubmissionResult } from "./contract.ts";
import type { GpuDevice } from "./gpu.ts";
import type { HostBuffers, MappedHostBuffer } from "./host-buffers.ts";
import { mmioRead, mmioWrite } from "./host-mmio.ts";
import {
  ENGINE_BASE,
  type EngineId,
  RING_CTL,
  RING_EIR,
  RING_HEAD,
  RING_HWS_PGA,
  RING_START,
  RING_TAIL,
  RING_VALID,
} from "./regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "i915.submit": { bdf: string; engine: string; owner: number; dwords: number; queued: number };
    "i915.complete": {
      bdf: string;
      engine: string;
      owner: number;
      busyNs: number;
      commands: number;
      faults: number;
      error: string | null;
    };
    "i915.recover": { bdf: string; engine: string; head: number; message: string };
  }
}
defineTraceEvents("gpu", {
  "i915.submit": "{bdf} {engine}: submission of {dwords} dword(s) for owner {owner} ({queued} queued)",
  "i915.complete":
    "{bdf} {engine}: submission for owner {owner} complete: {commands} command(s), {busyNs} ns, {faults} fault(s), error {error}",
  "i915.recover": "{bdf} {engine}: engine error cleared, HEAD skipped to {head}: {message}",
});

/** Default size of each engine's ring buffer. */
export const HOST_RING_BYTES = 32 * 1024;
const PAD = new Uint8Array(4); // one MI_NOOP

/** Submission figures of one engine. */
export interface EngineSubmissionStats {
  readonly submissions: number;
  readonly commands: number;
  readonly faults: number;
  readonly errors: number;
  readonly busyNs: number;
  readonly queued: number;
  readonly inFlight: boolean;
}

interface EngineState {
  readonly id: EngineId;
  readonly base: number;
  readonly ring: MappedHostBuffer;
  readonly hws: MappedHostBuffer;
  /** Where the driver writes next (the TAIL it last wrote). */
  tail: number;
  readonly queue: Submission[];
  inFlight: Submission | undefined;
  submissions: number;
  commands: number;
  faults: number;
  errors: number;
  busyNs: number;
}

export interface HostSubmissionOptions {
  readonly bdf: Bdf;
  readonly gpu: GpuDevice;
  readonly physmem: PhysicalMemory;
  readonly clock: SchedulingClock;
  readonly tracer: Tracer;
  /** Where the rings and status pages come from. */
  readonly buffers: HostBuffers;
  readonly engines: readonly EngineId[];
  /** Bytes per ring (validated by the driver). */
  readonly ringBytes: number;
}

export class HostSubmission {
  readonly ringBytes: number;
  private readonly bdf: Bdf;
  private readonly gpu: GpuDevice;
  private readonly physmem: PhysicalMemory;
  private readonly clock: SchedulingClock;
  private readonly tracer: Tracer;
  private readonly buffers: HostBuffers;
  private readonly engineState: Record<EngineId, EngineState>;
  /** Engine busy ns of completed submissions, by `Submission.owner`. */
  private readonly busyByOwner = new Map<number, number>();
  /** `Submission.owner` of the work the engines are executing now, -1 outside execution (see `executingOwner`). */
  private executing = -1;
  private stopped = false;

  /** Allocates each engine's ring and status page, maps them into the GGTT and starts the rings. */
  constructor(opts: HostSubmissionOptions) {
    this.bdf = opts.bdf;
    this.gpu = opts.gpu;
    this.physmem = opts.physmem;
    this.clock = opts.clock;
    this.tracer = opts.tracer;
    this.buffers = opts.buffers;
    this.ringBytes = opts.ringBytes;
    const ringBytes = opts.ringBytes;
    const state = {} as Record<EngineId, EngineState>;
    for (const id of opts.engines) {
      const base = ENGINE_BASE[id];
      const ring = this.buffers.map("ring", ringBytes);
      const hws = this.buffers.map("status page", PAGE_SIZE);
      mmioWrite(this.gpu, base + RING_CTL, 0);
      mmioWrite(this.gpu, base + RING_HWS_PGA, hws.gma);
      mmioWrite(this.gpu, base + RING_HEAD, 0);
      mmioWrite(this.gpu, base + RING_TAIL, 0);
      mmioWrite(this.gpu, base + RING_START, ring.gma);
      mmioWrite(this.gpu, base + RING_CTL, (((ringBytes / PAGE_SIZE - 1) << 12) | RING_VALID) >>> 0);
      state[id] = {
        id,
        base,
        ring,
        hws,
        tail: 0,
        queue: [],
        inFlight: undefined,
        submissions: 0,
        commands: 0,
        faults: 0,
        errors: 0,
        busyNs: 0,
      };
    }
    this.engineState = state;
  }

  /** Queues work on an engine; it starts at once if the engine is idle. EINVAL for an unknown engine or bad dwords. */
  submit(s: Submission): void {
    const e = this.engineState[s.engine];
    if (e === undefined) {
      throw new KernelError(Errno.EINVAL, `engine ${String(s.engine)} does not exist on ${this.bdf} (rcs, bcs)`);
    }
    if (!(s.commands instanceof Uint32Array)) {
      throw new KernelError(Errno.EINVAL, "submission commands must be a Uint32Array of dwords");
    }
    e.queue.push(s);
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

  /** Whether any engine has work queued or running. */
  busy(): boolean {
    for (const e of Object.values(this.engineState)) if (e.inFlight !== undefined || e.queue.length > 0) return true;
    return false;
  }

  /** Stops every ring and frees the rings and status pages (unbinding; the engines must be idle). */
  stop(): void {
    this.stopped = true;
    for (const e of Object.values(this.engineState)) {
      mmioWrite(this.gpu, e.base + RING_CTL, 0);
      this.buffers.unmap(e.ring);
      this.buffers.unmap(e.hws);
    }
  }

  stats(id: EngineId): EngineSubmissionStats {
    return submissionStats(this.engineState[id]);
  }

  /** The `Submission.owner` whose work the engines are executing right now, or -1 when none is. */
  get executingOwner(): number {
    return this.executing;
  }

  /** Engine time (ns, all engines) of the completed submissions of `owner`. */
  ownerBusyNs(owner: number): number {
    return this.busyByOwner.get(owner) ?? 0;
  }

  /** GMA of an engine's ring. */
  ringGma(id: EngineId): Gma {
    return this.engineState[id].ring.gma;
  }

  private startNext(e: EngineState): void {
    if (e.inFlight !== undefined || this.stopped) return;
    const s = e.queue.shift();
    if (s === undefined) return;
    e.inFlight = s;
    const outer = this.executing;
    this.executing = s.owner;
    let result: SubmissionResult;
    try {
      result = this.execute(e, s);
    } finally {
      this.executing = outer;
    }
    const doneAt = Math.max(this.clock.now(), this.gpu.engine(e.id).busyUntil);
    this.clock.at(doneAt, () => this.complete(e, s, result));
  }

  private complete(e: EngineState, s: Submission, result: SubmissionResult): void {
    e.inFlight = undefined;
    e.submissions++;
    e.commands += result.commands;
    e.faults += result.faults;
    e.busyNs += result.busyNs;
    if (result.error !== undefined) e.errors++;
    this.busyByOwner.set(s.owner, (this.busyByOwner.get(s.owner) ?? 0) + result.busyNs);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.complete", {
        bdf: this.bdf,
        engine: e.id,
        owner: s.owner,
        busyNs: result.busyNs,
        commands: result.commands,
        faults: result.faults,
        error: result.error ?? null,
      });
    }
    try {
      s.onComplete(result);
    } finally {
      this.startNext(e);
    }
  }

  /** Copies the submission into the ring piece by piece, moving TAIL; collects what the engine reports. */
  private execute(e: EngineState, s: Submission): SubmissionResult {
    const eng = this.gpu.engine(e.id);
    const len = this.ringBytes;
    const cmds = s.commands;
    const total = cmds.length;
    let commands = 0;
    let busyNs = 0;
    let faults = 0;
    let userInterrupts = 0;
    let error: string | undefined;
    let off = 0;
    while (off < total) {
      const head = mmioRead(this.gpu, e.base + RING_HEAD);
      const used = (e.tail - head + len) % len;
      // Keep 8 bytes free: HEAD == TAIL means empty. Pieces are whole qwords except the last.
      const room = Math.floor((len - 8 - used) / 8) * 2;
      const n = Math.min(total - off, room);
      if (n <= 0) {
        error = `ring of ${len} bytes is full with a command the engine cannot complete`;
        break;
      }
      this.writeRing(e, cmds, off, n);
      off += n;
      if (off === total && n % 2 === 1) this.writeRingPad(e);
      mmioWrite(this.gpu, e.base + RING_TAIL, e.tail);
      const st = eng.last;
      commands += st.commands;
      busyNs += st.busyNs;
      faults += st.gttFaults + st.iommuFaults;
      userInterrupts += st.userInterrupts;
      if (st.error !== undefined) {
        error = st.error;
        break;
      }
    }
    if (error === undefined && total > 0 && mmioRead(this.gpu, e.base + RING_HEAD) !== e.tail) {
      error = "the submission ends inside a command (the engine is waiting for the rest of it)";
    }
    if (error !== undefined) this.recover(e, error);
    return error === undefined
      ? { busyNs, commands, faults, userInterrupts }
      : { busyNs, commands, faults, userInterrupts, error };
  }

  /** The kernel writes the ring through its own mapping: the ring's frames, directly. */
  private writeRing(e: EngineState, cmds: Uint32Array, off: number, n: number): void {
    e.tail = writeToRing(this.physmem, e.ring.buf.pfn, this.ringBytes, e.tail, cmds, off, n);
  }

  private writeRingPad(e: EngineState): void {
    this.physmem.write(pfnToHpa(e.ring.buf.pfn, e.tail), PAD);
    e.tail = (e.tail + 4) % this.ringBytes;
  }

  /** After an engine error: clear RING_EIR and skip whatever is left of the submission. */
  private recover(e: EngineState, message: string): void {
    mmioWrite(this.gpu, e.base + RING_EIR, 0xffffffff);
    mmioWrite(this.gpu, e.base + RING_HEAD, e.tail);
    if (this.tracer.enabled) this.tracer.emit("i915.recover", { bdf: this.bdf, engine: e.id, head: e.tail, message });
  }
}

/** What an engine's submission record holds, whichever way the driver submits (ring or execlists). */
export interface EngineCounters {
  readonly submissions: number;
  readonly commands: number;
  readonly faults: number;
  readonly errors: number;
  readonly busyNs: number;
  readonly queue: readonly unknown[];
  readonly inFlight: unknown;
}

/** The figures `stats` reports for one engine. */
export function submissionStats(e: EngineCounters): EngineSubmissionStats {
  return {
    submissions: e.submissions,
    commands: e.commands,
    faults: e.faults,
    errors: e.errors,
    busyNs: e.busyNs,
    queued: e.queue.length,
    inFlight: e.inFlight !== undefined,
  };
}

/**
 * Copies `n` dwords of `cmds` from `off` into a ring of `ringBytes` at frame `ringPfn`, starting at byte `tail` and
 * wrapping at the end; returns the new tail. The driver's CPU writes (the ring is its own memory, not device DMA).
 */
export function writeToRing(
  physmem: PhysicalMemory,
  ringPfn: Pfn,
  ringBytes: number,
  tail: number,
  cmds: Uint32Array,
  off: number,
  n: number,
): number {
  const bytes = new Uint8Array(cmds.buffer, cmds.byteOffset + off * 4, n * 4);
  const first = Math.min(bytes.length, ringBytes - tail);
  physmem.write(pfnToHpa(ringPfn, tail), bytes, 0, first);
  if (first < bytes.length) physmem.write(pfnToHpa(ringPfn), bytes, first, bytes.length - first);
  return (tail + bytes.length) % ringBytes;
}
