/**
 * A guest GPU workload split in two halves so that several VMs' work overlaps on the GPU: `GuestWorkload.start`
 * does what the guest's CPU does (allocate and map surfaces, write their initial contents, build and submit every
 * blit), and `finish` waits for the fences, reads the destination back and compares it byte for byte with a CPU
 * reference. Between the two, the scenario runner lets virtual time pass, and the vGPU scheduler time-slices every
 * VM's queued work on the physical engines.
 *
 * The same operations as the guest's `runWorkload` (src/guest/workloads.ts), from the same public helpers (command
 * encoding, reference blitter, surface comparison) and the same seed derivation, so results are comparable; what
 * differs is only when the waiting happens. Submission blocks only when the ring is full (the driver waits for room,
 * letting time pass), as a real driver would.
 *
 * Not modelled: overlapping copies within one surface, tiled surfaces, depths other than 32 bpp.
 */
import { Rng } from "../core/index.ts";
import { type EngineId, XY_COLOR_BLT_DWORDS, XY_SRC_COPY_BLT_DWORDS } from "../gpu/index.ts";
import {
  CommandBuffer,
  checkWorkloadSpec,
  compareSurfaces,
  type FenceStatus,
  fillPattern,
  type GpuBuffer,
  type GuestGpuDriver,
  referenceCopy,
  referenceFill,
  type WorkloadResult,
  type WorkloadSpec,
} from "../guest/index.ts";

/** Batch buffers kept for reuse in batch mode (one may be rewritten only after its submission completed): enough
 * that submitting never waits for the GPU in the common case, so the work of several VMs overlaps. */
const BATCH_POOL = 256;

/** i915_seqno_passed */
function seqnoPassed(a: number, b: number): boolean {
  return ((a - b) | 0) >= 0;
}

export class GuestWorkload {
  readonly engine: EngineId;
  readonly startedNs: number;
  private readonly seqnos: number[] = [];
  private readonly owned: GpuBuffer[] = [];
  private dst: GpuBuffer | undefined;
  private expected: Uint8Array = new Uint8Array(0);
  private moved = 0;
  private finished: WorkloadResult | undefined;
  /** Guest time when `done()` first saw the last fence signalled (-1: not yet). */
  private doneNs = -1;

  private constructor(
    readonly driver: GuestGpuDriver,
    readonly spec: WorkloadSpec,
  ) {
    this.engine = spec.engine ?? "bcs";
    this.startedNs = driver.platform.time.now();
  }

  /** Allocates, fills and submits everything (see the module comment). On a failure, what it allocated is freed. */
  static start(driver: GuestGpuDriver, spec: WorkloadSpec): GuestWorkload {
    checkWorkloadSpec(spec);
    const w = new GuestWorkload(driver, spec);
    try {
      w.submitAll();
    } catch (e) {
      w.release();
      throw e;
    }
    return w;
  }

  /** Operations submitted; the last fence's sequence number. */
  get lastSeqno(): number {
    return this.seqnos[this.seqnos.length - 1] ?? 0;
  }

  /** Whether the last fence has signalled (a poll: lets no time pass). */
  done(): boolean {
    if (this.finished !== undefined) return true;
    const ok = seqnoPassed(this.driver.completedSeqno(this.engine), this.lastSeqno);
    if (ok && this.doneNs < 0) this.doneNs = this.driver.platform.time.now();
    return ok;
  }

  get isFinished(): boolean {
    return this.finished !== undefined;
  }

  /** Waits for every fence (up to `timeoutNs` each), verifies the destination, frees everything. Idempotent. */
  finish(timeoutNs?: number): WorkloadResult {
    if (this.finished !== undefined) return this.finished;
    const d = this.driver;
    let completed = 0;
    let rejected = 0;
    let timedOut = 0;
    try {
      for (const s of this.seqnos) {
        const status: FenceStatus = d.wait(this.engine, s, timeoutNs);
        if (status === "completed") completed++;
        else if (status === "rejected") rejected++;
        else timedOut++;
      }
      if (this.doneNs < 0) this.doneNs = d.platform.time.now();
      const dst = this.dst!;
      const pitch = this.spec.pitch ?? this.spec.width * 4;
      const actual = new Uint8Array(dst.size);
      d.readBuffer(dst, 0, actual);
      const cmp = compareSurfaces(this.expected, actual.subarray(0, this.expected.length), pitch);
      this.finished = {
        kind: this.spec.kind,
        via: this.spec.via ?? "ring",
        engine: this.engine,
        operations: this.spec.count,
        submissions: this.seqnos.length,
        completed,
        rejected,
        timedOut,
        bytes: this.moved,
        mismatches: cmp.mismatches,
        firstMismatch: cmp.first,
        elapsedNs: this.doneNs - this.startedNs,
        ok: cmp.mismatches === 0 && rejected === 0 && timedOut === 0,
      };
      return this.finished;
    } finally {
      this.release();
    }
  }

  /** Frees every buffer (also what a killed VM's guest would never do: then it is a no-op on a gone device). */
  release(): void {
    for (const b of this.owned.splice(0)) {
      try {
        this.driver.freeBuffer(b);
      } catch {
        // The device or VM is gone (killed, unplugged): the memory went with it.
      }
    }
  }

  private submitAll(): void {
    const { spec, driver } = this;
    const via = spec.via ?? "ring";
    const perSub = spec.opsPerSubmission ?? 1;
    const rects = spec.rects ?? "full";
    const { width: w, height: h } = spec;
    const pitch = spec.pitch ?? w * 4;
    const bytes = pitch * h;
    const rng = new Rng(spec.seed);
    const zone = spec.zone ? { zone: spec.zone } : {};

    const dst = driver.allocBuffer(bytes, zone);
    this.owned.push(dst);
    this.dst = dst;
    const expected = new Uint8Array(bytes);
    rng.fork("dst").fill(expected);
    driver.writeBuffer(dst, 0, expected);
    this.expected = expected;
    let src: GpuBuffer | undefined;
    let srcBytes: Uint8Array | undefined;
    if (spec.kind === "copy") {
      src = driver.allocBuffer(bytes, zone);
      this.owned.push(src);
      srcBytes = new Uint8Array(bytes);
      fillPattern(srcBytes, pitch, spec.pattern ?? "random", rng.fork("src"));
      driver.writeBuffer(src, 0, srcBytes);
    }

    const opDwords = spec.kind === "fill" ? XY_COLOR_BLT_DWORDS : XY_SRC_COPY_BLT_DWORDS;
    const batches: { buf: GpuBuffer; seqno: number }[] = [];
    if (via === "batch") {
      for (let i = 0; i < Math.min(BATCH_POOL, Math.ceil(spec.count / perSub)); i++) {
        const buf = driver.allocBuffer((perSub * opDwords + 2) * 4, zone);
        this.owned.push(buf);
        batches.push({ buf, seqno: 0 });
      }
    }
    const cmds = new CommandBuffer(perSub * opDwords + 2);
    const r = { x1: 0, y1: 0, x2: 0, y2: 0 };
    const ops = rng.fork("ops");
    for (let done = 0; done < spec.count; ) {
      cmds.reset();
      const n = Math.min(perSub, spec.count - done);
      for (let i = 0; i < n; i++) {
        if (rects === "full") {
          r.x1 = 0;
          r.y1 = 0;
          r.x2 = w;
          r.y2 = h;
        } else {
          r.x1 = ops.int(0, w - 1);
          r.x2 = ops.int(r.x1 + 1, w);
          r.y1 = ops.int(0, h - 1);
          r.y2 = ops.int(r.y1 + 1, h);
        }
        if (spec.kind === "fill") {
          const color = ops.u32();
          cmds.colorBlt(dst.gma, pitch, r.x1, r.y1, r.x2, r.y2, color);
          referenceFill(expected, pitch, r.x1, r.y1, r.x2, r.y2, color);
        } else {
          const sx = ops.int(0, w - (r.x2 - r.x1));
          const sy = ops.int(0, h - (r.y2 - r.y1));
          cmds.srcCopyBlt(dst.gma, pitch, r.x1, r.y1, r.x2, r.y2, src!.gma, pitch, sx, sy);
          referenceCopy(expected, pitch, r.x1, r.y1, r.x2, r.y2, srcBytes!, pitch, sx, sy);
        }
        this.moved += (r.x2 - r.x1) * 4 * (r.y2 - r.y1);
      }
      done += n;
      if (via === "ring") {
        this.seqnos.push(driver.submit(this.engine, cmds.words));
      } else {
        const slot = batches[this.seqnos.length % batches.length]!;
        if (slot.seqno !== 0) driver.wait(this.engine, slot.seqno, spec.timeoutNs);
        driver.writeBatch(slot.buf, cmds.words);
        slot.seqno = driver.submitBatch(this.engine, slot.buf.gma);
        this.seqnos.push(slot.seqno);
      }
    }
  }
}
