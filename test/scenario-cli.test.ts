/**
 * `vgpu run FILE` and `vgpu explain`: reports on stdout (text or JSON), the errno line on stderr and exit code 1 when
 * a run fails or a file is malformed (naming the file as typed and the JSON path), the trace as JSON lines.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { CliIo } from "../src/cli/commands/common.ts";
import { runExplain } from "../src/cli/commands/explain.ts";
import { loadScenario, runAndPrint } from "../src/cli/commands/run.ts";
import type { ScenarioReport } from "../src/scenario/index.ts";

const ROOT = new URL("..", import.meta.url).pathname;

function captureIo(cwd = ROOT): CliIo & { stdout: string; stderr: string } {
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

describe("vgpu run", () => {
  it("prints the text report and exits 0 when the scenario holds up", async () => {
    const io = captureIo();
    const code = await runAndPrint(await loadScenario("scenarios/hostile.json", io), {}, io);
    assert.equal(code, 0, io.stderr);
    assert.match(io.stdout, /^scenario hostile \(scenarios\/hostile\.json\), seed 3: ok\n/);
    assert.match(io.stdout, /attack {3}attacker tried 12 attack\(s\): \d+ rejected, \d+ ignored, 0 executed/);
    assert.match(io.stdout, /attack {3}legacy tried 9 attack\(s\): \d+ rejected, \d+ ignored, 0 executed/);
    assert.match(io.stdout, /check {4}attacker: rejectedContexts 5, violations 0/);
    assert.match(io.stdout, /isolation: [\d,]+ DMA page pieces .* 0 violation\(s\)/);
    assert.match(io.stdout, /teardown: clean/);
    assert.equal(io.stderr, "");
  });

  it("--json prints the report for tools; --seed changes the UUIDs; --trace writes JSON lines", async () => {
    const dir = mkdtempSync(join(tmpdir(), "vgpu-run-"));
    try {
      const io = captureIo();
      const sc = await loadScenario("scenarios/unplug-pinned.json", io);
      const trace = join(dir, "t.jsonl");
      assert.equal(await runAndPrint(sc, { json: true, seed: "9", trace }, io), 0);
      const r = JSON.parse(io.stdout) as ScenarioReport;
      assert.deepEqual([r.scenario, r.seed, r.ok, r.isolation.violations], ["unplug-pinned", 9, true, 0]);
      const lines = readFileSync(trace, "utf8").trimEnd().split("\n");
      assert.ok(lines.length > 100);
      const names = new Set(lines.map((l) => (JSON.parse(l) as { name: string }).name));
      for (const n of ["vmm.create", "vgpu.gfn.pin", "vgpu.dma_unmap", "vmm.unplug", "vmm.shutdown"]) {
        assert.ok(names.has(n), n);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a run that hits a host limit: the report says so, stderr has the errno line, exit 1", async () => {
    const dir = mkdtempSync(join(tmpdir(), "vgpu-run-"));
    try {
      writeFileSync(
        join(dir, "too-many.json"),
        JSON.stringify({
          name: "too-many",
          host: { memory: "1 GiB", gpus: [{ name: "gpu0" }] },
          vms: ["a", "b"].map((name) => ({
            name,
            memory: "128 MiB",
            devices: [{ kind: "vgpu", gpu: "gpu0", type: "GVTg_V5_2" }],
          })),
        }),
      );
      const io = captureIo(dir);
      assert.equal(await runAndPrint(await loadScenario("too-many.json", io), {}, io), 1);
      assert.match(io.stdout, /seed 1: FAILED \(ENOSPC\)/);
      assert.match(io.stdout, /error at setup: ENOSPC: vGPU instances: the vGPUs of a \(GVTg_V5_2\), b \(GVTg_V5_2\)/);
      assert.match(
        io.stderr,
        /^vgpu: ENOSPC \(No space left on device\): vGPU instances: .*aperture: they need 512 MiB/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a malformed file: EINVAL naming the file as typed and the JSON path (the real command, exit 1)", () => {
    const dir = mkdtempSync(join(tmpdir(), "vgpu-run-"));
    try {
      writeFileSync(
        join(dir, "bad.json"),
        JSON.stringify({ name: "bad", vms: [{ name: "vm", memory: "64 MiB" }], steps: [{ action: "kill" }] }),
      );
      const r = spawnSync(process.execPath, [join(ROOT, "bin/vgpu.js"), "run", "bad.json"], {
        cwd: dir,
        encoding: "utf8",
      });
      assert.equal(r.status, 1);
      assert.equal(r.stdout, "");
      assert.equal(
        r.stderr,
        "vgpu: EINVAL (Invalid argument): invalid scenario bad.json: steps[0].vm: is required: " +
          "must be a VM name (a letter, then up to 31 letters, digits, - or _)\n",
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("vgpu explain", () => {
  it("shows each layer of a vGPU VM's access and the structure holding it; the layers agree", async () => {
    const io = captureIo();
    assert.equal(await runExplain("scenarios/unplug-pinned.json", { vm: "vm" }, io), 0, io.stderr);
    const lines = io.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^translation chain of vm's GMA 0x[0-9a-f]+ \(vGPU: the seed's chain\)$/);
    assert.deepEqual(
      lines.slice(1, 7).map((l) => l.slice(4, 24).trim()),
      [
        "guest GTT entry",
        "VMM RAM block",
        "process page table",
        "gfn cache / DMA API",
        "physical GGTT entry",
        "IOMMU page table",
      ],
    );
    assert.match(lines[1]!, /GMA 0x[0-9a-f]+ -> GPA 0x[0-9a-f]+ .*virtual GTT/);
    assert.match(lines[5]!, /GMA 0x[0-9a-f]+ -> IOVA 0x[0-9a-f]+ .*GGTT/);
    assert.match(lines[7]!, /^ {2}agree: /);
    // The guest's driver is on execlists: the same buffer through its PPGTT, the guest's tables then the shadow's.
    assert.match(lines[9]!, /^translation chain of vm's GPU virtual address 0x[0-9a-f]+ \(the same buffer as GMA /);
    assert.deepEqual(
      lines.slice(10, 16).map((l) => l.slice(4, 24).trim()),
      ["guest PPGTT", "VMM RAM block", "process page table", "gfn cache / DMA API", "shadow PPGTT", "IOMMU page table"],
    );
    assert.match(lines[10]!, /GVA 0x[0-9a-f]+ -> GPA 0x[0-9a-f]+ .*PML4\[\d+\] = 0x[0-9a-f]+ -> PDP\[\d+\]/);
    assert.match(lines[14]!, /GVA 0x[0-9a-f]+ -> IOVA 0x[0-9a-f]+ .*shadow tables/);
    assert.match(lines[16]!, /^ {2}agree: the layers agree/);
  });

  it("--gva explains one PPGTT address; a GMA outside the vGPU's graphics memory names its ranges", async () => {
    const io = captureIo();
    assert.equal(await runExplain("scenarios/unplug-pinned.json", { vm: "vm", gva: "0x100000000", json: true }, io), 0);
    const e = JSON.parse(io.stdout) as { gva: number; agree: boolean; layers: { layer: string }[] };
    assert.deepEqual([e.gva, e.agree, e.layers[4]!.layer], [0x1_0000_0000, true, "shadow PPGTT"]);
    const out = captureIo();
    assert.equal(await runExplain("scenarios/unplug-pinned.json", { vm: "vm", gma: "0x0" }, out), 1);
    assert.match(
      out.stdout,
      /DISAGREE: 0x0 is outside vgpu1's graphics memory: its GMAs are the aperture range \[0x[0-9a-f]+, 0x[0-9a-f]+\) \(\d+ MiB\) and the hidden range \[0x[0-9a-f]+, 0x[0-9a-f]+\)/,
    );
    await assert.rejects(
      runExplain("scenarios/hostile.json", { vm: "legacy", gva: "0x100000000" }, captureIo()),
      /legacy rings: it has no PPGTT/,
    );
  });

  it("--json, a given GMA, and errors for a VM that does not exist", async () => {
    const io = captureIo();
    assert.equal(await runExplain("scenarios/whole-gpu.json", { vm: "assigned", gma: "0x0", json: true }, io), 0);
    const e = JSON.parse(io.stdout) as { mode: string; gma: number; agree: boolean; layers: unknown[] };
    assert.deepEqual([e.mode, e.gma, e.agree, e.layers.length], ["assigned", 0, true, 4]);
    await assert.rejects(runExplain("scenarios/whole-gpu.json", { vm: "nobody" }, captureIo()), /no VM "nobody"/);
    await assert.rejects(runExplain(undefined, { vm: "vm1", gma: "lots" }, captureIo()), /invalid --gma 'lots'/);
  });
});
