import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, type Hpa, KernelError, PAGE_SIZE } from "../core/index.ts";
import { type GpuResources, gen8PteEncode } from "../gpu/index.ts";
import { colorBlt, MiB, VgpuWorld } from "./testing.ts";
import type { Vgpu } from "./vgpu.ts";

/** Whether every physical GGTT entry of `r`'s aperture and hidden pieces is `pte`. */
function partitionAll(w: VgpuWorld, r: GpuResources, pte: number): boolean {
  const e = w.gpu.gpu.ggtt.entries;
  for (const piece of [r.aperture, r.hidden]) {
    const first = piece.base / PAGE_SIZE;
    for (let i = first; i < first + piece.size / PAGE_SIZE; i++) if (e[i] !== pte) return false;
  }
  return true;
}

describe("GVT-g parent: the per-vGPU scratch page", () => {
  it("create points the whole partition at a zeroed scratch page of the vGPU's own, in two bulk writes", () => {
    const w = new VgpuWorld();
    const maps0 = w.driver.dma.mappings();
    const rec = w.recorder!;
    const [fills0, writes0] = [rec.named("gpu.gtt.fill").length, rec.named("gpu.gtt.write").length];
    const v = w.vgpu(w.create("GVTg_V5_4"));
    const own = gen8PteEncode(v.scratch.dmaAddr);
    assert.notEqual(own, gen8PteEncode(w.driver.scratch.dmaAddr));
    assert.ok(partitionAll(w, v.resources, own), "every entry of the partition on the vGPU's scratch page");
    assert.equal(w.driver.readGgtt(v.resources.aperture.base / PAGE_SIZE - 1), gen8PteEncode(w.driver.scratch.dmaAddr));
    assert.equal(w.driver.dma.mappings(), maps0 + 1, "one dma_alloc_coherent");
    assert.equal(v.scratch.size, PAGE_SIZE);
    const page = new Uint8Array(PAGE_SIZE).fill(0xff);
    w.host.physmem.read((v.scratch.pfn * PAGE_SIZE) as Hpa, page);
    assert.ok(
      page.every((b) => b === 0),
      "zeroed",
    );
    // Fast: two bulk fills (aperture, hidden), no per-entry write.
    const fills = rec.named("gpu.gtt.fill").slice(fills0);
    assert.deepEqual(
      fills.map((f) => [f.fields.index, f.fields.count, f.fields.pte]),
      [
        [v.resources.aperture.base / PAGE_SIZE, (128 * MiB) / PAGE_SIZE, own],
        [v.resources.hidden.base / PAGE_SIZE, (512 * MiB) / PAGE_SIZE, own],
      ],
    );
    assert.equal(rec.named("gpu.gtt.write").length, writes0);
    const ev = rec.named("vgpu.create").at(-1)!.fields;
    assert.deepEqual([ev.scratchPfn, ev.scratchIova], [v.scratch.pfn, v.scratch.dmaAddr]);
    const v2 = w.vgpu(w.create("GVTg_V5_8"));
    assert.notEqual(v2.scratch.pfn, v.scratch.pfn);
    assert.notEqual(v2.scratch.dmaAddr, v.scratch.dmaAddr);
    w.checkInvariants();
    w.driver.checkInvariants({ scanGgtt: true });
  });

  it("remove points the partition back at the host's scratch page, then frees the vGPU's page", () => {
    const w = new VgpuWorld();
    const maps0 = w.driver.dma.mappings();
    const uuid = w.create("GVTg_V5_8");
    const v = w.vgpu(uuid);
    const { pfn, dmaAddr } = v.scratch;
    const domain = w.host.iommu.domainOf(w.driver.bdf);
    assert.equal(domain.iovaToPhys(dmaAddr), pfn * PAGE_SIZE);
    w.mdev.remove(uuid);
    assert.ok(partitionAll(w, v.resources, gen8PteEncode(w.driver.scratch.dmaAddr)));
    assert.ok(!w.host.physmem.isAllocated(pfn), "the scratch frame is freed");
    assert.ok(!(domain.iovaToPhys(dmaAddr) >= 0), "and its IOVA unmapped");
    assert.equal(w.driver.dma.mappings(), maps0);
    assert.equal(w.recorder!.named("vgpu.release").at(-1)!.fields.scratchIova, dmaAddr);
    w.checkInvariants();
    w.driver.checkInvariants({ scanGgtt: true });
  });

  it("with work still on an engine, the scratch page stays until the work drains and the partition is freed", () => {
    const w = new VgpuWorld();
    const g = w.attach(w.create("GVTg_V5_8"), { ramBytes: 8 * MiB });
    const v: Vgpu = g.vgpu;
    const ring = g.setupRing("bcs");
    const big = g.allocGm(1024);
    ring.submit(colorBlt(big.gma, 4096, 0, 0, 1024, 1024, 0)); // 4 MiB: ~260 us of engine time
    g.close();
    g.qemu.exit();
    w.mdev.remove(g.uuid);
    assert.ok(w.host.physmem.isAllocated(v.scratch.pfn), "held while the blit runs");
    assert.ok(partitionAll(w, v.resources, gen8PteEncode(v.scratch.dmaAddr)), "the partition still on it");
    w.checkInvariants();
    w.run(1_000_000);
    assert.ok(!w.host.physmem.isAllocated(v.scratch.pfn));
    assert.ok(partitionAll(w, v.resources, gen8PteEncode(w.driver.scratch.dmaAddr)));
    w.checkInvariants();
  });

  it("a create that fails returns the partition, then the scratch page; one that cannot get a page takes nothing", () => {
    const w = new VgpuWorld({ trace: false });
    const cap0 = w.driver.capacity();
    const maps0 = w.driver.dma.mappings();
    const free0 = w.host.physmem.freeFrames();
    // The vGPU's construction fails after it moved the partition onto its scratch page.
    const add = w.parent.scheduler.add.bind(w.parent.scheduler);
    w.parent.scheduler.add = () => {
      throw new KernelError(Errno.ENOMEM, "scheduler add failed (injected)");
    };
    assert.throws(() => w.create("GVTg_V5_8"), /injected/);
    w.parent.scheduler.add = add;
    assert.deepEqual(w.driver.capacity(), cap0);
    assert.equal(w.driver.dma.mappings(), maps0);
    assert.equal(w.host.physmem.freeFrames(), free0);
    w.driver.checkInvariants({ scanGgtt: true });
    // dma_alloc_coherent fails: ENOMEM reaches the creator, the partition is returned.
    const dma = w.driver.dma;
    const alloc = dma.allocCoherent.bind(dma);
    dma.allocCoherent = () => {
      throw new KernelError(Errno.ENOMEM, "dma_alloc_coherent failed (injected)");
    };
    assert.throws(
      () => w.create("GVTg_V5_8"),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.ENOMEM,
    );
    dma.allocCoherent = alloc;
    assert.deepEqual(w.driver.capacity(), cap0);
    assert.equal(w.parent.vgpus().length, 0);
    // And the parent is still usable.
    const v = w.vgpu(w.create("GVTg_V5_8"));
    assert.ok(partitionAll(w, v.resources, gen8PteEncode(v.scratch.dmaAddr)));
    w.checkInvariants();
  });
});
