/**
 * The server against many, silent and rival clients, in process with plain node:net clients (a connect error shows as
 * such): a burst gets protocol answers only, idle connections cost little memory, refusals in flight are bounded, a
 * client that never negotiates loses the device, and a live server's socket is never taken over.
 */
import assert from "node:assert/strict";
import { readdirSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Errno, isKernelError, type TraceRecord } from "../core/index.ts";
import { encodeVersion } from "./caps.ts";
import { closeFd, connectUnixNonblocking, listenUnix } from "./native.ts";
import { serveDevice, type VfioUserServerOptions } from "./server.ts";
import { AsyncClient, isError, serverSystem, tempDir } from "./testing/harness.ts";

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
});
