/**
 * VFIO ioctl request numbers, encoded exactly as Linux's asm-generic/ioctl.h does, and their names.
 *
 * VFIO defines every request with `_IO(VFIO_TYPE, VFIO_BASE + n)`: direction and size are 0 even for requests that
 * carry a struct, because each struct carries its own size (argsz) for extensibility. So the request number is just
 * `(';' << 8) | (100 + n)`, e.g. VFIO_GET_API_VERSION = 0x3b64.
 *
 * The same number means different requests on different kinds of file descriptor (VFIO_BASE + 12 is
 * VFIO_IOMMU_GET_INFO on a container and VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on a device): dispatch on the fd kind,
 * and pass it to `vfioIoctlName` for an unambiguous name.
 *
 * Not listed: the SPAPR TCE and EEH requests, iommufd cdev binding (BIND_IOMMUFD, ATTACH/DETACH_IOMMUFD_PT) and
 * VFIO_MIG_GET_PRECOPY_INFO (on the migration data fd); the model implements none of them.
 */

/** Bits of each part of a request number (asm-generic; x86_64 and arm64 use these). */
export const _IOC_NRBITS = 8;
export const _IOC_TYPEBITS = 8;
export const _IOC_SIZEBITS = 14;
export const _IOC_DIRBITS = 2;
export const _IOC_NRSHIFT = 0;
export const _IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS;
export const _IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS;
export const _IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS;
export const _IOC_NONE = 0;
export const _IOC_WRITE = 1;
export const _IOC_READ = 2;

/** `_IOC(dir, type, nr, size)`, as an unsigned 32-bit number. */
export function _IOC(dir: number, type: number, nr: number, size: number): number {
  return ((dir << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (type << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)) >>> 0;
}
/** `_IO(type, nr)`: no direction, no size. */
export function _IO(type: number, nr: number): number {
  return _IOC(_IOC_NONE, type, nr, 0);
}
export const _IOC_DIR = (req: number): number => (req >>> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1);
export const _IOC_TYPE = (req: number): number => (req >>> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1);
export const _IOC_NR = (req: number): number => (req >>> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1);
export const _IOC_SIZE = (req: number): number => (req >>> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1);

/** ';' */
export const VFIO_TYPE = 0x3b;
export const VFIO_BASE = 100;

// Container (/dev/vfio/vfio)
export const VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0);
export const VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1);
export const VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2);
// Group (/dev/vfio/$GROUP)
export const VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3);
export const VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4);
export const VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5);
export const VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6);
// Device
export const VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7);
export const VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8);
export const VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9);
export const VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10);
export const VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11);
export const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12);
export const VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13);
export const VFIO_DEVICE_QUERY_GFX_PLANE = _IO(VFIO_TYPE, VFIO_BASE + 14);
export const VFIO_DEVICE_GET_GFX_DMABUF = _IO(VFIO_TYPE, VFIO_BASE + 15);
export const VFIO_DEVICE_IOEVENTFD = _IO(VFIO_TYPE, VFIO_BASE + 16);
export const VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17);
// Type1 IOMMU, on the container once VFIO_SET_IOMMU chose type1
export const VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12);
export const VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13);
export const VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14);
export const VFIO_IOMMU_ENABLE = _IO(VFIO_TYPE, VFIO_BASE + 15);
export const VFIO_IOMMU_DISABLE = _IO(VFIO_TYPE, VFIO_BASE + 16);
export const VFIO_IOMMU_DIRTY_PAGES = _IO(VFIO_TYPE, VFIO_BASE + 17);

/** The kind of fd a request is issued on; it decides what an ambiguous number means. */
export type VfioFdKind = "container" | "group" | "device";

export interface VfioIoctlInfo {
  readonly name: string;
  readonly request: number;
  readonly fd: VfioFdKind;
}

/** Every request above, with the fd kind it belongs to. */
export const VFIO_IOCTLS: readonly VfioIoctlInfo[] = Object.freeze([
  { name: "VFIO_GET_API_VERSION", request: VFIO_GET_API_VERSION, fd: "container" },
  { name: "VFIO_CHECK_EXTENSION", request: VFIO_CHECK_EXTENSION, fd: "container" },
  { name: "VFIO_SET_IOMMU", request: VFIO_SET_IOMMU, fd: "container" },
  { name: "VFIO_IOMMU_GET_INFO", request: VFIO_IOMMU_GET_INFO, fd: "container" },
  { name: "VFIO_IOMMU_MAP_DMA", request: VFIO_IOMMU_MAP_DMA, fd: "container" },
  { name: "VFIO_IOMMU_UNMAP_DMA", request: VFIO_IOMMU_UNMAP_DMA, fd: "container" },
  { name: "VFIO_IOMMU_ENABLE", request: VFIO_IOMMU_ENABLE, fd: "container" },
  { name: "VFIO_IOMMU_DISABLE", request: VFIO_IOMMU_DISABLE, fd: "container" },
  { name: "VFIO_IOMMU_DIRTY_PAGES", request: VFIO_IOMMU_DIRTY_PAGES, fd: "container" },
  { name: "VFIO_GROUP_GET_STATUS", request: VFIO_GROUP_GET_STATUS, fd: "group" },
  { name: "VFIO_GROUP_SET_CONTAINER", request: VFIO_GROUP_SET_CONTAINER, fd: "group" },
  { name: "VFIO_GROUP_UNSET_CONTAINER", request: VFIO_GROUP_UNSET_CONTAINER, fd: "group" },
  { name: "VFIO_GROUP_GET_DEVICE_FD", request: VFIO_GROUP_GET_DEVICE_FD, fd: "group" },
  { name: "VFIO_DEVICE_GET_INFO", request: VFIO_DEVICE_GET_INFO, fd: "device" },
  { name: "VFIO_DEVICE_GET_REGION_INFO", request: VFIO_DEVICE_GET_REGION_INFO, fd: "device" },
  { name: "VFIO_DEVICE_GET_IRQ_INFO", request: VFIO_DEVICE_GET_IRQ_INFO, fd: "device" },
  { name: "VFIO_DEVICE_SET_IRQS", request: VFIO_DEVICE_SET_IRQS, fd: "device" },
  { name: "VFIO_DEVICE_RESET", request: VFIO_DEVICE_RESET, fd: "device" },
  { name: "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", request: VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, fd: "device" },
  { name: "VFIO_DEVICE_PCI_HOT_RESET", request: VFIO_DEVICE_PCI_HOT_RESET, fd: "device" },
  { name: "VFIO_DEVICE_QUERY_GFX_PLANE", request: VFIO_DEVICE_QUERY_GFX_PLANE, fd: "device" },
  { name: "VFIO_DEVICE_GET_GFX_DMABUF", request: VFIO_DEVICE_GET_GFX_DMABUF, fd: "device" },
  { name: "VFIO_DEVICE_IOEVENTFD", request: VFIO_DEVICE_IOEVENTFD, fd: "device" },
  { name: "VFIO_DEVICE_FEATURE", request: VFIO_DEVICE_FEATURE, fd: "device" },
] as const);

/**
 * Names a request number for messages and traces. With the fd kind the answer is one name; without it an ambiguous
 * number gives every candidate ("VFIO_IOMMU_GET_INFO|VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"). A number that is not a VFIO
 * request is shown in `_IOC` form ("_IOC(0x0, 0x54, 0x1, 0x0)") or, for a VFIO number the kind does not define, as
 * "VFIO_BASE+30".
 */
export function vfioIoctlName(request: number, fd?: VfioFdKind): string {
  let names = "";
  for (const io of VFIO_IOCTLS) {
    if (io.request !== request || (fd !== undefined && io.fd !== fd)) continue;
    names = names === "" ? io.name : `${names}|${io.name}`;
  }
  if (names !== "") return names;
  if (_IOC_TYPE(request) === VFIO_TYPE && _IOC_DIR(request) === _IOC_NONE && _IOC_SIZE(request) === 0) {
    const n = _IOC_NR(request) - VFIO_BASE;
    return n >= 0 ? `VFIO_BASE+${n}` : `_IO(0x3b, ${_IOC_NR(request)})`;
  }
  const h = (n: number) => `0x${n.toString(16)}`;
  return `_IOC(${h(_IOC_DIR(request))}, ${h(_IOC_TYPE(request))}, ${h(_IOC_NR(request))}, ${h(_IOC_SIZE(request))})`;
}
