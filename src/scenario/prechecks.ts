/**
 * The checks a scenario must pass before anything starts, each failing with the Linux errno and a sentence naming
 * the limit and what to change:
 *
 * - `precheckScenario` (before the host exists): the VMs' RAM must fit the host's (no overcommit in a scenario:
 *   ENOMEM); the VMs asking one GPU for a vGPU must fit its vGPU ids (ENOSPC); a VM given a whole GPU must be allowed to
 *   lock all its RAM, since type1 pins every page at MAP_DMA (ENOMEM);
 * - `precheckCapacity` (once the host exists, nothing freed yet, so exact): the vGPUs asked of each GPU must fit its
 *   free aperture, hidden memory and fences (ENOSPC).
 *
 * What it does not check: limits met while running (RLIMIT_MEMLOCK reached as a vGPU pins pages, IOVA space, host
 * memory: diagnose.ts), anything the schema already refuses (schema.ts).
 *
 * Pure functions of the scenario (and of the host driver's capacity): they change nothing.
 */
import { Errno, KernelError } from "../core/index.ts";
import { findGvtType, GVT_MAX_VGPUS } from "../vgpu/index.ts";
import type { GpuInstance } from "./gpus.ts";
import type { Scenario } from "./schema.ts";
import { formatSize } from "./units.ts";

/** Host RAM, vGPU ids and whole-GPU locked memory (see the module comment). */
export function precheckScenario(s: Scenario): void {
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

/** The vGPU demand of each GPU against its capacity, once the host exists (exact: nothing is freed yet). */
export function precheckCapacity(s: Scenario, gpus: readonly GpuInstance[]): void {
  for (const inst of gpus) {
    const hd = inst.hostDriver;
    if (hd === undefined) continue;
    const want = { aperture: 0, hidden: 0, fences: 0, names: [] as string[] };
    for (const vm of s.vms) {
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
