/** Sizes and times as scenario files write them: exact parsing, no guessing, readable formatting. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { formatSize, formatTime, GiB, MiB, parseSize, parseTime } from "./units.ts";

describe("units", () => {
  it("parses binary sizes and byte counts; refuses decimal units and junk", () => {
    assert.equal(parseSize("16 GiB"), 16 * GiB);
    assert.equal(parseSize("512MiB"), 512 * MiB);
    assert.equal(parseSize("1.5 GiB"), 1.5 * GiB);
    assert.equal(parseSize("4096"), 4096);
    assert.equal(parseSize(4096), 4096);
    for (const bad of ["16 GB", "lots", "-1 MiB", "", "1.5", 1.5]) assert.ok(Number.isNaN(parseSize(bad)), String(bad));
  });

  it("parses times to nanoseconds", () => {
    assert.equal(parseTime("10 ms"), 10_000_000);
    assert.equal(parseTime("250us"), 250_000);
    assert.equal(parseTime("1.5 s"), 1_500_000_000);
    assert.equal(parseTime(42), 42);
    for (const bad of ["soon", "1 h", -5, "1.5"]) assert.ok(Number.isNaN(parseTime(bad)), String(bad));
  });

  it("formats what it parses back to the same size (whole units)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 40 }), fc.constantFrom("KiB", "MiB", "GiB"), (n, unit) => {
        const text = `${n} ${unit}`;
        const bytes = parseSize(text);
        const shown = formatSize(bytes);
        assert.equal(parseSize(shown), bytes, `${text} -> ${shown}`);
      }),
      { numRuns: 200 },
    );
    assert.equal(formatSize(1536 * 1024 * 1024), "1.50 GiB");
    assert.equal(formatTime(276_700_000), "276.700 ms");
    assert.equal(formatTime(1_109_448_000), "1.109 s");
    assert.equal(formatTime(37_500), "37.5 us");
  });
});
