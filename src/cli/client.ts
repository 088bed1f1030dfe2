/**
 * The command line's side of the control API: one connection per call, one request line, one response line, each
 * validated against protocol.ts.
 *
 * Every way the conversation can fail becomes a KernelError a person can act on:
 * - nothing at the socket path (ENOENT) or a socket nobody listens on (ECONNREFUSED): "no host is running at
 *   <socket>: start one with `vgpu host`";
 * - EACCES: the socket belongs to another user;
 * - the host closes the connection without answering (it died): ECONNRESET, naming the socket;
 * - no answer within the timeout: ETIMEDOUT;
 * - an answer that does not match the schema: EPROTO (checked with wire.ts's shapes: the command line never loads
 *   zod, which the host uses to decode requests).
 * An error the host reports comes back with its own errno and sentence.
 */
import { connect } from "node:net";
import { dirname } from "node:path";
import { Errno, KernelError } from "../core/index.ts";
import type { Method, ParamsOf, ResultOf } from "./protocol.ts";
import { checkResponse, encodeLine, LineSplitter, MAX_LINE_BYTES, resultShapes, shapeProblem } from "./wire.ts";

export interface CallResult<M extends Method> {
  readonly result: ResultOf<M>;
  readonly warnings: readonly string[];
}

export interface HostClientOptions {
  /** Default 30 s: a request never waits on anything slow, so silence means the host is stuck. */
  readonly timeoutMs?: number;
}

/**
 * Nothing answers at the socket: no file there, or a socket nobody listens on. The files-only commands then work on
 * the definitions directly (commands/common.ts); the others report it.
 */
export class HostUnreachable extends KernelError {}

function startHint(socketPath: string): string {
  return `start one with \`vgpu host --root ${dirname(socketPath)}\``;
}

export class HostClient {
  private nextId = 1;
  private readonly timeoutMs: number;

  constructor(
    readonly socketPath: string,
    opts: HostClientOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  /**
   * Calls one method. Resolves with the result and the host's warnings; rejects with a KernelError for a host-side
   * error (its errno and message) or a transport failure. `onWarnings` sees the warnings of a failed call too.
   */
  call<M extends Method>(
    method: M,
    params: ParamsOf<M>,
    onWarnings?: (warnings: readonly string[]) => void,
  ): Promise<CallResult<M>> {
    const id = this.nextId++;
    const path = this.socketPath;
    return new Promise<CallResult<M>>((resolve, reject) => {
      const sock = connect(path);
      let settled = false;
      const finish = (f: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock.destroy();
        f();
      };
      const fail = (errno: number, message: string) => finish(() => reject(new KernelError(errno as Errno, message)));
      const unreachable = (errno: number, message: string) =>
        finish(() => reject(new HostUnreachable(errno as Errno, message)));
      const timer = setTimeout(
        () => fail(Errno.ETIMEDOUT, `the host at ${path} did not answer within ${this.timeoutMs / 1000} s`),
        this.timeoutMs,
      );
      const lines = new LineSplitter(MAX_LINE_BYTES);
      sock.on("connect", () => sock.write(encodeLine({ id, method, params })));
      sock.on("data", (chunk: Buffer) => {
        const got = lines.push(chunk);
        const line = got.lines[0];
        if (line === undefined) {
          if (got.overflow) {
            return fail(Errno.EPROTO, `the host at ${path} sent an answer longer than ${MAX_LINE_BYTES} bytes`);
          }
          return;
        }
        let raw: unknown;
        try {
          raw = JSON.parse(line);
        } catch {
          return fail(Errno.EPROTO, `the host at ${path} sent an answer that is not JSON`);
        }
        const r = checkResponse(raw);
        if ("problem" in r) return fail(Errno.EPROTO, `the host at ${path} sent a malformed answer (${r.problem})`);
        const msg = r.response;
        if (msg.id !== id) return fail(Errno.EPROTO, `the host at ${path} answered request ${msg.id}, not ${id}`);
        onWarnings?.(msg.warnings);
        if (!msg.ok) return fail(msg.error.errno, msg.error.message);
        const problem = shapeProblem(msg.result, resultShapes[method]);
        if (problem !== undefined) {
          return fail(Errno.EPROTO, `the host at ${path} sent a malformed ${method} result (${problem})`);
        }
        // The shape check above is the runtime form of ResultOf<M> (wire.test.ts keeps the two equal).
        finish(() => resolve({ result: msg.result as ResultOf<M>, warnings: msg.warnings }));
      });
      sock.on("error", (e: NodeJS.ErrnoException) => {
        switch (e.code) {
          case "ENOENT":
            return unreachable(Errno.ENOENT, `no host is running at ${path}: ${startHint(path)}`);
          case "ECONNREFUSED":
            return unreachable(
              Errno.ECONNREFUSED,
              `no host is running at ${path} (the socket file is stale): ${startHint(path)}`,
            );
          case "ENOTDIR":
            return fail(Errno.ENOTDIR, `${dirname(path)} is not a folder: pass --root DIR with a folder`);
          case "EACCES":
          case "EPERM":
            return fail(Errno.EACCES, `permission denied on ${path}: the host runs as another user`);
          case "ENOTSOCK":
            return fail(Errno.ENOTCONN, `${path} is not a socket: ${startHint(path)}`);
          default:
            return fail(Errno.ECONNRESET, `lost the connection to the host at ${path}: ${e.message}`);
        }
      });
      sock.on("close", () =>
        fail(Errno.ECONNRESET, `the host at ${path} closed the connection before answering (did it stop? see its log)`),
      );
    });
  }
}
