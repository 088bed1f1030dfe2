/**
 * gpu: the physical GPU (a Skylake GT2-like Intel integrated GPU as a PCI device model: GGTT, four engines with legacy
 * ring buffers and execlists, logical ring contexts, 4-level PPGTTs, the blitter, GT interrupts, an engine time cost
 * model) and the i915-like host graphics driver that owns it and offers `HostGpu` (contract.ts) to the vGPU vendor
 * driver. `regs.ts` is the register map, `command-table.ts` the command decoder, `commands.ts` the one encoder of each
 * command, `lrc.ts` the context image and descriptor; docs/gpu-programming.md is the datasheet. Depends on core and
 * host.
 *
 * The device is gpu.ts over engine.ts (a command streamer), execlists.ts (ELSP, the CSB, context restore and save),
 * ppgtt.ts (the PPGTT walker and TLB), memory.ts (the one path to memory: address space -> DeviceDma), ggtt.ts,
 * blitter.ts, interrupts.ts and cost.ts.
 *
 * The host driver is `host-driver.ts` (its face: probe, interrupts, unbind, the HostGpu methods) over parts that are
 * not exported here: host-partitions.ts (GM and fences between host and vGPUs), host-buffers.ts (the driver's own
 * DMA-coherent buffers, shadow buffers and their observer), host-submission.ts (rings and queues on the engines),
 * host-execlists.ts (the same over execlists, kernel contexts, shadow contexts), host-ppgtt.ts (the kernel contexts'
 * aliasing PPGTT), host-ggtt.ts (the driver's GGTT writes and their mirror), host-invariants.ts (the checks that they
 * never collide) and host-mmio.ts (register access).
 */
export * from "./blitter.ts";
export * from "./command-table.ts";
export * from "./commands.ts";
export * from "./contract.ts";
export * from "./cost.ts";
export * from "./engine.ts";
export * from "./execlists.ts";
export * from "./ggtt.ts";
export * from "./gm-region-allocator.ts";
export * from "./gpu.ts";
export * from "./host-driver.ts";
export * from "./interrupts.ts";
export * from "./lrc.ts";
export * from "./memory.ts";
export * from "./ppgtt.ts";
export * from "./regs.ts";
export * from "./tiling.ts";
