/**
 * Physical GPUs in an assembled system, in the two ways a host uses them:
 * - mediated (`createMediatedGpu`): the GPU model plugged into the host, the i915-like host driver bound to it
 *   (`createGpu`), and the GVT-g parent (src/vgpu) registered with the mdev core, so VMs get vGPUs;
 * - assigned whole (`createAssignedGpu`): the GPU model bound to vfio-pci, for one VM to attach by PCI address.
 *
 * The GVT-g parent talks to the host driver directly. The isolation checker, which needs to know which host frames
 * hold which vGPU's shadow copies, installs the host driver's shadow observer (`HostGpuDriver.setShadowObserver`).
 *
 * Each GPU is recorded as a `GpuInstance` (name, PCI address, device model, host driver, parent) in the system's
 * `gpus` list, which reports, the checker and `vgpu explain` read.
 *
 * Not modelled: GPUs added or removed at run time, a GPU moved between i915 and vfio-pci.
 */
import type { Tracer } from "../core/index.ts";
import { type CostModel, createGpu, GpuDevice, type HostGpuDriver, type SubmissionMode } from "../gpu/index.ts";
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
  /** How the host driver submits (default "ring"); with "execlists" the vGPUs run their guests' contexts. */
  readonly submission?: SubmissionMode;
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
    ...(opts.submission !== undefined ? { submission: opts.submission } : {}),
  });
  const parent = new GvtParent({
    gpu: created.driver,
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
  };
}
