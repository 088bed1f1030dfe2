/**
 * The guest's page allocator over the VMM's RAM blocks: runs of pages never overlap, stay inside their block, coalesce back when
 * freed; named blocks come and go with hot-plug.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type Gpa, gpa, PAGE_SIZE } from "../core/index.ts";
import { BlockPageAllocator, GUEST_ALLOC_START, type GuestRamRange } from "./guest-pages.ts";

const MiB = 1024 * 1024;
const blocks: GuestRamRange[] = [
  { name: "ram-below-4g", gpa: gpa(0), size: 16 * MiB },
  { name: "dimm0", gpa: gpa(2 ** 32), size: 4 * MiB },
];

describe("BlockPageAllocator", () => {
  it("never hands out overlapping runs, stays in RAM above 1 MiB, and coalesces back to whole blocks", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 1, max: 64 }), fc.boolean()), { maxLength: 60 }), (ops) => {
        const a = new BlockPageAllocator(blocks);
        const live: { at: Gpa; n: number }[] = [];
        for (const [n, free] of ops) {
          if (free && live.length > 0) {
            const x = live.splice(n % live.length, 1)[0]!;
            a.freePages(x.at, x.n);
            continue;
          }
          let at: Gpa;
          try {
            at = a.allocPages(n);
          } catch {
            continue;
          }
          const end = at + n * PAGE_SIZE;
          assert.ok(blocks.some((b) => at >= Math.max(b.gpa, GUEST_ALLOC_START) && end <= b.gpa + b.size));
          for (const y of live) assert.ok(end <= y.at || at >= y.at + y.n * PAGE_SIZE, "no overlap");
          live.push({ at, n });
        }
        for (const x of live) a.freePages(x.at, x.n);
        assert.equal(a.livePages, 0);
        // Everything coalesced: the largest runs fit again.
        assert.equal(a.allocPagesIn("ram-below-4g", (16 * MiB - GUEST_ALLOC_START) / PAGE_SIZE), GUEST_ALLOC_START);
        assert.equal(a.allocPagesIn("dimm0", (4 * MiB) / PAGE_SIZE), 2 ** 32);
      }),
      { numRuns: 100 },
    );
  });

  it("allocates from a named block, and forgets a removed block's allocations", () => {
    const a = new BlockPageAllocator(blocks);
    a.only = "dimm0";
    const at = a.allocPages(2);
    a.only = undefined;
    assert.equal(at, 2 ** 32);
    assert.throws(() => a.allocPagesIn("dimm9", 1), /no RAM block "dimm9" \(blocks: ram-below-4g, dimm0\)/);
    assert.throws(() => a.allocPagesIn("dimm0", 2048), /ENOMEM|no 2048 contiguous free pages/);
    a.removeBlock("dimm0");
    assert.equal(a.livePages, 0);
    a.freePages(at, 2); // the memory went with the block: nothing to give back
    assert.deepEqual(a.blockNames(), ["ram-below-4g"]);
    a.addBlock({ name: "dimm1", gpa: gpa(2 ** 33), size: 2 * MiB });
    assert.deepEqual(a.blockNames(), ["ram-below-4g", "dimm1"]);
  });
});
