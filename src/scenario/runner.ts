/**
 * The scenario runner: builds the host a scenario describes, starts its VMs, executes its steps on a virtual clock,
 * checks the isolation invariant on every DMA (checker.ts), and tears everything down. Same scenario + same seed =
 * the same run, event for event: nothing reads wall time or Math.random, every random choice (mdev UUIDs, workload
 * contents) comes from the seed, and the trace (JSON lines) is byte-identical.
 *
 * Order of a run:
 * 1. Checks before anything starts (prechecks.ts), each failing with the Linux errno and a sentence naming the limit.
 * 2. The host (system.ts: i915 + GVT-g parents, GPUs bound to vfio-pci, mtty parents) on a VirtualClock, with the
 *    isolation checker watching every GPU; then the vGPU capacity check against the host drivers.
 * 3. The VMs, at t = 0 in file order ("start" steps in the report): mdevs created through sysfs as mdevctl does, a
 *    VMM process with the VM's RAM and RLIMIT_MEMLOCK, every device attached by sysfs path (vGPU, mtty) or PCI address
 *    (a whole GPU) through the VFIO ioctls, and the guest GPU driver brought up on the VM's GPU device with the
 *    platform the VMM provides (vmm/guest-platform.ts).
 * 4. The steps, in file order, each by its handler (steps.ts); a step with `at` first lets virtual time pass up to it
 *    (engines complete work, interrupts are delivered). Before a step of a VM runs, the checker is told whose guest
 *    code runs (it attributes the shadow buffers a vendor driver allocates meanwhile).
 * 5. The end: pending workloads are waited for, then (unless the caller keeps the run alive for `explain`) the
 *    teardown (teardown.ts): every VM shut down, every mdev removed, and the host checked to hold nothing.
 *
 * Errors: a step that fails with a KernelError stops the run there (unless the step expected that errno), and the
 * record names the step, the errno and the sentence. Unmet expectations are failures: the run goes on and the report
 * lists them. Whatever happens, the teardown runs: nothing is left running.
 *
 * What the runner itself holds: the run's records (steps, failures, fairness windows, explanations, the error), the
 * VMs (vm-run.ts), and the order above; what each step does is steps.ts's.
 */
import {
  defineTraceEvents,
  Errno,
  type ErrnoName,
  isKernelError,
  KernelError,
  Rng,
  type TraceRecord,
  VirtualClock,
} from "../core/index.ts";
import { GuestGpuDriver, type GuestGpuDriverOptions } from "../guest/index.ts";
import { gvtTypeDirName } from "../vgpu/index.ts";
import { Vmm, VmmGuestPlatform } from "../vmm/index.ts";
import { IsolationChecker } from "./checker.ts";
import { type Explanation, explainGma, explainGva } from "./explain.ts";
import type { FairnessWindow } from "./fairness.ts";
import type { GpuInstance } from "./gpus.ts";
import { metricOf } from "./metrics.ts";
import { precheckCapacity, precheckScenario } from "./prechecks.ts";
import type { CheckMetric, Scenario, ScenarioStep, ScenarioVm } from "./schema.ts";
import { DEFAULT_WAIT_TIMEOUT_NS, executeStep, finishPending, type StepContext } from "./steps.ts";
import { createSystem, type System, type SystemConfig } from "./system.ts";
import { type TeardownResult, tearDown } from "./teardown.ts";
import { formatSize } from "./units.ts";
import { newVmRun, type VmRun } from "./vm-run.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "scenario.step": {
      index: number;
      action: string;
      vm: string | null;
      ok: boolean;
      errno: string | null;
      summary: string;
    };
  }
}
defineTraceEvents("scenario", {
  "scenario.step": "step {index} {action} {vm}: ok {ok} (errno {errno}): {summary}",
});

export interface ScenarioRunOptions {
  /** Overrides the scenario's seed. */
  readonly seed?: number;
  /** Receives the trace, one JSON object per line (with no receiver, tracing stays off: faster). */
  readonly traceLine?: (line: string) => void;
  /** Called after every step (and VM start) with how many of all steps are done. */
  readonly progress?: (done: number, total: number, timeNs: number) => void;
  /** Leave the host running at the end, even after an error (for reports and `explain`); the caller must then call
   * `teardown()`. */
  readonly keepAlive?: boolean;
  /** Detailed violation records kept by the checker (default 32). */
  readonly maxViolationSamples?: number;
  /**
   * Called once the host is assembled (drivers bound, the checker watching) and before any VM starts: what
   * `vgpu compare` uses to put a DMA design in place (src/compare). Its KernelErrors end the run as setup errors.
   */
  readonly prepare?: (system: System) => void;
}

/** What became of one step (VM starts included, as action "start"). */
export interface StepRecord {
  /** Index in the scenario's steps, or -1 for a VM start. */
  readonly index: number;
  readonly action: string;
  readonly vm: string | undefined;
  readonly note: string | undefined;
  readonly atNs: number;
  readonly endNs: number;
  /** The step did what it should (no error, expectations met). */
  readonly ok: boolean;
  /** One line for people. */
  readonly summary: string;
  /** The errno the step failed with, if it did (expected or not). */
  readonly errno: string | undefined;
  /** Structured results (workload result, attack reports, ...). */
  readonly detail: Readonly<Record<string, unknown>> | undefined;
}

export interface RunError {
  readonly step: number;
  readonly action: string;
  readonly vm: string | undefined;
  readonly errno: string;
  readonly message: string;
  readonly atNs: number;
}

/** `rng.u32()`s as an RFC 4122 version-4 UUID (lower case). */
function uuidFrom(rng: Rng): string {
  const h = (n: number) => (n >>> 0).toString(16).padStart(8, "0");
  const a = h(rng.u32());
  const b = h(rng.u32());
  const c = h(rng.u32());
  const d = h(rng.u32());
  const variant = ((Number.parseInt(c[0]!, 16) & 0x3) | 0x8).toString(16);
  return `${a}-${b.slice(0, 4)}-4${b.slice(5, 8)}-${variant}${c.slice(1, 4)}-${c.slice(4)}${d}`;
}

/** A scenario being run (or done). */
export class ScenarioRun {
  readonly scenario: Scenario;
  readonly seed: number;
  readonly clock = new VirtualClock();
  system!: System;
  checker!: IsolationChecker;
  readonly vms = new Map<string, VmRun>();
  readonly steps: StepRecord[] = [];
  readonly failures: string[] = [];
  readonly fairness: FairnessWindow[] = [];
  readonly explanations: Explanation[] = [];
  error: RunError | undefined;
  teardownResult: TeardownResult | undefined;
  /** Figures the host held right after assembly, for the teardown check. */
  private baseline = { gpuDmaMappings: new Map<string, number>() };
  private readonly rng: Rng;
  private readonly opts: ScenarioRunOptions;
  private detachTrace: (() => void) | undefined;
  private stepStart = 0;
  /** What the step handlers may use of this run. */
  private readonly ctx: StepContext;

  constructor(scenario: Scenario, opts: ScenarioRunOptions = {}) {
    this.scenario = scenario;
    this.opts = opts;
    this.seed = opts.seed ?? scenario.seed;
    this.rng = new Rng(this.seed);
    const run = this;
    this.ctx = {
      scenario,
      seed: this.seed,
      rng: this.rng,
      clock: this.clock,
      get system() {
        return run.system;
      },
      get checker() {
        return run.checker;
      },
      vms: this.vms,
      failures: this.failures,
      fairness: this.fairness,
      explanations: this.explanations,
      vmRun: (name) => this.vmRun(name),
      running: (name) => this.running(name),
      driverOf: (v) => this.driverOf(v),
      stopVm: (v) => this.stopVm(v),
      abandon: (v) => this.abandon(v),
      explain: (vm, gma) => this.explain(vm, gma),
      explainPpgtt: (vm, gva) => this.explainPpgtt(vm, gva),
    };
  }

  get timeNs(): number {
    return this.clock.now();
  }

  /** Runs everything (see the module comment). Never throws a KernelError: errors end up in `error`. */
  run(): this {
    const total = this.scenario.vms.length + this.scenario.steps.length;
    let done = 0;
    try {
      precheckScenario(this.scenario);
      this.assemble();
      for (const spec of this.scenario.vms) {
        this.startVm(spec);
        this.opts.progress?.(++done, total, this.clock.now());
        if (this.error !== undefined) break;
      }
      if (this.error === undefined) {
        for (const step of this.scenario.steps) {
          this.runStep(step);
          this.opts.progress?.(++done, total, this.clock.now());
          if (this.error !== undefined) break;
        }
      }
      if (this.error === undefined) finishPending(this.ctx, undefined, DEFAULT_WAIT_TIMEOUT_NS, "end");
    } catch (e) {
      if (!isKernelError(e)) {
        this.safeTeardown();
        throw e;
      }
      this.error ??= {
        step: -1,
        action: "setup",
        vm: undefined,
        errno: e.code,
        message: e.message,
        atNs: this.clock.now(),
      };
    }
    if (!this.opts.keepAlive) this.safeTeardown();
    return this;
  }

  /** The run held no error, no failed expectation, no violation, and (once torn down) left nothing behind. */
  get ok(): boolean {
    return (
      this.error === undefined &&
      this.failures.length === 0 &&
      (this.checker?.violationCount ?? 0) === 0 &&
      (this.teardownResult?.clean ?? true)
    );
  }

  /** The chain of `gma` (default: the VM's first kept buffer, else its guest driver's status page). */
  explain(vm: string, gma?: number): Explanation {
    const v = this.vmRun(vm);
    if (v.vmm === undefined || v.state !== "running" || v.gpu === undefined) {
      throw new KernelError(Errno.ESRCH, `${vm} is not running with a GPU device: nothing to explain`);
    }
    const at = gma ?? v.buffers[0]?.buffer.gma ?? v.driver?.status.gma;
    if (at === undefined) throw new KernelError(Errno.EINVAL, `${vm}: give a GMA to explain`);
    return explainGma({ vm, vmm: v.vmm, gpu: v.gpu, vgpu: v.vgpu, host: this.system.host }, at);
  }

  /**
   * The PPGTT chain of GPU virtual address `gva` in the VM's guest PPGTT (default: its first kept buffer's, else its
   * status page's). EINVAL when the VM's guest driver has no PPGTT (legacy rings).
   */
  explainPpgtt(vm: string, gva?: number): Explanation {
    const v = this.vmRun(vm);
    if (v.vmm === undefined || v.state !== "running" || v.gpu === undefined) {
      throw new KernelError(Errno.ESRCH, `${vm} is not running with a GPU device: nothing to explain`);
    }
    const driver = v.driver;
    const root = driver?.ppgtt?.pml4;
    if (driver === undefined || root === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `${vm}'s guest driver submits through legacy rings: it has no PPGTT (give it driver submission "execlists")`,
      );
    }
    const buffers = [...v.buffers.map((b) => b.buffer), driver.status];
    const b =
      gva === undefined ? buffers[0] : buffers.find((x) => x.gva !== undefined && gva >= x.gva && gva < x.gva + x.size);
    const at = gva ?? b?.gva;
    if (at === undefined) throw new KernelError(Errno.EINVAL, `${vm}: give a GPU virtual address to explain`);
    const gma = b?.gva !== undefined ? b.gma + (at - b.gva) : -1;
    return explainGva({ vm, vmm: v.vmm, gpu: v.gpu, vgpu: v.vgpu, host: this.system.host }, at, root, gma);
  }

  /** A check metric of a VM (or of the whole host when `vm` is undefined): metrics.ts. */
  metric(vm: string | undefined, m: CheckMetric): number {
    return metricOf({ vms: this.vms, checker: this.checker, host: this.system.host }, vm, m);
  }

  // ---- 2. the host -------------------------------------------------------------------------------------------------

  private assemble(): void {
    const s = this.scenario;
    const parents: Record<string, unknown>[] = [];
    const assigned: SystemConfig["assigned"][number][] = [];
    for (const g of s.host.gpus) {
      const common = {
        name: g.name,
        bdf: g.bdf,
        ...(g.apertureBytes !== undefined ? { aperture: g.apertureBytes } : {}),
        ats: g.ats,
        ...(g.dmaMaskBits !== undefined ? { dmaMaskBits: g.dmaMaskBits } : {}),
        ...(g.cost !== undefined ? { cost: g.cost as Record<string, number> } : {}),
      };
      if (g.driver === "i915") {
        parents.push({
          kind: "gvt",
          ...common,
          submission: g.submission,
          ...(g.unsafeSkipAddressAudit ? { unsafeSkipAddressAudit: true } : {}),
        });
      } else assigned.push({ kind: "gpu", ...common });
    }
    for (const m of s.host.mtty)
      parents.push({ kind: "mtty", name: m.name, ...(m.ports !== undefined ? { ports: m.ports } : {}) });
    const config: SystemConfig = {
      memoryBytes: s.host.memoryBytes,
      iommu: s.host.iommu,
      seed: this.seed,
      parents: parents as unknown as SystemConfig["parents"],
      assigned,
    };
    this.system = createSystem(config, { clock: this.clock });
    const tracer = this.system.host.tracer;
    const sink = this.opts.traceLine;
    if (sink !== undefined) {
      this.detachTrace = tracer.subscribe((r: TraceRecord) => {
        sink(JSON.stringify({ seq: r.seq, time: r.time, name: r.name, ...(r.fields as object) }));
      });
    }
    this.checker = new IsolationChecker({
      host: this.system.host,
      ...(this.opts.maxViolationSamples !== undefined ? { maxSamples: this.opts.maxViolationSamples } : {}),
    });
    for (const g of this.system.gpus) {
      this.checker.watch(g);
      this.baseline.gpuDmaMappings.set(g.name, this.system.host.dmaApi(g.gpu.bdf).mappings());
    }
    this.opts.prepare?.(this.system);
    precheckCapacity(this.scenario, this.system.gpus);
  }

  // ---- 3. VMs ------------------------------------------------------------------------------------------------------

  private startVm(spec: ScenarioVm): void {
    const v = newVmRun(spec);
    this.vms.set(spec.name, v);
    this.stepStart = this.clock.now();
    try {
      const summary = this.bootVm(v);
      this.record(-1, "start", spec.name, undefined, true, summary, undefined, undefined);
    } catch (e) {
      if (!isKernelError(e)) throw e;
      v.state = "failed";
      this.fail(-1, "start", spec.name, e, `start ${spec.name}`);
    }
  }

  private bootVm(v: VmRun): string {
    const { spec } = v;
    const sys = this.system;
    const uuidRng = this.rng.fork(`uuid:${spec.name}`);
    const attachments: ({ sysfsdev: string } | { host: string })[] = [];
    const parts: string[] = [];
    for (const d of spec.devices) {
      if (d.kind === "gpu") {
        const inst = this.gpuNamed(d.gpu);
        attachments.push({ host: inst.bdf });
        parts.push(`whole ${inst.name} (${inst.bdf}, vfio-pci)`);
        continue;
      }
      const uuid = uuidFrom(uuidRng);
      const parent = d.kind === "vgpu" ? this.gpuNamed(d.gpu).bdf : d.parent;
      const typeDir = d.kind === "vgpu" ? gvtTypeDirName(d.type) : (d.type ?? "mtty-1");
      sys.sysfs.write(`/sys/class/mdev_bus/${parent}/mdev_supported_types/${typeDir}/create`, `${uuid}\n`);
      v.mdevs.push({ uuid, parent, kind: d.kind, removed: false });
      attachments.push({ sysfsdev: `/sys/bus/mdev/devices/${uuid}` });
      parts.push(d.kind === "vgpu" ? `vGPU ${d.type} on ${d.gpu}` : `${typeDir} on ${d.parent}`);
    }
    const vmm = Vmm.create(sys.host, {
      name: spec.name,
      memoryBytes: spec.memoryBytes,
      ...(spec.maxMemoryBytes !== undefined ? { maxMemoryBytes: spec.maxMemoryBytes } : {}),
      rlimitMemlockBytes: spec.memlockBytes,
      capIpcLock: spec.capIpcLock,
    });
    v.vmm = vmm;
    v.pid = vmm.process.pid;
    v.state = "running";
    this.checker.nameProcess(v.pid, spec.name);
    spec.devices.forEach((d, i) => {
      const dev = vmm.attach(attachments[i]!);
      if (d.kind === "mtty") return;
      v.gpuDevice = dev;
      v.gpu = this.gpuNamed(d.gpu);
      if (d.kind === "vgpu") {
        v.vgpu = v.gpu.parent!.vgpu(v.mdevs.find((m) => m.kind === "vgpu")!.uuid);
        this.checker.bindVgpu(v.gpu.name, v.vgpu!.id, spec.name, v.pid, v.vgpu!.scratch.pfn);
      } else {
        this.checker.bindAssigned(v.gpu.name, spec.name, v.pid);
      }
    });
    if (v.gpuDevice !== undefined) {
      v.platform = new VmmGuestPlatform(vmm, v.gpuDevice, this.clock);
      v.driver = GuestGpuDriver.open(v.platform, this.driverOptions(spec, v.gpu));
    }
    return (
      `${spec.name} started: ${formatSize(spec.memoryBytes)} of RAM, memlock ` +
      `${Number.isFinite(spec.memlockBytes) ? formatSize(spec.memlockBytes) : "unlimited"}, process ${v.pid}` +
      (parts.length > 0 ? `; ${parts.join(", ")}` : "") +
      (v.vgpu !== undefined ? ` (vgpu${v.vgpu.id})` : "") +
      (v.driver !== undefined
        ? `; guest driver up as ${v.driver.mode}` +
          (v.driver.submission === "execlists" ? " on execlists (a context per engine, a PPGTT)" : "")
        : "")
    );
  }

  private driverOptions(spec: ScenarioVm, gpu: GpuInstance | undefined): GuestGpuDriverOptions {
    const d = spec.driver;
    // A vGPU guest submits as its host does unless the file says otherwise; a whole GPU takes either.
    const submission = d.submission ?? (gpu?.hostDriver?.submissionMode === "execlists" ? "execlists" : "ring");
    return {
      tracer: this.system.host.tracer,
      submission,
      ...(d.gttWriteMode !== undefined ? { gttWriteMode: d.gttWriteMode } : {}),
      ...(d.ringBytes !== undefined ? { ringBytes: d.ringBytes } : {}),
      ...(d.interrupts !== undefined ? { interrupts: d.interrupts } : {}),
      ...(d.timeout !== undefined ? { timeoutNs: d.timeout } : {}),
    };
  }

  // ---- 4. steps ----------------------------------------------------------------------------------------------------

  private runStep(step: ScenarioStep): void {
    if (step.atNs !== undefined && step.atNs > this.clock.now()) this.clock.advanceTo(step.atNs);
    this.stepStart = this.clock.now();
    const vm = "vm" in step ? step.vm : undefined;
    const expected = (step as { expect?: { errno?: ErrnoName } }).expect?.errno;
    try {
      const { summary, ok, detail } = executeStep(this.ctx, step);
      if (expected !== undefined) {
        this.failures.push(`step ${step.index} (${step.action}): expected ${expected}, but it succeeded`);
        this.record(
          step.index,
          step.action,
          vm,
          step.note,
          false,
          `${summary} (expected ${expected})`,
          undefined,
          detail,
        );
        return;
      }
      this.record(step.index, step.action, vm, step.note, ok, summary, undefined, detail);
    } catch (e) {
      if (!isKernelError(e)) throw e;
      if (expected !== undefined && e.code === expected) {
        this.record(
          step.index,
          step.action,
          vm,
          step.note,
          true,
          `failed as expected: ${e.describe()}`,
          e.code,
          undefined,
        );
        return;
      }
      this.fail(step.index, step.action, vm, e, `${step.action}${vm !== undefined ? ` ${vm}` : ""}`);
    }
  }

  private stopVm(v: VmRun): void {
    this.abandon(v);
    try {
      if (v.driver !== undefined) {
        for (const b of v.buffers.splice(0)) v.driver.freeBuffer(b.buffer);
        v.driver.shutdown();
      }
    } finally {
      v.vmm!.shutdown();
      v.state = "shut down";
    }
  }

  /** Drops a VM's in-flight workloads without verifying them (the VM is going away). */
  private abandon(v: VmRun): void {
    for (const w of v.pending.splice(0)) w.release();
  }

  // ---- records -----------------------------------------------------------------------------------------------------

  private record(
    index: number,
    action: string,
    vm: string | undefined,
    note: string | undefined,
    ok: boolean,
    summary: string,
    errno: string | undefined,
    detail: Record<string, unknown> | undefined,
  ): void {
    this.steps.push({
      index,
      action,
      vm,
      note,
      atNs: this.stepStart,
      endNs: this.clock.now(),
      ok,
      summary,
      errno,
      detail,
    });
    const tracer = (this.system as System | undefined)?.host.tracer;
    if (tracer?.enabled) {
      tracer.emit("scenario.step", { index, action, vm: vm ?? null, ok, errno: errno ?? null, summary });
    }
  }

  private fail(index: number, action: string, vm: string | undefined, e: KernelError, what: string): void {
    this.error = { step: index, action, vm, errno: e.code, message: e.message, atNs: this.clock.now() };
    this.record(index, action, vm, undefined, false, `${what} failed: ${e.describe()}`, e.code, undefined);
  }

  private vmRun(name: string): VmRun {
    const v = this.vms.get(name);
    if (v === undefined) throw new KernelError(Errno.ENOENT, `no VM "${name}" in this run`);
    return v;
  }

  private running(name: string): VmRun {
    const v = this.vmRun(name);
    if (v.state !== "running" || v.vmm === undefined) {
      throw new KernelError(Errno.ESRCH, `${name} is ${v.state}: it cannot do that`);
    }
    return v;
  }

  private driverOf(v: VmRun): GuestGpuDriver {
    if (v.driver === undefined) {
      throw new KernelError(Errno.ENODEV, `${v.spec.name} has no GPU device: give it a vgpu or gpu device`);
    }
    return v.driver;
  }

  private gpuNamed(name: string): GpuInstance {
    const g = this.system.gpus.find((x) => x.name === name);
    if (g === undefined) throw new KernelError(Errno.ENODEV, `no GPU "${name}" on this host`);
    return g;
  }

  // ---- 5. teardown -------------------------------------------------------------------------------------------------

  /** Shuts every VM down, removes every mdev, and checks the host holds nothing (teardown.ts). Idempotent. */
  teardown(): TeardownResult {
    if (this.teardownResult !== undefined) return this.teardownResult;
    const sys = this.system as System | undefined;
    if (sys === undefined) {
      this.teardownResult = { clean: true, problems: [] };
      return this.teardownResult;
    }
    this.teardownResult = tearDown({
      system: sys,
      vms: this.vms,
      checker: this.checker as IsolationChecker | undefined,
      gpuDmaMappings: this.baseline.gpuDmaMappings,
      stopVm: (v) => this.stopVm(v),
    });
    this.detachTrace?.();
    return this.teardownResult;
  }

  private safeTeardown(): void {
    try {
      this.teardown();
    } catch (e) {
      this.teardownResult = {
        clean: false,
        problems: [`teardown failed: ${isKernelError(e) ? e.describe() : String(e)}`],
      };
    }
  }
}

/** Runs a scenario (see the module comment). */
export function runScenario(scenario: Scenario, opts: ScenarioRunOptions = {}): ScenarioRun {
  return new ScenarioRun(scenario, opts).run();
}
