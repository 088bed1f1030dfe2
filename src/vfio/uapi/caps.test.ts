import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, KernelError } from "../../core/index.ts";
import {
  buildCapChain,
  capChainSize,
  decodeIovaRangeCap,
  decodeSparseMmapCap,
  deviceInfoReply,
  dmaAvailCap,
  findCap,
  infoCap,
  infoWithCaps,
  iommuInfoReply,
  iovaRangeCap,
  migrationCap,
  msixMappableCap,
  parseCapChain,
  regionInfoReply,
  regionTypeCap,
  sparseMmapCap,
} from "./caps.ts";
import {
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from "./constants.ts";
import {
  VfioDeviceInfo,
  VfioIommuType1Info,
  VfioIommuType1InfoCapMigration,
  VfioIommuType1InfoDmaAvail,
  VfioRegionInfo,
  VfioRegionInfoCapType,
} from "./structs.ts";

const hexOf = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const golden = (s: string): string => s.replace(/[\s|]+/g, "");

function einval(pattern: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof KernelError, `expected KernelError, got ${String(e)}`);
    assert.equal(e.errno, Errno.EINVAL);
    assert.match(e.message, pattern);
    return true;
  };
}

const RWM = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;
const barCaps = () => [
  sparseMmapCap([
    { offset: 0, size: 0x1000 },
    { offset: 0x3000, size: 0x1000 },
  ]),
  msixMappableCap(),
];

describe("region info with capabilities", () => {
  it("chain placed after the info, 8-byte aligned, next offsets from the start of the buffer (golden)", () => {
    const reply = regionInfoReply({ flags: RWM, index: 0, size: 0x4000, offset: 0 }, barCaps(), 0x100);
    assert.equal(
      hexOf(reply),
      golden(`00010000 0f000000 00000000 20000000 0040000000000000 0000000000000000 |
              0100 0100 50000000 02000000 00000000 0000000000000000 0010000000000000 0030000000000000 0010000000000000 |
              0300 0100 00000000`),
    );
  });

  it("buffer too small: CAPS set, argsz raised to the size needed, cap_offset 0, no chain", () => {
    const reply = regionInfoReply({ flags: RWM, index: 0, size: 0x4000, offset: 0 }, barCaps(), 32);
    assert.equal(reply.length, 32);
    const info = VfioRegionInfo.decode(reply);
    assert.equal(info.argsz, 32 + 48 + 8);
    assert.equal(info.flags, RWM | VFIO_REGION_INFO_FLAG_CAPS);
    assert.equal(info.cap_offset, 0);
    assert.equal(info.size, 0x4000n);
    // The retry with the argsz the kernel asked for gets the chain.
    const retry = regionInfoReply({ flags: RWM, index: 0, size: 0x4000, offset: 0 }, barCaps(), info.argsz);
    assert.equal(retry.length, info.argsz);
    assert.equal(VfioRegionInfo.decode(retry).cap_offset, 32);
    const sparse = findCap(retry, 32, VFIO_REGION_INFO_CAP_SPARSE_MMAP);
    assert.ok(sparse);
    assert.deepEqual(decodeSparseMmapCap(sparse.bytes), {
      nr_areas: 2,
      areas: [
        { offset: 0n, size: 0x1000n },
        { offset: 0x3000n, size: 0x1000n },
      ],
    });
    assert.ok(findCap(retry, 32, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE));
    assert.equal(findCap(retry, 32, VFIO_REGION_INFO_CAP_TYPE), undefined);
  });

  it("without capabilities: the info alone, flags untouched", () => {
    const reply = regionInfoReply({ flags: RWM, index: 7, size: 256, offset: 7 * 2 ** 40 }, [], 64);
    assert.equal(reply.length, 32);
    assert.deepEqual(VfioRegionInfo.decode(reply), {
      argsz: 64,
      flags: RWM,
      index: 7,
      cap_offset: 0,
      size: 256n,
      offset: 7n << 40n,
    });
  });

  it("a device-specific region's TYPE capability", () => {
    const reply = regionInfoReply(
      { flags: VFIO_REGION_INFO_FLAG_READ, index: 9, size: 0x2000, offset: 9 * 2 ** 40 },
      [regionTypeCap(0x80008086, 1)],
      48,
    );
    const cap = findCap(reply, VfioRegionInfo.get(reply, "cap_offset"), VFIO_REGION_INFO_CAP_TYPE);
    assert.ok(cap);
    assert.deepEqual(VfioRegionInfoCapType.decode(cap.bytes), {
      id: 2,
      version: 1,
      next: 0,
      type: 0x80008086,
      subtype: 1,
    });
  });
});

describe("device info and type1 info", () => {
  it("device info: argsz 16 (minsz) sees the raised argsz and CAPS in the 16 bytes copied back", () => {
    const reply = deviceInfoReply(
      { flags: VFIO_DEVICE_FLAGS_PCI, num_regions: 9, num_irqs: 5 },
      [infoCap(5, 1, new Uint8Array(8))],
      16,
    );
    assert.equal(reply.length, 16);
    assert.equal(hexOf(reply), golden("28000000 82000000 09000000 05000000"));
    const full = deviceInfoReply({ flags: VFIO_DEVICE_FLAGS_PCI, num_regions: 9, num_irqs: 5 }, [], 24);
    assert.equal(VfioDeviceInfo.decode(full).flags & VFIO_DEVICE_FLAGS_CAPS, 0);
  });

  it("type1 info: MIGRATION, DMA_AVAIL (12 bytes padded to 16), IOVA_RANGE chained from offset 24", () => {
    const caps = [
      migrationCap({ flags: 0, pgsize_bitmap: 0x1000, max_dirty_bitmap_size: 256 * 2 ** 20 }),
      dmaAvailCap(65534),
      iovaRangeCap([
        { start: 0, end: 0xfedfffff },
        { start: 0xfef00000, end: 2n ** 48n - 1n },
      ]),
    ];
    assert.equal(capChainSize(caps), 32 + 16 + 48);
    const reply = iommuInfoReply({ flags: VFIO_IOMMU_INFO_PGSIZES, iova_pgsizes: 0x40201000 }, caps, 4096);
    assert.equal(reply.length, 24 + 96);
    const info = VfioIommuType1Info.decode(reply);
    assert.equal(info.flags, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
    assert.equal(info.argsz, 4096);
    assert.equal(info.cap_offset, 24);
    const chain = parseCapChain(reply, info.cap_offset);
    assert.deepEqual(
      chain.map((c) => [c.id, c.version, c.offset, c.next, c.bytes.length]),
      [
        [VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 1, 24, 56, 32],
        [VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, 56, 72, 16],
        [VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 1, 72, 0, 48],
      ],
    );
    assert.equal(hexOf(reply.subarray(68, 72)), "00000000", "padding after dma_avail is zero");
    assert.equal(VfioIommuType1InfoDmaAvail.decode(chain[1]!.bytes).avail, 65534);
    assert.equal(VfioIommuType1InfoCapMigration.decode(chain[0]!.bytes).max_dirty_bitmap_size, 256n << 20n);
    assert.deepEqual(decodeIovaRangeCap(chain[2]!.bytes).ranges, [
      { start: 0n, end: 0xfedfffffn },
      { start: 0xfef00000n, end: 2n ** 48n - 1n },
    ]);
  });

  it("type1 info too small: 16-byte argsz gets argsz 120 and CAPS, no cap_offset", () => {
    const reply = iommuInfoReply({ flags: VFIO_IOMMU_INFO_PGSIZES, iova_pgsizes: 0x1000 }, [dmaAvailCap(1)], 16);
    assert.equal(hexOf(reply), golden("28000000 03000000 0010000000000000"));
  });
});

describe("chains", () => {
  const capArb = fc
    .record({
      id: fc.integer({ min: 0, max: 0xffff }),
      version: fc.integer({ min: 0, max: 0xffff }),
      body: fc.uint8Array({ maxLength: 40 }),
    })
    .map(({ id, version, body }) => ({ id, version, body, bytes: infoCap(id, version, body) }));

  it("property: what infoWithCaps builds, parseCapChain reads back (ids, versions, bodies, zero padding)", () => {
    fc.assert(
      fc.property(fc.array(capArb, { minLength: 1, maxLength: 6 }), (caps) => {
        const needed = VfioRegionInfo.sizeof + capChainSize(caps.map((c) => c.bytes));
        const reply = infoWithCaps(
          VfioRegionInfo,
          { argsz: 0, flags: 1, index: 3, cap_offset: 0, size: 1, offset: 2 },
          caps.map((c) => c.bytes),
          needed,
          VFIO_REGION_INFO_FLAG_CAPS,
        );
        assert.equal(reply.length, needed);
        const parsed = parseCapChain(reply, VfioRegionInfo.get(reply, "cap_offset"));
        assert.equal(parsed.length, caps.length);
        parsed.forEach((p, i) => {
          const c = caps[i]!;
          assert.equal(p.offset % 8, 0);
          assert.deepEqual([p.id, p.version], [c.id, c.version]);
          assert.deepEqual(p.bytes.subarray(8, 8 + c.body.length), c.body);
          assert.ok(p.bytes.subarray(8 + c.body.length).every((b) => b === 0));
          assert.equal(p.bytes.length, Math.ceil(c.bytes.length / 8) * 8);
        });
      }),
      { numRuns: 200 },
    );
  });

  it("property: any argsz below the size needed gets min(argsz, sizeof) bytes, argsz raised, no chain", () => {
    fc.assert(
      fc.property(fc.array(capArb, { minLength: 1, maxLength: 4 }), fc.nat(), (caps, r) => {
        const bytes = caps.map((c) => c.bytes);
        const needed = VfioRegionInfo.sizeof + capChainSize(bytes);
        const argsz = VfioRegionInfo.minsz + (r % (needed - VfioRegionInfo.minsz));
        const reply = regionInfoReply({ flags: 0, index: 0, size: 0, offset: 0 }, bytes, argsz);
        assert.equal(reply.length, Math.min(argsz, VfioRegionInfo.sizeof));
        const info = VfioRegionInfo.decode(reply);
        assert.deepEqual([info.argsz, info.cap_offset, info.flags], [needed, 0, VFIO_REGION_INFO_FLAG_CAPS]);
      }),
      { numRuns: 200 },
    );
  });

  it("buildCapChain honours base and writes into a buffer at an offset", () => {
    const into = new Uint8Array(64).fill(0xee);
    buildCapChain([infoCap(1, 1, new Uint8Array([9])), infoCap(2, 1)], 100, into, 8);
    assert.equal(hexOf(into.subarray(8, 32)), golden("0100 0100 74000000 09000000 00000000 | 0200 0100 00000000"));
    assert.equal(into[7], 0xee);
    assert.equal(into[32], 0xee);
    assert.throws(() => buildCapChain([new Uint8Array(4)], 0), einval(/capability 0 has 4 bytes/));
    assert.throws(() => buildCapChain([infoCap(1, 1)], 0, new Uint8Array(4)), einval(/needs 8 bytes/));
  });

  it("rejects corrupt chains: loops, headers past the end, next beyond the buffer", () => {
    const loop = new Uint8Array(48);
    buildCapChain([infoCap(1, 1), infoCap(2, 1)], 24, loop, 24);
    loop[36] = 24; // second cap's next points back at the first
    assert.throws(() => parseCapChain(loop, 24), einval(/offset 32 has next 24, which does not move forward/));
    assert.throws(
      () => parseCapChain(new Uint8Array(28), 24),
      einval(/vfio_info_cap_header at offset 24 needs 8 bytes/),
    );
    const far = new Uint8Array(40);
    buildCapChain([infoCap(1, 1), infoCap(2, 1)], 24, far, 24);
    far[28] = 200;
    assert.throws(() => parseCapChain(far, 24), einval(/next 200, beyond the 40-byte buffer/));
    assert.deepEqual(parseCapChain(new Uint8Array(8), 0), []);
  });
});
