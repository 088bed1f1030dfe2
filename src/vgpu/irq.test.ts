import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL } from "../gpu/index.ts";
import { VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX } from "../vfio/index.ts";
import { GT_CONTEXT_SWITCH_INTERRUPT } from "./execlist.ts";
import { GEN8_MASTER_MAP, VirtualIrq } from "./irq.ts";
import { createVgpuConfig } from "./vconfig.ts";

const ISR = (n: number) => 0x44300 + 0x10 * n;
const IMR = (n: number) => ISR(n) + 4;
const IIR = (n: number) => ISR(n) + 8;
const IER = (n: number) => ISR(n) + 0xc;
const ALL = 0xffff_ffff;

function setup(msi: "enabled" | "disabled" | "multi" = "enabled") {
  const config = createVgpuConfig(512 * 1024 * 1024);
  const tracer = new Tracer(new VirtualClock());
  const rec = new TraceRecorder(tracer);
  const irq = new VirtualIrq(1, config, tracer);
  const sent = { msi: 0, intx: 0 };
  irq.setIrqs({
    action: "trigger",
    index: VFIO_PCI_MSI_IRQ_INDEX,
    start: 0,
    count: 1,
    data: { kind: "eventfd", triggers: [{ signal: () => void sent.msi++ }] },
  });
  irq.setIrqs({
    action: "trigger",
    index: VFIO_PCI_INTX_IRQ_INDEX,
    start: 0,
    count: 1,
    data: { kind: "eventfd", triggers: [{ signal: () => void sent.intx++ }] },
  });
  const flags = config.msiCap + 2;
  if (msi === "enabled") config.write(flags, 2, config.read(flags, 2) | 1);
  if (msi === "multi") config.write(flags, 2, config.read(flags, 2) | 1 | (1 << 4));
  const w = (off: number, v: number) => irq.write(off, v, ALL);
  return { irq, sent, rec, w, r: (off: number) => irq.read(off) };
}

describe("virtual interrupts (GVT-g interrupt.c, gen8)", () => {
  it("IIR latches only events unmasked in IMR; ISR shows them all; IIR clears on write 1", () => {
    const { irq, w, r } = setup();
    w(IMR(0), ~GT_CONTEXT_SWITCH_INTERRUPT >>> 0);
    irq.raise("rcs", GT_CONTEXT_SWITCH_INTERRUPT | 1, "rcs events");
    assert.equal(r(ISR(0)), GT_CONTEXT_SWITCH_INTERRUPT | 1);
    assert.equal(r(IIR(0)), GT_CONTEXT_SWITCH_INTERRUPT, "the masked user interrupt is not latched");
    w(IIR(0), 1);
    assert.equal(r(IIR(0)), GT_CONTEXT_SWITCH_INTERRUPT, "writing 0 bits clears nothing");
    w(IIR(0), GT_CONTEXT_SWITCH_INTERRUPT);
    assert.equal(r(IIR(0)), 0);
  });

  it("the master is the OR of IIR & IER per field, by GVT-g's map; only CONTROL is the guest's", () => {
    const { irq, w, r } = setup();
    for (let n = 0; n < 4; n++) w(IMR(n), 0);
    assert.deepEqual(
      GEN8_MASTER_MAP.map((m) => m.bit),
      [0, 1, 2, 3, 4, 6],
    );
    irq.raise("bcs", 1, "bcs");
    irq.raise("vcs", 1, "vcs");
    irq.raise("vecs", 1, "vecs");
    assert.equal(r(GEN8_MASTER_IRQ), 0, "nothing enabled in IER");
    w(IER(0), ALL);
    w(IER(1), ALL);
    w(IER(3), ALL);
    assert.equal(r(GEN8_MASTER_IRQ), (1 << 1) | (1 << 2) | (1 << 6));
    w(GEN8_MASTER_IRQ, ALL);
    assert.equal(r(GEN8_MASTER_IRQ), (GEN8_MASTER_IRQ_CONTROL | (1 << 1) | (1 << 2) | (1 << 6)) >>> 0);
    w(IIR(1), ALL);
    assert.equal(r(GEN8_MASTER_IRQ) & 0xff, (1 << 1) | (1 << 6));
  });

  it("MSI once per pending check while CONTROL is set; nothing before CONTROL, delivered when it is set", () => {
    const { irq, sent, w } = setup();
    w(IMR(0), 0);
    w(IER(0), ALL);
    irq.raise("rcs", 1, "user");
    assert.equal(sent.msi, 0, "master disabled");
    w(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    assert.equal(sent.msi, 1);
    // i915's handler: master off, read, ack, master on: nothing pending any more, nothing sent.
    w(GEN8_MASTER_IRQ, 0);
    w(IIR(0), ALL);
    w(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    assert.equal(sent.msi, 1);
    assert.equal(sent.intx, 0);
  });

  it("an IIR bit queues a second event: one landing between i915's IIR read and its clear is delivered after", () => {
    const { irq, sent, w, r } = setup();
    w(IMR(1), 0);
    w(IER(1), ALL);
    w(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    irq.raise("vcs", GT_CONTEXT_SWITCH_INTERRUPT, "CSB[4]");
    assert.equal(sent.msi, 1);
    // i915's handler: master off, read IIR, (a second context switch lands: CSB[5]), clear what it read, master on.
    w(GEN8_MASTER_IRQ, 0);
    const seen = r(IIR(1));
    assert.equal(seen, GT_CONTEXT_SWITCH_INTERRUPT);
    irq.raise("vcs", GT_CONTEXT_SWITCH_INTERRUPT | 1, "CSB[5] and a user interrupt");
    w(IIR(1), seen);
    assert.equal(r(IIR(1)), GT_CONTEXT_SWITCH_INTERRUPT | 1, "the queued context switch is latched again");
    w(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    assert.equal(sent.msi, 2, "and injected once the master is back on");
    w(GEN8_MASTER_IRQ, 0);
    w(IIR(1), r(IIR(1)));
    assert.equal(r(IIR(1)), 0, "a third clear finds the queue empty");
    w(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    assert.equal(sent.msi, 2);
    // The queue holds one event: three events, two clears.
    irq.raise("vcs", 1, "a");
    irq.raise("vcs", 1, "b");
    irq.raise("vcs", 1, "c");
    w(IIR(1), 1);
    assert.equal(r(IIR(1)), 1);
    w(IIR(1), 1);
    assert.equal(r(IIR(1)), 0);
    irq.reset();
    assert.equal(r(IIR(1)), 0);
  });

  it("injects only MSI: MSI disabled or with several messages enabled -> nothing, with the reason traced", () => {
    for (const mode of ["disabled", "multi"] as const) {
      const { irq, sent, w, rec } = setup(mode);
      w(IMR(0), 0);
      w(IER(0), ALL);
      w(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
      irq.raise("rcs", 1, "user");
      assert.deepEqual(sent, { msi: 0, intx: 0 }, mode);
      assert.equal(irq.suppressed, 1);
      assert.match(
        rec.named("vgpu.virq").at(-1)!.fields.delivered,
        mode === "disabled" ? /MSI disabled/ : /2 messages/,
      );
    }
  });
});
