/**
 * Capability chains of VFIO INFO ioctls (device info, region info, type1 IOMMU info): building, replying, parsing.
 *
 * A chain is a list of capabilities placed after the fixed info struct. Each starts with vfio_info_cap_header
 * {u16 id, u16 version, u32 next}; `next` is the offset of the following capability from the start of the info
 * buffer (not from the capability), and 0 ends the chain. The info struct's `cap_offset` points at the first one and
 * its CAPS flag says a chain exists.
 *
 * Kernel behaviour reproduced (vfio_info_cap_add, vfio_info_cap_shift, and the INFO ioctls that use them):
 * - each capability is zero-padded to a multiple of 8 bytes, so every one starts 8-byte aligned;
 * - the chain is placed right after the info struct (cap_offset = sizeof(info));
 * - "buffer too small": when the caller's argsz cannot hold info + chain, the ioctl still succeeds: it sets the CAPS
 *   flag, raises argsz to the size needed, leaves cap_offset 0 and copies no chain, so the caller can retry;
 * - the info struct itself is copied back only up to min(argsz, sizeof(info)) bytes.
 *
 * Parsing is for the consumer side (the VMM, the vfio-user client): it walks the chain with bounds checks and requires
 * offsets to increase, which every kernel-built chain satisfies and which rules out loops.
 */
import {
  type Encodable,
  Errno,
  type FieldSpec,
  type FieldTable,
  KernelError,
  readU16LE,
  readU32LE,
  requireBytes,
  type StructCodec,
  type StructInput,
  writeU32LE,
} from "../../core/index.ts";
import {
  VFIO_CAP_VERSION_1,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
} from "./constants.ts";
import {
  VfioDeviceInfo,
  VfioInfoCapHeader,
  VfioIommuType1Info,
  VfioIommuType1InfoCapIovaRange,
  VfioIommuType1InfoCapMigration,
  VfioIommuType1InfoDmaAvail,
  VfioIovaRange,
  VfioRegionInfo,
  VfioRegionInfoCapSparseMmap,
  VfioRegionInfoCapType,
  VfioRegionSparseMmapArea,
} from "./structs.ts";

const HEADER = VfioInfoCapHeader.sizeof;
const align8 = (n: number): number => Math.ceil(n / 8) * 8;

// ---------------------------------------------------------------------------------------------------------------------
// Building one capability: complete bytes starting with its header; `next` is filled in when chained.

/** A capability with an arbitrary body (the bytes after the 8-byte header). */
export function infoCap(id: number, version: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER + body.length);
  VfioInfoCapHeader.encode({ id, version, next: 0 }, out);
  out.set(body, HEADER);
  return out;
}

/** VFIO_REGION_INFO_CAP_SPARSE_MMAP: the only parts of the region the user may mmap. */
export function sparseMmapCap(areas: readonly StructInput<typeof VfioRegionSparseMmapArea>[]): Uint8Array {
  const out = new Uint8Array(VfioRegionInfoCapSparseMmap.sizeof + areas.length * VfioRegionSparseMmapArea.sizeof);
  VfioRegionInfoCapSparseMmap.encode(
    { id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, version: VFIO_CAP_VERSION_1, next: 0, nr_areas: areas.length },
    out,
  );
  VfioRegionSparseMmapArea.encodeArray(areas, out, VfioRegionInfoCapSparseMmap.sizeof);
  return out;
}

/** VFIO_REGION_INFO_CAP_TYPE: what a device-specific region (index >= VFIO_PCI_NUM_REGIONS) is. */
export function regionTypeCap(type: number, subtype: number): Uint8Array {
  return VfioRegionInfoCapType.encode({
    id: VFIO_REGION_INFO_CAP_TYPE,
    version: VFIO_CAP_VERSION_1,
    next: 0,
    type,
    subtype,
  });
}

/** VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: header only; the MSI-X table in this BAR may be mmapped. */
export function msixMappableCap(): Uint8Array {
  return infoCap(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_CAP_VERSION_1);
}

/** VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: the IOVA ranges MAP_DMA accepts (`end` inclusive). */
export function iovaRangeCap(ranges: readonly StructInput<typeof VfioIovaRange>[]): Uint8Array {
  const out = new Uint8Array(VfioIommuType1InfoCapIovaRange.sizeof + ranges.length * VfioIovaRange.sizeof);
  VfioIommuType1InfoCapIovaRange.encode(
    { id: VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version: VFIO_CAP_VERSION_1, next: 0, nr_iovas: ranges.length },
    out,
  );
  VfioIovaRange.encodeArray(ranges, out, VfioIommuType1InfoCapIovaRange.sizeof);
  return out;
}

/** VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: dirty page tracking is supported, with these page sizes and bitmap limit. */
export function migrationCap(
  v: Omit<StructInput<typeof VfioIommuType1InfoCapMigration>, "id" | "version" | "next">,
): Uint8Array {
  return VfioIommuType1InfoCapMigration.encode({
    ...v,
    id: VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
    version: VFIO_CAP_VERSION_1,
    next: 0,
  });
}

/** VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: how many more MAP_DMA entries the container accepts. */
export function dmaAvailCap(avail: number): Uint8Array {
  return VfioIommuType1InfoDmaAvail.encode({
    id: VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    version: VFIO_CAP_VERSION_1,
    next: 0,
    avail,
  });
}

// ---------------------------------------------------------------------------------------------------------------------
// Chains

/** Bytes a chain of these capabilities occupies: each padded to a multiple of 8. */
export function capChainSize(caps: readonly Uint8Array[]): number {
  let n = 0;
  for (const c of caps) n += align8(c.length);
  return n;
}

/**
 * Lays the capabilities out back to back, each padded to 8 bytes, with `next` set to `base` + the following one's
 * position (0 for the last): `base` is where the chain will sit in the info buffer, as vfio_info_cap_shift arranges.
 * Writes into `into` at `at` (default: a new array) and returns the array written to.
 */
export function buildCapChain(caps: readonly Uint8Array[], base: number, into?: Uint8Array, at = 0): Uint8Array {
  const size = capChainSize(caps);
  const out = into ?? new Uint8Array(size);
  requireBytes(out, at, size, `capability chain of ${caps.length}`);
  out.fill(0, at, at + size);
  let pos = 0;
  for (let i = 0; i < caps.length; i++) {
    const c = caps[i]!;
    if (c.length < HEADER) {
      throw new KernelError(Errno.EINVAL, `capability ${i} has ${c.length} bytes, fewer than its 8-byte header`);
    }
    out.set(c, at + pos);
    const padded = align8(c.length);
    writeU32LE(out, at + pos + 4, i + 1 < caps.length ? base + pos + padded : 0);
    pos += padded;
  }
  return out;
}

type InfoFields = FieldTable & {
  readonly argsz: FieldSpec<"u32">;
  readonly flags: FieldSpec<"u32">;
  readonly cap_offset: FieldSpec<"u32">;
};
/** The three fields `infoWithCaps` rewrites, as a concrete table (a generic F defers their value types). */
type InfoHeaderView = StructCodec<{
  readonly argsz: FieldSpec<"u32", false>;
  readonly flags: FieldSpec<"u32", false>;
  readonly cap_offset: FieldSpec<"u32", false>;
}>;

/**
 * The bytes an INFO ioctl copies back to the caller, given the filled-in info struct, its capabilities and the caller's
 * argsz (`capsFlag` is the struct's CAPS bit). Without capabilities: the info, truncated to min(argsz, sizeof). With
 * capabilities that fit: CAPS set, cap_offset = sizeof, the info followed by the chain. With capabilities that do not
 * fit: CAPS set, argsz raised to sizeof + chain, cap_offset 0, no chain, truncated to min(argsz, sizeof).
 * The returned array's length is exactly what is copied; argsz in it is the caller's unless raised.
 */
export function infoWithCaps<F extends InfoFields>(
  codec: StructCodec<F>,
  info: Encodable<F>,
  caps: readonly Uint8Array[],
  argsz: number,
  capsFlag: number,
): Uint8Array {
  const chain = capChainSize(caps);
  const needed = codec.sizeof + chain;
  const fits = chain > 0 && argsz >= needed;
  const out = new Uint8Array(fits ? needed : codec.sizeof);
  codec.encode(info, out);
  const view = codec as unknown as InfoHeaderView;
  view.set(out, "argsz", argsz);
  view.set(out, "cap_offset", 0);
  if (chain === 0) return out.subarray(0, Math.min(argsz, codec.sizeof));
  view.set(out, "flags", (view.getNumber(out, "flags") | capsFlag) >>> 0);
  if (!fits) {
    view.set(out, "argsz", needed);
    return out.subarray(0, Math.min(argsz, codec.sizeof));
  }
  buildCapChain(caps, codec.sizeof, out, codec.sizeof);
  view.set(out, "cap_offset", codec.sizeof);
  return out;
}

/** VFIO_DEVICE_GET_INFO reply (argsz and cap_offset are filled in). */
export function deviceInfoReply(
  info: Omit<StructInput<typeof VfioDeviceInfo>, "argsz" | "cap_offset">,
  caps: readonly Uint8Array[],
  argsz: number,
): Uint8Array {
  return infoWithCaps(VfioDeviceInfo, { ...info, argsz, cap_offset: 0 }, caps, argsz, VFIO_DEVICE_FLAGS_CAPS);
}

/** VFIO_DEVICE_GET_REGION_INFO reply (argsz and cap_offset are filled in). */
export function regionInfoReply(
  info: Omit<StructInput<typeof VfioRegionInfo>, "argsz" | "cap_offset">,
  caps: readonly Uint8Array[],
  argsz: number,
): Uint8Array {
  return infoWithCaps(VfioRegionInfo, { ...info, argsz, cap_offset: 0 }, caps, argsz, VFIO_REGION_INFO_FLAG_CAPS);
}

/** VFIO_IOMMU_GET_INFO reply for type1 (argsz and cap_offset are filled in). */
export function iommuInfoReply(
  info: Omit<StructInput<typeof VfioIommuType1Info>, "argsz" | "cap_offset">,
  caps: readonly Uint8Array[],
  argsz: number,
): Uint8Array {
  return infoWithCaps(VfioIommuType1Info, { ...info, argsz, cap_offset: 0 }, caps, argsz, VFIO_IOMMU_INFO_CAPS);
}

// ---------------------------------------------------------------------------------------------------------------------
// Parsing

export interface InfoCapEntry {
  readonly id: number;
  readonly version: number;
  /** Where the capability starts in the info buffer. */
  readonly offset: number;
  /** The header's next: the following capability's offset, or 0. */
  readonly next: number;
  /** A view of the capability, header included, up to the next one (or the end of the buffer for the last). */
  readonly bytes: Uint8Array;
}

/**
 * Walks the chain starting at `capOffset` in an info buffer (0 = no chain). EINVAL if a header runs past the buffer
 * or a `next` does not move forward (a loop or a corrupt chain).
 */
export function parseCapChain(info: Uint8Array, capOffset: number): InfoCapEntry[] {
  const out: InfoCapEntry[] = [];
  let off = capOffset;
  while (off !== 0) {
    requireBytes(info, off, HEADER, `vfio_info_cap_header at offset ${off}`);
    const next = readU32LE(info, off + 4);
    if (next !== 0 && next <= off) {
      throw new KernelError(Errno.EINVAL, `capability at offset ${off} has next ${next}, which does not move forward`);
    }
    const end = next === 0 ? info.length : next;
    if (end > info.length) {
      throw new KernelError(
        Errno.EINVAL,
        `capability at offset ${off} has next ${next}, beyond the ${info.length}-byte buffer`,
      );
    }
    out.push({
      id: readU16LE(info, off),
      version: readU16LE(info, off + 2),
      offset: off,
      next,
      bytes: info.subarray(off, end),
    });
    off = next;
  }
  return out;
}

/** The first capability with this id, as QEMU's vfio_get_cap finds it, or undefined. */
export function findCap(info: Uint8Array, capOffset: number, id: number): InfoCapEntry | undefined {
  for (const c of parseCapChain(info, capOffset)) if (c.id === id) return c;
  return undefined;
}

/** Decodes a SPARSE_MMAP capability (from `InfoCapEntry.bytes`) with its areas. */
export function decodeSparseMmapCap(cap: Uint8Array): { nr_areas: number; areas: VfioRegionSparseMmapArea[] } {
  const fixed = VfioRegionInfoCapSparseMmap.decode(cap);
  return {
    nr_areas: fixed.nr_areas,
    areas: VfioRegionSparseMmapArea.decodeArray(cap, VfioRegionInfoCapSparseMmap.sizeof, fixed.nr_areas),
  };
}

/** Decodes an IOVA_RANGE capability (from `InfoCapEntry.bytes`) with its ranges. */
export function decodeIovaRangeCap(cap: Uint8Array): { nr_iovas: number; ranges: VfioIovaRange[] } {
  const fixed = VfioIommuType1InfoCapIovaRange.decode(cap);
  return {
    nr_iovas: fixed.nr_iovas,
    ranges: VfioIovaRange.decodeArray(cap, VfioIommuType1InfoCapIovaRange.sizeof, fixed.nr_iovas),
  };
}
