/** `vgpu serve`: the mdev created on the parent offering the type, served on a 0600 socket; unknown types named. */
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Command } from "commander";
import { Errno, isKernelError } from "../core/index.ts";
import { DEFAULT_SERVE_UUID, registerServe, startServe } from "./serve-command.ts";
import { AsyncClient, isError, tempDir } from "./testing/harness.ts";

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
      ["--type", "--socket", "--uuid", "--config", "--once", "--trace"],
    );
  });
});
