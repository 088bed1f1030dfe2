/**
 * The control socket end to end (real UNIX sockets, a service over a fake host): permissions, refusing a second
 * host, replacing a stale socket, malformed requests, and every client-side failure turned into a sentence.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Errno, KernelError } from "../core/index.ts";
import { HostClient } from "./client.ts";
import { type Daemon, handleLine, probeSocket, socketPathOf, startDaemon } from "./daemon.ts";
import { DefinitionStore } from "./definitions.ts";
import { encodeLine } from "./protocol.ts";
import { type MdevHostApi, MdevService } from "./service.ts";

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

function service(root: string): MdevService {
  return new MdevService({
    host: emptyHost,
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
      /^no host is running at .*vgpu\.sock \(the socket file is stale\): start one with `vgpu host`$/,
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

describe("client", () => {
  it("says how to start a host when none is there", async () => {
    const path = socketPathOf(freshRoot());
    await rejects(
      new HostClient(path).call("hello", {}),
      Errno.ENOENT,
      /^no host is running at .*: start one with `vgpu host`$/,
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
