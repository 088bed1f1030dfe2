import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, KernelError } from "../core/index.ts";
import { parseBdf } from "./bdf.ts";
import { Host } from "./host.ts";
import type { PciDeviceModel } from "./pci.ts";
import { PciConfigSpace } from "./pci-config.ts";
import { attachPciSysfs, pciDeviceDir, relativeLinkTarget, Sysfs } from "./sysfs.ts";

const errno = (e: Errno) => (err: unknown) => err instanceof KernelError && err.errno === e;

describe("Sysfs tree", () => {
  it("starts with the top-level directories and lists names sorted", () => {
    const s = new Sysfs();
    assert.deepEqual(s.readdir("/sys"), ["bus", "class", "devices", "kernel"]);
    s.mkdir("/sys/devices/virtual/x/b");
    s.mkdir("/sys/devices/virtual/x/a");
    s.mkdir("/sys/devices/virtual/x/a"); // mkdir -p: existing is fine
    assert.deepEqual(s.readdir("/sys/devices/virtual/x"), ["a", "b"]);
    assert.equal(s.stat("/sys/devices/virtual/x").kind, "dir");
  });

  it("reads and writes attributes through their handlers, with Linux errno", () => {
    const s = new Sysfs();
    let value = "7";
    const writes: string[] = [];
    s.addAttribute("/sys/devices/d/rw", {
      read: () => `${value}\n`,
      write: (d) => {
        value = d.trim();
      },
    });
    s.addAttribute("/sys/devices/d/ro", { read: () => "ro\n" });
    s.addAttribute("/sys/devices/d/wo", { write: (d) => void writes.push(d) });
    assert.equal(s.read("/sys/devices/d/rw"), "7\n");
    assert.equal(s.write("/sys/devices/d/rw", "12\n"), 3);
    assert.equal(s.read("/sys/devices/d/rw"), "12\n");
    assert.equal(s.stat("/sys/devices/d/rw").mode, 0o644);
    assert.equal(s.stat("/sys/devices/d/ro").mode, 0o444);
    assert.equal(s.stat("/sys/devices/d/wo").mode, 0o200);
    assert.throws(() => s.write("/sys/devices/d/ro", "1"), errno(Errno.EACCES));
    assert.throws(() => s.read("/sys/devices/d/wo"), errno(Errno.EACCES));
    assert.throws(() => s.read("/sys/devices/d"), errno(Errno.EISDIR));
    assert.throws(() => s.write("/sys/devices/d", "x"), errno(Errno.EISDIR));
    assert.throws(() => s.read("/sys/devices/d/missing"), errno(Errno.ENOENT));
    assert.throws(() => s.read("/sys/devices/d/ro/x"), errno(Errno.ENOTDIR));
    assert.throws(() => s.readdir("/sys/devices/d/ro"), errno(Errno.ENOTDIR));
    assert.throws(() => s.read("sys/devices/d/ro"), errno(Errno.EINVAL));
  });

  it("a mode without the read or write bit refuses even when a handler exists", () => {
    const s = new Sysfs();
    s.addAttribute("/sys/devices/d/locked", { read: () => "x\n", write: () => {}, mode: 0o400 });
    assert.equal(s.read("/sys/devices/d/locked"), "x\n");
    assert.throws(() => s.write("/sys/devices/d/locked", "1"), errno(Errno.EACCES));
  });

  it("counts bytes, skips empty writes and cuts writes at a page", () => {
    const s = new Sysfs();
    const got: string[] = [];
    s.addAttribute("/sys/devices/d/w", { write: (d) => void got.push(d) });
    assert.equal(s.write("/sys/devices/d/w", ""), 0);
    assert.equal(got.length, 0, "an empty write never reaches store()");
    assert.equal(s.write("/sys/devices/d/w", "é"), 2);
    assert.equal(s.write("/sys/devices/d/w", "a".repeat(5000)), 4096);
    assert.equal(got[1]!.length, 4096);
  });

  it("propagates a handler's KernelError unchanged", () => {
    const s = new Sysfs();
    s.addAttribute("/sys/devices/d/w", {
      write: (d) => {
        throw new KernelError(Errno.EINVAL, `bad value '${d}'`);
      },
    });
    assert.throws(
      () => s.write("/sys/devices/d/w", "zz"),
      (e: unknown) => {
        return e instanceof KernelError && e.errno === Errno.EINVAL && e.message === "bad value 'zz'";
      },
    );
  });

  it("refuses duplicates and handler-less attributes", () => {
    const s = new Sysfs();
    s.addAttribute("/sys/devices/d/a", { read: () => "" });
    assert.throws(() => s.addAttribute("/sys/devices/d/a", { read: () => "" }), errno(Errno.EEXIST));
    assert.throws(() => s.addSymlink("/sys/devices/d/a", "/sys"), errno(Errno.EEXIST));
    assert.throws(() => s.addAttribute("/sys/devices/d/b", {}), errno(Errno.EINVAL));
    assert.throws(() => s.mkdir("/sys/devices/d/a/sub"), errno(Errno.ENOTDIR));
    assert.throws(() => s.mkdir("/sys/devices/../x"), errno(Errno.EINVAL));
  });

  it("resolves relative and absolute links; readlink returns the stored target", () => {
    const s = new Sysfs();
    s.addAttribute("/sys/devices/virtual/t/t/name", { read: () => "t\n" });
    s.addSymlink("/sys/class/t/t", "../../devices/virtual/t/t");
    s.addSymlink("/sys/bus/t/abs", "/sys/class/t/t");
    assert.equal(s.readlink("/sys/class/t/t"), "../../devices/virtual/t/t");
    assert.equal(s.realpath("/sys/class/t/t"), "/sys/devices/virtual/t/t");
    assert.equal(s.realpath("/sys/bus/t/abs/name"), "/sys/devices/virtual/t/t/name");
    assert.equal(s.read("/sys/bus/t/abs/name"), "t\n");
    assert.deepEqual(s.readdir("/sys/class/t/t"), ["name"]);
    assert.equal(s.lstat("/sys/class/t/t").kind, "link");
    assert.equal(s.stat("/sys/class/t/t").kind, "dir");
    assert.equal(s.kind("/sys/class/t/t"), "link");
    assert.equal(s.kind("/sys/class/t/none"), undefined);
    // '..' after a link goes to the physical parent, as Linux does
    assert.equal(s.realpath("/sys/class/t/t/.."), "/sys/devices/virtual/t");
    assert.throws(() => s.readlink("/sys/class/t"), errno(Errno.EINVAL));
    // a builder path through a link lands in the target directory
    s.addAttribute("/sys/class/t/t/extra", { read: () => "e\n" });
    assert.deepEqual(s.readdir("/sys/devices/virtual/t/t"), ["extra", "name"]);
  });

  it("reports dangling links as ENOENT, cycles as ELOOP", () => {
    const s = new Sysfs();
    s.addSymlink("/sys/class/x/dangling", "../../devices/nowhere");
    assert.equal(s.exists("/sys/class/x/dangling"), false);
    assert.equal(s.has("/sys/class/x/dangling"), true);
    assert.throws(() => s.realpath("/sys/class/x/dangling"), errno(Errno.ENOENT));
    s.addSymlink("/sys/class/x/a", "b");
    s.addSymlink("/sys/class/x/b", "a");
    assert.throws(() => s.realpath("/sys/class/x/a"), errno(Errno.ELOOP));
  });

  it("removes subtrees, and a link without touching its target", () => {
    const s = new Sysfs();
    s.addAttribute("/sys/devices/d/sub/f", { read: () => "" });
    s.addSymlink("/sys/bus/x/d", "../../devices/d");
    s.remove("/sys/bus/x/d");
    assert.equal(s.exists("/sys/devices/d/sub/f"), true);
    s.remove("/sys/devices/d");
    assert.equal(s.exists("/sys/devices/d"), false);
    assert.throws(() => s.remove("/sys/devices/d"), errno(Errno.ENOENT));
    assert.throws(() => s.remove("/"), errno(Errno.EBUSY));
  });

  it("relativeLinkTarget points where the absolute path does (property)", () => {
    const seg = fc.constantFrom("a", "b", "c", "dd");
    const path = fc.array(seg, { minLength: 1, maxLength: 5 }).map((xs) => `/sys/${xs.join("/")}`);
    fc.assert(
      fc.property(path, path, (link, target) => {
        fc.pre(!target.startsWith(`${link}/`) && target !== link && !link.startsWith(`${target}/`));
        const s = new Sysfs();
        s.mkdir(target);
        s.addSymlink(link, relativeLinkTarget(link, target));
        assert.equal(s.realpath(link), target);
      }),
      { numRuns: 200 },
    );
  });

  it("lists a subtree with tree()", () => {
    const s = new Sysfs();
    s.addAttribute("/sys/devices/d/f", { read: () => "" });
    s.addSymlink("/sys/devices/d/l", "..");
    assert.deepEqual(
      s.tree("/sys/devices").map((e) => `${e.kind} ${e.path}${e.target ? ` -> ${e.target}` : ""}`),
      ["dir /sys/devices", "dir /sys/devices/d", "file /sys/devices/d/f", "link /sys/devices/d/l -> .."],
    );
  });

  it("runs refreshers before user-side access, never re-entrantly", () => {
    const s = new Sysfs();
    let n = 0;
    let depth = 0;
    const off = s.addRefresher(() => {
      n++;
      depth++;
      assert.equal(depth, 1);
      if (!s.has("/sys/devices/lazy")) s.addAttribute("/sys/devices/lazy", { read: () => `${n}\n` });
      s.read("/sys/devices/lazy"); // a refresher may read without recursing
      depth--;
    });
    assert.equal(s.read("/sys/devices/lazy"), "1\n");
    assert.equal(s.read("/sys/devices/lazy"), "2\n");
    off();
    assert.equal(s.read("/sys/devices/lazy"), "2\n");
  });
});

function model(bdf: string, vendorId: number, deviceId: number, classCode: number): PciDeviceModel {
  return {
    bdf: parseBdf(bdf),
    config: new PciConfigSpace({ vendorId, deviceId, classCode, revision: 6, bars: [] }),
    barRead: () => 0,
    barWrite: () => {},
    reset: () => {},
  };
}

describe("PCI and IOMMU groups in sysfs", () => {
  it("shows devices, their ids, their group and driver as Linux does", () => {
    const host = new Host({ seed: 1 });
    const s = new Sysfs();
    attachPciSysfs(s, host.pci, host.iommu);
    const gpu = model("0000:00:02.0", 0x8086, 0x3e92, 0x030000);
    const group = host.addPciDevice(gpu);
    const dev = "/sys/bus/pci/devices/0000:00:02.0";
    assert.equal(s.readlink(dev), "../../../devices/pci0000:00/0000:00:02.0");
    assert.equal(s.realpath(dev), pciDeviceDir(gpu.bdf));
    assert.equal(s.read(`${dev}/vendor`), "0x8086\n");
    assert.equal(s.read(`${dev}/device`), "0x3e92\n");
    assert.equal(s.read(`${dev}/class`), "0x030000\n");
    assert.equal(s.read(`${dev}/revision`), "0x06\n");
    assert.equal(s.readlink(`${dev}/iommu_group`), `../../../kernel/iommu_groups/${group}`);
    assert.equal(s.realpath(`${dev}/iommu_group`), `/sys/kernel/iommu_groups/${group}`);
    assert.equal(s.realpath(`/sys/kernel/iommu_groups/${group}/devices/0000:00:02.0`), pciDeviceDir(gpu.bdf));
    assert.equal(
      s.read(`/sys/kernel/iommu_groups/${group}/reserved_regions`),
      "0x00000000fee00000 0x00000000feefffff msi\n",
    );
    assert.equal(s.read(`/sys/kernel/iommu_groups/${group}/type`), "DMA\n");
    assert.equal(s.exists(`${dev}/driver`), false);

    host.pci.bind(gpu.bdf, "i915", {});
    assert.equal(s.readlink(`${dev}/driver`), "../../../bus/pci/drivers/i915");
    assert.equal(s.realpath(`/sys/bus/pci/drivers/i915/0000:00:02.0`), pciDeviceDir(gpu.bdf));
    host.pci.unbind(gpu.bdf);
    host.pci.bind(gpu.bdf, "vfio-pci", {});
    assert.equal(s.realpath(`${dev}/driver`), "/sys/bus/pci/drivers/vfio-pci");
    assert.deepEqual(s.readdir("/sys/bus/pci/drivers/i915"), [], "the old driver keeps its directory, not the link");
    assert.deepEqual(s.readdir("/sys/bus/pci/drivers/vfio-pci"), ["0000:00:02.0"]);
  });

  it("groups devices that share a group and drops what the host removed", () => {
    const host = new Host({ seed: 1 });
    const s = new Sysfs();
    attachPciSysfs(s, host.pci, host.iommu);
    const a = model("0000:01:00.0", 0x10de, 1, 0x030000);
    const b = model("0000:01:00.1", 0x10de, 2, 0x040300);
    const g = host.addPciDevice(a, { reservedRegions: [{ start: 0x1000, end: 0x1fff, type: "direct" }] });
    host.addPciDevice(b, { group: g });
    assert.deepEqual(s.readdir(`/sys/kernel/iommu_groups/${g}/devices`), ["0000:01:00.0", "0000:01:00.1"]);
    assert.equal(
      s.read(`/sys/kernel/iommu_groups/${g}/reserved_regions`),
      "0x0000000000001000 0x0000000000001fff direct\n0x00000000fee00000 0x00000000feefffff msi\n",
    );
    assert.equal(s.realpath("/sys/bus/pci/devices/0000:01:00.1"), "/sys/devices/pci0000:01/0000:01:00.1");
    host.pci.remove(b.bdf);
    host.iommu.removeDevice(b.bdf);
    assert.deepEqual(s.readdir("/sys/bus/pci/devices"), ["0000:01:00.0"]);
    assert.deepEqual(s.readdir(`/sys/kernel/iommu_groups/${g}/devices`), ["0000:01:00.0"]);
    host.pci.remove(a.bdf);
    host.iommu.removeDevice(a.bdf);
    assert.deepEqual(s.readdir("/sys/kernel/iommu_groups"), []);
  });

  it("has no IOMMU groups when the IOMMU is disabled", () => {
    const host = new Host({ seed: 1, iommu: { enabled: false } });
    const s = new Sysfs();
    attachPciSysfs(s, host.pci, host.iommu);
    host.addPciDevice(model("0000:00:03.0", 0x1234, 0x11e8, 0x00ff00));
    assert.deepEqual(s.readdir("/sys/kernel/iommu_groups"), []);
    assert.equal(s.exists("/sys/bus/pci/devices/0000:00:03.0/iommu_group"), false);
    assert.equal(s.read("/sys/bus/pci/devices/0000:00:03.0/class"), "0x00ff00\n");
  });

  it("leaves an IOMMU group directory it did not create alone", () => {
    const host = new Host({ seed: 1 });
    const s = new Sysfs();
    attachPciSysfs(s, host.pci, host.iommu);
    s.addAttribute("/sys/kernel/iommu_groups/0/reserved_regions", { read: () => "" });
    host.addPciDevice(model("0000:00:04.0", 1, 1, 0));
    assert.equal(s.read("/sys/kernel/iommu_groups/0/reserved_regions"), "");
    assert.equal(s.exists("/sys/bus/pci/devices/0000:00:04.0/iommu_group"), false);
  });
});
