/**
 * Test fixtures for the VMM (not part of the VMM: only tests import this). The test world of mdev/testing.ts (vfio-core
 * with type1, the mdev core, vfio-pci), helpers that create mdevs through sysfs as mdevctl does,
 * host-side "nothing is left" checks, and `pinParent`: a tiny emulated mdev vendor driver that pins guest pages
 * through `VfioDmaAccess` (at open, and when the guest writes a GPA to its BAR0) and unpins them in `dmaUnmap`, so
 * that memory hot-unplug's notification path can be exercised without a GPU.
 *
 * The pin device ("pintest", type "pin"): config space vendor 0x1b36 device 0x00fe (QEMU's test range), class
 * 0xff0000, BAR0 4 KiB of 32-bit MMIO, INTA#. BAR0 registers (4-byte accesses):
 *   0x00 WO  pin the page at this GPA (low 32 bits)      0x04 WO  the GPA's high 32 bits, written first
 *   0x08 RO  pages pinned now                             0x0c WO  write the value to the last pinned GPA (vfio_dma_rw)
 *   0x10 WO  raise INTx (automasked until UNMASK)         0x14 RO  dma_unmap notifications received
 * With `stubborn`, dma_unmap does not unpin (a buggy vendor driver): type1 then fails UNMAP_DMA with EBUSY.
 */
import assert from "node:assert/strict";
import { Errno, type Gpa, gpa, type Iova, KernelError, PAGE_SIZE } from "../core/index.ts";
import { type Host, PciConfigSpace } from "../host/index.ts";
import type { MdevDeviceInstance, MdevParentDriver } from "../mdev/index.ts";
import { type TestWorld, testWorld } from "../mdev/testing.ts";
import {
  type IrqTrigger,
  iovaOfGpa,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  type VfioCore,
  type VfioDeviceOps,
  type VfioDmaAccess,
} from "../vfio/index.ts";

const MiB = 1024 * 1024;

/** The test world (mdev/testing.ts) with 512 MiB of host RAM unless told: what the VMM's tests attach devices in. */
export function vmmTestHost(opts: { memoryBytes?: number } = {}): TestWorld {
  return testWorld({ memoryBytes: opts.memoryBytes ?? 512 * MiB });
}

export type VmmTestHost = TestWorld;

/** mdevctl start: writes the UUID into the type's create file; returns the device's sysfs path. */
export function createMdev(h: VmmTestHost, parent: string, typeDir: string, uuid: string): string {
  h.host.sysfs.write(`/sys/class/mdev_bus/${parent}/mdev_supported_types/${typeDir}/create`, `${uuid}\n`);
  return `/sys/bus/mdev/devices/${uuid}`;
}

/**
 * Host-side proof that a VMM left nothing behind: no pinned frames, no frames its process owns, no vfio containers,
 * no open groups, no open device fds, no IOMMU domain beyond the default ones.
 */
export function assertNothingLeft(
  h: { readonly host: Host; readonly vfio: VfioCore },
  pid: number,
  baseline: { domains: number },
): void {
  const st = h.vfio.inspect();
  assert.deepEqual(st.containers, [], "no vfio container is left");
  for (const g of st.groups) {
    assert.equal(g.open, false, `group ${g.id} is closed`);
    assert.equal(g.container, undefined, `group ${g.id} is in no container`);
    for (const d of g.devices) assert.equal(d.openCount, 0, `device ${d.name} has no open fd`);
  }
  assert.equal(h.host.physmem.stats().pinnedFrames, 0, "no frame is pinned");
  const proc = h.host.process(pid);
  assert.ok(proc !== undefined);
  assert.equal(proc.isAlive, false, "the process exited");
  assert.equal(proc.mm.lockedVm(), 0, "locked_vm is back to 0");
  assert.equal(proc.mm.stats().residentPages, 0, "no page is mapped");
  assert.equal(proc.mm.stats().vmas, 0, "no mapping is left");
  assert.equal(h.host.iommu.stats().domains, baseline.domains, "type1's IOMMU domain is gone");
  h.vfio.checkInvariants();
}

/** One device of the pin test parent. */
export class PinDevice implements VfioDeviceOps {
  readonly config = new PciConfigSpace({
    vendorId: 0x1b36,
    deviceId: 0x00fe,
    classCode: 0xff0000,
    interruptPin: 1,
    bars: [{ index: 0, size: 4096, kind: "mem32" }],
  });
  dma: VfioDmaAccess | undefined;
  /** GPAs pinned now (one page each). */
  readonly pinned = new Set<Gpa>();
  readonly log: string[] = [];
  unmapNotifications = 0;
  private pendingHigh = 0;
  private lastPinned: Gpa | -1 = -1;
  private intx: IrqTrigger | null = null;
  private intxMasked = false;

  constructor(
    readonly name: string,
    /** Pinned at open (a vendor driver that pins its ring at open). */
    private readonly pinAtOpen: Gpa | undefined,
    private readonly stubborn: boolean,
  ) {}

  open(dma: VfioDmaAccess | undefined): void {
    this.dma = dma;
    this.log.push("open");
    if (this.pinAtOpen !== undefined) this.pin(this.pinAtOpen);
  }

  close(): void {
    for (const page of [...this.pinned]) this.unpin(page);
    this.intx = null;
    this.dma = undefined;
    this.log.push("close");
  }

  info() {
    return {
      flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
      numRegions: VFIO_PCI_NUM_REGIONS,
      numIrqs: VFIO_PCI_NUM_IRQS,
    };
  }

  regionInfo(index: number) {
    const rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return { index, flags: rw, size: 256 };
    if (index === VFIO_PCI_BAR0_REGION_INDEX) return { index, flags: rw, size: 4096 };
    return { index, flags: 0, size: 0 };
  }

  irqInfo(index: number) {
    if (index === VFIO_PCI_INTX_IRQ_INDEX) {
      return { index, flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED, count: 1 };
    }
    return { index, flags: 0, count: 0 };
  }

  setIrqs(set: Parameters<VfioDeviceOps["setIrqs"]>[0]): void {
    if (set.index !== VFIO_PCI_INTX_IRQ_INDEX) throw new KernelError(Errno.ENOTTY, "pintest has INTx only");
    if (set.action === "unmask") this.intxMasked = false;
    else if (set.action === "mask") this.intxMasked = true;
    else if (set.data.kind === "eventfd") this.intx = set.data.triggers[0] ?? null;
    else if (set.count === 0) this.intx = null;
  }

  reset(): void {
    this.config.reset();
  }

  regionRead(index: number, offset: number, buf: Uint8Array): number {
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      buf.set(this.config.bytes.subarray(offset, offset + buf.length));
      return buf.length;
    }
    const v = offset === 0x08 ? this.pinned.size : offset === 0x14 ? this.unmapNotifications : 0;
    for (let i = 0; i < buf.length; i++) buf[i] = (v >>> (8 * i)) & 0xff;
    return buf.length;
  }

  regionWrite(index: number, offset: number, buf: Uint8Array): number {
    let v = 0;
    for (let i = buf.length - 1; i >= 0; i--) v = v * 256 + buf[i]!;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      this.config.write(offset, buf.length, v);
      return buf.length;
    }
    switch (offset) {
      case 0x00:
        this.pin(gpa(this.pendingHigh * 2 ** 32 + v)); // the register's value: a GPA
        this.pendingHigh = 0;
        break;
      case 0x04:
        this.pendingHigh = v;
        break;
      case 0x0c:
        if (this.lastPinned !== -1) this.dma?.dmaRw(iovaOfGpa(this.lastPinned), buf, true);
        break;
      case 0x10:
        if (this.intx !== null && !this.intxMasked) {
          this.intxMasked = true;
          this.intx.signal();
        }
        break;
    }
    return buf.length;
  }

  dmaUnmap(iova: Iova, length: number): void {
    this.unmapNotifications++;
    this.log.push(`dmaUnmap ${iova.toString(16)} ${length.toString(16)}`);
    if (this.stubborn) return;
    for (const page of [...this.pinned]) if (page >= iova && page < iova + length) this.unpin(page);
  }

  private pin(at: Gpa): void {
    const page = gpa(at - (at % PAGE_SIZE));
    if (this.dma === undefined || this.pinned.has(page)) return;
    this.dma.pinPages(iovaOfGpa(page), 1, VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
    this.pinned.add(page);
    this.lastPinned = page;
  }

  private unpin(page: Gpa): void {
    this.dma?.unpinPages(iovaOfGpa(page), 1);
    this.pinned.delete(page);
  }
}

/** The pin test parent: one type, "pintest-pin"; `pinAtOpen` and `stubborn` apply to devices created afterwards. */
export function pinParent(): MdevParentDriver & {
  devices: Map<string, PinDevice>;
  pinAtOpen: Gpa | undefined;
  stubborn: boolean;
} {
  const devices = new Map<string, PinDevice>();
  const parent = {
    parentName: "pintest",
    driverName: "pintest",
    types: [{ id: "pin", name: "pin", description: "pins guest pages on request", deviceApi: "vfio-pci" as const }],
    devices,
    pinAtOpen: undefined as Gpa | undefined,
    stubborn: false,
    availability: () => ({ instances: 8 - devices.size }),
    create(uuid: string): MdevDeviceInstance {
      const d = new PinDevice(uuid, parent.pinAtOpen, parent.stubborn);
      devices.set(uuid, d);
      return { ops: d };
    },
    destroy(instance: MdevDeviceInstance): void {
      devices.delete(instance.ops.name);
    },
  };
  return parent;
}
