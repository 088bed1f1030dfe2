import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, gma, isKernelError, Rng } from "../core/index.ts";
import { GuestGpuDriver } from "./driver.ts";
import { type FakeGpuOptions, FakePlatform } from "./test-support/fake-gpu.ts";
import {
  checkWorkloadSpec,
  compareSurfaces,
  describeWorkload,
  fillPattern,
  referenceCopy,
  referenceFill,
  runWorkload,
  type WorkloadSpec,
} from "./workloads.ts";

const MiB = 1024 * 1024;
const PV = {
  mappable: { base: gma(128 * MiB), size: 64 * MiB },
  nonmappable: { base: gma(1024 * MiB), size: 384 * MiB },
};

function driver(opts: FakeGpuOptions = { pvinfo: PV }) {
  const p = new FakePlatform(opts);
  return { p, d: GuestGpuDriver.open(p) };
}

describe("guest workloads: reference blitter", () => {
  it("fills a rectangle little-endian and leaves the rest (and the pitch padding) alone", () => {
    const s = new Uint8Array(3 * 16).fill(0xee); // 3 rows, pitch 16 = 3 px + 4 bytes padding
    referenceFill(s, 16, 1, 1, 3, 2, 0x11223344);
    assert.deepEqual(
      [...s.subarray(16, 32)],
      [0xee, 0xee, 0xee, 0xee, 0x44, 0x33, 0x22, 0x11, 0x44, 0x33, 0x22, 0x11, 0xee, 0xee, 0xee, 0xee],
    );
    assert.ok(s.subarray(0, 16).every((b) => b === 0xee));
    assert.ok(s.subarray(32).every((b) => b === 0xee));
  });

  it("copies a rectangle between pitches and reports mismatches precisely", () => {
    const src = new Uint8Array(4 * 8);
    fillPattern(src, 8, "gradient", new Rng(1)); // 2 px per row, 4 rows
    const dst = new Uint8Array(2 * 12);
    referenceCopy(dst, 12, 1, 0, 3, 2, src, 8, 0, 2);
    assert.deepEqual([...dst.subarray(4, 12)], [...src.subarray(16, 24)]);
    assert.deepEqual([...dst.subarray(16, 24)], [...src.subarray(24, 32)]);
    const other = dst.slice();
    other[17] = other[17]! ^ 0xff;
    const cmp = compareSurfaces(dst, other, 12);
    assert.equal(cmp.mismatches, 1);
    assert.deepEqual(cmp.first, { offset: 17, x: 1, y: 1, expected: dst[17], actual: other[17] });
  });

  it("validates specs (EINVAL naming the field)", () => {
    const base: WorkloadSpec = { kind: "fill", count: 1, width: 8, height: 8, seed: 1 };
    const bad = (s: Partial<WorkloadSpec>, what: RegExp) =>
      assert.throws(
        () => checkWorkloadSpec({ ...base, ...s }),
        (e) => isKernelError(e) && e.errno === Errno.EINVAL && what.test(e.message),
      );
    bad({ count: 0 }, /count/);
    bad({ width: 0 }, /width/);
    bad({ pitch: 30 }, /pitch/);
    bad({ pitch: 34 }, /multiple of 4/);
    bad({ width: 8000, height: 1300, pitch: 32000 }, /exceeds/);
    bad({ opsPerSubmission: 0 }, /opsPerSubmission/);
    checkWorkloadSpec(base);
  });
});

describe("guest workloads on a fake GPU", () => {
  for (const kind of ["fill", "copy"] as const) {
    for (const via of ["ring", "batch"] as const) {
      it(`${kind} via ${via}: random rectangles with pitch padding verify byte for byte`, () => {
        const { d } = driver({ pvinfo: PV, execDelayNs: 2000 });
        const r = runWorkload(d, {
          kind,
          via,
          count: 24,
          width: 37,
          height: 19,
          pitch: 37 * 4 + 20,
          rects: "random",
          opsPerSubmission: 5,
          seed: 42,
        });
        assert.ok(r.ok, describeWorkload(r));
        assert.deepEqual([r.submissions, r.completed, r.operations], [5, 5, 24]);
        assert.ok(r.bytes > 0);
        assert.ok(r.elapsedNs >= 2000);
        assert.equal(d.stats().buffers, 3, "surfaces and batches freed (the status page and two rings stay)");
      });
    }
  }

  it("is deterministic: the same seed gives the same result, another seed other work", () => {
    const spec: WorkloadSpec = { kind: "copy", count: 6, width: 16, height: 16, rects: "random", seed: 9 };
    const a = runWorkload(driver().d, spec);
    const b = runWorkload(driver().d, spec);
    const c = runWorkload(driver().d, { ...spec, seed: 10 });
    assert.deepEqual(a, b);
    assert.notEqual(a.bytes, c.bytes);
  });

  it("detects a broken blitter", () => {
    const { d } = driver({ pvinfo: PV, corruptBlits: true });
    const r = runWorkload(d, { kind: "fill", count: 3, width: 8, height: 8, seed: 1 });
    assert.equal(r.ok, false);
    assert.equal(r.completed, 3);
    assert.ok(r.mismatches >= 1);
    assert.deepEqual([r.firstMismatch?.x, r.firstMismatch?.y], [7, 7]);
    assert.match(describeWorkload(r), /pixel \(7, 7\)/);
  });

  it("reports rejected submissions (a mediator refusing the surface's zone)", () => {
    // This mediator audits against the aperture only, though PVINFO also gave the guest a hidden range.
    const { d } = driver({ pvinfo: PV, audit: "at-execution", auditRanges: [PV.mappable] });
    const r = runWorkload(d, { kind: "fill", count: 2, width: 8, height: 8, seed: 1, zone: "nonmappable" });
    assert.equal(r.rejected, 2);
    assert.equal(r.ok, false);
  });

  it("property: any small fill/copy workload verifies", () => {
    fc.assert(
      fc.property(
        fc.record({
          kind: fc.constantFrom("fill" as const, "copy" as const),
          via: fc.constantFrom("ring" as const, "batch" as const),
          count: fc.integer({ min: 1, max: 6 }),
          width: fc.integer({ min: 1, max: 24 }),
          height: fc.integer({ min: 1, max: 12 }),
          pad: fc.integer({ min: 0, max: 8 }),
          per: fc.integer({ min: 1, max: 4 }),
          rects: fc.constantFrom("full" as const, "random" as const),
          seed: fc.nat(),
        }),
        (s) => {
          const { d } = driver({ pvinfo: PV, execDelayNs: 700 });
          const r = runWorkload(d, { ...s, pitch: s.width * 4 + s.pad * 4, opsPerSubmission: s.per });
          assert.ok(r.ok, describeWorkload(r));
        },
      ),
      { numRuns: 25 },
    );
  });
});
