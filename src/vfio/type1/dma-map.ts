/**
 * The per-container tree of user DMA mappings of vfio type1 (`struct vfio_dma` in an rb-tree keyed by IOVA), with the
 * two kinds of pins a mapping can hold:
 *
 * - **IOMMU pins** (`runs`): when the container has an IOMMU domain, MAP_DMA pins every page of the mapping and maps it
 *   into the domain. The pins are kept as runs of physically contiguous frames (page offset in the mapping, first
 *   frame, length), which is what the domain was programmed with; unmapping walks the runs. Linux recovers the frames
 *   by walking the IOMMU page table instead (iommu_iova_to_phys); the runs give the same frames without the walks.
 * - **Emulated pins** (`pfn_list`): pages a vendor driver pinned with vfio_pin_pages, each with a reference count.
 *   Kept in a per-mapping `PinIndex` (a sparse array of 512-entry leaves) from page index to a slot of a `PinPool`
 *   (typed arrays with a free list), so pinning and unpinning allocate nothing once a leaf exists.
 *
 * `DmaTree` orders mappings by IOVA in sorted blocks of at most 128 (a two-level B-tree without the balancing
 * ceremony): lookups are two binary searches over typed arrays of ends, inserts and removals splice one small block,
 * and iteration is in order.
 * It answers the rb-tree queries type1 makes: `find` (vfio_find_dma: any mapping overlapping a range) and `firstFrom`
 * (vfio_find_dma_first_node: the first mapping ending above an address).
 *
 * Invariants: mappings in a tree never overlap; every block is non-empty and sorted, and blocks are in order; a
 * mapping's `pins` holds only live slots of the tree's pool; `runs` cover disjoint page ranges of the mapping.
 *
 * Not modelled: per-mapping task_struct (the `mm` stands for both task and mm), reserved (non-struct-page) pfns.
 */
import { insertAt, removeAt } from "../../core/index.ts";
import { type AddressSpace, IOMMU_READ, IOMMU_WRITE } from "../../host/index.ts";
import type { VfioEmulatedDevice } from "../driver.ts";

/** Pages per block: small enough that a splice is a short memmove, large enough to keep the directory short. */
const BLOCK = 128;

/** Reference-counted pinned frames, addressed by slot; slots are reused through a free list. */
export class PinPool {
  pfn: Float64Array;
  ref: Int32Array;
  private free: Int32Array;
  private freeTop = 0;
  private next = 0;
  /** Slots in use. */
  live = 0;

  constructor(capacity = 1024) {
    this.pfn = new Float64Array(capacity);
    this.ref = new Int32Array(capacity);
    this.free = new Int32Array(capacity);
  }

  /** A slot holding `pfn` with reference count 1. */
  alloc(pfn: number): number {
    let s: number;
    if (this.freeTop > 0) s = this.free[--this.freeTop]!;
    else {
      if (this.next === this.pfn.length) this.grow();
      s = this.next++;
    }
    this.pfn[s] = pfn;
    this.ref[s] = 1;
    this.live++;
    return s;
  }

  release(slot: number): void {
    this.ref[slot] = 0;
    this.free[this.freeTop++] = slot;
    this.live--;
  }

  private grow(): void {
    const n = this.pfn.length * 2;
    const pfn = new Float64Array(n);
    pfn.set(this.pfn);
    const ref = new Int32Array(n);
    ref.set(this.ref);
    const free = new Int32Array(n);
    free.set(this.free);
    this.pfn = pfn;
    this.ref = ref;
    this.free = free;
  }
}

/** Pages per PinIndex leaf (one leaf covers 2 MiB of a mapping). */
const LEAF = 512;

/**
 * A mapping's emulated pins (its pfn_list): page index within the mapping -> PinPool slot. A sparse two-level array:
 * leaves of 512 entries (slot + 1, 0 = not pinned, and a count in the last cell), created on the first pin in their
 * 2 MiB and kept until the mapping goes. Unlike a Map, pinning and unpinning the same page over and over neither
 * allocates nor rehashes (a Map with deletions rebuilds its table every few operations).
 */
export class PinIndex {
  private readonly leaves = new Map<number, Int32Array>();
  private lastKey = -1;
  private lastLeaf: Int32Array | undefined = undefined;
  /** Distinct pages pinned. */
  size = 0;

  /** `pages`: the mapping's size; a mapping of at most 512 pages gets its one leaf at once (no Map lookup). */
  constructor(pages: number) {
    if (pages <= LEAF) {
      this.lastKey = 0;
      this.lastLeaf = new Int32Array(LEAF + 1);
      this.leaves.set(0, this.lastLeaf);
    }
  }

  /** The slot of page `idx`, or -1. */
  get(idx: number): number {
    if (idx < LEAF && this.lastKey === 0) return this.lastLeaf![idx]! - 1;
    const key = Math.floor(idx / LEAF);
    const leaf = key === this.lastKey ? this.lastLeaf : this.leafAt(key);
    return leaf === undefined ? -1 : leaf[idx - key * LEAF]! - 1;
  }

  has(idx: number): boolean {
    return this.get(idx) >= 0;
  }

  /** Records page `idx` (not yet present) at `slot`. */
  set(idx: number, slot: number): void {
    const key = Math.floor(idx / LEAF);
    let leaf = key === this.lastKey ? this.lastLeaf : this.leafAt(key);
    if (leaf === undefined) {
      leaf = new Int32Array(LEAF + 1);
      this.leaves.set(key, leaf);
      this.lastKey = key;
      this.lastLeaf = leaf;
    }
    leaf[idx - key * LEAF] = slot + 1;
    leaf[LEAF]!++;
    this.size++;
  }

  /** Forgets page `idx` (present). */
  delete(idx: number): void {
    const key = Math.floor(idx / LEAF);
    const leaf = key === this.lastKey ? this.lastLeaf : this.leafAt(key);
    if (leaf === undefined || leaf[idx - key * LEAF] === 0) return;
    leaf[idx - key * LEAF] = 0;
    leaf[LEAF]!--;
    this.size--;
  }

  /** (page index, slot) pairs in increasing page order (allocates; for the rare paths). */
  entries(): [number, number][] {
    const out: [number, number][] = [];
    const keys = [...this.leaves.keys()].sort((a, b) => a - b);
    for (const key of keys) {
      const leaf = this.leaves.get(key)!;
      if (leaf[LEAF] === 0) continue;
      for (let i = 0; i < LEAF; i++) if (leaf[i] !== 0) out.push([key * LEAF + i, leaf[i]! - 1]);
    }
    return out;
  }

  clear(): void {
    this.leaves.clear();
    this.lastKey = -1;
    this.lastLeaf = undefined;
    this.size = 0;
  }

  private leafAt(key: number): Int32Array | undefined {
    const leaf = this.leaves.get(key);
    if (leaf !== undefined) {
      this.lastKey = key;
      this.lastLeaf = leaf;
    }
    return leaf;
  }
}

/**
 * One MAP_DMA mapping (struct vfio_dma). Addresses are bytes; `size` is a multiple of 4 KiB.
 *
 * A record shared by the backend's parts, each field written by one of them: `vaddr` (mapping.ts) and `vaddrInvalid`
 * (state.ts); `runs` and `iommuMapped` false (pinning.ts), `iommuMapped` true once mapped (mapping.ts, groups.ts);
 * `lockedVm` (accounting.ts); `pins` and the holders (emulated.ts); `bitmap` (dirty-tracking.ts, and cleared by
 * mapping.ts when the mapping goes).
 */
export class VfioDma {
  readonly iova: number;
  vaddr: number;
  readonly size: number;
  /** IOMMU_READ | IOMMU_WRITE, from the device's point of view. */
  readonly prot: number;
  /** The address space `vaddr` belongs to, charged for locked memory (dma->mm and dma->task). */
  mm: AddressSpace;
  /** Pinned and mapped into the container's IOMMU domain. */
  iommuMapped = false;
  /** VFIO_DMA_UNMAP_FLAG_VADDR invalidated `vaddr` until a MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR supplies a new one. */
  vaddrInvalid = false;
  /** Pages this mapping charged to `mm.locked_vm` and has not yet uncharged. */
  lockedVm = 0;
  /** Emulated pins: page index within the mapping -> PinPool slot (the pfn_list); created on the first pin. */
  pins: PinIndex | undefined = undefined;
  /**
   * Emulated pin references taken through each device (parallel arrays, as a mapping sees one or two devices), to
   * name the culprits when an unmap cannot complete.
   */
  holderDevices: VfioEmulatedDevice[] = [];
  holderCounts: number[] = [];
  /** IOMMU pins as (page offset, first pfn, pages) triples; `runCount` triples are valid. */
  runs: Float64Array = EMPTY_RUNS;
  runCount = 0;
  /** Dirty bitmap, one bit per page, while dirty tracking is on. */
  bitmap: Uint8Array | undefined = undefined;

  constructor(iova: number, vaddr: number, size: number, prot: number, mm: AddressSpace) {
    this.iova = iova;
    this.vaddr = vaddr;
    this.size = size;
    this.prot = prot;
    this.mm = mm;
  }

  /** Exclusive end. */
  get end(): number {
    return this.iova + this.size;
  }

  get pages(): number {
    return this.size / 4096;
  }

  /** Number of distinct pages emulated devices hold pinned (the pfn_list's size). */
  get pinnedPages(): number {
    return this.pins === undefined ? 0 : this.pins.size;
  }

  /** Pages pinned for the IOMMU domain. */
  get iommuPinnedPages(): number {
    let n = 0;
    for (let i = 0; i < this.runCount; i++) n += this.runs[i * 3 + 2]!;
    return n;
  }

  /** Records an IOMMU-pinned run, merging it into the previous one when both pages and frames continue it. */
  addRun(pageOffset: number, pfn: number, count: number): void {
    const k = this.runCount;
    if (k > 0) {
      const p = (k - 1) * 3;
      const len = this.runs[p + 2]!;
      if (this.runs[p]! + len === pageOffset && this.runs[p + 1]! + len === pfn) {
        this.runs[p + 2] = len + count;
        return;
      }
    }
    if ((k + 1) * 3 > this.runs.length) {
      const bigger = new Float64Array(Math.max(24, this.runs.length * 2));
      bigger.set(this.runs);
      this.runs = bigger;
    }
    this.runs[k * 3] = pageOffset;
    this.runs[k * 3 + 1] = pfn;
    this.runs[k * 3 + 2] = count;
    this.runCount = k + 1;
  }

  clearRuns(): void {
    this.runs = EMPTY_RUNS;
    this.runCount = 0;
  }

  /** The frame of page `index` if it is IOMMU-pinned (binary search over the runs), else -1. */
  iommuPfnAt(index: number): number {
    let lo = 0;
    let hi = this.runCount - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const off = this.runs[mid * 3]!;
      if (index < off) hi = mid - 1;
      else if (index >= off + this.runs[mid * 3 + 2]!) lo = mid + 1;
      else return this.runs[mid * 3 + 1]! + (index - off);
    }
    return -1;
  }

  /** "[0x1000, 0x3000)" for messages. */
  describe(): string {
    return `[0x${this.iova.toString(16)}, 0x${this.end.toString(16)})`;
  }
}

const EMPTY_RUNS = new Float64Array(0);

/** "rw", "r-" or "-w": a mapping's IOMMU_READ / IOMMU_WRITE for messages and trace events. */
export function protName(prot: number): string {
  return `${prot & IOMMU_READ ? "r" : "-"}${prot & IOMMU_WRITE ? "w" : "-"}`;
}

/** One block of the tree: mappings in IOVA order and, in a typed array, their ends (the search key). */
interface Block {
  readonly dmas: VfioDma[];
  /** ends[i] = dmas[i].iova + dmas[i].size; capacity BLOCK + 1 so an insert can overflow before the split. */
  readonly ends: Float64Array;
}

function newBlock(dmas: VfioDma[]): Block {
  const ends = new Float64Array(BLOCK + 1);
  for (let i = 0; i < dmas.length; i++) ends[i] = dmas[i]!.iova + dmas[i]!.size;
  return { dmas, ends };
}

/**
 * Mappings ordered by IOVA (the dma_list rb-tree). Searches read only typed arrays (the blocks' last ends, then one
 * block's ends) until the answer is found, so a lookup among tens of thousands of mappings touches a few cache
 * lines.
 */
export class DmaTree {
  private blocks: Block[] = [];
  /** lastEnds[b] = the end of block b's last mapping; valid for b < blocks.length. */
  private lastEnds = new Float64Array(16);
  private count = 0;
  /** Last mapping returned by `find`: page-by-page lookups (vfio_pin_pages) mostly hit the same one. */
  private last: VfioDma | undefined = undefined;
  /** The block the tree's last mapping left, kept for the next first one (a VMM mapping and unmapping one window). */
  private spare: Block | undefined = undefined;

  get size(): number {
    return this.count;
  }

  /** vfio_find_dma: a mapping overlapping [start, start + size), or undefined. `size` 0 means the point `start`. */
  find(start: number, size: number): VfioDma | undefined {
    const end = start + (size === 0 ? 1 : size);
    const c = this.last;
    if (c !== undefined && start < c.iova + c.size && end > c.iova) return c;
    const d = this.firstFrom(start);
    if (d === undefined || d.iova >= end) return undefined;
    this.last = d;
    return d;
  }

  /** The first mapping whose end lies above `start` (vfio_find_dma_first_node without the size bound). */
  firstFrom(start: number): VfioDma | undefined {
    const bi = this.blockIndex(start);
    if (bi >= this.blocks.length) return undefined;
    const b = this.blocks[bi]!;
    return b.dmas[indexIn(b, start)];
  }

  insert(dma: VfioDma): void {
    this.count++;
    if (this.blocks.length === 0) {
      const b = this.spare ?? newBlock([]);
      this.spare = undefined;
      b.dmas.push(dma);
      b.ends[0] = dma.iova + dma.size;
      this.blocks.push(b);
      this.rebuildDirectory();
      return;
    }
    let bi = this.blockIndex(dma.iova);
    if (bi >= this.blocks.length) bi = this.blocks.length - 1;
    const b = this.blocks[bi]!;
    const i = indexIn(b, dma.iova);
    const n = b.dmas.length;
    insertAt(b.dmas, i, dma);
    b.ends.copyWithin(i + 1, i, n);
    b.ends[i] = dma.iova + dma.size;
    if (b.dmas.length > BLOCK) {
      const tail = b.dmas.splice(BLOCK / 2);
      this.blocks.splice(bi + 1, 0, newBlock(tail));
      this.rebuildDirectory();
    } else if (i === n) {
      this.lastEnds[bi] = dma.iova + dma.size;
    }
  }

  remove(dma: VfioDma): void {
    const bi = this.blockIndex(dma.iova);
    const b = this.blocks[bi];
    const i = b === undefined ? -1 : indexIn(b, dma.iova);
    if (b === undefined || b.dmas[i] !== dma) {
      throw new Error(`DmaTree.remove: mapping ${dma.describe()} is not in the tree`);
    }
    const n = b.dmas.length;
    removeAt(b.dmas, i);
    b.ends.copyWithin(i, i + 1, n);
    if (b.dmas.length === 0) {
      this.blocks.splice(bi, 1);
      if (this.blocks.length === 0) this.spare = b;
      this.rebuildDirectory();
    } else if (i === n - 1) {
      this.lastEnds[bi] = b.ends[n - 2]!;
    }
    this.count--;
    if (this.last === dma) this.last = undefined;
  }

  /** The mapping after `dma` in IOVA order. */
  next(dma: VfioDma): VfioDma | undefined {
    return this.firstFrom(dma.iova + dma.size);
  }

  /** The mapping before `dma` in IOVA order. */
  prev(dma: VfioDma): VfioDma | undefined {
    const bi = this.blockIndex(dma.iova);
    const b = this.blocks[bi];
    if (b === undefined) return undefined;
    const i = indexIn(b, dma.iova);
    if (i > 0) return b.dmas[i - 1];
    const p = this.blocks[bi - 1];
    return p === undefined ? undefined : p.dmas[p.dmas.length - 1];
  }

  first(): VfioDma | undefined {
    return this.blocks[0]?.dmas[0];
  }

  /** In IOVA order. The tree must not change during the iteration. */
  *[Symbol.iterator](): IterableIterator<VfioDma> {
    for (const b of this.blocks) yield* b.dmas;
  }

  /** A snapshot in IOVA order (safe to change the tree while walking it). */
  toArray(): VfioDma[] {
    const out: VfioDma[] = [];
    for (const b of this.blocks) for (const d of b.dmas) out.push(d);
    return out;
  }

  /** Checks the ordering invariants and the directories; throws a plain Error naming the first violation (tests). */
  checkInvariants(): void {
    let prevEnd = -1;
    let n = 0;
    this.blocks.forEach((b, bi) => {
      if (b.dmas.length === 0 || b.dmas.length > BLOCK) throw new Error(`DmaTree: block of ${b.dmas.length} mappings`);
      b.dmas.forEach((d, i) => {
        if (d.iova < prevEnd) throw new Error(`DmaTree: mapping ${d.describe()} overlaps or precedes its predecessor`);
        if (b.ends[i] !== d.iova + d.size) throw new Error(`DmaTree: stale end for ${d.describe()}`);
        prevEnd = d.iova + d.size;
        n++;
      });
      if (this.lastEnds[bi] !== prevEnd) throw new Error(`DmaTree: stale directory entry for block ${bi}`);
    });
    if (n !== this.count) throw new Error(`DmaTree: counted ${n} mappings, size says ${this.count}`);
  }

  private rebuildDirectory(): void {
    const nb = this.blocks.length;
    if (this.lastEnds.length < nb) this.lastEnds = new Float64Array(Math.max(nb, this.lastEnds.length * 2));
    for (let i = 0; i < nb; i++) {
      const b = this.blocks[i]!;
      this.lastEnds[i] = b.ends[b.dmas.length - 1]!;
    }
  }

  /** Index of the first block whose last mapping ends above `addr` (blocks.length if none). */
  private blockIndex(addr: number): number {
    const ends = this.lastEnds;
    let lo = 0;
    let hi = this.blocks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ends[mid]! <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** Index in a block of the first mapping whose end lies above `addr` (its length if none). */
function indexIn(b: Block, addr: number): number {
  const ends = b.ends;
  let lo = 0;
  let hi = b.dmas.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ends[mid]! <= addr) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
