import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { NS_PER_MS, TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { IovaDomain, type IovaDomainOptions } from "./iova.ts";
import { IOVA_MAG_SIZE, IovaRcache, iovaCacheOrder } from "./iova-rcache.ts";

const TOP = 0xfffff; // highest 32-bit pfn at 4 KiB

function domain(opts: Partial<IovaDomainOptions> = {}): { d: IovaDomain; rec: TraceRecorder; clock: VirtualClock } {
  const clock = new VirtualClock();
  const tracer = new Tracer(clock);
  const rec = new TraceRecorder(tracer);
  const d = new IovaDomain({ startPfn: 1, clock, tracer, name: "fast", ...opts });
  return { d, rec, clock };
}

/** Allocates n single pages through the fast path (a fresh domain serves them from the tree). */
function allocPages(d: IovaDomain, n: number, cpu = 0): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const pfn = d.allocIovaFast(1, TOP, false, cpu);
    assert.notEqual(pfn, 0);
    out.push(pfn);
  }
  return out;
}

describe("IOVA range caches: alloc_iova_fast / free_iova_fast", () => {
  it("serves an allocation after a free from the cache, last in first out", () => {
    const { d } = domain();
    const [a, b] = allocPages(d, 2);
    assert.deepEqual([a, b], [TOP, TOP - 1]);
    d.freeIovaFast(a!, 1);
    d.freeIovaFast(b!, 1);
    // Cached ranges stay in the tree.
    assert.equal(d.liveRanges(), 2);
    assert.equal(d.cachedPfns(), 2);
    assert.equal(d.allocIovaFast(1, TOP, false), b);
    assert.equal(d.allocIovaFast(1, TOP, false), a);
    assert.equal(d.cachedPfns(), 0);
    assert.equal(d.allocIovaFast(1, TOP, false), TOP - 2);
  });

  it("rounds sizes below 32 pages up to a power of two; caches up to 32 pages, not above", () => {
    const { d } = domain();
    const p3 = d.allocIovaFast(3, TOP, false);
    assert.deepEqual(d.findIova(p3), { pfnLo: TOP - 3, pfnHi: TOP });
    d.freeIovaFast(p3, 3); // the asked size: same class as the rounded one
    assert.equal(d.rcaches.magazineFill(0, 2).loaded, 1);
    assert.equal(d.allocIovaFast(4, TOP, false), p3);

    const p32 = d.allocIovaFast(32, TOP, false);
    assert.equal(p32 % 32, 0);
    d.freeIovaFast(p32, 32);
    assert.equal(d.cachedPfns(), 1);
    assert.equal(d.rcaches.magazineFill(0, 5).loaded, 1);

    // 33 pages: not rounded (a 33-page range aligned to 64) and freed straight into the tree.
    const live = d.liveRanges();
    const p33 = d.allocIovaFast(33, TOP, false);
    const r = d.findIova(p33)!;
    assert.equal(r.pfnHi - r.pfnLo + 1, 33);
    assert.equal(r.pfnLo % 64, 0);
    assert.equal(d.liveRanges(), live + 1);
    d.freeIovaFast(p33, 33);
    assert.equal(d.liveRanges(), live);
    assert.equal(d.findIova(p33), undefined);
    assert.equal(d.cachedPfns(), 1);
  });

  it("fills magazines of 127: loaded, then the spare, then the depot", () => {
    const { d } = domain();
    const pfns = allocPages(d, 3 * IOVA_MAG_SIZE + 1);
    let i = 0;
    const freeUpTo = (n: number): void => {
      for (; i < n; i++) d.freeIovaFast(pfns[i]!, 1);
    };
    freeUpTo(IOVA_MAG_SIZE);
    assert.deepEqual(d.rcaches.magazineFill(0, 0), { loaded: 127, prev: 0 });
    freeUpTo(IOVA_MAG_SIZE + 1);
    assert.deepEqual(d.rcaches.magazineFill(0, 0), { loaded: 1, prev: 127 });
    freeUpTo(2 * IOVA_MAG_SIZE);
    assert.deepEqual(d.rcaches.magazineFill(0, 0), { loaded: 127, prev: 127 });
    assert.equal(d.rcaches.depotSize(0), 0);
    assert.equal(d.rcaches.trimArmed(0), false);
    freeUpTo(2 * IOVA_MAG_SIZE + 1);
    assert.deepEqual(d.rcaches.magazineFill(0, 0), { loaded: 1, prev: 127 });
    assert.equal(d.rcaches.depotSize(0), 1);
    assert.equal(d.rcaches.trimArmed(0), true);
    freeUpTo(pfns.length);
    assert.equal(d.cachedPfns(), pfns.length);
    assert.equal(d.liveRanges(), pfns.length);

    assert.deepEqual(d.rcaches.magazineFill(0, 0), { loaded: 1, prev: 127 });
    assert.equal(d.rcaches.depotSize(0), 2);
    // Draining: the loaded magazine, then the spare, then a full magazine from the depot.
    for (let k = 0; k < 128; k++) assert.notEqual(d.allocIovaFast(1, TOP, false), 0);
    assert.deepEqual(d.rcaches.magazineFill(0, 0), { loaded: 0, prev: 0 });
    assert.equal(d.rcaches.depotSize(0), 2);
    assert.notEqual(d.allocIovaFast(1, TOP, false), 0);
    assert.equal(d.rcaches.depotSize(0), 1);
    assert.deepEqual(d.rcaches.magazineFill(0, 0), { loaded: 126, prev: 0 });
    // Nothing came from the tree: every pfn handed out was one of the freed ones.
    assert.equal(d.liveRanges(), pfns.length);
  });

  it("trims the depot one magazine per 100 ms while it holds more magazines than CPUs", () => {
    const { d, rec, clock } = domain({ cpus: 2 });
    // A full spare, 4 full magazines in the depot and 1 pfn in the loaded magazine.
    const n = IOVA_MAG_SIZE + 4 * IOVA_MAG_SIZE + 1;
    for (const pfn of allocPages(d, n)) d.freeIovaFast(pfn, 1);
    assert.equal(d.rcaches.depotSize(0), 4);
    assert.equal(d.liveRanges(), n);

    clock.advance(99 * NS_PER_MS);
    assert.equal(d.rcaches.depotSize(0), 4);
    clock.advance(1 * NS_PER_MS);
    assert.equal(d.rcaches.depotSize(0), 3);
    assert.equal(d.liveRanges(), n - IOVA_MAG_SIZE);
    assert.equal(d.cachedPfns(), n - IOVA_MAG_SIZE);
    assert.equal(d.rcaches.trimArmed(0), true);
    clock.advance(100 * NS_PER_MS);
    assert.equal(d.rcaches.depotSize(0), 2);
    // At the number of CPUs the trim stops and is not re-armed.
    clock.advance(100 * NS_PER_MS);
    assert.equal(d.rcaches.depotSize(0), 2);
    assert.equal(d.rcaches.trimArmed(0), false);
    assert.equal(d.liveRanges(), n - 2 * IOVA_MAG_SIZE);
    const trims = rec.named("iova.depot.trim");
    assert.deepEqual(
      trims.map((r) => [r.time, r.fields.depotSize, r.fields.ranges]),
      [
        [100 * NS_PER_MS, 3, 127],
        [200 * NS_PER_MS, 2, 127],
      ],
    );
    d.verify();
  });

  it("keeps each CPU's magazines to itself", () => {
    const { d } = domain({ cpus: 3 });
    const [a] = allocPages(d, 1, 1);
    d.freeIovaFast(a!, 1, 1);
    const fromCpu0 = d.allocIovaFast(1, TOP, false, 0);
    assert.notEqual(fromCpu0, a);
    assert.equal(d.allocIovaFast(1, TOP, false, 2), TOP - 2);
    assert.equal(d.allocIovaFast(1, TOP, false, 1), a);
    // CPU hotplug: a dead CPU's magazines go back to the tree.
    d.freeIovaFast(a!, 1, 1);
    assert.equal(d.freeCpuCachedIovas(1), 1);
    assert.equal(d.findIova(a!), undefined);
  });

  it("skips cached pfns above the caller's limit", () => {
    const { d } = domain();
    const [high] = allocPages(d, 1);
    d.freeIovaFast(high!, 1);
    const low = d.allocIovaFast(1, 0x1000, false);
    assert.equal(low, 0x1000);
    assert.equal(d.cachedPfns(), 1);
    // A 2-page request's limit check counts its size: pfn + size - 1 <= limit.
    const p = d.allocIovaFast(2, 0x2001, false);
    d.freeIovaFast(p, 2);
    assert.notEqual(d.allocIovaFast(2, p, false), p);
    assert.equal(d.allocIovaFast(2, p + 1, false), p);
  });

  it("flushes every cache and retries once when the tree has no room", () => {
    const { d, rec } = domain({ dma32Pfn: 64 });
    const pfns: number[] = [];
    for (;;) {
      const pfn = d.allocIovaFast(1, 63, false, 0);
      if (pfn === 0) break;
      pfns.push(pfn);
    }
    assert.equal(pfns.length, 63);
    assert.equal(d.state().max32AllocSize, 1);
    // Cache everything on CPU 1: CPU 0 cannot see it.
    for (const pfn of pfns) d.freeIovaFast(pfn, 1, 1);
    assert.equal(d.allocIovaFast(1, 63, false, 0), 0);
    assert.equal(rec.named("iova.alloc.fail").at(-1)?.fields.reason, "fail-fast max32");
    assert.equal(rec.count("iova.rcache.flush"), 0);

    rec.clear();
    const pfn = d.allocIovaFast(1, 63, true, 0);
    assert.equal(pfn, 63);
    assert.deepEqual(
      rec.records.map((r) => r.name),
      ["iova.alloc.fail", "iova.rcache.flush", "iova.alloc"],
    );
    assert.equal(rec.named("iova.rcache.flush")[0]?.fields.ranges, 63);
    assert.equal(d.cachedPfns(), 0);
    assert.equal(d.liveRanges(), 1);
  });

  it("destroy() with full magazines and depots returns the domain to empty", () => {
    const { d, rec, clock } = domain();
    const pfns = allocPages(d, 6 * IOVA_MAG_SIZE, 0);
    for (const pfn of pfns) d.freeIovaFast(pfn, 1, 0);
    const big = d.allocIovaFast(16, TOP, false, 1);
    d.freeIovaFast(big, 16, 1);
    d.allocIova(40, TOP, true);
    assert.ok(d.rcaches.depotSize(0) > 0);
    d.destroy();
    assert.equal(d.liveRanges(), 0);
    assert.equal(d.cachedPfns(), 0);
    assert.deepEqual(d.ranges(), []);
    assert.equal(d.rcaches.trimArmed(0), false);
    assert.deepEqual(rec.named("iova.domain.destroy")[0]?.fields, {
      domain: "fast",
      ranges: 6 * IOVA_MAG_SIZE + 2,
      cached: 6 * IOVA_MAG_SIZE + 1,
    });
    clock.advance(1000 * NS_PER_MS);
    assert.equal(rec.count("iova.depot.trim"), 0);
    // Usable again, from the top.
    assert.equal(d.allocIovaFast(1, TOP, false), TOP);
    d.verify();
  });

  it("traces fast-path allocations and frees with their source", () => {
    const { d, rec } = domain();
    const pfn = d.allocIovaFast(1, TOP, false);
    d.freeIovaFast(pfn, 1);
    d.allocIovaFast(1, TOP, false);
    const fields = (i: number): Record<string, unknown> => rec.records[i]!.fields as unknown as Record<string, unknown>;
    assert.deepEqual(
      rec.records.map((r, i) => `${r.name}:${fields(i).source ?? fields(i).dest}`),
      ["iova.alloc:tree", "iova.free:rcache", "iova.alloc:rcache"],
    );
  });

  it("keeps allocations disjoint and every range accounted for under random fast-path traffic", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            alloc: fc.boolean(),
            size: fc.integer({ min: 1, max: 40 }),
            cpu: fc.integer({ min: 0, max: 1 }),
            pick: fc.nat(),
            flush: fc.boolean(),
            wait: fc.integer({ min: 0, max: 3 }),
          }),
          { maxLength: 200, size: "max" },
        ),
        (ops) => {
          const { d, clock } = domain({ dma32Pfn: 512 });
          const held = new Map<number, number>(); // pfn -> rounded size
          for (const op of ops) {
            if (op.alloc) {
              const pfn = d.allocIovaFast(op.size, 511, op.flush, op.cpu);
              if (pfn === 0) continue;
              const size = op.size < 32 ? 2 ** Math.ceil(Math.log2(op.size)) : op.size;
              assert.equal(pfn % 2 ** Math.ceil(Math.log2(size)), 0, `pfn ${pfn} misaligned for ${size}`);
              assert.ok(pfn + size - 1 <= 511);
              for (const [p, s] of held) assert.ok(pfn + size <= p || p + s <= pfn, `overlap at ${pfn}`);
              assert.ok(d.findIova(pfn), "handed-out range not in the tree");
              held.set(pfn, size);
            } else if (held.size > 0) {
              const keys = [...held.keys()];
              const pfn = keys[op.pick % keys.length]!;
              d.freeIovaFast(pfn, held.get(pfn)!, op.cpu);
              held.delete(pfn);
            }
            clock.advance(op.wait * 50 * NS_PER_MS);
            assert.equal(d.liveRanges(), held.size + d.cachedPfns());
          }
          for (const [pfn, size] of held) d.freeIovaFast(pfn, size, 0);
          d.flushRcache();
          assert.equal(d.liveRanges(), 0);
          d.verify();
        },
      ),
      { numRuns: 100 },
    );
  });
});

describe("IovaRcache", () => {
  it("maps sizes to classes as order_base_2, with nothing above 32 pages", () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 2 ** 40].map(iovaCacheOrder),
      [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6],
    );
  });

  it("pops the topmost pfn under the limit and gives magazines back through its owner", () => {
    const clock = new VirtualClock();
    const released: number[] = [];
    const c = new IovaRcache({
      cpus: 1,
      clock,
      tracer: new Tracer(clock),
      name: "unit",
      owner: { releaseCachedPfn: (pfn) => released.push(pfn) },
    });
    for (const pfn of [10, 50, 20, 60]) assert.equal(c.insert(pfn, 1, 0), true);
    assert.equal(c.insert(99, 64, 0), false);
    // Limit 31 (exclusive), 1 page: scanning down from the top, 60 is too high and 20 is taken.
    assert.equal(c.get(1, 31, 0), 20);
    assert.equal(c.get(1, 10, 0), 0);
    assert.equal(c.cachedPfns(), 3);
    // Fill to the depot and flush it: the owner receives every pfn once.
    for (let pfn = 100; pfn < 100 + 2 * IOVA_MAG_SIZE; pfn++) c.insert(pfn, 1, 0);
    assert.equal(c.depotSize(0), 1);
    const n = c.flushAll();
    assert.equal(n, 3 + 2 * IOVA_MAG_SIZE);
    assert.equal(released.length, n);
    assert.equal(new Set(released).size, n);
    assert.equal(c.cachedPfns(), 0);
    assert.equal(c.get(1, 1000, 0), 0);
  });
});
