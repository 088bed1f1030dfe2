/**
 * vfio-user: the VFIO device API over a UNIX socket, both ends. `serveDevice` serves any device of the host model (an
 * mdev vGPU, an mtty, a vfio-pci device) to a real VMM such as QEMU >= 10.1 (vfio-user-pci) or to our client;
 * `VfioUserClient` and `RemoteVfioDevice` let our VMM use a device that lives in another process through the same
 * VfioDeviceOps interface as a local one. Depends on core, host and vfio; the OS is reached only through native.ts
 * (koffi) and reactor.ts (libuv poll handles on Node's own loop).
 */
export {
  capsJson,
  DEFAULT_CAPS,
  decodeVersion,
  encodeVersion,
  type NegotiatedCaps,
  negotiate,
  parseCapsJson,
  type ServerCapsLimits,
  type VersionMessage,
  type VfioUserCaps,
} from "./caps.ts";
export {
  type DmaFallback,
  type DmaMapOptions,
  GuestMemory,
  type RegionInfoReply,
  RemoteVfioDevice,
  type RemoteVfioDeviceOptions,
  VfioUserClient,
  type VfioUserClientOptions,
} from "./client.ts";
export {
  Channel,
  type ChannelHandlers,
  type ChannelOptions,
  type Frame,
  isReply,
  type ProtocolErrorInfo,
} from "./connection.ts";
export { type DmaMapRequest, DmaTable, type DmaTableOptions, type DmaWindow } from "./dma.ts";
export * from "./protocol.ts";
export { Reactor } from "./reactor.ts";
export {
  checkPollMaxNs,
  MAX_POLL_NS,
  type ServeDeviceOptions,
  type ServeTarget,
  serveDevice,
  VfioUserServer,
  type VfioUserServerOptions,
  type VfioUserServerState,
} from "./server.ts";
export { maxMessageSize, Session, type SessionConfig } from "./session.ts";
