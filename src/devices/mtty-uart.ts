/**
 * One serial port of the mtty sample (Linux samples/vfio-mdev/mtty.c): a 16550-compatible register file behind an
 * 8-byte I/O BAR, whose transmitter is looped back into its receiver through a 16-byte FIFO. Bytes the guest writes
 * to THR come back out of RBR in order; nothing ever leaves the device.
 *
 * Register map (offsets within the BAR, include/uapi/linux/serial_reg.h names), as mtty's handle_bar_read/write:
 *   0 R RBR   pops the FIFO; W THR pushes (full: the byte is dropped and the overrun flag set). DLAB: divisor low.
 *   1 RW IER  reads back the low 4 bits; enabling THRI with an empty FIFO raises an interrupt. DLAB: divisor high.
 *   2 R IIR   highest pending source (see below) | 0xc0 (FIFOs enabled, 16550 style); W FCR: bit 0 FIFO on (16
 *             bytes) or off (1 byte), bits 1-2 clear the FIFO. The trigger level is always 1: mtty decodes 1/4/8/14
 *             and then overrides it with 1, having no character-timeout timer.
 *   3 RW LCR  bit 7 DLAB; setting it zeroes the divisor, and divisor writes OR into it (mtty's `|=`).
 *   4 RW MCR  with IER.MSI, writing OUT2 raises an interrupt, and writing RTS or DTR raises one (two if both).
 *             The loopback bit is stored but not needed: mtty always loops back.
 *   5 R LSR   DR (data in the FIFO), OE (overrun), THRE|TEMT (FIFO empty); writes ignored.
 *   6 R MSR   DCD|DSR|DDSR always, CTS|DCTS unless MCR.AFE is set and the FIFO is full; writes ignored.
 *   7 RW SCR  scratch.
 * Interrupt sources (`raise` is called, the device decides INTx or MSI): a push that brings the FIFO to the trigger
 * level with IER.RDI; a push into a full FIFO with IER.RLSI; an RBR read that leaves the FIFO empty with IER.THRI;
 * IER and MCR writes as above. Sources are edges, as in mtty; IIR reports the levels.
 *
 * Where this model departs from mtty.c, each time to fix a defect that would make the model misbehave:
 * - Empty is `count === 0`. mtty tests `head == tail`, which also holds when all 16 slots are full, so after exactly
 *   16 writes its FIFO reads as empty (no DR, RBR returns nothing) and the data is stranded until an FCR clear.
 * - IIR is a priority encoder (line status 0x06 > received data 0x04 > THR empty 0x02 > modem status 0x00). mtty ORs
 *   the codes of every pending source, so data + THR empty reads as line status and modem status alone reads as
 *   "no interrupt".
 * - The power-on trigger level is 1 (what every FCR write leaves); mtty leaves it 0 from kzalloc until the first FCR
 *   write, so IIR reports received data with an empty FIFO and the first byte raises no interrupt.
 * - RBR read with an empty FIFO returns 0; mtty returns uninitialised stack.
 *
 * Not modelled: baud rate timing, character timeout, break/parity/framing errors, the transmit path to anywhere,
 * migration state. Invariants: 0 <= count <= 16 (a FIFO-off FCR write without a clear can leave count above the
 * new 1-byte capacity, as in mtty; pushes then overrun until it drains); head and tail are indices mod 16;
 * count === (head - tail) mod 16, except that a full FIFO has head === tail and count === 16.
 */

// Register offsets (include/uapi/linux/serial_reg.h).
export const UART_RX = 0;
export const UART_TX = 0;
export const UART_DLL = 0;
export const UART_IER = 1;
export const UART_DLM = 1;
export const UART_IIR = 2;
export const UART_FCR = 2;
export const UART_LCR = 3;
export const UART_MCR = 4;
export const UART_LSR = 5;
export const UART_MSR = 6;
export const UART_SCR = 7;

export const UART_IER_RDI = 0x01;
export const UART_IER_THRI = 0x02;
export const UART_IER_RLSI = 0x04;
export const UART_IER_MSI = 0x08;

export const UART_IIR_NO_INT = 0x01;
export const UART_IIR_MSI = 0x00;
export const UART_IIR_THRI = 0x02;
export const UART_IIR_RDI = 0x04;
export const UART_IIR_RLSI = 0x06;
/** Bits 6-7 of IIR: "FIFOs enabled", which mtty always reports to look like a 16550A. */
export const UART_IIR_FIFO_BITS = 0xc0;

export const UART_FCR_ENABLE_FIFO = 0x01;
export const UART_FCR_CLEAR_RCVR = 0x02;
export const UART_FCR_CLEAR_XMIT = 0x04;

export const UART_LCR_DLAB = 0x80;

export const UART_MCR_DTR = 0x01;
export const UART_MCR_RTS = 0x02;
export const UART_MCR_OUT2 = 0x08;
export const UART_MCR_LOOP = 0x10;
export const UART_MCR_AFE = 0x20;

export const UART_LSR_DR = 0x01;
export const UART_LSR_OE = 0x02;
export const UART_LSR_THRE = 0x20;
export const UART_LSR_TEMT = 0x40;

export const UART_MSR_DCTS = 0x01;
export const UART_MSR_DDSR = 0x02;
export const UART_MSR_CTS = 0x10;
export const UART_MSR_DSR = 0x20;
export const UART_MSR_DCD = 0x80;

/** MAX_FIFO_SIZE of mtty.c: the loopback FIFO's depth with FCR.ENABLE_FIFO (and at power-on). */
export const MTTY_FIFO_SIZE = 16;
/** The BAR holding one port's registers (MTTY_IO_BAR_SIZE). */
export const MTTY_IO_BAR_SIZE = 8;

/** Register names for trace lines, by offset: reads, writes, and offsets 0-1 while DLAB is set. */
export const UART_READ_NAMES: readonly string[] = ["RBR", "IER", "IIR", "LCR", "MCR", "LSR", "MSR", "SCR"];
export const UART_WRITE_NAMES: readonly string[] = ["THR", "IER", "FCR", "LCR", "MCR", "LSR", "MSR", "SCR"];
export const UART_DLAB_NAMES: readonly string[] = ["DLL", "DLM"];

/** A read-only view of a port's state, for tests and the dashboard. */
export interface MttyUartState {
  readonly ier: number;
  readonly lcr: number;
  readonly mcr: number;
  readonly scr: number;
  readonly fcr: number;
  readonly dlab: boolean;
  readonly divisor: number;
  readonly overrun: boolean;
  /** Bytes in the loopback FIFO, oldest first. */
  readonly fifo: readonly number[];
  readonly capacity: number;
  readonly triggerLevel: number;
}

/** One 16550 port with mtty's loopback FIFO. `raise` is called for every interrupt-source edge. */
export class MttyUart {
  // Private state, as struct serial_port: the four stored registers, the FIFO ring, and the derived flags.
  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private scr = 0;
  private fcr = 0;
  private dlab = false;
  private divisor = 0;
  private overrun = false;
  private readonly fifo = new Uint8Array(MTTY_FIFO_SIZE);
  private head = 0;
  private tail = 0;
  private count = 0;
  private capacity = MTTY_FIFO_SIZE;
  private triggerLevel = 1;

  constructor(private readonly raise: () => void) {}

  /** Power-on state (mtty_init_dev's zeroed serial_port with max_fifo_size 16; trigger level 1, see above). */
  reset(): void {
    this.ier = 0;
    this.lcr = 0;
    this.mcr = 0;
    this.scr = 0;
    this.fcr = 0;
    this.dlab = false;
    this.divisor = 0;
    this.overrun = false;
    this.fifo.fill(0);
    this.head = 0;
    this.tail = 0;
    this.count = 0;
    this.capacity = MTTY_FIFO_SIZE;
    this.triggerLevel = 1;
  }

  /** Whether offsets 0 and 1 currently address the divisor latch (for trace names). */
  get dlabSet(): boolean {
    return this.dlab;
  }

  /** A guest read of the register at `offset` (0-7); other offsets read 0. May raise an interrupt (RBR). */
  read(offset: number): number {
    switch (offset) {
      case UART_RX: {
        if (this.dlab) return this.divisor & 0xff;
        let v = 0;
        if (this.count > 0) {
          v = this.fifo[this.tail]!;
          this.tail = (this.tail + 1) & (MTTY_FIFO_SIZE - 1);
          this.count--;
        }
        // mtty signals "transmitter empty" whenever a read leaves the loopback FIFO empty.
        if (this.count === 0 && (this.ier & UART_IER_THRI) !== 0) this.raise();
        return v;
      }
      case UART_IER:
        return this.dlab ? (this.divisor >>> 8) & 0xff : this.ier & 0x0f;
      case UART_IIR:
        return this.iir();
      case UART_LCR:
        return this.lcr;
      case UART_MCR:
        return this.mcr;
      case UART_LSR: {
        let lsr = 0;
        if (this.count > 0) lsr |= UART_LSR_DR;
        if (this.overrun) lsr |= UART_LSR_OE;
        if (this.count === 0) lsr |= UART_LSR_TEMT | UART_LSR_THRE;
        return lsr;
      }
      case UART_MSR: {
        let msr = UART_MSR_DSR | UART_MSR_DDSR | UART_MSR_DCD;
        // Auto flow control: clear to send only while the FIFO has room.
        if ((this.mcr & UART_MCR_AFE) === 0 || this.count < this.capacity) msr |= UART_MSR_CTS | UART_MSR_DCTS;
        return msr;
      }
      case UART_SCR:
        return this.scr;
      default:
        return 0;
    }
  }

  /** A guest write of `value` (a byte) to the register at `offset` (0-7); other offsets are ignored. */
  write(offset: number, value: number): void {
    const data = value & 0xff;
    switch (offset) {
      case UART_TX:
        if (this.dlab) {
          this.divisor |= data;
          return;
        }
        if (this.count < this.capacity) {
          this.fifo[this.head] = data;
          this.head = (this.head + 1) & (MTTY_FIFO_SIZE - 1);
          this.count++;
          this.overrun = false;
          if ((this.ier & UART_IER_RDI) !== 0 && this.count === this.triggerLevel) this.raise();
        } else {
          this.overrun = true;
          if ((this.ier & UART_IER_RLSI) !== 0) this.raise();
        }
        return;
      case UART_IER:
        if (this.dlab) {
          this.divisor |= data << 8;
          return;
        }
        this.ier = data;
        if ((data & UART_IER_THRI) !== 0 && this.count === 0) this.raise();
        return;
      case UART_FCR:
        this.fcr = data;
        if ((data & (UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT)) !== 0) {
          this.head = 0;
          this.tail = 0;
          this.count = 0;
        }
        this.triggerLevel = 1;
        this.capacity = (data & UART_FCR_ENABLE_FIFO) !== 0 ? MTTY_FIFO_SIZE : 1;
        return;
      case UART_LCR:
        if ((data & UART_LCR_DLAB) !== 0) {
          this.dlab = true;
          this.divisor = 0;
        } else {
          this.dlab = false;
        }
        this.lcr = data;
        return;
      case UART_MCR:
        this.mcr = data;
        if ((this.ier & UART_IER_MSI) !== 0) {
          if ((data & UART_MCR_OUT2) !== 0) this.raise();
          if ((data & (UART_MCR_RTS | UART_MCR_DTR)) !== 0) this.raise();
        }
        return;
      case UART_SCR:
        this.scr = data;
        return;
      default:
        // LSR and MSR are read-only; offsets past 7 do not exist.
        return;
    }
  }

  /** The IIR value: the highest-priority pending source, or NO_INT, with the FIFO bits. */
  private iir(): number {
    const ier = this.ier;
    let code = UART_IIR_NO_INT;
    if ((ier & UART_IER_RLSI) !== 0 && this.overrun) code = UART_IIR_RLSI;
    else if ((ier & UART_IER_RDI) !== 0 && this.count >= this.triggerLevel) code = UART_IIR_RDI;
    else if ((ier & UART_IER_THRI) !== 0 && this.count === 0) code = UART_IIR_THRI;
    else if ((ier & UART_IER_MSI) !== 0 && (this.mcr & (UART_MCR_RTS | UART_MCR_DTR)) !== 0) code = UART_IIR_MSI;
    return code | UART_IIR_FIFO_BITS;
  }

  /** A snapshot (allocates; not for hot paths). */
  inspect(): MttyUartState {
    const fifo: number[] = [];
    for (let i = 0; i < this.count; i++) fifo.push(this.fifo[(this.tail + i) & (MTTY_FIFO_SIZE - 1)]!);
    return {
      ier: this.ier,
      lcr: this.lcr,
      mcr: this.mcr,
      scr: this.scr,
      fcr: this.fcr,
      dlab: this.dlab,
      divisor: this.divisor,
      overrun: this.overrun,
      fifo,
      capacity: this.capacity,
      triggerLevel: this.triggerLevel,
    };
  }
}
