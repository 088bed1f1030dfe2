/**
 * A vfio-user server: one device of the host model served on one UNIX socket to a real VMM (QEMU >= 10.1's
 * vfio-user-pci) or to our client.
 *
 * ```ts
 * const server = serveDevice({ socketPath: "/run/vgpu/<uuid>.sock", system, uuid });   // an mdev of a System
 * const server = serveDevice({ socketPath, host, group: 12, device: "0000:00:04.0" });  // any vfio device
 * // qemu-system-x86_64 ... -device '{"driver":"vfio-user-pci","socket":{"path":"...","type":"unix"}}'
 * server.close();
 * ```
 *
 * - The socket file is created with mode 0600 (the umask is narrowed around bind). The path is checked against
 *   sun_path first (ENAMETOOLONG, nothing created). A socket file at the path is probed with a non-blocking connect:
 *   a live listener (the connect succeeds, or its backlog is full) is EADDRINUSE and left alone; only a dead socket
 *   (ECONNREFUSED) is replaced. Any other file is EEXIST. `close` removes it.
 * - One client at a time. A second connection while one is served is refused, not queued: it gets an error reply
 *   EBUSY to its first message (QEMU prints "version reply: Device or resource busy") and is closed, and a trace event
 *   names the device and the client being served. Waiting would leave a VMM hanging in device realize with no way to
 *   tell why; refusing tells it at once. After the client leaves, the next connection is served.
 * - Refusals are cheap and bounded: a refused connection gets no Channel, only its fd, a poll handle and a 16-byte
 *   header slot (the receive and reply bytes are shared by all refusals); the reply goes out as soon as the header of
 *   its first message is in, and the rest of what it sent is discarded. One that says nothing is closed after
 *   `refuseTimeoutMs` (one timer for all). At most `maxPendingConnections` refusals are in flight: beyond that the
 *   server stops accepting (trace `vfiouser.accept.pause`) and the kernel's backlog (4096, clamped by
 *   net.core.somaxconn) holds the rest until refusals finish. Running out of fds at accept also pauses accepting for a
 *   while instead of spinning on the listening socket.
 * - A served client must negotiate (VERSION) within `handshakeTimeoutMs`, or it is dropped (trace
 *   `vfiouser.handshake.timeout`) and the device is free for the next client: a client that connects and says nothing
 *   cannot hold it.
 * - Each connection gets a Session (session.ts): its own host Process, container and device fd. When the client goes
 *   (cleanly, abruptly, or dropped for a protocol error or a write timeout) everything the session held is released
 *   and the device is reset, so the next client finds it as after a reset.
 * - I/O never blocks the event loop except for synchronous DMA_READ/DMA_WRITE round trips, bounded by
 *   `replyTimeoutMs`. A client that stops reading is dropped after `writeTimeoutMs` without progress; a message whose
 *   header claims more than the limit gets an error reply E2BIG and the connection is dropped.
 *
 * Not offered: twin-socket mode, migration (DEVICE_FEATURE, MIG_DATA_*: EOPNOTSUPP), ioeventfds (REGION_IO_FDS
 * answers with none). Mmap-able regions are exported as memfds (see session.ts).
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import {
  checkSocketPath,
  defineTraceEvents,
  Errno,
  KernelError,
  NS_PER_MS,
  readU16LE,
  readU32LE,
  type SchedulingClock,
  SystemClock,
  type TimerHandle,
  writeU16LE,
  writeU32LE,
} from "../core/index.ts";
import type { Host } from "../host/index.ts";
import { Channel, type Frame } from "./connection.ts";
import { acceptUnix, closeFd, connectUnixNonblocking, listenUnix, MsgIo, NativeBuffer } from "./native.ts";
import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DMA_RW_LAYOUTS,
  HEADER_SIZE,
  VFIO_USER_F_ERROR,
  VFIO_USER_F_TYPE_COMMAND,
  VFIO_USER_F_TYPE_MASK,
  VFIO_USER_F_TYPE_REPLY,
} from "./protocol.ts";
import { EPOLLERR, EPOLLIN, EPOLLRDHUP, Reactor, type Watch } from "./reactor.ts";
import { maxMessageSize, Session } from "./session.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfiouser.listen": { device: string; path: string; pollMaxNs: number };
    "vfiouser.connect": { device: string; connection: number };
    "vfiouser.refuse": { device: string; connection: number; serving: number; reason: string };
    "vfiouser.handshake.timeout": { device: string; connection: number; timeoutMs: number };
    "vfiouser.accept.pause": { device: string; pending: number; reason: string };
    "vfiouser.accept.resume": { device: string; pending: number };
    "vfiouser.disconnect": { device: string; connection: number; reason: string; messages: number };
    "vfiouser.close": { device: string; path: string };
  }
}
defineTraceEvents("vfio-user", {
  "vfiouser.listen": "{device}: serving vfio-user on {path} (adaptive polling up to {pollMaxNs} ns; 0: off)",
  "vfiouser.connect": "{device}: client connection {connection} accepted",
  "vfiouser.refuse": "{device}: connection {connection} refused: {reason} (connection {serving} is being served)",
  "vfiouser.handshake.timeout": "{device}: connection {connection} sent no VERSION within {timeoutMs} ms; dropped",
  "vfiouser.accept.pause": "{device}: not accepting connections ({pending} refusals in flight): {reason}",
  "vfiouser.accept.resume": "{device}: accepting connections again ({pending} refusals in flight)",
  "vfiouser.disconnect": "{device}: connection {connection} ended after {messages} message(s): {reason}",
  "vfiouser.close": "{device}: no longer serving on {path}",
});

/** The longest adaptive polling window a server accepts: beyond it the event loop would stall visibly. */
export const MAX_POLL_NS = 10_000_000;

/** Throws EINVAL unless `ns` is a valid pollMaxNs: an integer from 0 (off) to MAX_POLL_NS. */
export function checkPollMaxNs(ns: number): void {
  if (!Number.isSafeInteger(ns) || ns < 0 || ns > MAX_POLL_NS) {
    throw new KernelError(
      Errno.EINVAL,
      `vfio-user server option pollMaxNs must be an integer from 0 to ${MAX_POLL_NS} (10 ms), got ${ns}`,
    );
  }
}

export interface VfioUserServerOptions {
  readonly socketPath: string;
  /** The host model the device lives in (its devfs, physmem, tracer, processes). */
  readonly host: Host;
  /** The device's VFIO group number (/dev/vfio/<group>). */
  readonly group: number;
  /** The name GET_DEVICE_FD matches: an mdev UUID or a PCI BDF. */
  readonly device: string;
  /** Largest REGION_READ/WRITE count accepted (advertised as max_data_xfer_size). Default 1 MiB. */
  readonly maxDataXferSize?: number;
  /** Fds accepted per message (advertised as max_msg_fds). Default 16, QEMU's maximum. */
  readonly maxMsgFds?: number;
  /** DMA windows per client. Default 65535. */
  readonly maxDmaMaps?: number;
  /** A DMA_READ/DMA_WRITE the client does not answer within this is fatal to the connection. Default 5000 ms. */
  readonly replyTimeoutMs?: number;
  /** A client that reads none of our queued replies for this long is dropped. Default 5000 ms. */
  readonly writeTimeoutMs?: number;
  /** Or that lets this many bytes pile up. Default 16 MiB. */
  readonly maxQueuedBytes?: number;
  /** Adaptive polling of a served connection's socket (ChannelOptions.pollMaxNs). Default 0: off. */
  readonly pollMaxNs?: number;
  /** A refused connection that sends nothing is closed after this. Default 2000 ms. */
  readonly refuseTimeoutMs?: number;
  /** Refused connections waiting for their first message, at most; more wait in the listen backlog. Default 64. */
  readonly maxPendingConnections?: number;
  /** The served client must send VERSION within this, or it is dropped and the device freed. Default 5000 ms. */
  readonly handshakeTimeoutMs?: number;
  /** DMA_READ/DMA_WRITE layout: "qemu" (QEMU 10.x, the default) or "spec" (libvfio-user). */
  readonly dmaRwLayout?: "qemu" | "spec";
  /** Real time for timeouts (default a SystemClock). */
  readonly clock?: SchedulingClock;
}

export interface VfioUserServerState {
  readonly socketPath: string;
  readonly device: string;
  readonly listening: boolean;
  /** The connection number being served, if any. */
  readonly connection: number | undefined;
  /** The served client's host process (model pid), once it negotiated. */
  readonly pid: number | undefined;
  readonly windows: number;
  readonly eventfds: number;
  /** Interrupt edges the served client's eventfds could not take (a full counter): lost, never waited for. */
  readonly lostSignals: number;
  readonly connections: number;
  readonly refused: number;
  /** Refused connections not yet answered or closed. */
  readonly pending: number;
  /** False while accepting is paused (too many refusals in flight, or out of fds). */
  readonly accepting: boolean;
  /** Problems found while releasing past sessions (pinned windows left mapped, ...). */
  readonly problems: readonly string[];
}

interface Active {
  readonly id: number;
  readonly channel: Channel;
  readonly session: Session;
}

/** The kernel clamps the listen backlog to net.core.somaxconn (4096 since Linux 5.4). */
const LISTEN_BACKLOG = 4096;
/** After accept ran out of fds (EMFILE, ENFILE) or memory, accepting resumes after this. */
const ACCEPT_RETRY_MS = 100;
/** Bytes of a refused client's first message discarded before its socket is closed (the rest resets the peer). */
const REFUSE_DISCARD_MAX = 64 * 1024;
const ECONNABORTED = 103;
const ENOBUFS = 105;

/** A refused connection until the header of its first message is in (then answered EBUSY) or it times out. */
interface Refusal {
  readonly id: number;
  readonly fd: number;
  readonly watch: Watch;
  /** Clock time (ns) after which it is closed unanswered. */
  readonly deadline: number;
  /** The first message's header, as far as it arrived. */
  readonly header: Uint8Array;
  got: number;
}

/**
 * The receive and reply bytes every refusal uses, allocated on the first refusal: refusals are handled synchronously
 * on the main thread, one at a time, so one block serves all servers of the process.
 */
let refuseScratch: { readonly io: MsgIo; readonly buf: NativeBuffer } | undefined;

export class VfioUserServer {
  readonly socketPath: string;
  readonly device: string;
  private readonly opts: Required<Omit<VfioUserServerOptions, "host" | "group" | "device" | "socketPath">>;
  private readonly host: Host;
  private readonly group: number;
  private listenFd: number;
  private watchHandle: Watch | undefined;
  private active: Active | undefined;
  /** Refusals in flight, in accept order (so in deadline order). */
  private readonly refusing = new Map<number, Refusal>();
  private refuseTimer: TimerHandle | undefined;
  /** Why accepting is paused (undefined: accepting). */
  private paused: "pending" | "resources" | undefined;
  private retryTimer: TimerHandle | undefined;
  /** accept ran out of fds or memory at least once (reported once in `problems`). */
  private acceptFailed = false;
  private connections = 0;
  private refused = 0;
  private readonly problems: string[] = [];
  private readonly disconnectWaiters: (() => void)[] = [];
  private readonly listeners = {
    connect: new Set<(connection: number) => void>(),
    disconnect: new Set<(connection: number, reason: string) => void>(),
  };

  private constructor(o: VfioUserServerOptions) {
    this.socketPath = o.socketPath;
    this.device = o.device;
    this.host = o.host;
    this.group = o.group;
    this.opts = {
      maxDataXferSize: o.maxDataXferSize ?? DEFAULT_MAX_DATA_XFER_SIZE,
      maxMsgFds: o.maxMsgFds ?? 16,
      maxDmaMaps: o.maxDmaMaps ?? DEFAULT_MAX_DMA_MAPS,
      replyTimeoutMs: o.replyTimeoutMs ?? 5000,
      writeTimeoutMs: o.writeTimeoutMs ?? 5000,
      maxQueuedBytes: o.maxQueuedBytes ?? 16 * 1024 * 1024,
      pollMaxNs: o.pollMaxNs ?? 0,
      refuseTimeoutMs: o.refuseTimeoutMs ?? 2000,
      maxPendingConnections: o.maxPendingConnections ?? 64,
      handshakeTimeoutMs: o.handshakeTimeoutMs ?? 5000,
      dmaRwLayout: o.dmaRwLayout ?? "qemu",
      clock: o.clock ?? new SystemClock(),
    };
    for (const k of ["maxPendingConnections", "handshakeTimeoutMs", "refuseTimeoutMs"] as const) {
      const v = this.opts[k];
      if (!Number.isSafeInteger(v) || v <= 0) {
        throw new KernelError(Errno.EINVAL, `vfio-user server option ${k} must be a positive integer, got ${v}`);
      }
    }
    checkPollMaxNs(this.opts.pollMaxNs);
    this.listenFd = openListener(o.socketPath);
    this.watchHandle = Reactor.shared().watch(this.listenFd, EPOLLIN, () => this.acceptAll(), true);
    if (this.host.tracer.enabled)
      this.host.tracer.emit("vfiouser.listen", {
        device: this.device,
        path: this.socketPath,
        pollMaxNs: this.opts.pollMaxNs,
      });
    // A connection may already wait: take it now rather than one loop iteration later.
    this.acceptAll();
  }

  /** Creates the socket and starts serving. */
  static listen(opts: VfioUserServerOptions): VfioUserServer {
    return new VfioUserServer(opts);
  }

  get listening(): boolean {
    return this.listenFd >= 0;
  }

  state(): VfioUserServerState {
    const s = this.active?.session;
    return {
      socketPath: this.socketPath,
      device: this.device,
      listening: this.listening,
      connection: this.active?.id,
      pid: s?.process?.pid,
      windows: s?.dmaTable?.size ?? 0,
      eventfds: s?.eventfdCount ?? 0,
      lostSignals: s?.lostSignals ?? 0,
      connections: this.connections,
      refused: this.refused,
      pending: this.refusing.size,
      accepting: this.listening && this.paused === undefined,
      problems: [...this.problems],
    };
  }

  /** Calls `fn` when a client is accepted for service. Returns the function that removes it. */
  onConnect(fn: (connection: number) => void): () => void {
    this.listeners.connect.add(fn);
    return () => this.listeners.connect.delete(fn);
  }

  /** Calls `fn` when the served client's session has been released. Returns the function that removes it. */
  onDisconnect(fn: (connection: number, reason: string) => void): () => void {
    this.listeners.disconnect.add(fn);
    return () => this.listeners.disconnect.delete(fn);
  }

  /** Resolves when no client is connected (at once if none is). */
  idle(): Promise<void> {
    if (this.active === undefined) return Promise.resolve();
    return new Promise((resolve) => this.disconnectWaiters.push(resolve));
  }

  /** Stops listening, drops the client (releasing its session) and removes the socket file. Idempotent. */
  close(): void {
    if (this.listenFd < 0) return;
    this.watchHandle?.close();
    this.watchHandle = undefined;
    closeFd(this.listenFd);
    this.listenFd = -1;
    this.retryTimer?.cancel();
    this.retryTimer = undefined;
    this.active?.channel.close("the server is closing");
    for (const r of [...this.refusing.values()]) this.endRefusal(r);
    try {
      unlinkSync(this.socketPath);
    } catch {
      // Already gone.
    }
    if (this.host.tracer.enabled)
      this.host.tracer.emit("vfiouser.close", { device: this.device, path: this.socketPath });
  }

  // ---- accepting -------------------------------------------------------------------------------------------------

  private acceptAll(): void {
    while (this.listenFd >= 0 && this.paused === undefined) {
      // With the device busy the next connection is a refusal: past the bound, it waits in the backlog.
      if (this.active !== undefined && this.refusing.size >= this.opts.maxPendingConnections) {
        this.pause("pending", `${this.refusing.size} refused connections are waiting for their first message`);
        return;
      }
      const fd = acceptUnix(this.listenFd);
      if (fd < 0) {
        if (fd === -Errno.EINTR || fd === -ECONNABORTED) continue;
        if (fd === -Errno.EMFILE || fd === -Errno.ENFILE || fd === -Errno.ENOMEM || fd === -ENOBUFS) {
          // Level-triggered: the waiting connection would wake us again at once. Let fds come back first.
          if (!this.acceptFailed) {
            this.acceptFailed = true;
            this.problems.push(`accept failed with errno ${-fd} (out of fds or memory); accepting pauses meanwhile`);
          }
          this.pause("resources", `accept failed with errno ${-fd} (out of fds or memory)`);
          this.retryTimer = this.opts.clock.after(ACCEPT_RETRY_MS * NS_PER_MS, () => {
            this.retryTimer = undefined;
            this.resume();
          });
        }
        return;
      }
      const id = ++this.connections;
      try {
        if (this.active === undefined) this.serve(fd, id);
        else this.refuse(fd, id, this.active.id);
      } catch (e) {
        // Out of fds or memory for the connection: that connection goes, the server stays.
        closeFd(fd);
        this.problems.push(`connection ${id}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }

  private pause(why: "pending" | "resources", reason: string): void {
    if (this.paused !== undefined) return;
    this.paused = why;
    this.watchHandle?.modify(0);
    if (this.host.tracer.enabled) {
      this.host.tracer.emit("vfiouser.accept.pause", { device: this.device, pending: this.refusing.size, reason });
    }
  }

  /** Accepting again (the listening socket's readiness brings the waiting connections). */
  private resume(): void {
    if (this.paused === undefined || this.listenFd < 0) return;
    this.paused = undefined;
    this.watchHandle?.modify(EPOLLIN);
    if (this.host.tracer.enabled) {
      this.host.tracer.emit("vfiouser.accept.resume", { device: this.device, pending: this.refusing.size });
    }
  }

  // ---- the served client -----------------------------------------------------------------------------------------

  private serve(fd: number, id: number): void {
    const o = this.opts;
    let session: Session | undefined;
    let handshake: TimerHandle | undefined;
    const channel = this.makeChannel(
      fd,
      id,
      (f) => {
        session!.onFrame(f);
        if (handshake !== undefined && session!.negotiated !== undefined) {
          handshake.cancel();
          handshake = undefined;
        }
      },
      (reason) => {
        handshake?.cancel();
        handshake = undefined;
        const problems = session?.release(reason) ?? [];
        for (const p of problems) this.problems.push(`connection ${id}: ${p}`);
        if (this.host.tracer.enabled) {
          this.host.tracer.emit("vfiouser.disconnect", {
            device: this.device,
            connection: id,
            reason,
            messages: channel.received,
          });
        }
        if (this.active?.id === id) this.active = undefined;
        // The next connection is served, not refused: the bound on refusals no longer holds it back.
        if (this.paused === "pending") this.resume();
        for (const w of this.disconnectWaiters.splice(0)) w();
        for (const fn of this.listeners.disconnect) fn(id, reason);
      },
    );
    session = new Session(
      {
        host: this.host,
        group: this.group,
        device: this.device,
        maxMsgFds: o.maxMsgFds,
        maxDataXferSize: o.maxDataXferSize,
        maxDmaMaps: o.maxDmaMaps,
        replyTimeoutMs: o.replyTimeoutMs,
        dmaRwLayout: DMA_RW_LAYOUTS[o.dmaRwLayout],
      },
      channel,
    );
    this.active = { id, channel, session };
    handshake = o.clock.after(o.handshakeTimeoutMs * NS_PER_MS, () => {
      handshake = undefined;
      if (channel.closed || session.negotiated !== undefined) return;
      if (this.host.tracer.enabled) {
        this.host.tracer.emit("vfiouser.handshake.timeout", {
          device: this.device,
          connection: id,
          timeoutMs: o.handshakeTimeoutMs,
        });
      }
      channel.close(`no VERSION within ${o.handshakeTimeoutMs} ms`);
    });
    if (this.host.tracer.enabled) this.host.tracer.emit("vfiouser.connect", { device: this.device, connection: id });
    for (const fn of this.listeners.connect) fn(id);
    channel.drain();
  }

  private makeChannel(fd: number, id: number, onFrame: (f: Frame) => void, onClose: (reason: string) => void): Channel {
    const o = this.opts;
    const reactor = Reactor.shared();
    const channel: Channel = new Channel(
      fd,
      {
        label: `vfio-user ${this.device} connection ${id}`,
        maxMsgSize: maxMessageSize(o.maxDataXferSize),
        maxRecvFds: o.maxMsgFds,
        maxSendFds: 1,
        writeTimeoutMs: o.writeTimeoutMs,
        maxQueuedBytes: o.maxQueuedBytes,
        clock: o.clock,
        watch: true,
        ref: true,
        pollMaxNs: o.pollMaxNs,
        // Polling yields to any other fd with work: another device's client, an eventfd, the daemon's control socket.
        loopBusy: () => reactor.hasReadyFd(),
      },
      {
        onFrame,
        onClose,
        onProtocolError: (info) => {
          if (info.id !== undefined && info.cmd !== undefined) {
            channel.send(info.id, info.cmd, VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR, info.errno);
          }
        },
      },
    );
    return channel;
  }

  // ---- refusals --------------------------------------------------------------------------------------------------

  private refuse(fd: number, id: number, serving: number): void {
    this.refused++;
    if (this.host.tracer.enabled) {
      const reason = `${this.device} already has a client; one client at a time`;
      this.host.tracer.emit("vfiouser.refuse", { device: this.device, connection: id, serving, reason });
    }
    refuseScratch ??= { io: new MsgIo(16), buf: new NativeBuffer(4096) };
    const watch = Reactor.shared().watch(fd, EPOLLIN | EPOLLRDHUP, (ev) => this.onRefusalEvent(r, ev), true);
    const r: Refusal = {
      id,
      fd,
      watch,
      deadline: this.opts.clock.now() + this.opts.refuseTimeoutMs * NS_PER_MS,
      header: new Uint8Array(HEADER_SIZE),
      got: 0,
    };
    this.refusing.set(id, r);
    if (this.refuseTimer === undefined) this.armRefuseTimer();
    // The client may have sent its VERSION with its connect: answer it now.
    this.onRefusalEvent(r, EPOLLIN);
  }

  /** Reads the first header; once complete, answers EBUSY (a command) and closes. */
  private onRefusalEvent(r: Refusal, ev: number): void {
    if (!this.refusing.has(r.id)) return;
    if ((ev & EPOLLERR) !== 0) {
      this.endRefusal(r);
      return;
    }
    const { io, buf } = refuseScratch!;
    while (r.got < HEADER_SIZE) {
      const n = io.recv(r.fd, buf.address, HEADER_SIZE - r.got);
      closeReceivedFds(io);
      if (n === -Errno.EAGAIN) return;
      if (n <= 0) {
        // The client went away (or the socket failed) before a whole header: nothing to answer.
        this.endRefusal(r);
        return;
      }
      r.header.set(buf.bytes.subarray(0, n), r.got);
      r.got += n;
    }
    const flags = readU32LE(r.header, 8);
    if ((flags & VFIO_USER_F_TYPE_MASK) === VFIO_USER_F_TYPE_COMMAND) {
      const b = buf.bytes;
      writeU16LE(b, 0, readU16LE(r.header, 0));
      writeU16LE(b, 2, readU16LE(r.header, 2));
      writeU32LE(b, 4, HEADER_SIZE);
      writeU32LE(b, 8, VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR);
      writeU32LE(b, 12, Errno.EBUSY);
      // A fresh socket has room for 16 bytes; if not, the client gets the close alone.
      io.send(r.fd, buf.address, HEADER_SIZE, undefined, false);
    }
    // Unread bytes at close would reset the connection under the client's read of the reply: take what is there.
    for (let taken = 0; taken < REFUSE_DISCARD_MAX; ) {
      const n = io.recv(r.fd, buf.address, buf.size);
      closeReceivedFds(io);
      if (n <= 0) break;
      taken += n;
    }
    this.endRefusal(r);
  }

  private endRefusal(r: Refusal): void {
    if (!this.refusing.delete(r.id)) return;
    r.watch.close();
    closeFd(r.fd);
    if (this.refusing.size === 0) {
      this.refuseTimer?.cancel();
      this.refuseTimer = undefined;
    }
    if (this.paused === "pending" && this.refusing.size < this.opts.maxPendingConnections) this.resume();
  }

  /** One timer for all refusals, set for the oldest one's deadline. */
  private armRefuseTimer(): void {
    const first = this.refusing.values().next();
    if (first.done === true) return;
    this.refuseTimer = this.opts.clock.at(first.value.deadline, () => {
      this.refuseTimer = undefined;
      const now = this.opts.clock.now();
      for (const r of [...this.refusing.values()]) {
        if (r.deadline > now) break;
        this.endRefusal(r);
      }
      if (this.refuseTimer === undefined) this.armRefuseTimer();
    });
  }
}

function closeReceivedFds(io: MsgIo): void {
  for (let i = 0; i < io.fdCount; i++) closeFd(io.fds[i]!);
  io.fdCount = 0;
}

/**
 * Creates the listening socket at `path` with mode 0600. A socket file already there is probed: a live listener is
 * EADDRINUSE, a dead one (ECONNREFUSED) is replaced. Nothing is created or removed when the path is refused.
 */
function openListener(path: string): number {
  checkSocketPath(path);
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (st !== undefined) {
    if (!st.isSocket()) {
      throw new KernelError(Errno.EEXIST, `${path} exists and is not a socket; refusing to replace it`);
    }
    const probe = connectUnixNonblocking(path);
    if (probe >= 0 || probe === -Errno.EAGAIN) {
      if (probe >= 0) closeFd(probe);
      throw new KernelError(
        Errno.EADDRINUSE,
        `a live server answers at ${path} (a connection to it succeeded); stop it or pick another socket path`,
        { path },
      );
    }
    if (probe === -Errno.ECONNREFUSED) {
      try {
        unlinkSync(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
      }
    } else if (probe !== -Errno.ENOENT) {
      throw new KernelError(
        -probe as Errno,
        `cannot tell whether a server listens at ${path}: connect failed with errno ${-probe}; leaving it alone`,
        { path },
      );
    }
  }
  const old = process.umask(0o177);
  let fd: number;
  try {
    fd = listenUnix(path, LISTEN_BACKLOG);
  } finally {
    process.umask(old);
  }
  chmodSync(path, 0o600);
  return fd;
}

/** What `serveDevice` needs to find the device: a VFIO group and device name, or an mdev of a System. */
export type ServeTarget =
  | { readonly host: Host; readonly group: number; readonly device: string }
  | {
      readonly system: {
        readonly host: Host;
        readonly mdev: { device(uuid: string): { readonly group: number; readonly uuid: string } | undefined };
      };
      readonly uuid: string;
    };

export type ServeDeviceOptions = Omit<VfioUserServerOptions, "host" | "group" | "device"> & ServeTarget;

/**
 * Serves one device on `socketPath`. With `system` + `uuid`: the mdev with that UUID (ENODEV if there is none), as
 * `vgpu host` serves each started mdev on `<state dir>/<uuid>.sock`.
 */
export function serveDevice(opts: ServeDeviceOptions): VfioUserServer {
  if ("system" in opts) {
    const { system, uuid, ...rest } = opts;
    const d = system.mdev.device(uuid);
    if (d === undefined) {
      throw new KernelError(Errno.ENODEV, `no mdev ${uuid} to serve on ${opts.socketPath}: create and start it first`);
    }
    return VfioUserServer.listen({ ...rest, host: system.host, group: d.group, device: d.uuid });
  }
  return VfioUserServer.listen(opts);
}
