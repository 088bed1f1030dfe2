/**
 * Guest memory: the PC layout of guest-physical space, the RAM blocks that back it, and the guest CPU's view of RAM.
 *
 * Layout (QEMU's pc machine, `pc_memory_init`): RAM below 4 GiB from GPA 0 up to `lowMemBytes` (default
 * min(memory, 3 GiB)), the PCI hole from the end of that RAM (at least from 3 GiB) up to 4 GiB, the rest of RAM from
 * 4 GiB up, then a window reserved for hot-plugged memory (QEMU's device-memory region, `maxmem - mem`, 1 GiB
 * aligned), then the 64-bit PCI MMIO window (QEMU's pci-hole64, 32 GiB by default). 32-bit BARs go in the PCI hole
 * below the IOAPIC (0xfec00000), 64-bit BARs in the 64-bit window, I/O BARs in ports 0xc000-0xffff (where SeaBIOS puts
 * them).
 *
 * Every RAM block is one anonymous private mapping in the VMM process (QEMU's RAMBlock: HVA = block base + offset), so
 * an untouched guest costs nothing: frames are allocated on the first fault (a guest access or a pin). The boot blocks
 * are "ram-below-4g" and "ram-above-4g"; hot-plugged blocks are "dimm<N>".
 *
 * `GuestMemoryMap` keeps the blocks sorted by GPA and translates GPA -> HVA with a one-entry cache and a binary search
 * (no allocation). `MappedGuestRam` is what the guest's CPU does with RAM: loads and stores through those HVAs, faulting
 * pages in through the process's address space. A GPA outside RAM is EFAULT there: device MMIO goes through
 * `Vmm.mmioRead/mmioWrite`.
 *
 * Not modelled: the legacy VGA hole (0xa0000-0xbffff) and BIOS ROM shadows below 1 MiB (all of low RAM is RAM here),
 * SMRAM, NUMA, memory backends other than anonymous (memfd, hugetlbfs), 64-bit values above 2^53 (readU64 returns a
 * number, exact below 2^53, which covers every address this model uses).
 *
 * Invariants: blocks are page-aligned, non-empty, non-overlapping, never cross 4 GiB, never intersect the PCI hole or
 * the 64-bit MMIO window; a hot-plugged block lies inside the hot-plug window.
 */
import {
  alignUp,
  Errno,
  type Gpa,
  gpa,
  type Hva,
  hex,
  hva,
  KernelError,
  PAGE_SIZE,
  SZ_1G,
  SZ_2M,
  SZ_4G,
} from "../core/index.ts";
import type { AddressSpace } from "../host/index.ts";

/** The first MMIO address above the 32-bit PCI window: the IOAPIC (0xfec00000); LAPIC and BIOS follow. */
export const PCI_MMIO32_END = 0xfec00000;
/** Default RAM below 4 GiB: QEMU's pc machine keeps 3 GiB (the rest goes above 4 GiB). */
export const DEFAULT_LOW_MEM_BYTES = 3 * SZ_1G;
/** The most RAM below 4 GiB the layout allows (i440fx's 0xe0000000), leaving at least 492 MiB of PCI hole. */
export const MAX_LOW_MEM_BYTES = 0xe0000000;
/** Where the 32-bit PCI window starts at the lowest (the PCI hole "from 3 GiB to 4 GiB"). */
export const PCI_HOLE_MIN_START = 3 * SZ_1G;
/** QEMU's default pci-hole64-size. */
export const DEFAULT_PCI_HOLE64_BYTES = 32 * SZ_1G;
/** Ports SeaBIOS hands to I/O BARs. */
export const PCI_IO_START = 0xc000;
export const PCI_IO_END = 0x10000;
/** Hot-plugged blocks are placed on this alignment (a huge page, as QEMU aligns DIMMs for THP). */
export const DIMM_ALIGN = SZ_2M;

/** A half-open range [start, end) of guest-physical (or port) addresses. */
export interface AddressWindow {
  readonly start: number;
  readonly end: number;
}

/** Where everything goes in guest-physical space. */
export interface GuestLayout {
  readonly memoryBytes: number;
  readonly lowMemBytes: number;
  readonly highMemBytes: number;
  readonly maxMemoryBytes: number;
  /** [end of low RAM, 4 GiB). */
  readonly pciHole: AddressWindow;
  /** Where 32-bit BARs go: [max(end of low RAM, 3 GiB), 0xfec00000). */
  readonly mmio32: AddressWindow;
  /** Reserved for hot-plugged RAM (empty when maxMemoryBytes = memoryBytes). */
  readonly hotplug: AddressWindow;
  /** Where 64-bit BARs go: above all RAM, 1 GiB aligned. */
  readonly mmio64: AddressWindow;
  /** Port I/O window for I/O BARs. */
  readonly io: AddressWindow;
}

export interface GuestLayoutOptions {
  readonly memoryBytes: number;
  readonly lowMemBytes?: number;
  /** QEMU's maxmem: boot RAM plus what may be hot-plugged. Default memoryBytes + 4 GiB. */
  readonly maxMemoryBytes?: number;
  readonly pciHole64Bytes?: number;
}

function checkSize(what: string, n: number, min: number): void {
  if (!Number.isSafeInteger(n) || n < min || n % PAGE_SIZE !== 0) {
    throw new KernelError(
      Errno.EINVAL,
      `${what} ${n} must be a multiple of the page size (4096)${min > 0 ? ` and at least ${formatBytes(min)}` : ""}`,
    );
  }
}

/** Computes the PC layout for a guest (EINVAL naming the bad option). */
export function pcLayout(opts: GuestLayoutOptions): GuestLayout {
  const mem = opts.memoryBytes;
  checkSize("memoryBytes", mem, PAGE_SIZE);
  const low = opts.lowMemBytes ?? Math.min(mem, DEFAULT_LOW_MEM_BYTES);
  checkSize("lowMemBytes", low, 0);
  if (low > mem || low > MAX_LOW_MEM_BYTES) {
    throw new KernelError(
      Errno.EINVAL,
      `lowMemBytes ${formatBytes(low)} must be at most memoryBytes (${formatBytes(mem)}) and at most ` +
        `${formatBytes(MAX_LOW_MEM_BYTES)} so that 32-bit BARs fit below 4 GiB`,
    );
  }
  const high = mem - low;
  const maxMem = opts.maxMemoryBytes ?? mem + 4 * SZ_1G;
  checkSize("maxMemoryBytes", maxMem, mem);
  const hole64 = opts.pciHole64Bytes ?? DEFAULT_PCI_HOLE64_BYTES;
  checkSize("pciHole64Bytes", hole64, SZ_1G);
  const hotplugStart = alignUp(SZ_4G + high, SZ_1G);
  const hotplugEnd = hotplugStart + alignUp(maxMem - mem, SZ_1G);
  const mmio64Start = alignUp(hotplugEnd, SZ_1G);
  if (mmio64Start + hole64 > 2 ** 52) {
    throw new KernelError(Errno.EINVAL, `the guest layout needs ${hex(mmio64Start + hole64)} bytes: beyond 52 bits`);
  }
  return {
    memoryBytes: mem,
    lowMemBytes: low,
    highMemBytes: high,
    maxMemoryBytes: maxMem,
    pciHole: { start: low, end: SZ_4G },
    mmio32: { start: Math.max(low, PCI_HOLE_MIN_START), end: PCI_MMIO32_END },
    hotplug: { start: hotplugStart, end: hotplugEnd },
    mmio64: { start: mmio64Start, end: mmio64Start + hole64 },
    io: { start: PCI_IO_START, end: PCI_IO_END },
  };
}

/** "16 GiB", "64 MiB", "4 KiB", "1536 MiB", "100 bytes": the largest unit that divides the size exactly. */
export function formatBytes(n: number): string {
  const units: readonly [number, string][] = [
    [2 ** 40, "TiB"],
    [2 ** 30, "GiB"],
    [2 ** 20, "MiB"],
    [2 ** 10, "KiB"],
  ];
  for (const [u, name] of units) if (n >= u && n % u === 0) return `${n / u} ${name}`;
  return `${n} bytes`;
}

/** One RAM block: a range of guest-physical memory backed by one anonymous mapping of the VMM process. */
export interface RamBlock {
  readonly name: string;
  readonly gpa: Gpa;
  readonly size: number;
  /** The host-virtual address of the block's first byte; GPA gpa + k is at HVA hva + k. */
  readonly hva: Hva;
  /** False for the boot blocks. */
  readonly hotplugged: boolean;
}

/** The HVA of `at` inside block `b` (the block's one mapping: HVA = block HVA + offset). */
export function hvaIn(b: RamBlock, at: Gpa): Hva {
  return hva(b.hva + (at - b.gpa));
}

/** The guest's RAM blocks, sorted by GPA, with GPA -> HVA translation. */
export class GuestMemoryMap {
  private readonly list: RamBlock[] = [];
  private cached: RamBlock | undefined;

  /** Blocks in GPA order (a snapshot). */
  blocks(): readonly RamBlock[] {
    return this.list.slice();
  }

  get totalBytes(): number {
    let n = 0;
    for (const b of this.list) n += b.size;
    return n;
  }

  /** Adds a block; EEXIST if it overlaps one (a bug in the caller's placement). */
  add(block: RamBlock): void {
    const i = this.indexAfter(block.gpa);
    const next = this.list[i];
    if (next !== undefined && next.gpa < block.gpa + block.size) {
      throw new KernelError(
        Errno.EEXIST,
        `RAM block '${block.name}' at ${hex(block.gpa)}+${formatBytes(block.size)} overlaps '${next.name}'`,
      );
    }
    this.list.splice(i, 0, block);
    this.cached = undefined;
  }

  remove(block: RamBlock): void {
    const i = this.list.indexOf(block);
    if (i >= 0) this.list.splice(i, 1);
    this.cached = undefined;
  }

  /** The block that starts at `gpa` and is `size` bytes long, if any (what an unplug request must name). */
  exact(gpa: Gpa, size: number): RamBlock | undefined {
    for (const b of this.list) if (b.gpa === gpa && b.size === size) return b;
    return undefined;
  }

  /** The block containing `gpa`, if any. */
  find(gpa: Gpa): RamBlock | undefined {
    const c = this.cached;
    if (c !== undefined && gpa >= c.gpa && gpa < c.gpa + c.size) return c;
    const b = this.list[this.indexAfter(gpa)];
    if (b === undefined || !(b.gpa <= gpa)) return undefined;
    this.cached = b;
    return b;
  }

  /** GPA -> HVA, or -1 when the GPA is not RAM. */
  translate(gpa: Gpa): Hva | -1 {
    const b = this.find(gpa);
    return b === undefined ? -1 : hvaIn(b, gpa);
  }

  /** A readable summary for error messages: "ram-below-4g 0x0+3 GiB, ram-above-4g 0x100000000+1 GiB". */
  describe(): string {
    return this.list.length === 0
      ? "no RAM"
      : this.list.map((b) => `${b.name} ${hex(b.gpa)}+${formatBytes(b.size)}`).join(", ");
  }

  /** Index of the first block whose end is above `gpa`. */
  private indexAfter(gpa: Gpa): number {
    let lo = 0;
    let hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const b = this.list[mid]!;
      if (b.gpa + b.size <= gpa) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/**
 * The guest CPU's loads and stores to RAM, through the VMM's HVAs. Accesses may cross pages and blocks; a GPA that is
 * not RAM fails with EFAULT (nothing of the access is done before the check, for accesses within one block).
 */
export class MappedGuestRam {
  /** Scratch for the fixed-size accessors: they allocate nothing. */
  private readonly scratch = new Uint8Array(8);
  private readonly view = new DataView(this.scratch.buffer);

  constructor(
    private readonly map: GuestMemoryMap,
    private readonly mm: AddressSpace,
  ) {}

  /** Copies guest memory at `gpa` into `dst[off..off+len)`. */
  read(at: Gpa, dst: Uint8Array, off = 0, len = dst.length - off): void {
    let a = at;
    let o = off;
    let left = len;
    while (left > 0) {
      const b = this.block(a, left);
      const n = Math.min(left, b.gpa + b.size - a);
      this.mm.read(hvaIn(b, a), dst, o, n);
      a = gpa(a + n);
      o += n;
      left -= n;
    }
  }

  /** Copies `src[off..off+len)` into guest memory at `gpa`. */
  write(at: Gpa, src: Uint8Array, off = 0, len = src.length - off): void {
    let a = at;
    let o = off;
    let left = len;
    while (left > 0) {
      const b = this.block(a, left);
      const n = Math.min(left, b.gpa + b.size - a);
      this.mm.write(hvaIn(b, a), src, o, n);
      a = gpa(a + n);
      o += n;
      left -= n;
    }
  }

  readU8(gpa: Gpa): number {
    this.read(gpa, this.scratch, 0, 1);
    return this.scratch[0]!;
  }

  readU16(gpa: Gpa): number {
    this.read(gpa, this.scratch, 0, 2);
    return this.view.getUint16(0, true);
  }

  readU32(gpa: Gpa): number {
    this.read(gpa, this.scratch, 0, 4);
    return this.view.getUint32(0, true);
  }

  /** A 64-bit load as a number (exact below 2^53). */
  readU64(gpa: Gpa): number {
    this.read(gpa, this.scratch, 0, 8);
    return this.view.getUint32(0, true) + this.view.getUint32(4, true) * 2 ** 32;
  }

  writeU8(gpa: Gpa, value: number): void {
    this.scratch[0] = value;
    this.write(gpa, this.scratch, 0, 1);
  }

  writeU16(gpa: Gpa, value: number): void {
    this.view.setUint16(0, value, true);
    this.write(gpa, this.scratch, 0, 2);
  }

  writeU32(gpa: Gpa, value: number): void {
    this.view.setUint32(0, value >>> 0, true);
    this.write(gpa, this.scratch, 0, 4);
  }

  /** A 64-bit store of a number (exact below 2^53). */
  writeU64(gpa: Gpa, value: number): void {
    this.view.setUint32(0, (value % 2 ** 32) >>> 0, true);
    this.view.setUint32(4, Math.floor(value / 2 ** 32) >>> 0, true);
    this.write(gpa, this.scratch, 0, 8);
  }

  /** GPA -> HVA for RAM, or -1 (what a device model of the VMM, or a test, uses to find the backing). */
  hvaOf(gpa: Gpa): Hva | -1 {
    return this.map.translate(gpa);
  }

  private block(at: Gpa, len: number): RamBlock {
    const b = this.map.find(at);
    if (b === undefined) {
      throw new KernelError(
        Errno.EFAULT,
        `guest access of ${len} byte(s) at GPA ${hex(at)} is not RAM (RAM: ${this.map.describe()})`,
      );
    }
    return b;
  }
}
