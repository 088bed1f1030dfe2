import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, iova } from "../core/index.ts";
import type { AddressSpace } from "../host/index.ts";
import { errno, FakeIommuDriver } from "./harness.test.ts";
import { isNoiommuDriver, NOIOMMU_DRIVER_NAME, NoiommuBackend, noiommuDriver } from "./noiommu.ts";
import {
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_MAP_DMA,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
} from "./uapi/index.ts";

const mm = {} as AddressSpace;

describe("vfio-noiommu driver", () => {
  it("answers VFIO_NOIOMMU_IOMMU only while the unsafe mode is enabled, and nothing else", () => {
    let on = false;
    const d = noiommuDriver({ enabled: () => on });
    assert.equal(d.name, NOIOMMU_DRIVER_NAME);
    assert.equal(d.checkExtension(VFIO_NOIOMMU_IOMMU), 0);
    on = true;
    assert.equal(d.checkExtension(VFIO_NOIOMMU_IOMMU), 1, "the parameter is read at every query");
    for (const ext of [0, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, 9, 10]) assert.equal(d.checkExtension(ext), 0);
    assert.equal(noiommuDriver({ enabled: false }).checkExtension(VFIO_NOIOMMU_IOMMU), 0);
    assert.equal(noiommuDriver({ enabled: true }).checkExtension(VFIO_NOIOMMU_IOMMU), 1);
  });

  it("opens only for VFIO_NOIOMMU_IOMMU; its backend has no mapping ioctls and pins nothing", () => {
    const d = noiommuDriver({ enabled: true });
    assert.throws(() => d.open(VFIO_TYPE1v2_IOMMU, mm), errno(Errno.EINVAL));
    const b = d.open(VFIO_NOIOMMU_IOMMU, mm) as NoiommuBackend;
    assert.ok(b instanceof NoiommuBackend);
    assert.equal(b.checkExtension(VFIO_NOIOMMU_IOMMU), 1);
    assert.throws(() => b.ioctl(VFIO_IOMMU_MAP_DMA, new Uint8Array(32)), errno(Errno.ENOTTY));
    assert.throws(() => b.ioctl(VFIO_IOMMU_GET_INFO, new Uint8Array(24)), errno(Errno.ENOTTY));
    const dev = { name: "x", dmaUnmap: () => {} };
    assert.throws(() => b.pinPages(dev, iova(0), 1, 3), errno(Errno.ENOTTY));
    assert.throws(() => b.unpinPages(dev, iova(0), 1), errno(Errno.ENOTTY));
    assert.throws(() => b.dmaRw(iova(0), new Uint8Array(4), false), errno(Errno.ENOTTY));
    b.attachGroup({ id: 7, type: "noiommu", devices: ["0000:00:04.0"] });
    b.attachGroup({ id: 3, type: "noiommu", devices: ["0000:00:05.0"] });
    assert.deepEqual(b.groupIds(), [3, 7]);
    b.detachGroup({ id: 7, type: "noiommu", devices: [] });
    assert.deepEqual(b.groupIds(), [3]);
    b.release();
    assert.equal(b.isReleased, true);
    assert.deepEqual(b.groupIds(), []);
  });

  it("is recognised as the no-IOMMU driver by identity, not by name", () => {
    assert.equal(isNoiommuDriver(noiommuDriver({ enabled: true })), true);
    assert.equal(isNoiommuDriver(new FakeIommuDriver(NOIOMMU_DRIVER_NAME)), false);
  });
});
