/**
 * QEMU's "edu" educational PCI device (hw/misc/edu.c, docs/specs/edu.rst) as a physical device of the host: the
 * smallest real device with MMIO registers, INTx and MSI, and bus-master DMA, which makes it the test subject for
 * whole-device assignment with vfio-pci. Its DMA goes through the host's single DMA path (`DeviceDma`), so once the
 * device is assigned, every transfer is translated by the IOMMU domain that vfio type1 programs.
 *
 * Config space: vendor 0x1234 (QEMU), device 0x11e8, revision 0x10, class 0x00ff00 ("Unclassified device [00ff]"),
 * subsystem 0x1af4:0x1100 (QEMU's default), INTA#, one 64-bit MSI vector without per-vector masking, BAR0 = 1 MiB of
 * 32-bit non-prefetchable MMIO, no I/O BAR, no ROM, conventional PCI (no PCI Express capability); with the `msix`
 * option, an MSI-X capability follows the MSI one (see below).
 *
 * BAR0 register map (`EDU_REG_*`). Offsets below 0x80 accept only 4-byte accesses, offsets from 0x80 only 4 or 8;
 * any other access, and any offset that is not a register, reads as all ones and ignores writes:
 *   0x00 RO  identification 0x010000ed (major 1, minor 0)
 *   0x04 RW  liveness: a write stores the bitwise inversion, a read returns it
 *   0x08 RW  factorial: write n, read n! (mod 2^32, as QEMU's u32 arithmetic)
 *   0x20 RW  status: 0x01 computing (RO), 0x80 raise interrupt 0x001 when a factorial finishes
 *   0x24 RO  interrupt status; 0x60 WO raise (ORs the value in); 0x64 WO acknowledge (clears the value's bits)
 *   0x80/0x88/0x90 RW  DMA source, destination, count (64-bit; a 4-byte write at the base sets the whole register)
 *   0x98 RW  DMA command: 0x01 start, 0x02 direction (0 RAM -> device buffer, 1 device buffer -> RAM), 0x04 raise
 *            interrupt 0x100 when done. A write without the start bit is ignored, as in QEMU.
 * The device buffer is 4 KiB at device address 0x40000; DMA addresses are masked with `dmaMask` (28 bits by default,
 * QEMU's dma_mask property) and the masking is logged, as QEMU logs it.
 *
 * Synchronous execution (the model has no threads or timers in devices): QEMU computes a factorial on a worker
 * thread and starts a DMA 100 ms after the command write. Here the factorial completes inside the write to 0x08 and
 * the DMA inside the write to 0x98 that sets the start bit, so the "computing" and "start" bits always read back 0
 * and the completion interrupt is raised before the write returns. A driver that polls those bits works unchanged.
 *
 * Interrupts, as QEMU: raising ORs into the interrupt status; while it is non-zero the device sends MSI vector 0 on
 * every raise when MSI is enabled, else asserts INTx; acknowledging to zero deasserts INTx. The Interrupt Status bit of
 * the PCI status register follows the INTx line (PCI 2.3), since vfio-pci's INTx masking reads it.
 *
 * MSI-X (option `msix`, a model extension: QEMU's edu has none): an MSI-X capability with that many vectors (1 to
 * 256), its table in BAR0 at 0x80000 and its Pending Bit Array at 0x81000 (`EDU_MSIX_TABLE_OFFSET`,
 * `EDU_MSIX_PBA_OFFSET`; the registers end at 0x9c, so the two are free, and 256 entries fill exactly the 4 KiB before
 * the PBA). BAR0 accesses there go to the table (`MsixTable`: aligned 4- or 8-byte accesses). Interrupt delivery then
 * picks, as QEMU devices do (msix_notify before msi_notify before pci_set_irq): MSI-X vector 0 when MSI-X is enabled,
 * else MSI, else INTx. A masked vector 0 is held pending in the PBA and sent when unmasked (PciBus.raiseMsix).
 *
 * DMA, as real hardware and unlike QEMU: the device masters the bus only while Bus Master Enable is set in its
 * command register (otherwise the transfer is dropped and logged); a transfer whose device-buffer side falls outside
 * [0x40000, 0x41000) is refused and logged (QEMU logs it and then overruns its buffer); an IOMMU fault stops the
 * transfer at the faulting page, is recorded by the IOMMU and counted here, and the command still completes (QEMU
 * ignores the transaction result too), raising its interrupt if asked.
 *
 * Reset (function-level, through PciBus.reset): every register, the buffer and the interrupt status return to zero.
 * QEMU's edu has no reset handler; a physical device's FLR does this.
 *
 * Not modelled: the dma_mask property's effect on DMA API allocations (it is only the device-side mask here),
 * timing, the QEMU thread's "stopping" state.
 */
import { defineTraceEvents, Errno, type Iova, KernelError, type Tracer } from "../core/index.ts";
import {
  type Bdf,
  type DeviceDma,
  DMA_OK,
  type DmaResult,
  MsixTable,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  PCI_STATUS,
  PCI_STATUS_INTERRUPT,
  type PciBus,
  PciConfigSpace,
  type PciDeviceModel,
} from "../host/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "edu.fact": { bdf: string; input: number; result: number };
    "edu.dma": {
      bdf: string;
      direction: string;
      srcAddr: number;
      dstAddr: number;
      count: number;
      result: string;
      completed: number;
    };
    "edu.irq": { bdf: string; status: number; delivery: string };
    "edu.error": { bdf: string; message: string };
    "edu.reset": { bdf: string };
  }
}
defineTraceEvents("devices", {
  "edu.fact": "edu {bdf}: factorial of {input} = {result}",
  "edu.dma": "edu {bdf}: DMA {direction} src {srcAddr} dst {dstAddr} count {count}: {result} ({completed} bytes)",
  "edu.irq": "edu {bdf}: interrupt status {status}, delivered by {delivery}",
  "edu.error": "edu {bdf}: guest error: {message}",
  "edu.reset": "edu {bdf}: function-level reset",
});

export const EDU_VENDOR_ID = 0x1234;
export const EDU_DEVICE_ID = 0x11e8;
export const EDU_REVISION = 0x10;
/** Base class 0x00, sub class 0xff, prog-if 0: lspci's "Unclassified device [00ff]". */
export const EDU_CLASS_CODE = 0x00ff00;
export const EDU_BAR0_SIZE = 1024 * 1024;

export const EDU_REG_ID = 0x00;
export const EDU_REG_LIVENESS = 0x04;
export const EDU_REG_FACTORIAL = 0x08;
export const EDU_REG_STATUS = 0x20;
export const EDU_REG_IRQ_STATUS = 0x24;
export const EDU_REG_IRQ_RAISE = 0x60;
export const EDU_REG_IRQ_ACK = 0x64;
export const EDU_REG_DMA_SRC = 0x80;
export const EDU_REG_DMA_DST = 0x88;
export const EDU_REG_DMA_COUNT = 0x90;
export const EDU_REG_DMA_CMD = 0x98;

export const EDU_ID_VALUE = 0x010000ed;
export const EDU_STATUS_COMPUTING = 0x01;
export const EDU_STATUS_IRQFACT = 0x80;
export const EDU_DMA_RUN = 0x1;
/** Direction bit: 0 = from RAM into the device buffer, 1 = from the device buffer to RAM. */
export const EDU_DMA_TO_RAM = 0x2;
export const EDU_DMA_IRQ = 0x4;
/** Interrupt status bits the device itself raises. */
export const EDU_FACT_IRQ = 0x00000001;
export const EDU_DMA_IRQ_STATUS = 0x00000100;
/** The device buffer, as a device address. */
export const EDU_DMA_START = 0x40000;
export const EDU_DMA_SIZE = 4096;
/** Where the MSI-X table and PBA sit in BAR0 when the `msix` option is given (free offsets above the registers). */
export const EDU_MSIX_TABLE_OFFSET = 0x80000;
export const EDU_MSIX_PBA_OFFSET = 0x81000;
/** The most MSI-X vectors edu offers: 256 entries of 16 bytes fill the 4 KiB between the table and the PBA. */
export const EDU_MSIX_MAX_VECTORS = 256;
/** QEMU's default dma_mask: 28 bits (256 MiB). */
export const EDU_DEFAULT_DMA_MASK = 2 ** 28 - 1;

/**
 * An 8-byte read of all ones. 2^64 - 1 is not a double: this rounds to 2^64, which the host's number-valued BAR
 * contract cannot tell apart, so consumers (vfio-pci's rdwr) encode any 8-byte value >= 2^64 - 1 as eight 0xff bytes.
 */
export const EDU_ALL_ONES_64 = 2 ** 64 - 1;

export interface EduOptions {
  readonly bdf: Bdf;
  /** The bus the device sits on: interrupts are raised through it. */
  readonly bus: PciBus;
  /** The device's DMA path (translated by the IOMMU). */
  readonly dma: DeviceDma;
  readonly tracer: Tracer;
  /** Device-side address mask, 2^k - 1 for k in [12, 53]; default 2^28 - 1. */
  readonly dmaMask?: number;
  /** Add an MSI-X capability with this many vectors (1 to 256), table and PBA in BAR0. Default: no MSI-X. */
  readonly msix?: number;
}

const TWO32 = 4294967296;

/** a & m for non-negative integers below 2^53 (bitwise operators only reach 32 bits). */
function and53(a: number, m: number): number {
  const hi = (Math.floor(a / TWO32) & Math.floor(m / TWO32)) >>> 0;
  const lo = ((a % TWO32) & (m % TWO32)) >>> 0;
  return hi * TWO32 + lo;
}

/** n! mod 2^32 computed as QEMU's u32 loop does; 34! and every larger factorial hold 2^32, so they are 0. */
export function eduFactorial(n: number): number {
  const v = n >>> 0;
  if (v >= 34) return 0;
  let r = 1;
  for (let i = v; i > 0; i--) r = Math.imul(r, i) >>> 0;
  return r;
}

function allOnes(size: number): number {
  return size === 8 ? EDU_ALL_ONES_64 : 2 ** (size * 8) - 1;
}

export class EduDevice implements PciDeviceModel {
  readonly bdf: Bdf;
  readonly config: PciConfigSpace;
  /** The 4 KiB DMA buffer at device address 0x40000 (inspectable by tests). */
  readonly buffer = new Uint8Array(EDU_DMA_SIZE);
  readonly dmaMask: number;
  /** The MSI-X table and PBA (BAR0 at EDU_MSIX_TABLE_OFFSET / EDU_MSIX_PBA_OFFSET) when built with `msix`. */
  readonly msixTable: MsixTable | undefined;
  /** DMA transfers that faulted in the IOMMU (and so stopped early). */
  dmaFaults = 0;
  /** Result of the most recent DMA transfer (DMA_OK or the IOMMU fault). */
  lastDmaResult: DmaResult | undefined;
  /** Guest errors logged (out-of-range buffer access, clamped address, DMA without bus mastering). */
  guestErrors = 0;

  private readonly bus: PciBus;
  private readonly dma: DeviceDma;
  private readonly tracer: Tracer;
  private liveness = 0;
  private fact = 0;
  private status = 0;
  private irqStatus = 0;
  private dmaSrc = 0;
  private dmaDst = 0;
  private dmaCount = 0;
  private dmaCmd = 0;
  private intxLevel = false;

  constructor(opts: EduOptions) {
    const mask = opts.dmaMask ?? EDU_DEFAULT_DMA_MASK;
    if (!Number.isSafeInteger(mask) || mask < 4095 || !Number.isInteger(Math.log2(mask + 1))) {
      throw new KernelError(Errno.EINVAL, `edu dma_mask ${mask} must be 2^k - 1 with 12 <= k <= 53`);
    }
    const msix = opts.msix;
    if (msix !== undefined && (!Number.isInteger(msix) || msix < 1 || msix > EDU_MSIX_MAX_VECTORS)) {
      throw new KernelError(Errno.EINVAL, `edu msix vector count ${msix} must be an integer from 1 to 256`);
    }
    this.bdf = opts.bdf;
    this.bus = opts.bus;
    this.dma = opts.dma;
    this.tracer = opts.tracer;
    this.dmaMask = mask;
    this.config = new PciConfigSpace({
      vendorId: EDU_VENDOR_ID,
      deviceId: EDU_DEVICE_ID,
      revision: EDU_REVISION,
      classCode: EDU_CLASS_CODE,
      subsystemVendorId: 0x1af4,
      subsystemId: 0x1100,
      interruptPin: 1,
      bars: [{ index: 0, size: EDU_BAR0_SIZE, kind: "mem32" }],
      msiVectors: 1,
      ...(msix !== undefined
        ? {
            msix: {
              vectors: msix,
              tableBar: 0,
              tableOffset: EDU_MSIX_TABLE_OFFSET,
              pbaBar: 0,
              pbaOffset: EDU_MSIX_PBA_OFFSET,
            },
          }
        : {}),
    });
    this.msixTable = msix !== undefined ? new MsixTable(this.config) : undefined;
  }

  // ---- PciDeviceModel ---------------------------------------------------------------------------------------------

  barRead(bar: number, offset: number, size: number): number {
    if (this.msixTable?.covers(bar, offset)) return this.msixTable.read(bar, offset, size);
    if (!this.validAccess(bar, offset, size)) return allOnes(size);
    switch (offset) {
      case EDU_REG_ID:
        return EDU_ID_VALUE;
      case EDU_REG_LIVENESS:
        return this.liveness;
      case EDU_REG_FACTORIAL:
        return this.fact;
      case EDU_REG_STATUS:
        return this.status;
      case EDU_REG_IRQ_STATUS:
        return this.irqStatus;
      case EDU_REG_DMA_SRC:
        return this.narrow(this.dmaSrc, size);
      case EDU_REG_DMA_DST:
        return this.narrow(this.dmaDst, size);
      case EDU_REG_DMA_COUNT:
        return this.narrow(this.dmaCount, size);
      case EDU_REG_DMA_CMD:
        return this.narrow(this.dmaCmd, size);
      default:
        return allOnes(size);
    }
  }

  barWrite(bar: number, offset: number, size: number, value: number): void {
    if (this.msixTable?.covers(bar, offset)) {
      this.msixTable.write(bar, offset, size, value);
      return;
    }
    if (!this.validAccess(bar, offset, size)) return;
    const v32 = size === 8 ? (value % TWO32) >>> 0 : value >>> 0;
    switch (offset) {
      case EDU_REG_LIVENESS:
        this.liveness = ~v32 >>> 0;
        return;
      case EDU_REG_FACTORIAL:
        if ((this.status & EDU_STATUS_COMPUTING) !== 0) return;
        this.runFactorial(v32);
        return;
      case EDU_REG_STATUS:
        this.status =
          (v32 & EDU_STATUS_IRQFACT) !== 0 ? this.status | EDU_STATUS_IRQFACT : this.status & ~EDU_STATUS_IRQFACT;
        return;
      case EDU_REG_IRQ_RAISE:
        this.raiseIrq(v32);
        return;
      case EDU_REG_IRQ_ACK:
        this.lowerIrq(v32);
        return;
      case EDU_REG_DMA_SRC:
        if ((this.dmaCmd & EDU_DMA_RUN) === 0) this.dmaSrc = value;
        return;
      case EDU_REG_DMA_DST:
        if ((this.dmaCmd & EDU_DMA_RUN) === 0) this.dmaDst = value;
        return;
      case EDU_REG_DMA_COUNT:
        if ((this.dmaCmd & EDU_DMA_RUN) === 0) this.dmaCount = value;
        return;
      case EDU_REG_DMA_CMD:
        if ((value & EDU_DMA_RUN) === 0 || (this.dmaCmd & EDU_DMA_RUN) !== 0) return;
        this.dmaCmd = value;
        this.runDma();
        return;
      default:
        return;
    }
  }

  reset(): void {
    this.liveness = 0;
    this.fact = 0;
    this.status = 0;
    this.irqStatus = 0;
    this.dmaSrc = 0;
    this.dmaDst = 0;
    this.dmaCount = 0;
    this.dmaCmd = 0;
    this.buffer.fill(0);
    this.msixTable?.reset();
    this.setIntx(false);
    if (this.tracer.enabled) this.tracer.emit("edu.reset", { bdf: this.bdf });
  }

  /** The interrupt status register (0x24), for tests and the dashboard. */
  get interruptStatus(): number {
    return this.irqStatus;
  }

  // ---- behaviour ----------------------------------------------------------------------------------------------------

  private validAccess(bar: number, offset: number, size: number): boolean {
    if (bar !== 0 || !Number.isInteger(offset) || offset < 0 || offset + size > EDU_BAR0_SIZE) return false;
    return offset < 0x80 ? size === 4 : size === 4 || size === 8;
  }

  /** A 4-byte read of a 64-bit register returns its low half (QEMU's memory core truncates). */
  private narrow(v: number, size: number): number {
    return size === 8 ? v : v % TWO32;
  }

  private runFactorial(n: number): void {
    // QEMU sets "computing" and wakes a thread; here the computation finishes before the write returns.
    this.fact = eduFactorial(n);
    this.status &= ~EDU_STATUS_COMPUTING;
    if (this.tracer.enabled) this.tracer.emit("edu.fact", { bdf: this.bdf, input: n, result: this.fact });
    if ((this.status & EDU_STATUS_IRQFACT) !== 0) this.raiseIrq(EDU_FACT_IRQ);
  }

  private runDma(): void {
    const toRam = (this.dmaCmd & EDU_DMA_TO_RAM) !== 0;
    const count = this.dmaCount;
    const bufAddr = toRam ? this.dmaSrc : this.dmaDst;
    const ramAddr = this.clamp(toRam ? this.dmaDst : this.dmaSrc);
    let result = "ok";
    let completed = count;
    if (!this.inBuffer(bufAddr, count)) {
      result = "out-of-range";
      completed = 0;
      this.guestError(
        `DMA range 0x${bufAddr.toString(16)}+0x${count.toString(16)} is outside the buffer [0x40000, 0x41000)`,
      );
    } else if (!this.config.busMasterEnabled()) {
      result = "bus-master-disabled";
      completed = 0;
      this.guestError("DMA started with Bus Master Enable clear in the command register: transfer dropped");
    } else {
      const off = bufAddr - EDU_DMA_START;
      const r = toRam
        ? this.dma.write(ramAddr as Iova, this.buffer, off, count)
        : this.dma.read(ramAddr as Iova, this.buffer, off, count);
      this.lastDmaResult = r;
      if (r !== DMA_OK) {
        this.dmaFaults++;
        result = `fault (${r.reason ?? "unknown"}) at iova 0x${r.iova.toString(16)}`;
        completed = r.completed;
      }
    }
    if (this.tracer.enabled) {
      this.tracer.emit("edu.dma", {
        bdf: this.bdf,
        direction: toRam ? "device-to-ram" : "ram-to-device",
        srcAddr: toRam ? bufAddr : ramAddr,
        dstAddr: toRam ? ramAddr : bufAddr,
        count,
        result,
        completed,
      });
    }
    // Clear the start bit arithmetically: the register is 64 bits wide and `&=` would truncate it to 32.
    this.dmaCmd -= EDU_DMA_RUN;
    if ((this.dmaCmd & EDU_DMA_IRQ) !== 0) this.raiseIrq(EDU_DMA_IRQ_STATUS);
  }

  private inBuffer(addr: number, count: number): boolean {
    return addr >= EDU_DMA_START && count >= 0 && addr + count <= EDU_DMA_START + EDU_DMA_SIZE;
  }

  private clamp(addr: number): number {
    const res = and53(addr, this.dmaMask);
    if (res !== addr) this.guestError(`clamping DMA 0x${addr.toString(16)} to 0x${res.toString(16)}`);
    return res;
  }

  private guestError(message: string): void {
    this.guestErrors++;
    if (this.tracer.enabled) this.tracer.emit("edu.error", { bdf: this.bdf, message });
  }

  private raiseIrq(val: number): void {
    this.irqStatus = (this.irqStatus | val) >>> 0;
    if (this.irqStatus === 0) return;
    let delivery: string;
    if (this.config.msixEnabled()) {
      if (this.bus.raiseMsix(this.bdf, 0)) delivery = "msix";
      else delivery = this.msixTable?.pending(0) ? "msix (masked, pending)" : "msix (dropped)";
    } else if (this.msiEnabled()) {
      delivery = this.bus.raiseMsi(this.bdf, 0) ? "msi" : "msi (dropped)";
    } else {
      this.setIntx(true);
      delivery = "intx";
    }
    if (this.tracer.enabled) this.tracer.emit("edu.irq", { bdf: this.bdf, status: this.irqStatus, delivery });
  }

  private lowerIrq(val: number): void {
    this.irqStatus = (this.irqStatus & ~val) >>> 0;
    if (this.irqStatus === 0 && !this.config.msixEnabled() && !this.msiEnabled()) this.setIntx(false);
  }

  /** MSI Enable in the device's own capability (read in place: no allocation per interrupt). */
  private msiEnabled(): boolean {
    const c = this.config.msiCap;
    return c !== 0 && (this.config.bytes[c + PCI_MSI_FLAGS]! & PCI_MSI_FLAGS_ENABLE) !== 0;
  }

  /** Drives INTA# and the Interrupt Status bit of the status register, which follows the line. */
  private setIntx(level: boolean): void {
    const b = this.config.bytes;
    b[PCI_STATUS] = level ? b[PCI_STATUS]! | PCI_STATUS_INTERRUPT : b[PCI_STATUS]! & ~PCI_STATUS_INTERRUPT;
    if (this.intxLevel === level) return;
    this.intxLevel = level;
    if (this.bus.has(this.bdf)) this.bus.setIntx(this.bdf, level);
  }
}
