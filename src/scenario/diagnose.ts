/**
 * Host limits met inside the vendor driver, as the errno and sentence a step fails with. When a guest maps pages in
 * its GTT, a vGPU's vendor driver pins them and maps them for DMA; when a host limit stops it (RLIMIT_MEMLOCK, the
 * GPU's IOVA space under its DMA mask, host memory) it points the entry at the scratch page and carries on, as GVT-g
 * does, and records the failure where it happened: the errno and sentence of the call that failed (vfio_pin_pages or
 * dma_map_page). A step that made the guest write GTT entries takes `limitProbe` before and `diagnose` after, which
 * hands that record on, naming the VM.
 *
 * What it does not do: change anything, infer a cause from host state, or see failures other than scratch fallbacks.
 */
import { KernelError } from "../core/index.ts";
import type { VmRun } from "./vm-run.ts";

/** What `diagnose` compares against: the VM's vGPU's scratch fallbacks so far (0 without a vGPU). */
export function limitProbe(v: VmRun): number {
  return v.vgpu?.stats().scratchFallbacks ?? 0;
}

/**
 * After a step that made the guest write GTT entries: if the vendor driver fell back to the scratch page for some,
 * the failure it recorded, prefixed with the VM's name (undefined: nothing fell back).
 */
export function diagnose(v: VmRun, before: number): KernelError | undefined {
  const err = v.vgpu?.populateFailuresSince(before);
  return err === undefined
    ? undefined
    : new KernelError(
        err.errno,
        `${v.spec.name}: ${err.message}`,
        err.detail === undefined ? undefined : { ...err.detail },
      );
}
