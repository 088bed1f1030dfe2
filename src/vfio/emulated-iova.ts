/**
 * IOVA = GPA: how a vendor driver names guest memory to vfio. An mdev is an emulated-IOMMU device: vfio keeps
 * no IOMMU domain for it, only type1's table of the VMM's VFIO_IOMMU_MAP_DMA entries, and the VMM maps each block of
 * guest RAM at iova = its guest-physical address (QEMU's vfio listener does; so does src/vmm). So the guest-physical
 * address a guest writes into a GTT entry is, unchanged, the IOVA the vendor driver hands to vfio_pin_pages and
 * vfio_dma_rw, and the IOVA range of a dma_unmap notification is a range of guest-physical addresses. GVT-g relies on
 * the same rule (kvmgt's gfn_to_iova is gfn << PAGE_SHIFT).
 *
 * These functions are the only places where one address kind becomes the other for an emulated device (the vGPU
 * vendor driver, test devices), so that the rule is stated once, with vfio, and a GPA never passes for an IOVA by
 * accident. Not the rule for devices behind a real IOMMU
 * domain (vfio-pci): there the IOVA is whatever the VMM chose and the IOMMU, not the vendor driver, translates it.
 */
import { type Gfn, type Gpa, type Iova, PAGE_SIZE } from "../core/index.ts";

/** The IOVA through which vfio reaches guest-physical address `gpa` of an emulated device's VMM. */
export function iovaOfGpa(gpa: Gpa): Iova {
  return gpa as number as Iova;
}

/** The guest-physical address an IOVA of an emulated device's container names. */
export function gpaOfIova(iova: Iova): Gpa {
  return iova as number as Gpa;
}

/** The IOVA of byte `offset` (default 0) of guest frame `gfn`. */
export function iovaOfGfn(gfn: Gfn, offset = 0): Iova {
  return (gfn * PAGE_SIZE + offset) as Iova;
}

/** The guest frame an IOVA of an emulated device's container falls in. */
export function gfnOfIova(iova: Iova): Gfn {
  return Math.floor(iova / PAGE_SIZE) as Gfn;
}
