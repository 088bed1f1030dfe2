/**
 * The service's view of a model host (`MdevHostApi`) over an assembled System: parents, types and devices from the
 * mdev core; vendor attributes written through /sys, as mdevctl writes them (so a read-only attribute fails with
 * EACCES and a vendor's EINVAL comes back with its sentence).
 */
import { Errno, KernelError } from "../core/index.ts";
import type { System } from "../scenario/index.ts";
import { serveDevice, type VfioUserServer } from "../vfio-user/index.ts";
import type { MdevHostApi } from "./service.ts";
import { deviceSocketPathOf } from "./socket-path.ts";

export interface SystemHostApiOptions {
  /**
   * Serve every started device over vfio-user on `<serveDir>/<uuid>.sock` (mode 0600), so a real VMM can attach it;
   * the socket goes before the device is removed. Omitted: no sockets.
   */
  readonly serveDir?: string;
  /** Adaptive polling of each served device's client socket (VfioUserServerOptions.pollMaxNs). Default 0: off. */
  readonly pollMaxNs?: number;
}

/** The host API plus the vfio-user servers it runs (closed by `closeServers`, e.g. at daemon shutdown). */
export type SystemHostApi = MdevHostApi & { closeServers(): void };

export function systemHostApi(system: System, opts: SystemHostApiOptions = {}): SystemHostApi {
  const { mdev, sysfs } = system;
  const servers = new Map<string, { socket: string; server: VfioUserServer }>();
  const stopServing = (uuid: string): void => {
    const s = servers.get(uuid);
    if (s === undefined) return;
    servers.delete(uuid);
    s.server.close();
  };
  return {
    parents: () => mdev.parents().map((p) => p.name),
    types: (parent) =>
      mdev.types(parent).map((t) => ({
        type: t.type,
        name: t.name,
        description: t.description,
        deviceApi: t.deviceApi,
        availableInstances: t.availableInstances,
        ...(t.reason !== undefined ? { reason: t.reason } : {}),
      })),
    devices: () =>
      mdev.list().map((d) => ({
        uuid: d.uuid,
        parent: d.parent,
        type: d.type,
        iommuGroup: d.group,
        sysfsPath: d.sysfsPath,
        driver: d.driver,
        ...(servers.has(d.uuid) ? { vfioUserSocket: servers.get(d.uuid)!.socket } : {}),
      })),
    create: (parent, type, uuid) => {
      mdev.create(parent, type, uuid);
      if (opts.serveDir === undefined) return;
      const socket = deviceSocketPathOf(opts.serveDir, uuid);
      try {
        servers.set(uuid, {
          socket,
          server: serveDevice({ socketPath: socket, system, uuid, pollMaxNs: opts.pollMaxNs ?? 0 }),
        });
      } catch (e) {
        // Nothing half-done: a device the daemon cannot serve is not left running.
        mdev.remove(uuid);
        throw e;
      }
    },
    remove: (uuid) => {
      // The socket goes first: a connected VMM holds the device open, and removing it would fail with EBUSY.
      stopServing(uuid);
      mdev.remove(uuid);
    },
    closeServers: () => {
      for (const uuid of [...servers.keys()]) stopServing(uuid);
    },
    attributeNames: (uuid) => mdev.device(uuid)?.attributes ?? [],
    writeAttribute: (uuid, name, value) => {
      const d = mdev.device(uuid);
      if (d === undefined) throw new KernelError(Errno.ENODEV, `no mdev device ${uuid}`);
      sysfs.write(`${d.sysfsPath}/${name}`, value);
    },
  };
}
