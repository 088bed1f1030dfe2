/**
 * VERSION negotiation: the `u16 major, u16 minor, NUL-terminated JSON {"capabilities": {...}}` payload, both ways.
 *
 * Each side advertises what it can *receive* or *handle* (vfio-user.rst, "Version"): `max_msg_fds` (fds per message
 * the sender accepts, default 1), `max_data_xfer_size` (largest `count` of a REGION/DMA read or write it accepts,
 * default 1 MiB), `max_dma_maps` (DMA windows live at once, default 65535), `pgsizes` (DMA map page sizes, default
 * 4096), `write_multiple` (REGION_WRITE_MULTI understood), `migration` and `twin_socket` (not offered here).
 *
 * `negotiate` is the server side: it checks the client's message, answers major 0 with minor = min(client's, ours)
 * (QEMU 10.x rejects a reply whose minor exceeds its own 0), and returns what the session enforces. The reply JSON is
 * kept short (no migration object): QEMU receives the reply into the buffer of its own request, so a reply longer than
 * QEMU's request fails with "reply larger than recv buffer".
 *
 * Errors are KernelError(EINVAL) naming the field and the value ("capabilities.max_msg_fds: -1 is not a
 * non-negative integer"); unknown capability names are ignored, as QEMU and libvfio-user ignore them.
 */
import { Errno, KernelError } from "../core/index.ts";
import {
  DEFAULT_MAX_DATA_XFER_SIZE,
  DEFAULT_MAX_DMA_MAPS,
  DEFAULT_MAX_MSG_FDS,
  DEFAULT_PGSIZES,
  VFIO_USER_MAJOR,
  VFIO_USER_MINOR,
  VfioUserVersion,
} from "./protocol.ts";

/** Capabilities as one side states them (defaults filled in). */
export interface VfioUserCaps {
  readonly maxMsgFds: number;
  readonly maxDataXferSize: number;
  readonly maxDmaMaps: number;
  readonly pgsizes: number;
  readonly writeMultiple: boolean;
  /** Present when the sender offered migration (we never do). */
  readonly migration?: { readonly pgsize: number; readonly maxBitmapSize: number };
}

export interface VersionMessage {
  readonly major: number;
  readonly minor: number;
  readonly caps: VfioUserCaps;
  /** The JSON text as received ("" when absent). */
  readonly json: string;
}

/** What the two ends agreed, from the server's point of view. */
export interface NegotiatedCaps {
  readonly major: number;
  readonly minor: number;
  /** Fds the server may send the client in one message. */
  readonly clientMaxMsgFds: number;
  /** Fds the client may send the server in one message (what the server advertised). */
  readonly serverMaxMsgFds: number;
  /** Largest data count the server accepts in REGION_READ/WRITE (what it advertised). */
  readonly serverMaxDataXferSize: number;
  /** Largest data count the server may use in DMA_READ/DMA_WRITE (the client's limit). */
  readonly clientMaxDataXferSize: number;
  /** DMA windows live at once: the smaller of both sides' limits. */
  readonly maxDmaMaps: number;
  readonly pgsizes: number;
  /** The client may send REGION_WRITE_MULTI (we advertised it). */
  readonly writeMultiple: boolean;
}

export const DEFAULT_CAPS: VfioUserCaps = {
  maxMsgFds: DEFAULT_MAX_MSG_FDS,
  maxDataXferSize: DEFAULT_MAX_DATA_XFER_SIZE,
  maxDmaMaps: DEFAULT_MAX_DMA_MAPS,
  pgsizes: DEFAULT_PGSIZES,
  writeMultiple: false,
};

function bad(field: string, why: string): never {
  throw new KernelError(Errno.EINVAL, `VERSION capabilities.${field}: ${why}`);
}

function uint(v: unknown, field: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    bad(field, `${JSON.stringify(v)} is not a non-negative integer`);
  }
  return v as number;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Parses the JSON of a VERSION message; absent members take the protocol defaults. */
export function parseCapsJson(json: string): VfioUserCaps {
  if (json.length === 0) return DEFAULT_CAPS;
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (e) {
    throw new KernelError(Errno.EINVAL, `VERSION data is not valid JSON: ${(e as Error).message}`);
  }
  if (!isObject(doc)) throw new KernelError(Errno.EINVAL, "VERSION data must be a JSON object");
  const caps = doc.capabilities;
  if (caps === undefined) return DEFAULT_CAPS;
  if (!isObject(caps)) throw new KernelError(Errno.EINVAL, "VERSION data: capabilities must be an object");
  const out: {
    maxMsgFds: number;
    maxDataXferSize: number;
    maxDmaMaps: number;
    pgsizes: number;
    writeMultiple: boolean;
    migration?: { pgsize: number; maxBitmapSize: number };
  } = { ...DEFAULT_CAPS };
  if (caps.max_msg_fds !== undefined) out.maxMsgFds = uint(caps.max_msg_fds, "max_msg_fds");
  if (caps.max_data_xfer_size !== undefined) {
    out.maxDataXferSize = uint(caps.max_data_xfer_size, "max_data_xfer_size");
  }
  if (caps.max_dma_maps !== undefined) out.maxDmaMaps = uint(caps.max_dma_maps, "max_dma_maps");
  if (caps.pgsizes !== undefined) {
    out.pgsizes = uint(caps.pgsizes, "pgsizes");
    if (out.pgsizes === 0 || out.pgsizes % 4096 !== 0)
      bad("pgsizes", `0x${out.pgsizes.toString(16)} has no 4 KiB page`);
  }
  if (caps.write_multiple !== undefined) {
    if (typeof caps.write_multiple !== "boolean") bad("write_multiple", "must be true or false");
    out.writeMultiple = caps.write_multiple as boolean;
  }
  if (caps.migration !== undefined) {
    const m = caps.migration;
    if (!isObject(m)) bad("migration", "must be an object");
    const mm = m as Record<string, unknown>;
    out.migration = {
      pgsize: mm.pgsize === undefined ? DEFAULT_PGSIZES : uint(mm.pgsize, "migration.pgsize"),
      maxBitmapSize:
        mm.max_bitmap_size === undefined ? 256 * 1024 * 1024 : uint(mm.max_bitmap_size, "migration.max_bitmap_size"),
    };
  }
  return out;
}

/** Decodes a VERSION payload (request or reply). EINVAL for a short payload, a missing NUL or bad JSON. */
export function decodeVersion(payload: Uint8Array): VersionMessage {
  const v = VfioUserVersion.decode(payload);
  let json = "";
  if (payload.length > VfioUserVersion.sizeof) {
    const data = payload.subarray(VfioUserVersion.sizeof);
    const nul = data.indexOf(0);
    if (nul < 0) throw new KernelError(Errno.EINVAL, "VERSION data is not NUL-terminated");
    json = Buffer.from(data.buffer, data.byteOffset, nul).toString("utf8");
  }
  return { major: v.major, minor: v.minor, caps: parseCapsJson(json), json };
}

/** The JSON text for a set of capabilities (only the members we speak; migration and twin_socket never). */
export function capsJson(caps: VfioUserCaps): string {
  return JSON.stringify({
    capabilities: {
      max_msg_fds: caps.maxMsgFds,
      max_data_xfer_size: caps.maxDataXferSize,
      max_dma_maps: caps.maxDmaMaps,
      pgsizes: caps.pgsizes,
      write_multiple: caps.writeMultiple,
    },
  });
}

/** A VERSION payload: major, minor, JSON, NUL. */
export function encodeVersion(major: number, minor: number, caps: VfioUserCaps): Uint8Array {
  const json = Buffer.from(capsJson(caps), "utf8");
  const out = new Uint8Array(VfioUserVersion.sizeof + json.length + 1);
  VfioUserVersion.encode({ major, minor }, out);
  out.set(json, VfioUserVersion.sizeof);
  return out;
}

/** The server's own limits, advertised in its reply. */
export interface ServerCapsLimits {
  readonly maxMsgFds: number;
  readonly maxDataXferSize: number;
  readonly maxDmaMaps: number;
}

/**
 * Server side of VERSION: EINVAL for a major other than 0 or pgsizes without 4 KiB; otherwise the reply payload
 * and the negotiated limits.
 */
export function negotiate(
  client: VersionMessage,
  server: ServerCapsLimits,
): { reply: Uint8Array; negotiated: NegotiatedCaps } {
  if (client.major !== VFIO_USER_MAJOR) {
    throw new KernelError(
      Errno.EINVAL,
      `VERSION: the client speaks major version ${client.major}; this server speaks ${VFIO_USER_MAJOR}`,
    );
  }
  if ((client.caps.pgsizes & 4096) === 0) {
    throw new KernelError(
      Errno.EINVAL,
      `VERSION: pgsizes 0x${client.caps.pgsizes.toString(16)} lacks 4 KiB pages, the only size this server maps`,
    );
  }
  const minor = Math.min(client.minor, VFIO_USER_MINOR);
  const maxDmaMaps = Math.min(client.caps.maxDmaMaps, server.maxDmaMaps);
  const mine: VfioUserCaps = {
    maxMsgFds: server.maxMsgFds,
    maxDataXferSize: server.maxDataXferSize,
    maxDmaMaps,
    pgsizes: 4096,
    writeMultiple: true,
  };
  return {
    reply: encodeVersion(VFIO_USER_MAJOR, minor, mine),
    negotiated: {
      major: VFIO_USER_MAJOR,
      minor,
      clientMaxMsgFds: client.caps.maxMsgFds,
      serverMaxMsgFds: server.maxMsgFds,
      serverMaxDataXferSize: server.maxDataXferSize,
      clientMaxDataXferSize: client.caps.maxDataXferSize,
      maxDmaMaps,
      pgsizes: 4096,
      writeMultiple: true,
    },
  };
}
