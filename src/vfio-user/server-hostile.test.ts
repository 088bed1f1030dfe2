/**
 * The server against many, silent and rival clients, in process with plain node:net clients (a connect error shows as
 * such): a burst gets protocol answers only, idle connections cost little memory, refusals in flight are bounded, a
 * client that never negotiates loses the device, a live server's socket is never taken over, and a server out of fds
 * waits instead of spinning.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import koffi from "koffi";
import { Errno, isKernelError, type TraceRecord } from "../core/index.ts";
import { encodeVersion } from "./caps.ts";
import { closeFd, connectUnixNonblocking, listenUnix } from "./native.ts";
import { serveDevice, type VfioUserServerOptions } from "./server.ts";
import { AsyncClient, type ChildState, isError, serverSystem, tempDir } from "./testing/harness.ts";

const RLIMIT_NOFILE = 7;
const prlimit = koffi
  .load("libc.so.6")
  .func("int prlimit(int pid, int resource, const uint64_t *limit, uint64_t *old)") as (
  pid: number,
  resource: number,
  limit: BigUint64Array,
  old: null,
) => number;

const tmp = tempDir("vu-hostile-");
after(() => tmp.cleanup());
let n = 0;

type ServerOpts = Omit<VfioUserServerOptions, "socketPath" | "host" | "group" | "device">;

function setup(opts: ServerOpts = {}) {
  const s = serverSystem();
  const sock = join(tmp.dir, `m${++n}.sock`);
  const server = serveDevice({ socketPath: sock, system: s.system, uuid: s.mttyUuid, ...opts });
  const events: TraceRecord[] = [];
  const detach = s.system.host.tracer.subscribe((r) => events.push(r));
  return {
    ...s,
    sock,
    server,
    events,
    close: () => {
      detach();
      server.close();
    },
  };
}

function versionMessage(id: number): Buffer {
  const p = encodeVersion(0, 0, {
    maxMsgFds: 16,
    maxDataXferSize: 1 << 20,
    maxDmaMaps: 65535,
    pgsizes: 4096,
    writeMultiple: true,
  });
  const b = Buffer.alloc(16 + p.length);
  b.writeUInt16LE(id, 0);
  b.writeUInt16LE(1, 2);
  b.writeUInt32LE(b.length, 4);
  Buffer.from(p).copy(b, 16);
  return b;
}

/**
 * A node:net client: connects, sends VERSION on connect if asked, and settles with what happened first: "version-ok",
 * "error-<errno>" (an error reply), "connect-error-<code>", "closed" (by the server, with no reply) or "timeout".
 */
function netClient(path: string, o: { version: boolean; timeoutMs: number; id?: number }) {
  const socket = connect(path);
  let connected = false;
  const connectedP = new Promise<void>((resolve) => {
    socket.once("connect", () => {
      connected = true;
      resolve();
    });
    socket.once("error", () => resolve());
  });
  const result = new Promise<string>((resolve) => {
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => resolve("timeout"), o.timeoutMs);
    const settle = (r: string) => {
      clearTimeout(timer);
      resolve(r);
    };
    socket.on("connect", () => {
      if (o.version) socket.write(versionMessage(o.id ?? 1));
    });
    socket.on("data", (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 16) {
        const flags = got.readUInt32LE(8);
        settle((flags & 0x20) !== 0 ? `error-${got.readUInt32LE(12)}` : "version-ok");
      }
    });
    socket.on("error", (e: NodeJS.ErrnoException) =>
      settle(connected ? `socket-error-${e.code}` : `connect-error-${e.code}`),
    );
    socket.on("close", () => settle("closed"));
  });
  return { socket, connected: connectedP, result };
}

function count(results: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of results) out[r] = (out[r] ?? 0) + 1;
  return out;
}

async function until(what: string, done: () => boolean, timeoutMs = 10_000): Promise<void> {
  const t0 = performance.now();
  while (!done()) {
    if (performance.now() - t0 > timeoutMs) assert.fail(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("vfio-user server under many and hostile clients", () => {
  it("answers every client of a burst of 64 with a protocol reply: VERSION for one, EBUSY for the others", async () => {
    const t = setup();
    const clients = Array.from({ length: 64 }, (_, i) =>
      netClient(t.sock, { version: true, timeoutMs: 10_000, id: i }),
    );
    const results = await Promise.all(clients.map((c) => c.result));
    assert.deepEqual(count(results), { "version-ok": 1, [`error-${Errno.EBUSY}`]: 63 });
    assert.equal(t.server.state().refused, 63);
    for (const c of clients) c.socket.destroy();
    await until("the served client's session is released", () => t.server.state().connection === undefined);
    assert.equal(t.server.state().pending, 0);
    t.close();
  });

  it("keeps 200 idle connections cheap: a refusal holds no per-connection buffers", async () => {
    const t = setup({ maxPendingConnections: 256, refuseTimeoutMs: 60_000, handshakeTimeoutMs: 60_000 });
    const before = process.memoryUsage.rss();
    const clients: ReturnType<typeof netClient>[] = [];
    for (let i = 0; i < 200; i += 4) {
      const batch = Array.from({ length: 4 }, () => netClient(t.sock, { version: false, timeoutMs: 60_000 }));
      clients.push(...batch);
      await Promise.all(batch.map((c) => c.connected));
    }
    await until("199 refusals in flight", () => t.server.state().refused === 199);
    const grew = (process.memoryUsage.rss() - before) / 2 ** 20;
    // Before: two maximal messages (~2 MiB) zero-filled per connection, 400 MiB for these.
    assert.ok(grew < 48, `200 idle connections grew the process by ${grew.toFixed(1)} MiB`);
    assert.equal(t.server.state().pending, 199, "all of them waiting for their first message");
    for (const c of clients) c.socket.destroy();
    await until("every refusal ended", () => t.server.state().pending === 0);
    t.close();
  });

  it("bounds the refusals in flight; the others wait in the backlog and are closed in turn", async () => {
    const t = setup({ maxPendingConnections: 4, refuseTimeoutMs: 100, handshakeTimeoutMs: 60_000 });
    const first = netClient(t.sock, { version: true, timeoutMs: 5000 });
    assert.equal(await first.result, "version-ok");
    let most = 0;
    const sample = setInterval(() => {
      most = Math.max(most, t.server.state().pending);
    }, 2);
    const silent = Array.from({ length: 12 }, () => netClient(t.sock, { version: false, timeoutMs: 10_000 }));
    await until("accepting paused at the bound", () => !t.server.state().accepting);
    assert.equal(t.server.state().pending, 4);
    const results = await Promise.all(silent.map((c) => c.result));
    clearInterval(sample);
    assert.deepEqual(
      count(results),
      { closed: 12 },
      "every silent client was accepted and closed, none failed to connect",
    );
    assert.ok(most <= 4, `at most 4 refusals in flight, saw ${most}`);
    const s = t.server.state();
    assert.deepEqual([s.refused, s.pending, s.accepting], [12, 0, true]);
    const names = t.events.map((e) => e.name);
    assert.ok(names.includes("vfiouser.accept.pause") && names.includes("vfiouser.accept.resume"));
    first.socket.destroy();
    await t.server.idle();
    t.close();
  });

  it("drops a client that never sends VERSION after the handshake timeout and serves the next one", async () => {
    const t = setup({ handshakeTimeoutMs: 150 });
    const mute = netClient(t.sock, { version: false, timeoutMs: 5000 });
    assert.equal(await mute.result, "closed", "the server hung up on the silent client");
    await t.server.idle();
    const ev = t.events.find((e) => e.name === "vfiouser.handshake.timeout");
    assert.ok(ev !== undefined, "a trace event names the timeout");
    assert.deepEqual(ev.fields, { device: t.mttyUuid, connection: 1, timeoutMs: 150 });
    assert.equal(t.server.state().connection, undefined, "the device is free");
    // A client that negotiates keeps the device past the timeout.
    const c = new AsyncClient(t.sock);
    assert.ok(!isError(await c.version()));
    await new Promise((r) => setTimeout(r, 400));
    assert.equal((await c.version()).errorNo, Errno.EINVAL, "still connected: a second VERSION is refused");
    assert.equal(t.server.state().connection, 2);
    c.close();
    await t.server.idle();
    mute.socket.destroy();
    t.close();
  });

  it("refuses a polling window outside 0..10 ms before it listens", () => {
    const s = serverSystem();
    for (const pollMaxNs of [-1, 1.5, 10_000_001, Number.NaN]) {
      const socketPath = join(tmp.dir, "poll.sock");
      assert.throws(
        () => serveDevice({ socketPath, system: s.system, uuid: s.mttyUuid, pollMaxNs }),
        (e: unknown) => isKernelError(e) && e.errno === Errno.EINVAL && /pollMaxNs/.test(e.message),
        String(pollMaxNs),
      );
      assert.equal(readdirSync(tmp.dir).includes("poll.sock"), false);
    }
  });

  it("never takes over a live server's socket (EADDRINUSE), replaces a dead one, and checks the length first", async () => {
    const t = setup();
    const ino = statSync(t.sock).ino;
    assert.throws(
      () => serveDevice({ socketPath: t.sock, system: t.system, uuid: t.mttyUuid }),
      (e: unknown) =>
        isKernelError(e) &&
        e.errno === Errno.EADDRINUSE &&
        e.message.includes(t.sock) &&
        /live server answers/.test(e.message),
    );
    assert.equal(statSync(t.sock).ino, ino, "the socket file was left alone");
    const c = new AsyncClient(t.sock);
    assert.ok(!isError(await c.version()), "the first server still serves");
    c.close();
    await t.server.idle();

    // A listener whose backlog is full is alive too.
    const full = join(tmp.dir, "full.sock");
    const lfd = listenUnix(full, 0);
    const queued: number[] = [];
    for (let i = 0; i < 8; i++) {
      const fd = connectUnixNonblocking(full);
      if (fd < 0) {
        assert.equal(fd, -Errno.EAGAIN);
        break;
      }
      queued.push(fd);
    }
    assert.throws(
      () => serveDevice({ socketPath: full, system: t.system, uuid: t.mttyUuid }),
      (e: unknown) => isKernelError(e) && e.errno === Errno.EADDRINUSE,
    );
    for (const fd of queued) closeFd(fd);

    // A dead socket (nobody listens: ECONNREFUSED) is replaced.
    closeFd(lfd);
    const revived = serveDevice({ socketPath: full, system: t.system, uuid: t.mttyUuid });
    const d = new AsyncClient(full);
    assert.ok(!isError(await d.version()));
    d.close();
    await revived.idle();
    revived.close();

    // Too long for sun_path: refused before anything is created.
    const long = join(tmp.dir, `${"x".repeat(120 - tmp.dir.length - 6)}.sock`);
    assert.equal(Buffer.byteLength(long), 120);
    const entries = readdirSync(tmp.dir).sort();
    assert.throws(
      () => serveDevice({ socketPath: long, system: t.system, uuid: t.mttyUuid }),
      (e: unknown) =>
        isKernelError(e) &&
        e.errno === Errno.ENAMETOOLONG &&
        e.message.includes(long) &&
        /is 120 bytes/.test(e.message) &&
        /sun_path is 108 bytes/.test(e.message),
    );
    assert.deepEqual(readdirSync(tmp.dir).sort(), entries, "nothing was created");
    t.close();
  });

  it("pauses accepting when out of fds instead of spinning on the listening socket, and catches up once fds free", async () => {
    // server-child.ts, its fd limit lowered once it runs: silent refused clients use up the 16 fds left.
    const dir = tempDir("vu-emfile-");
    const script = fileURLToPath(new URL("./testing/server-child.ts", import.meta.url));
    const proc = spawn(process.execPath, ["--import", "tsx", script, JSON.stringify({ dir: dir.dir })], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    const lines: string[] = [];
    let wake: (() => void) | undefined;
    createInterface({ input: proc.stdout! }).on("line", (l) => {
      lines.push(l);
      wake?.();
    });
    const next = async (): Promise<string> => {
      const t0 = performance.now();
      while (lines.length === 0) {
        if (performance.now() - t0 > 30_000) assert.fail("server child: no output within 30 s");
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
      return lines.shift()!;
    };
    const state = async () => {
      proc.stdin!.write("state\n");
      return JSON.parse(await next()) as ChildState & { servers: { mtty: { pending: number; accepting: boolean } } };
    };
    const ready = JSON.parse(await next()) as { pid: number; sockets: { mtty: string } };
    const cpuTicks = () => {
      const f = readFileSync(`/proc/${ready.pid}/stat`, "utf8").split(") ")[1]!.split(" ");
      return Number(f[11]) + Number(f[12]);
    };
    // Counted from outside: the child itself cannot open /proc/self/fd once it is out of fds.
    const childFds = () => readdirSync(`/proc/${ready.pid}/fd`).length;
    const limit = childFds() + 16;
    assert.equal(prlimit(ready.pid, RLIMIT_NOFILE, BigUint64Array.of(BigInt(limit), BigInt(limit)), null), 0);
    const served = netClient(ready.sockets.mtty, { version: true, timeoutMs: 30_000 });
    // Paced, so that all of them connect even through a short backlog: 18 or so take the free fds, the rest wait.
    const silent: ReturnType<typeof netClient>[] = [];
    for (let i = 0; i < 24; i += 2) {
      const pair = [0, 1].map(() => netClient(ready.sockets.mtty, { version: false, timeoutMs: 30_000 }));
      silent.push(...pair);
      await Promise.all(pair.map((c) => c.connected));
      await new Promise((r) => setTimeout(r, 10));
    }
    await until("the server ran out of fds", () => childFds() >= limit);
    // Connections wait in the backlog and accept fails with EMFILE: a server that retries at once burns a core.
    const before = cpuTicks();
    await new Promise((r) => setTimeout(r, 1000));
    const used = cpuTicks() - before;
    assert.ok(used < 50, `the server used ${used} ticks of CPU in 1 s while out of fds`);
    // The refusals time out (2 s), fds come back, and the waiting connections are taken and refused in turn.
    const results = await Promise.all(silent.map((c) => c.result));
    assert.deepEqual(count(results), { closed: 24 });
    const s = await state();
    assert.equal(s.servers.mtty.refused, 24);
    assert.ok(s.servers.mtty.problems.some((p) => /accept failed with errno 24/.test(p)));
    served.socket.destroy();
    proc.stdin!.end();
    await new Promise((r) => proc.once("exit", r));
    dir.cleanup();
  });
});
