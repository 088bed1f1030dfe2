/**
 * mdevctl's test cases that need running devices (src/tests/define.rs, startstop.rs, list.rs, modify.rs's live
 * cases), expressed through our command line against a real host daemon with an mtty parent of 4 ports, as golden
 * transcripts under test/golden/mdevctl/host/ (UPDATE_GOLDEN=1 rewrites them). Each case names the mdevctl test it
 * expresses; the fixtures are ours.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost } from "../src/cli/commands/host.ts";
import { createSystem, parseSystemConfig } from "../src/scenario/index.ts";
import { goldenStep } from "./test-support/cli-golden.ts";

const GOLDEN = new URL("./golden/mdevctl/host/", import.meta.url);
const U1 = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9";
const U2 = "59e8b599-afdd-4766-a59e-415ef4f5a492";
const U3 = "711aa8cb-2e0c-4b9b-8a3f-8b07c8e0b3d2";

let base = "";
let root = "";
let host: RunningHost | undefined;

async function step(name: string, argv: readonly string[]): Promise<number> {
  return (await goldenStep(GOLDEN, name, argv, root, base)).code;
}

function stored(parent: string, uuid: string): unknown {
  return JSON.parse(readFileSync(join(root, "mdevctl.d", parent, uuid), "utf8"));
}

before(async () => {
  base = mkdtempSync(join(tmpdir(), "vgpu-mdevctl-host-"));
  root = join(base, "root");
  const system = createSystem(parseSystemConfig({ memory: "1 GiB", parents: [{ kind: "mtty", ports: 4 }] }));
  host = await startHost({ root, system, serve: false, log: () => {} });
});

after(async () => {
  await host?.close();
  if (base) rmSync(base, { recursive: true, force: true });
});

describe("mdevctl's cases with running devices", () => {
  it("start (startstop.rs)", async () => {
    assert.equal(await step("start-uuid-type-parent", ["start", "-u", U1, "-p", "mtty", "-t", "mtty-1"]), 0);
    assert.equal(await step("start-no-uuid-no-parent", ["start", "-t", "mtty-1"]), 2);
    assert.equal(await step("start-no-uuid-no-type", ["start", "-p", "mtty"]), 1);
    assert.equal(await step("start-no-type", ["start", "-u", U2, "-p", "mtty"]), 1);
    assert.equal(await step("start-already-running", ["start", "-u", U1, "-p", "mtty", "-t", "mtty-1"]), 1);
    assert.equal(await step("start-missing-parent", ["start", "-u", U2, "-p", "0000:00:09.0", "-t", "mtty-1"]), 1);
    assert.equal(await step("start-parent-case", ["start", "-u", U2, "-p", "MTTY", "-t", "mtty-1"]), 1);
    assert.equal(await step("start-unknown-type", ["start", "-u", U2, "-p", "mtty", "-t", "mtty-9"]), 1);
    // Defined devices: no type needed; a type that differs from the definition is refused.
    writeFileSync(join(base, "u2.json"), JSON.stringify({ mdev_type: "mtty-2", start: "manual", attrs: [] }));
    assert.equal(await step("define-for-start", ["define", "-u", U2, "-p", "mtty", "--jsonfile", "u2.json"]), 0);
    assert.equal(await step("start-defined-diff-type", ["start", "-u", U2, "-t", "mtty-1"]), 1);
    assert.equal(await step("start-defined-with-type", ["start", "-u", U2, "-p", "mtty", "-t", "mtty-2"]), 0);
    assert.equal(await step("stop-defined", ["stop", "-u", U2]), 0);
    assert.equal(await step("start-no-type-defined", ["start", "-u", U2]), 0);
    assert.equal(await step("stop-default", ["stop", "-u", U2]), 0);
    assert.equal(await step("stop-not-running", ["stop", "-u", U2]), 1);
  });

  it("define of a running device (define.rs: uuid-running-*)", async () => {
    // U1 runs as mtty-1 under mtty.
    assert.equal(await step("define-uuid-running-no-parent", ["define", "-u", U1, "-t", "mtty-2"]), 1);
    assert.equal(await step("define-uuid-running-no-type", ["define", "-u", U1]), 0);
    assert.deepEqual(stored("mtty", U1), { mdev_type: "mtty-1", start: "manual", attrs: [] });
    assert.equal(await step("define-uuid-already-defined", ["define", "-u", U1, "-p", "mtty", "-t", "mtty-1"]), 1);
    assert.equal(await step("undefine-running", ["undefine", "-u", U1]), 0);
    assert.equal(await step("define-uuid-running-diff-type", ["define", "-u", U1, "-p", "mtty", "-t", "mtty-2"]), 0);
    assert.deepEqual(stored("mtty", U1), { mdev_type: "mtty-2", start: "manual", attrs: [] });
    assert.equal(await step("list-defined-diff-type-not-active", ["list", "-d", "-u", U1]), 0);
    assert.equal(await step("undefine-diff-type", ["undefine", "-u", U1]), 0);
  });

  it("list of running devices (list.rs)", async () => {
    assert.equal(await step("start-second", ["start", "-u", U3, "-p", "mtty", "-t", "mtty-2"]), 0);
    assert.equal(await step("define-second", ["define", "-u", U3, "-a"]), 0);
    // 4 ports: mtty-1 (1) and mtty-2 (2) run, so another mtty-2 does not fit.
    assert.equal(await step("start-no-instances", ["start", "-u", U2]), 1);
    assert.equal(await step("list-active", ["list"]), 0);
    assert.equal(await step("list-active-verbose", ["list", "-v"]), 0);
    assert.equal(await step("list-active-parent", ["list", "-p", "mtty"]), 0);
    assert.equal(await step("list-active-uuid", ["list", "-u", U3]), 0);
    assert.equal(await step("list-active-uuid-parent-json", ["list", "-u", U3, "-p", "mtty", "--dumpjson"]), 0);
    assert.equal(await step("list-active-json", ["list", "--dumpjson"]), 0);
    assert.equal(await step("list-defined-active", ["list", "-d"]), 0);
    assert.equal(await step("list-no-match-uuid", ["list", "-u", U2]), 0);
    assert.equal(await step("list-no-match-parent", ["list", "-p", "nonexistent"]), 0);
  });

  it("modify --live (modify.rs: live-*, defined-only)", async () => {
    writeFileSync(join(base, "live.json"), JSON.stringify({ mdev_type: "mtty-2", start: "manual", attrs: [] }));
    writeFileSync(join(base, "other-type.json"), JSON.stringify({ mdev_type: "mtty-1", start: "manual", attrs: [] }));
    assert.equal(await step("modify-live-without-jsonfile", ["modify", "-u", U3, "--live", "--auto"]), 2);
    assert.equal(await step("modify-live-type", ["modify", "-u", U3, "--live", "--jsonfile", "other-type.json"]), 1);
    assert.equal(await step("modify-live", ["modify", "-u", U3, "--live", "--jsonfile", "live.json"]), 0);
    assert.deepEqual(stored("mtty", U3), { mdev_type: "mtty-2", start: "auto", attrs: [] }, "--live alone");
    assert.equal(
      await step("modify-live-defined", ["modify", "-u", U3, "--live", "--defined", "--jsonfile", "live.json"]),
      0,
    );
    assert.deepEqual(stored("mtty", U3), { mdev_type: "mtty-2", start: "manual", attrs: [] }, "--live --defined");
    assert.equal(await step("modify-live-not-running", ["modify", "-u", U2, "--live", "--jsonfile", "live.json"]), 1);
    assert.equal(await step("modify-defined-only", ["modify", "-u", U3, "--auto"]), 0);
    assert.equal(await step("list-after-modify", ["list"]), 0);
  });

  it("start-parent-mdevs (what udev runs): starts the auto definitions that are not running", async () => {
    assert.equal(await step("stop-for-autostart", ["stop", "-u", U3]), 0);
    assert.equal(await step("start-parent-mdevs", ["start-parent-mdevs", "mtty"]), 0);
    assert.equal(await step("list-after-autostart", ["list"]), 0);
    assert.equal(await step("start-parent-mdevs-again", ["start-parent-mdevs", "mtty"]), 0);
    assert.equal(await step("start-parent-mdevs-unknown", ["start-parent-mdevs", "0000:00:09.0"]), 0);
  });
});
