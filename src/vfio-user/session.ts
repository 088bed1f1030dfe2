/**
 * One client's session with a served device: the per-connection host Process, its VFIO container, group and device
 * fds, its DMA windows and interrupt eventfds, and a handler per vfio-user command.
 *
 * The device is opened the way an in-process VMM opens it: a host Process (one per connection) opens /dev/vfio/vfio
 * and the device's group, SET_CONTAINER, SET_IOMMU(TYPE1v2), GET_DEVICE_FD(name). Every command then goes through
 * that device fd (ioctl, pread, pwrite) or the container fd (MAP_DMA, UNMAP_DMA), so vfio-core validates exactly as
 * for a local user, and the device (its VfioDeviceOps) cannot tell which kind of VMM it serves. The wire structs are
 * the ioctl structs: payloads go to the ioctls nearly as they come.
 *
 * What the session adds between the wire and the fds, each in its own module:
 * - the connection itself is a `SessionTransport` (transport.ts): the socket Channel in production, an in-memory
 *   transport in tests, as libvfio-user injects transport_ops;
 * - SET_IRQS with eventfds: the interrupt bridge (irq-bridge.ts), real eventfds refused unless they are eventfds and
 *   signalled without ever blocking;
 * - REGION_INFO: the offset field is 0 (vfio-user regions carry their index, not an fd offset), argsz is the size of
 *   the full reply, CAPS is set only when the chain fits (libvfio-user's rule, which QEMU relies on; the kernel sets
 *   it either way); an mmap-able region is exported as a memfd (region-export.ts), or MMAP is withdrawn;
 * - DMA windows (dma.ts), and DMA_READ/DMA_WRITE to the client for windows without an fd (remote-dma.ts): vfio-core's
 *   DMA interposer hook (`VfioDeviceHandle.interposeDma`) sends the device's vfio_dma_rw inside such a window there,
 *   where it becomes a synchronous round trip (others wait, deferred); pins there fail in vfio-core.
 *
 * Errors: a KernelError from a handler becomes an error reply with its errno (none for NO_REPLY messages: they are
 * traced); anything else is a bug: error reply EIO, the connection closes, the process stays up.
 *
 * Disconnect (`release`), in the order a dying VMM's fds would be torn down, each step best effort: VFIO_DEVICE_RESET
 * (so the device is in its post-reset state for the next client), every DMA window unmapped through type1 while the
 * device is open (it gets dma_unmap and unpins), the device fd closed (close_device), eventfds closed, group and
 * container closed, the Process exits (address space torn down), then external frames and real mappings released.
 * Region exports are undone right after the reset, while the device is still open.
 */
import {
  defineTraceEvents,
  Errno,
  isKernelError,
  KernelError,
  readU32LE,
  readU64LE,
  requireBytes,
  writeU32LE,
} from "../core/index.ts";
import type { Host, Process } from "../host/index.ts";
import {
  infoCap,
  parseCapChain,
  regionInfoReply,
  uapi,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_RESET,
  VFIO_PCI_OFFSET_MASK,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_TYPE1v2_IOMMU,
  VfioContainerHandle,
  type VfioDeviceHandle,
  VfioGroupHandle,
  vfioPciIndexToOffset,
} from "../vfio/index.ts";
import { decodeVersion, type NegotiatedCaps, negotiate } from "./caps.ts";
import { type Frame, isReply } from "./connection.ts";
import { DmaTable } from "./dma.ts";
import { IrqBridge } from "./irq-bridge.ts";
import { closeFd } from "./native.ts";
import {
  commandInfo,
  commandName,
  type DmaRwLayout,
  HEADER_SIZE,
  VFIO_USER_DEVICE_FEATURE,
  VFIO_USER_DEVICE_GET_INFO,
  VFIO_USER_DEVICE_GET_IRQ_INFO,
  VFIO_USER_DEVICE_GET_REGION_INFO,
  VFIO_USER_DEVICE_GET_REGION_IO_FDS,
  VFIO_USER_DEVICE_RESET,
  VFIO_USER_DEVICE_SET_IRQS,
  VFIO_USER_DIRTY_PAGES,
  VFIO_USER_DMA_MAP,
  VFIO_USER_DMA_UNMAP,
  VFIO_USER_F_DMA_REGION_READ,
  VFIO_USER_F_DMA_REGION_WRITE,
  VFIO_USER_F_DMA_UNMAP_ALL,
  VFIO_USER_F_ERROR,
  VFIO_USER_F_NO_REPLY,
  VFIO_USER_F_TYPE_COMMAND,
  VFIO_USER_F_TYPE_MASK,
  VFIO_USER_F_TYPE_REPLY,
  VFIO_USER_MIG_DATA_READ,
  VFIO_USER_MIG_DATA_WRITE,
  VFIO_USER_MULTI_DATA,
  VFIO_USER_MULTI_MAX,
  VFIO_USER_REGION_READ,
  VFIO_USER_REGION_WRITE,
  VFIO_USER_REGION_WRITE_MULTI,
  VFIO_USER_VERSION,
  VfioUserDmaMap,
  VfioUserDmaUnmap,
  VfioUserRegionIoFds,
} from "./protocol.ts";
import { RegionExports } from "./region-export.ts";
import { RemoteDma } from "./remote-dma.ts";
import type { SessionTransport } from "./transport.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vfiouser.version": {
      device: string;
      major: number;
      minor: number;
      clientMaxMsgFds: number;
      clientMaxDataXferSize: number;
      maxDmaMaps: number;
    };
    "vfiouser.open": { device: string; pid: number; group: number; regions: number; irqs: number };
    "vfiouser.error": { device: string; cmd: string; id: number; errno: number; posted: boolean; message: string };
    "vfiouser.release": { device: string; windows: number; eventfds: number; reset: boolean; problems: string };
  }
}
defineTraceEvents("vfio-user", {
  "vfiouser.version":
    "{device}: VERSION {major}.{minor} agreed (client takes {clientMaxMsgFds} fds, {clientMaxDataXferSize} bytes; {maxDmaMaps} DMA windows)",
  "vfiouser.open": "{device}: opened by host process {pid} through group {group}: {regions} regions, {irqs} irqs",
  "vfiouser.error": "{device}: {cmd} (id {id}) failed with errno {errno} (posted {posted}): {message}",
  "vfiouser.release":
    "{device}: client gone: {windows} DMA window(s) unmapped, {eventfds} eventfd(s) closed, reset {reset}; problems: {problems}",
});

/** Limits and behaviour of a session (from the server's options). */
export interface SessionConfig {
  readonly host: Host;
  /** /dev/vfio/<group> and the GET_DEVICE_FD name. */
  readonly group: number;
  readonly device: string;
  readonly maxMsgFds: number;
  readonly maxDataXferSize: number;
  readonly maxDmaMaps: number;
  /** How long a DMA_READ/DMA_WRITE to the client may take. */
  readonly replyTimeoutMs: number;
  readonly dmaRwLayout: DmaRwLayout;
}

/** The bytes of info ioctls (argsz) the server accepts. */
const MAX_INFO_ARGSZ = 64 * 1024;
const MAP_OFFSET = VfioUserDmaMap.offsetof("offset");
const MAP_ADDR = VfioUserDmaMap.offsetof("addr");
const MAP_SIZE = VfioUserDmaMap.offsetof("size");
const UNMAP_ADDR = VfioUserDmaUnmap.offsetof("addr");
const UNMAP_SIZE = VfioUserDmaUnmap.offsetof("size");

/**
 * A u64 field as a number. Addresses at or above 2^53 are not exact in a double: this server refuses them, with
 * `errno` and "<what> 0x...".
 */
function u64Below53(p: Uint8Array, at: number, what: string, errno: Errno): number {
  const hi = readU32LE(p, at + 4);
  if (hi >= 0x20_0000) throw new KernelError(errno, `${what} 0x${readU64LE(p, at).toString(16)} is beyond 2^53`);
  return hi * 0x1_0000_0000 + readU32LE(p, at);
}

interface DeviceHandles {
  readonly proc: Process;
  readonly container: VfioContainerHandle;
  readonly group: VfioGroupHandle;
  readonly deviceFd: number;
  readonly flags: number;
  readonly numRegions: number;
  readonly numIrqs: number;
  readonly dma: DmaTable;
}

export class Session {
  readonly cfg: SessionConfig;
  readonly channel: SessionTransport;
  private readonly exports: RegionExports;
  private readonly irqBridge: IrqBridge;
  private readonly remote: RemoteDma;
  private caps: NegotiatedCaps | undefined;
  private dev: DeviceHandles | undefined;
  private scratch = new Uint8Array(4096);
  private released = false;
  /** Commands handled and failed (for stats). */
  handled = 0;
  failed = 0;

  constructor(cfg: SessionConfig, channel: SessionTransport) {
    this.cfg = cfg;
    this.channel = channel;
    this.exports = new RegionExports(cfg.device, cfg.host.physmem, cfg.host.tracer);
    this.irqBridge = new IrqBridge(cfg.device, cfg.host.tracer);
    this.remote = new RemoteDma(channel, {
      device: cfg.device,
      tracer: cfg.host.tracer,
      layout: cfg.dmaRwLayout,
      replyTimeoutMs: cfg.replyTimeoutMs,
    });
  }

  /** Interrupt signals the client's eventfds could not take (counter full, or the fd failed). */
  get lostSignals(): number {
    return this.irqBridge.lostSignals;
  }

  get negotiated(): NegotiatedCaps | undefined {
    return this.caps;
  }

  /** The connection's host process, once VERSION opened the device. */
  get process(): Process | undefined {
    return this.dev?.proc;
  }

  get dmaTable(): DmaTable | undefined {
    return this.dev?.dma;
  }

  get eventfdCount(): number {
    return this.irqBridge.size;
  }

  // ---- dispatch ------------------------------------------------------------------------------------------------

  /** A frame from the channel. Never throws (see the module comment). */
  onFrame(f: Frame): void {
    if (isReply(f) || (f.flags & VFIO_USER_F_TYPE_MASK) !== VFIO_USER_F_TYPE_COMMAND) {
      // Replies are claimed by the waits that expect them; any other is answered with EINVAL, as libvfio-user does,
      // and the connection goes on.
      this.failed++;
      const why = `a message of type ${f.flags & VFIO_USER_F_TYPE_MASK} where a command was expected (nobody waits for a reply with id ${f.id})`;
      this.traceError(f, Errno.EINVAL, why, false);
      try {
        this.replyError(f, Errno.EINVAL);
      } catch {
        // The client is gone.
      }
      return;
    }
    const posted = (f.flags & VFIO_USER_F_NO_REPLY) !== 0;
    try {
      this.handle(f);
      this.handled++;
    } catch (e) {
      this.failed++;
      if (isKernelError(e)) {
        this.traceError(f, e.errno, e.message, posted);
        if (!posted && !this.channel.closed) {
          try {
            this.replyError(f, e.errno);
          } catch {
            // The client is gone (EPIPE): the channel has closed and the session is being released.
          }
        }
        return;
      }
      const msg = e instanceof Error ? (e.stack ?? e.message) : String(e);
      this.traceError(f, Errno.EIO, msg, posted);
      if (!posted && !this.channel.closed) {
        try {
          this.replyError(f, Errno.EIO);
        } catch {
          // The connection is going anyway.
        }
      }
      process.emitWarning(`vfio-user ${this.cfg.device}: bug while handling ${commandName(f.cmd)}: ${msg}`);
      this.channel.close(`internal error while handling ${commandName(f.cmd)}`);
    }
  }

  private handle(f: Frame): void {
    const info = commandInfo(f.cmd);
    if (info === undefined) {
      // libvfio-user's answer to a command it does not know (the spec names none).
      throw new KernelError(Errno.EINVAL, `command ${f.cmd} is not a vfio-user command`);
    }
    if (info.direction !== "client-to-server") {
      throw new KernelError(Errno.EINVAL, `${info.name} is sent by the server, not to it`);
    }
    if (f.payload.length < info.minPayload) {
      throw new KernelError(
        Errno.EINVAL,
        `${info.name} needs at least ${info.minPayload} payload bytes, the message has ${f.payload.length}`,
      );
    }
    if (info.requestFds === "none" && f.fds.length > 0) {
      throw new KernelError(Errno.EINVAL, `${info.name} takes no fds, ${f.fds.length} came with it`);
    }
    if (f.cmd === VFIO_USER_VERSION) {
      this.version(f);
      return;
    }
    const dev = this.dev;
    if (dev === undefined || this.caps === undefined) {
      throw new KernelError(Errno.EINVAL, `${info.name} before VERSION: negotiation must come first`);
    }
    switch (f.cmd) {
      case VFIO_USER_DMA_MAP:
        this.dmaMap(f, dev);
        return;
      case VFIO_USER_DMA_UNMAP:
        this.dmaUnmap(f, dev);
        return;
      case VFIO_USER_DEVICE_GET_INFO:
        this.getInfo(f, dev);
        return;
      case VFIO_USER_DEVICE_GET_REGION_INFO:
        this.getRegionInfo(f, dev);
        return;
      case VFIO_USER_DEVICE_GET_REGION_IO_FDS:
        this.getRegionIoFds(f, dev);
        return;
      case VFIO_USER_DEVICE_GET_IRQ_INFO:
        this.getIrqInfo(f, dev);
        return;
      case VFIO_USER_DEVICE_SET_IRQS:
        this.setIrqs(f, dev);
        return;
      case VFIO_USER_REGION_READ:
        this.regionRead(f, dev);
        return;
      case VFIO_USER_REGION_WRITE:
        this.regionWrite(f, dev);
        return;
      case VFIO_USER_REGION_WRITE_MULTI:
        this.regionWriteMulti(f, dev);
        return;
      case VFIO_USER_DEVICE_RESET:
        dev.proc.ioctl(dev.deviceFd, VFIO_DEVICE_RESET, 0);
        this.reply(f, 0);
        return;
      case VFIO_USER_DIRTY_PAGES:
      case VFIO_USER_DEVICE_FEATURE:
      case VFIO_USER_MIG_DATA_READ:
      case VFIO_USER_MIG_DATA_WRITE:
        throw new KernelError(
          Errno.EOPNOTSUPP,
          `${info.name} is not supported: this server offers no migration or dirty-page tracking`,
        );
      default:
        throw new KernelError(Errno.ENOSYS, `${info.name} is not handled by this server`);
    }
  }

  // ---- replies -------------------------------------------------------------------------------------------------

  /** Sends a reply whose payload (`len` bytes) is already in `channel.payloadBuffer(len)`; nothing for NO_REPLY. */
  private reply(f: Frame, len: number): void {
    if ((f.flags & VFIO_USER_F_NO_REPLY) !== 0) return;
    this.channel.commit(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY, 0, len);
  }

  private replyBytes(f: Frame, bytes: Uint8Array): void {
    if ((f.flags & VFIO_USER_F_NO_REPLY) !== 0) return;
    this.channel.send(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY, 0, bytes);
  }

  private replyError(f: { readonly id: number; readonly cmd: number }, errno: number): void {
    this.channel.send(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY | VFIO_USER_F_ERROR, errno);
  }

  private traceError(f: Frame, errno: number, message: string, posted: boolean): void {
    const t = this.cfg.host.tracer;
    if (t.enabled) {
      t.emit("vfiouser.error", { device: this.cfg.device, cmd: commandName(f.cmd), id: f.id, errno, posted, message });
    }
  }

  // ---- VERSION -------------------------------------------------------------------------------------------------

  private version(f: Frame): void {
    if (this.caps !== undefined) throw new KernelError(Errno.EINVAL, "VERSION was already negotiated");
    const client = decodeVersion(f.payload);
    const { reply, negotiated } = negotiate(client, {
      maxMsgFds: this.cfg.maxMsgFds,
      maxDataXferSize: this.cfg.maxDataXferSize,
      maxDmaMaps: this.cfg.maxDmaMaps,
    });
    this.open(negotiated);
    this.caps = negotiated;
    this.channel.setMaxSendFds(Math.min(negotiated.clientMaxMsgFds, 16));
    const t = this.cfg.host.tracer;
    if (t.enabled) {
      t.emit("vfiouser.version", {
        device: this.cfg.device,
        major: negotiated.major,
        minor: negotiated.minor,
        clientMaxMsgFds: negotiated.clientMaxMsgFds,
        clientMaxDataXferSize: negotiated.clientMaxDataXferSize,
        maxDmaMaps: negotiated.maxDmaMaps,
      });
    }
    this.replyBytes(f, reply);
  }

  /** Opens the device as an in-process VMM would, from a fresh host process. Undone entirely on failure. */
  private open(caps: NegotiatedCaps): void {
    const { host, group, device } = this.cfg;
    const proc = host.spawn(`vfio-user:${device}`, { capIpcLock: true });
    try {
      const container = VfioContainerHandle.open(proc);
      const grp = VfioGroupHandle.open(proc, group);
      const st = grp.status();
      if (!st.viable) {
        throw new KernelError(
          Errno.EPERM,
          `group ${group} of ${device} is not viable: a device in it is not bound to vfio`,
        );
      }
      grp.setContainer(container);
      container.setIommu(VFIO_TYPE1v2_IOMMU);
      const handle = grp.getDevice(device);
      const info = handle.info();
      const dma = new DmaTable({
        proc,
        containerFd: container.fd,
        physmem: host.physmem,
        maxWindows: caps.maxDmaMaps,
        tracer: host.tracer,
        device,
      });
      this.dev = {
        proc,
        container,
        group: grp,
        deviceFd: handle.fd,
        flags: info.flags,
        numRegions: info.numRegions,
        numIrqs: info.numIrqs,
        dma,
      };
      this.interposeDma(handle);
      if (host.tracer.enabled) {
        host.tracer.emit("vfiouser.open", {
          device,
          pid: proc.pid,
          group,
          regions: info.numRegions,
          irqs: info.numIrqs,
        });
      }
    } catch (e) {
      proc.exit();
      throw e;
    }
  }

  /**
   * Routes the device's vfio_dma_rw inside fd-less windows to the client, through vfio-core's declared hook
   * (`VfioDeviceHandle.interposeDma`); vfio-core removes it when the device closes.
   */
  private interposeDma(handle: VfioDeviceHandle): void {
    handle.interposeDma({
      covers: (iova, length) => this.dev?.dma.remoteAt(iova, length) !== undefined,
      dmaRw: (iova, buf, write) => {
        const w = this.dev?.dma.remoteAt(iova, buf.length);
        if (w === undefined) throw new KernelError(Errno.EFAULT, `no window without fd at 0x${iova.toString(16)}`);
        if ((w.prot & (write ? VFIO_USER_F_DMA_REGION_WRITE : VFIO_USER_F_DMA_REGION_READ)) === 0) {
          throw new KernelError(
            Errno.EPERM,
            `vfio_dma_rw ${write ? "write" : "read"} at 0x${iova.toString(16)}: the client mapped that window ${write ? "read-only" : "write-only"}`,
          );
        }
        this.remote.rw(this.caps!, iova, buf, write);
      },
    });
  }

  // ---- DMA windows ---------------------------------------------------------------------------------------------

  private dmaMap(f: Frame, dev: DeviceHandles): void {
    // Read field by field as numbers: every address a VMM sends is below 2^53, and decoding the u64s as bigints cost
    // more than the rest of the message's parsing.
    const p = f.payload;
    const fd = f.fds.length === 1 ? f.fds[0]! : undefined;
    if (fd !== undefined) f.fds[0] = -1;
    let iova: number;
    let size: number;
    let offset: number;
    let flags: number;
    try {
      requireBytes(p, 0, VfioUserDmaMap.minsz, VfioUserDmaMap.name);
      const argsz = readU32LE(p, 0);
      if (argsz < VfioUserDmaMap.minsz) {
        throw new KernelError(Errno.EINVAL, `DMA_MAP: argsz ${argsz} is below ${VfioUserDmaMap.minsz}`);
      }
      if (f.fds.length > 1) throw new KernelError(Errno.EINVAL, `DMA_MAP takes at most one fd, ${f.fds.length} came`);
      flags = readU32LE(p, 4);
      iova = u64Below53(p, MAP_ADDR, "DMA_MAP: addr", Errno.EINVAL);
      size = u64Below53(p, MAP_SIZE, "DMA_MAP: size", Errno.EINVAL);
      offset = u64Below53(p, MAP_OFFSET, "DMA_MAP: offset", Errno.EINVAL);
    } catch (e) {
      if (fd !== undefined) closeFd(fd);
      throw e;
    }
    dev.dma.map({ iova, size, offset, prot: flags }, fd);
    this.reply(f, 0);
  }

  private dmaUnmap(f: Frame, dev: DeviceHandles): void {
    const p = f.payload;
    requireBytes(p, 0, VfioUserDmaUnmap.minsz, VfioUserDmaUnmap.name);
    const argsz = readU32LE(p, 0);
    if (argsz < VfioUserDmaUnmap.minsz) {
      throw new KernelError(Errno.EINVAL, `DMA_UNMAP: argsz ${argsz} is below ${VfioUserDmaUnmap.minsz}`);
    }
    const flags = readU32LE(p, 4);
    if (flags === VFIO_USER_F_DMA_UNMAP_ALL) {
      if (readU64LE(p, UNMAP_ADDR) !== 0n || readU64LE(p, UNMAP_SIZE) !== 0n) {
        throw new KernelError(Errno.EINVAL, "DMA_UNMAP with UNMAP_ALL needs addr 0 and size 0");
      }
      dev.dma.unmapAll();
    } else if (flags === 0) {
      const addr = u64Below53(p, UNMAP_ADDR, "DMA_UNMAP: addr", Errno.ENOENT);
      dev.dma.unmap(addr, u64Below53(p, UNMAP_SIZE, "DMA_UNMAP: size", Errno.ENOENT));
    } else {
      throw new KernelError(
        (flags & ~VFIO_USER_F_DMA_UNMAP_ALL) === 1 ? Errno.EOPNOTSUPP : Errno.EINVAL,
        `DMA_UNMAP: flags 0x${flags.toString(16)} are not supported (0 or UNMAP_ALL)`,
      );
    }
    const out = this.channel.payloadBuffer(VfioUserDmaUnmap.sizeof);
    out.set(p.subarray(0, VfioUserDmaUnmap.sizeof));
    this.reply(f, VfioUserDmaUnmap.sizeof);
  }

  // ---- device info -------------------------------------------------------------------------------------------

  private argsz(f: Frame, min: number, what: string): number {
    const argsz = readU32LE(f.payload, 0);
    if (argsz < min || argsz > MAX_INFO_ARGSZ) {
      throw new KernelError(Errno.EINVAL, `${what}: argsz ${argsz} must be from ${min} to ${MAX_INFO_ARGSZ}`);
    }
    return argsz;
  }

  private getInfo(f: Frame, dev: DeviceHandles): void {
    this.argsz(f, uapi.VfioDeviceInfo.minsz, "DEVICE_GET_INFO");
    // The reply is the 16-byte struct with argsz 16 whatever the client offered (libvfio-user; QEMU reads 16 bytes).
    const buf = new Uint8Array(uapi.VfioDeviceInfo.minsz);
    writeU32LE(buf, 0, buf.length);
    dev.proc.ioctl(dev.deviceFd, VFIO_DEVICE_GET_INFO, buf);
    writeU32LE(buf, 0, buf.length);
    this.replyBytes(f, buf);
  }

  private getRegionInfo(f: Frame, dev: DeviceHandles): void {
    const argsz = this.argsz(f, uapi.VfioRegionInfo.minsz, "DEVICE_GET_REGION_INFO");
    const index = readU32LE(f.payload, 8);
    // Two passes, as a VMM asks: the fixed struct, then the full size it reports.
    const head = new Uint8Array(uapi.VfioRegionInfo.sizeof);
    writeU32LE(head, 0, head.length);
    writeU32LE(head, 8, index);
    dev.proc.ioctl(dev.deviceFd, VFIO_DEVICE_GET_REGION_INFO, head);
    let full = head;
    const needed = readU32LE(head, 0);
    if (needed > head.length) {
      full = new Uint8Array(needed);
      writeU32LE(full, 0, needed);
      writeU32LE(full, 8, index);
      dev.proc.ioctl(dev.deviceFd, VFIO_DEVICE_GET_REGION_INFO, full);
    }
    const r = uapi.VfioRegionInfo.decode(full);
    let flags = r.flags & ~VFIO_REGION_INFO_FLAG_CAPS;
    const chain =
      (r.flags & VFIO_REGION_INFO_FLAG_CAPS) !== 0 && r.cap_offset !== 0 ? parseCapChain(full, r.cap_offset) : [];
    const exported =
      (r.flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0
        ? this.exports.get(dev.proc, dev.deviceFd, index, Number(r.size), chain)
        : undefined;
    const caps = chain
      .filter((c) => exported !== undefined || c.id !== VFIO_REGION_INFO_CAP_SPARSE_MMAP)
      .map((c) => infoCap(c.id, c.version, c.bytes.subarray(8)));
    if (exported === undefined) flags &= ~VFIO_REGION_INFO_FLAG_MMAP;
    const out = regionInfoReply({ flags, index, size: r.size, offset: 0 }, caps, argsz);
    // argsz in the reply is the size of the full reply (vfio-user.rst, "Message sizes"); when the chain did not fit,
    // regionInfoReply has already raised it to that and left the chain out. Unlike the kernel, CAPS is then cleared,
    // as libvfio-user answers: QEMU's vfio-user client rejects CAPS with cap_offset 0 (EINVAL) instead of retrying.
    if (readU32LE(out, 0) <= argsz) writeU32LE(out, 0, out.length);
    else writeU32LE(out, 4, readU32LE(out, 4) & ~VFIO_REGION_INFO_FLAG_CAPS);
    if (exported === undefined || (f.flags & VFIO_USER_F_NO_REPLY) !== 0) this.replyBytes(f, out);
    else this.channel.send(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY, 0, out, [exported.fd]);
  }

  private getRegionIoFds(f: Frame, dev: DeviceHandles): void {
    const q = VfioUserRegionIoFds.decodeMin(f.payload);
    if (q.flags !== 0 || q.count !== 0) {
      throw new KernelError(Errno.EINVAL, "DEVICE_GET_REGION_IO_FDS: flags and count must be 0 in a request");
    }
    if (q.index >= dev.numRegions) {
      throw new KernelError(
        Errno.EINVAL,
        `DEVICE_GET_REGION_IO_FDS: region ${q.index} is out of range: the device has ${dev.numRegions}`,
      );
    }
    if (q.argsz < VfioUserRegionIoFds.sizeof) {
      throw new KernelError(Errno.EINVAL, `DEVICE_GET_REGION_IO_FDS: argsz ${q.argsz} is below 16`);
    }
    // No ioeventfds are offered: the reply has no sub-regions and no fds (libvfio-user's answer without any).
    this.replyBytes(
      f,
      VfioUserRegionIoFds.encode({ argsz: VfioUserRegionIoFds.sizeof, flags: 0, index: q.index, count: 0 }),
    );
  }

  private getIrqInfo(f: Frame, dev: DeviceHandles): void {
    const buf = new Uint8Array(uapi.VfioIrqInfo.sizeof);
    buf.set(f.payload.subarray(0, buf.length));
    dev.proc.ioctl(dev.deviceFd, VFIO_DEVICE_GET_IRQ_INFO, buf);
    this.replyBytes(f, buf);
  }

  // ---- interrupts ----------------------------------------------------------------------------------------------

  private setIrqs(f: Frame, dev: DeviceHandles): void {
    this.irqBridge.set(dev.proc, dev.deviceFd, f.payload, f.fds);
    this.reply(f, 0);
  }

  // ---- region access -------------------------------------------------------------------------------------------

  /** The device-fd offset of (region, offset): EINVAL past the region span or an index beyond the device's. */
  private fdOffset(region: number, offset: number, dev: DeviceHandles, what: string): number {
    if (region >= dev.numRegions) {
      throw new KernelError(
        Errno.EINVAL,
        `${what}: region ${region} is out of range: the device has ${dev.numRegions}`,
      );
    }
    if (offset > VFIO_PCI_OFFSET_MASK) {
      throw new KernelError(Errno.EINVAL, `${what}: offset 0x${offset.toString(16)} is beyond any region`);
    }
    return vfioPciIndexToOffset(region) + offset;
  }

  private checkCount(count: number, what: string): void {
    const max = this.caps!.serverMaxDataXferSize;
    if (count > max) {
      throw new KernelError(Errno.E2BIG, `${what}: count ${count} exceeds max_data_xfer_size ${max}`);
    }
  }

  private readOffset(p: Uint8Array, at: number, what: string): number {
    const hi = readU32LE(p, at + 4);
    if (hi >= 0x100) throw new KernelError(Errno.EINVAL, `${what}: offset is beyond any region`);
    return hi * 0x1_0000_0000 + readU32LE(p, at);
  }

  private regionRead(f: Frame, dev: DeviceHandles): void {
    const p = f.payload;
    const offset = this.readOffset(p, 0, "REGION_READ");
    const region = readU32LE(p, 8);
    const count = readU32LE(p, 12);
    this.checkCount(count, "REGION_READ");
    const at = this.fdOffset(region, offset, dev, "REGION_READ");
    if (this.scratch.length < count) this.scratch = new Uint8Array(Math.max(count, 2 * this.scratch.length));
    const data = this.scratch.subarray(0, count);
    const n = count === 0 ? 0 : dev.proc.pread(dev.deviceFd, data, at);
    if ((f.flags & VFIO_USER_F_NO_REPLY) !== 0) return;
    const out = this.channel.payloadBuffer(16 + n);
    out.set(p.subarray(0, 12));
    writeU32LE(out, 12, n);
    out.set(data.subarray(0, n), 16);
    this.reply(f, 16 + n);
  }

  private regionWrite(f: Frame, dev: DeviceHandles): void {
    const p = f.payload;
    const offset = this.readOffset(p, 0, "REGION_WRITE");
    const region = readU32LE(p, 8);
    const count = readU32LE(p, 12);
    this.checkCount(count, "REGION_WRITE");
    if (p.length < 16 + count) {
      throw new KernelError(
        Errno.EINVAL,
        `REGION_WRITE: count ${count} but the message carries ${p.length - 16} data bytes`,
      );
    }
    const at = this.fdOffset(region, offset, dev, "REGION_WRITE");
    const n = count === 0 ? 0 : dev.proc.pwrite(dev.deviceFd, p.subarray(16, 16 + count), at);
    if ((f.flags & VFIO_USER_F_NO_REPLY) !== 0) return;
    const out = this.channel.payloadBuffer(16);
    out.set(p.subarray(0, 12));
    writeU32LE(out, 12, n);
    this.reply(f, 16);
  }

  private regionWriteMulti(f: Frame, dev: DeviceHandles): void {
    if (!this.caps!.writeMultiple) throw new KernelError(Errno.EINVAL, "REGION_WRITE_MULTI was not negotiated");
    const p = f.payload;
    const hi = readU32LE(p, 4);
    const cnt = readU32LE(p, 0);
    if (hi !== 0 || cnt > VFIO_USER_MULTI_MAX || p.length < 8 + 24 * cnt) {
      throw new KernelError(
        Errno.EINVAL,
        `REGION_WRITE_MULTI: wr_cnt ${hi * 2 ** 32 + cnt} must be at most ${VFIO_USER_MULTI_MAX} and fit the ${p.length}-byte payload`,
      );
    }
    let first: KernelError | undefined;
    for (let i = 0; i < cnt; i++) {
      const e = 8 + 24 * i;
      try {
        const offset = this.readOffset(p, e, "REGION_WRITE_MULTI");
        const region = readU32LE(p, e + 8);
        const count = readU32LE(p, e + 12);
        if (count > VFIO_USER_MULTI_DATA) {
          throw new KernelError(Errno.EINVAL, `REGION_WRITE_MULTI entry ${i}: count ${count} exceeds 8`);
        }
        const at = this.fdOffset(region, offset, dev, "REGION_WRITE_MULTI");
        if (count > 0) dev.proc.pwrite(dev.deviceFd, p.subarray(e + 16, e + 16 + count), at);
      } catch (err) {
        if (!isKernelError(err)) throw err;
        first ??= err;
        this.traceError(f, err.errno, `entry ${i}: ${err.message}`, true);
      }
    }
    if (first !== undefined) throw first;
    this.reply(f, 0);
  }

  // ---- teardown ------------------------------------------------------------------------------------------------

  /** The client is gone: see the module comment. Never throws; problems are traced. Idempotent. */
  release(reason: string): string[] {
    if (this.released) return [];
    this.released = true;
    const problems: string[] = [];
    const dev = this.dev;
    let windows = 0;
    let reset = false;
    const eventfds = this.irqBridge.size;
    const attempt = (what: string, fn: () => void): void => {
      try {
        fn();
      } catch (e) {
        problems.push(`${what}: ${e instanceof Error ? e.message : String(e)}`);
      }
    };
    if (dev !== undefined) {
      const { proc } = dev;
      if ((dev.flags & VFIO_DEVICE_FLAGS_RESET) !== 0) {
        attempt("reset", () => {
          proc.ioctl(dev.deviceFd, VFIO_DEVICE_RESET, 0);
          reset = true;
        });
      }
      attempt("release mmap exports", () => this.exports.release());
      windows = dev.dma.size;
      attempt("unmap DMA windows", () => dev.dma.release());
      attempt("close device", () => proc.close(dev.deviceFd));
      this.irqBridge.closeAll(proc);
      attempt("close group", () => dev.group.close());
      attempt("close container", () => dev.container.close());
      attempt("process exit", () => proc.exit());
      attempt("reap process", () => this.cfg.host.reap(proc.pid));
      attempt("release zombies", () => dev.dma.retryZombies(true));
      if (dev.dma.zombieCount > 0) {
        problems.push(`${dev.dma.zombieCount} DMA window(s) still pinned by the device: their memory stays mapped`);
      }
    } else {
      this.irqBridge.closeAll(undefined);
    }
    const t = this.cfg.host.tracer;
    if (t.enabled) {
      t.emit("vfiouser.release", {
        device: this.cfg.device,
        windows,
        eventfds,
        reset,
        problems: problems.length === 0 ? `none (${reason})` : problems.join("; "),
      });
    }
    return problems;
  }
}

/** The HEADER_SIZE-relative limit of a channel for this session's limits. */
export function maxMessageSize(maxDataXferSize: number): number {
  return HEADER_SIZE + 64 + Math.max(maxDataXferSize, 8 + 24 * VFIO_USER_MULTI_MAX, MAX_INFO_ARGSZ);
}
