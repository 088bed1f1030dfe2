import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { NS_PER_MS, TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import type { ContextSubmission, EngineId, Submission, SubmissionResult } from "../gpu/index.ts";
import { GvtScheduler, type WorkSink } from "./scheduler.ts";

/** Engines that take `busyNs` per workload, one at a time per engine, completing on the clock. */
class FakeEngines implements WorkSink {
  readonly ran: { owner: number; engine: EngineId; at: number }[] = [];
  private readonly busyUntil = new Map<EngineId, number>();
  constructor(
    private readonly clock: VirtualClock,
    private readonly busyNs: (s: Submission) => number,
  ) {}
  submit(s: Submission): void {
    const start = Math.max(this.clock.now(), this.busyUntil.get(s.engine) ?? 0);
    const ns = this.busyNs(s);
    this.busyUntil.set(s.engine, start + ns);
    this.ran.push({ owner: s.owner, engine: s.engine, at: start });
    const r: SubmissionResult = { busyNs: ns, commands: s.commands.length, faults: 0, userInterrupts: 0 };
    this.clock.at(start + ns, () => s.onComplete(r));
  }
  submitContext(cs: ContextSubmission): void {
    throw new Error(`no contexts in this test (${cs.engine})`);
  }
}

function world(busyNs = 100_000) {
  const clock = new VirtualClock();
  const tracer = new Tracer(clock);
  const engines = new FakeEngines(clock, () => busyNs);
  const sched = new GvtScheduler({ gpu: engines, clock, tracer });
  return { clock, tracer, engines, sched };
}

/** Keeps `id` saturated: `n` workloads queued; each retire of a workload that ran queues another. */
function saturate(sched: GvtScheduler, id: number, engine: EngineId = "rcs", n = 4) {
  const state = { retired: 0, dropped: 0 };
  const one = () =>
    sched.enqueue({
      vgpuId: id,
      engine,
      commands: new Uint32Array(2),
      retire: (r: SubmissionResult | undefined) => {
        if (r === undefined) {
          state.dropped++;
          return;
        }
        state.retired++;
        one();
      },
    });
  for (let i = 0; i < n; i++) one();
  return state;
}

describe("GVT-g time-based scheduler", () => {
  it("shares engine time by weight (2:4:8:16) over simulated seconds, within a few percent", () => {
    const { clock, sched } = world(50_000);
    const weights = [2, 4, 8, 16];
    weights.forEach((w, i) => {
      sched.add(i + 1, w);
      sched.activate(i + 1);
      saturate(sched, i + 1);
    });
    clock.advance(2000 * NS_PER_MS);
    const busy = weights.map((_, i) => sched.stats(i + 1).busyNs);
    const total = busy.reduce((a, b) => a + b, 0);
    assert.ok(total > 1.95e9, `engine nearly always busy: ${total}`);
    weights.forEach((w, i) => {
      const share = busy[i]! / total;
      const want = w / 30;
      assert.ok(
        Math.abs(share - want) / want < 0.05,
        `vgpu${i + 1} weight ${w}: share ${share.toFixed(4)} want ${want}`,
      );
    });
    sched.checkInvariants();
  });

  it("is not work-conserving: a lone busy vGPU gets only its weighted share of each period (as GVT-g)", () => {
    const { clock, sched } = world();
    sched.add(1, 2);
    sched.add(2, 16);
    sched.activate(1);
    sched.activate(2);
    saturate(sched, 1);
    clock.advance(500 * NS_PER_MS);
    const s = sched.stats(1);
    // 100 ms / 18 * 2 per period: 5 periods = 55.6 ms, give or take the workload in flight at each exhaustion.
    const want = (500 * NS_PER_MS * 2) / 18;
    assert.ok(Math.abs(s.busyNs - want) < 1.5 * NS_PER_MS, `busy ${s.busyNs} want ${want}`);
    assert.ok(s.leftNs <= s.allocatedNs, "no more than the allocation left");
    assert.equal(sched.stats(2).busyNs, 0);
  });

  it("picks the first vGPU in LRU order with work and time left; idle when none", () => {
    const { clock, sched, engines, tracer } = world(200_000);
    const rec = new TraceRecorder(tracer);
    sched.add(1, 4);
    sched.add(2, 4);
    sched.activate(1);
    sched.activate(2);
    assert.equal(sched.current, 0, "idle with nothing queued");
    saturate(sched, 1);
    saturate(sched, 2);
    clock.advance(10 * NS_PER_MS);
    const owners = engines.ran.map((r) => r.owner);
    assert.ok(owners.includes(1) && owners.includes(2), "both run");
    // Alternation: slices switch between the two every tick.
    const switches = rec.named("vgpu.sched.slice").filter((r) => r.fields.to !== 0);
    assert.ok(switches.length >= 8, `switches ${switches.length}`);
    for (let i = 1; i < switches.length; i++) {
      assert.notEqual(switches[i]!.fields.to, switches[i - 1]!.fields.to, "LRU alternates between busy vGPUs");
    }
  });

  it("deactivation drops queued work (retired with undefined) and the timer stops with no active vGPU", () => {
    const { clock, sched } = world();
    sched.add(1, 4);
    sched.activate(1);
    const st = saturate(sched, 1, "bcs", 5);
    clock.advance(NS_PER_MS / 2);
    sched.deactivate(1);
    assert.ok(st.dropped >= 3, `dropped ${st.dropped}`);
    assert.equal(sched.outstanding(1) - sched.stats(1).inFlight, 0);
    clock.advance(10 * NS_PER_MS);
    assert.equal(clock.pending(), 0, "no timer left");
    sched.checkInvariants();
  });

  it("a switch waits for in-flight work; time is charged while waiting (debt carries over)", () => {
    const { clock, sched } = world(5 * NS_PER_MS);
    sched.add(1, 8);
    sched.add(2, 8);
    sched.activate(1);
    sched.activate(2);
    saturate(sched, 1, "rcs", 1);
    saturate(sched, 2, "rcs", 1);
    clock.advance(60 * NS_PER_MS);
    const a = sched.stats(1);
    const b = sched.stats(2);
    assert.ok(Math.abs(a.busyNs - b.busyNs) <= 5 * NS_PER_MS, `${a.busyNs} vs ${b.busyNs}`);
    assert.ok(a.scheduledNs >= a.busyNs - 5 * NS_PER_MS);
    sched.checkInvariants();
  });

  it("property: any mix of weights, activations and drops keeps the invariants", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ op: fc.integer({ min: 0, max: 3 }), id: fc.integer({ min: 1, max: 3 }) }), {
          maxLength: 30,
        }),
        (ops) => {
          const { clock, sched } = world(300_000);
          for (let id = 1; id <= 3; id++) sched.add(id, 2 * id);
          for (const { op, id } of ops) {
            if (op === 0) sched.activate(id);
            else if (op === 1) sched.deactivate(id);
            else if (op === 2) saturate(sched, id, id % 2 === 0 ? "rcs" : "bcs", 2);
            else clock.advance(700_000);
            sched.checkInvariants();
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});
