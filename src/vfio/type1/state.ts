/**
 * One type1 container's shared state: the fields of `struct vfio_iommu` (vfio_iommu_type1.c) that more than one part
 * of the backend reads, owned here and changed only through the accessors below.
 *
 * - The mappings: the tree (`dma_list`), read by every part through `dmas` (lookups and walks only); a mapping
 *   enters with `link` and leaves with `unlink` (vfio_link_dma / vfio_unlink_dma), which keep the entry budget
 *   (`dma_avail`) and the count of invalidated vaddrs (`vaddr_invalid_count`) true.
 * - The IOMMU domain and what follows from it: the page sizes (`pgsize_bitmap`, recomputed whenever the domain changes,
 *   as vfio_update_pgsize_bitmap) and the allowed IOVA ranges (`iova_list`).
 * - The attached groups, emulated (mdev) and IOMMU-backed, each with its dirty scope, and how many IOMMU-backed groups
 *   still dirty everything they can reach (`num_non_pinned_groups`).
 * - The container's identity (number, v1/v2, the opener's address space: the "current" task of its ioctls) and its
 *   diagnostics: kernel WARNs as "vfio.type1.warn" events counted in `warnings`.
 *
 * What it does not do: decide anything. Which group may attach, what a mapping pins, when a page is dirty are the
 * parts' business (groups.ts, mapping.ts, emulated.ts, dirty-tracking.ts); this object only keeps their common facts
 * consistent with each other.
 *
 * Invariants: `dmaAvail + dmas.size` is the dma_entry_limit; `vaddrInvalidCount` is the number of mappings whose
 * `vaddrInvalid` is set, as long as vaddrs are invalidated and restored through `invalidateVaddr` / `restoreVaddr`;
 * `pgsizeBitmap` is a function of `domain`; a group id is in at most one of the two group sets; `nonPinnedGroups` counts
 * the IOMMU-backed groups whose `pinnedScope` is false.
 */
import { defineTraceEvents, PAGE_SIZE, type Tracer } from "../../core/index.ts";
import type { AddressSpace, IommuDomain } from "../../host/index.ts";
import type { VfioGroupAttachment } from "../driver.ts";
import { DmaTree, type VfioDma } from "./dma-map.ts";
import { IovaRanges } from "./iova-ranges.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio.type1.warn": { container: number; message: string };
  }
}
defineTraceEvents("vfio", {
  "vfio.type1.warn": "container {container}: WARNING: {message}",
});

/** PAGE_MASK as a 64-bit value: the pgsize_bitmap of a container without an IOMMU domain. */
const PAGE_MASK_U64 = 0xffff_ffff_ffff_f000n;
export const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** Index of the lowest set bit of a u64 (64 for 0), as the kernel's __ffs64; no BigInt loop (it is on MAP_DMA's path). */
export function ffs64(v: bigint): bigint {
  if (v === 0n) return 64n;
  const lo = Number(v & 0xffff_ffffn);
  if (lo !== 0) return BigInt(31 - Math.clz32(lo & -lo));
  const hi = Number((v >> 32n) & 0xffff_ffffn);
  return BigInt(63 - Math.clz32(hi & -hi));
}

/** Lookups and in-order walks of the mapping tree; mappings come and go only through `Type1State.link` / `unlink`. */
export interface DmaLookup {
  readonly size: number;
  /** vfio_find_dma: a mapping overlapping [start, start + size); `size` 0 means the point `start`. */
  find(start: number, size: number): VfioDma | undefined;
  /** The first mapping ending above `start` (vfio_find_dma_first_node). */
  firstFrom(start: number): VfioDma | undefined;
  next(dma: VfioDma): VfioDma | undefined;
  /** A snapshot in IOVA order, safe to walk while mappings are removed. */
  toArray(): VfioDma[];
  /** In IOVA order; the tree must not change during the walk. */
  [Symbol.iterator](): IterableIterator<VfioDma>;
  checkInvariants(): void;
}

/** The allowed IOVA ranges as the parts read them; changing them goes through `Type1State.setIovaRanges`. */
export type IovaRangesView = Pick<
  IovaRanges,
  "allows" | "bounds" | "copy" | "disjointFrom" | "isEmpty" | "ranges" | "toString"
>;

/** One attached group (struct vfio_iommu_group). */
export interface GroupState {
  readonly attachment: VfioGroupAttachment;
  /** The group dirties only pages it pins (vfio_iommu_group.pinned_page_dirty_scope). */
  readonly pinnedScope: boolean;
}

interface MutableGroupState {
  readonly attachment: VfioGroupAttachment;
  pinnedScope: boolean;
}

/** What VFIO_IOMMU_GET_INFO reports. */
export interface Type1Info {
  /** iova_pgsizes: the domain's page sizes, PAGE_MASK without a domain. */
  readonly pgsizeBitmap: bigint;
  /** The smallest of them (the migration capability's pgsize_bitmap). */
  readonly minPageSize: number;
  readonly dmaAvail: number;
  /** Inclusive ranges; empty (any IOVA) in a container without an IOMMU domain. */
  readonly iovaRanges: readonly { readonly start: number; readonly end: number }[];
}

/** struct vfio_iommu: the facts the parts of one container's backend share (see the module comment). */
export class Type1State {
  readonly container: number;
  readonly v2: boolean;
  /** The address space of the process that opened the container: the "current" task of its ioctls. */
  readonly mm: AddressSpace;
  readonly tracer: Tracer;
  /** The mapping tree, read only; see `link` and `unlink`. */
  readonly dmas: DmaLookup;
  private readonly tree = new DmaTree();
  private avail: number;
  private vaddrInvalid = 0;
  private currentDomain: IommuDomain | undefined = undefined;
  private pgsizes = PAGE_MASK_U64;
  private allowed = new IovaRanges();
  private readonly iommuGroupMap = new Map<number, MutableGroupState>();
  private readonly emulatedGroupMap = new Map<number, MutableGroupState>();
  private nonPinned = 0;
  private warningCount = 0;

  constructor(container: number, v2: boolean, mm: AddressSpace, tracer: Tracer, dmaEntryLimit: number) {
    this.container = container;
    this.v2 = v2;
    this.mm = mm;
    this.tracer = tracer;
    this.avail = dmaEntryLimit;
    this.dmas = this.tree;
  }

  // ---- mappings ----------------------------------------------------------------------------------------------------

  /** Mappings this container may still create (dma_avail). */
  get dmaAvail(): number {
    return this.avail;
  }

  /** Mappings whose vaddr VFIO_DMA_UNMAP_FLAG_VADDR invalidated (vaddr_invalid_count). */
  get vaddrInvalidCount(): number {
    return this.vaddrInvalid;
  }

  /** vfio_link_dma: the mapping enters the tree and takes one entry of the budget. */
  link(dma: VfioDma): void {
    this.tree.insert(dma);
    this.avail--;
  }

  /** vfio_unlink_dma: the mapping leaves the tree and gives its entry back. */
  unlink(dma: VfioDma): void {
    this.tree.remove(dma);
    if (dma.vaddrInvalid) this.vaddrInvalid--;
    this.avail++;
  }

  invalidateVaddr(dma: VfioDma): void {
    dma.vaddrInvalid = true;
    this.vaddrInvalid++;
  }

  restoreVaddr(dma: VfioDma): void {
    dma.vaddrInvalid = false;
    this.vaddrInvalid--;
  }

  // ---- domain, page sizes, IOVA ranges -----------------------------------------------------------------------------

  /** The IOMMU domain, present while an IOMMU-backed group is attached. */
  get domain(): IommuDomain | undefined {
    return this.currentDomain;
  }

  /** Sets the domain and recomputes the page sizes (vfio_update_pgsize_bitmap). */
  setDomain(domain: IommuDomain | undefined): void {
    this.currentDomain = domain;
    let bm = U64_MAX;
    if (domain !== undefined) bm &= BigInt(domain.pgsizeBitmap);
    // Sizes below PAGE_SIZE are hidden and PAGE_SIZE is claimed instead (pinning works in whole pages).
    if ((bm & ~PAGE_MASK_U64) !== 0n) bm = (bm & PAGE_MASK_U64) | BigInt(PAGE_SIZE);
    this.pgsizes = bm;
  }

  /** pgsize_bitmap. */
  get pgsizeBitmap(): bigint {
    return this.pgsizes;
  }

  /** The smallest page size (1 << __ffs(pgsize_bitmap)): 4096 with and without a VT-d domain. */
  pgsize(): number {
    return Number(1n << ffs64(this.pgsizes));
  }

  /** The allowed IOVA ranges (iova_list). */
  get iovaRanges(): IovaRangesView {
    return this.allowed;
  }

  setIovaRanges(ranges: IovaRanges): void {
    this.allowed = ranges;
  }

  info(): Type1Info {
    return {
      pgsizeBitmap: this.pgsizes,
      minPageSize: this.pgsize(),
      dmaAvail: this.avail,
      iovaRanges: this.allowed.ranges(),
    };
  }

  // ---- groups ------------------------------------------------------------------------------------------------------

  hasGroup(id: number): boolean {
    return this.iommuGroupMap.has(id) || this.emulatedGroupMap.has(id);
  }

  iommuGroup(id: number): GroupState | undefined {
    return this.iommuGroupMap.get(id);
  }

  emulatedGroup(id: number): GroupState | undefined {
    return this.emulatedGroupMap.get(id);
  }

  get iommuGroupCount(): number {
    return this.iommuGroupMap.size;
  }

  get emulatedGroupCount(): number {
    return this.emulatedGroupMap.size;
  }

  /** In attach order. */
  iommuGroupIds(): number[] {
    return [...this.iommuGroupMap.keys()];
  }

  /** In attach order. */
  emulatedGroupIds(): number[] {
    return [...this.emulatedGroupMap.keys()];
  }

  /** An emulated group dirties only what its devices pin: it starts in the pinned scope. */
  addEmulatedGroup(group: VfioGroupAttachment): void {
    this.emulatedGroupMap.set(group.id, { attachment: group, pinnedScope: true });
  }

  /** An IOMMU-backed group can DMA anywhere until one of its devices pins through vfio_pin_pages. */
  addIommuGroup(group: VfioGroupAttachment): void {
    this.iommuGroupMap.set(group.id, { attachment: group, pinnedScope: false });
    this.nonPinned++;
  }

  /** Forgets a group; `nonPinnedGroups` changes only through `nonPinnedGroupLeft`, when the caller says so. */
  removeGroup(id: number): void {
    if (!this.emulatedGroupMap.delete(id)) this.iommuGroupMap.delete(id);
  }

  clearEmulatedGroups(): void {
    this.emulatedGroupMap.clear();
  }

  clearIommuGroups(): void {
    this.iommuGroupMap.clear();
    this.nonPinned = 0;
  }

  /** IOMMU-backed groups that still dirty everything they can reach (num_non_pinned_groups). */
  get nonPinnedGroups(): number {
    return this.nonPinned;
  }

  /** A group outside the pinned scope was detached. */
  nonPinnedGroupLeft(): void {
    this.nonPinned--;
  }

  /** The group holding device `name` starts dirtying only what it pins (pinned_page_dirty_scope). */
  promoteScope(name: string): void {
    for (const g of this.iommuGroupMap.values()) {
      if (!g.pinnedScope && g.attachment.devices.includes(name)) {
        g.pinnedScope = true;
        this.nonPinned--;
        return;
      }
    }
  }

  // ---- diagnostics -------------------------------------------------------------------------------------------------

  /** WARNs so far (kernel WARN_ONs, and mappings a device would not release). */
  get warnings(): number {
    return this.warningCount;
  }

  /** A kernel WARN: counted and traced. */
  warn(message: string): void {
    this.warningCount++;
    if (this.tracer.enabled) this.tracer.emit("vfio.type1.warn", { container: this.container, message });
  }

  /** Counts a warning that its caller traces under its own event. */
  countWarning(): void {
    this.warningCount++;
  }
}
