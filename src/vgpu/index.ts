/**
 * vgpu: the vGPU vendor driver, GVT-g-like mediation of the physical GPU (src/gpu) for guests behind VFIO. The parent
 * (parent.ts) is the GPU as an mdev parent with GVT-g's type table (types.ts); each vGPU (vgpu.ts) is an
 * emulated-IOMMU vfio device with a virtual config space (vconfig.ts), virtual registers (mmio.ts, irq.ts,
 * pvinfo.ts), a shadow GTT over pinned, DMA-mapped guest pages (gtt.ts; guest-iova.ts states the IOVA = GPA rule it
 * relies on), a command scanner that audits and shadows every submission (cmd-scanner.ts), and a share of the
 * weighted time-slice scheduler (scheduler.ts). Depends on core, host, vfio, mdev and gpu.
 */
export * from "./cmd-scanner.ts";
export * from "./gtt.ts";
export * from "./guest-iova.ts";
export * from "./irq.ts";
export * from "./mmio.ts";
export * from "./parent.ts";
export * from "./pvinfo.ts";
export * from "./scheduler.ts";
export * from "./types.ts";
export * from "./vconfig.ts";
export * from "./vgpu.ts";
