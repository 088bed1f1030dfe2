/**
 * The two plug-in points of vfio-core, as the seed describes them: "vfio supports modular bus drivers and IOMMU
 * drivers".
 *
 * - A **bus driver** (vfio-pci for a whole physical device; an mdev vendor driver such as the vGPU or mtty) implements
 *   `VfioDeviceOps` for each device it registers. vfio-core owns the byte-level UAPI: it decodes and validates the
 *   device ioctls (argsz, flags, indices, the SET_IRQS payload) with the shared codecs of vfio/uapi, calls these typed
 *   methods, and encodes the answers (including capability chains and the too-small-buffer rule). The same typed
 *   interface is what the vfio-user server calls, so a device never knows which kind of VMM it serves.
 * - An **IOMMU driver** (type1, noiommu) implements `VfioIommuDriver`; each container that selects it gets a
 *   `VfioIommuBackend`, to which vfio-core forwards the container ioctls and group attach/detach, and through which
 *   emulated-IOMMU devices pin pages (vfio_pin_pages) and receive dma_unmap notifications.
 *
 * Linux's equivalents: struct vfio_device_ops, struct vfio_iommu_driver_ops (drivers/vfio/vfio.h, include/linux/vfio.h).
 * Difference, stated: Linux hands raw ioctls to each bus driver and every driver decodes them; here the decode lives
 * once in vfio-core, with `ioctl` kept as an escape hatch for device-specific requests.
 */
import type { Iova, Pfn } from "../core/index.ts";
import type { AddressSpace, FileMapping, IoctlArg } from "../host/index.ts";

/** How a group's DMA is isolated (enum vfio_group_type). */
export type VfioGroupType = "iommu" | "emulated" | "noiommu";

/** Anything that can be told an interrupt fired: an EventFd in the model, a real eventfd over vfio-user. */
export interface IrqTrigger {
  signal(): void;
}

export interface VfioDeviceInfo {
  /** VFIO_DEVICE_FLAGS_*: RESET, PCI, ... (CAPS is set by vfio-core when caps are present). */
  readonly flags: number;
  readonly numRegions: number;
  readonly numIrqs: number;
  /** Device-info capabilities (VFIO_DEVICE_INFO_CAP_*), chained by vfio-core after the struct. */
  readonly caps?: readonly VfioCapability[];
}

/** A capability to append to an info reply: its id, version and body bytes (after the 8-byte header). */
export interface VfioCapability {
  readonly id: number;
  readonly version: number;
  readonly body: Uint8Array;
}

export interface VfioRegionInfo {
  readonly index: number;
  /** VFIO_REGION_INFO_FLAG_READ | WRITE | MMAP (CAPS is added by vfio-core when `caps` is non-empty). */
  readonly flags: number;
  readonly size: number;
  readonly caps?: readonly VfioCapability[];
}

export interface VfioIrqInfo {
  readonly index: number;
  /** VFIO_IRQ_INFO_EVENTFD | MASKABLE | AUTOMASKED | NORESIZE */
  readonly flags: number;
  readonly count: number;
}

/** A decoded, validated VFIO_DEVICE_SET_IRQS (vfio_set_irqs_validate_and_prepare has run). */
export type VfioIrqSetData =
  | { readonly kind: "none" }
  | { readonly kind: "bool"; readonly values: readonly boolean[] }
  /** One entry per vector from `start`; null de-assigns (fd -1). */
  | { readonly kind: "eventfd"; readonly triggers: readonly (IrqTrigger | null)[] };

export interface VfioIrqSet {
  /** VFIO_IRQ_SET_ACTION_MASK | UNMASK | TRIGGER (exactly one). */
  readonly action: "mask" | "unmask" | "trigger";
  readonly index: number;
  readonly start: number;
  readonly count: number;
  readonly data: VfioIrqSetData;
}

/**
 * What vfio-core gives an opened emulated-IOMMU device: access to the guest memory its container maps, the
 * vfio_pin_pages / vfio_unpin_pages / vfio_dma_rw of include/linux/vfio.h. Valid from `open` until `close`.
 */
export interface VfioDmaAccess {
  /** Pins `npage` pages from `iova` (IOVA = guest-physical here); returns their host frames. See type1 for errors. */
  pinPages(iova: Iova, npage: number, prot: number): Pfn[];
  unpinPages(iova: Iova, npage: number): void;
  /** Copies to/from guest memory without pinning (vfio_dma_rw). */
  dmaRw(iova: Iova, buf: Uint8Array, write: boolean): void;
}

/**
 * Memory an emulated-IOMMU device may reach that its IOMMU backend does not hold: a vfio-user client's DMA windows
 * without an fd, which only the client can read and write (DMA_READ/DMA_WRITE messages). Installed on an open device
 * through `VfioDeviceHandle.interposeDma`; vfio_dma_rw inside `covers` goes to it, vfio_pin_pages there fails (no host
 * frames exist to pin), everything else goes to the backend as before. No Linux equivalent: in Linux, memory a VMM
 * cannot give the kernel is simply not DMA-able.
 */
export interface VfioDmaInterposer {
  /** Whether all of [iova, iova + length) is memory the interposer serves. */
  covers(iova: Iova, length: number): boolean;
  /** vfio_dma_rw into that memory; throws KernelError as vfio_dma_rw would. */
  dmaRw(iova: Iova, buf: Uint8Array, write: boolean): void;
}

/** struct vfio_device_ops, typed. Every method may throw KernelError with Linux's errno. */
export interface VfioDeviceOps {
  /** The device name GET_DEVICE_FD matches: a PCI BDF or an mdev UUID. */
  readonly name: string;
  /** open_device: first open of a device fd. `dma` is present for emulated-IOMMU devices. */
  open?(dma: VfioDmaAccess | undefined): void;
  /** close_device: last device fd closed; the device must release everything the user session held. */
  close?(): void;
  info(): VfioDeviceInfo;
  regionInfo(index: number): VfioRegionInfo;
  irqInfo(index: number): VfioIrqInfo;
  setIrqs(set: VfioIrqSet): void;
  /** VFIO_DEVICE_RESET; EINVAL if the device has no reset (info().flags lacks RESET). */
  reset(): void;
  /** Access to region `index` at `offset` within it; returns bytes transferred. */
  regionRead(index: number, offset: number, buf: Uint8Array): number;
  regionWrite(index: number, offset: number, buf: Uint8Array): number;
  /** Frames backing [offset, offset+length) of an mmap-able region. */
  regionMmap?(index: number, offset: number, length: number, prot: number): FileMapping;
  /**
   * Emulated-IOMMU devices: [iova, iova+length) is being unmapped by the user; unpin every page pinned in it before
   * returning (type1 checks, retries, and complains loudly naming the device if pins remain).
   */
  dmaUnmap?(iova: Iova, length: number): void;
  /** Device-specific ioctls vfio-core does not decode (QUERY_GFX_PLANE, FEATURE, ...). ENOTTY when absent. */
  ioctl?(request: number, arg: IoctlArg): number;
}

/** A device as a backend sees it when it registers for dma_unmap notifications. */
export interface VfioEmulatedDevice {
  readonly name: string;
  dmaUnmap(iova: Iova, length: number): void;
}

/** What vfio-core tells a backend about a group it attaches. */
export interface VfioGroupAttachment {
  /** The IOMMU group number (/dev/vfio/<id>). */
  readonly id: number;
  readonly type: VfioGroupType;
  /** Names of the devices in the group (BDFs), for messages. */
  readonly devices: readonly string[];
}

/** One container's instance of an IOMMU driver (the iommu_data of vfio_iommu_driver_ops). */
export interface VfioIommuBackend {
  /** Container ioctls other than GET_API_VERSION / CHECK_EXTENSION / SET_IOMMU. ENOTTY for unknown requests. */
  ioctl(request: number, arg: IoctlArg): number;
  /** CHECK_EXTENSION once this backend is set. */
  checkExtension(ext: number): number;
  attachGroup(group: VfioGroupAttachment): void;
  detachGroup(group: VfioGroupAttachment): void;
  /** The container lost its last group (or closed): undo every mapping, pin and accounting. */
  release(): void;
  registerDevice(dev: VfioEmulatedDevice): void;
  unregisterDevice(dev: VfioEmulatedDevice): void;
  pinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number, prot: number): Pfn[];
  unpinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number): void;
  dmaRw(iova: Iova, buf: Uint8Array, write: boolean): void;
}

/** struct vfio_iommu_driver_ops: registered with vfio-core, chosen by SET_IOMMU. */
export interface VfioIommuDriver {
  readonly name: string;
  /** CHECK_EXTENSION on a container with no backend set: this driver's answer (0 = unsupported). */
  checkExtension(ext: number): number;
  /** SET_IOMMU(ext): a new backend for a container whose opener's address space is `mm`. */
  open(ext: number, mm: AddressSpace): VfioIommuBackend;
}
