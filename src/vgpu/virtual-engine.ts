/**
 * Where the virtual execlists hand a guest context for execution: the consumer-side interface of the vendor driver
 * (`VirtualEngineBackend`), declared here and provided by the vGPU (vgpu.ts) or injected by a test. The virtual
 * execlists (execlist.ts) decide when a workload starts and what the guest sees of it (context status events,
 * interrupts); a backend decides how it runs. The production one is execlist-backend.ts: it builds the shadow
 * context and the shadow PPGTT from the guest's LRC, scans its ring and submits it to the physical GPU's execlists.
 * Nothing in this file executes anything.
 *
 * Contract: `run` either refuses at once (returns an error value, and never calls `done`: the workload stays pending
 * and is retried at the engine's next ELSP write; for a condition the guest cannot fix, e.g. a host that runs no
 * contexts) or accepts and calls `done` exactly once, later or from inside `run` (with an error for a workload that
 * fails: the guest then sees a hang); `cancel` tells the backend a workload's engine was reset (a later `done` for it
 * is ignored by the caller). One workload per engine per vGPU is in a backend at a time.
 *
 * There is deliberately no completing stub here: a test backend that completes at once lives with the test fixtures
 * (testing.ts), never in a production path.
 */
import type { KernelError } from "../core/index.ts";
import type { VEngineId } from "./engines.ts";
import type { ContextDescriptor } from "./execlist-state.ts";

/** One context the guest submitted through ELSP, as the virtual execlists hand it over. */
export interface ExeclistWorkload {
  readonly vgpuId: number;
  readonly engine: VEngineId;
  /** The element of the ELSP write, as the guest wrote it (LRCA in the guest's GGTT, context id, mode bits). */
  readonly descriptor: ContextDescriptor;
  /** Order of submission on this engine of this vGPU, from 1. */
  readonly seq: number;
}

/** How a workload ended. */
export interface WorkloadCompletion {
  /** Undefined when the context ran to its tail; else why not (the guest then sees a hang: no context status event). */
  readonly error?: KernelError;
  /** The context executed MI_USER_INTERRUPT: the user interrupt is raised before the context-switch event. */
  readonly userInterrupt: boolean;
}

/** What executes the workloads of the virtual execlists. */
export interface VirtualEngineBackend {
  /** For traces: "none", "test", "gpu". */
  readonly name: string;
  /**
   * Starts `workload`. Returns undefined when accepted (`done` is then called exactly once), or an error value when
   * it cannot run now (the workload stays pending; the virtual execlists retry at the engine's next ELSP write).
   */
  run(workload: ExeclistWorkload, done: (completion: WorkloadCompletion) => void): KernelError | undefined;
  /** The workload's engine was reset before it completed. */
  cancel(workload: ExeclistWorkload): void;
}
