/**
 * What every emulated PCI device (an mdev: mtty, a vGPU, a test device) answers identically through VFIO: its device
 * info (a PCI device with reset, the nine fixed vfio-pci regions and five irq indices) and the region table's index
 * check. The device supplies only what differs: each region's size and flags.
 *
 * Linux's equivalent: the few lines each mdev vendor driver repeats in its VFIO_DEVICE_GET_INFO and
 * GET_REGION_INFO handlers (samples/vfio-mdev/mtty.c, gvt/kvmgt.c); here they are written once.
 */
import { Errno, KernelError } from "../core/index.ts";
import type { VfioDeviceInfo, VfioRegionInfo } from "./driver.ts";
import {
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from "./uapi/index.ts";

/** A region the device reads and writes through (trapped). */
export const VFIO_REGION_RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

/** VFIO_DEVICE_GET_INFO of an emulated PCI device with reset. */
export const EMULATED_PCI_DEVICE_INFO: VfioDeviceInfo = Object.freeze({
  flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
  numRegions: VFIO_PCI_NUM_REGIONS,
  numIrqs: VFIO_PCI_NUM_IRQS,
});

/** EINVAL unless `index` names one of the fixed vfio-pci regions; `device` names the device in the sentence. */
export function checkPciRegionIndex(device: string, index: number): void {
  if (!Number.isInteger(index) || index < 0 || index >= VFIO_PCI_NUM_REGIONS) {
    throw new KernelError(
      Errno.EINVAL,
      `${device}: region index ${index} is out of range [0, ${VFIO_PCI_NUM_REGIONS})`,
    );
  }
}

/**
 * GET_REGION_INFO of a trapped region: index checked, `size` bytes (0: the region does not exist), `flags` by default
 * read/write when it exists and none when not (Linux's mtty sample says read/write for empty regions too: it passes
 * VFIO_REGION_RW).
 */
export function trappedRegionInfo(
  device: string,
  index: number,
  size: number,
  flags = size === 0 ? 0 : VFIO_REGION_RW,
): VfioRegionInfo {
  checkPciRegionIndex(device, index);
  return { index, flags, size };
}
