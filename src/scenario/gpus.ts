/**
 * Physical GPUs in an assembled system, in the two ways a host uses them:
 * - mediated (`createMediatedGpu`): the GPU model plugged into the host, the i915-like host driver bound to it
 *   (`createGpu`), and the GVT-g parent (src/vgpu) registered with the mdev core, so VMs get vGPUs;
 * - assigned whole (`createAssignedGpu`): the GPU model bound to vfio-pci, for one VM to attach by PCI address.
 *
 * Between the GVT-g parent and the host driver sits `ObservedHostGpu`, a pass-through implementation of the HostGpu
 * contract that tells listeners about the shadow batch buffers the vendor driver allocates and frees: the isolation
 * checker needs to know which host frames hold which vGPU's shadow copies. It changes nothing the vendor driver sees.
 *
 * Each GPU is recorded as a `GpuInstance` (name, PCI address, device model, host driver, parent) in the system's
 * `gpus` list, which reports, the checker and `vgpu explain` read.
 *
 * Not modelled: GPUs added or removed at run time, a GPU moved between i915 and vfio-pci.
 */
import type { Pfn, Tracer } from "../core/index.ts";
import {
  type CostModel,
  createGpu,
  GpuDevice,
  type GpuResourceRequest,
  type GpuResources,
  type HostGpu,
  type HostGpuDriver,
  type ShadowBuffer,
  type Submission,
} from "../gpu/index.ts";
import { type Host, parseBdf } from "../host/index.ts";
import type { VfioPciDriver } from "../vfio/index.ts";
import { GvtParent } from "../vgpu/index.ts";

/** One physical GPU of the system. */
export interface GpuInstance {
  /** The name a config gives it ("gpu0"), else its PCI address. */
  readonly name: string;
  readonly bdf: string;
  readonly driver: "i915" | "vfio-pci";
  readonly gpu: GpuDevice;
  readonly group: number;
  /** i915 only. */
  readonly hostDriver: HostGpuDriver | undefined;
  readonly parent: GvtParent | undefined;
  readonly observed: ObservedHostGpu | undefined;
}

/** Told about every shadow buffer the vendor driver allocates (`alive` true) and frees (false). */
export type ShadowListener = (buf: ShadowBuffer, alive: boolean) => void;

/** HostGpu delegating to the host driver, announcing shadow buffer allocation and release. */
export class ObservedHostGpu implements HostGpu {
  private readonly listeners: ShadowListener[] = [];

  constructor(readonly inner: HostGpuDriver) {}

  get bdf() {
    return this.inner.bdf;
  }
  get dma() {
    return this.inner.dma;
  }
  get scratch() {
    return this.inner.scratch;
  }
  get engines() {
    return this.inner.engines;
  }

  /** Adds a listener; returns the function that removes it. */
  onShadow(fn: ShadowListener): () => void {
    this.listeners.push(fn);
    return () => {
      const i = this.listeners.indexOf(fn);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  capacity() {
    return this.inner.capacity();
  }
  allocResources(req: GpuResourceRequest): GpuResources {
    return this.inner.allocResources(req);
  }
  freeResources(r: GpuResources): void {
    this.inner.freeResources(r);
  }
  writeGgtt(index: number, pte: number): void {
    this.inner.writeGgtt(index, pte);
  }
  fillGgtt(first: number, count: number, pte: number): void {
    this.inner.fillGgtt(first, count, pte);
  }
  zeroPage(pfn: Pfn): void {
    this.inner.zeroPage(pfn);
  }
  readGgtt(index: number): number {
    return this.inner.readGgtt(index);
  }
  writeFence(fence: number, value: number): void {
    this.inner.writeFence(fence, value);
  }
  writeFenceHalves(fence: number, lo: number, hi: number): void {
    this.inner.writeFenceHalves(fence, lo, hi);
  }
  submit(s: Submission): void {
    this.inner.submit(s);
  }

  allocShadow(size: number): ShadowBuffer {
    const buf = this.inner.allocShadow(size);
    if (this.listeners.length === 0) return buf;
    for (const l of this.listeners) l(buf, true);
    const listeners = this.listeners;
    // Wrap free so that listeners hear of it; everything else is the host driver's buffer.
    return {
      gma: buf.gma,
      size: buf.size,
      write: (offset, data) => buf.write(offset, data),
      read: (offset, into) => buf.read(offset, into),
      free: () => {
        for (const l of listeners) l(buf, false);
        buf.free();
      },
    };
  }
}

export interface GpuOptions {
  readonly name?: string;
  readonly bdf?: string;
  readonly apertureSize?: number;
  readonly ats?: boolean;
  /** dma_set_mask of the GPU: applies to its DMA API before the host driver allocates anything. */
  readonly dmaMaskBits?: number;
  readonly cost?: Partial<CostModel>;
}

export interface MediatedGpuOptions extends GpuOptions {
  /** Name of the mdev parent (default: the PCI address, as Linux). */
  readonly parentName?: string;
  /** TEST ONLY: the vGPUs' command scanner skips its address audit (a broken mediator for the checker's tests). */
  readonly unsafeSkipAddressAudit?: boolean;
}

/** Plugs a GPU in, binds i915 to it and builds its GVT-g parent (the caller registers the parent with mdev). */
export function createMediatedGpu(host: Host, opts: MediatedGpuOptions): GpuInstance {
  const bdf = opts.bdf ?? "0000:00:02.0";
  if (opts.dmaMaskBits !== undefined) host.dmaApi(parseBdf(bdf), { dmaMaskBits: opts.dmaMaskBits });
  const created = createGpu(host, {
    bdf,
    ...(opts.apertureSize !== undefined ? { apertureSize: opts.apertureSize } : {}),
    ...(opts.ats !== undefined ? { ats: opts.ats } : {}),
    ...(opts.cost !== undefined ? { cost: opts.cost } : {}),
  });
  const observed = new ObservedHostGpu(created.driver);
  const parent = new GvtParent({
    gpu: observed,
    clock: host.clock,
    tracer: host.tracer,
    ...(opts.parentName !== undefined ? { parentName: opts.parentName } : {}),
    ...(opts.unsafeSkipAddressAudit ? { unsafeSkipAddressAudit: true } : {}),
  });
  return {
    name: opts.name ?? bdf,
    bdf,
    driver: "i915",
    gpu: created.gpu,
    group: created.group,
    hostDriver: created.driver,
    parent,
    observed,
  };
}

/** Plugs a GPU in and binds it to vfio-pci, for one VM to attach whole by its PCI address. */
export function createAssignedGpu(host: Host, vfioPci: VfioPciDriver, tracer: Tracer, opts: GpuOptions): GpuInstance {
  const bdfText = opts.bdf ?? "0000:00:02.0";
  const bdf = parseBdf(bdfText);
  const gpu = new GpuDevice({
    bdf,
    bus: host.pci,
    dma: host.deviceDma(bdf),
    tracer,
    clock: host.clock,
    ...(opts.apertureSize !== undefined ? { apertureSize: opts.apertureSize } : {}),
    ...(opts.cost !== undefined ? { cost: opts.cost } : {}),
  });
  const group = host.addPciDevice(gpu, { ats: opts.ats ?? false });
  vfioPci.bind(bdf);
  return {
    name: opts.name ?? bdfText,
    bdf: bdfText,
    driver: "vfio-pci",
    gpu,
    group,
    hostDriver: undefined,
    parent: undefined,
    observed: undefined,
  };
}
