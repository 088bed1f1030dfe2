/**
 * The VFIO type1 IOMMU backend (drivers/vfio/vfio_iommu_type1.c): the container ioctls MAP_DMA, UNMAP_DMA, GET_INFO
 * and DIRTY_PAGES on byte buffers in Linux's layout, group attach/detach, and vfio_pin_pages / vfio_unpin_pages /
 * vfio_dma_rw for emulated-IOMMU (mdev) devices.
 *
 * The point of the seed, kept visible here: a container whose groups are all emulated pins nothing at MAP_DMA time.
 * It records the mapping (IOVA -> the caller's virtual address) and the vendor driver pins on demand, page by page.
 * Only when an IOMMU-backed group is attached does MAP_DMA pin every page (in batches of 512, as vfio_batch) and map
 * IOVA -> frame into the container's 'unmanaged' IOMMU domain, merging physically contiguous frames into one
 * iommu_map call so the page table can use superpages.
 *
 * Behaviour reproduced from Linux (checked against the current vfio_iommu_type1.c):
 * - CHECK_EXTENSION: TYPE1, TYPE1v2 and UNMAP_ALL always; UPDATE_VADDR only from a backend without mdev groups (the
 *   kernel answers `iommu && !vfio_iommu_has_emulated(iommu)`, so a container with no backend yet hears 0);
 *   DMA_CC_IOMMU from a backend (VT-d enforces snoop control); the reserved nesting type never.
 * - Validation order and errno of every ioctl, argsz/flags first. MAP: argsz/unknown flags EINVAL; READ/WRITE with
 *   VADDR, or neither, EINVAL; size 0 or anything unaligned EINVAL; IOVA or vaddr wrap EINVAL; then for VADDR (update)
 *   ENOENT/EINVAL, otherwise overlap EEXIST, no entries left ENOSPC (dma_entry_limit, default 65535), outside the
 *   allowed IOVA ranges EINVAL.
 * - UNMAP: v2 refuses a range that bisects a mapping (EINVAL) and reports 0 bytes when nothing is mapped; v1 removes
 *   every mapping whose first page is in the range, and nothing when the range starts inside a mapping. UNMAP_ALL
 *   needs iova 0 and size 0. VADDR invalidates vaddrs (EBUSY with emulated groups present), reverting on a mapping
 *   already invalid. The bytes unmapped are written back into `size` on success only.
 * - Mappings with pages pinned by emulated devices: every registered device's dma_unmap(iova, size) is called and the
 *   unmap retried; Linux BUG()s after 10 retries. Here the 11th failed notification ends the ioctl with EBUSY and a
 *   message naming the devices still holding pins (the mappings already removed stay removed), plus a
 *   "vfio.type1.dma_unmap.stuck" trace event.
 * - Locked memory (vfio_lock_acct): each page pinned is charged once to the mapping's address space, whether the
 *   IOMMU path, an emulated device, or both pinned it; charges are undone as pins go. Past RLIMIT_MEMLOCK without
 *   CAP_IPC_LOCK MAP_DMA and vfio_pin_pages fail with ENOMEM and undo everything they did.
 * - Attaching an IOMMU-backed group narrows the allowed ranges to the domain aperture minus the group's reserved
 *   regions (EINVAL if existing mappings conflict) and replays existing mappings into a new domain. Detaching the last
 *   one unmaps the domain and unpins, keeping emulated pins (and their charge) when emulated groups remain.
 * - Dirty tracking (v2 only): START marks pinned pages dirty, pins and vfio_dma_rw writes mark pages while it runs,
 *   and a mapping an IOMMU-backed group without selective pinning can reach is reported wholly dirty.
 *
 * Differences, stated:
 * - One IOMMU domain per container (Linux makes one per incompatible IOMMU; this host has one IOMMU, so Linux would
 *   also end up with one).
 * - The "current" task of an ioctl is the address space the container was opened with; VFIO_DMA_MAP_FLAG_VADDR
 *   therefore never changes a mapping's owner (vfio_change_dma_owner).
 * - Addresses are exact only below 2^53: a MAP_DMA whose IOVA or vaddr range reaches past that fails with EOVERFLOW
 *   after Linux's own checks pass. Larger values elsewhere (UNMAP ranges, bitmap pointers) are compared exactly.
 * - vfio_pin_pages on an IOVA that is not page aligned pins the page containing it (Linux keys its pfn_list by the
 *   exact IOVA; every in-tree caller passes aligned ones).
 * - Kernel WARNs (unpinning unmapped IOVAs, removing a mapping that still has emulated pins at release) are
 *   "vfio.type1.warn" trace events and counted in `stats().warnings`; the pins are then released so that nothing
 *   leaks, where Linux would leak them.
 * - Interrupt remapping (EPERM without allow_unsafe_interrupts), reserved (non-struct-page) pfns and the
 *   disable_hugepages parameter are not modelled.
 *
 * Invariants (checked by `checkInvariants`): mappings never overlap; each mapping's `lockedVm` equals the number of its
 * pages pinned by the IOMMU path or by an emulated device (counted once); the sum over mappings of one address space
 * is what this container charged it; with a domain, every mapping is IOMMU-mapped; every pinned frame is pinned in
 * physical memory.
 */
import {
  defineTraceEvents,
  Errno,
  type Hpa,
  type Hva,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type Tracer,
} from "../../core/index.ts";
import {
  type AddressSpace,
  IOMMU_READ,
  IOMMU_WRITE,
  type IoctlArg,
  type Iommu,
  type IommuDomain,
  type PhysicalMemory,
} from "../../host/index.ts";
import type { VfioEmulatedDevice, VfioGroupAttachment, VfioIommuBackend, VfioIommuDriver } from "../driver.ts";
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
  vfioExtensionName,
  vfioIoctlName,
} from "../uapi/index.ts";
import {
  allocDirtyBitmap,
  copyBitsToUser,
  countBits,
  DIRTY_BITMAP_SIZE_MAX,
  setBit,
  setBits,
  verifyBitmapSize,
} from "./dirty.ts";
import { DmaTree, PinIndex, PinPool, VfioDma } from "./dma-map.ts";
import { IOVA_TOP, IovaRanges, toU64 } from "./iova-ranges.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio.type1.open": { container: number; pid: number; v2: boolean };
    "vfio.type1.release": { container: number; mappings: number; pinnedPages: number };
    "vfio.type1.map": {
      container: number;
      iova: number;
      vaddr: number;
      size: number;
      prot: string;
      pinned: number;
      lockedVm: number;
    };
    "vfio.type1.map.vaddr": { container: number; iova: number; size: number; vaddr: number };
    "vfio.type1.unmap": { container: number; iova: number; size: number; unmapped: number; mappings: number };
    "vfio.type1.unmap.vaddr": { container: number; iova: number; size: number; invalidated: number };
    "vfio.type1.pin": { container: number; device: string; iova: number; npage: number; newPins: number };
    "vfio.type1.unpin": { container: number; device: string; iova: number; npage: number; released: number };
    "vfio.type1.dma_unmap.notify": { container: number; device: string; iova: number; size: number; attempt: number };
    "vfio.type1.dma_unmap.stuck": {
      container: number;
      iova: number;
      size: number;
      devices: readonly string[];
      pinnedPages: number;
      notifications: number;
    };
    "vfio.type1.locked_vm": { container: number; pid: number; delta: number; lockedVm: number };
    "vfio.type1.dirty.start": { container: number; mappings: number; pinnedPages: number };
    "vfio.type1.dirty.stop": { container: number; mappings: number };
    "vfio.type1.dirty.bitmap": { container: number; iova: number; size: number; dirtyPages: number };
    "vfio.type1.group.attach": { container: number; group: number; type: string; domain: number };
    "vfio.type1.group.detach": { container: number; group: number; type: string; domain: number };
    "vfio.type1.domain.alloc": { container: number; domain: number };
    "vfio.type1.domain.free": { container: number; domain: number };
    "vfio.type1.replay": { container: number; domain: number; mappings: number; pages: number };
    "vfio.type1.iova_ranges": { container: number; ranges: string };
    "vfio.type1.device.register": { container: number; device: string; devices: number };
    "vfio.type1.device.unregister": { container: number; device: string; devices: number };
    "vfio.type1.error": { container: number; op: string; errno: string; message: string };
    "vfio.type1.warn": { container: number; message: string };
  }
}
defineTraceEvents("vfio", {
  "vfio.type1.open": "container {container}: type1 backend opened by process {pid} (v2 {v2})",
  "vfio.type1.release":
    "container {container}: released, {mappings} mapping(s) and {pinnedPages} pinned page(s) undone",
  "vfio.type1.map":
    "container {container}: MAP_DMA iova {iova} -> vaddr {vaddr}, {size} bytes {prot}: {pinned} page(s) pinned, locked_vm {lockedVm}",
  "vfio.type1.map.vaddr": "container {container}: vaddr of [{iova}, +{size}) updated to {vaddr}",
  "vfio.type1.unmap":
    "container {container}: UNMAP_DMA iova {iova} size {size}: {unmapped} bytes in {mappings} mapping(s)",
  "vfio.type1.unmap.vaddr": "container {container}: vaddr of {invalidated} bytes from iova {iova} invalidated",
  "vfio.type1.pin": "container {container}: {device} pinned {npage} page(s) at iova {iova} ({newPins} new)",
  "vfio.type1.unpin": "container {container}: {device} unpinned {npage} page(s) at iova {iova} ({released} released)",
  "vfio.type1.dma_unmap.notify":
    "container {container}: dma_unmap({iova}, {size}) to {device} (notification {attempt})",
  "vfio.type1.dma_unmap.stuck":
    "container {container}: mapping [{iova}, +{size}) still has {pinnedPages} pinned page(s) after {notifications} dma_unmap notifications; held by {devices}",
  "vfio.type1.locked_vm": "container {container}: process {pid} locked_vm {delta} -> {lockedVm} page(s)",
  "vfio.type1.dirty.start":
    "container {container}: dirty tracking started on {mappings} mapping(s), {pinnedPages} pinned page(s) dirty",
  "vfio.type1.dirty.stop": "container {container}: dirty tracking stopped ({mappings} mapping(s))",
  "vfio.type1.dirty.bitmap": "container {container}: dirty bitmap of [{iova}, +{size}): {dirtyPages} dirty page(s)",
  "vfio.type1.group.attach": "container {container}: group {group} ({type}) attached, IOMMU domain {domain}",
  "vfio.type1.group.detach": "container {container}: group {group} ({type}) detached from IOMMU domain {domain}",
  "vfio.type1.domain.alloc": "container {container}: IOMMU domain {domain} allocated",
  "vfio.type1.domain.free": "container {container}: IOMMU domain {domain} freed",
  "vfio.type1.replay": "container {container}: {mappings} mapping(s), {pages} page(s) replayed into domain {domain}",
  "vfio.type1.iova_ranges": "container {container}: allowed IOVA ranges now {ranges}",
  "vfio.type1.device.register": "container {container}: {device} registered for dma_unmap ({devices} registered)",
  "vfio.type1.device.unregister": "container {container}: {device} unregistered ({devices} registered)",
  "vfio.type1.error": "container {container}: {op} failed with {errno}: {message}",
  "vfio.type1.warn": "container {container}: WARNING: {message}",
});

/** VFIO_PIN_PAGES_MAX_ENTRIES (include/linux/vfio.h): PAGE_SIZE / sizeof(unsigned long). */
export const VFIO_PIN_PAGES_MAX_ENTRIES = 512;
/** The module parameter dma_entry_limit's default (U16_MAX). */
export const DEFAULT_DMA_ENTRY_LIMIT = 65535;
/** Pages pinned per pin_user_pages call while mapping (VFIO_BATCH_MAX_CAPACITY: a page of page pointers). */
export const VFIO_BATCH_MAX_CAPACITY = 512;
/** Linux BUG()s when a mapping still holds emulated pins after this many retried notifications. */
export const DMA_UNMAP_MAX_RETRIES = 10;

/** PAGE_MASK as a 64-bit value: the pgsize_bitmap of a container without an IOMMU domain. */
const PAGE_MASK_U64 = 0xffff_ffff_ffff_f000n;
const U64_MAX = 0xffff_ffff_ffff_ffffn;
const TWO_53 = 2n ** 53n;
/** access_ok on x86_64 (6.x): the end of the user range must stay below 2^63. */
const USER_PTR_LIMIT = 2n ** 63n;
const MAP_FLAGS = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | VFIO_DMA_MAP_FLAG_VADDR;
const UNMAP_FLAGS = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL;
const DIRTY_FLAGS =
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START | VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP | VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;

export interface Type1Options {
  readonly iommu: Iommu;
  readonly physmem: PhysicalMemory;
  readonly tracer: Tracer;
  /** Mappings per container (the dma_entry_limit module parameter); default 65535. */
  readonly dmaEntryLimit?: number;
}

/** A snapshot of one mapping, for tests and the dashboard. */
export interface Type1MappingInfo {
  readonly iova: number;
  readonly vaddr: number;
  readonly size: number;
  readonly prot: number;
  readonly iommuMapped: boolean;
  readonly vaddrInvalid: boolean;
  /** Pages charged to locked_vm for this mapping. */
  readonly lockedVm: number;
  /** Pages pinned for the IOMMU domain. */
  readonly iommuPinnedPages: number;
  /** Pages pinned by emulated devices (each counted once, whatever its reference count). */
  readonly emulatedPinnedPages: number;
  /** Emulated pins by IOVA with their reference counts. */
  readonly pins: readonly { readonly iova: number; readonly pfn: number; readonly refCount: number }[];
}

export interface Type1Stats {
  readonly container: number;
  readonly v2: boolean;
  readonly mappings: number;
  readonly dmaAvail: number;
  readonly mappedBytes: number;
  /** Sum of the mappings' locked_vm charges. */
  readonly lockedVm: number;
  readonly iommuPinnedPages: number;
  readonly emulatedPinnedPages: number;
  readonly vaddrInvalid: number;
  readonly dirtyTracking: boolean;
  readonly domain: number | undefined;
  readonly iommuGroups: readonly number[];
  readonly emulatedGroups: readonly number[];
  readonly devices: readonly string[];
  readonly iovaRanges: string;
  readonly warnings: number;
}

interface GroupState {
  readonly attachment: VfioGroupAttachment;
  /** The group dirties only pages it pins (vfio_iommu_group.pinned_page_dirty_scope). */
  pinnedScope: boolean;
}

/** The type1 IOMMU driver: registered with vfio-core, it opens one backend per container that selects it. */
export interface Type1Driver extends VfioIommuDriver {
  open(ext: number, mm: AddressSpace): Type1Backend;
}

/** vfio_iommu_driver_ops_type1. */
export function type1Driver(opts: Type1Options): Type1Driver {
  const limit = opts.dmaEntryLimit ?? DEFAULT_DMA_ENTRY_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 0 || limit > 0xffff_ffff) {
    throw new KernelError(Errno.EINVAL, `dma_entry_limit ${limit} must be an unsigned 32-bit integer`);
  }
  let containers = 0;
  return {
    name: "vfio-iommu-type1",
    // vfio_iommu_type1_check_extension(NULL, ext): what a container with no backend yet learns.
    checkExtension(ext: number): number {
      return ext === VFIO_TYPE1_IOMMU || ext === VFIO_TYPE1v2_IOMMU || ext === VFIO_UNMAP_ALL ? 1 : 0;
    },
    open(ext: number, mm: AddressSpace): Type1Backend {
      if (ext !== VFIO_TYPE1_IOMMU && ext !== VFIO_TYPE1v2_IOMMU) {
        throw new KernelError(
          Errno.EINVAL,
          `vfio-iommu-type1 cannot open ${vfioExtensionName(ext)}: use VFIO_TYPE1_IOMMU or VFIO_TYPE1v2_IOMMU`,
        );
      }
      return new Type1Backend({ ...opts, dmaEntryLimit: limit }, ext === VFIO_TYPE1v2_IOMMU, mm, ++containers);
    },
  };
}

/** struct vfio_iommu: one container's type1 state. */
export class Type1Backend implements VfioIommuBackend {
  readonly container: number;
  readonly v2: boolean;
  /** The address space of the process that opened the container: the "current" task of its ioctls. */
  readonly mm: AddressSpace;
  private readonly iommu: Iommu;
  private readonly physmem: PhysicalMemory;
  private readonly tracer: Tracer;
  private readonly dmas = new DmaTree();
  private readonly pool = new PinPool();
  private dmaAvail: number;
  private vaddrInvalidCount = 0;
  private pgsizeBitmap = PAGE_MASK_U64;
  private iovaRanges = new IovaRanges();
  private domain: IommuDomain | undefined = undefined;
  private readonly iommuGroups = new Map<number, GroupState>();
  private readonly emulatedGroups = new Map<number, GroupState>();
  private numNonPinnedGroups = 0;
  private dirtyTracking = false;
  private readonly devices: VfioEmulatedDevice[] = [];
  private warnings = 0;
  private released = false;
  /** Frames of one pin batch (vfio_batch.pages). */
  private readonly batch = new Float64Array(VFIO_BATCH_MAX_CAPACITY);
  /** Frames handed to unpin_user_pages. */
  private readonly scratch = new Float64Array(VFIO_BATCH_MAX_CAPACITY);
  private readonly one = new Float64Array(1);

  /** @internal Use `type1Driver(...).open`. */
  constructor(opts: Type1Options & { dmaEntryLimit: number }, v2: boolean, mm: AddressSpace, container: number) {
    this.iommu = opts.iommu;
    this.physmem = opts.physmem;
    this.tracer = opts.tracer;
    this.dmaAvail = opts.dmaEntryLimit;
    this.v2 = v2;
    this.mm = mm;
    this.container = container;
    if (this.tracer.enabled) this.tracer.emit("vfio.type1.open", { container, pid: mm.pid, v2 });
  }

  // ---- container ioctls ----------------------------------------------------------------------------------------------

  /** vfio_iommu_type1_ioctl. Returns 0 (or CHECK_EXTENSION's answer); throws KernelError with Linux's errno. */
  ioctl(request: number, arg: IoctlArg): number {
    try {
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
    } catch (e) {
      this.traceError(vfioIoctlName(request, "container"), e);
      throw e;
    }
  }

  /** vfio_iommu_type1_check_extension(iommu, ext). */
  checkExtension(ext: number): number {
    switch (ext) {
      case VFIO_TYPE1_IOMMU:
      case VFIO_TYPE1v2_IOMMU:
      case VFIO_UNMAP_ALL:
        return 1;
      case VFIO_UPDATE_VADDR:
        // mdev vendor drivers cannot pin or copy while vaddrs are being replaced.
        return this.emulatedGroups.size === 0 ? 1 : 0;
      case VFIO_DMA_CC_IOMMU:
        // VT-d domains enforce coherency (snoop control); with no domain the kernel's loop also answers 1.
        return 1;
      default:
        return 0;
    }
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
    const caps = [
      migrationCap({ flags: 0, pgsize_bitmap: BigInt(this.pgsize()), max_dirty_bitmap_size: DIRTY_BITMAP_SIZE_MAX }),
      dmaAvailCap(this.dmaAvail),
    ];
    // A container with only mdev groups has an empty list, and the kernel then adds no IOVA_RANGE capability.
    if (!this.iovaRanges.isEmpty()) {
      caps.push(iovaRangeCap(this.iovaRanges.ranges().map((r) => ({ start: toU64(r.start), end: toU64(r.end) }))));
    }
    const reply = iommuInfoReply({ flags: VFIO_IOMMU_INFO_PGSIZES, iova_pgsizes: this.pgsizeBitmap }, caps, argsz);
    copyToUser(buf, reply, "vfio_iommu_type1_info");
    return 0;
  }

  /** VFIO_IOMMU_MAP_DMA (vfio_iommu_type1_map_dma + vfio_dma_do_map). */
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
    const pgsize = BigInt(this.pgsize());
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
    const start = Number(iova);
    const len = Number(size);
    const va = Number(vaddr);
    const found = this.dmas.find(start, len);
    if (setVaddr) return this.updateVaddr(found, start, len, va);
    if (found !== undefined) {
      throw new KernelError(
        Errno.EEXIST,
        `VFIO_IOMMU_MAP_DMA: [${hex(start)}, ${hex(start + len)}) overlaps the existing mapping ${found.describe()}`,
      );
    }
    if (this.dmaAvail === 0) {
      throw new KernelError(
        Errno.ENOSPC,
        `VFIO_IOMMU_MAP_DMA: container ${this.container} already holds ${this.dmas.size} mappings, its dma_entry_limit`,
      );
    }
    if (!this.iovaRanges.allows(start, start + len - 1)) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_MAP_DMA: [${hex(start)}, ${hex(start + len)}) is outside the allowed IOVA ranges ${this.iovaRanges}`,
      );
    }
    const dma = new VfioDma(start, va, len, prot, this.mm);
    if (this.domain !== undefined) {
      this.pinMapDma(dma, this.domain, `VFIO_IOMMU_MAP_DMA of ${dma.describe()}`);
      dma.iommuMapped = true;
    }
    if (this.dirtyTracking) {
      try {
        dma.bitmap = allocDirtyBitmap(dma.pages, `VFIO_IOMMU_MAP_DMA of ${dma.describe()}`);
      } catch (e) {
        this.unmapUnpin(dma, true);
        throw e;
      }
    }
    this.dmas.insert(dma);
    this.dmaAvail--;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.map", {
        container: this.container,
        iova: start,
        vaddr: va,
        size: len,
        prot: protName(prot),
        pinned: dma.iommuPinnedPages,
        lockedVm: this.mm.lockedVm(),
      });
    }
    return 0;
  }

  /** MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR: a new vaddr for a mapping whose vaddr was invalidated. */
  private updateVaddr(dma: VfioDma | undefined, iova: number, size: number, vaddr: number): number {
    if (dma === undefined) {
      throw new KernelError(
        Errno.ENOENT,
        `VFIO_IOMMU_MAP_DMA with VADDR: no mapping at [${hex(iova)}, ${hex(iova + size)}) to update`,
      );
    }
    if (!dma.vaddrInvalid || dma.iova !== iova || dma.size !== size) {
      throw new KernelError(
        Errno.EINVAL,
        !dma.vaddrInvalid
          ? `VFIO_IOMMU_MAP_DMA with VADDR: mapping ${dma.describe()} still has a valid vaddr (unmap it with VFIO_DMA_UNMAP_FLAG_VADDR first)`
          : `VFIO_IOMMU_MAP_DMA with VADDR: [${hex(iova)}, ${hex(iova + size)}) must match the mapping ${dma.describe()} exactly`,
      );
    }
    dma.vaddr = vaddr;
    dma.vaddrInvalid = false;
    this.vaddrInvalidCount--;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.map.vaddr", { container: this.container, iova, size, vaddr });
    }
    return 0;
  }

  /** VFIO_IOMMU_UNMAP_DMA (vfio_iommu_type1_unmap_dma + vfio_dma_do_unmap). */
  private unmapDma(arg: IoctlArg): number {
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
    const unmapped = this.doUnmap(unmap.iova, unmap.size, unmap.flags, bitmap);
    VfioIommuType1DmaUnmap.set(buf, "size", unmapped);
    return 0;
  }

  /** vfio_dma_do_unmap; returns the bytes unmapped (or whose vaddr was invalidated). */
  private doUnmap(iovaIn: bigint, sizeIn: bigint, flags: number, bitmap: VfioBitmap | undefined): number {
    const all = (flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0;
    const invalidateVaddr = (flags & VFIO_DMA_UNMAP_FLAG_VADDR) !== 0;
    if (invalidateVaddr && this.emulatedGroups.size > 0) {
      throw new KernelError(
        Errno.EBUSY,
        `VFIO_IOMMU_UNMAP_DMA with VADDR: container ${this.container} holds mediated (emulated IOMMU) group(s) ${[...this.emulatedGroups.keys()].join(", ")}, which cannot work while vaddrs are invalid`,
      );
    }
    const pgsize = BigInt(this.pgsize());
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
    if (bitmap !== undefined && (!this.dirtyTracking || bitmap.pgsize !== pgsize)) {
      throw new KernelError(
        Errno.EINVAL,
        !this.dirtyTracking
          ? "VFIO_IOMMU_UNMAP_DMA with GET_DIRTY_BITMAP: dirty page tracking is not started"
          : `VFIO_IOMMU_UNMAP_DMA with GET_DIRTY_BITMAP: bitmap page size ${bitmap.pgsize} must be the minimum page size ${pgsize}`,
      );
    }
    // Numbers from here: exact below 2^53, and anything above compares past every mapping (which all end below it).
    const iova = Number(iovaIn);
    const end = all ? Number.POSITIVE_INFINITY : Number(iovaIn + size);
    let unmapped = 0;
    let mappings = 0;
    let last: VfioDma | undefined;
    let retries = 0;
    for (;;) {
      // `again:` in the kernel: after a dma_unmap notification the tree may have changed, so start over.
      if (this.v2 && !all) {
        const head = this.dmas.find(iova, 1);
        if (head !== undefined && head.iova !== iova) {
          throw new KernelError(
            Errno.EINVAL,
            `VFIO_IOMMU_UNMAP_DMA: [${hex(iova)}, ${hexEnd(end)}) starts inside the mapping ${head.describe()}; a type1v2 unmap must cover whole mappings`,
          );
        }
        const tail = this.dmas.find(end - 1, 0);
        if (tail !== undefined && tail.end !== end) {
          throw new KernelError(
            Errno.EINVAL,
            `VFIO_IOMMU_UNMAP_DMA: [${hex(iova)}, ${hexEnd(end)}) ends inside the mapping ${tail.describe()}; a type1v2 unmap must cover whole mappings`,
          );
        }
      }
      let restart = false;
      const first = this.dmas.firstFrom(iova);
      let dma = first;
      while (dma !== undefined) {
        if (dma.iova >= end) break;
        // v1: a request that starts inside a mapping unmaps nothing (success, size 0).
        if (!this.v2 && iova > dma.iova) break;
        if (invalidateVaddr) {
          if (dma.vaddrInvalid) {
            // Undo this call's invalidations, as the kernel does.
            for (let d = first; d !== undefined && d !== dma; d = this.dmas.next(d)) {
              d.vaddrInvalid = false;
              this.vaddrInvalidCount--;
            }
            throw new KernelError(
              Errno.EINVAL,
              `VFIO_IOMMU_UNMAP_DMA with VADDR: the vaddr of mapping ${dma.describe()} is already invalid`,
            );
          }
          dma.vaddrInvalid = true;
          this.vaddrInvalidCount++;
          unmapped += dma.size;
          mappings++;
          dma = this.dmas.next(dma);
          continue;
        }
        if (dma.pinnedPages > 0) {
          if (last === dma) {
            if (++retries > DMA_UNMAP_MAX_RETRIES) this.stuck(dma, retries);
          } else {
            last = dma;
            retries = 0;
          }
          this.notifyDmaUnmap(dma, retries + 1);
          restart = true;
          break;
        }
        if (bitmap !== undefined) this.updateUserBitmap(bitmap.data, dma, iova);
        unmapped += dma.size;
        mappings++;
        const next = this.dmas.next(dma);
        this.removeDma(dma);
        dma = next;
      }
      if (!restart) break;
    }
    if (this.tracer.enabled) {
      // -1 stands for "everything" (UNMAP_ALL), whose size does not fit a number.
      const traceSize = all || iovaIn + size > TWO_53 ? -1 : Number(size);
      if (invalidateVaddr) {
        this.tracer.emit("vfio.type1.unmap.vaddr", {
          container: this.container,
          iova,
          size: traceSize,
          invalidated: unmapped,
        });
      } else {
        this.tracer.emit("vfio.type1.unmap", { container: this.container, iova, size: traceSize, unmapped, mappings });
      }
    }
    return unmapped;
  }

  /** The loud end of a mapping whose pins the devices will not release (Linux: BUG_ON(++retries > 10)). */
  private stuck(dma: VfioDma, notifications: number): never {
    const holders: string[] = [];
    dma.holderDevices.forEach((dev, i) => {
      const n = dma.holderCounts[i]!;
      if (n > 0) holders.push(`${dev.name} (${n})`);
    });
    const names = holders.length > 0 ? holders : this.devices.map((d) => `${d.name} (unknown count)`);
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.dma_unmap.stuck", {
        container: this.container,
        iova: dma.iova,
        size: dma.size,
        devices: names,
        pinnedPages: dma.pinnedPages,
        notifications,
      });
    }
    this.warnings++;
    throw new KernelError(
      Errno.EBUSY,
      `VFIO_IOMMU_UNMAP_DMA: mapping ${dma.describe()} still has ${dma.pinnedPages} page(s) pinned after ` +
        `${notifications} dma_unmap notifications; device(s) ${names.join(", ")} did not unpin them in their dma_unmap ` +
        "callback (a vendor driver bug; Linux would BUG() here)",
      { iova: dma.iova, size: dma.size, devices: names },
    );
  }

  /** vfio_notify_dma_unmap: every registered device is told to drop its pins in the mapping. */
  private notifyDmaUnmap(dma: VfioDma, attempt: number): void {
    const devices = this.devices.slice();
    for (const dev of devices) {
      if (this.tracer.enabled) {
        this.tracer.emit("vfio.type1.dma_unmap.notify", {
          container: this.container,
          device: dev.name,
          iova: dma.iova,
          size: dma.size,
          attempt,
        });
      }
      try {
        dev.dmaUnmap(dma.iova as Iova, dma.size);
      } catch (e) {
        // The callback returns void in Linux: a failure is the driver's bug; the retry loop will notice its pins.
        if (!(e instanceof KernelError)) throw e;
        this.warn(`${dev.name}: dma_unmap(${hex(dma.iova)}, ${hex(dma.size)}) failed: ${e.describe()}`);
      }
    }
  }

  /** VFIO_IOMMU_DIRTY_PAGES (vfio_iommu_type1_dirty_pages). */
  private dirtyPages(arg: IoctlArg): number {
    if (!this.v2) {
      throw new KernelError(
        Errno.EACCES,
        `VFIO_IOMMU_DIRTY_PAGES: container ${this.container} uses VFIO_TYPE1_IOMMU; dirty tracking needs VFIO_TYPE1v2_IOMMU`,
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
      if (!this.dirtyTracking) this.startDirtyTracking();
      return 0;
    }
    if (f === VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP) {
      if (this.dirtyTracking) {
        this.dirtyTracking = false;
        for (const dma of this.dmas) dma.bitmap = undefined;
        if (this.tracer.enabled) {
          this.tracer.emit("vfio.type1.dirty.stop", { container: this.container, mappings: this.dmas.size });
        }
      }
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
    const pgsize = BigInt(this.pgsize());
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
    if (!this.dirtyTracking) {
      throw new KernelError(Errno.EINVAL, "VFIO_IOMMU_DIRTY_PAGES with GET_BITMAP: dirty page tracking is not started");
    }
    this.iovaDirtyBitmap(range.bitmap_data, Number(range.iova), Number(range.iova + range.size));
    return 0;
  }

  /** START: a bitmap per mapping, with the pages emulated devices hold pinned marked dirty. */
  private startDirtyTracking(): void {
    const done: VfioDma[] = [];
    let pinned = 0;
    try {
      for (const dma of this.dmas) {
        dma.bitmap = allocDirtyBitmap(dma.pages, `VFIO_IOMMU_DIRTY_PAGES START on ${dma.describe()}`);
        done.push(dma);
        pinned += this.populateBitmap(dma);
      }
    } catch (e) {
      for (const d of done) d.bitmap = undefined;
      throw e;
    }
    this.dirtyTracking = true;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.dirty.start", {
        container: this.container,
        mappings: this.dmas.size,
        pinnedPages: pinned,
      });
    }
  }

  /** vfio_dma_populate_bitmap: pinned pages are dirty. Returns how many were marked. */
  private populateBitmap(dma: VfioDma): number {
    const bm = dma.bitmap;
    if (bm === undefined || dma.pins === undefined) return 0;
    for (const [idx] of dma.pins.entries()) setBit(bm, idx);
    return dma.pins.size;
  }

  /** vfio_iova_dirty_bitmap: the range must not bisect a mapping; each mapping's bits go to the user bitmap. */
  private iovaDirtyBitmap(userData: bigint, iova: number, end: number): void {
    const head = this.dmas.find(iova, 1);
    if (head !== undefined && head.iova !== iova) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES: [${hex(iova)}, ${hex(end)}) starts inside the mapping ${head.describe()}`,
      );
    }
    const tail = this.dmas.find(end - 1, 0);
    if (tail !== undefined && tail.end !== end) {
      throw new KernelError(
        Errno.EINVAL,
        `VFIO_IOMMU_DIRTY_PAGES: [${hex(iova)}, ${hex(end)}) ends inside the mapping ${tail.describe()}`,
      );
    }
    let dirtyPages = 0;
    for (let dma = this.dmas.firstFrom(iova); dma !== undefined && dma.iova < end; dma = this.dmas.next(dma)) {
      if (dma.iova < iova) continue;
      dirtyPages += this.updateUserBitmap(userData, dma, iova);
      // Pinned pages stay dirty; pages only written through vfio_dma_rw are reported once.
      dma.bitmap!.fill(0);
      this.populateBitmap(dma);
    }
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.dirty.bitmap", { container: this.container, iova, size: end - iova, dirtyPages });
    }
  }

  /** update_user_bitmap; returns the number of dirty pages copied. */
  private updateUserBitmap(userData: bigint, dma: VfioDma, baseIova: number): number {
    const bm = dma.bitmap!;
    const nbits = dma.pages;
    // A group that can DMA anywhere and never declared what it touches makes everything it can reach dirty.
    if (this.numNonPinnedGroups > 0 && dma.iommuMapped) setBits(bm, 0, nbits);
    copyBitsToUser(this.mm, bigToNumber(userData), bm, nbits, (dma.iova - baseIova) / PAGE_SIZE);
    return countBits(bm, nbits);
  }

  // ---- groups ------------------------------------------------------------------------------------------------------

  /** vfio_iommu_type1_attach_group. */
  attachGroup(group: VfioGroupAttachment): void {
    try {
      this.doAttachGroup(group);
    } catch (e) {
      this.traceError(`attach of group ${group.id}`, e);
      throw e;
    }
  }

  private doAttachGroup(group: VfioGroupAttachment): void {
    const id = group.id;
    if (this.vaddrInvalidCount > 0) {
      throw new KernelError(
        Errno.EBUSY,
        `cannot attach group ${id} to container ${this.container}: ${this.vaddrInvalidCount} mapping(s) have an invalidated vaddr (VFIO_UPDATE_VADDR in progress)`,
      );
    }
    if (this.iommuGroups.has(id) || this.emulatedGroups.has(id)) {
      throw new KernelError(Errno.EINVAL, `group ${id} is already attached to container ${this.container}`);
    }
    if (group.type === "emulated") {
      // An emulated group dirties only what its devices pin: it starts in the pinned scope.
      this.emulatedGroups.set(id, { attachment: group, pinnedScope: true });
      this.traceGroup("vfio.type1.group.attach", group, -1);
      return;
    }
    if (group.type === "noiommu") {
      throw new KernelError(
        Errno.EINVAL,
        `group ${id} is a no-IOMMU group: it belongs with the vfio-noiommu backend, not vfio-iommu-type1`,
      );
    }
    const existing = this.domain;
    const domain = existing ?? this.iommu.allocDomain("unmanaged");
    if (existing === undefined && this.tracer.enabled) {
      this.tracer.emit("vfio.type1.domain.alloc", { container: this.container, domain: domain.id });
    }
    try {
      this.iommu.attachGroup(id, domain);
    } catch (e) {
      if (existing === undefined) this.freeDomain(domain);
      throw e;
    }
    let ranges: IovaRanges;
    try {
      const start: number = domain.aperture.start;
      const end: number = domain.aperture.end;
      this.checkApertureConflict(id, start, end);
      const resv = this.iommu.groupReservedRegions(id);
      for (const r of resv) {
        const hit = this.dmas.find(r.start, r.end - r.start + 1);
        if (hit !== undefined) {
          throw new KernelError(
            Errno.EINVAL,
            `cannot attach group ${id}: its reserved region [${hex(r.start)}, ${hex(r.end)}] (${r.type}) overlaps the existing mapping ${hit.describe()}`,
          );
        }
      }
      ranges = this.iovaRanges.copy();
      ranges.resize(start, end);
      ranges.exclude(resv);
      if (existing === undefined) this.replay(domain);
    } catch (e) {
      this.iommu.detachGroup(id);
      if (existing === undefined) this.freeDomain(domain);
      throw e;
    }
    this.domain = domain;
    this.iovaRanges = ranges;
    this.updatePgsizeBitmap();
    this.iommuGroups.set(id, { attachment: group, pinnedScope: false });
    this.numNonPinnedGroups++;
    this.traceGroup("vfio.type1.group.attach", group, domain.id);
    this.traceRanges();
  }

  /** vfio_iommu_type1_detach_group. */
  detachGroup(group: VfioGroupAttachment): void {
    const id = group.id;
    let updateScope = false;
    const emulated = this.emulatedGroups.get(id);
    if (emulated !== undefined) {
      updateScope = !emulated.pinnedScope;
      this.emulatedGroups.delete(id);
      if (this.emulatedGroups.size === 0 && this.domain === undefined) {
        if (this.devices.length > 0) {
          this.warn(`last group left while device(s) ${this.deviceNames()} are still registered for dma_unmap`);
        }
        this.unmapUnpinAll();
      }
      this.traceGroup("vfio.type1.group.detach", group, -1);
    } else {
      const g = this.iommuGroups.get(id);
      const domain = this.domain;
      if (g === undefined || domain === undefined) {
        this.warn(`detach of group ${id}, which is not attached to this container`);
        return;
      }
      const ranges = this.iovaRanges.copy();
      this.iommu.detachGroup(id);
      updateScope = !g.pinnedScope;
      this.iommuGroups.delete(id);
      if (this.iommuGroups.size === 0) {
        if (this.emulatedGroups.size === 0) {
          if (this.devices.length > 0) {
            this.warn(`last group left while device(s) ${this.deviceNames()} are still registered for dma_unmap`);
          }
          this.unmapUnpinAll();
        } else {
          this.unmapUnpinReaccount();
        }
        this.domain = undefined;
        this.freeDomain(domain);
        ranges.expand(0, IOVA_TOP);
        this.updatePgsizeBitmap();
      }
      if (ranges.refresh(this.remainingReservedRegions())) this.iovaRanges = ranges;
      this.traceGroup("vfio.type1.group.detach", group, domain.id);
      this.traceRanges();
    }
    if (updateScope) {
      this.numNonPinnedGroups--;
      // The group that could have written anywhere is gone: report everything it could reach, once.
      if (this.dirtyTracking) for (const dma of this.dmas) setBits(dma.bitmap!, 0, dma.pages);
    }
  }

  /** vfio_iommu_type1_release: everything undone, the domain freed. Idempotent. */
  release(): void {
    if (this.released) return;
    const mappings = this.dmas.size;
    let pinned = 0;
    for (const dma of this.dmas) pinned += dma.iommuPinnedPages + dma.pinnedPages;
    this.emulatedGroups.clear();
    this.unmapUnpinAll();
    const domain = this.domain;
    if (domain !== undefined) {
      for (const id of this.iommuGroups.keys()) this.iommu.detachGroup(id);
      this.domain = undefined;
      this.freeDomain(domain);
    }
    this.iommuGroups.clear();
    this.numNonPinnedGroups = 0;
    this.iovaRanges = new IovaRanges();
    this.updatePgsizeBitmap();
    this.dirtyTracking = false;
    this.released = true;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.release", { container: this.container, mappings, pinnedPages: pinned });
    }
  }

  /** vfio_iommu_aper_conflict: the new aperture must meet the current ranges and hold every mapping inside them. */
  private checkApertureConflict(id: number, start: number, end: number): void {
    const b = this.iovaRanges.bounds();
    if (b === undefined) return;
    let hit: VfioDma | undefined;
    if (this.iovaRanges.disjointFrom(start, end)) {
      throw new KernelError(
        Errno.EINVAL,
        `cannot attach group ${id}: its IOMMU aperture [${hex(start)}, ${hex(end)}] does not meet the allowed ranges ${this.iovaRanges}`,
      );
    }
    if (start > b.start) hit = this.dmas.find(b.start, start - b.start);
    if (hit === undefined && end < b.end) {
      const from = end + 1;
      hit = this.dmas.find(from, Math.min(b.end, Number.MAX_SAFE_INTEGER) - from + 1);
    }
    if (hit !== undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `cannot attach group ${id}: the existing mapping ${hit.describe()} lies outside its IOMMU aperture [${hex(start)}, ${hex(end)}]`,
      );
    }
  }

  /** Reserved regions of every IOMMU-backed group still attached (for vfio_iommu_resv_refresh). */
  private remainingReservedRegions(): { start: number; end: number }[] {
    const out: { start: number; end: number }[] = [];
    for (const id of this.iommuGroups.keys()) for (const r of this.iommu.groupReservedRegions(id)) out.push(r);
    return out;
  }

  /** vfio_iommu_replay: pin and map every existing mapping into a new domain; undo all of it on failure. */
  private replay(domain: IommuDomain): void {
    const done: VfioDma[] = [];
    let pages = 0;
    try {
      for (const dma of this.dmas) {
        if (dma.iommuMapped) continue;
        this.pinMapDma(dma, domain, `replay of mapping ${dma.describe()} into IOMMU domain ${domain.id}`);
        done.push(dma);
        pages += dma.pages;
      }
    } catch (e) {
      for (const dma of done) this.unmapUnpinOn(dma, domain, true);
      throw e;
    }
    for (const dma of this.dmas) dma.iommuMapped = true;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.replay", {
        container: this.container,
        domain: domain.id,
        mappings: done.length,
        pages,
      });
    }
  }

  private freeDomain(domain: IommuDomain): void {
    this.iommu.freeDomain(domain);
    if (this.tracer.enabled)
      this.tracer.emit("vfio.type1.domain.free", { container: this.container, domain: domain.id });
  }

  /** vfio_update_pgsize_bitmap: the domain's page sizes, or PAGE_MASK without a domain. */
  private updatePgsizeBitmap(): void {
    let bm = U64_MAX;
    if (this.domain !== undefined) bm &= BigInt(this.domain.pgsizeBitmap);
    // Sizes below PAGE_SIZE are hidden and PAGE_SIZE is claimed instead (pinning works in whole pages).
    if ((bm & ~PAGE_MASK_U64) !== 0n) bm = (bm & PAGE_MASK_U64) | BigInt(PAGE_SIZE);
    this.pgsizeBitmap = bm;
  }

  /** The smallest page size (1 << __ffs(pgsize_bitmap)): 4096 with and without a VT-d domain. */
  private pgsize(): number {
    return Number(1n << ffs64(this.pgsizeBitmap));
  }

  // ---- emulated devices --------------------------------------------------------------------------------------------

  /** vfio_iommu_type1_register_device: the device will hear dma_unmap for every mapping it may have pinned in. */
  registerDevice(dev: VfioEmulatedDevice): void {
    if (this.devices.includes(dev)) return;
    this.devices.push(dev);
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.device.register", {
        container: this.container,
        device: dev.name,
        devices: this.devices.length,
      });
    }
  }

  unregisterDevice(dev: VfioEmulatedDevice): void {
    const i = this.devices.indexOf(dev);
    if (i < 0) return;
    this.devices.splice(i, 1);
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.device.unregister", {
        container: this.container,
        device: dev.name,
        devices: this.devices.length,
      });
    }
  }

  /**
   * vfio_pin_pages (vfio_main.c and container.c checks, then vfio_iommu_type1_pin_pages): pins `npage` pages from
   * `iova` and returns their frames. EINVAL npage 0; E2BIG above 512; EACCES on a type1 (v1) container; EBUSY while a
   * vaddr is invalidated; EINVAL with no registered device; per page EINVAL (not mapped) or EPERM (the mapping does
   * not grant `prot`); ENOMEM past RLIMIT_MEMLOCK; ENODEV when the mapping's process is gone. On failure nothing this
   * call pinned stays pinned.
   */
  pinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number, prot: number): Pfn[] {
    try {
      return this.doPinPages(dev, iova, npage, prot);
    } catch (e) {
      this.traceError(`vfio_pin_pages by ${dev.name}`, e);
      throw e;
    }
  }

  private doPinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number, prot: number): Pfn[] {
    if (!Number.isInteger(npage) || npage <= 0) {
      throw new KernelError(Errno.EINVAL, `vfio_pin_pages by ${dev.name}: npage ${npage} must be at least 1`);
    }
    if (npage > VFIO_PIN_PAGES_MAX_ENTRIES) {
      throw new KernelError(
        Errno.E2BIG,
        `vfio_pin_pages by ${dev.name}: ${npage} pages exceed VFIO_PIN_PAGES_MAX_ENTRIES (${VFIO_PIN_PAGES_MAX_ENTRIES})`,
      );
    }
    if (!this.v2) {
      throw new KernelError(
        Errno.EACCES,
        `vfio_pin_pages by ${dev.name}: container ${this.container} uses VFIO_TYPE1_IOMMU; pinning needs VFIO_TYPE1v2_IOMMU`,
      );
    }
    if (this.vaddrInvalidCount > 0) {
      this.warn(`vfio_pin_pages not allowed with VFIO_UPDATE_VADDR (${dev.name})`);
      throw new KernelError(
        Errno.EBUSY,
        `vfio_pin_pages by ${dev.name}: ${this.vaddrInvalidCount} mapping(s) of container ${this.container} have an invalidated vaddr`,
      );
    }
    if (this.devices.length === 0) {
      throw new KernelError(
        Errno.EINVAL,
        `vfio_pin_pages by ${dev.name}: no device of container ${this.container} is registered for dma_unmap notifications`,
      );
    }
    const doAccounting = this.domain === undefined;
    const out = new Array<Pfn>(npage);
    const pool = this.pool;
    let newPins = 0;
    let i = 0;
    try {
      for (; i < npage; i++) {
        const a = iova + i * PAGE_SIZE;
        const dma = this.dmas.find(a, PAGE_SIZE);
        if (dma === undefined) {
          throw new KernelError(
            Errno.EINVAL,
            `vfio_pin_pages by ${dev.name}: iova ${hex(a)} is not mapped in container ${this.container}`,
          );
        }
        if ((dma.prot & prot) !== prot) {
          throw new KernelError(
            Errno.EPERM,
            `vfio_pin_pages by ${dev.name}: iova ${hex(a)} lies in mapping ${dma.describe()}, which is ${protName(dma.prot)}, not ${protName(prot)}`,
          );
        }
        const idx = Math.floor((a - dma.iova) / PAGE_SIZE);
        let pins = dma.pins;
        const slot = pins === undefined ? -1 : pins.get(idx);
        if (slot >= 0) {
          pool.ref[slot]!++;
          out[i] = pool.pfn[slot]! as Pfn;
        } else {
          const pfn = this.pinExternal(dma, idx, doAccounting, dev);
          if (pins === undefined) {
            pins = new PinIndex(dma.pages);
            dma.pins = pins;
          }
          pins.set(idx, pool.alloc(pfn));
          out[i] = pfn as Pfn;
          newPins++;
          if (this.dirtyTracking) setBit(dma.bitmap!, idx);
        }
        addHolder(dma, dev, 1);
      }
    } catch (e) {
      for (let j = 0; j < i; j++) {
        const a = iova + j * PAGE_SIZE;
        const dma = this.dmas.find(a, PAGE_SIZE)!;
        this.unpinExternal(dma, Math.floor((a - dma.iova) / PAGE_SIZE), doAccounting);
        addHolder(dma, dev, -1);
      }
      throw e;
    }
    if (this.numNonPinnedGroups > 0) this.promoteScope(dev);
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.pin", { container: this.container, device: dev.name, iova, npage, newPins });
    }
    return out;
  }

  /**
   * vfio_unpin_pages: drops one reference per page; the last one unpins and uncharges. Like Linux this returns
   * nothing: an npage out of range, a v1 container or an unmapped IOVA is a WARN (a "vfio.type1.warn" event) and
   * stops there; unpinning a page that is not pinned does nothing.
   */
  unpinPages(dev: VfioEmulatedDevice, iova: Iova, npage: number): void {
    if (!Number.isInteger(npage) || npage <= 0 || npage > VFIO_PIN_PAGES_MAX_ENTRIES) {
      this.warn(`vfio_unpin_pages by ${dev.name}: npage ${npage} is outside [1, ${VFIO_PIN_PAGES_MAX_ENTRIES}]`);
      return;
    }
    if (!this.v2) {
      this.warn(`vfio_unpin_pages by ${dev.name} on a VFIO_TYPE1_IOMMU (v1) container`);
      return;
    }
    const doAccounting = this.domain === undefined;
    let released = 0;
    let i = 0;
    for (; i < npage; i++) {
      const a = iova + i * PAGE_SIZE;
      const dma = this.dmas.find(a, PAGE_SIZE);
      if (dma === undefined) break;
      const idx = Math.floor((a - dma.iova) / PAGE_SIZE);
      if (dma.pins === undefined || !dma.pins.has(idx)) continue;
      released += this.unpinExternal(dma, idx, doAccounting);
      addHolder(dma, dev, -1);
    }
    if (i !== npage) {
      this.warn(
        `vfio_unpin_pages by ${dev.name}: iova ${hex(iova + i * PAGE_SIZE)} is not mapped (page ${i} of ${npage})`,
      );
    }
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.unpin", { container: this.container, device: dev.name, iova, npage, released });
    }
  }

  /**
   * vfio_dma_rw: copies between `buf` and the memory mapped at `iova`, through the mapping's address space, without
   * pinning. EINVAL empty buffer or unmapped IOVA; EBUSY while a vaddr is invalidated; EPERM when the mapping does
   * not allow reading (any access) or writing (a write), or its process is gone; EFAULT when the copy faults.
   */
  dmaRw(iova: Iova, buf: Uint8Array, write: boolean): void {
    try {
      this.doDmaRw(iova, buf, write);
    } catch (e) {
      this.traceError("vfio_dma_rw", e);
      throw e;
    }
  }

  private doDmaRw(iova: Iova, buf: Uint8Array, write: boolean): void {
    if (buf.length === 0) throw new KernelError(Errno.EINVAL, "vfio_dma_rw: the buffer is empty");
    if (this.vaddrInvalidCount > 0) {
      this.warn("vfio_dma_rw not allowed with VFIO_UPDATE_VADDR");
      throw new KernelError(
        Errno.EBUSY,
        `vfio_dma_rw: ${this.vaddrInvalidCount} mapping(s) of container ${this.container} have an invalidated vaddr`,
      );
    }
    let done = 0;
    let a: number = iova;
    while (done < buf.length) {
      const dma = this.dmas.find(a, 1);
      if (dma === undefined) {
        throw new KernelError(Errno.EINVAL, `vfio_dma_rw: iova ${hex(a)} is not mapped in container ${this.container}`);
      }
      if ((write && (dma.prot & IOMMU_WRITE) === 0) || (dma.prot & IOMMU_READ) === 0) {
        throw new KernelError(
          Errno.EPERM,
          `vfio_dma_rw: mapping ${dma.describe()} is ${protName(dma.prot)}: it does not allow a ${write ? "write" : "read"}`,
        );
      }
      if (dma.mm.exited) {
        throw new KernelError(
          Errno.EPERM,
          `vfio_dma_rw: process ${dma.mm.pid}, owner of ${dma.describe()}, has exited`,
        );
      }
      const offset = a - dma.iova;
      const count = Math.min(buf.length - done, dma.size - offset);
      const va = (dma.vaddr + offset) as Hva;
      try {
        if (write) dma.mm.write(va, buf, done, count);
        else dma.mm.read(va, buf, done, count);
      } catch (e) {
        if (!(e instanceof KernelError)) throw e;
        throw new KernelError(
          Errno.EFAULT,
          `vfio_dma_rw: copying ${count} bytes at iova ${hex(a)} (vaddr ${hex(va)}) faulted: ${e.message}`,
        );
      }
      if (write && this.dirtyTracking) {
        const first = Math.floor(offset / PAGE_SIZE);
        setBits(dma.bitmap!, first, Math.floor((offset + count - 1) / PAGE_SIZE) - first + 1);
      }
      done += count;
      a += count;
    }
  }

  /** The group of `dev` starts dirtying only what it pins (pinned_page_dirty_scope). */
  private promoteScope(dev: VfioEmulatedDevice): void {
    for (const g of this.iommuGroups.values()) {
      if (!g.pinnedScope && g.attachment.devices.includes(dev.name)) {
        g.pinnedScope = true;
        this.numNonPinnedGroups--;
        return;
      }
    }
  }

  // ---- pinning -----------------------------------------------------------------------------------------------------

  /** vfio_pin_page_external: one page through the mapping's address space; returns its frame. */
  private pinExternal(dma: VfioDma, idx: number, doAccounting: boolean, dev: VfioEmulatedDevice): number {
    const mm = dma.mm;
    if (mm.exited) {
      throw new KernelError(
        Errno.ENODEV,
        `vfio_pin_pages by ${dev.name}: process ${mm.pid}, owner of mapping ${dma.describe()}, has exited`,
      );
    }
    const one = this.one;
    mm.pinUserPages((dma.vaddr + idx * PAGE_SIZE) as Hva, 1, (dma.prot & IOMMU_WRITE) !== 0, one);
    if (doAccounting) {
      try {
        this.charge(dma, 1, "vfio_pin_pages", dev.name, dma.iova + idx * PAGE_SIZE);
      } catch (e) {
        mm.unpinUserPages(one, 1);
        throw e;
      }
    }
    return one[0]!;
  }

  /** vfio_unpin_page_external: drops a reference; the last one unpins (and uncharges). Returns pages released. */
  private unpinExternal(dma: VfioDma, idx: number, doAccounting: boolean): number {
    const pins = dma.pins;
    const slot = pins === undefined ? -1 : pins.get(idx);
    if (slot < 0) return 0;
    const pool = this.pool;
    const ref = pool.ref[slot]! - 1;
    pool.ref[slot] = ref;
    if (ref > 0) return 0;
    const one = this.one;
    one[0] = pool.pfn[slot]!;
    dma.mm.unpinUserPages(one, 1);
    pins!.delete(idx);
    pool.release(slot);
    if (doAccounting) this.uncharge(dma, 1);
    return 1;
  }

  /** Drops every emulated pin of a mapping regardless of reference counts (a WARN path; see removeDma). */
  private forceUnpinExternal(dma: VfioDma): void {
    const pins = dma.pins;
    if (pins === undefined) return;
    const pool = this.pool;
    const one = this.one;
    let uncharge = 0;
    for (const [idx, slot] of pins.entries()) {
      one[0] = pool.pfn[slot]!;
      dma.mm.unpinUserPages(one, 1);
      pool.release(slot);
      // Charged once; with IOMMU pins on the same page the charge stays with them.
      if (dma.iommuPfnAt(idx) < 0) uncharge++;
    }
    pins.clear();
    dma.holderDevices.length = 0;
    dma.holderCounts.length = 0;
    if (uncharge > 0) this.uncharge(dma, uncharge);
  }

  /**
   * vfio_pin_map_dma / the replay's pinning: pins the whole mapping in batches of 512 through its address space and
   * maps each run of physically contiguous frames with one domain.map. Pages an emulated device already pinned are
   * not charged again. On failure everything this call pinned, mapped and charged is undone.
   */
  private pinMapDma(dma: VfioDma, domain: IommuDomain, op: string): void {
    const mm = dma.mm;
    const pages = dma.pages;
    const write = (dma.prot & IOMMU_WRITE) !== 0;
    const batch = this.batch;
    let pos = 0;
    let n = 0;
    let k = 0;
    let runStart = 0;
    let runPfn = 0;
    let runLen = 0;
    let charged = 0;
    try {
      while (pos < pages) {
        const want = Math.min(VFIO_BATCH_MAX_CAPACITY, pages - pos);
        mm.pinUserPages((dma.vaddr + pos * PAGE_SIZE) as Hva, want, write, batch);
        n = want;
        k = 0;
        let acct = n;
        const pins = dma.pins;
        if (pins !== undefined && pins.size > 0) {
          acct = 0;
          for (let j = 0; j < n; j++) if (!pins.has(pos + j)) acct++;
        }
        if (acct > 0) {
          this.charge(dma, acct, op);
          charged += acct;
        }
        for (; k < n; k++) {
          const f = batch[k]!;
          if (runLen > 0 && f === runPfn + runLen) {
            runLen++;
            continue;
          }
          if (runLen > 0) {
            domain.map(
              (dma.iova + runStart * PAGE_SIZE) as Iova,
              (runPfn * PAGE_SIZE) as Hpa,
              runLen * PAGE_SIZE,
              dma.prot,
            );
            dma.addRun(runStart, runPfn, runLen);
          }
          runStart = pos + k;
          runPfn = f;
          runLen = 1;
        }
        pos += n;
        n = 0;
      }
      if (runLen > 0) {
        domain.map(
          (dma.iova + runStart * PAGE_SIZE) as Iova,
          (runPfn * PAGE_SIZE) as Hpa,
          runLen * PAGE_SIZE,
          dma.prot,
        );
        dma.addRun(runStart, runPfn, runLen);
        runLen = 0;
      }
    } catch (e) {
      if (n > k) mm.unpinUserPages(batch.subarray(k, n), n - k);
      if (runLen > 0) this.unpinFrames(mm, runPfn, runLen);
      this.unmapRuns(dma, domain);
      if (charged > 0) this.uncharge(dma, charged);
      throw e;
    }
  }

  /** Unmaps a mapping's runs from `domain` and unpins their frames; returns the pages unpinned. */
  private unmapRuns(dma: VfioDma, domain: IommuDomain): number {
    let unpinned = 0;
    const runs = dma.runs;
    for (let r = 0; r < dma.runCount; r++) {
      const off = runs[r * 3]!;
      const pfn = runs[r * 3 + 1]!;
      const len = runs[r * 3 + 2]!;
      if (!domain.freed) domain.unmap((dma.iova + off * PAGE_SIZE) as Iova, len * PAGE_SIZE);
      this.unpinFrames(dma.mm, pfn, len);
      unpinned += len;
    }
    dma.clearRuns();
    return unpinned;
  }

  private unpinFrames(mm: AddressSpace, pfn: number, count: number): void {
    const s = this.scratch;
    for (let done = 0; done < count; ) {
      const c = Math.min(s.length, count - done);
      for (let j = 0; j < c; j++) s[j] = pfn + done + j;
      mm.unpinUserPages(s, c);
      done += c;
    }
  }

  /**
   * vfio_unmap_unpin: takes the mapping out of the domain and drops its IOMMU pins. With accounting, pages that an
   * emulated device still holds stay charged. Returns the pages unpinned.
   */
  private unmapUnpin(dma: VfioDma, doAccounting: boolean): number {
    const domain = this.domain;
    if (domain === undefined || dma.runCount === 0) {
      dma.iommuMapped = false;
      return 0;
    }
    return this.unmapUnpinOn(dma, domain, doAccounting);
  }

  private unmapUnpinOn(dma: VfioDma, domain: IommuDomain, doAccounting: boolean): number {
    let stillPinned = 0;
    if (doAccounting && dma.pins !== undefined) {
      for (const [idx] of dma.pins.entries()) if (dma.iommuPfnAt(idx) >= 0) stillPinned++;
    }
    const unpinned = this.unmapRuns(dma, domain);
    dma.iommuMapped = false;
    if (doAccounting && unpinned - stillPinned > 0) this.uncharge(dma, unpinned - stillPinned);
    return unpinned;
  }

  /** vfio_remove_dma. */
  private removeDma(dma: VfioDma): void {
    if (dma.pinnedPages > 0) {
      this.warn(
        `mapping ${dma.describe()} removed while ${dma.pinnedPages} page(s) are still pinned by device(s) ${this.holderNames(dma)}; they are unpinned now`,
      );
      this.forceUnpinExternal(dma);
    }
    this.unmapUnpin(dma, true);
    if (dma.lockedVm !== 0) {
      this.warn(`mapping ${dma.describe()} still had ${dma.lockedVm} locked page(s) charged at removal`);
      this.uncharge(dma, dma.lockedVm);
    }
    this.dmas.remove(dma);
    dma.bitmap = undefined;
    if (dma.vaddrInvalid) this.vaddrInvalidCount--;
    this.dmaAvail++;
  }

  /** vfio_iommu_unmap_unpin_all. */
  private unmapUnpinAll(): void {
    for (const dma of this.dmas.toArray()) this.removeDma(dma);
  }

  /** vfio_iommu_unmap_unpin_reaccount: the domain goes, emulated pins stay, and only they stay charged. */
  private unmapUnpinReaccount(): void {
    for (const dma of this.dmas) {
      const unlocked = this.unmapUnpin(dma, false);
      const locked = dma.pinnedPages;
      if (unlocked > locked) this.uncharge(dma, unlocked - locked);
    }
  }

  // ---- locked memory -----------------------------------------------------------------------------------------------

  /** vfio_lock_acct(+n): ENOMEM past RLIMIT_MEMLOCK without CAP_IPC_LOCK, with a sentence saying by how much. */
  private charge(dma: VfioDma, npages: number, op: string, device?: string, at?: number): void {
    const mm = dma.mm;
    try {
      mm.accountLockedVm(npages, true);
    } catch (e) {
      if (e instanceof KernelError && e.errno === Errno.ENOMEM) {
        const limit = mm.memlockLimitPages();
        // The sentence is built here, on the error path, so that pinning a page formats nothing.
        const what = device === undefined ? op : `${op} by ${device} at iova ${hex(at ?? 0)}`;
        throw new KernelError(
          Errno.ENOMEM,
          `RLIMIT_MEMLOCK exceeded: ${what} needs ${npages} more locked page(s) but process ${mm.pid} already has ` +
            `${mm.lockedVm()} page(s) locked and its limit is ${limit} page(s) (${mm.rlimitMemlock()} bytes); ` +
            "raise RLIMIT_MEMLOCK (ulimit -l) or grant CAP_IPC_LOCK",
          { pid: mm.pid, lockedVm: mm.lockedVm(), requested: npages, limitPages: limit },
        );
      }
      throw e;
    }
    dma.lockedVm += npages;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.locked_vm", {
        container: this.container,
        pid: mm.pid,
        delta: npages,
        lockedVm: mm.lockedVm(),
      });
    }
  }

  /** vfio_lock_acct(-n). */
  private uncharge(dma: VfioDma, npages: number): void {
    const mm = dma.mm;
    mm.accountLockedVm(npages, false);
    dma.lockedVm -= npages;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.locked_vm", {
        container: this.container,
        pid: mm.pid,
        delta: -npages,
        lockedVm: mm.lockedVm(),
      });
    }
  }

  // ---- introspection -----------------------------------------------------------------------------------------------

  stats(): Type1Stats {
    let mapped = 0;
    let locked = 0;
    let iommuPinned = 0;
    let emulatedPinned = 0;
    for (const dma of this.dmas) {
      mapped += dma.size;
      locked += dma.lockedVm;
      iommuPinned += dma.iommuPinnedPages;
      emulatedPinned += dma.pinnedPages;
    }
    return {
      container: this.container,
      v2: this.v2,
      mappings: this.dmas.size,
      dmaAvail: this.dmaAvail,
      mappedBytes: mapped,
      lockedVm: locked,
      iommuPinnedPages: iommuPinned,
      emulatedPinnedPages: emulatedPinned,
      vaddrInvalid: this.vaddrInvalidCount,
      dirtyTracking: this.dirtyTracking,
      domain: this.domain?.id,
      iommuGroups: [...this.iommuGroups.keys()].sort((a, b) => a - b),
      emulatedGroups: [...this.emulatedGroups.keys()].sort((a, b) => a - b),
      devices: this.devices.map((d) => d.name),
      iovaRanges: this.iovaRanges.toString(),
      warnings: this.warnings,
    };
  }

  /** The allowed IOVA ranges, inclusive (empty: any IOVA). The top of the 64-bit space reads as 2^64. */
  allowedRanges(): readonly { readonly start: number; readonly end: number }[] {
    return this.iovaRanges.ranges();
  }

  /** The IOMMU domain of this container, if an IOMMU-backed group is attached. */
  iommuDomain(): IommuDomain | undefined {
    return this.domain;
  }

  mappings(): Type1MappingInfo[] {
    const pool = this.pool;
    return this.dmas.toArray().map((dma) => ({
      iova: dma.iova,
      vaddr: dma.vaddr,
      size: dma.size,
      prot: dma.prot,
      iommuMapped: dma.iommuMapped,
      vaddrInvalid: dma.vaddrInvalid,
      lockedVm: dma.lockedVm,
      iommuPinnedPages: dma.iommuPinnedPages,
      emulatedPinnedPages: dma.pinnedPages,
      pins: (dma.pins?.entries() ?? []).map(([idx, slot]) => ({
        iova: dma.iova + idx * PAGE_SIZE,
        pfn: pool.pfn[slot]!,
        refCount: pool.ref[slot]!,
      })),
    }));
  }

  /** Checks the invariants in the module comment; throws a plain Error naming the first violation. */
  checkInvariants(): void {
    this.dmas.checkInvariants();
    let slots = 0;
    for (const dma of this.dmas) {
      const union = new Set<number>();
      for (let r = 0; r < dma.runCount; r++) {
        const off = dma.runs[r * 3]!;
        const pfn = dma.runs[r * 3 + 1]!;
        const len = dma.runs[r * 3 + 2]!;
        for (let j = 0; j < len; j++) {
          union.add(off + j);
          if (this.physmem.pinCount((pfn + j) as Pfn) < 1) {
            throw new Error(`type1: IOMMU-pinned pfn ${hex(pfn + j)} of ${dma.describe()} is not pinned in physmem`);
          }
        }
      }
      if (dma.pins !== undefined) {
        for (const [idx, slot] of dma.pins.entries()) {
          union.add(idx);
          slots++;
          if (this.pool.ref[slot]! < 1)
            throw new Error(`type1: pin slot ${slot} of ${dma.describe()} has no references`);
          if (this.physmem.pinCount(this.pool.pfn[slot]! as Pfn) < 1) {
            throw new Error(`type1: emulated pin of ${dma.describe()} page ${idx} is not pinned in physmem`);
          }
        }
      }
      if (union.size !== dma.lockedVm) {
        throw new Error(
          `type1: mapping ${dma.describe()} charges ${dma.lockedVm} locked page(s) but pins ${union.size} distinct page(s)`,
        );
      }
      if (this.domain !== undefined && !dma.iommuMapped) {
        throw new Error(
          `type1: mapping ${dma.describe()} is not IOMMU-mapped although domain ${this.domain.id} exists`,
        );
      }
      if (dma.iommuMapped && dma.iommuPinnedPages !== dma.pages) {
        throw new Error(
          `type1: mapping ${dma.describe()} is IOMMU-mapped with ${dma.iommuPinnedPages} of ${dma.pages} pages`,
        );
      }
    }
    if (slots !== this.pool.live) throw new Error(`type1: ${this.pool.live} live pin slots but ${slots} referenced`);
  }

  // ---- helpers -----------------------------------------------------------------------------------------------------

  private traceError(op: string, e: unknown): void {
    if (e instanceof KernelError && this.tracer.enabled) {
      this.tracer.emit("vfio.type1.error", { container: this.container, op, errno: e.code, message: e.message });
    }
  }

  private warn(message: string): void {
    this.warnings++;
    if (this.tracer.enabled) this.tracer.emit("vfio.type1.warn", { container: this.container, message });
  }

  private deviceNames(): string {
    return this.devices.map((d) => d.name).join(", ");
  }

  private holderNames(dma: VfioDma): string {
    const names: string[] = [];
    dma.holderDevices.forEach((dev, i) => {
      if (dma.holderCounts[i]! > 0) names.push(dev.name);
    });
    return names.length > 0 ? names.join(", ") : "(unknown)";
  }

  private traceGroup(
    name: "vfio.type1.group.attach" | "vfio.type1.group.detach",
    group: VfioGroupAttachment,
    domain: number,
  ): void {
    if (this.tracer.enabled) {
      this.tracer.emit(name, { container: this.container, group: group.id, type: group.type, domain });
    }
  }

  private traceRanges(): void {
    if (this.tracer.enabled) {
      this.tracer.emit("vfio.type1.iova_ranges", { container: this.container, ranges: this.iovaRanges.toString() });
    }
  }
}

// ---- module helpers ----------------------------------------------------------------------------------------------

/** Counts `delta` references for `dev` on the mapping (a short array: a mapping sees one or two devices). */
function addHolder(dma: VfioDma, dev: VfioEmulatedDevice, delta: number): void {
  const devs = dma.holderDevices;
  for (let i = 0; i < devs.length; i++) {
    if (devs[i] === dev) {
      const n = dma.holderCounts[i]! + delta;
      dma.holderCounts[i] = Math.max(n, 0);
      return;
    }
  }
  if (delta <= 0) return;
  devs.push(dev);
  dma.holderCounts.push(delta);
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

/** __ffs of a u64 (index of the lowest set bit); 64 for 0, so that x >> __ffs(0) is 0 and fails the size checks. */
/** Index of the lowest set bit of a u64 (64 for 0), as the kernel's __ffs64; no BigInt loop (it is on MAP_DMA's path). */
function ffs64(v: bigint): bigint {
  if (v === 0n) return 64n;
  const lo = Number(v & 0xffff_ffffn);
  if (lo !== 0) return BigInt(31 - Math.clz32(lo & -lo));
  const hi = Number((v >> 32n) & 0xffff_ffffn);
  return BigInt(63 - Math.clz32(hi & -hi));
}

function bigToNumber(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

function hexEnd(end: number): string {
  return Number.isFinite(end) ? hex(end) : "end of the space";
}

function protName(prot: number): string {
  return `${prot & IOMMU_READ ? "r" : "-"}${prot & IOMMU_WRITE ? "w" : "-"}`;
}
