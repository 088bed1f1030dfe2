/**
 * `vgpu demo`, the README's main command: its output is golden (virtual clock, seeded choices: regenerate with
 * UPDATE_GOLDEN=1 after a deliberate change), and its JSON report says what the demo promises: workloads verified
 * on three vGPU types sharing the engines by weight, a hostile guest contained, memory unplugged while pinned, a
 * whole-GPU assignment, a translation chain whose layers agree, 0 isolation violations, a clean teardown.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { describe, it } from "node:test";
import type { CliIo } from "../src/cli/commands/common.ts";
import { runDemo } from "../src/cli/commands/demo.ts";
import type { ScenarioReport } from "../src/scenario/index.ts";

const GOLDEN = new URL("./golden/demo.txt", import.meta.url);

function captureIo(): CliIo & { stdout: string; stderr: string } {
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
    cwd: process.cwd(),
  };
  return io;
}

describe("vgpu demo", () => {
  it("prints the golden output and exits 0", async () => {
    const io = captureIo();
    const code = await runDemo({}, io);
    if (process.env.UPDATE_GOLDEN === "1") writeFileSync(GOLDEN, io.stdout);
    assert.equal(io.stdout, readFileSync(GOLDEN, "utf8"));
    assert.equal(io.stderr, "");
    assert.equal(code, 0);
    // How long it takes is measured by `npm run bench` (scenario), never asserted here.
  });

  it("keeps its promises (JSON report)", async () => {
    const io = captureIo();
    assert.equal(await runDemo({ json: true }, io), 0);
    const r = JSON.parse(io.stdout) as ScenarioReport;
    assert.equal(r.ok, true);
    assert.equal(r.error, null);
    assert.deepEqual(r.failures, []);
    assert.equal(r.isolation.violations, 0);
    assert.ok(r.isolation.pieces > 10_000, "the checker saw the DMAs");
    assert.deepEqual(r.teardown, { clean: true, problems: [] });

    const vgpuTypes = r.devices.filter((d) => d.kind === "vgpu").map((d) => d.type);
    assert.ok(new Set(vgpuTypes).size >= 3, "three vGPU types");
    const fair = r.gpus.find((g) => g.name === "gpu0")!.fairness[0]!;
    assert.equal(fair.vgpus.length, 3);
    assert.ok(fair.jain > 0.99, `engine shares follow the weights (Jain ${fair.jain})`);
    for (const v of fair.vgpus) assert.ok(Math.abs(v.share - v.expectedShare) < 0.02, JSON.stringify(v));

    const vm = (n: string) => r.vms.find((v) => v.name === n)!;
    for (const n of ["vm1", "vm2", "vm3", "hotplug", "whole"]) {
      assert.ok(vm(n).workloads.run > 0 && vm(n).workloads.verified === vm(n).workloads.run, n);
    }
    assert.equal(vm("evil").attacks.executed, 0);
    assert.ok(vm("evil").attacks.rejected > 0);
    assert.equal(vm("evil").state, "killed");
    assert.equal(vm("whole").lockedBytes, vm("whole").memoryBytes, "a whole GPU pins all guest RAM");
    assert.ok(vm("vm1").lockedBytes < 1024 * 1024, "a vGPU pins only what its guest maps");

    const chain = r.explanations.find((e) => e.vm === "vm1")!;
    assert.equal(chain.agree, true);
    assert.deepEqual(
      chain.layers.map((l) => l.layer),
      [
        "guest GTT entry",
        "VMM RAM block",
        "process page table",
        "gfn cache / DMA API",
        "physical GGTT entry",
        "IOMMU page table",
      ],
    );
    // The same bytes through vm1's PPGTT: the guest's tables, then the shadow tables, agreeing.
    const ppgtt = r.explanations.find((e) => e.vm === "vm1" && e.gva !== undefined)!;
    assert.equal(ppgtt.agree, true);
    assert.equal(ppgtt.gma, chain.gma);
    assert.deepEqual(
      ppgtt.layers.map((l) => l.layer),
      ["guest PPGTT", "VMM RAM block", "process page table", "gfn cache / DMA API", "shadow PPGTT", "IOMMU page table"],
    );
    assert.equal(ppgtt.layers[5]!.value, chain.layers[5]!.value, "both chains reach the same host-physical byte");

    // The guests run on execlists: the scheduler interleaved the three VMs' contexts on bcs, and every guest
    // context's DMA was attributed to it; the hostile guest's context attacks were refused by the vendor driver.
    const gpu0 = r.gpus.find((g) => g.name === "gpu0")!;
    const inter = gpu0.interleaving.find((i) => i.engine === "bcs")!;
    assert.ok(inter.switches >= 6, `${inter.switches} switches`);
    assert.deepEqual(new Set(inter.sequence.map((x) => x.vm)), new Set(["vm1", "vm2", "vm3"]));
    for (const n of ["vm1", "vm2", "vm3", "hotplug"]) {
      const c = gpu0.contexts.find((x) => x.vm === n)!;
      assert.ok(c.pieces > 0 && c.violations === 0, n);
    }
    assert.ok(r.devices.find((d) => d.vm === "evil")!.rejectedContexts! >= 5);

    const unplug = r.steps.find((s) => s.action === "unplug")!;
    assert.ok(unplug.ok);
  });
});
