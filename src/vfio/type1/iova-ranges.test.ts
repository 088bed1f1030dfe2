/**
 * The allowed IOVA range list: resize to an aperture, exclusion of reserved regions, expansion and refresh.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, KernelError } from "../../core/index.ts";
import { IOVA_TOP, IovaRanges, toU64 } from "./iova-ranges.ts";

const APERTURE_END = 2 ** 48 - 1;

describe("IovaRanges", () => {
  it("empty allows anything; resize of an empty list is the aperture", () => {
    const r = new IovaRanges();
    assert.equal(r.allows(0, 2 ** 60), true);
    r.resize(0, APERTURE_END);
    assert.deepEqual(r.ranges(), [{ start: 0, end: APERTURE_END }]);
    assert.equal(r.allows(APERTURE_END, APERTURE_END), true);
    assert.equal(r.allows(APERTURE_END, APERTURE_END + 1), false);
  });

  it("excludes the MSI window, splitting the range", () => {
    const r = new IovaRanges([{ start: 0, end: APERTURE_END }]);
    r.exclude([{ start: 0xfee00000, end: 0xfeefffff }]);
    assert.equal(r.toString(), "[0x0, 0xfedfffff], [0xfef00000, 0xffffffffffff]");
    assert.equal(r.allows(0xfedff000, 0xfee00fff), false);
    assert.equal(r.allows(0xfef00000, 0xfef00fff), true);
  });

  it("excluding regions at the edges and covering everything; EINVAL when nothing is left", () => {
    const r = new IovaRanges([{ start: 0x1000, end: 0x8fff }]);
    r.exclude([
      { start: 0, end: 0x1fff },
      { start: 0x8000, end: 0x9fff },
    ]);
    assert.deepEqual(r.ranges(), [{ start: 0x2000, end: 0x7fff }]);
    assert.throws(
      () => r.exclude([{ start: 0, end: 0xffff }]),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL,
    );
  });

  it("resize clips ranges across the edges and drops those outside", () => {
    const r = new IovaRanges([
      { start: 0, end: 0xfff },
      { start: 0x3000, end: 0x5fff },
      { start: 0x9000, end: 0x9fff },
    ]);
    r.resize(0x4000, 0x8fff);
    assert.deepEqual(r.ranges(), [{ start: 0x4000, end: 0x5fff }]);
    assert.equal(r.disjointFrom(0x6000, 0x7000), true);
    assert.equal(r.disjointFrom(0x5000, 0x7000), false);
  });

  it("expand then refresh rebuilds from the outer bounds minus the regions still reserved", () => {
    const r = new IovaRanges([
      { start: 0, end: 0xfedfffff },
      { start: 0xfef00000, end: APERTURE_END },
    ]);
    r.expand(0, IOVA_TOP);
    assert.equal(r.refresh([]), true);
    assert.equal(r.toString(), "[0x0, 0xffffffffffffffff]");
    assert.equal(toU64(r.ranges()[0]!.end), 0xffff_ffff_ffff_ffffn);
    assert.equal(new IovaRanges().refresh([]), false);
    const s = new IovaRanges([{ start: 0, end: 0xffff }]);
    assert.equal(s.refresh([{ start: 0, end: 0xffff }]), false, "nothing left: keep the old list");
  });
});
