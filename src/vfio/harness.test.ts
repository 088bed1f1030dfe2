/**
 * Shared scaffolding for the vfio-core tests: a small host with vfio-core on it, a fake bus-driver device
 * (`FakeDevice`, a VfioDeviceOps recording every call) and a fake type1-like IOMMU driver (`FakeIommuDriver`, enough
 * of MAP_DMA/UNMAP_DMA/GET_INFO and pinning to observe what vfio-core forwards). The real type1 backend is used by
 * the conformance test when it is present. This file also checks the fakes themselves, so a broken fake cannot make
 * the other tests pass vacuously.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, type Iova, KernelError, type Pfn, pfn, TraceRecorder } from "../core/index.ts";
import {
  type AddressSpace,
  type Bdf,
  type FileMapping,
  Host,
  type IoctlArg,
  PciConfigSpace,
  type PciDeviceModel,
  type Process,
} from "../host/index.ts";
import { VfioCore } from "./core.ts";
import type {
  VfioCapability,
  VfioDeviceInfo,
  VfioDeviceOps,
  VfioDmaAccess,
  VfioEmulatedDevice,
  VfioGroupAttachment,
  VfioIommuBackend,
  VfioIommuDriver,
  VfioIrqInfo,
  VfioIrqSet,
  VfioRegionInfo,
} from "./driver.ts";
import {
  iommuInfoReply,
  VFIO_CHECK_EXTENSION,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_SET_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
  VfioIommuType1Info,
} from "./uapi/index.ts";

export const errno =
  (n: number) =>
  (e: unknown): boolean =>
    e instanceof KernelError && e.errno === n;

// ---------------------------------------------------------------------------------------------------------------------
// A fake device

export interface FakeRegion {
  readonly flags: number;
  readonly size: number;
  readonly caps?: readonly VfioCapability[];
}

export interface FakeDeviceOptions {
  readonly name: string;
  readonly regions?: readonly FakeRegion[];
  /** Vector count per irq index. */
  readonly irqs?: readonly number[];
  readonly flags?: number;
  readonly deviceCaps?: readonly VfioCapability[];
  readonly dmaUnmap?: boolean;
  readonly mmapFrames?: Pfn;
}

/** A VfioDeviceOps that records every call; region memory is plain bytes. */
export class FakeDevice implements VfioDeviceOps {
  readonly name: string;
  readonly regions: readonly FakeRegion[];
  readonly irqs: readonly number[];
  readonly memory: Uint8Array[];
  readonly flags: number;
  readonly deviceCaps: readonly VfioCapability[] | undefined;
  opens = 0;
  closes = 0;
  resets = 0;
  dma: VfioDmaAccess | undefined;
  readonly irqSets: VfioIrqSet[] = [];
  readonly unmaps: { iova: number; length: number }[] = [];
  readonly calls: string[] = [];
  readonly dmaUnmap?: (iova: Iova, length: number) => void;
  failOpen: KernelError | undefined;
  private readonly mmapFrames: Pfn | undefined;

  constructor(opts: FakeDeviceOptions) {
    this.name = opts.name;
    this.regions = opts.regions ?? [
      { flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP, size: 0x2000 },
      { flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE, size: 0x100 },
    ];
    this.irqs = opts.irqs ?? [1, 4];
    this.memory = this.regions.map((r) => new Uint8Array(Math.min(r.size, 1 << 20)));
    this.flags = opts.flags ?? VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
    this.deviceCaps = opts.deviceCaps;
    this.mmapFrames = opts.mmapFrames;
    if (opts.dmaUnmap) {
      this.dmaUnmap = (iova, length) => {
        this.unmaps.push({ iova, length });
      };
    }
  }

  open(dma: VfioDmaAccess | undefined): void {
    this.calls.push("open");
    if (this.failOpen) throw this.failOpen;
    this.opens++;
    this.dma = dma;
  }

  close(): void {
    this.calls.push("close");
    this.closes++;
    this.dma = undefined;
  }

  info(): VfioDeviceInfo {
    const base = { flags: this.flags, numRegions: this.regions.length, numIrqs: this.irqs.length };
    // `caps` is beyond driver.ts's VfioDeviceInfo (see device-file.ts); vfio-core reads it when present.
    return this.deviceCaps ? ({ ...base, caps: this.deviceCaps } as VfioDeviceInfo) : base;
  }

  regionInfo(index: number): VfioRegionInfo {
    const r = this.regions[index];
    if (!r) throw new KernelError(Errno.EINVAL, `fake: no region ${index}`);
    return r.caps ? { index, flags: r.flags, size: r.size, caps: r.caps } : { index, flags: r.flags, size: r.size };
  }

  irqInfo(index: number): VfioIrqInfo {
    const count = this.irqs[index];
    if (count === undefined) throw new KernelError(Errno.EINVAL, `fake: no irq index ${index}`);
    return { index, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE, count };
  }

  setIrqs(set: VfioIrqSet): void {
    this.calls.push(`setIrqs:${set.index}`);
    this.irqSets.push(set);
  }

  reset(): void {
    this.calls.push("reset");
    this.resets++;
  }

  regionRead(index: number, offset: number, buf: Uint8Array): number {
    const m = this.memory[index]!;
    if (offset + buf.length > m.length) throw new KernelError(Errno.EINVAL, "fake: read past the region");
    buf.set(m.subarray(offset, offset + buf.length));
    return buf.length;
  }

  regionWrite(index: number, offset: number, buf: Uint8Array): number {
    const m = this.memory[index]!;
    if (offset + buf.length > m.length) throw new KernelError(Errno.EINVAL, "fake: write past the region");
    m.set(buf, offset);
    return buf.length;
  }

  regionMmap(index: number, offset: number, _length: number, _prot: number): FileMapping {
    if (this.mmapFrames === undefined) throw new KernelError(Errno.EINVAL, "fake: no frames to mmap");
    return { basePfn: pfn(this.mmapFrames + index * 16 + offset / 4096), label: `${this.name} region ${index}` };
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// A fake IOMMU driver

export interface FakeMapping {
  readonly iova: number;
  readonly vaddr: number;
  readonly size: number;
  readonly flags: number;
}

/** One container's fake backend: mappings in a Map, attach/detach/pin recorded. */
export class FakeBackend implements VfioIommuBackend {
  readonly mappings = new Map<number, FakeMapping>();
  readonly groups: number[] = [];
  readonly devices = new Set<VfioEmulatedDevice>();
  readonly pins = new Map<number, number>();
  readonly log: string[] = [];
  released = false;

  constructor(
    readonly driver: FakeIommuDriver,
    readonly ext: number,
    readonly mm: AddressSpace,
  ) {}

  ioctl(request: number, arg: IoctlArg): number {
    if (typeof arg === "number") throw new KernelError(Errno.EFAULT, "fake backend: pointer expected");
    switch (request) {
      case VFIO_IOMMU_MAP_DMA: {
        const m = VfioIommuType1DmaMap.decodeMin(arg);
        if (m.argsz < VfioIommuType1DmaMap.minsz || (m.flags & ~3) !== 0) {
          throw new KernelError(Errno.EINVAL, "fake MAP_DMA: bad argsz or flags");
        }
        const iova = Number(m.iova);
        const size = Number(m.size);
        if (size === 0 || iova % 4096 !== 0 || size % 4096 !== 0) {
          throw new KernelError(Errno.EINVAL, "fake MAP_DMA: unaligned");
        }
        for (const x of this.mappings.values()) {
          if (iova < x.iova + x.size && x.iova < iova + size) throw new KernelError(Errno.EEXIST, "fake: overlap");
        }
        this.mappings.set(iova, { iova, vaddr: Number(m.vaddr), size, flags: m.flags });
        this.log.push(`map ${iova}`);
        return 0;
      }
      case VFIO_IOMMU_UNMAP_DMA: {
        const u = VfioIommuType1DmaUnmap.decodeMin(arg);
        if (u.argsz < VfioIommuType1DmaUnmap.minsz) throw new KernelError(Errno.EINVAL, "fake UNMAP_DMA: argsz");
        const iova = Number(u.iova);
        const size = Number(u.size);
        let unmapped = 0;
        for (const x of [...this.mappings.values()]) {
          if (x.iova >= iova && x.iova + x.size <= iova + size) {
            for (const d of this.devices) d.dmaUnmap(x.iova as Iova, x.size);
            this.mappings.delete(x.iova);
            unmapped += x.size;
          }
        }
        VfioIommuType1DmaUnmap.set(arg, "size", unmapped);
        this.log.push(`unmap ${iova}+${size}`);
        return 0;
      }
      case VFIO_IOMMU_GET_INFO: {
        const hdr = VfioIommuType1Info.decodeMin(arg);
        if (hdr.argsz < VfioIommuType1Info.minsz) throw new KernelError(Errno.EINVAL, "fake GET_INFO: argsz");
        const reply = iommuInfoReply({ flags: VFIO_IOMMU_INFO_PGSIZES, iova_pgsizes: 0x1000 }, [], hdr.argsz);
        arg.set(reply);
        return 0;
      }
      case VFIO_CHECK_EXTENSION:
        return this.checkExtension(0);
      default:
        throw new KernelError(Errno.ENOTTY, `fake backend: request 0x${request.toString(16)}`);
    }
  }

  checkExtension(ext: number): number {
    return this.driver.checkExtension(ext);
  }

  attachGroup(group: VfioGroupAttachment): void {
    if (this.driver.failAttach.has(group.id)) {
      throw new KernelError(Errno.EBUSY, `fake: group ${group.id} refuses to attach`);
    }
    this.groups.push(group.id);
    this.log.push(`attach ${group.id}`);
  }

  detachGroup(group: VfioGroupAttachment): void {
    const i = this.groups.indexOf(group.id);
    assert.ok(i >= 0, `detach of group ${group.id} that is not attached`);
    this.groups.splice(i, 1);
    this.log.push(`detach ${group.id}`);
  }

  release(): void {
    assert.equal(this.released, false, "released twice");
    assert.equal(this.devices.size, 0, "a device is still registered for dma_unmap when its container is released");
    assert.equal(this.groups.length, 0, "groups are detached before the backend is released");
    this.released = true;
    this.mappings.clear();
    this.log.push("release");
  }

  registerDevice(dev: VfioEmulatedDevice): void {
    this.devices.add(dev);
  }

  unregisterDevice(dev: VfioEmulatedDevice): void {
    assert.ok(this.devices.delete(dev), `unregister of unknown device ${dev.name}`);
  }

  pinPages(_dev: VfioEmulatedDevice, iova: Iova, npage: number, _prot: number): Pfn[] {
    const out: Pfn[] = [];
    for (let i = 0; i < npage; i++) {
      const a = iova + i * 4096;
      const m = [...this.mappings.values()].find((x) => a >= x.iova && a < x.iova + x.size);
      if (!m) throw new KernelError(Errno.EINVAL, `fake: iova ${a} not mapped`);
      this.pins.set(a, (this.pins.get(a) ?? 0) + 1);
      out.push(pfn(a / 4096));
    }
    return out;
  }

  unpinPages(_dev: VfioEmulatedDevice, iova: Iova, npage: number): void {
    for (let i = 0; i < npage; i++) {
      const a = iova + i * 4096;
      const n = this.pins.get(a) ?? 0;
      if (n <= 1) this.pins.delete(a);
      else this.pins.set(a, n - 1);
    }
  }

  dmaRw(iova: Iova, buf: Uint8Array, _write: boolean): void {
    if (buf.length > 0 && ![...this.mappings.values()].some((x) => iova >= x.iova && iova < x.iova + x.size)) {
      throw new KernelError(Errno.EINVAL, "fake: dma_rw outside the mappings");
    }
  }
}

/** Answers TYPE1 and TYPE1v2 (or `extensions`); backends are kept for inspection. */
export class FakeIommuDriver implements VfioIommuDriver {
  readonly backends: FakeBackend[] = [];
  readonly failAttach = new Set<number>();
  failOpen: KernelError | undefined;

  constructor(
    readonly name = "fake-type1",
    readonly extensions: readonly number[] = [VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU],
  ) {}

  checkExtension(ext: number): number {
    return this.extensions.includes(ext) ? 1 : 0;
  }

  open(ext: number, mm: AddressSpace): VfioIommuBackend {
    if (this.failOpen) throw this.failOpen;
    const b = new FakeBackend(this, ext, mm);
    this.backends.push(b);
    return b;
  }

  /** Backends not yet released. */
  live(): FakeBackend[] {
    return this.backends.filter((b) => !b.released);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// A host with vfio-core

/** A PCI function with nothing behind it, for IOMMU groups and driver binding. */
export function pciStub(bdf: string): PciDeviceModel {
  return {
    bdf: bdf as Bdf,
    config: new PciConfigSpace({ vendorId: 0x8086, deviceId: 0x1234, classCode: 0x030000, bars: [] }),
    barRead: () => 0,
    barWrite: () => {},
    reset: () => {},
  };
}

export interface World {
  readonly host: Host;
  readonly core: VfioCore;
  readonly vmm: Process;
  readonly trace: TraceRecorder;
  readonly driver: FakeIommuDriver;
}

/**
 * A host (64 MiB, IOMMU on) with vfio-core, a fake IOMMU driver, "vfio-pci" declared as a vfio bus driver, and a VMM
 * process.
 */
export function makeWorld(
  opts: { noiommu?: boolean; iommuEnabled?: boolean; fakeExtensions?: readonly number[] } = {},
): World {
  const host = new Host({ memoryBytes: 64 * 1024 * 1024, iommu: { enabled: opts.iommuEnabled ?? true } });
  const trace = new TraceRecorder(host.tracer);
  const core = new VfioCore({
    devfs: host.devfs,
    pci: host.pci,
    iommu: host.iommu,
    tracer: host.tracer,
    noiommu: opts.noiommu ?? false,
  });
  const driver = new FakeIommuDriver("fake-type1", opts.fakeExtensions);
  core.registerIommuDriver(driver);
  core.registerBusDriver("vfio-pci");
  const vmm = host.spawn("qemu");
  return { host, core, vmm, trace, driver };
}

/** Plugs a PCI function in (new IOMMU group unless `group`), binds it to `driver` and returns its IOMMU group. */
export function addPci(w: World, bdf: string, driver: string | undefined, group?: number): number {
  const id = w.host.addPciDevice(pciStub(bdf), group === undefined ? {} : { group });
  if (driver !== undefined) w.host.pci.bind(bdf as Bdf, driver, {});
  return id;
}

/** The 4-byte int a SET_CONTAINER pointer points at. */
export function intArg(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, n, true);
  return b;
}

/** A NUL-terminated name for GET_DEVICE_FD. */
export function nameArg(s: string): Uint8Array {
  const t = new TextEncoder().encode(s);
  const b = new Uint8Array(t.length + 1);
  b.set(t);
  return b;
}

export interface OpenedDevice {
  readonly group: number;
  readonly container: number;
  readonly groupFd: number;
  readonly deviceFd: number;
}

/**
 * Registers `dev` (as a vfio-pci function at `bdf` in its own IOMMU group, or as an emulated device) and walks the
 * VMM through container, group, SET_IOMMU(TYPE1v2) and GET_DEVICE_FD.
 */
export function openDevice(w: World, dev: FakeDevice, how: { bdf: string } | "emulated"): OpenedDevice {
  let group: number;
  if (how === "emulated") group = w.core.registerEmulatedDevice(dev);
  else {
    addPci(w, how.bdf, "vfio-pci");
    group = w.core.registerDevice(dev, { type: "iommu", bdf: how.bdf as Bdf });
  }
  const container = w.vmm.open("/dev/vfio/vfio");
  const groupFd = w.vmm.open(`/dev/vfio/${group}`);
  w.vmm.ioctl(groupFd, VFIO_GROUP_SET_CONTAINER, intArg(container));
  w.vmm.ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  const deviceFd = w.vmm.ioctl(groupFd, VFIO_GROUP_GET_DEVICE_FD, nameArg(dev.name));
  return { group, container, groupFd, deviceFd };
}

// The self-test runs only when this file is the test entry, not in every file that imports the harness.
const isEntry = process.argv[1]?.endsWith("harness.test.ts") === true;
describe("test harness fakes", { skip: !isEntry && "run by harness.test.ts itself" }, () => {
  it("the fake backend maps, refuses overlaps and unmaps with a byte count", () => {
    const drv = new FakeIommuDriver();
    const b = drv.open(VFIO_TYPE1v2_IOMMU, {} as AddressSpace) as FakeBackend;
    const map = VfioIommuType1DmaMap.encode({ argsz: 32, flags: 3, vaddr: 0x10000, iova: 0x1000, size: 0x2000 });
    assert.equal(b.ioctl(VFIO_IOMMU_MAP_DMA, map), 0);
    assert.throws(() => b.ioctl(VFIO_IOMMU_MAP_DMA, map), errno(Errno.EEXIST));
    const unmap = VfioIommuType1DmaUnmap.encode({ argsz: 24, flags: 0, iova: 0, size: 0x10000 });
    b.ioctl(VFIO_IOMMU_UNMAP_DMA, unmap);
    assert.equal(VfioIommuType1DmaUnmap.getNumber(unmap, "size"), 0x2000);
    assert.equal(b.mappings.size, 0);
  });
  it("the fake device records calls and serves region bytes", () => {
    const d = new FakeDevice({ name: "x" });
    d.regionWrite(1, 4, Uint8Array.of(9, 8));
    const out = new Uint8Array(2);
    d.regionRead(1, 4, out);
    assert.deepEqual([...out], [9, 8]);
    assert.throws(() => d.regionRead(1, 0xff, new Uint8Array(2)), errno(Errno.EINVAL));
  });
});
