import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  _IO,
  _IOC,
  _IOC_DIR,
  _IOC_NR,
  _IOC_READ,
  _IOC_SIZE,
  _IOC_TYPE,
  VFIO_BASE,
  VFIO_CHECK_EXTENSION,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_SET_IRQS,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOCTLS,
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_SET_IOMMU,
  VFIO_TYPE,
  vfioIoctlName,
} from "./ioctl.ts";

describe("ioctl encoding", () => {
  it("_IO and _IOC follow asm-generic/ioctl.h", () => {
    assert.equal(VFIO_TYPE, ";".charCodeAt(0));
    assert.equal(_IO(0x3b, 0x64), 0x3b64);
    // EVIOCGVERSION = _IOR('E', 0x01, int) = 0x80044501: checks the dir and size fields' positions.
    const req = _IOC(_IOC_READ, 0x45, 0x01, 4);
    assert.equal(req, 0x80044501);
    assert.deepEqual([_IOC_DIR(req), _IOC_TYPE(req), _IOC_NR(req), _IOC_SIZE(req)], [2, 0x45, 1, 4]);
  });

  it("request numbers match Linux's values", () => {
    const known: [number, number][] = [
      [VFIO_GET_API_VERSION, 0x3b64],
      [VFIO_CHECK_EXTENSION, 0x3b65],
      [VFIO_SET_IOMMU, 0x3b66],
      [VFIO_GROUP_GET_STATUS, 0x3b67],
      [VFIO_GROUP_SET_CONTAINER, 0x3b68],
      [VFIO_GROUP_GET_DEVICE_FD, 0x3b6a],
      [VFIO_DEVICE_GET_INFO, 0x3b6b],
      [VFIO_DEVICE_GET_REGION_INFO, 0x3b6c],
      [VFIO_DEVICE_SET_IRQS, 0x3b6e],
      [VFIO_IOMMU_GET_INFO, 0x3b70],
      [VFIO_IOMMU_MAP_DMA, 0x3b71],
      [VFIO_IOMMU_UNMAP_DMA, 0x3b72],
      [VFIO_IOMMU_DIRTY_PAGES, 0x3b75],
      [VFIO_DEVICE_FEATURE, 0x3b75],
    ];
    for (const [got, want] of known) assert.equal(got, want, `0x${want.toString(16)}`);
  });

  it("the table lists 24 requests, each _IO(';', VFIO_BASE + n) with n in 0..17, unique per fd kind", () => {
    assert.equal(VFIO_IOCTLS.length, 24);
    const seen = new Set<string>();
    for (const io of VFIO_IOCTLS) {
      assert.equal(_IOC_TYPE(io.request), VFIO_TYPE, io.name);
      assert.equal(_IOC_DIR(io.request) + _IOC_SIZE(io.request), 0, io.name);
      const n = _IOC_NR(io.request) - VFIO_BASE;
      assert.ok(n >= 0 && n <= 17, io.name);
      const key = `${io.fd}:${io.request}`;
      assert.ok(!seen.has(key), `${io.name} collides within ${io.fd}`);
      seen.add(key);
    }
  });
});

describe("vfioIoctlName", () => {
  it("names a request, disambiguated by fd kind", () => {
    assert.equal(vfioIoctlName(0x3b64), "VFIO_GET_API_VERSION");
    assert.equal(vfioIoctlName(VFIO_IOMMU_GET_INFO, "container"), "VFIO_IOMMU_GET_INFO");
    assert.equal(vfioIoctlName(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, "device"), "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO");
    assert.equal(vfioIoctlName(0x3b70), "VFIO_IOMMU_GET_INFO|VFIO_DEVICE_GET_PCI_HOT_RESET_INFO");
    assert.equal(vfioIoctlName(0x3b75, "device"), "VFIO_DEVICE_FEATURE");
  });

  it("shows numbers it does not know", () => {
    assert.equal(vfioIoctlName(VFIO_GET_API_VERSION, "device"), "VFIO_BASE+0");
    assert.equal(vfioIoctlName(_IO(VFIO_TYPE, VFIO_BASE + 30)), "VFIO_BASE+30");
    assert.equal(vfioIoctlName(_IO(VFIO_TYPE, 5)), "_IO(0x3b, 5)");
    assert.equal(vfioIoctlName(0x80044501), "_IOC(0x2, 0x45, 0x1, 0x4)");
  });
});
