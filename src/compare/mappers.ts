/**
 * The vendor driver's alternatives to dma_map_page, one per design of the seed thread that programs something else
 * than a fresh IOVA into the shadow GTT. Each is a `GuestPageMapper` (vgpu/gtt.ts) installed on the GVT-g parent
 * before the VMs start, so the same vendor driver, guests and workload run under each.
 *
 * - `IdentityMapper` (design 2): the shadow GTT holds the page's HPA and the GPU's IOMMU domain maps HPA -> HPA, in
 *   the very domain where the host driver's dma_alloc_coherent keeps mapping IOVAs from iova.c. When the HPA is
 *   already an IOVA of the host's, iommu_map cannot add the identity entry; the design has no way to tell one address
 *   space from the other, so the HPA goes into the shadow GTT anyway and the GPU's DMA lands where the host's IOVA
 *   points. Each such address is recorded as a clash.
 * - `GpaMapper` (design 3): the shadow GTT holds the GPA and the domain maps GPA -> HPA. Two VMs' GPAs are the same
 *   numbers: the second VM's page cannot be mapped, its DMA reaches the first VM's frame. Recorded as clashes.
 * - `PerVmIovaMapper` (design 4): each VM gets an IOVA range from the domain's iova.c allocator (the one the host
 *   driver allocates from) covering its guest-physical span; a page's IOVA is the range base + GPA.
 *
 * Mappers never throw for a clash (the design's behaviour is the finding); they throw KernelErrors for what
 * dma_map_page would fail on (no IOVA space).
 */
import {
  defineTraceEvents,
  Errno,
  type Gfn,
  type Hpa,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type Tracer,
} from "../core/index.ts";
import { IOMMU_READ, IOMMU_WRITE, type IommuDomain, IovaDomain } from "../host/index.ts";
import type { GuestPageMapper } from "../vgpu/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "compare.clash": {
      design: string;
      address: number;
      vgpu: number;
      gfn: number;
      pfn: number;
      holder: string;
      reachesPfn: number;
    };
    "compare.iova_range": { vgpu: number; pfnLo: number; pages: number; change: string };
  }
}
defineTraceEvents("compare", {
  "compare.clash":
    "{design}: address {address} of vgpu{vgpu}'s gfn {gfn} (pfn {pfn}) is already {holder}'s: DMA to it reaches pfn {reachesPfn}",
  "compare.iova_range": "per-VM IOVA: vgpu{vgpu}'s range of {pages} page(s) at pfn {pfnLo} {change}",
});

/** One DMA address that means two things under a design. */
export interface AddressClash {
  /** The address the shadow GTT holds (an HPA, a GPA or an IOVA, by design). */
  readonly address: number;
  /** The vGPU whose guest page wanted it, and that page. */
  readonly vgpu: number;
  readonly gfn: number;
  readonly pfn: number;
  /** What holds the IOMMU entry for the address instead. */
  readonly holder: "host" | "vgpu";
  /** The vGPU holding it (holder "vgpu"). */
  readonly holderVgpu: number | undefined;
  /** The frame the GPU's DMA to `address` reaches. */
  readonly reachesPfn: number;
}

const RW = IOMMU_READ | IOMMU_WRITE;

/** What a mapper needs of the host: the GPU's current IOMMU domain. */
export type DomainOf = () => IommuDomain;

/** Design 2: HPA -> HPA in the shared domain. */
export class IdentityMapper implements GuestPageMapper {
  readonly clashes: AddressClash[] = [];
  /** Identity entries this mapper added, with their users. */
  private readonly refs = new Map<number, number>();
  /** Pages whose identity entry could not be added, with their users (the host's IOVA holds the address). */
  private readonly clashed = new Map<number, number>();

  constructor(
    private readonly domainOf: DomainOf,
    private readonly tracer?: Tracer,
  ) {}

  map(vgpu: number, gfn: Gfn, pfn: Pfn): Iova {
    const hpa = pfn * PAGE_SIZE;
    const n = this.refs.get(pfn);
    if (n !== undefined) {
      this.refs.set(pfn, n + 1);
      return hpa as Iova;
    }
    const dom = this.domainOf();
    const held = dom.iovaToPhys(hpa as Iova);
    if (held === -1) {
      dom.map(hpa as Iova, hpa as Hpa, PAGE_SIZE, RW);
      this.refs.set(pfn, 1);
    } else {
      // The host driver's IOVA `hpa` maps another frame: the identity design cannot add its entry, and programs the
      // HPA anyway (it cannot tell an HPA from an IOVA).
      this.clashed.set(pfn, (this.clashed.get(pfn) ?? 0) + 1);
      record(this.clashes, this.tracer, "identity", {
        address: hpa,
        vgpu,
        gfn,
        pfn,
        holder: "host",
        holderVgpu: undefined,
        reachesPfn: Math.floor(held / PAGE_SIZE),
      });
    }
    return hpa as Iova;
  }

  unmap(_vgpu: number, _gfn: Gfn, iova: Iova): void {
    const pfn = Math.floor(iova / PAGE_SIZE);
    const c = this.clashed.get(pfn);
    if (c !== undefined) {
      if (c > 1) this.clashed.set(pfn, c - 1);
      else this.clashed.delete(pfn);
      return;
    }
    const n = this.refs.get(pfn);
    if (n === undefined) throw new KernelError(Errno.EINVAL, `identity unmap of ${hex(iova)}: never mapped`);
    if (n > 1) {
      this.refs.set(pfn, n - 1);
      return;
    }
    this.refs.delete(pfn);
    this.domainOf().unmap(iova, PAGE_SIZE);
  }

  /** Identity entries currently held. */
  get mappedPages(): number {
    return this.refs.size;
  }
}

/** Design 3: GPA -> HPA in the device's IOMMU entry. */
export class GpaMapper implements GuestPageMapper {
  readonly clashes: AddressClash[] = [];
  /** Per GPA page: the vGPU whose entry it is, its frame and users. */
  private readonly owners = new Map<number, { vgpu: number; pfn: number; refs: number }>();
  /** Per vGPU and GPA page: users whose entry could not be added. */
  private readonly clashed = new Map<string, number>();

  constructor(
    private readonly domainOf: DomainOf,
    private readonly tracer?: Tracer,
  ) {}

  map(vgpu: number, gfn: Gfn, pfn: Pfn): Iova {
    const gpa = gfn * PAGE_SIZE;
    const o = this.owners.get(gfn);
    if (o !== undefined && o.vgpu === vgpu && o.pfn === pfn) {
      o.refs++;
      return gpa as Iova;
    }
    const dom = this.domainOf();
    const held = dom.iovaToPhys(gpa as Iova);
    if (held === -1) {
      dom.map(gpa as Iova, (pfn * PAGE_SIZE) as Hpa, PAGE_SIZE, RW);
      this.owners.set(gfn, { vgpu, pfn, refs: 1 });
    } else {
      const key = `${vgpu}:${gfn}`;
      this.clashed.set(key, (this.clashed.get(key) ?? 0) + 1);
      record(this.clashes, this.tracer, "gpa", {
        address: gpa,
        vgpu,
        gfn,
        pfn,
        holder: o !== undefined ? "vgpu" : "host",
        holderVgpu: o?.vgpu,
        reachesPfn: Math.floor(held / PAGE_SIZE),
      });
    }
    return gpa as Iova;
  }

  unmap(vgpu: number, gfn: Gfn, iova: Iova): void {
    const key = `${vgpu}:${gfn}`;
    const c = this.clashed.get(key);
    if (c !== undefined) {
      if (c > 1) this.clashed.set(key, c - 1);
      else this.clashed.delete(key);
      return;
    }
    const o = this.owners.get(gfn);
    if (o === undefined || o.vgpu !== vgpu) {
      throw new KernelError(Errno.EINVAL, `GPA unmap of ${hex(iova)} by vgpu${vgpu}: not its entry`);
    }
    if (--o.refs > 0) return;
    this.owners.delete(gfn);
    this.domainOf().unmap(iova, PAGE_SIZE);
  }

  get mappedPages(): number {
    return this.owners.size;
  }
}

/** Design 4: an IOVA range per VM from the shared iova.c allocator; IOVA = range base + GPA. */
export class PerVmIovaMapper implements GuestPageMapper {
  private readonly ranges = new Map<number, { basePfn: number; pages: number; live: number }>();
  /** Pages of IOVA space the ranges took, at most (for the report). */
  peakRangePages = 0;
  private rangePages = 0;

  constructor(
    private readonly domainOf: DomainOf,
    /** Bytes of guest-physical space of vGPU `vgpu`'s VM (its GPAs are below this). */
    private readonly gpaSpan: (vgpu: number) => number,
    private readonly tracer?: Tracer,
  ) {}

  map(vgpu: number, gfn: Gfn, pfn: Pfn): Iova {
    const r = this.rangeOf(vgpu);
    if (gfn >= r.pages) {
      throw new KernelError(
        Errno.EFAULT,
        `per-VM IOVA: gfn ${hex(gfn)} of vgpu${vgpu} is beyond its VM's ${hex(r.pages * PAGE_SIZE)}-byte range`,
      );
    }
    const iova = (r.basePfn + gfn) * PAGE_SIZE;
    this.domainOf().map(iova as Iova, (pfn * PAGE_SIZE) as Hpa, PAGE_SIZE, RW);
    r.live++;
    return iova as Iova;
  }

  unmap(vgpu: number, _gfn: Gfn, iova: Iova): void {
    const r = this.ranges.get(vgpu);
    if (r === undefined) throw new KernelError(Errno.EINVAL, `per-VM IOVA unmap by vgpu${vgpu}: it has no range`);
    const dom = this.domainOf();
    dom.unmap(iova, PAGE_SIZE);
    if (--r.live === 0) {
      this.iovad(dom).freeIova(r.basePfn);
      this.ranges.delete(vgpu);
      this.rangePages -= r.pages;
      if (this.tracer?.enabled) {
        this.tracer.emit("compare.iova_range", { vgpu, pfnLo: r.basePfn, pages: r.pages, change: "freed" });
      }
    }
  }

  /** IOVA pages reserved by the live ranges. */
  get reservedPages(): number {
    return this.rangePages;
  }

  private rangeOf(vgpu: number): { basePfn: number; pages: number; live: number } {
    let r = this.ranges.get(vgpu);
    if (r !== undefined) return r;
    const dom = this.domainOf();
    const pages = Math.ceil(this.gpaSpan(vgpu) / PAGE_SIZE);
    const got = this.iovad(dom).allocIova(pages, Math.floor(dom.aperture.end / PAGE_SIZE), true);
    if (got === undefined) {
      throw new KernelError(
        Errno.ENOMEM,
        `per-VM IOVA: no ${hex(pages * PAGE_SIZE)}-byte range left in domain ${dom.id} for vgpu${vgpu}'s VM`,
      );
    }
    r = { basePfn: got.pfnLo, pages, live: 0 };
    this.ranges.set(vgpu, r);
    if (this.tracer?.enabled) {
      this.tracer.emit("compare.iova_range", { vgpu, pfnLo: got.pfnLo, pages, change: "allocated" });
    }
    this.rangePages += pages;
    this.peakRangePages = Math.max(this.peakRangePages, this.rangePages);
    return r;
  }

  private iovad(dom: IommuDomain): IovaDomain {
    if (!(dom.cookie instanceof IovaDomain)) {
      throw new KernelError(Errno.ENODEV, `per-VM IOVA: domain ${dom.id} has no iova.c allocator (not a DMA domain)`);
    }
    return dom.cookie;
  }
}

/** Keeps a clash and traces it ("compare.clash"). */
function record(into: AddressClash[], tracer: Tracer | undefined, design: string, c: AddressClash): void {
  into.push(c);
  if (tracer?.enabled) {
    tracer.emit("compare.clash", {
      design,
      address: c.address,
      vgpu: c.vgpu,
      gfn: c.gfn,
      pfn: c.pfn,
      holder: c.holder === "host" ? "the host driver" : `vgpu${c.holderVgpu}`,
      reachesPfn: c.reachesPfn,
    });
  }
}
