/**
 * The VMM with mediated devices that pin guest memory on demand (the seed's point: nothing is pinned at MAP_DMA; the
 * vendor driver pins what it needs through vfio_pin_pages), memory hot-plug and hot-unplug while an mdev holds pins
 * (UNMAP_DMA reaches the vendor's dma_unmap, which unpins), a vendor driver that will not unpin, several groups
 * sharing one container, and an mdev next to a whole assigned device in the same VM.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, gpa, isKernelError, SZ_1G } from "../src/core/index.ts";
import { createMttyParent, EduDevice } from "../src/devices/index.ts";
import { parseBdf } from "../src/host/index.ts";
import { Vmm } from "../src/vmm/index.ts";
import { assertNothingLeft, createMdev, pinParent, vmmTestHost } from "../src/vmm/testing.ts";

const MiB = 1024 * 1024;
const PIN_UUID = "11111111-2222-4333-8444-555555555555";
const MTTY_UUID = "66666666-7777-4888-8999-aaaaaaaaaaaa";

function setup(memoryBytes = 256 * MiB) {
  const h = vmmTestHost();
  const parent = pinParent();
  h.mdev.registerParent(parent);
  h.mdev.registerParent(createMttyParent({ tracer: h.host.tracer }));
  const baseline = { domains: h.host.iommu.stats().domains };
  const vmm = Vmm.create(h.host, { name: "vm-mdev", memoryBytes, rlimitMemlockBytes: 1 * MiB });
  return { h, parent, vmm, baseline };
}

describe("vmm: mdevs that pin on demand", () => {
  it("pins nothing at MAP_DMA: locked_vm stays 0 until the device pins a page the guest names", () => {
    const { h, parent, vmm } = setup();
    const sysfsdev = createMdev(h, "pintest", "pintest-pin", PIN_UUID);
    const dev = vmm.attach({ sysfsdev });
    const pin = parent.devices.get(PIN_UUID)!;
    assert.deepEqual(pin.log, ["open"]);
    assert.equal(vmm.process.mm.lockedVm(), 0, "256 MiB mapped, nothing locked");
    assert.equal(h.host.physmem.stats().pinnedFrames, 0);
    const bar = dev.barAddress(0);
    assert.equal(dev.bars[0]!.kind, "mem32");
    // The guest driver hands the device a buffer at GPA 0x5000 (the way a GPU driver writes a GTT entry).
    vmm.mmioWrite(gpa(bar + 0x00), 4, 0x5000);
    assert.equal(vmm.mmioRead(gpa(bar + 0x08), 4), 1);
    assert.equal(vmm.process.mm.lockedVm(), 1, "one page charged when the vendor driver pinned it");
    assert.equal(h.host.physmem.stats().pinnedFrames, 1);
    // The device writes into that page (vfio_dma_rw): the guest's CPU sees it at the GPA.
    vmm.mmioWrite(gpa(bar + 0x0c), 4, 0xfeedbeef);
    assert.equal(vmm.ram.readU32(gpa(0x5000)), 0xfeedbeef);
    // Its INTx reaches the guest.
    const got: number[] = [];
    vmm.onInterrupt(dev, (v) => got.push(v));
    vmm.mmioWrite(gpa(bar + 0x10), 4, 1);
    vmm.mmioWrite(gpa(bar + 0x10), 4, 1);
    assert.equal(got.length, 2, "EOI'd (UNMASK) after the first");
  });

  it("hot-unplug of a block an mdev pinned: UNMAP_DMA calls its dma_unmap, it unpins, the block goes", () => {
    const { h, parent, vmm, baseline } = setup();
    const dimm = vmm.plugMemory(64 * MiB);
    assert.equal(dimm.gpa, vmm.layout.hotplug.start);
    assert.equal(dimm.name, "dimm0");
    parent.pinAtOpen = gpa(dimm.gpa + 0x3000);
    const sysfsdev = createMdev(h, "pintest", "pintest-pin", PIN_UUID);
    const dev = vmm.attach({ sysfsdev });
    const pin = parent.devices.get(PIN_UUID)!;
    assert.deepEqual([...pin.pinned], [dimm.gpa + 0x3000], "pinned at open, inside the hot-plugged block");
    vmm.mmioWrite(gpa(dev.barAddress(0) + 0x04), 4, Math.floor((dimm.gpa + 0x7000) / 2 ** 32));
    vmm.mmioWrite(gpa(dev.barAddress(0) + 0x00), 4, (dimm.gpa + 0x7000) % 2 ** 32);
    vmm.mmioWrite(gpa(dev.barAddress(0) + 0x00), 4, 0x1000); // and one page of boot RAM
    assert.equal(vmm.process.mm.lockedVm(), 3);
    vmm.ram.writeU32(gpa(dimm.gpa + 0x3000), 42);

    vmm.unplugMemory({ gpa: dimm.gpa, size: dimm.size });
    assert.deepEqual(pin.log.slice(1), [`dmaUnmap ${dimm.gpa.toString(16)} ${dimm.size.toString(16)}`]);
    assert.deepEqual([...pin.pinned], [0x1000], "only the pins inside the unplugged block were dropped");
    assert.equal(vmm.process.mm.lockedVm(), 1);
    assert.equal(h.host.physmem.stats().pinnedFrames, 1);
    assert.deepEqual(
      vmm.ramBlocks().map((b) => b.name),
      ["ram-below-4g"],
    );
    assert.equal(h.rec.count("vmm.unplug"), 1);
    assert.ok(h.rec.named("vmm.ram.unmap").some((r) => r.fields.block === "dimm0" && r.fields.bytes === dimm.size));
    assert.throws(
      () => vmm.ram.readU32(gpa(dimm.gpa + 0x3000)),
      (e: unknown) => isKernelError(e) && e.errno === Errno.EFAULT && /is not RAM/.test(e.message),
    );
    assert.equal(vmm.mmioRead(gpa(dimm.gpa + 0x3000), 4), 0xffffffff, "an unplugged GPA is unassigned");
    // A block plugged after the container exists is mapped into it at once.
    const again = vmm.plugMemory(32 * MiB);
    assert.equal(again.gpa, vmm.layout.hotplug.start, "the freed range is reused");
    assert.ok(h.rec.named("vmm.ram.map").some((r) => r.fields.block === "dimm1"));
    vmm.mmioWrite(gpa(dev.barAddress(0) + 0x04), 4, Math.floor(again.gpa / 2 ** 32));
    vmm.mmioWrite(gpa(dev.barAddress(0) + 0x00), 4, again.gpa % 2 ** 32);
    assert.equal(vmm.process.mm.lockedVm(), 2);
    vmm.shutdown();
    assertNothingLeft(h, vmm.process.pid, baseline);
    assert.deepEqual(pin.log.at(-1), "close");
  });

  it("a vendor driver that will not unpin: UNMAP_DMA fails with EBUSY naming it, and the block stays", () => {
    const { h, parent, vmm, baseline } = setup();
    const dimm = vmm.plugMemory(16 * MiB);
    parent.pinAtOpen = dimm.gpa;
    parent.stubborn = true;
    vmm.attach({ sysfsdev: createMdev(h, "pintest", "pintest-pin", PIN_UUID) });
    let caught: unknown;
    try {
      vmm.unplugMemory({ gpa: dimm.gpa, size: dimm.size });
    } catch (e) {
      caught = e;
    }
    assert.ok(isKernelError(caught));
    assert.equal(caught.errno, Errno.EBUSY);
    assert.match(
      caught.message,
      /^vm-mdev: unplug of dimm0: UNMAP_DMA of 16 MiB at 0x[0-9a-f]+ \(dimm0\) in container 1 failed: EBUSY/,
    );
    assert.match(caught.message, new RegExp(PIN_UUID));
    assert.ok(
      vmm.ramBlocks().some((b) => b.name === "dimm0"),
      "the VMM keeps the block it could not unmap",
    );
    vmm.ram.writeU32(gpa(dimm.gpa), 1);
    assert.throws(
      () => vmm.unplugMemory({ gpa: dimm.gpa, size: 4096 }),
      (e: unknown) => isKernelError(e) && e.errno === Errno.EINVAL && /no RAM block is exactly/.test(e.message),
    );
    // Closing the device at shutdown releases its pins anyway (close_device).
    vmm.shutdown();
    assertNothingLeft(h, vmm.process.pid, baseline);
  });

  it("several groups share one container: SET_CONTAINER on the existing one first, RAM mapped once", () => {
    const { h, vmm, baseline } = setup();
    const a = vmm.attach({ sysfsdev: createMdev(h, "pintest", "pintest-pin", PIN_UUID) });
    const b = vmm.attach({ sysfsdev: createMdev(h, "mtty", "mtty-1", MTTY_UUID) });
    assert.notEqual(a.group, b.group);
    assert.deepEqual([a.slot, b.slot], [2, 3]);
    const st = vmm.state();
    assert.equal(st.containers.length, 1);
    assert.deepEqual([...st.containers[0]!.groups].sort(), [a.group, b.group].sort());
    assert.equal(h.rec.count("vmm.ram.map"), 1, "the second group joined the mapped container");
    assert.equal(h.vfio.inspect().containers.length, 1);
    vmm.detach(a);
    assert.equal(vmm.state().containers.length, 1, "the container stays while a group is in it");
    assert.equal(h.vfio.inspect().groups.find((g) => g.id === a.group)?.open, false);
    vmm.detach(b);
    assert.deepEqual(vmm.state().containers, []);
    assert.deepEqual(h.vfio.inspect().containers, []);
    vmm.shutdown();
    assertNothingLeft(h, vmm.process.pid, baseline);
  });

  it("an mdev and a whole assigned device in one VM: the container pins all RAM only once the device joins", () => {
    const h = vmmTestHost();
    h.mdev.registerParent(createMttyParent({ tracer: h.host.tracer }));
    const bdf = parseBdf("0000:00:04.0");
    const edu = new EduDevice({ bdf, bus: h.host.pci, dma: h.host.deviceDma(bdf), tracer: h.host.tracer });
    h.host.addPciDevice(edu);
    h.vfioPci.bind(bdf);
    const baseline = { domains: h.host.iommu.stats().domains };
    const ram = 32 * MiB;
    const vmm = Vmm.create(h.host, { name: "vm-mixed", memoryBytes: ram, rlimitMemlockBytes: 1 * SZ_1G });
    const tty = vmm.attach({ sysfsdev: createMdev(h, "mtty", "mtty-1", MTTY_UUID) });
    assert.equal(vmm.process.mm.lockedVm(), 0);
    const dev = vmm.attach({ host: bdf });
    assert.equal(vmm.state().containers.length, 1, "the IOMMU group joined the mdev's container");
    assert.equal(vmm.process.mm.lockedVm(), ram / 4096, "and type1 pinned all of RAM for its domain");
    assert.equal(dev.irqMode, "msi");
    assert.equal(tty.irqMode, "intx");
    vmm.detach(dev);
    assert.equal(vmm.process.mm.lockedVm(), 0, "the last IOMMU group left: the pins went with the domain");
    assert.equal(vmm.state().containers.length, 1);
    vmm.kill();
    assertNothingLeft(h, vmm.process.pid, baseline);
  });
});
