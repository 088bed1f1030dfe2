import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, type Hva, type Iova, KernelError, PAGE_SIZE } from "../core/index.ts";
import { GEN8_PAGE_PRESENT, GTT_OFFSET, gen8PteDecode, gen8PteEncode } from "../gpu/index.ts";
import { VFIO_PCI_BAR0_REGION_INDEX } from "../vfio/index.ts";
import { colorBlt, injectDmaMapFailure, srcCopyBlt, VgpuWorld } from "./testing.ts";

const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);

function setup(opts: { rlimitMemlockBytes?: number } = {}) {
  const w = new VgpuWorld();
  const uuid = w.create("GVTg_V5_8");
  const g = w.attach(uuid, { ramBytes: 4 * 1024 * 1024, ...opts });
  const v = w.vgpu(uuid);
  const first = g.aperture.base / PAGE_SIZE;
  return { w, g, v, first };
}

describe("shadow GTT", () => {
  it("translates a guest PTE to a pinned frame, an IOVA and a physical entry; the GPU's DMA reaches the guest page", () => {
    const { w, g, v, first } = setup();
    const gpa = 0x5000;
    g.writeGpa(gpa + 0x10, u32(0xcafe_f00d));
    g.gttWrite(first, gpa | GEN8_PAGE_PRESENT);

    const frame = g.qemu.mm.translate((g.ram + gpa) as Hva);
    assert.ok(frame !== undefined);
    assert.ok(w.host.physmem.pinCount(frame) > 0, "vfio pinned the guest page");
    const phys = w.driver.readGgtt(first);
    const iova = gen8PteDecode(phys);
    assert.notEqual(iova, gpa, "the physical entry holds an IOVA, not the GPA");
    assert.equal(w.host.iommu.domainOf(w.driver.bdf).iovaToPhys(iova as Iova), frame * PAGE_SIZE, "IOVA -> frame");
    assert.equal(g.gttRead(first), gpa | GEN8_PAGE_PRESENT, "the guest reads back its own entry");

    // The physical GPU, through its aperture: GMA -> GGTT -> IOVA -> IOMMU -> the guest's frame.
    const gma = first * PAGE_SIZE;
    assert.equal(w.gpu.gpu.barRead(2, gma + 0x10, 4), 0xcafe_f00d);
    w.gpu.gpu.barWrite(2, gma + 0x20, 4, 0x1234_5678);
    assert.deepEqual([...g.readGpa(gpa + 0x20, 4)], [0x78, 0x56, 0x34, 0x12]);

    const ev = w.recorder!.named("vgpu.gtt.shadow").at(-1)!.fields;
    assert.deepEqual({ gfn: ev.gfn, iova: ev.iova, hit: ev.hit }, { gfn: gpa / PAGE_SIZE, iova, hit: false });
    assert.equal(w.recorder!.named("vgpu.gfn.pin").length, 1);
    const s = v.stats();
    assert.deepEqual([s.pinnedPages, s.shadowEntries, s.gfnCacheSize, s.iovasMapped], [1, 1, 1, 1]);
    v.checkInvariants();
  });

  it("holds a 4-byte half until the other half of the same entry arrives", () => {
    const { w, g, v, first } = setup();
    const scratch = gen8PteEncode(v.scratch.dmaAddr);
    const gpa = 0x12_3000;
    const off = GTT_OFFSET + (first + 3) * 8;
    g.device.write(VFIO_PCI_BAR0_REGION_INDEX, off, u32(gpa | 1));
    assert.equal(w.driver.readGgtt(first + 3), scratch, "low half alone: no shadow yet");
    assert.equal(v.stats().pinnedPages, 0);
    assert.equal(g.gttRead(first + 3), gpa | 1, "but the guest entry holds it");
    g.device.write(VFIO_PCI_BAR0_REGION_INDEX, off, u32(0x20_0000 | 1)); // the same half again: replaces, still held
    assert.equal(v.stats().pinnedPages, 0);
    g.device.write(VFIO_PCI_BAR0_REGION_INDEX, off, u32(gpa | 1));
    g.device.write(VFIO_PCI_BAR0_REGION_INDEX, off + 4, u32(0));
    assert.notEqual(w.driver.readGgtt(first + 3), scratch, "the pair completes: shadowed");
    assert.equal(v.stats().pinnedPages, 1);
    // High half first works too.
    g.device.write(VFIO_PCI_BAR0_REGION_INDEX, off + 8 + 4, u32(0));
    assert.equal(v.stats().pinnedPages, 1);
    g.device.write(VFIO_PCI_BAR0_REGION_INDEX, off + 8, u32(gpa | 1));
    assert.equal(v.stats().shadowEntries, 2);
    assert.equal(v.stats().pinnedPages, 1, "two entries, one page: one pin");
    v.checkInvariants();
  });

  it("the datasheet's half order shadows; low 0, high, low leaves the last low half pending", () => {
    const { w, g, v, first } = setup();
    const w4 = (index: number, half: 0 | 1, value: number) =>
      g.device.write(VFIO_PCI_BAR0_REGION_INDEX, GTT_OFFSET + index * 8 + half * 4, u32(value));
    const gpa = 0x6000;
    // Mapping: high half, then the low half with the present bit.
    w4(first, 1, 0);
    w4(first, 0, gpa | 1);
    assert.equal(v.gtt.gfnOf(first * PAGE_SIZE), gpa / PAGE_SIZE);
    // Unmapping: the low half (present bit clear) first, then the high half.
    w4(first, 0, 0);
    w4(first, 1, 0);
    assert.equal(w.driver.readGgtt(first), gen8PteEncode(v.scratch.dmaAddr) - 1, "not present");
    assert.equal(v.stats().pinnedPages, 0);
    // The naive sequence: the first two writes pair up, the last is held.
    w4(first + 1, 0, 0);
    w4(first + 1, 1, 0);
    w4(first + 1, 0, gpa | 1);
    assert.equal(g.gttRead(first + 1), gpa | 1, "the guest reads a present entry back ...");
    assert.equal(w.driver.readGgtt(first + 1), gen8PteEncode(v.scratch.dmaAddr) - 1, "... the GPU has none");
    assert.equal(v.stats().pinnedPages, 0);
    v.checkInvariants();
  });

  it("accepts only 4- and 8-byte writes, and ignores (and counts) writes outside the partition", () => {
    const { w, g, v, first } = setup();
    assert.throws(
      () => g.device.write(VFIO_PCI_BAR0_REGION_INDEX, GTT_OFFSET + first * 8, new Uint8Array([1, 0])),
      (e: unknown) =>
        e instanceof KernelError && e.errno === Errno.EINVAL && /only naturally aligned 4- or 8-byte/.test(e.message),
    );
    const other = first - 1; // the host's last aperture entry, just below this vGPU's partition
    const before = w.driver.readGgtt(other);
    g.gttWrite(other, 0x3000 | 1);
    g.gttWrite(0, 0x3000 | 1);
    assert.equal(w.driver.readGgtt(other), before, "the host's entry is untouched");
    assert.equal(g.gttRead(other), 0, "and the guest reads 0 there");
    assert.equal(v.stats().ignoredWrites, 2);
    assert.equal(v.stats().pinnedPages, 0);
    assert.equal(w.recorder!.named("vgpu.gtt.ignored").length, 2);
  });

  it("refcounts a gfn shared by entries; rewriting keeps the pin until the last reference goes", () => {
    const { w, g, v, first } = setup();
    const locked0 = g.qemu.mm.lockedVm();
    g.gttWrite(first, 0x7000 | 1);
    g.gttWrite(first + 1, 0x7000 | 1);
    assert.equal(v.stats().cacheHits, 1);
    assert.equal(g.qemu.mm.lockedVm() - locked0, 1);
    g.gttWrite(first, 0x7000 | 1); // same page again: hit, no unpin in between
    assert.equal(w.recorder!.named("vgpu.gfn.unpin").length, 0);
    g.gttWrite(first, 0); // not present
    assert.equal(w.driver.readGgtt(first), gen8PteEncode(v.scratch.dmaAddr) - 1, "scratch, present bit clear");
    assert.equal(v.stats().pinnedPages, 1);
    g.gttWrite(first + 1, 0x8000 | 1);
    assert.equal(v.stats().pinnedPages, 1, "0x7000 released, 0x8000 pinned");
    assert.equal(w.recorder!.named("vgpu.gfn.unpin").at(-1)!.fields.gfn, 7);
    assert.equal(g.qemu.mm.lockedVm() - locked0, 1);
    v.checkInvariants();
  });

  it("falls back to the scratch page, counted and traced, when pinning fails (RLIMIT_MEMLOCK, unmapped GPA)", () => {
    const { w, g, v, first } = setup({ rlimitMemlockBytes: 2 * PAGE_SIZE });
    g.gttWrite(first, 0x1000 | 1);
    g.gttWrite(first + 1, 0x2000 | 1);
    g.gttWrite(first + 2, 0x3000 | 1); // third page: over the 2-page limit
    assert.equal(v.stats().pinnedPages, 2);
    assert.equal(v.stats().scratchFallbacks, 1);
    const scratch = gen8PteEncode(v.scratch.dmaAddr);
    assert.equal(w.driver.readGgtt(first + 2), scratch);
    const ev = w.recorder!.named("vgpu.gtt.scratch").at(-1)!.fields;
    assert.match(ev.reason, /ENOMEM.*RLIMIT_MEMLOCK exceeded/);
    // The failure is a value where it happened: errno, the call, the entry and a sentence naming the limit.
    const e = v.lastPopulateError!;
    assert.deepEqual([e.errno, e.step, e.index, e.gfn], [Errno.ENOMEM, "vfio_pin_pages", first + 2, 3]);
    assert.match(e.message, /^vgpu\d could not populate GTT entry \d+ .* gfn 0x3, .*: RLIMIT_MEMLOCK exceeded/);
    const mark = v.stats().scratchFallbacks;
    assert.equal(v.populateFailuresSince(mark), undefined, "none since the mark");
    g.gttWrite(first + 3, 0x4000_0000 | 1); // beyond the 4 MiB of guest RAM the VMM mapped
    assert.equal(v.stats().scratchFallbacks, 2);
    assert.match(w.recorder!.named("vgpu.gtt.scratch").at(-1)!.fields.reason, /EINVAL/);
    const since = v.populateFailuresSince(mark)!;
    assert.equal(since.errno, Errno.EINVAL);
    assert.match(since.message, /gfn 0x40000, .*vfio_pin_pages\(gpa 0x40000000\) failed: .*not mapped/);
    assert.deepEqual(since.detail, { count: 1, step: "vfio_pin_pages", index: first + 3, gfn: 0x40000 });
    assert.match(v.populateFailuresSince(0)!.message, /^2 GTT entries of vgpu\d point at its scratch page; the last: /);
    assert.equal(g.gttRead(first + 3), 0x4000_0000 | 1, "the guest still reads its own entry");
    v.checkInvariants();
  });

  it("a DMA mapping error unpins the page again and maps scratch", () => {
    const { w, g, v, first } = setup();
    let fail = true;
    injectDmaMapFailure(w, () => fail);
    const locked0 = g.qemu.mm.lockedVm();
    g.gttWrite(first, 0x9000 | 1);
    assert.equal(v.stats().scratchFallbacks, 1);
    assert.equal(g.qemu.mm.lockedVm(), locked0, "the pin taken for it was released");
    assert.match(w.recorder!.named("vgpu.gtt.scratch").at(-1)!.fields.reason, /dma_map_page.*injected/);
    assert.deepEqual([v.lastPopulateError!.errno, v.lastPopulateError!.step], [Errno.ENOMEM, "dma_map_page"]);
    assert.match(v.populateFailuresSince(0)!.message, /dma_map_page\(pfn 0x[0-9a-f]+\) failed: DMA mapping failed/);
    fail = false;
    g.gttWrite(first, 0x9000 | 1);
    assert.equal(v.stats().shadowEntries, 1);
    v.checkInvariants();
  });

  it("each vGPU's failed entries land in its own scratch page: no channel between two VMs through scratch", () => {
    const w = new VgpuWorld({ trace: false });
    const a = w.attach(w.create("GVTg_V5_8"), { ramBytes: 4 * 1024 * 1024 });
    const b = w.attach(w.create("GVTg_V5_8"), { ramBytes: 4 * 1024 * 1024 });
    const [va, vb] = [a.vgpu, b.vgpu];
    // In each VM: a ring, a real page to copy into, and one GTT entry naming a GPA beyond its 4 MiB of RAM (the pin
    // fails: the entry falls back to a scratch page, present and writable by the engines).
    const setupVm = (g: typeof a) => {
      const ring = g.setupRing("bcs");
      const dst = g.allocGm(1);
      const failed = g.allocGm(1).gma; // one GMA page ...
      g.gttWrite(failed / PAGE_SIZE, 0x4000_0000 | 1); // ... re-pointed outside RAM
      return { ring, dst, failed };
    };
    const A = setupVm(a);
    const B = setupVm(b);
    assert.deepEqual([va.stats().scratchFallbacks, vb.stats().scratchFallbacks], [1, 1]);
    assert.notEqual(va.scratch.pfn, vb.scratch.pfn);
    assert.equal(w.driver.readGgtt(A.failed / PAGE_SIZE), gen8PteEncode(va.scratch.dmaAddr));
    assert.equal(w.driver.readGgtt(B.failed / PAGE_SIZE), gen8PteEncode(vb.scratch.dmaAddr));

    // Whose frames each VM's engine work touches (the GPU's DMA path sees the frame of every access).
    const touched = new Set<number>();
    w.host.deviceDma(w.driver.bdf).setObserver((_bdf, _iova, pfn) => touched.add(pfn));
    const run = (g: typeof a, ring: typeof A.ring, cmds: number[]) => {
      touched.clear();
      ring.submit(cmds);
      w.run(1_000_000);
      assert.equal(g.vgpu.stats().rejectedCommands, 0);
      return new Set(touched);
    };
    // A writes a colour through its failed entry (64 x 16 px at a 256-byte pitch: the whole 4 KiB page) ...
    const byA = run(a, A.ring, colorBlt(A.failed, 256, 0, 0, 64, 16, 0xc0ff_ee01));
    assert.ok(byA.has(va.scratch.pfn) && !byA.has(vb.scratch.pfn));
    // ... and reads it back through the same entry: a write through a failed entry sticks (the channel's premise).
    run(a, A.ring, srcCopyBlt(A.dst.gma, 256, 0, 0, 64, 16, A.failed, 256, 0, 0));
    assert.equal(a.readGmU32(A.dst, 0), 0xc0ff_ee01);
    assert.equal(a.readGmU32(A.dst, 4092), 0xc0ff_ee01);
    // B reads through its own failed entry: its own, still zeroed, scratch page; nothing of A's colour.
    b.writeGm(B.dst, 0, [0x7777_7777]);
    const byB = run(b, B.ring, srcCopyBlt(B.dst.gma, 256, 0, 0, 64, 16, B.failed, 256, 0, 0));
    assert.ok(byB.has(vb.scratch.pfn) && !byB.has(va.scratch.pfn), "B's work never touches A's scratch page");
    assert.equal(b.readGmU32(B.dst, 0), 0, "B sees its own zeroed scratch page, not A's colour");
    assert.equal(b.readGmU32(B.dst, 4092), 0);
    // And the other way round: B's colour never reaches A.
    run(b, B.ring, colorBlt(B.failed, 256, 0, 0, 64, 16, 0xb0b0_b0b0));
    run(a, A.ring, srcCopyBlt(A.dst.gma, 256, 0, 0, 64, 16, A.failed, 256, 0, 0));
    assert.equal(a.readGmU32(A.dst, 0), 0xc0ff_ee01);
    w.host.deviceDma(w.driver.bdf).setObserver(undefined);
    va.checkInvariants();
    vb.checkInvariants();
    w.checkInvariants();
    w.driver.checkInvariants();
    // When A's VMM lets go (close_device), A's scratch page is cleared: the next VMM to open A reads zeros there.
    assert.equal(w.host.physmem.frameForRead(va.scratch.pfn)![0], 0x01);
    va.close();
    assert.equal(
      w.host.physmem.frameForRead(va.scratch.pfn)!.every((x) => x === 0),
      true,
      "closing the vGPU zeroes its scratch page",
    );
  });

  it("property: any sequence of writes, half writes, unmaps and resets keeps the invariants and the pin count", () => {
    const { w, g, v, first } = setup();
    const op = fc.oneof(
      fc.record({
        k: fc.constant("w8"),
        i: fc.integer({ min: 0, max: 7 }),
        gfn: fc.integer({ min: 0, max: 6 }),
        p: fc.boolean(),
      }),
      fc.record({
        k: fc.constant("w4"),
        i: fc.integer({ min: 0, max: 7 }),
        gfn: fc.integer({ min: 0, max: 6 }),
        hi: fc.boolean(),
      }),
      fc.record({ k: fc.constant("unmap"), gfn: fc.integer({ min: 0, max: 6 }), n: fc.integer({ min: 1, max: 3 }) }),
      fc.record({ k: fc.constant("reset") }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        v.reset();
        const locked0 = g.qemu.mm.lockedVm();
        for (const o of ops) {
          if (o.k === "w8") g.gttWrite(first + o.i, o.gfn * PAGE_SIZE + (o.p ? 1 : 0));
          else if (o.k === "w4") {
            const off = GTT_OFFSET + (first + o.i) * 8 + (o.hi ? 4 : 0);
            g.device.write(VFIO_PCI_BAR0_REGION_INDEX, off, u32(o.hi ? 0 : o.gfn * PAGE_SIZE + 1));
          } else if (o.k === "unmap") {
            // Only the vendor's callback (the VMM's real unmap is tested in test/vgpu-vfio.test.ts).
            v.dmaUnmap((o.gfn * PAGE_SIZE) as Iova, o.n * PAGE_SIZE);
            for (let i = 0; i < 8; i++) {
              const gfn = v.gtt.gfnOf((first + i) * PAGE_SIZE);
              assert.ok(gfn < o.gfn || gfn >= o.gfn + o.n, "no shadow entry left in the unmapped range");
            }
          } else v.reset();
          assert.equal(g.qemu.mm.lockedVm() - locked0, v.stats().pinnedPages, "one locked page per cached gfn");
        }
        v.checkInvariants();
        v.reset();
        assert.equal(g.qemu.mm.lockedVm(), locked0);
        assert.equal(v.stats().iovasMapped, 0);
      }),
      { numRuns: 50 },
    );
    void w;
  });
});
