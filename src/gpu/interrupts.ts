/**
 * The GT interrupt logic of a gen8 GPU, bank 0 only (render and blitter engines), plus the master interrupt control,
 * with the semantics GVT-g emulates for its vGPUs (drivers/gpu/drm/i915/gvt/interrupt.c):
 *
 * - An engine event (MI_USER_INTERRUPT, a command-streamer error) sets its bit in ISR, whatever IMR says.
 * - The bit latches into IIR only if it is clear in IMR (the mask); a masked event is lost for IIR.
 * - IIR & IER is what is pending towards the master: the master register's read-only bits GEN8_GT_RCS_IRQ and
 *   GEN8_GT_BCS_IRQ show which engine's field has pending bits.
 * - The interrupt line is (master control bit set) && (IIR & IER) != 0. Its rising edge sends the MSI; with MSI off it
 *   is the INTx level. The owner of this object turns the line into MSI or INTx (see `onLine`).
 * - Software acknowledges by writing 1s to IIR (and the same bits clear in ISR: the model's ISR holds an event until
 *   its acknowledgement, since events here are pulses with no lasting level). The i915 handler pattern, clear the
 *   master bit, read and write back IIR, set the master bit again, produces a new edge if anything is still pending.
 *
 * Not modelled: the second IIR buffer real hardware keeps per bit, the other GT banks (video, GuC/PM), display and PCH
 * interrupts, per-engine RING_IMR.
 */
import {
  GEN8_BCS_IRQ_SHIFT,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_RCS_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GEN8_RCS_IRQ_SHIFT,
} from "./regs.ts";

const RCS_FIELD = 0xffff << GEN8_RCS_IRQ_SHIFT;
const BCS_FIELD = (0xffff << GEN8_BCS_IRQ_SHIFT) >>> 0;

export class GtInterrupts {
  master = 0;
  isr = 0;
  /** All masked at power-on, as on hardware. */
  imr = 0xffffffff;
  iir = 0;
  ier = 0;
  private line = false;

  /** `onLine(level)` runs on every change of the line (true: a rising edge). */
  constructor(private readonly onLine: (level: boolean) => void) {}

  /** The current level of the interrupt line. */
  get level(): boolean {
    return this.line;
  }

  /** Engine events (bits already shifted into the engine's field). */
  event(bits: number): void {
    this.isr = (this.isr | bits) >>> 0;
    const latched = bits & ~this.imr;
    if (latched !== 0) {
      this.iir = (this.iir | latched) >>> 0;
      this.update();
    }
  }

  readMaster(): number {
    const pending = this.iir & this.ier;
    let v = this.master & GEN8_MASTER_IRQ_CONTROL;
    if ((pending & RCS_FIELD) !== 0) v |= GEN8_GT_RCS_IRQ;
    if ((pending & BCS_FIELD) !== 0) v |= GEN8_GT_BCS_IRQ;
    return v >>> 0;
  }

  writeMaster(v: number): void {
    this.master = (v & GEN8_MASTER_IRQ_CONTROL) >>> 0;
    this.update();
  }

  writeImr(v: number): void {
    this.imr = v >>> 0;
  }

  writeIer(v: number): void {
    this.ier = v >>> 0;
    this.update();
  }

  /** RW1C: acknowledges the bits written as 1. */
  writeIir(v: number): void {
    this.iir = (this.iir & ~v) >>> 0;
    this.isr = (this.isr & ~v) >>> 0;
    this.update();
  }

  reset(): void {
    this.master = 0;
    this.isr = 0;
    this.imr = 0xffffffff;
    this.iir = 0;
    this.ier = 0;
    this.update();
  }

  private update(): void {
    const level = (this.master & GEN8_MASTER_IRQ_CONTROL) !== 0 && (this.iir & this.ier) !== 0;
    if (level === this.line) return;
    // Record the new level before signalling: the handler reads and writes these registers re-entrantly.
    this.line = level;
    this.onLine(level);
  }
}
