/**
 * What a Session needs of its connection: a consumer-side interface, as libvfio-user injects `transport_ops`. The
 * socket `Channel` (connection.ts) implements it; a test can drive a Session over an in-memory transport with no
 * socket at all (session.test.ts).
 *
 * Contract: `payloadBuffer(len)` lends the payload area of the next outgoing message (valid until `commit`);
 * `commit` sends that message (header built from the arguments; `fds` go with its first byte; `sync` waits until it is
 * written); `send` copies a payload and commits it; `waitFor` blocks (the protocol is synchronous for DMA_READ and
 * DMA_WRITE) until a frame matching `match` arrives, deferring or dispatching the others, or throws ETIMEDOUT and
 * closes; `close` ends the connection, after which `closed` is true and sends throw ENOTCONN.
 */
import type { Frame } from "./connection.ts";

export interface SessionTransport {
  readonly closed: boolean;
  setMaxSendFds(n: number): void;
  payloadBuffer(len: number): Uint8Array;
  commit(
    id: number,
    cmd: number,
    flags: number,
    errorNo: number,
    len: number,
    fds?: readonly number[],
    sync?: boolean,
  ): void;
  send(
    id: number,
    cmd: number,
    flags: number,
    errorNo: number,
    payload?: Uint8Array,
    fds?: readonly number[],
    sync?: boolean,
  ): void;
  waitFor(match: (f: Frame) => boolean, timeoutMs: number, others: "dispatch" | "defer", what: string): Frame;
  close(reason?: string): void;
}
