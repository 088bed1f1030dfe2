/**
 * The DMA API (include/linux/dma-mapping.h) as a host driver uses it: dma_map_page, dma_unmap_page, dma_map_sg,
 * dma_unmap_sg, dma_alloc_coherent, dma_free_coherent, for one device.
 *
 * Where the device sits behind a paging ('dma') IOMMU domain this is iommu-dma (drivers/iommu/dma-iommu.c): an IOVA
 * comes from the domain's IOVA allocator (Linux's iova.c semantics, created on first use with the domain's reserved
 * regions, such as the MSI window, carved out), the IOMMU maps IOVA -> frame with the permissions the direction
 * implies, and unmapping flushes the IOTLB (strict mode; lazy flush queues are not modelled). PCI devices get a 32-bit
 * IOVA first when their mask allows more (the "SAC first" rule) unless `forceDac` is set. With the IOMMU disabled or
 * an identity domain it is dma-direct: the DMA address is the host-physical address, and one above the device's DMA
 * mask fails (there is no swiotlb bounce buffering in the model).
 *
 * This is the API the seed names: the vendor driver calls `mapPage(page)` on a pinned guest page and programs the
 * resulting IOVA into the GPU's page table, in the very IOVA space the host graphics driver allocates from.
 *
 * Like a kernel built with CONFIG_DMA_API_DEBUG, every mapping is tracked: unmapping something never mapped, with the
 * wrong size or direction, or twice, is a KernelError naming the device and address, never silent corruption.
 */

import type { SchedulingClock } from "../core/index.ts";
import {
  defineTraceEvents,
  Errno,
  type Hpa,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type Tracer,
} from "../core/index.ts";
import type { CostMeter } from "../cost/index.ts";
import type { Bdf } from "./bdf.ts";
import { IOMMU_READ, IOMMU_WRITE } from "./io-pgtable.ts";
import type { Iommu, IommuDomain } from "./iommu.ts";
import { IovaDomain } from "./iova.ts";
import type { PhysicalMemory } from "./physmem.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "dma.map": { bdf: string; iova: number; hpa: number; size: number; dir: string };
    "dma.unmap": { bdf: string; iova: number; size: number; dir: string };
    "dma.alloc_coherent": { bdf: string; iova: number; hpa: number; size: number };
    "dma.free_coherent": { bdf: string; iova: number; size: number };
    "dma.map_error": { bdf: string; size: number; reason: string };
  }
}
defineTraceEvents("host", {
  "dma.map": "{bdf}: dma_map {size} bytes at hpa {hpa} -> iova {iova} ({dir})",
  "dma.unmap": "{bdf}: dma_unmap {size} bytes at iova {iova} ({dir})",
  "dma.alloc_coherent": "{bdf}: dma_alloc_coherent {size} bytes: hpa {hpa}, iova {iova}",
  "dma.free_coherent": "{bdf}: dma_free_coherent {size} bytes at iova {iova}",
  "dma.map_error": "{bdf}: DMA mapping of {size} bytes failed: {reason}",
});

/** enum dma_data_direction */
export const DmaDirection = {
  BIDIRECTIONAL: 0,
  TO_DEVICE: 1,
  FROM_DEVICE: 2,
} as const;
export type DmaDirection = (typeof DmaDirection)[keyof typeof DmaDirection];
const DIR_NAMES = ["bidirectional", "to-device", "from-device"] as const;

/** One entry of a scatterlist: a piece of a frame. */
export interface SgEntry {
  readonly pfn: Pfn;
  readonly offset: number;
  readonly length: number;
}

/** A mapped scatterlist segment (sg_dma_address, sg_dma_len). */
export interface DmaSegment {
  readonly iova: Iova;
  readonly length: number;
}

export interface CoherentBuffer {
  /** First of `pages` physically contiguous frames (the kernel's virtual address is its HPA in this model). */
  readonly pfn: Pfn;
  readonly pages: number;
  readonly dmaAddr: Iova;
  readonly size: number;
}

interface Tracked {
  size: number;
  dir: DmaDirection;
  /** IOVA pages reserved (0 for dma-direct). */
  iovaPages: number;
  kind: "single" | "sg" | "coherent";
}

export interface DmaDeviceOptions {
  readonly bdf: Bdf;
  readonly iommu: Iommu;
  readonly physmem: PhysicalMemory;
  readonly tracer: Tracer;
  readonly clock: SchedulingClock;
  /** DMA mask width in bits (dma_set_mask); default 64. */
  readonly dmaMaskBits?: number;
  /** iommu.forcedac: skip the 32-bit-first attempt. */
  readonly forceDac?: boolean;
  /** Owner tag for frames dma_alloc_coherent allocates (for the isolation checker). */
  readonly owner?: number;
  /** Simulated CPU for the IOVA rcache (default 0). */
  readonly cpu?: number;
  /** Counts DMA API calls and, through the IOVA allocator it creates, IOVA work (default: the IOMMU's meter). */
  readonly meter?: CostMeter;
}

const DMA32_LIMIT = 2 ** 32 - 1;

/** The DMA API bound to one device (what `struct device *` selects in Linux). */
export class DmaDevice {
  readonly bdf: Bdf;
  private readonly iommu: Iommu;
  private readonly physmem: PhysicalMemory;
  private readonly tracer: Tracer;
  private readonly clock: SchedulingClock;
  private readonly mask: number;
  private readonly forceDac: boolean;
  private readonly owner: number;
  private readonly cpu: number;
  private readonly live = new Map<number, Tracked>();
  private readonly meter: CostMeter;
  private liveBytes = 0;

  constructor(opts: DmaDeviceOptions) {
    this.bdf = opts.bdf;
    this.iommu = opts.iommu;
    this.physmem = opts.physmem;
    this.tracer = opts.tracer;
    this.clock = opts.clock;
    this.meter = opts.meter ?? opts.iommu.meter;
    const bits = opts.dmaMaskBits ?? 64;
    if (!Number.isInteger(bits) || bits < 24 || bits > 64) {
      throw new KernelError(
        Errno.EIO,
        `dma_set_mask(${bits} bits) for ${opts.bdf}: masks below 24 bits are not supported`,
      );
    }
    this.mask = bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
    this.forceDac = opts.forceDac ?? false;
    this.owner = opts.owner ?? 0;
    this.cpu = opts.cpu ?? 0;
  }

  /** True when DMA addresses are IOVAs translated by a paging domain (false: dma-direct, IOVA = HPA). */
  get translated(): boolean {
    return this.iommu.enabled && this.iommu.domainOf(this.bdf).type === "dma";
  }

  /** Bytes currently mapped through this device's DMA API (single, sg and coherent). */
  mappedBytes(): number {
    return this.liveBytes;
  }

  /** Number of live mappings. */
  mappings(): number {
    return this.live.size;
  }

  // ---- streaming mappings ----------------------------------------------------------------------------------------

  /** dma_map_page: maps [offset, offset+size) of `pfn` (which may extend into following frames) for DMA. */
  mapPage(pfn: Pfn, offset: number, size: number, dir: DmaDirection): Iova {
    this.meter.dmaApiCalls++;
    this.checkDir(dir);
    if (!Number.isSafeInteger(size) || size <= 0 || offset < 0 || !Number.isSafeInteger(offset)) {
      throw new KernelError(Errno.EINVAL, `dma_map_page on ${this.bdf}: bad offset ${offset} or size ${size}`);
    }
    const phys = pfn * PAGE_SIZE + offset;
    const iova = this.mapPhys(phys, size, dir);
    this.track(iova, { size, dir, iovaPages: this.translated ? pagesFor(phys, size) : 0, kind: "single" });
    if (this.tracer.enabled) {
      this.tracer.emit("dma.map", { bdf: this.bdf, iova, hpa: phys, size, dir: DIR_NAMES[dir] });
    }
    return iova;
  }

  /** dma_unmap_page: `iova`, `size` and `dir` must be exactly what mapPage returned and was given. */
  unmapPage(iova: Iova, size: number, dir: DmaDirection): void {
    this.meter.dmaApiCalls++;
    const t = this.untrack(iova, size, dir, "single", "dma_unmap_page");
    this.unmapIova(iova, size, t.iovaPages);
    if (this.tracer.enabled) this.tracer.emit("dma.unmap", { bdf: this.bdf, iova, size, dir: DIR_NAMES[dir] });
  }

  /**
   * dma_map_sg: with an IOMMU the whole list gets one contiguous IOVA range (each entry page-aligned inside it except
   * the first offset, as iommu_dma_map_sg lays it out) and one segment comes back; dma-direct returns one segment per
   * entry. All or nothing.
   */
  mapSg(entries: readonly SgEntry[], dir: DmaDirection): DmaSegment[] {
    this.meter.dmaApiCalls++;
    this.checkDir(dir);
    if (entries.length === 0) throw new KernelError(Errno.EINVAL, `dma_map_sg on ${this.bdf}: empty scatterlist`);
    for (const e of entries) {
      if (e.length <= 0 || e.offset < 0 || e.offset >= PAGE_SIZE) {
        throw new KernelError(
          Errno.EINVAL,
          `dma_map_sg on ${this.bdf}: entry at pfn ${hex(e.pfn)} has offset ${e.offset} length ${e.length}`,
        );
      }
    }
    if (!this.translated) {
      const out: DmaSegment[] = [];
      try {
        for (const e of entries) out.push({ iova: this.mapPage(e.pfn, e.offset, e.length, dir), length: e.length });
      } catch (err) {
        for (const s of out) this.unmapPage(s.iova, s.length, dir);
        throw err;
      }
      return out;
    }
    // One IOVA range: each entry occupies whole pages, the first keeps its offset within the first page.
    let pages = 0;
    for (const e of entries) pages += pagesFor(e.offset, e.length);
    const domain = this.domain();
    const base = this.allocIova(
      domain,
      pages,
      entries.reduce((n, e) => n + e.length, 0),
    );
    const prot = protFor(dir);
    let at = base;
    try {
      for (const e of entries) {
        const n = pagesFor(e.offset, e.length);
        domain.map(at as Iova, (e.pfn * PAGE_SIZE) as Hpa, n * PAGE_SIZE, prot);
        at += n * PAGE_SIZE;
      }
    } catch (err) {
      if (at > base) domain.unmap(base as Iova, at - base);
      this.iovad(domain).freeIovaFast(base / PAGE_SIZE, pages, this.cpu);
      throw err;
    }
    const first = entries[0]!;
    const iova = (base + first.offset) as Iova;
    const total = pages * PAGE_SIZE - first.offset;
    this.track(iova, { size: total, dir, iovaPages: pages, kind: "sg" });
    if (this.tracer.enabled) {
      this.tracer.emit("dma.map", {
        bdf: this.bdf,
        iova,
        hpa: first.pfn * PAGE_SIZE + first.offset,
        size: total,
        dir: DIR_NAMES[dir],
      });
    }
    return [{ iova, length: total }];
  }

  /** dma_unmap_sg: pass back the segments mapSg returned. */
  unmapSg(segments: readonly DmaSegment[], dir: DmaDirection): void {
    if (!this.translated) {
      for (const s of segments) this.unmapPage(s.iova, s.length, dir);
      return;
    }
    for (const s of segments) {
      const t = this.untrack(s.iova, s.length, dir, "sg", "dma_unmap_sg");
      this.unmapIova(s.iova, s.length, t.iovaPages);
      if (this.tracer.enabled) {
        this.tracer.emit("dma.unmap", { bdf: this.bdf, iova: s.iova, size: s.length, dir: DIR_NAMES[dir] });
      }
    }
  }

  // ---- coherent allocations ----------------------------------------------------------------------------------------

  /** dma_alloc_coherent: zeroed, physically contiguous frames mapped bidirectionally. */
  allocCoherent(size: number): CoherentBuffer {
    this.meter.dmaApiCalls++;
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new KernelError(Errno.EINVAL, `dma_alloc_coherent on ${this.bdf}: bad size ${size}`);
    }
    const pages = Math.ceil(size / PAGE_SIZE);
    const pfn = this.physmem.allocContiguous(pages, this.owner);
    let dmaAddr: Iova;
    try {
      dmaAddr = this.mapPhys(pfn * PAGE_SIZE, pages * PAGE_SIZE, DmaDirection.BIDIRECTIONAL);
    } catch (err) {
      for (let k = 0; k < pages; k++) this.physmem.put((pfn + k) as Pfn);
      throw err;
    }
    this.track(dmaAddr, {
      size: pages * PAGE_SIZE,
      dir: DmaDirection.BIDIRECTIONAL,
      iovaPages: this.translated ? pages : 0,
      kind: "coherent",
    });
    if (this.tracer.enabled) {
      this.tracer.emit("dma.alloc_coherent", {
        bdf: this.bdf,
        iova: dmaAddr,
        hpa: pfn * PAGE_SIZE,
        size: pages * PAGE_SIZE,
      });
    }
    return { pfn, pages, dmaAddr, size: pages * PAGE_SIZE };
  }

  dmaFreeCoherent(buf: CoherentBuffer): void {
    this.meter.dmaApiCalls++;
    const t = this.untrack(buf.dmaAddr, buf.size, DmaDirection.BIDIRECTIONAL, "coherent", "dma_free_coherent");
    this.unmapIova(buf.dmaAddr, buf.size, t.iovaPages);
    for (let k = 0; k < buf.pages; k++) this.physmem.put((buf.pfn + k) as Pfn);
    if (this.tracer.enabled)
      this.tracer.emit("dma.free_coherent", { bdf: this.bdf, iova: buf.dmaAddr, size: buf.size });
  }

  // ---- internals -----------------------------------------------------------------------------------------------

  private domain(): IommuDomain {
    return this.iommu.domainOf(this.bdf);
  }

  /** The domain's IOVA allocator, created on first use (iommu_dma_init_domain) with reserved regions carved out. */
  private iovad(domain: IommuDomain): IovaDomain {
    if (domain.cookie instanceof IovaDomain) return domain.cookie;
    const iovad = new IovaDomain({
      startPfn: Math.max(1, Math.ceil(domain.aperture.start / PAGE_SIZE)),
      clock: this.clock,
      tracer: this.tracer,
      name: `domain${domain.id}`,
      meter: this.meter,
    });
    for (const g of domain.groups()) {
      for (const r of this.iommu.groupReservedRegions(g)) {
        iovad.reserveIova(Math.floor(r.start / PAGE_SIZE), Math.floor(r.end / PAGE_SIZE));
      }
    }
    domain.cookie = iovad;
    return iovad;
  }

  private allocIova(domain: IommuDomain, pages: number, bytes: number): number {
    const iovad = this.iovad(domain);
    const limit = Math.min(this.mask, domain.aperture.end);
    let pfn = 0;
    if (!this.forceDac && limit > DMA32_LIMIT) {
      pfn = iovad.allocIovaFast(pages, Math.floor(DMA32_LIMIT / PAGE_SIZE), false, this.cpu);
    }
    if (pfn === 0) pfn = iovad.allocIovaFast(pages, Math.floor(limit / PAGE_SIZE), true, this.cpu);
    if (pfn === 0) {
      const reason = `IOVA space below ${hex(limit + 1)} exhausted (${pages} page(s) wanted)`;
      if (this.tracer.enabled) this.tracer.emit("dma.map_error", { bdf: this.bdf, size: bytes, reason });
      throw new KernelError(Errno.ENOMEM, `DMA mapping of ${bytes} bytes for ${this.bdf} failed: ${reason}`);
    }
    return pfn * PAGE_SIZE;
  }

  private mapPhys(phys: number, size: number, dir: DmaDirection): Iova {
    if (!this.translated) {
      if (this.iommu.enabled && this.domain().type === "blocked") {
        throw new KernelError(Errno.EIO, `${this.bdf} is in a blocked IOMMU domain: it cannot do DMA`);
      }
      if (phys + size - 1 > this.mask) {
        const reason = `hpa ${hex(phys)} is above the ${Math.log2(this.mask + 1)}-bit DMA mask and there is no bounce buffering`;
        if (this.tracer.enabled) this.tracer.emit("dma.map_error", { bdf: this.bdf, size, reason });
        throw new KernelError(Errno.EIO, `DMA mapping for ${this.bdf} failed: ${reason}`);
      }
      return phys as Iova;
    }
    const domain = this.domain();
    const offset = phys % PAGE_SIZE;
    const pages = pagesFor(phys, size);
    const base = this.allocIova(domain, pages, size);
    try {
      domain.map(base as Iova, (phys - offset) as Hpa, pages * PAGE_SIZE, protFor(dir));
    } catch (err) {
      this.iovad(domain).freeIovaFast(base / PAGE_SIZE, pages, this.cpu);
      throw err;
    }
    return (base + offset) as Iova;
  }

  private unmapIova(iova: Iova, size: number, iovaPages: number): void {
    if (iovaPages === 0) return;
    const domain = this.domain();
    const base = iova - (iova % PAGE_SIZE);
    domain.unmap(base as Iova, iovaPages * PAGE_SIZE);
    this.iovad(domain).freeIovaFast(base / PAGE_SIZE, iovaPages, this.cpu);
    void size;
  }

  private track(iova: Iova, t: Tracked): void {
    if (this.live.has(iova)) {
      throw new Error(`DMA API: ${this.bdf} got IOVA ${hex(iova)} twice (allocator bug)`);
    }
    this.live.set(iova, t);
    this.liveBytes += t.size;
  }

  private untrack(iova: Iova, size: number, dir: DmaDirection, kind: Tracked["kind"], op: string): Tracked {
    const t = this.live.get(iova);
    if (!t) {
      throw new KernelError(
        Errno.EINVAL,
        `${op} on ${this.bdf}: DMA address ${hex(iova)} is not mapped (never mapped, or already unmapped)`,
      );
    }
    if (t.kind !== kind) {
      throw new KernelError(Errno.EINVAL, `${op} on ${this.bdf}: ${hex(iova)} was mapped by a ${t.kind} mapping`);
    }
    if (t.size !== size) {
      throw new KernelError(
        Errno.EINVAL,
        `${op} on ${this.bdf}: ${hex(iova)} was mapped with size ${t.size}, unmapped with ${size}`,
      );
    }
    if (t.dir !== dir) {
      throw new KernelError(
        Errno.EINVAL,
        `${op} on ${this.bdf}: ${hex(iova)} was mapped ${DIR_NAMES[t.dir]}, unmapped ${DIR_NAMES[dir] ?? dir}`,
      );
    }
    this.live.delete(iova);
    this.liveBytes -= t.size;
    return t;
  }

  private checkDir(dir: number): void {
    if (dir !== 0 && dir !== 1 && dir !== 2) {
      throw new KernelError(
        Errno.EINVAL,
        `DMA direction ${dir} on ${this.bdf} is not BIDIRECTIONAL, TO_DEVICE or FROM_DEVICE`,
      );
    }
  }
}

function pagesFor(phys: number, size: number): number {
  const first = Math.floor(phys / PAGE_SIZE);
  const last = Math.floor((phys + size - 1) / PAGE_SIZE);
  return last - first + 1;
}

/** TO_DEVICE: the device reads memory; FROM_DEVICE: it writes memory. */
function protFor(dir: DmaDirection): number {
  return dir === DmaDirection.TO_DEVICE
    ? IOMMU_READ
    : dir === DmaDirection.FROM_DEVICE
      ? IOMMU_WRITE
      : IOMMU_READ | IOMMU_WRITE;
}
