import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, KernelError, TraceRecorder } from "../core/index.ts";
import { Host, PciConfigSpace, type PciDeviceModel, parseBdf } from "../host/index.ts";
import { VFIO_DEVICE_FLAGS_PCI, VfioCore, type VfioDeviceOps } from "../vfio/index.ts";
import { MdevCore } from "./core.ts";
import type { MdevAttribute, MdevDeviceInstance, MdevParentDriver, MdevTypeSpec } from "./driver.ts";

const U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const U2 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002";
const U3 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1003";
const errno = (e: Errno, re?: RegExp) => (err: unknown) =>
  err instanceof KernelError && err.errno === e && (re === undefined || re.test(err.message));

function fakeOps(name: string, log: string[]): VfioDeviceOps {
  return {
    name,
    open: () => void log.push(`open ${name}`),
    close: () => void log.push(`close ${name}`),
    info: () => ({ flags: VFIO_DEVICE_FLAGS_PCI, numRegions: 9, numIrqs: 5 }),
    regionInfo: (index) => ({ index, flags: 0, size: 0 }),
    irqInfo: (index) => ({ index, flags: 0, count: 0 }),
    setIrqs: () => {},
    reset: () => {},
    regionRead: () => 0,
    regionWrite: () => 0,
  };
}

const TYPES: readonly (MdevTypeSpec & { slots: number })[] = [
  { id: "a", name: "Small", description: "one slot", deviceApi: "vfio-pci", slots: 1 },
  { id: "b", name: "Big", description: "two slots\n", deviceApi: "vfio-pci", slots: 2 },
];

/** A parent with `capacity` slots shared by its two types (like mtty's port pool). */
class FakeParent implements MdevParentDriver {
  readonly driverName = "fake";
  types: readonly MdevTypeSpec[] = TYPES;
  used = 0;
  readonly log: string[] = [];
  failNext: KernelError | undefined;
  extraAttributes: Record<string, MdevAttribute> = {};
  rename: string | undefined;
  onDestroy: (() => void) | undefined;
  knob = 0;

  constructor(
    readonly parentName: string,
    readonly capacity = 3,
  ) {}

  private slots(id: string): number {
    return TYPES.find((t) => t.id === id)!.slots;
  }

  availability(typeId: string) {
    const n = Math.floor((this.capacity - this.used) / this.slots(typeId));
    return n > 0 ? { instances: n } : { instances: 0, reason: `slots: ${this.capacity - this.used} left, needs 2` };
  }

  create(uuid: string, typeId: string): MdevDeviceInstance {
    const f = this.failNext;
    this.failNext = undefined;
    if (f) throw f;
    this.used += this.slots(typeId);
    this.log.push(`create ${uuid} ${typeId}`);
    return {
      ops: Object.assign(fakeOps(this.rename ?? uuid, this.log), { slots: this.slots(typeId) }),
      attributes: {
        "vendor/info": { read: () => `fake ${uuid}\n` },
        knob: {
          read: () => `${this.knob}\n`,
          write: (v) => {
            if (!/^\d+\n?$/.test(v)) throw new KernelError(Errno.EINVAL, `knob takes a number, not '${v.trim()}'`);
            this.knob = Number.parseInt(v, 10);
          },
        },
        ...this.extraAttributes,
      },
    };
  }

  destroy(instance: MdevDeviceInstance): void {
    this.used -= (instance.ops as unknown as { slots: number }).slots;
    this.log.push(`destroy ${instance.ops.name}`);
    this.onDestroy?.();
  }
}

function setup() {
  const host = new Host({ seed: 1 });
  const rec = new TraceRecorder(host.tracer);
  const vfio = new VfioCore({ devfs: host.devfs, pci: host.pci, iommu: host.iommu, tracer: host.tracer });
  const core = new MdevCore({ sysfs: host.sysfs, vfio, tracer: host.tracer });
  const parent = new FakeParent("fake0");
  core.registerParent(parent);
  const s = host.sysfs;
  const typeDir = (p: string, t: string) => `/sys/class/mdev_bus/${p}/mdev_supported_types/fake-${t}`;
  return { host, rec, vfio, core, parent, s, typeDir };
}

describe("mdev core: sysfs layout", () => {
  it("shows a parent with its types as Linux does", () => {
    const { s, typeDir } = setup();
    assert.deepEqual(s.readdir("/sys/class/mdev_bus"), ["fake0"]);
    assert.equal(s.readlink("/sys/class/mdev_bus/fake0"), "../../devices/virtual/fake/fake0");
    assert.deepEqual(s.readdir("/sys/class/mdev_bus/fake0/mdev_supported_types"), ["fake-a", "fake-b"]);
    assert.deepEqual(s.readdir(typeDir("fake0", "a")), [
      "available_instances",
      "create",
      "description",
      "device_api",
      "devices",
      "name",
    ]);
    assert.equal(s.read(`${typeDir("fake0", "a")}/name`), "Small\n");
    assert.equal(s.read(`${typeDir("fake0", "a")}/description`), "one slot\n");
    assert.equal(s.read(`${typeDir("fake0", "b")}/description`), "two slots\n");
    assert.equal(s.read(`${typeDir("fake0", "a")}/device_api`), "vfio-pci\n");
    assert.equal(s.read(`${typeDir("fake0", "a")}/available_instances`), "3\n");
    assert.equal(s.read(`${typeDir("fake0", "b")}/available_instances`), "1\n");
    assert.equal(s.stat(`${typeDir("fake0", "a")}/create`).mode, 0o200);
    assert.throws(() => s.read(`${typeDir("fake0", "a")}/create`), errno(Errno.EACCES));
    assert.throws(() => s.write(`${typeDir("fake0", "a")}/name`, "x"), errno(Errno.EACCES));
  });

  it("creates a device reachable from the bus, its type and its IOMMU group", () => {
    const { host, s, core, vfio, typeDir } = setup();
    assert.equal(s.write(`${typeDir("fake0", "a")}/create`, U1), 36);
    const group = vfio.groupOfDevice(U1);
    const dev = `/sys/bus/mdev/devices/${U1}`;
    assert.equal(s.readlink(dev), `../../../devices/virtual/fake/fake0/${U1}`);
    assert.deepEqual(s.readdir(dev), ["iommu_group", "knob", "mdev_type", "remove", "vendor"]);
    assert.equal(s.readlink(`${dev}/iommu_group`), `../../../../../kernel/iommu_groups/${group}`);
    assert.equal(s.realpath(`${dev}/iommu_group`), `/sys/kernel/iommu_groups/${group}`);
    assert.equal(s.readlink(`${dev}/mdev_type`), "../mdev_supported_types/fake-a");
    assert.equal(s.realpath(`${dev}/mdev_type`), "/sys/devices/virtual/fake/fake0/mdev_supported_types/fake-a");
    assert.equal(s.realpath(`${typeDir("fake0", "a")}/devices/${U1}`), `/sys/devices/virtual/fake/fake0/${U1}`);
    assert.deepEqual(s.readdir(`/sys/kernel/iommu_groups/${group}/devices`), [U1]);
    assert.equal(s.realpath(`/sys/kernel/iommu_groups/${group}/devices/${U1}`), s.realpath(dev));
    assert.equal(s.read(`/sys/kernel/iommu_groups/${group}/reserved_regions`), "");
    assert.equal(s.read(`/sys/kernel/iommu_groups/${group}/type`), "unknown\n");
    assert.equal(host.devfs.exists(`/dev/vfio/${group}`), true);
    assert.equal(s.read(`${dev}/vendor/info`), `fake ${U1}\n`);
    assert.equal(s.stat(`${dev}/remove`).mode, 0o200);
    assert.deepEqual(core.device(U1), {
      uuid: U1,
      parent: "fake0",
      type: "fake-a",
      typeId: "a",
      group,
      sysfsPath: `/sys/devices/virtual/fake/fake0/${U1}`,
      driver: "fake",
      attributes: ["knob", "vendor/info"],
    });
    core.checkInvariants();
  });

  it("places a PCI parent's types and devices under the PCI device", () => {
    const { host, core, s, vfio } = setup();
    const gpu: PciDeviceModel = {
      bdf: parseBdf("0000:00:02.0"),
      config: new PciConfigSpace({ vendorId: 0x8086, deviceId: 0x3e92, classCode: 0x030000, bars: [] }),
      barRead: () => 0,
      barWrite: () => {},
      reset: () => {},
    };
    const gpuGroup = host.addPciDevice(gpu);
    core.registerParent(new FakeParent("0000:00:02.0"));
    assert.equal(s.readlink("/sys/class/mdev_bus/0000:00:02.0"), "../../devices/pci0000:00/0000:00:02.0");
    assert.deepEqual(s.readdir("/sys/bus/pci/devices/0000:00:02.0/mdev_supported_types"), ["fake-a", "fake-b"]);
    const info = core.create("0000:00:02.0", "b", U2);
    assert.equal(info.sysfsPath, `/sys/devices/pci0000:00/0000:00:02.0/${U2}`);
    assert.equal(s.realpath(`/sys/bus/mdev/devices/${U2}`), info.sysfsPath);
    assert.notEqual(info.group, gpuGroup, "an mdev has its own IOMMU group");
    assert.equal(vfio.groupOfDevice(U2), info.group);
    assert.equal(s.realpath(`/sys/bus/mdev/devices/${U2}/iommu_group`), `/sys/kernel/iommu_groups/${info.group}`);
    core.unregisterParent("0000:00:02.0");
    assert.deepEqual(
      s.readdir("/sys/bus/pci/devices/0000:00:02.0").filter((n) => n.includes("mdev") || n === U2),
      [],
      "the PCI device directory is left as it was",
    );
    assert.equal(s.exists("/sys/bus/pci/devices/0000:00:02.0/vendor"), true);
  });
});

describe("mdev core: create through sysfs", () => {
  it("accepts 36 bytes, or 37 with a newline, and refuses 35 and 38 with EINVAL", () => {
    const { s, core, typeDir } = setup();
    const create = `${typeDir("fake0", "a")}/create`;
    assert.equal(s.write(create, U1), 36);
    assert.equal(s.write(create, `${U2}\n`), 37);
    assert.throws(() => s.write(create, U3.slice(0, 35)), errno(Errno.EINVAL, /got 35 bytes/));
    assert.throws(() => s.write(create, `${U3}\n\n`), errno(Errno.EINVAL, /got 38 bytes/));
    assert.throws(() => s.write(create, `${U3.slice(0, 35)}z`), errno(Errno.EINVAL, /not a UUID/));
    assert.throws(() => s.write(create, U3.replaceAll("-", "_")), errno(Errno.EINVAL));
    assert.equal(s.write(create, ""), 0, "an empty write does nothing");
    assert.deepEqual(
      core.list().map((d) => d.uuid),
      [U1, U2],
    );
  });

  it("names a device by its lower-case UUID", () => {
    const { s, core, typeDir } = setup();
    s.write(`${typeDir("fake0", "a")}/create`, `${U1.toUpperCase()}\n`);
    assert.deepEqual(s.readdir("/sys/bus/mdev/devices"), [U1]);
    assert.equal(core.device(U1.toUpperCase())?.uuid, U1);
    assert.throws(() => s.write(`${typeDir("fake0", "a")}/create`, U1), errno(Errno.EEXIST));
  });

  it("refuses a UUID in use under another parent with EEXIST", () => {
    const { s, core, typeDir } = setup();
    core.registerParent(new FakeParent("fake1"));
    s.write(`${typeDir("fake0", "a")}/create`, U1);
    assert.throws(
      () => s.write(`${typeDir("fake1", "b")}/create`, U1),
      errno(Errno.EEXIST, /already exists \(type fake-a on parent fake0\)/),
    );
    assert.deepEqual(
      core.parents().map((p) => [p.name, p.devices]),
      [
        ["fake0", [U1]],
        ["fake1", []],
      ],
    );
  });

  it("counts available instances down and up, and gives the parent's reason with ENOSPC", () => {
    const { s, rec, typeDir, core } = setup();
    const avail = (t: string) => s.read(`${typeDir("fake0", t)}/available_instances`);
    s.write(`${typeDir("fake0", "a")}/create`, U1);
    assert.deepEqual([avail("a"), avail("b")], ["2\n", "1\n"]);
    s.write(`${typeDir("fake0", "b")}/create`, U2);
    assert.deepEqual([avail("a"), avail("b")], ["0\n", "0\n"]);
    assert.throws(
      () => s.write(`${typeDir("fake0", "a")}/create`, U3),
      errno(Errno.ENOSPC, /no fake-a instance left on parent fake0: slots: 0 left, needs 2/),
    );
    const fail = rec.named("mdev.create.fail").at(-1)!.fields;
    assert.equal(fail.errno, Errno.ENOSPC);
    assert.equal(fail.code, "ENOSPC");
    assert.equal(fail.uuid, U3);
    assert.match(fail.reason, /slots: 0 left/);
    const typeB = core.types("fake0").find((t) => t.type === "fake-b")!;
    assert.equal(typeB.availableInstances, 0);
    assert.equal(typeB.reason, "slots: 0 left, needs 2");
    assert.deepEqual(typeB.devices, [U2]);
    s.write(`/sys/bus/mdev/devices/${U2}/remove`, "1");
    assert.deepEqual([avail("a"), avail("b")], ["2\n", "1\n"]);
  });

  it("propagates the driver's error and leaves nothing behind", () => {
    const { s, parent, vfio, host, typeDir, rec, core } = setup();
    parent.failNext = new KernelError(Errno.EIO, "firmware said no");
    assert.throws(() => s.write(`${typeDir("fake0", "a")}/create`, U1), errno(Errno.EIO, /firmware said no/));
    assert.equal(rec.named("mdev.create.fail").at(-1)!.fields.errno, Errno.EIO);
    assert.deepEqual(vfio.inspect().groups, []);
    assert.deepEqual(s.readdir("/sys/bus/mdev/devices"), []);
    assert.deepEqual(s.readdir("/sys/kernel/iommu_groups"), []);
    assert.deepEqual(
      host.devfs.list().filter((p) => p !== "/dev/vfio/vfio"),
      [],
    );
    core.checkInvariants();
  });

  it("undoes a probe whose device is misnamed or declares a reserved attribute", () => {
    const { s, parent, vfio, typeDir } = setup();
    parent.rename = "not-the-uuid";
    assert.throws(() => s.write(`${typeDir("fake0", "a")}/create`, U1), errno(Errno.EINVAL, /must be the lower-case/));
    parent.rename = undefined;
    parent.extraAttributes = { remove: { read: () => "" } };
    assert.throws(() => s.write(`${typeDir("fake0", "a")}/create`, U1), errno(Errno.EINVAL, /must not start with/));
    assert.equal(parent.used, 0, "destroy was called for each failed probe");
    assert.deepEqual(parent.log, [`create ${U1} a`, "destroy not-the-uuid", `create ${U1} a`, `destroy ${U1}`]);
    assert.deepEqual(vfio.inspect().groups, []);
  });

  it("refuses with ENODEV while the parent is being unregistered", () => {
    const { core, parent } = setup();
    core.create("fake0", "a", U1);
    let inner: unknown;
    parent.onDestroy = () => {
      try {
        core.create("fake0", "a", U2);
      } catch (e) {
        inner = e;
      }
    };
    core.unregisterParent("fake0");
    assert.ok(errno(Errno.ENODEV, /being unregistered/)(inner), String(inner));
    assert.deepEqual(core.list(), []);
  });
});

describe("mdev core: remove", () => {
  it("removes on a nonzero number, ignores 0, refuses non-numbers, and cleans up everything", () => {
    const { s, host, vfio, parent, core, typeDir, rec } = setup();
    s.write(`${typeDir("fake0", "a")}/create`, U1);
    const group = vfio.groupOfDevice(U1);
    const remove = `/sys/bus/mdev/devices/${U1}/remove`;
    assert.equal(s.write(remove, "0"), 1);
    assert.equal(core.device(U1)?.uuid, U1, "0 does nothing");
    assert.throws(() => s.write(remove, "abc"), errno(Errno.EINVAL));
    assert.throws(() => s.write(remove, "-1"), errno(Errno.EINVAL));
    assert.equal(core.device(U1)?.uuid, U1);
    assert.equal(s.write(remove, "1\n"), 2);
    assert.equal(core.device(U1), undefined);
    assert.deepEqual(s.readdir("/sys/bus/mdev/devices"), []);
    assert.deepEqual(s.readdir(`${typeDir("fake0", "a")}/devices`), []);
    assert.equal(s.exists(`/sys/kernel/iommu_groups/${group}`), false);
    assert.equal(s.exists(`/sys/devices/virtual/fake/fake0/${U1}`), false);
    assert.equal(host.devfs.exists(`/dev/vfio/${group}`), false);
    assert.deepEqual(vfio.inspect().groups, []);
    assert.equal(parent.used, 0);
    assert.throws(() => s.write(remove, "1"), errno(Errno.ENOENT), "the file went with the device");
    assert.throws(() => core.remove(U1), errno(Errno.ENODEV));
    assert.deepEqual(
      rec.named("mdev.remove").map((r) => r.fields),
      [{ uuid: U1, parent: "fake0", type: "fake-a", group }],
    );
    core.checkInvariants();
  });

  it("writes vendor attributes through the driver, with its errors", () => {
    const { s, core, parent } = setup();
    core.create("fake0", "fake-b", U1);
    const knob = `/sys/bus/mdev/devices/${U1}/knob`;
    assert.equal(s.write(knob, "5\n"), 2);
    assert.equal(parent.knob, 5);
    assert.equal(s.read(knob), "5\n");
    assert.throws(() => s.write(knob, "five"), errno(Errno.EINVAL, /knob takes a number, not 'five'/));
    assert.throws(() => s.write(`/sys/bus/mdev/devices/${U1}/vendor/info`, "x"), errno(Errno.EACCES));
  });
});

describe("mdev core: parents and types", () => {
  it("removes a parent's devices when it unregisters", () => {
    const { s, core, parent, vfio, rec } = setup();
    core.create("fake0", "a", U1);
    core.create("fake0", "a", U2);
    core.unregisterParent("fake0");
    assert.deepEqual(parent.log.filter((l) => l.startsWith("destroy")).sort(), [`destroy ${U1}`, `destroy ${U2}`]);
    assert.deepEqual(s.readdir("/sys/class/mdev_bus"), []);
    assert.deepEqual(s.readdir("/sys/bus/mdev/devices"), []);
    assert.equal(s.exists("/sys/devices/virtual/fake"), false);
    assert.deepEqual(s.readdir("/sys/kernel/iommu_groups"), []);
    assert.deepEqual(vfio.inspect().groups, []);
    assert.deepEqual(rec.named("mdev.parent.unregister").at(-1)!.fields, {
      parent: "fake0",
      driver: "fake",
      removed: [U1, U2],
    });
    assert.throws(() => core.unregisterParent("fake0"), errno(Errno.ENODEV));
    assert.throws(() => core.create("fake0", "a", U3), errno(Errno.ENODEV));
    core.registerParent(parent);
    assert.deepEqual(s.readdir("/sys/class/mdev_bus/fake0/mdev_supported_types"), ["fake-a", "fake-b"]);
  });

  it("refuses duplicate parents and malformed type tables", () => {
    const { core } = setup();
    assert.throws(() => core.registerParent(new FakeParent("fake0")), errno(Errno.EEXIST));
    const dup = new FakeParent("dup");
    dup.types = [TYPES[0]!, TYPES[0]!];
    assert.throws(() => core.registerParent(dup), errno(Errno.EINVAL, /twice/));
    const slash = new FakeParent("a/b");
    assert.throws(() => core.registerParent(slash), errno(Errno.EINVAL));
    assert.deepEqual(
      core.parents().map((p) => p.name),
      ["fake0"],
    );
  });

  it("follows the parent's type list, keeping a hidden type while it has devices", () => {
    const { s, core, parent, typeDir, rec } = setup();
    core.create("fake0", "b", U1);
    parent.types = [TYPES[0]!];
    const types = "/sys/class/mdev_bus/fake0/mdev_supported_types";
    assert.deepEqual(s.readdir(types), ["fake-a", "fake-b"]);
    assert.equal(s.read(`${typeDir("fake0", "b")}/available_instances`), "0\n");
    assert.throws(() => s.write(`${typeDir("fake0", "b")}/create`, U2), errno(Errno.ENOSPC, /no longer offers/));
    assert.equal(core.types("fake0").find((t) => t.type === "fake-b")!.offered, false);
    assert.equal(s.realpath(`/sys/bus/mdev/devices/${U1}/mdev_type`), s.realpath(typeDir("fake0", "b")));
    core.remove(U1);
    assert.deepEqual(s.readdir(types), ["fake-a"]);
    parent.types = TYPES;
    assert.deepEqual(s.readdir(types), ["fake-a", "fake-b"]);
    assert.deepEqual(
      rec.named("mdev.types.change").map((r) => [r.fields.added, r.fields.removed]),
      [
        [[], ["fake-b"]],
        [["fake-b"], []],
      ],
    );
    core.checkInvariants();
  });

  it("offers a typed API beside sysfs", () => {
    const { core, rec } = setup();
    assert.equal(core.create("fake0", "fake-a", U2).type, "fake-a");
    assert.equal(core.create("fake0", "a", U1.toUpperCase()).uuid, U1);
    assert.throws(() => core.create("fake0", "c", U3), errno(Errno.ENOENT, /lists: fake-a, fake-b/));
    assert.throws(() => core.create("nope", "a", U3), errno(Errno.ENODEV, /registered: fake0/));
    assert.throws(() => core.create("fake0", "a", "not-a-uuid"), errno(Errno.EINVAL));
    assert.deepEqual(
      core.list().map((d) => d.uuid),
      [U1, U2],
    );
    assert.deepEqual(
      core.types("fake0").map((t) => [t.type, t.availableInstances, t.devices.length]),
      [
        ["fake-a", 1, 2],
        ["fake-b", 0, 0],
      ],
    );
    assert.equal(core.device(U3), undefined);
    assert.deepEqual(
      rec.named("mdev.create").map((r) => r.fields.uuid),
      [U2, U1],
    );
    assert.deepEqual(
      rec.named("mdev.parent.register").map((r) => r.fields),
      [{ parent: "fake0", driver: "fake", types: ["fake-a", "fake-b"] }],
    );
  });
});
