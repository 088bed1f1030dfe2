/**
 * The vfio-user client: a device in another process, reached over its UNIX socket, presented to our VMM through the
 * same `VfioDeviceOps` interface a local device implements.
 *
 * ```ts
 * const client = VfioUserClient.connect({ socketPath });          // connect + VERSION
 * const ram = GuestMemory.create("guest-ram", 256 << 20);         // a memfd, mmap'd here
 * client.dmaMap({ iova: 0, size: ram.size, memory: ram });        // DMA_MAP carries the memfd
 * const dev = new RemoteVfioDevice(client, { name: "vgpu0" });    // VfioDeviceOps over the socket
 * dev.regionWrite(VFIO_PCI_BAR0_REGION_INDEX, 0, bytes);
 * ```
 *
 * Requests are synchronous, as a vCPU's MMIO exit is: send, then block (poll, bounded by `timeoutMs`) until the
 * reply with the request's id arrives. The server's own requests (DMA_READ/DMA_WRITE into windows mapped without an
 * fd) are served while waiting, and also from the event loop when they come between requests (after a posted write),
 * so the server and this client must live in different processes (a synchronous wait in one process would keep the
 * server from running).
 *
 * Server requests are served from the client's own DMA windows: the bytes of a `GuestMemory` (whether or not its fd
 * was sent), or the `VfioDmaAccess` the device was opened with (a RemoteVfioDevice registered in the VMM's own model
 * vfio-core reaches the VMM's model RAM that way). Anything else gets an error reply EFAULT.
 *
 * Interrupts: SET_IRQS with eventfds sends real eventfds (created here); each is watched by the reactor and its
 * trigger is signalled when the server writes it, or at once by `pollInterrupts()` for synchronous callers.
 *
 * Errors: an error reply is a KernelError with the server's errno and a sentence naming the request; a dead or silent
 * server is ECONNRESET / ETIMEDOUT (the connection is then closed: a late reply could not be told from the next one).
 */
import {
  Errno,
  type Iova,
  KernelError,
  readU32LE,
  readU64Number,
  type SchedulingClock,
  SystemClock,
  writeU32LE,
  writeU64LE,
} from "../core/index.ts";
import {
  type InfoCapEntry,
  type IrqTrigger,
  parseCapChain,
  uapi,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  type VfioCapability,
  type VfioDeviceInfo,
  type VfioDeviceOps,
  type VfioDmaAccess,
  type VfioIrqInfo,
  type VfioIrqSet,
  type VfioRegionInfo,
} from "../vfio/index.ts";
import { decodeVersion, encodeVersion, type VfioUserCaps } from "./caps.ts";
import { Channel, type Frame, isReply } from "./connection.ts";
import {
  addSeals,
  closeFd,
  connectUnix,
  eventfdCreate,
  eventfdRead,
  F_SEAL_SHRINK,
  MAP_SHARED,
  type Mapping,
  memfdCreate,
  mmapFd,
  PROT_READ,
  PROT_WRITE,
} from "./native.ts";
import {
  commandName,
  DMA_RW_FIXED,
  DMA_RW_LAYOUTS,
  type DmaRwLayout,
  HEADER_SIZE,
  VFIO_USER_DEVICE_GET_INFO,
  VFIO_USER_DEVICE_GET_IRQ_INFO,
  VFIO_USER_DEVICE_GET_REGION_INFO,
  VFIO_USER_DEVICE_GET_REGION_IO_FDS,
  VFIO_USER_DEVICE_RESET,
  VFIO_USER_DEVICE_SET_IRQS,
  VFIO_USER_DMA_MAP,
  VFIO_USER_DMA_READ,
  VFIO_USER_DMA_UNMAP,
  VFIO_USER_DMA_WRITE,
  VFIO_USER_F_DMA_REGION_READ,
  VFIO_USER_F_DMA_REGION_WRITE,
  VFIO_USER_F_DMA_UNMAP_ALL,
  VFIO_USER_F_ERROR,
  VFIO_USER_F_NO_REPLY,
  VFIO_USER_F_TYPE_COMMAND,
  VFIO_USER_F_TYPE_REPLY,
  VFIO_USER_MAJOR,
  VFIO_USER_MINOR,
  VFIO_USER_MULTI_MAX,
  VFIO_USER_REGION_READ,
  VFIO_USER_REGION_WRITE,
  VFIO_USER_REGION_WRITE_MULTI,
  VFIO_USER_VERSION,
  VfioUserDmaMap,
  VfioUserDmaUnmap,
  VfioUserRegionIoFds,
} from "./protocol.ts";
import { EPOLLIN, Reactor, type Watch } from "./reactor.ts";

// ---------------------------------------------------------------------------------------------------------------------
// Guest memory

/** Guest RAM a VMM can share: a sealed memfd mapped into this process, with a zero-copy view of its bytes. */
export class GuestMemory {
  readonly fd: number;
  readonly size: number;
  readonly name: string;
  private readonly mapping: Mapping;

  private constructor(name: string, fd: number, mapping: Mapping) {
    this.name = name;
    this.fd = fd;
    this.size = mapping.length;
    this.mapping = mapping;
  }

  /** memfd_create + ftruncate + seal against shrinking + mmap(MAP_SHARED). `size` a multiple of 4096. */
  static create(name: string, size: number): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) {
      throw new KernelError(Errno.EINVAL, `guest memory ${name}: size ${size} must be a positive multiple of 4096`);
    }
    const fd = memfdCreate(name, size);
    addSeals(fd, F_SEAL_SHRINK);
    const m = mmapFd(fd, size, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    if (typeof m === "number") {
      closeFd(fd);
      throw new KernelError(-m as Errno, `guest memory ${name}: mmap of ${size} bytes failed with errno ${-m}`);
    }
    return new GuestMemory(name, fd, m);
  }

  /** The guest's bytes (shared with every process that mapped the memfd). Invalid after `close`. */
  get bytes(): Uint8Array {
    if (!this.mapping.mapped) throw new KernelError(Errno.EBADF, `guest memory ${this.name} is closed`);
    return this.mapping.bytes;
  }

  get closed(): boolean {
    return !this.mapping.mapped;
  }

  /** Unmaps and closes the memfd (processes that mapped it keep their mapping). */
  close(): void {
    if (!this.mapping.mapped) return;
    this.mapping.unmap();
    closeFd(this.fd);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Client

export interface VfioUserClientOptions {
  readonly socketPath: string;
  /** A request without a reply within this fails with ETIMEDOUT and closes the connection. Default 5000 ms. */
  readonly timeoutMs?: number;
  /** Fds we accept per message (advertised). Default 16. */
  readonly maxMsgFds?: number;
  /** Largest DMA_READ/DMA_WRITE count we accept (advertised). Default 1 MiB. */
  readonly maxDataXferSize?: number;
  /** DMA_READ/DMA_WRITE layout the server uses: "qemu" (our server's default) or "spec". */
  readonly dmaRwLayout?: "qemu" | "spec";
  /** Serve the server's requests and interrupts from the event loop between requests. Default true. */
  readonly watch?: boolean;
  readonly clock?: SchedulingClock;
}

export interface DmaMapOptions {
  readonly iova: number;
  readonly size: number;
  /** The window's bytes: sent as an fd (unless `sendFd` is false) and used to serve DMA_READ/DMA_WRITE. */
  readonly memory?: GuestMemory;
  /** Offset of the window in `memory`. Default 0. */
  readonly offset?: number;
  /** Default true when `memory` is given: DMA_MAP carries its memfd. False: the server must use DMA_READ/WRITE. */
  readonly sendFd?: boolean;
  readonly read?: boolean;
  readonly write?: boolean;
}

export interface RegionInfoReply {
  readonly index: number;
  readonly flags: number;
  readonly size: number;
  readonly offset: number;
  readonly caps: readonly InfoCapEntry[];
  /** The region's fd when the server offered one (MMAP); the caller owns it. */
  readonly fd: number | undefined;
}

/** Serves a server DMA_READ/DMA_WRITE outside the client's GuestMemory windows (e.g. the VMM's model RAM). */
export type DmaFallback = (iova: number, buf: Uint8Array, write: boolean) => void;

interface LocalWindow {
  readonly iova: number;
  readonly size: number;
  readonly memory: GuestMemory | undefined;
  readonly offset: number;
  readonly prot: number;
}

export class VfioUserClient {
  readonly socketPath: string;
  /** What the server said it accepts. */
  readonly serverCaps: VfioUserCaps;
  readonly version: { readonly major: number; readonly minor: number };
  private readonly channel: Channel;
  private readonly timeoutMs: number;
  private readonly maxDataXferSize: number;
  private readonly layout: DmaRwLayout;
  private nextId = 1;
  private readonly windows: LocalWindow[] = [];
  /** Server DMA requests outside our windows. */
  dmaFallback: DmaFallback | undefined;
  /** Server requests served (DMA_READ + DMA_WRITE). */
  dmaRequests = 0;

  private constructor(opts: VfioUserClientOptions) {
    this.socketPath = opts.socketPath;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.maxDataXferSize = opts.maxDataXferSize ?? 1024 * 1024;
    this.layout = DMA_RW_LAYOUTS[opts.dmaRwLayout ?? "qemu"];
    const maxMsgFds = opts.maxMsgFds ?? 16;
    const fd = connectUnix(opts.socketPath);
    this.channel = new Channel(
      fd,
      {
        label: `vfio-user client of ${opts.socketPath}`,
        maxMsgSize: HEADER_SIZE + DMA_RW_FIXED + this.maxDataXferSize + 64 * 1024,
        maxRecvFds: maxMsgFds,
        maxSendFds: 1,
        writeTimeoutMs: this.timeoutMs,
        maxQueuedBytes: 64 * 1024 * 1024,
        clock: opts.clock ?? new SystemClock(),
        watch: opts.watch ?? true,
        ref: false,
      },
      {
        onFrame: (f) => this.onServerRequest(f),
        onClose: () => {},
      },
    );
    try {
      const mine: VfioUserCaps = {
        maxMsgFds,
        maxDataXferSize: this.maxDataXferSize,
        maxDmaMaps: 65535,
        pgsizes: 4096,
        writeMultiple: true,
      };
      const r = this.request(VFIO_USER_VERSION, encodeVersion(VFIO_USER_MAJOR, VFIO_USER_MINOR, mine));
      const v = decodeVersion(r.payload);
      if (v.major !== VFIO_USER_MAJOR || v.minor > VFIO_USER_MINOR) {
        throw new KernelError(
          Errno.EPROTO,
          `the server at ${opts.socketPath} answered version ${v.major}.${v.minor}; this client speaks ${VFIO_USER_MAJOR}.${VFIO_USER_MINOR}`,
        );
      }
      this.version = { major: v.major, minor: v.minor };
      this.serverCaps = v.caps;
      this.channel.setMaxSendFds(Math.min(v.caps.maxMsgFds, 16));
    } catch (e) {
      this.channel.close("VERSION failed");
      if (e instanceof KernelError && e.errno === Errno.EBUSY) {
        throw new KernelError(
          Errno.EBUSY,
          `the server at ${opts.socketPath} is serving another client (it takes one at a time)`,
        );
      }
      throw e;
    }
  }

  /** Connects and negotiates VERSION. */
  static connect(opts: VfioUserClientOptions): VfioUserClient {
    return new VfioUserClient(opts);
  }

  get closed(): boolean {
    return this.channel.closed;
  }

  get closeReason(): string | undefined {
    return this.channel.closeReason;
  }

  /** Closes the connection (the server releases everything of this client). */
  close(): void {
    this.channel.close("closed by the client");
  }

  // ---- raw requests ----------------------------------------------------------------------------------------------

  /**
   * Sends a command and waits for its reply (`posted`: NO_REPLY, returns undefined at once). The reply's payload is
   * valid until the next request; its fds belong to the caller. An error reply throws KernelError(errno).
   */
  request(cmd: number, payload?: Uint8Array, fds?: readonly number[]): Frame;
  request(cmd: number, payload: Uint8Array | undefined, fds: readonly number[] | undefined, posted: true): undefined;
  request(cmd: number, payload?: Uint8Array, fds?: readonly number[], posted = false): Frame | undefined {
    const len = payload === undefined ? 0 : payload.length;
    const buf = this.channel.payloadBuffer(len);
    if (payload !== undefined) buf.set(payload);
    return this.commit(cmd, len, fds, posted);
  }

  /** Like `request`, for a payload already written into `payloadBuffer(len)`. */
  commit(cmd: number, len: number, fds?: readonly number[], posted = false): Frame | undefined {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff;
    const flags = VFIO_USER_F_TYPE_COMMAND | (posted ? VFIO_USER_F_NO_REPLY : 0);
    this.channel.commit(id, cmd, flags, 0, len, fds, true);
    if (posted) return undefined;
    const r = this.channel.waitFor((f) => isReply(f) && f.id === id, this.timeoutMs, "dispatch", commandName(cmd));
    if ((r.flags & VFIO_USER_F_ERROR) !== 0) {
      for (const fd of r.fds) closeFd(fd);
      const errno = r.errorNo === 0 ? Errno.EIO : r.errorNo;
      throw new KernelError(errno as Errno, `${commandName(cmd)} to ${this.socketPath} failed: errno ${errno}`);
    }
    return r;
  }

  /** A view of the send buffer for a payload of `len` bytes (then `commit`). */
  payloadBuffer(len: number): Uint8Array {
    return this.channel.payloadBuffer(len);
  }

  // ---- typed requests ------------------------------------------------------------------------------------------

  deviceInfo(): { flags: number; numRegions: number; numIrqs: number } {
    const q = new Uint8Array(uapi.VfioDeviceInfo.minsz);
    writeU32LE(q, 0, q.length);
    const r = this.request(VFIO_USER_DEVICE_GET_INFO, q);
    const p = r.payload;
    if (p.length < 16) throw new KernelError(Errno.EPROTO, `DEVICE_GET_INFO reply has ${p.length} bytes, 16 needed`);
    return { flags: readU32LE(p, 4), numRegions: readU32LE(p, 8), numIrqs: readU32LE(p, 12) };
  }

  /** DEVICE_GET_REGION_INFO with its capability chain (two passes when the chain does not fit at first). */
  regionInfo(index: number): RegionInfoReply {
    let argsz = uapi.VfioRegionInfo.sizeof;
    for (let attempt = 0; attempt < 3; attempt++) {
      const q = new Uint8Array(argsz);
      writeU32LE(q, 0, argsz);
      writeU32LE(q, 8, index);
      const r = this.request(VFIO_USER_DEVICE_GET_REGION_INFO, q);
      const p = r.payload;
      const fd = r.fds[0];
      if (p.length < uapi.VfioRegionInfo.sizeof) {
        if (fd !== undefined) closeFd(fd);
        throw new KernelError(Errno.EPROTO, `DEVICE_GET_REGION_INFO reply has ${p.length} bytes, 32 needed`);
      }
      const need = readU32LE(p, 0);
      const flags = readU32LE(p, 4);
      const capOffset = readU32LE(p, 12);
      // A reply larger than asked for (capabilities that did not fit): ask again with that size.
      if (need > argsz && capOffset === 0) {
        if (fd !== undefined) closeFd(fd);
        argsz = need;
        continue;
      }
      const copy = p.slice();
      const caps = (flags & VFIO_REGION_INFO_FLAG_CAPS) !== 0 && capOffset !== 0 ? parseCapChain(copy, capOffset) : [];
      return {
        index: readU32LE(p, 8),
        flags,
        size: readU64Number(p, 16, "region size"),
        offset: readU64Number(p, 24, "region offset"),
        caps,
        fd,
      };
    }
    throw new KernelError(Errno.EPROTO, `DEVICE_GET_REGION_INFO(${index}): the reply's argsz kept growing`);
  }

  irqInfo(index: number): { index: number; flags: number; count: number } {
    const q = uapi.VfioIrqInfo.encode({ argsz: 16, flags: 0, index, count: 0 });
    const p = this.request(VFIO_USER_DEVICE_GET_IRQ_INFO, q).payload;
    if (p.length < 16) throw new KernelError(Errno.EPROTO, `DEVICE_GET_IRQ_INFO reply has ${p.length} bytes`);
    return { index: readU32LE(p, 8), flags: readU32LE(p, 4), count: readU32LE(p, 12) };
  }

  /** DEVICE_GET_REGION_IO_FDS: the count of ioeventfd sub-regions (fds received are closed). */
  regionIoFds(index: number): number {
    const r = this.request(
      VFIO_USER_DEVICE_GET_REGION_IO_FDS,
      VfioUserRegionIoFds.encode({ argsz: 4096, flags: 0, index, count: 0 }),
    );
    for (const fd of r.fds) closeFd(fd);
    return readU32LE(r.payload, 12);
  }

  /** DEVICE_SET_IRQS without fds (DATA_NONE or DATA_BOOL). */
  setIrqs(flags: number, index: number, start: number, count: number, bools?: readonly boolean[]): void {
    const n = bools?.length ?? 0;
    const q = new Uint8Array(20 + n);
    uapi.VfioIrqSet.encode({ argsz: q.length, flags, index, start, count }, q);
    for (let i = 0; i < n; i++) q[20 + i] = bools![i] ? 1 : 0;
    this.request(VFIO_USER_DEVICE_SET_IRQS, q);
  }

  /**
   * DEVICE_SET_IRQS ACTION_TRIGGER | DATA_EVENTFD for vectors [start, start + fds.length): the fds travel as
   * SCM_RIGHTS. -1 entries de-assign; like QEMU, runs of real fds and runs of -1 go in separate messages, and runs
   * longer than the server's max_msg_fds are split.
   */
  setIrqEventfds(index: number, start: number, fds: readonly number[]): void {
    const flags = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
    const max = Math.max(1, Math.min(this.serverCaps.maxMsgFds, 16));
    for (let i = 0; i < fds.length; ) {
      const valid = fds[i]! >= 0;
      let n = 1;
      while (i + n < fds.length && n < max && fds[i + n]! >= 0 === valid) n++;
      const q = uapi.VfioIrqSet.encode({ argsz: 20, flags, index, start: start + i, count: n });
      this.request(VFIO_USER_DEVICE_SET_IRQS, q, valid ? fds.slice(i, i + n) : undefined);
      i += n;
    }
  }

  /** REGION_READ of `buf.length` bytes into `buf` (split at the server's max_data_xfer_size). Returns bytes read. */
  regionReadInto(index: number, offset: number, buf: Uint8Array): number {
    const max = Math.max(1, Math.min(this.serverCaps.maxDataXferSize, this.maxDataXferSize));
    let done = 0;
    while (done < buf.length) {
      const n = Math.min(max, buf.length - done);
      const q = this.channel.payloadBuffer(16);
      writeU64LE(q, 0, offset + done);
      writeU32LE(q, 8, index);
      writeU32LE(q, 12, n);
      const p = this.commit(VFIO_USER_REGION_READ, 16)!.payload;
      const got = p.length >= 16 ? readU32LE(p, 12) : -1;
      if (got < 0 || got > n || p.length < 16 + got) {
        throw new KernelError(Errno.EPROTO, `REGION_READ reply of ${p.length} bytes does not hold its count ${got}`);
      }
      buf.set(p.subarray(16, 16 + got), done);
      done += got;
      if (got < n) break;
    }
    return done;
  }

  regionRead(index: number, offset: number, count: number): Uint8Array {
    const buf = new Uint8Array(count);
    return buf.subarray(0, this.regionReadInto(index, offset, buf));
  }

  /** REGION_WRITE (posted: NO_REPLY, as QEMU does by default; returns data.length). Returns bytes written. */
  regionWrite(index: number, offset: number, data: Uint8Array, posted = false): number {
    const max = Math.max(1, this.serverCaps.maxDataXferSize);
    let done = 0;
    while (done < data.length || (done === 0 && data.length === 0)) {
      const n = Math.min(max, data.length - done);
      const q = this.channel.payloadBuffer(16 + n);
      writeU64LE(q, 0, offset + done);
      writeU32LE(q, 8, index);
      writeU32LE(q, 12, n);
      q.set(data.subarray(done, done + n), 16);
      const r = this.commit(VFIO_USER_REGION_WRITE, 16 + n, undefined, posted);
      const wrote = r === undefined ? n : readU32LE(r.payload, 12);
      done += wrote;
      if (wrote < n || n === 0) break;
    }
    return done;
  }

  /** REGION_WRITE_MULTI (always posted): up to 200 writes of at most 8 bytes each. */
  regionWriteMulti(writes: readonly { index: number; offset: number; data: Uint8Array }[]): void {
    if (!this.serverCaps.writeMultiple) {
      throw new KernelError(Errno.EOPNOTSUPP, `the server at ${this.socketPath} did not offer write_multiple`);
    }
    if (writes.length > VFIO_USER_MULTI_MAX) {
      throw new KernelError(Errno.EINVAL, `REGION_WRITE_MULTI takes at most ${VFIO_USER_MULTI_MAX} writes`);
    }
    const q = this.channel.payloadBuffer(8 + 24 * writes.length);
    q.fill(0);
    writeU64LE(q, 0, writes.length);
    writes.forEach((w, i) => {
      if (w.data.length > 8) throw new KernelError(Errno.EINVAL, `REGION_WRITE_MULTI entry ${i}: more than 8 bytes`);
      const e = 8 + 24 * i;
      writeU64LE(q, e, w.offset);
      writeU32LE(q, e + 8, w.index);
      writeU32LE(q, e + 12, w.data.length);
      q.set(w.data, e + 16);
    });
    this.commit(VFIO_USER_REGION_WRITE_MULTI, 8 + 24 * writes.length, undefined, true);
  }

  reset(): void {
    this.request(VFIO_USER_DEVICE_RESET);
  }

  /** DMA_MAP. With `memory` the window's bytes are ours; the memfd goes along unless `sendFd` is false. */
  dmaMap(o: DmaMapOptions): void {
    const read = o.read ?? true;
    const write = o.write ?? true;
    const prot = (read ? VFIO_USER_F_DMA_REGION_READ : 0) | (write ? VFIO_USER_F_DMA_REGION_WRITE : 0);
    const offset = o.offset ?? 0;
    if (o.memory !== undefined && offset + o.size > o.memory.size) {
      throw new KernelError(
        Errno.EINVAL,
        `DMA_MAP: window ${offset}+${o.size} runs past guest memory ${o.memory.name} (${o.memory.size} bytes)`,
      );
    }
    const sendFd = o.memory !== undefined && o.sendFd !== false;
    const q = VfioUserDmaMap.encode({
      argsz: VfioUserDmaMap.sizeof,
      flags: prot,
      offset: sendFd ? offset : 0,
      addr: o.iova,
      size: o.size,
    });
    this.request(VFIO_USER_DMA_MAP, q, sendFd ? [o.memory!.fd] : undefined);
    this.windows.push({ iova: o.iova, size: o.size, memory: o.memory, offset, prot });
  }

  /** DMA_UNMAP of one window, or of all (`all`). */
  dmaUnmap(o: { iova: number; size: number } | { all: true }): void {
    const all = "all" in o;
    const q = VfioUserDmaUnmap.encode({
      argsz: VfioUserDmaUnmap.sizeof,
      flags: all ? VFIO_USER_F_DMA_UNMAP_ALL : 0,
      addr: all ? 0 : o.iova,
      size: all ? 0 : o.size,
    });
    this.request(VFIO_USER_DMA_UNMAP, q);
    if (all) this.windows.length = 0;
    else {
      const i = this.windows.findIndex((w) => w.iova === o.iova && w.size === o.size);
      if (i >= 0) this.windows.splice(i, 1);
    }
  }

  // ---- the server's requests -------------------------------------------------------------------------------------

  private onServerRequest(f: Frame): void {
    if (isReply(f)) {
      this.channel.close(`a reply (id ${f.id}) that no request is waiting for`);
      return;
    }
    const posted = (f.flags & VFIO_USER_F_NO_REPLY) !== 0;
    try {
      if (f.fds.length > 0) throw new KernelError(Errno.EINVAL, `${commandName(f.cmd)} from the server carries fds`);
      if (f.cmd === VFIO_USER_DMA_READ || f.cmd === VFIO_USER_DMA_WRITE) this.serveDma(f, posted);
      else throw new KernelError(Errno.ENOSYS, `${commandName(f.cmd)} is not a request a server sends`);
    } catch (e) {
      if (!posted && !this.channel.closed) {
        const errno = e instanceof KernelError ? e.errno : Errno.EIO;
        this.channel.send(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR, errno, undefined, undefined, true);
      }
      if (!(e instanceof KernelError)) throw e;
    }
  }

  private serveDma(f: Frame, posted: boolean): void {
    const L = this.layout;
    const p = f.payload;
    const write = f.cmd === VFIO_USER_DMA_WRITE;
    if (p.length < DMA_RW_FIXED) throw new KernelError(Errno.EINVAL, `${commandName(f.cmd)}: short message`);
    const addr = readU64Number(p, 0, "DMA address");
    const count = L.countBytes === 8 ? readU64Number(p, 8, "DMA count") : readU32LE(p, 8);
    if (count > this.maxDataXferSize) {
      throw new KernelError(Errno.E2BIG, `${commandName(f.cmd)} of ${count} bytes exceeds ${this.maxDataXferSize}`);
    }
    if (write && p.length < L.dataOffset + count) {
      throw new KernelError(Errno.E2BIG, `DMA_WRITE count ${count} is larger than its data`);
    }
    this.dmaRequests++;
    if (write) {
      this.access(addr, p.subarray(L.dataOffset, L.dataOffset + count), true);
      if (!posted) this.channel.send(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY, 0, undefined, undefined, true);
      return;
    }
    if (posted) return;
    const out = this.channel.payloadBuffer(DMA_RW_FIXED + count);
    out.fill(0, 0, DMA_RW_FIXED);
    out.set(p.subarray(0, DMA_RW_FIXED));
    this.access(addr, out.subarray(L.dataOffset, L.dataOffset + count), false);
    this.channel.commit(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY, 0, DMA_RW_FIXED + count, undefined, true);
  }

  /** Copies between `buf` and our window holding [addr, addr + len). */
  private access(addr: number, buf: Uint8Array, write: boolean): void {
    const w = this.windows.find((x) => addr >= x.iova && addr + buf.length <= x.iova + x.size);
    if (w !== undefined && (w.prot & (write ? VFIO_USER_F_DMA_REGION_WRITE : VFIO_USER_F_DMA_REGION_READ)) === 0) {
      throw new KernelError(
        Errno.EPERM,
        `DMA ${write ? "write" : "read"} at 0x${addr.toString(16)}: window forbids it`,
      );
    }
    if (w?.memory !== undefined && !w.memory.closed) {
      const at = w.offset + (addr - w.iova);
      if (write) w.memory.bytes.set(buf, at);
      else buf.set(w.memory.bytes.subarray(at, at + buf.length));
      return;
    }
    if (this.dmaFallback !== undefined) {
      this.dmaFallback(addr, buf, write);
      return;
    }
    throw new KernelError(Errno.EFAULT, `DMA at 0x${addr.toString(16)}+${buf.length}: no memory of ours there`);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// The remote device as VfioDeviceOps

export interface RemoteVfioDeviceOptions {
  /** The name GET_DEVICE_FD will match when registered in a model vfio-core (a UUID). Default: the socket path. */
  readonly name?: string;
  /** Send region writes as posted writes (NO_REPLY), as QEMU does. Default false: errors are reported. */
  readonly postedWrites?: boolean;
}

interface RemoteIrq {
  readonly fd: number;
  readonly watch: Watch | undefined;
  readonly trigger: IrqTrigger;
}

/**
 * A device in another process as `VfioDeviceOps`: every method is a synchronous vfio-user request. Register it in a
 * model vfio-core (`registerEmulatedDevice`) and the VMM attaches it like a local mdev; `open(dma)` then lets the
 * server's DMA_READ/DMA_WRITE reach the VMM's model RAM through that container.
 */
export class RemoteVfioDevice implements VfioDeviceOps {
  readonly name: string;
  readonly client: VfioUserClient;
  private readonly posted: boolean;
  private readonly irqs = new Map<string, RemoteIrq>();
  private info_: VfioDeviceInfo | undefined;
  private dma: VfioDmaAccess | undefined;

  constructor(client: VfioUserClient, opts: RemoteVfioDeviceOptions = {}) {
    this.client = client;
    this.name = opts.name ?? client.socketPath;
    this.posted = opts.postedWrites ?? false;
    client.dmaFallback = (iova, buf, write) => {
      if (this.dma === undefined) {
        throw new KernelError(Errno.EFAULT, `DMA at 0x${iova.toString(16)}: ${this.name} is not open`);
      }
      this.dma.dmaRw(iova as Iova, buf, write);
    };
  }

  open(dma: VfioDmaAccess | undefined): void {
    this.dma = dma;
  }

  close(): void {
    for (const key of [...this.irqs.keys()]) {
      const [index] = key.split(":").map(Number) as [number];
      if (!this.client.closed) {
        try {
          this.client.setIrqs(VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE, index, 0, 0);
        } catch {
          // Best effort: the session is going anyway.
        }
      }
      this.dropIrqs(index, 0, Number.MAX_SAFE_INTEGER);
    }
    this.dma = undefined;
  }

  info(): VfioDeviceInfo {
    this.info_ ??= this.client.deviceInfo();
    return this.info_;
  }

  regionInfo(index: number): VfioRegionInfo {
    const r = this.client.regionInfo(index);
    // The model VMM cannot map a real fd into its model address space: the region is trapped (REGION_READ/WRITE),
    // so MMAP and its areas are withdrawn, as a kernel driver does for a BAR it cannot map.
    if (r.fd !== undefined) closeFd(r.fd);
    const flags = r.flags & ~VFIO_REGION_INFO_FLAG_MMAP & ~VFIO_REGION_INFO_FLAG_CAPS;
    const caps: VfioCapability[] = r.caps
      .filter((c) => c.id !== VFIO_REGION_INFO_CAP_SPARSE_MMAP)
      .map((c) => ({ id: c.id, version: c.version, body: c.bytes.slice(8) }));
    return { index, flags, size: r.size, ...(caps.length > 0 ? { caps } : {}) };
  }

  irqInfo(index: number): VfioIrqInfo {
    const r = this.client.irqInfo(index);
    return { index, flags: r.flags, count: r.count };
  }

  setIrqs(set: VfioIrqSet): void {
    const action =
      set.action === "mask"
        ? VFIO_IRQ_SET_ACTION_MASK
        : set.action === "unmask"
          ? VFIO_IRQ_SET_ACTION_UNMASK
          : VFIO_IRQ_SET_ACTION_TRIGGER;
    const d = set.data;
    if (d.kind === "none") {
      this.client.setIrqs(action | VFIO_IRQ_SET_DATA_NONE, set.index, set.start, set.count);
      if (set.action === "trigger" && set.count === 0) this.dropIrqs(set.index, 0, Number.MAX_SAFE_INTEGER);
      return;
    }
    if (d.kind === "bool") {
      this.client.setIrqs(action | VFIO_IRQ_SET_DATA_BOOL, set.index, set.start, set.count, d.values);
      return;
    }
    const fresh: RemoteIrq[] = [];
    const fds: number[] = [];
    try {
      for (const t of d.triggers) {
        if (t === null) {
          fds.push(-1);
          continue;
        }
        const fd = eventfdCreate();
        const irq: RemoteIrq = { fd, trigger: t, watch: undefined };
        fresh.push(irq);
        fds.push(fd);
      }
      this.client.setIrqEventfds(set.index, set.start, fds);
    } catch (e) {
      for (const x of fresh) closeFd(x.fd);
      throw e;
    }
    this.dropIrqs(set.index, set.start, d.triggers.length);
    let k = 0;
    for (let i = 0; i < d.triggers.length; i++) {
      if (d.triggers[i] === null) continue;
      const irq = fresh[k++]!;
      const watched: RemoteIrq = {
        ...irq,
        watch: Reactor.shared().watch(irq.fd, EPOLLIN, () => this.deliver(watched)),
      };
      this.irqs.set(`${set.index}:${set.start + i}`, watched);
    }
  }

  /** Signals the trigger of every eventfd the server wrote since the last look (for synchronous callers). */
  pollInterrupts(): number {
    let n = 0;
    for (const irq of this.irqs.values()) n += this.deliver(irq);
    return n;
  }

  /** The real eventfd of a vector (tests). */
  eventfdOf(index: number, vector: number): number | undefined {
    return this.irqs.get(`${index}:${vector}`)?.fd;
  }

  private deliver(irq: RemoteIrq): number {
    const n = eventfdRead(irq.fd);
    if (n > 0) irq.trigger.signal();
    return n > 0 ? 1 : 0;
  }

  private dropIrqs(index: number, start: number, count: number): void {
    for (const [key, irq] of this.irqs) {
      const [i, v] = key.split(":").map(Number) as [number, number];
      if (i !== index || v < start || v >= start + count) continue;
      irq.watch?.close();
      closeFd(irq.fd);
      this.irqs.delete(key);
    }
  }

  reset(): void {
    this.client.reset();
  }

  regionRead(index: number, offset: number, buf: Uint8Array): number {
    return this.client.regionReadInto(index, offset, buf);
  }

  regionWrite(index: number, offset: number, buf: Uint8Array): number {
    return this.client.regionWrite(index, offset, buf, this.posted);
  }

  /** DMA_MAP of guest memory (see VfioUserClient.dmaMap). */
  mapDma(o: DmaMapOptions): void {
    this.client.dmaMap(o);
  }

  unmapDma(o: { iova: number; size: number } | { all: true }): void {
    this.client.dmaUnmap(o);
  }
}
