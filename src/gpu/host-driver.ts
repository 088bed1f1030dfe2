/**
 * The host graphics driver: an i915-like kernel driver bound to the physical GPU, implementing `HostGpu` (contract.ts)
 * for the vGPU vendor driver. This file is its face and its life cycle: probe, the interrupt handler, unbind, and the
 * `HostGpu` methods, each handed to the part that owns the concept:
 * - host-partitions.ts: how GM and fences are divided between the host and vGPUs; partitions; the vendor driver's
 *   access to its partitions' GGTT entries and fences;
 * - host-buffers.ts: the driver's own DMA-coherent buffers mapped into its GM (scratch page, rings, status pages,
 *   shadow buffers) and the shadow-buffer observer;
 * - host-submission.ts: queues, rings and completion on the engines (submission "ring", the default);
 * - host-execlists.ts: the same over execlists, kernel contexts per engine, and shadow contexts (`submitContext`),
 *   with host-ppgtt.ts, the aliasing PPGTT of the kernel contexts (submission "execlists");
 * - host-ggtt.ts: the one path of the driver's GGTT writes (and their mirror into the aliasing PPGTT);
 * - host-invariants.ts: the checks that none of it ever collides.
 *
 * Probe (the constructor), in i915's order: bind to the device on the PCI bus as "i915" with an MSI handler; enable
 * memory decoding, bus mastering and MSI; allocate the scratch page with dma_alloc_coherent and point every GGTT entry
 * at it (gen8_ggtt_clear_range); allocate each engine's ring buffer and hardware status page with
 * dma_alloc_coherent, map them into the GGTT inside the host's own reservation and start the rings (or, with
 * execlists, build the aliasing PPGTT and a kernel context per engine and switch all four engines to execlists);
 * enable the GT interrupts (user interrupt and command-streamer error of rcs and bcs; with execlists, user, error
 * and context-switch interrupts of all four engines) and the master interrupt.
 * Every buffer comes from the GPU's DMA API (`host.dmaApi(bdf)`): the very IOVA allocator and IOMMU domain the
 * vendor driver's dma_map_page uses for guest pages, so host buffers and guest mappings can never share an IOVA.
 *
 * Unbind (`remove`): EBUSY while partitions, shadow buffers or submissions exist; then interrupts off, rings stopped
 * and freed, the GGTT cleared, the scratch page freed, MSI and bus mastering off. Every later call fails with ENODEV.
 *
 * Submission mode: "ring" is the default, because the scenario's isolation checker allows the GPU's own writes to
 * host memory only on the scratch page, and execlists make the GPU write the kernel context images and status pages
 * (context save, CSB) and read the aliasing PPGTT during every owner's work; `hostGpuFrames` lists those frames for
 * a checker that learns them.
 *
 * Not modelled: GuC, display, runtime power management, GPU hang detection (errors are reported at once).
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
import type {
  ContextSubmission,
  GpuCapacity,
  GpuResourceRequest,
  GpuResources,
  HostGpu,
  ShadowBuffer,
  Submission,
  SubmissionMode,
} from "./contract.ts";
import type { CostModel } from "./cost.ts";
import { GpuDevice } from "./gpu.ts";
import { HostBuffers, type ShadowObserver } from "./host-buffers.ts";
import { HostExeclists } from "./host-execlists.ts";
import { HostGgtt } from "./host-ggtt.ts";
import { checkHostDriverInvariants, type InvariantOptions } from "./host-invariants.ts";
import { mmioRead, mmioWrite } from "./host-mmio.ts";
import { gmLayout, HostPartitions } from "./host-partitions.ts";
import { AliasingPpgtt } from "./host-ppgtt.ts";
import { HOST_RING_BYTES, HostSubmission } from "./host-submission.ts";
import {
  type EngineId,
  GEN8_GT_BANKS,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_PM_IRQ,
  GEN8_GT_RCS_IRQ,
  GEN8_GT_VCS0_IRQ,
  GEN8_GT_VCS1_IRQ,
  GEN8_GT_VECS_IRQ,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GT_CONTEXT_SWITCH_INTERRUPT,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_ENGINE_IRQ,
  GT_ENGINES,
  GT_RENDER_USER_INTERRUPT,
  GTT_ENTRIES,
  type GtEngineId,
  gen8GtIer,
  gen8GtIir,
  gen8GtImr,
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
    "i915.execlists": { bdf: string; engines: string; ppgttRoot: number };
  }
}
defineTraceEvents("gpu", {
  "i915.probe":
    "i915 bound to {bdf}: aperture {apertureSize} bytes, rings of {ringBytes} bytes, scratch page at iova {scratchIova}",
  "i915.remove": "i915 unbound from {bdf}",
  "i915.irq": "{bdf}: i915 interrupt, GT IIR {iir}",
  "i915.execlists": "{bdf}: execlists submission on {engines}, kernel contexts on the aliasing PPGTT at {ppgttRoot}",
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
  /** "ring" (legacy ring buffers, the default) or "execlists" (kernel contexts, `submitContext`). */
  readonly submission?: SubmissionMode;
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
  readonly contextSwitches: number;
}

/** A host frame the GPU itself reads or writes while it runs anyone's work (for an isolation checker). */
export interface HostGpuFrame {
  readonly pfn: Pfn;
  /** The GPU writes it (context save, CSB entries), or only reads it (rings, page tables). */
  readonly write: boolean;
  readonly what: "ring" | "status page" | "context" | "page table";
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
  readonly submissionMode: SubmissionMode;
  readonly contextEngines: readonly GtEngineId[];
  readonly gpu: GpuDevice;
  readonly ringBytes: number;

  private readonly bus: PciBus;
  private readonly iommu: Iommu;
  private readonly tracer: Tracer;
  private readonly ggtt: HostGgtt;
  private readonly partitions: HostPartitions;
  private readonly buffers: HostBuffers;
  private readonly submission: HostSubmission | undefined;
  private readonly execlists: HostExeclists | undefined;
  private readonly ppgtt: AliasingPpgtt | undefined;
  /** Interrupts the handler saw, per engine and cause. */
  private readonly irqCounts: Record<GtEngineId, { user: number; csError: number; ctxSwitch: number }> = {
    rcs: { user: 0, csError: 0, ctxSwitch: 0 },
    bcs: { user: 0, csError: 0, ctxSwitch: 0 },
    vcs: { user: 0, csError: 0, ctxSwitch: 0 },
    vecs: { user: 0, csError: 0, ctxSwitch: 0 },
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
    const mode = opts.submission ?? "ring";
    if (mode !== "ring" && mode !== "execlists") {
      throw new KernelError(Errno.EINVAL, `submission mode ${String(mode)} is neither "ring" nor "execlists"`);
    }
    this.submissionMode = mode;
    this.contextEngines = mode === "execlists" ? GT_ENGINES : [];
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
    this.ggtt = new HostGgtt(gpu);
    const common = { bdf: this.bdf, gpu, tracer: this.tracer, layout, ggtt: this.ggtt };
    this.buffers = new HostBuffers({ ...common, dma: this.dma, physmem: opts.physmem });
    const scratch = this.buffers.scratch.buf;
    this.scratch = { pfn: scratch.pfn, dmaAddr: scratch.dmaAddr };
    this.partitions = new HostPartitions({ ...common, scratchPte: this.buffers.scratchPte });

    // Rings and status pages (and with execlists the kernel contexts), in the host's aperture reservation.
    let irqEngines: readonly GtEngineId[];
    let irqBits: number;
    if (mode === "execlists") {
      this.ppgtt = new AliasingPpgtt(this.dma, opts.physmem, this.buffers.scratchPte);
      this.ggtt.mirror = this.ppgtt;
      this.execlists = new HostExeclists({
        bdf: this.bdf,
        gpu,
        physmem: opts.physmem,
        clock: opts.clock,
        tracer: this.tracer,
        buffers: this.buffers,
        pml4: this.ppgtt.root,
        ringBytes,
        isShadow: (b) => this.buffers.isLiveShadow(b),
      });
      irqEngines = GT_ENGINES;
      irqBits = GT_RENDER_USER_INTERRUPT | GT_CS_MASTER_ERROR_INTERRUPT | GT_CONTEXT_SWITCH_INTERRUPT;
      if (this.tracer.enabled) {
        this.tracer.emit("i915.execlists", {
          bdf: this.bdf,
          engines: GT_ENGINES.join(","),
          ppgttRoot: this.ppgtt.root,
        });
      }
    } else {
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
      irqEngines = ENGINES;
      irqBits = GT_RENDER_USER_INTERRUPT | GT_CS_MASTER_ERROR_INTERRUPT;
    }

    // Interrupts: the chosen causes of the submitting engines, in each engine's GT bank.
    const banks = new Array<number>(GEN8_GT_BANKS).fill(0);
    for (const id of irqEngines) {
      const { bank, shift } = GT_ENGINE_IRQ[id];
      banks[bank] = (banks[bank]! | (irqBits << shift)) >>> 0;
    }
    banks.forEach((enabled, n) => {
      if (enabled === 0) return;
      mmioWrite(gpu, gen8GtIir(n), 0xffffffff);
      mmioWrite(gpu, gen8GtIer(n), enabled);
      mmioWrite(gpu, gen8GtImr(n), ~enabled >>> 0);
    });
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

  // ---- submission (host-submission.ts, host-execlists.ts) ---------------------------------------------------------

  submit(s: Submission): void {
    this.checkLive("submit");
    this.backend.submit(s);
  }

  /**
   * Queues a shadow context (`HostGpu.submitContext`): execlists only (EOPNOTSUPP with ring submission). See
   * contract.ts for the semantics and host-execlists.ts for how it runs.
   */
  submitContext(cs: ContextSubmission): void {
    this.checkLive("submitContext");
    if (this.execlists === undefined) {
      throw new KernelError(
        Errno.EOPNOTSUPP,
        `i915 on ${this.bdf} submits through legacy rings: shadow contexts need a driver created with submission "execlists"`,
      );
    }
    this.execlists.submitContext(cs);
  }

  engineStats(id: GtEngineId): HostEngineStats {
    const irq = this.irqCounts[id];
    const idle = { submissions: 0, commands: 0, faults: 0, errors: 0, busyNs: 0, queued: 0, inFlight: false };
    const base =
      this.execlists !== undefined
        ? this.execlists.stats(id)
        : id === "rcs" || id === "bcs"
          ? this.submission!.stats(id)
          : idle;
    return { ...base, userInterrupts: irq.user, csErrors: irq.csError, contextSwitches: irq.ctxSwitch };
  }

  /**
   * The `Submission.owner` (or `ContextSubmission.owner`) whose work the engines are executing right now, or -1 when
   * none is (engines run inside the driver's RING_TAIL or ELSP write, so this is exact for every DMA the GPU makes,
   * context restore and save included). Added for the scenario's isolation checker, which attributes each DMA to the
   * vGPU it is for.
   */
  get executingOwner(): number {
    return this.backend.executingOwner;
  }

  /**
   * With execlists, the engine and the label (`ContextSubmission.label`) of the shadow context the engines are
   * executing right now; undefined for ring work and outside execution. For the isolation checker's per-context
   * attribution.
   */
  get executingContext(): { readonly engine: GtEngineId; readonly label: string } | undefined {
    const b = this.backend;
    return "executingContext" in b ? b.executingContext : undefined;
  }

  /** Engine time (ns, all engines) of the completed submissions of `owner` (a vGPU id; 0 = host). */
  ownerBusyNs(owner: number): number {
    return this.backend.ownerBusyNs(owner);
  }

  irqStats(): HostIrqStats {
    return { msi: this.irqMsi, spurious: this.irqSpurious };
  }

  /** GMA of an engine's ring (with execlists: its kernel context's ring; host-owned, for tests and the dashboard). */
  ringGma(id: EngineId): Gma {
    return this.backend.ringGma(id);
  }

  /**
   * The host frames the GPU itself reads or writes during anyone's work: the rings it fetches from, the status pages
   * (store-index post-sync writes; with execlists the CSB entries), and with execlists the kernel contexts' images
   * (context save) and the aliasing PPGTT's tables it walks. An isolation checker allows these for every owner.
   */
  hostGpuFrames(): HostGpuFrame[] {
    const out: HostGpuFrame[] = [];
    for (const b of this.buffers.all()) {
      if (b.kind !== "ring" && b.kind !== "status page" && b.kind !== "context") continue;
      for (let i = 0; i < b.buf.pages; i++) {
        out.push({ pfn: (b.buf.pfn + i) as Pfn, write: b.kind !== "ring", what: b.kind });
      }
    }
    for (const pfn of this.ppgtt?.tableFrames() ?? []) out.push({ pfn, write: false, what: "page table" });
    return out;
  }

  private get backend(): HostSubmission | HostExeclists {
    return (this.execlists ?? this.submission)!;
  }

  // ---- interrupts ------------------------------------------------------------------------------------------------

  /**
   * gen8_irq_handler: master off; for each GT bank with pending bits, read and acknowledge its IIR; dispatch
   * (user interrupts and CS errors are counted; a context switch makes the execlists code read the CSB); master on.
   */
  private handleIrq(): void {
    this.irqMsi++;
    const gpu = this.gpu;
    const master = mmioRead(gpu, GEN8_MASTER_IRQ);
    const gt =
      GEN8_GT_RCS_IRQ | GEN8_GT_BCS_IRQ | GEN8_GT_VCS0_IRQ | GEN8_GT_VCS1_IRQ | GEN8_GT_PM_IRQ | GEN8_GT_VECS_IRQ;
    if ((master & gt) === 0) {
      this.irqSpurious++;
      return;
    }
    mmioWrite(gpu, GEN8_MASTER_IRQ, 0);
    const iirs = [0, 0, 0, 0];
    const bankPending = [
      (master & (GEN8_GT_RCS_IRQ | GEN8_GT_BCS_IRQ)) !== 0,
      (master & (GEN8_GT_VCS0_IRQ | GEN8_GT_VCS1_IRQ)) !== 0,
      (master & GEN8_GT_PM_IRQ) !== 0,
      (master & GEN8_GT_VECS_IRQ) !== 0,
    ];
    for (let n = 0; n < GEN8_GT_BANKS; n++) {
      if (!bankPending[n]) continue;
      const iir = mmioRead(gpu, gen8GtIir(n));
      iirs[n] = iir;
      if (iir !== 0) mmioWrite(gpu, gen8GtIir(n), iir);
    }
    const switched: GtEngineId[] = [];
    for (const id of GT_ENGINES) {
      const { bank, shift } = GT_ENGINE_IRQ[id];
      const bits = (iirs[bank]! >>> shift) & 0xffff;
      const c = this.irqCounts[id];
      if ((bits & GT_RENDER_USER_INTERRUPT) !== 0) c.user++;
      if ((bits & GT_CS_MASTER_ERROR_INTERRUPT) !== 0) c.csError++;
      if ((bits & GT_CONTEXT_SWITCH_INTERRUPT) !== 0) {
        c.ctxSwitch++;
        switched.push(id);
      }
    }
    if (this.tracer.enabled) this.tracer.emit("i915.irq", { bdf: this.bdf, iir: iirs[0]! });
    for (const id of switched) this.execlists?.contextSwitchInterrupt(id);
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
          : this.backend.busy()
            ? "submissions are queued or running"
            : undefined;
    if (busy !== undefined) throw new KernelError(Errno.EBUSY, `cannot unbind i915 from ${this.bdf}: ${busy}`);
    const gpu = this.gpu;
    mmioWrite(gpu, GEN8_MASTER_IRQ, 0);
    const banks = this.execlists !== undefined ? [0, 1, 3] : [0];
    for (const n of banks) {
      mmioWrite(gpu, gen8GtIer(n), 0);
      mmioWrite(gpu, gen8GtImr(n), 0xffffffff);
    }
    this.backend.stop();
    this.ggtt.mirror = undefined;
    this.ppgtt?.free();
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
  /** How the host driver submits (default "ring"; "execlists" for shadow contexts). */
  readonly submission?: SubmissionMode;
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
    ...(opts.submission !== undefined ? { submission: opts.submission } : {}),
  });
  return { gpu, driver, group };
}
