/**
 * The VMM attaches an mtty (an mdev) by its sysfs path and the guest drives the UART through port I/O at the address
 * the VMM placed its I/O BAR: the VMM knows nothing about mtty, only VFIO. Also: a 16 GiB guest costs nothing until
 * touched, the guest's view of config space (BAR sizing and moving), INTx injection with the VMM's EOI, detach,
 * shutdown and kill releasing everything on the host side.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, gpa, isKernelError, SZ_1G } from "../src/core/index.ts";
import {
  createMttyParent,
  MTTY_VENDOR_ID,
  UART_IER,
  UART_IER_RDI,
  UART_LSR,
  UART_RX,
  UART_TX,
} from "../src/devices/index.ts";
import { PCI_IO_END, PCI_IO_START, Vmm } from "../src/vmm/index.ts";
import { assertNothingLeft, createMdev, vmmTestHost } from "../src/vmm/testing.ts";

const UUID = "5a1c0c7e-0000-4000-8000-00000000a001";
const GiB = SZ_1G;

function setup(memoryBytes = 16 * GiB) {
  const h = vmmTestHost();
  h.mdev.registerParent(createMttyParent({ tracer: h.host.tracer }));
  const sysfsdev = createMdev(h, "mtty", "mtty-2", UUID);
  const baseline = { domains: h.host.iommu.stats().domains };
  const vmm = Vmm.create(h.host, { name: "vm1", memoryBytes });
  return { h, sysfsdev, vmm, baseline };
}

/** The guest's serial driver: bytes in through THR, out through RBR while LSR says data ready. */
function drain(vmm: Vmm, port: number): string {
  let s = "";
  while (vmm.ioRead(port + UART_LSR, 1) & 0x01) s += String.fromCharCode(vmm.ioRead(port + UART_RX, 1));
  return s;
}

describe("vmm: an mtty attached by sysfs path", () => {
  it("follows iommu_group, places both I/O BARs and drives the UART through the guest's port I/O", () => {
    const { h, sysfsdev, vmm } = setup();
    const dev = vmm.attach({ sysfsdev });
    const group = h.mdev.device(UUID)!.group;
    assert.equal(dev.group, group);
    assert.equal(dev.name, UUID);
    assert.equal(dev.guestBdf, "0000:00:02.0");
    assert.equal(dev.bars.length, 2);
    for (const b of dev.bars) {
      assert.equal(b.kind, "io");
      assert.equal(b.size, 8);
      assert.ok(b.address >= PCI_IO_START && b.address + 8 <= PCI_IO_END, `BAR${b.index} in the I/O window`);
      assert.equal(b.address % 8, 0, "naturally aligned");
      assert.equal(b.mapped, true);
    }
    assert.notEqual(dev.bars[0]!.address, dev.bars[1]!.address);
    // The guest's config space: the device's ids, and the BAR the VMM programmed (I/O flag kept).
    assert.equal(dev.configRead(0, 2), MTTY_VENDOR_ID);
    assert.equal(dev.configRead(0x10, 4), dev.barAddress(0) | 1);

    const port0 = dev.barAddress(0);
    const text = "hello, guest PIO"; // 16 bytes: mtty's loopback FIFO
    for (const c of text) vmm.ioWrite(port0 + UART_TX, 1, c.charCodeAt(0));
    assert.equal(drain(vmm, port0), text);
    // Port 1 is the second BAR, independent of port 0.
    const port1 = dev.barAddress(1);
    vmm.ioWrite(port1 + UART_TX, 1, 0x7a);
    assert.equal(vmm.ioRead(port0 + UART_LSR, 1) & 0x01, 0);
    assert.equal(drain(vmm, port1), "z");

    const attach = h.rec.named("vmm.attach");
    assert.equal(attach.length, 1);
    assert.deepEqual([attach[0]!.fields.device, attach[0]!.fields.group], [UUID, group]);
    assert.equal(h.rec.count("vmm.bar.place"), 2);
    assert.deepEqual(
      h.rec.named("vmm.bar.place").map((r) => [r.fields.regionSize, r.fields.probedSize]),
      [
        [8, 8],
        [8, 8],
      ],
      "REGION_INFO and the sizing probe agree",
    );
    h.vfio.checkInvariants();
  });

  it("maps RAM into the container without pinning: the mdev's group is emulated and mtty pins nothing", () => {
    const { h, sysfsdev, vmm } = setup();
    const before = h.host.physmem.stats().allocatedFrames;
    vmm.attach({ sysfsdev });
    const st = vmm.state();
    assert.equal(st.containers.length, 1);
    assert.deepEqual(st.containers[0]!.mapped, ["ram-below-4g", "ram-above-4g"]);
    assert.deepEqual(
      h.rec.named("vmm.ram.map").map((r) => [r.fields.gpa, r.fields.size]),
      [
        [0, 3 * GiB],
        [4 * GiB, 13 * GiB],
      ],
      "IOVA = GPA, one MAP_DMA per RAM block",
    );
    assert.equal(vmm.process.mm.lockedVm(), 0);
    assert.equal(h.host.physmem.stats().pinnedFrames, 0);
    assert.equal(h.host.physmem.stats().allocatedFrames, before, "16 GiB of guest RAM, not one frame allocated");
    // The guest touches one page above 4 GiB: one frame, at the HVA the VMM mapped there.
    vmm.ram.writeU32(gpa(5 * GiB + 12), 0xcafef00d);
    assert.equal(vmm.ram.readU32(gpa(5 * GiB + 12)), 0xcafef00d);
    assert.equal(vmm.mmioRead(gpa(5 * GiB + 12), 4), 0xcafef00d, "a guest load from RAM through the MMIO path");
    assert.equal(vmm.process.mm.stats().residentPages, 1);
    assert.equal(h.host.physmem.stats().allocatedFrames, before + 1);
  });

  it("injects INTx into the guest's handler and EOIs with UNMASK so that the next interrupt gets through", () => {
    const { sysfsdev, vmm } = setup();
    const dev = vmm.attach({ sysfsdev });
    assert.equal(dev.irqMode, "intx", "mtty has an MSI index but no MSI capability: QEMU stays on INTx");
    const port = dev.barAddress(0);
    const vectors: number[] = [];
    let received = "";
    vmm.onInterrupt(dev, (v) => {
      vectors.push(v);
      received += drain(vmm, port); // the ISR clears the source before the EOI
    });
    vmm.ioWrite(port + UART_IER, 1, UART_IER_RDI);
    vmm.ioWrite(port + UART_TX, 1, 0x61);
    vmm.ioWrite(port + UART_TX, 1, 0x62);
    vmm.ioWrite(port + UART_TX, 1, 0x63);
    assert.equal(received, "abc");
    const line = dev.configRead(0x3c, 1);
    assert.ok(line > 0);
    assert.deepEqual(vectors, [line, line, line], "one interrupt per byte, each on the guest's INTx line");
    assert.equal(vmm.interruptCount(dev), 3);
    assert.deepEqual(dev.interrupts, { delivered: 3, intx: 3, msi: 0 });
  });

  it("emulates BAR sizing for the guest and moves the decode where the guest reprograms the BAR", () => {
    const { sysfsdev, vmm } = setup(256 * 1024 * 1024);
    const dev = vmm.attach({ sysfsdev });
    const old = dev.barAddress(0);
    dev.configWrite(0x10, 4, 0xffffffff);
    assert.equal(dev.configRead(0x10, 4), 0xfffffff9, "~(8 - 1) with the I/O flag");
    assert.equal(dev.bars[0]!.mapped, false, "all ones is not an address: nothing decodes");
    assert.equal(vmm.ioRead(old + UART_LSR, 1), 0xff, "an unassigned port reads all ones");
    dev.configWrite(0x10, 4, 0xe000);
    assert.equal(dev.barAddress(0), 0xe000);
    assert.equal(vmm.ioRead(0xe000 + UART_LSR, 1), 0x60, "THR empty, transmitter empty");
    // I/O decoding off in the command register: the BAR stops decoding.
    dev.configWrite(0x04, 2, 0);
    assert.equal(vmm.ioRead(0xe000 + UART_LSR, 1), 0xff);
    assert.ok(vmm.unassignedAccesses >= 2);
    dev.configWrite(0x04, 2, 1);
    assert.equal(vmm.ioRead(0xe000 + UART_LSR, 1), 0x60);
    // The config region is the whole 256 bytes: the last dword is the device's (zero), not all ones.
    assert.equal(dev.configRead(0xfc, 4), 0);
  });

  it("detach closes the device, the group and the container; the mdev can then be removed", () => {
    const { h, sysfsdev, vmm } = setup();
    const dev = vmm.attach({ sysfsdev });
    const group = dev.group;
    assert.equal(h.vfio.inspect().groups.find((g) => g.id === group)?.open, true);
    vmm.detach(dev);
    assert.equal(vmm.devices().length, 0);
    assert.deepEqual(h.vfio.inspect().containers, []);
    assert.equal(h.vfio.inspect().groups.find((g) => g.id === group)?.open, false);
    assert.equal(h.rec.count("vmm.detach"), 1);
    assert.equal(h.rec.count("vmm.container.close"), 1);
    assert.equal(vmm.ioRead(dev.bars[0]!.placedAt + UART_LSR, 1), 0xff, "the BAR no longer decodes");
    h.host.sysfs.write(`${sysfsdev}/remove`, "1\n");
    assert.equal(h.mdev.list().length, 0);
    // Re-attaching after a detach works and opens a new container with all RAM mapped again.
    createMdev(h, "mtty", "mtty-1", UUID);
    const again = vmm.attach({ sysfsdev });
    assert.equal(again.bars.length, 1);
    assert.equal(vmm.state().containers[0]!.mapped.length, 2);
  });

  it("shutdown leaves nothing on the host; the VM then refuses everything with ESRCH", () => {
    const { h, sysfsdev, vmm, baseline } = setup();
    vmm.attach({ sysfsdev });
    vmm.ram.writeU32(gpa(0x1000), 1);
    vmm.shutdown();
    assertNothingLeft(h, vmm.process.pid, baseline);
    assert.equal(h.rec.count("vmm.shutdown"), 1);
    assert.throws(
      () => vmm.attach({ sysfsdev }),
      (e: unknown) => isKernelError(e) && e.errno === Errno.ESRCH,
    );
    h.host.sysfs.write(`${sysfsdev}/remove`, "1\n");
  });

  it("kill: the process dies with the device open; exit closes the fds and nothing is left", () => {
    const { h, sysfsdev, vmm, baseline } = setup();
    const dev = vmm.attach({ sysfsdev });
    vmm.onInterrupt(dev, () => {});
    vmm.kill();
    assertNothingLeft(h, vmm.process.pid, baseline);
    assert.equal(h.rec.count("vmm.kill"), 1);
    h.host.sysfs.write(`${sysfsdev}/remove`, "1\n");
    assert.equal(h.mdev.list().length, 0);
  });
});
