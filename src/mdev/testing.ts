/**
 * The test world: the host a VMM, a vendor driver or an end-to-end test runs on, assembled once for every fixture
 * (not part of the mdev layer's API: only tests, fixtures and benchmarks import this; no index.ts exports it).
 *
 * `testWorld()` builds, in this order, what Linux has after boot with vfio loaded: a `Host` (on a `VirtualClock`, seed
 * 1 unless told), a `TraceRecorder` on its tracer, vfio-core with the type1 IOMMU driver registered, the mdev core and
 * the vfio-pci bus driver. It registers no parent and binds nothing: each fixture adds its own devices (an mtty
 * parent, a GPU and its GVT-g parent, an edu device bound to vfio-pci).
 *
 * What it does not do: spawn processes, open containers, create mdevs (see vmm/testing.ts `createMdev`).
 *
 * Invariant: one world, one clock, one tracer; every piece is built from the Host's own devfs, sysfs, PCI bus, IOMMU
 * and physical memory, exactly as `scenario/system.ts` assembles a system.
 */
import { TraceRecorder, VirtualClock } from "../core/index.ts";
import { Host } from "../host/index.ts";
import { type Type1Driver, type1Driver, VfioCore, VfioPciDriver } from "../vfio/index.ts";
import { MdevCore } from "./core.ts";

export interface TestWorldOptions {
  /** Host RAM (default the Host's: 16 GiB, allocated lazily). */
  readonly memoryBytes?: number;
  /** Seed of the host's random choices (default 1). */
  readonly seed?: number;
  /** The clock (default a new VirtualClock at 0). */
  readonly clock?: VirtualClock;
  /** The system IOMMU is on (default true). */
  readonly iommu?: boolean;
  /** Record trace events (default true; off for benchmarks and large stacks: recording costs time). */
  readonly trace?: boolean;
}

export interface TestWorld {
  readonly clock: VirtualClock;
  readonly host: Host;
  /** Records every trace event (stopped at once when `trace: false`). */
  readonly rec: TraceRecorder;
  readonly vfio: VfioCore;
  readonly type1: Type1Driver;
  readonly mdev: MdevCore;
  readonly vfioPci: VfioPciDriver;
}

/** A host with vfio-core (type1), the mdev core and vfio-pci (see the module comment). */
export function testWorld(opts: TestWorldOptions = {}): TestWorld {
  const clock = opts.clock ?? new VirtualClock();
  const host = new Host({
    clock,
    seed: opts.seed ?? 1,
    ...(opts.memoryBytes !== undefined ? { memoryBytes: opts.memoryBytes } : {}),
    ...(opts.iommu !== undefined ? { iommu: { enabled: opts.iommu } } : {}),
  });
  const rec = new TraceRecorder(host.tracer);
  if (opts.trace === false) rec.stop();
  const vfio = new VfioCore({ devfs: host.devfs, pci: host.pci, iommu: host.iommu, tracer: host.tracer });
  const type1 = type1Driver({ iommu: host.iommu, physmem: host.physmem, tracer: host.tracer });
  vfio.registerIommuDriver(type1);
  const mdev = new MdevCore({ sysfs: host.sysfs, vfio, tracer: host.tracer });
  const vfioPci = new VfioPciDriver({ bus: host.pci, core: vfio, tracer: host.tracer });
  return { clock, host, rec, vfio, type1, mdev, vfioPci };
}
