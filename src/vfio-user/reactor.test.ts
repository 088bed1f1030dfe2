import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { describe, it } from "node:test";
import { closeFd, eventfdCreate, eventfdRead, eventfdWrite } from "./native.ts";
import { EPOLLIN, Reactor } from "./reactor.ts";

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

describe("reactor (epoll set polled by libuv on the main thread)", () => {
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

  it("reports an fd once per arrival (edge-triggered) and runs 2,000 ping-pongs in order", async () => {
    const fd = eventfdCreate();
    for (let i = 0; i < 2000; i++) {
      const got = nextEvent(fd);
      eventfdWrite(fd, 1);
      await got;
    }
    assert.equal(Reactor.shared().size, 0);
    closeFd(fd);
  });

  it("drops the event of a watch removed by a handler earlier in the same batch, and reuses its slot safely", async () => {
    const a = eventfdCreate();
    const b = eventfdCreate();
    const c = eventfdCreate();
    const calls: string[] = [];
    const r = Reactor.shared();
    // Both ready before the reactor runs: one epoll_wait returns both; whichever runs first removes the other and
    // puts a new watch (on c) in the freed slot, which must not receive the removed watch's event.
    let wa: ReturnType<Reactor["watch"]> | undefined;
    let wb: ReturnType<Reactor["watch"]> | undefined;
    let wc: ReturnType<Reactor["watch"]> | undefined;
    const done = new Promise<void>((resolve) => {
      const first = (name: string, other: () => ReturnType<Reactor["watch"]> | undefined) => () => {
        calls.push(name);
        other()?.close();
        wc = r.watch(c, EPOLLIN, () => calls.push("c"));
        setTimeout(resolve, 20);
      };
      wa = r.watch(
        a,
        EPOLLIN,
        first("a", () => wb),
        true,
      );
      wb = r.watch(
        b,
        EPOLLIN,
        first("b", () => wa),
        true,
      );
    });
    eventfdWrite(a, 1);
    eventfdWrite(b, 1);
    await done;
    assert.equal(calls.length, 1, `one handler ran and the other's event was dropped: ${calls.join(",")}`);
    wa?.close();
    wb?.close();
    wc?.close();
    assert.equal(r.size, 0);
    for (const fd of [a, b, c]) closeFd(fd);
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
