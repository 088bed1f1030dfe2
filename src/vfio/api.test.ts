/**
 * The documented VFIO sequence against the real type1 backend: once at the byte level (what a C VMM writes into
 * memory), once through the typed handles of api.ts; plus the seed's mediated path (an emulated device pinning guest
 * pages through vfio_pin_pages, and unpinning when the VMM unmaps).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, hva, type Iova, iova, PAGE_SIZE, type Pfn, readU32LE, readU64LE } from "../core/index.ts";
import { type Bdf, MSI_WINDOW_END, MSI_WINDOW_START, PROT_READ, PROT_WRITE } from "../host/index.ts";
import { VfioContainerHandle, VfioGroupHandle } from "./api.ts";
import { VFIO_CONTAINER_PATH } from "./core.ts";
import type { VfioCapability } from "./driver.ts";
import { addPci, errno, FakeDevice, intArg, makeWorld, nameArg, type World } from "./harness.test.ts";
import { type1Driver } from "./type1/index.ts";
import {
  parseCapChain,
  sparseMmapCap,
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_SET_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
} from "./uapi/index.ts";

const GPU = "0000:00:02.0";
const MiB = 1024 * 1024;

function withType1(): World {
  const w = makeWorld();
  w.core.registerIommuDriver(type1Driver({ iommu: w.host.iommu, physmem: w.host.physmem, tracer: w.host.tracer }));
  return w;
}

/** An mdev-like device that pins through vfio_pin_pages and unpins in its dma_unmap callback, as GVT-g does. */
class PinningMdev extends FakeDevice {
  readonly pinned = new Map<number, Pfn>();
  constructor(name: string) {
    super({ name });
    Object.assign(this, {
      dmaUnmap: (at: Iova, length: number) => {
        for (const [gpa] of [...this.pinned]) {
          if (gpa >= at && gpa < at + length) {
            this.dma!.unpinPages(iova(gpa), 1);
            this.pinned.delete(gpa);
          }
        }
      },
    });
  }
  /** Pins the guest page at `gpa` (what a shadow GTT write triggers). */
  pin(gpa: number): Pfn {
    const [f] = this.dma!.pinPages(iova(gpa), 1, 3);
    this.pinned.set(gpa, f!);
    return f!;
  }
}

describe("conformance with the real type1 backend", () => {
  it("byte level: the sequence maps guest RAM into the device's IOMMU domain and tears it all down", () => {
    const w = withType1();
    const { vmm, host } = w;
    addPci(w, GPU, "vfio-pci");
    const dev = new FakeDevice({ name: GPU });
    const group = w.core.registerDevice(dev, { type: "iommu", bdf: GPU as Bdf });

    const c = vmm.open(VFIO_CONTAINER_PATH);
    assert.equal(vmm.ioctl(c, VFIO_GET_API_VERSION), VFIO_API_VERSION);
    assert.equal(vmm.ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 1);
    assert.equal(vmm.ioctl(c, VFIO_CHECK_EXTENSION, VFIO_UNMAP_ALL), 1);
    const g = vmm.open(`/dev/vfio/${group}`);
    const st = Uint8Array.of(8, 0, 0, 0, 0, 0, 0, 0);
    vmm.ioctl(g, VFIO_GROUP_GET_STATUS, st);
    assert.equal(readU32LE(st, 4), VFIO_GROUP_FLAGS_VIABLE);
    vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    vmm.ioctl(g, VFIO_GROUP_GET_STATUS, st);
    assert.equal(readU32LE(st, 4), VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET);
    vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    assert.equal(w.core.inspect().containers[0]!.driver, "vfio-iommu-type1");
    const domain = host.iommu.domainOf(GPU as Bdf);
    assert.equal(domain.type, "unmanaged", "type1 moved the group to its own domain");

    const d = vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    const info = new Uint8Array(24);
    info[0] = 24;
    vmm.ioctl(d, VFIO_DEVICE_GET_INFO, info);
    assert.equal(readU32LE(info, 4), VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    const region = new Uint8Array(32);
    region[0] = 32;
    vmm.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, region);
    assert.equal(readU64LE(region, 16), 0x2000n);

    // GET_INFO, two passes: the first raises argsz for the capability chain.
    const small = new Uint8Array(24);
    small[0] = 24;
    vmm.ioctl(c, VFIO_IOMMU_GET_INFO, small);
    const need = readU32LE(small, 0);
    assert.ok(need > 24);
    assert.equal(readU32LE(small, 4), VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    const full = new Uint8Array(need);
    full.set(small.subarray(0, 4));
    vmm.ioctl(c, VFIO_IOMMU_GET_INFO, full);
    const range = parseCapChain(full, readU32LE(full, 16)).find((x) => x.id === VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
    assert.ok(range, "an IOMMU-backed container reports its IOVA ranges");
    const ranges = [];
    for (let i = 0; i < readU32LE(range.bytes, 8); i++) {
      ranges.push([readU64LE(range.bytes, 16 + 16 * i), readU64LE(range.bytes, 24 + 16 * i)]);
    }
    assert.ok(ranges.some(([, end]) => end === BigInt(MSI_WINDOW_START - 1)));
    assert.ok(ranges.some(([start]) => start === BigInt(MSI_WINDOW_END + 1)));

    const ram = vmm.mm.mmap(MiB, PROT_READ | PROT_WRITE);
    vmm.mm.write(hva(ram + 0x3000), Uint8Array.of(0x5a));
    const map = VfioIommuType1DmaMap.encode({ argsz: 32, flags: 3, vaddr: ram, iova: 0x100000, size: MiB });
    assert.equal(vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, map), 0);
    const hpa = host.iommu.translate(GPU as Bdf, iova(0x103000), 1);
    assert.equal(hpa, vmm.mm.translate(hva(ram + 0x3000))! * PAGE_SIZE, "device DMA reaches the VMM's page");
    assert.equal(vmm.mm.lockedVm(), MiB / PAGE_SIZE);
    assert.throws(() => vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, map), errno(Errno.EEXIST));

    const unmap = VfioIommuType1DmaUnmap.encode({ argsz: 24, flags: 0, iova: 0x100000, size: MiB });
    vmm.ioctl(c, VFIO_IOMMU_UNMAP_DMA, unmap);
    assert.equal(readU64LE(unmap, 16), BigInt(MiB));
    assert.equal(host.iommu.translate(GPU as Bdf, iova(0x103000), 1), -1);
    vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, map);

    vmm.close(d);
    vmm.close(g);
    assert.notEqual(host.iommu.domainOf(GPU as Bdf), domain, "the group is back on its default domain");
    assert.equal(vmm.mm.lockedVm(), 0, "releasing the backend unpinned everything");
    vmm.close(c);
    assert.deepEqual(w.core.inspect().containers, []);
    w.core.checkInvariants();
  });

  it("typed API: the same sequence, plus the mediated path (pin on demand, unpin on unmap)", () => {
    const w = withType1();
    const { vmm } = w;
    const mdev = new PinningMdev("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
    const group = w.core.registerEmulatedDevice(mdev);

    const container = VfioContainerHandle.open(vmm);
    assert.equal(container.apiVersion(), 0);
    assert.equal(container.checkExtension(VFIO_TYPE1v2_IOMMU), 1);
    const grp = VfioGroupHandle.open(vmm, group);
    assert.deepEqual(grp.status(), { flags: VFIO_GROUP_FLAGS_VIABLE, viable: true, containerSet: false });
    grp.setContainer(container);
    assert.equal(grp.status().containerSet, true);
    container.setIommu(VFIO_TYPE1v2_IOMMU);
    const info = container.getInfo();
    assert.equal(info.iovaPgsizes & 0xfffn, 0n);
    assert.equal(info.iovaRanges, undefined, "an emulated-only container allows any IOVA");
    assert.equal(info.dmaAvail, 65535);

    const ram = vmm.mm.mmap(4 * MiB, PROT_READ | PROT_WRITE);
    container.mapDma({ iova: 0, vaddr: ram, size: 4 * MiB, read: true, write: true });
    assert.equal(vmm.mm.lockedVm(), 0, "an emulated-only container pins nothing at MAP time");
    assert.equal(container.getInfo().dmaAvail, 65534);

    const dev = grp.getDevice(mdev.name);
    assert.equal(dev.info().numRegions, 2);
    assert.deepEqual(dev.irqInfo(1), { index: 1, flags: mdev.irqInfo(1).flags, count: 4 });
    assert.ok((dev.irqInfo(1).flags & VFIO_IRQ_INFO_EVENTFD) !== 0);

    // The vendor driver pins the guest page a GTT write names; the frame is the VMM's page.
    vmm.mm.write(hva(ram + 0x5000), Uint8Array.of(1));
    const f = mdev.pin(0x5000);
    assert.equal(f, vmm.mm.translate(hva(ram + 0x5000)));
    assert.equal(vmm.mm.lockedVm(), 1);
    // Unmapping guest memory calls the device back; it unpins inside the callback.
    assert.equal(container.unmapDma({ iova: 0, size: 4 * MiB }), 4 * MiB);
    assert.equal(mdev.pinned.size, 0);
    assert.equal(vmm.mm.lockedVm(), 0);

    const e0 = vmm.eventfd();
    dev.setIrqsEventfd(1, 0, [e0, -1]);
    assert.equal(mdev.irqSets.length, 1);
    dev.setIrqsNone(1, 0, 0, "trigger");
    dev.setIrqsBool(0, 0, [true], "mask");
    assert.deepEqual(
      mdev.irqSets.map((s) => [s.action, s.data.kind]),
      [
        ["trigger", "eventfd"],
        ["trigger", "none"],
        ["mask", "bool"],
      ],
    );
    dev.reset();
    assert.equal(mdev.resets, 1);
    assert.equal(dev.write(1, 8, Uint8Array.of(4, 5)), 2);
    assert.deepEqual([...dev.read(1, 8, 2)], [4, 5]);
    assert.equal(dev.regionInfo(1).offset, 2 ** 40);

    dev.close();
    grp.close();
    container.close();
    assert.equal(mdev.closes, 1);
    assert.deepEqual(w.core.inspect().containers, []);
  });

  it("typed API: a DMA interposer takes vfio_dma_rw inside its memory, refuses pins there, and goes when removed", () => {
    const w = withType1();
    const { vmm } = w;
    const mdev = new PinningMdev("83b8f4f2-509f-382f-3c1e-e6bfe0fa1002");
    const group = w.core.registerEmulatedDevice(mdev);
    const container = VfioContainerHandle.open(vmm);
    const grp = VfioGroupHandle.open(vmm, group);
    grp.setContainer(container);
    container.setIommu(VFIO_TYPE1v2_IOMMU);
    const ram = vmm.mm.mmap(MiB, PROT_READ | PROT_WRITE);
    container.mapDma({ iova: 0, vaddr: ram, size: MiB, read: true, write: true });
    const dev = grp.getDevice(mdev.name);
    const ROM = 0xfff00000;
    const rom = new Uint8Array(PAGE_SIZE).fill(0xea);
    const seen: string[] = [];
    const remove = dev.interposeDma({
      covers: (at, length) => at >= ROM && at + length <= ROM + PAGE_SIZE,
      dmaRw: (at, buf, write) => {
        seen.push(`${write ? "w" : "r"}@${at.toString(16)}+${buf.length}`);
        if (!write) buf.set(rom.subarray(at - ROM, at - ROM + buf.length));
      },
    });
    const buf = new Uint8Array(4);
    mdev.dma!.dmaRw(iova(ROM + 8), buf, false);
    assert.deepEqual([...buf], [0xea, 0xea, 0xea, 0xea], "read through the interposer");
    vmm.mm.write(hva(ram + 0x10), Uint8Array.of(7, 8, 9, 10));
    mdev.dma!.dmaRw(iova(0x10), buf, false);
    assert.deepEqual([...buf], [7, 8, 9, 10], "memory type1 holds still goes to type1");
    assert.deepEqual(seen, ["r@fff00008+4"]);
    assert.throws(() => mdev.pin(ROM), errno(Errno.EINVAL), "no host frames to pin behind an interposed window");
    assert.throws(
      () => dev.interposeDma({ covers: () => false, dmaRw: () => {} }),
      errno(Errno.EBUSY),
      "one interposer per open device",
    );
    remove();
    assert.throws(() => mdev.dma!.dmaRw(iova(ROM), buf, false), "removed: type1 answers (nothing mapped there)");
    assert.equal(seen.length, 1);
    dev.close();
    grp.close();
    container.close();
  });

  it("typed API: region capabilities are decoded and mmap maps the region", () => {
    const w = makeWorld();
    const frames = w.host.physmem.allocContiguous(16);
    const sparse = sparseMmapCap([{ offset: 0, size: 0x1000 }]);
    const cap: VfioCapability = { id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, version: 1, body: sparse.subarray(8) };
    const RWM = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
    const dev = new FakeDevice({ name: GPU, regions: [{ flags: RWM, size: 0x2000, caps: [cap] }], mmapFrames: frames });
    addPci(w, GPU, "vfio-pci");
    const group = w.core.registerDevice(dev, { type: "iommu", bdf: GPU as Bdf });
    const c = VfioContainerHandle.open(w.vmm);
    const g = VfioGroupHandle.open(w.vmm, group);
    g.setContainer(c.fd);
    c.setIommu(VFIO_TYPE1_IOMMU);
    const d = g.getDevice(GPU);
    const r = d.regionInfo(0);
    assert.deepEqual(r.sparseMmap, [{ offset: 0, size: 0x1000 }]);
    assert.equal(r.type, undefined);
    assert.equal(r.size, 0x2000);
    const at = d.mmap(0);
    assert.equal(w.vmm.mm.vmaAt(at)?.basePfn, frames);
    assert.throws(() => g.getDevice("nope"), errno(Errno.ENODEV));
    assert.throws(() => g.unsetContainer(), errno(Errno.EBUSY));
    d.close();
    g.unsetContainer();
    assert.equal(g.status().containerSet, false);
  });
});
