import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, type Gma, KernelError, PAGE_SIZE } from "../core/index.ts";
import {
  arbOnOff,
  batchBufferStart,
  flushDw,
  gfxState,
  loadRegisterImm,
  MI_ARB_CHECK,
  MI_BATCH_BUFFER_END,
  MI_BATCH_BUFFER_START_GEN8,
  MI_BATCH_PPGTT,
  MI_NOOP,
  MI_STORE_DWORD_IMM_GEN4,
  MI_STORE_QWORD_IMM_GEN8,
  MI_USE_GGTT,
  MI_USER_INTERRUPT,
  miInstr,
  miLoadRegisterImm,
  PIPE_CONTROL_CS_STALL,
  PIPE_CONTROL_GLOBAL_GTT_IVB,
  PIPE_CONTROL_QW_WRITE,
  PIPE_CONTROL_STORE_DATA_INDEX,
  pipeControl,
  pipelineSelect,
  type ShadowBuffer,
  semaphoreWait,
  srcCopyBlt,
  storeDataImm,
  XY_SRC_COPY_BLT_DST_TILED,
} from "../gpu/index.ts";
import { CommandScanner, LRI_ALLOWED, MAX_OP_SIZE, type ScannerMemory } from "./cmd-scanner.ts";
import { batchStart, colorBlt, storeDword } from "./testing.ts";

const AP = { base: 0x10_0000, size: 0x10_0000 };
const HI = { base: 0x100_0000, size: 0x400_0000 };

/** Guest graphics memory: pages that exist are backed; the rest read as unbacked (scratch). */
class FakeMemory implements ScannerMemory {
  readonly pages = new Map<number, Uint8Array>();
  inPartition(gma: number, len: number): boolean {
    const end = gma + len;
    return len > 0 && ((gma >= AP.base && end <= AP.base + AP.size) || (gma >= HI.base && end <= HI.base + HI.size));
  }
  readGm(gma: number, dst: Uint8Array): number {
    for (let done = 0; done < dst.length; ) {
      const a = gma + done;
      const page = this.pages.get(Math.floor(a / PAGE_SIZE));
      if (page === undefined) return a;
      const n = Math.min(dst.length - done, PAGE_SIZE - (a % PAGE_SIZE));
      dst.set(page.subarray(a % PAGE_SIZE, (a % PAGE_SIZE) + n), done);
      done += n;
    }
    return -1;
  }
  describe(): string {
    return "aperture [0x100000, 0x200000), hidden [0x1000000, 0x5000000)";
  }
  /** Writes dwords at `gma`, creating pages. */
  put(gma: number, dwords: readonly number[]): void {
    dwords.forEach((d, i) => {
      const a = gma + i * 4;
      let page = this.pages.get(Math.floor(a / PAGE_SIZE));
      if (page === undefined) {
        page = new Uint8Array(PAGE_SIZE);
        this.pages.set(Math.floor(a / PAGE_SIZE), page);
      }
      new DataView(page.buffer).setUint32(a % PAGE_SIZE, d >>> 0, true);
    });
  }
}

class FakeShadow implements ShadowBuffer {
  readonly bytes: Uint8Array;
  freed = false;
  constructor(
    readonly gma: Gma,
    readonly size: number,
  ) {
    this.bytes = new Uint8Array(size);
  }
  write(offset: number, data: Uint8Array): void {
    this.bytes.set(data, offset);
  }
  read(offset: number, into: Uint8Array): void {
    into.set(this.bytes.subarray(offset, offset + into.length));
  }
  free(): void {
    this.freed = true;
  }
  u32(i: number): number {
    return new DataView(this.bytes.buffer).getUint32(i * 4, true);
  }
}

function setup(opts: { shadowFails?: boolean } = {}) {
  const mem = new FakeMemory();
  const shadows: FakeShadow[] = [];
  let next = 0x6000_0000;
  const scanner = new CommandScanner({
    memory: mem,
    allocShadow: (size) => {
      if (opts.shadowFails) throw new KernelError(Errno.ENOSPC, "host hidden reservation full");
      const s = new FakeShadow(next as Gma, size);
      next += Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
      shadows.push(s);
      return s;
    },
  });
  const scan = (dwords: readonly number[]) => scanner.scan("rcs", Uint32Array.from(dwords), 0x40);
  return { mem, shadows, scanner, scan };
}

function rejected(r: ReturnType<ReturnType<typeof setup>["scan"]>, re: RegExp): void {
  assert.equal(r.ok, false, "rejected");
  if (!r.ok) assert.match(r.reason, re);
}

const srcCopy = (dst: number, src: number, w: number, h: number, pitch: number) =>
  srcCopyBlt(dst, pitch, 0, 0, w, h, src, pitch, 0, 0);

describe("command scanner: what passes", () => {
  it("accepts a well-formed stream and counts commands and user interrupts", () => {
    const { scan } = setup();
    const r = scan([
      MI_NOOP,
      ...storeDword(AP.base + 8, 1),
      ...colorBlt(HI.base, 4096, 0, 0, 1024, 16, 0xff),
      ...srcCopy(AP.base, HI.base, 64, 64, 256),
      miLoadRegisterImm(1),
      LRI_ALLOWED[0]!.offset,
      7,
      MI_USER_INTERRUPT,
      MI_BATCH_BUFFER_END,
    ]);
    assert.ok(r.ok);
    if (r.ok) {
      assert.equal(r.count, 7);
      assert.equal(r.userInterrupts, 1);
      assert.equal(r.shadows.length, 0);
    }
  });

  it("shadows a batch buffer: the copy is audited, the command patched, and later guest writes do not reach it", () => {
    const { scan, mem, shadows } = setup();
    const bb = HI.base + 0x2000;
    const body = [...storeDword(AP.base + 4, 0xaaaa), MI_USER_INTERRUPT, MI_BATCH_BUFFER_END];
    mem.put(bb, body);
    const ring = [...batchStart(bb), MI_NOOP];
    const r = scan(ring);
    assert.ok(r.ok);
    if (!r.ok) return;
    assert.equal(shadows.length, 1);
    const sh = shadows[0]!;
    assert.equal(sh.size, body.length * 4, "the batch up to and including MI_BATCH_BUFFER_END");
    assert.equal(r.commands[1], sh.gma, "BB_START now points at the shadow");
    assert.equal(r.commands[2], 0);
    assert.equal(r.userInterrupts, 1);
    // TOCTOU: the guest rewrites its batch to store into the host's memory after the scan.
    mem.put(bb, storeDword(0x1000, 0xbad));
    assert.deepEqual(
      Array.from({ length: body.length }, (_, i) => sh.u32(i)),
      body.map((d) => d >>> 0),
      "the shadow keeps the audited copy",
    );
  });

  it("an empty rectangle touches nothing and passes, wherever it points; its mode and pitch are still checked", () => {
    const { scan } = setup();
    assert.ok(scan(colorBlt(0, 4096, 10, 10, 10, 20, 0)).ok);
    assert.ok(scan(colorBlt(2 ** 40, 4096, 10, 20, 30, 20, 0)).ok, "y2 == y1, far outside GM");
    assert.ok(scan(srcCopy(AP.base, 0x1000, 0, 16, 64)).ok, "0 px wide: the source is not audited either");
    const tiled = colorBlt(0, 4096, 10, 10, 10, 20, 0);
    tiled[0] = (tiled[0]! | XY_SRC_COPY_BLT_DST_TILED) >>> 0;
    assert.ok(scan(tiled).ok, "an empty tiled rectangle passes too");
    rejected(scan(colorBlt(0, 0x8000, 10, 10, 10, 20, 0)), /negative/);
  });

  it("a tiled blit surface is audited by whole 32-row tile rows, its pitch read in dwords", () => {
    const { scan } = setup();
    const tiledFill = (dst: number, pitchDwords: number, y1: number, y2: number): number[] => {
      const w = colorBlt(dst, pitchDwords, 0, y1, 1, y2, 0);
      w[0] = (w[0]! | XY_SRC_COPY_BLT_DST_TILED) >>> 0;
      return w;
    };
    // 128 dwords = 512 bytes a row; 32 rows = 16 KiB a tile row.
    assert.ok(scan(tiledFill(AP.base, 128, 0, 1)).ok, "one pixel: its 16 KiB tile row is inside");
    assert.ok(scan(tiledFill(AP.base + AP.size - 0x4000, 128, 31, 32)).ok, "the last tile row of the partition");
    // Linear, the same pixel at row 0 would be inside; tiled, its tile row runs 16 KiB past the partition's end.
    rejected(scan(tiledFill(AP.base + AP.size - 0x2000, 128, 0, 1)), /outside/);
    const linear = colorBlt(AP.base + AP.size - 0x2000, 512, 0, 0, 1, 1, 0);
    assert.ok(scan(linear).ok, "linear: only the pixel itself is audited");
    // Row 40 is in the second tile row: [32 * 512, 64 * 512) from the base.
    rejected(scan(tiledFill(AP.base + AP.size - 0x6000, 128, 40, 41)), /outside/);
    assert.ok(scan(tiledFill(AP.base + AP.size - 0x8000, 128, 40, 41)).ok);
  });

  it("MI_BATCH_BUFFER_END in the ring is a no-op: what follows it is still audited", () => {
    const { scan } = setup();
    const ok = scan([MI_BATCH_BUFFER_END, MI_BATCH_BUFFER_END, ...storeDword(AP.base, 1)]);
    assert.ok(ok.ok && ok.count === 3);
    rejected(scan([MI_BATCH_BUFFER_END, ...storeDword(0x1000, 1)]), /outside/);
  });
});

describe("command scanner: malicious submissions are rejected with a reason, and shadows freed", () => {
  const cases: [string, number[], RegExp][] = [
    ["store into the host's range", storeDword(0x1000, 1), /MI_STORE_DATA_IMM target \[0x1000, 0x1004\) is outside/],
    ["store just past the aperture", storeDword(AP.base + AP.size - 2, 1), /outside the vGPU's graphics memory/],
    ["store with an address above 4 GiB", storeDword(2 ** 32 + AP.base, 1), /outside/],
    ["store through PPGTT", [MI_STORE_DWORD_IMM_GEN4, AP.base, 0, 1], /PPGTT/],
    ["qword store unaligned", [(MI_STORE_QWORD_IMM_GEN8 | MI_USE_GGTT) >>> 0, AP.base + 4, 0, 1, 2], /unaligned/],
    ["blit into another vGPU's range", colorBlt(0x600_0000, 64, 0, 0, 16, 16, 0), /XY_COLOR_BLT destination/],
    // Starts inside the aperture, but the last row runs past it: the full extent is audited.
    ["blit whose last row leaves the aperture", colorBlt(AP.base, 4096, 0, 0, 16, 257, 0), /outside/],
    ["blit straddling aperture and hidden", colorBlt(AP.base + AP.size - 64, 4096, 0, 0, 16, 2, 0), /outside/],
    ["oversized blit", colorBlt(HI.base, 0x7ff0, 0, 0, 0x1ff0, 0x2000, 0), /exceeds the 36 MiB operation limit/],
    ["negative pitch", colorBlt(HI.base, 0x8000, 0, 0, 1, 1, 0), /pitch 0x8000 is negative/],
    ["copy from another vGPU", srcCopy(AP.base, 0x8000, 16, 16, 64), /XY_SRC_COPY_BLT source/],
    ["LRI to a ring register", [miLoadRegisterImm(1), 0x2038, 0], /MI_LOAD_REGISTER_IMM to register 0x2038/],
    ["LRI to the GTT / interrupt block", [miLoadRegisterImm(2), 0x20c0, 0, 0x44200, 0], /0x44200 is not allowed/],
    ["LRI with bits outside the offset field", [miLoadRegisterImm(1), 0x800020c0, 0], /not allowed/],
    ["unknown opcode", [miInstr(0x3f, 0)], /unknown command 0x1f800000/],
    ["unknown client", [0xe000_0000], /unknown command/],
    ["command past TAIL", [MI_STORE_DWORD_IMM_GEN4 | MI_USE_GGTT, AP.base], /remain before TAIL/],
    ["batch in the host's range", batchStart(0x2000), /batch buffer at 0x2000 runs to 0x2000, outside/],
    ["batch through PPGTT", [(MI_BATCH_BUFFER_START_GEN8 | MI_BATCH_PPGTT) >>> 0, HI.base, 0], /PPGTT/],
  ];
  for (const [name, dwords, re] of cases) {
    it(name, () => {
      const { scan, shadows } = setup();
      rejected(scan(dwords), re);
      assert.ok(shadows.every((s) => s.freed));
    });
  }

  it("a batch that stores outside the partition: rejected, its shadow freed", () => {
    const { scan, mem, shadows } = setup();
    mem.put(HI.base, [...storeDword(AP.base, 1), MI_BATCH_BUFFER_END]);
    mem.put(HI.base + 0x1000, [...storeDword(0x10, 1), MI_BATCH_BUFFER_END]);
    rejected(scan([...batchStart(HI.base), MI_NOOP, ...batchStart(HI.base + 0x1000), MI_NOOP]), /batch at 0x1001000/);
    assert.equal(shadows.length, 1, "the first batch was shadowed");
    assert.ok(shadows[0]!.freed, "and freed when the second was rejected");
  });

  it("nested batch buffers, batches without an end, unbacked batch pages, and no shadow memory are rejected", () => {
    const { scan, mem } = setup();
    mem.put(HI.base, [...batchStart(HI.base + 0x100), MI_BATCH_BUFFER_END]);
    rejected(scan(batchStart(HI.base)), /nested batch buffers/);
    // A batch of MI_NOOPs running to the end of the hidden partition.
    for (let p = 0; p < 4; p++) mem.put(HI.base + HI.size - 4 * PAGE_SIZE + p * PAGE_SIZE, [MI_NOOP]);
    rejected(
      scan(batchStart(HI.base + HI.size - 4 * PAGE_SIZE)),
      /runs to 0x5000000, outside .* without MI_BATCH_BUFFER_END/,
    );
    rejected(scan(batchStart(HI.base + 0x10_0000)), /not backed by guest memory/);
    mem.put(HI.base + 0x20_0000, [MI_BATCH_BUFFER_END]);
    const noShadow = setup({ shadowFails: true });
    noShadow.mem.put(HI.base, [MI_BATCH_BUFFER_END]);
    rejected(noShadow.scan(batchStart(HI.base)), /no host graphics memory for a 4-byte shadow batch buffer/);
  });

  it("property: an accepted store or blit only touches the partition", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 27 }),
        fc.integer({ min: 0, max: 0x7fff }),
        fc.integer({ min: 0, max: 300 }),
        fc.integer({ min: 0, max: 300 }),
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 1, max: 300 }),
        (dst, pitch, x1, y1, w, h) => {
          const { scan } = setup();
          const r = scan(colorBlt(dst, pitch, x1, y1, x1 + w, y1 + h, 0));
          const start = dst + y1 * pitch + x1 * 4;
          const end = dst + (y1 + h - 1) * pitch + (x1 + w) * 4;
          const inside =
            end - start <= MAX_OP_SIZE &&
            ((start >= AP.base && end <= AP.base + AP.size) || (start >= HI.base && end <= HI.base + HI.size));
          assert.equal(r.ok, inside);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("command scanner: a guest context (execlists)", () => {
  /** A PPGTT whose pages 0x7000_0000.. are the FakeMemory pages at AP.base..; everything else is not mapped. */
  function ctxSetup(engine: "rcs" | "bcs" | "vcs" | "vecs" = "rcs") {
    const s = setup();
    const ppgtt = {
      read: (gma: number, dst: Uint8Array) => {
        if (gma < 0x7000_0000 || gma + dst.length > 0x7000_0000 + AP.size) return gma;
        return s.mem.readGm(gma - 0x7000_0000 + AP.base, dst);
      },
    };
    const scan = (dwords: readonly number[]) =>
      s.scanner.scan(engine, Uint32Array.from(dwords), 0, { kind: "context", engine, ppgtt });
    return { ...s, scan };
  }

  it("passes what i915 emits: flushes with store-index, ARB, GGTT breadcrumbs, PPGTT stores, 3D state", () => {
    const { scan } = ctxSetup();
    const r = scan([
      ...arbOnOff(false),
      ...pipeControl(PIPE_CONTROL_CS_STALL | PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_STORE_DATA_INDEX, 0xd0),
      ...flushDw({ post: "store", target: { kind: "index", offset: 0xd0 }, invalidateTlb: true }),
      ...flushDw({ post: "store", target: { kind: "ggtt", address: AP.base + 0x100 }, value: 7 }),
      ...pipeControl(PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_GLOBAL_GTT_IVB, AP.base + 0x108, 7),
      ...storeDword(AP.base + 0x200, 1),
      ...storeDataImm(0x1234_5678_0000, 1, "ppgtt"),
      ...pipelineSelect(0),
      ...gfxState(3, 0, 0x10, 5),
      MI_ARB_CHECK,
      MI_USER_INTERRUPT,
      ...arbOnOff(true),
    ]);
    assert.ok(r.ok, r.ok ? "" : r.reason);
    assert.equal(r.userInterrupts, 1);
    assert.ok(!r.commands.includes(MI_USER_INTERRUPT), "MI_USER_INTERRUPT patched to MI_NOOP (raised at completion)");
  });

  it("audits GGTT post-sync targets and rejects what GVT-g rejects", () => {
    const { scan } = ctxSetup();
    rejected(scan(flushDw({ post: "store", target: { kind: "ggtt", address: 0x1000 } })), /MI_FLUSH_DW post-sync/);
    rejected(scan(pipeControl(PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_GLOBAL_GTT_IVB, 0x1000)), /PIPE_CONTROL post-sync/);
    rejected(scan(storeDword(0x1000, 1)), /outside the vGPU's graphics memory/);
    rejected(scan(semaphoreWait(0, 1, 0, "ppgtt")), /MI_SEMAPHORE_WAIT is not allowed/);
    rejected(scan(pipeControl(1 << 23, 0x2000)), /MMIO write/);
    rejected(scan([...loadRegisterImm([[0x2080, 0]])]), /MI_LOAD_REGISTER_IMM to register 0x2080 is not allowed/);
    assert.ok(scan(loadRegisterImm([[0xe4f0, 0x1_0001]])).ok, "a context workaround register i915 loads");
  });

  it("shadows a PPGTT batch read through the context's PPGTT and re-points it into the GGTT", () => {
    const { mem, shadows, scan } = ctxSetup();
    mem.put(AP.base + 0x3000, [...storeDataImm(0x9000_0000, 5, "ppgtt"), MI_USER_INTERRUPT, MI_BATCH_BUFFER_END]);
    const r = scan(batchBufferStart(0x7000_3000, "ppgtt"));
    assert.ok(r.ok, r.ok ? "" : r.reason);
    assert.equal(shadows.length, 1);
    assert.equal(r.commands[0]! & MI_BATCH_PPGTT, 0, "the shadow copy is a GGTT batch");
    assert.equal(r.commands[1], shadows[0]!.gma);
    assert.equal(shadows[0]!.u32(4), MI_NOOP, "the batch's MI_USER_INTERRUPT patched too");
    assert.equal(r.userInterrupts, 1);
    rejected(
      scan(batchBufferStart(0x8000_0000, "ppgtt")),
      /PPGTT address 0x80000000 is not backed by guest memory \(not present in the context.s PPGTT\)/,
    );
    mem.put(AP.base + 0x4000, [...storeDword(0x1000, 1), MI_BATCH_BUFFER_END]);
    rejected(scan(batchBufferStart(0x7000_4000, "ppgtt")), /batch at 0x70004000 .* outside/);
  });

  it("on the video engines only MI commands", () => {
    for (const engine of ["vcs", "vecs"] as const) {
      const { scan } = ctxSetup(engine);
      assert.ok(scan(flushDw({ post: "store", target: { kind: "index", offset: 0xd0 } })).ok);
      rejected(scan(pipeControl(0)), /executes MI commands only/);
      rejected(scan(colorBlt(AP.base, 64, 0, 0, 1, 1, 0)), /executes MI commands only/);
    }
  });

  it("the legacy ring path is unchanged: no PPGTT, no flushes, no arbitration", () => {
    const { scan } = setup();
    rejected(scan(storeDataImm(AP.base, 1, "ppgtt")), /PPGTT addressing/);
    rejected(scan(flushDw()), /no audit rule/);
    rejected(scan([MI_ARB_CHECK]), /no audit rule/);
  });
});
