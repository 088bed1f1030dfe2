/**
 * What each scenario step does: a table of handlers, one per step action of schema.ts, each taking the run's
 * `StepContext` and its step and returning a `StepOutcome` (whether the step did what it should, one line for people,
 * structured detail). The runner looks the handler up by action, times the step, matches an expected errno and
 * records the outcome; a handler only does the step.
 *
 * - workload: the VM's guest driver submits a self-checking fill or copy (guest/workloads.ts); with `wait: false` it
 *   stays in flight for a later wait, else it is verified now. A host limit the vendor driver met while mapping the
 *   surfaces fails the step with its errno (diagnose.ts).
 * - wait: lets virtual time pass until the in-flight workloads (of one VM or all) are done, measuring fairness while
 *   several vGPUs of a GPU contend (fairness.ts), then verifies them (`finishPending`, also used at shutdown and at
 *   the end of a run).
 * - attack: the hostile guest's attacks (guest/hostile.ts), optionally aimed at a victim's kept buffer.
 * - alloc / free: a buffer the guest keeps mapped (hence pinned by a vGPU) until freed, optionally in a named RAM block.
 * - plug / unplug: memory hot-(un)plug through the VMM; an unplug takes the kept buffers in the block with it.
 * - kill / shutdown: the VMM process killed, or the VM shut down in order.
 * - check: metrics (metrics.ts) compared with the expected values.
 * - explain: the translation chain of one GMA (explain.ts).
 *
 * Failed expectations are appended to the run's `failures` and make the outcome not ok; errors are KernelErrors
 * thrown to the runner.
 *
 * Invariant: a handler touches the run only through `StepContext`.
 */
import { Errno, hex, KernelError, Rng, type VirtualClock } from "../core/index.ts";
import { type GpuBuffer, type GuestGpuDriver, GuestWorkload, runAttacks, type WorkloadResult } from "../guest/index.ts";
import type { IsolationChecker } from "./checker.ts";
import { diagnose, limitProbe } from "./diagnose.ts";
import type { Explanation } from "./explain.ts";
import { FairnessMeter, type FairnessWindow } from "./fairness.ts";
import { metricOf } from "./metrics.ts";
import type { CheckMetric, Scenario, ScenarioStep } from "./schema.ts";
import type { System } from "./system.ts";
import { formatSize, formatTime } from "./units.ts";
import type { VmRun } from "./vm-run.ts";

/** How long a wait step lets virtual time pass at most, by default. */
export const DEFAULT_WAIT_TIMEOUT_NS = 10e9;
/** Granularity of a wait step's polling of its workloads (virtual time). */
export const WAIT_POLL_NS = 100_000;

/** What a step handler may use of the run (the runner provides it). */
export interface StepContext {
  readonly scenario: Scenario;
  readonly seed: number;
  /** The run's random source (workload seeds not given in the file are forked from it). */
  readonly rng: Rng;
  readonly clock: VirtualClock;
  readonly system: System;
  readonly checker: IsolationChecker;
  readonly vms: ReadonlyMap<string, VmRun>;
  readonly failures: string[];
  readonly fairness: FairnessWindow[];
  readonly explanations: Explanation[];
  /** The VM named `name` (ENOENT if none). */
  vmRun(name: string): VmRun;
  /** The VM named `name`, which must be running (ESRCH otherwise). */
  running(name: string): VmRun;
  /** The VM's guest GPU driver (ENODEV: the VM has no GPU device). */
  driverOf(v: VmRun): GuestGpuDriver;
  /** Stops a running VM in order (guest driver down, VMM shut down). */
  stopVm(v: VmRun): void;
  /** Drops a VM's in-flight workloads without verifying them (the VM is going away). */
  abandon(v: VmRun): void;
  /** The translation chain of `gma` in VM `vm` (see `ScenarioRun.explain`). */
  explain(vm: string, gma?: number): Explanation;
  /** The PPGTT chain of `gva` in VM `vm`'s guest PPGTT (see `ScenarioRun.explainPpgtt`). */
  explainPpgtt(vm: string, gva?: number): Explanation;
}

/** What became of a step. */
export interface StepOutcome {
  /** The step did what it should (expectations met). */
  readonly ok: boolean;
  readonly summary: string;
  readonly detail?: Record<string, unknown>;
}

type StepOf<A extends ScenarioStep["action"]> = Extract<ScenarioStep, { action: A }>;

/** The handler of each step action. */
export type StepHandlers = {
  readonly [A in ScenarioStep["action"]]: (ctx: StepContext, step: StepOf<A>) => StepOutcome;
};

export const STEP_HANDLERS: StepHandlers = {
  workload,
  wait: (ctx, step) => waitStep(ctx, step.vm, step.timeout ?? DEFAULT_WAIT_TIMEOUT_NS),
  attack,
  alloc,
  free(ctx, step) {
    const v = ctx.running(step.vm);
    const i = v.buffers.findIndex((b) => b.name === step.name);
    if (i < 0) throw new KernelError(Errno.ENOENT, `${step.vm} has no buffer "${step.name}"`);
    const [b] = v.buffers.splice(i, 1);
    ctx.driverOf(v).freeBuffer(b!.buffer);
    return { ok: true, summary: `${step.vm} freed buffer ${step.name}: its GTT entries are unmapped (unpinned)` };
  },
  plug(ctx, step) {
    const v = ctx.running(step.vm);
    const block = v.vmm!.plugMemory(step.bytes);
    v.platform?.pages.addBlock(block);
    return {
      ok: true,
      summary: `${step.vm} hot-plugged ${formatSize(step.bytes)} as ${block.name} at GPA ${hex(block.gpa)}`,
    };
  },
  unplug: (ctx, step) => unplug(ctx, step.vm, step.block),
  kill: (ctx, step) => kill(ctx, step.vm),
  shutdown(ctx, step) {
    const v = ctx.running(step.vm);
    finishPending(ctx, step.vm, DEFAULT_WAIT_TIMEOUT_NS, `shutdown ${step.vm}`);
    ctx.stopVm(v);
    return { ok: true, summary: `${step.vm} shut down: guest driver stopped, devices detached, RAM unmapped` };
  },
  check: (ctx, step) => check(ctx, step.vm, step.expect),
  explain(ctx, step) {
    const v = ctx.running(step.vm);
    let gma: number | undefined;
    let buffer: GpuBuffer | undefined;
    if (step.gma !== undefined) gma = typeof step.gma === "number" ? step.gma : Number.parseInt(step.gma, 16);
    else if (step.buffer !== undefined) {
      const b = v.buffers.find((x) => x.name === step.buffer);
      if (b === undefined) throw new KernelError(Errno.ENOENT, `${step.vm} has no buffer "${step.buffer}"`);
      buffer = b.buffer;
    } else buffer = v.buffers[0]?.buffer;
    if (buffer !== undefined) gma = buffer.gma + (step.offset ?? 0);
    const chains = [ctx.explain(step.vm, gma)];
    // A buffer of a driver on execlists is also mapped in its PPGTT: the same page through the other chain.
    if (buffer?.gva !== undefined) chains.push(ctx.explainPpgtt(step.vm, buffer.gva + (step.offset ?? 0)));
    for (const e of chains) {
      ctx.explanations.push(e);
      if (!e.agree) ctx.failures.push(`step ${step.index} (explain ${step.vm}): ${e.note}`);
    }
    const [g, p] = chains;
    return {
      ok: chains.every((e) => e.agree),
      summary:
        `${step.vm} GMA ${hex(g!.gma)}: ${g!.layers.length} layers, ${g!.note}` +
        (p !== undefined ? `; GVA ${hex(p.gva!)}: ${p.layers.length} layers, ${p.note}` : ""),
    };
  },
};

/** Runs `step` with its handler. */
export function executeStep(ctx: StepContext, step: ScenarioStep): StepOutcome {
  const handler = STEP_HANDLERS[step.action] as (ctx: StepContext, step: ScenarioStep) => StepOutcome;
  return handler(ctx, step);
}

function workload(ctx: StepContext, step: StepOf<"workload">): StepOutcome {
  const v = ctx.running(step.vm);
  const driver = ctx.driverOf(v);
  const seed = step.seed ?? ctx.rng.fork(`workload:${step.index}`).u32();
  const before = limitProbe(v);
  const w = GuestWorkload.start(driver, {
    kind: step.kind,
    count: step.count,
    width: step.width,
    height: step.height,
    seed,
    ...(step.pitch !== undefined ? { pitch: step.pitch } : {}),
    ...(step.via !== undefined ? { via: step.via } : {}),
    ...(step.engine !== undefined ? { engine: step.engine } : {}),
    ...(step.opsPerSubmission !== undefined ? { opsPerSubmission: step.opsPerSubmission } : {}),
    ...(step.rects !== undefined ? { rects: step.rects } : {}),
    ...(step.pattern !== undefined ? { pattern: step.pattern } : {}),
    ...(step.zone !== undefined ? { zone: step.zone } : {}),
  });
  const limit = diagnose(v, before);
  if (limit !== undefined) {
    w.release();
    throw limit;
  }
  const what =
    `${step.kind} of ${step.count} x ${step.width}x${step.height} px via ${step.via ?? "ring"}` +
    submissionNote(v.driver!);
  if (step.wait === false) {
    v.pending.push(w);
    return { ok: true, summary: `${step.vm} submitted a ${what} (${w.lastSeqno} fences; verified at the next wait)` };
  }
  const r = w.finish();
  return recordWorkload(ctx, v, r, step.expect?.ok ?? true, step.index);
}

/** How the guest's commands reach the engine, for a step's line: nothing for the legacy ring path. */
function submissionNote(d: GuestGpuDriver): string {
  return d.submission === "execlists" ? " (execlists: its context, PPGTT addresses)" : "";
}

function recordWorkload(ctx: StepContext, v: VmRun, r: WorkloadResult, expectOk: boolean, index: number): StepOutcome {
  v.workloads.push(r);
  const ok = r.ok === expectOk;
  if (!ok) {
    ctx.failures.push(
      `step ${index} (workload ${v.spec.name}): expected ${expectOk ? "a verified result" : "a failure"}, got ` +
        `${r.completed} completed, ${r.rejected} rejected, ${r.timedOut} timed out, ${r.mismatches} mismatching bytes`,
    );
  }
  return {
    ok,
    summary:
      `${v.spec.name} ${r.kind} via ${r.via}${v.driver !== undefined ? submissionNote(v.driver) : ""}: ` +
      `${r.operations} ops, ${formatSize(r.bytes)}, ` +
      (r.elapsedNs > 0
        ? `done in ${formatTime(r.elapsedNs)}`
        : v.driver?.submission === "execlists"
          ? "done inside the ELSP writes (a whole GPU runs a context as its descriptor is written)"
          : "done inside the doorbell writes (a whole GPU runs work as RING_TAIL is written)") +
      `, ${r.ok ? "verified" : `NOT verified (${r.mismatches} bytes differ, ${r.rejected} rejected, ${r.timedOut} timed out)`}`,
    detail: { workload: r },
  };
}

/** A wait step: lets time pass until the pending workloads are done, measuring fairness while they contend. */
function waitStep(ctx: StepContext, vm: string | undefined, timeoutNs: number): StepOutcome {
  const list = [...ctx.vms.values()].filter((v) => (vm === undefined || v.spec.name === vm) && v.pending.length > 0);
  const results = finishPending(ctx, vm, timeoutNs, "wait");
  const ok = results.every((r) => r.ok);
  const verified = results.filter((r) => r.ok).length;
  return {
    ok,
    summary:
      results.length === 0
        ? "nothing in flight"
        : `${list.map((v) => v.spec.name).join(", ")}: ${verified} of ${results.length} workload(s) verified ` +
          `by ${formatTime(ctx.clock.now())}`,
    detail: { workloads: results },
  };
}

/**
 * Lets virtual time pass (polling every `WAIT_POLL_NS`, at most `timeoutNs`) until the in-flight workloads of VM `vm`
 * (or of every VM) are done, with fairness windows while they contend; then verifies each (a failure is recorded,
 * naming `why`). Returns the results in VM order.
 */
export function finishPending(
  ctx: StepContext,
  vm: string | undefined,
  timeoutNs: number,
  why: string,
): WorkloadResult[] {
  const runs = [...ctx.vms.values()].filter((v) => (vm === undefined || v.spec.name === vm) && v.pending.length > 0);
  if (runs.length === 0) return [];
  const clock = ctx.clock;
  const startNs = clock.now();
  const meter = new FairnessMeter(runs, startNs, ctx.system.host.tracer);
  const deadline = startNs + timeoutNs;
  const allDone = () => runs.every((v) => v.pending.every((w) => w.done()));
  while (!allDone() && clock.now() < deadline) {
    clock.advance(Math.min(WAIT_POLL_NS, deadline - clock.now()));
    ctx.fairness.push(...meter.poll(clock.now()));
  }
  ctx.fairness.push(...meter.close(clock.now()));
  const results: WorkloadResult[] = [];
  for (const v of runs) {
    for (const w of v.pending.splice(0)) {
      const r = w.finish(1_000_000);
      v.workloads.push(r);
      results.push(r);
      if (!r.ok) {
        ctx.failures.push(
          `${why}: ${v.spec.name}'s ${r.kind} workload did not verify (${r.completed} completed, ${r.rejected} ` +
            `rejected, ${r.timedOut} timed out, ${r.mismatches} mismatching bytes)`,
        );
      }
    }
  }
  return results;
}

function attack(ctx: StepContext, step: StepOf<"attack">): StepOutcome {
  const v = ctx.running(step.vm);
  const driver = ctx.driverOf(v);
  let victimGma: number | undefined;
  if (step.victim !== undefined) {
    const victim = ctx.vmRun(step.victim);
    victimGma = victim.buffers[0]?.buffer.gma;
    if (victimGma === undefined) {
      throw new KernelError(Errno.EINVAL, `victim ${step.victim} keeps no buffer to aim at (add an alloc step)`);
    }
  }
  const reports = runAttacks(driver, victimGma !== undefined ? { victimGma } : {}, step.attacks ?? undefined);
  v.attacks.push(...reports);
  const executed = reports.filter((r) => r.outcome === "executed");
  const contained = executed.length === 0;
  const want = step.expect?.contained;
  const ok = want === undefined || want === contained;
  if (!ok) {
    ctx.failures.push(
      `step ${step.index} (attack ${step.vm}): expected ${want ? "every attack contained" : "an attack to execute"}, ` +
        `got ${executed.length} executed (${executed.map((r) => r.name).join(", ") || "none"})`,
    );
  }
  const count = (o: string) => reports.filter((r) => r.outcome === o).length;
  return {
    ok,
    summary:
      `${step.vm} tried ${reports.length} attack(s): ${count("rejected")} rejected, ${count("ignored")} ignored, ` +
      `${count("executed")} executed`,
    detail: { attacks: reports },
  };
}

function alloc(ctx: StepContext, step: StepOf<"alloc">): StepOutcome {
  const v = ctx.running(step.vm);
  const driver = ctx.driverOf(v);
  if (v.buffers.some((b) => b.name === step.name)) {
    throw new KernelError(Errno.EEXIST, `${step.vm} already keeps a buffer "${step.name}"`);
  }
  const pages = v.platform!.pages;
  const before = limitProbe(v);
  // The buffer's pages from the named block; the driver's own pages (page tables) wherever the guest puts them.
  const block = step.block;
  const buffer = driver.allocBuffer(step.bytes, {
    ...(step.zone !== undefined ? { zone: step.zone } : {}),
    ...(block !== undefined ? { allocPages: (n: number) => pages.allocPagesIn(block, n) } : {}),
  });
  const limit = diagnose(v, before);
  if (limit !== undefined) {
    driver.freeBuffer(buffer);
    throw limit;
  }
  // Contents the guest can recognise (and a victim's attacker could try to reach).
  const fill = new Uint8Array(buffer.size);
  new Rng(ctx.seed).fork(`buffer:${step.vm}:${step.name}`).fill(fill);
  driver.writeBuffer(buffer, 0, fill);
  v.buffers.push({ name: step.name, buffer, block: step.block });
  const pinned = v.vgpu !== undefined ? `; vgpu${v.vgpu.id} now pins ${v.vgpu.stats().pinnedPages} guest pages` : "";
  return {
    ok: true,
    summary:
      `${step.vm} keeps buffer ${step.name}: ${formatSize(buffer.size)} at GMA ${hex(buffer.gma)}, ` +
      `GPA ${hex(buffer.gpa)}${step.block !== undefined ? ` (in ${step.block})` : ""}${pinned}`,
  };
}

function unplug(ctx: StepContext, vm: string, blockName: string): StepOutcome {
  const v = ctx.running(vm);
  const vmm = v.vmm!;
  const block = vmm.ramBlocks().find((b) => b.name === blockName);
  if (block === undefined) {
    throw new KernelError(
      Errno.EINVAL,
      `${vm} has no RAM block "${blockName}" (blocks: ${vmm
        .ramBlocks()
        .map((b) => b.name)
        .join(", ")})`,
    );
  }
  const pinnedBefore = v.vgpu?.stats().pinnedPages ?? 0;
  const lockedBefore = vmm.process.mm.lockedVm();
  vmm.unplugMemory({ gpa: block.gpa, size: block.size });
  v.platform?.pages.removeBlock(blockName);
  // The guest's kept buffers in that block are gone with it.
  for (let i = v.buffers.length - 1; i >= 0; i--) {
    const b = v.buffers[i]!;
    if (b.buffer.gpa >= block.gpa && b.buffer.gpa < block.gpa + block.size) {
      v.buffers.splice(i, 1);
      try {
        ctx.driverOf(v).freeBuffer(b.buffer);
      } catch {
        // its pages went with the block
      }
    }
  }
  const pinnedAfter = v.vgpu?.stats().pinnedPages ?? 0;
  return {
    ok: true,
    summary:
      `${vm} unplugged ${block.name} (${formatSize(block.size)} at GPA ${hex(block.gpa)}) while ${v.vgpu !== undefined ? `vgpu${v.vgpu.id}` : "its devices"} ` +
      `pinned ${pinnedBefore} guest pages: type1 asked the vendor driver to unpin, locked_vm ${lockedBefore} -> ` +
      `${vmm.process.mm.lockedVm()} pages, pinned ${pinnedBefore} -> ${pinnedAfter}`,
  };
}

function kill(ctx: StepContext, vm: string): StepOutcome {
  const v = ctx.running(vm);
  ctx.abandon(v);
  const pinned = v.vgpu?.stats().pinnedPages ?? 0;
  v.vmm!.kill();
  v.state = "killed";
  return {
    ok: true,
    summary:
      `${vm} (process ${v.pid}) killed: exit closed its fds, vfio released its device(s)` +
      (v.vgpu !== undefined ? `, vgpu${v.vgpu.id} unpinned ${pinned} -> ${v.vgpu.stats().pinnedPages} pages` : ""),
  };
}

function check(
  ctx: StepContext,
  vm: string | undefined,
  expect: Partial<Record<CheckMetric, number | { min?: number; max?: number }>>,
): StepOutcome {
  const got: string[] = [];
  let ok = true;
  for (const [metric, want] of Object.entries(expect) as [CheckMetric, number | { min?: number; max?: number }][]) {
    const value = metricOf({ vms: ctx.vms, checker: ctx.checker, host: ctx.system.host }, vm, metric);
    const pass =
      typeof want === "number"
        ? value === want
        : (want.min === undefined || value >= want.min) && (want.max === undefined || value <= want.max);
    got.push(
      `${metric} ${value}${pass ? "" : ` (expected ${typeof want === "number" ? want : JSON.stringify(want)})`}`,
    );
    if (!pass) {
      ok = false;
      ctx.failures.push(
        `check ${vm ?? "host"}: ${metric} is ${value}, expected ${typeof want === "number" ? want : JSON.stringify(want)}`,
      );
    }
  }
  return { ok, summary: `${vm ?? "host"}: ${got.join(", ")}` };
}
