/**
 * vfio-pci end to end: a physical edu device bound to vfio-pci, a simulated VMM process that drives it through
 * /dev/vfio exactly as QEMU's vfio-pci does (container, group, TYPE1v2, MAP_DMA of its own memory, device fd
 * regions and SET_IRQS), and the device's DMA translated by the IOMMU domain that type1 programs.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, type Hpa, type Hva, isKernelError, type Pfn } from "../src/core/index.ts";
import {
  EDU_DMA_IRQ,
  EDU_DMA_IRQ_STATUS,
  EDU_DMA_RUN,
  EDU_DMA_START,
  EDU_DMA_TO_RAM,
  EDU_MSIX_PBA_OFFSET,
  EDU_MSIX_TABLE_OFFSET,
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
import {
  type Bdf,
  type Host,
  IOMMU_WRITE,
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_MSIX,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_QSIZE,
  PCI_MSIX_PBA,
  PCI_MSIX_TABLE,
  PciConfigSpace,
  type PciDeviceModel,
  PROT_READ,
  PROT_WRITE,
  parseBdf,
} from "../src/host/index.ts";
import { testWorld } from "../src/mdev/testing.ts";
import {
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_PCI_ROM_REGION_INDEX,
  VFIO_PCI_VGA_REGION_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_TYPE1v2_IOMMU,
  VfioContainerHandle,
  type VfioDeviceHandle,
  VfioGroupHandle,
  vfioPciIndexToOffset,
} from "../src/vfio/index.ts";

const BDF: Bdf = parseBdf("0000:00:04.0");
const MiB = 1024 * 1024;
/** The guest-physical base of the VMM's RAM: also the IOVA it maps it at (IOVA = GPA, as QEMU does). */
const GPA_BASE = 0x100000;
const RAM_SIZE = 2 * MiB;

function expectErrno(fn: () => unknown, errno: number): void {
  assert.throws(fn, (e: unknown) => isKernelError(e) && e.errno === errno);
}

/**
 * The host side: an edu device at BDF in its own IOMMU group (with `msix` MSI-X vectors if given), vfio-core with
 * type1, and vfio-pci bound to it.
 */
function hostWithAssignedEdu(opts: { msix?: number } = {}) {
  const { host, rec, vfio: core, vfioPci } = testWorld({ memoryBytes: 512 * MiB });
  const edu = new EduDevice({
    bdf: BDF,
    bus: host.pci,
    dma: host.deviceDma(BDF),
    tracer: host.tracer,
    ...(opts.msix !== undefined ? { msix: opts.msix } : {}),
  });
  const groupId = host.addPciDevice(edu);
  edu.config.setBarAddress(0, 0xfe000000); // firmware's assignment
  vfioPci.bind(BDF);
  return { host, rec, edu, groupId, core, vfioPci };
}

/** The VMM side, as QEMU: container, group, TYPE1v2, guest RAM mapped at IOVA = GPA, the device fd. */
function vmmOpens(h: ReturnType<typeof hostWithAssignedEdu>) {
  const vmm = h.host.spawn("qemu", { rlimitMemlockBytes: 64 * MiB });
  const container = VfioContainerHandle.open(vmm);
  const group = VfioGroupHandle.open(vmm, h.groupId);
  assert.equal(group.status().viable, true, "the group is viable: its only device is bound to vfio-pci");
  group.setContainer(container);
  container.setIommu(VFIO_TYPE1v2_IOMMU);
  const ram = vmm.mm.mmap(RAM_SIZE, PROT_READ | PROT_WRITE, { name: "guest-ram" });
  container.mapDma({ iova: GPA_BASE, vaddr: ram, size: RAM_SIZE, read: true, write: true });
  const dev = group.getDevice(BDF);
  return { vmm, container, group, ram, dev };
}

const u32 = (b: Uint8Array): number => new DataView(b.buffer, b.byteOffset, 4).getUint32(0, true);
const le32 = (v: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
};
const bar0Read = (dev: VfioDeviceHandle, off: number): number => u32(dev.read(VFIO_PCI_BAR0_REGION_INDEX, off, 4));
const bar0Write = (dev: VfioDeviceHandle, off: number, v: number): number =>
  dev.write(VFIO_PCI_BAR0_REGION_INDEX, off, le32(v));
const cfgRead = (dev: VfioDeviceHandle, off: number, n = 4): number => {
  const b = dev.read(VFIO_PCI_CONFIG_REGION_INDEX, off, n);
  let v = 0;
  for (let i = n - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
};
const cfgWrite16 = (dev: VfioDeviceHandle, off: number, v: number): number =>
  dev.write(VFIO_PCI_CONFIG_REGION_INDEX, off, Uint8Array.of(v & 0xff, (v >> 8) & 0xff));

/** The guest driver's DMA: program source, destination and count, then start (synchronous in the model). */
function eduDma(dev: VfioDeviceHandle, src: number, dst: number, count: number, cmd: number): void {
  bar0Write(dev, EDU_REG_DMA_SRC, src);
  bar0Write(dev, EDU_REG_DMA_DST, dst);
  bar0Write(dev, EDU_REG_DMA_COUNT, count);
  bar0Write(dev, EDU_REG_DMA_CMD, cmd);
}

/** A device whose BAR0 is 8 KiB of host frames (device memory a VMM may mmap), in its own IOMMU group. */
class RamBarDevice implements PciDeviceModel {
  readonly config = new PciConfigSpace({
    vendorId: 0x1af4,
    deviceId: 0x1110,
    classCode: 0x050000,
    bars: [{ index: 0, size: 8192, kind: "mem64", prefetchable: true }],
  });
  constructor(
    readonly bdf: Bdf,
    private readonly host: Host,
    private readonly base: Pfn,
  ) {}
  barRead(_bar: number, offset: number, size: number): number {
    const b = new Uint8Array(size);
    this.host.physmem.read((this.base * 4096 + offset) as Hpa, b);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
    return v;
  }
  barWrite(_bar: number, offset: number, size: number, value: number): void {
    const b = new Uint8Array(size);
    for (let i = 0; i < size; i++) b[i] = Math.floor(value / 256 ** i) & 0xff;
    this.host.physmem.write((this.base * 4096 + offset) as Hpa, b);
  }
  barFrames(): Pfn {
    return this.base;
  }
  reset(): void {}
}

describe("vfio-pci end to end: a memory-backed BAR", () => {
  it("is mmap-able through the device fd, and the mapping aliases the trapped path", () => {
    const h = hostWithAssignedEdu();
    const bdf = parseBdf("0000:00:05.0");
    const ramdev = new RamBarDevice(bdf, h.host, h.host.physmem.allocContiguous(2));
    const group = h.host.addPciDevice(ramdev);
    h.vfioPci.bind(bdf);
    const vmm = h.host.spawn("qemu", { rlimitMemlockBytes: 64 * MiB });
    const container = VfioContainerHandle.open(vmm);
    const g = VfioGroupHandle.open(vmm, group);
    g.setContainer(container);
    container.setIommu(VFIO_TYPE1v2_IOMMU);
    const dev = g.getDevice(bdf);
    assert.equal(
      dev.regionInfo(0).flags,
      VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
    );
    const va = dev.mmap(0, 4096, 4096);
    vmm.mm.write(va, Uint8Array.of(0x11, 0x22, 0x33, 0x44));
    assert.equal(u32(dev.read(0, 4096, 4)), 0x44332211, "the second page of BAR0, seen through pread");
    expectErrno(() => dev.mmap(0, 0, 3 * 4096), Errno.EINVAL);
  });
});

describe("vfio-pci end to end: a VMM assigned the edu device", () => {
  it("sees the device, its 9 regions and 5 irq indices through the device fd, as Linux reports them", () => {
    const h = hostWithAssignedEdu();
    const { dev } = vmmOpens(h);
    const info = dev.info();
    assert.equal(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert.equal(info.numRegions, 9);
    assert.equal(info.numIrqs, 5);
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    const bar0 = dev.regionInfo(VFIO_PCI_BAR0_REGION_INDEX);
    assert.deepEqual([bar0.flags, bar0.size, bar0.offset], [rw, MiB, 0]);
    for (let i = 1; i <= 5; i++) assert.deepEqual([dev.regionInfo(i).flags, dev.regionInfo(i).size], [0, 0]);
    const rom = dev.regionInfo(VFIO_PCI_ROM_REGION_INDEX);
    assert.deepEqual([rom.flags, rom.size, rom.offset], [0, 0, vfioPciIndexToOffset(6)]);
    const cfg = dev.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX);
    assert.deepEqual([cfg.flags, cfg.size, cfg.offset], [rw, 256, 7 * 2 ** 40]);
    expectErrno(() => dev.regionInfo(VFIO_PCI_VGA_REGION_INDEX), Errno.EINVAL);
    expectErrno(() => dev.regionInfo(9), Errno.EINVAL);
    const noresize = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE;
    assert.deepEqual(dev.irqInfo(VFIO_PCI_INTX_IRQ_INDEX), {
      index: 0,
      flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
      count: 1,
    });
    assert.deepEqual(dev.irqInfo(VFIO_PCI_MSI_IRQ_INDEX), { index: 1, flags: noresize, count: 1 });
    assert.deepEqual(dev.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX), { index: 2, flags: noresize, count: 0 });
    expectErrno(() => dev.irqInfo(VFIO_PCI_ERR_IRQ_INDEX), Errno.EINVAL);
    assert.deepEqual(dev.irqInfo(VFIO_PCI_REQ_IRQ_INDEX), { index: 4, flags: noresize, count: 1 });
  });

  it("reads the ids and sizes BAR0 through region 7; BAR0 accesses reach the device", () => {
    const h = hostWithAssignedEdu();
    const { dev } = vmmOpens(h);
    assert.equal(cfgRead(dev, 0), 0x11e81234);
    dev.write(VFIO_PCI_CONFIG_REGION_INDEX, PCI_BASE_ADDRESS_0, le32(0xffffffff));
    assert.equal(cfgRead(dev, PCI_BASE_ADDRESS_0), 0xfff00000);
    assert.equal(h.edu.config.barAddress(0), 0xfe000000, "the hardware BAR is untouched");
    assert.equal(bar0Read(dev, EDU_REG_ID), 0x010000ed);
    bar0Write(dev, EDU_REG_LIVENESS, 0xdeadbeef);
    assert.equal(bar0Read(dev, EDU_REG_LIVENESS), ~0xdeadbeef >>> 0);
    // Memory Space off in the (virtual) command register: BAR accesses fail as on Linux.
    cfgWrite16(dev, PCI_COMMAND, 0);
    assert.throws(
      () => bar0Read(dev, EDU_REG_ID),
      (e: unknown) => isKernelError(e) && e.errno === Errno.EIO,
    );
  });

  it("DMA: the device copies from its buffer into the VMM's memory at IOVA = GPA, translated by type1's domain", () => {
    const h = hostWithAssignedEdu();
    const { vmm, ram, dev } = vmmOpens(h);
    cfgWrite16(dev, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    // The guest writes a message into its RAM, has the device fetch it into its buffer, then copy it back elsewhere.
    const msg = new TextEncoder().encode("hello from guest memory, through the IOMMU and back again");
    vmm.mm.write((ram + 0x1000) as Hva, msg);
    eduDma(dev, GPA_BASE + 0x1000, EDU_DMA_START, msg.length, EDU_DMA_RUN);
    assert.deepEqual(h.edu.buffer.subarray(0, msg.length), msg);
    eduDma(dev, EDU_DMA_START, GPA_BASE + 0x1ff000 - 8, msg.length, EDU_DMA_RUN | EDU_DMA_TO_RAM);
    const got = new Uint8Array(msg.length);
    vmm.mm.read((ram + 0x1ff000 - 8) as Hva, got);
    assert.deepEqual(got, msg, "read back in the VMM's own memory (across a page boundary)");
    assert.equal(h.edu.dmaFaults, 0);
    const domain = h.host.iommu.domainOf(BDF);
    assert.equal(domain.type, "unmanaged", "the group is on type1's domain");
    assert.notEqual(domain.iovaToPhys(GPA_BASE as never), -1);
  });

  it("DMA to an unmapped IOVA is blocked and logged as an IOMMU fault; unmapping revokes access", () => {
    const h = hostWithAssignedEdu();
    const { vmm, ram, container, dev } = vmmOpens(h);
    cfgWrite16(dev, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    h.edu.buffer.fill(0xee);
    eduDma(dev, EDU_DMA_START, GPA_BASE + RAM_SIZE, 64, EDU_DMA_RUN | EDU_DMA_TO_RAM);
    assert.equal(h.edu.dmaFaults, 1);
    const fault = h.host.iommu.lastFault();
    assert.ok(fault !== undefined);
    assert.deepEqual(
      [fault.bdf, fault.iova, fault.access, fault.reason],
      [BDF, GPA_BASE + RAM_SIZE, IOMMU_WRITE, "not-present"],
    );
    assert.equal(h.rec.count("iommu.fault"), 1);
    // The VMM unmaps its RAM (type1v2: whole mappings only): the device can no longer reach it.
    assert.equal(container.unmapDma({ iova: GPA_BASE, size: RAM_SIZE }), RAM_SIZE);
    eduDma(dev, EDU_DMA_START, GPA_BASE, 16, EDU_DMA_RUN | EDU_DMA_TO_RAM);
    assert.equal(h.edu.dmaFaults, 2);
    const first = new Uint8Array(16);
    vmm.mm.read(ram, first);
    assert.deepEqual(first, new Uint8Array(16), "the VMM's page was not written");
  });

  it("MSI: SET_IRQS with an eventfd; the device's DMA-done interrupt reaches the VMM", () => {
    const h = hostWithAssignedEdu();
    const { vmm, dev } = vmmOpens(h);
    cfgWrite16(dev, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const efd = vmm.eventfd();
    dev.setIrqsEventfd(VFIO_PCI_MSI_IRQ_INDEX, 0, [efd]);
    eduDma(dev, EDU_DMA_START, GPA_BASE, 8, EDU_DMA_RUN | EDU_DMA_TO_RAM | EDU_DMA_IRQ);
    assert.equal(vmm.eventfdOf(efd).counter, 1n);
    assert.equal(bar0Read(dev, EDU_REG_IRQ_STATUS), EDU_DMA_IRQ_STATUS);
    bar0Write(dev, EDU_REG_IRQ_ACK, EDU_DMA_IRQ_STATUS);
    bar0Write(dev, EDU_REG_IRQ_RAISE, 0x1);
    assert.equal(vmm.eventfdOf(efd).consume(), 2n);
  });

  it("INTx: automasked on delivery, unmasked through SET_IRQS once the guest acknowledged", () => {
    const h = hostWithAssignedEdu();
    const { vmm, dev } = vmmOpens(h);
    const efd = vmm.eventfd();
    dev.setIrqsEventfd(VFIO_PCI_INTX_IRQ_INDEX, 0, [efd]);
    bar0Write(dev, EDU_REG_IRQ_RAISE, 0x4);
    const ev = vmm.eventfdOf(efd);
    assert.equal(ev.counter, 1n);
    bar0Write(dev, EDU_REG_IRQ_ACK, 0x4);
    bar0Write(dev, EDU_REG_IRQ_RAISE, 0x4);
    assert.equal(ev.counter, 1n, "still masked: the second interrupt waits");
    dev.setIrqsNone(VFIO_PCI_INTX_IRQ_INDEX, 0, 1, "unmask");
    assert.equal(ev.counter, 2n, "unmasking with the line asserted delivers it");
    bar0Write(dev, EDU_REG_IRQ_ACK, 0x4);
    dev.setIrqsNone(VFIO_PCI_INTX_IRQ_INDEX, 0, 1, "unmask");
    assert.equal(h.edu.config.intxDisabled(), false);
  });

  it("reset restores the device; closing the device fd releases it for the host", () => {
    const h = hostWithAssignedEdu();
    const { dev, group, container } = vmmOpens(h);
    bar0Write(dev, EDU_REG_LIVENESS, 0);
    assert.equal(bar0Read(dev, EDU_REG_LIVENESS), 0xffffffff);
    dev.reset();
    assert.equal(bar0Read(dev, EDU_REG_LIVENESS), 0);
    expectErrno(() => h.vfioPci.unbind(BDF), Errno.EBUSY);
    dev.close();
    group.close();
    container.close();
    assert.equal(h.vfioPci.device(BDF).isOpen, false);
    h.vfioPci.unbind(BDF);
    assert.equal(h.host.pci.driverOf(BDF), undefined);
    assert.equal(h.host.iommu.domainOf(BDF).type, "dma", "back on the kernel's default domain");
    h.core.checkInvariants();
  });
});

describe("vfio-pci end to end: MSI-X", () => {
  /** What QEMU's vfio_msix_early_setup does: find the capability through region 7 and read where the table is. */
  function findMsix(dev: VfioDeviceHandle) {
    let p = cfgRead(dev, PCI_CAPABILITY_LIST, 1);
    for (let n = 0; p !== 0 && n < 48 && cfgRead(dev, p, 1) !== PCI_CAP_ID_MSIX; n++) p = cfgRead(dev, p + 1, 1);
    assert.notEqual(p, 0, "the MSI-X capability is visible");
    const table = cfgRead(dev, p + PCI_MSIX_TABLE);
    const pba = cfgRead(dev, p + PCI_MSIX_PBA);
    return {
      cap: p,
      entries: (cfgRead(dev, p + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_QSIZE) + 1,
      tableBar: table & 7,
      tableOffset: table - (table & 7),
      pbaBar: pba & 7,
      pbaOffset: pba - (pba & 7),
    };
  }

  it("the VMM finds the table, wires one eventfd per vector, and the DMA-done interrupt arrives on vector 0's", () => {
    const h = hostWithAssignedEdu({ msix: 2 });
    const { vmm, dev } = vmmOpens(h);
    const noresize = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE;
    assert.deepEqual(dev.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX), { index: 2, flags: noresize, count: 2 });
    const m = findMsix(dev);
    assert.deepEqual(
      [m.entries, m.tableBar, m.tableOffset, m.pbaBar, m.pbaOffset],
      [2, 0, EDU_MSIX_TABLE_OFFSET, 0, EDU_MSIX_PBA_OFFSET],
    );
    const bar0 = dev.regionInfo(VFIO_PCI_BAR0_REGION_INDEX);
    assert.deepEqual([bar0.flags, bar0.caps.length], [VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE, 0]);
    cfgWrite16(dev, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const e0 = vmm.eventfd();
    const e1 = vmm.eventfd();
    dev.setIrqsEventfd(VFIO_PCI_MSIX_IRQ_INDEX, 0, [e0, e1]);
    assert.equal(cfgRead(dev, m.cap + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_ENABLE);
    eduDma(dev, EDU_DMA_START, GPA_BASE, 8, EDU_DMA_RUN | EDU_DMA_TO_RAM | EDU_DMA_IRQ);
    assert.equal(vmm.eventfdOf(e0).counter, 1n);
    assert.equal(vmm.eventfdOf(e1).counter, 0n);
    assert.equal(bar0Read(dev, EDU_REG_IRQ_STATUS), EDU_DMA_IRQ_STATUS);
    // The physical table is the host's: the VMM reads all ones there, and its writes do not land.
    assert.equal(bar0Read(dev, m.tableOffset + 8), 0xffffffff);
    bar0Write(dev, m.tableOffset + 12, 1);
    bar0Write(dev, EDU_REG_IRQ_RAISE, 0x2);
    assert.equal(vmm.eventfdOf(e0).counter, 2n, "vector 0 was not masked by the VMM's write");
    // Vector 1 de-assigned (fd -1), then the whole index disabled.
    dev.setIrqsEventfd(VFIO_PCI_MSIX_IRQ_INDEX, 1, [-1]);
    dev.setIrqsNone(VFIO_PCI_MSIX_IRQ_INDEX, 0, 0, "trigger");
    assert.equal(h.edu.config.msixEnabled(), false);
    bar0Write(dev, EDU_REG_IRQ_RAISE, 0x2);
    assert.equal(vmm.eventfdOf(e0).counter, 2n, "nothing after disabling");
    assert.equal(h.rec.count("vfio_pci.msix.enable"), 1);
    assert.equal(h.rec.count("vfio_pci.msix.disable"), 1);
  });

  it("closing the device fd with MSI-X enabled disables it and drops the eventfds", () => {
    const h = hostWithAssignedEdu({ msix: 2 });
    const { vmm, dev, group, container } = vmmOpens(h);
    cfgWrite16(dev, PCI_COMMAND, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const e0 = vmm.eventfd();
    dev.setIrqsEventfd(VFIO_PCI_MSIX_IRQ_INDEX, 0, [e0]);
    dev.reset();
    bar0Write(dev, EDU_REG_IRQ_RAISE, 0x1);
    assert.equal(vmm.eventfdOf(e0).counter, 1n, "VFIO_DEVICE_RESET keeps MSI-X and its eventfd");
    dev.close();
    group.close();
    container.close();
    const vdev = h.vfioPci.device(BDF);
    assert.equal(vdev.isOpen, false);
    assert.equal(vdev.irqs.msiVectorsAssigned, 0);
    assert.equal(h.edu.config.msixEnabled(), false);
    assert.equal(h.edu.msixTable?.masked(0), true);
    h.edu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    h.edu.barWrite(0, EDU_REG_IRQ_RAISE, 4, 0x1);
    assert.equal(vmm.eventfdOf(e0).counter, 1n, "the device no longer reaches the VMM");
    h.vfioPci.unbind(BDF);
    h.core.checkInvariants();
  });
});
