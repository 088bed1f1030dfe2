/**
 * Constants of include/uapi/linux/vfio.h: extensions, flag bits of every struct the model uses, vfio-pci region and
 * irq indices, capability ids, device features and migration states. Names are Linux's, so grepping the kernel for a
 * name finds its meaning; values are Linux's, so they can cross an ioctl or the vfio-user wire unchanged.
 *
 * Also here: the vfio-pci region offset encoding (`index << 40`). It lives in the kernel-internal vfio_pci_core.h,
 * not in the UAPI, but every vfio-pci user (QEMU included) relies on it in practice; vfio-user carries offsets
 * explicitly and does not need it.
 *
 * Not here: SPAPR, EEH, s390 (zPCI, CCW, AP) specifics beyond their ids, the v1 migration region, iommufd.
 */
import { Errno, KernelError } from "../../core/index.ts";

export const VFIO_API_VERSION = 0;

// ---- Extensions (VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU arguments) ----
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_SPAPR_TCE_IOMMU = 2;
export const VFIO_TYPE1v2_IOMMU = 3;
/** IOMMU enforces DMA cache coherence; can change as groups come and go. */
export const VFIO_DMA_CC_IOMMU = 4;
export const VFIO_EEH = 5;
/** Was the two-stage (nesting) type1; reserved, never answered. */
export const VFIO_RESERVED_TYPE1_NESTING_IOMMU = 6;
export const VFIO_SPAPR_TCE_v2_IOMMU = 7;
export const VFIO_NOIOMMU_IOMMU = 8;
/** Supports VFIO_DMA_UNMAP_FLAG_ALL. */
export const VFIO_UNMAP_ALL = 9;
/** Supports the VADDR flag of MAP/UNMAP (not with mediated devices). */
export const VFIO_UPDATE_VADDR = 10;

const EXTENSION_NAMES: Readonly<Record<number, string>> = {
  [VFIO_TYPE1_IOMMU]: "VFIO_TYPE1_IOMMU",
  [VFIO_SPAPR_TCE_IOMMU]: "VFIO_SPAPR_TCE_IOMMU",
  [VFIO_TYPE1v2_IOMMU]: "VFIO_TYPE1v2_IOMMU",
  [VFIO_DMA_CC_IOMMU]: "VFIO_DMA_CC_IOMMU",
  [VFIO_EEH]: "VFIO_EEH",
  [VFIO_RESERVED_TYPE1_NESTING_IOMMU]: "__VFIO_RESERVED_TYPE1_NESTING_IOMMU",
  [VFIO_SPAPR_TCE_v2_IOMMU]: "VFIO_SPAPR_TCE_v2_IOMMU",
  [VFIO_NOIOMMU_IOMMU]: "VFIO_NOIOMMU_IOMMU",
  [VFIO_UNMAP_ALL]: "VFIO_UNMAP_ALL",
  [VFIO_UPDATE_VADDR]: "VFIO_UPDATE_VADDR",
};
/** "VFIO_TYPE1v2_IOMMU", or "extension 42" for a number vfio.h does not define. */
export function vfioExtensionName(ext: number): string {
  return EXTENSION_NAMES[ext] ?? `extension ${ext}`;
}

// ---- vfio_group_status.flags ----
export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;

// ---- vfio_device_info.flags ----
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2;
export const VFIO_DEVICE_FLAGS_AMBA = 1 << 3;
export const VFIO_DEVICE_FLAGS_CCW = 1 << 4;
export const VFIO_DEVICE_FLAGS_AP = 1 << 5;
export const VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;
export const VFIO_DEVICE_FLAGS_CDX = 1 << 8;

/** The mdev type's `device_api` sysfs attribute, matching the device flags. */
export const VFIO_DEVICE_API_PCI_STRING = "vfio-pci";
export const VFIO_DEVICE_API_PLATFORM_STRING = "vfio-platform";
export const VFIO_DEVICE_API_AMBA_STRING = "vfio-amba";
export const VFIO_DEVICE_API_CCW_STRING = "vfio-ccw";
export const VFIO_DEVICE_API_AP_STRING = "vfio-ap";

// ---- Device info capability ids ----
export const VFIO_DEVICE_INFO_CAP_ZPCI_BASE = 1;
export const VFIO_DEVICE_INFO_CAP_ZPCI_GROUP = 2;
export const VFIO_DEVICE_INFO_CAP_ZPCI_UTIL = 3;
export const VFIO_DEVICE_INFO_CAP_ZPCI_PFIP = 4;
export const VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP = 5;

// ---- vfio_region_info.flags ----
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;

// ---- Region info capability ids ----
export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const VFIO_REGION_INFO_CAP_TYPE = 2;
export const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;

// ---- vfio_region_info_cap_type: types (global per bus driver) and subtypes ----
/** A PCI vendor type: this bit | the vendor id. 1 << 31 as an unsigned u32. */
export const VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 0x8000_0000;
export const VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xffff;
export const VFIO_REGION_TYPE_GFX = 1;
export const VFIO_REGION_TYPE_CCW = 2;
export const VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3;
/** Subtypes of VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086. */
export const VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION = 1;
export const VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG = 2;
export const VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG = 3;
/** Subtype of VFIO_REGION_TYPE_GFX: the EDID region (struct vfio_region_gfx_edid). */
export const VFIO_REGION_SUBTYPE_GFX_EDID = 1;
/** vfio_region_gfx_edid.link_state */
export const VFIO_DEVICE_GFX_LINK_STATE_UP = 1;
export const VFIO_DEVICE_GFX_LINK_STATE_DOWN = 2;

// ---- vfio_irq_info.flags ----
export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;

// ---- vfio_irq_set.flags: exactly one DATA_* and one ACTION_* ----
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;
export const VFIO_IRQ_SET_DATA_TYPE_MASK = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
export const VFIO_IRQ_SET_ACTION_TYPE_MASK =
  VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

// ---- vfio-pci fixed region indices (indices >= VFIO_PCI_NUM_REGIONS are device specific, named by a TYPE cap) ----
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_BAR1_REGION_INDEX = 1;
export const VFIO_PCI_BAR2_REGION_INDEX = 2;
export const VFIO_PCI_BAR3_REGION_INDEX = 3;
export const VFIO_PCI_BAR4_REGION_INDEX = 4;
export const VFIO_PCI_BAR5_REGION_INDEX = 5;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
/** Legacy VGA: I/O 0x3b0-0x3bb, 0x3c0-0x3df and MMIO 0xa0000-0xbffff at their identity offsets in the region. */
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;

// ---- vfio-pci irq indices ----
export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;
export const VFIO_PCI_NUM_IRQS = 5;

const PCI_REGION_NAMES = ["BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"] as const;
const PCI_IRQ_NAMES = ["INTX", "MSI", "MSIX", "ERR", "REQ"] as const;
/** "BAR2", "CONFIG", or "region 9" for a device-specific index. */
export function vfioPciRegionName(index: number): string {
  return PCI_REGION_NAMES[index] ?? `region ${index}`;
}
/** "INTX", "MSIX", or "irq 7". */
export function vfioPciIrqName(index: number): string {
  return PCI_IRQ_NAMES[index] ?? `irq ${index}`;
}

// ---- vfio-pci region offsets within the device fd: index << 40 ----
export const VFIO_PCI_OFFSET_SHIFT = 40;
/** 2^40, the span of one region's offsets. */
export const VFIO_PCI_REGION_SPAN = 2 ** VFIO_PCI_OFFSET_SHIFT;
/** Mask of the offset within a region, 2^40 - 1 (exact as a number). */
export const VFIO_PCI_OFFSET_MASK = VFIO_PCI_REGION_SPAN - 1;
/** Largest index whose offsets stay below 2^53 (the model's exact numbers): 8191. */
export const VFIO_PCI_MAX_MODEL_INDEX = 2 ** (53 - VFIO_PCI_OFFSET_SHIFT) - 1;

/** VFIO_PCI_INDEX_TO_OFFSET: `index << 40`, computed without 32-bit shifts. */
export function vfioPciIndexToOffset(index: number): number {
  if (!Number.isInteger(index) || index < 0 || index > VFIO_PCI_MAX_MODEL_INDEX) {
    throw new KernelError(Errno.EINVAL, `region index ${index} is out of range [0, ${VFIO_PCI_MAX_MODEL_INDEX}]`);
  }
  return index * VFIO_PCI_REGION_SPAN;
}
/** VFIO_PCI_OFFSET_TO_INDEX: `offset >> 40`. */
export function vfioPciOffsetToIndex(offset: number): number {
  return Math.floor(offset / VFIO_PCI_REGION_SPAN);
}
/** `offset & VFIO_PCI_OFFSET_MASK`: the position within the region. */
export function vfioPciOffsetInRegion(offset: number): number {
  return offset % VFIO_PCI_REGION_SPAN;
}

// ---- VFIO_DEVICE_QUERY_GFX_PLANE flags ----
export const VFIO_GFX_PLANE_TYPE_PROBE = 1 << 0;
export const VFIO_GFX_PLANE_TYPE_DMABUF = 1 << 1;
export const VFIO_GFX_PLANE_TYPE_REGION = 1 << 2;

// ---- vfio_device_ioeventfd.flags: the write width ----
export const VFIO_DEVICE_IOEVENTFD_8 = 1 << 0;
export const VFIO_DEVICE_IOEVENTFD_16 = 1 << 1;
export const VFIO_DEVICE_IOEVENTFD_32 = 1 << 2;
export const VFIO_DEVICE_IOEVENTFD_64 = 1 << 3;
export const VFIO_DEVICE_IOEVENTFD_SIZE_MASK = 0xf;

// ---- vfio_pci_hot_reset_info.flags ----
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0;
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1;

// ---- vfio_device_feature.flags: low 16 bits select the feature ----
export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;
// Feature ids
export const VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0;
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4;
export const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;
export const VFIO_DEVICE_FEATURE_BUS_MASTER = 10;
export const VFIO_DEVICE_FEATURE_DMA_BUF = 11;

// ---- vfio_device_feature_migration.flags ----
export const VFIO_MIGRATION_STOP_COPY = 1 << 0;
export const VFIO_MIGRATION_P2P = 1 << 1;
export const VFIO_MIGRATION_PRE_COPY = 1 << 2;

// ---- enum vfio_device_mig_state ----
export const VFIO_DEVICE_STATE_ERROR = 0;
export const VFIO_DEVICE_STATE_STOP = 1;
export const VFIO_DEVICE_STATE_RUNNING = 2;
export const VFIO_DEVICE_STATE_STOP_COPY = 3;
export const VFIO_DEVICE_STATE_RESUMING = 4;
export const VFIO_DEVICE_STATE_RUNNING_P2P = 5;
export const VFIO_DEVICE_STATE_PRE_COPY = 6;
export const VFIO_DEVICE_STATE_PRE_COPY_P2P = 7;
export const VFIO_DEVICE_STATE_NR = 8;
export type VfioDeviceMigState = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7;

const MIG_STATE_NAMES = [
  "ERROR",
  "STOP",
  "RUNNING",
  "STOP_COPY",
  "RESUMING",
  "RUNNING_P2P",
  "PRE_COPY",
  "PRE_COPY_P2P",
] as const;
/** "STOP_COPY", or "state 9" for a number the enum does not define. */
export function vfioMigStateName(state: number): string {
  return MIG_STATE_NAMES[state] ?? `state ${state}`;
}
export function isVfioDeviceMigState(n: number): n is VfioDeviceMigState {
  return Number.isInteger(n) && n >= 0 && n < VFIO_DEVICE_STATE_NR;
}

// ---- Type1 IOMMU ----
/** vfio_iommu_type1_info.flags */
export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
/** Type1 info capability ids. */
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;
/** vfio_iommu_type1_dma_map.flags */
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export const VFIO_DMA_MAP_FLAG_VADDR = 1 << 2;
/** vfio_iommu_type1_dma_unmap.flags */
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
export const VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1;
export const VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2;
/** vfio_iommu_type1_dirty_bitmap.flags: exactly one per call. */
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1;
export const VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2;

/** Version every capability this model emits declares (all are version 1 in vfio.h). */
export const VFIO_CAP_VERSION_1 = 1;
