/**
 * mtty end to end: the mtty parent registered with the mdev core, a device created by writing its UUID into
 * /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create (as mdevctl does), its IOMMU group found through
 * /sys/bus/mdev/devices/<uuid>/iommu_group (as QEMU's -device vfio-pci,sysfsdev= does), and a simulated VMM process
 * driving it through /dev/vfio exactly as QEMU's vfio-pci would: container, group, TYPE1v2, the device fd, config
 * space and BAR0 through pread/pwrite at (index << 40) + offset, and INTx/MSI through SET_IRQS eventfds.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, isKernelError } from "../src/core/index.ts";
import { createMttyParent } from "../src/devices/mtty.ts";
import { UART_IER, UART_IER_RDI, UART_IER_THRI, UART_LSR, UART_RX, UART_TX } from "../src/devices/mtty-uart.ts";
import { testWorld } from "../src/mdev/testing.ts";
import {
  uapi,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR1_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_TYPE1v2_IOMMU,
  VfioContainerHandle,
  type VfioDeviceHandle,
  VfioGroupHandle,
  vfioPciIndexToOffset,
} from "../src/vfio/index.ts";

const UUID = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const MiB = 1024 * 1024;

function expectErrno(fn: () => unknown, errno: number): void {
  assert.throws(fn, (e: unknown) => isKernelError(e) && e.errno === errno);
}

const TYPES_DIR = "/sys/class/mdev_bus/mtty/mdev_supported_types";
const DEVICE_DIR = `/sys/bus/mdev/devices/${UUID}`;

function hostWithMtty(type: "1" | "2" = "2") {
  const { host, rec, vfio: core, mdev } = testWorld({ memoryBytes: 64 * MiB });
  const parent = createMttyParent({ tracer: host.tracer });
  mdev.registerParent(parent);
  // mdevctl start: echo <uuid> > .../mtty-<type>/create
  host.sysfs.write(`${TYPES_DIR}/mtty-${type}/create`, `${UUID}\n`);
  // QEMU: basename(realpath(<sysfsdev>/iommu_group)) is the group number.
  const group = Number(host.sysfs.realpath(`${DEVICE_DIR}/iommu_group`).split("/").pop());
  return { host, rec, core, mdev, parent, group, mtty: parent.device(UUID)! };
}

/** The VMM side, as QEMU: container, the mdev's group, TYPE1v2 (no MAP_DMA needed: mtty does no DMA), device fd. */
function vmmOpens(h: ReturnType<typeof hostWithMtty>) {
  const vmm = h.host.spawn("qemu");
  const container = VfioContainerHandle.open(vmm);
  const group = VfioGroupHandle.open(vmm, h.group);
  assert.equal(group.status().viable, true);
  group.setContainer(container);
  container.setIommu(VFIO_TYPE1v2_IOMMU);
  const dev = group.getDevice(UUID);
  return { vmm, container, group, dev };
}

/** pread/pwrite on the device fd at VFIO_PCI_INDEX_TO_OFFSET(index) + off, as QEMU's vfio_region_read/write. */
function pread(dev: VfioDeviceHandle, index: number, off: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  assert.equal(dev.proc.pread(dev.fd, b, vfioPciIndexToOffset(index) + off), len);
  return b;
}
function pwrite(dev: VfioDeviceHandle, index: number, off: number, bytes: Uint8Array): void {
  assert.equal(dev.proc.pwrite(dev.fd, bytes, vfioPciIndexToOffset(index) + off), bytes.length);
}
const le = (b: Uint8Array): number => b.reduceRight((v, x) => v * 256 + x, 0);
const outb = (dev: VfioDeviceHandle, reg: number, v: number, bar = VFIO_PCI_BAR0_REGION_INDEX): void =>
  pwrite(dev, bar, reg, Uint8Array.of(v));
const inb = (dev: VfioDeviceHandle, reg: number, bar = VFIO_PCI_BAR0_REGION_INDEX): number =>
  pread(dev, bar, reg, 1)[0]!;

describe("mtty through vfio: a VMM process drives the mediated serial card", () => {
  it("shows mtty's types in sysfs, accounts ports across creates, and refuses with ENOSPC when full", () => {
    const h = hostWithMtty("2");
    const s = h.host.sysfs;
    assert.deepEqual(s.readdir(TYPES_DIR), ["mtty-1", "mtty-2"]);
    assert.equal(s.read(`${TYPES_DIR}/mtty-1/name`), "Single port serial\n");
    assert.equal(s.read(`${TYPES_DIR}/mtty-2/name`), "Dual port serial\n");
    assert.equal(s.read(`${TYPES_DIR}/mtty-2/device_api`), "vfio-pci\n");
    assert.equal(s.read(`${TYPES_DIR}/mtty-1/available_instances`), "22\n");
    assert.equal(s.read(`${TYPES_DIR}/mtty-2/available_instances`), "11\n");
    assert.equal(s.read(`${DEVICE_DIR}/vendor/sample_mdev_dev`), `This is MDEV ${UUID}\n`);
    for (let i = 0; i < 11; i++) s.write(`${TYPES_DIR}/mtty-2/create`, `00000000-0000-0000-0000-0000000000${i + 10}\n`);
    assert.equal(s.read(`${TYPES_DIR}/mtty-1/available_instances`), "0\n");
    expectErrno(() => s.write(`${TYPES_DIR}/mtty-1/create`, "00000000-0000-0000-0000-000000000099\n"), Errno.ENOSPC);
    assert.equal(h.mdev.list().length, 12);
    h.mdev.checkInvariants();
    h.core.checkInvariants();
  });

  it("gets the device from the mdev's emulated group and sees mtty's info, regions and irqs", () => {
    const h = hostWithMtty();
    const { vmm, dev } = vmmOpens(h);
    assert.equal(h.core.inspect().groups.find((g) => g.id === h.group)?.type, "emulated");
    const info = dev.info();
    assert.deepEqual(
      [info.flags, info.numRegions, info.numIrqs],
      [VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET, 9, 5],
    );
    const cfg = dev.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX);
    assert.deepEqual([cfg.size, cfg.offset], [0x100, 7 * 2 ** 40]);
    assert.equal(dev.regionInfo(VFIO_PCI_BAR0_REGION_INDEX).size, 8);
    assert.equal(dev.regionInfo(VFIO_PCI_BAR1_REGION_INDEX).size, 8);
    assert.deepEqual(dev.irqInfo(VFIO_PCI_INTX_IRQ_INDEX), {
      index: 0,
      flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
      count: 1,
    });
    const msix = uapi.VfioIrqInfo.encode({
      argsz: uapi.VfioIrqInfo.sizeof,
      flags: 0,
      index: VFIO_PCI_MSIX_IRQ_INDEX,
      count: 0,
    });
    expectErrno(() => vmm.ioctl(dev.fd, VFIO_DEVICE_GET_IRQ_INFO, msix), Errno.EINVAL);
  });

  it("reads config space at CONFIG << 40 and sizes the I/O BARs by writing all ones", () => {
    const h = hostWithMtty();
    const { dev } = vmmOpens(h);
    const all = pread(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0, 0x100); // QEMU reads the whole region at realize
    assert.equal(le(all.subarray(0, 4)), 0x32534348);
    assert.equal(le(all.subarray(8, 12)), 0x07000210);
    assert.equal(le(all.subarray(0x10, 0x14)), 1);
    assert.equal(all[0x3d], 1);
    pwrite(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x10, Uint8Array.of(0xff, 0xff, 0xff, 0xff));
    assert.equal(le(pread(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x10, 4)), 0xfffffff9); // 8 bytes of I/O
    pwrite(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x10, Uint8Array.of(0x00, 0xc0, 0, 0));
    assert.equal(le(pread(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x10, 4)), 0xc001);
    assert.equal(le(pread(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0xfc, 4)), 0); // the last dword, as QEMU reads it
    expectErrno(() => pread(dev, VFIO_PCI_CONFIG_REGION_INDEX, 0x100, 1), Errno.EINVAL);
  });

  it("writes bytes to THR through BAR0 and reads them back from RBR", () => {
    const h = hostWithMtty();
    const { dev } = vmmOpens(h);
    const text = "mtty over vfio";
    for (const c of text) outb(dev, UART_TX, c.charCodeAt(0));
    let got = "";
    while (inb(dev, UART_LSR) & 0x01) got += String.fromCharCode(inb(dev, UART_RX));
    assert.equal(got, text);
    // Port 1 behind BAR1 is independent.
    outb(dev, UART_TX, 0x7a, VFIO_PCI_BAR1_REGION_INDEX);
    assert.equal(inb(dev, UART_LSR) & 0x01, 0);
    assert.equal(inb(dev, UART_RX, VFIO_PCI_BAR1_REGION_INDEX), 0x7a);
    assert.ok(h.rec.count("mtty.reg") > 2 * text.length);
  });

  it("signals the INTx eventfd set with SET_IRQS, automasks, and delivers again after UNMASK", () => {
    const h = hostWithMtty();
    const { vmm, dev } = vmmOpens(h);
    const efd = vmm.eventfd();
    const ev = vmm.eventfdOf(efd);
    dev.setIrqsEventfd(VFIO_PCI_INTX_IRQ_INDEX, 0, [efd]);
    outb(dev, UART_IER, UART_IER_RDI);
    outb(dev, UART_TX, 0x41);
    assert.equal(ev.consume(), 1n);
    assert.equal(inb(dev, UART_RX), 0x41);
    outb(dev, UART_TX, 0x42); // masked until the VMM unmasks (QEMU does so after the guest's EOI)
    assert.equal(ev.counter, 0n);
    dev.setIrqsNone(VFIO_PCI_INTX_IRQ_INDEX, 0, 1, "unmask");
    assert.equal(inb(dev, UART_RX), 0x42);
    outb(dev, UART_TX, 0x43);
    assert.equal(ev.consume(), 1n);
    // Switching to MSI: disable INTx (count 0), then set an MSI eventfd.
    dev.setIrqsNone(VFIO_PCI_INTX_IRQ_INDEX, 0, 0, "trigger");
    const msiFd = vmm.eventfd();
    dev.setIrqsEventfd(VFIO_PCI_MSI_IRQ_INDEX, 0, [msiFd]);
    inb(dev, UART_RX);
    outb(dev, UART_IER, UART_IER_THRI); // empty FIFO: THR empty
    outb(dev, UART_IER, UART_IER_THRI);
    assert.equal(vmm.eventfdOf(msiFd).consume(), 2n);
    assert.ok(h.rec.named("mtty.irq").some((r) => r.fields.type === "msi" && r.fields.result === "signalled"));
  });

  it("refuses SET_IRQS with a non-eventfd fd before the device sees it; RESET restores the UART", () => {
    const h = hostWithMtty();
    const { dev } = vmmOpens(h);
    expectErrno(() => dev.setIrqsEventfd(VFIO_PCI_INTX_IRQ_INDEX, 0, [dev.fd]), Errno.EINVAL);
    expectErrno(() => dev.setIrqsEventfd(VFIO_PCI_INTX_IRQ_INDEX, 0, [9999]), Errno.EBADF);
    assert.equal(h.mtty.irqState().type, "none");
    outb(dev, UART_TX, 1);
    dev.reset();
    assert.equal(inb(dev, UART_LSR), 0x60);
  });

  it("closing the device fd releases the eventfds; removal returns the ports", () => {
    const h = hostWithMtty();
    const { vmm, dev, group, container } = vmmOpens(h);
    const efd = vmm.eventfd();
    dev.setIrqsEventfd(VFIO_PCI_INTX_IRQ_INDEX, 0, [efd]);
    assert.equal(h.mtty.irqState().intxEventfd, true);
    expectErrno(() => h.host.sysfs.write(`${DEVICE_DIR}/remove`, "1\n"), Errno.EBUSY); // open fds block removal
    dev.close();
    assert.equal(h.mtty.irqState().intxEventfd, false);
    group.close();
    container.close();
    assert.equal(h.parent.portsLeft, 22);
    h.host.sysfs.write(`${DEVICE_DIR}/remove`, "1\n");
    assert.equal(h.parent.portsLeft, 24);
    assert.equal(h.host.sysfs.read(`${TYPES_DIR}/mtty-2/available_instances`), "12\n");
    assert.equal(h.core.inspect().groups.length, 0);
    assert.equal(h.host.devfs.exists(`/dev/vfio/${h.group}`), false);
  });
});
