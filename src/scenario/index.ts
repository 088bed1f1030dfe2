/**
 * scenario: whole systems from a config (system.ts, gpus.ts), scenario files (schema.ts), and the runner that executes
 * them deterministically on a virtual clock (runner.ts: the order of a run and its records) with its parts: the checks
 * before a run (prechecks.ts), the step handlers (steps.ts), the VM records (vm-run.ts), fairness windows
 * (fairness.ts), check metrics (metrics.ts), host limits met in the vendor driver (diagnose.ts) and the teardown audit
 * (teardown.ts); the isolation checker that checks every DMA (checker.ts), reports (report.ts) and the translation
 * chain of one access (explain.ts). The guest's platform inside a VM is the VMM's (vmm/guest-platform.ts). Depends on
 * every layer below: core, host, vfio, mdev, devices, gpu, vgpu, vmm, guest.
 */
export * from "./checker.ts";
export * from "./explain.ts";
export { type FairnessWindow, jainIndex } from "./fairness.ts";
export * from "./gpus.ts";
export * from "./report.ts";
export * from "./runner.ts";
export * from "./schema.ts";
export { DEFAULT_WAIT_TIMEOUT_NS, WAIT_POLL_NS } from "./steps.ts";
export * from "./system.ts";
export type { TeardownResult } from "./teardown.ts";
export * from "./units.ts";
export type { KeptBuffer, VmRun } from "./vm-run.ts";
