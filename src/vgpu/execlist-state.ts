/**
 * The state machine of one virtual execlist port pair, as GVT-g's execlist.c emulates it
 * (emulate_execlist_schedule_in, emulate_execlist_ctx_schedule_out, emulate_execlist_status): pure data in, context
 * status events out. No registers, memory or interrupts here: the device side (execlist.ts) writes the events into the
 * guest's context status buffer and raises the interrupts.
 *
 * Two slots, each holding the pair of descriptors of one ELSP write. The running slot is the pair the (virtual)
 * hardware works on, the running context the element of it that is current; a pending slot is a pair submitted while
 * another runs that is not a lite restore of it.
 *
 * Transitions (the CSB entries they produce, low dword; the high dword is the context id):
 * - schedule-in while idle: the pair becomes the running slot -> IDLE_TO_ACTIVE (context id 0);
 * - schedule-in of a pair whose element 0 is the context running now (the running pair's element 1 after an element
 *   switch, or its only element): the new pair replaces it -> PREEMPTED | LITE_RESTORE;
 * - any other schedule-in while running: the pair waits as the pending slot (no event);
 * - schedule-out of element 0 while element 1 is valid -> ELEMENT_SWITCH | COMPLETE, element 1 becomes current;
 * - schedule-out of the last element -> ACTIVE_TO_IDLE | COMPLETE; if a pair is pending it becomes the running slot
 *   and IDLE_TO_ACTIVE follows (the interrupt is raised once, after the second entry).
 * A schedule-in with both slots taken, or a schedule-out of a context that is not the running one, is an error with
 * a reason (GVT-g's "virtual execlist slots are full" / "schedule out context is not running context"); the state
 * does not change.
 *
 * The execlist status register (two dwords) follows every change: current pointer = the running slot's index, write
 * pointer = the other slot, element 0/1 valid and active as the running slot is 0 or 1, queue full = a pair is
 * pending, the high dword = the current context's id.
 *
 * One guard GVT-g lacks: the element switch happens only from element 0 (GVT-g compares contexts only, so a pair
 * naming one context twice would switch forever).
 *
 * Invariants: a pending slot exists only while a running slot does; the running context is element 0 or 1 of the
 * running slot; the two slots are distinct.
 */
import { hex } from "../core/index.ts";

/** Context descriptor bits (gvt/execlist.h, gt/intel_lrc.c lrc_descriptor). */
export const CTX_DESC_VALID = 1 << 0;
export const CTX_DESC_FORCE_PD_RESTORE = 1 << 1;
export const CTX_DESC_FORCE_RESTORE = 1 << 2;
export const CTX_DESC_ADDRESSING_SHIFT = 3;
export const CTX_DESC_ADDRESSING_MASK = 0x3;
/** Addressing modes GVT-g accepts: legacy 32-bit (3-level PPGTT) and legacy 64-bit (4-level). */
export const CTX_ADDRESSING_LEGACY_32 = 1;
export const CTX_ADDRESSING_LEGACY_64 = 3;
export const CTX_DESC_PRIVILEGE = 1 << 8;
export const CTX_DESC_LRCA_MASK = 0xffff_f000;

/** Context status buffer entry bits (low dword). */
export const CSB_IDLE_TO_ACTIVE = 1 << 0;
export const CSB_PREEMPTED = 1 << 1;
export const CSB_ELEMENT_SWITCH = 1 << 2;
export const CSB_ACTIVE_TO_IDLE = 1 << 3;
export const CSB_COMPLETE = 1 << 4;
export const CSB_LITE_RESTORE = 1 << 15;

/** Execlist status bits (low dword). */
export const EL_STATUS_CURRENT_POINTER = 1 << 0;
export const EL_STATUS_WRITE_POINTER = 1 << 1;
export const EL_STATUS_QUEUE_FULL = 1 << 2;
export const EL_STATUS_EL1_VALID = 1 << 3;
export const EL_STATUS_EL0_VALID = 1 << 4;
export const EL_STATUS_EL1_ACTIVE = 1 << 17;
export const EL_STATUS_EL0_ACTIVE = 1 << 18;

/** One element of an ELSP write, decoded. */
export interface ContextDescriptor {
  readonly lo: number;
  readonly hi: number;
  readonly valid: boolean;
  readonly privileged: boolean;
  /** Bits 4..3: 1 legacy 32-bit, 3 legacy 64-bit (0 and 2 are advanced/SVM modes). */
  readonly addressingMode: number;
  /** The logical ring context's GGTT address (bits 31..12). */
  readonly lrca: number;
  /** The high dword: i915's context id ((1 + tag) << 5 on gen9). */
  readonly contextId: number;
}

/** Decodes a descriptor from its two dwords. */
export function decodeDescriptor(lo: number, hi: number): ContextDescriptor {
  return {
    lo: lo >>> 0,
    hi: hi >>> 0,
    valid: (lo & CTX_DESC_VALID) !== 0,
    privileged: (lo & CTX_DESC_PRIVILEGE) !== 0,
    addressingMode: (lo >>> CTX_DESC_ADDRESSING_SHIFT) & CTX_DESC_ADDRESSING_MASK,
    lrca: (lo & CTX_DESC_LRCA_MASK) >>> 0,
    contextId: hi >>> 0,
  };
}

/** GVT-g's same_context: the same context id and LRCA. */
export function sameContext(a: ContextDescriptor, b: ContextDescriptor): boolean {
  return a.contextId === b.contextId && a.lrca === b.lrca;
}

/** "ctx 0x20 @ 0x1234000". */
export function describeContext(d: ContextDescriptor): string {
  return `ctx ${hex(d.contextId)} @ LRCA ${hex(d.lrca)}`;
}

/** One context status buffer entry to write. */
export interface CsbEvent {
  readonly status: number;
  readonly contextId: number;
  /** Raise the context-switch interrupt after writing this entry (false: another entry follows first). */
  readonly interrupt: boolean;
}

/** The outcome of a transition: the entries to write, or why the transition is refused. */
export type Transition = { readonly ok: true; readonly events: readonly CsbEvent[] } | { ok: false; reason: string };

interface Slot {
  readonly index: 0 | 1;
  ctx: [ContextDescriptor, ContextDescriptor];
}

const INVALID: ContextDescriptor = decodeDescriptor(0, 0);

/** The virtual execlist of one engine. */
export class ExeclistState {
  private readonly slots: [Slot, Slot] = [
    { index: 0, ctx: [INVALID, INVALID] },
    { index: 1, ctx: [INVALID, INVALID] },
  ];
  private running: Slot | undefined;
  private pending: Slot | undefined;
  /** Which element of the running slot is current. */
  private current: 0 | 1 = 0;
  /** The status register, kept as GVT-g keeps it in vregs. */
  private statusLo = 0;
  private statusHi = 0;

  /** Whether a pair is running (the virtual engine is active). */
  get active(): boolean {
    return this.running !== undefined;
  }

  /** The running context, if any. */
  get runningContext(): ContextDescriptor | undefined {
    return this.running?.ctx[this.current];
  }

  get hasPending(): boolean {
    return this.pending !== undefined;
  }

  /** The execlist status register's two dwords. */
  status(): { lo: number; hi: number } {
    return { lo: this.statusLo, hi: this.statusHi };
  }

  /** Back to idle with empty slots (GVT-g's init_vgpu_execlist). */
  reset(): void {
    for (const s of this.slots) s.ctx = [INVALID, INVALID];
    this.running = undefined;
    this.pending = undefined;
    this.current = 0;
    this.statusLo = 0;
    this.statusHi = 0;
  }

  /** emulate_execlist_schedule_in: the pair (ctx0, ctx1) of one ELSP write reaches the virtual hardware. */
  scheduleIn(ctx0: ContextDescriptor, ctx1: ContextDescriptor): Transition {
    if (this.pending !== undefined) {
      return { ok: false, reason: "both virtual execlist slots are taken (a pair is already pending)" };
    }
    // get_next_execlist_slot: the slot the status register's write pointer names.
    const slot = this.slots[(this.statusLo & EL_STATUS_WRITE_POINTER) !== 0 ? 1 : 0];
    slot.ctx = [ctx0, ctx1];
    const running = this.running;
    if (running === undefined) {
      this.running = slot;
      this.pending = undefined;
      this.current = 0;
      this.updateStatus();
      return { ok: true, events: [{ status: CSB_IDLE_TO_ACTIVE, contextId: 0, interrupt: true }] };
    }
    const [r0, r1] = running.ctx;
    const rc = running.ctx[this.current];
    const liteA = r1.valid && sameContext(r1, ctx0) && !sameContext(r0, rc);
    const liteB = !r1.valid && sameContext(r0, ctx0);
    if (liteA || liteB) {
      this.pending = slot;
      this.switchSlot();
      this.updateStatus();
      return {
        ok: true,
        events: [{ status: CSB_PREEMPTED | CSB_LITE_RESTORE, contextId: ctx0.contextId, interrupt: true }],
      };
    }
    this.pending = slot;
    this.updateStatus();
    return { ok: true, events: [] };
  }

  /** emulate_execlist_ctx_schedule_out: context `ctx` (the running one) has completed. */
  scheduleOut(ctx: ContextDescriptor): Transition {
    const running = this.running;
    const rc = this.runningContext;
    if (running === undefined || rc === undefined || !sameContext(ctx, rc)) {
      return {
        ok: false,
        reason:
          `${describeContext(ctx)} completed but ` +
          (rc === undefined ? "no context is running" : `the running context is ${describeContext(rc)}`),
      };
    }
    const [c0, c1] = running.ctx;
    if (c1.valid && this.current === 0 && sameContext(c0, ctx)) {
      this.current = 1;
      this.updateStatus();
      return {
        ok: true,
        events: [{ status: CSB_ELEMENT_SWITCH | CSB_COMPLETE, contextId: ctx.contextId, interrupt: true }],
      };
    }
    const hadPending = this.pending !== undefined;
    this.switchSlot();
    this.updateStatus();
    const done: CsbEvent = {
      status: CSB_ACTIVE_TO_IDLE | CSB_COMPLETE,
      contextId: ctx.contextId,
      interrupt: !hadPending,
    };
    if (!hadPending) return { ok: true, events: [done] };
    return { ok: true, events: [done, { status: CSB_IDLE_TO_ACTIVE, contextId: 0, interrupt: true }] };
  }

  /** switch_virtual_execlist_slot: the pending pair (if any) becomes the running one. */
  private switchSlot(): void {
    this.running = this.pending;
    this.pending = undefined;
    this.current = 0;
  }

  /** emulate_execlist_status: the pointer bits change only while a pair runs (idle keeps the last ones). */
  private updateStatus(): void {
    let lo =
      this.statusLo &
      ~(EL_STATUS_QUEUE_FULL | EL_STATUS_EL0_VALID | EL_STATUS_EL1_VALID | EL_STATUS_EL0_ACTIVE | EL_STATUS_EL1_ACTIVE);
    const r = this.running;
    if (r !== undefined) {
      lo &= ~(EL_STATUS_CURRENT_POINTER | EL_STATUS_WRITE_POINTER);
      if (r.index === 1) lo |= EL_STATUS_CURRENT_POINTER | EL_STATUS_EL1_VALID | EL_STATUS_EL1_ACTIVE;
      else lo |= EL_STATUS_WRITE_POINTER | EL_STATUS_EL0_VALID | EL_STATUS_EL0_ACTIVE;
    }
    if (this.pending !== undefined) lo |= EL_STATUS_QUEUE_FULL;
    this.statusLo = lo >>> 0;
    this.statusHi = this.runningContext?.contextId ?? 0;
  }
}
