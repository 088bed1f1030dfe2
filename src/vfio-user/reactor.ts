/**
 * Readiness events for arbitrary fds (AF_UNIX sockets carrying SCM_RIGHTS, eventfds) on the Node event loop, without
 * busy polling, without threads, and without letting libuv read the data.
 *
 * Why not `new net.Socket({ fd })`: libuv would read the socket itself (recv without a control buffer), and the
 * kernel discards the SCM_RIGHTS fds of every message read that way; an eventfd is not a handle type Node accepts at
 * all. Why not koffi's `.async` calls: they run on libuv's threadpool (4 threads), so a blocking poll per connection
 * would starve fs and dns. Why not SIGIO (O_ASYNC): eventfds do not support it. Why not a thread blocked in
 * epoll_wait that posts to the main thread (this module's first design): each message then costs two thread wake-ups
 * and a cross-thread hand-off, which held round trips to 0.6-0.9x of libvfio-user's single-threaded C server. Why not
 * one epoll set of our own polled by libuv (the second design): an extra epoll_wait per wake-up, and syscalls are what
 * a round trip costs.
 *
 * What this does: each watched fd gets a libuv poll handle (native.ts `UvPoll`) on Node's own loop, so libuv's
 * epoll_wait, the one the main thread sleeps in anyway, reports it, and the handler runs in the poll phase. Readiness
 * is level-triggered: a handler is called again on the next loop iteration while its fd stays ready, so handlers read
 * until EAGAIN (or a short read that proves the socket empty) and watch EPOLLOUT only while they have bytes queued.
 * Events are given to handlers as EPOLL* bits (EPOLLIN, EPOLLOUT, EPOLLRDHUP; EPOLLERR when libuv reports an error,
 * after which the watch is dead and its owner should close it).
 *
 * Lifetime: a watch does not keep the process alive unless asked (a listening server), like an unref'd socket: its
 * events are delivered only while something else keeps the loop running. At process exit every poll stops (Node's
 * teardown may spin the loop once more, and a call into JS then is fatal).
 */
import { UV_DISCONNECT, UV_READABLE, UV_WRITABLE, UvPoll, uvLoopHasReadyFd, uvPollCount } from "./native.ts";

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;

export type ReadyHandler = (events: number) => void;

function toUv(events: number): number {
  return (
    ((events & EPOLLIN) !== 0 ? UV_READABLE : 0) |
    ((events & EPOLLOUT) !== 0 ? UV_WRITABLE : 0) |
    ((events & EPOLLRDHUP) !== 0 ? UV_DISCONNECT : 0)
  );
}

function fromUv(status: number, events: number): number {
  if (status < 0) return EPOLLERR;
  return (
    ((events & UV_READABLE) !== 0 ? EPOLLIN : 0) |
    ((events & UV_WRITABLE) !== 0 ? EPOLLOUT : 0) |
    ((events & UV_DISCONNECT) !== 0 ? EPOLLRDHUP : 0)
  );
}

/** One registered fd. */
export class Watch {
  private readonly poll: UvPoll;

  constructor(
    readonly fd: number,
    public events: number,
    readonly ref: boolean,
    readonly handler: ReadyHandler,
  ) {
    // A closed poll is out of native.ts's table at once, so its handler is never called after close().
    this.poll = new UvPoll(fd, toUv(events), (status, uvEvents) => handler(fromUv(status, uvEvents)));
    if (ref) this.poll.ref(true);
  }

  /** Changes the events watched (EPOLLIN, EPOLLOUT, EPOLLRDHUP). No-op once closed. */
  modify(events: number): void {
    if (events === this.events) return;
    this.events = events;
    this.poll.start(toUv(events));
  }

  /** Stops watching; call before closing the fd. Idempotent. */
  close(): void {
    this.poll.close();
  }
}

export class Reactor {
  private static instance: Reactor | undefined;

  /** The process's reactor. */
  static shared(): Reactor {
    Reactor.instance ??= new Reactor();
    return Reactor.instance;
  }

  private constructor() {}

  /** Registers `fd` for `events`. `ref` keeps the process alive while the watch exists. */
  watch(fd: number, events: number, handler: ReadyHandler, ref = false): Watch {
    return new Watch(fd, events, ref, handler);
  }

  /**
   * Whether some fd of the loop has an event now (a watched fd, or one of Node's own): what a handler that is polling
   * asks before spinning on, so that it gives the loop back to others with work. One poll(2), zero timeout.
   */
  hasReadyFd(): boolean {
    return uvLoopHasReadyFd();
  }

  /** Watches open now, i.e. libuv poll handles not yet closed (for leak checks). */
  get size(): number {
    return uvPollCount();
  }
}
