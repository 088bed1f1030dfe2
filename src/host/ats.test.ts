import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { hpa, iova, Rng, SZ_1G, TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { Atc } from "./ats.ts";
import { parseBdf } from "./bdf.ts";
import { IOMMU_READ, IOMMU_WRITE } from "./io-pgtable.ts";
import { Iommu } from "./iommu.ts";
import { PhysicalMemory } from "./physmem.ts";

const SZ_4K = 4096;
const RW = IOMMU_READ | IOMMU_WRITE;
const GPU = parseBdf("0000:00:02.0");
const NIC = parseBdf("0000:03:00.0");

const mk = (atc = { entries: 16, ways: 4 }) => {
  const clock = new VirtualClock();
  const tracer = new Tracer(clock);
  const rec = new TraceRecorder(tracer);
  const physmem = new PhysicalMemory({ sizeBytes: SZ_1G, tracer });
  const iommu = new Iommu({ physmem, clock, tracer, rng: new Rng(1), enabled: true, atc });
  return { iommu, rec };
};

describe("Atc", () => {
  it("caches translation-request answers and drops them on device-IOTLB invalidation", () => {
    const atc = new Atc(GPU, { entries: 8, ways: 2, replacement: "lru" });
    atc.fill(5, 0x100, RW);
    atc.fill(6, 0x101, IOMMU_READ);
    const s = atc.lookup(6);
    assert.equal(atc.frame(s), 0x101);
    assert.equal(atc.prot(s), IOMMU_READ);
    atc.invalidateRange(6, 1);
    assert.equal(atc.lookup(6), -1);
    assert.ok(atc.lookup(5) >= 0);
    atc.invalidateAll();
    assert.equal(atc.lookup(5), -1);
    const st = atc.stats();
    assert.equal(st.translationRequests, 2);
    assert.equal(st.invalidations, 2);
    assert.equal(st.hits, 2);
    assert.equal(st.misses, 2);
  });
});

describe("ATS through the Iommu", () => {
  it("serves repeated accesses from the ATC as pre-translated requests, without IOTLB lookups", () => {
    const { iommu, rec } = mk();
    iommu.addDevice(GPU, { ats: true });
    const d = iommu.domainOf(GPU);
    d.map(iova(0x10000), hpa(0x30000), 2 * SZ_4K, RW);
    assert.equal(iommu.translate(GPU, iova(0x10008), IOMMU_READ), 0x30008);
    const s1 = iommu.stats();
    assert.equal(s1.atsTranslationRequests, 1);
    assert.equal(s1.atsHits, 0);
    assert.equal(s1.walks, 1);
    for (let i = 0; i < 5; i++) assert.equal(iommu.translate(GPU, iova(0x10010 + i), IOMMU_WRITE), 0x30010 + i);
    const s2 = iommu.stats();
    assert.equal(s2.atsHits, 5);
    assert.equal(s2.iotlbHits + s2.iotlbMisses, s1.iotlbHits + s1.iotlbMisses, "the IOTLB was not consulted");
    assert.deepEqual(rec.named("ats.translate")[0]!.fields, {
      bdf: GPU,
      domain: d.id,
      iova: 0x10000,
      hpa: 0x30000,
      prot: RW,
    });
    assert.equal(s2.atcs.length, 1);
    assert.equal(s2.atcs[0]!.hits, 5);
  });

  it("a device without ATS never gets an ATC", () => {
    const { iommu } = mk();
    iommu.addDevice(GPU);
    iommu.domainOf(GPU).map(iova(0), hpa(0x5000), SZ_4K, RW);
    iommu.translate(GPU, iova(0), IOMMU_READ);
    iommu.translate(GPU, iova(0), IOMMU_READ);
    assert.equal(iommu.device(GPU).atc, undefined);
    assert.equal(iommu.stats().atsHits, 0);
    assert.equal(iommu.stats().iotlbHits, 1);
  });

  it("invalidates the ATC of every attached ATS device when the domain's IOTLB is invalidated", () => {
    const { iommu, rec } = mk();
    iommu.addDevice(GPU, { ats: true });
    iommu.addDevice(NIC, { group: 0, ats: true });
    const d = iommu.domainOf(GPU);
    d.map(iova(0x10000), hpa(0x30000), SZ_4K, RW);
    assert.equal(iommu.translate(GPU, iova(0x10000), IOMMU_READ), 0x30000);
    assert.equal(iommu.translate(NIC, iova(0x10000), IOMMU_READ), 0x30000);
    rec.clear();
    d.unmap(iova(0x10000), SZ_4K);
    const inv = rec.named("ats.invalidate").map((r) => r.fields);
    assert.deepEqual(inv, [
      { bdf: GPU, domain: d.id, granularity: "page", iova: 0x10000, size: SZ_4K },
      { bdf: NIC, domain: d.id, granularity: "page", iova: 0x10000, size: SZ_4K },
    ]);
    // The IOTLB invalidation comes first, then the device-IOTLB ones.
    assert.deepEqual(
      rec.records.map((r) => r.name),
      ["iommu.iotlb.inval", "ats.invalidate", "ats.invalidate", "iommu.unmap"],
    );
    assert.equal(iommu.translate(GPU, iova(0x10000), IOMMU_READ), -1);
    assert.equal(iommu.translate(NIC, iova(0x10000), IOMMU_READ), -1);
    assert.equal(iommu.stats().atsInvalidations, 2);
  });

  it("flushes a device's ATC when its group changes domain", () => {
    const { iommu, rec } = mk();
    iommu.addDevice(GPU, { ats: true });
    const def = iommu.domainOf(GPU);
    def.map(iova(0), hpa(0x1000), SZ_4K, RW);
    const u = iommu.allocDomain("unmanaged");
    u.map(iova(0), hpa(0x2000), SZ_4K, RW);
    assert.equal(iommu.translate(GPU, iova(0), IOMMU_READ), 0x1000);
    iommu.attachGroup(0, u);
    assert.equal(iommu.translate(GPU, iova(0), IOMMU_READ), 0x2000);
    iommu.detachGroup(0);
    assert.equal(iommu.translate(GPU, iova(0), IOMMU_READ), 0x1000);
    assert.equal(rec.named("ats.invalidate").filter((r) => r.fields.granularity === "all").length, 2);
    // Unmapping in the domain the device left sends it nothing.
    rec.clear();
    u.unmap(iova(0), SZ_4K);
    assert.equal(rec.count("ats.invalidate"), 0);
  });

  it("a domain-wide flush reaches the ATCs too", () => {
    const { iommu } = mk();
    iommu.addDevice(GPU, { ats: true });
    const d = iommu.domainOf(GPU);
    d.map(iova(0), hpa(0x1000), SZ_4K, RW);
    iommu.translate(GPU, iova(0), IOMMU_READ);
    d.unmap(iova(0), SZ_4K, { flush: false });
    assert.equal(iommu.translate(GPU, iova(0), IOMMU_READ), 0x1000, "stale in the ATC until the flush");
    d.flush();
    assert.equal(iommu.translate(GPU, iova(0), IOMMU_READ), -1);
    d.map(iova(0), hpa(0x3000), SZ_4K, RW);
    iommu.translate(GPU, iova(0), IOMMU_READ);
    d.unmap(iova(0), SZ_4K, { flush: false });
    iommu.invalidateAll();
    assert.equal(iommu.translate(GPU, iova(0), IOMMU_READ), -1);
  });

  it("the ATC is invalidated with the IOTLB: no stale translation under random ops (property, vs a Map model)", () => {
    const op = fc.oneof(
      fc.record({
        t: fc.constant("map" as const),
        page: fc.integer({ min: 0, max: 23 }),
        n: fc.integer({ min: 1, max: 3 }),
        frame: fc.integer({ min: 1, max: 500 }),
        prot: fc.constantFrom(1, 2, 3),
      }),
      fc.record({
        t: fc.constant("unmap" as const),
        page: fc.integer({ min: 0, max: 23 }),
        n: fc.integer({ min: 1, max: 5 }),
      }),
      fc.record({
        t: fc.constant("xlate" as const),
        page: fc.integer({ min: 0, max: 25 }),
        access: fc.constantFrom(1, 2) as fc.Arbitrary<1 | 2>,
        dev: fc.constantFrom(0, 1),
      }),
    );
    fc.assert(
      fc.property(fc.array(op, { minLength: 40, maxLength: 150, size: "max" }), (ops) => {
        const { iommu } = mk({ entries: 4, ways: 2 });
        const devs = [GPU, NIC];
        iommu.addDevice(GPU, { ats: true });
        iommu.addDevice(NIC, { group: 0, ats: true });
        const d = iommu.domainOf(GPU);
        const model = new Map<number, { frame: number; prot: number }>();
        for (const o of ops) {
          if (o.t === "map") {
            let clash = false;
            for (let p = o.page; p < o.page + o.n; p++) if (model.has(p)) clash = true;
            if (clash) continue;
            d.map(iova(o.page * SZ_4K), hpa(o.frame * SZ_4K), o.n * SZ_4K, o.prot);
            for (let p = o.page; p < o.page + o.n; p++) model.set(p, { frame: o.frame + p - o.page, prot: o.prot });
          } else if (o.t === "unmap") {
            for (let p = o.page; p < o.page + o.n; p++) model.delete(p);
            d.unmap(iova(o.page * SZ_4K), o.n * SZ_4K);
          } else {
            const got = iommu.translate(devs[o.dev]!, iova(o.page * SZ_4K), o.access);
            const want = model.get(o.page);
            assert.equal(got, want !== undefined && (want.prot & o.access) !== 0 ? want.frame * SZ_4K : -1);
          }
        }
      }),
      { numRuns: 150 },
    );
  });
});
