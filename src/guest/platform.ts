/**
 * What a guest operating system gives its GPU driver: the machine as seen from inside the VM. The guest driver is
 * written against this interface only (plus docs/gpu-programming.md), never against the host model, so it runs
 * unchanged whether the VMM is in process or the device is remote over vfio-user. The VMM (src/vmm) provides an
 * implementation for each attached device.
 */
import type { Gpa } from "../core/index.ts";

/** Guest-physical memory: what the guest's CPU reads and writes. */
export interface GuestMemory {
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
  readonly memory: GuestMemory;
  readonly pages: GuestPageAllocator;
  readonly time: GuestTime;
  readonly device: GuestPciFunction;
}
