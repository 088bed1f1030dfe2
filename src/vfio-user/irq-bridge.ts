/**
 * The interrupt bridge of a session: DEVICE_SET_IRQS with eventfds that came over SCM_RIGHTS, turned into model
 * eventfds the device can signal. The fds arrive with the message (none: every vector de-assigned); any fd that is not
 * an eventfd is refused with EINVAL before anything changes. Each becomes a model EventFd in the connection's Process
 * whose signal adds 1 to the real eventfd without ever blocking (made non-blocking first: a full counter is a lost
 * edge, counted in `lostSignals`, not a server frozen by a client that never reads). The ioctl gets the model fds.
 * Entries superseded by a later SET_IRQS (or disabled with count 0 and DATA_NONE|TRIGGER) are closed, real fd
 * included.
 */
import { defineTraceEvents, Errno, KernelError, type Tracer, writeU32LE } from "../core/index.ts";
import type { EventFd, Process } from "../host/index.ts";
import {
  uapi,
  VFIO_DEVICE_SET_IRQS,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  vfioIrqSetDataSize,
} from "../vfio/index.ts";
import { closeFd, eventfdSignal, fdTarget, isEventfd } from "./native.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfiouser.irq.eventfds": { device: string; index: number; start: number; count: number; fds: number };
    "vfiouser.irq.release": { device: string; index: number; vector: number };
  }
}
defineTraceEvents("vfio-user", {
  "vfiouser.irq.eventfds": "{device}: SET_IRQS index {index} [{start}, +{count}) with {fds} eventfd(s)",
  "vfiouser.irq.release": "{device}: eventfd of irq {index} vector {vector} released",
});

interface IrqEntry {
  readonly realFd: number;
  readonly modelFd: number;
  readonly off: () => void;
}

export class IrqBridge {
  /** By "index:vector". */
  private readonly irqs = new Map<string, IrqEntry>();
  /** Interrupt signals the client's eventfd could not take (counter full, or the fd failed). */
  lostSignals = 0;

  constructor(
    private readonly device: string,
    private readonly tracer: Tracer,
  ) {}

  /** Bridged eventfds. */
  get size(): number {
    return this.irqs.size;
  }

  /**
   * DEVICE_SET_IRQS: `payload` is the vfio_irq_set (and its data for DATA_NONE/BOOL), `fds` the eventfds that came
   * with it; the fds taken are replaced by -1 in `fds` (the rest stay the caller's to close).
   */
  set(proc: Process, deviceFd: number, payload: Uint8Array, fds: number[]): void {
    const hdr = uapi.VfioIrqSet.decodeMin(payload);
    const type = hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
    const minsz = uapi.VfioIrqSet.minsz;
    if (hdr.argsz < minsz) throw new KernelError(Errno.EINVAL, `DEVICE_SET_IRQS: argsz ${hdr.argsz} is below ${minsz}`);
    if (type !== VFIO_IRQ_SET_DATA_EVENTFD) {
      if (fds.length > 0) throw new KernelError(Errno.EINVAL, "DEVICE_SET_IRQS: fds given without DATA_EVENTFD");
      const size = vfioIrqSetDataSize(hdr.flags, hdr.count);
      if (payload.length < minsz + size) {
        throw new KernelError(
          Errno.EINVAL,
          `DEVICE_SET_IRQS: ${hdr.count} value(s) need ${size} data bytes, the message carries ${payload.length - minsz}`,
        );
      }
      const arg = payload.slice(0, minsz + size);
      writeU32LE(arg, 0, minsz + size);
      proc.ioctl(deviceFd, VFIO_DEVICE_SET_IRQS, arg);
      if (
        type === VFIO_IRQ_SET_DATA_NONE &&
        hdr.count === 0 &&
        (hdr.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK) === VFIO_IRQ_SET_ACTION_TRIGGER
      ) {
        this.release(proc, hdr.index, 0, Number.MAX_SAFE_INTEGER);
      }
      return;
    }
    if (hdr.count > 4096) throw new KernelError(Errno.EINVAL, `DEVICE_SET_IRQS: count ${hdr.count} is too large`);
    if (fds.length !== 0 && fds.length !== hdr.count) {
      throw new KernelError(
        Errno.EINVAL,
        `DEVICE_SET_IRQS: count ${hdr.count} but ${fds.length} eventfd(s) came (all of them, or none to de-assign)`,
      );
    }
    // Every fd must be an eventfd: the server signals them, and a pipe (or anything else) could block it.
    for (let i = 0; i < fds.length; i++) {
      if (!isEventfd(fds[i]!)) {
        throw new KernelError(
          Errno.EINVAL,
          `DEVICE_SET_IRQS: fd ${i} of index ${hdr.index} is not an eventfd (it is ${fdTarget(fds[i]!) ?? "unknown"})`,
        );
      }
    }
    const arg = new Uint8Array(minsz + 4 * hdr.count);
    arg.set(payload.subarray(0, minsz));
    writeU32LE(arg, 0, arg.length);
    const fresh: IrqEntry[] = [];
    try {
      for (let i = 0; i < hdr.count; i++) {
        if (fds.length === 0) {
          writeU32LE(arg, minsz + 4 * i, 0xffff_ffff);
          continue;
        }
        const realFd = fds[i]!;
        fds[i] = -1;
        const entry = this.bridge(proc, realFd);
        fresh.push(entry);
        writeU32LE(arg, minsz + 4 * i, entry.modelFd);
      }
      proc.ioctl(deviceFd, VFIO_DEVICE_SET_IRQS, arg);
    } catch (e) {
      for (const x of fresh) this.closeEntry(proc, x);
      throw e;
    }
    this.release(proc, hdr.index, hdr.start, hdr.count);
    for (let i = 0; i < fresh.length; i++) this.irqs.set(`${hdr.index}:${hdr.start + i}`, fresh[i]!);
    if (this.tracer.enabled) {
      this.tracer.emit("vfiouser.irq.eventfds", {
        device: this.device,
        index: hdr.index,
        start: hdr.start,
        count: hdr.count,
        fds: fresh.length,
      });
    }
  }

  /** Closes the bridged eventfds of vectors [start, start+count) of `index` (`proc` gone: real fds only). */
  release(proc: Process | undefined, index: number, start: number, count: number): void {
    for (const [key, e] of this.irqs) {
      const [i, v] = key.split(":").map(Number) as [number, number];
      if (i !== index || v < start || v >= start + count) continue;
      this.irqs.delete(key);
      if (proc) this.closeEntry(proc, e);
      else closeFd(e.realFd);
      if (this.tracer.enabled) this.tracer.emit("vfiouser.irq.release", { device: this.device, index: i, vector: v });
    }
  }

  /** Closes every bridged eventfd (the connection is going). */
  closeAll(proc: Process | undefined): void {
    for (const e of this.irqs.values()) {
      if (proc) this.closeEntry(proc, e);
      else closeFd(e.realFd);
    }
    this.irqs.clear();
  }

  /** A model eventfd in `proc` whose every signal adds 1 to the client's real eventfd. */
  private bridge(proc: Process, realFd: number): IrqEntry {
    let modelFd: number;
    try {
      modelFd = proc.eventfd();
    } catch (e) {
      closeFd(realFd);
      throw e;
    }
    const ev: EventFd = proc.eventfdOf(modelFd);
    const off = ev.onSignal((x) => {
      x.consume();
      // Never blocks: a full counter (the client does not read it) loses this edge instead of freezing the server.
      const r = eventfdSignal(realFd);
      if (r < 0) this.lostSignals++;
    });
    return { realFd, modelFd, off };
  }

  private closeEntry(proc: Process, e: IrqEntry): void {
    e.off();
    if (proc.isAlive) {
      try {
        proc.close(e.modelFd);
      } catch {
        // Already gone with the process.
      }
    }
    closeFd(e.realFd);
  }
}
