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
 * - an answer that does not match the schema: EPROTO.
 * An error the host reports comes back with its own errno and sentence.
 */
import { connect } from "node:net";
import { Errno, KernelError } from "../core/index.ts";
import { describeZodError } from "./mdevctl-json.ts";
import {
  encodeLine,
  LineSplitter,
  MAX_LINE_BYTES,
  type Method,
  methods,
  type ParamsOf,
  type ResultOf,
  responseSchema,
} from "./protocol.ts";

export interface CallResult<M extends Method> {
  readonly result: ResultOf<M>;
  readonly warnings: readonly string[];
}

export interface HostClientOptions {
  /** Default 30 s: a request never waits on anything slow, so silence means the host is stuck. */
  readonly timeoutMs?: number;
}

const START_HINT = "start one with `vgpu host`";

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
        const r = responseSchema.safeParse(raw);
        if (!r.success) {
          return fail(Errno.EPROTO, `the host at ${path} sent a malformed answer (${describeZodError(r.error)})`);
        }
        const msg = r.data;
        if (msg.id !== id) return fail(Errno.EPROTO, `the host at ${path} answered request ${msg.id}, not ${id}`);
        onWarnings?.(msg.warnings);
        if (!msg.ok) return fail(msg.error.errno, msg.error.message);
        const result = methods[method].result.safeParse(msg.result);
        if (!result.success) {
          return fail(
            Errno.EPROTO,
            `the host at ${path} sent a malformed ${method} result (${describeZodError(result.error)})`,
          );
        }
        finish(() => resolve({ result: result.data as ResultOf<M>, warnings: msg.warnings }));
      });
      sock.on("error", (e: NodeJS.ErrnoException) => {
        switch (e.code) {
          case "ENOENT":
            return fail(Errno.ENOENT, `no host is running at ${path}: ${START_HINT}`);
          case "ECONNREFUSED":
            return fail(Errno.ECONNREFUSED, `no host is running at ${path} (the socket file is stale): ${START_HINT}`);
          case "EACCES":
          case "EPERM":
            return fail(Errno.EACCES, `permission denied on ${path}: the host runs as another user`);
          case "ENOTSOCK":
            return fail(Errno.ENOTCONN, `${path} is not a socket: ${START_HINT}`);
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
