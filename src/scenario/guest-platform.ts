/**
 * The machine as the guest GPU driver sees it inside a scenario's VM: a `GuestPlatform` (src/guest/platform.ts) built
 * from the in-process VMM's public API only.
 *
 * - memory: the VMM's guest RAM (loads and stores through the VMM process's mappings);
 * - pages: the guest kernel's page allocator: first-fit runs of contiguous pages per RAM block, from 1 MiB up (below
 *   1 MiB is left alone, as a PC kernel leaves it). Blocks join when the VMM hot-plugs them (`addBlock`) and leave on
 *   unplug (`removeBlock`, which also forgets allocations in them: the VMM took the memory away). `allocPagesIn` takes
 *   pages from one named block, so a scenario can put a buffer in a DIMM it later unplugs;
 * - time: the host's VirtualClock; `waitUntil` advances it in growing steps (1 us doubling up to 100 us), so
 *   scheduled work (the vGPU scheduler's slices, engine completions, interrupts) runs while the guest waits;
 * - device: the attached PCI function (config cycles, BARs where the VMM placed them, MMIO through the VMM's dispatch,
 *   interrupts through the VMM's injection).
 *
 * The guest helper's test-support adapter does the same for unit tests; this one is the runner's, with named blocks.
 * Not modelled: guest NUMA, page reclaim, memory offlining (the guest is not asked before an unplug), a guest IOMMU.
 */
import { Errno, type Gpa, gpa, hex, KernelError, PAGE_SIZE, type VirtualClock } from "../core/index.ts";
import type { GuestMemory, GuestPageAllocator, GuestPciFunction, GuestPlatform, GuestTime } from "../guest/index.ts";
import type { GuestPciDevice, RamBlock, Vmm } from "../vmm/index.ts";

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

/** First-fit allocator of contiguous page runs, per RAM block; frees coalesce. */
export class BlockPageAllocator implements GuestPageAllocator {
  private readonly pools: BlockPool[] = [];
  private readonly live = new Map<number, number>();
  livePages = 0;
  /** While set, `allocPages` takes pages from this block only (how a buffer is put in a given DIMM). */
  only: string | undefined;

  constructor(
    blocks: readonly RamBlock[],
    private readonly minStart = GUEST_ALLOC_START,
  ) {
    for (const b of blocks) this.addBlock(b);
  }

  addBlock(b: { readonly name: string; readonly gpa: number; readonly size: number }): void {
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

/** Guest time over the host's virtual clock. */
export class ClockGuestTime implements GuestTime {
  constructor(
    private readonly clock: VirtualClock,
    private readonly maxStepNs = 100_000,
  ) {}

  now(): number {
    return this.clock.now();
  }

  waitUntil(done: () => boolean, timeoutNs: number): boolean {
    const deadline = this.clock.now() + timeoutNs;
    let step = 1000;
    while (!done()) {
      const now = this.clock.now();
      if (now >= deadline) return false;
      this.clock.advance(Math.min(step, deadline - now));
      if (step < this.maxStepNs) step = Math.min(this.maxStepNs, step * 2);
    }
    return true;
  }
}

/** The attached PCI function as the guest's CPU reaches it through the VMM. */
export class VmmPciFunction implements GuestPciFunction {
  constructor(
    private readonly vmm: Vmm,
    readonly device: GuestPciDevice,
    /** Called before every MMIO write: the runner tells the isolation checker whose trapped write this is. */
    private readonly beforeWrite?: () => void,
  ) {}

  configRead(offset: number, size: 1 | 2 | 4): number {
    return this.device.configRead(offset, size);
  }
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.device.configWrite(offset, size, value);
  }
  barAddress(index: number): Gpa | undefined {
    return this.device.bars.some((b) => b.index === index) ? gpa(this.device.barAddress(index)) : undefined;
  }
  barSize(index: number): number {
    return this.device.bars.find((b) => b.index === index)?.size ?? 0;
  }
  mmioRead(at: Gpa, size: 1 | 2 | 4 | 8): number {
    return this.vmm.mmioRead(at, size);
  }
  mmioWrite(at: Gpa, size: 1 | 2 | 4 | 8, value: number): void {
    this.beforeWrite?.();
    this.vmm.mmioWrite(at, size, value);
  }
  onInterrupt(handler: (vector: number) => void): void {
    this.vmm.onInterrupt(this.device, handler);
  }
}

/** The GuestPlatform of the guest running in `vmm`, for its attached GPU `device`. */
export class ScenarioGuestPlatform implements GuestPlatform {
  readonly memory: GuestMemory;
  readonly pages: BlockPageAllocator;
  readonly time: ClockGuestTime;
  readonly device: VmmPciFunction;

  constructor(
    readonly vmm: Vmm,
    device: GuestPciDevice,
    clock: VirtualClock,
    beforeMmioWrite?: () => void,
  ) {
    this.memory = vmm.guestMemory;
    this.pages = new BlockPageAllocator(vmm.ramBlocks());
    this.time = new ClockGuestTime(clock);
    this.device = new VmmPciFunction(vmm, device, beforeMmioWrite);
  }
}
