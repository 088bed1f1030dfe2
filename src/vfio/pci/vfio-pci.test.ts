import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, isKernelError, PAGE_SIZE, type Pfn, TraceRecorder } from "../../core/index.ts";
import {
  EDU_MSIX_PBA_OFFSET,
  EDU_MSIX_TABLE_OFFSET,
  EDU_REG_DMA_SRC,
  EDU_REG_ID,
  EDU_REG_IRQ_ACK,
  EDU_REG_IRQ_RAISE,
  EDU_REG_LIVENESS,
  EduDevice,
} from "../../devices/index.ts";
import {
  type Bdf,
  EventFd,
  Host,
  MsixTable,
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_EXP,
  PCI_CAP_ID_MSI,
  PCI_CAP_ID_MSIX,
  PCI_CAP_ID_VNDR,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  PCI_MSIX_ENTRY_DATA,
  PCI_MSIX_ENTRY_LOWER_ADDR,
  PCI_MSIX_ENTRY_VECTOR_CTRL,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PciConfigSpace,
  type PciDeviceModel,
  parseBdf,
} from "../../host/index.ts";
import type { IrqTrigger, VfioDeviceOps, VfioIrqSet } from "../driver.ts";
import {
  decodeSparseMmapCap,
  infoCap,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_PCI_ROM_REGION_INDEX,
  VFIO_PCI_VGA_REGION_INDEX,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from "../uapi/index.ts";
import { decodeLe, encodeLe } from "./rdwr.ts";
import { type VfioCoreForPci, VfioPciDriver } from "./vfio-pci.ts";

const EDU_BDF: Bdf = parseBdf("0000:00:04.0");
const NIC_BDF: Bdf = parseBdf("0000:01:00.0");
const RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

function expectErrno(fn: () => unknown, errno: number, msg?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isKernelError(e), `expected a KernelError, got ${String(e)}`);
    assert.equal(e.errno, errno, `errno ${e.errno} (${e.message})`);
    if (msg) assert.match(e.message, msg);
    return true;
  });
}

/** vfio-core as far as vfio-pci sees it: records registrations. */
class FakeCore implements VfioCoreForPci {
  busDrivers: string[] = [];
  devices = new Map<string, VfioDeviceOps>();
  failNext: Error | undefined;
  registerBusDriver(name: string): void {
    this.busDrivers.push(name);
  }
  registerDevice(ops: VfioDeviceOps): number {
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
    this.devices.set(ops.name, ops);
    return 7;
  }
  unregisterDevice(name: string): void {
    this.devices.delete(name);
  }
}

/**
 * A PCI Express test function: BAR0 4 KiB trapped MMIO (a register file), BAR2 64-bit 16 KiB prefetchable backed by
 * host frames, BAR4 32 bytes of I/O; capabilities MSI (4 vectors), PCI Express, a vendor capability and a debug
 * capability (which vfio-pci hides).
 */
class TestNic implements PciDeviceModel {
  readonly config: PciConfigSpace;
  readonly regs = new Float64Array(512);
  resets = 0;
  readonly expCap: number;
  readonly vndrCap: number;
  readonly dbgCap: number;
  constructor(
    readonly bdf: Bdf,
    private readonly frames: Pfn,
  ) {
    this.config = new PciConfigSpace({
      vendorId: 0x8086,
      deviceId: 0x10d3,
      classCode: 0x020000,
      interruptPin: 1,
      bars: [
        { index: 0, size: 4096, kind: "mem32" },
        { index: 2, size: 16384, kind: "mem64", prefetchable: true },
        { index: 4, size: 32, kind: "io" },
      ],
      msiVectors: 4,
    });
    this.expCap = this.config.addCapability(PCI_CAP_ID_EXP, 0x3c);
    this.config.bytes[this.expCap + 2] = 0x02; // version 2, endpoint
    this.vndrCap = this.config.addCapability(PCI_CAP_ID_VNDR, 8);
    this.config.bytes[this.vndrCap + 2] = 8;
    this.config.setMask(this.vndrCap + 4, 4, 0xffffffff);
    this.dbgCap = this.config.addCapability(0x0a, 8);
    this.config.setMask(this.dbgCap + 4, 4, 0xffffffff);
  }
  barRead(bar: number, offset: number, size: number): number {
    if (bar === 4) return 0x5a;
    const reg = this.regs[Math.floor(offset / 8)]!;
    return size === 8 ? reg : Math.floor(reg / 256 ** (offset % 8)) % 256 ** size;
  }
  barWrite(bar: number, offset: number, size: number, value: number): void {
    if (bar === 0 && size === 8) this.regs[offset / 8] = value;
  }
  barFrames(bar: number): Pfn | undefined {
    return bar === 2 ? this.frames : undefined;
  }
  reset(): void {
    this.resets++;
    this.regs.fill(0);
  }
}

function setup(opts: { eduMsix?: number } = {}) {
  const host = new Host({ memoryBytes: 256 * 1024 * 1024 });
  const rec = new TraceRecorder(host.tracer);
  const edu = new EduDevice({
    bdf: EDU_BDF,
    bus: host.pci,
    dma: host.deviceDma(EDU_BDF),
    tracer: host.tracer,
    ...(opts.eduMsix !== undefined ? { msix: opts.eduMsix } : {}),
  });
  host.addPciDevice(edu);
  const nic = new TestNic(NIC_BDF, host.physmem.allocContiguous(4));
  host.addPciDevice(nic);
  const core = new FakeCore();
  const driver = new VfioPciDriver({ bus: host.pci, core, tracer: host.tracer });
  return { host, rec, edu, nic, core, driver };
}

/** Binds and opens the edu device as vfio-core would on GET_DEVICE_FD; the host had programmed BAR0 at 0xfe000000. */
function openEdu(s: ReturnType<typeof setup>) {
  s.edu.config.setBarAddress(0, 0xfe000000);
  const dev = s.driver.bind(EDU_BDF);
  dev.open(undefined);
  return dev;
}

function cfgRead(dev: VfioDeviceOps, off: number, size: 1 | 2 | 4): number {
  const b = new Uint8Array(size);
  assert.equal(dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, off, b), size);
  return decodeLe(b, 0, size);
}
function cfgWrite(dev: VfioDeviceOps, off: number, size: 1 | 2 | 4, v: number): void {
  const b = new Uint8Array(size);
  encodeLe(b, 0, size, v);
  assert.equal(dev.regionWrite(VFIO_PCI_CONFIG_REGION_INDEX, off, b), size);
}
function barRead(dev: VfioDeviceOps, bar: number, off: number, size: number): number {
  const b = new Uint8Array(size);
  assert.equal(dev.regionRead(bar, off, b), size);
  return decodeLe(b, 0, size);
}
function barWrite(dev: VfioDeviceOps, bar: number, off: number, size: number, v: number): void {
  const b = new Uint8Array(size);
  encodeLe(b, 0, size, v);
  assert.equal(dev.regionWrite(bar, off, b), size);
}

const trigger = (index: number, triggers: (IrqTrigger | null)[], start = 0): VfioIrqSet => ({
  action: "trigger",
  index,
  start,
  count: triggers.length,
  data: { kind: "eventfd", triggers },
});
const none = (index: number, action: VfioIrqSet["action"], count = 1): VfioIrqSet => ({
  action,
  index,
  start: 0,
  count,
  data: { kind: "none" },
});

describe("vfio-pci: binding", () => {
  it("binds as 'vfio-pci', registers an iommu-group device with vfio-core, and unbinds", () => {
    const s = setup();
    assert.deepEqual(s.core.busDrivers, ["vfio-pci"]);
    const dev = s.driver.bind(EDU_BDF);
    assert.equal(s.host.pci.driverOf(EDU_BDF), "vfio-pci");
    assert.equal(s.core.devices.get(EDU_BDF), dev);
    assert.equal(dev.name, "0000:00:04.0");
    assert.deepEqual(s.driver.list(), [EDU_BDF]);
    expectErrno(() => s.driver.bind(EDU_BDF), Errno.EBUSY);
    s.driver.unbind(EDU_BDF);
    assert.equal(s.host.pci.driverOf(EDU_BDF), undefined);
    assert.equal(s.core.devices.size, 0);
    expectErrno(() => s.driver.unbind(EDU_BDF), Errno.ENODEV);
    assert.equal(s.rec.count("vfio_pci.bind"), 1);
  });

  it("refuses bridges and undoes the binding when vfio-core refuses the device", () => {
    const s = setup();
    s.core.failNext = new Error("no group");
    assert.throws(() => s.driver.bind(EDU_BDF), /no group/);
    assert.equal(s.host.pci.driverOf(EDU_BDF), undefined);
    s.edu.config.bytes[0x0e] = 1;
    expectErrno(() => s.driver.bind(EDU_BDF), Errno.EINVAL, /header type 1/);
  });

  it("asks the user to release an open device (REQ) and refuses to unbind it", () => {
    const s = setup();
    const dev = openEdu(s);
    const req = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_REQ_IRQ_INDEX, [req]));
    s.core.unregisterDevice = () => {
      throw Object.assign(new Error("busy"), { errno: Errno.EBUSY });
    };
    assert.throws(() => s.driver.unbind(EDU_BDF), /busy/);
    assert.equal(req.counter, 1n);
    assert.equal(s.host.pci.driverOf(EDU_BDF), "vfio-pci");
  });
});

describe("vfio-pci: device, region and irq info", () => {
  it("reports PCI | RESET with 9 regions and 5 irqs", () => {
    const s = setup();
    const dev = openEdu(s);
    assert.deepEqual(dev.info(), { flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET, numRegions: 9, numIrqs: 5 });
  });

  it("describes all 9 regions of the edu device as Linux does", () => {
    const s = setup();
    const dev = openEdu(s);
    assert.deepEqual(dev.regionInfo(0), { index: 0, flags: RW, size: 1024 * 1024 }, "trapped MMIO: no MMAP");
    for (let i = 1; i <= 5; i++) assert.deepEqual(dev.regionInfo(i), { index: i, flags: 0, size: 0 });
    assert.deepEqual(dev.regionInfo(VFIO_PCI_ROM_REGION_INDEX), { index: 6, flags: 0, size: 0 });
    assert.deepEqual(dev.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX), { index: 7, flags: RW, size: 256 });
    expectErrno(() => dev.regionInfo(VFIO_PCI_VGA_REGION_INDEX), Errno.EINVAL, /VGA/);
    expectErrno(() => dev.regionInfo(9), Errno.EINVAL);
  });

  it("marks memory-backed BARs mmap-able and maps their frames; the upper half of a 64-bit BAR is empty", () => {
    const s = setup();
    const dev = s.driver.bind(NIC_BDF);
    dev.open(undefined);
    assert.deepEqual(dev.regionInfo(0), { index: 0, flags: RW, size: 4096 });
    assert.deepEqual(dev.regionInfo(2), { index: 2, flags: RW | VFIO_REGION_INFO_FLAG_MMAP, size: 16384 });
    assert.deepEqual(dev.regionInfo(3), { index: 3, flags: 0, size: 0 });
    assert.deepEqual(dev.regionInfo(4), { index: 4, flags: RW, size: 32 }, "I/O BAR: never MMAP");
    const m = dev.regionMmap(2, 4096, 8192, 3);
    assert.equal(m.basePfn, s.nic.barFrames(2)! + 1);
    expectErrno(() => dev.regionMmap(2, 0, 5 * PAGE_SIZE, 3), Errno.EINVAL);
    expectErrno(() => dev.regionMmap(0, 0, PAGE_SIZE, 3), Errno.EINVAL, /trapped/);
    expectErrno(() => dev.regionMmap(VFIO_PCI_CONFIG_REGION_INDEX, 0, PAGE_SIZE, 3), Errno.EINVAL);
  });

  it("describes the 5 irq indices of the (conventional PCI) edu device", () => {
    const s = setup();
    const dev = openEdu(s);
    const intx = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
    const noresize = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE;
    assert.deepEqual(dev.irqInfo(VFIO_PCI_INTX_IRQ_INDEX), { index: 0, flags: intx, count: 1 });
    assert.deepEqual(dev.irqInfo(VFIO_PCI_MSI_IRQ_INDEX), { index: 1, flags: noresize, count: 1 });
    assert.deepEqual(dev.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX), { index: 2, flags: noresize, count: 0 });
    expectErrno(() => dev.irqInfo(VFIO_PCI_ERR_IRQ_INDEX), Errno.EINVAL, /conventional PCI/);
    assert.deepEqual(dev.irqInfo(VFIO_PCI_REQ_IRQ_INDEX), { index: 4, flags: noresize, count: 1 });
    expectErrno(() => dev.irqInfo(5), Errno.EINVAL);
  });

  it("gives a PCI Express device an ERR index and counts its MSI vectors", () => {
    const s = setup();
    const dev = s.driver.bind(NIC_BDF);
    dev.open(undefined);
    const noresize = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE;
    assert.deepEqual(dev.irqInfo(VFIO_PCI_ERR_IRQ_INDEX), { index: 3, flags: noresize, count: 1 });
    assert.deepEqual(dev.irqInfo(VFIO_PCI_MSI_IRQ_INDEX), { index: 1, flags: noresize, count: 4 });
  });
});

describe("vfio-pci: virtualized config space", () => {
  it("shows the device's ids; BAR sizing reads back the real size while the hardware keeps the host's address", () => {
    const s = setup();
    const dev = openEdu(s);
    assert.equal(cfgRead(dev, 0, 2), 0x1234);
    assert.equal(cfgRead(dev, 2, 2), 0x11e8);
    assert.equal(cfgRead(dev, 0, 4), 0x11e81234);
    cfgWrite(dev, 0, 4, 0);
    assert.equal(cfgRead(dev, 0, 4), 0x11e81234, "ids are read-only");
    assert.equal(cfgRead(dev, PCI_BASE_ADDRESS_0, 4), 0xfe000000, "the host's address, masked");
    cfgWrite(dev, PCI_BASE_ADDRESS_0, 4, 0xffffffff);
    assert.equal(cfgRead(dev, PCI_BASE_ADDRESS_0, 4), 0xfff00000, "~(1 MiB - 1), memory, 32-bit");
    assert.equal(s.edu.config.barAddress(0), 0xfe000000, "the probe never reached the hardware");
    cfgWrite(dev, PCI_BASE_ADDRESS_0, 4, 0xc0012345);
    assert.equal(cfgRead(dev, PCI_BASE_ADDRESS_0, 4), 0xc0000000, "the guest's address, aligned to the size");
    for (let i = 1; i < 6; i++) {
      cfgWrite(dev, PCI_BASE_ADDRESS_0 + 4 * i, 4, 0xffffffff);
      assert.equal(cfgRead(dev, PCI_BASE_ADDRESS_0 + 4 * i, 4), 0, `BAR${i} unimplemented`);
    }
    cfgWrite(dev, 0x30, 4, 0xffffffff);
    assert.equal(cfgRead(dev, 0x30, 4), 0, "no ROM");
  });

  it("answers sizing probes for 64-bit, prefetchable and I/O BARs", () => {
    const s = setup();
    const dev = s.driver.bind(NIC_BDF);
    dev.open(undefined);
    for (const off of [0x10, 0x18, 0x1c, 0x20]) cfgWrite(dev, off, 4, 0xffffffff);
    assert.equal(cfgRead(dev, 0x10, 4), 0xfffff000);
    assert.equal(cfgRead(dev, 0x18, 4), 0xffffc00c, "16 KiB, 64-bit, prefetchable");
    assert.equal(cfgRead(dev, 0x1c, 4), 0xffffffff, "upper half");
    assert.equal(cfgRead(dev, 0x20, 4), 0xffffffe1, "32 bytes of I/O");
  });

  it("decodes any probe back to the BAR size", () => {
    const s = setup();
    const dev = openEdu(s);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (v) => {
        cfgWrite(dev, PCI_BASE_ADDRESS_0, 4, v);
        const got = cfgRead(dev, PCI_BASE_ADDRESS_0, 4);
        return got === (v & 0xfff00000) >>> 0 && s.edu.config.barAddress(0) === 0xfe000000;
      }),
      { numRuns: 100 },
    );
  });

  it("passes memory and bus-master enables through, but keeps INTx Disable virtual", () => {
    const s = setup();
    const dev = openEdu(s);
    assert.equal(s.edu.config.read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER, 0, "bus mastering off at open");
    assert.equal(cfgRead(dev, PCI_COMMAND, 2) & PCI_COMMAND_MEMORY, PCI_COMMAND_MEMORY, "enabled at open");
    cfgWrite(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    assert.equal(s.edu.config.read(PCI_COMMAND, 2), PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    dev.setIrqs(trigger(VFIO_PCI_INTX_IRQ_INDEX, [new EventFd()]));
    cfgWrite(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
    assert.equal(cfgRead(dev, PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_INTX_DISABLE);
    assert.equal(s.edu.config.read(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_INTX_DISABLE, "masked");
    cfgWrite(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    assert.equal(s.edu.config.read(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE, 0, "unmasked");
  });

  it("keeps the capability chain: MSI and PCIe and vendor visible, unknown capabilities hidden", () => {
    const s = setup();
    const dev = s.driver.bind(NIC_BDF);
    dev.open(undefined);
    assert.equal(cfgRead(dev, PCI_STATUS, 2) & PCI_STATUS_CAP_LIST, PCI_STATUS_CAP_LIST);
    const seen: number[] = [];
    for (let p = cfgRead(dev, PCI_CAPABILITY_LIST, 1), n = 0; p !== 0 && n < 48; n++) {
      seen.push(cfgRead(dev, p, 1));
      p = cfgRead(dev, p + 1, 1);
    }
    assert.deepEqual(seen, [PCI_CAP_ID_MSI, PCI_CAP_ID_EXP, PCI_CAP_ID_VNDR]);
    // The vendor capability is raw: writes reach the device.
    cfgWrite(dev, s.nic.vndrCap + 4, 4, 0xcafef00d);
    assert.equal(s.nic.config.read(s.nic.vndrCap + 4, 4), 0xcafef00d);
    assert.equal(
      cfgRead(dev, s.nic.vndrCap, 2),
      s.nic.config.read(s.nic.vndrCap, 2) & 0xff,
      "next unlinks the hidden cap",
    );
    // The PCIe capability is read-only here.
    const before = s.nic.config.read(s.nic.expCap + 8, 4);
    cfgWrite(dev, s.nic.expCap + 8, 4, 0xffffffff);
    assert.equal(s.nic.config.read(s.nic.expCap + 8, 4), before);
    // Bytes of the hidden capability stay reachable, raw (Linux's unassigned perms).
    cfgWrite(dev, s.nic.dbgCap + 4, 4, 0x11223344);
    assert.equal(cfgRead(dev, s.nic.dbgCap + 4, 4), 0x11223344);
  });

  it("keeps MSI Enable off until SET_IRQS enables MSI, and keeps its address and data virtual", () => {
    const s = setup();
    const dev = openEdu(s);
    const cap = s.edu.config.msiCap;
    cfgWrite(dev, cap + 4, 4, 0xfee01000);
    cfgWrite(dev, cap + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE);
    assert.equal(cfgRead(dev, cap + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE, 0);
    assert.equal(s.edu.config.msi().enabled, false);
    assert.equal(cfgRead(dev, cap + 4, 4), 0xfee01000, "the guest's address reads back");
    assert.equal(s.edu.config.read(cap + 4, 4), 0, "but never reaches the device");
    dev.setIrqs(trigger(VFIO_PCI_MSI_IRQ_INDEX, [new EventFd()]));
    cfgWrite(dev, cap + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE);
    assert.equal(cfgRead(dev, cap + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE, PCI_MSI_FLAGS_ENABLE);
    assert.equal(s.edu.config.read(cap + 4, 4), 0xfee00000, "the host's own MSI address");
  });

  it("splits accesses like Linux and rejects accesses outside the config space with EFAULT", () => {
    const s = setup();
    const dev = openEdu(s);
    const b = new Uint8Array(16);
    assert.equal(dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0, b), 16);
    assert.equal(decodeLe(b, 0, 4), 0x11e81234);
    assert.equal(dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 1, new Uint8Array(3)), 3);
    expectErrno(() => dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 255, new Uint8Array(2)), Errno.EFAULT);
    expectErrno(() => dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 256, new Uint8Array(1)), Errno.EFAULT);
  });

  it("restores the host's BARs when it finds them changed behind its back", () => {
    const s = setup();
    const dev = openEdu(s);
    s.edu.config.setBarAddress(0, 0); // e.g. a reset vfio-pci did not see
    cfgWrite(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    assert.equal(s.edu.config.barAddress(0), 0xfe000000);
    assert.equal(s.rec.count("vfio_pci.bar_restore"), 1);
  });
});

describe("vfio-pci: BAR access", () => {
  it("reads and writes reach the device's registers", () => {
    const s = setup();
    const dev = openEdu(s);
    assert.equal(barRead(dev, 0, EDU_REG_ID, 4), 0x010000ed);
    barWrite(dev, 0, EDU_REG_LIVENESS, 4, 0x0f0f0f0f);
    assert.equal(barRead(dev, 0, EDU_REG_LIVENESS, 4), 0xf0f0f0f0);
    barWrite(dev, 0, EDU_REG_DMA_SRC, 8, 0x1_0000_2000);
    assert.equal(barRead(dev, 0, EDU_REG_DMA_SRC, 8), 0x1_0000_2000);
    const all = new Uint8Array(8);
    dev.regionRead(0, 0x10, all);
    assert.deepEqual(all, new Uint8Array(8).fill(0xff), "an 8-byte read of a non-register is all ones");
  });

  it("splits a long access into aligned pieces and cuts it at the BAR's end", () => {
    const s = setup();
    const dev = s.driver.bind(NIC_BDF);
    dev.open(undefined);
    barWrite(dev, 0, 8, 8, 0x0010_2030_4050_6070);
    const b = new Uint8Array(24);
    assert.equal(dev.regionRead(0, 4096 - 8, b), 8, "cut at the end of the 4 KiB BAR");
    const c = new Uint8Array(7);
    assert.equal(dev.regionRead(0, 9, c), 7);
    assert.deepEqual([...c], [0x60, 0x50, 0x40, 0x30, 0x20, 0x10, 0x00]);
    expectErrno(() => dev.regionRead(0, 4096, new Uint8Array(1)), Errno.EINVAL);
    expectErrno(() => dev.regionRead(1, 0, new Uint8Array(4)), Errno.EINVAL, /no BAR1/);
    assert.equal(barRead(dev, 4, 0, 1), 0x5a, "I/O BAR");
  });

  it("is EIO while the user has Memory Space disabled; I/O BARs are not gated", () => {
    const s = setup();
    const dev = s.driver.bind(NIC_BDF);
    dev.open(undefined);
    cfgWrite(dev, PCI_COMMAND, 2, 0);
    expectErrno(() => dev.regionRead(0, 0, new Uint8Array(4)), Errno.EIO);
    assert.equal(barRead(dev, 4, 0, 1), 0x5a);
  });

  it("has no ROM and no VGA region to read", () => {
    const s = setup();
    const dev = openEdu(s);
    expectErrno(() => dev.regionRead(VFIO_PCI_ROM_REGION_INDEX, 0, new Uint8Array(4)), Errno.EINVAL);
    expectErrno(() => dev.regionWrite(VFIO_PCI_ROM_REGION_INDEX, 0, new Uint8Array(4)), Errno.EINVAL);
    expectErrno(() => dev.regionRead(VFIO_PCI_VGA_REGION_INDEX, 0x3c0, new Uint8Array(1)), Errno.EINVAL);
    assert.equal(dev.regionRead(0, 0, new Uint8Array(0)), 0);
  });
});

describe("vfio-pci: interrupts", () => {
  it("MSI: an edu 'raise interrupt' reaches the user's eventfd", () => {
    const s = setup();
    const dev = openEdu(s);
    const efd = new EventFd();
    cfgWrite(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    dev.setIrqs(trigger(VFIO_PCI_MSI_IRQ_INDEX, [efd]));
    assert.equal(s.edu.config.msi().enabled, true, "vfio-pci enabled MSI on the device");
    assert.equal(s.edu.config.intxDisabled(), true, "INTx disabled while MSI is on");
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 0x40);
    assert.equal(efd.counter, 1n);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 0x40);
    assert.equal(efd.counter, 2n, "every raise sends a message");
    // Loopback through SET_IRQS DATA_NONE, then disable.
    dev.setIrqs(none(VFIO_PCI_MSI_IRQ_INDEX, "trigger"));
    assert.equal(efd.counter, 3n);
    expectErrno(() => dev.setIrqs(none(VFIO_PCI_MSI_IRQ_INDEX, "mask")), Errno.ENOTTY);
    expectErrno(() => dev.setIrqs(trigger(VFIO_PCI_INTX_IRQ_INDEX, [new EventFd()])), Errno.EINVAL, /MSI/);
    dev.setIrqs(none(VFIO_PCI_MSI_IRQ_INDEX, "trigger", 0));
    assert.equal(s.edu.config.msi().enabled, false);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 0x40);
    assert.equal(efd.counter, 3n);
    assert.equal(s.rec.count("vfio_pci.msi.enable"), 1);
  });

  it("INTx is automasked on delivery and unmasked by SET_IRQS UNMASK once the device deasserts", () => {
    const s = setup();
    const dev = openEdu(s);
    const efd = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_INTX_IRQ_INDEX, [efd]));
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.equal(efd.counter, 1n);
    assert.equal(s.edu.config.intxDisabled(), true, "masked at the device");
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 2);
    assert.equal(efd.counter, 1n, "no new interrupt while masked");
    // Unmask while the line is still asserted: stays masked and signals again.
    dev.setIrqs(none(VFIO_PCI_INTX_IRQ_INDEX, "unmask"));
    assert.equal(efd.counter, 2n);
    assert.equal(s.edu.config.intxDisabled(), true);
    // The guest acknowledges, then unmasks.
    barWrite(dev, 0, EDU_REG_IRQ_ACK, 4, 3);
    dev.setIrqs(none(VFIO_PCI_INTX_IRQ_INDEX, "unmask"));
    assert.equal(s.edu.config.intxDisabled(), false);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.equal(efd.counter, 3n, "the next interrupt is delivered");
  });

  it("INTx can be unmasked through an unmask eventfd (resamplefd) and masked by SET_IRQS MASK", () => {
    const s = setup();
    const dev = openEdu(s);
    const efd = new EventFd();
    const resample = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_INTX_IRQ_INDEX, [efd]));
    dev.setIrqs({ action: "unmask", index: 0, start: 0, count: 1, data: { kind: "eventfd", triggers: [resample] } });
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    barWrite(dev, 0, EDU_REG_IRQ_ACK, 4, 1);
    assert.equal(s.edu.config.intxDisabled(), true);
    resample.signal();
    assert.equal(resample.counter, 0n, "consumed");
    assert.equal(s.edu.config.intxDisabled(), false);
    dev.setIrqs(none(VFIO_PCI_INTX_IRQ_INDEX, "mask"));
    assert.equal(s.edu.config.intxDisabled(), true);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.equal(efd.counter, 1n, "masked: nothing delivered");
    expectErrno(
      () =>
        dev.setIrqs({
          action: "unmask",
          index: 0,
          start: 0,
          count: 1,
          data: { kind: "eventfd", triggers: [resample] },
        }),
      Errno.EBUSY,
    );
    dev.setIrqs(none(VFIO_PCI_INTX_IRQ_INDEX, "trigger", 0));
    expectErrno(() => dev.setIrqs(none(VFIO_PCI_INTX_IRQ_INDEX, "unmask")), Errno.EINVAL, /INTx enabled/);
  });

  it("an asserted line fires as soon as INTx is enabled", () => {
    const s = setup();
    const dev = openEdu(s);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    const efd = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_INTX_IRQ_INDEX, [efd]));
    assert.equal(efd.counter, 1n);
  });

  it("ERR exists only on PCI Express; REQ and ERR loop back through DATA_NONE", () => {
    const s = setup();
    const edu = openEdu(s);
    expectErrno(() => edu.setIrqs(trigger(VFIO_PCI_ERR_IRQ_INDEX, [new EventFd()])), Errno.ENOTTY);
    const nic = s.driver.bind(NIC_BDF);
    nic.open(undefined);
    const err = new EventFd();
    nic.setIrqs(trigger(VFIO_PCI_ERR_IRQ_INDEX, [err]));
    nic.setIrqs(none(VFIO_PCI_ERR_IRQ_INDEX, "trigger"));
    assert.equal(err.counter, 1n);
    assert.equal(nic.irqs.errorDetected(), true);
    assert.equal(err.counter, 2n);
    nic.setIrqs(none(VFIO_PCI_ERR_IRQ_INDEX, "trigger", 0));
    expectErrno(() => nic.setIrqs(none(VFIO_PCI_ERR_IRQ_INDEX, "trigger")), Errno.EINVAL);
  });
});

describe("vfio-pci: reset and release", () => {
  it("VFIO_DEVICE_RESET resets the device but keeps its config state", () => {
    const s = setup();
    const dev = openEdu(s);
    cfgWrite(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    dev.setIrqs(trigger(VFIO_PCI_MSI_IRQ_INDEX, [new EventFd()]));
    barWrite(dev, 0, EDU_REG_LIVENESS, 4, 0);
    barWrite(dev, 0, EDU_REG_DMA_SRC, 4, 0x1234);
    dev.reset();
    assert.equal(barRead(dev, 0, EDU_REG_LIVENESS, 4), 0, "registers back to power-on values");
    assert.equal(barRead(dev, 0, EDU_REG_DMA_SRC, 4), 0);
    assert.equal(s.edu.config.barAddress(0), 0xfe000000, "BARs restored");
    assert.equal(s.edu.config.read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER, PCI_COMMAND_MASTER, "command restored");
    assert.equal(s.edu.config.msi().enabled, true, "MSI state restored");
  });

  it("close tears interrupts down, resets the device and restores the state saved at open", () => {
    const s = setup();
    const dev = openEdu(s);
    const efd = new EventFd();
    cfgWrite(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    dev.setIrqs(trigger(VFIO_PCI_MSI_IRQ_INDEX, [efd]));
    barWrite(dev, 0, EDU_REG_LIVENESS, 4, 0);
    dev.close?.();
    assert.equal(dev.isOpen, false);
    assert.equal(s.edu.config.msi().enabled, false);
    assert.equal(s.edu.config.busMasterEnabled(), false);
    assert.equal(s.edu.barRead(0, EDU_REG_LIVENESS, 4), 0);
    assert.equal(s.edu.config.barAddress(0), 0xfe000000);
    expectErrno(() => dev.regionRead(0, 0, new Uint8Array(4)), Errno.ENODEV, /not open/);
    // A new session starts clean.
    dev.open(undefined);
    assert.equal(dev.irqs.irqType, 5);
    assert.equal(s.rec.count("vfio_pci.close"), 1);
  });
});

describe("vfio-pci: rdwr encoding", () => {
  it("round-trips little-endian values of every width", () => {
    fc.assert(
      fc.property(fc.constantFrom(1, 2, 4, 8), fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), (size, v) => {
        const x = size === 8 ? v : v % 256 ** size;
        const b = new Uint8Array(8);
        encodeLe(b, 0, size, x);
        return decodeLe(b, 0, size) === x;
      }),
      { numRuns: 300 },
    );
    const b = new Uint8Array(8);
    encodeLe(b, 0, 8, 2 ** 64 - 1);
    assert.deepEqual(b, new Uint8Array(8).fill(0xff));
  });
});

/** An MSI-X function whose BAR2 (16 KiB) is host frames: the table (64 entries) at 0x1800, the PBA at 0x3000. */
class MsixRamDevice implements PciDeviceModel {
  readonly config = new PciConfigSpace({
    vendorId: 0x15b3,
    deviceId: 0x101b,
    classCode: 0x020000,
    bars: [{ index: 2, size: 16384, kind: "mem64" }],
    msix: { vectors: 64, tableBar: 2, tableOffset: 0x1800, pbaBar: 2, pbaOffset: 0x3000 },
  });
  readonly msixTable = new MsixTable(this.config);
  constructor(
    readonly bdf: Bdf,
    private readonly frames: Pfn,
  ) {}
  barRead(bar: number, offset: number, size: number): number {
    return this.msixTable.covers(bar, offset) ? this.msixTable.read(bar, offset, size) : 0x77;
  }
  barWrite(bar: number, offset: number, size: number, value: number): void {
    if (this.msixTable.covers(bar, offset)) this.msixTable.write(bar, offset, size, value);
  }
  barFrames(bar: number): Pfn | undefined {
    return bar === 2 ? this.frames : undefined;
  }
  reset(): void {}
}

describe("vfio-pci: MSI-X", () => {
  const EVENTFD_NORESIZE = VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE;
  const entry = (v: number, field: number) => EDU_MSIX_TABLE_OFFSET + 16 * v + field;
  const hwEntry = (s: ReturnType<typeof setup>, v: number, field: number) => s.edu.barRead(0, entry(v, field), 4);

  function openMsixEdu(vectors = 2) {
    const s = setup({ eduMsix: vectors });
    const dev = openEdu(s);
    cfgWrite(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    return { s, dev, cap: s.edu.config.msixCap };
  }

  it("reports the table size as the MSIX count, EVENTFD | NORESIZE, and shows the capability from the hardware", () => {
    const { dev, cap } = openMsixEdu(2);
    assert.deepEqual(dev.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX), { index: 2, flags: EVENTFD_NORESIZE, count: 2 });
    assert.deepEqual(dev.regionInfo(0), { index: 0, flags: RW, size: 1024 * 1024 }, "trapped: no MMAP, no caps");
    assert.equal(cfgRead(dev, cap, 1), PCI_CAP_ID_MSIX);
    assert.equal(cfgRead(dev, cap + PCI_MSIX_FLAGS, 2), 1, "N-1, disabled");
    assert.equal(cfgRead(dev, cap + 4, 4), EDU_MSIX_TABLE_OFFSET);
    assert.equal(cfgRead(dev, cap + 8, 4), EDU_MSIX_PBA_OFFSET);
  });

  it("SET_IRQS with two eventfds enables MSI-X as the host would; vector 0 carries the edu interrupt", () => {
    const { s, dev, cap } = openMsixEdu(2);
    const e0 = new EventFd();
    const e1 = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [e0, e1]));
    assert.equal(dev.irqs.irqType, VFIO_PCI_MSIX_IRQ_INDEX);
    assert.deepEqual(s.edu.config.msix().enabled, true);
    assert.equal(s.edu.config.msixFunctionMasked(), false);
    assert.equal(s.edu.config.intxDisabled(), true, "INTx disabled while MSI-X is on");
    for (const v of [0, 1]) {
      assert.equal(hwEntry(s, v, PCI_MSIX_ENTRY_LOWER_ADDR), 0xfee00000, "the host's message address");
      assert.equal(hwEntry(s, v, PCI_MSIX_ENTRY_DATA), 0x40 + v);
      assert.equal(hwEntry(s, v, PCI_MSIX_ENTRY_VECTOR_CTRL), 0, "unmasked: it has an eventfd");
    }
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.deepEqual([e0.counter, e1.counter], [2n, 0n]);
    // The user sees Enable as the hardware has it (not virtualized), and cannot write it.
    assert.equal(cfgRead(dev, cap + PCI_MSIX_FLAGS, 2), PCI_MSIX_FLAGS_ENABLE | 1);
    cfgWrite(dev, cap + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_MASKALL);
    assert.equal(s.edu.config.read(cap + PCI_MSIX_FLAGS, 2), PCI_MSIX_FLAGS_ENABLE | 1, "the write was dropped");
    // Loopback: DATA_NONE and DATA_BOOL signal the assigned eventfds.
    dev.setIrqs({ action: "trigger", index: 2, start: 1, count: 1, data: { kind: "none" } });
    dev.setIrqs({ action: "trigger", index: 2, start: 0, count: 2, data: { kind: "bool", values: [false, true] } });
    assert.deepEqual([e0.counter, e1.counter], [2n, 2n]);
    assert.equal(s.rec.count("vfio_pci.msix.enable"), 1);
    assert.equal(dev.irqs.signalled[VFIO_PCI_MSIX_IRQ_INDEX], 4);
  });

  it("de-assigning a vector masks it: the device's message waits and reaches the next eventfd", () => {
    const { s, dev } = openMsixEdu(2);
    const e0 = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [e0]));
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [null]));
    assert.equal(dev.irqs.irqType, VFIO_PCI_MSIX_IRQ_INDEX, "still enabled, no vector assigned");
    assert.equal(hwEntry(s, 0, PCI_MSIX_ENTRY_VECTOR_CTRL), 1);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.equal(e0.counter, 0n);
    assert.equal(barRead(dev, 0, EDU_MSIX_PBA_OFFSET, 8), 1, "pending, and the PBA reads through the BAR");
    const e2 = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [e2]));
    assert.equal(e2.counter, 1n, "delivered on unmask");
    assert.equal(barRead(dev, 0, EDU_MSIX_PBA_OFFSET, 8), 0);
    const names = s.rec.named("vfio_pci.trigger").map((r) => `${r.fields.irq}${r.fields.vector}:${r.fields.assigned}`);
    assert.deepEqual(names, ["MSIX0:true", "MSIX0:false", "MSIX0:true"]);
  });

  it("vectors outside the block allocated at enable are EINVAL; other indices are refused while MSI-X is on", () => {
    const { s, dev } = openMsixEdu(2);
    const e0 = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [e0]));
    expectErrno(() => dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [new EventFd()], 1)), Errno.EINVAL, /allocated/);
    expectErrno(
      () => dev.setIrqs({ action: "trigger", index: 2, start: 0, count: 2, data: { kind: "none" } }),
      Errno.EINVAL,
    );
    expectErrno(() => dev.setIrqs(trigger(VFIO_PCI_MSI_IRQ_INDEX, [new EventFd()])), Errno.EINVAL, /MSIX/);
    expectErrno(() => dev.setIrqs(trigger(VFIO_PCI_INTX_IRQ_INDEX, [new EventFd()])), Errno.EINVAL, /MSIX/);
    expectErrno(() => dev.setIrqs(none(VFIO_PCI_MSIX_IRQ_INDEX, "mask")), Errno.ENOTTY);
    assert.equal(s.edu.config.msixEnabled(), true, "the failed calls changed nothing");
    // A device without MSI-X cannot enable it.
    const plain = openEdu(setup());
    expectErrno(() => plain.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [new EventFd()])), Errno.EINVAL, /no MSI-X/);
    assert.equal(plain.irqs.irqType, 5);
  });

  it("DATA_NONE | TRIGGER with count 0 disables MSI-X and releases every eventfd", () => {
    const { s, dev, cap } = openMsixEdu(2);
    const e0 = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [e0, new EventFd()]));
    assert.equal(dev.irqs.msiVectorsAssigned, 2);
    dev.setIrqs(none(VFIO_PCI_MSIX_IRQ_INDEX, "trigger", 0));
    assert.equal(dev.irqs.irqType, 5);
    assert.equal(dev.irqs.msiVectorsAssigned, 0);
    assert.equal(s.edu.config.read(cap + PCI_MSIX_FLAGS, 2), 1, "Enable and Function Mask clear");
    assert.equal(hwEntry(s, 0, PCI_MSIX_ENTRY_VECTOR_CTRL), 1, "entries masked again");
    assert.equal(s.edu.config.intxDisabled(), false);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.equal(e0.counter, 0n);
    assert.equal(s.rec.count("vfio_pci.msix.disable"), 1);
    // MSI is usable again.
    const m = new EventFd();
    barWrite(dev, 0, EDU_REG_IRQ_ACK, 4, 1);
    dev.setIrqs(trigger(VFIO_PCI_MSI_IRQ_INDEX, [m]));
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.equal(m.counter, 1n);
  });

  it("the table never reaches the user through the BAR: reads are 0xff, writes are dropped", () => {
    const { s, dev } = openMsixEdu(2);
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [new EventFd()]));
    assert.equal(barRead(dev, 0, entry(0, PCI_MSIX_ENTRY_DATA), 4), 0xffffffff, "the device holds 0x40 here");
    barWrite(dev, 0, entry(0, PCI_MSIX_ENTRY_DATA), 4, 0x1234);
    barWrite(dev, 0, entry(1, PCI_MSIX_ENTRY_VECTOR_CTRL), 4, 0);
    assert.equal(hwEntry(s, 0, PCI_MSIX_ENTRY_DATA), 0x40);
    assert.equal(hwEntry(s, 1, PCI_MSIX_ENTRY_VECTOR_CTRL), 1, "vector 1 stays masked");
    // The whole table in one read: all 0xff, though the device holds the host's messages there.
    const b = new Uint8Array(32);
    assert.equal(dev.regionRead(0, EDU_MSIX_TABLE_OFFSET, b), 32);
    assert.deepEqual(b, new Uint8Array(32).fill(0xff));
    // With Memory Space off, the excluded range still answers (no device access), the rest is EIO.
    cfgWrite(dev, PCI_COMMAND, 2, 0);
    assert.equal(barRead(dev, 0, entry(0, 0), 8), 2 ** 64 - 1);
    expectErrno(() => dev.regionRead(0, EDU_MSIX_PBA_OFFSET, new Uint8Array(4)), Errno.EIO);
  });

  it("VFIO_DEVICE_RESET keeps MSI-X enabled with its table restored; the eventfds keep working", () => {
    const { s, dev } = openMsixEdu(2);
    const e0 = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [e0]));
    dev.reset();
    assert.equal(s.edu.config.msixEnabled(), true);
    assert.equal(hwEntry(s, 0, PCI_MSIX_ENTRY_DATA), 0x40);
    assert.equal(hwEntry(s, 0, PCI_MSIX_ENTRY_VECTOR_CTRL), 0);
    assert.equal(hwEntry(s, 1, PCI_MSIX_ENTRY_VECTOR_CTRL), 1);
    barWrite(dev, 0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.equal(e0.counter, 1n);
  });

  it("close disables MSI-X and drops the eventfds; the next session starts with nothing enabled", () => {
    const { s, dev } = openMsixEdu(2);
    const e0 = new EventFd();
    dev.setIrqs(trigger(VFIO_PCI_MSIX_IRQ_INDEX, [e0, new EventFd()]));
    dev.close?.();
    assert.equal(dev.irqs.msiVectorsAssigned, 0);
    assert.equal(s.edu.config.msixEnabled(), false);
    assert.equal(hwEntry(s, 0, PCI_MSIX_ENTRY_VECTOR_CTRL), 1);
    assert.equal(hwEntry(s, 0, PCI_MSIX_ENTRY_DATA), 0, "the device was reset");
    s.edu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    s.edu.barWrite(0, EDU_REG_IRQ_RAISE, 4, 1);
    assert.equal(e0.counter, 0n);
    dev.open(undefined);
    assert.equal(dev.irqs.irqType, 5);
    assert.equal(s.rec.count("vfio_pci.msix.disable"), 1);
  });

  it("a memory-backed MSI-X BAR is mmap-able around the table page (SPARSE_MMAP), never over it", () => {
    const s = setup();
    const bdf = parseBdf("0000:03:00.0");
    const rdev = new MsixRamDevice(bdf, s.host.physmem.allocContiguous(4));
    s.host.addPciDevice(rdev);
    const dev = s.driver.bind(bdf);
    dev.open(undefined);
    const info = dev.regionInfo(2);
    assert.equal(info.flags, RW | VFIO_REGION_INFO_FLAG_MMAP);
    assert.equal(info.caps?.length, 1);
    const cap = info.caps![0]!;
    assert.equal(cap.id, VFIO_REGION_INFO_CAP_SPARSE_MMAP);
    const areas = decodeSparseMmapCap(infoCap(cap.id, cap.version, cap.body)).areas;
    assert.deepEqual(
      areas.map((a) => [Number(a.offset), Number(a.size)]),
      [
        [0, 0x1000],
        [0x2000, 0x2000],
      ],
    );
    assert.equal(dev.regionMmap(2, 0, 0x1000, 3).basePfn, rdev.barFrames(2)!);
    assert.equal(dev.regionMmap(2, 0x2000, 0x2000, 3).basePfn, rdev.barFrames(2)! + 2);
    expectErrno(() => dev.regionMmap(2, 0x1000, 0x1000, 3), Errno.EINVAL, /MSI-X table/);
    expectErrno(() => dev.regionMmap(2, 0, 0x4000, 3), Errno.EINVAL, /MSI-X table/);
    // Through pread the table is excluded; the PBA reads from the device.
    assert.equal(barRead(dev, 2, 0x1800, 4), 0xffffffff);
    assert.equal(barRead(dev, 2, 0x3000, 8), 0);
    assert.equal(barRead(dev, 2, 0x1000, 4), 0x77);
    // A read straddling the table's start: the device answers up to it, the table part is filled.
    const b = new Uint8Array(16);
    assert.equal(dev.regionRead(2, 0x17f8, b), 16);
    assert.deepEqual([...b], [0x77, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  });
});
