/**
 * The VFIO type1 IOMMU backend (drivers/vfio/vfio_iommu_type1.c): the driver vfio-core registers
 * (vfio_iommu_driver_ops_type1) and, per container that selects VFIO_TYPE1_IOMMU or VFIO_TYPE1v2_IOMMU, a
 * `Type1Backend` (vfio_iommu_type1_open): the face vfio-core and emulated devices see, assembled from one part per
 * concept, each of which says which Linux functions it mirrors.
 *
 * ```
 * ioctl.ts           container ioctls: decoding, argument checks in the kernel's order, replies
 * mapping.ts         MAP_DMA / UNMAP_DMA on the mappings, removal of mappings, teardown
 * dirty-tracking.ts  START / STOP / GET_BITMAP, which pages are dirty
 * groups.ts          attach / detach: the IOMMU domain, aperture, reserved regions, replay
 * emulated.ts        mdev devices: vfio_pin_pages / unpin, vfio_dma_rw, dma_unmap notifications with retries
 * pinning.ts         pin_user_pages in batches and IOMMU domain programming, and their undoing
 * accounting.ts      locked_vm charges (vfio_lock_acct)
 * introspection.ts   stats, mapping snapshots, invariants
 * state.ts           the shared facts (struct vfio_iommu), changed only through its accessors
 * dma-map.ts, iova-ranges.ts, dirty.ts   the data: mapping tree and pins, allowed ranges, bitmap operations
 * ```
 *
 * Who calls whom: ioctl.ts -> mapping.ts, dirty-tracking.ts; groups.ts -> mapping.ts (teardown), pinning.ts
 * (replay), emulated.ts (names), dirty-tracking.ts; mapping.ts -> pinning.ts, emulated.ts (notifications),
 * dirty-tracking.ts, accounting.ts; emulated.ts -> accounting.ts, dirty-tracking.ts; pinning.ts -> accounting.ts;
 * introspection.ts reads state.ts, emulated.ts (pins) and dirty-tracking.ts; every part reads state.ts, and nothing
 * calls back up.
 *
 * Parts reach each other only through narrow views (`Pick`s of the providers, declared by each consumer) and share
 * state only through `Type1State`; this file wires them and forwards the backend's calls, tracing each entry call
 * that fails with an errno as "vfio.type1.error" under the name its caller knows (the ioctl, "attach of group N",
 * "vfio_pin_pages by <device>", "vfio_dma_rw"). It owns nothing but the `released` flag.
 *
 * Differences from Linux that concern the whole backend: kernel WARNs are "vfio.type1.warn" trace events counted in
 * `stats().warnings` (Linux prints and continues; here also the pins a WARN path would leak are released). Reserved
 * (non-struct-page) pfns and the disable_hugepages parameter are not modelled. Each part states its own.
 */
import { defineTraceEvents, Errno, type Iova, KernelError, type Pfn, type Tracer } from "../../core/index.ts";
import type { AddressSpace, IoctlArg, Iommu, IommuDomain, PhysicalMemory } from "../../host/index.ts";
import type { VfioEmulatedDevice, VfioGroupAttachment, VfioIommuBackend, VfioIommuDriver } from "../driver.ts";
import { VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, vfioExtensionName, vfioIoctlName } from "../uapi/index.ts";
import { LockedMemory } from "./accounting.ts";
import { DirtyTracking } from "./dirty-tracking.ts";
import { EmulatedDevices } from "./emulated.ts";
import { Type1Groups } from "./groups.ts";
import { Type1Introspection, type Type1MappingInfo, type Type1Stats } from "./introspection.ts";
import { ContainerIoctls, type1CheckExtension } from "./ioctl.ts";
import { MappingEngine } from "./mapping.ts";
import { IommuPinning } from "./pinning.ts";
import { Type1State } from "./state.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio.type1.open": { container: number; pid: number; v2: boolean };
    "vfio.type1.release": { container: number; mappings: number; pinnedPages: number };
    "vfio.type1.error": { container: number; op: string; errno: string; message: string };
  }
}
defineTraceEvents("vfio", {
  "vfio.type1.open": "container {container}: type1 backend opened by process {pid} (v2 {v2})",
  "vfio.type1.release":
    "container {container}: released, {mappings} mapping(s) and {pinnedPages} pinned page(s) undone",
  "vfio.type1.error": "container {container}: {op} failed with {errno}: {message}",
});

/** The module parameter dma_entry_limit's default (U16_MAX). */
export const DEFAULT_DMA_ENTRY_LIMIT = 65535;

export interface Type1Options {
  readonly iommu: Iommu;
  readonly physmem: PhysicalMemory;
  readonly tracer: Tracer;
  /** Mappings per container (the dma_entry_limit module parameter); default 65535. */
  readonly dmaEntryLimit?: number;
}

/** The type1 IOMMU driver: registered with vfio-core, it opens one backend per container that selects it. */
export interface Type1Driver extends VfioIommuDriver {
  open(ext: number, mm: AddressSpace): Type1Backend;
}

/** vfio_iommu_driver_ops_type1. */
export function type1Driver(opts: Type1Options): Type1Driver {
  const limit = opts.dmaEntryLimit ?? DEFAULT_DMA_ENTRY_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 0 || limit > 0xffff_ffff) {
    throw new KernelError(Errno.EINVAL, `dma_entry_limit ${limit} must be an unsigned 32-bit integer`);
  }
  let containers = 0;
  return {
    name: "vfio-iommu-type1",
    // vfio_iommu_type1_check_extension(NULL, ext): what a container with no backend yet learns.
    checkExtension(ext: number): number {
      return type1CheckExtension(undefined, ext);
    },
    open(ext: number, mm: AddressSpace): Type1Backend {
      if (ext !== VFIO_TYPE1_IOMMU && ext !== VFIO_TYPE1v2_IOMMU) {
        throw new KernelError(
          Errno.EINVAL,
          `vfio-iommu-type1 cannot open ${vfioExtensionName(ext)}: use VFIO_TYPE1_IOMMU or VFIO_TYPE1v2_IOMMU`,
        );
      }
      return new Type1Backend({ ...opts, dmaEntryLimit: limit }, ext === VFIO_TYPE1v2_IOMMU, mm, ++containers);
    },
  };
}

/** struct vfio_iommu: one container's type1 backend (see the module comment for its parts). */
export class Type1Backend implements VfioIommuBackend {
  readonly container: number;
  readonly v2: boolean;
  /** The address space of the process that opened the container: the "current" task of its ioctls. */
  readonly mm: AddressSpace;
  private readonly state: Type1State;
  private readonly dirty: DirtyTracking;
  private readonly emulated: EmulatedDevices;
  private readonly groups: Type1Groups;
  private readonly ioctls: ContainerIoctls;
  private readonly introspection: Type1Introspection;
  private released = false;

  /** @internal Use `type1Driver(...).open`. */
  constructor(opts: Type1Options & { dmaEntryLimit: number }, v2: boolean, mm: AddressSpace, container: number) {
    this.v2 = v2;
    this.mm = mm;
    this.container = container;
    const state = new Type1State(container, v2, mm, opts.tracer, opts.dmaEntryLimit);
    const acct = new LockedMemory(container, opts.tracer);
    const pinning = new IommuPinning(acct);
    const dirty = new DirtyTracking(state);
    const emulated = new EmulatedDevices(state, acct, dirty);
    const mapping = new MappingEngine(state, pinning, acct, emulated, dirty);
    this.state = state;
    this.dirty = dirty;
    this.emulated = emulated;
    this.groups = new Type1Groups(state, opts.iommu, pinning, mapping, emulated, dirty);
    this.ioctls = new ContainerIoctls(state, mapping, dirty);
    this.introspection = new Type1Introspection(state, emulated, dirty, opts.physmem);
    if (opts.tracer.enabled) opts.tracer.emit("vfio.type1.open", { container, pid: mm.pid, v2 });
  }

  // ---- container ioctls (ioctl.ts) ---------------------------------------------------------------------------------

  /** vfio_iommu_type1_ioctl. Returns 0 (or CHECK_EXTENSION's answer); throws KernelError with Linux's errno. */
  ioctl(request: number, arg: IoctlArg): number {
    try {
      return this.ioctls.ioctl(request, arg);
    } catch (e) {
      this.traceError(vfioIoctlName(request, "container"), e);
      throw e;
    }
  }

  /** vfio_iommu_type1_check_extension(iommu, ext). */
  checkExtension(ext: number): number {
    return this.ioctls.checkExtension(ext);
  }

  // ---- groups (groups.ts) ------------------------------------------------------------------------------------------

  /** vfio_iommu_type1_attach_group. */
  attachGroup(group: VfioGroupAttachment): void {
    try {
      this.groups.attach(group);
    } catch (e) {
      this.traceError(`attach of group ${group.id}`, e);
      throw e;
    }
  }

  /** vfio_iommu_type1_detach_group. */
  detachGroup(group: VfioGroupAttachment): void {
    this.groups.detach(group);
  }

  /** vfio_iommu_type1_release: everything undone, the domain freed. Idempotent. */
  release(): void {
    if (this.released) return;
    const state = this.state;
    const mappings = state.dmas.size;
    let pinned = 0;
    for (const dma of state.dmas) pinned += dma.iommuPinnedPages + dma.pinnedPages;
    this.groups.release();
    this.dirty.reset();
    this.released = true;
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.release", { container: this.container, mappings, pinnedPages: pinned });
    }
  }

  // ---- emulated devices (emulated.ts) ------------------------------------------------------------------------------

  /** vfio_iommu_type1_register_device: the device will hear dma_unmap for every mapping it may have pinned in. */
  registerDevice(dev: VfioEmulatedDevice): void {
    this.emulated.register(dev);
  }

  unregisterDevice(dev: VfioEmulatedDevice): void {
    this.emulated.unregister(dev);
  }

  /**
   * vfio_pin_pages: pins `npage` pages from `iova` and returns their frames. EINVAL npage 0; E2BIG above 512; EACCES
   * on a type1 (v1) container; EBUSY while a vaddr is invalidated; EINVAL with no registered device; per page EINVAL
   * (not mapped) or EPERM (the mapping does not grant `prot`); ENOMEM past RLIMIT_MEMLOCK; ENODEV when the mapping's
   * process is gone. On failure nothing this call pinned stays pinned.
   */
  pinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number, prot: number): Pfn[] {
    try {
      return this.emulated.pinPages(dev, iova, npage, prot);
    } catch (e) {
      this.traceError(`vfio_pin_pages by ${dev.name}`, e);
      throw e;
    }
  }

  /**
   * vfio_unpin_pages: drops one reference per page; the last one unpins and uncharges. Like Linux this returns
   * nothing: an npage out of range, a v1 container or an unmapped IOVA is a WARN (a "vfio.type1.warn" event) and
   * stops there; unpinning a page that is not pinned does nothing.
   */
  unpinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number): void {
    this.emulated.unpinPages(dev, iova, npage);
  }

  /**
   * vfio_dma_rw: copies between `buf` and the memory mapped at `iova`, through the mapping's address space, without
   * pinning. EINVAL empty buffer or unmapped IOVA; EBUSY while a vaddr is invalidated; EPERM when the mapping does
   * not allow reading (any access) or writing (a write), or its process is gone; EFAULT when the copy faults.
   */
  dmaRw(iova: Iova, buf: Uint8Array, write: boolean): void {
    try {
      this.emulated.dmaRw(iova, buf, write);
    } catch (e) {
      this.traceError("vfio_dma_rw", e);
      throw e;
    }
  }

  // ---- introspection (introspection.ts) ----------------------------------------------------------------------------

  stats(): Type1Stats {
    return this.introspection.stats();
  }

  /** The allowed IOVA ranges, inclusive (empty: any IOVA). The top of the 64-bit space reads as 2^64. */
  allowedRanges(): readonly { readonly start: number; readonly end: number }[] {
    return this.state.iovaRanges.ranges();
  }

  /** The IOMMU domain of this container, if an IOMMU-backed group is attached. */
  iommuDomain(): IommuDomain | undefined {
    return this.state.domain;
  }

  mappings(): Type1MappingInfo[] {
    return this.introspection.mappings();
  }

  /** Checks the invariants (see introspection.ts); throws a plain Error naming the first violation. */
  checkInvariants(): void {
    this.introspection.checkInvariants();
  }

  /** A call that failed with an errno, named as its caller knows it. */
  private traceError(op: string, e: unknown): void {
    if (e instanceof KernelError && this.state.tracer.enabled) {
      this.state.tracer.emit("vfio.type1.error", { container: this.container, op, errno: e.code, message: e.message });
    }
  }
}
