import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  alignDown,
  alignUp,
  attempt,
  defineTraceEvents,
  Errno,
  errnoName,
  fls,
  formatTrace,
  isPageAligned,
  KernelError,
  pageOf,
  pagesSpanned,
  Rng,
  roundUpPowerOfTwo,
  strerror,
  TraceRecorder,
  Tracer,
  toGpa,
  u64ToNumber,
  VirtualClock,
} from "./index.ts";

declare module "./trace.ts" {
  interface TraceEventMap {
    "test.thing": { id: number; iova: number; what: string };
  }
}
defineTraceEvents("test", { "test.thing": "thing {id} at {iova}: {what}" });

describe("addresses", () => {
  it("page arithmetic is exact beyond 2^32", () => {
    const a = 2 ** 45 + 4097;
    assert.equal(pageOf(a), 2 ** 33 + 1);
    assert.equal(alignDown(a, 4096), 2 ** 45 + 4096);
    assert.equal(alignUp(a, 4096), 2 ** 45 + 8192);
    assert.equal(isPageAligned(2 ** 45), true);
    assert.equal(pagesSpanned(4095, 2), 2);
    assert.equal(pagesSpanned(4096, 4096), 1);
    assert.equal(pagesSpanned(0, 0), 0);
  });
  it("fls and roundUpPowerOfTwo match Linux", () => {
    assert.equal(fls(0), 0);
    assert.equal(fls(1), 1);
    assert.equal(fls(0x80000000), 32);
    assert.equal(roundUpPowerOfTwo(3), 4);
    assert.equal(roundUpPowerOfTwo(32), 32);
    assert.equal(roundUpPowerOfTwo(1), 1);
  });
  it("alignUp/alignDown bracket every value", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 50 }), fc.integer({ min: 0, max: 20 }), (n, k) => {
        const al = 2 ** k;
        const lo = alignDown(n, al);
        const hi = alignUp(n, al);
        return lo <= n && n <= hi && lo % al === 0 && hi % al === 0 && hi - lo <= al;
      }),
    );
  });
  it("checked constructors reject bad values with EINVAL", () => {
    assert.throws(
      () => toGpa(-1),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL,
    );
    assert.throws(() => toGpa(1.5), /not a valid address/);
    assert.equal(toGpa(4096), 4096);
    assert.throws(() => u64ToNumber(2n ** 60n, "iova"), /iova = 0x1000000000000000/);
    assert.equal(u64ToNumber(123n, "x"), 123);
  });
});

describe("errno and KernelError", () => {
  it("uses Linux's numbers", () => {
    assert.equal(Errno.EINVAL, 22);
    assert.equal(Errno.EBADFD, 77);
    assert.equal(Errno.ENOTTY, 25);
    assert.equal(Errno.E2BIG, 7);
    assert.equal(errnoName(28), "ENOSPC");
    assert.equal(errnoName(9999), "E9999");
    assert.equal(strerror(12), "Cannot allocate memory");
  });
  it("describes itself and converts to a Result", () => {
    const e = new KernelError(Errno.EBUSY, "group 3 is in use");
    assert.equal(e.code, "EBUSY");
    assert.equal(e.describe(), "EBUSY (Device or resource busy): group 3 is in use");
    const r = attempt(() => {
      throw e;
    });
    assert.equal(r.ok, false);
    assert.equal(r.ok ? 0 : r.error.errno, Errno.EBUSY);
    assert.deepEqual(
      attempt(() => 5),
      { ok: true, value: 5 },
    );
    assert.throws(() =>
      attempt(() => {
        throw new TypeError("bug");
      }),
    );
  });
});

describe("VirtualClock", () => {
  it("fires timers in time then insertion order, with the clock at the timer's time", () => {
    const c = new VirtualClock();
    const seen: string[] = [];
    c.at(20, () => seen.push(`b@${c.now()}`));
    c.at(10, () => seen.push(`a@${c.now()}`));
    c.at(20, () => seen.push(`c@${c.now()}`));
    const h = c.after(15, () => seen.push("cancelled"));
    h.cancel();
    c.advance(15);
    assert.deepEqual(seen, ["a@10"]);
    assert.equal(c.now(), 15);
    c.advance(100);
    assert.deepEqual(seen, ["a@10", "b@20", "c@20"]);
    assert.equal(c.now(), 115);
    assert.equal(c.pending(), 0);
  });
  it("rejects going backwards", () => {
    assert.throws(() => new VirtualClock().advance(-1), RangeError);
  });
});

describe("Rng", () => {
  it("is reproducible and forks independently", () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const xs = Array.from({ length: 10 }, () => a.u32());
    assert.deepEqual(
      xs,
      Array.from({ length: 10 }, () => b.u32()),
    );
    assert.notDeepEqual(
      Array.from({ length: 5 }, () => new Rng(42).fork("iotlb").u32()),
      Array.from({ length: 5 }, () => new Rng(42).fork("sched").u32()),
    );
    assert.equal(new Rng(7).fork("x").u32(), new Rng(7).fork("x").u32());
  });
  it("int stays in range", () => {
    fc.assert(
      fc.property(
        fc.integer(),
        fc.integer({ min: -1000, max: 1000 }),
        fc.integer({ min: 0, max: 2 ** 40 }),
        (s, lo, span) => {
          const r = new Rng(s);
          const v = r.int(lo, lo + span);
          return Number.isInteger(v) && v >= lo && v <= lo + span;
        },
      ),
    );
  });
});

describe("trace", () => {
  it("records typed events only while a sink listens", () => {
    const clock = new VirtualClock(5);
    const t = new Tracer(clock);
    assert.equal(t.enabled, false);
    t.emit("test.thing", { id: 1, iova: 0x1000, what: "dropped" });
    const rec = new TraceRecorder(t);
    assert.equal(t.enabled, true);
    t.emit("test.thing", { id: 2, iova: 0x2000, what: "kept" });
    assert.equal(rec.records.length, 1);
    const r = rec.named("test.thing")[0]!;
    assert.equal(r.fields.what, "kept");
    assert.equal(r.time, 5);
    assert.equal(r.seq, 0);
    assert.equal(formatTrace(r), "test.thing thing 2 at 0x2000: kept");
    assert.equal(rec.toJsonLines(), '{"seq":0,"time":5,"name":"test.thing","id":2,"iova":8192,"what":"kept"}');
    rec.stop();
    assert.equal(t.enabled, false);
  });
  it("bounds memory", () => {
    const t = new Tracer(new VirtualClock());
    const rec = new TraceRecorder(t, 3);
    for (let i = 0; i < 5; i++) t.emit("test.thing", { id: i, iova: 0, what: "" });
    assert.deepEqual(
      rec.records.map((r) => r.fields),
      [2, 3, 4].map((id) => ({ id, iova: 0, what: "" })),
    );
    assert.equal(rec.dropped, 2);
  });
});
