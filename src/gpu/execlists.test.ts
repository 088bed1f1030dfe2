import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { arbOnOff, flushDw, pipeControl, semaphoreWait, storeDataImm } from "./commands.ts";
import {
  type CsbEvent,
  CTX_BB_ADDR,
  CTX_CONTEXT_CONTROL,
  CTX_RING_HEAD,
  CTX_TIMESTAMP,
  contextControl,
  LRC_PPHWSP_SCRATCH_ADDR,
  lrcDescriptor,
} from "./lrc.ts";
import {
  GEN8_CTX_STATUS_ACTIVE_IDLE as ACTIVE_IDLE,
  GEN8_CTX_STATUS_COMPLETE as COMPLETE,
  CTX_CTRL_ENGINE_CTX_SAVE_INHIBIT,
  GEN8_CTX_STATUS_ELEMENT_SWITCH as ELEMENT_SWITCH,
  EXECLIST_STATUS_ARB_ENABLE,
  EXECLIST_STATUS_ELEMENT0_ACTIVE,
  GEN6_GDRST,
  GEN6_GRDOM_MEDIA,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_RCS_IRQ,
  GEN8_GT_VCS0_IRQ,
  GEN8_GT_VECS_IRQ,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GFX_RUN_LIST_ENABLE,
  GT_CONTEXT_SWITCH_INTERRUPT,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_ENGINE_BASE,
  GT_ENGINE_IRQ,
  GT_ENGINES,
  GT_RENDER_USER_INTERRUPT,
  type GtEngineId,
  gen8GtIir,
  gen8GtImr,
  gen8GtIsr,
  I915_ERROR_INSTRUCTION,
  I915_HWS_CSB_BUF0_INDEX,
  GEN8_CTX_STATUS_IDLE_ACTIVE as IDLE_ACTIVE,
  GEN8_CTX_STATUS_LITE_RESTORE as LITE_RESTORE,
  MI_ARB_CHECK,
  MI_FLUSH_DW_STORE_INDEX,
  MI_NOOP,
  MI_SEMAPHORE_SAD_EQ_SDD,
  MI_USER_INTERRUPT,
  MODE_IDLE,
  maskedBitDisable,
  maskedBitEnable,
  maskedField,
  PIPE_CONTROL_CS_STALL,
  PIPE_CONTROL_FLUSH_ENABLE,
  PIPE_CONTROL_GLOBAL_GTT_IVB,
  PIPE_CONTROL_QW_WRITE,
  PIPE_CONTROL_STORE_DATA_INDEX,
  PIPE_CONTROL_TLB_INVALIDATE,
  GEN8_CTX_STATUS_PREEMPTED as PREEMPTED,
  RESET_CTL_READY_TO_RESET,
  RESET_CTL_REQUEST_RESET,
  RING_CONTEXT_STATUS_BUF_BASE,
  RING_CONTEXT_STATUS_PTR,
  RING_EIR,
  RING_EXECLIST_STATUS_HI,
  RING_EXECLIST_STATUS_LO,
  RING_MI_MODE,
  RING_MODE_GEN7,
  RING_RESET_CTL,
  STOP_RING,
} from "./regs.ts";
import { gpuRig, PAGE, type TestContext } from "./test-support/gpu-rig.ts";

const ev = (status: number, c: TestContext): CsbEvent => ({ status, ctxId: c.desc.hi });

/** The request i915 emits on each engine (section 7 of the datasheet): invalidate, breadcrumbs, user interrupt. */
function breadcrumbRequest(engine: GtEngineId, seqnoGma: number, seqno: number): number[] {
  const start =
    engine === "rcs"
      ? pipeControl(
          PIPE_CONTROL_CS_STALL | PIPE_CONTROL_TLB_INVALIDATE | PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_STORE_DATA_INDEX,
          LRC_PPHWSP_SCRATCH_ADDR,
        )
      : flushDw({
          post: "store",
          target: { kind: "index", offset: LRC_PPHWSP_SCRATCH_ADDR },
          invalidateTlb: true,
          invalidateBsd: engine === "vcs",
        });
  const fini =
    engine === "rcs"
      ? pipeControl(
          PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_GLOBAL_GTT_IVB | PIPE_CONTROL_FLUSH_ENABLE | PIPE_CONTROL_CS_STALL,
          seqnoGma,
          seqno,
        )
      : flushDw({ post: "store", target: { kind: "ggtt", address: seqnoGma }, value: seqno });
  return [
    ...start,
    ...storeDataImm(seqnoGma + 8, seqno - 1),
    MI_NOOP,
    MI_ARB_CHECK,
    ...arbOnOff(false),
    ...fini,
    MI_USER_INTERRUPT,
    ...arbOnOff(true),
    MI_ARB_CHECK,
    MI_NOOP,
  ];
}

describe("execlists: ELSP and the context status buffer", () => {
  it("all four engines run a breadcrumb request: CSB, seqno, PPHWSP write, head written back, interrupts", () => {
    const r = gpuRig();
    r.enableIrqs();
    const seqnos = r.alloc(PAGE);
    for (const [i, engine] of GT_ENGINES.entries()) {
      r.enableExeclists(engine);
      const pt = r.ppgtt();
      const c = r.newContext(engine, { pml4: pt.root });
      r.setU32(c.lrca + LRC_PPHWSP_SCRATCH_ADDR, 0xdeadbeef);
      c.emit(breadcrumbRequest(engine, seqnos + 16 * i, 100 + i));
      const msis = r.msis.length;
      r.elsp(engine, c.desc);
      assert.deepEqual(r.csb(engine), [ev(IDLE_ACTIVE, c), ev(ACTIVE_IDLE | COMPLETE, c)], engine);
      assert.equal(r.u32(seqnos + 16 * i), 100 + i, `${engine}: fini breadcrumb`);
      assert.equal(r.u32(seqnos + 16 * i + 8), 99 + i, `${engine}: init breadcrumb`);
      assert.equal(r.u32(c.lrca + LRC_PPHWSP_SCRATCH_ADDR), 0, `${engine}: request-start write in the PPHWSP`);
      assert.equal(c.state(CTX_RING_HEAD), c.tail, `${engine}: HEAD written back`);
      const { bank, shift } = GT_ENGINE_IRQ[engine];
      const iir = r.reg(gen8GtIir(bank));
      assert.equal(
        (iir >>> shift) & 0xffff,
        GT_RENDER_USER_INTERRUPT | GT_CONTEXT_SWITCH_INTERRUPT,
        `${engine}: user and context-switch bits in bank ${bank}`,
      );
      const master = r.reg(GEN8_MASTER_IRQ);
      const bit = { rcs: GEN8_GT_RCS_IRQ, bcs: GEN8_GT_BCS_IRQ, vcs: GEN8_GT_VCS0_IRQ, vecs: GEN8_GT_VECS_IRQ }[engine];
      assert.equal(master & bit, bit, `${engine}: master shows the bank`);
      assert.ok(r.msis.length > msis, `${engine}: an MSI on the rising edge`);
      r.setReg(gen8GtIir(bank), iir);
      assert.equal(r.gpu.engine(engine).eir, 0);
    }
    assert.equal(r.reg(GEN8_MASTER_IRQ) & 0xff, 0, "all acknowledged");
    assert.equal(r.reg(GEN8_MASTER_IRQ) >>> 0, GEN8_MASTER_IRQ_CONTROL);
    const ins = r.rec.named("gpu.execlist.in").map((e) => e.fields.engine);
    assert.deepEqual(ins, ["rcs", "bcs", "vcs", "vecs"]);
  });

  it("IMR masks an engine's events out of its bank's IIR (ISR still shows them); no IIR bit, no MSI", () => {
    const r = gpuRig();
    r.enableIrqs();
    r.enableExeclists("vcs");
    const { bank } = GT_ENGINE_IRQ.vcs;
    r.setReg(gen8GtImr(bank), 0xffffffff);
    const c = r.newContext("vcs");
    c.emit([MI_USER_INTERRUPT, MI_NOOP]);
    const msis = r.msis.length;
    r.elsp("vcs", c.desc);
    assert.equal(r.reg(gen8GtIir(bank)), 0);
    assert.equal(r.reg(gen8GtIsr(bank)), GT_RENDER_USER_INTERRUPT | GT_CONTEXT_SWITCH_INTERRUPT);
    assert.equal(r.msis.length, msis);
    assert.equal(r.reg(GEN8_MASTER_IRQ) & GEN8_GT_VCS0_IRQ, 0);
  });

  it("two ports: element 0 completes with ELEMENT_SWITCH, element 1 with ACTIVE_TO_IDLE", () => {
    const r = gpuRig();
    r.enableExeclists("bcs");
    const data = r.alloc(PAGE);
    const a = r.newContext("bcs");
    const b = r.newContext("bcs");
    a.emit(storeDataImm(data, 1));
    b.emit(storeDataImm(data + 4, 2));
    r.elsp("bcs", a.desc, b.desc);
    assert.deepEqual(r.csb("bcs"), [
      ev(IDLE_ACTIVE, a),
      ev(ELEMENT_SWITCH | COMPLETE, a),
      ev(ACTIVE_IDLE | COMPLETE, b),
    ]);
    assert.equal(r.u32(data), 1);
    assert.equal(r.u32(data + 4), 2);
    const out = r.gpu.bcs.execlists.lastOut!;
    assert.equal(out.ctxId, b.desc.hi);
    assert.equal(out.outcome, "complete");
    assert.deepEqual(out.events, [ev(ACTIVE_IDLE | COMPLETE, b)]);
    assert.equal(r.reg(GT_ENGINE_BASE.bcs + RING_EXECLIST_STATUS_HI), 0, "idle: no context id");
  });

  it("lite restore: resubmitting the waiting context reports PREEMPTED|LITE_RESTORE and runs the new tail", () => {
    const r = gpuRig();
    r.enableExeclists("rcs");
    const data = r.alloc(PAGE);
    const a = r.newContext("rcs");
    a.emit([...semaphoreWait(MI_SEMAPHORE_SAD_EQ_SDD, 1, data), ...storeDataImm(data + 4, 7)]);
    r.elsp("rcs", a.desc);
    assert.deepEqual(r.csb("rcs"), [ev(IDLE_ACTIVE, a)], "the context waits: no completion");
    const base = GT_ENGINE_BASE.rcs;
    assert.equal(
      r.reg(base + RING_EXECLIST_STATUS_LO) & EXECLIST_STATUS_ELEMENT0_ACTIVE,
      EXECLIST_STATUS_ELEMENT0_ACTIVE,
    );
    assert.equal(r.reg(base + RING_EXECLIST_STATUS_HI), a.desc.hi);
    assert.equal(r.reg(base + RING_MI_MODE) & MODE_IDLE, 0, "busy while waiting");
    assert.equal(r.u32(data + 4), 0);
    r.setU32(data, 1);
    a.emit(storeDataImm(data + 8, 8));
    r.elsp("rcs", a.desc);
    assert.deepEqual(r.csb("rcs"), [ev(PREEMPTED | LITE_RESTORE, a), ev(ACTIVE_IDLE | COMPLETE, a)]);
    assert.equal(r.u32(data + 4), 7);
    assert.equal(r.u32(data + 8), 8);
    assert.equal(r.reg(base + RING_MI_MODE) & MODE_IDLE, MODE_IDLE);
    assert.equal(a.state(CTX_RING_HEAD), a.tail);
  });

  it("preemption saves the waiting context at its wait and resumes it from its image later", () => {
    const r = gpuRig();
    r.enableExeclists("vcs");
    const data = r.alloc(PAGE);
    const a = r.newContext("vcs");
    const b = r.newContext("vcs");
    a.emit([...semaphoreWait(MI_SEMAPHORE_SAD_EQ_SDD, 5, data), ...storeDataImm(data + 4, 1)]);
    b.emit(storeDataImm(data + 8, 2));
    r.elsp("vcs", a.desc);
    r.elsp("vcs", b.desc);
    assert.deepEqual(r.csb("vcs"), [ev(IDLE_ACTIVE, a), ev(PREEMPTED, a), ev(ACTIVE_IDLE | COMPLETE, b)]);
    assert.equal(a.state(CTX_RING_HEAD), 0, "saved at the semaphore wait");
    assert.equal(r.u32(data + 8), 2);
    assert.equal(r.gpu.vcs.execlists.outCount, 2);
    r.setU32(data, 5);
    r.elsp("vcs", a.desc);
    assert.deepEqual(r.csb("vcs"), [ev(IDLE_ACTIVE, a), ev(ACTIVE_IDLE | COMPLETE, a)]);
    assert.equal(r.u32(data + 4), 1);
  });

  it("CSB: the first entry after a reset lands in slot 0, entries wrap over 6 slots, the MMIO copy matches", () => {
    const r = gpuRig();
    const base = GT_ENGINE_BASE.bcs;
    const hws = r.enableExeclists("bcs");
    assert.equal(r.reg(base + RING_CONTEXT_STATUS_PTR), (5 << 8) | 5);
    const c = r.newContext("bcs");
    const slots: number[] = [];
    for (let i = 0; i < 4; i++) {
      c.emit([MI_NOOP, MI_NOOP]);
      r.elsp("bcs", c.desc);
      slots.push(r.reg(base + RING_CONTEXT_STATUS_PTR) & 7);
      assert.equal(r.csb("bcs").length, 2);
    }
    assert.deepEqual(slots, [1, 3, 5, 1], "two entries per submission, wrapping after slot 5");
    for (let s = 0; s < 6; s++) {
      assert.equal(
        r.reg(base + RING_CONTEXT_STATUS_BUF_BASE + 8 * s),
        r.u32(hws + 4 * (I915_HWS_CSB_BUF0_INDEX + 2 * s)),
      );
      assert.equal(r.reg(base + RING_CONTEXT_STATUS_BUF_BASE + 8 * s + 4), c.desc.hi);
    }
    // The read pointer is software's: a masked write changes only it.
    r.setReg(base + RING_CONTEXT_STATUS_PTR, maskedField(0x700, 1 << 8));
    assert.equal(r.reg(base + RING_CONTEXT_STATUS_PTR), (1 << 8) | 1);
    // An engine reset clears execlists (GFX_MODE too: i915 re-enables it) and the write pointer goes back to 5.
    r.setReg(GEN6_GDRST, 0x8);
    assert.equal(r.reg(base + RING_CONTEXT_STATUS_PTR) & 7, 5);
    assert.equal(r.reg(base + RING_MODE_GEN7) & GFX_RUN_LIST_ENABLE, 0);
    r.enableExeclists("bcs");
    const d = r.newContext("bcs");
    d.emit([MI_NOOP, MI_NOOP]);
    r.elsp("bcs", d.desc);
    assert.equal(r.reg(base + RING_CONTEXT_STATUS_PTR) & 7, 1, "slots 0 and 1");
    assert.deepEqual(r.csb("bcs"), [ev(IDLE_ACTIVE, d), ev(ACTIVE_IDLE | COMPLETE, d)]);
  });

  it("ELSP is ignored in legacy mode, with element 0 invalid, and while the engine is halted", () => {
    const r = gpuRig();
    const c = r.newContext("rcs");
    c.emit([MI_NOOP, MI_NOOP]);
    r.elsp("rcs", c.desc);
    assert.equal(r.gpu.rcs.execlists.outCount, 0, "legacy mode");
    r.enableExeclists("rcs");
    r.elsp("rcs", { lo: c.desc.lo & ~1, hi: c.desc.hi });
    assert.equal(r.gpu.rcs.execlists.outCount, 0, "not valid");
    const results = r.rec.named("gpu.execlist.submit").map((e) => e.fields.result);
    assert.match(results[0]!, /run list is disabled/);
    assert.match(results[1]!, /not valid/);
  });
});

describe("execlists: logical ring context restore and save", () => {
  it("saves HEAD, the batch state and a timestamp advanced by the context's busy time", () => {
    const r = gpuRig();
    r.enableExeclists("bcs");
    const data = r.alloc(PAGE);
    const c = r.newContext("bcs");
    c.setState(CTX_TIMESTAMP, 0x1234);
    c.setState(CTX_BB_ADDR, 0xdead0001);
    c.emit(storeDataImm(data, 1));
    r.elsp("bcs", c.desc);
    assert.equal(c.state(CTX_RING_HEAD), c.tail);
    assert.equal(c.state(CTX_BB_ADDR), 0, "restore-inhibited: the image's batch state was not loaded");
    const run = r.gpu.bcs.execlists.lastOut!;
    const ticks = Math.floor((run.busyNs * 12) / 1000);
    assert.ok(run.busyNs >= r.gpu.cost.contextSwitchNs);
    assert.equal(c.state(CTX_TIMESTAMP), ticks, "restore-inhibited: the timestamp starts from 0");
    assert.equal(c.state(CTX_CONTEXT_CONTROL) & 1, 0, "the saved image is restorable");
    // Second run: no longer inhibited, the timestamp accumulates.
    c.emit(storeDataImm(data, 2));
    r.elsp("bcs", c.desc);
    const run2 = r.gpu.bcs.execlists.lastOut!;
    assert.equal(c.state(CTX_TIMESTAMP), ticks + Math.floor((run2.busyNs * 12) / 1000));
    assert.equal(r.u32(data), 2);
  });

  it("save-inhibit leaves the image untouched", () => {
    const r = gpuRig();
    r.enableExeclists("vecs");
    const c = r.newContext("vecs", {
      contextControl: contextControl(true) | maskedBitEnable(CTX_CTRL_ENGINE_CTX_SAVE_INHIBIT),
    });
    c.emit([MI_NOOP, MI_NOOP, MI_NOOP, MI_NOOP]);
    r.elsp("vecs", c.desc);
    assert.equal(c.state(CTX_RING_HEAD), 0);
    assert.equal(r.gpu.vecs.head, c.tail, "the engine did run");
  });

  it("an unsupported addressing mode or a command error switches the context out and halts the engine", () => {
    const r = gpuRig();
    r.enableIrqs();
    r.enableExeclists("rcs");
    const base = GT_ENGINE_BASE.rcs;
    const c = r.newContext("rcs");
    c.emit([MI_NOOP, MI_NOOP]);
    const legacy32 = { lo: (c.desc.lo & ~0x18) | (1 << 3), hi: c.desc.hi };
    r.elsp("rcs", legacy32);
    assert.deepEqual(r.csb("rcs"), [ev(IDLE_ACTIVE, c), ev(ACTIVE_IDLE | COMPLETE, c)]);
    assert.equal(r.reg(base + RING_EIR), I915_ERROR_INSTRUCTION);
    assert.equal(r.reg(gen8GtIir(0)) & GT_CS_MASTER_ERROR_INTERRUPT, GT_CS_MASTER_ERROR_INTERRUPT);
    assert.match(r.gpu.rcs.execlists.lastOut!.error!, /addressing mode 1/);
    r.elsp("rcs", c.desc);
    assert.deepEqual(r.csb("rcs"), [], "halted: ELSP ignored");
    r.setReg(base + RING_EIR, 0xffffffff);
    r.elsp("rcs", c.desc);
    assert.deepEqual(r.csb("rcs"), [ev(IDLE_ACTIVE, c), ev(ACTIVE_IDLE | COMPLETE, c)]);
    // A command error: HEAD is saved at the unknown command.
    const d = r.newContext("rcs");
    d.emit([MI_NOOP, MI_NOOP, 0x1f800000, MI_NOOP]);
    r.elsp("rcs", d.desc);
    assert.deepEqual(r.csb("rcs"), [ev(IDLE_ACTIVE, d), ev(ACTIVE_IDLE | COMPLETE, d)]);
    assert.equal(d.state(CTX_RING_HEAD), 8);
    assert.equal(r.gpu.rcs.execlists.lastOut!.outcome, "error");
  });
});

describe("execlists: engine control registers", () => {
  it("RESET_CTL: READY follows REQUEST (masked)", () => {
    const r = gpuRig();
    for (const e of GT_ENGINES) {
      const at = GT_ENGINE_BASE[e] + RING_RESET_CTL;
      r.setReg(at, maskedBitEnable(RESET_CTL_REQUEST_RESET));
      assert.equal(r.reg(at), RESET_CTL_REQUEST_RESET | RESET_CTL_READY_TO_RESET);
      r.setReg(at, maskedBitDisable(RESET_CTL_REQUEST_RESET));
      assert.equal(r.reg(at), 0);
      r.setReg(at, RESET_CTL_REQUEST_RESET);
      assert.equal(r.reg(at), 0, "without the mask bit a write changes nothing");
    }
  });

  it("STOP_RING holds an ELSP submission until it is cleared; MODE_IDLE reads 1 when idle", () => {
    const r = gpuRig();
    r.enableExeclists("bcs");
    const base = GT_ENGINE_BASE.bcs;
    const data = r.alloc(PAGE);
    assert.equal(r.reg(base + RING_MI_MODE) & MODE_IDLE, MODE_IDLE);
    r.setReg(base + RING_MI_MODE, maskedBitEnable(STOP_RING));
    assert.equal(r.reg(base + RING_MI_MODE), STOP_RING | MODE_IDLE);
    const c = r.newContext("bcs");
    c.emit(storeDataImm(data, 3));
    r.elsp("bcs", c.desc);
    assert.equal(r.u32(data), 0, "held");
    assert.deepEqual(r.csb("bcs"), []);
    r.setReg(base + RING_MI_MODE, maskedBitDisable(STOP_RING));
    assert.equal(r.u32(data), 3);
    assert.deepEqual(r.csb("bcs"), [ev(IDLE_ACTIVE, c), ev(ACTIVE_IDLE | COMPLETE, c)]);
  });

  it("MI_ARB_ON_OFF shows in EXECLIST_STATUS", () => {
    const r = gpuRig();
    r.enableExeclists("rcs");
    const base = GT_ENGINE_BASE.rcs;
    const data = r.alloc(PAGE);
    const c = r.newContext("rcs");
    c.emit([...arbOnOff(false), ...semaphoreWait(MI_SEMAPHORE_SAD_EQ_SDD, 1, data)]);
    r.elsp("rcs", c.desc);
    assert.equal(r.reg(base + RING_EXECLIST_STATUS_LO) & EXECLIST_STATUS_ARB_ENABLE, 0);
    r.setU32(data, 1);
    r.gpu.pollSemaphores();
    assert.deepEqual(r.csb("rcs"), [ev(IDLE_ACTIVE, c), ev(ACTIVE_IDLE | COMPLETE, c)]);
  });

  it("a GDRST of one engine leaves the others' contexts alone", () => {
    const r = gpuRig();
    r.enableExeclists("vcs");
    r.enableExeclists("vecs");
    const data = r.alloc(PAGE);
    const v = r.newContext("vcs");
    const w = r.newContext("vecs");
    v.emit(semaphoreWait(MI_SEMAPHORE_SAD_EQ_SDD, 1, data));
    w.emit(semaphoreWait(MI_SEMAPHORE_SAD_EQ_SDD, 1, data));
    r.elsp("vcs", v.desc);
    r.elsp("vecs", w.desc);
    r.setReg(GEN6_GDRST, GEN6_GRDOM_MEDIA);
    assert.equal(r.gpu.vcs.execlists.active, false);
    assert.equal(r.gpu.vecs.execlists.active, true);
    r.setU32(data, 1);
    r.gpu.pollSemaphores();
    assert.deepEqual(r.csb("vecs"), [ev(IDLE_ACTIVE, w), ev(ACTIVE_IDLE | COMPLETE, w)]);
  });

  it("a descriptor built by lrcDescriptor has the fields of the section 4 table", () => {
    const d = lrcDescriptor(0x12345000, 0x40);
    assert.equal(d.lo, 0x12345000 | (3 << 3) | (1 << 8) | 1);
    assert.equal(d.hi, 0x40);
    assert.equal(MI_FLUSH_DW_STORE_INDEX, 1 << 21);
  });
});
