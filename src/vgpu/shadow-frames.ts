/**
 * Host memory a vGPU's mediation puts in front of the GPU: the shadow buffers (host graphics memory from
 * `HostGpu.allocShadow`) the vendor driver fills for one vGPU's work, with what they hold and whether the engines
 * write them. `VgpuShadowObserver` is the consumer-side interface of an isolation checker (src/scenario/checker.ts):
 * it cannot tell, from a host frame alone, whose shadow copy it is, so the vendor driver says so when it allocates
 * one and before it frees one (`VgpuShadows`, one per vGPU, through which every shadow of the vGPU is allocated and
 * freed).
 *
 * Uses: "batch" (an audited copy of a guest batch buffer: read), "ring" (a shadow ring: read), "context image" (a
 * shadow logical ring context: the engine restores it, saves into it and writes store-index post-syncs into its
 * PPHWSP: read and write), "ppgtt table" (a shadow page table: read by the engine's walks).
 *
 * Invariant: every buffer `alloc` returned and `free` has not yet freed was reported alive, once.
 */
import type { ShadowBuffer } from "../gpu/index.ts";

export type VgpuShadowUse = "batch" | "ring" | "context image" | "ppgtt table";

export interface VgpuShadowEvent {
  readonly vgpu: number;
  readonly use: VgpuShadowUse;
  readonly buffer: ShadowBuffer;
  /** The engines write it (only a context image). */
  readonly write: boolean;
  /** Allocated (true), or about to be freed (false). */
  readonly alive: boolean;
}

export type VgpuShadowObserver = (e: VgpuShadowEvent) => void;

/** The shadow buffers of one vGPU. */
export class VgpuShadows {
  private readonly live = new Map<ShadowBuffer, VgpuShadowUse>();

  constructor(
    private readonly vgpu: number,
    /** HostGpu.allocShadow (throws KernelError ENOSPC). */
    private readonly allocShadow: (size: number) => ShadowBuffer,
    /** The observer now (it may be installed after the vGPU is created). */
    private readonly observer: () => VgpuShadowObserver | undefined,
  ) {}

  /** A shadow buffer of `size` bytes for `use`, reported to the observer. */
  alloc(use: VgpuShadowUse, size: number): ShadowBuffer {
    const buffer = this.allocShadow(size);
    this.live.set(buffer, use);
    this.observer()?.({ vgpu: this.vgpu, use, buffer, write: use === "context image", alive: true });
    return buffer;
  }

  /** Reports, then frees, a buffer `alloc` returned (a buffer already freed is ignored). */
  free(buffer: ShadowBuffer): void {
    const use = this.live.get(buffer);
    if (use === undefined) return;
    this.live.delete(buffer);
    this.observer()?.({ vgpu: this.vgpu, use, buffer, write: use === "context image", alive: false });
    buffer.free();
  }

  /** The live buffers (for an observer installed late). */
  each(fn: (buffer: ShadowBuffer, use: VgpuShadowUse) => void): void {
    for (const [b, use] of this.live) fn(b, use);
  }

  get count(): number {
    return this.live.size;
  }
}
