/**
 * host: the machine the vGPU stack runs on. Physical memory, process address spaces and files, PCI devices, the
 * system IOMMU with its IOTLB and ATS, the IOVA allocator and the DMA API, and the single path by which devices do
 * DMA. Depends only on core.
 */
export * from "./ats.ts";
export * from "./bdf.ts";
export * from "./devfs.ts";
export * from "./device-dma.ts";
export * from "./dma.ts";
export * from "./eventfd.ts";
export * from "./files.ts";
export * from "./host.ts";
export * from "./io-pgtable.ts";
export * from "./iommu.ts";
export * from "./iotlb.ts";
export * from "./iova.ts";
export * from "./iova-rcache.ts";
/** Linux iova.c's linear walk, ported: the oracle of the IOVA tests and the FAST'15 contrast of the cost model. */
export { LinearIovaDomain, type LinearIovaRange } from "./iova-reference.ts";
export * from "./mm.ts";
export * from "./pci.ts";
export * from "./pci-config.ts";
export * from "./physmem.ts";
export * from "./process.ts";
export * from "./sysfs.ts";
