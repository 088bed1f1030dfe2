/**
 * Groups, the IOMMU domain, its aperture and the reserved regions of one type1 container: what attaching and
 * detaching a group does. Mirrors vfio_iommu_type1_attach_group (with vfio_iommu_aper_conflict,
 * vfio_iommu_resv_conflict, vfio_iommu_aper_resize, vfio_iommu_resv_exclude and vfio_iommu_replay),
 * vfio_iommu_type1_detach_group (with vfio_iommu_aper_expand and vfio_iommu_resv_refresh) and the group and domain
 * half of vfio_iommu_type1_release.
 *
 * - An emulated (mdev) group only joins the set: it brings no domain and dirties only what its devices pin. A no-IOMMU
 *   group belongs with vfio-noiommu (EINVAL). Nothing attaches while a vaddr is invalidated (EBUSY).
 * - The first IOMMU-backed group allocates the container's 'unmanaged' domain. Attaching narrows the allowed ranges
 *   to the domain aperture minus the group's reserved regions (EINVAL if existing mappings conflict) and replays
 *   existing mappings into a new domain (pin and map all of them, or none). The change is made on a copy of the
 *   ranges and takes effect only if the attach succeeds; a failed attach detaches the group and frees a domain it
 *   allocated.
 * - Detaching the last IOMMU-backed group unmaps the domain and unpins; with emulated groups left their pins (and
 *   their charge) stay, otherwise every mapping goes. The ranges then grow back to the whole space less the
 *   remaining groups' reserved regions. A group that could write anywhere leaving marks everything dirty, once.
 *
 * What it does not do: pin (pinning.ts), remove mappings (mapping.ts), or keep the facts it changes (state.ts).
 *
 * Differences, stated: one IOMMU domain per container (Linux makes one per incompatible IOMMU; this host has one
 * IOMMU, so Linux would also end up with one). Interrupt remapping (EPERM without allow_unsafe_interrupts) is not
 * modelled.
 *
 * Invariants: the domain exists exactly while an IOMMU-backed group is attached, and every such group is attached to
 * it in the host IOMMU; no mapping lies outside the allowed ranges.
 */
import { defineTraceEvents, Errno, hex, KernelError } from "../../core/index.ts";
import type { Iommu, IommuDomain } from "../../host/index.ts";
import type { VfioGroupAttachment } from "../driver.ts";
import type { DirtyTracking } from "./dirty-tracking.ts";
import type { VfioDma } from "./dma-map.ts";
import type { EmulatedDevices } from "./emulated.ts";
import { IOVA_TOP, IovaRanges } from "./iova-ranges.ts";
import type { MappingEngine } from "./mapping.ts";
import type { DomainPinning } from "./pinning.ts";
import type { Type1State } from "./state.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio.type1.group.attach": { container: number; group: number; type: string; domain: number };
    "vfio.type1.group.detach": { container: number; group: number; type: string; domain: number };
    "vfio.type1.domain.alloc": { container: number; domain: number };
    "vfio.type1.domain.free": { container: number; domain: number };
    "vfio.type1.replay": { container: number; domain: number; mappings: number; pages: number };
    "vfio.type1.iova_ranges": { container: number; ranges: string };
  }
}
defineTraceEvents("vfio", {
  "vfio.type1.group.attach": "container {container}: group {group} ({type}) attached, IOMMU domain {domain}",
  "vfio.type1.group.detach": "container {container}: group {group} ({type}) detached from IOMMU domain {domain}",
  "vfio.type1.domain.alloc": "container {container}: IOMMU domain {domain} allocated",
  "vfio.type1.domain.free": "container {container}: IOMMU domain {domain} freed",
  "vfio.type1.replay": "container {container}: {mappings} mapping(s), {pages} page(s) replayed into domain {domain}",
  "vfio.type1.iova_ranges": "container {container}: allowed IOVA ranges now {ranges}",
});

/** What group attach and detach read and change of the container's state. */
export type GroupStateView = Pick<
  Type1State,
  | "container"
  | "tracer"
  | "dmas"
  | "vaddrInvalidCount"
  | "domain"
  | "setDomain"
  | "iovaRanges"
  | "setIovaRanges"
  | "hasGroup"
  | "iommuGroup"
  | "emulatedGroup"
  | "iommuGroupCount"
  | "emulatedGroupCount"
  | "iommuGroupIds"
  | "addEmulatedGroup"
  | "addIommuGroup"
  | "removeGroup"
  | "clearEmulatedGroups"
  | "clearIommuGroups"
  | "nonPinnedGroupLeft"
  | "warn"
>;

/** What detaching needs from the mapping engine when the domain or the last group goes. */
export type MappingTeardown = Pick<MappingEngine, "unmapUnpinAll" | "unmapUnpinReaccount">;
/** The registered emulated devices, named in the warning when the last group leaves before them. */
export type RegisteredDevices = Pick<EmulatedDevices, "count" | "names">;
/** Dirty tracking, told when a group that could write anywhere leaves. */
export type DirtyScope = Pick<DirtyTracking, "markAll">;

/** Attach and detach of one container's groups (see the module comment). */
export class Type1Groups {
  constructor(
    private readonly state: GroupStateView,
    private readonly iommu: Iommu,
    private readonly pinning: DomainPinning,
    private readonly teardown: MappingTeardown,
    private readonly devices: RegisteredDevices,
    private readonly dirty: DirtyScope,
  ) {}

  /** vfio_iommu_type1_attach_group. */
  attach(group: VfioGroupAttachment): void {
    const state = this.state;
    const id = group.id;
    if (state.vaddrInvalidCount > 0) {
      throw new KernelError(
        Errno.EBUSY,
        `cannot attach group ${id} to container ${state.container}: ${state.vaddrInvalidCount} mapping(s) have an invalidated vaddr (VFIO_UPDATE_VADDR in progress)`,
      );
    }
    if (state.hasGroup(id)) {
      throw new KernelError(Errno.EINVAL, `group ${id} is already attached to container ${state.container}`);
    }
    if (group.type === "emulated") {
      state.addEmulatedGroup(group);
      this.traceGroup("vfio.type1.group.attach", group, -1);
      return;
    }
    if (group.type === "noiommu") {
      throw new KernelError(
        Errno.EINVAL,
        `group ${id} is a no-IOMMU group: it belongs with the vfio-noiommu backend, not vfio-iommu-type1`,
      );
    }
    const existing = state.domain;
    const domain = existing ?? this.iommu.allocDomain("unmanaged");
    if (existing === undefined && state.tracer.enabled) {
      state.tracer.emit("vfio.type1.domain.alloc", { container: state.container, domain: domain.id });
    }
    try {
      this.iommu.attachGroup(id, domain);
    } catch (e) {
      if (existing === undefined) this.freeDomain(domain);
      throw e;
    }
    let ranges: IovaRanges;
    try {
      const start: number = domain.aperture.start;
      const end: number = domain.aperture.end;
      this.checkApertureConflict(id, start, end);
      const resv = this.iommu.groupReservedRegions(id);
      for (const r of resv) {
        const hit = state.dmas.find(r.start, r.end - r.start + 1);
        if (hit !== undefined) {
          throw new KernelError(
            Errno.EINVAL,
            `cannot attach group ${id}: its reserved region [${hex(r.start)}, ${hex(r.end)}] (${r.type}) overlaps the existing mapping ${hit.describe()}`,
          );
        }
      }
      ranges = state.iovaRanges.copy();
      ranges.resize(start, end);
      ranges.exclude(resv);
      if (existing === undefined) this.replay(domain);
    } catch (e) {
      this.iommu.detachGroup(id);
      if (existing === undefined) this.freeDomain(domain);
      throw e;
    }
    state.setDomain(domain);
    state.setIovaRanges(ranges);
    state.addIommuGroup(group);
    this.traceGroup("vfio.type1.group.attach", group, domain.id);
    this.traceRanges();
  }

  /** vfio_iommu_type1_detach_group. */
  detach(group: VfioGroupAttachment): void {
    const state = this.state;
    const id = group.id;
    let updateScope = false;
    const emulated = state.emulatedGroup(id);
    if (emulated !== undefined) {
      updateScope = !emulated.pinnedScope;
      state.removeGroup(id);
      if (state.emulatedGroupCount === 0 && state.domain === undefined) {
        this.warnDevicesLeft();
        this.teardown.unmapUnpinAll();
      }
      this.traceGroup("vfio.type1.group.detach", group, -1);
    } else {
      const g = state.iommuGroup(id);
      const domain = state.domain;
      if (g === undefined || domain === undefined) {
        state.warn(`detach of group ${id}, which is not attached to this container`);
        return;
      }
      const ranges = state.iovaRanges.copy();
      this.iommu.detachGroup(id);
      updateScope = !g.pinnedScope;
      state.removeGroup(id);
      if (state.iommuGroupCount === 0) {
        if (state.emulatedGroupCount === 0) {
          this.warnDevicesLeft();
          this.teardown.unmapUnpinAll();
        } else {
          this.teardown.unmapUnpinReaccount();
        }
        state.setDomain(undefined);
        this.freeDomain(domain);
        ranges.expand(0, IOVA_TOP);
      }
      if (ranges.refresh(this.remainingReservedRegions())) state.setIovaRanges(ranges);
      this.traceGroup("vfio.type1.group.detach", group, domain.id);
      this.traceRanges();
    }
    if (updateScope) {
      state.nonPinnedGroupLeft();
      // The group that could have written anywhere is gone: report everything it could reach, once.
      this.dirty.markAll();
    }
  }

  /**
   * vfio_iommu_type1_release, groups and domain: emulated groups forgotten, every mapping removed, IOMMU-backed
   * groups detached from the domain in the host IOMMU, the domain freed, the ranges emptied.
   */
  release(): void {
    const state = this.state;
    state.clearEmulatedGroups();
    this.teardown.unmapUnpinAll();
    const domain = state.domain;
    if (domain !== undefined) {
      for (const id of state.iommuGroupIds()) this.iommu.detachGroup(id);
      state.setDomain(undefined);
      this.freeDomain(domain);
    }
    state.clearIommuGroups();
    state.setIovaRanges(new IovaRanges());
  }

  private warnDevicesLeft(): void {
    if (this.devices.count > 0) {
      this.state.warn(
        `last group left while device(s) ${this.devices.names().join(", ")} are still registered for dma_unmap`,
      );
    }
  }

  /** vfio_iommu_aper_conflict: the new aperture must meet the current ranges and hold every mapping inside them. */
  private checkApertureConflict(id: number, start: number, end: number): void {
    const ranges = this.state.iovaRanges;
    const dmas = this.state.dmas;
    const b = ranges.bounds();
    if (b === undefined) return;
    let hit: VfioDma | undefined;
    if (ranges.disjointFrom(start, end)) {
      throw new KernelError(
        Errno.EINVAL,
        `cannot attach group ${id}: its IOMMU aperture [${hex(start)}, ${hex(end)}] does not meet the allowed ranges ${ranges}`,
      );
    }
    if (start > b.start) hit = dmas.find(b.start, start - b.start);
    if (hit === undefined && end < b.end) {
      const from = end + 1;
      hit = dmas.find(from, Math.min(b.end, Number.MAX_SAFE_INTEGER) - from + 1);
    }
    if (hit !== undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `cannot attach group ${id}: the existing mapping ${hit.describe()} lies outside its IOMMU aperture [${hex(start)}, ${hex(end)}]`,
      );
    }
  }

  /** Reserved regions of every IOMMU-backed group still attached (for vfio_iommu_resv_refresh). */
  private remainingReservedRegions(): { start: number; end: number }[] {
    const out: { start: number; end: number }[] = [];
    for (const id of this.state.iommuGroupIds()) for (const r of this.iommu.groupReservedRegions(id)) out.push(r);
    return out;
  }

  /** vfio_iommu_replay: pin and map every existing mapping into a new domain; undo all of it on failure. */
  private replay(domain: IommuDomain): void {
    const state = this.state;
    const done: VfioDma[] = [];
    let pages = 0;
    try {
      for (const dma of state.dmas) {
        if (dma.iommuMapped) continue;
        this.pinning.pinMap(dma, domain, `replay of mapping ${dma.describe()} into IOMMU domain ${domain.id}`);
        done.push(dma);
        pages += dma.pages;
      }
    } catch (e) {
      for (const dma of done) this.pinning.unmapUnpin(dma, domain, true);
      throw e;
    }
    for (const dma of state.dmas) dma.iommuMapped = true;
    if (state.tracer.enabled) {
      state.tracer.emit("vfio.type1.replay", {
        container: state.container,
        domain: domain.id,
        mappings: done.length,
        pages,
      });
    }
  }

  private freeDomain(domain: IommuDomain): void {
    this.iommu.freeDomain(domain);
    if (this.state.tracer.enabled) {
      this.state.tracer.emit("vfio.type1.domain.free", { container: this.state.container, domain: domain.id });
    }
  }

  private traceGroup(
    name: "vfio.type1.group.attach" | "vfio.type1.group.detach",
    group: VfioGroupAttachment,
    domain: number,
  ): void {
    if (this.state.tracer.enabled) {
      this.state.tracer.emit(name, { container: this.state.container, group: group.id, type: group.type, domain });
    }
  }

  private traceRanges(): void {
    if (this.state.tracer.enabled) {
      this.state.tracer.emit("vfio.type1.iova_ranges", {
        container: this.state.container,
        ranges: this.state.iovaRanges.toString(),
      });
    }
  }
}
