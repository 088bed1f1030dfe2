/**
 * A multi-level I/O page table in the shape of VT-d second-level translation: 512 entries per table, 9 IOVA bits per
 * level, 4 levels for a 48-bit IOVA space (3 levels for 39 bits), leaves of 4 KiB (level 1), 2 MiB (level 2) and
 * 1 GiB (level 3) with READ and WRITE permission bits.
 *
 * Representation. Each table is a `Float64Array(513)`: entries 0..511 plus, in slot 512, the number of present
 * entries (so an emptied table can be released without scanning it). An entry is a double: 0 = not present; a leaf is
 * `frame * 4 + prot` (> 0, since prot is 1..3); a pointer to the next level is `-(table index + 1)` (< 0). Frame
 * numbers stay below 2^40 (52-bit physical addresses), so entries are exact. Decoding needs one sign test, `v & 3`
 * and a multiply: no floating-point modulo, which costs more than the rest of a walk. A walk reads numbers from typed
 * arrays and allocates nothing.
 *
 * Semantics, following iommu_map()/iommu_unmap() on VT-d:
 * - `map` splits the range into the largest page sizes that the alignment of iova and hpa and the remaining length
 *   allow (as iommu_pgsize() does with the domain's pgsize_bitmap). If any part of the range is already mapped it
 *   fails with EEXIST before changing anything.
 * - `unmap` removes every leaf that intersects the range, whole: a range that starts or ends inside a superpage
 *   removes the entire superpage (what intel_iommu_unmap does: it "unmaps more than the size argument if it happens to
 *   be a large-page mapping"). Superpages are never split. Holes are skipped. The return value counts the bytes of the
 *   leaves actually removed, and `lastUnmapStart/lastUnmapEnd` give the span they covered so the caller can invalidate
 *   exactly that span in the IOTLB.
 * - Tables emptied by `unmap` are released at once (the root is kept); `stats()` counts live and total tables.
 *
 * Not modelled: the memory the tables would occupy in host RAM (tables live on the JS heap, so ENOMEM cannot happen),
 * snoop/access/dirty bits, first-level (PASID) tables, 5-level (57-bit) tables.
 */
import { Errno, type Hpa, hex, type Iova, KernelError, PAGE_SIZE, SZ_1G, SZ_2M } from "../core/index.ts";

/** Permission bits of a mapping (include/linux/iommu.h). A DMA access is also 1 (read) or 2 (write). */
export const IOMMU_READ = 1;
export const IOMMU_WRITE = 2;

/** Page sizes this table can map, as Linux's pgsize_bitmap: 4 KiB | 2 MiB | 1 GiB. */
export const VTD_PGSIZE_BITMAP = PAGE_SIZE | SZ_2M | SZ_1G;

const ENTRIES = 512;
const COUNT_SLOT = 512;
/** 2^27: pfn bits covered by levels 1..3; level 4's index is taken from the bits above. */
const PFN_LOW_SPAN = 134217728;

/** Size in bytes covered by one entry at `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB, 4 = 512 GiB). */
export function levelSize(level: number): number {
  return LEVEL_SIZES[level] ?? 2 ** (12 + 9 * (level - 1));
}
const LEVEL_SIZES = [0, PAGE_SIZE, SZ_2M, SZ_1G, 512 * SZ_1G];

/** Caller-owned result of a walk (reused across walks so the walk allocates nothing). */
export class WalkResult {
  /** Host-physical address the walked IOVA translates to (page base + offset). */
  phys = 0;
  /** Host frame number of the 4 KiB page containing `phys`. */
  frame = 0;
  /** IOMMU_READ | IOMMU_WRITE bits of the leaf. */
  prot = 0;
  /** Size of the leaf: 4096, 2 MiB or 1 GiB. */
  pageSize = 0;
  /** Level of the leaf: 1, 2 or 3. */
  level = 0;
}

export interface IoPageTableOptions {
  /** IOVA width in bits: 48 (4 levels, the default) or 39 (3 levels). */
  readonly addressWidth?: 39 | 48;
  /** Page sizes allowed for leaves, as a bitmap of sizes; defaults to 4 KiB | 2 MiB | 1 GiB. Must include 4 KiB. */
  readonly pgsizeBitmap?: number;
}

export interface IoPageTableStats {
  readonly levels: number;
  readonly addressWidth: number;
  /** Tables currently allocated, the root included. */
  readonly tables: number;
  /** Tables ever allocated (the root included). */
  readonly tablesAllocated: number;
  readonly tablesFreed: number;
  readonly mappedBytes: number;
  readonly leaves4K: number;
  readonly leaves2M: number;
  readonly leaves1G: number;
}

/** One leaf, as listed by `mappings()` (debugging, dashboard, tests). */
export interface IoMapping {
  readonly iova: Iova;
  readonly phys: Hpa;
  readonly size: number;
  readonly prot: number;
}

export class IoPageTable {
  readonly levels: 3 | 4;
  readonly addressWidth: 39 | 48;
  /** 2^addressWidth: first IOVA beyond the table's reach. */
  readonly limit: number;
  readonly pgsizeBitmap: number;
  /** Start and end (exclusive) of the span of leaves removed by the last `unmap` (equal when nothing was removed). */
  lastUnmapStart = 0;
  lastUnmapEnd = 0;

  private readonly tables: (Float64Array | undefined)[] = [];
  private readonly freeIds: number[] = [];
  private live = 0;
  private everAllocated = 0;
  private freed = 0;
  private mapped = 0;
  /** Leaves by level (index 1..3). */
  private readonly leafCount = new Float64Array(4);
  /** Path of the current descent in unmap: table index and entry index per level. */
  private readonly pathTable = new Int32Array(5);
  private readonly pathIndex = new Int32Array(5);

  constructor(opts: IoPageTableOptions = {}) {
    const width = opts.addressWidth ?? 48;
    if (width !== 39 && width !== 48) {
      throw new KernelError(
        Errno.EINVAL,
        `I/O page table address width ${String(width)} is not supported: use 39 or 48`,
      );
    }
    this.addressWidth = width;
    this.levels = width === 48 ? 4 : 3;
    this.limit = 2 ** width;
    const bitmap = opts.pgsizeBitmap ?? VTD_PGSIZE_BITMAP;
    if ((bitmap & PAGE_SIZE) === 0 || (bitmap & ~VTD_PGSIZE_BITMAP) !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `page size bitmap ${hex(bitmap)} must include 4 KiB and contain only 4 KiB, 2 MiB and 1 GiB`,
      );
    }
    this.pgsizeBitmap = bitmap;
    this.allocTable(); // the root, index 0
  }

  // ---- lookup (hot path) -----------------------------------------------------------------------------------------

  /**
   * Walks the table for `iova` without allocating. Returns true and fills `out` when a leaf maps it, false when not
   * present (including an IOVA beyond the address width).
   */
  walk(iova: Iova, out: WalkResult): boolean {
    if (!(iova >= 0 && iova < this.limit)) return false;
    const pfn = Math.floor(iova / PAGE_SIZE);
    let t = this.tables[0]!;
    for (let level: number = this.levels; level >= 1; level--) {
      const idx = level === 4 ? Math.floor(pfn / PFN_LOW_SPAN) & 511 : (pfn >>> (9 * (level - 1))) & 511;
      const v = t[idx]!;
      if (v < 0) {
        t = this.tables[-v - 1]!;
        continue;
      }
      if (v === 0) return false;
      const prot = v & 3;
      // Page number within the leaf: the low 9*(level-1) bits of pfn (all below 2^27, so the int32 mask is exact).
      const sub = level === 1 ? 0 : pfn & ((1 << (9 * (level - 1))) - 1);
      const frame = (v - prot) * 0.25 + sub;
      out.frame = frame;
      out.phys = frame * PAGE_SIZE + (iova - pfn * PAGE_SIZE);
      out.prot = prot;
      out.pageSize = levelSize(level);
      out.level = level;
      return true;
    }
    return false;
  }

  /** iommu_iova_to_phys: the host-physical address `iova` maps to, or -1 when it is not mapped. */
  iovaToPhys(iova: Iova): Hpa | -1 {
    const r = scratch;
    return this.walk(iova, r) ? (r.phys as Hpa) : -1;
  }

  // ---- map / unmap -------------------------------------------------------------------------------------------------

  /**
   * Maps [iova, iova+size) to [hpa, hpa+size) with `prot`, using the largest page sizes alignment allows.
   * EINVAL: unaligned or empty range, bad prot. EFAULT: beyond the address width. EEXIST: part of the range is
   * already mapped (nothing is changed then).
   */
  map(iova: Iova, hpa: Hpa, size: number, prot: number): void {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `cannot map ${size} bytes: the size must be a positive multiple of 4096`);
    }
    if (!Number.isSafeInteger(iova) || iova < 0 || iova % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `cannot map at IOVA ${hex(iova)}: it must be a 4 KiB aligned address`);
    }
    if (!Number.isSafeInteger(hpa) || hpa < 0 || hpa % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `cannot map to HPA ${hex(hpa)}: it must be a 4 KiB aligned address`);
    }
    if ((prot & (IOMMU_READ | IOMMU_WRITE)) === 0 || (prot & ~(IOMMU_READ | IOMMU_WRITE)) !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `mapping permission ${prot} is invalid: use IOMMU_READ (1) | IOMMU_WRITE (2)`,
      );
    }
    if (iova + size > this.limit) {
      throw new KernelError(
        Errno.EFAULT,
        `IOVA range [${hex(iova)}, ${hex(iova + size)}) exceeds the ${this.addressWidth}-bit I/O address width`,
      );
    }
    const clash = this.firstMapped(iova, iova + size);
    if (clash >= 0) {
      throw new KernelError(
        Errno.EEXIST,
        `IOVA ${hex(clash)} is already mapped: cannot map [${hex(iova)}, ${hex(iova + size)})`,
        { iova: clash },
      );
    }
    let va: number = iova;
    let pa: number = hpa;
    let left = size;
    while (left > 0) {
      const level = this.pickLevel(va, pa, left);
      this.install(va, pa / PAGE_SIZE, level, prot);
      const n = levelSize(level);
      this.mapped += n;
      this.leafCount[level]!++;
      va += n;
      pa += n;
      left -= n;
    }
  }

  /**
   * Removes every leaf intersecting [iova, iova+size), whole superpages included; returns the bytes removed.
   * EINVAL for an unaligned or empty range. Unmapping nothing returns 0.
   */
  unmap(iova: Iova, size: number): number {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `cannot unmap ${size} bytes: the size must be a positive multiple of 4096`);
    }
    if (!Number.isSafeInteger(iova) || iova < 0 || iova % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `cannot unmap at IOVA ${hex(iova)}: it must be a 4 KiB aligned address`);
    }
    const end = Math.min(iova + size, this.limit);
    let lo = Number.POSITIVE_INFINITY;
    let hi = 0;
    let removed = 0;
    let cursor: number = iova;
    const pathTable = this.pathTable;
    const pathIndex = this.pathIndex;
    while (cursor < end) {
      const pfn = Math.floor(cursor / PAGE_SIZE);
      let tid = 0;
      let level = this.levels;
      for (;;) {
        const t = this.tables[tid]!;
        const idx = this.index(pfn, level);
        pathTable[level] = tid;
        pathIndex[level] = idx;
        const v = t[idx]!;
        const span = levelSize(level);
        if (v === 0) {
          cursor = cursor - (cursor % span) + span;
          break;
        }
        if (v > 0) {
          const base = cursor - (cursor % span);
          t[idx] = 0;
          t[COUNT_SLOT]!--;
          this.releaseEmpty(level);
          this.mapped -= span;
          this.leafCount[level]!--;
          removed += span;
          if (base < lo) lo = base;
          hi = base + span;
          cursor = base + span;
          break;
        }
        tid = -v - 1;
        level--;
      }
    }
    this.lastUnmapStart = removed > 0 ? lo : iova;
    this.lastUnmapEnd = removed > 0 ? hi : iova;
    return removed;
  }

  /** First mapped IOVA in [start, end), or -1: skips holes a whole table entry at a time. */
  firstMapped(start: number, end: number): number {
    let cursor = start;
    const stop = Math.min(end, this.limit);
    while (cursor < stop) {
      const pfn = Math.floor(cursor / PAGE_SIZE);
      let t = this.tables[0]!;
      for (let level = this.levels; ; level--) {
        const v = t[this.index(pfn, level)]!;
        if (v === 0) {
          const span = levelSize(level);
          cursor = cursor - (cursor % span) + span;
          break;
        }
        if (v > 0) return cursor;
        t = this.tables[-v - 1]!;
      }
    }
    return -1;
  }

  /** Every leaf in ascending IOVA order (allocates: for inspection, not for hot paths). */
  *mappings(): Generator<IoMapping> {
    yield* this.leavesOf(0, this.levels, 0);
  }

  /** Releases every table and mapping (the table is empty afterwards, as if new). */
  clear(): void {
    for (let i = 1; i < this.tables.length; i++) {
      if (this.tables[i] !== undefined) {
        this.tables[i] = undefined;
        this.freed++;
        this.live--;
      }
    }
    this.tables.length = 1;
    this.freeIds.length = 0;
    this.tables[0]!.fill(0);
    this.mapped = 0;
    this.leafCount.fill(0);
  }

  stats(): IoPageTableStats {
    return {
      levels: this.levels,
      addressWidth: this.addressWidth,
      tables: this.live,
      tablesAllocated: this.everAllocated,
      tablesFreed: this.freed,
      mappedBytes: this.mapped,
      leaves4K: this.leafCount[1]!,
      leaves2M: this.leafCount[2]!,
      leaves1G: this.leafCount[3]!,
    };
  }

  /** Tables currently allocated, the root included. */
  get tableCount(): number {
    return this.live;
  }

  get mappedBytes(): number {
    return this.mapped;
  }

  // ---- internals -----------------------------------------------------------------------------------------------------

  private index(pfn: number, level: number): number {
    return level === 4 ? Math.floor(pfn / PFN_LOW_SPAN) & 511 : (pfn >>> (9 * (level - 1))) & 511;
  }

  /** Largest allowed leaf level for a chunk at va/pa with `left` bytes remaining. */
  private pickLevel(va: number, pa: number, left: number): number {
    for (let level = 3; level > 1; level--) {
      const n = levelSize(level);
      if ((this.pgsizeBitmap & n) !== 0 && left >= n && va % n === 0 && pa % n === 0) return level;
    }
    return 1;
  }

  private install(va: number, frame: number, leafLevel: number, prot: number): void {
    const pfn = va / PAGE_SIZE;
    let t = this.tables[0]!;
    for (let level = this.levels; level > leafLevel; level--) {
      const idx = this.index(pfn, level);
      const v = t[idx]!;
      if (v === 0) {
        const child = this.allocTable();
        t[idx] = -(child + 1);
        t[COUNT_SLOT]!++;
        t = this.tables[child]!;
      } else {
        // firstMapped() ran over the whole range, so a leaf here would be a bug in this module.
        if (v > 0) throw new Error(`io-pgtable: unexpected leaf above level ${leafLevel} at ${hex(va)}`);
        t = this.tables[-v - 1]!;
      }
    }
    const idx = this.index(pfn, leafLevel);
    if (t[idx] !== 0) throw new Error(`io-pgtable: entry for ${hex(va)} is unexpectedly present`);
    t[idx] = frame * 4 + prot;
    t[COUNT_SLOT]!++;
  }

  /** After clearing an entry at `level`, releases the tables on the recorded path that became empty. */
  private releaseEmpty(level: number): void {
    for (let l = level; l < this.levels; l++) {
      const tid = this.pathTable[l]!;
      const t = this.tables[tid]!;
      if (tid === 0 || t[COUNT_SLOT]! > 0) return;
      this.tables[tid] = undefined;
      this.freeIds.push(tid);
      this.live--;
      this.freed++;
      const parent = this.tables[this.pathTable[l + 1]!]!;
      parent[this.pathIndex[l + 1]!] = 0;
      parent[COUNT_SLOT]!--;
    }
  }

  private allocTable(): number {
    const t = new Float64Array(ENTRIES + 1);
    const id = this.freeIds.pop();
    this.live++;
    this.everAllocated++;
    if (id !== undefined) {
      this.tables[id] = t;
      return id;
    }
    this.tables.push(t);
    return this.tables.length - 1;
  }

  private *leavesOf(tid: number, level: number, base: number): Generator<IoMapping> {
    const t = this.tables[tid]!;
    const span = levelSize(level);
    for (let i = 0; i < ENTRIES; i++) {
      const v = t[i]!;
      if (v === 0) continue;
      const va = base + i * span;
      if (v > 0) {
        const prot = v & 3;
        yield { iova: va as Iova, phys: ((v - prot) * 0.25 * PAGE_SIZE) as Hpa, size: span, prot };
      } else {
        yield* this.leavesOf(-v - 1, level - 1, va);
      }
    }
  }
}

const scratch = new WalkResult();
