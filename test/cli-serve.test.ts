/**
 * The daemon serves every started mdev over vfio-user on `<root>/<uuid>.sock`: `vgpu list -v` names the socket, a
 * vfio-user client attaches through it, and stopping the device removes the socket first.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { runCli } from "../src/cli/commands/index.ts";
import { VfioUserClient } from "../src/vfio-user/index.ts";

const BIN = new URL("../bin/vgpu.js", import.meta.url).pathname;
const UUID = "5a1e0000-0000-4000-8000-000000000001";
let base = "";
// The daemon runs in a child process: the vfio-user client's round trips block this process's thread.
let daemon: ChildProcess | undefined;

async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const code = await runCli([...args, "--root", base], {
    out: (t) => {
      out += t;
    },
    err: (t) => {
      err += t;
    },
    env: {},
    cwd: base,
  });
  return { code, out, err };
}

before(async () => {
  base = mkdtempSync(join(tmpdir(), "vgpu-serve-"));
  const config = join(base, "host.json");
  writeFileSync(config, JSON.stringify({ memory: "2 GiB", parents: [{ kind: "mtty", ports: 4 }] }));
  const child = spawn(process.execPath, [BIN, "host", "--root", base, "--config", config], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  daemon = child;
  await new Promise<void>((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`vgpu host did not start: ${log}`)), 20_000);
    const onData = (b: Buffer) => {
      log += b.toString();
      if (/serving on /.test(log)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.on("exit", (code) => reject(new Error(`vgpu host exited (${code}): ${log}`)));
  });
});

after(async () => {
  if (daemon && daemon.exitCode === null) {
    const gone = new Promise((r) => daemon?.once("exit", r));
    daemon.kill("SIGTERM");
    await gone;
  }
  if (base) rmSync(base, { recursive: true, force: true });
});

describe("vgpu host serves started devices over vfio-user", () => {
  it("start creates <root>/<uuid>.sock (mode 0600), list -v shows it, a client attaches, stop removes it", async () => {
    const started = await cli(["start", "-u", UUID, "-p", "mtty", "-t", "mtty-1"]);
    assert.equal(started.code, 0, started.err);
    const sock = join(base, `${UUID}.sock`);
    assert.equal(existsSync(sock), true);
    assert.equal(statSync(sock).mode & 0o777, 0o600);
    const listed = await cli(["list", "-v"]);
    assert.match(listed.out, new RegExp(`${UUID} mtty mtty-1 manual\\n  vfio-user: ${sock.replace(/[.]/g, "\\.")}\\n`));

    const client = await VfioUserClient.connect({ socketPath: sock, timeoutMs: 5000 });
    try {
      assert.equal(client.deviceInfo().numRegions, 9);
    } finally {
      client.close();
    }

    const stopped = await cli(["stop", "-u", UUID]);
    assert.equal(stopped.code, 0, stopped.err);
    assert.equal(existsSync(sock), false, "the socket goes with the device");
  });
});
