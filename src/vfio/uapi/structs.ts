/**
 * The structs of include/uapi/linux/vfio.h as codecs, at Linux's byte offsets (x86_64/arm64: little-endian, natural
 * alignment; `__aligned_u64` and `__u64` land on the same offsets there).
 *
 * Each codec carries `sizeof` and `minsz`. `minsz` is what the kernel computes for its argsz check,
 * `offsetofend(struct, last mandatory field)`: an ioctl whose argsz is below it fails with EINVAL, and the kernel reads
 * only that many bytes (`decodeMin`). For structs without argsz (capabilities, feature payloads) minsz = sizeof.
 *
 * Conventions: field names are vfio.h's (snake_case), so `info.cap_offset` reads like the kernel. A nested struct is
 * flattened: capability structs start with the header's `id`, `version`, `next`; `vfio_iommu_type1_dirty_bitmap_get`
 * spells its embedded vfio_bitmap as `bitmap_pgsize`, `bitmap_size`, `bitmap_data`. A union is declared as the member
 * the model uses (noted at the codec). Trailing flexible arrays (`data[]`, `areas[]`, `iova_ranges[]`) are not fields:
 * `sizeof` is the fixed part, and the element codecs or the helpers at the end read the payload.
 *
 * The type of each decoded struct has the codec's name (`VfioRegionInfo` is both a codec and a type).
 */
import {
  type AnyStructCodec,
  defineStruct,
  Errno,
  KernelError,
  readS32LE,
  reserved,
  type StructInput,
  type StructValue,
  s32,
  u8,
  u16,
  u32,
  u64,
  writeU32LE,
} from "../../core/index.ts";
import {
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
} from "./constants.ts";

/** Header of every capability in an info chain; `next` is an offset from the start of the info buffer, 0 ends. */
export const VfioInfoCapHeader = defineStruct("vfio_info_cap_header", { id: u16(0), version: u16(2), next: u32(4) });
export type VfioInfoCapHeader = StructValue<typeof VfioInfoCapHeader>;
const capHeader = { id: u16(0), version: u16(2), next: u32(4) } as const;

// ---------------------------------------------------------------------------------------------------------------------
// Group and device

export const VfioGroupStatus = defineStruct("vfio_group_status", { argsz: u32(0), flags: u32(4) }, { minsz: "flags" });
export type VfioGroupStatus = StructValue<typeof VfioGroupStatus>;

/** cap_offset is meaningful only with VFIO_DEVICE_FLAGS_CAPS; callers with argsz 16 (the minsz) never see it. */
export const VfioDeviceInfo = defineStruct(
  "vfio_device_info",
  {
    argsz: u32(0),
    flags: u32(4),
    num_regions: u32(8),
    num_irqs: u32(12),
    cap_offset: u32(16),
    pad: reserved(u32(20)),
  },
  { minsz: "num_irqs" },
);
export type VfioDeviceInfo = StructValue<typeof VfioDeviceInfo>;

export const VfioRegionInfo = defineStruct(
  "vfio_region_info",
  {
    argsz: u32(0),
    flags: u32(4),
    index: u32(8),
    cap_offset: u32(12),
    size: u64(16),
    offset: u64(24),
  },
  { minsz: "offset" },
);
export type VfioRegionInfo = StructValue<typeof VfioRegionInfo>;

/** Element of vfio_region_info_cap_sparse_mmap.areas[]. */
export const VfioRegionSparseMmapArea = defineStruct("vfio_region_sparse_mmap_area", { offset: u64(0), size: u64(8) });
export type VfioRegionSparseMmapArea = StructValue<typeof VfioRegionSparseMmapArea>;

/** Fixed part; `nr_areas` VfioRegionSparseMmapArea follow at offset 16. */
export const VfioRegionInfoCapSparseMmap = defineStruct("vfio_region_info_cap_sparse_mmap", {
  ...capHeader,
  nr_areas: u32(8),
  reserved: reserved(u32(12)),
});
export type VfioRegionInfoCapSparseMmap = StructValue<typeof VfioRegionInfoCapSparseMmap>;

export const VfioRegionInfoCapType = defineStruct("vfio_region_info_cap_type", {
  ...capHeader,
  type: u32(8),
  subtype: u32(12),
});
export type VfioRegionInfoCapType = StructValue<typeof VfioRegionInfoCapType>;

/** Layout of the start of a VFIO_REGION_SUBTYPE_GFX_EDID region (the EDID blob follows at edid_offset). */
export const VfioRegionGfxEdid = defineStruct("vfio_region_gfx_edid", {
  edid_offset: u32(0),
  edid_max_size: u32(4),
  edid_size: u32(8),
  max_xres: u32(12),
  max_yres: u32(16),
  link_state: u32(20),
});
export type VfioRegionGfxEdid = StructValue<typeof VfioRegionGfxEdid>;

export const VfioIrqInfo = defineStruct(
  "vfio_irq_info",
  { argsz: u32(0), flags: u32(4), index: u32(8), count: u32(12) },
  { minsz: "count" },
);
export type VfioIrqInfo = StructValue<typeof VfioIrqInfo>;

/** Header; `data[]` follows at offset 20: nothing, `count` u8 bools or `count` s32 eventfds (see DATA_* flags). */
export const VfioIrqSet = defineStruct(
  "vfio_irq_set",
  { argsz: u32(0), flags: u32(4), index: u32(8), start: u32(12), count: u32(16) },
  { minsz: "count" },
);
export type VfioIrqSet = StructValue<typeof VfioIrqSet>;

/** Element of vfio_pci_hot_reset_info.devices[]. `group_id` is a union with `devid` (cdev users). */
export const VfioPciDependentDevice = defineStruct("vfio_pci_dependent_device", {
  group_id: u32(0),
  segment: u16(4),
  bus: u8(6),
  devfn: u8(7),
});
export type VfioPciDependentDevice = StructValue<typeof VfioPciDependentDevice>;

/** Header; `count` VfioPciDependentDevice follow at offset 12 (ENOSPC with the needed count if argsz is short). */
export const VfioPciHotResetInfo = defineStruct(
  "vfio_pci_hot_reset_info",
  { argsz: u32(0), flags: u32(4), count: u32(8) },
  { minsz: "count" },
);
export type VfioPciHotResetInfo = StructValue<typeof VfioPciHotResetInfo>;

/** Header; `count` s32 group fds follow at offset 12. */
export const VfioPciHotReset = defineStruct(
  "vfio_pci_hot_reset",
  { argsz: u32(0), flags: u32(4), count: u32(8) },
  { minsz: "count" },
);
export type VfioPciHotReset = StructValue<typeof VfioPciHotReset>;

/**
 * VFIO_DEVICE_QUERY_GFX_PLANE. `dmabuf_id` is a union with `region_index` (same offset, 56): it holds the region index
 * for a VFIO_GFX_PLANE_TYPE_REGION plane. minsz is offsetofend(dmabuf_id) = 60, as GVT-g and the mdev samples check.
 */
export const VfioDeviceGfxPlaneInfo = defineStruct(
  "vfio_device_gfx_plane_info",
  {
    argsz: u32(0),
    flags: u32(4),
    drm_plane_type: u32(8),
    drm_format: u32(12),
    drm_format_mod: u64(16),
    width: u32(24),
    height: u32(28),
    stride: u32(32),
    size: u32(36),
    x_pos: u32(40),
    y_pos: u32(44),
    x_hot: u32(48),
    y_hot: u32(52),
    dmabuf_id: u32(56),
    reserved: reserved(u32(60)),
  },
  { minsz: "dmabuf_id" },
);
export type VfioDeviceGfxPlaneInfo = StructValue<typeof VfioDeviceGfxPlaneInfo>;

/** VFIO_DEVICE_IOEVENTFD: write `data` of the flagged width at device-fd `offset` when eventfd `fd` fires. */
export const VfioDeviceIoeventfd = defineStruct(
  "vfio_device_ioeventfd",
  {
    argsz: u32(0),
    flags: u32(4),
    offset: u64(8),
    data: u64(16),
    fd: s32(24),
    reserved: reserved(u32(28)),
  },
  { minsz: "fd" },
);
export type VfioDeviceIoeventfd = StructValue<typeof VfioDeviceIoeventfd>;

/** Header; the feature's payload (`data[]`) follows at offset 8. */
export const VfioDeviceFeature = defineStruct(
  "vfio_device_feature",
  { argsz: u32(0), flags: u32(4) },
  { minsz: "flags" },
);
export type VfioDeviceFeature = StructValue<typeof VfioDeviceFeature>;

/** Payload of VFIO_DEVICE_FEATURE_MIGRATION (GET). */
export const VfioDeviceFeatureMigration = defineStruct("vfio_device_feature_migration", { flags: u64(0) });
export type VfioDeviceFeatureMigration = StructValue<typeof VfioDeviceFeatureMigration>;

/** Payload of VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE; data_fd is -1 unless the arc opened a data transfer session. */
export const VfioDeviceFeatureMigState = defineStruct("vfio_device_feature_mig_state", {
  device_state: u32(0),
  data_fd: s32(4),
});
export type VfioDeviceFeatureMigState = StructValue<typeof VfioDeviceFeatureMigState>;

/** Payload of VFIO_DEVICE_FEATURE_DMA_LOGGING_START; `ranges` is a user pointer to num_ranges ranges. */
export const VfioDeviceFeatureDmaLoggingControl = defineStruct("vfio_device_feature_dma_logging_control", {
  page_size: u64(0),
  num_ranges: u32(8),
  __reserved: reserved(u32(12)),
  ranges: u64(16),
});
export type VfioDeviceFeatureDmaLoggingControl = StructValue<typeof VfioDeviceFeatureDmaLoggingControl>;

export const VfioDeviceFeatureDmaLoggingRange = defineStruct("vfio_device_feature_dma_logging_range", {
  iova: u64(0),
  length: u64(8),
});
export type VfioDeviceFeatureDmaLoggingRange = StructValue<typeof VfioDeviceFeatureDmaLoggingRange>;

/** Payload of VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT; `bitmap` is a user pointer. */
export const VfioDeviceFeatureDmaLoggingReport = defineStruct("vfio_device_feature_dma_logging_report", {
  iova: u64(0),
  length: u64(8),
  page_size: u64(16),
  bitmap: u64(24),
});
export type VfioDeviceFeatureDmaLoggingReport = StructValue<typeof VfioDeviceFeatureDmaLoggingReport>;

/** Payload of VFIO_DEVICE_FEATURE_MIG_DATA_SIZE. */
export const VfioDeviceFeatureMigDataSize = defineStruct("vfio_device_feature_mig_data_size", {
  stop_copy_length: u64(0),
});
export type VfioDeviceFeatureMigDataSize = StructValue<typeof VfioDeviceFeatureMigDataSize>;

// ---------------------------------------------------------------------------------------------------------------------
// Type1 IOMMU

/** cap_offset is meaningful only with VFIO_IOMMU_INFO_CAPS; the caps chain starts at 24 when it fits. */
export const VfioIommuType1Info = defineStruct(
  "vfio_iommu_type1_info",
  {
    argsz: u32(0),
    flags: u32(4),
    iova_pgsizes: u64(8),
    cap_offset: u32(16),
    pad: reserved(u32(20)),
  },
  { minsz: "iova_pgsizes" },
);
export type VfioIommuType1Info = StructValue<typeof VfioIommuType1Info>;

/** Element of vfio_iommu_type1_info_cap_iova_range.iova_ranges[]; `end` is inclusive. */
export const VfioIovaRange = defineStruct("vfio_iova_range", { start: u64(0), end: u64(8) });
export type VfioIovaRange = StructValue<typeof VfioIovaRange>;

/** Fixed part; `nr_iovas` VfioIovaRange follow at offset 16. */
export const VfioIommuType1InfoCapIovaRange = defineStruct("vfio_iommu_type1_info_cap_iova_range", {
  ...capHeader,
  nr_iovas: u32(8),
  reserved: reserved(u32(12)),
});
export type VfioIommuType1InfoCapIovaRange = StructValue<typeof VfioIommuType1InfoCapIovaRange>;

/** Offsets 12..15 are C's implicit padding before the u64. */
export const VfioIommuType1InfoCapMigration = defineStruct("vfio_iommu_type1_info_cap_migration", {
  ...capHeader,
  flags: u32(8),
  pgsize_bitmap: u64(16),
  max_dirty_bitmap_size: u64(24),
});
export type VfioIommuType1InfoCapMigration = StructValue<typeof VfioIommuType1InfoCapMigration>;

/** sizeof is 12; the chain builder pads it to 16 as vfio_info_cap_add does. */
export const VfioIommuType1InfoDmaAvail = defineStruct("vfio_iommu_type1_info_dma_avail", {
  ...capHeader,
  avail: u32(8),
});
export type VfioIommuType1InfoDmaAvail = StructValue<typeof VfioIommuType1InfoDmaAvail>;

export const VfioIommuType1DmaMap = defineStruct(
  "vfio_iommu_type1_dma_map",
  {
    argsz: u32(0),
    flags: u32(4),
    vaddr: u64(8),
    iova: u64(16),
    size: u64(24),
  },
  { minsz: "size" },
);
export type VfioIommuType1DmaMap = StructValue<typeof VfioIommuType1DmaMap>;

/**
 * With VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP a VfioBitmap follows at offset 24 (`minsz`), and argsz must cover it.
 * On return the kernel writes the number of bytes unmapped into `size`.
 */
export const VfioIommuType1DmaUnmap = defineStruct(
  "vfio_iommu_type1_dma_unmap",
  { argsz: u32(0), flags: u32(4), iova: u64(8), size: u64(16) },
  { minsz: "size" },
);
export type VfioIommuType1DmaUnmap = StructValue<typeof VfioIommuType1DmaUnmap>;

/** `data` is a user pointer to the bitmap (one bit per `pgsize` page); `size` is the bitmap's size in bytes. */
export const VfioBitmap = defineStruct("vfio_bitmap", { pgsize: u64(0), size: u64(8), data: u64(16) });
export type VfioBitmap = StructValue<typeof VfioBitmap>;

/** Header; with GET_BITMAP a VfioIommuType1DirtyBitmapGet follows at offset 8. */
export const VfioIommuType1DirtyBitmap = defineStruct(
  "vfio_iommu_type1_dirty_bitmap",
  { argsz: u32(0), flags: u32(4) },
  { minsz: "flags" },
);
export type VfioIommuType1DirtyBitmap = StructValue<typeof VfioIommuType1DirtyBitmap>;

/** { iova, size, struct vfio_bitmap bitmap } with the bitmap flattened. */
export const VfioIommuType1DirtyBitmapGet = defineStruct("vfio_iommu_type1_dirty_bitmap_get", {
  iova: u64(0),
  size: u64(8),
  bitmap_pgsize: u64(16),
  bitmap_size: u64(24),
  bitmap_data: u64(32),
});
export type VfioIommuType1DirtyBitmapGet = StructValue<typeof VfioIommuType1DirtyBitmapGet>;

/** Every codec above, for tests, documentation and the dashboard's struct viewer. */
export const VFIO_STRUCTS: readonly AnyStructCodec[] = [
  VfioInfoCapHeader,
  VfioGroupStatus,
  VfioDeviceInfo,
  VfioRegionInfo,
  VfioRegionSparseMmapArea,
  VfioRegionInfoCapSparseMmap,
  VfioRegionInfoCapType,
  VfioRegionGfxEdid,
  VfioIrqInfo,
  VfioIrqSet,
  VfioPciDependentDevice,
  VfioPciHotResetInfo,
  VfioPciHotReset,
  VfioDeviceGfxPlaneInfo,
  VfioDeviceIoeventfd,
  VfioDeviceFeature,
  VfioDeviceFeatureMigration,
  VfioDeviceFeatureMigState,
  VfioDeviceFeatureDmaLoggingControl,
  VfioDeviceFeatureDmaLoggingRange,
  VfioDeviceFeatureDmaLoggingReport,
  VfioDeviceFeatureMigDataSize,
  VfioIommuType1Info,
  VfioIovaRange,
  VfioIommuType1InfoCapIovaRange,
  VfioIommuType1InfoCapMigration,
  VfioIommuType1InfoDmaAvail,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
  VfioBitmap,
  VfioIommuType1DirtyBitmap,
  VfioIommuType1DirtyBitmapGet,
];

// ---------------------------------------------------------------------------------------------------------------------
// vfio_irq_set payload

/**
 * Bytes of `data[]` a vfio_irq_set carries for its DATA_* flag: 0 for NONE, `count` for BOOL (u8 each), 4 * `count` for
 * EVENTFD (s32 each). EINVAL unless exactly one DATA_* bit is set, as vfio_set_irqs_validate_and_prepare decides.
 */
export function vfioIrqSetDataSize(flags: number, count: number): number {
  switch (flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
    case VFIO_IRQ_SET_DATA_NONE:
      return 0;
    case VFIO_IRQ_SET_DATA_BOOL:
      return count;
    case VFIO_IRQ_SET_DATA_EVENTFD:
      return 4 * count;
    default:
      throw new KernelError(
        Errno.EINVAL,
        `vfio_irq_set.flags 0x${flags.toString(16)} must carry exactly one of DATA_NONE, DATA_BOOL, DATA_EVENTFD`,
      );
  }
}

/**
 * Builds a complete VFIO_DEVICE_SET_IRQS argument: the header with argsz = 20 + payload, then `data` as u8 bools or s32
 * eventfds per the DATA_* flag (ignored for DATA_NONE). EINVAL if `data` does not hold `count` values.
 */
export function encodeVfioIrqSet(header: Omit<StructInput<typeof VfioIrqSet>, "argsz">, data: readonly number[] = []) {
  const payload = vfioIrqSetDataSize(header.flags, header.count);
  const type = header.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
  if (type !== VFIO_IRQ_SET_DATA_NONE && data.length !== header.count) {
    throw new KernelError(Errno.EINVAL, `vfio_irq_set: count ${header.count} but ${data.length} data value(s) given`);
  }
  const out = new Uint8Array(VfioIrqSet.sizeof + payload);
  VfioIrqSet.encode({ ...header, argsz: out.length }, out);
  const base = VfioIrqSet.sizeof;
  if (type === VFIO_IRQ_SET_DATA_BOOL) {
    for (let i = 0; i < data.length; i++) out[base + i] = data[i] ? 1 : 0;
  } else if (type === VFIO_IRQ_SET_DATA_EVENTFD) {
    for (let i = 0; i < data.length; i++) {
      const fd = data[i]!;
      if (!Number.isInteger(fd) || fd < -0x8000_0000 || fd > 0x7fff_ffff) {
        throw new KernelError(Errno.EINVAL, `vfio_irq_set: eventfd ${fd} is not an s32`);
      }
      writeU32LE(out, base + 4 * i, fd >>> 0);
    }
  }
  return out;
}

/**
 * Reads the `data[]` of a vfio_irq_set whose header is at `offset`: booleans as 0/1, eventfds as s32 (-1 de-assigns),
 * nothing for DATA_NONE. EINVAL if the buffer ends before the payload does ("payload too short").
 */
export function decodeVfioIrqSetData(src: Uint8Array, hdr: VfioIrqSet, offset = 0): number[] {
  const size = vfioIrqSetDataSize(hdr.flags, hdr.count);
  const base = offset + VfioIrqSet.sizeof;
  if (src.length - base < size || hdr.argsz < VfioIrqSet.sizeof + size) {
    throw new KernelError(
      Errno.EINVAL,
      `vfio_irq_set: ${hdr.count} value(s) need ${size} payload bytes, argsz ${hdr.argsz} and buffer ${src.length - offset} give ${Math.min(hdr.argsz, src.length - offset) - VfioIrqSet.sizeof}`,
    );
  }
  const type = hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
  const out: number[] = [];
  if (type === VFIO_IRQ_SET_DATA_BOOL) for (let i = 0; i < hdr.count; i++) out.push(src[base + i]! ? 1 : 0);
  else if (type === VFIO_IRQ_SET_DATA_EVENTFD)
    for (let i = 0; i < hdr.count; i++) out.push(readS32LE(src, base + 4 * i));
  return out;
}

/** A VFIO_DEVICE_FEATURE argument: header (argsz = 8 + payload) followed by the feature's payload bytes. */
export function encodeVfioDeviceFeature(flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(VfioDeviceFeature.sizeof + payload.length);
  VfioDeviceFeature.encode({ argsz: out.length, flags }, out);
  out.set(payload, VfioDeviceFeature.sizeof);
  return out;
}
