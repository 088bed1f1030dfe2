/**
 * Type1 container ioctls at the byte level: MAP_DMA, UNMAP_DMA, GET_INFO, DIRTY_PAGES argument checks in the kernel's
 * order, v1/v2 unmap semantics, UNMAP_ALL, the size write-back, UPDATE_VADDR, the entry limit, ENOTTY.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, iova, PAGE_SIZE, readU32LE, readU64LE } from "../../core/index.ts";
import {
  decodeIovaRangeCap,
  findCap,
  VFIO_CHECK_EXTENSION,
  VFIO_DMA_CC_IOMMU,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_VADDR,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  VFIO_DMA_UNMAP_FLAG_VADDR,
  VFIO_IOMMU_DISABLE,
  VFIO_IOMMU_ENABLE,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_NOIOMMU_IOMMU,
  VFIO_RESERVED_TYPE1_NESTING_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
  VFIO_UPDATE_VADDR,
  VfioIommuType1DmaUnmap,
  VfioIommuType1Info,
  VfioIommuType1InfoCapMigration,
  VfioIommuType1InfoDmaAvail,
} from "../uapi/index.ts";
import { FakeMdev, MiB, RW, Type1Fixture } from "./testing.ts";
import { type1Driver } from "./type1.ts";

const E = Type1Fixture.errno;
const G = 1024 * MiB;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

describe("type1 driver", () => {
  it("is named vfio-iommu-type1 and answers CHECK_EXTENSION as the kernel does with no backend", () => {
    const f = new Type1Fixture();
    const d = type1Driver({ iommu: f.host.iommu, physmem: f.host.physmem, tracer: f.host.tracer });
    assert.equal(d.name, "vfio-iommu-type1");
    assert.equal(d.checkExtension(VFIO_TYPE1_IOMMU), 1);
    assert.equal(d.checkExtension(VFIO_TYPE1v2_IOMMU), 1);
    assert.equal(d.checkExtension(VFIO_UNMAP_ALL), 1);
    // vfio_iommu_type1_check_extension(NULL, VFIO_UPDATE_VADDR) is `iommu && ...`: 0 before SET_IOMMU.
    assert.equal(d.checkExtension(VFIO_UPDATE_VADDR), 0);
    assert.equal(d.checkExtension(VFIO_RESERVED_TYPE1_NESTING_IOMMU), 0);
    assert.equal(d.checkExtension(VFIO_NOIOMMU_IOMMU), 0);
    assert.equal(d.checkExtension(VFIO_DMA_CC_IOMMU), 0);
    assert.equal(
      E(() => d.open(VFIO_NOIOMMU_IOMMU, f.mm)),
      Errno.EINVAL,
    );
    assert.equal(d.open(VFIO_TYPE1_IOMMU, f.mm).v2, false);
    assert.equal(d.open(VFIO_TYPE1v2_IOMMU, f.mm).v2, true);
  });

  it("answers UPDATE_VADDR on a backend only while no mdev group is attached", () => {
    const f = new Type1Fixture();
    assert.equal(f.backend.checkExtension(VFIO_UPDATE_VADDR), 1);
    assert.equal(f.backend.ioctl(VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR), 1);
    const g = f.emulatedGroup();
    assert.equal(f.backend.checkExtension(VFIO_UPDATE_VADDR), 0);
    f.backend.detachGroup(g);
    assert.equal(f.backend.checkExtension(VFIO_UPDATE_VADDR), 1);
    assert.equal(f.backend.checkExtension(VFIO_DMA_CC_IOMMU), 1);
  });

  it("answers ENABLE, DISABLE and unknown requests with ENOTTY", () => {
    const f = new Type1Fixture();
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_ENABLE, 0)),
      Errno.ENOTTY,
    );
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_DISABLE, 0)),
      Errno.ENOTTY,
    );
    assert.equal(
      E(() => f.backend.ioctl(0x1234, new Uint8Array(64))),
      Errno.ENOTTY,
    );
  });
});

describe("VFIO_IOMMU_MAP_DMA argument checks, in the kernel's order", () => {
  it("EFAULT for an integer or a buffer too short to read", () => {
    const f = new Type1Fixture();
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_MAP_DMA, 0)),
      Errno.EFAULT,
    );
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_MAP_DMA, new Uint8Array(31))),
      Errno.EFAULT,
    );
  });

  it("argsz below 32 is EINVAL before anything else", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    // Also size 0 and no prot: argsz wins.
    const arg = f.mapArg(0, 0, 0, 0, 31);
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_MAP_DMA, arg)),
      Errno.EINVAL,
    );
  });

  it("unknown flags are EINVAL, checked with argsz", () => {
    const f = new Type1Fixture();
    assert.equal(
      E(() => f.map(0, 0x10000, 0, RW | 8)),
      Errno.EINVAL,
    );
  });

  it("no READ/WRITE without VADDR, or VADDR with READ/WRITE, is EINVAL before the size checks", () => {
    const f = new Type1Fixture();
    assert.equal(
      E(() => f.map(0, 0x10001, 0, 0)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(0, 0x10001, 0, VFIO_DMA_MAP_FLAG_VADDR | VFIO_DMA_MAP_FLAG_READ)),
      Errno.EINVAL,
    );
  });

  it("size 0 and unaligned iova, vaddr or size are EINVAL", () => {
    const f = new Type1Fixture();
    const ram = f.ram(MiB);
    assert.equal(
      E(() => f.map(0, ram, 0)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(0x800, ram, PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(0, ram + 1, PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(0, ram, PAGE_SIZE + 8)),
      Errno.EINVAL,
    );
    assert.equal(f.backend.stats().mappings, 0);
  });

  it("IOVA or vaddr wrap-around is EINVAL; a range past 2^53 that does not wrap is EOVERFLOW", () => {
    const f = new Type1Fixture();
    assert.equal(
      E(() => f.map(U64_MAX - 4095n, 0x10000, 2 * PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(0, U64_MAX - 4095n, 2 * PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(1n << 60n, 0x10000, PAGE_SIZE)),
      Errno.EOVERFLOW,
    );
  });

  it("overlap is EEXIST, before the entry limit and the range checks", () => {
    const f = new Type1Fixture({ dmaEntryLimit: 1 });
    f.iommuGroup();
    const ram = f.ram(MiB);
    f.map(0xfed00000, ram, MiB); // just below the MSI window
    // Overlaps the mapping, exceeds the limit and reaches into the MSI window: EEXIST comes first.
    assert.equal(
      E(() => f.map(0xfed00000, ram, 2 * MiB)),
      Errno.EEXIST,
    );
    assert.equal(
      E(() => f.map(0xfec00000, ram, 2 * MiB)),
      Errno.EEXIST,
    );
  });

  it("no entries left is ENOSPC, before the range check", () => {
    const f = new Type1Fixture({ dmaEntryLimit: 1 });
    f.iommuGroup();
    const ram = f.ram(MiB);
    f.map(0, ram, PAGE_SIZE);
    assert.equal(
      E(() => f.map(0xfee00000, ram, PAGE_SIZE)),
      Errno.ENOSPC,
    );
  });

  it("outside the allowed IOVA ranges is EINVAL (the MSI window, beyond the aperture)", () => {
    const f = new Type1Fixture();
    f.iommuGroup();
    const ram = f.ram(2 * MiB);
    assert.equal(
      E(() => f.map(0xfee00000, ram, PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(0xfedff000, ram, 2 * PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(2 ** 48, ram, PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(f.map(0xfef00000, ram, PAGE_SIZE), 0);
  });

  it("a container with only emulated groups accepts any IOVA", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    const ram = f.ram(MiB);
    assert.equal(f.map(0xfee00000, ram, MiB), 0);
    assert.equal(f.map(2 ** 50, ram, MiB), 0);
  });
});

describe("dma_entry_limit", () => {
  it("ENOSPC once the limit is used up; an unmap gives the entry back; DMA_AVAIL reports it", () => {
    const f = new Type1Fixture({ dmaEntryLimit: 3 });
    f.emulatedGroup();
    const ram = f.ram(MiB);
    for (let i = 0; i < 3; i++) f.map(i * PAGE_SIZE, ram, PAGE_SIZE);
    assert.equal(
      E(() => f.map(10 * PAGE_SIZE, ram, PAGE_SIZE)),
      Errno.ENOSPC,
    );
    const avail = () => {
      const buf = f.info();
      const cap = findCap(buf, VfioIommuType1Info.getNumber(buf, "cap_offset"), VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)!;
      return VfioIommuType1InfoDmaAvail.decode(cap.bytes).avail;
    };
    assert.equal(avail(), 0);
    assert.equal(f.unmap(PAGE_SIZE, PAGE_SIZE), PAGE_SIZE);
    assert.equal(avail(), 1);
    assert.equal(f.map(10 * PAGE_SIZE, ram, PAGE_SIZE), 0);
  });

  it("the real default: 65535 mappings fit, the 65536th is ENOSPC", () => {
    const f = new Type1Fixture({ trace: false });
    f.emulatedGroup();
    const ram = f.ram(PAGE_SIZE);
    const arg = f.mapArg(0, ram, PAGE_SIZE);
    const view = new DataView(arg.buffer);
    for (let i = 0; i < 65535; i++) {
      view.setBigUint64(16, BigInt(i * 2 * PAGE_SIZE), true);
      f.backend.ioctl(VFIO_IOMMU_MAP_DMA, arg);
    }
    assert.equal(f.backend.stats().mappings, 65535);
    assert.equal(f.backend.stats().dmaAvail, 0);
    assert.equal(
      E(() => f.map(2 ** 40, ram, PAGE_SIZE)),
      Errno.ENOSPC,
    );
    assert.equal(f.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL), 65535 * PAGE_SIZE);
    assert.equal(f.backend.stats().dmaAvail, 65535);
  });
});

describe("VFIO_IOMMU_UNMAP_DMA argument checks", () => {
  it("argsz, unknown flags, GET_DIRTY_BITMAP with ALL or VADDR are EINVAL", () => {
    const f = new Type1Fixture();
    const ioctl = (b: Uint8Array) => f.backend.ioctl(VFIO_IOMMU_UNMAP_DMA, b);
    assert.equal(
      E(() => ioctl(new Uint8Array(23))),
      Errno.EFAULT,
    );
    assert.equal(
      E(() => ioctl(f.unmapArg(0, 0, VFIO_DMA_UNMAP_FLAG_ALL, 23))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.unmapArg(0, PAGE_SIZE, 8))),
      Errno.EINVAL,
    );
    const dirtyAll = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_ALL;
    assert.equal(
      E(() => ioctl(f.unmapArg(0, 0, dirtyAll))),
      Errno.EINVAL,
    );
    const dirtyVaddr = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_VADDR;
    assert.equal(
      E(() => ioctl(f.unmapArg(0, PAGE_SIZE, dirtyVaddr))),
      Errno.EINVAL,
    );
    // GET_DIRTY_BITMAP needs argsz to cover the vfio_bitmap (48), and then the bytes to read it.
    assert.equal(
      E(() => ioctl(f.unmapArg(0, PAGE_SIZE, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 40))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.unmapArg(0, PAGE_SIZE, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 48))),
      Errno.EFAULT,
    );
  });

  it("VADDR with an mdev group is EBUSY, before the alignment checks", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    assert.equal(
      E(() => f.unmap(0x800, 0, VFIO_DMA_UNMAP_FLAG_VADDR)),
      Errno.EBUSY,
    );
  });

  it("unaligned iova, ALL with a range, size 0, unaligned size and wrap are EINVAL", () => {
    const f = new Type1Fixture();
    assert.equal(
      E(() => f.unmap(0x800, PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.unmap(0x800, 0, VFIO_DMA_UNMAP_FLAG_ALL)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.unmap(0, PAGE_SIZE, VFIO_DMA_UNMAP_FLAG_ALL)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.unmap(PAGE_SIZE, 0, VFIO_DMA_UNMAP_FLAG_ALL)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.unmap(0, 0)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.unmap(0, 100)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.unmap(U64_MAX - 4095n, 2 * PAGE_SIZE)),
      Errno.EINVAL,
    );
  });

  it("GET_DIRTY_BITMAP without dirty tracking is EINVAL", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    const ram = f.ram(MiB);
    f.map(0, ram, PAGE_SIZE);
    const bm = f.ram(PAGE_SIZE);
    assert.equal(
      E(() => f.unmapDirty(0, PAGE_SIZE, bm, 8)),
      Errno.EINVAL,
    );
    assert.equal(f.backend.stats().mappings, 1);
  });

  it("a failing unmap does not write back the size", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    const ram = f.ram(MiB);
    f.map(0, ram, 2 * PAGE_SIZE);
    const buf = f.unmapArg(PAGE_SIZE, PAGE_SIZE);
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_UNMAP_DMA, buf)),
      Errno.EINVAL,
    );
    assert.equal(VfioIommuType1DmaUnmap.getNumber(buf, "size"), PAGE_SIZE);
  });
});

describe("UNMAP semantics", () => {
  function threeMappings(ext: number): Type1Fixture {
    const f = new Type1Fixture({ ext });
    f.emulatedGroup();
    const ram = f.ram(4 * MiB);
    f.map(0x100000, ram, MiB); // [1M, 2M)
    f.map(0x200000, ram + MiB, MiB); // [2M, 3M)
    f.map(0x400000, ram + 2 * MiB, MiB); // [4M, 5M)
    return f;
  }

  it("v2: a range that bisects a mapping at either end is EINVAL and changes nothing", () => {
    const f = threeMappings(VFIO_TYPE1v2_IOMMU);
    assert.equal(
      E(() => f.unmap(0x180000, MiB)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.unmap(0x100000, 0x180000)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.unmap(0x0, 0x180000)),
      Errno.EINVAL,
    );
    assert.equal(f.backend.stats().mappings, 3);
  });

  it("v2: whole mappings go, holes are fine, the bytes unmapped are written back", () => {
    const f = threeMappings(VFIO_TYPE1v2_IOMMU);
    assert.equal(f.unmap(0x100000, 2 * MiB), 2 * MiB);
    assert.equal(f.backend.stats().mappings, 1);
    assert.equal(f.unmap(0, 8 * MiB), MiB);
    assert.equal(f.backend.stats().mappings, 0);
  });

  it("v2: a range with no mapping succeeds with size 0", () => {
    const f = threeMappings(VFIO_TYPE1v2_IOMMU);
    assert.equal(f.unmap(0x300000, MiB), 0);
    assert.equal(f.backend.stats().mappings, 3);
  });

  it("v1: a range starting inside a mapping unmaps nothing and succeeds with size 0", () => {
    const f = threeMappings(VFIO_TYPE1_IOMMU);
    assert.equal(f.unmap(0x180000, 3 * MiB), 0);
    assert.equal(f.backend.stats().mappings, 3);
  });

  it("v1: a range covering a mapping's first page removes the whole mapping (size may exceed the request)", () => {
    const f = threeMappings(VFIO_TYPE1_IOMMU);
    assert.equal(f.unmap(0x100000, PAGE_SIZE), MiB);
    assert.equal(f.unmap(0x200000, 0x201000), 2 * MiB);
    assert.equal(f.backend.stats().mappings, 0);
  });

  it("UNMAP_ALL removes everything on v1 and v2 and writes back the total", () => {
    for (const ext of [VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU]) {
      const f = threeMappings(ext);
      assert.equal(f.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL), 3 * MiB);
      assert.equal(f.backend.stats().mappings, 0);
      assert.equal(f.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL), 0);
    }
  });

  it("a huge v2 range reaching past 2^53 is compared exactly and unmaps what lies below", () => {
    const f = threeMappings(VFIO_TYPE1v2_IOMMU);
    assert.equal(f.unmap(0, 1n << 63n), 3 * MiB);
  });
});

describe("VFIO_IOMMU_GET_INFO", () => {
  it("EFAULT for a short buffer, EINVAL for argsz below 16", () => {
    const f = new Type1Fixture();
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_GET_INFO, new Uint8Array(15))),
      Errno.EFAULT,
    );
    assert.equal(
      E(() => f.info(15)),
      Errno.EINVAL,
    );
  });

  it("argsz 16: page sizes, CAPS flag, argsz raised, nothing written past 16 bytes", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    const buf = new Uint8Array(64).fill(0xaa);
    VfioIommuType1Info.set(buf, "argsz", 16);
    f.backend.ioctl(VFIO_IOMMU_GET_INFO, buf);
    assert.equal(readU32LE(buf, 4), VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    assert.equal(readU64LE(buf, 8), 0xffff_ffff_ffff_f000n);
    // 24 info + 32 migration + 16 dma_avail (padded from 12); no IOVA_RANGE without an IOMMU domain.
    assert.equal(readU32LE(buf, 0), 72);
    assert.ok(buf.subarray(16).every((b) => b === 0xaa));
  });

  it("argsz between 24 and the chain size: argsz raised, cap_offset 0, no chain", () => {
    const f = new Type1Fixture();
    const buf = new Uint8Array(64).fill(0xaa);
    VfioIommuType1Info.set(buf, "argsz", 40);
    f.backend.ioctl(VFIO_IOMMU_GET_INFO, buf);
    assert.equal(readU32LE(buf, 0), 72);
    assert.equal(readU32LE(buf, 16), 0);
    assert.ok(buf.subarray(24).every((b) => b === 0xaa));
  });

  it("argsz larger than the buffer it points at faults when the chain is copied", () => {
    const f = new Type1Fixture();
    const buf = new Uint8Array(40);
    VfioIommuType1Info.set(buf, "argsz", 4096);
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_GET_INFO, buf)),
      Errno.EFAULT,
    );
  });

  it("emulated-only container: MIGRATION and DMA_AVAIL, no IOVA_RANGE", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    const buf = f.info();
    const off = VfioIommuType1Info.getNumber(buf, "cap_offset");
    assert.equal(off, 24);
    const mig = findCap(buf, off, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION)!;
    assert.equal(mig.offset, 24);
    const m = VfioIommuType1InfoCapMigration.decode(mig.bytes);
    assert.equal(m.pgsize_bitmap, 4096n);
    assert.equal(m.max_dirty_bitmap_size, 268435456n);
    assert.equal(m.flags, 0);
    const avail = findCap(buf, off, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)!;
    assert.equal(avail.offset, 56);
    assert.equal(VfioIommuType1InfoDmaAvail.decode(avail.bytes).avail, 65535);
    assert.equal(avail.next, 0);
    assert.equal(findCap(buf, off, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE), undefined);
  });

  it("IOMMU-backed group: VT-d page sizes and the aperture minus the MSI window as IOVA ranges", () => {
    const f = new Type1Fixture();
    f.iommuGroup();
    const buf = f.info();
    assert.equal(VfioIommuType1Info.get(buf, "iova_pgsizes"), BigInt(PAGE_SIZE | (2 * MiB) | G));
    const cap = findCap(buf, 24, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)!;
    assert.equal(cap.offset, 72);
    const { nr_iovas, ranges } = decodeIovaRangeCap(cap.bytes);
    assert.equal(nr_iovas, 2);
    assert.deepEqual(
      ranges.map((r) => [r.start, r.end]),
      [
        [0n, 0xfedfffffn],
        [0xfef00000n, (1n << 48n) - 1n],
      ],
    );
    assert.equal(readU32LE(buf, 0), 1024);
  });

  it("after the last IOMMU group leaves, the ranges are the whole 64-bit space, as the kernel rebuilds them", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    const { group } = f.iommuGroup();
    f.backend.detachGroup(group);
    const buf = f.info();
    assert.equal(VfioIommuType1Info.get(buf, "iova_pgsizes"), 0xffff_ffff_ffff_f000n);
    const { ranges } = decodeIovaRangeCap(findCap(buf, 24, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)!.bytes);
    assert.deepEqual(
      ranges.map((r) => [r.start, r.end]),
      [[0n, U64_MAX]],
    );
  });
});

describe("VFIO_UPDATE_VADDR", () => {
  function setup() {
    const f = new Type1Fixture();
    f.iommuGroup();
    const ram = f.ram(4 * MiB);
    f.map(0, ram, MiB);
    f.map(MiB, ram + MiB, MiB);
    return { f, ram };
  }

  it("UNMAP with VADDR invalidates without unmapping and reports the bytes; MAP with VADDR restores", () => {
    const { f, ram } = setup();
    assert.equal(f.unmap(0, 2 * MiB, VFIO_DMA_UNMAP_FLAG_VADDR), 2 * MiB);
    assert.equal(f.backend.stats().vaddrInvalid, 2);
    assert.equal(f.backend.stats().mappings, 2);
    assert.equal(f.backend.stats().iommuPinnedPages, 512);
    assert.equal(f.map(0, ram + 2 * MiB, MiB, VFIO_DMA_MAP_FLAG_VADDR), 0);
    assert.equal(f.backend.mappings()[0]!.vaddr, ram + 2 * MiB);
    assert.equal(f.backend.stats().vaddrInvalid, 1);
  });

  it("MAP with VADDR: ENOENT without a mapping, EINVAL when still valid or not matching exactly", () => {
    const { f, ram } = setup();
    assert.equal(
      E(() => f.map(8 * MiB, ram, MiB, VFIO_DMA_MAP_FLAG_VADDR)),
      Errno.ENOENT,
    );
    assert.equal(
      E(() => f.map(0, ram, MiB, VFIO_DMA_MAP_FLAG_VADDR)),
      Errno.EINVAL,
    );
    f.unmap(0, MiB, VFIO_DMA_UNMAP_FLAG_VADDR);
    assert.equal(
      E(() => f.map(0, ram, PAGE_SIZE, VFIO_DMA_MAP_FLAG_VADDR)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.map(0, ram, 2 * MiB, VFIO_DMA_MAP_FLAG_VADDR)),
      Errno.EINVAL,
    );
  });

  it("invalidating a mapping twice is EINVAL and undoes that call's other invalidations", () => {
    const { f } = setup();
    f.unmap(MiB, MiB, VFIO_DMA_UNMAP_FLAG_VADDR);
    assert.equal(
      E(() => f.unmap(0, 2 * MiB, VFIO_DMA_UNMAP_FLAG_VADDR)),
      Errno.EINVAL,
    );
    const maps = f.backend.mappings();
    assert.equal(maps[0]!.vaddrInvalid, false);
    assert.equal(maps[1]!.vaddrInvalid, true);
    assert.equal(f.backend.stats().vaddrInvalid, 1);
  });

  it("UNMAP_ALL with VADDR invalidates everything", () => {
    const { f } = setup();
    assert.equal(f.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_VADDR), 2 * MiB);
    assert.equal(f.backend.stats().vaddrInvalid, 2);
  });

  it("while a vaddr is invalid: attach is EBUSY, pinning and vfio_dma_rw are EBUSY; a real unmap clears it", () => {
    const { f } = setup();
    const dev = new FakeMdev("mdev-a", () => f.backend);
    f.backend.registerDevice(dev);
    f.unmap(0, MiB, VFIO_DMA_UNMAP_FLAG_VADDR);
    assert.equal(
      E(() => f.emulatedGroup()),
      Errno.EBUSY,
    );
    assert.equal(
      E(() => dev.pin(MiB)),
      Errno.EBUSY,
    );
    assert.equal(
      E(() => f.backend.dmaRw(iova(MiB), new Uint8Array(4), false)),
      Errno.EBUSY,
    );
    assert.equal(f.unmap(0, MiB), MiB);
    assert.equal(f.backend.stats().vaddrInvalid, 0);
    assert.deepEqual(dev.pin(MiB).length, 1);
  });
});

describe("MAP/UNMAP flag plumbing", () => {
  it("READ-only and WRITE-only mappings are accepted and keep their protection", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    const ram = f.ram(MiB);
    f.map(0, ram, PAGE_SIZE, VFIO_DMA_MAP_FLAG_READ);
    f.map(PAGE_SIZE, ram, PAGE_SIZE, VFIO_DMA_MAP_FLAG_WRITE);
    assert.deepEqual(
      f.backend.mappings().map((m) => m.prot),
      [1, 2],
    );
  });
});
