import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, formatTrace, KernelError, TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { IovaDomain, type IovaDomainOptions } from "./iova.ts";
import { LinearIovaDomain } from "./iova-reference.ts";

function domain(opts: Partial<IovaDomainOptions> = {}): { d: IovaDomain; rec: TraceRecorder; clock: VirtualClock } {
  const clock = new VirtualClock();
  const tracer = new Tracer(clock);
  const rec = new TraceRecorder(tracer);
  const d = new IovaDomain({ startPfn: 1, clock, tracer, name: "test", ...opts });
  return { d, rec, clock };
}

function pair(startPfn: number, dma32Pfn: number): { d: IovaDomain; r: LinearIovaDomain } {
  const clock = new VirtualClock();
  return {
    d: new IovaDomain({ startPfn, dma32Pfn, clock, tracer: new Tracer(clock) }),
    r: new LinearIovaDomain({ startPfn, dma32Pfn }),
  };
}

function expectSame(d: IovaDomain, r: LinearIovaDomain): void {
  assert.deepEqual(d.ranges(), r.ranges());
  assert.deepEqual(d.state(), r.state());
}

const isEinval = (e: unknown): boolean => e instanceof KernelError && e.errno === Errno.EINVAL;

type Op =
  | { kind: "alloc"; size: number; limitSel: number; limitRaw: number; aligned: boolean }
  | { kind: "free"; pick: number; offset: number; raw: boolean }
  | { kind: "reserve"; lo: number; len: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("alloc" as const),
      size: fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 40 })),
      limitSel: fc.integer({ min: 0, max: 3 }),
      limitRaw: fc.nat(),
      aligned: fc.boolean(),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("free" as const),
      pick: fc.nat(),
      offset: fc.integer({ min: -1, max: 2 }),
      raw: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant("reserve" as const),
      lo: fc.integer({ min: 0, max: 200 }),
      len: fc.integer({ min: 0, max: 12 }),
    }),
  },
);

/** A limit for a small domain: the 32-bit top, anything below it, the 64-bit top, or anything up to it. */
function limitFor(op: { limitSel: number; limitRaw: number }, dma32: number, top: number): number {
  switch (op.limitSel) {
    case 0:
      return dma32 - 1;
    case 1:
      return op.limitRaw % dma32;
    case 2:
      return top;
    default:
      return op.limitRaw % (top + 1);
  }
}

describe("IovaDomain: alloc_iova", () => {
  it("allocates top-down from the limit, size-aligned on request", () => {
    const { d } = domain();
    assert.deepEqual(d.allocIova(1, 0xfffff, true), { pfnLo: 0xfffff, pfnHi: 0xfffff });
    // 3 pages aligned to 4: the highest multiple of 4 whose 3 pages end below 0xfffff.
    assert.deepEqual(d.allocIova(3, 0xfffff, true), { pfnLo: 0xffffc, pfnHi: 0xffffe });
    assert.deepEqual(d.allocIova(3, 0xfffff, false), { pfnLo: 0xffff9, pfnHi: 0xffffb });
    assert.deepEqual(d.allocIova(16, 0xfffff, true), { pfnLo: 0xfffe0, pfnHi: 0xfffef });
    // A 64-bit request has its own cached node, starting at the anchor.
    assert.deepEqual(d.allocIova(2, 0x3fffff, true), { pfnLo: 0x3ffffe, pfnHi: 0x3fffff });
    assert.equal(d.liveRanges(), 5);
    d.verify();
  });

  it("searches below the cached node even when the limit leaves room above it (as Linux)", () => {
    const { d, r } = pair(1, 256);
    assert.deepEqual(d.allocIova(1, 100, false), r.allocIova(1, 100, false));
    assert.equal(d.state().cached32PfnLo, 100);
    // Room exists at 101..255, but the walk starts below the cached node.
    assert.deepEqual(d.allocIova(1, 255, false), { pfnLo: 99, pfnHi: 99 });
    assert.deepEqual(r.allocIova(1, 255, false), { pfnLo: 99, pfnHi: 99 });
    expectSame(d, r);
  });

  it("retries once from the limit down to just above the cached node", () => {
    const { d, r } = pair(16, 256);
    assert.deepEqual(d.allocIova(16, 31, true), { pfnLo: 16, pfnHi: 31 });
    r.allocIova(16, 31, true);
    // Nothing below the cached node [16, 31]: the retry finds the top of the 32-bit space.
    assert.deepEqual(d.allocIova(4, 255, true), { pfnLo: 252, pfnHi: 255 });
    assert.deepEqual(r.allocIova(4, 255, true), { pfnLo: 252, pfnHi: 255 });
    expectSame(d, r);
    // The retry never goes below the cached node's pfnHi + 1, so a request the space between cannot hold fails.
    const { d: d2 } = domain({ startPfn: 16, dma32Pfn: 256 });
    d2.allocIova(16, 31, true);
    d2.reserveIova(32, 255);
    assert.equal(d2.allocIova(1, 255, false), undefined);
    assert.equal(d2.state().max32AllocSize, 1);
  });

  it("remembers a failed size and fails later 32-bit requests that large at once, until a low free", () => {
    const { d, rec } = domain({ dma32Pfn: 64 });
    d.reserveIova(1, 15);
    assert.equal(d.allocIova(8, 15, true), undefined);
    assert.equal(rec.named("iova.alloc.fail").at(-1)?.fields.reason, "limit");
    assert.equal(d.state().max32AllocSize, 8);
    // 16..63 is free, yet 32-bit requests of 8 pages or more now fail fast.
    assert.equal(d.allocIova(8, 63, true), undefined);
    assert.equal(d.allocIova(20, 63, false), undefined);
    assert.equal(rec.named("iova.alloc.fail").at(-1)?.fields.reason, "fail-fast max32");
    // Smaller ones and requests beyond the 32-bit space are not affected.
    assert.deepEqual(d.allocIova(4, 63, true), { pfnLo: 60, pfnHi: 63 });
    assert.deepEqual(d.allocIova(8, 127, true), { pfnLo: 120, pfnHi: 127 });
    // Freeing above the 32-bit space keeps the hint; freeing below it clears the hint.
    assert.equal(d.freeIova(120), true);
    assert.equal(d.state().max32AllocSize, 8);
    assert.equal(d.freeIova(60), true);
    assert.equal(d.state().max32AllocSize, 64);
    assert.deepEqual(d.allocIova(8, 63, true), { pfnLo: 56, pfnHi: 63 });
  });

  it("moves the cached nodes on free as __cached_rbnode_delete_update does", () => {
    const { d, r } = pair(1, 256);
    for (let i = 0; i < 4; i++) assert.deepEqual(d.allocIova(2, 255, true), r.allocIova(2, 255, true));
    assert.equal(d.state().cached32PfnLo, 248);
    // Freeing a range above the cached one moves the cache to the freed range's successor.
    d.freeIova(252);
    r.freeIova(252);
    assert.equal(d.state().cached32PfnLo, 254);
    expectSame(d, r);
    // So the next allocation refills the hole at once.
    assert.deepEqual(d.allocIova(2, 255, true), { pfnLo: 252, pfnHi: 253 });
    assert.deepEqual(r.allocIova(2, 255, true), { pfnLo: 252, pfnHi: 253 });
    expectSame(d, r);
  });

  it("never hands out overlapping, misaligned or out-of-bounds ranges", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 8 }), fc.array(opArb, { maxLength: 150, size: "max" }), (startPfn, ops) => {
        const dma32 = 128;
        const top = 400;
        const { d } = domain({ startPfn, dma32Pfn: dma32 });
        for (const op of ops) {
          if (op.kind === "alloc") {
            const limit = limitFor(op, dma32, top);
            const r = d.allocIova(op.size, limit, op.aligned);
            if (r === undefined) continue;
            assert.equal(r.pfnHi - r.pfnLo + 1, op.size);
            assert.ok(r.pfnLo >= startPfn && r.pfnHi <= limit, `[${r.pfnLo}, ${r.pfnHi}] outside bounds`);
            if (op.aligned) assert.equal(r.pfnLo % 2 ** Math.ceil(Math.log2(op.size)), 0);
          } else if (op.kind === "free") {
            const rs = d.ranges();
            if (rs.length > 0) d.freeIova(rs[op.pick % rs.length]!.pfnLo);
          } else {
            d.reserveIova(op.lo, op.lo + op.len);
          }
        }
        d.verify(); // disjoint, ordered, balanced, aggregates exact
        const rs = d.ranges();
        for (let i = 1; i < rs.length; i++) assert.ok(rs[i - 1]!.pfnHi < rs[i]!.pfnLo);
      }),
      { numRuns: 150 },
    );
  });

  it("matches the statement-by-statement Linux port at every step", () => {
    let allocs = 0;
    let failures = 0;
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 16, max: 72 }),
        fc.array(opArb, { minLength: 1, maxLength: 120, size: "max" }),
        (startPfn, dma32, ops) => {
          const top = dma32 * 2 + 16;
          const { d, r } = pair(startPfn, dma32);
          for (const op of ops) {
            if (op.kind === "alloc") {
              const limit = limitFor(op, dma32, top);
              const got = d.allocIova(op.size, limit, op.aligned);
              assert.deepEqual(got, r.allocIova(op.size, limit, op.aligned), `alloc ${op.size} limit ${limit}`);
              allocs++;
              if (got === undefined) failures++;
            } else if (op.kind === "free") {
              const rs = r.ranges();
              const pfn =
                op.raw || rs.length === 0
                  ? op.pick % (top + 8)
                  : Math.max(0, rs[op.pick % rs.length]!.pfnLo + op.offset);
              assert.equal(d.freeIova(pfn), r.freeIova(pfn), `free ${pfn}`);
            } else {
              assert.deepEqual(d.reserveIova(op.lo, op.lo + op.len), r.reserveIova(op.lo, op.lo + op.len));
            }
            expectSame(d, r);
          }
          d.verify();
        },
      ),
      { numRuns: 250 },
    );
    // The small domains must actually run out of space for the comparison to cover the failure paths.
    assert.ok(failures > allocs / 20, `${failures} failures in ${allocs} allocations`);
  });

  it("matches the Linux port under heavy fragmentation", () => {
    const { d, r } = pair(1, 1 << 20);
    const limit = (1 << 20) - 1;
    for (let i = 0; i < 6000; i++) assert.deepEqual(d.allocIova(1, limit, false), r.allocIova(1, limit, false));
    // Free every other page, lowest first: every gap is one page and the cached node ends up near the top.
    for (let pfn = limit - 5999; pfn <= limit; pfn += 2) assert.equal(d.freeIova(pfn), r.freeIova(pfn));
    expectSame(d, r);
    const before = r.steps;
    for (const [size, aligned] of [
      [2, true],
      [1, true],
      [3, false],
      [2, true],
      [5, true],
    ] as const) {
      assert.deepEqual(d.allocIova(size, limit, aligned), r.allocIova(size, limit, aligned));
      expectSame(d, r);
    }
    // The port walked the fragmented ranges (linear); the fast domain agreed on every result.
    assert.ok(r.steps - before > 3000, `linear walk took only ${r.steps - before} steps`);
    d.verify();
  });

  it("returns to empty after freeing everything", () => {
    const { d } = domain({ dma32Pfn: 4096 });
    const got: number[] = [];
    for (let i = 1; i <= 300; i++) {
      const r = d.allocIova((i % 7) + 1, i % 2 === 0 ? 4095 : 100_000, i % 3 !== 0);
      assert.ok(r);
      got.push(r.pfnLo);
    }
    assert.equal(d.liveRanges(), 300);
    for (const pfn of got.reverse()) assert.equal(d.freeIova(pfn), true);
    assert.equal(d.liveRanges(), 0);
    assert.deepEqual(d.ranges(), []);
    assert.deepEqual(d.state(), { max32AllocSize: 4096, cached32PfnLo: null, cachedPfnLo: null });
    assert.deepEqual(d.allocIova(1, 4095, true), { pfnLo: 4095, pfnHi: 4095 });
    d.verify();
  });
});

describe("IovaDomain: find_iova, free_iova, reserve_iova", () => {
  it("finds the range containing any pfn of it", () => {
    const { d } = domain();
    const r = d.allocIova(8, 1000, true)!;
    assert.deepEqual(r, { pfnLo: 992, pfnHi: 999 });
    for (const pfn of [992, 995, 999]) assert.deepEqual(d.findIova(pfn), r);
    assert.equal(d.findIova(991), undefined);
    assert.equal(d.findIova(1000), undefined);
    assert.equal(d.freeIova(1000), false);
    assert.equal(d.freeIova(996), true);
    assert.equal(d.findIova(992), undefined);
  });

  it("extends overlapped ranges and inserts the rest, as the rbtree reserve_iova does", () => {
    const { d, r } = pair(1, 256);
    const both = (lo: number, hi: number): unknown => {
      const got = d.reserveIova(lo, hi);
      assert.deepEqual(got, r.reserveIova(lo, hi));
      expectSame(d, r);
      return got;
    };
    assert.deepEqual(both(10, 20), { pfnLo: 10, pfnHi: 20 });
    // Overlapping below: the existing range is lowered and returned.
    assert.deepEqual(both(5, 12), { pfnLo: 5, pfnHi: 20 });
    // Overlapping above: the rest becomes a new, adjacent range (not merged).
    assert.deepEqual(both(15, 30), { pfnLo: 21, pfnHi: 30 });
    assert.deepEqual(d.ranges(), [
      { pfnLo: 5, pfnHi: 20 },
      { pfnLo: 21, pfnHi: 30 },
    ]);
    // Fully covered: the covering range, unchanged.
    assert.deepEqual(both(25, 26), { pfnLo: 21, pfnHi: 30 });
    // Spanning several: the first is extended down, the gaps above each filled, the remainder inserted.
    assert.deepEqual(both(0, 40), { pfnLo: 31, pfnHi: 40 });
    assert.deepEqual(d.ranges(), [
      { pfnLo: 0, pfnHi: 20 },
      { pfnLo: 21, pfnHi: 30 },
      { pfnLo: 31, pfnHi: 40 },
    ]);
    d.verify();
  });

  it("never allocates inside a reserved range, and frees reserved ranges like any other", () => {
    const { d } = domain({ dma32Pfn: 64 });
    d.reserveIova(32, 47);
    const got: number[] = [];
    for (;;) {
      const r = d.allocIova(1, 63, false);
      if (!r) break;
      assert.ok(r.pfnLo < 32 || r.pfnLo > 47, `allocated reserved pfn ${r.pfnLo}`);
      got.push(r.pfnLo);
    }
    assert.equal(got.length, 63 - 16);
    assert.equal(d.freeIova(40), true);
    assert.deepEqual(d.allocIova(16, 63, true), { pfnLo: 32, pfnHi: 47 });
  });

  it("rejects bad arguments with EINVAL", () => {
    const { d } = domain();
    assert.throws(() => d.allocIova(0, 100, true), isEinval);
    assert.throws(() => d.allocIova(1.5, 100, true), isEinval);
    assert.throws(() => d.allocIova(1, -1, true), isEinval);
    assert.throws(() => d.allocIova(1, 2 ** 53, true), isEinval);
    assert.throws(() => d.reserveIova(10, 9), isEinval);
    assert.throws(() => d.findIova(-1), isEinval);
    assert.throws(() => d.allocIovaFast(0, 100, true), isEinval);
    assert.throws(() => d.allocIovaFast(1, 100, true, 2), isEinval);
    assert.throws(() => d.freeIovaFast(5, 1, -1), isEinval);
    assert.throws(() => d.freeIovaFast(0, 1), /failed alloc_iova_fast/);
    const clock = new VirtualClock();
    const tracer = new Tracer(clock);
    assert.throws(() => new IovaDomain({ startPfn: 0, clock, tracer }), /pfn 0 is how alloc_iova_fast/);
    assert.throws(() => new IovaDomain({ startPfn: 1, granule: 3, clock, tracer }), isEinval);
    assert.throws(() => new IovaDomain({ startPfn: 1, granule: 8192, clock, tracer }), isEinval);
    assert.throws(() => new IovaDomain({ startPfn: 1, cpus: 0, clock, tracer }), isEinval);
    // A smaller granule moves the 32-bit boundary.
    assert.equal(new IovaDomain({ startPfn: 1, granule: 512, clock, tracer }).dma32Pfn, 2 ** 23);
  });

  it("traces allocations, frees, reservations and failures with their fields", () => {
    const { d, rec } = domain({ dma32Pfn: 64 });
    d.allocIova(2, 63, true);
    d.reserveIova(10, 12);
    d.freeIova(62);
    d.allocIova(60, 63, false);
    assert.deepEqual(rec.named("iova.alloc")[0]?.fields, {
      domain: "test",
      pfnLo: 62,
      pages: 2,
      limitPfn: 63,
      source: "tree",
    });
    assert.deepEqual(rec.named("iova.reserve")[0]?.fields, {
      domain: "test",
      pfnLo: 10,
      pfnHi: 12,
      resultPfnLo: 10,
      resultPfnHi: 12,
    });
    assert.deepEqual(rec.named("iova.free")[0]?.fields, { domain: "test", pfnLo: 62, pages: 2, dest: "tree" });
    const fail = rec.named("iova.alloc.fail")[0]!;
    assert.equal(fail.fields.reason, "limit");
    assert.equal(
      formatTrace(rec.named("iova.alloc")[0]!),
      "iova.alloc test: 2 page(s) at pfn 0x3e (limit pfn 0x3f) from the tree",
    );
  });
});
