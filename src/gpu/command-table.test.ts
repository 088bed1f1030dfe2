import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { COMMANDS, decodeCommand } from "./command-table.ts";
import {
  arbOnOff,
  batchBufferStart,
  colorBlt,
  flushDw,
  gfxState,
  loadRegisterImm,
  pipeControl,
  pipelineSelect,
  semaphoreWait,
  srcCopyBlt,
  storeDataImm,
} from "./commands.ts";
import { LRC_PPHWSP_SCRATCH_ADDR } from "./lrc.ts";
import {
  GEN8_CTX_STATUS_ACTIVE_IDLE,
  GEN8_CTX_STATUS_COMPLETE,
  I915_ERROR_INSTRUCTION,
  MI_ARB_CHECK,
  MI_BATCH_BUFFER_END,
  MI_FLUSH_DW,
  MI_FLUSH_DW_OP_STOREDW,
  MI_FLUSH_DW_STORE_INDEX,
  MI_FLUSH_DW_USE_GTT,
  MI_INVALIDATE_TLB,
  MI_NOOP,
  MI_SEMAPHORE_GLOBAL_GTT,
  MI_SEMAPHORE_POLL,
  MI_SEMAPHORE_SAD_GTE_SDD,
  MI_SEMAPHORE_WAIT,
  MI_USER_INTERRUPT,
  PIPE_CONTROL_QW_WRITE,
  PIPE_CONTROL_STORE_DATA_INDEX,
} from "./regs.ts";
import { gpuRig, PAGE } from "./test-support/gpu-rig.ts";
import { NULL_RENDER_STATE, nullRenderStateBatch } from "./test-support/null-render-state.ts";

/**
 * The length rules of the datasheet's section 7, written out independently of command-table.ts: the total length
 * in dwords of a known command, or undefined for an unknown one.
 */
function specLength(h: number): number | undefined {
  const client = h >>> 29;
  if (client === 0) {
    const op = (h >>> 23) & 0x3f;
    if ([0x00, 0x02, 0x05, 0x08, 0x0a].includes(op)) return 1;
    if (op === 0x20) return (h & 0x3ff) + 2;
    if (op === 0x26) return (h & 0x3f) + 2;
    if ([0x1c, 0x22, 0x31].includes(op)) return (h & 0xff) + 2;
    return undefined;
  }
  if (client === 2) {
    const op = (h >>> 22) & 0x7f;
    return op === 0x50 || op === 0x53 ? (h & 0xff) + 2 : undefined;
  }
  if (client === 3) {
    const subtype = (h >>> 27) & 3;
    if (subtype === 1) return 1;
    if (subtype === 2) return (h & 0xffff) + 2;
    if (((h >>> 16) & 0x1fff) === 0x1917) return (h & 0x1ff) + 2;
    return (h & 0xff) + 2;
  }
  return undefined;
}

describe("command decoder", () => {
  it("decodes every header as the length rules say (known or not, and how long)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (h) => {
        const info = decodeCommand(h);
        const want = specLength(h);
        assert.equal(info?.length(h), want, `header 0x${h.toString(16)}`);
      }),
      { numRuns: 20000 },
    );
    // Every MI opcode and every render subtype/opcode at least once.
    for (let op = 0; op < 64; op++) {
      const h = (op << 23) | 5;
      assert.equal(decodeCommand(h)?.length(h), specLength(h));
    }
    for (let t = 0; t < 0x2000; t++) {
      const h = ((3 << 29) | (t << 16) | 0x1a3) >>> 0;
      assert.equal(decodeCommand(h)?.length(h), specLength(h));
    }
  });

  it("every encoder's command decodes to its own length, whatever its arguments", () => {
    const addr = fc.integer({ min: 0, max: 2 ** 48 - 8 }).map((a) => a - (a % 8));
    const u32 = fc.integer({ min: 0, max: 0xffffffff });
    const space = fc.constantFrom("ggtt" as const, "ppgtt" as const);
    const commands = fc.oneof(
      fc.tuple(addr, u32, space).map(([a, v, s]) => storeDataImm(a, v, s)),
      fc.tuple(addr, space).map(([a, s]) => batchBufferStart(a, s)),
      fc.boolean().map(arbOnOff),
      fc
        .tuple(addr, u32, fc.boolean(), fc.constantFrom("none", "store", "timestamp") as fc.Arbitrary<"none" | "store">)
        .map(([a, v, q, post]) =>
          flushDw({ post, target: { kind: "ggtt", address: a }, value: v, ...(q ? { valueHigh: v } : {}) }),
        ),
      fc.tuple(u32, addr, u32, u32).map(([f, a, lo, hi]) => pipeControl(f, a, lo, hi)),
      fc
        .tuple(fc.integer({ min: 0, max: 5 }), u32, addr, space)
        .map(([op, v, a, s]) => semaphoreWait(op << 12, v, a, s)),
      fc.integer({ min: 0, max: 2 }).map(pipelineSelect),
      fc
        .array(
          fc.tuple(
            fc.integer({ min: 0, max: 0x1ffff }).map((x) => x * 4),
            u32,
          ),
          { minLength: 1, maxLength: 20 },
        )
        .map((p) => loadRegisterImm(p)),
      fc
        .tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 255 }))
        .filter(([t]) => t !== 1)
        .chain(([t, o, s]) => fc.integer({ min: 2, max: t === 2 ? 600 : 257 }).map((n) => gfxState(t, o, s, n)))
        .filter((c) => decodeCommand(c[0]!)!.name === "GFX_STATE"),
      fc.tuple(addr, fc.integer({ min: 0, max: 0xffff })).map(([a, p]) => colorBlt(a, p, 0, 0, 4, 4, 1)),
      fc.tuple(addr, addr).map(([d, s]) => srcCopyBlt(d, 64, 0, 0, 4, 4, s, 64, 0, 0)),
    );
    fc.assert(
      fc.property(commands, (c) => {
        const info = decodeCommand(c[0]!);
        assert.ok(info !== undefined, `0x${c[0]!.toString(16)}`);
        assert.equal(info.length(c[0]!), c.length, info.name);
      }),
      { numRuns: 3000 },
    );
    for (const w of [MI_NOOP, MI_USER_INTERRUPT, MI_ARB_CHECK, MI_BATCH_BUFFER_END]) {
      assert.equal(decodeCommand(w)!.length(w), 1);
    }
    assert.equal(new Set(COMMANDS.map((c) => c.name)).size, COMMANDS.length);
  });

  it("encodes MI_FLUSH_DW, PIPE_CONTROL and MI_SEMAPHORE_WAIT as i915 does", () => {
    assert.deepEqual(
      flushDw({ post: "store", target: { kind: "index", offset: LRC_PPHWSP_SCRATCH_ADDR }, invalidateTlb: true }),
      [
        (MI_FLUSH_DW + 1) | MI_FLUSH_DW_STORE_INDEX | MI_FLUSH_DW_OP_STOREDW | MI_INVALIDATE_TLB,
        LRC_PPHWSP_SCRATCH_ADDR | MI_FLUSH_DW_USE_GTT,
        0,
        0,
      ],
    );
    assert.deepEqual(flushDw({ post: "store", target: { kind: "ggtt", address: 0x1000 }, value: 5 }), [
      (MI_FLUSH_DW + 1) | MI_FLUSH_DW_OP_STOREDW,
      0x1000 | MI_FLUSH_DW_USE_GTT,
      0,
      5,
    ]);
    assert.deepEqual(pipeControl(PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_STORE_DATA_INDEX, 0xd0), [
      0x7a000004,
      PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_STORE_DATA_INDEX,
      0xd0,
      0,
      0,
      0,
    ]);
    assert.deepEqual(semaphoreWait(MI_SEMAPHORE_SAD_GTE_SDD, 9, 0x1_0000_2000), [
      (MI_SEMAPHORE_WAIT | MI_SEMAPHORE_POLL | MI_SEMAPHORE_GLOBAL_GTT | MI_SEMAPHORE_SAD_GTE_SDD) >>> 0,
      9,
      0x2000,
      1,
    ]);
    assert.deepEqual(pipelineSelect(0), [0x69040300]);
  });
});

describe("the null render state batch (section 7)", () => {
  it("decodes to its 85 commands and 886 dwords, with the length exceptions", () => {
    const batch = nullRenderStateBatch();
    assert.equal(batch.length, 886);
    const seen: [string, number][] = [];
    for (let at = 0; at < batch.length; ) {
      const info = decodeCommand(batch[at]!);
      assert.ok(info !== undefined, `dword ${at}: 0x${batch[at]!.toString(16)}`);
      const n = info.length(batch[at]!);
      seen.push([info.name, n]);
      at += n;
    }
    assert.deepEqual(
      seen.map(([, n]) => n),
      NULL_RENDER_STATE.map(([, n]) => n),
    );
    assert.equal(seen.length, 85);
    assert.deepEqual(seen[0], ["PIPE_CONTROL", 6]);
    assert.deepEqual(seen[1], ["PIPELINE_SELECT", 1]);
    assert.ok(seen.some(([name, n]) => name === "3DSTATE_SO_DECL_LIST" && n === 259));
    assert.ok(seen.some(([name, n]) => name === "3DSTATE_VF_STATISTICS" && n === 1));
    assert.deepEqual(seen.at(-2), ["3DPRIMITIVE", 7]);
    assert.deepEqual(seen.at(-1), ["MI_BATCH_BUFFER_END", 1]);
  });

  it("runs on the render engine as a GGTT batch (skipped by length) and is refused by the video engine", () => {
    const r = gpuRig();
    const batch = r.alloc(2 * PAGE);
    r.writeDwords(batch, Array.from(nullRenderStateBatch()));
    for (const engine of ["rcs", "vcs"] as const) {
      r.enableExeclists(engine);
      const c = r.newContext(engine);
      c.emit(batchBufferStart(batch));
      r.elsp(engine, c.desc);
      const out = r.gpu.engine(engine).execlists.lastOut!;
      assert.equal(out.events.at(-1)!.status, GEN8_CTX_STATUS_ACTIVE_IDLE | GEN8_CTX_STATUS_COMPLETE);
      if (engine === "rcs") {
        assert.equal(out.error, undefined);
        assert.equal(out.commands, 1 + 85 + 1, "MI_BATCH_BUFFER_START, the batch, the ring's MI_NOOP");
      } else {
        assert.equal(r.gpu.vcs.eir, I915_ERROR_INSTRUCTION);
        assert.match(out.error!, /vcs executes MI commands only: 0x7a000004 is a render command/);
      }
    }
  });
});
