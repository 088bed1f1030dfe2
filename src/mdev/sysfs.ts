/**
 * The mdev attribute files (drivers/vfio/mdev/mdev_sysfs.c): what each file under a type directory and a device
 * directory shows and how its writes are parsed. The mdev core (core.ts) decides what a create or a remove does;
 * this module only turns bytes into requests and state into text, with Linux's rules:
 *
 * - `mdev_supported_types/<driver>-<id>/create` (0200): a write of fewer than 36 or more than 37 bytes is EINVAL;
 *   otherwise the first 36 bytes must be a UUID (guid_parse), else EINVAL. Linux never looks at a 37th byte, so
 *   "<uuid>\n" (echo) and "<uuid>" (echo -n) both work, and so does any other 37th byte; we do the same. The write
 *   returns the full count on success.
 * - `name`, `description`, `device_api`, `available_instances` (0444): "%s\n" / "%u\n". A description that already
 *   ends in a newline is shown as is (drivers print their own).
 * - `<device>/remove` (0200): kstrtoul(buf, 0): decimal, 0x-hex or 0-octal, one optional leading '+', one optional
 *   trailing newline, nothing else; anything else (or an overflow of 64 bits) is EINVAL. Nonzero removes the device;
 *   zero does nothing; both return the full count.
 *
 * Not modelled: the deprecated `mdev_supported_types/<type>/devices` as a kobject with uevents (it is a plain
 * directory of links here).
 */
import { Errno, KernelError } from "../core/index.ts";
import type { Sysfs } from "../host/index.ts";
import type { MdevAttribute, MdevAvailability, MdevTypeSpec } from "./driver.ts";
import { parseUuid, printable, UUID_STRING_LEN } from "./uuid.ts";

/** /sys/bus/mdev/devices: one link per mdev, named by UUID. */
export const MDEV_BUS_DEVICES_DIR = "/sys/bus/mdev/devices";
/** /sys/class/mdev_bus: one link per parent device. */
export const MDEV_CLASS_DIR = "/sys/class/mdev_bus";
/** The directory under a parent device holding its type directories. */
export const MDEV_SUPPORTED_TYPES = "mdev_supported_types";

/** Files the mdev core owns in a device directory; vendor attributes may not use these names. */
export const MDEV_DEVICE_RESERVED_NAMES: readonly string[] = ["remove", "mdev_type", "iommu_group"];

const encoder = new TextEncoder();

/** The type directory's name: "<driver>-<id>" (mdev_type_add). */
export function mdevTypeDirName(driverName: string, typeId: string): string {
  return `${driverName}-${typeId}`;
}

/** Parses a write to `create`: returns the device name (lower-case UUID). EINVAL for a bad length or UUID. */
export function parseCreateWrite(data: string): string {
  const bytes = encoder.encode(data);
  if (bytes.length < UUID_STRING_LEN || bytes.length > UUID_STRING_LEN + 1) {
    throw new KernelError(
      Errno.EINVAL,
      `create expects a UUID of ${UUID_STRING_LEN} bytes, optionally followed by a newline; got ${bytes.length} ` +
        `bytes ('${printable(data)}')`,
    );
  }
  return parseUuid(data.slice(0, UUID_STRING_LEN));
}

/**
 * kstrtoul(text, 0): the value written, as a bigint. EINVAL for anything that is not one unsigned integer with an
 * optional trailing newline; ERANGE beyond 64 bits (remove_store turns both into EINVAL).
 */
export function kstrtoul(text: string): bigint {
  let s = text;
  if (s.startsWith("+")) s = s.slice(1);
  if (s.endsWith("\n")) s = s.slice(0, -1);
  let radix = 10;
  let digits = s;
  if (s.startsWith("0")) {
    if ((s[1] === "x" || s[1] === "X") && /^[0-9a-fA-F]$/.test(s[2] ?? "")) {
      radix = 16;
      digits = s.slice(2);
    } else {
      radix = 8;
    }
  }
  const valid = radix === 16 ? /^[0-9a-fA-F]+$/ : radix === 8 ? /^[0-7]+$/ : /^[0-9]+$/;
  if (!valid.test(digits)) {
    throw new KernelError(Errno.EINVAL, `'${printable(text)}' is not an unsigned integer`);
  }
  const prefix = radix === 16 ? "0x" : radix === 8 ? "0o" : "";
  const value = BigInt(`${prefix}${digits}`);
  if (value > 0xffff_ffff_ffff_ffffn) {
    throw new KernelError(Errno.ERANGE, `'${printable(text)}' does not fit in 64 bits`);
  }
  return value;
}

/** Parses a write to `remove`: true to remove (nonzero), false to do nothing (zero). EINVAL otherwise. */
export function parseRemoveWrite(data: string): boolean {
  try {
    return kstrtoul(data) !== 0n;
  } catch (e) {
    if (e instanceof KernelError) {
      throw new KernelError(Errno.EINVAL, `remove expects a number (1 removes the device): ${e.message}`);
    }
    throw e;
  }
}

const line = (s: string): string => (s.endsWith("\n") ? s : `${s}\n`);

/** What a type directory asks the core. */
export interface MdevTypeFileHandlers {
  /** Bytes written to `create` (the core parses them with `parseCreateWrite`, so that failures are traced). */
  create(data: string): void;
  availability(): MdevAvailability;
}

/** Creates `<typeDir>/{create,name,description,device_api,available_instances,devices/}`. */
export function addTypeFiles(sysfs: Sysfs, typeDir: string, spec: MdevTypeSpec, h: MdevTypeFileHandlers): void {
  sysfs.mkdir(`${typeDir}/devices`);
  sysfs.addAttribute(`${typeDir}/create`, { write: (data) => h.create(data), mode: 0o200 });
  sysfs.addAttribute(`${typeDir}/name`, { read: () => line(spec.name) });
  sysfs.addAttribute(`${typeDir}/description`, { read: () => line(spec.description) });
  sysfs.addAttribute(`${typeDir}/device_api`, { read: () => line(spec.deviceApi) });
  sysfs.addAttribute(`${typeDir}/available_instances`, {
    read: () => `${Math.max(0, Math.trunc(h.availability().instances))}\n`,
  });
}

/**
 * Checks a vendor attribute name: a relative path of plain components (GVT-g's "intel_vgpu/vgpu_id" style groups are
 * fine), not one of the core's names. EINVAL naming the driver and the attribute otherwise.
 */
export function checkVendorAttributeName(driverName: string, name: string): void {
  const parts = name.split("/");
  const bad =
    name.length === 0 ||
    parts.some((p) => p === "" || p === "." || p === "..") ||
    MDEV_DEVICE_RESERVED_NAMES.includes(parts[0]!);
  if (bad) {
    throw new KernelError(
      Errno.EINVAL,
      `parent driver ${driverName} declares device attribute '${name}': attribute names must be relative paths ` +
        `without '.' or '..' and must not start with ${MDEV_DEVICE_RESERVED_NAMES.join(", ")}`,
    );
  }
}

/** Creates `<deviceDir>/remove` and the vendor attributes (names already checked). */
export function addDeviceFiles(
  sysfs: Sysfs,
  deviceDir: string,
  remove: () => void,
  attributes: Readonly<Record<string, MdevAttribute>>,
): void {
  sysfs.addAttribute(`${deviceDir}/remove`, {
    write: (data) => {
      if (parseRemoveWrite(data)) remove();
    },
    mode: 0o200,
  });
  for (const name of Object.keys(attributes).sort()) {
    const a = attributes[name]!;
    sysfs.addAttribute(`${deviceDir}/${name}`, {
      ...(a.read ? { read: () => a.read!() } : {}),
      ...(a.write ? { write: (v: string) => a.write!(v) } : {}),
    });
  }
}
