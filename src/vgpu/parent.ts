/**
 * The GVT-g parent: the physical GPU as an mdev parent device (kvmgt's mdev_parent_ops / intel_vgpu_ops). It lists
 * the vGPU types that still fit, answers available_instances from the host driver's capacity, and creates and
 * destroys vGPUs: a vGPU id (1..7), a partition of graphics memory and fences from the host driver
 * (`HostGpu.allocResources`), a scratch page of the vGPU's own (dma_alloc_coherent through the host driver's DMA
 * API, `HostGpu.dma`), the vGPU device itself (which points its whole partition at that scratch page), and its place
 * in the shared scheduler.
 *
 * Names as Linux shows them: parent = the GPU's PCI address, driver "i915", types `i915-GVTg_V5_<n>`, and each vGPU
 * device has the vendor attribute `intel_vgpu/vgpu_id`.
 *
 * Destroy releases everything the vGPU held: its pins and IOVAs at once (the vGPU's own teardown), then its partition,
 * fences and id, as soon as none of its work remains on an engine (at once when idle; else when the last workload
 * completes: the partition must not reach another vGPU while stale work could still write through it). The scratch
 * page goes last: `freeResources` has pointed the partition back at the host driver's scratch page, so no GGTT entry
 * names the page when it is freed. Afterwards the host driver's capacity, its DMA mappings and the pin counts are
 * back where they were. Invariant: ids in use = live vGPUs + draining ones, at most 7; the scratch pages of live and
 * draining vGPUs are distinct.
 */
import { defineTraceEvents, Errno, KernelError, PAGE_SIZE, type SchedulingClock, type Tracer } from "../core/index.ts";
import { type GpuResources, HOST_APERTURE_RESERVED, type HostGpu } from "../gpu/index.ts";
import type { CoherentBuffer } from "../host/index.ts";
import type { MdevAvailability, MdevDeviceInstance, MdevParentDriver } from "../mdev/index.ts";
import type { GuestPageMapper } from "./gtt.ts";
import { GvtScheduler } from "./scheduler.ts";
import type { VgpuShadowObserver } from "./shadow-frames.ts";
import {
  findGvtType,
  GVT_DRIVER_NAME,
  GVT_MAX_VGPUS,
  GVT_TYPES,
  type GvtTypeSpec,
  gvtAvailability,
  listedTypes,
} from "./types.ts";
import { Vgpu } from "./vgpu.ts";
import type { VirtualEngineBackend } from "./virtual-engine.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.create": {
      vgpu: number;
      uuid: string;
      type: string;
      apertureBase: number;
      apertureSize: number;
      hiddenBase: number;
      hiddenSize: number;
      fences: readonly number[];
      scratchPfn: number;
      scratchIova: number;
    };
    "vgpu.destroy": { vgpu: number; uuid: string; type: string; inFlight: number };
    "vgpu.release": { vgpu: number; uuid: string; apertureBase: number; hiddenBase: number; scratchIova: number };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.create":
    "vgpu{vgpu} {uuid} ({type}) created: aperture {apertureBase} +{apertureSize}, hidden {hiddenBase} +{hiddenSize}, fences {fences}, scratch page pfn {scratchPfn} iova {scratchIova}",
  "vgpu.destroy": "vgpu{vgpu} {uuid} ({type}) destroyed ({inFlight} workload(s) still on the engines)",
  "vgpu.release":
    "vgpu{vgpu} {uuid}: partition at aperture {apertureBase} / hidden {hiddenBase}, fences, id and scratch page (iova {scratchIova}) returned",
});

export interface GvtParentOptions {
  readonly gpu: HostGpu;
  /** Drives the scheduler's time slices. */
  readonly clock: SchedulingClock;
  readonly tracer: Tracer;
  /** Name under /sys/class/mdev_bus (default: the GPU's PCI address). */
  readonly parentName?: string;
  /**
   * TEST ONLY: every vGPU's command scanner skips its address audit (a deliberately broken mediator), so that the
   * scenario's isolation checker can be shown to catch what then reaches another VM's memory. Never set otherwise.
   */
  readonly unsafeSkipAddressAudit?: boolean;
  /**
   * TEST ONLY: every vGPU's shadow PPGTT puts the guest's PTEs into the shadow unchecked (no pin, no DMA mapping: the
   * guest's address is used as a DMA address), the planted bug that shows the isolation checker sees PPGTT DMA.
   * Never set otherwise.
   */
  readonly unsafeTrustGuestPtes?: boolean;
  /**
   * What executes the vGPUs' virtual execlist workloads (default: each vGPU's own `ExeclistBackend`, which shadows
   * guest contexts and runs them on the GPU). Tests inject one that completes at once.
   */
  readonly execlistBackend?: VirtualEngineBackend;
}

/**
 * The host aperture's size, which is every vGPU's BAR2 size (GVT-g's gvt_aperture_sz): the host driver's own
 * aperture reservation plus the aperture region it gives vGPUs (host-partitions.ts lays GM out so, from 0).
 */
export function hostApertureSize(gpu: HostGpu): number {
  return HOST_APERTURE_RESERVED + gpu.capacity().apertureTotal;
}

export class GvtParent implements MdevParentDriver {
  readonly parentName: string;
  readonly driverName = GVT_DRIVER_NAME;
  readonly scheduler: GvtScheduler;
  private readonly gpu: HostGpu;
  private readonly tracer: Tracer;
  private readonly byUuid = new Map<string, Vgpu>();
  private readonly idsUsed = new Set<number>();
  /** Destroyed vGPUs whose work is still on an engine: their partition and id return when it completes. */
  private readonly draining = new Set<Vgpu>();

  private readonly unsafeSkipAddressAudit: boolean;
  private readonly unsafeTrustGuestPtes: boolean;
  private readonly execlistBackend: VirtualEngineBackend | undefined;
  private shadowObserver: VgpuShadowObserver | undefined;
  private guestPageMapper: GuestPageMapper | undefined;
  /** Every vGPU's BAR2 size: the host aperture. */
  readonly bar2Size: number;

  constructor(opts: GvtParentOptions) {
    this.unsafeSkipAddressAudit = opts.unsafeSkipAddressAudit ?? false;
    this.unsafeTrustGuestPtes = opts.unsafeTrustGuestPtes ?? false;
    this.execlistBackend = opts.execlistBackend;
    this.bar2Size = hostApertureSize(opts.gpu);
    this.gpu = opts.gpu;
    this.tracer = opts.tracer;
    this.parentName = opts.parentName ?? opts.gpu.bdf;
    this.scheduler = new GvtScheduler({ gpu: opts.gpu, clock: opts.clock, tracer: opts.tracer });
  }

  /** The types whose aperture size still fits (re-read by the mdev core on every listing). */
  get types(): readonly GvtTypeSpec[] {
    return listedTypes(this.gpu.capacity());
  }

  availability(typeId: string): MdevAvailability {
    return gvtAvailability(this.typeOf(typeId), this.gpu.capacity(), GVT_MAX_VGPUS - this.idsUsed.size);
  }

  create(uuid: string, typeId: string): MdevDeviceInstance {
    const type = this.typeOf(typeId);
    const name = uuid.toLowerCase();
    if (this.byUuid.has(name)) {
      throw new KernelError(Errno.EEXIST, `i915 ${this.parentName}: a vGPU ${name} already exists`);
    }
    const id = this.freeId();
    if (id === 0) {
      throw new KernelError(
        Errno.ENOSPC,
        `i915 ${this.parentName}: no vGPU id left for ${name}: all ${GVT_MAX_VGPUS} are in use (id 0 is the idle vGPU)`,
      );
    }
    const resources = this.gpu.allocResources({ aperture: type.aperture, hidden: type.hidden, fences: type.fences });
    let scratch: CoherentBuffer | undefined;
    let vgpu: Vgpu;
    try {
      scratch = this.gpu.dma.allocCoherent(PAGE_SIZE);
      vgpu = new Vgpu({
        id,
        uuid: name,
        type,
        resources,
        bar2Size: this.bar2Size,
        ...(this.execlistBackend !== undefined ? { backend: this.execlistBackend } : {}),
        shadowObserver: () => this.shadowObserver,
        scratch,
        gpu: this.gpu,
        scheduler: this.scheduler,
        tracer: this.tracer,
        ...(this.unsafeSkipAddressAudit ? { unsafeSkipAddressAudit: true } : {}),
        ...(this.unsafeTrustGuestPtes ? { unsafeTrustGuestPtes: true } : {}),
        ...(this.guestPageMapper !== undefined ? { guestPageMapper: this.guestPageMapper } : {}),
      });
    } catch (e) {
      // The partition goes back onto the host's scratch page before our page is freed.
      this.gpu.freeResources(resources);
      if (scratch !== undefined) this.gpu.dma.dmaFreeCoherent(scratch);
      throw e;
    }
    this.idsUsed.add(id);
    this.byUuid.set(name, vgpu);
    if (this.tracer.enabled) this.traceCreate(vgpu, resources);
    return { ops: vgpu, attributes: { "intel_vgpu/vgpu_id": { read: () => `${id}\n` } } };
  }

  destroy(instance: MdevDeviceInstance): void {
    const vgpu = this.byUuid.get(instance.ops.name);
    if (vgpu === undefined || vgpu !== instance.ops) {
      throw new KernelError(Errno.ENODEV, `i915 ${this.parentName}: no vGPU ${instance.ops.name} to destroy`);
    }
    this.byUuid.delete(vgpu.name);
    this.draining.add(vgpu);
    if (this.tracer.enabled) {
      this.tracer.emit("vgpu.destroy", {
        vgpu: vgpu.id,
        uuid: vgpu.name,
        type: vgpu.type.id,
        inFlight: vgpu.workOutstanding,
      });
    }
    vgpu.dispose(() => this.release(vgpu));
  }

  /** The partition, fences and id of a destroyed vGPU go back once none of its work remains on an engine. */
  private release(vgpu: Vgpu): void {
    this.draining.delete(vgpu);
    // freeResources points every entry of the partition back at the host's scratch page: only then is the vGPU's
    // scratch page unreferenced and may be freed (its IOVA could otherwise be reused while entries still name it).
    this.gpu.freeResources(vgpu.resources);
    this.gpu.dma.dmaFreeCoherent(vgpu.scratch);
    this.idsUsed.delete(vgpu.id);
    if (this.tracer.enabled) {
      this.tracer.emit("vgpu.release", {
        vgpu: vgpu.id,
        uuid: vgpu.name,
        apertureBase: vgpu.resources.aperture.base,
        hiddenBase: vgpu.resources.hidden.base,
        scratchIova: vgpu.scratch.dmaAddr,
      });
    }
  }

  /**
   * Installs (or with undefined removes) the observer told of every shadow buffer a vGPU of this parent allocates
   * and frees, with its vGPU and use (shadow-frames.ts): the isolation checker's way to attribute host frames. On
   * install it hears of the buffers already live.
   */
  setShadowObserver(fn: VgpuShadowObserver | undefined): void {
    this.shadowObserver = fn;
    if (fn === undefined) return;
    for (const v of [...this.byUuid.values(), ...this.draining]) {
      v.shadows.each((buffer, use) => fn({ vgpu: v.id, use, buffer, write: use === "context image", alive: true }));
    }
  }

  /**
   * Sets how the vGPUs created from now on map their pinned guest pages (gtt.ts `GuestPageMapper`; undefined: the
   * default dma_map_page). Live vGPUs keep the mapper they were created with, so every unmap matches its map.
   */
  setGuestPageMapper(mapper: GuestPageMapper | undefined): void {
    this.guestPageMapper = mapper;
  }

  /** The live vGPU named `uuid`. */
  vgpu(uuid: string): Vgpu | undefined {
    return this.byUuid.get(uuid.toLowerCase());
  }

  /** Live vGPUs in creation order. */
  vgpus(): Vgpu[] {
    return [...this.byUuid.values()];
  }

  checkInvariants(): void {
    if (this.idsUsed.size !== this.byUuid.size + this.draining.size || this.idsUsed.size > GVT_MAX_VGPUS) {
      throw new Error(
        `i915 ${this.parentName}: ${this.idsUsed.size} ids in use for ${this.byUuid.size} vGPUs + ${this.draining.size} draining`,
      );
    }
    const scratch = new Set<number>([this.gpu.scratch.pfn]);
    for (const v of [...this.byUuid.values(), ...this.draining]) {
      if (scratch.has(v.scratch.pfn)) {
        throw new Error(`i915 ${this.parentName}: vgpu${v.id}'s scratch page (pfn ${v.scratch.pfn}) is not its own`);
      }
      scratch.add(v.scratch.pfn);
    }
    for (const v of this.byUuid.values()) v.checkInvariants();
    this.scheduler.checkInvariants();
  }

  private freeId(): number {
    for (let id = 1; id <= GVT_MAX_VGPUS; id++) if (!this.idsUsed.has(id)) return id;
    return 0;
  }

  private typeOf(typeId: string): GvtTypeSpec {
    const t = findGvtType(typeId);
    if (t === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `i915 ${this.parentName}: unknown vGPU type "${typeId}"; GVT-g offers ${GVT_TYPES.map((x) => x.id).join(", ")}`,
      );
    }
    return t;
  }

  private traceCreate(v: Vgpu, r: GpuResources): void {
    this.tracer.emit("vgpu.create", {
      vgpu: v.id,
      uuid: v.name,
      type: v.type.id,
      apertureBase: r.aperture.base,
      apertureSize: r.aperture.size,
      hiddenBase: r.hidden.base,
      hiddenSize: r.hidden.size,
      fences: r.fences,
      scratchPfn: v.scratch.pfn,
      scratchIova: v.scratch.dmaAddr,
    });
  }
}

/** Builds the GVT-g parent for a host GPU. */
export function createGvtParent(opts: GvtParentOptions): GvtParent {
  return new GvtParent(opts);
}
