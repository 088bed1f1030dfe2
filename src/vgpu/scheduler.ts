/**
 * The vGPU scheduler: GVT-g's time-based scheduler (sched_policy.c, "tbs") on the injected SchedulingClock.
 *
 * One vGPU owns the physical engines at a time (`current`; none = GVT-g's idle vGPU, id 0). A 1 ms timer and every
 * new submission ("event scheduling") run the same step: charge the current vGPU for the time it has owned the GPU
 * since it was last charged (its time left may go negative: debt), rebalance every 100 ms, then pick the next vGPU:
 * the first in LRU order that has work queued and time left; the one picked moves to the LRU tail; if none, the idle
 * vGPU. A switch waits until the current vGPU's in-flight work has completed (no preemption); meanwhile no new work
 * of it is dispatched. While a vGPU is current, its queued workloads are dispatched to the host driver one per engine
 * at a time (in order), and each completion dispatches the next.
 *
 * Rebalance (gvt_balance_timeslice), every 100 ms in stages 0..9: at stage 0 each active vGPU's allocation becomes
 * 100 ms / total weight * its weight and its time left is reset to it (debt and surplus forgiven once a second); at
 * the other stages the allocation is added to what is left (unused time and debt carry over). Difference, stated:
 * GVT-g leaves a vGPU that becomes active between stage-0 rebalances with no allocation until the next stage 0 (up to
 * a second); here activating or deactivating a vGPU restarts the cycle at stage 0, so shares follow the new weights.
 *
 * Accounting per vGPU: scheduled time (owning the GPU), engine busy time (SubmissionResult.busyNs), slices (times
 * switched in), workloads submitted and completed, time left and allocation. The timer runs only while some vGPU is
 * active, so an idle host schedules no timers.
 *
 * Deactivating the current vGPU while its work is on an engine lets that work finish before the switch (GVT-g waits
 * for a stopping vGPU to go idle), so the engines never hold two vGPUs' work at once.
 *
 * Invariants: the current vGPU (if any) is active, or inactive and draining its in-flight work before a pending
 * switch; in-flight counts are >= 0; a deactivated vGPU has no queued work.
 */
import {
  defineTraceEvents,
  type Iova,
  KernelError,
  NS_PER_MS,
  type SchedulingClock,
  type TimerHandle,
  type Tracer,
} from "../core/index.ts";
import type {
  ContextSubmissionResult,
  EngineId,
  GtEngineId,
  HostGpu,
  ShadowBuffer,
  SubmissionResult,
} from "../gpu/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.sched.slice": { from: number; to: number; leftNs: number; reason: string };
    "vgpu.sched.balance": { stage: number; totalWeight: number; allocations: readonly number[] };
    "vgpu.cmd.submit": { vgpu: number; engine: string; dwords: number; queued: number };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.sched.slice": "scheduler: vgpu{from} -> vgpu{to} ({leftNs} ns left): {reason}",
  "vgpu.sched.balance": "scheduler: rebalance stage {stage}, total weight {totalWeight}, allocations {allocations} ns",
  "vgpu.cmd.submit": "vgpu{vgpu}: workload of {dwords} dwords sent to {engine} ({queued} still queued)",
});

/** GVT_DEFAULT_TIME_SLICE / GVT_TS_BALANCE_PERIOD_MS / GVT_TS_BALANCE_STAGE_NUM */
export const SCHED_SLICE_NS = NS_PER_MS;
export const SCHED_BALANCE_NS = 100 * NS_PER_MS;
export const SCHED_BALANCE_STAGES = 10;

/** One audited submission waiting for (or on) an engine. */
export interface Workload {
  readonly vgpuId: number;
  readonly engine: EngineId;
  readonly commands: Uint32Array;
  /**
   * Called exactly once: with the engine's result after execution, or with undefined if the workload is dropped
   * before reaching the engine (reset, deactivation). Frees the workload's shadow buffers.
   */
  retire(result: SubmissionResult | undefined): void;
}

/**
 * One audited guest context (execlist-backend.ts's shadow of a workload of the virtual execlists), sent to the
 * engine with `HostGpu.submitContext`.
 */
export interface ContextWorkload {
  readonly vgpuId: number;
  readonly engine: GtEngineId;
  readonly context: {
    /** The shadow context image (a shadow buffer of the host driver). */
    readonly image: ShadowBuffer;
    /** DMA address of the shadow PML4. */
    readonly pml4: Iova;
    /** Dwords of its shadow ring (for the trace). */
    readonly dwords: number;
    /** The guest's name for it (its LRCA and context id), for attribution. */
    readonly label?: string;
  };
  /** As `Workload.retire`, with the context's result. */
  retire(result: ContextSubmissionResult | undefined): void;
}

/** Anything the scheduler queues. */
export type AnyWorkload = Workload | ContextWorkload;

function isContext(w: AnyWorkload): w is ContextWorkload {
  return "context" in w;
}

/** Per-vGPU scheduling counters. */
export interface VgpuSchedStats {
  readonly weight: number;
  readonly active: boolean;
  /** Time owning the GPU (GVT-g's sched_time). */
  readonly scheduledNs: number;
  /** Engine time of its completed workloads. */
  readonly busyNs: number;
  readonly slices: number;
  readonly allocatedNs: number;
  readonly leftNs: number;
  readonly submitted: number;
  readonly completed: number;
  readonly queued: number;
  readonly inFlight: number;
}

class SchedData {
  active = false;
  allocatedNs = 0;
  leftNs = 0;
  scheduledNs = 0;
  busyNs = 0;
  slices = 0;
  submitted = 0;
  completed = 0;
  inFlight = 0;
  readonly queues = new Map<GtEngineId, AnyWorkload[]>();
  readonly busyEngine = new Set<GtEngineId>();
  constructor(
    readonly id: number,
    readonly weight: number,
  ) {}
  queued(): number {
    let n = 0;
    for (const q of this.queues.values()) n += q.length;
    return n;
  }
}

/** What the scheduler needs of the host driver: a place to send work (rings, and contexts with execlists). */
export type WorkSink = Pick<HostGpu, "submit" | "submitContext">;

export interface GvtSchedulerOptions {
  readonly gpu: WorkSink;
  readonly clock: SchedulingClock;
  readonly tracer: Tracer;
  readonly sliceNs?: number;
  readonly balanceNs?: number;
}

export class GvtScheduler {
  private readonly gpu: WorkSink;
  private readonly clock: SchedulingClock;
  private readonly tracer: Tracer;
  private readonly sliceNs: number;
  private readonly balanceNs: number;
  private readonly all = new Map<number, SchedData>();
  /** Active vGPUs in LRU order (least recently picked first). */
  private lru: SchedData[] = [];
  private cur: SchedData | null = null;
  /** A switch waiting for the current vGPU's in-flight work: the target (null = idle), or undefined for none. */
  private next: SchedData | null | undefined = undefined;
  private schedIn = 0;
  private expire = 0;
  private stage = 0;
  private timer: TimerHandle | undefined;
  private running = false;
  private again = false;
  /** A tick, a submission or a run-queue change asked for a new pick (completions only finish switches). */
  private pickWanted = false;

  constructor(opts: GvtSchedulerOptions) {
    this.gpu = opts.gpu;
    this.clock = opts.clock;
    this.tracer = opts.tracer;
    this.sliceNs = opts.sliceNs ?? SCHED_SLICE_NS;
    this.balanceNs = opts.balanceNs ?? SCHED_BALANCE_NS;
  }

  /** The vGPU owning the engines, 0 for the idle vGPU. */
  get current(): number {
    return this.cur?.id ?? 0;
  }

  /** Registers vGPU `id` (inactive) with its weight. */
  add(id: number, weight: number): void {
    if (this.all.has(id)) throw new Error(`scheduler: vgpu${id} added twice`);
    this.all.set(id, new SchedData(id, weight));
  }

  /** Forgets vGPU `id` (deactivating it first). */
  remove(id: number): void {
    this.deactivate(id);
    this.all.delete(id);
  }

  /** The vGPU may be scheduled (a VMM opened it): joins the run queue at its head; the balance restarts. */
  activate(id: number): void {
    const d = this.data(id);
    if (d.active) return;
    d.active = true;
    this.lru.unshift(d);
    this.restartBalance();
    if (this.timer === undefined) this.armTimer();
    this.pickWanted = true;
    this.schedule();
  }

  /** Leaves the run queue; queued work is dropped; in-flight work completes on the engines unseen. */
  deactivate(id: number): void {
    const d = this.all.get(id);
    if (d === undefined || !d.active) return;
    d.active = false;
    this.lru = this.lru.filter((x) => x !== d);
    this.drop(id);
    if (this.next === d) this.next = undefined;
    if (this.cur === d) {
      if (d.inFlight > 0) {
        // As GVT-g waits for a stopping vGPU to go idle: its work on the engines finishes before anyone else's starts.
        if (this.next === undefined) this.next = null;
      } else {
        this.charge(this.clock.now());
        this.cur = null;
        this.trace(d.id, 0, 0, "deactivated");
      }
    }
    this.restartBalance();
    if (this.lru.length === 0) {
      this.timer?.cancel();
      this.timer = undefined;
    }
    this.pickWanted = true;
    this.schedule();
  }

  /** Queues an audited workload and asks for a scheduling decision (GVT-g's event scheduling). */
  enqueue(w: AnyWorkload): void {
    const d = this.data(w.vgpuId);
    if (!d.active) {
      w.retire(undefined);
      return;
    }
    let q = d.queues.get(w.engine);
    if (q === undefined) {
      q = [];
      d.queues.set(w.engine, q);
    }
    q.push(w);
    this.pickWanted = true;
    this.schedule();
  }

  /** Drops every queued (not yet dispatched) workload of `id`, optionally only of `engine`. */
  drop(id: number, engine?: GtEngineId): void {
    const d = this.all.get(id);
    if (d === undefined) return;
    for (const [e, q] of d.queues) {
      if (engine !== undefined && e !== engine) continue;
      const gone = q.splice(0);
      for (const w of gone) w.retire(undefined);
    }
  }

  /** Workloads of `id` queued or on an engine. */
  outstanding(id: number, engine?: GtEngineId): number {
    const d = this.all.get(id);
    if (d === undefined) return 0;
    if (engine === undefined) return d.queued() + d.inFlight;
    return (d.queues.get(engine)?.length ?? 0) + (d.busyEngine.has(engine) ? 1 : 0);
  }

  stats(id: number): VgpuSchedStats {
    const d = this.data(id);
    const now = this.clock.now();
    const running = this.cur === d ? now - this.schedIn : 0;
    return {
      weight: d.weight,
      active: d.active,
      scheduledNs: d.scheduledNs + running,
      busyNs: d.busyNs,
      slices: d.slices,
      allocatedNs: d.allocatedNs,
      leftNs: d.leftNs - running,
      submitted: d.submitted,
      completed: d.completed,
      queued: d.queued(),
      inFlight: d.inFlight,
    };
  }

  checkInvariants(): void {
    if (this.cur !== null && !this.cur.active && (this.next === undefined || this.cur.inFlight === 0)) {
      throw new Error(`scheduler: current vgpu${this.cur.id} is inactive and not draining`);
    }
    for (const d of this.all.values()) {
      if (d.inFlight < 0 || d.inFlight !== d.busyEngine.size) {
        throw new Error(`scheduler: vgpu${d.id} in-flight count ${d.inFlight} vs ${d.busyEngine.size} busy engines`);
      }
      if (!d.active && d.queued() > 0) throw new Error(`scheduler: inactive vgpu${d.id} has queued work`);
    }
  }

  // ---- the scheduling step ---------------------------------------------------------------------------------------

  private tick(): void {
    this.timer = undefined;
    if (this.lru.length === 0) return;
    this.armTimer();
    this.pickWanted = true;
    this.schedule();
  }

  /** intel_gvt_schedule: charge, rebalance if due, pick, switch or dispatch. Re-entrant calls are folded. */
  private schedule(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      do {
        this.again = false;
        this.step();
      } while (this.again);
    } finally {
      this.running = false;
    }
  }

  private step(): void {
    const now = this.clock.now();
    if (now >= this.expire && this.lru.length > 0) {
      this.balance();
      this.expire = now + this.balanceNs;
    }
    this.charge(now);
    const pickWanted = this.pickWanted;
    this.pickWanted = false;
    if (pickWanted && this.next === undefined && this.lru.length > 0) {
      const pick = this.findBusy();
      if (pick !== null) {
        this.lru = this.lru.filter((x) => x !== pick);
        this.lru.push(pick);
      }
      if (pick !== this.cur) this.next = pick;
    }
    if (this.next !== undefined) {
      if (this.cur !== null && this.cur.inFlight > 0) return; // wait for its work to drain
      const from = this.cur;
      this.cur = this.next;
      this.next = undefined;
      this.schedIn = now;
      if (this.cur !== null) this.cur.slices++;
      const reason = this.cur === null ? "no vGPU has work and time left" : "next in LRU order with work and time left";
      this.trace(from?.id ?? 0, this.cur?.id ?? 0, this.cur?.leftNs ?? 0, reason);
      if (this.cur === null) {
        // Work that arrived while the switch to idle waited for the engines is picked up at once.
        this.pickWanted = true;
        this.again = true;
      }
    }
    this.dispatch();
  }

  /** vgpu_update_timeslice */
  private charge(now: number): void {
    const d = this.cur;
    if (d === null) return;
    const delta = now - this.schedIn;
    d.scheduledNs += delta;
    d.leftNs -= delta;
    this.schedIn = now;
  }

  /** find_busy_vgpu */
  private findBusy(): SchedData | null {
    for (const d of this.lru) if (d.queued() > 0 && d.leftNs > 0) return d;
    return null;
  }

  /** gvt_balance_timeslice */
  private balance(): void {
    if (this.stage === 0) {
      let total = 0;
      for (const d of this.lru) total += d.weight;
      for (const d of this.lru) {
        d.allocatedNs = Math.floor(this.balanceNs / total) * d.weight;
        d.leftNs = d.allocatedNs;
      }
      if (this.tracer.enabled) {
        this.tracer.emit("vgpu.sched.balance", {
          stage: 0,
          totalWeight: total,
          allocations: this.lru.map((d) => d.allocatedNs),
        });
      }
    } else {
      for (const d of this.lru) d.leftNs += d.allocatedNs;
    }
    this.stage = (this.stage + 1) % SCHED_BALANCE_STAGES;
  }

  private restartBalance(): void {
    this.stage = 0;
    this.expire = 0;
  }

  /** Sends the current vGPU's next workload to each idle engine. */
  private dispatch(): void {
    const d = this.cur;
    if (d === null || this.next !== undefined) return;
    for (const [engine, q] of d.queues) {
      if (q.length === 0 || d.busyEngine.has(engine)) continue;
      const w = q.shift()!;
      d.busyEngine.add(engine);
      d.inFlight++;
      d.submitted++;
      if (this.tracer.enabled) {
        const dwords = isContext(w) ? w.context.dwords : w.commands.length;
        this.tracer.emit("vgpu.cmd.submit", { vgpu: d.id, engine, dwords, queued: q.length });
      }
      if (isContext(w)) this.dispatchContext(d, w);
      else {
        this.gpu.submit({
          engine: w.engine,
          commands: w.commands,
          owner: d.id,
          onComplete: (r) => {
            this.account(d, w.engine, r);
            w.retire(r);
            this.schedule();
          },
        });
      }
    }
  }

  private dispatchContext(d: SchedData, w: ContextWorkload): void {
    const done = (r: ContextSubmissionResult): void => {
      this.account(d, w.engine, r);
      w.retire(r);
      // As GVT-g: a completion only finishes a pending switch (need_reschedule) or feeds the engine more work.
      this.schedule();
    };
    try {
      this.gpu.submitContext({
        engine: w.engine,
        image: w.context.image,
        pml4: w.context.pml4,
        owner: d.id,
        ...(w.context.label !== undefined ? { label: w.context.label } : {}),
        onComplete: done,
      });
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      // The host driver refused the context (it names the reason): the workload fails without running.
      done({
        busyNs: 0,
        commands: 0,
        faults: 0,
        userInterrupts: 0,
        error: `the host driver refused the shadow context: ${e.message}`,
        ctxId: 0,
        head: 0,
        tail: 0,
        timestamp: 0,
        events: [],
      });
    }
  }

  private account(d: SchedData, engine: GtEngineId, r: SubmissionResult): void {
    d.inFlight--;
    d.busyEngine.delete(engine);
    d.completed++;
    d.busyNs += r.busyNs;
  }

  private armTimer(): void {
    this.timer = this.clock.after(this.sliceNs, () => this.tick());
  }

  private data(id: number): SchedData {
    const d = this.all.get(id);
    if (d === undefined) throw new Error(`scheduler: vgpu${id} is not registered`);
    return d;
  }

  private trace(from: number, to: number, leftNs: number, reason: string): void {
    if (this.tracer.enabled) this.tracer.emit("vgpu.sched.slice", { from, to, leftNs, reason });
  }
}
