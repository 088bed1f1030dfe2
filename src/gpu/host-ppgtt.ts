/**
 * The host driver's aliasing PPGTT (i915's aliasing_ppgtt): a 4-level PPGTT that maps every graphics memory address
 * of the 4 GiB GGTT range to what the GGTT maps it to, kept in step with every GGTT write the host driver makes
 * (`GgttMirror`, host-ggtt.ts). With execlists every context has a PPGTT, and commands without an address-space
 * selector (the 2D blits) go through it; the host driver's kernel contexts use this one, so the audited legacy work of
 * vGPUs (`HostGpu.submit`: GGTT addresses) runs through execlists unchanged.
 *
 * Layout: one PML4 whose entry 0 points at one PDP whose entries 0..3 point at four PDs (4 GiB = 2048 page tables of
 * 2 MiB each). A page table whose 512 entries are all the same (most: GM is mostly the scratch page, a vGPU partition
 * starts on its own scratch page) is shared: one table per distinct entry value, reference-counted; a table becomes
 * private (copied) when one of its entries is written with another value, and shared again when a fill covers it
 * whole or when its last entry that differs from the initial value (the host's scratch page) is written back to it,
 * so a table returns to the shared one once what was mapped there is unmapped. Tables are dma_alloc_coherent pages of the GPU's DMA API, written by the CPU (the kernel's mapping); the GPU
 * reads them through the IOMMU like any other DMA.
 *
 * Entries: a present GGTT entry (DMA address | present) becomes DMA address | present | writable; a not-present one
 * becomes 0 (not present: a PPGTT fault where the GGTT would have read zeros; the host driver never leaves entries not
 * present). Internal to the host driver: not exported by the folder's index.
 */
import type { Iova, Pfn } from "../core/index.ts";
import { type CoherentBuffer, type DmaDevice, type PhysicalMemory, pfnToHpa } from "../host/index.ts";
import type { GgttMirror } from "./host-ggtt.ts";
import { GEN8_PAGE_PRESENT, GEN8_PAGE_RW, GTT_ENTRIES } from "./regs.ts";

const TWO32 = 4294967296;
const PTES = 512;
const TABLES = GTT_ENTRIES / PTES;
const PAGE = 4096;

/** The PPGTT entry mirroring a GGTT entry. */
function ppte(ggttPte: number): number {
  if (ggttPte % 2 === 0) return 0;
  return ggttPte - (ggttPte % PAGE) + GEN8_PAGE_PRESENT + GEN8_PAGE_RW;
}

interface Shared {
  readonly buf: CoherentBuffer;
  refs: number;
}

interface Private {
  readonly buf: CoherentBuffer;
  /** The table's entries as written (the CPU's copy). */
  readonly entries: Float64Array;
  /** How many entries differ from the initial value. */
  differ: number;
}

export class AliasingPpgtt implements GgttMirror {
  /** DMA address of the PML4: the kernel contexts' PDP0. */
  readonly root: Iova;
  private readonly pml4: CoherentBuffer;
  private readonly pdp: CoherentBuffer;
  private readonly pds: CoherentBuffer[] = [];
  /** Per 2 MiB table: its private table, or undefined when it uses the shared table of `value[t]`. */
  private readonly privateTable: (Private | undefined)[] = new Array(TABLES).fill(undefined);
  /** The entry value every table starts with (the host's scratch page). */
  private readonly base: number;
  /** The PPGTT entry value of a shared table (meaningless for a private one). */
  private readonly value = new Float64Array(TABLES);
  private readonly shared = new Map<number, Shared>();
  private readonly page = new Uint8Array(PAGE);
  private readonly pageView = new DataView(this.page.buffer);

  /** Builds the tables with every entry mirroring `initialPte` (the GGTT's state when the mirror starts). */
  constructor(
    private readonly dma: DmaDevice,
    private readonly physmem: PhysicalMemory,
    initialPte: number,
  ) {
    this.pml4 = this.table(0);
    this.pdp = this.table(0);
    this.root = this.pml4.dmaAddr;
    this.writeEntry(this.pml4, 0, this.pdp.dmaAddr + GEN8_PAGE_PRESENT + GEN8_PAGE_RW);
    const v = ppte(initialPte);
    this.base = v;
    const s = this.sharedOf(v);
    for (let d = 0; d < TABLES / PTES; d++) {
      const pd = this.table(s.buf.dmaAddr + GEN8_PAGE_PRESENT + GEN8_PAGE_RW);
      this.pds.push(pd);
      this.writeEntry(this.pdp, d, pd.dmaAddr + GEN8_PAGE_PRESENT + GEN8_PAGE_RW);
    }
    s.refs = TABLES;
    this.value.fill(v);
  }

  /** Page-table pages in use (for tests: sharing keeps this small). */
  get tablePages(): number {
    return 2 + this.pds.length + this.shared.size + this.privateTable.filter((t) => t !== undefined).length;
  }

  write(index: number, pte: number): void {
    const t = Math.floor(index / PTES);
    const v = ppte(pte);
    if (this.privateTable[t] === undefined && this.value[t] === v) return;
    const own = this.privateTable[t] ?? this.makePrivate(t);
    this.set(own, index % PTES, v);
    this.collapse(t, own);
  }

  fill(first: number, count: number, pte: number): void {
    const v = ppte(pte);
    let i = first;
    const end = first + count;
    while (i < end) {
      const t = Math.floor(i / PTES);
      const tEnd = Math.min(end, (t + 1) * PTES);
      if (i % PTES === 0 && tEnd - i === PTES) {
        this.setShared(t, v);
      } else if (this.privateTable[t] !== undefined || this.value[t] !== v) {
        const own = this.privateTable[t] ?? this.makePrivate(t);
        for (let k = i; k < tEnd; k++) this.set(own, k % PTES, v);
        this.collapse(t, own);
      }
      i = tEnd;
    }
  }

  /** The frames of every table (what the GPU reads when it walks this PPGTT). */
  tableFrames(): Pfn[] {
    const out: Pfn[] = [this.pml4.pfn, this.pdp.pfn, ...this.pds.map((b) => b.pfn)];
    for (const s of this.shared.values()) out.push(s.buf.pfn);
    for (const t of this.privateTable) if (t !== undefined) out.push(t.buf.pfn);
    return out;
  }

  /** Frees every table (unbinding). */
  free(): void {
    for (const t of this.privateTable) if (t !== undefined) this.dma.dmaFreeCoherent(t.buf);
    for (const s of this.shared.values()) this.dma.dmaFreeCoherent(s.buf);
    for (const pd of this.pds) this.dma.dmaFreeCoherent(pd);
    this.dma.dmaFreeCoherent(this.pdp);
    this.dma.dmaFreeCoherent(this.pml4);
    this.privateTable.fill(undefined);
    this.shared.clear();
  }

  /** Table `t` gets a private copy of its shared table; returns it. */
  private makePrivate(t: number): Private {
    const v = this.value[t]!;
    const own: Private = {
      buf: this.table(v),
      entries: new Float64Array(PTES).fill(v),
      differ: v === this.base ? 0 : PTES,
    };
    this.privateTable[t] = own;
    this.release(v);
    this.pointPde(t, own.buf);
    return own;
  }

  private set(own: Private, i: number, v: number): void {
    const old = own.entries[i]!;
    if (old === v) return;
    own.entries[i] = v;
    if (old === this.base) own.differ++;
    else if (v === this.base) own.differ--;
    this.writeEntry(own.buf, i, v);
  }

  /** A private table whose entries are all the initial value again goes back to the shared table. */
  private collapse(t: number, own: Private): void {
    if (own.differ === 0) this.setShared(t, this.base);
  }

  /** Table `t` becomes the shared table of value `v`. */
  private setShared(t: number, v: number): void {
    const own = this.privateTable[t];
    if (own === undefined && this.value[t] === v) return;
    const s = this.sharedOf(v);
    s.refs++;
    if (own !== undefined) {
      this.dma.dmaFreeCoherent(own.buf);
      this.privateTable[t] = undefined;
    } else this.release(this.value[t]!);
    this.value[t] = v;
    this.pointPde(t, s.buf);
  }

  private sharedOf(v: number): Shared {
    let s = this.shared.get(v);
    if (s === undefined) {
      s = { buf: this.table(v), refs: 0 };
      this.shared.set(v, s);
    }
    return s;
  }

  private release(v: number): void {
    const s = this.shared.get(v);
    if (s === undefined) return;
    s.refs--;
    if (s.refs <= 0) {
      this.dma.dmaFreeCoherent(s.buf);
      this.shared.delete(v);
    }
  }

  private pointPde(t: number, table: CoherentBuffer): void {
    this.writeEntry(this.pds[Math.floor(t / PTES)]!, t % PTES, table.dmaAddr + GEN8_PAGE_PRESENT + GEN8_PAGE_RW);
  }

  /** A new table page with all 512 entries `v`. */
  private table(v: number): CoherentBuffer {
    const buf = this.dma.allocCoherent(PAGE);
    const lo = v % TWO32;
    const hi = Math.floor(v / TWO32);
    for (let i = 0; i < PTES; i++) {
      this.pageView.setUint32(8 * i, lo, true);
      this.pageView.setUint32(8 * i + 4, hi, true);
    }
    this.physmem.write(pfnToHpa(buf.pfn), this.page);
    return buf;
  }

  private writeEntry(table: CoherentBuffer, i: number, v: number): void {
    this.physmem.writeU32(pfnToHpa(table.pfn, 8 * i), v % TWO32);
    this.physmem.writeU32(pfnToHpa(table.pfn, 8 * i + 4), Math.floor(v / TWO32));
  }
}
