/**
 * vfio/type1: the VFIO type1 IOMMU backend (vfio_iommu_type1.c). `type1Driver(...)` is what vfio-core registers;
 * each container that selects VFIO_TYPE1_IOMMU or VFIO_TYPE1v2_IOMMU gets a `Type1Backend`. The backend's parts (the
 * ioctl layer, the mapping and pinning engine, groups, emulated devices, accounting, dirty tracking), the mapping
 * tree, the IOVA range list and the bitmap helpers stay inside the folder; what is exported here is the driver, its
 * backend's introspection types and the limits a user of the UAPI may want to quote.
 */
export { DIRTY_BITMAP_PAGES_MAX, DIRTY_BITMAP_SIZE_MAX, dirtyBitmapBytes } from "./dirty.ts";
export { DMA_UNMAP_MAX_RETRIES, VFIO_PIN_PAGES_MAX_ENTRIES } from "./emulated.ts";
export type { Type1MappingInfo, Type1Stats } from "./introspection.ts";
export { IOVA_TOP } from "./iova-ranges.ts";
export { VFIO_BATCH_MAX_CAPACITY } from "./pinning.ts";
export {
  DEFAULT_DMA_ENTRY_LIMIT,
  Type1Backend,
  type Type1Driver,
  type Type1Options,
  type1Driver,
} from "./type1.ts";
