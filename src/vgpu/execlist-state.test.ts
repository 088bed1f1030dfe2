import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type ContextDescriptor,
  CSB_ACTIVE_TO_IDLE,
  CSB_COMPLETE,
  CSB_ELEMENT_SWITCH,
  CSB_IDLE_TO_ACTIVE,
  CSB_LITE_RESTORE,
  CSB_PREEMPTED,
  decodeDescriptor,
  EL_STATUS_CURRENT_POINTER,
  EL_STATUS_EL0_ACTIVE,
  EL_STATUS_EL0_VALID,
  EL_STATUS_EL1_ACTIVE,
  EL_STATUS_QUEUE_FULL,
  EL_STATUS_WRITE_POINTER,
  ExeclistState,
  type Transition,
} from "./execlist-state.ts";

/** i915's descriptor of a context at `lrca` with id `id`: valid, legacy 64-bit, privileged. */
const ctx = (lrca: number, id: number): ContextDescriptor => decodeDescriptor(lrca | (3 << 3) | (1 << 8) | 1, id);
const NONE = decodeDescriptor(0, 0);
const A = ctx(0x10_0000, 0x20);
const B = ctx(0x20_0000, 0x40);
const C = ctx(0x30_0000, 0x60);

/** The events of a transition as [status, context id, interrupt]. */
function events(t: Transition): [number, number, boolean][] {
  assert.ok(t.ok, t.ok ? "" : t.reason);
  return t.events.map((e) => [e.status, e.contextId, e.interrupt]);
}

describe("execlist state machine (GVT-g's schedule-in / schedule-out)", () => {
  it("decodes i915's descriptor: valid, addressing mode 3, privileged, LRCA, context id", () => {
    const d = decodeDescriptor(0x0012_3119, 0x40);
    assert.deepEqual(
      [d.valid, d.addressingMode, d.privileged, d.lrca, d.contextId],
      [true, 3, true, 0x0012_3000, 0x40],
    );
    assert.equal(NONE.valid, false);
  });

  it("idle -> active, then the last element completes: IDLE_TO_ACTIVE (ctx 0), ACTIVE_TO_IDLE | COMPLETE", () => {
    const s = new ExeclistState();
    assert.deepEqual(events(s.scheduleIn(A, NONE)), [[CSB_IDLE_TO_ACTIVE, 0, true]]);
    assert.ok(s.active);
    assert.equal(s.status().lo, EL_STATUS_WRITE_POINTER | EL_STATUS_EL0_VALID | EL_STATUS_EL0_ACTIVE);
    assert.equal(s.status().hi, A.contextId);
    assert.deepEqual(events(s.scheduleOut(A)), [[CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, A.contextId, true]]);
    assert.equal(s.active, false);
  });

  it("two elements: ELEMENT_SWITCH | COMPLETE for element 0, then ACTIVE_TO_IDLE | COMPLETE for element 1", () => {
    const s = new ExeclistState();
    events(s.scheduleIn(A, B));
    assert.deepEqual(events(s.scheduleOut(A)), [[CSB_ELEMENT_SWITCH | CSB_COMPLETE, A.contextId, true]]);
    assert.equal(s.runningContext, B);
    assert.deepEqual(events(s.scheduleOut(B)), [[CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, B.contextId, true]]);
  });

  it("lite restore: a new pair whose element 0 is the running context -> PREEMPTED | LITE_RESTORE, in the other slot", () => {
    const s = new ExeclistState();
    events(s.scheduleIn(A, NONE));
    assert.deepEqual(events(s.scheduleIn(A, NONE)), [[CSB_PREEMPTED | CSB_LITE_RESTORE, A.contextId, true]]);
    assert.equal(s.hasPending, false);
    assert.equal(s.status().lo & EL_STATUS_CURRENT_POINTER, EL_STATUS_CURRENT_POINTER, "running from slot 1 now");
    // After an element switch, the running element 1 may be resubmitted as element 0 of a new pair.
    const t = new ExeclistState();
    events(t.scheduleIn(A, B));
    events(t.scheduleOut(A));
    assert.deepEqual(events(t.scheduleIn(B, C)), [[CSB_PREEMPTED | CSB_LITE_RESTORE, B.contextId, true]]);
    assert.equal(t.runningContext, B);
  });

  it("pending pair: another context waits (no event); the last element's completion promotes it with two events", () => {
    const s = new ExeclistState();
    events(s.scheduleIn(A, NONE));
    assert.deepEqual(events(s.scheduleIn(B, NONE)), []);
    assert.ok(s.hasPending);
    assert.equal(s.status().lo & EL_STATUS_QUEUE_FULL, EL_STATUS_QUEUE_FULL);
    // ACTIVE_TO_IDLE | COMPLETE without an interrupt, then IDLE_TO_ACTIVE with it: one interrupt for both.
    assert.deepEqual(events(s.scheduleOut(A)), [
      [CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, A.contextId, false],
      [CSB_IDLE_TO_ACTIVE, 0, true],
    ]);
    assert.equal(s.runningContext, B);
    assert.equal(s.hasPending, false);
    assert.equal(s.status().lo & EL_STATUS_EL1_ACTIVE, EL_STATUS_EL1_ACTIVE, "the pending pair was in slot 1");
    assert.deepEqual(events(s.scheduleOut(B)), [[CSB_ACTIVE_TO_IDLE | CSB_COMPLETE, B.contextId, true]]);
  });

  it("refuses a third pair while one is pending, and a completion of a context that is not running", () => {
    const s = new ExeclistState();
    const none = s.scheduleOut(A);
    assert.ok(!none.ok && /no context is running/.test(none.reason));
    events(s.scheduleIn(A, NONE));
    events(s.scheduleIn(B, NONE));
    const full = s.scheduleIn(C, NONE);
    assert.ok(!full.ok && /both virtual execlist slots are taken/.test(full.reason));
    const wrong = s.scheduleOut(B);
    assert.ok(!wrong.ok && /running context is ctx 0x20/.test(wrong.reason), wrong.ok ? "" : wrong.reason);
    assert.equal(s.runningContext, A, "nothing changed");
  });

  it("reset empties both slots", () => {
    const s = new ExeclistState();
    events(s.scheduleIn(A, B));
    s.reset();
    assert.equal(s.active, false);
    assert.deepEqual(s.status(), { lo: 0, hi: 0 });
    assert.deepEqual(events(s.scheduleIn(C, NONE)), [[CSB_IDLE_TO_ACTIVE, 0, true]]);
  });
});
