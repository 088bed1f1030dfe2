/**
 * Readiness events for arbitrary fds (AF_UNIX sockets carrying SCM_RIGHTS, eventfds) on the Node event loop, without
 * busy polling, without threads, and without letting libuv read the data.
 *
 * Why not `new net.Socket({ fd })`: libuv would read the socket itself (recv without a control buffer), and the
 * kernel discards the SCM_RIGHTS fds of every message read that way; an eventfd is not a handle type Node accepts at
 * all. Why not koffi's `.async` calls: they run on libuv's threadpool (4 threads), so a blocking poll per connection
 * would starve fs and dns. Why not SIGIO (O_ASYNC): eventfds do not support it. Why not a thread blocked in
 * epoll_wait that posts to the main thread (this module's first design): each message then costs two thread wake-ups
 * and a cross-thread hand-off, which capped round trips at 0.6-0.9x of libvfio-user's single-threaded C server.
 *
 * What this does: the reactor owns one epoll instance holding every watched fd (edge-triggered, EPOLLET), and one
 * libuv poll handle (native.ts `UvPoll`) watches that epoll fd on Node's own loop. When any watched fd becomes ready,
 * the epoll fd becomes readable, libuv's poll phase calls back on the main thread, and the reactor drains the epoll
 * instance with non-blocking epoll_wait calls and runs each ready fd's handler. Edge-triggered: an fd is reported once
 * per new arrival and its handler drains it until EAGAIN; a late or duplicate event costs one empty read.
 *
 * Each watch has a slot and a token (generation << 16 | slot) stored as the epoll data: an event for a watch that a
 * handler earlier in the same batch removed (its slot then empty or reused) is recognised by its token and dropped.
 *
 * Lifetime: the poll handle is unref'd unless a watch asks to keep the process alive (a listening server), like an
 * unref'd socket: an event on an unref'd watch is delivered only while something else keeps the loop running. At
 * process exit the poll stops (Node's teardown may spin the loop once more, and a call into JS then is fatal).
 */
import {
  closeFd,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLL_EVENT_SIZE,
  epollCreate,
  epollCtl,
  epollWaitNow,
  errnoError,
  NativeBuffer,
  UvPoll,
} from "./native.ts";

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x8000_0000;

/** Watches live at once (slots). */
const SLOTS = 65536;
const SLOT_MASK = 0xffff;
/** Ready fds taken per epoll_wait. */
const BATCH = 64;
const EINTR = 4;

export type ReadyHandler = (events: number) => void;

/** One registered fd. */
export class Watch {
  constructor(
    private readonly reactor: Reactor,
    readonly token: number,
    readonly fd: number,
    public events: number,
    public ref: boolean,
    readonly handler: ReadyHandler,
  ) {}

  /** Changes the events watched (EPOLLET is always added). */
  modify(events: number): void {
    this.reactor.modify(this, events);
  }

  /** Stops watching; call before closing the fd. */
  close(): void {
    this.reactor.unwatch(this);
  }
}

export class Reactor {
  private static instance: Reactor | undefined;
  private readonly epfd: number;
  private readonly poll: UvPoll;
  private readonly ready = new NativeBuffer(BATCH * EPOLL_EVENT_SIZE);
  /** By slot; a slot's token is generation << 16 | slot, so a reused slot is told apart from its old watch. */
  private readonly slots: (Watch | undefined)[] = new Array(SLOTS);
  private readonly generations = new Uint16Array(SLOTS);
  private readonly freeSlots: number[] = [];
  private nextSlot = 1;
  private count = 0;
  private refs = 0;
  private stopped = false;
  private dispatching = false;

  /** The process's reactor (created on first use). */
  static shared(): Reactor {
    if (Reactor.instance === undefined || Reactor.instance.stopped) Reactor.instance = new Reactor();
    return Reactor.instance;
  }

  private constructor() {
    this.epfd = epollCreate();
    try {
      this.poll = new UvPoll(this.epfd, (status) => this.onReadable(status));
    } catch (e) {
      closeFd(this.epfd);
      this.ready.free();
      throw e;
    }
    // Node's teardown after 'exit' may run the loop once more; JS must not be called back then.
    process.once("exit", () => this.poll.stop());
  }

  /** Registers `fd` for `events` (edge-triggered). `ref` keeps the process alive while the watch exists. */
  watch(fd: number, events: number, handler: ReadyHandler, ref = false): Watch {
    const slot = this.freeSlots.pop() ?? this.nextSlot++;
    if (slot >= SLOTS) {
      this.nextSlot = SLOTS;
      throw errnoError(24, `the reactor watches ${SLOTS - 1} fds already`);
    }
    // Slot 0 is never used, so no token is 0.
    this.generations[slot] = (this.generations[slot]! + 1) & 0xffff;
    const token = this.generations[slot]! * (SLOT_MASK + 1) + slot;
    const w = new Watch(this, token, fd, events, ref, handler);
    this.slots[slot] = w;
    const r = epollCtl(this.epfd, EPOLL_CTL_ADD, fd, (events | EPOLLET) >>> 0, token);
    if (r < 0) {
      this.slots[slot] = undefined;
      this.freeSlots.push(slot);
      throw errnoError(-r, `epoll_ctl(ADD) of fd ${fd} failed: errno ${-r}`);
    }
    this.count++;
    if (ref) this.addRef(1);
    return w;
  }

  modify(w: Watch, events: number): void {
    if (this.slots[w.token & SLOT_MASK] !== w) return;
    w.events = events;
    epollCtl(this.epfd, EPOLL_CTL_MOD, w.fd, (events | EPOLLET) >>> 0, w.token);
  }

  unwatch(w: Watch): void {
    const slot = w.token & SLOT_MASK;
    if (this.slots[slot] !== w) return;
    this.slots[slot] = undefined;
    this.count--;
    epollCtl(this.epfd, EPOLL_CTL_DEL, w.fd, 0, 0);
    this.freeSlots.push(slot);
    if (w.ref) this.addRef(-1);
  }

  /** Watches registered now (for leak checks). */
  get size(): number {
    return this.count;
  }

  private addRef(d: number): void {
    this.refs += d;
    this.poll.ref(this.refs > 0);
  }

  /** libuv reports the epoll fd readable: run the handler of every ready fd. */
  private onReadable(status: number): void {
    if (status < 0) {
      process.emitWarning(
        `vfio-user reactor: libuv poll of the epoll fd failed (${status}); fds are no longer watched`,
      );
      this.stop();
      return;
    }
    // A handler that spins a nested wait on its own fd must not re-enter the dispatch loop.
    if (this.dispatching) return;
    this.dispatching = true;
    try {
      const v = this.ready.view;
      for (;;) {
        const n = epollWaitNow(this.epfd, this.ready);
        if (n < 0) {
          if (-n === EINTR) continue;
          process.emitWarning(`vfio-user reactor: epoll_wait failed with errno ${-n}; fds are no longer watched`);
          this.stop();
          return;
        }
        for (let i = 0; i < n; i++) {
          const events = v.getUint32(EPOLL_EVENT_SIZE * i, true);
          const token = v.getUint32(EPOLL_EVENT_SIZE * i + 4, true);
          const w = this.slots[token & SLOT_MASK];
          // A watch removed by a handler earlier in this batch: its event is stale.
          if (w === undefined || w.token !== token) continue;
          try {
            w.handler(events);
          } catch (e) {
            process.nextTick(() => {
              throw e;
            });
          }
        }
        if (n < BATCH) return;
      }
    } finally {
      this.dispatching = false;
    }
  }

  private stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.poll.close();
  }

  /** Stops watching and closes the epoll fd (tests). Watches left are dropped. */
  shutdown(): Promise<number> {
    this.stop();
    this.slots.fill(undefined);
    this.count = 0;
    closeFd(this.epfd);
    this.ready.free();
    return Promise.resolve(0);
  }
}
