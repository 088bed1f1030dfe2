/**
 * The real-OS layer of vfio-user: the libc calls Node does not offer, through the koffi FFI (prebuilt binaries, no
 * build step). AF_UNIX stream sockets (socket/bind/listen/accept4/connect), sendmsg/recvmsg with SCM_RIGHTS,
 * memfd_create/ftruncate/fstat, mmap/munmap with zero-copy views (`koffi.view`), eventfd read/write, poll, fcntl,
 * close. Everything else in src/vfio-user reaches the OS only through this file.
 *
 * Conventions: calls that can fail return -errno as a number (the syscall convention) or throw
 * `KernelError(errno, "<call> of <what> failed: ...")` (the `*OrThrow` helpers); fds are plain numbers owned by
 * whoever holds them (close exactly once). Every fd is created close-on-exec.
 *
 * Message I/O (`MsgIo`): one native block holds a struct msghdr, one iovec and a control buffer, allocated once per
 * socket; each sendmsg/recvmsg only rewrites the iovec and control lengths, so a message costs no allocation beyond
 * koffi's own argument marshalling. Data travels through native buffers (`NativeBuffer`, koffi.alloc + koffi.view):
 * recvmsg writes straight into the receive buffer that the framing code parses.
 *
 * Layouts assumed (x86_64 and arm64 Linux, glibc): struct msghdr 56 bytes (iov @16, iovlen @24, control @32,
 * controllen @40, flags @48), struct iovec 16, struct cmsghdr 16 (len u64, level, type), st_size at offset 48 of
 * struct stat, struct pollfd 8. Not supported: other OSes.
 *
 * Safety: a view over mmap'd memory must not be touched after `munmap`: the owner (dma.ts, client.ts) drops every
 * reference (including physmem registrations) before unmapping, and keeps the mapping when it cannot prove that.
 */
import { isMainThread } from "node:worker_threads";
import koffi from "koffi";
import { checkSocketPath, Errno, KernelError } from "../core/index.ts";

const libc = koffi.load("libc.so.6");

const c = {
  socket: libc.func("int socket(int domain, int type, int protocol)"),
  socketpair: libc.func("int socketpair(int domain, int type, int protocol, _Out_ int *sv)"),
  bind: libc.func("int bind(int fd, const void *addr, uint32_t len)"),
  listen: libc.func("int listen(int fd, int backlog)"),
  accept4: libc.func("int accept4(int fd, void *addr, void *len, int flags)"),
  connect: libc.func("int connect(int fd, const void *addr, uint32_t len)"),
  shutdown: libc.func("int shutdown(int fd, int how)"),
  // The per-message calls take their native blocks as addresses (uintptr_t): koffi passes a number ~0.3 us faster
  // than a pointer object, whose type tag it checks on every call.
  sendmsg: libc.func("intptr_t sendmsg(int fd, uintptr_t msg, int flags)"),
  recvmsg: libc.func("intptr_t recvmsg(int fd, uintptr_t msg, int flags)"),
  setsockopt: libc.func("int setsockopt(int fd, int level, int name, const void *val, uint32_t len)"),
  close: libc.func("int close(int fd)"),
  // fcntl with one int argument, declared non-variadic: koffi prepares a variadic call's types on every call, and the
  // x86-64 and arm64 Linux ABIs pass a lone int argument the same way either way.
  fcntlInt: libc.func("int fcntl(int fd, int cmd, int arg)"),
  memfdCreate: libc.func("int memfd_create(const char *name, unsigned int flags)"),
  ftruncate: libc.func("int ftruncate(int fd, int64_t length)"),
  fstat: libc.func("int fstat(int fd, uintptr_t st)"),
  mmap: libc.func("void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)"),
  munmap: libc.func("int munmap(void *addr, size_t length)"),
  eventfd: libc.func("int eventfd(unsigned int initval, int flags)"),
  read: libc.func("intptr_t read(int fd, void *buf, size_t count)"),
  write: libc.func("intptr_t write(int fd, const void *buf, size_t count)"),
  poll: libc.func("int poll(void *fds, unsigned long nfds, int timeout)"),
};

// ---- constants (Linux, x86_64/arm64) ----
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const MSG_DONTWAIT = 0x40;
export const MSG_CTRUNC = 0x8;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const SHUT_RDWR = 2;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_DUPFD_CLOEXEC = 1030;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SHRINK = 0x0002;
export const F_SEAL_WRITE = 0x0008;
export const F_SEAL_FUTURE_WRITE = 0x0010;
export const O_NONBLOCK = 0o4000;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const POLLIN = 1;
export const POLLOUT = 4;
export const POLLERR = 8;
export const POLLHUP = 0x10;
/** Longest sun_path (108 bytes with its NUL). */

const EAGAIN = 11;
const EINTR = 4;

/** The errno of the last failed call on this thread. */
export function lastErrno(): number {
  return koffi.errno();
}

/** A KernelError for a failed libc call; errno values Linux defines but the model does not list pass through as is. */
export function errnoError(errno: number, message: string): KernelError {
  return new KernelError(errno as Errno, message);
}

function check(ret: number, what: string): number {
  if (ret < 0) {
    const e = koffi.errno();
    throw errnoError(e, `${what} failed: errno ${e}`);
  }
  return ret;
}

// ---------------------------------------------------------------------------------------------------------------------
// Native memory

/** Memory outside the JS heap with a stable address (what iovecs and the kernel need), viewed as bytes; zeroed. */
export class NativeBuffer {
  readonly size: number;
  /** The address as a number (user-space addresses are below 2^47, exact in a double). */
  readonly address: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  private ptr: unknown;

  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size <= 0) throw new RangeError(`native buffer size ${size}`);
    this.size = size;
    this.ptr = koffi.alloc("uint8_t", size);
    this.address = Number(koffi.address(this.ptr));
    const ab = koffi.view(this.ptr, size);
    this.bytes = new Uint8Array(ab);
    this.view = new DataView(ab);
    // malloc'd memory: a struct left with garbage (msg_namelen) would make the kernel refuse the call.
    this.bytes.fill(0);
  }

  /** The koffi pointer, for `void *` parameters. */
  get pointer(): unknown {
    if (this.ptr === null) throw new Error("native buffer used after free");
    return this.ptr;
  }

  /** The address, for `uintptr_t` parameters; throws after `free` as `pointer` does. */
  get liveAddress(): number {
    if (this.ptr === null) throw new Error("native buffer used after free");
    return this.address;
  }

  get freed(): boolean {
    return this.ptr === null;
  }

  /** Frees the memory; every view of it becomes invalid (the owner must not touch `bytes` again). */
  free(): void {
    if (this.ptr === null) return;
    koffi.free(this.ptr);
    this.ptr = null;
  }
}

/**
 * A scratch block for small fixed-size arguments (sockaddr_un, pollfd, struct stat, eventfd counters),
 * each call using it from offset 0: single-threaded use only, never across a call that could re-enter.
 */
const scratch = new NativeBuffer(256);

function writeAddr(view: DataView, at: number, addr: number): void {
  view.setUint32(at, addr >>> 0, true); // the low 32 bits (ToUint32); `%` on a double calls into C
  view.setUint32(at + 4, Math.floor(addr / 0x1_0000_0000), true);
}

function readU64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * 0x1_0000_0000 + view.getUint32(at, true);
}

// ---------------------------------------------------------------------------------------------------------------------
// Sockets

function sockaddrUn(path: string): number {
  checkSocketPath(path);
  const bytes = Buffer.from(path, "utf8");
  const b = scratch.bytes;
  b.fill(0, 0, 110);
  scratch.view.setUint16(0, AF_UNIX, true);
  b.set(bytes, 2);
  return 2 + bytes.length + 1;
}

/** socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC [| SOCK_NONBLOCK]). */
export function unixSocket(nonblock: boolean): number {
  return check(c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0), "socket(AF_UNIX)");
}

/** A connected pair of AF_UNIX stream sockets (tests, benchmarks). */
export function unixSocketPair(nonblock: boolean): [number, number] {
  const sv = [-1, -1];
  check(c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0, sv), "socketpair");
  return [sv[0]!, sv[1]!];
}

/** bind + listen on a path; the caller removes a stale socket file first and sets its mode. */
export function listenUnix(path: string, backlog: number): number {
  const fd = unixSocket(true);
  try {
    const len = sockaddrUn(path);
    check(c.bind(fd, scratch.pointer, len), `bind(${path})`);
    check(c.listen(fd, backlog), `listen(${path})`);
  } catch (e) {
    c.close(fd);
    throw e;
  }
  return fd;
}

/** accept4 (non-blocking, close-on-exec): the new fd, or -errno (-EAGAIN when no connection is waiting). */
export function acceptUnix(listenFd: number): number {
  const fd = c.accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC) as number;
  return fd < 0 ? -koffi.errno() : fd;
}

/** A blocking connect to a path; returns the fd in non-blocking mode. Throws ENOENT/ECONNREFUSED as Linux reports. */
export function connectUnix(path: string): number {
  const fd = unixSocket(false);
  try {
    const len = sockaddrUn(path);
    check(c.connect(fd, scratch.pointer, len), `connect(${path})`);
    setNonblocking(fd, true);
  } catch (e) {
    c.close(fd);
    throw e;
  }
  return fd;
}

export function shutdownSocket(fd: number): void {
  c.shutdown(fd, SHUT_RDWR);
}

/** SO_SNDBUF / SO_RCVBUF (tests shrink them to provoke backpressure). */
export function setSocketBuffer(fd: number, opt: typeof SO_SNDBUF | typeof SO_RCVBUF, bytes: number): void {
  scratch.view.setInt32(0, bytes, true);
  check(c.setsockopt(fd, SOL_SOCKET, opt, scratch.pointer, 4), "setsockopt");
}

export function setNonblocking(fd: number, on: boolean): void {
  const fl = check(c.fcntlInt(fd, F_GETFL, 0), "fcntl(F_GETFL)");
  check(c.fcntlInt(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK), "fcntl(F_SETFL)");
}

/** fcntl(F_DUPFD_CLOEXEC): a new fd for the same open file, or throws. */
export function dupCloexec(fd: number): number {
  return check(c.fcntlInt(fd, F_DUPFD_CLOEXEC, 0), `dup of fd ${fd}`);
}

/** close(2); errors (EBADF for a bug, EINTR) are returned, not thrown: close never fails twice. */
export function closeFd(fd: number): number {
  if (fd < 0) return 0;
  const r = c.close(fd) as number;
  return r < 0 ? -koffi.errno() : 0;
}

// ---------------------------------------------------------------------------------------------------------------------
// sendmsg / recvmsg with SCM_RIGHTS

const MSGHDR = 0;
const IOVEC = 64;
const CONTROL = 96;
const CMSG_HDR = 16;

/**
 * One socket's message I/O block. `maxFds` bounds the fds one recvmsg accepts: more arrive with MSG_CTRUNC (the
 * kernel closes the ones that did not fit), reported in `truncated`.
 */
export class MsgIo {
  private readonly block: NativeBuffer;
  private readonly controlSize: number;
  /** After recv: the fds received (valid for `fdCount` entries), and whether the kernel truncated the control data. */
  readonly fds: Int32Array;
  fdCount = 0;
  truncated = false;

  constructor(readonly maxFds: number) {
    this.controlSize = CMSG_HDR + 4 * Math.max(1, maxFds);
    this.block = new NativeBuffer(CONTROL + ((this.controlSize + 7) & ~7));
    this.fds = new Int32Array(Math.max(1, maxFds));
    const v = this.block.view;
    writeAddr(v, MSGHDR + 16, this.block.address + IOVEC);
    writeAddr(v, MSGHDR + 24, 1);
  }

  /** sendmsg of [addr, addr+len) with `fds` as SCM_RIGHTS: bytes sent, or -errno (-EAGAIN: the socket is full). */
  send(fd: number, addr: number, len: number, fds: ArrayLike<number> | undefined, block: boolean): number {
    const v = this.block.view;
    writeAddr(v, IOVEC, addr);
    writeAddr(v, IOVEC + 8, len);
    const n = fds === undefined ? 0 : fds.length;
    if (fds !== undefined && n > 0) {
      if (n > this.maxFds) return -Errno.EINVAL;
      const clen = CMSG_HDR + 4 * n;
      writeAddr(v, CONTROL, clen);
      v.setInt32(CONTROL + 8, SOL_SOCKET, true);
      v.setInt32(CONTROL + 12, SCM_RIGHTS, true);
      for (let i = 0; i < n; i++) v.setInt32(CONTROL + CMSG_HDR + 4 * i, fds[i]!, true);
      writeAddr(v, MSGHDR + 32, this.block.address + CONTROL);
      writeAddr(v, MSGHDR + 40, (clen + 7) & ~7);
    } else {
      writeAddr(v, MSGHDR + 32, 0);
      writeAddr(v, MSGHDR + 40, 0);
    }
    for (;;) {
      const r = c.sendmsg(fd, this.block.liveAddress, MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT)) as number;
      if (r >= 0) return r;
      const e = koffi.errno();
      if (e !== EINTR) return -e;
    }
  }

  /** recvmsg into [addr, addr+len): bytes read (0 = peer closed), or -errno. Fills `fds`/`fdCount`/`truncated`. */
  recv(fd: number, addr: number, len: number): number {
    const v = this.block.view;
    writeAddr(v, IOVEC, addr);
    writeAddr(v, IOVEC + 8, len);
    writeAddr(v, MSGHDR + 32, this.block.address + CONTROL);
    writeAddr(v, MSGHDR + 40, this.controlSize);
    v.setInt32(MSGHDR + 48, 0, true);
    this.fdCount = 0;
    this.truncated = false;
    let r: number;
    for (;;) {
      r = c.recvmsg(fd, this.block.liveAddress, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) as number;
      if (r >= 0) break;
      const e = koffi.errno();
      if (e !== EINTR) return -e;
    }
    const flags = v.getInt32(MSGHDR + 48, true);
    this.truncated = (flags & MSG_CTRUNC) !== 0;
    const controlLen = readU64(v, MSGHDR + 40);
    let at = 0;
    while (at + CMSG_HDR <= controlLen) {
      const clen = readU64(v, CONTROL + at);
      if (clen < CMSG_HDR || at + clen > controlLen) break;
      if (v.getInt32(CONTROL + at + 8, true) === SOL_SOCKET && v.getInt32(CONTROL + at + 12, true) === SCM_RIGHTS) {
        const count = Math.floor((clen - CMSG_HDR) / 4);
        for (let i = 0; i < count; i++) {
          const got = v.getInt32(CONTROL + at + CMSG_HDR + 4 * i, true);
          if (this.fdCount < this.fds.length) this.fds[this.fdCount++] = got;
          else {
            closeFd(got);
            this.truncated = true;
          }
        }
      }
      at += (clen + 7) & ~7;
    }
    return r;
  }

  free(): void {
    this.block.free();
  }
}

const schedYieldFn = libc.func("int sched_yield()");

/**
 * sched_yield(2): lets another runnable thread of this CPU run first (a client sharing the CPU with a polling
 * server); returns at once when there is none.
 */
export function schedYield(): void {
  schedYieldFn();
}

/** poll(2) on one fd: the revents, 0 on timeout, or -errno. `timeoutMs` -1 waits forever. */
export function pollFd(fd: number, events: number, timeoutMs: number): number {
  const v = scratch.view;
  v.setInt32(0, fd, true);
  v.setInt16(4, events, true);
  v.setInt16(6, 0, true);
  for (;;) {
    const r = c.poll(scratch.pointer, 1, timeoutMs) as number;
    if (r >= 0) return r === 0 ? 0 : v.getUint16(6, true);
    const e = koffi.errno();
    if (e !== EINTR) return -e;
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// memfd, fstat, mmap

/** memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING) sized to `size` bytes. */
export function memfdCreate(name: string, size: number): number {
  const fd = check(c.memfdCreate(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), `memfd_create(${name})`);
  if (c.ftruncate(fd, size) < 0) {
    const e = koffi.errno();
    c.close(fd);
    throw errnoError(e, `ftruncate of memfd ${name} to ${size} bytes failed: errno ${e}`);
  }
  return fd;
}

/** st_size of an fd, or -errno. */
export function fileSize(fd: number): number {
  const r = c.fstat(fd, scratch.liveAddress) as number;
  if (r < 0) return -koffi.errno();
  return readU64(scratch.view, 48);
}

export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
/** st_mode's offset in struct stat: x86_64 puts st_nlink (8 bytes) before it, the generic layout (arm64) after. */
const ST_MODE = process.arch === "x64" ? 24 : 16;

/** One fstat: st_size and st_mode, or -errno. */
export function fileStat(fd: number): { size: number; mode: number } | number {
  const r = c.fstat(fd, scratch.liveAddress) as number;
  if (r < 0) return -koffi.errno();
  return { size: readU64(scratch.view, 48), mode: scratch.view.getUint32(ST_MODE, true) };
}

export const O_ACCMODE = 3;
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
/** O_PATH (x86_64 and arm64): an fd that names a file but gives no access to it. */
export const O_PATH = 0o10000000;

/** fcntl(F_GETFL): the file status flags and access mode, or -errno. */
export function fileFlags(fd: number): number {
  const r = c.fcntlInt(fd, F_GETFL, 0) as number;
  return r < 0 ? -koffi.errno() : r;
}

const getrlimit = libc.func("int getrlimit(int resource, _Out_ uint64_t *rlim)");
const RLIMIT_NOFILE = 7;

/** The soft limit on open fds (RLIMIT_NOFILE), or 1024 if it cannot be read. */
export function openFileLimit(): number {
  const out = [0, 0];
  if ((getrlimit(RLIMIT_NOFILE, out) as number) < 0) return 1024;
  const cur = Number(out[0]);
  return Number.isFinite(cur) && cur > 0 ? cur : 1024;
}

/** F_GET_SEALS, or -errno (EINVAL for a file that is not a memfd/shmem). */
export function getSeals(fd: number): number {
  const r = c.fcntlInt(fd, F_GET_SEALS, 0) as number;
  return r < 0 ? -koffi.errno() : r;
}

/** F_ADD_SEALS; 0 or -errno. */
export function addSeals(fd: number, seals: number): number {
  const r = c.fcntlInt(fd, F_ADD_SEALS, seals) as number;
  return r < 0 ? -koffi.errno() : 0;
}

/**
 * A live mmap: its pointer and address. Views are made on demand (`view`), never of the whole mapping at once: a
 * koffi view costs time in proportion to its length, and one of more than 4 GiB aborts the process. `bytes` is a
 * whole view for small mappings (regions, test RAM) only. `unmap` exactly once, after every user let go of its views.
 */
export class Mapping {
  readonly address: number;
  private ptr: unknown;
  private whole: Uint8Array | undefined;

  constructor(
    ptr: unknown,
    readonly length: number,
  ) {
    this.ptr = ptr;
    this.address = Number(koffi.address(ptr));
  }

  get mapped(): boolean {
    return this.ptr !== null;
  }

  /** A zero-copy view of [offset, offset + len) of the mapping. */
  view(offset: number, len: number): Uint8Array {
    if (this.ptr === null) throw new KernelError(Errno.EFAULT, "view of a mapping that was unmapped");
    if (!Number.isSafeInteger(offset) || offset < 0 || len <= 0 || offset + len > this.length || len > MAX_VIEW) {
      throw new KernelError(
        Errno.EINVAL,
        `view ${offset}+${len} is outside the ${this.length}-byte mapping or longer than ${MAX_VIEW} bytes`,
      );
    }
    return new Uint8Array(koffi.view(pointerAt(this.address + offset), len));
  }

  /** The whole mapping as one view (at most 1 GiB: for regions and test RAM, not for guest RAM windows). */
  get bytes(): Uint8Array {
    this.whole ??= this.view(0, this.length);
    return this.whole;
  }

  unmap(): void {
    if (this.ptr === null) return;
    c.munmap(this.ptr, this.length);
    this.ptr = null;
    this.whole = undefined;
  }
}

/** The longest single view made of a mapping. */
const MAX_VIEW = 2 ** 30;

/** A koffi pointer for an address inside a live mapping: memset(p, 0, 0) returns p and touches nothing. */
const memsetAt = libc.func("void *memset(uintptr_t s, int c, size_t n)");
function pointerAt(address: number): unknown {
  return memsetAt(address, 0, 0);
}

/** mmap(NULL, length, prot, flags, fd, offset): a Mapping, or -errno. */
export function mmapFd(fd: number, length: number, prot: number, flags: number, offset: number): Mapping | number {
  const ptr = c.mmap(null, length, prot, flags, fd, offset);
  if (ptr === null || koffi.address(ptr) === 0xffff_ffff_ffff_ffffn) return -koffi.errno();
  return new Mapping(ptr, length);
}

/**
 * Copies between this process's memory and a mapping of it through process_vm_readv/writev on our own pid, so that
 * a page the kernel cannot supply (its file was truncated under the mapping) is an EFAULT return instead of a SIGBUS
 * that would kill the process. Costs one syscall per call (~5 µs for 4 KiB here, against a plain copy's ~0.2 µs).
 */
const pvm = {
  readv: libc.func(
    "intptr_t process_vm_readv(int pid, uintptr_t liov, unsigned long lcnt, uintptr_t riov, unsigned long rcnt, unsigned long flags)",
  ),
  writev: libc.func(
    "intptr_t process_vm_writev(int pid, uintptr_t liov, unsigned long lcnt, uintptr_t riov, unsigned long rcnt, unsigned long flags)",
  ),
};
/** Two iovecs (local @0, remote @16) and a 2 MiB bounce buffer @32, allocated on first use. */
let pvmBlock: NativeBuffer | undefined;
const PVM_MAX = 2 * 1024 * 1024;

function pvmCopy(write: boolean, address: number, buf: Uint8Array, off: number, len: number): number {
  pvmBlock ??= new NativeBuffer(32 + PVM_MAX);
  const blk = pvmBlock;
  const v = blk.view;
  const base = blk.address;
  for (let done = 0; done < len; ) {
    const n = Math.min(PVM_MAX, len - done);
    writeAddr(v, 0, base + 32);
    writeAddr(v, 8, n);
    writeAddr(v, 16, address + done);
    writeAddr(v, 24, n);
    if (write) blk.bytes.set(buf.subarray(off + done, off + done + n), 32);
    const r = (write ? pvm.writev : pvm.readv)(process.pid, base, 1, base + 16, 1, 0) as number;
    if (r < 0) return koffi.errno() || Errno.EFAULT;
    if (r < n) return Errno.EFAULT;
    if (!write) buf.set(blk.bytes.subarray(32, 32 + n), off + done);
    done += n;
  }
  return 0;
}

/** Reads `len` bytes at `address` (inside a live mapping) into buf[off..]: 0, or a positive errno (EFAULT). */
export function guardedRead(address: number, buf: Uint8Array, off: number, len: number): number {
  return pvmCopy(false, address, buf, off, len);
}

/** Writes buf[off..off+len) at `address` (inside a live mapping): 0, or a positive errno (EFAULT). */
export function guardedWrite(address: number, buf: Uint8Array, off: number, len: number): number {
  return pvmCopy(true, address, buf, off, len);
}

const readlink = libc.func("intptr_t readlink(const char *path, _Out_ uint8_t *buf, size_t size)");

/** What /proc/self/fd/N names (e.g. "anon_inode:[eventfd]", "pipe:[123]", a path), or undefined. */
export function fdTarget(fd: number): string | undefined {
  const out = Buffer.alloc(256);
  const r = readlink(`/proc/self/fd/${fd}`, out, out.length) as number;
  return r < 0 ? undefined : out.subarray(0, r).toString("utf8");
}

/** Whether `fd` is an eventfd (its /proc/self/fd link is "anon_inode:[eventfd]"). */
export function isEventfd(fd: number): boolean {
  return fdTarget(fd) === "anon_inode:[eventfd]";
}

// ---------------------------------------------------------------------------------------------------------------------
// eventfd

/** eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK). */
export function eventfdCreate(initval = 0): number {
  return check(c.eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd");
}

/** Adds `n` to an eventfd's counter (eventfd_write): 0, or -errno. Blocks if the fd is blocking and full. */
export function eventfdWrite(fd: number, n = 1): number {
  const v = scratch.view;
  writeAddr(v, 0, n);
  const r = c.write(fd, scratch.pointer, 8) as number;
  return r < 0 ? -koffi.errno() : 0;
}

/**
 * Signals an eventfd someone else gave us without ever blocking: the open file description is made non-blocking
 * first if its owner left it blocking (it is shared: the owner's reads become non-blocking too, which is how QEMU
 * opens its own), and a full counter is EAGAIN, a lost edge, not a hang. 0, or -errno.
 */
export function eventfdSignal(fd: number): number {
  const fl = c.fcntlInt(fd, F_GETFL, 0) as number;
  if (fl < 0) return -koffi.errno();
  if ((fl & O_NONBLOCK) === 0 && (c.fcntlInt(fd, F_SETFL, fl | O_NONBLOCK) as number) < 0) return -koffi.errno();
  return eventfdWrite(fd, 1);
}

/** Reads and resets an eventfd's counter: the count (0 when it was 0, for a non-blocking fd), or -errno. */
export function eventfdRead(fd: number): number {
  const r = c.read(fd, scratch.pointer, 8) as number;
  if (r < 0) {
    const e = koffi.errno();
    return e === EAGAIN ? 0 : -e;
  }
  return readU64(scratch.view, 0);
}

/** Writes all of `bytes` to a (blocking or not) fd; bytes written or -errno. For pipes and tests. */
export function writeFd(fd: number, bytes: Uint8Array): number {
  const r = c.write(fd, bytes, bytes.length) as number;
  return r < 0 ? -koffi.errno() : r;
}

// ---------------------------------------------------------------------------------------------------------------------
// libuv: poll handles on Node's own event loop
//
// Node exports libuv's API from its executable (addons link against it), so koffi reaches it through the main
// program's symbol table (dlopen(NULL)). A uv_poll_t on the main thread's loop puts an fd Node knows nothing about
// into libuv's own epoll set: libuv reports its readiness in the poll phase, on the main thread, with no thread and
// no extra syscall. The handle memory comes from malloc and libuv frees it itself once closed (free is the close
// callback), so closing calls no JS. One koffi callback serves every handle (it gets the handle's address); koffi
// runs the microtasks queued in it when it returns.

const UV_POLL = 8;
/** libuv's poll event bits. */
export const UV_READABLE = 1;
export const UV_WRITABLE = 2;
export const UV_DISCONNECT = 4;

interface UvApi {
  readonly loop: unknown;
  readonly handleSize: number;
  readonly free: number;
  readonly malloc: (size: number) => number;
  readonly pollInit: (loop: unknown, handle: number, fd: number) => number;
  readonly pollStart: (handle: number, events: number, cb: unknown) => number;
  readonly pollStop: (handle: number) => number;
  readonly close: (handle: number, cb: number) => void;
  readonly ref: (handle: number) => void;
  readonly unref: (handle: number) => void;
  readonly strerror: (err: number) => string;
  readonly callback: koffi.IKoffiRegisteredCallback;
  /** libuv's epoll fd (uv_backend_fd). */
  readonly backendFd: number;
}

let uvApi: UvApi | undefined;
/** Open polls by handle address. */
const uvPolls = new Map<number, UvPoll>();

function uv(): UvApi {
  if (uvApi !== undefined) return uvApi;
  if (!isMainThread) {
    throw new KernelError(Errno.EINVAL, "the vfio-user reactor runs on the main thread only (not in a worker)");
  }
  let self: koffi.IKoffiLib;
  try {
    self = koffi.load(null);
    self.func("void *uv_default_loop()");
  } catch (e) {
    throw new KernelError(
      Errno.ENOSYS,
      `this Node executable does not export libuv's API (${(e as Error).message}); vfio-user needs an official Node build`,
    );
  }
  const dlsym = libc.func("uintptr_t dlsym(uintptr_t handle, const char *name)");
  const cb = koffi.proto("void vfu_uv_poll_cb(uintptr_t handle, int status, int events)");
  const defaultLoop = self.func("void *uv_default_loop()");
  const handleSize = self.func("size_t uv_handle_size(int type)");
  uvApi = {
    loop: defaultLoop(),
    handleSize: Number(handleSize(UV_POLL)),
    // RTLD_DEFAULT: the free that malloc below pairs with.
    free: dlsym(0, "free") as number,
    malloc: libc.func("uintptr_t malloc(size_t size)"),
    pollInit: self.func("int uv_poll_init(void *loop, uintptr_t handle, int fd)"),
    pollStart: self.func("int uv_poll_start(uintptr_t handle, int events, vfu_uv_poll_cb *cb)"),
    pollStop: self.func("int uv_poll_stop(uintptr_t handle)"),
    close: self.func("void uv_close(uintptr_t handle, uintptr_t cb)"),
    ref: self.func("void uv_ref(uintptr_t handle)"),
    unref: self.func("void uv_unref(uintptr_t handle)"),
    strerror: self.func("const char *uv_strerror(int err)"),
    backendFd: self.func("int uv_backend_fd(void *loop)")(defaultLoop()) as number,
    callback: koffi.register((handle: number, status: number, events: number) => {
      const p = uvPolls.get(handle);
      // An exception must not unwind into libuv: rethrow it outside the callback.
      if (p !== undefined) {
        try {
          p.onEvent(status, events);
        } catch (e) {
          process.nextTick(() => {
            throw e;
          });
        }
      }
    }, koffi.pointer(cb)),
  };
  if (uvApi.free === 0) throw new KernelError(Errno.ENOSYS, "dlsym(free) failed");
  // Node's teardown after 'exit' may spin the loop once more, and a call into JS then is fatal: stop every poll.
  process.once("exit", () => {
    for (const p of uvPolls.values()) p.stop();
  });
  return uvApi;
}

/**
 * A libuv poll handle watching one fd on the main thread's loop (level-triggered, as libuv polls are: the callback
 * repeats each loop iteration while the fd stays ready). `onEvent(status, events)` gets UV_* bits, or status < 0
 * (a libuv error code; libuv then has stopped the poll). Starts unref'd (does not keep the process alive). libuv
 * makes the fd non-blocking.
 */
export class UvPoll {
  readonly address: number;
  private closed = false;

  constructor(
    fd: number,
    events: number,
    readonly onEvent: (status: number, events: number) => void,
  ) {
    const api = uv();
    const h = api.malloc(api.handleSize);
    if (h === 0) throw new KernelError(Errno.ENOMEM, `no memory for a libuv poll handle for fd ${fd}`);
    this.address = h;
    let r = api.pollInit(api.loop, h, fd);
    if (r !== 0) {
      // Not initialised: not libuv's yet.
      freeFn(h);
      throw new KernelError(Errno.EINVAL, `uv_poll_init on fd ${fd} failed: ${api.strerror(r)}`);
    }
    uvPolls.set(h, this);
    api.unref(h);
    r = api.pollStart(h, events, api.callback);
    if (r !== 0) {
      this.close();
      throw new KernelError(Errno.EINVAL, `uv_poll_start on fd ${fd} failed: ${api.strerror(r)}`);
    }
  }

  /** Changes the events polled (UV_* bits; 0 stops polling until the next call). */
  start(events: number): void {
    if (this.closed) return;
    const api = uv();
    if (events === 0) api.pollStop(this.address);
    else api.pollStart(this.address, events, api.callback);
  }

  /** Whether the handle keeps Node's event loop (and so the process) alive. */
  ref(on: boolean): void {
    if (this.closed) return;
    if (on) uv().ref(this.address);
    else uv().unref(this.address);
  }

  /** Stops polling, keeping the handle (process exit). */
  stop(): void {
    if (!this.closed) uv().pollStop(this.address);
  }

  /** Stops polling and closes the handle; libuv frees its memory once closed. Call before closing the fd. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    uvPolls.delete(this.address);
    const api = uv();
    api.pollStop(this.address);
    api.close(this.address, api.free);
  }
}

/** Open libuv poll handles (leak checks). */
export function uvPollCount(): number {
  return uvPolls.size;
}

const pollAt = libc.func("int poll(uintptr_t fds, unsigned long nfds, int timeout)");
let loopPollFd: NativeBuffer | undefined;

/**
 * Whether an fd of the main loop has an event now, without waiting. libuv's epoll set is itself pollable: readable
 * while any fd in it (every UvPoll, Node's own sockets, pipes and async wake-ups) has an event, which is what the
 * loop's next epoll_wait would report. One poll(2) with a zero timeout; it consumes nothing.
 */
export function uvLoopHasReadyFd(): boolean {
  if (loopPollFd === undefined) {
    const b = new NativeBuffer(8);
    b.view.setInt32(0, uv().backendFd, true);
    b.view.setInt16(4, POLLIN, true);
    loopPollFd = b;
  }
  return (pollAt(loopPollFd.liveAddress, 1, 0) as number) > 0;
}

const freeFn = libc.func("void free(uintptr_t p)");

// ---------------------------------------------------------------------------------------------------------------------
// Non-blocking connect (server.ts: is a live server listening at a socket path? tests: bursts of clients)

/**
 * connect(2) to `path` on a non-blocking socket: the connected fd (non-blocking, close-on-exec), or -errno with
 * nothing left open. An AF_UNIX connect completes at once or fails: -EAGAIN when a listener's backlog is full (the
 * listener is alive), -ECONNREFUSED when nobody listens on the socket file (stale), -ENOENT when there is no file.
 * Never blocks, unlike `connectUnix`, which waits for room in a full backlog. Throws ENAMETOOLONG for a path that does
 * not fit in sun_path.
 */
export function connectUnixNonblocking(path: string): number {
  const fd = unixSocket(true);
  let r: number;
  try {
    const len = sockaddrUn(path);
    r = c.connect(fd, scratch.pointer, len) as number;
  } catch (e) {
    c.close(fd);
    throw e;
  }
  if (r === 0) return fd;
  const e = koffi.errno();
  c.close(fd);
  return -e;
}
