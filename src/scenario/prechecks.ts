/**
 * The checks a scenario must pass before anything starts, each failing with the Linux errno and a sentence naming
 * the limit and what to change:
 *
 * - `precheckScenario` (before the host exists): the VMs' RAM must fit the host's (no overcommit in a scenario:
 *   ENOMEM); the VMs asking one GPU for a vGPU must fit its vGPU ids (ENOSPC); a VM given a whole GPU must be allowed to
 *   lock all its RAM, since type1 pins every page at MAP_DMA (ENOMEM);
 * - `precheckCapacity` (once the host exists, nothing freed yet, so exact): the vGPUs asked of each GPU must fit its
 *   free aperture, hidden memory and fences (ENOSPC). The arithmetic is the vendor driver's own (`gvtFit`, and the
 *   type names with or without the `i915-` prefix through `gvtTypeId`): this module only names the VMs.
 *
 * What it does not check: limits met while running (RLIMIT_MEMLOCK reached as a vGPU pins pages, IOVA space, host
 * memory: diagnose.ts), anything the schema already refuses (schema.ts).
 *
 * Pure functions of the scenario (and of the host driver's capacity): they change nothing.
 */
import { Errno, KernelError } from "../core/index.ts";
import { GVT_MAX_VGPUS, gvtFit, gvtTypeId } from "../vgpu/index.ts";
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
    const types = users.flatMap((v) =>
      v.devices.flatMap((d) => (d.kind === "vgpu" && d.gpu === gpu.name ? [d.type] : [])),
    );
    if (gvtFit(types)?.resource === "vGPU ids") {
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

/**
 * The vGPU demand of each GPU against its capacity, once the host exists (exact: nothing is freed yet). The arithmetic
 * is the vendor driver's (`gvtFit`); this only names the VMs and sizes the sentence.
 */
export function precheckCapacity(s: Scenario, gpus: readonly GpuInstance[]): void {
  for (const inst of gpus) {
    const hd = inst.hostDriver;
    if (hd === undefined) continue;
    const types: string[] = [];
    const names: string[] = [];
    for (const vm of s.vms) {
      for (const d of vm.devices) {
        if (d.kind !== "vgpu" || d.gpu !== inst.name) continue;
        types.push(d.type);
        names.push(`${vm.name} (${gvtTypeId(d.type)})`);
      }
    }
    const short = gvtFit(types, hd.capacity());
    if (short === undefined) continue;
    const sizes = (what: string, tail: string) =>
      `${what}: they need ${formatSize(short.needs)}, ${formatSize(short.free)} is free${tail}`;
    const why =
      short.resource === "aperture"
        ? sizes("aperture", " for vGPUs")
        : short.resource === "hidden"
          ? sizes("hidden graphics memory", "")
          : short.resource === "fences"
            ? `fences: they need ${short.needs}, ${short.free} are free`
            : short.message;
    throw new KernelError(
      short.errno,
      `vGPU instances: the vGPUs of ${names.join(", ")} do not fit ${inst.name} (${inst.bdf}): ${why}`,
    );
  }
}
