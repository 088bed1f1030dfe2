/**
 * Golden-file tests of the mdevctl-compatible commands, in mdevctl's manner: a real host daemon on a real UNIX
 * socket under a temporary root, the real command line run in process against it, and each command's stdout, stderr
 * and exit code compared with test/golden/cli/<command>/<case>.txt. The cases form one session, in order: state
 * carries from one to the next as it would for a person typing them.
 *
 * The host is the embedded one with a 3-port mtty parent, plus a test GPU parent (at PCI 0000:00:02.0) whose devices
 * have a writable `knob` attribute, so that attributes applied at start can be seen. Generated UUIDs come from a
 * counter. UPDATE_GOLDEN=1 rewrites the golden files (review the diff).
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { type RunningHost, startHost } from "../src/cli/commands/host.ts";
import { Errno, KernelError } from "../src/core/index.ts";
import { GiB, PciConfigSpace, type PciDeviceModel, parseBdf } from "../src/host/index.ts";
import type { MdevDeviceInstance, MdevParentDriver, MdevTypeSpec } from "../src/mdev/index.ts";
import { createSystem, parseSystemConfig } from "../src/scenario/index.ts";
import { VFIO_DEVICE_FLAGS_PCI, type VfioDeviceOps } from "../src/vfio/index.ts";
import { type CliRun, checkGolden, goldenStep } from "./test-support/cli-golden.ts";

const GOLDEN = new URL("./golden/cli/", import.meta.url);

const GPU = "0000:00:02.0";
const U1 = "11111111-1111-4111-8111-111111111111";
const U2 = "22222222-2222-4222-8222-222222222222";
const U3 = "33333333-3333-4333-8333-333333333333";
const U6 = "66666666-6666-4666-8666-666666666666";
const AUTO1 = "a0000000-0000-4000-8000-000000000001";
const AUTO2 = "a0000000-0000-4000-8000-000000000002";

// ---- the test GPU parent: a slot pool and a writable attribute -----------------------------------------------------

const TYPES: readonly (MdevTypeSpec & { slots: number })[] = [
  { id: "small", name: "Test vGPU, 1 slot", description: "a quarter of the test GPU", deviceApi: "vfio-pci", slots: 1 },
  {
    id: "big",
    name: "Test vGPU, 2 slots",
    description: "half of the test GPU\nwith a second line",
    deviceApi: "vfio-pci",
    slots: 2,
  },
];

function opsFor(name: string): VfioDeviceOps {
  return {
    name,
    info: () => ({ flags: VFIO_DEVICE_FLAGS_PCI, numRegions: 9, numIrqs: 5 }),
    regionInfo: (index) => ({ index, flags: 0, size: 0 }),
    irqInfo: (index) => ({ index, flags: 0, count: 0 }),
    setIrqs: () => {},
    reset: () => {},
    regionRead: () => 0,
    regionWrite: () => 0,
  };
}

class TestGpuParent implements MdevParentDriver {
  readonly parentName = GPU;
  readonly driverName = "vgputest";
  readonly types = TYPES;
  private used = 0;
  private readonly held = new Map<string, number>();
  /** Every knob write, in order, across devices. */
  readonly knobWrites: string[] = [];

  constructor(private readonly capacity: number) {}

  availability(typeId: string) {
    const need = TYPES.find((t) => t.id === typeId)!.slots;
    const left = this.capacity - this.used;
    const instances = Math.floor(left / need);
    return instances > 0
      ? { instances }
      : { instances, reason: `slots: ${left} of ${this.capacity} left, needs ${need}` };
  }

  create(uuid: string, typeId: string): MdevDeviceInstance {
    const need = TYPES.find((t) => t.id === typeId)!.slots;
    if (this.capacity - this.used < need) throw new KernelError(Errno.ENOSPC, "no slots");
    this.used += need;
    this.held.set(uuid, need);
    let knob = "0";
    return {
      ops: opsFor(uuid),
      attributes: {
        knob: {
          read: () => `${knob}\n`,
          write: (v) => {
            const value = v.trim();
            if (!/^\d$/.test(value)) throw new KernelError(Errno.EINVAL, `knob takes one digit 0-9, not '${value}'`);
            knob = value;
            this.knobWrites.push(`${uuid.slice(0, 8)} knob=${value}`);
          },
        },
      },
    };
  }

  destroy(instance: MdevDeviceInstance): void {
    this.used -= this.held.get(instance.ops.name) ?? 0;
    this.held.delete(instance.ops.name);
  }
}

function gpuPciStub(): PciDeviceModel {
  return {
    bdf: parseBdf(GPU),
    config: new PciConfigSpace({ vendorId: 0x8086, deviceId: 0x1912, classCode: 0x030000, bars: [], msiVectors: 1 }),
    barRead: () => 0,
    barWrite: () => {},
    reset: () => {},
  };
}

// ---- session plumbing ----------------------------------------------------------------------------------------------

let base = "";
let root = "";
let work = "";
let host: RunningHost | undefined;
let gpu: TestGpuParent;
const hostLog: string[] = [];

function defsDir(): string {
  return join(root, "mdevctl.d");
}

function plant(rel: string, text: string): void {
  const p = join(defsDir(), rel);
  mkdirSync(dirname(p), { recursive: true });
  writeFileSync(p, text);
}

function scrub(text: string): string {
  return text.split(base).join("<tmp>");
}

function golden(name: string, actual: string): void {
  checkGolden(GOLDEN, name, actual);
}

/** Runs one command of the session and compares it with its golden file; returns the run for extra checks. */
async function step(name: string, argv: readonly string[], rootOverride?: string): Promise<CliRun> {
  return await goldenStep(GOLDEN, name, argv, rootOverride ?? root, base, work);
}

const ptr = (o: unknown) => JSON.stringify(o);

before(async () => {
  base = mkdtempSync(join(tmpdir(), "vgpu-cli-"));
  root = join(base, "root");
  work = join(base, "work");
  mkdirSync(work, { recursive: true });
  // Definitions present before the host starts: two auto-start mtty devices (only one fits) and one broken file.
  plant(`mtty/${AUTO1}`, ptr({ mdev_type: "mtty-2", start: "auto", attrs: [] }));
  plant(`mtty/${AUTO2}`, ptr({ mdev_type: "mtty-2", start: "auto", attrs: [] }));
  plant(`${GPU}/${U6}`, '{"mdev_type": "vgputest-small", "start": "auto", "attrs": [{"knob": 5}]}');
  const system = createSystem(parseSystemConfig({ memory: 4 * GiB, parents: [{ kind: "mtty", ports: 3 }] }));
  system.host.addPciDevice(gpuPciStub());
  gpu = new TestGpuParent(3);
  system.mdev.registerParent(gpu);
  let n = 0;
  host = await startHost({
    root,
    system,
    // Golden output must not depend on the temporary root: vfio-user serving is tested in test/cli-serve.test.ts.
    serve: false,
    log: (l) => hostLog.push(l),
    newUuid: () => `00000000-0000-4000-8000-${String(++n).padStart(12, "0")}`,
  });
});

after(async () => {
  await host?.close();
  if (base) rmSync(base, { recursive: true, force: true });
});

describe("vgpu CLI golden files", () => {
  it("host: starts, auto-starts what fits, reports what does not and skips the broken file", () => {
    golden("host/startup", `${scrub(hostLog.join("\n"))}\n`);
    rmSync(join(defsDir(), GPU, U6));
  });

  it("types", async () => {
    await step("types/text", ["types"]);
    await step("types/json", ["types", "--dumpjson"]);
    await step("types/parent", ["types", "-p", GPU]);
    await step("types/parent-case", ["types", "-p", "MTTY"]);
  });

  it("list before any change", async () => {
    await step("list/active-initial", ["list"]);
    await step("list/parent-no-devices", ["list", "-p", GPU]);
    await step("list/invalid-uuid", ["list", "-u", "not-a-uuid"]);
  });

  it("define", async () => {
    await step("define/generated-uuid", ["define", "-p", GPU, "-t", "vgputest-small"]);
    await step("define/uuid-auto", ["define", "-u", U1, "-p", GPU, "-t", "vgputest-big", "-a"]);
    await step("define/duplicate", ["define", "-u", U1.toUpperCase(), "-p", GPU, "-t", "vgputest-big"]);
    await step("define/unknown-type", ["define", "-u", U2, "-p", GPU, "-t", "vgputest-huge"]);
    await step("define/parent-case", ["define", "-u", U2, "-p", "MTTY", "-t", "mtty-1"]);
    await step("define/unknown-parent", ["define", "-u", U2, "-p", "0000:00:03.0", "-t", "future-type"]);
    await step("define/force-absent-parent", ["define", "-u", U2, "-p", "0000:00:03.0", "-t", "future-type", "-f"]);
    await step("define/no-parent", ["define", "-u", U3]);
    writeFileSync(
      join(work, "dev.json"),
      ptr({ mdev_type: "vgputest-small", start: "manual", attrs: [{ knob: "3" }, { knob: "4" }] }),
    );
    await step("define/jsonfile", ["define", "-u", U3, "-p", GPU, "--jsonfile", "dev.json"]);
    await step("define/jsonfile-exists", ["define", "-u", U3, "-p", GPU, "--jsonfile", "dev.json"]);
    await step("define/second-parent", ["define", "-u", U3, "-p", "mtty", "-t", "mtty-1"]);
    writeFileSync(
      join(work, "bad.json"),
      '{\n  "mdev_type": "vgputest-small",\n  "start": "manual",\n  "attrs": [{"knob": "1"}, {"knob": 4}]\n}',
    );
    await step("define/jsonfile-bad-field", ["define", "-u", U6, "-p", GPU, "--jsonfile", "bad.json"]);
    writeFileSync(join(work, "broken.json"), '{\n  "mdev_type": "vgputest-small",\n  "start": manual\n}');
    await step("define/jsonfile-bad-json", ["define", "-u", U6, "-p", GPU, "--jsonfile", "broken.json"]);
    await step("define/jsonfile-missing", ["define", "-p", GPU, "--jsonfile", "nope.json"]);
    await step("define/jsonfile-with-type", ["define", "-p", GPU, "-t", "x", "--jsonfile", "dev.json"]);
    assert.equal(existsSync(join(defsDir(), GPU, U6)), false, "a rejected definition leaves no file");
    // A parent name `list -d` would skip is refused, even with -f.
    await step("define/editor-backup-parent", ["define", "-u", U6, "-p", "gpu~", "-t", "x", "-f"]);
    await step("define/scripts-parent", ["define", "-u", U6, "-p", "scripts.d", "-t", "x", "-f"]);
    assert.equal(existsSync(join(defsDir(), "gpu~")), false, "no folder for a refused parent");
  });

  it("modify", async () => {
    await step("modify/addattr", ["modify", "-u", U1, "--addattr", "knob", "--value", "1"]);
    await step("modify/addattr-index", ["modify", "-u", U1, "--addattr=knob", "--value=0", "-i", "0"]);
    await step("modify/addattr-no-value", ["modify", "-u", U1, "--addattr", "knob"]);
    await step("modify/addattr-bad-name", ["modify", "-u", U1, "--addattr", "../../x", "--value", "1"]);
    await step("modify/bad-index", ["modify", "-u", U1, "--delattr", "-i", "5"]);
    await step("modify/addattr-again", ["modify", "-u", U1, "--addattr", "knob", "--value", "9"]);
    await step("modify/delattr", ["modify", "-u", U1, "--delattr"]);
    await step("modify/manual", ["modify", "-u", U1, "-m"]);
    await step("modify/nothing", ["modify", "-u", U1]);
    await step("modify/ambiguous", ["modify", "-u", U3, "-a"]);
    await step("modify/jsonfile-no-parent", ["modify", "-u", U3, "--jsonfile", "dev.json"]);
    await step("modify/not-defined", ["modify", "-u", U6, "-a"]);
  });

  it("list definitions", async () => {
    await step("list/defined", ["list", "-d"]);
    await step("list/defined-verbose", ["list", "-d", "-v"]);
    await step("list/defined-json", ["list", "-d", "--dumpjson"]);
    await step("list/defined-uuid-json", ["list", "-d", "-u", U1, "--dumpjson"]);
    await step("list/defined-uuid-two-parents-json", ["list", "-d", "-u", U3, "--dumpjson"]);
  });

  it("start", async () => {
    await step("start/defined", ["start", "-u", U1]);
    assert.deepEqual(gpu.knobWrites, ["11111111 knob=0", "11111111 knob=1"], "attributes applied in order");
    await step("start/already-running", ["start", "-u", U1]);
    await step("start/ambiguous", ["start", "-u", U3]);
    await step("start/no-room", ["start", "-p", GPU, "-t", "vgputest-big"]);
    await step("start/transient-generated", ["start", "-p", "mtty", "-t", "mtty-1"]);
    await step("start/mtty-full", ["start", "-p", "mtty", "-t", "mtty-1"]);
    await step("start/type-without-parent", ["start", "-u", U6, "-t", "mtty-1"]);
    await step("start/undefined-uuid", ["start", "-u", U6]);
    await step("stop/to-make-room", ["stop", "-u", U1]);
    writeFileSync(
      join(work, "badknob.json"),
      ptr({ mdev_type: "vgputest-small", start: "manual", attrs: [{ knob: "2" }, { knob: "x" }] }),
    );
    await step("start/attribute-fails", ["start", "-u", U6, "-p", GPU, "--jsonfile", "badknob.json"]);
    assert.equal(host!.system.mdev.device(U6), undefined, "the half-started device was removed");
    assert.deepEqual(
      gpu.knobWrites.slice(2),
      ["66666666 knob=2"],
      "the first attribute was written, then the device removed",
    );
    await step("start/with-parent", ["start", "-u", U3, "-p", GPU]);
    await step("start/jsonfile-transient", ["start", "-u", U6, "-p", GPU, "--jsonfile", "dev.json"]);
  });

  it("list running devices", async () => {
    await step("list/active", ["list"]);
    await step("list/active-verbose", ["list", "-v"]);
    await step("list/active-json", ["list", "--dumpjson"]);
    await step("list/active-uuid-json", ["list", "-u", U3, "--dumpjson"]);
    await step("list/active-parent", ["list", "-p", "mtty"]);
    await step("list/xml", ["list", "--xml"]);
    await step("list/defined-xml", ["list", "-d", "-p", GPU, "--xml"]);
    await step("list/defined-with-active", ["list", "-d"]);
    await step("list/xml-and-json", ["list", "--xml", "--dumpjson"]);
  });

  it("stop", async () => {
    await step("stop/running", ["stop", "-u", U6]);
    await step("stop/not-running", ["stop", "-u", U1]);
    await step("stop/missing-uuid", ["stop"]);
  });

  it("undefine", async () => {
    await step("undefine/one-parent", ["undefine", "-u", U3, "-p", "mtty"]);
    await step("undefine/not-there", ["undefine", "-u", U3, "-p", "mtty"]);
    await step("undefine/all-parents", ["undefine", "-u", U2]);
    await step("undefine/unknown", ["undefine", "-u", U6]);
    await step("list/defined-final", ["list", "-d"]);
  });

  it("bad files in the definitions folder are skipped with a warning naming each", async () => {
    plant("mtty/notes.txt", "remember the milk");
    plant(`mtty/${U1}~`, ptr({ mdev_type: "mtty-1", start: "manual" }));
    plant(`mtty/${U2}`, ptr({ mdev_type: "mtty-1", start: "sometimes" }));
    plant(`mtty/${U3}`, "{");
    plant("README", "not a parent");
    plant(`${GPU}/nested/${U1}`, "{}");
    await step("list/bad-files", ["list", "-d"]);
    for (const p of ["mtty/notes.txt", `mtty/${U1}~`, `mtty/${U2}`, `mtty/${U3}`, "README", `${GPU}/nested`]) {
      rmSync(join(defsDir(), p), { recursive: true });
    }
  });

  it("a missing definitions folder is an empty list (mdevctl #56)", async () => {
    renameSync(defsDir(), `${defsDir()}.away`);
    try {
      await step("list/no-definitions-folder", ["list", "-d"]);
    } finally {
      renameSync(`${defsDir()}.away`, defsDir());
    }
  });

  it("no host running", async () => {
    await step("list/no-host", ["list"], join(base, "elsewhere"));
  });

  it("leaves no temporary files, and the mdev core is consistent", () => {
    for (const parent of readdirSync(defsDir())) {
      for (const f of readdirSync(join(defsDir(), parent))) assert.doesNotMatch(f, /\.tmp-/);
    }
    host!.system.mdev.checkInvariants();
  });
});
