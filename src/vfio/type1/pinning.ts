/**
 * The IOMMU side of a mapping (vfio_pin_map_dma with vfio_pin_pages_remote's batches and vfio_iommu_map, and
 * vfio_unmap_unpin): pins every page of a mapping through its address space and programs the container's IOMMU
 * domain with it, and undoes both.
 *
 * - Pages are pinned with pin_user_pages in batches of 512 (VFIO_BATCH_MAX_CAPACITY, a page of page pointers, as
 *   vfio_batch); each batch is charged to locked_vm once, less the pages an emulated device of the same mapping
 *   already pinned (and charged).
 * - Physically contiguous frames are merged into runs and each run is mapped with one domain.map, so the page table
 *   can use superpages; the runs are kept on the mapping (`VfioDma.runs`) and are what unmapping walks (Linux walks
 *   the page table with iommu_iova_to_phys instead: same frames, no walks).
 * - On failure everything this call pinned, mapped and charged is undone before the error goes up.
 *
 * What it does not do: choose the domain or the mappings (mapping.ts maps at MAP_DMA, groups.ts replays into a new
 * domain), or decide whether unpinning also uncharges (the caller passes `doAccounting`).
 *
 * Invariant: a mapping's runs are exactly its pages mapped in the domain, each frame pinned once for it.
 * Performance: the batch and unpin buffers are allocated once per container; a warm MAP_DMA allocates only the runs.
 */
import { type Hpa, type Hva, type Iova, PAGE_SIZE } from "../../core/index.ts";
import { type AddressSpace, IOMMU_WRITE, type IommuDomain } from "../../host/index.ts";
import type { LockAccounting } from "./accounting.ts";
import type { VfioDma } from "./dma-map.ts";

/** Pages pinned per pin_user_pages call while mapping (VFIO_BATCH_MAX_CAPACITY: a page of page pointers). */
export const VFIO_BATCH_MAX_CAPACITY = 512;

/** What the mapping engine and the group code need from the IOMMU pinning. */
export interface DomainPinning {
  pinMap(dma: VfioDma, domain: IommuDomain, op: string): void;
  unmapUnpin(dma: VfioDma, domain: IommuDomain | undefined, doAccounting: boolean): number;
}

/** Pins mappings into an IOMMU domain and takes them out again. */
export class IommuPinning implements DomainPinning {
  /** Frames of one pin batch (vfio_batch.pages). */
  private readonly batch = new Float64Array(VFIO_BATCH_MAX_CAPACITY);
  /** Frames handed to unpin_user_pages. */
  private readonly scratch = new Float64Array(VFIO_BATCH_MAX_CAPACITY);

  constructor(private readonly acct: LockAccounting) {}

  /**
   * vfio_pin_map_dma / the replay's pinning: pins the whole mapping in batches of 512 through its address space and
   * maps each run of physically contiguous frames with one domain.map. Pages an emulated device already pinned are
   * not charged again. On failure everything this call pinned, mapped and charged is undone. `op` names the caller
   * in an ENOMEM sentence.
   */
  pinMap(dma: VfioDma, domain: IommuDomain, op: string): void {
    const mm = dma.mm;
    const pages = dma.pages;
    const write = (dma.prot & IOMMU_WRITE) !== 0;
    const batch = this.batch;
    let pos = 0;
    let n = 0;
    let k = 0;
    let runStart = 0;
    let runPfn = 0;
    let runLen = 0;
    let charged = 0;
    try {
      while (pos < pages) {
        const want = Math.min(VFIO_BATCH_MAX_CAPACITY, pages - pos);
        mm.pinUserPages((dma.vaddr + pos * PAGE_SIZE) as Hva, want, write, batch);
        n = want;
        k = 0;
        let acct = n;
        const pins = dma.pins;
        if (pins !== undefined && pins.size > 0) {
          acct = 0;
          for (let j = 0; j < n; j++) if (!pins.has(pos + j)) acct++;
        }
        if (acct > 0) {
          this.acct.charge(dma, acct, op);
          charged += acct;
        }
        for (; k < n; k++) {
          const f = batch[k]!;
          if (runLen > 0 && f === runPfn + runLen) {
            runLen++;
            continue;
          }
          if (runLen > 0) {
            domain.map(
              (dma.iova + runStart * PAGE_SIZE) as Iova,
              (runPfn * PAGE_SIZE) as Hpa,
              runLen * PAGE_SIZE,
              dma.prot,
            );
            dma.addRun(runStart, runPfn, runLen);
          }
          runStart = pos + k;
          runPfn = f;
          runLen = 1;
        }
        pos += n;
        n = 0;
      }
      if (runLen > 0) {
        domain.map(
          (dma.iova + runStart * PAGE_SIZE) as Iova,
          (runPfn * PAGE_SIZE) as Hpa,
          runLen * PAGE_SIZE,
          dma.prot,
        );
        dma.addRun(runStart, runPfn, runLen);
        runLen = 0;
      }
    } catch (e) {
      if (n > k) mm.unpinUserPages(batch.subarray(k, n), n - k);
      if (runLen > 0) this.unpinFrames(mm, runPfn, runLen);
      this.unmapRuns(dma, domain);
      if (charged > 0) this.acct.uncharge(dma, charged);
      throw e;
    }
  }

  /**
   * vfio_unmap_unpin: takes the mapping out of `domain` (none: nothing to do) and drops its IOMMU pins. With
   * accounting, pages that an emulated device still holds stay charged. Returns the pages unpinned.
   */
  unmapUnpin(dma: VfioDma, domain: IommuDomain | undefined, doAccounting: boolean): number {
    if (domain === undefined || dma.runCount === 0) {
      dma.iommuMapped = false;
      return 0;
    }
    let stillPinned = 0;
    if (doAccounting && dma.pins !== undefined) {
      for (const [idx] of dma.pins.entries()) if (dma.iommuPfnAt(idx) >= 0) stillPinned++;
    }
    const unpinned = this.unmapRuns(dma, domain);
    dma.iommuMapped = false;
    if (doAccounting && unpinned - stillPinned > 0) this.acct.uncharge(dma, unpinned - stillPinned);
    return unpinned;
  }

  /** Unmaps a mapping's runs from `domain` and unpins their frames; returns the pages unpinned. */
  private unmapRuns(dma: VfioDma, domain: IommuDomain): number {
    let unpinned = 0;
    const runs = dma.runs;
    for (let r = 0; r < dma.runCount; r++) {
      const off = runs[r * 3]!;
      const pfn = runs[r * 3 + 1]!;
      const len = runs[r * 3 + 2]!;
      if (!domain.freed) domain.unmap((dma.iova + off * PAGE_SIZE) as Iova, len * PAGE_SIZE);
      this.unpinFrames(dma.mm, pfn, len);
      unpinned += len;
    }
    dma.clearRuns();
    return unpinned;
  }

  private unpinFrames(mm: AddressSpace, pfn: number, count: number): void {
    const s = this.scratch;
    for (let done = 0; done < count; ) {
      const c = Math.min(s.length, count - done);
      for (let j = 0; j < c; j++) s[j] = pfn + done + j;
      mm.unpinUserPages(s, c);
      done += c;
    }
  }
}
