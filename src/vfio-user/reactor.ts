/**
 * Readiness events for arbitrary fds (AF_UNIX sockets carrying SCM_RIGHTS, eventfds) on the Node event loop, without
 * busy polling and without letting libuv read the data.
 *
 * Why not `new net.Socket({ fd })`: libuv would read the socket itself (recv without a control buffer), and the
 * kernel discards the SCM_RIGHTS fds of every message read that way; an eventfd is not a handle type Node accepts at
 * all. Why not koffi's `.async` calls: they run on libuv's threadpool (4 threads), so a blocking poll per connection
 * would starve fs and dns. Why not SIGIO (O_ASYNC): eventfds do not support it.
 *
 * What this does: one worker thread per process blocks in epoll_wait on an epoll instance the main thread owns, and
 * posts `token * 2^32 + events` for every ready fd. Fds are registered edge-triggered (EPOLLET), so an fd is reported
 * once per new arrival and the main thread drains it until EAGAIN; a late or duplicate event only costs one empty
 * read. The main thread adds, modifies and removes fds with epoll_ctl directly (thread-safe in the kernel), so the
 * worker needs no messages from it. Events are coalesced per watch through two shared Int32Arrays (the event bits,
 * and "a post is pending"): a socket read synchronously in a tight loop (a client's requests) costs the worker a
 * wake-up per reply but at most one message in flight, not one per reply. Each watch has a slot and a token
 * (generation << 16 | slot); a slot is reused only once no post for it is in flight, and a stale event can at worst
 * wake the slot's next occupant spuriously (its handler drains until EAGAIN), never lose one of its events.
 *
 * Lifetime: the worker is unref'd unless a watch asks to keep the process alive (a listening server); at process exit
 * a stop eventfd (token 0) wakes the worker so Node can join it (a thread blocked in epoll_wait would otherwise hang
 * `process.exit`).
 */
import { Worker } from "node:worker_threads";
import {
  closeFd,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  epollCreate,
  epollCtl,
  errnoError,
  eventfdCreate,
  eventfdWrite,
  koffiModulePath,
} from "./native.ts";

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x8000_0000;

/** Watches live at once (slots of the shared event table). */
const SLOTS = 65536;
const SLOT_MASK = 0xffff;

/**
 * The worker's loop, evaluated as CommonJS on its own thread (koffi is loaded there too). An event ORs its bits into
 * its slot and posts the slot only if no post for it is pending, so a busy fd costs at most one message in flight.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const koffi = require(workerData.koffi);
const libc = koffi.load("libc.so.6");
const epollWait = libc.func("int epoll_wait(int epfd, void *events, int maxevents, int timeout)");
const bits = new Int32Array(workerData.bits);
const pending = new Int32Array(workerData.pending);
const MAX = 64;
const buf = Buffer.alloc(12 * MAX);
for (;;) {
  const n = epollWait(workerData.epfd, buf, MAX, -1);
  if (n < 0) {
    if (koffi.errno() === 4) continue;
    parentPort.postMessage(-koffi.errno());
    break;
  }
  let stop = false;
  for (let i = 0; i < n; i++) {
    const token = buf.readUInt32LE(12 * i + 4);
    if (token === 0) { stop = true; continue; }
    const slot = token & ${SLOT_MASK};
    Atomics.or(bits, slot, buf.readInt32LE(12 * i));
    if (Atomics.exchange(pending, slot, 1) === 0) parentPort.postMessage(token);
  }
  if (stop) break;
}
`;

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
  private readonly stopFd: number;
  private readonly worker: Worker;
  /** By slot; a slot's token is generation << 16 | slot, so a reused slot is told apart from its old watch. */
  private readonly slots: (Watch | undefined)[] = new Array(SLOTS);
  private readonly generations = new Uint16Array(SLOTS);
  private readonly freeSlots: number[] = [];
  private nextSlot = 1;
  private readonly bits = new Int32Array(new SharedArrayBuffer(4 * SLOTS));
  private readonly pending = new Int32Array(new SharedArrayBuffer(4 * SLOTS));
  private count = 0;
  private refs = 0;
  private stopped = false;
  /** Slots unwatched while a post for them was in flight: freed when it lands. */
  private readonly retired = new Set<number>();

  /** The process's reactor (created on first use). */
  static shared(): Reactor {
    if (Reactor.instance === undefined || Reactor.instance.stopped) Reactor.instance = new Reactor();
    return Reactor.instance;
  }

  private constructor() {
    this.epfd = epollCreate();
    this.stopFd = eventfdCreate();
    const r = epollCtl(this.epfd, EPOLL_CTL_ADD, this.stopFd, EPOLLIN, 0);
    if (r < 0) throw errnoError(-r, `epoll_ctl(ADD) of the reactor's stop eventfd failed: errno ${-r}`);
    this.worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { koffi: koffiModulePath(), epfd: this.epfd, bits: this.bits.buffer, pending: this.pending.buffer },
    });
    this.worker.on("message", (m: number) => this.dispatch(m));
    this.worker.on("error", (e) => {
      process.emitWarning(`vfio-user reactor worker failed: ${e.message}`);
    });
    // After the listeners: adding a 'message' listener refs the worker's port again.
    this.worker.unref();
    process.once("exit", () => this.stop());
  }

  /** Registers `fd` for `events` (edge-triggered). `ref` keeps the process alive while the watch exists. */
  watch(fd: number, events: number, handler: ReadyHandler, ref = false): Watch {
    const slot = this.freeSlots.pop() ?? this.nextSlot++;
    if (slot >= SLOTS) {
      this.nextSlot = SLOTS;
      throw errnoError(24, `the reactor watches ${SLOTS - 1} fds already`);
    }
    // Generation 0 with slot 0 would be token 0, the stop token: slot 0 is never used.
    this.generations[slot] = (this.generations[slot]! + 1) & 0xffff;
    const token = this.generations[slot]! * (SLOT_MASK + 1) + slot;
    const w = new Watch(this, token, fd, events, ref, handler);
    // Before ADD: an fd already readable is reported at once, and its bits must not be wiped afterwards.
    Atomics.store(this.bits, slot, 0);
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
    // A post in flight for this slot is recognised as stale by its token; the slot is reused only after it lands.
    if (Atomics.load(this.pending, slot) === 0) this.freeSlots.push(slot);
    else this.retired.add(slot);
    if (w.ref) this.addRef(-1);
  }

  /** Watches registered now (for leak checks). */
  get size(): number {
    return this.count;
  }

  private addRef(d: number): void {
    this.refs += d;
    if (this.refs > 0) this.worker.ref();
    else this.worker.unref();
  }

  private dispatch(m: number): void {
    if (m < 0) {
      process.emitWarning(`vfio-user reactor: epoll_wait failed with errno ${-m}; fds are no longer watched`);
      this.stopped = true;
      return;
    }
    const slot = m & SLOT_MASK;
    // Clear "pending" before taking the bits: an event after this posts again, one before is in the bits taken.
    Atomics.store(this.pending, slot, 0);
    const events = Atomics.exchange(this.bits, slot, 0);
    if (this.retired.delete(slot)) {
      this.freeSlots.push(slot);
      return;
    }
    // The token may be an earlier occupant's (an event the worker had in hand when that fd was unwatched): its bits
    // are then delivered to the current occupant, a spurious wake-up its drain absorbs, rather than dropping bits of
    // the current occupant that were ORed into the same slot.
    const w = this.slots[slot];
    if (w === undefined || events === 0) return;
    w.handler(events >>> 0);
  }

  private stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    eventfdWrite(this.stopFd, 1);
    this.worker.unref();
  }

  /** Stops the worker and closes the epoll fd (tests). Watches left are dropped. */
  shutdown(): Promise<number> {
    this.stop();
    this.slots.fill(undefined);
    this.count = 0;
    return this.worker.terminate().finally(() => {
      closeFd(this.epfd);
      closeFd(this.stopFd);
    });
  }
}
