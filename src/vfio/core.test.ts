import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, iova, KernelError, readU32LE, readU64LE } from "../core/index.ts";
import { type Bdf, PROT_READ, PROT_WRITE } from "../host/index.ts";
import { VFIO_CONTAINER_PATH } from "./core.ts";
import {
  addPci,
  errno,
  FakeDevice,
  FakeIommuDriver,
  intArg,
  makeWorld,
  nameArg,
  pciStub,
  type World,
} from "./harness.test.ts";
import {
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
  VFIO_GROUP_UNSET_CONTAINER,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_NOIOMMU_IOMMU,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_SET_IOMMU,
  VFIO_SPAPR_TCE_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
} from "./uapi/index.ts";

// ---- byte-level helpers: what a C VMM puts in memory before each ioctl ----

function statusArg(argsz = 8): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setUint32(0, argsz, true);
  return b;
}
function status(w: World, gfd: number): number {
  const b = statusArg();
  w.vmm.ioctl(gfd, VFIO_GROUP_GET_STATUS, b);
  return readU32LE(b, 4);
}
function mapArg(iovaAddr: number, vaddr: number, size: number, flags = 3): Uint8Array {
  return VfioIommuType1DmaMap.encode({ argsz: 32, flags, vaddr, iova: iovaAddr, size });
}

const GPU = "0000:00:02.0";
const AUDIO = "0000:00:03.0";

/** A world with one vfio-pci device in its own IOMMU group, registered with vfio-core. */
function oneDevice(opts: { noiommu?: boolean } = {}): { w: World; dev: FakeDevice; group: number } {
  const w = makeWorld(opts);
  const hostGroup = addPci(w, GPU, "vfio-pci");
  const dev = new FakeDevice({ name: GPU });
  const group = w.core.registerDevice(dev, { type: "iommu", bdf: GPU as Bdf });
  assert.equal(group, hostGroup);
  return { w, dev, group };
}

/** Everything a failing ioctl must leave alone. */
function snapshot(w: World, dev?: FakeDevice): string {
  return JSON.stringify({
    core: w.core.inspect(),
    backends: w.driver.backends.map((b) => ({ g: b.groups, m: [...b.mappings.keys()], r: b.released })),
    dev: dev ? { calls: dev.calls, irq: dev.irqSets.length } : null,
    fds: w.vmm.files.list().map((f) => [f.fd, f.file.kind]),
  });
}
function unchanged(w: World, dev: FakeDevice | undefined, fn: () => unknown, code: number): void {
  const before = snapshot(w, dev);
  assert.throws(fn, errno(code));
  assert.equal(snapshot(w, dev), before, "a failing ioctl changed state");
}

describe("vfio-core: the documented sequence, byte by byte", () => {
  it("container, group, IOMMU, device, info, map, unmap, close", () => {
    const { w, dev, group } = oneDevice();
    const { vmm } = w;

    const c = vmm.open(VFIO_CONTAINER_PATH);
    assert.equal(vmm.ioctl(c, VFIO_GET_API_VERSION), VFIO_API_VERSION);
    assert.equal(vmm.ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 1);
    assert.equal(vmm.ioctl(c, VFIO_CHECK_EXTENSION, VFIO_NOIOMMU_IOMMU), 0, "no-IOMMU mode is off");
    assert.equal(vmm.ioctl(c, VFIO_CHECK_EXTENSION, 77), 0);

    const g = vmm.open(`/dev/vfio/${group}`);
    const st = statusArg();
    assert.equal(vmm.ioctl(g, VFIO_GROUP_GET_STATUS, st), 0);
    assert.deepEqual([...st], [8, 0, 0, 0, VFIO_GROUP_FLAGS_VIABLE, 0, 0, 0]);

    assert.equal(vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c)), 0);
    assert.equal(status(w, g), VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET);
    assert.equal(vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), 0);
    const backend = w.driver.backends[0]!;
    assert.deepEqual(backend.groups, [group]);
    assert.equal(backend.ext, VFIO_TYPE1v2_IOMMU);
    assert.equal(backend.mm, vmm.mm, "the backend gets the container opener's address space");

    const d = vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    assert.equal(w.vmm.files.get(d).kind, "vfio-device");
    assert.deepEqual(dev.calls, ["open"]);
    assert.equal(dev.dma, undefined, "a device behind a real IOMMU gets no pin interface");

    const info = new Uint8Array(24).fill(0xaa);
    new DataView(info.buffer).setUint32(0, 24, true);
    assert.equal(vmm.ioctl(d, VFIO_DEVICE_GET_INFO, info), 0);
    // argsz, flags, num_regions, num_irqs, cap_offset, pad
    assert.deepEqual(
      [0, 4, 8, 12, 16, 20].map((o) => readU32LE(info, o)),
      [24, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET, 2, 2, 0, 0],
    );

    const region = new Uint8Array(32);
    new DataView(region.buffer).setUint32(0, 32, true);
    new DataView(region.buffer).setUint32(8, 1, true);
    assert.equal(vmm.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, region), 0);
    assert.equal(readU32LE(region, 4), VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE);
    assert.equal(readU32LE(region, 8), 1);
    assert.equal(readU64LE(region, 16), 0x100n);
    assert.equal(readU64LE(region, 24), 1n << 40n, "region 1 lives at 1 << 40 in the device fd");

    const ram = vmm.mm.mmap(0x100000, PROT_READ | PROT_WRITE);
    assert.equal(vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, mapArg(0, ram, 0x100000)), 0);
    assert.deepEqual([...backend.mappings.values()], [{ iova: 0, vaddr: ram, size: 0x100000, flags: 3 }]);
    const unmap = VfioIommuType1DmaUnmap.encode({ argsz: 24, flags: 0, iova: 0, size: 0x100000 });
    assert.equal(vmm.ioctl(c, VFIO_IOMMU_UNMAP_DMA, unmap), 0);
    assert.equal(readU64LE(unmap, 16), 0x100000n, "UNMAP_DMA writes back the bytes unmapped");

    vmm.close(d);
    assert.deepEqual(dev.calls, ["open", "close"]);
    vmm.close(g);
    assert.equal(backend.released, true, "closing the last group releases the backend");
    vmm.close(c);
    const s = w.core.inspect();
    assert.deepEqual(s.containers, []);
    assert.equal(s.groups[0]!.open, false);
    w.core.checkInvariants();

    const names = w.trace.records.map((r) => r.name).filter((n) => n.startsWith("vfio."));
    assert.deepEqual(
      names.filter((n) => n !== "vfio.region.read"),
      [
        "vfio.iommu_driver.register",
        "vfio.iommu_driver.register",
        "vfio.group.add",
        "vfio.device.register",
        "vfio.container.open",
        "vfio.group.open",
        "vfio.group.set_container",
        "vfio.container.set_iommu",
        "vfio.device.open",
        "vfio.device.close",
        "vfio.container.release_iommu",
        "vfio.group.unset_container",
        "vfio.group.close",
        "vfio.container.close",
      ],
    );
  });

  it("a VMM that exits releases everything, in any fd order", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU);
    w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    assert.equal(dev.opens, 1, "open_device runs for the first fd only");
    w.vmm.exit();
    assert.equal(dev.closes, 1, "close_device runs once, for the last fd");
    assert.equal(w.driver.live().length, 0);
    assert.deepEqual(w.core.inspect().containers, []);
    w.core.checkInvariants();
  });
});

describe("vfio-core: container", () => {
  it("CHECK_EXTENSION polls drivers most recent first and returns the first positive answer", () => {
    const w = makeWorld();
    const a = new FakeIommuDriver("a", [42]);
    a.checkExtension = (ext) => (ext === 42 ? 5 : 0);
    const b = new FakeIommuDriver("b", [42]);
    b.checkExtension = (ext) => (ext === 42 ? 7 : 0);
    w.core.registerIommuDriver(a);
    w.core.registerIommuDriver(b);
    assert.deepEqual(
      w.core.iommuDrivers().map((d) => d.name),
      ["b", "a", "fake-type1", "vfio-noiommu"],
    );
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    assert.equal(w.vmm.ioctl(c, VFIO_CHECK_EXTENSION, 42), 7);
    assert.equal(w.vmm.ioctl(c, VFIO_CHECK_EXTENSION, new Uint8Array(8)), 0, "a pointer is no extension");
    assert.throws(() => w.core.registerIommuDriver(new FakeIommuDriver("a")), errno(Errno.EINVAL));
  });

  it("with a backend set, CHECK_EXTENSION asks only the backend", () => {
    const { w, group } = oneDevice();
    const other = new FakeIommuDriver("other", [99]);
    w.core.registerIommuDriver(other);
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    assert.equal(w.vmm.ioctl(c, VFIO_CHECK_EXTENSION, 99), 1);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    assert.equal(w.vmm.ioctl(c, VFIO_CHECK_EXTENSION, 99), 0);
    assert.equal(w.vmm.ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU), 1);
  });

  it("SET_IOMMU: EINVAL without a group or with a backend, ENODEV when nobody accepts", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    unchanged(w, dev, () => w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), Errno.EINVAL);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    unchanged(w, dev, () => w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_SPAPR_TCE_IOMMU), Errno.ENODEV);
    unchanged(w, dev, () => w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU), Errno.ENODEV);
    unchanged(w, dev, () => w.vmm.ioctl(c, VFIO_SET_IOMMU, new Uint8Array(4)), Errno.ENODEV);
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    unchanged(w, dev, () => w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), Errno.EINVAL);
    assert.equal(w.driver.backends.length, 1);
  });

  it("SET_IOMMU: a driver whose open fails reports its error; a failed attach is unwound and the next driver tried", () => {
    const w = makeWorld();
    const g1 = addPci(w, GPU, "vfio-pci");
    const g2 = addPci(w, AUDIO, "vfio-pci");
    w.core.registerDevice(new FakeDevice({ name: GPU }), { type: "iommu", bdf: GPU as Bdf });
    w.core.registerDevice(new FakeDevice({ name: AUDIO }), { type: "iommu", bdf: AUDIO as Bdf });
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    for (const id of [g1, g2]) w.vmm.ioctl(w.vmm.open(`/dev/vfio/${id}`), VFIO_GROUP_SET_CONTAINER, intArg(c));

    w.driver.failOpen = new KernelError(Errno.ENOMEM, "fake: no memory");
    unchanged(w, undefined, () => w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), Errno.ENOMEM);
    w.driver.failOpen = undefined;

    // Linux attaches the most recently added group first: g2 attaches, g1 fails, g2 is detached again.
    w.driver.failAttach.add(g1);
    const second = new FakeIommuDriver("second");
    w.core.registerIommuDriver(second);
    second.failAttach.add(g1);
    assert.throws(() => w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), errno(Errno.EBUSY));
    for (const b of [...w.driver.backends, ...second.backends]) {
      assert.deepEqual(b.log, [`attach ${g2}`, `detach ${g2}`, "release"]);
    }
    assert.equal(w.core.inspect().containers[0]!.driver, undefined);
    second.failAttach.clear();
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    assert.equal(
      w.core.inspect().containers[0]!.driver,
      "second",
      "the most recently registered driver is tried first",
    );
    assert.deepEqual(second.live()[0]!.groups, [g2, g1]);
  });

  it("other requests: EINVAL without a backend, the backend's answer with one", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    unchanged(w, dev, () => w.vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, mapArg(0, 0x10000, 0x1000)), Errno.EINVAL);
    unchanged(w, dev, () => w.vmm.ioctl(c, VFIO_GROUP_GET_STATUS, statusArg()), Errno.EINVAL);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    unchanged(w, dev, () => w.vmm.ioctl(c, VFIO_GROUP_GET_STATUS, statusArg()), Errno.ENOTTY);
    const info = new Uint8Array(24);
    info[0] = 24;
    assert.equal(w.vmm.ioctl(c, VFIO_IOMMU_GET_INFO, info), 0);
    assert.equal(readU64LE(info, 8), 0x1000n);
  });

  it("the last group leaving releases the backend and its mappings; the container can be set up again", () => {
    const { w, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    w.vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, mapArg(0x1000, 0x10000, 0x1000));
    const first = w.driver.backends[0]!;
    w.vmm.ioctl(g, VFIO_GROUP_UNSET_CONTAINER);
    assert.equal(first.released, true);
    assert.equal(first.mappings.size, 0);
    assert.throws(() => w.vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, mapArg(0, 0x10000, 0x1000)), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), errno(Errno.EINVAL));
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    assert.equal(w.driver.live().length, 1);
    assert.notEqual(w.driver.live()[0], first);
  });

  it("closing the container fd while a group holds it keeps it alive until the group lets go", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    w.vmm.close(c);
    assert.equal(w.core.inspect().containers.length, 1);
    assert.equal(status(w, g), VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET);
    const d = w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    assert.equal(dev.opens, 1);
    w.vmm.close(d);
    assert.equal(w.trace.count("vfio.container.close"), 0);
    w.vmm.close(g);
    assert.equal(w.trace.count("vfio.container.close"), 1);
    assert.deepEqual(w.core.inspect().containers, []);
  });
});

describe("vfio-core: group", () => {
  it("a second open is EBUSY; after close it can be opened again", () => {
    const { w, group } = oneDevice();
    const g = w.vmm.open(`/dev/vfio/${group}`);
    assert.throws(() => w.vmm.open(`/dev/vfio/${group}`), errno(Errno.EBUSY));
    const other = w.host.spawn("other");
    assert.throws(() => other.open(`/dev/vfio/${group}`), errno(Errno.EBUSY));
    w.vmm.close(g);
    other.close(other.open(`/dev/vfio/${group}`));
  });

  it("GET_STATUS: argsz below 8 is EINVAL; the reply writes flags only", () => {
    const { w, group } = oneDevice();
    const g = w.vmm.open(`/dev/vfio/${group}`);
    assert.throws(() => w.vmm.ioctl(g, VFIO_GROUP_GET_STATUS, statusArg(7)), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.ioctl(g, VFIO_GROUP_GET_STATUS, new Uint8Array(4)), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.ioctl(g, VFIO_GROUP_GET_STATUS, 0x1000), errno(Errno.EFAULT));
    const big = new Uint8Array(16).fill(0xee);
    new DataView(big.buffer).setUint32(0, 16, true);
    w.vmm.ioctl(g, VFIO_GROUP_GET_STATUS, big);
    assert.deepEqual([...big.subarray(4)], [1, 0, 0, 0, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
  });

  it("SET_CONTAINER errors: EFAULT, EBADF, EBADFD, EINVAL, each changing nothing", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const c2 = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    const efd = w.vmm.eventfd();
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, c), Errno.EFAULT);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(99)), Errno.EBADF);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(-1)), Errno.EBADF);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(efd)), Errno.EBADFD);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(g)), Errno.EBADFD);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c2)), Errno.EINVAL);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c)), Errno.EINVAL);
  });

  it("a group that is not viable cannot join a container: EPERM naming the device and its driver", () => {
    const w = makeWorld();
    const id = addPci(w, GPU, "vfio-pci");
    addPci(w, AUDIO, "i915", id);
    w.core.registerDevice(new FakeDevice({ name: GPU }), { type: "iommu", bdf: GPU as Bdf });
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${id}`);
    assert.equal(status(w, g), 0, "not viable");
    const before = JSON.stringify(w.core.inspect());
    assert.throws(
      () => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c)),
      (e: unknown) =>
        e instanceof KernelError &&
        e.errno === Errno.EPERM &&
        e.message === `group ${id} is not viable: device ${AUDIO} is bound to i915; unbind it or bind it to vfio-pci`,
    );
    assert.equal(JSON.stringify(w.core.inspect()), before);
    w.host.pci.unbind(AUDIO as Bdf);
    assert.equal(status(w, g), VFIO_GROUP_FLAGS_VIABLE, "a device with no driver keeps the group viable");
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    assert.equal(status(w, g), VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET);
  });

  it("a group joining a container that has a backend is attached at once; a refused attach changes nothing", () => {
    const w = makeWorld();
    const g1 = addPci(w, GPU, "vfio-pci");
    const g2 = addPci(w, AUDIO, "vfio-pci");
    w.core.registerDevice(new FakeDevice({ name: GPU }), { type: "iommu", bdf: GPU as Bdf });
    w.core.registerDevice(new FakeDevice({ name: AUDIO }), { type: "iommu", bdf: AUDIO as Bdf });
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const f1 = w.vmm.open(`/dev/vfio/${g1}`);
    const f2 = w.vmm.open(`/dev/vfio/${g2}`);
    w.vmm.ioctl(f1, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    w.driver.failAttach.add(g2);
    unchanged(w, undefined, () => w.vmm.ioctl(f2, VFIO_GROUP_SET_CONTAINER, intArg(c)), Errno.EBUSY);
    w.driver.failAttach.clear();
    w.vmm.ioctl(f2, VFIO_GROUP_SET_CONTAINER, intArg(c));
    assert.deepEqual(w.driver.backends[0]!.groups, [g1, g2]);
    w.vmm.ioctl(f1, VFIO_GROUP_UNSET_CONTAINER);
    assert.equal(w.driver.backends[0]!.released, false, "one group is still in");
    w.vmm.close(f2);
    assert.equal(w.driver.backends[0]!.released, true);
  });

  it("UNSET_CONTAINER: EINVAL without a container, EBUSY while a device is open", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_UNSET_CONTAINER), Errno.EINVAL);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    const d = w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_UNSET_CONTAINER), Errno.EBUSY);
    w.vmm.close(d);
    assert.equal(w.vmm.ioctl(g, VFIO_GROUP_UNSET_CONTAINER), 0);
    assert.equal(status(w, g), VFIO_GROUP_FLAGS_VIABLE);
  });

  it("GET_DEVICE_FD: ENODEV for an unknown name (checked first), EINVAL without container or backend", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg("0000:00:09.0")), Errno.ENODEV);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU)), Errno.EINVAL);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU)), Errno.EINVAL);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg("0000:00:09.0")), Errno.ENODEV);
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, new TextEncoder().encode(GPU)), Errno.EFAULT);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, 0), Errno.EFAULT);
    const long = new Uint8Array(5000).fill(0x41);
    unchanged(w, dev, () => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, long), Errno.EINVAL);
    // A device whose open_device fails: the open was attempted, nothing else changed (no fd, no user of the group).
    dev.failOpen = new KernelError(Errno.EIO, "fake: device refuses");
    unchanged(w, undefined, () => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU)), Errno.EIO);
    assert.deepEqual(dev.calls, ["open"]);
    dev.failOpen = undefined;
    dev.calls.length = 0;
    const withTail = nameArg(GPU);
    const padded = new Uint8Array(withTail.length + 8).fill(0x7a);
    padded.set(withTail);
    const d = w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, padded);
    assert.ok(d >= 3);
    assert.deepEqual(dev.calls, ["open"]);
  });

  it("GET_DEVICE_FD with a full fd table: EMFILE, and the device is closed again", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    w.vmm.files.setLimit(5);
    assert.throws(() => w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU)), errno(Errno.EMFILE));
    assert.deepEqual(dev.calls, ["open", "close"], "Linux reserves the fd first; here the open is undone");
    assert.equal(w.core.inspect().groups[0]!.devices[0]!.openCount, 0);
    assert.equal(w.vmm.ioctl(g, VFIO_GROUP_UNSET_CONTAINER), 0, "no user of the group is left behind");
    w.core.checkInvariants();
  });

  it("requests of other fd kinds are ENOTTY on a group fd", () => {
    const { w, dev, group } = oneDevice();
    const g = w.vmm.open(`/dev/vfio/${group}`);
    for (const req of [VFIO_IOMMU_MAP_DMA, VFIO_GET_API_VERSION, VFIO_SET_IOMMU, VFIO_DEVICE_GET_INFO, 0x5401]) {
      unchanged(w, dev, () => w.vmm.ioctl(g, req, new Uint8Array(32)), Errno.ENOTTY);
    }
  });

  it("device files hold the group: closing the group fd first keeps container and backend until they close", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    const d1 = w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    const d2 = w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    w.vmm.close(g);
    assert.throws(() => w.vmm.open(`/dev/vfio/${group}`), errno(Errno.EBUSY), "still open through its devices");
    assert.equal(w.core.inspect().groups[0]!.container, 1);
    w.vmm.close(d1);
    assert.equal(dev.closes, 0);
    assert.equal(w.driver.backends[0]!.released, false);
    w.vmm.close(d2);
    assert.equal(dev.closes, 1);
    assert.equal(w.driver.backends[0]!.released, true);
    assert.equal(w.core.inspect().groups[0]!.open, false);
    w.vmm.close(w.vmm.open(`/dev/vfio/${group}`));
    w.core.checkInvariants();
  });
});

describe("vfio-core: registry", () => {
  it("devices of one host IOMMU group share a vfio group; viability counts unregistered functions", () => {
    const w = makeWorld();
    const id = addPci(w, GPU, "vfio-pci");
    addPci(w, AUDIO, undefined, id);
    assert.equal(w.core.registerDevice(new FakeDevice({ name: GPU }), { type: "iommu", bdf: GPU as Bdf }), id);
    assert.equal(w.core.registerDevice(new FakeDevice({ name: AUDIO }), { type: "iommu", bdf: AUDIO as Bdf }), id);
    assert.deepEqual(
      w.core.inspect().groups.map((g) => [g.id, g.type, g.path, g.devices.length, g.viable]),
      [[id, "iommu", `/dev/vfio/${id}`, 2, true]],
    );
    assert.throws(
      () => w.core.registerDevice(new FakeDevice({ name: GPU }), { type: "iommu", bdf: GPU as Bdf }),
      errno(Errno.EEXIST),
    );
  });

  it("emulated devices get fresh groups above the host's, with pin access and dma_unmap registration", () => {
    const w = makeWorld();
    const host0 = addPci(w, GPU, "i915");
    addPci(w, AUDIO, undefined);
    const mdev = new FakeDevice({ name: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", dmaUnmap: true });
    const id = w.core.registerEmulatedDevice(mdev);
    assert.equal(id, host0 + 2);
    assert.equal(w.core.registerEmulatedDevice(new FakeDevice({ name: "second" })), host0 + 3);
    assert.equal(w.host.devfs.exists(`/dev/vfio/${id}`), true);
    assert.equal(w.core.inspect().groups.find((g) => g.id === id)!.viable, true);

    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${id}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    w.vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, mapArg(0x100000, 0x10000, 0x4000));
    const d = w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(mdev.name));
    const backend = w.driver.backends[0]!;
    assert.equal(backend.devices.size, 1, "a device with dma_unmap is registered for notifications");
    const dma = mdev.dma!;
    assert.ok(dma, "an emulated device gets pin access");
    assert.deepEqual(dma.pinPages(iova(0x101000), 2, 3), [0x101, 0x102]);
    assert.throws(() => dma.pinPages(iova(0x100000), 0, 3), errno(Errno.EINVAL));
    assert.throws(() => dma.pinPages(iova(0x100000), 513, 3), errno(Errno.E2BIG));
    assert.throws(() => dma.unpinPages(iova(0x100000), 0), errno(Errno.EINVAL));
    dma.unpinPages(iova(0x101000), 2);
    assert.equal(backend.pins.size, 0);
    dma.dmaRw(iova(0x100000), new Uint8Array(4), false);
    assert.throws(() => dma.dmaRw(iova(0x100000), new Uint8Array(0), false), errno(Errno.EINVAL));
    w.vmm.ioctl(
      c,
      VFIO_IOMMU_UNMAP_DMA,
      VfioIommuType1DmaUnmap.encode({ argsz: 24, flags: 0, iova: 0, size: 1 << 30 }),
    );
    assert.deepEqual(mdev.unmaps, [{ iova: 0x100000, length: 0x4000 }]);
    w.vmm.close(d);
    assert.equal(backend.devices.size, 0, "unregistered at the last close");
    assert.throws(() => dma.pinPages(iova(0x100000), 1, 3), errno(Errno.EINVAL), "access ends with the session");
  });

  it("unregisterDevice: EBUSY while open; the last device takes the node with it and the group leaves its container", () => {
    const { w, dev, group } = oneDevice();
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    const g = w.vmm.open(`/dev/vfio/${group}`);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
    const d = w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(GPU));
    assert.throws(() => w.core.unregisterDevice(GPU), errno(Errno.EBUSY));
    assert.equal(w.core.inspect().groups.length, 1);
    w.vmm.close(d);
    assert.deepEqual(dev.calls, ["open", "close"]);
    w.core.unregisterDevice(GPU);
    assert.equal(w.host.devfs.exists(`/dev/vfio/${group}`), false);
    assert.deepEqual(w.core.inspect().groups, []);
    assert.equal(w.driver.backends[0]!.released, true, "the removed group left its container");
    assert.throws(() => w.vmm.ioctl(g, VFIO_GROUP_GET_STATUS, statusArg()), errno(Errno.ENODEV));
    assert.throws(() => w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c)), errno(Errno.ENODEV));
    assert.throws(() => w.vmm.ioctl(g, VFIO_GROUP_UNSET_CONTAINER), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.open(`/dev/vfio/${group}`), errno(Errno.ENOENT));
    assert.throws(() => w.core.unregisterDevice(GPU), errno(Errno.ENODEV));
    w.vmm.close(g);
    w.core.checkInvariants();
  });

  it("a device without an IOMMU group: EINVAL, or a no-IOMMU group when the mode is enabled", () => {
    const safe = makeWorld();
    safe.host.pci.add(pciStub(GPU));
    assert.throws(
      () => safe.core.registerDevice(new FakeDevice({ name: GPU }), { type: "iommu", bdf: GPU as Bdf }),
      errno(Errno.EINVAL),
    );
    const off = makeWorld({ iommuEnabled: false });
    addPci(off, GPU, "vfio-pci");
    assert.throws(
      () => off.core.registerDevice(new FakeDevice({ name: GPU }), { type: "iommu", bdf: GPU as Bdf }),
      errno(Errno.EINVAL),
    );
  });
});

describe("vfio-core: no-IOMMU mode", () => {
  function noiommuWorld() {
    const w = makeWorld({ noiommu: true });
    const real = addPci(w, GPU, "vfio-pci");
    w.core.registerDevice(new FakeDevice({ name: GPU }), { type: "iommu", bdf: GPU as Bdf });
    w.host.pci.add(pciStub(AUDIO));
    w.host.pci.bind(AUDIO as Bdf, "vfio-pci", {});
    const fake = w.core.registerDevice(new FakeDevice({ name: AUDIO }), { type: "iommu", bdf: AUDIO as Bdf });
    return { w, real, fake };
  }

  it("gives a device without an IOMMU group a noiommu-<n> node and the NOIOMMU extension", () => {
    const { w, real, fake } = noiommuWorld();
    assert.equal(fake, real + 1);
    assert.equal(w.core.groupPath(fake), `/dev/vfio/noiommu-${fake}`);
    assert.equal(w.host.devfs.exists(`/dev/vfio/${fake}`), false);
    const c = w.vmm.open(VFIO_CONTAINER_PATH);
    assert.equal(w.vmm.ioctl(c, VFIO_CHECK_EXTENSION, VFIO_NOIOMMU_IOMMU), 1);
    const g = w.vmm.open(`/dev/vfio/noiommu-${fake}`);
    assert.equal(status(w, g), VFIO_GROUP_FLAGS_VIABLE);
    w.vmm.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
    assert.equal(w.vmm.ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 0, "a no-IOMMU container skips type1");
    assert.throws(() => w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), errno(Errno.ENODEV));
    w.vmm.ioctl(c, VFIO_SET_IOMMU, VFIO_NOIOMMU_IOMMU);
    assert.equal(w.core.inspect().containers[0]!.driver, "vfio-noiommu");
    assert.throws(() => w.vmm.ioctl(c, VFIO_IOMMU_MAP_DMA, mapArg(0, 0x10000, 0x1000)), errno(Errno.ENOTTY));
    const d = w.vmm.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, nameArg(AUDIO));
    assert.ok(d >= 3);
  });

  it("no-IOMMU and IOMMU groups never share a container (EPERM, either order)", () => {
    const { w, real, fake } = noiommuWorld();
    const c1 = w.vmm.open(VFIO_CONTAINER_PATH);
    const c2 = w.vmm.open(VFIO_CONTAINER_PATH);
    const gr = w.vmm.open(`/dev/vfio/${real}`);
    const gf = w.vmm.open(`/dev/vfio/noiommu-${fake}`);
    w.vmm.ioctl(gr, VFIO_GROUP_SET_CONTAINER, intArg(c1));
    unchanged(w, undefined, () => w.vmm.ioctl(gf, VFIO_GROUP_SET_CONTAINER, intArg(c1)), Errno.EPERM);
    w.vmm.ioctl(gf, VFIO_GROUP_SET_CONTAINER, intArg(c2));
    w.vmm.ioctl(gr, VFIO_GROUP_UNSET_CONTAINER);
    unchanged(w, undefined, () => w.vmm.ioctl(gr, VFIO_GROUP_SET_CONTAINER, intArg(c2)), Errno.EPERM);
  });
});
