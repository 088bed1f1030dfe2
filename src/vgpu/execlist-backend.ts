/**
 * The production `VirtualEngineBackend`: a workload of the virtual execlists (one context of an ELSP write) becomes a
 * shadow context that the physical GPU runs, as GVT-g's scheduler.c does (intel_vgpu_create_workload,
 * intel_gvt_scan_and_shadow_workload, populate_shadow_context, prepare_workload, complete_current_workload).
 *
 * `run`, for workload w on engine e (one at a time per engine of a vGPU, the caller's contract):
 * 1. the guest context: its image read and checked through the shadow GTT (shadow-context.ts): LRCA and ring inside
 *    the partition, legacy 64-bit addressing, a PML4, a register state that loads no forbidden register;
 * 2. the shadow PPGTT of its PML4 (shadow-ppgtt.ts): found, or created on demand for a root the guest never
 *    announced (as GVT-g), and re-validated against the guest's tables now; the workload holds it until it retires;
 * 3. the guest ring between HEAD and TAIL copied out and scanned (cmd-scanner.ts in context mode): PPGTT and GGTT
 *    addressing, GGTT targets audited against the partition, batches (GGTT or PPGTT) copied into shadow buffers and
 *    re-pointed, MI_USER_INTERRUPT patched to MI_NOOP (raised at completion instead), MI_SEMAPHORE_WAIT refused;
 * 4. a shadow ring (a shadow buffer holding the scanned dwords, HEAD 0, TAIL their length) and a shadow image
 *    (two pages: a zeroed PPHWSP and the register state of `shadowRegisterState`);
 * 5. queued with the scheduler (scheduler.ts), which sends it with `HostGpu.submitContext` (PDP0 = the shadow PML4)
 *    when the vGPU owns the GPU.
 * On completion (the host driver's onComplete), in GVT-g's order: the guest context is updated (CTX_RING_HEAD :=
 * TAIL, CONTEXT_CONTROL and CTX_TIMESTAMP as the engine saved them) and the engine's HEAD and TAIL registers of the
 * vGPU follow, then `done` tells the virtual execlists, which raise the user interrupt (if the ring had
 * MI_USER_INTERRUPT) and then write the CSB entries and raise the context-switch interrupt.
 *
 * Failures, each counted per stage and traced ("vgpu.workload.reject", with the reason); the workload is completed
 * with an error, so the guest sees a hang as GVT-g makes it (no context status event, the engine's queue dropped;
 * i915 then resets the engine):
 * - "context", "ppgtt", "ring": the context, its PPGTT or its ring cannot be shadowed (GVT-g fails the workload's
 *   creation: the guest's ELSP write is refused);
 * - "command": the scanner rejected a command (GVT-g's -EBADRQC / -EFAULT, which vgpu_is_vm_unhealthy turns into
 *   failsafe): the vGPU also enters failsafe (`onGuestError`), as GVT-g's workload_thread does;
 * - "host": no host memory for a shadow (ENOSPC);
 * - an engine error while the context ran (the GPU halted on a command or a fault): EIO, no write-back (GVT-g: the
 *   request's fence error -EIO, "a vGPU hang").
 * When the host driver cannot run contexts at all (it submits through legacy rings) `run` refuses every workload
 * with EOPNOTSUPP and a sentence: it stays pending (virtual-engine.ts), as a guest on such a host would find it.
 *
 * Resources: the shadow ring, image and batch copies are per workload and freed when it retires; an engine reset
 * (`cancel`) lets a workload on an engine finish unseen (its completion is not reported). The model runs a context's
 * memory accesses when the host driver dispatches it, so everything the vGPU releases at a reset has already been
 * used (vgpu.ts says the same of the legacy path).
 */
import { defineTraceEvents, Errno, type Gpa, hex, KernelError, PAGE_SIZE, type Tracer } from "../core/index.ts";
import {
  type ContextSubmissionResult,
  CTX_CONTEXT_CONTROL,
  CTX_TIMESTAMP,
  type GtEngineId,
  type HostGpu,
  LRC_STATE_OFFSET,
  type ShadowBuffer,
} from "../gpu/index.ts";
import type { CommandScanner, ScannerPpgtt, ScanResult } from "./cmd-scanner.ts";
import type { VEngineId } from "./engines.ts";
import type { ContextWorkload, GvtScheduler } from "./scheduler.ts";
import {
  type ContextMemory,
  type GuestContext,
  readGuestContext,
  readGuestRing,
  shadowRegisterState,
  writeBackGuestContext,
} from "./shadow-context.ts";
import type { VgpuShadows } from "./shadow-frames.ts";
import type { PpgttRef, ShadowPpgtt } from "./shadow-ppgtt.ts";
import type { ExeclistWorkload, VirtualEngineBackend, WorkloadCompletion } from "./virtual-engine.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.workload.create": {
      vgpu: number;
      engine: string;
      seq: number;
      lrca: number;
      head: number;
      tail: number;
      pml4: number;
      dwords: number;
    };
    "vgpu.workload.reject": { vgpu: number; engine: string; seq: number; stage: string; reason: string };
    "vgpu.workload.complete": {
      vgpu: number;
      engine: string;
      seq: number;
      head: number;
      busyNs: number;
      commands: number;
      error: string | null;
    };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.workload.create":
    "vgpu{vgpu}: {engine} workload {seq}: context at LRCA {lrca}, ring {head}..{tail}, PML4 {pml4}: {dwords} dwords shadowed",
  "vgpu.workload.reject": "vgpu{vgpu}: {engine} workload {seq} rejected ({stage}): {reason}",
  "vgpu.workload.complete":
    "vgpu{vgpu}: {engine} workload {seq} completed: head {head}, {commands} command(s), {busyNs} ns, error {error}",
});

/** Where a workload was rejected. */
export type WorkloadStage = "context" | "ppgtt" | "ring" | "command" | "host";

/** Counters of the backend of one vGPU (part of `VgpuStats`). */
export interface ExeclistBackendStats {
  /** Workloads shadowed and queued for the GPU. */
  readonly submitted: number;
  /** Completed without an engine error. */
  readonly completed: number;
  /** Completed with an engine error. */
  readonly engineErrors: number;
  /** Rejected before they ran, by stage. */
  readonly rejected: Readonly<Record<WorkloadStage, number>>;
}

/** What the backend needs of its vGPU (vgpu.ts provides it). */
export interface ExeclistBackendDeps {
  readonly vgpuId: number;
  readonly gpu: Pick<HostGpu, "contextEngines">;
  readonly scheduler: Pick<GvtScheduler, "enqueue">;
  readonly tracer: Tracer;
  /** The guest's graphics memory (shadow GTT). */
  readonly memory: ContextMemory;
  /** vfio_dma_rw of guest memory at `at` (throws KernelError). */
  readGuest(at: Gpa, into: Uint8Array): void;
  readonly ppgtt: ShadowPpgtt;
  readonly scanner: CommandScanner;
  readonly shadows: VgpuShadows;
  /** A guest's command was rejected: GVT-g puts the vGPU in failsafe. */
  onGuestError(reason: string): void;
  /** After the guest context is updated: the engine's virtual RING_HEAD and RING_TAIL. */
  setRingRegisters(engine: VEngineId, head: number, tail: number): void;
  /** A workload now holds the vGPU's partition (queued or running) / no longer does. */
  hold(): void;
  unhold(): void;
}

interface Job {
  readonly w: ExeclistWorkload;
  readonly ctx: GuestContext;
  readonly ref: PpgttRef;
  readonly scan: Extract<ScanResult, { ok: true }>;
  readonly ring: ShadowBuffer;
  readonly image: ShadowBuffer;
  readonly done: (c: WorkloadCompletion) => void;
  cancelled: boolean;
}

export class ExeclistBackend implements VirtualEngineBackend {
  readonly name = "gpu";
  private readonly deps: ExeclistBackendDeps;
  private readonly jobs = new Map<ExeclistWorkload, Job>();
  private counts = { submitted: 0, completed: 0, engineErrors: 0 };
  private readonly rejected: Record<WorkloadStage, number> = { context: 0, ppgtt: 0, ring: 0, command: 0, host: 0 };

  constructor(deps: ExeclistBackendDeps) {
    this.deps = deps;
  }

  stats(): ExeclistBackendStats {
    return { ...this.counts, rejected: { ...this.rejected } };
  }

  run(w: ExeclistWorkload, done: (c: WorkloadCompletion) => void): KernelError | undefined {
    const deps = this.deps;
    const engine: GtEngineId = w.engine;
    if (!deps.gpu.contextEngines.includes(engine)) {
      return new KernelError(
        Errno.EOPNOTSUPP,
        `vgpu${w.vgpuId}: ${w.engine} context ${hex(w.descriptor.contextId)} (LRCA ${hex(w.descriptor.lrca)}) stays ` +
          "pending: the host driver submits through legacy rings, so the GPU runs no guest contexts",
      );
    }
    const ctx = readGuestContext(deps.memory, engine, w.descriptor);
    if (typeof ctx === "string") return this.reject(w, done, "context", Errno.EINVAL, ctx);
    const ref = deps.ppgtt.acquire(ctx.pml4);
    if (ref instanceof KernelError) return this.reject(w, done, "ppgtt", ref.errno, ref.message);
    const dwords = readGuestRing(deps.memory, ctx);
    if (typeof dwords === "string") {
      deps.ppgtt.release(ref);
      return this.reject(w, done, "ring", Errno.EFAULT, dwords);
    }
    const scan = deps.scanner.scan(w.engine, dwords, ctx.head, {
      kind: "context",
      engine,
      ppgtt: this.reader(ref),
    });
    if (!scan.ok) {
      deps.ppgtt.release(ref);
      deps.onGuestError(scan.reason);
      return this.reject(w, done, "command", Errno.EINVAL, scan.reason);
    }
    let ring: ShadowBuffer | undefined;
    let image: ShadowBuffer;
    const tail = dwords.length * 4;
    // A ring whose TAIL stays below its length (HEAD == TAIL means empty): whole pages, 1 to 512.
    const ringBytes = Math.max(PAGE_SIZE, Math.ceil((tail + 8) / PAGE_SIZE) * PAGE_SIZE);
    try {
      ring = deps.shadows.alloc("ring", ringBytes);
      ring.write(0, new Uint8Array(dwords.buffer, dwords.byteOffset, tail));
      image = deps.shadows.alloc("context image", 2 * PAGE_SIZE);
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      if (ring !== undefined) deps.shadows.free(ring);
      for (const s of scan.shadows) deps.shadows.free(s);
      deps.ppgtt.release(ref);
      return this.reject(w, done, "host", e.errno, `no host graphics memory for the shadow context: ${e.message}`);
    }
    const regs = shadowRegisterState(ctx, { gma: ring.gma, bytes: ringBytes, tail });
    image.write(0, new Uint8Array(PAGE_SIZE));
    image.write(LRC_STATE_OFFSET, new Uint8Array(regs.buffer));
    const job: Job = { w, ctx, ref, scan, ring, image, done, cancelled: false };
    this.jobs.set(w, job);
    this.counts.submitted++;
    if (deps.tracer.enabled) {
      deps.tracer.emit("vgpu.workload.create", {
        vgpu: w.vgpuId,
        engine: w.engine,
        seq: w.seq,
        lrca: ctx.lrca,
        head: ctx.head,
        tail: ctx.tail,
        pml4: ctx.pml4,
        dwords: dwords.length,
      });
    }
    deps.hold();
    const work: ContextWorkload = {
      vgpuId: w.vgpuId,
      engine,
      context: {
        image,
        pml4: ref.pml4,
        dwords: dwords.length,
        label: `guest ctx ${hex(w.descriptor.contextId)} (LRCA ${hex(ctx.lrca)})`,
      },
      retire: (r) => this.retire(job, r),
    };
    deps.scheduler.enqueue(work);
    return undefined;
  }

  cancel(w: ExeclistWorkload): void {
    const job = this.jobs.get(w);
    if (job !== undefined) job.cancelled = true;
  }

  /** The scanner's view of the context's PPGTT: its shadow, page by page (GMA -> GPA -> vfio_dma_rw). */
  private reader(ref: PpgttRef): ScannerPpgtt {
    return {
      read: (gma, dst) => {
        for (let done = 0; done < dst.length; ) {
          const a = gma + done;
          const n = Math.min(dst.length - done, PAGE_SIZE - (a % PAGE_SIZE));
          const at = this.deps.ppgtt.translate(ref, a);
          if (at === undefined) return a;
          try {
            this.deps.readGuest(at, dst.subarray(done, done + n));
          } catch (e) {
            if (!(e instanceof KernelError)) throw e;
            return a;
          }
          done += n;
        }
        return -1;
      },
    };
  }

  /** complete_current_workload. */
  private retire(job: Job, r: ContextSubmissionResult | undefined): void {
    const deps = this.deps;
    this.jobs.delete(job.w);
    let saved: { contextControl: number; timestamp: number } | undefined;
    if (r !== undefined && r.error === undefined) {
      const word = new Uint8Array(4);
      const dv = new DataView(word.buffer);
      job.image.read(LRC_STATE_OFFSET + 4 * CTX_CONTEXT_CONTROL, word);
      const contextControl = dv.getUint32(0, true);
      job.image.read(LRC_STATE_OFFSET + 4 * CTX_TIMESTAMP, word);
      saved = { contextControl, timestamp: dv.getUint32(0, true) };
    }
    deps.shadows.free(job.ring);
    deps.shadows.free(job.image);
    for (const s of job.scan.shadows) deps.shadows.free(s);
    deps.ppgtt.release(job.ref);
    deps.unhold();
    if (r === undefined || job.cancelled) return; // dropped by a reset: the virtual execlist has forgotten it
    if (deps.tracer.enabled) {
      deps.tracer.emit("vgpu.workload.complete", {
        vgpu: job.w.vgpuId,
        engine: job.w.engine,
        seq: job.w.seq,
        head: r.head,
        busyNs: r.busyNs,
        commands: r.commands,
        error: r.error ?? null,
      });
    }
    if (r.error !== undefined || saved === undefined) {
      this.counts.engineErrors++;
      job.done({
        error: new KernelError(Errno.EIO, `the engine stopped on an error running the shadow context: ${r.error}`),
        userInterrupt: false,
      });
      return;
    }
    const bad = writeBackGuestContext(deps.memory, job.ctx, saved);
    if (bad !== undefined) {
      this.counts.engineErrors++;
      job.done({
        error: new KernelError(Errno.EFAULT, `the guest context cannot be updated: ${bad}`),
        userInterrupt: false,
      });
      return;
    }
    deps.setRingRegisters(job.w.engine, job.ctx.tail, job.ctx.tail);
    this.counts.completed++;
    job.done({ userInterrupt: job.scan.userInterrupts > 0 });
  }

  private reject(
    w: ExeclistWorkload,
    done: (c: WorkloadCompletion) => void,
    stage: WorkloadStage,
    errno: Errno,
    reason: string,
  ): undefined {
    this.rejected[stage]++;
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.workload.reject", { vgpu: w.vgpuId, engine: w.engine, seq: w.seq, stage, reason });
    }
    done({
      error: new KernelError(errno, `vgpu${w.vgpuId}: ${w.engine} workload ${w.seq} rejected: ${reason}`),
      userInterrupt: false,
    });
    return undefined;
  }
}
