/**
 * mdev: the mediated-device bus. Parent (vendor) drivers register their types (driver.ts, the contract); the mdev
 * core (core.ts) creates and removes devices through sysfs or its typed API, registers each with vfio-core in its own
 * IOMMU group, and keeps /sys/class/mdev_bus and /sys/bus/mdev (sysfs.ts) as Linux shows them. Depends on core, host
 * and vfio.
 */
export * from "./core.ts";
export * from "./driver.ts";
export * from "./sysfs.ts";
export * from "./uuid.ts";
