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
 * - The socket file is created with mode 0600 (the umask is narrowed around bind); a stale socket file at the path is
 *   replaced, any other file is EEXIST. `close` removes it.
 * - One client at a time. A second connection while one is served is refused, not queued: it gets an error reply
 *   EBUSY to its first message (QEMU prints "version reply: Device or resource busy") and is closed, and a trace event
 *   names the device and the client being served. Waiting would leave a VMM hanging in device realize with no way to
 *   tell why; refusing tells it at once. After the client leaves, the next connection is served.
 * - Each connection gets a Session (session.ts): its own host Process, container and device fd. When the client goes
 *   (cleanly, abruptly, or dropped for a protocol error or a write timeout) everything the session held is released
 *   and the device is reset, so the next client finds it as after a reset.
 * - I/O never blocks the event loop except for synchronous DMA_READ/DMA_WRITE round trips, bounded by
 *   `replyTimeoutMs`. A client that stops reading is dropped after `writeTimeoutMs` without progress; a message whose
 *   header claims more than the limit gets an error reply E2BIG and the connection is dropped.
 *
 * Not offered: twin-socket mode, migration (DEVICE_FEATURE, MIG_DATA_*: EOPNOTSUPP), ioeventfds (REGION_IO_FDS
 * answers with none), mmap of regions (see session.ts).
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import {
  defineTraceEvents,
  Errno,
  KernelError,
  NS_PER_MS,
  type SchedulingClock,
  SystemClock,
  type TimerHandle,
} from "../core/index.ts";
import type { Host } from "../host/index.ts";
import { Channel, type Frame } from "./connection.ts";
import { acceptUnix, closeFd, listenUnix } from "./native.ts";
import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DMA_RW_LAYOUTS,
  VFIO_USER_F_ERROR,
  VFIO_USER_F_TYPE_REPLY,
} from "./protocol.ts";
import { EPOLLIN, Reactor, type Watch } from "./reactor.ts";
import { maxMessageSize, Session } from "./session.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfiouser.listen": { device: string; path: string };
    "vfiouser.connect": { device: string; connection: number };
    "vfiouser.refuse": { device: string; connection: number; serving: number; reason: string };
    "vfiouser.disconnect": { device: string; connection: number; reason: string; messages: number };
    "vfiouser.close": { device: string; path: string };
  }
}
defineTraceEvents("vfio-user", {
  "vfiouser.listen": "{device}: serving vfio-user on {path}",
  "vfiouser.connect": "{device}: client connection {connection} accepted",
  "vfiouser.refuse": "{device}: connection {connection} refused: {reason} (connection {serving} is being served)",
  "vfiouser.disconnect": "{device}: connection {connection} ended after {messages} message(s): {reason}",
  "vfiouser.close": "{device}: no longer serving on {path}",
});

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
  /** A refused connection that sends nothing is closed after this. Default 2000 ms. */
  readonly refuseTimeoutMs?: number;
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
  readonly connections: number;
  readonly refused: number;
  /** Problems found while releasing past sessions (pinned windows left mapped, ...). */
  readonly problems: readonly string[];
}

interface Active {
  readonly id: number;
  readonly channel: Channel;
  readonly session: Session;
}

export class VfioUserServer {
  readonly socketPath: string;
  readonly device: string;
  private readonly opts: Required<Omit<VfioUserServerOptions, "host" | "group" | "device" | "socketPath">>;
  private readonly host: Host;
  private readonly group: number;
  private listenFd: number;
  private watchHandle: Watch | undefined;
  private active: Active | undefined;
  private readonly refusedChannels = new Set<Channel>();
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
      refuseTimeoutMs: o.refuseTimeoutMs ?? 2000,
      dmaRwLayout: o.dmaRwLayout ?? "qemu",
      clock: o.clock ?? new SystemClock(),
    };
    this.listenFd = openListener(o.socketPath);
    this.watchHandle = Reactor.shared().watch(this.listenFd, EPOLLIN, () => this.acceptAll(), true);
    if (this.host.tracer.enabled)
      this.host.tracer.emit("vfiouser.listen", { device: this.device, path: this.socketPath });
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
      connections: this.connections,
      refused: this.refused,
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
    this.active?.channel.close("the server is closing");
    for (const c of [...this.refusedChannels]) c.close("the server is closing");
    try {
      unlinkSync(this.socketPath);
    } catch {
      // Already gone.
    }
    if (this.host.tracer.enabled)
      this.host.tracer.emit("vfiouser.close", { device: this.device, path: this.socketPath });
  }

  private acceptAll(): void {
    while (this.listenFd >= 0) {
      const fd = acceptUnix(this.listenFd);
      if (fd < 0) return;
      const id = ++this.connections;
      try {
        if (this.active === undefined) this.serve(fd, id);
        else this.refuse(fd, id, this.active.id);
      } catch (e) {
        // Out of fds or memory for the connection's buffers: that connection goes, the server stays.
        closeFd(fd);
        this.problems.push(`connection ${id}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
  }

  private serve(fd: number, id: number): void {
    const o = this.opts;
    let session: Session | undefined;
    const channel = this.makeChannel(
      fd,
      id,
      (f) => session!.onFrame(f),
      (reason) => {
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
    if (this.host.tracer.enabled) this.host.tracer.emit("vfiouser.connect", { device: this.device, connection: id });
    for (const fn of this.listeners.connect) fn(id);
    channel.drain();
  }

  private refuse(fd: number, id: number, serving: number): void {
    this.refused++;
    const reason = `${this.device} already has a client; one client at a time`;
    if (this.host.tracer.enabled) {
      this.host.tracer.emit("vfiouser.refuse", { device: this.device, connection: id, serving, reason });
    }
    let timer: TimerHandle | undefined;
    const channel = this.makeChannel(
      fd,
      id,
      (f) => {
        try {
          if ((f.flags & 0xf) === 0) channel.send(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR, Errno.EBUSY);
        } finally {
          channel.close(reason);
        }
      },
      () => {
        timer?.cancel();
        this.refusedChannels.delete(channel);
      },
    );
    this.refusedChannels.add(channel);
    timer = this.opts.clock.after(this.opts.refuseTimeoutMs * NS_PER_MS, () => channel.close(`${reason} (silent)`));
    channel.drain();
  }

  private makeChannel(fd: number, id: number, onFrame: (f: Frame) => void, onClose: (reason: string) => void): Channel {
    const o = this.opts;
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
}

/** Creates the listening socket at `path` with mode 0600, replacing a stale socket file. */
function openListener(path: string): number {
  try {
    const st = lstatSync(path);
    if (!st.isSocket()) {
      throw new KernelError(Errno.EEXIST, `${path} exists and is not a socket; refusing to replace it`);
    }
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  const old = process.umask(0o177);
  let fd: number;
  try {
    fd = listenUnix(path, 8);
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
