/**
 * The IOMMU's additions for the design comparison: IOTLB entries per 2 MiB of a superpage (hits after one walk,
 * dropped by an unmap of any part), requests marked as translated (unchecked with ATS enabled, blocked and logged
 * without), the ATS enable control (off flushes the ATC), and the cost meter's counts of maps, unmaps,
 * invalidations and walk reads.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { hpa, type Iova, iova, Rng, SZ_1G, SZ_2M, TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { CostMeter } from "../cost/index.ts";
import { parseBdf } from "./bdf.ts";
import { IOMMU_READ, IOMMU_WRITE } from "./io-pgtable.ts";
import { Iommu, type IommuOptions } from "./iommu.ts";
import { PhysicalMemory } from "./physmem.ts";

const GPU = parseBdf("0000:00:02.0");
const RW = IOMMU_READ | IOMMU_WRITE;

function mk(opts: Partial<Omit<IommuOptions, "physmem" | "clock" | "tracer" | "rng">> = {}) {
  const clock = new VirtualClock();
  const tracer = new Tracer(clock);
  const rec = new TraceRecorder(tracer);
  const physmem = new PhysicalMemory({ sizeBytes: 4 * SZ_1G, tracer });
  const meter = new CostMeter();
  const iommu = new Iommu({ physmem, clock, tracer, rng: new Rng(1), enabled: true, meter, ...opts });
  return { iommu, rec, meter };
}

describe("IOTLB superpage entries", () => {
  it("one walk per 2 MiB of a superpage, then hits; 4 KiB entries walk every page", () => {
    for (const superpages of [false, true]) {
      const { iommu, meter } = mk({ iotlb: { superpages } });
      iommu.addDevice(GPU);
      const dom = iommu.domainOf(GPU);
      dom.map(iova(SZ_1G), hpa(SZ_1G), SZ_2M, RW);
      for (let p = 0; p < 512; p++) {
        assert.equal(iommu.translate(GPU, (SZ_1G + p * 4096 + 8) as Iova, IOMMU_READ), SZ_1G + p * 4096 + 8);
      }
      assert.equal(meter.pageWalks, superpages ? 1 : 512);
      assert.equal(meter.pageWalkReads, meter.pageWalks * 3, "a 2 MiB leaf is 3 reads down a 4-level table");
      assert.equal(iommu.iotlb.hits + iommu.iotlb.misses, 512, "one lookup counted per access");
    }
  });

  it("an unmap of part of the superpage drops its entry", () => {
    const { iommu } = mk({ iotlb: { superpages: true } });
    iommu.addDevice(GPU);
    const dom = iommu.domainOf(GPU);
    dom.map(iova(SZ_1G), hpa(SZ_1G), SZ_2M, RW);
    assert.ok(iommu.translate(GPU, iova(SZ_1G + 4096), IOMMU_READ) >= 0);
    dom.unmap(iova(SZ_1G), SZ_2M);
    assert.equal(iommu.translate(GPU, iova(SZ_1G + 4096), IOMMU_READ), -1);
    assert.equal(iommu.lastFault()?.reason, "not-present");
  });
});

describe("translated requests and the ATS control", () => {
  it("pass unchecked with ATS enabled, are blocked and logged without it", () => {
    const { iommu, rec } = mk();
    iommu.addDevice(GPU, { ats: true });
    // Nothing is mapped: an untranslated request faults, a translated one reaches memory.
    assert.equal(iommu.translate(GPU, iova(0x100000), IOMMU_WRITE), -1);
    assert.equal(iommu.translatedRequest(GPU, hpa(0x100000), IOMMU_WRITE), 0x100000);
    assert.equal(rec.count("ats.translated"), 1);
    iommu.setAtsEnabled(GPU, false);
    assert.equal(iommu.device(GPU).atc, undefined);
    assert.equal(iommu.translatedRequest(GPU, hpa(0x100000), IOMMU_WRITE), -1);
    assert.equal(iommu.lastFault()?.reason, "translated-blocked");
    assert.deepEqual(iommu.translatedRequestStats(), { requests: 2, blocked: 1 });
  });

  it("turning ATS off flushes the ATC, so nothing stale is served after", () => {
    const { iommu, meter } = mk();
    iommu.addDevice(GPU, { ats: true });
    const dom = iommu.domainOf(GPU);
    dom.map(iova(0x200000), hpa(0x300000), 4096, RW);
    iommu.translate(GPU, iova(0x200000), IOMMU_READ);
    const atc = iommu.device(GPU).atc!;
    assert.ok(atc.lookup(0x200) >= 0);
    const before = meter.atcInvalidations;
    iommu.setAtsEnabled(GPU, false);
    assert.equal(meter.atcInvalidations, before + 1);
    assert.equal(atc.lookup(0x200), -1);
    iommu.setAtsEnabled(GPU, true);
    assert.ok(iommu.device(GPU).atc !== undefined);
  });

  it("with the IOMMU disabled every address reaches memory, and the control does not exist", () => {
    const { iommu } = mk({ enabled: false });
    iommu.addDevice(GPU);
    assert.equal(iommu.translatedRequest(GPU, hpa(0x100000), IOMMU_WRITE), 0x100000);
    assert.throws(() => iommu.setAtsEnabled(GPU, false), /IOMMU is disabled/);
  });
});

describe("cost meter", () => {
  it("counts map and unmap calls and pages, and one invalidation per strict unmap", () => {
    const { iommu, meter } = mk();
    iommu.addDevice(GPU);
    const dom = iommu.domainOf(GPU);
    dom.map(iova(0x10000000), hpa(0x20000000), 16 * 4096, RW);
    dom.unmap(iova(0x10000000), 8 * 4096);
    dom.unmap(iova(0x10008000), 8 * 4096, { flush: false });
    assert.deepEqual(
      [
        meter.iommuMapCalls,
        meter.iommuMapPages,
        meter.iommuUnmapCalls,
        meter.iommuUnmapPages,
        meter.iotlbInvalidations,
      ],
      [1, 16, 2, 16, 1],
    );
    dom.flush();
    assert.equal(meter.iotlbInvalidations, 2);
  });
});
