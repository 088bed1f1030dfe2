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
import type { VirtualClock } from "../../core/index.ts";
// Test support may reach up: the scenario layer owns the VMM-side adapters (page allocator, guest time, the PCI function).
import { BlockPageAllocator, ClockGuestTime, VmmPciFunction } from "../../scenario/index.ts";
import type { GuestPciDevice, Vmm } from "../../vmm/index.ts";
import type { GuestMemory, GuestPlatform } from "../platform.ts";

export interface VmmPlatformOptions {
  /** Largest step of `waitUntil`, ns (default 100 us). */
  readonly maxStepNs?: number;
}

/** The GuestPlatform of the guest running in `vmm`, for its attached `device`. */
export class VmmGuestPlatform implements GuestPlatform {
  readonly memory: GuestMemory;
  readonly pages: BlockPageAllocator;
  readonly time: ClockGuestTime;
  readonly device: VmmPciFunction;

  constructor(
    readonly vmm: Vmm,
    device: GuestPciDevice,
    clock: VirtualClock,
    opts: VmmPlatformOptions = {},
  ) {
    this.memory = vmm.guestMemory;
    this.pages = new BlockPageAllocator(vmm.ramBlocks());
    this.time = new ClockGuestTime(clock, opts.maxStepNs);
    this.device = new VmmPciFunction(vmm, device);
  }
}
