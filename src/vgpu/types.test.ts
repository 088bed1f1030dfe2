import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, KernelError } from "../core/index.ts";
import type { GpuCapacity } from "../gpu/index.ts";
import { MiB, nextUuid, VgpuWorld } from "./testing.ts";
import {
  GVT_DRIVER_NAME,
  GVT_TYPES,
  gvtAvailability,
  gvtDemand,
  gvtFit,
  gvtTypeDirName,
  gvtTypeId,
  listedTypes,
} from "./types.ts";

const cap = (over: Partial<GpuCapacity> = {}): GpuCapacity => ({
  apertureTotal: 512 * MiB,
  apertureFree: 384 * MiB,
  apertureLargestFree: 384 * MiB,
  hiddenTotal: 3584 * MiB,
  hiddenFree: 3200 * MiB,
  hiddenLargestFree: 3200 * MiB,
  fencesTotal: 32,
  fencesFree: 28,
  ...over,
});
const type = (n: number) => GVT_TYPES.find((t) => t.id === `GVTg_V5_${n}`)!;

describe("GVT-g type table", () => {
  it("has the gen9 rows: sizes, fences, weights, EDID in kvmgt's description", () => {
    assert.deepEqual(
      GVT_TYPES.map((t) => [t.id, t.aperture / MiB, t.hidden / MiB, t.fences, t.weight, t.edid]),
      [
        ["GVTg_V5_8", 64, 384, 4, 2, "1024x768"],
        ["GVTg_V5_4", 128, 512, 4, 4, "1920x1200"],
        ["GVTg_V5_2", 256, 1024, 4, 8, "1920x1200"],
        ["GVTg_V5_1", 512, 2048, 4, 16, "1920x1200"],
      ],
    );
    assert.equal(type(8).name, "GVTg_V5_8");
    assert.equal(
      type(8).description,
      "low_gm_size: 64MB\nhigh_gm_size: 384MB\nfence: 4\nresolution: 1024x768\nweight: 2\n",
    );
  });

  it("available = min(aperture / low, hidden / high, fences / 4, ids): 512 MiB aperture gives 6 / 3 / 1", () => {
    assert.deepEqual(
      [8, 4, 2].map((n) => gvtAvailability(type(n), cap(), 7).instances),
      [6, 3, 1],
    );
    assert.deepEqual(
      listedTypes(cap()).map((t) => t.id),
      ["GVTg_V5_8", "GVTg_V5_4", "GVTg_V5_2"],
    );
    assert.equal(gvtAvailability(type(8), cap({ fencesFree: 9 }), 7).instances, 2, "fences limit");
    assert.equal(gvtAvailability(type(8), cap({ hiddenFree: 800 * MiB }), 7).instances, 2, "hidden limit");
    assert.equal(gvtAvailability(type(8), cap(), 3).instances, 3, "ids limit");
  });

  it("gives the limiting resource with numbers when none fit", () => {
    assert.deepEqual(gvtAvailability(type(2), cap({ apertureFree: 64 * MiB, apertureLargestFree: 64 * MiB }), 7), {
      instances: 0,
      reason: "aperture: 64 MiB left, needs 256 MiB",
    });
    // Enough in total but not contiguous: a partition must be one range.
    assert.match(
      gvtAvailability(type(4), cap({ apertureFree: 192 * MiB, apertureLargestFree: 64 * MiB }), 7).reason!,
      /^aperture: 64 MiB left, needs 128 MiB$/,
    );
    assert.equal(
      gvtAvailability(type(8), cap({ hiddenLargestFree: 100 * MiB }), 7).reason,
      "hidden: 100 MiB left, needs 384 MiB",
    );
    assert.equal(gvtAvailability(type(8), cap({ fencesFree: 3 }), 7).reason, "fences: 3 left, needs 4");
    assert.match(gvtAvailability(type(8), cap(), 0).reason!, /vGPU ids: all 7 in use/);
  });
});

describe("whether several vGPUs fit (gvtFit)", () => {
  it("adds up the types and names the first short resource with ENOSPC and its numbers", () => {
    assert.deepEqual(gvtDemand([type(8), type(4)]), { vgpus: 2, aperture: 192 * MiB, hidden: 896 * MiB, fences: 8 });
    assert.equal(gvtFit(["GVTg_V5_8", "i915-GVTg_V5_4", "GVTg_V5_8"], cap()), undefined, "either name form");
    assert.equal(gvtFit(["GVTg_V5_2", "GVTg_V5_4"], cap()), undefined, "exactly the 384 MiB free");
    assert.deepEqual(gvtFit(["GVTg_V5_2", "GVTg_V5_4", "GVTg_V5_8"], cap()), {
      errno: Errno.ENOSPC,
      message: "aperture: they need 448 MiB, 384 MiB is free for vGPUs",
      resource: "aperture",
      needs: 448 * MiB,
      free: 384 * MiB,
    });
    const hidden = gvtFit(["GVTg_V5_8", "GVTg_V5_8"], cap({ hiddenFree: 500 * MiB }))!;
    assert.deepEqual([hidden.resource, hidden.needs, hidden.free], ["hidden", 768 * MiB, 500 * MiB]);
    assert.equal(hidden.message, "hidden graphics memory: they need 768 MiB, 500 MiB is free for vGPUs");
    assert.equal(
      gvtFit(["GVTg_V5_8", "GVTg_V5_8"], cap({ fencesFree: 5 }))!.message,
      "fences: they need 8, 5 are free",
    );
  });

  it("checks names and vGPU ids without a capacity (before the GPU exists)", () => {
    const eight = Array.from({ length: 8 }, () => "GVTg_V5_8");
    const ids = gvtFit(eight)!;
    assert.deepEqual([ids.errno, ids.resource, ids.needs, ids.free], [Errno.ENOSPC, "vGPU ids", 8, 7]);
    assert.match(ids.message, /^vGPU ids: they need 8, 7 of 7 are free/);
    assert.equal(gvtFit(eight.slice(1)), undefined);
    assert.equal(gvtFit(["GVTg_V5_8"], cap(), 0)!.resource, "vGPU ids");
    const bad = gvtFit(["GVTg_V5_3"])!;
    assert.deepEqual([bad.errno, bad.resource], [Errno.EINVAL, "type"]);
    assert.match(bad.message, /unknown vGPU type "GVTg_V5_3"; GVT-g offers GVTg_V5_8, GVTg_V5_4/);
  });

  it("agrees with what the host driver then carves: a set that fits is created, one more is refused", () => {
    const w = new VgpuWorld({ trace: false });
    const want = ["GVTg_V5_2", "GVTg_V5_8", "GVTg_V5_8"];
    assert.equal(gvtFit(want, w.driver.capacity()), undefined);
    const uuids = want.map((t) => w.create(t));
    assert.equal(gvtFit(["GVTg_V5_8"], w.driver.capacity())!.resource, "aperture");
    assert.throws(
      () => w.create("GVTg_V5_8"),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.ENOSPC,
    );
    for (const u of uuids) w.mdev.remove(u);
  });

  it("names types as sysfs does: i915-<type id>, and back", () => {
    assert.equal(GVT_DRIVER_NAME, "i915");
    assert.equal(gvtTypeDirName("GVTg_V5_8"), "i915-GVTg_V5_8");
    assert.equal(gvtTypeDirName("i915-GVTg_V5_8"), "i915-GVTg_V5_8");
    assert.equal(gvtTypeId("i915-GVTg_V5_4"), "GVTg_V5_4");
    assert.equal(gvtTypeId("GVTg_V5_4"), "GVTg_V5_4");
    const w = new VgpuWorld({ trace: false });
    assert.equal(w.parent.driverName, GVT_DRIVER_NAME);
    const dir = `/sys/class/mdev_bus/${w.parent.parentName}/mdev_supported_types/${gvtTypeDirName("GVTg_V5_8")}`;
    assert.equal(w.host.sysfs.read(`${dir}/name`), "GVTg_V5_8\n");
  });
});

describe("GVT-g parent on the real GPU", () => {
  it("lists what fits, follows capacity as vGPUs come and go, and stops at 7 vGPUs", () => {
    const w = new VgpuWorld({ apertureSize: 1024 * MiB, trace: false });
    const dir = `/sys/class/mdev_bus/${w.parent.parentName}/mdev_supported_types`;
    assert.deepEqual(w.host.sysfs.readdir(dir), [
      "i915-GVTg_V5_1",
      "i915-GVTg_V5_2",
      "i915-GVTg_V5_4",
      "i915-GVTg_V5_8",
    ]);
    assert.equal(w.host.sysfs.read(`${dir}/i915-GVTg_V5_8/available_instances`), "7\n");
    assert.equal(w.host.sysfs.read(`${dir}/i915-GVTg_V5_8/name`), "GVTg_V5_8\n");
    const big = w.create("GVTg_V5_1");
    assert.deepEqual(w.host.sysfs.readdir(dir), [
      "i915-GVTg_V5_1",
      "i915-GVTg_V5_2",
      "i915-GVTg_V5_4",
      "i915-GVTg_V5_8",
    ]);
    assert.equal(w.parent.availability("GVTg_V5_1").instances, 0, "hidden: 640 MiB left");
    w.mdev.remove(big);
    const uuids: string[] = [];
    for (let i = 0; i < 7; i++) uuids.push(w.create("GVTg_V5_8"));
    const a = w.parent.availability("GVTg_V5_8");
    assert.equal(a.instances, 0);
    assert.match(a.reason!, /vGPU ids: all 7 in use/);
    assert.throws(
      () => w.mdev.create(w.parent.parentName, "GVTg_V5_8", nextUuid()),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.ENOSPC,
    );
    assert.deepEqual(
      w.parent.vgpus().map((v) => v.id),
      [1, 2, 3, 4, 5, 6, 7],
    );
    assert.equal(w.host.sysfs.read(`/sys/bus/mdev/devices/${uuids[2]}/intel_vgpu/vgpu_id`), "3\n");
    for (const u of uuids) w.mdev.remove(u);
    assert.equal(w.parent.availability("GVTg_V5_8").instances, 7);
    w.checkInvariants();
  });

  it("hides a type whose aperture no longer fits; its directory stays while it has devices", () => {
    const w = new VgpuWorld({ trace: false });
    const dir = `/sys/class/mdev_bus/${w.parent.parentName}/mdev_supported_types`;
    assert.deepEqual(w.host.sysfs.readdir(dir), ["i915-GVTg_V5_2", "i915-GVTg_V5_4", "i915-GVTg_V5_8"]);
    const a = w.create("GVTg_V5_2");
    // 128 MiB of aperture left: _2 no longer fits but keeps its directory (it has a device); _4 and _8 remain.
    assert.equal(w.host.sysfs.read(`${dir}/i915-GVTg_V5_2/available_instances`), "0\n");
    assert.equal(w.parent.availability("GVTg_V5_2").reason, "aperture: 128 MiB left, needs 256 MiB");
    assert.deepEqual(
      listedTypes(w.driver.capacity()).map((t) => t.id),
      ["GVTg_V5_8", "GVTg_V5_4"],
    );
    const b = w.create("GVTg_V5_4");
    assert.deepEqual(w.host.sysfs.readdir(dir), ["i915-GVTg_V5_2", "i915-GVTg_V5_4"], "_8 gone: 0 MiB left");
    w.mdev.remove(a);
    w.mdev.remove(b);
    assert.deepEqual(w.host.sysfs.readdir(dir), ["i915-GVTg_V5_2", "i915-GVTg_V5_4", "i915-GVTg_V5_8"]);
  });
});
