/**
 * Host physical memory: 4 KiB frames, allocated on demand from a sparse store.
 *
 * A host may declare terabytes and pays only for what is touched: frame metadata lives in 16 MiB chunks created on
 * first use, and a frame's 4 KiB of data is created on its first write (reads of untouched frames see zeros).
 * Frames can also be external: guest RAM a real VMM shares with us over vfio-user. An external region is one record
 * and an `ExternalBacking` (a mapped memfd, or a file reached by copying): registering 64 GiB costs O(1) and no
 * per-page object. Its frames get numbers above RAM (each region starts on a 16 MiB chunk boundary, so a metadata
 * chunk belongs to one region) and materialise on first use: a pin or a reference creates the chunk's counters, a
 * data access the page's view (memory backings, in 2 MiB views made on demand) or a copy through the backing (backings
 * that are not memory: the access can fail, and then reads as `undefined` / a false write, which the DMA path turns
 * into a fault). The registration holds an implicit reference on every frame, not stored per frame. A region's numbers
 * return to a first-fit pool once it is released and none of its frames holds a reference (pin, mapping), and its
 * chunks are dropped with it, so a daemon serving client after client does not grow.
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
  insertAt,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  removeAt,
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
  /** The external region this chunk's frames belong to (external chunks only). */
  region: ExternalRegion | undefined;
}

/**
 * What the bytes of an external region are. Offsets and lengths are bytes within the region.
 * Memory backings give zero-copy views; others are reached by copying, and a copy may fail (a file that shrank).
 */
export interface ExternalBacking {
  /** Size in bytes: a non-zero multiple of 4 KiB. */
  readonly bytes: number;
  /** True if `view` gives views (memory); false if the bytes are reached only by `read`/`write`. */
  readonly memory: boolean;
  /** A zero-copy view of [offset, offset + len) (page-aligned, at most 2 MiB), or undefined if not memory. */
  view(offset: number, len: number): Uint8Array | undefined;
  /** Copies `len` bytes at `offset` into dst[off..]: 0, or a positive errno (EFAULT: the memory is gone). */
  read(offset: number, dst: Uint8Array, off: number, len: number): number;
  /** Copies src[off..off+len) to `offset`: 0, or a positive errno. */
  write(offset: number, src: Uint8Array, off: number, len: number): number;
}

/** A backing over bytes already in this process (tests, in-process buffers). */
export function bufferBacking(buf: Uint8Array): ExternalBacking {
  return {
    bytes: buf.byteLength,
    memory: true,
    view: (offset, len) => buf.subarray(offset, offset + len),
    read: (offset, dst, off, len) => {
      dst.set(buf.subarray(offset, offset + len), off);
      return 0;
    },
    write: (offset, src, off, len) => {
      buf.set(src.subarray(off, off + len), offset);
      return 0;
    },
  };
}

/** Bytes of one lazily made view of a memory backing. */
const VIEW_BYTES = 2 * 1024 * 1024;
const VIEW_FRAMES = VIEW_BYTES / PAGE_SIZE;

interface ExternalRegion {
  readonly base: number;
  readonly pages: number;
  readonly label: string;
  readonly owner: number;
  readonly backing: ExternalBacking;
  /** Whether the backing gives views (memory) or is reached by copying. */
  readonly memory: boolean;
  /** 2 MiB views of a memory backing, made on first use (the map too: most windows of a VMM remap are never read). */
  views: Map<number, Uint8Array> | undefined;
  /** True once the registrant let go (its implicit reference on every frame is gone). */
  released: boolean;
  /** Frames with a stored reference (a pin, a mapping, get_page): what keeps a released region alive. */
  held: number;
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
  /** Live external regions, sorted by base. */
  private readonly regions: ExternalRegion[] = [];
  /** Where a copy-backed frame is read to (`frameForRead` returns it: valid until the next call). */
  private readonly ioPage = new Uint8Array(PAGE_SIZE);
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

  /**
   * Where the next allocations come from: frames freed earlier and waiting for reuse (`reusable`, taken first), then
   * `fresh`, the lowest frame never handed out (every frame from it up is unused).
   */
  allocationCursor(): { readonly reusable: number; readonly fresh: number } {
    return { reusable: this.freeList.length, fresh: this.nextFresh };
  }

  /** RAM frames not allocated (external frames are not RAM and are not counted). */
  freeFrames(): number {
    return this.totalFrames - FIRST_RAM_PFN - this.allocated;
  }

  /** Takes another reference on an allocated frame. */
  get(f: Pfn): void {
    const c = this.chunkOf(f, "get");
    this.ref(f, c, f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES);
  }

  /** Drops a reference; the frame is freed (its data discarded) when none remain. */
  put(f: Pfn): void {
    const c = this.chunkOf(f, "put");
    const i = f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES;
    const r = c.ref[i]! - 1;
    if (r < 0) {
      throw new Error(
        `physmem: reference count of pfn ${hex(f)} went negative (double free${f >= this.externalBase ? "; an external frame's registration reference is dropped by releaseExternal" : ""})`,
      );
    }
    c.ref[i] = r;
    if (r === 0) this.release(f, c, i);
  }

  /** Pins a frame: pin count + 1 and a reference held by the pin. */
  pin(f: Pfn): void {
    const c = this.chunkOf(f, "pin");
    const i = f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES;
    if (c.pin[i] === 0) this.pinned++;
    c.pin[i]!++;
    this.ref(f, c, i);
  }

  unpin(f: Pfn): void {
    const c = this.chunkOf(f, "unpin");
    const i = f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES;
    if (c.pin[i]! <= 0) throw new Error(`physmem: unpin of pfn ${hex(f)} that is not pinned`);
    c.pin[i]!--;
    if (c.pin[i] === 0) this.pinned--;
    this.put(f);
  }

  /** References on a frame; for an external frame, its registration counts as one while the region is registered. */
  refCount(f: Pfn): number {
    const ci = Math.floor(f / CHUNK_FRAMES);
    const c = this.chunks[ci];
    const stored = c ? c.ref[f - ci * CHUNK_FRAMES]! : 0;
    if (f < this.externalBase) return stored;
    const r = c?.region ?? this.regionAt(f);
    return r !== undefined && f < r.base + r.pages && !r.released ? stored + 1 : stored;
  }

  pinCount(f: Pfn): number {
    const c = this.chunks[Math.floor(f / CHUNK_FRAMES)];
    return c ? c.pin[f % CHUNK_FRAMES]! : 0;
  }

  owner(f: Pfn): number {
    const ci = Math.floor(f / CHUNK_FRAMES);
    const c = this.chunks[ci];
    if (f >= this.externalBase) {
      const r = c?.region ?? this.regionAt(f);
      return r !== undefined && f < r.base + r.pages && (!r.released || (c?.ref[f - ci * CHUNK_FRAMES] ?? 0) > 0)
        ? r.owner
        : 0;
    }
    return c ? c.owner[f - ci * CHUNK_FRAMES]! : 0;
  }

  isAllocated(f: Pfn): boolean {
    return this.refCount(f) > 0;
  }

  isExternal(f: Pfn): boolean {
    return f >= this.externalBase;
  }

  // ---- external buffers ----------------------------------------------------------------------------------------

  /**
   * Makes an external backing (e.g. a mapped memfd) addressable as host frames. O(1): no frame materialises until it
   * is used. Returns the first frame; the registration holds a reference on every frame until `releaseExternal`.
   * A Uint8Array is taken as a memory backing over those bytes.
   */
  registerExternal(backing: ExternalBacking | Uint8Array, label: string, owner = 0): Pfn {
    const b = backing instanceof Uint8Array ? bufferBacking(backing) : backing;
    if (!Number.isSafeInteger(b.bytes) || b.bytes <= 0 || b.bytes % PAGE_SIZE !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `external buffer '${label}' is ${b.bytes} bytes: it must be a non-empty multiple of 4096`,
      );
    }
    const pages = b.bytes / PAGE_SIZE;
    const base = this.takeExternalRange(pages);
    const memory = b.memory;
    const region: ExternalRegion = {
      base,
      pages,
      label,
      owner,
      backing: b,
      memory,
      views: undefined,
      released: false,
      held: 0,
    };
    let k = 0;
    while (k < this.regions.length && this.regions[k]!.base < base) k++;
    insertAt(this.regions, k, region);
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

  /** Drops the registration's references. Frames still referenced (pinned, mapped) stay usable until they let go. */
  releaseExternal(base: Pfn): void {
    const r = this.regionAt(base);
    if (r === undefined || r.base !== base || r.released) {
      throw new KernelError(Errno.EINVAL, `no external buffer registered at pfn ${hex(base)}`);
    }
    r.released = true;
    if (r.held === 0) this.regionGone(r);
  }

  /** Whether the external region registered at `base` still holds frames (registered, or released but referenced). */
  externalLive(base: Pfn): boolean {
    return this.regionAt(base)?.base === base;
  }

  /** External regions still holding frames (registered, or released with frames still referenced). */
  externalRegions(): { base: Pfn; pages: number; label: string; released: boolean; live: number }[] {
    return this.regions.map((r) => ({
      base: r.base as Pfn,
      pages: r.pages,
      label: r.label,
      released: r.released,
      live: r.released ? r.held : r.pages,
    }));
  }

  // ---- data access ---------------------------------------------------------------------------------------------

  /**
   * The 4 KiB of a frame, for reading. Untouched RAM frames read as a shared zero page: never write to it. A frame of
   * a copy-backed external region is read into a scratch page valid until the next call; `undefined` means the frame
   * cannot be read (its backing failed, or it belongs to no live region): the caller faults.
   */
  frameForRead(f: Pfn): Uint8Array | undefined {
    // No `%`: a frame number computed by division is a double to the JIT, and a double modulo is a C call.
    const ci = Math.floor(f / CHUNK_FRAMES);
    const c = this.chunks[ci];
    const d = c?.data[f - ci * CHUNK_FRAMES];
    if (d !== undefined) return d;
    return f < this.externalBase ? ZERO_FRAME : this.externalRead(f);
  }

  /**
   * The 4 KiB of a RAM frame or a memory-backed external frame, for writing (creates its data on first touch).
   * Frames of copy-backed regions have no such view: write them with `writeBytes` (EFAULT here).
   */
  frameForWrite(f: Pfn): Uint8Array {
    if (f >= this.externalBase && this.regionAt(f) === undefined) throw this.gone(f, "write");
    const c = this.chunk(f);
    const i = f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES;
    let d = c.data[i];
    if (d === undefined) {
      if (f >= this.externalBase) {
        d = this.externalView(f, c, i);
        if (d === undefined) {
          throw new KernelError(Errno.EFAULT, `pfn ${hex(f)} has no memory view (copy-backed or gone): use writeBytes`);
        }
        return d;
      }
      d = new Uint8Array(PAGE_SIZE);
      c.data[i] = d;
      this.touched++;
    }
    return d;
  }

  /** Copies src[off..off+len) into frame `f` at `po` (within the page). False: the frame cannot be written. */
  writeBytes(f: Pfn, po: number, src: Uint8Array, off: number, len: number): boolean {
    const ci = Math.floor(f / CHUNK_FRAMES);
    const c = this.chunks[ci];
    let d = c?.data[f - ci * CHUNK_FRAMES];
    if (d === undefined) {
      if (f >= this.externalBase) return this.externalWrite(f, po, src, off, len);
      d = this.frameForWrite(f);
    }
    if (len === PAGE_SIZE && off === 0 && src.length === PAGE_SIZE) d.set(src);
    else if (len <= SMALL_COPY) for (let k = 0; k < len; k++) d[po + k] = src[off + k]!;
    else d.set(src.subarray(off, off + len), po);
    return true;
  }

  /** Writes `len` copies of `byte` into frame `f` at `po`. False: the frame cannot be written. */
  fillBytes(f: Pfn, po: number, byte: number, len: number): boolean {
    const ci = Math.floor(f / CHUNK_FRAMES);
    const c = this.chunks[ci];
    const d = c?.data[f - ci * CHUNK_FRAMES];
    if (d !== undefined) {
      d.fill(byte, po, po + len);
      return true;
    }
    if (f < this.externalBase) {
      this.frameForWrite(f).fill(byte, po, po + len);
      return true;
    }
    const page = new Uint8Array(len).fill(byte);
    return this.externalWrite(f, po, page, 0, len);
  }

  /** Reads `len` bytes at host-physical `addr` into `dst[off..]`, crossing frames as needed. EFAULT if one is gone. */
  read(addr: Hpa, dst: Uint8Array, off = 0, len = dst.length - off): void {
    let a: number = addr;
    let o = off;
    let left = len;
    while (left > 0) {
      const f = Math.floor(a / PAGE_SIZE);
      const po = a - f * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const src = this.frameForRead(f as Pfn);
      if (src === undefined) throw this.gone(f, "read");
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
      if (!this.writeBytes(f as Pfn, po, src, o, n)) throw this.gone(f, "write");
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
      if (!this.fillBytes(f as Pfn, po, byte, n)) throw this.gone(f, "fill");
      a += n;
      left -= n;
    }
  }

  stats(): PhysMemStats {
    let ext = 0;
    for (const r of this.regions) ext += r.released ? r.held : r.pages;
    return {
      totalFrames: this.totalFrames,
      allocatedFrames: this.allocated,
      touchedFrames: this.touched,
      pinnedFrames: this.pinned,
      externalFrames: ext,
    };
  }

  /** Frame numbers handed out to external regions and not yet back in the pool (tests: reuse and no growth). */
  externalSpan(): { top: number; free: number } {
    return { top: this.externalTop - this.externalBase, free: this.externalFree.reduce((n, r) => n + r.pages, 0) };
  }

  /** Metadata chunks in existence (tests: external frames materialise on use and go with their region). */
  chunkCount(): number {
    let n = 0;
    for (const c of this.chunks) if (c !== undefined) n++;
    return n;
  }

  // ---- internals ----------------------------------------------------------------------------------------------

  private gone(f: number, op: string): KernelError {
    return new KernelError(
      Errno.EFAULT,
      `physmem ${op} of pfn ${hex(f)}: the frame's external memory is gone or failed (the client shrank or unmapped it)`,
    );
  }

  private chunk(f: number): Chunk {
    const ci = Math.floor(f / CHUNK_FRAMES);
    let c = this.chunks[ci];
    if (c === undefined) {
      c = {
        ref: new Int32Array(CHUNK_FRAMES),
        pin: new Int32Array(CHUNK_FRAMES),
        owner: new Int32Array(CHUNK_FRAMES),
        data: new Array<Uint8Array | undefined>(CHUNK_FRAMES),
        region: f >= this.externalBase ? this.regionAt(f) : undefined,
      };
      this.chunks[ci] = c;
    }
    return c;
  }

  /** The live region whose chunk-aligned range holds `f` (binary search; regions are few). */
  private regionAt(f: number): ExternalRegion | undefined {
    const rs = this.regions;
    let lo = 0;
    let hi = rs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (rs[mid]!.base <= f) lo = mid + 1;
      else hi = mid;
    }
    // Never rs[-1]: a negative index is a property lookup by name, a runtime call.
    const r = lo > 0 ? rs[lo - 1] : undefined;
    return r !== undefined && f < r.base + roundChunks(r.pages) ? r : undefined;
  }

  /** Takes a reference (stored). For an external frame, the first stored reference holds its region. */
  private ref(f: number, c: Chunk, i: number): void {
    if (c.ref[i]!++ === 0 && f >= this.externalBase) c.region!.held++;
  }

  /** A memory-backed external frame's view, made (and cached in its chunk) on first use; undefined otherwise. */
  private externalView(f: number, c: Chunk, i: number): Uint8Array | undefined {
    const r = c.region;
    if (r === undefined || !r.memory || f >= r.base + r.pages || (r.released && c.ref[i] === 0)) return undefined;
    const k = f - r.base;
    const vi = Math.floor(k / VIEW_FRAMES);
    r.views ??= new Map();
    let v = r.views.get(vi);
    if (v === undefined) {
      const at = vi * VIEW_BYTES;
      v = r.backing.view(at, Math.min(VIEW_BYTES, r.backing.bytes - at));
      if (v === undefined) return undefined;
      r.views.set(vi, v);
    }
    const po = (k - vi * VIEW_FRAMES) * PAGE_SIZE;
    const d = v.subarray(po, po + PAGE_SIZE);
    c.data[i] = d;
    return d;
  }

  private externalRead(f: number): Uint8Array | undefined {
    const r = this.regionAt(f);
    if (r === undefined || f >= r.base + r.pages) return undefined;
    if (r.memory) {
      const c = this.chunk(f);
      return this.externalView(f, c, f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES);
    }
    const c = this.chunks[Math.floor(f / CHUNK_FRAMES)];
    if (r.released && (c?.ref[f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES] ?? 0) === 0) return undefined;
    return r.backing.read((f - r.base) * PAGE_SIZE, this.ioPage, 0, PAGE_SIZE) === 0 ? this.ioPage : undefined;
  }

  private externalWrite(f: number, po: number, src: Uint8Array, off: number, len: number): boolean {
    const r = this.regionAt(f);
    if (r === undefined || f >= r.base + r.pages) return false;
    if (r.memory) {
      const c = this.chunk(f);
      const d = this.externalView(f, c, f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES);
      if (d === undefined) return false;
      d.set(src.subarray(off, off + len), po);
      return true;
    }
    const c = this.chunks[Math.floor(f / CHUNK_FRAMES)];
    if (r.released && (c?.ref[f - Math.floor(f / CHUNK_FRAMES) * CHUNK_FRAMES] ?? 0) === 0) return false;
    return r.backing.write((f - r.base) * PAGE_SIZE + po, src, off, len) === 0;
  }

  /**
   * Frame numbers for a new external region, whole chunks: the first released range that fits (first fit), else
   * fresh ones at the top. Numbers are reused only once every frame of the old region dropped its last reference (no
   * pin, no mapping holds one), so nothing can still reach the old backing through them.
   */
  private takeExternalRange(pages: number): number {
    const want = roundChunks(pages);
    const free = this.externalFree;
    for (let k = 0; k < free.length; k++) {
      const r = free[k]!;
      if (r.pages < want) continue;
      const base = r.base;
      if (r.pages === want) free.splice(k, 1);
      else free[k] = { base: base + want, pages: r.pages - want };
      return base;
    }
    const base = this.externalTop;
    this.externalTop += want;
    return base;
  }

  /** A region with no registration and no referenced frame: its chunks and numbers go. */
  private regionGone(r: ExternalRegion): void {
    removeAt(this.regions, this.regions.indexOf(r));
    const span = roundChunks(r.pages);
    // Only chunks that materialised: external chunk numbers lie far above RAM's, where the array is sparse and a
    // store of an absent element is a runtime call.
    for (let ci = r.base / CHUNK_FRAMES; ci < (r.base + span) / CHUNK_FRAMES; ci++) {
      if (this.chunks[ci] !== undefined) this.chunks[ci] = undefined;
    }
    r.views = undefined;
    this.giveExternalRange(r.base, span);
    if (this.tracer.enabled) this.tracer.emit("mem.external.release", { pfn: r.base, pages: r.pages, label: r.label });
  }

  /** A released region's frame numbers go back to the pool (merged with their neighbours). */
  private giveExternalRange(base: number, pages: number): void {
    const free = this.externalFree;
    let k = 0;
    while (k < free.length && free[k]!.base < base) k++;
    insertAt(free, k, { base, pages });
    // Merge with the following, then the preceding range.
    if (k + 1 < free.length && free[k]!.base + free[k]!.pages === free[k + 1]!.base) {
      free[k] = { base: free[k]!.base, pages: free[k]!.pages + free[k + 1]!.pages };
      free.splice(k + 1, 1);
    }
    if (k > 0 && free[k - 1]!.base + free[k - 1]!.pages === free[k]!.base) {
      free[k - 1] = { base: free[k - 1]!.base, pages: free[k - 1]!.pages + free[k]!.pages };
      free.splice(k, 1);
    }
    // The top range gives its numbers back to the fresh pool.
    const last = free[free.length - 1];
    if (last !== undefined && last.base + last.pages === this.externalTop) {
      this.externalTop = last.base;
      free.pop();
    }
  }

  /** The chunk of an allocated frame (for an external frame: of a live one, made on first use). */
  private chunkOf(f: Pfn, op: string): Chunk {
    const ci = Math.floor(f / CHUNK_FRAMES);
    const c = this.chunks[ci];
    if (c !== undefined && c.ref[f - ci * CHUNK_FRAMES] !== 0) return c;
    if (f >= this.externalBase && this.refCount(f) > 0) return this.chunk(f);
    throw new Error(`physmem.${op}: pfn ${hex(f)} is not allocated (a reference-counting bug in the caller)`);
  }

  private release(f: Pfn, c: Chunk, i: number): void {
    if (f >= this.externalBase) {
      const r = c.region!;
      r.held--;
      if (r.released) {
        c.data[i] = undefined;
        if (r.held === 0) this.regionGone(r);
      }
      return;
    }
    c.owner[i] = 0;
    if (c.data[i] !== undefined) {
      c.data[i] = undefined;
      this.touched--;
    }
    this.allocated--;
    this.freeList.push(f);
  }
}

/** Frames, rounded up to whole metadata chunks. */
function roundChunks(pages: number): number {
  return Math.ceil(pages / CHUNK_FRAMES) * CHUNK_FRAMES;
}

/** Copies of at most this many bytes are done by a loop (cheaper than subarray + set). */
const SMALL_COPY = 16;

/** Frame number of a host-physical address. */
export function hpaToPfn(a: Hpa): Pfn {
  return toPfn(Math.floor(a / PAGE_SIZE));
}
/** Host-physical address of a frame (plus an offset within it). */
export function pfnToHpa(f: Pfn, offset = 0): Hpa {
  return (f * PAGE_SIZE + offset) as Hpa;
}
