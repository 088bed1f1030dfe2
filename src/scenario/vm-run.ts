/**
 * A VM as the scenario runner tracks it: its spec, its VMM, the devices it was given and what is behind them (the
 * GPU, the vGPU, the mdevs created for it), its guest platform and GPU driver, the buffers it keeps, its workloads in
 * flight and their results, its attack reports. The runner (runner.ts) creates one per VM of the scenario; the step
 * handlers (steps.ts), the metrics (metrics.ts), fairness windows (fairness.ts), limit diagnosis (diagnose.ts) and the
 * teardown audit (teardown.ts) read and update it.
 *
 * Plain data: no behaviour here, so that every module above reads the same record.
 *
 * Invariants: `vmm`, `pid` are set once the VMM process exists (state "running" and after); `gpuDevice`, `gpu` are
 * set together; `vgpu` only for a vGPU; `platform` and `driver` only when the VM has a GPU device; `pending` holds
 * workloads submitted and not yet verified, `workloads` every verified result in order.
 */
import type { AttackReport, GpuBuffer, GuestGpuDriver, GuestWorkload, WorkloadResult } from "../guest/index.ts";
import type { Vgpu } from "../vgpu/index.ts";
import type { AttachedDevice, Vmm, VmmGuestPlatform } from "../vmm/index.ts";
import type { GpuInstance } from "./gpus.ts";
import type { ScenarioVm } from "./schema.ts";

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

/** A VM that has not started yet. */
export function newVmRun(spec: ScenarioVm): VmRun {
  return {
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
}
