/**
 * The mapping tree (vfio_find_dma and friends) against a plain sorted array, and the pin pool.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Host } from "../../host/index.ts";
import { DmaTree, PinPool, VfioDma } from "./dma-map.ts";

const mm = new Host({ memoryBytes: 64 * 1024 * 1024 }).spawn("t").mm;
const P = 4096;
const dma = (page: number, pages: number) => new VfioDma(page * P, 0, pages * P, 3, mm);

describe("DmaTree", () => {
  it("finds overlapping mappings, the first ending above an address, neighbours", () => {
    const t = new DmaTree();
    const a = dma(10, 5);
    const b = dma(20, 1);
    const c = dma(15, 2);
    t.insert(a);
    t.insert(b);
    t.insert(c);
    assert.deepEqual(t.toArray(), [a, c, b]);
    assert.equal(t.find(10 * P, 1), a);
    assert.equal(t.find(14 * P, 0), a);
    assert.equal(t.find(17 * P, 3 * P), undefined);
    assert.equal(t.find(17 * P, 3 * P + 1), b);
    assert.equal(t.find(0, 10 * P), undefined);
    assert.equal(t.firstFrom(16 * P), c);
    assert.equal(t.firstFrom(17 * P), b);
    assert.equal(t.firstFrom(21 * P), undefined);
    assert.equal(t.next(a), c);
    assert.equal(t.prev(b), c);
    assert.equal(t.prev(a), undefined);
    t.remove(c);
    assert.equal(t.next(a), b);
    assert.throws(() => t.remove(c), /not in the tree/);
    t.checkInvariants();
  });

  it("agrees with a sorted array under random inserts and removals (property)", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            page: fc.integer({ min: 0, max: 2000 }),
            pages: fc.integer({ min: 1, max: 4 }),
            del: fc.boolean(),
          }),
          {
            maxLength: 400,
          },
        ),
        fc.array(fc.integer({ min: 0, max: 2010 * P }), { maxLength: 30 }),
        (ops, probes) => {
          const t = new DmaTree();
          let ref: VfioDma[] = [];
          for (const op of ops) {
            const hit = ref.find((d) => op.page * P < d.end && (op.page + op.pages) * P > d.iova);
            if (op.del && hit) {
              t.remove(hit);
              ref = ref.filter((d) => d !== hit);
            } else if (!hit) {
              const d = dma(op.page, op.pages);
              t.insert(d);
              ref.push(d);
              ref.sort((x, y) => x.iova - y.iova);
            }
          }
          t.checkInvariants();
          assert.deepEqual(t.toArray(), ref);
          assert.equal(t.size, ref.length);
          for (const a of probes) {
            assert.equal(
              t.firstFrom(a),
              ref.find((d) => d.end > a),
            );
            assert.equal(
              t.find(a, P),
              ref.find((d) => a < d.end && a + P > d.iova),
            );
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe("VfioDma runs", () => {
  it("merges contiguous runs and finds frames by page", () => {
    const d = dma(0, 100);
    d.addRun(0, 500, 10);
    d.addRun(10, 510, 5);
    d.addRun(15, 900, 5);
    assert.equal(d.runCount, 2);
    assert.equal(d.iommuPinnedPages, 20);
    assert.equal(d.iommuPfnAt(12), 512);
    assert.equal(d.iommuPfnAt(17), 902);
    assert.equal(d.iommuPfnAt(20), -1);
    for (let i = 0; i < 20; i++) d.addRun(20 + i, 2000 + 2 * i, 1);
    assert.equal(d.runCount, 22);
    assert.equal(d.iommuPfnAt(39), 2038);
    d.clearRuns();
    assert.equal(d.iommuPinnedPages, 0);
  });
});

describe("PinPool", () => {
  it("reuses released slots and grows", () => {
    const p = new PinPool(2);
    const a = p.alloc(7);
    const b = p.alloc(8);
    const c = p.alloc(9);
    assert.deepEqual([p.pfn[a], p.pfn[b], p.pfn[c]], [7, 8, 9]);
    assert.equal(p.live, 3);
    p.release(b);
    assert.equal(p.alloc(10), b);
    assert.equal(p.ref[b], 1);
    assert.equal(p.live, 3);
  });
});
