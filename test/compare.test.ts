/**
 * `vgpu compare`'s verdicts are the seed thread's: on the default workload the identity design's collision and the
 * GPA design's conflict are found by the isolation checker, per-VM IOVA and dma_map_page keep every VM in its
 * memory, and ATS shows its trust boundary. A design the scenario's host cannot run is refused before anything runs.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { type CompareResult, type DesignResult, refusals, runCompare } from "../src/compare/index.ts";
import { loadScenarioFile, parseScenario, type Scenario } from "../src/scenario/index.ts";

const WORKLOAD = new URL("../scenarios/compare.json", import.meta.url).pathname;

describe("vgpu compare on the default workload", () => {
  let result: CompareResult;
  const of = (id: string): DesignResult => result.results.find((r) => r.design.id === id)!;

  before(() => {
    result = runCompare(loadScenarioFile(WORKLOAD));
  });

  it("runs the six designs in the thread's order", () => {
    assert.deepEqual(
      result.results.map((r) => r.design.id),
      ["no-iommu", "identity", "gpa", "per-vm-iova", "dma-api", "ats"],
    );
    for (const r of result.results) {
      assert.equal(r.refused, undefined);
      assert.equal(r.error, undefined, `${r.design.id}: ${r.error?.message}`);
      assert.ok(r.dma.pieces > 1000, `${r.design.id} did DMA`);
    }
  });

  it("identity HPA->HPA: an address that is both a guest page's HPA and a host IOVA, and the DMA lands in the host's frame", () => {
    const r = of("identity");
    assert.ok(r.verdict.clashes > 0);
    const c = r.verdict.clashExamples[0]!;
    assert.equal(c.holder, "host");
    assert.equal(c.address, c.pfn * 4096, "the shadow GTT holds the guest page's own HPA");
    assert.notEqual(c.reachesPfn, c.pfn, "but the IOMMU sends it to another frame");
    assert.ok(r.verdict.violations > 0);
    assert.match(r.verdict.examples[0]!, /host driver/);
    assert.equal(r.verdict.isolated, false);
  });

  it("GPA->HPA: two VMs' GPAs conflict, one VM's DMA reaches another VM's frame", () => {
    const r = of("gpa");
    assert.ok(r.verdict.clashes > 0);
    const c = r.verdict.clashExamples[0]!;
    assert.equal(c.holder, "vgpu");
    assert.notEqual(c.holderVgpu, c.vgpu);
    assert.ok(r.verdict.violations > 0);
    assert.match(r.verdict.examples[0]!, /of VM vm\d/);
  });

  it("per-VM IOVA and dma_map_page: 0 violations; per-VM ranges take far more IOVA space", () => {
    for (const id of ["per-vm-iova", "dma-api"]) {
      assert.equal(of(id).verdict.violations, 0, id);
      assert.equal(of(id).verdict.isolated, true, id);
    }
    assert.ok(of("per-vm-iova").iovaSpaceBytes > 100 * of("dma-api").iovaSpaceBytes);
  });

  it("no IOMMU: no IOMMU translation, no map call, and a translated write reaches any frame", () => {
    const r = of("no-iommu");
    assert.equal(r.verdict.violations, 0, "the mediator alone keeps DMA inside each VM");
    assert.equal(r.translations.iommuPerDma, 0);
    assert.equal(r.counts.iommuMapCalls, 0);
    assert.equal(r.verdict.trust?.translatedWrite, "reached");
  });

  it("ATS: pre-translated requests, ATC invalidations, and translated writes pass unchecked until ATS is disabled", () => {
    const r = of("ats");
    assert.equal(r.verdict.violations, 0);
    assert.ok(r.translations.preTranslatedPerDma > 0);
    assert.ok(r.translations.iommuPerDma < of("dma-api").translations.iommuPerDma);
    assert.ok(r.counts.atcInvalidations > 0);
    assert.equal(of("dma-api").counts.atcInvalidations, 0);
    assert.equal(r.verdict.trust?.translatedWrite, "reached");
    assert.equal(r.verdict.trust?.afterAtsDisabled, "blocked");
    assert.equal(of("dma-api").verdict.trust?.translatedWrite, "blocked", "without ATS the IOMMU blocks them");
  });

  it("prices every run: IOMMU designs pay maps and invalidations, ATS pays device-IOTLB invalidations", () => {
    assert.ok(of("dma-api").chainNs > of("no-iommu").chainNs);
    assert.ok(of("ats").chainNs > of("dma-api").chainNs);
    for (const r of result.results) assert.ok(r.modelledNs >= r.engineNs);
  });
});

describe("a comparison is replayable and priced by the file's costs", () => {
  it("same scenario and seed: the same figures; a cost override moves the modelled time only", () => {
    const s = loadScenarioFile(WORKLOAD);
    const a = runCompare(s, { designs: ["dma-api"] }).results[0]!;
    const b = runCompare(s, { designs: ["dma-api"] }).results[0]!;
    assert.deepEqual(a.counts, b.counts);
    assert.equal(a.chainNs, b.chainNs);
    const dearer = runCompare(s, { designs: ["dma-api"], costs: { iotlbInvalidationNs: 1250 } }).results[0]!;
    assert.deepEqual(dearer.counts, a.counts);
    assert.equal(dearer.chainNs - a.chainNs, 1000 * a.counts.iotlbInvalidations);
    assert.throws(() => runCompare(s, { designs: ["dma-api"], costs: { pinPageNs: -5 } }), /costs\.pinPageNs: must be/);
  });
});

describe("designs a host cannot run", () => {
  const base = (host: Record<string, unknown>): Scenario =>
    parseScenario({
      name: "t",
      host,
      vms: [{ name: "a", memory: "256 MiB", devices: [{ kind: "vgpu", gpu: "g", type: "GVTg_V5_8" }] }],
    });

  it("refuses IOMMU designs on a host without one, and no-iommu with ATS, before anything runs", () => {
    const off = refusals(base({ iommu: false, gpus: [{ name: "g" }] }));
    assert.deepEqual(
      off.map((r) => r.id),
      ["identity", "gpa", "per-vm-iova", "dma-api", "ats"],
    );
    assert.match(off[0]!.reason, /host\.iommu is false/);
    const ats = refusals(base({ gpus: [{ name: "g", ats: true }] }));
    assert.deepEqual(
      ats.map((r) => r.id),
      ["no-iommu"],
    );
    assert.match(ats[0]!.reason, /host\.gpus\[0\].*ATS/);
  });

  it("refuses identity when the GPU's DMA mask cannot reach every HPA", () => {
    const r = refusals(base({ memory: "16 GiB", gpus: [{ name: "g", dmaMaskBits: 32 }] }));
    assert.deepEqual(
      r.map((x) => x.id),
      ["identity"],
    );
    assert.match(r[0]!.reason, /32 bits/);
  });

  it("a refused design is reported, not run", () => {
    const s = base({ iommu: false, gpus: [{ name: "g" }] });
    const out = runCompare(s, { designs: ["dma-api"] });
    assert.match(out.results[0]!.refused ?? "", /host\.iommu/);
    assert.equal(out.results[0]!.dma.pieces, 0);
  });

  it("validates cost overrides and designs in scenario files with the JSON path", () => {
    const bad = (extra: Record<string, unknown>) => () => parseScenario({ name: "t", vms: [], ...extra }, "x.json");
    assert.throws(bad({ costs: { iommuMapCallNs: -1 } }), /x\.json: costs\.iommuMapCallNs: must be a time from 0 ns/);
    assert.throws(bad({ costs: { iommuMapCallNs: "5 parsecs" } }), /costs\.iommuMapCallNs/);
    assert.throws(bad({ costs: { warpDrive: 1 } }), /costs: unknown member/);
    assert.throws(bad({ designs: ["teleport"] }), /designs\[0\]: must be one of/);
    assert.throws(bad({ designs: ["ats", "ats"] }), /designs\[1\]: design "ats" is listed twice/);
    const ok = parseScenario({ name: "t", vms: [], costs: { iotlbInvalidationNs: "1.5 us" }, designs: ["ats"] });
    assert.equal(ok.costs.iotlbInvalidationNs, 1500);
    assert.deepEqual(ok.designs, ["ats"]);
  });
});
