import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { KernelError } from "../core/index.ts";
import { PVINFO, VGT_PVINFO_PAGE } from "../gpu/index.ts";
import { VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX } from "../vfio/index.ts";
import {
  balloonViolation,
  gvtBalloon,
  PVINFO_EXTRA,
  VGPU_CAPS,
  VGT_CAPS_FULL_PPGTT,
  VGT_CAPS_HUGE_GTT,
  VGT_CAPS_HWSP_EMULATION,
} from "./pvinfo.ts";
import { MiB, VgpuWorld } from "./testing.ts";
import { GVT_TYPES } from "./types.ts";
import type { Vgpu } from "./vgpu.ts";

const GiB = 1024 * MiB;
const pv = (v: Vgpu, field: number) => v.mmio.readDword(VGT_PVINFO_PAGE + field);

/** i915's intel_vgt_balloon checks, written from i915_vgpu.c, against what the vGPU presents. */
function i915Balloon(v: Vgpu): string | undefined {
  const mappableEnd = v.regionInfo(VFIO_PCI_BAR2_REGION_INDEX).size;
  const ggms = (v.config.read(0x50, 2) >>> 6) & 0x3;
  const total = (((1 << ggms) * MiB) / 8) * 4096;
  const mBase = pv(v, PVINFO.mappableBase);
  const mSize = pv(v, PVINFO.mappableSize);
  const uBase = pv(v, PVINFO.nonmappableBase);
  const uSize = pv(v, PVINFO.nonmappableSize);
  if (mBase + mSize > mappableEnd) return "mappable beyond mappable_end";
  if (uBase < mappableEnd) return "non-mappable below mappable_end";
  if (uBase + uSize > total) return "non-mappable beyond the GGTT";
  return undefined;
}

describe("PVINFO: what i915 6.1 reads at intel_vgpu_detect and init_ggtt", () => {
  it("magic in one 64-bit read, version 1.0, caps FULL_PPGTT | HWSP_EMULATION (no HUGE_GTT), fences 4", () => {
    const w = new VgpuWorld();
    const uuid = w.create("GVTg_V5_4");
    const g = w.attach(uuid, { ramBytes: 4 * MiB });
    const q = g.device.read(VFIO_PCI_BAR0_REGION_INDEX, VGT_PVINFO_PAGE, 8);
    assert.equal(new TextDecoder().decode(q), "vGTvGTvG", "readq of the magic");
    assert.equal(g.mmio(VGT_PVINFO_PAGE + PVINFO.versionMajor), 1, "major 1, minor 0");
    assert.equal(VGPU_CAPS, 0x0c);
    assert.equal(g.mmio(VGT_PVINFO_PAGE + PVINFO.vgtCaps), VGT_CAPS_FULL_PPGTT | VGT_CAPS_HWSP_EMULATION);
    assert.equal(g.mmio(VGT_PVINFO_PAGE + PVINFO.vgtCaps) & VGT_CAPS_HUGE_GTT, 0);
    assert.equal(g.mmio(VGT_PVINFO_PAGE + PVINFO.fenceNum), 4);
    assert.equal(g.mmio(VGT_PVINFO_PAGE + PVINFO_EXTRA.cursorXHot), 0xffff_ffff);
  });

  it("each type's ranges are GVT-g's (64/384, 128/512, 256/1024, 512/2048 MiB) at host GGTT addresses", () => {
    const expected: Record<string, [number, number]> = {
      GVTg_V5_8: [64, 384],
      GVTg_V5_4: [128, 512],
      GVTg_V5_2: [256, 1024],
      GVTg_V5_1: [512, 2048],
    };
    for (const t of GVT_TYPES) {
      const w = new VgpuWorld({ apertureSize: GiB });
      const v = w.vgpu(w.create(t.id));
      const [low, high] = expected[t.id]!;
      assert.deepEqual(
        [
          pv(v, PVINFO.mappableBase),
          pv(v, PVINFO.mappableSize),
          pv(v, PVINFO.nonmappableBase),
          pv(v, PVINFO.nonmappableSize),
        ],
        [v.resources.aperture.base, low * MiB, v.resources.hidden.base, high * MiB],
        t.id,
      );
      assert.equal(v.regionInfo(VFIO_PCI_BAR2_REGION_INDEX).size, GiB, "BAR2 = the host aperture");
      assert.equal(i915Balloon(v), undefined, t.id);
    }
  });

  it("every vGPU of every type on every aperture size passes i915's ballooning rules (property)", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(128 * MiB, 256 * MiB, 512 * MiB, GiB, 2 * GiB),
        fc.array(fc.constantFrom(...GVT_TYPES.map((t) => t.id)), { minLength: 1, maxLength: 7 }),
        (aperture, types) => {
          const w = new VgpuWorld({ apertureSize: aperture, trace: false });
          for (const t of types) {
            let uuid: string;
            try {
              uuid = w.create(t);
            } catch (e) {
              if (e instanceof KernelError) continue; // does not fit: nothing to check
              throw e;
            }
            const v = w.vgpu(uuid);
            assert.equal(i915Balloon(v), undefined, `${t} on a ${aperture / MiB} MiB aperture`);
            assert.equal(balloonViolation(gvtBalloon(v.resources), v.bar2Size), undefined);
          }
        },
      ),
      { numRuns: 25, seed: 7 },
    );
  });

  it("balloonViolation names the rule a layout breaks (the smaller-BAR2 layout of the old model breaks the first)", () => {
    const b = {
      mappableBase: 128 * MiB,
      mappableSize: 128 * MiB,
      nonmappableBase: GiB,
      nonmappableSize: 512 * MiB,
      fenceNum: 4,
    };
    assert.match(balloonViolation(b, 128 * MiB) ?? "", /ends beyond BAR2/);
    assert.match(
      balloonViolation({ ...b, nonmappableBase: 256 * MiB }, 512 * MiB) ?? "",
      /below the end of the mappable/,
    );
    assert.match(balloonViolation({ ...b, nonmappableSize: 4 * GiB }, 512 * MiB) ?? "", /beyond the GGTT/);
    assert.equal(balloonViolation(b, 512 * MiB), undefined);
  });
});

describe("PVINFO writes (pvinfo_mmio_write) and reads (pv_notified)", () => {
  function setup() {
    const w = new VgpuWorld();
    const uuid = w.create("GVTg_V5_8");
    const g = w.attach(uuid, { ramBytes: 4 * MiB });
    return { w, g, v: w.vgpu(uuid) };
  }
  const at = (f: number) => VGT_PVINFO_PAGE + f;

  it("g2v L4 create records pdp[0] as the PML4; destroy releases it; a destroy of an unknown root is refused", () => {
    const { g, v, w } = setup();
    g.setMmio(at(PVINFO_EXTRA.pdp), 0x0012_3000);
    g.setMmio(at(PVINFO_EXTRA.pdp + 4), 0x1);
    g.setMmio(at(PVINFO.g2vNotify), 4);
    assert.deepEqual(
      v.ppgttRoots.list().map((r) => [r.levels, r.pdps, r.refs]),
      [[4, [0x1_0012_3000], 1]],
    );
    assert.ok(v.ppgttRoots.findL4(0x1_0012_3000));
    g.setMmio(at(PVINFO.g2vNotify), 4);
    assert.equal(v.ppgttRoots.list()[0]!.refs, 2, "announced twice: two references");
    g.setMmio(at(PVINFO.g2vNotify), 5);
    g.setMmio(at(PVINFO.g2vNotify), 5);
    assert.equal(v.stats().ppgttRoots, 0);
    g.setMmio(at(PVINFO.g2vNotify), 5);
    assert.match(w.recorder!.named("vgpu.pvinfo.notify").at(-1)!.fields.outcome, /never created/);
    g.setMmio(at(PVINFO.g2vNotify), 6);
    assert.equal(w.recorder!.named("vgpu.pvinfo.notify").at(-1)!.fields.outcome, "ignored (as GVT-g)");
    g.setMmio(at(PVINFO.g2vNotify), 99);
    assert.match(w.recorder!.named("vgpu.pvinfo.notify").at(-1)!.fields.outcome, /invalid PV notification 99/);
  });

  it("cursor, pdp and the execlist descriptor are stored; display_ready is stored and traced; others dropped", () => {
    const { g, v, w } = setup();
    const stored = [PVINFO_EXTRA.cursorXHot, PVINFO_EXTRA.pdp + 28, PVINFO_EXTRA.execlistDescHi, PVINFO.displayReady];
    for (const f of stored) {
      g.setMmio(at(f), 0x1234);
      assert.equal(g.mmio(at(f)), 0x1234, `0x${f.toString(16)}`);
    }
    assert.match(w.recorder!.named("vgpu.pvinfo.notify").at(-1)!.fields.outcome, /display is ready/);
    const dropped = v.stats().droppedMmioWrites;
    for (const f of [PVINFO.vgtCaps, PVINFO.nonmappableSize, 0x900]) g.setMmio(at(f), 0xffff);
    assert.equal(g.mmio(at(PVINFO.vgtCaps)), 0x0c);
    assert.equal(v.stats().droppedMmioWrites, dropped + 3);
    assert.equal(v.stats().failsafe, undefined);
  });

  it("a write into rsv5 sends the vGPU to failsafe (insufficient resource), as GVT-g", () => {
    const { g, v } = setup();
    g.setMmio(at(PVINFO_EXTRA.rsv5 + 8), 1);
    assert.equal(v.stats().failsafe?.reason, "insufficient-resource");
    assert.match(v.stats().failsafe?.detail ?? "", /rsv5\[2\]/);
  });

  it("any read of the page marks the guest PV-aware; a device reset forgets it and the roots", () => {
    const { g, v } = setup();
    assert.equal(v.stats().pvNotified, true, "the session read the ranges at attach");
    g.setMmio(at(PVINFO.g2vNotify), 4);
    g.device.reset();
    assert.equal(v.stats().pvNotified, false);
    assert.equal(v.stats().ppgttRoots, 0);
    g.mmio(at(0x7fc));
    assert.equal(v.stats().pvNotified, true);
  });
});
