/**
 * Type1 pinning: nothing pinned at MAP for emulated groups, vfio_pin_pages/unpin_pages with their errors and
 * reference counts, locked memory accounting (ENOMEM, pages counted once), IOMMU-backed groups (full pinning, domain
 * programming, replay, undo on failure, reserved regions), dma_unmap notifications and the misbehaving device,
 * vfio_dma_rw, release.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, formatTrace, hva, iova, KernelError, PAGE_SIZE } from "../../core/index.ts";
import { PROT_READ } from "../../host/index.ts";
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_VADDR,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_VADDR,
  VFIO_TYPE1_IOMMU,
} from "../uapi/index.ts";
import { FakeMdev, MiB, Type1Fixture } from "./testing.ts";

const E = Type1Fixture.errno;
const TiB = 1024 * 1024 * MiB;

function withMdev(opts: ConstructorParameters<typeof Type1Fixture>[0] = {}) {
  const f = new Type1Fixture(opts);
  const g = f.emulatedGroup("mdev-a");
  const dev = new FakeMdev("mdev-a", () => f.backend);
  f.backend.registerDevice(dev);
  return { f, g, dev };
}

describe("emulated (mdev) container", () => {
  it("MAP_DMA pins nothing, charges nothing, faults nothing in", () => {
    const { f } = withMdev();
    const ram = f.ram(64 * MiB);
    f.map(0, ram, 64 * MiB);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.mm.residentIn(ram, 64 * MiB), 0);
    assert.equal(f.backend.stats().mappedBytes, 64 * MiB);
  });

  it("MAP_DMA of 1 TiB for a mediated device touches no page and costs no memory", () => {
    const { f } = withMdev({ trace: false });
    const ram = f.mm.mmap(TiB, 3, { name: "guest-ram" });
    f.map(0, ram, TiB);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0, "nothing pinned at MAP_DMA: the vendor driver pins on demand");
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.mm.stats().residentPages, 0);
    assert.equal(f.backend.stats().mappedBytes, TiB);
  });

  it("vfio_pin_pages pins on demand, returns the page's frame, and counts references", () => {
    const { f, dev } = withMdev();
    const ram = f.ram(MiB);
    f.map(0x100000, ram, MiB);
    const [p] = dev.pin(0x100000 + 5 * PAGE_SIZE);
    assert.equal(p, f.mm.translate(hva(ram + 5 * PAGE_SIZE)));
    assert.equal(f.host.physmem.pinCount(p!), 1);
    assert.equal(f.mm.lockedVm(), 1);
    const [q] = dev.pin(0x100000 + 5 * PAGE_SIZE);
    assert.equal(q, p);
    assert.equal(f.host.physmem.pinCount(p!), 1, "a second pin is a reference, not another page pin");
    assert.equal(f.backend.mappings()[0]!.pins[0]!.refCount, 2);
    dev.unpin(0x100000 + 5 * PAGE_SIZE);
    assert.equal(f.host.physmem.pinCount(p!), 1);
    assert.equal(f.mm.lockedVm(), 1);
    dev.unpin(0x100000 + 5 * PAGE_SIZE);
    assert.equal(f.host.physmem.pinCount(p!), 0);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.backend.stats().emulatedPinnedPages, 0);
  });

  it("pins several pages across two adjacent mappings", () => {
    const { f, dev } = withMdev();
    const ram = f.ram(MiB);
    f.map(0, ram, 2 * PAGE_SIZE);
    f.map(2 * PAGE_SIZE, ram + 8 * PAGE_SIZE, 2 * PAGE_SIZE);
    const pfns = dev.pin(PAGE_SIZE, 2);
    assert.deepEqual(pfns, [f.mm.translate(hva(ram + PAGE_SIZE)), f.mm.translate(hva(ram + 8 * PAGE_SIZE))]);
    assert.equal(f.mm.lockedVm(), 2);
  });

  it("pin errors in order: EINVAL npage 0, E2BIG > 512, EACCES v1, EINVAL no device, EINVAL unmapped, EPERM", () => {
    const { f, dev } = withMdev();
    const ram = f.ram(MiB);
    f.map(0, ram, PAGE_SIZE, VFIO_DMA_MAP_FLAG_READ);
    assert.equal(
      E(() => dev.pin(0, 0)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => dev.pin(0, 513)),
      Errno.E2BIG,
    );
    assert.equal(dev.pin(0, 1, 1).length, 1);
    assert.equal(
      E(() => dev.pin(0, 1, 3)),
      Errno.EPERM,
    );
    assert.equal(
      E(() => dev.pin(PAGE_SIZE, 1, 1)),
      Errno.EINVAL,
    );
    f.backend.unregisterDevice(dev);
    assert.equal(
      E(() => dev.pin(0, 1, 1)),
      Errno.EINVAL,
    );

    const v1 = new Type1Fixture({ ext: VFIO_TYPE1_IOMMU });
    v1.emulatedGroup("mdev-b");
    const d1 = new FakeMdev("mdev-b", () => v1.backend);
    v1.backend.registerDevice(d1);
    v1.map(0, v1.ram(MiB), PAGE_SIZE);
    assert.equal(
      E(() => d1.pin(0, 600)),
      Errno.E2BIG,
    );
    assert.equal(
      E(() => d1.pin(0)),
      Errno.EACCES,
    );
  });

  it("when several checks fail, the first in vfio_pin_pages' order decides", () => {
    const v1 = new Type1Fixture({ ext: VFIO_TYPE1_IOMMU });
    const nobody = new FakeMdev("mdev-x", () => v1.backend);
    // No device registered, v1, nothing mapped: npage 0 -> EINVAL, too many -> E2BIG, then v1 -> EACCES.
    assert.equal(
      E(() => nobody.pin(0, 0)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => nobody.pin(0, 513)),
      Errno.E2BIG,
    );
    assert.equal(
      E(() => nobody.pin(0, 1)),
      Errno.EACCES,
    );
    // v2 with an invalidated vaddr, no device registered, nothing mapped at the IOVA: EBUSY first.
    const v2 = new Type1Fixture();
    v2.iommuGroup();
    v2.map(0, v2.ram(MiB), PAGE_SIZE);
    v2.unmap(0, PAGE_SIZE, VFIO_DMA_UNMAP_FLAG_VADDR);
    const other = new FakeMdev("mdev-y", () => v2.backend);
    assert.equal(
      E(() => other.pin(8 * PAGE_SIZE)),
      Errno.EBUSY,
    );
    v2.map(0, v2.ram(MiB), PAGE_SIZE, VFIO_DMA_MAP_FLAG_VADDR);
    assert.equal(
      E(() => other.pin(0)),
      Errno.EINVAL,
      "no device registered for dma_unmap",
    );
  });

  it("a write pin of a write-only mapping works; a read pin of it is EPERM", () => {
    const { f, dev } = withMdev();
    f.map(0, f.ram(MiB), PAGE_SIZE, VFIO_DMA_MAP_FLAG_WRITE);
    assert.equal(dev.pin(0, 1, 2).length, 1);
    assert.equal(
      E(() => dev.pin(0, 1, 1)),
      Errno.EPERM,
    );
  });

  it("a failure part way unpins what this call pinned and leaves earlier pins alone", () => {
    const { f, dev } = withMdev();
    const ram = f.ram(MiB);
    f.map(0, ram, 4 * PAGE_SIZE);
    const [p0] = dev.pin(0);
    assert.equal(
      E(() => f.backend.pinPages(dev, iova(0), 6, 3)),
      Errno.EINVAL,
    );
    const m = f.backend.mappings()[0]!;
    assert.deepEqual(
      m.pins.map((p) => [p.iova, p.refCount]),
      [[0, 1]],
    );
    assert.equal(f.host.physmem.pinCount(p0!), 1);
    assert.equal(f.mm.lockedVm(), 1);
    assert.equal(f.mm.stats().pinnedPages, 1);
  });

  it("a mapping whose vaddr has no memory behind it fails the pin with EFAULT", () => {
    const { f, dev } = withMdev();
    f.map(0, 0x10000, PAGE_SIZE);
    assert.equal(
      E(() => dev.pin(0)),
      Errno.EFAULT,
    );
    assert.equal(f.mm.lockedVm(), 0);
  });

  it("ENOMEM past RLIMIT_MEMLOCK, stated with the limit; nothing of the call remains; CAP_IPC_LOCK bypasses", () => {
    const { f, dev } = withMdev({ rlimitMemlockBytes: 2 * PAGE_SIZE });
    f.map(0, f.ram(MiB), 8 * PAGE_SIZE);
    dev.pin(0);
    let err: unknown;
    try {
      f.backend.pinPages(dev, iova(PAGE_SIZE), 3, 3);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof KernelError && err.errno === Errno.ENOMEM);
    assert.match((err as Error).message, /RLIMIT_MEMLOCK exceeded/);
    assert.match((err as Error).message, /limit is 2 page\(s\) \(8192 bytes\)/);
    assert.equal(f.mm.lockedVm(), 2 - 1, "only the earlier pin stays charged");
    assert.equal(f.backend.stats().emulatedPinnedPages, 1);
    assert.equal(f.mm.stats().pinnedPages, 1);
    f.mm.setCapIpcLock(true);
    assert.equal(f.backend.pinPages(dev, iova(PAGE_SIZE), 3, 3).length, 3);
    assert.equal(f.mm.lockedVm(), 4);
  });

  it("vfio_unpin_pages of an unmapped IOVA is a WARN that stops there, not an error", () => {
    const { f, dev } = withMdev();
    f.map(0, f.ram(MiB), 2 * PAGE_SIZE);
    dev.pin(0, 2);
    f.backend.unpinPages(dev, iova(PAGE_SIZE), 3);
    assert.equal(f.backend.stats().emulatedPinnedPages, 1);
    assert.equal(f.backend.stats().warnings, 1);
    f.backend.unpinPages(dev, iova(0), 0);
    assert.equal(f.backend.stats().warnings, 2);
    // Unpinning a page that is not pinned does nothing.
    f.backend.unpinPages(dev, iova(PAGE_SIZE), 1);
    assert.equal(f.backend.stats().warnings, 2);
    assert.equal(f.backend.stats().emulatedPinnedPages, 1);
  });
});

describe("IOMMU-backed group", () => {
  it("MAP_DMA pins every page, charges it, and programs the domain: the IOMMU translates IOVA to the page", () => {
    const f = new Type1Fixture();
    const { bdf } = f.iommuGroup();
    const ram = f.ram(4 * MiB);
    f.map(0x1000_0000, ram, 4 * MiB);
    assert.equal(f.mm.lockedVm(), 1024);
    assert.equal(f.mm.stats().pinnedPages, 1024);
    for (const k of [0, 1, 511, 512, 1023]) {
      const hpa = f.host.iommu.translate(bdf, iova(0x1000_0000 + k * PAGE_SIZE + 12), 1);
      assert.equal(hpa, f.mm.translate(hva(ram + k * PAGE_SIZE))! * PAGE_SIZE + 12);
    }
    assert.equal(f.host.iommu.translate(bdf, iova(0x1000_0000 + 4 * MiB), 1), -1);
    f.backend.checkInvariants();
    assert.equal(f.unmap(0x1000_0000, 4 * MiB), 4 * MiB);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
    assert.equal(f.host.iommu.translate(bdf, iova(0x1000_0000), 1), -1);
    assert.equal(f.backend.iommuDomain()!.pgtable!.stats().mappedBytes, 0);
  });

  it("a read-only mapping is mapped read-only in the domain", () => {
    const f = new Type1Fixture();
    const { bdf } = f.iommuGroup();
    const ram = f.ram(MiB);
    f.map(0, ram, PAGE_SIZE, VFIO_DMA_MAP_FLAG_READ);
    assert.notEqual(f.host.iommu.translate(bdf, iova(0), 1), -1);
    assert.equal(f.host.iommu.translate(bdf, iova(0), 2), -1);
  });

  it("physically contiguous frames are mapped as one run (superpages where alignment allows)", () => {
    const f = new Type1Fixture();
    f.iommuGroup();
    // Frames come from the sparse allocator in order, so fresh anonymous memory is contiguous.
    const ram = f.ram(8 * MiB);
    f.map(0x4000_0000, ram, 8 * MiB);
    const runs = f.backend.mappings()[0]!;
    assert.equal(runs.iommuPinnedPages, 2048);
    const pt = f.backend.iommuDomain()!.pgtable!.stats();
    assert.equal(pt.mappedBytes, 8 * MiB);
  });

  it("a failure part way (a hole in the VMM's memory) undoes the whole mapping", () => {
    const f = new Type1Fixture();
    const { bdf } = f.iommuGroup();
    const ram = f.ram(4 * MiB);
    f.mm.munmap(hva(ram + 3 * MiB), PAGE_SIZE);
    assert.equal(
      E(() => f.map(0, ram, 4 * MiB)),
      Errno.EFAULT,
    );
    assert.equal(f.backend.stats().mappings, 0);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.mm.stats().pinnedPages, 0);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
    assert.equal(f.host.iommu.translate(bdf, iova(0), 1), -1);
    assert.equal(f.backend.iommuDomain()!.pgtable!.stats().mappedBytes, 0);
    assert.equal(f.backend.stats().dmaAvail, 65535);
  });

  it("a writable mapping of read-only memory fails with EFAULT and leaves nothing", () => {
    const f = new Type1Fixture();
    f.iommuGroup();
    const ram = f.ram(MiB, PROT_READ);
    assert.equal(
      E(() => f.map(0, ram, MiB)),
      Errno.EFAULT,
    );
    assert.equal(f.map(0, ram, MiB, VFIO_DMA_MAP_FLAG_READ), 0);
  });

  it("ENOMEM past RLIMIT_MEMLOCK undoes the mapping; CAP_IPC_LOCK bypasses the limit", () => {
    const f = new Type1Fixture({ rlimitMemlockBytes: MiB });
    f.iommuGroup();
    const ram = f.ram(4 * MiB);
    let err: unknown;
    try {
      f.map(0, ram, 4 * MiB);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof KernelError && err.errno === Errno.ENOMEM);
    assert.match((err as Error).message, /RLIMIT_MEMLOCK exceeded.*limit is 256 page\(s\) \(1048576 bytes\)/);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
    assert.equal(f.backend.stats().mappings, 0);
    assert.equal(f.map(0, ram, MiB), 0, "exactly the limit fits");
    f.mm.setCapIpcLock(true);
    assert.equal(f.map(MiB, ram + MiB, 3 * MiB), 0);
    assert.equal(f.mm.lockedVm(), 1024);
  });

  it("a second IOMMU group shares the domain and adds its reserved regions to the excluded ranges", () => {
    const f = new Type1Fixture();
    const a = f.iommuGroup();
    const domain = f.backend.iommuDomain()!;
    const ram = f.ram(MiB);
    f.map(0, ram, MiB);
    const b = f.iommuGroup({ reserved: [{ start: 0x8000_0000, end: 0x8fff_ffff }] });
    assert.equal(f.backend.iommuDomain(), domain);
    assert.equal(f.host.iommu.domainOf(b.bdf), domain);
    assert.notEqual(f.host.iommu.translate(b.bdf, iova(0), 1), -1, "existing mappings reach the new group");
    assert.equal(
      E(() => f.map(0x8000_0000, ram, PAGE_SIZE)),
      Errno.EINVAL,
    );
    f.backend.detachGroup(b.group);
    assert.equal(f.map(0x8000_0000, ram, PAGE_SIZE), 0, "its reserved region is usable again");
    assert.equal(f.host.iommu.domainOf(a.bdf), domain);
    assert.equal(f.host.iommu.domainOf(b.bdf), f.host.iommu.group(b.group.id).defaultDomain);
  });

  it("a group whose reserved region overlaps an existing mapping is refused with EINVAL and left detached", () => {
    const f = new Type1Fixture();
    f.iommuGroup();
    f.map(0x8000_0000, f.ram(MiB), MiB);
    const b = f.iommuGroup({ attach: false, reserved: [{ start: 0x8000_0000, end: 0x8000_0fff }] });
    assert.equal(
      E(() => f.backend.attachGroup(b.group)),
      Errno.EINVAL,
    );
    assert.equal(f.host.iommu.domainOf(b.bdf), f.host.iommu.group(b.group.id).defaultDomain);
    assert.deepEqual(f.backend.stats().iommuGroups.length, 1);
  });

  it("attaching to a container whose mdev mappings include the MSI window is EINVAL; the domain is freed", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    f.map(0xfee00000, f.ram(MiB), MiB);
    const domainsBefore = f.host.iommu.domains().length;
    const b = f.iommuGroup({ attach: false });
    assert.equal(
      E(() => f.backend.attachGroup(b.group)),
      Errno.EINVAL,
    );
    assert.equal(f.host.iommu.domains().length, domainsBefore + 1, "only the new group's default domain was added");
    assert.equal(f.backend.iommuDomain(), undefined);
    assert.equal(f.backend.stats().iovaRanges, "(any)");
  });

  it("replaying a mapping beyond the aperture fails as iommu_map does (EFAULT) and undoes the replay", () => {
    const f = new Type1Fixture();
    f.emulatedGroup();
    const ram = f.ram(2 * MiB);
    f.map(0, ram, MiB);
    f.map(2 ** 49, ram + MiB, MiB);
    const b = f.iommuGroup({ attach: false });
    assert.equal(
      E(() => f.backend.attachGroup(b.group)),
      Errno.EFAULT,
    );
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.backend.mappings()[0]!.iommuMapped, false);
  });

  it("an existing emulated container is replayed into the domain when an IOMMU group arrives", () => {
    const { f, dev } = withMdev();
    const ram = f.ram(MiB);
    f.map(0, ram, 16 * PAGE_SIZE);
    const [p] = dev.pin(3 * PAGE_SIZE);
    assert.equal(f.mm.lockedVm(), 1);
    const { bdf } = f.iommuGroup();
    assert.equal(f.mm.lockedVm(), 16, "the page pinned both ways counts once");
    assert.equal(f.host.physmem.pinCount(p!), 2);
    assert.equal(f.host.iommu.translate(bdf, iova(3 * PAGE_SIZE), 2), p! * PAGE_SIZE);
    f.backend.checkInvariants();
  });

  it("detaching the last IOMMU group keeps mdev pins and their charge only", () => {
    const { f, dev } = withMdev();
    const { group, bdf } = f.iommuGroup();
    const domain = f.backend.iommuDomain()!;
    f.map(0, f.ram(MiB), 16 * PAGE_SIZE);
    assert.equal(f.mm.lockedVm(), 16);
    dev.pin(0, 4);
    assert.equal(f.mm.lockedVm(), 16, "already charged by the IOMMU path");
    f.backend.detachGroup(group);
    assert.equal(f.mm.lockedVm(), 4);
    assert.equal(f.mm.stats().pinnedPages, 4);
    assert.equal(domain.freed, true);
    assert.equal(f.host.iommu.translate(bdf, iova(0), 1), -1);
    f.backend.checkInvariants();
    dev.unpin(0, 4);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
  });

  it("detaching the last group of any kind removes every mapping", () => {
    const f = new Type1Fixture();
    const { group } = f.iommuGroup();
    f.map(0, f.ram(MiB), MiB);
    f.backend.detachGroup(group);
    assert.equal(f.backend.stats().mappings, 0);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
  });
});

describe("UNMAP with pages pinned by emulated devices", () => {
  it("calls every registered device's dma_unmap with the mapping's range; the device unpins; the unmap completes", () => {
    const { f, dev } = withMdev();
    const other = new FakeMdev("mdev-b", () => f.backend);
    f.backend.registerDevice(other);
    const ram = f.ram(MiB);
    f.map(0, ram, 8 * PAGE_SIZE);
    f.map(8 * PAGE_SIZE, ram, 8 * PAGE_SIZE);
    dev.pin(PAGE_SIZE, 2);
    dev.pin(PAGE_SIZE);
    assert.equal(f.unmap(0, 16 * PAGE_SIZE), 16 * PAGE_SIZE);
    assert.deepEqual(dev.unmaps, [{ iova: 0, length: 8 * PAGE_SIZE }]);
    assert.deepEqual(other.unmaps, [{ iova: 0, length: 8 * PAGE_SIZE }]);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
    assert.equal(f.recorder!.count("vfio.type1.dma_unmap.notify"), 2);
  });

  it("a device that keeps its pins gets 11 notifications, then the unmap fails loudly naming it", () => {
    const { f, dev } = withMdev();
    const good = new FakeMdev("mdev-good", () => f.backend);
    f.backend.registerDevice(good);
    const ram = f.ram(MiB);
    f.map(0, ram, 4 * PAGE_SIZE);
    f.map(4 * PAGE_SIZE, ram, 4 * PAGE_SIZE);
    good.pin(0);
    dev.pin(4 * PAGE_SIZE, 2);
    dev.cooperative = false;
    let err: unknown;
    try {
      f.unmap(0, 8 * PAGE_SIZE);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof KernelError && err.errno === Errno.EBUSY);
    assert.match((err as Error).message, /mdev-a \(2\)/);
    assert.match((err as Error).message, /2 page\(s\) pinned after 11 dma_unmap notifications/);
    assert.equal(dev.unmaps.length, 11 + 1, "one for the first mapping, 11 for the stuck one");
    const stuck = f.recorder!.named("vfio.type1.dma_unmap.stuck");
    assert.equal(stuck.length, 1);
    assert.deepEqual(stuck[0]!.fields.devices, ["mdev-a (2)"]);
    // The first mapping went; the stuck one stays with its pins.
    assert.deepEqual(
      f.backend.mappings().map((m) => [m.iova, m.emulatedPinnedPages]),
      [[4 * PAGE_SIZE, 2]],
    );
    assert.equal(f.mm.lockedVm(), 2);
    // Once the device behaves, the unmap goes through.
    dev.cooperative = true;
    assert.equal(f.unmap(4 * PAGE_SIZE, 4 * PAGE_SIZE), 4 * PAGE_SIZE);
    assert.equal(f.mm.lockedVm(), 0);
  });

  it("a device callback that throws is a warning; the retry logic still decides", () => {
    const { f, dev } = withMdev();
    f.map(0, f.ram(MiB), PAGE_SIZE);
    dev.pin(0);
    let calls = 0;
    const thrower = {
      name: "mdev-throws",
      dmaUnmap: () => {
        calls++;
        throw new KernelError(Errno.EIO, "boom");
      },
    };
    f.backend.registerDevice(thrower);
    assert.equal(f.unmap(0, PAGE_SIZE), PAGE_SIZE);
    assert.equal(calls, 1);
    assert.equal(f.backend.stats().warnings, 1);
  });
});

describe("vfio_dma_rw", () => {
  it("copies through the VMM's memory, across mappings, without pinning", () => {
    const { f } = withMdev();
    const ram = f.ram(MiB);
    f.map(0, ram, 2 * PAGE_SIZE);
    f.map(2 * PAGE_SIZE, ram + 2 * PAGE_SIZE, 2 * PAGE_SIZE);
    const data = new Uint8Array(3 * PAGE_SIZE).map((_, i) => i & 0xff);
    f.backend.dmaRw(iova(PAGE_SIZE - 7), data, true);
    const back = new Uint8Array(3 * PAGE_SIZE);
    f.mm.read(hva(ram + PAGE_SIZE - 7), back);
    assert.deepEqual(back, data);
    const via = new Uint8Array(3 * PAGE_SIZE);
    f.backend.dmaRw(iova(PAGE_SIZE - 7), via, false);
    assert.deepEqual(via, data);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
  });

  it("EINVAL empty or unmapped, EPERM by protection, EFAULT when the VMM's memory is not there", () => {
    const { f } = withMdev();
    const ram = f.ram(MiB);
    f.map(0, ram, PAGE_SIZE, VFIO_DMA_MAP_FLAG_READ);
    f.map(PAGE_SIZE, ram, PAGE_SIZE, VFIO_DMA_MAP_FLAG_WRITE);
    f.map(2 * PAGE_SIZE, 0x10000, PAGE_SIZE);
    const b = new Uint8Array(16);
    assert.equal(
      E(() => f.backend.dmaRw(iova(0), new Uint8Array(0), false)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.backend.dmaRw(iova(8 * PAGE_SIZE), b, false)),
      Errno.EINVAL,
    );
    assert.equal(
      E(() => f.backend.dmaRw(iova(0), b, true)),
      Errno.EPERM,
    );
    assert.equal(
      E(() => f.backend.dmaRw(iova(PAGE_SIZE), b, false)),
      Errno.EPERM,
      "any access needs READ",
    );
    assert.equal(
      E(() => f.backend.dmaRw(iova(PAGE_SIZE), b, true)),
      Errno.EPERM,
    );
    assert.equal(
      E(() => f.backend.dmaRw(iova(2 * PAGE_SIZE), b, false)),
      Errno.EFAULT,
    );
    assert.equal(
      E(() => f.backend.dmaRw(iova(PAGE_SIZE - 8), b, false)),
      Errno.EPERM,
      "the copy runs into the write-only one",
    );
  });
});

describe("release", () => {
  it("undoes every mapping, pin and charge, and frees the domain", () => {
    const { f, dev } = withMdev();
    const { bdf, group } = f.iommuGroup();
    const domain = f.backend.iommuDomain()!;
    f.map(0, f.ram(MiB), MiB);
    dev.pin(0, 8);
    assert.equal(f.mm.stats().pinnedPages, 256 + 8);
    f.backend.release();
    assert.equal(f.backend.stats().mappings, 0);
    assert.equal(f.mm.lockedVm(), 0);
    assert.equal(f.mm.stats().pinnedPages, 0);
    assert.equal(f.host.physmem.stats().pinnedFrames, 0);
    assert.equal(domain.freed, true);
    assert.equal(f.host.iommu.domainOf(bdf), f.host.iommu.group(group.id).defaultDomain);
    assert.ok(f.backend.stats().warnings >= 1, "pins still held at release are a warning");
    f.backend.release();
  });
});

describe("trace", () => {
  it("names every state change with its fields, and every declared format renders", () => {
    const { f, dev } = withMdev();
    const { group } = f.iommuGroup();
    const ram = f.ram(MiB);
    f.map(0, ram, 4 * PAGE_SIZE);
    dev.pin(0);
    dev.unpin(0);
    dev.pin(PAGE_SIZE);
    assert.equal(
      E(() => f.map(0, ram, PAGE_SIZE)),
      Errno.EEXIST,
    );
    f.unmap(0, 4 * PAGE_SIZE);
    f.backend.detachGroup(group);
    f.backend.release();
    const r = f.recorder!;
    const map = r.named("vfio.type1.map")[0]!.fields;
    assert.deepEqual(
      { iova: map.iova, vaddr: map.vaddr, size: map.size, prot: map.prot, pinned: map.pinned },
      { iova: 0, vaddr: ram, size: 4 * PAGE_SIZE, prot: "rw", pinned: 4 },
    );
    assert.equal(r.named("vfio.type1.pin")[0]!.fields.device, "mdev-a");
    assert.equal(r.named("vfio.type1.unpin")[0]!.fields.released, 1);
    assert.equal(r.named("vfio.type1.dma_unmap.notify")[0]!.fields.size, 4 * PAGE_SIZE);
    assert.deepEqual(r.named("vfio.type1.unmap")[0]!.fields.unmapped, 4 * PAGE_SIZE);
    assert.ok(r.count("vfio.type1.locked_vm") >= 2);
    const err = r.named("vfio.type1.error")[0]!.fields;
    assert.equal(err.errno, "EEXIST");
    assert.equal(err.op, "VFIO_IOMMU_MAP_DMA");
    assert.deepEqual(
      r.named("vfio.type1.group.attach").map((e) => e.fields.type),
      ["emulated", "iommu"],
    );
    assert.equal(r.count("vfio.type1.group.detach"), 1);
    assert.equal(r.count("vfio.type1.domain.alloc"), 1);
    assert.equal(r.count("vfio.type1.domain.free"), 1);
    assert.equal(r.count("vfio.type1.release"), 1);
    for (const rec of r.records.filter((x) => x.name.startsWith("vfio.type1."))) {
      assert.doesNotMatch(formatTrace(rec), /\{\w+\}|undefined/, rec.name);
    }
  });
});
