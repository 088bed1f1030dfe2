/**
 * The guest kernel's page allocator (its alloc_pages) over the RAM the VMM gives the guest: first-fit runs of
 * contiguous 4 KiB pages per RAM block, from 1 MiB up (below 1 MiB is left alone, as a PC kernel leaves it); frees
 * coalesce with their neighbours. The model runs no guest kernel, so the VMM provides this to the guest's drivers as
 * part of its `VmmGuestPlatform` (guest-platform.ts).
 *
 * Blocks join when the VMM hot-plugs them (`addBlock`) and leave on unplug (`removeBlock`, which also forgets the
 * allocations in them: the VMM took the memory away, and a later free of one is a no-op). `allocPagesIn` (or `only`)
 * takes pages from one named block, so a scenario can put a buffer in a DIMM it later unplugs.
 *
 * Not modelled: NUMA, zones, page reclaim, memory offlining (the guest is not asked before an unplug).
 *
 * Invariants: free runs of a block are sorted, disjoint, non-adjacent and inside [max(block start, 1 MiB), block end);
 * a live allocation lies in one block and overlaps no free run and no other allocation; `livePages` is the sum of the
 * live allocations' page counts.
 */
import { Errno, type Gpa, gpa, hex, KernelError, PAGE_SIZE } from "../core/index.ts";

/** First guest-physical byte the page allocator hands out. */
export const GUEST_ALLOC_START = 0x10_0000;

interface Extent {
  start: number;
  end: number;
}

interface BlockPool {
  readonly name: string;
  readonly start: number;
  readonly end: number;
  readonly free: Extent[];
}

/** A named range of guest RAM (a `RamBlock` is one). */
export interface GuestRamRange {
  readonly name: string;
  readonly gpa: Gpa;
  readonly size: number;
}

/** First-fit allocator of contiguous page runs, per RAM block; frees coalesce. */
export class BlockPageAllocator {
  private readonly pools: BlockPool[] = [];
  private readonly live = new Map<number, number>();
  livePages = 0;
  /** While set, `allocPages` takes pages from this block only (how a buffer is put in a given DIMM). */
  only: string | undefined;

  constructor(
    blocks: readonly GuestRamRange[],
    private readonly minStart = GUEST_ALLOC_START,
  ) {
    for (const b of blocks) this.addBlock(b);
  }

  addBlock(b: GuestRamRange): void {
    const start = Math.max(b.gpa, this.minStart);
    const end = b.gpa + b.size;
    const pool: BlockPool = { name: b.name, start, end, free: end > start ? [{ start, end }] : [] };
    this.pools.push(pool);
    this.pools.sort((x, y) => x.start - y.start);
  }

  /** Forgets block `name` and every allocation inside it (the VMM unplugged it). */
  removeBlock(name: string): void {
    const i = this.pools.findIndex((p) => p.name === name);
    if (i < 0) return;
    const p = this.pools[i]!;
    for (const [at, count] of [...this.live]) {
      if (at >= p.start && at < p.end) {
        this.live.delete(at);
        this.livePages -= count;
      }
    }
    this.pools.splice(i, 1);
  }

  blockNames(): string[] {
    return this.pools.map((p) => p.name);
  }

  allocPages(count: number): Gpa {
    if (this.only !== undefined) return this.allocPagesIn(this.only, count);
    this.checkCount(count);
    for (const p of this.pools) {
      const at = this.take(p, count);
      if (at >= 0) return gpa(at);
    }
    throw new KernelError(Errno.ENOMEM, `guest out of memory: no ${count} contiguous free pages`);
  }

  /** `count` contiguous pages from block `name` (ENOENT: no such block; ENOMEM: it has no such run). */
  allocPagesIn(name: string, count: number): Gpa {
    this.checkCount(count);
    const p = this.pools.find((x) => x.name === name);
    if (p === undefined) {
      throw new KernelError(
        Errno.ENOENT,
        `the guest has no RAM block "${name}" (blocks: ${this.blockNames().join(", ") || "none"})`,
      );
    }
    const at = this.take(p, count);
    if (at < 0) throw new KernelError(Errno.ENOMEM, `guest RAM block ${name} has no ${count} contiguous free pages`);
    return gpa(at);
  }

  freePages(at: Gpa, count: number): void {
    if (this.live.get(at) !== count) {
      // Freed after its block was unplugged: the memory is gone, nothing to give back.
      if (!this.pools.some((p) => at >= p.start && at < p.end)) return;
      throw new KernelError(Errno.EINVAL, `freePages(${hex(at)}, ${count}) does not match an allocation`);
    }
    this.live.delete(at);
    this.livePages -= count;
    const pool = this.pools.find((p) => at >= p.start && at < p.end)!;
    const free = pool.free;
    const end = at + count * PAGE_SIZE;
    let i = 0;
    while (i < free.length && free[i]!.start < at) i++;
    const prev = free[i - 1];
    const next = free[i];
    if (prev && prev.end === at && next && next.start === end) {
      prev.end = next.end;
      free.splice(i, 1);
    } else if (prev && prev.end === at) prev.end = end;
    else if (next && next.start === end) next.start = at;
    else free.splice(i, 0, { start: at, end });
  }

  private take(p: BlockPool, count: number): number {
    const bytes = count * PAGE_SIZE;
    for (let i = 0; i < p.free.length; i++) {
      const e = p.free[i]!;
      if (e.end - e.start < bytes) continue;
      const at = e.start;
      e.start += bytes;
      if (e.start === e.end) p.free.splice(i, 1);
      this.live.set(at, count);
      this.livePages += count;
      return at;
    }
    return -1;
  }

  private checkCount(count: number): void {
    if (!Number.isInteger(count) || count <= 0) {
      throw new KernelError(Errno.EINVAL, `allocPages(${count}): the page count must be a positive integer`);
    }
  }
}
