/**
 * End to end: an mdev created through sysfs is found and opened by a VMM exactly as QEMU does it
 * (hw/vfio: sysfsdev -> realpath(<sysfsdev>/iommu_group) -> group number -> /dev/vfio/<N>, SET_CONTAINER,
 * SET_IOMMU(TYPE1v2), GET_DEVICE_FD(<uuid>)), the vendor's device ops answer, guest memory mapped by the VMM reaches
 * the vendor through vfio_pin_pages, and removal waits for the VMM to let go.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, type Iova, KernelError, PAGE_SIZE } from "../src/core/index.ts";
import { createMttyParent, MTTY_VENDOR_ID } from "../src/devices/index.ts";
import { type Host, PROT_READ, PROT_WRITE, type Process } from "../src/host/index.ts";
import type { MdevDeviceInstance, MdevParentDriver } from "../src/mdev/index.ts";
import { testWorld } from "../src/mdev/testing.ts";
import {
  uapi,
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_GET_INFO,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_SET_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  type VfioDeviceOps,
  type VfioDmaAccess,
} from "../src/vfio/index.ts";

const UUID = "0b8b1a6e-7c5d-4d3e-9f10-2a3b4c5d6e7f";

function setup() {
  const { host, rec, vfio, mdev } = testWorld();
  return { host, rec, vfio, mdev, sysfs: host.sysfs };
}

function cString(s: string): Uint8Array {
  const b = new TextEncoder().encode(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

function int32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, v, true);
  return b;
}

/**
 * What QEMU does with sysfsdev=/sys/bus/mdev/devices/<uuid> (vfio_device_get_name, vfio_device_groupid,
 * vfio_get_group): stat the device, readlink <sysfsdev>/iommu_group, sscanf("%d") its basename; the device name is
 * the basename of sysfsdev.
 */
function qemuAttach(host: Host, qemu: Process, sysfsdev: string) {
  assert.equal(host.sysfs.stat(sysfsdev).kind, "dir");
  const groupPath = host.sysfs.readlink(`${sysfsdev}/iommu_group`);
  const groupId = Number.parseInt(groupPath.slice(groupPath.lastIndexOf("/") + 1), 10);
  assert.equal(host.sysfs.realpath(`${sysfsdev}/iommu_group`), `/sys/kernel/iommu_groups/${groupId}`);
  const name = sysfsdev.slice(sysfsdev.lastIndexOf("/") + 1);
  const container = qemu.open("/dev/vfio/vfio");
  assert.equal(qemu.ioctl(container, VFIO_GET_API_VERSION), VFIO_API_VERSION);
  assert.equal(qemu.ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), 1);
  const group = qemu.open(`/dev/vfio/${groupId}`);
  const status = uapi.VfioGroupStatus.encode({ argsz: uapi.VfioGroupStatus.sizeof, flags: 0 });
  qemu.ioctl(group, VFIO_GROUP_GET_STATUS, status);
  assert.ok((uapi.VfioGroupStatus.getNumber(status, "flags") & VFIO_GROUP_FLAGS_VIABLE) !== 0, "group is viable");
  qemu.ioctl(group, VFIO_GROUP_SET_CONTAINER, int32(container));
  qemu.ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  const device = qemu.ioctl(group, VFIO_GROUP_GET_DEVICE_FD, cString(name));
  return { groupId, container, group, device };
}

function deviceInfo(qemu: Process, fd: number) {
  const buf = uapi.VfioDeviceInfo.encode({
    argsz: uapi.VfioDeviceInfo.sizeof,
    flags: 0,
    num_regions: 0,
    num_irqs: 0,
    cap_offset: 0,
  });
  qemu.ioctl(fd, VFIO_DEVICE_GET_INFO, buf);
  return uapi.VfioDeviceInfo.decode(buf);
}

const errno = (e: Errno, re?: RegExp) => (err: unknown) =>
  err instanceof KernelError && err.errno === e && (re === undefined || re.test(err.message));

describe("mdev + vfio end to end", () => {
  it("QEMU's path from sysfsdev to a device fd reaches the mtty device; removal waits for close", () => {
    const { host, vfio, mdev, sysfs, rec } = setup();
    mdev.registerParent(createMttyParent({ tracer: host.tracer }));
    const types = "/sys/class/mdev_bus/mtty/mdev_supported_types";
    assert.deepEqual(sysfs.readdir(types), ["mtty-1", "mtty-2"]);
    assert.equal(sysfs.read(`${types}/mtty-2/available_instances`), "12\n");
    assert.equal(sysfs.write(`${types}/mtty-2/create`, `${UUID}\n`), 37);
    assert.equal(sysfs.read(`${types}/mtty-2/available_instances`), "11\n");
    assert.equal(sysfs.read(`/sys/bus/mdev/devices/${UUID}/vendor/sample_mdev_dev`), `This is MDEV ${UUID}\n`);

    const qemu = host.spawn("qemu");
    const h = qemuAttach(host, qemu, `/sys/bus/mdev/devices/${UUID}`);
    assert.equal(h.groupId, mdev.device(UUID)!.group);
    const info = deviceInfo(qemu, h.device);
    assert.equal(info.num_regions, 9);
    assert.equal(info.num_irqs, 5);
    assert.ok((info.flags & VFIO_DEVICE_FLAGS_PCI) !== 0);
    const cfg = new Uint8Array(2);
    qemu.pread(h.device, cfg, VFIO_PCI_CONFIG_REGION_INDEX * 2 ** 40);
    assert.equal(cfg[0]! | (cfg[1]! << 8), MTTY_VENDOR_ID);

    const remove = `/sys/bus/mdev/devices/${UUID}/remove`;
    assert.throws(() => sysfs.write(remove, "1"), errno(Errno.EBUSY, /cannot remove mdev .* open fd/));
    assert.throws(() => mdev.unregisterParent("mtty"), errno(Errno.EBUSY, /1 open fd/));
    assert.equal(mdev.device(UUID)?.uuid, UUID, "a refused remove changes nothing");
    assert.equal(host.devfs.exists(`/dev/vfio/${h.groupId}`), true);
    assert.equal(rec.named("mdev.remove.fail").at(-1)!.fields.errno, Errno.EBUSY);
    mdev.checkInvariants();
    vfio.checkInvariants();

    qemu.close(h.device);
    assert.equal(sysfs.write(remove, "1"), 1);
    qemu.close(h.group);
    qemu.close(h.container);
    assert.equal(host.devfs.exists(`/dev/vfio/${h.groupId}`), false);
    assert.equal(sysfs.exists(`/sys/kernel/iommu_groups/${h.groupId}`), false);
    assert.deepEqual(sysfs.readdir("/sys/bus/mdev/devices"), []);
    assert.deepEqual(vfio.inspect().groups, []);
    assert.equal(sysfs.read(`${types}/mtty-2/available_instances`), "12\n");
    mdev.checkInvariants();
    vfio.checkInvariants();
  });

  it("the vendor pins guest memory the VMM mapped, through the device's DMA access", () => {
    const { host, mdev, sysfs } = setup();
    const log: string[] = [];
    let dma: VfioDmaAccess | undefined;
    const ops = (name: string): VfioDeviceOps => ({
      name,
      open: (d) => {
        dma = d;
        log.push("open");
      },
      close: () => {
        log.push("close");
        dma = undefined;
      },
      info: () => ({ flags: VFIO_DEVICE_FLAGS_PCI, numRegions: 9, numIrqs: 5 }),
      regionInfo: (index) => ({ index, flags: 0, size: 0 }),
      irqInfo: (index) => ({ index, flags: 0, count: 0 }),
      setIrqs: () => {},
      reset: () => {},
      regionRead: () => 0,
      regionWrite: () => 0,
      dmaUnmap: (iova, length) => {
        log.push(`dmaUnmap ${iova} ${length}`);
        dma?.unpinPages(iova, 1);
      },
    });
    const parent: MdevParentDriver = {
      parentName: "vgpu0",
      driverName: "toy",
      types: [{ id: "x", name: "X", description: "toy", deviceApi: "vfio-pci" }],
      availability: () => ({ instances: 1 }),
      create: (uuid): MdevDeviceInstance => ({ ops: ops(uuid) }),
      destroy: () => void log.push("destroy"),
    };
    mdev.registerParent(parent);
    sysfs.write("/sys/class/mdev_bus/vgpu0/mdev_supported_types/toy-x/create", UUID);
    const qemu = host.spawn("qemu", { rlimitMemlockBytes: 1 << 20 });
    const h = qemuAttach(host, qemu, `/sys/bus/mdev/devices/${UUID}`);
    assert.deepEqual(log, ["open"]);
    assert.ok(dma, "an emulated-IOMMU device gets DMA access on open");

    const ram = qemu.mm.mmap(4 * PAGE_SIZE, PROT_READ | PROT_WRITE, { name: "guest-ram" });
    qemu.mm.write(ram, new TextEncoder().encode("guest"));
    const map = uapi.VfioIommuType1DmaMap.encode({
      argsz: uapi.VfioIommuType1DmaMap.sizeof,
      flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
      vaddr: ram,
      iova: 0x10000,
      size: 4 * PAGE_SIZE,
    });
    qemu.ioctl(h.container, VFIO_IOMMU_MAP_DMA, map);
    const [pfn] = dma!.pinPages(0x10000 as Iova, 1, VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
    const seen = new Uint8Array(5);
    dma!.dmaRw(0x10000 as Iova, seen, false);
    assert.equal(new TextDecoder().decode(seen), "guest");
    assert.equal(typeof pfn, "number");

    const unmap = uapi.VfioIommuType1DmaUnmap.encode({
      argsz: uapi.VfioIommuType1DmaUnmap.sizeof,
      flags: 0,
      iova: 0x10000,
      size: 4 * PAGE_SIZE,
    });
    qemu.ioctl(h.container, VFIO_IOMMU_UNMAP_DMA, unmap);
    assert.deepEqual(log, ["open", `dmaUnmap ${0x10000} ${4 * PAGE_SIZE}`]);

    qemu.exit();
    assert.deepEqual(log.slice(-1), ["close"]);
    mdev.remove(UUID);
    assert.deepEqual(log.slice(-1), ["destroy"]);
    assert.deepEqual(host.devfs.list(), ["/dev/vfio/vfio"]);
  });
});
