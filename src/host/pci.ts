/**
 * The host's PCI bus: physical device models, the driver each is bound to, and interrupt delivery.
 *
 * A device model (the physical GPU, a test NIC) implements `PciDeviceModel`: its config space, trapped BAR accesses,
 * optionally memory-backed BARs (frames a process may mmap), and function-level reset. It raises interrupts through
 * `PciBus.raiseMsi/setIntx`, which deliver to whatever the bound driver registered: the host graphics driver's
 * handler, or vfio-pci forwarding to the user's eventfd.
 *
 * Binding is by driver name ("i915", "vfio-pci", or none) as in /sys/bus/pci/devices/<bdf>/driver; vfio-core's
 * viability check reads it. Not modelled: bridges, bus numbering, hot-plug slots, AER.
 */
import { defineTraceEvents, Errno, KernelError, type Pfn, type Tracer } from "../core/index.ts";
import type { Bdf } from "./bdf.ts";
import { PCI_STATUS, PCI_STATUS_INTERRUPT, type PciConfigSpace } from "./pci-config.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "pci.add": { bdf: string; vendor: number; device: number };
    "pci.remove": { bdf: string };
    "pci.bind": { bdf: string; driver: string };
    "pci.unbind": { bdf: string; driver: string };
    "pci.msi": { bdf: string; vector: number; delivered: boolean };
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
}

/** What a bound driver receives from its device. */
export interface PciIrqHandler {
  msi?(vector: number): void;
  intx?(level: boolean): void;
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
