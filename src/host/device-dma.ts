/**
 * The one path by which a device model touches memory: `DeviceDma`, one per device, translating every page through
 * the system IOMMU (or its ATC when ATS is enabled) and then reading or writing host frames in `PhysicalMemory`.
 *
 * Each operation walks its buffer page by page: translate the page (read access for sources, write access for
 * destinations), then copy within the frame. Like real DMA, an operation that faults part way has already performed
 * the pages before the faulting one and stops there; nothing after the fault is touched.
 *
 * Results. `read`, `write`, `copy`, `fill`, `writeU32` and `writeU64` return `DMA_OK` (0) on success or, for the first
 * fault, a `DmaFault` object { errno: EFAULT, iova, access, reason, completed } where `completed` is the number of
 * bytes done before the fault. The fault itself has been recorded and traced by the IOMMU (and is available as
 * `lastFault`). `readU32`/`readU64` return the value, or -1 on a fault (a u32 is never negative; a u64 read returns a
 * number exact up to 2^53). Faults are expected outcomes, so they are values, never exceptions; a bad buffer
 * argument (offset or length outside the caller's array) is a bug and throws EINVAL.
 *
 * Costs. Page offsets are computed with Math.floor rather than `%`: IOVAs are often above 2^31, where `%` becomes a
 * floating-point modulo that costs as much as a translation. Translations go by page and frame number
 * (`Iommu.translateFrame`), never by byte address: an address above 2^31 crossing a call the JIT did not inline is a
 * heap-allocated double each way, which cost more than the IOTLB lookup itself. No allocation per page in the common case: whole-page transfers use `Uint8Array.set` on frame views;
 * partial pages take a `subarray` view (or a byte loop for short pieces). The observer hook, for the isolation
 * checker, is called once per page piece touched `(bdf, iova, pfn, offset, len, write)` and costs one comparison
 * when unset. `copy` has memcpy semantics across pages (ascending order); within one page, overlap is handled as
 * memmove.
 *
 * Not modelled: DMA timing and bandwidth, cache coherency, PCIe max payload splitting, atomics.
 */
import { Errno, type Iova, KernelError, PAGE_SIZE, type Pfn } from "../core/index.ts";
import type { Bdf } from "./bdf.ts";
import { IOMMU_READ, IOMMU_WRITE } from "./io-pgtable.ts";
import type { DmaAccess, FaultReason, Iommu, IommuDevice } from "./iommu.ts";
import type { PhysicalMemory } from "./physmem.ts";

export const DMA_OK = 0;

/** The first fault of a DMA operation. */
export interface DmaFault {
  readonly errno: typeof Errno.EFAULT;
  /** The IOVA whose translation faulted (start of the faulting piece). */
  readonly iova: Iova;
  readonly access: DmaAccess;
  /**
   * The IOMMU's reason (undefined only if the fault record was not found, which would be a bug), or "memory-gone":
   * translated, but the frame's external memory could not be reached (a client shrank the file behind a window).
   */
  readonly reason: FaultReason | "memory-gone" | undefined;
  /** Bytes transferred before the fault. */
  readonly completed: number;
}

export type DmaResult = typeof DMA_OK | DmaFault;

/** Called for every page piece a DMA touches (for the isolation checker). `pfn` is the host frame. */
export type DmaObserver = (bdf: Bdf, iova: Iova, pfn: Pfn, offset: number, len: number, write: boolean) => void;

export interface DeviceDmaOptions {
  readonly iommu: Iommu;
  readonly physmem: PhysicalMemory;
  readonly bdf: Bdf;
}

/** Pieces at most this long are copied with a byte loop instead of a subarray view. */
const SMALL_COPY = 16;

export class DeviceDma {
  readonly bdf: Bdf;
  /** The first fault of the most recent operation that faulted. */
  lastFault: DmaFault | undefined;
  bytesRead = 0;
  bytesWritten = 0;
  faultCount = 0;

  private readonly iommu: Iommu;
  private readonly mem: PhysicalMemory;
  private dev: IommuDevice | undefined;
  private observer: DmaObserver | undefined;
  private readonly scratch = new Uint8Array(8);

  constructor(opts: DeviceDmaOptions) {
    this.iommu = opts.iommu;
    this.mem = opts.physmem;
    this.bdf = opts.bdf;
    this.dev = this.iommu.hasDevice(this.bdf) ? this.iommu.device(this.bdf) : undefined;
  }

  /** Installs (or with undefined removes) the per-page observer. */
  setObserver(fn: DmaObserver | undefined): void {
    this.observer = fn;
  }

  /** Device reads [iova, iova+len) into dst[off..off+len). */
  read(iova: Iova, dst: Uint8Array, off = 0, len = dst.length - off): DmaResult {
    this.checkBuffer(dst, off, len, "read");
    const mem = this.mem;
    const obs = this.observer;
    let a: number = iova;
    let o = off;
    let left = len;
    while (left > 0) {
      const page = Math.floor(a / PAGE_SIZE);
      const po = a - page * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const frame = this.xlate(page, po, IOMMU_READ);
      if (frame < 0) return this.failed(a, IOMMU_READ, len - left, "r");
      const src = mem.frameForRead(frame as Pfn);
      if (src === undefined) return this.memoryGone(a, IOMMU_READ, len - left, "r");
      if (n === PAGE_SIZE) dst.set(src, o);
      else if (n <= SMALL_COPY) for (let i = 0; i < n; i++) dst[o + i] = src[po + i]!;
      else dst.set(src.subarray(po, po + n), o);
      if (obs !== undefined) obs(this.bdf, a as Iova, frame as Pfn, po, n, false);
      a += n;
      o += n;
      left -= n;
    }
    this.bytesRead += len;
    return DMA_OK;
  }

  /** Device writes src[off..off+len) to [iova, iova+len). */
  write(iova: Iova, src: Uint8Array, off = 0, len = src.length - off): DmaResult {
    this.checkBuffer(src, off, len, "write");
    const mem = this.mem;
    const obs = this.observer;
    let a: number = iova;
    let o = off;
    let left = len;
    while (left > 0) {
      const page = Math.floor(a / PAGE_SIZE);
      const po = a - page * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const frame = this.xlate(page, po, IOMMU_WRITE);
      if (frame < 0) return this.failed(a, IOMMU_WRITE, len - left, "w");
      if (!mem.writeBytes(frame as Pfn, po, src, o, n)) return this.memoryGone(a, IOMMU_WRITE, len - left, "w");
      if (obs !== undefined) obs(this.bdf, a as Iova, frame as Pfn, po, n, true);
      a += n;
      o += n;
      left -= n;
    }
    this.bytesWritten += len;
    return DMA_OK;
  }

  /** Device copies len bytes from srcIova to dstIova (both translated: read for the source, write for the target). */
  copy(dstIova: Iova, srcIova: Iova, len: number): DmaResult {
    this.checkLength(len, "copy");
    const mem = this.mem;
    const obs = this.observer;
    let s: number = srcIova;
    let d: number = dstIova;
    let left = len;
    while (left > 0) {
      const sp = Math.floor(s / PAGE_SIZE);
      const dp = Math.floor(d / PAGE_SIZE);
      const so = s - sp * PAGE_SIZE;
      const dof = d - dp * PAGE_SIZE;
      let n = PAGE_SIZE - Math.max(so, dof);
      if (left < n) n = left;
      const sframe = this.xlate(sp, so, IOMMU_READ);
      if (sframe < 0) return this.failed(s, IOMMU_READ, len - left, "c");
      const dframe = this.xlate(dp, dof, IOMMU_WRITE);
      if (dframe < 0) return this.failed(d, IOMMU_WRITE, len - left, "c");
      const sf = mem.frameForRead(sframe as Pfn);
      if (sf === undefined) return this.memoryGone(s, IOMMU_READ, len - left, "c");
      // writeBytes copies through set(), which is correct for overlapping ranges of one frame.
      if (!mem.writeBytes(dframe as Pfn, dof, sf, so, n)) return this.memoryGone(d, IOMMU_WRITE, len - left, "c");
      if (obs !== undefined) {
        obs(this.bdf, s as Iova, sframe as Pfn, so, n, false);
        obs(this.bdf, d as Iova, dframe as Pfn, dof, n, true);
      }
      s += n;
      d += n;
      left -= n;
    }
    this.bytesRead += len;
    this.bytesWritten += len;
    return DMA_OK;
  }

  /** Device writes `len` copies of `byte` at iova. */
  fill(iova: Iova, byte: number, len: number): DmaResult {
    this.checkLength(len, "fill");
    const mem = this.mem;
    const obs = this.observer;
    let a: number = iova;
    let left = len;
    while (left > 0) {
      const page = Math.floor(a / PAGE_SIZE);
      const po = a - page * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const frame = this.xlate(page, po, IOMMU_WRITE);
      if (frame < 0) return this.failed(a, IOMMU_WRITE, len - left, "w");
      if (!mem.fillBytes(frame as Pfn, po, byte, n)) return this.memoryGone(a, IOMMU_WRITE, len - left, "w");
      if (obs !== undefined) obs(this.bdf, a as Iova, frame as Pfn, po, n, true);
      a += n;
      left -= n;
    }
    this.bytesWritten += len;
    return DMA_OK;
  }

  /** Little-endian u32 at iova, or -1 on a fault. */
  readU32(iova: Iova): number {
    const page = Math.floor(iova / PAGE_SIZE);
    const po = iova - page * PAGE_SIZE;
    if (po > PAGE_SIZE - 4) {
      const b = this.scratch;
      if (this.read(iova, b, 0, 4) !== DMA_OK) return -1;
      return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
    }
    const frame = this.xlate(page, po, IOMMU_READ);
    if (frame < 0) {
      this.failed(iova, IOMMU_READ, 0, "r");
      return -1;
    }
    const f = this.mem.frameForRead(frame as Pfn);
    if (f === undefined) {
      this.memoryGone(iova, IOMMU_READ, 0, "r");
      return -1;
    }
    if (this.observer !== undefined) this.observer(this.bdf, iova, frame as Pfn, po, 4, false);
    this.bytesRead += 4;
    return (f[po]! | (f[po + 1]! << 8) | (f[po + 2]! << 16) | (f[po + 3]! << 24)) >>> 0;
  }

  /** Little-endian u64 at iova as a number (exact below 2^53), or -1 on a fault. */
  readU64(iova: Iova): number {
    const lo = this.readU32(iova);
    if (lo < 0) return -1;
    const hi = this.readU32((iova + 4) as Iova);
    if (hi < 0) {
      // The first half was done: report the fault as the hardware would, with 4 bytes completed.
      const f = this.lastFault;
      if (f !== undefined) this.lastFault = { ...f, iova: (iova + 4) as Iova, completed: 4 };
      return -1;
    }
    return hi * 4294967296 + lo;
  }

  writeU32(iova: Iova, value: number): DmaResult {
    const page = Math.floor(iova / PAGE_SIZE);
    const po = iova - page * PAGE_SIZE;
    if (po > PAGE_SIZE - 4) {
      const b = this.scratch;
      b[0] = value & 0xff;
      b[1] = (value >>> 8) & 0xff;
      b[2] = (value >>> 16) & 0xff;
      b[3] = (value >>> 24) & 0xff;
      return this.write(iova, b, 0, 4);
    }
    const frame = this.xlate(page, po, IOMMU_WRITE);
    if (frame < 0) return this.failed(iova, IOMMU_WRITE, 0, "w");
    const b = this.scratch;
    b[0] = value & 0xff;
    b[1] = (value >>> 8) & 0xff;
    b[2] = (value >>> 16) & 0xff;
    b[3] = (value >>> 24) & 0xff;
    if (!this.mem.writeBytes(frame as Pfn, po, b, 0, 4)) return this.memoryGone(iova, IOMMU_WRITE, 0, "w");
    if (this.observer !== undefined) this.observer(this.bdf, iova, frame as Pfn, po, 4, true);
    this.bytesWritten += 4;
    return DMA_OK;
  }

  /** Writes a u64 (a non-negative integer below 2^53) little-endian. */
  writeU64(iova: Iova, value: number): DmaResult {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new KernelError(Errno.EINVAL, `writeU64 value ${value} is not an integer in [0, 2^53)`);
    }
    const r = this.writeU32(iova, value % 4294967296);
    if (r !== DMA_OK) return r;
    const r2 = this.writeU32((iova + 4) as Iova, Math.floor(value / 4294967296));
    if (r2 !== DMA_OK) {
      this.lastFault = { ...r2, completed: 4 };
      return this.lastFault;
    }
    return DMA_OK;
  }

  // ---- internals -----------------------------------------------------------------------------------------------------

  /**
   * The host frame behind IOVA page `page` (the access at byte `offset` in it), or -1 after a fault. Page and frame
   * numbers, not byte addresses, cross the call: see `Iommu.translateFrame`.
   */
  private xlate(page: number, offset: number, access: DmaAccess): number {
    const dev = this.dev;
    if (dev?.present) return this.iommu.translateFrame(dev, page, offset, access);
    return this.xlateSlow(page, offset, access);
  }

  /** The device was not (or is no longer) known to the IOMMU: look it up again; unknown devices fault 'no-domain'. */
  private xlateSlow(page: number, offset: number, access: DmaAccess): number {
    const dev = this.iommu.hasDevice(this.bdf) ? this.iommu.device(this.bdf) : undefined;
    this.dev = dev;
    if (dev !== undefined) return this.iommu.translateFrame(dev, page, offset, access);
    const h = this.iommu.translate(this.bdf, (page * PAGE_SIZE + offset) as Iova, access);
    return h < 0 ? -1 : Math.floor(h / PAGE_SIZE);
  }

  /** Builds the fault result; `completed` bytes were read (op "r"), written ("w") or both ("c", a copy). */
  /**
   * The IOMMU translated the access but the frame's memory could not be reached (an external region whose backing
   * failed: a client shrank the file behind a DMA window). A fault like any other, with its own reason.
   */
  private memoryGone(iova: number, access: DmaAccess, completed: number, op: "r" | "w" | "c"): DmaFault {
    const f: DmaFault = { ...this.failed(iova, access, completed, op), reason: "memory-gone" };
    this.lastFault = f;
    return f;
  }

  private failed(iova: number, access: DmaAccess, completed: number, op: "r" | "w" | "c"): DmaFault {
    this.faultCount++;
    if (op !== "w") this.bytesRead += completed;
    if (op !== "r") this.bytesWritten += completed;
    const f: DmaFault = {
      errno: Errno.EFAULT,
      iova: iova as Iova,
      access,
      reason: this.iommu.lastFault()?.reason,
      completed,
    };
    this.lastFault = f;
    return f;
  }

  private checkBuffer(buf: Uint8Array, off: number, len: number, op: string): void {
    if (!Number.isInteger(off) || !Number.isInteger(len) || off < 0 || len < 0 || off + len > buf.length) {
      throw new KernelError(
        Errno.EINVAL,
        `DMA ${op} of ${len} bytes at buffer offset ${off} does not fit the ${buf.length}-byte buffer`,
      );
    }
  }

  private checkLength(len: number, op: string): void {
    if (!(len >= 0 && len <= Number.MAX_SAFE_INTEGER && Math.floor(len) === len)) {
      throw new KernelError(Errno.EINVAL, `DMA ${op} length ${len} is not a non-negative integer`);
    }
  }
}
