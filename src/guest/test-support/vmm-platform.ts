/**
 * A `GuestPlatform` built from the in-process VMM (src/vmm): what the guest kernel would give its GPU driver inside
 * that VM. Test support only (the VMM owns its folder; this adapter only uses its public API).
 *
 * - memory: the VMM's guest RAM (loads and stores through the VMM process's mappings);
 * - pages: a first-fit allocator of contiguous page runs over the VMM's RAM blocks, from 1 MiB up (the guest kernel's
 *   alloc_pages; below 1 MiB is left alone as a PC kernel leaves it);
 * - time: the host's `VirtualClock`; `waitUntil` advances it in growing steps (1 us doubling up to `maxStepNs`), so
 *   scheduled work (the vGPU scheduler's slices, engine completions) runs while the guest waits;
 * - device: the attached PCI function (config cycles, BARs where the VMM placed them, MMIO through the VMM's dispatch,
 *   interrupts through the VMM's injection).
 *
 * Not modelled: guest NUMA, page reclaim, a guest IOMMU.
 */
import { Errno, type Gpa, gpa, hex, KernelError, PAGE_SIZE, type VirtualClock } from "../../core/index.ts";
// Test support may reach up: the scenario layer owns the VMM-side adapters (guest time, the PCI function).
import { ClockGuestTime, VmmPciFunction } from "../../scenario/index.ts";
import type { GuestPciDevice, Vmm } from "../../vmm/index.ts";
import type { GuestMemory, GuestPageAllocator, GuestPlatform } from "../platform.ts";

/** First guest-physical byte the page allocator hands out. */
export const GUEST_ALLOC_START = 0x10_0000;

interface Extent {
  start: number;
  end: number;
}

/** First-fit allocator of contiguous page runs over RAM extents; frees coalesce. */
export class ExtentPageAllocator implements GuestPageAllocator {
  private readonly free: Extent[];
  private readonly live = new Map<number, number>();
  livePages = 0;

  constructor(ram: readonly { readonly gpa: number; readonly size: number }[], start = GUEST_ALLOC_START) {
    this.free = ram
      .map((b) => ({ start: Math.max(b.gpa, start), end: b.gpa + b.size }))
      .filter((e) => e.end > e.start)
      .sort((a, b) => a.start - b.start);
  }

  allocPages(count: number): Gpa {
    const bytes = count * PAGE_SIZE;
    if (!Number.isInteger(count) || count <= 0) throw new KernelError(Errno.EINVAL, `allocPages(${count})`);
    for (let i = 0; i < this.free.length; i++) {
      const e = this.free[i]!;
      if (e.end - e.start < bytes) continue;
      const at = e.start;
      e.start += bytes;
      if (e.start === e.end) this.free.splice(i, 1);
      this.live.set(at, count);
      this.livePages += count;
      return gpa(at);
    }
    throw new KernelError(Errno.ENOMEM, `guest out of memory: no ${count} contiguous free pages`);
  }

  freePages(at: Gpa, count: number): void {
    if (this.live.get(at) !== count) {
      throw new KernelError(Errno.EINVAL, `freePages(${hex(at)}, ${count}) does not match an allocation`);
    }
    this.live.delete(at);
    this.livePages -= count;
    const end = at + count * PAGE_SIZE;
    let i = 0;
    while (i < this.free.length && this.free[i]!.start < at) i++;
    const prev = this.free[i - 1];
    const next = this.free[i];
    if (prev && prev.end === at && next && next.start === end) {
      prev.end = next.end;
      this.free.splice(i, 1);
    } else if (prev && prev.end === at) prev.end = end;
    else if (next && next.start === end) next.start = at;
    else this.free.splice(i, 0, { start: at, end });
  }
}

export interface VmmPlatformOptions {
  /** Largest step of `waitUntil`, ns (default 100 us). */
  readonly maxStepNs?: number;
}

/** The GuestPlatform of the guest running in `vmm`, for its attached `device`. */
export class VmmGuestPlatform implements GuestPlatform {
  readonly memory: GuestMemory;
  readonly pages: ExtentPageAllocator;
  readonly time: ClockGuestTime;
  readonly device: VmmPciFunction;

  constructor(
    readonly vmm: Vmm,
    device: GuestPciDevice,
    clock: VirtualClock,
    opts: VmmPlatformOptions = {},
  ) {
    this.memory = vmm.guestMemory;
    this.pages = new ExtentPageAllocator(vmm.ramBlocks());
    this.time = new ClockGuestTime(clock, opts.maxStepNs);
    this.device = new VmmPciFunction(vmm, device);
  }
}
