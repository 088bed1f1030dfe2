/**
 * Channel over real socketpairs in process: framing across reads, fds matched to their message, protocol errors that
 * drop the connection, synchronous waits and their timeout, the two bounds on a peer that stops reading, and buffers
 * that start small, grow with the messages and shrink back when idle.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, isKernelError, NS_PER_MS, SystemClock, VirtualClock } from "../core/index.ts";
import { Channel, type ChannelOptions, type Frame, MAX_FRAMES_PER_WAKE, type ProtocolErrorInfo } from "./connection.ts";
import {
  closeFd,
  eventfdCreate,
  MsgIo,
  NativeBuffer,
  SO_RCVBUF,
  SO_SNDBUF,
  setSocketBuffer,
  unixSocketPair,
} from "./native.ts";
import { HEADER_SIZE, VFIO_USER_F_TYPE_REPLY, VfioUserHeader } from "./protocol.ts";

const OPTS: ChannelOptions = {
  label: "test channel",
  maxMsgSize: 4096,
  maxRecvFds: 4,
  maxSendFds: 4,
  writeTimeoutMs: 300,
  maxQueuedBytes: 1 << 20,
  clock: new SystemClock(),
  watch: false,
  ref: false,
};

function message(id: number, cmd: number, payload: number[] | Uint8Array = [], size?: number): Uint8Array {
  const p = payload instanceof Uint8Array ? payload : Uint8Array.from(payload);
  const out = new Uint8Array(HEADER_SIZE + p.length);
  VfioUserHeader.encode({ msg_id: id, cmd, msg_size: size ?? out.length, flags: 0, error_no: 0 }, out);
  out.set(p, HEADER_SIZE);
  return out;
}

/** Raw sender: writes exactly these bytes (and fds) with one sendmsg. */
class Raw {
  private readonly io = new MsgIo(8);
  private readonly buf = new NativeBuffer(1 << 18);
  constructor(readonly fd: number) {}
  send(bytes: Uint8Array, fds?: number[]): number {
    this.buf.bytes.set(bytes);
    return this.io.send(this.fd, this.buf.address, bytes.length, fds, false);
  }
  free(): void {
    this.io.free();
    this.buf.free();
  }
}

/**
 * Time that moves 100 ns per reading (so a poll ends), counts its readings and jumps when told (`t += ns`); `onRead`
 * plays a client meanwhile. Timers run on a VirtualClock of their own.
 */
function tickingClock() {
  const timers = new VirtualClock();
  return {
    t: 0,
    reads: 0,
    onRead: undefined as (() => void) | undefined,
    now() {
      this.reads++;
      this.t += 100;
      this.onRead?.();
      return this.t;
    },
    at: (ns: number, fn: () => void) => timers.at(ns, fn),
    after: (ns: number, fn: () => void) => timers.after(ns, fn),
  };
}

function setup(opts: Partial<ChannelOptions> = {}) {
  const [a, b] = unixSocketPair(true);
  const frames: { id: number; cmd: number; payload: number[]; fds: number[] }[] = [];
  const errors: ProtocolErrorInfo[] = [];
  let closed: string | undefined;
  let keepFds = false;
  const ch = new Channel(
    b,
    { ...OPTS, ...opts },
    {
      onFrame: (f: Frame) => {
        frames.push({ id: f.id, cmd: f.cmd, payload: [...f.payload], fds: [...f.fds] });
        if (keepFds) for (let i = 0; i < f.fds.length; i++) f.fds[i] = -1;
      },
      onClose: (r) => {
        closed = r;
      },
      onProtocolError: (info) => errors.push(info),
    },
  );
  const raw = new Raw(a);
  return {
    ch,
    raw,
    peer: a,
    frames,
    errors,
    closed: () => closed,
    keep: () => {
      keepFds = true;
    },
    done: () => {
      ch.close();
      raw.free();
      closeFd(a);
    },
  };
}

describe("Channel framing", () => {
  it("splits several messages arriving in one read and joins one arriving byte by byte", () => {
    const t = setup();
    const many = [message(1, 9, [1, 2]), message(2, 10), message(3, 4, new Uint8Array(300).fill(7))];
    t.raw.send(Uint8Array.from(many.flatMap((m) => [...m])));
    t.ch.drain();
    assert.deepEqual(
      t.frames.map((f) => [f.id, f.cmd, f.payload.length]),
      [
        [1, 9, 2],
        [2, 10, 0],
        [3, 4, 300],
      ],
    );
    const one = message(7, 13, [9, 8, 7, 6]);
    for (const byte of one) {
      t.raw.send(Uint8Array.of(byte));
      t.ch.drain();
    }
    assert.equal(t.frames.length, 4);
    assert.deepEqual(t.frames[3]!.payload, [9, 8, 7, 6]);
    assert.equal(t.closed(), undefined);
    t.done();
  });

  it("reads again after a handler, where a synchronous client's next message already is, up to MAX_FRAMES_PER_WAKE", () => {
    const [a, b] = unixSocketPair(true);
    const raw = new Raw(a);
    const ids: number[] = [];
    const total = MAX_FRAMES_PER_WAKE + 10;
    // A client on this CPU: each reply wakes it and its next request is in the socket before the handler returns.
    const ch = new Channel(b, OPTS, {
      onFrame: (f) => {
        ids.push(f.id);
        if (f.id < total) raw.send(message(f.id + 1, 9));
      },
      onClose: () => {},
    });
    raw.send(message(1, 9));
    ch.drain();
    assert.equal(ids.length, MAX_FRAMES_PER_WAKE, "one wake-up serves the client until the cap, then yields the loop");
    ch.drain();
    assert.equal(ids.length, total);
    assert.deepEqual(
      ids,
      Array.from({ length: total }, (_, i) => i + 1),
    );
    ch.drain();
    assert.equal(ids.length, total, "nothing more: the read-ahead found the socket empty");
    ch.close();
    raw.free();
    closeFd(a);
  });

  it("polls adaptively with pollMaxNs: the window grows while messages come quickly, catches one, drops after a long wait", () => {
    const clock = tickingClock();
    const [a, b] = unixSocketPair(true);
    const raw = new Raw(a);
    const ids: number[] = [];
    const ch = new Channel(
      b,
      { ...OPTS, clock, pollMaxNs: 100_000 },
      { onFrame: (f) => ids.push(f.id), onClose: () => {} },
    );
    const windows: number[] = [];
    for (let id = 1; id <= 6; id++) {
      raw.send(message(id, 9));
      ch.drain();
      windows.push(ch.pollWindowNs);
    }
    // Each message came right after a poll that missed it: a wait longer than the window, shorter than the cap.
    assert.deepEqual(windows, [0, 4_000, 8_000, 16_000, 32_000, 64_000], "from 4 us, doubling");
    // The client answers 5 us into the next poll: both messages in one wake-up, and the window stays.
    let reads = 0;
    clock.onRead = () => {
      if (++reads === 50) raw.send(message(8, 9));
    };
    raw.send(message(7, 9));
    ch.drain();
    clock.onRead = undefined;
    assert.deepEqual(ids.slice(-2), [7, 8], "the poll found the message sent during it");
    assert.equal(ch.pollWindowNs, 100_000, "grown to the cap by the wait before message 7, kept by the catch");
    // A wait longer than pollMaxNs: polling stops until waits are short again.
    ch.drain(); // woken with nothing to read: the poll misses and the wait starts
    clock.t += 1_000_000;
    raw.send(message(9, 9));
    ch.drain();
    assert.equal(ch.pollWindowNs, 0);
    assert.equal(ids.length, 9);
    ch.close();
    raw.free();
    closeFd(a);
  });

  it("stops polling at once when the loop has other work (loopBusy), and that is not judged a miss", () => {
    // A poll that ran its 100 us window would read the clock ~1,000 times.
    const clock = tickingClock();
    const [a, b] = unixSocketPair(true);
    const raw = new Raw(a);
    const ids: number[] = [];
    let asked = 0;
    let probe: () => boolean = () => false;
    const ch = new Channel(
      b,
      {
        ...OPTS,
        clock,
        pollMaxNs: 100_000,
        loopBusy: () => {
          asked++;
          return probe();
        },
      },
      { onFrame: (f) => ids.push(f.id), onClose: () => {} },
    );
    // Grow the window: each message comes after a missed poll, so each wait was longer than the window.
    for (let id = 1; id <= 6; id++) {
      raw.send(message(id, 9));
      ch.drain();
    }
    assert.equal(ch.pollWindowNs, 64_000);
    assert.ok(asked > 0, "asked while polling");
    assert.equal(ch.pollYieldCount, 0);
    // Another fd has work: the next poll gives the loop back after one empty read.
    probe = () => true;
    clock.reads = 0;
    raw.send(message(7, 9));
    ch.drain();
    assert.deepEqual(ids, [1, 2, 3, 4, 5, 6, 7]);
    assert.equal(ch.pollWindowNs, 100_000);
    assert.ok(clock.reads <= 4, `the poll ended at once (${clock.reads} clock reads)`);
    assert.equal(ch.pollYieldCount, 1);
    // The client's next message comes soon after: the window stands (a yield is not a miss).
    raw.send(message(8, 9));
    ch.drain();
    assert.equal(ch.pollWindowNs, 100_000);
    assert.equal(ch.pollYieldCount, 2);
    // The loop is busy because ours just arrived: the read after the question finds it, and the poll goes on.
    probe = () => {
      probe = () => false;
      raw.send(message(10, 9));
      return true;
    };
    raw.send(message(9, 9));
    ch.drain();
    assert.deepEqual(ids.slice(-2), [9, 10]);
    assert.equal(ch.pollYieldCount, 2, "not a yield: the message was ours");
    ch.close();
    raw.free();
    closeFd(a);
  });

  it("gives fds to the message they were sent with, even when read together with an earlier one", () => {
    const t = setup();
    t.keep();
    const e = eventfdCreate();
    t.raw.send(message(1, 9, [0, 0]));
    t.raw.send(message(2, 8, new Uint8Array(20)), [e]);
    t.raw.send(message(3, 9));
    t.ch.drain();
    assert.deepEqual(
      t.frames.map((f) => f.fds.length),
      [0, 1, 0],
    );
    const got = t.frames[1]!.fds[0]!;
    assert.equal(closeFd(got), 0, "the kept fd is open and ours");
    closeFd(e);
    t.done();
  });

  it("closes fds a handler did not keep", () => {
    const t = setup();
    const e = eventfdCreate();
    t.raw.send(message(1, 2, new Uint8Array(32)), [e]);
    t.ch.drain();
    const got = t.frames[0]!.fds[0]!;
    assert.equal(closeFd(got), -Errno.EBADF, "already closed by the channel");
    closeFd(e);
    t.done();
  });

  it("drops the connection for a msg_size below the header, after an error reply chance", () => {
    const t = setup();
    t.raw.send(message(5, 9, [], 8));
    t.ch.drain();
    assert.equal(t.errors.length, 1);
    assert.deepEqual([t.errors[0]!.id, t.errors[0]!.cmd, t.errors[0]!.errno], [5, 9, Errno.EINVAL]);
    assert.match(t.closed()!, /smaller than the 16-byte header/);
    t.done();
  });

  it("drops the connection for a msg_size above the limit (4 GiB) with E2BIG", () => {
    const t = setup();
    t.raw.send(message(6, 10, [], 0xffff_ffff));
    t.ch.drain();
    assert.equal(t.errors[0]!.errno, Errno.E2BIG);
    assert.match(t.closed()!, /exceeds the limit/);
    t.done();
  });

  it("treats fds that arrive with no message start as a protocol error", () => {
    const t = setup();
    const e = eventfdCreate();
    const m = message(1, 9, [1, 2, 3, 4]);
    t.raw.send(m.subarray(0, 10));
    t.ch.drain();
    t.raw.send(m.subarray(10), [e]);
    t.ch.drain();
    assert.match(t.closed()!, /no message to carry them/);
    closeFd(e);
    t.done();
  });

  it("treats more fds than allowed as a protocol error", () => {
    const t = setup({ maxRecvFds: 2 });
    const fds = [eventfdCreate(), eventfdCreate(), eventfdCreate()];
    t.raw.send(message(1, 8, new Uint8Array(20)), fds);
    t.ch.drain();
    assert.match(t.closed()!, /more than 2 fds/);
    for (const f of fds) closeFd(f);
    t.done();
  });

  it("reports the peer closing", () => {
    const t = setup();
    closeFd(t.peer);
    t.ch.drain();
    assert.match(t.closed()!, /peer closed/);
    t.raw.free();
    t.ch.close();
  });
});

describe("Channel waits and sending", () => {
  it("waitFor returns the matching frame and defers the others in order", () => {
    const t = setup();
    t.raw.send(message(1, 9));
    t.raw.send(message(2, 12, [4, 4]));
    t.raw.send(message(3, 9));
    const f = t.ch.waitFor((x) => x.id === 2, 1000, "defer", "test reply");
    assert.deepEqual([f.id, [...f.payload]], [2, [4, 4]]);
    assert.equal(t.frames.length, 0);
    t.ch.drain();
    assert.deepEqual(
      t.frames.map((x) => x.id),
      [1, 3],
    );
    t.done();
  });

  it("waitFor gives up after its timeout with ETIMEDOUT and closes", () => {
    const t = setup();
    const t0 = performance.now();
    let err: unknown;
    try {
      t.ch.waitFor(() => true, 100, "dispatch", "nothing");
    } catch (e) {
      err = e;
    }
    assert.ok(isKernelError(err) && err.errno === Errno.ETIMEDOUT);
    assert.ok(performance.now() - t0 >= 90);
    assert.equal(t.ch.closed, true);
    t.done();
  });

  it("sends messages with fds that the peer receives", () => {
    const [a, b] = unixSocketPair(true);
    const got: Frame[] = [];
    const rx = new Channel(b, OPTS, {
      onFrame: (f) => got.push({ ...f, payload: f.payload.slice(), fds: f.fds.slice() }),
      onClose: () => {},
    });
    const tx = new Channel(a, OPTS, { onFrame: () => {}, onClose: () => {} });
    const e = eventfdCreate();
    tx.send(77, 8, 0, 0, new Uint8Array(20), [e]);
    const view = tx.payloadBuffer(3);
    view.set([5, 6, 7]);
    tx.commit(78, 9, 1, 22, 3);
    rx.drain();
    assert.deepEqual(
      got.map((f) => [f.id, f.cmd, f.flags, f.errorNo, f.payload.length, f.fds.length]),
      [
        [77, 8, 0, 0, 20, 1],
        [78, 9, 1, 22, 3, 0],
      ],
    );
    closeFd(e);
    tx.close();
    rx.close();
  });

  it("drops a peer that stops reading once the write timeout passes without progress", async () => {
    const [a, b] = unixSocketPair(true);
    setSocketBuffer(a, SO_SNDBUF, 4096);
    setSocketBuffer(b, SO_RCVBUF, 4096);
    let reason: string | undefined;
    const tx = new Channel(
      a,
      { ...OPTS, watch: true, writeTimeoutMs: 200 },
      {
        onFrame: () => {},
        onClose: (r) => {
          reason = r;
        },
      },
    );
    const payload = new Uint8Array(1000);
    for (let i = 0; i < 200 && !tx.closed; i++) tx.send(i, 9, 1, 0, payload);
    assert.ok(tx.pendingBytes > 0, "the socket filled up and the rest was queued");
    const t0 = performance.now();
    while (!tx.closed && performance.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
    assert.match(reason ?? "", /read nothing for 200 ms/);
    closeFd(b);
  });

  it("drops a peer that lets more than maxQueuedBytes pile up", () => {
    const [a, b] = unixSocketPair(true);
    setSocketBuffer(a, SO_SNDBUF, 4096);
    let reason: string | undefined;
    const tx = new Channel(
      a,
      { ...OPTS, watch: true, maxQueuedBytes: 20_000 },
      {
        onFrame: () => {},
        onClose: (r) => {
          reason = r;
        },
      },
    );
    const payload = new Uint8Array(1000);
    for (let i = 0; i < 500 && !tx.closed; i++) tx.send(i, 9, 1, 0, payload);
    assert.match(reason ?? "", /stopped reading/);
    closeFd(b);
  });
});

describe("Channel buffers", () => {
  const pattern = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

  it("starts with a few KiB, grows to fit a large message, and returns to the initial size when idle", () => {
    const clock = new VirtualClock();
    const t = setup({ maxMsgSize: 128 * 1024, clock, bufferIdleMs: 1000 });
    const initial = t.ch.bufferBytes;
    assert.ok(initial <= 16 * 1024, `an idle channel holds a few KiB, not two maximal messages: ${initial} bytes`);
    const big = pattern(100_000, 3);
    t.raw.send(message(1, 9, big));
    t.ch.drain();
    assert.equal(t.frames.length, 1);
    assert.deepEqual(t.frames[0]!.payload, [...big]);
    assert.ok(t.ch.bufferBytes >= 100_000, "the receive buffer grew to the message");
    assert.ok(t.ch.bufferBytes <= 2 * (2 * 128 * 1024 + 64 * 1024), "and no further than its ceiling");
    const view = t.ch.payloadBuffer(50_000);
    view.set(pattern(50_000, 5));
    t.ch.commit(2, 9, 1, 0, 50_000);
    const grown = t.ch.bufferBytes;
    // A large message within each idle period keeps the buffers.
    clock.advance(1000 * NS_PER_MS);
    assert.equal(t.ch.bufferBytes, grown, "used in this period: kept");
    clock.advance(1000 * NS_PER_MS);
    assert.equal(t.ch.bufferBytes, initial, "idle for a whole period: back to the initial size");
    // Small messages afterwards fit as before.
    t.raw.send(message(3, 9, [1, 2, 3]));
    t.ch.drain();
    assert.deepEqual(t.frames[1]!.payload, [1, 2, 3]);
    assert.equal(t.ch.bufferBytes, initial);
    t.done();
  });

  it("keeps a running handler's payload valid while a wait inside it grows the buffer for a large reply", () => {
    const [a, b] = unixSocketPair(true);
    const raw = new Raw(a);
    const own = pattern(3000, 1);
    const reply = pattern(150_000, 2);
    let seen: { own: number[]; reply: number[] } | undefined;
    const ch: Channel = new Channel(
      b,
      { ...OPTS, maxMsgSize: 256 * 1024 },
      {
        onFrame: (f) => {
          const r = ch.waitFor((x) => x.id === 50, 1000, "defer", "the large reply");
          const replyBytes = [...r.payload];
          seen = { own: [...f.payload], reply: replyBytes };
        },
        onClose: () => {},
      },
    );
    raw.send(message(1, 9, own));
    const rep = message(50, 12, reply);
    rep[8] = VFIO_USER_F_TYPE_REPLY;
    // The reply follows in pieces, so the wait grows the buffer while the handler's frame is in the first one.
    assert.equal(raw.send(rep.subarray(0, 100)), 100);
    for (let at = 100; at < rep.length; at += 60_000) {
      const piece = rep.subarray(at, Math.min(rep.length, at + 60_000));
      assert.equal(raw.send(piece), piece.length);
    }
    ch.drain();
    assert.ok(seen !== undefined);
    assert.deepEqual(seen.own, [...own], "the handler's own payload survived the grow");
    assert.deepEqual(seen.reply, [...reply]);
    assert.equal(ch.closed, false);
    ch.close();
    raw.free();
    closeFd(a);
  });

  it("delivers any mix of message sizes split at any points, within the buffer ceiling (property)", () => {
    const maxMsgSize = 40_000;
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: maxMsgSize - HEADER_SIZE }), { minLength: 1, maxLength: 12 }),
        fc.array(fc.integer({ min: 1, max: 70_000 }), { minLength: 1, maxLength: 40 }),
        (sizes, cuts) => {
          const clock = new VirtualClock();
          const t = setup({ maxMsgSize, clock, bufferIdleMs: 10 });
          const initial = t.ch.bufferBytes;
          const msgs = sizes.map((n, i) => message(i + 1, 9, pattern(n, i)));
          const stream = new Uint8Array(msgs.reduce((s, m) => s + m.length, 0));
          let at = 0;
          for (const m of msgs) {
            stream.set(m, at);
            at += m.length;
          }
          let peak = 0;
          let pos = 0;
          for (let i = 0; pos < stream.length; i++) {
            const n = Math.min(cuts[i % cuts.length]!, stream.length - pos);
            assert.equal(t.raw.send(stream.subarray(pos, pos + n)), n);
            pos += n;
            t.ch.drain();
            peak = Math.max(peak, t.ch.bufferBytes);
          }
          assert.equal(t.closed(), undefined);
          assert.deepEqual(
            t.frames.map((f) => [f.id, f.payload.length]),
            sizes.map((n, i) => [i + 1, n]),
          );
          for (let i = 0; i < sizes.length; i++) assert.deepEqual(t.frames[i]!.payload, [...pattern(sizes[i]!, i)]);
          assert.ok(peak <= 2 * maxMsgSize + 64 * 1024 + initial, `peak ${peak}`);
          clock.advance(10 * NS_PER_MS);
          clock.advance(10 * NS_PER_MS);
          assert.equal(t.ch.bufferBytes, initial, "back to the initial size when idle");
          t.done();
        },
      ),
      { numRuns: 60 },
    );
  });
});
