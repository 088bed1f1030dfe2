import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, KernelError, Rng } from "../core/index.ts";
import { Iotlb, type Replacement } from "./iotlb.ts";

const full = (ways: number, replacement: Replacement, seed = 1) =>
  new Iotlb({ entries: ways, ways, replacement, rng: new Rng(seed) });

const frameOf = (t: Iotlb, d: number, p: number): number | undefined => {
  const s = t.lookup(d, p);
  return s < 0 ? undefined : t.frame(s);
};

describe("Iotlb", () => {
  it("caches (domain, page) -> (frame, prot) and counts hits and misses", () => {
    const t = new Iotlb({ entries: 64, ways: 4, replacement: "lru" });
    assert.equal(t.lookup(1, 5), -1);
    t.fill(1, 5, 0x1234, 3);
    const s = t.lookup(1, 5);
    assert.ok(s >= 0);
    assert.equal(t.frame(s), 0x1234);
    assert.equal(t.prot(s), 3);
    assert.equal(t.lookup(2, 5), -1, "another domain's page is a different key");
    // Page numbers above 2^32 are distinct keys.
    t.fill(1, 2 ** 35 + 5, 0x99, 1);
    assert.equal(frameOf(t, 1, 2 ** 35 + 5), 0x99);
    assert.equal(frameOf(t, 1, 5), 0x1234);
    assert.deepEqual([t.hits, t.misses, t.fills], [3, 2, 2]);
    // Refilling a key replaces it in place.
    t.fill(1, 5, 0x4321, 1);
    assert.equal(frameOf(t, 1, 5), 0x4321);
    assert.equal(t.occupied(), 2);
  });

  it("evicts the least recently used way under 'lru'", () => {
    const t = full(2, "lru");
    t.fill(1, 10, 100, 3);
    t.fill(1, 11, 101, 3);
    t.lookup(1, 10); // 10 is now more recent than 11
    t.fill(1, 12, 102, 3);
    assert.equal(frameOf(t, 1, 11), undefined);
    assert.equal(frameOf(t, 1, 10), 100);
    assert.equal(frameOf(t, 1, 12), 102);
    assert.equal(t.evictions, 1);
  });

  it("evicts the oldest fill under 'fifo', ignoring hits", () => {
    const t = full(2, "fifo");
    t.fill(1, 10, 100, 3);
    t.fill(1, 11, 101, 3);
    t.lookup(1, 10);
    t.fill(1, 12, 102, 3);
    assert.equal(frameOf(t, 1, 10), undefined);
    assert.equal(frameOf(t, 1, 11), 101);
  });

  it("evicts a random way under 'random', reproducibly from the seed", () => {
    const run = (seed: number) => {
      const t = full(4, "random", seed);
      for (let p = 0; p < 40; p++) t.fill(1, p, p, 3);
      const kept: number[] = [];
      for (let p = 0; p < 40; p++) if (t.lookup(1, p) >= 0) kept.push(p);
      return { kept, evictions: t.evictions };
    };
    const a = run(7);
    assert.deepEqual(a, run(7));
    assert.equal(a.kept.length, 4);
    assert.equal(a.evictions, 36);
    assert.ok(a.kept.includes(39), "the last fill is always present");
    assert.throws(() => new Iotlb({ entries: 4, ways: 4, replacement: "random" }), /needs an injected Rng/);
  });

  it("invalidates by page, by range (both strategies), by domain in O(1), and globally", () => {
    const t = new Iotlb({ entries: 256, ways: 4, replacement: "lru" });
    for (let p = 0; p < 40; p++) {
      t.fill(1, p, 1000 + p, 3);
      t.fill(2, p, 2000 + p, 3);
    }
    t.invalidatePage(1, 3);
    assert.equal(frameOf(t, 1, 3), undefined);
    assert.equal(frameOf(t, 2, 3), 2003);
    t.invalidateRange(1, 10, 5); // small: probes pages
    for (let p = 10; p < 15; p++) assert.equal(frameOf(t, 1, p), undefined);
    assert.equal(frameOf(t, 1, 15), 1015);
    assert.equal(frameOf(t, 1, 9), 1009);
    t.invalidateRange(1, 20, 1_000_000); // huge: scans the slots
    for (let p = 20; p < 40; p++) assert.equal(frameOf(t, 1, p), undefined);
    assert.equal(frameOf(t, 1, 19), 1019);
    assert.equal(frameOf(t, 2, 30), 2030);
    t.invalidateDomain(2);
    for (let p = 0; p < 40; p++) assert.equal(frameOf(t, 2, p), undefined);
    assert.equal(frameOf(t, 1, 0), 1000);
    // Slots of an invalidated domain are reused as free (no eviction counted).
    const ev = t.evictions;
    t.fill(2, 5, 7, 3);
    assert.equal(frameOf(t, 2, 5), 7);
    assert.equal(t.evictions, ev);
    t.invalidateAll();
    assert.equal(t.occupied(), 0);
    assert.deepEqual(
      [t.pageInvalidations, t.rangeInvalidations, t.domainInvalidations, t.globalInvalidations],
      [1, 2, 1, 1],
    );
  });

  it("with 0 entries is disabled: every lookup misses and fills are dropped", () => {
    const t = new Iotlb({ entries: 0, ways: 8, replacement: "lru" });
    assert.equal(t.fill(1, 1, 1, 3), -1);
    assert.equal(t.lookup(1, 1), -1);
    assert.equal(t.misses, 1);
  });

  it("rejects impossible geometries", () => {
    const bad = (fn: () => unknown) =>
      assert.throws(fn, (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL);
    bad(() => new Iotlb({ entries: 10, ways: 4, replacement: "lru" }));
    bad(() => new Iotlb({ entries: -1, ways: 1, replacement: "lru" }));
    bad(() => new Iotlb({ entries: 8, ways: 0, replacement: "lru" }));
    bad(() => new Iotlb({ entries: 8, ways: 8, replacement: "mru" as Replacement }));
  });

  it("never returns a stale translation under random fills and invalidations (property, vs a Map model)", () => {
    const op = fc.oneof(
      fc.record({
        t: fc.constant(0),
        d: fc.integer({ min: 0, max: 3 }),
        p: fc.integer({ min: 0, max: 63 }),
        f: fc.nat(1e6),
      }),
      fc.record({
        t: fc.constant(1),
        d: fc.integer({ min: 0, max: 3 }),
        p: fc.integer({ min: 0, max: 63 }),
        f: fc.nat(),
      }),
      fc.record({
        t: fc.constant(2),
        d: fc.integer({ min: 0, max: 3 }),
        p: fc.integer({ min: 0, max: 63 }),
        f: fc.nat(70),
      }),
      fc.record({ t: fc.constant(3), d: fc.integer({ min: 0, max: 3 }), p: fc.nat(), f: fc.nat() }),
      fc.record({ t: fc.constant(4), d: fc.nat(), p: fc.nat(), f: fc.nat() }),
    );
    const geometry = fc.record({
      ways: fc.constantFrom(1, 2, 4, 8),
      sets: fc.constantFrom(1, 2, 3, 8),
      replacement: fc.constantFrom<Replacement>("lru", "fifo", "random"),
    });
    fc.assert(
      fc.property(geometry, fc.array(op, { minLength: 50, maxLength: 300, size: "max" }), (g, ops) => {
        const t = new Iotlb({ entries: g.ways * g.sets, ways: g.ways, replacement: g.replacement, rng: new Rng(3) });
        const model = new Map<string, number>();
        for (const o of ops) {
          const key = `${o.d}:${o.p}`;
          switch (o.t) {
            case 0:
              t.fill(o.d, o.p, o.f, 3);
              model.set(key, o.f);
              break;
            case 1: {
              const s = t.lookup(o.d, o.p);
              // The cache may have forgotten (capacity), but never invents or serves an invalidated value.
              if (s >= 0) assert.equal(t.frame(s), model.get(key), `stale or invented translation for ${key}`);
              break;
            }
            case 2:
              t.invalidateRange(o.d, o.p, o.f);
              for (let p = o.p; p < o.p + o.f; p++) model.delete(`${o.d}:${p}`);
              break;
            case 3:
              t.invalidateDomain(o.d);
              for (const k of [...model.keys()]) if (k.startsWith(`${o.d}:`)) model.delete(k);
              break;
            default:
              t.invalidateAll();
              model.clear();
          }
        }
        for (let d = 0; d < 4; d++) {
          for (let p = 0; p < 64; p++) {
            const s = t.lookup(d, p);
            if (s >= 0) assert.equal(t.frame(s), model.get(`${d}:${p}`));
          }
        }
        assert.ok(t.occupied() <= model.size);
      }),
      { numRuns: 200 },
    );
  });
});
