/**
 * Parameterised, self-checking GPU workloads for the guest driver: fills (XY_COLOR_BLT) and copies (XY_SRC_COPY_BLT)
 * of W x H 32-bpp linear surfaces with a row pitch, submitted straight into the ring or through batch buffers.
 *
 * Everything is derived from `seed` (a `Rng` from src/core): the destination's initial contents (so that bytes the
 * GPU must not touch, such as the padding between a row's last pixel and the pitch, are recognisable), the source
 * pattern, rectangles and colours. The expected result is computed on the CPU by a reference blitter applying the
 * same operations in the same order to a copy of the initial destination; after the GPU work completes the whole
 * destination surface is read back through guest memory and compared byte for byte.
 *
 * A workload runs in two halves so that several VMs' work can overlap on the GPU: `GuestWorkload.start` does what the
 * guest's CPU does (allocate and map the surfaces, write their initial contents, build and submit every blit), and
 * `finish` waits for the fences, reads the destination back and compares it. Between the two a caller (the scenario
 * runner) lets virtual time pass while the vGPU scheduler time-slices every VM's queued work on the engines.
 * `runWorkload` is the two halves back to back. Submission blocks only when the ring is full (the driver waits for
 * room, letting time pass), as a real driver would.
 *
 * Batch mode keeps a pool of batch buffers and reuses one only after the submission that used it has completed (a
 * batch must stay intact until the GPU, or the vendor driver's scanner, has read it). `start` keeps up to
 * `OVERLAP_BATCH_POOL` (submitting then never waits for the GPU in the common case, so VMs' work overlaps);
 * `runWorkload` keeps `SYNC_BATCH_POOL`, so a long run reuses batches and waits for the GPU as a simple driver does.
 *
 * Surfaces are named by `driver.gpuAddress`: their GMA on a driver with legacy rings, their PPGTT address on one with
 * execlists (and batches then run through the PPGTT as well): the same workload exercises either path.
 *
 * Not modelled: overlapping copies within one surface (source and destination are separate buffers), tiled surfaces,
 * depths other than 32 bpp.
 */
import { Errno, hex, KernelError, Rng } from "../core/index.ts";
import { type EngineId, XY_COLOR_BLT_DWORDS, XY_SRC_COPY_BLT_DWORDS } from "../gpu/index.ts";
import { CommandBuffer } from "./commands.ts";
import type { FenceStatus, GpuBuffer, GuestGpuDriver } from "./driver.ts";
import type { GmZone } from "./gm.ts";

export type WorkloadKind = "fill" | "copy";
export type SubmitVia = "ring" | "batch";
/** Whole-surface operations, or random sub-rectangles. */
export type RectMode = "full" | "random";
/** How a copy's source surface is filled. */
export type SourcePattern = "random" | "gradient";

/** The largest operation a vendor driver accepts (GVT-g's max surface size); honest workloads stay below it. */
export const WORKLOAD_MAX_SURFACE_BYTES = 36 * 1024 * 1024;
/** Blit pitches are 16-bit fields whose bit 15 reads as a sign: at most 32767 bytes. */
export const MAX_PITCH = 0x7fff;
/** Batch buffers `runWorkload` keeps for reuse in batch mode. */
export const SYNC_BATCH_POOL = 4;
/** Batch buffers `GuestWorkload.start` keeps by default: enough that submitting rarely waits, so VMs' work overlaps. */
export const OVERLAP_BATCH_POOL = 256;

export interface WorkloadSpec {
  readonly kind: WorkloadKind;
  /** Operations (blits) in total. */
  readonly count: number;
  /** Surface width in pixels. */
  readonly width: number;
  /** Surface height in rows. */
  readonly height: number;
  /** Row pitch in bytes: a multiple of 4, at least width * 4; default width * 4. */
  readonly pitch?: number;
  /** Default "ring". */
  readonly via?: SubmitVia;
  /** Default "bcs" (a portable driver sends blits to the blitter). */
  readonly engine?: EngineId;
  /** Blits per submission; default 1. */
  readonly opsPerSubmission?: number;
  /** Default "full". */
  readonly rects?: RectMode;
  /** Default "random". */
  readonly pattern?: SourcePattern;
  /** Where the surfaces go in graphics memory; default: the driver's choice. */
  readonly zone?: GmZone;
  readonly seed: number;
  readonly timeoutNs?: number;
}

export interface Mismatch {
  /** Byte offset in the destination surface. */
  readonly offset: number;
  readonly x: number;
  readonly y: number;
  readonly expected: number;
  readonly actual: number;
}

export interface WorkloadResult {
  readonly kind: WorkloadKind;
  readonly via: SubmitVia;
  readonly engine: EngineId;
  readonly operations: number;
  readonly submissions: number;
  readonly completed: number;
  readonly rejected: number;
  readonly timedOut: number;
  /** Bytes the blits write (what the GPU moved). */
  readonly bytes: number;
  /** Destination bytes that differ from the reference result. */
  readonly mismatches: number;
  readonly firstMismatch: Mismatch | undefined;
  /** Guest time from the first submission to the last completion. */
  readonly elapsedNs: number;
  /** Every submission completed and the destination matches the reference. */
  readonly ok: boolean;
}

/** Validates a spec; EINVAL naming the bad field. */
export function checkWorkloadSpec(spec: WorkloadSpec): void {
  const bad = (msg: string): never => {
    throw new KernelError(Errno.EINVAL, `workload ${spec.kind}: ${msg}`);
  };
  const int = (v: number, name: string, min: number, max: number) => {
    if (!Number.isInteger(v) || v < min || v > max) bad(`${name} ${v} must be an integer in [${min}, ${max}]`);
  };
  if (spec.kind !== "fill" && spec.kind !== "copy") bad(`kind must be "fill" or "copy"`);
  int(spec.count, "count", 1, 1_000_000);
  int(spec.width, "width", 1, MAX_PITCH >> 2);
  int(spec.height, "height", 1, 0xffff);
  const pitch = spec.pitch ?? spec.width * 4;
  int(pitch, "pitch", spec.width * 4, MAX_PITCH);
  if (pitch % 4 !== 0) bad(`pitch ${pitch} must be a multiple of 4`);
  if (pitch * spec.height > WORKLOAD_MAX_SURFACE_BYTES) {
    bad(`surface of ${pitch * spec.height} bytes exceeds ${WORKLOAD_MAX_SURFACE_BYTES} (the vGPU's operation limit)`);
  }
  int(spec.opsPerSubmission ?? 1, "opsPerSubmission", 1, 4096);
}

/** Reference XY_COLOR_BLT on a CPU copy of a surface. */
export function referenceFill(
  surface: Uint8Array,
  pitch: number,
  x1: number,
  y1: number,
  x2: number,
  y2: number,
  color: number,
): void {
  const b0 = color & 0xff;
  const b1 = (color >>> 8) & 0xff;
  const b2 = (color >>> 16) & 0xff;
  const b3 = color >>> 24;
  for (let y = y1; y < y2; y++) {
    for (let o = y * pitch + x1 * 4, end = y * pitch + x2 * 4; o < end; o += 4) {
      surface[o] = b0;
      surface[o + 1] = b1;
      surface[o + 2] = b2;
      surface[o + 3] = b3;
    }
  }
}

/** Reference XY_SRC_COPY_BLT between two CPU surfaces. */
export function referenceCopy(
  dst: Uint8Array,
  dstPitch: number,
  x1: number,
  y1: number,
  x2: number,
  y2: number,
  src: Uint8Array,
  srcPitch: number,
  sx: number,
  sy: number,
): void {
  const w = (x2 - x1) * 4;
  for (let y = 0; y < y2 - y1; y++) {
    const s = (sy + y) * srcPitch + sx * 4;
    dst.set(src.subarray(s, s + w), (y1 + y) * dstPitch + x1 * 4);
  }
}

/** Fills a source surface with a pattern (the gradient encodes each pixel's coordinates, easy to read in a dump). */
export function fillPattern(surface: Uint8Array, pitch: number, pattern: SourcePattern, rng: Rng): void {
  if (pattern === "random") {
    rng.fill(surface);
    return;
  }
  for (let o = 0; o + 4 <= surface.length; o += 4) {
    const y = Math.floor(o / pitch);
    const x = (o % pitch) >> 2;
    surface[o] = x & 0xff;
    surface[o + 1] = y & 0xff;
    surface[o + 2] = ((x >> 8) & 0x0f) | ((y >> 4) & 0xf0);
    surface[o + 3] = 0xff;
  }
}

/** Compares two surfaces; counts differing bytes and reports the first. */
export function compareSurfaces(
  expected: Uint8Array,
  actual: Uint8Array,
  pitch: number,
): { mismatches: number; first: Mismatch | undefined } {
  let mismatches = 0;
  let first: Mismatch | undefined;
  for (let i = 0; i < expected.length; i++) {
    if (expected[i] !== actual[i]) {
      if (first === undefined) {
        first = {
          offset: i,
          x: (i % pitch) >> 2,
          y: Math.floor(i / pitch),
          expected: expected[i]!,
          actual: actual[i]!,
        };
      }
      mismatches++;
    }
  }
  return { mismatches, first };
}

/** One rectangle of a surface. */
interface Rect {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

function pickRect(rng: Rng, mode: RectMode, w: number, h: number, into: Rect): Rect {
  if (mode === "full") {
    into.x1 = 0;
    into.y1 = 0;
    into.x2 = w;
    into.y2 = h;
    return into;
  }
  into.x1 = rng.int(0, w - 1);
  into.x2 = rng.int(into.x1 + 1, w);
  into.y1 = rng.int(0, h - 1);
  into.y2 = rng.int(into.y1 + 1, h);
  return into;
}

/** i915_seqno_passed */
function seqnoPassed(a: number, b: number): boolean {
  return ((a - b) | 0) >= 0;
}

export interface WorkloadStartOptions {
  /** Batch buffers kept for reuse in batch mode (default `OVERLAP_BATCH_POOL`). */
  readonly batchPool?: number;
}

/** A workload submitted and not yet verified (see the module comment). */
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

  /** Allocates, fills and submits everything. On a failure, what it allocated is freed. */
  static start(driver: GuestGpuDriver, spec: WorkloadSpec, opts: WorkloadStartOptions = {}): GuestWorkload {
    checkWorkloadSpec(spec);
    const w = new GuestWorkload(driver, spec);
    try {
      w.submitAll(opts.batchPool ?? OVERLAP_BATCH_POOL);
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

  private submitAll(batchPool: number): void {
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
      for (let i = 0; i < Math.min(batchPool, Math.ceil(spec.count / perSub)); i++) {
        const buf = driver.allocBuffer((perSub * opDwords + 2) * 4, zone);
        this.owned.push(buf);
        batches.push({ buf, seqno: 0 });
      }
    }
    const cmds = new CommandBuffer(perSub * opDwords + 2);
    const r: Rect = { x1: 0, y1: 0, x2: 0, y2: 0 };
    const ops = rng.fork("ops");
    for (let done = 0; done < spec.count; ) {
      cmds.reset();
      const n = Math.min(perSub, spec.count - done);
      for (let i = 0; i < n; i++) {
        pickRect(ops, rects, w, h, r);
        if (spec.kind === "fill") {
          const color = ops.u32();
          cmds.colorBlt(driver.gpuAddress(dst), pitch, r.x1, r.y1, r.x2, r.y2, color);
          referenceFill(expected, pitch, r.x1, r.y1, r.x2, r.y2, color);
        } else {
          const sx = ops.int(0, w - (r.x2 - r.x1));
          const sy = ops.int(0, h - (r.y2 - r.y1));
          cmds.srcCopyBlt(
            driver.gpuAddress(dst),
            pitch,
            r.x1,
            r.y1,
            r.x2,
            r.y2,
            driver.gpuAddress(src!),
            pitch,
            sx,
            sy,
          );
          referenceCopy(expected, pitch, r.x1, r.y1, r.x2, r.y2, srcBytes!, pitch, sx, sy);
        }
        this.moved += (r.x2 - r.x1) * 4 * (r.y2 - r.y1);
      }
      done += n;
      if (via === "ring") {
        this.seqnos.push(driver.submit(this.engine, cmds.words));
      } else {
        const slot = batches[this.seqnos.length % batches.length]!;
        // The batch may be reused only once the GPU is done with its previous contents.
        if (slot.seqno !== 0) driver.wait(this.engine, slot.seqno, spec.timeoutNs);
        driver.writeBatch(slot.buf, cmds.words);
        slot.seqno = driver.submitBatchBuffer(this.engine, slot.buf);
        this.seqnos.push(slot.seqno);
      }
    }
  }
}

/**
 * Runs a workload on `driver` and verifies its result: `GuestWorkload.start` then `finish`, with `SYNC_BATCH_POOL`
 * batch buffers. Surfaces and batches are freed before returning.
 */
export function runWorkload(driver: GuestGpuDriver, spec: WorkloadSpec): WorkloadResult {
  return GuestWorkload.start(driver, spec, { batchPool: SYNC_BATCH_POOL }).finish(spec.timeoutNs);
}

/** A one-line summary of a result, for logs and test messages. */
export function describeWorkload(r: WorkloadResult): string {
  const m = r.firstMismatch;
  return (
    `${r.kind} via ${r.via} on ${r.engine}: ${r.operations} op(s) in ${r.submissions} submission(s), ` +
    `${r.completed} completed, ${r.rejected} rejected, ${r.timedOut} timed out, ${r.bytes} bytes, ` +
    `${r.mismatches} mismatching byte(s)` +
    (m ? ` (first at offset ${hex(m.offset)}, pixel (${m.x}, ${m.y}): expected ${m.expected}, got ${m.actual})` : "")
  );
}
