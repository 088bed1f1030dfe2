/**
 * How the host driver reaches the GPU's registers: 4- and 8-byte accesses to BAR0 (the kernel's intel_uncore
 * read/write). One place, so the driver's modules share it; the GGTT window is BAR0 too but has its own accessors on
 * the device (`GpuDevice.ggtt`, `fillGgtt`). Internal to the host driver: not exported by the folder's index.
 */
import type { GpuDevice } from "./gpu.ts";

export function mmioRead(gpu: GpuDevice, off: number): number {
  return gpu.barRead(0, off, 4);
}

export function mmioWrite(gpu: GpuDevice, off: number, v: number): void {
  gpu.barWrite(0, off, 4, v >>> 0);
}

/** An 8-byte write (a fence register; the value below 2^53). */
export function mmioWrite64(gpu: GpuDevice, off: number, v: number): void {
  gpu.barWrite(0, off, 8, v);
}
