/**
 * The contract between the mdev core and a parent (vendor) driver: what a GPU vendor driver, or the mtty sample,
 * implements to offer mediated devices. Linux's equivalent is `struct mdev_driver` + `mdev_register_parent()` with a
 * table of `struct mdev_type` (include/linux/mdev.h, drivers/vfio/mdev/mdev_core.c).
 *
 * The parent declares its types as a table; the mdev core turns them into
 * `/sys/class/mdev_bus/<parent>/mdev_supported_types/<driver>-<type>/` and asks the parent for `available_instances`
 * each time it is read. Creating a device calls `create` (probe), which returns the vfio device ops the mdev core
 * registers with vfio-core as an emulated-IOMMU device in a fresh IOMMU group; removing one unregisters it and calls
 * `destroy`, which must release everything (pins, IOVAs, shadow state). A parent reports a capacity failure with
 * KernelError(ENOSPC, "<why, with numbers>").
 */
import type { VfioDeviceOps } from "../vfio/index.ts";

/** One row of a parent's type table. */
export interface MdevTypeSpec {
  /** The type's id within its driver ("1" for mtty, "GVTg_V5_8" for GVT-g); sysfs names it `<driver>-<id>`. */
  readonly id: string;
  /** Contents of the `name` attribute. */
  readonly name: string;
  /** Contents of the `description` attribute (may be multi-line). */
  readonly description: string;
  /** Contents of `device_api`: "vfio-pci" for every device in this project. */
  readonly deviceApi: "vfio-pci";
}

/** How many more devices of a type fit, and if few or none, why (shown by `vgpu types` and in ENOSPC errors). */
export interface MdevAvailability {
  readonly instances: number;
  /** The limiting resource in numbers, e.g. "aperture: 64 MiB left, needs 256 MiB". */
  readonly reason?: string;
}

/** A vendor attribute under /sys/bus/mdev/devices/<uuid>/; mdevctl's `attrs` are written to these on start. */
export interface MdevAttribute {
  read?(): string;
  /** Throws KernelError (EINVAL with a sentence) for a bad value. */
  write?(value: string): void;
}

/** What `create` returns: the device as vfio-core sees it, and its vendor attributes. */
export interface MdevDeviceInstance {
  /** `ops.name` must be the device's UUID (lower case). */
  readonly ops: VfioDeviceOps;
  readonly attributes?: Readonly<Record<string, MdevAttribute>>;
}

/** A parent device with its vendor driver. */
export interface MdevParentDriver {
  /** The parent device's name in /sys/class/mdev_bus: a PCI BDF ("0000:00:02.0") or a virtual device ("mtty"). */
  readonly parentName: string;
  /** The vendor driver's name, the prefix of every type directory ("i915", "mtty"). */
  readonly driverName: string;
  /**
   * The types offered now. Read on every listing: a parent may hide a type that can no longer fit (GVT-g drops types
   * whose aperture size exceeds what is left), so the sysfs directory follows this list.
   */
  readonly types: readonly MdevTypeSpec[];
  /** Called on every read of available_instances: reflects current capacity. */
  availability(typeId: string): MdevAvailability;
  /** probe(): builds the device's state. Throws KernelError (ENOSPC when out of capacity). */
  create(uuid: string, typeId: string): MdevDeviceInstance;
  /** remove(): the device is closed and unregistered from vfio; release every resource it holds. */
  destroy(instance: MdevDeviceInstance): void;
}
