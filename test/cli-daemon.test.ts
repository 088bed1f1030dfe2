/**
 * `vgpu host` as a real process: it serves on <root>/vgpu.sock with mode 0600, refuses to start a second time,
 * stops cleanly on SIGTERM and SIGINT (socket removed, exit 0), and after a crash (SIGKILL) the next start replaces
 * the stale socket with a message while clients say no host is running. Every child is killed in `after`, whatever
 * happened.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { type CliIo, runCli } from "../src/cli/commands/index.ts";

const BIN = fileURLToPath(new URL("../bin/vgpu.js", import.meta.url));
const children = new Set<ChildProcess>();
const base = mkdtempSync(join(tmpdir(), "vgpu-hostproc-"));
const root = join(base, "root");

after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  rmSync(base, { recursive: true, force: true });
});

interface Child {
  readonly proc: ChildProcess;
  /** Resolves with the stderr so far once a line matches, rejects if the process exits first. */
  waitFor(re: RegExp): Promise<string>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

function vgpuProcess(args: readonly string[]): Child {
  const proc = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  children.add(proc);
  let stderr = "";
  const waiters: { re: RegExp; resolve: (s: string) => void; reject: (e: Error) => void }[] = [];
  proc.stderr!.setEncoding("utf8");
  proc.stderr!.on("data", (c: string) => {
    stderr += c;
    for (const w of [...waiters]) {
      if (w.re.test(stderr)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(stderr);
      }
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
    proc.on("exit", (code, signal) => {
      for (const w of waiters)
        w.reject(new Error(`vgpu exited (${code ?? signal}) before /${w.re.source}/:\n${stderr}`));
      resolve({ code, signal, stderr });
    });
  });
  return {
    proc,
    exited,
    waitFor: (re) =>
      re.test(stderr)
        ? Promise.resolve(stderr)
        : new Promise((resolve, reject) => waiters.push({ re, resolve, reject })),
  };
}

async function list(): Promise<{ code: number; out: string; err: string }> {
  let out = "";
  let err = "";
  const io: CliIo = {
    out: (t) => {
      out += t;
    },
    err: (t) => {
      err += t;
    },
    env: {},
    cwd: base,
  };
  const code = await runCli(["list", "--root", root], io);
  return { code, out, err };
}

describe("vgpu host (a real process)", () => {
  it("serves, refuses a second host, stops on SIGTERM; after a crash the next host replaces the stale socket", async () => {
    const config = join(base, "host.json");
    writeFileSync(config, JSON.stringify({ memory: "2 GiB", parents: [{ kind: "mtty", name: "mtty", ports: 2 }] }));
    const sock = join(root, "vgpu.sock");

    const first = vgpuProcess(["host", "--root", root, "--config", config]);
    await first.waitFor(/serving on /);
    assert.equal(statSync(sock).mode & 0o777, 0o600);
    assert.deepEqual(await list(), { code: 0, out: "", err: "" });

    const second = vgpuProcess(["host", "--root", root]);
    const refused = await second.exited;
    assert.equal(refused.code, 1);
    // The strerror text comes from src/core/errno.ts (EADDRINUSE: "Address already in use").
    assert.match(refused.stderr, /^vgpu: EADDRINUSE \([^)]*\): a host is already running at \S+vgpu\.sock\n$/);
    assert.ok(refused.stderr.includes(sock));

    first.proc.kill("SIGTERM");
    const stopped = await first.exited;
    assert.equal(stopped.code, 0);
    assert.match(stopped.stderr, /vgpu host: SIGTERM: stopping\nvgpu host: stopped; removed .*vgpu\.sock\n$/);
    assert.equal(existsSync(sock), false);

    const crashing = vgpuProcess(["host", "--root", root, "--config", config]);
    await crashing.waitFor(/serving on /);
    crashing.proc.kill("SIGKILL");
    await crashing.exited;
    assert.ok(existsSync(sock), "a killed host leaves its socket behind");
    const dead = await list();
    assert.equal(dead.code, 1);
    assert.equal(
      dead.err,
      `vgpu: ECONNREFUSED (Connection refused): no host is running at ${sock} (the socket file is stale): start one with \`vgpu host --root ${root}\`\n`,
    );

    const third = vgpuProcess(["host", "--root", root]);
    const log = await third.waitFor(/serving on /);
    assert.match(
      log,
      new RegExp(
        `removed stale socket ${sock.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} \\(no host was listening on it\\)`,
      ),
    );
    third.proc.kill("SIGINT");
    assert.equal((await third.exited).code, 0);
    assert.equal(existsSync(sock), false);
  });

  it("refuses a --root whose sockets would not fit in sun_path: ENAMETOOLONG, no stack trace, nothing created", async () => {
    const parent = join(base, "long");
    mkdirSync(parent);
    // vgpu.sock does not fit: the root is 99 bytes, the socket path 109.
    const tooLong = join(parent, "r".repeat(99 - parent.length - 1));
    const r = await vgpuProcess(["host", "--root", tooLong]).exited;
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      `vgpu: ENAMETOOLONG (File name too long): socket path ${tooLong}/vgpu.sock is 109 bytes, longer than the 107 ` +
        "bytes a UNIX socket path can hold (sun_path is 108 bytes with its NUL): nothing was created; pick a --root " +
        "of at most 65 bytes\n",
    );
    // vgpu.sock fits, a device's <uuid>.sock does not: refused as well, before the host is up.
    const deviceTooLong = join(parent, "d".repeat(70 - parent.length - 1));
    const d = await vgpuProcess(["host", "--root", deviceTooLong]).exited;
    assert.equal(d.code, 1);
    assert.equal(
      d.stderr,
      `vgpu: ENAMETOOLONG (File name too long): socket path ${deviceTooLong}/<uuid>.sock is 112 bytes, longer than ` +
        "the 107 bytes a UNIX socket path can hold (sun_path is 108 bytes with its NUL): nothing was created; pick a " +
        "--root of at most 65 bytes (each started device is served on <root>/<uuid>.sock)\n",
    );
    assert.deepEqual(readdirSync(parent), [], "no root, and no socket at a cut path beside it");
  });

  it("refuses a --poll-max-us outside 0..10000 before anything is created", async () => {
    const where = join(base, "polling");
    for (const v of ["10001", "-1", "2.5", "soon"]) {
      const r = await vgpuProcess(["host", "--root", where, "--poll-max-us", v]).exited;
      assert.equal(r.code, 1, v);
      assert.equal(
        r.stderr,
        `vgpu: EINVAL (Invalid argument): --poll-max-us must be a whole number of microseconds from 0 (off) to 10000, got ${v}\n`,
      );
    }
    assert.equal(existsSync(where), false, "no root was made");
  });

  it("rejects a bad config file naming the file and the field", async () => {
    const config = join(base, "bad.json");
    writeFileSync(config, JSON.stringify({ parents: [{ kind: "mtty", ports: -1 }] }));
    const r = await vgpuProcess(["host", "--root", join(base, "other"), "--config", config]).exited;
    assert.equal(r.code, 1);
    assert.equal(
      r.stderr,
      `vgpu: EINVAL (Invalid argument): invalid host config ${config}: parents[0].ports: must be an integer from 0 to 1024\n`,
    );
  });
});
