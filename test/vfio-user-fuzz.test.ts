/**
 * Fuzzing the vfio-user server (in a child process) with random and mutated messages over real sockets: garbage
 * bytes, unknown commands, wrong sizes, lengths past the buffer, msg_size of 0, 15 or 4 GiB, truncated payloads,
 * mutated fields of every command, bad fds, too many fds, fds where none belong, replies where commands are expected,
 * server-to-client commands sent to the server. Bounded: a seeded RNG, ~400 messages over 30 connections.
 *
 * The server must answer with an error or drop the connection, never crash, never leak: after every connection its
 * host model and its fd table are what they were, and a well-behaved client is served at the end.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Rng } from "../src/core/index.ts";
import { VfioUserClient } from "../src/vfio-user/index.ts";
import {
  closeFd,
  connectUnix,
  eventfdCreate,
  MsgIo,
  memfdCreate,
  NativeBuffer,
  POLLIN,
  pollFd,
  unixSocketPair,
} from "../src/vfio-user/native.ts";
import { DMA_TEST_REG } from "../src/vfio-user/testing/dma-device.ts";
import { type ChildState, ServerChild } from "../src/vfio-user/testing/harness.ts";

const CONNECTIONS = 30;
const MESSAGES_PER_CONNECTION = 20;

let server: ServerChild;
let baseline: ChildState;

before(async () => {
  server = await ServerChild.start({ writeTimeoutMs: 300, replyTimeoutMs: 150 });
  const c = VfioUserClient.connect({ socketPath: server.sockets.dma });
  c.close();
  baseline = await server.waitState((s) => s.servers.dma.connection === undefined);
});
after(async () => {
  await server.stop();
});

/** One fuzzing connection: raw sends (with fds) and a non-blocking drain of whatever comes back. */
class FuzzConnection {
  readonly fd: number;
  private readonly io = new MsgIo(32);
  private readonly buf = new NativeBuffer(64 * 1024);
  closedByServer = false;
  sent = 0;

  constructor(path: string) {
    this.fd = connectUnix(path);
  }

  /** Sends the bytes; false once the server stopped taking them (full socket or gone). */
  send(bytes: Uint8Array, fds?: number[]): boolean {
    this.buf.bytes.set(bytes.subarray(0, this.buf.size));
    const n = this.io.send(this.fd, this.buf.address, Math.min(bytes.length, this.buf.size), fds, false);
    if (n >= 0) this.sent++;
    else if (n !== -11) this.closedByServer = true;
    return n >= 0;
  }

  drain(): void {
    for (;;) {
      const r = this.io.recv(this.fd, this.buf.address, this.buf.size);
      for (let i = 0; i < this.io.fdCount; i++) closeFd(this.io.fds[i]!);
      // EOF, or ECONNRESET when the server closed with our bytes still unread.
      if (r === 0 || (r < 0 && r !== -11)) this.closedByServer = true;
      if (r <= 0) return;
    }
  }

  close(): void {
    closeFd(this.fd);
    this.io.free();
    this.buf.free();
  }
}

function header(id: number, cmd: number, size: number, flags: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint16(0, id, true);
  v.setUint16(2, cmd, true);
  v.setUint32(4, size >>> 0, true);
  v.setUint32(8, flags >>> 0, true);
  return h;
}

function message(id: number, cmd: number, payload: Uint8Array, flags = 0, size?: number): Uint8Array {
  const out = new Uint8Array(16 + payload.length);
  out.set(header(id, cmd, size ?? out.length, flags));
  out.set(payload, 16);
  return out;
}

const VERSION_OK = Buffer.from(
  '\0\0\0\0{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"write_multiple":true}}\0',
  "latin1",
);

/** A payload shaped like `cmd`'s, with fields drawn to be wrong often and right sometimes. */
function shaped(rng: Rng, cmd: number): Uint8Array {
  const pick = <T>(xs: readonly T[]): T => rng.pick(xs);
  const big = () => pick([0, 1, 4096, 0x100000, 0xfff, 2 ** 32 - 1, 2 ** 40, rng.int(0, 2 ** 32 - 1)]);
  const p = new Uint8Array(pick([0, 4, 8, 16, 20, 24, 32, 48, 64, 200]));
  const v = new DataView(p.buffer);
  const set32 = (at: number, x: number) => {
    if (at + 4 <= p.length) v.setUint32(at, x >>> 0, true);
  };
  const set64 = (at: number, x: number) => {
    if (at + 8 <= p.length) v.setBigUint64(at, BigInt(x), true);
  };
  switch (cmd) {
    case 2: // DMA_MAP: argsz, flags, offset, addr, size
      set32(0, pick([32, 0, 31, 1000]));
      set32(4, pick([0, 1, 2, 3, 4, 0xffff]));
      set64(8, pick([0, 4096, 123]));
      set64(16, pick([0, 0x100000, 0xf0000, 2 ** 52, rng.int(0, 2 ** 32) * 4096]));
      set64(24, pick([0, 4096, 0x10000, 0x123, 2 ** 50]));
      break;
    case 3: // DMA_UNMAP
      set32(0, pick([24, 0, 100]));
      set32(4, pick([0, 1, 2, 3, 8]));
      set64(8, big());
      set64(16, big());
      break;
    case 4: // GET_INFO
    case 7: // GET_IRQ_INFO
      set32(0, pick([16, 0, 15, 100000, 64]));
      set32(8, pick([0, 1, 4, 5, 9, 0xffffffff]));
      break;
    case 5: // GET_REGION_INFO
    case 6: // GET_REGION_IO_FDS
      set32(0, pick([32, 0, 16, 31, 65536, 65537, 0xffffffff, 128]));
      set32(4, pick([0, 1]));
      set32(8, pick([0, 2, 7, 8, 9, 100, 0xffffffff]));
      set32(12, pick([0, 5]));
      break;
    case 8: // SET_IRQS: argsz, flags, index, start, count (+ data)
      set32(0, pick([20, 0, 24, 1000]));
      set32(4, pick([0x21, 0x24, 0x22, 0x09, 0x11, 0x3f, 0, 0xffffffff]));
      set32(8, pick([0, 1, 2, 4, 5]));
      set32(12, pick([0, 1, 0xffffffff]));
      set32(16, pick([0, 1, 2, 5000, 0xffffffff]));
      break;
    case 9: // REGION_READ / REGION_WRITE: offset, region, count, data
    case 10:
      set64(0, pick([0, 1, 7, DMA_TEST_REG.CMD, 0xff, 0x1000, 2 ** 40 - 1, 2 ** 41]));
      set32(8, pick([0, 1, 2, 7, 8, 9, 0xffffffff]));
      set32(12, pick([0, 1, 4, 8, 4096, 0x100000, 0x100001, 0xffffffff]));
      for (let i = 16; i < p.length; i++) p[i] = rng.int(0, 255);
      break;
    case 15: // WRITE_MULTI: wr_cnt, entries
      set64(0, pick([0, 1, 2, 200, 201, 2 ** 40]));
      for (let e = 8; e + 24 <= p.length; e += 24) {
        set64(e, pick([0, 7, 0x18, 2 ** 41]));
        set32(e + 8, pick([0, 7, 9]));
        set32(e + 12, pick([0, 1, 8, 9, 100]));
      }
      break;
    default:
      rng.fill(p);
  }
  return p;
}

/** Fds to attach: none usually; sometimes a memfd, an eventfd, a socket (mmap fails), many, or a closed number. */
function someFds(rng: Rng, owned: number[]): number[] | undefined {
  const r = rng.int(0, 9);
  const keep = (fd: number) => {
    owned.push(fd);
    return fd;
  };
  if (r < 6) return undefined;
  if (r === 6) return [keep(memfdCreate("fuzz", rng.pick([4096, 65536])))];
  if (r === 7) return [keep(eventfdCreate())];
  if (r === 8) {
    const [a, b] = unixSocketPair(true);
    owned.push(b);
    return [keep(a)];
  }
  return Array.from({ length: rng.pick([2, 17, 20]) }, () => keep(eventfdCreate()));
}

describe("vfio-user server under fuzzing", () => {
  it("answers or drops bad messages, never crashes, never leaks, and serves a good client afterwards", async () => {
    const rng = new Rng(Number(process.env.VFIO_USER_FUZZ_SEED ?? 0x7f2c_0015));
    const t0 = performance.now();
    let total = 0;
    let dropped = 0;
    for (let c = 0; c < CONNECTIONS; c++) {
      const which = c % 3 === 2 ? "mtty" : "dma";
      const conn = new FuzzConnection(server.sockets[which]);
      const owned: number[] = [];
      let id = 1;
      if (rng.bool(0.75)) conn.send(message(id++, 1, VERSION_OK));
      for (let k = 0; k < MESSAGES_PER_CONNECTION; k++) {
        const kind = rng.int(0, 11);
        const cmd = rng.pick([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 0, 19, 255, 0xffff]);
        let bytes: Uint8Array;
        let fds: number[] | undefined;
        switch (kind) {
          case 0: // garbage
            bytes = rng.fill(new Uint8Array(rng.int(1, 64)));
            break;
          case 1: // msg_size smaller than the header, or absurd
            bytes = header(id++, cmd, rng.pick([0, 1, 15, 0xffffffff, 0x80000000, 2 ** 31 + 16]), 0);
            break;
          case 2: // msg_size claims more than is sent (the rest never comes, or comes as the next message)
            bytes = message(id++, cmd, shaped(rng, cmd), 0, 16 + rng.int(1, 300));
            break;
          case 3: // truncated payload: msg_size says so, but the payload is too short for the command
            bytes = message(id++, cmd, shaped(rng, cmd).subarray(0, rng.int(0, 7)));
            break;
          case 4: // a reply, or an error reply, where a command is expected
            bytes = message(id++, cmd, shaped(rng, cmd), rng.pick([1, 0x21, 0x31]));
            break;
          case 5: // random flags
            bytes = message(id++, cmd, shaped(rng, cmd), rng.int(0, 0xffffffff));
            break;
          default: // shaped commands, sometimes posted, sometimes with fds
            bytes = message(id++, cmd, shaped(rng, cmd), rng.bool(0.2) ? 0x10 : 0);
            fds = someFds(rng, owned);
        }
        total++;
        if (!conn.send(bytes, fds)) break;
        if (rng.bool(0.3)) conn.drain();
      }
      pollFd(conn.fd, POLLIN, 50);
      conn.drain();
      for (const fd of owned) closeFd(fd);
      conn.close();
      const s = await server.waitState((x) => x.servers[which].connection === undefined, 3000);
      assert.ok(server.alive, `the server died on connection ${c}: ${server.stderr}`);
      assert.equal(s.servers[which].connection, undefined, `connection ${c} released`);
      if (conn.closedByServer) dropped++;
      assert.equal(s.externalRegions, 0, `connection ${c}: external frames`);
      assert.equal(s.liveProcesses, 0, `connection ${c}: host processes`);
      assert.equal(s.containers, 0, `connection ${c}: containers`);
      assert.equal(s.pinnedFrames, 0, `connection ${c}: pins`);
      assert.deepEqual(s.openDevices, [], `connection ${c}: open devices`);
    }
    const end = await server.waitState((s) => s.fds === baseline.fds);
    assert.equal(end.fds, baseline.fds, "no fd leaked in the server process");
    assert.equal(end.reactorWatches, baseline.reactorWatches, "no readiness watch leaked");
    assert.deepEqual([...end.servers.dma.problems, ...end.servers.mtty.problems], []);
    assert.ok(total >= 250, `${total} messages sent`);
    assert.ok(dropped > 0, "some connections were dropped for protocol errors");
    const good = VfioUserClient.connect({ socketPath: server.sockets.dma });
    assert.equal(good.deviceInfo().numRegions, 9);
    good.close();
    const good2 = VfioUserClient.connect({ socketPath: server.sockets.mtty });
    assert.equal(good2.regionRead(7, 0, 2)[0], 0x48);
    good2.close();
    assert.ok(performance.now() - t0 < 20_000, "bounded");
    assert.doesNotMatch(
      server.stderr,
      /Warning|bug while handling|internal error/,
      "no handler hit a non-kernel error",
    );
    if (process.env.VFIO_USER_FUZZ_VERBOSE) console.log({ total, dropped, stderr: server.stderr });
  });
});
