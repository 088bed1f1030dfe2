/**
 * Fuzz of vfio-core through the public face: random request numbers (mostly VFIO's 0x3b64..0x3b76, some anything),
 * random integer and byte-buffer arguments, and enough well-formed steps (SET_CONTAINER with a real fd, SET_IOMMU with
 * a real extension, GET_DEVICE_FD with a real name, MAP_DMA of real memory, pins by the mediated device, device
 * (un)registration by the host) to reach every state. After every step: no exception but KernelError escapes and
 * vfio-core's invariants hold; after the VMM exits: every container, group, device, backend, pin and locked page is
 * released.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type Iova, iova, KernelError, type Pfn } from "../core/index.ts";
import { type Bdf, PROT_READ, PROT_WRITE } from "../host/index.ts";
import { addPci, FakeDevice, intArg, makeWorld, nameArg } from "./harness.test.ts";
import * as vfio from "./index.ts";
import { type1Driver } from "./type1/index.ts";

const GPU = "0000:00:02.0";
const AUDIO = "0000:00:03.0";
const MDEV = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const FAKE_EXT = 42;
const VFIO_REQ_LO = 0x3b64;
const VFIO_REQ_HI = 0x3b76;

/** A mediated device that pins through vfio_pin_pages and unpins in dma_unmap, like a vGPU. */
class Mdev extends FakeDevice {
  readonly pinned = new Map<number, number>();
  constructor() {
    super({ name: MDEV, irqs: [1, 2] });
    Object.assign(this, {
      dmaUnmap: (at: Iova, length: number) => {
        for (const [gpa, n] of [...this.pinned]) {
          if (gpa >= at && gpa < at + length) {
            for (let k = 0; k < n; k++) this.dma!.unpinPages(iova(gpa), 1);
            this.pinned.delete(gpa);
          }
        }
      },
    });
  }
  pin(gpa: number): Pfn | undefined {
    if (this.dma === undefined) return undefined;
    const [f] = this.dma.pinPages(iova(gpa), 1, 3);
    this.pinned.set(gpa, (this.pinned.get(gpa) ?? 0) + 1);
    return f;
  }
  override close(): void {
    // close_device must drop every pin the session took.
    for (const [gpa, n] of this.pinned) for (let k = 0; k < n; k++) this.dma!.unpinPages(iova(gpa), 1);
    this.pinned.clear();
    super.close();
  }
}

type Arg = { kind: "int"; value: number } | { kind: "fdInt"; pick: number } | { kind: "bytes"; bytes: Uint8Array };
type Action =
  | { op: "openContainer" }
  | { op: "openGroup"; which: number }
  | { op: "close"; pick: number }
  | { op: "ioctl"; pick: number; request: number; arg: Arg }
  | { op: "setContainer"; group: number; container: number }
  | { op: "setIommu"; pick: number; ext: number }
  | { op: "getDevice"; pick: number; name: number }
  | { op: "mapDma"; pick: number; iovaPage: number; pages: number }
  | { op: "unmapDma"; pick: number; iovaPage: number; pages: number }
  | { op: "rw"; pick: number; index: number; offset: number; length: number; write: boolean }
  | { op: "mmap"; pick: number; index: number }
  | { op: "eventfd" }
  | { op: "pin"; page: number }
  | { op: "toggle"; which: number }
  | { op: "setup"; which: number; ext: number };

const pick = fc.nat({ max: 15 });
const argArb: fc.Arbitrary<Arg> = fc.oneof(
  fc.record({ kind: fc.constant("int" as const), value: fc.oneof(fc.integer({ min: -2, max: 12 }), fc.integer()) }),
  fc.record({ kind: fc.constant("fdInt" as const), pick }),
  fc.record({ kind: fc.constant("bytes" as const), bytes: fc.uint8Array({ maxLength: 80 }) }),
);
const weighted = <T>(weight: number, arbitrary: fc.Arbitrary<T>) => ({ weight, arbitrary });
/** Weighted so that runs reach open devices, backends and pins, not only EBADF. */
const actionArb: fc.Arbitrary<Action> = fc.oneof(
  weighted(3, fc.constant({ op: "openContainer" as const })),
  weighted(4, fc.record({ op: fc.constant("openGroup" as const), which: fc.nat({ max: 3 }) })),
  weighted(2, fc.record({ op: fc.constant("close" as const), pick })),
  weighted(
    6,
    fc.record({
      op: fc.constant("ioctl" as const),
      pick,
      request: fc.oneof(fc.integer({ min: VFIO_REQ_LO, max: VFIO_REQ_HI }), fc.nat({ max: 0xffffffff })),
      arg: argArb,
    }),
  ),
  weighted(4, fc.record({ op: fc.constant("setContainer" as const), group: pick, container: pick })),
  weighted(3, fc.record({ op: fc.constant("setIommu" as const), pick, ext: fc.constantFrom(1, 3, 8, FAKE_EXT, 2, 0) })),
  weighted(4, fc.record({ op: fc.constant("getDevice" as const), pick, name: fc.nat({ max: 3 }) })),
  weighted(
    2,
    fc.record({
      op: fc.constant("mapDma" as const),
      pick,
      iovaPage: fc.nat({ max: 64 }),
      pages: fc.integer({ min: 1, max: 8 }),
    }),
  ),
  weighted(
    2,
    fc.record({
      op: fc.constant("unmapDma" as const),
      pick,
      iovaPage: fc.nat({ max: 64 }),
      pages: fc.integer({ min: 0, max: 80 }),
    }),
  ),
  weighted(
    2,
    fc.record({
      op: fc.constant("rw" as const),
      pick,
      index: fc.nat({ max: 3 }),
      offset: fc.nat({ max: 0x300 }),
      length: fc.nat({ max: 16 }),
      write: fc.boolean(),
    }),
  ),
  weighted(1, fc.record({ op: fc.constant("mmap" as const), pick, index: fc.nat({ max: 2 }) })),
  weighted(1, fc.constant({ op: "eventfd" as const })),
  weighted(3, fc.record({ op: fc.constant("pin" as const), page: fc.nat({ max: 72 }) })),
  weighted(1, fc.record({ op: fc.constant("toggle" as const), which: fc.nat({ max: 2 }) })),
  weighted(
    3,
    fc.record({ op: fc.constant("setup" as const), which: fc.nat({ max: 2 }), ext: fc.constantFrom(1, 3, FAKE_EXT) }),
  ),
);

function run(actions: readonly Action[]): void {
  const w = makeWorld({ fakeExtensions: [FAKE_EXT] });
  const { core, host, vmm } = w;
  core.registerIommuDriver(type1Driver({ iommu: host.iommu, physmem: host.physmem, tracer: host.tracer }));
  const g1 = addPci(w, GPU, "vfio-pci");
  const g2 = addPci(w, AUDIO, "vfio-pci");
  const devices: FakeDevice[] = [new FakeDevice({ name: GPU }), new FakeDevice({ name: AUDIO }), new Mdev()];
  const registered = [true, true, true];
  core.registerDevice(devices[0]!, { type: "iommu", bdf: GPU as Bdf });
  core.registerDevice(devices[1]!, { type: "iommu", bdf: AUDIO as Bdf });
  let g3 = core.registerEmulatedDevice(devices[2]!);
  const mdev = devices[2] as Mdev;
  const groupPaths = () => [`/dev/vfio/${g1}`, `/dev/vfio/${g2}`, `/dev/vfio/${g3}`, "/dev/vfio/999"];
  const names = [GPU, AUDIO, MDEV, "nope"];
  const ram = vmm.mm.mmap(64 * 4096, PROT_READ | PROT_WRITE);

  // Picks 0..11 name an open fd (of the wanted kind when one is given and open), 12..15 a raw number (often bad).
  const fdAt = (p: number, kind?: string): number => {
    const all = vmm.files.list();
    const ofKind = kind === undefined ? all : all.filter((f) => f.file.kind === kind);
    const list = ofKind.length > 0 ? ofKind : all;
    return list.length === 0 || p >= 12 ? p : list[p % list.length]!.fd;
  };
  const argOf = (a: Arg): number | Uint8Array =>
    a.kind === "int" ? a.value : a.kind === "fdInt" ? intArg(fdAt(a.pick)) : a.bytes.slice();

  const step = (a: Action): void => {
    switch (a.op) {
      case "openContainer":
        vmm.open(vfio.VFIO_CONTAINER_PATH);
        return;
      case "openGroup":
        vmm.open(groupPaths()[a.which]!);
        return;
      case "close":
        vmm.close(fdAt(a.pick));
        return;
      case "ioctl":
        vmm.ioctl(fdAt(a.pick), a.request, argOf(a.arg));
        return;
      case "setContainer":
        vmm.ioctl(
          fdAt(a.group, "vfio-group"),
          vfio.VFIO_GROUP_SET_CONTAINER,
          intArg(fdAt(a.container, "vfio-container")),
        );
        return;
      case "setIommu":
        vmm.ioctl(fdAt(a.pick, "vfio-container"), vfio.VFIO_SET_IOMMU, a.ext);
        return;
      case "getDevice":
        vmm.ioctl(fdAt(a.pick, "vfio-group"), vfio.VFIO_GROUP_GET_DEVICE_FD, nameArg(names[a.name]!));
        return;
      case "mapDma": {
        const buf = vfio.uapi.VfioIommuType1DmaMap.encode({
          argsz: 32,
          flags: 3,
          vaddr: ram + Math.min(a.iovaPage, 64 - a.pages) * 4096,
          iova: a.iovaPage * 4096,
          size: a.pages * 4096,
        });
        vmm.ioctl(fdAt(a.pick, "vfio-container"), vfio.VFIO_IOMMU_MAP_DMA, buf);
        return;
      }
      case "unmapDma": {
        const buf = vfio.uapi.VfioIommuType1DmaUnmap.encode({
          argsz: 24,
          flags: 0,
          iova: a.iovaPage * 4096,
          size: a.pages * 4096,
        });
        vmm.ioctl(fdAt(a.pick, "vfio-container"), vfio.VFIO_IOMMU_UNMAP_DMA, buf);
        return;
      }
      case "rw": {
        const buf = new Uint8Array(a.length);
        const off = a.index * 2 ** 40 + a.offset;
        if (a.write) vmm.pwrite(fdAt(a.pick, "vfio-device"), buf, off);
        else vmm.pread(fdAt(a.pick, "vfio-device"), buf, off);
        return;
      }
      case "mmap":
        vmm.mmapFile(fdAt(a.pick, "vfio-device"), a.index * 2 ** 40, 4096);
        return;
      case "eventfd":
        vmm.eventfd();
        return;
      case "pin":
        mdev.pin(a.page * 4096);
        return;
      case "setup": {
        // The documented sequence in one step (each part may fail on the state earlier steps left).
        const c = vmm.open(vfio.VFIO_CONTAINER_PATH);
        const g = vmm.open(groupPaths()[a.which]!);
        vmm.ioctl(g, vfio.VFIO_GROUP_SET_CONTAINER, intArg(c));
        vmm.ioctl(c, vfio.VFIO_SET_IOMMU, a.ext);
        if (a.ext !== FAKE_EXT) {
          const map = { argsz: 32, flags: 3, vaddr: ram, iova: 0, size: 16 * 4096 };
          vmm.ioctl(c, vfio.VFIO_IOMMU_MAP_DMA, vfio.uapi.VfioIommuType1DmaMap.encode(map));
        }
        vmm.ioctl(g, vfio.VFIO_GROUP_GET_DEVICE_FD, nameArg(names[a.which]!));
        return;
      }
      case "toggle": {
        const dev = devices[a.which]!;
        if (registered[a.which]) {
          core.unregisterDevice(dev.name);
          registered[a.which] = false;
        } else {
          if (a.which === 2) g3 = core.registerEmulatedDevice(dev);
          else core.registerDevice(dev, { type: "iommu", bdf: dev.name as Bdf });
          registered[a.which] = true;
        }
        return;
      }
    }
  };

  for (const a of actions) {
    try {
      step(a);
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
    }
    core.checkInvariants();
    for (const d of devices) assert.ok(d.opens - d.closes === 0 || d.opens - d.closes === 1, "open/close paired");
  }

  // Close every fd the way exit(2) does, but check before the address space is torn down.
  for (const { fd } of vmm.files.list()) vmm.close(fd);
  const s = core.inspect();
  assert.deepEqual(s.containers, [], "every container released");
  for (const g of s.groups) {
    assert.equal(g.open, false, `group ${g.id} closed`);
    assert.equal(g.container, undefined);
    for (const d of g.devices) assert.equal(d.openCount, 0);
  }
  for (const d of devices) assert.equal(d.opens, d.closes, `${d.name}: every open_device has its close_device`);
  assert.equal(w.driver.live().length, 0, "every fake backend released");
  assert.equal(vmm.mm.lockedVm(), 0, "no page stays charged");
  assert.equal(host.physmem.stats().pinnedFrames, 0, "no frame stays pinned");
  core.checkInvariants();
  vmm.exit();
}

describe("vfio-core fuzz", () => {
  it("random ioctls, arguments and lifecycles keep vfio-core consistent and release everything", () => {
    fc.assert(
      fc.property(fc.array(actionArb, { minLength: 1, maxLength: 40, size: "max" }), (actions) => {
        run(actions);
      }),
      { numRuns: 300 },
    );
  });

  it("a scripted deep run reaches open devices, mappings and pins before exiting", () => {
    // Guards the fuzz against a harness that never gets anywhere: this sequence must succeed step by step.
    const w = makeWorld({ fakeExtensions: [FAKE_EXT] });
    w.core.registerIommuDriver(type1Driver({ iommu: w.host.iommu, physmem: w.host.physmem, tracer: w.host.tracer }));
    const mdev = new Mdev();
    const g = w.core.registerEmulatedDevice(mdev);
    const c = w.vmm.open(vfio.VFIO_CONTAINER_PATH);
    const gf = w.vmm.open(`/dev/vfio/${g}`);
    w.vmm.ioctl(gf, vfio.VFIO_GROUP_SET_CONTAINER, intArg(c));
    w.vmm.ioctl(c, vfio.VFIO_SET_IOMMU, vfio.VFIO_TYPE1v2_IOMMU);
    const ram = w.vmm.mm.mmap(16 * 4096, PROT_READ | PROT_WRITE);
    w.vmm.ioctl(
      c,
      vfio.VFIO_IOMMU_MAP_DMA,
      vfio.uapi.VfioIommuType1DmaMap.encode({ argsz: 32, flags: 3, vaddr: ram, iova: 0, size: 16 * 4096 }),
    );
    w.vmm.ioctl(gf, vfio.VFIO_GROUP_GET_DEVICE_FD, nameArg(MDEV));
    assert.ok(mdev.pin(0x3000) !== undefined);
    assert.equal(w.vmm.mm.lockedVm(), 1);
    for (const { fd } of w.vmm.files.list()) w.vmm.close(fd);
    assert.equal(w.vmm.mm.lockedVm(), 0);
    assert.equal(mdev.pinned.size, 0);
    assert.deepEqual(w.core.inspect().containers, []);
  });
});
