/**
 * What the host graphics driver offers the vGPU vendor driver: the seam between src/gpu (the physical GPU and the
 * i915-like host driver that owns it) and src/vgpu (GVT-g-like mediation). The vendor driver never touches the
 * physical GPU's registers directly: it asks the host driver for graphics-memory partitions and fences, writes
 * physical GGTT entries, maps guest pages for DMA through the host driver's DMA API (the same IOVA space the host
 * driver's own buffers come from: the seed's point), and submits audited command streams to the engines, or, with
 * execlists, audited shadow contexts (GVT-g's workloads: a logical ring context image and a shadow PPGTT).
 */
import type { Gma, Iova, Pfn } from "../core/index.ts";
import type { Bdf, DmaDevice } from "../host/index.ts";
import type { CsbEvent } from "./lrc.ts";
import type { EngineId, GtEngineId } from "./regs.ts";

/** A range of graphics memory addresses, [base, base + size). */
export interface GmRange {
  readonly base: Gma;
  readonly size: number;
}

/** What a vGPU of a type needs (the GVTg_V5_* table rows). */
export interface GpuResourceRequest {
  /** Low graphics memory (CPU-visible through the aperture), bytes. */
  readonly aperture: number;
  /** High ("hidden") graphics memory, bytes. */
  readonly hidden: number;
  readonly fences: number;
}

/** A vGPU's partition of the physical GPU. */
export interface GpuResources {
  readonly aperture: GmRange;
  readonly hidden: GmRange;
  /** Physical fence register numbers. */
  readonly fences: readonly number[];
}

/** What is left for vGPUs (after the host driver's own reservation). */
export interface GpuCapacity {
  readonly apertureTotal: number;
  readonly apertureFree: number;
  /** Largest contiguous free aperture range (a vGPU's range must be contiguous). */
  readonly apertureLargestFree: number;
  readonly hiddenTotal: number;
  readonly hiddenFree: number;
  readonly hiddenLargestFree: number;
  readonly fencesTotal: number;
  readonly fencesFree: number;
}

/** Outcome of one submission on a physical engine. */
export interface SubmissionResult {
  /** Engine time the work took, in ns of the injected clock (the cost model of src/gpu). */
  readonly busyNs: number;
  /** Commands executed. */
  readonly commands: number;
  /** DMA faults during execution (an IOMMU fault or a GTT entry not present); 0 for well-formed work. */
  readonly faults: number;
  /** Set when the engine stopped on a malformed command. */
  readonly error?: string;
  /** MI_USER_INTERRUPT commands executed (whether or not the interrupt was masked). */
  readonly userInterrupts: number;
}

export interface Submission {
  readonly engine: EngineId;
  /**
   * Command dwords to execute, already audited. They may contain MI_BATCH_BUFFER_START to batch buffers in graphics
   * memory (shadow copies the vendor driver placed in memory from `allocShadow`), and end with MI_USER_INTERRUPT if
   * the submitter wants `onComplete` to report one.
   */
  readonly commands: Uint32Array;
  /** Who the work is for (a vGPU id, 0 = host): attributed in traces and busy-time accounting. */
  readonly owner: number;
  readonly onComplete: (result: SubmissionResult) => void;
}

/** How the host driver submits to the engines: legacy ring buffers, or execlists with logical ring contexts. */
export type SubmissionMode = "ring" | "execlists";

/**
 * A context to run as GVT-g runs a guest workload: the vendor driver's shadow of a guest context, audited. The host
 * driver points the image's PDP0 at `pml4`, submits the image's descriptor to the engine's ELSP when the engine is
 * free (in one queue with `submit`'s work, in order), and completes it when the engine switches it out.
 */
export interface ContextSubmission {
  readonly engine: GtEngineId;
  /**
   * The logical ring context image (datasheet section 6.7; `lrcRegisterState` builds page 1): a live `ShadowBuffer`
   * of this host driver (`allocShadow`) of at least 2 pages, its GMA the LRCA. Page 0 is the context's PPHWSP (its
   * store-index writes land there); page 1 holds the ring registers the engine restores: HEAD, TAIL, START (the GMA
   * of a ring the vendor driver audited, e.g. a shadow ring in another shadow buffer), CTL, and CONTEXT_CONTROL.
   */
  readonly image: ShadowBuffer;
  /**
   * DMA address (IOVA on this GPU's DMA API) of the PML4 of the shadow PPGTT: page aligned, not 0. Its tables and
   * pages must be IOVA-backed (`dma.allocCoherent`, `dma.mapPage`): the engine walks them through the IOMMU.
   */
  readonly pml4: Iova;
  /** Who the work is for (a vGPU id, 0 = host): attributed in traces, `executingOwner` and busy-time accounting. */
  readonly owner: number;
  /** What the owner calls this context (e.g. the guest's LRCA and context id): `executingContext` while it runs. */
  readonly label?: string;
  readonly onComplete: (result: ContextSubmissionResult) => void;
}

/** Outcome of a context: the `SubmissionResult` figures plus what the engine wrote back and reported. */
export interface ContextSubmissionResult extends SubmissionResult {
  /** The context id the host driver gave it (its descriptor's high dword: what `events` carry). */
  readonly ctxId: number;
  /** CTX_RING_HEAD as the engine saved it into the image at switch-out (TAIL when the ring ran to its end). */
  readonly head: number;
  /** CTX_RING_TAIL of the image at switch-out. */
  readonly tail: number;
  /** CTX_TIMESTAMP as saved (CS timestamp ticks, 12 MHz). */
  readonly timestamp: number;
  /**
   * The context status buffer entries the engine wrote for this context, in order: IDLE_TO_ACTIVE (or PREEMPTED
   * with LITE_RESTORE when it continued a context still loaded), then ACTIVE_TO_IDLE | COMPLETE (also after an
   * engine error, with `error` set).
   */
  readonly events: readonly CsbEvent[];
}

/** A host-owned buffer in graphics memory, backed by DMA-coherent frames, for shadow batch buffers. */
export interface ShadowBuffer {
  readonly gma: Gma;
  readonly size: number;
  /** CPU access (the kernel's mapping): write the shadow copy here. */
  write(offset: number, data: Uint8Array): void;
  read(offset: number, into: Uint8Array): void;
  free(): void;
}

/** The host graphics driver as the vendor driver sees it. */
export interface HostGpu {
  readonly bdf: Bdf;
  /** The GPU's DMA API: dma_map_page on a pinned guest frame gives the IOVA for a shadow GGTT entry. */
  readonly dma: DmaDevice;
  /**
   * The host driver's scratch page: every GGTT entry outside a live partition points at it, and a partition's entries
   * point at it when handed out and again once freed. A vendor driver must not leave a partition's entries on it
   * while the vGPU runs (every vGPU's failed entries would then share one writable page: a channel between VMs): it
   * re-points the partition at a scratch page of its own (`fillGgtt`).
   */
  readonly scratch: { readonly pfn: Pfn; readonly dmaAddr: Iova };
  capacity(): GpuCapacity;
  /** Carves a partition; ENOSPC (with the limiting resource and numbers) if it does not fit. */
  allocResources(req: GpuResourceRequest): GpuResources;
  freeResources(r: GpuResources): void;
  /** Writes physical GGTT entry `index` (GMA = index << 12) with a gen8 PTE (see regs.ts). */
  writeGgtt(index: number, pte: number): void;
  readGgtt(index: number): number;
  /**
   * Writes `count` (>= 1) consecutive GGTT entries from `first` with the same gen8 PTE in one call (one trace event,
   * not one per entry): the vendor driver's way to point a whole partition at its own scratch page. The range must lie
   * inside one piece (aperture or hidden) of one live partition, as `writeGgtt`'s entries must.
   */
  fillGgtt(first: number, count: number, pte: number): void;
  /**
   * Zeroes a page the caller got from `dma.allocCoherent` (the kernel's memset through its own mapping of the
   * buffer). The vendor driver clears its scratch page when a VMM lets go of the vGPU, so nothing one VMM wrote
   * through a failed GGTT entry can be read by the next VMM to open the same vGPU.
   */
  zeroPage(pfn: Pfn): void;
  /** Writes a physical fence register (64-bit value, below 2^53; see `writeFenceHalves` for the others). */
  writeFence(fence: number, value: number): void;
  /**
   * Writes a physical fence register as its two 32-bit halves. A gen6 fence keeps its end address in bits 44..63,
   * so any fence ending above 2 MiB exceeds 2^53 and cannot travel through `writeFence`'s number.
   */
  writeFenceHalves(fence: number, lo: number, hi: number): void;
  /** GM space (from the host's own reservation) for shadow batch buffers. ENOSPC when exhausted. */
  allocShadow(size: number): ShadowBuffer;
  /** Queues work on a physical engine; it runs when the engine is free, and `onComplete` is called after. */
  submit(s: Submission): void;
  /** Engines run queued work up to this clock time (the scheduler drives time; see src/gpu). */
  readonly engines: readonly EngineId[];
  /** How this host driver submits ("ring": `submitContext` is refused; "execlists": every engine takes contexts). */
  readonly submissionMode: SubmissionMode;
  /** The engines `submitContext` accepts: all four (rcs, bcs, vcs, vecs) with execlists, none with rings. */
  readonly contextEngines: readonly GtEngineId[];
  /**
   * Queues a shadow context on an engine (execlists only). EOPNOTSUPP with ring submission; EINVAL for an engine not
   * in `contextEngines`, an image that is not a live shadow buffer of this driver of at least 2 pages, or a PML4
   * address that is 0 or not page aligned. The context runs when the engine is free; `onComplete` is called (from a
   * clock timer, when the engine's busy time has elapsed, as for `submit`) once the engine has switched it out:
   * completed, or stopped by an engine error (then `error` is set, the engine's error is cleared and the next work
   * runs; HEAD in the image is where the engine stopped). A context that waits on MI_SEMAPHORE_WAIT holds its engine
   * until the wait is satisfied (there is no hang detection). While it executes, `executingOwner` is `owner`.
   */
  submitContext(cs: ContextSubmission): void;
}
