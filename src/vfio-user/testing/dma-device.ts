/**
 * A test-only emulated-IOMMU device that does DMA into guest memory when a register is written: what the vGPU will do
 * through its GTT, in its smallest form, so vfio-user's DMA paths (memfd windows through type1, vfio_pin_pages, and
 * fd-less windows through DMA_READ/DMA_WRITE) can be checked end to end before the vGPU exists.
 *
 * BAR0 (4 KiB, u32 registers, little-endian):
 * | offset | name    | access                                                                                     |
 * | 0x00   | ID      | RO 0x0d3a7e57                                                                              |
 * | 0x08   | ADDR_LO | RW guest address (IOVA) of the transfer                                                    |
 * | 0x0c   | ADDR_HI | RW                                                                                         |
 * | 0x10   | LEN     | RW bytes                                                                                   |
 * | 0x14   | PATTERN | RW the byte FILL writes                                                                    |
 * | 0x18   | CMD     | WO 1 FILL (vfio_dma_rw write of LEN x PATTERN), 2 READ (vfio_dma_rw read of LEN bytes into |
 * |        |         | BUF), 3 PIN_FILL (vfio_pin_pages, then PATTERN written through the host frames; pins kept),|
 * |        |         | 4 UNPIN (every pin released)                                                               |
 * | 0x1c   | STATUS  | RO 0, or the errno of the last command                                                     |
 * | 0x20   | PINNED  | RO pages pinned now                                                                        |
 * | 0x24   | UNMAPS  | RO dma_unmap notifications received                                                        |
 * | 0x100  | BUF     | RO 256 bytes: the first bytes READ fetched                                                 |
 * Each command signals MSI (index 1) when an eventfd is set. Config space: 256 bytes, vendor 0x1b36 device 0x0d3a.
 * BAR2 (8 KiB): plain memory in two host frames, read and written by REGION_READ/WRITE and mmap-able in its second
 * page (SPARSE_MMAP area [0x1000, 0x2000), plus a TYPE capability): what a framebuffer BAR looks like, for the
 * server's export of mmap-able regions with an fd. With `mmapBar2: false` BAR2 is the same memory, trapped (no MMAP):
 * QEMU stops posting region writes to a device once any of its regions is mmap-able, and a synchronous MMIO write
 * whose handling needs a DMA_READ from QEMU then waits for QEMU's main loop, which is the one blocked on that write.
 *
 * Not a model of any real device; not exported from the vfio-user index.
 */
import { Errno, type Iova, isKernelError, KernelError, PAGE_SIZE, type Pfn } from "../../core/index.ts";
import type { FileMapping, PhysicalMemory } from "../../host/index.ts";
import {
  EMULATED_PCI_DEVICE_INFO,
  type IrqTrigger,
  trappedRegionInfo,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR2_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_RW,
  type VfioDeviceInfo,
  type VfioDeviceOps,
  type VfioDmaAccess,
  type VfioIrqInfo,
  type VfioIrqSet,
  type VfioRegionInfo,
} from "../../vfio/index.ts";

export const DMA_TEST_ID = 0x0d3a7e57;
export const DMA_TEST_REG = {
  ID: 0x00,
  ADDR_LO: 0x08,
  ADDR_HI: 0x0c,
  LEN: 0x10,
  PATTERN: 0x14,
  CMD: 0x18,
  STATUS: 0x1c,
  PINNED: 0x20,
  UNMAPS: 0x24,
  BUF: 0x100,
} as const;
export const DMA_TEST_CMD = { FILL: 1, READ: 2, PIN_FILL: 3, UNPIN: 4 } as const;
const BAR0_SIZE = 4096;
const BAR2_SIZE = 8192;
/** LEN above this is refused (EINVAL in STATUS): the device buffers a transfer. */
const MAX_TRANSFER = 1 << 20;
const CONFIG_SIZE = 256;

export class DmaTestDevice implements VfioDeviceOps {
  readonly name: string;
  private readonly regs = new DataView(new ArrayBuffer(BAR0_SIZE));
  private readonly config = new Uint8Array(CONFIG_SIZE);
  private dma: VfioDmaAccess | undefined;
  private msi: IrqTrigger | null = null;
  /** Pinned pages: iova page -> pfn. */
  private readonly pins = new Map<number, Pfn>();
  unmapNotifications = 0;
  opened = 0;
  /** A buggy device: keeps its pins through dma_unmap (tests of type1's EBUSY and the server's zombie windows). */
  ignoreUnmap = false;

  /** Whether BAR2's second page is mmap-able (MMAP + SPARSE_MMAP); without it BAR2 is trapped memory. */
  readonly mmapBar2: boolean;
  /** BAR2 accesses that came as region reads and writes (trapped), as opposed to through a mapping. */
  bar2Trapped = 0;

  constructor(
    name: string,
    private readonly physmem: PhysicalMemory,
    opts: { readonly mmapBar2?: boolean } = {},
  ) {
    this.name = name;
    this.mmapBar2 = opts.mmapBar2 ?? true;
    const c = new DataView(this.config.buffer);
    c.setUint16(0, 0x1b36, true);
    c.setUint16(2, 0x0d3a, true);
    this.resetRegs();
  }

  get pinnedPages(): number {
    return this.pins.size;
  }

  open(dma: VfioDmaAccess | undefined): void {
    if (dma === undefined) throw new KernelError(Errno.EINVAL, `${this.name} needs an emulated-IOMMU group`);
    this.dma = dma;
    this.opened++;
  }

  close(): void {
    this.unpinAll();
    this.msi = null;
    this.dma = undefined;
  }

  info(): VfioDeviceInfo {
    return EMULATED_PCI_DEVICE_INFO;
  }

  regionInfo(index: number): VfioRegionInfo {
    const rw = VFIO_REGION_RW;
    if (index === VFIO_PCI_BAR0_REGION_INDEX) return trappedRegionInfo(this.name, index, BAR0_SIZE);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return trappedRegionInfo(this.name, index, CONFIG_SIZE);
    if (index === VFIO_PCI_BAR2_REGION_INDEX) {
      const sparse = new Uint8Array(8 + 16);
      const v = new DataView(sparse.buffer);
      v.setUint32(0, 1, true);
      v.setUint32(8, 0x1000, true);
      v.setUint32(16, 0x1000, true);
      const type = new Uint8Array(8);
      new DataView(type.buffer).setUint32(0, 0x8000_1b36, true);
      new DataView(type.buffer).setUint32(4, 7, true);
      if (!this.mmapBar2) {
        return { index, flags: rw, size: BAR2_SIZE, caps: [{ id: VFIO_REGION_INFO_CAP_TYPE, version: 1, body: type }] };
      }
      return {
        index,
        flags: rw | VFIO_REGION_INFO_FLAG_MMAP,
        size: BAR2_SIZE,
        caps: [
          { id: VFIO_REGION_INFO_CAP_SPARSE_MMAP, version: 1, body: sparse },
          { id: VFIO_REGION_INFO_CAP_TYPE, version: 1, body: type },
        ],
      };
    }
    return trappedRegionInfo(this.name, index, 0);
  }

  irqInfo(index: number): VfioIrqInfo {
    return { index, flags: VFIO_IRQ_INFO_EVENTFD, count: index === VFIO_PCI_MSI_IRQ_INDEX ? 1 : 0 };
  }

  setIrqs(set: VfioIrqSet): void {
    if (set.index !== VFIO_PCI_MSI_IRQ_INDEX || set.action !== "trigger") {
      throw new KernelError(Errno.ENOTTY, `${this.name}: only MSI trigger is supported`);
    }
    if (set.data.kind === "eventfd") this.msi = set.data.triggers[0] ?? null;
    else if (set.data.kind === "none" && set.count === 0) this.msi = null;
    else if (set.data.kind === "none") this.msi?.signal();
  }

  reset(): void {
    this.resetRegs();
  }

  regionRead(index: number, offset: number, buf: Uint8Array): number {
    const src = this.region(index, offset, buf.length);
    if (index === VFIO_PCI_BAR2_REGION_INDEX) {
      this.bar2Trapped++;
      return this.bar2Access(offset, buf, false);
    }
    buf.set(src.subarray(offset, offset + buf.length));
    return buf.length;
  }

  regionWrite(index: number, offset: number, buf: Uint8Array): number {
    const dst = this.region(index, offset, buf.length);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      dst.set(buf, offset);
      return buf.length;
    }
    if (index === VFIO_PCI_BAR2_REGION_INDEX) {
      this.bar2Trapped++;
      return this.bar2Access(offset, buf, true);
    }
    for (let i = 0; i < buf.length; i++) {
      const at = offset + i;
      if (at < DMA_TEST_REG.STATUS) dst[at] = buf[i]!;
    }
    if (offset <= DMA_TEST_REG.CMD && offset + buf.length > DMA_TEST_REG.CMD)
      this.command(this.regs.getUint32(DMA_TEST_REG.CMD, true));
    return buf.length;
  }

  dmaUnmap(iova: Iova, length: number): void {
    this.unmapNotifications++;
    this.regs.setUint32(DMA_TEST_REG.UNMAPS, this.unmapNotifications, true);
    if (this.ignoreUnmap) return;
    const first = Math.floor(iova / PAGE_SIZE);
    const last = Math.floor((iova + length - 1) / PAGE_SIZE);
    for (const page of [...this.pins.keys()]) {
      if (page >= first && page <= last) {
        this.dma?.unpinPages((page * PAGE_SIZE) as Iova, 1);
        this.pins.delete(page);
      }
    }
    this.regs.setUint32(DMA_TEST_REG.PINNED, this.pins.size, true);
  }

  /** BAR2's two frames (allocated on first use; the device lives as long as its host). */
  private bar2Pfn: Pfn | undefined;

  private bar2Frames(): Pfn {
    this.bar2Pfn ??= this.physmem.allocContiguous(BAR2_SIZE / PAGE_SIZE);
    return this.bar2Pfn;
  }

  regionMmap(index: number, offset: number, length: number, _prot: number): FileMapping {
    if (!this.mmapBar2 || index !== VFIO_PCI_BAR2_REGION_INDEX || offset < PAGE_SIZE || offset + length > BAR2_SIZE) {
      throw new KernelError(Errno.EINVAL, `${this.name}: only BAR2's second page may be mmapped`);
    }
    return { basePfn: (this.bar2Frames() + offset / PAGE_SIZE) as Pfn, label: `${this.name} BAR2` };
  }

  /** The u32 at `offset` of BAR2 as the device's memory holds it (not an access: tests and state dumps). */
  peekBar2(offset: number): number {
    const b = new Uint8Array(4);
    this.bar2Access(offset, b, false);
    return new DataView(b.buffer).getUint32(0, true);
  }

  private bar2Access(offset: number, buf: Uint8Array, write: boolean): number {
    const base = this.bar2Frames();
    for (let done = 0; done < buf.length; ) {
      const at = offset + done;
      const page = Math.floor(at / PAGE_SIZE);
      const po = at - page * PAGE_SIZE;
      const n = Math.min(buf.length - done, PAGE_SIZE - po);
      if (write) this.physmem.frameForWrite((base + page) as Pfn).set(buf.subarray(done, done + n), po);
      else buf.set(this.physmem.frameForRead((base + page) as Pfn)!.subarray(po, po + n), done);
      done += n;
    }
    return buf.length;
  }

  private region(index: number, offset: number, len: number): Uint8Array {
    const size = this.regionInfo(index).size;
    if (size === 0 || offset + len > size) {
      throw new KernelError(Errno.EINVAL, `${this.name}: access ${offset}+${len} outside region ${index} (${size})`);
    }
    return index === VFIO_PCI_CONFIG_REGION_INDEX ? this.config : new Uint8Array(this.regs.buffer);
  }

  private command(cmd: number): void {
    const r = this.regs;
    const addr = r.getUint32(DMA_TEST_REG.ADDR_HI, true) * 2 ** 32 + r.getUint32(DMA_TEST_REG.ADDR_LO, true);
    const len = r.getUint32(DMA_TEST_REG.LEN, true);
    if (len > MAX_TRANSFER) {
      r.setUint32(DMA_TEST_REG.STATUS, Errno.EINVAL, true);
      return;
    }
    const pattern = r.getUint32(DMA_TEST_REG.PATTERN, true) & 0xff;
    let status = 0;
    try {
      const dma = this.dma;
      if (dma === undefined) throw new KernelError(Errno.ENODEV, `${this.name} is not open`);
      switch (cmd) {
        case DMA_TEST_CMD.FILL:
          dma.dmaRw(addr as Iova, new Uint8Array(len).fill(pattern), true);
          break;
        case DMA_TEST_CMD.READ: {
          const buf = new Uint8Array(len);
          dma.dmaRw(addr as Iova, buf, false);
          new Uint8Array(r.buffer).set(buf.subarray(0, 256), DMA_TEST_REG.BUF);
          break;
        }
        case DMA_TEST_CMD.PIN_FILL: {
          const first = Math.floor(addr / PAGE_SIZE);
          const npage = Math.ceil((addr + len) / PAGE_SIZE) - first;
          const pfns = dma.pinPages((first * PAGE_SIZE) as Iova, npage, 3);
          for (let k = 0; k < npage; k++) {
            if (this.pins.has(first + k)) dma.unpinPages(((first + k) * PAGE_SIZE) as Iova, 1);
            this.pins.set(first + k, pfns[k]!);
          }
          for (let a = addr; a < addr + len; ) {
            const page = Math.floor(a / PAGE_SIZE);
            const n = Math.min(addr + len, (page + 1) * PAGE_SIZE) - a;
            if (!this.physmem.fillBytes(this.pins.get(page)!, a - page * PAGE_SIZE, pattern, n)) {
              throw new KernelError(Errno.EFAULT, `${this.name}: pinned frame of page ${page} is gone`);
            }
            a += n;
          }
          break;
        }
        case DMA_TEST_CMD.UNPIN:
          this.unpinAll();
          break;
        default:
          throw new KernelError(Errno.EINVAL, `${this.name}: unknown command ${cmd}`);
      }
    } catch (e) {
      if (!isKernelError(e)) throw e;
      status = e.errno;
    }
    r.setUint32(DMA_TEST_REG.STATUS, status, true);
    r.setUint32(DMA_TEST_REG.PINNED, this.pins.size, true);
    this.msi?.signal();
  }

  private unpinAll(): void {
    for (const page of this.pins.keys()) this.dma?.unpinPages((page * PAGE_SIZE) as Iova, 1);
    this.pins.clear();
    this.regs.setUint32(DMA_TEST_REG.PINNED, 0, true);
  }

  private resetRegs(): void {
    new Uint8Array(this.regs.buffer).fill(0);
    this.regs.setUint32(DMA_TEST_REG.ID, DMA_TEST_ID, true);
    this.regs.setUint32(DMA_TEST_REG.PINNED, this.pins.size, true);
    this.regs.setUint32(DMA_TEST_REG.UNMAPS, this.unmapNotifications, true);
  }
}
