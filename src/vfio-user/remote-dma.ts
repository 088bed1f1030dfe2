/**
 * DMA into a client's window that came without an fd (QEMU's ROM and BIOS): the server cannot map it, so each access
 * is a DMA_READ or DMA_WRITE message to the client and its reply, synchronous as the protocol is (other messages that
 * arrive meanwhile are deferred), in chunks of the smaller of both sides' max_data_xfer_size. The message layout is
 * QEMU 10.2's (data at 12) or the spec's (data at 16), as configured.
 */
import {
  defineTraceEvents,
  Errno,
  KernelError,
  readU32LE,
  readU64Number,
  type Tracer,
  writeU32LE,
  writeU64LE,
} from "../core/index.ts";
import type { NegotiatedCaps } from "./caps.ts";
import { isReply } from "./connection.ts";
import {
  commandName,
  DMA_RW_FIXED,
  type DmaRwLayout,
  VFIO_USER_DMA_READ,
  VFIO_USER_DMA_WRITE,
  VFIO_USER_F_ERROR,
  VFIO_USER_F_TYPE_COMMAND,
} from "./protocol.ts";
import type { SessionTransport } from "./transport.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfiouser.dma.rw": { device: string; iova: number; length: number; write: boolean };
  }
}
defineTraceEvents("vfio-user", {
  "vfiouser.dma.rw": "{device}: DMA {write} {length} bytes at {iova} through the client (DMA_READ/DMA_WRITE)",
});

export interface RemoteDmaOptions {
  readonly device: string;
  readonly tracer: Tracer;
  readonly layout: DmaRwLayout;
  /** How long one DMA_READ/DMA_WRITE reply may take (then ETIMEDOUT and the connection closes). */
  readonly replyTimeoutMs: number;
}

export class RemoteDma {
  private nextId = 0;

  constructor(
    private readonly transport: SessionTransport,
    private readonly opts: RemoteDmaOptions,
  ) {}

  /** Copies `buf` to (write) or from the client's memory at `iova`, through DMA_WRITE/DMA_READ round trips. */
  rw(caps: NegotiatedCaps, iova: number, buf: Uint8Array, write: boolean): void {
    const { layout, tracer: t, device } = this.opts;
    const chunkMax = Math.max(1, Math.min(caps.clientMaxDataXferSize, caps.serverMaxDataXferSize));
    if (t.enabled) t.emit("vfiouser.dma.rw", { device, iova, length: buf.length, write });
    for (let done = 0; done < buf.length; ) {
      const n = Math.min(chunkMax, buf.length - done);
      const id = this.nextId;
      this.nextId = (this.nextId + 1) & 0xffff;
      const cmd = write ? VFIO_USER_DMA_WRITE : VFIO_USER_DMA_READ;
      const len = DMA_RW_FIXED + (write ? n : 0);
      const p = this.transport.payloadBuffer(len);
      p.fill(0, 0, DMA_RW_FIXED);
      writeU64LE(p, 0, iova + done);
      if (layout.countBytes === 8) writeU64LE(p, 8, n);
      else writeU32LE(p, 8, n);
      if (write) p.set(buf.subarray(done, done + n), layout.dataOffset);
      this.transport.commit(id, cmd, VFIO_USER_F_TYPE_COMMAND, 0, len, undefined, true);
      const r = this.transport.waitFor(
        (x) => isReply(x) && x.id === id,
        this.opts.replyTimeoutMs,
        "defer",
        `${write ? "DMA_WRITE" : "DMA_READ"} of ${n} bytes at 0x${(iova + done).toString(16)}`,
      );
      if ((r.flags & VFIO_USER_F_ERROR) !== 0) {
        throw new KernelError(
          (r.errorNo || Errno.EIO) as Errno,
          `the client refused ${commandName(cmd)} at 0x${(iova + done).toString(16)} (errno ${r.errorNo})`,
        );
      }
      if (!write) {
        const got = layout.countBytes === 8 ? readU64Number(r.payload, 8, "count") : readU32LE(r.payload, 8);
        if (r.payload.length < layout.dataOffset + n || got < n) {
          throw new KernelError(Errno.EIO, `the client's DMA_READ reply carries ${got} of the ${n} bytes asked for`);
        }
        buf.set(r.payload.subarray(layout.dataOffset, layout.dataOffset + n), done);
      }
      done += n;
    }
  }
}
