/**
 * One vGPU: the vfio device a VMM opens (VfioDeviceOps), mediating a guest graphics driver's access to its share of
 * the physical GPU. GVT-g's vgpu.c + kvmgt.c (the vfio side) + the submission half of scheduler.c, built from the
 * other modules of this folder: virtual config space (vconfig.ts), virtual registers (mmio.ts, irq.ts, pvinfo.ts),
 * the shadow GTT (gtt.ts), the command scanner (cmd-scanner.ts) and the shared scheduler (scheduler.ts).
 *
 * What the VMM sees (as kvmgt reports it): flags PCI | RESET; 9 regions: CONFIG (256 bytes), BAR0 (16 MiB: registers
 * below 2 MiB, the GTT window at 8 MiB), BAR2 (the vGPU's aperture), the others empty; irqs INTx, MSI, MSI-X (count
 * 0), ERR (EINVAL: conventional PCI), REQ. No region is mmap-able: every access is trapped and emulated. Accesses are
 * split as kvmgt's intel_vgpu_read/write: 8 bytes for an aligned GTT entry, else 4/2/1-byte aligned pieces.
 *
 * BAR0: registers (mmio.ts); the GTT window (gtt.ts: only 4- and 8-byte writes, EINVAL otherwise; reads return the
 * guest's entries); between 2 MiB and 8 MiB nothing: reads 0, writes dropped and counted.
 * BAR2 (aperture): **the size of the whole host aperture, as GVT-g makes it** (`bar2Size`, vconfig.ts): guest offset
 * X is graphics memory address X, the same address the guest's PVINFO names for its mappable range, so i915's
 * ballooning rules hold (m_base + m_size <= BAR2 size, non-mappable base >= BAR2 size). Only the vGPU's own aperture
 * partition answers: an access outside it fails with EINVAL, as kvmgt's intel_vgpu_aperture_rw refuses it (a
 * ballooned guest never makes one). Inside, it reaches memory the way the GPU's aperture would, through the vGPU's
 * shadow GTT, detiled by the guest's fence when one covers the address (tiling.ts: X or Y layout, the fence's pitch;
 * igt reads tiled buffers through such GTT mmaps): the page a shadow entry maps is read or written with vfio_dma_rw (the host driver offers no CPU
 * aperture path, and the page is pinned, so this is the very frame the shadow's IOVA translates to). A page whose
 * shadow is the scratch page reads zeros and drops writes (counted): the CPU never sees the scratch page's contents.
 * (The choice against a smaller BAR2: a BAR2 of the partition's size would need m_base + m_size <= its size, i.e.
 * the guest's addresses translated to the host's on every GTT write, command and register: GVT-g translates none.)
 *
 * Scratch page: each vGPU has its own (`scratch`), a zeroed page the parent allocates at create with the GPU's DMA
 * API (dma_alloc_coherent) and frees at release, after the partition is back on the host driver's scratch page.
 * Every entry of the partition that does not map a guest page points at it (gtt.ts), so what a guest's engines write
 * through a failed entry only that guest can read back. Its frame carries the owner tag the GPU's DMA API gives
 * every coherent allocation (0, the host kernel, as createGpu sets the GPU up: dma_alloc_coherent takes no
 * per-allocation tag), so an isolation checker attributes it to this vGPU by frame number, `scratch.pfn`.
 *
 * Two submission paths, one per engine at a time:
 * - execlists (what i915 uses on gen8+): GFX_MODE's RUN_LIST puts the engine in execlist mode; ELSP writes, workloads
 *   and context status events are the engine's `VirtualExeclist` (execlist.ts), executed by a
 *   `VirtualEngineBackend` (virtual-engine.ts): in production the vGPU's own `ExeclistBackend` (execlist-backend.ts),
 *   which shadows each guest context (its image, its PPGTT in `ppgtt`, its ring) and runs it on the GPU through the
 *   scheduler; tests inject another. The status page (HWS_PGA) is accepted only inside the vGPU's graphics memory.
 *   Enabling RUN_LIST or PPGTT before the guest ever read PVINFO sends the vGPU to failsafe (failsafe.ts), as GVT-g;
 *   so does a guest context whose commands the scanner rejects.
 * - the legacy ring path (this project's own guest driver), on engines the physical GPU has and not in execlist mode:
 * The guest programs RING_START/CTL/HEAD and writes RING_TAIL. On a TAIL write of an enabled ring the
 * dwords from the scan position (HEAD, or where the last scan ended) to TAIL are copied out of the guest's ring
 * (through its shadow GTT), audited and patched by the scanner, and queued with the scheduler; on completion RING_HEAD
 * (and ACTHD) advance to that TAIL and, if the stream had MI_USER_INTERRUPT, the guest's user interrupt is raised. A
 * rejected submission executes nothing: the reason is traced (vgpu.cmd.audit.reject), the error count rises, the
 * guest gets GT_CS_MASTER_ERROR_INTERRUPT, and HEAD moves past it (at once, or when the engine's earlier work has
 * completed) so the ring stays usable.
 *
 * PVINFO notifications (pvinfo.ts): any read of the page marks the guest PV-aware; g2v_notify L4/L3 create and
 * destroy keep the table of the guest's PPGTT roots (ppgtt-roots.ts: pdp[0] is the PML4) and shadow (and release) a
 * 4-level root at once, as GVT-g (shadow-ppgtt.ts); display_ready is traced; a write into rsv5 sends the vGPU to
 * failsafe.
 *
 * Resets, as GVT-g's intel_gvt_reset_vgpu_locked:
 * - GDRST (engine reset, dmlr = false): the named engines (RENDER, BLT, MEDIA, VECS; FULL for all) have their
 *   queued work dropped, their ring registers cleared and their virtual execlists emptied; a FULL reset also puts
 *   every register below the interrupt registers (0x44200) back to its reset value and leaves execlist mode, as
 *   GVT-g's intel_vgpu_reset_mmio(dmlr = false). Interrupts, fences, PVINFO state and the GTT stay (a guest's GGTT
 *   survives a GPU reset: i915 does not rewrite it afterwards). GDRST reads 0 at once: the reset is complete.
 * - VFIO_DEVICE_RESET (device-model-level reset): everything: queued work, every register (PVINFO rebuilt),
 *   interrupts, fences (physical ones zeroed), config space, the GTT (guest entries zeroed; every pin, IOVA and
 *   shadow entry released), every shadow PPGTT (its tables freed, its pins dropped), failsafe, the PV-aware mark and
 *   the PPGTT roots. Eventfds belong to the user session and stay.
 * - close (last fd): a device reset, then the eventfds and the vfio DMA access go and the vGPU leaves the run queue.
 * Work already on an engine cannot be recalled; it completes unseen (a generation number tells stale completions).
 * Releasing pins while such work is still being timed is safe here because the GPU model performs a submission's
 * memory accesses when it starts (src/gpu/engine.ts); GVT-g on hardware waits for the vGPU to go idle first. What
 * must wait is the partition: `dispose` reports when the vGPU's last workload has retired, and only then does the
 * parent return the partition to the host driver.
 *
 * Fences: guest fence i (< fence_num) is physical fence `resources.fences[i]`; a valid fence must cover only the
 * vGPU's graphics memory, else the physical fence is cleared and the write counted as dropped.
 *
 * VMM unmaps (`dmaUnmap`, type1's notification): the shadow PPGTT drops its references in the range first, then the
 * shadow GTT its own, so every gfn in the range is unpinned and DMA-unmapped before the callback returns.
 *
 * Invariants (`checkInvariants`): those of the shadow PPGTT and of the shadow GTT; a closed vGPU holds no pins (the
 * parent checks the scheduler).
 */
import {
  defineTraceEvents,
  Errno,
  type Gpa,
  gpa,
  hex,
  type Iova,
  iova,
  KernelError,
  PAGE_SIZE,
  type Tracer,
} from "../core/index.ts";
import {
  BAR0_SIZE,
  decodeFence,
  detile,
  ENGINE_BASE,
  type EngineId,
  type Fence,
  GEN6_GRDOM_FULL,
  type GpuResources,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_RENDER_USER_INTERRUPT,
  GTT_OFFSET,
  gen8PteDecode,
  type HostGpu,
  MMIO_SIZE,
  RING_ACTHD,
  RING_CTL,
  RING_HEAD,
  RING_HWS_PGA,
  RING_START,
  RING_TAIL,
  RING_VALID,
  ringCtlLength,
  type SubmissionResult,
  VGT_PVINFO_PAGE,
} from "../gpu/index.ts";
import type { CoherentBuffer, PciConfigSpace } from "../host/index.ts";
import {
  checkPciRegionIndex,
  EMULATED_PCI_DEVICE_INFO,
  gfnOfIova,
  iovaOfGpa,
  trappedRegionInfo,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  type VfioDeviceInfo,
  type VfioDeviceOps,
  type VfioDmaAccess,
  type VfioIrqInfo,
  type VfioIrqSet,
  type VfioRegionInfo,
  vfioPciRegionName,
} from "../vfio/index.ts";
import { CommandScanner, type ScanResult } from "./cmd-scanner.ts";
import { isPhysicalEngine, VENGINE_IDS, type VEngineId, VGPU_ENGINES, vengine } from "./engines.ts";
import { type ExeclistStats, VirtualExeclist } from "./execlist.ts";
import { ExeclistBackend, type ExeclistBackendStats } from "./execlist-backend.ts";
import { Failsafe, type FailsafeState } from "./failsafe.ts";
import { type GuestPageMapper, type PopulateError, ShadowGtt, type ShadowGttStats } from "./gtt.ts";
import { GFX_MODE_UNSUPPORTED, GFX_PPGTT_ENABLE, GFX_RUN_LIST_ENABLE, maskedEnables } from "./gvt-regs.ts";
import { VirtualIrq } from "./irq.ts";
import { type MmioSink, VgpuMmio } from "./mmio.ts";
import { GuestPpgttRoots } from "./ppgtt-roots.ts";
import {
  PVINFO_EXTRA,
  type PvinfoWriteAction,
  populatePvinfo,
  VGT_G2V_EXECLIST_CONTEXT_CREATE,
  VGT_G2V_EXECLIST_CONTEXT_DESTROY,
  VGT_G2V_PPGTT_L3_PAGE_TABLE_CREATE,
  VGT_G2V_PPGTT_L3_PAGE_TABLE_DESTROY,
  VGT_G2V_PPGTT_L4_PAGE_TABLE_CREATE,
  VGT_G2V_PPGTT_L4_PAGE_TABLE_DESTROY,
} from "./pvinfo.ts";
import type { GvtScheduler } from "./scheduler.ts";
import { type VgpuShadowObserver, VgpuShadows } from "./shadow-frames.ts";
import { ShadowPpgtt, type ShadowPpgttStats } from "./shadow-ppgtt.ts";
import type { GvtTypeSpec } from "./types.ts";
import { configRead, configWrite, createVgpuConfig, pieceSize, VGPU_CONFIG_SIZE } from "./vconfig.ts";
import type { VirtualEngineBackend } from "./virtual-engine.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.cmd.audit.reject": { vgpu: number; engine: string; reason: string };
    "vgpu.reset": { vgpu: number; kind: string; engines: readonly string[] };
    "vgpu.fence": { vgpu: number; fence: number; physical: number; lo: number; hi: number };
    "vgpu.open": { vgpu: number; uuid: string };
    "vgpu.close": { vgpu: number; uuid: string };
    "vgpu.pvinfo.notify": { vgpu: number; field: string; value: number; outcome: string };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.cmd.audit.reject": "vgpu{vgpu}: {engine} submission rejected as malicious: {reason}",
  "vgpu.reset": "vgpu{vgpu}: {kind} reset of {engines}",
  "vgpu.fence": "vgpu{vgpu}: guest fence {fence} -> physical fence {physical} = {hi}:{lo}",
  "vgpu.open": "vgpu{vgpu} ({uuid}): opened by a VMM",
  "vgpu.close": "vgpu{vgpu} ({uuid}): closed; every pin and mapping released",
  "vgpu.pvinfo.notify": "vgpu{vgpu}: PVINFO {field} = {value}: {outcome}",
});

const ENGINES: readonly EngineId[] = Object.keys(ENGINE_BASE) as EngineId[];
const _REGION_RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

/** Everything a vGPU counts (the brief's `stats()`). */
export interface VgpuStats extends ShadowGttStats {
  readonly id: number;
  readonly uuid: string;
  readonly type: string;
  readonly open: boolean;
  /** Submissions the command scanner rejected. */
  readonly rejectedCommands: number;
  readonly submittedWorkloads: number;
  readonly completedWorkloads: number;
  /** Engine time of its completed work (SubmissionResult.busyNs). */
  readonly busyNs: number;
  /** Time it owned the GPU (scheduler). */
  readonly scheduledNs: number;
  readonly slices: number;
  readonly droppedMmioWrites: number;
  /** Aperture (BAR2) accesses that found no guest page behind the shadow entry. */
  readonly apertureMisses: number;
  readonly interruptsDelivered: number;
  readonly interruptsSuppressed: number;
  /** MMIO accesses of registers the vendor driver does not track (plain storage). */
  readonly untrackedMmioReads: number;
  readonly untrackedMmioWrites: number;
  /** Whether the guest has read PVINFO (GVT-g's pv_notified). */
  readonly pvNotified: boolean;
  /** Why the vGPU is in failsafe, if it is. */
  readonly failsafe: FailsafeState | undefined;
  /** Guest PPGTT roots announced through g2v_notify and not destroyed. */
  readonly ppgttRoots: number;
  /** The virtual execlists, per engine. */
  readonly execlists: Readonly<Record<VEngineId, ExeclistStats>>;
  /** The shadow PPGTT of its guest contexts. */
  readonly ppgtt: ShadowPpgttStats;
  /** Guest contexts shadowed and run on the GPU (undefined with an injected backend, e.g. in tests). */
  readonly contexts: ExeclistBackendStats | undefined;
  /** Shadow buffers it holds now (rings, context images, batch copies, page tables). */
  readonly shadowBuffers: number;
}

export interface VgpuOptions {
  /** The vGPU id, 1..7 (0 is the idle vGPU). */
  readonly id: number;
  /** The mdev UUID, lower case: the vfio device name. */
  readonly uuid: string;
  readonly type: GvtTypeSpec;
  readonly resources: GpuResources;
  /**
   * BAR2's size: the host aperture (a power of two covering the partition and ending at or below its hidden range).
   * Default: the smallest power of two that covers the aperture partition (what a test without a host layout gets).
   */
  readonly bar2Size?: number;
  /**
   * What executes the virtual execlists' workloads. Default: the vGPU's own `ExeclistBackend`, which shadows each
   * guest context and runs it on the GPU (and keeps workloads pending, with a reason, on a host driver that submits
   * through legacy rings). Tests inject one that completes at once.
   */
  readonly backend?: VirtualEngineBackend;
  /** Where the vGPU reports its shadow buffers (an isolation checker; read at each report, so it may come later). */
  readonly shadowObserver?: () => VgpuShadowObserver | undefined;
  /** The vGPU's own scratch page: one page from `gpu.dma.allocCoherent`, owned (and freed) by the caller. */
  readonly scratch: CoherentBuffer;
  readonly gpu: HostGpu;
  readonly scheduler: GvtScheduler;
  readonly tracer: Tracer;
  /** TEST ONLY: the command scanner's address audit passes everything (see GvtParentOptions). */
  readonly unsafeSkipAddressAudit?: boolean;
  /** TEST ONLY: the shadow PPGTT copies guest PTEs unchecked (see GvtParentOptions). */
  readonly unsafeTrustGuestPtes?: boolean;
  /** How pinned guest pages get their DMA addresses (gtt.ts `GuestPageMapper`; default dma_map_page). */
  readonly guestPageMapper?: GuestPageMapper;
}

/** Per-engine submission state. */
interface RingState {
  /** Ring offset where the next scan starts. */
  scanPos: number;
  /** HEAD to set once the engine's earlier work is done (after a rejected submission); -1 for none. */
  headOnDrain: number;
  /** Bumped by every reset of the engine: completions of older work change nothing. */
  generation: number;
}

export class Vgpu implements VfioDeviceOps {
  readonly name: string;
  readonly id: number;
  readonly type: GvtTypeSpec;
  readonly resources: GpuResources;
  /**
   * The vGPU's own scratch page (frame and IOVA): where every GGTT entry of its partition that maps no guest page
   * points. Only this vGPU's work may touch it.
   */
  readonly scratch: CoherentBuffer;
  readonly config: PciConfigSpace;
  readonly gtt: ShadowGtt;
  readonly irq: VirtualIrq;
  readonly mmio: VgpuMmio;
  /** BAR2's size in bytes (the host aperture). */
  readonly bar2Size: number;
  readonly failsafe: Failsafe;
  /** The guest's PPGTT roots (g2v_notify). */
  readonly ppgttRoots: GuestPpgttRoots;
  /** The virtual execlists, per engine. */
  readonly execlists: ReadonlyMap<VEngineId, VirtualExeclist>;
  /** The shadow PPGTT of its guest contexts. */
  readonly ppgtt: ShadowPpgtt;
  /** Its shadow buffers. */
  readonly shadows: VgpuShadows;
  /** GVT-g's pv_notified: the guest has read PVINFO since the last device reset. */
  private pvNotified = false;
  private readonly gpu: HostGpu;
  private readonly scheduler: GvtScheduler;
  private readonly tracer: Tracer;
  private readonly scanner: CommandScanner;
  private readonly contextBackend: ExeclistBackend | undefined;
  private readonly rings = new Map<EngineId, RingState>();
  private dma: VfioDmaAccess | undefined;
  private live = true;
  private rejected = 0;
  private apertureMisses = 0;
  /** The guest's valid fences as last accepted (index = guest fence): aperture accesses they cover are detiled. */
  private readonly fences: (Fence | undefined)[] = [];
  /** Workloads queued with the scheduler and not yet retired. */
  private outstanding = 0;
  /** Set by `dispose` while work is still on an engine: called when the last of it retires. */
  private onIdle: (() => void) | undefined;

  constructor(opts: VgpuOptions) {
    this.id = opts.id;
    this.name = opts.uuid;
    this.type = opts.type;
    this.resources = opts.resources;
    this.scratch = opts.scratch;
    this.gpu = opts.gpu;
    this.scheduler = opts.scheduler;
    this.tracer = opts.tracer;
    const apEnd = opts.resources.aperture.base + opts.resources.aperture.size;
    this.bar2Size = opts.bar2Size ?? 2 ** Math.ceil(Math.log2(apEnd));
    if (this.bar2Size < apEnd || 2 ** Math.round(Math.log2(this.bar2Size)) !== this.bar2Size) {
      throw new KernelError(
        Errno.EINVAL,
        `vgpu${opts.id}: BAR2 of ${hex(this.bar2Size)} bytes must be a power of two covering the aperture partition ` +
          `[${hex(opts.resources.aperture.base)}, ${hex(apEnd)})`,
      );
    }
    this.config = createVgpuConfig(this.bar2Size);
    this.failsafe = new Failsafe(opts.id, opts.tracer);
    this.ppgttRoots = new GuestPpgttRoots(opts.id, opts.tracer);
    this.gtt = new ShadowGtt({
      vgpuId: this.id,
      gpu: this.gpu,
      resources: this.resources,
      scratch: this.scratch.dmaAddr,
      tracer: this.tracer,
      ...(opts.guestPageMapper !== undefined ? { mapper: opts.guestPageMapper } : {}),
    });
    this.irq = new VirtualIrq(this.id, this.config, this.tracer);
    const sink: MmioSink = {
      inFailsafe: () => this.failsafe.active,
      ringWritten: (engine, reg) => this.ringWritten(engine, reg),
      gdrst: (domains) => this.gdrst(domains),
      fenceWritten: (fence, lo, hi) => this.fenceWritten(fence, lo, hi),
      pvinfoRead: () => {
        this.pvNotified = true;
      },
      pvinfoWritten: (field, action, value) => this.pvinfoWritten(field, action, value),
      gfxModeWritten: (engine, value) => this.gfxModeWritten(engine, value),
      hwsPgaWritten: (engine, value) => this.hwsPgaWritten(engine, value),
      elspWritten: (engine, value) => this.execlists.get(engine)!.elspWrite(value),
      engineIdle: (engine) => this.engineIdle(engine),
    };
    this.mmio = new VgpuMmio({
      vgpuId: this.id,
      fenceNum: this.resources.fences.length,
      irq: this.irq,
      sink,
      tracer: this.tracer,
    });
    populatePvinfo(this.mmio.vreg, this.id, this.resources);
    const observer = opts.shadowObserver ?? (() => undefined);
    this.shadows = new VgpuShadows(this.id, (size) => this.gpu.allocShadow(size), observer);
    this.scanner = new CommandScanner({
      memory: {
        inPartition: opts.unsafeSkipAddressAudit ? () => true : (gma, len) => this.gtt.inPartition(gma, len),
        readGm: (gma, dst) => this.gtt.readGm(gma, dst),
        describe: () => this.describePartition(),
      },
      allocShadow: (size) => this.shadows.alloc("batch", size),
      freeShadow: (b) => this.shadows.free(b),
      tracer: this.tracer,
      vgpuId: this.id,
    });
    this.ppgtt = new ShadowPpgtt({
      vgpuId: this.id,
      tracer: this.tracer,
      readGuest: (at, into) => this.readGuest(at, into),
      pinGuestPage: (g) => this.gtt.pinGuestPage(g),
      unpinGuestPage: (g, why) => this.gtt.unpinGuestPage(g, why),
      allocTable: () => {
        const b = this.shadows.alloc("ppgtt table", PAGE_SIZE);
        return {
          // The host driver maps a shadow buffer into its GGTT: the entry holds the page's DMA address.
          dmaAddr: iova(gen8PteDecode(this.gpu.readGgtt(b.gma / PAGE_SIZE))),
          write: (offset, data) => b.write(offset, data),
          read: (offset, into) => b.read(offset, into),
          free: () => this.shadows.free(b),
        };
      },
      scratch: this.scratch.dmaAddr,
      ...(opts.unsafeTrustGuestPtes ? { unsafeTrustGuestPtes: true } : {}),
    });
    let backend = opts.backend;
    if (backend === undefined) {
      const gm = {
        inPartition: (gma: number, len: number) => this.gtt.inPartition(gma, len),
        readGm: (gma: number, dst: Uint8Array) => this.gtt.readGm(gma, dst),
        writeGm: (gma: number, src: Uint8Array) => this.gtt.writeGm(gma, src),
        describe: () => this.describePartition(),
      };
      this.contextBackend = new ExeclistBackend({
        vgpuId: this.id,
        gpu: this.gpu,
        scheduler: this.scheduler,
        tracer: this.tracer,
        memory: opts.unsafeSkipAddressAudit ? { ...gm, inPartition: () => true } : gm,
        readGuest: (at, into) => this.readGuest(at, into),
        ppgtt: this.ppgtt,
        scanner: this.scanner,
        shadows: this.shadows,
        onGuestError: (reason) =>
          this.failsafe.enter("guest-error", `the command scanner rejected a guest context's command: ${reason}`),
        setRingRegisters: (engine, head, tail) => {
          const base = vengine(engine).base;
          this.mmio.vreg[(base + RING_HEAD) / 4] = head >>> 0;
          this.mmio.vreg[(base + RING_TAIL) / 4] = tail >>> 0;
        },
        hold: () => {
          this.outstanding++;
        },
        unhold: () => this.workRetired(),
      });
      backend = this.contextBackend;
    }
    const execlists = new Map<VEngineId, VirtualExeclist>();
    for (const e of VGPU_ENGINES) {
      execlists.set(
        e.id,
        new VirtualExeclist({
          vgpuId: this.id,
          engine: e,
          vreg: this.mmio.vreg,
          backend,
          tracer: this.tracer,
          hwsPga: () => this.mmio.vreg[(e.base + RING_HWS_PGA) / 4]!,
          writeGuestGgtt: (gma, data) => this.gtt.writeGuestGgtt(gma, data),
          raise: (bits, event) => this.irq.raise(e.id, bits, event),
        }),
      );
    }
    this.execlists = execlists;
    for (const e of ENGINES) this.rings.set(e, { scanPos: 0, headOnDrain: -1, generation: 0 });
    this.scheduler.add(this.id, this.type.weight);
    this.zeroFences();
  }

  get isOpen(): boolean {
    return this.dma !== undefined;
  }

  // ---- VfioDeviceOps: identity -------------------------------------------------------------------------------------

  info(): VfioDeviceInfo {
    return EMULATED_PCI_DEVICE_INFO;
  }

  regionInfo(index: number): VfioRegionInfo {
    const name = `vgpu${this.id} ${this.name}`;
    checkPciRegionIndex(name, index);
    return trappedRegionInfo(name, index, this.regionSize(index));
  }

  irqInfo(index: number): VfioIrqInfo {
    return this.irq.info(index);
  }

  setIrqs(set: VfioIrqSet): void {
    this.checkLive("SET_IRQS");
    this.irq.setIrqs(set);
  }

  // ---- VfioDeviceOps: lifecycle ------------------------------------------------------------------------------------

  open(dma: VfioDmaAccess | undefined): void {
    this.checkLive("open");
    if (dma === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `vgpu${this.id} ${this.name}: a vGPU must be opened through an emulated-IOMMU group (no vfio DMA access given)`,
      );
    }
    this.dma = dma;
    this.gtt.attach(dma);
    this.scheduler.activate(this.id);
    if (this.tracer.enabled) this.tracer.emit("vgpu.open", { vgpu: this.id, uuid: this.name });
  }

  close(): void {
    if (this.dma === undefined) return;
    this.scheduler.deactivate(this.id);
    this.deviceReset("close");
    this.irq.releaseTriggers();
    this.gtt.attach(undefined);
    // What this VMM wrote through failed GGTT entries must not reach the next VMM to open this vGPU.
    this.gpu.zeroPage(this.scratch.pfn);
    this.dma = undefined;
    if (this.tracer.enabled) this.tracer.emit("vgpu.close", { vgpu: this.id, uuid: this.name });
  }

  reset(): void {
    this.checkLive("reset");
    this.deviceReset("VFIO_DEVICE_RESET");
  }

  dmaUnmap(at: Iova, length: number): void {
    // The shadow PPGTT's references first: the shadow GTT then finds only its own left in the range.
    this.ppgtt.dmaUnmap(gfnOfIova(at), gfnOfIova((at + length - 1) as Iova));
    this.gtt.dmaUnmap(at, length);
  }

  /**
   * Called by the parent on destroy: releases everything; later accesses fail with ENODEV. `onIdle` runs once no work
   * of this vGPU remains on an engine (at once, or when the last in-flight workload completes): only then may its
   * partition go to another vGPU, or stale work could write into the newcomer's memory.
   */
  dispose(onIdle: () => void): void {
    if (!this.live) return;
    this.close();
    this.ppgtt.reset();
    this.gtt.reset();
    this.zeroFences();
    this.scheduler.remove(this.id);
    this.live = false;
    if (this.outstanding === 0) onIdle();
    else this.onIdle = onIdle;
  }

  /** Workloads of this vGPU queued or on an engine. */
  get workOutstanding(): number {
    return this.outstanding;
  }

  // ---- VfioDeviceOps: regions -----------------------------------------------------------------------------------

  regionRead(index: number, offset: number, buf: Uint8Array): number {
    this.checkAccess(index, offset, buf.length);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return configRead(this.config, offset, buf);
    if (index === VFIO_PCI_BAR2_REGION_INDEX) return this.apertureAccess(offset, buf, false);
    const len = buf.length;
    for (let done = 0, pos = offset; done < len; ) {
      if (pos >= GTT_OFFSET && len - done >= 8 && pos % 8 === 0) {
        const index8 = (pos - GTT_OFFSET) / 8;
        putLe(buf, done, 4, this.gtt.readHalf(index8, 0));
        putLe(buf, done + 4, 4, this.gtt.readHalf(index8, 1));
        done += 8;
        pos += 8;
        continue;
      }
      const size = pieceSize(pos, len - done);
      putLe(buf, done, size, this.bar0Read(pos, size));
      done += size;
      pos += size;
    }
    return len;
  }

  regionWrite(index: number, offset: number, buf: Uint8Array): number {
    this.checkAccess(index, offset, buf.length);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return configWrite(this.config, offset, buf);
    if (index === VFIO_PCI_BAR2_REGION_INDEX) return this.apertureAccess(offset, buf, true);
    const len = buf.length;
    for (let done = 0, pos = offset; done < len; ) {
      if (pos >= GTT_OFFSET && len - done >= 8 && pos % 8 === 0) {
        this.gtt.write(pos - GTT_OFFSET, 8, getLe(buf, done, 4), getLe(buf, done + 4, 4));
        done += 8;
        pos += 8;
        continue;
      }
      const size = pieceSize(pos, len - done);
      const value = getLe(buf, done, size);
      if (pos < MMIO_SIZE) this.mmio.write(pos, size, value);
      else if (pos >= GTT_OFFSET) this.gtt.write(pos - GTT_OFFSET, size, value, 0);
      else this.mmio.dropUnknown(pos, value);
      done += size;
      pos += size;
    }
    return len;
  }

  // ---- inspection --------------------------------------------------------------------------------------------------

  stats(): VgpuStats {
    const s = this.scheduler.stats(this.id);
    const m = this.mmio.stats();
    return {
      id: this.id,
      uuid: this.name,
      type: this.type.id,
      open: this.isOpen,
      ...this.gtt.stats(),
      rejectedCommands: this.rejected,
      submittedWorkloads: s.submitted,
      completedWorkloads: s.completed,
      busyNs: s.busyNs,
      scheduledNs: s.scheduledNs,
      slices: s.slices,
      droppedMmioWrites: m.droppedWrites,
      apertureMisses: this.apertureMisses,
      interruptsDelivered: this.irq.delivered,
      interruptsSuppressed: this.irq.suppressed,
      untrackedMmioReads: m.untrackedReads,
      untrackedMmioWrites: m.untrackedWrites,
      pvNotified: this.pvNotified,
      failsafe: this.failsafe.state,
      ppgttRoots: this.ppgttRoots.size,
      execlists: Object.fromEntries(VENGINE_IDS.map((e) => [e, this.execlists.get(e)!.stats()])) as Record<
        VEngineId,
        ExeclistStats
      >,
      ppgtt: this.ppgtt.stats(),
      contexts: this.contextBackend?.stats(),
      shadowBuffers: this.shadows.count,
    };
  }

  /**
   * Why the vendor driver last failed to populate one of this vGPU's GTT entries (errno, sentence, the failing call,
   * entry and guest page), or undefined if it never did. `stats().scratchFallbacks` counts every such failure.
   */
  get lastPopulateError(): PopulateError | undefined {
    return this.gtt.lastError;
  }

  /**
   * The GTT entries this vGPU failed to populate since `mark` (a `stats().scratchFallbacks` taken before the guest
   * wrote them) as one error value: undefined when none failed; else a KernelError with the errno of the last
   * failure and a sentence with the count and that failure's own sentence, `detail` { count, step, index, gfn }.
   * What a caller reports after a step that made a guest write GTT entries (a host limit met inside the vendor
   * driver: RLIMIT_MEMLOCK, IOVA space, host memory).
   */
  populateFailuresSince(mark: number): KernelError | undefined {
    const count = this.gtt.stats().scratchFallbacks - mark;
    const last = this.gtt.lastError;
    if (count <= 0 || last === undefined) return undefined;
    const message =
      count === 1
        ? last.message
        : `${count} GTT entries of vgpu${this.id} point at its scratch page; the last: ${last.message}`;
    return new KernelError(last.errno, message, { count, step: last.step, index: last.index, gfn: last.gfn });
  }

  checkInvariants(): void {
    this.ppgtt.checkInvariants();
    this.gtt.checkInvariants();
    if (!this.isOpen && this.gtt.cache.size > 0) {
      throw new Error(`vgpu${this.id}: closed but ${this.gtt.cache.size} guest pages are still pinned`);
    }
  }

  // ---- BAR0 and BAR2 ---------------------------------------------------------------------------------------------

  private bar0Read(pos: number, size: number): number {
    if (pos < MMIO_SIZE) return this.mmio.read(pos, size);
    if (pos < GTT_OFFSET) {
      this.mmio.unknownRead();
      return 0;
    }
    const off = pos - GTT_OFFSET;
    const dw = this.gtt.readHalf(Math.floor(off / 8), Math.floor((off % 8) / 4));
    const shift = (off % 4) * 8;
    return size === 4 ? dw : (dw >>> shift) & (size === 2 ? 0xffff : 0xff);
  }

  private apertureAccess(offset: number, buf: Uint8Array, write: boolean): number {
    const { aperture } = this.resources;
    const base = offset;
    const len = buf.length;
    if (base < aperture.base || base + len > aperture.base + aperture.size) {
      throw new KernelError(
        Errno.EINVAL,
        `vgpu${this.id} ${this.name}: BAR2 access [${hex(base)}, ${hex(base + len)}) lies outside the vGPU's aperture ` +
          `[${hex(aperture.base)}, ${hex(aperture.base + aperture.size)}); only its own partition of the host aperture answers`,
      );
    }
    for (let done = 0; done < len; ) {
      const linear = base + done;
      // A fence covering the address detiles it, as the aperture's fence hardware does (fences are page-aligned, so
      // a page is wholly inside or outside one); the run never leaves one GM page.
      let gma = linear;
      let n = Math.min(len - done, PAGE_SIZE - (linear % PAGE_SIZE));
      const fence = this.fenceAt(linear);
      if (fence !== undefined) {
        const d = detile(fence, linear, n);
        gma = d.at;
        n = Math.min(d.run, PAGE_SIZE - (gma % PAGE_SIZE));
      }
      const piece = buf.subarray(done, done + n);
      const bad = write ? this.gtt.writeGm(gma, piece) : this.gtt.readGm(gma, piece);
      if (bad >= 0) {
        this.apertureMisses++;
        if (!write) piece.fill(0);
      }
      done += n;
    }
    return len;
  }

  // ---- ring submission -------------------------------------------------------------------------------------------

  private reg(engine: EngineId, reg: number): number {
    return this.mmio.vreg[(ENGINE_BASE[engine] + reg) / 4]!;
  }

  private setReg(engine: EngineId, reg: number, v: number): void {
    this.mmio.vreg[(ENGINE_BASE[engine] + reg) / 4] = v >>> 0;
  }

  private ringWritten(vengineId: VEngineId, reg: number): void {
    // The legacy path runs only on engines the physical GPU has, and not once the engine is in execlist mode.
    if (!isPhysicalEngine(vengineId) || this.execlists.get(vengineId)!.enabled) return;
    const engine: EngineId = vengineId;
    const ring = this.rings.get(engine)!;
    switch (reg) {
      case RING_TAIL:
        this.submit(engine, ring);
        return;
      case RING_HEAD:
      case RING_START:
      case RING_CTL:
        // (Re)programming the ring while the engine is idle moves the scan position to HEAD.
        if (this.scheduler.outstanding(this.id, engine) === 0) {
          ring.scanPos = this.reg(engine, RING_HEAD);
          ring.headOnDrain = -1;
        }
        return;
      default:
        return;
    }
  }

  /** A TAIL write: copy, audit and queue the new part of the ring. */
  private submit(engine: EngineId, ring: RingState): void {
    const ctl = this.reg(engine, RING_CTL);
    if ((ctl & RING_VALID) === 0) return;
    const start = this.reg(engine, RING_START);
    const len = ringCtlLength(ctl);
    const tail = this.reg(engine, RING_TAIL);
    const from = ring.scanPos;
    if (tail === from) return;
    if (!this.gpu.engines.includes(engine)) {
      this.reject(engine, ring, tail, `the physical GPU has no ${engine} engine`);
      return;
    }
    if (!this.gtt.inPartition(start, len)) {
      this.reject(engine, ring, tail, `ring buffer [${hex(start)}, ${hex(start + len)}) is outside the vGPU's memory`);
      return;
    }
    if (tail >= len || from >= len) {
      this.reject(engine, ring, tail, `TAIL ${hex(tail)} or HEAD ${hex(from)} is beyond the ${len}-byte ring`);
      return;
    }
    const bytes = (tail - from + len) % len;
    const copy = new Uint32Array(bytes / 4);
    const raw = new Uint8Array(copy.buffer);
    const first = Math.min(bytes, len - from);
    let bad = this.gtt.readGm(start + from, raw.subarray(0, first));
    if (bad < 0 && first < bytes) bad = this.gtt.readGm(start, raw.subarray(first));
    if (bad >= 0) {
      this.reject(engine, ring, tail, `ring page at GMA ${hex(bad)} is not backed by guest memory (scratch page)`);
      return;
    }
    const r = this.scanner.scan(engine, copy, from);
    if (!r.ok) {
      this.reject(engine, ring, tail, r.reason);
      return;
    }
    ring.scanPos = tail;
    const generation = ring.generation;
    this.outstanding++;
    this.scheduler.enqueue({
      vgpuId: this.id,
      engine,
      commands: r.commands,
      retire: (result: SubmissionResult | undefined) => this.retire(engine, generation, tail, r, result),
    });
  }

  private retire(
    engine: EngineId,
    generation: number,
    tail: number,
    scan: Extract<ScanResult, { ok: true }>,
    result: SubmissionResult | undefined,
  ): void {
    for (const s of scan.shadows) this.shadows.free(s);
    this.workRetired();
    if (!this.live) return;
    const ring = this.rings.get(engine)!;
    if (result === undefined || ring.generation !== generation) return;
    this.setHead(engine, tail);
    if (ring.headOnDrain >= 0 && this.scheduler.outstanding(this.id, engine) === 0) {
      this.setHead(engine, ring.headOnDrain);
      ring.headOnDrain = -1;
    }
    if (result.error !== undefined) {
      this.irq.raise(engine, GT_CS_MASTER_ERROR_INTERRUPT, `${engine} engine error: ${result.error}`);
    }
    // The engine's count: it executed what the scanner counted, unless it stopped early.
    if (result.userInterrupts > 0) {
      this.irq.raise(engine, GT_RENDER_USER_INTERRUPT, `${engine} user interrupt`);
    }
  }

  /** One workload (legacy or context) no longer holds the partition; the last one after `dispose` releases it. */
  private workRetired(): void {
    this.outstanding--;
    if (!this.live && this.outstanding === 0 && this.onIdle !== undefined) {
      const idle = this.onIdle;
      this.onIdle = undefined;
      idle();
    }
  }

  /** vfio_dma_rw of guest memory at `at` (a GPA: IOVA = GPA, vfio emulated-iova.ts); throws KernelError. */
  private readGuest(at: Gpa, into: Uint8Array): void {
    const dma = this.dma;
    if (dma === undefined) throw new KernelError(Errno.EINVAL, `vgpu${this.id}: no VMM has the vGPU open`);
    dma.dmaRw(iovaOfGpa(at), into, false);
  }

  private reject(engine: EngineId, ring: RingState, tail: number, reason: string): void {
    this.rejected++;
    ring.scanPos = tail;
    if (this.scheduler.outstanding(this.id, engine) === 0) this.setHead(engine, tail);
    else ring.headOnDrain = tail;
    if (this.tracer.enabled) this.tracer.emit("vgpu.cmd.audit.reject", { vgpu: this.id, engine, reason });
    this.irq.raise(engine, GT_CS_MASTER_ERROR_INTERRUPT, `${engine} command rejected`);
  }

  private setHead(engine: EngineId, head: number): void {
    this.setReg(engine, RING_HEAD, head);
    this.setReg(engine, RING_ACTHD, this.reg(engine, RING_START) + head);
  }

  // ---- resets and fences -------------------------------------------------------------------------------------------

  private gdrst(domains: number): void {
    const full = (domains & GEN6_GRDOM_FULL) !== 0;
    const engines = full ? VENGINE_IDS : VGPU_ENGINES.filter((e) => (domains & e.gdrstDomain) !== 0).map((e) => e.id);
    if (engines.length === 0) return;
    if (full) this.mmio.resetGpuRange();
    for (const e of engines) this.resetEngine(e, full);
    if (this.tracer.enabled) {
      this.tracer.emit("vgpu.reset", { vgpu: this.id, kind: full ? "GDRST (full)" : "GDRST", engines });
    }
  }

  /** Resets one engine's submission state; `leaveExeclistMode` for a full GPU or device reset. */
  private resetEngine(engine: VEngineId, leaveExeclistMode: boolean): void {
    this.execlists.get(engine)!.reset(leaveExeclistMode);
    this.mmio.resetEngine(engine);
    this.scheduler.drop(this.id, engine);
    if (!isPhysicalEngine(engine)) return;
    const ring = this.rings.get(engine);
    if (ring === undefined) return;
    ring.scanPos = 0;
    ring.headOnDrain = -1;
    ring.generation++;
  }

  /** Whether `engine` has no work queued, pending or running (MI_MODE's MODE_IDLE). */
  private engineIdle(engine: VEngineId): boolean {
    if (!this.execlists.get(engine)!.idle) return false;
    return !isPhysicalEngine(engine) || this.scheduler.outstanding(this.id, engine) === 0;
  }

  // ---- execlists, PVINFO ---------------------------------------------------------------------------------------

  /** ring_mode_mmio_write: GFX_MODE of `engine` written with the masked `value`. */
  private gfxModeWritten(engine: VEngineId, value: number): void {
    const name = vengine(engine).i915Name;
    if (maskedEnables(value, GFX_MODE_UNSUPPORTED)) {
      this.failsafe.enter("unsupported-guest", `GFX_MODE of ${name} enabled bit 0, which the vGPU does not support`);
      return;
    }
    const runList = maskedEnables(value, GFX_RUN_LIST_ENABLE);
    if ((runList || maskedEnables(value, GFX_PPGTT_ENABLE)) && !this.pvNotified) {
      this.failsafe.enter(
        "unsupported-guest",
        `GFX_MODE of ${name} enabled ${runList ? "RUN_LIST (execlists)" : "PPGTT"} before the guest read PVINFO: ` +
          "a driver that does not know it runs on a vGPU",
      );
      return;
    }
    // A masked disable of RUN_LIST changes only the register: GVT-g keeps the execlist submission selected.
    if (runList) this.execlists.get(engine)!.enable();
  }

  /** hws_pga_write: a status page must be a page of the vGPU's graphics memory (0 unsets it). */
  private hwsPgaWritten(engine: VEngineId, value: number): string | undefined {
    if (value === 0 || this.gtt.inPartition(value, PAGE_SIZE)) return undefined;
    return (
      `${vengine(engine).i915Name} status page ${hex(value)} is outside the vGPU's graphics memory ` +
      `(${this.describePartition()})`
    );
  }

  /** pvinfo_mmio_write's effects: display_ready, g2v_notify, rsv5. */
  private pvinfoWritten(field: string, action: PvinfoWriteAction, value: number): void {
    let outcome: string;
    switch (action) {
      case "display-ready":
        outcome = value !== 0 ? "the guest's display is ready" : "the guest's display is not ready";
        break;
      case "g2v":
        outcome = this.g2v(value);
        break;
      case "failsafe":
        this.failsafe.enter(
          "insufficient-resource",
          `the guest wrote PVINFO ${field}: its driver found the vGPU's resources insufficient`,
        );
        outcome = "failsafe";
        break;
      default:
        return;
    }
    if (this.tracer.enabled) this.tracer.emit("vgpu.pvinfo.notify", { vgpu: this.id, field, value, outcome });
  }

  /** handle_g2v_notification. */
  private g2v(notification: number): string {
    const pdp = (i: number) => {
      const lo = this.mmio.vreg[(VGT_PVINFO_PAGE + PVINFO_EXTRA.pdp + 8 * i) / 4]!;
      const hi = this.mmio.vreg[(VGT_PVINFO_PAGE + PVINFO_EXTRA.pdp + 8 * i + 4) / 4]!;
      return hi * 2 ** 32 + lo;
    };
    const pdps = [0, 1, 2, 3].map(pdp);
    switch (notification) {
      case VGT_G2V_PPGTT_L4_PAGE_TABLE_CREATE:
      case VGT_G2V_PPGTT_L3_PAGE_TABLE_CREATE: {
        const levels = notification === VGT_G2V_PPGTT_L4_PAGE_TABLE_CREATE ? 4 : 3;
        const r = this.ppgttRoots.create(levels, pdps);
        const recorded = `${levels}-level PPGTT root ${r.pdps.map((p) => hex(p)).join(", ")} recorded`;
        // GVT-g shadows a 4-level space when it is announced; a 3-level one no context of this GPU can use.
        if (levels === 3) return recorded;
        const err = this.ppgtt.announce(gpa(pdps[0]!));
        return err === undefined ? `${recorded} and shadowed` : `${recorded}; not shadowed yet: ${err.message}`;
      }
      case VGT_G2V_PPGTT_L4_PAGE_TABLE_DESTROY:
      case VGT_G2V_PPGTT_L3_PAGE_TABLE_DESTROY: {
        const levels = notification === VGT_G2V_PPGTT_L4_PAGE_TABLE_DESTROY ? 4 : 3;
        const err = this.ppgttRoots.destroy(levels, pdps);
        if (err === undefined && levels === 4) this.ppgtt.unannounce(gpa(pdps[0]!));
        return err === undefined ? `${levels}-level PPGTT root ${hex(pdps[0]!)} released` : err.message;
      }
      case VGT_G2V_EXECLIST_CONTEXT_CREATE:
      case VGT_G2V_EXECLIST_CONTEXT_DESTROY:
      case 1:
        return "ignored (as GVT-g)";
      default:
        return `invalid PV notification ${notification}`;
    }
  }

  private describePartition(): string {
    const { aperture, hidden } = this.resources;
    return (
      `aperture [${hex(aperture.base)}, ${hex(aperture.base + aperture.size)}), hidden [${hex(hidden.base)}, ` +
      `${hex(hidden.base + hidden.size)})`
    );
  }

  /** The device-model-level reset (VFIO_DEVICE_RESET, close). */
  private deviceReset(kind: string): void {
    for (const e of VENGINE_IDS) this.resetEngine(e, true);
    this.ppgtt.reset();
    this.gtt.reset();
    this.mmio.resetAll();
    populatePvinfo(this.mmio.vreg, this.id, this.resources);
    this.irq.reset();
    this.zeroFences();
    this.config.reset();
    this.failsafe.clear();
    this.pvNotified = false;
    this.ppgttRoots.clear();
    if (this.tracer.enabled) this.tracer.emit("vgpu.reset", { vgpu: this.id, kind, engines: VENGINE_IDS });
  }

  private fenceWritten(fence: number, lo: number, hi: number): string | undefined {
    const physical = this.resources.fences[fence]!;
    if ((lo & 1) !== 0) {
      // gen6 fence: start page in lo bits 12..31, last page in hi bits 12..31.
      const startGma = lo - (lo % PAGE_SIZE);
      const endGma = hi - (hi % PAGE_SIZE) + PAGE_SIZE;
      if (endGma <= startGma || !this.gtt.inPartition(startGma, endGma - startGma)) {
        this.gpu.writeFence(physical, 0);
        this.fences[fence] = undefined;
        return `fence ${fence} covers [${hex(startGma)}, ${hex(endGma)}), outside the vGPU's graphics memory`;
      }
    }
    this.gpu.writeFenceHalves(physical, lo, hi);
    this.fences[fence] = decodeFence(lo, hi);
    if (this.tracer.enabled) this.tracer.emit("vgpu.fence", { vgpu: this.id, fence, physical, lo, hi });
    return undefined;
  }

  private zeroFences(): void {
    for (const f of this.resources.fences) this.gpu.writeFence(f, 0);
    this.fences.length = 0;
  }

  /** The guest fence whose range holds graphics memory address `gma`, if any. */
  private fenceAt(gma: number): Fence | undefined {
    for (const f of this.fences) {
      if (f !== undefined && gma >= f.start && gma < f.end) return f;
    }
    return undefined;
  }

  // ---- checks ------------------------------------------------------------------------------------------------------

  private regionSize(index: number): number {
    switch (index) {
      case VFIO_PCI_CONFIG_REGION_INDEX:
        return VGPU_CONFIG_SIZE;
      case VFIO_PCI_BAR0_REGION_INDEX:
        return BAR0_SIZE;
      case VFIO_PCI_BAR2_REGION_INDEX:
        return this.bar2Size;
      default:
        return 0;
    }
  }

  private checkAccess(index: number, offset: number, len: number): void {
    this.checkLive("region access");
    const size = Number.isInteger(index) && index >= 0 && index < VFIO_PCI_NUM_REGIONS ? this.regionSize(index) : 0;
    if (size === 0) {
      throw new KernelError(
        Errno.EINVAL,
        `vgpu${this.id} ${this.name}: region ${index} (${vfioPciRegionName(index)}) is empty; the vGPU has CONFIG, BAR0 and BAR2`,
      );
    }
    if (!Number.isInteger(offset) || offset < 0 || offset + len > size) {
      throw new KernelError(
        Errno.EINVAL,
        `vgpu${this.id} ${this.name}: access [${hex(offset)}, ${hex(offset + len)}) runs past ${vfioPciRegionName(index)}'s ${size} bytes`,
      );
    }
  }

  private checkLive(what: string): void {
    if (!this.live)
      throw new KernelError(Errno.ENODEV, `vgpu${this.id} ${this.name}: ${what} after the vGPU was destroyed`);
  }
}

/** Little-endian value of `size` bytes of `buf` at `at`. */
function getLe(buf: Uint8Array, at: number, size: number): number {
  let v = 0;
  for (let k = size - 1; k >= 0; k--) v = v * 256 + buf[at + k]!;
  return v >>> 0;
}

function putLe(buf: Uint8Array, at: number, size: number, v: number): void {
  for (let k = 0; k < size; k++) buf[at + k] = (v >>> (8 * k)) & 0xff;
}
