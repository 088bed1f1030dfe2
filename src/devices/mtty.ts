/**
 * The mtty sample mediated device (Linux samples/vfio-mdev/mtty.c): the smallest real mdev vendor driver. A virtual
 * parent "mtty" offers two types sharing one pool of serial ports (24 by default, MAX_MTTYS): "1" Single port serial
 * and "2" Dual port serial. Each created device is a virtual PCI 16550 serial card with its own emulated-IOMMU vfio
 * group; it does no DMA, so all it shows of VFIO is the device side: info, regions, irqs, config space, the UART.
 *
 * The parent (`MttyParent`, from `createMttyParent`): available_instances = ports left / ports per type (both types
 * are always listed); create takes the ports or fails with ENOSPC naming the numbers; destroy gives them back.
 *
 * A device (`MttyDevice`, a VfioDeviceOps named by its UUID), as mtty reports it:
 * - info: PCI | RESET, 9 regions, 5 irq indices. (mtty reports PCI only but accepts VFIO_DEVICE_RESET; vfio-core
 *   refuses RESET without the flag, so the flag is set here.)
 * - regions: CONFIG the full 256 bytes of a PCI config space (0x100), BAR0 8 bytes (port 0's registers), BAR1 8 bytes
 *   on the dual type only; every other index has size 0. All nine report READ|WRITE, as mtty does even for the empty
 *   ones. No mmap. (mtty declares MTTY_CONFIG_SPACE_SIZE 0xff yet serves reads past it from its 0x100-byte buffer;
 *   taken literally, 0xff makes QEMU's dword read at 0xfc fail with EINVAL and a guest's `lspci -xxx` log an error,
 *   so the region here is what a PCI function has: 256 bytes, every offset up to 0xff readable.)
 * - irqs: INTx count 1 EVENTFD|MASKABLE|AUTOMASKED, MSI count 1 EVENTFD|NORESIZE; MSI-X, ERR and REQ are EINVAL
 *   (current mtty_get_irq_info; older kernels, 4.x, also answered REQ with count 1).
 * - config space, byte by byte as mtty_create_config_space: ids 0x4348:0x3253, command 0x0001 (I/O), status 0x0200,
 *   revision 0x10, class 0x070002 (16550 serial), BAR0 I/O (and BAR1 I/O for dual), subsystem 0x4348:0x3253, no
 *   capabilities, INTA#, and mtty's vendor bytes at 0x40-0x4c and the string "PCI Serial/UART" at 0x60. Writes as
 *   handle_pci_cfg_write: only BAR0/BAR1 (sizing: all ones reads back 0xfffffff9), the interrupt line, and BAR2-4
 *   (forced to 0) take effect; command, status, pin and everything else ignore writes. A BAR address is masked to
 *   the BAR size here, as hardware does (mtty keeps the unaligned low bits of a non-sizing write).
 * - region access as mtty_read/mtty_write: an access is split into naturally aligned 4/2/1-byte pieces. Config
 *   pieces copy bytes. A BAR piece addresses the UART register at its first byte: the low byte carries the value and
 *   the other bytes read as 0 and are ignored on write (mtty does the same and leaks stack in the upper bytes).
 *   Guests use 1-byte inb/outb. Accesses past a region's size, or to a size-0 region, are EINVAL (mtty overruns or
 *   answers EFAULT there).
 * - interrupts as mtty_trigger_interrupt: with MSI selected, signal the MSI eventfd; with INTx selected, signal the
 *   INTx eventfd unless masked, and mask (automask) - only SET_IRQS INTx UNMASK unmasks, and unmasking does not
 *   re-deliver a source that is still pending (mtty does not re-check; vfio-pci would). SET_IRQS as mtty_set_irqs:
 *   one index at a time (an eventfd on INTx while MSI is selected is EINVAL), start 0 count 1, MASK/UNMASK INTx only
 *   with NONE or BOOL (EVENTFD: ENOTTY), MSI mask/unmask ENOTTY, MSI-X/ERR/REQ ENOTTY; TRIGGER with count 0 and NONE
 *   disables the selected index; an eventfd replaces the previous one, fd -1 disables.
 * - reset: both UARTs to power-on state, BARs and interrupt line cleared. mtty's reset only settles its migration
 *   state machine; a device reset restoring power-on state is what VFIO_DEVICE_RESET promises. Interrupt wiring
 *   (eventfds, INTx mask) belongs to the user session and is kept.
 * - close (last device fd): releases both eventfds and selects no interrupt type, as mtty_close.
 * - vendor attribute `vendor/sample_mdev_dev`: "This is MDEV <uuid>\n".
 *
 * The UART itself (registers, loopback FIFO, IIR priorities, and where it departs from mtty) is in mtty-uart.ts.
 *
 * Not modelled: migration (mtty's STOP_COPY/PRE_COPY state machine and data stream), dirty logging, iommufd binding,
 * the /dev/mtty character device. Invariants: portsLeft + the ports of live devices === the pool size; a device's
 * interrupt type is "none" iff no eventfd is set for the selected index; INTx is masked only while INTx is selected.
 */
import { defineTraceEvents, Errno, KernelError, type Tracer } from "../core/index.ts";
import { PCI_BASE_ADDRESS_0, PCI_COMMAND, PCI_INTERRUPT_LINE, PCI_STATUS, PciConfigSpace } from "../host/index.ts";
import type { MdevAvailability, MdevDeviceInstance, MdevParentDriver, MdevTypeSpec } from "../mdev/index.ts";
import {
  EMULATED_PCI_DEVICE_INFO,
  type IrqTrigger,
  trappedRegionInfo,
  VFIO_DEVICE_API_PCI_STRING,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR1_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_RW,
  type VfioDeviceInfo,
  type VfioDeviceOps,
  type VfioDmaAccess,
  type VfioIrqInfo,
  type VfioIrqSet,
  type VfioRegionInfo,
  vfioPciIrqName,
  vfioPciRegionName,
} from "../vfio/index.ts";
import { MTTY_IO_BAR_SIZE, MttyUart, UART_DLAB_NAMES, UART_READ_NAMES, UART_WRITE_NAMES } from "./mtty-uart.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "mtty.create": { parent: string; uuid: string; type: string; ports: number; portsLeft: number };
    "mtty.destroy": { parent: string; uuid: string; type: string; ports: number; portsLeft: number };
    /**
     * `type` is the selected interrupt ("intx", "msi", "none"); `result` says whether the eventfd was signalled;
     * `port` is -1 for a SET_IRQS software trigger.
     */
    "mtty.irq": { device: string; port: number; type: string; result: string };
    "mtty.irq_config": { device: string; index: string; change: string };
    "mtty.reg": { device: string; port: number; reg: string; op: string; value: number };
    "mtty.bar": { device: string; bar: number; value: number };
    "mtty.reset": { device: string };
  }
}
defineTraceEvents("devices", {
  "mtty.create": "mtty {parent}: created {uuid} of type {type} ({ports} port(s)), {portsLeft} port(s) left",
  "mtty.destroy": "mtty {parent}: destroyed {uuid} of type {type}, {ports} port(s) returned, {portsLeft} left",
  "mtty.irq": "mtty {device}: port {port} interrupt via {type}: {result}",
  "mtty.irq_config": "mtty {device}: {index} {change}",
  "mtty.reg": "mtty {device}: port {port} {op} {reg} = {value}",
  "mtty.bar": "mtty {device}: BAR{bar} written, reads {value}",
  "mtty.reset": "mtty {device}: reset to power-on state",
});

/** MAX_MTTYS: the ports the parent shares among its devices. */
export const MTTY_MAX_PORTS = 24;
/**
 * The CONFIG region's size: a whole 256-byte PCI config space. (mtty.c's MTTY_CONFIG_SPACE_SIZE says 0xff, one short,
 * but its buffer and its reads cover 0x100; see the module comment.)
 */
export const MTTY_CONFIG_SPACE_SIZE = 0x100;
export const MTTY_VENDOR_ID = 0x4348;
export const MTTY_DEVICE_ID = 0x3253;
/** Simple communication controller, serial, 16550-compatible. */
export const MTTY_CLASS_CODE = 0x070002;
export const MTTY_REVISION = 0x10;

/** A row of mtty's type table (struct mtty_type). */
export interface MttyTypeSpec extends MdevTypeSpec {
  readonly ports: 1 | 2;
}

/** mtty_types[]: both share the port pool. */
export const MTTY_TYPES: readonly MttyTypeSpec[] = [
  {
    id: "1",
    name: "Single port serial",
    description: "one 16550 UART with a 16-byte loopback FIFO behind an 8-byte I/O BAR",
    deviceApi: VFIO_DEVICE_API_PCI_STRING,
    ports: 1,
  },
  {
    id: "2",
    name: "Dual port serial",
    description: "two 16550 UARTs with 16-byte loopback FIFOs behind two 8-byte I/O BARs",
    deviceApi: VFIO_DEVICE_API_PCI_STRING,
    ports: 2,
  },
];

// Config space offsets mtty's write handler knows (beyond the shared PCI header names).
const PCI_BASE_ADDRESS_1 = 0x14;
const PCI_BASE_ADDRESS_2 = 0x18;
const PCI_BASE_ADDRESS_3 = 0x1c;
const PCI_BASE_ADDRESS_4 = 0x20;

/** Command at creation: I/O space on, memory and bus master off. */
const MTTY_COMMAND = 0x0001;
/** Status at creation: DEVSEL medium timing, no capability list. */
const MTTY_STATUS = 0x0200;
/** mtty's vendor-specific bytes below 0x60 (meaning undocumented; copied as data). */
const MTTY_VENDOR_BYTES: readonly (readonly [number, number])[] = [
  [0x40, 0x23],
  [0x43, 0x80],
  [0x44, 0x23],
  [0x48, 0x23],
  [0x4c, 0x23],
];
/** The ASCII string mtty writes at 0x60. */
const MTTY_VENDOR_STRING_OFFSET = 0x60;
const MTTY_VENDOR_STRING = "PCI Serial/UART";

const IRQ_NONE = -1;
const IRQ_TYPE_NAMES: Readonly<Record<number, string>> = { [-1]: "none", 0: "intx", 1: "msi" };

/** A snapshot of a device's interrupt wiring (for tests and the dashboard). */
export interface MttyIrqState {
  readonly type: "none" | "intx" | "msi";
  readonly intxEventfd: boolean;
  readonly msiEventfd: boolean;
  readonly intxMasked: boolean;
  /** Eventfd signals delivered since creation. */
  readonly signalled: number;
  /** Interrupt sources that found no eventfd or a masked INTx. */
  readonly suppressed: number;
}

/** One mtty mediated device: the VfioDeviceOps that vfio-core registers in the device's emulated group. */
export class MttyDevice implements VfioDeviceOps {
  readonly name: string;
  /** The virtual config space; region CONFIG exposes all of it (MTTY_CONFIG_SPACE_SIZE = 256 bytes). */
  readonly config: PciConfigSpace;
  readonly ports: readonly MttyUart[];
  private irqIndex = IRQ_NONE;
  private intxTrigger: IrqTrigger | null = null;
  private msiTrigger: IrqTrigger | null = null;
  private intxMasked = false;
  private signalled = 0;
  private suppressed = 0;
  private live = true;

  constructor(
    uuid: string,
    readonly type: MttyTypeSpec,
    private readonly tracer: Tracer,
  ) {
    this.name = uuid;
    const bars = [{ index: 0, size: MTTY_IO_BAR_SIZE, kind: "io" as const }];
    if (type.ports === 2) bars.push({ index: 1, size: MTTY_IO_BAR_SIZE, kind: "io" as const });
    this.config = new PciConfigSpace({
      vendorId: MTTY_VENDOR_ID,
      deviceId: MTTY_DEVICE_ID,
      classCode: MTTY_CLASS_CODE,
      revision: MTTY_REVISION,
      subsystemVendorId: MTTY_VENDOR_ID,
      subsystemId: MTTY_DEVICE_ID,
      interruptPin: 1,
      bars,
    });
    const b = this.config.bytes;
    b[PCI_COMMAND] = MTTY_COMMAND & 0xff;
    b[PCI_COMMAND + 1] = MTTY_COMMAND >>> 8;
    b[PCI_STATUS] = MTTY_STATUS & 0xff;
    b[PCI_STATUS + 1] = MTTY_STATUS >>> 8;
    for (const [off, v] of MTTY_VENDOR_BYTES) b[off] = v;
    for (let i = 0; i < MTTY_VENDOR_STRING.length; i++) {
      b[MTTY_VENDOR_STRING_OFFSET + i] = MTTY_VENDOR_STRING.charCodeAt(i);
    }
    const ports: MttyUart[] = [];
    for (let p = 0; p < type.ports; p++) ports.push(new MttyUart(() => this.raise(p)));
    this.ports = ports;
  }

  // ---- VfioDeviceOps: identity ---------------------------------------------------------------------------------

  info(): VfioDeviceInfo {
    return EMULATED_PCI_DEVICE_INFO;
  }

  regionInfo(index: number): VfioRegionInfo {
    // As Linux's mtty: read/write even for the regions it does not have (size 0).
    return trappedRegionInfo(`mtty ${this.name}`, index, this.regionSize(index), VFIO_REGION_RW);
  }

  irqInfo(index: number): VfioIrqInfo {
    if (index === VFIO_PCI_INTX_IRQ_INDEX) {
      return { index, count: 1, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED };
    }
    if (index === VFIO_PCI_MSI_IRQ_INDEX) {
      return { index, count: 1, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE };
    }
    throw new KernelError(
      Errno.EINVAL,
      `mtty ${this.name}: irq index ${index} (${vfioPciIrqName(index)}) is not supported; mtty has INTx and MSI only`,
    );
  }

  // ---- VfioDeviceOps: lifecycle --------------------------------------------------------------------------------

  /** open_device: mtty has no per-session setup (it does no DMA, so `dma` is not kept). */
  open(_dma: VfioDmaAccess | undefined): void {
    this.checkLive("open");
  }

  /** close_device (mtty_close): the user's eventfds are released and no interrupt type is selected. */
  close(): void {
    this.disableIntx("released on close");
    this.disableMsi("released on close");
  }

  reset(): void {
    this.checkLive("reset");
    for (const p of this.ports) p.reset();
    const c = this.config;
    c.write(PCI_BASE_ADDRESS_0, 4, 0);
    c.write(PCI_BASE_ADDRESS_1, 4, 0);
    c.write(PCI_INTERRUPT_LINE, 1, 0);
    if (this.tracer.enabled) this.tracer.emit("mtty.reset", { device: this.name });
  }

  // ---- VfioDeviceOps: regions ----------------------------------------------------------------------------------

  regionRead(index: number, offset: number, buf: Uint8Array): number {
    const len = buf.length;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      this.checkAccess(index, offset, len);
      const bytes = this.config.bytes;
      for (let i = 0; i < len; i++) buf[i] = bytes[offset + i]!;
      return len;
    }
    const port = this.barPort(index, offset, len);
    for (let done = 0, pos = offset; done < len; ) {
      const size = pieceSize(pos, len - done);
      buf[done] = this.uartRead(port, pos);
      for (let k = 1; k < size; k++) buf[done + k] = 0;
      done += size;
      pos += size;
    }
    return len;
  }

  regionWrite(index: number, offset: number, buf: Uint8Array): number {
    const len = buf.length;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      this.checkAccess(index, offset, len);
      for (let done = 0, pos = offset; done < len; ) {
        const size = pieceSize(pos, len - done);
        let value = 0;
        for (let k = size - 1; k >= 0; k--) value = value * 256 + buf[done + k]!;
        this.configWrite(pos, value);
        done += size;
        pos += size;
      }
      return len;
    }
    const port = this.barPort(index, offset, len);
    for (let done = 0, pos = offset; done < len; ) {
      const size = pieceSize(pos, len - done);
      this.uartWrite(port, pos, buf[done]!);
      done += size;
      pos += size;
    }
    return len;
  }

  // ---- VfioDeviceOps: interrupts (mtty_set_irqs) ---------------------------------------------------------------

  setIrqs(set: VfioIrqSet): void {
    this.checkLive("SET_IRQS");
    const { index, action, start, count, data } = set;
    if (index === VFIO_PCI_INTX_IRQ_INDEX) {
      if (action === "mask" || action === "unmask") {
        if (this.irqIndex !== VFIO_PCI_INTX_IRQ_INDEX || start !== 0 || count !== 1) {
          throw this.einval(set, "INTx mask/unmask needs INTx selected (an eventfd set) and exactly vector 0");
        }
        if (data.kind === "eventfd") {
          throw new KernelError(Errno.ENOTTY, `mtty ${this.name}: INTx ${action} by eventfd is not supported`);
        }
        if (data.kind === "none" || data.values[0] === true) this.setIntxMask(action === "mask");
        return;
      }
      if (this.irqIndex === VFIO_PCI_INTX_IRQ_INDEX && count === 0 && data.kind === "none") {
        this.disableIntx("disabled");
        return;
      }
      this.checkTrigger(set, VFIO_PCI_INTX_IRQ_INDEX);
      if (data.kind === "eventfd") {
        this.disableIntx("eventfd replaced");
        const t = data.triggers[0] ?? null;
        if (t === null) return;
        this.intxTrigger = t;
        this.irqIndex = VFIO_PCI_INTX_IRQ_INDEX;
        if (this.tracer.enabled) this.traceIrqConfig(index, "eventfd set: INTx selected");
        return;
      }
      this.loopbackTrigger(set, VFIO_PCI_INTX_IRQ_INDEX);
      return;
    }
    if (index === VFIO_PCI_MSI_IRQ_INDEX) {
      if (action === "mask" || action === "unmask") {
        throw new KernelError(Errno.ENOTTY, `mtty ${this.name}: MSI ${action} is not supported`);
      }
      if (this.irqIndex === VFIO_PCI_MSI_IRQ_INDEX && count === 0 && data.kind === "none") {
        this.disableMsi("disabled");
        return;
      }
      this.checkTrigger(set, VFIO_PCI_MSI_IRQ_INDEX);
      if (data.kind === "eventfd") {
        this.disableMsi("eventfd replaced");
        const t = data.triggers[0] ?? null;
        if (t === null) return;
        this.msiTrigger = t;
        this.irqIndex = VFIO_PCI_MSI_IRQ_INDEX;
        if (this.tracer.enabled) this.traceIrqConfig(index, "eventfd set: MSI selected");
        return;
      }
      this.loopbackTrigger(set, VFIO_PCI_MSI_IRQ_INDEX);
      return;
    }
    throw new KernelError(
      Errno.ENOTTY,
      `mtty ${this.name}: SET_IRQS on irq index ${index} (${vfioPciIrqName(index)}) is not supported`,
    );
  }

  // ---- inspection ------------------------------------------------------------------------------------------------

  irqState(): MttyIrqState {
    return {
      type:
        this.irqIndex === VFIO_PCI_INTX_IRQ_INDEX ? "intx" : this.irqIndex === VFIO_PCI_MSI_IRQ_INDEX ? "msi" : "none",
      intxEventfd: this.intxTrigger !== null,
      msiEventfd: this.msiTrigger !== null,
      intxMasked: this.intxMasked,
      signalled: this.signalled,
      suppressed: this.suppressed,
    };
  }

  /** Called by the parent on destroy: every later access fails with ENODEV. */
  dispose(): void {
    this.close();
    this.live = false;
  }

  // ---- internals -------------------------------------------------------------------------------------------------

  /** mtty_trigger_interrupt. The mask is set before signalling so a listener that unmasks at once is not undone. */
  private raise(port: number): void {
    let result: string;
    if (this.irqIndex === VFIO_PCI_MSI_IRQ_INDEX) {
      if (this.msiTrigger !== null) {
        this.signalled++;
        result = "signalled";
        this.msiTrigger.signal();
      } else {
        this.suppressed++;
        result = "no eventfd";
      }
    } else if (this.irqIndex === VFIO_PCI_INTX_IRQ_INDEX) {
      if (this.intxTrigger !== null && !this.intxMasked) {
        this.intxMasked = true;
        this.signalled++;
        result = "signalled, INTx automasked";
        this.intxTrigger.signal();
      } else {
        this.suppressed++;
        result = this.intxMasked ? "INTx masked" : "no eventfd";
      }
    } else {
      this.suppressed++;
      result = "no interrupt type selected";
    }
    if (this.tracer.enabled) {
      this.tracer.emit("mtty.irq", { device: this.name, port, type: IRQ_TYPE_NAMES[this.irqIndex]!, result });
    }
  }

  /** TRIGGER's shared checks: the other type must not be selected, and exactly vector 0 is addressed. */
  private checkTrigger(set: VfioIrqSet, index: number): void {
    if ((this.irqIndex !== index && this.irqIndex !== IRQ_NONE) || set.start !== 0 || set.count !== 1) {
      throw this.einval(
        set,
        this.irqIndex !== index && this.irqIndex !== IRQ_NONE
          ? `${IRQ_TYPE_NAMES[this.irqIndex]} is selected; disable it before using ${vfioPciIrqName(index)}`
          : "TRIGGER needs exactly vector 0 (start 0, count 1)",
      );
    }
  }

  /** TRIGGER with NONE or BOOL: a software-injected interrupt, only on the selected type. */
  private loopbackTrigger(set: VfioIrqSet, index: number): void {
    if (this.irqIndex !== index) {
      throw this.einval(set, `${vfioPciIrqName(index)} has no eventfd to trigger`);
    }
    const data = set.data;
    if (data.kind === "none" || (data.kind === "bool" && data.values[0] === true)) this.raise(-1);
  }

  private setIntxMask(masked: boolean): void {
    this.intxMasked = masked;
    if (this.tracer.enabled) this.traceIrqConfig(VFIO_PCI_INTX_IRQ_INDEX, masked ? "masked" : "unmasked");
  }

  /** mtty_disable_intx: only acts when an INTx eventfd is set. */
  private disableIntx(why: string): void {
    if (this.intxTrigger === null) return;
    this.intxTrigger = null;
    this.intxMasked = false;
    this.irqIndex = IRQ_NONE;
    if (this.tracer.enabled) this.traceIrqConfig(VFIO_PCI_INTX_IRQ_INDEX, `eventfd ${why}`);
  }

  /** mtty_disable_msi: only acts when an MSI eventfd is set. */
  private disableMsi(why: string): void {
    if (this.msiTrigger === null) return;
    this.msiTrigger = null;
    this.irqIndex = IRQ_NONE;
    if (this.tracer.enabled) this.traceIrqConfig(VFIO_PCI_MSI_IRQ_INDEX, `eventfd ${why}`);
  }

  private traceIrqConfig(index: number, change: string): void {
    this.tracer.emit("mtty.irq_config", { device: this.name, index: vfioPciIrqName(index), change });
  }

  private einval(set: VfioIrqSet, why: string): KernelError {
    return new KernelError(
      Errno.EINVAL,
      `mtty ${this.name}: SET_IRQS ${vfioPciIrqName(set.index)} ${set.action} [${set.start}, +${set.count}) ` +
        `with ${set.data.kind}: ${why}`,
    );
  }

  private regionSize(index: number): number {
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return MTTY_CONFIG_SPACE_SIZE;
    if (index === VFIO_PCI_BAR0_REGION_INDEX) return MTTY_IO_BAR_SIZE;
    if (index === VFIO_PCI_BAR1_REGION_INDEX && this.type.ports === 2) return MTTY_IO_BAR_SIZE;
    return 0;
  }

  /** The port behind BAR `index` after checking the access fits: EINVAL for a size-0 region or a range past it. */
  private barPort(index: number, offset: number, len: number): number {
    this.checkAccess(index, offset, len);
    return index;
  }

  private checkAccess(index: number, offset: number, len: number): void {
    this.checkLive("region access");
    const size = index >= 0 && index < VFIO_PCI_NUM_REGIONS ? this.regionSize(index) : 0;
    if (size === 0) {
      throw new KernelError(
        Errno.EINVAL,
        `mtty ${this.name}: region ${index} (${vfioPciRegionName(index)}) is empty; mtty has CONFIG, BAR0` +
          `${this.type.ports === 2 ? " and BAR1" : ""}`,
      );
    }
    if (!Number.isInteger(offset) || offset < 0 || offset + len > size) {
      throw new KernelError(
        Errno.EINVAL,
        `mtty ${this.name}: access [${offset}, ${offset + len}) runs past ${vfioPciRegionName(index)}'s ${size} bytes`,
      );
    }
  }

  private checkLive(what: string): void {
    if (!this.live) throw new KernelError(Errno.ENODEV, `mtty ${this.name}: ${what} after the device was destroyed`);
  }

  private uartRead(port: number, reg: number): number {
    const uart = this.ports[port]!;
    const dlab = uart.dlabSet;
    const value = uart.read(reg);
    if (this.tracer.enabled) {
      const name = dlab && reg < 2 ? UART_DLAB_NAMES[reg]! : UART_READ_NAMES[reg]!;
      this.tracer.emit("mtty.reg", { device: this.name, port, reg: name, op: "read", value });
    }
    return value;
  }

  private uartWrite(port: number, reg: number, value: number): void {
    const uart = this.ports[port]!;
    if (this.tracer.enabled) {
      const name = uart.dlabSet && reg < 2 ? UART_DLAB_NAMES[reg]! : UART_WRITE_NAMES[reg]!;
      this.tracer.emit("mtty.reg", { device: this.name, port, reg: name, op: "write", value });
    }
    uart.write(reg, value);
  }

  /** handle_pci_cfg_write for one naturally aligned piece starting at `pos` (value zero-extended). */
  private configWrite(pos: number, value: number): void {
    const c = this.config;
    switch (pos) {
      case PCI_INTERRUPT_LINE:
        c.write(PCI_INTERRUPT_LINE, 1, value & 0xff);
        return;
      case PCI_BASE_ADDRESS_0:
      case PCI_BASE_ADDRESS_1: {
        // The BAR's write mask gives mtty's sizing answer (~(size - 1) | I/O flag); BAR1 of a single port is absent
        // and stays 0, as mtty forces it.
        c.write(pos, 4, value >>> 0);
        if (this.tracer.enabled) {
          this.tracer.emit("mtty.bar", {
            device: this.name,
            bar: (pos - PCI_BASE_ADDRESS_0) / 4,
            value: c.read(pos, 4),
          });
        }
        return;
      }
      case PCI_BASE_ADDRESS_2:
      case PCI_BASE_ADDRESS_3:
      case PCI_BASE_ADDRESS_4:
        // Not implemented BARs: mtty stores 0, which they already read.
        return;
      default:
        // Command, status, interrupt pin (hard-wired INTA#) and the rest: mtty ignores the write.
        return;
    }
  }
}

/** mtty_read/mtty_write's split: 4 bytes if aligned and available, else 2 likewise, else 1. */
function pieceSize(pos: number, remaining: number): number {
  if (remaining >= 4 && pos % 4 === 0) return 4;
  if (remaining >= 2 && pos % 2 === 0) return 2;
  return 1;
}

export interface MttyParentOptions {
  readonly tracer: Tracer;
  /** The parent's name in /sys/class/mdev_bus (default "mtty", the virtual device mtty registers). */
  readonly parentName?: string;
  /** Size of the shared port pool (default MTTY_MAX_PORTS = 24). */
  readonly ports?: number;
}

/** The mtty parent device with its vendor driver: the port pool and the devices drawing on it. */
export class MttyParent implements MdevParentDriver {
  readonly parentName: string;
  readonly driverName = "mtty";
  readonly types: readonly MttyTypeSpec[] = MTTY_TYPES;
  /** The pool size. */
  readonly maxPorts: number;
  private left: number;
  private readonly byUuid = new Map<string, MttyDevice>();
  private readonly tracer: Tracer;

  constructor(opts: MttyParentOptions) {
    const ports = opts.ports ?? MTTY_MAX_PORTS;
    if (!Number.isSafeInteger(ports) || ports < 0) {
      throw new KernelError(Errno.EINVAL, `mtty: the port pool size ${ports} must be a non-negative integer`);
    }
    this.parentName = opts.parentName ?? "mtty";
    this.maxPorts = ports;
    this.left = ports;
    this.tracer = opts.tracer;
  }

  /** Ports not held by any device. */
  get portsLeft(): number {
    return this.left;
  }

  /** mtty_get_available: ports left / ports per device of the type. */
  availability(typeId: string): MdevAvailability {
    const type = this.typeOf(typeId);
    const instances = Math.floor(this.left / type.ports);
    if (instances > 0) return { instances };
    return {
      instances,
      reason: `ports: ${this.left} of ${this.maxPorts} left, a ${type.name} device needs ${type.ports}`,
    };
  }

  /** mtty_init_dev: takes the type's ports from the pool (ENOSPC when too few are left). */
  create(uuid: string, typeId: string): MdevDeviceInstance {
    const type = this.typeOf(typeId);
    const name = uuid.toLowerCase();
    if (this.byUuid.has(name)) {
      throw new KernelError(Errno.EEXIST, `mtty ${this.parentName}: a device ${name} already exists`);
    }
    if (this.left < type.ports) {
      throw new KernelError(
        Errno.ENOSPC,
        `mtty ${this.parentName}: no room for ${name} of type ${type.id} (${type.name}): it needs ${type.ports} ` +
          `port(s), ${this.left} of ${this.maxPorts} left`,
        { needed: type.ports, left: this.left, max: this.maxPorts },
      );
    }
    const dev = new MttyDevice(name, type, this.tracer);
    this.left -= type.ports;
    this.byUuid.set(name, dev);
    if (this.tracer.enabled) {
      this.tracer.emit("mtty.create", {
        parent: this.parentName,
        uuid: name,
        type: type.id,
        ports: type.ports,
        portsLeft: this.left,
      });
    }
    const banner = `This is MDEV ${name}\n`;
    return { ops: dev, attributes: { "vendor/sample_mdev_dev": { read: () => banner } } };
  }

  /** mtty_release_dev: the device's ports go back to the pool. ENODEV for an instance this parent does not hold. */
  destroy(instance: MdevDeviceInstance): void {
    const dev = this.byUuid.get(instance.ops.name);
    if (dev === undefined || dev !== instance.ops) {
      throw new KernelError(Errno.ENODEV, `mtty ${this.parentName}: no device ${instance.ops.name} to destroy`);
    }
    this.byUuid.delete(dev.name);
    dev.dispose();
    this.left += dev.type.ports;
    if (this.tracer.enabled) {
      this.tracer.emit("mtty.destroy", {
        parent: this.parentName,
        uuid: dev.name,
        type: dev.type.id,
        ports: dev.type.ports,
        portsLeft: this.left,
      });
    }
  }

  /** The live device named `uuid`, if any. */
  device(uuid: string): MttyDevice | undefined {
    return this.byUuid.get(uuid.toLowerCase());
  }

  /** Live devices in creation order. */
  devices(): MttyDevice[] {
    return [...this.byUuid.values()];
  }

  private typeOf(typeId: string): MttyTypeSpec {
    const t = MTTY_TYPES.find((x) => x.id === typeId);
    if (t === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `mtty ${this.parentName}: unknown type "${typeId}"; mtty offers ${MTTY_TYPES.map((x) => `"${x.id}"`).join(", ")}`,
      );
    }
    return t;
  }
}

/** The mtty parent driver (mtty_dev_init + mdev_register_parent): hand it to the mdev core. */
export function createMttyParent(opts: MttyParentOptions): MttyParent {
  return new MttyParent(opts);
}
