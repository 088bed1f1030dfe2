/**
 * The VFIO container: what a process gets by opening /dev/vfio/vfio (drivers/vfio/container.c).
 *
 * A container is an IOMMU context shared by the groups the user puts in it. It starts with no IOMMU backend; the user
 * adds at least one group (VFIO_GROUP_SET_CONTAINER on the group fd), then chooses a backend with VFIO_SET_IOMMU, after
 * which every other container ioctl (MAP_DMA, UNMAP_DMA, GET_INFO, ...) is the backend's.
 *
 * Rules kept from Linux:
 * - GET_API_VERSION answers VFIO_API_VERSION (0) whatever the argument.
 * - CHECK_EXTENSION with no backend polls the registered IOMMU drivers (most recently registered first, as Linux's
 *   list_add puts new drivers at the head) and returns the first positive answer, else the last answer (0); once a
 *   group is attached, drivers the container may not use are skipped (a no-IOMMU container may use only vfio-noiommu,
 *   any other container anything but vfio-noiommu). With a backend set, the backend alone answers.
 * - SET_IOMMU: EINVAL with no group attached or a backend already set. Each allowed driver that answers the
 *   extension positively is opened and every group attached to it; if opening or an attach fails, the attached groups
 *   are detached in reverse, the backend released, and the next driver tried. Nobody accepted: ENODEV, or the error of
 *   the last driver that accepted the extension but failed.
 * - Any other request is passed to the backend; with none set, EINVAL.
 * - Groups and backend mixing: a no-IOMMU group and a real one never share a container (EPERM).
 * - Detaching the last group releases the backend (every mapping, pin and accounting goes) and the container returns
 *   to the unset state; SET_IOMMU may then be issued again.
 * - The container lives while its fd is open or a group holds it: a group that joins takes a reference on the
 *   container's open file (OpenFile.hold) and drops it when it leaves, so closing the container fd first is harmless.
 *
 * Integer arguments: CHECK_EXTENSION and SET_IOMMU take the extension as an integer. A byte buffer (a pointer) matches
 * no extension: CHECK_EXTENSION answers 0 and SET_IOMMU fails with ENODEV after its EINVAL checks, without asking the
 * drivers.
 *
 * Not modelled: CAP_SYS_RAWIO (required by Linux for no-IOMMU groups), the VFIO_IOMMU_CONTAINER_CLOSE notification
 * (type1 uses it only to wake UPDATE_VADDR waiters), iommufd's compatibility container.
 *
 * Invariants: `backend` set => at least one group attached; every attached group's `container` is this one; a
 * released container has no group and no backend.
 */
import { defineTraceEvents, Errno, KernelError, type Tracer } from "../core/index.ts";
import type { AddressSpace, FileOps, IoctlArg } from "../host/index.ts";
import type { VfioGroupAttachment, VfioIommuBackend, VfioIommuDriver } from "./driver.ts";
import {
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_GET_API_VERSION,
  VFIO_SET_IOMMU,
  vfioExtensionName,
  vfioIoctlName,
} from "./uapi/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfio.container.open": { container: number; pid: number };
    "vfio.container.close": { container: number };
    "vfio.container.set_iommu": { container: number; driver: string; extension: string; groups: readonly number[] };
    "vfio.container.release_iommu": { container: number; driver: string };
  }
}
defineTraceEvents("vfio", {
  "vfio.container.open": "container {container} opened by pid {pid}",
  "vfio.container.close": "container {container} released",
  "vfio.container.set_iommu": "container {container}: IOMMU driver {driver} set for {extension}, groups {groups}",
  "vfio.container.release_iommu": "container {container}: last group left, {driver} backend released",
});

/** What a container needs from vfio-core. */
export interface VfioContainerEnv {
  readonly tracer: Tracer;
  /** The registered IOMMU drivers, in the order Linux walks its list (most recently registered first). */
  iommuDrivers(): readonly VfioIommuDriver[];
  /** True for the vfio-noiommu driver, the only one a no-IOMMU container may use. */
  isNoiommuDriver(driver: VfioIommuDriver): boolean;
  /** The container's last reference went. */
  containerReleased(container: VfioContainer): void;
}

/** A group as its container sees it (implemented by VfioGroup). */
export interface VfioContainerMember {
  readonly attachment: VfioGroupAttachment;
  /** iommu_group_claim_dma_owner: EPERM (with the offending device named) when the group is not viable. */
  claimDmaOwner(): void;
  /** iommu_group_release_dma_owner. */
  releaseDmaOwner(): void;
}

export class VfioContainer implements FileOps {
  readonly kind = "vfio-container";
  readonly id: number;
  /** The opener's address space: the one SET_IOMMU hands the backend (MAP_DMA's vaddr refers to it). */
  readonly mm: AddressSpace;
  /** Most recently attached first (Linux's list_add). */
  private readonly members: VfioContainerMember[] = [];
  private driver_: VfioIommuDriver | undefined;
  private backend_: VfioIommuBackend | undefined;
  private noiommu_ = false;
  private released_ = false;

  constructor(
    private readonly env: VfioContainerEnv,
    id: number,
    mm: AddressSpace,
    pid: number,
  ) {
    this.id = id;
    this.mm = mm;
    if (env.tracer.enabled) env.tracer.emit("vfio.container.open", { container: id, pid });
  }

  get backend(): VfioIommuBackend | undefined {
    return this.backend_;
  }

  get driver(): VfioIommuDriver | undefined {
    return this.driver_;
  }

  /** True once a no-IOMMU group joined (and until the container empties and another kind joins). */
  get noiommu(): boolean {
    return this.noiommu_;
  }

  get released(): boolean {
    return this.released_;
  }

  /** Ids of the attached groups, most recent first. */
  groupIds(): number[] {
    return this.members.map((m) => m.attachment.id);
  }

  get groupCount(): number {
    return this.members.length;
  }

  ioctl(request: number, arg: IoctlArg): number {
    switch (request) {
      case VFIO_GET_API_VERSION:
        return VFIO_API_VERSION;
      case VFIO_CHECK_EXTENSION:
        return this.checkExtension(arg);
      case VFIO_SET_IOMMU:
        this.setIommu(arg);
        return 0;
      default:
        if (this.backend_ === undefined) {
          throw new KernelError(
            Errno.EINVAL,
            `container ${this.id}: ${vfioIoctlName(request, "container")} needs an IOMMU backend: ` +
              "add a group (VFIO_GROUP_SET_CONTAINER) and call VFIO_SET_IOMMU first",
          );
        }
        return this.backend_.ioctl(request, arg);
    }
  }

  release(): void {
    // Groups hold the container's open file, so the last reference can only go once every group has left.
    this.released_ = true;
    if (this.env.tracer.enabled) this.env.tracer.emit("vfio.container.close", { container: this.id });
    this.env.containerReleased(this);
  }

  /**
   * vfio_container_attach_group: the no-IOMMU mixing check (EPERM), the DMA ownership claim (EPERM when not viable),
   * then, if a backend is set, the backend's attach (its error undoes the claim). Nothing changes on failure.
   */
  attachGroup(member: VfioContainerMember): void {
    const noiommu = member.attachment.type === "noiommu";
    if (this.members.length > 0 && this.noiommu_ !== noiommu) {
      throw new KernelError(
        Errno.EPERM,
        noiommu
          ? `container ${this.id} holds IOMMU-protected groups; no-IOMMU group ${member.attachment.id} cannot join it`
          : `container ${this.id} holds no-IOMMU groups; group ${member.attachment.id} cannot join it`,
      );
    }
    member.claimDmaOwner();
    if (this.backend_ !== undefined) {
      try {
        this.backend_.attachGroup(member.attachment);
      } catch (e) {
        member.releaseDmaOwner();
        throw e;
      }
    }
    this.noiommu_ = noiommu;
    this.members.unshift(member);
  }

  /** vfio_group_detach_container: the backend lets the group go; the last group out releases the backend. */
  detachGroup(member: VfioContainerMember): void {
    const i = this.members.indexOf(member);
    if (i < 0) throw new Error(`group ${member.attachment.id} is not in container ${this.id}`);
    const backend = this.backend_;
    const driver = this.driver_;
    try {
      backend?.detachGroup(member.attachment);
    } finally {
      member.releaseDmaOwner();
      this.members.splice(i, 1);
      if (backend !== undefined && this.members.length === 0) {
        this.backend_ = undefined;
        this.driver_ = undefined;
        backend.release();
        if (this.env.tracer.enabled) {
          this.env.tracer.emit("vfio.container.release_iommu", { container: this.id, driver: driver!.name });
        }
      }
    }
  }

  private checkExtension(arg: IoctlArg): number {
    if (typeof arg !== "number") return 0;
    if (this.backend_ !== undefined) return this.backend_.checkExtension(arg);
    let ret = 0;
    for (const driver of this.env.iommuDrivers()) {
      if (this.members.length > 0 && !this.allowed(driver)) continue;
      ret = driver.checkExtension(arg);
      if (ret > 0) break;
    }
    return ret;
  }

  private setIommu(arg: IoctlArg): void {
    if (this.members.length === 0) {
      throw new KernelError(
        Errno.EINVAL,
        `container ${this.id}: VFIO_SET_IOMMU needs at least one group: call VFIO_GROUP_SET_CONTAINER on a group fd first`,
      );
    }
    if (this.backend_ !== undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `container ${this.id} already uses IOMMU driver ${this.driver_!.name}; remove every group to change it`,
      );
    }
    const what = typeof arg === "number" ? vfioExtensionName(arg) : "a pointer argument";
    let failure: KernelError | undefined;
    if (typeof arg === "number") {
      for (const driver of this.env.iommuDrivers()) {
        if (!this.allowed(driver)) continue;
        if (driver.checkExtension(arg) <= 0) continue;
        let backend: VfioIommuBackend;
        try {
          backend = driver.open(arg, this.mm);
        } catch (e) {
          if (!(e instanceof KernelError)) throw e;
          failure = e;
          continue;
        }
        const attached: VfioContainerMember[] = [];
        try {
          // Linux walks its group list head first: most recently attached first.
          for (const m of this.members) {
            backend.attachGroup(m.attachment);
            attached.push(m);
          }
        } catch (e) {
          for (let k = attached.length - 1; k >= 0; k--) backend.detachGroup(attached[k]!.attachment);
          backend.release();
          if (!(e instanceof KernelError)) throw e;
          failure = e;
          continue;
        }
        this.driver_ = driver;
        this.backend_ = backend;
        if (this.env.tracer.enabled) {
          this.env.tracer.emit("vfio.container.set_iommu", {
            container: this.id,
            driver: driver.name,
            extension: what,
            groups: this.groupIds(),
          });
        }
        return;
      }
    }
    if (failure !== undefined) throw failure;
    throw new KernelError(
      Errno.ENODEV,
      `container ${this.id}: no registered IOMMU driver accepts ${what}` +
        (this.noiommu_ ? " (a no-IOMMU container may only use VFIO_NOIOMMU_IOMMU)" : ""),
    );
  }

  /** vfio_iommu_driver_allowed: no-IOMMU containers use only vfio-noiommu, and only they may. */
  private allowed(driver: VfioIommuDriver): boolean {
    return this.noiommu_ === this.env.isNoiommuDriver(driver);
  }
}
