/**
 * vfio/type1: the VFIO type1 IOMMU backend (vfio_iommu_type1.c). `type1Driver(...)` is what vfio-core registers;
 * each container that selects VFIO_TYPE1_IOMMU or VFIO_TYPE1v2_IOMMU gets a `Type1Backend`. The mapping tree, the
 * IOVA range list and the bitmap helpers stay inside the folder; what is exported here is the driver, its backend's
 * introspection types and the limits a user of the UAPI may want to quote.
 */
export { DIRTY_BITMAP_PAGES_MAX, DIRTY_BITMAP_SIZE_MAX, dirtyBitmapBytes } from "./dirty.ts";
export { IOVA_TOP } from "./iova-ranges.ts";
export {
  DEFAULT_DMA_ENTRY_LIMIT,
  DMA_UNMAP_MAX_RETRIES,
  Type1Backend,
  type Type1Driver,
  type Type1MappingInfo,
  type Type1Options,
  type Type1Stats,
  type1Driver,
  VFIO_BATCH_MAX_CAPACITY,
  VFIO_PIN_PAGES_MAX_ENTRIES,
} from "./type1.ts";
