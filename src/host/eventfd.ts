/**
 * eventfd(2): a 64-bit counter that a device signals and a consumer reads. VFIO's SET_IRQS hands these to the device
 * driver as interrupt triggers; the VMM reads them (or, like KVM's irqfd, listens) to inject interrupts.
 *
 * Semantics kept from Linux: write adds to the counter (EINVAL for 0xffffffffffffffff, EAGAIN on overflow with
 * EFD_NONBLOCK); read returns the counter and resets it (or returns 1 and decrements with EFD_SEMAPHORE); a read of 0
 * with EFD_NONBLOCK fails with EAGAIN (a blocking read is not modelled: it fails with EAGAIN too, stating why).
 * `signal()` is eventfd_signal() as called from kernel code. Listeners stand in for poll/irqfd wakeups.
 */
import { defineTraceEvents, Errno, KernelError } from "../core/index.ts";
import type { FileOps } from "./files.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "eventfd.signal": { id: number; count: number };
  }
}
defineTraceEvents("host", { "eventfd.signal": "eventfd {id} signalled, counter now {count}" });

export const EFD_SEMAPHORE = 1;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

const MAX_COUNT = 2n ** 64n - 2n;
let nextId = 1;

export class EventFd implements FileOps {
  readonly kind = "eventfd";
  readonly id = nextId++;
  private count: bigint;
  private readonly listeners = new Set<(ev: EventFd) => void>();
  /** Total signals ever delivered (for reports). */
  signals = 0;

  constructor(
    initval = 0,
    readonly flags = 0,
  ) {
    if ((flags & ~(EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC)) !== 0) {
      throw new KernelError(Errno.EINVAL, `eventfd: unknown flags 0x${flags.toString(16)}`);
    }
    this.count = BigInt(initval >>> 0);
  }

  get counter(): bigint {
    return this.count;
  }

  /** Kernel-side eventfd_signal(): adds 1 (saturating as Linux does) and wakes listeners. */
  signal(n = 1): void {
    const next = this.count + BigInt(n);
    this.count = next > MAX_COUNT ? MAX_COUNT : next;
    this.signals++;
    for (const l of this.listeners) l(this);
  }

  /** Registers a wake-up callback (poll/irqfd). Returns the function that removes it. */
  onSignal(fn: (ev: EventFd) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** read(2) of the 8-byte counter, as a number of events. */
  consume(): bigint {
    if (this.count === 0n) {
      throw new KernelError(
        Errno.EAGAIN,
        (this.flags & EFD_NONBLOCK) !== 0
          ? `eventfd ${this.id}: counter is 0`
          : `eventfd ${this.id}: counter is 0 and a blocking read would wait forever in this single-threaded model`,
      );
    }
    if ((this.flags & EFD_SEMAPHORE) !== 0) {
      this.count -= 1n;
      return 1n;
    }
    const v = this.count;
    this.count = 0n;
    return v;
  }

  read(buf: Uint8Array): number {
    if (buf.length < 8) throw new KernelError(Errno.EINVAL, `eventfd read needs an 8-byte buffer, got ${buf.length}`);
    const v = this.consume();
    new DataView(buf.buffer, buf.byteOffset, 8).setBigUint64(0, v, true);
    return 8;
  }

  write(buf: Uint8Array): number {
    if (buf.length < 8) throw new KernelError(Errno.EINVAL, `eventfd write needs an 8-byte buffer, got ${buf.length}`);
    const v = new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true);
    if (v === 2n ** 64n - 1n) throw new KernelError(Errno.EINVAL, "eventfd write of 0xffffffffffffffff is invalid");
    if (this.count + v > MAX_COUNT) {
      throw new KernelError(Errno.EAGAIN, `eventfd ${this.id}: adding ${v} would overflow the counter`);
    }
    this.count += v;
    if (v > 0n) {
      this.signals++;
      for (const l of this.listeners) l(this);
    }
    return 8;
  }

  release(): void {
    this.listeners.clear();
  }
}
