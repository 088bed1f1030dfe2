/**
 * The host daemon's socket side: serves `MdevService` on `<root>/vgpu.sock` with the JSON-lines protocol of
 * protocol.ts.
 *
 * Start-up guards the socket path:
 * - a path longer than a UNIX socket can hold: ENAMETOOLONG before anything is created (socket-path.ts);
 * - another daemon answering `hello` there: refuse ("a host is already running at ...");
 * - a socket file nobody listens on (a daemon that died): remove it and say so;
 * - something else at that path (a regular file, a listener that does not speak the protocol): refuse, naming it.
 * The socket is created with mode 0600 (umask 0177 around the bind, then chmod) inside a root folder created 0700.
 * `close()` stops accepting, ends open connections and removes the socket file; process signal handling lives in
 * the `vgpu host` command, which calls it.
 *
 * Requests are handled one line at a time in arrival order per connection; the service is synchronous, so a request
 * runs to completion before any other starts. A malformed line gets an EPROTO answer, never a crash.
 *
 * What one client can make the daemon hold is bounded (`ConnectionLimits`):
 * - a request line: at most `maxLineBytes` bytes are buffered; a longer line is answered EMSGSIZE and the connection
 *   is closed, the rest of the line never read;
 * - replies the client has not taken: once more than `maxUnsentBytes` wait in the socket's write buffer (a client
 *   that writes requests and never reads), the daemon stops reading that client's requests, so the kernel's socket
 *   buffer, then the client's own writes, take the pressure; it reads again when the client has taken them down to
 *   half the bound. A client still over the bound `stuckTimeoutMs` after the daemon stopped reading it (or that does
 *   not take its last answer before a close) is dropped, with a log line. The timer runs on the injected clock.
 * So a connection holds at most one read chunk of requests, the bound plus one reply, and one line.
 *
 * What it does not do: authenticate peers beyond the socket's file mode, limit the number of connections, or lock
 * the root against a daemon started at the same instant (the second bind fails with "already running").
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { dirname, resolve } from "node:path";
import {
  Errno,
  errnoName,
  isKernelError,
  KernelError,
  NS_PER_MS,
  type SchedulingClock,
  SystemClock,
  strerror,
  type TimerHandle,
} from "../core/index.ts";
import { describeZodError } from "./mdevctl-json.ts";
import { SOCKET_NAME, socketPathOf } from "./paths.ts";
import {
  encodeLine,
  LineSplitter,
  MAX_LINE_BYTES,
  type Method,
  methods,
  type Response,
  requestSchema,
} from "./protocol.ts";
import type { MdevService } from "./service.ts";
import { checkSocketPathLength, UNIX_SOCKET_PATH_MAX } from "./socket-path.ts";

export { defaultRoot, definitionsDirOf, SOCKET_NAME, socketPathOf } from "./paths.ts";

/** What one client may make the daemon hold; see the module comment. */
export interface ConnectionLimits {
  /** The longest request line, in bytes without its newline. */
  readonly maxLineBytes: number;
  /** Replies written but not yet taken by the client, in bytes, past which the daemon stops reading its requests. */
  readonly maxUnsentBytes: number;
  /** How long a client may stay over `maxUnsentBytes` (or leave its last answer untaken at close) before it is dropped. */
  readonly stuckTimeoutMs: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  maxLineBytes: MAX_LINE_BYTES,
  maxUnsentBytes: 1 << 20,
  stuckTimeoutMs: 30_000,
};

export interface DaemonOptions {
  readonly root: string;
  readonly service: MdevService;
  /** One line of the daemon's log (no trailing newline). */
  readonly log: (line: string) => void;
  /** Per-connection bounds (default DEFAULT_CONNECTION_LIMITS, field by field). */
  readonly limits?: Partial<ConnectionLimits>;
  /** Runs the stuck-client timers (default: a SystemClock). */
  readonly clock?: SchedulingClock;
}

/** One open connection, as `inspect()` shows it. */
export interface ConnectionState {
  /** Numbered from 1 in accept order; the log names clients by it. */
  readonly client: number;
  /** Reply bytes in the socket's write buffer, not yet taken by the client. */
  readonly unsentBytes: number;
  /** Request lines read and not yet answered. */
  readonly queuedRequests: number;
  /** Requests answered so far. */
  readonly answered: number;
  /** Whether the daemon is reading this client's requests (false while it waits for the client to take replies). */
  readonly reading: boolean;
  /** The daemon has sent its last answer and closes the connection. */
  readonly closing: boolean;
}

export interface Daemon {
  readonly socketPath: string;
  /** The open connections. */
  inspect(): { readonly connections: readonly ConnectionState[] };
  /** Stops serving and removes the socket file. Idempotent. */
  close(): Promise<void>;
}

/** What is at the socket path now. */
export type SocketProbe = "absent" | "live" | "stale" | "not-a-socket" | "foreign";

/** Looks at `path`: absent, a live vgpu host, a stale socket, or something else. */
export async function probeSocket(path: string, timeoutMs = 2000): Promise<SocketProbe> {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (!st) return "absent";
  if (!st.isSocket()) return "not-a-socket";
  return new Promise<SocketProbe>((resolve) => {
    const sock = connect(path);
    let settled = false;
    const done = (r: SocketProbe) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done("foreign"), timeoutMs);
    const lines = new LineSplitter();
    sock.on("connect", () => sock.write(encodeLine({ id: 0, method: "hello", params: {} })));
    sock.on("data", (chunk: Buffer) => {
      const got = lines.push(chunk);
      if (got.overflow) return done("foreign");
      for (const line of got.lines) {
        try {
          const msg = JSON.parse(line) as { ok?: unknown; result?: { server?: unknown } };
          done(msg.ok === true && msg.result?.server === "vgpu host" ? "live" : "foreign");
        } catch {
          done("foreign");
        }
      }
    });
    sock.on("error", (e: NodeJS.ErrnoException) => done(e.code === "ECONNREFUSED" ? "stale" : "foreign"));
    sock.on("close", () => done("foreign"));
  });
}

/**
 * `mkdir -p ROOT` (0700), one level at a time: Node's recursive mkdir loops forever when a folder exists but refuses
 * children with ENOENT (under /proc or /sys), so each level is created on its own and the first error is reported
 * with its errno.
 */
export function makeStateFolder(root: string): void {
  const missing: string[] = [];
  for (let p = resolve(root); !existsSync(p); p = dirname(p)) {
    missing.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const p of missing) {
    try {
      mkdirSync(p, { mode: 0o700 });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? "EIO";
      if (code === "EEXIST") continue;
      const errno = Object.hasOwn(Errno, code) ? (Errno as Readonly<Record<string, Errno>>)[code]! : Errno.EIO;
      throw new KernelError(
        errno,
        `cannot create the state folder ${root}${p === resolve(root) ? "" : ` (at ${p})`}: ${strerror(errno)}; ` +
          "pass --root DIR with a folder you can create",
      );
    }
  }
}

/** Binds the socket and starts serving. Throws KernelError when the path is taken. */
export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  const socketPath = socketPathOf(opts.root);
  checkSocketPathLength(
    socketPath,
    `nothing was created; pick a --root of at most ${UNIX_SOCKET_PATH_MAX - 1 - SOCKET_NAME.length} bytes`,
  );
  const limits: ConnectionLimits = { ...DEFAULT_CONNECTION_LIMITS, ...opts.limits };
  const clock = opts.clock ?? new SystemClock();
  makeStateFolder(opts.root);
  const probe = await probeSocket(socketPath);
  switch (probe) {
    case "live":
      throw new KernelError(Errno.EADDRINUSE, `a host is already running at ${socketPath}`);
    case "foreign":
      throw new KernelError(
        Errno.EADDRINUSE,
        `something is listening at ${socketPath} but does not answer as a vgpu host; stop it or pick another --root`,
      );
    case "not-a-socket":
      throw new KernelError(
        Errno.EEXIST,
        `${socketPath} exists and is not a socket; move it away or pick another --root`,
      );
    case "stale":
      unlinkSync(socketPath);
      opts.log(`removed stale socket ${socketPath} (no host was listening on it)`);
      break;
    case "absent":
      break;
  }

  const connections = new Set<Connection>();
  let clients = 0;
  // Half-open: a client may send its requests and shut its side; the answers still go out, then the daemon closes.
  const server: Server = createServer({ allowHalfOpen: true }, (sock) => {
    const c = new Connection(++clients, sock, { service: opts.service, log: opts.log, limits, clock });
    connections.add(c);
    sock.on("close", () => connections.delete(c));
  });
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      reject(
        e.code === "EADDRINUSE"
          ? new KernelError(Errno.EADDRINUSE, `a host is already running at ${socketPath}`)
          : new KernelError(Errno.EIO, `cannot listen on ${socketPath}: ${e.message}`),
      );
    };
    server.once("error", onError);
    // The bind happens inside listen(): a umask of 0177 creates the socket as 0600 from the start.
    const old = process.umask(0o177);
    try {
      server.listen(socketPath, () => {
        server.off("error", onError);
        resolve();
      });
    } finally {
      process.umask(old);
    }
  });
  chmodSync(socketPath, 0o600);

  let closed: Promise<void> | undefined;
  return {
    socketPath,
    inspect: () => ({ connections: [...connections].map((c) => c.state()) }),
    close(): Promise<void> {
      closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const c of connections) c.destroy();
        try {
          // Only our own socket: a successor may have replaced it already.
          if (lstatSync(socketPath, { throwIfNoEntry: false })?.isSocket()) unlinkSync(socketPath);
        } catch {
          // Already gone.
        }
      });
      return closed;
    },
  };
}

function errorResponse(id: number, e: KernelError, warnings: string[]): Response {
  return { id, ok: false, error: { errno: e.errno, code: errnoName(e.errno), message: e.message }, warnings };
}

/**
 * Answers one request line. A thrown value that is not a KernelError is a bug in the host: the client gets EIO with
 * its message (never a stack trace), and `onBug` (the daemon's log) gets the whole error.
 */
export function handleLine(service: MdevService, line: string, onBug?: (e: unknown) => void): Response {
  const warnings: string[] = [];
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return errorResponse(0, new KernelError(Errno.EPROTO, "bad request: not valid JSON"), warnings);
  }
  const env = requestSchema.safeParse(raw);
  if (!env.success) {
    const id = typeof (raw as { id?: unknown })?.id === "number" ? (raw as { id: number }).id : 0;
    return errorResponse(id, new KernelError(Errno.EPROTO, `bad request: ${describeZodError(env.error)}`), warnings);
  }
  const { id, method } = env.data;
  const params = methods[method as Method].params.safeParse(env.data.params ?? {});
  if (!params.success) {
    const e = new KernelError(Errno.EPROTO, `bad request: params.${describeZodError(params.error)}`);
    return errorResponse(id, e, warnings);
  }
  try {
    const result = service.dispatch(method, params.data as never, warnings);
    return { id, ok: true, result, warnings };
  } catch (e) {
    if (isKernelError(e)) return errorResponse(id, e, warnings);
    onBug?.(e);
    const msg = e instanceof Error ? e.message : String(e);
    const bug = new KernelError(Errno.EIO, `internal error in the host: ${msg} (the host's log has the details)`);
    return errorResponse(id, bug, warnings);
  }
}

interface ConnectionContext {
  readonly service: MdevService;
  readonly log: (line: string) => void;
  readonly limits: ConnectionLimits;
  readonly clock: SchedulingClock;
}

/**
 * One client: reads request lines, answers them in order, and applies the bounds of the module comment. Requests
 * wait in `queue` only while the daemon is not reading (at most what one read delivered).
 */
class Connection {
  private readonly lines: LineSplitter;
  private queue: string[] = [];
  private head = 0;
  private answered = 0;
  private reading = true;
  /** The client shut its side: close once every queued request is answered. */
  private ended = false;
  private closing = false;
  private stalledBefore = false;
  private stuck: TimerHandle | undefined;

  constructor(
    readonly client: number,
    private readonly sock: Socket,
    private readonly ctx: ConnectionContext,
  ) {
    this.lines = new LineSplitter(ctx.limits.maxLineBytes);
    sock.on("data", (chunk: Buffer) => this.onData(chunk));
    sock.on("end", () => {
      this.ended = true;
      this.pump();
    });
    sock.on("error", () => sock.destroy());
    sock.on("close", () => this.cancelStuck());
  }

  state(): ConnectionState {
    return {
      client: this.client,
      unsentBytes: this.sock.writableLength,
      queuedRequests: this.queue.length - this.head,
      answered: this.answered,
      reading: this.reading,
      closing: this.closing,
    };
  }

  destroy(): void {
    this.cancelStuck();
    this.sock.destroy();
  }

  private onData(chunk: Buffer): void {
    if (this.closing) return;
    const got = this.lines.push(chunk);
    for (const line of got.lines) this.queue.push(line);
    if (got.overflow) {
      // Answer what came before the long line, then refuse it; nothing more is read from this client.
      this.pump();
      const max = this.ctx.limits.maxLineBytes;
      const e = new KernelError(
        Errno.EMSGSIZE,
        `bad request: a request line is longer than ${max} bytes (the limit); the connection is closed`,
      );
      this.close(encodeLine(errorResponse(0, e, [])));
      return;
    }
    this.pump();
  }

  /** Answers queued requests while the client keeps up; stops reading it when it does not. */
  private pump(): void {
    const { service, limits } = this.ctx;
    while (this.head < this.queue.length && !this.closing) {
      if (this.sock.writableLength > limits.maxUnsentBytes) {
        this.stopReading();
        return;
      }
      const line = this.queue[this.head++]!;
      this.answered++;
      const reply = handleLine(service, line, (e) =>
        this.ctx.log(
          `client ${this.client}: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
        ),
      );
      this.sock.write(encodeLine(reply), () => this.onFlushed());
    }
    this.queue = this.queue.slice(this.head);
    this.head = 0;
    if (this.closing) return;
    if (this.sock.writableLength > limits.maxUnsentBytes) this.stopReading();
    else if (this.ended) this.close();
  }

  /** A reply went out to the kernel: read again once the client has taken enough. */
  private onFlushed(): void {
    if (this.reading || this.closing || this.sock.destroyed) return;
    if (this.sock.writableLength > this.ctx.limits.maxUnsentBytes / 2) return;
    this.reading = true;
    this.cancelStuck();
    this.pump();
    if (this.reading && !this.closing) this.sock.resume();
  }

  private stopReading(): void {
    if (!this.reading) return;
    this.reading = false;
    this.sock.pause();
    const { limits } = this.ctx;
    // Once per client: a client that reads slowly stops and starts many times, and one line says what happens.
    if (!this.stalledBefore) {
      this.stalledBefore = true;
      this.ctx.log(
        `client ${this.client}: ${this.sock.writableLength} bytes of replies not taken (bound ${limits.maxUnsentBytes}); ` +
          `not reading its requests until it takes them (dropped if stuck for ${limits.stuckTimeoutMs / 1000} s)`,
      );
    }
    this.armStuck("left its replies unread");
  }

  /** Sends `last` (if any) and closes; a client that does not take it within the time limit is dropped. */
  private close(last?: string): void {
    if (this.closing) return;
    this.closing = true;
    this.reading = false;
    this.sock.pause();
    this.queue = [];
    this.head = 0;
    this.cancelStuck();
    this.armStuck("did not take its last answer");
    // destroy, not just end: the rest of an over-long line is never read, and the socket must not linger for it.
    const finished = () => this.destroy();
    if (last === undefined) this.sock.end(finished);
    else this.sock.end(last, finished);
  }

  private armStuck(why: string): void {
    const { limits, clock } = this.ctx;
    this.stuck = clock.after(limits.stuckTimeoutMs * NS_PER_MS, () => {
      this.stuck = undefined;
      if (this.sock.destroyed) return;
      this.ctx.log(
        `client ${this.client}: dropped: it ${why} for ${limits.stuckTimeoutMs / 1000} s ` +
          `(${this.sock.writableLength} bytes pending)`,
      );
      this.sock.destroy();
    });
  }

  private cancelStuck(): void {
    this.stuck?.cancel();
    this.stuck = undefined;
  }
}
