/**
 * A per-process GTT as the guest driver builds it (i915's gen8 4-level PPGTT, i915_ppgtt / gen8_ppgtt_alloc): four
 * levels of 4 KiB tables of 512 8-byte entries in guest pages (PML4 -> PDP -> PD -> PT), indexed by GPU virtual
 * address bits 39..47, 30..38, 21..29 and 12..20, each entry `GEN8_PAGE_PRESENT | GEN8_PAGE_RW | address`
 * (datasheet 6.8). The addresses in the entries are guest-physical: on a vGPU the vendor driver shadows the tables
 * (10.11), on a whole GPU the system IOMMU translates them (the VMM's mappings, IOVA = GPA).
 *
 * GPU virtual addresses (`Gva`) are handed out from `GVA_BASE` (4 GiB: never a graphics memory address, so a GVA and
 * a GMA cannot be mistaken for each other in a trace) upwards, bump-allocated and never reused (2^47 bytes of room);
 * every buffer is followed by one unmapped guard page, so a blit that overruns a buffer faults instead of landing in
 * the next one.
 *
 * Tables are allocated on first use and never freed before `destroy` (i915 frees empty tables; the model's guests map
 * a few hundred MiB at most). Unused entries are 0 (not present): i915 points them at scratch tables instead, which
 * the datasheet allows either way (a not-present entry faults, as an access through the scratch page would not).
 *
 * Invariants: every table this object wrote is in `tables`; the PML4 is at `pml4` for its whole life; an entry is
 * written whole (8 bytes) and only after the table it names has been zeroed.
 */
import { type Branded, Errno, type Gpa, gpa, hex, KernelError, PAGE_SIZE } from "../core/index.ts";
import { GEN8_PAGE_PRESENT, GEN8_PAGE_RW, PPGTT_LEVELS, ppgttEntryAddress } from "../gpu/index.ts";
import type { GuestPageAllocator, GuestRam } from "./platform.ts";

/** A GPU virtual address: what a context's commands name through its PPGTT. */
export type Gva = Branded<"Gva">;
export const gva = (n: number): Gva => n as Gva;

/** First GPU virtual address handed out (above the 4 GiB of graphics memory). */
export const GVA_BASE = 0x1_0000_0000;
/** The PPGTT's reach: 48 bits. */
export const GVA_LIMIT = 2 ** 48;
const ENTRIES = 512;
const TWO32 = 4294967296;

/** One step of a walk: which table, which entry, what it held. */
export interface PpgttWalkStep {
  readonly level: (typeof PPGTT_LEVELS)[number];
  readonly table: Gpa;
  readonly index: number;
  readonly entry: number;
}

/** A walk of one address: every level it reached, and the page's GPA if all were present. */
export interface PpgttWalk {
  readonly steps: readonly PpgttWalkStep[];
  readonly gpa: Gpa | undefined;
}

export class GuestPpgtt {
  /** Guest-physical address of the PML4 (what PDP0 holds). */
  readonly pml4: Gpa;
  /** Every table page this PPGTT owns. */
  readonly tables = new Set<Gpa>();
  private nextGva = GVA_BASE;
  private mapped = 0;
  private readonly qword = new Uint8Array(8);
  private readonly qview = new DataView(this.qword.buffer);

  constructor(
    private readonly memory: GuestRam,
    private readonly pages: GuestPageAllocator,
  ) {
    this.pml4 = this.newTable();
  }

  /** Pages currently mapped. */
  get mappedPages(): number {
    return this.mapped;
  }

  /** Reserves `bytes` (whole pages) of GPU virtual addresses, plus a guard page. ENOSPC past 2^48. */
  allocVa(bytes: number): Gva {
    const span = Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
    if (this.nextGva + span + PAGE_SIZE > GVA_LIMIT) {
      throw new KernelError(Errno.ENOSPC, `PPGTT at ${hex(this.pml4)}: no ${span} bytes of GPU virtual addresses left`);
    }
    const at = this.nextGva;
    this.nextGva += span + PAGE_SIZE;
    return gva(at);
  }

  /** Points `count` PTEs from `at` at the guest pages from `pagesGpa` on (writable unless `readOnly`). */
  map(at: Gva, pagesGpa: Gpa, count: number, readOnly = false): void {
    this.checkRange(at, count);
    const flags = GEN8_PAGE_PRESENT | (readOnly ? 0 : GEN8_PAGE_RW);
    for (let i = 0; i < count; i++) {
      const pte = this.pteAddress(at + i * PAGE_SIZE, true)!;
      if ((this.readEntry(pte) & GEN8_PAGE_PRESENT) === 0) this.mapped++;
      this.writeEntry(pte, pagesGpa + i * PAGE_SIZE + flags);
    }
  }

  /** Writes one raw PTE (what a hostile guest does); allocates the tables above it. */
  setPte(at: Gva, entry: number): void {
    this.checkRange(at, 1);
    this.writeEntry(this.pteAddress(at, true)!, entry);
  }

  /** Marks `count` PTEs from `at` not present. */
  unmap(at: Gva, count: number): void {
    this.checkRange(at, count);
    for (let i = 0; i < count; i++) {
      const pte = this.pteAddress(at + i * PAGE_SIZE, false);
      if (pte === undefined) continue;
      if ((this.readEntry(pte) & GEN8_PAGE_PRESENT) !== 0) this.mapped--;
      this.writeEntry(pte, 0);
    }
  }

  /** Walks `at` as the GPU would (datasheet 6.8), reading the guest's tables. */
  walk(at: number): PpgttWalk {
    const steps: PpgttWalkStep[] = [];
    let table = this.pml4;
    const page = Math.floor(at / PAGE_SIZE);
    for (let level = 0; level < 4; level++) {
      const index = Math.floor(page / 2 ** (9 * (3 - level))) % ENTRIES;
      const entry = this.readEntry(gpa(table + 8 * index));
      steps.push({ level: PPGTT_LEVELS[level]!, table, index, entry });
      if ((entry & GEN8_PAGE_PRESENT) === 0) return { steps, gpa: undefined };
      table = gpa(ppgttEntryAddress(entry % TWO32, Math.floor(entry / TWO32)));
    }
    return { steps, gpa: gpa(table + (at % PAGE_SIZE)) };
  }

  /** Frees every table (the caller has stopped every context that uses this PPGTT). */
  destroy(): void {
    for (const t of this.tables) this.pages.freePages(t, 1);
    this.tables.clear();
    this.mapped = 0;
  }

  private checkRange(at: number, count: number): void {
    if (!Number.isInteger(at) || at % PAGE_SIZE !== 0 || at < 0 || at + count * PAGE_SIZE > GVA_LIMIT) {
      throw new KernelError(Errno.EINVAL, `PPGTT range ${hex(at)} +${count} pages is not page aligned below 2^48`);
    }
  }

  /** GPA of the PTE of `at`; with `create`, the tables on the way are allocated, else undefined if one is missing. */
  private pteAddress(at: number, create: boolean): Gpa | undefined {
    const page = Math.floor(at / PAGE_SIZE);
    let table: Gpa = this.pml4;
    for (let level = 0; level < 3; level++) {
      const index = Math.floor(page / 2 ** (9 * (3 - level))) % ENTRIES;
      const slot = gpa(table + 8 * index);
      const entry = this.readEntry(slot);
      if ((entry & GEN8_PAGE_PRESENT) !== 0) {
        table = gpa(ppgttEntryAddress(entry % TWO32, Math.floor(entry / TWO32)));
        continue;
      }
      if (!create) return undefined;
      const next = this.newTable();
      this.writeEntry(slot, next + GEN8_PAGE_PRESENT + GEN8_PAGE_RW);
      table = next;
    }
    return gpa(table + 8 * (page % ENTRIES));
  }

  private newTable(): Gpa {
    const t = this.pages.allocPages(1);
    this.memory.write(t, new Uint8Array(PAGE_SIZE));
    this.tables.add(t);
    return t;
  }

  private readEntry(at: Gpa): number {
    this.memory.read(at, this.qword);
    return this.qview.getUint32(0, true) + this.qview.getUint32(4, true) * TWO32;
  }

  private writeEntry(at: Gpa, entry: number): void {
    this.qview.setUint32(0, entry % TWO32, true);
    this.qview.setUint32(4, Math.floor(entry / TWO32), true);
    this.memory.write(at, this.qword);
  }
}
