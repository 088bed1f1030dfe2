/**
 * vfio-noiommu: the IOMMU driver of containers whose groups have no IOMMU protection (drivers/vfio/container.c).
 *
 * Linux offers it only with the `enable_unsafe_noiommu_mode` module parameter: devices without an IOMMU group then get
 * a fake group (/dev/vfio/noiommu-<N>), and a container holding such groups can select this driver with
 * VFIO_SET_IOMMU(VFIO_NOIOMMU_IOMMU). It provides no isolation and no translation: there are no mapping ioctls, the
 * user programs bus addresses directly. Such a container may use no other driver, and no other container may use this
 * one (vfio-core enforces both with `isNoiommuDriver`).
 *
 * Behaviour kept: CHECK_EXTENSION answers 1 for VFIO_NOIOMMU_IOMMU only while the mode is enabled, 0 for everything
 * else; open with any other extension is EINVAL; every container ioctl is ENOTTY; attach and detach accept any group;
 * vfio_pin_pages / vfio_dma_rw through it are ENOTTY (the driver has neither).
 *
 * Not modelled: CAP_SYS_RAWIO (Linux requires it to open or use a no-IOMMU group), the kernel taint.
 */
import { Errno, type Iova, KernelError, type Pfn } from "../core/index.ts";
import type { AddressSpace, IoctlArg } from "../host/index.ts";
import type { VfioEmulatedDevice, VfioGroupAttachment, VfioIommuBackend, VfioIommuDriver } from "./driver.ts";
import { VFIO_NOIOMMU_IOMMU, vfioExtensionName, vfioIoctlName } from "./uapi/index.ts";

export const NOIOMMU_DRIVER_NAME = "vfio-noiommu";

export interface NoiommuOptions {
  /** The enable_unsafe_noiommu_mode parameter: read on every query, so it may change at run time (it is S_IWUSR). */
  readonly enabled: boolean | (() => boolean);
}

const noiommuDrivers = new WeakSet<VfioIommuDriver>();

/** True for drivers made by `noiommuDriver` (the only driver a no-IOMMU container may use). */
export function isNoiommuDriver(driver: VfioIommuDriver): boolean {
  return noiommuDrivers.has(driver);
}

/** The vfio-noiommu IOMMU driver. */
export function noiommuDriver(opts: NoiommuOptions): VfioIommuDriver {
  const enabled = typeof opts.enabled === "function" ? opts.enabled : () => opts.enabled === true;
  const answer = (ext: number): number => (enabled() && ext === VFIO_NOIOMMU_IOMMU ? 1 : 0);
  const driver: VfioIommuDriver = {
    name: NOIOMMU_DRIVER_NAME,
    checkExtension: answer,
    open(ext: number, _mm: AddressSpace): VfioIommuBackend {
      if (ext !== VFIO_NOIOMMU_IOMMU) {
        throw new KernelError(
          Errno.EINVAL,
          `${NOIOMMU_DRIVER_NAME} serves only VFIO_NOIOMMU_IOMMU, not ${vfioExtensionName(ext)}`,
        );
      }
      return new NoiommuBackend(answer);
    },
  };
  noiommuDrivers.add(driver);
  return driver;
}

/** A no-IOMMU container's backend: it only remembers which groups it holds. */
export class NoiommuBackend implements VfioIommuBackend {
  private readonly groups = new Set<number>();
  private released = false;

  constructor(private readonly answer: (ext: number) => number) {}

  /** Ids of the attached groups. */
  groupIds(): number[] {
    return [...this.groups].sort((a, b) => a - b);
  }

  get isReleased(): boolean {
    return this.released;
  }

  ioctl(request: number, _arg: IoctlArg): number {
    throw new KernelError(
      Errno.ENOTTY,
      `${vfioIoctlName(request, "container")}: a no-IOMMU container has no DMA mapping; devices use bus addresses directly`,
    );
  }

  checkExtension(ext: number): number {
    return this.answer(ext);
  }

  attachGroup(group: VfioGroupAttachment): void {
    this.groups.add(group.id);
  }

  detachGroup(group: VfioGroupAttachment): void {
    this.groups.delete(group.id);
  }

  release(): void {
    this.groups.clear();
    this.released = true;
  }

  registerDevice(_dev: VfioEmulatedDevice): void {}

  unregisterDevice(_dev: VfioEmulatedDevice): void {}

  pinPages(dev: VfioEmulatedDevice, _iova: Iova, _npage: number, _prot: number): Pfn[] {
    throw new KernelError(Errno.ENOTTY, `vfio_pin_pages by ${dev.name}: ${NOIOMMU_DRIVER_NAME} cannot pin pages`);
  }

  unpinPages(dev: VfioEmulatedDevice, _iova: Iova, _npage: number): void {
    throw new KernelError(Errno.ENOTTY, `vfio_unpin_pages by ${dev.name}: ${NOIOMMU_DRIVER_NAME} pins nothing`);
  }

  dmaRw(_iova: Iova, _buf: Uint8Array, _write: boolean): void {
    throw new KernelError(Errno.ENOTTY, `vfio_dma_rw: ${NOIOMMU_DRIVER_NAME} has no DMA mappings to access`);
  }
}
