import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type Hpa, KernelError, TraceRecorder, VirtualClock } from "../core/index.ts";
import {
  type Bdf,
  DmaDirection,
  Host,
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_MSI,
  PCI_CLASS_PROG,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  parseBdf,
} from "../host/index.ts";
import { colorBlt, loadRegisterImm, srcCopyBlt, storeDataImm } from "./commands.ts";
import { DEFAULT_COST } from "./cost.ts";
import { DEFAULT_APERTURE_SIZE, GpuDevice, MiB } from "./gpu.ts";
import {
  BR13_32BPP,
  ENGINE_BASE,
  type EngineId,
  FENCE_REG_GEN6_LO,
  GEN6_GDRST,
  GEN6_GRDOM_BLT,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_GT_ISR0,
  GEN8_GT_RCS_IRQ,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GPU_DEVICE_ID,
  GPU_VENDOR_ID,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_RENDER_USER_INTERRUPT,
  GTT_OFFSET,
  gen8PteEncode,
  I915_ERROR_INSTRUCTION,
  I915_ERROR_PAGE_TABLE,
  MI_BATCH_BUFFER_END,
  MI_BATCH_BUFFER_START_GEN8,
  MI_BATCH_PPGTT,
  MI_NOOP,
  MI_STORE_DWORD_IMM_GEN4,
  MI_STORE_QWORD_IMM_GEN8,
  MI_USE_GGTT,
  MI_USER_INTERRUPT,
  miLoadRegisterImm,
  RING_ACTHD,
  RING_CTL,
  RING_EIR,
  RING_HEAD,
  RING_START,
  RING_TAIL,
  RING_VALID,
  XY_COLOR_BLT_DWORDS,
} from "./regs.ts";
import { BCS_DST_Y, BCS_SRC_Y, type Tiling, tiledOffset } from "./tiling.ts";

const BDF: Bdf = parseBdf("0000:00:02.0");
const PAGE = 4096;
/** GMA of the test ring (4 pages) and where test data lives. */
const RING_GMA = 0;
const RING_PAGES = 4;
const DATA_GMA = 0x10_0000;

/**
 * A host with the GPU on its bus and a stub driver: GM pages are backed on demand by single frames mapped with
 * dma_map_page (so consecutive pages have non-consecutive IOVAs), or by one coherent buffer (consecutive IOVAs).
 */
function rig(opts: { ats?: boolean; iommu?: boolean; apertureSize?: number } = {}) {
  const clock = new VirtualClock();
  const host = new Host({ memoryBytes: 1024 * MiB, clock, iommu: { enabled: opts.iommu ?? true } });
  const rec = new TraceRecorder(host.tracer);
  const gpu = new GpuDevice({
    bdf: BDF,
    bus: host.pci,
    dma: host.deviceDma(BDF),
    tracer: host.tracer,
    clock,
    ...(opts.apertureSize !== undefined ? { apertureSize: opts.apertureSize } : {}),
  });
  host.addPciDevice(gpu, { ats: opts.ats ?? false });
  const msis: number[] = [];
  const intx: boolean[] = [];
  host.pci.bind(BDF, "gpu-test", { msi: (v) => msis.push(v), intx: (l) => intx.push(l) });
  gpu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  const dma = host.dmaApi(BDF);
  /** GMA page -> host frame, for checking memory behind the GPU's back. */
  const frames = new Map<number, number>();
  const gttWrite = (index: number, pte: number) => gpu.barWrite(0, GTT_OFFSET + index * 8, 8, pte);

  /** Backs [gma, gma+bytes) with one frame per page, each mapped separately. */
  function back(gma: number, bytes: number): void {
    for (let p = gma / PAGE; p < (gma + bytes) / PAGE; p++) {
      const pfn = host.physmem.allocFrame();
      const iova = dma.mapPage(pfn, 0, PAGE, DmaDirection.BIDIRECTIONAL);
      gttWrite(p, gen8PteEncode(iova));
      frames.set(p, pfn);
    }
  }
  /** Backs [gma, gma+bytes) with one coherent buffer (contiguous IOVAs and frames). */
  function backContiguous(gma: number, bytes: number): void {
    const buf = dma.allocCoherent(bytes);
    for (let i = 0; i < bytes / PAGE; i++) {
      gttWrite(gma / PAGE + i, gen8PteEncode(buf.dmaAddr + i * PAGE));
      frames.set(gma / PAGE + i, buf.pfn + i);
    }
  }
  function hpaOf(gma: number): Hpa {
    const f = frames.get(Math.floor(gma / PAGE));
    assert.ok(f !== undefined, `GMA ${gma.toString(16)} is not backed`);
    return (f * PAGE + (gma % PAGE)) as Hpa;
  }
  function memWrite(gma: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; ) {
      const n = Math.min(data.length - i, PAGE - ((gma + i) % PAGE));
      host.physmem.write(hpaOf(gma + i), data, i, n);
      i += n;
    }
  }
  function memRead(gma: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    for (let i = 0; i < len; ) {
      const n = Math.min(len - i, PAGE - ((gma + i) % PAGE));
      host.physmem.read(hpaOf(gma + i), out, i, n);
      i += n;
    }
    return out;
  }
  const u32 = (gma: number) => host.physmem.readU32(hpaOf(gma));
  const reg = (off: number) => gpu.barRead(0, off, 4);
  const setReg = (off: number, v: number) => gpu.barWrite(0, off, 4, v);

  // Each engine gets a 4-page ring: rcs at GMA 0, bcs at GMA 0x8000.
  const ringGma = (e: EngineId) => (e === "rcs" ? RING_GMA : RING_GMA + 0x8000);
  const tails: Record<EngineId, number> = { rcs: 0, bcs: 0 };
  for (const e of ["rcs", "bcs"] as const) {
    back(ringGma(e), RING_PAGES * PAGE);
    setReg(ENGINE_BASE[e] + RING_START, ringGma(e));
    setReg(ENGINE_BASE[e] + RING_CTL, ((RING_PAGES - 1) << 12) | RING_VALID);
  }
  /** Appends dwords to an engine's ring (wrapping) and writes TAIL. */
  function submit(e: EngineId, dwords: readonly number[], opts2: { tail?: boolean } = {}): void {
    const len = RING_PAGES * PAGE;
    const words = dwords.length % 2 === 1 ? [...dwords, MI_NOOP] : [...dwords];
    for (const w of words) {
      const b = new Uint8Array(new Uint32Array([w >>> 0]).buffer);
      memWrite(ringGma(e) + tails[e], b);
      tails[e] = (tails[e] + 4) % len;
    }
    if (opts2.tail !== false) setReg(ENGINE_BASE[e] + RING_TAIL, tails[e]);
  }
  function enableIrqs(): void {
    const on = GT_RENDER_USER_INTERRUPT | GT_CS_MASTER_ERROR_INTERRUPT;
    const bits = (on | (on << 16)) >>> 0;
    setReg(GEN8_GT_IER0, bits);
    setReg(GEN8_GT_IMR0, ~bits >>> 0);
    const c = gpu.config.findCapability(PCI_CAP_ID_MSI);
    gpu.config.write(c + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE);
    setReg(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
  }
  back(DATA_GMA, 64 * PAGE);
  return {
    host,
    clock,
    gpu,
    rec,
    msis,
    intx,
    dma,
    back,
    backContiguous,
    memWrite,
    memRead,
    u32,
    reg,
    setReg,
    submit,
    enableIrqs,
    gttWrite,
    tails,
    frames,
  };
}

const store = storeDataImm;
const copyBlt = srcCopyBlt;

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

describe("GPU PCI identity and BARs", () => {
  it("reports 8086:1912, VGA class, MSI, and sizes BAR0 at 16 MiB and BAR2 at the aperture size", () => {
    const { gpu } = rig();
    assert.equal(gpu.config.read(0, 2), GPU_VENDOR_ID);
    assert.equal(gpu.config.read(2, 2), GPU_DEVICE_ID);
    assert.equal(gpu.config.read(PCI_CLASS_PROG + 1, 2) * 256 + gpu.config.read(PCI_CLASS_PROG, 1), 0x030000);
    assert.notEqual(gpu.config.findCapability(PCI_CAP_ID_MSI), 0);
    const size = (bar: number) => {
      gpu.config.write(PCI_BASE_ADDRESS_0 + bar * 4, 4, 0xffffffff);
      gpu.config.write(PCI_BASE_ADDRESS_0 + bar * 4 + 4, 4, 0xffffffff);
      const lo = gpu.config.read(PCI_BASE_ADDRESS_0 + bar * 4, 4);
      const hi = gpu.config.read(PCI_BASE_ADDRESS_0 + bar * 4 + 4, 4);
      return 2 ** 64 - (hi * 2 ** 32 + ((lo & ~0xf) >>> 0));
    };
    assert.equal(gpu.config.read(PCI_BASE_ADDRESS_0, 4) & 0x6, 0x4, "BAR0 is 64-bit");
    assert.equal(size(0), 16 * MiB);
    assert.equal(size(2), DEFAULT_APERTURE_SIZE);
    assert.equal("barFrames" in gpu, false, "no BAR can be mmapped");
  });

  it("takes the aperture size as a setting and rejects sizes that are not a power of two in [128 MiB, 2 GiB]", () => {
    const { gpu } = rig({ apertureSize: 256 * MiB });
    assert.equal(gpu.apertureSize, 256 * MiB);
    assert.throws(
      () => rig({ apertureSize: 100 * MiB }),
      (e: unknown) => e instanceof KernelError && /power of two/.test(e.message),
    );
    assert.throws(() => rig({ apertureSize: 64 * MiB }), KernelError);
  });
});

describe("GGTT through the BAR0 window", () => {
  it("8-byte writes set whole entries, 4-byte writes update one half at once", () => {
    const { gpu, rec } = rig();
    const at = GTT_OFFSET + 100 * 8;
    gpu.barWrite(0, at, 8, 0x1_2345_6789_a001);
    assert.equal(gpu.barRead(0, at, 8), 0x1_2345_6789_a001);
    assert.equal(gpu.barRead(0, at, 4), 0x6789_a001);
    assert.equal(gpu.barRead(0, at + 4, 4), 0x1_2345);
    gpu.barWrite(0, at, 4, 0xdead_b001);
    assert.equal(gpu.barRead(0, at, 8), 0x1_2345_dead_b001, "low half replaced, high half kept");
    gpu.barWrite(0, at + 4, 4, 0x7);
    assert.equal(gpu.barRead(0, at, 8), 0x7_dead_b001, "high half replaced, low half kept");
    gpu.barWrite(0, at + 4, 4, 0xfff0_0001);
    assert.equal(gpu.barRead(0, at + 4, 4), 0x1, "bits 52..63 are not implemented");
    assert.equal(gpu.ggtt.pageDma(100), 0x1_dead_b000);
    assert.ok(rec.count("gpu.gtt.write") >= 4);
    gpu.barWrite(0, at + 2, 2, 0xffff);
    assert.equal(gpu.barRead(0, at, 8), 0x1_dead_b001, "2-byte accesses are ignored");
  });

  it("an entry without the present bit is not present", () => {
    const { gpu } = rig();
    gpu.barWrite(0, GTT_OFFSET + 8, 8, 0x5000);
    assert.equal(gpu.ggtt.pageDma(1), -1);
    gpu.barWrite(0, GTT_OFFSET + 8, 8, 0x5001);
    assert.equal(gpu.ggtt.pageDma(1), 0x5000);
  });
});

describe("aperture (BAR2)", () => {
  it("an access at offset X goes through GGTT entry X >> 12 and the IOMMU to the mapped frame", () => {
    const r = rig();
    r.gpu.barWrite(2, DATA_GMA + 0x10, 4, 0xcafe_f00d);
    assert.equal(r.u32(DATA_GMA + 0x10), 0xcafe_f00d);
    assert.equal(r.gpu.barRead(2, DATA_GMA + 0x10, 4), 0xcafe_f00d);
    assert.equal(r.gpu.barRead(2, DATA_GMA + 0x11, 1), 0xf0);
    assert.equal(r.gpu.barRead(2, DATA_GMA + 0x12, 2), 0xcafe);
    // 8 bytes across a page boundary: two GGTT entries, two frames.
    r.gpu.barWrite(2, DATA_GMA + PAGE - 4, 8, 0x12_3344_5566_7788);
    assert.equal(r.u32(DATA_GMA + PAGE - 4), 0x5566_7788);
    assert.equal(r.u32(DATA_GMA + PAGE), 0x12_3344);
    assert.equal(r.gpu.barRead(2, DATA_GMA + PAGE - 4, 8), 0x12_3344_5566_7788);
    const bulk = pattern(3 * PAGE, 9);
    assert.equal(r.gpu.writeAperture(DATA_GMA + 100, bulk), true);
    assert.deepEqual(r.memRead(DATA_GMA + 100, bulk.length), bulk);
    const back = new Uint8Array(bulk.length);
    assert.equal(r.gpu.readAperture(DATA_GMA + 100, back), true);
    assert.deepEqual(back, bulk);
    assert.throws(() => r.gpu.readAperture(DEFAULT_APERTURE_SIZE - 4, new Uint8Array(8)), KernelError);
  });

  it("a not-present entry reads zeros and drops writes; an unmapped IOVA is an IOMMU fault; both are counted", () => {
    const r = rig();
    const gma = 0x200_0000;
    assert.equal(r.gpu.barRead(2, gma, 4), 0);
    r.gpu.barWrite(2, gma, 4, 1);
    assert.equal(r.gpu.memory.gttFaults, 2);
    r.gttWrite(gma / PAGE, gen8PteEncode(0x7777_0000)); // present, but nothing is mapped at that IOVA
    const before = r.host.iommu.stats().faults;
    assert.equal(r.gpu.barRead(2, gma + 8, 4), 0);
    assert.equal(r.gpu.memory.iommuFaults, 1);
    assert.equal(r.host.iommu.stats().faults, before + 1);
    assert.equal(r.host.iommu.lastFault()?.iova, 0x7777_0008);
    assert.equal(r.rec.named("gpu.fault").at(-1)?.fields.kind, "iommu");
  });
});

describe("engine commands", () => {
  it("MI_STORE_DATA_IMM stores a dword and a qword through the GGTT", () => {
    const r = rig();
    r.submit("rcs", [
      ...store(DATA_GMA + 8, 0xabcd_1234),
      MI_STORE_QWORD_IMM_GEN8 | MI_USE_GGTT,
      DATA_GMA + 16,
      0,
      0x1111_2222,
      0x3333_4444,
    ]);
    assert.equal(r.u32(DATA_GMA + 8), 0xabcd_1234);
    assert.equal(r.u32(DATA_GMA + 16), 0x1111_2222);
    assert.equal(r.u32(DATA_GMA + 20), 0x3333_4444);
    const e = r.gpu.rcs;
    assert.equal(e.head, r.tails.rcs, "HEAD caught up with TAIL");
    assert.equal(e.last.commands, 3, "two stores and the padding MI_NOOP");
    assert.equal(r.reg(ENGINE_BASE.rcs + RING_ACTHD), RING_GMA + e.head);
  });

  it("MI_LOAD_REGISTER_IMM writes the GPU's own registers", () => {
    const r = rig();
    r.submit("bcs", [
      miLoadRegisterImm(2),
      FENCE_REG_GEN6_LO + 8 * 5,
      0x1234_5000,
      FENCE_REG_GEN6_LO + 8 * 5 + 4,
      0x0000_0abc,
    ]);
    assert.equal(r.reg(FENCE_REG_GEN6_LO + 40), 0x1234_5000);
    assert.equal(r.gpu.fence(5), 0xabc_1234_5000);
    assert.equal(r.gpu.barRead(0, FENCE_REG_GEN6_LO + 40, 8), 0xabc_1234_5000);
  });

  it("MI_BATCH_BUFFER_START runs a batch to its MI_BATCH_BUFFER_END, then the ring continues", () => {
    const r = rig();
    const batch = DATA_GMA + 8 * PAGE;
    const words = [...store(DATA_GMA, 1), ...store(DATA_GMA + 4, 2), MI_BATCH_BUFFER_END, ...store(DATA_GMA + 8, 99)];
    r.memWrite(batch, new Uint8Array(new Uint32Array(words).buffer));
    r.submit("rcs", [MI_BATCH_BUFFER_START_GEN8, batch, 0, ...store(DATA_GMA + 12, 3)]);
    assert.deepEqual([r.u32(DATA_GMA), r.u32(DATA_GMA + 4), r.u32(DATA_GMA + 8), r.u32(DATA_GMA + 12)], [1, 2, 0, 3]);
    // BBS, two stores, BBE, the ring's store and its padding MI_NOOP; the batch's store after BBE never ran.
    assert.equal(r.gpu.rcs.last.commands, 6);
    assert.equal(r.gpu.rcs.halted, false);
  });

  it("XY_COLOR_BLT fills exactly the rectangle of a pitched surface, uniform and multi-byte colours", () => {
    const r = rig();
    const pitch = 1024; // 256 px per row, 24 rows = 6 pages
    const surf = DATA_GMA;
    r.memWrite(surf, new Uint8Array(24 * pitch).fill(0xee));
    r.submit("bcs", [...colorBlt(surf, pitch, 10, 2, 250, 20, 0x8040_2010), ...colorBlt(surf, pitch, 0, 21, 3, 23, 0)]);
    const got = new Uint32Array(r.memRead(surf, 24 * pitch).buffer);
    for (let y = 0; y < 24; y++) {
      for (let x = 0; x < 256; x++) {
        const want =
          x >= 10 && x < 250 && y >= 2 && y < 20 ? 0x8040_2010 : x < 3 && y >= 21 && y < 23 ? 0 : 0xeeee_eeee;
        if (got[y * 256 + x] !== want) assert.fail(`pixel (${x}, ${y}) = ${got[y * 256 + x]!.toString(16)}`);
      }
    }
    assert.equal(r.gpu.blitter.bytesFilled, 240 * 18 * 4 + 3 * 2 * 4);
    assert.equal(r.rec.count("gpu.blit"), 2);
  });

  it("XY_COLOR_BLT at any byte alignment and pitch matches a reference fill (property)", () => {
    const r = rig();
    const area = 16 * PAGE;
    fc.assert(
      fc.property(
        fc.record({
          offset: fc.integer({ min: 0, max: 4095 }),
          pitch: fc.integer({ min: 4, max: 9000 }),
          x1: fc.integer({ min: 0, max: 300 }),
          w: fc.integer({ min: 0, max: 2000 }),
          y1: fc.integer({ min: 0, max: 3 }),
          h: fc.integer({ min: 0, max: 6 }),
          color: fc.integer({ min: 0, max: 0xffffffff }),
        }),
        (c) => {
          const w = Math.min(c.w, Math.max(0, Math.floor(c.pitch / 4) - c.x1));
          if (c.offset + (c.y1 + c.h) * c.pitch > area) return;
          const before = pattern(area, c.offset + 1);
          r.memWrite(DATA_GMA, before);
          r.submit("bcs", colorBlt(DATA_GMA + c.offset, c.pitch, c.x1, c.y1, c.x1 + w, c.y1 + c.h, c.color));
          const want = before.slice();
          const px = new Uint8Array(new Uint32Array([c.color]).buffer);
          for (let y = c.y1; y < c.y1 + c.h; y++) {
            for (let x = c.x1; x < c.x1 + w; x++) want.set(px, c.offset + y * c.pitch + x * 4);
          }
          assert.deepEqual(r.memRead(DATA_GMA, area), want);
        },
      ),
      { numRuns: 40 },
    );
  });

  it("XY_SRC_COPY_BLT writes and reads X- and Y-tiled surfaces (Y through BCS_SWCTRL), pitch in dwords", () => {
    const r = rig();
    const pitch = 2048; // 4 X tiles or 16 Y tiles across
    const rows = 32; // one row of Y tiles, four of X tiles
    const bytes = pitch * rows; // 16 pages
    const lin = DATA_GMA;
    const til = DATA_GMA + 16 * PAGE;
    const back = DATA_GMA + 32 * PAGE;
    const data = pattern(bytes, 99);
    const TILED_DST = 1 << 11;
    const TILED_SRC = 1 << 15;
    const swctrl = (bits: number) => loadRegisterImm([[0x22200, (((BCS_SRC_Y | BCS_DST_Y) << 16) | bits) >>> 0]]);
    for (const t of ["x", "y"] as const satisfies readonly Tiling[]) {
      r.memWrite(lin, data);
      r.memWrite(til, new Uint8Array(bytes));
      r.memWrite(back, new Uint8Array(bytes));
      const toTiled = srcCopyBlt(til, pitch / 4, 0, 0, pitch / 4, rows, lin, pitch, 0, 0);
      toTiled[0] = (toTiled[0]! | TILED_DST) >>> 0;
      const toLinear = srcCopyBlt(back, pitch, 0, 0, pitch / 4, rows, til, pitch / 4, 0, 0);
      toLinear[0] = (toLinear[0]! | TILED_SRC) >>> 0;
      r.submit("bcs", [...swctrl(t === "y" ? BCS_DST_Y : 0), ...toTiled]);
      assert.equal(r.gpu.bcs.eir, 0, r.gpu.bcs.last.error);
      const got = r.memRead(til, bytes);
      for (const [xb, y] of [
        [0, 0],
        [5, 1],
        [600, 3],
        [130, 31],
        [2047, 17],
      ] as const) {
        assert.equal(got[tiledOffset(t, pitch, xb, y)], data[y * pitch + xb], `${t}: byte (${xb}, ${y})`);
      }
      r.submit("bcs", [...swctrl(t === "y" ? BCS_SRC_Y : 0), ...toLinear, ...swctrl(0)]);
      assert.deepEqual(r.memRead(back, bytes), data, `${t}: tiled and back is the identity`);
      assert.equal(r.gpu.bcs.readRegister(0x200), 0, "BCS_SWCTRL cleared by the masked write");
    }
    // A tiled XY_COLOR_BLT fills the pixels the layout says.
    r.memWrite(til, new Uint8Array(bytes));
    const fill = colorBlt(til, pitch / 4, 128, 8, 129, 9, 0x11223344);
    fill[0] = (fill[0]! | TILED_DST) >>> 0;
    r.submit("bcs", fill);
    assert.equal(r.u32(til + tiledOffset("x", pitch, 512, 8)), 0x11223344);
    assert.equal(r.u32(til + 8 * pitch + 512), 0, "not where a linear surface would have it");
  });

  it("XY_SRC_COPY_BLT copies a rectangle between surfaces of different pitches (property, against a reference)", () => {
    const r = rig();
    const src = DATA_GMA;
    const dst = DATA_GMA + 32 * PAGE;
    fc.assert(
      fc.property(
        fc.record({
          sPitch: fc.integer({ min: 1, max: 64 }).map((p) => p * 16),
          dPitch: fc.integer({ min: 1, max: 64 }).map((p) => p * 16),
          w: fc.integer({ min: 0, max: 64 }),
          h: fc.integer({ min: 0, max: 24 }),
          x1: fc.integer({ min: 0, max: 64 }),
          y1: fc.integer({ min: 0, max: 8 }),
          sx: fc.integer({ min: 0, max: 64 }),
          sy: fc.integer({ min: 0, max: 8 }),
          seed: fc.integer({ min: 1, max: 1000 }),
        }),
        (c) => {
          const w = Math.min(c.w, Math.floor(c.dPitch / 4) - 0, Math.floor(c.sPitch / 4));
          const area = 32 * PAGE;
          if ((c.y1 + c.h) * c.dPitch + c.dPitch > area || (c.sy + c.h) * c.sPitch + c.sPitch > area) return;
          const x1 = Math.min(c.x1, c.dPitch / 4 - w);
          const sx = Math.min(c.sx, c.sPitch / 4 - w);
          const s = pattern(area, c.seed);
          const d0 = pattern(area, c.seed + 7);
          r.memWrite(src, s);
          r.memWrite(dst, d0);
          r.submit("bcs", copyBlt(dst, c.dPitch, x1, c.y1, x1 + w, c.y1 + c.h, src, c.sPitch, sx, c.sy));
          const want = d0.slice();
          for (let y = 0; y < c.h; y++) {
            const so = (c.sy + y) * c.sPitch + sx * 4;
            want.set(s.subarray(so, so + w * 4), (c.y1 + y) * c.dPitch + x1 * 4);
          }
          assert.deepEqual(r.memRead(dst, area), want);
          assert.equal(r.gpu.bcs.halted, false);
        },
      ),
      { numRuns: 40 },
    );
  });

  it("a linear copy over DMA-contiguous pages gives the same bytes as over scattered ones", () => {
    const r = rig();
    const a = 0x40_0000;
    const b = 0x60_0000;
    r.backContiguous(a, 16 * PAGE);
    r.backContiguous(b, 16 * PAGE);
    const data = pattern(16 * PAGE, 3);
    r.memWrite(a + 0, data);
    // 16 pages, pitch = width: one linear run; then scattered destination (DATA_GMA pages are separate mappings).
    r.submit("bcs", copyBlt(b, 4096, 0, 0, 1024, 16, a, 4096, 0, 0));
    assert.deepEqual(r.memRead(b, 16 * PAGE), data);
    r.submit("bcs", copyBlt(DATA_GMA, 4096, 0, 0, 1024, 16, a, 4096, 0, 0));
    assert.deepEqual(r.memRead(DATA_GMA, 16 * PAGE), data);
    // A multi-byte fill longer than the pattern buffer over DMA-contiguous pages, from an odd byte address.
    r.submit("bcs", colorBlt(a + 1, 4 * 16000, 0, 0, 16000, 1, 0x44332211));
    const filled = r.memRead(a + 1, 64000);
    for (let i = 0; i < 64000; i += 997) assert.equal(filled[i], [0x11, 0x22, 0x33, 0x44][i % 4]);
    r.memWrite(a, data.subarray(0, 16 * PAGE));
    // Misaligned source and destination offsets across page boundaries.
    r.submit("bcs", copyBlt(b + 100, 4000, 0, 0, 1000, 10, a + 36, 4000, 0, 0));
    assert.deepEqual(r.memRead(b + 100, 40000), data.subarray(36, 36 + 40000));
  });

  it("MI_USER_INTERRUPT and the cost model's busy time", () => {
    const r = rig();
    r.enableIrqs();
    r.submit("bcs", [...colorBlt(DATA_GMA, 4096, 0, 0, 1024, 4, 0x01010101), MI_USER_INTERRUPT]);
    const c = DEFAULT_COST;
    const want = Math.ceil(2 * c.commandNs + c.blitSetupNs + (4 * PAGE) / c.fillBytesPerNs + c.interruptNs);
    assert.equal(r.gpu.bcs.last.busyNs, want);
    assert.equal(r.gpu.bcs.busyUntil, want, "the run starts at clock 0");
    r.submit("bcs", [MI_NOOP, MI_NOOP]);
    assert.equal(r.gpu.bcs.busyUntil, want + 2 * c.commandNs, "a run starts when the engine's previous work ends");
    r.clock.advance(10_000);
    r.submit("bcs", [MI_NOOP, MI_NOOP]);
    assert.equal(r.gpu.bcs.busyUntil, 10_000 + 2 * c.commandNs);
    assert.equal(r.msis.length, 1);
  });

  it("the ring wraps, and a command cut by TAIL waits for the rest", () => {
    const r = rig();
    const len = RING_PAGES * PAGE;
    // Move HEAD/TAIL near the end of the ring.
    r.tails.rcs = len - 8;
    r.setReg(ENGINE_BASE.rcs + RING_HEAD, len - 8);
    r.setReg(ENGINE_BASE.rcs + RING_TAIL, len - 8);
    const cmd = store(DATA_GMA, 0x5a5a);
    r.submit("rcs", cmd.slice(0, 2));
    assert.equal(r.u32(DATA_GMA), 0, "half a command: nothing executed");
    assert.equal(r.gpu.rcs.head, len - 8, "HEAD waits at the cut command");
    r.submit("rcs", cmd.slice(2));
    assert.equal(r.u32(DATA_GMA), 0x5a5a);
    assert.equal(r.gpu.rcs.head, 8, "HEAD wrapped past the end of the ring");
  });
});

describe("engine errors and faults", () => {
  it("an unknown command halts the engine with I915_ERROR_INSTRUCTION, HEAD at it, and a CS error interrupt", () => {
    const r = rig();
    r.enableIrqs();
    r.submit("rcs", [...store(DATA_GMA, 1), 0x1f80_0000, ...store(DATA_GMA + 4, 2)]);
    const e = r.gpu.rcs;
    assert.equal(r.u32(DATA_GMA), 1);
    assert.equal(r.u32(DATA_GMA + 4), 0);
    assert.equal(r.reg(ENGINE_BASE.rcs + RING_EIR), I915_ERROR_INSTRUCTION);
    assert.equal(e.head, 16, "HEAD stays at the unknown command");
    assert.equal(r.reg(ENGINE_BASE.rcs + RING_ACTHD), RING_GMA + 16);
    assert.match(e.last.error ?? "", /unknown command 0x1f800000/);
    assert.equal(r.reg(GEN8_GT_IIR0) & GT_CS_MASTER_ERROR_INTERRUPT, GT_CS_MASTER_ERROR_INTERRUPT);
    // Halted: a TAIL write does nothing until RING_EIR is cleared.
    r.setReg(ENGINE_BASE.rcs + RING_TAIL, r.tails.rcs);
    assert.equal(e.head, 16);
    r.setReg(ENGINE_BASE.rcs + RING_EIR, I915_ERROR_INSTRUCTION);
    r.setReg(ENGINE_BASE.rcs + RING_HEAD, 20); // skip the bad dword
    r.setReg(ENGINE_BASE.rcs + RING_TAIL, r.tails.rcs);
    assert.equal(r.u32(DATA_GMA + 4), 2);
  });

  it("rejects nested batches, PPGTT batches, PPGTT stores and malformed blits", () => {
    const cases: [string, number[], RegExp][] = [
      ["ppgtt batch", [MI_BATCH_BUFFER_START_GEN8 | MI_BATCH_PPGTT, DATA_GMA, 0], /PPGTT/],
      ["ppgtt store", [MI_STORE_DWORD_IMM_GEN4, DATA_GMA, 0, 1], /PPGTT/],
      [
        "16 bpp blit",
        colorBlt(DATA_GMA, 64, 0, 0, 1, 1, 0).map((v, i) => (i === 1 ? (2 << 24) | 64 : v)),
        /colour depth 2/,
      ],
      [
        "wrong rop",
        colorBlt(DATA_GMA, 64, 0, 0, 1, 1, 0).map((v, i) => (i === 1 ? BR13_32BPP | (0x66 << 16) | 64 : v)),
        /raster operation 0x66/,
      ],
      [
        "tiled with a pitch no X tile fits (64 dwords = 256 bytes)",
        copyBlt(DATA_GMA, 64, 0, 0, 1, 1, DATA_GMA, 64, 0, 0).map((v, i) => (i === 0 ? v | (1 << 11) : v)),
        /multiple of 512 bytes/,
      ],
      ["lri odd", [miLoadRegisterImm(1) + 1, 0, 0], /pairs/],
    ];
    for (const [name, words, re] of cases) {
      const r = rig();
      r.submit("rcs", words);
      assert.equal(r.gpu.rcs.eir, I915_ERROR_INSTRUCTION, name);
      assert.match(r.gpu.rcs.last.error ?? "", re, name);
    }
    const r = rig();
    const batch = DATA_GMA + 8 * PAGE;
    r.memWrite(
      batch,
      new Uint8Array(new Uint32Array([MI_BATCH_BUFFER_START_GEN8, batch, 0, MI_BATCH_BUFFER_END]).buffer),
    );
    r.submit("rcs", [MI_BATCH_BUFFER_START_GEN8, batch, 0]);
    assert.match(r.gpu.rcs.last.error ?? "", /inside a batch buffer/);
    assert.equal(r.gpu.rcs.head, 12, "HEAD is past the ring's MI_BATCH_BUFFER_START");
  });

  it("GTT faults are counted and the work goes on: reads see zeros, writes are dropped", () => {
    const r = rig();
    const hole = 0x300_0000; // never backed: not present
    r.memWrite(DATA_GMA, new Uint8Array(2 * PAGE).fill(0x55));
    r.submit("bcs", [
      ...copyBlt(DATA_GMA, 4096, 0, 0, 1024, 1, hole, 4096, 0, 0), // source missing: zeros land
      ...colorBlt(hole, 4096, 0, 0, 1024, 2, 0x12345678), // destination missing: dropped
      ...store(DATA_GMA + PAGE, 0x77),
    ]);
    const e = r.gpu.bcs;
    assert.equal(e.halted, false);
    assert.equal(e.last.gttFaults, 3, "one source page, two destination pages");
    assert.equal(e.last.iommuFaults, 0);
    assert.deepEqual(r.memRead(DATA_GMA, 8), new Uint8Array(8));
    assert.equal(r.u32(DATA_GMA + PAGE), 0x77, "the store after the faulting blits ran");
  });

  it("an IOMMU fault stops the command, halts the engine (I915_ERROR_PAGE_TABLE) and skips what follows", () => {
    const r = rig();
    r.enableIrqs();
    const bad = 0x400_0000;
    r.gttWrite(bad / PAGE + 1, gen8PteEncode(0x9999_0000)); // second page of the destination: no IOMMU mapping
    r.back(bad, PAGE);
    r.submit("bcs", [...colorBlt(bad, 4096, 0, 0, 1024, 3, 0xaaaaaaaa), ...store(DATA_GMA, 0x77)]);
    const e = r.gpu.bcs;
    assert.equal(e.eir, I915_ERROR_PAGE_TABLE);
    assert.equal(e.last.iommuFaults, 1);
    assert.match(e.last.error ?? "", /IOMMU fault at GMA 0x4001000 \(DMA address 0x99990000\)/);
    assert.equal(r.u32(bad), 0xaaaaaaaa, "the page before the fault was written");
    assert.equal(r.u32(DATA_GMA), 0, "the store after the blit did not run");
    assert.equal(e.head, XY_COLOR_BLT_DWORDS * 4, "HEAD is past the faulting command");
    assert.equal(r.reg(GEN8_GT_IIR0), (GT_CS_MASTER_ERROR_INTERRUPT << 16) >>> 0);
    assert.equal(r.host.iommu.lastFault()?.iova, 0x9999_0000);
  });

  it("an engine cannot fetch while Bus Master Enable is clear", () => {
    const r = rig();
    r.gpu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    r.submit("rcs", store(DATA_GMA, 1));
    assert.equal(r.u32(DATA_GMA), 0);
    assert.match(r.gpu.rcs.last.error ?? "", /Bus Master Enable/);
    r.gpu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    r.setReg(ENGINE_BASE.rcs + RING_TAIL, r.tails.rcs);
    assert.equal(r.u32(DATA_GMA), 1, "the next TAIL write runs the waiting work");
  });
});

describe("interrupts", () => {
  it("user interrupt -> IIR -> MSI; acknowledged by writing 1s to IIR", () => {
    const r = rig();
    r.enableIrqs();
    r.submit("rcs", [MI_USER_INTERRUPT]);
    assert.deepEqual(r.msis, [0]);
    assert.equal(r.reg(GEN8_GT_IIR0), GT_RENDER_USER_INTERRUPT);
    assert.equal(r.reg(GEN8_GT_ISR0), GT_RENDER_USER_INTERRUPT);
    assert.equal(r.reg(GEN8_MASTER_IRQ), (GEN8_MASTER_IRQ_CONTROL | GEN8_GT_RCS_IRQ) >>> 0);
    // Still pending: a second event makes no new edge.
    r.submit("rcs", [MI_USER_INTERRUPT]);
    assert.equal(r.msis.length, 1);
    r.setReg(GEN8_GT_IIR0, GT_RENDER_USER_INTERRUPT);
    assert.equal(r.reg(GEN8_GT_IIR0), 0);
    assert.equal(r.reg(GEN8_MASTER_IRQ), GEN8_MASTER_IRQ_CONTROL);
    r.submit("bcs", [MI_USER_INTERRUPT]);
    assert.equal(r.msis.length, 2);
    assert.equal(r.reg(GEN8_MASTER_IRQ) & GEN8_GT_BCS_IRQ, GEN8_GT_BCS_IRQ);
    assert.equal(r.rec.named("gpu.irq").at(-1)?.fields.delivery, "msi");
  });

  it("IMR masks latching into IIR; IER gates the line; the master bit gates delivery", () => {
    const r = rig();
    r.enableIrqs();
    r.setReg(GEN8_GT_IMR0, 0xffffffff);
    r.submit("rcs", [MI_USER_INTERRUPT]);
    assert.equal(r.reg(GEN8_GT_ISR0), GT_RENDER_USER_INTERRUPT, "ISR sees the event");
    assert.equal(r.reg(GEN8_GT_IIR0), 0, "masked: not latched");
    assert.equal(r.msis.length, 0);
    r.setReg(GEN8_GT_IMR0, 0);
    r.setReg(GEN8_GT_IER0, 0);
    r.submit("rcs", [MI_USER_INTERRUPT]);
    assert.equal(r.reg(GEN8_GT_IIR0), GT_RENDER_USER_INTERRUPT, "latched");
    assert.equal(r.msis.length, 0, "not enabled in IER: no interrupt");
    assert.equal(r.reg(GEN8_MASTER_IRQ) & GEN8_GT_RCS_IRQ, 0);
    r.setReg(GEN8_MASTER_IRQ, 0);
    r.setReg(GEN8_GT_IER0, GT_RENDER_USER_INTERRUPT);
    assert.equal(r.msis.length, 0, "master off");
    r.setReg(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    assert.equal(r.msis.length, 1, "master on with an enabled IIR bit pending: the MSI goes out");
  });

  it("with MSI disabled the line is INTx", () => {
    const r = rig();
    r.enableIrqs();
    const c = r.gpu.config.findCapability(PCI_CAP_ID_MSI);
    r.gpu.config.write(c + PCI_MSI_FLAGS, 2, 0);
    r.submit("rcs", [MI_USER_INTERRUPT]);
    assert.deepEqual(r.intx, [true]);
    r.setReg(GEN8_GT_IIR0, 0xffffffff);
    assert.deepEqual(r.intx, [true, false]);
    assert.equal(r.msis.length, 0);
  });
});

describe("resets", () => {
  it("GDRST resets the chosen engine's rings and error state", () => {
    const r = rig();
    r.submit("bcs", [0x1f80_0000]);
    assert.equal(r.gpu.bcs.halted, true);
    r.submit("rcs", store(DATA_GMA, 1));
    r.setReg(GEN6_GDRST, GEN6_GRDOM_BLT);
    assert.equal(r.gpu.bcs.halted, false);
    assert.equal(r.reg(ENGINE_BASE.bcs + RING_CTL), 0);
    assert.equal(r.reg(ENGINE_BASE.rcs + RING_CTL) & RING_VALID, RING_VALID, "rcs untouched");
    assert.equal(r.reg(GEN6_GDRST), 0, "the reset completes at once");
    assert.equal(r.rec.named("gpu.reset").at(-1)?.fields.domains, "bcs");
  });

  it("an LRI to GDRST stops the running engine", () => {
    const r = rig();
    r.submit("rcs", [miLoadRegisterImm(1), GEN6_GDRST, 2, ...store(DATA_GMA, 1)]);
    assert.equal(r.u32(DATA_GMA), 0);
    assert.equal(r.gpu.rcs.ctl, 0);
  });

  it("function-level reset clears the GGTT, fences and interrupt registers", () => {
    const r = rig();
    r.enableIrqs();
    r.setReg(FENCE_REG_GEN6_LO, 5);
    r.host.pci.reset(BDF);
    assert.equal(r.gpu.ggtt.pageDma(DATA_GMA / PAGE), -1);
    assert.equal(r.gpu.fence(0), 0);
    assert.equal(r.reg(GEN8_GT_IMR0), 0xffffffff);
    assert.equal(r.reg(GEN8_MASTER_IRQ), 0);
  });
});

describe("ATS", () => {
  it("ATS on and off give the same memory and busy time; with ATS the device ATC serves translations", () => {
    const run = (ats: boolean) => {
      const r = rig({ ats });
      r.memWrite(DATA_GMA, pattern(16 * PAGE, 5));
      r.submit("bcs", [
        ...copyBlt(DATA_GMA + 16 * PAGE, 4096, 0, 0, 1024, 16, DATA_GMA, 4096, 0, 0),
        ...colorBlt(DATA_GMA + 20 * PAGE, 512, 5, 5, 100, 20, 0x0badf00d),
        ...store(DATA_GMA + 40 * PAGE, 42),
      ]);
      r.submit("bcs", copyBlt(DATA_GMA + 32 * PAGE, 4096, 0, 0, 1024, 16, DATA_GMA + 16 * PAGE, 4096, 0, 0));
      return { mem: r.memRead(DATA_GMA, 64 * PAGE), busy: r.gpu.bcs.totalBusyNs, ats: r.host.iommu.stats().atsHits };
    };
    const on = run(true);
    const off = run(false);
    assert.deepEqual(on.mem, off.mem);
    assert.equal(on.busy, off.busy);
    assert.ok(on.ats > 0, "ATC hits with ATS");
    assert.equal(off.ats, 0);
  });
});
