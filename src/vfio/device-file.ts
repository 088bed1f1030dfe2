/**
 * VFIO devices as vfio-core holds them, and the device file a VMM gets from VFIO_GROUP_GET_DEVICE_FD
 * (drivers/vfio/vfio_main.c, plus the decoding that vfio-pci's ioctl handler does in Linux).
 *
 * `VfioDevice` is a registered device (struct vfio_device): its bus driver's `VfioDeviceOps`, its group, and how many
 * device files are open. The first open calls `ops.open(dma)` after taking a use of the group's container (EINVAL
 * without a container and backend) and, for a device with `dmaUnmap`, registering it with the backend for
 * unmap notifications; the last close calls `ops.close()` and undoes both. `dma` is given to emulated-IOMMU devices
 * only: vfio_pin_pages / vfio_unpin_pages / vfio_dma_rw, forwarded to the container's backend, valid until close.
 *
 * `VfioDeviceFile` decodes and validates the device ioctls at the byte level and calls the typed ops:
 * - GET_INFO (minsz 16), GET_REGION_INFO (minsz 32, EINVAL for an index >= num_regions; the offset is index << 40),
 *   GET_IRQ_INFO (minsz 16, EINVAL for an index >= num_irqs): capability chains and the too-small-argsz rule come from
 *   the uapi reply builders (CAPS set, argsz raised, no chain).
 * - SET_IRQS: vfio_set_irqs_validate_and_prepare's checks, all EINVAL and in its order: argsz < 20, index >= num_irqs,
 *   count >= U32_MAX - start, unknown flag bits; start >= the index's count or start + count > it; not exactly one
 *   DATA_* bit; argsz - 20 smaller than the payload. Then the payload is read (EFAULT if the buffer ends first) and the
 *   action decoded: not exactly one ACTION_* bit is ENOTTY, as vfio-pci's vfio_pci_set_irqs_ioctl answers (Linux's
 *   core leaves the action to the bus driver). Eventfds are resolved through the opener's fd table before the device
 *   is called, as eventfd_ctx_fdget does: a closed fd is EBADF, an fd that is not an eventfd EINVAL, a negative fd
 *   de-assigns. A failing SET_IRQS therefore never reaches the device.
 * - RESET: EINVAL unless the device reports VFIO_DEVICE_FLAGS_RESET.
 * - Anything else goes to `ops.ioctl`; without it, ENOTTY (what vfio-pci answers for requests it does not know).
 * - pread/pwrite at offset (index << 40) + off go to regionRead/regionWrite (EINVAL for an index >= num_regions);
 *   mmap goes to regionMmap after the generic checks (page-aligned offset, a region with the MMAP flag, the range
 *   inside the page-rounded region; EINVAL otherwise).
 *
 * Pointer arguments are byte buffers. A buffer shorter than the struct's minsz is EINVAL (core/struct's convention
 * for a short argsz); a reply or payload that would run past the buffer is EFAULT, as copy_to_user/copy_from_user
 * fail on memory that is not there. An integer where a pointer is expected is EFAULT.
 *
 * Not modelled: VFIO_DEVICE_FEATURE decoding (passed to ops.ioctl), runtime PM, KVM association, the request irq that
 * Linux sends when a driver wants a device back.
 *
 * Invariants: `openCount` counts open device files; `ops.open` ran iff openCount > 0; the group's container and
 * backend cannot change while openCount > 0 (UNSET_CONTAINER refuses with EBUSY).
 */
import { defineTraceEvents, Errno, type Iova, KernelError, PAGE_SIZE, type Pfn, type Tracer } from "../core/index.ts";
import { EventFd, type FileMapping, type FileOps, type IoctlArg, type OpenContext } from "../host/index.ts";
import type {
  IrqTrigger,
  VfioCapability,
  VfioDeviceInfo,
  VfioDeviceOps,
  VfioDmaAccess,
  VfioDmaInterposer,
  VfioEmulatedDevice,
  VfioGroupType,
  VfioIommuBackend,
  VfioIrqSetData,
} from "./driver.ts";
import {
  decodeVfioIrqSetData,
  deviceInfoReply,
  infoCap,
  regionInfoReply,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_RESET,
  VFIO_DEVICE_SET_IRQS,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_PCI_REGION_SPAN,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VfioDeviceInfo as VfioDeviceInfoStruct,
  VfioIrqInfo as VfioIrqInfoStruct,
  VfioIrqSet as VfioIrqSetStruct,
  VfioRegionInfo as VfioRegionInfoStruct,
  vfioIoctlName,
  vfioIrqSetDataSize,
  vfioPciIndexToOffset,
} from "./uapi/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfio.device.open": { device: string; group: number; openCount: number; first: boolean };
    "vfio.device.close": { device: string; group: number; openCount: number; last: boolean };
    "vfio.device.set_irqs": {
      device: string;
      index: number;
      start: number;
      count: number;
      action: string;
      data: string;
    };
    "vfio.device.reset": { device: string };
    "vfio.region.read": { device: string; index: number; offset: number; size: number };
    "vfio.region.write": { device: string; index: number; offset: number; size: number };
    "vfio.region.mmap": { device: string; index: number; offset: number; length: number };
  }
}
defineTraceEvents("vfio", {
  "vfio.device.open": "device {device} (group {group}) fd opened, {openCount} open (first {first})",
  "vfio.device.close": "device {device} (group {group}) fd closed, {openCount} open (last {last})",
  "vfio.device.set_irqs": "device {device}: SET_IRQS index {index} [{start}, +{count}) {action} with {data}",
  "vfio.device.reset": "device {device} reset",
  "vfio.region.read": "device {device}: read region {index} offset {offset}, {size} bytes",
  "vfio.region.write": "device {device}: write region {index} offset {offset}, {size} bytes",
  "vfio.region.mmap": "device {device}: mmap region {index} offset {offset}, {length} bytes",
});

/** vfio_pin_pages accepts at most this many pages per call (VFIO_PIN_PAGES_MAX_ENTRIES, include/linux/vfio.h). */
const PIN_PAGES_MAX_ENTRIES = 512;
const U32_MAX = 0xffff_ffff;

/** What a device needs from its group (implemented by VfioGroup). */
export interface VfioDeviceGroup {
  readonly id: number;
  readonly type: VfioGroupType;
  /**
   * vfio_group_use_container: EINVAL unless the group is in a container with a backend; then counts a user and holds
   * the group file, and returns the backend.
   */
  useContainer(device: string): VfioIommuBackend;
  /** vfio_group_unuse_container. */
  unuseContainer(): void;
}

/** A registered device (struct vfio_device). */
export class VfioDevice {
  readonly name: string;
  /** Open device files. */
  openCount = 0;
  /** Regions the device reported at its first open (pread/pwrite/mmap check indices against it). */
  numRegions = 0;
  private backend: VfioIommuBackend | undefined;
  private notifier: VfioEmulatedDevice | undefined;
  private dma: DeviceDmaAccess | undefined;

  constructor(
    readonly ops: VfioDeviceOps,
    readonly group: VfioDeviceGroup,
    readonly bdf: string | undefined,
    private readonly tracer: Tracer,
  ) {
    this.name = ops.name;
  }

  /** A new device file: the first one opens the device (vfio_device_first_open), undone entirely on failure. */
  openFile(): void {
    if (this.openCount === 0) {
      const backend = this.group.useContainer(this.name);
      let notifier: VfioEmulatedDevice | undefined;
      let dma: DeviceDmaAccess | undefined;
      let opened = false;
      try {
        if (this.ops.dmaUnmap !== undefined) {
          const ops = this.ops;
          notifier = { name: this.name, dmaUnmap: (iova, length) => ops.dmaUnmap!(iova, length) };
          backend.registerDevice(notifier);
        }
        if (this.group.type === "emulated") {
          dma = new DeviceDmaAccess(this.name, backend, notifier ?? { name: this.name, dmaUnmap: noUnmap });
        }
        this.ops.open?.(dma);
        opened = true;
        // vfio-pci may add device-specific regions while opening, so the count is read after open.
        this.numRegions = this.ops.info().numRegions;
      } catch (e) {
        try {
          if (opened) this.ops.close?.();
        } finally {
          if (dma) dma.live = false;
          if (notifier) backend.unregisterDevice(notifier);
          this.group.unuseContainer();
        }
        throw e;
      }
      this.backend = backend;
      this.notifier = notifier;
      this.dma = dma;
    }
    this.openCount++;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.device.open", {
        device: this.name,
        group: this.group.id,
        openCount: this.openCount,
        first: this.openCount === 1,
      });
    }
  }

  /** A device file went: the last one closes the device (vfio_device_last_close). */
  closeFile(): void {
    if (this.openCount <= 0) throw new Error(`device ${this.name}: close without open`);
    this.openCount--;
    const last = this.openCount === 0;
    try {
      if (last) {
        try {
          this.ops.close?.();
        } finally {
          if (this.dma) this.dma.live = false;
          if (this.notifier) this.backend!.unregisterDevice(this.notifier);
          this.dma = undefined;
          this.notifier = undefined;
          this.backend = undefined;
          this.group.unuseContainer();
        }
      }
    } finally {
      if (this.tracer.enabled) {
        this.tracer.emit("vfio.device.close", {
          device: this.name,
          group: this.group.id,
          openCount: this.openCount,
          last,
        });
      }
    }
  }

  /**
   * Routes the open device's vfio_dma_rw (and refuses its pins) inside the interposer's memory until removed or the
   * device is closed. EINVAL if the device is not open or not behind an emulated IOMMU; EBUSY if one is installed.
   * Returns the function that removes it.
   */
  setDmaInterposer(i: VfioDmaInterposer): () => void {
    const dma = this.dma;
    if (dma === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `device ${this.name}: DMA interposition needs an open device behind an emulated IOMMU (mdev)`,
      );
    }
    if (dma.interposer !== undefined) {
      throw new KernelError(Errno.EBUSY, `device ${this.name} already has a DMA interposer`);
    }
    dma.interposer = i;
    return () => {
      if (dma.interposer === i) dma.interposer = undefined;
    };
  }
}

function noUnmap(): void {}

/** vfio_pin_pages / vfio_unpin_pages / vfio_dma_rw for one open session of an emulated-IOMMU device. */
class DeviceDmaAccess implements VfioDmaAccess {
  live = true;
  /** Memory served outside the backend (VfioDevice.setDmaInterposer). */
  interposer: VfioDmaInterposer | undefined;
  constructor(
    private readonly name: string,
    private readonly backend: VfioIommuBackend,
    private readonly dev: VfioEmulatedDevice,
  ) {}

  pinPages(iova: Iova, npage: number, prot: number): Pfn[] {
    this.checkLive("vfio_pin_pages");
    if (!Number.isInteger(npage) || npage <= 0) {
      throw new KernelError(Errno.EINVAL, `vfio_pin_pages by ${this.name}: npage ${npage} must be a positive integer`);
    }
    if (npage > PIN_PAGES_MAX_ENTRIES) {
      throw new KernelError(
        Errno.E2BIG,
        `vfio_pin_pages by ${this.name}: ${npage} pages in one call, the limit is ${PIN_PAGES_MAX_ENTRIES}`,
      );
    }
    if (this.interposer?.covers(iova, npage * PAGE_SIZE)) {
      throw new KernelError(
        Errno.EINVAL,
        `vfio_pin_pages by ${this.name} at 0x${iova.toString(16)}: that memory was given without an fd (it can be read and written with vfio_dma_rw, not pinned)`,
      );
    }
    return this.backend.pinPages(this.dev, iova, npage, prot);
  }

  unpinPages(iova: Iova, npage: number): void {
    this.checkLive("vfio_unpin_pages");
    if (!Number.isInteger(npage) || npage <= 0 || npage > PIN_PAGES_MAX_ENTRIES) {
      throw new KernelError(
        Errno.EINVAL,
        `vfio_unpin_pages by ${this.name}: npage ${npage} must be in [1, ${PIN_PAGES_MAX_ENTRIES}]`,
      );
    }
    this.backend.unpinPages(this.dev, iova, npage);
  }

  dmaRw(iova: Iova, buf: Uint8Array, write: boolean): void {
    this.checkLive("vfio_dma_rw");
    if (buf.length === 0) throw new KernelError(Errno.EINVAL, `vfio_dma_rw by ${this.name}: empty buffer`);
    const i = this.interposer;
    if (i?.covers(iova, buf.length)) i.dmaRw(iova, buf, write);
    else this.backend.dmaRw(iova, buf, write);
  }

  private checkLive(what: string): void {
    if (!this.live) {
      throw new KernelError(
        Errno.EINVAL,
        `${what} by ${this.name} after the device was closed: its DMA access is gone`,
      );
    }
  }
}

/** Resolves an ioctl argument that must be a pointer: EFAULT for an integer. */
function pointerArg(arg: IoctlArg, what: string): Uint8Array {
  if (typeof arg === "number") {
    throw new KernelError(
      Errno.EFAULT,
      `${what} takes a pointer to its struct (a byte buffer), not the integer ${arg}`,
    );
  }
  return arg;
}

/** copy_to_user of `reply` to the start of `buf`: EFAULT if the buffer is shorter. */
function copyOut(buf: Uint8Array, reply: Uint8Array, what: string): void {
  if (reply.length > buf.length) {
    throw new KernelError(
      Errno.EFAULT,
      `${what}: the reply is ${reply.length} bytes but the buffer holds ${buf.length} (argsz larger than the buffer)`,
    );
  }
  buf.set(reply);
}

/** Capabilities to bytes (header + body), for the uapi reply builders. */
function capBytes(caps: readonly VfioCapability[] | undefined): Uint8Array[] {
  if (caps === undefined || caps.length === 0) return [];
  return caps.map((c) => infoCap(c.id, c.version, c.body));
}

/** An open device file (the [vfio-device] anon inode). */
export class VfioDeviceFile implements FileOps {
  readonly kind = "vfio-device";
  private closed = false;

  /** `ctx` is the group opener's context: SET_IRQS resolves eventfds through its fd table. */
  constructor(
    readonly device: VfioDevice,
    private readonly ctx: OpenContext,
    private readonly tracer: Tracer,
  ) {}

  ioctl(request: number, arg: IoctlArg): number {
    switch (request) {
      case VFIO_DEVICE_GET_INFO:
        return this.getInfo(pointerArg(arg, "VFIO_DEVICE_GET_INFO"));
      case VFIO_DEVICE_GET_REGION_INFO:
        return this.getRegionInfo(pointerArg(arg, "VFIO_DEVICE_GET_REGION_INFO"));
      case VFIO_DEVICE_GET_IRQ_INFO:
        return this.getIrqInfo(pointerArg(arg, "VFIO_DEVICE_GET_IRQ_INFO"));
      case VFIO_DEVICE_SET_IRQS:
        return this.setIrqs(pointerArg(arg, "VFIO_DEVICE_SET_IRQS"));
      case VFIO_DEVICE_RESET:
        return this.reset();
      default: {
        const ops = this.device.ops;
        if (ops.ioctl === undefined) {
          throw new KernelError(
            Errno.ENOTTY,
            `device ${this.device.name} does not handle ${vfioIoctlName(request, "device")} on a device fd`,
          );
        }
        return ops.ioctl(request, arg);
      }
    }
  }

  read(buf: Uint8Array, offset: number): number {
    const index = this.regionOf(offset, "pread");
    const off = offset % VFIO_PCI_REGION_SPAN;
    const n = this.device.ops.regionRead(index, off, buf);
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.region.read", { device: this.device.name, index, offset: off, size: buf.length });
    }
    return n;
  }

  write(buf: Uint8Array, offset: number): number {
    const index = this.regionOf(offset, "pwrite");
    const off = offset % VFIO_PCI_REGION_SPAN;
    const n = this.device.ops.regionWrite(index, off, buf);
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.region.write", { device: this.device.name, index, offset: off, size: buf.length });
    }
    return n;
  }

  mmap(offset: number, length: number, prot: number): FileMapping {
    const dev = this.device;
    const index = this.regionOf(offset, "mmap");
    const off = offset % VFIO_PCI_REGION_SPAN;
    if (off % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `mmap of ${dev.name}: offset ${off} in region ${index} is not page aligned`);
    }
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new KernelError(Errno.EINVAL, `mmap of ${dev.name}: length ${length} must be a positive integer`);
    }
    if (dev.ops.regionMmap === undefined) {
      throw new KernelError(Errno.EINVAL, `device ${dev.name} does not support mmap`);
    }
    const r = dev.ops.regionInfo(index);
    if ((r.flags & VFIO_REGION_INFO_FLAG_MMAP) === 0) {
      throw new KernelError(Errno.EINVAL, `region ${index} of ${dev.name} cannot be mmapped (no MMAP flag)`);
    }
    const limit = Math.ceil(r.size / PAGE_SIZE) * PAGE_SIZE;
    if (off + length > limit) {
      throw new KernelError(
        Errno.EINVAL,
        `mmap of ${dev.name} region ${index}: [${off}, ${off + length}) runs past the region's ${r.size} bytes`,
      );
    }
    const m = dev.ops.regionMmap(index, off, length, prot);
    if (this.tracer.enabled) this.tracer.emit("vfio.region.mmap", { device: dev.name, index, offset: off, length });
    return m;
  }

  release(): void {
    if (this.closed) return;
    this.closed = true;
    this.device.closeFile();
  }

  // ---- ioctls --------------------------------------------------------------------------------------------------------

  private getInfo(buf: Uint8Array): number {
    const hdr = VfioDeviceInfoStruct.decodeMin(buf);
    if (hdr.argsz < VfioDeviceInfoStruct.minsz) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_DEVICE_GET_INFO: argsz ${hdr.argsz} is below the minimum ${VfioDeviceInfoStruct.minsz}`,
      );
    }
    const info = this.device.ops.info() as VfioDeviceInfo;
    const reply = deviceInfoReply(
      {
        flags: (info.flags & ~VFIO_DEVICE_FLAGS_CAPS) >>> 0,
        num_regions: info.numRegions,
        num_irqs: info.numIrqs,
      },
      capBytes(info.caps),
      hdr.argsz,
    );
    copyOut(buf, reply, "VFIO_DEVICE_GET_INFO");
    return 0;
  }

  private getRegionInfo(buf: Uint8Array): number {
    const hdr = VfioRegionInfoStruct.decodeMin(buf);
    if (hdr.argsz < VfioRegionInfoStruct.minsz) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_DEVICE_GET_REGION_INFO: argsz ${hdr.argsz} is below the minimum ${VfioRegionInfoStruct.minsz}`,
      );
    }
    const num = this.device.ops.info().numRegions;
    if (hdr.index >= num) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_DEVICE_GET_REGION_INFO: region index ${hdr.index} is out of range: ${this.device.name} has ${num} regions`,
      );
    }
    const r = this.device.ops.regionInfo(hdr.index);
    const reply = regionInfoReply(
      {
        flags: (r.flags & ~VFIO_REGION_INFO_FLAG_CAPS) >>> 0,
        index: hdr.index,
        size: r.size,
        offset: vfioPciIndexToOffset(hdr.index),
      },
      capBytes(r.caps),
      hdr.argsz,
    );
    copyOut(buf, reply, "VFIO_DEVICE_GET_REGION_INFO");
    return 0;
  }

  private getIrqInfo(buf: Uint8Array): number {
    const hdr = VfioIrqInfoStruct.decodeMin(buf);
    const num = hdr.argsz < VfioIrqInfoStruct.minsz ? 0 : this.device.ops.info().numIrqs;
    if (hdr.argsz < VfioIrqInfoStruct.minsz || hdr.index >= num) {
      throw new KernelError(
        Errno.EINVAL,
        hdr.argsz < VfioIrqInfoStruct.minsz
          ? `VFIO_DEVICE_GET_IRQ_INFO: argsz ${hdr.argsz} is below the minimum ${VfioIrqInfoStruct.minsz}`
          : `VFIO_DEVICE_GET_IRQ_INFO: irq index ${hdr.index} is out of range: ${this.device.name} has ${num} irq indices`,
      );
    }
    const r = this.device.ops.irqInfo(hdr.index);
    const reply = VfioIrqInfoStruct.encode({ argsz: hdr.argsz, flags: r.flags, index: hdr.index, count: r.count });
    copyOut(buf, reply, "VFIO_DEVICE_GET_IRQ_INFO");
    return 0;
  }

  /** vfio_set_irqs_validate_and_prepare, the payload copy, the action decode, then the device. */
  private setIrqs(buf: Uint8Array): number {
    const minsz = VfioIrqSetStruct.minsz;
    const hdr = VfioIrqSetStruct.decodeMin(buf);
    const dev = this.device;
    const fail = (why: string): never => {
      throw new KernelError(Errno.EINVAL, `VFIO_DEVICE_SET_IRQS on ${dev.name}: ${why}`);
    };
    if (hdr.argsz < minsz) fail(`argsz ${hdr.argsz} is below the minimum ${minsz}`);
    const maxIndex = dev.ops.info().numIrqs;
    if (hdr.index >= maxIndex) fail(`irq index ${hdr.index} is out of range: the device has ${maxIndex} irq indices`);
    if (hdr.count >= U32_MAX - hdr.start) fail(`start ${hdr.start} + count ${hdr.count} overflows a u32`);
    const known = VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK;
    if ((hdr.flags & ~known) !== 0) fail(`unknown flag bits 0x${((hdr.flags & ~known) >>> 0).toString(16)}`);
    const vectors = dev.ops.irqInfo(hdr.index).count;
    if (hdr.start >= vectors || hdr.start + hdr.count > vectors) {
      fail(`vectors [${hdr.start}, ${hdr.start + hdr.count}) do not fit irq index ${hdr.index}'s ${vectors}`);
    }
    const size = vfioIrqSetDataSize(hdr.flags, hdr.count);
    if (hdr.argsz - minsz < size) fail(`argsz ${hdr.argsz} leaves ${hdr.argsz - minsz} payload bytes, ${size} needed`);
    if (buf.length < minsz + size) {
      throw new KernelError(
        Errno.EFAULT,
        `VFIO_DEVICE_SET_IRQS on ${dev.name}: the ${size}-byte payload runs past the ${buf.length}-byte buffer`,
      );
    }
    let action: "mask" | "unmask" | "trigger";
    switch (hdr.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK) {
      case VFIO_IRQ_SET_ACTION_MASK:
        action = "mask";
        break;
      case VFIO_IRQ_SET_ACTION_UNMASK:
        action = "unmask";
        break;
      case VFIO_IRQ_SET_ACTION_TRIGGER:
        action = "trigger";
        break;
      default:
        throw new KernelError(
          Errno.ENOTTY,
          `VFIO_DEVICE_SET_IRQS on ${dev.name}: flags 0x${hdr.flags.toString(16)} must carry exactly one of ` +
            "ACTION_MASK, ACTION_UNMASK, ACTION_TRIGGER",
        );
    }
    const values = decodeVfioIrqSetData(buf, hdr);
    let data: VfioIrqSetData;
    switch (hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
      case VFIO_IRQ_SET_DATA_NONE:
        data = { kind: "none" };
        break;
      case VFIO_IRQ_SET_DATA_BOOL:
        data = { kind: "bool", values: values.map((v) => v !== 0) };
        break;
      case VFIO_IRQ_SET_DATA_EVENTFD:
        data = { kind: "eventfd", triggers: values.map((fd) => this.eventfd(fd)) };
        break;
      default:
        throw new Error("unreachable: vfioIrqSetDataSize accepted the data type");
    }
    dev.ops.setIrqs({ action, index: hdr.index, start: hdr.start, count: hdr.count, data });
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.device.set_irqs", {
        device: dev.name,
        index: hdr.index,
        start: hdr.start,
        count: hdr.count,
        action,
        data:
          data.kind === "eventfd"
            ? `eventfds [${values.join(", ")}]`
            : data.kind === "bool"
              ? `bools [${values.join(", ")}]`
              : "none",
      });
    }
    return 0;
  }

  /** eventfd_ctx_fdget: EBADF for a closed fd, EINVAL for a file that is not an eventfd; negative de-assigns. */
  private eventfd(fd: number): IrqTrigger | null {
    if (fd < 0) return null;
    const file = this.ctx.resolveFile(fd);
    if (!(file.ops instanceof EventFd)) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_DEVICE_SET_IRQS on ${this.device.name}: fd ${fd} is a ${file.kind}, not an eventfd`,
      );
    }
    return file.ops;
  }

  private reset(): number {
    const dev = this.device;
    if ((dev.ops.info().flags & VFIO_DEVICE_FLAGS_RESET) === 0) {
      throw new KernelError(Errno.EINVAL, `device ${dev.name} does not support reset (no VFIO_DEVICE_FLAGS_RESET)`);
    }
    dev.ops.reset();
    if (this.tracer.enabled) this.tracer.emit("vfio.device.reset", { device: dev.name });
    return 0;
  }

  /** The region an fd offset falls in: EINVAL for a bad offset or an index past the device's regions. */
  private regionOf(offset: number, what: string): number {
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new KernelError(
        Errno.EINVAL,
        `${what} of ${this.device.name}: offset ${offset} is not a valid file offset`,
      );
    }
    const index = Math.floor(offset / VFIO_PCI_REGION_SPAN);
    if (index >= this.device.numRegions) {
      throw new KernelError(
        Errno.EINVAL,
        `${what} of ${this.device.name}: offset 0x${offset.toString(16)} is region ${index}, ` +
          `but the device has ${this.device.numRegions} regions (offset = index << 40)`,
      );
    }
    return index;
  }
}
