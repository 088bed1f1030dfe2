/**
 * The shadow PPGTT: GVT-g's gtt.c shadow page tables (shadow_ppgtt_mm, ppgtt_populate_spt, the spt hash) for a
 * guest whose page-table pages the vendor driver cannot write-protect. A guest context names its PPGTT by the
 * guest-physical address of a PML4 (PDP0 of its register state); the engine must never walk that: it walks a
 * shadow whose tables are host pages (`ShadowTablePage`, walked by DMA address through the IOMMU) and whose leaf
 * entries hold IOVAs of guest pages the vendor driver pinned (vfio_pin_pages) and mapped (dma_map_page) through the
 * gfn cache of the shadow GTT (gtt.ts `pinGuestPage`, so a page both tables name is pinned and mapped once).
 *
 * Structures:
 * - a shadow page table (spt) per (guest table page, level): the guest's 512 entries as last shadowed (the
 *   snapshot), the shadow's 512 entries (a CPU copy of its host page) and what each entry holds a reference on (a
 *   child spt, or a pinned gfn). Spts are shared: every guest entry naming the same guest table at the same level
 *   points at one shadow (i915's scratch tables, named by hundreds of entries, are shadowed once);
 * - an mm per guest root (the PML4's GPA): GVT-g's intel_vgpu_mm. It lives while the guest announces it (g2v L4
 *   create, until destroy) or, for a root never announced, while a workload uses it: created on demand at workload
 *   creation, as GVT-g's intel_vgpu_get_ppgtt_mm does, and dropped with the workload.
 *
 * Shadow entries: a present guest entry -> its child's shadow table (upper levels) or the pinned page's IOVA (PTE),
 * with PRESENT and the guest's RW bit; caching bits (PWT, PCD, PAT) and IPS are dropped, as every shadow table maps
 * 4 KiB pages (GVT-g splits 64 KiB entries the same way). A guest entry that is not present -> the vGPU's own
 * scratch page with PRESENT clear, so the engine faults where it would on hardware (as the GGTT shadow does).
 *
 * Re-validation (the design that replaces write-protection; see docs/gpu-programming.md 10.11): vfio-user gives the
 * vendor driver no way to trap guest writes to its page tables (GVT-g uses KVM page tracking), so every acquisition
 * for a workload (`acquire`, once per ELSP submission of a context) re-walks the guest's tables from the root: each
 * distinct guest table is read once (vfio_dma_rw), compared entry by entry with its snapshot, and only the entries
 * that changed are re-shadowed (new reference first, then the old one dropped); an unchanged upper entry is still
 * followed, since its child may have changed. Between two walks the shadow is a consistent snapshot of the guest's
 * tables as they were validated: every entry names a page pinned for this VM or the vGPU's scratch page, so a guest
 * that rewrites a PTE after submitting changes nothing the engine uses (the change takes effect at its next
 * submission, when it is validated), exactly as a TLB would hold the old translation. i915 writes (and flushes) its
 * PTEs before it submits the request that uses them, so it sees no difference. The cost is one read of every guest
 * table per submission, measured in bench/vgpu.bench.ts.
 *
 * Rejections (the workload fails with the reason, counted and traced; nothing is half-shadowed: a failed entry keeps
 * its previous shadow and snapshot, and tables created by the failed walk are freed):
 * - a guest table page the VMM has not mapped (vfio_dma_rw fails): EFAULT;
 * - a PTE naming a page outside the VM's memory (vfio_pin_pages fails): ENXIO, as GVT-g's ppgtt_populate_shadow_entry
 *   fails it (Linux 6.1's GVT-g pointed such an entry at its scratch page instead; the later kernels reject, and
 *   so does this model: a guest that maps memory it does not own is broken or hostile);
 * - a 1 GiB or 2 MiB page (PS bit of a PDPE or PDE; the vGPU does not offer HUGE_GTT): EINVAL;
 * - more than `maxTables` shadow tables for the vGPU (a bound on host memory a guest can make the vendor driver
 *   spend): ENOSPC; a host with no graphics memory left for a table: ENOSPC.
 *
 * Release: an spt is freed when no entry or root references it (its entries' references dropped, its page freed);
 * `destroy` (g2v L4 destroy), the last workload of an on-demand mm, `reset` (device reset, close) free mms; the
 * VMM's unmap (`dmaUnmap`, type1's notification) points every shadow PTE naming an unmapped gfn at the scratch page
 * (present: work already queued writes there harmlessly) and drops its pin; the entry is marked stale so the next
 * walk shadows it again (and rejects it while the memory stays unmapped).
 *
 * Not modelled: 3-level (legacy 32-bit) PPGTTs (the GPU model walks 4 levels only: such contexts are rejected
 * before they get here), GVT-g's out-of-sync pages, PPGTT reclaim under pin pressure.
 *
 * Invariants (`checkInvariants`): each spt's reference count equals the entries and mm roots naming it; each
 * present shadow entry names its child's page or a gfn this module holds a reference on, and the host page holds
 * exactly the CPU copy; no spt is unreferenced after a walk.
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
  type Tracer,
  gfn as toGfn,
} from "../core/index.ts";
import { GEN8_PAGE_PRESENT, GEN8_PAGE_RW, GEN8_PDE_PS_2M, GEN8_PDPE_PS_1G, ppgttEntryAddress } from "../gpu/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.ppgtt.mm": { vgpu: number; root: number; change: string; tables: number };
    "vgpu.ppgtt.spt_alloc": { vgpu: number; level: string; gfn: number; iova: number };
    "vgpu.ppgtt.spt_change": { vgpu: number; action: string; level: string; gfn: number };
    "vgpu.ppgtt.spt_guest_change": {
      vgpu: number;
      level: string;
      table: number;
      index: number;
      before: string;
      after: string;
    };
    "vgpu.ppgtt.shadow_entry": { vgpu: number; level: string; table: number; index: number; entry: string };
    "vgpu.ppgtt.revalidate": {
      vgpu: number;
      root: number;
      tables: number;
      changed: number;
      created: number;
      freed: number;
      outcome: string;
    };
    "vgpu.ppgtt.gma_translate": { vgpu: number; root: number; gma: number; gpa: number };
    "vgpu.ppgtt.unmap": { vgpu: number; first: number; last: number; entries: number };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.ppgtt.mm": "vgpu{vgpu}: shadow PPGTT of root {root} {change} ({tables} shadow table(s) in all)",
  "vgpu.ppgtt.spt_alloc": "vgpu{vgpu}: shadow {level} table for guest table gfn {gfn} at iova {iova}",
  "vgpu.ppgtt.spt_change": "vgpu{vgpu}: shadow {level} table of guest gfn {gfn} {action}",
  "vgpu.ppgtt.spt_guest_change": "vgpu{vgpu}: guest {level}[{index}] of table gfn {table} changed {before} -> {after}",
  "vgpu.ppgtt.shadow_entry": "vgpu{vgpu}: shadow {level}[{index}] of table gfn {table} = {entry}",
  "vgpu.ppgtt.revalidate":
    "vgpu{vgpu}: PPGTT root {root} re-walked: {tables} table(s), {changed} entr(ies) changed, {created} table(s) new, {freed} freed: {outcome}",
  "vgpu.ppgtt.gma_translate": "vgpu{vgpu}: ppgtt (root {root}) gma {gma} -> gpa {gpa}",
  "vgpu.ppgtt.unmap": "vgpu{vgpu}: VMM unmaps gfns {first}..{last}: {entries} shadow PTE(s) to scratch",
});

/** Entry names per level, root first (as the GPU model's walker names them). */
const LEVELS = ["PML4E", "PDPE", "PDE", "PTE"] as const;
/** Table names per level. */
const TABLES = ["PML4", "PDP", "PD", "PT"] as const;
const LEAF = 3;
const ENTRIES = 512;
/** A leaf entry holding an unchecked guest address (`unsafeTrustGuestPtes`). */
const UNCHECKED = -2;
const TWO32 = 4294967296;
/** The default bound on shadow tables per vGPU (16 MiB of host pages). */
export const MAX_SHADOW_TABLES = 4096;

/** A host page holding one shadow table: written by the CPU, walked by the GPU at `dmaAddr`. */
export interface ShadowTablePage {
  readonly dmaAddr: Iova;
  write(offset: number, data: Uint8Array): void;
  read(offset: number, into: Uint8Array): void;
  free(): void;
}

/** What the shadow PPGTT needs of its vGPU (consumer-side interface; vgpu.ts provides it). */
export interface ShadowPpgttDeps {
  readonly vgpuId: number;
  readonly tracer: Tracer;
  /** vfio_dma_rw of guest memory at `at` into `into`; throws KernelError (EFAULT/EINVAL) outside the VM's memory. */
  readGuest(at: Gpa, into: Uint8Array): void;
  /** A pinned, DMA-mapped reference on guest frame `gfn` (the gfn cache): its IOVA, or why not. */
  pinGuestPage(gfn: Gfn): Iova | KernelError;
  unpinGuestPage(gfn: Gfn, why: string): void;
  /** A zeroed host page for a shadow table; throws KernelError (ENOSPC) when there is none. */
  allocTable(): ShadowTablePage;
  /** DMA address of the vGPU's own scratch page. */
  readonly scratch: Iova;
  /** Bound on shadow tables (default MAX_SHADOW_TABLES). */
  readonly maxTables?: number;
  /**
   * TEST ONLY: a deliberately broken mediator: leaf entries are not checked, pinned or mapped; the guest's address
   * goes into the shadow PTE as a DMA address, so the isolation checker can be shown to catch what then reaches
   * memory the VM does not own. Never set otherwise.
   */
  readonly unsafeTrustGuestPtes?: boolean;
}

/** Counters of one vGPU's shadow PPGTT (part of `VgpuStats`). */
export interface ShadowPpgttStats {
  /** Guest address spaces shadowed now (announced or in use by a workload). */
  readonly mms: number;
  /** Shadow tables now. */
  readonly tables: number;
  /** PTE references on pinned guest pages now (a page named by n PTEs counts n). */
  readonly pteRefs: number;
  /** Re-walks of a guest PPGTT (one per workload, one per announcement). */
  readonly walks: number;
  /** Guest tables read by those walks. */
  readonly tableReads: number;
  /** Guest entries found changed and shadowed again. */
  readonly entryChanges: number;
  /** Walks that failed (the workload was rejected). */
  readonly rejections: number;
}

/** One shadow page table. */
class Spt {
  refs = 0;
  /** The walk that last revalidated it. */
  epoch = 0;
  /** Guest entries as last shadowed: lo, hi per entry. */
  readonly guest = new Uint32Array(2 * ENTRIES);
  /** Shadow entries as written to the page: lo, hi per entry. */
  readonly shadow = new Uint32Array(2 * ENTRIES);
  /** Upper levels: the child spt of each entry. */
  readonly children: (Spt | undefined)[];
  /** Leaf level: the gfn each entry holds a reference on, or -1 (-2: an unchecked guest address, test only). */
  readonly gfns: Float64Array;
  /** Entries to shadow again whatever the snapshot says (their page was unmapped by the VMM). */
  readonly stale = new Uint8Array(ENTRIES);

  constructor(
    readonly key: number,
    readonly level: number,
    readonly gfn: Gfn,
    readonly page: ShadowTablePage,
  ) {
    this.children = level < LEAF ? new Array<Spt | undefined>(ENTRIES).fill(undefined) : [];
    this.gfns = new Float64Array(level === LEAF ? ENTRIES : 0).fill(-1);
  }
}

/** One guest address space (GVT-g's intel_vgpu_mm of type PPGTT). */
interface Mm {
  readonly rootGfn: Gfn;
  root: Spt | undefined;
  /** g2v L4 create references. */
  announced: number;
  /** Workloads holding it. */
  workloads: number;
  live: boolean;
}

/** A workload's hold on an mm (`release` gives it back). */
export interface PpgttRef {
  /** The guest root (the PML4's GPA). */
  readonly root: Gpa;
  /** DMA address of the shadow PML4: what the context's PDP0 is set to. */
  readonly pml4: Iova;
}

interface RefImpl extends PpgttRef {
  readonly mm: Mm;
  released: boolean;
}

/** Thrown inside a walk, caught at its top. */
class Reject {
  constructor(readonly error: KernelError) {}
}

export class ShadowPpgtt {
  private readonly deps: ShadowPpgttDeps;
  private readonly maxTables: number;
  private readonly spts = new Map<number, Spt>();
  private readonly mms = new Map<number, Mm>();
  private readonly scratchLo: number;
  private readonly scratchHi: number;
  /** One read buffer per level (a walk recurses one level down at a time). */
  private readonly bufs = [0, 1, 2, 3].map(() => new Uint32Array(2 * ENTRIES));
  private readonly bufBytes = this.bufs.map((b) => new Uint8Array(b.buffer));
  private epoch = 0;
  /** Spts whose count dropped to 0 during a walk (freed at its end unless referenced again). */
  private zero: Spt[] = [];
  private walking = false;
  private counts = { walks: 0, tableReads: 0, entryChanges: 0, rejections: 0 };
  private pteRefs = 0;
  // Per walk.
  private changed = 0;
  private created = 0;
  private freed = 0;

  constructor(deps: ShadowPpgttDeps) {
    this.deps = deps;
    this.maxTables = deps.maxTables ?? MAX_SHADOW_TABLES;
    this.scratchLo = (deps.scratch % TWO32) >>> 0;
    this.scratchHi = Math.floor(deps.scratch / TWO32) >>> 0;
  }

  // ---- address spaces ------------------------------------------------------------------------------------------

  /**
   * g2v L4 create: the guest announces the PPGTT whose PML4 is at `pml4`; it is shadowed now (GVT-g populates at
   * creation). A failure is returned (and traced) and leaves the root announced but unshadowed: the first workload
   * that uses it walks again.
   */
  announce(pml4: Gpa): KernelError | undefined {
    const bad = this.checkRoot(pml4);
    if (bad !== undefined) return bad;
    const mm = this.mmOf(pml4, "announced");
    mm.announced++;
    return this.revalidate(mm);
  }

  /** g2v L4 destroy: one announcement of `pml4` fewer; the shadow goes with the last reference. */
  unannounce(pml4: Gpa): void {
    const mm = this.mms.get(Math.floor(pml4 / PAGE_SIZE));
    if (mm === undefined || mm.announced === 0) return;
    mm.announced--;
    this.maybeDrop(mm);
  }

  /**
   * A workload's reference on the PPGTT rooted at `pml4` (created on demand if the guest never announced it, as
   * GVT-g's intel_vgpu_get_ppgtt_mm), re-validated against the guest's tables now. Returns the shadow PML4's DMA
   * address, or the reason the tables cannot be shadowed (the reference is then not taken).
   */
  acquire(pml4: Gpa): PpgttRef | KernelError {
    const bad = this.checkRoot(pml4);
    if (bad !== undefined) return bad;
    const mm = this.mmOf(pml4, "created on demand (never announced through g2v)");
    mm.workloads++;
    const err = this.revalidate(mm);
    if (err !== undefined || mm.root === undefined) {
      mm.workloads--;
      this.maybeDrop(mm);
      return err ?? new KernelError(Errno.EFAULT, "no shadow root");
    }
    const ref: RefImpl = { root: pml4, pml4: mm.root.page.dmaAddr, mm, released: false };
    return ref;
  }

  /** Gives a workload's reference back (a reference of a shadow that a reset already freed is ignored). */
  release(ref: PpgttRef): void {
    const r = ref as RefImpl;
    if (r.released) return;
    r.released = true;
    if (!r.mm.live) return;
    r.mm.workloads--;
    this.maybeDrop(r.mm);
  }

  /**
   * The guest-physical address that PPGTT address `gma` maps in the shadow `ref` holds (what the engine reaches
   * through it), or undefined when the shadow maps no guest page there (not present, scratch). For the command
   * scanner's reads of PPGTT batch buffers: the same translation the engine will use.
   */
  translate(ref: PpgttRef, gma: number): Gpa | undefined {
    const r = ref as RefImpl;
    let spt = r.mm.live ? r.mm.root : undefined;
    if (spt === undefined || !(gma >= 0 && gma < 2 ** 48)) return undefined;
    const page = Math.floor(gma / PAGE_SIZE);
    for (let level = 0; level < LEAF; level++) {
      const i = Math.floor(page / 2 ** (9 * (3 - level))) % ENTRIES;
      spt = spt.children[i];
      if (spt === undefined) return undefined;
    }
    const g = spt.gfns[page % ENTRIES]!;
    if (g < 0) return undefined;
    const at = gpa(g * PAGE_SIZE + (gma % PAGE_SIZE));
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.ppgtt.gma_translate", { vgpu: this.deps.vgpuId, root: r.root, gma, gpa: at });
    }
    return at;
  }

  /**
   * DMA address of the shadow PML4 of the guest PPGTT rooted at `pml4`, while one is shadowed (announced, or held by
   * a workload); undefined otherwise. Read-only: for `vgpu explain`, which walks the shadow tables as the engine does.
   */
  shadowRoot(pml4: Gpa): Iova | undefined {
    const mm = this.mms.get(Math.floor(pml4 / PAGE_SIZE));
    return mm?.live && mm.root !== undefined ? mm.root.page.dmaAddr : undefined;
  }

  /** type1's dma_unmap for gfns [first, last]: shadow PTEs naming them go to the scratch page and drop their pins. */
  dmaUnmap(first: Gfn, last: Gfn): number {
    let entries = 0;
    for (const spt of this.spts.values()) {
      if (spt.level !== LEAF) continue;
      let lo = ENTRIES;
      let hi = -1;
      for (let i = 0; i < ENTRIES; i++) {
        const g = spt.gfns[i]!;
        if (g < first || g > last) continue;
        spt.gfns[i] = -1;
        spt.stale[i] = 1;
        spt.shadow[2 * i] = (this.scratchLo | GEN8_PAGE_PRESENT | GEN8_PAGE_RW) >>> 0;
        spt.shadow[2 * i + 1] = this.scratchHi;
        this.pteRefs--;
        this.deps.unpinGuestPage(toGfn(g), "the VMM unmapped it");
        entries++;
        lo = Math.min(lo, i);
        hi = i;
      }
      if (hi >= 0) this.flush(spt, lo, hi);
    }
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.ppgtt.unmap", { vgpu: this.deps.vgpuId, first, last, entries });
    }
    return entries;
  }

  /** Device reset, close: every shadow freed, every pin dropped; outstanding references become no-ops. */
  reset(): void {
    for (const mm of this.mms.values()) {
      mm.live = false;
      const root = mm.root;
      mm.root = undefined;
      if (root !== undefined) this.unref(root);
    }
    this.mms.clear();
    this.sweep();
  }

  stats(): ShadowPpgttStats {
    return { mms: this.mms.size, tables: this.spts.size, pteRefs: this.pteRefs, ...this.counts };
  }

  checkInvariants(): void {
    const fail = (why: string): never => {
      throw new Error(`vgpu${this.deps.vgpuId} shadow PPGTT invariant: ${why}`);
    };
    const refs = new Map<Spt, number>();
    let pte = 0;
    for (const mm of this.mms.values()) if (mm.root !== undefined) refs.set(mm.root, (refs.get(mm.root) ?? 0) + 1);
    const page = new Uint32Array(2 * ENTRIES);
    const pageBytes = new Uint8Array(page.buffer);
    for (const spt of this.spts.values()) {
      spt.page.read(0, pageBytes);
      for (let i = 0; i < 2 * ENTRIES; i++) {
        if (page[i] !== spt.shadow[i]) fail(`${TABLES[spt.level]} table of gfn ${hex(spt.gfn)}: page differs at ${i}`);
      }
      for (let i = 0; i < ENTRIES; i++) {
        const lo = spt.shadow[2 * i]!;
        const at = ppgttEntryAddress(lo, spt.shadow[2 * i + 1]!);
        if (spt.level < LEAF) {
          const c = spt.children[i];
          if (c !== undefined) {
            refs.set(c, (refs.get(c) ?? 0) + 1);
            if (at !== c.page.dmaAddr || (lo & GEN8_PAGE_PRESENT) === 0) fail(`entry ${i} does not name its child`);
          } else if (at !== this.deps.scratch) fail(`entry ${i} of a ${TABLES[spt.level]} table names no child`);
        } else if (spt.gfns[i] === UNCHECKED) {
          if (!this.deps.unsafeTrustGuestPtes) fail(`PTE ${i} holds an unchecked guest address`);
        } else if (spt.gfns[i]! >= 0) {
          pte++;
          if ((lo & GEN8_PAGE_PRESENT) === 0) fail(`PTE ${i} holds a pin but is not present`);
        } else if (at !== this.deps.scratch) fail(`PTE ${i} holds no pin but is not the scratch page`);
      }
    }
    for (const spt of this.spts.values()) {
      if ((refs.get(spt) ?? 0) !== spt.refs)
        fail(`spt of gfn ${hex(spt.gfn)} has ${spt.refs} refs, named ${refs.get(spt) ?? 0}`);
      if (spt.refs === 0) fail(`spt of gfn ${hex(spt.gfn)} is unreferenced`);
    }
    if (pte !== this.pteRefs) fail(`${this.pteRefs} PTE references counted, ${pte} found`);
  }

  // ---- the walk ------------------------------------------------------------------------------------------------

  private checkRoot(pml4: Gpa): KernelError | undefined {
    if (Number.isSafeInteger(pml4) && pml4 > 0 && pml4 % PAGE_SIZE === 0) return undefined;
    return new KernelError(
      Errno.EINVAL,
      `vgpu${this.deps.vgpuId}: PML4 address ${hex(pml4)} is ${pml4 <= 0 ? "0: no PPGTT" : "not page aligned"}`,
    );
  }

  private mmOf(pml4: Gpa, how: string): Mm {
    const key = Math.floor(pml4 / PAGE_SIZE);
    let mm = this.mms.get(key);
    if (mm === undefined) {
      mm = { rootGfn: toGfn(key), root: undefined, announced: 0, workloads: 0, live: true };
      this.mms.set(key, mm);
      this.traceMm(mm, how);
    }
    return mm;
  }

  private maybeDrop(mm: Mm): void {
    if (mm.announced > 0 || mm.workloads > 0 || !mm.live) return;
    mm.live = false;
    this.mms.delete(mm.rootGfn);
    const root = mm.root;
    mm.root = undefined;
    if (root !== undefined) {
      this.unref(root);
      this.sweep();
    }
    this.traceMm(mm, "destroyed");
  }

  /** Walks the guest tables of `mm` and brings its shadow up to date; undefined, or why the walk failed. */
  private revalidate(mm: Mm): KernelError | undefined {
    this.epoch++;
    this.counts.walks++;
    this.changed = 0;
    this.created = 0;
    this.freed = 0;
    this.walking = true;
    let error: KernelError | undefined;
    try {
      const root = this.visit(mm.rootGfn, 0, -1, 0);
      if (mm.root !== root) {
        root.refs++;
        if (mm.root !== undefined) this.unref(mm.root);
        mm.root = root;
      }
    } catch (e) {
      if (!(e instanceof Reject)) throw e;
      error = e.error;
      this.counts.rejections++;
    } finally {
      this.walking = false;
      this.sweep();
    }
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.ppgtt.revalidate", {
        vgpu: this.deps.vgpuId,
        root: mm.rootGfn * PAGE_SIZE,
        tables: this.spts.size,
        changed: this.changed,
        created: this.created,
        freed: this.freed,
        outcome: error === undefined ? "ok" : `rejected: ${error.message}`,
      });
    }
    return error;
  }

  /**
   * Brings the shadow of guest table `g` at `level` up to date (once per walk) and returns it. `from` and `index`
   * name the guest table and entry that led here (-1 for the root), for messages.
   */
  private visit(g: Gfn, level: number, from: number, index: number): Spt {
    const key = g * 4 + level;
    let spt = this.spts.get(key);
    if (spt !== undefined && spt.epoch === this.epoch) return spt;
    const buf = this.bufs[level]!;
    try {
      this.deps.readGuest(gpa(g * PAGE_SIZE), this.bufBytes[level]!);
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      const via =
        from < 0
          ? "the context's root"
          : `named by ${LEVELS[level - 1]}[${index}] of the table at GPA ${hex(from * PAGE_SIZE)}`;
      throw this.reject(
        Errno.EFAULT,
        `the guest's ${TABLES[level]} table at GPA ${hex(g * PAGE_SIZE)} (${via}) is not guest memory: ${e.message}`,
      );
    }
    this.counts.tableReads++;
    if (spt === undefined) spt = this.create(key, level, g);
    spt.epoch = this.epoch;
    let lo = ENTRIES;
    let hi = -1;
    try {
      for (let i = 0; i < ENTRIES; i++) {
        const glo = buf[2 * i]!;
        const ghi = buf[2 * i + 1]!;
        const same = glo === spt.guest[2 * i] && ghi === spt.guest[2 * i + 1] && spt.stale[i] === 0;
        const present = (glo & GEN8_PAGE_PRESENT) !== 0;
        if (level < LEAF) {
          if (!present) {
            if (same) continue;
            this.setUpper(spt, i, undefined, glo, ghi);
          } else {
            const prev = spt.children[i];
            if (same && prev !== undefined) {
              // Unchanged: the same child, which may have changed inside (visited once per walk).
              if (prev.epoch !== this.epoch) this.visit(prev.gfn, level + 1, g, i);
              continue;
            }
            const psBit = level === 1 ? GEN8_PDPE_PS_1G : level === 2 ? GEN8_PDE_PS_2M : 0;
            if ((glo & psBit) !== 0) {
              throw this.reject(
                Errno.EINVAL,
                `guest ${LEVELS[level]}[${i}] of the table at GPA ${hex(g * PAGE_SIZE)} maps a ${level === 1 ? "1 GiB" : "2 MiB"} page: the vGPU offers 4 KiB pages only (no HUGE_GTT)`,
              );
            }
            const child = this.visit(toGfn(Math.floor(ppgttEntryAddress(glo, ghi) / PAGE_SIZE)), level + 1, g, i);
            this.setUpper(spt, i, child, glo, ghi);
          }
        } else {
          if (same) continue;
          this.setLeaf(spt, i, glo, ghi, present);
        }
        lo = Math.min(lo, i);
        hi = i;
      }
    } finally {
      if (hi >= 0) this.flush(spt, lo, hi);
    }
    return spt;
  }

  /** Points upper entry `i` of `spt` at `child` (undefined: not present), recording the guest entry. */
  private setUpper(spt: Spt, i: number, child: Spt | undefined, glo: number, ghi: number): void {
    this.traceGuest(spt, i, glo, ghi);
    const old = spt.children[i];
    if (child !== undefined) {
      child.refs++;
      spt.shadow[2 * i] = (lowBits(child.page.dmaAddr) | GEN8_PAGE_PRESENT | (glo & GEN8_PAGE_RW)) >>> 0;
      spt.shadow[2 * i + 1] = highBits(child.page.dmaAddr);
    } else {
      spt.shadow[2 * i] = this.scratchLo;
      spt.shadow[2 * i + 1] = this.scratchHi;
    }
    spt.children[i] = child;
    if (old !== undefined) this.unref(old);
    this.record(spt, i, glo, ghi);
  }

  /** Shadows PTE `i` of leaf `spt`: pins the new page first, then drops the old one. */
  private setLeaf(spt: Spt, i: number, glo: number, ghi: number, present: boolean): void {
    this.traceGuest(spt, i, glo, ghi);
    const old = spt.gfns[i]!;
    if (present && this.deps.unsafeTrustGuestPtes) {
      spt.gfns[i] = UNCHECKED;
      spt.shadow[2 * i] = (glo & ~0xffc) >>> 0;
      spt.shadow[2 * i + 1] = ghi & 0xfffff;
    } else if (present) {
      const at = ppgttEntryAddress(glo, ghi);
      const g = toGfn(Math.floor(at / PAGE_SIZE));
      const iova = this.deps.pinGuestPage(g);
      if (iova instanceof KernelError) {
        throw this.reject(
          Errno.ENXIO,
          `guest PTE[${i}] of the page table at GPA ${hex(spt.gfn * PAGE_SIZE)} maps GPA ${hex(at)}, which is not ` +
            `memory of this VM: ${iova.message}`,
        );
      }
      this.pteRefs++;
      spt.gfns[i] = g;
      spt.shadow[2 * i] = (lowBits(iova) | GEN8_PAGE_PRESENT | (glo & GEN8_PAGE_RW)) >>> 0;
      spt.shadow[2 * i + 1] = highBits(iova);
    } else {
      spt.gfns[i] = -1;
      spt.shadow[2 * i] = this.scratchLo;
      spt.shadow[2 * i + 1] = this.scratchHi;
    }
    if (old >= 0) {
      this.pteRefs--;
      this.deps.unpinGuestPage(toGfn(old), "guest PTE rewritten");
    }
    this.record(spt, i, glo, ghi);
  }

  private record(spt: Spt, i: number, glo: number, ghi: number): void {
    spt.guest[2 * i] = glo;
    spt.guest[2 * i + 1] = ghi;
    spt.stale[i] = 0;
    this.changed++;
    this.counts.entryChanges++;
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.ppgtt.shadow_entry", {
        vgpu: this.deps.vgpuId,
        level: LEVELS[spt.level]!,
        table: spt.gfn,
        index: i,
        entry: entryText(spt.shadow[2 * i]!, spt.shadow[2 * i + 1]!),
      });
    }
  }

  private create(key: number, level: number, g: Gfn): Spt {
    if (this.spts.size >= this.maxTables) {
      throw this.reject(
        Errno.ENOSPC,
        `the guest's PPGTT needs more than ${this.maxTables} shadow page tables (the vGPU's limit)`,
      );
    }
    let page: ShadowTablePage;
    try {
      page = this.deps.allocTable();
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      throw this.reject(Errno.ENOSPC, `no host page for a shadow ${TABLES[level]} table: ${e.message}`);
    }
    const spt = new Spt(key, level, g, page);
    for (let i = 0; i < ENTRIES; i++) {
      spt.shadow[2 * i] = this.scratchLo;
      spt.shadow[2 * i + 1] = this.scratchHi;
    }
    this.flush(spt, 0, ENTRIES - 1);
    this.spts.set(key, spt);
    this.created++;
    this.zero.push(spt);
    if (this.deps.tracer.enabled) {
      this.deps.tracer.emit("vgpu.ppgtt.spt_alloc", {
        vgpu: this.deps.vgpuId,
        level: TABLES[level]!,
        gfn: g,
        iova: page.dmaAddr,
      });
      this.traceSpt(spt, "born");
    }
    return spt;
  }

  private unref(spt: Spt): void {
    spt.refs--;
    if (spt.refs === 0) this.zero.push(spt);
  }

  /** Frees the spts left unreferenced (at the end of a walk, or after a release). */
  private sweep(): void {
    if (this.walking) return;
    while (this.zero.length > 0) {
      const spt = this.zero.pop()!;
      if (spt.refs !== 0 || this.spts.get(spt.key) !== spt) continue;
      this.free(spt);
    }
  }

  private free(spt: Spt): void {
    this.spts.delete(spt.key);
    this.freed++;
    if (spt.level < LEAF) {
      for (let i = 0; i < ENTRIES; i++) {
        const c = spt.children[i];
        if (c !== undefined) this.unref(c);
      }
    } else {
      for (let i = 0; i < ENTRIES; i++) {
        const g = spt.gfns[i]!;
        if (g < 0) continue;
        this.pteRefs--;
        this.deps.unpinGuestPage(toGfn(g), "shadow page table freed");
      }
    }
    if (this.deps.tracer.enabled) this.traceSpt(spt, "release");
    spt.page.free();
  }

  /** Writes shadow entries lo..hi of `spt` to its page. */
  private flush(spt: Spt, lo: number, hi: number): void {
    const bytes = new Uint8Array(spt.shadow.buffer, 8 * lo, 8 * (hi - lo + 1));
    spt.page.write(8 * lo, bytes);
  }

  private reject(errno: Errno, sentence: string): Reject {
    return new Reject(new KernelError(errno, `vgpu${this.deps.vgpuId}: ${sentence}`));
  }

  private traceGuest(spt: Spt, i: number, glo: number, ghi: number): void {
    if (!this.deps.tracer.enabled) return;
    this.deps.tracer.emit("vgpu.ppgtt.spt_guest_change", {
      vgpu: this.deps.vgpuId,
      level: LEVELS[spt.level]!,
      table: spt.gfn,
      index: i,
      before: entryText(spt.guest[2 * i]!, spt.guest[2 * i + 1]!),
      after: entryText(glo, ghi),
    });
  }

  private traceSpt(spt: Spt, action: string): void {
    this.deps.tracer.emit("vgpu.ppgtt.spt_change", {
      vgpu: this.deps.vgpuId,
      action,
      level: TABLES[spt.level]!,
      gfn: spt.gfn,
    });
  }

  private traceMm(mm: Mm, change: string): void {
    if (!this.deps.tracer.enabled) return;
    this.deps.tracer.emit("vgpu.ppgtt.mm", {
      vgpu: this.deps.vgpuId,
      root: mm.rootGfn * PAGE_SIZE,
      change,
      tables: this.spts.size,
    });
  }
}

function lowBits(a: number): number {
  return (a % TWO32) >>> 0;
}

function highBits(a: number): number {
  return Math.floor(a / TWO32) >>> 0;
}

function entryText(lo: number, hi: number): string {
  return `0x${hi.toString(16).padStart(8, "0")}${lo.toString(16).padStart(8, "0")}`;
}
