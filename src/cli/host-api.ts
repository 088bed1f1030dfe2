/**
 * The service's view of a model host (`MdevHostApi`) over an assembled System: parents, types and devices from the
 * mdev core; vendor attributes written through /sys, as mdevctl writes them (so a read-only attribute fails with
 * EACCES and a vendor's EINVAL comes back with its sentence).
 */
import { Errno, KernelError } from "../core/index.ts";
import type { System } from "../scenario/index.ts";
import type { MdevHostApi } from "./service.ts";

export function systemHostApi(system: System): MdevHostApi {
  const { mdev, sysfs } = system;
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
      })),
    create: (parent, type, uuid) => {
      mdev.create(parent, type, uuid);
    },
    remove: (uuid) => mdev.remove(uuid),
    attributeNames: (uuid) => mdev.device(uuid)?.attributes ?? [],
    writeAttribute: (uuid, name, value) => {
      const d = mdev.device(uuid);
      if (d === undefined) throw new KernelError(Errno.ENODEV, `no mdev device ${uuid}`);
      sysfs.write(`${d.sysfsPath}/${name}`, value);
    },
  };
}
