/**
 * Test fixture for the type1 backend (used by the tests and the benchmark, not exported by the folder's index): a
 * Host, a VMM process with anonymous "guest RAM", a type1 backend opened by it, and byte-level ioctl helpers that
 * build arguments with the uapi codecs exactly as a VMM would.
 *
 * It drives the backend directly through the VfioIommuBackend interface, without vfio-core, so that each test sees
 * Linux's errno of the backend and nothing in between.
 */
import { type Hva, type Iova, iova, KernelError, PAGE_SIZE, type Pfn, TraceRecorder } from "../../core/index.ts";
import { type Bdf, Host, type HostOptions, PROT_READ, PROT_WRITE, type Process, parseBdf } from "../../host/index.ts";
import type { VfioEmulatedDevice, VfioGroupAttachment } from "../driver.ts";
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_IOMMU_DIRTY_PAGES,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_TYPE1v2_IOMMU,
  VfioBitmap,
  VfioIommuType1DirtyBitmap,
  VfioIommuType1DirtyBitmapGet,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
} from "../uapi/index.ts";
import { type Type1Backend, type Type1Options, type1Driver } from "./type1.ts";

export const RW = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
export const MiB = 1024 * 1024;

export interface FixtureOptions {
  readonly ext?: number;
  readonly host?: HostOptions;
  readonly rlimitMemlockBytes?: number;
  readonly capIpcLock?: boolean;
  readonly dmaEntryLimit?: number;
  /** Record trace events (costs time; off for benchmarks). */
  readonly trace?: boolean;
}

export class Type1Fixture {
  readonly host: Host;
  readonly vmm: Process;
  readonly backend: Type1Backend;
  readonly recorder: TraceRecorder | undefined;
  private nextGroup = 1000;
  private nextBdf = 1;

  constructor(opts: FixtureOptions = {}) {
    this.host = new Host({ memoryBytes: 4 * 1024 * MiB, ...opts.host });
    this.recorder = opts.trace === false ? undefined : new TraceRecorder(this.host.tracer);
    this.vmm = this.host.spawn("qemu", {
      rlimitMemlockBytes: opts.rlimitMemlockBytes ?? Number.POSITIVE_INFINITY,
      capIpcLock: opts.capIpcLock ?? false,
    });
    const driverOpts: Type1Options = {
      iommu: this.host.iommu,
      physmem: this.host.physmem,
      tracer: this.host.tracer,
      ...(opts.dmaEntryLimit !== undefined ? { dmaEntryLimit: opts.dmaEntryLimit } : {}),
    };
    this.backend = type1Driver(driverOpts).open(opts.ext ?? VFIO_TYPE1v2_IOMMU, this.vmm.mm);
  }

  get mm() {
    return this.vmm.mm;
  }

  /** Anonymous read-write memory in the VMM ("guest RAM"). */
  ram(bytes: number, prot = PROT_READ | PROT_WRITE): Hva {
    return this.mm.mmap(bytes, prot, { name: "guest-ram" });
  }

  /** An emulated (mdev) group with one device name; attached. */
  emulatedGroup(device = `mdev-${this.nextGroup}`): VfioGroupAttachment {
    const g: VfioGroupAttachment = { id: this.nextGroup++, type: "emulated", devices: [device] };
    this.backend.attachGroup(g);
    return g;
  }

  /** A PCI device behind the host IOMMU in a new group; attached as an IOMMU-backed group. */
  iommuGroup(opts: { reserved?: { start: number; end: number }[]; attach?: boolean } = {}): {
    group: VfioGroupAttachment;
    bdf: Bdf;
  } {
    const bdf = parseBdf(`0000:01:${(this.nextBdf++).toString(16).padStart(2, "0")}.0`);
    const id = this.host.iommu.addDevice(bdf, {
      reservedRegions: (opts.reserved ?? []).map((r) => ({ ...r, type: "reserved" as const })),
    });
    const group: VfioGroupAttachment = { id, type: "iommu", devices: [bdf] };
    if (opts.attach !== false) this.backend.attachGroup(group);
    return { group, bdf };
  }

  // ---- ioctls at the byte level ----

  mapArg(iovaAddr: number | bigint, vaddr: number | bigint, size: number | bigint, flags = RW, argsz = 32): Uint8Array {
    const buf = VfioIommuType1DmaMap.encode({ argsz, flags, vaddr, iova: iovaAddr, size });
    return buf;
  }

  map(iovaAddr: number | bigint, vaddr: number | bigint, size: number | bigint, flags = RW): number {
    return this.backend.ioctl(VFIO_IOMMU_MAP_DMA, this.mapArg(iovaAddr, vaddr, size, flags));
  }

  unmapArg(iovaAddr: number | bigint, size: number | bigint, flags = 0, argsz = 24): Uint8Array {
    return VfioIommuType1DmaUnmap.encode({ argsz, flags, iova: iovaAddr, size });
  }

  /** UNMAP_DMA; returns the size written back. */
  unmap(iovaAddr: number | bigint, size: number | bigint, flags = 0): number {
    const buf = this.unmapArg(iovaAddr, size, flags);
    this.backend.ioctl(VFIO_IOMMU_UNMAP_DMA, buf);
    return VfioIommuType1DmaUnmap.getNumber(buf, "size");
  }

  /** UNMAP_DMA with GET_DIRTY_BITMAP into user memory at `data`. */
  unmapDirty(iovaAddr: number, size: number, data: number, bitmapSize: number, pgsize = PAGE_SIZE): number {
    const buf = new Uint8Array(48);
    VfioIommuType1DmaUnmap.encode({ argsz: 48, flags: 1, iova: iovaAddr, size }, buf);
    VfioBitmap.encode({ pgsize, size: bitmapSize, data }, buf, 24);
    this.backend.ioctl(VFIO_IOMMU_UNMAP_DMA, buf);
    return VfioIommuType1DmaUnmap.getNumber(buf, "size");
  }

  dirty(flags: number, argsz = 8): number {
    return this.backend.ioctl(VFIO_IOMMU_DIRTY_PAGES, VfioIommuType1DirtyBitmap.encode({ argsz, flags }));
  }

  getBitmapArg(
    iovaAddr: number | bigint,
    size: number | bigint,
    data: number | bigint,
    bitmapSize: number | bigint,
    pgsize: number | bigint = PAGE_SIZE,
    argsz = 48,
  ): Uint8Array {
    const buf = new Uint8Array(48);
    VfioIommuType1DirtyBitmap.encode({ argsz, flags: VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP }, buf);
    VfioIommuType1DirtyBitmapGet.encode(
      { iova: iovaAddr, size, bitmap_pgsize: pgsize, bitmap_size: bitmapSize, bitmap_data: data },
      buf,
      8,
    );
    return buf;
  }

  /** GET_BITMAP into fresh user memory; returns the bitmap bytes read back from the VMM. */
  getBitmap(iovaAddr: number, size: number): Uint8Array {
    const bytes = Math.ceil(size / PAGE_SIZE / 64) * 8;
    const data = this.ram(Math.max(bytes, PAGE_SIZE));
    this.backend.ioctl(VFIO_IOMMU_DIRTY_PAGES, this.getBitmapArg(iovaAddr, size, data, bytes));
    const out = new Uint8Array(bytes);
    this.mm.read(data, out);
    return out;
  }

  info(argsz = 1024): Uint8Array {
    const buf = new Uint8Array(Math.max(argsz, 16));
    new DataView(buf.buffer).setUint32(0, argsz, true);
    this.backend.ioctl(VFIO_IOMMU_GET_INFO, buf);
    return buf;
  }

  /** The errno a call throws, or 0 if it returns. */
  static errno(fn: () => unknown): number {
    try {
      fn();
      return 0;
    } catch (e) {
      if (e instanceof KernelError) return e.errno;
      throw e;
    }
  }
}

/** An mdev-like device that records dma_unmap calls and, by default, unpins what it pinned in the range. */
export class FakeMdev implements VfioEmulatedDevice {
  readonly unmaps: { iova: number; length: number }[] = [];
  /** Pages this device pinned (iova -> times pinned), as a vendor driver's gfn cache would hold them. */
  readonly pinned = new Map<number, number>();
  /** When false the device ignores dma_unmap (the misbehaving vendor driver). */
  cooperative = true;

  constructor(
    readonly name: string,
    private readonly backend: () => Type1Backend,
  ) {}

  pin(addr: number, npage = 1, prot = 3): Pfn[] {
    const pfns = this.backend().pinPages(this, iova(addr), npage, prot);
    for (let i = 0; i < npage; i++) {
      const a = addr + i * PAGE_SIZE;
      this.pinned.set(a, (this.pinned.get(a) ?? 0) + 1);
    }
    return pfns;
  }

  unpin(addr: number, npage = 1): void {
    this.backend().unpinPages(this, iova(addr), npage);
    for (let i = 0; i < npage; i++) {
      const a = addr + i * PAGE_SIZE;
      const n = (this.pinned.get(a) ?? 0) - 1;
      if (n > 0) this.pinned.set(a, n);
      else this.pinned.delete(a);
    }
  }

  dmaUnmap(at: Iova, length: number): void {
    this.unmaps.push({ iova: at, length });
    if (!this.cooperative) return;
    for (const [a, n] of [...this.pinned]) {
      if (a < at || a >= at + length) continue;
      for (let k = 0; k < n; k++) this.backend().unpinPages(this, iova(a), 1);
      this.pinned.delete(a);
    }
  }
}
