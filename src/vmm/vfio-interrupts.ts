/**
 * A vfio-pci device's interrupts as the VMM wires them to the guest (QEMU's vfio_intx_enable / vfio_msi_enable and
 * their teardown, the interrupt half of hw/vfio/pci.c).
 *
 * - INTx, when the device has a pin and an INTx index with eventfd support: one eventfd given with SET_IRQS TRIGGER,
 *   delivered as a level-triggered, automasked line (irq.ts `IntxLine`) whose EOI is SET_IRQS UNMASK (prebuilt: the
 *   EOI path allocates nothing). The guest's handler receives the interrupt line number of the emulated config space.
 * - MSI, when the device has an MSI capability and an MSI index: when the guest sets the Enable bit of the emulated
 *   capability, INTx is torn down and one eventfd per enabled vector (Queue Size, capped by the device) is given with
 *   SET_IRQS MSI; clearing it goes back to INTx; changing the vector count re-enables. The vector a handler receives is
 *   the MSI data the guest programmed with the vector index in its low bits. If SET_IRQS MSI fails, Enable is cleared
 *   and INTx comes back, as QEMU falls back.
 * - At attach, with `msi: "attach"` (the default), the VMM enables MSI itself for a device that has the capability (as
 *   a guest driver would right away: address `MSI_ADDRESS`, data `MSI_DATA_BASE + slot`); otherwise it wires INTx.
 *   A device without an MSI capability (mtty) stays on INTx even if its MSI index exists, as in QEMU.
 * Failures of SET_IRQS while tearing down are `vmm.warn` events: a guest cannot receive an errno.
 *
 * The emulated MSI capability bytes live in the frontend's config emulation (vfio-pci.ts); this module reads and
 * writes them through the same array, so the guest's config reads see what it set.
 *
 * Not modelled: MSI-X, per-vector masking, KVM irqfds (delivery is by callback), posted interrupts.
 *
 * Invariant: the mode is "msi" iff MSI eventfds are set, "intx" iff the INTx eventfd is set, never both.
 */
import { defineTraceEvents, isKernelError, type Tracer } from "../core/index.ts";
import {
  PCI_INTERRUPT_LINE,
  PCI_MSI_ADDRESS_LO,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  PCI_MSI_FLAGS_QSIZE,
  type Process,
} from "../host/index.ts";
import {
  encodeVfioIrqSet,
  VFIO_DEVICE_SET_IRQS,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  type VfioDeviceHandle,
} from "../vfio/index.ts";
import { EventfdIrq, type InterruptSource, IntxLine } from "./irq.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vmm.msi.enable": { vm: string; device: string; vectors: number; data: number };
    "vmm.msi.disable": { vm: string; device: string };
    "vmm.intx.enable": { vm: string; device: string; line: number };
  }
}
defineTraceEvents("vmm", {
  "vmm.msi.enable": "{vm}: {device} MSI enabled with {vectors} vector(s), data {data}",
  "vmm.msi.disable": "{vm}: {device} MSI disabled, back to INTx",
  "vmm.intx.enable": "{vm}: {device} INTx wired to line {line}",
});

/** The x86 MSI address (local APIC 0) the VMM programs when it enables MSI itself. */
export const MSI_ADDRESS = 0xfee00000;
/** The MSI data (vector) the VMM programs for the device in slot s: MSI_DATA_BASE + s. */
export const MSI_DATA_BASE = 0x40;

export interface FrontendIrqEnv {
  readonly vm: string;
  readonly device: string;
  readonly proc: Process;
  readonly handle: VfioDeviceHandle;
  readonly tracer: Tracer;
  readonly source: InterruptSource;
  readonly slot: number;
  /** "attach": enable MSI at attach when the device has it; "guest": only when the guest sets MSI Enable. */
  readonly msi: "attach" | "guest";
  /** A `vmm.warn` event naming the device. */
  warn(message: string): void;
}

/** Where the device's interrupt state is in the emulated config space, as the frontend found it at realize. */
export interface FrontendIrqLayout {
  /** The frontend's emulated config bytes (shared: the interrupt line and the MSI capability are read here). */
  readonly emu: Uint8Array;
  /** The device has a usable INTx index. */
  readonly intx: boolean;
  /** Offset of the MSI capability, 0 when the device has none (or no MSI index). */
  readonly msiCap: number;
  /** Offset of the capability's Message Data. */
  readonly msiDataOffset: number;
  /** Vectors the device supports (capability and MSI index). */
  readonly msiMaxVectors: number;
}

/** One device's interrupt wiring (see the module comment). */
export class FrontendInterrupts {
  private intx: IntxLine | undefined;
  private intxFd = -1;
  private msiIrqs: EventfdIrq[] = [];
  private msiFds: number[] = [];
  private current: "none" | "intx" | "msi" = "none";
  /** Prebuilt SET_IRQS INTx UNMASK: the EOI path issues it without allocating. */
  private readonly unmaskBuf: Uint8Array;

  constructor(
    private readonly env: FrontendIrqEnv,
    private readonly layout: FrontendIrqLayout,
  ) {
    this.unmaskBuf = encodeVfioIrqSet({
      flags: VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_DATA_NONE,
      index: VFIO_PCI_INTX_IRQ_INDEX,
      start: 0,
      count: 1,
    });
  }

  get mode(): "none" | "intx" | "msi" {
    return this.current;
  }

  /** The guest's EOI for a line left masked after an interrupt storm. */
  eoi(): void {
    this.intx?.eoi();
  }

  /** At attach and after a reset: MSI if the policy and the device allow it, else INTx (see the module comment). */
  setup(): void {
    const { emu, msiCap, msiDataOffset } = this.layout;
    if (this.env.msi === "attach" && msiCap !== 0) {
      setEmu32(emu, msiCap + PCI_MSI_ADDRESS_LO, MSI_ADDRESS);
      emu[msiDataOffset] = (MSI_DATA_BASE + this.env.slot) & 0xff;
      emu[msiDataOffset + 1] = 0;
      emu[msiCap + PCI_MSI_FLAGS]! |= PCI_MSI_FLAGS_ENABLE;
      try {
        this.msiEnable();
      } catch (e) {
        if (!isKernelError(e)) throw e;
        // msiEnable went back to INTx, as QEMU does when MSI setup fails.
        this.env.warn(`MSI setup failed (${e.code}): ${e.message}; using INTx`);
      }
    } else {
      this.enableIntx();
    }
  }

  /** The guest changed the MSI capability: follow its Enable bit and vector count. */
  msiConfigChanged(): void {
    const { emu, msiCap } = this.layout;
    const flags = emu[msiCap + PCI_MSI_FLAGS]!;
    const enabled = (flags & PCI_MSI_FLAGS_ENABLE) !== 0;
    const active = this.msiFds.length > 0;
    try {
      if (enabled && !active) this.msiEnable();
      else if (!enabled && active) this.msiDisable(true);
      else if (enabled && active) {
        const want = Math.max(1, Math.min(1 << ((flags & PCI_MSI_FLAGS_QSIZE) >> 4), this.layout.msiMaxVectors));
        if (want !== this.msiFds.length) {
          this.msiDisable(false);
          this.msiEnable();
        }
      }
    } catch (e) {
      if (!isKernelError(e)) throw e;
      this.env.warn(`MSI ${enabled ? "enable" : "disable"} failed (${e.code}): ${e.message}`);
    }
  }

  /** The guest's MSI state is reset with the function (pci_device_reset): Enable, Queue Size, address, data. */
  resetMsiState(): void {
    const { emu, msiCap, msiDataOffset } = this.layout;
    if (msiCap === 0) return;
    emu[msiCap + PCI_MSI_FLAGS]! &= ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE);
    emu.fill(0, msiCap + PCI_MSI_ADDRESS_LO, msiDataOffset + 2);
  }

  /** Tears down whichever interrupt is active (QEMU's vfio_disable_interrupts). */
  disableAll(): void {
    this.msiDisable(false);
    this.disableIntx();
    this.current = "none";
  }

  /** The process died: its eventfds went with it; forget the wiring. */
  forget(): void {
    this.intx = undefined;
    this.msiIrqs = [];
    this.msiFds = [];
    this.current = "none";
  }

  // ---- INTx --------------------------------------------------------------------------------------------------------

  private enableIntx(): void {
    const { emu } = this.layout;
    if (!this.layout.intx || emu[PCI_INTERRUPT_LINE] === 0 || this.intx !== undefined) return;
    const { proc, handle } = this.env;
    const fd = proc.eventfd();
    const line = new IntxLine(
      proc.eventfdOf(fd),
      this.env.source,
      () => emu[PCI_INTERRUPT_LINE]!,
      () => void proc.ioctl(handle.fd, VFIO_DEVICE_SET_IRQS, this.unmaskBuf),
      this.env.tracer,
    );
    try {
      handle.setIrqsEventfd(VFIO_PCI_INTX_IRQ_INDEX, 0, [fd]);
    } catch (e) {
      line.dispose();
      proc.close(fd);
      throw e;
    }
    this.intx = line;
    this.intxFd = fd;
    this.current = "intx";
    if (this.env.tracer.enabled) {
      this.env.tracer.emit("vmm.intx.enable", {
        vm: this.env.vm,
        device: this.env.device,
        line: emu[PCI_INTERRUPT_LINE]!,
      });
    }
  }

  private disableIntx(): void {
    if (this.intx === undefined) return;
    try {
      this.env.handle.setIrqsNone(VFIO_PCI_INTX_IRQ_INDEX, 0, 0, "trigger");
    } catch (e) {
      if (!isKernelError(e)) throw e;
      this.env.warn(`disabling INTx failed (${e.code}): ${e.message}`);
    }
    this.intx.dispose();
    this.env.proc.close(this.intxFd);
    this.intx = undefined;
    this.intxFd = -1;
    if (this.current === "intx") this.current = "none";
  }

  // ---- MSI ---------------------------------------------------------------------------------------------------------

  /** vfio_msi_enable: INTx off, one eventfd per vector the guest enabled (Queue Size), SET_IRQS MSI. */
  private msiEnable(): void {
    const { emu, msiCap } = this.layout;
    const { proc } = this.env;
    const flags = emu[msiCap + PCI_MSI_FLAGS]!;
    const n = Math.max(1, Math.min(1 << ((flags & PCI_MSI_FLAGS_QSIZE) >> 4), this.layout.msiMaxVectors));
    this.disableIntx();
    const fds: number[] = [];
    const irqs: EventfdIrq[] = [];
    for (let i = 0; i < n; i++) {
      const fd = proc.eventfd();
      fds.push(fd);
      const vector = i;
      irqs.push(new EventfdIrq(proc.eventfdOf(fd), () => this.env.source.inject(this.msiVector(vector), "msi")));
    }
    try {
      this.env.handle.setIrqsEventfd(VFIO_PCI_MSI_IRQ_INDEX, 0, fds);
    } catch (e) {
      for (const irq of irqs) irq.dispose();
      for (const fd of fds) proc.close(fd);
      emu[msiCap + PCI_MSI_FLAGS]! &= ~PCI_MSI_FLAGS_ENABLE;
      this.enableIntx(); // QEMU falls back to INTx
      throw e;
    }
    this.msiIrqs = irqs;
    this.msiFds = fds;
    this.current = "msi";
    if (this.env.tracer.enabled) {
      this.env.tracer.emit("vmm.msi.enable", {
        vm: this.env.vm,
        device: this.env.device,
        vectors: n,
        data: this.msiVector(0),
      });
    }
  }

  private msiDisable(reenableIntx: boolean): void {
    if (this.msiFds.length === 0) return;
    try {
      this.env.handle.setIrqsNone(VFIO_PCI_MSI_IRQ_INDEX, 0, 0, "trigger");
    } catch (e) {
      if (!isKernelError(e)) throw e;
      this.env.warn(`disabling MSI failed (${e.code}): ${e.message}`);
    }
    for (const irq of this.msiIrqs) irq.dispose();
    for (const fd of this.msiFds) this.env.proc.close(fd);
    this.msiIrqs = [];
    this.msiFds = [];
    this.current = "none";
    if (this.env.tracer.enabled) this.env.tracer.emit("vmm.msi.disable", { vm: this.env.vm, device: this.env.device });
    if (reenableIntx) this.enableIntx();
  }

  /** The vector MSI vector `i` delivers: the guest's data with the vector number in its low bits. */
  private msiVector(i: number): number {
    const { emu, msiDataOffset } = this.layout;
    const data = emu[msiDataOffset]! | (emu[msiDataOffset + 1]! << 8);
    const n = this.msiFds.length > 0 ? this.msiFds.length : 1;
    return (data & ~(n - 1)) | i;
  }
}

function setEmu32(emu: Uint8Array, off: number, v: number): void {
  for (let i = 0; i < 4; i++) emu[off + i] = (v >>> (8 * i)) & 0xff;
}
