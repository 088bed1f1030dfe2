/**
 * The GPU's path to memory: every access the engines and the aperture make goes graphics address -> address space
 * (the GGTT, or the executing context's PPGTT: ppgtt.ts) -> DMA address -> `DeviceDma` (the host's single device-DMA
 * path: system IOMMU, or the GPU's ATC when ATS is on) -> host memory. Whoever accesses memory says first which agent
 * it is and which address space its address is in (`use`); the aperture always uses the GGTT.
 *
 * Three kinds of fault, all counted here (monotonic totals; callers take differences) and traced ("gpu.fault"):
 * - GTT fault: the GGTT entry is not present or the GMA is beyond the 4 GiB table. The access is not put on the bus:
 *   a read returns zeros, a write is dropped. Work continues.
 * - PPGTT fault: the PPGTT walk found no present entry, a read-only entry for a write, a huge page, an address beyond
 *   48 bits, or could not read a table (ppgtt.ts). The access stops; callers (the engine) stop the command and halt.
 * - IOMMU fault: the DMA address did not translate (recorded by the IOMMU as well). The access stops at the faulting
 *   page; callers (the engine) stop the command and halt.
 *
 * Access is by 4 KiB page: each GMA page is translated once per piece, and the piece is a single DeviceDma operation.
 * Hot paths allocate nothing.
 */
import { defineTraceEvents, type Iova, PAGE_SIZE, type Tracer } from "../core/index.ts";
import { type Bdf, type DeviceDma, DMA_OK } from "../host/index.ts";
import type { Ggtt } from "./ggtt.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "gpu.fault": { bdf: string; agent: string; kind: string; gma: number; dmaAddr: number; write: boolean };
  }
}

defineTraceEvents("gpu", {
  "gpu.fault": "{bdf}: {kind} fault by {agent} at gma {gma} (dma address {dmaAddr}, write {write})",
});

/** Which part of the GPU made an access (for fault traces): an engine name or "aperture". */
export type GpuAgent = string;

/**
 * A translation of graphics addresses to DMA addresses, page by page: the GGTT (ggtt.ts) or a PPGTT (ppgtt.ts).
 * `pageDma` returns the DMA address of page `page` (a graphics address >> 12) for a read or a write, -1 when the page
 * is not present in the GGTT (a GTT fault: the access goes on), or -2 for a translation fault that stops the access
 * (`faultReason` then says why). Hot path: no allocation.
 */
export interface GpuAddressSpace {
  readonly kind: "ggtt" | "ppgtt";
  pageDma(page: number, write: boolean): number;
  faultReason(): string;
}

/** `pageDma` results that are not addresses. */
export const PAGE_NOT_PRESENT = -1;
export const PAGE_FAULT = -2;

export class GpuMemory {
  gttFaults = 0;
  ppgttFaults = 0;
  iommuFaults = 0;
  /** The most recent fault: kind, graphics address and DMA address (-1 for a GTT or PPGTT fault). */
  lastFaultKind: "gtt" | "ppgtt" | "iommu" | "" = "";
  lastFaultGma = 0;
  lastFaultDma = -1;
  /** Why the last PPGTT fault happened. */
  lastFaultReason = "";
  /** Set by whoever is about to access memory, so that fault traces name it. */
  agent: GpuAgent = "";
  /** The address space of the next accesses (set with `use`). */
  space: GpuAddressSpace;

  constructor(
    readonly ggtt: Ggtt,
    readonly dma: DeviceDma,
    private readonly tracer: Tracer,
    private readonly bdf: Bdf,
  ) {
    this.space = ggtt;
  }

  /** Names the agent of the next accesses and the address space their addresses are in. */
  use(agent: GpuAgent, space: GpuAddressSpace): void {
    this.agent = agent;
    this.space = space;
  }

  /** A u32 at a 4-byte-aligned address: its value; 0 after a GTT fault; -1 after a PPGTT or IOMMU fault. */
  readU32(gma: number): number {
    const page = Math.floor(gma / PAGE_SIZE);
    const base = this.space.pageDma(page, false);
    if (base < 0) {
      if (base === PAGE_FAULT) {
        this.translationFault(gma, false);
        return -1;
      }
      this.gttFault(gma, false);
      return 0;
    }
    const v = this.dma.readU32((base + (gma - page * PAGE_SIZE)) as Iova);
    if (v < 0) this.iommuFault(gma, base + (gma - page * PAGE_SIZE), false);
    return v;
  }

  /** Writes a u32 at a 4-byte-aligned address. False on a PPGTT or IOMMU fault (a GTT fault drops the write). */
  writeU32(gma: number, value: number): boolean {
    const page = Math.floor(gma / PAGE_SIZE);
    const base = this.space.pageDma(page, true);
    if (base < 0) {
      if (base === PAGE_FAULT) {
        this.translationFault(gma, true);
        return false;
      }
      this.gttFault(gma, true);
      return true;
    }
    const at = base + (gma - page * PAGE_SIZE);
    if (this.dma.writeU32(at as Iova, value >>> 0) !== DMA_OK) {
      this.iommuFault(gma, at, true);
      return false;
    }
    return true;
  }

  /** Reads [gma, gma+len) into dst[off..]; pages behind a GTT fault read as zeros. False on a PPGTT or IOMMU fault. */
  read(gma: number, dst: Uint8Array, off: number, len: number): boolean {
    let a = gma;
    let o = off;
    let left = len;
    while (left > 0) {
      const page = Math.floor(a / PAGE_SIZE);
      const po = a - page * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const base = this.space.pageDma(page, false);
      if (base === PAGE_FAULT) {
        this.translationFault(a, false);
        return false;
      }
      if (base < 0) {
        this.gttFault(a, false);
        dst.fill(0, o, o + n);
      } else if (this.dma.read((base + po) as Iova, dst, o, n) !== DMA_OK) {
        this.iommuFault(a, base + po, false);
        return false;
      }
      a += n;
      o += n;
      left -= n;
    }
    return true;
  }

  /** Writes src[off..off+len) at gma; pages behind a GTT fault are dropped. False on a PPGTT or IOMMU fault. */
  write(gma: number, src: Uint8Array, off: number, len: number): boolean {
    let a = gma;
    let o = off;
    let left = len;
    while (left > 0) {
      const page = Math.floor(a / PAGE_SIZE);
      const po = a - page * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const base = this.space.pageDma(page, true);
      if (base === PAGE_FAULT) {
        this.translationFault(a, true);
        return false;
      }
      if (base < 0) this.gttFault(a, true);
      else if (this.dma.write((base + po) as Iova, src, o, n) !== DMA_OK) {
        this.iommuFault(a, base + po, true);
        return false;
      }
      a += n;
      o += n;
      left -= n;
    }
    return true;
  }

  /** Counts and traces a GTT fault at `gma`. */
  gttFault(gma: number, write: boolean): void {
    this.gttFaults++;
    this.lastFaultKind = "gtt";
    this.lastFaultGma = gma;
    this.lastFaultDma = -1;
    if (this.tracer.enabled) {
      this.tracer.emit("gpu.fault", { bdf: this.bdf, agent: this.agent, kind: "gtt", gma, dmaAddr: -1, write });
    }
  }

  /** Counts and traces a translation fault of the current address space (a PPGTT fault) at `addr`. */
  translationFault(addr: number, write: boolean): void {
    this.ppgttFaults++;
    this.lastFaultKind = "ppgtt";
    this.lastFaultGma = addr;
    this.lastFaultDma = -1;
    this.lastFaultReason = this.space.faultReason();
    if (this.tracer.enabled) {
      this.tracer.emit("gpu.fault", { bdf: this.bdf, agent: this.agent, kind: "ppgtt", gma: addr, dmaAddr: -1, write });
    }
  }

  /** Counts and traces an IOMMU fault of an access at `gma` (DMA address `dmaAddr`). */
  iommuFault(gma: number, dmaAddr: number, write: boolean): void {
    this.iommuFaults++;
    this.lastFaultKind = "iommu";
    this.lastFaultGma = gma;
    this.lastFaultDma = dmaAddr;
    if (this.tracer.enabled) {
      this.tracer.emit("gpu.fault", { bdf: this.bdf, agent: this.agent, kind: "iommu", gma, dmaAddr, write });
    }
  }
}

/** Describes the last fault for error messages. */
export function describeFault(m: GpuMemory): string {
  if (m.lastFaultKind === "ppgtt") {
    return `PPGTT fault at address 0x${m.lastFaultGma.toString(16)}: ${m.lastFaultReason}`;
  }
  const gma = `GMA 0x${m.lastFaultGma.toString(16)}`;
  return m.lastFaultKind === "iommu"
    ? `IOMMU fault at ${gma} (DMA address 0x${m.lastFaultDma.toString(16)})`
    : `GTT fault at ${gma}`;
}
