/**
 * vgpu: the vGPU vendor driver, GVT-g-like mediation of the physical GPU (src/gpu) for guests behind VFIO. The parent
 * (parent.ts) is the GPU as an mdev parent with GVT-g's type table (types.ts); each vGPU (vgpu.ts) is an
 * emulated-IOMMU vfio device with a virtual config space (vconfig.ts), virtual registers (mmio.ts over the register
 * table of mmio-table.ts, irq.ts, pvinfo.ts) for the four engines of engines.ts, virtual execlists (execlist.ts over
 * the slot state machine of execlist-state.ts) whose workloads a `VirtualEngineBackend` (virtual-engine.ts) runs: in
 * production execlist-backend.ts, which shadows each guest context (shadow-context.ts), its PPGTT (shadow-ppgtt.ts)
 * and its ring, and submits it to the GPU's execlists; the guest's PPGTT roots (ppgtt-roots.ts), a failsafe state
 * (failsafe.ts), a shadow GTT over pinned, DMA-mapped guest pages (gtt.ts; vfio's emulated-iova.ts states the IOVA = GPA rule
 * it relies on) whose gfn cache the shadow PPGTT shares, a command scanner that audits and shadows every ring
 * submission, legacy or context (cmd-scanner.ts), the shadow buffers of each vGPU as an isolation checker sees them
 * (shadow-frames.ts), and a share of the weighted time-slice scheduler (scheduler.ts). gvt-regs.ts (register names
 * the GPU model does not define yet) stays private. Depends on core, host, vfio, mdev and gpu.
 */
export * from "./cmd-scanner.ts";
export * from "./engines.ts";
export * from "./execlist.ts";
export * from "./execlist-backend.ts";
export * from "./execlist-state.ts";
export * from "./failsafe.ts";
export * from "./gtt.ts";
export * from "./irq.ts";
export * from "./mmio.ts";
export * from "./mmio-table.ts";
export * from "./parent.ts";
export * from "./ppgtt-roots.ts";
export * from "./pvinfo.ts";
export * from "./scheduler.ts";
export * from "./shadow-context.ts";
export * from "./shadow-frames.ts";
export * from "./shadow-ppgtt.ts";
export * from "./types.ts";
export * from "./vconfig.ts";
export * from "./vgpu.ts";
export * from "./virtual-engine.ts";
