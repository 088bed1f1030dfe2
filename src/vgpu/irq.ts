/**
 * A vGPU's virtual interrupts (GVT-g interrupt.c, gen8 flavour) and their delivery to the VMM through VFIO
 * (kvmgt's INTx/MSI eventfds).
 *
 * Registers (the guest's own, never the physical GPU's): GEN8_MASTER_IRQ (bit 31 enable, read-only pending bits
 * GEN8_GT_RCS_IRQ / GEN8_GT_BCS_IRQ), and GT bank 0: ISR (read-only), IMR, IIR (write 1 to clear), IER. An event
 * (a user interrupt from the guest's command stream, or the command scanner's master error) sets its ISR bit and,
 * unless masked in IMR, its IIR bit; the master's pending bits are IIR & IER per engine field. Whenever an event
 * arrives, or the guest writes the master, IMR or IER, and the master is enabled with something pending, one
 * interrupt is injected (as GVT-g's check_pending_irq): by MSI when the guest enabled MSI in its virtual config
 * space, else by INTx unless the guest set INTx Disable in its command register.
 *
 * VFIO side (VFIO_DEVICE_SET_IRQS, vfio-pci semantics for a conventional PCI device): INTx (1 vector; EVENTFD,
 * MASKABLE, AUTOMASKED: delivering masks it until the user unmasks; unmasking with an interrupt still pending
 * delivers again), MSI (1 vector, NORESIZE; mask/unmask ENOTTY), MSI-X (count 0), ERR (not offered: no PCI Express
 * capability, EINVAL), REQ (1 vector, never raised by the vendor driver: the mdev core refuses to remove an open
 * device). DATA_NONE/BOOL triggers signal the eventfd (loopback testing); count 0 with DATA_NONE releases it.
 *
 * Not modelled: display and PCH interrupt banks, GT banks 1-3, MSI masking. Invariant: the master's pending bits
 * always equal the per-engine fields of IIR & IER.
 */
import { defineTraceEvents, Errno, KernelError, type Tracer } from "../core/index.ts";
import {
  ENGINE_IRQ_SHIFT,
  type EngineId,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_GT_ISR0,
  GEN8_GT_RCS_IRQ,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
} from "../gpu/index.ts";
import type { PciConfigSpace } from "../host/index.ts";
import {
  type IrqTrigger,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_REQ_IRQ_INDEX,
  type VfioIrqInfo,
  type VfioIrqSet,
  vfioPciIrqName,
} from "../vfio/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    /** `event`: what raised it; `delivered`: "msi", "intx", or why nothing was ("master disabled", ...). */
    "vgpu.virq": { vgpu: number; event: string; iir: number; master: number; delivered: string };
    "vgpu.irq_config": { vgpu: number; index: string; change: string };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.virq": "vgpu{vgpu}: {event}: IIR {iir}, master {master}: {delivered}",
  "vgpu.irq_config": "vgpu{vgpu}: {index} {change}",
});

const FIELD_MASK = 0xffff;
/** GEN8 GT IMR's reset value: everything masked. */
const IMR_RESET = 0xffff_ffff;

/** The guest's interrupt registers and the VMM's eventfds for one vGPU. */
export class VirtualIrq {
  private master = 0;
  private isr = 0;
  private imr = IMR_RESET;
  private iir = 0;
  private ier = 0;
  private intxTrigger: IrqTrigger | null = null;
  private msiTrigger: IrqTrigger | null = null;
  private reqTrigger: IrqTrigger | null = null;
  private intxMasked = false;
  /** Interrupts delivered to the VMM / events that found nothing to deliver to. */
  delivered = 0;
  suppressed = 0;

  constructor(
    private readonly vgpuId: number,
    private readonly config: PciConfigSpace,
    private readonly tracer: Tracer,
  ) {}

  // ---- events --------------------------------------------------------------------------------------------------

  /** An engine event: `bits` within the engine's 16-bit field of GT bank 0 (GT_RENDER_USER_INTERRUPT, ...). */
  raise(engine: EngineId, bits: number, event: string): void {
    const b = (bits << ENGINE_IRQ_SHIFT[engine]) >>> 0;
    this.isr = (this.isr | b) >>> 0;
    const latched = (b & ~this.imr) >>> 0;
    this.iir = (this.iir | latched) >>> 0;
    this.updateMaster();
    if (latched === 0) {
      this.suppressed++;
      if (this.tracer.enabled) this.trace(event, "masked in IMR");
      return;
    }
    this.check(event, true);
  }

  // ---- MMIO ----------------------------------------------------------------------------------------------------

  /** Whether `offset` is one of the interrupt registers. */
  static handles(offset: number): boolean {
    return (
      offset === GEN8_MASTER_IRQ ||
      offset === GEN8_GT_ISR0 ||
      offset === GEN8_GT_IMR0 ||
      offset === GEN8_GT_IIR0 ||
      offset === GEN8_GT_IER0
    );
  }

  read(offset: number): number {
    switch (offset) {
      case GEN8_MASTER_IRQ:
        return this.master;
      case GEN8_GT_ISR0:
        return this.isr;
      case GEN8_GT_IMR0:
        return this.imr;
      case GEN8_GT_IIR0:
        return this.iir;
      case GEN8_GT_IER0:
        return this.ier;
      default:
        return 0;
    }
  }

  /** A guest write of `value` to the bytes of `mask` in register `offset`. Returns false if the register is read-only. */
  write(offset: number, value: number, mask: number): boolean {
    const merge = (old: number) => ((old & ~mask) | (value & mask)) >>> 0;
    switch (offset) {
      case GEN8_MASTER_IRQ:
        // Only the enable bit is the guest's; the pending bits are computed.
        this.master = ((this.master & ~GEN8_MASTER_IRQ_CONTROL) | (merge(this.master) & GEN8_MASTER_IRQ_CONTROL)) >>> 0;
        this.check("master written");
        return true;
      case GEN8_GT_IMR0:
        this.imr = merge(this.imr);
        this.check("IMR written");
        return true;
      case GEN8_GT_IER0:
        this.ier = merge(this.ier);
        this.updateMaster();
        this.check("IER written");
        return true;
      case GEN8_GT_IIR0:
        this.iir = (this.iir & ~(value & mask)) >>> 0;
        this.isr = (this.isr & ~(value & mask)) >>> 0;
        this.updateMaster();
        return true;
      default:
        return false;
    }
  }

  // ---- VFIO ----------------------------------------------------------------------------------------------------

  info(index: number): VfioIrqInfo {
    switch (index) {
      case VFIO_PCI_INTX_IRQ_INDEX:
        return { index, count: 1, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED };
      case VFIO_PCI_MSI_IRQ_INDEX:
        return { index, count: 1, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE };
      case VFIO_PCI_MSIX_IRQ_INDEX:
        return { index, count: 0, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE };
      case VFIO_PCI_REQ_IRQ_INDEX:
        return { index, count: 1, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE };
      case VFIO_PCI_ERR_IRQ_INDEX:
        throw new KernelError(
          Errno.EINVAL,
          `vgpu${this.vgpuId}: the ERR irq index exists only for PCI Express devices; the vGPU is conventional PCI`,
        );
      default:
        throw new KernelError(
          Errno.EINVAL,
          `vgpu${this.vgpuId}: irq index ${index} is out of range: vfio-pci devices have ${VFIO_PCI_NUM_IRQS}`,
        );
    }
  }

  setIrqs(set: VfioIrqSet): void {
    const { index, action, data } = set;
    if (index === VFIO_PCI_INTX_IRQ_INDEX && (action === "mask" || action === "unmask")) {
      if (data.kind === "eventfd") {
        throw new KernelError(Errno.ENOTTY, `vgpu${this.vgpuId}: INTx ${action} by eventfd is not supported`);
      }
      if (set.count === 0 || (data.kind === "bool" && data.values[0] !== true)) return;
      if (action === "mask") {
        this.intxMasked = true;
        this.traceConfig(index, "masked");
      } else {
        this.intxMasked = false;
        this.traceConfig(index, "unmasked");
        if (this.pending() && this.intxSelected()) this.check("INTx unmasked with an interrupt pending");
      }
      return;
    }
    if (action !== "trigger") {
      throw new KernelError(
        Errno.ENOTTY,
        `vgpu${this.vgpuId}: ${action} of ${vfioPciIrqName(index)} is not supported (only INTx can be masked)`,
      );
    }
    if (index !== VFIO_PCI_INTX_IRQ_INDEX && index !== VFIO_PCI_MSI_IRQ_INDEX && index !== VFIO_PCI_REQ_IRQ_INDEX) {
      throw new KernelError(Errno.EINVAL, `vgpu${this.vgpuId}: ${vfioPciIrqName(index)} has no vectors to trigger`);
    }
    if (data.kind === "eventfd") {
      const t = data.triggers[0] ?? null;
      this.setTrigger(index, t);
      this.traceConfig(index, t === null ? "eventfd released" : "eventfd set");
      return;
    }
    if (set.count === 0) {
      if (data.kind === "none") {
        this.setTrigger(index, null);
        this.traceConfig(index, "disabled");
      }
      return;
    }
    // Loopback: DATA_NONE, or DATA_BOOL true, signals the eventfd as if the device had fired.
    if (data.kind === "none" || data.values[0] === true) this.getTrigger(index)?.signal();
  }

  /** close_device: the user's eventfds go; nothing is delivered until a new session sets them. */
  releaseTriggers(): void {
    this.intxTrigger = null;
    this.msiTrigger = null;
    this.reqTrigger = null;
    this.intxMasked = false;
  }

  /** Registers back to power-on values (eventfds belong to the user session and stay). */
  reset(): void {
    this.master = 0;
    this.isr = 0;
    this.imr = IMR_RESET;
    this.iir = 0;
    this.ier = 0;
    this.intxMasked = false;
  }

  /** For tests and the dashboard. */
  state(): { master: number; isr: number; imr: number; iir: number; ier: number; intxMasked: boolean } {
    return {
      master: this.master,
      isr: this.isr,
      imr: this.imr,
      iir: this.iir,
      ier: this.ier,
      intxMasked: this.intxMasked,
    };
  }

  // ---- internals -------------------------------------------------------------------------------------------------

  private updateMaster(): void {
    const active = this.iir & this.ier;
    let pending = 0;
    if (((active >>> ENGINE_IRQ_SHIFT.rcs) & FIELD_MASK) !== 0) pending |= GEN8_GT_RCS_IRQ;
    if (((active >>> ENGINE_IRQ_SHIFT.bcs) & FIELD_MASK) !== 0) pending |= GEN8_GT_BCS_IRQ;
    this.master = ((this.master & GEN8_MASTER_IRQ_CONTROL) | pending) >>> 0;
  }

  private pending(): boolean {
    return (this.master & ~GEN8_MASTER_IRQ_CONTROL) !== 0;
  }

  private intxSelected(): boolean {
    return !this.config.msi().enabled;
  }

  /** GVT-g's check_pending_irq: inject once if the master is enabled and something is pending. */
  private check(event: string, fromEvent = false): void {
    this.updateMaster();
    if ((this.master & GEN8_MASTER_IRQ_CONTROL) === 0) {
      if (this.tracer.enabled && fromEvent) this.trace(event, "master disabled");
      return;
    }
    if (!this.pending()) return;
    let delivered: string;
    if (this.config.msi().enabled) {
      if (this.msiTrigger !== null) {
        this.delivered++;
        delivered = "msi";
        this.msiTrigger.signal();
      } else {
        this.suppressed++;
        delivered = "MSI enabled but no eventfd";
      }
    } else if (this.config.intxDisabled()) {
      this.suppressed++;
      delivered = "INTx disabled in the command register";
    } else if (this.intxTrigger === null) {
      this.suppressed++;
      delivered = "no INTx eventfd";
    } else if (this.intxMasked) {
      this.suppressed++;
      delivered = "INTx masked (awaiting unmask)";
    } else {
      this.intxMasked = true;
      this.delivered++;
      delivered = "intx";
      this.intxTrigger.signal();
    }
    if (this.tracer.enabled) this.trace(event, delivered);
  }

  private trace(event: string, delivered: string): void {
    this.tracer.emit("vgpu.virq", { vgpu: this.vgpuId, event, iir: this.iir, master: this.master, delivered });
  }

  private traceConfig(index: number, change: string): void {
    if (this.tracer.enabled) {
      this.tracer.emit("vgpu.irq_config", { vgpu: this.vgpuId, index: vfioPciIrqName(index), change });
    }
  }

  private getTrigger(index: number): IrqTrigger | null {
    return index === VFIO_PCI_INTX_IRQ_INDEX
      ? this.intxTrigger
      : index === VFIO_PCI_MSI_IRQ_INDEX
        ? this.msiTrigger
        : this.reqTrigger;
  }

  private setTrigger(index: number, t: IrqTrigger | null): void {
    if (index === VFIO_PCI_INTX_IRQ_INDEX) {
      this.intxTrigger = t;
      this.intxMasked = false;
    } else if (index === VFIO_PCI_MSI_IRQ_INDEX) this.msiTrigger = t;
    else this.reqTrigger = t;
  }
}
