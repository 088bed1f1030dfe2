/**
 * Host limits met inside the vendor driver, as the errno and sentence a step fails with. When a guest maps pages in
 * its GTT, a vGPU's vendor driver pins them and maps them for DMA; when a host limit stops it (RLIMIT_MEMLOCK, the
 * GPU's IOVA space under its DMA mask, host memory) it points the entry at the scratch page and carries on, as GVT-g
 * does. A step that made the guest write GTT entries takes `limitProbe` before and `diagnose` after: if entries fell
 * back to the scratch page, `diagnose` names the limit (ENOMEM) or, failing that, EFAULT.
 *
 * What it does not do: change anything, or see failures other than scratch fallbacks. The limit is inferred from host
 * state after the fact (checked in the order above); the vendor driver's own record of the failure (errno and
 * sentence as a value) is meant to replace this.
 */
import { Errno, KernelError, PAGE_SIZE } from "../core/index.ts";
import type { Host } from "../host/index.ts";
import type { Scenario } from "./schema.ts";
import { formatSize } from "./units.ts";
import type { VmRun } from "./vm-run.ts";

/** What `diagnose` compares against: the VM's vGPU's scratch fallbacks so far (0 without a vGPU). */
export function limitProbe(v: VmRun): number {
  return v.vgpu?.stats().scratchFallbacks ?? 0;
}

/**
 * After a step that made the guest write GTT entries: if the vendor driver fell back to the scratch page for some,
 * which host limit stopped it, as the errno and sentence the step fails with (undefined: nothing fell back).
 */
export function diagnose(v: VmRun, before: number, scenario: Scenario, host: Host): KernelError | undefined {
  const vgpu = v.vgpu;
  if (vgpu === undefined) return undefined;
  const fell = vgpu.stats().scratchFallbacks - before;
  if (fell <= 0) return undefined;
  const mm = v.vmm!.process.mm;
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
  const spec = scenario.host.gpus.find((g) => g.name === gpu.name);
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
