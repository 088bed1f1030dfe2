/**
 * Scenario files: malformed input is refused with the JSON path of the offending field and what was expected; the
 * example files parse; the published JSON schema (schema/scenario.schema.json) is exactly what the zod schema
 * generates (regenerate with UPDATE_SCHEMA=1).
 */
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KernelError } from "../src/core/index.ts";
import { loadScenarioFile, parseScenario, scenarioJsonSchema } from "../src/scenario/index.ts";

const SCHEMA = new URL("../schema/scenario.schema.json", import.meta.url);
const SCENARIOS = new URL("../scenarios/", import.meta.url);

const base = () => ({
  name: "t",
  host: { memory: "4 GiB", gpus: [{ name: "gpu0" }] },
  vms: [{ name: "vm1", memory: "256 MiB", devices: [{ kind: "vgpu", gpu: "gpu0", type: "GVTg_V5_8" }] }],
  steps: [{ action: "workload", vm: "vm1", kind: "fill", count: 1, width: 16, height: 16 }],
});

function refused(value: unknown, re: RegExp): void {
  assert.throws(
    () => parseScenario(value, "t.json"),
    (e: unknown) => {
      assert.ok(e instanceof KernelError, String(e));
      assert.equal(e.code, "EINVAL");
      assert.match(e.message, re);
      return true;
    },
  );
}

describe("scenario files: malformed input names the JSON path and what was expected", () => {
  it("accepts a good file and fills in the defaults", () => {
    const s = parseScenario(base(), "t.json");
    assert.equal(s.seed, 1);
    assert.equal(s.host.iommu, true);
    assert.equal(s.host.gpus[0]!.bdf, "0000:00:02.0");
    assert.equal(s.host.gpus[0]!.driver, "i915");
    assert.equal(s.vms[0]!.memoryBytes, 256 * 1024 * 1024);
    assert.equal(s.vms[0]!.memlockBytes, 256 * 1024 * 1024 + 1024 ** 3, "libvirt's rule: memory + 1 GiB");
    assert.equal(s.steps[0]!.atNs, undefined);
  });

  it("shape: types, ranges, unknown members, enumerations", () => {
    const t = base();
    refused([], /^invalid scenario t\.json: \(top level\): must be a JSON object$/);
    refused({ ...t, name: undefined }, /: name: is required/);
    refused({ ...t, colour: 1 }, /: \(top level\): unknown member\(s\) "colour"$/);
    refused(
      { ...t, host: { memory: "lots" } },
      /: host\.memory: must be a size from 64 MiB to 1024 TiB.*\(got "lots"\)$/,
    );
    refused({ ...t, host: { memory: "16 GB" } }, /: host\.memory: must be a size .*\(got "16 GB"\)$/);
    refused(
      { ...t, host: { gpus: [{ name: "gpu0", aperture: "300 MiB" }] } },
      /: host\.gpus\[0\]\.aperture: must be a power of two from 128 MiB to 2 GiB \(got "300 MiB"\)$/,
    );
    refused({ ...t, vms: [{ ...t.vms[0], memory: 12345 }] }, /: vms\[0\]\.memory: must be a size/);
    refused(
      { ...t, vms: [{ ...t.vms[0], devices: [{ kind: "vgpu", gpu: "gpu0", type: "GVTg_V5_3" }] }] },
      /: vms\[0\]\.devices\[0\]\.type: must be a GVT-g vGPU type: GVTg_V5_8, GVTg_V5_4, GVTg_V5_2, GVTg_V5_1/,
    );
    refused(
      { ...t, vms: [{ ...t.vms[0], devices: [{ kind: "tpu" }] }] },
      /: vms\[0\]\.devices\[0\]\.kind: .*\(got "tpu"\)$/,
    );
    refused(
      { ...t, steps: [{ ...t.steps[0], count: -1 }] },
      /: steps\[0\]\.count: must be an integer from 1 to 100000 \(got -1\)$/,
    );
    refused({ ...t, steps: [{ ...t.steps[0], count: 2.5 }] }, /: steps\[0\]\.count: must be an integer/);
    refused({ ...t, steps: [{ ...t.steps[0], kind: "blur" }] }, /: steps\[0\]\.kind: must be "fill" or "copy"/);
    refused({ ...t, steps: [{ action: "dance" }] }, /: steps\[0\]\.action: .*\(got "dance"\)$/);
    refused({ ...t, steps: [{ ...t.steps[0], at: "soon" }] }, /: steps\[0\]\.at: must be a time such as "10 ms"/);
    refused(
      { ...t, steps: [{ action: "check", expect: { happiness: 1 } }] },
      /: steps\[0\]\.expect: unknown member\(s\) "happiness" \(metrics: alive, pinnedPages, /,
    );
    refused(
      { ...t, steps: [{ ...t.steps[0], expect: { errno: "ENOPE" } }] },
      /: steps\[0\]\.expect\.errno: must be an errno name such as "ENOMEM"/,
    );
  });

  it("cross-references: names, devices and their GPUs, time order", () => {
    const t = base();
    refused({ ...t, vms: [t.vms[0], t.vms[0]] }, /: vms\[1\]\.name: VM name "vm1" is used twice$/);
    refused(
      { ...t, vms: [{ ...t.vms[0], devices: [{ kind: "vgpu", gpu: "gpu9", type: "GVTg_V5_8" }] }] },
      /: vms\[0\]\.devices\[0\]\.gpu: no GPU "gpu9" in host\.gpus$/,
    );
    refused(
      { ...t, vms: [{ ...t.vms[0], devices: [{ kind: "gpu", gpu: "gpu0" }] }] },
      /: vms\[0\]\.devices\[0\]\.gpu: GPU "gpu0" is driven by i915: whole-device assignment needs driver "vfio-pci"$/,
    );
    refused(
      {
        ...t,
        host: { gpus: [{ name: "gpu0", driver: "vfio-pci" }] },
      },
      /: vms\[0\]\.devices\[0\]\.gpu: GPU "gpu0" is bound to vfio-pci: vGPUs need a GPU driven by i915$/,
    );
    refused(
      {
        ...t,
        host: { gpus: [{ name: "gpu0", driver: "vfio-pci" }] },
        vms: [
          { name: "a", memory: "64 MiB", devices: [{ kind: "gpu", gpu: "gpu0" }] },
          { name: "b", memory: "64 MiB", devices: [{ kind: "gpu", gpu: "gpu0" }] },
        ],
        steps: [],
      },
      /: vms\[1\]\.devices\[0\]\.gpu: GPU "gpu0" is already assigned to VM "a"$/,
    );
    refused(
      { ...t, host: { gpus: [{ name: "a" }, { name: "b", bdf: "0000:00:02.0" }] } },
      /: host\.gpus\[1\]\.bdf: PCI address 0000:00:02\.0 is also host\.gpus\[0\]'s$/,
    );
    refused({ ...t, steps: [{ ...t.steps[0], vm: "vm7" }] }, /: steps\[0\]\.vm: no VM "vm7" in vms$/);
    refused(
      { ...t, steps: [{ action: "attack", vm: "vm1", victim: "ghost" }] },
      /: steps\[0\]\.victim: no VM "ghost" in vms$/,
    );
    refused(
      {
        ...t,
        steps: [
          { action: "wait", at: "10 ms" },
          { action: "wait", at: "5 ms" },
        ],
      },
      /: steps\[1\]\.at: 5000000 ns is before the previous step's 10000000 ns: steps run in file order$/,
    );
  });

  it("a file: missing, not JSON, and malformed name the file", () => {
    const dir = mkdtempSync(join(tmpdir(), "vgpu-scn-"));
    try {
      const f = join(dir, "s.json");
      assert.throws(() => loadScenarioFile(f), /^KernelError: cannot read scenario .*s\.json: no such file$/);
      writeFileSync(f, "{ nope");
      assert.throws(() => loadScenarioFile(f), /invalid scenario .*s\.json: not valid JSON/);
      writeFileSync(f, JSON.stringify({ ...base(), seed: -2 }));
      assert.throws(
        () => loadScenarioFile(f),
        /invalid scenario .*s\.json: seed: must be an integer from 0 to 4294967295/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("scenario files: examples and the published JSON schema", () => {
  it("every example in scenarios/ parses", () => {
    const files = readdirSync(SCENARIOS).filter((f) => f.endsWith(".json"));
    assert.ok(files.includes("demo.json"));
    assert.ok(files.length >= 5);
    for (const f of files) {
      const s = loadScenarioFile(new URL(f, SCENARIOS).pathname);
      assert.equal(`${s.name}.json`, f, "a scenario is named after its file");
    }
  });

  it("schema/scenario.schema.json is what the zod schema generates", () => {
    // Compared as JSON values: the committed file is formatted by Biome like every other JSON file of the repository.
    const generated = scenarioJsonSchema();
    if (process.env.UPDATE_SCHEMA === "1") writeFileSync(SCHEMA, `${JSON.stringify(generated, null, 2)}\n`);
    assert.deepEqual(
      JSON.parse(readFileSync(SCHEMA, "utf8")),
      generated,
      "regenerate with UPDATE_SCHEMA=1 (then npx biome format --write schema)",
    );
    const schema = generated as { $schema: string; properties: Record<string, unknown>; required: string[] };
    assert.equal(schema.$schema, "https://json-schema.org/draft/2020-12/schema");
    assert.deepEqual(schema.required, ["name", "vms"]);
    assert.ok("steps" in schema.properties && "host" in schema.properties);
  });
});
