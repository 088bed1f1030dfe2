/**
 * The cost model's effects, in modelled time only (no wall clock): direction and rough size of
 * - Linux's IOVA allocator degrading linearly under fragmentation while ours stays logarithmic (FAST'15);
 * - strict unmap paying one IOTLB (and, with ATS, one device-IOTLB) invalidation per unmap, deferred one per 256,
 *   at the price of a window in which the device still reaches an unmapped page;
 * - the IOTLB reach wall when the working set exceeds the IOTLB, and 2 MiB pages recovering it.
 * And the cost table itself: every default in range, with a source, and overrides validated.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { iotlbReach, iovaFragmentation, strictVsDeferred } from "../src/compare/experiments.ts";
import { COST_TABLE, CostMeter, costModel, DEFAULT_COSTS, price, validateCost } from "../src/cost/index.ts";

describe("cost model: IOVA allocation under fragmentation (FAST'15)", () => {
  const [small, mid, big] = iovaFragmentation([1000, 4000, 16000]);

  it("Linux's walk grows linearly with the live ranges", () => {
    const grow = big!.linuxSteps / small!.linuxSteps;
    const ranges = big!.liveRanges / small!.liveRanges;
    assert.ok(grow > 0.7 * ranges && grow < 1.3 * ranges, `steps x${grow.toFixed(1)} for ranges x${ranges.toFixed(1)}`);
    assert.ok(mid!.linuxSteps > small!.linuxSteps && big!.linuxSteps > mid!.linuxSteps);
  });

  it("ours grows by a few steps at most (logarithmic), and is an order of magnitude cheaper at 8000 ranges", () => {
    assert.ok(big!.oursSteps - small!.oursSteps <= 4, `${small!.oursSteps} -> ${big!.oursSteps}`);
    assert.ok(big!.linuxNs > 20 * big!.oursNs, `${big!.linuxNs} ns vs ${big!.oursNs} ns`);
    assert.ok(small!.linuxNs > small!.oursNs);
  });
});

describe("cost model: strict vs deferred unmap", () => {
  const strict = strictVsDeferred("strict", 2048);
  const deferred = strictVsDeferred("deferred", 2048);

  it("strict invalidates the IOTLB at every unmap, deferred once per flush queue (256)", () => {
    assert.equal(strict.iotlbInvalidations, 2048);
    assert.equal(deferred.iotlbInvalidations, 2048 / 256);
    const saved = strict.nsPerPair - deferred.nsPerPair;
    const perInvalidation = DEFAULT_COSTS.iotlbInvalidationNs;
    assert.ok(saved > 0.9 * perInvalidation && saved < 1.1 * perInvalidation, `saves ${saved} ns per pair`);
  });

  it("ATS multiplies the difference: every strict unmap also waits for the device's ATC", () => {
    const s = strictVsDeferred("strict", 1024, { ats: true });
    const d = strictVsDeferred("deferred", 1024, { ats: true });
    assert.equal(s.atcInvalidations, 1024);
    assert.ok(
      s.nsPerPair - d.nsPerPair > strict.nsPerPair - deferred.nsPerPair + 0.9 * DEFAULT_COSTS.atcInvalidationNs,
    );
  });

  it("deferring leaves the unmapped page reachable until the flush; strict does not", () => {
    assert.equal(deferred.staleTranslationUsable, true);
    assert.equal(strict.staleTranslationUsable, false);
  });
});

describe("cost model: the IOTLB reach wall", () => {
  it("past the IOTLB's reach every access walks; 2 MiB pages recover it", () => {
    const fits = iotlbReach(512, "4K");
    const wall = iotlbReach(4096, "4K");
    const huge = iotlbReach(4096, "2M");
    assert.equal(fits.iotlbEntries, 1024);
    assert.ok(fits.hitRate > 0.99, `${fits.hitRate}`);
    assert.ok(wall.hitRate < 0.05, `${wall.hitRate}`);
    assert.ok(wall.nsPerAccess >= 3 * DEFAULT_COSTS.pageWalkReadNs, "a 4-level walk per access");
    assert.ok(huge.hitRate > 0.99, `${huge.hitRate}`);
    assert.ok(huge.nsPerAccess < wall.nsPerAccess / 20);
  });
});

describe("cost table", () => {
  it("every default is in its range and says where it comes from", () => {
    for (const e of COST_TABLE) {
      assert.equal(validateCost(e.key, e.defaultNs), undefined, e.key);
      assert.ok(e.source.length > 5, e.key);
    }
  });

  it("refuses out-of-range values with the unit and range", () => {
    assert.match(validateCost("iotlbInvalidationNs", -1)!, /from 0 ns to 1 ms per invalidation/);
    assert.match(validateCost("pinPageNs", Number.NaN)!, /per page/);
  });

  it("prices counts by the model (overrides apply)", () => {
    const m = new CostMeter();
    m.iommuMapCalls = 1;
    m.iommuMapPages = 256;
    const batch = price(m.snapshot(), costModel()).totalNs;
    assert.ok(batch >= 380 && batch <= 405, `a 256-page iommu_map costs ${batch} ns`);
    m.iommuMapPages = 1;
    assert.ok(Math.abs(price(m.snapshot(), costModel()).totalNs - 55) < 1);
    assert.equal(price(m.snapshot(), costModel({ iommuMapCallNs: 0, iommuMapPageNs: 0 })).totalNs, 0);
  });
});
