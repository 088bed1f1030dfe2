/**
 * The scenario runner: builds the host a scenario describes, starts its VMs, executes its steps on a virtual clock,
 * checks the isolation invariant on every DMA (checker.ts), and tears everything down. Same scenario + same seed =
 * the same run, event for event: nothing reads wall time or Math.random, every random choice (mdev UUIDs, workload
 * contents) comes from the seed, and the trace (JSON lines) is byte-identical.
 *
 * Order of a run:
 * 1. Checks before anything starts, each failing with the Linux errno and a sentence naming the limit: the VMs' RAM
 *    must fit the host's (no overcommit in a scenario), the vGPUs asked of a GPU must fit its aperture, hidden memory,
 *    fences and 7 vGPU ids, and a VM given a whole GPU must be allowed to lock all its RAM (type1 pins every page at
 *    MAP_DMA).
 * 2. The host (system.ts: i915 + GVT-g parents, GPUs bound to vfio-pci, mtty parents) on a VirtualClock, with the
 *    isolation checker watching every GPU.
 * 3. The VMs, at t = 0 in file order ("start" steps in the report): mdevs created through sysfs as mdevctl does, a
 *    VMM process with the VM's RAM and RLIMIT_MEMLOCK, every device attached by sysfs path (vGPU, mtty) or PCI address
 *    (a whole GPU) through the VFIO ioctls, and the guest GPU driver brought up on the VM's GPU device.
 * 4. The steps, in file order; a step with `at` first lets virtual time pass up to it (engines complete work,
 *    interrupts are delivered). Workloads with `wait: false` overlap with later steps and are verified by a `wait`
 *    step (or at the end); a wait over several vGPUs of one GPU measures how the scheduler shared the engines while
 *    they all had work (fairness: Jain's index of busy time / weight, 1 = exactly the weights' shares).
 * 5. The end: pending workloads are waited for, then (unless the caller keeps the run alive for `explain`) every VM is
 *    shut down, every mdev removed, and the host is checked to hold nothing: no pinned frame, no vfio container, no
 *    VMM process, the GPUs' DMA mappings back to the host driver's own.
 *
 * Errors: a step that fails with a KernelError stops the run there (unless the step expected that errno), and the
 * report names the step, the errno and the sentence; a host limit hit while a vendor driver populates GTT entries
 * (RLIMIT_MEMLOCK, IOVA space, host memory: the pages go to the scratch page, as GVT-g does) is diagnosed right after
 * the step and reported the same way. Unmet expectations (a workload that should have verified, a check's metric, an
 * attack that should have been contained) are failures: the run goes on and the report lists them. Whatever happens,
 * the teardown runs: nothing is left running.
 */
import {
  defineTraceEvents,
  Errno,
  type ErrnoName,
  hex,
  isKernelError,
  KernelError,
  PAGE_SIZE,
  Rng,
  type TraceRecord,
  VirtualClock,
} from "../core/index.ts";
import {
  type AttackReport,
  type GpuBuffer,
  GuestGpuDriver,
  type GuestGpuDriverOptions,
  GuestWorkload,
  runAttacks,
  type WorkloadResult,
} from "../guest/index.ts";
import type { Bdf } from "../host/index.ts";
import { findGvtType, GVT_MAX_VGPUS, type Vgpu } from "../vgpu/index.ts";
import { type AttachedDevice, Vmm, VmmGuestPlatform } from "../vmm/index.ts";
import { IsolationChecker } from "./checker.ts";
import { type Explanation, explainGma } from "./explain.ts";
import type { GpuInstance } from "./gpus.ts";
import type { CheckMetric, Scenario, ScenarioStep, ScenarioVm } from "./schema.ts";
import { createSystem, type System, type SystemConfig } from "./system.ts";
import { formatSize, formatTime } from "./units.ts";

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
    "scenario.fairness": { gpu: string; vms: readonly string[]; shares: readonly number[]; jain: number };
    "scenario.teardown": { clean: boolean; problems: readonly string[] };
  }
}
defineTraceEvents("scenario", {
  "scenario.step": "step {index} {action} {vm}: ok {ok} (errno {errno}): {summary}",
  "scenario.fairness": "{gpu}: engine shares of {vms} while all had work: {shares} (Jain {jain})",
  "scenario.teardown": "teardown: clean {clean} {problems}",
});

/** How long a wait step lets virtual time pass at most, by default. */
export const DEFAULT_WAIT_TIMEOUT_NS = 10e9;
/** Granularity of a wait step's polling of its workloads (virtual time). */
export const WAIT_POLL_NS = 100_000;

export interface RunOptions {
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

/** Engine sharing while several vGPUs of one GPU all had work (a wait step). */
export interface FairnessWindow {
  readonly gpu: string;
  readonly startNs: number;
  readonly endNs: number;
  readonly vgpus: readonly {
    readonly vm: string;
    readonly vgpu: number;
    readonly weight: number;
    readonly busyNs: number;
    readonly share: number;
    readonly expectedShare: number;
  }[];
  /** Jain's index of share / expected share: 1 = exactly the weights' shares. */
  readonly jain: number;
}

export interface TeardownResult {
  readonly clean: boolean;
  readonly problems: readonly string[];
}

/** A kept buffer (alloc step): mapped, hence pinned by a vGPU's vendor driver, until freed. */
export interface KeptBuffer {
  readonly name: string;
  readonly buffer: GpuBuffer;
  readonly block: string | undefined;
}

/** A VM as the runner tracks it. */
export interface VmRun {
  readonly spec: ScenarioVm;
  vmm: Vmm | undefined;
  state: "not started" | "running" | "killed" | "shut down" | "failed";
  /** The VM's GPU device (vGPU or whole GPU) and what is behind it. */
  gpuDevice: AttachedDevice | undefined;
  gpu: GpuInstance | undefined;
  vgpu: Vgpu | undefined;
  readonly mdevs: { uuid: string; parent: string; kind: string; removed: boolean }[];
  platform: VmmGuestPlatform | undefined;
  driver: GuestGpuDriver | undefined;
  readonly buffers: KeptBuffer[];
  readonly pending: GuestWorkload[];
  readonly workloads: WorkloadResult[];
  readonly attacks: AttackReport[];
  pid: number;
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

function jainIndex(xs: readonly number[]): number {
  let s = 0;
  let s2 = 0;
  for (const x of xs) {
    s += x;
    s2 += x * x;
  }
  return s2 === 0 ? 1 : (s * s) / (xs.length * s2);
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
  private readonly opts: RunOptions;
  private detachTrace: (() => void) | undefined;
  private stepStart = 0;

  constructor(scenario: Scenario, opts: RunOptions = {}) {
    this.scenario = scenario;
    this.opts = opts;
    this.seed = opts.seed ?? scenario.seed;
    this.rng = new Rng(this.seed);
  }

  get timeNs(): number {
    return this.clock.now();
  }

  /** Runs everything (see the module comment). Never throws a KernelError: errors end up in `error`. */
  run(): this {
    const total = this.scenario.vms.length + this.scenario.steps.length;
    let done = 0;
    try {
      this.precheck();
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
      if (this.error === undefined) this.finishPending(undefined, DEFAULT_WAIT_TIMEOUT_NS, "end");
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

  // ---- 1. checks before anything starts ----------------------------------------------------------------------------

  private precheck(): void {
    const s = this.scenario;
    const fail = (errno: number, message: string): never => {
      throw new KernelError(errno as Errno, message);
    };
    const ram = s.vms.reduce((n, v) => n + v.memoryBytes, 0);
    if (ram > s.host.memoryBytes) {
      fail(
        Errno.ENOMEM,
        `host memory: the VMs' RAM adds up to ${formatSize(ram)} but the host has ${formatSize(s.host.memoryBytes)} ` +
          "(scenarios do not overcommit guest RAM): give the host more memory or the VMs less",
      );
    }
    for (const gpu of s.host.gpus) {
      if (gpu.driver !== "i915") continue;
      const users = s.vms.filter((v) => v.devices.some((d) => d.kind === "vgpu" && d.gpu === gpu.name));
      if (users.length > GVT_MAX_VGPUS) {
        fail(
          Errno.ENOSPC,
          `vGPU instances: ${users.length} VMs (${users.map((v) => v.name).join(", ")}) want a vGPU on ${gpu.name}, ` +
            `which offers at most ${GVT_MAX_VGPUS} (vGPU ids 1..7)`,
        );
      }
    }
    for (const vm of s.vms) {
      if (!vm.devices.some((d) => d.kind === "gpu") || vm.capIpcLock) continue;
      if (vm.memlockBytes < vm.memoryBytes) {
        fail(
          Errno.ENOMEM,
          `locked memory: ${vm.name} is given a whole GPU, so type1 pins all ${formatSize(vm.memoryBytes)} of its RAM ` +
            `at VFIO_IOMMU_MAP_DMA, but its RLIMIT_MEMLOCK is ${formatSize(vm.memlockBytes)}: raise memlock to at ` +
            "least its memory",
        );
      }
    }
  }

  /** Checks the vGPU demand of each GPU against its capacity once the host exists (exact: nothing is freed yet). */
  private precheckCapacity(): void {
    for (const inst of this.system.gpus) {
      const hd = inst.hostDriver;
      if (hd === undefined) continue;
      const want = { aperture: 0, hidden: 0, fences: 0, names: [] as string[] };
      for (const vm of this.scenario.vms) {
        for (const d of vm.devices) {
          if (d.kind !== "vgpu" || d.gpu !== inst.name) continue;
          const t = findGvtType(d.type)!;
          want.aperture += t.aperture;
          want.hidden += t.hidden;
          want.fences += t.fences;
          want.names.push(`${vm.name} (${t.id})`);
        }
      }
      const cap = hd.capacity();
      const short =
        want.aperture > cap.apertureFree
          ? `aperture: they need ${formatSize(want.aperture)}, ${formatSize(cap.apertureFree)} is free for vGPUs`
          : want.hidden > cap.hiddenFree
            ? `hidden graphics memory: they need ${formatSize(want.hidden)}, ${formatSize(cap.hiddenFree)} is free`
            : want.fences > cap.fencesFree
              ? `fences: they need ${want.fences}, ${cap.fencesFree} are free`
              : undefined;
      if (short !== undefined) {
        throw new KernelError(
          Errno.ENOSPC,
          `vGPU instances: the vGPUs of ${want.names.join(", ")} do not fit ${inst.name} (${inst.bdf}): ${short}`,
        );
      }
    }
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
        parents.push({ kind: "gvt", ...common, ...(g.unsafeSkipAddressAudit ? { unsafeSkipAddressAudit: true } : {}) });
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
    this.precheckCapacity();
  }

  // ---- 3. VMs ------------------------------------------------------------------------------------------------------

  private startVm(spec: ScenarioVm): void {
    const v: VmRun = {
      spec,
      vmm: undefined,
      state: "not started",
      gpuDevice: undefined,
      gpu: undefined,
      vgpu: undefined,
      mdevs: [],
      platform: undefined,
      driver: undefined,
      buffers: [],
      pending: [],
      workloads: [],
      attacks: [],
      pid: -1,
    };
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
      const typeDir = d.kind === "vgpu" ? `i915-${d.type}` : (d.type ?? "mtty-1");
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
      this.enterGuest(v);
      v.driver = GuestGpuDriver.open(v.platform, this.driverOptions(spec));
    }
    return (
      `${spec.name} started: ${formatSize(spec.memoryBytes)} of RAM, memlock ` +
      `${Number.isFinite(spec.memlockBytes) ? formatSize(spec.memlockBytes) : "unlimited"}, process ${v.pid}` +
      (parts.length > 0 ? `; ${parts.join(", ")}` : "") +
      (v.vgpu !== undefined ? ` (vgpu${v.vgpu.id})` : "") +
      (v.driver !== undefined ? `; guest driver up as ${v.driver.mode}` : "")
    );
  }

  private driverOptions(spec: ScenarioVm): GuestGpuDriverOptions {
    const d = spec.driver;
    return {
      tracer: this.system.host.tracer,
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
    const guest = vm !== undefined ? this.vms.get(vm) : undefined;
    if (guest !== undefined) this.enterGuest(guest);
    try {
      const { summary, ok, detail } = this.execute(step);
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

  private execute(step: ScenarioStep): { summary: string; ok: boolean; detail?: Record<string, unknown> } {
    switch (step.action) {
      case "workload":
        return this.workload(step);
      case "wait":
        return this.waitStep(step.vm, step.timeout ?? DEFAULT_WAIT_TIMEOUT_NS);
      case "attack":
        return this.attack(step);
      case "alloc":
        return this.alloc(step);
      case "free": {
        const v = this.running(step.vm);
        const i = v.buffers.findIndex((b) => b.name === step.name);
        if (i < 0) throw new KernelError(Errno.ENOENT, `${step.vm} has no buffer "${step.name}"`);
        const [b] = v.buffers.splice(i, 1);
        this.driverOf(v).freeBuffer(b!.buffer);
        return { ok: true, summary: `${step.vm} freed buffer ${step.name}: its GTT entries are unmapped (unpinned)` };
      }
      case "plug": {
        const v = this.running(step.vm);
        const block = v.vmm!.plugMemory(step.bytes);
        v.platform?.pages.addBlock(block);
        return {
          ok: true,
          summary: `${step.vm} hot-plugged ${formatSize(step.bytes)} as ${block.name} at GPA ${hex(block.gpa)}`,
        };
      }
      case "unplug":
        return this.unplug(step.vm, step.block);
      case "kill":
        return this.kill(step.vm);
      case "shutdown":
        return this.shutdown(step.vm);
      case "check":
        return this.check(step.vm, step.expect);
      case "explain": {
        const v = this.running(step.vm);
        let gma: number | undefined;
        if (step.gma !== undefined) gma = typeof step.gma === "number" ? step.gma : Number.parseInt(step.gma, 16);
        else if (step.buffer !== undefined) {
          const b = v.buffers.find((x) => x.name === step.buffer);
          if (b === undefined) throw new KernelError(Errno.ENOENT, `${step.vm} has no buffer "${step.buffer}"`);
          gma = b.buffer.gma + (step.offset ?? 0);
        } else if (v.buffers[0] !== undefined) gma = v.buffers[0].buffer.gma + (step.offset ?? 0);
        const e = this.explain(step.vm, gma);
        this.explanations.push(e);
        if (!e.agree) this.failures.push(`step ${step.index} (explain ${step.vm}): ${e.note}`);
        return { ok: e.agree, summary: `${step.vm} GMA ${hex(e.gma)}: ${e.layers.length} layers, ${e.note}` };
      }
    }
  }

  private workload(step: Extract<ScenarioStep, { action: "workload" }>) {
    const v = this.running(step.vm);
    const driver = this.driverOf(v);
    const seed = step.seed ?? this.rng.fork(`workload:${step.index}`).u32();
    const before = this.limitProbe(v);
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
    const limit = this.diagnose(v, before);
    if (limit !== undefined) {
      w.release();
      throw limit;
    }
    const what = `${step.kind} of ${step.count} x ${step.width}x${step.height} px via ${step.via ?? "ring"}`;
    if (step.wait === false) {
      v.pending.push(w);
      return { ok: true, summary: `${step.vm} submitted a ${what} (${w.lastSeqno} fences; verified at the next wait)` };
    }
    const r = w.finish();
    return this.recordWorkload(v, r, step.expect?.ok ?? true, step.index);
  }

  private recordWorkload(v: VmRun, r: WorkloadResult, expectOk: boolean, index: number) {
    v.workloads.push(r);
    const ok = r.ok === expectOk;
    if (!ok) {
      this.failures.push(
        `step ${index} (workload ${v.spec.name}): expected ${expectOk ? "a verified result" : "a failure"}, got ` +
          `${r.completed} completed, ${r.rejected} rejected, ${r.timedOut} timed out, ${r.mismatches} mismatching bytes`,
      );
    }
    return {
      ok,
      summary:
        `${v.spec.name} ${r.kind} via ${r.via}: ${r.operations} ops, ${formatSize(r.bytes)}, ` +
        (r.elapsedNs > 0
          ? `done in ${formatTime(r.elapsedNs)}`
          : "done inside the doorbell writes (a whole GPU runs work as RING_TAIL is written)") +
        `, ${r.ok ? "verified" : `NOT verified (${r.mismatches} bytes differ, ${r.rejected} rejected, ${r.timedOut} timed out)`}`,
      detail: { workload: r },
    };
  }

  /** A wait step: lets time pass until the pending workloads are done, measuring fairness while they contend. */
  private waitStep(vm: string | undefined, timeoutNs: number) {
    const list = [...this.vms.values()].filter((v) => (vm === undefined || v.spec.name === vm) && v.pending.length > 0);
    const results = this.finishPending(vm, timeoutNs, "wait");
    const ok = results.every((r) => r.ok);
    const verified = results.filter((r) => r.ok).length;
    return {
      ok,
      summary:
        results.length === 0
          ? "nothing in flight"
          : `${list.map((v) => v.spec.name).join(", ")}: ${verified} of ${results.length} workload(s) verified ` +
            `by ${formatTime(this.clock.now())}`,
      detail: { workloads: results },
    };
  }

  private finishPending(vm: string | undefined, timeoutNs: number, why: string): WorkloadResult[] {
    const runs = [...this.vms.values()].filter((v) => (vm === undefined || v.spec.name === vm) && v.pending.length > 0);
    if (runs.length === 0) return [];
    const contenders = runs.filter((v) => v.vgpu !== undefined);
    const byGpu = new Map<string, VmRun[]>();
    for (const v of contenders) byGpu.set(v.gpu!.name, [...(byGpu.get(v.gpu!.name) ?? []), v]);
    const windows = [...byGpu.entries()].filter(([, vs]) => vs.length >= 2);
    const startNs = this.clock.now();
    const busy0 = new Map<VmRun, number>();
    for (const [, vs] of windows) for (const v of vs) busy0.set(v, v.vgpu!.stats().busyNs);
    const deadline = startNs + timeoutNs;
    const allDone = () => runs.every((v) => v.pending.every((w) => w.done()));
    let windowOpen = windows.length > 0;
    while (!allDone() && this.clock.now() < deadline) {
      this.clock.advance(Math.min(WAIT_POLL_NS, deadline - this.clock.now()));
      if (windowOpen && runs.some((v) => busy0.has(v) && v.pending.every((w) => w.done()))) {
        windowOpen = false;
        this.closeFairness(windows, busy0, startNs);
      }
    }
    if (windowOpen) this.closeFairness(windows, busy0, startNs);
    const results: WorkloadResult[] = [];
    for (const v of runs) {
      this.enterGuest(v);
      for (const w of v.pending.splice(0)) {
        const r = w.finish(1_000_000);
        v.workloads.push(r);
        results.push(r);
        if (!r.ok) {
          this.failures.push(
            `${why}: ${v.spec.name}'s ${r.kind} workload did not verify (${r.completed} completed, ${r.rejected} ` +
              `rejected, ${r.timedOut} timed out, ${r.mismatches} mismatching bytes)`,
          );
        }
      }
    }
    return results;
  }

  private closeFairness(windows: [string, VmRun[]][], busy0: Map<VmRun, number>, startNs: number): void {
    for (const [gpu, vs] of windows) {
      const rows = vs.map((v) => ({ v, busy: v.vgpu!.stats().busyNs - busy0.get(v)!, weight: v.vgpu!.type.weight }));
      const totalBusy = rows.reduce((n, r) => n + r.busy, 0);
      const totalWeight = rows.reduce((n, r) => n + r.weight, 0);
      const vgpus = rows.map((r) => ({
        vm: r.v.spec.name,
        vgpu: r.v.vgpu!.id,
        weight: r.weight,
        busyNs: r.busy,
        share: totalBusy === 0 ? 0 : r.busy / totalBusy,
        expectedShare: r.weight / totalWeight,
      }));
      const jain = jainIndex(vgpus.map((x) => (x.expectedShare === 0 ? 0 : x.share / x.expectedShare)));
      this.fairness.push({ gpu, startNs, endNs: this.clock.now(), vgpus, jain });
      const tracer = this.system.host.tracer;
      if (tracer.enabled) {
        tracer.emit("scenario.fairness", {
          gpu,
          vms: vgpus.map((x) => x.vm),
          shares: vgpus.map((x) => Math.round(x.share * 1e4) / 1e4),
          jain: Math.round(jain * 1e4) / 1e4,
        });
      }
    }
  }

  private attack(step: Extract<ScenarioStep, { action: "attack" }>) {
    const v = this.running(step.vm);
    const driver = this.driverOf(v);
    let victimGma: number | undefined;
    if (step.victim !== undefined) {
      const victim = this.vmRun(step.victim);
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
      this.failures.push(
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

  private alloc(step: Extract<ScenarioStep, { action: "alloc" }>) {
    const v = this.running(step.vm);
    const driver = this.driverOf(v);
    if (v.buffers.some((b) => b.name === step.name)) {
      throw new KernelError(Errno.EEXIST, `${step.vm} already keeps a buffer "${step.name}"`);
    }
    const pages = v.platform!.pages;
    const before = this.limitProbe(v);
    pages.only = step.block;
    let buffer: GpuBuffer;
    try {
      buffer = driver.allocBuffer(step.bytes, step.zone !== undefined ? { zone: step.zone } : {});
    } finally {
      pages.only = undefined;
    }
    const limit = this.diagnose(v, before);
    if (limit !== undefined) {
      driver.freeBuffer(buffer);
      throw limit;
    }
    // Contents the guest can recognise (and a victim's attacker could try to reach).
    const fill = new Uint8Array(buffer.size);
    new Rng(this.seed).fork(`buffer:${step.vm}:${step.name}`).fill(fill);
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

  private unplug(vm: string, blockName: string) {
    const v = this.running(vm);
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
          this.driverOf(v).freeBuffer(b.buffer);
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

  private kill(vm: string) {
    const v = this.running(vm);
    this.abandon(v);
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

  private shutdown(vm: string) {
    const v = this.running(vm);
    this.finishPending(vm, DEFAULT_WAIT_TIMEOUT_NS, `shutdown ${vm}`);
    this.stopVm(v);
    return { ok: true, summary: `${vm} shut down: guest driver stopped, devices detached, RAM unmapped` };
  }

  private stopVm(v: VmRun): void {
    this.enterGuest(v);
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

  /** VM `v`'s guest code is about to run (the isolation checker attributes new shadow buffers to its vGPU). */
  private enterGuest(v: VmRun): void {
    this.checker.guestRuns(v.spec.name);
  }

  /** Drops a VM's in-flight workloads without verifying them (the VM is going away). */
  private abandon(v: VmRun): void {
    for (const w of v.pending.splice(0)) w.release();
  }

  private check(vm: string | undefined, expect: Partial<Record<CheckMetric, number | { min?: number; max?: number }>>) {
    const got: string[] = [];
    let ok = true;
    for (const [metric, want] of Object.entries(expect) as [CheckMetric, number | { min?: number; max?: number }][]) {
      const value = this.metric(vm, metric);
      const pass =
        typeof want === "number"
          ? value === want
          : (want.min === undefined || value >= want.min) && (want.max === undefined || value <= want.max);
      got.push(
        `${metric} ${value}${pass ? "" : ` (expected ${typeof want === "number" ? want : JSON.stringify(want)})`}`,
      );
      if (!pass) {
        ok = false;
        this.failures.push(
          `check ${vm ?? "host"}: ${metric} is ${value}, expected ${typeof want === "number" ? want : JSON.stringify(want)}`,
        );
      }
    }
    return { ok, summary: `${vm ?? "host"}: ${got.join(", ")}` };
  }

  /** A check metric of a VM (or of the whole host when `vm` is undefined). */
  metric(vm: string | undefined, m: CheckMetric): number {
    const host = this.system.host;
    if (vm === undefined) {
      switch (m) {
        case "violations":
          return this.checker.violationCount;
        case "pinnedPages":
          return host.physmem.stats().pinnedFrames;
        case "workloadsFailed":
          return [...this.vms.values()].reduce((n, v) => n + v.workloads.filter((w) => !w.ok).length, 0);
        case "alive":
          return [...this.vms.values()].filter((v) => v.state === "running").length;
        default: {
          let n = 0;
          for (const v of this.vms.keys()) n += this.metric(v, m);
          return n;
        }
      }
    }
    const v = this.vmRun(vm);
    const st = v.vgpu?.stats();
    const mm = v.vmm?.process.mm;
    const ctx = v.gpu !== undefined ? this.checker.stats(v.gpu.name, v.vgpu?.id) : undefined;
    switch (m) {
      case "alive":
        return v.state === "running" ? 1 : 0;
      case "pinnedPages":
        return mm?.stats().pinnedPages ?? 0;
      case "lockedBytes":
        return (mm?.lockedVm() ?? 0) * PAGE_SIZE;
      case "iovas":
        return st !== undefined
          ? st.iovasMapped
          : v.gpu !== undefined && v.state === "running"
            ? (mm?.lockedVm() ?? 0)
            : 0;
      case "shadowEntries":
        return st?.shadowEntries ?? 0;
      case "scratchFallbacks":
        return st?.scratchFallbacks ?? 0;
      case "rejectedCommands":
        return st?.rejectedCommands ?? 0;
      case "faults":
        return (ctx?.gttFaults ?? 0) + (ctx?.iommuFaults ?? 0);
      case "violations":
        return ctx?.violations ?? 0;
      case "workloadsFailed":
        return v.workloads.filter((w) => !w.ok).length;
    }
  }

  // ---- host limits hit inside the vendor driver --------------------------------------------------------------------

  private limitProbe(v: VmRun): number {
    return v.vgpu?.stats().scratchFallbacks ?? 0;
  }

  /**
   * After a step that made the guest write GTT entries: if the vendor driver fell back to the scratch page for some,
   * which host limit stopped it, as the errno and sentence the step fails with.
   */
  private diagnose(v: VmRun, before: number): KernelError | undefined {
    const vgpu = v.vgpu;
    if (vgpu === undefined) return undefined;
    const fell = vgpu.stats().scratchFallbacks - before;
    if (fell <= 0) return undefined;
    const mm = v.vmm!.process.mm;
    const host = this.system.host;
    const gpu = v.gpu!;
    const limitPages = mm.memlockLimitPages();
    if (!mm.hasCapIpcLock() && mm.lockedVm() + 1 > limitPages) {
      return new KernelError(
        Errno.ENOMEM,
        `locked memory: ${v.spec.name}'s RLIMIT_MEMLOCK (${formatSize(limitPages * PAGE_SIZE)}) is reached: ` +
          `vgpu${vgpu.id} could not pin ${fell} more guest page(s) for GTT entries (they point at the scratch page); ` +
          "raise the VM's memlock",
      );
    }
    const spec = this.scenario.host.gpus.find((g) => g.name === gpu.name);
    const mask = spec?.dmaMaskBits;
    if (mask !== undefined && mask < 64) {
      return new KernelError(
        Errno.ENOMEM,
        `IOVA space: ${gpu.name}'s ${mask}-bit DMA mask leaves ${formatSize(2 ** mask)} of IOVAs, ` +
          `${formatSize(host.dmaApi(gpu.gpu.bdf).mappedBytes())} are mapped: dma_map_page failed for ${fell} guest ` +
          "page(s) of " +
          `vgpu${vgpu.id} (they point at the scratch page)`,
      );
    }
    if (host.physmem.freeFrames() === 0) {
      return new KernelError(
        Errno.ENOMEM,
        `host memory: all ${formatSize(host.physmem.stats().totalFrames * PAGE_SIZE)} are in use: vgpu${vgpu.id} ` +
          `could not pin ${fell} guest page(s)`,
      );
    }
    return new KernelError(
      Errno.EFAULT,
      `vgpu${vgpu.id} could not populate ${fell} GTT entries of ${v.spec.name} (they point at the scratch page)`,
    );
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

  /** Shuts every VM down, removes every mdev, and checks the host holds nothing. Idempotent. */
  teardown(): TeardownResult {
    if (this.teardownResult !== undefined) return this.teardownResult;
    const problems: string[] = [];
    const sys = this.system as System | undefined;
    if (sys === undefined) {
      this.teardownResult = { clean: true, problems };
      return this.teardownResult;
    }
    for (const v of this.vms.values()) {
      if (v.state === "running") {
        try {
          this.stopVm(v);
        } catch (e) {
          problems.push(`shutdown of ${v.spec.name} failed: ${isKernelError(e) ? e.describe() : String(e)}`);
          try {
            v.vmm?.kill();
          } catch {
            // already gone
          }
          v.state = "killed";
        }
      } else if (v.vmm?.isAlive) {
        v.vmm.kill();
      }
      for (const m of v.mdevs) {
        if (m.removed) continue;
        try {
          sys.sysfs.write(`/sys/bus/mdev/devices/${m.uuid}/remove`, "1\n");
          m.removed = true;
        } catch (e) {
          problems.push(`removing mdev ${m.uuid} failed: ${isKernelError(e) ? e.describe() : String(e)}`);
        }
      }
    }
    this.checker?.dispose();
    const host = sys.host;
    const pinned = host.physmem.stats().pinnedFrames;
    if (pinned !== 0) problems.push(`${pinned} host frame(s) are still pinned`);
    const st = sys.vfio.inspect();
    if (st.containers.length !== 0) problems.push(`${st.containers.length} vfio container(s) are still open`);
    for (const g of st.groups) {
      for (const d of g.devices) if (d.openCount > 0) problems.push(`vfio device ${d.name} is still open`);
    }
    for (const v of this.vms.values()) {
      if (v.vmm?.isAlive) problems.push(`${v.spec.name}'s VMM process ${v.pid} is still alive`);
      if (v.vmm !== undefined && v.vmm.process.mm.lockedVm() !== 0) {
        problems.push(`${v.spec.name}'s locked_vm is ${v.vmm.process.mm.lockedVm()} pages, not 0`);
      }
    }
    for (const g of sys.gpus) {
      const now = host.dmaApi(g.gpu.bdf as Bdf).mappings();
      const base = this.baseline.gpuDmaMappings.get(g.name) ?? 0;
      if (now !== base) problems.push(`${g.name} has ${now} DMA mappings, ${base} after boot`);
      if (g.parent !== undefined && g.parent.vgpus().length > 0) {
        problems.push(`${g.name} still has ${g.parent.vgpus().length} vGPU(s)`);
      }
    }
    this.teardownResult = { clean: problems.length === 0, problems };
    if (host.tracer.enabled) host.tracer.emit("scenario.teardown", { clean: problems.length === 0, problems });
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
export function runScenario(scenario: Scenario, opts: RunOptions = {}): ScenarioRun {
  return new ScenarioRun(scenario, opts).run();
}
