import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, KernelError } from "../core/index.ts";
import { bdfFields, formatBdf, isBdf, parseBdf, requesterId } from "./bdf.ts";

const einval = (fn: () => unknown, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL && re.test(e.message));

describe("Bdf", () => {
  it("parses the long and the short form into one canonical lower-case string", () => {
    assert.equal(parseBdf("0000:00:02.0"), "0000:00:02.0");
    assert.equal(parseBdf("00:02.0"), "0000:00:02.0");
    assert.equal(parseBdf("00AB:1F:1f.7"), "00ab:1f:1f.7");
    assert.equal(parseBdf("00:02.0"), parseBdf("0000:00:02.0"));
  });

  it("rejects malformed addresses with EINVAL naming the text", () => {
    einval(() => parseBdf(""), /'' is not a PCI address/);
    einval(() => parseBdf("0000:00:02"), /'0000:00:02' is not a PCI address/);
    einval(() => parseBdf("0000:00:02.8"), /not a PCI address/);
    einval(() => parseBdf("0000:00:20.0"), /device number 0x20 exceeds 0x1f/);
    einval(() => parseBdf("0:0:2.0"), /not a PCI address/);
    einval(() => parseBdf(" 0000:00:02.0"), /not a PCI address/);
    assert.equal(isBdf("0000:00:20.0"), false);
    assert.equal(isBdf("00:1f.7"), true);
    assert.equal(isBdf("garbage"), false);
  });

  it("formats fields and rejects out-of-range ones", () => {
    assert.equal(formatBdf({ segment: 1, bus: 0x3a, device: 3, fn: 1 }), "0001:3a:03.1");
    einval(() => formatBdf({ segment: 0, bus: 256, device: 0, fn: 0 }), /bus 256 is out of range/);
    einval(() => formatBdf({ segment: 0, bus: 0, device: 32, fn: 0 }), /device 32/);
    einval(() => formatBdf({ segment: 0, bus: 0, device: 0, fn: 8 }), /function 8/);
  });

  it("computes the requester id (bus << 8 | dev << 3 | fn)", () => {
    assert.equal(requesterId(parseBdf("0000:00:02.0")), 0x10);
    assert.equal(requesterId(parseBdf("0000:3a:1f.7")), 0x3aff);
  });

  it("round-trips every valid field combination (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffff }),
        fc.integer({ min: 0, max: 0xff }),
        fc.integer({ min: 0, max: 0x1f }),
        fc.integer({ min: 0, max: 7 }),
        (segment, bus, device, fn) => {
          const b = formatBdf({ segment, bus, device, fn });
          assert.equal(parseBdf(b), b);
          assert.equal(parseBdf(b.toUpperCase()), b);
          assert.deepEqual(bdfFields(b), { segment, bus, device, fn });
        },
      ),
      { numRuns: 200 },
    );
  });
});
