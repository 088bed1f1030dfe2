import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { gma } from "../core/index.ts";
import { GuestGpuDriver } from "./driver.ts";
import { type AttackOutcome, type AttackReport, RING_ATTACK_NAMES, runAttacks } from "./hostile.ts";
import { type FakeGpuOptions, FakePlatform } from "./test-support/fake-gpu.ts";
import { describeWorkload, runWorkload } from "./workloads.ts";

const MiB = 1024 * 1024;
const PV = {
  mappable: { base: gma(128 * MiB), size: 64 * MiB },
  nonmappable: { base: gma(1024 * MiB), size: 384 * MiB },
};

function attack(opts: FakeGpuOptions) {
  const p = new FakePlatform(opts);
  const d = GuestGpuDriver.open(p);
  const reports = runAttacks(d);
  return {
    p,
    d,
    reports,
    outcome: Object.fromEntries(reports.map((r) => [r.name, r.outcome])) as Record<string, AttackOutcome>,
  };
}

function stillWorks(d: GuestGpuDriver): void {
  const r = runWorkload(d, { kind: "copy", count: 3, width: 16, height: 8, seed: 5, via: "batch" });
  assert.ok(r.ok, `the hostile guest's own driver still works: ${describeWorkload(r)}`);
}

describe("hostile guest: what each attack observes", () => {
  it("runs every attack in order and cleans up after itself", () => {
    const { p, d, reports } = attack({ pvinfo: PV, audit: "at-execution" });
    assert.deepEqual(
      reports.map((r: AttackReport) => r.name),
      [...RING_ATTACK_NAMES],
    );
    for (const r of reports) assert.ok(r.detail.length > 20, r.detail);
    assert.equal(d.stats().buffers, 3, "only the status page and rings are left");
    assert.equal(d.gm.allocations, 3);
    assert.equal(p.pages.live, 1 + 2 * 4, "only their pages are left");
    stillWorks(d);
  });

  it("a mediator that audits every command: everything rejected or ignored, nothing reaches memory", () => {
    const { p, d, outcome } = attack({ pvinfo: PV, audit: "at-execution", execDelayNs: 1000 });
    assert.deepEqual(outcome, {
      "gm-other-vgpu": "rejected",
      "gm-host": "rejected",
      "gm-past-end": "rejected",
      oversize: "rejected",
      "lri-forbidden": "rejected",
      "unknown-opcode": "rejected",
      "gtt-outside-partition": "ignored",
      // Checked command by command at execution: the rewritten batch's first blit (our own surface) ran before its
      // second one (the victim's) was refused. Only shadowing closes that window.
      "batch-toctou": "executed",
      "gtt-foreign-gpa": "ignored",
    });
    assert.equal(p.device.lriWrites.length, 0);
    assert.ok(p.device.gttIgnored >= 1);
    assert.ok(p.device.rejections.some((r) => /outside the partition/.test(r)));
    assert.ok(p.device.rejections.some((r) => /exceeds/.test(r)));
    stillWorks(d);
  });

  it("a mediator that audits at submission but executes guest memory later: the TOCTOU hole is seen", () => {
    const { outcome, reports } = attack({ pvinfo: PV, audit: "at-submission", execDelayNs: 1000 });
    assert.equal(outcome["batch-toctou"], "executed");
    assert.match(reports.find((r) => r.name === "batch-toctou")!.detail, /holds 0x22222222/);
    assert.equal(outcome["gm-other-vgpu"], "rejected");
  });

  it("a whole GPU (no mediation): the guest owns the hardware, so blits and GTT writes execute", () => {
    const { p, d, outcome } = attack({});
    assert.equal(outcome["gm-other-vgpu"], "executed");
    assert.equal(outcome["gm-host"], "executed");
    assert.equal(outcome["gm-past-end"], "executed");
    assert.equal(outcome.oversize, "executed");
    assert.equal(outcome["gtt-outside-partition"], "executed");
    // Hardware stops on an unknown opcode with RING_EIR set; the driver recovers the engine.
    assert.equal(outcome["unknown-opcode"], "rejected");
    // Execution happens inside the TAIL write: nothing is left to rewrite.
    assert.equal(outcome["batch-toctou"], "ignored");
    assert.equal(p.device.lriWrites.length, 1, "the LRI ran (the fake has no fence register to read back)");
    stillWorks(d);
  });
});
