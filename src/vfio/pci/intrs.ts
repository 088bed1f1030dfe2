/**
 * vfio-pci interrupts (drivers/vfio/pci/vfio_pci_intrs.c): how a physical device's INTx and MSI reach the user's
 * eventfds, and what VFIO_DEVICE_SET_IRQS does for each of the five vfio-pci indices.
 *
 * - INTx (index 0): EVENTFD | MASKABLE | AUTOMASKED, count 1 if the (virtual) interrupt pin is set. When the device
 *   asserts its line, the handler masks it at the device (sets INTx Disable in the real command register, PCI 2.3
 *   masking) and signals the trigger; the line stays masked until the user unmasks through SET_IRQS
 *   (ACTION_UNMASK, or an unmask eventfd as KVM's resamplefd). Unmasking while the device still asserts (the
 *   Interrupt Status bit of its status register, PCI 2.3) keeps it masked and signals again instead, as Linux does;
 *   a device model that does not keep that bit is unmasked regardless (PciBus delivers only level changes, so a
 *   line still high after unmasking would then go unnoticed until it drops and rises again).
 *   The user's INTx Disable bit in config space masks and unmasks too (`virqDisabled`).
 * - MSI (index 1): EVENTFD | NORESIZE, count from the device's Multiple Message Capable field. Assigning eventfds
 *   enables MSI on the device for start+count vectors (the host programs the real MSI address/data, sets INTx
 *   Disable as pci_intx_for_msi does), and `msiQmax` becomes log2 of that for the config space's queue-size cap.
 *   MASK/UNMASK are ENOTTY (Linux: "Need masking support exported").
 * - MSI-X (index 2): EVENTFD | NORESIZE (no dynamic MSI-X), count = the table size from the MSI-X capability, 0
 *   without one. Assigning eventfds enables MSI-X on the device for start+count vectors as the host's
 *   pci_alloc_irq_vectors does: Enable and Function Mask set, every entry masked, the host's message (address, data)
 *   written into the allocated entries, Function Mask cleared, INTx Disable set. A vector given an eventfd has its
 *   entry's message rewritten and is unmasked (request_irq), so a message the device left pending there arrives on
 *   the new eventfd; -1 de-assigns it and masks the entry again (free_irq), so the device's messages for it wait in
 *   the PBA. The device's `msix(vector)` reaches the vector's eventfd. DATA_NONE with count 0 disables: every vector
 *   released, entries masked, MSI-X Enable and INTx Disable cleared (pci_free_irq_vectors). The user never touches the
 *   physical table or capability: config.ts shows the capability read-only from the hardware, rdwr.ts hides the table.
 * - MSI and MSI-X share Linux's rules: eventfds for vectors [start, start+count) may be (re)assigned only inside the
 *   block allocated when the index was enabled (EINVAL beyond it, and the whole call undone when enabling);
 *   DATA_NONE / DATA_BOOL with count > 0 signal the assigned eventfds (loopback); MASK/UNMASK are ENOTTY.
 * - ERR (index 3): count 1 for PCI Express devices; for conventional PCI, irqInfo is EINVAL and SET_IRQS ENOTTY.
 * - REQ (index 4): count 1; signalled when the host asks the user to release the device (driver unbind).
 * ERR and REQ take a single eventfd; DATA_NONE / DATA_BOOL signal it (loopback testing), DATA_NONE with count 0
 * releases it.
 *
 * Triggers arrive resolved (vfio-core turned the fds into `IrqTrigger`s). An unmask eventfd must be an `EventFd`
 * (something that can be listened to); another trigger there is EINVAL.
 *
 * Not modelled: shared interrupt lines, devices without DisINTx masking (Linux's exclusive-IRQ fallback), irq bypass,
 * dynamic MSI-X, the host's irq domain (the host message is a fixed address and data = base + vector).
 */
import { defineTraceEvents, Errno, KernelError, type Tracer } from "../../core/index.ts";
import {
  type Bdf,
  EventFd,
  type MsixTable,
  PCI_CAP_ID_EXP,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_MSI_ADDRESS_HI,
  PCI_MSI_ADDRESS_LO,
  PCI_MSI_DATA_64,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  PCI_MSI_FLAGS_QMASK,
  PCI_MSI_FLAGS_QSIZE,
  PCI_MSIX_ENTRY_CTRL_MASKBIT,
  PCI_MSIX_ENTRY_DATA,
  PCI_MSIX_ENTRY_LOWER_ADDR,
  PCI_MSIX_ENTRY_SIZE,
  PCI_MSIX_ENTRY_UPPER_ADDR,
  PCI_MSIX_ENTRY_VECTOR_CTRL,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PCI_STATUS,
  PCI_STATUS_INTERRUPT,
  type PciConfigSpace,
  type PciIrqHandler,
} from "../../host/index.ts";
import type { IrqTrigger, VfioIrqInfo, VfioIrqSet } from "../driver.ts";
import {
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
  vfioPciIrqName,
} from "../uapi/index.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio_pci.intx.enable": { bdf: string; masked: boolean };
    "vfio_pci.intx.disable": { bdf: string };
    "vfio_pci.intx.mask": { bdf: string; source: string };
    "vfio_pci.intx.unmask": { bdf: string; stillPending: boolean };
    "vfio_pci.msi.enable": { bdf: string; vectors: number };
    "vfio_pci.msi.disable": { bdf: string };
    "vfio_pci.msix.enable": { bdf: string; vectors: number };
    "vfio_pci.msix.disable": { bdf: string };
    "vfio_pci.trigger": { bdf: string; irq: string; vector: number; assigned: boolean };
    "vfio_pci.signal": { bdf: string; irq: string; vector: number };
  }
}
defineTraceEvents("vfio", {
  "vfio_pci.intx.enable": "{bdf}: INTx enabled (masked {masked})",
  "vfio_pci.intx.disable": "{bdf}: INTx disabled",
  "vfio_pci.intx.mask": "{bdf}: INTx masked ({source})",
  "vfio_pci.intx.unmask": "{bdf}: INTx unmask requested, line still asserted: {stillPending}",
  "vfio_pci.msi.enable": "{bdf}: MSI enabled with {vectors} vector(s)",
  "vfio_pci.msi.disable": "{bdf}: MSI disabled",
  "vfio_pci.msix.enable": "{bdf}: MSI-X enabled with {vectors} vector(s)",
  "vfio_pci.msix.disable": "{bdf}: MSI-X disabled",
  "vfio_pci.trigger": "{bdf}: {irq} vector {vector} eventfd {assigned}",
  "vfio_pci.signal": "{bdf}: {irq} vector {vector} signalled to the user",
});

/** The host's MSI message for vfio's vectors: x86 address of APIC 0, data = host vector base (multi-message adds). */
const HOST_MSI_ADDRESS = 0xfee00000;
const HOST_MSI_DATA = 0x40;

const IRQ_NONE = VFIO_PCI_NUM_IRQS;

export interface VfioPciIrqsOptions {
  readonly bdf: Bdf;
  readonly config: PciConfigSpace;
  readonly tracer: Tracer;
  /** The interrupt pin the user sees (virtual config while open, else the device's). */
  readonly interruptPin: () => number;
  /** The device's MSI-X table (PciDeviceModel.msixTable), which vfio-pci programs as the host's MSI code would. */
  readonly msixTable?: MsixTable | undefined;
}

/** A trigger that can be listened to (an unmask eventfd). */
function isListenable(t: IrqTrigger): t is EventFd {
  return t instanceof EventFd;
}

export class VfioPciIrqs {
  /** vdev->irq_type: which index delivers interrupts now (VFIO_PCI_NUM_IRQS = none). */
  irqType: number = IRQ_NONE;
  /** vdev->msi_qmax */
  msiQmax = 0;
  /** vdev->virq_disabled: the user's INTx Disable bit. */
  virqDisabled = false;
  /** Interrupts delivered to the user, per index (for reports). */
  readonly signalled = new Float64Array(VFIO_PCI_NUM_IRQS);
  /** What the PCI bus delivers to while the device is bound to vfio-pci. */
  readonly handler: PciIrqHandler;

  private readonly bdf: Bdf;
  private readonly hw: PciConfigSpace;
  private readonly tracer: Tracer;
  private readonly interruptPin: () => number;
  private intxTrigger: IrqTrigger | null = null;
  private intxMasked = false;
  private intxUnmaskOff: (() => void) | undefined;
  private readonly msixTable: MsixTable | undefined;
  /** Per-vector eventfds of the enabled MSI or MSI-X block (vdev->ctx); its length is vdev->num_ctx. */
  private msiTriggers: (IrqTrigger | null)[] = [];
  private errTrigger: IrqTrigger | null = null;
  private reqTrigger: IrqTrigger | null = null;

  constructor(opts: VfioPciIrqsOptions) {
    this.bdf = opts.bdf;
    this.hw = opts.config;
    this.tracer = opts.tracer;
    this.interruptPin = opts.interruptPin;
    this.msixTable = opts.msixTable;
    this.handler = {
      intx: (level) => this.intxHandler(level),
      msi: (vector) => this.msiHandler(vector),
      msix: (vector) => this.msixHandler(vector),
    };
  }

  get isPcie(): boolean {
    return this.hw.findCapability(PCI_CAP_ID_EXP) !== 0;
  }

  /** Whether INTx is masked at the device by vfio (ctx->masked). */
  get intxIsMasked(): boolean {
    return this.irqType === VFIO_PCI_INTX_IRQ_INDEX && this.intxMasked;
  }

  // ---- VFIO_DEVICE_GET_IRQ_INFO -----------------------------------------------------------------------------------

  /** vfio_pci_get_irq_count */
  count(index: number): number {
    switch (index) {
      case VFIO_PCI_INTX_IRQ_INDEX:
        return this.interruptPin() !== 0 ? 1 : 0;
      case VFIO_PCI_MSI_IRQ_INDEX: {
        const cap = this.hw.msiCap;
        if (cap === 0) return 0;
        return 1 << ((this.hw.read(cap + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_QMASK) >> 1);
      }
      case VFIO_PCI_MSIX_IRQ_INDEX:
        return this.hw.msixCap === 0 ? 0 : this.hw.msix().vectors;
      case VFIO_PCI_ERR_IRQ_INDEX:
        return this.isPcie ? 1 : 0;
      case VFIO_PCI_REQ_IRQ_INDEX:
        return 1;
      default:
        return 0;
    }
  }

  /** vfio_pci_ioctl_get_irq_info */
  info(index: number): VfioIrqInfo {
    if (!Number.isInteger(index) || index < 0 || index >= VFIO_PCI_NUM_IRQS) {
      throw new KernelError(Errno.EINVAL, `irq index ${index} is out of range: vfio-pci has ${VFIO_PCI_NUM_IRQS}`);
    }
    if (index === VFIO_PCI_ERR_IRQ_INDEX && !this.isPcie) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.bdf} is a conventional PCI device: the ERR irq index exists only for PCI Express devices`,
      );
    }
    let flags = VFIO_IRQ_INFO_EVENTFD;
    if (index === VFIO_PCI_INTX_IRQ_INDEX) flags |= VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
    else flags |= VFIO_IRQ_INFO_NORESIZE; // MSI-X too: no dynamic MSI-X allocation in the model
    return { index, flags, count: this.count(index) };
  }

  // ---- VFIO_DEVICE_SET_IRQS (vfio_pci_set_irqs_ioctl) -------------------------------------------------------------

  set(s: VfioIrqSet): void {
    switch (s.index) {
      case VFIO_PCI_INTX_IRQ_INDEX:
        if (s.action === "mask") this.setIntxMask(s);
        else if (s.action === "unmask") this.setIntxUnmask(s);
        else this.setIntxTrigger(s);
        return;
      case VFIO_PCI_MSI_IRQ_INDEX:
      case VFIO_PCI_MSIX_IRQ_INDEX:
        if (s.action === "trigger") {
          this.setMsiTrigger(s);
          return;
        }
        break;
      case VFIO_PCI_ERR_IRQ_INDEX:
        if (s.action === "trigger" && this.isPcie) {
          this.errTrigger = this.setSingle(this.errTrigger, s);
          return;
        }
        break;
      case VFIO_PCI_REQ_IRQ_INDEX:
        if (s.action === "trigger") {
          this.reqTrigger = this.setSingle(this.reqTrigger, s);
          return;
        }
        break;
    }
    throw new KernelError(
      Errno.ENOTTY,
      `${this.bdf}: ACTION_${s.action.toUpperCase()} is not supported on irq index ${vfioPciIrqName(s.index)}`,
    );
  }

  /** vfio_pci_core_disable's interrupt part: tear down whatever is enabled, drop ERR/REQ triggers. */
  disableAll(): void {
    if (this.irqType === VFIO_PCI_INTX_IRQ_INDEX) this.intxDisable();
    else if (this.irqType === VFIO_PCI_MSI_IRQ_INDEX) this.msiDisable(false);
    else if (this.irqType === VFIO_PCI_MSIX_IRQ_INDEX) this.msiDisable(true);
    this.virqDisabled = false;
    this.errTrigger = null;
    this.reqTrigger = null;
  }

  /** vfio_pci_core_request: asks the user to release the device; true if a REQ eventfd was there to signal. */
  request(): boolean {
    if (this.reqTrigger === null) return false;
    this.signal(this.reqTrigger, VFIO_PCI_REQ_IRQ_INDEX, 0);
    return true;
  }

  /** An AER error was detected (vfio_pci_core_aer_err_detected): signals the ERR eventfd if any. */
  errorDetected(): boolean {
    if (this.errTrigger === null) return false;
    this.signal(this.errTrigger, VFIO_PCI_ERR_IRQ_INDEX, 0);
    return true;
  }

  // ---- INTx -------------------------------------------------------------------------------------------------------

  /** vfio_pci_intx_mask (from SET_IRQS or the virtual INTx Disable bit). Returns whether the mask state changed. */
  intxMask(source = "user"): boolean {
    if (this.irqType !== VFIO_PCI_INTX_IRQ_INDEX) {
      // Not using INTx: the physical bit follows the virtual one.
      this.setDisIntx(true);
      return false;
    }
    if (this.intxMasked) return false;
    this.setDisIntx(true);
    this.intxMasked = true;
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.intx.mask", { bdf: this.bdf, source });
    return true;
  }

  /** vfio_pci_intx_unmask: unmask, or signal again if the device still asserts its line. */
  intxUnmask(): void {
    if (this.intxUnmaskHandler() > 0) this.sendIntx();
  }

  private intxHandler(level: boolean): void {
    if (this.irqType !== VFIO_PCI_INTX_IRQ_INDEX) return;
    // pci_check_and_mask_intx: only if our device asserts (the line is not shared here, so the bus's word that it
    // went high is as good as the status bit), and masking at the device.
    if (!this.intxMasked && (level || this.intxPending())) {
      this.setDisIntx(true);
      this.intxMasked = true;
      if (this.tracer.enabled) this.tracer.emit("vfio_pci.intx.mask", { bdf: this.bdf, source: "interrupt" });
      this.sendIntx();
    }
  }

  /** vfio_pci_intx_unmask_handler: returns 1 when the interrupt is still pending (stay masked, signal again). */
  private intxUnmaskHandler(): number {
    if (this.irqType !== VFIO_PCI_INTX_IRQ_INDEX) {
      this.setDisIntx(false);
      return 0;
    }
    let ret = 0;
    if (this.intxMasked && !this.virqDisabled) {
      // pci_check_and_unmask_intx: refuses while the device asserts.
      if (this.intxPending()) ret = 1;
      else this.setDisIntx(false);
      this.intxMasked = ret > 0;
      if (this.tracer.enabled) this.tracer.emit("vfio_pci.intx.unmask", { bdf: this.bdf, stillPending: ret > 0 });
    }
    return ret;
  }

  private sendIntx(): void {
    if (this.irqType === VFIO_PCI_INTX_IRQ_INDEX && !this.virqDisabled && this.intxTrigger !== null) {
      this.signal(this.intxTrigger, VFIO_PCI_INTX_IRQ_INDEX, 0);
    }
  }

  private intxEnable(trigger: IrqTrigger | null): void {
    if (this.irqType !== IRQ_NONE) {
      throw new KernelError(Errno.EINVAL, `${this.bdf}: cannot enable INTx while ${this.irqTypeName()} is enabled`);
    }
    if (this.interruptPin() === 0) throw new KernelError(Errno.ENODEV, `${this.bdf} has no INTx pin`);
    this.intxTrigger = trigger;
    this.intxMasked = this.virqDisabled;
    this.setDisIntx(this.intxMasked);
    this.irqType = VFIO_PCI_INTX_IRQ_INDEX;
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.intx.enable", { bdf: this.bdf, masked: this.intxMasked });
    // A level-triggered line already asserted fires as soon as the handler is installed (request_irq).
    this.intxHandler(false);
  }

  private intxDisable(): void {
    this.intxUnmaskOff?.();
    this.intxUnmaskOff = undefined;
    this.intxTrigger = null;
    this.intxMasked = false;
    this.irqType = IRQ_NONE;
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.intx.disable", { bdf: this.bdf });
  }

  private setIntxTrigger(s: VfioIrqSet): void {
    const isIntx = this.irqType === VFIO_PCI_INTX_IRQ_INDEX;
    if (isIntx && s.count === 0 && s.data.kind === "none") {
      this.intxDisable();
      return;
    }
    if (!(isIntx || this.irqType === IRQ_NONE) || s.start !== 0 || s.count !== 1) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.bdf}: INTx trigger needs start 0 and count 1 while INTx or nothing is enabled (now ${this.irqTypeName()})`,
      );
    }
    if (s.data.kind === "eventfd") {
      const trigger = s.data.triggers[0] ?? null;
      if (isIntx) {
        this.intxTrigger = trigger;
        if (this.tracer.enabled) {
          this.tracer.emit("vfio_pci.trigger", { bdf: this.bdf, irq: "INTX", vector: 0, assigned: trigger !== null });
        }
      } else {
        this.intxEnable(trigger);
      }
      return;
    }
    if (!isIntx) throw new KernelError(Errno.EINVAL, `${this.bdf}: INTx is not enabled: nothing to trigger`);
    if (s.data.kind === "none" || s.data.values[0] === true) this.sendIntx();
  }

  private setIntxMask(s: VfioIrqSet): void {
    this.checkIntxSingle(s, "mask");
    if (s.data.kind === "eventfd") {
      throw new KernelError(Errno.ENOTTY, `${this.bdf}: an INTx mask eventfd is not supported (Linux neither)`);
    }
    if (s.data.kind === "none" || s.data.values[0] === true) this.intxMask();
  }

  private setIntxUnmask(s: VfioIrqSet): void {
    this.checkIntxSingle(s, "unmask");
    if (s.data.kind === "none" || (s.data.kind === "bool" && s.data.values[0] === true)) {
      this.intxUnmask();
      return;
    }
    if (s.data.kind !== "eventfd") return;
    const t = s.data.triggers[0] ?? null;
    if (t === null) {
      this.intxUnmaskOff?.();
      this.intxUnmaskOff = undefined;
      return;
    }
    if (!isListenable(t)) {
      throw new KernelError(Errno.EINVAL, `${this.bdf}: the INTx unmask trigger must be an eventfd`);
    }
    if (this.intxUnmaskOff !== undefined) {
      throw new KernelError(Errno.EBUSY, `${this.bdf}: an INTx unmask eventfd is already registered`);
    }
    const fire = (): void => {
      if (t.counter > 0n) t.consume();
      if (this.intxUnmaskHandler() > 0) this.sendIntx();
    };
    this.intxUnmaskOff = t.onSignal(fire);
    // An event pending before registration is not lost (vfio_virqfd_enable checks).
    if (t.counter > 0n) fire();
  }

  private checkIntxSingle(s: VfioIrqSet, what: string): void {
    if (this.irqType !== VFIO_PCI_INTX_IRQ_INDEX || s.start !== 0 || s.count !== 1) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.bdf}: INTx ${what} needs INTx enabled, start 0 and count 1 (now ${this.irqTypeName()})`,
      );
    }
  }

  /** The device asserts INTx: the Interrupt Status bit of its status register. */
  private intxPending(): boolean {
    return (this.hw.bytes[PCI_STATUS]! & PCI_STATUS_INTERRUPT) !== 0;
  }

  /** pci_intx(pdev, !disable): the real INTx Disable bit. */
  private setDisIntx(disable: boolean): void {
    const cmd = this.hw.read(PCI_COMMAND, 2);
    const next = disable ? cmd | PCI_COMMAND_INTX_DISABLE : cmd & ~PCI_COMMAND_INTX_DISABLE;
    if (next !== cmd) this.hw.write(PCI_COMMAND, 2, next);
  }

  // ---- MSI and MSI-X ----------------------------------------------------------------------------------------------

  /** Vectors with an eventfd in the enabled MSI or MSI-X block. */
  get msiVectorsAssigned(): number {
    let n = 0;
    for (const t of this.msiTriggers) if (t !== null) n++;
    return n;
  }

  private msiHandler(vector: number): void {
    if (this.irqType !== VFIO_PCI_MSI_IRQ_INDEX) return;
    const t = this.msiTriggers[vector];
    if (t !== undefined && t !== null) this.signal(t, VFIO_PCI_MSI_IRQ_INDEX, vector);
  }

  private msixHandler(vector: number): void {
    if (this.irqType !== VFIO_PCI_MSIX_IRQ_INDEX) return;
    const t = this.msiTriggers[vector];
    if (t !== undefined && t !== null) this.signal(t, VFIO_PCI_MSIX_IRQ_INDEX, vector);
  }

  /** vfio_pci_set_msi_trigger, for both MSI and MSI-X. */
  private setMsiTrigger(s: VfioIrqSet): void {
    const msix = s.index === VFIO_PCI_MSIX_IRQ_INDEX;
    const name = vfioPciIrqName(s.index);
    const isCurrent = this.irqType === s.index;
    if (isCurrent && s.count === 0 && s.data.kind === "none") {
      this.msiDisable(msix);
      return;
    }
    if (!(isCurrent || this.irqType === IRQ_NONE)) {
      throw new KernelError(Errno.EINVAL, `${this.bdf}: cannot use ${name} while ${this.irqTypeName()} is enabled`);
    }
    if (s.data.kind === "eventfd") {
      if (isCurrent) {
        this.setBlock(s.index, s.start, s.data.triggers);
        return;
      }
      if (s.start + s.count === 0) {
        throw new KernelError(Errno.EINVAL, `${this.bdf}: enabling ${name} needs at least one vector`);
      }
      this.msiEnable(s.start + s.count, msix);
      try {
        this.setBlock(s.index, s.start, s.data.triggers);
      } catch (e) {
        this.msiDisable(msix);
        throw e;
      }
      return;
    }
    if (!isCurrent || s.start + s.count > this.msiTriggers.length) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.bdf}: ${name} loopback of vectors [${s.start}, ${s.start + s.count}) needs ${name} enabled with ` +
          `them allocated (now ${this.irqTypeName()}, ${this.msiTriggers.length} vector(s))`,
      );
    }
    for (let i = s.start; i < s.start + s.count; i++) {
      const t = this.msiTriggers[i];
      if (t === undefined || t === null) continue;
      if (s.data.kind === "none" || s.data.values[i - s.start] === true) this.signal(t, s.index, i);
    }
  }

  /** vfio_msi_set_block: (re)assigns eventfds within the allocated block; on failure the assigned ones are undone. */
  private setBlock(index: number, start: number, triggers: readonly (IrqTrigger | null)[]): void {
    const numCtx = this.msiTriggers.length;
    if (start >= numCtx || start + triggers.length > numCtx) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.bdf}: ${vfioPciIrqName(index)} vectors [${start}, ${start + triggers.length}) are outside the ` +
          `${numCtx} allocated when it was enabled (disable it first to allocate more)`,
      );
    }
    const msix = index === VFIO_PCI_MSIX_IRQ_INDEX;
    for (let i = 0; i < triggers.length; i++) this.setVectorSignal(start + i, triggers[i] ?? null, msix);
  }

  /** vfio_msi_set_vector_signal: free the vector's irq (masks an MSI-X entry), then request it with the new trigger. */
  private setVectorSignal(vector: number, trigger: IrqTrigger | null, msix: boolean): void {
    const had = this.msiTriggers[vector] ?? null;
    if (had !== null) {
      if (msix) this.setEntryMask(vector, true);
      this.msiTriggers[vector] = null;
    }
    if (trigger !== null) {
      // The table is device memory a reset behind our back may clear: rewrite the message before unmasking.
      if (msix) this.writeEntryMessage(vector);
      this.msiTriggers[vector] = trigger;
    }
    if ((had !== null || trigger !== null) && this.tracer.enabled) {
      this.tracer.emit("vfio_pci.trigger", {
        bdf: this.bdf,
        irq: msix ? "MSIX" : "MSI",
        vector,
        assigned: trigger !== null,
      });
    }
    // Unmasking last: a message the device left pending goes to the new eventfd.
    if (trigger !== null && msix) this.setEntryMask(vector, false);
  }

  /** vfio_msi_enable: pci_alloc_irq_vectors programs the device (MSI: the capability; MSI-X: the table). */
  private msiEnable(nvec: number, msix: boolean): void {
    if (msix) this.msixAlloc(nvec);
    else {
      const cap = this.hw.msiCap;
      if (cap === 0) throw new KernelError(Errno.EINVAL, `${this.bdf} has no MSI capability`);
      const qsize = Math.ceil(Math.log2(nvec));
      this.hw.write(cap + PCI_MSI_ADDRESS_LO, 4, HOST_MSI_ADDRESS);
      this.hw.write(cap + PCI_MSI_ADDRESS_HI, 4, 0);
      this.hw.write(cap + PCI_MSI_DATA_64, 2, HOST_MSI_DATA);
      const flags = this.hw.read(cap + PCI_MSI_FLAGS, 2);
      this.hw.write(cap + PCI_MSI_FLAGS, 2, (flags & ~PCI_MSI_FLAGS_QSIZE) | (qsize << 4) | PCI_MSI_FLAGS_ENABLE);
      this.msiQmax = qsize; // fls(nvec * 2 - 1) - 1
    }
    this.setDisIntx(true); // pci_intx_for_msi(dev, 0)
    this.msiTriggers = new Array<IrqTrigger | null>(nvec).fill(null);
    this.irqType = msix ? VFIO_PCI_MSIX_IRQ_INDEX : VFIO_PCI_MSI_IRQ_INDEX;
    if (this.tracer.enabled) {
      this.tracer.emit(msix ? "vfio_pci.msix.enable" : "vfio_pci.msi.enable", { bdf: this.bdf, vectors: nvec });
    }
  }

  /** msix_capability_init: enable with the function masked, mask every entry, write the messages, unmask the function. */
  private msixAlloc(nvec: number): void {
    const cap = this.hw.msixCap;
    const t = this.msixTable;
    if (cap === 0 || t === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.bdf} has ${cap === 0 ? "no MSI-X capability" : "an MSI-X capability but its model exposes no MSI-X table"}`,
      );
    }
    const ctl = this.hw.read(cap + PCI_MSIX_FLAGS, 2);
    this.hw.write(cap + PCI_MSIX_FLAGS, 2, ctl | PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
    for (let v = 0; v < t.vectors; v++) this.setEntryMask(v, true);
    for (let v = 0; v < nvec; v++) this.writeEntryMessage(v);
    this.hw.write(cap + PCI_MSIX_FLAGS, 2, (ctl | PCI_MSIX_FLAGS_ENABLE) & ~PCI_MSIX_FLAGS_MASKALL);
  }

  /** vfio_msi_disable: release every vector, free the vectors (device back to disabled and masked), INTx Disable off. */
  private msiDisable(msix: boolean): void {
    for (let v = 0; v < this.msiTriggers.length; v++) this.setVectorSignal(v, null, msix);
    this.msiTriggers = [];
    if (msix) {
      // pci_msix_shutdown: every entry masked, then MSI-X Enable cleared.
      const cap = this.hw.msixCap;
      const t = this.msixTable;
      if (t !== undefined) for (let v = 0; v < t.vectors; v++) this.setEntryMask(v, true);
      if (cap !== 0) {
        const ctl = this.hw.read(cap + PCI_MSIX_FLAGS, 2);
        this.hw.write(cap + PCI_MSIX_FLAGS, 2, ctl & ~(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL));
      }
    } else {
      const cap = this.hw.msiCap;
      if (cap !== 0) {
        const flags = this.hw.read(cap + PCI_MSI_FLAGS, 2);
        this.hw.write(cap + PCI_MSI_FLAGS, 2, flags & ~PCI_MSI_FLAGS_ENABLE);
      }
    }
    this.setDisIntx(false); // pci_intx_for_msi(dev, 1)
    this.irqType = IRQ_NONE;
    if (this.tracer.enabled)
      this.tracer.emit(msix ? "vfio_pci.msix.disable" : "vfio_pci.msi.disable", { bdf: this.bdf });
  }

  /** pci_write_msi_msg for an MSI-X entry: the host's address and data for `vector`. */
  private writeEntryMessage(vector: number): void {
    const t = this.msixTable!;
    const at = t.tableOffset + vector * PCI_MSIX_ENTRY_SIZE;
    t.write(t.tableBar, at + PCI_MSIX_ENTRY_LOWER_ADDR, 4, HOST_MSI_ADDRESS);
    t.write(t.tableBar, at + PCI_MSIX_ENTRY_UPPER_ADDR, 4, 0);
    t.write(t.tableBar, at + PCI_MSIX_ENTRY_DATA, 4, HOST_MSI_DATA + vector);
  }

  /** pci_msix_mask / pci_msix_unmask: the entry's Mask bit. Unmasking may send a pending message at once. */
  private setEntryMask(vector: number, masked: boolean): void {
    const t = this.msixTable;
    if (t === undefined) return;
    const at = t.tableOffset + vector * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL;
    t.write(t.tableBar, at, 4, masked ? PCI_MSIX_ENTRY_CTRL_MASKBIT : 0);
  }

  // ---- ERR / REQ --------------------------------------------------------------------------------------------------

  /** vfio_pci_set_ctx_trigger_single: returns the trigger to keep. */
  private setSingle(current: IrqTrigger | null, s: VfioIrqSet): IrqTrigger | null {
    const name = vfioPciIrqName(s.index);
    if (s.start !== 0 || s.count > 1) {
      throw new KernelError(Errno.EINVAL, `${this.bdf}: ${name} takes start 0 and count 0 or 1`);
    }
    switch (s.data.kind) {
      case "none":
        if (current !== null) {
          if (s.count > 0) {
            this.signal(current, s.index, 0);
            return current;
          }
          this.traceTrigger(name, false);
          return null;
        }
        throw new KernelError(Errno.EINVAL, `${this.bdf}: no ${name} eventfd is set`);
      case "bool":
        if (s.count === 0) throw new KernelError(Errno.EINVAL, `${this.bdf}: ${name} DATA_BOOL needs count 1`);
        if (s.data.values[0] === true && current !== null) this.signal(current, s.index, 0);
        return current;
      case "eventfd": {
        if (s.count === 0) throw new KernelError(Errno.EINVAL, `${this.bdf}: ${name} DATA_EVENTFD needs count 1`);
        const t = s.data.triggers[0] ?? null;
        this.traceTrigger(name, t !== null);
        return t;
      }
    }
  }

  // ---- helpers ----------------------------------------------------------------------------------------------------

  private signal(t: IrqTrigger, index: number, vector: number): void {
    this.signalled[index] = this.signalled[index]! + 1;
    if (this.tracer.enabled) {
      this.tracer.emit("vfio_pci.signal", { bdf: this.bdf, irq: vfioPciIrqName(index), vector });
    }
    t.signal();
  }

  private traceTrigger(irq: string, assigned: boolean): void {
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.trigger", { bdf: this.bdf, irq, vector: 0, assigned });
  }

  private irqTypeName(): string {
    return this.irqType === IRQ_NONE ? "no interrupt" : vfioPciIrqName(this.irqType);
  }
}
