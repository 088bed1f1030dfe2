/**
 * Process address spaces (Linux `struct mm_struct` as VFIO's type1 backend sees it): VMAs, a demand-faulted page
 * table, get_user_pages / pin_user_pages(FOLL_LONGTERM), and `locked_vm` accounting against RLIMIT_MEMLOCK.
 *
 * - VMAs are kept in an array sorted by start address; lookups are binary searches (O(log n)) behind a one-entry
 *   cache, inserts and removals splice (O(n), n being a few dozen in any VMM). VMA objects are immutable: a split or
 *   an mprotect replaces them, so a `Vma` a caller holds never changes under it.
 * - The page table is sparse: leaves of 512 entries (one per 2 MiB of virtual space, like an x86 last-level table)
 *   created on the first fault in their range and dropped when emptied. Mapping 1 TiB costs one VMA object; memory and
 *   time are proportional to touched pages. munmap visits only the leaves that exist.
 * - Every present page-table entry holds one physmem reference; pins (`physmem.pin`) and get_user_pages references
 *   are further references, so a pinned frame outlives munmap and exit and is freed by its last unpin.
 * - Anonymous memory is private and zero-filled; a read fault allocates a frame (Linux maps the shared zero page and
 *   copies on the first write; the difference is invisible here because no one compares frame numbers across it).
 *   Frames are allocated with the address space's owner tag.
 * - External (fd-backed, MAP_SHARED) VMAs map a contiguous run of already-allocated frames starting at `basePfn`:
 *   guest RAM a real VMM shares through a memfd, or memory a driver exposes through mmap. munmap never frees them (the
 *   registration or the driver holds them); page-table references are still taken and dropped.
 * - `locked_vm` is separate from pinning, as in Linux: type1 calls `accountLockedVm` itself (vfio_lock_acct), with the
 *   rule of `__account_locked_vm`: an increase beyond RLIMIT_MEMLOCK fails with ENOMEM unless the task has
 *   CAP_IPC_LOCK; a decrease never takes the counter below 0.
 * - Access checks follow GUP's `check_vma_flags`: a read needs PROT_READ, a write needs PROT_WRITE (no FOLL_FORCE),
 *   for CPU accesses through `read`/`write` too (x86 would let a write-only mapping be read; nothing here relies on it).
 *
 * Not modelled: fork and copy-on-write, the shared zero page, VMA merging (adjacent compatible VMAs stay separate;
 * Linux merges them, which changes only `vmas().length`), huge pages, swap and reclaim, mlock(2), VM_PFNMAP/VM_IO
 * mappings (GUP on them fails in Linux; every external VMA here is a normal page mapping), MAP_FIXED_NOREPLACE, mremap,
 * stack guard gaps, address tagging. mprotect checks the whole range before changing anything (Linux may apply part
 * of it before finding a hole); get_user_pages and pin_user_pages are all-or-nothing (Linux may return a short count).
 *
 * Invariants: VMAs are page-aligned, non-empty, non-overlapping and sorted; every present page-table entry lies
 * inside a VMA and holds exactly one physmem reference; `residentPages` equals the number of present entries;
 * `lockedVm() >= 0`.
 */
import {
  alignUp,
  defineTraceEvents,
  Errno,
  type Hva,
  hex,
  insertAt,
  isKernelError,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  removeAt,
  type Tracer,
} from "../core/index.ts";
import { CostMeter } from "../cost/index.ts";
import type { PhysicalMemory } from "./physmem.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "mm.mmap": { pid: number; addr: number; length: number; prot: string; backing: string; name: string };
    "mm.munmap": { pid: number; addr: number; length: number; pages: number };
    "mm.mprotect": { pid: number; addr: number; length: number; prot: string };
    "mm.fault": { pid: number; addr: number; write: boolean; pfn: number };
    "mm.gup": { pid: number; addr: number; pages: number; write: boolean };
    "mm.put_pages": { pid: number; pages: number };
    "mm.pin": { pid: number; addr: number; pages: number; write: boolean };
    "mm.unpin": { pid: number; pages: number };
    "mm.locked_vm": { pid: number; delta: number; lockedVm: number; limit: number; capIpcLock: boolean };
    "mm.locked_vm.exceeded": { pid: number; requested: number; lockedVm: number; limit: number };
    "mm.exit": { pid: number; vmas: number; residentPages: number; pinnedPages: number };
  }
}
defineTraceEvents("host", {
  "mm.mmap": "process {pid}: mmap {length} bytes {prot} {backing} '{name}' at {addr}",
  "mm.munmap": "process {pid}: munmap {length} bytes at {addr}, {pages} resident page(s) dropped",
  "mm.mprotect": "process {pid}: mprotect {length} bytes at {addr} to {prot}",
  "mm.fault": "process {pid}: fault at {addr} (write {write}) -> pfn {pfn}",
  "mm.gup": "process {pid}: get_user_pages {pages} page(s) at {addr} (write {write})",
  "mm.put_pages": "process {pid}: put {pages} page reference(s)",
  "mm.pin": "process {pid}: pinned {pages} page(s) at {addr} (write {write})",
  "mm.unpin": "process {pid}: unpinned {pages} page(s)",
  "mm.locked_vm": "process {pid}: locked_vm {delta} -> {lockedVm} page(s) (limit {limit}, CAP_IPC_LOCK {capIpcLock})",
  "mm.locked_vm.exceeded":
    "process {pid}: RLIMIT_MEMLOCK exceeded: {requested} more page(s) on {lockedVm} locked, limit {limit}",
  "mm.exit": "process {pid}: address space torn down: {vmas} VMA(s), {residentPages} resident, {pinnedPages} pinned",
});

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
const PROT_ALL = PROT_READ | PROT_WRITE | PROT_EXEC;

/** x86_64 TASK_SIZE with 4-level paging: the first address user space cannot map. */
export const TASK_SIZE = 0x7ffffffff000;
/** vm.mmap_min_addr's usual value: MAP_FIXED below it fails with EPERM. */
export const MMAP_MIN_ADDR = 0x10000;
/** Where top-down placement starts (below it); a real process has it just below its stack. */
export const DEFAULT_MMAP_BASE = 0x7f0000000000;
/** RLIMIT_MEMLOCK default since Linux 5.16 (8 MiB). */
export const DEFAULT_RLIMIT_MEMLOCK = 8 * 1024 * 1024;

export type VmaBacking = "anonymous" | "external";

/** One mapping, [start, end). Immutable: splits and mprotect replace VMA objects. */
export interface Vma {
  readonly start: Hva;
  /** Exclusive. */
  readonly end: Hva;
  readonly prot: number;
  readonly backing: VmaBacking;
  /** External: the frame mapped at `start` (the page at start + k*4096 is basePfn + k). Anonymous: undefined. */
  readonly basePfn: Pfn | undefined;
  /** The mmap `name`, or else the external buffer's label; shown by `maps()`. */
  readonly name: string | undefined;
}

export type MmapBacking = { kind: "external"; basePfn: Pfn; label: string } | { kind: "anonymous" };

export interface MmapOptions {
  /** MAP_FIXED: map exactly here (page-aligned), replacing whatever was mapped in the range. */
  fixed?: Hva;
  /** Default anonymous. */
  backing?: MmapBacking;
  name?: string;
}

export interface AddressSpaceOptions {
  physmem: PhysicalMemory;
  tracer: Tracer;
  pid: number;
  /** Frame owner tag for frames this address space allocates (see PhysicalMemory). Default 0. */
  owner?: number;
  /** RLIMIT_MEMLOCK in bytes; default 8 MiB as Linux. `Infinity` is RLIM_INFINITY. */
  rlimitMemlockBytes?: number;
  capIpcLock?: boolean;
  /** Top of the top-down mmap area; default 0x7f0000000000. */
  mmapBase?: number;
  /** Counts pin_user_pages calls and pages (the host's meter; default one of its own). */
  meter?: CostMeter;
}

export interface AddressSpaceStats {
  readonly vmas: number;
  readonly mappedBytes: number;
  readonly residentPages: number;
  /** Pages (locked_vm). */
  readonly lockedVm: number;
  /** Pins taken through this address space and not yet released through it. */
  readonly pinnedPages: number;
}

/** "rw-", "r-x", "---": the protection as /proc/pid/maps prints it. */
export function protString(prot: number): string {
  return `${prot & PROT_READ ? "r" : "-"}${prot & PROT_WRITE ? "w" : "-"}${prot & PROT_EXEC ? "x" : "-"}`;
}

/** Copies up to this many bytes with a loop rather than a subarray view, so small accesses allocate nothing. */
const SMALL_COPY = 64;

// ---- page table -----------------------------------------------------------------------------------------------------

/** Entries per leaf: 512, as an x86 page table (2 MiB of virtual space). */
const LEAF_PAGES = 512;
/** Slot after the entries holding the leaf's count of present entries. */
const LEAF_COUNT = LEAF_PAGES;

/**
 * Sparse virtual page number -> frame map. Frame 0 means "not present" (physmem never hands out frame 0).
 * Leaves are Float64Arrays because frame numbers can exceed 2^32; their index (vpn / 512 < 2^26) stays a small integer,
 * the fast kind of Map key.
 */
class PageTable {
  private readonly leaves = new Map<number, Float64Array>();
  private lastIndex = -1;
  private lastLeaf: Float64Array | undefined;
  present = 0;
  /** Leaves and entries `clearRange` has examined, ever: what an unmap cost, for tests of its complexity. */
  examined = 0;

  get(vpn: number): number {
    const li = Math.floor(vpn / LEAF_PAGES);
    const leaf = li === this.lastIndex ? this.lastLeaf : this.leafAt(li);
    return leaf === undefined ? 0 : leaf[vpn - li * LEAF_PAGES]!;
  }

  /** Sets an entry that is not present. */
  set(vpn: number, frame: number): void {
    const li = Math.floor(vpn / LEAF_PAGES);
    let leaf = li === this.lastIndex ? this.lastLeaf : this.leafAt(li);
    if (leaf === undefined) {
      leaf = new Float64Array(LEAF_PAGES + 1);
      this.leaves.set(li, leaf);
      this.lastIndex = li;
      this.lastLeaf = leaf;
    }
    leaf[vpn - li * LEAF_PAGES] = frame;
    leaf[LEAF_COUNT]!++;
    this.present++;
  }

  /**
   * Clears every present entry in [lo, hi) and hands its frame to `release`. Visits the leaves in the range, or every
   * leaf when there are fewer leaves than the range spans (a 1 TiB munmap of a sparsely touched VMA).
   */
  clearRange(lo: number, hi: number, release: (frame: number) => void): number {
    if (hi <= lo || this.leaves.size === 0) return 0;
    const liLo = Math.floor(lo / LEAF_PAGES);
    const liHi = Math.floor((hi - 1) / LEAF_PAGES);
    let cleared = 0;
    if (liHi - liLo + 1 <= this.leaves.size) {
      this.examined += liHi - liLo + 1;
      for (let li = liLo; li <= liHi; li++) {
        const leaf = this.leaves.get(li);
        if (leaf !== undefined) cleared += this.clearLeaf(li, leaf, lo, hi, release);
      }
    } else {
      // Deleting the entry being visited is safe during Map iteration.
      this.examined += this.leaves.size;
      for (const [li, leaf] of this.leaves) {
        if (li >= liLo && li <= liHi) cleared += this.clearLeaf(li, leaf, lo, hi, release);
      }
    }
    return cleared;
  }

  /** Present entries in [lo, hi), counting only leaves that exist. */
  countRange(lo: number, hi: number): number {
    let n = 0;
    const liLo = Math.floor(lo / LEAF_PAGES);
    const liHi = Math.floor((hi - 1) / LEAF_PAGES);
    for (const [li, leaf] of this.leaves) {
      if (li < liLo || li > liHi) continue;
      const base = li * LEAF_PAGES;
      const from = Math.max(lo, base) - base;
      const to = Math.min(hi, base + LEAF_PAGES) - base;
      for (let k = from; k < to; k++) if (leaf[k] !== 0) n++;
    }
    return n;
  }

  private clearLeaf(li: number, leaf: Float64Array, lo: number, hi: number, release: (frame: number) => void): number {
    const base = li * LEAF_PAGES;
    const from = Math.max(lo, base) - base;
    const to = Math.min(hi, base + LEAF_PAGES) - base;
    let cleared = 0;
    this.examined += to - from;
    for (let k = from; k < to; k++) {
      const f = leaf[k]!;
      if (f === 0) continue;
      leaf[k] = 0;
      cleared++;
      release(f);
    }
    leaf[LEAF_COUNT]! -= cleared;
    this.present -= cleared;
    if (leaf[LEAF_COUNT] === 0) {
      this.leaves.delete(li);
      if (this.lastIndex === li) {
        this.lastIndex = -1;
        this.lastLeaf = undefined;
      }
    }
    return cleared;
  }

  private leafAt(li: number): Float64Array | undefined {
    const leaf = this.leaves.get(li);
    if (leaf !== undefined) {
      this.lastIndex = li;
      this.lastLeaf = leaf;
    }
    return leaf;
  }
}

// ---- address space --------------------------------------------------------------------------------------------------

function makeVma(
  start: number,
  end: number,
  prot: number,
  backing: VmaBacking,
  basePfn: number | undefined,
  name: string | undefined,
): Vma {
  return { start: start as Hva, end: end as Hva, prot, backing, basePfn: basePfn as Pfn | undefined, name };
}

/** The part of `v` from `from` to `to` (both inside it), keeping the external frame run aligned with addresses. */
function sliceVma(v: Vma, from: number, to: number, prot = v.prot): Vma {
  const base = v.basePfn === undefined ? undefined : v.basePfn + (from - v.start) / PAGE_SIZE;
  return makeVma(from, to, prot, v.backing, base, v.name);
}

export class AddressSpace {
  readonly pid: number;
  private readonly physmem: PhysicalMemory;
  private readonly tracer: Tracer;
  private readonly owner: number;
  private readonly mmapBase: number;
  /** Sorted by start, non-overlapping. */
  private readonly list: Vma[] = [];
  private readonly pt = new PageTable();
  /** Last VMA found by a lookup; reset on every change to `list`. */
  private cached: Vma | undefined;
  private mapped = 0;
  private locked = 0;
  private pinned = 0;
  private memlockBytes: number;
  private capIpcLock: boolean;
  private dead = false;
  private readonly meter: CostMeter;
  /** Bound once so that munmap does not create a closure per call. */
  private readonly releaseFrame = (f: number): void => this.physmem.put(f as Pfn);

  constructor(opts: AddressSpaceOptions) {
    this.physmem = opts.physmem;
    this.meter = opts.meter ?? new CostMeter();
    this.tracer = opts.tracer;
    this.pid = opts.pid;
    this.owner = opts.owner ?? 0;
    const base = opts.mmapBase ?? DEFAULT_MMAP_BASE;
    if (!Number.isSafeInteger(base) || base % PAGE_SIZE !== 0 || base <= MMAP_MIN_ADDR || base > TASK_SIZE) {
      throw new KernelError(
        Errno.EINVAL,
        `mmapBase ${hex(base)} must be page-aligned and within (${hex(MMAP_MIN_ADDR)}, ${hex(TASK_SIZE)}]`,
      );
    }
    this.mmapBase = base;
    this.memlockBytes = DEFAULT_RLIMIT_MEMLOCK;
    if (opts.rlimitMemlockBytes !== undefined) this.setRlimitMemlock(opts.rlimitMemlockBytes);
    this.capIpcLock = opts.capIpcLock ?? false;
  }

  /** True once `exit()` ran. */
  get exited(): boolean {
    return this.dead;
  }

  // ---- mappings ---------------------------------------------------------------------------------------------------

  /**
   * mmap(2). Length is rounded up to whole pages. Without `fixed`, the highest free range below mmapBase is used
   * (then the lowest above it). EINVAL: length 0, unknown prot bits, unaligned `fixed`, an external run of frames that
   * is not allocated. EPERM: `fixed` below mmap_min_addr. ENOMEM: no room. ESRCH: the process exited.
   */
  mmap(length: number, prot: number, opts: MmapOptions = {}): Hva {
    if (this.dead) throw new KernelError(Errno.ESRCH, `process ${this.pid} has exited: it cannot mmap`);
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new KernelError(Errno.EINVAL, `process ${this.pid}: mmap length ${length} must be a positive integer`);
    }
    this.checkProt(prot, "mmap");
    if (length > TASK_SIZE) {
      throw new KernelError(Errno.ENOMEM, `process ${this.pid}: mmap of ${length} bytes exceeds the address space`);
    }
    const len = alignUp(length, PAGE_SIZE);
    const backing = opts.backing ?? { kind: "anonymous" };
    if (backing.kind === "external") this.checkExternal(backing.basePfn, len / PAGE_SIZE, backing.label);

    let addr: number;
    if (opts.fixed !== undefined) {
      const f: number = opts.fixed;
      if (!Number.isSafeInteger(f) || f % PAGE_SIZE !== 0) {
        throw new KernelError(Errno.EINVAL, `process ${this.pid}: MAP_FIXED address ${hex(f)} is not page-aligned`);
      }
      if (f < MMAP_MIN_ADDR) {
        throw new KernelError(
          Errno.EPERM,
          `process ${this.pid}: MAP_FIXED address ${hex(f)} is below vm.mmap_min_addr (${hex(MMAP_MIN_ADDR)})`,
        );
      }
      if (f + len > TASK_SIZE) {
        throw new KernelError(
          Errno.ENOMEM,
          `process ${this.pid}: MAP_FIXED range ${hex(f)}+${hex(len)} ends beyond TASK_SIZE ${hex(TASK_SIZE)}`,
        );
      }
      addr = f;
      this.removeRange(addr, addr + len);
    } else {
      const found = this.findFree(len);
      if (found === undefined) {
        throw new KernelError(
          Errno.ENOMEM,
          `process ${this.pid}: no free range of ${hex(len)} bytes in the address space (${this.list.length} VMAs)`,
        );
      }
      addr = found;
    }

    const name = opts.name ?? (backing.kind === "external" ? backing.label : undefined);
    const vma = makeVma(
      addr,
      addr + len,
      prot,
      backing.kind,
      backing.kind === "external" ? backing.basePfn : undefined,
      name,
    );
    insertAt(this.list, this.indexAfter(addr), vma);
    this.cached = undefined;
    this.mapped += len;
    if (this.tracer.enabled) {
      this.tracer.emit("mm.mmap", {
        pid: this.pid,
        addr,
        length: len,
        prot: protString(prot),
        backing: backing.kind,
        name: name ?? "",
      });
    }
    return addr as Hva;
  }

  /**
   * munmap(2): removes every mapping in the range (splitting VMAs at its edges) and drops the page-table references.
   * Holes are fine. EINVAL: unaligned address, length 0, a range beyond TASK_SIZE. After exit: nothing to do.
   */
  munmap(addr: Hva, length: number): void {
    const a: number = addr;
    if (!Number.isSafeInteger(a) || a % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `process ${this.pid}: munmap address ${hex(a)} is not page-aligned`);
    }
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new KernelError(Errno.EINVAL, `process ${this.pid}: munmap length ${length} must be a positive integer`);
    }
    const end = a + alignUp(length, PAGE_SIZE);
    if (end > TASK_SIZE) {
      throw new KernelError(
        Errno.EINVAL,
        `process ${this.pid}: munmap range ${hex(a)}-${hex(end)} is beyond TASK_SIZE`,
      );
    }
    const pages = this.removeRange(a, end);
    if (this.tracer.enabled) this.tracer.emit("mm.munmap", { pid: this.pid, addr: a, length: end - a, pages });
  }

  /**
   * mprotect(2). Present pages stay present; later faults and pins see the new protection. EINVAL: unaligned address,
   * unknown prot bits. ENOMEM: part of the range is not mapped (nothing is changed then). Length 0 does nothing.
   */
  mprotect(addr: Hva, length: number, prot: number): void {
    if (this.dead) throw new KernelError(Errno.ESRCH, `process ${this.pid} has exited: it cannot mprotect`);
    const a: number = addr;
    if (!Number.isSafeInteger(a) || a % PAGE_SIZE !== 0) {
      throw new KernelError(Errno.EINVAL, `process ${this.pid}: mprotect address ${hex(a)} is not page-aligned`);
    }
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new KernelError(Errno.EINVAL, `process ${this.pid}: mprotect length ${length} is invalid`);
    }
    this.checkProt(prot, "mprotect");
    if (length === 0) return;
    const end = a + alignUp(length, PAGE_SIZE);
    let cur = a;
    for (let i = this.indexAfter(a); cur < end; i++) {
      const v = this.list[i];
      if (v === undefined || v.start > cur) {
        throw new KernelError(
          Errno.ENOMEM,
          `process ${this.pid}: mprotect range ${hex(a)}-${hex(end)} has an unmapped hole at ${hex(cur)}`,
        );
      }
      cur = v.end;
    }
    this.splitAt(a);
    this.splitAt(end);
    for (let i = this.indexAfter(a); i < this.list.length; i++) {
      const v = this.list[i]!;
      if (v.start >= end) break;
      this.list[i] = sliceVma(v, v.start, v.end, prot);
    }
    this.cached = undefined;
    if (this.tracer.enabled) {
      this.tracer.emit("mm.mprotect", { pid: this.pid, addr: a, length: end - a, prot: protString(prot) });
    }
  }

  /** The VMA containing `addr`, if any. */
  vmaAt(addr: Hva): Vma | undefined {
    return this.lookup(addr);
  }

  /** A snapshot of the VMAs in address order. */
  vmas(): readonly Vma[] {
    return this.list.slice();
  }

  /** /proc/pid/maps: one line per VMA. */
  maps(): string {
    return this.list
      .map((v) => {
        const flags = `${protString(v.prot)}${v.backing === "external" ? "s" : "p"}`;
        const label = v.name === undefined ? "" : v.backing === "external" ? v.name : `[anon:${v.name}]`;
        return `${v.start.toString(16).padStart(12, "0")}-${v.end.toString(16).padStart(12, "0")} ${flags} ${label}`.trimEnd();
      })
      .join("\n");
  }

  // ---- page faults and CPU access -----------------------------------------------------------------------------------

  /**
   * Demand fault at `addr`: returns the frame mapped there, populating the entry if needed. EFAULT outside any VMA, when
   * the VMA's protection forbids the access, or on an external page whose frame is gone; ENOMEM when host memory is
   * exhausted.
   */
  fault(addr: Hva, write: boolean): Pfn {
    const vpn = Math.floor(addr / PAGE_SIZE);
    const vma = this.accessible(addr, write, "fault");
    const f = this.pt.get(vpn);
    return (f !== 0 ? f : this.populate(vpn, vma, write)) as Pfn;
  }

  /** The frame present at `addr` (what a page walk sees), without faulting; undefined if none. Ignores protection. */
  translate(addr: Hva): Pfn | undefined {
    const f = this.pt.get(Math.floor(addr / PAGE_SIZE));
    return f === 0 ? undefined : (f as Pfn);
  }

  /** A load by the process: copies `len` bytes at `addr` into `dst[off..]`, faulting pages in (EFAULT as `fault`). */
  read(addr: Hva, dst: Uint8Array, off = 0, len = dst.length - off): void {
    let a: number = addr;
    let o = off;
    let left = len;
    while (left > 0) {
      const vpn = Math.floor(a / PAGE_SIZE);
      const po = a - vpn * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const frame = this.physmem.frameForRead(this.fault(a as Hva, false));
      if (frame === undefined) throw this.memoryGone(a);
      if (n <= SMALL_COPY) for (let k = 0; k < n; k++) dst[o + k] = frame[po + k]!;
      else dst.set(frame.subarray(po, po + n), o);
      a += n;
      o += n;
      left -= n;
    }
  }

  /** A store by the process: copies `src[off..off+len)` to `addr`, faulting pages in for writing. */
  write(addr: Hva, src: Uint8Array, off = 0, len = src.length - off): void {
    let a: number = addr;
    let o = off;
    let left = len;
    while (left > 0) {
      const vpn = Math.floor(a / PAGE_SIZE);
      const po = a - vpn * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      if (!this.physmem.writeBytes(this.fault(a as Hva, true), po, src, o, n)) throw this.memoryGone(a);
      a += n;
      o += n;
      left -= n;
    }
  }

  // ---- get_user_pages / pin_user_pages ------------------------------------------------------------------------------

  /**
   * get_user_pages: faults in `npages` pages from the page containing `addr` and takes one reference on each (drop
   * them with `putPages`). All or nothing: on EFAULT/ENOMEM the references taken so far are dropped (pages already
   * faulted in stay mapped, as in Linux).
   */
  getUserPages(addr: Hva, npages: number, write: boolean): Pfn[] {
    this.checkCount(npages, "get_user_pages");
    const out = new Array<Pfn>(npages);
    const vpn0 = Math.floor(addr / PAGE_SIZE);
    let i = 0;
    try {
      let vma: Vma | undefined;
      for (; i < npages; i++) {
        const vpn = vpn0 + i;
        const va = vpn * PAGE_SIZE;
        if (vma === undefined || va >= vma.end) vma = this.accessible(va as Hva, write, "get_user_pages");
        let f = this.pt.get(vpn);
        if (f === 0) f = this.populate(vpn, vma, write);
        this.physmem.get(f as Pfn);
        out[i] = f as Pfn;
      }
    } catch (e) {
      for (let k = 0; k < i; k++) this.physmem.put(out[k]!);
      throw e;
    }
    if (this.tracer.enabled && npages > 0) {
      this.tracer.emit("mm.gup", { pid: this.pid, addr: vpn0 * PAGE_SIZE, pages: npages, write });
    }
    return out;
  }

  /** put_page on each frame returned by `getUserPages`. */
  putPages(pfns: readonly Pfn[]): void {
    for (const f of pfns) this.physmem.put(f);
    if (this.tracer.enabled && pfns.length > 0) this.tracer.emit("mm.put_pages", { pid: this.pid, pages: pfns.length });
  }

  /**
   * pin_user_pages(FOLL_LONGTERM): faults in and pins `npages` pages from the page containing `addr`, writing the
   * frames to `into[0..npages)` when given. Returns `npages`. EFAULT: a page outside any VMA, or a VMA without
   * PROT_WRITE (write) / PROT_READ (read, so PROT_NONE always fails). ENOMEM: host memory exhausted. All or nothing:
   * on error the pins this call took are released. Does not touch locked_vm (see `accountLockedVm`).
   */
  pinUserPages(addr: Hva, npages: number, write: boolean, into?: Pfn[] | Float64Array): number {
    this.checkCount(npages, "pin_user_pages");
    const vpn0 = Math.floor(addr / PAGE_SIZE);
    let i = 0;
    try {
      let vma: Vma | undefined;
      for (; i < npages; i++) {
        const vpn = vpn0 + i;
        const va = vpn * PAGE_SIZE;
        if (vma === undefined || va >= vma.end) vma = this.accessible(va as Hva, write, "pin_user_pages");
        let f = this.pt.get(vpn);
        if (f === 0) f = this.populate(vpn, vma, write);
        this.physmem.pin(f as Pfn);
        if (into !== undefined) into[i] = f as Pfn;
      }
    } catch (e) {
      // Nothing was unmapped in between, so the page table still names the frames this call pinned.
      for (let k = 0; k < i; k++) this.physmem.unpin(this.pt.get(vpn0 + k) as Pfn);
      throw e;
    }
    this.pinned += npages;
    this.meter.pinCalls++;
    this.meter.pinPages += npages;
    if (this.tracer.enabled && npages > 0) {
      this.tracer.emit("mm.pin", { pid: this.pid, addr: vpn0 * PAGE_SIZE, pages: npages, write });
    }
    return npages;
  }

  /** unpin_user_pages on the first `count` frames (default all). Frames whose last reference this was are freed. */
  unpinUserPages(pfns: readonly Pfn[] | Float64Array, count = pfns.length): void {
    for (let i = 0; i < count; i++) this.physmem.unpin(pfns[i]! as Pfn);
    this.pinned -= count;
    this.meter.unpinPages += count;
    if (this.tracer.enabled && count > 0) this.tracer.emit("mm.unpin", { pid: this.pid, pages: count });
  }

  // ---- locked_vm ----------------------------------------------------------------------------------------------------

  /**
   * Linux `__account_locked_vm(mm, npages, inc, task, bypass_rlim = CAP_IPC_LOCK)`. Increase: ENOMEM (RLIMIT_MEMLOCK
   * exceeded) when the new total exceeds the limit and the task lacks CAP_IPC_LOCK; ESRCH after exit (type1's
   * mmget_not_zero fails). Decrease: never below 0, and allowed after exit so that late unpins balance.
   */
  accountLockedVm(npages: number, inc: boolean): void {
    this.checkCount(npages, "locked_vm accounting");
    if (npages === 0) return;
    const limit = this.memlockLimitPages();
    if (inc) {
      if (this.dead) {
        throw new KernelError(Errno.ESRCH, `process ${this.pid} has exited: cannot charge ${npages} locked page(s)`);
      }
      const next = this.locked + npages;
      if (!this.capIpcLock && next > limit) {
        if (this.tracer.enabled) {
          this.tracer.emit("mm.locked_vm.exceeded", { pid: this.pid, requested: npages, lockedVm: this.locked, limit });
        }
        throw new KernelError(
          Errno.ENOMEM,
          `RLIMIT_MEMLOCK exceeded: process ${this.pid} has ${this.locked} page(s) locked, ${npages} more would pass ` +
            `the limit of ${limit} page(s) (${this.memlockBytes} bytes); raise it (ulimit -l) or grant CAP_IPC_LOCK`,
          { pid: this.pid, lockedVm: this.locked, requested: npages, limit },
        );
      }
      this.locked = next;
    } else {
      this.locked -= Math.min(npages, this.locked);
    }
    if (this.tracer.enabled) {
      this.tracer.emit("mm.locked_vm", {
        pid: this.pid,
        delta: inc ? npages : -npages,
        lockedVm: this.locked,
        limit,
        capIpcLock: this.capIpcLock,
      });
    }
  }

  /** locked_vm in pages. */
  lockedVm(): number {
    return this.locked;
  }

  /** setrlimit(RLIMIT_MEMLOCK) in bytes (`Infinity` = RLIM_INFINITY). Lowering it below locked_vm is allowed. */
  setRlimitMemlock(bytes: number): void {
    if (!(bytes === Number.POSITIVE_INFINITY || (Number.isSafeInteger(bytes) && bytes >= 0))) {
      throw new KernelError(Errno.EINVAL, `RLIMIT_MEMLOCK ${bytes} must be a non-negative integer or Infinity`);
    }
    this.memlockBytes = bytes;
  }

  rlimitMemlock(): number {
    return this.memlockBytes;
  }

  /** The limit in pages, as `rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT`. */
  memlockLimitPages(): number {
    return this.memlockBytes === Number.POSITIVE_INFINITY
      ? Number.POSITIVE_INFINITY
      : Math.floor(this.memlockBytes / PAGE_SIZE);
  }

  setCapIpcLock(b: boolean): void {
    this.capIpcLock = b;
  }

  hasCapIpcLock(): boolean {
    return this.capIpcLock;
  }

  // ---- lifetime ----------------------------------------------------------------------------------------------------

  /**
   * The process died: every VMA goes and every page-table reference is dropped. Pinned frames stay allocated until
   * unpinned; locked_vm stays until whoever pinned un-accounts it. Idempotent.
   */
  exit(): void {
    if (this.dead) return;
    const vmas = this.list.length;
    const resident = this.pt.present;
    for (const v of this.list) this.dropPages(v.start, v.end);
    this.list.length = 0;
    this.cached = undefined;
    this.mapped = 0;
    this.dead = true;
    if (this.tracer.enabled) {
      this.tracer.emit("mm.exit", { pid: this.pid, vmas, residentPages: resident, pinnedPages: this.pinned });
    }
  }

  /**
   * Page-table leaves and entries that unmaps have examined in this address space's lifetime: a diagnostic, so that a
   * test can check an unmap costs what was touched, not what was mapped (a clock would say the same, less surely).
   */
  get pageTableEntriesExamined(): number {
    return this.pt.examined;
  }

  stats(): AddressSpaceStats {
    return {
      vmas: this.list.length,
      mappedBytes: this.mapped,
      residentPages: this.pt.present,
      lockedVm: this.locked,
      pinnedPages: this.pinned,
    };
  }

  /** Resident pages in [addr, addr+length) (mincore-like; for tests and the dashboard). */
  residentIn(addr: Hva, length: number): number {
    if (length <= 0) return 0;
    return this.pt.countRange(Math.floor(addr / PAGE_SIZE), Math.ceil((addr + length) / PAGE_SIZE));
  }

  // ---- internals ---------------------------------------------------------------------------------------------------

  /** Index of the first VMA whose end is above `addr` (the one containing it, if any). */
  private indexAfter(addr: number): number {
    let lo = 0;
    let hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.list[mid]!.end <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private lookup(addr: number): Vma | undefined {
    const c = this.cached;
    if (c !== undefined && addr >= c.start && addr < c.end) return c;
    const v = this.list[this.indexAfter(addr)];
    // Written so that a NaN address matches nothing.
    if (v === undefined || !(v.start <= addr)) return undefined;
    this.cached = v;
    return v;
  }

  /** The VMA at `addr` if it allows the access, else EFAULT (GUP's check_vma_flags without FOLL_FORCE). */
  private accessible(addr: Hva, write: boolean, op: string): Vma {
    const v = this.lookup(addr);
    if (v === undefined) {
      throw new KernelError(
        Errno.EFAULT,
        this.dead
          ? `process ${this.pid} has exited: ${op} at ${hex(addr)} finds no mapping`
          : `process ${this.pid}: ${op} at ${hex(addr)}: no mapping contains that address`,
      );
    }
    if ((v.prot & (write ? PROT_WRITE : PROT_READ)) === 0) {
      throw new KernelError(
        Errno.EFAULT,
        `process ${this.pid}: ${op} at ${hex(addr)}: mapping ${hex(v.start)}-${hex(v.end)} is ${protString(v.prot)} ` +
          `and does not allow ${write ? "writing" : "reading"}`,
      );
    }
    return v;
  }

  /** Fills the entry for `vpn` (not present, inside `vma`) and returns its frame. */
  private populate(vpn: number, vma: Vma, write: boolean): number {
    let f: number;
    if (vma.basePfn === undefined) {
      try {
        f = this.physmem.allocFrame(this.owner);
      } catch (e) {
        if (isKernelError(e) && e.errno === Errno.ENOMEM) {
          throw new KernelError(
            Errno.ENOMEM,
            `process ${this.pid}: page fault at ${hex(vpn * PAGE_SIZE)} needs a frame: ${e.message}`,
          );
        }
        throw e;
      }
    } else {
      f = vma.basePfn + (vpn - vma.start / PAGE_SIZE);
      // A memfd truncated or a buffer released under the mapping: Linux raises SIGBUS; GUP returns EFAULT.
      if (!this.physmem.isAllocated(f as Pfn)) {
        throw new KernelError(
          Errno.EFAULT,
          `process ${this.pid}: fault at ${hex(vpn * PAGE_SIZE)}: frame ${hex(f)} backing '${vma.name ?? "?"}' ` +
            "is no longer allocated",
        );
      }
      this.physmem.get(f as Pfn);
    }
    this.pt.set(vpn, f);
    if (this.tracer.enabled) this.tracer.emit("mm.fault", { pid: this.pid, addr: vpn * PAGE_SIZE, write, pfn: f });
    return f;
  }

  /** Drops the page-table entries in [start, end); returns how many were present. */
  private dropPages(start: number, end: number): number {
    return this.pt.clearRange(start / PAGE_SIZE, end / PAGE_SIZE, this.releaseFrame);
  }

  /** Splits the VMA strictly containing `addr` (page-aligned) in two. */
  private splitAt(addr: number): void {
    const i = this.indexAfter(addr);
    const v = this.list[i];
    if (v === undefined || v.start >= addr) return;
    this.list.splice(i, 1, sliceVma(v, v.start, addr), sliceVma(v, addr, v.end));
    this.cached = undefined;
  }

  /** Unmaps [start, end) (page-aligned); returns the resident pages dropped. */
  private removeRange(start: number, end: number): number {
    this.splitAt(start);
    this.splitAt(end);
    const i = this.indexAfter(start);
    let j = i;
    let pages = 0;
    while (j < this.list.length && this.list[j]!.start < end) {
      const v = this.list[j]!;
      pages += this.dropPages(v.start, v.end);
      this.mapped -= v.end - v.start;
      j++;
    }
    if (j === i + 1) removeAt(this.list, i);
    else if (j > i) this.list.splice(i, j - i);
    this.cached = undefined;
    return pages;
  }

  /** Top-down below mmapBase, then bottom-up above it; undefined if no gap of `len` bytes exists. */
  private findFree(len: number): number | undefined {
    let hi = this.mmapBase;
    for (let j = this.list.length - 1; j >= 0; j--) {
      const v = this.list[j]!;
      if (v.start >= hi) continue;
      if (hi - v.end >= len) return hi - len;
      hi = v.start;
    }
    if (hi - MMAP_MIN_ADDR >= len) return hi - len;
    let lo = this.mmapBase;
    for (const v of this.list) {
      if (v.end <= lo) continue;
      if (v.start - lo >= len) return lo;
      lo = Math.max(lo, v.end);
    }
    return TASK_SIZE - lo >= len ? lo : undefined;
  }

  private checkProt(prot: number, op: string): void {
    if (!Number.isInteger(prot) || prot < 0 || (prot & ~PROT_ALL) !== 0) {
      throw new KernelError(Errno.EINVAL, `process ${this.pid}: ${op} prot ${hex(prot)} has unknown bits`);
    }
  }

  private checkCount(n: number, op: string): void {
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new KernelError(Errno.EINVAL, `process ${this.pid}: ${op} of ${n} pages: expected a count >= 0`);
    }
  }

  /** The run of frames an fd mapping names must exist (its first and last frame are checked; faults check each). */
  /** A load or store reached a frame whose external memory is gone (Linux would raise SIGBUS; here EFAULT). */
  private memoryGone(a: number): KernelError {
    return new KernelError(
      Errno.EFAULT,
      `process ${this.pid}: access at ${hex(a)} reached external memory that is gone (its file shrank or failed)`,
    );
  }

  private checkExternal(basePfn: Pfn, pages: number, label: string): void {
    if (
      !Number.isSafeInteger(basePfn) ||
      !this.physmem.isAllocated(basePfn) ||
      !this.physmem.isAllocated((basePfn + pages - 1) as Pfn)
    ) {
      throw new KernelError(
        Errno.EINVAL,
        `process ${this.pid}: mmap of '${label}': frames ${hex(basePfn)}-${hex(basePfn + pages - 1)} ` +
          "are not allocated host memory (register the buffer first)",
      );
    }
  }
}
