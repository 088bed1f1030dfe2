/**
 * VFIO_IOMMU_DIRTY_PAGES and UNMAP_DMA with GET_DIRTY_BITMAP: argument checks in the kernel's order, what counts as
 * dirty (pinned pages, vfio_dma_rw writes, everything an IOMMU group without selective pinning reaches), the bitmap's
 * placement in user memory.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, iova, PAGE_SIZE } from "../../core/index.ts";
import {
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
  VFIO_TYPE1_IOMMU,
} from "../uapi/index.ts";
import { testBit } from "./dirty.ts";
import { FakeMdev, MiB, Type1Fixture } from "./testing.ts";

const E = Type1Fixture.errno;
const START = VFIO_IOMMU_DIRTY_PAGES_FLAG_START;
const STOP = VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP;
const GET = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;

function setBitsOf(bm: Uint8Array, nbits: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < nbits; i++) if (testBit(bm, i)) out.push(i);
  return out;
}

function withMdev() {
  const f = new Type1Fixture();
  f.emulatedGroup("mdev-a");
  const dev = new FakeMdev("mdev-a", () => f.backend);
  f.backend.registerDevice(dev);
  return { f, dev };
}

describe("VFIO_IOMMU_DIRTY_PAGES argument checks", () => {
  it("EACCES on a v1 container, before looking at the argument", () => {
    const f = new Type1Fixture({ ext: VFIO_TYPE1_IOMMU });
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_DIRTY_PAGES, new Uint8Array(0))),
      Errno.EACCES,
    );
  });

  it("argsz below 8, unknown flags, no flag or two flags are EINVAL", () => {
    const f = new Type1Fixture();
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_DIRTY_PAGES, new Uint8Array(7))),
      Errno.EFAULT,
    );
    assert.equal(
      E(() => f.dirty(START, 7)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.dirty(8)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.dirty(0)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.dirty(START | STOP)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.dirty(STOP | GET)),
      Errno.EINVAL,
    );
  });

  it("START and STOP are idempotent", () => {
    const f = new Type1Fixture();
    assert.equal(f.dirty(STOP), 0);
    assert.equal(f.dirty(START), 0);
    assert.equal(f.dirty(START), 0);
    assert.equal(f.backend.stats().dirtyTracking, true);
    assert.equal(f.dirty(STOP), 0);
    assert.equal(f.backend.stats().dirtyTracking, false);
  });

  it("GET_BITMAP: each malformed request is EINVAL (EFAULT for a short buffer)", () => {
    const { f } = withMdev();
    const ram = f.ram(MiB);
    f.map(0, ram, 64 * PAGE_SIZE);
    f.map(64 * PAGE_SIZE, ram, 64 * PAGE_SIZE);
    const data = f.ram(PAGE_SIZE);
    const ioctl = (b: Uint8Array) => f.backend.ioctl(VFIO_IOMMU_DIRTY_PAGES, b);
    const size = 128 * PAGE_SIZE;
    // Not started yet: the last check of all.
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, data, 16))),
      Errno.EINVAL,
    );
    f.dirty(START);
    assert.equal(ioctl(f.getBitmapArg(0, size, data, 16)), 0);
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, data, 16, PAGE_SIZE, 47))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, data, 16).subarray(0, 40))),
      Errno.EFAULT,
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0xffff_ffff_ffff_f000n, 0x2000, data, 16))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, 2n ** 63n - 8n, 16))),
      Errno.EINVAL,
      "not a user range",
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, data, 8))),
      Errno.EINVAL,
      "bitmap too small",
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, data, 0))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, data, 2 ** 28 + 8))),
      Errno.EINVAL,
      "bitmap too large",
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, data, 16, 2 * PAGE_SIZE))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0x800, size, data, 16))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, 0, data, 16))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size - 0x800, data, 16))),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(PAGE_SIZE, 63 * PAGE_SIZE, data, 16))),
      Errno.EINVAL,
      "bisects",
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, 65 * PAGE_SIZE, data, 16))),
      Errno.EINVAL,
      "bisects",
    );
    assert.equal(
      E(() => ioctl(f.getBitmapArg(0, size, 0x1000, 16))),
      Errno.EFAULT,
      "no memory at the pointer",
    );
  });
});

describe("what is dirty", () => {
  it("START marks the pages already pinned; pins during tracking mark; pinned pages stay dirty", () => {
    const { f, dev } = withMdev();
    f.map(0, f.ram(MiB), 64 * PAGE_SIZE);
    dev.pin(3 * PAGE_SIZE);
    f.dirty(START);
    dev.pin(10 * PAGE_SIZE);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 64 * PAGE_SIZE), 64), [3, 10]);
    // Unpinned since the last report: still reported once (it was pinned, so possibly written, in the interval).
    dev.unpin(10 * PAGE_SIZE);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 64 * PAGE_SIZE), 64), [3, 10]);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 64 * PAGE_SIZE), 64), [3]);
  });

  it("vfio_dma_rw writes are dirty once; reads are not", () => {
    const { f } = withMdev();
    f.map(0, f.ram(MiB), 64 * PAGE_SIZE);
    f.dirty(START);
    f.backend.dmaRw(iova(5 * PAGE_SIZE - 2), new Uint8Array(4), true);
    f.backend.dmaRw(iova(20 * PAGE_SIZE), new Uint8Array(4), false);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 64 * PAGE_SIZE), 64), [4, 5]);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 64 * PAGE_SIZE), 64), []);
  });

  it("an IOMMU group that never pinned makes its mappings wholly dirty until its device pins selectively", () => {
    const f = new Type1Fixture();
    const { bdf } = f.iommuGroup();
    const dev = new FakeMdev(bdf, () => f.backend);
    f.backend.registerDevice(dev);
    f.map(0, f.ram(MiB), 8 * PAGE_SIZE);
    f.dirty(START);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 8 * PAGE_SIZE), 8), [0, 1, 2, 3, 4, 5, 6, 7]);
    dev.pin(2 * PAGE_SIZE);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 8 * PAGE_SIZE), 8), [2]);
  });

  it("the departure of a group without selective pinning marks everything dirty", () => {
    const { f } = withMdev();
    const { group } = f.iommuGroup();
    f.map(0, f.ram(MiB), 4 * PAGE_SIZE);
    f.dirty(START);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 4 * PAGE_SIZE), 4), [0, 1, 2, 3]);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 4 * PAGE_SIZE), 4), [0, 1, 2, 3]);
    f.backend.detachGroup(group);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 4 * PAGE_SIZE), 4), [0, 1, 2, 3]);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 4 * PAGE_SIZE), 4), []);
  });

  it("mappings added while tracking get a bitmap; STOP drops them", () => {
    const { f, dev } = withMdev();
    f.dirty(START);
    f.map(0, f.ram(MiB), 4 * PAGE_SIZE);
    dev.pin(PAGE_SIZE);
    assert.deepEqual(setBitsOf(f.getBitmap(0, 4 * PAGE_SIZE), 4), [1]);
    f.dirty(STOP);
    const data = f.ram(PAGE_SIZE);
    assert.equal(
      E(() => f.backend.ioctl(VFIO_IOMMU_DIRTY_PAGES, f.getBitmapArg(0, 4 * PAGE_SIZE, data, 8))),
      Errno.EINVAL,
    );
  });
});

describe("bitmap placement", () => {
  it("each mapping lands at its page offset from the requested base; words shared by two mappings keep both", () => {
    const { f, dev } = withMdev();
    const ram = f.ram(MiB);
    // Mappings of 3, 70 and 5 pages starting at page 2: bit offsets 2, 5 and 75, none word aligned.
    f.map(2 * PAGE_SIZE, ram, 3 * PAGE_SIZE);
    f.map(5 * PAGE_SIZE, ram, 70 * PAGE_SIZE);
    f.map(75 * PAGE_SIZE, ram, 5 * PAGE_SIZE);
    f.dirty(START);
    for (const p of [2, 4, 5, 6, 66, 74, 75, 79]) dev.pin(p * PAGE_SIZE);
    const bm = f.getBitmap(0, 128 * PAGE_SIZE);
    assert.deepEqual(setBitsOf(bm, 128), [2, 4, 5, 6, 66, 74, 75, 79]);
  });

  it("UNMAP with GET_DIRTY_BITMAP reports the unmapped mappings' bits, then removes them", () => {
    const { f, dev } = withMdev();
    f.map(0, f.ram(MiB), 8 * PAGE_SIZE);
    f.map(8 * PAGE_SIZE, f.ram(MiB), 8 * PAGE_SIZE);
    f.dirty(START);
    dev.pin(PAGE_SIZE);
    dev.pin(9 * PAGE_SIZE);
    f.backend.dmaRw(iova(12 * PAGE_SIZE), new Uint8Array(1), true);
    const data = f.ram(PAGE_SIZE);
    // dev's pins are dropped by its dma_unmap callback before the bitmap is taken, but the pages were pinned while
    // tracking ran, so their bits stay set, as in the kernel.
    assert.equal(
      E(() => f.unmapDirty(0, 16 * PAGE_SIZE, data, 8, 2 * PAGE_SIZE)),
      Errno.EINVAL,
      "page size",
    );
    assert.equal(
      E(() => f.unmapDirty(0, 16 * PAGE_SIZE, data, 1)),
      Errno.EINVAL,
      "bitmap too small",
    );
    assert.equal(f.unmapDirty(0, 16 * PAGE_SIZE, data, 8), 16 * PAGE_SIZE);
    const out = new Uint8Array(8);
    f.mm.read(data, out);
    assert.deepEqual(setBitsOf(out, 16), [1, 9, 12]);
    assert.equal(f.backend.stats().mappings, 0);
  });

  it("UNMAP with GET_DIRTY_BITMAP reports pinned pages when no device unpins them first", () => {
    const f = new Type1Fixture();
    const { bdf } = f.iommuGroup();
    const dev = new FakeMdev(bdf, () => f.backend);
    f.backend.registerDevice(dev);
    f.map(0, f.ram(MiB), 8 * PAGE_SIZE);
    f.dirty(START);
    const data = f.ram(PAGE_SIZE);
    assert.equal(f.unmapDirty(0, 8 * PAGE_SIZE, data, 8), 8 * PAGE_SIZE);
    const out = new Uint8Array(8);
    f.mm.read(data, out);
    assert.deepEqual(setBitsOf(out, 8), [0, 1, 2, 3, 4, 5, 6, 7], "the IOMMU group could have written anything");
  });
});
