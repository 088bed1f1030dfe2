/** System assembly from a config: defaults, validation errors with JSON paths, the parent-kind table. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { KernelError } from "../core/index.ts";
import { GiB } from "../host/index.ts";
import { createSystem, loadSystemConfigFile, PARENT_KINDS, parseSystemConfig } from "./system.ts";

function configError(value: unknown, re: RegExp): void {
  assert.throws(
    () => parseSystemConfig(value),
    (e: unknown) => e instanceof KernelError && e.code === "EINVAL" && re.test(e.message),
  );
}

describe("system config", () => {
  it("fills in the embedded host: 16 GiB, IOMMU on, one mtty parent", () => {
    assert.deepEqual(parseSystemConfig({}), {
      memoryBytes: 16 * GiB,
      iommu: true,
      seed: 1,
      parents: [{ kind: "mtty" }],
      assigned: [],
    });
    assert.equal(parseSystemConfig({ memory: "512 MiB" }).memoryBytes, 512 * 1024 * 1024);
    assert.equal(parseSystemConfig({ memory: "2GiB" }).memoryBytes, 2 * GiB);
    assert.equal(parseSystemConfig({ memory: 4 * GiB }).memoryBytes, 4 * GiB);
    assert.deepEqual(parseSystemConfig({ parents: [] }).parents, []);
  });

  it("names the JSON path of each problem", () => {
    configError([], /^invalid host config: \(top level\): must be a JSON object$/);
    configError({ memory: "lots" }, /^invalid host config: memory: must be a size from 64 MiB/);
    configError({ memory: "1 MiB" }, /^invalid host config: memory: must be a size from 64 MiB/);
    // The same sentence as a scenario file's for the same mistake.
    configError(
      { memory: "1 MiB" },
      /memory: must be a size from 64 MiB to 1024 TiB, e\.g\. "1 GiB" or a number of bytes \(got "1 MiB"\)$/,
    );
    configError({ iommu: "on" }, /^invalid host config: iommu: must be true or false$/);
    configError({ gpus: 1 }, /^invalid host config: \(top level\): unknown member\(s\) gpus$/);
    configError(
      { parents: [{ kind: "gpu" }] },
      /^invalid host config: parents\[0\]\.kind: unknown parent kind 'gpu' \(known: mtty, gvt\)$/,
    );
    configError(
      { parents: [{ kind: "mtty" }, { kind: "mtty", ports: 2.5 }] },
      /^invalid host config: parents\[1\]\.ports: must be an integer/,
    );
    configError({ parents: [{ kind: "mtty", colour: "red" }] }, /^invalid host config: parents\[0\]: /);
    configError({ parents: [{}] }, /^invalid host config: parents\[0\]\.kind: is required \(one of: mtty, gvt\)$/);
  });

  it("reads a file and names it in errors", () => {
    const dir = mkdtempSync(join(tmpdir(), "vgpu-sys-"));
    try {
      const f = join(dir, "host.json");
      writeFileSync(f, '{"parents": [{"kind": "mtty", "ports": 4}]}');
      assert.deepEqual(loadSystemConfigFile(f).parents, [{ kind: "mtty", ports: 4 }]);
      writeFileSync(f, "{");
      assert.throws(() => loadSystemConfigFile(f), new RegExp(`invalid host config ${f}: not valid JSON`));
      assert.throws(
        () => loadSystemConfigFile(join(dir, "nope.json")),
        /cannot read host config .*nope\.json: no such file/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("createSystem", () => {
  it("registers the configured parents with the mdev core and type1 with vfio-core", () => {
    const s = createSystem(
      parseSystemConfig({ memory: "1 GiB", parents: [{ kind: "mtty", name: "serial0", ports: 4 }, { kind: "mtty" }] }),
    );
    assert.deepEqual(
      s.mdev.parents().map((p) => p.name),
      ["mtty", "serial0"],
    );
    assert.deepEqual(
      s.mdev.types("serial0").map((t) => [t.type, t.availableInstances]),
      [
        ["mtty-1", 4],
        ["mtty-2", 2],
      ],
    );
    assert.ok(s.vfio.iommuDrivers().some((d) => d.name === "vfio-iommu-type1"));
    assert.equal(s.host.physmem.stats().totalFrames * 4096, GiB);
    assert.ok(s.sysfs.exists("/sys/class/mdev_bus/serial0/mdev_supported_types/mtty-2/create"));
  });

  it("refuses two parents with one name, naming both entries", () => {
    assert.throws(
      () => createSystem(parseSystemConfig({ parents: [{ kind: "mtty" }, { kind: "mtty", name: "mtty" }] })),
      /parents\[1\] and parents\[0\] are both named 'mtty': give one a different name/,
    );
  });

  it("builds a mediated GPU (i915 + GVT-g parent) and a GPU bound to vfio-pci, recorded in gpus", () => {
    const s = createSystem(
      parseSystemConfig({
        memory: "4 GiB",
        parents: [{ kind: "gvt", name: "gpu0", aperture: "256 MiB" }],
        assigned: [{ kind: "gpu", name: "gpu1", bdf: "0000:00:03.0" }],
      }),
    );
    assert.deepEqual(
      s.gpus.map((g) => [g.name, g.bdf, g.driver]),
      [
        ["gpu0", "0000:00:02.0", "i915"],
        ["gpu1", "0000:00:03.0", "vfio-pci"],
      ],
    );
    assert.equal(s.gpus[0]!.gpu.apertureSize, 256 * 1024 * 1024);
    assert.ok(s.sysfs.exists("/sys/class/mdev_bus/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_8/create"));
    assert.ok(s.sysfs.exists("/sys/bus/pci/devices/0000:00:03.0/iommu_group"));
    assert.throws(
      () => parseSystemConfig({ parents: [{ kind: "gvt", aperture: "300 MiB" }] }),
      /parents\[0\]\.aperture: must be a power of two from 128 MiB to 2 GiB/,
    );
    assert.throws(
      () => createSystem(parseSystemConfig({ parents: [{ kind: "gvt" }], assigned: [{ kind: "gpu" }] })),
      /assigned\[0\]: PCI address 0000:00:02.0 is already taken/,
    );
  });

  it("has a summary for every parent kind", () => {
    for (const [name, kind] of Object.entries(PARENT_KINDS)) assert.ok(kind.summary.length > 10, name);
  });
});
