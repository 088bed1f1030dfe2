import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { insertAt, removeAt } from "./sorted.ts";

describe("insertAt / removeAt", () => {
  it("do what splice does, for any array and index", () => {
    fc.assert(
      fc.property(fc.array(fc.integer()), fc.nat(), fc.integer(), (a, at, x) => {
        const i = at % (a.length + 1);
        const mine = [...a];
        const ref = [...a];
        insertAt(mine, i, x);
        ref.splice(i, 0, x);
        assert.deepEqual(mine, ref);
        const j = at % mine.length;
        removeAt(mine, j);
        ref.splice(j, 1);
        assert.deepEqual(mine, ref);
      }),
    );
  });
});
