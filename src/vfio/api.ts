/**
 * A typed VFIO client over a host Process: what a VMM's vfio code does (QEMU hw/vfio, rust-vmm vfio-ioctls), written
 * once. Every call goes through the process's syscalls (open, ioctl, pread, pwrite, mmap) with the structs encoded in
 * Linux's layouts, so it exercises exactly the path a byte-level user takes; errors arrive as KernelError.
 *
 * ```ts
 * const container = VfioContainerHandle.open(vmm);
 * const group = VfioGroupHandle.open(vmm, 12);
 * group.setContainer(container);
 * container.setIommu(VFIO_TYPE1v2_IOMMU);
 * container.mapDma({ iova: 0, vaddr: ram, size: 1 << 30, read: true, write: true });
 * const dev = group.getDevice("0000:00:02.0");
 * const bar0 = dev.regionInfo(VFIO_PCI_BAR0_REGION_INDEX);
 * ```
 *
 * INFO ioctls follow the two-pass protocol for capability chains: ask with the fixed struct's size, and if the reply
 * raised argsz, ask again with a buffer that large. u64 fields that may exceed 2^53 (type1's page-size bitmap, IOVA
 * range ends) are bigints; region sizes and offsets are numbers.
 *
 * Not here: hot reset, ioeventfd, device features, migration, dirty tracking (callers can issue those ioctls directly
 * with the uapi codecs).
 */
import { Errno, type Hva, KernelError, PAGE_SIZE } from "../core/index.ts";
import { PROT_READ, PROT_WRITE, type Process } from "../host/index.ts";
import { VFIO_CONTAINER_PATH } from "./core.ts";
import { VfioDeviceFile } from "./device-file.ts";
import type { VfioDmaInterposer } from "./driver.ts";
import {
  decodeIovaRangeCap,
  decodeSparseMmapCap,
  encodeVfioIrqSet,
  findCap,
  type InfoCapEntry,
  parseCapChain,
  VFIO_CHECK_EXTENSION,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_RESET,
  VFIO_DEVICE_SET_IRQS,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_GROUP_UNSET_CONTAINER,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_SET_IOMMU,
  VfioDeviceInfo,
  VfioGroupStatus,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
  VfioIommuType1Info,
  VfioIommuType1InfoCapMigration,
  VfioIommuType1InfoDmaAvail,
  VfioIrqInfo,
  VfioRegionInfo,
  VfioRegionInfoCapType,
} from "./uapi/index.ts";

/** Retries of the two-pass INFO protocol before giving up on a reply whose argsz keeps growing. */
const INFO_RETRIES = 4;

/** Issues an INFO ioctl with the two-pass protocol: returns the final buffer (argsz at offset 0 is what was needed). */
function infoIoctl(
  proc: Process,
  fd: number,
  request: number,
  sizeof: number,
  fill: (buf: Uint8Array) => void,
  what: string,
): Uint8Array {
  let argsz = sizeof;
  for (let i = 0; i < INFO_RETRIES; i++) {
    const buf = new Uint8Array(argsz);
    fill(buf);
    new DataView(buf.buffer).setUint32(0, argsz, true);
    proc.ioctl(fd, request, buf);
    const needed = new DataView(buf.buffer).getUint32(0, true);
    if (needed <= argsz) return buf;
    argsz = needed;
  }
  throw new KernelError(Errno.EIO, `${what}: the reply's argsz kept growing after ${INFO_RETRIES} attempts`);
}

// ---------------------------------------------------------------------------------------------------------------------
// Container

export interface VfioDmaMapRequest {
  readonly iova: number;
  /** An address in the process's address space. */
  readonly vaddr: number;
  readonly size: number;
  readonly read?: boolean;
  readonly write?: boolean;
}

export interface VfioDmaUnmapRequest {
  readonly iova?: number;
  readonly size?: number;
  /** VFIO_DMA_UNMAP_FLAG_ALL (iova and size must be 0). */
  readonly all?: boolean;
}

export interface VfioIommuInfo {
  readonly flags: number;
  /** Bitmap of the supported IOVA page sizes (u64). */
  readonly iovaPgsizes: bigint;
  /** Allowed IOVA ranges, inclusive ends (IOVA_RANGE cap); undefined when the backend does not report them. */
  readonly iovaRanges: readonly { readonly start: bigint; readonly end: bigint }[] | undefined;
  /** MAP_DMA entries left (DMA_AVAIL cap). */
  readonly dmaAvail: number | undefined;
  readonly migration:
    | { readonly flags: number; readonly pgsizeBitmap: bigint; readonly maxDirtyBitmapSize: bigint }
    | undefined;
  readonly caps: readonly InfoCapEntry[];
}

/** An open /dev/vfio/vfio. */
export class VfioContainerHandle {
  private constructor(
    readonly proc: Process,
    readonly fd: number,
  ) {}

  static open(proc: Process, path = VFIO_CONTAINER_PATH): VfioContainerHandle {
    return new VfioContainerHandle(proc, proc.open(path));
  }

  /** VFIO_GET_API_VERSION (0 = VFIO_API_VERSION). */
  apiVersion(): number {
    return this.proc.ioctl(this.fd, VFIO_GET_API_VERSION, 0);
  }

  checkExtension(ext: number): number {
    return this.proc.ioctl(this.fd, VFIO_CHECK_EXTENSION, ext);
  }

  setIommu(ext: number): void {
    this.proc.ioctl(this.fd, VFIO_SET_IOMMU, ext);
  }

  /** VFIO_IOMMU_MAP_DMA. */
  mapDma(req: VfioDmaMapRequest): void {
    const flags = (req.read ? VFIO_DMA_MAP_FLAG_READ : 0) | (req.write ? VFIO_DMA_MAP_FLAG_WRITE : 0);
    const buf = VfioIommuType1DmaMap.encode({
      argsz: VfioIommuType1DmaMap.sizeof,
      flags,
      vaddr: req.vaddr,
      iova: req.iova,
      size: req.size,
    });
    this.proc.ioctl(this.fd, VFIO_IOMMU_MAP_DMA, buf);
  }

  /** VFIO_IOMMU_UNMAP_DMA: returns the bytes unmapped (written back into `size`). */
  unmapDma(req: VfioDmaUnmapRequest): number {
    const buf = VfioIommuType1DmaUnmap.encode({
      argsz: VfioIommuType1DmaUnmap.sizeof,
      flags: req.all ? VFIO_DMA_UNMAP_FLAG_ALL : 0,
      iova: req.iova ?? 0,
      size: req.size ?? 0,
    });
    this.proc.ioctl(this.fd, VFIO_IOMMU_UNMAP_DMA, buf);
    return VfioIommuType1DmaUnmap.getNumber(buf, "size");
  }

  /** VFIO_IOMMU_GET_INFO with its capabilities. */
  getInfo(): VfioIommuInfo {
    const buf = infoIoctl(this.proc, this.fd, VFIO_IOMMU_GET_INFO, VfioIommuType1Info.sizeof, () => {}, "GET_INFO");
    const info = VfioIommuType1Info.decode(buf);
    const caps = (info.flags & VFIO_IOMMU_INFO_CAPS) !== 0 ? parseCapChain(buf, info.cap_offset) : [];
    const range = caps.find((c) => c.id === VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
    const avail = caps.find((c) => c.id === VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
    const mig = caps.find((c) => c.id === VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION);
    const m = mig ? VfioIommuType1InfoCapMigration.decode(mig.bytes) : undefined;
    return {
      flags: info.flags,
      iovaPgsizes: info.iova_pgsizes,
      iovaRanges: range
        ? decodeIovaRangeCap(range.bytes).ranges.map((r) => ({ start: r.start, end: r.end }))
        : undefined,
      dmaAvail: avail ? VfioIommuType1InfoDmaAvail.decode(avail.bytes).avail : undefined,
      migration: m
        ? { flags: m.flags, pgsizeBitmap: m.pgsize_bitmap, maxDirtyBitmapSize: m.max_dirty_bitmap_size }
        : undefined,
      caps,
    };
  }

  close(): void {
    this.proc.close(this.fd);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Group

export interface VfioGroupStatusInfo {
  readonly flags: number;
  readonly viable: boolean;
  readonly containerSet: boolean;
}

/** An open /dev/vfio/<N>. */
export class VfioGroupHandle {
  private constructor(
    readonly proc: Process,
    readonly fd: number,
    readonly path: string,
  ) {}

  /** Opens /dev/vfio/<group>; pass "noiommu-<n>" for a no-IOMMU group. */
  static open(proc: Process, group: number | string): VfioGroupHandle {
    const path = `/dev/vfio/${group}`;
    return new VfioGroupHandle(proc, proc.open(path), path);
  }

  /** VFIO_GROUP_GET_STATUS. */
  status(): VfioGroupStatusInfo {
    const buf = VfioGroupStatus.encode({ argsz: VfioGroupStatus.sizeof, flags: 0 });
    this.proc.ioctl(this.fd, VFIO_GROUP_GET_STATUS, buf);
    const flags = VfioGroupStatus.getNumber(buf, "flags");
    return {
      flags,
      viable: (flags & VFIO_GROUP_FLAGS_VIABLE) !== 0,
      containerSet: (flags & VFIO_GROUP_FLAGS_CONTAINER_SET) !== 0,
    };
  }

  /** VFIO_GROUP_SET_CONTAINER with a container handle or a raw fd. */
  setContainer(container: VfioContainerHandle | number): void {
    const fd = typeof container === "number" ? container : container.fd;
    const buf = new Uint8Array(4);
    new DataView(buf.buffer).setInt32(0, fd, true);
    this.proc.ioctl(this.fd, VFIO_GROUP_SET_CONTAINER, buf);
  }

  unsetContainer(): void {
    this.proc.ioctl(this.fd, VFIO_GROUP_UNSET_CONTAINER, 0);
  }

  /** VFIO_GROUP_GET_DEVICE_FD: a handle on a new device fd. */
  getDevice(name: string): VfioDeviceHandle {
    const bytes = new TextEncoder().encode(name);
    const buf = new Uint8Array(bytes.length + 1);
    buf.set(bytes);
    const fd = this.proc.ioctl(this.fd, VFIO_GROUP_GET_DEVICE_FD, buf);
    return new VfioDeviceHandle(this.proc, fd, name);
  }

  close(): void {
    this.proc.close(this.fd);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Device

export interface VfioDeviceInfoReply {
  readonly flags: number;
  readonly numRegions: number;
  readonly numIrqs: number;
  readonly caps: readonly InfoCapEntry[];
}

export interface VfioRegionInfoReply {
  readonly index: number;
  readonly flags: number;
  readonly size: number;
  /** Offset of the region in the device fd (index << 40 for vfio-pci). */
  readonly offset: number;
  readonly caps: readonly InfoCapEntry[];
  /** SPARSE_MMAP cap: the parts of the region that may be mmapped. */
  readonly sparseMmap: readonly { readonly offset: number; readonly size: number }[] | undefined;
  /** TYPE cap: what a device-specific region is. */
  readonly type: { readonly type: number; readonly subtype: number } | undefined;
}

export interface VfioIrqInfoReply {
  readonly index: number;
  readonly flags: number;
  readonly count: number;
}

export type VfioIrqAction = "mask" | "unmask" | "trigger";
const ACTION_FLAG: Readonly<Record<VfioIrqAction, number>> = {
  mask: VFIO_IRQ_SET_ACTION_MASK,
  unmask: VFIO_IRQ_SET_ACTION_UNMASK,
  trigger: VFIO_IRQ_SET_ACTION_TRIGGER,
};

/** An open device fd. */
export class VfioDeviceHandle {
  private readonly regions = new Map<number, VfioRegionInfoReply>();

  constructor(
    readonly proc: Process,
    readonly fd: number,
    readonly name: string,
  ) {}

  /**
   * Installs a DMA interposer on this open device (see `VfioDmaInterposer`): what a vfio-user server uses for the
   * client's windows without an fd. Returns the function that removes it; it also goes when the device closes.
   */
  interposeDma(i: VfioDmaInterposer): () => void {
    const ops = this.proc.file(this.fd).ops;
    if (!(ops instanceof VfioDeviceFile)) {
      throw new KernelError(Errno.ENOTTY, `fd ${this.fd} of process ${this.proc.pid} is not a VFIO device file`);
    }
    return ops.device.setDmaInterposer(i);
  }

  /** VFIO_DEVICE_GET_INFO with its capabilities. */
  info(): VfioDeviceInfoReply {
    const buf = infoIoctl(this.proc, this.fd, VFIO_DEVICE_GET_INFO, VfioDeviceInfo.sizeof, () => {}, "GET_INFO");
    const info = VfioDeviceInfo.decode(buf);
    return {
      flags: info.flags,
      numRegions: info.num_regions,
      numIrqs: info.num_irqs,
      caps: (info.flags & VFIO_DEVICE_FLAGS_CAPS) !== 0 ? parseCapChain(buf, info.cap_offset) : [],
    };
  }

  /** VFIO_DEVICE_GET_REGION_INFO with its capabilities (cached per index). */
  regionInfo(index: number): VfioRegionInfoReply {
    const cached = this.regions.get(index);
    if (cached !== undefined) return cached;
    const buf = infoIoctl(
      this.proc,
      this.fd,
      VFIO_DEVICE_GET_REGION_INFO,
      VfioRegionInfo.sizeof,
      (b) => VfioRegionInfo.set(b, "index", index),
      `GET_REGION_INFO(${index})`,
    );
    const info = VfioRegionInfo.decode(buf);
    const caps = (info.flags & VFIO_REGION_INFO_FLAG_CAPS) !== 0 ? parseCapChain(buf, info.cap_offset) : [];
    const sparse = caps.find((c) => c.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP);
    const type = findCap(buf, info.cap_offset, VFIO_REGION_INFO_CAP_TYPE);
    const t = type ? VfioRegionInfoCapType.decode(type.bytes) : undefined;
    const reply: VfioRegionInfoReply = {
      index,
      flags: info.flags,
      size: VfioRegionInfo.getNumber(buf, "size"),
      offset: VfioRegionInfo.getNumber(buf, "offset"),
      caps,
      sparseMmap: sparse
        ? decodeSparseMmapCap(sparse.bytes).areas.map((a) => ({ offset: Number(a.offset), size: Number(a.size) }))
        : undefined,
      type: t ? { type: t.type, subtype: t.subtype } : undefined,
    };
    this.regions.set(index, reply);
    return reply;
  }

  /** VFIO_DEVICE_GET_IRQ_INFO. */
  irqInfo(index: number): VfioIrqInfoReply {
    const buf = VfioIrqInfo.encode({ argsz: VfioIrqInfo.sizeof, flags: 0, index, count: 0 });
    this.proc.ioctl(this.fd, VFIO_DEVICE_GET_IRQ_INFO, buf);
    const r = VfioIrqInfo.decode(buf);
    return { index: r.index, flags: r.flags, count: r.count };
  }

  /** SET_IRQS with eventfds (ACTION_TRIGGER | DATA_EVENTFD); -1 de-assigns a vector. */
  setIrqsEventfd(index: number, start: number, fds: readonly number[]): void {
    const flags = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
    this.proc.ioctl(this.fd, VFIO_DEVICE_SET_IRQS, encodeVfioIrqSet({ flags, index, start, count: fds.length }, fds));
  }

  /** SET_IRQS with DATA_NONE (e.g. trigger with count 0 disables the index; mask/unmask a vector range). */
  setIrqsNone(index: number, start: number, count: number, action: VfioIrqAction): void {
    const flags = ACTION_FLAG[action] | VFIO_IRQ_SET_DATA_NONE;
    this.proc.ioctl(this.fd, VFIO_DEVICE_SET_IRQS, encodeVfioIrqSet({ flags, index, start, count }));
  }

  /** SET_IRQS with DATA_BOOL: one boolean per vector from `start`. */
  setIrqsBool(index: number, start: number, values: readonly boolean[], action: VfioIrqAction): void {
    const flags = ACTION_FLAG[action] | VFIO_IRQ_SET_DATA_BOOL;
    const data = values.map((v) => (v ? 1 : 0));
    this.proc.ioctl(this.fd, VFIO_DEVICE_SET_IRQS, encodeVfioIrqSet({ flags, index, start, count: data.length }, data));
  }

  /** VFIO_DEVICE_RESET. */
  reset(): void {
    this.proc.ioctl(this.fd, VFIO_DEVICE_RESET, 0);
  }

  /** pread of `length` bytes at `offset` within region `index`; returns the bytes read. */
  read(index: number, offset: number, length: number): Uint8Array {
    const buf = new Uint8Array(length);
    const n = this.proc.pread(this.fd, buf, this.regionInfo(index).offset + offset);
    return buf.subarray(0, n);
  }

  /** pwrite of `bytes` at `offset` within region `index`; returns the bytes written. */
  write(index: number, offset: number, bytes: Uint8Array): number {
    return this.proc.pwrite(this.fd, bytes, this.regionInfo(index).offset + offset);
  }

  /** mmap of region `index` (whole region by default) into the process; returns its address. */
  mmap(index: number, offset = 0, length?: number, prot = PROT_READ | PROT_WRITE): Hva {
    const r = this.regionInfo(index);
    const len = length ?? Math.ceil((r.size - offset) / PAGE_SIZE) * PAGE_SIZE;
    return this.proc.mmapFile(this.fd, r.offset + offset, len, prot);
  }

  close(): void {
    this.proc.close(this.fd);
  }
}
