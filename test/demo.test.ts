/** Golden-file test of `vgpu demo`: its output is deterministic (virtual clock, seeded RNG). */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { describe, it } from "node:test";
import { runDemo } from "../src/cli/commands/demo.ts";

const GOLDEN = new URL("./golden/demo.txt", import.meta.url);

describe("vgpu demo", () => {
  it("prints the golden output", () => {
    const lines: string[] = [];
    runDemo({}, (l) => lines.push(l));
    const text = `${lines.join("\n")}\n`;
    if (process.env.UPDATE_GOLDEN === "1") writeFileSync(GOLDEN, text);
    assert.equal(text, readFileSync(GOLDEN, "utf8"));
  });
  it("is replayable: the trace is identical run to run", () => {
    const a: string[] = [];
    const b: string[] = [];
    runDemo({ trace: true }, (l) => a.push(l));
    runDemo({ trace: true }, (l) => b.push(l));
    assert.deepEqual(a, b);
    assert.ok(a.some((l) => l.includes("iommu.fault")));
  });
});
