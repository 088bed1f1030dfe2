/**
 * One legacy ring buffer as the guest driver drives it (i915's intel_ring: begin / emit / advance): a power-of-two
 * number of pages of guest memory mapped at a GMA, whose START/CTL/HEAD/TAIL registers the driver programs. The CPU
 * writes commands at the software tail through guest memory, then publishes them by writing RING_TAIL; the engine
 * (or, on a vGPU, the vendor driver's command scanner) consumes from RING_HEAD to RING_TAIL.
 *
 * Space: the free space is (HEAD - tail - 64) mod size: i915's I915_RING_FREE_SPACE gap, more than the datasheet's
 * 8 bytes (any gap works; it only has to keep a full ring from looking empty, HEAD == TAIL meaning empty). When a command sequence does not fit before the end of the ring, the rest of
 * the ring is padded with MI_NOOP and writing restarts at offset 0 (the wrap); a sequence is never split across the
 * end (the GPU would accept a command straddling it; i915 never writes one, and neither does this driver). TAIL is always qword aligned (the datasheet's TAIL_ADDR bits 3..20).
 *
 * Not modelled: the wrap counter in RING_HEAD's upper bits (ignored here), batch-buffer chaining in the ring.
 *
 * Invariants: 0 <= tail < size and tail % 4 == 0; after `advance` tail % 8 == 0; no emission ever overtakes HEAD.
 */
import { Errno, type Gma, type Gpa, gpa, KernelError } from "../core/index.ts";
import { HEAD_ADDR, MI_NOOP, RING_HEAD, RING_TAIL } from "../gpu/index.ts";
import type { GuestRam } from "./platform.ts";

/** Bytes kept free between the software tail and HEAD (i915's I915_RING_FREE_SPACE). */
export const RING_FREE_SPACE = 64;

/** What a ring needs from its driver: its engine's registers and a way to let time pass. */
export interface RingIo {
  /** Reads a 32-bit register at an offset from the engine's MMIO base. */
  readEngine(offset: number): number;
  writeEngine(offset: number, value: number): void;
  /** Lets guest time pass until `done()` or the driver's timeout; returns whether `done()` became true. */
  wait(done: () => boolean): boolean;
}

export class GuestRing {
  /** Software tail: where the next dword goes (bytes from the ring's start). */
  tail = 0;
  /** The last value written to RING_TAIL. */
  published = 0;
  /** Bytes of commands published so far (TAIL writes), including wrap padding. */
  bytesSubmitted = 0;
  /** Times the ring wrapped. */
  wraps = 0;
  private needed = 0;
  private readonly hasRoom = (): boolean => this.space() >= this.needed;

  constructor(
    private readonly memory: GuestRam,
    private readonly io: RingIo,
    /** Guest-physical address of the ring's first byte (its pages are contiguous). */
    readonly gpa: Gpa,
    /** Graphics memory address the ring is mapped at (what RING_START holds). */
    readonly gma: Gma,
    /** Bytes, a multiple of 4 KiB. */
    readonly size: number,
  ) {}

  /** The engine's RING_HEAD offset. */
  head(): number {
    return this.io.readEngine(RING_HEAD) & HEAD_ADDR;
  }

  /** Bytes that may be written at the tail now without overtaking HEAD. */
  space(): number {
    const s = (this.head() - this.tail - RING_FREE_SPACE) % this.size;
    return s < 0 ? s + this.size : s;
  }

  /** Whether the engine has consumed everything published. */
  idle(): boolean {
    return this.head() === this.tail;
  }

  /**
   * Makes room for `dwords` contiguous dwords at the tail, wrapping if they do not fit before the end. Returns false
   * when the engine did not free enough space before the driver's timeout (nothing has been written then).
   * EINVAL if the sequence could never fit this ring.
   */
  begin(dwords: number): boolean {
    // Room for a qword-alignment MI_NOOP at `advance` as well.
    const bytes = dwords * 4 + 8;
    if (bytes > this.size - RING_FREE_SPACE) {
      throw new KernelError(
        Errno.EINVAL,
        `a ${dwords * 4}-byte command sequence cannot fit a ${this.size}-byte ring (use a batch buffer or a larger ring)`,
      );
    }
    const remain = this.size - this.tail;
    if (bytes > remain) {
      // Wrap: pad the rest of the ring with MI_NOOP once the engine has left it, then restart at offset 0.
      if (!this.waitForSpace(remain)) return false;
      for (let off = this.tail; off < this.size; off += 4) this.memory.writeU32(gpa(this.gpa + off), MI_NOOP);
      this.tail = 0;
      this.wraps++;
      this.bytesSubmitted += remain;
    }
    return this.waitForSpace(bytes);
  }

  private waitForSpace(bytes: number): boolean {
    this.needed = bytes;
    return this.space() >= bytes || this.io.wait(this.hasRoom);
  }

  /** Writes one dword at the tail (after `begin` reserved room). */
  emit(dword: number): void {
    this.memory.writeU32(gpa(this.gpa + this.tail), dword >>> 0);
    this.tail += 4;
    this.bytesSubmitted += 4;
  }

  /** Writes `words` at the tail. */
  emitAll(words: Uint32Array): void {
    for (let i = 0; i < words.length; i++) this.emit(words[i]!);
  }

  /** Pads to a qword boundary and publishes everything written: RING_TAIL = tail. */
  advance(): void {
    if (this.tail % 8 !== 0) this.emit(MI_NOOP);
    if (this.tail === this.size) this.tail = 0;
    this.published = this.tail;
    this.io.writeEngine(RING_TAIL, this.tail);
  }

  /** Forgets unpublished work and restarts at `offset` (after a reset or a rejected submission). */
  resync(offset: number): void {
    this.tail = offset;
    this.published = offset;
  }
}
