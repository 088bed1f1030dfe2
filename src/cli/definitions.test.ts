/** The definition store: atomic writes, tolerant loading (every skipped file named), and load(save(x)) = x. */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { isKernelError } from "../core/index.ts";
import { DefinitionStore } from "./definitions.ts";
import type { MdevDefinition } from "./mdevctl-json.ts";

const U1 = "4a0a190f-dcf3-4def-9342-c48768f0c940";
const U2 = "9f579710-6ffc-4201-987a-4ffa0fb1f3a5";
const tmpRoots: string[] = [];

function freshDir(): string {
  const d = mkdtempSync(join(tmpdir(), "vgpu-defs-"));
  tmpRoots.push(d);
  return join(d, "mdevctl.d");
}

after(() => {
  for (const d of tmpRoots) rmSync(d, { recursive: true, force: true });
});

const def = (mdevType: string, start: "auto" | "manual" = "manual", attrs: MdevDefinition["attrs"] = []) => ({
  mdevType,
  start,
  attrs,
});

describe("DefinitionStore", () => {
  it("treats a missing folder as an empty store (mdevctl #56)", () => {
    const store = new DefinitionStore({ dir: freshDir() });
    assert.deepEqual(store.load(), { definitions: [], warnings: [] });
  });

  it("writes mdevctl's file at <parent>/<uuid> and reads it back", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    const path = store.save("mtty", U1.toUpperCase(), def("mtty-1", "auto", [{ name: "a", value: "1" }]));
    assert.equal(path, join(dir, "mtty", U1));
    assert.equal(
      readFileSync(path, "utf8"),
      '{\n  "mdev_type": "mtty-1",\n  "start": "auto",\n  "attrs": [\n    {\n      "a": "1"\n    }\n  ]\n}',
    );
    const r = store.load();
    assert.deepEqual(r.warnings, []);
    assert.deepEqual(r.definitions, [
      { parent: "mtty", uuid: U1, definition: def("mtty-1", "auto", [{ name: "a", value: "1" }]), file: path },
    ]);
  });

  it("refuses parent names that would leave the folder", () => {
    const store = new DefinitionStore({ dir: freshDir() });
    for (const bad of ["..", "../x", ".hidden", "", "a/b"]) {
      assert.throws(
        () => store.save(bad, U1, def("t")),
        (e: unknown) => isKernelError(e) && e.code === "EINVAL",
      );
    }
  });

  it("keeps the old file when a crash comes between write and rename, and leaves no temporary", () => {
    const dir = freshDir();
    let crash = false;
    const store = new DefinitionStore({
      dir,
      beforeRename: (temp) => {
        assert.ok(existsSync(temp), "the new contents are on disk before the rename");
        if (crash) throw new Error("simulated crash");
      },
    });
    const path = store.save("mtty", U1, def("mtty-1"));
    const before = readFileSync(path, "utf8");
    crash = true;
    assert.throws(
      () => store.save("mtty", U1, def("mtty-2", "auto")),
      (e: unknown) => isKernelError(e) && e.code === "EIO" && e.message.includes("previous file is unchanged"),
    );
    assert.equal(readFileSync(path, "utf8"), before);
    assert.deepEqual(readdirSync(join(dir, "mtty")), [U1]);
    assert.equal(store.load().definitions[0]!.definition.mdevType, "mtty-1");
  });

  it("ignores a temporary left by a process that died mid-write, and removes it on request", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    store.save("mtty", U1, def("mtty-1"));
    const temp = join(dir, "mtty", `.${U1}.tmp-4242-0`);
    writeFileSync(temp, '{"mdev_type": "mtty-2", "st');
    const r = store.load();
    assert.equal(r.definitions.length, 1);
    assert.equal(r.definitions[0]!.definition.mdevType, "mtty-1");
    assert.deepEqual(r.warnings, [
      `ignoring ${temp}: temporary file left by an interrupted write (the definition it was replacing is intact)`,
    ]);
    assert.deepEqual(store.removeTemporaries(), [temp]);
    assert.deepEqual(store.load().warnings, []);
  });

  it("skips everything that is not a definition, naming the file and the reason", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    store.save("p", U1, def("t"));
    writeFileSync(join(dir, "p", "notes.txt"), "hello");
    writeFileSync(join(dir, "p", `${U2}~`), "{}");
    writeFileSync(join(dir, "p", `${U2}.swp`), "x");
    mkdirSync(join(dir, "p", "sub"));
    writeFileSync(join(dir, "stray-file"), "x");
    mkdirSync(join(dir, "scripts.d", "callouts"), { recursive: true });
    mkdirSync(join(dir, "q"));
    writeFileSync(join(dir, "q", U1), '{\n  "mdev_type": "t",\n  "start": "manual",\n  "attrs": [{"a": 5}]\n}');
    writeFileSync(join(dir, "q", U2), "{ not json");
    const r = store.load();
    assert.deepEqual(
      r.definitions.map((d) => `${d.parent}/${d.uuid}`),
      [`p/${U1}`],
    );
    assert.deepEqual(r.warnings, [
      `ignoring ${join(dir, "p", `${U2}.swp`)}: editor backup, not a definition`,
      `ignoring ${join(dir, "p", `${U2}~`)}: editor backup, not a definition`,
      `ignoring ${join(dir, "p", "notes.txt")}: not a definition (the file name is not a UUID)`,
      `ignoring folder ${join(dir, "p", "sub")}: a parent folder holds only definition files`,
      `ignoring definition ${join(dir, "q", U1)}: attrs[0].a: must be a string`,
      `ignoring definition ${join(dir, "q", U2)}: not valid JSON (line 1 column 3)`,
      `ignoring ${join(dir, "stray-file")}: not a parent folder (definitions live in ${dir}/<parent>/<uuid>)`,
    ]);
  });

  it("reads upper-case file names as their UUID, and keeps the canonical one of two spellings", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    mkdirSync(join(dir, "p"), { recursive: true });
    writeFileSync(join(dir, "p", U2.toUpperCase()), '{"mdev_type":"upper","start":"manual"}');
    assert.deepEqual(
      store.load().definitions.map((d) => [d.uuid, d.definition.mdevType]),
      [[U2, "upper"]],
    );
    writeFileSync(join(dir, "p", U2), '{"mdev_type":"lower","start":"manual"}');
    const r = store.load();
    assert.deepEqual(
      r.definitions.map((d) => [d.uuid, d.definition.mdevType]),
      [[U2, "lower"]],
    );
    assert.deepEqual(r.warnings, [
      `ignoring ${join(dir, "p", U2.toUpperCase())}: duplicate of ${join(dir, "p", U2)} (the same UUID in another letter case)`,
    ]);
    // Saving over a non-canonical file replaces it with the canonical name.
    rmSync(join(dir, "p", U2));
    const loaded = store.load().definitions[0]!;
    store.save("p", U2, def("renamed"), loaded.file);
    assert.deepEqual(readdirSync(join(dir, "p")), [U2]);
  });

  it("removes a definition file", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    const path = store.save("p", U1, def("t"));
    store.remove(path);
    assert.deepEqual(store.load().definitions, []);
    assert.throws(
      () => store.remove(path),
      (e: unknown) => isKernelError(e) && e.code === "ENOENT",
    );
  });

  it("load(save(x)) = x for every valid definition", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    const name = fc.string({ minLength: 1, maxLength: 12 }).filter((s) => !s.includes("/") && s !== "." && s !== "..");
    const parent = fc.stringMatching(/^[a-z0-9][a-z0-9:._-]{0,15}$/);
    const definition = fc.record({
      mdevType: fc.string({ minLength: 1, maxLength: 20 }),
      start: fc.constantFrom("auto" as const, "manual" as const),
      attrs: fc.array(fc.record({ name, value: fc.string({ maxLength: 20 }) }), { maxLength: 5 }),
    });
    fc.assert(
      fc.property(parent, fc.uuid(), definition, (p, uuid, d) => {
        rmSync(dir, { recursive: true, force: true });
        store.save(p, uuid, d);
        const r = store.load();
        assert.deepEqual(r.warnings, []);
        assert.equal(r.definitions.length, 1);
        const got = r.definitions[0]!;
        assert.equal(got.parent, p);
        assert.equal(got.uuid, uuid.toLowerCase());
        // fast-check's records have no prototype; compare plain copies.
        assert.deepEqual(got.definition, {
          mdevType: d.mdevType,
          start: d.start,
          attrs: d.attrs.map((a) => ({ name: a.name, value: a.value })),
        });
      }),
      { numRuns: 60 },
    );
  });
});
