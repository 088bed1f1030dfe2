/**
 * The GPU's path to memory: every access the engines and the aperture make goes GMA -> GGTT entry -> DMA address ->
 * `DeviceDma` (the host's single device-DMA path: system IOMMU, or the GPU's ATC when ATS is on) -> host memory.
 *
 * Two kinds of fault, both counted here (monotonic totals; callers take differences) and traced ("gpu.fault"):
 * - GTT fault: the GGTT entry is not present or the GMA is beyond the 4 GiB table. The access is not put on the bus:
 *   a read returns zeros, a write is dropped. Work continues.
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

export class GpuMemory {
  gttFaults = 0;
  iommuFaults = 0;
  /** The most recent fault: kind, GMA and DMA address (-1 for a GTT fault). */
  lastFaultKind: "gtt" | "iommu" | "" = "";
  lastFaultGma = 0;
  lastFaultDma = -1;
  /** Set by whoever is about to access memory, so that fault traces name it. */
  agent: GpuAgent = "";

  constructor(
    readonly ggtt: Ggtt,
    readonly dma: DeviceDma,
    private readonly tracer: Tracer,
    private readonly bdf: Bdf,
  ) {}

  /** A u32 at a 4-byte-aligned GMA: its value; 0 after a GTT fault; -1 after an IOMMU fault. */
  readU32(gma: number): number {
    const page = Math.floor(gma / PAGE_SIZE);
    const base = this.ggtt.pageDma(page);
    if (base < 0) {
      this.gttFault(gma, false);
      return 0;
    }
    const v = this.dma.readU32((base + (gma - page * PAGE_SIZE)) as Iova);
    if (v < 0) this.iommuFault(gma, base + (gma - page * PAGE_SIZE), false);
    return v;
  }

  /** Writes a u32 at a 4-byte-aligned GMA. False only on an IOMMU fault (a GTT fault drops the write). */
  writeU32(gma: number, value: number): boolean {
    const page = Math.floor(gma / PAGE_SIZE);
    const base = this.ggtt.pageDma(page);
    if (base < 0) {
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

  /** Reads [gma, gma+len) into dst[off..]; pages behind a GTT fault read as zeros. False on an IOMMU fault. */
  read(gma: number, dst: Uint8Array, off: number, len: number): boolean {
    let a = gma;
    let o = off;
    let left = len;
    while (left > 0) {
      const page = Math.floor(a / PAGE_SIZE);
      const po = a - page * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const base = this.ggtt.pageDma(page);
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

  /** Writes src[off..off+len) at gma; pages behind a GTT fault are dropped. False on an IOMMU fault. */
  write(gma: number, src: Uint8Array, off: number, len: number): boolean {
    let a = gma;
    let o = off;
    let left = len;
    while (left > 0) {
      const page = Math.floor(a / PAGE_SIZE);
      const po = a - page * PAGE_SIZE;
      const n = Math.min(left, PAGE_SIZE - po);
      const base = this.ggtt.pageDma(page);
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
  const gma = `GMA 0x${m.lastFaultGma.toString(16)}`;
  return m.lastFaultKind === "iommu"
    ? `IOMMU fault at ${gma} (DMA address 0x${m.lastFaultDma.toString(16)})`
    : `GTT fault at ${gma}`;
}
