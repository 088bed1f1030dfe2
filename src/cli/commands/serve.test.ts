/**
 * `vgpu serve`: the mdev created on the parent offering the type, served on a 0600 socket; unknown types named; a
 * live server's socket never taken over; the path checked before anything is built; the handshake timeout passed on.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Command } from "commander";
import { Errno, isKernelError } from "../../core/index.ts";
import { AsyncClient, isError, tempDir } from "../../vfio-user/testing/harness.ts";
import { DEFAULT_SERVE_UUID, registerServe, startServe } from "./serve.ts";

const tmp = tempDir();
after(() => tmp.cleanup());

describe("vgpu serve", () => {
  it("creates the mdev on the parent offering the type and serves it on the socket", async () => {
    const lines: string[] = [];
    const socket = join(tmp.dir, "m.sock");
    const s = startServe({ type: "mtty-2", socket, trace: true }, (l) => lines.push(l));
    assert.equal(s.uuid, DEFAULT_SERVE_UUID);
    assert.equal(statSync(socket).mode & 0o777, 0o600);
    const c = new AsyncClient(socket);
    assert.ok(!isError(await c.version()));
    c.close();
    await s.server.idle();
    s.stop();
    assert.ok(
      lines.some((l) => l.startsWith("vfiouser.version")),
      "trace lines are passed to the log",
    );
    assert.ok(lines.some((l) => l.startsWith("vfiouser.release")));
  });

  it("names the types on offer when the type is unknown", () => {
    assert.throws(
      () => startServe({ type: "nope-1", socket: join(tmp.dir, "x.sock") }, () => {}),
      (e: unknown) => isKernelError(e) && e.errno === Errno.ENOENT && /mtty-2/.test(e.message),
    );
  });

  it("registers a `serve` command with --type and --socket", () => {
    const program = new Command();
    registerServe(program);
    const serve = program.commands.find((c) => c.name() === "serve");
    assert.ok(serve);
    assert.deepEqual(
      serve.options.map((o) => o.long),
      ["--type", "--socket", "--uuid", "--config", "--once", "--trace", "--handshake-timeout", "--poll-max-us"],
    );
  });

  it("refuses a socket where a live server answers (EADDRINUSE) and leaves that server serving", async () => {
    const socket = join(tmp.dir, "live.sock");
    const first = startServe({ type: "mtty-2", socket }, () => {});
    const ino = statSync(socket).ino;
    assert.throws(
      () => startServe({ type: "mtty-2", socket }, () => {}),
      (e: unknown) =>
        isKernelError(e) &&
        e.errno === Errno.EADDRINUSE &&
        e.message.includes(socket) &&
        /live server answers/.test(e.message),
    );
    assert.equal(statSync(socket).ino, ino, "the socket was not replaced");
    const c = new AsyncClient(socket);
    assert.ok(!isError(await c.version()), "the first server still answers");
    c.close();
    await first.server.idle();
    first.stop();
  });

  it("checks the socket path's length against sun_path before building anything", () => {
    const socket = join(tmp.dir, `${"s".repeat(130)}.sock`);
    const before = readdirSync(tmp.dir).sort();
    assert.throws(
      () => startServe({ type: "mtty-2", socket }, () => {}),
      (e: unknown) =>
        isKernelError(e) &&
        e.errno === Errno.ENAMETOOLONG &&
        e.message.includes(`${socket} is ${Buffer.byteLength(socket)} bytes`) &&
        /sun_path is 108 bytes/.test(e.message),
    );
    assert.deepEqual(readdirSync(tmp.dir).sort(), before);
  });

  it("refuses a --poll-max-us that is not 0 to 10000 microseconds, before creating anything", () => {
    for (const bad of ["-1", "fast", "1.5", "10001"]) {
      assert.throws(
        () => startServe({ type: "mtty-2", socket: join(tmp.dir, "p.sock"), pollMaxUs: bad }, () => {}),
        (e: unknown) => isKernelError(e) && e.errno === Errno.EINVAL && /--poll-max-us/.test(e.message),
        bad,
      );
    }
    assert.equal(existsSync(join(tmp.dir, "p.sock")), false);
    const s = startServe({ type: "mtty-2", socket: join(tmp.dir, "p.sock"), pollMaxUs: "200" }, () => {});
    s.stop();
  });

  it("drops a client that sends no VERSION within --handshake-timeout", async () => {
    assert.throws(
      () => startServe({ type: "mtty-2", socket: join(tmp.dir, "h0.sock"), handshakeTimeout: "soon" }, () => {}),
      (e: unknown) => isKernelError(e) && e.errno === Errno.EINVAL && /--handshake-timeout/.test(e.message),
    );
    const socket = join(tmp.dir, "h.sock");
    const lines: string[] = [];
    const s = startServe({ type: "mtty-2", socket, handshakeTimeout: "150", trace: true }, (l) => lines.push(l));
    const mute = connect(socket);
    const outcome = await new Promise<string>((resolve) => {
      const timer = setTimeout(() => resolve("still connected after 3 s"), 3000);
      mute.on("close", () => {
        clearTimeout(timer);
        resolve("closed");
      });
      mute.on("error", () => {});
    });
    assert.equal(outcome, "closed");
    assert.ok(lines.some((l) => l.startsWith("vfiouser.handshake.timeout")));
    mute.destroy();
    await s.server.idle();
    s.stop();
  });
});
