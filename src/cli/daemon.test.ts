/**
 * The control socket end to end (real UNIX sockets, a service over a fake host): permissions, refusing a second
 * host, replacing a stale socket, malformed requests, and every client-side failure turned into a sentence.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Errno, KernelError, NS_PER_MS, VirtualClock } from "../core/index.ts";
import { HostClient } from "./client.ts";
import {
  type ConnectionLimits,
  type Daemon,
  handleLine,
  probeSocket,
  SOCKET_NAME,
  socketPathOf,
  startDaemon,
} from "./daemon.ts";
import { DefinitionStore } from "./definitions.ts";
import { encodeLine } from "./protocol.ts";
import { type MdevHostApi, MdevService } from "./service.ts";
import { UNIX_SOCKET_PATH_MAX } from "./socket-path.ts";

const roots: string[] = [];
const daemons: Daemon[] = [];
const servers: Server[] = [];
after(async () => {
  for (const d of daemons) await d.close();
  for (const s of servers) s.close();
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

function freshRoot(): string {
  const base = mkdtempSync(join(tmpdir(), "vgpu-d-"));
  roots.push(base);
  return join(base, "state");
}

const emptyHost: MdevHostApi = {
  parents: () => ["mtty"],
  types: () => [],
  devices: () => [],
  create: () => {
    throw new KernelError(Errno.ENOSPC, "full");
  },
  remove: () => {},
  attributeNames: () => [],
  writeAttribute: () => {},
};

/** One type with a 4 KiB description: each `types` answer is about 4 KiB, so replies pile up fast. */
const bigHost: MdevHostApi = {
  ...emptyHost,
  types: () => [
    { type: "mtty-1", name: "big", description: "d".repeat(4096), deviceApi: "vfio-pci", availableInstances: 1 },
  ],
};

function service(root: string, host: MdevHostApi = emptyHost): MdevService {
  return new MdevService({
    host,
    store: new DefinitionStore({ dir: join(root, "mdevctl.d") }),
    root,
    pid: 4242,
  });
}

async function start(root: string, log: string[] = []): Promise<Daemon> {
  const d = await startDaemon({ root, service: service(root), log: (l) => log.push(l) });
  daemons.push(d);
  return d;
}

/**
 * A daemon over `bigHost` with the given limits and a virtual clock; `dispatched` counts the requests the service
 * ran, and `whenDispatched(n)` resolves once it has run n; `whenLogged(re)` once a log line matches.
 */
async function boundedDaemon(limits: Partial<ConnectionLimits>) {
  const root = freshRoot();
  const svc = service(root, bigHost);
  const clock = new VirtualClock();
  const log: string[] = [];
  const logWaiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  const countWaiters: { n: number; resolve: () => void }[] = [];
  let dispatched = 0;
  const dispatch = svc.dispatch.bind(svc);
  svc.dispatch = ((method, params, warnings) => {
    dispatched++;
    for (const w of countWaiters) if (dispatched === w.n) w.resolve();
    return dispatch(method, params, warnings);
  }) as typeof svc.dispatch;
  const d = await startDaemon({
    root,
    service: svc,
    clock,
    limits,
    log: (line) => {
      log.push(line);
      for (const w of [...logWaiters]) {
        if (w.re.test(line)) {
          logWaiters.splice(logWaiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    },
  });
  daemons.push(d);
  return {
    d,
    clock,
    log,
    dispatched: () => dispatched,
    whenDispatched: (n: number) => new Promise<void>((resolve) => countWaiters.push({ n, resolve })),
    whenLogged: (re: RegExp) =>
      new Promise<string>((resolve) => {
        const seen = log.find((l) => re.test(l));
        if (seen !== undefined) resolve(seen);
        else logWaiters.push({ re, resolve });
      }),
  };
}

/** `n` `types` requests with ids 1..n, as one string. */
function typesRequests(n: number): string {
  let text = "";
  for (let id = 1; id <= n; id++) text += encodeLine({ id, method: "types", params: {} });
  return text;
}

/** Reads lines from a socket until `n` have arrived or it closes; resolves with them. */
function readLines(sock: Socket, n: number): Promise<string[]> {
  return new Promise((resolve) => {
    let text = "";
    const lines: string[] = [];
    const done = () => resolve(lines);
    sock.on("data", (c: Buffer) => {
      text += c.toString("utf8");
      let nl = text.indexOf("\n");
      while (nl >= 0) {
        lines.push(text.slice(0, nl));
        text = text.slice(nl + 1);
        nl = text.indexOf("\n");
      }
      if (lines.length >= n) done();
    });
    sock.on("close", done);
    sock.on("error", () => {});
    sock.resume();
  });
}

async function rejects(p: Promise<unknown>, errno: Errno, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof KernelError, String(e));
    assert.equal(e.errno, errno, e.message);
    assert.match(e.message, re);
    return true;
  });
}

/** A server at `path` that answers every connection with `reply` (or, if undefined, closes it at once). */
async function fakeServer(path: string, reply: string | undefined): Promise<Server> {
  const s = createServer((sock) => {
    sock.once("data", () => (reply === undefined ? sock.destroy() : sock.write(reply)));
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(path, r));
  return s;
}

describe("daemon", () => {
  it("creates the root 0700 and the socket 0600, answers hello, and removes the socket on close", async () => {
    const root = freshRoot();
    const d = await start(root);
    assert.equal(statSync(root).mode & 0o777, 0o700);
    assert.equal(statSync(d.socketPath).mode & 0o777, 0o600);
    const r = await new HostClient(d.socketPath).call("hello", {});
    assert.deepEqual(r.result, { server: "vgpu host", protocol: 1, pid: 4242, root, parents: ["mtty"] });
    await d.close();
    assert.equal(existsSync(d.socketPath), false);
  });

  it("refuses to start while another host answers on the socket", async () => {
    const root = freshRoot();
    await start(root);
    await rejects(start(root), Errno.EADDRINUSE, /^a host is already running at .*vgpu\.sock$/);
  });

  it("replaces a stale socket (its daemon died) and says so", async () => {
    const root = freshRoot();
    const path = socketPathOf(root);
    // A process that binds the socket and dies without cleaning up.
    const r = spawnSync(process.execPath, [
      "-e",
      `require("fs").mkdirSync(${JSON.stringify(root)},{recursive:true});` +
        `require("net").createServer().listen(${JSON.stringify(path)},()=>process.kill(process.pid,"SIGKILL"))`,
    ]);
    assert.equal(r.signal, "SIGKILL");
    assert.equal(await probeSocket(path), "stale");
    await rejects(
      new HostClient(path).call("hello", {}),
      Errno.ECONNREFUSED,
      /^no host is running at .*vgpu\.sock \(the socket file is stale\): start one with `vgpu host --root \S+`$/,
    );
    const log: string[] = [];
    await start(root, log);
    assert.deepEqual(log, [`removed stale socket ${path} (no host was listening on it)`]);
    assert.equal(await probeSocket(path), "live");
  });

  it("refuses a path that is not a socket, or a listener that is not a vgpu host", async () => {
    const root = freshRoot();
    await start(root).then((d) => d.close());
    writeFileSync(socketPathOf(root), "not a socket");
    await rejects(start(root), Errno.EEXIST, /exists and is not a socket/);
    rmSync(socketPathOf(root));
    await fakeServer(socketPathOf(root), '{"hello": "world"}\n');
    await rejects(start(root), Errno.EADDRINUSE, /does not answer as a vgpu host/);
  });

  it("answers malformed requests with EPROTO and keeps serving", () => {
    const svc = service(freshRoot());
    const cases: [string, number, RegExp][] = [
      ["{", 0, /^bad request: not valid JSON$/],
      ['{"id": 3, "method": "reboot", "params": {}}', 3, /^bad request: method: unknown method "reboot"$/],
      ['{"id": 4, "method": "list", "params": {"defined": "yes"}}', 4, /^bad request: params\.defined: /],
      ['{"method": "list"}', 0, /^bad request: id: /],
    ];
    for (const [line, id, re] of cases) {
      const r = handleLine(svc, line);
      assert.equal(r.ok, false, line);
      assert.equal(r.id, id);
      if (!r.ok) {
        assert.equal(r.error.code, "EPROTO");
        assert.equal(r.error.errno, Errno.EPROTO);
        assert.match(r.error.message, re);
      }
    }
    const ok = handleLine(svc, '{"id": 9, "method": "list", "params": {"defined": true}}');
    assert.deepEqual(ok, { id: 9, ok: true, result: { devices: [] }, warnings: [] });
  });

  it("serves several requests on one connection, in order, and refuses an oversized line", async () => {
    const d = await start(freshRoot());
    const answers = await new Promise<string>((resolve) => {
      const sock = connect(d.socketPath);
      let text = "";
      sock.setEncoding("utf8");
      sock.on("data", (c: string) => {
        text += c;
        if (text.split("\n").length > 3) sock.end();
      });
      sock.on("close", () => resolve(text));
      sock.write(
        encodeLine({ id: 1, method: "list", params: { defined: false } }) +
          encodeLine({ id: 2, method: "types", params: {} }),
      );
      sock.write(`${"x".repeat(1 << 20)}yy`);
    });
    const lines = answers
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { id: number; ok: boolean; error?: { code: string } });
    assert.deepEqual(
      lines.map((l) => [l.id, l.ok, l.error?.code]),
      [
        [1, true, undefined],
        [2, true, undefined],
        [0, false, "EMSGSIZE"],
      ],
    );
  });
});

describe("daemon: what one client can make it hold", () => {
  it("stops reading a client that never takes its replies, and answers everything in order once it does", {
    timeout: 30_000,
  }, async () => {
    const b = await boundedDaemon({ maxUnsentBytes: 64 * 1024, stuckTimeoutMs: 60_000 });
    const n = 2000; // about 8 MiB of answers: without the bound they would all wait in the daemon's memory
    const sock = connect(b.d.socketPath);
    sock.pause(); // never reads, for now
    sock.write(typesRequests(n));
    const first = await Promise.race([
      b.whenLogged(/^client 1: \d+ bytes of replies not taken \(bound 65536\); not reading its requests/),
      b.whenDispatched(n).then(() => "answered every request with nobody reading"),
    ]);
    assert.match(first, /^client 1: /);
    const [c] = b.d.inspect().connections;
    assert.ok(c !== undefined);
    assert.equal(c.reading, false);
    assert.ok(b.dispatched() < n, `${b.dispatched()} of ${n} answered`);
    assert.ok(c.unsentBytes <= 64 * 1024 + 8 * 1024, `${c.unsentBytes} bytes of replies held`);

    const lines = await readLines(sock, n);
    sock.destroy();
    assert.equal(lines.length, n);
    const answers = lines.map((l) => JSON.parse(l) as { id: number; ok: boolean });
    assert.deepEqual(
      answers.map((a) => a.id),
      Array.from({ length: n }, (_, i) => i + 1),
    );
    assert.ok(answers.every((a) => a.ok));
    assert.equal(b.dispatched(), n);
    assert.deepEqual(
      b.log.filter((l) => /: dropped:/.test(l)),
      [],
    );
  });

  it("drops a client that stays stuck past the time limit (on the injected clock) and keeps serving others", {
    timeout: 30_000,
  }, async () => {
    const b = await boundedDaemon({ maxUnsentBytes: 16 * 1024, stuckTimeoutMs: 5000 });
    const sock = connect(b.d.socketPath);
    sock.pause();
    sock.write(typesRequests(1000));
    const first = await Promise.race([
      b.whenLogged(/not reading its requests/),
      b.whenDispatched(1000).then(() => "answered every request with nobody reading"),
    ]);
    assert.match(first, /^client 1: .*\(dropped if stuck for 5 s\)$/);
    b.clock.advance(4999 * NS_PER_MS);
    assert.equal(b.d.inspect().connections.length, 1, "still within the limit");
    b.clock.advance(1 * NS_PER_MS);
    assert.match(b.log.at(-1)!, /^client 1: dropped: it left its replies unread for 5 s \(\d+ bytes pending\)$/);
    const lines = await readLines(sock, Number.POSITIVE_INFINITY); // the connection ends early
    assert.ok(lines.length < 1000, `${lines.length} answers`);
    assert.deepEqual(b.d.inspect().connections, []);
    const r = await new HostClient(b.d.socketPath).call("hello", {});
    assert.equal(r.result.server, "vgpu host");
  });

  it("measures a request line in bytes: 600 Ki three-byte characters are refused (EMSGSIZE) and the client closed", {
    timeout: 30_000,
  }, async () => {
    const d = await start(freshRoot());
    const sock = connect(d.socketPath);
    const closed = new Promise((resolve) => sock.on("close", resolve));
    const got = readLines(sock, 1);
    // 614,400 characters, 1,843,200 bytes of UTF-8: over the 1 MiB bound, though shorter in characters.
    sock.write(`${"\u20ac".repeat(600 * 1024)}\n`);
    const lines = await got;
    assert.equal(lines.length, 1);
    const r = JSON.parse(lines[0]!) as { ok: boolean; error: { code: string; message: string } };
    assert.equal(r.ok, false);
    assert.equal(r.error.code, "EMSGSIZE", r.error.message);
    assert.match(r.error.message, /^bad request: a request line is longer than 1048576 bytes/);
    await closed;
  });

  it("answers an endless line with EMSGSIZE and closes, reading no more of it", { timeout: 30_000 }, async () => {
    const b = await boundedDaemon({ maxLineBytes: 4096, stuckTimeoutMs: 60_000 });
    const sock = connect(b.d.socketPath);
    const got = readLines(sock, 2);
    const chunk = "x".repeat(64 * 1024);
    let closed = false;
    sock.on("close", () => {
      closed = true;
    });
    // Keep writing, without a newline, for as long as the daemon lets the bytes in.
    const pour = () => {
      while (!closed && sock.write(chunk)) {}
    };
    sock.on("drain", pour);
    sock.on("error", () => {});
    pour();
    const lines = await got;
    assert.equal(lines.length, 1);
    const r = JSON.parse(lines[0]!) as { ok: boolean; error: { code: string; message: string } };
    assert.equal(r.error.code, "EMSGSIZE");
    assert.match(r.error.message, /longer than 4096 bytes \(the limit\); the connection is closed$/);
    sock.destroy();
    assert.equal(b.dispatched(), 0);
  });

  it("answers every request of a client that sends them and shuts its side at once", { timeout: 30_000 }, async () => {
    const d = await start(freshRoot());
    const sock = connect(d.socketPath);
    const got = readLines(sock, Number.POSITIVE_INFINITY);
    sock.end(typesRequests(3));
    const lines = await got;
    assert.deepEqual(
      lines.map((l) => (JSON.parse(l) as { id: number }).id),
      [1, 2, 3],
    );
  });
});

describe("daemon: socket path length", () => {
  it("refuses a root whose vgpu.sock would not fit in sun_path, before creating anything (ENAMETOOLONG)", async () => {
    const base = join(freshRoot(), "..");
    // The longest root that fits, and one byte more.
    const fits = UNIX_SOCKET_PATH_MAX - 1 - SOCKET_NAME.length;
    const root = `${base}/${"r".repeat(fits - base.length - 1)}`;
    assert.equal(Buffer.byteLength(socketPathOf(root)), UNIX_SOCKET_PATH_MAX);
    const d = await start(root);
    await d.close();
    const long = `${root}x`;
    await rejects(
      start(long),
      Errno.ENAMETOOLONG,
      new RegExp(
        `^socket path ${long}/vgpu\\.sock is 108 bytes, longer than the 107 bytes a UNIX socket path can hold ` +
          `\\(sun_path is 108 bytes with its NUL\\): nothing was created; pick a --root of at most 97 bytes$`,
      ),
    );
    assert.equal(existsSync(long), false, "the root was not created");
    assert.deepEqual(readdirSync(base).sort(), [root.slice(base.length + 1)], "no socket at a cut path beside it");
  });
});

describe("client", () => {
  it("says how to start a host when none is there", async () => {
    const path = socketPathOf(freshRoot());
    await rejects(
      new HostClient(path).call("hello", {}),
      Errno.ENOENT,
      /^no host is running at .*: start one with `vgpu host --root \S+`$/,
    );
  });

  it("reports a host that closes without answering, a malformed answer, and silence", async () => {
    const root = freshRoot();
    const base = join(root, "..");
    await fakeServer(join(base, "closes.sock"), undefined);
    await rejects(
      new HostClient(join(base, "closes.sock")).call("hello", {}),
      Errno.ECONNRESET,
      /closed the connection before answering/,
    );
    await fakeServer(join(base, "garbage.sock"), '{"id": 1, "ok": "maybe"}\n');
    await rejects(
      new HostClient(join(base, "garbage.sock")).call("hello", {}),
      Errno.EPROTO,
      /sent a malformed answer/,
    );
    await fakeServer(join(base, "badresult.sock"), '{"id": 1, "ok": true, "result": {"devices": 3}, "warnings": []}\n');
    await rejects(
      new HostClient(join(base, "badresult.sock")).call("list", { defined: false }),
      Errno.EPROTO,
      /malformed list result \(devices: /,
    );
    await fakeServer(join(base, "silent.sock"), "");
    await rejects(
      new HostClient(join(base, "silent.sock"), { timeoutMs: 200 }).call("hello", {}),
      Errno.ETIMEDOUT,
      /did not answer within 0.2 s/,
    );
  });

  it("passes a host error through with its errno, and the warnings to the callback", async () => {
    const d = await start(freshRoot());
    const seen: string[] = [];
    await rejects(
      new HostClient(d.socketPath).call("start", { parent: "mtty", type: "mtty-1", force: false }, (w) =>
        seen.push(...w),
      ),
      Errno.EINVAL,
      /^parent mtty has no mdev type 'mtty-1' \(its types: none/,
    );
    assert.deepEqual(seen, []);
  });
});
