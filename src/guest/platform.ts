/**
 * What a guest operating system gives its GPU driver: the machine as seen from inside the VM. The guest driver is
 * written against these interfaces only (plus docs/gpu-programming.md), never against the host model, so it runs
 * unchanged on a vGPU, a whole passed-through GPU, or a fake.
 *
 * The consumer declares the interface; the providers are injected. The in-process VMM provides one per attached device
 * (`VmmGuestPlatform`, src/vmm/guest-platform.ts: its RAM, a page allocator over its RAM blocks, guest time over the
 * host's virtual clock, the device through its MMIO dispatch and interrupt injection); the guest's unit tests use a
 * fake machine (test-support/fake-gpu.ts). vmm/ and guest/ are siblings in the layer order and do not import each
 * other: the VMM's classes have these shapes, and the compiler checks them where a platform is handed to a driver (the
 * scenario runner, test-support/real-stack.ts, src/vmm/guest-platform.test.ts).
 *
 * Not here: a guest IOMMU, NUMA, page reclaim, more than one device per platform.
 */
import type { Gpa } from "../core/index.ts";

/** Guest-physical RAM: what the guest's CPU reads and writes (`Vmm.ram` in the VMM). */
export interface GuestRam {
  read(gpa: Gpa, into: Uint8Array): void;
  write(gpa: Gpa, data: Uint8Array): void;
  readU32(gpa: Gpa): number;
  writeU32(gpa: Gpa, value: number): void;
}

/** A page allocator over the guest's RAM (the guest kernel's alloc_pages). */
export interface GuestPageAllocator {
  /** `count` contiguous 4 KiB guest pages; throws when the guest is out of memory. */
  allocPages(count: number): Gpa;
  freePages(gpa: Gpa, count: number): void;
}

/** One PCI function as the guest sees it. */
export interface GuestPciFunction {
  configRead(offset: number, size: 1 | 2 | 4): number;
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void;
  /** Guest-physical address of BAR `index` as the VMM (firmware) placed it, or undefined if absent. */
  barAddress(index: number): Gpa | undefined;
  barSize(index: number): number;
  /** CPU access to MMIO at a guest-physical address inside one of this function's BARs. */
  mmioRead(gpa: Gpa, size: 1 | 2 | 4 | 8): number;
  mmioWrite(gpa: Gpa, size: 1 | 2 | 4 | 8, value: number): void;
  /** Registers the interrupt handler (MSI vector or INTx); the VMM calls it when the device interrupts. */
  onInterrupt(handler: (vector: number) => void): void;
}

/** Time inside the guest: lets a driver wait for an interrupt while the host's clock (and the vGPU scheduler) runs. */
export interface GuestTime {
  /** Guest-visible nanoseconds. */
  now(): number;
  /**
   * Lets time pass (the host's clock advances, scheduled work runs) until `done()` is true or `timeoutNs` elapses.
   * Returns whether `done()` became true.
   */
  waitUntil(done: () => boolean, timeoutNs: number): boolean;
}

export interface GuestPlatform {
  readonly memory: GuestRam;
  readonly pages: GuestPageAllocator;
  readonly time: GuestTime;
  readonly device: GuestPciFunction;
}
