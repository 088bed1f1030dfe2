/**
 * The machine as a guest driver sees it inside this VMM's VM: what guest/platform.ts calls a `GuestPlatform`, for one
 * attached device. The model runs no guest kernel, so the VMM provides what the guest kernel would give its driver:
 *
 * - memory: the VM's RAM as its CPU loads and stores it (`Vmm.ram`, through the VMM process's mappings);
 * - pages: the guest kernel's page allocator over the VM's RAM blocks (guest-pages.ts); a caller that hot-plugs or
 *   unplugs RAM tells it (`pages.addBlock`, `pages.removeBlock`);
 * - time: the host's `VirtualClock`: `waitUntil` advances it in growing steps (1 us doubling up to `maxStepNs`, default
 *   100 us), so scheduled work (the vGPU scheduler's slices, engine completions, interrupts) runs while the guest waits;
 * - device: the attached PCI function: config cycles, BARs where the VMM placed them, MMIO through the VMM's dispatch
 *   (`Vmm.mmioRead/mmioWrite`: a BAR, else RAM, else unassigned), interrupts through the VMM's injection.
 *
 * The shapes are guest/platform.ts's interfaces; vmm/ and guest/ are siblings and do not import each other, so the
 * classes here are typed by the VMM's own types and the compiler checks that they fit where the two meet (the scenario
 * runner, the guest's test stacks, and guest-platform.test.ts, which asserts it).
 *
 * What it does not do: tell anyone whose MMIO it is (the isolation checker learns whose guest runs from the scenario
 * runner), model a guest IOMMU, NUMA or page reclaim.
 *
 * Invariant: one platform per (VM, device); its page allocator is the only allocator of the VM's RAM above 1 MiB.
 */
import { type Gpa, gpa, type VirtualClock } from "../core/index.ts";
import { BlockPageAllocator } from "./guest-pages.ts";
import type { InterruptHandler } from "./irq.ts";
import type { MappedGuestRam } from "./memory.ts";
import type { AttachedDevice } from "./vfio-pci.ts";
import type { Vmm } from "./vmm.ts";

/** Guest time over the host's virtual clock. */
export class ClockGuestTime {
  constructor(
    private readonly clock: VirtualClock,
    private readonly maxStepNs = 100_000,
  ) {}

  now(): number {
    return this.clock.now();
  }

  /** Lets time pass until `done()` or `timeoutNs` elapsed; returns whether `done()` became true. */
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
export class VmmPciFunction {
  constructor(
    private readonly vmm: Vmm,
    readonly device: AttachedDevice,
  ) {}

  configRead(offset: number, size: 1 | 2 | 4): number {
    return this.device.configRead(offset, size);
  }
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.device.configWrite(offset, size, value);
  }
  /** Where BAR `index` decodes now (a memory BAR's register holds a GPA), or undefined when there is no such BAR. */
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
    this.vmm.mmioWrite(at, size, value);
  }
  onInterrupt(handler: InterruptHandler): void {
    this.vmm.onInterrupt(this.device, handler);
  }
}

export interface VmmGuestPlatformOptions {
  /** Largest step of `time.waitUntil`, ns (default 100 us). */
  readonly maxStepNs?: number;
}

/** The guest platform of the VM `vmm` runs, for its attached `device` (see the module comment). */
export class VmmGuestPlatform {
  readonly memory: MappedGuestRam;
  readonly pages: BlockPageAllocator;
  readonly time: ClockGuestTime;
  readonly device: VmmPciFunction;

  constructor(
    readonly vmm: Vmm,
    device: AttachedDevice,
    clock: VirtualClock,
    opts: VmmGuestPlatformOptions = {},
  ) {
    this.memory = vmm.ram;
    this.pages = new BlockPageAllocator(vmm.ramBlocks());
    this.time = new ClockGuestTime(clock, opts.maxStepNs);
    this.device = new VmmPciFunction(vmm, device);
  }
}
