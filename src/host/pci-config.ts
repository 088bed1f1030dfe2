/**
 * PCI configuration space as data: bytes, a write mask per byte, and BARs that answer sizing probes.
 *
 * Every PCI function in the model (a physical GPU, vfio-pci's view of it, an mdev's virtual config space, mtty)
 * builds one of these from a table of fields, so config-space behaviour is written once: read-only fields ignore
 * writes, RW1C status bits clear on write-1, and a BAR written with all ones reads back ~(size - 1) | flags (the
 * sizing probe firmware and VMMs use), then takes whatever aligned address is written next.
 *
 * Capabilities built from the spec: MSI (`msiVectors`) and MSI-X (`msix`). The MSI-X capability (PCI 3.0 section 6.8.2)
 * is 12 bytes: Message Control with the table size (N - 1, read-only), Function Mask and MSI-X Enable (the only
 * writable bits); Table Offset/BIR and PBA Offset/BIR (read-only). The table and the Pending Bit Array themselves live
 * in a memory BAR, in an `MsixTable` (pci.ts) the device model exposes there. A write reaching Message Control is
 * reported to the MSI-X listener (the table), so clearing Function Mask or setting Enable can deliver what was
 * pending, as the specification requires.
 *
 * Not modelled: extended config space beyond 4 KiB, bridges (type 1 headers), expansion ROM contents.
 */
import { Errno, KernelError } from "../core/index.ts";

// Standard type 0 header offsets (PCI Local Bus spec 3.0, section 6.1).
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_CLASS_DEVICE = 0x0a;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_ROM_ADDRESS = 0x30;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;

export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS_CAP_LIST = 0x10;
export const PCI_STATUS_INTERRUPT = 0x08;

export const PCI_BASE_ADDRESS_SPACE_IO = 0x1;
export const PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4;
export const PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8;

export const PCI_CAP_ID_PM = 0x01;
export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;

// MSI capability (offsets from the capability start).
export const PCI_MSI_FLAGS = 2;
export const PCI_MSI_FLAGS_ENABLE = 0x1;
export const PCI_MSI_FLAGS_QMASK = 0x0e;
export const PCI_MSI_FLAGS_QSIZE = 0x70;
export const PCI_MSI_FLAGS_64BIT = 0x80;
export const PCI_MSI_ADDRESS_LO = 4;
export const PCI_MSI_ADDRESS_HI = 8;
export const PCI_MSI_DATA_64 = 12;
export const PCI_MSI_DATA_32 = 8;

// MSI-X capability (offsets from the capability start; Linux's pci_regs.h names).
export const PCI_MSIX_FLAGS = 2;
/** Table size field of Message Control: N - 1. */
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff;
export const PCI_MSIX_FLAGS_MASKALL = 0x4000;
export const PCI_MSIX_FLAGS_ENABLE = 0x8000;
export const PCI_MSIX_TABLE = 4;
export const PCI_MSIX_TABLE_BIR = 0x7;
export const PCI_MSIX_TABLE_OFFSET = 0xfffffff8;
export const PCI_MSIX_PBA = 8;
export const PCI_MSIX_PBA_BIR = 0x7;
export const PCI_MSIX_PBA_OFFSET = 0xfffffff8;
export const PCI_CAP_MSIX_SIZEOF = 12;
/** Most vectors an MSI-X table can hold (an 11-bit N - 1). */
export const PCI_MSIX_MAX_VECTORS = 2048;

// MSI-X table entries (16 bytes each) in the BAR the Table BIR names.
export const PCI_MSIX_ENTRY_SIZE = 16;
export const PCI_MSIX_ENTRY_LOWER_ADDR = 0x0;
export const PCI_MSIX_ENTRY_UPPER_ADDR = 0x4;
export const PCI_MSIX_ENTRY_DATA = 0x8;
export const PCI_MSIX_ENTRY_VECTOR_CTRL = 0xc;
export const PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1;

export type BarKind = "io" | "mem32" | "mem64";

export interface BarSpec {
  readonly index: number;
  /** Size in bytes, a power of two (>= 16 for memory, >= 4 for I/O). */
  readonly size: number;
  readonly kind: BarKind;
  readonly prefetchable?: boolean;
}

export interface ConfigSpaceSpec {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly classCode: number; // 24 bits: base class, sub class, prog-if
  readonly revision?: number;
  readonly subsystemVendorId?: number;
  readonly subsystemId?: number;
  readonly interruptPin?: number; // 0 none, 1 INTA#
  readonly bars: readonly BarSpec[];
  /** 256 (conventional) or 4096 (PCIe extended). */
  readonly size?: 256 | 4096;
  /** MSI capability with this many vectors (1, 2, 4, ... 32); 64-bit addresses. */
  readonly msiVectors?: number;
  /** MSI-X capability (added after MSI): its table and PBA must fit, 8-byte aligned, in memory BARs of `bars`. */
  readonly msix?: MsixSpec;
}

/** Where an MSI-X capability says its table and Pending Bit Array are. */
export interface MsixSpec {
  /** Table size N, 1 to 2048. */
  readonly vectors: number;
  /** BIR of the table: index of a memory BAR. */
  readonly tableBar: number;
  /** Byte offset of the table in that BAR (N * 16 bytes), a multiple of 8. */
  readonly tableOffset: number;
  readonly pbaBar: number;
  /** Byte offset of the PBA (ceil(N / 64) quadwords), a multiple of 8. */
  readonly pbaOffset: number;
}

export interface MsiState {
  readonly enabled: boolean;
  readonly vectors: number;
  readonly address: number;
  readonly data: number;
}

/** The MSI-X capability's fields, decoded. */
export interface MsixState {
  readonly enabled: boolean;
  readonly functionMasked: boolean;
  readonly vectors: number;
  readonly tableBar: number;
  readonly tableOffset: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
}

export class PciConfigSpace {
  readonly bytes: Uint8Array;
  /** Bits software may change, per byte. */
  private readonly wmask: Uint8Array;
  /** Bits cleared by writing 1 (status register error bits), per byte. */
  private readonly w1cmask: Uint8Array;
  private readonly bars: (BarSpec | undefined)[] = [];
  readonly msiCap: number;
  /** Offset of the MSI-X capability, 0 if none. */
  readonly msixCap: number;
  private nextCap = 0x40;
  private lastCap = 0;
  /** Told when a write reaches MSI-X Message Control (the MsixTable, to deliver pending messages). */
  private msixListener: (() => void) | undefined;

  constructor(readonly spec: ConfigSpaceSpec) {
    const size = spec.size ?? 256;
    this.bytes = new Uint8Array(size);
    this.wmask = new Uint8Array(size);
    this.w1cmask = new Uint8Array(size);
    this.set16(PCI_VENDOR_ID, spec.vendorId);
    this.set16(PCI_DEVICE_ID, spec.deviceId);
    this.bytes[PCI_REVISION_ID] = spec.revision ?? 0;
    this.bytes[PCI_CLASS_PROG] = spec.classCode & 0xff;
    this.set16(PCI_CLASS_DEVICE, (spec.classCode >>> 8) & 0xffff);
    this.set16(PCI_SUBSYSTEM_VENDOR_ID, spec.subsystemVendorId ?? 0);
    this.set16(PCI_SUBSYSTEM_ID, spec.subsystemId ?? 0);
    this.bytes[PCI_INTERRUPT_PIN] = spec.interruptPin ?? 0;
    // Command: I/O, memory, bus master, INTx disable are writable.
    this.setMask16(PCI_COMMAND, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
    this.w1cmask[PCI_STATUS + 1] = 0xf9; // error bits in the status high byte are RW1C
    this.wmask[PCI_INTERRUPT_LINE] = 0xff;
    for (const b of spec.bars) this.addBar(b);
    this.msiCap = spec.msiVectors ? this.addMsi(spec.msiVectors) : 0;
    this.msixCap = spec.msix ? this.addMsix(spec.msix) : 0;
  }

  // ---- access as software sees it --------------------------------------------------------------------------------

  /** Reads `size` (1, 2 or 4) bytes at `offset`, little-endian. */
  read(offset: number, size: number): number {
    this.checkAccess(offset, size);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.bytes[offset + i]!;
    return v;
  }

  /** Writes through the masks (read-only bits keep their value, RW1C bits clear on 1). */
  write(offset: number, size: number, value: number): void {
    this.checkAccess(offset, size);
    for (let i = 0; i < size; i++) {
      const o = offset + i;
      const b = Math.floor(value / 256 ** i) & 0xff;
      const m = this.wmask[o]!;
      this.bytes[o] = (this.bytes[o]! & ~m) | (b & m);
      this.bytes[o]! &= ~(b & this.w1cmask[o]!);
    }
    const mc = this.msixCap + PCI_MSIX_FLAGS;
    if (this.msixCap !== 0 && offset < mc + 2 && offset + size > mc) this.msixListener?.();
  }

  // ---- BARs --------------------------------------------------------------------------------------------------------

  barSpec(index: number): BarSpec | undefined {
    return this.bars[index];
  }

  /** The address currently programmed in BAR `index` (flags stripped), 0 if unprogrammed or absent. */
  barAddress(index: number): number {
    const b = this.bars[index];
    if (!b) return 0;
    const off = PCI_BASE_ADDRESS_0 + 4 * index;
    const lo = this.read(off, 4);
    if (b.kind === "io") return (lo & ~0x3) >>> 0;
    const base = (lo & ~0xf) >>> 0;
    return b.kind === "mem64" ? base + this.read(off + 4, 4) * 2 ** 32 : base;
  }

  /** Writes an address into a BAR as firmware would. */
  setBarAddress(index: number, addr: number): void {
    const off = PCI_BASE_ADDRESS_0 + 4 * index;
    this.write(off, 4, addr % 2 ** 32);
    if (this.bars[index]?.kind === "mem64") this.write(off + 4, 4, Math.floor(addr / 2 ** 32));
  }

  commandMemoryEnabled(): boolean {
    return (this.read(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY) !== 0;
  }

  busMasterEnabled(): boolean {
    return (this.read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER) !== 0;
  }

  intxDisabled(): boolean {
    return (this.read(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE) !== 0;
  }

  // ---- capabilities -----------------------------------------------------------------------------------------------

  /** Appends a capability of `length` bytes; returns its offset. Body bytes start read-only. */
  addCapability(id: number, length: number): number {
    const at = this.nextCap;
    if (at + length > 256) throw new KernelError(Errno.ENOSPC, `no room for capability 0x${id.toString(16)}`);
    this.bytes[at] = id;
    this.bytes[at + 1] = 0;
    if (this.lastCap === 0) this.bytes[PCI_CAPABILITY_LIST] = at;
    else this.bytes[this.lastCap + 1] = at;
    this.lastCap = at;
    this.nextCap = (at + length + 3) & ~3;
    this.bytes[PCI_STATUS] = this.bytes[PCI_STATUS]! | PCI_STATUS_CAP_LIST;
    return at;
  }

  /** Offset of the first capability with `id`, 0 if absent (pci_find_capability). */
  findCapability(id: number): number {
    let p = this.bytes[PCI_CAPABILITY_LIST]!;
    for (let guard = 0; p !== 0 && guard < 48; guard++) {
      if (this.bytes[p] === id) return p;
      p = this.bytes[p + 1]!;
    }
    return 0;
  }

  /** Marks bits of [offset, offset+size) writable. */
  setMask(offset: number, size: number, mask: number): void {
    for (let i = 0; i < size; i++) this.wmask[offset + i] = Math.floor(mask / 256 ** i) & 0xff;
  }

  msi(): MsiState {
    const c = this.msiCap;
    if (c === 0) return { enabled: false, vectors: 0, address: 0, data: 0 };
    const flags = this.read(c + PCI_MSI_FLAGS, 2);
    return {
      enabled: (flags & PCI_MSI_FLAGS_ENABLE) !== 0,
      vectors: 1 << ((flags & PCI_MSI_FLAGS_QSIZE) >> 4),
      address: this.read(c + PCI_MSI_ADDRESS_LO, 4) + this.read(c + PCI_MSI_ADDRESS_HI, 4) * 2 ** 32,
      data: this.read(c + PCI_MSI_DATA_64, 2),
    };
  }

  /** The MSI-X capability's fields; `vectors` 0 when there is none. */
  msix(): MsixState {
    const c = this.msixCap;
    if (c === 0) {
      return {
        enabled: false,
        functionMasked: false,
        vectors: 0,
        tableBar: 0,
        tableOffset: 0,
        pbaBar: 0,
        pbaOffset: 0,
      };
    }
    const flags = this.read(c + PCI_MSIX_FLAGS, 2);
    const table = this.read(c + PCI_MSIX_TABLE, 4);
    const pba = this.read(c + PCI_MSIX_PBA, 4);
    return {
      enabled: (flags & PCI_MSIX_FLAGS_ENABLE) !== 0,
      functionMasked: (flags & PCI_MSIX_FLAGS_MASKALL) !== 0,
      vectors: (flags & PCI_MSIX_FLAGS_QSIZE) + 1,
      tableBar: table & PCI_MSIX_TABLE_BIR,
      tableOffset: (table & PCI_MSIX_TABLE_OFFSET) >>> 0,
      pbaBar: pba & PCI_MSIX_PBA_BIR,
      pbaOffset: (pba & PCI_MSIX_PBA_OFFSET) >>> 0,
    };
  }

  /** MSI-X Enable, read in place (interrupt paths call this: no allocation). */
  msixEnabled(): boolean {
    return this.msixCap !== 0 && (this.bytes[this.msixCap + PCI_MSIX_FLAGS + 1]! & (PCI_MSIX_FLAGS_ENABLE >> 8)) !== 0;
  }

  /** MSI-X Function Mask, read in place. */
  msixFunctionMasked(): boolean {
    return this.msixCap !== 0 && (this.bytes[this.msixCap + PCI_MSIX_FLAGS + 1]! & (PCI_MSIX_FLAGS_MASKALL >> 8)) !== 0;
  }

  /**
   * Registers the one listener told after any write that reaches MSI-X Message Control (undefined removes it).
   * MsixTable registers itself; a second table on the same config space would replace the first.
   */
  setMsixControlListener(listener: (() => void) | undefined): void {
    this.msixListener = listener;
  }

  /** Function-level reset: writable state back to power-on values (BARs, command, MSI). */
  reset(): void {
    for (let o = 0; o < this.bytes.length; o++) {
      // Clear every writable bit; identity and capability structure are read-only and stay.
      this.bytes[o] = this.bytes[o]! & ~this.wmask[o]!;
    }
  }

  // ---- internals --------------------------------------------------------------------------------------------------

  private addBar(b: BarSpec): void {
    const minSize = b.kind === "io" ? 4 : 16;
    if (b.size < minSize || (b.size & (b.size - 1)) !== 0 || !Number.isSafeInteger(b.size)) {
      throw new KernelError(Errno.EINVAL, `BAR${b.index} size ${b.size} must be a power of two >= ${minSize}`);
    }
    if (b.index < 0 || b.index > 5 || (b.kind === "mem64" && b.index > 4) || this.bars[b.index]) {
      throw new KernelError(Errno.EINVAL, `BAR${b.index} index is invalid or used`);
    }
    this.bars[b.index] = b;
    const off = PCI_BASE_ADDRESS_0 + 4 * b.index;
    if (b.kind === "io") {
      this.bytes[off] = PCI_BASE_ADDRESS_SPACE_IO;
      this.setMask(off, 4, (0xffffffff - (b.size - 1)) >>> 0);
      return;
    }
    this.bytes[off] = (b.kind === "mem64" ? PCI_BASE_ADDRESS_MEM_TYPE_64 : 0) | (b.prefetchable ? 8 : 0);
    if (b.kind === "mem64") {
      // Size mask across both dwords: low dword keeps bits above the size, high dword bits above size >> 32.
      const lowMask = b.size >= 2 ** 32 ? 0 : (0xffffffff - (b.size - 1)) >>> 0;
      const highMask = b.size > 2 ** 32 ? (0xffffffff - (b.size / 2 ** 32 - 1)) >>> 0 : 0xffffffff;
      this.setMask(off, 4, lowMask & ~0xf);
      this.setMask(off + 4, 4, highMask);
      this.bars[b.index + 1] = undefined;
    } else {
      this.setMask(off, 4, (0xffffffff - (b.size - 1)) & ~0xf);
    }
  }

  private addMsi(vectors: number): number {
    if (vectors < 1 || vectors > 32 || (vectors & (vectors - 1)) !== 0) {
      throw new KernelError(Errno.EINVAL, `MSI vector count ${vectors} must be a power of two from 1 to 32`);
    }
    const c = this.addCapability(PCI_CAP_ID_MSI, 24);
    this.set16(c + PCI_MSI_FLAGS, PCI_MSI_FLAGS_64BIT | ((Math.log2(vectors) << 1) & PCI_MSI_FLAGS_QMASK));
    this.setMask(c + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE);
    this.setMask(c + PCI_MSI_ADDRESS_LO, 4, 0xfffffffc);
    this.setMask(c + PCI_MSI_ADDRESS_HI, 4, 0xffffffff);
    this.setMask(c + PCI_MSI_DATA_64, 2, 0xffff);
    return c;
  }

  private addMsix(m: MsixSpec): number {
    const { vectors, tableBar, tableOffset, pbaBar, pbaOffset } = m;
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > PCI_MSIX_MAX_VECTORS) {
      throw new KernelError(Errno.EINVAL, `MSI-X table size ${vectors} must be an integer from 1 to 2048`);
    }
    const tableBytes = vectors * PCI_MSIX_ENTRY_SIZE;
    const pbaBytes = Math.ceil(vectors / 64) * 8;
    this.checkMsixPlace("table", tableBar, tableOffset, tableBytes);
    this.checkMsixPlace("PBA", pbaBar, pbaOffset, pbaBytes);
    if (tableBar === pbaBar && tableOffset < pbaOffset + pbaBytes && pbaOffset < tableOffset + tableBytes) {
      throw new KernelError(
        Errno.EINVAL,
        `MSI-X table [0x${tableOffset.toString(16)}, +0x${tableBytes.toString(16)}) and PBA ` +
          `[0x${pbaOffset.toString(16)}, +0x${pbaBytes.toString(16)}) overlap in BAR${tableBar}`,
      );
    }
    const c = this.addCapability(PCI_CAP_ID_MSIX, PCI_CAP_MSIX_SIZEOF);
    this.set16(c + PCI_MSIX_FLAGS, vectors - 1);
    this.setMask(c + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_MASKALL | PCI_MSIX_FLAGS_ENABLE);
    this.set32(c + PCI_MSIX_TABLE, tableOffset + tableBar);
    this.set32(c + PCI_MSIX_PBA, pbaOffset + pbaBar);
    return c;
  }

  private checkMsixPlace(what: string, bar: number, offset: number, bytes: number): void {
    const spec = Number.isInteger(bar) && bar >= 0 && bar <= 5 ? this.bars[bar] : undefined;
    if (spec === undefined || spec.kind === "io") {
      throw new KernelError(Errno.EINVAL, `MSI-X ${what} BIR ${bar} does not name a memory BAR of this function`);
    }
    if (!Number.isInteger(offset) || offset < 0 || offset % 8 !== 0 || offset > PCI_MSIX_TABLE_OFFSET) {
      throw new KernelError(
        Errno.EINVAL,
        `MSI-X ${what} offset ${offset} must be a multiple of 8 below 2^32 (the low 3 bits hold the BIR)`,
      );
    }
    if (offset + bytes > spec.size) {
      throw new KernelError(
        Errno.EINVAL,
        `MSI-X ${what} [0x${offset.toString(16)}, +0x${bytes.toString(16)}) runs past the end of BAR${bar} ` +
          `(0x${spec.size.toString(16)} bytes)`,
      );
    }
  }

  private set32(off: number, v: number): void {
    for (let i = 0; i < 4; i++) this.bytes[off + i] = Math.floor(v / 256 ** i) & 0xff;
  }

  private set16(off: number, v: number): void {
    this.bytes[off] = v & 0xff;
    this.bytes[off + 1] = (v >>> 8) & 0xff;
  }

  private setMask16(off: number, m: number): void {
    this.wmask[off] = m & 0xff;
    this.wmask[off + 1] = (m >>> 8) & 0xff;
  }

  private checkAccess(offset: number, size: number): void {
    if ((size !== 1 && size !== 2 && size !== 4) || !Number.isInteger(offset) || offset < 0) {
      throw new KernelError(Errno.EINVAL, `config access of ${size} byte(s) at ${offset} is not 1, 2 or 4 bytes`);
    }
    if (offset + size > this.bytes.length) {
      throw new KernelError(
        Errno.EINVAL,
        `config access at 0x${offset.toString(16)}+${size} is past the ${this.bytes.length}-byte config space`,
      );
    }
  }
}
