/**
 * mdevctl's callout behaviours (its src/tests/callouts.rs and the callout cases of define, modify, start, stop and
 * undefine), expressed through our command line with our own scripts: real shell scripts in a temporary
 * `<root>/scripts.d/`, run by a real host daemon (and, for the files-only commands, by the command itself when no
 * host runs). Every script appends how it was called to `<root>/calls.log`; the log of one session through every
 * action is a golden file (test/golden/mdevctl/callouts/every-action.txt, UPDATE_GOLDEN=1 rewrites it).
 */
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, beforeEach, describe, it } from "node:test";
import { type RunningHost, startHost } from "../src/cli/commands/host.ts";
import { createSystem, parseSystemConfig } from "../src/scenario/index.ts";
import { type CliRun, runVgpu } from "./test-support/cli-golden.ts";

const GOLDEN = new URL("./golden/mdevctl/callouts/", import.meta.url);
const UPDATE = process.env.UPDATE_GOLDEN === "1";
const U1 = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9";
const U2 = "59e8b599-afdd-4766-a59e-415ef4f5a492";

let base = "";
let root = "";
let offlineRoot = "";
let host: RunningHost | undefined;

type Run = CliRun;

async function vgpu(argv: readonly string[], at = root): Promise<Run> {
  return await runVgpu(argv, at, base);
}

/** The primary callout folder, mdevctl's older one under the definitions, and the notifiers. */
const PRIMARY = "scripts.d/callouts";
const OLD = "mdevctl.d/scripts.d/callouts";
const NOTIFIERS = "scripts.d/notifiers";

/** Every script logs its name, arguments and stdin, then runs `body` with $type $event $action $state $uuid $parent. */
function script(name: string, body: string, folder = PRIMARY, at = root): void {
  const dir = join(at, folder);
  mkdirSync(dir, { recursive: true });
  const p = join(dir, name);
  writeFileSync(
    p,
    "#!/bin/sh\n" +
      'in=$(cat)\nprintf \'%s %s\\n\' "$(basename "$0")" "$*" >> "$VGPU_ROOT/calls.log"\n' +
      'if [ -n "$in" ]; then printf \'  stdin %s\\n\' "$in" >> "$VGPU_ROOT/calls.log"; fi\n' +
      "while [ $# -ge 2 ]; do case $1 in -t) type=$2;; -e) event=$2;; -a) action=$2;; -s) state=$2;; " +
      "-u) uuid=$2;; -p) parent=$2;; esac; shift 2; done\n" +
      `${body}\n`,
  );
  chmodSync(p, 0o755);
}

const exitWith = (n: number) => `exit ${n}`;

/** A script declaring mdevctl's versioned support; `pre`/`live` exit with the given statuses. */
function versioned(opts: { actions?: string[]; events?: string[]; pre?: number; live?: number } = {}): string {
  const actions = opts.actions ?? ["start", "stop", "define", "undefine", "modify", "attributes", "capabilities"];
  const events = opts.events ?? ["pre", "post", "notify", "get", "live"];
  const supports = JSON.stringify({ supports: { version: 2, actions, events } });
  return `case "$event/$action" in
  get/capabilities) printf '%s' '${supports}'; exit 0;;
  pre/*) exit ${opts.pre ?? 0};;
  live/*) exit ${opts.live ?? 0};;
  *) exit 0;;
esac`;
}

function calls(at = root): string {
  const p = join(at, "calls.log");
  return existsSync(p) ? readFileSync(p, "utf8") : "";
}

/**
 * The callout lines of the log only (without stdin), e.g. "rc1.sh pre define none"; the capability questions asked
 * of every script before each action are left out unless `capabilities`.
 */
function events(at = root, capabilities = false): string[] {
  return calls(at)
    .split("\n")
    .filter((l) => l !== "" && !l.startsWith("  "))
    .map((l) => {
      const a = l.split(" ");
      return `${a[0]} ${a[4]} ${a[6]} ${a[8]}`;
    })
    .filter((e) => capabilities || !e.endsWith(" get capabilities none"));
}

function reset(at = root): void {
  for (const f of ["scripts.d", "mdevctl.d/scripts.d", "calls.log"])
    rmSync(join(at, f), { recursive: true, force: true });
}

function golden(name: string, actual: string): void {
  const file = new URL(`${name}.txt`, GOLDEN);
  if (UPDATE) {
    mkdirSync(new URL(".", file), { recursive: true });
    writeFileSync(file, actual);
    return;
  }
  assert.equal(actual, readFileSync(file, "utf8"), `differs from ${file.pathname} (UPDATE_GOLDEN=1 rewrites it)`);
}

before(async () => {
  base = mkdtempSync(join(tmpdir(), "vgpu-callouts-"));
  root = join(base, "root");
  offlineRoot = join(base, "offline");
  const system = createSystem(parseSystemConfig({ memory: "1 GiB", parents: [{ kind: "mtty", ports: 2 }] }));
  host = await startHost({ root, system, serve: false, log: () => {} });
});

after(async () => {
  await host?.close();
  if (base) rmSync(base, { recursive: true, force: true });
});

beforeEach(async () => {
  reset();
  for (const u of [U1, U2]) {
    await vgpu(["stop", "-u", u]);
    await vgpu(["undefine", "-u", u]);
  }
  reset();
});

describe("callouts: the contract (arguments, stdin, pre/post/notify)", () => {
  it("every action runs pre (state none) then post (success) with the definition on stdin; notifiers follow", async () => {
    script("params.sh", exitWith(0));
    script("log.sh", exitWith(0), NOTIFIERS);
    const steps = [
      ["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"],
      ["modify", "-u", U1, "--auto"],
      ["start", "-u", U1],
      ["stop", "-u", U1],
      ["undefine", "-u", U1],
    ];
    let transcript = "";
    for (const argv of steps) {
      const r = await vgpu(argv);
      assert.equal(r.code, 0, `${argv.join(" ")}: ${r.stderr}`);
      transcript += `$ vgpu ${argv.join(" ")}\n${calls()}`;
      rmSync(join(root, "calls.log"));
    }
    golden("every-action", transcript);
  });

  it("a failed action runs post with state failure", async () => {
    script("params.sh", exitWith(0));
    const r = await vgpu(["start", "-p", "mtty", "-t", "mtty-9", "-u", U1]);
    assert.equal(r.code, 1);
    assert.deepEqual(events(), ["params.sh pre start none", "params.sh post start failure"]);
  });
});

describe("callouts: which script answers (mdevctl's callouts.rs)", () => {
  it("a script exiting 1 in pre vetoes the action; -f goes ahead with a warning; notifiers run either way", async () => {
    script("rc1.sh", exitWith(1));
    script("log.sh", exitWith(0), NOTIFIERS);
    const r = await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"]);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^vgpu: EPERM \(Operation not permitted\): callout script \S+rc1\.sh failed the define \(pre, exit status 1\); pass -f to go ahead despite it\n$/,
    );
    assert.equal(existsSync(join(root, "mdevctl.d", "mtty", U1)), false, "a vetoed define writes nothing");
    assert.deepEqual(events(), ["rc1.sh pre define none", "log.sh notify define none"]);
    reset();
    script("rc1.sh", exitWith(1));
    const forced = await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1", "-f"]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(
      forced.stderr,
      /vgpu: warning: going ahead with the define despite the callout \(-f\): callout script/,
    );
    assert.ok(existsSync(join(root, "mdevctl.d", "mtty", U1)));
    // The post callout's failure is ignored: the definition is written.
    assert.deepEqual(events(), ["rc1.sh pre define none", "rc1.sh post define success"]);
  });

  it("exit status 2 means 'not my device type': the action goes on as without scripts", async () => {
    script("rc2.sh", exitWith(2));
    const r = await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(events(), ["rc2.sh pre define none", "rc2.sh post define success"]);
  });

  it("scripts are tried in file-name order: the first that answers decides", async () => {
    script("00.sh", exitWith(1));
    script("99.sh", exitWith(0));
    assert.equal((await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"])).code, 1);
    reset();
    script("00.sh", exitWith(0));
    script("99.sh", exitWith(1));
    assert.equal((await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"])).code, 0);
    assert.deepEqual(events(), ["00.sh pre define none", "00.sh post define success"]);
  });

  it("a script answers only for its types; a device no script claims is not held up", async () => {
    const only = (type: string, status: number) => `[ "$type" = "${type}" ] && exit ${status}; exit 2`;
    script("type-a.sh", only("mtty-2", 0));
    script("type-b.sh", only("mtty-1", 1));
    const mine = await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"]);
    assert.equal(mine.code, 1, "type-b answers for mtty-1 and fails");
    assert.match(mine.stderr, /type-b\.sh failed the define/);
    reset();
    script("type-a.sh", only("mtty-2", 0));
    script("type-b.sh", only("mtty-2", 1));
    assert.equal((await vgpu(["define", "-u", U2, "-p", "mtty", "-t", "mtty-1"])).code, 0, "no script claims mtty-1");
  });

  it("the primary folder comes before the one under mdevctl.d; a folder where none answers gives way", async () => {
    const cases: [number, number, number][] = [
      [0, 1, 0],
      [1, 0, 1],
      [2, 1, 1],
      [2, 0, 0],
    ];
    for (const [primary, old, expected] of cases) {
      reset();
      script("a.sh", exitWith(primary), PRIMARY);
      script("b.sh", exitWith(old), OLD);
      const r = await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"]);
      assert.equal(r.code, expected, `primary ${primary}, old ${old}: ${r.stderr}`);
      await vgpu(["undefine", "-u", U1, "-f"]);
    }
    // The old folder's scripts are not definitions: `list -d` does not warn about mdevctl.d/scripts.d.
    const l = await vgpu(["list", "-d"]);
    assert.equal(l.stderr, "");
  });

  it("a script's stderr is shown, prefixed with its name", async () => {
    script("talk.sh", "echo 'checking the parent' >&2; exit 0");
    const r = await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"]);
    assert.equal(r.code, 0);
    assert.equal(
      r.stderr,
      "vgpu: warning: talk.sh: checking the parent\nvgpu: warning: talk.sh: checking the parent\n",
    );
  });
});

describe("callouts: get attributes", () => {
  it("a running device lists the attributes its script reports; NUL-terminated output is fine", async () => {
    assert.equal((await vgpu(["start", "-u", U1, "-p", "mtty", "-t", "mtty-1"])).code, 0);
    script("good.sh", `[ "$event" = get ] && printf '[{"attribute0": "VALUE"}]'; exit 0`);
    const r = await vgpu(["list", "-v"]);
    assert.equal(r.stdout, `${U1} mtty mtty-1 manual\n  Attrs:\n    @{0}: {"attribute0":"VALUE"}\n`);
    reset();
    script("nul.sh", `[ "$event" = get ] && printf '[{"attribute0": "VALUE"}]\\0'; exit 0`);
    assert.equal(
      (await vgpu(["list", "-u", U1, "--dumpjson"])).stdout,
      '{\n  "mdev_type": "mtty-1",\n  "start": "manual",\n  "attrs": [\n    {\n      "attribute0": "VALUE"\n    }\n  ]\n}',
    );
  });

  it("output that is not JSON is ignored by list (with a warning) and fails define of the running device", async () => {
    assert.equal((await vgpu(["start", "-u", U1, "-p", "mtty", "-t", "mtty-1"])).code, 0);
    script("bad.sh", `[ "$event" = get ] && printf 'not json'; exit 0`);
    const l = await vgpu(["list"]);
    assert.equal(l.code, 0);
    assert.equal(l.stdout, `${U1} mtty mtty-1 manual\n`);
    assert.match(
      l.stderr,
      /printed attributes that are not a JSON attribute list \(not valid JSON \(line 1 column 1\)\)/,
    );
    const d = await vgpu(["define", "-u", U1]);
    assert.equal(d.code, 1);
    assert.match(d.stderr, /EINVAL.*bad\.sh printed attributes that are not a JSON attribute list/);
  });

  it("defining a running device takes its attributes from the script", async () => {
    assert.equal((await vgpu(["start", "-u", U1, "-p", "mtty", "-t", "mtty-1"])).code, 0);
    script("good.sh", `[ "$event" = get ] && printf '[{"a": "1"}, {"b": "2"}]'; exit 0`);
    assert.equal((await vgpu(["define", "-u", U1])).code, 0);
    assert.deepEqual(JSON.parse(readFileSync(join(root, "mdevctl.d", "mtty", U1), "utf8")), {
      mdev_type: "mtty-1",
      start: "manual",
      attrs: [{ a: "1" }, { b: "2" }],
    });
  });
});

describe("callouts: versioned scripts", () => {
  it("a script declaring its support is asked first and answers every event; an unversioned one is not used", async () => {
    script("00-rc1.sh", exitWith(1));
    script("10-ver.sh", versioned());
    const r = await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(events(root, true), [
      "00-rc1.sh get capabilities none",
      "10-ver.sh get capabilities none",
      "10-ver.sh pre define none",
      "10-ver.sh post define success",
    ]);
    assert.match(
      calls(),
      /10-ver\.sh -t mtty-1 -e get -a capabilities -s none -u \S+ -p mtty\n {2}stdin \{"provides":\{"version":2,"actions":\["start","stop","define","undefine","modify","attributes","capabilities"\],"events":\["pre","post","notify","get","live"\]\}\}\n/,
    );
  });

  it("its failing pre vetoes; an action it does not list is refused", async () => {
    script("ver.sh", versioned({ pre: 1 }));
    assert.equal((await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"])).code, 1);
    reset();
    script("ver.sh", versioned({ actions: ["start", "stop", "define", "undefine", "attributes", "capabilities"] }));
    assert.equal((await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"])).code, 0);
    const m = await vgpu(["modify", "-u", U1, "--auto"]);
    assert.equal(m.code, 1);
    assert.match(m.stderr, /callout script \S+ver\.sh does not support pre modify; pass -f to go ahead without it/);
    assert.equal((await vgpu(["start", "-u", U1])).code, 0, "start is listed");
  });

  it("modify --live runs the live event with the new definition; its failure stops the change", async () => {
    assert.equal((await vgpu(["start", "-u", U1, "-p", "mtty", "-t", "mtty-1"])).code, 0);
    writeFileSync(join(base, "live.json"), JSON.stringify({ mdev_type: "mtty-1", start: "manual", attrs: [] }));
    script("ver.sh", versioned({ live: 0 }));
    assert.equal((await vgpu(["modify", "-u", U1, "--live", "--jsonfile", "live.json"])).code, 0);
    assert.ok(events().includes("ver.sh live modify none"));
    assert.match(calls(), /-e live -a modify .*\n {2}stdin \{"mdev_type":"mtty-1","start":"manual","attrs":\[\]\}\n/);
    reset();
    script("ver.sh", versioned({ live: 1 }));
    const r = await vgpu(["modify", "-u", U1, "--live", "--jsonfile", "live.json"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /ver\.sh failed the modify \(live, exit status 1\)/);
  });
});

describe("callouts without a host", () => {
  it("define, modify and undefine on the files alone run the callouts too", async () => {
    script("rc1.sh", exitWith(1), PRIMARY, offlineRoot);
    const r = await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"], offlineRoot);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /rc1\.sh failed the define/);
    reset(offlineRoot);
    script("rc0.sh", exitWith(0), PRIMARY, offlineRoot);
    assert.equal((await vgpu(["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"], offlineRoot)).code, 0);
    assert.equal((await vgpu(["undefine", "-u", U1], offlineRoot)).code, 0);
    assert.deepEqual(events(offlineRoot), [
      "rc0.sh pre define none",
      "rc0.sh post define success",
      "rc0.sh pre undefine none",
      "rc0.sh post undefine success",
    ]);
  });
});
