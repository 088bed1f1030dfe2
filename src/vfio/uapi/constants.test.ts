import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, KernelError } from "../../core/index.ts";
import {
  isVfioDeviceMigState,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
  VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_STATE_PRE_COPY_P2P,
  VFIO_DEVICE_STATE_RUNNING,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_NOIOMMU_IOMMU,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_MAX_MODEL_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_OFFSET_MASK,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_TYPE_PCI_VENDOR_TYPE,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
  VFIO_UPDATE_VADDR,
  vfioExtensionName,
  vfioMigStateName,
  vfioPciIndexToOffset,
  vfioPciIrqName,
  vfioPciOffsetInRegion,
  vfioPciOffsetToIndex,
  vfioPciRegionName,
} from "./constants.ts";

describe("vfio.h constants", () => {
  it("extensions carry Linux's numbers", () => {
    assert.deepEqual(
      [VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU, VFIO_NOIOMMU_IOMMU, VFIO_UNMAP_ALL, VFIO_UPDATE_VADDR],
      [1, 3, 8, 9, 10],
    );
    assert.equal(vfioExtensionName(3), "VFIO_TYPE1v2_IOMMU");
    assert.equal(vfioExtensionName(6), "__VFIO_RESERVED_TYPE1_NESTING_IOMMU");
    assert.equal(vfioExtensionName(42), "extension 42");
  });

  it("flag bits and masks", () => {
    assert.equal(VFIO_DEVICE_FLAGS_CAPS, 0x80);
    assert.equal(VFIO_REGION_INFO_FLAG_CAPS, 0x8);
    assert.equal(VFIO_IRQ_SET_DATA_TYPE_MASK, 0x7);
    assert.equal(VFIO_IRQ_SET_ACTION_TYPE_MASK, 0x38);
    assert.equal(VFIO_REGION_TYPE_PCI_VENDOR_TYPE, 2 ** 31, "unsigned, not a negative 1 << 31");
    assert.equal(VFIO_DEVICE_FEATURE_MASK, 0xffff);
    assert.deepEqual(
      [VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_SET, VFIO_DEVICE_FEATURE_PROBE],
      [0x10000, 0x20000, 0x40000],
    );
    assert.deepEqual(
      [
        VFIO_DEVICE_FEATURE_MIGRATION,
        VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
        VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
      ],
      [1, 2, 6, 7, 8],
    );
  });

  it("vfio-pci indices and names", () => {
    assert.equal(VFIO_PCI_CONFIG_REGION_INDEX, 7);
    assert.equal(VFIO_PCI_NUM_REGIONS, 9);
    assert.equal(VFIO_PCI_REQ_IRQ_INDEX, 4);
    assert.equal(VFIO_PCI_NUM_IRQS, 5);
    assert.equal(vfioPciRegionName(2), "BAR2");
    assert.equal(vfioPciRegionName(7), "CONFIG");
    assert.equal(vfioPciRegionName(9), "region 9");
    assert.equal(vfioPciIrqName(2), "MSIX");
    assert.equal(vfioPciIrqName(5), "irq 5");
  });

  it("migration states", () => {
    assert.equal(VFIO_DEVICE_STATE_RUNNING, 2);
    assert.equal(VFIO_DEVICE_STATE_PRE_COPY_P2P, 7);
    assert.equal(vfioMigStateName(3), "STOP_COPY");
    assert.equal(vfioMigStateName(8), "state 8");
    assert.ok(isVfioDeviceMigState(0) && isVfioDeviceMigState(7));
    assert.ok(!isVfioDeviceMigState(8) && !isVfioDeviceMigState(-1) && !isVfioDeviceMigState(1.5));
  });
});

describe("region offsets (index << 40)", () => {
  it("matches the kernel's shifts", () => {
    assert.equal(vfioPciIndexToOffset(VFIO_PCI_CONFIG_REGION_INDEX), 0x700_0000_0000);
    assert.equal(vfioPciOffsetToIndex(0x700_0000_0000 + 0x3c), 7);
    assert.equal(vfioPciOffsetInRegion(0x700_0000_0000 + 0x3c), 0x3c);
    assert.equal(VFIO_PCI_OFFSET_MASK, 0xff_ffff_ffff);
    assert.equal(vfioPciIndexToOffset(VFIO_PCI_MAX_MODEL_INDEX) + VFIO_PCI_OFFSET_MASK, Number.MAX_SAFE_INTEGER);
  });

  it("rejects indices whose offsets the model cannot represent", () => {
    for (const bad of [-1, 1.5, VFIO_PCI_MAX_MODEL_INDEX + 1]) {
      assert.throws(
        () => vfioPciIndexToOffset(bad),
        (e) => e instanceof KernelError && e.errno === Errno.EINVAL && /region index/.test(e.message),
      );
    }
  });

  it("property: index and in-region offset round-trip", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: VFIO_PCI_MAX_MODEL_INDEX }),
        fc.integer({ min: 0, max: VFIO_PCI_OFFSET_MASK }),
        (index, within) => {
          const off = vfioPciIndexToOffset(index) + within;
          assert.equal(vfioPciOffsetToIndex(off), index);
          assert.equal(vfioPciOffsetInRegion(off), within);
          assert.equal(BigInt(off), (BigInt(index) << 40n) | BigInt(within));
        },
      ),
      { numRuns: 500 },
    );
  });
});
