/**
 * guest: the GPU driver a guest OS runs, written from docs/gpu-programming.md against `GuestPlatform` (platform.ts)
 * only, so it drives a vGPU, a whole passed-through GPU, or a fake. The driver (driver.ts) probes, balloons (gm.ts),
 * maps guest pages through GTT entries, runs rings (ring.ts) of encoded commands (commands.ts) with interrupt-driven
 * fences, either as legacy rings or, as i915 on gen8+, through execlists (execlists.ts: a logical ring context per
 * engine, the ELSP port and the CSB) with a 4-level PPGTT of guest pages (ppgtt.ts); workloads.ts runs self-checking
 * fills and copies; hostile.ts is the malicious guest's attack set.
 * Depends on core, host (PCI constants) and gpu (register tables). The in-process VMM provides the platform
 * (src/vmm/guest-platform.ts). Test support (a fake machine, the real stack assembly) lives in test-support/ and is
 * not exported.
 */
export * from "./commands.ts";
export * from "./driver.ts";
export * from "./execlists.ts";
export * from "./gm.ts";
export * from "./hostile.ts";
export type * from "./platform.ts";
export * from "./ppgtt.ts";
export * from "./ring.ts";
export * from "./workloads.ts";
