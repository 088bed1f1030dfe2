/**
 * vfio-core: the registry behind /dev/vfio (drivers/vfio/vfio_main.c, group.c, container.c).
 *
 * It keeps the registered IOMMU drivers (type1, vfio-noiommu), the vfio bus drivers whose devices keep a group viable
 * (vfio-pci), the groups and the devices in them, and the live containers. It creates /dev/vfio/vfio (each open is a
 * new container) and one node per group, removed when the group's last device goes.
 *
 * Where groups come from:
 * - `registerDevice(ops, { type: "iommu", bdf })` (vfio_register_group_dev): the device joins the vfio group of its
 *   host IOMMU group, created on first use with the host's number. A device the host IOMMU does not cover (or a host
 *   whose IOMMU is disabled) gets a fresh no-IOMMU group when the `noiommu` option (enable_unsafe_noiommu_mode) is on,
 *   and EINVAL otherwise, as vfio_group_find_or_alloc decides.
 * - `registerEmulatedDevice(ops)` (vfio_register_emulated_iommu_dev): a fresh 'emulated' group holding just that
 *   device (an mdev).
 * Fresh groups take their number from the host IOMMU's group allocator (`Iommu.allocGroupId`, Linux's
 * iommu_group_alloc), so they never collide with device groups, and give it back when they empty.
 *
 * `unregisterDevice(name)` refuses with EBUSY while the device has open fds: Linux blocks the unbinding process and
 * sends the user a request irq until the fds are closed; a deterministic model refuses instead and says so.
 *
 * The no-IOMMU driver is always registered (as with CONFIG_VFIO_NOIOMMU); it answers only when the `noiommu` option
 * is on.
 *
 * Invariants (checked by `checkInvariants`): a group is in the registry iff it has devices; its node exists iff it is
 * in the registry; group.container set <=> the container lists the group; a container with a backend has groups;
 * devices with open fds are only in groups whose container has a backend.
 */
import { defineTraceEvents, Errno, KernelError, type Tracer } from "../core/index.ts";
import type { Bdf, Devfs, Iommu, OpenContext, PciBus } from "../host/index.ts";
import { VfioContainer, type VfioContainerEnv } from "./container.ts";
import { VfioDevice } from "./device-file.ts";
import type { VfioDeviceOps, VfioGroupType, VfioIommuDriver } from "./driver.ts";
import { VfioGroup, type VfioGroupEnv } from "./group.ts";
import { isNoiommuDriver, noiommuDriver } from "./noiommu.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfio.iommu_driver.register": { driver: string };
    "vfio.iommu_driver.unregister": { driver: string };
    "vfio.group.add": { group: number; type: string; path: string };
    "vfio.group.remove": { group: number; type: string; path: string };
    "vfio.device.register": { device: string; group: number; type: string };
    "vfio.device.unregister": { device: string; group: number };
  }
}
defineTraceEvents("vfio", {
  "vfio.iommu_driver.register": "IOMMU driver {driver} registered",
  "vfio.iommu_driver.unregister": "IOMMU driver {driver} unregistered",
  "vfio.group.add": "{type} group {group} created ({path})",
  "vfio.group.remove": "{type} group {group} removed ({path})",
  "vfio.device.register": "device {device} registered in {type} group {group}",
  "vfio.device.unregister": "device {device} unregistered from group {group}",
});

/** The container node. */
export const VFIO_CONTAINER_PATH = "/dev/vfio/vfio";

export interface VfioCoreOptions {
  readonly devfs: Devfs;
  readonly pci: PciBus;
  readonly iommu: Iommu;
  readonly tracer: Tracer;
  /** enable_unsafe_noiommu_mode: devices without an IOMMU group get a no-IOMMU group. Default false. */
  readonly noiommu?: boolean;
}

/** How a physical device joins vfio (vfio_register_group_dev). */
export interface VfioIommuDeviceRegistration {
  readonly type: "iommu";
  readonly bdf: Bdf;
}

export interface VfioDeviceState {
  readonly name: string;
  readonly bdf: string | undefined;
  readonly group: number;
  /** Open device fds. */
  readonly openCount: number;
}

export interface VfioGroupState {
  readonly id: number;
  readonly type: VfioGroupType;
  readonly path: string;
  readonly devices: readonly VfioDeviceState[];
  /** The group node is open (by its fd or by open device files). */
  readonly open: boolean;
  readonly container: number | undefined;
  readonly viable: boolean;
}

export interface VfioContainerState {
  readonly id: number;
  /** The IOMMU driver selected by SET_IOMMU, if any. */
  readonly driver: string | undefined;
  /** Attached groups, most recent first. */
  readonly groups: readonly number[];
  readonly noiommu: boolean;
}

export interface VfioCoreState {
  readonly iommuDrivers: readonly string[];
  readonly busDrivers: readonly string[];
  readonly groups: readonly VfioGroupState[];
  readonly containers: readonly VfioContainerState[];
}

export class VfioCore {
  readonly noiommuEnabled: boolean;
  private readonly devfs: Devfs;
  private readonly pci: PciBus;
  private readonly iommu: Iommu;
  private readonly tracer: Tracer;
  /** Most recently registered first (Linux's list_add at the head). */
  private readonly drivers: VfioIommuDriver[] = [];
  private readonly busDrivers: string[] = [];
  private readonly groupsById = new Map<number, VfioGroup>();
  private readonly devicesByName = new Map<string, VfioDevice>();
  private readonly containers = new Set<VfioContainer>();
  private nextContainerId = 1;
  private readonly containerEnv: VfioContainerEnv;
  private readonly groupEnv: VfioGroupEnv;

  constructor(opts: VfioCoreOptions) {
    this.devfs = opts.devfs;
    this.pci = opts.pci;
    this.iommu = opts.iommu;
    this.tracer = opts.tracer;
    this.noiommuEnabled = opts.noiommu === true;
    this.containerEnv = {
      tracer: this.tracer,
      iommuDrivers: () => this.drivers,
      isNoiommuDriver,
      containerReleased: (c) => {
        this.containers.delete(c);
      },
    };
    this.groupEnv = {
      tracer: this.tracer,
      pci: this.pci,
      iommu: this.iommu,
      isVfioBusDriver: (d) => this.busDrivers.includes(d),
      suggestedBusDriver: () => this.busDrivers[0] ?? "vfio-pci",
    };
    this.devfs.register(VFIO_CONTAINER_PATH, (ctx: OpenContext) => {
      const c = new VfioContainer(this.containerEnv, this.nextContainerId++, ctx.mm, ctx.pid);
      this.containers.add(c);
      return c;
    });
    const enabled = this.noiommuEnabled;
    this.registerIommuDriver(noiommuDriver({ enabled }));
  }

  // ---- IOMMU drivers ---------------------------------------------------------------------------------------------

  /** vfio_register_iommu_driver: EINVAL for a driver (or a name) already registered. */
  registerIommuDriver(driver: VfioIommuDriver): void {
    for (const d of this.drivers) {
      if (d === driver || d.name === driver.name) {
        throw new KernelError(Errno.EINVAL, `IOMMU driver ${driver.name} is already registered`);
      }
    }
    this.drivers.unshift(driver);
    if (this.tracer.enabled) this.tracer.emit("vfio.iommu_driver.register", { driver: driver.name });
  }

  /** vfio_unregister_iommu_driver: EBUSY while a container uses it (Linux holds a module reference). */
  unregisterIommuDriver(name: string): void {
    const i = this.drivers.findIndex((d) => d.name === name);
    if (i < 0) throw new KernelError(Errno.ENOENT, `IOMMU driver ${name} is not registered`);
    const driver = this.drivers[i]!;
    for (const c of this.containers) {
      if (c.driver === driver) {
        throw new KernelError(Errno.EBUSY, `IOMMU driver ${name} is in use by container ${c.id}`);
      }
    }
    this.drivers.splice(i, 1);
    if (this.tracer.enabled) this.tracer.emit("vfio.iommu_driver.unregister", { driver: name });
  }

  /** Registered IOMMU drivers, in the order CHECK_EXTENSION and SET_IOMMU try them. */
  iommuDrivers(): readonly VfioIommuDriver[] {
    return [...this.drivers];
  }

  // ---- bus drivers -----------------------------------------------------------------------------------------------

  /**
   * Declares a PCI driver that hands its devices to vfio (vfio-pci): a device bound to it keeps its group viable
   * (Linux: driver_managed_dma). Registering twice is harmless.
   */
  registerBusDriver(name: string): void {
    if (!this.busDrivers.includes(name)) this.busDrivers.push(name);
  }

  isVfioBusDriver(name: string): boolean {
    return this.busDrivers.includes(name);
  }

  // ---- devices ---------------------------------------------------------------------------------------------------

  /** vfio_register_group_dev: returns the group number (/dev/vfio/<n>, or noiommu-<n>). */
  registerDevice(ops: VfioDeviceOps, reg: VfioIommuDeviceRegistration): number {
    if (reg.type !== "iommu") {
      throw new KernelError(Errno.EINVAL, `registerDevice: unknown registration type ${String(reg.type)}`);
    }
    this.checkNewName(ops.name);
    const bdf = reg.bdf;
    let group: VfioGroup;
    if (this.iommu.enabled && this.iommu.hasDevice(bdf)) {
      const id = this.iommu.groupOf(bdf);
      const existing = this.groupsById.get(id);
      if (existing !== undefined && existing.type !== "iommu") {
        throw new KernelError(
          Errno.EEXIST,
          `host IOMMU group ${id} of ${bdf} has the number vfio gave ${existing.type} group ${id} ` +
            `(the host added the group afterwards); unregister ${[...existing.devices.keys()].join(", ")} first`,
        );
      }
      group = existing ?? this.addGroup(id, "iommu");
    } else if (this.noiommuEnabled) {
      group = this.addGroup(this.allocGroupId(), "noiommu");
    } else {
      throw new KernelError(
        Errno.EINVAL,
        `device ${bdf} has no IOMMU group (${this.iommu.enabled ? "it is not behind the IOMMU" : "the host IOMMU is disabled"}); ` +
          "vfio needs IOMMU isolation unless no-IOMMU mode is enabled (unsafe)",
      );
    }
    this.addDevice(group, new VfioDevice(ops, group, bdf, this.tracer));
    return group.id;
  }

  /** vfio_register_emulated_iommu_dev: a fresh 'emulated' group holding just this device. Returns its number. */
  registerEmulatedDevice(ops: VfioDeviceOps): number {
    this.checkNewName(ops.name);
    const group = this.addGroup(this.allocGroupId(), "emulated");
    this.addDevice(group, new VfioDevice(ops, group, undefined, this.tracer));
    return group.id;
  }

  /**
   * vfio_unregister_group_dev. EBUSY while the device has open fds (Linux would block and send a request irq);
   * ENODEV for an unknown name. The group goes with its last device: its node is removed and it leaves its container.
   */
  unregisterDevice(name: string): void {
    const dev = this.devicesByName.get(name);
    if (dev === undefined) throw new KernelError(Errno.ENODEV, `no vfio device named ${name}`);
    if (dev.openCount > 0) {
      throw new KernelError(
        Errno.EBUSY,
        `device ${name} has ${dev.openCount} open fd(s); the user must close them before the device can go ` +
          "(Linux would block here and send the user a request)",
      );
    }
    const group = this.groupsById.get(dev.group.id)!;
    group.devices.delete(name);
    this.devicesByName.delete(name);
    if (this.tracer.enabled) this.tracer.emit("vfio.device.unregister", { device: name, group: group.id });
    if (group.devices.size === 0) {
      this.groupsById.delete(group.id);
      if (group.type !== "iommu") this.iommu.freeGroupId(group.id);
      this.devfs.unregister(group.path);
      group.markRemoved();
      if (this.tracer.enabled) {
        this.tracer.emit("vfio.group.remove", { group: group.id, type: group.type, path: group.path });
      }
    }
  }

  /** The group number of a registered device; ENODEV if unknown. */
  groupOfDevice(name: string): number {
    const dev = this.devicesByName.get(name);
    if (dev === undefined) throw new KernelError(Errno.ENODEV, `no vfio device named ${name}`);
    return dev.group.id;
  }

  /** The node path of group `id` (/dev/vfio/<id> or /dev/vfio/noiommu-<id>); ENOENT if there is no such group. */
  groupPath(id: number): string {
    const g = this.groupsById.get(id);
    if (g === undefined) throw new KernelError(Errno.ENOENT, `no vfio group ${id}`);
    return g.path;
  }

  // ---- inspection ------------------------------------------------------------------------------------------------

  /** A snapshot of every group, device and live container (for tests, reports and the dashboard). */
  inspect(): VfioCoreState {
    const groups = [...this.groupsById.values()]
      .sort((a, b) => a.id - b.id)
      .map(
        (g): VfioGroupState => ({
          id: g.id,
          type: g.type,
          path: g.path,
          devices: [...g.devices.values()].map((d) => ({
            name: d.name,
            bdf: d.bdf,
            group: g.id,
            openCount: d.openCount,
          })),
          open: g.file !== undefined,
          container: g.container?.id,
          viable: g.viable,
        }),
      );
    const containers = [...this.containers]
      .sort((a, b) => a.id - b.id)
      .map(
        (c): VfioContainerState => ({
          id: c.id,
          driver: c.driver?.name,
          groups: c.groupIds(),
          noiommu: c.noiommu,
        }),
      );
    return {
      iommuDrivers: this.drivers.map((d) => d.name),
      busDrivers: [...this.busDrivers],
      groups,
      containers,
    };
  }

  /** Throws an Error naming every broken invariant (see the module comment). For tests and the invariant checker. */
  checkInvariants(): void {
    const bad: string[] = [];
    for (const g of this.groupsById.values()) {
      if (g.devices.size === 0) bad.push(`group ${g.id} is registered with no devices`);
      if (!this.devfs.exists(g.path)) bad.push(`group ${g.id} has no node ${g.path}`);
      if (g.removed) bad.push(`group ${g.id} is registered but marked removed`);
      const c = g.container;
      if (c !== undefined) {
        if (!c.groupIds().includes(g.id)) bad.push(`group ${g.id} names container ${c.id}, which does not list it`);
        if (c.released) bad.push(`group ${g.id} is in released container ${c.id}`);
        if (g.file === undefined) bad.push(`group ${g.id} is in container ${c.id} without being open`);
      }
      let open = 0;
      for (const d of g.devices.values()) {
        if (d.openCount < 0) bad.push(`device ${d.name} has a negative open count`);
        if (d.openCount > 0) open++;
        if (this.devicesByName.get(d.name) !== d) bad.push(`device ${d.name} is not in the name registry`);
      }
      if (open !== g.openDevices) bad.push(`group ${g.id} counts ${g.openDevices} open devices, ${open} are open`);
      if (open > 0 && c?.backend === undefined) bad.push(`group ${g.id} has open devices but no container backend`);
      if (open > 0 && g.file === undefined) bad.push(`group ${g.id} has open devices but its file is closed`);
    }
    for (const c of this.containers) {
      if (c.released) bad.push(`container ${c.id} is released but still registered`);
      if (c.backend !== undefined && c.groupCount === 0) bad.push(`container ${c.id} has a backend and no groups`);
      for (const id of c.groupIds()) {
        const g = this.groupsById.get(id);
        if (g === undefined || g.container !== c) bad.push(`container ${c.id} lists group ${id}, which is not in it`);
      }
    }
    if (bad.length > 0) throw new Error(`vfio-core invariants broken:\n- ${bad.join("\n- ")}`);
  }

  // ---- internals -------------------------------------------------------------------------------------------------

  private checkNewName(name: string): void {
    if (name.length === 0) throw new KernelError(Errno.EINVAL, "a vfio device needs a non-empty name");
    const other = this.devicesByName.get(name);
    if (other !== undefined) {
      throw new KernelError(
        Errno.EEXIST,
        `a vfio device named ${name} is already registered (group ${other.group.id})`,
      );
    }
  }

  private addGroup(id: number, type: VfioGroupType): VfioGroup {
    const group = new VfioGroup(this.groupEnv, id, type);
    this.devfs.register(group.path, (ctx) => group.open(ctx));
    this.groupsById.set(id, group);
    if (this.tracer.enabled) this.tracer.emit("vfio.group.add", { group: id, type, path: group.path });
    return group;
  }

  private addDevice(group: VfioGroup, dev: VfioDevice): void {
    group.devices.set(dev.name, dev);
    this.devicesByName.set(dev.name, dev);
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.device.register", { device: dev.name, group: group.id, type: group.type });
    }
  }

  /** A number from the host IOMMU's group allocator, so vfio-only groups never collide with device groups. */
  private allocGroupId(): number {
    return this.iommu.allocGroupId();
  }
}
