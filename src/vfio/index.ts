/**
 * vfio: the VFIO API of the host. The uapi (request numbers, constants, struct codecs, capability chains), the
 * contract between vfio-core, bus drivers and IOMMU backends (driver.ts), vfio-core itself (containers, groups,
 * devices behind /dev/vfio), the vfio-noiommu backend, and a typed client over a host Process (api.ts).
 *
 * Name clash, resolved here: driver.ts's typed interfaces `VfioDeviceInfo`, `VfioRegionInfo`, `VfioIrqInfo` and
 * `VfioIrqSet` (what a bus driver returns and receives) share their names with the uapi struct codecs. The flat names
 * are the driver.ts types; the codecs are reached through the `uapi` namespace (`uapi.VfioRegionInfo.decode(buf)`),
 * along with everything else of the uapi, which is also exported flat.
 */
export * from "./api.ts";
export * from "./core.ts";
export type { VfioDeviceInfo, VfioIrqInfo, VfioIrqSet, VfioRegionInfo } from "./driver.ts";
export * from "./driver.ts";
export * from "./emulated-iova.ts";
export * from "./noiommu.ts";
export * from "./pci/index.ts";
export * from "./pci-device.ts";
export * from "./type1/index.ts";
export * from "./uapi/index.ts";
export * as uapi from "./uapi/index.ts";
