/**
 * The guest driver on the real stack: a VMM process attaches a vGPU (created through sysfs) or the whole GPU (bound
 * to vfio-pci) through VFIO, and the driver, which knows only GuestPlatform and the datasheet, brings it up, fills
 * and copies, and a hostile guest throws every attack at the mediated GPU while an honest one keeps working.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PAGE_SIZE, Rng } from "../src/core/index.ts";
import { gen8PteEncode } from "../src/gpu/index.ts";
import { CommandBuffer } from "../src/guest/commands.ts";
import { type GttWriteMode, GuestGpuDriver } from "../src/guest/driver.ts";
import { ATTACK_NAMES, EXECLIST_ATTACK_NAMES, RING_ATTACK_NAMES, runAttacks } from "../src/guest/hostile.ts";
import { PassthroughStack, VgpuStack } from "../src/guest/test-support/real-stack.ts";
import { describeWorkload, runWorkload } from "../src/guest/workloads.ts";

describe("guest driver end to end: a vGPU in a VMM", () => {
  for (const mode of ["qword", "halves", "halves-low-first", "halves-high-first"] as GttWriteMode[]) {
    it(`probes, balloons and verifies fills and copies through ring and batches (GTT writes: ${mode})`, () => {
      const s = new VgpuStack();
      const g = s.startGuest(s.createVgpu("GVTg_V5_4"));
      const d = GuestGpuDriver.open(g.platform, { gttWriteMode: mode });
      assert.equal(d.mode, "vgpu");
      const vgpu = s.parent.vgpus()[0]!;
      assert.equal(d.pvinfo?.vgtId, vgpu.id);
      assert.deepEqual(d.gm.ranges("mappable"), [vgpu.resources.aperture]);
      assert.deepEqual(d.gm.ranges("nonmappable"), [vgpu.resources.hidden]);
      assert.equal(d.device.bar2Size, vgpu.bar2Size, "BAR2 is the whole host aperture, as GVT-g makes it");
      for (const kind of ["fill", "copy"] as const) {
        for (const via of ["ring", "batch"] as const) {
          const r = runWorkload(d, {
            kind,
            via,
            count: 12,
            width: 70,
            height: 33,
            pitch: 70 * 4 + 24,
            rects: "random",
            opsPerSubmission: 4,
            seed: 11,
          });
          assert.ok(r.ok, describeWorkload(r));
        }
      }
      const st = vgpu.stats();
      assert.equal(st.rejectedCommands, 0);
      assert.equal(st.scratchFallbacks, 0, "every GTT entry the guest wrote was pinned and mapped");
      assert.equal(st.ignoredWrites, 0, "the balloon kept every GTT write inside the partition");
      assert.equal(st.pinnedPages, 1 + 2 * 4, "after the workloads freed their buffers: status page and rings");
      assert.ok(st.completedWorkloads >= 12);
      assert.equal(d.stats().spuriousInterrupts, 0);
      s.parent.checkInvariants();
      d.shutdown();
      assert.equal(vgpu.stats().pinnedPages, 0, "shutdown unmapped every entry: the vendor driver unpinned all");
    });
  }

  it("a rejected submission between two good ones: only it is rejected, the vGPU keeps the ring usable", () => {
    const s = new VgpuStack();
    const d = GuestGpuDriver.open(s.startGuest(s.createVgpu()).platform);
    const t = d.allocBuffer(PAGE_SIZE);
    const s1 = d.submit("bcs", new CommandBuffer().colorBlt(t.gma, 64, 0, 0, 16, 4, 0x01020304).words);
    const s2 = d.submit("bcs", new CommandBuffer().colorBlt(0, 64, 0, 0, 16, 4, 0).words); // the host's GM
    const s3 = d.submit("bcs", new CommandBuffer().colorBlt(t.gma, 64, 0, 4, 16, 8, 0x05060708).words);
    assert.deepEqual([d.wait("bcs", s1), d.wait("bcs", s2), d.wait("bcs", s3)], ["completed", "rejected", "completed"]);
    const px = new Uint8Array(512);
    d.readBuffer(t, 0, px);
    assert.deepEqual([px[0], px[256]], [0x04, 0x08]);
    assert.equal(s.parent.vgpus()[0]!.stats().rejectedCommands, 1);
    assert.deepEqual(
      d.stats().engines.bcs && [d.stats().engines.bcs!.completed, d.stats().engines.bcs!.rejected],
      [2, 1],
    );
  });

  it("a hostile guest's attacks are all rejected or ignored while an honest guest on the same GPU keeps working", () => {
    const s = new VgpuStack();
    const a = s.startGuest(s.createVgpu());
    const b = s.startGuest(s.createVgpu());
    const honest = GuestGpuDriver.open(a.platform);
    const evil = GuestGpuDriver.open(b.platform);
    const [va, vb] = s.parent.vgpus();

    // The honest guest's victim surface, with a known pattern, and work of its own in flight during the attacks.
    const victim = honest.allocBuffer(16 * PAGE_SIZE, { zone: "mappable" });
    const pattern = new Rng(3).fill(new Uint8Array(victim.size));
    honest.writeBuffer(victim, 0, pattern);
    const work = honest.allocBuffer(64 * 64 * 4);
    const fills = new CommandBuffer();
    for (let i = 0; i < 8; i++) fills.colorBlt(work.gma, 256, 0, i * 8, 64, i * 8 + 8, 0x01010101 * (i + 1));
    const pending = honest.submit("bcs", fills.words);

    const reports = runAttacks(evil, { victimGma: victim.gma });
    assert.deepEqual(
      reports.map((r) => r.name),
      [...RING_ATTACK_NAMES],
    );
    for (const r of reports) assert.ok(r.outcome === "rejected" || r.outcome === "ignored", `${r.name}: ${r.detail}`);
    const byName = Object.fromEntries(reports.map((r) => [r.name, r.outcome]));
    for (const n of ["gm-other-vgpu", "gm-host", "gm-past-end", "oversize", "lri-forbidden", "unknown-opcode"]) {
      assert.equal(byName[n], "rejected", n);
    }
    assert.equal(byName["batch-toctou"], "ignored", "the shadow copy ran, not the rewrite");
    assert.equal(byName["gtt-outside-partition"], "ignored");
    assert.equal(byName["gtt-foreign-gpa"], "ignored");
    assert.equal(vb!.stats().rejectedCommands, 6);
    assert.ok(vb!.stats().ignoredWrites >= 1);
    assert.ok(vb!.stats().scratchFallbacks >= 2, "foreign GPAs could not be pinned: scratch page");

    // The honest guest: its in-flight work completed, its victim surface and GTT entries are untouched.
    assert.equal(honest.wait("bcs", pending), "completed");
    const px = new Uint8Array(work.size);
    honest.readBuffer(work, 0, px);
    for (let row = 0; row < 64; row++) assert.equal(px[row * 256], (row >> 3) + 1);
    const now = new Uint8Array(victim.size);
    honest.readBuffer(victim, 0, now);
    assert.deepEqual(now, pattern, "the victim's memory is unchanged");
    for (let i = 0; i < victim.size / PAGE_SIZE; i++) {
      assert.equal(honest.readPte(victim.gma / PAGE_SIZE + i), victim.gpa + i * PAGE_SIZE + 1);
    }
    assert.equal(va!.stats().rejectedCommands, 0);
    const r = runWorkload(honest, {
      kind: "copy",
      via: "batch",
      count: 6,
      width: 48,
      height: 40,
      rects: "random",
      seed: 8,
    });
    assert.ok(r.ok, describeWorkload(r));
    // And the hostile guest's driver recovered: its own honest work still runs.
    const own = runWorkload(evil, { kind: "fill", count: 4, width: 32, height: 32, seed: 2 });
    assert.ok(own.ok, describeWorkload(own));
    s.parent.checkInvariants();
    s.gpu.driver.checkInvariants({ scanGgtt: false });
  });
});

describe("guest driver end to end: failed GTT entries of two VMs", () => {
  it("a colour one guest writes through an entry naming a foreign GPA never shows through another guest's", () => {
    const s = new VgpuStack();
    const ga = GuestGpuDriver.open(s.startGuest(s.createVgpu()).platform);
    const gb = GuestGpuDriver.open(s.startGuest(s.createVgpu()).platform);
    const [va, vb] = s.parent.vgpus();
    // Each guest points one GMA page at a GPA outside its RAM (the vendor driver cannot pin it: scratch page).
    const window = (d: GuestGpuDriver) => {
      const at = d.gm.alloc(PAGE_SIZE).base;
      d.writePte(at / PAGE_SIZE, gen8PteEncode(2 ** 46));
      return at;
    };
    const wa = window(ga);
    const wb = window(gb);
    assert.deepEqual([va!.stats().scratchFallbacks, vb!.stats().scratchFallbacks], [1, 1]);
    const color = 0x5a5a_0001;
    // One page = 32 x 32 px at a 128-byte pitch.
    const fill = new CommandBuffer().colorBlt(wa, 128, 0, 0, 32, 32, color);
    assert.equal(ga.run("bcs", fill.words), "completed");
    const readThrough = (d: GuestGpuDriver, at: number) => {
      const surface = d.allocBuffer(PAGE_SIZE);
      d.writeBuffer(surface, 0, new Uint8Array(PAGE_SIZE).fill(0x77));
      const copy = new CommandBuffer().srcCopyBlt(surface.gma, 128, 0, 0, 32, 32, at, 128, 0, 0);
      assert.equal(d.run("bcs", copy.words), "completed");
      const px = new Uint32Array(PAGE_SIZE / 4);
      d.readBuffer(surface, 0, new Uint8Array(px.buffer));
      d.freeBuffer(surface);
      return px;
    };
    assert.ok(
      readThrough(ga, wa).every((p) => p === color),
      "the writer reads its own colour back: its scratch page",
    );
    assert.ok(
      readThrough(gb, wb).every((p) => p === 0),
      "the other guest sees only its own zeroed scratch page",
    );
    s.parent.checkInvariants();
    s.gpu.driver.checkInvariants({ scanGgtt: false });
  });
});

describe("guest driver end to end: the whole GPU passed through with vfio-pci", () => {
  it("finds no PVINFO, owns all graphics memory, verifies workloads; only the IOMMU stops foreign addresses", () => {
    const s = new PassthroughStack();
    const g = s.startGuest();
    const d = GuestGpuDriver.open(g.platform, { gttWriteMode: "halves" });
    assert.equal(d.mode, "physical");
    assert.deepEqual(d.gm.ranges("mappable"), [{ base: 0, size: 512 * 1024 * 1024 }]);
    for (const via of ["ring", "batch"] as const) {
      const r = runWorkload(d, { kind: "copy", via, count: 8, width: 40, height: 30, rects: "random", seed: 4 });
      assert.ok(r.ok, describeWorkload(r));
    }
    const byName = Object.fromEntries(runAttacks(d).map((r) => [r.name, r.outcome]));
    // No mediator: the guest programs the real GGTT and engines.
    assert.equal(byName["gtt-outside-partition"], "executed");
    assert.equal(byName["lri-forbidden"], "executed");
    assert.equal(byName["unknown-opcode"], "rejected", "the hardware's own error");
    // GPAs outside the VM are not in type1's IOMMU mappings: the DMA faults and the engine stops.
    assert.equal(byName["gtt-foreign-gpa"], "rejected");
    const after = runWorkload(d, { kind: "fill", count: 4, width: 16, height: 16, seed: 1 });
    assert.ok(after.ok, describeWorkload(after));
  });
});

describe("guest driver end to end: execlists with contexts and a PPGTT", () => {
  it("on a vGPU: contexts per engine, a PPGTT announced by g2v, fills and copies through the PPGTT, ring and batch", () => {
    const s = new VgpuStack({ submission: "execlists" });
    const g = s.startGuest(s.createVgpu("GVTg_V5_4"));
    const d = GuestGpuDriver.open(g.platform, { submission: "execlists" });
    const vgpu = s.parent.vgpus()[0]!;
    const ctx = d.context("bcs")!;
    assert.ok(ctx !== undefined && d.ppgtt !== undefined);
    assert.equal(ctx.ppgtt, d.ppgtt);
    for (const kind of ["fill", "copy"] as const) {
      for (const via of ["ring", "batch"] as const) {
        for (const engine of ["bcs", "rcs"] as const) {
          const r = runWorkload(d, {
            kind,
            via,
            engine,
            count: 10,
            width: 70,
            height: 33,
            pitch: 70 * 4 + 24,
            rects: "random",
            opsPerSubmission: 3,
            seed: 5,
          });
          assert.ok(r.ok, describeWorkload(r));
        }
      }
    }
    const buf = d.allocBuffer(PAGE_SIZE);
    assert.ok(buf.gva !== undefined && buf.gva >= 2 ** 32, "buffers live above 4 GiB in the PPGTT");
    assert.equal(d.ppgtt!.walk(buf.gva! + 8).gpa, buf.gpa + 8, "the guest's own walk: GVA -> GPA");
    const st = d.stats();
    assert.equal(st.submission, "execlists");
    const bcs = st.execlists.bcs!;
    assert.ok(bcs.completions > 0 && bcs.completions <= bcs.elspWrites, "a completion ends one or two ELSP writes");
    assert.equal(bcs.resets, 0);
    const vs = vgpu.stats();
    assert.equal(vs.contexts!.completed, bcs.elspWrites + st.execlists.rcs!.elspWrites, "one workload per ELSP write");
    assert.deepEqual(Object.values(vs.contexts!.rejected), [0, 0, 0, 0, 0]);
    s.parent.checkInvariants();
    d.shutdown();
    assert.equal(vgpu.stats().pinnedPages, 0, "shutdown unmapped every GTT entry and destroyed the PPGTT");
  });

  it("a context the vGPU refuses hangs: the driver resets the engine, rejects the fence, and goes on", () => {
    const s = new VgpuStack({ submission: "execlists" });
    const d = GuestGpuDriver.open(s.startGuest(s.createVgpu()).platform, {
      submission: "execlists",
      timeoutNs: 50_000_000,
    });
    const t = d.allocBuffer(PAGE_SIZE);
    // A PPGTT entry naming a GPA outside the VM: the vendor driver refuses to shadow it.
    d.ppgtt!.setPte(d.ppgtt!.allocVa(PAGE_SIZE), 2 ** 40 + 3); // present | RW
    const bad = d.submit("bcs", new CommandBuffer().colorBlt(d.gpuAddress(t), 64, 0, 0, 16, 4, 1).words);
    assert.equal(d.wait("bcs", bad), "rejected");
    assert.equal(d.stats().execlists.bcs!.resets, 1);
    assert.equal(s.parent.vgpus()[0]!.stats().contexts!.rejected.ppgtt, 1);
  });

  it("on the whole GPU: the same driver runs its contexts on the hardware's execlists", () => {
    const s = new PassthroughStack();
    const d = GuestGpuDriver.open(s.startGuest().platform, { submission: "execlists" });
    for (const via of ["ring", "batch"] as const) {
      const r = runWorkload(d, { kind: "copy", via, count: 8, width: 40, height: 30, rects: "random", seed: 4 });
      assert.ok(r.ok, describeWorkload(r));
    }
    assert.equal(d.stats().execlists.bcs!.resets, 0);
  });
});

describe("guest driver end to end: a hostile guest with execlists", () => {
  it("every attack is rejected or ignored, each new one by the vendor driver with a reason; the neighbour is untouched", () => {
    const s = new VgpuStack({ submission: "execlists" });
    const honest = GuestGpuDriver.open(s.startGuest(s.createVgpu()).platform, { submission: "execlists" });
    const evil = GuestGpuDriver.open(s.startGuest(s.createVgpu()).platform, {
      submission: "execlists",
      timeoutNs: 20_000_000,
    });
    const [va, vb] = s.parent.vgpus();
    const victim = honest.allocBuffer(16 * PAGE_SIZE, { zone: "mappable" });
    const pattern = new Rng(3).fill(new Uint8Array(victim.size));
    honest.writeBuffer(victim, 0, pattern);

    const reports = runAttacks(evil, { victimGma: victim.gma });
    assert.equal(reports.length, ATTACK_NAMES.length);
    for (const r of reports) assert.ok(r.outcome === "rejected" || r.outcome === "ignored", `${r.name}: ${r.detail}`);
    const byName = Object.fromEntries(reports.map((r) => [r.name, r]));
    for (const n of EXECLIST_ATTACK_NAMES) assert.equal(byName[n]!.outcome, "rejected", `${n}: ${byName[n]!.detail}`);
    assert.deepEqual(
      reports.slice(-3).map((r) => r.name),
      ["lri-forbidden", "unknown-opcode", "ppgtt-batch-ggtt"],
      "the attacks that end mediation run last",
    );
    const st = vb!.stats();
    assert.ok(st.contexts!.rejected.ppgtt >= 2, "foreign PTE, and the PTE rewritten after submission");
    assert.ok(st.contexts!.rejected.context >= 2, "LRCA outside the partition, forbidden register in the image");
    assert.ok(st.contexts!.rejected.command >= 1, "a command the scanner refused");
    assert.ok(
      Object.values(st.execlists).reduce((n, e) => n + e.rejected, 0) >= 1,
      "the malformed descriptor at the ELSP write",
    );
    assert.equal(st.failsafe?.reason, "guest-error");

    const now = new Uint8Array(victim.size);
    honest.readBuffer(victim, 0, now);
    assert.deepEqual(now, pattern, "the victim's memory is unchanged");
    const r = runWorkload(honest, { kind: "copy", via: "batch", count: 6, width: 48, height: 40, seed: 8 });
    assert.ok(r.ok, describeWorkload(r));
    assert.deepEqual(Object.values(va!.stats().contexts!.rejected), [0, 0, 0, 0, 0]);
    s.parent.checkInvariants();
  });
});

describe("guest driver end to end: GPU contexts with PPGTTs of their own", () => {
  it("a second context reaches only what is bound into its PPGTT; both run on one engine, in order", () => {
    const s = new VgpuStack({ submission: "execlists" });
    const d = GuestGpuDriver.open(s.startGuest(s.createVgpu()).platform, {
      submission: "execlists",
      timeoutNs: 20_000_000,
    });
    const vgpu = s.parent.vgpus()[0]!;
    const b = d.createContext();
    assert.notEqual(b.ppgtt.pml4, d.defaultContext!.ppgtt.pml4);
    assert.equal(vgpu.stats().ppgttRoots, 2, "both PPGTTs announced through g2v");
    const shared = d.allocBuffer(PAGE_SIZE);
    const secret = d.allocBuffer(PAGE_SIZE);
    d.writeBuffer(secret, 0, new Uint8Array(PAGE_SIZE).fill(0x5a));
    const inB = d.bindBuffer(b, shared);
    assert.notEqual(inB, d.gpuAddress(shared), "its own address space");
    // Interleaved submissions of the two contexts on bcs complete in order.
    const fill = (at: number, color: number) => new CommandBuffer().colorBlt(at, 64, 0, 0, 16, 1, color).words;
    const s1 = d.submit("bcs", fill(d.gpuAddress(shared), 0x11111111));
    const s2 = d.submit("bcs", fill(inB + 64, 0x22222222), b);
    const s3 = d.submit("bcs", fill(d.gpuAddress(shared) + 128, 0x33333333));
    assert.deepEqual(
      [d.wait("bcs", s1), d.wait("bcs", s2), d.wait("bcs", s3)],
      ["completed", "completed", "completed"],
    );
    const px = new Uint32Array(48);
    d.readBuffer(shared, 0, new Uint8Array(px.buffer));
    assert.deepEqual([px[0], px[16], px[32]], [0x11111111, 0x22222222, 0x33333333]);
    // The default context's address of `secret` means nothing in b's PPGTT: the GPU faults, the context hangs.
    const s4 = d.submit("bcs", fill(d.gpuAddress(secret), 0xdeadbeef), b);
    assert.equal(d.wait("bcs", s4), "rejected");
    const now = new Uint8Array(PAGE_SIZE);
    d.readBuffer(secret, 0, now);
    assert.ok(
      now.every((x) => x === 0x5a),
      "the other context's buffer is untouched",
    );
    assert.throws(() => d.gpuAddress(secret, b), /not bound into context 1/);
    // Both contexts go on working after the engine reset.
    assert.equal(d.wait("bcs", d.submit("bcs", fill(inB, 0x44444444), b)), "completed");
    assert.equal(d.run("bcs", fill(d.gpuAddress(shared), 0x55555555)), "completed");
    d.destroyContext(b);
    assert.equal(vgpu.stats().ppgttRoots, 1);
    d.shutdown();
    assert.equal(vgpu.stats().pinnedPages, 0);
    s.parent.checkInvariants();
  });
});
