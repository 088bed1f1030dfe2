import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, gma, isKernelError, PAGE_SIZE } from "../core/index.ts";
import { GmAllocator } from "./gm.ts";

const MiB = 1024 * 1024;
const expectErrno = (fn: () => unknown, errno: number) =>
  assert.throws(fn, (e) => isKernelError(e) && e.errno === errno);

function balloon() {
  // A vGPU's partition: 1 MiB of aperture at 128 MiB, 2 MiB of hidden at 1 GiB.
  return new GmAllocator([{ base: gma(128 * MiB), size: MiB }], [{ base: gma(1024 * MiB), size: 2 * MiB }]);
}

describe("guest GM allocator (ballooning)", () => {
  it("hands out only addresses inside the owned ranges, non-mappable first by default", () => {
    const a = balloon();
    const x = a.alloc(5000);
    assert.equal(x.base, 1024 * MiB);
    assert.equal(x.size, 2 * PAGE_SIZE);
    assert.equal(x.zone, "nonmappable");
    const y = a.alloc(PAGE_SIZE, { zone: "mappable" });
    assert.equal(y.base, 128 * MiB);
    assert.equal(a.owns(128 * MiB - 1), false);
    assert.equal(a.owns(128 * MiB, MiB), true);
    assert.equal(a.owns(128 * MiB, MiB + 1), false);
    assert.equal(a.zoneOf(1024 * MiB + 5), "nonmappable");
    assert.equal(a.zoneOf(0), undefined);
    a.checkInvariants();
  });

  it("falls back to the mappable zone, then fails with ENOSPC naming both zones", () => {
    const a = balloon();
    a.alloc(2 * MiB);
    const m = a.alloc(MiB);
    assert.equal(m.zone, "mappable");
    assert.throws(
      () => a.alloc(PAGE_SIZE),
      (e) => isKernelError(e) && e.errno === Errno.ENOSPC && /nonmappable has 0 of 2097152 bytes free/.test(e.message),
    );
  });

  it("aligns, coalesces on release, and rejects bad releases and arguments", () => {
    const a = balloon();
    const p1 = a.alloc(PAGE_SIZE, { zone: "mappable" });
    const p2 = a.alloc(64 * 1024, { zone: "mappable", align: 64 * 1024 });
    assert.equal(p2.base % (64 * 1024), 0);
    assert.equal(a.freeBytes("mappable"), MiB - PAGE_SIZE - 64 * 1024);
    a.release(p1.base);
    a.release(p2.base);
    assert.equal(a.freeBytes("mappable"), MiB);
    assert.equal(a.alloc(MiB, { zone: "mappable" }).base, 128 * MiB, "one extent again after coalescing");
    expectErrno(() => a.release(gma(p2.base + PAGE_SIZE)), Errno.EINVAL);
    expectErrno(() => a.alloc(0), Errno.EINVAL);
    expectErrno(() => a.alloc(PAGE_SIZE, { align: 100 }), Errno.EINVAL);
    expectErrno(() => new GmAllocator([{ base: gma(10), size: PAGE_SIZE }], []), Errno.EINVAL);
    expectErrno(
      () => new GmAllocator([{ base: gma(0), size: 2 * PAGE_SIZE }], [{ base: gma(PAGE_SIZE), size: PAGE_SIZE }]),
      Errno.EINVAL,
    );
  });

  it("keeps its invariants and never leaves the balloon under random alloc/free sequences", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({
              op: fc.constant("alloc" as const),
              pages: fc.integer({ min: 1, max: 96 }),
              zone: fc.constantFrom("mappable" as const, "nonmappable" as const, undefined),
              alignPages: fc.constantFrom(1, 2, 16),
            }),
            fc.record({ op: fc.constant("free" as const), pick: fc.nat() }),
          ),
          { maxLength: 60 },
        ),
        (ops) => {
          const a = balloon();
          const live: number[] = [];
          for (const o of ops) {
            if (o.op === "alloc") {
              try {
                const r = a.alloc(o.pages * PAGE_SIZE, {
                  ...(o.zone ? { zone: o.zone } : {}),
                  align: o.alignPages * PAGE_SIZE,
                });
                assert.ok(a.owns(r.base, r.size), "inside the balloon");
                if (o.zone) assert.equal(r.zone, o.zone);
                for (const b of live) assert.ok(b !== r.base);
                live.push(r.base);
              } catch (e) {
                assert.ok(isKernelError(e) && e.errno === Errno.ENOSPC);
              }
            } else if (live.length > 0) {
              const [b] = live.splice(o.pick % live.length, 1);
              a.release(gma(b!));
            }
            a.checkInvariants();
          }
          assert.equal(a.allocations, live.length);
        },
      ),
      { numRuns: 60 },
    );
  });
});
