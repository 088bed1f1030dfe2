/**
 * Emulated-IOMMU (mdev) devices of one type1 container: the devices registered for dma_unmap notifications, the
 * pages they pin on demand, and their reads and writes of guest memory. Mirrors vfio_iommu_type1_register_device /
 * unregister_device, vfio_iommu_type1_pin_pages (with the checks vfio_pin_pages makes in vfio_main.c and
 * container.c), vfio_iommu_type1_unpin_pages, vfio_pin_page_external / vfio_unpin_page_external,
 * vfio_iommu_type1_dma_rw and vfio_notify_dma_unmap.
 *
 * - vfio_pin_pages pins each page once through the mapping's address space and counts references per page (the
 *   mapping's pfn_list); only the first pin of a page charges locked_vm, and only without an IOMMU domain (whose pins
 *   already cover and charge every page). Errors: EINVAL npage 0; E2BIG above 512; EACCES on a type1 (v1) container;
 *   EBUSY while a vaddr is invalidated; EINVAL with no registered device; per page EINVAL (not mapped) or EPERM (the
 *   mapping does not grant the access); ENOMEM past RLIMIT_MEMLOCK; ENODEV when the mapping's process is gone. On
 *   failure nothing the call pinned stays pinned. A pin also moves its device's IOMMU-backed group into the pinned
 *   dirty scope, and marks the page dirty while tracking.
 * - vfio_unpin_pages returns nothing, as in Linux: an npage out of range, a v1 container or an unmapped IOVA is a WARN
 *   and stops there; unpinning a page that is not pinned does nothing.
 * - vfio_dma_rw copies through the mapping's address space without pinning, and marks written pages dirty.
 * - An unmap of a mapping with pins calls every registered device's dma_unmap(iova, size) and is retried; Linux BUG()s
 *   after 10 retries. Here the 11th failed notification ends the ioctl with EBUSY and a sentence naming the devices
 *   still holding pins (counted per device on the mapping), plus a "vfio.type1.dma_unmap.stuck" event.
 *
 * What it does not do: walk or change the mapping tree (the unmap loop is mapping.ts's; it asks here for the
 * notifications), or pin for the IOMMU domain (pinning.ts).
 *
 * Differences, stated: vfio_pin_pages on an IOVA that is not page aligned pins the page containing it (Linux keys its
 * pfn_list by the exact IOVA; every in-tree caller passes aligned ones). A mapping removed while it still has emulated
 * pins is a WARN, and its pins are released so that nothing leaks, where Linux would leak them.
 *
 * Invariants: every pin slot referenced by a mapping's `pins` is live in this part's pool with a reference count of at
 * least 1 and its frame pinned once in physical memory. Holder counts are a best effort for the sentence of a stuck
 * unmap (a device may unpin what another pinned), never used to decide anything.
 * Performance: pinning and unpinning a page allocate nothing once the page's 2 MiB leaf exists (see dma-map.ts).
 */
import {
  defineTraceEvents,
  Errno,
  type Hva,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
} from "../../core/index.ts";
import { IOMMU_READ, IOMMU_WRITE } from "../../host/index.ts";
import type { VfioEmulatedDevice } from "../driver.ts";
import type { LockAccounting } from "./accounting.ts";
import type { DirtyTracking } from "./dirty-tracking.ts";
import { PinIndex, PinPool, protName, type VfioDma } from "./dma-map.ts";
import type { Type1State } from "./state.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio.type1.pin": { container: number; device: string; iova: number; npage: number; newPins: number };
    "vfio.type1.unpin": { container: number; device: string; iova: number; npage: number; released: number };
    "vfio.type1.dma_unmap.notify": { container: number; device: string; iova: number; size: number; attempt: number };
    "vfio.type1.dma_unmap.stuck": {
      container: number;
      iova: number;
      size: number;
      devices: readonly string[];
      pinnedPages: number;
      notifications: number;
    };
    "vfio.type1.device.register": { container: number; device: string; devices: number };
    "vfio.type1.device.unregister": { container: number; device: string; devices: number };
  }
}
defineTraceEvents("vfio", {
  "vfio.type1.pin": "container {container}: {device} pinned {npage} page(s) at iova {iova} ({newPins} new)",
  "vfio.type1.unpin": "container {container}: {device} unpinned {npage} page(s) at iova {iova} ({released} released)",
  "vfio.type1.dma_unmap.notify":
    "container {container}: dma_unmap({iova}, {size}) to {device} (notification {attempt})",
  "vfio.type1.dma_unmap.stuck":
    "container {container}: mapping [{iova}, +{size}) still has {pinnedPages} pinned page(s) after {notifications} dma_unmap notifications; held by {devices}",
  "vfio.type1.device.register": "container {container}: {device} registered for dma_unmap ({devices} registered)",
  "vfio.type1.device.unregister": "container {container}: {device} unregistered ({devices} registered)",
});

/** VFIO_PIN_PAGES_MAX_ENTRIES (include/linux/vfio.h): PAGE_SIZE / sizeof(unsigned long). */
export const VFIO_PIN_PAGES_MAX_ENTRIES = 512;
/** Linux BUG()s when a mapping still holds emulated pins after this many retried notifications. */
export const DMA_UNMAP_MAX_RETRIES = 10;

/** What the emulated-device part reads and changes of the container's state. */
export type EmulatedStateView = Pick<
  Type1State,
  | "container"
  | "v2"
  | "tracer"
  | "dmas"
  | "domain"
  | "vaddrInvalidCount"
  | "nonPinnedGroups"
  | "promoteScope"
  | "warn"
  | "countWarning"
>;

/** What pinning and vfio_dma_rw mark while dirty tracking runs. */
export type DirtyMarks = Pick<DirtyTracking, "markPinned" | "markWritten">;

/**
 * One UNMAP_DMA's notifications (the retry count of vfio_dma_do_unmap's `again:` loop): `notify` tells every
 * registered device to drop its pins in the mapping; called again for a mapping still pinned after 11 notifications
 * in a row (1 + DMA_UNMAP_MAX_RETRIES), it throws EBUSY instead.
 */
export interface DmaUnmapRetries {
  notify(dma: VfioDma): void;
}

/** An emulated pin of one page, for introspection. */
export interface EmulatedPin {
  readonly iova: number;
  readonly pfn: number;
  readonly refCount: number;
}

/** The registered emulated devices of one container and their pins (see the module comment). */
export class EmulatedDevices {
  private readonly devices: VfioEmulatedDevice[] = [];
  /** Every emulated pin of the container's mappings: frame and reference count per slot. */
  private readonly pool = new PinPool();
  private readonly one = new Float64Array(1);

  constructor(
    private readonly state: EmulatedStateView,
    private readonly acct: LockAccounting,
    private readonly dirty: DirtyMarks,
  ) {}

  // ---- registration ------------------------------------------------------------------------------------------------

  /** vfio_iommu_type1_register_device: the device will hear dma_unmap for every mapping it may have pinned in. */
  register(dev: VfioEmulatedDevice): void {
    if (this.devices.includes(dev)) return;
    this.devices.push(dev);
    if (this.state.tracer.enabled) {
      this.state.tracer.emit("vfio.type1.device.register", {
        container: this.state.container,
        device: dev.name,
        devices: this.devices.length,
      });
    }
  }

  /** vfio_iommu_type1_unregister_device. */
  unregister(dev: VfioEmulatedDevice): void {
    const i = this.devices.indexOf(dev);
    if (i < 0) return;
    this.devices.splice(i, 1);
    if (this.state.tracer.enabled) {
      this.state.tracer.emit("vfio.type1.device.unregister", {
        container: this.state.container,
        device: dev.name,
        devices: this.devices.length,
      });
    }
  }

  /** Devices registered. */
  get count(): number {
    return this.devices.length;
  }

  /** Names of the registered devices, in registration order. */
  names(): string[] {
    return this.devices.map((d) => d.name);
  }

  // ---- vfio_pin_pages / vfio_unpin_pages ---------------------------------------------------------------------------

  /** vfio_pin_pages: pins `npage` pages from `iova` and returns their frames (see the module comment). */
  pinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number, prot: number): Pfn[] {
    const state = this.state;
    if (!Number.isInteger(npage) || npage <= 0) {
      throw new KernelError(Errno.EINVAL, `vfio_pin_pages by ${dev.name}: npage ${npage} must be at least 1`);
    }
    if (npage > VFIO_PIN_PAGES_MAX_ENTRIES) {
      throw new KernelError(
        Errno.E2BIG,
        `vfio_pin_pages by ${dev.name}: ${npage} pages exceed VFIO_PIN_PAGES_MAX_ENTRIES (${VFIO_PIN_PAGES_MAX_ENTRIES})`,
      );
    }
    if (!state.v2) {
      throw new KernelError(
        Errno.EACCES,
        `vfio_pin_pages by ${dev.name}: container ${state.container} uses VFIO_TYPE1_IOMMU; pinning needs VFIO_TYPE1v2_IOMMU`,
      );
    }
    if (state.vaddrInvalidCount > 0) {
      state.warn(`vfio_pin_pages not allowed with VFIO_UPDATE_VADDR (${dev.name})`);
      throw new KernelError(
        Errno.EBUSY,
        `vfio_pin_pages by ${dev.name}: ${state.vaddrInvalidCount} mapping(s) of container ${state.container} have an invalidated vaddr`,
      );
    }
    if (this.devices.length === 0) {
      throw new KernelError(
        Errno.EINVAL,
        `vfio_pin_pages by ${dev.name}: no device of container ${state.container} is registered for dma_unmap notifications`,
      );
    }
    const dmas = state.dmas;
    const doAccounting = state.domain === undefined;
    const out = new Array<Pfn>(npage);
    const pool = this.pool;
    let newPins = 0;
    let i = 0;
    try {
      for (; i < npage; i++) {
        const a = iova + i * PAGE_SIZE;
        const dma = dmas.find(a, PAGE_SIZE);
        if (dma === undefined) {
          throw new KernelError(
            Errno.EINVAL,
            `vfio_pin_pages by ${dev.name}: iova ${hex(a)} is not mapped in container ${state.container}`,
          );
        }
        if ((dma.prot & prot) !== prot) {
          throw new KernelError(
            Errno.EPERM,
            `vfio_pin_pages by ${dev.name}: iova ${hex(a)} lies in mapping ${dma.describe()}, which is ${protName(dma.prot)}, not ${protName(prot)}`,
          );
        }
        const idx = Math.floor((a - dma.iova) / PAGE_SIZE);
        let pins = dma.pins;
        const slot = pins === undefined ? -1 : pins.get(idx);
        if (slot >= 0) {
          pool.ref[slot]!++;
          out[i] = pool.pfn[slot]! as Pfn;
        } else {
          const pfn = this.pinExternal(dma, idx, doAccounting, dev);
          if (pins === undefined) {
            pins = new PinIndex(dma.pages);
            dma.pins = pins;
          }
          pins.set(idx, pool.alloc(pfn));
          out[i] = pfn as Pfn;
          newPins++;
          this.dirty.markPinned(dma, idx);
        }
        addHolder(dma, dev, 1);
      }
    } catch (e) {
      for (let j = 0; j < i; j++) {
        const a = iova + j * PAGE_SIZE;
        const dma = dmas.find(a, PAGE_SIZE)!;
        this.unpinExternal(dma, Math.floor((a - dma.iova) / PAGE_SIZE), doAccounting);
        addHolder(dma, dev, -1);
      }
      throw e;
    }
    if (state.nonPinnedGroups > 0) state.promoteScope(dev.name);
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.pin", { container: state.container, device: dev.name, iova, npage, newPins });
    }
    return out;
  }

  /** vfio_unpin_pages: drops one reference per page; the last one unpins and uncharges (see the module comment). */
  unpinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number): void {
    const state = this.state;
    if (!Number.isInteger(npage) || npage <= 0 || npage > VFIO_PIN_PAGES_MAX_ENTRIES || !state.v2) {
      this.refuseUnpin(dev, npage);
      return;
    }
    const dmas = state.dmas;
    const doAccounting = state.domain === undefined;
    let released = 0;
    let i = 0;
    for (; i < npage; i++) {
      const a = iova + i * PAGE_SIZE;
      const dma = dmas.find(a, PAGE_SIZE);
      if (dma === undefined) break;
      const idx = Math.floor((a - dma.iova) / PAGE_SIZE);
      if (dma.pins === undefined || !dma.pins.has(idx)) continue;
      released += this.unpinExternal(dma, idx, doAccounting);
      addHolder(dma, dev, -1);
    }
    if (i !== npage) this.warnUnmappedUnpin(dev, iova, i, npage);
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.unpin", { container: state.container, device: dev.name, iova, npage, released });
    }
  }

  // The WARNs of vfio_unpin_pages, kept out of its body so that the hot path stays small enough to inline.

  private refuseUnpin(dev: VfioEmulatedDevice, npage: number): void {
    if (!Number.isInteger(npage) || npage <= 0 || npage > VFIO_PIN_PAGES_MAX_ENTRIES) {
      this.state.warn(`vfio_unpin_pages by ${dev.name}: npage ${npage} is outside [1, ${VFIO_PIN_PAGES_MAX_ENTRIES}]`);
    } else {
      this.state.warn(`vfio_unpin_pages by ${dev.name} on a VFIO_TYPE1_IOMMU (v1) container`);
    }
  }

  private warnUnmappedUnpin(dev: VfioEmulatedDevice, iova: Iova, i: number, npage: number): void {
    this.state.warn(
      `vfio_unpin_pages by ${dev.name}: iova ${hex(iova + i * PAGE_SIZE)} is not mapped (page ${i} of ${npage})`,
    );
  }

  /** vfio_pin_page_external: one page through the mapping's address space; returns its frame. */
  private pinExternal(dma: VfioDma, idx: number, doAccounting: boolean, dev: VfioEmulatedDevice): number {
    const mm = dma.mm;
    if (mm.exited) {
      throw new KernelError(
        Errno.ENODEV,
        `vfio_pin_pages by ${dev.name}: process ${mm.pid}, owner of mapping ${dma.describe()}, has exited`,
      );
    }
    const one = this.one;
    mm.pinUserPages((dma.vaddr + idx * PAGE_SIZE) as Hva, 1, (dma.prot & IOMMU_WRITE) !== 0, one);
    if (doAccounting) {
      try {
        this.acct.charge(dma, 1, "vfio_pin_pages", dev.name, dma.iova + idx * PAGE_SIZE);
      } catch (e) {
        mm.unpinUserPages(one, 1);
        throw e;
      }
    }
    return one[0]!;
  }

  /** vfio_unpin_page_external: drops a reference; the last one unpins (and uncharges). Returns pages released. */
  private unpinExternal(dma: VfioDma, idx: number, doAccounting: boolean): number {
    const pins = dma.pins;
    const slot = pins === undefined ? -1 : pins.get(idx);
    if (slot < 0) return 0;
    const pool = this.pool;
    const ref = pool.ref[slot]! - 1;
    pool.ref[slot] = ref;
    if (ref > 0) return 0;
    const one = this.one;
    one[0] = pool.pfn[slot]!;
    dma.mm.unpinUserPages(one, 1);
    pins!.delete(idx);
    pool.release(slot);
    if (doAccounting) this.acct.uncharge(dma, 1);
    return 1;
  }

  // ---- vfio_dma_rw -------------------------------------------------------------------------------------------------

  /**
   * vfio_dma_rw: copies between `buf` and the memory mapped at `iova`, through the mapping's address space, without
   * pinning. EINVAL empty buffer or unmapped IOVA; EBUSY while a vaddr is invalidated; EPERM when the mapping does
   * not allow reading (any access) or writing (a write), or its process is gone; EFAULT when the copy faults.
   */
  dmaRw(iova: Iova, buf: Uint8Array, write: boolean): void {
    const state = this.state;
    if (buf.length === 0) throw new KernelError(Errno.EINVAL, "vfio_dma_rw: the buffer is empty");
    if (state.vaddrInvalidCount > 0) {
      state.warn("vfio_dma_rw not allowed with VFIO_UPDATE_VADDR");
      throw new KernelError(
        Errno.EBUSY,
        `vfio_dma_rw: ${state.vaddrInvalidCount} mapping(s) of container ${state.container} have an invalidated vaddr`,
      );
    }
    let done = 0;
    let a: number = iova;
    while (done < buf.length) {
      const dma = state.dmas.find(a, 1);
      if (dma === undefined) {
        throw new KernelError(
          Errno.EINVAL,
          `vfio_dma_rw: iova ${hex(a)} is not mapped in container ${state.container}`,
        );
      }
      if ((write && (dma.prot & IOMMU_WRITE) === 0) || (dma.prot & IOMMU_READ) === 0) {
        throw new KernelError(
          Errno.EPERM,
          `vfio_dma_rw: mapping ${dma.describe()} is ${protName(dma.prot)}: it does not allow a ${write ? "write" : "read"}`,
        );
      }
      if (dma.mm.exited) {
        throw new KernelError(
          Errno.EPERM,
          `vfio_dma_rw: process ${dma.mm.pid}, owner of ${dma.describe()}, has exited`,
        );
      }
      const offset = a - dma.iova;
      const count = Math.min(buf.length - done, dma.size - offset);
      const va = (dma.vaddr + offset) as Hva;
      try {
        if (write) dma.mm.write(va, buf, done, count);
        else dma.mm.read(va, buf, done, count);
      } catch (e) {
        if (!(e instanceof KernelError)) throw e;
        throw new KernelError(
          Errno.EFAULT,
          `vfio_dma_rw: copying ${count} bytes at iova ${hex(a)} (vaddr ${hex(va)}) faulted: ${e.message}`,
        );
      }
      if (write) this.dirty.markWritten(dma, offset, count);
      done += count;
      a += count;
    }
  }

  // ---- dma_unmap notifications -------------------------------------------------------------------------------------

  /** The notifications of one UNMAP_DMA, with their retry count (see `DmaUnmapRetries`). */
  unmapRetries(): DmaUnmapRetries {
    let last: VfioDma | undefined;
    let retries = 0;
    return {
      notify: (dma: VfioDma): void => {
        if (last === dma) {
          if (++retries > DMA_UNMAP_MAX_RETRIES) this.stuck(dma, retries);
        } else {
          last = dma;
          retries = 0;
        }
        this.notifyDmaUnmap(dma, retries + 1);
      },
    };
  }

  /** vfio_notify_dma_unmap: every registered device is told to drop its pins in the mapping. */
  private notifyDmaUnmap(dma: VfioDma, attempt: number): void {
    const state = this.state;
    const devices = this.devices.slice();
    for (const dev of devices) {
      if (state.tracer.enabled) {
        state.tracer.emit("vfio.type1.dma_unmap.notify", {
          container: state.container,
          device: dev.name,
          iova: dma.iova,
          size: dma.size,
          attempt,
        });
      }
      try {
        dev.dmaUnmap(dma.iova as Iova, dma.size);
      } catch (e) {
        // The callback returns void in Linux: a failure is the driver's bug; the retry loop will notice its pins.
        if (!(e instanceof KernelError)) throw e;
        state.warn(`${dev.name}: dma_unmap(${hex(dma.iova)}, ${hex(dma.size)}) failed: ${e.describe()}`);
      }
    }
  }

  /** The loud end of a mapping whose pins the devices will not release (Linux: BUG_ON(++retries > 10)). */
  private stuck(dma: VfioDma, notifications: number): never {
    const state = this.state;
    const holders: string[] = [];
    dma.holderDevices.forEach((dev, i) => {
      const n = dma.holderCounts[i]!;
      if (n > 0) holders.push(`${dev.name} (${n})`);
    });
    const names = holders.length > 0 ? holders : this.devices.map((d) => `${d.name} (unknown count)`);
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.dma_unmap.stuck", {
        container: state.container,
        iova: dma.iova,
        size: dma.size,
        devices: names,
        pinnedPages: dma.pinnedPages,
        notifications,
      });
    }
    state.countWarning();
    throw new KernelError(
      Errno.EBUSY,
      `VFIO_IOMMU_UNMAP_DMA: mapping ${dma.describe()} still has ${dma.pinnedPages} page(s) pinned after ` +
        `${notifications} dma_unmap notifications; device(s) ${names.join(", ")} did not unpin them in their dma_unmap ` +
        "callback (a vendor driver bug; Linux would BUG() here)",
      { iova: dma.iova, size: dma.size, devices: names },
    );
  }

  // ---- removal with pins left --------------------------------------------------------------------------------------

  /**
   * vfio_remove_dma's WARN_ON(!RB_EMPTY_ROOT(&dma->pfn_list)): the mapping goes while devices still hold pins in it.
   * Warns naming them and drops every emulated pin regardless of reference counts (Linux would leak them); a page
   * also pinned for the IOMMU domain keeps its charge with that pin.
   */
  releaseStalePins(dma: VfioDma): void {
    this.state.warn(
      `mapping ${dma.describe()} removed while ${dma.pinnedPages} page(s) are still pinned by device(s) ${holderNames(dma)}; they are unpinned now`,
    );
    const pins = dma.pins;
    if (pins === undefined) return;
    const pool = this.pool;
    const one = this.one;
    let uncharge = 0;
    for (const [idx, slot] of pins.entries()) {
      one[0] = pool.pfn[slot]!;
      dma.mm.unpinUserPages(one, 1);
      pool.release(slot);
      // Charged once; with IOMMU pins on the same page the charge stays with them.
      if (dma.iommuPfnAt(idx) < 0) uncharge++;
    }
    pins.clear();
    dma.holderDevices.length = 0;
    dma.holderCounts.length = 0;
    if (uncharge > 0) this.acct.uncharge(dma, uncharge);
  }

  // ---- introspection -----------------------------------------------------------------------------------------------

  /** The emulated pins of `dma` in IOVA order, with frames and reference counts. */
  pinsOf(dma: VfioDma): EmulatedPin[] {
    const pool = this.pool;
    return (dma.pins?.entries() ?? []).map(([idx, slot]) => ({
      iova: dma.iova + idx * PAGE_SIZE,
      pfn: pool.pfn[slot]!,
      refCount: pool.ref[slot]!,
    }));
  }

  /** Pin slots in use across the container's mappings. */
  get livePins(): number {
    return this.pool.live;
  }

  /** The frame and reference count held in pin slot `slot`. */
  pinSlot(slot: number): { readonly pfn: number; readonly refCount: number } {
    return { pfn: this.pool.pfn[slot]!, refCount: this.pool.ref[slot]! };
  }
}

/** Counts `delta` references for `dev` on the mapping (a short array: a mapping sees one or two devices). */
function addHolder(dma: VfioDma, dev: VfioEmulatedDevice, delta: number): void {
  const devs = dma.holderDevices;
  for (let i = 0; i < devs.length; i++) {
    if (devs[i] === dev) {
      const n = dma.holderCounts[i]! + delta;
      dma.holderCounts[i] = Math.max(n, 0);
      return;
    }
  }
  if (delta <= 0) return;
  devs.push(dev);
  dma.holderCounts.push(delta);
}

function holderNames(dma: VfioDma): string {
  const names: string[] = [];
  dma.holderDevices.forEach((dev, i) => {
    if (dma.holderCounts[i]! > 0) names.push(dev.name);
  });
  return names.length > 0 ? names.join(", ") : "(unknown)";
}
