/**
 * VFIO groups: /dev/vfio/<N> (drivers/vfio/group.c). A group is the unit of ownership: the user opens it, puts it in
 * a container, and gets device fds from it.
 *
 * Three kinds (enum vfio_group_type):
 * - 'iommu': an IOMMU group of the host (N is the host's group number). Every PCI function in that host group counts
 *   for viability, registered with vfio or not.
 * - 'emulated': one mediated device whose DMA goes through vfio_pin_pages (vfio_register_emulated_iommu_dev); always
 *   viable.
 * - 'noiommu': a device without an IOMMU group while no-IOMMU mode is enabled; its node is /dev/vfio/noiommu-<N>.
 *
 * Viability (GET_STATUS's VIABLE flag, and SET_CONTAINER's DMA ownership claim): every device of the group is bound
 * to a vfio bus driver (one vfio-core knows, e.g. vfio-pci: Linux's driver_managed_dma) or to no driver. A group in a
 * container reports VIABLE | CONTAINER_SET, as Linux does once it owns the DMA. Not modelled: the claim does not stop
 * a host driver from binding later (Linux refuses that bind with EBUSY).
 *
 * Group fd rules kept from Linux:
 * - A second open while the group is open: EBUSY. Opening after the group was removed: ENODEV.
 * - GET_STATUS: argsz < 8 EINVAL; ENODEV once the group's devices are all gone.
 * - SET_CONTAINER (argument: a pointer to an int fd): EBADF for an fd that is not open, EINVAL if the group already
 *   has a container, ENODEV for a removed group, EBADFD for an fd that is not a container, EPERM mixing no-IOMMU and
 *   real groups, EPERM for a group that is not viable (the message names the device and its driver); if the
 *   container already has a backend the group is attached to it at once (the backend's error fails the call).
 * - UNSET_CONTAINER: EINVAL without a container, EBUSY while a device of the group is open.
 * - GET_DEVICE_FD (argument: a NUL-terminated name): ENODEV for an unknown name (checked first, as Linux does), EINVAL
 *   unless the group is in a container with a backend; the new fd is O_RDWR in the opener's table.
 * - Unknown requests: ENOTTY (MAP_DMA on a group fd, for instance).
 * - Closing the group fd unsets the container. Every open device file holds the group file, so the group is closed
 *   only when the last of the fd and the device files goes.
 *
 * Invariants: `container` set <=> this group is a member of that container and holds one reference on its open file;
 * `deviceUsers` (devices with an open fd) > 0 => container and backend set; a removed group has no container and no
 * devices, and its node is gone.
 */
import { defineTraceEvents, Errno, KernelError, readS32LE, type Tracer } from "../core/index.ts";
import type { Bdf, FileOps, IoctlArg, Iommu, OpenContext, OpenFile, PciBus } from "../host/index.ts";
import { VfioContainer, type VfioContainerMember } from "./container.ts";
import { type VfioDevice, VfioDeviceFile, type VfioDeviceGroup } from "./device-file.ts";
import type { VfioGroupAttachment, VfioGroupType, VfioIommuBackend } from "./driver.ts";
import {
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_GROUP_UNSET_CONTAINER,
  VfioGroupStatus,
  vfioIoctlName,
} from "./uapi/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfio.group.open": { group: number; pid: number };
    "vfio.group.close": { group: number };
    "vfio.group.set_container": { group: number; container: number; attachedToBackend: boolean };
    "vfio.group.unset_container": { group: number; container: number };
  }
}
defineTraceEvents("vfio", {
  "vfio.group.open": "group {group} opened by pid {pid}",
  "vfio.group.close": "group {group} closed",
  "vfio.group.set_container": "group {group} joined container {container} (attached to backend {attachedToBackend})",
  "vfio.group.unset_container": "group {group} left container {container}",
});

/** Linux reads the GET_DEVICE_FD name with strndup_user(arg, PAGE_SIZE). */
const DEVICE_NAME_MAX = 4096;
const OPEN_DEVICE_PATH = "anon_inode:[vfio-device]";

/** What a group needs from vfio-core. */
export interface VfioGroupEnv {
  readonly tracer: Tracer;
  readonly pci: PciBus;
  readonly iommu: Iommu;
  /** True if devices bound to this driver keep their group viable (vfio-pci). */
  isVfioBusDriver(driver: string): boolean;
  /** The bus driver to suggest in messages ("vfio-pci"). */
  suggestedBusDriver(): string;
}

/** A device bound to a driver that makes its group unusable. */
export interface VfioViabilityProblem {
  readonly bdf: string;
  readonly driver: string;
}

export class VfioGroup implements VfioContainerMember, VfioDeviceGroup {
  readonly id: number;
  readonly type: VfioGroupType;
  /** /dev/vfio/<id>, or /dev/vfio/noiommu-<id>. */
  readonly path: string;
  readonly devices = new Map<string, VfioDevice>();
  /** The open group file (opened_file), until its last holder lets go. */
  file: VfioGroupFile | undefined;
  private container_: VfioContainer | undefined;
  private containerFile: OpenFile | undefined;
  /** Devices with at least one open fd (container_users - 1 in Linux). */
  private deviceUsers = 0;
  private removed_ = false;
  readonly attachment: VfioGroupAttachment;

  constructor(
    private readonly env: VfioGroupEnv,
    id: number,
    type: VfioGroupType,
  ) {
    this.id = id;
    this.type = type;
    this.path = type === "noiommu" ? `/dev/vfio/noiommu-${id}` : `/dev/vfio/${id}`;
    const devices = this.devices;
    this.attachment = {
      id,
      type,
      get devices(): readonly string[] {
        return [...devices.keys()];
      },
    };
  }

  get container(): VfioContainer | undefined {
    return this.container_;
  }

  get removed(): boolean {
    return this.removed_;
  }

  /** Devices of this group with an open fd. */
  get openDevices(): number {
    return this.deviceUsers;
  }

  /** The devfs opener: one open at a time. */
  open(ctx: OpenContext): VfioGroupFile {
    if (this.removed_) throw new KernelError(Errno.ENODEV, `group ${this.id} has been removed`);
    if (this.file !== undefined) {
      throw new KernelError(Errno.EBUSY, `group ${this.id} is already open; a group can be opened only once at a time`);
    }
    this.file = new VfioGroupFile(this, ctx);
    if (this.env.tracer.enabled) this.env.tracer.emit("vfio.group.open", { group: this.id, pid: ctx.pid });
    return this.file;
  }

  /** The first device (in bdf order) that makes the group not viable, or undefined when viable. */
  viabilityProblem(): VfioViabilityProblem | undefined {
    if (this.type === "emulated") return undefined;
    const bdfs: string[] = this.type === "iommu" ? this.hostGroupBdfs() : [];
    for (const d of this.devices.values()) if (d.bdf !== undefined && !bdfs.includes(d.bdf)) bdfs.push(d.bdf);
    bdfs.sort();
    for (const bdf of bdfs) {
      const driver = this.env.pci.has(bdf as Bdf) ? this.env.pci.driverOf(bdf as Bdf) : undefined;
      if (driver !== undefined && !this.env.isVfioBusDriver(driver)) return { bdf, driver };
    }
    return undefined;
  }

  /** Every PCI function in the host IOMMU group this group stands for (none if the host group is gone). */
  private hostGroupBdfs(): string[] {
    for (const g of this.env.iommu.groups()) if (g.id === this.id) return g.bdfs();
    return [];
  }

  get viable(): boolean {
    return this.viabilityProblem() === undefined;
  }

  // ---- VfioContainerMember ---------------------------------------------------------------------------------------

  claimDmaOwner(): void {
    const p = this.viabilityProblem();
    if (p !== undefined) {
      throw new KernelError(
        Errno.EPERM,
        `group ${this.id} is not viable: device ${p.bdf} is bound to ${p.driver}; ` +
          `unbind it or bind it to ${this.env.suggestedBusDriver()}`,
        { group: this.id, bdf: p.bdf, driver: p.driver },
      );
    }
  }

  /** The claim above is a check; the model keeps no ownership record that would need releasing. */
  releaseDmaOwner(): void {}

  // ---- VfioDeviceGroup -------------------------------------------------------------------------------------------

  useContainer(device: string): VfioIommuBackend {
    const backend = this.container_?.backend;
    if (backend === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        this.container_ === undefined
          ? `cannot open device ${device}: group ${this.id} is not in a container (VFIO_GROUP_SET_CONTAINER first)`
          : `cannot open device ${device}: container ${this.container_.id} has no IOMMU backend (VFIO_SET_IOMMU first)`,
      );
    }
    this.deviceUsers++;
    this.file!.hold();
    return backend;
  }

  unuseContainer(): void {
    if (this.deviceUsers <= 0) throw new Error(`group ${this.id}: unuse without use`);
    this.deviceUsers--;
    this.file!.put();
  }

  // ---- container membership --------------------------------------------------------------------------------------

  /** VFIO_GROUP_SET_CONTAINER with the container's open file (the caller resolved the fd). */
  setContainer(file: OpenFile): void {
    if (this.container_ !== undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `group ${this.id} is already in container ${this.container_.id}; VFIO_GROUP_UNSET_CONTAINER first`,
      );
    }
    if (this.removed_) throw new KernelError(Errno.ENODEV, `group ${this.id} has been removed`);
    const container = file.ops;
    if (!(container instanceof VfioContainer)) {
      throw new KernelError(Errno.EBADFD, `group ${this.id}: the fd given is a ${file.kind}, not a VFIO container`);
    }
    container.attachGroup(this);
    file.hold();
    this.container_ = container;
    this.containerFile = file;
    if (this.env.tracer.enabled) {
      this.env.tracer.emit("vfio.group.set_container", {
        group: this.id,
        container: container.id,
        attachedToBackend: container.backend !== undefined,
      });
    }
  }

  /** VFIO_GROUP_UNSET_CONTAINER. */
  unsetContainer(): void {
    if (this.container_ === undefined) {
      throw new KernelError(Errno.EINVAL, `group ${this.id} is not in a container`);
    }
    if (this.deviceUsers > 0) {
      throw new KernelError(
        Errno.EBUSY,
        `group ${this.id} has ${this.deviceUsers} open device(s) (${this.openDeviceNames().join(", ")}); close them first`,
      );
    }
    this.detachContainer();
  }

  /** vfio_group_detach_container: used by UNSET_CONTAINER, group close and group removal. */
  detachContainer(): void {
    const container = this.container_!;
    const file = this.containerFile!;
    this.container_ = undefined;
    this.containerFile = undefined;
    try {
      container.detachGroup(this);
    } finally {
      if (this.env.tracer.enabled) {
        this.env.tracer.emit("vfio.group.unset_container", { group: this.id, container: container.id });
      }
      file.drop();
    }
  }

  /** The devices are all gone: the node was removed by vfio-core; leave the container (vfio_device_remove_group). */
  markRemoved(): void {
    this.removed_ = true;
    if (this.container_ !== undefined) this.detachContainer();
  }

  /** The group file's last holder let go (vfio_group_fops_release). */
  fileReleased(): void {
    try {
      if (this.container_ !== undefined) this.detachContainer();
    } finally {
      this.file = undefined;
      if (this.env.tracer.enabled) this.env.tracer.emit("vfio.group.close", { group: this.id });
    }
  }

  openDeviceNames(): string[] {
    const out: string[] = [];
    for (const d of this.devices.values()) if (d.openCount > 0) out.push(d.name);
    return out;
  }

  /** VFIO_GROUP_GET_DEVICE_FD after the name was read. */
  openDevice(name: string, ctx: OpenContext): number {
    const dev = this.devices.get(name);
    if (dev === undefined) {
      const known = [...this.devices.keys()];
      throw new KernelError(
        Errno.ENODEV,
        `group ${this.id} has no device "${name}"` +
          (known.length > 0 ? ` (it has ${known.join(", ")})` : " (it has no devices)"),
      );
    }
    dev.openFile();
    // The device's first open took a hold on the group file (useContainer), kept until its last fd closes. If the
    // fd table is full, installFile drops the file, which closes the device again (Linux reserves the fd first).
    const file = new VfioDeviceFile(dev, ctx, this.env.tracer);
    return ctx.installFile(file, OPEN_DEVICE_PATH);
  }
}

/** The open group file. Its holders: the fd's open file, and every device with an open fd. */
export class VfioGroupFile implements FileOps {
  readonly kind = "vfio-group";
  private refs = 1;

  constructor(
    readonly group: VfioGroup,
    private readonly ctx: OpenContext,
  ) {}

  get released(): boolean {
    return this.refs === 0;
  }

  hold(): void {
    if (this.refs <= 0) throw new Error(`hold on released group file ${this.group.id}`);
    this.refs++;
  }

  put(): void {
    if (this.refs <= 0) throw new Error(`put on released group file ${this.group.id}`);
    this.refs--;
    if (this.refs === 0) this.group.fileReleased();
  }

  ioctl(request: number, arg: IoctlArg): number {
    const g = this.group;
    switch (request) {
      case VFIO_GROUP_GET_STATUS:
        return this.getStatus(arg);
      case VFIO_GROUP_SET_CONTAINER: {
        const fd = this.intArg(arg);
        g.setContainer(this.ctx.resolveFile(fd));
        return 0;
      }
      case VFIO_GROUP_UNSET_CONTAINER:
        g.unsetContainer();
        return 0;
      case VFIO_GROUP_GET_DEVICE_FD:
        return g.openDevice(this.nameArg(arg), this.ctx);
      default:
        throw new KernelError(
          Errno.ENOTTY,
          `${vfioIoctlName(request)} (0x${request.toString(16)}) is not a group ioctl (group ${g.id})`,
        );
    }
  }

  release(): void {
    this.put();
  }

  private getStatus(arg: IoctlArg): number {
    if (typeof arg === "number") {
      throw new KernelError(Errno.EFAULT, "VFIO_GROUP_GET_STATUS takes a pointer to struct vfio_group_status");
    }
    const st = VfioGroupStatus.decodeMin(arg);
    if (st.argsz < VfioGroupStatus.minsz) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_GROUP_GET_STATUS: argsz ${st.argsz} is below the minimum ${VfioGroupStatus.minsz}`,
      );
    }
    const g = this.group;
    if (g.removed) throw new KernelError(Errno.ENODEV, `group ${g.id} has been removed`);
    let flags = 0;
    if (g.container !== undefined) flags = VFIO_GROUP_FLAGS_CONTAINER_SET | VFIO_GROUP_FLAGS_VIABLE;
    else if (g.viable) flags = VFIO_GROUP_FLAGS_VIABLE;
    VfioGroupStatus.set(arg, "flags", flags);
    return 0;
  }

  /** get_user(fd, (int __user *)arg). */
  private intArg(arg: IoctlArg): number {
    if (typeof arg === "number" || arg.length < 4) {
      throw new KernelError(
        Errno.EFAULT,
        "VFIO_GROUP_SET_CONTAINER takes a pointer to an int holding the container fd (a 4-byte buffer)",
      );
    }
    return readS32LE(arg, 0);
  }

  /** strndup_user(arg, PAGE_SIZE). */
  private nameArg(arg: IoctlArg): string {
    if (typeof arg === "number") {
      throw new KernelError(Errno.EFAULT, "VFIO_GROUP_GET_DEVICE_FD takes a pointer to a NUL-terminated device name");
    }
    const limit = Math.min(arg.length, DEVICE_NAME_MAX);
    let end = 0;
    while (end < limit && arg[end] !== 0) end++;
    if (end === limit) {
      throw new KernelError(
        arg.length >= DEVICE_NAME_MAX ? Errno.EINVAL : Errno.EFAULT,
        arg.length >= DEVICE_NAME_MAX
          ? `VFIO_GROUP_GET_DEVICE_FD: the device name is longer than ${DEVICE_NAME_MAX - 1} bytes`
          : "VFIO_GROUP_GET_DEVICE_FD: the device name is not NUL-terminated within the buffer",
      );
    }
    return new TextDecoder().decode(arg.subarray(0, end));
  }
}
