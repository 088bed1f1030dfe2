/**
 * The shadow GGTT and the gfn cache: the seed's heart. The guest writes GTT entries naming guest-physical pages; the
 * vendor driver pins each page through vfio (type1: GPA -> HVA -> page), maps it for the GPU through the host
 * driver's DMA API (page -> IOVA, in the IOVA space the host driver's own buffers come from) and writes the physical
 * GGTT entry with that IOVA. Modelled on GVT-g's gtt.c (emulate_ggtt_mmio_write) and kvmgt.c (the gvt_cache of
 * pinned, DMA-mapped gfns, intel_vgpu_dma_unmap).
 *
 * Guest writes (`write`, offsets within the 8 MiB GTT window of BAR0):
 * - only 4- or 8-byte naturally aligned writes (EINVAL otherwise, as GVT-g);
 * - the entry's GMA (index << 12) must lie in the vGPU's aperture or hidden partition, else the write is ignored,
 *   counted and traced (ballooning means a well-behaved guest never does this);
 * - a 4-byte write stores its half in the guest entry at once, but the shadow is only updated when the other half of
 *   the same entry arrives (a second write of the same half just replaces it), as GVT-g's partial_pte_list. So a
 *   guest must write each half once per update (the datasheet's safe order, 10.5): low 0, high, low pairs the first
 *   two writes and leaves the last low half pending until a high half comes;
 * - a present guest PTE: gfn cache hit (refcount + 1), or miss: vfio pinPages(gfn << 12, 1, READ|WRITE) (IOVA =
 *   GPA, vfio emulated-iova.ts) -> frame -> dma mapPage(frame, 0, 4096, BIDIRECTIONAL) -> IOVA; physical entry =
 *   gen8PteEncode(IOVA). Any failure (pin: EINVAL unmapped, EPERM read-only mapping, ENOMEM "RLIMIT_MEMLOCK
 *   exceeded" or host memory exhausted, no vfio session; DMA mapping error) points the entry at the vGPU's own
 *   scratch page, counted, traced ("fail to populate guest ggtt entry", GVT-g's message) and kept as a value
 *   (`lastError`: the failing call's errno and a sentence naming the limit), so that a caller reports what happened
 *   instead of guessing it from host state afterwards;
 * - a non-present guest PTE: the physical entry is the vGPU's scratch page with the present bit clear, as GVT-g
 *   writes it (the GPU reports a fault if the guest's work touches it);
 * - then the entry's previous gfn reference is dropped: on the last reference dma_unmap_page and vfio unpinPages.
 *   The new reference is taken first, so rewriting an entry with the same page never unpins it.
 * Reads of the window return the guest's own entries (never the shadow); outside the partition they read 0.
 *
 * The scratch page is the vGPU's own (`ShadowGttOptions.scratch`, one zeroed page the parent allocates with
 * dma_alloc_coherent), never the host driver's: a failed entry is present and writable by the engines (a blit
 * through it lands in the scratch page), so one page shared by the failed entries of several vGPUs would be a channel
 * between their VMs (one fills through its failed entry, the other copies out through its own). GVT-g keeps scratch
 * pages per vGPU for its PPGTT (intel_vgpu_gtt.scratch_pt); its GGTT path uses the device-wide gvt->gtt.scratch_mfn,
 * which this model does not copy. The constructor points every entry of the partition at this page in two bulk
 * writes (`HostGpu.fillGgtt`, aperture and hidden); the host driver points them back at its own scratch page when the
 * partition is freed, and only then may the parent free the vGPU's page.
 *
 * `dmaUnmap(iova, length)` (type1 calls it when the VMM unmaps guest memory; IOVA = GPA for an emulated group): every
 * shadow entry whose gfn lies in the range goes to the (present) scratch page, its reference is dropped, and so each
 * gfn in the range is DMA-unmapped and unpinned before the callback returns. The guest entries are kept (the guest
 * did not change them). `reset` releases everything and zeroes the guest entries.
 *
 * The gfn cache is shared with the shadow PPGTT (shadow-ppgtt.ts): `pinGuestPage` / `unpinGuestPage` take and drop
 * references on a guest page for a PPGTT entry, so a page a GGTT entry and PTEs both name is pinned and DMA-mapped
 * once. Those references are counted apart (`externalRefs`); their owner releases them before this module's
 * `dmaUnmap` and `reset` run (the vGPU calls the shadow PPGTT first), so each still finds only its own in the range.
 *
 * Costs: the guest and shadow state cover only the partition (aperture + hidden entries: 640 Ki entries, ~14 MiB for
 * the largest type), in typed arrays; a write with a cache hit allocates nothing. The cache maps gfn -> slot in a Map
 * whose slots live in typed arrays. `dmaUnmap` first looks for cached gfns in the range (O(cache)) and only then
 * scans the partition's entries (O(partition)); the VMM's unmaps are rare next to GTT writes.
 *
 * Invariants (`checkInvariants`): a populated shadow entry's gfn has a live cache slot; each slot's refcount equals
 * the number of entries naming its gfn plus its PPGTT references, and is >= 1; every slot holds exactly one pin and one DMA mapping; the
 * physical GGTT entry of a populated entry encodes its slot's IOVA and every other entry of the partition encodes the
 * vGPU's own scratch page (present, or not present for a non-present guest entry), never the host's; no entry has
 * both halves pending.
 */

import {
  defineTraceEvents,
  Errno,
  type Gfn,
  type Gpa,
  gpa,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type Tracer,
  gfn as toGfn,
} from "../core/index.ts";
import { GEN8_PAGE_PRESENT, type GpuResources, gen8PteEncode, type HostGpu } from "../gpu/index.ts";
import { DmaDirection, IOMMU_READ, IOMMU_WRITE } from "../host/index.ts";
import type { VfioDmaAccess } from "../vfio/index.ts";
import { gfnOfIova, iovaOfGfn, iovaOfGpa } from "../vfio/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.gtt.write": { vgpu: number; index: number; pte: string; bytes: number; complete: boolean };
    "vgpu.gtt.shadow": { vgpu: number; index: number; gfn: number; iova: number; hit: boolean };
    "vgpu.gtt.scratch": { vgpu: number; index: number; gfn: number; reason: string };
    "vgpu.gtt.ignored": { vgpu: number; index: number; reason: string };
    "vgpu.gfn.pin": { vgpu: number; gfn: number; pfn: number; iova: number };
    "vgpu.gfn.unpin": { vgpu: number; gfn: number; iova: number; why: string };
    "vgpu.dma_unmap": { vgpu: number; iova: number; length: number; gfns: number; entries: number };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.gtt.write": "vgpu{vgpu}: guest GTT[{index}] = {pte} ({bytes}-byte write, complete {complete})",
  "vgpu.gtt.shadow": "vgpu{vgpu}: shadow GTT[{index}]: gfn {gfn} -> iova {iova} (cache hit {hit})",
  "vgpu.gtt.scratch": "vgpu{vgpu}: fail to populate guest ggtt entry {index} (gfn {gfn}): {reason}; scratch page used",
  "vgpu.gtt.ignored": "vgpu{vgpu}: guest GTT write to entry {index} ignored: {reason}",
  "vgpu.gfn.pin": "vgpu{vgpu}: gfn {gfn} pinned (pfn {pfn}), DMA-mapped at iova {iova}",
  "vgpu.gfn.unpin": "vgpu{vgpu}: gfn {gfn} (iova {iova}) unmapped and unpinned: {why}",
  "vgpu.dma_unmap":
    "vgpu{vgpu}: VMM unmaps iova {iova} +{length}: {gfns} cached gfn(s) released, {entries} shadow entries to scratch",
});

/** Per-entry pending-half flags: which 4-byte half arrived first (0 = none). */
const HALF_NONE = 0;
/** shadowGfn values below 0: the physical entry is the scratch page (present), or the scratch page not present. */
const GFN_SCRATCH = -1;
const GFN_NOT_PRESENT = -2;
const INITIAL_SLOTS = 64;
/** Guest PTE address bits 32..51 (the high dword's low 20 bits). */
const PTE_HI_ADDR_MASK = 0xfffff;

/** Counters of one shadow GTT (part of the vGPU's `stats()`). */
export interface ShadowGttStats {
  /** Guest pages pinned through vfio (one pin per cached gfn). */
  readonly pinnedPages: number;
  /** Entries whose physical GGTT entry points at a guest page. */
  readonly shadowEntries: number;
  readonly gfnCacheSize: number;
  /** Live DMA mappings this vGPU made through the host driver. */
  readonly iovasMapped: number;
  /** Entries pointed at the scratch page because populating them failed. */
  readonly scratchFallbacks: number;
  /** Guest GTT writes outside the partition. */
  readonly ignoredWrites: number;
  /** Guest GTT writes (4- and 8-byte). */
  readonly guestWrites: number;
  readonly cacheHits: number;
  readonly cacheMisses: number;
}

/** The call that failed while populating a GTT entry. */
export type PopulateStep = "vfio_pin_pages" | "dma_map_page" | "no vfio session";

/**
 * Why a guest GTT entry could not be shadowed (its physical entry points at the vGPU's scratch page instead, GVT-g's
 * "fail to populate guest ggtt entry"), kept as a value where it happened: the errno of the call that failed and a
 * sentence naming the vGPU, the entry, the guest page and that call's own sentence (which names the host limit:
 * "RLIMIT_MEMLOCK exceeded: ...", "host memory exhausted: ...", "IOVA space below 0x1000000 exhausted ...").
 */
export interface PopulateError {
  readonly errno: Errno;
  readonly message: string;
  readonly step: PopulateStep;
  /** The GGTT index of the entry. */
  readonly index: number;
  /** The guest frame the entry names. */
  readonly gfn: Gfn;
}

/** Why the gfn cache could not pin and map a guest page. */
interface PinFailure {
  readonly step: PopulateStep;
  readonly errno: Errno;
  readonly what: string;
  readonly cause?: KernelError;
}

export interface ShadowGttOptions {
  readonly vgpuId: number;
  readonly gpu: HostGpu;
  readonly resources: GpuResources;
  /** DMA address of the vGPU's own scratch page (a zeroed dma_alloc_coherent page of the GPU's DMA API). */
  readonly scratch: Iova;
  readonly tracer: Tracer;
  /** How pinned guest pages get their DMA addresses (default: dma_map_page on the GPU's DMA API). */
  readonly mapper?: GuestPageMapper;
}

/**
 * How a pinned guest page gets the DMA address its shadow entries hold. The default is the seed's answer,
 * dma_map_page on the GPU's DMA API (an IOVA from the allocator the host driver shares). The design comparison
 * (src/compare) injects the alternatives the seed thread weighs (identity HPA, GPA, a per-VM IOVA range), so they run
 * on the same vendor driver. `map` throws a KernelError as dma_map_page does; `unmap` gets back what `map` returned.
 */
export interface GuestPageMapper {
  map(vgpu: number, gfn: Gfn, pfn: Pfn): Iova;
  unmap(vgpu: number, gfn: Gfn, iova: Iova): void;
}

/**
 * The gfn cache (kvmgt's gvt_cache): gfn -> { pinned frame, IOVA, refcount }. Slots live in typed arrays so a hit
 * costs a Map lookup and an increment.
 */
export class GfnCache {
  private readonly index = new Map<number, number>();
  private gfnOf = new Float64Array(INITIAL_SLOTS);
  private pfnOf = new Float64Array(INITIAL_SLOTS);
  private iovaOf = new Float64Array(INITIAL_SLOTS);
  private refOf = new Int32Array(INITIAL_SLOTS);
  private free = new Int32Array(INITIAL_SLOTS);
  private freeTop = 0;
  private used = 0;

  get size(): number {
    return this.index.size;
  }

  /** The slot of `gfn`, or -1. */
  slot(gfn: number): number {
    return this.index.get(gfn) ?? -1;
  }

  insert(gfn: Gfn, pfn: Pfn, iova: Iova): number {
    let s: number;
    if (this.freeTop > 0) s = this.free[--this.freeTop]!;
    else {
      if (this.used === this.gfnOf.length) this.grow();
      s = this.used++;
    }
    this.gfnOf[s] = gfn;
    this.pfnOf[s] = pfn;
    this.iovaOf[s] = iova;
    this.refOf[s] = 1;
    this.index.set(gfn, s);
    return s;
  }

  remove(s: number): void {
    this.index.delete(this.gfnOf[s]!);
    this.refOf[s] = 0;
    this.gfnOf[s] = -1;
    if (this.freeTop === this.free.length) {
      const f = new Int32Array(this.free.length * 2);
      f.set(this.free);
      this.free = f;
    }
    this.free[this.freeTop++] = s;
  }

  ref(s: number): number {
    return this.refOf[s]!;
  }
  addRef(s: number, d: number): number {
    this.refOf[s] = this.refOf[s]! + d;
    return this.refOf[s]!;
  }
  // The slots are typed arrays of plain numbers: the brands come back on the way out.
  gfn(s: number): Gfn {
    return this.gfnOf[s]! as Gfn;
  }
  pfn(s: number): Pfn {
    return this.pfnOf[s]! as Pfn;
  }
  iova(s: number): Iova {
    return this.iovaOf[s]! as Iova;
  }

  /** Live gfns (allocates: for reports, invariants and unmap). */
  gfns(): Gfn[] {
    return [...this.index.keys()] as Gfn[];
  }

  private grow(): void {
    const n = this.gfnOf.length * 2;
    const g = (a: Float64Array) => {
      const b = new Float64Array(n);
      b.set(a);
      return b;
    };
    this.gfnOf = g(this.gfnOf);
    this.pfnOf = g(this.pfnOf);
    this.iovaOf = g(this.iovaOf);
    const r = new Int32Array(n);
    r.set(this.refOf);
    this.refOf = r;
  }
}

/** One vGPU's guest GGTT (its partition) and the physical entries shadowing it. */
export class ShadowGtt {
  readonly cache = new GfnCache();
  private readonly vgpuId: number;
  private readonly gpu: HostGpu;
  private readonly mapper: GuestPageMapper | undefined;
  private readonly tracer: Tracer;
  /** First GGTT index and entry count of the aperture and hidden partitions. */
  private readonly apFirst: number;
  private readonly apCount: number;
  private readonly hiFirst: number;
  private readonly hiCount: number;
  /** Guest entries by local index (aperture entries first, then hidden), as two u32 halves. */
  private readonly guestLo: Uint32Array;
  private readonly guestHi: Uint32Array;
  /** The gfn each entry's shadow maps, or GFN_SCRATCH / GFN_NOT_PRESENT. */
  private readonly shadowGfn: Float64Array;
  /** HALF_NONE, or 1 + the half (0 low, 1 high) written first of a pending pair. */
  private readonly pending: Uint8Array;
  private readonly scratchPte: number;
  private readonly scratchNotPresentPte: number;
  private dma: VfioDmaAccess | undefined;
  /** References on gfns taken through `pinGuestPage` (by gfn). */
  private readonly extRefs = new Map<number, number>();
  private populated = 0;
  private iovas = 0;
  private scratchFallbacks = 0;
  private ignored = 0;
  private writes = 0;
  private hits = 0;
  private misses = 0;
  /** Why the last populate failed (built on failure only: a success allocates nothing). */
  private lastPopulateError: PopulateError | undefined;
  private lastWhat = "";
  private lastCause: KernelError | undefined;
  private lastHit = false;

  constructor(opts: ShadowGttOptions) {
    this.vgpuId = opts.vgpuId;
    this.gpu = opts.gpu;
    this.mapper = opts.mapper;
    this.tracer = opts.tracer;
    const { aperture, hidden } = opts.resources;
    this.apFirst = aperture.base / PAGE_SIZE;
    this.apCount = aperture.size / PAGE_SIZE;
    this.hiFirst = hidden.base / PAGE_SIZE;
    this.hiCount = hidden.size / PAGE_SIZE;
    const n = this.apCount + this.hiCount;
    this.guestLo = new Uint32Array(n);
    this.guestHi = new Uint32Array(n);
    this.shadowGfn = new Float64Array(n).fill(GFN_SCRATCH);
    this.pending = new Uint8Array(n);
    this.scratchPte = gen8PteEncode(opts.scratch);
    this.scratchNotPresentPte = this.scratchPte - GEN8_PAGE_PRESENT;
    if (opts.scratch === opts.gpu.scratch.dmaAddr) {
      throw new KernelError(
        Errno.EINVAL,
        `vgpu${this.vgpuId}: the scratch page must be the vGPU's own, not the host driver's (IOVA ${hex(opts.scratch)})`,
      );
    }
    // The host driver hands the partition out on its own scratch page: move it onto ours.
    this.gpu.fillGgtt(this.apFirst, this.apCount, this.scratchPte);
    this.gpu.fillGgtt(this.hiFirst, this.hiCount, this.scratchPte);
  }

  /** The PTE of the vGPU's scratch page (present): what every unshadowed entry of the partition holds. */
  get scratchEntry(): number {
    return this.scratchPte;
  }

  /** Gives (open) or takes away (close) the vfio session's DMA access. Pins need it. */
  attach(dma: VfioDmaAccess | undefined): void {
    this.dma = dma;
  }

  get entries(): number {
    return this.apCount + this.hiCount;
  }

  // ---- guest access to the GTT window ------------------------------------------------------------------------------

  /**
   * A guest write of `bytes` (4 or 8) at `offset` within the GTT window; `lo` is the first dword written, `hi` the
   * second (8-byte writes only). EINVAL for any other size or a misaligned offset.
   */
  write(offset: number, bytes: number, lo: number, hi: number): void {
    if ((bytes !== 4 && bytes !== 8) || offset % bytes !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `vgpu${this.vgpuId}: a ${bytes}-byte GTT write at window offset ${hex(offset)}: only naturally aligned 4- or ` +
          "8-byte writes are allowed",
      );
    }
    this.writes++;
    const index = Math.floor(offset / 8);
    const local = this.localIndex(index);
    if (local < 0) {
      this.ignored++;
      if (this.tracer.enabled) {
        this.tracer.emit("vgpu.gtt.ignored", {
          vgpu: this.vgpuId,
          index,
          reason: `GMA ${hex(index * PAGE_SIZE)} is outside the vGPU's aperture and hidden ranges`,
        });
      }
      return;
    }
    if (bytes === 8) {
      this.guestLo[local] = lo;
      this.guestHi[local] = hi;
      this.pending[local] = HALF_NONE;
    } else {
      const half = (offset % 8) / 4;
      if (half === 0) this.guestLo[local] = lo;
      else this.guestHi[local] = lo;
      const p = this.pending[local]!;
      if (p === HALF_NONE || p === half + 1) {
        // The first half of a pair (or the same half again): hold the shadow until the other half comes.
        this.pending[local] = half + 1;
        if (this.tracer.enabled) this.traceWrite(index, local, bytes, false);
        return;
      }
      this.pending[local] = HALF_NONE;
    }
    if (this.tracer.enabled) this.traceWrite(index, local, bytes, true);
    this.shadow(index, local);
  }

  /** The guest's own entry: dword `half` (0 low, 1 high) of entry `index`; 0 outside the partition. */
  readHalf(index: number, half: number): number {
    const local = this.localIndex(index);
    if (local < 0) return 0;
    return half === 0 ? this.guestLo[local]! : this.guestHi[local]!;
  }

  // ---- lookups for the aperture and the command scanner ------------------------------------------------------------

  /** Whether [gma, gma + length) lies wholly inside the aperture or wholly inside the hidden partition. */
  inPartition(gma: number, length: number): boolean {
    if (length <= 0 || !Number.isSafeInteger(gma) || gma < 0) return false;
    const end = gma + length;
    const apBase = this.apFirst * PAGE_SIZE;
    const hiBase = this.hiFirst * PAGE_SIZE;
    return (
      (gma >= apBase && end <= apBase + this.apCount * PAGE_SIZE) ||
      (gma >= hiBase && end <= hiBase + this.hiCount * PAGE_SIZE)
    );
  }

  /** The guest frame the shadow entry of `gma`'s page maps, or a negative number (scratch, or outside). */
  gfnOf(gma: number): number {
    const local = this.localIndex(Math.floor(gma / PAGE_SIZE));
    return local < 0 ? GFN_SCRATCH : this.shadowGfn[local]!;
  }

  /**
   * Copies guest graphics memory [gma, gma + dst.length) into `dst` through the shadow GTT (the page each shadow
   * entry maps, read with vfio_dma_rw). Returns -1 on success, or the GMA of the first page that is outside the
   * partition or not backed by a guest page.
   */
  readGm(gma: number, dst: Uint8Array): number {
    return this.accessGm(gma, dst, false);
  }

  /** As `readGm`, writing `src` to guest graphics memory. */
  writeGm(gma: number, src: Uint8Array): number {
    return this.accessGm(gma, src, true);
  }

  /**
   * The guest-physical address that GGTT address `gma` names through the guest's own entry (GVT-g's
   * intel_vgpu_gma_to_gpa on its virtual GGTT, independent of the shadow), or undefined when the entry lies outside
   * the partition or is not present.
   */
  guestGpaOf(gma: number): Gpa | undefined {
    const local = this.localIndex(Math.floor(gma / PAGE_SIZE));
    if (local < 0) return undefined;
    const lo = this.guestLo[local]!;
    if ((lo & GEN8_PAGE_PRESENT) === 0) return undefined;
    const frame = (this.guestHi[local]! & PTE_HI_ADDR_MASK) * 2 ** 20 + (lo >>> 12);
    return gpa(frame * PAGE_SIZE + (gma % PAGE_SIZE));
  }

  /**
   * Writes `data` to guest GGTT address `gma` through the guest's own entries (GMA -> GPA -> vfio_dma_rw), as GVT-g
   * writes the guest's status page. Returns undefined, or why not (a page with no present entry, no vfio session, or
   * a GPA the VMM has not mapped).
   */
  writeGuestGgtt(gma: number, data: Uint8Array): string | undefined {
    const dma = this.dma;
    if (dma === undefined) return "no VMM has the vGPU open";
    for (let done = 0; done < data.length; ) {
      const a = gma + done;
      const n = Math.min(data.length - done, PAGE_SIZE - (a % PAGE_SIZE));
      const p = this.guestGpaOf(a);
      if (p === undefined) return `GGTT address ${hex(a)} has no present guest entry in the vGPU's partition`;
      try {
        dma.dmaRw(iovaOfGpa(p), data.subarray(done, done + n), true);
      } catch (e) {
        if (!(e instanceof KernelError)) throw e;
        return `GPA ${hex(p)} (GGTT address ${hex(a)}): ${e.message}`;
      }
      done += n;
    }
    return undefined;
  }

  // ---- guest pages for other users of the gfn cache (the shadow PPGTT) -----------------------------------------

  /**
   * A reference on guest frame `gfn`, pinned (vfio_pin_pages) and DMA-mapped (dma_map_page) through the gfn cache the
   * GGTT shadow uses, so a page both tables name is pinned and mapped once: its IOVA, or a KernelError with the errno
   * of the call that failed and a sentence naming it ("vfio_pin_pages(gpa 0x...) failed: ..."). Each success must be
   * paired with `unpinGuestPage`. Counted apart from GGTT entries (`externalRefs`), so the invariants still hold.
   */
  pinGuestPage(gfn: Gfn): Iova | KernelError {
    const got = this.pinAndMap(gfn);
    if (typeof got !== "number") {
      return new KernelError(got.errno, `${got.what}${got.cause !== undefined ? `: ${got.cause.message}` : ""}`);
    }
    this.extRefs.set(gfn, (this.extRefs.get(gfn) ?? 0) + 1);
    return this.cache.iova(got);
  }

  /** Drops a reference `pinGuestPage` took; the last reference of the page unmaps and unpins it. */
  unpinGuestPage(gfn: Gfn, why: string): void {
    const n = this.extRefs.get(gfn) ?? 0;
    if (n <= 0) throw new Error(`vgpu${this.vgpuId}: unpinning gfn ${hex(gfn)}, which has no external reference (bug)`);
    if (n === 1) this.extRefs.delete(gfn);
    else this.extRefs.set(gfn, n - 1);
    this.release(gfn, why);
  }

  /** References held through `pinGuestPage` (all pages). */
  get externalRefs(): number {
    let n = 0;
    for (const c of this.extRefs.values()) n += c;
    return n;
  }

  // ---- VMM unmap, reset ----------------------------------------------------------------------------------------

  /** The vfio dma_unmap callback: release every gfn in [iova, iova + length) and scratch the entries naming it. */
  dmaUnmap(iova: Iova, length: number): void {
    const first = gfnOfIova(iova);
    const last = gfnOfIova((iova + length - 1) as Iova);
    let gfns = 0;
    for (const g of this.cache.gfns()) if (g >= first && g <= last) gfns++;
    let entries = 0;
    if (gfns > 0) {
      const n = this.entries;
      for (let local = 0; local < n; local++) {
        const g = this.shadowGfn[local]!;
        if (g < first || g > last) continue;
        this.shadowGfn[local] = GFN_SCRATCH;
        this.populated--;
        this.gpu.writeGgtt(this.globalIndex(local), this.scratchPte);
        this.release(toGfn(g), "the VMM unmapped it");
        entries++;
      }
      for (const g of this.cache.gfns()) {
        if (g >= first && g <= last) {
          throw new Error(`vgpu${this.vgpuId}: gfn ${hex(g)} still cached after dma_unmap (refcount bug)`);
        }
      }
    }
    if (this.tracer.enabled) this.tracer.emit("vgpu.dma_unmap", { vgpu: this.vgpuId, iova, length, gfns, entries });
  }

  /** Device-level reset: every guest entry 0, every physical entry the scratch page, every pin and mapping released. */
  reset(): void {
    const n = this.entries;
    for (let local = 0; local < n; local++) {
      this.guestLo[local] = 0;
      this.guestHi[local] = 0;
      this.pending[local] = HALF_NONE;
      const g = this.shadowGfn[local]!;
      if (g === GFN_SCRATCH) continue;
      this.shadowGfn[local] = GFN_SCRATCH;
      this.gpu.writeGgtt(this.globalIndex(local), this.scratchPte);
      if (g >= 0) {
        this.populated--;
        this.release(toGfn(g), "reset");
      }
    }
  }

  // ---- inspection --------------------------------------------------------------------------------------------------

  stats(): ShadowGttStats {
    return {
      pinnedPages: this.cache.size,
      shadowEntries: this.populated,
      gfnCacheSize: this.cache.size,
      iovasMapped: this.iovas,
      scratchFallbacks: this.scratchFallbacks,
      ignoredWrites: this.ignored,
      guestWrites: this.writes,
      cacheHits: this.hits,
      cacheMisses: this.misses,
    };
  }

  /**
   * The most recent failure to populate an entry (undefined if none ever failed); `stats().scratchFallbacks` counts
   * them all.
   */
  get lastError(): PopulateError | undefined {
    return this.lastPopulateError;
  }

  /** The physical PTE this module wrote for `index` is what the GPU holds (reads the physical GGTT). */
  checkInvariants(): void {
    const fail = (why: string): never => {
      throw new Error(`vgpu${this.vgpuId} shadow GTT invariant: ${why}`);
    };
    const refs = new Map<number, number>();
    let populated = 0;
    const n = this.entries;
    for (let local = 0; local < n; local++) {
      const index = this.globalIndex(local);
      const g = this.shadowGfn[local]!;
      const phys = this.gpu.readGgtt(index);
      if (this.pending[local]! > 2) fail(`entry ${index} has a bad pending flag`);
      if (g < 0) {
        const want = g === GFN_SCRATCH ? this.scratchPte : this.scratchNotPresentPte;
        if (phys !== want)
          fail(
            `entry ${index} is not shadowed but the physical entry is ${hex(phys)}, not the vGPU's scratch ${hex(want)}`,
          );
        continue;
      }
      populated++;
      refs.set(g, (refs.get(g) ?? 0) + 1);
      const s = this.cache.slot(g);
      if (s < 0) fail(`entry ${index} maps gfn ${hex(g)}, which is not in the gfn cache (unmapped page)`);
      if (phys !== gen8PteEncode(this.cache.iova(s))) {
        fail(`entry ${index}: physical ${hex(phys)} != gen8PteEncode(iova ${hex(this.cache.iova(s))})`);
      }
    }
    if (populated !== this.populated) fail(`populated count ${this.populated} != ${populated} entries`);
    for (const g of this.cache.gfns()) {
      const s = this.cache.slot(g);
      const want = (refs.get(g) ?? 0) + (this.extRefs.get(g) ?? 0);
      if (this.cache.ref(s) !== want) {
        fail(
          `gfn ${hex(g)} has refcount ${this.cache.ref(s)} but ${refs.get(g) ?? 0} entries and ` +
            `${this.extRefs.get(g) ?? 0} PPGTT references name it`,
        );
      }
    }
    for (const g of this.extRefs.keys()) {
      if (this.cache.slot(g) < 0) fail(`gfn ${hex(g)} has PPGTT references but is not in the gfn cache`);
    }
    if (this.iovas !== this.cache.size) fail(`${this.iovas} IOVAs mapped for ${this.cache.size} cached gfns`);
  }

  // ---- internals ---------------------------------------------------------------------------------------------------

  /** Local index of GGTT entry `index`, or -1 outside the partition. */
  private localIndex(index: number): number {
    let d = index - this.apFirst;
    if (d >= 0 && d < this.apCount) return d;
    d = index - this.hiFirst;
    if (d >= 0 && d < this.hiCount) return this.apCount + d;
    return -1;
  }

  private globalIndex(local: number): number {
    return local < this.apCount ? this.apFirst + local : this.hiFirst + (local - this.apCount);
  }

  /** Shadows the complete guest entry `local` (GGTT index `index`). */
  private shadow(index: number, local: number): void {
    const lo = this.guestLo[local]!;
    const hi = this.guestHi[local]!;
    const old = this.shadowGfn[local]!;
    if ((lo & GEN8_PAGE_PRESENT) === 0) {
      this.shadowGfn[local] = GFN_NOT_PRESENT;
      this.gpu.writeGgtt(index, this.scratchNotPresentPte);
    } else {
      const gfn = toGfn((hi & PTE_HI_ADDR_MASK) * 2 ** 20 + (lo >>> 12));
      const s = this.acquire(gfn, index);
      if (s >= 0) {
        this.shadowGfn[local] = gfn;
        if (old < 0) this.populated++;
        this.gpu.writeGgtt(index, gen8PteEncode(this.cache.iova(s)));
        if (this.tracer.enabled) {
          this.tracer.emit("vgpu.gtt.shadow", {
            vgpu: this.vgpuId,
            index,
            gfn,
            iova: this.cache.iova(s),
            hit: this.lastHit,
          });
        }
        if (old >= 0) this.release(toGfn(old), "guest entry rewritten");
        return;
      }
      this.scratchFallbacks++;
      this.shadowGfn[local] = GFN_SCRATCH;
      this.gpu.writeGgtt(index, this.scratchPte);
      if (this.tracer.enabled) {
        this.tracer.emit("vgpu.gtt.scratch", { vgpu: this.vgpuId, index, gfn, reason: this.traceReason() });
      }
    }
    if (old >= 0) {
      this.populated--;
      this.release(toGfn(old), "guest entry rewritten");
    }
  }

  /**
   * A reference on `gfn`'s pinned, DMA-mapped page: its cache slot, or -1 if it cannot be populated (the failure is
   * then in `lastPopulateError`). `index` is the entry being shadowed, for that record.
   */
  private acquire(gfn: Gfn, index: number): number {
    const got = this.pinAndMap(gfn);
    if (typeof got === "number") return got;
    return this.populateFailed(got.step, got.errno, index, gfn, got.what, got.cause);
  }

  /**
   * The gfn cache's lookup-or-pin (kvmgt's gvt_dma_map_page): a hit takes one more reference; a miss pins the page
   * with vfio_pin_pages (IOVA = GPA) and maps it with dma_map_page. Returns the slot, or why it could not.
   */
  private pinAndMap(gfn: Gfn): number | PinFailure {
    const s = this.cache.slot(gfn);
    if (s >= 0) {
      this.cache.addRef(s, 1);
      this.hits++;
      this.lastHit = true;
      return s;
    }
    this.misses++;
    this.lastHit = false;
    const dma = this.dma;
    if (dma === undefined) {
      // vfio_pin_pages' answer for a device no user has open.
      return {
        step: "no vfio session",
        errno: Errno.EINVAL,
        what: "no VMM has the device open (no vfio DMA access to pin guest pages)",
      };
    }
    const iova = iovaOfGfn(gfn);
    let frame: Pfn;
    try {
      const pinned = dma.pinPages(iova, 1, IOMMU_READ | IOMMU_WRITE);
      frame = pinned[0]!;
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      return { step: "vfio_pin_pages", errno: e.errno, what: `vfio_pin_pages(gpa ${hex(iova)}) failed`, cause: e };
    }
    let mapped: Iova;
    try {
      mapped =
        this.mapper !== undefined
          ? this.mapper.map(this.vgpuId, gfn, frame)
          : this.gpu.dma.mapPage(frame, 0, PAGE_SIZE, DmaDirection.BIDIRECTIONAL);
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      dma.unpinPages(iova, 1);
      return { step: "dma_map_page", errno: e.errno, what: `dma_map_page(pfn ${hex(frame)}) failed`, cause: e };
    }
    this.iovas++;
    if (this.tracer.enabled) this.tracer.emit("vgpu.gfn.pin", { vgpu: this.vgpuId, gfn, pfn: frame, iova: mapped });
    return this.cache.insert(gfn, frame, mapped);
  }

  /** Records why populating entry `index` failed (`what` failed, with `cause` when a call threw); returns -1. */
  private populateFailed(
    step: PopulateStep,
    errno: Errno,
    index: number,
    gfn: Gfn,
    what: string,
    cause?: KernelError,
  ): number {
    this.lastCause = cause;
    this.lastWhat = what;
    this.lastPopulateError = {
      errno,
      step,
      index,
      gfn,
      message:
        `vgpu${this.vgpuId} could not populate GTT entry ${index} (GMA ${hex(index * PAGE_SIZE)}) with guest page ` +
        `gfn ${hex(gfn)}, so it points at the vGPU's scratch page: ${what}${cause !== undefined ? `: ${cause.message}` : ""}`,
    };
    return -1;
  }

  /** The reason of the last "vgpu.gtt.scratch" event: the failing call, its errno name and its sentence. */
  private traceReason(): string {
    const c = this.lastCause;
    return c === undefined ? this.lastWhat : `${this.lastWhat}: ${c.code}: ${c.message}`;
  }

  /** Drops one reference on `gfn`; the last one unmaps and unpins it. */
  private release(gfn: Gfn, why: string): void {
    const s = this.cache.slot(gfn);
    if (s < 0) throw new Error(`vgpu${this.vgpuId}: releasing gfn ${hex(gfn)}, which is not cached (refcount bug)`);
    if (this.cache.addRef(s, -1) > 0) return;
    const iova = this.cache.iova(s);
    this.cache.remove(s);
    if (this.mapper !== undefined) this.mapper.unmap(this.vgpuId, gfn, iova);
    else this.gpu.dma.unmapPage(iova, PAGE_SIZE, DmaDirection.BIDIRECTIONAL);
    this.iovas--;
    // close() resets before the session's DMA access goes, so a cached gfn always has a session to unpin through.
    const dma = this.dma;
    if (dma === undefined) throw new Error(`vgpu${this.vgpuId}: gfn ${hex(gfn)} cached with no vfio session (bug)`);
    dma.unpinPages(iovaOfGfn(gfn), 1);
    if (this.tracer.enabled) this.tracer.emit("vgpu.gfn.unpin", { vgpu: this.vgpuId, gfn, iova, why });
  }

  private accessGm(gma: number, buf: Uint8Array, write: boolean): number {
    const dma = this.dma;
    let a = gma;
    let done = 0;
    const len = buf.length;
    while (done < len) {
      const po = a % PAGE_SIZE;
      const n = Math.min(len - done, PAGE_SIZE - po);
      const g = this.gfnOf(a);
      if (g < 0 || dma === undefined) return a;
      try {
        dma.dmaRw(iovaOfGfn(toGfn(g), po), buf.subarray(done, done + n), write);
      } catch (e) {
        if (!(e instanceof KernelError)) throw e;
        return a;
      }
      a += n;
      done += n;
    }
    return -1;
  }

  private traceWrite(index: number, local: number, bytes: number, complete: boolean): void {
    const pte = `0x${this.guestHi[local]!.toString(16).padStart(8, "0")}${this.guestLo[local]!.toString(16).padStart(8, "0")}`;
    this.tracer.emit("vgpu.gtt.write", { vgpu: this.vgpuId, index, pte, bytes, complete });
  }
}
