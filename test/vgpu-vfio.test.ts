/**
 * The vGPU across the layers: created through sysfs, attached by a VMM through vfio (type1), guest memory mapped with
 * MAP_DMA and unmapped with UNMAP_DMA, guest work executed by the real GPU model (src/gpu) through the shadow GTT and
 * the system IOMMU. What these tests watch is what the seed is about: pins, IOVAs, shadow entries and isolation.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Hva, type Iova, PAGE_SIZE, type Pfn } from "../src/core/index.ts";
import { gen8PteDecode, gen8PteEncode } from "../src/gpu/index.ts";
import {
  batchStart,
  colorBlt,
  MI_BATCH_BUFFER_END,
  MI_USER_INTERRUPT,
  MiB,
  storeDword,
  VgpuWorld,
} from "../src/vgpu/testing.ts";

describe("vGPU through sysfs, vfio and type1", () => {
  it("is created by a write to the type's create file and reached by the VMM's device fd", () => {
    const w = new VgpuWorld();
    const dir = `/sys/class/mdev_bus/${w.parent.parentName}/mdev_supported_types/i915-GVTg_V5_4`;
    assert.equal(w.host.sysfs.read(`${dir}/available_instances`), "3\n");
    assert.match(w.host.sysfs.read(`${dir}/description`), /^low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\n/);
    const uuid = "5f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    w.host.sysfs.write(`${dir}/create`, `${uuid}\n`);
    assert.equal(w.host.sysfs.read(`${dir}/available_instances`), "2\n");
    const g = w.attach(uuid);
    assert.equal(g.aperture.size, 128 * MiB);
    assert.equal(w.recorder!.named("vgpu.create").at(-1)!.fields.type, "GVTg_V5_4");
    g.close();
    w.host.sysfs.write(`/sys/bus/mdev/devices/${uuid}/remove`, "1");
    assert.equal(w.host.sysfs.read(`${dir}/available_instances`), "3\n");
    assert.equal(w.recorder!.named("vgpu.destroy").length, 1);
    w.checkInvariants();
  });

  it("UNMAP_DMA while pages are pinned: the vendor's callback scratches the entries and unpins; nothing dangles", () => {
    const w = new VgpuWorld();
    const uuid = w.create("GVTg_V5_8");
    const g = w.attach(uuid, { ramBytes: 4 * MiB, mapChunkBytes: 1 * MiB });
    const v = g.vgpu;
    const first = g.aperture.base / PAGE_SIZE;
    // Entries 0..7 name pages in each of the four 1 MiB pieces; entries 8, 9 share a page in the second piece.
    for (let i = 0; i < 8; i++) g.gttWrite(first + i, (i % 4) * MiB + i * PAGE_SIZE + 1);
    g.gttWrite(first + 8, 1 * MiB + 0x10_000 + 1);
    g.gttWrite(first + 9, 1 * MiB + 0x10_000 + 1);
    assert.equal(v.stats().pinnedPages, 9);
    const victim = first + 1; // GPA 1 MiB + 4 KiB
    const oldIova = gen8PteDecode(w.driver.readGgtt(victim)) as Iova;
    const domain = w.host.iommu.domainOf(w.driver.bdf);
    assert.ok(domain.iovaToPhys(oldIova) >= 0);
    const locked0 = g.qemu.mm.lockedVm();

    const unmapped = g.unmap(1 * MiB, 1 * MiB);
    assert.equal(unmapped, 1 * MiB);
    const ev = w.recorder!.named("vgpu.dma_unmap").at(-1)!.fields;
    assert.deepEqual([ev.iova, ev.length, ev.gfns, ev.entries], [1 * MiB, 1 * MiB, 3, 4]);
    const scratch = gen8PteEncode(v.scratch.dmaAddr);
    assert.notEqual(scratch, gen8PteEncode(w.driver.scratch.dmaAddr), "the vGPU's own scratch page, not the host's");
    for (const i of [1, 5, 8, 9]) assert.equal(w.driver.readGgtt(first + i), scratch, `entry ${i} -> scratch`);
    for (const i of [0, 2, 3, 4, 6, 7]) assert.notEqual(w.driver.readGgtt(first + i), scratch, `entry ${i} kept`);
    assert.equal(v.stats().pinnedPages, 6);
    assert.equal(g.qemu.mm.lockedVm(), locked0 - 3);
    assert.ok(!(domain.iovaToPhys(oldIova) >= 0), "the old IOVA is no longer mapped in the IOMMU");
    assert.equal(g.gttRead(victim), 1 * MiB + PAGE_SIZE + 1, "the guest's own entry is unchanged");
    v.checkInvariants();
    w.checkInvariants();

    // The GPU now reads the scratch page there, not the guest's old frame.
    assert.equal(w.gpu.gpu.barRead(2, victim * PAGE_SIZE, 4), 0);
    // Re-pointing an entry into the unmapped hole fails to pin: scratch again, counted.
    g.gttWrite(first + 1, 1 * MiB + 1);
    assert.equal(v.stats().scratchFallbacks, 1);
    // ... and once the VMM maps it again, it works.
    g.container.mapDma({ vaddr: (g.ram + 1 * MiB) as Hva, iova: 1 * MiB, size: 1 * MiB, read: true, write: true });
    g.gttWrite(first + 1, 1 * MiB + 1);
    assert.equal(v.stats().pinnedPages, 7);
    v.checkInvariants();
  });

  it("two vGPUs on one GPU each see only their own memory", () => {
    const w = new VgpuWorld();
    const a = w.attach(w.create("GVTg_V5_8"), { ramBytes: 4 * MiB });
    const b = w.attach(w.create("GVTg_V5_8"), { ramBytes: 4 * MiB });
    assert.notEqual(a.aperture.base, b.aperture.base);
    // The same GPA in two VMs: different host frames, different data.
    const memA = a.allocGm(1);
    const memB = b.allocGm(1);
    a.writeGm(memA, 0, [0xaaaa_aaaa]);
    b.writeGm(memB, 0, [0xbbbb_bbbb]);
    assert.equal(memA.gpas[0], memB.gpas[0]);
    assert.equal(w.gpu.gpu.barRead(2, memA.gma, 4), 0xaaaa_aaaa);
    assert.equal(w.gpu.gpu.barRead(2, memB.gma, 4), 0xbbbb_bbbb);

    // A cannot point B's GTT entries at its pages: the write is ignored.
    const before = w.driver.readGgtt(memB.gma / PAGE_SIZE);
    a.gttWrite(memB.gma / PAGE_SIZE, 0x3000 | 1);
    assert.equal(w.driver.readGgtt(memB.gma / PAGE_SIZE), before);
    assert.equal(a.vgpu.stats().ignoredWrites, 1);

    // Nor reach B's memory with the GPU: every such command is rejected.
    const ringA = a.setupRing("bcs");
    const submissions0 = w.driver.engineStats("bcs").submissions;
    ringA.submit(storeDword(memB.gma, 0xdead));
    ringA.submit(colorBlt(memB.gma, 64, 0, 0, 16, 1, 0xdead));
    assert.equal(a.vgpu.stats().rejectedCommands, 2);
    w.run(1_000_000);
    assert.equal(w.driver.engineStats("bcs").submissions, submissions0, "nothing reached the engine");
    assert.equal(b.readGmU32(memB, 0), 0xbbbb_bbbb);

    // What A's work does touch: only frames of A's VMM and of the host driver (ring, shadow batches, scratch).
    const owners = new Set<number>();
    w.host.deviceDma(w.driver.bdf).setObserver((_bdf, _iova, pfn: Pfn) => owners.add(w.host.physmem.owner(pfn)));
    const bb = a.allocGm(1, "hidden");
    a.writeGm(bb, 0, [...colorBlt(memA.gma, 256, 0, 0, 64, 4, 0x1111_1111), MI_BATCH_BUFFER_END]);
    ringA.submit([...batchStart(bb.gma), MI_USER_INTERRUPT]);
    w.run(1_000_000);
    w.host.deviceDma(w.driver.bdf).setObserver(undefined);
    assert.equal(a.readGmU32(memA, 0), 0x1111_1111);
    assert.ok(owners.has(a.qemu.pid));
    assert.ok(!owners.has(b.qemu.pid), "never a frame of B's VM");
    for (const o of owners) assert.ok(o === a.qemu.pid || o === 0, `frame owner ${o}`);
    w.checkInvariants();
  });

  it("malicious submissions execute nothing: host range, past the end, oversize, bad registers, unknown opcode", () => {
    const w = new VgpuWorld();
    const g = w.attach(w.create("GVTg_V5_8"), { ramBytes: 4 * MiB });
    const ring = g.setupRing("rcs");
    const hostRing = w.driver.ringGma("rcs");
    const apEnd = g.aperture.base + g.aperture.size;
    const cases: number[][] = [
      storeDword(hostRing, 0), // the host driver's own ring
      storeDword(apEnd, 0), // one past the aperture partition
      storeDword(g.hidden.base + g.hidden.size - 2, 0), // straddles the end of the hidden partition
      colorBlt(g.hidden.base, 0x4000, 0, 0, 0x1000, 0x0a00, 0), // 40 MiB
      [0x1100_0001, 0x44200, 0], // MI_LOAD_REGISTER_IMM to the master interrupt
      [0x1100_0001, 0x2034, 0], // ... to RING_HEAD
      [0x1f80_0000], // unknown MI opcode
    ];
    const stats0 = w.driver.engineStats("rcs");
    for (const c of cases) ring.submit(c);
    w.run(10_000_000);
    const stats1 = w.driver.engineStats("rcs");
    assert.equal(stats1.submissions, stats0.submissions);
    assert.equal(stats1.commands, stats0.commands);
    assert.equal(g.vgpu.stats().rejectedCommands, cases.length);
    const reasons = w.recorder!.named("vgpu.cmd.audit.reject").map((r) => r.fields.reason);
    assert.match(
      reasons[0]!,
      /MI_STORE_DATA_IMM target \[0x[0-9a-f]+, 0x[0-9a-f]+\) is outside the vGPU's graphics memory/,
    );
    assert.match(reasons[3]!, /exceeds the 36 MiB operation limit/);
    assert.match(reasons[4]!, /register 0x44200 is not allowed/);
    assert.match(reasons[6]!, /unknown command/);
    assert.equal(ring.head, ring.tail, "HEAD moved past every one");
    assert.equal(ring.tail, 120);
  });

  it("batch-buffer TOCTOU: the guest rewrites its batch after submitting; the audited shadow runs", () => {
    const w = new VgpuWorld();
    const g = w.attach(w.create("GVTg_V5_8"), { ramBytes: 8 * MiB });
    const ring = g.setupRing("bcs");
    const data = g.allocGm(1);
    const big = g.allocGm(256); // 1 MiB the first blit keeps the engine busy with
    const bb = g.allocGm(1, "hidden");
    g.writeGm(bb, 0, [...storeDword(data.gma, 0x600d), MI_BATCH_BUFFER_END]);
    ring.submit(colorBlt(big.gma, 4096, 0, 0, 1024, 256, 0));
    ring.submit([...batchStart(bb.gma), MI_USER_INTERRUPT]);
    // Still queued behind the blit: the guest now turns its batch into an attack on the host's ring.
    g.writeGm(bb, 0, storeDword(w.driver.ringGma("bcs"), 0xbad));
    w.run(10_000_000);
    assert.equal(g.readGmU32(data, 0), 0x600d, "the shadow copy ran");
    assert.equal(g.vgpu.stats().completedWorkloads, 2);
    w.checkInvariants();
  });

  it("IOVA, pin, memory and capacity counts return to their previous state after the vGPUs are removed", () => {
    const w = new VgpuWorld();
    const cap0 = w.driver.capacity();
    const maps0 = w.driver.dma.mappings();
    const pinned0 = w.host.physmem.stats().pinnedFrames;
    const sessions = ["GVTg_V5_8", "GVTg_V5_4"].map((t) => w.attach(w.create(t), { ramBytes: 4 * MiB }));
    for (const g of sessions) {
      g.enableInterrupts();
      const ring = g.setupRing("rcs");
      const data = g.allocGm(4, "hidden");
      const bb = g.allocGm(1, "hidden");
      g.writeGm(bb, 0, [...colorBlt(data.gma, 4096, 0, 0, 1024, 4, 7), MI_BATCH_BUFFER_END]);
      ring.submit([...batchStart(bb.gma), MI_USER_INTERRUPT]);
      ring.submit([...storeDword(data.gma, 1)]);
    }
    w.run(5_000_000);
    assert.ok(w.driver.dma.mappings() > maps0);
    assert.ok(w.host.physmem.stats().pinnedFrames > pinned0);
    w.checkInvariants();
    for (const g of sessions) {
      g.close();
      g.qemu.exit();
      w.mdev.remove(g.uuid);
    }
    assert.equal(w.driver.dma.mappings(), maps0, "every IOVA unmapped");
    assert.equal(w.host.physmem.stats().pinnedFrames, pinned0, "every pin released");
    assert.deepEqual(w.driver.capacity(), cap0, "partitions and fences returned");
    assert.equal(
      w.recorder!.named("vgpu.gfn.pin").length,
      w.recorder!.named("vgpu.gfn.unpin").length,
      "one unpin per pin",
    );
    w.driver.checkInvariants({ scanGgtt: true });
    w.checkInvariants();
  });

  it("a vGPU removed with work still on an engine returns its partition only when that work has completed", () => {
    const w = new VgpuWorld();
    const cap0 = w.driver.capacity();
    const g = w.attach(w.create("GVTg_V5_8"), { ramBytes: 8 * MiB });
    const ring = g.setupRing("bcs");
    const big = g.allocGm(1024);
    ring.submit(colorBlt(big.gma, 4096, 0, 0, 1024, 1024, 0)); // 4 MiB: ~260 us of engine time
    g.close();
    g.qemu.exit();
    w.mdev.remove(g.uuid);
    assert.equal(g.qemu.mm.lockedVm(), 0);
    assert.equal(w.recorder!.named("vgpu.destroy").at(-1)!.fields.inFlight, 1);
    assert.notDeepEqual(w.driver.capacity(), cap0, "still held while the blit runs");
    assert.equal(w.recorder!.named("vgpu.release").length, 0);
    w.checkInvariants();
    w.run(1_000_000);
    assert.deepEqual(w.driver.capacity(), cap0);
    assert.equal(w.recorder!.named("vgpu.release").length, 1);
    w.checkInvariants();
  });

  it("the scheduler shares the real GPU by weight (GVTg_V5_8 : GVTg_V5_4 = 2 : 4)", () => {
    const w = new VgpuWorld({ trace: false });
    const sessions = ["GVTg_V5_8", "GVTg_V5_4"].map((t) => w.attach(w.create(t), { ramBytes: 1 * MiB }));
    for (const g of sessions) {
      // 8 MiB blits into graphics memory whose entries are not present: the engine time is counted, no bytes move.
      const target = g.aperture.base + 16 * MiB;
      for (let i = 0; i < 2048; i++) g.gttWrite(target / PAGE_SIZE + i, 0);
      const ring = g.setupRing("bcs", 4);
      for (let i = 0; i < 400; i++) ring.submit(colorBlt(target, 8192, 0, 0, 2048, 1024, 0));
    }
    w.run(300_000_000);
    const [a, b] = sessions.map((g) => g.vgpu.stats().busyNs);
    const ratio = b! / a!;
    assert.ok(Math.abs(ratio - 2) < 0.2, `busy ratio ${ratio.toFixed(3)} (${a} vs ${b})`);
    assert.ok(a! + b! > 0.95 * 300_000_000, "the engine stayed busy");
  });
});
