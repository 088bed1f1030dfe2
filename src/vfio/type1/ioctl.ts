/**
 * The container ioctls of vfio type1 on byte buffers in Linux's layout: CHECK_EXTENSION, VFIO_IOMMU_GET_INFO,
 * VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA and VFIO_IOMMU_DIRTY_PAGES. Mirrors vfio_iommu_type1_ioctl,
 * vfio_iommu_type1_check_extension, vfio_iommu_type1_get_info, vfio_iommu_type1_map_dma, vfio_iommu_type1_unmap_dma,
 * vfio_iommu_type1_dirty_pages, and the argument checks at the top of vfio_dma_do_map and vfio_dma_do_unmap.
 *
 * This layer decodes each struct with the uapi codecs, checks argsz, flags and every argument in the kernel's order
 * (argsz and flags first), turns the u64 fields into exact numbers with their address kinds, calls the engine's typed
 * operations (mapping.ts, dirty-tracking.ts) and copies replies back to the caller's buffer. Errno of every check:
 * - MAP: argsz / unknown flags EINVAL; READ/WRITE with VADDR, or neither, EINVAL; size 0 or anything unaligned to the
 *   smallest page size EINVAL; IOVA or vaddr wrap EINVAL; then the engine (overlap, entries, ranges).
 * - UNMAP: argsz / unknown flags EINVAL; GET_DIRTY_BITMAP with ALL or VADDR EINVAL; the bitmap: argsz not covering it
 *   EINVAL, buffer too short EFAULT, not a user range EINVAL, size wrong for the range EINVAL; VADDR with emulated
 *   groups EBUSY; unaligned iova EINVAL; ALL needs iova 0 and size 0; size 0, unaligned or wrapping EINVAL; a bitmap
 *   while not tracking, or of another page size, EINVAL. The bytes unmapped are written back into `size` on success
 *   only.
 * - DIRTY_PAGES: v1 EACCES; argsz / unknown flags EINVAL; not exactly one of START, STOP, GET_BITMAP EINVAL;
 *   GET_BITMAP: argsz short EINVAL, buffer short EFAULT, wrap EINVAL, not a user range EINVAL, size wrong EINVAL, page
 *   size not the smallest EINVAL, unaligned or empty EINVAL, not tracking EINVAL.
 * - CHECK_EXTENSION: TYPE1, TYPE1v2 and UNMAP_ALL always; UPDATE_VADDR only from a backend without mdev groups (the
 *   kernel answers `iommu && !vfio_iommu_has_emulated(iommu)`, so a container with no backend yet hears 0);
 *   DMA_CC_IOMMU from a backend (VT-d enforces snoop control); the reserved nesting type never.
 * - Anything else (VFIO_IOMMU_ENABLE / DISABLE are SPAPR's) is ENOTTY. A struct argument that is an integer or
 *   shorter than the bytes the kernel copies in is EFAULT.
 *
 * What it does not do: look at the mappings. Everything that depends on them (overlap, entries left, allowed
 * ranges, bisected mappings, notifications) is the engine's, called once the arguments are known good.
 *
 * Difference, stated: addresses are exact only below 2^53, so a MAP_DMA whose IOVA or vaddr range reaches past that
 * fails with EOVERFLOW after Linux's own checks pass. Larger values elsewhere (UNMAP ranges, bitmap pointers) are
 * compared exactly.
 */
import { Errno, type Hva, hex, type Iova, KernelError } from "../../core/index.ts";
import { IOMMU_READ, IOMMU_WRITE, type IoctlArg } from "../../host/index.ts";
import {
  dmaAvailCap,
  iommuInfoReply,
  iovaRangeCap,
  migrationCap,
  VFIO_CHECK_EXTENSION,
  VFIO_DMA_CC_IOMMU,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_VADDR,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  VFIO_DMA_UNMAP_FLAG_VADDR,
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
  VFIO_UPDATE_VADDR,
  VfioBitmap,
  VfioIommuType1DirtyBitmap,
  VfioIommuType1DirtyBitmapGet,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
  VfioIommuType1Info,
  vfioIoctlName,
} from "../uapi/index.ts";
import { DIRTY_BITMAP_SIZE_MAX, verifyBitmapSize } from "./dirty.ts";
import type { DirtyTracking } from "./dirty-tracking.ts";
import { toU64 } from "./iova-ranges.ts";
import type { MappingEngine } from "./mapping.ts";
import { ffs64, type Type1State, U64_MAX } from "./state.ts";

const TWO_53 = 2n ** 53n;
/** access_ok on x86_64 (6.x): the end of the user range must stay below 2^63. */
const USER_PTR_LIMIT = 2n ** 63n;
const MAP_FLAGS = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | VFIO_DMA_MAP_FLAG_VADDR;
const UNMAP_FLAGS = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL;
const DIRTY_FLAGS =
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP | VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;

/** What the ioctls read of the container's state to check their arguments and answer GET_INFO. */
export type IoctlStateView = Pick<
  Type1State,
  "container" | "v2" | "pgsize" | "info" | "emulatedGroupCount" | "emulatedGroupIds"
>;
/** The mapping engine's operations the ioctls call. */
export type MapOps = Pick<MappingEngine, "map" | "updateVaddr" | "unmap">;
/** Dirty tracking's operations the ioctls call. */
export type DirtyOps = Pick<DirtyTracking, "tracking" | "start" | "stop" | "getBitmap">;

/**
 * vfio_iommu_type1_check_extension(iommu, ext); `container` undefined is the kernel's NULL iommu, what a container
 * with no backend yet learns.
 */
export function type1CheckExtension(
  container: Pick<Type1State, "emulatedGroupCount"> | undefined,
  ext: number,
): number {
  switch (ext) {
    case VFIO_TYPE1_IOMMU:
    case VFIO_TYPE1v2_IOMMU:
    case VFIO_UNMAP_ALL:
      return 1;
    case VFIO_UPDATE_VADDR:
      // mdev vendor drivers cannot pin or copy while vaddrs are being replaced.
      return container !== undefined && container.emulatedGroupCount === 0 ? 1 : 0;
    case VFIO_DMA_CC_IOMMU:
      // VT-d domains enforce coherency (snoop control); with no domain the kernel's loop also answers 1.
      return container !== undefined ? 1 : 0;
    default:
      return 0;
  }
}

/** The container ioctls of one type1 backend (see the module comment). */
export class ContainerIoctls {
  constructor(
    private readonly state: IoctlStateView,
    private readonly mapping: MapOps,
    private readonly dirty: DirtyOps,
  ) {}

  /** vfio_iommu_type1_ioctl. Returns 0 (or CHECK_EXTENSION's answer); throws KernelError with Linux's errno. */
  ioctl(request: number, arg: IoctlArg): number {
    switch (request) {
      case VFIO_CHECK_EXTENSION:
        return this.checkExtension(typeof arg === "number" ? arg : -1);
      case VFIO_IOMMU_GET_INFO:
        return this.getInfo(arg);
      case VFIO_IOMMU_MAP_DMA:
        return this.mapDma(arg);
      case VFIO_IOMMU_UNMAP_DMA:
        return this.unmapDma(arg);
      case VFIO_IOMMU_DIRTY_PAGES:
        return this.dirtyPages(arg);
      default:
        // VFIO_IOMMU_ENABLE / DISABLE are SPAPR's; type1 answers them, like anything else, with ENOTTY.
        throw new KernelError(
          Errno.ENOTTY,
          `${vfioIoctlName(request, "container")} is not a vfio-iommu-type1 container ioctl`,
        );
    }
  }

  /** vfio_iommu_type1_check_extension(iommu, ext). */
  checkExtension(ext: number): number {
    return type1CheckExtension(this.state, ext);
  }

  /** VFIO_IOMMU_GET_INFO (vfio_iommu_type1_get_info). */
  private getInfo(arg: IoctlArg): number {
    const buf = userStruct(arg, VfioIommuType1Info.minsz, "vfio_iommu_type1_info");
    const argsz = VfioIommuType1Info.getNumber(buf, "argsz");
    if (argsz < VfioIommuType1Info.minsz) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_GET_INFO: argsz ${argsz} is below the ${VfioIommuType1Info.minsz} bytes of vfio_iommu_type1_info up to iova_pgsizes`,
      );
    }
    const info = this.state.info();
    const caps = [
      migrationCap({
        flags: 0,
        pgsize_bitmap: BigInt(info.minPageSize),
        max_dirty_bitmap_size: DIRTY_BITMAP_SIZE_MAX,
      }),
      dmaAvailCap(info.dmaAvail),
    ];
    // A container with only mdev groups has an empty list, and the kernel then adds no IOVA_RANGE capability.
    if (info.iovaRanges.length > 0) {
      caps.push(iovaRangeCap(info.iovaRanges.map((r) => ({ start: toU64(r.start), end: toU64(r.end) }))));
    }
    const reply = iommuInfoReply({ flags: VFIO_IOMMU_INFO_PGSIZES, iova_pgsizes: info.pgsizeBitmap }, caps, argsz);
    copyToUser(buf, reply, "vfio_iommu_type1_info");
    return 0;
  }

  /** VFIO_IOMMU_MAP_DMA (vfio_iommu_type1_map_dma and the argument checks of vfio_dma_do_map). */
  private mapDma(arg: IoctlArg): number {
    const buf = userStruct(arg, VfioIommuType1DmaMap.minsz, "vfio_iommu_type1_dma_map");
    const map = VfioIommuType1DmaMap.decodeMin(buf);
    if (map.argsz < VfioIommuType1DmaMap.minsz || (map.flags & ~MAP_FLAGS) !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        map.argsz < VfioIommuType1DmaMap.minsz
          ? `VFIO_IOMMU_MAP_DMA: argsz ${map.argsz} is below the ${VfioIommuType1DmaMap.minsz} bytes of vfio_iommu_type1_dma_map`
          : `VFIO_IOMMU_MAP_DMA: flags ${hex(map.flags)} has bits other than READ, WRITE and VADDR`,
      );
    }
    const setVaddr = (map.flags & VFIO_DMA_MAP_FLAG_VADDR) !== 0;
    let prot = 0;
    if ((map.flags & VFIO_DMA_MAP_FLAG_WRITE) !== 0) prot |= IOMMU_WRITE;
    if ((map.flags & VFIO_DMA_MAP_FLAG_READ) !== 0) prot |= IOMMU_READ;
    if ((prot !== 0 && setVaddr) || (prot === 0 && !setVaddr)) {
      throw new KernelError(
        Errno.EINVAL,
        setVaddr
          ? "VFIO_IOMMU_MAP_DMA: VFIO_DMA_MAP_FLAG_VADDR replaces a vaddr and must not be combined with READ or WRITE"
          : "VFIO_IOMMU_MAP_DMA: flags grant neither READ nor WRITE: a mapping must allow the device some access",
      );
    }
    const pgsize = BigInt(this.state.pgsize());
    const { iova, vaddr, size } = map;
    if (size === 0n || ((size | iova | vaddr) & (pgsize - 1n)) !== 0n) {
      throw new KernelError(
        Errno.EINVAL,
        size === 0n
          ? "VFIO_IOMMU_MAP_DMA: size is 0"
          : `VFIO_IOMMU_MAP_DMA: iova ${hex(iova)}, vaddr ${hex(vaddr)} and size ${hex(size)} must all be multiples of the ${pgsize}-byte minimum page size`,
      );
    }
    if (iova + size - 1n > U64_MAX || vaddr + size - 1n > U64_MAX) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_MAP_DMA: [${hex(iova)}, +${hex(size)}) or vaddr ${hex(vaddr)} wraps around the 64-bit space`,
      );
    }
    if (iova + size > TWO_53 || vaddr + size > TWO_53) {
      throw new KernelError(
        Errno.EOVERFLOW,
        `VFIO_IOMMU_MAP_DMA: iova ${hex(iova)} / vaddr ${hex(vaddr)} + size ${hex(size)} reach beyond 2^53, which this model cannot represent`,
      );
    }
    const range = { iova: Number(iova) as Iova, size: Number(size) };
    if (setVaddr) this.mapping.updateVaddr(range, Number(vaddr) as Hva);
    else this.mapping.map(range, Number(vaddr) as Hva, prot);
    return 0;
  }

  /** VFIO_IOMMU_UNMAP_DMA (vfio_iommu_type1_unmap_dma and the argument checks of vfio_dma_do_unmap). */
  private unmapDma(arg: IoctlArg): number {
    const state = this.state;
    const buf = userStruct(arg, VfioIommuType1DmaUnmap.minsz, "vfio_iommu_type1_dma_unmap");
    const unmap = VfioIommuType1DmaUnmap.decodeMin(buf);
    const minsz = VfioIommuType1DmaUnmap.minsz;
    if (unmap.argsz < minsz || (unmap.flags & ~UNMAP_FLAGS) !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        unmap.argsz < minsz
          ? `VFIO_IOMMU_UNMAP_DMA: argsz ${unmap.argsz} is below the ${minsz} bytes of vfio_iommu_type1_dma_unmap`
          : `VFIO_IOMMU_UNMAP_DMA: flags ${hex(unmap.flags)} has bits other than GET_DIRTY_BITMAP, ALL and VADDR`,
      );
    }
    const getDirty = (unmap.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) !== 0;
    const all = (unmap.flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0;
    const invalidateVaddr = (unmap.flags & VFIO_DMA_UNMAP_FLAG_VADDR) !== 0;
    if (getDirty && (all || invalidateVaddr)) {
      throw new KernelError(
        Errno.EINVAL,
        "VFIO_IOMMU_UNMAP_DMA: GET_DIRTY_BITMAP cannot be combined with ALL or VADDR",
      );
    }
    let bitmap: VfioBitmap | undefined;
    if (getDirty) {
      if (unmap.argsz < minsz + VfioBitmap.sizeof) {
        throw new KernelError(
          Errno.EINVAL,
          `VFIO_IOMMU_UNMAP_DMA with GET_DIRTY_BITMAP: argsz ${unmap.argsz} does not cover the vfio_bitmap at offset ${minsz} (needs ${minsz + VfioBitmap.sizeof})`,
        );
      }
      if (buf.length < minsz + VfioBitmap.sizeof) {
        throw new KernelError(
          Errno.EFAULT,
          `VFIO_IOMMU_UNMAP_DMA: cannot read the vfio_bitmap at offset ${minsz}: the argument holds ${buf.length} bytes`,
        );
      }
      bitmap = VfioBitmap.decode(buf, minsz);
      checkUserRange(bitmap.data, bitmap.size, "VFIO_IOMMU_UNMAP_DMA dirty bitmap");
      verifyBitmapSize(
        bigToNumber(unmap.size >> ffs64(bitmap.pgsize)),
        bigToNumber(bitmap.size),
        "VFIO_IOMMU_UNMAP_DMA",
      );
    }
    // vfio_dma_do_unmap, before its walk.
    const iovaIn = unmap.iova;
    const sizeIn = unmap.size;
    if (invalidateVaddr && state.emulatedGroupCount > 0) {
      throw new KernelError(
        Errno.EBUSY,
        `VFIO_IOMMU_UNMAP_DMA with VADDR: container ${state.container} holds mediated (emulated IOMMU) group(s) ${state.emulatedGroupIds().join(", ")}, which cannot work while vaddrs are invalid`,
      );
    }
    const pgsize = BigInt(state.pgsize());
    if ((iovaIn & (pgsize - 1n)) !== 0n) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_UNMAP_DMA: iova ${hex(iovaIn)} is not a multiple of the ${pgsize}-byte minimum page size`,
      );
    }
    let size = sizeIn;
    if (all) {
      if (iovaIn !== 0n || sizeIn !== 0n) {
        throw new KernelError(
          Errno.EINVAL,
          `VFIO_IOMMU_UNMAP_DMA with ALL: iova (${hex(iovaIn)}) and size (${hex(sizeIn)}) must both be 0`,
        );
      }
      size = U64_MAX;
    } else if (size === 0n || (size & (pgsize - 1n)) !== 0n || iovaIn + size - 1n > U64_MAX) {
      throw new KernelError(
        Errno.EINVAL,
        size === 0n
          ? "VFIO_IOMMU_UNMAP_DMA: size is 0 (use VFIO_DMA_UNMAP_FLAG_ALL to unmap everything)"
          : (size & (pgsize - 1n)) !== 0n
            ? `VFIO_IOMMU_UNMAP_DMA: size ${hex(size)} is not a multiple of the ${pgsize}-byte minimum page size`
            : `VFIO_IOMMU_UNMAP_DMA: [${hex(iovaIn)}, +${hex(size)}) wraps around the 64-bit space`,
      );
    }
    if (bitmap !== undefined && (!this.dirty.tracking || bitmap.pgsize !== pgsize)) {
      throw new KernelError(
        Errno.EINVAL,
        !this.dirty.tracking
          ? "VFIO_IOMMU_UNMAP_DMA with GET_DIRTY_BITMAP: dirty page tracking is not started"
          : `VFIO_IOMMU_UNMAP_DMA with GET_DIRTY_BITMAP: bitmap page size ${bitmap.pgsize} must be the minimum page size ${pgsize}`,
      );
    }
    // Aligned values up to 2^64 are exact doubles; anything above 2^53 compares past every mapping.
    const range = { iova: Number(iovaIn) as Iova, end: all ? Number.POSITIVE_INFINITY : Number(iovaIn + size) };
    const data = bitmap === undefined ? undefined : (bigToNumber(bitmap.data) as Hva);
    const unmapped = this.mapping.unmap(range, unmap.flags, data);
    VfioIommuType1DmaUnmap.set(buf, "size", unmapped);
    return 0;
  }

  /** VFIO_IOMMU_DIRTY_PAGES (vfio_iommu_type1_dirty_pages). */
  private dirtyPages(arg: IoctlArg): number {
    const state = this.state;
    if (!state.v2) {
      throw new KernelError(
        Errno.EACCES,
        `VFIO_IOMMU_DIRTY_PAGES: container ${state.container} uses VFIO_TYPE1_IOMMU; dirty tracking needs VFIO_TYPE1v2_IOMMU`,
      );
    }
    const minsz = VfioIommuType1DirtyBitmap.minsz;
    const buf = userStruct(arg, minsz, "vfio_iommu_type1_dirty_bitmap");
    const dirty = VfioIommuType1DirtyBitmap.decodeMin(buf);
    if (dirty.argsz < minsz || (dirty.flags & ~DIRTY_FLAGS) !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        dirty.argsz < minsz
          ? `VFIO_IOMMU_DIRTY_PAGES: argsz ${dirty.argsz} is below ${minsz}`
          : `VFIO_IOMMU_DIRTY_PAGES: flags ${hex(dirty.flags)} has bits other than START, STOP and GET_BITMAP`,
      );
    }
    const f = dirty.flags;
    if (f === 0 || (f & (f - 1)) !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES: flags ${hex(f)} must be exactly one of START, STOP or GET_BITMAP`,
      );
    }
    if (f === VFIO_IOMMU_DIRTY_PAGES_FLAG_START) {
      this.dirty.start();
      return 0;
    }
    if (f === VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP) {
      this.dirty.stop();
      return 0;
    }
    // GET_BITMAP
    const get = VfioIommuType1DirtyBitmapGet;
    if (dirty.argsz - minsz < get.sizeof) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES with GET_BITMAP: argsz ${dirty.argsz} leaves ${dirty.argsz - minsz} bytes for the ${get.sizeof}-byte vfio_iommu_type1_dirty_bitmap_get`,
      );
    }
    if (buf.length < minsz + get.sizeof) {
      throw new KernelError(
        Errno.EFAULT,
        `VFIO_IOMMU_DIRTY_PAGES: cannot read vfio_iommu_type1_dirty_bitmap_get at offset ${minsz}: the argument holds ${buf.length} bytes`,
      );
    }
    const range = get.decode(buf, minsz);
    if (range.iova + range.size > U64_MAX) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES: [${hex(range.iova)}, +${hex(range.size)}) wraps around the 64-bit space`,
      );
    }
    checkUserRange(range.bitmap_data, range.bitmap_size, "VFIO_IOMMU_DIRTY_PAGES bitmap");
    verifyBitmapSize(
      bigToNumber(range.size >> ffs64(range.bitmap_pgsize)),
      bigToNumber(range.bitmap_size),
      "VFIO_IOMMU_DIRTY_PAGES",
    );
    const pgsize = BigInt(state.pgsize());
    if (range.bitmap_pgsize !== pgsize) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES: bitmap page size ${range.bitmap_pgsize} must be the minimum page size ${pgsize}`,
      );
    }
    if ((range.iova & (pgsize - 1n)) !== 0n || range.size === 0n || (range.size & (pgsize - 1n)) !== 0n) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES: iova ${hex(range.iova)} and size ${hex(range.size)} must be non-zero multiples of ${pgsize}`,
      );
    }
    if (!this.dirty.tracking) {
      throw new KernelError(Errno.EINVAL, "VFIO_IOMMU_DIRTY_PAGES with GET_BITMAP: dirty page tracking is not started");
    }
    this.dirty.getBitmap(bigToNumber(range.bitmap_data) as Hva, Number(range.iova), Number(range.iova + range.size));
    return 0;
  }
}

/** The struct a pointer argument points at; EFAULT when the argument is an integer or too short to read `minsz`. */
function userStruct(arg: IoctlArg, minsz: number, name: string): Uint8Array {
  if (typeof arg === "number") {
    throw new KernelError(Errno.EFAULT, `expected a pointer to struct ${name}, got the integer ${arg}`);
  }
  if (arg.length < minsz) {
    throw new KernelError(
      Errno.EFAULT,
      `cannot read ${minsz} bytes of struct ${name}: the argument holds only ${arg.length}`,
    );
  }
  return arg;
}

/** copy_to_user of an ioctl reply into the argument buffer; EFAULT past its end. */
function copyToUser(buf: Uint8Array, reply: Uint8Array, name: string): void {
  if (reply.length > buf.length) {
    throw new KernelError(
      Errno.EFAULT,
      `cannot write ${reply.length} bytes of struct ${name} back: the argument holds only ${buf.length} (argsz promises more than the buffer has)`,
    );
  }
  buf.set(reply, 0);
}

/** access_ok on x86_64: the user range must not wrap and must end below 2^63. */
function checkUserRange(ptr: bigint, size: bigint, what: string): void {
  if (ptr + size >= USER_PTR_LIMIT) {
    throw new KernelError(Errno.EINVAL, `${what}: [${hex(ptr)}, +${hex(size)}) is not a user address range`);
  }
}

/** A u64 as a number, saturating at 2^53 - 1 (a user pointer or count that large fails its later checks anyway). */
function bigToNumber(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}
