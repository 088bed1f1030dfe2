/**
 * One connection's DMA windows (vfio-user DMA_MAP / DMA_UNMAP), and how they reach the device through the host model.
 *
 * A window that arrives with an fd (guest RAM from a memory-backend-memfd or -file) is made real memory of the model:
 * 1. the client's fd is checked (a regular file, readable, holding offset + size bytes) and kept; it is mmap'd
 *    (MAP_SHARED, the whole window at once: address space only, a 64 GiB guest costs no memory until touched) on the
 *    window's first access, and closed then (`WindowMemory`). A window mapped and unmapped untouched (a VMM remapping
 *    RAM as the guest reprograms a BAR) costs no mmap: in a process the size of Node's, mmap + munmap were a third of
 *    a DMA_MAP + DMA_UNMAP pair (BENCHMARKS.md). At most `LAZY_FDS` windows of the whole process wait so (256, or
 *    an eighth of RLIMIT_NOFILE if that is less), each holding the fd it came with, so that clients cannot fill the
 *    fd table of a daemon serving many devices; beyond it windows are mapped at once (an mmap holds no fd);
 * 2. `physmem.registerExternal(backing)`: one record, O(1); frames materialise when they are pinned or reached, and
 *    a memory backing makes its zero-copy views 2 MiB at a time on first use (no view of more than 2 MiB is made:
 *    koffi aborts the process for one above 4 GiB);
 * 3. `mm.mmap` with external backing: the frames appear at an HVA of the connection's host Process;
 * 4. VFIO_IOMMU_MAP_DMA on the connection's type1 container: iova = the guest address, vaddr = that HVA.
 * From then on the device's vfio_pin_pages / vfio_dma_rw, the vendor driver's dma_map_page, the system IOMMU and the
 * GPU engines all touch the guest's real RAM, exactly as for an in-process VMM. Unmapping runs the steps backwards,
 * UNMAP_DMA first so that type1 calls the device's dma_unmap and the device unpins.
 *
 * A window without an fd (QEMU's ROM/BIOS) is only recorded: the device reaches it through `remoteAt` and the
 * connection's DMA_READ/DMA_WRITE messages (server.ts interposes on the device's vfio_dma_rw); pinning it is
 * impossible (no host frames), and type1 answers such pins as for an unmapped IOVA.
 *
 * Checks (the order libvfio-user uses, errno as it answers): unknown flags, size 0, unaligned addr/size/offset, an
 * address range past 2^53 EINVAL; overlap with a live window EEXIST; more than max_dma_maps windows ENOSPC; an fd
 * shorter than offset + size EINVAL (a mapping past the end of a file would SIGBUS this process on first touch). So
 * that a window mapped lazily cannot fail where its mmap would have, the fd must also be a regular file (memfd,
 * tmpfs, hugetlbfs and disk files all are; EINVAL otherwise) opened for reading (O_WRONLY: EACCES; O_PATH: EBADF,
 * what mmap answers), and a writable window needs a writable fd (EACCES) and a memfd not sealed against writes
 * (EPERM); read-only windows of such fds are mapped private. A lazy mmap that fails all the same (ENOMEM: no address
 * space left) is traced and every access to the window is a DMA fault. UNMAP must name a live window exactly (ENOENT
 * otherwise).
 *
 * Shrinking: a client that truncates the file behind a window would make the next load or store of it a SIGBUS,
 * which kills the server. So the fd is sealed against shrinking (F_SEAL_SHRINK) when it allows it (memfds made with
 * sealing: QEMU's memory-backend-memfd seals them itself), and the window is then shared memory, zero-copy. A window
 * that cannot be sealed (a regular file, hugetlbfs, a memfd without MFD_ALLOW_SEALING: QEMU's memory-backend-file
 * share=on) is still served, but "guarded": mapped, never touched directly, every access a process_vm_readv/writev on
 * our own pid, which the kernel answers with EFAULT where a direct access would SIGBUS. A shrunk file then becomes a
 * DMA fault ("memory-gone") or an EFAULT to the caller, and the server lives. Guarded copies cost a syscall each
 * (BENCHMARKS.md).
 *
 * Safety invariant: the real mapping stays until physmem reports the external region gone (no page table or pin
 * references left). UNMAP of a window whose pins the device keeps through every dma_unmap fails with type1's EBUSY and
 * the window stays. At disconnect the teardown goes on regardless: a window whose frames are still referenced is kept
 * mapped as a "zombie" and retried after the connection's process exits (type1's release drops its pins); if
 * references outlive even that, the memory is deliberately leaked, since unmapping it would let the model fault this
 * process.
 */
import {
  defineTraceEvents,
  Errno,
  type Hva,
  insertAt,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  removeAt,
  type Tracer,
} from "../core/index.ts";
import { type ExternalBacking, type PhysicalMemory, PROT_READ, PROT_WRITE, type Process } from "../host/index.ts";
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VfioIommuType1DmaMap,
  VfioIommuType1DmaUnmap,
} from "../vfio/index.ts";
import {
  addSeals,
  closeFd,
  F_SEAL_FUTURE_WRITE,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  fileFlags,
  fileStat,
  getSeals,
  guardedRead,
  guardedWrite,
  MAP_PRIVATE,
  MAP_SHARED,
  type Mapping,
  mmapFd,
  O_ACCMODE,
  O_PATH,
  O_RDONLY,
  O_WRONLY,
  PROT_READ as OS_PROT_READ,
  PROT_WRITE as OS_PROT_WRITE,
  openFileLimit,
  S_IFMT,
  S_IFREG,
} from "./native.ts";
import { VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE } from "./protocol.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfiouser.dma.map": { device: string; iova: number; size: number; prot: string; backing: string; hva: number };
    "vfiouser.dma.unmap": { device: string; iova: number; size: number; backing: string };
    "vfiouser.dma.seal": { device: string; iova: number; sealed: boolean; reason: string };
    "vfiouser.dma.zombie": { device: string; iova: number; size: number; released: boolean };
    "vfiouser.dma.mmap": { device: string; iova: number; size: number; errno: number };
  }
}
defineTraceEvents("vfio-user", {
  "vfiouser.dma.map": "{device}: DMA window {iova}+{size} ({prot}) mapped, {backing}, at hva {hva}",
  "vfiouser.dma.unmap": "{device}: DMA window {iova}+{size} ({backing}) unmapped",
  "vfiouser.dma.seal": "{device}: DMA window {iova}: shrink seal {sealed} ({reason})",
  "vfiouser.dma.zombie":
    "{device}: DMA window {iova}+{size} still pinned after unmap; memory kept mapped (released later: {released})",
  "vfiouser.dma.mmap": "{device}: DMA window {iova}+{size} mapped into the server on first access (errno {errno})",
});

const TWO_53 = 2 ** 53;
const ENOENT_MSG = "no DMA window";
/** Windows of this process that may wait for their first access unmapped, each keeping its fd open. */
export const LAZY_FDS = Math.min(256, Math.floor(openFileLimit() / 8));
/** How many wait now, over every connection. */
let lazyWindows = 0;

export interface DmaWindow {
  readonly iova: number;
  readonly size: number;
  /** VFIO_USER_F_DMA_REGION_READ | WRITE. */
  readonly prot: number;
  /** "fd": real memory mapped and in the container; "remote": reached by DMA_READ/DMA_WRITE. */
  readonly backing: "fd" | "remote";
  /** fd windows that could not be sealed against shrinking: reached only by guarded copies (see the module doc). */
  readonly guarded: boolean;
  /** fd windows: where the frames sit in the connection's address space, and the first frame. */
  readonly hva: Hva | undefined;
  readonly basePfn: Pfn | undefined;
}

interface Window extends DmaWindow {
  readonly memory: WindowMemory | undefined;
}

export interface DmaTableOptions {
  /** The connection's host process: its address space holds the windows; `containerFd` is its type1 container. */
  readonly proc: Process;
  readonly containerFd: number;
  readonly physmem: PhysicalMemory;
  readonly maxWindows: number;
  readonly tracer: Tracer;
  /** Names the device in messages and trace events. */
  readonly device: string;
}

export interface DmaMapRequest {
  readonly iova: number;
  readonly size: number;
  /** Offset of the window in the fd. */
  readonly offset: number;
  readonly prot: number;
}

function protName(prot: number): string {
  return `${(prot & VFIO_USER_F_DMA_REGION_READ) !== 0 ? "r" : "-"}${(prot & VFIO_USER_F_DMA_REGION_WRITE) !== 0 ? "w" : "-"}`;
}

export class DmaTable {
  private readonly opts: DmaTableOptions;
  /** Sorted by iova, non-overlapping. */
  private readonly list: Window[] = [];
  private readonly zombies: { window: Window }[] = [];
  private released = false;
  /** The ioctl arguments, encoded in place for each call (this process's "user memory" for them). */
  private readonly mapArg = new Uint8Array(VfioIommuType1DmaMap.sizeof);
  private readonly unmapArg = new Uint8Array(VfioIommuType1DmaUnmap.sizeof);

  constructor(opts: DmaTableOptions) {
    this.opts = opts;
  }

  get size(): number {
    return this.list.length;
  }

  /** Live windows, by iova. */
  windows(): readonly DmaWindow[] {
    return this.list.map(publicView);
  }

  /** Windows of every connection of this process waiting for their first access (at most LAZY_FDS). */
  static get waitingWindows(): number {
    return lazyWindows;
  }

  /** Windows still waiting for their first access (fd kept, nothing mmap'd yet). */
  get unmappedCount(): number {
    let n = 0;
    for (const w of this.list) if (w.memory !== undefined && !w.memory.mapped) n++;
    return n;
  }

  /** Windows kept mapped because their frames were still pinned when unmapped. */
  get zombieCount(): number {
    return this.zombies.length;
  }

  /**
   * DMA_MAP. Takes ownership of `fd`: closed at once if the map fails, else kept by the window until its memory is
   * mapped (first access) or the window goes. Returns the window.
   */
  map(req: DmaMapRequest, fd: number | undefined): DmaWindow {
    let kept = false;
    try {
      const w = this.mapInner(req, fd);
      kept = w.memory !== undefined;
      return w;
    } finally {
      if (fd !== undefined && !kept) closeFd(fd);
    }
  }

  private mapInner(req: DmaMapRequest, fd: number | undefined): Window {
    const { iova, size, offset, prot } = req;
    const dev = this.opts.device;
    if (this.released) throw new KernelError(Errno.ENODEV, `${dev}: the connection is gone`);
    if ((prot & ~(VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE)) !== 0) {
      throw new KernelError(Errno.EINVAL, `DMA_MAP on ${dev}: unknown flags 0x${prot.toString(16)}`);
    }
    if (!Number.isSafeInteger(size) || size <= 0 || !Number.isSafeInteger(iova) || iova + size > TWO_53) {
      throw new KernelError(
        Errno.EINVAL,
        `DMA_MAP on ${dev}: window ${iova}+${size} is empty or reaches past 2^53, which this server cannot address`,
      );
    }
    if (iova % PAGE_SIZE !== 0 || size % PAGE_SIZE !== 0 || offset % PAGE_SIZE !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `DMA_MAP on ${dev}: addr 0x${iova.toString(16)}, size 0x${size.toString(16)} and offset 0x${offset.toString(16)} must be multiples of 4096`,
      );
    }
    const at = this.insertionIndex(iova);
    const prev = at > 0 ? this.list[at - 1] : undefined; // list[-1] would be a by-name lookup
    const next = this.list[at];
    if ((prev !== undefined && prev.iova + prev.size > iova) || (next !== undefined && next.iova < iova + size)) {
      const o = prev !== undefined && prev.iova + prev.size > iova ? prev : next!;
      throw new KernelError(
        Errno.EEXIST,
        `DMA_MAP on ${dev}: window 0x${iova.toString(16)}+0x${size.toString(16)} overlaps the live window 0x${o.iova.toString(16)}+0x${o.size.toString(16)}`,
      );
    }
    if (this.list.length >= this.opts.maxWindows) {
      throw new KernelError(
        Errno.ENOSPC,
        `DMA_MAP on ${dev}: ${this.list.length} windows are live, the negotiated max_dma_maps is ${this.opts.maxWindows}`,
      );
    }
    let w: Window;
    if (fd === undefined) {
      w = {
        iova,
        size,
        prot,
        backing: "remote",
        guarded: false,
        hva: undefined,
        basePfn: undefined,
        memory: undefined,
      };
    } else {
      w = this.mapFd(iova, size, offset, prot, fd);
    }
    insertAt(this.list, at, w);
    const t = this.opts.tracer;
    if (t.enabled) {
      t.emit("vfiouser.dma.map", {
        device: dev,
        iova,
        size,
        prot: protName(prot),
        backing: w.backing,
        hva: w.hva ?? 0,
      });
    }
    return w;
  }

  private mapFd(iova: number, size: number, offset: number, prot: number, fd: number): Window {
    const { proc, physmem, device: dev, tracer } = this.opts;
    const st = fileStat(fd);
    if (typeof st === "number")
      throw new KernelError(-st as Errno, `DMA_MAP on ${dev}: fstat of the window's fd failed`);
    if ((st.mode & S_IFMT) !== S_IFREG) {
      throw new KernelError(
        Errno.EINVAL,
        `DMA_MAP on ${dev}: the window's fd is not a regular file (mode 0o${st.mode.toString(8)}); guest RAM comes from a memfd or a file`,
      );
    }
    if (st.size < offset + size) {
      throw new KernelError(
        Errno.EINVAL,
        `DMA_MAP on ${dev}: the fd holds ${st.size} bytes but the window needs offset 0x${offset.toString(16)} + size 0x${size.toString(16)}`,
      );
    }
    const fl = fileFlags(fd);
    if (fl < 0 || (fl & O_PATH) !== 0 || (fl & O_ACCMODE) === O_WRONLY) {
      const errno = fl < 0 ? (-fl as Errno) : (fl & O_PATH) !== 0 ? Errno.EBADF : Errno.EACCES;
      throw new KernelError(
        errno,
        `DMA_MAP on ${dev}: the window's fd cannot be mapped: it was opened ${fl < 0 ? "badly" : (fl & O_PATH) !== 0 ? "O_PATH" : "write-only"}; open guest RAM for reading`,
      );
    }
    const seals = getSeals(fd);
    let sealed = seals >= 0 && (seals & F_SEAL_SHRINK) !== 0;
    let reason = sealed ? "already sealed: shared mapping" : "";
    if (!sealed) {
      const r = seals >= 0 ? addSeals(fd, F_SEAL_SHRINK) : seals;
      sealed = r === 0;
      reason = sealed
        ? "sealed now: shared mapping"
        : `cannot seal (errno ${-r}): every access is a guarded copy, a shrunk file is a DMA fault`;
    }
    if (tracer.enabled) tracer.emit("vfiouser.dma.seal", { device: dev, iova, sealed, reason });

    const writable = (prot & VFIO_USER_F_DMA_REGION_WRITE) !== 0;
    const readOnly = (fl & O_ACCMODE) === O_RDONLY;
    if (readOnly && writable) {
      throw new KernelError(
        Errno.EACCES,
        `DMA_MAP on ${dev}: the window is writable but its fd was opened read-only; the device's writes would be lost`,
      );
    }
    // A memfd sealed against writes refuses shared writable mappings (EPERM): a read-only window maps it private.
    const writeSealed = seals >= 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) !== 0;
    if (writeSealed && writable) {
      throw new KernelError(
        Errno.EPERM,
        `DMA_MAP on ${dev}: the window is writable but its memfd is sealed against writes (F_SEAL_WRITE)`,
      );
    }
    const memory = new WindowMemory(fd, size, offset, readOnly || writeSealed, sealed, (errno) => {
      lazyWindows--;
      if (tracer.enabled) tracer.emit("vfiouser.dma.mmap", { device: dev, iova, size, errno });
    });
    lazyWindows++;
    if (lazyWindows > LAZY_FDS) memory.map();
    const label = `vfio-user:${dev}@0x${iova.toString(16)}`;
    let basePfn: Pfn | undefined;
    let hva: Hva | undefined;
    try {
      basePfn = physmem.registerExternal(memory, label, proc.pid);
      const mprot = ((prot & VFIO_USER_F_DMA_REGION_READ) !== 0 ? PROT_READ : 0) | (writable ? PROT_WRITE : 0);
      hva = proc.mm.mmap(size, mprot === 0 ? PROT_READ : mprot, {
        backing: { kind: "external", basePfn, label },
        name: label,
      });
      const flags =
        ((prot & VFIO_USER_F_DMA_REGION_READ) !== 0 ? VFIO_DMA_MAP_FLAG_READ : 0) |
        (writable ? VFIO_DMA_MAP_FLAG_WRITE : 0);
      const arg = VfioIommuType1DmaMap.encode(
        { argsz: VfioIommuType1DmaMap.sizeof, flags, vaddr: hva, iova, size },
        this.mapArg,
      );
      proc.ioctl(this.opts.containerFd, VFIO_IOMMU_MAP_DMA, arg);
    } catch (e) {
      if (hva !== undefined) proc.mm.munmap(hva, size);
      if (basePfn !== undefined) physmem.releaseExternal(basePfn);
      // Frames the model still references keep the memory (leaked; nothing reaches it through the window again).
      this.releaseMemory(memory, basePfn !== undefined && !this.externalGone(basePfn));
      throw e;
    }
    return { iova, size, prot, backing: "fd", guarded: !sealed, hva, basePfn, memory };
  }

  /**
   * DMA_UNMAP of exactly one live window. If type1 refuses (EBUSY: the device kept its pins through every dma_unmap
   * notification) the window stays live, as the mapping stays in type1.
   */
  unmap(iova: number, size: number): DmaWindow {
    const i = this.indexOf(iova);
    const w = i >= 0 ? this.list[i] : undefined;
    if (w === undefined || w.size !== size) {
      throw new KernelError(
        Errno.ENOENT,
        `DMA_UNMAP on ${this.opts.device}: ${ENOENT_MSG} 0x${iova.toString(16)}+0x${size.toString(16)} is mapped` +
          (w !== undefined ? ` (the window at that address is 0x${w.size.toString(16)} bytes)` : ""),
      );
    }
    this.teardown(w, false);
    removeAt(this.list, i);
    return w;
  }

  /** DMA_UNMAP with UNMAP_ALL: every window (those type1 refuses stay). Returns how many went. */
  unmapAll(force = false): number {
    let firstError: unknown;
    let n = 0;
    for (const w of [...this.list]) {
      try {
        this.teardown(w, force);
        this.list.splice(this.list.indexOf(w), 1);
        n++;
      } catch (e) {
        if (force) this.list.splice(this.list.indexOf(w), 1);
        firstError ??= e;
      }
    }
    if (firstError !== undefined) throw firstError;
    return n;
  }

  /** The remote (fd-less) window holding all of [iova, iova+len), if any. */
  remoteAt(iova: number, len: number): DmaWindow | undefined {
    const i = this.insertionIndex(iova + 1) - 1;
    const w = this.list[i];
    if (w === undefined || w.backing !== "remote") return undefined;
    if (iova < w.iova || iova + len > w.iova + w.size) return undefined;
    return w;
  }

  /**
   * The connection is going: every window torn down even if type1 refuses some (the first refusal is thrown after
   * everything was done); zombies retried. Idempotent.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    try {
      this.unmapAll(true);
    } finally {
      this.retryZombies(true);
    }
  }

  /**
   * Undoes a window: UNMAP_DMA (type1 calls the device's dma_unmap), then the VMA, the external frames and the real
   * mapping (or a zombie). Without `force`, a failing UNMAP_DMA changes nothing and is thrown; with it (the client is
   * gone) the rest goes on, type1's own release at process exit dropping what it kept.
   */
  private teardown(w: Window, force: boolean): void {
    const { proc, physmem, tracer, device } = this.opts;
    if (w.backing === "remote") {
      if (tracer.enabled) tracer.emit("vfiouser.dma.unmap", { device, iova: w.iova, size: w.size, backing: w.backing });
      return;
    }
    let err: unknown;
    try {
      const arg = VfioIommuType1DmaUnmap.encode(
        { argsz: VfioIommuType1DmaUnmap.sizeof, flags: 0, iova: w.iova, size: w.size },
        this.unmapArg,
      );
      if (proc.isAlive) proc.ioctl(this.opts.containerFd, VFIO_IOMMU_UNMAP_DMA, arg);
    } catch (e) {
      if (!force) throw e;
      err = e;
    }
    if (tracer.enabled) tracer.emit("vfiouser.dma.unmap", { device, iova: w.iova, size: w.size, backing: w.backing });
    if (proc.isAlive && !proc.mm.exited) proc.mm.munmap(w.hva!, w.size);
    physmem.releaseExternal(w.basePfn!);
    if (this.externalGone(w.basePfn!)) this.releaseMemory(w.memory!);
    else {
      this.zombies.push({ window: w });
      if (tracer.enabled) tracer.emit("vfiouser.dma.zombie", { device, iova: w.iova, size: w.size, released: false });
    }
    if (err !== undefined) throw err;
  }

  /** Unmaps the real memory of zombies whose frames are free now. */
  retryZombies(final = false): void {
    const { tracer, device } = this.opts;
    for (let i = this.zombies.length - 1; i >= 0; i--) {
      const z = this.zombies[i]!;
      if (this.externalGone(z.window.basePfn!)) {
        this.releaseMemory(z.window.memory!);
        this.zombies.splice(i, 1);
        if (tracer.enabled) {
          tracer.emit("vfiouser.dma.zombie", { device, iova: z.window.iova, size: z.window.size, released: true });
        }
      } else if (final && tracer.enabled) {
        tracer.emit("vfiouser.dma.zombie", { device, iova: z.window.iova, size: z.window.size, released: false });
      }
    }
  }

  private releaseMemory(m: WindowMemory, leak = false): void {
    if (!m.mapped && !m.released) lazyWindows--;
    m.release(leak);
  }

  private externalGone(base: Pfn): boolean {
    return !this.opts.physmem.externalLive(base);
  }

  /** First index whose iova is >= `iova`. */
  private insertionIndex(iova: number): number {
    let lo = 0;
    let hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.list[mid]!.iova < iova) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private indexOf(iova: number): number {
    const i = this.insertionIndex(iova);
    return this.list[i]?.iova === iova ? i : -1;
  }
}

function publicView(w: Window): DmaWindow {
  return {
    iova: w.iova,
    size: w.size,
    prot: w.prot,
    backing: w.backing,
    guarded: w.guarded,
    hva: w.hva,
    basePfn: w.basePfn,
  };
}

/**
 * The real memory of an fd window, and the window's physmem backing: the client's fd until the first access, then an
 * mmap of [offset, offset + size) of it (read-write and shared; private for a read-only fd, so that no model write can
 * fault this process) and the fd closed. A failed mmap is kept (its errno): every later access faults, and nothing is
 * retried.
 *
 * A sealed window (`memory`) gives zero-copy views of the mapping, which physmem makes 2 MiB at a time as frames are
 * used. A window the client could still shrink is never touched by this process directly: every access is a
 * process_vm_readv/writev on our own pid (`guardedRead/Write`), which returns EFAULT where a load or store would raise
 * SIGBUS, so the model sees a DMA fault and the server lives.
 */
class WindowMemory implements ExternalBacking {
  private fd: number;
  private mapping: Mapping | undefined;
  private errno = 0;
  private done = false;
  readonly bytes: number;

  /** `onMapped(errno)` is told once, when the fd is turned into a mapping (errno 0) or the mmap failed. */
  constructor(
    fd: number,
    size: number,
    private readonly offset: number,
    private readonly readOnly: boolean,
    /** Sealed against shrinking: plain views; otherwise every access is a guarded copy. */
    readonly memory: boolean,
    private readonly onMapped: (errno: number) => void,
  ) {
    this.fd = fd;
    this.bytes = size;
  }

  /** Whether the fd was given up (mapped, or the mmap failed). */
  get mapped(): boolean {
    return this.fd < 0;
  }

  get released(): boolean {
    return this.done;
  }

  /** The mapping, made now if it was not; or a positive errno. */
  map(): Mapping | number {
    if (this.mapping !== undefined) return this.mapping;
    if (this.fd < 0) return this.errno || Errno.EFAULT;
    const flags = this.readOnly ? MAP_PRIVATE : MAP_SHARED;
    const m = mmapFd(this.fd, this.bytes, OS_PROT_READ | OS_PROT_WRITE, flags, this.offset);
    closeFd(this.fd);
    this.fd = -1;
    if (typeof m === "number") this.errno = -m;
    else this.mapping = m;
    this.onMapped(this.errno);
    return this.mapping ?? this.errno;
  }

  view(offset: number, len: number): Uint8Array | undefined {
    if (!this.memory) return undefined;
    const m = this.map();
    return typeof m === "number" ? undefined : m.view(offset, len);
  }

  read(offset: number, dst: Uint8Array, off: number, len: number): number {
    const m = this.map();
    if (typeof m === "number") return m;
    if (!this.memory) return guardedRead(m.address + offset, dst, off, len);
    dst.set(m.view(offset, len), off);
    return 0;
  }

  write(offset: number, src: Uint8Array, off: number, len: number): number {
    const m = this.map();
    if (typeof m === "number") return m;
    if (!this.memory) return guardedWrite(m.address + offset, src, off, len);
    m.view(offset, len).set(src.subarray(off, off + len));
    return 0;
  }

  /** Gives everything back: the mapping or the fd. `leak` keeps the mapping (the model may still reach it). */
  release(leak: boolean): void {
    if (this.done) return;
    this.done = true;
    if (this.fd >= 0) {
      closeFd(this.fd);
      this.fd = -1;
    }
    if (!leak) this.mapping?.unmap();
  }
}
