/**
 * A per-process GTT (PPGTT) as gen9 walks it in 48-bit, 4-level mode (legacy 64-bit contexts, the mode i915 uses on
 * Skylake): PML4 -> PDP -> PD -> PT, each a 4 KiB table of 512 8-byte entries, indexed by address bits 39..47,
 * 30..38, 21..29 and 12..20. The root (the PML4's DMA address) is the context's PDP0; every table lives in memory
 * and holds DMA addresses, so every level is read through the device's DMA path (`DeviceDma`: the system IOMMU),
 * exactly as the data it maps.
 *
 * Entries (every level): bit 0 present, bit 1 writable, bits 12..51 the next table's (or the page's) DMA address.
 * A write needs bit 1 at every level. Bit 7 of a PDP entry (1 GiB page) or of a PD entry (2 MiB page) is refused:
 * Skylake never uses them. Bit 11 of a PD entry (IPS, 64 KiB pages) is tolerated and ignored: i915 still writes all
 * sixteen 4 KiB PTEs of a 64 KiB page, so walking the 4 KiB PTEs translates the same. Bits 2..11 and 52..63 are
 * ignored otherwise (caching attributes).
 *
 * Faults: a missing entry, a read-only entry met by a write, a huge page, an address at or beyond 2^48, no root, or
 * a table the IOMMU does not translate: `pageDma` returns PAGE_FAULT and `faultReason` names the level, index and
 * entry; the engine turns that into a page-table error (never an exception). Faults and walks are traced
 * ("gpu.ppgtt.fault", "gpu.ppgtt.gma_translate", after GVT-g's gma_translate tracepoint).
 *
 * The TLB: translations are cached per 4 KiB page (with their writability) until `invalidate`, which the engine calls
 * on every context restore, at the start of every run and for each TLB-invalidating flush (MI_FLUSH_DW with
 * MI_INVALIDATE_TLB, PIPE_CONTROL with TLB_INVALIDATE), as hardware needs. Within a run, a table rewritten behind a
 * cached translation is not seen (as on hardware); across runs it always is. The cache is bounded and cleared whole
 * when full, so its state is a function of the accesses: deterministic.
 */
import { defineTraceEvents, type Iova, PAGE_SIZE, type Tracer } from "../core/index.ts";
import type { Bdf, DeviceDma } from "../host/index.ts";
import { type GpuAddressSpace, PAGE_FAULT } from "./memory.ts";
import { GEN8_PAGE_PRESENT, GEN8_PAGE_RW, GEN8_PDE_PS_2M, GEN8_PDPE_PS_1G, GEN8_PPGTT_ADDRESS_BITS } from "./regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "gpu.ppgtt.gma_translate": { bdf: string; engine: string; root: number; gma: number; dmaAddr: number };
    "gpu.ppgtt.fault": {
      bdf: string;
      engine: string;
      root: number;
      gma: number;
      level: string;
      index: number;
      entry: number;
      reason: string;
    };
  }
}
defineTraceEvents("gpu", {
  "gpu.ppgtt.gma_translate": "{bdf} {engine}: ppgtt (root {root}) gma {gma} -> dma {dmaAddr}",
  "gpu.ppgtt.fault": "{bdf} {engine}: ppgtt (root {root}) fault at gma {gma}: {level}[{index}] = {entry}: {reason}",
});

const TWO32 = 4294967296;
/** Pages in the 48-bit space. */
const PAGES = 2 ** (GEN8_PPGTT_ADDRESS_BITS - 12);
const TLB_MAX = 4096;
/** Entry names per level, root first. */
export const PPGTT_LEVELS = ["PML4E", "PDPE", "PDE", "PTE"] as const;

/** The DMA address in a PPGTT entry given as its two dwords (bits 12..51). */
export function ppgttEntryAddress(lo: number, hi: number): number {
  return ((lo & 0xfffff000) >>> 0) + (hi & 0xfffff) * TWO32;
}

export class Ppgtt implements GpuAddressSpace {
  readonly kind = "ppgtt";
  /** DMA address of the PML4, or -1 when no context with a PPGTT is loaded. */
  root = -1;
  /** Walks done (TLB misses) and faults met, monotonic. */
  walks = 0;
  faults = 0;

  /** page -> DMA address + 1 if writable (DMA addresses are page aligned, so bit 0 is free). */
  private readonly tlb = new Map<number, number>();
  private reason = "";

  constructor(
    private readonly dma: DeviceDma,
    private readonly tracer: Tracer,
    private readonly bdf: Bdf,
    /** The engine walking (for traces). */
    private readonly engine: string,
    /** Called once per walk (a TLB miss): the engine charges its cost. */
    private readonly onWalk: () => void = () => {},
  ) {}

  /** Loads a new root (a context restore): the TLB is flushed. -1: no PPGTT. */
  load(root: number): void {
    this.root = root;
    this.tlb.clear();
  }

  /** Drops every cached translation (a TLB invalidation). */
  invalidate(): void {
    this.tlb.clear();
  }

  faultReason(): string {
    return this.reason;
  }

  pageDma(page: number, write: boolean): number {
    const hit = this.tlb.get(page);
    if (hit !== undefined && (!write || hit % 2 === 1)) return hit - (hit % 2);
    return this.walk(page, write);
  }

  /** The DMA address of `addr` (read access), or PAGE_FAULT: for tests and explanations. */
  translate(addr: number, write = false): number {
    const page = Math.floor(addr / PAGE_SIZE);
    const base = this.pageDma(page, write);
    return base < 0 ? base : base + (addr - page * PAGE_SIZE);
  }

  private walk(page: number, write: boolean): number {
    const gma = page * PAGE_SIZE;
    if (this.root < 0) return this.fault(gma, "PML4E", 0, 0, "no PPGTT is loaded (the context has no PML4)");
    if (!(page >= 0 && page < PAGES)) {
      return this.fault(gma, "PML4E", 0, 0, `the address is beyond the ${GEN8_PPGTT_ADDRESS_BITS}-bit PPGTT`);
    }
    this.walks++;
    this.onWalk();
    let table = this.root;
    let writable = true;
    for (let level = 0; level < 4; level++) {
      const shift = 2 ** (9 * (3 - level));
      const index = Math.floor(page / shift) % 512;
      const at = table + index * 8;
      const name = PPGTT_LEVELS[level]!;
      const lo = this.dma.readU32(at as Iova);
      const hi = lo < 0 ? -1 : this.dma.readU32((at + 4) as Iova);
      if (lo < 0 || hi < 0) {
        return this.fault(
          gma,
          name,
          index,
          -1,
          `the table at DMA address 0x${table.toString(16)} faulted in the IOMMU`,
        );
      }
      const entry = lo + hi * TWO32;
      if ((lo & GEN8_PAGE_PRESENT) === 0) return this.fault(gma, name, index, entry, "not present");
      if ((lo & GEN8_PAGE_RW) === 0) writable = false;
      if (level === 1 && (lo & GEN8_PDPE_PS_1G) !== 0) {
        return this.fault(gma, name, index, entry, "a 1 GiB page: not supported (Skylake never maps one)");
      }
      if (level === 2 && (lo & GEN8_PDE_PS_2M) !== 0) {
        return this.fault(gma, name, index, entry, "a 2 MiB page: not supported (Skylake never maps one)");
      }
      table = ppgttEntryAddress(lo, hi);
    }
    if (write && !writable) return this.fault(gma, "PTE", page % 512, -1, "a write through a read-only entry");
    if (this.tlb.size >= TLB_MAX) this.tlb.clear();
    this.tlb.set(page, table + (writable ? 1 : 0));
    if (this.tracer.enabled) {
      this.tracer.emit("gpu.ppgtt.gma_translate", {
        bdf: this.bdf,
        engine: this.engine,
        root: this.root,
        gma,
        dmaAddr: table,
      });
    }
    return table;
  }

  private fault(gma: number, level: string, index: number, entry: number, why: string): number {
    this.faults++;
    this.reason = `${level}[${index}] ${why}`;
    if (this.tracer.enabled) {
      this.tracer.emit("gpu.ppgtt.fault", {
        bdf: this.bdf,
        engine: this.engine,
        root: this.root,
        gma,
        level,
        index,
        entry,
        reason: why,
      });
    }
    return PAGE_FAULT;
  }
}
