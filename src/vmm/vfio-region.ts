/**
 * A vfio-pci device's BARs as the VMM maps them into the guest (QEMU hw/vfio/region.c and the BAR half of pci.c):
 * one `VfioBar` per BAR region of the device fd.
 *
 * Realize (`realizeBars`): each BAR's kind from the BAR register's low bits (I/O, 32- or 64-bit memory, prefetchable),
 * its size from REGION_INFO (as QEMU does) cross-checked by a sizing probe on the device's config region (all ones
 * written, read back, restored; a disagreement is a `vmm.warn` event and the region size wins), a naturally aligned
 * address in the guest's window for its kind (pci-bus.ts), and an mmap of the parts the region allows (the MMAP flag,
 * SPARSE_MMAP areas; an area that is not page aligned or whose mmap fails is trapped instead, as QEMU does).
 *
 * The guest's accesses (`BarAccess`): inside an mmap'd area they are loads and stores through the VMM's mapping;
 * elsewhere they are trapped: pread/pwrite on the device fd at the region's offset. A failed trapped access (EIO from
 * the device) reads all ones and drops the write, with a `vmm.warn` event, as QEMU reports and carries on. An access
 * past the region's size (the decoded size is rounded up to a power of two) reads all ones and is dropped.
 *
 * Decoding (`updateDecoding`): the frontend says whether the BAR's space is enabled and where its register points;
 * the BAR is in the guest's dispatch exactly while it decodes (pci_update_mappings).
 *
 * What this does not do: config-space emulation of the BAR registers (their write masks, the firmware's addresses:
 * vfio-pci.ts), the expansion ROM, VGA regions, device-specific regions, sub-page BARs, quirks.
 *
 * Invariants: a BAR is in its space's dispatch iff `mapped`, at `mappedAt`; its window allocation lives from realize to
 * release or forget; `areas` are page aligned, inside the region, sorted and disjoint.
 * Hot path: an access allocates nothing (one `AccessBuffer` per BAR).
 */

import {
  defineTraceEvents,
  Errno,
  type Hva,
  hex,
  hva,
  isKernelError,
  KernelError,
  PAGE_SIZE,
  roundUpPowerOfTwo,
  type Tracer,
} from "../core/index.ts";
import {
  type BarKind,
  PCI_BASE_ADDRESS_0,
  PCI_BASE_ADDRESS_MEM_PREFETCH,
  PCI_BASE_ADDRESS_MEM_TYPE_64,
  PCI_BASE_ADDRESS_SPACE_IO,
  type Process,
} from "../host/index.ts";
import {
  VFIO_PCI_BAR5_REGION_INDEX,
  VFIO_REGION_INFO_FLAG_MMAP,
  type VfioDeviceHandle,
  type VfioRegionInfoReply,
} from "../vfio/index.ts";
import { AccessBuffer } from "./access-buffer.ts";
import { formatBytes } from "./memory.ts";
import { allOnes, type BarAccess, type GuestPciBus, type WindowAllocator } from "./pci-bus.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vmm.bar.place": {
      vm: string;
      device: string;
      bar: number;
      kind: string;
      gpa: number;
      size: number;
      regionSize: number;
      probedSize: number;
      mmap: boolean;
    };
    "vmm.bar.map": { vm: string; device: string; bar: number; gpa: number; mapped: boolean };
  }
}
defineTraceEvents("vmm", {
  "vmm.bar.place":
    "{vm}: {device} BAR{bar} ({kind}, {size} bytes, region {regionSize}, probe {probedSize}) at {gpa}, mmap {mmap}",
  "vmm.bar.map": "{vm}: {device} BAR{bar} at {gpa} decoding {mapped}",
});

/** What a BAR needs of its device: the fd, the VMM process, the guest bus, where to report. */
export interface VfioRegionEnv {
  readonly vm: string;
  /** The VFIO device name, for events and window owners. */
  readonly device: string;
  readonly proc: Process;
  readonly handle: VfioDeviceHandle;
  readonly tracer: Tracer;
  readonly bus: GuestPciBus;
  /** A `vmm.warn` event naming the device. */
  warn(message: string): void;
}

/** Dword access to the device's own config region (the sizing probe's path, under the VMM's emulation). */
export interface DeviceConfigIo {
  read32(offset: number): number;
  write32(offset: number, value: number): void;
}

/** A part of a BAR mmapped into the VMM. */
export interface MmapArea {
  readonly offset: number;
  readonly end: number;
  readonly size: number;
  readonly hva: Hva;
}

/** One BAR of a vfio-pci device in the guest. */
export class VfioBar implements BarAccess {
  placedAt = 0;
  mapped = false;
  mappedAt = 0;
  readonly areas: MmapArea[] = [];
  private readonly access = new AccessBuffer();

  constructor(
    private readonly env: VfioRegionEnv,
    readonly index: number,
    readonly kind: BarKind,
    readonly prefetchable: boolean,
    /** The low flag bits of the BAR register (read-only for the guest). */
    readonly flags: number,
    /** The decoded size: the region size rounded up to a power of two (at least 4 for I/O, 16 for memory). */
    readonly size: number,
    readonly regionSize: number,
    readonly regionOffset: number,
    readonly window: WindowAllocator,
  ) {}

  /** The dispatch space this BAR decodes in. */
  get space() {
    return this.kind === "io" ? this.env.bus.ioSpace : this.env.bus.memSpace;
  }

  // ---- BarAccess: the guest's MMIO and port I/O ------------------------------------------------------------------

  barRead(_bar: number, offset: number, size: number): number {
    if (offset + size > this.regionSize) return allOnes(size);
    const s = this.access.bytes(size);
    const areas = this.areas;
    for (let k = 0; k < areas.length; k++) {
      const a = areas[k]!;
      if (offset >= a.offset && offset + size <= a.end) {
        this.env.proc.mm.read(hva(a.hva + (offset - a.offset)), s, 0, size);
        return this.access.load(size);
      }
    }
    try {
      this.env.proc.pread(this.env.handle.fd, s, this.regionOffset + offset);
    } catch (e) {
      if (!isKernelError(e)) throw e;
      if (this.env.tracer.enabled)
        this.env.warn(`BAR${this.index} read of ${size} at ${hex(offset)} failed (${e.code})`);
      return allOnes(size);
    }
    return this.access.load(size);
  }

  barWrite(_bar: number, offset: number, size: number, value: number): void {
    if (offset + size > this.regionSize) return;
    const s = this.access.bytes(size);
    this.access.store(size, value);
    const areas = this.areas;
    for (let k = 0; k < areas.length; k++) {
      const a = areas[k]!;
      if (offset >= a.offset && offset + size <= a.end) {
        this.env.proc.mm.write(hva(a.hva + (offset - a.offset)), s, 0, size);
        return;
      }
    }
    try {
      this.env.proc.pwrite(this.env.handle.fd, s, this.regionOffset + offset);
    } catch (e) {
      if (!isKernelError(e)) throw e;
      if (this.env.tracer.enabled) {
        this.env.warn(`BAR${this.index} write of ${size} at ${hex(offset)} failed (${e.code})`);
      }
    }
  }

  // ---- decoding ----------------------------------------------------------------------------------------------------

  /**
   * pci_update_mappings for this BAR: it decodes at `addr` while its space is `enabled` and the address is valid
   * (non-zero, the whole BAR below the space's limit). No-op when nothing changes.
   */
  updateDecoding(enabled: boolean, addr: number): void {
    const last = addr + this.size - 1;
    const limit = this.kind === "io" ? 0x10000 : this.kind === "mem32" ? 0xffffffff : 2 ** 52;
    const ok = enabled && addr !== 0 && last < limit;
    if (ok === this.mapped && (!ok || addr === this.mappedAt)) return;
    const space = this.space;
    if (this.mapped) {
      space.unmap(this, this.index);
      this.mapped = false;
    }
    if (ok) {
      try {
        space.map(addr, this.size, this, this.index, `${this.env.device} BAR${this.index}`);
        this.mapped = true;
        this.mappedAt = addr;
      } catch (e) {
        if (!isKernelError(e)) throw e;
        this.env.warn(`BAR${this.index} at ${hex(addr)} cannot decode: ${e.message}`);
      }
    }
    const tracer = this.env.tracer;
    if (tracer.enabled) {
      tracer.emit("vmm.bar.map", {
        vm: this.env.vm,
        device: this.env.device,
        bar: this.index,
        gpa: addr,
        mapped: this.mapped,
      });
    }
  }

  // ---- release -----------------------------------------------------------------------------------------------------

  /**
   * Out of the guest's address space and window, mmaps undone. Best effort: every step runs; `attempt` collects the
   * first failure for the caller.
   */
  release(attempt: (fn: () => void) => void): void {
    if (this.mapped) this.space.unmap(this, this.index);
    this.mapped = false;
    this.window.free(this.placedAt);
    for (const a of this.areas) attempt(() => this.env.proc.mm.munmap(a.hva, a.size));
    this.areas.length = 0;
  }

  /** The process died (its mappings went with it): out of the guest's address space and window only. */
  forget(): void {
    if (this.mapped) this.space.unmap(this, this.index);
    this.mapped = false;
    this.window.free(this.placedAt);
    this.areas.length = 0;
  }

  // ---- realize helpers -----------------------------------------------------------------------------------------

  /** mmaps the areas of the region that may be mapped; the rest stays trapped. */
  mmapAreas(r: VfioRegionInfoReply): void {
    const areas = r.sparseMmap ?? [{ offset: 0, size: r.size }];
    for (const a of areas) {
      if (a.size === 0 || a.offset % PAGE_SIZE !== 0 || a.size % PAGE_SIZE !== 0 || a.offset + a.size > r.size) {
        continue; // QEMU skips areas it cannot map and traps them instead
      }
      try {
        const at = this.env.handle.mmap(this.index, a.offset, a.size);
        this.areas.push({ offset: a.offset, end: a.offset + a.size, size: a.size, hva: at });
      } catch (e) {
        if (!isKernelError(e)) throw e;
        this.env.warn(
          `BAR${this.index}: mmap of ${formatBytes(a.size)} at ${hex(a.offset)} failed (${e.code}): trapping it`,
        );
      }
    }
  }
}

/**
 * Realizes every BAR region of the device (see the module comment): `phys` is the device's config space as read at
 * realize, `cfg` the path for the sizing probe. Returns the BARs by index (a 64-bit BAR takes two indexes; the upper
 * one is undefined, as is an empty region).
 */
export function realizeBars(env: VfioRegionEnv, phys: Uint8Array, cfg: DeviceConfigIo): (VfioBar | undefined)[] {
  const bars: (VfioBar | undefined)[] = [];
  const dv = new DataView(phys.buffer);
  for (let i = 0; i <= VFIO_PCI_BAR5_REGION_INDEX; i++) {
    const r = env.handle.regionInfo(i);
    if (r.size === 0) continue;
    const low = dv.getUint32(PCI_BASE_ADDRESS_0 + 4 * i, true);
    const io = (low & PCI_BASE_ADDRESS_SPACE_IO) !== 0;
    const is64 = !io && (low & 0x6) === PCI_BASE_ADDRESS_MEM_TYPE_64;
    if (is64 && i === VFIO_PCI_BAR5_REGION_INDEX) {
      throw new KernelError(Errno.EINVAL, `${env.device}: BAR5 claims to be 64-bit, which needs a BAR6`);
    }
    const kind: BarKind = io ? "io" : is64 ? "mem64" : "mem32";
    const prefetchable = !io && (low & PCI_BASE_ADDRESS_MEM_PREFETCH) !== 0;
    const size = Math.max(roundUpPowerOfTwo(r.size), io ? 4 : 16);
    const probed = probeBarSize(cfg, i, kind);
    if (probed !== size && env.tracer.enabled) {
      env.warn(
        `BAR${i}: the sizing probe says ${probed} bytes, REGION_INFO ${r.size} (decoded as ${size}): using REGION_INFO`,
      );
    }
    const window = io ? env.bus.io : is64 ? env.bus.mmio64 : env.bus.mmio32;
    const align = io ? size : Math.max(size, PAGE_SIZE);
    const placedAt = window.alloc(size, align, `${env.device} BAR${i}`);
    const b = new VfioBar(env, i, kind, prefetchable, io ? low & 0x3 : low & 0xf, size, r.size, r.offset, window);
    b.placedAt = placedAt;
    bars[i] = b;
    if ((r.flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0 && !io) b.mmapAreas(r);
    if (env.tracer.enabled) {
      env.tracer.emit("vmm.bar.place", {
        vm: env.vm,
        device: env.device,
        bar: i,
        kind,
        gpa: placedAt,
        size,
        regionSize: r.size,
        probedSize: probed,
        mmap: b.areas.length > 0,
      });
    }
    if (is64) i++;
  }
  return bars;
}

/** The sizing probe on the device's config region: all ones, read back, restore. 0 if the device refuses. */
function probeBarSize(cfg: DeviceConfigIo, i: number, kind: BarKind): number {
  const off = PCI_BASE_ADDRESS_0 + 4 * i;
  try {
    const lo0 = cfg.read32(off);
    cfg.write32(off, 0xffffffff);
    const lo = cfg.read32(off);
    cfg.write32(off, lo0);
    if (kind === "io") {
      let mask = (lo & ~0x3) >>> 0;
      if ((mask & 0xffff0000) === 0) mask = (mask | 0xffff0000) >>> 0; // 16-bit I/O decoders (Linux does the same)
      return mask === 0 ? 0 : 2 ** 32 - mask;
    }
    const lomask = (lo & ~0xf) >>> 0;
    if (kind === "mem32") return lomask === 0 ? 0 : 2 ** 32 - lomask;
    const hi0 = cfg.read32(off + 4);
    cfg.write32(off + 4, 0xffffffff);
    const hi = cfg.read32(off + 4);
    cfg.write32(off + 4, hi0);
    if (hi === 0 && lomask === 0) return 0;
    return (0xffffffff - hi) * 2 ** 32 + (2 ** 32 - lomask);
  } catch (e) {
    if (isKernelError(e)) return 0;
    throw e;
  }
}
