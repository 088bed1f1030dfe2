import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, KernelError, TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import {
  type IrqTrigger,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR1_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_PCI_ROM_REGION_INDEX,
  VFIO_PCI_VGA_REGION_INDEX,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  type VfioIrqSet,
} from "../vfio/index.ts";
import { createMttyParent, MTTY_CONFIG_SPACE_SIZE, MTTY_MAX_PORTS, type MttyDevice, MttyParent } from "./mtty.ts";
import {
  MTTY_FIFO_SIZE,
  UART_FCR,
  UART_FCR_CLEAR_RCVR,
  UART_FCR_ENABLE_FIFO,
  UART_IER,
  UART_IER_MSI,
  UART_IER_RDI,
  UART_IER_RLSI,
  UART_IER_THRI,
  UART_IIR,
  UART_LCR,
  UART_LCR_DLAB,
  UART_LSR,
  UART_LSR_DR,
  UART_LSR_OE,
  UART_LSR_TEMT,
  UART_LSR_THRE,
  UART_MCR,
  UART_MCR_AFE,
  UART_MCR_DTR,
  UART_MCR_OUT2,
  UART_MCR_RTS,
  UART_MSR,
  UART_RX,
  UART_SCR,
  UART_TX,
} from "./mtty-uart.ts";

const U1 = "11111111-2222-3333-4444-555555555555";
const U2 = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

const errno =
  (n: number) =>
  (e: unknown): boolean =>
    e instanceof KernelError && e.errno === n;

function setup(ports?: number) {
  const tracer = new Tracer(new VirtualClock());
  const rec = new TraceRecorder(tracer);
  const parent = createMttyParent(ports === undefined ? { tracer } : { tracer, ports });
  return { tracer, rec, parent };
}

function device(typeId: "1" | "2" = "1", uuid = U1): { dev: MttyDevice; parent: MttyParent; rec: TraceRecorder } {
  const { parent, rec } = setup();
  const dev = parent.create(uuid, typeId).ops as MttyDevice;
  return { dev, parent, rec };
}

/** An IrqTrigger that counts its signals. */
class Counter implements IrqTrigger {
  n = 0;
  signal(): void {
    this.n++;
  }
}

const rd = (dev: MttyDevice, reg: number, bar = 0): number => {
  const b = new Uint8Array(1);
  assert.equal(dev.regionRead(bar, reg, b), 1);
  return b[0]!;
};
const wr = (dev: MttyDevice, reg: number, value: number, bar = 0): void => {
  assert.equal(dev.regionWrite(bar, reg, Uint8Array.of(value)), 1);
};
const cfg = (dev: MttyDevice, offset: number, size: number): number => {
  const b = new Uint8Array(size);
  dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, offset, b);
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
};
const cfgWrite = (dev: MttyDevice, offset: number, size: number, value: number): void => {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = Math.floor(value / 256 ** i) & 0xff;
  dev.regionWrite(VFIO_PCI_CONFIG_REGION_INDEX, offset, b);
};
const irqSet = (index: number, action: VfioIrqSet["action"], data: VfioIrqSet["data"], count = 1): VfioIrqSet => ({
  index,
  action,
  start: 0,
  count,
  data,
});
const setEventfd = (dev: MttyDevice, index: number, t: IrqTrigger | null): void =>
  dev.setIrqs(irqSet(index, "trigger", { kind: "eventfd", triggers: [t] }));

describe("mtty parent: the shared port pool", () => {
  it("offers types 1 and 2 named as mtty, with vfio-pci as device_api", () => {
    const { parent } = setup();
    assert.equal(parent.driverName, "mtty");
    assert.equal(parent.parentName, "mtty");
    assert.deepEqual(
      parent.types.map((t) => [t.id, t.name, t.deviceApi]),
      [
        ["1", "Single port serial", "vfio-pci"],
        ["2", "Dual port serial", "vfio-pci"],
      ],
    );
    assert.equal(createMttyParent({ tracer: new Tracer(new VirtualClock()), parentName: "mtty0" }).parentName, "mtty0");
  });

  it("24 ports give 24 single or 12 dual devices, and mixed creation shares the pool", () => {
    const { parent } = setup();
    assert.equal(MTTY_MAX_PORTS, 24);
    assert.equal(parent.availability("1").instances, 24);
    assert.equal(parent.availability("2").instances, 12);
    parent.create(U1, "1");
    assert.equal(parent.availability("1").instances, 23);
    assert.equal(parent.availability("2").instances, 11);
    parent.create(U2, "2");
    assert.equal(parent.portsLeft, 21);
    assert.equal(parent.availability("1").instances, 21);
    assert.equal(parent.availability("2").instances, 10);
    for (let i = 0; i < 10; i++) parent.create(`00000000-0000-0000-0000-0000000000${i}0`, "2");
    assert.equal(parent.portsLeft, 1);
    const dual = parent.availability("2");
    assert.equal(dual.instances, 0);
    assert.match(dual.reason ?? "", /1 of 24 left.*Dual port serial.*needs 2/);
    assert.equal(parent.availability("1").instances, 1);
    assert.equal(parent.availability("1").reason, undefined);
  });

  it("create fails with ENOSPC naming the numbers, and destroy gives the ports back", () => {
    const { parent, rec } = setup(3);
    const a = parent.create(U1, "2");
    assert.throws(
      () => parent.create(U2, "2"),
      (e: unknown) =>
        errno(Errno.ENOSPC)(e) && /needs 2 port\(s\), 1 of 3 left/.test((e as Error).message) && /Dual/.test(String(e)),
    );
    parent.create(U2, "1");
    assert.equal(parent.portsLeft, 0);
    assert.throws(() => parent.create("bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee", "1"), errno(Errno.ENOSPC));
    parent.destroy(a);
    assert.equal(parent.portsLeft, 2);
    assert.equal(parent.availability("2").instances, 1);
    assert.deepEqual(
      rec.named("mtty.destroy").map((r) => [r.fields.uuid, r.fields.ports, r.fields.portsLeft]),
      [[U1, 2, 2]],
    );
    assert.deepEqual(
      rec.named("mtty.create").map((r) => [r.fields.type, r.fields.portsLeft]),
      [
        ["2", 1],
        ["1", 0],
      ],
    );
  });

  it("refuses unknown types, duplicate UUIDs and foreign instances; names devices by the lower-case UUID", () => {
    const { parent } = setup();
    assert.throws(() => parent.create(U1, "3"), errno(Errno.EINVAL));
    assert.throws(() => parent.availability("mtty-1"), errno(Errno.EINVAL));
    const inst = parent.create(U2.toUpperCase(), "1");
    assert.equal(inst.ops.name, U2);
    assert.equal(parent.device(U2.toUpperCase()), inst.ops);
    assert.throws(() => parent.create(U2, "1"), errno(Errno.EEXIST));
    assert.equal(inst.attributes?.["vendor/sample_mdev_dev"]?.read?.(), `This is MDEV ${U2}\n`);
    const other = setup().parent.create(U2, "1");
    assert.throws(() => parent.destroy(other), errno(Errno.ENODEV));
    parent.destroy(inst);
    assert.throws(() => parent.destroy(inst), errno(Errno.ENODEV));
    assert.equal(parent.portsLeft, 24);
    assert.throws(() => new MttyParent({ tracer: new Tracer(new VirtualClock()), ports: -1 }), errno(Errno.EINVAL));
  });

  it("keeps the pool accounted over any sequence of creates and destroys (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 30 }),
        fc.array(fc.record({ create: fc.boolean(), type: fc.constantFrom("1", "2"), pick: fc.nat() }), {
          maxLength: 60,
        }),
        (pool, ops) => {
          const { parent } = setup(pool);
          const live: { inst: ReturnType<MttyParent["create"]>; ports: number }[] = [];
          let n = 0;
          for (const op of ops) {
            if (op.create || live.length === 0) {
              const need = op.type === "1" ? 1 : 2;
              const fits = parent.portsLeft >= need;
              const uuid = `00000000-0000-0000-0000-${(n++).toString(16).padStart(12, "0")}`;
              if (fits) live.push({ inst: parent.create(uuid, op.type), ports: need });
              else assert.throws(() => parent.create(uuid, op.type), errno(Errno.ENOSPC));
            } else {
              const [gone] = live.splice(op.pick % live.length, 1);
              parent.destroy(gone!.inst);
            }
            const used = live.reduce((s, d) => s + d.ports, 0);
            assert.equal(parent.portsLeft + used, pool);
            assert.equal(parent.availability("1").instances, parent.portsLeft);
            assert.equal(parent.availability("2").instances, Math.floor(parent.portsLeft / 2));
            assert.equal(parent.devices().length, live.length);
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe("mtty device: info, regions, irqs", () => {
  it("reports PCI | RESET with 9 regions and 5 irq indices", () => {
    const { dev } = device();
    assert.deepEqual(dev.info(), {
      flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
      numRegions: VFIO_PCI_NUM_REGIONS,
      numIrqs: VFIO_PCI_NUM_IRQS,
    });
    assert.equal(VFIO_PCI_NUM_REGIONS, 9);
    assert.equal(VFIO_PCI_NUM_IRQS, 5);
  });

  it("sizes CONFIG 0x100, BAR0 8, BAR1 8 only for the dual type, everything else 0, all READ|WRITE", () => {
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    const expected = (dual: boolean) => [8, dual ? 8 : 0, 0, 0, 0, 0, 0, MTTY_CONFIG_SPACE_SIZE, 0];
    for (const [type, dual] of [
      ["1", false],
      ["2", true],
    ] as const) {
      const { dev } = device(type);
      const infos = Array.from({ length: VFIO_PCI_NUM_REGIONS }, (_, i) => dev.regionInfo(i));
      assert.deepEqual(
        infos.map((r) => r.size),
        expected(dual),
      );
      for (const [i, r] of infos.entries()) {
        assert.equal(r.index, i);
        assert.equal(r.flags, rw);
      }
      assert.throws(() => dev.regionInfo(VFIO_PCI_NUM_REGIONS), errno(Errno.EINVAL));
    }
    assert.equal(MTTY_CONFIG_SPACE_SIZE, 0x100);
  });

  it("answers INTx and MSI with count 1 and mtty's flags; MSI-X, ERR and REQ are EINVAL", () => {
    const { dev } = device();
    assert.deepEqual(dev.irqInfo(VFIO_PCI_INTX_IRQ_INDEX), {
      index: 0,
      count: 1,
      flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED,
    });
    assert.deepEqual(dev.irqInfo(VFIO_PCI_MSI_IRQ_INDEX), {
      index: 1,
      count: 1,
      flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
    });
    for (const i of [VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX, 5]) {
      assert.throws(() => dev.irqInfo(i), errno(Errno.EINVAL));
    }
  });
});

describe("mtty device: config space", () => {
  it("holds mtty's bytes at their offsets", () => {
    const { dev } = device("1");
    assert.equal(cfg(dev, 0x00, 4), 0x32534348);
    assert.equal(cfg(dev, 0x00, 2), 0x4348);
    assert.equal(cfg(dev, 0x02, 2), 0x3253);
    assert.equal(cfg(dev, 0x04, 2), 0x0001);
    assert.equal(cfg(dev, 0x06, 2), 0x0200);
    assert.equal(cfg(dev, 0x08, 4), 0x07000210); // revision 0x10, class 0x070002
    assert.equal(cfg(dev, 0x0e, 1), 0); // header type 0
    assert.equal(cfg(dev, 0x10, 4), 0x00000001); // BAR0: I/O
    assert.equal(cfg(dev, 0x14, 4), 0); // no BAR1 on the single type
    assert.equal(cfg(dev, 0x2c, 4), 0x32534348); // subsystem
    assert.equal(cfg(dev, 0x34, 1), 0); // no capabilities
    assert.equal(cfg(dev, 0x3d, 1), 1); // INTA#
    assert.deepEqual(
      [cfg(dev, 0x40, 1), cfg(dev, 0x43, 1), cfg(dev, 0x44, 1), cfg(dev, 0x4c, 1)],
      [0x23, 0x80, 0x23, 0x23],
    );
    const s = new Uint8Array(15);
    dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0x60, s);
    assert.equal(new TextDecoder().decode(s), "PCI Serial/UART");
    assert.equal(cfg(device("2").dev, 0x14, 4), 0x00000001);
  });

  it("reads the whole 256-byte config space as QEMU does, and refuses accesses past it", () => {
    const { dev } = device();
    const all = new Uint8Array(0x100);
    assert.equal(dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0, all), 0x100);
    assert.equal(all[0], 0x48);
    assert.equal(all[0x3d], 1);
    assert.deepEqual([...all.subarray(0xfc)], [0, 0, 0, 0]);
    assert.throws(() => dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0x100, new Uint8Array(1)), errno(Errno.EINVAL));
    assert.throws(() => dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0xfd, new Uint8Array(4)), errno(Errno.EINVAL));
  });

  it("serves every naturally aligned read a config-space scan makes, up to offset 0xff (QEMU's dword at 0xfc)", () => {
    const { dev } = device("2");
    for (const size of [1, 2, 4]) {
      for (let off = 0; off + size <= 0x100; off += size) {
        const buf = new Uint8Array(size);
        assert.equal(dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, off, buf), size, `read ${size} at ${off}`);
        assert.deepEqual(buf, dev.config.bytes.subarray(off, off + size), `read ${size} at ${off}`);
      }
    }
    assert.equal(cfg(dev, 0xfc, 4), 0);
    assert.equal(cfg(dev, 0xff, 1), 0);
  });

  it("ignores writes to the top of config space, as to every byte mtty does not emulate", () => {
    const { dev } = device("2");
    const before = dev.config.bytes.slice();
    cfgWrite(dev, 0xfc, 4, 0xffffffff);
    cfgWrite(dev, 0xfe, 2, 0xabcd);
    cfgWrite(dev, 0xff, 1, 0x5a);
    assert.deepEqual(dev.config.bytes, before);
    assert.equal(cfg(dev, 0xfc, 4), 0);
  });

  it("answers BAR sizing probes and takes addresses, as handle_pci_cfg_write", () => {
    const { dev } = device("2");
    cfgWrite(dev, 0x10, 4, 0xffffffff);
    assert.equal(cfg(dev, 0x10, 4), 0xfffffff9); // ~(8 - 1) | I/O
    cfgWrite(dev, 0x10, 4, 0xc000);
    assert.equal(cfg(dev, 0x10, 4), 0xc001);
    assert.equal(dev.config.barAddress(0), 0xc000);
    cfgWrite(dev, 0x14, 4, 0xffffffff);
    assert.equal(cfg(dev, 0x14, 4), 0xfffffff9);
    cfgWrite(dev, 0x14, 4, 0xc008);
    assert.equal(dev.config.barAddress(1), 0xc008);
    // An 8-byte write at 0x10 is split into two 4-byte pieces, one per BAR.
    const both = new Uint8Array(8).fill(0xff);
    dev.regionWrite(VFIO_PCI_CONFIG_REGION_INDEX, 0x10, both);
    assert.equal(cfg(dev, 0x10, 4), 0xfffffff9);
    assert.equal(cfg(dev, 0x14, 4), 0xfffffff9);

    const single = device("1").dev;
    cfgWrite(single, 0x14, 4, 0xffffffff);
    assert.equal(cfg(single, 0x14, 4), 0); // absent BAR1 sizes as 0
    for (const off of [0x18, 0x1c, 0x20, 0x24]) {
      cfgWrite(single, off, 4, 0xffffffff);
      assert.equal(cfg(single, off, 4), 0);
    }
  });

  it("ignores writes to command, status, pin and ids, and keeps the interrupt line", () => {
    const { dev } = device();
    cfgWrite(dev, 0x04, 4, 0xffffffff);
    assert.equal(cfg(dev, 0x04, 4), 0x02000001);
    cfgWrite(dev, 0x00, 4, 0);
    assert.equal(cfg(dev, 0x00, 4), 0x32534348);
    cfgWrite(dev, 0x3c, 2, 0x050b); // line 0x0b; the pin byte of the same piece is ignored
    assert.equal(cfg(dev, 0x3c, 2), 0x010b);
    cfgWrite(dev, 0x3d, 1, 4);
    assert.equal(cfg(dev, 0x3d, 1), 1);
    cfgWrite(dev, 0x40, 4, 0);
    assert.equal(cfg(dev, 0x40, 1), 0x23);
  });
});

describe("mtty device: the 16550 with a loopback FIFO", () => {
  it("loops bytes written to THR back to RBR in order", () => {
    const { dev } = device();
    for (const c of "hello") wr(dev, UART_TX, c.charCodeAt(0));
    let out = "";
    while (rd(dev, UART_LSR) & UART_LSR_DR) out += String.fromCharCode(rd(dev, UART_RX));
    assert.equal(out, "hello");
    assert.equal(rd(dev, UART_RX), 0); // empty FIFO reads 0
  });

  it("reports DR, THRE and TEMT in LSR from the FIFO's fill", () => {
    const { dev } = device();
    assert.equal(rd(dev, UART_LSR), UART_LSR_THRE | UART_LSR_TEMT);
    wr(dev, UART_TX, 0x41);
    assert.equal(rd(dev, UART_LSR), UART_LSR_DR);
    rd(dev, UART_RX);
    assert.equal(rd(dev, UART_LSR), UART_LSR_THRE | UART_LSR_TEMT);
  });

  it("holds 16 bytes, drops the 17th with an overrun, and clears OE on the next accepted byte", () => {
    const { dev } = device();
    for (let i = 0; i < MTTY_FIFO_SIZE; i++) wr(dev, UART_TX, i + 1);
    assert.equal(rd(dev, UART_LSR), UART_LSR_DR); // full, no overrun yet
    wr(dev, UART_TX, 0xee);
    assert.equal(rd(dev, UART_LSR), UART_LSR_DR | UART_LSR_OE);
    assert.equal(rd(dev, UART_LSR) & UART_LSR_OE, UART_LSR_OE); // reading LSR does not clear OE (as mtty)
    const got: number[] = [];
    for (let i = 0; i < MTTY_FIFO_SIZE; i++) got.push(rd(dev, UART_RX));
    assert.deepEqual(
      got,
      Array.from({ length: 16 }, (_, i) => i + 1),
    );
    assert.equal(rd(dev, UART_LSR), UART_LSR_OE | UART_LSR_THRE | UART_LSR_TEMT);
    wr(dev, UART_TX, 7);
    assert.equal(rd(dev, UART_LSR), UART_LSR_DR);
  });

  it("wraps the ring correctly over many fill/drain rounds (property against a queue)", () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constant(-1)), { maxLength: 200 }), (ops) => {
        const { dev } = device();
        const q: number[] = [];
        for (const op of ops) {
          if (op >= 0) {
            wr(dev, UART_TX, op);
            if (q.length < MTTY_FIFO_SIZE) q.push(op);
          } else {
            assert.equal(rd(dev, UART_RX), q.shift() ?? 0);
          }
          assert.equal((rd(dev, UART_LSR) & UART_LSR_DR) !== 0, q.length > 0);
        }
      }),
      { numRuns: 100 },
    );
  });

  it("FCR: clearing empties the FIFO, and FIFO-off leaves a 1-byte buffer", () => {
    const { dev } = device();
    wr(dev, UART_TX, 1);
    wr(dev, UART_TX, 2);
    wr(dev, UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR);
    assert.equal(rd(dev, UART_LSR) & UART_LSR_DR, 0);
    wr(dev, UART_FCR, 0);
    wr(dev, UART_TX, 0x31);
    wr(dev, UART_TX, 0x32);
    assert.equal(rd(dev, UART_LSR), UART_LSR_DR | UART_LSR_OE);
    assert.equal(rd(dev, UART_RX), 0x31);
    assert.equal(dev.ports[0]!.inspect().capacity, 1);
  });

  it("IIR reports the highest-priority pending source: line status > data > THR empty > modem status", () => {
    const { dev } = device();
    assert.equal(rd(dev, UART_IIR), 0xc1); // nothing enabled: no interrupt pending
    wr(dev, UART_MCR, UART_MCR_RTS);
    wr(dev, UART_IER, UART_IER_MSI);
    assert.equal(rd(dev, UART_IIR), 0xc0); // modem status
    wr(dev, UART_IER, UART_IER_MSI | UART_IER_THRI);
    assert.equal(rd(dev, UART_IIR), 0xc2); // THR empty beats modem status
    wr(dev, UART_IER, UART_IER_MSI | UART_IER_THRI | UART_IER_RDI);
    wr(dev, UART_TX, 0x55);
    assert.equal(rd(dev, UART_IIR), 0xc4); // data available (the FIFO is no longer empty)
    wr(dev, UART_IER, UART_IER_MSI | UART_IER_THRI | UART_IER_RDI | UART_IER_RLSI);
    for (let i = 0; i < MTTY_FIFO_SIZE; i++) wr(dev, UART_TX, i);
    assert.equal(rd(dev, UART_IIR), 0xc6); // overrun: receiver line status first
    wr(dev, UART_IER, UART_IER_RDI);
    assert.equal(rd(dev, UART_IIR), 0xc4);
    wr(dev, UART_IER, 0);
    assert.equal(rd(dev, UART_IIR), 0xc1);
  });

  it("DLAB switches offsets 0 and 1 to the divisor latch, which LCR.DLAB zeroes", () => {
    const { dev } = device();
    wr(dev, UART_IER, 0xff);
    assert.equal(rd(dev, UART_IER), 0x0f); // IER reads back its low nibble
    wr(dev, UART_LCR, UART_LCR_DLAB | 0x03);
    assert.equal(rd(dev, UART_LCR), 0x83);
    wr(dev, UART_TX, 0x0c); // DLL (115200 / 12 = 9600 baud)
    wr(dev, UART_IER, 0x01); // DLM
    assert.equal(rd(dev, UART_RX), 0x0c);
    assert.equal(rd(dev, UART_IER), 0x01);
    assert.equal(dev.ports[0]!.inspect().divisor, 0x010c);
    assert.equal(rd(dev, UART_LSR) & UART_LSR_DR, 0); // the DLL write did not reach the FIFO
    wr(dev, UART_LCR, 0x03);
    assert.equal(rd(dev, UART_IER), 0x0f); // IER is back, untouched by the DLM write
    assert.equal(dev.ports[0]!.inspect().divisor, 0x010c);
    wr(dev, UART_LCR, UART_LCR_DLAB);
    assert.equal(rd(dev, UART_RX), 0);
  });

  it("MCR, MSR and SCR behave as mtty", () => {
    const { dev } = device();
    wr(dev, UART_SCR, 0x5a);
    assert.equal(rd(dev, UART_SCR), 0x5a);
    wr(dev, UART_MCR, UART_MCR_DTR | UART_MCR_RTS);
    assert.equal(rd(dev, UART_MCR), 0x03);
    assert.equal(rd(dev, UART_MSR), 0xb3); // DCD | DSR | CTS | DDSR | DCTS
    wr(dev, UART_MCR, UART_MCR_AFE);
    for (let i = 0; i < MTTY_FIFO_SIZE; i++) wr(dev, UART_TX, i);
    assert.equal(rd(dev, UART_MSR), 0xa2); // auto flow control and a full FIFO: not clear to send
    wr(dev, UART_LSR, 0);
    wr(dev, UART_MSR, 0);
    assert.equal(rd(dev, UART_MSR), 0xa2);
  });

  it("gives each port of the dual type its own UART behind its own BAR", () => {
    const { dev } = device("2");
    wr(dev, UART_TX, 0x30, VFIO_PCI_BAR0_REGION_INDEX);
    wr(dev, UART_TX, 0x31, VFIO_PCI_BAR1_REGION_INDEX);
    wr(dev, UART_TX, 0x32, VFIO_PCI_BAR1_REGION_INDEX);
    assert.equal(rd(dev, UART_RX, 1), 0x31);
    assert.equal(rd(dev, UART_RX, 0), 0x30);
    assert.equal(rd(dev, UART_RX, 1), 0x32);
    assert.throws(() => device("1").dev.regionRead(1, 0, new Uint8Array(1)), errno(Errno.EINVAL));
  });

  it("splits wider BAR accesses like mtty: each aligned piece addresses the register at its first byte", () => {
    const { dev } = device();
    assert.equal(dev.regionWrite(0, 0, Uint8Array.of(0x41, 0x42)), 2); // one 2-byte piece: THR gets 0x41 only
    assert.deepEqual(dev.ports[0]!.inspect().fifo, [0x41]);
    const b = new Uint8Array(4).fill(0xaa);
    assert.equal(dev.regionRead(0, 4, b), 4); // one 4-byte piece at MCR
    assert.deepEqual([...b], [0, 0, 0, 0]);
    const three = new Uint8Array(3).fill(0xaa);
    dev.regionRead(0, 5, three); // pieces: 1 byte at LSR, 2 bytes at MSR
    assert.deepEqual([...three], [UART_LSR_DR, 0xb3, 0]);
  });

  it("refuses accesses past a BAR and to empty regions with EINVAL", () => {
    const { dev } = device();
    assert.throws(() => dev.regionRead(0, 8, new Uint8Array(1)), errno(Errno.EINVAL));
    assert.throws(() => dev.regionWrite(0, 7, new Uint8Array(2)), errno(Errno.EINVAL));
    for (const i of [2, 3, 4, 5, VFIO_PCI_ROM_REGION_INDEX, VFIO_PCI_VGA_REGION_INDEX, 9]) {
      assert.throws(() => dev.regionRead(i, 0, new Uint8Array(1)), errno(Errno.EINVAL));
    }
    assert.equal(dev.regionRead(0, 0, new Uint8Array(0)), 0);
  });
});

describe("mtty device: interrupts", () => {
  it("signals INTx when received data reaches the trigger level, then stays automasked until unmasked", () => {
    const { dev, rec } = device();
    const intx = new Counter();
    setEventfd(dev, VFIO_PCI_INTX_IRQ_INDEX, intx);
    assert.equal(dev.irqState().type, "intx");
    wr(dev, UART_IER, UART_IER_RDI);
    wr(dev, UART_TX, 0x61);
    assert.equal(intx.n, 1);
    assert.equal(dev.irqState().intxMasked, true);
    rd(dev, UART_RX);
    wr(dev, UART_TX, 0x62); // the level is reached again, but INTx is masked
    assert.equal(intx.n, 1);
    assert.equal(dev.irqState().suppressed, 1);
    dev.setIrqs(irqSet(VFIO_PCI_INTX_IRQ_INDEX, "unmask", { kind: "none" }));
    rd(dev, UART_RX);
    wr(dev, UART_TX, 0x63);
    assert.equal(intx.n, 2);
    const irqs = rec.named("mtty.irq");
    assert.deepEqual(
      irqs.map((r) => [r.fields.type, r.fields.result]),
      [
        ["intx", "signalled, INTx automasked"],
        ["intx", "INTx masked"],
        ["intx", "signalled, INTx automasked"],
      ],
    );
  });

  it("honours INTx MASK and UNMASK with NONE and BOOL data, and refuses eventfd masking", () => {
    const { dev } = device();
    const intx = new Counter();
    assert.throws(() => dev.setIrqs(irqSet(0, "mask", { kind: "none" })), errno(Errno.EINVAL)); // INTx not selected
    setEventfd(dev, 0, intx);
    dev.setIrqs(irqSet(0, "mask", { kind: "bool", values: [false] })); // false: no change
    assert.equal(dev.irqState().intxMasked, false);
    dev.setIrqs(irqSet(0, "mask", { kind: "bool", values: [true] }));
    assert.equal(dev.irqState().intxMasked, true);
    wr(dev, UART_IER, UART_IER_THRI); // THR empty: a source, but masked
    assert.equal(intx.n, 0);
    dev.setIrqs(irqSet(0, "unmask", { kind: "bool", values: [true] }));
    assert.equal(intx.n, 0); // mtty does not re-deliver on unmask
    wr(dev, UART_IER, UART_IER_THRI);
    assert.equal(intx.n, 1);
    assert.throws(
      () => dev.setIrqs(irqSet(0, "unmask", { kind: "eventfd", triggers: [new Counter()] })),
      errno(Errno.ENOTTY),
    );
    assert.throws(() => dev.setIrqs({ ...irqSet(0, "mask", { kind: "none" }), count: 0 }), errno(Errno.EINVAL));
  });

  it("signals MSI for every source, without masking", () => {
    const { dev, rec } = device();
    const msi = new Counter();
    setEventfd(dev, VFIO_PCI_MSI_IRQ_INDEX, msi);
    assert.equal(dev.irqState().type, "msi");
    wr(dev, UART_IER, UART_IER_THRI); // empty FIFO: THR empty
    assert.equal(msi.n, 1);
    wr(dev, UART_TX, 1);
    rd(dev, UART_RX); // drained: THR empty again
    assert.equal(msi.n, 2);
    wr(dev, UART_IER, UART_IER_MSI);
    wr(dev, UART_MCR, UART_MCR_OUT2 | UART_MCR_RTS); // two sources in one write, as mtty
    assert.equal(msi.n, 4);
    wr(dev, UART_IER, UART_IER_RLSI);
    for (let i = 0; i <= MTTY_FIFO_SIZE; i++) wr(dev, UART_TX, i); // the 17th overruns
    assert.equal(msi.n, 5);
    assert.ok(rec.named("mtty.irq").every((r) => r.fields.type === "msi"));
    assert.throws(() => dev.setIrqs(irqSet(1, "mask", { kind: "none" })), errno(Errno.ENOTTY));
  });

  it("follows mtty_set_irqs: one type at a time, disable with count 0, fd -1, software triggers", () => {
    const { dev } = device();
    const intx = new Counter();
    const msi = new Counter();
    // Software trigger needs the type selected.
    assert.throws(() => dev.setIrqs(irqSet(0, "trigger", { kind: "none" })), errno(Errno.EINVAL));
    setEventfd(dev, 0, intx);
    assert.throws(() => setEventfd(dev, 1, msi), errno(Errno.EINVAL)); // INTx is selected
    dev.setIrqs(irqSet(0, "trigger", { kind: "bool", values: [true] }));
    assert.equal(intx.n, 1);
    dev.setIrqs(irqSet(0, "trigger", { kind: "none" })); // automasked
    assert.equal(intx.n, 1);
    dev.setIrqs(irqSet(0, "trigger", { kind: "none" }, 0)); // disable
    assert.equal(dev.irqState().type, "none");
    assert.equal(dev.irqState().intxMasked, false);
    setEventfd(dev, 1, msi);
    dev.setIrqs(irqSet(1, "trigger", { kind: "none" }));
    dev.setIrqs(irqSet(1, "trigger", { kind: "bool", values: [false] }));
    assert.equal(msi.n, 1);
    const msi2 = new Counter();
    setEventfd(dev, 1, msi2); // replaces the previous eventfd
    dev.setIrqs(irqSet(1, "trigger", { kind: "none" }));
    assert.deepEqual([msi.n, msi2.n], [1, 1]);
    setEventfd(dev, 1, null); // fd -1 disables
    assert.equal(dev.irqState().type, "none");
    assert.throws(() => dev.setIrqs(irqSet(1, "trigger", { kind: "none" }, 0)), errno(Errno.EINVAL));
    for (const i of [VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX]) {
      assert.throws(() => dev.setIrqs(irqSet(i, "trigger", { kind: "none" })), errno(Errno.ENOTTY));
    }
    // With no type selected, sources are counted as suppressed (the first one was the automasked INTx trigger).
    assert.equal(dev.irqState().suppressed, 1);
    wr(dev, UART_IER, UART_IER_THRI);
    assert.equal(dev.irqState().suppressed, 2);
  });

  it("releases both eventfds on close", () => {
    const { dev } = device();
    const intx = new Counter();
    dev.open(undefined);
    setEventfd(dev, 0, intx);
    dev.close();
    assert.deepEqual(dev.irqState(), {
      type: "none",
      intxEventfd: false,
      msiEventfd: false,
      intxMasked: false,
      signalled: 0,
      suppressed: 0,
    });
    wr(dev, UART_IER, UART_IER_THRI);
    assert.equal(intx.n, 0);
  });
});

describe("mtty device: reset, destroy, trace", () => {
  it("reset restores the power-on state of both UARTs and the BARs, keeping the interrupt wiring", () => {
    const { dev, rec } = device("2");
    const msi = new Counter();
    setEventfd(dev, 1, msi);
    const fresh = device("2").dev;
    const powerOn = fresh.ports.map((p) => p.inspect());
    const cfgOn = fresh.config.bytes.slice(0, MTTY_CONFIG_SPACE_SIZE);
    for (const bar of [0, 1]) {
      wr(dev, UART_TX, 9, bar);
      wr(dev, UART_SCR, 0x77, bar);
      wr(dev, UART_LCR, UART_LCR_DLAB, bar);
      wr(dev, UART_TX, 3, bar);
      wr(dev, UART_FCR, 0, bar);
    }
    cfgWrite(dev, 0x10, 4, 0xc000);
    cfgWrite(dev, 0x14, 4, 0xc008);
    cfgWrite(dev, 0x3c, 1, 11);
    dev.reset();
    assert.deepEqual(
      dev.ports.map((p) => p.inspect()),
      powerOn,
    );
    assert.deepEqual(dev.config.bytes.slice(0, MTTY_CONFIG_SPACE_SIZE), cfgOn);
    assert.equal(dev.irqState().type, "msi");
    assert.equal(rec.count("mtty.reset"), 1);
  });

  it("destroy frees the ports and makes the device unusable", () => {
    const { parent } = setup();
    const inst = parent.create(U1, "2");
    const dev = inst.ops as MttyDevice;
    assert.equal(parent.portsLeft, 22);
    parent.destroy(inst);
    assert.equal(parent.portsLeft, 24);
    assert.equal(parent.device(U1), undefined);
    assert.throws(() => dev.regionRead(0, 0, new Uint8Array(1)), errno(Errno.ENODEV));
    assert.throws(() => dev.setIrqs(irqSet(0, "trigger", { kind: "none" }, 0)), errno(Errno.ENODEV));
    assert.throws(() => dev.reset(), errno(Errno.ENODEV));
  });

  it("traces register accesses with their names, DLAB-aware, only while tracing", () => {
    const { dev, rec } = device();
    wr(dev, UART_TX, 0x41);
    rd(dev, UART_LSR);
    wr(dev, UART_LCR, UART_LCR_DLAB);
    wr(dev, UART_TX, 1);
    rd(dev, UART_IER);
    assert.deepEqual(
      rec.named("mtty.reg").map((r) => [r.fields.op, r.fields.reg, r.fields.value]),
      [
        ["write", "THR", 0x41],
        ["read", "LSR", UART_LSR_DR],
        ["write", "LCR", 0x80],
        ["write", "DLL", 1],
        ["read", "DLM", 0],
      ],
    );
    cfgWrite(dev, 0x10, 4, 0xffffffff);
    assert.deepEqual(
      rec.named("mtty.bar").map((r) => [r.fields.bar, r.fields.value]),
      [[0, 0xfffffff9]],
    );
    rec.stop();
    const before = rec.records.length;
    wr(dev, UART_TX, 0x42);
    assert.equal(rec.records.length, before);
  });
});
