import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GPU_DEVICE_ID, GPU_VENDOR_ID } from "../gpu/index.ts";
import { PCI_CAP_ID_MSI } from "../host/index.ts";
import { ASLS, BDSM, createVgpuConfig, GMCH_CTRL, VGPU_GGMS } from "./vconfig.ts";

const MiB = 1024 * 1024;

describe("vGPU config space (GVT-g's cfg_space.c)", () => {
  it("identity: 8086:1912, VGA class, revision 6 (a stepping i915 knows: skl_revids)", () => {
    const c = createVgpuConfig(512 * MiB);
    assert.deepEqual(
      [c.read(0, 2), c.read(2, 2), c.read(8, 1), c.read(9, 1), c.read(0xa, 2)],
      [GPU_VENDOR_ID, GPU_DEVICE_ID, 6, 0, 0x0300],
    );
  });

  it("GMCH_CTRL: GGMS says an 8 MiB GGTT (4 GiB of graphics memory), GMS (stolen) 0; BDSM and ASLS 0; all read-only", () => {
    const c = createVgpuConfig(512 * MiB);
    assert.equal(VGPU_GGMS, 3);
    assert.equal(c.read(GMCH_CTRL, 2), 3 << 6);
    assert.equal((c.read(GMCH_CTRL, 2) >>> 8) & 0xff, 0, "no stolen memory");
    assert.equal(c.read(BDSM, 4), 0);
    assert.equal(c.read(ASLS, 4), 0, "no OpRegion");
    c.write(GMCH_CTRL, 2, 0xffff);
    c.write(BDSM, 4, 0xffff_ffff);
    c.write(ASLS, 4, 0xffff_ffff);
    assert.deepEqual([c.read(GMCH_CTRL, 2), c.read(BDSM, 4), c.read(ASLS, 4)], [3 << 6, 0, 0]);
    c.reset();
    assert.equal(c.read(GMCH_CTRL, 2), 3 << 6, "survives a function reset");
  });

  it("BARs: BAR0 16 MiB and BAR2 the host aperture, both 64-bit, sized by the all-ones probe; one MSI vector", () => {
    const c = createVgpuConfig(1024 * MiB);
    c.write(0x10, 4, 0xffff_ffff);
    c.write(0x18, 4, 0xffff_ffff);
    assert.equal(c.read(0x10, 4), (~(16 * MiB - 1) | 0x4) >>> 0);
    assert.equal(c.read(0x18, 4), (~(1024 * MiB - 1) | 0xc) >>> 0, "prefetchable");
    const msi = c.findCapability(PCI_CAP_ID_MSI);
    assert.notEqual(msi, 0);
    assert.equal(c.msi().vectors, 1);
    assert.equal((c.read(msi + 2, 2) >>> 1) & 0x7, 0, "one message capable");
  });
});
