import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { type Bdf, parseBdf } from "./bdf.ts";
import { MsixTable, PciBus, type PciDeviceModel } from "./pci.ts";
import {
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_MSIX_ENTRY_CTRL_MASKBIT,
  PCI_MSIX_ENTRY_DATA,
  PCI_MSIX_ENTRY_LOWER_ADDR,
  PCI_MSIX_ENTRY_SIZE,
  PCI_MSIX_ENTRY_UPPER_ADDR,
  PCI_MSIX_ENTRY_VECTOR_CTRL,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PciConfigSpace,
} from "./pci-config.ts";

const BDF: Bdf = parseBdf("0000:02:00.0");
const TABLE = 0x2000;
const PBA = 0x800;

/** A function with 70 MSI-X vectors: the table in BAR0 at 0x2000, the PBA (two qwords) in BAR2 at 0x800. */
class MsixDevice implements PciDeviceModel {
  readonly config = new PciConfigSpace({
    vendorId: 0x1af4,
    deviceId: 0x1041,
    classCode: 0x020000,
    bars: [
      { index: 0, size: 0x4000, kind: "mem32" },
      { index: 2, size: 0x1000, kind: "mem64" },
    ],
    msix: { vectors: 70, tableBar: 0, tableOffset: TABLE, pbaBar: 2, pbaOffset: PBA },
  });
  readonly msixTable = new MsixTable(this.config);
  resets = 0;
  constructor(readonly bdf: Bdf) {}
  barRead(bar: number, offset: number, size: number): number {
    return this.msixTable.covers(bar, offset) ? this.msixTable.read(bar, offset, size) : 0x5a;
  }
  barWrite(bar: number, offset: number, size: number, value: number): void {
    if (this.msixTable.covers(bar, offset)) this.msixTable.write(bar, offset, size, value);
  }
  reset(): void {
    this.resets++;
  }
}

function setup() {
  const tracer = new Tracer(new VirtualClock());
  const rec = new TraceRecorder(tracer);
  const bus = new PciBus(tracer);
  const dev = new MsixDevice(BDF);
  bus.add(dev);
  const got: number[] = [];
  bus.bind(BDF, "test", { msix: (v) => got.push(v) });
  dev.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  const cap = dev.config.msixCap;
  const control = (bits: number) => dev.config.write(cap + PCI_MSIX_FLAGS, 2, bits);
  const entry = (v: number, field: number) => TABLE + v * PCI_MSIX_ENTRY_SIZE + field;
  const setMask = (v: number, masked: boolean) =>
    dev.barWrite(0, entry(v, PCI_MSIX_ENTRY_VECTOR_CTRL), 4, masked ? PCI_MSIX_ENTRY_CTRL_MASKBIT : 0);
  const pbaWord = (i: number) => dev.barRead(2, PBA + 8 * i, 8);
  return { bus, dev, rec, got, control, entry, setMask, pbaWord };
}

describe("MsixTable: the table and PBA in device memory", () => {
  it("starts with every entry masked and nothing pending; keeps only the defined bits of each field", () => {
    const s = setup();
    const t = s.dev.msixTable;
    assert.equal(t.vectors, 70);
    for (const v of [0, 31, 69]) {
      assert.equal(s.dev.barRead(0, s.entry(v, PCI_MSIX_ENTRY_VECTOR_CTRL), 4), 1, `entry ${v} masked at reset`);
    }
    assert.equal(s.pbaWord(0), 0);
    s.dev.barWrite(0, s.entry(3, PCI_MSIX_ENTRY_LOWER_ADDR), 4, 0xfee01003);
    s.dev.barWrite(0, s.entry(3, PCI_MSIX_ENTRY_UPPER_ADDR), 4, 0x12);
    s.dev.barWrite(0, s.entry(3, PCI_MSIX_ENTRY_DATA), 4, 0xdeadbeef);
    s.dev.barWrite(0, s.entry(3, PCI_MSIX_ENTRY_VECTOR_CTRL), 4, 0xfffffffe);
    assert.equal(s.dev.barRead(0, s.entry(3, PCI_MSIX_ENTRY_LOWER_ADDR), 4), 0xfee01000, "dword aligned");
    assert.equal(t.address(3), 0x12_fee01000);
    assert.equal(t.data(3), 0xdeadbeef);
    assert.equal(s.dev.barRead(0, s.entry(3, PCI_MSIX_ENTRY_VECTOR_CTRL), 4), 0, "only the Mask bit is kept");
    assert.equal(t.masked(3), false);
    // 8-byte accesses: address low + high as one qword.
    s.dev.barWrite(0, s.entry(4, 0), 8, 0x1_fee00000);
    assert.equal(s.dev.barRead(0, s.entry(4, 0), 8), 0x1_fee00000);
    // Misaligned or odd-sized accesses read all ones and are dropped.
    assert.equal(s.dev.barRead(0, s.entry(4, 2), 4), 0xffffffff);
    assert.equal(s.dev.barRead(0, s.entry(4, 0), 2), 0xffff);
    s.dev.barWrite(0, s.entry(4, PCI_MSIX_ENTRY_DATA), 2, 0x1234);
    assert.equal(t.data(4), 0);
    // Outside both structures: not covered.
    assert.equal(s.dev.msixTable.covers(0, TABLE + 70 * 16), false);
    assert.equal(s.dev.msixTable.covers(0, TABLE - 4), false);
    assert.equal(s.dev.msixTable.covers(2, PBA + 16), false);
    assert.equal(s.dev.msixTable.covers(2, PBA + 12), true);
  });

  it("refuses a config space without an MSI-X capability", () => {
    const c = new PciConfigSpace({ vendorId: 1, deviceId: 2, classCode: 0, bars: [] });
    assert.throws(() => new MsixTable(c), /MSI-X capability/);
  });
});

describe("PciBus.raiseMsix", () => {
  it("drops the message while MSI-X is disabled or the vector is outside the table", () => {
    const s = setup();
    s.setMask(0, false);
    assert.equal(s.bus.raiseMsix(BDF, 0), false);
    s.control(PCI_MSIX_FLAGS_ENABLE);
    assert.equal(s.bus.raiseMsix(BDF, 70), false);
    assert.deepEqual(s.got, []);
    assert.equal(s.pbaWord(0), 0, "a disabled function sets no pending bit");
    assert.equal(s.rec.count("pci.msix"), 2);
  });

  it("delivers an unmasked vector of an enabled function with bus mastering on", () => {
    const s = setup();
    s.control(PCI_MSIX_FLAGS_ENABLE);
    s.setMask(5, false);
    assert.equal(s.bus.raiseMsix(BDF, 5), true);
    assert.equal(s.bus.raiseMsix(BDF, 5), true);
    assert.deepEqual(s.got, [5, 5]);
    assert.deepEqual(
      s.rec.named("pci.msix").map((r) => r.fields.outcome),
      ["delivered", "delivered"],
    );
    s.dev.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    assert.equal(s.bus.raiseMsix(BDF, 5), false, "an MSI-X message is a memory write: no bus mastering, no message");
    assert.deepEqual(s.got, [5, 5]);
  });

  it("a masked vector sets its PBA bit and is sent once when unmasked", () => {
    const s = setup();
    s.control(PCI_MSIX_FLAGS_ENABLE);
    assert.equal(s.bus.raiseMsix(BDF, 65), false);
    assert.equal(s.bus.raiseMsix(BDF, 65), false);
    assert.equal(s.pbaWord(1), 2, "bit 65 = qword 1, bit 1");
    assert.equal(s.dev.msixTable.pending(65), true);
    s.dev.barWrite(2, PBA + 8, 8, 0);
    assert.equal(s.pbaWord(1), 2, "the PBA is read-only");
    s.setMask(65, false);
    assert.deepEqual(s.got, [65], "sent once, however many were raised");
    assert.equal(s.pbaWord(1), 0);
    s.setMask(65, true);
    s.setMask(65, false);
    assert.deepEqual(s.got, [65], "nothing pending: unmasking sends nothing");
  });

  it("Function Mask holds every vector pending; clearing it (or enabling) sends them", () => {
    const s = setup();
    s.control(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
    s.setMask(1, false);
    s.setMask(2, false);
    s.bus.raiseMsix(BDF, 2);
    s.bus.raiseMsix(BDF, 1);
    s.bus.raiseMsix(BDF, 3); // masked in its entry as well
    assert.deepEqual(s.got, []);
    assert.equal(s.pbaWord(0), 0b1110);
    s.control(PCI_MSIX_FLAGS_ENABLE);
    assert.deepEqual(s.got, [1, 2], "pending unmasked vectors go out in vector order");
    assert.equal(s.pbaWord(0), 0b1000, "vector 3 is still masked in its entry");
    // Disabling keeps the bit; enabling again with the entry unmasked sends it.
    s.control(0);
    s.setMask(3, false);
    assert.deepEqual(s.got, [1, 2]);
    s.control(PCI_MSIX_FLAGS_ENABLE);
    assert.deepEqual(s.got, [1, 2, 3]);
  });

  it("keeps a message pending when it is unmasked while bus mastering is off", () => {
    const s = setup();
    s.control(PCI_MSIX_FLAGS_ENABLE);
    s.bus.raiseMsix(BDF, 7);
    s.dev.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    s.setMask(7, false);
    assert.deepEqual(s.got, []);
    assert.equal(s.dev.msixTable.pending(7), true);
  });

  it("a function reset disables MSI-X, masks every entry and clears the PBA", () => {
    const s = setup();
    s.control(PCI_MSIX_FLAGS_ENABLE);
    s.dev.barWrite(0, s.entry(0, PCI_MSIX_ENTRY_DATA), 4, 0x41);
    s.setMask(0, false);
    s.bus.raiseMsix(BDF, 9);
    s.bus.reset(BDF);
    assert.equal(s.dev.resets, 1);
    assert.equal(s.dev.config.msixEnabled(), false);
    assert.equal(s.dev.msixTable.masked(0), true);
    assert.equal(s.dev.msixTable.data(0), 0);
    assert.equal(s.pbaWord(0), 0);
  });

  it("without a driver handler the message is dropped; a removed device is disconnected", () => {
    const s = setup();
    s.control(PCI_MSIX_FLAGS_ENABLE);
    s.bus.unbind(BDF);
    s.setMask(0, false);
    assert.equal(s.bus.raiseMsix(BDF, 0), false);
    s.bus.raiseMsix(BDF, 1); // masked: pending
    s.bus.remove(BDF);
    s.setMask(1, false);
    assert.equal(s.dev.msixTable.pending(1), true, "no bus to send through: it stays pending");
  });

  it("never loses or duplicates a message: each raise is delivered now or exactly once at the next unmask", () => {
    type Op = { kind: "raise" | "mask" | "unmask"; v: number } | { kind: "fmask" | "funmask" };
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ kind: fc.constantFrom("raise", "mask", "unmask" as const), v: fc.integer({ min: 0, max: 3 }) }),
      fc.record({ kind: fc.constantFrom("fmask", "funmask" as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const s = setup();
        s.control(PCI_MSIX_FLAGS_ENABLE);
        const masked = [true, true, true, true];
        const pending = [false, false, false, false];
        let fmask = false;
        const expected: number[] = [];
        for (const o of ops) {
          if (o.kind === "raise") {
            s.bus.raiseMsix(BDF, o.v);
            if (masked[o.v] || fmask) pending[o.v] = true;
            else expected.push(o.v);
          } else if (o.kind === "mask" || o.kind === "unmask") {
            masked[o.v] = o.kind === "mask";
            s.setMask(o.v, masked[o.v]!);
            if (!masked[o.v] && !fmask && pending[o.v]) {
              pending[o.v] = false;
              expected.push(o.v);
            }
          } else {
            fmask = o.kind === "fmask";
            s.control(PCI_MSIX_FLAGS_ENABLE | (fmask ? PCI_MSIX_FLAGS_MASKALL : 0));
            if (!fmask) {
              for (let v = 0; v < 4; v++) {
                if (pending[v] && !masked[v]) {
                  pending[v] = false;
                  expected.push(v);
                }
              }
            }
          }
        }
        assert.deepEqual(s.got, expected);
        for (let v = 0; v < 4; v++) assert.equal(s.dev.msixTable.pending(v), pending[v]);
      }),
      { numRuns: 150 },
    );
  });
});
