import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, KernelError, Rng } from "../core/index.ts";
import { isValidUuid, parseUuid, printable, randomUuid, UUID_STRING_LEN } from "./uuid.ts";

const hex16 = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => {
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
});

describe("mdev UUIDs", () => {
  it("accepts the 8-4-4-4-12 form in either case and names it in lower case", () => {
    fc.assert(
      fc.property(hex16, (u) => {
        assert.equal(isValidUuid(u), true);
        assert.equal(parseUuid(u.toUpperCase()), u);
        assert.equal(parseUuid(u), u);
      }),
      { numRuns: 200 },
    );
  });

  it("rejects any change of a dash or a digit to something else, and any other length", () => {
    fc.assert(
      fc.property(hex16, fc.integer({ min: 0, max: 35 }), (u, i) => {
        const wrong = u[i] === "-" ? "0" : i % 2 ? "g" : "-";
        const bad = u.slice(0, i) + wrong + u.slice(i + 1);
        assert.equal(isValidUuid(bad), false);
        assert.throws(
          () => parseUuid(bad),
          (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL,
        );
        assert.equal(isValidUuid(u.slice(1)), false);
        assert.equal(isValidUuid(`${u}0`), false);
      }),
      { numRuns: 200 },
    );
  });

  it("quotes the bad text, with control characters made visible", () => {
    assert.throws(() => parseUuid("nope\n"), /'nope\\n' is not a UUID/);
    assert.equal(printable("a\tb"), "a\\x09b");
  });

  it("makes replayable version-4 UUIDs from a seeded Rng", () => {
    const a = randomUuid(new Rng(7));
    assert.equal(a, randomUuid(new Rng(7)));
    assert.notEqual(a, randomUuid(new Rng(8)));
    assert.equal(a.length, UUID_STRING_LEN);
    assert.equal(isValidUuid(a), true);
    assert.equal(a[14], "4");
    assert.ok("89ab".includes(a[19]!));
  });
});
