import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { gma, gpa, PAGE_SIZE } from "../core/index.ts";
import {
  CTX_RING_TAIL,
  GEN6_GDRST,
  GEN8_CTX_STATUS_ACTIVE_IDLE,
  GEN8_CTX_STATUS_COMPLETE,
  GEN8_CTX_STATUS_IDLE_ACTIVE,
  GEN8_CTX_STATUS_LITE_RESTORE,
  GEN8_CTX_STATUS_PREEMPTED,
  GFX_RUN_LIST_ENABLE,
  RESET_CTL_READY_TO_RESET,
  RING_ELSP,
  RING_HEAD,
  RING_MODE_GEN7,
  RING_RESET_CTL,
  RING_TAIL,
} from "../gpu/index.ts";
import { ExeclistPort, LogicalContext, MAX_IN_FLIGHT } from "./execlists.ts";
import { GuestPpgtt } from "./ppgtt.ts";
import { FakeMemory, FakePages } from "./test-support/fake-gpu.ts";

const BCS = 0x22000;

/** A device that records register writes and answers what the port polls; CSB entries are written by the test. */
function setup() {
  const memory = new FakeMemory(16 * 1024 * 1024);
  const pages = new FakePages(memory.size);
  const regs = new Map<number, number>();
  const elsp: number[][] = [];
  let pending: number[] = [];
  const host = {
    memory,
    tracer: undefined,
    wait: (done: () => boolean) => done(),
    mmioRead32: (off: number): number => {
      if (off === BCS + RING_MODE_GEN7) return GFX_RUN_LIST_ENABLE;
      if (off === BCS + RING_RESET_CTL) return RESET_CTL_READY_TO_RESET;
      if (off === GEN6_GDRST) return 0;
      return regs.get(off) ?? 0;
    },
    mmioWrite32: (off: number, v: number): void => {
      regs.set(off, v);
      if (off === BCS + RING_ELSP) {
        pending.push(v);
        if (pending.length === 4) {
          elsp.push(pending);
          pending = [];
        }
      }
    },
  };
  const hws = { gma: gma(0x1000), gpa: pages.allocPages(1), size: PAGE_SIZE };
  const port = new ExeclistPort(host, "bcs", hws, () => false);
  port.enable();
  const image = { gma: gma(0x4000), gpa: pages.allocPages(2), size: 2 * PAGE_SIZE };
  const ring = { gma: gma(0x8000), gpa: pages.allocPages(1), size: PAGE_SIZE };
  const ctx = new LogicalContext(port, image, ring, new GuestPpgtt(memory, pages), 0x40);
  let slot = 5;
  /** The engine writes one CSB entry and the driver's handler reads it. */
  const csb = (status: number) => {
    slot = (slot + 1) % 6;
    memory.writeU32(gpa(hws.gpa + 4 * (0x10 + 2 * slot)), status);
    memory.writeU32(gpa(hws.gpa + 4 * (0x11 + 2 * slot)), 0x40);
    memory.writeU32(gpa(hws.gpa + 4 * 0x1f), slot);
    port.processCsb();
  };
  return { port, ctx, elsp, csb };
}

describe("guest execlist port", () => {
  it("one ELSP per submission, at most two outstanding; a COMPLETE lets the rest go, each with its own TAIL", () => {
    const { port, ctx, elsp, csb } = setup();
    for (const tail of [0x40, 0x80, 0xc0, 0x100]) ctx.writeEngine(RING_TAIL, tail); // publish
    assert.equal(MAX_IN_FLIGHT, 2);
    assert.equal(elsp.length, 2, "a third would find both virtual execlist slots taken");
    assert.deepEqual(elsp[0], [0, 0, 0x40, ctx.descriptor.lo], "element 1 absent, then element 0 high and low");
    assert.equal(ctx.submittedTail, 0x80);
    assert.equal(ctx.reg(CTX_RING_TAIL), 0x80);
    csb(GEN8_CTX_STATUS_IDLE_ACTIVE);
    csb(GEN8_CTX_STATUS_PREEMPTED | GEN8_CTX_STATUS_LITE_RESTORE);
    assert.equal(elsp.length, 2, "promotions complete nothing");
    csb(GEN8_CTX_STATUS_ACTIVE_IDLE | GEN8_CTX_STATUS_COMPLETE);
    assert.equal(elsp.length, 4);
    assert.equal(ctx.submittedTail, 0x100);
    assert.deepEqual(port.stats(), { elspWrites: 4, csbEntries: 3, completions: 1, resets: 0 });
  });

  it("an engine reset forgets what was in flight and waiting; the context skips to its published TAIL", () => {
    const { port, ctx, elsp } = setup();
    for (const tail of [0x40, 0x80, 0xc0]) ctx.writeEngine(RING_TAIL, tail);
    port.reset("test");
    ctx.skipToTail();
    assert.equal(port.active, undefined);
    assert.equal(port.queued, 0);
    assert.equal(ctx.readEngine(RING_HEAD), 0xc0, "HEAD = TAIL");
    ctx.writeEngine(RING_TAIL, 0x100);
    assert.equal(elsp.length, 3, "a fresh submission goes in at once");
    assert.equal(port.stats().resets, 1);
  });
});
