/**
 * The mdev core (drivers/vfio/mdev/mdev_core.c, mdev_driver.c): parents register a table of types; users create a
 * mediated device by writing a UUID into a type's `create` file (or through the typed API beside it), and remove it by
 * writing 1 into its `remove` file. Each device is probed by its parent driver, registered with vfio-core as an
 * emulated-IOMMU device in a fresh IOMMU group, and shown in sysfs.
 *
 * sysfs layout (Linux's, with parents placed as stated):
 * ```
 * /sys/class/mdev_bus/<parent>                   -> the parent's device directory (relative link)
 * <parent dir>/mdev_supported_types/<driver>-<id>/{create,name,description,device_api,available_instances,devices/}
 * <parent dir>/mdev_supported_types/<type>/devices/<uuid> -> the device directory
 * <parent dir>/<uuid>/                           the device: remove, mdev_type -> type dir, iommu_group -> group,
 *                                                vendor attributes (MdevDeviceInstance.attributes)
 * /sys/bus/mdev/devices/<uuid>                   -> <parent dir>/<uuid>
 * /sys/kernel/iommu_groups/<N>/{devices/<uuid>, reserved_regions (empty), type ("unknown": no default domain)}
 * ```
 * A parent whose name is a PCI device in sysfs (/sys/bus/pci/devices/<bdf>) uses that device's real directory, as
 * GVT-g's 0000:00:02.0 does; any other parent (mtty) gets /sys/devices/virtual/<driver>/<parent>, as a class device.
 * Links are relative, as Linux writes them: QEMU takes the group number from the basename of
 * readlink(<dev>/iommu_group), and realpath of it is /sys/kernel/iommu_groups/<N>.
 *
 * Create, in Linux's order: UUID syntax (EINVAL); a device with that UUID under any parent (EEXIST); the parent being
 * unregistered (ENODEV); the type no longer offered or `availability` at 0 (ENOSPC with the parent's reason; Linux
 * leaves the check to the driver's probe, which returns ENOSPC, so the outcome is the same and the reason uniform);
 * then the driver's `create` (its errors propagate), vfio-core registration, and the sysfs nodes. A failure undoes
 * every earlier step.
 *
 * Remove: the device is unregistered from vfio-core first. While a user holds its device fd Linux blocks the remover
 * (and sends the user a request irq) until the fd is closed; a deterministic model cannot wait, so remove fails with
 * EBUSY and a sentence naming the open fds, and nothing changes. Then the sysfs nodes go and the driver's `destroy`
 * runs. A device being removed cannot be removed again (EAGAIN, as Linux's !mdev->active).
 *
 * Unregistering a parent removes its devices, as mdev_unregister_parent does; if any is open it fails with EBUSY
 * before touching anything (Linux would block).
 *
 * A parent's type list is read again before every sysfs access (a sysfs refresher), so a type the parent stops
 * offering disappears from mdev_supported_types; one that still has devices stays (its devices' mdev_type links must
 * resolve) but accepts no create.
 *
 * Not modelled: the mdev bus's `driver`, `subsystem`, `uevent` and `power/` nodes, /sys/bus/mdev/drivers/<name>
 * (the directory exists, empty), uevents, the parent-wide `available_instances` counter (EUSERS) that drivers without
 * a get_available hook use, and iommufd.
 *
 * Invariants (`checkInvariants`): every device is in its parent's and its type's sets and vice versa; each device's
 * sysfs nodes (bus link, type link, device dir, group dir) exist; every parent's class link and type dirs exist.
 */
import { defineTraceEvents, Errno, isKernelError, KernelError, type Tracer } from "../core/index.ts";
import { IOMMU_GROUPS_DIR, isBdf, relativeLinkTarget, type Sysfs } from "../host/index.ts";
import type { VfioDeviceOps } from "../vfio/index.ts";
import type { MdevAvailability, MdevDeviceInstance, MdevParentDriver, MdevTypeSpec } from "./driver.ts";
import {
  addDeviceFiles,
  addTypeFiles,
  checkVendorAttributeName,
  MDEV_BUS_DEVICES_DIR,
  MDEV_CLASS_DIR,
  MDEV_SUPPORTED_TYPES,
  mdevTypeDirName,
  parseCreateWrite,
} from "./sysfs.ts";
import { parseUuid, printable } from "./uuid.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "mdev.parent.register": { parent: string; driver: string; types: readonly string[] };
    "mdev.parent.unregister": { parent: string; driver: string; removed: readonly string[] };
    "mdev.types.change": { parent: string; added: readonly string[]; removed: readonly string[] };
    "mdev.create": { uuid: string; parent: string; type: string; group: number };
    "mdev.create.fail": { uuid: string; parent: string; type: string; errno: number; code: string; reason: string };
    "mdev.remove": { uuid: string; parent: string; type: string; group: number };
    "mdev.remove.fail": { uuid: string; errno: number; code: string; reason: string };
  }
}
defineTraceEvents("mdev", {
  "mdev.parent.register": "parent {parent} (driver {driver}) registered with types {types}",
  "mdev.parent.unregister": "parent {parent} (driver {driver}) unregistered; removed devices {removed}",
  "mdev.types.change": "parent {parent} now offers types +{added} -{removed}",
  "mdev.create": "mdev {uuid} created on {parent} as {type} in IOMMU group {group}",
  "mdev.create.fail": "creating mdev {uuid} on {parent} as {type} failed: {code}: {reason}",
  "mdev.remove": "mdev {uuid} ({type} on {parent}, group {group}) removed",
  "mdev.remove.fail": "removing mdev {uuid} failed: {code}: {reason}",
});

/** What the mdev core needs from vfio-core (VfioCore satisfies it). */
export interface MdevVfioRegistry {
  /** vfio_register_emulated_iommu_dev: returns the new IOMMU group number. */
  registerEmulatedDevice(ops: VfioDeviceOps): number;
  /** EBUSY while the device has open fds. */
  unregisterDevice(name: string): void;
  /** For the open-fd check before a parent goes. */
  inspect(): {
    readonly groups: readonly { readonly devices: readonly { readonly name: string; readonly openCount: number }[] }[];
  };
}

export interface MdevCoreOptions {
  readonly sysfs: Sysfs;
  readonly vfio: MdevVfioRegistry;
  readonly tracer: Tracer;
}

export interface MdevParentInfo {
  readonly name: string;
  readonly driver: string;
  /** The parent's device directory. */
  readonly sysfsPath: string;
  /** Type directory names ("mtty-1") listed now. */
  readonly types: readonly string[];
  readonly devices: readonly string[];
}

export interface MdevTypeInfo {
  /** The sysfs directory name, `<driver>-<id>` (mdevctl's type). */
  readonly type: string;
  /** The id in the parent driver's table. */
  readonly typeId: string;
  readonly parent: string;
  readonly name: string;
  readonly description: string;
  readonly deviceApi: string;
  readonly availableInstances: number;
  /** The parent's reason when few or none are left. */
  readonly reason?: string;
  /** UUIDs of the devices of this type. */
  readonly devices: readonly string[];
  /** False when the parent no longer offers the type and it is listed only for its existing devices. */
  readonly offered: boolean;
  readonly sysfsPath: string;
}

export interface MdevDeviceInfo {
  readonly uuid: string;
  readonly parent: string;
  /** `<driver>-<id>` */
  readonly type: string;
  readonly typeId: string;
  /** IOMMU group number: /dev/vfio/<group>. */
  readonly group: number;
  /** The device directory (realpath of /sys/bus/mdev/devices/<uuid>). */
  readonly sysfsPath: string;
  /** The parent's vendor driver. */
  readonly driver: string;
  /** Vendor attribute names (paths relative to the device directory). */
  readonly attributes: readonly string[];
}

interface TypeState {
  readonly spec: MdevTypeSpec;
  readonly dirName: string;
  readonly dir: string;
  readonly devices: Set<string>;
  offered: boolean;
}

interface ParentState {
  readonly driver: MdevParentDriver;
  readonly name: string;
  readonly dir: string;
  /** We made the (virtual) device directory and remove it with the parent. */
  readonly ownsDir: boolean;
  readonly types: Map<string, TypeState>;
  readonly devices: Set<string>;
  removing: boolean;
}

interface DeviceState {
  readonly uuid: string;
  readonly parent: ParentState;
  readonly type: TypeState;
  readonly instance: MdevDeviceInstance;
  readonly group: number;
  readonly dir: string;
  readonly attributes: readonly string[];
  active: boolean;
}

function describeError(e: unknown): { errno: number; code: string; reason: string } {
  if (e instanceof KernelError) return { errno: e.errno, code: e.code, reason: e.message };
  return { errno: 0, code: "BUG", reason: e instanceof Error ? e.message : String(e) };
}

export class MdevCore {
  private readonly sysfs: Sysfs;
  private readonly vfio: MdevVfioRegistry;
  private readonly tracer: Tracer;
  private readonly parentsByName = new Map<string, ParentState>();
  private readonly devices = new Map<string, DeviceState>();

  constructor(opts: MdevCoreOptions) {
    this.sysfs = opts.sysfs;
    this.vfio = opts.vfio;
    this.tracer = opts.tracer;
    this.sysfs.mkdir(MDEV_BUS_DEVICES_DIR);
    this.sysfs.mkdir("/sys/bus/mdev/drivers");
    this.sysfs.mkdir(MDEV_CLASS_DIR);
    this.sysfs.mkdir(IOMMU_GROUPS_DIR);
    this.sysfs.addRefresher(() => this.syncAllTypes());
  }

  // ---- parents -----------------------------------------------------------------------------------------------------

  /**
   * mdev_register_parent: shows the parent in /sys/class/mdev_bus with its types. EEXIST for a parent name already
   * registered; EINVAL for an empty or duplicated type id, or names that cannot be sysfs names.
   */
  registerParent(driver: MdevParentDriver): void {
    const name = driver.parentName;
    checkName("parent name", name);
    checkName("driver name", driver.driverName);
    if (this.parentsByName.has(name)) {
      throw new KernelError(Errno.EEXIST, `mdev parent ${name} is already registered`);
    }
    const ids = new Set<string>();
    for (const t of driver.types) {
      checkName(`type id of ${driver.driverName}`, t.id);
      if (ids.has(t.id)) {
        throw new KernelError(Errno.EINVAL, `parent driver ${driver.driverName} lists type id '${t.id}' twice`);
      }
      ids.add(t.id);
    }
    const pciLink = `/sys/bus/pci/devices/${name}`;
    const isPci = isBdf(name) && this.sysfs.exists(pciLink);
    const dir = isPci ? this.sysfs.realpath(pciLink) : `/sys/devices/virtual/${driver.driverName}/${name}`;
    if (!isPci && this.sysfs.has(dir)) {
      throw new KernelError(Errno.EEXIST, `${dir} already exists: another device has the name ${name}`);
    }
    const p: ParentState = {
      driver,
      name,
      dir,
      ownsDir: !isPci,
      types: new Map(),
      devices: new Set(),
      removing: false,
    };
    this.sysfs.mkdir(`${dir}/${MDEV_SUPPORTED_TYPES}`);
    const classLink = `${MDEV_CLASS_DIR}/${name}`;
    this.sysfs.addSymlink(classLink, relativeLinkTarget(classLink, dir));
    this.parentsByName.set(name, p);
    this.syncTypes(p, false);
    if (this.tracer.enabled) {
      this.tracer.emit("mdev.parent.register", { parent: name, driver: driver.driverName, types: [...p.types.keys()] });
    }
  }

  /**
   * mdev_unregister_parent: removes every device of the parent, then its sysfs nodes. ENODEV for an unknown parent;
   * EBUSY, changing nothing, while any of its devices is open.
   */
  unregisterParent(name: string): void {
    const p = this.parent(name);
    const open = this.openDevices(p);
    if (open.length > 0) {
      throw new KernelError(
        Errno.EBUSY,
        `cannot unregister mdev parent ${name}: ${open.map((o) => `${o.name} has ${o.openCount} open fd(s)`).join(", ")}` +
          "; the user must close them first (Linux would block here until they are closed)",
      );
    }
    p.removing = true;
    const removed = [...p.devices].sort();
    for (const uuid of removed) this.removeDevice(this.devices.get(uuid)!);
    this.sysfs.remove(`${MDEV_CLASS_DIR}/${name}`);
    this.sysfs.remove(`${p.dir}/${MDEV_SUPPORTED_TYPES}`);
    if (p.ownsDir) {
      this.sysfs.remove(p.dir);
      const classDir = p.dir.slice(0, p.dir.lastIndexOf("/"));
      if (this.sysfs.readdir(classDir).length === 0) this.sysfs.remove(classDir);
    }
    this.parentsByName.delete(name);
    if (this.tracer.enabled) {
      this.tracer.emit("mdev.parent.unregister", { parent: name, driver: p.driver.driverName, removed });
    }
  }

  parents(): MdevParentInfo[] {
    return [...this.parentsByName.values()]
      .sort((a, b) => byName(a.name, b.name))
      .map((p) => ({
        name: p.name,
        driver: p.driver.driverName,
        sysfsPath: p.dir,
        types: [...p.types.keys()].sort(),
        devices: [...p.devices].sort(),
      }));
  }

  /** The types a parent lists, with current availability. ENODEV for an unknown parent. */
  types(parent: string): MdevTypeInfo[] {
    const p = this.parent(parent);
    this.syncTypes(p, true);
    return [...p.types.values()]
      .sort((a, b) => byName(a.dirName, b.dirName))
      .map((t) => {
        const a: MdevAvailability = t.offered
          ? p.driver.availability(t.spec.id)
          : hiddenAvailability(p.driver, t.spec.id);
        return {
          type: t.dirName,
          typeId: t.spec.id,
          parent: p.name,
          name: t.spec.name,
          description: t.spec.description,
          deviceApi: t.spec.deviceApi,
          availableInstances: Math.max(0, Math.trunc(a.instances)),
          ...(a.reason !== undefined
            ? { reason: a.reason }
            : t.offered
              ? {}
              : { reason: `${parent} no longer offers ${t.dirName}` }),
          devices: [...t.devices].sort(),
          offered: t.offered,
          sysfsPath: t.dir,
        };
      });
  }

  // ---- devices -----------------------------------------------------------------------------------------------------

  /**
   * Creates a device as a write of `uuid` to the type's `create` does. `type` is the type directory name
   * ("mtty-2") or the parent's type id ("2"). ENODEV for an unknown parent, ENOENT for a type it does not list;
   * otherwise the errors of `create` (see the module comment). Returns the device.
   */
  create(parent: string, type: string, uuid: string): MdevDeviceInfo {
    const p = this.parent(parent);
    this.syncTypes(p, true);
    const t = p.types.get(type) ?? p.types.get(mdevTypeDirName(p.driver.driverName, type));
    if (t === undefined) {
      const known = [...p.types.keys()].sort().join(", ") || "none";
      throw new KernelError(Errno.ENOENT, `parent ${parent} has no mdev type '${type}' (it lists: ${known})`);
    }
    const name = this.createDevice(p, t, uuid, false);
    return this.info(this.devices.get(name)!);
  }

  /** Removes a device as a write of 1 to its `remove` does. ENODEV for an unknown UUID; EBUSY while it is open. */
  remove(uuid: string): void {
    const d = this.devices.get(uuid.toLowerCase());
    if (d === undefined) {
      const err = new KernelError(Errno.ENODEV, `no mdev device ${uuid}`);
      this.emitRemoveFail(uuid, err);
      throw err;
    }
    this.removeRequest(d);
  }

  /** Every device, by UUID. */
  list(): MdevDeviceInfo[] {
    return [...this.devices.values()].sort((a, b) => byName(a.uuid, b.uuid)).map((d) => this.info(d));
  }

  /** One device by UUID (either case), or undefined. */
  device(uuid: string): MdevDeviceInfo | undefined {
    const d = this.devices.get(uuid.toLowerCase());
    return d === undefined ? undefined : this.info(d);
  }

  /** Throws an Error naming every broken invariant (see the module comment). For tests and the invariant checker. */
  checkInvariants(): void {
    const bad: string[] = [];
    const s = this.sysfs;
    for (const d of this.devices.values()) {
      if (!d.parent.devices.has(d.uuid)) bad.push(`${d.uuid} is missing from parent ${d.parent.name}`);
      if (!d.type.devices.has(d.uuid)) bad.push(`${d.uuid} is missing from type ${d.type.dirName}`);
      if (this.parentsByName.get(d.parent.name) !== d.parent) bad.push(`${d.uuid} has unregistered parent`);
      if (d.parent.types.get(d.type.dirName) !== d.type) bad.push(`${d.uuid}'s type ${d.type.dirName} is not listed`);
      for (const path of [
        `${MDEV_BUS_DEVICES_DIR}/${d.uuid}`,
        `${d.type.dir}/devices/${d.uuid}`,
        `${d.dir}/mdev_type`,
        `${d.dir}/iommu_group`,
        `${IOMMU_GROUPS_DIR}/${d.group}/devices/${d.uuid}`,
      ]) {
        if (!s.has(path)) bad.push(`${d.uuid}: ${path} is missing`);
      }
    }
    for (const p of this.parentsByName.values()) {
      if (!s.has(`${MDEV_CLASS_DIR}/${p.name}`)) bad.push(`parent ${p.name} has no class link`);
      for (const uuid of p.devices) if (this.devices.get(uuid)?.parent !== p) bad.push(`${p.name} lists ${uuid}`);
      for (const t of p.types.values()) {
        if (!s.has(`${t.dir}/create`)) bad.push(`type ${t.dirName} of ${p.name} has no directory`);
        for (const uuid of t.devices) if (this.devices.get(uuid)?.type !== t) bad.push(`${t.dirName} lists ${uuid}`);
        if (!t.offered && t.devices.size === 0) bad.push(`type ${t.dirName} is listed without being offered`);
      }
    }
    if (bad.length > 0) throw new Error(`mdev core invariants broken:\n- ${bad.join("\n- ")}`);
  }

  // ---- internals ---------------------------------------------------------------------------------------------------

  private parent(name: string): ParentState {
    const p = this.parentsByName.get(name);
    if (p === undefined) {
      const known = [...this.parentsByName.keys()].sort().join(", ") || "none";
      throw new KernelError(Errno.ENODEV, `no mdev parent named ${name} (registered: ${known})`);
    }
    return p;
  }

  private info(d: DeviceState): MdevDeviceInfo {
    return {
      uuid: d.uuid,
      parent: d.parent.name,
      type: d.type.dirName,
      typeId: d.type.spec.id,
      group: d.group,
      sysfsPath: d.dir,
      driver: d.parent.driver.driverName,
      attributes: d.attributes,
    };
  }

  private syncAllTypes(): void {
    for (const p of this.parentsByName.values()) this.syncTypes(p, true);
  }

  /** Makes mdev_supported_types follow the parent's current type list (see the module comment). */
  private syncTypes(p: ParentState, emit: boolean): void {
    if (p.removing) return;
    const want = new Map<string, MdevTypeSpec>();
    for (const spec of p.driver.types) {
      const dirName = mdevTypeDirName(p.driver.driverName, spec.id);
      if (!want.has(dirName)) want.set(dirName, spec);
    }
    const added: string[] = [];
    const removed: string[] = [];
    for (const [dirName, t] of p.types) {
      if (want.has(dirName)) {
        t.offered = true;
        continue;
      }
      if (t.devices.size > 0) {
        t.offered = false;
        continue;
      }
      this.sysfs.remove(t.dir);
      p.types.delete(dirName);
      removed.push(dirName);
    }
    for (const [dirName, spec] of want) {
      if (p.types.has(dirName)) continue;
      const t: TypeState = {
        spec,
        dirName,
        dir: `${p.dir}/${MDEV_SUPPORTED_TYPES}/${dirName}`,
        devices: new Set(),
        offered: true,
      };
      addTypeFiles(this.sysfs, t.dir, spec, {
        create: (data) => void this.createDevice(p, t, data, true),
        availability: () => (t.offered ? p.driver.availability(spec.id) : { instances: 0 }),
      });
      p.types.set(dirName, t);
      added.push(dirName);
    }
    if (emit && (added.length > 0 || removed.length > 0) && this.tracer.enabled) {
      this.tracer.emit("mdev.types.change", { parent: p.name, added, removed });
    }
  }

  /**
   * mdev_device_create; returns the device name. `input` is the UUID, or with `fromSysfs` the bytes written to
   * `create` (length rules apply). Emits mdev.create or mdev.create.fail.
   */
  private createDevice(p: ParentState, t: TypeState, input: string, fromSysfs: boolean): string {
    try {
      const uuid = fromSysfs ? parseCreateWrite(input) : parseUuid(input);
      const other = this.devices.get(uuid);
      if (other !== undefined) {
        throw new KernelError(
          Errno.EEXIST,
          `mdev ${uuid} already exists (type ${other.type.dirName} on parent ${other.parent.name})`,
        );
      }
      if (p.removing || this.parentsByName.get(p.name) !== p) {
        throw new KernelError(Errno.ENODEV, `mdev parent ${p.name} is being unregistered`);
      }
      if (!t.offered) {
        const why = hiddenAvailability(p.driver, t.spec.id).reason;
        throw new KernelError(
          Errno.ENOSPC,
          `parent ${p.name} no longer offers type ${t.dirName}${why ? ` (${why})` : ""}; ` +
            "see mdev_supported_types for the types it offers now",
        );
      }
      const avail = p.driver.availability(t.spec.id);
      if (!(avail.instances > 0)) {
        throw new KernelError(
          Errno.ENOSPC,
          `no ${t.dirName} instance left on parent ${p.name}: ${avail.reason ?? "available_instances is 0"}`,
        );
      }
      this.probe(p, t, uuid);
      return uuid;
    } catch (e) {
      if (this.tracer.enabled) {
        this.tracer.emit("mdev.create.fail", {
          uuid: printable(input.endsWith("\n") ? input.slice(0, -1) : input),
          parent: p.name,
          type: t.dirName,
          ...describeError(e),
        });
      }
      throw e;
    }
  }

  /** The driver's probe, vfio registration and sysfs nodes; any failure undoes the steps before it. */
  private probe(p: ParentState, t: TypeState, uuid: string): void {
    const driver = p.driver;
    const instance = driver.create(uuid, t.spec.id);
    let group: number;
    const attributes = instance.attributes ?? {};
    try {
      if (instance.ops.name !== uuid) {
        throw new KernelError(
          Errno.EINVAL,
          `parent driver ${driver.driverName} named the vfio device of mdev ${uuid} '${instance.ops.name}': ` +
            "VfioDeviceOps.name must be the lower-case UUID",
        );
      }
      for (const name of Object.keys(attributes)) checkVendorAttributeName(driver.driverName, name);
      group = this.vfio.registerEmulatedDevice(instance.ops);
    } catch (e) {
      driver.destroy(instance);
      throw e;
    }
    const groupDir = `${IOMMU_GROUPS_DIR}/${group}`;
    const dir = `${p.dir}/${uuid}`;
    const d: DeviceState = {
      uuid,
      parent: p,
      type: t,
      instance,
      group,
      dir,
      attributes: Object.keys(attributes).sort(),
      active: true,
    };
    const made: string[] = [];
    try {
      if (this.sysfs.has(groupDir)) {
        throw new KernelError(Errno.EEXIST, `IOMMU group ${group} of mdev ${uuid} already has ${groupDir}`);
      }
      if (this.sysfs.has(dir)) throw new KernelError(Errno.EEXIST, `${dir} already exists`);
      this.sysfs.mkdir(dir);
      made.push(dir);
      this.sysfs.mkdir(`${groupDir}/devices`);
      made.push(groupDir);
      this.sysfs.addAttribute(`${groupDir}/reserved_regions`, { read: () => "" });
      this.sysfs.addAttribute(`${groupDir}/type`, { read: () => "unknown\n" });
      this.link(`${groupDir}/devices/${uuid}`, dir, made);
      addDeviceFiles(this.sysfs, dir, () => this.removeRequest(d), attributes);
      this.link(`${dir}/mdev_type`, t.dir, made);
      this.link(`${dir}/iommu_group`, groupDir, made);
      this.link(`${MDEV_BUS_DEVICES_DIR}/${uuid}`, dir, made);
      this.link(`${t.dir}/devices/${uuid}`, dir, made);
    } catch (e) {
      for (const path of made.reverse()) if (this.sysfs.has(path)) this.sysfs.remove(path);
      this.vfio.unregisterDevice(uuid);
      driver.destroy(instance);
      throw e;
    }
    this.devices.set(uuid, d);
    p.devices.add(uuid);
    t.devices.add(uuid);
    if (this.tracer.enabled) {
      this.tracer.emit("mdev.create", { uuid, parent: p.name, type: t.dirName, group });
    }
  }

  private link(path: string, target: string, made: string[]): void {
    this.sysfs.addSymlink(path, relativeLinkTarget(path, target));
    made.push(path);
  }

  /** A user's remove (API or sysfs): refused while the parent is going away or the device is already going. */
  private removeRequest(d: DeviceState): void {
    try {
      if (!d.active) throw new KernelError(Errno.EAGAIN, `mdev ${d.uuid} is already being removed`);
      if (d.parent.removing) {
        throw new KernelError(Errno.ENODEV, `mdev parent ${d.parent.name} is being unregistered`);
      }
    } catch (e) {
      this.emitRemoveFail(d.uuid, e);
      throw e;
    }
    this.removeDevice(d);
  }

  /** mdev_device_remove_common. */
  private removeDevice(d: DeviceState): void {
    try {
      this.vfio.unregisterDevice(d.uuid);
    } catch (e) {
      const err = e instanceof KernelError ? new KernelError(e.errno, `cannot remove mdev ${d.uuid}: ${e.message}`) : e;
      this.emitRemoveFail(d.uuid, err);
      throw err;
    }
    d.active = false;
    const s = this.sysfs;
    try {
      for (const path of [
        `${d.type.dir}/devices/${d.uuid}`,
        `${MDEV_BUS_DEVICES_DIR}/${d.uuid}`,
        d.dir,
        `${IOMMU_GROUPS_DIR}/${d.group}`,
      ]) {
        if (s.has(path)) s.remove(path);
      }
    } finally {
      this.devices.delete(d.uuid);
      d.parent.devices.delete(d.uuid);
      d.type.devices.delete(d.uuid);
      if (!d.type.offered && d.type.devices.size === 0 && !d.parent.removing) this.syncTypes(d.parent, true);
      d.parent.driver.destroy(d.instance);
    }
    if (this.tracer.enabled) {
      this.tracer.emit("mdev.remove", { uuid: d.uuid, parent: d.parent.name, type: d.type.dirName, group: d.group });
    }
  }

  private openDevices(p: ParentState): { name: string; openCount: number }[] {
    const out: { name: string; openCount: number }[] = [];
    for (const g of this.vfio.inspect().groups) {
      for (const dev of g.devices) if (p.devices.has(dev.name) && dev.openCount > 0) out.push(dev);
    }
    return out.sort((a, b) => byName(a.name, b.name));
  }

  private emitRemoveFail(uuid: string, e: unknown): void {
    if (this.tracer.enabled) this.tracer.emit("mdev.remove.fail", { uuid, ...describeError(e) });
  }
}

function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A name used as one sysfs path component. */
function checkName(what: string, name: string): void {
  if (name.length === 0 || name.includes("/") || name === "." || name === ".." || printable(name) !== name) {
    throw new KernelError(Errno.EINVAL, `mdev ${what} '${name}' cannot be a sysfs name (empty, '/', '.', '..')`);
  }
}

/** Availability of a type the parent no longer lists: 0, with the parent's own reason when it can still give one. */
function hiddenAvailability(driver: MdevParentDriver, typeId: string): MdevAvailability {
  try {
    const a = driver.availability(typeId);
    return { instances: 0, ...(a.reason !== undefined ? { reason: a.reason } : {}) };
  } catch (e) {
    if (!isKernelError(e)) throw e;
    return { instances: 0 };
  }
}
