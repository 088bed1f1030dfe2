import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, gma, gpa, isKernelError, PAGE_SIZE, TraceRecorder, Tracer } from "../core/index.ts";
import {
  ENGINE_BASE,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GTT_OFFSET,
  PVINFO,
  RING_CTL,
  RING_HEAD,
  RING_HWS_PGA,
  RING_START,
  RING_TAIL,
  RING_VALID,
  VGT_PVINFO_PAGE,
} from "../gpu/index.ts";
import { PCI_COMMAND, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from "../host/index.ts";
import { CommandBuffer } from "./commands.ts";
import { GuestGpuDriver, MSI_ADDRESS, MSI_VECTOR, STATUS_SLOT } from "./driver.ts";
import { FAKE_BAR0, FAKE_BAR2, FakePlatform, type FakePvinfo } from "./test-support/fake-gpu.ts";

const MiB = 1024 * 1024;
const PV: FakePvinfo = {
  mappable: { base: gma(128 * MiB), size: 64 * MiB },
  nonmappable: { base: gma(1024 * MiB), size: 384 * MiB },
  vgtId: 3,
};
const expectErrno = (fn: () => unknown, errno: number) =>
  assert.throws(fn, (e) => isKernelError(e) && e.errno === errno);

describe("guest driver: probe", () => {
  it("identifies the GPU, enables memory space and bus mastering, finds BARs and MSI", () => {
    const p = new FakePlatform();
    assert.equal(p.device.configRead(PCI_COMMAND, 2) & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER), 0);
    const d = new GuestGpuDriver(p);
    const dev = d.probe();
    assert.equal(dev.vendorId, 0x8086);
    assert.equal(dev.deviceId, 0x1912);
    assert.equal(dev.classCode, 0x030000);
    assert.equal(dev.bar0, FAKE_BAR0);
    assert.equal(dev.bar0Size, 16 * MiB);
    assert.equal(dev.bar2, FAKE_BAR2);
    assert.equal(dev.bar2Size, 256 * MiB);
    assert.equal(dev.msiCap, p.device.config.msiCap);
    assert.ok(dev.msiCap >= 0x40);
    const cmd = p.device.configRead(PCI_COMMAND, 2);
    assert.equal(cmd & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER), PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  });

  it("refuses another device (ENODEV) and use before probe", () => {
    expectErrno(() => new GuestGpuDriver(new FakePlatform({ deviceId: 0x1234 })).probe(), Errno.ENODEV);
    expectErrno(() => new GuestGpuDriver(new FakePlatform()).init(), Errno.ENODEV);
    expectErrno(() => new GuestGpuDriver(new FakePlatform(), { ringBytes: 1000 }), Errno.EINVAL);
  });
});

describe("guest driver: PVINFO and ballooning", () => {
  it("a vGPU: reads PVINFO, allocates only inside its ranges, tells the vGPU it is ready", () => {
    const p = new FakePlatform({ pvinfo: PV });
    const d = GuestGpuDriver.open(p);
    assert.equal(d.mode, "vgpu");
    assert.deepEqual(d.pvinfo, {
      versionMajor: 1,
      versionMinor: 0,
      vgtId: 3,
      caps: 0,
      mappable: PV.mappable,
      nonmappable: PV.nonmappable,
      fences: 4,
    });
    assert.deepEqual(d.gm.ranges("mappable"), [PV.mappable]);
    assert.deepEqual(d.gm.ranges("nonmappable"), [PV.nonmappable]);
    // Status page and both rings went to the mappable range.
    assert.ok(d.gm.owns(d.status.gma, PAGE_SIZE));
    assert.equal(d.status.zone, "mappable");
    for (const e of ["rcs", "bcs"] as const) assert.ok(d.gm.owns(d.ring(e).gma, d.ring(e).size));
    const big = d.allocBuffer(10 * MiB);
    assert.equal(big.zone, "nonmappable");
    assert.ok(d.gm.owns(big.gma, big.size));
    // Every GTT write the driver made is inside the partition.
    for (const w of p.device.writes.filter((x) => x.offset >= GTT_OFFSET)) {
      assert.ok(d.gm.owns(((w.offset - GTT_OFFSET) >> 3) * PAGE_SIZE), `GTT write at ${w.offset}`);
    }
    assert.equal(p.device.gttIgnored, 0);
    assert.equal(p.device.displayReady, 1);
  });

  it("an unknown PVINFO major version is refused (EOPNOTSUPP)", () => {
    const p = new FakePlatform({ pvinfo: { ...PV, versionMajor: 2 } });
    expectErrno(() => GuestGpuDriver.open(p), Errno.EOPNOTSUPP);
  });

  it("a whole GPU (no magic): the aperture's span is mappable, the rest of 4 GiB non-mappable, minus reserved", () => {
    const p = new FakePlatform();
    const d = GuestGpuDriver.open(p, { reservedGm: [{ base: gma(0), size: MiB }] });
    assert.equal(d.mode, "physical");
    assert.equal(d.pvinfo, undefined);
    assert.deepEqual(d.gm.ranges("mappable"), [{ base: MiB, size: 255 * MiB }]);
    assert.deepEqual(d.gm.ranges("nonmappable"), [{ base: 256 * MiB, size: 4096 * MiB - 256 * MiB }]);
    assert.equal(p.device.displayReady, 0, "no PVINFO write on hardware");
  });
});

describe("guest driver: GTT programming", () => {
  for (const [mode, expected] of [
    ["qword", (at: number, pte: number) => [{ offset: at, size: 8, value: pte }]],
    [
      "halves-low-first",
      (at: number, pte: number) => [
        { offset: at, size: 4, value: pte % 2 ** 32 },
        { offset: at + 4, size: 4, value: Math.floor(pte / 2 ** 32) },
      ],
    ],
    [
      // Mapping: the present bit's half last (datasheet section 4), so the entry is never half-updated and present.
      "halves",
      (at: number, pte: number) => [
        { offset: at + 4, size: 4, value: Math.floor(pte / 2 ** 32) },
        { offset: at, size: 4, value: pte % 2 ** 32 },
      ],
    ],
  ] as const) {
    it(`${mode}: each page of a buffer becomes one gen8 PTE (GPA | present) at BAR0 + 8 MiB + index * 8`, () => {
      const p = new FakePlatform({ pvinfo: PV, ramBytes: 8 * 1024 * MiB });
      const d = GuestGpuDriver.open(p, { gttWriteMode: mode });
      // A buffer whose guest pages are above 4 GiB, so the PTE has a high dword.
      p.pages.allocPages((5 * 1024 * MiB) / PAGE_SIZE);
      p.device.writes.length = 0;
      const buf = d.allocBuffer(2 * PAGE_SIZE, { zone: "mappable" });
      assert.ok(buf.gpa > 2 ** 32);
      const index = buf.gma / PAGE_SIZE;
      const want = [0, 1].flatMap((i) => expected(GTT_OFFSET + (index + i) * 8, buf.gpa + i * PAGE_SIZE + 1));
      assert.deepEqual(p.device.writes, want);
      assert.equal(d.readPte(index), buf.gpa + 1);
      assert.equal(d.readPte(index + 1), buf.gpa + PAGE_SIZE + 1);
      // Freeing writes the entries not present (in "halves": the present bit's half first), then returns the GM and
      // the pages.
      p.device.writes.length = 0;
      d.freeBuffer(buf);
      assert.equal(d.readPte(index), 0);
      assert.ok(p.device.writes.every((w) => w.value === 0));
      if (mode === "halves")
        assert.deepEqual(p.device.writes[0], { offset: GTT_OFFSET + index * 8, size: 4, value: 0 });
      expectErrno(() => d.freeBuffer(buf), Errno.EINVAL);
    });
  }

  it("refuses to map GM it does not own (the balloon), and indexes outside the table", () => {
    const p = new FakePlatform({ pvinfo: PV });
    const d = GuestGpuDriver.open(p);
    expectErrno(() => d.mapGm(gma(0), p.pages.allocPages(1), 1), Errno.EINVAL);
    expectErrno(() => d.writePte(1 << 20, 1), Errno.EINVAL);
  });
});

describe("guest driver: rings, interrupts and submission", () => {
  it("programs each ring as the datasheet orders it and enables interrupts and MSI", () => {
    const p = new FakePlatform({ pvinfo: PV });
    const d = new GuestGpuDriver(p);
    d.probe();
    p.device.writes.length = 0;
    d.init();
    const regs = p.device.writes.filter((w) => w.offset < GTT_OFFSET).map((w) => [w.offset, w.value]);
    const bcs = ENGINE_BASE.bcs;
    const ring = d.ring("bcs");
    const bcsWrites = regs.filter(([o]) => o! >= bcs && o! < bcs + 0x1000);
    assert.deepEqual(bcsWrites, [
      [bcs + RING_CTL, 0],
      [bcs + RING_HEAD, 0],
      [bcs + RING_TAIL, 0],
      [bcs + RING_HWS_PGA, d.status.gma],
      [bcs + RING_START, ring.gma],
      [bcs + RING_CTL, ((ring.size / PAGE_SIZE - 1) << 12) | RING_VALID],
    ]);
    const irq = regs.filter(([o]) => o === GEN8_MASTER_IRQ || (o! >= GEN8_GT_IMR0 && o! <= GEN8_GT_IER0));
    const enable = 0x00090009; // the datasheet's value for both engines' user and error interrupts
    assert.deepEqual(irq, [
      [GEN8_MASTER_IRQ, 0],
      [GEN8_GT_IIR0, 0xffffffff],
      [GEN8_GT_IER0, enable],
      [GEN8_GT_IMR0, ~enable >>> 0],
      [GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL],
    ]);
    const msi = p.device.config.msi();
    assert.deepEqual(msi, { enabled: true, vectors: 1, address: MSI_ADDRESS, data: MSI_VECTOR });
    assert.ok((p.device.configRead(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE) !== 0);
    assert.equal(p.device.readReg(VGT_PVINFO_PAGE + PVINFO.displayReady), 1);
  });

  it("submits commands then the fence, completes on the interrupt and acknowledges IIR", () => {
    const rec = new TraceRecorder();
    const tracer = new Tracer({ now: () => 0 });
    rec.attach(tracer);
    const p = new FakePlatform({ pvinfo: PV, execDelayNs: 3000 });
    const d = GuestGpuDriver.open(p, { tracer });
    const target = d.allocBuffer(PAGE_SIZE);
    const cmds = new CommandBuffer().storeDataImm(target.gma + 8, 0x1234_5678);
    const ring = d.ring("bcs");
    const tail0 = ring.tail;
    const seqno = d.submit("bcs", cmds.words);
    assert.equal(seqno, 1);
    // The ring holds the command, MI_STORE_DATA_IMM(status slot, seqno), MI_USER_INTERRUPT, MI_NOOP pad.
    const words = [];
    for (let o = tail0; o < ring.tail; o += 4) words.push(p.memory.readU32(gpa(ring.gpa + o)));
    const status = d.status.gma + STATUS_SLOT.bcs;
    assert.deepEqual(words, [0x10400002, target.gma + 8, 0, 0x1234_5678, 0x10400002, status, 0, 1, 0x01000000, 0]);
    assert.equal(p.device.readReg(ENGINE_BASE.bcs + RING_TAIL), ring.tail);
    assert.equal(d.completedSeqno("bcs"), 0, "not yet: the fake executes 3 us later");
    assert.equal(d.wait("bcs", seqno), "completed");
    assert.equal(p.time.now(), 3000, "woken by the interrupt, not by polling past it");
    assert.equal(p.memory.readU32(gpa(target.gpa + 8)), 0x1234_5678);
    assert.equal(p.device.iir, 0, "IIR acknowledged");
    assert.equal(p.device.master, GEN8_MASTER_IRQ_CONTROL, "master re-enabled");
    const s = d.stats();
    assert.equal(s.interrupts, 1);
    assert.deepEqual(
      [s.engines.bcs?.submitted, s.engines.bcs?.completed, s.engines.bcs?.inFlight, s.engines.bcs?.userInterrupts],
      [1, 1, 0, 1],
    );
    assert.deepEqual(
      rec.records.map((r) => r.name).filter((n) => n === "guest.submit" || n === "guest.fence" || n === "guest.irq"),
      ["guest.submit", "guest.irq", "guest.fence"],
    );
  });

  it("an interrupt with nothing pending is not ours: counted, and the master bit left alone", () => {
    const p = new FakePlatform({ pvinfo: PV });
    const d = GuestGpuDriver.open(p);
    p.device.writes.length = 0;
    p.device.spuriousInterrupt();
    assert.equal(d.stats().spuriousInterrupts, 1);
    assert.deepEqual(p.device.writes, [], "no register written");
    assert.equal(d.run("bcs", new Uint32Array([0, 0])), "completed");
    assert.equal(d.stats().spuriousInterrupts, 1);
  });

  it("times out when the device never completes", () => {
    const p = new FakePlatform({ pvinfo: PV, execDelayNs: 10_000_000 });
    const d = GuestGpuDriver.open(p, { timeoutNs: 50_000 });
    const s = d.submit("rcs", new Uint32Array([0]));
    assert.equal(d.wait("rcs", s), "timeout");
    assert.equal(p.time.now(), 50_000);
    assert.equal(d.wait("rcs", s, 20_000_000), "completed");
    assert.equal(d.idle(), true);
  });

  it("a rejected submission (error interrupt) is reported, the engine recovered, and work continues", () => {
    for (const opts of [{}, { pvinfo: PV, audit: "at-execution" as const }]) {
      const p = new FakePlatform(opts);
      const d = GuestGpuDriver.open(p);
      const bad = d.submit("bcs", new Uint32Array([0x1f80_0000, 0]));
      assert.equal(d.wait("bcs", bad), "rejected");
      const err = d.lastError("bcs");
      assert.ok(err);
      assert.equal(err.rejected, 1);
      // Hardware halts with RING_EIR set and HEAD at the bad command; the next submission recovers the engine.
      const good = d.submit("bcs", new Uint32Array([0, 0]));
      assert.equal(d.wait("bcs", good), "completed");
      assert.equal(p.device.engines.bcs.eir, 0);
      const st = d.stats().engines.bcs!;
      assert.deepEqual([st.submitted, st.completed, st.rejected, st.errorInterrupts], [2, 1, 1, 1]);
    }
  });

  it("only the submissions the error stopped are rejected: earlier and later ones complete", () => {
    const p = new FakePlatform();
    const d = GuestGpuDriver.open(p);
    const target = d.allocBuffer(PAGE_SIZE);
    const s1 = d.submit("bcs", new CommandBuffer().storeDataImm(target.gma, 1).words);
    const s2 = d.submit("bcs", new Uint32Array([0x1f80_0000, 0]));
    const s3 = d.submit("bcs", new CommandBuffer().storeDataImm(target.gma + 4, 3).words);
    assert.deepEqual([d.wait("bcs", s1), d.wait("bcs", s2), d.wait("bcs", s3)], ["completed", "rejected", "completed"]);
    assert.equal(d.wait("bcs", s2), "rejected", "still rejected after a later fence completed");
    assert.deepEqual([p.memory.readU32(gpa(target.gpa)), p.memory.readU32(gpa(target.gpa + 4))], [1, 3]);
    const st = d.stats().engines.bcs!;
    assert.deepEqual([st.submitted, st.completed, st.rejected, st.inFlight], [3, 2, 1, 0]);
    assert.equal(d.lastError("bcs")?.rejected, 1);
  });

  it("wraps a small ring many times without losing a submission", () => {
    const p = new FakePlatform({ pvinfo: PV, execDelayNs: 500 });
    const d = GuestGpuDriver.open(p, { ringBytes: PAGE_SIZE });
    const target = d.allocBuffer(PAGE_SIZE);
    let last = 0;
    const n = 1000;
    for (let i = 0; i < n; i++) {
      last = d.submit("rcs", new CommandBuffer().storeDataImm(target.gma + (i % 64) * 4, i).noop().words);
    }
    assert.equal(d.wait("rcs", last), "completed");
    assert.ok(d.ring("rcs").wraps >= 5, `wrapped ${d.ring("rcs").wraps} times`);
    assert.equal(d.stats().engines.rcs?.completed, n);
    // Slot k holds the last i with i % 64 == k: every store ran, in order.
    for (let k = 0; k < 64; k++) {
      assert.equal(p.memory.readU32(gpa(target.gpa + k * 4)), Math.floor((n - 1 - k) / 64) * 64 + k);
    }
  });

  it("INTx delivery works too, and shutdown releases every page and GTT entry", () => {
    const p = new FakePlatform({ pvinfo: PV });
    const d = GuestGpuDriver.open(p, { interrupts: "intx" });
    assert.equal(p.device.config.msi().enabled, false);
    assert.equal(p.device.configRead(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE, 0);
    assert.equal(d.run("bcs", new Uint32Array([0, 0])), "completed");
    d.allocBuffer(3 * PAGE_SIZE);
    d.shutdown();
    assert.equal(p.pages.live, 0);
    assert.ok(p.device.gtt.every((e) => e === 0));
    assert.equal(p.device.configRead(PCI_COMMAND, 2) & PCI_COMMAND_MASTER, 0);
    assert.equal(p.device.ier, 0);
  });
});
