import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, KernelError } from "../core/index.ts";
import { GEN6_GDRST, GEN8_MASTER_IRQ, GT_RENDER_USER_INTERRUPT } from "../gpu/index.ts";
import { vengine } from "./engines.ts";
import { GT_CONTEXT_SWITCH_INTERRUPT } from "./execlist.ts";
import {
  CSB_ACTIVE_TO_IDLE,
  CSB_COMPLETE,
  CSB_ELEMENT_SWITCH,
  CSB_IDLE_TO_ACTIVE,
  CSB_LITE_RESTORE,
  CSB_PREEMPTED,
} from "./execlist-state.ts";
import { MODE_IDLE, RING_CONTEXT_STATUS_BUF, RING_CONTEXT_STATUS_PTR, RING_MI_MODE } from "./gvt-regs.ts";
import { MiB, TestEngineBackend, VgpuWorld } from "./testing.ts";

const RCS = vengine("rcs").base;
/** i915's descriptor of the context at `lrca` with context id `id`: valid, legacy 64-bit, privileged. */
const desc = (lrca: number, id: number): [number, number] => [(lrca | (3 << 3) | (1 << 8) | 1) >>> 0, id];

function setup(opts: { auto?: boolean; backend?: TestEngineBackend | "production" } = {}) {
  const backend = opts.backend === "production" ? undefined : (opts.backend ?? new TestEngineBackend());
  if (backend !== undefined) backend.auto = opts.auto ?? true;
  const w = new VgpuWorld(backend !== undefined ? { execlistBackend: backend } : {});
  const uuid = w.create("GVTg_V5_8");
  const g = w.attach(uuid, { ramBytes: 4 * MiB });
  const v = w.vgpu(uuid);
  const msi = g.enableInterrupts();
  // Every GT bank unmasked and enabled (i915 enables the engines' bits in banks 0, 1 and 3).
  for (const bank of [1, 2, 3]) {
    g.setMmio(0x44304 + 0x10 * bank, 0);
    g.setMmio(0x4430c + 0x10 * bank, 0xffff_ffff);
  }
  const hws = g.allocGm(1);
  const ctxA = g.allocGm(2);
  const ctxB = g.allocGm(2);
  const A = desc(ctxA.gma, 0x20);
  const B = desc(ctxB.gma, 0x40);
  return { w, g, v, msi, hws, backend: backend!, A, B };
}

type Setup = ReturnType<typeof setup>;

/** The CSB entries written so far, in order, from the MMIO copy: [status, ctx] of entries 0..n-1. */
function csb(s: Setup, base: number, n: number): [number, number][] {
  return Array.from({ length: n }, (_, i) => [
    s.g.mmio(base + RING_CONTEXT_STATUS_BUF + 8 * i),
    s.g.mmio(base + RING_CONTEXT_STATUS_BUF + 8 * i + 4),
  ]);
}

/** The same entries as the guest finds them in its status page, and the write pointer there. */
function hwspCsb(s: Setup, n: number): { entries: [number, number][]; wp: number } {
  return {
    entries: Array.from({ length: n }, (_, i) => [
      s.g.readGmU32(s.hws, 0x40 + 8 * i),
      s.g.readGmU32(s.hws, 0x44 + 8 * i),
    ]),
    wp: s.g.readGmU32(s.hws, 0x7c),
  };
}

const writePtr = (s: Setup, base: number) => s.g.mmio(base + RING_CONTEXT_STATUS_PTR) & 0x7;

describe("virtual execlists: ELSP and the context status buffer (test backend)", () => {
  it("one context: IDLE_TO_ACTIVE at dispatch, ACTIVE_TO_IDLE | COMPLETE at completion, in MMIO and the status page", () => {
    const s = setup({ auto: false });
    s.g.enableExeclists(RCS, s.hws.gma);
    s.g.elsp(RCS, s.A);
    assert.equal(s.backend.holding.length, 1);
    assert.equal(s.backend.holding[0]!.descriptor.lrca, s.A[0] & 0xffff_f000);
    assert.deepEqual(csb(s, RCS, 1), [[CSB_IDLE_TO_ACTIVE, 0]]);
    assert.equal(writePtr(s, RCS), 0, "i915 reset the pointers to 5: the first entry is entry 0");
    assert.equal(s.msi.signals, 1, "the context-switch interrupt");
    assert.equal(s.g.mmio(0x44308), GT_CONTEXT_SWITCH_INTERRUPT, "RCS context switch in GT IIR 0");
    assert.equal(s.g.mmio(RCS + RING_MI_MODE) & MODE_IDLE, 0, "busy while the context runs");
    s.g.setMmio(0x44308, 0xffff_ffff);
    s.backend.complete();
    assert.deepEqual(csb(s, RCS, 2), [
      [CSB_IDLE_TO_ACTIVE, 0],
      [CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, 0x20],
    ]);
    assert.deepEqual(hwspCsb(s, 2), { entries: csb(s, RCS, 2), wp: 1 });
    assert.equal(writePtr(s, RCS), 1);
    assert.equal(s.msi.signals, 2);
    assert.equal(s.g.mmio(RCS + RING_MI_MODE) & MODE_IDLE, MODE_IDLE);
    assert.equal(s.v.stats().execlists.rcs.csbEvents, 2);
  });

  it("two elements: ELEMENT_SWITCH | COMPLETE, then ACTIVE_TO_IDLE | COMPLETE", () => {
    const s = setup({ auto: false });
    s.g.enableExeclists(RCS, s.hws.gma);
    s.g.elsp(RCS, s.A, s.B);
    s.backend.complete();
    s.backend.complete();
    assert.deepEqual(csb(s, RCS, 3), [
      [CSB_IDLE_TO_ACTIVE, 0],
      [CSB_ELEMENT_SWITCH | CSB_COMPLETE, 0x20],
      [CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, 0x40],
    ]);
    assert.deepEqual(
      s.backend.ran.map((x) => x.descriptor.contextId),
      [0x20, 0x40],
    );
  });

  it("lite restore: the same context resubmitted before it completed -> no schedule-out, PREEMPTED | LITE_RESTORE", () => {
    const s = setup({ auto: false });
    s.g.enableExeclists(RCS, s.hws.gma);
    s.g.elsp(RCS, s.A);
    s.g.elsp(RCS, s.A); // i915 resubmits with a new tail
    s.backend.complete();
    assert.deepEqual(csb(s, RCS, 2), [
      [CSB_IDLE_TO_ACTIVE, 0],
      [CSB_PREEMPTED | CSB_LITE_RESTORE, 0x20],
    ]);
    s.backend.complete();
    assert.deepEqual(csb(s, RCS, 3)[2], [CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, 0x20]);
    assert.equal(s.v.stats().execlists.rcs.completed, 2);
  });

  it("completes at once with the immediate backend; the user interrupt comes before the context switch", () => {
    const s = setup();
    s.backend.userInterrupt = true;
    s.g.enableExeclists(RCS, s.hws.gma);
    s.w.recorder!.clear();
    s.g.elsp(RCS, s.A);
    assert.deepEqual(csb(s, RCS, 2), [
      [CSB_IDLE_TO_ACTIVE, 0],
      [CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, 0x20],
    ]);
    assert.deepEqual(
      s.w.recorder!.named("vgpu.virq").map((r) => r.fields.event),
      ["rcs context switch", "rcs user interrupt", "rcs context switch"],
    );
    assert.equal(s.g.mmio(0x44308), GT_CONTEXT_SWITCH_INTERRUPT | GT_RENDER_USER_INTERRUPT);
  });

  it("the write pointer: 7 after reset -> 0, then (wp + 1) % 6, wrapping after entry 5", () => {
    const s = setup();
    s.g.mmio(0x78000);
    s.g.setMmio(RCS + 0x29c, ((1 << 15) << 16) | (1 << 15)); // execlists on; no CSB reset by the guest
    s.g.setMmio(RCS + 0x80, s.hws.gma);
    assert.equal(writePtr(s, RCS), 7);
    const seen: number[] = [];
    for (let i = 0; i < 4; i++) {
      s.g.elsp(RCS, i % 2 === 0 ? s.A : s.B);
      seen.push(writePtr(s, RCS));
    }
    assert.deepEqual(seen, [1, 3, 5, 1], "two entries per submission; 8 entries wrap through 0..5, 0, 1");
    assert.deepEqual(csb(s, RCS, 2), [
      [CSB_IDLE_TO_ACTIVE, 0],
      [CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, 0x40],
    ]);
    assert.equal(hwspCsb(s, 0).wp, 1);
  });

  it("VCS and VECS raise their context switch in GT banks 1 and 3 (master bits 2 and 6)", () => {
    const s = setup({ auto: false });
    for (const e of ["vcs", "vecs"] as const) s.g.enableExeclists(vengine(e).base, s.hws.gma);
    s.g.setMmio(GEN8_MASTER_IRQ, 0);
    s.g.elsp(vengine("vcs").base, s.A);
    s.g.elsp(vengine("vecs").base, s.B);
    assert.equal(s.g.mmio(0x44318), GT_CONTEXT_SWITCH_INTERRUPT);
    assert.equal(s.g.mmio(0x44338), GT_CONTEXT_SWITCH_INTERRUPT);
    assert.equal(s.g.mmio(GEN8_MASTER_IRQ), (1 << 2) | (1 << 6));
    assert.equal(s.msi.signals, 0, "master disabled");
    s.g.setMmio(GEN8_MASTER_IRQ, 1 << 31);
    assert.equal(s.msi.signals, 1);
  });

  it("rejects malformed submissions with a reason and queues nothing", () => {
    const s = setup();
    const reject = (e0: [number, number], e1: [number, number], re: RegExp) => {
      s.g.elsp(RCS, e0, e1);
      assert.match(s.v.execlists.get("rcs")!.lastRejection ?? "", re);
    };
    reject(s.A, [0, 0], /not in execlist mode/);
    s.g.enableExeclists(RCS, s.hws.gma);
    reject([0, 0], s.A, /element 0 is not valid/);
    reject([s.A[0] & ~(1 << 8), s.A[1]], [0, 0], /element 0 .* lacks PRIVILEGE/);
    reject(s.A, [s.B[0] & ~(1 << 8), s.B[1]], /element 1 .* lacks PRIVILEGE/);
    reject([(s.A[0] & ~(3 << 3)) >>> 0, s.A[1]], [0, 0], /addressing mode 0/);
    reject([((s.A[0] & ~(3 << 3)) | (2 << 3)) >>> 0, s.A[1]], [0, 0], /addressing mode 2/);
    assert.equal(s.v.stats().execlists.rcs.rejected, 6);
    assert.equal(s.backend.ran.length, 0);
    assert.equal(s.v.stats().execlists.rcs.csbEvents, 0);
    assert.equal(s.w.recorder!.count("vgpu.execlist.reject"), 6);
    // Legacy 32-bit contexts are accepted.
    s.g.elsp(RCS, [((s.A[0] & ~(3 << 3)) | (1 << 3)) >>> 0, s.A[1]]);
    assert.equal(s.backend.ran.length, 1);
  });

  it("an engine reset cancels the workload in flight, empties the slots and resets the CSB pointer", () => {
    const s = setup({ auto: false });
    s.g.enableExeclists(RCS, s.hws.gma);
    s.g.elsp(RCS, s.A);
    const flying = s.backend.holding[0]!;
    s.g.setMmio(GEN6_GDRST, 1 << 1); // GEN6_GRDOM_RENDER
    assert.deepEqual(s.backend.cancelled, [flying]);
    assert.equal(s.g.mmio(RCS + RING_CONTEXT_STATUS_PTR), 7);
    assert.ok(s.v.execlists.get("rcs")!.enabled, "an engine reset keeps execlist mode");
    s.g.setMmio(GEN6_GDRST, 1); // full: leaves execlist mode
    assert.equal(s.v.execlists.get("rcs")!.enabled, false);
  });
});

describe("virtual execlists with the production backend on a host driver that submits through rings", () => {
  it("the workload stays pending with EOPNOTSUPP and a sentence: no CSB event, the engine busy, until a reset", () => {
    const s = setup({ backend: "production" });
    s.g.enableExeclists(RCS, s.hws.gma);
    s.g.elsp(RCS, s.A);
    const el = s.v.execlists.get("rcs")!;
    assert.ok(el.pendingReason instanceof KernelError);
    assert.equal(el.pendingReason.errno, Errno.EOPNOTSUPP);
    assert.match(el.pendingReason.message, /submits through legacy rings, so the GPU runs no guest contexts/);
    assert.equal(el.stats().csbEvents, 0);
    assert.equal(s.msi.signals, 0);
    assert.equal(s.g.mmio(RCS + RING_MI_MODE) & MODE_IDLE, 0, "not idle: i915 will time out waiting");
    assert.equal(s.w.recorder!.count("vgpu.execlist.pending"), 1);
    s.g.setMmio(GEN6_GDRST, 1);
    assert.equal(s.g.mmio(RCS + RING_MI_MODE) & MODE_IDLE, MODE_IDLE);
  });
});
