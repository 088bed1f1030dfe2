/**
 * Host physical memory: 4 KiB frames, allocated on demand from a sparse store.
 *
 * A host may declare terabytes and pays only for what is touched: frame metadata lives in 16 MiB chunks created on
 * first use, and a frame's 4 KiB of data is created on its first write (reads of untouched frames see zeros).
 * Frames can also be backed by external buffers (guest RAM a real VMM shares with us over vfio-user, mmap'd from a
 * memfd): those get frame numbers above RAM and their data is a view into the caller's buffer. A region's numbers
 * return to a first-fit pool once every frame of it dropped its last reference (released and unpinned), and chunks
 * left with no live frame are dropped, so a daemon serving client after client does not grow.
 *
 * Each frame has a reference count (page tables, kernel allocations and pins each hold references) and a pin count
 * (pin_user_pages). A frame is freed when its reference count drops to 0; pinning takes a reference, so a pinned frame
 * outlives munmap, as in Linux. An owner tag (a small integer; 0 = none) records on whose behalf the frame was
 * allocated, for the isolation checker.
 *
 * Not modelled: NUMA, page cache, swap, huge-page compound frames, memory errors.
 */
import {
  defineTraceEvents,
  Errno,
  type Hpa,
  hex,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type Tracer,
  pfn as toPfn,
} from "../core/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "mem.external.register": { pfn: number; pages: number; label: string };
    "mem.external.release": { pfn: number; pages: number; label: string };
    "mem.oom": { requested: number; free: number };
  }
}
defineTraceEvents("host", {
  "mem.external.register": "external buffer '{label}': {pages} page(s) at pfn {pfn}",
  "mem.external.release": "external buffer '{label}': {pages} page(s) at pfn {pfn} released",
  "mem.oom": "out of host memory: wanted {requested} frame(s), {free} free",
});

/** Frames per metadata chunk (16 MiB of RAM). Frame numbers can exceed 2^32, so index with division, not shifts. */
const CHUNK_FRAMES = 4096;
/** First frame handed out: frames below 1 MiB stay unused, as on a PC. */
const FIRST_RAM_PFN = 0x100;

interface Chunk {
  ref: Int32Array;
  pin: Int32Array;
  owner: Int32Array;
  data: (Uint8Array | undefined)[];
}

interface ExternalRegion {
  readonly base: number;
  readonly pages: number;
  readonly label: string;
  /** True once the registrant let go; frames are released as their references drop. */
  released: boolean;
  live: number;
}

export interface PhysicalMemoryOptions {
  /** Declared RAM size in bytes (a multiple of 4 KiB). */
  readonly sizeBytes: number;
  readonly tracer: Tracer;
}

export interface PhysMemStats {
  readonly totalFrames: number;
  readonly allocatedFrames: number;
  /** Frames that have 4 KiB of data behind them (were written). */
  readonly touchedFrames: number;
  readonly pinnedFrames: number;
  readonly externalFrames: number;
}

/** All-zero frame returned for reads of untouched frames. Never written. */
const ZERO_FRAME = new Uint8Array(PAGE_SIZE);

export class PhysicalMemory {
  readonly totalFrames: number;
  /** Frame number where external regions start (above RAM, 1 GiB aligned). */
  readonly externalBase: number;
  private readonly chunks: (Chunk | undefined)[] = [];
  private readonly freeList: number[] = [];
  private nextFresh = FIRST_RAM_PFN;
  private allocated = 0;
  private touched = 0;
  private pinned = 0;
  private externalTop: number;
  /** Frame ranges of fully released external regions, sorted by base, merged, below `externalTop`: reused first. */
  private readonly externalFree: { base: number; pages: number }[] = [];
  private readonly externals = new Map<number, ExternalRegion>();
  private readonly tracer: Tracer;

  constructor(opts: PhysicalMemoryOptions) {
    if (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0 || opts.sizeBytes % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `host memory size ${opts.sizeBytes} must be a positive multiple of 4096`);
    }
    this.totalFrames = opts.sizeBytes / PAGE_SIZE;
    this.externalBase = Math.ceil((this.totalFrames + 1) / 0x40000) * 0x40000;
    this.externalTop = this.externalBase;
    this.tracer = opts.tracer;
  }

  // ---- allocation --------------------------------------------------------------------------------------------

  /** Allocates one zeroed frame with reference count 1. ENOMEM when RAM is exhausted. */
  allocFrame(owner = 0): Pfn {
    let f = this.freeList.pop();
    if (f === undefined) {
      if (this.nextFresh >= this.totalFrames) {
        if (this.tracer.enabled) this.tracer.emit("mem.oom", { requested: 1, free: 0 });
        throw new KernelError(
          Errno.ENOMEM,
          `host memory exhausted: all ${this.totalFrames} frames (${this.totalFrames / 256} MiB) are in use`,
        );
      }
      f = this.nextFresh++;
    }
    const c = this.chunk(f);
    const i = f % CHUNK_FRAMES;
    c.ref[i] = 1;
    c.owner[i] = owner;
    this.allocated++;
    return f as Pfn;
  }

  /**
   * Allocates `n` physically contiguous frames (what a device without an IOMMU needs for a coherent buffer).
   * Takes them from never-used RAM; ENOMEM if that does not have `n` frames left.
   */
  allocContiguous(n: number, owner = 0): Pfn {
    if (!Number.isSafeInteger(n) || n <= 0) throw new KernelError(Errno.EINVAL, `cannot allocate ${n} frames`);
    if (this.nextFresh + n > this.totalFrames) {
      if (this.tracer.enabled) this.tracer.emit("mem.oom", { requested: n, free: this.freeFrames() });
      throw new KernelError(
        Errno.ENOMEM,
        `no ${n} contiguous frames left in host memory (${this.totalFrames - this.nextFresh} unused at the top)`,
      );
    }
    const first = this.nextFresh;
    this.nextFresh += n;
    for (let f = first; f < first + n; f++) {
      const c = this.chunk(f);
      c.ref[f % CHUNK_FRAMES] = 1;
      c.owner[f % CHUNK_FRAMES] = owner;
    }
    this.allocated += n;
    return first as Pfn;
  }

  /** RAM frames not allocated (external frames are not RAM and are not counted). */
  freeFrames(): number {
    return this.totalFrames - FIRST_RAM_PFN - this.allocated;
  }

  /** Takes another reference on an allocated frame. */
  get(f: Pfn): void {
    const c = this.chunkOf(f, "get");
    c.ref[f % CHUNK_FRAMES]!++;
  }

  /** Drops a reference; the frame is freed (its data discarded) when none remain. */
  put(f: Pfn): void {
    const c = this.chunkOf(f, "put");
    const i = f % CHUNK_FRAMES;
    const r = c.ref[i]! - 1;
    if (r < 0) throw new Error(`physmem: reference count of pfn ${hex(f)} went negative (double free)`);
    c.ref[i] = r;
    if (r === 0) this.release(f, c, i);
  }

  /** Pins a frame: pin count + 1 and a reference held by the pin. */
  pin(f: Pfn): void {
    const c = this.chunkOf(f, "pin");
    const i = f % CHUNK_FRAMES;
    if (c.pin[i] === 0) this.pinned++;
    c.pin[i]!++;
    c.ref[i]!++;
  }

  unpin(f: Pfn): void {
    const c = this.chunkOf(f, "unpin");
    const i = f % CHUNK_FRAMES;
    if (c.pin[i]! <= 0) throw new Error(`physmem: unpin of pfn ${hex(f)} that is not pinned`);
    c.pin[i]!--;
    if (c.pin[i] === 0) this.pinned--;
    this.put(f);
  }

  refCount(f: Pfn): number {
    const c = this.chunks[Math.floor(f / CHUNK_FRAMES)];
    return c ? c.ref[f % CHUNK_FRAMES]! : 0;
  }

  pinCount(f: Pfn): number {
    const c = this.chunks[Math.floor(f / CHUNK_FRAMES)];
    return c ? c.pin[f % CHUNK_FRAMES]! : 0;
  }

  owner(f: Pfn): number {
    const c = this.chunks[Math.floor(f / CHUNK_FRAMES)];
    return c ? c.owner[f % CHUNK_FRAMES]! : 0;
  }

  isAllocated(f: Pfn): boolean {
    return this.refCount(f) > 0;
  }

  isExternal(f: Pfn): boolean {
    return f >= this.externalBase;
  }

  // ---- external buffers ----------------------------------------------------------------------------------------

  /**
   * Makes `buf` (a multiple of 4 KiB, e.g. a view of an mmap'd memfd) addressable as host frames. Returns the first
   * frame; the registration holds one reference on each frame until `releaseExternal`.
   */
  registerExternal(buf: Uint8Array, label: string, owner = 0): Pfn {
    if (buf.byteLength === 0 || buf.byteLength % PAGE_SIZE !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `external buffer '${label}' is ${buf.byteLength} bytes: it must be a non-empty multiple of 4096`,
      );
    }
    const pages = buf.byteLength / PAGE_SIZE;
    const base = this.takeExternalRange(pages);
    for (let k = 0; k < pages; k++) {
      const f = base + k;
      const c = this.chunk(f);
      const i = f % CHUNK_FRAMES;
      c.ref[i] = 1;
      c.owner[i] = owner;
      c.data[i] = buf.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE);
    }
    this.externals.set(base, { base, pages, label, released: false, live: pages });
    if (this.tracer.enabled) this.tracer.emit("mem.external.register", { pfn: base, pages, label });
    return base as Pfn;
  }

  /**
   * Moves the data of `count` allocated RAM frames from `first` into `backing` (4 KiB per frame, in order): the bytes
   * are copied there and the frames then read and write `backing` itself, so whoever else maps it (a vfio-user client
   * that mmap'd the memfd behind it) shares the frames with the device. `unshareFrames` moves the data back; call it
   * before `backing` goes away.
   */
  shareFrames(first: Pfn, count: number, backing: Uint8Array): void {
    if (backing.byteLength < count * PAGE_SIZE) {
      throw new KernelError(Errno.EINVAL, `sharing ${count} frame(s) needs ${count * PAGE_SIZE} bytes of backing`);
    }
    for (let k = 0; k < count; k++) {
      const f = (first + k) as Pfn;
      if (f >= this.externalBase) throw new KernelError(Errno.EINVAL, `pfn ${hex(f)} is external: not shareable`);
      this.chunkOf(f, "shareFrames");
    }
    for (let k = 0; k < count; k++) {
      const f = first + k;
      const c = this.chunk(f);
      const i = f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES;
      const view = backing.subarray(k * PAGE_SIZE, (k + 1) * PAGE_SIZE);
      const old = c.data[i];
      if (old === undefined) {
        view.fill(0);
        this.touched++;
      } else view.set(old);
      c.data[i] = view;
    }
  }

  /** Gives frames shared with `shareFrames` their own memory again, with the bytes they hold now. */
  unshareFrames(first: Pfn, count: number): void {
    for (let k = 0; k < count; k++) {
      const f = first + k;
      const c = this.chunks[Math.floor(f / CHUNK_FRAMES)];
      const i = f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES;
      const d = c?.data[i];
      if (c !== undefined && d !== undefined) c.data[i] = d.slice();
    }
  }

  /** Drops the registration's references. Frames still pinned stay readable until their last pin goes. */
  releaseExternal(base: Pfn): void {
    const r = this.externals.get(base);
    if (!r || r.released) {
      throw new KernelError(Errno.EINVAL, `no external buffer registered at pfn ${hex(base)}`);
    }
    r.released = true;
    for (let k = 0; k < r.pages; k++) this.put((base + k) as Pfn);
  }

  /** External regions still holding frames (registered, or released but with frames pinned). */
  externalRegions(): { base: Pfn; pages: number; label: string; released: boolean; live: number }[] {
    return [...this.externals.values()].map((r) => ({ ...r, base: r.base as Pfn }));
  }

  // ---- data access ---------------------------------------------------------------------------------------------

  /** The 4 KiB of a frame, for reading. Untouched frames read as a shared zero page: never write to it. */
  frameForRead(f: Pfn): Uint8Array {
    // No `%`: a frame number computed by division is a double to the JIT, and a double modulo is a C call.
    const ci = Math.floor(f / CHUNK_FRAMES);
    const c = this.chunks[ci];
    return c?.data[f - ci * CHUNK_FRAMES] ?? ZERO_FRAME;
  }

  /** The 4 KiB of a frame, for writing (creates its data on first touch). */
  frameForWrite(f: Pfn): Uint8Array {
    const c = this.chunk(f);
    const i = f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES;
    let d = c.data[i];
    if (d === undefined) {
      d = new Uint8Array(PAGE_SIZE);
      c.data[i] = d;
      this.touched++;
    }
    return d;
  }

  /** Reads `len` bytes at host-physical `addr` into `dst[off..]`, crossing frames as needed. */
  read(addr: Hpa, dst: Uint8Array, off = 0, len = dst.length - off): void {
    let a: number = addr;
    let o = off;
    let left = len;
    while (left > 0) {
      const f = Math.floor(a / PAGE_SIZE);
      const po = a - f * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const src = this.frameForRead(f as Pfn);
      dst.set(src.subarray(po, po + n), o);
      a += n;
      o += n;
      left -= n;
    }
  }

  write(addr: Hpa, src: Uint8Array, off = 0, len = src.length - off): void {
    let a: number = addr;
    let o = off;
    let left = len;
    while (left > 0) {
      const f = Math.floor(a / PAGE_SIZE);
      const po = a - f * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      this.frameForWrite(f as Pfn).set(src.subarray(o, o + n), po);
      a += n;
      o += n;
      left -= n;
    }
  }

  readU32(addr: Hpa): number {
    const b = new Uint8Array(4);
    this.read(addr, b);
    return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  }

  writeU32(addr: Hpa, v: number): void {
    this.write(addr, new Uint8Array([v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff]));
  }

  fill(addr: Hpa, byte: number, len: number): void {
    let a: number = addr;
    let left = len;
    while (left > 0) {
      const f = Math.floor(a / PAGE_SIZE);
      const po = a - f * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      this.frameForWrite(f as Pfn).fill(byte, po, po + n);
      a += n;
      left -= n;
    }
  }

  stats(): PhysMemStats {
    let ext = 0;
    for (const r of this.externals.values()) ext += r.live;
    return {
      totalFrames: this.totalFrames,
      allocatedFrames: this.allocated,
      touchedFrames: this.touched,
      pinnedFrames: this.pinned,
      externalFrames: ext,
    };
  }

  // ---- internals ----------------------------------------------------------------------------------------------

  private chunk(f: number): Chunk {
    const ci = Math.floor(f / CHUNK_FRAMES);
    let c = this.chunks[ci];
    if (c === undefined) {
      c = {
        ref: new Int32Array(CHUNK_FRAMES),
        pin: new Int32Array(CHUNK_FRAMES),
        owner: new Int32Array(CHUNK_FRAMES),
        data: new Array<Uint8Array | undefined>(CHUNK_FRAMES),
      };
      this.chunks[ci] = c;
    }
    return c;
  }

  /**
   * Frame numbers for a new external region: the first released range that fits (first fit), else fresh ones at the
   * top. Numbers are reused only once every frame of the old region dropped its last reference (no pin, no mapping
   * holds one), so nothing can still reach the old buffer through them.
   */
  private takeExternalRange(pages: number): number {
    const free = this.externalFree;
    for (let k = 0; k < free.length; k++) {
      const r = free[k]!;
      if (r.pages < pages) continue;
      const base = r.base;
      if (r.pages === pages) free.splice(k, 1);
      else free[k] = { base: base + pages, pages: r.pages - pages };
      return base;
    }
    const base = this.externalTop;
    this.externalTop += pages;
    return base;
  }

  /** A released region's frame numbers go back to the pool; chunks left with no live frame are dropped. */
  private giveExternalRange(base: number, pages: number): void {
    const free = this.externalFree;
    let k = 0;
    while (k < free.length && free[k]!.base < base) k++;
    free.splice(k, 0, { base, pages });
    // Merge with the following, then the preceding range.
    if (k + 1 < free.length && free[k]!.base + free[k]!.pages === free[k + 1]!.base) {
      free[k] = { base: free[k]!.base, pages: free[k]!.pages + free[k + 1]!.pages };
      free.splice(k + 1, 1);
    }
    if (k > 0 && free[k - 1]!.base + free[k - 1]!.pages === free[k]!.base) {
      free[k - 1] = { base: free[k - 1]!.base, pages: free[k - 1]!.pages + free[k]!.pages };
      free.splice(k, 1);
      k--;
    }
    // The top range gives its numbers back to the fresh pool.
    const last = free[free.length - 1];
    if (last !== undefined && last.base + last.pages === this.externalTop) {
      this.externalTop = last.base;
      free.pop();
    }
    for (let ci = Math.floor(base / CHUNK_FRAMES); ci <= Math.floor((base + pages - 1) / CHUNK_FRAMES); ci++) {
      const c = this.chunks[ci];
      if (c?.ref.every((x) => x === 0)) this.chunks[ci] = undefined;
    }
  }

  /** Frame numbers handed out to external regions and not yet back in the pool (tests: reuse and no growth). */
  externalSpan(): { top: number; free: number } {
    return { top: this.externalTop - this.externalBase, free: this.externalFree.reduce((n, r) => n + r.pages, 0) };
  }

  private chunkOf(f: Pfn, op: string): Chunk {
    const c = this.chunks[Math.floor(f / CHUNK_FRAMES)];
    if (c === undefined || c.ref[f % CHUNK_FRAMES] === 0) {
      throw new Error(`physmem.${op}: pfn ${hex(f)} is not allocated (a reference-counting bug in the caller)`);
    }
    return c;
  }

  private release(f: Pfn, c: Chunk, i: number): void {
    c.owner[i] = 0;
    if (f >= this.externalBase) {
      c.data[i] = undefined;
      for (const r of this.externals.values()) {
        if (f >= r.base && f < r.base + r.pages) {
          r.live--;
          if (r.live === 0) {
            this.externals.delete(r.base);
            this.giveExternalRange(r.base, r.pages);
            if (this.tracer.enabled) {
              this.tracer.emit("mem.external.release", { pfn: r.base, pages: r.pages, label: r.label });
            }
          }
          break;
        }
      }
      return;
    }
    if (c.data[i] !== undefined) {
      c.data[i] = undefined;
      this.touched--;
    }
    this.allocated--;
    this.freeList.push(f);
  }
}

/** Frame number of a host-physical address. */
export function hpaToPfn(a: Hpa): Pfn {
  return toPfn(Math.floor(a / PAGE_SIZE));
}
/** Host-physical address of a frame (plus an offset within it). */
export function pfnToHpa(f: Pfn, offset = 0): Hpa {
  return (f * PAGE_SIZE + offset) as Hpa;
}
