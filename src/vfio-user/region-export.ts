/**
 * Region exports: an mmap-able region of the served device handed to the client as a memfd, as libvfio-user does.
 * On the first REGION_INFO for such a region the session asks for its export: a memfd of the region's size is created
 * and mapped, the device fd is mmap'd in the model over each mmap-able area (the SPARSE_MMAP areas, or the whole
 * region) and those frames' bytes move into the memfd (`PhysicalMemory.shareFrames`), so the client's mapping and the
 * device share the memory. If any step fails the export is withdrawn (remembered as such: the client traps every
 * access instead) and nothing is left half-done.
 *
 * `release` (before the device file closes) gives the frames their own memory back with the bytes they hold now,
 * unmaps and closes the memfds.
 */
import { Errno, KernelError, PAGE_SIZE, type Pfn, type Tracer } from "../core/index.ts";
import type { PhysicalMemory, Process } from "../host/index.ts";
import { decodeSparseMmapCap, VFIO_REGION_INFO_CAP_SPARSE_MMAP, vfioPciIndexToOffset } from "../vfio/index.ts";
import { closeFd, MAP_SHARED, type Mapping, memfdCreate, mmapFd, PROT_READ, PROT_WRITE } from "./native.ts";

/** An mmap-able region exported as a memfd: the frames it shares with the device. */
export interface RegionExport {
  readonly fd: number;
  readonly mapping: Mapping;
  readonly areas: { readonly pfn: Pfn; readonly pages: number }[];
}

export class RegionExports {
  /** By region index; undefined: tried and withdrawn. */
  private readonly exports = new Map<number, RegionExport | undefined>();

  constructor(
    private readonly device: string,
    private readonly physmem: PhysicalMemory,
    private readonly tracer: Tracer,
  ) {}

  /**
   * The memfd export of mmap-able region `index` (made on first use), or undefined when it cannot be exported: the
   * caller then withdraws MMAP. `chain` is the region's capability chain (for its SPARSE_MMAP areas).
   */
  get(
    proc: Process,
    deviceFd: number,
    index: number,
    size: number,
    chain: readonly { id: number; bytes: Uint8Array }[],
  ): RegionExport | undefined {
    if (this.exports.has(index)) return this.exports.get(index);
    const bytes = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
    const sparse = chain.find((c) => c.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP);
    let fd = -1;
    let mapping: Mapping | undefined;
    const areas: { pfn: Pfn; pages: number }[] = [];
    const physmem = this.physmem;
    try {
      if (bytes === 0 || !Number.isSafeInteger(bytes)) throw new KernelError(Errno.EINVAL, `region size ${size}`);
      const wanted =
        sparse === undefined
          ? [{ offset: 0, size: bytes }]
          : decodeSparseMmapCap(sparse.bytes).areas.map((a) => ({ offset: Number(a.offset), size: Number(a.size) }));
      fd = memfdCreate(`vfio-user ${this.device} region ${index}`, bytes);
      const m = mmapFd(fd, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
      if (typeof m === "number") throw new KernelError(-m as Errno, `mmap of the region's memfd failed: errno ${-m}`);
      mapping = m;
      const file = proc.file(deviceFd);
      for (const a of wanted) {
        if (a.size === 0) continue;
        if (a.offset % PAGE_SIZE !== 0 || a.size % PAGE_SIZE !== 0 || a.offset + a.size > bytes) {
          throw new KernelError(Errno.EINVAL, `mmap area [${a.offset}, +${a.size}) is not page-aligned in the region`);
        }
        if (file.ops.mmap === undefined) throw new KernelError(Errno.ENODEV, "the device file has no mmap");
        const fm = file.ops.mmap(vfioPciIndexToOffset(index) + a.offset, a.size, PROT_READ | PROT_WRITE);
        const pages = a.size / PAGE_SIZE;
        physmem.shareFrames(fm.basePfn, pages, m.view(a.offset, a.size));
        areas.push({ pfn: fm.basePfn, pages });
      }
    } catch (e) {
      for (const a of areas) physmem.unshareFrames(a.pfn, a.pages);
      mapping?.unmap();
      if (fd >= 0) closeFd(fd);
      this.exports.set(index, undefined);
      if (this.tracer.enabled) {
        this.tracer.emit("vfiouser.error", {
          device: this.device,
          cmd: "DEVICE_GET_REGION_INFO",
          id: 0,
          errno: e instanceof KernelError ? e.errno : Errno.EIO,
          posted: false,
          message: `region ${index} cannot be exported for mmap (trapped instead): ${e instanceof Error ? e.message : String(e)}`,
        });
      }
      return undefined;
    }
    const ex: RegionExport = { fd, mapping, areas };
    this.exports.set(index, ex);
    return ex;
  }

  /** Gives exported frames their own memory back and closes the memfds (before the device file closes). */
  release(): void {
    for (const ex of this.exports.values()) {
      if (ex === undefined) continue;
      for (const a of ex.areas) this.physmem.unshareFrames(a.pfn, a.pages);
      ex.mapping.unmap();
      closeFd(ex.fd);
    }
    this.exports.clear();
  }
}
