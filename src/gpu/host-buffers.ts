/**
 * The host driver's own buffers: memory from `dma_alloc_coherent` on the GPU's DMA API (the very IOVA allocator and
 * IOMMU domain the vendor driver's dma_map_page uses for guest pages, so host buffers and guest mappings never share an
 * IOVA), mapped into the host's GM reservations through GGTT entries the driver writes itself.
 *
 * - The scratch page: allocated first and never mapped into GM; every GGTT entry nobody owns points at it (probe
 *   points all 1 Mi entries at it, gen8_ggtt_clear_range).
 * - Rings, hardware status pages and (with execlists) the kernel contexts' images, in the host aperture reservation
 *   (host-submission.ts and host-execlists.ts ask for them).
 * - Shadow buffers (`allocShadow`), in the host hidden reservation: the vendor driver's audited copies of guest batch
 *   buffers. CPU access goes through the kernel's mapping (the frames directly, no IOMMU). An observer
 *   (`setShadowObserver`) hears of each one allocated and freed: the isolation checker's way to know which host frames
 *   hold which vGPU's shadow copies.
 * Unmapping a buffer points its entries back at the scratch page before its frames and IOVAs are freed.
 *
 * Not here: the vGPU partitions and the reservations' place in GM (host-partitions.ts), what is written into the
 * rings (host-submission.ts).
 *
 * Invariants (checked by host-invariants.ts): buffers' IOVAs are disjoint and still mapped to their own frames; a
 * mapped buffer's GGTT entries encode its IOVAs and lie in a host reservation; unused host entries are the scratch
 * page.
 */
import {
  defineTraceEvents,
  Errno,
  type Gma,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type Tracer,
} from "../core/index.ts";
import { type Bdf, type CoherentBuffer, type DmaDevice, type PhysicalMemory, pfnToHpa } from "../host/index.ts";
import type { ShadowBuffer } from "./contract.ts";
import type { GmRegionAllocator } from "./gm-region-allocator.ts";
import type { GpuDevice } from "./gpu.ts";
import type { HostGgtt } from "./host-ggtt.ts";
import { type GmLayout, mib, regionAllocator } from "./host-partitions.ts";
import { GTT_ENTRIES, gen8PteEncode } from "./regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "i915.shadow.alloc": { bdf: string; gma: number; size: number; iova: number };
    "i915.shadow.free": { bdf: string; gma: number; size: number };
  }
}
defineTraceEvents("gpu", {
  "i915.shadow.alloc": "{bdf}: shadow buffer at gma {gma}, {size} bytes, iova {iova}",
  "i915.shadow.free": "{bdf}: shadow buffer at gma {gma} ({size} bytes) freed",
});

/** Told about a shadow buffer when it is allocated (`alive` true) and when it is freed (false). */
export type ShadowObserver = (buf: ShadowBuffer, alive: boolean) => void;

export type HostBufferKind = "scratch" | "ring" | "status page" | "context" | "shadow";

/** A buffer the host driver allocated with dma_alloc_coherent and mapped into the GGTT (gma undefined: not mapped). */
export interface HostBuffer {
  readonly kind: HostBufferKind;
  readonly buf: CoherentBuffer;
  readonly gma: Gma | undefined;
}

/** A buffer mapped into GM. */
export interface MappedHostBuffer extends HostBuffer {
  readonly gma: Gma;
}

export interface HostBuffersOptions {
  readonly bdf: Bdf;
  readonly gpu: GpuDevice;
  /** Where GGTT writes go. */
  readonly ggtt: HostGgtt;
  readonly dma: DmaDevice;
  readonly physmem: PhysicalMemory;
  readonly tracer: Tracer;
  readonly layout: GmLayout;
}

export class HostBuffers {
  /** The host's GM reservations: rings and status pages in the aperture one, shadow buffers in the hidden one. */
  readonly hostAperture: GmRegionAllocator;
  readonly hostHidden: GmRegionAllocator;
  readonly scratch: HostBuffer;
  /** The PTE of the scratch page (present). */
  readonly scratchPte: number;
  private readonly bdf: Bdf;
  private readonly ggtt: HostGgtt;
  private readonly dma: DmaDevice;
  private readonly physmem: PhysicalMemory;
  private readonly tracer: Tracer;
  private readonly buffers = new Set<HostBuffer>();
  private shadowObserver: ShadowObserver | undefined;

  /** Allocates the scratch page and points every GGTT entry at it. */
  constructor(opts: HostBuffersOptions) {
    this.bdf = opts.bdf;
    this.ggtt = opts.ggtt;
    this.dma = opts.dma;
    this.physmem = opts.physmem;
    this.tracer = opts.tracer;
    this.hostAperture = regionAllocator(opts.layout.hostAperture);
    this.hostHidden = regionAllocator(opts.layout.hostHidden);
    const scratch = this.dma.allocCoherent(PAGE_SIZE);
    this.scratch = { kind: "scratch", buf: scratch, gma: undefined };
    this.buffers.add(this.scratch);
    this.scratchPte = gen8PteEncode(scratch.dmaAddr);
    this.ggtt.fill(0, GTT_ENTRIES, this.scratchPte);
  }

  /** Every live buffer, the scratch page included. */
  all(): ReadonlySet<HostBuffer> {
    return this.buffers;
  }

  hasShadowBuffers(): boolean {
    for (const b of this.buffers) if (b.kind === "shadow") return true;
    return false;
  }

  /**
   * dma_alloc_coherent + GM from the reservation of its kind (rings and status pages: aperture; shadow buffers:
   * hidden) + GGTT entries for every page. ENOSPC naming the reservation when it is full.
   */
  map(kind: "ring" | "status page" | "context" | "shadow", bytes: number): MappedHostBuffer {
    const region = this.regionOf(kind);
    const gma = region.alloc(bytes);
    if (gma === undefined) {
      throw new KernelError(
        Errno.ENOSPC,
        `${kind} of ${bytes} bytes: the ${region.name} reservation of ${this.bdf} has ${mib(region.free)} free (largest ${mib(region.largestFree())})`,
      );
    }
    let buf: CoherentBuffer;
    try {
      buf = this.dma.allocCoherent(bytes);
    } catch (err) {
      region.release(gma);
      throw err;
    }
    for (let i = 0; i < bytes / PAGE_SIZE; i++) {
      this.ggtt.write(gma / PAGE_SIZE + i, gen8PteEncode(buf.dmaAddr + i * PAGE_SIZE));
    }
    const hb: MappedHostBuffer = { kind, buf, gma };
    this.buffers.add(hb);
    return hb;
  }

  /** Points the buffer's entries back at the scratch page, then frees its frames, IOVAs and GM. */
  unmap(hb: MappedHostBuffer): void {
    this.ggtt.fill(hb.gma / PAGE_SIZE, hb.buf.size / PAGE_SIZE, this.scratchPte);
    this.dma.dmaFreeCoherent(hb.buf);
    this.regionOf(hb.kind).release(hb.gma);
    this.buffers.delete(hb);
  }

  /** Frees whatever is left (the scratch page) once the GGTT no longer names it: the last step of unbinding. */
  freeAll(): void {
    for (const b of [...this.buffers]) {
      this.dma.dmaFreeCoherent(b.buf);
      this.buffers.delete(b);
    }
  }

  /** Zeroes one page of a buffer from `dma.allocCoherent` (see HostGpu.zeroPage). */
  zeroPage(pfn: Pfn): void {
    this.physmem.fill(pfnToHpa(pfn), 0, PAGE_SIZE);
  }

  // ---- shadow buffers --------------------------------------------------------------------------------------------

  allocShadow(size: number): ShadowBuffer {
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new KernelError(Errno.EINVAL, `shadow buffer size ${size} is not a positive integer`);
    }
    const bytes = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
    const hb = this.map("shadow", bytes);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.shadow.alloc", { bdf: this.bdf, gma: hb.gma, size: bytes, iova: hb.buf.dmaAddr });
    }
    const sb: HostShadowBuffer = new HostShadowBuffer(
      hb,
      size,
      this.physmem,
      () => this.freeShadow(hb, sb),
      () => this.buffers.has(hb),
    );
    if (this.shadowObserver !== undefined) this.shadowObserver(sb, true);
    return sb;
  }

  /** Whether `b` is a shadow buffer this driver allocated and has not freed. */
  isLiveShadow(b: ShadowBuffer): boolean {
    return b instanceof HostShadowBuffer && b.alive;
  }

  /** Installs (or with undefined removes) the observer told about every shadow buffer allocated and freed. */
  setShadowObserver(fn: ShadowObserver | undefined): void {
    this.shadowObserver = fn;
  }

  private freeShadow(hb: MappedHostBuffer, sb: ShadowBuffer): void {
    if (!this.buffers.has(hb)) {
      throw new KernelError(Errno.EINVAL, `shadow buffer at GMA ${hex(hb.gma)} was already freed`);
    }
    if (this.shadowObserver !== undefined) this.shadowObserver(sb, false);
    this.unmap(hb);
    if (this.tracer.enabled) this.tracer.emit("i915.shadow.free", { bdf: this.bdf, gma: hb.gma, size: hb.buf.size });
  }

  private regionOf(kind: HostBufferKind): GmRegionAllocator {
    return kind === "shadow" ? this.hostHidden : this.hostAperture;
  }
}

/** A shadow buffer: host GM backed by coherent frames; CPU access through the kernel mapping (its frames, no IOMMU). */
class HostShadowBuffer implements ShadowBuffer {
  readonly gma: Gma;
  readonly size: number;

  constructor(
    private readonly hb: MappedHostBuffer,
    size: number,
    private readonly physmem: PhysicalMemory,
    private readonly release: () => void,
    private readonly live: () => boolean,
  ) {
    this.gma = hb.gma;
    this.size = size;
  }

  /** DMA address (IOVA) of the buffer's first byte. */
  get dmaAddr(): Iova {
    return this.hb.buf.dmaAddr;
  }

  /** Not freed yet. */
  get alive(): boolean {
    return this.live();
  }

  write(offset: number, data: Uint8Array): void {
    this.check(offset, data.length, "write");
    this.physmem.write(pfnToHpa(this.hb.buf.pfn, offset), data);
  }

  read(offset: number, into: Uint8Array): void {
    this.check(offset, into.length, "read");
    this.physmem.read(pfnToHpa(this.hb.buf.pfn, offset), into);
  }

  free(): void {
    this.release();
  }

  private check(offset: number, len: number, op: string): void {
    if (!this.live()) {
      throw new KernelError(Errno.EINVAL, `shadow buffer at GMA ${hex(this.gma)} was freed: cannot ${op}`);
    }
    if (!Number.isInteger(offset) || offset < 0 || offset + len > this.size) {
      throw new KernelError(
        Errno.EINVAL,
        `shadow buffer ${op} of ${len} bytes at offset ${offset} does not fit its ${this.size} bytes`,
      );
    }
  }
}
