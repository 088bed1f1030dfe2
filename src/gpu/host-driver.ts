/**
 * The host graphics driver: an i915-like kernel driver bound to the physical GPU, implementing `HostGpu` (contract.ts)
 * for the vGPU vendor driver. This file is its face and its life cycle: probe, the interrupt handler, unbind, and the
 * `HostGpu` methods, each handed to the part that owns the concept:
 * - host-partitions.ts: how GM and fences are divided between the host and vGPUs; partitions; the vendor driver's
 *   access to its partitions' GGTT entries and fences;
 * - host-buffers.ts: the driver's own DMA-coherent buffers mapped into its GM (scratch page, rings, status pages,
 *   shadow buffers) and the shadow-buffer observer;
 * - host-submission.ts: queues, rings and completion on the engines;
 * - host-invariants.ts: the checks that none of it ever collides.
 *
 * Probe (the constructor), in i915's order: bind to the device on the PCI bus as "i915" with an MSI handler; enable
 * memory decoding, bus mastering and MSI; allocate the scratch page with dma_alloc_coherent and point every GGTT entry
 * at it (gen8_ggtt_clear_range); allocate each engine's ring buffer and hardware status page with
 * dma_alloc_coherent, map them into the GGTT inside the host's own reservation and start the rings; enable the GT
 * interrupts (user interrupt and command-streamer error of both engines) and the master interrupt.
 * Every buffer comes from the GPU's DMA API (`host.dmaApi(bdf)`): the very IOVA allocator and IOMMU domain the
 * vendor driver's dma_map_page uses for guest pages, so host buffers and guest mappings can never share an IOVA.
 *
 * Unbind (`remove`): EBUSY while partitions, shadow buffers or submissions exist; then interrupts off, rings stopped
 * and freed, the GGTT cleared, the scratch page freed, MSI and bus mastering off. Every later call fails with ENODEV.
 *
 * Not modelled: execlists, GuC, display, runtime power management, GPU hang detection (errors are reported at once).
 */
import {
  defineTraceEvents,
  Errno,
  type Gma,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type SchedulingClock,
  type Tracer,
} from "../core/index.ts";
import {
  type Bdf,
  type DmaDevice,
  type Host,
  type Iommu,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_MSI_ADDRESS_HI,
  PCI_MSI_ADDRESS_LO,
  PCI_MSI_DATA_64,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  type PciBus,
  type PhysicalMemory,
  parseBdf,
} from "../host/index.ts";
import type { GpuCapacity, GpuResourceRequest, GpuResources, HostGpu, ShadowBuffer, Submission } from "./contract.ts";
import type { CostModel } from "./cost.ts";
import { GpuDevice } from "./gpu.ts";
import { HostBuffers, type ShadowObserver } from "./host-buffers.ts";
import { checkHostDriverInvariants, type InvariantOptions } from "./host-invariants.ts";
import { mmioRead, mmioWrite } from "./host-mmio.ts";
import { gmLayout, HostPartitions } from "./host-partitions.ts";
import { HOST_RING_BYTES, HostSubmission } from "./host-submission.ts";
import {
  ENGINE_IRQ_SHIFT,
  type EngineId,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_GT_RCS_IRQ,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_RENDER_USER_INTERRUPT,
  GTT_ENTRIES,
  RING_MAX_BYTES,
} from "./regs.ts";

// The parts' public names, so that the folder's index exports the driver from this one file.
export type { ShadowObserver } from "./host-buffers.ts";
export type { InvariantOptions } from "./host-invariants.ts";
export { HOST_APERTURE_RESERVED, HOST_FENCES, HOST_HIDDEN_RESERVED } from "./host-partitions.ts";
export { HOST_RING_BYTES } from "./host-submission.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "i915.probe": { bdf: string; apertureSize: number; ringBytes: number; scratchIova: number };
    "i915.remove": { bdf: string };
    "i915.irq": { bdf: string; iir: number };
  }
}
defineTraceEvents("gpu", {
  "i915.probe":
    "i915 bound to {bdf}: aperture {apertureSize} bytes, rings of {ringBytes} bytes, scratch page at iova {scratchIova}",
  "i915.remove": "i915 unbound from {bdf}",
  "i915.irq": "{bdf}: i915 interrupt, GT IIR {iir}",
});

/** Where firmware puts the GPU: the integrated GPU's conventional address. */
export const DEFAULT_GPU_BDF = "0000:00:02.0";
/** Addresses firmware programs into the BARs (cosmetic: the BARs are trapped). */
const BAR0_ADDRESS = 0xf600_0000;
const BAR2_ADDRESS = 0x40_0000_0000;
/** The MSI message the driver programs (x86: address 0xfee00000, vector 0x41). */
const MSI_ADDRESS = 0xfee0_0000;
const MSI_DATA = 0x41;

const ENGINES: readonly EngineId[] = ["rcs", "bcs"];

export interface HostGpuDriverOptions {
  readonly gpu: GpuDevice;
  readonly bus: PciBus;
  readonly physmem: PhysicalMemory;
  readonly iommu: Iommu;
  /** The GPU's DMA API (host.dmaApi(bdf)). */
  readonly dma: DmaDevice;
  readonly clock: SchedulingClock;
  readonly tracer: Tracer;
  /** Bytes per engine ring: a multiple of 4 KiB from 4 KiB to 2 MiB; default 32 KiB. */
  readonly ringBytes?: number;
}

/** Per-engine figures of the host driver (for tests, the dashboard and `vgpu` status). */
export interface HostEngineStats {
  readonly submissions: number;
  readonly commands: number;
  readonly faults: number;
  readonly errors: number;
  readonly busyNs: number;
  readonly queued: number;
  readonly inFlight: boolean;
  /** Interrupts seen by the driver's handler, per cause. */
  readonly userInterrupts: number;
  readonly csErrors: number;
}

export interface HostIrqStats {
  readonly msi: number;
  readonly spurious: number;
}

export class HostGpuDriver implements HostGpu {
  readonly bdf: Bdf;
  readonly dma: DmaDevice;
  readonly scratch: { readonly pfn: Pfn; readonly dmaAddr: Iova };
  readonly engines: readonly EngineId[] = ENGINES;
  readonly gpu: GpuDevice;
  readonly ringBytes: number;

  private readonly bus: PciBus;
  private readonly iommu: Iommu;
  private readonly tracer: Tracer;
  private readonly partitions: HostPartitions;
  private readonly buffers: HostBuffers;
  private readonly submission: HostSubmission;
  /** Interrupts the handler saw, per engine and cause. */
  private readonly irqCounts: Record<EngineId, { user: number; csError: number }> = {
    rcs: { user: 0, csError: 0 },
    bcs: { user: 0, csError: 0 },
  };
  private irqMsi = 0;
  private irqSpurious = 0;
  private removed = false;

  constructor(opts: HostGpuDriverOptions) {
    const gpu = opts.gpu;
    const ringBytes = opts.ringBytes ?? HOST_RING_BYTES;
    if (
      !Number.isInteger(ringBytes) ||
      ringBytes % PAGE_SIZE !== 0 ||
      ringBytes < PAGE_SIZE ||
      ringBytes > RING_MAX_BYTES
    ) {
      throw new KernelError(
        Errno.EINVAL,
        `ring size ${ringBytes} bytes must be a multiple of 4 KiB from 4 KiB to 2 MiB`,
      );
    }
    this.gpu = gpu;
    this.bdf = gpu.bdf;
    this.bus = opts.bus;
    this.iommu = opts.iommu;
    this.dma = opts.dma;
    this.tracer = opts.tracer;
    this.ringBytes = ringBytes;
    const layout = gmLayout(gpu.apertureSize);

    // PCI: bind, enable decoding, bus mastering and MSI.
    this.bus.bind(this.bdf, "i915", { msi: () => this.handleIrq() });
    const cfg = gpu.config;
    cfg.setBarAddress(0, BAR0_ADDRESS);
    cfg.setBarAddress(2, BAR2_ADDRESS);
    cfg.write(PCI_COMMAND, 2, cfg.read(PCI_COMMAND, 2) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const msi = cfg.msiCap;
    cfg.write(msi + PCI_MSI_ADDRESS_LO, 4, MSI_ADDRESS);
    cfg.write(msi + PCI_MSI_ADDRESS_HI, 4, 0);
    cfg.write(msi + PCI_MSI_DATA_64, 2, MSI_DATA);
    cfg.write(msi + PCI_MSI_FLAGS, 2, cfg.read(msi + PCI_MSI_FLAGS, 2) | PCI_MSI_FLAGS_ENABLE);

    // Scratch page; every GGTT entry points at it until something is mapped.
    const common = { bdf: this.bdf, gpu, tracer: this.tracer, layout };
    this.buffers = new HostBuffers({ ...common, dma: this.dma, physmem: opts.physmem });
    const scratch = this.buffers.scratch.buf;
    this.scratch = { pfn: scratch.pfn, dmaAddr: scratch.dmaAddr };
    this.partitions = new HostPartitions({ ...common, scratchPte: this.buffers.scratchPte });

    // Rings and status pages, in the host's aperture reservation.
    this.submission = new HostSubmission({
      bdf: this.bdf,
      gpu,
      physmem: opts.physmem,
      clock: opts.clock,
      tracer: this.tracer,
      buffers: this.buffers,
      engines: ENGINES,
      ringBytes,
    });

    // Interrupts: user interrupt and CS error of both engines.
    let enabled = 0;
    for (const id of ENGINES) {
      enabled |= (GT_RENDER_USER_INTERRUPT | GT_CS_MASTER_ERROR_INTERRUPT) << ENGINE_IRQ_SHIFT[id];
    }
    mmioWrite(gpu, GEN8_GT_IIR0, 0xffffffff);
    mmioWrite(gpu, GEN8_GT_IER0, enabled >>> 0);
    mmioWrite(gpu, GEN8_GT_IMR0, ~enabled >>> 0);
    mmioWrite(gpu, GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.probe", {
        bdf: this.bdf,
        apertureSize: gpu.apertureSize,
        ringBytes,
        scratchIova: scratch.dmaAddr,
      });
    }
  }

  // ---- partitions (host-partitions.ts) ---------------------------------------------------------------------------

  capacity(): GpuCapacity {
    return this.partitions.capacity();
  }

  allocResources(req: GpuResourceRequest): GpuResources {
    this.checkLive("allocResources");
    return this.partitions.alloc(req);
  }

  freeResources(r: GpuResources): void {
    this.partitions.free(r);
  }

  /** The live vGPU partitions, by aperture base. */
  liveResources(): GpuResources[] {
    return this.partitions.liveResources();
  }

  writeGgtt(index: number, pte: number): void {
    this.partitions.writeGgtt(index, pte);
  }

  /**
   * Points `count` entries from `first` at one PTE (the vendor driver re-pointing a partition at its own scratch page):
   * one bulk write, one trace event. EINVAL unless [first, first + count) lies inside the aperture or the hidden piece
   * of one live partition (so, like `writeGgtt`, it cannot reach the host's entries or free ones).
   */
  fillGgtt(first: number, count: number, pte: number): void {
    this.checkLive("fillGgtt");
    this.partitions.fillGgtt(first, count, pte);
  }

  readGgtt(index: number): number {
    return this.partitions.readGgtt(index);
  }

  writeFence(fence: number, value: number): void {
    this.partitions.writeFence(fence, value);
  }

  /** Writes a fence as two 32-bit halves (a gen6 fence's end address sits in bits 44..63, beyond a number's 2^53). */
  writeFenceHalves(fence: number, lo: number, hi: number): void {
    this.partitions.writeFenceHalves(fence, lo, hi);
  }

  // ---- the driver's own buffers (host-buffers.ts) ----------------------------------------------------------------

  /** Zeroes one page of a buffer from `dma.allocCoherent` (see HostGpu.zeroPage). */
  zeroPage(pfn: Pfn): void {
    this.buffers.zeroPage(pfn);
  }

  allocShadow(size: number): ShadowBuffer {
    this.checkLive("allocShadow");
    return this.buffers.allocShadow(size);
  }

  /**
   * Installs (or with undefined removes) the observer told about every shadow buffer: allocated, and freed (before
   * its pages are unmapped). The isolation checker uses it to know which host frames hold which vGPU's shadow copies.
   */
  setShadowObserver(fn: ShadowObserver | undefined): void {
    this.buffers.setShadowObserver(fn);
  }

  // ---- submission (host-submission.ts) ---------------------------------------------------------------------------

  submit(s: Submission): void {
    this.checkLive("submit");
    this.submission.submit(s);
  }

  engineStats(id: EngineId): HostEngineStats {
    const irq = this.irqCounts[id];
    return { ...this.submission.stats(id), userInterrupts: irq.user, csErrors: irq.csError };
  }

  /**
   * The `Submission.owner` whose work the engines are executing right now, or -1 when none is (engines run inside
   * the driver's RING_TAIL write, so this is exact for every DMA the GPU makes). Added for the scenario's isolation
   * checker, which attributes each DMA to the vGPU it is for.
   */
  get executingOwner(): number {
    return this.submission.executingOwner;
  }

  /** Engine time (ns, both engines) of the completed submissions of `owner` (a vGPU id; 0 = host). */
  ownerBusyNs(owner: number): number {
    return this.submission.ownerBusyNs(owner);
  }

  irqStats(): HostIrqStats {
    return { msi: this.irqMsi, spurious: this.irqSpurious };
  }

  /** GMA of an engine's ring (host-owned, for tests and the dashboard). */
  ringGma(id: EngineId): Gma {
    return this.submission.ringGma(id);
  }

  // ---- interrupts ------------------------------------------------------------------------------------------------

  /** gen8_irq_handler: master off, read and acknowledge GT IIR, dispatch, master on. */
  private handleIrq(): void {
    this.irqMsi++;
    const gpu = this.gpu;
    const master = mmioRead(gpu, GEN8_MASTER_IRQ);
    if ((master & (GEN8_GT_RCS_IRQ | GEN8_GT_BCS_IRQ)) === 0) {
      this.irqSpurious++;
      return;
    }
    mmioWrite(gpu, GEN8_MASTER_IRQ, 0);
    const iir = mmioRead(gpu, GEN8_GT_IIR0);
    if (iir !== 0) mmioWrite(gpu, GEN8_GT_IIR0, iir);
    for (const id of ENGINES) {
      const bits = (iir >>> ENGINE_IRQ_SHIFT[id]) & 0xffff;
      const c = this.irqCounts[id];
      if ((bits & GT_RENDER_USER_INTERRUPT) !== 0) c.user++;
      if ((bits & GT_CS_MASTER_ERROR_INTERRUPT) !== 0) c.csError++;
    }
    if (this.tracer.enabled) this.tracer.emit("i915.irq", { bdf: this.bdf, iir });
    mmioWrite(gpu, GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
  }

  // ---- unbind ----------------------------------------------------------------------------------------------------

  /**
   * Unbinds the driver (i915 remove): EBUSY while vGPU partitions, shadow buffers or submissions exist. Stops the
   * rings and interrupts, clears the GGTT, frees every host buffer, disables MSI and bus mastering.
   */
  remove(): void {
    this.checkLive("remove");
    const busy =
      this.partitions.count > 0
        ? `${this.partitions.count} vGPU partition(s) are allocated`
        : this.buffers.hasShadowBuffers()
          ? "shadow buffers are allocated"
          : this.submission.busy()
            ? "submissions are queued or running"
            : undefined;
    if (busy !== undefined) throw new KernelError(Errno.EBUSY, `cannot unbind i915 from ${this.bdf}: ${busy}`);
    const gpu = this.gpu;
    mmioWrite(gpu, GEN8_MASTER_IRQ, 0);
    mmioWrite(gpu, GEN8_GT_IER0, 0);
    mmioWrite(gpu, GEN8_GT_IMR0, 0xffffffff);
    this.submission.stop();
    gpu.fillGgtt(0, GTT_ENTRIES, 0);
    this.buffers.freeAll();
    // pci_disable_msi + pci_disable_device: no more interrupts or bus mastering from the device.
    const cfg = gpu.config;
    cfg.write(cfg.msiCap + PCI_MSI_FLAGS, 2, cfg.read(cfg.msiCap + PCI_MSI_FLAGS, 2) & ~PCI_MSI_FLAGS_ENABLE);
    cfg.write(PCI_COMMAND, 2, cfg.read(PCI_COMMAND, 2) & ~PCI_COMMAND_MASTER);
    this.removed = true;
    this.bus.unbind(this.bdf);
    if (this.tracer.enabled) this.tracer.emit("i915.remove", { bdf: this.bdf });
  }

  private checkLive(op: string): void {
    if (this.removed) throw new KernelError(Errno.ENODEV, `${op}: i915 is no longer bound to ${this.bdf}`);
  }

  // ---- invariants (host-invariants.ts) ---------------------------------------------------------------------------

  /** Throws (an Error naming what collided) if any allocation of the host and the vGPUs overlaps. For tests. */
  checkInvariants(opts: InvariantOptions = {}): void {
    checkHostDriverInvariants(
      {
        bdf: this.bdf,
        gpu: this.gpu,
        dma: this.dma,
        iommu: this.iommu,
        partitions: this.partitions,
        buffers: this.buffers,
      },
      opts,
    );
  }
}

// ---- assembly ------------------------------------------------------------------------------------------------------

export interface CreateGpuOptions {
  /** PCI address (default 0000:00:02.0). */
  readonly bdf?: string;
  /** BAR2 size: a power of two from 128 MiB to 2 GiB (default 512 MiB). */
  readonly apertureSize?: number;
  /** The GPU supports ATS and has it enabled: its DMA uses a device ATC (default false). */
  readonly ats?: boolean;
  readonly ringBytes?: number;
  readonly cost?: Partial<CostModel>;
}

export interface CreatedGpu {
  readonly gpu: GpuDevice;
  readonly driver: HostGpuDriver;
  /** IOMMU group of the GPU. */
  readonly group: number;
}

/** Builds the GPU, plugs it into the host (PCI bus, IOMMU group, ATS as asked) and binds the host driver to it. */
export function createGpu(host: Host, opts: CreateGpuOptions = {}): CreatedGpu {
  const bdf = parseBdf(opts.bdf ?? DEFAULT_GPU_BDF);
  const gpu = new GpuDevice({
    bdf,
    bus: host.pci,
    dma: host.deviceDma(bdf),
    tracer: host.tracer,
    clock: host.clock,
    ...(opts.apertureSize !== undefined ? { apertureSize: opts.apertureSize } : {}),
    ...(opts.cost !== undefined ? { cost: opts.cost } : {}),
  });
  const group = host.addPciDevice(gpu, { ats: opts.ats ?? false });
  const driver = new HostGpuDriver({
    gpu,
    bus: host.pci,
    physmem: host.physmem,
    iommu: host.iommu,
    dma: host.dmaApi(bdf),
    clock: host.clock,
    tracer: host.tracer,
    ...(opts.ringBytes !== undefined ? { ringBytes: opts.ringBytes } : {}),
  });
  return { gpu, driver, group };
}
