/**
 * Dirty page tracking of one type1 container (VFIO_IOMMU_DIRTY_PAGES START / STOP / GET_BITMAP and the bitmap of
 * UNMAP_DMA with GET_DIRTY_BITMAP): which mappings have a bitmap, when a page becomes dirty, and what is reported.
 * Mirrors vfio_dma_bitmap_alloc_all / vfio_dma_bitmap_free_all, vfio_dma_populate_bitmap, vfio_iova_dirty_bitmap
 * and update_user_bitmap.
 *
 * - START gives every mapping a bitmap with the pages emulated devices hold pinned marked dirty; while tracking, a
 *   new mapping gets a bitmap at MAP_DMA, a page pinned by an emulated device or written through vfio_dma_rw is
 *   marked, and STOP drops every bitmap.
 * - Reporting copies a mapping's bits into the caller's bitmap in user memory; a mapping that an IOMMU-backed group
 *   without selective pinning can reach is reported wholly dirty. After GET_BITMAP pinned pages stay dirty and pages
 *   only written through vfio_dma_rw are reported once. When a group that could write anywhere leaves, everything it
 *   could reach is marked, once.
 *
 * What it does not do: decode or validate the ioctls (ioctl.ts does, in the kernel's order, before calling here) or
 * lay out the bits (dirty.ts: allocation, bit operations and the shifted copy to user memory).
 *
 * Invariant: while tracking every mapping has a bitmap of one bit per page; otherwise none has.
 */
import { defineTraceEvents, Errno, type Hva, hex, KernelError, PAGE_SIZE } from "../../core/index.ts";
import { allocDirtyBitmap, copyBitsToUser, countBits, setBit, setBits } from "./dirty.ts";
import type { VfioDma } from "./dma-map.ts";
import type { Type1State } from "./state.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio.type1.dirty.start": { container: number; mappings: number; pinnedPages: number };
    "vfio.type1.dirty.stop": { container: number; mappings: number };
    "vfio.type1.dirty.bitmap": { container: number; iova: number; size: number; dirtyPages: number };
  }
}
defineTraceEvents("vfio", {
  "vfio.type1.dirty.start":
    "container {container}: dirty tracking started on {mappings} mapping(s), {pinnedPages} pinned page(s) dirty",
  "vfio.type1.dirty.stop": "container {container}: dirty tracking stopped ({mappings} mapping(s))",
  "vfio.type1.dirty.bitmap": "container {container}: dirty bitmap of [{iova}, +{size}): {dirtyPages} dirty page(s)",
});

/** What dirty tracking reads of the container's state. */
export type DirtyStateView = Pick<Type1State, "container" | "tracer" | "mm" | "dmas" | "nonPinnedGroups">;

/** Dirty tracking (iommu->dirty_page_tracking and the mappings' bitmaps). */
export class DirtyTracking {
  private on = false;

  constructor(private readonly state: DirtyStateView) {}

  /** Dirty tracking is started (dirty_page_tracking). */
  get tracking(): boolean {
    return this.on;
  }

  /** START: a bitmap per mapping, with the pages emulated devices hold pinned marked dirty. Nothing if started. */
  start(): void {
    if (this.on) return;
    const state = this.state;
    const done: VfioDma[] = [];
    let pinned = 0;
    try {
      for (const dma of state.dmas) {
        dma.bitmap = allocDirtyBitmap(dma.pages, `VFIO_IOMMU_DIRTY_PAGES START on ${dma.describe()}`);
        done.push(dma);
        pinned += populateBitmap(dma);
      }
    } catch (e) {
      for (const d of done) d.bitmap = undefined;
      throw e;
    }
    this.on = true;
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.dirty.start", {
        container: state.container,
        mappings: state.dmas.size,
        pinnedPages: pinned,
      });
    }
  }

  /** STOP: every bitmap goes. Nothing if not started. */
  stop(): void {
    if (!this.on) return;
    const state = this.state;
    this.on = false;
    for (const dma of state.dmas) dma.bitmap = undefined;
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.dirty.stop", { container: state.container, mappings: state.dmas.size });
    }
  }

  /** The container is released: tracking ends with it (its mappings and their bitmaps are already gone). */
  reset(): void {
    this.on = false;
  }

  /**
   * vfio_iova_dirty_bitmap: [iova, end) must not bisect a mapping; each mapping's bits go to the user bitmap at
   * `userData`, then its bitmap restarts from its pinned pages.
   */
  getBitmap(userData: Hva, iova: number, end: number): void {
    const state = this.state;
    const dmas = state.dmas;
    const head = dmas.find(iova, 1);
    if (head !== undefined && head.iova !== iova) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES: [${hex(iova)}, ${hex(end)}) starts inside the mapping ${head.describe()}`,
      );
    }
    const tail = dmas.find(end - 1, 0);
    if (tail !== undefined && tail.end !== end) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES: [${hex(iova)}, ${hex(end)}) ends inside the mapping ${tail.describe()}`,
      );
    }
    let dirtyPages = 0;
    for (let dma = dmas.firstFrom(iova); dma !== undefined && dma.iova < end; dma = dmas.next(dma)) {
      if (dma.iova < iova) continue;
      dirtyPages += this.copyToUser(userData, dma, iova);
      // Pinned pages stay dirty; pages only written through vfio_dma_rw are reported once.
      dma.bitmap!.fill(0);
      populateBitmap(dma);
    }
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.dirty.bitmap", { container: state.container, iova, size: end - iova, dirtyPages });
    }
  }

  /**
   * update_user_bitmap: copies `dma`'s bits into the user bitmap at `userData`, whose bit 0 is `baseIova`; returns
   * the number of dirty pages copied.
   */
  copyToUser(userData: Hva, dma: VfioDma, baseIova: number): number {
    const bm = dma.bitmap!;
    const nbits = dma.pages;
    // A group that can DMA anywhere and never declared what it touches makes everything it can reach dirty.
    if (this.state.nonPinnedGroups > 0 && dma.iommuMapped) setBits(bm, 0, nbits);
    copyBitsToUser(this.state.mm, userData, bm, nbits, (dma.iova - baseIova) / PAGE_SIZE);
    return countBits(bm, nbits);
  }

  /** MAP_DMA while tracking: the new mapping gets its bitmap (ENOMEM past the bitmap limit, naming `op`). */
  trackNew(dma: VfioDma, op: string): void {
    if (this.on) dma.bitmap = allocDirtyBitmap(dma.pages, op);
  }

  /** Page `idx` of `dma` was pinned by an emulated device. */
  markPinned(dma: VfioDma, idx: number): void {
    if (this.on) setBit(dma.bitmap!, idx);
  }

  /** `count` bytes at byte `offset` of `dma` were written through vfio_dma_rw. */
  markWritten(dma: VfioDma, offset: number, count: number): void {
    if (!this.on) return;
    const first = Math.floor(offset / PAGE_SIZE);
    setBits(dma.bitmap!, first, Math.floor((offset + count - 1) / PAGE_SIZE) - first + 1);
  }

  /** A group that could write anywhere left: everything it could reach is reported, once. */
  markAll(): void {
    if (this.on) for (const dma of this.state.dmas) setBits(dma.bitmap!, 0, dma.pages);
  }
}

/** vfio_dma_populate_bitmap: pinned pages are dirty. Returns how many were marked. */
function populateBitmap(dma: VfioDma): number {
  const bm = dma.bitmap;
  if (bm === undefined || dma.pins === undefined) return 0;
  for (const [idx] of dma.pins.entries()) setBit(bm, idx);
  return dma.pins.size;
}
