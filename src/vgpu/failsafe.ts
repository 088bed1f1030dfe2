/**
 * Failsafe: the state GVT-g puts a vGPU in when its guest is not one it can mediate (enter_failsafe_mode). From then
 * on every MMIO access of the vGPU is plain storage (reads return what was written, writes have no effect beyond
 * that: no submission, no reset, no execlist), until a device reset (VFIO_DEVICE_RESET, close) clears it. The guest
 * keeps running; its GPU just does nothing, which is safer than guessing what an unaware driver meant.
 *
 * Reasons, as GVT-g names them:
 * - "unsupported-guest": the guest enabled execlists or PPGTT without ever reading PVINFO (a driver that does not
 *   know it runs on a vGPU would use graphics memory it does not own), or set a GFX_MODE bit GVT-g refuses;
 * - "insufficient-resource": the guest wrote PVINFO rsv5, i915's way of saying the vGPU's resources are too small;
 * - "guest-error": the command scanner rejected a command of a guest context (GVT-g's workload_thread enters it
 *   when dispatch fails with -EBADRQC or -EFAULT: vgpu_is_vm_unhealthy).
 * Each entry carries a sentence naming what the guest did.
 *
 * Difference from GVT-g, stated: GVT-g's failsafe also stops shadowing GTT writes (they reach only its virtual GTT);
 * here the shadow GTT keeps validating and shadowing them, which isolates as well and needs no second path.
 */
import { defineTraceEvents, type Tracer } from "../core/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.failsafe": { vgpu: number; reason: string; detail: string };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.failsafe": "vgpu{vgpu}: failsafe mode ({reason}): {detail}",
});

/** GVT_FAILSAFE_UNSUPPORTED_GUEST, GVT_FAILSAFE_INSUFFICIENT_RESOURCE, GVT_FAILSAFE_GUEST_ERR. */
export type FailsafeReason = "unsupported-guest" | "insufficient-resource" | "guest-error";

/** Why a vGPU is in failsafe. */
export interface FailsafeState {
  readonly reason: FailsafeReason;
  /** What the guest did: "GFX_MODE of rcs'0 enabled RUN_LIST before the guest read PVINFO". */
  readonly detail: string;
}

/** The failsafe state of one vGPU. */
export class Failsafe {
  private current: FailsafeState | undefined;

  constructor(
    private readonly vgpuId: number,
    private readonly tracer: Tracer,
  ) {}

  /** Undefined while the vGPU mediates normally. */
  get state(): FailsafeState | undefined {
    return this.current;
  }

  get active(): boolean {
    return this.current !== undefined;
  }

  /** Enters failsafe (the first reason stays; later ones are only traced). */
  enter(reason: FailsafeReason, detail: string): void {
    if (this.current === undefined) this.current = { reason, detail };
    if (this.tracer.enabled) this.tracer.emit("vgpu.failsafe", { vgpu: this.vgpuId, reason, detail });
  }

  /** Device reset. */
  clear(): void {
    this.current = undefined;
  }
}
