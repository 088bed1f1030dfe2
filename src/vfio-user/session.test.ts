/**
 * A Session over an in-memory transport (no socket, no reactor, no fds): what injecting the transport buys, as
 * libvfio-user's transport_ops do. Frames go in through `onFrame`, replies are collected from the transport.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, KernelError, readU32LE, writeU32LE } from "../core/index.ts";
import { uapi, VFIO_PCI_CONFIG_REGION_INDEX } from "../vfio/index.ts";
import { encodeVersion } from "./caps.ts";
import type { Frame } from "./connection.ts";
import {
  DMA_RW_LAYOUTS,
  HEADER_SIZE,
  VFIO_USER_DEVICE_GET_INFO,
  VFIO_USER_DMA_MAP,
  VFIO_USER_DMA_UNMAP,
  VFIO_USER_F_ERROR,
  VFIO_USER_F_TYPE_COMMAND,
  VFIO_USER_REGION_READ,
  VFIO_USER_VERSION,
  VfioUserDmaMap,
  VfioUserDmaUnmap,
} from "./protocol.ts";
import { Session } from "./session.ts";
import { serverSystem } from "./testing/harness.ts";
import type { SessionTransport } from "./transport.ts";

interface Sent {
  readonly id: number;
  readonly cmd: number;
  readonly flags: number;
  readonly errorNo: number;
  readonly payload: Uint8Array;
}

/** A transport that records what the session sends and never blocks (no DMA_READ round trips here). */
class MemoryTransport implements SessionTransport {
  readonly sent: Sent[] = [];
  closed = false;
  closeReason: string | undefined;
  private buf = new Uint8Array(64 * 1024);

  setMaxSendFds(_n: number): void {}
  payloadBuffer(len: number): Uint8Array {
    if (len > this.buf.length) this.buf = new Uint8Array(len);
    return this.buf.subarray(0, len);
  }
  commit(id: number, cmd: number, flags: number, errorNo: number, len: number): void {
    if (this.closed) throw new KernelError(Errno.ENOTCONN, "closed");
    this.sent.push({ id, cmd, flags, errorNo, payload: this.buf.slice(0, len) });
  }
  send(id: number, cmd: number, flags: number, errorNo: number, payload?: Uint8Array): void {
    const p = this.payloadBuffer(payload?.length ?? 0);
    if (payload !== undefined) p.set(payload);
    this.commit(id, cmd, flags, errorNo, payload?.length ?? 0);
  }
  waitFor(): Frame {
    throw new KernelError(Errno.ETIMEDOUT, "the in-memory transport has no peer to wait for");
  }
  close(reason = "closed locally"): void {
    this.closed = true;
    this.closeReason = reason;
  }
}

function frame(id: number, cmd: number, payload: Uint8Array): Frame {
  return { id, cmd, size: HEADER_SIZE + payload.length, flags: VFIO_USER_F_TYPE_COMMAND, errorNo: 0, payload, fds: [] };
}

/** A session on mtty over a MemoryTransport, before VERSION. */
function mttySession() {
  const s = serverSystem();
  const host = s.system.host;
  const group = s.system.mdev.device(s.mttyUuid)!.group;
  const t = new MemoryTransport();
  const session = new Session(
    {
      host,
      group,
      device: s.mttyUuid,
      maxMsgFds: 8,
      maxDataXferSize: 1 << 20,
      maxDmaMaps: 64,
      replyTimeoutMs: 1000,
      dmaRwLayout: DMA_RW_LAYOUTS.qemu,
    },
    t,
  );
  return { s, host, t, session };
}

const versionPayload = () =>
  encodeVersion(0, 0, { maxMsgFds: 4, maxDataXferSize: 1 << 20, maxDmaMaps: 64, pgsizes: 4096, writeMultiple: false });

describe("Session over an in-memory transport", () => {
  it("negotiates, answers device info and config reads, errors as replies, and releases everything", () => {
    const { s, host, t, session } = mttySession();
    const procs = host.processes().length;
    session.onFrame(frame(1, VFIO_USER_DEVICE_GET_INFO, new Uint8Array(16)));
    assert.equal(t.sent.at(-1)!.flags & VFIO_USER_F_ERROR, VFIO_USER_F_ERROR, "nothing before VERSION");
    assert.equal(t.sent.at(-1)!.errorNo, Errno.EINVAL);

    session.onFrame(frame(2, VFIO_USER_VERSION, versionPayload()));
    assert.equal(t.sent.at(-1)!.errorNo, 0);
    assert.equal(host.processes().length, procs + 1, "VERSION opened the device from a fresh host process");

    const q = new Uint8Array(16);
    writeU32LE(q, 0, 16);
    session.onFrame(frame(3, VFIO_USER_DEVICE_GET_INFO, q));
    const info = uapi.VfioDeviceInfo.decodeMin(t.sent.at(-1)!.payload);
    assert.deepEqual([info.argsz, info.num_regions, info.num_irqs], [16, 9, 5]);

    const rd = new Uint8Array(16);
    writeU32LE(rd, 8, VFIO_PCI_CONFIG_REGION_INDEX);
    writeU32LE(rd, 12, 4);
    session.onFrame(frame(4, VFIO_USER_REGION_READ, rd));
    assert.equal(readU32LE(t.sent.at(-1)!.payload, 16), 0x32534348, "mtty's vendor:device through vfio-core");

    session.onFrame(frame(5, 200, new Uint8Array(0)));
    assert.deepEqual([t.sent.at(-1)!.id, t.sent.at(-1)!.errorNo], [5, Errno.EINVAL], "unknown command");
    assert.equal(t.closed, false);

    assert.deepEqual(session.release("test over"), []);
    assert.equal(host.processes().length, procs, "the connection's process is gone");
    assert.equal(s.system.vfio.inspect().containers.length, 0);
  });

  it("checks DMA_MAP and DMA_UNMAP as libvfio-user does: size, argsz, addresses past 2^53, flags", () => {
    const { t, session } = mttySession();
    session.onFrame(frame(1, VFIO_USER_VERSION, versionPayload()));
    const map = (fields: { argsz?: number; flags?: number; offset?: bigint; addr: bigint; size: bigint }, len = 32) => {
      const p = new Uint8Array(len);
      VfioUserDmaMap.encode({ argsz: 32, flags: 3, offset: 0n, ...fields }, p.length >= 32 ? p : undefined);
      session.onFrame(frame(2, VFIO_USER_DMA_MAP, len >= 32 ? p : p.subarray(0, len)));
      return t.sent.at(-1)!.errorNo;
    };
    const unmap = (flags: number, addr: bigint, size: bigint) => {
      session.onFrame(frame(3, VFIO_USER_DMA_UNMAP, VfioUserDmaUnmap.encode({ argsz: 24, flags, addr, size })));
      return t.sent.at(-1)!.errorNo;
    };
    assert.equal(map({ addr: 0x10000n, size: 0x1000n }, 24), Errno.EINVAL, "a payload shorter than the struct");
    assert.equal(map({ argsz: 16, addr: 0x10000n, size: 0x1000n }), Errno.EINVAL, "argsz below the struct");
    assert.equal(map({ addr: 2n ** 53n, size: 0x1000n }), Errno.EINVAL, "addr at 2^53");
    assert.equal(map({ addr: 0x10000n, size: 2n ** 64n - 4096n }), Errno.EINVAL, "size past 2^53");
    assert.equal(map({ addr: 0x10000n, size: 0x2000n }), 0, "a window without an fd (reached by DMA_READ/WRITE)");
    assert.equal(map({ addr: 0x11000n, size: 0x1000n }), Errno.EEXIST);
    assert.equal(unmap(0, 2n ** 60n, 0x1000n), Errno.ENOENT, "nothing can be mapped past 2^53");
    assert.equal(unmap(0, 0x10000n, 0x1000n), Errno.ENOENT, "not the window's size");
    assert.equal(unmap(2, 0x10000n, 0n), Errno.EINVAL, "UNMAP_ALL with an address");
    assert.equal(unmap(1, 0x10000n, 0x2000n), Errno.EOPNOTSUPP, "dirty bitmaps are not offered");
    assert.equal(unmap(8, 0x10000n, 0x2000n), Errno.EINVAL, "unknown flag");
    assert.equal(unmap(0, 0x10000n, 0x2000n), 0);
    assert.deepEqual(
      [...t.sent.at(-1)!.payload.subarray(8, 24)],
      [...VfioUserDmaUnmap.encode({ argsz: 24, flags: 0, addr: 0x10000n, size: 0x2000n }).subarray(8, 24)],
      "the reply echoes the request",
    );
    session.release("test over");
  });
});
