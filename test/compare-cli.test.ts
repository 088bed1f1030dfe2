/**
 * `vgpu compare` on the command line: a refused design is named on stderr with its reason before anything runs and
 * the exit code is 1; an unknown design is an EINVAL; `--perfetto` writes one process per design run; `--json` is
 * the comparison for tools.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { CliIo } from "../src/cli/commands/common.ts";
import { runCompareCommand } from "../src/cli/commands/compare.ts";
import type { ChromeTrace } from "../src/trace-export/index.ts";

function captureIo(cwd: string): CliIo & { stdout: string; stderr: string } {
  const io = {
    stdout: "",
    stderr: "",
    out: (t: string) => {
      io.stdout += t;
    },
    err: (t: string) => {
      io.stderr += t;
    },
    env: {},
    cwd,
  };
  return io;
}

const SMALL = {
  name: "small",
  host: { memory: "4 GiB", iommu: false, gpus: [{ name: "g" }] },
  vms: [
    { name: "a", memory: "256 MiB", devices: [{ kind: "vgpu", gpu: "g", type: "GVTg_V5_8" }] },
    { name: "b", memory: "256 MiB", devices: [{ kind: "vgpu", gpu: "g", type: "GVTg_V5_8" }] },
  ],
  steps: [{ action: "workload", vm: "a", kind: "fill", count: 2, width: 64, height: 64 }],
};

describe("vgpu compare (command line)", () => {
  const dir = mkdtempSync(join(tmpdir(), "vgpu-compare-cli-"));
  writeFileSync(join(dir, "small.json"), JSON.stringify(SMALL));

  it("names a refused design and its reason on stderr, runs the others, exits 1", async () => {
    const io = captureIo(dir);
    const code = await runCompareCommand("small.json", { design: ["no-iommu,dma-api"], json: true }, io);
    assert.equal(code, 1);
    assert.match(
      io.stderr,
      /^vgpu: EINVAL \(Invalid argument\): design dma-api refused before the run: .*host\.iommu is false/m,
    );
    const j = JSON.parse(io.stdout) as { results: { design: { id: string }; refused: string | null }[] };
    assert.deepEqual(
      j.results.map((r) => [r.design.id, r.refused === null]),
      [
        ["no-iommu", true],
        ["dma-api", false],
      ],
    );
  });

  it("refuses an unknown design name", async () => {
    await assert.rejects(
      runCompareCommand("small.json", { design: ["teleport"] }, captureIo(dir)),
      /unknown design 'teleport'/,
    );
  });

  it("--perfetto writes one process per design that ran", async () => {
    const io = captureIo(dir);
    const code = await runCompareCommand("small.json", { design: ["no-iommu"], quiet: true, perfetto: "t.json" }, io);
    assert.equal(code, 0, io.stderr);
    const t = JSON.parse(readFileSync(join(dir, "t.json"), "utf8")) as ChromeTrace;
    const processes = t.traceEvents.filter((e) => e.ph === "M" && e.name === "process_name").map((e) => e.args?.name);
    assert.deepEqual(processes, ["1 no-iommu"]);
    assert.ok(t.traceEvents.some((e) => e.name === "pin_user_pages"));
  });
});
