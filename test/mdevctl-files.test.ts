/**
 * The files-only commands without a host, as mdevctl works on /etc/mdevctl.d: `list -d`, `define`, `undefine` and
 * `modify` read and write `<root>/mdevctl.d` directly, say when the checks against a host were skipped, and the
 * commands that need a host name the `--root` they looked in. The cases express mdevctl's own tests that need no
 * running device (src/tests/define.rs, modify.rs, list.rs, mod.rs's load-json, invalid files) with our fixtures,
 * as one session of golden transcripts under test/golden/mdevctl/files/ (UPDATE_GOLDEN=1 rewrites them).
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { goldenStep, runVgpu } from "./test-support/cli-golden.ts";

const GOLDEN = new URL("./golden/mdevctl/files/", import.meta.url);
const GPU = "0000:00:02.0";
const AP = "0000:00:03.0";
const U1 = "c07ab7b2-8aa2-427a-91c6-ffc949bb77f9";
const U2 = "783e6dbb-ea0e-411f-94e2-717eaad438bf";
const U3 = "5269fe7a-18d1-48ad-88e1-3fda4176f536";
const U4 = "b6f7e33f-ea28-4f9d-8c42-797ff0ec2888";

let base = "";
let root = "";

function defsDir(): string {
  return join(root, "mdevctl.d");
}

async function step(name: string, argv: readonly string[]): Promise<{ code: number; stdout: string }> {
  return await goldenStep(GOLDEN, name, argv, root, base);
}

function json(name: string, value: unknown): void {
  writeFileSync(join(base, name), typeof value === "string" ? value : JSON.stringify(value, null, 2));
}

function stored(parent: string, uuid: string): unknown {
  return JSON.parse(readFileSync(join(defsDir(), parent, uuid), "utf8"));
}

before(() => {
  base = mkdtempSync(join(tmpdir(), "vgpu-files-"));
  root = join(base, "root");
  mkdirSync(root);
});

after(() => {
  if (base) rmSync(base, { recursive: true, force: true });
});

describe("mdevctl's files without a host", () => {
  it("list -d of nothing, and of a missing mdevctl.d, is empty", async () => {
    assert.equal(existsSync(defsDir()), false);
    await step("list-none", ["list", "-d"]);
    await step("list-none-json", ["list", "-d", "--dumpjson"]);
  });

  it("define writes the file, without host checks, and says so", async () => {
    const r = await step("define-uuid-auto", ["define", "-u", U1, "-p", GPU, "-t", "i915-GVTg_V5_4", "-a"]);
    assert.equal(r.code, 0);
    assert.deepEqual(stored(GPU, U1), { mdev_type: "i915-GVTg_V5_4", start: "auto", attrs: [] });
    await step("define-uuid-manual-forced", ["define", "-u", U2, "-p", GPU, "-t", "i915-GVTg_V5_8", "-f"]);
    await step("define-already-defined", ["define", "-u", U1, "-p", GPU, "-t", "i915-GVTg_V5_4"]);
    await step("define-no-parent", ["define", "-u", U3, "-t", "i915-GVTg_V5_4"]);
    await step("define-no-uuid-no-type", ["define", "-p", GPU]);
    const generated = await runVgpu(["define", "-p", GPU, "-t", "i915-GVTg_V5_2"], root, base);
    assert.equal(generated.code, 0, "define without -u generates a UUID");
    const uuid = generated.stdout.trim();
    assert.match(uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.deepEqual(stored(GPU, uuid), { mdev_type: "i915-GVTg_V5_2", start: "manual", attrs: [] });
    rmSync(join(defsDir(), GPU, uuid));
  });

  it("define --jsonfile reads mdevctl's JSON; malformed attributes are refused with the JSON path", async () => {
    json("ap.json", {
      mdev_type: "vfio_ap-passthrough",
      start: "manual",
      attrs: [{ assign_adapter: "5" }, { assign_adapter: "6" }, { assign_domain: "0xab" }, { assign_domain: "4" }],
    });
    await step("define-jsonfile", ["define", "-u", U3, "-p", AP, "--jsonfile", "ap.json"]);
    await step("define-jsonfile-exists", ["define", "-u", U3, "-p", AP, "--jsonfile", "ap.json"]);
    await step("define-jsonfile-with-type", ["define", "-u", U4, "-p", AP, "-t", "x", "--jsonfile", "ap.json"]);
    json("two-fields.json", { mdev_type: "t", start: "manual", attrs: [{ a: "1", b: "2" }] });
    await step("define-jsonfile-attr-two-fields", ["define", "-u", U4, "-p", AP, "--jsonfile", "two-fields.json"]);
    json("strings.json", { mdev_type: "t", start: "manual", attrs: ["a", "b"] });
    await step("define-jsonfile-attr-strings", ["define", "-u", U4, "-p", AP, "--jsonfile", "strings.json"]);
    json("no-array.json", { mdev_type: "t", start: "manual", attrs: { a: "1" } });
    await step("define-jsonfile-attrs-no-array", ["define", "-u", U4, "-p", AP, "--jsonfile", "no-array.json"]);
    json("broken.json", '{\n  "mdev_type": "t",\n  "start": "manual",\n  "attrs": [\n}');
    await step("define-jsonfile-bad-json", ["define", "-u", U4, "-p", AP, "--jsonfile", "broken.json"]);
    assert.equal(existsSync(join(defsDir(), AP, U4)), false, "nothing written for a refused file");
  });

  it("modify edits the file: attributes by index, delete with and without index, start mode, type", async () => {
    await step("modify-addattr", ["modify", "-u", U1, "--addattr", "vgpu_id", "--value", "1"]);
    await step("modify-addattr-index", ["modify", "-u", U1, "--addattr", "weight", "--value", "4", "-i", "0"]);
    await step("modify-delattr-index", ["modify", "-u", U1, "--delattr", "-i", "1"]);
    await step("modify-delattr-noindex", ["modify", "-u", U1, "--delattr"]);
    assert.deepEqual(stored(GPU, U1), { mdev_type: "i915-GVTg_V5_4", start: "auto", attrs: [] });
    await step("modify-delattr-none", ["modify", "-u", U1, "--delattr"]);
    await step("modify-delattr-none-index", ["modify", "-u", U1, "--delattr", "-i", "0"]);
    await step("modify-manual", ["modify", "-u", U1, "-m"]);
    await step("modify-auto-manual", ["modify", "-u", U1, "-a", "-m"]);
    await step("modify-type", ["modify", "-u", U1, "-t", "i915-GVTg_V5_8"]);
    await step("modify-not-defined", ["modify", "-u", U4, "-a"]);
    json("modified.json", { mdev_type: "i915-GVTg_V5_2", start: "auto", attrs: [{ weight: "8" }] });
    await step("modify-jsonfile", ["modify", "-u", U1, "-p", GPU, "--jsonfile", "modified.json"]);
    await step("modify-live-needs-host", ["modify", "-u", U1, "--live", "--jsonfile", "modified.json"]);
  });

  it("a UUID under several parents needs -p; undefine removes from every parent unless -p", async () => {
    await step("define-second-parent", ["define", "-u", U1, "-p", AP, "-t", "vfio_ap-passthrough"]);
    await step("modify-multiple-noparent", ["modify", "-u", U1, "-a"]);
    await step("modify-multiple-parent", ["modify", "-u", U1, "-p", AP, "-a"]);
    await step("list-defined", ["list", "-d"]);
    await step("list-defined-verbose", ["list", "-d", "-v"]);
    await step("list-defined-parent", ["list", "-d", "-p", AP]);
    await step("list-defined-uuid-json", ["list", "-d", "-u", U3, "--dumpjson"]);
    await step("list-defined-uuid-parent", ["list", "-d", "-u", U1, "-p", GPU, "-v"]);
    await step("list-no-match-uuid", ["list", "-d", "-u", U4]);
    await step("list-no-match-parent", ["list", "-d", "-p", "nonexistent"]);
    await step("undefine-parent", ["undefine", "-u", U1, "-p", AP]);
    await step("undefine-nonexistent", ["undefine", "-u", U4]);
    await step("define-third-parent", ["define", "-u", U2, "-p", AP, "-t", "vfio_ap-passthrough"]);
    await step("undefine-multiple-noparent", ["undefine", "-u", U2]);
    assert.equal(existsSync(join(defsDir(), GPU, U2)) || existsSync(join(defsDir(), AP, U2)), false);
  });

  it("invalid files are skipped with a warning naming each; the rest still lists", async () => {
    mkdirSync(join(defsDir(), AP), { recursive: true });
    writeFileSync(join(defsDir(), AP, "invalid-uuid-value"), '{"mdev_type": "t", "start": "manual"}');
    writeFileSync(join(defsDir(), AP, U4), '{"mdev_type": "t", "start": "manual", "attrs": [{"a": 1}]}');
    await step("list-invalid-files", ["list", "-d", "-p", AP]);
  });

  it("what needs the host says so, with the --root it used", async () => {
    await step("start-needs-host", ["start", "-u", U1]);
    await step("stop-needs-host", ["stop", "-u", U1]);
    await step("types-needs-host", ["types"]);
    await step("list-active-needs-host", ["list"]);
    await step("start-parent-mdevs-needs-host", ["start-parent-mdevs", GPU]);
  });
});
