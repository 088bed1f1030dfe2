/**
 * The VMM's guest access paths (src/vmm), each beside the host-side operation it wraps, measured in the same run:
 * - a guest port read of a trapped I/O BAR (mtty's LSR): dispatch by address, then pread on the device fd. Baseline:
 *   the pread alone with a preallocated buffer (target: dispatch costs at most half, i.e. >= 0.5x the baseline rate).
 * - a guest MMIO read of an mmap'd BAR: dispatch, then a load through the VMM's mapping. Baseline: the load alone.
 * - a guest RAM load through GPA -> HVA (`ram.readU32`). Baseline: the address-space load alone.
 * - creating a 16 GiB VMM, attaching an mtty (MAP_DMA of all RAM, no pinning) and shutting down: wall time and the
 *   heap it leaves (target: < 1 MiB of heap for 16 GiB of untouched RAM).
 */
import { gpa, type Hpa, type Hva, type Pfn } from "../src/core/index.ts";
import { createMttyParent, UART_LSR } from "../src/devices/index.ts";
import { type Bdf, type Host, PciConfigSpace, type PciDeviceModel, parseBdf } from "../src/host/index.ts";
import { type AttachedDevice, type VfioPciFrontend, Vmm } from "../src/vmm/index.ts";
import { createMdev, vmmTestHost } from "../src/vmm/testing.ts";
import { heapUsedMiB, opsPerSecond, record, timeMs } from "./lib.ts";

const SUITE = "vmm";
const GiB = 2 ** 30;
const UUID = "b3a7c0de-0000-4000-8000-00000000be01";

/** A device whose BAR0 is 8 KiB of host frames (mmap-able). */
class RamBar implements PciDeviceModel {
  readonly config = new PciConfigSpace({
    vendorId: 0x1af4,
    deviceId: 0x1110,
    classCode: 0x050000,
    bars: [{ index: 0, size: 8192, kind: "mem32" }],
  });
  constructor(
    readonly bdf: Bdf,
    private readonly host: Host,
    private readonly base: Pfn,
  ) {}
  barRead(_bar: number, offset: number, size: number): number {
    const b = new Uint8Array(size);
    this.host.physmem.read((this.base * 4096 + offset) as Hpa, b);
    return b[0]!;
  }
  barWrite(): void {}
  barFrames(): Pfn {
    return this.base;
  }
  reset(): void {}
}

export async function run(): Promise<void> {
  const h = vmmTestHost({ memoryBytes: 1 * GiB });
  h.rec.stop(); // measure with tracing off, as hot paths run in production
  h.mdev.registerParent(createMttyParent({ tracer: h.host.tracer }));
  const sysfsdev = createMdev(h, "mtty", "mtty-1", UUID);
  const bdf = parseBdf("0000:00:05.0");
  h.host.addPciDevice(new RamBar(bdf, h.host, h.host.physmem.allocContiguous(2)));
  h.vfioPci.bind(bdf);
  const vmm = Vmm.create(h.host, { name: "bench", memoryBytes: 64 * 2 ** 20, rlimitMemlockBytes: 1 * GiB });
  const tty = vmm.attach({ sysfsdev }) as AttachedDevice & VfioPciFrontend;
  const ram = vmm.attach({ host: bdf }) as AttachedDevice & VfioPciFrontend;

  // Trapped I/O BAR.
  const port = tty.barAddress(0) + UART_LSR;
  const fd = tty.handle.fd;
  const lsrOffset = tty.handle.regionInfo(0).offset + UART_LSR;
  const one = new Uint8Array(1);
  let sink = 0;
  const base = opsPerSecond((n) => {
    for (let i = 0; i < n; i++) sink += vmm.process.pread(fd, one, lsrOffset);
  });
  const via = opsPerSecond((n) => {
    for (let i = 0; i < n; i++) sink += vmm.ioRead(port, 1);
  });
  record({
    suite: SUITE,
    name: "guest port read, trapped I/O BAR (mtty LSR)",
    value: via,
    unit: "reads/s",
    note: `${(via / base).toFixed(2)}x pread on the device fd alone (${Math.round(base).toLocaleString("en-US")}/s; target >= 0.5)`,
    met: via / base >= 0.5,
  });

  // mmap'd BAR.
  const bar = ram.barAddress(0) + 0x1008;
  const hva = (ram.bars[0]!.mmapAreas[0]!.hva + 0x1008) as Hva;
  const four = new Uint8Array(4);
  const mmBase = opsPerSecond((n) => {
    for (let i = 0; i < n; i++) vmm.process.mm.read(hva, four);
  });
  const mmVia = opsPerSecond((n) => {
    for (let i = 0; i < n; i++) sink += vmm.mmioRead(gpa(bar), 4);
  });
  record({
    suite: SUITE,
    name: "guest MMIO read, mmap'd BAR",
    value: mmVia,
    unit: "reads/s",
    note: `${(mmVia / mmBase).toFixed(2)}x the load through the mapping alone (${Math.round(mmBase).toLocaleString("en-US")}/s; target >= 0.5)`,
    met: mmVia / mmBase >= 0.5,
  });

  // Guest RAM.
  const ramHva = vmm.ramBlocks()[0]!.hva + 0x4000;
  vmm.ram.writeU32(gpa(0x4000), 1);
  const rBase = opsPerSecond((n) => {
    for (let i = 0; i < n; i++) vmm.process.mm.read(ramHva as Hva, four);
  });
  const rVia = opsPerSecond((n) => {
    for (let i = 0; i < n; i++) sink += vmm.ram.readU32(gpa(0x4000));
  });
  record({
    suite: SUITE,
    name: "guest RAM load, GPA -> HVA (readU32)",
    value: rVia,
    unit: "loads/s",
    note: `${(rVia / rBase).toFixed(2)}x the address-space load alone (${Math.round(rBase).toLocaleString("en-US")}/s; target >= 0.5)`,
    met: rVia / rBase >= 0.5,
  });
  vmm.shutdown();

  // A 16 GiB VMM with an mdev attached: time, and what it costs untouched.
  const heap0 = heapUsedMiB();
  let big: Vmm | undefined;
  const ms = timeMs(() => {
    big?.shutdown();
    big = Vmm.create(h.host, { name: "big", memoryBytes: 16 * GiB });
    big.attach({ sysfsdev });
  });
  const heap = heapUsedMiB() - heap0;
  record({
    suite: SUITE,
    name: "create a 16 GiB VMM and attach an mtty (MAP_DMA, no pins)",
    value: ms,
    unit: "ms",
    note: `${h.host.physmem.stats().pinnedFrames} frames pinned`,
  });
  record({
    suite: SUITE,
    name: "heap held by that VMM (16 GiB of untouched RAM)",
    value: heap,
    unit: "MiB",
    note: "target < 1 MiB",
    met: heap < 1,
  });
  big?.shutdown();
  if (sink === -1) console.log(sink);
}
