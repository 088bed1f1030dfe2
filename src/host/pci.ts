/**
 * The host's PCI bus: physical device models, the driver each is bound to, and interrupt delivery.
 *
 * A device model (the physical GPU, a test NIC) implements `PciDeviceModel`: its config space, trapped BAR accesses,
 * optionally memory-backed BARs (frames a process may mmap), and function-level reset. It raises interrupts through
 * `PciBus.raiseMsi/raiseMsix/setIntx`, which deliver to whatever the bound driver registered: the host graphics
 * driver's handler, or vfio-pci forwarding to the user's eventfd.
 *
 * MSI-X (PCI 3.0 section 6.8.2): a device with an MSI-X capability keeps its vector table and Pending Bit Array in an
 * `MsixTable`, which its barRead/barWrite delegate to at the table and PBA offsets (`covers`). A message for vector
 * v is sent only while MSI-X is enabled, the function is not masked, the entry's Mask bit is clear and bus mastering
 * is on. A message for a masked vector (entry or function mask) sets its pending bit instead; clearing the mask later
 * sends it once (however many were raised meanwhile) and clears the bit. The table and PBA are device memory: a
 * function-level reset through the bus masks every entry and clears the PBA (entry Mask bits reset to 1).
 * The message address and data are recorded but not decoded: delivery goes to the bound driver's `msix(vector)`
 * handler, which stands for the host's interrupt remapping and its irq for that vector.
 *
 * Binding is by driver name ("i915", "vfio-pci", or none) as in /sys/bus/pci/devices/<bdf>/driver; vfio-core's
 * viability check reads it. Not modelled: bridges, bus numbering, hot-plug slots, AER.
 */
import { defineTraceEvents, Errno, KernelError, type Pfn, type Tracer } from "../core/index.ts";
import type { Bdf } from "./bdf.ts";
import {
  PCI_MSIX_ENTRY_CTRL_MASKBIT,
  PCI_MSIX_ENTRY_DATA,
  PCI_MSIX_ENTRY_LOWER_ADDR,
  PCI_MSIX_ENTRY_SIZE,
  PCI_MSIX_ENTRY_UPPER_ADDR,
  PCI_MSIX_ENTRY_VECTOR_CTRL,
  PCI_STATUS,
  PCI_STATUS_INTERRUPT,
  type PciConfigSpace,
} from "./pci-config.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "pci.add": { bdf: string; vendor: number; device: number };
    "pci.remove": { bdf: string };
    "pci.bind": { bdf: string; driver: string };
    "pci.unbind": { bdf: string; driver: string };
    "pci.msi": { bdf: string; vector: number; delivered: boolean };
    "pci.msix": { bdf: string; vector: number; outcome: string };
    "pci.intx": { bdf: string; level: boolean };
    "pci.reset": { bdf: string };
  }
}
defineTraceEvents("host", {
  "pci.add": "PCI device {bdf} [{vendor}:{device}] added",
  "pci.remove": "PCI device {bdf} removed",
  "pci.bind": "{bdf} bound to driver {driver}",
  "pci.unbind": "{bdf} unbound from driver {driver}",
  "pci.msi": "{bdf} raised MSI vector {vector} (delivered={delivered})",
  "pci.msix": "{bdf} raised MSI-X vector {vector}: {outcome}",
  "pci.intx": "{bdf} INTx level {level}",
  "pci.reset": "{bdf} function-level reset",
});

/** A physical PCI function as the host sees it. */
export interface PciDeviceModel {
  readonly bdf: Bdf;
  readonly config: PciConfigSpace;
  /** A trapped BAR read of `size` (1, 2, 4 or 8) bytes at `offset`. */
  barRead(bar: number, offset: number, size: number): number;
  barWrite(bar: number, offset: number, size: number, value: number): void;
  /** For a memory-backed BAR (can be mmapped): the first of its contiguous frames; undefined if trapped. */
  barFrames?(bar: number): Pfn | undefined;
  /** Function-level reset of the device's internal state (config space is reset by the bus). */
  reset(): void;
  /** The MSI-X table and PBA of a device with an MSI-X capability (the bus connects and resets it). */
  readonly msixTable?: MsixTable | undefined;
}

/** What a bound driver receives from its device. */
export interface PciIrqHandler {
  msi?(vector: number): void;
  /** MSI-X `vector` fired (only while enabled, unmasked and bus mastering). */
  msix?(vector: number): void;
  intx?(level: boolean): void;
}

const TWO32 = 4294967296;
// An entry's fields as dword indices.
const ADDR_LO = PCI_MSIX_ENTRY_LOWER_ADDR >> 2;
const ADDR_HI = PCI_MSIX_ENTRY_UPPER_ADDR >> 2;
const DATA = PCI_MSIX_ENTRY_DATA >> 2;
const CTRL = PCI_MSIX_ENTRY_VECTOR_CTRL >> 2;
/** Writable bits of each entry dword: the address is dword aligned, vector control has only the Mask bit. */
const ENTRY_WMASK = new Uint32Array(4);
ENTRY_WMASK[ADDR_LO] = 0xfffffffc;
ENTRY_WMASK[ADDR_HI] = 0xffffffff;
ENTRY_WMASK[DATA] = 0xffffffff;
ENTRY_WMASK[CTRL] = PCI_MSIX_ENTRY_CTRL_MASKBIT;

/**
 * An MSI-X vector table and Pending Bit Array, as they sit in a device's memory BAR. The device model owns one (built
 * from its config space's MSI-X capability) and delegates BAR accesses at the table and PBA offsets to `read/write`.
 *
 * Accesses follow the specification: an aligned 4-byte or 8-byte access (a 4-byte piece of the PBA too); anything
 * else reads as all ones and is dropped. Entry fields keep only their defined bits (the address is dword aligned,
 * vector control has just the Mask bit); the PBA is read-only. Clearing an entry's Mask bit, or a Message Control
 * write that leaves the function enabled and unmasked, sends the pending messages through the bus (`connect`).
 */
export class MsixTable {
  readonly vectors: number;
  readonly tableBar: number;
  readonly tableOffset: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
  /** Four dwords per entry: address low, address high, data, vector control. */
  private readonly entries: Uint32Array;
  /** One bit per vector, in 32-bit words (the PBA's qwords, little-endian). */
  private readonly pba: Uint32Array;
  private sink: ((vector: number) => void) | undefined;

  constructor(private readonly config: PciConfigSpace) {
    const m = config.msix();
    if (m.vectors === 0) {
      throw new KernelError(Errno.EINVAL, "an MsixTable needs a config space with an MSI-X capability (spec.msix)");
    }
    this.vectors = m.vectors;
    this.tableBar = m.tableBar;
    this.tableOffset = m.tableOffset;
    this.pbaBar = m.pbaBar;
    this.pbaOffset = m.pbaOffset;
    this.entries = new Uint32Array(this.vectors * 4);
    this.pba = new Uint32Array(Math.ceil(this.vectors / 64) * 2);
    this.reset();
    config.setMsixControlListener(() => this.deliverPending());
  }

  /** The bus's delivery path for pending messages (PciBus.add connects it; undefined disconnects). */
  connect(sink: ((vector: number) => void) | undefined): void {
    this.sink = sink;
  }

  /** Whether BAR `bar` at `offset` falls in the table or the PBA (where barRead/barWrite should delegate here). */
  covers(bar: number, offset: number): boolean {
    return this.tableIndex(bar, offset) >= 0 || this.pbaIndex(bar, offset) >= 0;
  }

  /** A BAR read in the table or PBA: `size` 4 or 8, aligned; all ones otherwise. */
  read(bar: number, offset: number, size: number): number {
    if (size === 8 && offset % 8 === 0) {
      const lo = this.read32(bar, offset);
      const hi = this.read32(bar, offset + 4);
      return lo < 0 || hi < 0 ? 2 ** 64 - 1 : lo + hi * TWO32;
    }
    if (size !== 4 || offset % 4 !== 0) return 2 ** (size * 8) - 1;
    const v = this.read32(bar, offset);
    return v < 0 ? 0xffffffff : v;
  }

  /** A BAR write in the table (the PBA is read-only): `size` 4 or 8, aligned; dropped otherwise. */
  write(bar: number, offset: number, size: number, value: number): void {
    if (size === 8 && offset % 8 === 0) {
      this.write32(bar, offset, value % TWO32);
      this.write32(bar, offset + 4, Math.floor(value / TWO32) % TWO32);
      return;
    }
    if (size === 4 && offset % 4 === 0) this.write32(bar, offset, value >>> 0);
  }

  /** The entry's Mask bit. */
  masked(vector: number): boolean {
    return (this.entries[vector * 4 + CTRL]! & PCI_MSIX_ENTRY_CTRL_MASKBIT) !== 0;
  }

  /** The vector's bit in the PBA. */
  pending(vector: number): boolean {
    return (this.pba[vector >>> 5]! & (1 << (vector & 31))) !== 0;
  }

  /** The message address programmed in the entry (64 bits; exact below 2^53). */
  address(vector: number): number {
    return this.entries[vector * 4 + ADDR_LO]! + this.entries[vector * 4 + ADDR_HI]! * TWO32;
  }

  /** The message data programmed in the entry. */
  data(vector: number): number {
    return this.entries[vector * 4 + DATA]!;
  }

  /** The device wanted to send `vector` while it was masked (PciBus.raiseMsix). */
  setPending(vector: number): void {
    this.pba[vector >>> 5] = this.pba[vector >>> 5]! | (1 << (vector & 31));
  }

  /** Power-on state: entries zero with their Mask bit set, nothing pending. */
  reset(): void {
    this.entries.fill(0);
    for (let v = 0; v < this.vectors; v++) this.entries[v * 4 + CTRL] = PCI_MSIX_ENTRY_CTRL_MASKBIT;
    this.pba.fill(0);
  }

  /** Sends every pending message the function may now send (after an unmask or a Message Control write). */
  deliverPending(): void {
    if (!this.config.msixEnabled() || this.config.msixFunctionMasked()) return;
    for (let w = 0; w < this.pba.length; w++) {
      if (this.pba[w] === 0) continue;
      for (let b = 0; b < 32; b++) {
        const v = w * 32 + b;
        if (v < this.vectors && this.pending(v) && !this.masked(v)) this.sendPending(v);
      }
    }
  }

  /** Clears the pending bit and sends; without a bus or bus mastering the message stays pending instead. */
  private sendPending(vector: number): void {
    if (this.sink === undefined || !this.config.busMasterEnabled()) return;
    this.pba[vector >>> 5] = this.pba[vector >>> 5]! & ~(1 << (vector & 31));
    this.sink(vector);
  }

  /** Entry dword index for a table offset, -1 outside the table. */
  private tableIndex(bar: number, offset: number): number {
    const rel = offset - this.tableOffset;
    if (bar !== this.tableBar || rel < 0 || rel >= this.vectors * PCI_MSIX_ENTRY_SIZE) return -1;
    return rel >>> 2;
  }

  /** PBA dword index for an offset, -1 outside the PBA. */
  private pbaIndex(bar: number, offset: number): number {
    const rel = offset - this.pbaOffset;
    if (bar !== this.pbaBar || rel < 0 || rel >= this.pba.length * 4) return -1;
    return rel >>> 2;
  }

  /** An aligned dword, or -1 when `offset` is in neither structure. */
  private read32(bar: number, offset: number): number {
    const t = this.tableIndex(bar, offset);
    if (t >= 0) return this.entries[t]!;
    const p = this.pbaIndex(bar, offset);
    return p >= 0 ? this.pba[p]! : -1;
  }

  private write32(bar: number, offset: number, value: number): void {
    const t = this.tableIndex(bar, offset);
    if (t < 0) return; // the PBA is read-only, and nothing else lives here
    const field = t & 3;
    const wmask = ENTRY_WMASK[field]!;
    this.entries[t] = (this.entries[t]! & ~wmask) | (value & wmask);
    if (field === CTRL && (value & PCI_MSIX_ENTRY_CTRL_MASKBIT) === 0) {
      const vector = t >>> 2;
      if (this.pending(vector) && this.config.msixEnabled() && !this.config.msixFunctionMasked()) {
        this.sendPending(vector);
      }
    }
  }
}

interface Slot {
  readonly dev: PciDeviceModel;
  driver: string | undefined;
  handler: PciIrqHandler | undefined;
  intxLevel: boolean;
}

export class PciBus {
  private readonly slots = new Map<string, Slot>();

  constructor(private readonly tracer: Tracer) {}

  add(dev: PciDeviceModel): void {
    if (this.slots.has(dev.bdf)) throw new KernelError(Errno.EEXIST, `PCI device ${dev.bdf} already exists`);
    this.slots.set(dev.bdf, { dev, driver: undefined, handler: undefined, intxLevel: false });
    // One closure per device, made here so that delivering a pending message allocates nothing.
    dev.msixTable?.connect((vector) => {
      this.raiseMsix(dev.bdf, vector);
    });
    if (this.tracer.enabled) {
      this.tracer.emit("pci.add", {
        bdf: dev.bdf,
        vendor: dev.config.read(0, 2),
        device: dev.config.read(2, 2),
      });
    }
  }

  remove(bdf: Bdf): void {
    const s = this.slot(bdf);
    if (s.driver) {
      throw new KernelError(Errno.EBUSY, `PCI device ${bdf} is bound to ${s.driver}: unbind it before removing it`);
    }
    s.dev.msixTable?.connect(undefined);
    this.slots.delete(bdf);
    if (this.tracer.enabled) this.tracer.emit("pci.remove", { bdf });
  }

  get(bdf: Bdf): PciDeviceModel {
    return this.slot(bdf).dev;
  }

  has(bdf: Bdf): boolean {
    return this.slots.has(bdf);
  }

  list(): PciDeviceModel[] {
    return [...this.slots.values()].map((s) => s.dev).sort((a, b) => (a.bdf < b.bdf ? -1 : a.bdf > b.bdf ? 1 : 0));
  }

  /** Name of the bound driver, or undefined (the `driver` symlink in sysfs). */
  driverOf(bdf: Bdf): string | undefined {
    return this.slot(bdf).driver;
  }

  bind(bdf: Bdf, driver: string, handler: PciIrqHandler): void {
    const s = this.slot(bdf);
    if (s.driver) {
      throw new KernelError(Errno.EBUSY, `PCI device ${bdf} is already bound to ${s.driver}: unbind it first`);
    }
    s.driver = driver;
    s.handler = handler;
    if (this.tracer.enabled) this.tracer.emit("pci.bind", { bdf, driver });
  }

  unbind(bdf: Bdf): void {
    const s = this.slot(bdf);
    if (!s.driver) throw new KernelError(Errno.ENODEV, `PCI device ${bdf} is not bound to a driver`);
    const driver = s.driver;
    s.driver = undefined;
    s.handler = undefined;
    if (this.tracer.enabled) this.tracer.emit("pci.unbind", { bdf, driver });
  }

  /**
   * A device raises MSI `vector`. Delivered only if MSI is enabled in its config space, bus mastering is on and a
   * driver handles it; otherwise dropped (as real hardware would). Returns whether it was delivered.
   */
  raiseMsi(bdf: Bdf, vector: number): boolean {
    const s = this.slot(bdf);
    const msi = s.dev.config.msi();
    const delivered =
      msi.enabled && vector < msi.vectors && s.dev.config.busMasterEnabled() && s.handler?.msi !== undefined;
    if (this.tracer.enabled) this.tracer.emit("pci.msi", { bdf, vector, delivered });
    if (delivered) s.handler!.msi!(vector);
    return delivered;
  }

  /**
   * A device raises MSI-X `vector`. Sent (to the bound driver's `msix` handler) only while MSI-X is enabled, the
   * function is not masked, the entry's Mask bit is clear and bus mastering is on; a masked vector sets its pending
   * bit and is sent when unmasked. Dropped when MSI-X is disabled, the vector is not in the table, bus mastering is
   * off or no driver handles MSI-X. Returns whether it was delivered now.
   */
  raiseMsix(bdf: Bdf, vector: number): boolean {
    const s = this.slot(bdf);
    const t = s.dev.msixTable;
    const cfg = s.dev.config;
    let outcome: string;
    if (t === undefined || !Number.isInteger(vector) || vector < 0 || vector >= t.vectors || !cfg.msixEnabled()) {
      outcome = "dropped (MSI-X disabled or no such vector)";
    } else if (cfg.msixFunctionMasked() || t.masked(vector)) {
      t.setPending(vector);
      outcome = "masked, pending";
    } else if (!cfg.busMasterEnabled()) {
      outcome = "dropped (bus mastering off)";
    } else if (s.handler?.msix === undefined) {
      outcome = "dropped (no driver handler)";
    } else {
      outcome = "delivered";
    }
    if (this.tracer.enabled) this.tracer.emit("pci.msix", { bdf, vector, outcome });
    if (outcome !== "delivered") return false;
    s.handler!.msix!(vector);
    return true;
  }

  /** Drives the INTx line; a handler sees level changes unless INTx is disabled in the command register. */
  setIntx(bdf: Bdf, level: boolean): void {
    const s = this.slot(bdf);
    if (s.intxLevel === level) return;
    s.intxLevel = level;
    // The Interrupt Status bit of the status register follows the line (PCI 2.3), whatever the INTx Disable bit says.
    const st = s.dev.config.bytes;
    st[PCI_STATUS] = level ? st[PCI_STATUS]! | PCI_STATUS_INTERRUPT : st[PCI_STATUS]! & ~PCI_STATUS_INTERRUPT;
    if (this.tracer.enabled) this.tracer.emit("pci.intx", { bdf, level });
    if (!s.dev.config.intxDisabled()) s.handler?.intx?.(level);
  }

  /** Current level of the device's INTx line. */
  intxLevel(bdf: Bdf): boolean {
    return this.slot(bdf).intxLevel;
  }

  /** Function-level reset: config space to power-on values, then the device's own state. */
  reset(bdf: Bdf): void {
    const s = this.slot(bdf);
    s.dev.config.reset();
    s.dev.msixTable?.reset();
    s.dev.reset();
    s.intxLevel = false;
    if (this.tracer.enabled) this.tracer.emit("pci.reset", { bdf });
  }

  private slot(bdf: Bdf): Slot {
    const s = this.slots.get(bdf);
    if (!s) throw new KernelError(Errno.ENODEV, `no PCI device at ${bdf}`);
    return s;
  }
}
