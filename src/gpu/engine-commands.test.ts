/**
 * Each command the engines execute, in an execlists context and (where it differs) on the legacy ring: where its
 * memory writes land (GGTT, the context's PPGTT, the status page), its errors, and MI_SEMAPHORE_WAIT's waits.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  batchBufferStart,
  colorBlt,
  flushDw,
  loadRegisterImm,
  pipeControl,
  semaphoreWait,
  storeDataImm,
} from "./commands.ts";
import { LRC_PPHWSP_SCRATCH_ADDR } from "./lrc.ts";
import {
  ENGINE_BASE,
  GEN6_GDRST,
  GEN6_GRDOM_RENDER,
  GT_ENGINE_BASE,
  I915_ERROR_INSTRUCTION,
  I915_ERROR_PAGE_TABLE,
  MI_BATCH_BUFFER_END,
  MI_FLUSH_DW,
  MI_SEMAPHORE_SAD_EQ_SDD,
  MI_STORE_QWORD_IMM_GEN8,
  MI_USE_GGTT,
  PIPE_CONTROL_GLOBAL_GTT_IVB,
  PIPE_CONTROL_QW_WRITE,
  PIPE_CONTROL_STORE_DATA_INDEX,
  PIPE_CONTROL_WRITE_DEPTH_COUNT,
  PIPE_CONTROL_WRITE_TIMESTAMP,
  RING_CTL,
  RING_EIR,
  RING_EMR,
  RING_HEAD,
  RING_HWS_PGA,
  RING_START,
  RING_TAIL,
  RING_VALID,
} from "./regs.ts";
import { gpuRig, PAGE } from "./test-support/gpu-rig.ts";

const TWO32 = 4294967296;

/** A rig with `engine` in execlists mode, a PPGTT with `ppgttBytes` mapped at PPGTT address 0x7f_0000_0000. */
function setup(engine: "rcs" | "bcs" | "vcs" | "vecs" = "rcs") {
  const r = gpuRig();
  r.enableExeclists(engine);
  const pt = r.ppgtt();
  const va = 0x7f_0000_0000;
  pt.mapRange(va, 4 * PAGE);
  const data = r.alloc(PAGE);
  /** Runs `dwords` in a new context; returns the context and its switch-out record. */
  const run = (dwords: readonly number[]) => {
    const c = r.newContext(engine, { pml4: pt.root });
    c.emit(dwords);
    r.elsp(engine, c.desc);
    return { c, out: r.gpu.engine(engine).execlists.lastOut };
  };
  return { r, pt, va, data, run, eng: r.gpu.engine(engine) };
}

describe("engine commands in an execlists context", () => {
  it("MI_STORE_DATA_IMM: GGTT and PPGTT, dword and qword; a PPGTT fault halts with a page-table error", () => {
    const { r, pt, va, data, run, eng } = setup("bcs");
    run([
      ...storeDataImm(data, 0x11),
      ...storeDataImm(va + 4, 0x22, "ppgtt"),
      MI_STORE_QWORD_IMM_GEN8 | MI_USE_GGTT,
      data + 8,
      0,
      0x33,
      0x44,
      MI_STORE_QWORD_IMM_GEN8,
      (va + 16) % TWO32,
      Math.floor((va + 16) / TWO32),
      0x55,
      0x66,
    ]);
    assert.equal(eng.eir, 0, eng.last.error);
    assert.deepEqual([r.u32(data), r.u32(data + 8), r.u32(data + 12)], [0x11, 0x33, 0x44]);
    assert.deepEqual([pt.u32(va + 4), pt.u32(va + 16), pt.u32(va + 20)], [0x22, 0x55, 0x66]);
    const { out } = run(storeDataImm(va + 8 * PAGE, 1, "ppgtt"));
    assert.equal(eng.eir, I915_ERROR_PAGE_TABLE);
    assert.match(out!.error!, /PPGTT fault at address 0x7f00008000: PTE\[8\] not present/);
  });

  it("MI_FLUSH_DW: store-index into the context's PPHWSP, GGTT, PPGTT, qword, timestamp, TLB invalidation", () => {
    const { r, pt, va, data, run, eng } = setup("vcs");
    const before = eng.ppgtt.walks;
    const { c } = run([
      ...flushDw({ post: "store", target: { kind: "index", offset: LRC_PPHWSP_SCRATCH_ADDR }, value: 0xa1 }),
      ...flushDw({ post: "store", target: { kind: "ggtt", address: data }, value: 0xa2 }),
      ...flushDw({ post: "store", target: { kind: "ppgtt", address: va }, value: 0xa3 }),
      ...flushDw({ post: "store", target: { kind: "ggtt", address: data + 8 }, value: 0xa4, valueHigh: 0xa5 }),
      ...flushDw({ post: "timestamp", target: { kind: "ggtt", address: data + 16 } }),
      ...flushDw({ invalidateTlb: true }),
      ...flushDw({ post: "store", target: { kind: "ppgtt", address: va + 8 }, value: 0xa6 }),
    ]);
    assert.equal(eng.eir, 0, eng.last.error);
    assert.equal(r.u32(c.lrca + LRC_PPHWSP_SCRATCH_ADDR), 0xa1, "page 0 of the image");
    assert.deepEqual([r.u32(data), pt.u32(va), r.u32(data + 8), r.u32(data + 12)], [0xa2, 0xa3, 0xa4, 0xa5]);
    assert.equal(pt.u32(va + 8), 0xa6);
    assert.equal(eng.ppgtt.walks - before, 2, "the invalidation made the second PPGTT write walk again");
    const stamp = r.u32(data + 16) + r.u32(data + 20) * TWO32;
    assert.ok(stamp > 0 && stamp <= Math.floor((eng.busyUntil * 12) / 1000), `timestamp ${stamp}`);
    run([(MI_FLUSH_DW + 1) | (2 << 14), data, 0, 0]);
    assert.equal(eng.eir, I915_ERROR_INSTRUCTION, "reserved post-sync operation");
  });

  it("PIPE_CONTROL: QW_WRITE by index, GGTT and PPGTT; depth count writes 0; timestamp; too short for post-sync", () => {
    const { r, pt, va, data, run, eng } = setup("rcs");
    r.writeDwords(data, [9, 9, 9, 9, 9, 9, 9, 9]);
    const { c } = run([
      ...pipeControl(PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_STORE_DATA_INDEX, 0x100, 0xb1, 0xb2),
      ...pipeControl(PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_GLOBAL_GTT_IVB, data, 0xb3, 0),
      ...pipeControl(PIPE_CONTROL_QW_WRITE, va + 0x40, 0xb4, 0xb5),
      ...pipeControl(PIPE_CONTROL_WRITE_DEPTH_COUNT | PIPE_CONTROL_GLOBAL_GTT_IVB, data + 8),
      ...pipeControl(PIPE_CONTROL_WRITE_TIMESTAMP | PIPE_CONTROL_GLOBAL_GTT_IVB, data + 16),
      ...pipeControl(0),
    ]);
    assert.equal(eng.eir, 0, eng.last.error);
    assert.deepEqual([r.u32(c.lrca + 0x100), r.u32(c.lrca + 0x104)], [0xb1, 0xb2]);
    assert.deepEqual([r.u32(data), r.u32(data + 4)], [0xb3, 0], "a qword: the high dword is written too");
    assert.deepEqual([pt.u32(va + 0x40), pt.u32(va + 0x44)], [0xb4, 0xb5]);
    assert.deepEqual([r.u32(data + 8), r.u32(data + 12)], [0, 0], "no 3D pipeline: no pixels counted");
    assert.ok(r.u32(data + 16) > 0);
    run([0x7a000002, PIPE_CONTROL_QW_WRITE, data, 0]);
    assert.equal(eng.eir, I915_ERROR_INSTRUCTION);
    assert.match(eng.last.error!, /a post-sync write needs 6/);
    assert.ok(r.rec.named("gpu.post_sync").some((e) => e.fields.space === "ppgtt"));
  });

  it("MI_BATCH_BUFFER_START: a PPGTT batch at a 48-bit address, a GGTT batch, no nesting", () => {
    const { r, pt, va, data, run, eng } = setup("bcs");
    const batchVa = 0x7f_0000_2000;
    const words = [...storeDataImm(data, 0xc1), ...storeDataImm(va + 0x10, 0xc2, "ppgtt"), MI_BATCH_BUFFER_END];
    words.forEach((w, i) => {
      r.host.physmem.writeU32(pt.hpa(batchVa + 4 * i), w);
    });
    const ggttBatch = r.alloc(PAGE);
    r.writeDwords(ggttBatch, [...storeDataImm(data + 4, 0xc3), MI_BATCH_BUFFER_END]);
    run([...batchBufferStart(batchVa, "ppgtt"), ...batchBufferStart(ggttBatch)]);
    assert.equal(eng.eir, 0, eng.last.error);
    assert.deepEqual([r.u32(data), pt.u32(va + 0x10), r.u32(data + 4)], [0xc1, 0xc2, 0xc3]);
    r.writeDwords(ggttBatch, [...batchBufferStart(ggttBatch), MI_BATCH_BUFFER_END]);
    run(batchBufferStart(ggttBatch));
    assert.match(eng.last.error!, /one level only/);
  });

  it("MI_LOAD_REGISTER_IMM writes MMIO registers; the video engines refuse 2D and render commands", () => {
    const { r, run } = setup("vecs");
    run(loadRegisterImm([[GT_ENGINE_BASE.bcs + RING_EMR, 0x1234]]));
    assert.equal(r.reg(GT_ENGINE_BASE.bcs + RING_EMR), 0x1234);
    const data = r.alloc(PAGE);
    const { out } = run(colorBlt(data, 64, 0, 0, 1, 1, 1));
    assert.match(out!.error!, /vecs executes MI commands only: .* is a 2D command/);
  });
});

describe("MI_SEMAPHORE_WAIT", () => {
  it("proceeds exactly when (memory op data) holds, for every compare operation", () => {
    const { r, data, run, eng } = setup("rcs");
    type Cmp = (a: number, b: number) => boolean;
    const ops: readonly Cmp[] = [
      (a, b) => a > b,
      (a, b) => a >= b,
      (a, b) => a < b,
      (a, b) => a <= b,
      (a, b) => a === b,
      (a, b) => a !== b,
    ];
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 5 }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.boolean(),
        (op, mem, small, near) => {
          const inline = near ? (mem + (small % 3) - 1) >>> 0 : small;
          r.setU32(data, mem);
          r.setU32(data + 4, 0);
          run([...semaphoreWait(op << 12, inline, data), ...storeDataImm(data + 4, 1)]);
          const met = ops[op]!(mem, inline);
          assert.equal(r.u32(data + 4), met ? 1 : 0, `${mem} op${op} ${inline}`);
          assert.equal(eng.waiting, !met);
          if (!met) {
            r.setReg(GEN6_GDRST, GEN6_GRDOM_RENDER);
            r.enableExeclists("rcs");
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  it("a wait is released by another engine's store, or by pollSemaphores after a CPU write", () => {
    const r = gpuRig();
    r.enableExeclists("rcs");
    r.enableExeclists("bcs");
    const data = r.alloc(PAGE);
    const waiter = r.newContext("rcs");
    waiter.emit([...semaphoreWait(MI_SEMAPHORE_SAD_EQ_SDD, 1, data), ...storeDataImm(data + 4, 0xd1)]);
    r.elsp("rcs", waiter.desc);
    assert.equal(r.gpu.rcs.waiting, true);
    const signaller = r.newContext("bcs");
    signaller.emit(storeDataImm(data, 1));
    r.elsp("bcs", signaller.desc);
    assert.equal(r.u32(data + 4), 0xd1, "re-evaluated after the blitter's run");
    assert.equal(r.gpu.rcs.waiting, false);
    assert.equal(r.csb("rcs").length, 2);
    // Legacy ring: the same wait, released by the CPU and pollSemaphores.
    const ring = r.alloc(PAGE);
    const base = ENGINE_BASE.bcs;
    r.setReg(GEN6_GDRST, 0x8);
    r.setReg(base + RING_START, ring);
    r.setReg(base + RING_CTL, RING_VALID);
    r.writeDwords(ring, [...semaphoreWait(MI_SEMAPHORE_SAD_EQ_SDD, 2, data), ...storeDataImm(data + 8, 0xd2)]);
    r.setReg(base + RING_TAIL, 32);
    assert.equal(r.reg(base + RING_HEAD), 0, "HEAD stays at the wait");
    r.setU32(data, 2);
    assert.equal(r.u32(data + 8), 0);
    r.gpu.pollSemaphores();
    assert.equal(r.u32(data + 8), 0xd2);
    assert.equal(r.reg(base + RING_HEAD), 32);
    assert.ok(r.rec.named("gpu.semaphore").some((e) => e.fields.met === false));
  });

  it("a reserved compare operation is an instruction error", () => {
    const { data, run, eng } = setup("bcs");
    run(semaphoreWait(6 << 12, 0, data));
    assert.equal(eng.eir, I915_ERROR_INSTRUCTION);
  });
});

describe("legacy ring mode: the new commands without a context", () => {
  it("store-index writes go to RING_HWS_PGA; PPGTT forms are instruction errors", () => {
    const r = gpuRig();
    const base = ENGINE_BASE.rcs;
    const ring = r.alloc(PAGE);
    const hws = r.alloc(PAGE);
    r.setReg(base + RING_HWS_PGA, hws);
    r.setReg(base + RING_START, ring);
    r.setReg(base + RING_CTL, RING_VALID);
    const words = [
      ...flushDw({ post: "store", target: { kind: "index", offset: 0x80 }, value: 0xe1 }),
      ...pipeControl(PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_STORE_DATA_INDEX, 0x88, 0xe2, 0xe3),
    ];
    r.writeDwords(ring, words);
    r.setReg(base + RING_TAIL, words.length * 4);
    assert.equal(r.reg(base + RING_EIR), 0, r.gpu.rcs.last.error);
    assert.deepEqual([r.u32(hws + 0x80), r.u32(hws + 0x88), r.u32(hws + 0x8c)], [0xe1, 0xe2, 0xe3]);
    const bad = flushDw({ post: "store", target: { kind: "ppgtt", address: 0x1000 }, value: 1 });
    r.writeDwords(ring + words.length * 4, bad);
    r.setReg(base + RING_TAIL, (words.length + bad.length) * 4);
    assert.equal(r.reg(base + RING_EIR), I915_ERROR_INSTRUCTION);
    assert.match(r.gpu.rcs.last.error!, /PPGTT/);
  });
});
