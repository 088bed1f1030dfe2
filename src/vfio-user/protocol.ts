/**
 * The vfio-user wire protocol as data: the 16-byte header, the command table, and the payload structs that are not
 * already VFIO ioctl structs (QEMU docs/interop/vfio-user.rst; libvfio-user include/vfio-user.h; QEMU
 * hw/vfio-user/protocol.h). Payloads that are VFIO structs (device info, region info, irq info, irq set) use the
 * vfio/uapi codecs unchanged: the wire structs are the ioctl structs.
 *
 * All fields are little-endian and packed as declared; offsets count from the end of the header.
 *
 * DMA_READ/DMA_WRITE (server to client) have two layouts in the wild, both 32 + count bytes long:
 * - the spec and libvfio-user: `u64 addr @0, u64 count @8, data @16`;
 * - QEMU 10.x (hw/vfio-user/protocol.h VFIOUserDMARW): `u64 offset @0, u32 count @8, data @12`, then 4 bytes of
 *   padding (QEMU checks `size >= sizeof(VFIOUserDMARW)` = 32 and copies `count` bytes at offset 12).
 * `DMA_RW_LAYOUTS` names both; a connection picks one (QEMU's by default, since QEMU is the real client).
 *
 * Not here: the framing and fd bookkeeping (connection.ts), VERSION's JSON (caps.ts).
 */
import { bytes, defineStruct, type StructValue, u16, u32, u64 } from "../core/index.ts";

// ---- header ----

export const VfioUserHeader = defineStruct("vfio_user_header", {
  msg_id: u16(0),
  cmd: u16(2),
  /** Total bytes, header included. */
  msg_size: u32(4),
  flags: u32(8),
  error_no: u32(12),
});
export type VfioUserHeader = StructValue<typeof VfioUserHeader>;
export const HEADER_SIZE = VfioUserHeader.sizeof;

/** flags bits 0-3: the message type. */
export const VFIO_USER_F_TYPE_MASK = 0xf;
export const VFIO_USER_F_TYPE_COMMAND = 0;
export const VFIO_USER_F_TYPE_REPLY = 1;
/** The sender wants no reply (QEMU's posted writes). */
export const VFIO_USER_F_NO_REPLY = 0x10;
/** A reply carrying only the header, with error_no set. */
export const VFIO_USER_F_ERROR = 0x20;

// ---- commands ----

export const VFIO_USER_VERSION = 1;
export const VFIO_USER_DMA_MAP = 2;
export const VFIO_USER_DMA_UNMAP = 3;
export const VFIO_USER_DEVICE_GET_INFO = 4;
export const VFIO_USER_DEVICE_GET_REGION_INFO = 5;
export const VFIO_USER_DEVICE_GET_REGION_IO_FDS = 6;
export const VFIO_USER_DEVICE_GET_IRQ_INFO = 7;
export const VFIO_USER_DEVICE_SET_IRQS = 8;
export const VFIO_USER_REGION_READ = 9;
export const VFIO_USER_REGION_WRITE = 10;
export const VFIO_USER_DMA_READ = 11;
export const VFIO_USER_DMA_WRITE = 12;
export const VFIO_USER_DEVICE_RESET = 13;
/** Removed from the spec (was DIRTY_PAGES); answered ENOTSUP. */
export const VFIO_USER_DIRTY_PAGES = 14;
export const VFIO_USER_REGION_WRITE_MULTI = 15;
export const VFIO_USER_DEVICE_FEATURE = 16;
export const VFIO_USER_MIG_DATA_READ = 17;
export const VFIO_USER_MIG_DATA_WRITE = 18;

export type Direction = "client-to-server" | "server-to-client";
/** Which fds a command may carry (SCM_RIGHTS) in its request. */
export type FdUse = "none" | "optional-one" | "eventfds";

/** One row of the command table. */
export interface CommandInfo {
  readonly cmd: number;
  readonly name: string;
  readonly direction: Direction;
  /** Smallest request payload the receiver accepts (bytes after the header). */
  readonly minPayload: number;
  readonly requestFds: FdUse;
  /** What the reply carries besides the header. */
  readonly reply: string;
}

export const VFIO_USER_COMMANDS: readonly CommandInfo[] = [
  {
    cmd: VFIO_USER_VERSION,
    name: "VERSION",
    direction: "client-to-server",
    minPayload: 4,
    requestFds: "none",
    reply: "major, minor, JSON",
  },
  {
    cmd: VFIO_USER_DMA_MAP,
    name: "DMA_MAP",
    direction: "client-to-server",
    minPayload: 32,
    requestFds: "optional-one",
    reply: "nothing",
  },
  {
    cmd: VFIO_USER_DMA_UNMAP,
    name: "DMA_UNMAP",
    direction: "client-to-server",
    minPayload: 24,
    requestFds: "none",
    reply: "the request echoed",
  },
  {
    cmd: VFIO_USER_DEVICE_GET_INFO,
    name: "DEVICE_GET_INFO",
    direction: "client-to-server",
    minPayload: 16,
    requestFds: "none",
    reply: "vfio_device_info",
  },
  {
    cmd: VFIO_USER_DEVICE_GET_REGION_INFO,
    name: "DEVICE_GET_REGION_INFO",
    direction: "client-to-server",
    minPayload: 32,
    requestFds: "none",
    reply: "vfio_region_info + caps (+ an fd with MMAP)",
  },
  {
    cmd: VFIO_USER_DEVICE_GET_REGION_IO_FDS,
    name: "DEVICE_GET_REGION_IO_FDS",
    direction: "client-to-server",
    minPayload: 16,
    requestFds: "none",
    reply: "argsz, flags, index, count (+ sub-regions and fds)",
  },
  {
    cmd: VFIO_USER_DEVICE_GET_IRQ_INFO,
    name: "DEVICE_GET_IRQ_INFO",
    direction: "client-to-server",
    minPayload: 16,
    requestFds: "none",
    reply: "vfio_irq_info",
  },
  {
    cmd: VFIO_USER_DEVICE_SET_IRQS,
    name: "DEVICE_SET_IRQS",
    direction: "client-to-server",
    minPayload: 20,
    requestFds: "eventfds",
    reply: "nothing",
  },
  {
    cmd: VFIO_USER_REGION_READ,
    name: "REGION_READ",
    direction: "client-to-server",
    minPayload: 16,
    requestFds: "none",
    reply: "offset, region, count, data",
  },
  {
    cmd: VFIO_USER_REGION_WRITE,
    name: "REGION_WRITE",
    direction: "client-to-server",
    minPayload: 16,
    requestFds: "none",
    reply: "offset, region, count",
  },
  {
    cmd: VFIO_USER_DMA_READ,
    name: "DMA_READ",
    direction: "server-to-client",
    minPayload: 16,
    requestFds: "none",
    reply: "address, count, data",
  },
  {
    cmd: VFIO_USER_DMA_WRITE,
    name: "DMA_WRITE",
    direction: "server-to-client",
    minPayload: 16,
    requestFds: "none",
    reply: "nothing",
  },
  {
    cmd: VFIO_USER_DEVICE_RESET,
    name: "DEVICE_RESET",
    direction: "client-to-server",
    minPayload: 0,
    requestFds: "none",
    reply: "nothing",
  },
  {
    cmd: VFIO_USER_DIRTY_PAGES,
    name: "DIRTY_PAGES",
    direction: "client-to-server",
    minPayload: 8,
    requestFds: "none",
    reply: "unsupported",
  },
  {
    cmd: VFIO_USER_REGION_WRITE_MULTI,
    name: "REGION_WRITE_MULTI",
    direction: "client-to-server",
    minPayload: 8,
    requestFds: "none",
    reply: "nothing (always posted)",
  },
  {
    cmd: VFIO_USER_DEVICE_FEATURE,
    name: "DEVICE_FEATURE",
    direction: "client-to-server",
    minPayload: 8,
    requestFds: "none",
    reply: "vfio_device_feature + data",
  },
  {
    cmd: VFIO_USER_MIG_DATA_READ,
    name: "MIG_DATA_READ",
    direction: "client-to-server",
    minPayload: 8,
    requestFds: "none",
    reply: "argsz, size, data",
  },
  {
    cmd: VFIO_USER_MIG_DATA_WRITE,
    name: "MIG_DATA_WRITE",
    direction: "client-to-server",
    minPayload: 8,
    requestFds: "none",
    reply: "nothing",
  },
];

const BY_CMD = new Map(VFIO_USER_COMMANDS.map((c) => [c.cmd, c]));

/** The table row of a command number, or undefined. */
export function commandInfo(cmd: number): CommandInfo | undefined {
  return BY_CMD.get(cmd);
}

/** "REGION_WRITE", or "command 99" for a number the protocol does not define. */
export function commandName(cmd: number): string {
  return BY_CMD.get(cmd)?.name ?? `command ${cmd}`;
}

// ---- payload structs (the ones that are not VFIO ioctl structs) ----

/** VERSION: the NUL-terminated JSON follows at offset 4. */
export const VfioUserVersion = defineStruct("vfio_user_version", { major: u16(0), minor: u16(2) });
export type VfioUserVersion = StructValue<typeof VfioUserVersion>;

/** DMA_MAP: vfio_iommu_type1_dma_map with `vaddr` replaced by `offset` into the fd (QEMU's VFIOUserDMAMap). */
export const VfioUserDmaMap = defineStruct(
  "vfio_user_dma_map",
  { argsz: u32(0), flags: u32(4), offset: u64(8), addr: u64(16), size: u64(24) },
  { minsz: "size" },
);
export type VfioUserDmaMap = StructValue<typeof VfioUserDmaMap>;
export const VFIO_USER_F_DMA_REGION_READ = 1;
export const VFIO_USER_F_DMA_REGION_WRITE = 2;

/** DMA_UNMAP: vfio_iommu_type1_dma_unmap with `iova` named `addr`. */
export const VfioUserDmaUnmap = defineStruct(
  "vfio_user_dma_unmap",
  { argsz: u32(0), flags: u32(4), addr: u64(8), size: u64(16) },
  { minsz: "size" },
);
export type VfioUserDmaUnmap = StructValue<typeof VfioUserDmaUnmap>;
/** Only flag a server must honour besides GET_DIRTY_BITMAP (which we answer ENOTSUP). */
export const VFIO_USER_F_DMA_UNMAP_ALL = 2;
export const VFIO_USER_F_DMA_UNMAP_DIRTY_BITMAP = 1;

/** REGION_READ / REGION_WRITE: `count` data bytes follow at 16 (write request, read reply). */
export const VfioUserRegionAccess = defineStruct("vfio_user_region_access", {
  offset: u64(0),
  region: u32(8),
  count: u32(12),
});
export type VfioUserRegionAccess = StructValue<typeof VfioUserRegionAccess>;

/** REGION_WRITE_MULTI: `wr_cnt` entries follow at 8. */
export const VfioUserWriteMulti = defineStruct("vfio_user_wr_multi", { wr_cnt: u64(0) });
/** One entry: up to 8 data bytes inline. */
export const VfioUserWriteOne = defineStruct("vfio_user_wr_one", {
  offset: u64(0),
  region: u32(8),
  count: u32(12),
  data: bytes(16, 8),
});
export const VFIO_USER_MULTI_DATA = 8;
export const VFIO_USER_MULTI_MAX = 200;

/** DEVICE_GET_REGION_IO_FDS request and reply head; sub-regions (40 bytes each) follow the reply. */
export const VfioUserRegionIoFds = defineStruct(
  "vfio_user_region_io_fds",
  { argsz: u32(0), flags: u32(4), index: u32(8), count: u32(12) },
  { minsz: "count" },
);

/** MIG_DATA_READ / MIG_DATA_WRITE head. */
export const VfioUserMigData = defineStruct("vfio_user_mig_data", { argsz: u32(0), size: u32(4) });

/** Where a DMA_READ/DMA_WRITE keeps its address, count and data (see the module comment). */
export interface DmaRwLayout {
  readonly name: "qemu" | "spec";
  /** Bytes of the count field at offset 8: 4 (QEMU) or 8 (spec). */
  readonly countBytes: 4 | 8;
  /** Offset of the data from the end of the header. */
  readonly dataOffset: number;
}
export const DMA_RW_LAYOUTS: Readonly<Record<"qemu" | "spec", DmaRwLayout>> = {
  qemu: { name: "qemu", countBytes: 4, dataOffset: 12 },
  spec: { name: "spec", countBytes: 8, dataOffset: 16 },
};
/** Every DMA_READ/DMA_WRITE message with data is HEADER_SIZE + DMA_RW_FIXED + count bytes in both layouts. */
export const DMA_RW_FIXED = 16;

// ---- defaults of the protocol (vfio-user.rst "Version" section) ----

export const VFIO_USER_MAJOR = 0;
/** The minor we implement: 0, the one QEMU 10.x speaks (it rejects a reply with a greater minor). */
export const VFIO_USER_MINOR = 0;
export const DEFAULT_MAX_MSG_FDS = 1;
export const DEFAULT_MAX_DATA_XFER_SIZE = 1024 * 1024;
export const DEFAULT_MAX_DMA_MAPS = 65535;
export const DEFAULT_PGSIZES = 4096;
