import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, KernelError, PAGE_SIZE } from "../core/index.ts";
import {
  BAR0_SIZE,
  ENGINE_BASE,
  encodeFence,
  FENCE_REG_GEN6_LO,
  GEN6_GDRST,
  GEN6_GRDOM_FULL,
  GEN8_GT_IMR0,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GPU_DEVICE_ID,
  GPU_VENDOR_ID,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_RENDER_USER_INTERRUPT,
  PVINFO,
  RING_HEAD,
  RING_START,
  RING_TAIL,
  tiledOffset,
  VGT_PVINFO_PAGE,
} from "../gpu/index.ts";
import {
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from "../vfio/index.ts";
import { MI_USER_INTERRUPT, MiB, storeDword, VgpuWorld } from "./testing.ts";

const errno = (n: number, re?: RegExp) => (e: unknown) =>
  e instanceof KernelError && e.errno === n && (re === undefined || re.test(e.message));

function setup(type = "GVTg_V5_8") {
  const w = new VgpuWorld();
  const uuid = w.create(type);
  const g = w.attach(uuid, { ramBytes: 4 * MiB });
  return { w, g, v: w.vgpu(uuid), uuid };
}

describe("vGPU device: what the VMM sees", () => {
  it("reports PCI | RESET, 9 regions (CONFIG, BAR0, BAR2) and vfio-pci's irq indices", () => {
    const { g } = setup();
    const info = g.device.info();
    assert.equal(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert.equal(info.numRegions, 9);
    assert.equal(info.numIrqs, 5);
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    const sizes = Array.from({ length: 9 }, (_, i) => [g.device.regionInfo(i).size, g.device.regionInfo(i).flags]);
    assert.deepEqual(sizes, [
      [BAR0_SIZE, rw],
      [0, 0],
      [512 * MiB, rw],
      [0, 0],
      [0, 0],
      [0, 0],
      [0, 0],
      [256, rw],
      [0, 0],
    ]);
    assert.deepEqual(g.device.irqInfo(0), {
      index: 0,
      flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
      count: 1,
    });
    assert.deepEqual(g.device.irqInfo(1), {
      index: 1,
      flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
      count: 1,
    });
    assert.equal(g.device.irqInfo(2).count, 0, "no MSI-X");
    assert.throws(() => g.device.irqInfo(3), errno(Errno.EINVAL, /PCI Express/));
    assert.equal(g.device.irqInfo(4).count, 1, "REQ");
    assert.throws(() => g.device.read(VFIO_PCI_BAR0_REGION_INDEX, BAR0_SIZE - 2, 4), errno(Errno.EINVAL));
    assert.throws(() => g.device.read(1, 0, 4), errno(Errno.EINVAL, /empty/));
  });

  it("has the physical GPU's identity and sizable BARs (BAR2 = the whole host aperture, as GVT-g)", () => {
    const { g } = setup("GVTg_V5_4");
    assert.equal(g.configRead16(0), GPU_VENDOR_ID);
    assert.equal(g.configRead16(2), GPU_DEVICE_ID);
    const cls = g.device.read(VFIO_PCI_CONFIG_REGION_INDEX, 9, 3);
    assert.deepEqual([...cls], [0x00, 0x00, 0x03]);
    const probe = (off: number) => {
      g.device.write(VFIO_PCI_CONFIG_REGION_INDEX, off, new Uint8Array([0xff, 0xff, 0xff, 0xff]));
      return new DataView(g.device.read(VFIO_PCI_CONFIG_REGION_INDEX, off, 4).slice().buffer).getUint32(0, true);
    };
    assert.equal(probe(0x10), (~(16 * MiB - 1) | 0x4) >>> 0, "BAR0: 16 MiB, 64-bit");
    assert.equal(probe(0x14), 0xffff_ffff);
    assert.equal(probe(0x18), (~(512 * MiB - 1) | 0xc) >>> 0, "BAR2: 512 MiB (the host aperture), 64-bit prefetchable");
    assert.notEqual(g.vgpu.config.msiCap, 0, "MSI capability");
  });

  it("publishes its partition in PVINFO; only display_ready and g2v_notify are guest-writable", () => {
    const { g, v } = setup();
    const p = (f: number) => g.mmio(VGT_PVINFO_PAGE + f);
    assert.equal(p(PVINFO.magic), 0x76544776);
    assert.equal(p(PVINFO.magic + 4), 0x47765447);
    assert.equal(p(PVINFO.versionMajor) & 0xffff, 1);
    assert.equal(p(PVINFO.versionMajor) >>> 16, 0);
    assert.equal(p(PVINFO.vgtId), v.id);
    assert.deepEqual(
      [p(PVINFO.mappableBase), p(PVINFO.mappableSize), p(PVINFO.nonmappableBase), p(PVINFO.nonmappableSize)],
      [v.resources.aperture.base, 64 * MiB, v.resources.hidden.base, 384 * MiB],
    );
    assert.equal(p(PVINFO.fenceNum), 4);
    g.setMmio(VGT_PVINFO_PAGE + PVINFO.displayReady, 1);
    g.setMmio(VGT_PVINFO_PAGE + PVINFO.magic, 0);
    g.setMmio(VGT_PVINFO_PAGE + PVINFO.mappableSize, 0x7fff_f000);
    assert.equal(p(PVINFO.displayReady), 1);
    assert.equal(p(PVINFO.magic), 0x76544776);
    assert.equal(p(PVINFO.mappableSize), 64 * MiB, "the guest cannot grow its partition");
    assert.equal(v.stats().droppedMmioWrites, 2);
  });

  it("untracked registers are plain storage (counted); the hole below the GTT window reads 0 and drops writes", () => {
    const { g, v } = setup();
    g.setMmio(0x1234, 0xffff);
    g.setMmio(3 * MiB, 1);
    assert.equal(g.mmio(0x1234), 0xffff);
    assert.equal(g.mmio(3 * MiB), 0);
    assert.equal(v.stats().droppedMmioWrites, 1);
    assert.deepEqual([v.stats().untrackedMmioWrites, v.stats().untrackedMmioReads], [1, 2]);
  });

  it("maps guest fence i to the vGPU's physical fence; refuses fences beyond fence_num or outside its memory", () => {
    const { w, g, v } = setup();
    const phys = v.resources.fences[1]!;
    const start = v.resources.aperture.base;
    const lo = start | 1;
    const hi = start + 16 * PAGE_SIZE - PAGE_SIZE;
    g.setMmio(FENCE_REG_GEN6_LO + 8 + 4, hi);
    g.setMmio(FENCE_REG_GEN6_LO + 8, lo);
    assert.equal(g.mmio(FENCE_REG_GEN6_LO + 8), lo, "the guest reads its own fence");
    const fences = w.gpu.gpu.fences;
    // Programmed as two halves: the end address in the high dword takes the value beyond 2^53.
    assert.deepEqual([fences[2 * phys], fences[2 * phys + 1]], [lo, hi]);
    const dropped = v.stats().droppedMmioWrites;
    g.setMmio(FENCE_REG_GEN6_LO + 4 * 8, 1); // guest fence 4: it has 4
    assert.equal(g.mmio(FENCE_REG_GEN6_LO + 4 * 8), 0);
    g.setMmio(FENCE_REG_GEN6_LO + 4, 0); // fence 0 covering GMA 0 (the host's): refused
    g.setMmio(FENCE_REG_GEN6_LO, 1);
    const f0 = v.resources.fences[0]!;
    assert.deepEqual([fences[2 * f0], fences[2 * f0 + 1]], [0, 0]);
    assert.equal(v.stats().droppedMmioWrites, dropped + 2);
    assert.match(w.recorder!.named("vgpu.mmio.dropped").at(-1)!.fields.reason, /outside the vGPU's graphics memory/);
  });

  it("BAR2: offset X is GMA X; it reaches the page the guest's GTT maps there, only inside its own aperture", () => {
    const { g, v } = setup();
    const mem = g.allocGm(2);
    const base = g.aperture.base;
    assert.equal(mem.gma, base);
    g.device.write(VFIO_PCI_BAR2_REGION_INDEX, mem.gma + PAGE_SIZE + 8, new Uint8Array([1, 2, 3, 4, 5]));
    assert.deepEqual([...g.readGpa(mem.gpas[1]! + 8, 5)], [1, 2, 3, 4, 5]);
    // Across a page boundary.
    g.device.write(VFIO_PCI_BAR2_REGION_INDEX, base + PAGE_SIZE - 2, new Uint8Array([9, 8, 7, 6]));
    assert.deepEqual([...g.readGpa(mem.gpas[0]! + PAGE_SIZE - 2, 2)], [9, 8]);
    assert.deepEqual([...g.readGpa(mem.gpas[1]!, 2)], [7, 6]);
    assert.deepEqual([...g.device.read(VFIO_PCI_BAR2_REGION_INDEX, base + PAGE_SIZE - 2, 4)], [9, 8, 7, 6]);
    // An offset whose GTT entry the guest never wrote reads zeros (the scratch page) and drops writes.
    g.device.write(VFIO_PCI_BAR2_REGION_INDEX, base + 10 * PAGE_SIZE, new Uint8Array([1]));
    assert.deepEqual([...g.device.read(VFIO_PCI_BAR2_REGION_INDEX, base + 10 * PAGE_SIZE, 1)], [0]);
    assert.equal(v.stats().apertureMisses, 2);
    // Outside the partition (the host's reservation below it, its end): refused, as kvmgt refuses it.
    assert.throws(
      () => g.device.read(VFIO_PCI_BAR2_REGION_INDEX, 0, 4),
      errno(Errno.EINVAL, /outside the vGPU's aperture/),
    );
    assert.throws(() => g.device.read(VFIO_PCI_BAR2_REGION_INDEX, base + 64 * MiB - 1, 2), errno(Errno.EINVAL));
  });
});

describe("vGPU aperture through a fence", () => {
  it("detiles BAR2 accesses in a fenced range onto the tiled layout (X and Y), as the aperture's fences do", () => {
    const { g } = setup();
    const mem = g.allocGm(8);
    const pitch = 1024; // 2 X tiles or 8 Y tiles across
    for (const t of ["x", "y"] as const) {
      const fence = { start: mem.gma, end: mem.gma + 8 * PAGE_SIZE, pitch, tiling: t };
      const [lo, hi] = encodeFence(fence);
      g.setMmio(FENCE_REG_GEN6_LO + 4, hi);
      g.setMmio(FENCE_REG_GEN6_LO, lo);
      // A linear row through the aperture: pixel row 9, bytes 100..699 (crosses X's 512-byte tile edge).
      const row = new Uint8Array(600).map((_, i) => (i * 7 + 3) & 0xff);
      g.device.write(VFIO_PCI_BAR2_REGION_INDEX, mem.gma + 9 * pitch + 100, row);
      for (const xb of [100, 511, 512, 699]) {
        const off = tiledOffset(t, pitch, xb, 9);
        const gpa = mem.gpas[Math.floor(off / PAGE_SIZE)]! + (off % PAGE_SIZE);
        assert.equal(g.readGpa(gpa, 1)[0], row[xb - 100], `${t}: byte ${xb} of row 9 lands at tiled offset ${off}`);
      }
      assert.deepEqual(g.device.read(VFIO_PCI_BAR2_REGION_INDEX, mem.gma + 9 * pitch + 100, 600), row, "reads back");
      // Without the fence the same aperture bytes are the memory's own, linear.
      g.setMmio(FENCE_REG_GEN6_LO, 0);
      const plain = g.device.read(VFIO_PCI_BAR2_REGION_INDEX, mem.gma + 9 * pitch + 100, 600);
      assert.notDeepEqual(plain, row, `${t}: unfenced, the aperture is linear`);
    }
  });
});

describe("vGPU interrupts", () => {
  it("delivers a user interrupt by MSI through the guest's IIR; masked in IMR it is neither latched nor sent", () => {
    const { w, g } = setup();
    const msi = g.enableInterrupts();
    const ring = g.setupRing("rcs");
    const data = g.allocGm(1);
    ring.submit([...storeDword(data.gma, 5), MI_USER_INTERRUPT]);
    w.run(1_000_000);
    assert.equal(msi.signals, 1);
    assert.equal(g.ackIir(), GT_RENDER_USER_INTERRUPT);
    assert.equal(g.mmio(GEN8_MASTER_IRQ), GEN8_MASTER_IRQ_CONTROL, "nothing pending after the ack");
    g.setMmio(GEN8_GT_IMR0, 0xffff_ffff);
    ring.submit([MI_USER_INTERRUPT]);
    w.run(1_000_000);
    assert.equal(msi.signals, 1);
    assert.equal(g.ackIir(), 0);
    const virq = w.recorder!.named("vgpu.virq").at(-1)!.fields;
    assert.equal(virq.delivered, "masked in IMR");
  });

  it("with the master disabled, latches and delivers when the guest re-enables it", () => {
    const { w, g } = setup();
    const msi = g.enableInterrupts();
    g.setMmio(GEN8_MASTER_IRQ, 0);
    const ring = g.setupRing("bcs");
    ring.submit([MI_USER_INTERRUPT]);
    w.run(1_000_000);
    assert.equal(msi.signals, 0);
    assert.equal(g.mmio(GEN8_MASTER_IRQ), 0x2, "BCS pending in the master");
    g.setMmio(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    assert.equal(msi.signals, 1);
    assert.equal(g.ackIir(), GT_RENDER_USER_INTERRUPT << 16);
  });

  it("injects only MSI, as GVT-g: with MSI off nothing reaches the INTx eventfd, and the event stays in IIR", () => {
    const { w, g, v } = setup();
    const intx = g.enableIntx();
    const ring = g.setupRing("rcs");
    ring.submit([MI_USER_INTERRUPT]);
    w.run(1_000_000);
    assert.equal(intx.signals, 0);
    g.device.setIrqsNone(VFIO_PCI_INTX_IRQ_INDEX, 0, 1, "unmask");
    assert.equal(intx.signals, 0);
    assert.equal(v.stats().interruptsDelivered, 0);
    assert.ok(v.stats().interruptsSuppressed >= 1);
    assert.match(w.recorder!.named("vgpu.virq").at(-1)!.fields.delivered, /MSI disabled/);
    assert.equal(g.ackIir(), GT_RENDER_USER_INTERRUPT, "latched all the same");
  });

  it("a rejected submission raises the command-streamer error in the guest's IIR and skips HEAD past it", () => {
    const { w, g, v } = setup();
    const msi = g.enableInterrupts();
    const ring = g.setupRing("rcs");
    ring.submit(storeDword(0, 1));
    assert.equal(v.stats().rejectedCommands, 1);
    assert.equal(msi.signals, 1);
    assert.equal(g.ackIir(), GT_CS_MASTER_ERROR_INTERRUPT);
    assert.equal(ring.head, 16, "HEAD = TAIL: the ring stays usable");
    const data = g.allocGm(1);
    ring.submit([...storeDword(data.gma, 0x77), MI_USER_INTERRUPT]);
    w.run(1_000_000);
    assert.equal(g.readGmU32(data, 0), 0x77);
    assert.equal(v.stats().rejectedCommands, 1);
  });
});

describe("vGPU resets", () => {
  it("GDRST resets the rings and drops queued work, but keeps the GTT (a guest's GGTT survives a GPU reset)", () => {
    const { w, g, v } = setup();
    const ring = g.setupRing("rcs");
    const pinned = v.stats().pinnedPages;
    assert.ok(pinned > 0);
    g.setMmio(GEN6_GDRST, GEN6_GRDOM_FULL);
    assert.equal(g.mmio(GEN6_GDRST), 0, "reset completes at once");
    assert.equal(g.mmio(ENGINE_BASE.rcs + RING_START), 0);
    assert.equal(v.stats().pinnedPages, pinned);
    assert.equal(g.gttRead(ring.mem.gma / PAGE_SIZE), ring.mem.gpas[0]! | 1);
    assert.deepEqual(w.recorder!.named("vgpu.reset").at(-1)!.fields.engines, ["rcs", "bcs", "vcs", "vecs"]);
    v.checkInvariants();
  });

  it("VFIO_DEVICE_RESET releases every pin, IOVA and shadow entry and restores registers and PVINFO", () => {
    const { w, g, v } = setup();
    const dmaMaps0 = w.driver.dma.mappings();
    g.enableInterrupts();
    const ring = g.setupRing("rcs");
    const data = g.allocGm(3, "hidden");
    ring.submit([...storeDword(data.gma, 1)]);
    w.run(1_000_000);
    assert.ok(v.stats().pinnedPages >= 4);
    assert.equal(w.driver.dma.mappings(), dmaMaps0 + v.stats().iovasMapped, "one DMA mapping per cached gfn");
    g.device.reset();
    const s = v.stats();
    assert.deepEqual([s.pinnedPages, s.shadowEntries, s.gfnCacheSize, s.iovasMapped], [0, 0, 0, 0]);
    assert.equal(g.qemu.mm.lockedVm(), 0);
    assert.equal(w.driver.dma.mappings(), dmaMaps0, "the guest pages' IOVAs are gone");
    assert.equal(g.gttRead(data.gma / PAGE_SIZE), 0);
    assert.equal(g.mmio(ENGINE_BASE.rcs + RING_HEAD), 0);
    assert.equal(g.mmio(GEN8_MASTER_IRQ), 0);
    assert.equal(g.mmio(VGT_PVINFO_PAGE + PVINFO.vgtId), v.id);
    assert.equal(g.configRead16(4) & 0x6, 0, "memory and bus-master decode off");
    v.checkInvariants();
  });

  it("close releases the session: pins, eventfds; the vGPU leaves the run queue", () => {
    const { w, g, v } = setup();
    const msi = g.enableInterrupts();
    const ring = g.setupRing("rcs");
    ring.submit([MI_USER_INTERRUPT]);
    g.close();
    w.run(1_000_000);
    assert.equal(v.stats().pinnedPages, 0);
    assert.equal(v.stats().open, false);
    assert.equal(msi.signals, 0, "completion after close is not delivered");
    assert.equal(w.parent.scheduler.stats(v.id).active, false);
    v.checkInvariants();
  });

  it("a TAIL write on a disabled ring does nothing; the ring must lie in the partition", () => {
    const { g, v } = setup();
    g.setMmio(ENGINE_BASE.rcs + RING_TAIL, 8);
    assert.equal(v.stats().submittedWorkloads + v.stats().rejectedCommands, 0);
    const ring = g.setupRing("rcs");
    g.setMmio(ENGINE_BASE.rcs + RING_START, 0x1000);
    ring.submit([MI_USER_INTERRUPT]);
    assert.equal(v.stats().rejectedCommands, 1);
  });
});
