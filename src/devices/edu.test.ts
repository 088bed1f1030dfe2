import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type Hpa, type Iova, TraceRecorder } from "../core/index.ts";
import {
  type Bdf,
  DMA_OK,
  Host,
  IOMMU_READ,
  IOMMU_WRITE,
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_MSI,
  PCI_CAP_ID_MSIX,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  PCI_MSIX_ENTRY_DATA,
  PCI_MSIX_ENTRY_LOWER_ADDR,
  PCI_MSIX_ENTRY_VECTOR_CTRL,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_PBA,
  PCI_MSIX_TABLE,
  PCI_STATUS,
  PCI_STATUS_INTERRUPT,
  parseBdf,
} from "../host/index.ts";
import {
  EDU_ALL_ONES_64,
  EDU_DMA_IRQ,
  EDU_DMA_IRQ_STATUS,
  EDU_DMA_RUN,
  EDU_DMA_START,
  EDU_DMA_TO_RAM,
  EDU_FACT_IRQ,
  EDU_ID_VALUE,
  EDU_MSIX_PBA_OFFSET,
  EDU_MSIX_TABLE_OFFSET,
  EDU_REG_DMA_CMD,
  EDU_REG_DMA_COUNT,
  EDU_REG_DMA_DST,
  EDU_REG_DMA_SRC,
  EDU_REG_FACTORIAL,
  EDU_REG_ID,
  EDU_REG_IRQ_ACK,
  EDU_REG_IRQ_RAISE,
  EDU_REG_IRQ_STATUS,
  EDU_REG_LIVENESS,
  EDU_REG_STATUS,
  EDU_STATUS_IRQFACT,
  EduDevice,
  eduFactorial,
} from "./edu.ts";

const BDF: Bdf = parseBdf("0000:00:04.0");

/** A host with an edu device on its bus and in its own IOMMU group, and a stub driver recording interrupts. */
function setup(opts: { dmaMask?: number; msix?: number } = {}) {
  const host = new Host({ memoryBytes: 256 * 1024 * 1024 });
  const rec = new TraceRecorder(host.tracer);
  const edu = new EduDevice({
    bdf: BDF,
    bus: host.pci,
    dma: host.deviceDma(BDF),
    tracer: host.tracer,
    ...(opts.dmaMask !== undefined ? { dmaMask: opts.dmaMask } : {}),
    ...(opts.msix !== undefined ? { msix: opts.msix } : {}),
  });
  const group = host.addPciDevice(edu);
  const irqs = { msi: [] as number[], msix: [] as number[], intx: [] as boolean[] };
  host.pci.bind(BDF, "edu-test", {
    msi: (v) => irqs.msi.push(v),
    msix: (v) => irqs.msix.push(v),
    intx: (l) => irqs.intx.push(l),
  });
  edu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  return { host, edu, group, irqs, rec };
}

/** Moves the device's group onto an unmanaged domain mapping `pages` host frames at `iova` (what type1 does). */
function mapForDevice(s: ReturnType<typeof setup>, iova: number, pages: number) {
  const domain = s.host.iommu.allocDomain("unmanaged");
  s.host.iommu.attachGroup(s.group, domain);
  const frames: number[] = [];
  for (let i = 0; i < pages; i++) {
    const f = s.host.physmem.allocFrame();
    frames.push(f);
    domain.map((iova + i * 4096) as Iova, (f * 4096) as Hpa, 4096, IOMMU_READ | IOMMU_WRITE);
  }
  return { domain, frames };
}

const w = (e: EduDevice, off: number, v: number, size = 4) => e.barWrite(0, off, size, v);
const r = (e: EduDevice, off: number, size = 4) => e.barRead(0, off, size);

describe("edu: identity", () => {
  it("has QEMU's ids, class, pin, MSI capability and a 1 MiB BAR0", () => {
    const { edu } = setup();
    assert.equal(edu.config.read(0, 4), 0x11e81234);
    assert.equal(edu.config.read(0x08, 4), 0x00ff0010, "class 00ff, prog-if 0, revision 0x10");
    assert.equal(edu.config.read(0x2c, 4), 0x11001af4);
    assert.equal(edu.config.read(0x3d, 1), 1);
    assert.notEqual(edu.config.findCapability(PCI_CAP_ID_MSI), 0);
    edu.config.write(PCI_BASE_ADDRESS_0, 4, 0xffffffff);
    assert.equal(edu.config.read(PCI_BASE_ADDRESS_0, 4), 0xfff00000, "1 MiB, 32-bit, non-prefetchable memory");
  });
});

describe("edu: registers", () => {
  it("reads the identification and inverts the liveness value", () => {
    const { edu } = setup();
    assert.equal(r(edu, EDU_REG_ID), EDU_ID_VALUE);
    w(edu, EDU_REG_LIVENESS, 0x12345678);
    assert.equal(r(edu, EDU_REG_LIVENESS), ~0x12345678 >>> 0);
    w(edu, EDU_REG_ID, 0);
    assert.equal(r(edu, EDU_REG_ID), EDU_ID_VALUE, "the id is read-only");
  });

  it("answers all ones to bad sizes and non-registers, and ignores such writes", () => {
    const { edu } = setup();
    assert.equal(r(edu, EDU_REG_ID, 2), 0xffff);
    assert.equal(r(edu, EDU_REG_ID, 8), EDU_ALL_ONES_64);
    assert.equal(r(edu, 0x10), 0xffffffff);
    assert.equal(r(edu, EDU_REG_DMA_SRC + 4), 0xffffffff);
    assert.equal(edu.barRead(1, 0, 4), 0xffffffff, "no BAR1");
    w(edu, EDU_REG_LIVENESS, 5, 2);
    assert.equal(r(edu, EDU_REG_LIVENESS), 0, "a 2-byte write below 0x80 is ignored");
    w(edu, EDU_REG_DMA_SRC, 0x1234, 2);
    assert.equal(r(edu, EDU_REG_DMA_SRC, 8), 0);
  });

  it("keeps 64-bit DMA registers, and a 4-byte write sets the whole register", () => {
    const { edu } = setup();
    w(edu, EDU_REG_DMA_SRC, 0x1_2345_6789, 8);
    assert.equal(r(edu, EDU_REG_DMA_SRC, 8), 0x1_2345_6789);
    assert.equal(r(edu, EDU_REG_DMA_SRC, 4), 0x2345_6789, "a 4-byte read is the low half");
    w(edu, EDU_REG_DMA_SRC, 0xabc, 4);
    assert.equal(r(edu, EDU_REG_DMA_SRC, 8), 0xabc);
    w(edu, EDU_REG_DMA_CMD, EDU_DMA_TO_RAM);
    assert.equal(r(edu, EDU_REG_DMA_CMD), 0, "a command write without the start bit is ignored");
    w(edu, EDU_REG_DMA_COUNT, 0, 8);
    w(edu, EDU_REG_DMA_DST, EDU_DMA_START, 8);
    w(edu, EDU_REG_DMA_CMD, 0x1_8000_0001, 8);
    assert.equal(r(edu, EDU_REG_DMA_CMD, 8), 0x1_8000_0000, "64-bit command kept, start bit cleared when done");
  });
});

describe("edu: factorial", () => {
  it("computes n! mod 2^32 as QEMU's u32 loop, synchronously", () => {
    const { edu } = setup();
    w(edu, EDU_REG_FACTORIAL, 5);
    assert.equal(r(edu, EDU_REG_STATUS) & 1, 0, "never seen computing");
    assert.equal(r(edu, EDU_REG_FACTORIAL), 120);
    w(edu, EDU_REG_FACTORIAL, 13);
    assert.equal(r(edu, EDU_REG_FACTORIAL), Number(6227020800n % 2n ** 32n));
    w(edu, EDU_REG_FACTORIAL, 0xffffffff);
    assert.equal(r(edu, EDU_REG_FACTORIAL), 0);
  });

  it("matches a BigInt reference for every n", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 200 }), (n) => {
        let f = 1n;
        for (let i = 2n; i <= BigInt(n); i++) f = (f * i) % 2n ** 32n;
        return eduFactorial(n) === Number(f);
      }),
      { numRuns: 200 },
    );
  });

  it("raises interrupt 0x001 when asked, over INTx, with the status bit following the line", () => {
    const s = setup();
    w(s.edu, EDU_REG_FACTORIAL, 3);
    assert.deepEqual(s.irqs.intx, [], "no interrupt without the status bit");
    w(s.edu, EDU_REG_STATUS, EDU_STATUS_IRQFACT);
    assert.equal(r(s.edu, EDU_REG_STATUS), EDU_STATUS_IRQFACT);
    w(s.edu, EDU_REG_FACTORIAL, 4);
    assert.equal(r(s.edu, EDU_REG_FACTORIAL), 24);
    assert.equal(r(s.edu, EDU_REG_IRQ_STATUS), EDU_FACT_IRQ);
    assert.deepEqual(s.irqs.intx, [true]);
    assert.equal(s.edu.config.read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT, PCI_STATUS_INTERRUPT);
    w(s.edu, EDU_REG_IRQ_ACK, EDU_FACT_IRQ);
    assert.deepEqual(s.irqs.intx, [true, false]);
    assert.equal(s.edu.config.read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT, 0);
  });
});

describe("edu: interrupts", () => {
  it("raise ORs into the status; INTx stays up until every bit is acknowledged", () => {
    const s = setup();
    w(s.edu, EDU_REG_IRQ_RAISE, 0x10);
    w(s.edu, EDU_REG_IRQ_RAISE, 0x02);
    assert.equal(r(s.edu, EDU_REG_IRQ_STATUS), 0x12);
    assert.deepEqual(s.irqs.intx, [true]);
    w(s.edu, EDU_REG_IRQ_ACK, 0x10);
    assert.deepEqual(s.irqs.intx, [true]);
    w(s.edu, EDU_REG_IRQ_ACK, 0x02);
    assert.deepEqual(s.irqs.intx, [true, false]);
  });

  it("sends MSI vector 0 on every raise once MSI is enabled, and only with bus mastering", () => {
    const s = setup();
    const cap = s.edu.config.msiCap;
    s.edu.config.write(cap + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE);
    w(s.edu, EDU_REG_IRQ_RAISE, 1);
    w(s.edu, EDU_REG_IRQ_RAISE, 1);
    assert.deepEqual(s.irqs.msi, [0, 0]);
    assert.deepEqual(s.irqs.intx, [], "no INTx while MSI is on");
    s.edu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    w(s.edu, EDU_REG_IRQ_RAISE, 1);
    assert.deepEqual(s.irqs.msi, [0, 0], "an MSI is a memory write: dropped without bus mastering");
  });
});

describe("edu: MSI-X (the msix option)", () => {
  const entry = (v: number, field: number) => EDU_MSIX_TABLE_OFFSET + 16 * v + field;

  it("adds the capability after MSI, with the table and PBA in BAR0 at their documented offsets", () => {
    const { edu } = setup({ msix: 2 });
    const x = edu.config.findCapability(PCI_CAP_ID_MSIX);
    assert.equal(x, edu.config.msixCap);
    assert.equal(edu.config.read(edu.config.msiCap + 1, 1), x, "MSI links to MSI-X");
    assert.equal(edu.config.read(x + PCI_MSIX_FLAGS, 2), 1, "table size N-1 = 1");
    assert.equal(edu.config.read(x + PCI_MSIX_TABLE, 4), 0x80000, "BIR 0");
    assert.equal(edu.config.read(x + PCI_MSIX_PBA, 4), 0x81000);
    assert.equal(EDU_MSIX_PBA_OFFSET, 0x81000);
    edu.config.write(PCI_BASE_ADDRESS_0, 4, 0xffffffff);
    assert.equal(edu.config.read(PCI_BASE_ADDRESS_0, 4), 0xfff00000, "BAR0 still 1 MiB");
    // The table answers in BAR0; the registers are untouched.
    assert.equal(r(edu, entry(1, PCI_MSIX_ENTRY_VECTOR_CTRL)), 1, "masked at power-on");
    w(edu, entry(0, PCI_MSIX_ENTRY_LOWER_ADDR), 0xfee00000);
    w(edu, entry(0, PCI_MSIX_ENTRY_DATA), 0x4021);
    assert.equal(edu.msixTable?.address(0), 0xfee00000);
    assert.equal(r(edu, entry(0, PCI_MSIX_ENTRY_DATA)), 0x4021);
    assert.equal(r(edu, EDU_MSIX_PBA_OFFSET, 8), 0);
    assert.equal(r(edu, EDU_REG_ID), EDU_ID_VALUE);
    assert.equal(r(edu, EDU_MSIX_TABLE_OFFSET + 0x20), 0xffffffff, "past 2 entries: not a register");
    // Without the option there is no MSI-X.
    assert.equal(setup().edu.config.findCapability(PCI_CAP_ID_MSIX), 0);
    assert.equal(setup().edu.msixTable, undefined);
  });

  it("rejects a vector count outside 1..256", () => {
    for (const n of [0, 257, 1.5]) assert.throws(() => setup({ msix: n }), /from 1 to 256/);
    assert.equal(setup({ msix: 256 }).edu.msixTable?.vectors, 256);
  });

  it("sends MSI-X vector 0 when MSI-X is enabled (before MSI, before INTx); a masked vector waits in the PBA", () => {
    const s = setup({ msix: 2 });
    const x = s.edu.config.msixCap;
    s.edu.config.write(s.edu.config.msiCap + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE);
    s.edu.config.write(x + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
    w(s.edu, EDU_REG_IRQ_RAISE, 1);
    assert.deepEqual([s.irqs.msix, s.irqs.msi, s.irqs.intx], [[], [], []], "vector 0 is masked");
    assert.equal(r(s.edu, EDU_MSIX_PBA_OFFSET), 1, "pending bit 0");
    w(s.edu, entry(0, PCI_MSIX_ENTRY_VECTOR_CTRL), 0);
    assert.deepEqual(s.irqs.msix, [0], "sent on unmask");
    assert.equal(r(s.edu, EDU_MSIX_PBA_OFFSET), 0);
    w(s.edu, EDU_REG_IRQ_RAISE, 1);
    assert.deepEqual(s.irqs.msix, [0, 0], "every raise sends a message");
    assert.equal(s.rec.named("edu.irq").at(-1)?.fields.delivery, "msix");
    // MSI-X off: back to MSI.
    s.edu.config.write(x + PCI_MSIX_FLAGS, 2, 0);
    w(s.edu, EDU_REG_IRQ_RAISE, 1);
    assert.deepEqual(s.irqs.msi, [0]);
    // Acknowledging never drives INTx while MSI-X or MSI is on.
    w(s.edu, EDU_REG_IRQ_ACK, 1);
    assert.deepEqual(s.irqs.intx, []);
  });

  it("a reset masks the table and clears the PBA", () => {
    const s = setup({ msix: 1 });
    s.edu.config.write(s.edu.config.msixCap + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
    w(s.edu, entry(0, PCI_MSIX_ENTRY_DATA), 0x55);
    w(s.edu, EDU_REG_IRQ_RAISE, 1);
    s.host.pci.reset(BDF);
    assert.equal(r(s.edu, entry(0, PCI_MSIX_ENTRY_VECTOR_CTRL)), 1);
    assert.equal(r(s.edu, entry(0, PCI_MSIX_ENTRY_DATA)), 0);
    assert.equal(r(s.edu, EDU_MSIX_PBA_OFFSET), 0);
    assert.equal(s.edu.config.msixEnabled(), false);
  });
});

describe("edu: DMA through the IOMMU", () => {
  it("copies RAM -> device buffer -> RAM through a mapped IOVA, raising 0x100 when asked", () => {
    const s = setup();
    const { frames } = mapForDevice(s, 0x100000, 2);
    const pattern = Uint8Array.from({ length: 300 }, (_, i) => (i * 7 + 3) & 0xff);
    s.host.physmem.write((frames[0]! * 4096 + 4000) as Hpa, pattern);
    // RAM -> device: 300 bytes straddling the two mapped pages, into the buffer at +0x10.
    w(s.edu, EDU_REG_DMA_SRC, 0x100000 + 4000);
    w(s.edu, EDU_REG_DMA_DST, EDU_DMA_START + 0x10);
    w(s.edu, EDU_REG_DMA_COUNT, 300);
    w(s.edu, EDU_REG_DMA_CMD, EDU_DMA_RUN);
    assert.equal(r(s.edu, EDU_REG_DMA_CMD) & EDU_DMA_RUN, 0, "done when the write returns");
    assert.deepEqual(s.edu.buffer.subarray(0x10, 0x10 + 300), pattern);
    // Device -> RAM, with the completion interrupt.
    w(s.edu, EDU_REG_DMA_SRC, EDU_DMA_START + 0x10);
    w(s.edu, EDU_REG_DMA_DST, 0x100000 + 100);
    w(s.edu, EDU_REG_DMA_CMD, EDU_DMA_RUN | EDU_DMA_TO_RAM | EDU_DMA_IRQ);
    const back = new Uint8Array(300);
    s.host.physmem.read((frames[0]! * 4096 + 100) as Hpa, back);
    assert.deepEqual(back, pattern);
    assert.equal(s.edu.lastDmaResult, DMA_OK);
    assert.equal(r(s.edu, EDU_REG_IRQ_STATUS), EDU_DMA_IRQ_STATUS);
    assert.deepEqual(s.irqs.intx, [true]);
    assert.equal(s.rec.named("edu.dma").length, 2);
  });

  it("a DMA to an unmapped IOVA is blocked, recorded as an IOMMU fault, and still completes the command", () => {
    const s = setup();
    const { frames } = mapForDevice(s, 0x100000, 1);
    s.edu.buffer.fill(0xaa);
    w(s.edu, EDU_REG_DMA_SRC, EDU_DMA_START);
    w(s.edu, EDU_REG_DMA_DST, 0x100000 + 4096 - 16); // 16 bytes mapped, then the unmapped page
    w(s.edu, EDU_REG_DMA_COUNT, 64);
    w(s.edu, EDU_REG_DMA_CMD, EDU_DMA_RUN | EDU_DMA_TO_RAM | EDU_DMA_IRQ);
    assert.equal(s.edu.dmaFaults, 1);
    const res = s.edu.lastDmaResult;
    assert.ok(res !== undefined && res !== DMA_OK);
    assert.equal(res.iova, 0x101000);
    assert.equal(res.completed, 16);
    assert.equal(res.reason, "not-present");
    const fault = s.host.iommu.lastFault();
    assert.ok(fault !== undefined);
    assert.equal(fault.bdf, BDF);
    assert.equal(fault.iova, 0x101000);
    assert.equal(fault.access, IOMMU_WRITE);
    assert.equal(s.rec.named("iommu.fault").length, 1);
    const page = new Uint8Array(4096);
    s.host.physmem.read((frames[0]! * 4096) as Hpa, page);
    assert.deepEqual(page.subarray(4080), new Uint8Array(16).fill(0xaa), "pages before the fault were written");
    assert.equal(r(s.edu, EDU_REG_IRQ_STATUS), EDU_DMA_IRQ_STATUS, "the command completes as in QEMU");
  });

  it("a read from an unmapped IOVA faults and leaves the buffer alone", () => {
    const s = setup();
    mapForDevice(s, 0x100000, 1);
    s.edu.buffer.fill(0x55);
    w(s.edu, EDU_REG_DMA_SRC, 0x300000);
    w(s.edu, EDU_REG_DMA_DST, EDU_DMA_START);
    w(s.edu, EDU_REG_DMA_COUNT, 32);
    w(s.edu, EDU_REG_DMA_CMD, EDU_DMA_RUN);
    assert.equal(s.edu.dmaFaults, 1);
    assert.equal(s.host.iommu.lastFault()?.access, IOMMU_READ);
    assert.deepEqual(s.edu.buffer.subarray(0, 32), new Uint8Array(32).fill(0x55));
  });

  it("refuses transfers outside its buffer and without bus mastering, and clamps addresses to dma_mask", () => {
    const s = setup();
    const { frames } = mapForDevice(s, 0x100000, 1);
    w(s.edu, EDU_REG_DMA_SRC, EDU_DMA_START + 4000);
    w(s.edu, EDU_REG_DMA_DST, 0x100000);
    w(s.edu, EDU_REG_DMA_COUNT, 200);
    w(s.edu, EDU_REG_DMA_CMD, EDU_DMA_RUN | EDU_DMA_TO_RAM);
    assert.equal(s.edu.guestErrors, 1);
    assert.equal(s.host.iommu.faults().length, 0, "nothing reached the bus");
    // Bus mastering off: dropped.
    s.edu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
    w(s.edu, EDU_REG_DMA_SRC, EDU_DMA_START);
    w(s.edu, EDU_REG_DMA_COUNT, 8);
    w(s.edu, EDU_REG_DMA_CMD, EDU_DMA_RUN | EDU_DMA_TO_RAM);
    assert.equal(s.edu.guestErrors, 2);
    // The 28-bit mask folds 0x10100000 onto 0x100000, which is mapped.
    s.edu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    s.edu.buffer.fill(0x77, 0, 8);
    w(s.edu, EDU_REG_DMA_DST, 0x1010_0000);
    w(s.edu, EDU_REG_DMA_CMD, EDU_DMA_RUN | EDU_DMA_TO_RAM);
    assert.equal(s.edu.guestErrors, 3, "the clamp is logged");
    const got = new Uint8Array(8);
    s.host.physmem.read((frames[0]! * 4096) as Hpa, got);
    assert.deepEqual(got, new Uint8Array(8).fill(0x77));
  });
});

describe("edu: reset", () => {
  it("returns every register, the buffer and the interrupt line to power-on values", () => {
    const s = setup();
    w(s.edu, EDU_REG_LIVENESS, 1);
    w(s.edu, EDU_REG_FACTORIAL, 6);
    w(s.edu, EDU_REG_STATUS, EDU_STATUS_IRQFACT);
    w(s.edu, EDU_REG_DMA_SRC, 0x1234);
    w(s.edu, EDU_REG_IRQ_RAISE, 0x8);
    s.edu.buffer.fill(1);
    s.host.pci.reset(BDF);
    assert.equal(r(s.edu, EDU_REG_LIVENESS), 0);
    assert.equal(r(s.edu, EDU_REG_FACTORIAL), 0);
    assert.equal(r(s.edu, EDU_REG_STATUS), 0);
    assert.equal(r(s.edu, EDU_REG_DMA_SRC), 0);
    assert.equal(r(s.edu, EDU_REG_IRQ_STATUS), 0);
    assert.equal(
      s.edu.buffer.reduce((a, b) => a + b, 0),
      0,
    );
    assert.deepEqual(s.irqs.intx, [true, false]);
    assert.equal(s.edu.config.read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT, 0);
    assert.equal(s.edu.config.read(PCI_COMMAND, 2), 0, "config space reset by the bus");
  });
});
