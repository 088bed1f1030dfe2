/**
 * devices: sample physical device models the host can hold and vfio-pci can assign. Today: QEMU's "edu"
 * educational device (MMIO registers, INTx/MSI, bus-master DMA through the IOMMU). Depends on core and host.
 */
export * from "./edu.ts";
export * from "./mtty.ts";
export * from "./mtty-uart.ts";
