/**
 * A simulated host process: an address space, a file-descriptor table, credentials and limits. This is the whole
 * world a VMM sees: it opens /dev nodes, issues ioctls with Linux's request numbers and struct bytes, preads and
 * pwrites device regions, mmaps them, and creates eventfds. Errors are KernelErrors with Linux's errno; `sys*`
 * variants return -errno instead of throwing, as a C program sees the syscall.
 */

import type { Tracer } from "../core/index.ts";
import { defineTraceEvents, Errno, type Hva, isKernelError, KernelError } from "../core/index.ts";
import type { Devfs } from "./devfs.ts";
import { EventFd } from "./eventfd.ts";
import { FdTable, type FileOps, type IoctlArg, OpenFile } from "./files.ts";
import { type AddressSpace, PROT_READ, PROT_WRITE } from "./mm.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "proc.spawn": { pid: number; comm: string };
    "proc.exit": { pid: number; comm: string; fdsClosed: number };
  }
}
defineTraceEvents("host", {
  "proc.spawn": "process {pid} ({comm}) started",
  "proc.exit": "process {pid} ({comm}) exited, {fdsClosed} fd(s) closed",
});

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

export interface ProcessOptions {
  readonly pid: number;
  readonly comm: string;
  readonly mm: AddressSpace;
  readonly devfs: Devfs;
  readonly tracer: Tracer;
}

export class Process {
  readonly pid: number;
  readonly comm: string;
  readonly mm: AddressSpace;
  readonly files = new FdTable();
  private readonly devfs: Devfs;
  private readonly tracer: Tracer;
  private alive = true;

  constructor(opts: ProcessOptions) {
    this.pid = opts.pid;
    this.comm = opts.comm;
    this.mm = opts.mm;
    this.devfs = opts.devfs;
    this.tracer = opts.tracer;
    if (this.tracer.enabled) this.tracer.emit("proc.spawn", { pid: this.pid, comm: this.comm });
  }

  get isAlive(): boolean {
    return this.alive;
  }

  /** open(2) of a device node. */
  open(path: string, flags = O_RDWR): number {
    this.checkAlive();
    const ops = this.devfs.open(path, {
      pid: this.pid,
      flags,
      mm: this.mm,
      resolveFile: (fd) => this.files.get(fd),
      installFile: (ops, p) => this.installFile(ops, p),
    });
    return this.installFile(ops, path);
  }

  /** Installs a driver-created file (GET_DEVICE_FD, eventfd) and returns its fd. */
  installFile(ops: FileOps, path: string): number {
    this.checkAlive();
    const fd = this.files.install(new OpenFile(ops, path));
    if (this.tracer.enabled) this.tracer.emit("fd.open", { pid: this.pid, fd, kind: ops.kind, path });
    return fd;
  }

  close(fd: number): void {
    const { file, released } = this.files.close(fd);
    if (this.tracer.enabled) this.tracer.emit("fd.close", { pid: this.pid, fd, kind: file.kind, released });
  }

  /** The open file behind an fd (EBADF if none): drivers use this to resolve fds passed as ioctl arguments. */
  file(fd: number): OpenFile {
    return this.files.get(fd);
  }

  ioctl(fd: number, request: number, arg: IoctlArg = 0): number {
    const f = this.files.get(fd);
    if (!f.ops.ioctl) {
      throw new KernelError(Errno.ENOTTY, `fd ${fd} (${f.kind}) does not support ioctl 0x${request.toString(16)}`);
    }
    return f.ops.ioctl(request, arg);
  }

  pread(fd: number, buf: Uint8Array, offset: number): number {
    const f = this.files.get(fd);
    if (!f.ops.read) throw new KernelError(Errno.EINVAL, `fd ${fd} (${f.kind}) cannot be read`);
    return f.ops.read(buf, offset);
  }

  pwrite(fd: number, buf: Uint8Array, offset: number): number {
    const f = this.files.get(fd);
    if (!f.ops.write) throw new KernelError(Errno.EINVAL, `fd ${fd} (${f.kind}) cannot be written`);
    return f.ops.write(buf, offset);
  }

  /** mmap(2) of a file: maps the frames the driver names into this process. */
  mmapFile(fd: number, offset: number, length: number, prot = PROT_READ | PROT_WRITE): Hva {
    const f = this.files.get(fd);
    if (!f.ops.mmap) throw new KernelError(Errno.ENODEV, `fd ${fd} (${f.kind}) does not support mmap`);
    const m = f.ops.mmap(offset, length, prot);
    return this.mm.mmap(length, prot, {
      backing: { kind: "external", basePfn: m.basePfn, label: m.label },
      name: m.label,
    });
  }

  /** eventfd(2). */
  eventfd(initval = 0, flags = 0): number {
    return this.installFile(new EventFd(initval, flags), "anon_inode:[eventfd]");
  }

  /** The EventFd object behind an fd; EINVAL if the fd is not an eventfd (as vfio's SET_IRQS checks). */
  eventfdOf(fd: number): EventFd {
    const f = this.files.get(fd);
    if (!(f.ops instanceof EventFd)) throw new KernelError(Errno.EINVAL, `fd ${fd} is a ${f.kind}, not an eventfd`);
    return f.ops;
  }

  /** Syscall-style wrappers: the result, or -errno. */
  sysIoctl(fd: number, request: number, arg: IoctlArg = 0): number {
    return asSyscall(() => this.ioctl(fd, request, arg));
  }
  sysOpen(path: string, flags = O_RDWR): number {
    return asSyscall(() => this.open(path, flags));
  }

  /** The process dies: every fd is closed (drivers release what it held), then its address space is torn down. */
  exit(): void {
    if (!this.alive) return;
    const open = this.files.list();
    for (const { fd } of open) this.close(fd);
    this.mm.exit();
    this.alive = false;
    if (this.tracer.enabled) this.tracer.emit("proc.exit", { pid: this.pid, comm: this.comm, fdsClosed: open.length });
  }

  private checkAlive(): void {
    if (!this.alive) throw new KernelError(Errno.ESRCH, `process ${this.pid} (${this.comm}) has exited`);
  }
}

/** Runs a call the way a C caller sees a syscall: its result, or -errno. Non-kernel errors are bugs and rethrown. */
export function asSyscall(fn: () => number): number {
  try {
    return fn();
  } catch (e) {
    if (isKernelError(e)) return -e.errno;
    throw e;
  }
}
