/**
 * A vGPU's virtual interrupts (GVT-g interrupt.c, gen8 flavour) and their delivery to the VMM through VFIO (kvmgt's
 * MSI eventfd).
 *
 * Registers (the guest's own, never the physical GPU's): GEN8_MASTER_IRQ (bit 31 CONTROL, the guest's; the other bits
 * read-only pending bits) and the four GT banks GEN8_GT_ISR/IMR/IIR/IER(n) at 0x44300 + 0x10 n: ISR read-only, IMR
 * and IER plain, IIR write 1 to clear. An engine event (a user interrupt, a context switch, the command scanner's
 * master error) sets its ISR bit and, unless masked in IMR, its IIR bit (GVT-g's propagate_event latches only
 * unmasked events). Each IIR bit queues a second event, as the hardware's IIRs do (i915 clears IIRs twice at reset
 * because "IIR can theoretically queue up two events"): an event whose bit is already set is queued, and the guest's
 * write-1-to-clear of that bit sets it again at once from the queue (and re-checks what to inject). Without the queue
 * a context switch that lands between i915's IIR read and its clear is lost, its CSB entry never processed, and the
 * guest's GT never idles (seen with igt in a real guest). GVT-g's IIR handler clears only. The master's pending bits are the OR of IIR & IER per field, by GVT-g's gen8_irq_map: bank 0 bits
 * 15..0 -> bit 0 (RCS), 31..16 -> bit 1 (BCS), bank 1 15..0 -> bit 2 (VCS0), 31..16 -> bit 3 (VCS1), bank 2 -> bit 4
 * (PM), bank 3 15..0 -> bit 6 (VECS). Whenever an event arrives, or the guest writes the master, an IMR or an IER,
 * and the master's CONTROL is set with something pending, one interrupt is injected (GVT-g's check_pending_irq).
 *
 * Delivery, as GVT-g's inject_virtual_interrupt: **by MSI only**, and only when the guest enabled MSI with a single
 * message in its virtual config space; otherwise nothing is injected (the event stays latched in IIR, counted as
 * suppressed and traced with the reason). The vGPU still declares INTA# and accepts the VMM's INTx eventfd, mask and
 * unmask (kvmgt's INTx handlers are stubs too), but never signals it.
 *
 * VFIO side (VFIO_DEVICE_SET_IRQS, vfio-pci semantics for a conventional PCI device): INTx (1 vector; EVENTFD,
 * MASKABLE, AUTOMASKED), MSI (1 vector, NORESIZE; mask/unmask ENOTTY), MSI-X (count 0), ERR (not offered: no PCI
 * Express capability, EINVAL), REQ (1 vector, never raised by the vendor driver: the mdev core refuses to remove an
 * open device). DATA_NONE/BOOL triggers signal the eventfd (loopback testing); count 0 with DATA_NONE releases it.
 *
 * Not modelled here: display, PCU and PCH interrupt registers (mmio-table.ts keeps them as plain registers whose IIR
 * clears on write 1; the vGPU raises no such event), MSI masking. Invariant: the master's pending bits always equal
 * the map of IIR & IER.
 */
import { defineTraceEvents, Errno, KernelError, type Tracer } from "../core/index.ts";
import { GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL } from "../gpu/index.ts";
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
import { type VEngineId, vengine } from "./engines.ts";
import { GEN8_GT_BANKS, gen8GtIsr, IRQ_IER, IRQ_IIR, IRQ_IMR, IRQ_ISR } from "./gvt-regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    /** `event`: what raised it; `delivered`: "msi", or why nothing was ("master disabled", ...). */
    "vgpu.virq": { vgpu: number; event: string; iir: number; master: number; delivered: string };
    "vgpu.irq_config": { vgpu: number; index: string; change: string };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.virq": "vgpu{vgpu}: {event}: IIR {iir}, master {master}: {delivered}",
  "vgpu.irq_config": "vgpu{vgpu}: {index} {change}",
});

/** gen8_irq_map: which bits of which GT bank feed which master bit. */
export const GEN8_MASTER_MAP: readonly { readonly bank: number; readonly mask: number; readonly bit: number }[] = [
  { bank: 0, mask: 0x0000_ffff, bit: 0 },
  { bank: 0, mask: 0xffff_0000, bit: 1 },
  { bank: 1, mask: 0x0000_ffff, bit: 2 },
  { bank: 1, mask: 0xffff_0000, bit: 3 },
  { bank: 2, mask: 0x0000_ffff, bit: 4 },
  { bank: 3, mask: 0x0000_ffff, bit: 6 },
];

/** GEN8 GT IMR's reset value: everything masked. */
const IMR_RESET = 0xffff_ffff;

/** The guest's interrupt registers and the VMM's eventfds for one vGPU. */
export class VirtualIrq {
  private master = 0;
  private readonly isr = new Uint32Array(GEN8_GT_BANKS);
  private readonly imr = new Uint32Array(GEN8_GT_BANKS).fill(IMR_RESET);
  private readonly iir = new Uint32Array(GEN8_GT_BANKS);
  /** The second event of each IIR bit: latched while the bit was already set, re-latched when the guest clears it. */
  private readonly queued = new Uint32Array(GEN8_GT_BANKS);
  private readonly ier = new Uint32Array(GEN8_GT_BANKS);
  private intxTrigger: IrqTrigger | null = null;
  private msiTrigger: IrqTrigger | null = null;
  private reqTrigger: IrqTrigger | null = null;
  private intxMasked = false;
  /** Interrupts delivered to the VMM / events or checks that found nothing to deliver to. */
  delivered = 0;
  suppressed = 0;

  constructor(
    private readonly vgpuId: number,
    private readonly config: PciConfigSpace,
    private readonly tracer: Tracer,
  ) {}

  // ---- events --------------------------------------------------------------------------------------------------

  /** An engine event: `bits` within the engine's 16-bit field (GT_RENDER_USER_INTERRUPT, GT_CONTEXT_SWITCH...). */
  raise(engine: VEngineId, bits: number, event: string): void {
    const e = vengine(engine);
    const bank = e.irqBank;
    const b = (bits << e.irqShift) >>> 0;
    this.isr[bank] = (this.isr[bank]! | b) >>> 0;
    const latched = (b & ~this.imr[bank]!) >>> 0;
    this.queued[bank] = (this.queued[bank]! | (latched & this.iir[bank]!)) >>> 0;
    this.iir[bank] = (this.iir[bank]! | latched) >>> 0;
    this.updateMaster();
    if (latched === 0) {
      this.suppressed++;
      if (this.tracer.enabled) this.trace(event, bank, "masked in IMR");
      return;
    }
    this.check(event, bank, true);
  }

  // ---- MMIO ----------------------------------------------------------------------------------------------------

  /** Whether `offset` is one of the interrupt registers this class owns (the master and the GT banks). */
  static handles(offset: number): boolean {
    return offset === GEN8_MASTER_IRQ || bankOf(offset) >= 0;
  }

  read(offset: number): number {
    if (offset === GEN8_MASTER_IRQ) return this.master;
    const bank = bankOf(offset);
    if (bank < 0) return 0;
    switch (offset - gen8GtIsr(bank)) {
      case IRQ_ISR:
        return this.isr[bank]!;
      case IRQ_IMR:
        return this.imr[bank]!;
      case IRQ_IIR:
        return this.iir[bank]!;
      case IRQ_IER:
        return this.ier[bank]!;
      default:
        return 0;
    }
  }

  /** A guest write of `value` to the bytes of `mask` in register `offset`. Returns false if the register is read-only. */
  write(offset: number, value: number, mask: number): boolean {
    if (offset === GEN8_MASTER_IRQ) {
      // Only CONTROL is the guest's; the pending bits are computed.
      const control = (value & mask & GEN8_MASTER_IRQ_CONTROL) >>> 0;
      const keep = (this.master & GEN8_MASTER_IRQ_CONTROL & ~mask) >>> 0;
      this.master = ((this.master & ~GEN8_MASTER_IRQ_CONTROL) | keep | control) >>> 0;
      this.check("master written", -1);
      return true;
    }
    const bank = bankOf(offset);
    if (bank < 0) return false;
    const merge = (old: number) => ((old & ~mask) | (value & mask)) >>> 0;
    switch (offset - gen8GtIsr(bank)) {
      case IRQ_ISR:
        return false;
      case IRQ_IMR:
        this.imr[bank] = merge(this.imr[bank]!);
        this.check("IMR written", bank);
        return true;
      case IRQ_IIR: {
        const cleared = (value & mask) >>> 0;
        const again = (cleared & this.queued[bank]!) >>> 0;
        this.queued[bank] = (this.queued[bank]! & ~again) >>> 0;
        this.iir[bank] = ((this.iir[bank]! & ~cleared) | again) >>> 0;
        this.isr[bank] = (this.isr[bank]! & ~(cleared & ~again)) >>> 0;
        this.updateMaster();
        if (again !== 0) this.check("queued event re-latched", bank);
        return true;
      }
      case IRQ_IER:
        this.ier[bank] = merge(this.ier[bank]!);
        this.updateMaster();
        this.check("IER written", bank);
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
      this.intxMasked = action === "mask";
      this.traceConfig(index, action === "mask" ? "masked" : "unmasked");
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
    this.isr.fill(0);
    this.imr.fill(IMR_RESET);
    this.iir.fill(0);
    this.queued.fill(0);
    this.ier.fill(0);
    this.intxMasked = false;
  }

  /** For tests and the dashboard: the master and bank `bank` (default 0). */
  state(bank = 0): { master: number; isr: number; imr: number; iir: number; ier: number; intxMasked: boolean } {
    return {
      master: this.master,
      isr: this.isr[bank]!,
      imr: this.imr[bank]!,
      iir: this.iir[bank]!,
      ier: this.ier[bank]!,
      intxMasked: this.intxMasked,
    };
  }

  // ---- internals -------------------------------------------------------------------------------------------------

  private updateMaster(): void {
    let pending = 0;
    for (const m of GEN8_MASTER_MAP) {
      if ((this.iir[m.bank]! & this.ier[m.bank]! & m.mask) !== 0) pending |= 1 << m.bit;
    }
    this.master = ((this.master & GEN8_MASTER_IRQ_CONTROL) | pending) >>> 0;
  }

  /** GVT-g's check_pending_irq + inject_virtual_interrupt: one MSI if the master is enabled and something pends. */
  private check(event: string, bank: number, fromEvent = false): void {
    this.updateMaster();
    if ((this.master & GEN8_MASTER_IRQ_CONTROL) === 0) {
      if (this.tracer.enabled && fromEvent) this.trace(event, bank, "master disabled");
      return;
    }
    if ((this.master & ~GEN8_MASTER_IRQ_CONTROL) === 0) return;
    let delivered: string;
    const msi = this.config.msi();
    if (!msi.enabled) {
      this.suppressed++;
      delivered = "MSI disabled (the vGPU injects only MSI)";
    } else if (msi.vectors !== 1) {
      this.suppressed++;
      delivered = `MSI with ${msi.vectors} messages enabled (the vGPU sends a single message only)`;
    } else if (this.msiTrigger === null) {
      this.suppressed++;
      delivered = "MSI enabled but no eventfd";
    } else {
      this.delivered++;
      delivered = "msi";
      this.msiTrigger.signal();
    }
    if (this.tracer.enabled) this.trace(event, bank, delivered);
  }

  private trace(event: string, bank: number, delivered: string): void {
    const iir = bank >= 0 ? this.iir[bank]! : 0;
    this.tracer.emit("vgpu.virq", { vgpu: this.vgpuId, event, iir, master: this.master, delivered });
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

/** The GT bank whose ISR..IER block holds dword `offset`, or -1. */
function bankOf(offset: number): number {
  const rel = offset - gen8GtIsr(0);
  if (rel < 0 || rel >= 0x10 * GEN8_GT_BANKS || rel % 4 !== 0) return -1;
  return Math.floor(rel / 0x10);
}
