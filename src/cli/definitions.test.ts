/**
 * The definition store: atomic writes, tolerant loading (every skipped file named), the writer refusing whatever the
 * loader skips (parent names, attribute names, symbolic links), and load(save(x)) = x.
 */
import assert from "node:assert/strict";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { Errno, isKernelError, KernelError } from "../core/index.ts";
import { handleLine } from "./daemon.ts";
import { DefinitionStore, parentFolderProblem } from "./definitions.ts";
import { attrNameProblem, formatListJson, type MdevDefinition, parseDefinitionValue } from "./mdevctl-json.ts";
import { type MdevHostApi, MdevService } from "./service.ts";

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
    checkRoundTrip({ numRuns: 60 });
  });

  it("load(save(x)) = x with fast-check seed 750590024 (an attribute named __proto__ vanished from listings)", () => {
    checkRoundTrip({ numRuns: 60, seed: 750590024 });
  });

  it("keeps attributes named __proto__, constructor, toString and hasOwnProperty, in order", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    const attrs = ["__proto__", "constructor", "toString", "hasOwnProperty", "__proto__"].map((name, i) => ({
      name,
      value: `v${i}`,
    }));
    const path = store.save("__proto__", U1, def("constructor", "auto", attrs));
    assert.match(readFileSync(path, "utf8"), /"__proto__": "v0"/);
    const r = store.load();
    assert.deepEqual(r.warnings, []);
    assert.deepEqual(
      r.definitions.map((d) => [d.parent, d.uuid, d.definition]),
      [["__proto__", U1, def("constructor", "auto", attrs)]],
    );
    // And through the listing formats: a parent named __proto__ is a member, not a prototype.
    const listed = JSON.parse(
      formatListJson(
        r.definitions.map((d) => ({ ...d.definition, uuid: d.uuid, parent: d.parent, active: false, defined: true })),
        false,
      ),
    ) as Record<string, Record<string, { attrs: Record<string, string>[] }>[]>[];
    const parents = Object.entries(listed[0]!);
    assert.deepEqual(
      parents.map(([p]) => p),
      ["__proto__"],
    );
    assert.deepEqual(
      parents[0]![1][0]![U1]!.attrs.map((a) => Object.entries(a)[0]),
      attrs.map((a) => [a.name, a.value]),
    );
  });
});

/**
 * The original round-trip property, unchanged in its generators (so a seed replays the same cases), extended to
 * names the writer refuses: it must refuse exactly what the loader would skip.
 */
function checkRoundTrip(params: fc.Parameters<[string, string, MdevDefinition]>): void {
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
      if (parentFolderProblem(p) !== undefined) {
        assert.throws(() => store.save(p, uuid, d), errnoIs(Errno.EINVAL));
        assert.equal(existsSync(dir), false, "nothing written");
        return;
      }
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
    params,
  );
}

function errnoIs(errno: Errno, re?: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof KernelError, String(e));
    assert.equal(e.errno, errno, e.message);
    if (re) assert.match(e.message, re);
    return true;
  };
}

describe("DefinitionStore: the writer refuses what the loader skips", () => {
  it("refuses every parent name the loader skips (scripts.d, editor backups, hidden, too long), creating nothing", () => {
    const refused = [
      "scripts.d",
      "gpu~",
      "gpu.bak",
      "#gpu#",
      ".#gpu",
      "gpu.swp",
      "gpu.orig",
      ".hidden",
      "..",
      "",
      "a/b",
      "x".repeat(256),
      "\u00e9".repeat(128), // 128 characters, 256 bytes
    ];
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    for (const p of refused) {
      assert.throws(() => store.save(p, U1, def("t")), errnoIs(Errno.EINVAL, /^invalid parent name /), p);
      assert.equal(existsSync(join(dir, p)) && p !== "" && p !== "..", false, `${p} not created`);
    }
    // The same names made by hand are skipped by the loader: one rule for both.
    for (const p of refused.filter((x) => x !== "" && x !== ".." && !x.includes("/") && x.length <= 255)) {
      if (Buffer.byteLength(p) > 255) continue;
      mkdirSync(join(dir, p), { recursive: true });
      writeFileSync(join(dir, p, U1), '{"mdev_type": "t", "start": "manual"}');
    }
    assert.deepEqual(store.load().definitions, []);
  });

  it("saves a parent name exactly when the loader lists it (property over awkward names)", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    const awkward = fc.oneof(
      fc.constantFrom("scripts.d", "gpu~", "gpu.bak", "#gpu#", "__proto__", "constructor", "0000:00:02.0", "mtty"),
      fc.string({ minLength: 1, maxLength: 10, unit: fc.constantFrom("a", ".", "~", "#", "-", "/", "b", "_") }),
    );
    fc.assert(
      fc.property(awkward, (p) => {
        rmSync(dir, { recursive: true, force: true });
        let saved = true;
        try {
          store.save(p, U1, def("t"));
        } catch (e) {
          assert.ok(isKernelError(e) && e.errno === Errno.EINVAL, String(e));
          saved = false;
        }
        assert.equal(saved, parentFolderProblem(p) === undefined, p);
        const listed = store.load().definitions.map((d) => d.parent);
        assert.deepEqual(listed, saved ? [p] : [], p);
      }),
      { numRuns: 200 },
    );
  });

  it("refuses to write through a symbolic link (parent folder or definition file): ELOOP, the target untouched", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    const elsewhere = join(dir, "..", "elsewhere");
    mkdirSync(elsewhere);
    mkdirSync(dir);
    symlinkSync(elsewhere, join(dir, "gpu"));
    assert.throws(
      () => store.save("gpu", U1, def("t")),
      errnoIs(Errno.ELOOP, /^cannot write under .*\/gpu: it is a symbolic link, .*replace it with a real folder$/),
    );
    assert.deepEqual(readdirSync(elsewhere), []);
    assert.deepEqual(store.load(), {
      definitions: [],
      warnings: [`ignoring ${join(dir, "gpu")}: a symbolic link (a parent folder must be a real folder)`],
    });
    // A dangling link is refused the same way, and a file where the folder belongs is ENOTDIR.
    symlinkSync(join(dir, "nowhere"), join(dir, "dangling"));
    assert.throws(() => store.save("dangling", U1, def("t")), errnoIs(Errno.ELOOP));
    writeFileSync(join(dir, "file"), "x");
    assert.throws(() => store.save("file", U1, def("t")), errnoIs(Errno.ENOTDIR, /it is not a folder/));
    // A link where the definition file goes: the loader skips it, so the writer does not replace it silently.
    mkdirSync(join(dir, "p"));
    writeFileSync(join(elsewhere, "target"), "keep");
    symlinkSync(join(elsewhere, "target"), join(dir, "p", U1));
    assert.throws(() => store.save("p", U1, def("t")), errnoIs(Errno.ELOOP, /it is a symbolic link/));
    assert.equal(readFileSync(join(elsewhere, "target"), "utf8"), "keep");
    assert.deepEqual(readdirSync(join(dir, "p")), [U1], "no temporary left");
  });
});

describe("attribute names: one rule for definition files, the writer and the control socket", () => {
  const emptyHost: MdevHostApi = {
    parents: () => ["mtty"],
    types: () => [],
    devices: () => [],
    create: () => {},
    remove: () => {},
    attributeNames: () => [],
    writeAttribute: () => {},
  };
  const names = [
    "assign_adapter",
    "vendor/sample_mdev_dev",
    "__proto__",
    "constructor",
    "toString",
    "../../x",
    "..",
    ".",
    "a/../b",
    "/etc/passwd",
    "a//b",
    "a/",
    "",
    "a\u0000b",
    "x".repeat(256),
  ];

  it("accepts or refuses each name the same way in all three places", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    const svc = new MdevService({ host: emptyHost, store, root: dir });
    for (const [i, name] of names.entries()) {
      const valid = attrNameProblem(name) === undefined;
      // The file loader.
      const file = parseDefinitionValue({
        mdev_type: "t",
        start: "manual",
        attrs: [Object.fromEntries([[name, "v"]])],
      });
      assert.equal(file.ok, valid, `file: ${JSON.stringify(name)}`);
      if (file.ok) assert.deepEqual(file.definition.attrs, [{ name, value: "v" }]);
      // The writer.
      const uuid = `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`;
      let written = true;
      try {
        store.save("p", uuid, def("t", "manual", [{ name, value: "v" }]));
      } catch (e) {
        assert.ok(isKernelError(e) && e.errno === Errno.EINVAL, String(e));
        written = false;
      }
      assert.equal(written, valid, `writer: ${JSON.stringify(name)}`);
      // The control socket's decoder: a definition in `define`, and `modify --addattr`.
      const define = handleLine(
        svc,
        JSON.stringify({
          id: 1,
          method: "define",
          params: {
            uuid: `11111111-0000-4000-8000-${String(i).padStart(12, "0")}`,
            parent: "p",
            auto: false,
            force: true,
            definition: { mdevType: "t", start: "manual", attrs: [{ name, value: "v" }] },
          },
        }),
      );
      assert.equal(define.ok, valid, `define: ${JSON.stringify(name)} ${JSON.stringify(define)}`);
      if (!define.ok) {
        assert.equal(define.error.code, "EPROTO");
        assert.match(define.error.message, /^bad request: params\.definition\.attrs\[0\]\.name: attribute name /);
      }
      const modify = handleLine(
        svc,
        JSON.stringify({
          id: 2,
          method: "modify",
          params: {
            uuid,
            addattr: name,
            value: "w",
            delattr: false,
            auto: false,
            manual: false,
            live: false,
            defined: false,
            force: false,
          },
        }),
      );
      if (!valid) {
        assert.equal(modify.ok, false);
        if (!modify.ok) assert.match(modify.error.message, /^bad request: params\.addattr: attribute name /);
      }
    }
    // Everything written lists, with the names as given (and the attribute `modify --addattr` added).
    const listed = store.load();
    assert.deepEqual(listed.warnings, []);
    assert.deepEqual(
      listed.definitions
        .filter((d) => d.parent === "p" && d.uuid.startsWith("00000000"))
        .map((d) => d.definition.attrs),
      names
        .filter((n) => attrNameProblem(n) === undefined)
        .map((n) => [
          { name: n, value: "v" },
          { name: n, value: "w" },
        ]),
    );
  });

  it("modify --addattr __proto__ keeps the definition listed, as mdevctl does", () => {
    const dir = freshDir();
    const store = new DefinitionStore({ dir });
    const svc = new MdevService({ host: emptyHost, store, root: dir });
    const call = (line: object) => handleLine(svc, JSON.stringify(line));
    assert.ok(
      call({ id: 1, method: "define", params: { uuid: U1, parent: "mtty", type: "mtty-1", auto: false, force: true } })
        .ok,
    );
    for (const name of ["__proto__", "constructor", "toString"]) {
      const r = call({
        id: 2,
        method: "modify",
        params: {
          uuid: U1,
          addattr: name,
          value: "x",
          delattr: false,
          auto: false,
          manual: false,
          live: false,
          defined: false,
          force: false,
        },
      });
      assert.ok(r.ok, JSON.stringify(r));
    }
    const list = call({ id: 3, method: "list", params: { defined: true } });
    assert.ok(list.ok);
    assert.deepEqual(
      (list.result as { devices: { uuid: string; attrs: unknown }[] }).devices.map((d) => [d.uuid, d.attrs]),
      [
        [
          U1,
          [
            { name: "__proto__", value: "x" },
            { name: "constructor", value: "x" },
            { name: "toString", value: "x" },
          ],
        ],
      ],
    );
  });
});
