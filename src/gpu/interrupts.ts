/**
 * The GT interrupt logic of a gen8/gen9 GPU: four GT banks (0: render and blitter, 1: video, 2: PM, 3: video
 * enhancement) and the master interrupt control, with the semantics GVT-g emulates for its vGPUs
 * (drivers/gpu/drm/i915/gvt/interrupt.c):
 *
 * - An engine event (MI_USER_INTERRUPT, a command-streamer error, a context switch) sets its bit in its bank's ISR,
 *   whatever IMR says.
 * - The bit latches into IIR only if it is clear in IMR (the mask); a masked event is lost for IIR.
 * - IIR & IER is what is pending towards the master: the master register's read-only bits show which engine's field
 *   has pending bits (GEN8_GT_RCS_IRQ bank 0 low half, GEN8_GT_BCS_IRQ bank 0 high half, GEN8_GT_VCS0_IRQ bank 1 low,
 *   GEN8_GT_VCS1_IRQ bank 1 high, GEN8_GT_PM_IRQ bank 2, GEN8_GT_VECS_IRQ bank 3 low).
 * - The interrupt line is (master control bit set) && (IIR & IER of any bank) != 0. Its rising edge sends the MSI;
 *   with MSI off it is the INTx level. The owner of this object turns the line into MSI or INTx (see `onLine`).
 * - Software acknowledges by writing 1s to IIR (and the same bits clear in ISR: the model's ISR holds an event until
 *   its acknowledgement, since events here are pulses with no lasting level). The i915 handler pattern, clear the
 *   master bit, read and write back IIR, set the master bit again, produces a new edge if anything is still pending.
 *
 * `isr`, `imr`, `iir`, `ier` and `event` are bank 0 (what the legacy interface uses); `bank(n)` and `eventIn` reach
 * every bank.
 *
 * Not modelled: the second IIR buffer real hardware keeps per bit, display and PCH interrupts, per-engine RING_IMR,
 * PM events (bank 2 exists and holds its registers, nothing raises it).
 */
import {
  GEN8_GT_BANKS,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_PM_IRQ,
  GEN8_GT_RCS_IRQ,
  GEN8_GT_VCS0_IRQ,
  GEN8_GT_VCS1_IRQ,
  GEN8_GT_VECS_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
} from "./regs.ts";

const LOW_FIELD = 0xffff;
const HIGH_FIELD = 0xffff0000;

/** One GT bank's registers. */
export interface GtIrqBank {
  readonly isr: number;
  readonly imr: number;
  readonly iir: number;
  readonly ier: number;
}

export class GtInterrupts {
  master = 0;
  private readonly isrs = new Uint32Array(GEN8_GT_BANKS);
  /** All masked at power-on, as on hardware. */
  private readonly imrs = new Uint32Array(GEN8_GT_BANKS).fill(0xffffffff);
  private readonly iirs = new Uint32Array(GEN8_GT_BANKS);
  private readonly iers = new Uint32Array(GEN8_GT_BANKS);
  private line = false;

  /** `onLine(level)` runs on every change of the line (true: a rising edge). */
  constructor(private readonly onLine: (level: boolean) => void) {}

  /** The current level of the interrupt line. */
  get level(): boolean {
    return this.line;
  }

  // Bank 0, the legacy interface's.
  get isr(): number {
    return this.isrs[0]!;
  }
  get imr(): number {
    return this.imrs[0]!;
  }
  get iir(): number {
    return this.iirs[0]!;
  }
  get ier(): number {
    return this.iers[0]!;
  }

  /** Bank `n`'s registers (a snapshot). */
  bank(n: number): GtIrqBank {
    return { isr: this.isrs[n]!, imr: this.imrs[n]!, iir: this.iirs[n]!, ier: this.iers[n]! };
  }

  /** Engine events of bank 0 (bits already shifted into the engine's field). */
  event(bits: number): void {
    this.eventIn(0, bits);
  }

  /** Engine events of bank `n` (bits already shifted into the engine's field). */
  eventIn(n: number, bits: number): void {
    this.isrs[n] = this.isrs[n]! | bits;
    const latched = bits & ~this.imrs[n]!;
    if (latched !== 0) {
      this.iirs[n] = this.iirs[n]! | latched;
      this.update();
    }
  }

  readMaster(): number {
    let v = this.master & GEN8_MASTER_IRQ_CONTROL;
    const p0 = this.iirs[0]! & this.iers[0]!;
    const p1 = this.iirs[1]! & this.iers[1]!;
    if ((p0 & LOW_FIELD) !== 0) v |= GEN8_GT_RCS_IRQ;
    if ((p0 & HIGH_FIELD) !== 0) v |= GEN8_GT_BCS_IRQ;
    if ((p1 & LOW_FIELD) !== 0) v |= GEN8_GT_VCS0_IRQ;
    if ((p1 & HIGH_FIELD) !== 0) v |= GEN8_GT_VCS1_IRQ;
    if ((this.iirs[2]! & this.iers[2]!) !== 0) v |= GEN8_GT_PM_IRQ;
    if ((this.iirs[3]! & this.iers[3]! & LOW_FIELD) !== 0) v |= GEN8_GT_VECS_IRQ;
    return v >>> 0;
  }

  writeMaster(v: number): void {
    this.master = (v & GEN8_MASTER_IRQ_CONTROL) >>> 0;
    this.update();
  }

  writeImr(v: number, n = 0): void {
    this.imrs[n] = v >>> 0;
  }

  writeIer(v: number, n = 0): void {
    this.iers[n] = v >>> 0;
    this.update();
  }

  /** RW1C: acknowledges the bits written as 1. */
  writeIir(v: number, n = 0): void {
    this.iirs[n] = this.iirs[n]! & ~v;
    this.isrs[n] = this.isrs[n]! & ~v;
    this.update();
  }

  reset(): void {
    this.master = 0;
    this.isrs.fill(0);
    this.imrs.fill(0xffffffff);
    this.iirs.fill(0);
    this.iers.fill(0);
    this.update();
  }

  private update(): void {
    let pending = false;
    for (let n = 0; n < GEN8_GT_BANKS; n++) if ((this.iirs[n]! & this.iers[n]!) !== 0) pending = true;
    const level = (this.master & GEN8_MASTER_IRQ_CONTROL) !== 0 && pending;
    if (level === this.line) return;
    // Record the new level before signalling: the handler reads and writes these registers re-entrantly.
    this.line = level;
    this.onLine(level);
  }
}
