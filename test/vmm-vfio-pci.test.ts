/**
 * The same VMM assigns a whole physical device (the edu device bound to vfio-pci), by BDF and by sysfs path, with no
 * device-specific code: MAP_DMA pins every page of guest RAM (locked_vm grows by the RAM size), the device's DMA at a
 * GPA lands in the guest's memory, MSI is injected with the guest's vector, INTx is EOIed by UNMASK, an mmap-able BAR
 * is mapped into the VMM and reached without a syscall, and every failure (RLIMIT_MEMLOCK, a group that is not
 * viable) is reported with its errno and a sentence and leaves nothing half done.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, gpa, type Hpa, isKernelError, type KernelError, type Pfn, SZ_1G } from "../src/core/index.ts";
import {
  EDU_DMA_IRQ,
  EDU_DMA_RUN,
  EDU_DMA_START,
  EDU_DMA_TO_RAM,
  EDU_REG_DMA_CMD,
  EDU_REG_DMA_COUNT,
  EDU_REG_DMA_DST,
  EDU_REG_DMA_SRC,
  EDU_REG_ID,
  EDU_REG_IRQ_ACK,
  EDU_REG_IRQ_RAISE,
  EDU_REG_IRQ_STATUS,
  EDU_REG_LIVENESS,
  EduDevice,
} from "../src/devices/index.ts";
import { type Bdf, type Host, PciConfigSpace, type PciDeviceModel, parseBdf } from "../src/host/index.ts";
import { type AttachedDevice, MSI_ADDRESS, MSI_DATA_BASE, Vmm } from "../src/vmm/index.ts";
import { assertNothingLeft, vmmTestHost } from "../src/vmm/testing.ts";

const MiB = 1024 * 1024;
const BDF: Bdf = parseBdf("0000:00:04.0");
const RAM = 64 * MiB;

function setup(opts: { rlimit?: number; memoryBytes?: number } = {}) {
  const h = vmmTestHost({ memoryBytes: 1024 * MiB });
  const edu = new EduDevice({ bdf: BDF, bus: h.host.pci, dma: h.host.deviceDma(BDF), tracer: h.host.tracer });
  const group = h.host.addPciDevice(edu);
  edu.config.setBarAddress(0, 0xfe000000);
  h.vfioPci.bind(BDF);
  const baseline = { domains: h.host.iommu.stats().domains };
  const vmm = Vmm.create(h.host, {
    name: "vm-edu",
    memoryBytes: opts.memoryBytes ?? RAM,
    rlimitMemlockBytes: opts.rlimit ?? 128 * MiB,
  });
  return { h, edu, group, vmm, baseline };
}

/** The guest's edu driver, through the VMM's MMIO path only. */
function eduDma(vmm: Vmm, bar: number, src: number, dst: number, count: number, cmd: number): void {
  vmm.mmioWrite(gpa(bar + EDU_REG_DMA_SRC), 8, src);
  vmm.mmioWrite(gpa(bar + EDU_REG_DMA_DST), 8, dst);
  vmm.mmioWrite(gpa(bar + EDU_REG_DMA_COUNT), 8, count);
  vmm.mmioWrite(gpa(bar + EDU_REG_DMA_CMD), 8, cmd);
}

/** The guest's PCI capability walk. */
function findCap(dev: AttachedDevice, id: number): number {
  let p = dev.configRead(0x34, 1);
  while (p !== 0) {
    if (dev.configRead(p, 1) === id) return p;
    p = dev.configRead(p + 1, 1);
  }
  return 0;
}

function expectError(fn: () => unknown, errno: number, re: RegExp): KernelError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(isKernelError(caught), `expected a KernelError, got ${String(caught)}`);
  assert.equal(caught.errno, errno, caught.message);
  assert.match(caught.message, re);
  return caught;
}

describe("vmm: a whole physical device through vfio-pci", () => {
  it("pins all guest RAM at MAP_DMA: locked_vm and pinned frames grow by the RAM size", () => {
    const { h, group, vmm } = setup();
    assert.equal(vmm.process.mm.lockedVm(), 0);
    const dev = vmm.attach({ host: BDF });
    assert.equal(dev.group, group);
    assert.equal(dev.name, BDF);
    assert.equal(vmm.process.mm.lockedVm(), RAM / 4096, "every page of the 64 MiB guest is charged");
    assert.equal(h.host.physmem.stats().pinnedFrames, RAM / 4096);
    assert.equal(h.host.iommu.domainOf(BDF).type, "unmanaged", "the device is on type1's domain");
    assert.notEqual(h.host.iommu.domainOf(BDF).iovaToPhys(0x123000 as never), -1, "IOVA = GPA is mapped");
    // BAR0: 1 MiB of 32-bit MMIO, trapped (edu's BAR is not memory-backed), in the PCI hole, naturally aligned.
    const [bar] = dev.bars;
    assert.ok(bar !== undefined);
    assert.deepEqual([bar.index, bar.kind, bar.size, bar.mmapAreas.length], [0, "mem32", MiB, 0]);
    assert.ok(bar.address >= 3 * SZ_1G && bar.address < 0xfec00000 && bar.address % MiB === 0);
    assert.equal(vmm.mmioRead(gpa(bar.address + EDU_REG_ID), 4), 0x010000ed);
    vmm.mmioWrite(gpa(bar.address + EDU_REG_LIVENESS), 4, 0x12345678);
    assert.equal(vmm.mmioRead(gpa(bar.address + EDU_REG_LIVENESS), 4), ~0x12345678 >>> 0);
  });

  it("the device's DMA at a GPA reaches the guest's memory, and its completion interrupt arrives as MSI", () => {
    const { h, edu, vmm } = setup();
    const dev = vmm.attach({ sysfsdev: `/sys/bus/pci/devices/${BDF}` });
    assert.equal(dev.irqMode, "msi", "edu has an MSI capability: the VMM enabled it");
    const cap = findCap(dev, 0x05);
    assert.ok(cap > 0);
    assert.equal(dev.configRead(cap + 2, 2) & 1, 1, "the guest sees MSI enabled");
    assert.equal(dev.configRead(cap + 4, 4), MSI_ADDRESS);
    const vectors: number[] = [];
    vmm.onInterrupt(dev, (v) => {
      vectors.push(v);
      const st = vmm.mmioRead(gpa(dev.barAddress(0) + EDU_REG_IRQ_STATUS), 4);
      vmm.mmioWrite(gpa(dev.barAddress(0) + EDU_REG_IRQ_ACK), 4, st);
    });
    const bar = dev.barAddress(0);
    dev.configWrite(0x04, 2, dev.configRead(0x04, 2) | 0x4); // the guest driver enables bus mastering
    const msg = new TextEncoder().encode("guest RAM -> edu buffer -> guest RAM, IOVA = GPA");
    vmm.ram.write(gpa(0x10000), msg);
    eduDma(vmm, bar, 0x10000, EDU_DMA_START, msg.length, EDU_DMA_RUN);
    assert.deepEqual(edu.buffer.subarray(0, msg.length), msg);
    eduDma(vmm, bar, EDU_DMA_START, 0x2fff0, msg.length, EDU_DMA_RUN | EDU_DMA_TO_RAM | EDU_DMA_IRQ);
    const back = new Uint8Array(msg.length);
    vmm.ram.read(gpa(0x2fff0), back);
    assert.deepEqual(back, msg, "written by the device across a page boundary, read by the guest's CPU");
    assert.equal(edu.dmaFaults, 0);
    assert.deepEqual(vectors, [MSI_DATA_BASE + dev.slot], "one MSI with the vector the VMM programmed");
    assert.equal(vmm.mmioRead(gpa(bar + EDU_REG_IRQ_STATUS), 4), 0, "the handler acknowledged it");
    assert.deepEqual(dev.interrupts, { delivered: 1, intx: 0, msi: 1 });
    assert.ok(h.rec.named("vmm.irq.inject").some((r) => r.fields.kind === "msi"));
  });

  it("INTx when the guest has not enabled MSI; the guest enabling MSI in config space switches to MSI", () => {
    const { vmm } = setup();
    const dev = vmm.attach({ host: BDF, msi: "guest" });
    assert.equal(dev.irqMode, "intx");
    const bar = dev.barAddress(0);
    const got: number[] = [];
    vmm.onInterrupt(dev, (v) => {
      got.push(v);
      vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_ACK), 4, vmm.mmioRead(gpa(bar + EDU_REG_IRQ_STATUS), 4));
    });
    vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_RAISE), 4, 0x1);
    vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_RAISE), 4, 0x2);
    const line = dev.configRead(0x3c, 1);
    assert.deepEqual(got, [line, line], "the EOI (UNMASK) after the first let the second through");
    // The guest programs the MSI capability and sets Enable (and bus mastering: an MSI is a memory write).
    dev.configWrite(0x04, 2, dev.configRead(0x04, 2) | 0x4);
    const cap = findCap(dev, 0x05);
    dev.configWrite(cap + 4, 4, 0xfee00000);
    dev.configWrite(cap + 8, 4, 0);
    dev.configWrite(cap + 12, 2, 0x61);
    dev.configWrite(cap + 2, 2, dev.configRead(cap + 2, 2) | 1);
    assert.equal(dev.irqMode, "msi");
    vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_RAISE), 4, 0x4);
    assert.deepEqual(got, [line, line, 0x61]);
    // Enable off: back to INTx.
    dev.configWrite(cap + 2, 2, dev.configRead(cap + 2, 2) & ~1);
    assert.equal(dev.irqMode, "intx");
    vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_RAISE), 4, 0x8);
    assert.deepEqual(got, [line, line, 0x61, line]);
  });

  it("an INTx the guest never clears is delivered a bounded number of times, then left masked until its EOI", () => {
    const { h, vmm } = setup();
    const dev = vmm.attach({ host: BDF, msi: "guest" });
    const bar = dev.barAddress(0);
    let n = 0;
    const off = vmm.onInterrupt(dev, () => void n++);
    vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_RAISE), 4, 0x1);
    assert.equal(n, 64);
    assert.equal(h.rec.count("vmm.irq.storm"), 1);
    off();
    vmm.onInterrupt(dev, () => vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_ACK), 4, 0x1));
    dev.eoi();
    assert.equal(dev.interrupts.intx, 65, "the EOI unmasked the still-asserted line: one more delivery, acked");
    vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_RAISE), 4, 0x1);
    assert.equal(dev.interrupts.intx, 66);
  });

  it("RLIMIT_MEMLOCK too small for the guest's RAM: ENOMEM naming the mapping, and nothing left half done", () => {
    const { h, group, vmm } = setup({ memoryBytes: 16 * SZ_1G, rlimit: 64 * MiB });
    const e = expectError(
      () => vmm.attach({ host: BDF }),
      Errno.ENOMEM,
      /^vm-edu: attach \/sys\/bus\/pci\/devices\/0000:00:04.0: MAP_DMA of 3 GiB at 0x0 \(ram-below-4g, vaddr 0x[0-9a-f]+\) failed: ENOMEM: RLIMIT_MEMLOCK exceeded/,
    );
    assert.match(e.message, /RLIMIT_MEMLOCK must cover the guest's 16 GiB of RAM/);
    assert.deepEqual(h.vfio.inspect().containers, [], "the container was closed");
    assert.equal(h.vfio.inspect().groups.find((g) => g.id === group)?.open, false, "the group was closed");
    assert.equal(vmm.process.mm.lockedVm(), 0);
    assert.equal(h.host.physmem.stats().pinnedFrames, 0);
    assert.deepEqual(vmm.state().containers, []);
    assert.equal(vmm.devices().length, 0);
    assert.equal(vmm.pci.occupied().length, 0);
    assert.equal(vmm.pci.mmio32.allocations().length, 0);
    // The device is free for another VM whose RAM fits the limit.
    const small = Vmm.create(h.host, { name: "vm-small", memoryBytes: 32 * MiB, rlimitMemlockBytes: 64 * MiB });
    small.attach({ host: BDF });
    assert.equal(small.process.mm.lockedVm(), (32 * MiB) / 4096);
  });

  it("a group that is not viable is refused with the device in the way and what to do", () => {
    const h = vmmTestHost({ memoryBytes: 256 * MiB });
    const edu = new EduDevice({ bdf: BDF, bus: h.host.pci, dma: h.host.deviceDma(BDF), tracer: h.host.tracer });
    const group = h.host.addPciDevice(edu);
    const other = parseBdf("0000:00:04.1");
    const sibling = new EduDevice({ bdf: other, bus: h.host.pci, dma: h.host.deviceDma(other), tracer: h.host.tracer });
    h.host.addPciDevice(sibling, { group });
    h.vfioPci.bind(BDF);
    h.host.pci.bind(other, "i915", {});
    const vmm = Vmm.create(h.host, { name: "vm", memoryBytes: 32 * MiB });
    expectError(
      () => vmm.attach({ host: BDF }),
      Errno.EPERM,
      new RegExp(`group ${group} is not viable: device 0000:00:04.1 is bound to i915; bind it to vfio-pci`),
    );
    assert.equal(h.vfio.inspect().groups.find((g) => g.id === group)?.open, false);
    assert.deepEqual(h.vfio.inspect().containers, []);
    expectError(
      () => vmm.attach({ host: "0000:00:09.0" }),
      Errno.ENOENT,
      /attach \/sys\/bus\/pci\/devices\/0000:00:09.0/,
    );
    // A device bound to a host driver alone in its group: vfio has no /dev/vfio node for it.
    const lone = parseBdf("0000:00:06.0");
    const g2 = h.host.addPciDevice(
      new EduDevice({ bdf: lone, bus: h.host.pci, dma: h.host.deviceDma(lone), tracer: h.host.tracer }),
    );
    h.host.pci.bind(lone, "i915", {});
    expectError(
      () => vmm.attach({ host: lone }),
      Errno.ENOENT,
      new RegExp(`open /dev/vfio/${g2} \\(no vfio driver owns IOMMU group ${g2}: bind its devices to vfio-pci\\)`),
    );
  });

  it("a second VMM cannot take a group the first holds: EBUSY naming the group", () => {
    const { h, vmm } = setup();
    vmm.attach({ host: BDF });
    const other = Vmm.create(h.host, { name: "vm2", memoryBytes: 32 * MiB });
    expectError(() => other.attach({ host: BDF }), Errno.EBUSY, /group \d+ is already open/);
    expectError(() => vmm.attach({ host: BDF }), Errno.EBUSY, /already attached/);
  });

  it("reset: VFIO_DEVICE_RESET, then the BARs and interrupts the VMM set up are back", () => {
    const { h, vmm } = setup();
    const dev = vmm.attach({ host: BDF });
    const bar = dev.barAddress(0);
    vmm.mmioWrite(gpa(bar + EDU_REG_LIVENESS), 4, 0);
    assert.equal(vmm.mmioRead(gpa(bar + EDU_REG_LIVENESS), 4), 0xffffffff);
    vmm.resetDevice(dev);
    assert.equal(vmm.mmioRead(gpa(bar + EDU_REG_LIVENESS), 4), 0, "the device's registers were reset");
    assert.equal(dev.barAddress(0), bar);
    assert.equal(dev.irqMode, "msi");
    assert.equal(h.rec.count("vmm.reset"), 1);
    let n = 0;
    vmm.onInterrupt(dev, () => void n++);
    dev.configWrite(0x04, 2, dev.configRead(0x04, 2) | 0x4);
    vmm.mmioWrite(gpa(bar + EDU_REG_IRQ_RAISE), 4, 1);
    assert.equal(n, 1);
  });

  it("hot-unplug releases the pins; shutdown and kill leave nothing on the host", () => {
    const a = setup();
    const dev = a.vmm.attach({ host: BDF });
    a.vmm.detach(dev);
    assert.equal(a.vmm.process.mm.lockedVm(), 0);
    assert.equal(a.h.host.physmem.stats().pinnedFrames, 0);
    assert.equal(a.h.host.iommu.domainOf(BDF).type, "dma", "back on the kernel's default domain");
    a.vmm.attach({ host: BDF });
    a.vmm.shutdown();
    assertNothingLeft(a.h, a.vmm.process.pid, a.baseline);

    const b = setup();
    b.vmm.attach({ host: BDF });
    b.vmm.ram.writeU32(gpa(0x100), 7);
    b.vmm.kill();
    assertNothingLeft(b.h, b.vmm.process.pid, b.baseline);
    assert.equal(b.h.host.iommu.domainOf(BDF).type, "dma");
  });
});

/** A device whose BAR2 is 16 KiB of host frames (mmap-able), 64-bit prefetchable, next to a trapped BAR0. */
class RamBarDevice implements PciDeviceModel {
  readonly config = new PciConfigSpace({
    vendorId: 0x1af4,
    deviceId: 0x1110,
    classCode: 0x050000,
    bars: [
      { index: 0, size: 4096, kind: "mem32" },
      { index: 2, size: 16384, kind: "mem64", prefetchable: true },
    ],
  });
  trapped = 0;
  constructor(
    readonly bdf: Bdf,
    private readonly host: Host,
    private readonly base: Pfn,
  ) {}
  barRead(bar: number, offset: number, size: number): number {
    if (bar === 0) return this.trapped++;
    const b = new Uint8Array(size);
    this.host.physmem.read((this.base * 4096 + offset) as Hpa, b);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
    return v;
  }
  barWrite(): void {}
  barFrames(bar: number): Pfn | undefined {
    return bar === 2 ? this.base : undefined;
  }
  reset(): void {}
}

describe("vmm: an mmap-able BAR", () => {
  it("is mapped into the VMM and placed above RAM (64-bit); guest accesses go to the mapping, not the fd", () => {
    const h = vmmTestHost({ memoryBytes: 256 * MiB });
    const bdf = parseBdf("0000:00:05.0");
    const dev = new RamBarDevice(bdf, h.host, h.host.physmem.allocContiguous(4));
    h.host.addPciDevice(dev);
    h.vfioPci.bind(bdf);
    const vmm = Vmm.create(h.host, { name: "vm", memoryBytes: 32 * MiB, rlimitMemlockBytes: 64 * MiB });
    const g = vmm.attach({ host: bdf });
    const bar2 = g.bars.find((b) => b.index === 2);
    assert.ok(bar2 !== undefined);
    assert.equal(bar2.kind, "mem64");
    assert.equal(bar2.prefetchable, true);
    assert.equal(bar2.mmapAreas.length, 1);
    assert.ok(bar2.address >= vmm.layout.mmio64.start, "64-bit BARs go above RAM");
    assert.equal(bar2.address % 16384, 0);
    assert.equal(g.configRead(0x18, 4), (bar2.address % 2 ** 32) | 0xc, "64-bit prefetchable flags kept");
    assert.equal(g.configRead(0x1c, 4), Math.floor(bar2.address / 2 ** 32));
    vmm.mmioWrite(gpa(bar2.address + 0x2000), 4, 0xa5a5f00d);
    assert.equal(dev.barRead(2, 0x2000, 4), 0xa5a5f00d, "the store reached the device's memory through the mmap");
    assert.equal(vmm.mmioRead(gpa(bar2.address + 0x2000), 4), 0xa5a5f00d);
    const trapped = dev.trapped;
    vmm.mmioRead(gpa(g.barAddress(0)), 4);
    assert.equal(dev.trapped, trapped + 1, "BAR0 is trapped: the read went through the device fd");
    const maps = vmm.process.mm.vmas().length;
    vmm.detach(g);
    assert.equal(vmm.process.mm.vmas().length, maps - 1, "the BAR's mmap was undone");
  });
});
