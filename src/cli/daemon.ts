/**
 * The host daemon's socket side: serves `MdevService` on `<root>/vgpu.sock` with the JSON-lines protocol of
 * protocol.ts.
 *
 * Start-up guards the socket path:
 * - another daemon answering `hello` there: refuse ("a host is already running at ...");
 * - a socket file nobody listens on (a daemon that died): remove it and say so;
 * - something else at that path (a regular file, a listener that does not speak the protocol): refuse, naming it.
 * The socket is created with mode 0600 (umask 0177 around the bind, then chmod) inside a root folder created 0700.
 * `close()` stops accepting, ends open connections and removes the socket file; process signal handling lives in
 * the `vgpu host` command, which calls it.
 *
 * Requests are handled one line at a time in arrival order per connection; the service is synchronous, so a request
 * runs to completion before any other starts. A malformed line gets an EPROTO (or EMSGSIZE) answer, never a crash.
 *
 * What it does not do: authenticate peers beyond the socket's file mode, or lock the root against a daemon started
 * at the same instant (the second bind fails with "already running").
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { Errno, errnoName, isKernelError, KernelError } from "../core/index.ts";
import { describeZodError } from "./mdevctl-json.ts";
import { encodeLine, LineSplitter, type Method, methods, type Response, requestSchema } from "./protocol.ts";
import type { MdevService } from "./service.ts";

export const SOCKET_NAME = "vgpu.sock";

/** `--root`, else $VGPU_ROOT, else `$XDG_RUNTIME_DIR/vgpu`, else `/run/vgpu`. */
export function defaultRoot(env: NodeJS.ProcessEnv): string {
  if (env.VGPU_ROOT) return env.VGPU_ROOT;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, "vgpu");
  return "/run/vgpu";
}

export function socketPathOf(root: string): string {
  return join(root, SOCKET_NAME);
}

export function definitionsDirOf(root: string): string {
  return join(root, "mdevctl.d");
}

export interface DaemonOptions {
  readonly root: string;
  readonly service: MdevService;
  /** One line of the daemon's log (no trailing newline). */
  readonly log: (line: string) => void;
}

export interface Daemon {
  readonly socketPath: string;
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
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(encodeLine({ id: 0, method: "hello", params: {} })));
    sock.on("data", (chunk: string) => {
      const got = lines.push(chunk);
      if (got === "overflow") return done("foreign");
      for (const line of got) {
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

/** Binds the socket and starts serving. Throws KernelError when the path is taken. */
export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  const socketPath = socketPathOf(opts.root);
  try {
    mkdirSync(opts.root, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new KernelError(Errno.EACCES, `cannot create the state folder ${opts.root}: ${(e as Error).message}`);
  }
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

  const connections = new Set<Socket>();
  const server: Server = createServer((sock) => serveConnection(sock, opts.service, connections));
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

/** Answers one request line. */
export function handleLine(service: MdevService, line: string): Response {
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
    const msg = e instanceof Error ? (e.stack ?? e.message) : String(e);
    return errorResponse(id, new KernelError(Errno.EIO, `internal error in the host: ${msg}`), warnings);
  }
}

function serveConnection(sock: Socket, service: MdevService, connections: Set<Socket>): void {
  connections.add(sock);
  sock.setEncoding("utf8");
  const lines = new LineSplitter();
  sock.on("data", (chunk: string) => {
    const got = lines.push(chunk);
    if (got === "overflow") {
      const e = new KernelError(Errno.EMSGSIZE, "bad request: line longer than 1 MiB");
      sock.end(encodeLine(errorResponse(0, e, [])));
      return;
    }
    for (const line of got) sock.write(encodeLine(handleLine(service, line)));
  });
  sock.on("error", () => sock.destroy());
  sock.on("close", () => connections.delete(sock));
}
