/** irqfd-style injection and the INTx line's EOI, redelivery and storm bound. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { EventFd } from "../host/index.ts";
import { EventfdIrq, InterruptSource, IntxLine, MAX_INTX_REDELIVERIES } from "./irq.ts";

function source() {
  const tracer = new Tracer(new VirtualClock());
  const rec = new TraceRecorder(tracer);
  return { tracer, rec, src: new InterruptSource("vm", "dev", tracer) };
}

describe("EventfdIrq", () => {
  it("consumes the eventfd and injects once per wake-up", () => {
    const { src, rec } = source();
    const ev = new EventFd();
    const got: number[] = [];
    src.subscribe((v) => got.push(v));
    const irq = new EventfdIrq(ev, () => src.inject(0x41, "msi"));
    ev.signal();
    ev.signal();
    assert.deepEqual(got, [0x41, 0x41]);
    assert.equal(ev.counter, 0n, "read (consumed) on every wake-up, as an irqfd does");
    assert.equal(src.msiDelivered, 2);
    assert.equal(rec.count("vmm.irq.inject"), 2);
    irq.dispose();
    ev.signal();
    assert.equal(got.length, 2, "a disposed irqfd injects nothing");
  });

  it("lets a handler unsubscribe itself while it runs", () => {
    const { src } = source();
    let n = 0;
    const off = src.subscribe(() => {
      n++;
      off();
    });
    src.inject(1, "msi");
    src.inject(1, "msi");
    assert.equal(n, 1);
  });
});

describe("IntxLine", () => {
  it("injects, then EOIs with an unmask; an unmask that finds the line asserted redelivers at once", () => {
    const { src, tracer } = source();
    const ev = new EventFd();
    let asserted = 2; // the device keeps its line up for two deliveries
    let unmasks = 0;
    new IntxLine(
      ev,
      src,
      () => 11,
      () => {
        unmasks++;
        if (asserted > 0) ev.signal(); // vfio-pci signals again from inside the unmask
      },
      tracer,
    );
    src.subscribe(() => asserted--);
    ev.signal();
    assert.equal(src.intxDelivered, 2, "delivered, EOI found it asserted, delivered again, EOI found it clear");
    assert.equal(unmasks, 2);
  });

  it("leaves a line the guest never clears masked after a bounded number of deliveries, until its EOI", () => {
    const { src, tracer, rec } = source();
    const ev = new EventFd();
    let cleared = false;
    const line = new IntxLine(
      ev,
      src,
      () => 5,
      () => {
        if (!cleared) ev.signal();
      },
      tracer,
    );
    ev.signal();
    assert.equal(src.intxDelivered, MAX_INTX_REDELIVERIES);
    assert.equal(line.masked, true);
    assert.equal(rec.named("vmm.irq.storm")[0]?.fields.deliveries, MAX_INTX_REDELIVERIES);
    cleared = true;
    line.eoi();
    assert.equal(line.masked, false);
    assert.equal(src.intxDelivered, MAX_INTX_REDELIVERIES, "the unmask found the line clear: nothing more");
    ev.signal();
    assert.equal(src.intxDelivered, MAX_INTX_REDELIVERIES + 1);
  });
});
