/**
 * Locked-memory accounting of vfio type1 (vfio_lock_acct, with the RLIMIT_MEMLOCK check of vfio_pin_pages_remote and
 * vfio_pin_page_external): pages pinned for a mapping are charged to the `locked_vm` of the mapping's address space,
 * and uncharged as the pins go.
 *
 * What is charged is the callers' decision: each page pinned is charged once per mapping, whether the IOMMU path, an
 * emulated device, or both pinned it (pinning.ts skips pages an emulated device already holds; emulated.ts charges
 * only without an IOMMU domain, whose pins already cover every page). This module only moves the counters, refuses
 * past the limit, and traces every change as "vfio.type1.locked_vm".
 *
 * Past RLIMIT_MEMLOCK without CAP_IPC_LOCK a charge fails with ENOMEM and a sentence saying by how much and what to
 * do; nothing is charged then. Invariant: `dma.lockedVm` is what this module charged for `dma` and has not uncharged.
 */
import { defineTraceEvents, Errno, hex, KernelError, type Tracer } from "../../core/index.ts";
import type { VfioDma } from "./dma-map.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio.type1.locked_vm": { container: number; pid: number; delta: number; lockedVm: number };
  }
}
defineTraceEvents("vfio", {
  "vfio.type1.locked_vm": "container {container}: process {pid} locked_vm {delta} -> {lockedVm} page(s)",
});

/** What the pinning parts need to charge and uncharge a mapping's pages. */
export interface LockAccounting {
  /**
   * vfio_lock_acct(+npages) on `dma`'s address space. `op` names the operation in the ENOMEM sentence; `device` and
   * `at` (the IOVA) add who pinned where, for vfio_pin_pages.
   */
  charge(dma: VfioDma, npages: number, op: string, device?: string, at?: number): void;
  /** vfio_lock_acct(-npages). */
  uncharge(dma: VfioDma, npages: number): void;
}

/** vfio_lock_acct for one container. */
export class LockedMemory implements LockAccounting {
  constructor(
    private readonly container: number,
    private readonly tracer: Tracer,
  ) {}

  charge(dma: VfioDma, npages: number, op: string, device?: string, at?: number): void {
    const mm = dma.mm;
    try {
      mm.accountLockedVm(npages, true);
    } catch (e) {
      if (e instanceof KernelError && e.errno === Errno.ENOMEM) {
        const limit = mm.memlockLimitPages();
        // The sentence is built here, on the error path, so that pinning a page formats nothing.
        const what = device === undefined ? op : `${op} by ${device} at iova ${hex(at ?? 0)}`;
        throw new KernelError(
          Errno.ENOMEM,
          `RLIMIT_MEMLOCK exceeded: ${what} needs ${npages} more locked page(s) but process ${mm.pid} already has ` +
            `${mm.lockedVm()} page(s) locked and its limit is ${limit} page(s) (${mm.rlimitMemlock()} bytes); ` +
            "raise RLIMIT_MEMLOCK (ulimit -l) or grant CAP_IPC_LOCK",
          { pid: mm.pid, lockedVm: mm.lockedVm(), requested: npages, limitPages: limit },
        );
      }
      throw e;
    }
    dma.lockedVm += npages;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.locked_vm", {
        container: this.container,
        pid: mm.pid,
        delta: npages,
        lockedVm: mm.lockedVm(),
      });
    }
  }

  uncharge(dma: VfioDma, npages: number): void {
    const mm = dma.mm;
    mm.accountLockedVm(npages, false);
    dma.lockedVm -= npages;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.locked_vm", {
        container: this.container,
        pid: mm.pid,
        delta: -npages,
        lockedVm: mm.lockedVm(),
      });
    }
  }
}
