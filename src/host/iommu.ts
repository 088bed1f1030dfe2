/**
 * The system IOMMU, modelled on Intel VT-d second-level translation, and the Linux IOMMU core objects around it:
 * groups, domains, reserved regions.
 *
 * Objects (drivers/iommu/iommu.c terms):
 * - An `IommuGroup` (numbered from 0) is the smallest set of devices the IOMMU can isolate from each other; every
 *   device added with `addDevice` is in exactly one group. A group has a *default domain* (the kernel's, type 'dma'
 *   or 'identity' by `defaultDomainType`) and a current domain; `attachGroup` moves it to another domain (what vfio
 *   type1 does with an 'unmanaged' domain), `detachGroup` moves it back (EBUSY to attach while not on the default).
 * - An `IommuDomain` is an address space: 'dma' (the kernel DMA API's, whose IOVA allocator the DMA layer hangs on
 *   `cookie`), 'unmanaged' (owned by a user such as vfio type1), 'identity' (passthrough, IOVA = HPA; one shared
 *   instance, like VT-d's si_domain) or 'blocked' (every access faults). Paging domains ('dma', 'unmanaged') own an
 *   `IoPageTable` and have an aperture [0, 2^addressWidth - 1]. Domain ids count from 1 and are reused after free
 *   (VT-d allocates them from a bitmap); the IOTLB is invalidated for a domain id when the domain is freed.
 * - Reserved regions: every device has the x86 MSI window 0xfee00000-0xfeefffff (type 'msi'), plus any given at
 *   `addDevice` ('direct' for RMRRs, 'reserved'). `reservedRegions(bdf)` is iommu_get_resv_regions(),
 *   `groupReservedRegions` / `formatReservedRegions` the /sys/kernel/iommu_groups/N/reserved_regions file.
 *   Mapping into a reserved region is not refused here: the DMA API keeps those ranges out of its IOVA allocator and
 *   type1 out of its allowed ranges. But an access to the MSI window in a paging domain is never a memory access: on
 *   VT-d such a write is an interrupt request handled by interrupt remapping and never translated through the page
 *   table. The model delivers interrupts through the device's MSI path, not through DMA, so `translate` reports a
 *   DMA to the window as a fault with reason 'msi-window' even if a mapping exists there.
 *
 * Translation (`translate` / `translateDevice`, the hot path, allocation-free unless it faults):
 * 1. IOMMU disabled (`enabled: false`, the seed's "no IOMMU" host) or identity domain: the IOVA is the host-physical
 *    address. It must fall in declared RAM or a registered external buffer: VT-d's si_domain maps only memory ranges,
 *    so anything else is 'not-present'. (With the IOMMU disabled, real hardware would master-abort silently; the
 *    model records the same fault, domain -1, so the tests and the isolation checker see it.)
 * 2. Blocked domain: fault 'blocked'. Unknown device: 'no-domain'. IOVA above the aperture: 'outside-aperture'.
 * 3. ATS-enabled device: its ATC first (a hit is a pre-translated request: no IOTLB, no walk; counted in atsHits).
 * 4. IOTLB lookup by (domain id, IOVA page); on a miss, a page walk, and the IOTLB is filled.
 * 5. Permission check against the access (1 read, 2 write): 'read-denied' / 'write-denied'. On an ATC miss the
 *    successful translation is then cached in the device's ATC (the answer to its translation request).
 * A fault is never served: `translate` returns -1, the fault is appended to a bounded ring (`faults()`), counted by
 * reason and traced ("iommu.fault").
 *
 * Invalidation: `IommuDomain.unmap` flushes the IOTLB for exactly the span of leaves removed and sends the matching
 * device-IOTLB invalidation to every ATS-enabled device attached to the domain, before returning (strict mode).
 * `unmap(iova, size, { flush: false })` defers that to a later `domain.flush(...)`: the DMA API's flush queue can model
 * lazy invalidation with it (stale translations then stay usable until the flush, as in Linux's lazy mode).
 *
 * Not modelled: interrupt remapping, PASID/first-level translation, nested translation, caching mode, the
 * invalidation queue's asynchrony, per-IOMMU-unit separation (one IOMMU serves every device), fault reporting by
 * interrupt (faults are records and trace events).
 */
import {
  type Clock,
  defineTraceEvents,
  Errno,
  type Hpa,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type Rng,
  type Tracer,
} from "../core/index.ts";
import { CostMeter } from "../cost/index.ts";
import { Atc, type AtcOptions, type AtcStats, DEFAULT_ATC_OPTIONS } from "./ats.ts";
import type { Bdf } from "./bdf.ts";
import { IOMMU_READ, IOMMU_WRITE, IoPageTable, WalkResult } from "./io-pgtable.ts";
import { Iotlb, type IotlbStats, type Replacement } from "./iotlb.ts";
import type { PhysicalMemory } from "./physmem.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "iommu.device.add": { bdf: string; group: number; ats: boolean };
    "iommu.device.remove": { bdf: string; group: number };
    "iommu.domain.alloc": { domain: number; type: string };
    "iommu.domain.free": { domain: number; type: string };
    "iommu.attach": { group: number; domain: number; type: string; previous: number };
    "iommu.detach": { group: number; domain: number; defaultDomain: number };
    "iommu.map": { domain: number; iova: number; hpa: number; size: number; prot: number };
    "iommu.unmap": { domain: number; iova: number; size: number; unmapped: number; flushed: boolean };
    "iommu.iotlb.inval": { domain: number; granularity: string; iova: number; size: number };
    "iommu.fault": { seq: number; bdf: string; domain: number; iova: number; access: string; reason: string };
    "ats.translate": { bdf: string; domain: number; iova: number; hpa: number; prot: number };
    "ats.invalidate": { bdf: string; domain: number; granularity: string; iova: number; size: number };
    "ats.translated": { bdf: string; domain: number; hpa: number; access: string };
    "iommu.walk": {
      bdf: string;
      domain: number;
      iova: number;
      hpa: number;
      level: number;
      iotlbHits: number;
      iotlbMisses: number;
    };
    "ats.enable": { bdf: string; enabled: boolean };
  }
}
defineTraceEvents("host", {
  "iommu.device.add": "device {bdf} added to IOMMU group {group} (ATS {ats})",
  "iommu.device.remove": "device {bdf} removed from IOMMU group {group}",
  "iommu.domain.alloc": "IOMMU domain {domain} allocated, type {type}",
  "iommu.domain.free": "IOMMU domain {domain} ({type}) freed",
  "iommu.attach": "IOMMU group {group} attached to domain {domain} ({type}), was on domain {previous}",
  "iommu.detach": "IOMMU group {group} detached from domain {domain}, back on default domain {defaultDomain}",
  "iommu.map": "domain {domain}: map iova {iova} -> hpa {hpa}, {size} bytes, prot {prot}",
  "iommu.unmap": "domain {domain}: unmap iova {iova} size {size}: {unmapped} bytes unmapped (flushed {flushed})",
  "iommu.iotlb.inval": "IOTLB invalidation ({granularity}) domain {domain} iova {iova} size {size}",
  "iommu.fault": "DMA fault #{seq}: {bdf} {access} iova {iova} in domain {domain}: {reason}",
  "ats.translate": "ATS translation request from {bdf}: iova {iova} -> hpa {hpa} (prot {prot}) cached in its ATC",
  "ats.invalidate": "device-IOTLB invalidation ({granularity}) of {bdf}: iova {iova} size {size}",
  "iommu.walk":
    "IOTLB miss: {bdf} iova {iova} in domain {domain} walked to hpa {hpa} (leaf level {level}; IOTLB {iotlbHits} hits, {iotlbMisses} misses so far)",
  "ats.translated": "translated request from {bdf} ({access}) to hpa {hpa} passed unchecked (ATS enabled)",
  "ats.enable": "ATS of {bdf} enabled {enabled}",
});

export type DomainType = "dma" | "unmanaged" | "identity" | "blocked";
export type DefaultDomainType = "dma" | "identity";
/** A DMA access: IOMMU_READ (1) or IOMMU_WRITE (2). */
export type DmaAccess = 1 | 2;
export type FaultReason =
  | "not-present"
  | "read-denied"
  | "write-denied"
  | "no-domain"
  | "blocked"
  | "outside-aperture"
  | "msi-window"
  | "translated-blocked";

export const FAULT_REASONS: readonly FaultReason[] = [
  "not-present",
  "read-denied",
  "write-denied",
  "no-domain",
  "blocked",
  "outside-aperture",
  "msi-window",
  "translated-blocked",
];

/** The x86 MSI address window (include/asm/msidef.h: 0xfee00000, 1 MiB). */
export const MSI_WINDOW_START = 0xfee00000;
export const MSI_WINDOW_END = 0xfeefffff;
const MSI_WINDOW_FIRST_PAGE = MSI_WINDOW_START / PAGE_SIZE;
const MSI_WINDOW_LAST_PAGE = Math.floor(MSI_WINDOW_END / PAGE_SIZE);

export type ReservedRegionType = "msi" | "direct" | "reserved";

/** One reserved IOVA range, as struct iommu_resv_region; `end` is inclusive, as sysfs prints it. */
export interface ReservedRegion {
  readonly start: number;
  readonly end: number;
  readonly type: ReservedRegionType;
}

/** The text of /sys/kernel/iommu_groups/N/reserved_regions: "0x%016llx 0x%016llx %s\n" per region. */
export function formatReservedRegions(regions: readonly ReservedRegion[]): string {
  const h = (n: number): string => `0x${n.toString(16).padStart(16, "0")}`;
  return regions.map((r) => `${h(r.start)} ${h(r.end)} ${r.type}\n`).join("");
}

export interface IommuFault {
  /** Position in this IOMMU's fault stream, from 0. */
  readonly seq: number;
  /** Clock time in ns. */
  readonly time: number;
  readonly bdf: Bdf;
  /** Domain id, or -1 (IOMMU disabled, unknown device). */
  readonly domain: number;
  readonly iova: number;
  readonly access: DmaAccess;
  readonly reason: FaultReason;
}

export interface IommuOptions {
  readonly physmem: PhysicalMemory;
  readonly clock: Clock;
  readonly tracer: Tracer;
  readonly rng: Rng;
  /** false = no IOMMU: DMA addresses are host-physical addresses. */
  readonly enabled: boolean;
  /** IOVA width of paging domains: 48 (4-level tables, the default) or 39 (3-level). */
  readonly addressWidth?: 39 | 48;
  /**
   * IOTLB geometry. `superpages`: a walk ending at a 2 MiB or 1 GiB leaf fills one entry covering 2 MiB (as real
   * IOTLBs keep one entry per large page) instead of one per 4 KiB page touched; default false (4 KiB entries only).
   */
  readonly iotlb?: {
    readonly entries?: number;
    readonly ways?: number;
    readonly replacement?: Replacement;
    readonly superpages?: boolean;
  };
  /** Counts map/unmap calls, invalidations and walk reads (the host's meter; default a meter of its own). */
  readonly meter?: CostMeter;
  /** Geometry of each ATS-enabled device's ATC. */
  readonly atc?: { readonly entries?: number; readonly ways?: number; readonly replacement?: Replacement };
  readonly defaultDomainType?: DefaultDomainType;
  /** Fault records kept (oldest dropped first); default 256. */
  readonly faultLogSize?: number;
}

export interface AddDeviceOptions {
  /** Join this existing group; omitted = a new group. */
  readonly group?: number;
  /** The device supports ATS and has it enabled: it gets an ATC. */
  readonly ats?: boolean;
  /** Platform reserved regions beyond the MSI window (RMRRs as 'direct', other holes as 'reserved'). */
  readonly reservedRegions?: readonly ReservedRegion[];
}

export interface IommuStats {
  readonly enabled: boolean;
  readonly addressWidth: number;
  readonly translations: number;
  readonly iotlbHits: number;
  readonly iotlbMisses: number;
  readonly walks: number;
  readonly faults: number;
  readonly faultsByReason: Readonly<Record<FaultReason, number>>;
  /** Fault records dropped from the ring because it was full. */
  readonly faultsDropped: number;
  /** Accesses served from a device ATC (pre-translated). */
  readonly atsHits: number;
  readonly atsTranslationRequests: number;
  readonly atsInvalidations: number;
  readonly devices: number;
  readonly groups: number;
  readonly domains: number;
  /** Page tables allocated across all paging domains (roots included). */
  readonly pageTables: number;
  readonly iotlb: IotlbStats;
  readonly atcs: readonly AtcStats[];
}

/** IOTLB tags of 2 MiB entries sit above every 4 KiB page number (2^36 for a 48-bit space). */
const SUPERPAGE_TAG = 2 ** 40;
const SUPERPAGE_PAGES = 512;
const SUPERPAGE_BYTES = SUPERPAGE_PAGES * PAGE_SIZE;

const KIND_PAGING = 0;
const KIND_IDENTITY = 1;
const KIND_BLOCKED = 2;

export interface Aperture {
  readonly start: Iova;
  /** Inclusive. */
  readonly end: Iova;
}

/** An I/O address space. Created by `Iommu.allocDomain` (or as a group's default domain). */
export class IommuDomain {
  readonly id: number;
  readonly type: DomainType;
  readonly aperture: Aperture;
  /** The page table of a paging ('dma', 'unmanaged') domain; undefined for 'identity' and 'blocked'. */
  readonly pgtable: IoPageTable | undefined;
  /**
   * Owner data: the DMA API layer stores its IOVA allocator here for 'dma' domains (Linux's domain->iova_cookie);
   * vfio may store its own state on 'unmanaged' ones. This module never reads it.
   */
  cookie: unknown = undefined;
  /** @internal Hot-path discriminant (paging / identity / blocked). */
  readonly kind: number;
  /** @internal Inclusive end of the aperture, as a plain number for the hot path. */
  readonly apertureEnd: number;
  /** @internal The aperture's last page number. */
  readonly aperturePageEnd: number;
  /** @internal Groups currently attached. */
  readonly attached = new Set<IommuGroup>();
  /** @internal ATS-enabled devices of the attached groups (the targets of device-IOTLB invalidations). */
  atsDevices: IommuDevice[] = [];
  private isFreed = false;

  /** @internal Use `Iommu.allocDomain`. */
  constructor(
    private readonly iommu: Iommu,
    id: number,
    type: DomainType,
    addressWidth: 39 | 48,
  ) {
    this.id = id;
    this.type = type;
    this.kind = type === "identity" ? KIND_IDENTITY : type === "blocked" ? KIND_BLOCKED : KIND_PAGING;
    this.apertureEnd = 2 ** addressWidth - 1;
    this.aperturePageEnd = Math.floor(this.apertureEnd / PAGE_SIZE);
    this.aperture = { start: 0 as Iova, end: this.apertureEnd as Iova };
    this.pgtable = this.kind === KIND_PAGING ? new IoPageTable({ addressWidth }) : undefined;
  }

  get freed(): boolean {
    return this.isFreed;
  }

  /** Ids of the groups attached to this domain. */
  groups(): number[] {
    return [...this.attached].map((g) => g.id).sort((a, b) => a - b);
  }

  /** Page sizes this domain maps with (Linux's pgsize_bitmap); 0 for non-paging domains. */
  get pgsizeBitmap(): number {
    return this.pgtable?.pgsizeBitmap ?? 0;
  }

  /**
   * iommu_map: maps [iova, iova+size) to [hpa, hpa+size) with prot (IOMMU_READ | IOMMU_WRITE), using the largest page
   * sizes alignment allows. EINVAL: not a paging domain, unaligned, bad prot, freed domain. EFAULT: beyond the
   * aperture. EEXIST: part of the range is mapped already (nothing changed).
   */
  map(iova: Iova, hpa: Hpa, size: number, prot: number): void {
    const pt = this.paging("map");
    pt.map(iova, hpa, size, prot);
    const meter = this.iommu.meter;
    meter.iommuMapCalls++;
    meter.iommuMapPages += Math.ceil(size / PAGE_SIZE);
    const tracer = this.iommu.tracer;
    if (tracer.enabled) tracer.emit("iommu.map", { domain: this.id, iova, hpa, size, prot });
  }

  /**
   * iommu_unmap: removes the leaves intersecting [iova, iova+size) (whole superpages, see io-pgtable.ts) and returns
   * the bytes removed. Unless `flush: false`, the IOTLB and the ATCs of attached devices are invalidated for the
   * removed span before returning.
   */
  unmap(iova: Iova, size: number, opts?: { readonly flush?: boolean }): number {
    const pt = this.paging("unmap");
    const removed = pt.unmap(iova, size);
    const meter = this.iommu.meter;
    meter.iommuUnmapCalls++;
    meter.iommuUnmapPages += Math.ceil(removed / PAGE_SIZE);
    const flush = opts?.flush ?? true;
    if (removed > 0 && flush) {
      this.iommu.invalidateRange(this, pt.lastUnmapStart, pt.lastUnmapEnd - pt.lastUnmapStart);
    }
    const tracer = this.iommu.tracer;
    if (tracer.enabled) tracer.emit("iommu.unmap", { domain: this.id, iova, size, unmapped: removed, flushed: flush });
    return removed;
  }

  /**
   * Invalidates the IOTLB and the attached devices' ATCs: for [iova, iova+size) when given, else for the whole domain.
   * What a deferred (lazy) unmap must call before the IOVA is reused.
   */
  flush(iova?: Iova, size?: number): void {
    this.checkLive("flush");
    if (iova === undefined || size === undefined) this.iommu.invalidateDomain(this);
    else if (size > 0) this.iommu.invalidateRange(this, iova - (iova % PAGE_SIZE), size + (iova % PAGE_SIZE));
  }

  /** iommu_iova_to_phys: the host-physical address `iova` maps to, or -1 when unmapped. Identity: `iova` itself. */
  iovaToPhys(iova: Iova): Hpa | -1 {
    this.checkLive("iovaToPhys");
    if (this.kind === KIND_IDENTITY) return iova as number as Hpa;
    if (this.pgtable === undefined) return -1;
    return this.pgtable.iovaToPhys(iova);
  }

  /** @internal */
  markFreed(): void {
    this.isFreed = true;
  }

  private checkLive(op: string): void {
    if (this.isFreed) throw new KernelError(Errno.EINVAL, `cannot ${op}: IOMMU domain ${this.id} has been freed`);
  }

  private paging(op: string): IoPageTable {
    this.checkLive(op);
    if (this.pgtable === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `cannot ${op} in IOMMU domain ${this.id}: it is a${this.type === "identity" ? "n" : ""} ${this.type} domain without a page table`,
      );
    }
    return this.pgtable;
  }
}

export class IommuGroup {
  readonly id: number;
  readonly devices: IommuDevice[] = [];
  /** The kernel's domain for this group, restored by detach. */
  readonly defaultDomain: IommuDomain;
  /** The domain the group's devices translate through now. */
  domain: IommuDomain;

  /** @internal */
  constructor(id: number, defaultDomain: IommuDomain) {
    this.id = id;
    this.defaultDomain = defaultDomain;
    this.domain = defaultDomain;
  }

  bdfs(): Bdf[] {
    return this.devices.map((d) => d.bdf);
  }
}

export class IommuDevice {
  readonly bdf: Bdf;
  group: IommuGroup;
  /** The device's ATC when ATS is enabled (`Iommu.setAtsEnabled` turns it off and on). */
  atc: Atc | undefined;
  readonly extraRegions: readonly ReservedRegion[];
  /** False once `removeDevice` dropped it (holders such as DeviceDma then look the device up again). */
  present = true;

  /** @internal */
  constructor(bdf: Bdf, group: IommuGroup, atc: Atc | undefined, extraRegions: readonly ReservedRegion[]) {
    this.bdf = bdf;
    this.group = group;
    this.atc = atc;
    this.extraRegions = extraRegions;
  }
}

export class Iommu {
  readonly enabled: boolean;
  readonly addressWidth: 39 | 48;
  readonly defaultDomainType: DefaultDomainType;
  readonly iotlb: Iotlb;
  /** @internal */
  readonly tracer: Tracer;
  private readonly physmem: PhysicalMemory;
  private readonly clock: Clock;
  private readonly rng: Rng;
  private readonly atcOptions: AtcOptions;
  /** @internal The operation counters of the cost model (cost/meter.ts). */
  readonly meter: CostMeter;
  /** The IOTLB keeps one entry per 2 MiB of a superpage leaf (IommuOptions.iotlb.superpages). */
  private readonly superpageTlb: boolean;
  private nTranslatedRequests = 0;
  private nTranslatedBlocked = 0;

  private readonly devices = new Map<string, IommuDevice>();
  private readonly groupsById = new Map<number, IommuGroup>();
  private readonly domainsById = new Map<number, IommuDomain>();
  /** Group numbers in use, by devices' groups and by ids handed out with allocGroupId (Linux's iommu_group_ida). */
  private readonly usedGroupIds = new Set<number>();
  private identity: IommuDomain | undefined;
  private readonly walkResult = new WalkResult();
  /** First byte above declared RAM: identity translations below it are memory. */
  private readonly ramEnd: number;

  private readonly faultRing: (IommuFault | undefined)[];
  /** Index of the oldest record and number of records in the ring. */
  private faultHead = 0;
  private faultCount = 0;
  private faultSeq = 0;
  private faultsDropped = 0;
  private readonly faultsByReason: Record<FaultReason, number>;

  private nTranslations = 0;
  private nWalks = 0;
  private nAtsHits = 0;
  private nAtsRequests = 0;
  private nAtsInvalidations = 0;

  constructor(opts: IommuOptions) {
    this.enabled = opts.enabled;
    this.meter = opts.meter ?? new CostMeter();
    this.superpageTlb = opts.iotlb?.superpages ?? false;
    this.addressWidth = opts.addressWidth ?? 48;
    if (this.addressWidth !== 39 && this.addressWidth !== 48) {
      throw new KernelError(Errno.EINVAL, `IOMMU address width ${String(this.addressWidth)} is not 39 or 48`);
    }
    this.defaultDomainType = opts.defaultDomainType ?? "dma";
    this.physmem = opts.physmem;
    this.clock = opts.clock;
    this.tracer = opts.tracer;
    this.rng = opts.rng;
    this.ramEnd = opts.physmem.totalFrames * PAGE_SIZE;
    const t = opts.iotlb ?? {};
    const replacement = t.replacement ?? "lru";
    this.iotlb = new Iotlb({
      entries: t.entries ?? 1024,
      ways: t.ways ?? 8,
      replacement,
      ...(replacement === "random" ? { rng: this.rng.fork("iotlb") } : {}),
    });
    const a = opts.atc ?? {};
    this.atcOptions = {
      entries: a.entries ?? DEFAULT_ATC_OPTIONS.entries,
      ways: a.ways ?? DEFAULT_ATC_OPTIONS.ways,
      replacement: a.replacement ?? DEFAULT_ATC_OPTIONS.replacement,
    };
    const logSize = opts.faultLogSize ?? 256;
    if (!Number.isInteger(logSize) || logSize < 1) {
      throw new KernelError(Errno.EINVAL, `fault log size ${logSize} must be a positive integer`);
    }
    this.faultRing = new Array<IommuFault | undefined>(logSize).fill(undefined);
    this.faultsByReason = Object.fromEntries(FAULT_REASONS.map((r) => [r, 0])) as Record<FaultReason, number>;
  }

  // ---- devices and groups ----------------------------------------------------------------------------------------

  /**
   * Adds a device behind this IOMMU, in a new group (default) or an existing one, on that group's current domain.
   * Returns the group id. EEXIST: already added. EINVAL: no such group.
   * With the IOMMU disabled devices may still be added (their groups sit on the identity domain) so that bookkeeping
   * and ATS settings work the same; such groups isolate nothing, and callers (vfio) must check `enabled`.
   */
  addDevice(bdf: Bdf, opts: AddDeviceOptions = {}): number {
    if (this.devices.has(bdf)) {
      throw new KernelError(Errno.EEXIST, `device ${bdf} is already in IOMMU group ${this.devices.get(bdf)!.group.id}`);
    }
    for (const r of opts.reservedRegions ?? []) {
      if (!Number.isSafeInteger(r.start) || !Number.isSafeInteger(r.end) || r.end < r.start || r.start < 0) {
        throw new KernelError(
          Errno.EINVAL,
          `reserved region [${hex(r.start)}, ${hex(r.end)}] of ${bdf} is not a valid inclusive range`,
        );
      }
    }
    let group: IommuGroup;
    if (opts.group !== undefined) {
      const g = this.groupsById.get(opts.group);
      if (g === undefined) {
        throw new KernelError(
          Errno.EINVAL,
          `cannot add ${bdf} to IOMMU group ${opts.group}: no such group (omit the group to create a new one)`,
        );
      }
      group = g;
    } else {
      const id = this.allocGroupId();
      group = new IommuGroup(id, this.newDefaultDomain());
      group.defaultDomain.attached.add(group);
      this.groupsById.set(id, group);
    }
    const atc = opts.ats ? new Atc(bdf, this.atcOptions) : undefined;
    const dev = new IommuDevice(bdf, group, atc, [...(opts.reservedRegions ?? [])]);
    group.devices.push(dev);
    this.devices.set(bdf, dev);
    this.refreshAtsDevices(group.domain);
    if (this.tracer.enabled) this.tracer.emit("iommu.device.add", { bdf, group: group.id, ats: atc !== undefined });
    return group.id;
  }

  /**
   * Removes a device. When its group becomes empty the group goes away: it is detached from a non-default domain and
   * its default 'dma' domain is freed. ENODEV: unknown device.
   */
  removeDevice(bdf: Bdf): void {
    const dev = this.device(bdf);
    const group = dev.group;
    group.devices.splice(group.devices.indexOf(dev), 1);
    this.devices.delete(bdf);
    dev.present = false;
    if (dev.atc) this.flushAtc(dev, group.domain);
    this.refreshAtsDevices(group.domain);
    if (this.tracer.enabled) this.tracer.emit("iommu.device.remove", { bdf, group: group.id });
    if (group.devices.length === 0) {
      if (group.domain !== group.defaultDomain) this.detachGroup(group.id);
      group.defaultDomain.attached.delete(group);
      this.groupsById.delete(group.id);
      this.usedGroupIds.delete(group.id);
      if (group.defaultDomain !== this.identity) this.destroyDomain(group.defaultDomain);
    }
  }

  /**
   * A group number from the same allocator as device groups (iommu_group_alloc's IDA: the lowest free number), for
   * groups without an IOMMU behind them: vfio's emulated-IOMMU (mdev) and no-IOMMU groups. Release with freeGroupId.
   */
  allocGroupId(): number {
    let id = 0;
    while (this.usedGroupIds.has(id)) id++;
    this.usedGroupIds.add(id);
    return id;
  }

  /** Returns a number from allocGroupId. EINVAL if it is not allocated or belongs to a device group. */
  freeGroupId(id: number): void {
    if (!this.usedGroupIds.has(id) || this.groupsById.has(id)) {
      throw new KernelError(Errno.EINVAL, `IOMMU group number ${id} was not allocated with allocGroupId`);
    }
    this.usedGroupIds.delete(id);
  }

  /** The IOMMU's record of a device. ENODEV when it was never added. */
  device(bdf: Bdf): IommuDevice {
    const d = this.devices.get(bdf);
    if (d === undefined) throw new KernelError(Errno.ENODEV, `device ${bdf} is not behind this IOMMU (not added)`);
    return d;
  }

  hasDevice(bdf: Bdf): boolean {
    return this.devices.has(bdf);
  }

  /** Id of the group holding `bdf`. ENODEV for an unknown device. */
  groupOf(bdf: Bdf): number {
    return this.device(bdf).group.id;
  }

  /** The domain `bdf` currently translates through. ENODEV for an unknown device. */
  domainOf(bdf: Bdf): IommuDomain {
    return this.device(bdf).group.domain;
  }

  /** A group by id. ENOENT when there is none. */
  group(id: number): IommuGroup {
    const g = this.groupsById.get(id);
    if (g === undefined) throw new KernelError(Errno.ENOENT, `no IOMMU group ${id}`);
    return g;
  }

  groups(): IommuGroup[] {
    return [...this.groupsById.values()].sort((a, b) => a.id - b.id);
  }

  // ---- domains -------------------------------------------------------------------------------------------------------

  /**
   * iommu_domain_alloc: a new domain of `type`. 'identity' returns the shared identity domain. ENODEV when the IOMMU
   * is disabled (there is nothing to allocate a domain on).
   */
  allocDomain(type: DomainType): IommuDomain {
    if (!this.enabled) {
      throw new KernelError(Errno.ENODEV, `cannot allocate a ${type} IOMMU domain: the IOMMU is disabled (no IOMMU)`);
    }
    if (type !== "dma" && type !== "unmanaged" && type !== "identity" && type !== "blocked") {
      throw new KernelError(Errno.EINVAL, `unknown IOMMU domain type '${String(type)}'`);
    }
    if (type === "identity") return this.identityDomain();
    return this.createDomain(type);
  }

  /**
   * iommu_domain_free. EBUSY while groups are attached, for a group's default domain and for the shared identity
   * domain. EINVAL: already freed or not this IOMMU's.
   */
  freeDomain(domain: IommuDomain): void {
    if (domain.freed || this.domainsById.get(domain.id) !== domain) {
      throw new KernelError(Errno.EINVAL, `IOMMU domain ${domain.id} is not a live domain of this IOMMU`);
    }
    if (domain === this.identity) {
      throw new KernelError(Errno.EBUSY, `IOMMU domain ${domain.id} is the shared identity domain and is never freed`);
    }
    for (const g of this.groupsById.values()) {
      if (g.defaultDomain === domain) {
        throw new KernelError(Errno.EBUSY, `IOMMU domain ${domain.id} is the default domain of group ${g.id}`);
      }
    }
    if (domain.attached.size > 0) {
      throw new KernelError(
        Errno.EBUSY,
        `IOMMU domain ${domain.id} is still attached to group(s) ${domain.groups().join(", ")}: detach them first`,
      );
    }
    this.destroyDomain(domain);
  }

  /** Live domains, by id. */
  domains(): IommuDomain[] {
    return [...this.domainsById.values()].sort((a, b) => a.id - b.id);
  }

  /** A live domain by id. ENOENT when there is none. */
  domain(id: number): IommuDomain {
    const d = this.domainsById.get(id);
    if (d === undefined) throw new KernelError(Errno.ENOENT, `no IOMMU domain ${id}`);
    return d;
  }

  /**
   * iommu_attach_group: moves every device of the group to `domain`. EBUSY: the group is not on its default domain
   * (detach first). EINVAL: unknown group or dead domain. ENODEV: IOMMU disabled.
   */
  attachGroup(groupId: number, domain: IommuDomain): void {
    if (!this.enabled) {
      throw new KernelError(Errno.ENODEV, `cannot attach IOMMU group ${groupId}: the IOMMU is disabled (no IOMMU)`);
    }
    const group = this.groupsById.get(groupId);
    if (group === undefined) throw new KernelError(Errno.EINVAL, `cannot attach: no IOMMU group ${groupId}`);
    if (domain.freed || this.domainsById.get(domain.id) !== domain) {
      throw new KernelError(Errno.EINVAL, `cannot attach group ${groupId}: domain ${domain.id} is not live`);
    }
    if (group.domain === domain) return;
    if (group.domain !== group.defaultDomain) {
      throw new KernelError(
        Errno.EBUSY,
        `IOMMU group ${groupId} is already attached to domain ${group.domain.id}: detach it first`,
      );
    }
    const previous = group.domain;
    this.switchDomain(group, domain);
    if (this.tracer.enabled) {
      this.tracer.emit("iommu.attach", { group: groupId, domain: domain.id, type: domain.type, previous: previous.id });
    }
  }

  /** iommu_detach_group: back to the default domain. EINVAL: unknown group, or already on its default domain. */
  detachGroup(groupId: number): void {
    const group = this.groupsById.get(groupId);
    if (group === undefined) throw new KernelError(Errno.EINVAL, `cannot detach: no IOMMU group ${groupId}`);
    if (group.domain === group.defaultDomain) {
      throw new KernelError(Errno.EINVAL, `IOMMU group ${groupId} is on its default domain: nothing to detach`);
    }
    const old = group.domain;
    this.switchDomain(group, group.defaultDomain);
    if (this.tracer.enabled) {
      this.tracer.emit("iommu.detach", { group: groupId, domain: old.id, defaultDomain: group.defaultDomain.id });
    }
  }

  // ---- reserved regions ------------------------------------------------------------------------------------------

  /** iommu_get_resv_regions(dev): the MSI window plus the device's platform regions, by start. Empty when disabled. */
  reservedRegions(bdf: Bdf): ReservedRegion[] {
    const dev = this.device(bdf);
    if (!this.enabled) return [];
    return [{ start: MSI_WINDOW_START, end: MSI_WINDOW_END, type: "msi" as const }, ...dev.extraRegions].sort(
      (a, b) => a.start - b.start || a.end - b.end,
    );
  }

  /** iommu_get_group_resv_regions: the union over the group's devices, overlapping regions of one type merged. */
  groupReservedRegions(groupId: number): ReservedRegion[] {
    const all = this.group(groupId).devices.flatMap((d) => this.reservedRegions(d.bdf));
    all.sort((a, b) => a.start - b.start || a.end - b.end);
    const out: ReservedRegion[] = [];
    for (const r of all) {
      const last = out[out.length - 1];
      if (last && last.type === r.type && r.start <= last.end + 1) {
        if (r.end > last.end) out[out.length - 1] = { start: last.start, end: r.end, type: r.type };
      } else {
        out.push(r);
      }
    }
    return out;
  }

  // ---- translation (hot path) ------------------------------------------------------------------------------------

  /** Translates a DMA by `bdf` at `iova`: the host-physical address, or -1 after recording a fault. */
  translate(bdf: Bdf, iova: Iova, access: DmaAccess): Hpa | -1 {
    const dev = this.devices.get(bdf);
    if (dev === undefined) {
      this.nTranslations++;
      if (!this.enabled) return this.passthrough(bdf, -1, iova, access);
      return this.fault(bdf, -1, iova, access, "no-domain");
    }
    return this.translateDevice(dev, iova, access);
  }

  /**
   * `translate` for a device record already looked up (no Map lookup per access).
   */
  translateDevice(dev: IommuDevice, iova: Iova, access: DmaAccess): Hpa | -1 {
    const page = Math.floor(iova / PAGE_SIZE);
    const offset = iova - page * PAGE_SIZE;
    const f = this.translateFrame(dev, page, offset, access);
    return f < 0 ? -1 : ((f * PAGE_SIZE + offset) as Hpa);
  }

  /**
   * The translation DeviceDma uses: the host frame backing IOVA page `page` for `access`, or -1 after a fault
   * (recorded for the IOVA `page * 4096 + offset`). Page and frame numbers rather than byte addresses: below 8 TiB
   * they are small integers, so a caller the JIT does not inline this into passes and gets back no boxed doubles
   * (byte addresses above 2 GiB would cost a heap allocation per call each way). Kept small: the ATC and IOTLB hit
   * paths are here, everything else is out of line.
   */
  translateFrame(dev: IommuDevice, page: number, offset: number, access: DmaAccess): number {
    this.nTranslations++;
    const dom = dev.group.domain;
    if (
      dom.kind !== KIND_PAGING ||
      !this.enabled ||
      !(page >= 0 && page <= dom.aperturePageEnd) ||
      (page >= MSI_WINDOW_FIRST_PAGE && page <= MSI_WINDOW_LAST_PAGE)
    ) {
      return this.frameOf(this.translateSpecial(dev, dom, (page * PAGE_SIZE + offset) as Iova, access));
    }
    const atc = dev.atc;
    if (atc !== undefined) {
      const s = atc.lookup(page);
      if (s >= 0 && (atc.prot(s) & access) !== 0) {
        this.nAtsHits++;
        return atc.frame(s);
      }
      return this.frameOf(this.translateMiss(dev, dom, (page * PAGE_SIZE + offset) as Iova, page, access));
    }
    const iotlb = this.iotlb;
    const slot = iotlb.lookup(dom.id, page);
    if (slot >= 0 && (iotlb.prot(slot) & access) !== 0) return iotlb.frame(slot);
    if (slot < 0 && this.superpageTlb) {
      const f = this.superpageHit(dom, page, access);
      if (f >= 0) return f;
    }
    return this.frameOf(this.translateMiss(dev, dom, (page * PAGE_SIZE + offset) as Iova, page, access, slot));
  }

  private frameOf(h: Hpa | -1): number {
    return h < 0 ? -1 : Math.floor(h / PAGE_SIZE);
  }

  // ---- faults and stats ------------------------------------------------------------------------------------------

  /** Fault records kept in the ring, oldest first. */
  faults(): IommuFault[] {
    const n = this.faultRing.length;
    const out: IommuFault[] = [];
    for (let i = 0; i < this.faultCount; i++) out.push(this.faultRing[(this.faultHead + i) % n]!);
    return out;
  }

  /** The most recent fault, if any. */
  lastFault(): IommuFault | undefined {
    if (this.faultCount === 0) return undefined;
    return this.faultRing[(this.faultHead + this.faultCount - 1) % this.faultRing.length];
  }

  /** Empties the fault ring (counters are kept). */
  clearFaults(): void {
    this.faultRing.fill(undefined);
    this.faultHead = 0;
    this.faultCount = 0;
  }

  stats(): IommuStats {
    let tables = 0;
    for (const d of this.domainsById.values()) tables += d.pgtable?.tableCount ?? 0;
    const atcs: AtcStats[] = [];
    for (const d of this.devices.values()) if (d.atc) atcs.push(d.atc.stats());
    return {
      enabled: this.enabled,
      addressWidth: this.addressWidth,
      translations: this.nTranslations,
      iotlbHits: this.iotlb.hits,
      iotlbMisses: this.iotlb.misses,
      walks: this.nWalks,
      faults: this.faultSeq,
      faultsByReason: { ...this.faultsByReason },
      faultsDropped: this.faultsDropped,
      atsHits: this.nAtsHits,
      atsTranslationRequests: this.nAtsRequests,
      atsInvalidations: this.nAtsInvalidations,
      devices: this.devices.size,
      groups: this.groupsById.size,
      domains: this.domainsById.size,
      pageTables: tables,
      iotlb: this.iotlb.stats(),
      atcs,
    };
  }

  // ---- invalidation (called by IommuDomain) ----------------------------------------------------------------------

  /** @internal Page-selective invalidation of [iova, iova+size) (page aligned) in the IOTLB and attached ATCs. */
  invalidateRange(domain: IommuDomain, iova: number, size: number): void {
    const first = Math.floor(iova / PAGE_SIZE);
    const pages = Math.ceil(size / PAGE_SIZE);
    const granularity = pages === 1 ? "page" : "range";
    if (pages === 1) this.iotlb.invalidatePage(domain.id, first);
    else this.iotlb.invalidateRange(domain.id, first, pages);
    if (this.superpageTlb) {
      const lo = Math.floor(first / SUPERPAGE_PAGES);
      const hi = Math.ceil((first + pages) / SUPERPAGE_PAGES);
      this.iotlb.invalidateRange(domain.id, SUPERPAGE_TAG + lo, hi - lo);
    }
    this.meter.iotlbInvalidations++;
    if (this.tracer.enabled) this.tracer.emit("iommu.iotlb.inval", { domain: domain.id, granularity, iova, size });
    const devs = domain.atsDevices;
    for (let i = 0; i < devs.length; i++) {
      const d = devs[i]!;
      d.atc!.invalidateRange(first, pages);
      this.nAtsInvalidations++;
      this.meter.atcInvalidations++;
      if (this.tracer.enabled) {
        this.tracer.emit("ats.invalidate", { bdf: d.bdf, domain: domain.id, granularity, iova, size });
      }
    }
  }

  /** @internal Domain-selective invalidation of the IOTLB and attached ATCs. */
  invalidateDomain(domain: IommuDomain): void {
    this.iotlb.invalidateDomain(domain.id);
    this.meter.iotlbInvalidations++;
    if (this.tracer.enabled) {
      this.tracer.emit("iommu.iotlb.inval", { domain: domain.id, granularity: "domain", iova: 0, size: 0 });
    }
    for (const d of domain.atsDevices) this.flushAtc(d, domain);
  }

  /** Global invalidation: the whole IOTLB and every ATC. */
  invalidateAll(): void {
    this.iotlb.invalidateAll();
    this.meter.iotlbInvalidations++;
    if (this.tracer.enabled)
      this.tracer.emit("iommu.iotlb.inval", { domain: -1, granularity: "global", iova: 0, size: 0 });
    for (const d of this.devices.values()) if (d.atc) this.flushAtc(d, d.group.domain);
  }

  // ---- ATS: translated requests and the trust they need ------------------------------------------------------------

  /**
   * A request the device marks as already translated (PCIe AT = 10b) to host-physical `hpa`. VT-d lets such a
   * request through without a check when the device's context entry allows translated requests, which is what
   * enabling ATS for it does: the IOMMU trusts the device to send only addresses its ATC got from a translation
   * request. A buggy or malicious device can put any address there, so the whole of memory is reachable. With ATS
   * disabled (context entry: untranslated requests only; what Linux does for an `untrusted` device, and the effect of
   * `pci=noats`) the request is blocked and logged as a fault ('translated-blocked'). Returns the address reached
   * (no ATC or IOTLB is consulted) or -1. Device models never call this for their ordinary DMA (device-dma.ts sends
   * untranslated requests and ATS through the ATC); it is the probe of the trust boundary.
   */
  translatedRequest(bdf: Bdf, hpa: Hpa, access: DmaAccess): Hpa | -1 {
    this.nTranslatedRequests++;
    const dev = this.devices.get(bdf);
    if (!this.enabled) return this.passthrough(bdf, -1, hpa as number as Iova, access);
    if (dev === undefined || dev.atc === undefined) {
      this.nTranslatedBlocked++;
      return this.fault(bdf, dev?.group.domain.id ?? -1, hpa, access, "translated-blocked");
    }
    if (this.tracer.enabled) {
      this.tracer.emit("ats.translated", {
        bdf,
        domain: dev.group.domain.id,
        hpa,
        access: access === 1 ? "read" : "write",
      });
    }
    return this.passthrough(bdf, dev.group.domain.id, hpa as number as Iova, access);
  }

  /**
   * Turns ATS on or off for a device (the context entry's translation type; pci_enable_ats / pci_disable_ats): off
   * flushes and drops its ATC, so its later requests are all untranslated and checked, and translated ones are
   * blocked. EINVAL for an unknown device, ENODEV with the IOMMU disabled.
   */
  setAtsEnabled(bdf: Bdf, enabled: boolean): void {
    if (!this.enabled) throw new KernelError(Errno.ENODEV, `cannot change ATS of ${bdf}: the IOMMU is disabled`);
    const dev = this.devices.get(bdf);
    if (dev === undefined) throw new KernelError(Errno.EINVAL, `cannot change ATS of ${bdf}: no such device`);
    if (enabled === (dev.atc !== undefined)) return;
    if (enabled) {
      dev.atc = new Atc(bdf, this.atcOptions);
    } else {
      this.flushAtc(dev, dev.group.domain);
      dev.atc = undefined;
    }
    this.refreshAtsDevices(dev.group.domain);
    if (this.tracer.enabled) this.tracer.emit("ats.enable", { bdf, enabled });
  }

  /** Translated requests seen and blocked (`translatedRequest`). */
  translatedRequestStats(): { readonly requests: number; readonly blocked: number } {
    return { requests: this.nTranslatedRequests, blocked: this.nTranslatedBlocked };
  }

  // ---- internals -----------------------------------------------------------------------------------------------------

  /** A hit on the 2 MiB entry covering `page` (IommuOptions.iotlb.superpages): its frame, or -1. */
  private superpageHit(dom: IommuDomain, page: number, access: DmaAccess): number {
    const iotlb = this.iotlb;
    const s = iotlb.probe(dom.id, SUPERPAGE_TAG + Math.floor(page / SUPERPAGE_PAGES));
    if (s < 0 || (iotlb.prot(s) & access) === 0) return -1;
    // The 4 KiB probe counted a miss; this access is one hit.
    iotlb.misses--;
    iotlb.hits++;
    return iotlb.frame(s) + (page % SUPERPAGE_PAGES);
  }

  /** Disabled IOMMU, identity and blocked domains, and the aperture and MSI-window checks. */
  private translateSpecial(dev: IommuDevice, dom: IommuDomain, iova: Iova, access: DmaAccess): Hpa | -1 {
    if (!this.enabled) return this.passthrough(dev.bdf, -1, iova, access);
    if (dom.kind === KIND_IDENTITY) return this.passthrough(dev.bdf, dom.id, iova, access);
    if (dom.kind === KIND_BLOCKED) return this.fault(dev.bdf, dom.id, iova, access, "blocked");
    if (!(iova >= 0 && iova <= dom.apertureEnd)) return this.fault(dev.bdf, dom.id, iova, access, "outside-aperture");
    return this.fault(dev.bdf, dom.id, iova, access, "msi-window");
  }

  /**
   * Everything after a failed fast path: an ATC miss (the translation request), an IOTLB miss (the walk and fill), or
   * a cached translation without the permission. `slot` is the IOTLB slot already found, if any (-1: look it up).
   */
  private translateMiss(
    dev: IommuDevice,
    dom: IommuDomain,
    iova: Iova,
    page: number,
    access: DmaAccess,
    slot = -1,
  ): Hpa | -1 {
    const iotlb = this.iotlb;
    const atc = dev.atc;
    let s = slot;
    if (s < 0 && atc !== undefined) s = iotlb.lookup(dom.id, page);
    let frame: number;
    let prot: number;
    if (s >= 0) {
      frame = iotlb.frame(s);
      prot = iotlb.prot(s);
    } else {
      this.nWalks++;
      const w = this.walkResult;
      const found = dom.pgtable!.walk(iova, w);
      this.meter.pageWalks++;
      // A 4-level table reads 4 entries down to a 4 KiB leaf, one fewer per level the leaf sits higher.
      this.meter.pageWalkReads += found ? (this.addressWidth === 48 ? 4 : 3) - w.level + 1 : 1;
      if (!found) return this.fault(dev.bdf, dom.id, iova, access, "not-present");
      frame = w.frame;
      prot = w.prot;
      if (this.tracer.enabled) {
        this.tracer.emit("iommu.walk", {
          bdf: dev.bdf,
          domain: dom.id,
          iova: page * PAGE_SIZE,
          hpa: frame * PAGE_SIZE,
          level: w.level,
          iotlbHits: iotlb.hits,
          iotlbMisses: iotlb.misses,
        });
      }
      if (this.superpageTlb && w.pageSize >= SUPERPAGE_BYTES) {
        iotlb.fill(dom.id, SUPERPAGE_TAG + Math.floor(page / SUPERPAGE_PAGES), frame - (page % SUPERPAGE_PAGES), prot);
      } else {
        iotlb.fill(dom.id, page, frame, prot);
      }
    }
    if ((prot & access) === 0) {
      return this.fault(dev.bdf, dom.id, iova, access, access === IOMMU_READ ? "read-denied" : "write-denied");
    }
    if (atc !== undefined) {
      // The translation request's answer: cached with the mapping's full permission, as an ATS completion carries it.
      atc.fill(page, frame, prot);
      this.nAtsRequests++;
      if (this.tracer.enabled) {
        this.tracer.emit("ats.translate", {
          bdf: dev.bdf,
          domain: dom.id,
          iova: page * PAGE_SIZE,
          hpa: frame * PAGE_SIZE,
          prot,
        });
      }
    }
    return (frame * PAGE_SIZE + (iova - page * PAGE_SIZE)) as Hpa;
  }

  private passthrough(bdf: Bdf, domainId: number, iova: Iova, access: DmaAccess): Hpa | -1 {
    if (iova >= 0 && iova < this.ramEnd) return iova as number as Hpa;
    const frame = Math.floor(iova / PAGE_SIZE) as Pfn;
    if (iova >= 0 && this.physmem.isExternal(frame) && this.physmem.isAllocated(frame)) return iova as number as Hpa;
    return this.fault(bdf, domainId, iova, access, "not-present");
  }

  private fault(bdf: Bdf, domain: number, iova: number, access: DmaAccess, reason: FaultReason): -1 {
    const seq = this.faultSeq++;
    this.faultsByReason[reason]++;
    const record: IommuFault = { seq, time: this.clock.now(), bdf, domain, iova, access, reason };
    const n = this.faultRing.length;
    if (this.faultCount < n) {
      this.faultRing[(this.faultHead + this.faultCount) % n] = record;
      this.faultCount++;
    } else {
      // Full: overwrite the oldest, as VT-d's fault recording registers do once software stops draining them.
      this.faultRing[this.faultHead] = record;
      this.faultHead = (this.faultHead + 1) % n;
      this.faultsDropped++;
    }
    if (this.tracer.enabled) {
      this.tracer.emit("iommu.fault", {
        seq,
        bdf,
        domain,
        iova,
        access: access === IOMMU_READ ? "read" : access === IOMMU_WRITE ? "write" : String(access),
        reason,
      });
    }
    return -1;
  }

  private identityDomain(): IommuDomain {
    if (this.identity === undefined) this.identity = this.createDomain("identity");
    return this.identity;
  }

  private newDefaultDomain(): IommuDomain {
    if (!this.enabled || this.defaultDomainType === "identity") return this.identityDomain();
    return this.createDomain("dma");
  }

  private createDomain(type: DomainType): IommuDomain {
    let id = 1;
    while (this.domainsById.has(id)) id++;
    const d = new IommuDomain(this, id, type, this.addressWidth);
    this.domainsById.set(id, d);
    if (this.tracer.enabled) this.tracer.emit("iommu.domain.alloc", { domain: id, type });
    return d;
  }

  private destroyDomain(domain: IommuDomain): void {
    domain.pgtable?.clear();
    this.iotlb.invalidateDomain(domain.id);
    domain.markFreed();
    this.domainsById.delete(domain.id);
    if (this.tracer.enabled) this.tracer.emit("iommu.domain.free", { domain: domain.id, type: domain.type });
  }

  private switchDomain(group: IommuGroup, to: IommuDomain): void {
    const from = group.domain;
    // The ATCs hold translations of the old address space: flush them before the new one becomes visible.
    for (const dev of group.devices) if (dev.atc) this.flushAtc(dev, from);
    from.attached.delete(group);
    group.domain = to;
    to.attached.add(group);
    this.refreshAtsDevices(from);
    this.refreshAtsDevices(to);
  }

  private flushAtc(dev: IommuDevice, domain: IommuDomain): void {
    dev.atc!.invalidateAll();
    this.nAtsInvalidations++;
    this.meter.atcInvalidations++;
    if (this.tracer.enabled) {
      this.tracer.emit("ats.invalidate", { bdf: dev.bdf, domain: domain.id, granularity: "all", iova: 0, size: 0 });
    }
  }

  private refreshAtsDevices(domain: IommuDomain): void {
    const list: IommuDevice[] = [];
    for (const g of domain.attached) for (const d of g.devices) if (d.atc) list.push(d);
    domain.atsDevices = list;
  }
}
