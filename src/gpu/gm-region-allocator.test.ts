import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type Gma, gma, KernelError } from "../core/index.ts";
import { GmRegionAllocator } from "./gm-region-allocator.ts";

const P = 4096;

describe("GmRegionAllocator", () => {
  it("allocates first fit from the bottom and merges neighbours on release", () => {
    const a = new GmRegionAllocator("t", 16 * P, 10 * P);
    const x = a.alloc(2 * P);
    const y = a.alloc(3 * P);
    const z = a.alloc(5 * P);
    assert.deepEqual([x, y, z], [16 * P, 18 * P, 21 * P]);
    assert.equal(a.alloc(P), undefined, "full");
    assert.equal(a.release(y!), 3 * P);
    assert.equal(a.largestFree(), 3 * P);
    assert.equal(a.alloc(4 * P), undefined, "3 pages free");
    a.release(x!);
    assert.deepEqual(a.freeExtents(), [{ base: 16 * P, size: 5 * P }], "merged with the hole after it");
    a.release(z!);
    assert.deepEqual(a.freeExtents(), [{ base: 16 * P, size: 10 * P }]);
    a.check();
  });

  it("honours alignment and rejects bad sizes and double frees", () => {
    const a = new GmRegionAllocator("t", P, 64 * P);
    assert.equal(a.alloc(P), P);
    assert.equal(a.alloc(4 * P, 8 * P), 8 * P);
    assert.throws(() => a.alloc(100), KernelError);
    assert.throws(() => a.release(gma(3 * P)), /not allocated/);
    a.release(gma(P));
    assert.throws(() => a.release(gma(P)), /double free/);
    a.check();
  });

  it("random alloc/release sequences keep pieces disjoint, inside the range and accounted (property)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 12 }), fc.nat()), { maxLength: 60 }),
        (ops) => {
          const a = new GmRegionAllocator("p", 8 * P, 64 * P);
          const live: Gma[] = [];
          for (const [alloc, pages, pick] of ops) {
            if (alloc || live.length === 0) {
              const base = a.alloc(pages * P);
              if (base !== undefined) live.push(base);
              else assert.ok(a.largestFree() < pages * P, "alloc failed although a range fits");
            } else {
              const [base] = live.splice(pick % live.length, 1);
              a.release(base!);
            }
            a.check();
          }
          assert.equal(a.allocations().length, live.length);
        },
      ),
      { numRuns: 200 },
    );
  });
});
