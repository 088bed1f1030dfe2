/**
 * The host graphics driver: an i915-like kernel driver bound to the physical GPU, implementing `HostGpu` (contract.ts)
 * for the vGPU vendor driver.
 *
 * Probe (the constructor), in i915's order: bind to the device on the PCI bus as "i915" with an MSI handler; enable
 * memory decoding, bus mastering and MSI; allocate the scratch page with dma_alloc_coherent and point every GGTT entry
 * at it (gen8_ggtt_clear_range); allocate each engine's ring buffer and hardware status page with
 * dma_alloc_coherent, map them into the GGTT inside the host's own reservation and start the rings; enable the GT
 * interrupts (user interrupt and command-streamer error of both engines) and the master interrupt.
 * Every buffer comes from the GPU's DMA API (`host.dmaApi(bdf)`): the very IOVA allocator and IOMMU domain the
 * vendor driver's dma_map_page uses for guest pages, so host buffers and guest mappings can never share an IOVA.
 *
 * Graphics memory (GM, 4 GiB) is partitioned as GVT-g does:
 *   [0, 128 MiB)                              host aperture reservation (rings, status pages)
 *   [128 MiB, aperture)                       vGPU aperture region: contiguous partitions for vGPUs
 *   [aperture, aperture + 384 MiB)            host hidden reservation (shadow buffers from `allocShadow`)
 *   [aperture + 384 MiB, 4 GiB)               vGPU hidden region
 * and fences 0..3 stay with the host, 4..31 go to vGPUs (any free ones, lowest first). GGTT entries nobody owns point
 * at the scratch page; a partition is handed out with its entries on it, and a freed partition's entries are pointed
 * back at it. `writeGgtt` and `fillGgtt` (bulk) accept only entries inside a live vGPU partition, `writeFence` only
 * fences of one: the vendor driver cannot overwrite the host's mappings. The vendor driver points each partition at
 * a scratch page of the vGPU's own while it lives (src/vgpu): this driver's scratch page is never shared by two
 * vGPUs' failed entries, only by entries nobody owns.
 *
 * Submission: `submit` queues work per engine; an engine runs one submission at a time. Its dwords are copied into the
 * host's ring (split into pieces when they do not fit; the engine waits on a command cut by a piece boundary), TAIL is
 * written and the GPU executes synchronously (see engine.ts); the submission is complete when the engine's busy time
 * has elapsed on the clock: `onComplete` runs from a clock timer at that time (so with a VirtualClock, when the clock
 * is advanced past it), and the next queued submission starts then. After an engine error the driver clears
 * RING_EIR and skips the rest of the submission (HEAD = TAIL), and reports the error in the result.
 *
 * `checkInvariants()` asserts that none of this ever collides: GM pieces disjoint and each inside its region, fences
 * owned once, host buffers' IOVAs disjoint and still mapped to their frames, host GGTT entries pointing at host
 * buffers, free entries at the scratch page, and no vGPU entry pointing at a host ring, status page or shadow buffer
 * (a live partition's entries hold whatever the vendor driver wrote: guest pages, its own scratch page, or this
 * driver's scratch page; which of those is the vendor driver's invariant to check).
 *
 * Not modelled: execlists, GuC, display, runtime power management, GPU hang detection (errors are reported at once).
 */
import {
  defineTraceEvents,
  Errno,
  type Gma,
  type Hpa,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type SchedulingClock,
  type Tracer,
} from "../core/index.ts";
import {
  type Bdf,
  type CoherentBuffer,
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
  pfnToHpa,
} from "../host/index.ts";
import type {
  GmRange,
  GpuCapacity,
  GpuResourceRequest,
  GpuResources,
  HostGpu,
  ShadowBuffer,
  Submission,
  SubmissionResult,
} from "./contract.ts";
import type { CostModel } from "./cost.ts";
import { GmRegionAllocator } from "./gm-region-allocator.ts";
import { GpuDevice, MiB } from "./gpu.ts";
import {
  ENGINE_BASE,
  ENGINE_IRQ_SHIFT,
  type EngineId,
  FENCE_REG_GEN6_LO,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_GT_RCS_IRQ,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GM_SIZE,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_RENDER_USER_INTERRUPT,
  GTT_ENTRIES,
  GTT_OFFSET,
  gen8PteEncode,
  NUM_FENCES,
  RING_CTL,
  RING_EIR,
  RING_HEAD,
  RING_HWS_PGA,
  RING_MAX_BYTES,
  RING_START,
  RING_TAIL,
  RING_VALID,
} from "./regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "i915.probe": { bdf: string; apertureSize: number; ringBytes: number; scratchIova: number };
    "i915.remove": { bdf: string };
    "i915.partition.alloc": {
      bdf: string;
      apertureBase: number;
      apertureSize: number;
      hiddenBase: number;
      hiddenSize: number;
      fences: readonly number[];
    };
    "i915.partition.free": { bdf: string; apertureBase: number; hiddenBase: number; fences: readonly number[] };
    "i915.partition.enospc": { bdf: string; reason: string };
    "i915.shadow.alloc": { bdf: string; gma: number; size: number; iova: number };
    "i915.shadow.free": { bdf: string; gma: number; size: number };
    "i915.submit": { bdf: string; engine: string; owner: number; dwords: number; queued: number };
    "i915.complete": {
      bdf: string;
      engine: string;
      owner: number;
      busyNs: number;
      commands: number;
      faults: number;
      error: string | null;
    };
    "i915.recover": { bdf: string; engine: string; head: number; message: string };
    "i915.irq": { bdf: string; iir: number };
  }
}
defineTraceEvents("gpu", {
  "i915.probe":
    "i915 bound to {bdf}: aperture {apertureSize} bytes, rings of {ringBytes} bytes, scratch page at iova {scratchIova}",
  "i915.remove": "i915 unbound from {bdf}",
  "i915.partition.alloc":
    "{bdf}: vGPU partition: aperture {apertureBase}+{apertureSize}, hidden {hiddenBase}+{hiddenSize}, fences {fences}",
  "i915.partition.free":
    "{bdf}: vGPU partition at aperture {apertureBase} / hidden {hiddenBase} freed (fences {fences})",
  "i915.partition.enospc": "{bdf}: no room for a vGPU partition: {reason}",
  "i915.shadow.alloc": "{bdf}: shadow buffer at gma {gma}, {size} bytes, iova {iova}",
  "i915.shadow.free": "{bdf}: shadow buffer at gma {gma} ({size} bytes) freed",
  "i915.submit": "{bdf} {engine}: submission of {dwords} dword(s) for owner {owner} ({queued} queued)",
  "i915.complete":
    "{bdf} {engine}: submission for owner {owner} complete: {commands} command(s), {busyNs} ns, {faults} fault(s), error {error}",
  "i915.recover": "{bdf} {engine}: engine error cleared, HEAD skipped to {head}: {message}",
  "i915.irq": "{bdf}: i915 interrupt, GT IIR {iir}",
});

/** What the host keeps for itself (GVT-g's figures). */
export const HOST_APERTURE_RESERVED = 128 * MiB;
export const HOST_HIDDEN_RESERVED = 384 * MiB;
export const HOST_FENCES = 4;
/** Default size of each engine's ring buffer. */
export const HOST_RING_BYTES = 32 * 1024;
/** Where firmware puts the GPU: the integrated GPU's conventional address. */
export const DEFAULT_GPU_BDF = "0000:00:02.0";
/** Addresses firmware programs into the BARs (cosmetic: the BARs are trapped). */
const BAR0_ADDRESS = 0xf600_0000;
const BAR2_ADDRESS = 0x40_0000_0000;
/** The MSI message the driver programs (x86: address 0xfee00000, vector 0x41). */
const MSI_ADDRESS = 0xfee0_0000;
const MSI_DATA = 0x41;

const ENGINES: readonly EngineId[] = ["rcs", "bcs"];
const OWNER_FREE = 0;
const OWNER_HOST = 1;
/** Owner tags from here on are vGPU partitions (slot + OWNER_PARTITION). */
const OWNER_PARTITION = 2;
const PAD = new Uint8Array(4); // one MI_NOOP

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

/** Told about a shadow buffer when it is allocated (`alive` true) and when it is freed (false). */
export type ShadowObserver = (buf: ShadowBuffer, alive: boolean) => void;

/** A buffer the host driver allocated with dma_alloc_coherent and mapped into the GGTT (gma -1: not mapped). */
interface HostBuffer {
  readonly kind: "scratch" | "ring" | "status page" | "shadow";
  readonly buf: CoherentBuffer;
  readonly gma: number;
}

interface EngineState {
  readonly id: EngineId;
  readonly base: number;
  readonly ring: HostBuffer;
  readonly hws: HostBuffer;
  /** Where the driver writes next (the TAIL it last wrote). */
  tail: number;
  readonly queue: Submission[];
  inFlight: Submission | undefined;
  submissions: number;
  commands: number;
  faults: number;
  errors: number;
  busyNs: number;
  userInterrupts: number;
  csErrors: number;
}

interface Partition {
  readonly slot: number;
  readonly resources: GpuResources;
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

export interface InvariantOptions {
  /** Also scan all 1 Mi GGTT entries (a few ms): free entries at scratch, no vGPU entry at a host buffer. */
  readonly scanGgtt?: boolean;
}

function mib(bytes: number): string {
  const m = bytes / MiB;
  return `${Number.isInteger(m) ? m : m.toFixed(2)} MiB`;
}

export class HostGpuDriver implements HostGpu {
  readonly bdf: Bdf;
  readonly dma: DmaDevice;
  readonly scratch: { readonly pfn: Pfn; readonly dmaAddr: Iova };
  readonly engines: readonly EngineId[] = ENGINES;
  readonly gpu: GpuDevice;
  readonly ringBytes: number;

  private readonly bus: PciBus;
  private readonly physmem: PhysicalMemory;
  private readonly iommu: Iommu;
  private readonly clock: SchedulingClock;
  private readonly tracer: Tracer;
  private readonly scratchPte: number;
  private readonly hostLow: GmRegionAllocator;
  private readonly hostHigh: GmRegionAllocator;
  private readonly vgpuLow: GmRegionAllocator;
  private readonly vgpuHigh: GmRegionAllocator;
  /** Owner of each GGTT entry: OWNER_FREE, OWNER_HOST, or OWNER_PARTITION + slot. */
  private readonly gttOwner = new Uint16Array(GTT_ENTRIES);
  /** Owner of each fence, same tags. */
  private readonly fenceOwner = new Uint16Array(NUM_FENCES);
  private readonly partitions = new Map<number, Partition>();
  private readonly byApertureBase = new Map<number, number>();
  private readonly freeSlots: number[] = [];
  private nextSlot = 0;
  private readonly buffers = new Set<HostBuffer>();
  private readonly engineState: Record<EngineId, EngineState>;
  /** Engine busy ns of completed submissions, by `Submission.owner`. */
  private readonly busyByOwner = new Map<number, number>();
  private irqMsi = 0;
  private irqSpurious = 0;
  private shadowObserver: ShadowObserver | undefined;
  /** `Submission.owner` of the work the engines are executing now, -1 outside execution (see `executingOwner`). */
  private executing = -1;
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
    this.physmem = opts.physmem;
    this.iommu = opts.iommu;
    this.dma = opts.dma;
    this.clock = opts.clock;
    this.tracer = opts.tracer;
    this.ringBytes = ringBytes;
    const ap = gpu.apertureSize;
    this.hostLow = new GmRegionAllocator("host aperture", 0, HOST_APERTURE_RESERVED);
    this.vgpuLow = new GmRegionAllocator("vGPU aperture", HOST_APERTURE_RESERVED, ap - HOST_APERTURE_RESERVED);
    this.hostHigh = new GmRegionAllocator("host hidden", ap, HOST_HIDDEN_RESERVED);
    this.vgpuHigh = new GmRegionAllocator(
      "vGPU hidden",
      ap + HOST_HIDDEN_RESERVED,
      GM_SIZE - ap - HOST_HIDDEN_RESERVED,
    );
    this.gttOwner.fill(OWNER_HOST, 0, HOST_APERTURE_RESERVED / PAGE_SIZE);
    this.gttOwner.fill(OWNER_HOST, ap / PAGE_SIZE, (ap + HOST_HIDDEN_RESERVED) / PAGE_SIZE);
    this.fenceOwner.fill(OWNER_HOST, 0, HOST_FENCES);

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
    const scratch = this.dma.allocCoherent(PAGE_SIZE);
    this.buffers.add({ kind: "scratch", buf: scratch, gma: -1 });
    this.scratch = { pfn: scratch.pfn, dmaAddr: scratch.dmaAddr };
    this.scratchPte = gen8PteEncode(scratch.dmaAddr);
    gpu.fillGgtt(0, GTT_ENTRIES, this.scratchPte);

    // Rings and status pages, in the host's aperture reservation.
    const state = {} as Record<EngineId, EngineState>;
    for (const id of ENGINES) {
      const base = ENGINE_BASE[id];
      const ring = this.mapHostBuffer("ring", this.hostLow, ringBytes);
      const hws = this.mapHostBuffer("status page", this.hostLow, PAGE_SIZE);
      this.mmioWrite(base + RING_CTL, 0);
      this.mmioWrite(base + RING_HWS_PGA, hws.gma);
      this.mmioWrite(base + RING_HEAD, 0);
      this.mmioWrite(base + RING_TAIL, 0);
      this.mmioWrite(base + RING_START, ring.gma);
      this.mmioWrite(base + RING_CTL, (((ringBytes / PAGE_SIZE - 1) << 12) | RING_VALID) >>> 0);
      state[id] = {
        id,
        base,
        ring,
        hws,
        tail: 0,
        queue: [],
        inFlight: undefined,
        submissions: 0,
        commands: 0,
        faults: 0,
        errors: 0,
        busyNs: 0,
        userInterrupts: 0,
        csErrors: 0,
      };
    }
    this.engineState = state;

    // Interrupts: user interrupt and CS error of both engines.
    let enabled = 0;
    for (const id of ENGINES) {
      enabled |= (GT_RENDER_USER_INTERRUPT | GT_CS_MASTER_ERROR_INTERRUPT) << ENGINE_IRQ_SHIFT[id];
    }
    this.mmioWrite(GEN8_GT_IIR0, 0xffffffff);
    this.mmioWrite(GEN8_GT_IER0, enabled >>> 0);
    this.mmioWrite(GEN8_GT_IMR0, ~enabled >>> 0);
    this.mmioWrite(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.probe", { bdf: this.bdf, apertureSize: ap, ringBytes, scratchIova: scratch.dmaAddr });
    }
  }

  // ---- partitions ------------------------------------------------------------------------------------------------

  capacity(): GpuCapacity {
    let fencesFree = 0;
    for (let f = 0; f < NUM_FENCES; f++) if (this.fenceOwner[f] === OWNER_FREE) fencesFree++;
    return {
      apertureTotal: this.vgpuLow.size,
      apertureFree: this.vgpuLow.free,
      apertureLargestFree: this.vgpuLow.largestFree(),
      hiddenTotal: this.vgpuHigh.size,
      hiddenFree: this.vgpuHigh.free,
      hiddenLargestFree: this.vgpuHigh.largestFree(),
      fencesTotal: NUM_FENCES - HOST_FENCES,
      fencesFree,
    };
  }

  allocResources(req: GpuResourceRequest): GpuResources {
    this.checkLive("allocResources");
    for (const [name, v] of [
      ["aperture", req.aperture],
      ["hidden", req.hidden],
    ] as const) {
      if (!Number.isSafeInteger(v) || v <= 0 || v % PAGE_SIZE !== 0) {
        throw new KernelError(Errno.EINVAL, `vGPU ${name} size ${v} bytes is not a positive multiple of 4 KiB`);
      }
    }
    if (!Number.isInteger(req.fences) || req.fences < 0 || req.fences > NUM_FENCES) {
      throw new KernelError(Errno.EINVAL, `vGPU fence count ${req.fences} is not an integer from 0 to ${NUM_FENCES}`);
    }
    const cap = this.capacity();
    const why =
      this.shortage("aperture", req.aperture, cap.apertureFree, cap.apertureLargestFree) ??
      this.shortage("hidden", req.hidden, cap.hiddenFree, cap.hiddenLargestFree) ??
      (cap.fencesFree < req.fences ? `fences: ${cap.fencesFree} left, needs ${req.fences}` : undefined);
    if (why !== undefined) {
      if (this.tracer.enabled) this.tracer.emit("i915.partition.enospc", { bdf: this.bdf, reason: why });
      throw new KernelError(Errno.ENOSPC, `cannot allocate a vGPU partition on ${this.bdf}: ${why}`, {
        request: req,
        capacity: cap,
      });
    }
    const slot = this.freeSlots.pop() ?? this.nextSlot++;
    const owner = OWNER_PARTITION + slot;
    const apBase = this.vgpuLow.alloc(req.aperture);
    const hiBase = this.vgpuHigh.alloc(req.hidden);
    const fences: number[] = [];
    for (let f = 0; f < NUM_FENCES && fences.length < req.fences; f++) {
      if (this.fenceOwner[f] === OWNER_FREE) {
        this.fenceOwner[f] = owner;
        fences.push(f);
      }
    }
    this.gttOwner.fill(owner, apBase / PAGE_SIZE, (apBase + req.aperture) / PAGE_SIZE);
    this.gttOwner.fill(owner, hiBase / PAGE_SIZE, (hiBase + req.hidden) / PAGE_SIZE);
    for (const f of fences) this.mmioWrite64(FENCE_REG_GEN6_LO + 8 * f, 0);
    const resources: GpuResources = Object.freeze({
      aperture: Object.freeze({ base: apBase as Gma, size: req.aperture }),
      hidden: Object.freeze({ base: hiBase as Gma, size: req.hidden }),
      fences: Object.freeze(fences),
    });
    this.partitions.set(slot, { slot, resources });
    this.byApertureBase.set(apBase, slot);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.partition.alloc", {
        bdf: this.bdf,
        apertureBase: apBase,
        apertureSize: req.aperture,
        hiddenBase: hiBase,
        hiddenSize: req.hidden,
        fences,
      });
    }
    return resources;
  }

  freeResources(r: GpuResources): void {
    const slot = this.byApertureBase.get(r.aperture.base);
    const p = slot === undefined ? undefined : this.partitions.get(slot);
    const same =
      p !== undefined &&
      p.resources.aperture.size === r.aperture.size &&
      p.resources.hidden.base === r.hidden.base &&
      p.resources.hidden.size === r.hidden.size &&
      p.resources.fences.length === r.fences.length &&
      p.resources.fences.every((f, i) => r.fences[i] === f);
    if (p === undefined || !same) {
      throw new KernelError(
        Errno.EINVAL,
        `no vGPU partition with aperture ${hex(r.aperture.base)}+${mib(r.aperture.size)} and hidden ${hex(r.hidden.base)}+${mib(r.hidden.size)} is allocated on ${this.bdf}`,
      );
    }
    const res = p.resources;
    for (const range of [res.aperture, res.hidden]) {
      this.gpu.fillGgtt(range.base / PAGE_SIZE, range.size / PAGE_SIZE, this.scratchPte);
      this.gttOwner.fill(OWNER_FREE, range.base / PAGE_SIZE, (range.base + range.size) / PAGE_SIZE);
    }
    for (const f of res.fences) {
      this.mmioWrite64(FENCE_REG_GEN6_LO + 8 * f, 0);
      this.fenceOwner[f] = OWNER_FREE;
    }
    this.vgpuLow.release(res.aperture.base);
    this.vgpuHigh.release(res.hidden.base);
    this.partitions.delete(p.slot);
    this.byApertureBase.delete(res.aperture.base);
    this.freeSlots.push(p.slot);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.partition.free", {
        bdf: this.bdf,
        apertureBase: res.aperture.base,
        hiddenBase: res.hidden.base,
        fences: [...res.fences],
      });
    }
  }

  /** The live vGPU partitions, by aperture base. */
  liveResources(): GpuResources[] {
    return [...this.partitions.values()].map((p) => p.resources).sort((a, b) => a.aperture.base - b.aperture.base);
  }

  private shortage(name: string, need: number, free: number, largest: number): string | undefined {
    if (free < need) return `${name}: ${mib(free)} left, needs ${mib(need)}`;
    if (largest < need) {
      return `${name}: ${mib(free)} left but the largest contiguous range is ${mib(largest)}, needs ${mib(need)}`;
    }
    return undefined;
  }

  // ---- GGTT and fences -------------------------------------------------------------------------------------------

  writeGgtt(index: number, pte: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= GTT_ENTRIES || this.gttOwner[index]! < OWNER_PARTITION) {
      throw new KernelError(
        Errno.EINVAL,
        `GGTT entry ${index} (GMA ${Number.isInteger(index) ? hex(index * PAGE_SIZE) : "?"}) is not inside a vGPU partition on ${this.bdf}`,
      );
    }
    if (!Number.isSafeInteger(pte) || pte < 0) {
      throw new KernelError(Errno.EINVAL, `GGTT entry value ${pte} is not an integer in [0, 2^53)`);
    }
    this.gpu.barWrite(0, GTT_OFFSET + index * 8, 8, pte);
  }

  /** Zeroes one page of a buffer from `dma.allocCoherent` (see HostGpu.zeroPage). */
  zeroPage(pfn: Pfn): void {
    this.physmem.fill(pfnToHpa(pfn), 0, PAGE_SIZE);
  }

  /**
   * Points `count` entries from `first` at one PTE (the vendor driver re-pointing a partition at its own scratch page):
   * one bulk write, one trace event. EINVAL unless [first, first + count) lies inside the aperture or the hidden piece
   * of one live partition (so, like `writeGgtt`, it cannot reach the host's entries or free ones).
   */
  fillGgtt(first: number, count: number, pte: number): void {
    this.checkLive("fillGgtt");
    const owner = Number.isInteger(first) && first >= 0 && first < GTT_ENTRIES ? this.gttOwner[first]! : OWNER_FREE;
    const p = owner >= OWNER_PARTITION ? this.partitions.get(owner - OWNER_PARTITION) : undefined;
    const inside = (r: GmRange) => first >= r.base / PAGE_SIZE && first + count <= (r.base + r.size) / PAGE_SIZE;
    if (
      p === undefined ||
      !Number.isInteger(count) ||
      count < 1 ||
      !(inside(p.resources.aperture) || inside(p.resources.hidden))
    ) {
      throw new KernelError(
        Errno.EINVAL,
        `GGTT entries [${first}, ${first}+${count}) are not inside one piece of a live vGPU partition on ${this.bdf}`,
      );
    }
    if (!Number.isSafeInteger(pte) || pte < 0) {
      throw new KernelError(Errno.EINVAL, `GGTT entry value ${pte} is not an integer in [0, 2^53)`);
    }
    this.gpu.fillGgtt(first, count, pte);
  }

  readGgtt(index: number): number {
    if (!Number.isInteger(index) || index < 0 || index >= GTT_ENTRIES) {
      throw new KernelError(Errno.EINVAL, `GGTT entry ${index} is outside the ${GTT_ENTRIES} entries`);
    }
    return this.gpu.barRead(0, GTT_OFFSET + index * 8, 8);
  }

  writeFence(fence: number, value: number): void {
    this.checkFence(fence);
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new KernelError(Errno.EINVAL, `fence value ${value} is not an integer in [0, 2^53)`);
    }
    this.mmioWrite64(FENCE_REG_GEN6_LO + 8 * fence, value);
  }

  /** Writes a fence as two 32-bit halves (a gen6 fence's end address sits in bits 44..63, beyond a number's 2^53). */
  writeFenceHalves(fence: number, lo: number, hi: number): void {
    this.checkFence(fence);
    for (const [name, v] of [
      ["low", lo],
      ["high", hi],
    ] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
        throw new KernelError(Errno.EINVAL, `fence ${name} half ${v} is not a 32-bit unsigned integer`);
      }
    }
    this.mmioWrite(FENCE_REG_GEN6_LO + 8 * fence, lo);
    this.mmioWrite(FENCE_REG_GEN6_LO + 8 * fence + 4, hi);
  }

  private checkFence(fence: number): void {
    if (!Number.isInteger(fence) || fence < 0 || fence >= NUM_FENCES || this.fenceOwner[fence]! < OWNER_PARTITION) {
      throw new KernelError(Errno.EINVAL, `fence ${fence} is not assigned to a vGPU partition on ${this.bdf}`);
    }
  }

  // ---- shadow buffers --------------------------------------------------------------------------------------------

  allocShadow(size: number): ShadowBuffer {
    this.checkLive("allocShadow");
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new KernelError(Errno.EINVAL, `shadow buffer size ${size} is not a positive integer`);
    }
    const bytes = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
    const hb = this.mapHostBuffer("shadow", this.hostHigh, bytes);
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

  /**
   * Installs (or with undefined removes) the observer told about every shadow buffer: allocated, and freed (before
   * its pages are unmapped). The isolation checker uses it to know which host frames hold which vGPU's shadow copies.
   */
  setShadowObserver(fn: ShadowObserver | undefined): void {
    this.shadowObserver = fn;
  }

  private freeShadow(hb: HostBuffer, sb: ShadowBuffer): void {
    if (!this.buffers.has(hb)) {
      throw new KernelError(Errno.EINVAL, `shadow buffer at GMA ${hex(hb.gma)} was already freed`);
    }
    if (this.shadowObserver !== undefined) this.shadowObserver(sb, false);
    this.unmapHostBuffer(hb, this.hostHigh);
    if (this.tracer.enabled) this.tracer.emit("i915.shadow.free", { bdf: this.bdf, gma: hb.gma, size: hb.buf.size });
  }

  /** dma_alloc_coherent + GM from `region` + GGTT entries for every page. */
  private mapHostBuffer(kind: HostBuffer["kind"], region: GmRegionAllocator, bytes: number): HostBuffer {
    const gma = region.alloc(bytes);
    if (gma < 0) {
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
      this.gpu.barWrite(0, GTT_OFFSET + (gma / PAGE_SIZE + i) * 8, 8, gen8PteEncode(buf.dmaAddr + i * PAGE_SIZE));
    }
    const hb: HostBuffer = { kind, buf, gma };
    this.buffers.add(hb);
    return hb;
  }

  private unmapHostBuffer(hb: HostBuffer, region: GmRegionAllocator): void {
    this.gpu.fillGgtt(hb.gma / PAGE_SIZE, hb.buf.size / PAGE_SIZE, this.scratchPte);
    this.dma.dmaFreeCoherent(hb.buf);
    region.release(hb.gma);
    this.buffers.delete(hb);
  }

  // ---- submission ------------------------------------------------------------------------------------------------

  submit(s: Submission): void {
    this.checkLive("submit");
    const e = this.engineState[s.engine];
    if (e === undefined) {
      throw new KernelError(Errno.EINVAL, `engine ${String(s.engine)} does not exist on ${this.bdf} (rcs, bcs)`);
    }
    if (!(s.commands instanceof Uint32Array)) {
      throw new KernelError(Errno.EINVAL, "submission commands must be a Uint32Array of dwords");
    }
    e.queue.push(s);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.submit", {
        bdf: this.bdf,
        engine: e.id,
        owner: s.owner,
        dwords: s.commands.length,
        queued: e.queue.length,
      });
    }
    this.startNext(e);
  }

  private startNext(e: EngineState): void {
    if (e.inFlight !== undefined || this.removed) return;
    const s = e.queue.shift();
    if (s === undefined) return;
    e.inFlight = s;
    const outer = this.executing;
    this.executing = s.owner;
    let result: SubmissionResult;
    try {
      result = this.execute(e, s);
    } finally {
      this.executing = outer;
    }
    const doneAt = Math.max(this.clock.now(), this.gpu.engine(e.id).busyUntil);
    this.clock.at(doneAt, () => this.complete(e, s, result));
  }

  private complete(e: EngineState, s: Submission, result: SubmissionResult): void {
    e.inFlight = undefined;
    e.submissions++;
    e.commands += result.commands;
    e.faults += result.faults;
    e.busyNs += result.busyNs;
    if (result.error !== undefined) e.errors++;
    this.busyByOwner.set(s.owner, (this.busyByOwner.get(s.owner) ?? 0) + result.busyNs);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.complete", {
        bdf: this.bdf,
        engine: e.id,
        owner: s.owner,
        busyNs: result.busyNs,
        commands: result.commands,
        faults: result.faults,
        error: result.error ?? null,
      });
    }
    try {
      s.onComplete(result);
    } finally {
      this.startNext(e);
    }
  }

  /** Copies the submission into the ring piece by piece, moving TAIL; collects what the engine reports. */
  private execute(e: EngineState, s: Submission): SubmissionResult {
    const eng = this.gpu.engine(e.id);
    const len = this.ringBytes;
    const cmds = s.commands;
    const total = cmds.length;
    let commands = 0;
    let busyNs = 0;
    let faults = 0;
    let userInterrupts = 0;
    let error: string | undefined;
    let off = 0;
    while (off < total) {
      const head = this.mmioRead(e.base + RING_HEAD);
      const used = (e.tail - head + len) % len;
      // Keep 8 bytes free: HEAD == TAIL means empty. Pieces are whole qwords except the last.
      const room = Math.floor((len - 8 - used) / 8) * 2;
      const n = Math.min(total - off, room);
      if (n <= 0) {
        error = `ring of ${len} bytes is full with a command the engine cannot complete`;
        break;
      }
      this.writeRing(e, cmds, off, n);
      off += n;
      if (off === total && n % 2 === 1) this.writeRingPad(e);
      this.mmioWrite(e.base + RING_TAIL, e.tail);
      const st = eng.last;
      commands += st.commands;
      busyNs += st.busyNs;
      faults += st.gttFaults + st.iommuFaults;
      userInterrupts += st.userInterrupts;
      if (st.error !== undefined) {
        error = st.error;
        break;
      }
    }
    if (error === undefined && total > 0 && this.mmioRead(e.base + RING_HEAD) !== e.tail) {
      error = "the submission ends inside a command (the engine is waiting for the rest of it)";
    }
    if (error !== undefined) this.recover(e, error);
    return error === undefined
      ? { busyNs, commands, faults, userInterrupts }
      : { busyNs, commands, faults, userInterrupts, error };
  }

  private writeRing(e: EngineState, cmds: Uint32Array, off: number, n: number): void {
    const bytes = new Uint8Array(cmds.buffer, cmds.byteOffset + off * 4, n * 4);
    const len = this.ringBytes;
    const first = Math.min(bytes.length, len - e.tail);
    const ringHpa = e.ring.buf.pfn * PAGE_SIZE;
    this.physmem.write((ringHpa + e.tail) as Hpa, bytes, 0, first);
    if (first < bytes.length) this.physmem.write(ringHpa as Hpa, bytes, first, bytes.length - first);
    e.tail = (e.tail + bytes.length) % len;
  }

  private writeRingPad(e: EngineState): void {
    this.physmem.write((e.ring.buf.pfn * PAGE_SIZE + e.tail) as Hpa, PAD);
    e.tail = (e.tail + 4) % this.ringBytes;
  }

  /** After an engine error: clear RING_EIR and skip whatever is left of the submission. */
  private recover(e: EngineState, message: string): void {
    this.mmioWrite(e.base + RING_EIR, 0xffffffff);
    this.mmioWrite(e.base + RING_HEAD, e.tail);
    if (this.tracer.enabled) this.tracer.emit("i915.recover", { bdf: this.bdf, engine: e.id, head: e.tail, message });
  }

  engineStats(id: EngineId): HostEngineStats {
    const e = this.engineState[id];
    return {
      submissions: e.submissions,
      commands: e.commands,
      faults: e.faults,
      errors: e.errors,
      busyNs: e.busyNs,
      queued: e.queue.length,
      inFlight: e.inFlight !== undefined,
      userInterrupts: e.userInterrupts,
      csErrors: e.csErrors,
    };
  }

  /**
   * The `Submission.owner` whose work the engines are executing right now, or -1 when none is (engines run inside
   * the driver's RING_TAIL write, so this is exact for every DMA the GPU makes). Added for the scenario's isolation
   * checker, which attributes each DMA to the vGPU it is for.
   */
  get executingOwner(): number {
    return this.executing;
  }

  /** Engine time (ns, both engines) of the completed submissions of `owner` (a vGPU id; 0 = host). */
  ownerBusyNs(owner: number): number {
    return this.busyByOwner.get(owner) ?? 0;
  }

  irqStats(): HostIrqStats {
    return { msi: this.irqMsi, spurious: this.irqSpurious };
  }

  /** GMA of an engine's ring and status page (host-owned, for tests and the dashboard). */
  ringGma(id: EngineId): Gma {
    return this.engineState[id].ring.gma as Gma;
  }

  // ---- interrupts ------------------------------------------------------------------------------------------------

  /** gen8_irq_handler: master off, read and acknowledge GT IIR, dispatch, master on. */
  private handleIrq(): void {
    this.irqMsi++;
    const master = this.mmioRead(GEN8_MASTER_IRQ);
    if ((master & (GEN8_GT_RCS_IRQ | GEN8_GT_BCS_IRQ)) === 0) {
      this.irqSpurious++;
      return;
    }
    this.mmioWrite(GEN8_MASTER_IRQ, 0);
    const iir = this.mmioRead(GEN8_GT_IIR0);
    if (iir !== 0) this.mmioWrite(GEN8_GT_IIR0, iir);
    for (const id of ENGINES) {
      const bits = (iir >>> ENGINE_IRQ_SHIFT[id]) & 0xffff;
      const e = this.engineState[id];
      if ((bits & GT_RENDER_USER_INTERRUPT) !== 0) e.userInterrupts++;
      if ((bits & GT_CS_MASTER_ERROR_INTERRUPT) !== 0) e.csErrors++;
    }
    if (this.tracer.enabled) this.tracer.emit("i915.irq", { bdf: this.bdf, iir });
    this.mmioWrite(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
  }

  // ---- unbind ----------------------------------------------------------------------------------------------------

  /**
   * Unbinds the driver (i915 remove): EBUSY while vGPU partitions, shadow buffers or submissions exist. Stops the
   * rings and interrupts, clears the GGTT, frees every host buffer, disables MSI and bus mastering.
   */
  remove(): void {
    this.checkLive("remove");
    const busy =
      this.partitions.size > 0
        ? `${this.partitions.size} vGPU partition(s) are allocated`
        : [...this.buffers].some((b) => b.kind === "shadow")
          ? "shadow buffers are allocated"
          : ENGINES.some((id) => this.engineState[id].inFlight !== undefined || this.engineState[id].queue.length > 0)
            ? "submissions are queued or running"
            : undefined;
    if (busy !== undefined) throw new KernelError(Errno.EBUSY, `cannot unbind i915 from ${this.bdf}: ${busy}`);
    this.mmioWrite(GEN8_MASTER_IRQ, 0);
    this.mmioWrite(GEN8_GT_IER0, 0);
    this.mmioWrite(GEN8_GT_IMR0, 0xffffffff);
    for (const id of ENGINES) {
      const e = this.engineState[id];
      this.mmioWrite(e.base + RING_CTL, 0);
      this.unmapHostBuffer(e.ring, this.hostLow);
      this.unmapHostBuffer(e.hws, this.hostLow);
    }
    this.gpu.fillGgtt(0, GTT_ENTRIES, 0);
    for (const b of [...this.buffers]) {
      this.dma.dmaFreeCoherent(b.buf);
      this.buffers.delete(b);
    }
    // pci_disable_msi + pci_disable_device: no more interrupts or bus mastering from the device.
    const cfg = this.gpu.config;
    cfg.write(cfg.msiCap + PCI_MSI_FLAGS, 2, cfg.read(cfg.msiCap + PCI_MSI_FLAGS, 2) & ~PCI_MSI_FLAGS_ENABLE);
    cfg.write(PCI_COMMAND, 2, cfg.read(PCI_COMMAND, 2) & ~PCI_COMMAND_MASTER);
    this.removed = true;
    this.bus.unbind(this.bdf);
    if (this.tracer.enabled) this.tracer.emit("i915.remove", { bdf: this.bdf });
  }

  private checkLive(op: string): void {
    if (this.removed) throw new KernelError(Errno.ENODEV, `${op}: i915 is no longer bound to ${this.bdf}`);
  }

  // ---- invariants ------------------------------------------------------------------------------------------------

  /** Throws (an Error naming what collided) if any allocation of the host and the vGPUs overlaps. For tests. */
  checkInvariants(opts: InvariantOptions = {}): void {
    const fail = (what: string): never => {
      throw new Error(`i915 ${this.bdf} invariant violated: ${what}`);
    };
    for (const a of [this.hostLow, this.hostHigh, this.vgpuLow, this.vgpuHigh]) a.check();

    // GM: every piece inside its region, all pieces pairwise disjoint.
    const pieces: { base: number; size: number; what: string; owner: number }[] = [];
    for (const b of this.buffers) {
      if (b.gma < 0) continue;
      if (!this.hostLow.contains(b.gma, b.buf.size) && !this.hostHigh.contains(b.gma, b.buf.size)) {
        fail(`${b.kind} at GMA ${hex(b.gma)} is outside the host's reservations`);
      }
      pieces.push({ base: b.gma, size: b.buf.size, what: b.kind, owner: OWNER_HOST });
    }
    for (const p of this.partitions.values()) {
      const r = p.resources;
      if (!this.vgpuLow.contains(r.aperture.base, r.aperture.size)) fail(`partition ${p.slot} aperture outside region`);
      if (!this.vgpuHigh.contains(r.hidden.base, r.hidden.size)) fail(`partition ${p.slot} hidden outside region`);
      const owner = OWNER_PARTITION + p.slot;
      pieces.push({ base: r.aperture.base, size: r.aperture.size, what: `partition ${p.slot} aperture`, owner });
      pieces.push({ base: r.hidden.base, size: r.hidden.size, what: `partition ${p.slot} hidden`, owner });
    }
    pieces.sort((a, b) => a.base - b.base);
    for (let i = 1; i < pieces.length; i++) {
      const prev = pieces[i - 1]!;
      const cur = pieces[i]!;
      if (prev.base + prev.size > cur.base)
        fail(`${prev.what} at ${hex(prev.base)} overlaps ${cur.what} at ${hex(cur.base)}`);
    }
    for (const p of pieces) {
      for (let i = p.base / PAGE_SIZE; i < (p.base + p.size) / PAGE_SIZE; i++) {
        if (this.gttOwner[i] !== p.owner) fail(`GGTT entry ${i} of ${p.what} has owner tag ${this.gttOwner[i]}`);
      }
    }

    // Fences: host's 0..3; each partition fence owned by exactly that partition.
    const seen = new Set<number>();
    for (let f = 0; f < HOST_FENCES; f++) if (this.fenceOwner[f] !== OWNER_HOST) fail(`host fence ${f} was given away`);
    for (const p of this.partitions.values()) {
      for (const f of p.resources.fences) {
        if (f < HOST_FENCES || f >= NUM_FENCES) fail(`partition ${p.slot} holds fence ${f}`);
        if (seen.has(f)) fail(`fence ${f} is in two partitions`);
        seen.add(f);
        if (this.fenceOwner[f] !== OWNER_PARTITION + p.slot) fail(`fence ${f} owner tag is wrong`);
      }
    }
    for (let f = HOST_FENCES; f < NUM_FENCES; f++) {
      if (this.fenceOwner[f] !== OWNER_FREE && !seen.has(f)) fail(`fence ${f} is owned by no live partition`);
    }

    // IOVAs: host buffers disjoint, each still mapped to its own frames; host GGTT entries point at them.
    const domain = this.dma.translated ? this.iommu.domainOf(this.bdf) : undefined;
    const iovas = [...this.buffers].map((b) => ({ b, lo: b.buf.dmaAddr as number, hi: b.buf.dmaAddr + b.buf.size }));
    iovas.sort((x, y) => x.lo - y.lo);
    for (let i = 1; i < iovas.length; i++) {
      if (iovas[i - 1]!.hi > iovas[i]!.lo) {
        fail(
          `IOVA of ${iovas[i - 1]!.b.kind} [${hex(iovas[i - 1]!.lo)}, ${hex(iovas[i - 1]!.hi)}) overlaps ${iovas[i]!.b.kind} at ${hex(iovas[i]!.lo)}`,
        );
      }
    }
    for (const { b } of iovas) {
      for (let k = 0; k < b.buf.pages; k++) {
        const dmaAddr = b.buf.dmaAddr + k * PAGE_SIZE;
        const phys = domain === undefined ? dmaAddr : domain.iovaToPhys(dmaAddr as Iova);
        if (phys !== (b.buf.pfn + k) * PAGE_SIZE)
          fail(`${b.kind} page ${k} at IOVA ${hex(dmaAddr)} maps to ${hex(phys)}`);
        if (b.gma >= 0) {
          const pte = this.gpu.ggtt.read(b.gma / PAGE_SIZE + k);
          if (pte !== gen8PteEncode(dmaAddr))
            fail(`GGTT entry of ${b.kind} at GMA ${hex(b.gma + k * PAGE_SIZE)} is ${hex(pte)}`);
        }
      }
    }

    if (opts.scanGgtt ?? true) {
      // Every host buffer but the scratch page: a vGPU entry reaching one could read or rewrite the host's rings or
      // another vGPU's audited shadow batches.
      const hostIovas = iovas.filter((x) => x.b.kind !== "scratch");
      const ggtt = this.gpu.ggtt.entries;
      for (let i = 0; i < GTT_ENTRIES; i++) {
        const owner = this.gttOwner[i]!;
        const pte = ggtt[i]!;
        if (owner === OWNER_FREE) {
          if (pte !== this.scratchPte) fail(`free GGTT entry ${i} is ${hex(pte)}, not the scratch page`);
        } else if (owner >= OWNER_PARTITION) {
          const a = pte - (pte % PAGE_SIZE);
          for (const h of hostIovas) {
            if (a >= h.lo && a < h.hi) fail(`vGPU GGTT entry ${i} points at the host's ${h.b.kind} (${hex(a)})`);
          }
        }
      }
      const hostUsed = new Set<number>();
      for (const b of this.buffers) {
        if (b.gma >= 0) for (let k = 0; k < b.buf.pages; k++) hostUsed.add(b.gma / PAGE_SIZE + k);
      }
      for (const r of [this.hostLow, this.hostHigh]) {
        for (let i = r.start / PAGE_SIZE; i < r.end / PAGE_SIZE; i++) {
          if (!hostUsed.has(i) && ggtt[i] !== this.scratchPte)
            fail(`unused host GGTT entry ${i} is not the scratch page`);
        }
      }
    }
  }

  // ---- MMIO ------------------------------------------------------------------------------------------------------

  private mmioRead(off: number): number {
    return this.gpu.barRead(0, off, 4);
  }

  private mmioWrite(off: number, v: number): void {
    this.gpu.barWrite(0, off, 4, v >>> 0);
  }

  private mmioWrite64(off: number, v: number): void {
    this.gpu.barWrite(0, off, 8, v);
  }
}

/** A shadow buffer: host GM backed by coherent frames; CPU access through the kernel mapping (its frames, no IOMMU). */
class HostShadowBuffer implements ShadowBuffer {
  readonly gma: Gma;
  readonly size: number;

  constructor(
    private readonly hb: HostBuffer,
    size: number,
    private readonly physmem: PhysicalMemory,
    private readonly release: () => void,
    private readonly live: () => boolean,
  ) {
    this.gma = hb.gma as Gma;
    this.size = size;
  }

  /** DMA address (IOVA) of the buffer's first byte. */
  get dmaAddr(): Iova {
    return this.hb.buf.dmaAddr;
  }

  write(offset: number, data: Uint8Array): void {
    this.check(offset, data.length, "write");
    this.physmem.write((this.hb.buf.pfn * PAGE_SIZE + offset) as Hpa, data);
  }

  read(offset: number, into: Uint8Array): void {
    this.check(offset, into.length, "read");
    this.physmem.read((this.hb.buf.pfn * PAGE_SIZE + offset) as Hpa, into);
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
