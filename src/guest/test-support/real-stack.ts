/**
 * The real stack for the guest driver's end-to-end tests: the test world of mdev/testing.ts (a host on a virtual
 * clock with vfio-core (type1), the mdev core, vfio-pci), the physical GPU, and either
 * - `VgpuStack`: the host graphics driver bound to the GPU and the GVT-g parent registered, so guests get vGPUs
 *   created through sysfs (as mdevctl does) and attached by a VMM by sysfs path; or
 * - `PassthroughStack`: the GPU bound to vfio-pci, so one guest gets the whole physical GPU.
 * Each guest is a `Vmm` process with its RAM mapped through type1, and a `VmmGuestPlatform` for the driver.
 *
 * Test support only: nothing in the model imports it.
 */

import type { TraceRecorder, VirtualClock } from "../../core/index.ts";
import { type CreatedGpu, createGpu, GpuDevice } from "../../gpu/index.ts";
import { GiB, type Host, parseBdf } from "../../host/index.ts";
import type { MdevCore } from "../../mdev/index.ts";
import { testWorld } from "../../mdev/testing.ts";
import type { VfioCore, VfioPciDriver } from "../../vfio/index.ts";
import { GvtParent, gvtTypeDirName } from "../../vgpu/index.ts";
import { type AttachedDevice, Vmm, VmmGuestPlatform } from "../../vmm/index.ts";

const MiB = 1024 * 1024;

export interface StackOptions {
  /** GPU aperture (BAR2), default 512 MiB. */
  readonly apertureSize?: number;
  /** Host RAM, default 8 GiB (frames are allocated lazily). */
  readonly hostMemoryBytes?: number;
  /** Record trace events (default false: the stack's traces are large). */
  readonly trace?: boolean;
  /** How the host driver submits (default "ring"); "execlists" runs guests' contexts. */
  readonly submission?: "ring" | "execlists";
}

export interface GuestOptions {
  /** Guest RAM, default 64 MiB. */
  readonly memoryBytes?: number;
  /** The VMM's RLIMIT_MEMLOCK, default 1 GiB (the vendor driver pins every page the guest maps in its GTT). */
  readonly rlimitMemlockBytes?: number;
}

/** One running guest. */
export interface GuestVm {
  readonly vmm: Vmm;
  readonly device: AttachedDevice;
  readonly platform: VmmGuestPlatform;
}

/** The test world (mdev/testing.ts) on a virtual clock: what both stacks share. */
class BaseStack {
  readonly clock: VirtualClock;
  readonly host: Host;
  readonly recorder: TraceRecorder | undefined;
  readonly vfio: VfioCore;
  readonly mdev: MdevCore;
  protected readonly vfioPci: VfioPciDriver;
  protected guests = 0;

  constructor(opts: StackOptions) {
    const w = testWorld({ memoryBytes: opts.hostMemoryBytes ?? 8 * GiB, trace: opts.trace === true });
    this.clock = w.clock;
    this.host = w.host;
    this.recorder = opts.trace ? w.rec : undefined;
    this.vfio = w.vfio;
    this.mdev = w.mdev;
    this.vfioPci = w.vfioPci;
  }

  protected start(attach: { sysfsdev: string } | { host: string }, opts: GuestOptions): GuestVm {
    const vmm = Vmm.create(this.host, {
      name: `vm${++this.guests}`,
      memoryBytes: opts.memoryBytes ?? 64 * MiB,
      rlimitMemlockBytes: opts.rlimitMemlockBytes ?? GiB,
    });
    const device = vmm.attach(attach);
    return { vmm, device, platform: new VmmGuestPlatform(vmm, device, this.clock) };
  }
}

/** The GPU owned by the host driver, mediated into vGPUs by the GVT-g parent. */
export class VgpuStack extends BaseStack {
  readonly gpu: CreatedGpu;
  readonly parent: GvtParent;
  private uuids = 0;

  constructor(opts: StackOptions = {}) {
    super(opts);
    this.gpu = createGpu(this.host, {
      ...(opts.apertureSize !== undefined ? { apertureSize: opts.apertureSize } : {}),
      ...(opts.submission !== undefined ? { submission: opts.submission } : {}),
    });
    this.parent = new GvtParent({ gpu: this.gpu.driver, clock: this.clock, tracer: this.host.tracer });
    this.mdev.registerParent(this.parent);
  }

  /** mdevctl start: creates a vGPU of `typeId` through sysfs; returns its sysfs path. */
  createVgpu(typeId = "GVTg_V5_8"): string {
    const uuid = `6e7a1f00-0000-4000-8000-${(++this.uuids).toString(16).padStart(12, "0")}`;
    const types = `/sys/class/mdev_bus/${this.parent.parentName}/mdev_supported_types`;
    this.host.sysfs.write(`${types}/${gvtTypeDirName(typeId)}/create`, `${uuid}\n`);
    return `/sys/bus/mdev/devices/${uuid}`;
  }

  /** A VMM attaching the vGPU at `sysfsdev`. */
  startGuest(sysfsdev: string, opts: GuestOptions = {}): GuestVm {
    return this.start({ sysfsdev }, opts);
  }
}

/** The whole GPU bound to vfio-pci for one guest. */
export class PassthroughStack extends BaseStack {
  readonly gpu: GpuDevice;
  readonly bdf = "0000:00:02.0";

  constructor(opts: StackOptions = {}) {
    super(opts);
    const bdf = parseBdf(this.bdf);
    this.gpu = new GpuDevice({
      bdf,
      bus: this.host.pci,
      dma: this.host.deviceDma(bdf),
      tracer: this.host.tracer,
      clock: this.clock,
      ...(opts.apertureSize !== undefined ? { apertureSize: opts.apertureSize } : {}),
    });
    this.host.addPciDevice(this.gpu, { ats: false });
    this.vfioPci.bind(bdf);
  }

  startGuest(opts: GuestOptions = {}): GuestVm {
    return this.start({ host: this.bdf }, opts);
  }
}
