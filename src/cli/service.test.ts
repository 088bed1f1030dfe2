/**
 * The service in process, against a fake host: mdevctl's semantics (ambiguous UUIDs, one running device per UUID,
 * attributes applied in order, all-or-nothing start), and the errors a person can act on.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Errno, KernelError } from "../core/index.ts";
import { DefinitionStore } from "./definitions.ts";
import type { MdevAttr } from "./mdevctl-json.ts";
import type { ParamsOf } from "./protocol.ts";
import { type HostDevice, type HostTypeInfo, type MdevHostApi, MdevService } from "./service.ts";

const GPU = "0000:00:02.0";
const U1 = "11111111-1111-4111-8111-111111111111";
const U2 = "22222222-2222-4222-8222-222222222222";
const U3 = "33333333-3333-4333-8333-333333333333";

/** Two parents: a GPU with a 2-slot pool and a writable "knob" attribute, and a one-type "mtty". */
class FakeHost implements MdevHostApi {
  slots = 2;
  readonly running = new Map<string, HostDevice>();
  readonly writes: string[] = [];
  readonly log: string[] = [];

  parents(): string[] {
    return ["mtty", GPU];
  }

  types(parent: string): HostTypeInfo[] {
    if (parent === "mtty") {
      return [
        { type: "mtty-1", name: "Single", description: "one port", deviceApi: "vfio-pci", availableInstances: 5 },
      ];
    }
    if (parent !== GPU) throw new KernelError(Errno.ENODEV, `no parent ${parent}`);
    const big = Math.floor(this.slots / 2);
    return [
      { type: "gpu-small", name: "Small", description: "", deviceApi: "vfio-pci", availableInstances: this.slots },
      {
        type: "gpu-big",
        name: "Big",
        description: "",
        deviceApi: "vfio-pci",
        availableInstances: big,
        ...(big === 0 ? { reason: `slots: ${this.slots} left, needs 2` } : {}),
      },
    ];
  }

  devices(): HostDevice[] {
    return [...this.running.values()];
  }

  create(parent: string, type: string, uuid: string): void {
    const need = type === "gpu-big" ? 2 : type === "gpu-small" ? 1 : 0;
    if (need > this.slots) throw new KernelError(Errno.ENOSPC, "no slots");
    this.slots -= need;
    this.running.set(uuid, { uuid, parent, type, iommuGroup: 10 + this.running.size, driver: "fake" });
    this.log.push(`create ${uuid}`);
  }

  remove(uuid: string): void {
    const d = this.running.get(uuid);
    if (!d) throw new KernelError(Errno.ENODEV, `no ${uuid}`);
    this.slots += d.type === "gpu-big" ? 2 : d.type === "gpu-small" ? 1 : 0;
    this.running.delete(uuid);
    this.log.push(`remove ${uuid}`);
  }

  attributeNames(uuid: string): string[] {
    return this.running.get(uuid)?.parent === GPU ? ["knob", "other"] : [];
  }

  writeAttribute(uuid: string, name: string, value: string): void {
    if (value === "bad") throw new KernelError(Errno.EINVAL, `${name} does not take '${value}'`);
    this.writes.push(`${uuid.slice(0, 2)} ${name}=${value}`);
  }
}

const roots: string[] = [];
after(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

function setup() {
  const root = mkdtempSync(join(tmpdir(), "vgpu-svc-"));
  roots.push(root);
  const host = new FakeHost();
  const store = new DefinitionStore({ dir: join(root, "mdevctl.d") });
  let n = 0;
  const svc = new MdevService({
    host,
    store,
    newUuid: () => `aaaaaaaa-0000-4000-8000-${String(++n).padStart(12, "0")}`,
  });
  const w: string[] = [];
  return { host, store, svc, w, root };
}

function throwsErr(fn: () => unknown, errno: Errno, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KernelError, String(e));
    assert.equal(e.errno, errno, e.message);
    assert.match(e.message, re);
    return true;
  });
}

const define = (over: Partial<ParamsOf<"define">>): ParamsOf<"define"> => ({ auto: false, force: false, ...over });
const start = (over: Partial<ParamsOf<"start">>): ParamsOf<"start"> => ({ force: false, ...over });
const modify = (over: Partial<ParamsOf<"modify">> & { uuid: string }): ParamsOf<"modify"> => ({
  delattr: false,
  auto: false,
  manual: false,
  live: false,
  defined: false,
  force: false,
  ...over,
});
const knobs = (...values: string[]): MdevAttr[] => values.map((v) => ({ name: "knob", value: v }));

describe("MdevService: define and list", () => {
  it("defines with a generated UUID, lists it, and marks it active once started", () => {
    const { svc, w } = setup();
    const r = svc.define(define({ parent: GPU, type: "gpu-small", auto: true }), w);
    assert.deepEqual(r, { uuid: "aaaaaaaa-0000-4000-8000-000000000001", parent: GPU, generated: true });
    let l = svc.list({ defined: true }, w).devices;
    assert.equal(l.length, 1);
    assert.equal(l[0]!.active, false);
    svc.start(start({ uuid: r.uuid }), w);
    l = svc.list({ defined: true }, w).devices;
    assert.equal(l[0]!.active, true);
    assert.equal(l[0]!.iommuGroup, 10);
    const active = svc.list({ defined: false }, w).devices;
    assert.deepEqual(
      active.map((d) => [d.uuid, d.start, d.defined]),
      [[r.uuid, "auto", true]],
    );
    assert.deepEqual(w, []);
  });

  it("checks parent and type against the host unless forced", () => {
    const { svc, w } = setup();
    throwsErr(
      () => svc.define(define({ uuid: U1, parent: "0000:00:02.1", type: "x" }), w),
      Errno.ENODEV,
      /no parent device '0000:00:02.1' on this host \(parents: 0000:00:02.0, mtty/,
    );
    throwsErr(
      () => svc.define(define({ uuid: U1, parent: "MTTY", type: "x" }), w),
      Errno.ENODEV,
      /did you mean 'mtty'\?/,
    );
    throwsErr(
      () => svc.define(define({ uuid: U1, parent: GPU, type: "gpu-huge" }), w),
      Errno.EINVAL,
      /has no mdev type 'gpu-huge' \(its types: gpu-big, gpu-small/,
    );
    throwsErr(
      () => svc.define(define({ uuid: U1, parent: GPU, type: "GPU-BIG" }), w),
      Errno.EINVAL,
      /did you mean 'gpu-big'/,
    );
    svc.define(define({ uuid: U1, parent: "later", type: "x", force: true }), w);
    assert.equal(svc.list({ defined: true }, w).devices[0]!.parent, "later");
  });

  it("refuses a second definition under the same parent, allows one under another", () => {
    const { svc, w } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "gpu-small" }), w);
    throwsErr(
      () => svc.define(define({ uuid: U1.toUpperCase(), parent: GPU, type: "gpu-big" }), w),
      Errno.EEXIST,
      /already defined under parent 0000:00:02.0/,
    );
    svc.define(define({ uuid: U1, parent: "mtty", type: "mtty-1" }), w);
    assert.equal(svc.list({ defined: true, uuid: U1 }, w).devices.length, 2);
  });

  it("defines a running device from its parent, type and applied attributes", () => {
    const { svc, w } = setup();
    svc.start(
      start({ uuid: U1, parent: GPU, definition: { mdevType: "gpu-small", start: "manual", attrs: knobs("1") } }),
      w,
    );
    throwsErr(() => svc.define(define({ uuid: U2 }), w), Errno.EINVAL, /no parent given for/);
    svc.define(define({ uuid: U1 }), w);
    const d = svc.list({ defined: true }, w).devices[0]!;
    assert.deepEqual([d.parent, d.mdevType, d.attrs], [GPU, "gpu-small", knobs("1")]);
  });
});

describe("MdevService: start and stop", () => {
  it("applies a definition's attributes in order", () => {
    const { svc, host, w } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "gpu-small" }), w);
    svc.modify(modify({ uuid: U1, addattr: "knob", value: "b" }), w);
    svc.modify(modify({ uuid: U1, addattr: "other", value: "a", index: 0 }), w);
    svc.modify(modify({ uuid: U1, addattr: "knob", value: "c" }), w);
    svc.start(start({ uuid: U1 }), w);
    assert.deepEqual(host.writes, ["11 other=a", "11 knob=b", "11 knob=c"]);
    assert.deepEqual(
      svc.list({ defined: false }, w).devices[0]!.attrs.map((a) => a.value),
      ["a", "b", "c"],
    );
  });

  it("removes the device again when an attribute write fails, and says which one", () => {
    const { svc, host, w } = setup();
    const def = { mdevType: "gpu-small", start: "manual" as const, attrs: knobs("1", "bad") };
    throwsErr(
      () => svc.start(start({ uuid: U1, parent: GPU, definition: def }), w),
      Errno.EINVAL,
      /cannot set attribute @\{1\} knob=bad: knob does not take 'bad'; the device was removed again/,
    );
    assert.deepEqual(host.log, [`create ${U1}`, `remove ${U1}`]);
    assert.equal(host.running.size, 0);
    const unknown = { mdevType: "gpu-small", start: "manual" as const, attrs: [{ name: "nope", value: "1" }] };
    throwsErr(
      () => svc.start(start({ uuid: U1, parent: GPU, definition: unknown }), w),
      Errno.ENOENT,
      /no such attribute \(the device has: knob, other\)/,
    );
    assert.equal(host.running.size, 0);
    assert.deepEqual(host.writes, ["11 knob=1"]);
  });

  it("explains an exhausted type with the parent's reason", () => {
    const { svc, w } = setup();
    svc.start(start({ uuid: U1, parent: GPU, type: "gpu-small" }), w);
    throwsErr(
      () => svc.start(start({ uuid: U2, parent: GPU, type: "gpu-big" }), w),
      Errno.ENOSPC,
      /^type gpu-big has 0 available instances on 0000:00:02.0 \(slots: 1 left, needs 2\)$/,
    );
  });

  it("runs one device per UUID, whatever the parent, and needs -p for an ambiguous UUID", () => {
    const { svc, w } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "gpu-small" }), w);
    svc.define(define({ uuid: U1, parent: "mtty", type: "mtty-1" }), w);
    throwsErr(
      () => svc.start(start({ uuid: U1 }), w),
      Errno.EINVAL,
      /defined under several parents \(0000:00:02.0, mtty\): pass -p PARENT/,
    );
    svc.start(start({ uuid: U1, parent: "mtty" }), w);
    throwsErr(
      () => svc.start(start({ uuid: U1, parent: GPU }), w),
      Errno.EEXIST,
      /UUID 1{8}-.* is already running under parent mtty/,
    );
    throwsErr(
      () => svc.start(start({ uuid: U1, parent: GPU, type: "gpu-big" }), w),
      Errno.EEXIST,
      /defined under parent 0000:00:02.0 with type gpu-small, not gpu-big/,
    );
    svc.stop({ uuid: U1, force: false }, w);
    throwsErr(
      () => svc.stop({ uuid: U1, force: false }, w),
      Errno.ENODEV,
      /is not running \(it is defined under 0000:00:02.0, mtty\)/,
    );
  });

  it("starts transient devices, generating a UUID when none is given", () => {
    const { svc, w } = setup();
    const r = svc.start(start({ parent: GPU, type: "gpu-small" }), w);
    assert.deepEqual(r, {
      uuid: "aaaaaaaa-0000-4000-8000-000000000001",
      parent: GPU,
      mdevType: "gpu-small",
      generated: true,
    });
    throwsErr(() => svc.start(start({ uuid: U2 }), w), Errno.ENOENT, /is not defined: pass -p PARENT and -t TYPE/);
    throwsErr(() => svc.start(start({ uuid: U2, type: "gpu-small" }), w), Errno.EINVAL, /a type needs its parent/);
    assert.equal(svc.list({ defined: true }, w).devices.length, 0, "a transient start defines nothing");
  });
});

describe("MdevService: modify and undefine", () => {
  it("edits attributes by index and refuses bad indexes with the list", () => {
    const { svc, w, root } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "gpu-small" }), w);
    // mdevctl: deleting the last attribute of none changes nothing; an index into none is an error.
    svc.modify(modify({ uuid: U1, delattr: true }), w);
    assert.deepEqual(svc.list({ defined: true }, w).devices[0]!.attrs, []);
    throwsErr(
      () => svc.modify(modify({ uuid: U1, delattr: true, index: 0 }), w),
      Errno.EINVAL,
      /attribute index 0 is invalid \(device \S+ has no attributes\)/,
    );
    svc.modify(modify({ uuid: U1, addattr: "knob", value: "1" }), w);
    svc.modify(modify({ uuid: U1, addattr: "knob", value: "2" }), w);
    throwsErr(
      () => svc.modify(modify({ uuid: U1, addattr: "knob", value: "9", index: 3 }), w),
      Errno.EINVAL,
      /attribute index 3 is invalid \(its attributes: @\{0\} knob=1, @\{1\} knob=2\)/,
    );
    svc.modify(modify({ uuid: U1, delattr: true, index: 0 }), w);
    svc.modify(modify({ uuid: U1, manual: false, auto: true, type: "gpu-big" }), w);
    const d = svc.list({ defined: true }, w).devices[0]!;
    assert.deepEqual([d.mdevType, d.start, d.attrs], ["gpu-big", "auto", knobs("2")]);
    throwsErr(() => svc.modify(modify({ uuid: U1, type: "nope" }), w), Errno.EINVAL, /has no mdev type 'nope'/);
    assert.deepEqual(readdirSync(join(root, "mdevctl.d", GPU)), [U1], "no temporary files left behind");
  });

  it("modifies live attributes of a running device, optionally storing them", () => {
    const { svc, host, w } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "gpu-small" }), w);
    svc.start(start({ uuid: U1 }), w);
    const file = { mdevType: "gpu-small", start: "auto" as const, attrs: knobs("7") };
    svc.modify(modify({ uuid: U1, live: true, definition: file }), w);
    assert.deepEqual(host.writes, ["11 knob=7"]);
    assert.deepEqual(svc.list({ defined: true }, w).devices[0]!.attrs, [], "live only: definition unchanged");
    svc.modify(modify({ uuid: U1, live: true, defined: true, definition: file }), w);
    assert.deepEqual(svc.list({ defined: true }, w).devices[0]!.attrs, knobs("7"));
    const wrong = { ...file, mdevType: "gpu-big" };
    throwsErr(
      () => svc.modify(modify({ uuid: U1, live: true, definition: wrong }), w),
      Errno.EINVAL,
      /runs as gpu-small, the file says gpu-big/,
    );
    throwsErr(() => svc.modify(modify({ uuid: U2, live: true, definition: file }), w), Errno.ENODEV, /is not running/);
  });

  it("undefines under every parent, or only the one given", () => {
    const { svc, w } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "gpu-small" }), w);
    svc.define(define({ uuid: U1, parent: "mtty", type: "mtty-1" }), w);
    svc.define(define({ uuid: U3, parent: "mtty", type: "mtty-1" }), w);
    assert.deepEqual(svc.undefine({ uuid: U1, parent: "mtty", force: false }, w).removed, [
      { uuid: U1, parent: "mtty" },
    ]);
    throwsErr(
      () => svc.undefine({ uuid: U1, parent: "mtty", force: false }, w),
      Errno.ENOENT,
      /not defined under parent mtty \(it is defined under 0000:00:02.0\)/,
    );
    svc.undefine({ uuid: U1, force: false }, w);
    assert.deepEqual(
      svc.list({ defined: true }, w).devices.map((d) => d.uuid),
      [U3],
    );
  });
});

describe("MdevService: auto-start", () => {
  it("starts every auto definition of each parent and reports the ones that do not fit", () => {
    const { svc, w } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "gpu-big", auto: true }), w);
    svc.define(define({ uuid: U2, parent: GPU, type: "gpu-big", auto: true }), w);
    svc.define(define({ uuid: U3, parent: GPU, type: "gpu-small" }), w);
    svc.define(define({ uuid: U3, parent: "mtty", type: "mtty-1", auto: true }), w);
    const reports = svc.autostartAll(w);
    assert.deepEqual(
      reports.map((r) => [r.parent, r.started, r.failed.map((f) => f.uuid)]),
      [
        [GPU, [U1], [U2]],
        ["mtty", [U3], []],
      ],
    );
    assert.match(reports[0]!.failed[0]!.message, /^ENOSPC \(No space left on device\): type gpu-big has 0 available/);
  });
});

describe("MdevService: type names without the driver prefix, start-parent-mdevs", () => {
  it("define and start accept a type without its driver prefix and store the full name", () => {
    const { svc, w, host } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "small" }), w);
    assert.equal(svc.list({ defined: true }, w).devices[0]!.mdevType, "gpu-small");
    svc.start(start({ uuid: U2, parent: GPU, type: "big" }), w);
    assert.equal(host.running.get(U2)!.type, "gpu-big");
    throwsErr(
      () => svc.define(define({ uuid: U3, parent: GPU, type: "huge" }), w),
      Errno.EINVAL,
      /no mdev type 'huge'/,
    );
  });

  it("start-parent-mdevs starts the parent's auto definitions that are not running, and reports failures", () => {
    const { svc, w } = setup();
    svc.define(define({ uuid: U1, parent: GPU, type: "gpu-small", auto: true }), w);
    svc.define(define({ uuid: U2, parent: GPU, type: "gpu-small" }), w);
    svc.define(define({ uuid: U3, parent: "mtty", type: "mtty-1", auto: true }), w);
    const r = svc.dispatch("startParent", { parent: GPU }, w);
    assert.deepEqual(r, { parent: GPU, started: [U1], failed: [] });
    assert.deepEqual(
      svc.list({ defined: false }, w).devices.map((d) => d.uuid),
      [U1],
      "the manual one and the other parent's stay down",
    );
    const again = svc.dispatch("startParent", { parent: GPU }, w);
    assert.equal(again.failed.length, 1, "a running one fails to start again, and says why");
    assert.match(again.failed[0]!.message, /^EEXIST/);
  });
});
