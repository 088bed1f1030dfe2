/**
 * The mapping engine of one type1 container: what MAP_DMA and UNMAP_DMA do once their arguments are valid. Mirrors
 * vfio_dma_do_map (from the overlap check on), the VADDR update of vfio_dma_do_map, vfio_dma_do_unmap (from its
 * `again:` loop on), vfio_remove_dma, vfio_iommu_unmap_unpin_all and vfio_iommu_unmap_unpin_reaccount.
 *
 * The point of the seed, kept visible here: a container whose groups are all emulated pins nothing at MAP_DMA time.
 * It records the mapping (IOVA -> the caller's virtual address) and the vendor driver pins on demand, page by page
 * (emulated.ts). Only when the container has an IOMMU domain does MAP_DMA pin every page and map it (pinning.ts).
 *
 * - MAP: overlap EEXIST; no entries left ENOSPC (dma_entry_limit); outside the allowed IOVA ranges EINVAL; then pin
 *   and map into the domain if there is one, and a dirty bitmap while tracking. VADDR update: ENOENT without a
 *   mapping there; EINVAL unless the range is exactly one mapping whose vaddr was invalidated.
 * - UNMAP: v2 refuses a range that bisects a mapping (EINVAL) and reports 0 bytes when nothing is mapped; v1 removes
 *   every mapping whose first page is in the range, and nothing when the range starts inside a mapping. VADDR
 *   invalidates vaddrs instead, undoing this call's invalidations on a mapping already invalid (EINVAL). A mapping
 *   with emulated pins makes the devices hear dma_unmap and the walk start over (emulated.ts counts the retries); the
 *   mappings already removed stay removed when it ends in EBUSY. With a bitmap each mapping's dirty bits are copied
 *   out before it goes.
 *
 * What it does not do: decode or validate the ioctl arguments (ioctl.ts, in the kernel's order: flags, alignment to
 * the smallest page size, wrap-around, the 2^53 limit of this model), pin for emulated devices, or choose the domain.
 *
 * Difference, stated: the "current" task of an ioctl is the address space the container was opened with, so
 * VFIO_DMA_MAP_FLAG_VADDR never changes a mapping's owner (vfio_change_dma_owner).
 *
 * Invariants: mappings never overlap; with a domain every mapping is IOMMU-mapped once MAP_DMA returns; a removed
 * mapping leaves nothing pinned, mapped or charged.
 */
import { defineTraceEvents, Errno, type Hva, hex, type Iova, KernelError } from "../../core/index.ts";
import { VFIO_DMA_UNMAP_FLAG_ALL, VFIO_DMA_UNMAP_FLAG_VADDR } from "../uapi/index.ts";
import type { LockAccounting } from "./accounting.ts";
import type { DirtyTracking } from "./dirty-tracking.ts";
import { protName, VfioDma } from "./dma-map.ts";
import type { DmaUnmapRetries, EmulatedDevices } from "./emulated.ts";
import type { DomainPinning } from "./pinning.ts";
import type { Type1State } from "./state.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio.type1.map": {
      container: number;
      iova: number;
      vaddr: number;
      size: number;
      prot: string;
      pinned: number;
      lockedVm: number;
    };
    "vfio.type1.map.vaddr": { container: number; iova: number; size: number; vaddr: number };
    "vfio.type1.unmap": { container: number; iova: number; size: number; unmapped: number; mappings: number };
    "vfio.type1.unmap.vaddr": { container: number; iova: number; size: number; invalidated: number };
  }
}
defineTraceEvents("vfio", {
  "vfio.type1.map":
    "container {container}: MAP_DMA iova {iova} -> vaddr {vaddr}, {size} bytes {prot}: {pinned} page(s) pinned, locked_vm {lockedVm}",
  "vfio.type1.map.vaddr": "container {container}: vaddr of [{iova}, +{size}) updated to {vaddr}",
  "vfio.type1.unmap":
    "container {container}: UNMAP_DMA iova {iova} size {size}: {unmapped} bytes in {mappings} mapping(s)",
  "vfio.type1.unmap.vaddr": "container {container}: vaddr of {invalidated} bytes from iova {iova} invalidated",
});

const TWO_53 = 2 ** 53;

/** A MAP_DMA range after validation: page aligned, non-empty, ending at or below 2^53. */
export interface DmaRange {
  readonly iova: Iova;
  readonly size: number;
}

/**
 * An UNMAP_DMA range after validation: [iova, end), page aligned, ending at or below 2^64 (so both numbers are exact:
 * multiples of 4 KiB up to 2^64 are doubles), `end` +Infinity for VFIO_DMA_UNMAP_FLAG_ALL.
 */
export interface UnmapRange {
  readonly iova: Iova;
  readonly end: number;
}

/** What the mapping engine reads and changes of the container's state. */
export type MappingStateView = Pick<
  Type1State,
  | "container"
  | "v2"
  | "mm"
  | "tracer"
  | "dmas"
  | "dmaAvail"
  | "domain"
  | "iovaRanges"
  | "link"
  | "unlink"
  | "invalidateVaddr"
  | "restoreVaddr"
  | "warn"
>;

/** What the mapping engine needs from the emulated devices: their notifications, and their pins when a mapping goes. */
export type PinHolders = Pick<EmulatedDevices, "unmapRetries" | "releaseStalePins">;

/** What the mapping engine needs from dirty tracking. */
export type DirtyBitmaps = Pick<DirtyTracking, "tracking" | "trackNew" | "copyToUser">;

/** MAP_DMA and UNMAP_DMA on one container's mappings (see the module comment). */
export class MappingEngine {
  constructor(
    private readonly state: MappingStateView,
    private readonly pinning: DomainPinning,
    private readonly acct: LockAccounting,
    private readonly holders: PinHolders,
    private readonly dirty: DirtyBitmaps,
  ) {}

  /** vfio_dma_do_map: a new mapping of `range` to `vaddr` with `prot` (IOMMU_READ | IOMMU_WRITE). */
  map(range: DmaRange, vaddr: Hva, prot: number): void {
    const state = this.state;
    const start: number = range.iova;
    const len = range.size;
    const found = state.dmas.find(start, len);
    if (found !== undefined) {
      throw new KernelError(
        Errno.EEXIST,
        `VFIO_IOMMU_MAP_DMA: [${hex(start)}, ${hex(start + len)}) overlaps the existing mapping ${found.describe()}`,
      );
    }
    if (state.dmaAvail === 0) {
      throw new KernelError(
        Errno.ENOSPC,
        `VFIO_IOMMU_MAP_DMA: container ${state.container} already holds ${state.dmas.size} mappings, its dma_entry_limit`,
      );
    }
    if (!state.iovaRanges.allows(start, start + len - 1)) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_MAP_DMA: [${hex(start)}, ${hex(start + len)}) is outside the allowed IOVA ranges ${state.iovaRanges}`,
      );
    }
    const dma = new VfioDma(start, vaddr, len, prot, state.mm);
    const domain = state.domain;
    if (domain !== undefined) {
      this.pinning.pinMap(dma, domain, `VFIO_IOMMU_MAP_DMA of ${dma.describe()}`);
      dma.iommuMapped = true;
    }
    if (this.dirty.tracking) {
      try {
        this.dirty.trackNew(dma, `VFIO_IOMMU_MAP_DMA of ${dma.describe()}`);
      } catch (e) {
        this.pinning.unmapUnpin(dma, state.domain, true);
        throw e;
      }
    }
    state.link(dma);
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.map", {
        container: state.container,
        iova: start,
        vaddr,
        size: len,
        prot: protName(prot),
        pinned: dma.iommuPinnedPages,
        lockedVm: state.mm.lockedVm(),
      });
    }
  }

  /** MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR: a new vaddr for a mapping whose vaddr was invalidated. */
  updateVaddr(range: DmaRange, vaddr: Hva): void {
    const state = this.state;
    const iova: number = range.iova;
    const size = range.size;
    const dma = state.dmas.find(iova, size);
    if (dma === undefined) {
      throw new KernelError(
        Errno.ENOENT,
        `VFIO_IOMMU_MAP_DMA with VADDR: no mapping at [${hex(iova)}, ${hex(iova + size)}) to update`,
      );
    }
    if (!dma.vaddrInvalid || dma.iova !== iova || dma.size !== size) {
      throw new KernelError(
        Errno.EINVAL,
        !dma.vaddrInvalid
          ? `VFIO_IOMMU_MAP_DMA with VADDR: mapping ${dma.describe()} still has a valid vaddr (unmap it with VFIO_DMA_UNMAP_FLAG_VADDR first)`
          : `VFIO_IOMMU_MAP_DMA with VADDR: [${hex(iova)}, ${hex(iova + size)}) must match the mapping ${dma.describe()} exactly`,
      );
    }
    dma.vaddr = vaddr;
    state.restoreVaddr(dma);
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.map.vaddr", { container: state.container, iova, size, vaddr });
    }
  }

  /**
   * vfio_dma_do_unmap's walk: removes (or, with VFIO_DMA_UNMAP_FLAG_VADDR in `flags`, invalidates the vaddr of) the
   * mappings in `range`, copying each one's dirty bits to the user bitmap at `bitmap` first when there is one.
   * Returns the bytes unmapped or invalidated.
   */
  unmap(range: UnmapRange, flags: number, bitmap: Hva | undefined): number {
    const state = this.state;
    const dmas = state.dmas;
    const all = (flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0;
    const invalidateVaddr = (flags & VFIO_DMA_UNMAP_FLAG_VADDR) !== 0;
    const iova: number = range.iova;
    const end = range.end;
    let unmapped = 0;
    let mappings = 0;
    let retries: DmaUnmapRetries | undefined;
    for (;;) {
      // `again:` in the kernel: after a dma_unmap notification the tree may have changed, so start over.
      if (state.v2 && !all) {
        const head = dmas.find(iova, 1);
        if (head !== undefined && head.iova !== iova) {
          throw new KernelError(
            Errno.EINVAL,
            `VFIO_IOMMU_UNMAP_DMA: [${hex(iova)}, ${hexEnd(end)}) starts inside the mapping ${head.describe()}; a type1v2 unmap must cover whole mappings`,
          );
        }
        const tail = dmas.find(end - 1, 0);
        if (tail !== undefined && tail.end !== end) {
          throw new KernelError(
            Errno.EINVAL,
            `VFIO_IOMMU_UNMAP_DMA: [${hex(iova)}, ${hexEnd(end)}) ends inside the mapping ${tail.describe()}; a type1v2 unmap must cover whole mappings`,
          );
        }
      }
      let restart = false;
      const first = dmas.firstFrom(iova);
      let dma = first;
      while (dma !== undefined) {
        if (dma.iova >= end) break;
        // v1: a request that starts inside a mapping unmaps nothing (success, size 0).
        if (!state.v2 && iova > dma.iova) break;
        if (invalidateVaddr) {
          if (dma.vaddrInvalid) {
            // Undo this call's invalidations, as the kernel does.
            for (let d = first; d !== undefined && d !== dma; d = dmas.next(d)) state.restoreVaddr(d);
            throw new KernelError(
              Errno.EINVAL,
              `VFIO_IOMMU_UNMAP_DMA with VADDR: the vaddr of mapping ${dma.describe()} is already invalid`,
            );
          }
          state.invalidateVaddr(dma);
          unmapped += dma.size;
          mappings++;
          dma = dmas.next(dma);
          continue;
        }
        if (dma.pinnedPages > 0) {
          retries ??= this.holders.unmapRetries();
          retries.notify(dma);
          restart = true;
          break;
        }
        if (bitmap !== undefined) this.dirty.copyToUser(bitmap, dma, iova);
        unmapped += dma.size;
        mappings++;
        const next = dmas.next(dma);
        this.removeDma(dma);
        dma = next;
      }
      if (!restart) break;
    }
    if (state.tracer.enabled) {
      // -1 stands for "everything" (UNMAP_ALL, or a range past 2^53), whose size does not fit a number.
      const traceSize = end > TWO_53 ? -1 : end - iova;
      if (invalidateVaddr) {
        state.tracer.emit("vfio.type1.unmap.vaddr", {
          container: state.container,
          iova,
          size: traceSize,
          invalidated: unmapped,
        });
      } else {
        state.tracer.emit("vfio.type1.unmap", {
          container: state.container,
          iova,
          size: traceSize,
          unmapped,
          mappings,
        });
      }
    }
    return unmapped;
  }

  /** vfio_iommu_unmap_unpin_all: every mapping goes. */
  unmapUnpinAll(): void {
    for (const dma of this.state.dmas.toArray()) this.removeDma(dma);
  }

  /** vfio_iommu_unmap_unpin_reaccount: the domain goes, emulated pins stay, and only they stay charged. */
  unmapUnpinReaccount(): void {
    const state = this.state;
    for (const dma of state.dmas) {
      const unlocked = this.pinning.unmapUnpin(dma, state.domain, false);
      const locked = dma.pinnedPages;
      if (unlocked > locked) this.acct.uncharge(dma, unlocked - locked);
    }
  }

  /** vfio_remove_dma. */
  private removeDma(dma: VfioDma): void {
    const state = this.state;
    if (dma.pinnedPages > 0) this.holders.releaseStalePins(dma);
    this.pinning.unmapUnpin(dma, state.domain, true);
    if (dma.lockedVm !== 0) {
      state.warn(`mapping ${dma.describe()} still had ${dma.lockedVm} locked page(s) charged at removal`);
      this.acct.uncharge(dma, dma.lockedVm);
    }
    state.unlink(dma);
    dma.bitmap = undefined;
  }
}

function hexEnd(end: number): string {
  return Number.isFinite(end) ? hex(end) : "end of the space";
}
