import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, readU16LE, readU32LE, readU64LE } from "../core/index.ts";
import { EventFd, PROT_READ, PROT_WRITE } from "../host/index.ts";
import type { VfioCapability } from "./driver.ts";
import { errno, FakeDevice, makeWorld, openDevice, type World } from "./harness.test.ts";
import {
  decodeSparseMmapCap,
  parseCapChain,
  regionTypeCap,
  sparseMmapCap,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_QUERY_GFX_PLANE,
  VFIO_DEVICE_RESET,
  VFIO_DEVICE_SET_IRQS,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from "./uapi/index.ts";

const GPU = "0000:00:02.0";
const RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
const SPAN = 2 ** 40;

function u32s(...v: number[]): Uint8Array {
  const b = new Uint8Array(v.length * 4);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < v.length; i++) dv.setUint32(i * 4, v[i]! >>> 0, true);
  return b;
}

/** A vfio_irq_set as raw bytes: the 20-byte header, then `payload` as s32s (eventfds) or u8s (bools). */
function irqSet(
  argsz: number,
  flags: number,
  index: number,
  start: number,
  count: number,
  payload: { s32?: number[]; u8?: number[] } = {},
): Uint8Array {
  const head = u32s(argsz, flags, index, start, count);
  const tail = payload.s32 ? u32s(...payload.s32) : Uint8Array.from(payload.u8 ?? []);
  const b = new Uint8Array(head.length + tail.length);
  b.set(head);
  b.set(tail, head.length);
  return b;
}

function setup(opts: ConstructorParameters<typeof FakeDevice>[0] = { name: GPU }): {
  w: World;
  dev: FakeDevice;
  d: number;
} {
  const w = makeWorld();
  const dev = new FakeDevice(opts);
  const { deviceFd } = openDevice(w, dev, { bdf: GPU });
  return { w, dev, d: deviceFd };
}

function capOf(bytes: Uint8Array): VfioCapability {
  return { id: readU16LE(bytes, 0), version: readU16LE(bytes, 2), body: bytes.subarray(8) };
}

describe("device fd: GET_INFO", () => {
  it("copies back min(argsz, 24) bytes and rejects argsz below 16", () => {
    const { w, d } = setup();
    const b = new Uint8Array(24).fill(0xaa);
    b.set(u32s(16));
    w.vmm.ioctl(d, VFIO_DEVICE_GET_INFO, b);
    assert.deepEqual([...b.subarray(0, 16)], [...u32s(16, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET, 2, 2)]);
    assert.deepEqual([...b.subarray(16)], new Array(8).fill(0xaa), "cap_offset and pad untouched at argsz 16");
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_GET_INFO, u32s(15, 0, 0, 0)), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_GET_INFO, u32s(24, 0)), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_GET_INFO, 0), errno(Errno.EFAULT));
  });

  it("device capabilities: too small raises argsz and sets CAPS without a chain; large enough gets the chain at 24", () => {
    const cap: VfioCapability = { id: 5, version: 1, body: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) };
    const { w, d } = setup({ name: GPU, deviceCaps: [cap] });
    const small = u32s(24, 0, 0, 0, 0, 0);
    w.vmm.ioctl(d, VFIO_DEVICE_GET_INFO, small);
    assert.equal(readU32LE(small, 0), 40, "argsz raised to 24 + 16");
    assert.equal(readU32LE(small, 4) & VFIO_DEVICE_FLAGS_CAPS, VFIO_DEVICE_FLAGS_CAPS);
    assert.equal(readU32LE(small, 16), 0, "no cap_offset without the chain");
    const big = new Uint8Array(40);
    big.set(u32s(40));
    w.vmm.ioctl(d, VFIO_DEVICE_GET_INFO, big);
    assert.equal(readU32LE(big, 16), 24);
    assert.deepEqual([...big.subarray(24)], [5, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    const short = u32s(40, 0, 0, 0, 0, 0);
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_GET_INFO, short), errno(Errno.EFAULT));
  });
});

describe("device fd: GET_REGION_INFO", () => {
  it("reports flags, size and offset = index << 40; EINVAL for argsz < 32 or an index out of range", () => {
    const { w, d } = setup();
    const b = u32s(32, 0, 1, 0, 0, 0, 0, 0);
    w.vmm.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, b);
    assert.equal(readU32LE(b, 4), RW);
    assert.equal(readU64LE(b, 16), 0x100n);
    assert.equal(readU64LE(b, 24), BigInt(SPAN));
    assert.throws(
      () => w.vmm.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, u32s(32, 0, 2, 0, 0, 0, 0, 0)),
      errno(Errno.EINVAL),
    );
    assert.throws(
      () => w.vmm.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, u32s(31, 0, 0, 0, 0, 0, 0, 0)),
      errno(Errno.EINVAL),
    );
    assert.throws(
      () => w.vmm.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, u32s(32, 0, 0xffffffff, 0, 0, 0, 0, 0)),
      errno(Errno.EINVAL),
    );
  });

  it("capability chains: argsz too small gets CAPS and the needed argsz; the chain links cap to cap", () => {
    const sparse = capOf(sparseMmapCap([{ offset: 0x1000, size: 0x1000 }]));
    const type = capOf(regionTypeCap(0x80008086, 1));
    const { w, d } = setup({
      name: GPU,
      regions: [{ flags: RW | VFIO_REGION_INFO_FLAG_MMAP, size: 0x2000, caps: [sparse, type] }],
    });
    const small = u32s(32, 0, 0, 0xdead, 0, 0, 0, 0);
    w.vmm.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, small);
    assert.equal(readU32LE(small, 0), 32 + 32 + 16);
    assert.equal(readU32LE(small, 4), RW | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS);
    assert.equal(readU32LE(small, 12), 0, "cap_offset is cleared when the chain does not fit");
    const big = new Uint8Array(80);
    big.set(u32s(80, 0, 0));
    w.vmm.ioctl(d, VFIO_DEVICE_GET_REGION_INFO, big);
    assert.equal(readU32LE(big, 12), 32);
    const chain = parseCapChain(big, 32);
    assert.deepEqual(
      chain.map((c) => [c.id, c.offset, c.next]),
      [
        [VFIO_REGION_INFO_CAP_SPARSE_MMAP, 32, 64],
        [VFIO_REGION_INFO_CAP_TYPE, 64, 0],
      ],
    );
    assert.deepEqual(decodeSparseMmapCap(chain[0]!.bytes).areas, [{ offset: 0x1000n, size: 0x1000n }]);
    assert.equal(readU32LE(big, 72), 0x80008086);
  });
});

describe("device fd: GET_IRQ_INFO", () => {
  it("answers flags and count; EINVAL for argsz < 16 or an index out of range", () => {
    const { w, d } = setup();
    const b = u32s(16, 0, 1, 0);
    w.vmm.ioctl(d, VFIO_DEVICE_GET_IRQ_INFO, b);
    assert.deepEqual([...b], [...u32s(16, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE, 1, 4)]);
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_GET_IRQ_INFO, u32s(15, 0, 1, 0)), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_GET_IRQ_INFO, u32s(16, 0, 2, 0)), errno(Errno.EINVAL));
  });
});

describe("device fd: SET_IRQS", () => {
  const TRIG_EFD = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;

  it("rejects every case vfio_set_irqs_validate_and_prepare rejects, with EINVAL, before the device sees it", () => {
    const { w, dev, d } = setup();
    const e = w.vmm.eventfd();
    const cases: [string, Uint8Array][] = [
      ["argsz < minsz", irqSet(19, TRIG_EFD, 1, 0, 0)],
      ["index out of range", irqSet(20, VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE, 2, 0, 0)],
      ["count >= U32_MAX - start", irqSet(20, VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE, 1, 0, 0xffffffff)],
      [
        "count >= U32_MAX - start (start 1)",
        irqSet(20, VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_DATA_NONE, 1, 1, 0xfffffffe),
      ],
      ["unknown flags", irqSet(20, VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE | (1 << 6), 1, 0, 0)],
      ["start past the vectors", irqSet(20, VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE, 1, 4, 0)],
      ["start + count past the vectors", irqSet(24, VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE, 1, 2, 3)],
      ["no data type", irqSet(20, VFIO_IRQ_SET_ACTION_TRIGGER, 1, 0, 0)],
      [
        "two data types",
        irqSet(20, VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL, 1, 0, 1, { u8: [1] }),
      ],
      ["payload shorter than argsz allows", irqSet(24, TRIG_EFD, 1, 0, 2, { s32: [e, e] })],
      ["bool payload short", irqSet(21, VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_DATA_BOOL, 1, 0, 2, { u8: [1, 1] })],
      ["data checked before action", irqSet(20, 0, 1, 0, 0)],
      ["not an eventfd", irqSet(24, TRIG_EFD, 1, 0, 1, { s32: [d] })],
    ];
    for (const [what, buf] of cases) {
      assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_SET_IRQS, buf), errno(Errno.EINVAL), what);
    }
    assert.equal(dev.irqSets.length, 0);
  });

  it("not exactly one action is ENOTTY (as vfio-pci answers); a closed eventfd EBADF; a short buffer EFAULT", () => {
    const { w, dev, d } = setup();
    const e = w.vmm.eventfd();
    assert.throws(
      () => w.vmm.ioctl(d, VFIO_DEVICE_SET_IRQS, irqSet(20, VFIO_IRQ_SET_DATA_NONE, 1, 0, 0)),
      errno(Errno.ENOTTY),
    );
    const two = VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_DATA_NONE;
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_SET_IRQS, irqSet(20, two, 1, 0, 0)), errno(Errno.ENOTTY));
    assert.throws(
      () => w.vmm.ioctl(d, VFIO_DEVICE_SET_IRQS, irqSet(28, TRIG_EFD, 1, 0, 2, { s32: [e, 99] })),
      errno(Errno.EBADF),
    );
    assert.throws(
      () => w.vmm.ioctl(d, VFIO_DEVICE_SET_IRQS, irqSet(28, TRIG_EFD, 1, 0, 2, { s32: [e] })),
      errno(Errno.EFAULT),
    );
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_SET_IRQS, 5), errno(Errno.EFAULT));
    assert.equal(dev.irqSets.length, 0);
  });

  it("hands the device decoded eventfds, bools and none; -1 de-assigns", () => {
    const { w, dev, d } = setup();
    const e = w.vmm.eventfd();
    w.vmm.ioctl(d, VFIO_DEVICE_SET_IRQS, irqSet(28, TRIG_EFD, 1, 1, 2, { s32: [e, -1] }));
    const set = dev.irqSets[0]!;
    assert.equal(set.action, "trigger");
    assert.deepEqual([set.index, set.start, set.count], [1, 1, 2]);
    assert.equal(set.data.kind, "eventfd");
    if (set.data.kind !== "eventfd") return;
    assert.equal(set.data.triggers[1], null);
    assert.ok(set.data.triggers[0] instanceof EventFd);
    set.data.triggers[0]!.signal();
    assert.equal(w.vmm.eventfdOf(e).counter, 1n, "the trigger is the user's eventfd");

    w.vmm.ioctl(
      d,
      VFIO_DEVICE_SET_IRQS,
      irqSet(21, VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_DATA_BOOL, 0, 0, 1, { u8: [7] }),
    );
    assert.deepEqual(dev.irqSets[1], {
      action: "unmask",
      index: 0,
      start: 0,
      count: 1,
      data: { kind: "bool", values: [true] },
    });
    w.vmm.ioctl(d, VFIO_DEVICE_SET_IRQS, irqSet(20, VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE, 1, 0, 0));
    assert.deepEqual(dev.irqSets[2], { action: "trigger", index: 1, start: 0, count: 0, data: { kind: "none" } });
    assert.equal(w.trace.count("vfio.device.set_irqs"), 3);
  });
});

describe("device fd: reset, regions, other requests", () => {
  it("RESET needs the RESET flag", () => {
    const { w, dev, d } = setup();
    assert.equal(w.vmm.ioctl(d, VFIO_DEVICE_RESET), 0);
    assert.equal(dev.resets, 1);
    const other = setup({ name: GPU, flags: VFIO_DEVICE_FLAGS_PCI });
    assert.throws(() => other.w.vmm.ioctl(other.d, VFIO_DEVICE_RESET), errno(Errno.EINVAL));
    assert.equal(other.dev.resets, 0);
  });

  it("pread/pwrite at (index << 40) + offset reach the region; other offsets are EINVAL", () => {
    const { w, dev, d } = setup();
    assert.equal(w.vmm.pwrite(d, Uint8Array.of(1, 2, 3), SPAN + 0x10), 3);
    assert.deepEqual([...dev.memory[1]!.subarray(0x10, 0x13)], [1, 2, 3]);
    const back = new Uint8Array(3);
    assert.equal(w.vmm.pread(d, back, SPAN + 0x10), 3);
    assert.deepEqual([...back], [1, 2, 3]);
    assert.throws(() => w.vmm.pread(d, back, 2 * SPAN), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.pwrite(d, back, -1), errno(Errno.EINVAL));
    assert.throws(() => w.vmm.pread(d, back, 0.5), errno(Errno.EINVAL));
    assert.deepEqual(
      w.trace.named("vfio.region.write").map((r) => r.fields),
      [{ device: GPU, index: 1, offset: 0x10, size: 3 }],
    );
  });

  it("mmap of an MMAP region maps the device's frames; other mmaps are EINVAL", () => {
    const w = makeWorld();
    const frames = w.host.physmem.allocContiguous(64);
    const dev = new FakeDevice({ name: GPU, mmapFrames: frames });
    const { deviceFd: d } = openDevice(w, dev, { bdf: GPU });
    const at = w.vmm.mmapFile(d, 0, 0x2000, PROT_READ | PROT_WRITE);
    assert.equal(w.vmm.mm.vmaAt(at)?.basePfn, frames);
    assert.throws(() => w.vmm.mmapFile(d, SPAN, 0x1000), errno(Errno.EINVAL), "region 1 has no MMAP flag");
    assert.throws(() => w.vmm.mmapFile(d, 0x800, 0x1000), errno(Errno.EINVAL), "unaligned offset");
    assert.throws(() => w.vmm.mmapFile(d, 0x1000, 0x2000), errno(Errno.EINVAL), "past the region");
    assert.throws(() => w.vmm.mmapFile(d, 2 * SPAN, 0x1000), errno(Errno.EINVAL), "no such region");
  });

  it("requests vfio-core does not decode go to ops.ioctl, or are ENOTTY", () => {
    const { w, d } = setup();
    assert.throws(() => w.vmm.ioctl(d, VFIO_DEVICE_QUERY_GFX_PLANE, new Uint8Array(64)), errno(Errno.ENOTTY));
    assert.throws(() => w.vmm.ioctl(d, VFIO_IOMMU_MAP_DMA, new Uint8Array(32)), errno(Errno.ENOTTY));
    const w2 = makeWorld();
    const dev = new FakeDevice({ name: GPU });
    const seen: number[] = [];
    Object.assign(dev, {
      ioctl: (req: number) => {
        seen.push(req);
        return 42;
      },
    });
    const { deviceFd } = openDevice(w2, dev, { bdf: GPU });
    assert.equal(w2.vmm.ioctl(deviceFd, VFIO_DEVICE_QUERY_GFX_PLANE, new Uint8Array(64)), 42);
    assert.deepEqual(seen, [VFIO_DEVICE_QUERY_GFX_PLANE]);
  });
});
