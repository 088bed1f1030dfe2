/** mdevctl's formats: UUID parsing, definition validation with JSON paths, and the listing shapes byte for byte. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  formatDefinitionFile,
  formatJsonPath,
  formatListJson,
  formatListText,
  formatTypesJson,
  formatTypesText,
  jsonErrorOffset,
  type ListedDevice,
  parseDefinitionText,
  parseUuid,
} from "./mdevctl-json.ts";

const U1 = "976d8cc2-4bfc-43b9-b9f9-f4af2de91ab9";
const U2 = "59e8b599-afdd-4766-a59e-415ef4f5a492";

function dev(over: Partial<ListedDevice> & Pick<ListedDevice, "uuid" | "parent">): ListedDevice {
  return { mdevType: "t", start: "manual", attrs: [], active: false, defined: false, ...over };
}

describe("parseUuid", () => {
  it("accepts mdevctl's forms in any case and canonicalises", () => {
    assert.equal(parseUuid(U1.toUpperCase()), U1);
    assert.equal(parseUuid(U1.replace(/-/g, "")), U1);
    assert.equal(parseUuid(`{${U1}}`), U1);
    assert.equal(parseUuid(`urn:uuid:${U1}`), U1);
  });
  it("refuses anything else", () => {
    for (const bad of ["", "x", `${U1}~`, `${U1} `, U1.slice(1), U1.replace(/-/g, "_")]) {
      assert.equal(parseUuid(bad), undefined, bad);
    }
  });
});

describe("definition files", () => {
  it("writes mdevctl's pretty JSON with keys in mdevctl's order and no trailing newline", () => {
    const text = formatDefinitionFile({
      mdevType: "i915-GVTg_V5_4",
      start: "auto",
      attrs: [
        { name: "a", value: "1" },
        { name: "a", value: "2" },
      ],
    });
    assert.equal(
      text,
      '{\n  "mdev_type": "i915-GVTg_V5_4",\n  "start": "auto",\n  "attrs": [\n    {\n      "a": "1"\n    },\n' +
        '    {\n      "a": "2"\n    }\n  ]\n}',
    );
    assert.equal(
      formatDefinitionFile({ mdevType: "x", start: "manual", attrs: [] }),
      '{\n  "mdev_type": "x",\n  "start": "manual",\n  "attrs": []\n}',
    );
  });

  it("reads attrs in order, repeated names included; null or missing attrs mean none", () => {
    const r = parseDefinitionText('{"mdev_type":"t","start":"manual","attrs":[{"b":"1"},{"a":"2"},{"b":"3"}]}');
    assert.ok(r.ok);
    assert.deepEqual(r.definition.attrs, [
      { name: "b", value: "1" },
      { name: "a", value: "2" },
      { name: "b", value: "3" },
    ]);
    const n = parseDefinitionText('{"mdev_type":"t","start":"auto","attrs":null}');
    assert.ok(n.ok && n.definition.attrs.length === 0);
    const m = parseDefinitionText('{"mdev_type":"t","start":"auto","extra":1}');
    assert.ok(m.ok && m.definition.attrs.length === 0);
  });

  it("names the JSON path of each problem", () => {
    const cases: [string, string][] = [
      ["{", "not valid JSON"],
      ["", "not valid JSON (the file is empty)"],
      ["[]", "(top level): must be a JSON object"],
      ['{"start":"auto"}', "mdev_type: is required"],
      ['{"mdev_type":3,"start":"auto"}', "mdev_type: must be a string"],
      ['{"mdev_type":"t","start":"sometimes"}', 'start: must be "auto" or "manual"'],
      ['{"mdev_type":"t","start":"auto","attrs":{}}', "attrs: must be an array"],
      ['{"mdev_type":"t","start":"auto","attrs":[{"a":"1"},{"b":2}]}', "attrs[1].b: must be a string"],
      ['{"mdev_type":"t","start":"auto","attrs":[{"a":"1","b":"2"}]}', "attrs[0]: must have exactly one member"],
      ['{"mdev_type":"t","start":"auto","attrs":["a"]}', "attrs[0]: must be an object"],
      [
        '{"mdev_type":"t","start":"auto","attrs":[{"../../x":"1"}]}',
        `attrs[0]: attribute name "../../x" has a '..' path component (it must stay inside the device's folder)`,
      ],
      ['{"mdev_type":"t","start":"auto","attrs":[{"a//b":"1"}]}', 'attrs[0]: attribute name "a//b" has an empty'],
      ['{"mdev_type":"t","start":"auto","attrs":[{"/x":"1"}]}', "attrs[0]: attribute name \"/x\" starts with '/'"],
      ['{"mdev_type":"","start":"auto"}', "mdev_type: must not be empty"],
    ];
    for (const [text, want] of cases) {
      const r = parseDefinitionText(text);
      assert.ok(!r.ok, text);
      assert.ok(r.problem.startsWith(want), `${text}: got "${r.problem}", want "${want}..."`);
    }
  });

  it("locates JSON syntax errors by line and column", () => {
    const r = parseDefinitionText('{\n  "mdev_type": "t",\n  "start": auto\n}');
    assert.ok(!r.ok);
    assert.match(r.problem, /^not valid JSON \(line 3 column 12\)$/);
  });

  it("finds the error offset exactly where JSON.parse fails, and none where it succeeds", () => {
    assert.equal(jsonErrorOffset('{"a": [1, 2,]}'), 12);
    assert.equal(jsonErrorOffset('{"a": "x\\q"}'), 9);
    assert.equal(jsonErrorOffset('{"a": 1} x'), 9);
    assert.equal(jsonErrorOffset('{"a": 1'), 7);
    fc.assert(
      fc.property(fc.jsonValue(), fc.nat(), fc.string({ maxLength: 2 }), (v, cut, junk) => {
        const text = JSON.stringify(v, null, cut % 3);
        assert.equal(jsonErrorOffset(text), -1);
        const broken = text.slice(0, cut % (text.length + 1)) + junk;
        let parses = true;
        try {
          JSON.parse(broken);
        } catch {
          parses = false;
        }
        assert.equal(jsonErrorOffset(broken) === -1, parses, broken);
      }),
      { numRuns: 300 },
    );
  });

  it("formats paths like a JavaScript accessor", () => {
    assert.equal(formatJsonPath(["attrs", 2, "x"]), "attrs[2].x");
    assert.equal(formatJsonPath([]), "(top level)");
  });
});

describe("listings", () => {
  const devices = [
    dev({ uuid: U1, parent: "0000:00:03.0", mdevType: "t2", start: "auto", defined: true, active: true }),
    dev({ uuid: U2, parent: "0000:00:02.0", mdevType: "t1", attrs: [{ name: "k", value: "v" }] }),
    dev({ uuid: U1, parent: "0000:00:02.0", mdevType: "t1" }),
  ];

  it("prints text lines sorted by parent then UUID, with mdevctl's suffixes", () => {
    assert.equal(
      formatListText(devices, false, false),
      `${U2} 0000:00:02.0 t1 manual\n${U1} 0000:00:02.0 t1 manual\n${U1} 0000:00:03.0 t2 auto (defined)\n`,
    );
    assert.equal(
      formatListText(devices, true, true),
      `${U2} 0000:00:02.0 t1 manual\n  Attrs:\n    @{0}: {"k":"v"}\n${U1} 0000:00:02.0 t1 manual\n` +
        `${U1} 0000:00:03.0 t2 auto (active)\n`,
    );
  });

  it("prints the JSON hierarchy, or one bare definition for -u with a single match", () => {
    const json = JSON.parse(formatListJson(devices, false)) as Record<string, Record<string, unknown>[]>[];
    assert.equal(json.length, 1);
    assert.deepEqual(Object.keys(json[0]!), ["0000:00:02.0", "0000:00:03.0"]);
    assert.deepEqual(
      json[0]!["0000:00:02.0"]!.map((o) => Object.keys(o)[0]),
      [U2, U1],
    );
    assert.equal(formatListJson([], false), "[]");
    assert.equal(formatListJson([], true), "[]");
    assert.equal(formatListJson([devices[0]!], true), '{\n  "mdev_type": "t2",\n  "start": "auto",\n  "attrs": []\n}');
  });

  it("keeps names such as __proto__ and constructor as members in every JSON it prints", () => {
    const attrs = [
      { name: "__proto__", value: "1" },
      { name: "constructor", value: "2" },
    ];
    const file = formatDefinitionFile({ mdevType: "toString", start: "auto", attrs });
    const back = parseDefinitionText(file);
    assert.ok(back.ok);
    assert.deepEqual(back.definition.attrs, attrs);
    const list = formatListJson([dev({ uuid: U1, parent: "__proto__", attrs })], false);
    assert.match(list, /^\[\n {2}\{\n {4}"__proto__": \[\n {6}\{\n {8}"976d8cc2/);
    assert.match(list, /"__proto__": "1"/);
    const types = formatTypesJson([
      {
        parent: "__proto__",
        types: [{ type: "__proto__", availableInstances: 1, deviceApi: "vfio-pci", name: "", description: "" }],
      },
    ]);
    assert.deepEqual(JSON.parse(types), [
      Object.fromEntries([
        ["__proto__", [Object.fromEntries([["__proto__", { available_instances: 1, device_api: "vfio-pci" }]])]],
      ]),
    ]);
    assert.match(types, /"__proto__": \[\n\s+\{\n\s+"__proto__": \{/);
  });

  it("prints types as mdevctl does, omitting an empty name or description", () => {
    const parents = [
      {
        parent: "p",
        types: [
          { type: "b", availableInstances: 0, deviceApi: "vfio-pci", name: "B", description: "", reason: "why" },
          { type: "a", availableInstances: 5, deviceApi: "vfio-pci", name: "", description: "line1\nline2\n" },
        ],
      },
      { parent: "empty", types: [] },
    ];
    assert.equal(
      formatTypesText(parents),
      "empty\np\n  a\n    Available instances: 5\n    Device API: vfio-pci\n    Description: line1, line2\n" +
        "  b\n    Available instances: 0 (why)\n    Device API: vfio-pci\n    Name: B\n",
    );
    assert.equal(
      formatTypesJson(parents),
      '[\n  {\n    "empty": [],\n    "p": [\n      {\n        "a": {\n          "available_instances": 5,\n' +
        '          "device_api": "vfio-pci",\n          "description": "line1, line2"\n        }\n      },\n' +
        '      {\n        "b": {\n          "available_instances": 0,\n          "device_api": "vfio-pci",\n' +
        '          "name": "B"\n        }\n      }\n    ]\n  }\n]',
    );
    assert.equal(formatTypesJson([]), "[]");
    assert.equal(formatTypesText([]), "");
  });
});
