/**
 * What a person meets first, through the real executables (bin/vgpu.js, bin/lsmdev.js): the version, exit status 2
 * for usage errors and 1 for the others, one error format and never a stack trace (a folder or malformed JSON as a
 * scenario, an unwritable --trace, --root naming a file, a serve socket in a missing folder), the help's account of
 * the default host, what the package installs (both executables, man pages, bash completion), and `run --json`
 * naming why a run did not hold up.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Command } from "commander";
import { registerCompare } from "../src/cli/commands/compare.ts";
import { registerDemo } from "../src/cli/commands/demo.ts";
import { registerExplain } from "../src/cli/commands/explain.ts";
import { type CliIo, registerMdevCommands, runCli } from "../src/cli/commands/index.ts";
import { extraFailures, registerRun } from "../src/cli/commands/run.ts";
import { registerServe } from "../src/cli/commands/serve.ts";
import { VERSION } from "../src/cli/version.ts";
import { parseScenario, type ScenarioReport } from "../src/scenario/index.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const PKG = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
  version: string;
  bin: Record<string, string>;
  man: string[];
  files: string[];
  scripts: Record<string, string>;
};
/** One error line: "vgpu: ERRNO (text): sentence". */
const ERROR_LINE = /^vgpu: E[A-Z0-9]+ \([^)]+\): \S.*\n$/;

let base = "";

function run(bin: string, args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(ROOT, bin), ...args], {
    cwd: base,
    encoding: "utf8",
    env: { ...process.env, VGPU_ROOT: join(base, "root") },
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const vgpu = (...args: string[]) => run("bin/vgpu.js", args);

before(() => {
  base = mkdtempSync(join(tmpdir(), "vgpu-start-"));
  mkdirSync(join(base, "root"));
});

after(() => {
  if (base) rmSync(base, { recursive: true, force: true });
});

describe("the executables", () => {
  it("--version prints 'vgpu 0.1.0', the package's version", () => {
    assert.equal(VERSION, PKG.version);
    const r = vgpu("--version");
    assert.deepEqual([r.status, r.stdout, r.stderr], [0, `vgpu ${PKG.version}\n`, ""]);
  });

  it("lsmdev is list under its own name, with list's options and output", () => {
    assert.equal(PKG.bin.lsmdev, "bin/lsmdev.js");
    assert.equal(
      vgpu("define", "-u", "11111111-1111-4111-8111-111111111111", "-p", "mtty", "-t", "mtty-2", "-f").status,
      0,
    );
    const l = run("bin/lsmdev.js", ["-d"]);
    assert.deepEqual(
      [l.status, l.stdout, l.stderr],
      [0, "11111111-1111-4111-8111-111111111111 mtty mtty-2 manual\n", ""],
    );
    assert.equal(l.stdout, vgpu("list", "-d").stdout);
    const bad = run("bin/lsmdev.js", ["--nope"]);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, ERROR_LINE);
  });

  it("usage errors exit 2, other errors 1, each one line in one format", async () => {
    const bogus = vgpu("bogus");
    assert.equal(bogus.status, 2);
    assert.match(bogus.stderr, ERROR_LINE);
    assert.match(bogus.stderr, /unknown command 'bogus'/);
    // The mdevctl commands in process (the same code bin/vgpu.js runs), to spare a start each.
    const cases: [string[], number, RegExp][] = [
      [["list", "-x"], 2, /unknown option '-x'/],
      [["list", "-u", "not-a-uuid"], 2, /invalid UUID 'not-a-uuid' for -u\/--uuid/],
      [["modify", "-u", "11111111-1111-4111-8111-111111111111", "-a", "-m"], 2, /mutually exclusive/],
      [["stop"], 2, /required option '-u, --uuid <uuid>' not specified/],
      [
        ["start", "-u", "11111111-1111-4111-8111-111111111111"],
        1,
        /^vgpu: ENOENT .*no host is running at .*: start one with `vgpu host --root /,
      ],
      [["list", "-d", "--root", "afile"], 1, /^vgpu: ENOTDIR \(Not a directory\): \S+afile \(--root\) is not a folder/],
    ];
    writeFileSync(join(base, "afile"), "");
    for (const [args, status, re] of cases) {
      let stderr = "";
      const io: CliIo = {
        out: () => {},
        err: (t) => {
          stderr += t;
        },
        env: { VGPU_ROOT: join(base, "root") },
        cwd: base,
      };
      const code = await runCli(args, io);
      assert.equal(code, status, `vgpu ${args.join(" ")}: ${stderr}`);
      assert.match(stderr, ERROR_LINE, `vgpu ${args.join(" ")}`);
      assert.match(stderr, re);
    }
  });
});

describe("errors a person meets first: one line, never a stack trace", () => {
  it("a folder or malformed JSON as scenario, an unwritable --trace, a socket in a missing folder", () => {
    mkdirSync(join(base, "adir"));
    writeFileSync(join(base, "bad.json"), '{\n  "name": "x",\n  "vms": [1,\n}\n');
    const demo = join(ROOT, "scenarios", "demo.json");
    const cases: [string[], RegExp][] = [
      [["run", "adir"], /^vgpu: EISDIR \(Is a directory\): cannot read scenario adir: it is a folder/],
      [
        ["run", "bad.json"],
        /^vgpu: EINVAL \(Invalid argument\): invalid scenario bad\.json: not valid JSON \(line 4 column 1\)/,
      ],
      [
        ["run", demo, "-q", "--trace", "/nonexistent/t.jsonl"],
        /^vgpu: ENOENT \(No such file or directory\): cannot write the trace to \/nonexistent\/t\.jsonl/,
      ],
      [
        ["serve", "--type", "mtty-2", "--socket", "/nonexistent/dir/s.sock"],
        /^vgpu: ENOENT \(No such file or directory\): cannot serve on \/nonexistent\/dir\/s\.sock: the folder \/nonexistent\/dir does not exist/,
      ],
    ];
    for (const [args, re] of cases) {
      const r = vgpu(...args);
      assert.equal(r.status, 1, `vgpu ${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, ERROR_LINE, `vgpu ${args.join(" ")}`);
      assert.match(r.stderr, re);
      assert.doesNotMatch(r.stderr, /\n\s+at |errno \d/);
    }
  });

  it("the help of host and serve describes the default host: the GVT-g GPU and the mtty parent", () => {
    for (const cmd of ["host", "serve"]) {
      const r = vgpu(cmd, "--help");
      assert.equal(r.status, 0);
      assert.match(r.stdout.replace(/\s+/g, " "), /GVT-g-like GPU at 0000:00:02\.0 .*mtty/, cmd);
    }
  });

  it("run --json lists isolation violations and an unclean teardown in failures", () => {
    const report = {
      failures: ["vm1: expected 0 faults, saw 2"],
      isolation: { pieces: 10, bytes: 40960, violations: 3, samples: [] },
      teardown: { clean: false, problems: ["1 pinned frame left"] },
    } as unknown as ScenarioReport;
    assert.deepEqual(extraFailures(report), [
      "isolation: 3 violation(s) of the isolation invariant (the first in isolation.samples)",
      "teardown: not clean: 1 pinned frame left",
    ]);
    const fine = { ...report, isolation: { ...report.isolation, violations: 0 }, teardown: null } as ScenarioReport;
    assert.deepEqual(extraFailures(fine), []);
  });
});

describe("what the package installs", () => {
  it("is built by npm install (prepare), ships dist/, man pages and bash completion", () => {
    assert.equal(PKG.scripts.prepare, "node scripts/build.mjs");
    for (const f of ["dist/", "bin/", "man/", "completion/", "scenarios/"]) assert.ok(PKG.files.includes(f), f);
    assert.deepEqual(PKG.man, ["./man/vgpu.1", "./man/lsmdev.1"]);
    for (const m of PKG.man) assert.match(readFileSync(join(ROOT, m), "utf8"), /^\.TH (VGPU|LSMDEV) 1 /);
    assert.ok(existsSync(join(ROOT, "completion", "vgpu.bash")));
  });

  it("bash completion completes commands and each command's options", () => {
    const complete = (words: string[]) => {
      const script =
        `source ${JSON.stringify(join(ROOT, "completion", "vgpu.bash"))}; ` +
        `COMP_WORDS=(${words.map((w) => JSON.stringify(w)).join(" ")}); COMP_CWORD=${words.length - 1}; _vgpu; ` +
        'echo "$' +
        '{COMPREPLY[@]}"';
      const r = spawnSync("bash", ["-c", script], { encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.trim().split(" ");
    };
    assert.deepEqual(complete(["vgpu", "li"]), ["list"]);
    assert.deepEqual(complete(["vgpu", "start-"]), ["start-parent-mdevs"]);
    assert.ok(complete(["vgpu", "modify", "--del"]).includes("--delattr"));
    assert.ok(complete(["lsmdev", "--dump"]).includes("--dumpjson"));
    // Every long option of every command, as commander knows them, completes: the script cannot drift from the CLI.
    const program = new Command().name("vgpu");
    registerMdevCommands(program, { out: () => {}, err: () => {}, env: {}, cwd: ROOT });
    for (const register of [registerDemo, registerRun, registerCompare, registerExplain, registerServe]) {
      register(program);
    }
    assert.ok(program.commands.length >= 14);
    for (const cmd of program.commands) {
      const offered = complete(["vgpu", cmd.name(), "--"]);
      for (const o of cmd.options) {
        if (o.long !== undefined) assert.ok(offered.includes(o.long), `vgpu ${cmd.name()} ${o.long} does not complete`);
      }
    }
  });
});

describe("type names as vgpu types prints them", () => {
  it("a scenario's vGPU type may carry the i915- prefix, and reads as the type id", () => {
    const file = JSON.parse(readFileSync(join(ROOT, "scenarios", "demo.json"), "utf8")) as {
      vms: { devices: { kind: string; type?: string }[] }[];
    };
    const vgpus = file.vms.flatMap((v) => v.devices).filter((d) => d.kind === "vgpu");
    assert.ok(vgpus.length > 0);
    const plain = parseScenario(structuredClone(file), "demo.json");
    for (const d of vgpus) d.type = `i915-${d.type}`;
    const prefixed = parseScenario(file, "demo.json");
    assert.deepEqual(prefixed, plain);
  });
});
