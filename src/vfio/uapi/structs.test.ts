import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type AnyStructCodec, Errno, KernelError } from "../../core/index.ts";
import {
  VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
} from "./constants.ts";
import {
  decodeVfioIrqSetData,
  encodeVfioDeviceFeature,
  encodeVfioIrqSet,
  VFIO_STRUCTS,
  VfioBitmap,
  VfioDeviceFeature,
  VfioDeviceFeatureDmaLoggingControl,
  VfioDeviceFeatureMigration,
  VfioDeviceFeatureMigState,
  VfioDeviceGfxPlaneInfo,
  VfioDeviceInfo,
  VfioDeviceIoeventfd,
  VfioGroupStatus,
  VfioInfoCapHeader,
  VfioIommuType1DirtyBitmap,
  VfioIommuType1DirtyBitmapGet,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
  VfioIommuType1Info,
  VfioIommuType1InfoCapIovaRange,
  VfioIommuType1InfoCapMigration,
  VfioIommuType1InfoDmaAvail,
  VfioIovaRange,
  VfioIrqInfo,
  VfioIrqSet,
  VfioPciDependentDevice,
  VfioPciHotResetInfo,
  VfioRegionGfxEdid,
  VfioRegionInfo,
  VfioRegionInfoCapSparseMmap,
  VfioRegionInfoCapType,
  VfioRegionSparseMmapArea,
  vfioIrqSetDataSize,
} from "./structs.ts";

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString("hex");
/** Hex written one group per field; spaces and "|" (end of the fixed part) are for the reader. */
const golden = (s: string): string => s.replace(/[\s|]+/g, "");
const fromHex = (s: string): Uint8Array => new Uint8Array(Buffer.from(golden(s), "hex"));

function einval(pattern: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof KernelError, `expected KernelError, got ${String(e)}`);
    assert.equal(e.errno, Errno.EINVAL);
    assert.match(e.message, pattern);
    return true;
  };
}

function arbitraryOf(codec: AnyStructCodec): fc.Arbitrary<Record<string, number | bigint | Uint8Array>> {
  const parts: Record<string, fc.Arbitrary<number | bigint | Uint8Array>> = {};
  for (const name of codec.fieldNames) {
    const f = codec.fields[name]!;
    const u64max = 2n ** 64n - 1n;
    parts[name] =
      f.kind === "u8"
        ? fc.integer({ min: 0, max: 0xff })
        : f.kind === "u16"
          ? fc.integer({ min: 0, max: 0xffff })
          : f.kind === "u32"
            ? fc.oneof(fc.constantFrom(0, 0xffff_ffff), fc.integer({ min: 0, max: 0xffff_ffff }))
            : f.kind === "s32"
              ? fc.oneof(
                  fc.constantFrom(-1, -0x8000_0000, 0x7fff_ffff),
                  fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff }),
                )
              : f.kind === "u64"
                ? fc.oneof(fc.constantFrom(0n, u64max, 2n ** 53n - 1n, 2n ** 53n), fc.bigInt({ min: 0n, max: u64max }))
                : fc.uint8Array({ minLength: f.size, maxLength: f.size });
  }
  return fc.record(parts).map((r) => ({ ...r }));
}

describe("vfio.h struct sizes", () => {
  it("sizeof and minsz are Linux's (minsz = offsetofend of the last mandatory field)", () => {
    const want: Record<string, [number, number]> = {
      vfio_info_cap_header: [8, 8],
      vfio_group_status: [8, 8],
      vfio_device_info: [24, 16],
      vfio_region_info: [32, 32],
      vfio_region_sparse_mmap_area: [16, 16],
      vfio_region_info_cap_sparse_mmap: [16, 16],
      vfio_region_info_cap_type: [16, 16],
      vfio_region_gfx_edid: [24, 24],
      vfio_irq_info: [16, 16],
      vfio_irq_set: [20, 20],
      vfio_pci_dependent_device: [8, 8],
      vfio_pci_hot_reset_info: [12, 12],
      vfio_pci_hot_reset: [12, 12],
      vfio_device_gfx_plane_info: [64, 60],
      vfio_device_ioeventfd: [32, 28],
      vfio_device_feature: [8, 8],
      vfio_device_feature_migration: [8, 8],
      vfio_device_feature_mig_state: [8, 8],
      vfio_device_feature_dma_logging_control: [24, 24],
      vfio_device_feature_dma_logging_range: [16, 16],
      vfio_device_feature_dma_logging_report: [32, 32],
      vfio_device_feature_mig_data_size: [8, 8],
      vfio_iommu_type1_info: [24, 16],
      vfio_iova_range: [16, 16],
      vfio_iommu_type1_info_cap_iova_range: [16, 16],
      vfio_iommu_type1_info_cap_migration: [32, 32],
      vfio_iommu_type1_info_dma_avail: [12, 12],
      vfio_iommu_type1_dma_map: [32, 32],
      vfio_iommu_type1_dma_unmap: [24, 24],
      vfio_bitmap: [24, 24],
      vfio_iommu_type1_dirty_bitmap: [8, 8],
      vfio_iommu_type1_dirty_bitmap_get: [40, 40],
    };
    assert.deepEqual(
      Object.fromEntries(VFIO_STRUCTS.map((c) => [c.name, [c.sizeof, c.minsz]])),
      want,
      "every codec is listed in VFIO_STRUCTS with Linux's sizes",
    );
  });
});

describe("golden layouts (vfio.h offsets, little-endian)", () => {
  it("vfio_group_status", () => {
    assert.equal(hexOf(VfioGroupStatus.encode({ argsz: 8, flags: 3 })), golden("08000000 03000000"));
  });

  it("vfio_device_info", () => {
    const b = VfioDeviceInfo.encode({ argsz: 24, flags: 0x83, num_regions: 9, num_irqs: 5, cap_offset: 24 });
    assert.equal(hexOf(b), golden("18000000 83000000 09000000 05000000 18000000 00000000"));
  });

  it("vfio_region_info", () => {
    const b = VfioRegionInfo.encode({
      argsz: 32,
      flags: 0x0f,
      index: 7,
      cap_offset: 32,
      size: 0x1122334455667788n,
      offset: 7 * 2 ** 40,
    });
    assert.equal(hexOf(b), golden("20000000 0f000000 07000000 20000000 8877665544332211 0000000000070000"));
  });

  it("vfio_irq_info and vfio_irq_set with eventfds", () => {
    assert.equal(
      hexOf(VfioIrqInfo.encode({ argsz: 16, flags: 7, index: 0, count: 1 })),
      golden("10000000 07000000 00000000 01000000"),
    );
    const set = encodeVfioIrqSet(
      { flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index: 2, start: 0, count: 2 },
      [5, -1],
    );
    assert.equal(hexOf(set), golden("1c000000 24000000 02000000 00000000 02000000 | 05000000 ffffffff"));
  });

  it("vfio_iommu_type1_info", () => {
    const b = VfioIommuType1Info.encode({ argsz: 0x40, flags: 3, iova_pgsizes: 0x40201000, cap_offset: 24 });
    assert.equal(hexOf(b), golden("40000000 03000000 0010204000000000 18000000 00000000"));
  });

  it("vfio_iommu_type1_dma_map", () => {
    const b = VfioIommuType1DmaMap.encode({
      argsz: 32,
      flags: 3,
      vaddr: 0x7f0000001000,
      iova: 0x100000,
      size: 0x200000,
    });
    assert.equal(hexOf(b), golden("20000000 03000000 00100000007f0000 0000100000000000 0000200000000000"));
  });

  it("vfio_iommu_type1_dma_unmap followed by its vfio_bitmap at minsz", () => {
    const b = new Uint8Array(VfioIommuType1DmaUnmap.minsz + VfioBitmap.sizeof);
    VfioIommuType1DmaUnmap.encode({ argsz: b.length, flags: 1, iova: 0xfee00000, size: 0x1000 }, b);
    VfioBitmap.encode({ pgsize: 4096, size: 8, data: 0xdeadbeef000 }, b, VfioIommuType1DmaUnmap.minsz);
    assert.equal(
      hexOf(b),
      golden(
        "30000000 01000000 0000e0fe00000000 0010000000000000 | 0010000000000000 0800000000000000 00f0eedbea0d0000",
      ),
    );
  });

  it("vfio_iommu_type1_dirty_bitmap + _get", () => {
    const b = new Uint8Array(VfioIommuType1DirtyBitmap.sizeof + VfioIommuType1DirtyBitmapGet.sizeof);
    VfioIommuType1DirtyBitmap.encode({ argsz: b.length, flags: 4 }, b);
    VfioIommuType1DirtyBitmapGet.encode(
      { iova: 0x1000, size: 0x40000, bitmap_pgsize: 0x1000, bitmap_size: 8, bitmap_data: 0x7fff00000000 },
      b,
      8,
    );
    assert.equal(
      hexOf(b),
      golden("30000000 04000000 0010000000000000 0000040000000000 0010000000000000 0800000000000000 00000000ff7f0000"),
    );
  });

  it("capability structs", () => {
    assert.equal(hexOf(VfioInfoCapHeader.encode({ id: 2, version: 1, next: 0x28 })), golden("0200 0100 28000000"));
    assert.equal(
      hexOf(VfioRegionInfoCapType.encode({ id: 2, version: 1, next: 0, type: 0x80008086, subtype: 1 })),
      golden("0200 0100 00000000 86800080 01000000"),
    );
    assert.equal(
      hexOf(VfioRegionInfoCapSparseMmap.encode({ id: 1, version: 1, next: 0x30, nr_areas: 2 })),
      golden("0100 0100 30000000 02000000 00000000"),
    );
    assert.equal(
      hexOf(VfioRegionSparseMmapArea.encode({ offset: 0x3000, size: 0x1000 })),
      golden("0030000000000000 0010000000000000"),
    );
    assert.equal(
      hexOf(VfioIommuType1InfoCapIovaRange.encode({ id: 1, version: 1, next: 0, nr_iovas: 2 })),
      golden("0100 0100 00000000 02000000 00000000"),
    );
    assert.equal(
      hexOf(VfioIovaRange.encode({ start: 0xfef00000, end: 0xffffffffffffn })),
      golden("0000f0fe00000000 ffffffffffff0000"),
    );
    assert.equal(
      hexOf(
        VfioIommuType1InfoCapMigration.encode({
          id: 2,
          version: 1,
          next: 0,
          flags: 0,
          pgsize_bitmap: 0x1000,
          max_dirty_bitmap_size: 0x10000000,
        }),
      ),
      golden("0200 0100 00000000 00000000 00000000 0010000000000000 0000001000000000"),
    );
    assert.equal(
      hexOf(VfioIommuType1InfoDmaAvail.encode({ id: 3, version: 1, next: 0, avail: 65535 })),
      golden("0300 0100 00000000 ffff0000"),
    );
  });

  it("device feature structs", () => {
    const mig = encodeVfioDeviceFeature(
      VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
      VfioDeviceFeatureMigState.encode({ device_state: 3, data_fd: -1 }),
    );
    assert.equal(hexOf(mig), golden("10000000 02000200 | 03000000 ffffffff"));
    assert.equal(hexOf(VfioDeviceFeature.encode({ argsz: 8, flags: 0x10001 })), golden("08000000 01000100"));
    assert.equal(hexOf(VfioDeviceFeatureMigration.encode({ flags: 1 })), golden("0100000000000000"));
    assert.equal(
      hexOf(VfioDeviceFeatureDmaLoggingControl.encode({ page_size: 4096, num_ranges: 2, ranges: 0x7000 })),
      golden("0010000000000000 02000000 00000000 0070000000000000"),
    );
  });

  it("vfio_device_gfx_plane_info", () => {
    const b = VfioDeviceGfxPlaneInfo.encode({
      argsz: 64,
      flags: 2,
      drm_plane_type: 1,
      drm_format: 0x34325258,
      drm_format_mod: 0x0100000000000001n,
      width: 1920,
      height: 1080,
      stride: 7680,
      size: 8294400,
      x_pos: 0,
      y_pos: 0,
      x_hot: 0xffffffff,
      y_hot: 0xffffffff,
      dmabuf_id: 7,
    });
    assert.equal(
      hexOf(b),
      golden(`40000000 02000000 01000000 58523234 0100000000000001 80070000 38040000 001e0000 00907e00
              00000000 00000000 ffffffff ffffffff 07000000 00000000`),
    );
  });

  it("vfio_device_ioeventfd, vfio_pci_hot_reset_info + devices, vfio_region_gfx_edid", () => {
    assert.equal(
      hexOf(VfioDeviceIoeventfd.encode({ argsz: 32, flags: 4, offset: 2 ** 40 + 0x1000, data: 0xcafe, fd: 9 })),
      golden("20000000 04000000 0010000000010000 feca000000000000 09000000 00000000"),
    );
    const info = new Uint8Array(VfioPciHotResetInfo.sizeof + VfioPciDependentDevice.sizeof);
    VfioPciHotResetInfo.encode({ argsz: info.length, flags: 0, count: 1 }, info);
    VfioPciDependentDevice.encode({ group_id: 12, segment: 0, bus: 0, devfn: 0x10 }, info, 12);
    assert.equal(hexOf(info), golden("14000000 00000000 01000000 | 0c000000 0000 00 10"));
    assert.equal(
      hexOf(
        VfioRegionGfxEdid.encode({
          edid_offset: 0x100,
          edid_max_size: 0x400,
          edid_size: 0x80,
          max_xres: 1920,
          max_yres: 1200,
          link_state: 1,
        }),
      ),
      golden("00010000 00040000 80000000 80070000 b0040000 01000000"),
    );
  });

  it("decodes a kernel-shaped buffer back to the fields (region info from hex)", () => {
    const r = VfioRegionInfo.decode(fromHex("20000000 07000000 02000000 00000000 0000001000000000 0000000000020000"));
    assert.deepEqual(r, { argsz: 32, flags: 7, index: 2, cap_offset: 0, size: 0x10000000n, offset: 2n << 40n });
  });
});

describe("every codec", () => {
  it("property: decode(encode(x)) = x, u64 extremes included", () => {
    for (const codec of VFIO_STRUCTS) {
      fc.assert(
        fc.property(arbitraryOf(codec), (x) => {
          assert.deepEqual(codec.decode(codec.encode(x)), x, codec.name);
        }),
        { numRuns: 60 },
      );
    }
  });

  it("a short buffer is EINVAL naming the struct and both sizes", () => {
    for (const codec of VFIO_STRUCTS) {
      const short = new Uint8Array(codec.sizeof - 1);
      assert.throws(
        () => codec.decode(short),
        einval(
          new RegExp(`^${codec.name} needs ${codec.sizeof} bytes at offset 0 but the buffer has ${codec.sizeof - 1}$`),
        ),
      );
    }
  });

  it("decodeMin accepts argsz = minsz like the kernel, and rejects one byte less", () => {
    const bytes = VfioDeviceInfo.encode({ argsz: 16, flags: 3, num_regions: 9, num_irqs: 5, cap_offset: 99 });
    assert.deepEqual(VfioDeviceInfo.decodeMin(bytes.subarray(0, 16)), {
      argsz: 16,
      flags: 3,
      num_regions: 9,
      num_irqs: 5,
      cap_offset: 0,
      pad: 0,
    });
    assert.throws(
      () => VfioDeviceInfo.decodeMin(bytes.subarray(0, 15)),
      einval(/vfio_device_info needs 16 bytes at offset 0 but the buffer has 15/),
    );
    assert.throws(
      () => VfioIommuType1DmaMap.decodeMin(new Uint8Array(24)),
      einval(/vfio_iommu_type1_dma_map needs 32/),
    );
  });
});

describe("vfio_irq_set payload", () => {
  it("data size per DATA_* flag; more or fewer than one is EINVAL", () => {
    assert.equal(vfioIrqSetDataSize(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 3), 0);
    assert.equal(vfioIrqSetDataSize(VFIO_IRQ_SET_DATA_BOOL, 3), 3);
    assert.equal(vfioIrqSetDataSize(VFIO_IRQ_SET_DATA_EVENTFD, 3), 12);
    assert.throws(
      () => vfioIrqSetDataSize(VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD, 1),
      einval(/exactly one/),
    );
    assert.throws(() => vfioIrqSetDataSize(VFIO_IRQ_SET_ACTION_TRIGGER, 1), einval(/flags 0x20/));
  });

  it("encode/decode round trip for bools and eventfds", () => {
    const bools = encodeVfioIrqSet(
      { flags: VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_UNMASK, index: 0, start: 1, count: 3 },
      [1, 0, 1],
    );
    assert.equal(hexOf(bools.subarray(20)), "010001");
    const hdr = VfioIrqSet.decode(bools);
    assert.equal(hdr.argsz, 23);
    assert.deepEqual(decodeVfioIrqSetData(bools, hdr), [1, 0, 1]);
    fc.assert(
      fc.property(fc.array(fc.integer({ min: -0x8000_0000, max: 0x7fff_ffff }), { maxLength: 16 }), (fds) => {
        const b = encodeVfioIrqSet(
          { flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index: 1, start: 0, count: fds.length },
          fds,
        );
        assert.deepEqual(decodeVfioIrqSetData(b, VfioIrqSet.decode(b)), fds);
      }),
      { numRuns: 100 },
    );
  });

  it("payload too short, or a count that disagrees with the data, is EINVAL", () => {
    const b = encodeVfioIrqSet(
      { flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index: 1, start: 0, count: 2 },
      [3, 4],
    );
    assert.throws(() => decodeVfioIrqSetData(b.subarray(0, 24), VfioIrqSet.decode(b)), einval(/need 8 payload bytes/));
    assert.throws(
      () => decodeVfioIrqSetData(b, { ...VfioIrqSet.decode(b), argsz: 24 }),
      einval(/argsz 24 and buffer 28 give 4/),
    );
    assert.throws(
      () => encodeVfioIrqSet({ flags: VFIO_IRQ_SET_DATA_EVENTFD, index: 0, start: 0, count: 2 }, [1]),
      einval(/count 2 but 1 data value/),
    );
    assert.throws(
      () => encodeVfioIrqSet({ flags: VFIO_IRQ_SET_DATA_EVENTFD, index: 0, start: 0, count: 1 }, [2 ** 31]),
      einval(/not an s32/),
    );
  });
});
