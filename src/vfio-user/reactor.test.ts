import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { describe, it } from "node:test";
import { closeFd, eventfdCreate, eventfdRead, eventfdWrite, unixSocketPair } from "./native.ts";
import { EPOLLIN, EPOLLOUT, EPOLLRDHUP, Reactor } from "./reactor.ts";

const threads = () => readdirSync("/proc/self/task").length;

/** Resolves on the reactor's next delivery for `fd` (the handler drains the eventfd); the watch holds the loop. */
function nextEvent(fd: number): Promise<number> {
  return new Promise((resolve) => {
    const w = Reactor.shared().watch(
      fd,
      EPOLLIN,
      (ev) => {
        eventfdRead(fd);
        w.close();
        resolve(ev);
      },
      true,
    );
  });
}

describe("reactor (libuv poll handles on the main thread)", () => {
  it("delivers readiness on the main thread without starting a thread, and promise reactions run after it", async () => {
    const before = threads();
    const fd = eventfdCreate();
    const got = nextEvent(fd);
    eventfdWrite(fd, 1);
    // Awaiting the promise the handler resolved needs the microtask queue to run after a libuv callback.
    assert.equal((await got) & EPOLLIN, EPOLLIN);
    assert.equal(threads(), before, "no thread was started for the reactor");
    assert.equal(Reactor.shared().size, 0);
    closeFd(fd);
  });

  it("runs 2,000 ping-pongs in order through one fd", async () => {
    const fd = eventfdCreate();
    for (let i = 0; i < 2000; i++) {
      const got = nextEvent(fd);
      eventfdWrite(fd, 1);
      await got;
    }
    assert.equal(Reactor.shared().size, 0);
    closeFd(fd);
  });

  it("is level-triggered: a handler that leaves its fd ready is called again on the next loop iteration", async () => {
    const fd = eventfdCreate();
    let calls = 0;
    await new Promise<void>((resolve) => {
      const w = Reactor.shared().watch(
        fd,
        EPOLLIN,
        () => {
          calls++;
          if (calls < 3) return;
          eventfdRead(fd);
          // Nothing is ready any more: no fourth call may come before the timer.
          setTimeout(() => {
            w.close();
            resolve();
          }, 30);
        },
        true,
      );
      eventfdWrite(fd, 1);
    });
    assert.equal(calls, 3);
    closeFd(fd);
  });

  it("tells whether the loop has an fd with an event now (hasReadyFd), counting only fds the loop watches", async () => {
    const reactor = Reactor.shared();
    const watched = eventfdCreate();
    const unwatched = eventfdCreate();
    let calls = 0;
    const w = reactor.watch(watched, EPOLLIN, () => calls++);
    // libuv adds a new watch to its epoll set in its next poll phase.
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(reactor.hasReadyFd(), false, "nothing ready");
    eventfdWrite(unwatched, 1);
    assert.equal(reactor.hasReadyFd(), false, "an fd the loop does not watch is not its work");
    eventfdWrite(watched, 1);
    assert.equal(reactor.hasReadyFd(), true);
    assert.equal(reactor.hasReadyFd(), true, "asking consumes nothing");
    eventfdRead(watched);
    assert.equal(reactor.hasReadyFd(), false, "drained");
    assert.equal(calls, 0, "no handler ran: the question is synchronous");
    w.close();
    closeFd(watched);
    closeFd(unwatched);
  });

  it("does not call the handler of a watch that a handler before it in the same poll phase closed", async () => {
    const a = eventfdCreate();
    const b = eventfdCreate();
    const calls: string[] = [];
    const r = Reactor.shared();
    const before = r.size;
    let wa: ReturnType<Reactor["watch"]> | undefined;
    let wb: ReturnType<Reactor["watch"]> | undefined;
    // Both ready before the loop polls: one epoll_wait reports both, and whichever runs first closes the other.
    const done = new Promise<void>((resolve) => {
      const first = (name: string, fd: number, other: () => ReturnType<Reactor["watch"]> | undefined) => () => {
        calls.push(name);
        eventfdRead(fd);
        other()?.close();
        setTimeout(resolve, 30);
      };
      wa = r.watch(
        a,
        EPOLLIN,
        first("a", a, () => wb),
        true,
      );
      wb = r.watch(
        b,
        EPOLLIN,
        first("b", b, () => wa),
        true,
      );
    });
    eventfdWrite(a, 1);
    eventfdWrite(b, 1);
    await done;
    assert.equal(calls.length, 1, `one handler ran and the other was not called: ${calls.join(",")}`);
    wa?.close();
    wb?.close();
    assert.equal(r.size, 0);
    assert.equal(r.size, before, "every libuv handle was closed");
    for (const fd of [a, b]) closeFd(fd);
  });

  it("delivers EPOLLOUT only while asked for, and EPOLLRDHUP when the peer closes", async () => {
    const [x, y] = unixSocketPair(true);
    const seen: number[] = [];
    const r = Reactor.shared();
    await new Promise<void>((resolve) => {
      const w = r.watch(
        x,
        EPOLLIN | EPOLLRDHUP | EPOLLOUT,
        (ev) => {
          seen.push(ev);
          if (seen.length === 1) {
            // Writable at once; stop asking, then let the peer go.
            w.modify(EPOLLIN | EPOLLRDHUP);
            closeFd(y);
          } else {
            w.close();
            resolve();
          }
        },
        true,
      );
    });
    assert.equal(seen[0]! & EPOLLOUT, EPOLLOUT);
    assert.equal(seen[1]! & EPOLLOUT, 0, "no EPOLLOUT once unasked");
    assert.equal(seen[1]! & EPOLLRDHUP, EPOLLRDHUP);
    closeFd(x);
  });

  it("keeps the process alive only while a watch asks for it", () => {
    const script = (ref: boolean) => `
      import { eventfdCreate, eventfdWrite } from "./src/vfio-user/native.ts";
      import { EPOLLIN, Reactor } from "./src/vfio-user/reactor.ts";
      const fd = eventfdCreate();
      const w = Reactor.shared().watch(fd, EPOLLIN, () => { console.log("fired"); w.close(); }, ${ref});
      // Written from another process-level source only after 200 ms: without a ref the process is gone by then.
      const t = setTimeout(() => eventfdWrite(fd, 1), 200);
      t.unref();
    `;
    const run = (ref: boolean) =>
      spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script(ref)], {
        cwd: new URL("../../", import.meta.url).pathname,
        encoding: "utf8",
        timeout: 20_000,
      });
    const held = run(true);
    assert.equal(held.status, 0, held.stderr);
    assert.equal(held.stdout.trim(), "fired", "a ref'd watch kept the process until its event, then let it exit");
    const loose = run(false);
    assert.equal(loose.status, 0, loose.stderr);
    assert.equal(loose.stdout.trim(), "", "an unref'd watch does not keep the process alive");
  });
});
