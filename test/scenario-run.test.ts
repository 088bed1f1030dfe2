/**
 * The scenario runner end to end: the example scenarios hold up (verified workloads, contained attacks, memory
 * unplugged while pinned, a whole-GPU assignment, 0 isolation violations, a clean teardown); the same file and seed
 * give a byte-identical trace; asking for more than the host has fails with the errno and a sentence naming the
 * limit, before or at the step that hits it, and leaves nothing running.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { loadScenarioFile, parseScenario, runWithReport, type ScenarioInput } from "../src/scenario/index.ts";

const SCENARIOS = new URL("../scenarios/", import.meta.url);
const MiB = 1024 * 1024;

function run(input: ScenarioInput, seed?: number) {
  return runWithReport(parseScenario(input, "t.json"), seed !== undefined ? { seed } : {});
}

/** A small two-VM scenario, quick enough to trace. */
const small = (): ScenarioInput => ({
  name: "small",
  host: { memory: "2 GiB", gpus: [{ name: "gpu0" }] },
  vms: [
    { name: "a", memory: "128 MiB", devices: [{ kind: "vgpu", gpu: "gpu0", type: "GVTg_V5_8" }] },
    { name: "b", memory: "128 MiB", devices: [{ kind: "vgpu", gpu: "gpu0", type: "GVTg_V5_4" }] },
  ],
  steps: [
    { action: "workload", vm: "a", kind: "copy", count: 6, width: 64, height: 32, rects: "random", wait: false },
    { action: "workload", vm: "b", kind: "fill", count: 6, width: 64, height: 32, via: "batch", wait: false },
    { action: "wait" },
    { action: "alloc", vm: "a", name: "buf", bytes: "16 KiB" },
    { action: "kill", vm: "b" },
    { action: "check", vm: "b", expect: { alive: 0, pinnedPages: 0, lockedBytes: 0 } },
  ],
});

/** Host-side proof that nothing is left: the teardown's own check, plus the report's host figures. */
function assertNothingLeft(r: ReturnType<typeof run>): void {
  assert.deepEqual(r.report.teardown, { clean: true, problems: [] });
  if ((r.run.system as typeof r.run.system | undefined) === undefined) return; // refused before assembly
  const host = r.run.system.host;
  assert.equal(host.physmem.stats().pinnedFrames, 0, "no frame is pinned");
  assert.deepEqual(r.run.system.vfio.inspect().containers, [], "no vfio container");
  assert.equal(host.processes().length, 0, "no VMM process is alive");
  for (const g of r.run.system.gpus) assert.equal(g.parent?.vgpus().length ?? 0, 0, `${g.name} has no vGPU left`);
}

describe("scenario runner: the examples", () => {
  for (const name of ["hostile", "unplug-pinned", "whole-gpu", "limits"]) {
    it(`${name}.json holds up: ok, 0 violations, clean teardown`, () => {
      const r = runWithReport(loadScenarioFile(new URL(`${name}.json`, SCENARIOS).pathname));
      assert.equal(r.report.error, null, JSON.stringify(r.report.error));
      assert.deepEqual(r.report.failures, []);
      assert.equal(r.report.isolation.violations, 0);
      assert.equal(r.report.ok, true);
      assertNothingLeft(r);
    });
  }

  it("unplug-pinned: the unplug made the vendor driver unpin the DIMM's pages before the unmap completed", () => {
    const r = runWithReport(loadScenarioFile(new URL("unplug-pinned.json", SCENARIOS).pathname));
    const unplug = r.report.steps.find((s) => s.action === "unplug")!;
    assert.match(unplug.summary, /pinned (\d+) -> (\d+)/);
    const [, before, after] = /pinned (\d+) -> (\d+)/.exec(unplug.summary)!;
    // What stays pinned is the driver's own: rings, status pages, context images (the PPGTT's tables are not in GGTT).
    assert.ok(Number(before) >= 512 && Number(after) <= 48, unplug.summary);
    assert.equal(r.report.explanations[0]!.agree, true, "the DIMM page's chain agreed while it was pinned");
  });

  it("whole-gpu: the assigned VM has all its RAM locked, the vGPU VM only what its guest mapped", () => {
    const r = runWithReport(loadScenarioFile(new URL("whole-gpu.json", SCENARIOS).pathname));
    const vm = (n: string) => r.report.vms.find((v) => v.name === n)!;
    assert.equal(vm("assigned").lockedBytes, 512 * MiB);
    assert.ok(vm("mediated").lockedBytes < MiB);
    const chain = r.report.explanations[0]!;
    assert.equal(chain.mode, "assigned");
    assert.equal(chain.agree, true);
  });
});

describe("scenario runner: determinism", () => {
  it("the same scenario and seed give a byte-identical trace; another seed does not", () => {
    const trace = (seed: number) => {
      const lines: string[] = [];
      const r = runWithReport(parseScenario(small(), "t.json"), { seed, traceLine: (l) => lines.push(l) });
      assert.equal(r.report.ok, true, JSON.stringify(r.report.failures));
      return lines.join("\n");
    };
    const a = trace(5);
    const b = trace(5);
    assert.ok(a.length > 10_000);
    assert.equal(a, b);
    assert.notEqual(trace(6), a);
    for (const l of a.split("\n", 50)) {
      const o = JSON.parse(l) as Record<string, unknown>;
      assert.equal(typeof o.seq, "number");
      assert.equal(typeof o.name, "string");
    }
  });

  it("reports per VM and vGPU: pinned pages, IOVAs, shadow entries, TLB hit rate, busy time; killed VMs hold nothing", () => {
    const r = run(small());
    const a = r.report.devices.find((d) => d.vm === "a")!;
    assert.ok(a.pinnedPages > 0 && a.iovas === a.pinnedPages && a.shadowEntries! >= a.pinnedPages);
    assert.ok(a.tlbHitRate > 0.5 && a.tlbHitRate <= 1, String(a.tlbHitRate));
    assert.ok(a.busyNs > 0 && a.dmaBytes > 0);
    assert.equal(a.violations, 0);
    const b = r.report.vms.find((v) => v.name === "b")!;
    assert.deepEqual([b.state, b.pinnedPages, b.lockedBytes], ["killed", 0, 0]);
    assert.equal(r.report.vms.find((v) => v.name === "a")!.workloads.verified, 1);
    assertNothingLeft(r);
  });
});

describe("scenario runner: more than the host has", () => {
  it("host memory: refused before anything starts (ENOMEM naming the sizes)", () => {
    const s = small();
    const r = run({ ...s, host: { ...s.host, memory: "128 MiB" } });
    assert.equal(r.report.error?.errno, "ENOMEM");
    assert.match(r.report.error!.message, /^host memory: the VMs' RAM adds up to 256 MiB but the host has 128 MiB/);
    assert.equal(r.report.steps.length, 0, "no VM was started");
    assert.equal(r.report.ok, false);
    assertNothingLeft(r);
  });

  it("vGPU instances: more than 7 on a GPU, or more than its aperture holds, refused before anything starts", () => {
    const vms = Array.from({ length: 8 }, (_, i) => ({
      name: `vm${i}`,
      memory: "64 MiB",
      devices: [{ kind: "vgpu" as const, gpu: "gpu0", type: "GVTg_V5_8" as const }],
    }));
    const r = run({ name: "many", host: { memory: "2 GiB", gpus: [{ name: "gpu0", aperture: "1 GiB" }] }, vms });
    assert.equal(r.report.error?.errno, "ENOSPC");
    assert.match(r.report.error!.message, /^vGPU instances: 8 VMs .* want a vGPU on gpu0, which offers at most 7/);
    assertNothingLeft(r);

    const big = vms.slice(0, 2).map((v) => ({ ...v, devices: [{ ...v.devices[0]!, type: "GVTg_V5_1" as const }] }));
    const r2 = run({ name: "big", host: { memory: "2 GiB", gpus: [{ name: "gpu0" }] }, vms: big });
    assert.equal(r2.report.error?.errno, "ENOSPC");
    assert.match(
      r2.report.error!.message,
      /do not fit gpu0 \(0000:00:02\.0\): aperture: they need 1 GiB, 384 MiB is free/,
    );
    assertNothingLeft(r2);
  });

  it("locked memory of a whole-GPU VM below its RAM: refused before anything starts", () => {
    const r = run({
      name: "pt",
      host: { memory: "2 GiB", gpus: [{ name: "gpu0", driver: "vfio-pci" }] },
      vms: [{ name: "vm", memory: "256 MiB", memlock: "64 MiB", devices: [{ kind: "gpu", gpu: "gpu0" }] }],
    });
    assert.equal(r.report.error?.errno, "ENOMEM");
    assert.match(
      r.report.error!.message,
      /^locked memory: vm is given a whole GPU, so type1 pins all 256 MiB .* 64 MiB/,
    );
    assertNothingLeft(r);
  });

  it("locked memory met at a step: ENOMEM at that step, the later steps do not run, nothing is left", () => {
    const s = small();
    const r = run({
      ...s,
      vms: [{ ...s.vms[0]!, memlock: "512 KiB" }, s.vms[1]!],
      steps: [
        { action: "alloc", vm: "a", name: "ok", bytes: "64 KiB" },
        { action: "alloc", vm: "a", name: "big", bytes: "2 MiB" },
        { action: "workload", vm: "b", kind: "fill", count: 1, width: 8, height: 8 },
      ],
    });
    assert.deepEqual(
      [r.report.error?.step, r.report.error?.action, r.report.error?.vm, r.report.error?.errno],
      [1, "alloc", "a", "ENOMEM"],
    );
    assert.match(
      r.report.error!.message,
      /^a: \d+ GTT entries of vgpu1 point at its scratch page; the last: .*vfio_pin_pages\(gpa 0x[0-9a-f]+\) failed: RLIMIT_MEMLOCK exceeded: .*its limit is 128 page\(s\) \(524288 bytes\)/,
      "the vendor driver's own record of the failing call, not a guess from host state",
    );
    assert.equal(r.report.steps.filter((x) => x.action === "workload").length, 0, "the run stopped at the failure");
    assert.equal(r.report.steps.at(-1)!.errno, "ENOMEM");
    assertNothingLeft(r);
  });

  it("IOVA space met at a step: ENOMEM naming the DMA mask", () => {
    const s = small();
    const r = run({
      ...s,
      host: { memory: "2 GiB", gpus: [{ name: "gpu0", dmaMaskBits: 24 }] },
      steps: [{ action: "alloc", vm: "a", name: "big", bytes: "24 MiB" }],
    });
    assert.equal(r.report.error?.errno, "ENOMEM");
    assert.match(
      r.report.error!.message,
      /^a: \d+ GTT entries of vgpu1 .*dma_map_page\(pfn 0x[0-9a-f]+\) failed: .*IOVA space below 0x1000000 exhausted/,
    );
    assertNothingLeft(r);
  });

  it("an expected errno that does not come, and a check that does not hold, are failures; the run goes on", () => {
    const s = small();
    const r = run({
      ...s,
      steps: [
        { action: "alloc", vm: "a", name: "x", bytes: "16 KiB", expect: { errno: "ENOMEM" } },
        { action: "check", vm: "a", expect: { pinnedPages: 0, violations: 0 } },
        { action: "unplug", vm: "a", block: "dimm7", expect: { errno: "EINVAL" } },
      ],
    });
    assert.equal(r.report.error, null);
    assert.equal(r.report.failures.length, 2, r.report.failures.join("\n"));
    assert.match(r.report.failures[0]!, /step 0 \(alloc\): expected ENOMEM, but it succeeded/);
    assert.match(r.report.failures[1]!, /check a: pinnedPages is \d+, expected 0/);
    assert.equal(r.report.steps.at(-1)!.ok, true, "the unplug failed as expected");
    assert.equal(r.report.ok, false);
    assertNothingLeft(r);
  });
});
