import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PAGE_SIZE } from "../core/index.ts";
import {
  arbOnOff,
  batchBufferStart,
  CTX_CONTEXT_CONTROL,
  CTX_RING_HEAD,
  CTX_TIMESTAMP,
  flushDw,
  GT_ENGINES,
  GT_RENDER_USER_INTERRUPT,
  type GtEngineId,
  MI_BATCH_BUFFER_END,
  MI_NOOP,
  MI_USER_INTERRUPT,
  miLoadRegisterImm,
  PIPE_CONTROL_CS_STALL,
  PIPE_CONTROL_QW_WRITE,
  PIPE_CONTROL_STORE_DATA_INDEX,
  PIPE_CONTROL_TLB_INVALIDATE,
  pipeControl,
  RING_HEAD,
  RING_TAIL,
  semaphoreWait,
  storeDataImm,
} from "../gpu/index.ts";
import { vengine } from "./engines.ts";
import { GT_CONTEXT_SWITCH_INTERRUPT } from "./execlist.ts";
import { CSB_ACTIVE_TO_IDLE, CSB_COMPLETE, CSB_IDLE_TO_ACTIVE } from "./execlist-state.ts";
import { RING_CONTEXT_STATUS_BUF } from "./gvt-regs.ts";
import { GuestContext, GuestPpgtt, type GuestSession, MiB, VgpuWorld } from "./testing.ts";

/** A PPGTT address i915 could use for a user buffer. */
const VA = 0x1_0000_0000;

function setup(opts: { ramBytes?: number } = {}) {
  const w = new VgpuWorld({ submission: "execlists" });
  const uuid = w.create("GVTg_V5_8");
  const g = w.attach(uuid, { ramBytes: opts.ramBytes ?? 16 * MiB });
  const v = w.vgpu(uuid);
  const msi = g.enableInterrupts();
  for (const bank of [1, 2, 3]) {
    g.setMmio(0x44304 + 0x10 * bank, 0);
    g.setMmio(0x4430c + 0x10 * bank, 0xffff_ffff);
  }
  return { w, g, v, msi, uuid };
}

type Setup = ReturnType<typeof setup>;

/** i915's request on `engine`: the request-start flush, a PPGTT store of `value` at `va`, a breadcrumb, an interrupt. */
function request(engine: GtEngineId, va: number, value: number, breadcrumb: number): number[] {
  const start =
    engine === "rcs"
      ? pipeControl(
          PIPE_CONTROL_CS_STALL | PIPE_CONTROL_TLB_INVALIDATE | PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_STORE_DATA_INDEX,
          0xd0,
        )
      : flushDw({ post: "store", target: { kind: "index", offset: 0xd0 }, invalidateTlb: true });
  return [
    ...arbOnOff(false),
    ...start,
    ...storeDataImm(va, value, "ppgtt"),
    ...storeDataImm(breadcrumb, value),
    MI_USER_INTERRUPT,
    ...arbOnOff(true),
  ];
}

/** Enables execlists on `engine` with a status page; returns it. */
function execlists(s: Setup, engine: GtEngineId) {
  const hws = s.g.allocGm(1);
  s.g.enableExeclists(vengine(engine).base, hws.gma);
  return hws;
}

function csb(s: Setup, engine: GtEngineId, n: number): [number, number][] {
  const base = vengine(engine).base;
  return Array.from({ length: n }, (_, i) => [
    s.g.mmio(base + RING_CONTEXT_STATUS_BUF + 8 * i),
    s.g.mmio(base + RING_CONTEXT_STATUS_BUF + 8 * i + 4),
  ]);
}

function readU32(g: GuestSession, gpa: number): number {
  return new DataView(g.readGpa(gpa, 4).buffer).getUint32(0, true);
}

describe("guest contexts on the GPU (the production backend)", () => {
  for (const engine of GT_ENGINES) {
    it(`${engine}: a context runs, its PPGTT store lands in the guest page, and the guest sees GVT-g's sequence`, () => {
      const s = setup();
      const hws = execlists(s, engine);
      const ppgtt = new GuestPpgtt(s.g, { scratch: true });
      ppgtt.announce();
      const page = s.g.allocPage();
      ppgtt.map(VA, page);
      const ctx = new GuestContext(s.g, engine, ppgtt);
      ctx.emit(request(engine, VA + 0x40, 0xc0ffee, hws.gma + 0x100));
      s.w.recorder!.clear();
      s.g.elsp(vengine(engine).base, ctx.descriptor(0x40));
      s.w.run(1_000_000);

      assert.equal(readU32(s.g, page + 0x40), 0xc0ffee, "the PPGTT store reached the guest page");
      assert.equal(s.g.readGmU32(hws, 0x100), 0xc0ffee, "the GGTT breadcrumb reached the status page");
      assert.deepEqual(csb(s, engine, 2), [
        [CSB_IDLE_TO_ACTIVE, 0],
        [CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, 0x40],
      ]);
      assert.equal(ctx.reg(CTX_RING_HEAD), ctx.tail, "update_guest_context: HEAD := TAIL");
      assert.equal(ctx.reg(CTX_CONTEXT_CONTROL) & 1, 0, "restore-inhibit cleared by the save");
      assert.ok(ctx.reg(CTX_TIMESTAMP) > 0, "CTX_TIMESTAMP written back");
      const base = vengine(engine).base;
      assert.equal(s.g.mmio(base + RING_HEAD), ctx.tail);
      assert.equal(s.g.mmio(base + RING_TAIL), ctx.tail);
      // Context write-back, then the user interrupt, then the CSB entry and the context-switch interrupt.
      const irqs = s.w.recorder!.named("vgpu.virq").map((r) => r.fields.event);
      assert.deepEqual(irqs, [`${engine} context switch`, `${engine} user interrupt`, `${engine} context switch`]);
      const order = s.w
        .recorder!.records.filter(
          (r) => r.name === "vgpu.workload.complete" || r.name === "vgpu.virq" || r.name === "vgpu.execlist.csb",
        )
        .map((r) => r.name)
        .slice(-4);
      assert.deepEqual(order, ["vgpu.workload.complete", "vgpu.virq", "vgpu.execlist.csb", "vgpu.virq"]);
      const e = vengine(engine);
      const iir = s.g.mmio(0x44308 + 0x10 * e.irqBank) >>> e.irqShift;
      assert.ok((iir & GT_RENDER_USER_INTERRUPT) !== 0 && (iir & GT_CONTEXT_SWITCH_INTERRUPT) !== 0);
      assert.ok(s.msi.signals > 0);
      assert.equal(s.v.stats().contexts!.completed, 1);
      s.w.checkInvariants();
    });
  }

  it("a second submission of the same context continues from the written-back HEAD", () => {
    const s = setup();
    const hws = execlists(s, "bcs");
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    const page = s.g.allocPage();
    ppgtt.map(VA, page);
    const ctx = new GuestContext(s.g, "bcs", ppgtt);
    ctx.emit(request("bcs", VA, 1, hws.gma + 0x100));
    s.g.elsp(vengine("bcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    ctx.emit(request("bcs", VA + 4, 2, hws.gma + 0x100));
    s.g.elsp(vengine("bcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    assert.equal(readU32(s.g, page), 1);
    assert.equal(readU32(s.g, page + 4), 2);
    assert.equal(ctx.reg(CTX_RING_HEAD), ctx.tail);
    const dwords = s.w.recorder!.named("vgpu.workload.create").map((r) => r.fields.dwords);
    assert.deepEqual(dwords, [16, 16], "each workload shadows only the new part of the ring");
  });

  it("a PPGTT batch is shadowed: rewriting it after the ELSP write changes nothing that runs", () => {
    const s = setup();
    const hws = execlists(s, "rcs");
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    const data = s.g.allocPage();
    const batch = s.g.allocPage();
    ppgtt.map(VA, data);
    ppgtt.map(VA + PAGE_SIZE, batch);
    const bb = [...storeDataImm(VA, 0x1234, "ppgtt"), MI_BATCH_BUFFER_END];
    s.g.writeGpa(batch, u32s(bb));
    const ctx = new GuestContext(s.g, "rcs", ppgtt);
    ctx.emit([...batchBufferStart(VA + PAGE_SIZE, "ppgtt"), ...storeDataImm(hws.gma + 0x100, 7), MI_USER_INTERRUPT]);
    // Hold the GPU: another vGPU's work first would do; here the scheduler runs it at once, so rewrite right after.
    s.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
    s.g.writeGpa(batch, u32s([...storeDataImm(VA, 0xbad, "ppgtt"), MI_BATCH_BUFFER_END]));
    s.w.run(1_000_000);
    assert.equal(readU32(s.g, data), 0x1234);
    assert.equal(s.v.stats().contexts!.completed, 1);
  });
});

describe("an engine error while a shadow context runs", () => {
  it("a store through a PTE the guest left not present faults on the GPU: a hang for the guest, no write-back", () => {
    const s = setup();
    const hws = execlists(s, "rcs");
    const ppgtt = new GuestPpgtt(s.g); // no scratch: unused entries are not present, as the shadow's
    ppgtt.map(VA, s.g.allocPage());
    const ctx = new GuestContext(s.g, "rcs", ppgtt);
    ctx.emit([...storeDataImm(VA + 2 * 2 ** 30, 1, "ppgtt"), ...storeDataImm(hws.gma + 0x100, 1), MI_USER_INTERRUPT]);
    s.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    const st = s.v.stats();
    assert.equal(st.contexts!.engineErrors, 1);
    assert.equal(st.execlists.rcs.failed, 1);
    assert.equal(ctx.reg(CTX_RING_HEAD), 0, "no update_guest_context after an engine error");
    assert.deepEqual(csb(s, "rcs", 2), [
      [CSB_IDLE_TO_ACTIVE, 0],
      [0, 0],
    ]);
    assert.match(
      s.w.recorder!.named("vgpu.execlist.complete").at(-1)!.fields.outcome,
      /failed: the engine stopped on an error running the shadow context: .*not present/,
    );
    assert.equal(s.w.driver.engineStats("rcs").errors, 1, "the host driver saw the engine error and recovered");
    // The engine still runs the next context (after i915's engine reset, or at once).
    s.g.setMmio(0x941c, 1 << 1);
    ctx.setReg(CTX_RING_HEAD, ctx.tail);
    ctx.emit(request("rcs", VA, 5, hws.gma + 0x104));
    s.g.enableExeclists(vengine("rcs").base, hws.gma);
    s.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    assert.equal(s.g.readGmU32(hws, 0x104), 5);
  });
});

describe("the trace of a PPGTT access", () => {
  it("guest PTE -> vfio_pin_pages -> dma_map_page -> shadow PTE -> the engine's walk reaches that IOVA", () => {
    const s = setup();
    const hws = execlists(s, "bcs");
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    const page = s.g.allocPage();
    ppgtt.map(VA, page);
    const ctx = new GuestContext(s.g, "bcs", ppgtt);
    ctx.emit(request("bcs", VA + 8, 42, hws.gma + 0x100));
    s.w.recorder!.clear();
    s.g.elsp(vengine("bcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    const rs = s.w.recorder!.records;
    const at = (name: string, pred: (f: Record<string, unknown>) => boolean, what: string): number => {
      const i = rs.findIndex((r) => r.name === name && pred(r.fields as Record<string, unknown>));
      assert.ok(i >= 0, `no ${what} in the trace`);
      return i;
    };
    const gfn = page / PAGE_SIZE;
    const pte = at("vgpu.ppgtt.spt_guest_change", (f) => f.level === "PTE" && f.index === 0, "guest PTE");
    const pin = at("vfio.type1.pin", (f) => f.iova === page, "vfio_pin_pages");
    const cached = at("vgpu.gfn.pin", (f) => f.gfn === gfn, "the gfn cache entry");
    const iova = (rs[cached]!.fields as { iova: number }).iova;
    const map = at("dma.map", (f) => f.iova === iova, "dma_map_page");
    const shadow = at(
      "vgpu.ppgtt.shadow_entry",
      (f) => f.level === "PTE" && f.index === 0 && Number(f.entry) === iova + 3,
      "shadow PTE",
    );
    const walk = at("gpu.ppgtt.gma_translate", (f) => f.gma === VA && f.dmaAddr === iova, "engine walk");
    assert.ok(pte < pin && pin < map && map < cached && cached < shadow && shadow < walk);
    assert.equal(readU32(s.g, page + 8), 42);
  });
});

describe("shadow PPGTT re-validation between submissions", () => {
  it("a PTE the guest rewrites is followed at the next submission, and the old page is unpinned", () => {
    const s = setup();
    const hws = execlists(s, "vcs");
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    ppgtt.announce();
    const p = s.g.allocPage();
    const q = s.g.allocPage();
    ppgtt.map(VA, p);
    const ctx = new GuestContext(s.g, "vcs", ppgtt);
    ctx.emit(request("vcs", VA, 1, hws.gma + 0x100));
    s.g.elsp(vengine("vcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    assert.equal(readU32(s.g, p), 1);
    const pinned = s.v.stats().pinnedPages;
    ppgtt.map(VA, q);
    ctx.emit(request("vcs", VA, 2, hws.gma + 0x100));
    s.w.recorder!.clear();
    s.g.elsp(vengine("vcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    assert.equal(readU32(s.g, q), 2, "the new mapping is used");
    assert.equal(readU32(s.g, p), 1, "the old page is not written");
    assert.equal(s.v.stats().pinnedPages, pinned, "one page in, one page out");
    const unpin = s.w.recorder!.named("vgpu.gfn.unpin").map((r) => r.fields.gfn);
    assert.deepEqual(unpin, [p / PAGE_SIZE]);
    assert.equal(s.w.recorder!.count("vgpu.ppgtt.spt_guest_change"), 1, "only the changed PTE is re-shadowed");
    s.w.checkInvariants();
  });

  it("a PTE rewritten to memory the VM does not own is rejected at the next submission, with a reason", () => {
    const s = setup({ ramBytes: 8 * MiB });
    const hws = execlists(s, "bcs");
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    const p = s.g.allocPage();
    ppgtt.map(VA, p);
    const ctx = new GuestContext(s.g, "bcs", ppgtt);
    ctx.emit(request("bcs", VA, 1, hws.gma + 0x100));
    s.g.elsp(vengine("bcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    ppgtt.map(VA, 64 * MiB); // beyond the VM's 8 MiB
    ctx.emit(request("bcs", VA, 2, hws.gma + 0x104));
    s.g.elsp(vengine("bcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    const st = s.v.stats();
    assert.equal(st.contexts!.rejected.ppgtt, 1);
    assert.equal(st.execlists.bcs.failed, 1, "the guest sees a hang: no CSB event for it");
    assert.equal(s.g.readGmU32(hws, 0x104), 0, "nothing of it ran");
    const r = s.w.recorder!.named("vgpu.workload.reject")[0]!.fields;
    assert.equal(r.stage, "ppgtt");
    assert.match(r.reason, /maps GPA 0x4000000, which is not memory of this VM/);
    assert.equal(st.failsafe, undefined, "a PPGTT that cannot be shadowed is not a failsafe reason (GVT-g)");
    s.w.checkInvariants();
  });
});

describe("attacks on the execlist path, each rejected with a reason and counted", () => {
  function victim(s: Setup, engine: GtEngineId = "rcs") {
    const hws = execlists(s, engine);
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    const page = s.g.allocPage();
    ppgtt.map(VA, page);
    const ctx = new GuestContext(s.g, engine, ppgtt);
    return { hws, ppgtt, page, ctx };
  }

  it("a PPGTT entry pointing at memory the VM does not own", () => {
    const s = setup({ ramBytes: 8 * MiB });
    const { ctx, hws, ppgtt } = victim(s);
    ppgtt.map(VA + PAGE_SIZE, 512 * MiB);
    ctx.emit(request("rcs", VA, 1, hws.gma + 0x100));
    s.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    assert.equal(s.v.stats().contexts!.rejected.ppgtt, 1);
    assert.equal(s.g.readGmU32(hws, 0x100), 0);
    assert.deepEqual(csb(s, "rcs", 1), [[0, 0]], "no context status event");
  });

  it("an LRCA outside the vGPU's partition", () => {
    const s = setup();
    const { ctx } = victim(s);
    const [lo, hi] = ctx.descriptor(0x20);
    s.g.elsp(vengine("rcs").base, [((lo & 0xfff) | 0x1000) >>> 0, hi]); // GMA 0x1000: the host's
    s.w.run(1_000_000);
    assert.equal(s.v.stats().contexts!.rejected.context, 1);
    assert.match(
      s.w.recorder!.named("vgpu.workload.reject")[0]!.fields.reason,
      /LRCA 0x1000 .* is outside the vGPU's graphics memory/,
    );
  });

  it("a context image whose register state loads a forbidden register", () => {
    for (const [reg, why] of [
      [0x2080, /RING_HWS_PGA .* names memory or controls submission/],
      [0x941c, /register 0x941c .* not a context register of rcs/],
    ] as const) {
      const s = setup();
      const { ctx, hws } = victim(s);
      // After i915's ring context: an LRI the hardware would execute on restore.
      ctx.setReg(0x44, MI_NOOP);
      ctx.setReg(0x50, miLoadRegisterImm(1));
      ctx.setReg(0x51, reg);
      ctx.setReg(0x52, 0x1000);
      ctx.setReg(0x53, MI_BATCH_BUFFER_END);
      ctx.emit(request("rcs", VA, 1, hws.gma + 0x100));
      s.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
      s.w.run(1_000_000);
      assert.equal(s.v.stats().contexts!.rejected.context, 1);
      assert.match(s.w.recorder!.named("vgpu.workload.reject")[0]!.fields.reason, why);
      assert.equal(s.g.readGmU32(hws, 0x100), 0);
    }
  });

  it("a PPGTT batch that writes GGTT memory outside the partition (and the vGPU enters failsafe, as GVT-g)", () => {
    const s = setup();
    const { ctx, hws, ppgtt } = victim(s);
    const batch = s.g.allocPage();
    ppgtt.map(VA + PAGE_SIZE, batch);
    s.g.writeGpa(batch, u32s([...storeDataImm(0x2000, 0xbad), MI_BATCH_BUFFER_END])); // GMA 0x2000: the host's
    ctx.emit([...batchBufferStart(VA + PAGE_SIZE, "ppgtt"), ...storeDataImm(hws.gma + 0x100, 1), MI_USER_INTERRUPT]);
    s.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    const st = s.v.stats();
    assert.equal(st.contexts!.rejected.command, 1);
    assert.equal(st.failsafe?.reason, "guest-error");
    assert.match(
      s.w.recorder!.named("vgpu.workload.reject")[0]!.fields.reason,
      /batch at 0x100001000 .* MI_STORE_DATA_IMM target \[0x2000, 0x2004\) is outside the vGPU's graphics memory/,
    );
    assert.equal(s.g.readGmU32(hws, 0x100), 0);
  });

  it("MI_SEMAPHORE_WAIT and unknown commands are rejected as GVT-g rejects them", () => {
    for (const [cmd, why] of [
      [semaphoreWait(0, 1, VA, "ppgtt"), /MI_SEMAPHORE_WAIT is not allowed/],
      [[0x1f80_0000], /unknown command/],
    ] as const) {
      const s = setup();
      const { ctx } = victim(s);
      ctx.emit([...cmd, MI_USER_INTERRUPT]);
      s.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
      s.w.run(1_000_000);
      assert.equal(s.v.stats().contexts!.rejected.command, 1);
      assert.match(s.w.recorder!.named("vgpu.workload.reject")[0]!.fields.reason, why);
    }
  });

  it("a malformed ELSP descriptor", () => {
    const s = setup();
    const { ctx } = victim(s);
    const [lo, hi] = ctx.descriptor(0x20);
    const base = vengine("rcs").base;
    s.g.elsp(base, [lo & ~1, hi]); // element 0 not valid
    s.g.elsp(base, [lo & ~(1 << 8), hi]); // no PRIVILEGE
    s.g.elsp(base, [lo & ~(3 << 3), hi]); // addressing mode 0 (advanced)
    const el = s.v.stats().execlists.rcs;
    assert.equal(el.rejected, 3);
    assert.equal(s.w.recorder!.count("vgpu.execlist.reject"), 3);
    assert.equal(s.v.stats().contexts!.submitted, 0);
  });

  it("a legacy 32-bit context passes the ELSP check (as GVT-g) but is refused by the backend, with a reason", () => {
    const s = setup();
    const { ctx } = victim(s);
    const [lo, hi] = ctx.descriptor(0x20);
    s.g.elsp(vengine("rcs").base, [((lo & ~(3 << 3)) | (1 << 3)) >>> 0, hi]);
    s.w.run(1_000_000);
    assert.equal(s.v.stats().contexts!.rejected.context, 1);
    assert.match(s.w.recorder!.named("vgpu.workload.reject")[0]!.fields.reason, /4-level PPGTTs only/);
  });
});

describe("release of the shadow PPGTT", () => {
  it("g2v destroy, dma_unmap and device reset release every pin and table", () => {
    const s = setup();
    const hws = execlists(s, "rcs");
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    ppgtt.announce();
    const p = s.g.allocPage();
    ppgtt.map(VA, p);
    const ctx = new GuestContext(s.g, "rcs", ppgtt);
    ctx.emit(request("rcs", VA, 1, hws.gma + 0x100));
    s.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
    s.w.run(1_000_000);
    const before = s.v.stats();
    assert.ok(before.ppgtt.tables >= 4 && before.ppgtt.pteRefs > 0);
    // The VMM unmaps the page the PTE names: the shadow PTE goes to scratch, the pin goes.
    s.g.unmap(0, 16 * MiB);
    assert.equal(s.v.stats().ppgtt.pteRefs, 0);
    assert.equal(s.v.stats().pinnedPages, 0);
    s.w.checkInvariants();
    s.g.device.reset();
    assert.equal(s.v.stats().ppgtt.tables, 0);
    assert.equal(s.v.stats().shadowBuffers, 0);
  });

  it("g2v destroy frees the shadow of an announced root that no workload holds", () => {
    const s = setup();
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    s.g.mmio(0x78000); // PVINFO read
    ppgtt.announce();
    assert.equal(s.v.stats().ppgtt.mms, 1);
    assert.equal(s.v.stats().ppgtt.tables, 4, "i915's scratch tables: one shadow per level");
    ppgtt.announce(true);
    assert.equal(s.v.stats().ppgtt.mms, 0);
    assert.equal(s.v.stats().ppgtt.tables, 0);
    assert.equal(s.v.stats().pinnedPages, 0);
    s.w.checkInvariants();
  });

  it("close releases everything the execlist path held", () => {
    const s = setup();
    const hws = execlists(s, "vecs");
    const ppgtt = new GuestPpgtt(s.g, { scratch: true });
    ppgtt.map(VA, s.g.allocPage());
    const ctx = new GuestContext(s.g, "vecs", ppgtt);
    ctx.emit(request("vecs", VA, 1, hws.gma + 0x100));
    s.g.elsp(vengine("vecs").base, ctx.descriptor(0x20));
    s.g.close();
    s.w.run(1_000_000);
    const st = s.v.stats();
    assert.equal(st.pinnedPages, 0);
    assert.equal(st.ppgtt.tables, 0);
    assert.equal(st.shadowBuffers, 0);
    assert.equal(s.w.driver.dma.mappings() > 0, true, "the host's own buffers remain");
    s.w.checkInvariants();
  });
});

function u32s(dwords: readonly number[]): Uint8Array {
  const b = new Uint8Array(dwords.length * 4);
  const dv = new DataView(b.buffer);
  for (const [i, d] of dwords.entries()) dv.setUint32(4 * i, d >>> 0, true);
  return b;
}
