/**
 * Open files and file-descriptor tables: the part of Linux's VFS a VMM touches when it talks to VFIO.
 *
 * A driver (vfio's container, group and device files; eventfd) implements `FileOps`; `FdTable` maps small integers to
 * open file descriptions with reference counts, so that a file handed to another holder (a group holding its
 * container, an fd passed over a socket) stays open until its last holder lets go, and `release` runs exactly once.
 *
 * ioctl arguments follow Linux: either an integer (CHECK_EXTENSION, SET_IOMMU) or a pointer, modelled as a byte buffer
 * that holds the struct in Linux's layout and that the driver may write back into (argsz/flags first, little-endian).
 *
 * Not modelled: permissions, O_CLOEXEC across exec, file locks, poll/select (eventfd offers a listener instead).
 */
import { defineTraceEvents, Errno, KernelError, type Pfn } from "../core/index.ts";
import type { AddressSpace } from "./mm.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "fd.open": { pid: number; fd: number; kind: string; path: string };
    "fd.close": { pid: number; fd: number; kind: string; released: boolean };
  }
}
defineTraceEvents("host", {
  "fd.open": "pid {pid}: fd {fd} = {kind} ({path})",
  "fd.close": "pid {pid}: close fd {fd} ({kind}), released={released}",
});

/** An ioctl argument: an integer, or the bytes of the struct the pointer points at (the driver may write back). */
export type IoctlArg = number | Uint8Array;

/** What a file's mmap hands the address space: a run of host frames (device memory or RAM) to map. */
export interface FileMapping {
  readonly basePfn: Pfn;
  readonly label: string;
}

/**
 * Who is opening a device node: drivers keep it to resolve fds passed in ioctls (SET_CONTAINER's container fd,
 * SET_IRQS's eventfds) and to find the address space MAP_DMA's vaddr refers to.
 */
export interface OpenContext {
  readonly pid: number;
  readonly flags: number;
  /** The opener's address space. */
  readonly mm: AddressSpace;
  /** The open file behind one of the opener's fds; EBADF if none. */
  resolveFile(fd: number): OpenFile;
  /** Installs a new file in the opener's fd table and returns its fd (GET_DEVICE_FD creates files this way). */
  installFile(ops: FileOps, path: string): number;
}

/** file_operations: each method may throw KernelError; absent methods fail as Linux's defaults do. */
export interface FileOps {
  /** A short name of the file's kind ("vfio-container", "vfio-group", "vfio-device", "eventfd"). */
  readonly kind: string;
  ioctl?(request: number, arg: IoctlArg): number;
  /** pread: returns bytes read. */
  read?(buf: Uint8Array, offset: number): number;
  /** pwrite: returns bytes written. */
  write?(buf: Uint8Array, offset: number): number;
  /** Validates and returns the frames backing [offset, offset+length) of the file. */
  mmap?(offset: number, length: number, prot: number): FileMapping;
  /** Called once, when the last reference to the open file description goes. */
  release?(): void;
}

/** An open file description (struct file): shared by every fd and holder that refers to it. */
export class OpenFile {
  private refs = 1;
  constructor(
    readonly ops: FileOps,
    readonly path: string,
  ) {}

  get kind(): string {
    return this.ops.kind;
  }

  /** Takes a reference (fget). */
  hold(): this {
    if (this.refs <= 0) throw new Error(`hold() on released file ${this.path}`);
    this.refs++;
    return this;
  }

  /** Drops a reference (fput); runs release on the last. Returns true if released. */
  drop(): boolean {
    if (this.refs <= 0) throw new Error(`drop() on released file ${this.path}`);
    this.refs--;
    if (this.refs === 0) {
      this.ops.release?.();
      return true;
    }
    return false;
  }

  get released(): boolean {
    return this.refs === 0;
  }
}

export const DEFAULT_RLIMIT_NOFILE = 1024;

/** A process's descriptor table: lowest free number first, as POSIX requires. */
export class FdTable {
  private readonly slots: (OpenFile | undefined)[] = [];
  constructor(private limit = DEFAULT_RLIMIT_NOFILE) {}

  /** Installs `file` (taking over the caller's reference) at the lowest free fd >= 3 (0-2 are stdio). */
  install(file: OpenFile): number {
    let fd = 3;
    while (fd < this.slots.length && this.slots[fd] !== undefined) fd++;
    if (fd >= this.limit) {
      file.drop();
      throw new KernelError(Errno.EMFILE, `too many open files: RLIMIT_NOFILE is ${this.limit}`);
    }
    this.slots[fd] = file;
    return fd;
  }

  /** The open file at `fd`; EBADF if none. */
  get(fd: number): OpenFile {
    const f = Number.isInteger(fd) && fd >= 0 ? this.slots[fd] : undefined;
    if (!f) throw new KernelError(Errno.EBADF, `fd ${fd} is not an open file descriptor`);
    return f;
  }

  has(fd: number): boolean {
    return Number.isInteger(fd) && fd >= 0 && this.slots[fd] !== undefined;
  }

  /** Removes `fd` and drops its reference. Returns the file and whether it was released. */
  close(fd: number): { file: OpenFile; released: boolean } {
    const file = this.get(fd);
    this.slots[fd] = undefined;
    return { file, released: file.drop() };
  }

  /** dup(2): a new fd sharing the same open file description. */
  dup(fd: number): number {
    return this.install(this.get(fd).hold());
  }

  /** Open fds in ascending order. */
  list(): { fd: number; file: OpenFile }[] {
    const out: { fd: number; file: OpenFile }[] = [];
    this.slots.forEach((file, fd) => {
      if (file) out.push({ fd, file });
    });
    return out;
  }

  setLimit(n: number): void {
    this.limit = n;
  }
}
