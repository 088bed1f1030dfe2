import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ENGINE_BASE, GEN6_GDRST, MMIO_SIZE, RING_EIR, RING_HEAD, RING_TAIL } from "../gpu/index.ts";
import { VGPU_ENGINES, vengine } from "./engines.ts";
import {
  DC_STATE_EN,
  FPGA_DBG,
  GEN6_PCODE_DATA,
  GEN6_PCODE_MAILBOX,
  GEN6_RP_STATE_CAP,
  GEN8_FUSE2,
  GEN9_EU_DISABLE0,
  GUC_STATUS,
  HSW_GTT_CACHE_EN,
  HSW_PWR_WELL_CTL2,
  MASKED_WA_REGS,
  MODE_IDLE,
  maskedWrite,
  OTHER_IRQ_BANKS,
  PCH_RAWCLK_FREQ,
  RING_ESR,
  RING_INSTPM,
  RING_MI_MODE,
  RING_MODE_GEN7,
  RING_RESET_CTL,
  SKL_DFSM,
  SKL_FUSE_STATUS,
  STOP_RING,
} from "./gvt-regs.ts";
import { findMmioReg, VGPU_MMIO_TABLE } from "./mmio-table.ts";
import { MiB, VgpuWorld } from "./testing.ts";

function setup() {
  const w = new VgpuWorld();
  const uuid = w.create("GVTg_V5_8");
  const g = w.attach(uuid, { ramBytes: 4 * MiB });
  return { w, g, v: w.vgpu(uuid) };
}

const masked = (bits: number, on: boolean) => ((bits << 16) | (on ? bits : 0)) >>> 0;

describe("vGPU MMIO: the registers i915 6.1 reads and polls at probe, answered as GVT-g", () => {
  it("the table: no overlaps, all inside the register range, every engine's registers present", () => {
    for (const r of VGPU_MMIO_TABLE) assert.ok(r.offset >= 0 && r.offset + r.size <= MMIO_SIZE, r.name);
    for (const e of VGPU_ENGINES) {
      for (const reg of [RING_TAIL, RING_HEAD, RING_MI_MODE, RING_RESET_CTL, RING_MODE_GEN7, 0x230, 0x3a0]) {
        assert.equal(findMmioReg(e.base + reg)?.engine, e.id);
      }
    }
  });

  it("FPGA_DBG never reports an unclaimed access (writing bit 31 clears it)", () => {
    const { g } = setup();
    assert.equal(g.mmio(FPGA_DBG), 0);
    g.setMmio(FPGA_DBG, 0x8000_0001);
    assert.equal(g.mmio(FPGA_DBG), 1);
  });

  it("RING_RESET_CTL: READY follows a masked REQUEST on every engine; a masked disable cancels both", () => {
    const { g } = setup();
    for (const e of VGPU_ENGINES) {
      const reg = e.base + RING_RESET_CTL;
      g.setMmio(reg, masked(1, true));
      assert.equal(g.mmio(reg), 0b11, `${e.id}: REQUEST and READY_TO_RESET`);
      g.setMmio(reg, 0x0002_0002); // READY is not the guest's
      assert.equal(g.mmio(reg), 0b11);
      g.setMmio(reg, masked(1, false));
      assert.equal(g.mmio(reg), 0, `${e.id}: cancelled`);
      g.setMmio(reg, 1); // without its mask bit a write changes nothing
      assert.equal(g.mmio(reg), 0);
    }
  });

  it("GEN6_GDRST reads 0 at once after any reset request (full or per engine: media, VECS)", () => {
    const { g, w } = setup();
    for (const domains of [1, 1 << 2, 1 << 4, (1 << 1) | (1 << 3)]) {
      g.setMmio(GEN6_GDRST, domains);
      assert.equal(g.mmio(GEN6_GDRST), 0);
    }
    const engines = w.recorder!.named("vgpu.reset").map((r) => r.fields.engines.join(","));
    assert.deepEqual(engines, ["rcs,bcs,vcs,vecs", "vcs", "vecs", "rcs,bcs"]);
  });

  it("TLB invalidation requests (GEN8_RTCR..VTCR) complete at once: each reads 0 after i915 writes 1", () => {
    const { g } = setup();
    for (let reg = 0x4260; reg <= 0x4270; reg += 4) {
      g.setMmio(reg, 1);
      assert.equal(g.mmio(reg), 0, `0x${reg.toString(16)}`);
    }
  });

  it("fuses and capabilities: one slice of 3 subslices, no disabled EU, no RPS, no display pipe, a 24 MHz raw clock", () => {
    const { g, v } = setup();
    const expected: [number, number][] = [
      [GEN8_FUSE2, 0x0280_0000],
      [GEN9_EU_DISABLE0, 0],
      [GEN9_EU_DISABLE0 + 8, 0],
      [GEN6_RP_STATE_CAP, 0],
      [SKL_DFSM, (1 << 30) | (1 << 28) | (1 << 21)],
      [PCH_RAWCLK_FREQ, 24],
    ];
    for (const [reg, value] of expected) {
      assert.equal(g.mmio(reg), value >>> 0, `0x${reg.toString(16)}`);
      g.setMmio(reg, 0x1234_5678);
      assert.equal(g.mmio(reg), value >>> 0, "read-only");
    }
    assert.equal(v.stats().droppedMmioWrites, expected.length);
  });

  it("the PCODE mailbox is never busy; canned answers for GVT-g's commands; SAGV control answers error 1", () => {
    const { g } = setup();
    const pcode = (cmd: number, data = 0) => {
      assert.equal(g.mmio(GEN6_PCODE_MAILBOX) & (1 << 31), 0, "READY clear before the command");
      g.setMmio(GEN6_PCODE_DATA, data);
      g.setMmio(GEN6_PCODE_MAILBOX, ((1 << 31) | cmd) >>> 0);
      const mb = g.mmio(GEN6_PCODE_MAILBOX);
      return { ready: (mb >>> 31) & 1, error: mb & 0xff, data: g.mmio(GEN6_PCODE_DATA) };
    };
    assert.deepEqual(pcode(0x6, 0), { ready: 0, error: 0, data: 0x1e1a_1100 }, "memory latency, levels 0-3");
    assert.deepEqual(pcode(0x6, 1), { ready: 0, error: 0, data: 0x6151_4b3d }, "memory latency, levels 4-7");
    assert.deepEqual(pcode(0x7, 0), { ready: 0, error: 0, data: 0x3 }, "CDCLK control: ready for change");
    assert.deepEqual(pcode(0x5, 0x10), { ready: 0, error: 0, data: 0x11 }, "RC6 VIDs");
    assert.deepEqual(pcode(0x21, 3), { ready: 0, error: 1, data: 3 }, "SAGV: illegal command (no SAGV)");
    assert.deepEqual(pcode(0x1a, 0x55), { ready: 0, error: 0, data: 0x55 }, "others: success, DATA untouched");
  });

  it("GuC reset: GDRST's GuC domain sets GUC_STATUS MIA_IN_RESET, which reads 1 once (guc_status_read)", () => {
    const { g } = setup();
    assert.equal(g.mmio(GUC_STATUS) & 1, 0);
    g.setMmio(GEN6_GDRST, 1 << 5);
    assert.equal(g.mmio(GEN6_GDRST), 0);
    assert.equal(g.mmio(GUC_STATUS) & 1, 1, "what __uc_sanitize expects after intel_reset_guc");
    assert.equal(g.mmio(GUC_STATUS) & 1, 0);
  });

  it("display power wells: each STATE follows its REQUEST; the power-gate fuses read distributed", () => {
    const { g } = setup();
    assert.equal(g.mmio(SKL_FUSE_STATUS), ((1 << 31) | (1 << 27) | (1 << 26) | (1 << 25)) >>> 0);
    g.setMmio(HSW_PWR_WELL_CTL2, (1 << 31) | (1 << 3)); // PW_2 and DDI_A_E requested
    assert.equal(g.mmio(HSW_PWR_WELL_CTL2), ((1 << 31) | (1 << 30) | (1 << 3) | (1 << 2)) >>> 0);
    g.setMmio(HSW_PWR_WELL_CTL2, (1 << 3) | (1 << 0) | (1 << 12)); // PW_2 released; stray bits ignored
    assert.equal(g.mmio(HSW_PWR_WELL_CTL2), (1 << 3) | (1 << 2));
  });

  it("echo registers: HSW_GTT_CACHE_EN and DC_STATE_EN read back what was written", () => {
    const { g } = setup();
    for (const reg of [HSW_GTT_CACHE_EN, DC_STATE_EN]) {
      g.setMmio(reg, 0xf0f0);
      assert.equal(g.mmio(reg), 0xf0f0);
    }
  });

  it("masked registers keep the bits a write's mask does not select (a property over random write sequences)", () => {
    const { g } = setup();
    const regs = [
      ...MASKED_WA_REGS.map((r) => r.offset),
      ENGINE_BASE.rcs + RING_INSTPM,
      vengine("vecs").base + RING_INSTPM,
    ];
    fc.assert(
      fc.property(
        fc.constantFrom(...regs),
        fc.array(fc.integer({ min: 0, max: 0xffff_ffff }), { maxLength: 12 }),
        (reg, writes) => {
          g.setMmio(reg, 0xffff_0000);
          let model = 0;
          for (const wv of writes) {
            g.setMmio(reg, wv);
            model = maskedWrite(model, wv);
          }
          assert.equal(g.mmio(reg), model);
          assert.equal(model >>> 16, 0, "the mask half never reads back");
        },
      ),
      { numRuns: 200, seed: 13 },
    );
    // The workaround pattern: two masked enables of different bits both stick.
    g.setMmio(0x7004, 0xffff_0000);
    g.setMmio(0x7004, masked(1 << 3, true));
    g.setMmio(0x7004, masked(1 << 6, true));
    assert.equal(g.mmio(0x7004), (1 << 3) | (1 << 6));
  });

  it("RING_MI_MODE: STOP_RING masked; MODE_IDLE reads 1 while the engine has no work, and is not the guest's", () => {
    const { g } = setup();
    for (const e of VGPU_ENGINES) {
      const reg = e.base + RING_MI_MODE;
      g.setMmio(reg, masked(STOP_RING, true));
      assert.equal(g.mmio(reg), STOP_RING | MODE_IDLE);
      g.setMmio(reg, masked(STOP_RING | MODE_IDLE, false));
      assert.equal(g.mmio(reg), MODE_IDLE, "idle is the engine's state, not a bit the guest clears");
    }
  });

  it("ring error registers: RING_EIR clears on write 1, RING_ESR reads 0; HEAD == TAIL on an idle engine", () => {
    const { g } = setup();
    for (const e of VGPU_ENGINES) {
      g.setMmio(e.base + RING_EIR, 0xffff_ffff);
      assert.equal(g.mmio(e.base + RING_EIR), 0);
      assert.equal(g.mmio(e.base + RING_ESR), 0);
      assert.equal(g.mmio(e.base + RING_HEAD), g.mmio(e.base + RING_TAIL));
    }
  });

  it("display, PCU and PCH interrupt registers: IMR reads all masked after reset, IIR clears on write 1", () => {
    const { g } = setup();
    for (const b of OTHER_IRQ_BANKS) {
      assert.equal(g.mmio(b.isr + 4), 0xffff_ffff, `${b.name} IMR`);
      g.setMmio(b.isr + 8, 0xffff_ffff);
      g.setMmio(b.isr + 8, 0xffff_ffff);
      assert.equal(g.mmio(b.isr + 8), 0, `${b.name} IIR (gen3_assert_iir_is_zero)`);
      g.setMmio(b.isr + 0xc, 0x55);
      assert.equal(g.mmio(b.isr + 0xc), 0x55);
    }
  });

  it("HWS_PGA is stored only when it names a page of the vGPU's graphics memory", () => {
    const { g, v, w } = setup();
    const reg = ENGINE_BASE.bcs + 0x80;
    const page = g.allocGm(1, "hidden");
    g.setMmio(reg, page.gma);
    assert.equal(g.mmio(reg), page.gma);
    g.setMmio(reg, 0x1000); // the host's reservation
    assert.equal(g.mmio(reg), page.gma);
    assert.match(w.recorder!.named("vgpu.mmio.dropped").at(-1)!.fields.reason, /bcs'0 status page 0x1000 is outside/);
    g.setMmio(reg, 0);
    assert.equal(g.mmio(reg), 0);
    assert.equal(v.stats().droppedMmioWrites, 1);
  });

  it("a full GDRST restores registers below 0x44200 and keeps the interrupts, fences and PVINFO", () => {
    const { g } = setup();
    g.setMmio(0x7004, masked(1, true));
    g.setMmio(0x1234, 7);
    g.setMmio(0x4430c, 0xff); // GT IER 0
    g.setMmio(GEN6_GDRST, 1);
    assert.equal(g.mmio(0x7004), 0);
    assert.equal(g.mmio(0x1234), 0);
    assert.equal(g.mmio(ENGINE_BASE.rcs + 0x3a0), 7, "CSB pointer back to its reset value");
    assert.equal(g.mmio(0x4430c), 0xff);
    assert.equal(g.mmio(0x78000), 0x76544776);
  });
});

describe("vGPU failsafe (GVT-g's enter_failsafe_mode)", () => {
  it("execlists enabled before any PVINFO read: failsafe with a reason; then registers are plain storage", () => {
    const { g, v } = setup();
    g.device.reset(); // forget the PVINFO reads the session made at attach
    assert.equal(v.stats().pvNotified, false);
    g.setMmio(ENGINE_BASE.rcs + RING_MODE_GEN7, masked(1 << 15, true));
    const f = v.stats().failsafe;
    assert.equal(f?.reason, "unsupported-guest");
    assert.match(f?.detail ?? "", /RUN_LIST \(execlists\) before the guest read PVINFO/);
    assert.equal(v.execlists.get("rcs")!.enabled, false);
    g.setMmio(GEN6_GDRST, 1);
    assert.equal(g.mmio(GEN6_GDRST), 1, "GDRST no longer resets anything: it is storage");
    g.setMmio(ENGINE_BASE.rcs + RING_RESET_CTL, masked(1, true));
    assert.equal(g.mmio(ENGINE_BASE.rcs + RING_RESET_CTL), masked(1, true), "no handshake either");
    g.device.reset();
    assert.equal(v.stats().failsafe, undefined, "a device reset leaves failsafe");
    assert.equal(g.mmio(GEN6_GDRST), 0);
  });

  it("a read of PVINFO first makes the same write legal", () => {
    const { g, v } = setup();
    g.device.reset();
    g.mmio(0x78010); // vgt_caps
    assert.equal(v.stats().pvNotified, true);
    g.setMmio(ENGINE_BASE.rcs + RING_MODE_GEN7, masked(1 << 15, true));
    assert.equal(v.stats().failsafe, undefined);
    assert.ok(v.execlists.get("rcs")!.enabled);
    assert.equal(g.mmio(ENGINE_BASE.rcs + RING_MODE_GEN7), 1 << 15);
  });

  it("GFX_MODE bit 0 enabled: failsafe (and the bit is not stored)", () => {
    const { g, v } = setup();
    g.setMmio(ENGINE_BASE.bcs + RING_MODE_GEN7, masked(1, true));
    assert.equal(v.stats().failsafe?.reason, "unsupported-guest");
    assert.match(v.stats().failsafe?.detail ?? "", /bcs'0 enabled bit 0/);
    assert.equal(g.mmio(ENGINE_BASE.bcs + RING_MODE_GEN7), 0);
  });
});
