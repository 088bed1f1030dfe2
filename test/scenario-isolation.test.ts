/**
 * The isolation invariant catches what it must: a deliberately broken mediator (the test-only switch that makes the
 * command scanner skip its address audit) lets a hostile guest's blits reach another VM's memory, and the checker
 * reports violations naming the vGPU, the victim's frame and the GMA; a corrupted shadow GTT entry is caught the same
 * way; a DMA made outside any vGPU's work is a violation too. With a sound mediator the same attacks give 0.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type Iova, PAGE_SIZE } from "../src/core/index.ts";
import { gen8PteEncode } from "../src/gpu/index.ts";
import { CommandBuffer } from "../src/guest/index.ts";
import { loadScenarioFile, parseScenario, runWithReport, ScenarioRun } from "../src/scenario/index.ts";

const SCENARIOS = new URL("../scenarios/", import.meta.url);

/** Two VMs on one GPU, each keeping a buffer mapped; left running for the test to poke at. */
function twoVms(submission: "ring" | "execlists" = "ring"): ScenarioRun {
  return new ScenarioRun(
    parseScenario({
      name: "two",
      host: { memory: "2 GiB", gpus: [{ name: "gpu0", submission }] },
      vms: [
        { name: "victim", memory: "128 MiB", devices: [{ kind: "vgpu", gpu: "gpu0", type: "GVTg_V5_4" }] },
        { name: "culprit", memory: "128 MiB", devices: [{ kind: "vgpu", gpu: "gpu0", type: "GVTg_V5_8" }] },
      ],
      steps: [
        { action: "alloc", vm: "victim", name: "secret", bytes: "16 KiB" },
        { action: "alloc", vm: "culprit", name: "own", bytes: "16 KiB" },
      ],
    }),
    { keepAlive: true },
  ).run();
}

describe("isolation checker", () => {
  it("a broken mediator (address audit skipped): the hostile guest's blits reach the victim, violations > 0", () => {
    const broken = runWithReport(loadScenarioFile(new URL("broken-mediator.json", SCENARIOS).pathname));
    const r = broken.report;
    assert.ok(r.isolation.violations > 0, "the checker must catch the broken mediator");
    assert.equal(r.ok, false);
    const v = r.isolation.samples[0]!;
    assert.equal(v.vm, "attacker");
    assert.equal(v.write, true);
    assert.match(v.frameOwnerName, /^VM victim \(pid \d+\)$/);
    assert.ok(v.gma !== undefined);
    assert.equal(r.devices.find((d) => d.vm === "attacker")!.violations, r.isolation.violations);
    assert.deepEqual(r.teardown, { clean: true, problems: [] }, "nothing is left even so");

    // The same attacks on the sound mediator: nothing reaches the victim.
    const sound = loadScenarioFile(new URL("broken-mediator.json", SCENARIOS).pathname);
    const ok = runWithReport({
      ...sound,
      host: { ...sound.host, gpus: sound.host.gpus.map((g) => ({ ...g, unsafeSkipAddressAudit: false })) },
    });
    assert.equal(ok.report.isolation.violations, 0);
    assert.ok(ok.report.vms.find((x) => x.name === "attacker")!.attacks.rejected > 0);
  });

  it("a corrupted shadow GTT entry: the vGPU's DMA lands in another VM's frame, and the checker names both", () => {
    const run = twoVms();
    try {
      assert.equal(run.error, undefined);
      const victim = run.vms.get("victim")!;
      const culprit = run.vms.get("culprit")!;
      const gpu = culprit.gpu!;
      const secret = victim.buffers[0]!.buffer;
      const own = culprit.buffers[0]!.buffer;
      // What a buggy vendor driver might do: shadow the culprit's own entry with the victim's page's IOVA.
      const victimIova = gpu.gpu.ggtt.pageDma(secret.gma / PAGE_SIZE);
      assert.ok(victimIova > 0);
      gpu.hostDriver!.writeGgtt(own.gma / PAGE_SIZE, gen8PteEncode(victimIova));
      const before = new Uint8Array(64);
      victim.driver!.readBuffer(secret, 0, before);
      const status = culprit.driver!.run(
        "bcs",
        new CommandBuffer().colorBlt(own.gma, 64, 0, 0, 16, 1, 0xdeadbeef).words,
      );
      assert.equal(status, "completed", "the command scanner saw nothing wrong: the GMA is the culprit's own");
      const after = new Uint8Array(64);
      victim.driver!.readBuffer(secret, 0, after);
      assert.notDeepEqual(after, before, "the victim's memory really was written");
      assert.equal(run.checker.violationCount, 1);
      const v = run.checker.violations()[0]!;
      assert.deepEqual(
        [v.vm, v.vgpu, v.write, v.gma, v.iova, v.frameOwnerName],
        ["culprit", culprit.vgpu!.id, true, own.gma, victimIova, `VM victim (pid ${victim.pid})`],
      );
      assert.equal(run.checker.stats("gpu0", culprit.vgpu!.id).violations, 1);
      assert.equal(run.checker.stats("gpu0", victim.vgpu!.id).violations, 0);
      gpu.hostDriver!.writeGgtt(own.gma / PAGE_SIZE, gen8PteEncode(gpu.gpu.ggtt.pageDma(own.gma / PAGE_SIZE + 1)));
    } finally {
      run.teardown();
    }
  });

  it("with execlists, the violation is attributed to the guest context that made it, and clean contexts stay clean", () => {
    const run = twoVms("execlists");
    try {
      assert.equal(run.error, undefined);
      const victim = run.vms.get("victim")!;
      const culprit = run.vms.get("culprit")!;
      const gpu = culprit.gpu!;
      const secret = victim.buffers[0]!.buffer;
      const own = culprit.buffers[0]!.buffer;
      // Both guests' contexts run clean work first: attributed to them, no violation.
      for (const v of [victim, culprit]) {
        const b = v.buffers[0]!.buffer;
        const fill = new CommandBuffer().colorBlt(v.driver!.gpuAddress(b), 64, 0, 0, 16, 1, 0x1234);
        assert.equal(v.driver!.run("bcs", fill.words), "completed");
      }
      assert.equal(run.checker.violationCount, 0);
      // The planted bug: the culprit's own GGTT entry shadowed with the victim's IOVA; its context stores through it.
      const victimIova = gpu.gpu.ggtt.pageDma(secret.gma / PAGE_SIZE);
      gpu.hostDriver!.writeGgtt(own.gma / PAGE_SIZE, gen8PteEncode(victimIova));
      const status = culprit.driver!.run("bcs", new CommandBuffer().storeDataImm(own.gma, 0xbad).words);
      assert.equal(status, "completed", "the scanner saw a store into the culprit's own graphics memory");
      assert.equal(run.checker.violationCount, 1);
      const contexts = run.checker.guestContexts("gpu0");
      const mine = contexts.filter((c) => c.vgpu === culprit.vgpu!.id);
      const theirs = contexts.filter((c) => c.vgpu === victim.vgpu!.id);
      assert.equal(mine.length, 1);
      assert.equal(mine[0]!.engine, "bcs");
      assert.equal(mine[0]!.vm, "culprit");
      assert.match(mine[0]!.label, /^guest ctx 0x40 \(LRCA 0x[0-9a-f]+\)$/);
      assert.equal(mine[0]!.violations, 1);
      assert.ok(mine[0]!.pieces > 0 && theirs[0]!.pieces > 0, "both contexts' DMA was attributed");
      assert.equal(theirs[0]!.violations, 0);
      const runs = run.checker.contextRuns("gpu0").filter((r) => r.engine === "bcs");
      assert.ok(runs.some((r) => r.vm === "victim") && runs.some((r) => r.vm === "culprit"));
      gpu.hostDriver!.writeGgtt(own.gma / PAGE_SIZE, gen8PteEncode(gpu.gpu.ggtt.pageDma(own.gma / PAGE_SIZE + 1)));
    } finally {
      run.teardown();
    }
  });

  it("a DMA outside any vGPU's work reaching a VM's frame is a violation (idle DMA); host frames are the host's", () => {
    const run = twoVms();
    try {
      const victim = run.vms.get("victim")!;
      const secret = victim.buffers[0]!.buffer;
      const gpu = victim.gpu!;
      const iova = gpu.gpu.ggtt.pageDma(secret.gma / PAGE_SIZE);
      const dma = run.system.host.deviceDma(gpu.gpu.bdf);
      assert.equal(dma.read(iova as Iova, new Uint8Array(8)), 0);
      assert.equal(run.checker.violationCount, 1);
      const v = run.checker.violations()[0]!;
      assert.deepEqual([v.vm, v.vgpu, v.write, v.gma], ["", undefined, false, secret.gma]);
      assert.match(v.frameOwnerName, /^VM victim/);
      // A read of the host's ring with no work executing is the host's own business: not a violation.
      const ring = gpu.gpu.ggtt.pageDma(gpu.hostDriver!.ringGma("bcs") / PAGE_SIZE);
      assert.equal(dma.read(ring as Iova, new Uint8Array(8)), 0);
      assert.equal(run.checker.violationCount, 1);
      // A write to it would be.
      assert.equal(dma.write(ring as Iova, new Uint8Array(8)), 0);
      assert.equal(run.checker.violationCount, 2);
      assert.equal(run.checker.violations()[1]!.frameOwnerName, "the host driver's ring");
    } finally {
      run.teardown();
    }
  });
});
