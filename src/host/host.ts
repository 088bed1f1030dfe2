/**
 * A whole host: the objects of this layer wired together, with one clock, one seeded RNG and one tracer.
 *
 * ```ts
 * const host = new Host({ memoryBytes: 16 * GiB, iommu: { enabled: true }, seed: 1 });
 * const vmm = host.spawn("qemu", { rlimitMemlockBytes: 1 * GiB });
 * host.addPciDevice(gpu);                      // joins the PCI bus and an IOMMU group
 * const dma = host.dmaApi(gpu.bdf);            // the DMA API a host driver uses for it
 * const bus = host.deviceDma(gpu.bdf);         // the path the device model's DMA takes
 * ```
 *
 * Upper layers (vfio, mdev, the GPU) receive these objects, never a Host, so each depends only on what it uses.
 */
import { Errno, KernelError, Rng, type SchedulingClock, Tracer, VirtualClock } from "../core/index.ts";
import { CostMeter } from "../cost/index.ts";
import type { Bdf } from "./bdf.ts";
import { Devfs } from "./devfs.ts";
import { DeviceDma } from "./device-dma.ts";
import { DmaDevice, type DmaDeviceOptions } from "./dma.ts";
import { type AddDeviceOptions, Iommu, type IommuOptions } from "./iommu.ts";
import { AddressSpace } from "./mm.ts";
import { PciBus, type PciDeviceModel } from "./pci.ts";
import { PhysicalMemory } from "./physmem.ts";
import { Process } from "./process.ts";
import { attachPciSysfs, Sysfs } from "./sysfs.ts";

export const GiB = 1024 * 1024 * 1024;

export interface HostOptions {
  /** Declared RAM (default 16 GiB; only touched pages cost memory). */
  readonly memoryBytes?: number;
  readonly iommu?: Partial<Omit<IommuOptions, "physmem" | "clock" | "tracer" | "rng">>;
  /** Seed of every random choice in the host (default 1). */
  readonly seed?: number;
  /** Default: a VirtualClock at 0. */
  readonly clock?: SchedulingClock;
  readonly tracer?: Tracer;
  /** The operation counters of the cost model (default a new meter): `Host.costs`. */
  readonly costMeter?: CostMeter;
}

export interface SpawnOptions {
  /** RLIMIT_MEMLOCK in bytes (default 8 MiB, Linux's default). */
  readonly rlimitMemlockBytes?: number;
  readonly capIpcLock?: boolean;
}

export class Host {
  readonly clock: SchedulingClock;
  readonly rng: Rng;
  readonly tracer: Tracer;
  /** What the host's operations did, counted for the cost model (cost/meter.ts): one meter for every module. */
  readonly costs: CostMeter;
  readonly physmem: PhysicalMemory;
  readonly iommu: Iommu;
  readonly pci: PciBus;
  readonly devfs: Devfs;
  readonly sysfs: Sysfs;
  private readonly procs = new Map<number, Process>();
  private nextPid = 1000;
  private readonly dmaDevices = new Map<string, DmaDevice>();
  private readonly busMasters = new Map<string, DeviceDma>();

  constructor(opts: HostOptions = {}) {
    this.clock = opts.clock ?? new VirtualClock();
    this.rng = new Rng(opts.seed ?? 1);
    this.tracer = opts.tracer ?? new Tracer(this.clock);
    this.costs = opts.costMeter ?? new CostMeter();
    this.physmem = new PhysicalMemory({ sizeBytes: opts.memoryBytes ?? 16 * GiB, tracer: this.tracer });
    this.iommu = new Iommu({
      enabled: true,
      ...opts.iommu,
      physmem: this.physmem,
      clock: this.clock,
      tracer: this.tracer,
      rng: this.rng.fork("iommu"),
      meter: this.costs,
    });
    this.pci = new PciBus(this.tracer);
    this.devfs = new Devfs(this.tracer);
    this.sysfs = new Sysfs();
    attachPciSysfs(this.sysfs, this.pci, this.iommu);
  }

  /** Starts a process with an empty address space and fd table. Its frames are tagged with its pid. */
  spawn(comm: string, opts: SpawnOptions = {}): Process {
    const pid = this.nextPid++;
    const mm = new AddressSpace({
      physmem: this.physmem,
      tracer: this.tracer,
      pid,
      owner: pid,
      meter: this.costs,
      ...(opts.rlimitMemlockBytes !== undefined ? { rlimitMemlockBytes: opts.rlimitMemlockBytes } : {}),
      ...(opts.capIpcLock !== undefined ? { capIpcLock: opts.capIpcLock } : {}),
    });
    const p = new Process({ pid, comm, mm, devfs: this.devfs, tracer: this.tracer });
    this.procs.set(pid, p);
    return p;
  }

  process(pid: number): Process | undefined {
    return this.procs.get(pid);
  }

  processes(): Process[] {
    return [...this.procs.values()].filter((p) => p.isAlive);
  }

  /**
   * wait(2) for an exited process: forgets it, so hosts that start processes endlessly (a vfio-user server, one per
   * connection) do not accumulate them. Until reaped, an exited process stays inspectable through `process(pid)`.
   * ECHILD if no such process, EBUSY while it is alive.
   */
  reap(pid: number): Process {
    const p = this.procs.get(pid);
    if (p === undefined) throw new KernelError(Errno.ECHILD, `no process ${pid} to reap`);
    if (p.isAlive) throw new KernelError(Errno.EBUSY, `process ${pid} (${p.comm}) is still running: exit it first`);
    this.procs.delete(pid);
    return p;
  }

  /** Plugs a PCI device model in: onto the bus and into an IOMMU group. Returns the group number. */
  addPciDevice(dev: PciDeviceModel, opts: AddDeviceOptions = {}): number {
    this.pci.add(dev);
    return this.iommu.addDevice(dev.bdf, opts);
  }

  /** The DMA API for a device (created once per device; options apply on first call). */
  dmaApi(
    bdf: Bdf,
    opts: Partial<Omit<DmaDeviceOptions, "bdf" | "iommu" | "physmem" | "tracer" | "clock">> = {},
  ): DmaDevice {
    let d = this.dmaDevices.get(bdf);
    if (!d) {
      d = new DmaDevice({
        ...opts,
        bdf,
        iommu: this.iommu,
        physmem: this.physmem,
        tracer: this.tracer,
        clock: this.clock,
      });
      this.dmaDevices.set(bdf, d);
    }
    return d;
  }

  /** The bus-master path of a device: every DMA the device model performs goes through this. */
  deviceDma(bdf: Bdf): DeviceDma {
    let d = this.busMasters.get(bdf);
    if (!d) {
      d = new DeviceDma({ bdf, iommu: this.iommu, physmem: this.physmem });
      this.busMasters.set(bdf, d);
    }
    return d;
  }
}
