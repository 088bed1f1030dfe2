/**
 * The generic vfio-pci device frontend (QEMU hw/vfio/pci.c): turns an open VFIO device fd into a PCI function on the
 * guest's bus, knowing nothing about the device behind it. An mdev vGPU, an mtty and a whole physical device take the
 * same path; everything is learned through the VFIO ioctls and the config region. This file is the device and its
 * config space; its BARs are vfio-region.ts and its interrupts vfio-interrupts.ts.
 *
 * Realize (vfio_realize): GET_INFO (must be a PCI device with a config region), GET_REGION_INFO of every region,
 * GET_IRQ_INFO of INTx and MSI, a read of the whole config region, the BARs realized (kinds, sizes, placement, mmap:
 * vfio-region.ts). Then the VMM does what the guest's firmware would: programs the BAR addresses and the interrupt line
 * through the config region and turns on I/O and memory decoding in the command register; then it wires the
 * interrupts (vfio-interrupts.ts).
 *
 * The guest's config space: the device's config region, with QEMU's emulated bits on top. BARs (0x10-0x27), the ROM
 * BAR (no ROM is exposed: it reads 0), the interrupt line, and the MSI capability's flags, address and data are
 * emulated: reads come from the VMM's copy, writes update it under a write mask (BAR sizing probes by the guest read
 * back ~(size - 1) | flags). Every guest write is also passed to the device, as QEMU does (the kernel virtualizes
 * what it must). Writes to BARs or to the command register re-evaluate the guest mappings (pci_update_mappings: a BAR
 * decodes only while its space is enabled and its address is valid); writes to the MSI capability go to the
 * interrupt wiring.
 *
 * Guest config accesses that fail on the device side (an EIO from the device fd) read as all ones and drop writes,
 * with a `vmm.warn` event, as QEMU reports and carries on: a guest cannot receive an errno.
 *
 * Not modelled: MSI-X, the expansion ROM, VGA regions, device-specific regions and quirks, PCI Express capabilities
 * (passed through as the device shows them), migration, the display (QUERY_GFX_PLANE), ioeventfds, sub-page BARs.
 *
 * Invariants: the emulated bytes (`emuMask` 0xff) are the VMM's only: the guest reads them from `emu`; the command
 * register's decode bits are `command`; after realize every BAR's decoding matches its register and `command`.
 */

import { defineTraceEvents, Errno, type Hva, hex, isKernelError, KernelError, type Tracer } from "../core/index.ts";
import {
  type BarKind,
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_MSI,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_MSI_ADDRESS_HI,
  PCI_MSI_ADDRESS_LO,
  PCI_MSI_DATA_32,
  PCI_MSI_DATA_64,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_64BIT,
  PCI_MSI_FLAGS_ENABLE,
  PCI_MSI_FLAGS_QMASK,
  PCI_MSI_FLAGS_QSIZE,
  PCI_ROM_ADDRESS,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  type Process,
} from "../host/index.ts";
import {
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  type VfioDeviceHandle,
  type VfioIrqInfoReply,
} from "../vfio/index.ts";
import { AccessBuffer } from "./access-buffer.ts";
import type { InterruptSource } from "./irq.ts";
import { allOnes, type ConfigAccess, type GuestPciBus, guestBdf } from "./pci-bus.ts";
import { FrontendInterrupts, type FrontendIrqEnv } from "./vfio-interrupts.ts";
import { realizeBars, type VfioBar, type VfioRegionEnv } from "./vfio-region.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vmm.warn": { vm: string; device: string; message: string };
  }
}
defineTraceEvents("vmm", {
  "vmm.warn": "{vm}: {device}: {message}",
});

/** What the guest's firmware gives INTx pins: PC-style PIRQ lines, swizzled by slot. */
const INTX_LINES: readonly number[] = [10, 11, 5, 9];

/** One BAR of an attached device, as the VMM placed it and the guest's register now points it. */
export interface GuestBar {
  readonly index: number;
  readonly kind: BarKind;
  readonly prefetchable: boolean;
  /** The decoded size: the region size rounded up to a power of two. */
  readonly size: number;
  /** VFIO_DEVICE_GET_REGION_INFO's size. */
  readonly regionSize: number;
  /** Where the VMM placed it (its firmware assignment). */
  readonly placedAt: number;
  /** Where the guest's BAR register points now (what decodes, when `mapped`). */
  readonly address: number;
  /** The BAR decodes guest accesses (its space is enabled and its address valid). */
  readonly mapped: boolean;
  /** Parts of the BAR mmapped into the VMM: guest accesses there go to memory, not through the device fd. */
  readonly mmapAreas: readonly { readonly offset: number; readonly size: number; readonly hva: Hva }[];
}

/** A device attached to the VM (what `Vmm.attach` returns): its identity, its BARs, config cycles, interrupts. */
export interface AttachedDevice {
  /** The VFIO device name (the mdev UUID or the PCI BDF). */
  readonly name: string;
  readonly sysfsdev: string;
  readonly group: number;
  readonly slot: number;
  /** The device's address on the guest bus ("0000:00:02.0"). */
  readonly guestBdf: string;
  readonly bars: readonly GuestBar[];
  /** The guest's config space access (1, 2 or 4 bytes; outside the config space: all ones / ignored). */
  configRead(offset: number, size: number): number;
  configWrite(offset: number, size: number, value: number): void;
  /** The guest address of BAR `index` (EINVAL if the device has no such BAR). */
  barAddress(index: number): number;
  readonly irqMode: "none" | "intx" | "msi";
  /** Interrupts injected from this device. */
  readonly interrupts: { readonly delivered: number; readonly intx: number; readonly msi: number };
  /** The guest's EOI for a line left masked after an interrupt storm. */
  eoi(): void;
}

export interface VfioPciFrontendEnv {
  readonly vm: string;
  readonly proc: Process;
  readonly tracer: Tracer;
  readonly bus: GuestPciBus;
  readonly source: InterruptSource;
  readonly sysfsdev: string;
  readonly group: number;
  readonly slot: number;
  /** "attach": enable MSI at realize when the device has it; "guest": only when the guest sets MSI Enable. */
  readonly msi: "attach" | "guest";
}

function overlaps(off: number, size: number, start: number, len: number): boolean {
  return off < start + len && start < off + size;
}

/** A vfio-pci device on the guest's bus. */
export class VfioPciFrontend implements AttachedDevice, ConfigAccess {
  readonly name: string;
  readonly sysfsdev: string;
  readonly group: number;
  readonly slot: number;
  readonly guestBdf: string;
  private readonly proc: Process;
  private readonly tracer: Tracer;
  private readonly vm: string;
  private readonly env: VfioPciFrontendEnv;
  private barStates: (VfioBar | undefined)[] = [];
  private infoFlags = 0;
  private configOffset = 0;
  private configSize = 0;
  /** The VMM's copy of emulated config bytes, which bits of each byte are emulated, and which the guest may write. */
  private emu = new Uint8Array(0);
  private emuMask = new Uint8Array(0);
  private wmask = new Uint8Array(0);
  /** The command register as the guest last wrote it (IO, MEMORY, MASTER, INTX_DISABLE). */
  private command = 0;
  private intxInfo: VfioIrqInfoReply | undefined;
  private msiInfo: VfioIrqInfoReply | undefined;
  private msiCap = 0;
  private msiDataOffset = 0;
  private msiMaxVectors = 0;
  /** The interrupt wiring, from realize on. */
  private irqs: FrontendInterrupts | undefined;
  private readonly access = new AccessBuffer();
  private released = false;

  constructor(
    readonly handle: VfioDeviceHandle,
    env: VfioPciFrontendEnv,
  ) {
    this.env = env;
    this.name = handle.name;
    this.sysfsdev = env.sysfsdev;
    this.group = env.group;
    this.slot = env.slot;
    this.guestBdf = guestBdf(env.slot);
    this.proc = env.proc;
    this.tracer = env.tracer;
    this.vm = env.vm;
  }

  // ---- AttachedDevice --------------------------------------------------------------------------------------------

  get bars(): readonly GuestBar[] {
    const out: GuestBar[] = [];
    for (const b of this.barStates) {
      if (b === undefined) continue;
      out.push({
        index: b.index,
        kind: b.kind,
        prefetchable: b.prefetchable,
        size: b.size,
        regionSize: b.regionSize,
        placedAt: b.placedAt,
        address: this.barRegisterAddress(b),
        mapped: b.mapped,
        mmapAreas: b.areas.map((a) => ({ offset: a.offset, size: a.size, hva: a.hva })),
      });
    }
    return out;
  }

  barAddress(index: number): number {
    const b = this.barStates[index];
    if (b === undefined) throw new KernelError(Errno.EINVAL, `${this.name} has no BAR${index}`);
    return this.barRegisterAddress(b);
  }

  get irqMode(): "none" | "intx" | "msi" {
    return this.irqs?.mode ?? "none";
  }

  get interrupts(): { readonly delivered: number; readonly intx: number; readonly msi: number } {
    const s = this.env.source;
    return { delivered: s.delivered, intx: s.intxDelivered, msi: s.msiDelivered };
  }

  eoi(): void {
    this.irqs?.eoi();
  }

  // ---- realize ---------------------------------------------------------------------------------------------------

  /** vfio_realize: learns the device, places its BARs, programs it as firmware would, wires its interrupts. */
  realize(): void {
    const h = this.handle;
    const info = h.info();
    this.infoFlags = info.flags;
    if ((info.flags & VFIO_DEVICE_FLAGS_PCI) === 0) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.name} is not a vfio-pci device (GET_INFO flags ${hex(info.flags)} lack VFIO_DEVICE_FLAGS_PCI)`,
      );
    }
    if (info.numRegions <= VFIO_PCI_CONFIG_REGION_INDEX) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.name} reports ${info.numRegions} regions: a vfio-pci device has at least ${VFIO_PCI_CONFIG_REGION_INDEX + 1}`,
      );
    }
    // GET_REGION_INFO of every region (the handle caches the replies); an index the driver refuses (VGA without
    // CONFIG_VFIO_PCI_VGA: EINVAL) is simply absent.
    for (let i = 0; i < info.numRegions; i++) {
      try {
        h.regionInfo(i);
      } catch (e) {
        if (!isKernelError(e) || e.errno !== Errno.EINVAL) throw e;
      }
    }
    const cfg = h.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX);
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if ((cfg.flags & rw) !== rw || cfg.size < 0x40) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.name}: config region is ${cfg.size} bytes with flags ${hex(cfg.flags)}: it must be readable, ` +
          "writable and hold at least the 64-byte header",
      );
    }
    this.configOffset = cfg.offset;
    this.configSize = Math.min(cfg.size, 4096);
    this.intxInfo = this.optionalIrqInfo(VFIO_PCI_INTX_IRQ_INDEX, info.numIrqs);
    this.msiInfo = this.optionalIrqInfo(VFIO_PCI_MSI_IRQ_INDEX, info.numIrqs);

    // QEMU reads the whole config space at realize.
    const phys = new Uint8Array(this.configSize);
    const n = this.proc.pread(h.fd, phys, this.configOffset);
    if (n !== this.configSize) {
      throw new KernelError(
        Errno.EIO,
        `${this.name}: read of the config region returned ${n} of ${this.configSize} bytes`,
      );
    }
    this.emu = new Uint8Array(this.configSize);
    this.emuMask = new Uint8Array(this.configSize);
    this.wmask = new Uint8Array(this.configSize);
    this.setupEmulation(phys);
    this.barStates = realizeBars(this.regionEnv(), phys, {
      read32: (off) => this.devRead32(off),
      write32: (off, v) => this.devWrite32(off, v),
    });
    for (const b of this.barStates) if (b !== undefined) this.setBarWriteMask(b);
    this.irqs = new FrontendInterrupts(this.irqEnv(), {
      emu: this.emu,
      intx: this.intxInfo !== undefined,
      msiCap: this.msiCap,
      msiDataOffset: this.msiDataOffset,
      msiMaxVectors: this.msiMaxVectors,
    });
    this.firmwareProgram();
    this.irqs.setup();
  }

  private regionEnv(): VfioRegionEnv {
    const { vm, proc, tracer, env } = this;
    return { vm, device: this.name, proc, handle: this.handle, tracer, bus: env.bus, warn: (m) => this.warn(m) };
  }

  private irqEnv(): FrontendIrqEnv {
    const { vm, proc, tracer, env } = this;
    return {
      vm,
      device: this.name,
      proc,
      handle: this.handle,
      tracer,
      source: env.source,
      slot: this.slot,
      msi: env.msi,
      warn: (m) => this.warn(m),
    };
  }

  private optionalIrqInfo(index: number, numIrqs: number): VfioIrqInfoReply | undefined {
    if (index >= numIrqs) return undefined;
    try {
      const r = this.handle.irqInfo(index);
      return r.count > 0 && (r.flags & VFIO_IRQ_INFO_EVENTFD) !== 0 ? r : undefined;
    } catch (e) {
      if (isKernelError(e) && e.errno === Errno.EINVAL) return undefined;
      throw e;
    }
  }

  /** Which config bytes the VMM emulates (BARs, ROM, interrupt line, MSI) and their write masks. */
  private setupEmulation(phys: Uint8Array): void {
    this.emuMask.fill(0xff, PCI_BASE_ADDRESS_0, PCI_BASE_ADDRESS_0 + 24);
    this.emuMask.fill(0xff, PCI_ROM_ADDRESS, PCI_ROM_ADDRESS + 4);
    this.emuMask[PCI_INTERRUPT_LINE] = 0xff;
    this.wmask[PCI_INTERRUPT_LINE] = 0xff;
    // The MSI capability, found by walking the device's list (QEMU's vfio_add_capabilities).
    if ((phys[PCI_STATUS]! & PCI_STATUS_CAP_LIST) !== 0 && this.msiInfo !== undefined) {
      let p = phys[PCI_CAPABILITY_LIST]! & ~3;
      for (let guard = 0; p >= 0x40 && p + 2 <= this.configSize && guard < 48; guard++) {
        if (phys[p] === PCI_CAP_ID_MSI) {
          this.msiCap = p;
          break;
        }
        p = phys[p + 1]! & ~3;
      }
    }
    if (this.msiCap !== 0) {
      const cap = this.msiCap;
      const flags = phys[cap + PCI_MSI_FLAGS]! | (phys[cap + PCI_MSI_FLAGS + 1]! << 8);
      const is64 = (flags & PCI_MSI_FLAGS_64BIT) !== 0;
      this.msiDataOffset = cap + (is64 ? PCI_MSI_DATA_64 : PCI_MSI_DATA_32);
      const mmc = 1 << ((flags & PCI_MSI_FLAGS_QMASK) >> 1);
      this.msiMaxVectors = Math.min(mmc, this.msiInfo!.count);
      const end = this.msiDataOffset + 2;
      this.emuMask.fill(0xff, cap + PCI_MSI_FLAGS, end);
      // Flags: the capable bits as the device shows them, Enable off; Enable and Queue Size are the guest's.
      this.emu[cap + PCI_MSI_FLAGS] = flags & ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE) & 0xff;
      this.emu[cap + PCI_MSI_FLAGS + 1] = flags >> 8;
      this.wmask[cap + PCI_MSI_FLAGS] = PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE;
      this.setMask(cap + PCI_MSI_ADDRESS_LO, 4, 0xfffffffc);
      if (is64) this.setMask(cap + PCI_MSI_ADDRESS_HI, 4, 0xffffffff);
      this.setMask(this.msiDataOffset, 2, 0xffff);
    }
  }

  private setMask(off: number, size: number, mask: number): void {
    for (let i = 0; i < size; i++) this.wmask[off + i] = Math.floor(mask / 256 ** i) & 0xff;
  }

  /** The guest may write the address bits of a BAR (not its flags, not the bits below its size). */
  private setBarWriteMask(b: VfioBar): void {
    const off = PCI_BASE_ADDRESS_0 + 4 * b.index;
    const lowMask = b.size >= 2 ** 32 ? 0 : (2 ** 32 - b.size) >>> 0;
    this.setMask(off, 4, (lowMask & ~(b.kind === "io" ? 0x3 : 0xf)) >>> 0);
    if (b.kind === "mem64") {
      const hiMask = b.size > 2 ** 32 ? (0xffffffff - (b.size / 2 ** 32 - 1)) >>> 0 : 0xffffffff;
      this.setMask(off + 4, 4, hiMask);
    }
  }

  /** What the guest's firmware does: BAR addresses, the interrupt line, I/O and memory decoding on. */
  private firmwareProgram(): void {
    let space = 0;
    for (const b of this.barStates) {
      if (b === undefined) continue;
      const off = PCI_BASE_ADDRESS_0 + 4 * b.index;
      this.setEmu32(off, ((b.placedAt % 2 ** 32) | b.flags) >>> 0);
      this.devWrite32(off, ((b.placedAt % 2 ** 32) | b.flags) >>> 0);
      if (b.kind === "mem64") {
        this.setEmu32(off + 4, Math.floor(b.placedAt / 2 ** 32));
        this.devWrite32(off + 4, Math.floor(b.placedAt / 2 ** 32));
      }
      space |= b.kind === "io" ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY;
    }
    this.setEmu32(PCI_ROM_ADDRESS, 0);
    const pin = this.devRead8(PCI_INTERRUPT_PIN);
    if (pin >= 1 && pin <= 4) {
      const line = INTX_LINES[(this.slot + pin - 1) % 4]!;
      this.emu[PCI_INTERRUPT_LINE] = line;
      this.devWrite8(PCI_INTERRUPT_LINE, line);
    }
    const cmd = this.devRead16(PCI_COMMAND) | space;
    this.devWrite16(PCI_COMMAND, cmd);
    this.command = cmd & (PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE);
    this.updateMappings();
  }

  // ---- guest config space ----------------------------------------------------------------------------------------

  configRead(offset: number, size: number): number {
    if (!this.validConfigAccess(offset, size)) return allOnes(size);
    let needDevice = false;
    for (let i = 0; i < size; i++) if (this.emuMask[offset + i] !== 0xff) needDevice = true;
    const s = this.access.bytes(size);
    if (needDevice) {
      try {
        this.proc.pread(this.handle.fd, s, this.configOffset + offset);
      } catch (e) {
        if (!isKernelError(e)) throw e;
        this.warn(`config read of ${size} byte(s) at ${hex(offset)} failed (${e.code})`);
        return allOnes(size);
      }
    }
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const o = offset + i;
      const m = this.emuMask[o]!;
      v = v * 256 + (((this.emu[o]! & m) | (s[i]! & ~m)) & 0xff);
    }
    return v;
  }

  configWrite(offset: number, size: number, value: number): void {
    if (!this.validConfigAccess(offset, size)) return;
    const s = this.access.bytes(size);
    for (let i = 0; i < size; i++) s[i] = Math.floor(value / 256 ** i) & 0xff;
    // QEMU passes every write to the device first; the kernel virtualizes what it must.
    try {
      this.proc.pwrite(this.handle.fd, s, this.configOffset + offset);
    } catch (e) {
      if (!isKernelError(e)) throw e;
      this.warn(`config write of ${size} byte(s) at ${hex(offset)} failed (${e.code})`);
    }
    for (let i = 0; i < size; i++) {
      const o = offset + i;
      if (this.emuMask[o] === 0) continue;
      const m = this.wmask[o]!;
      this.emu[o] = (this.emu[o]! & ~m) | (s[i]! & m);
    }
    let remap = overlaps(offset, size, PCI_BASE_ADDRESS_0, 24);
    if (overlaps(offset, size, PCI_COMMAND, 2)) {
      const cmdMask = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
      let cmd = this.command;
      for (let i = 0; i < size; i++) {
        const o = offset + i;
        if (o !== PCI_COMMAND && o !== PCI_COMMAND + 1) continue;
        const shift = (o - PCI_COMMAND) * 8;
        const m = (cmdMask >> shift) & 0xff;
        cmd = (cmd & ~(m << shift)) | ((s[i]! & m) << shift);
      }
      this.command = cmd;
      remap = true;
    }
    if (remap) this.updateMappings();
    if (this.msiCap !== 0 && overlaps(offset, size, this.msiCap, this.msiDataOffset + 2 - this.msiCap))
      this.irqs?.msiConfigChanged();
  }

  private validConfigAccess(offset: number, size: number): boolean {
    return (
      (size === 1 || size === 2 || size === 4) &&
      Number.isInteger(offset) &&
      offset >= 0 &&
      offset + size <= this.configSize &&
      !this.released
    );
  }

  // ---- guest mappings --------------------------------------------------------------------------------------------

  private barRegisterAddress(b: VfioBar): number {
    const off = PCI_BASE_ADDRESS_0 + 4 * b.index;
    const lo = this.emu32(off);
    if (b.kind === "io") return (lo & ~0x3) >>> 0;
    const base = (lo & ~0xf) >>> 0;
    return b.kind === "mem64" ? base + this.emu32(off + 4) * 2 ** 32 : base;
  }

  /** pci_update_mappings: a BAR decodes while its space is enabled and its address is valid. */
  private updateMappings(): void {
    for (const b of this.barStates) {
      if (b === undefined) continue;
      const enabled = (this.command & (b.kind === "io" ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY)) !== 0;
      b.updateDecoding(enabled, this.barRegisterAddress(b));
    }
  }

  // ---- reset and release -----------------------------------------------------------------------------------------

  /**
   * VFIO_DEVICE_RESET with QEMU's pre/post steps: interrupts off and decoding off before, then the reset, then the
   * guest-visible state back to what the VMM's firmware set at attach (BARs, line, command) and interrupts rewired.
   */
  reset(): void {
    if ((this.infoFlags & VFIO_DEVICE_FLAGS_RESET) === 0) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.name} does not support VFIO_DEVICE_RESET (GET_INFO flags ${hex(this.infoFlags)} lack RESET)`,
      );
    }
    this.irqs?.disableAll();
    this.devWrite16(
      PCI_COMMAND,
      this.devRead16(PCI_COMMAND) & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER),
    );
    this.command = 0;
    this.updateMappings();
    this.handle.reset();
    this.irqs?.resetMsiState();
    this.firmwareProgram();
    this.irqs?.setup();
  }

  /** Whether the device supports VFIO_DEVICE_RESET. */
  get resettable(): boolean {
    return (this.infoFlags & VFIO_DEVICE_FLAGS_RESET) !== 0;
  }

  /**
   * Hot-unplug (vfio_exitfn): interrupts off, BARs out of the guest's address space and windows, mmaps undone, the
   * device fd closed. Best effort: every step runs; the first failure is rethrown at the end.
   */
  release(): void {
    if (this.released) return;
    let error: unknown;
    const attempt = (fn: () => void): void => {
      try {
        fn();
      } catch (e) {
        error ??= e;
      }
    };
    attempt(() => this.irqs?.disableAll());
    for (const b of this.barStates) b?.release(attempt);
    attempt(() => this.handle.close());
    this.env.source.clear();
    this.released = true;
    if (error !== undefined) throw error;
  }

  /** The process died: nothing to close (exit closed every fd); forget the guest mappings. */
  forget(): void {
    for (const b of this.barStates) b?.forget();
    this.irqs?.forget();
    this.env.source.clear();
    this.released = true;
  }

  // ---- helpers ---------------------------------------------------------------------------------------------------

  private warn(message: string): void {
    if (this.tracer.enabled) this.tracer.emit("vmm.warn", { vm: this.vm, device: this.name, message });
  }

  private emu32(off: number): number {
    return (this.emu[off]! | (this.emu[off + 1]! << 8) | (this.emu[off + 2]! << 16) | (this.emu[off + 3]! << 24)) >>> 0;
  }

  private setEmu32(off: number, v: number): void {
    for (let i = 0; i < 4; i++) this.emu[off + i] = (v >>> (8 * i)) & 0xff;
  }

  private devRead(off: number, size: number): number {
    const s = this.access.bytes(size);
    this.proc.pread(this.handle.fd, s, this.configOffset + off);
    return this.access.load(size);
  }

  private devWrite(off: number, size: number, value: number): void {
    const s = this.access.bytes(size);
    this.access.store(size, value);
    this.proc.pwrite(this.handle.fd, s, this.configOffset + off);
  }

  private devRead8(off: number): number {
    return this.devRead(off, 1);
  }
  private devRead16(off: number): number {
    return this.devRead(off, 2);
  }
  private devRead32(off: number): number {
    return this.devRead(off, 4);
  }
  private devWrite8(off: number, v: number): void {
    this.devWrite(off, 1, v);
  }
  private devWrite16(off: number, v: number): void {
    this.devWrite(off, 2, v);
  }
  private devWrite32(off: number, v: number): void {
    this.devWrite(off, 4, v);
  }
}
