/**
 * The host driver's writes to the GGTT, in one place: an entry through the BAR0 GTT window (i915's gen8_set_pte), a
 * run of entries in one call (its clear-range loop), and the mirror an aliasing PPGTT keeps of every one of them
 * (host-ppgtt.ts, with execlists submission). host-buffers.ts and host-partitions.ts write only through this.
 * Internal to the host driver: not exported by the folder's index.
 */
import type { GpuDevice } from "./gpu.ts";
import { GTT_OFFSET } from "./regs.ts";

/** Told of every GGTT write the host driver makes, with the entry as the GGTT stored it. */
export interface GgttMirror {
  write(index: number, pte: number): void;
  fill(first: number, count: number, pte: number): void;
}

export class HostGgtt {
  /** Set when an aliasing PPGTT mirrors the GGTT. */
  mirror: GgttMirror | undefined = undefined;

  constructor(private readonly gpu: GpuDevice) {}

  write(index: number, pte: number): void {
    this.gpu.barWrite(0, GTT_OFFSET + index * 8, 8, pte);
    this.mirror?.write(index, this.gpu.ggtt.read(index));
  }

  fill(first: number, count: number, pte: number): void {
    this.gpu.fillGgtt(first, count, pte);
    if (count > 0) this.mirror?.fill(first, count, this.gpu.ggtt.read(first));
  }

  read(index: number): number {
    return this.gpu.barRead(0, GTT_OFFSET + index * 8, 8);
  }
}
