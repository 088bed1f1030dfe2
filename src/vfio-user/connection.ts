/**
 * One vfio-user connection: message framing over a non-blocking AF_UNIX stream socket, SCM_RIGHTS fds matched to
 * their messages, a bounded send queue, and synchronous waits. Server and client both use it.
 *
 * Receiving: recvmsg writes into one native buffer that the framing code parses in place; a `Frame`'s payload is a
 * view into it, valid while the frame's handler runs (a frame kept longer must be copied; frames put aside during a
 * synchronous wait are copied). While a handler runs the bytes below its frame's end stay put (`keep`).
 *
 * Buffer sizes: a channel starts with small buffers (`RECV_BUFFER_INITIAL`, `SEND_BUFFER_INITIAL`), so an idle
 * connection costs a few KiB, not two maximal messages. The receive buffer grows (doubling, at most two maximal
 * messages plus a read chunk) when a message's header announces more than fits; a grow inside a handler (a wait for a
 * large reply) moves the unread bytes to a new buffer and keeps the old one, which the running handlers' payloads view,
 * until no handler runs. The send buffer grows to the largest message built. Both return to their initial size once
 * `bufferIdleMs` pass without a message that needed more (checked on the clock, only while a buffer is large).
 *
 * Fds: the kernel hands out a message's fds with the first bytes of the sendmsg that carried them, and stops the read
 * right after that sendmsg's first segment. So the fds of one recvmsg belong to the last message that starts within
 * the bytes it returned (earlier messages in the same read carried none). A frame's `fds` belong to its handler:
 * one it keeps it replaces with -1; the rest are closed when the handler returns. Fds that no message can own, or a
 * recvmsg truncated for too many fds, are a protocol error.
 *
 * Protocol errors (msg_size below 16 or above the limit, stray fds, too many fds, a reply nobody waits for) close the
 * connection after `onProtocolError` had its chance to send an error reply: the stream cannot be trusted past them.
 *
 * Sending: a message is built in a native send buffer (`payloadBuffer` + `commit`: no copy for the caller that writes
 * its payload there) and sent at once. When the socket is full the rest is copied to a queue, EPOLLOUT is armed and a
 * timer runs: a peer that stops reading for `writeTimeoutMs` (no progress at all), or lets more than `maxQueuedBytes`
 * pile up, is disconnected. Fds queued with a message are dup'ed until sent.
 *
 * Synchronous waits (`waitFor`): poll(2) on the socket with a deadline, parsing frames as they come. Frames that do
 * not match are either dispatched at once (the client serving DMA_READ/WRITE while it waits for a reply) or put aside
 * and handled after the current handler (the server, which must not re-enter the device). The event loop is blocked
 * meanwhile; the deadline bounds it.
 *
 * Readiness comes from the process's Reactor (level-triggered): each event drains the socket until EAGAIN or a short read.
 */
import {
  Errno,
  KernelError,
  NS_PER_MS,
  readU16LE,
  readU32LE,
  type SchedulingClock,
  type TimerHandle,
  writeU16LE,
  writeU32LE,
} from "../core/index.ts";
import { closeFd, dupCloexec, MsgIo, NativeBuffer, POLLIN, POLLOUT, pollFd, schedYield } from "./native.ts";
import { HEADER_SIZE, VFIO_USER_F_TYPE_MASK, VFIO_USER_F_TYPE_REPLY } from "./protocol.ts";
import { EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Reactor, type Watch } from "./reactor.ts";

const EAGAIN = 11;
/** Room a read wants above the unread bytes; also the slack above two maximal messages at the largest size. */
const READ_CHUNK = 64 * 1024;
/** Least room worth a recvmsg: below it the buffer is compacted or grown first. */
const MIN_READ = 1024;
/** Frames one wake-up handles at most before the event loop serves the other connections. */
export const MAX_FRAMES_PER_WAKE = 64;
/** The fds of every frame that came without any (frozen: a handler cannot add to it). */
const NO_FDS: number[] = Object.freeze([]) as unknown as number[];
/** While read-after-reply misses, it is tried once per this many messages. */
const READ_AHEAD_PROBE = 16;
/** Adaptive polling's first window (QEMU starts at 4 us too). */
export const POLL_START_NS = 4_000;
/** The receive buffer a channel starts with (and returns to when idle). */
export const RECV_BUFFER_INITIAL = 8 * 1024;
/** The send buffer a channel starts with (and returns to when idle). */
export const SEND_BUFFER_INITIAL = 4 * 1024;
/** Default for `ChannelOptions.bufferIdleMs`. */
const BUFFER_IDLE_MS = 1000;

/** One received message. `payload` is valid while its handler runs; see the module comment for `fds`. */
export interface Frame {
  readonly id: number;
  readonly cmd: number;
  /** msg_size: header included. */
  readonly size: number;
  readonly flags: number;
  readonly errorNo: number;
  readonly payload: Uint8Array;
  readonly fds: number[];
}

export function isReply(f: { readonly flags: number }): boolean {
  return (f.flags & VFIO_USER_F_TYPE_MASK) === VFIO_USER_F_TYPE_REPLY;
}

/** What a protocol error knows of the offending message (undefined fields when the header itself was not read). */
export interface ProtocolErrorInfo {
  readonly id: number | undefined;
  readonly cmd: number | undefined;
  readonly flags: number | undefined;
  readonly errno: number;
  readonly message: string;
}

export interface ChannelOptions {
  /** Names the connection in messages ("vfio-user server /run/x.sock"). */
  readonly label: string;
  /** Largest msg_size accepted, header included. */
  readonly maxMsgSize: number;
  /** Fds accepted with one received message (more is a protocol error). */
  readonly maxRecvFds: number;
  /** Fds sent with one message, at most. */
  readonly maxSendFds: number;
  /** A peer that accepts none of our queued bytes for this long is disconnected. */
  readonly writeTimeoutMs: number;
  /** A peer that lets more than this pile up in our send queue is disconnected. */
  readonly maxQueuedBytes: number;
  /** Real time for the write timeout and wait deadlines (a SystemClock). */
  readonly clock: SchedulingClock;
  /** Deliver frames from the reactor (false: only synchronous waits read the socket). */
  readonly watch: boolean;
  /** Keep the process alive while open. */
  readonly ref: boolean;
  /** Grown buffers return to their initial size after this long without a message that needed them. Default 1000. */
  readonly bufferIdleMs?: number;
  /**
   * Adaptive polling, QEMU's poll-max-ns: after handling what arrived, keep reading the socket for up to a window
   * before going back to sleep in the event loop. The window starts at 0, grows (4 us, then doubling, up to this) while
   * the waits for the next message are shorter than this, and drops to 0 after one that is longer. It costs CPU while
   * it spins, and holds the event loop (timers, other connections) for at most the window unless `loopBusy` says
   * otherwise. 0 (the default): off.
   */
  readonly pollMaxNs?: number;
  /**
   * Whether the event loop has other work now (another connection's message, an eventfd, a control request): a poll
   * that finds it stops spinning and gives the loop back, so that a client answering within the window cannot hold
   * the loop from the others. Asked once per empty read while polling. Default: never (the poll runs its window).
   */
  readonly loopBusy?: () => boolean;
}

export interface ChannelHandlers {
  /** A complete message that no synchronous wait claimed. */
  onFrame(frame: Frame): void;
  /**
   * Called once when the channel closes for any reason; nothing else is called after it. A close inside a handler or
   * a wait is reported when that returns.
   */
  onClose(reason: string): void;
  /** A protocol error is about to close the channel: the last chance to send an error reply. */
  onProtocolError?(info: ProtocolErrorInfo): void;
}

class ProtocolError extends Error {
  constructor(readonly info: ProtocolErrorInfo) {
    super(info.message);
  }
}

interface Queued {
  bytes: Uint8Array;
  /** Dup'ed fds to send with the first byte (closed once sent or dropped). */
  fds: number[] | undefined;
}

export class Channel {
  readonly label: string;
  private readonly opts: ChannelOptions;
  private readonly handlers: ChannelHandlers;
  private readonly io: MsgIo;
  private rbuf: NativeBuffer;
  private sbuf: NativeBuffer;
  /** The receive buffer's ceiling: two maximal messages and a read chunk. */
  private readonly rbufMax: number;
  /** Receive buffers replaced by a grow while handlers viewing them ran; freed when none runs. */
  private readonly retired: NativeBuffer[] = [];
  /** Counts receive buffers: a `keep` saved under another generation pins nothing in the current one. */
  private rbufGen = 0;
  /** Set by a message that needed a grown buffer; cleared by each idle check. */
  private bigUse = false;
  private idleTimer: TimerHandle | undefined;
  private watchHandle: Watch | undefined;
  /** Buffer offsets of the first unparsed byte and the end of received data. */
  private start = 0;
  private end = 0;
  /** Stream position of buffer offset 0. */
  private base = 0;
  /**
   * Received fds by the stream position of the message they belong to, in arrival order: a list, not a Map, since
   * it holds at most a few entries and a Map that grows and shrinks by one on every DMA_MAP rehashes each time.
   */
  private readonly fdsAt: { at: number; fds: number[] }[] = [];
  private readonly deferred: Frame[] = [];
  private readonly queue: Queued[] = [];
  private queuedBytes = 0;
  private writeTimer: TimerHandle | undefined;
  private depth = 0;
  /** The last recvSome was short and carried no fds: the socket was empty then. */
  private drained = false;
  /** Whether the last read-after-reply found the next message already there (see `drain`). */
  private readAhead = true;
  /** Messages handled since the last read-after-reply was tried while `readAhead` was off. */
  private sinceProbe = 0;
  /** Adaptive polling: the current window (ns; 0 = not polling) and when the wait for the next message began. */
  private pollNs = 0;
  private waitStart = -1;
  private pollYields = 0;
  /** Buffer offset below which bytes must not move: the end of the frame whose handler is running. */
  private keep = 0;
  private closedReason: string | undefined;
  private closeNotified = false;
  private freed = false;
  private maxSendFds: number;
  /** Messages received and sent (for stats and tests). */
  received = 0;
  sent = 0;

  constructor(
    readonly fd: number,
    opts: ChannelOptions,
    handlers: ChannelHandlers,
  ) {
    this.label = opts.label;
    this.opts = opts;
    this.handlers = handlers;
    this.maxSendFds = opts.maxSendFds;
    this.io = new MsgIo(Math.max(opts.maxRecvFds, opts.maxSendFds, 16));
    this.rbufMax = 2 * opts.maxMsgSize + READ_CHUNK;
    this.rbuf = new NativeBuffer(Math.min(RECV_BUFFER_INITIAL, this.rbufMax));
    this.sbuf = new NativeBuffer(SEND_BUFFER_INITIAL);
    if (opts.watch) {
      this.watchHandle = Reactor.shared().watch(fd, EPOLLIN | EPOLLRDHUP, (ev) => this.onEvents(ev), opts.ref);
    }
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  get closeReason(): string | undefined {
    return this.closedReason;
  }

  /** Fds the peer accepts per message (learnt at VERSION). */
  setMaxSendFds(n: number): void {
    this.maxSendFds = Math.max(0, Math.min(n, this.io.maxFds));
  }

  /** Bytes waiting in the send queue. */
  get pendingBytes(): number {
    return this.queuedBytes;
  }

  /** Native bytes the receive and send buffers hold now (retired receive buffers included). */
  get bufferBytes(): number {
    if (this.freed) return 0;
    let n = this.rbuf.size + this.sbuf.size;
    for (const b of this.retired) n += b.size;
    return n;
  }

  // ---- sending ---------------------------------------------------------------------------------------------------

  /** A view of the send buffer where a payload of `len` bytes is written before `commit`; valid until then. */
  payloadBuffer(len: number): Uint8Array {
    const need = HEADER_SIZE + len;
    if (need > SEND_BUFFER_INITIAL) {
      this.bigUse = true;
      if (need > this.sbuf.size) {
        const grown = new NativeBuffer(Math.max(need, 2 * this.sbuf.size));
        this.sbuf.free();
        this.sbuf = grown;
        this.armIdleCheck();
      }
    }
    return this.sbuf.bytes.subarray(HEADER_SIZE, need);
  }

  /**
   * Sends a header and the `len` payload bytes written into `payloadBuffer(len)`. `sync`: block (up to the write
   * timeout) until everything is written, as a synchronous request needs. Fds must stay open until this returns
   * (a queued message holds duplicates).
   */
  commit(id: number, cmd: number, flags: number, errorNo: number, len: number, fds?: readonly number[], sync = false) {
    if (this.closed) throw new KernelError(Errno.ENOTCONN, `${this.label}: the connection is closed`);
    if (fds !== undefined && fds.length > this.maxSendFds) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.label}: ${fds.length} fds in one message, the peer accepts ${this.maxSendFds}`,
      );
    }
    const total = HEADER_SIZE + len;
    if (total > this.sbuf.size) throw new Error(`${this.label}: commit of ${len} bytes without payloadBuffer(${len})`);
    const b = this.sbuf.bytes;
    // The header (protocol.ts VfioUserHeader), written field by field: this runs for every message.
    writeU16LE(b, 0, id);
    writeU16LE(b, 2, cmd);
    writeU32LE(b, 4, total);
    writeU32LE(b, 8, flags);
    writeU32LE(b, 12, errorNo);
    this.sent++;
    if (this.queue.length > 0) {
      if (!sync) {
        this.enqueue(b.slice(0, total), fds);
        return;
      }
      this.flushSync();
    }
    const n = this.io.send(this.fd, this.sbuf.address, total, fds, false);
    if (n === total) return;
    if (n < 0 && n !== -EAGAIN) {
      this.close(`send failed: errno ${-n}`);
      throw new KernelError(-n as Errno, `${this.label}: send failed: errno ${-n}`);
    }
    const done = Math.max(n, 0);
    if (sync) {
      this.commitRest(done, total, done === 0 ? fds : undefined);
      return;
    }
    this.enqueue(b.slice(done, total), done === 0 ? fds : undefined);
  }

  /** Sends a message whose payload is given (copied into the send buffer). */
  send(
    id: number,
    cmd: number,
    flags: number,
    errorNo: number,
    payload?: Uint8Array,
    fds?: readonly number[],
    sync = false,
  ): void {
    const len = payload === undefined ? 0 : payload.length;
    const view = this.payloadBuffer(len);
    if (payload !== undefined) view.set(payload);
    this.commit(id, cmd, flags, errorNo, len, fds, sync);
  }

  /** Blocking: writes sbuf[from, total), the fds (if any) with the first byte. */
  private commitRest(from: number, total: number, fds: readonly number[] | undefined): void {
    let at = from;
    let first = fds;
    while (at < total) {
      const n = this.io.send(this.fd, this.sbuf.address + at, total - at, first, false);
      if (n > 0) {
        at += n;
        first = undefined;
        continue;
      }
      if (n === -EAGAIN || n === 0) {
        this.waitWritable();
        continue;
      }
      this.close(`send failed: errno ${-n}`);
      throw new KernelError(-n as Errno, `${this.label}: send failed: errno ${-n}`);
    }
  }

  private waitWritable(): void {
    const r = pollFd(this.fd, POLLOUT, this.opts.writeTimeoutMs);
    if (r === 0) {
      this.close(`the peer read nothing for ${this.opts.writeTimeoutMs} ms`);
      throw new KernelError(Errno.ETIMEDOUT, `${this.label}: the peer read nothing for ${this.opts.writeTimeoutMs} ms`);
    }
    if (r < 0) {
      this.close(`poll failed: errno ${-r}`);
      throw new KernelError(-r as Errno, `${this.label}: poll failed: errno ${-r}`);
    }
  }

  private enqueue(bytes: Uint8Array, fds: readonly number[] | undefined): void {
    const dups = fds === undefined || fds.length === 0 ? undefined : fds.map((f) => dupCloexec(f));
    this.queue.push({ bytes, fds: dups });
    this.queuedBytes += bytes.length;
    if (this.queuedBytes > this.opts.maxQueuedBytes) {
      this.close(
        `the peer stopped reading: ${this.queuedBytes} bytes queued, the limit is ${this.opts.maxQueuedBytes}`,
      );
      return;
    }
    if (this.queue.length === 1) {
      this.watchHandle?.modify(EPOLLIN | EPOLLRDHUP | EPOLLOUT);
      this.armWriteTimer();
    }
  }

  private armWriteTimer(): void {
    this.writeTimer?.cancel();
    this.writeTimer = this.opts.clock.after(this.opts.writeTimeoutMs * NS_PER_MS, () => {
      this.writeTimer = undefined;
      if (this.queue.length > 0) {
        this.close(`the peer read nothing for ${this.opts.writeTimeoutMs} ms (${this.queuedBytes} bytes queued)`);
      }
    });
  }

  /** Sends what the queue holds without blocking; returns when it is empty or the socket is full. */
  private flushQueue(): void {
    let progress = false;
    while (this.queue.length > 0 && !this.closed) {
      const q = this.queue[0]!;
      const chunk = Math.min(q.bytes.length, this.sbuf.size);
      this.sbuf.bytes.set(q.bytes.subarray(0, chunk));
      const n = this.io.send(this.fd, this.sbuf.address, chunk, q.fds, false);
      if (n === -EAGAIN) break;
      if (n < 0) {
        this.close(`send failed: errno ${-n}`);
        return;
      }
      progress = true;
      if (q.fds !== undefined) {
        for (const f of q.fds) closeFd(f);
        q.fds = undefined;
      }
      this.queuedBytes -= n;
      if (n === q.bytes.length) this.queue.shift();
      else q.bytes = q.bytes.subarray(n);
    }
    if (this.closed) return;
    if (this.queue.length === 0) {
      this.writeTimer?.cancel();
      this.writeTimer = undefined;
      this.watchHandle?.modify(EPOLLIN | EPOLLRDHUP);
    } else if (progress) this.armWriteTimer();
  }

  /** Blocking flush of the queue (before a synchronous send must go out in order). */
  private flushSync(): void {
    while (this.queue.length > 0) {
      this.flushQueue();
      if (this.closed) throw new KernelError(Errno.ECONNRESET, `${this.label}: ${this.closedReason}`);
      if (this.queue.length > 0) this.waitWritable();
    }
  }

  // ---- receiving -------------------------------------------------------------------------------------------------

  private onEvents(ev: number): void {
    if (this.closed) return;
    if ((ev & EPOLLOUT) !== 0 && this.queue.length > 0) this.flushQueue();
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) !== 0) this.drain();
  }

  /**
   * Dispatches every complete frame and reads until EAGAIN, or until a short read without fds, which emptied the
   * socket (the reactor is level-triggered: anything left, a later arrival or the peer's close, is reported again).
   *
   * Read after reply: a synchronous client (QEMU's vfio-user code waits for each reply) sends its next message as soon
   * as the reply wakes it, and when it shares this CPU it does so before this call returns. Reading once more then
   * finds that message and saves a trip through the event loop (an epoll_wait and a callback into JavaScript, which
   * cost more than the recvmsg), as a server blocking in recv after each reply does. When the read finds nothing (the
   * client runs elsewhere and is slower), read-after-reply stays off except for one probe every READ_AHEAD_PROBE
   * messages, so a miss costs at most that share of a recvmsg. At most MAX_FRAMES_PER_WAKE frames are handled per
   * call, so that one busy client cannot hold the loop from the others.
   */
  drain(): void {
    if (this.closed) return;
    this.depth++;
    try {
      const first = this.received;
      let read = false;
      this.adaptPoll();
      for (;;) {
        this.dispatchReady();
        if (this.closed) break;
        const speculative = read && this.drained;
        if (speculative) {
          // The last read emptied the socket: only a reply's wake-up can have put something there since.
          const handled = this.received - first;
          if (handled === 0 || handled >= MAX_FRAMES_PER_WAKE) break;
          if (this.pollNs > 0) {
            if (this.poll()) continue;
            break;
          }
          if (!this.readAhead && ++this.sinceProbe < READ_AHEAD_PROBE) break;
          this.sinceProbe = 0;
        }
        const r = this.recvSome();
        if (r === -EAGAIN) {
          if (speculative) this.readAhead = false;
          break;
        }
        read = true;
        if (r === 0) {
          this.close("the peer closed the connection");
          break;
        }
        if (r < 0) {
          this.close(`recv failed: errno ${-r}`);
          break;
        }
        if (speculative) this.readAhead = true;
      }
      // Back to the event loop: the wait for the next message starts (unless a poll already started it).
      if ((this.opts.pollMaxNs ?? 0) > 0 && this.waitStart < 0) this.waitStart = this.opts.clock.now();
    } catch (e) {
      // Nothing may escape into the reactor's callback: a bug in a handler closes this connection, not the process.
      // A KernelError once the channel is closed is the peer going away in the middle of a reply (EPIPE): not a bug.
      if (!(e instanceof KernelError && this.closed)) {
        try {
          this.failWith(e);
        } catch (bug) {
          process.emitWarning(`${this.label}: ${bug instanceof Error ? (bug.stack ?? bug.message) : String(bug)}`);
        }
      }
    } finally {
      this.leave();
    }
  }

  /** A wake-up from the event loop ends a wait: judge the polling window by it (QEMU's rule). */
  private adaptPoll(): void {
    if (this.waitStart < 0) return;
    const max = this.opts.pollMaxNs ?? 0;
    const waited = this.opts.clock.now() - this.waitStart;
    this.waitStart = -1;
    if (waited <= this.pollNs) return;
    if (waited > max) this.pollNs = 0;
    else this.pollNs = this.pollNs === 0 ? Math.min(max, POLL_START_NS) : Math.min(max, this.pollNs * 2);
  }

  /**
   * Reads the socket (yielding the CPU between empty reads) until something arrives, the window passes, or the loop
   * has other work: true if it came; false if not, and the wait goes on in the event loop (`adaptPoll` judges the
   * window when it ends: a poll cut short for others is not a miss).
   */
  private poll(): boolean {
    const clock = this.opts.clock;
    const busy = this.opts.loopBusy;
    const start = clock.now();
    const deadline = start + this.pollNs;
    do {
      let r = this.recvSome();
      if (r === -EAGAIN) {
        // Give the CPU to a client that shares it, so that it can send what we wait for (pinned to one CPU, a plain
        // spin only delays it); with the client elsewhere this returns at once.
        schedYield();
        if (busy?.() === true) {
          // Ours may be what made the loop ready, just after the read: read once more before giving the loop back.
          r = this.recvSome();
          if (r === -EAGAIN) {
            this.pollYields++;
            break;
          }
        }
      }
      if (r > 0) return true;
      if (r !== -EAGAIN) {
        this.close(r === 0 ? "the peer closed the connection" : `recv failed: errno ${-r}`);
        return false;
      }
    } while (clock.now() < deadline);
    this.waitStart = start;
    return false;
  }

  /** Polls cut short because the loop had other work (`ChannelOptions.loopBusy`). */
  get pollYieldCount(): number {
    return this.pollYields;
  }

  /** Adaptive polling's current window in ns (0: not polling). */
  get pollWindowNs(): number {
    return this.pollNs;
  }

  private dispatchReady(): void {
    while (!this.closed) {
      if (this.deferred.length > 0) {
        this.dispatch(this.deferred.shift()!);
        continue;
      }
      if (this.depth === 1 && this.start > READ_CHUNK) this.compact();
      const f = this.nextFrame();
      if (f === null) return;
      this.dispatch(f);
    }
  }

  private dispatch(f: Frame): void {
    this.received++;
    const keep = this.keep;
    const gen = this.rbufGen;
    if (this.start > this.keep) this.keep = this.start;
    try {
      this.handlers.onFrame(f);
    } finally {
      // After a grow, the outer handlers' frames are in a retired buffer: nothing in this one is theirs.
      this.keep = gen === this.rbufGen ? keep : 0;
      for (let i = 0; i < f.fds.length; i++) {
        const fd = f.fds[i]!;
        if (fd >= 0) closeFd(fd);
        f.fds[i] = -1;
      }
    }
  }

  /**
   * Blocks until a frame satisfying `match` arrives (returned: its payload valid until the next read of this
   * channel; its fds belong to the caller), or `timeoutMs` passes (ETIMEDOUT; the connection is closed, since a reply
   * may still come and nothing could tell it from the next one). Other frames are dispatched at once or deferred.
   */
  waitFor(match: (f: Frame) => boolean, timeoutMs: number, others: "dispatch" | "defer", what: string): Frame {
    if (this.closed) throw new KernelError(Errno.ENOTCONN, `${this.label}: the connection is closed (${what})`);
    const clock = this.opts.clock;
    const deadline = clock.now() + timeoutMs * NS_PER_MS;
    this.depth++;
    try {
      for (;;) {
        const f = this.nextFrame();
        if (f !== null) {
          if (match(f)) return f;
          if (others === "dispatch") this.dispatch(f);
          else this.deferred.push(copyFrame(f));
          if (this.closed) break;
          continue;
        }
        const left = Math.ceil((deadline - clock.now()) / NS_PER_MS);
        if (left <= 0) {
          this.close(`no answer to ${what} within ${timeoutMs} ms`);
          throw new KernelError(Errno.ETIMEDOUT, `${this.label}: no answer to ${what} within ${timeoutMs} ms`);
        }
        const p = pollFd(this.fd, POLLIN, left);
        if (p === 0) continue;
        if (p < 0) {
          this.close(`poll failed: errno ${-p}`);
          break;
        }
        const r = this.recvSome();
        if (r === -EAGAIN) continue;
        if (r === 0) {
          this.close("the peer closed the connection");
          break;
        }
        if (r < 0) {
          this.close(`recv failed: errno ${-r}`);
          break;
        }
      }
    } catch (e) {
      this.failWith(e);
    } finally {
      this.leave();
    }
    throw new KernelError(
      Errno.ECONNRESET,
      `${this.label}: ${this.closedReason ?? "closed"} (while waiting for ${what})`,
    );
  }

  /** Handles an exception from parsing or a handler: a protocol error closes after its reply; others close and rethrow. */
  private failWith(e: unknown): void {
    if (e instanceof ProtocolError) {
      try {
        if (!this.closed) this.handlers.onProtocolError?.(e.info);
      } catch {
        // The error reply could not go out (the peer is gone): the connection closes anyway.
      }
      this.close(`protocol error: ${e.info.message}`);
      return;
    }
    if (!(e instanceof KernelError && this.closed)) {
      this.close(`internal error: ${e instanceof Error ? e.message : String(e)}`);
    }
    throw e;
  }

  private leave(): void {
    this.depth--;
    if (this.depth > 0) return;
    if (this.closed) {
      this.freeBuffers();
      this.notifyClose();
      return;
    }
    // No handler runs: no payload views a retired buffer any more.
    if (this.retired.length > 0) for (const b of this.retired.splice(0)) b.free();
    if (this.start === this.end) {
      this.base += this.start;
      this.start = this.end = 0;
    }
  }

  /**
   * One recvmsg into the free space: bytes, 0 at EOF, or -errno. Sets `drained` when the read was short and carried
   * no fds, which proves the socket was empty at that moment.
   */
  private recvSome(): number {
    let space = this.rbuf.size - this.end;
    if (space < Math.min(READ_CHUNK, this.rbuf.size >> 1) && this.start > this.keep) {
      this.compact();
      space = this.rbuf.size - this.end;
    }
    if (space < MIN_READ) {
      this.grow(this.end - this.start + MIN_READ);
      space = this.rbuf.size - this.end;
    }
    const chunkStart = this.base + this.end;
    const r = this.io.recv(this.fd, this.rbuf.address + this.end, space);
    if (r > 0) this.end += r;
    const n = this.io.fdCount;
    this.drained = r > 0 && r < space && n === 0;
    if (n > 0 || this.io.truncated) {
      const fds: number[] = [];
      for (let i = 0; i < n; i++) fds.push(this.io.fds[i]!);
      if (this.io.truncated || n > this.opts.maxRecvFds) {
        for (const f of fds) closeFd(f);
        throw new ProtocolError({
          id: undefined,
          cmd: undefined,
          flags: undefined,
          errno: Errno.EINVAL,
          message: `more than ${this.opts.maxRecvFds} fds with one message`,
        });
      }
      this.attributeFds(fds, chunkStart, this.base + this.end);
    }
    return r;
  }

  /**
   * Replaces the receive buffer with one of at least `need` bytes (doubling, at most `rbufMax`) holding the unparsed
   * bytes at offset 0. The old buffer is freed, or retired while a handler runs (its frame's payload views it).
   */
  private grow(need: number): void {
    if (need > this.rbufMax) {
      throw new ProtocolError({
        id: undefined,
        cmd: undefined,
        flags: undefined,
        errno: Errno.E2BIG,
        message: `${this.end - this.start} unprocessed bytes fill the receive buffer`,
      });
    }
    const next = new NativeBuffer(Math.min(this.rbufMax, Math.max(need, 2 * this.rbuf.size)));
    next.bytes.set(this.rbuf.bytes.subarray(this.start, this.end));
    if (this.keep > 0) this.retired.push(this.rbuf);
    else this.rbuf.free();
    this.rbuf = next;
    this.rbufGen++;
    this.base += this.start;
    this.end -= this.start;
    this.start = 0;
    this.keep = 0;
    this.bigUse = true;
    this.armIdleCheck();
  }

  /** While a buffer is larger than its initial size, checks every `bufferIdleMs` whether it can return to it. */
  private armIdleCheck(): void {
    if (this.idleTimer !== undefined || this.closed) return;
    const ms = this.opts.bufferIdleMs ?? BUFFER_IDLE_MS;
    this.idleTimer = this.opts.clock.after(ms * NS_PER_MS, () => {
      this.idleTimer = undefined;
      if (this.closed) return;
      const busy = this.bigUse || this.depth > 0 || this.start !== this.end;
      this.bigUse = false;
      if (!busy) this.shrink();
      if (this.rbuf.size > RECV_BUFFER_INITIAL || this.sbuf.size > SEND_BUFFER_INITIAL) this.armIdleCheck();
    });
  }

  /** Back to the initial buffers; only between handlers with nothing unread (no frame views a buffer). */
  private shrink(): void {
    if (this.rbuf.size > RECV_BUFFER_INITIAL) {
      this.rbuf.free();
      this.rbuf = new NativeBuffer(Math.min(RECV_BUFFER_INITIAL, this.rbufMax));
      this.rbufGen++;
      this.base += this.end;
      this.start = this.end = this.keep = 0;
    }
    if (this.sbuf.size > SEND_BUFFER_INITIAL) {
      this.sbuf.free();
      this.sbuf = new NativeBuffer(SEND_BUFFER_INITIAL);
    }
  }

  /** Moves the unparsed bytes down to `keep`; stream positions of moved bytes stay `base + offset`. */
  private compact(): void {
    const shift = this.start - this.keep;
    if (shift <= 0) return;
    this.rbuf.bytes.copyWithin(this.keep, this.start, this.end);
    this.base += shift;
    this.end -= shift;
    this.start = this.keep;
  }

  /** Gives `fds` (received with the stream bytes [cs, ce)) to the last message starting in that range. */
  private attributeFds(fds: number[], cs: number, ce: number): void {
    let p = this.base + this.start;
    let owner = -1;
    const b = this.rbuf.bytes;
    while (p < ce) {
      if (p >= cs) owner = p;
      const off = p - this.base;
      if (off + HEADER_SIZE > this.end) break;
      const size = readU32LE(b, off + 4);
      if (size < HEADER_SIZE) break;
      p += size;
    }
    if (owner < 0 || this.fdsAt.some((e) => e.at === owner)) {
      for (const f of fds) closeFd(f);
      throw new ProtocolError({
        id: undefined,
        cmd: undefined,
        flags: undefined,
        errno: Errno.EINVAL,
        message: `${fds.length} fd(s) arrived with no message to carry them`,
      });
    }
    this.fdsAt.push({ at: owner, fds });
  }

  /** The next complete frame in the buffer, or null. Throws ProtocolError for a bad msg_size. */
  private nextFrame(): Frame | null {
    if (this.closed || this.end - this.start < HEADER_SIZE) return null;
    const b = this.rbuf.bytes;
    const at = this.start;
    const size = readU32LE(b, at + 4);
    if (size < HEADER_SIZE || size > this.opts.maxMsgSize) {
      throw new ProtocolError({
        id: readU16LE(b, at),
        cmd: readU16LE(b, at + 2),
        flags: readU32LE(b, at + 8),
        errno: size < HEADER_SIZE ? Errno.EINVAL : Errno.E2BIG,
        message:
          size < HEADER_SIZE
            ? `msg_size ${size} is smaller than the ${HEADER_SIZE}-byte header`
            : `msg_size ${size} exceeds the limit of ${this.opts.maxMsgSize} bytes`,
      });
    }
    if (size > RECV_BUFFER_INITIAL >> 1) this.bigUse = true;
    if (this.end - at < size) {
      if (at + size > this.rbuf.size) {
        this.compact();
        if (this.start + size > this.rbuf.size) this.grow(size);
      }
      return null;
    }
    const abs = this.base + at;
    let fds: number[] = NO_FDS;
    if (this.fdsAt.length > 0 && this.fdsAt[0]!.at === abs) fds = this.fdsAt.shift()!.fds;
    this.start = at + size;
    return {
      id: readU16LE(b, at),
      cmd: readU16LE(b, at + 2),
      size,
      flags: readU32LE(b, at + 8),
      errorNo: readU32LE(b, at + 12),
      payload: b.subarray(at + HEADER_SIZE, at + size),
      fds,
    };
  }

  // ---- closing ---------------------------------------------------------------------------------------------------

  /** Closes the socket and everything the channel still holds; `onClose` runs once. Idempotent. */
  close(reason = "closed locally"): void {
    if (this.closed) return;
    this.closedReason = reason;
    this.watchHandle?.close();
    this.watchHandle = undefined;
    this.writeTimer?.cancel();
    this.writeTimer = undefined;
    this.idleTimer?.cancel();
    this.idleTimer = undefined;
    closeFd(this.fd);
    for (const e of this.fdsAt) for (const f of e.fds) closeFd(f);
    this.fdsAt.length = 0;
    for (const f of this.deferred) for (const fd of f.fds) if (fd >= 0) closeFd(fd);
    this.deferred.length = 0;
    for (const q of this.queue) if (q.fds) for (const f of q.fds) closeFd(f);
    this.queue.length = 0;
    this.queuedBytes = 0;
    // Inside a handler (or a wait), `onClose` waits until the stack unwinds: the session must not be torn down under
    // a device that is still running the command whose DMA round trip failed.
    if (this.depth === 0) {
      this.freeBuffers();
      this.notifyClose();
    }
  }

  private notifyClose(): void {
    if (this.closeNotified) return;
    this.closeNotified = true;
    try {
      this.handlers.onClose(this.closedReason!);
    } catch (e) {
      process.emitWarning(`${this.label}: onClose failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    }
  }

  private freeBuffers(): void {
    if (this.freed) return;
    this.freed = true;
    this.rbuf.free();
    for (const b of this.retired.splice(0)) b.free();
    this.sbuf.free();
    this.io.free();
  }
}

function copyFrame(f: Frame): Frame {
  return { ...f, payload: f.payload.slice(), fds: f.fds.slice() };
}
