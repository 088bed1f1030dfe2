/**
 * What a type1 container can be asked about itself, for tests, reports and the dashboard: a summary (`stats`), a
 * snapshot of every mapping with its pins, and a check of the backend's invariants. Nothing here has a Linux
 * counterpart (the kernel keeps these facts in struct vfio_iommu and struct vfio_dma and never shows them); it reads
 * the shared state and the emulated pins through their accessors and changes nothing.
 *
 * Invariants checked by `checkInvariants` (it throws a plain Error naming the first violation):
 * - the mapping tree is ordered and mappings never overlap (DmaTree.checkInvariants);
 * - each mapping's `lockedVm` equals the number of its pages pinned by the IOMMU path or by an emulated device,
 *   counted once; together with accounting.ts charging only through the mappings, the sum over the mappings of one
 *   address space is what this container charged it;
 * - every frame pinned for the IOMMU domain, and every emulated pin, is pinned in physical memory, and every emulated
 *   pin slot has references and belongs to exactly one mapping page;
 * - with a domain every mapping is IOMMU-mapped, and an IOMMU-mapped mapping has all its pages pinned.
 */
import { hex, type Pfn } from "../../core/index.ts";
import type { PhysicalMemory } from "../../host/index.ts";
import type { DirtyTracking } from "./dirty-tracking.ts";
import type { EmulatedDevices } from "./emulated.ts";
import type { Type1State } from "./state.ts";

/** A snapshot of one mapping, for tests and the dashboard. */
export interface Type1MappingInfo {
  readonly iova: number;
  readonly vaddr: number;
  readonly size: number;
  readonly prot: number;
  readonly iommuMapped: boolean;
  readonly vaddrInvalid: boolean;
  /** Pages charged to locked_vm for this mapping. */
  readonly lockedVm: number;
  /** Pages pinned for the IOMMU domain. */
  readonly iommuPinnedPages: number;
  /** Pages pinned by emulated devices (each counted once, whatever its reference count). */
  readonly emulatedPinnedPages: number;
  /** Emulated pins by IOVA with their reference counts. */
  readonly pins: readonly { readonly iova: number; readonly pfn: number; readonly refCount: number }[];
}

export interface Type1Stats {
  readonly container: number;
  readonly v2: boolean;
  readonly mappings: number;
  readonly dmaAvail: number;
  readonly mappedBytes: number;
  /** Sum of the mappings' locked_vm charges. */
  readonly lockedVm: number;
  readonly iommuPinnedPages: number;
  readonly emulatedPinnedPages: number;
  readonly vaddrInvalid: number;
  readonly dirtyTracking: boolean;
  readonly domain: number | undefined;
  readonly iommuGroups: readonly number[];
  readonly emulatedGroups: readonly number[];
  readonly devices: readonly string[];
  readonly iovaRanges: string;
  readonly warnings: number;
}

/** What introspection reads of the container's state. */
export type IntrospectedState = Pick<
  Type1State,
  | "container"
  | "v2"
  | "dmas"
  | "dmaAvail"
  | "vaddrInvalidCount"
  | "domain"
  | "iommuGroupIds"
  | "emulatedGroupIds"
  | "iovaRanges"
  | "warnings"
>;
/** What introspection reads of the emulated devices and their pins. */
export type IntrospectedPins = Pick<EmulatedDevices, "names" | "pinsOf" | "livePins" | "pinSlot">;

/** Read-only views of one container (see the module comment). */
export class Type1Introspection {
  constructor(
    private readonly state: IntrospectedState,
    private readonly emulated: IntrospectedPins,
    private readonly dirty: Pick<DirtyTracking, "tracking">,
    private readonly physmem: PhysicalMemory,
  ) {}

  stats(): Type1Stats {
    const state = this.state;
    let mapped = 0;
    let locked = 0;
    let iommuPinned = 0;
    let emulatedPinned = 0;
    for (const dma of state.dmas) {
      mapped += dma.size;
      locked += dma.lockedVm;
      iommuPinned += dma.iommuPinnedPages;
      emulatedPinned += dma.pinnedPages;
    }
    return {
      container: state.container,
      v2: state.v2,
      mappings: state.dmas.size,
      dmaAvail: state.dmaAvail,
      mappedBytes: mapped,
      lockedVm: locked,
      iommuPinnedPages: iommuPinned,
      emulatedPinnedPages: emulatedPinned,
      vaddrInvalid: state.vaddrInvalidCount,
      dirtyTracking: this.dirty.tracking,
      domain: state.domain?.id,
      iommuGroups: state.iommuGroupIds().sort((a, b) => a - b),
      emulatedGroups: state.emulatedGroupIds().sort((a, b) => a - b),
      devices: this.emulated.names(),
      iovaRanges: state.iovaRanges.toString(),
      warnings: state.warnings,
    };
  }

  mappings(): Type1MappingInfo[] {
    return this.state.dmas.toArray().map((dma) => ({
      iova: dma.iova,
      vaddr: dma.vaddr,
      size: dma.size,
      prot: dma.prot,
      iommuMapped: dma.iommuMapped,
      vaddrInvalid: dma.vaddrInvalid,
      lockedVm: dma.lockedVm,
      iommuPinnedPages: dma.iommuPinnedPages,
      emulatedPinnedPages: dma.pinnedPages,
      pins: this.emulated.pinsOf(dma),
    }));
  }

  checkInvariants(): void {
    const state = this.state;
    const physmem = this.physmem;
    state.dmas.checkInvariants();
    let slots = 0;
    for (const dma of state.dmas) {
      const union = new Set<number>();
      for (let r = 0; r < dma.runCount; r++) {
        const off = dma.runs[r * 3]!;
        const pfn = dma.runs[r * 3 + 1]!;
        const len = dma.runs[r * 3 + 2]!;
        for (let j = 0; j < len; j++) {
          union.add(off + j);
          if (physmem.pinCount((pfn + j) as Pfn) < 1) {
            throw new Error(`type1: IOMMU-pinned pfn ${hex(pfn + j)} of ${dma.describe()} is not pinned in physmem`);
          }
        }
      }
      if (dma.pins !== undefined) {
        for (const [idx, slot] of dma.pins.entries()) {
          union.add(idx);
          slots++;
          const pin = this.emulated.pinSlot(slot);
          if (pin.refCount < 1) throw new Error(`type1: pin slot ${slot} of ${dma.describe()} has no references`);
          if (physmem.pinCount(pin.pfn as Pfn) < 1) {
            throw new Error(`type1: emulated pin of ${dma.describe()} page ${idx} is not pinned in physmem`);
          }
        }
      }
      if (union.size !== dma.lockedVm) {
        throw new Error(
          `type1: mapping ${dma.describe()} charges ${dma.lockedVm} locked page(s) but pins ${union.size} distinct page(s)`,
        );
      }
      if (state.domain !== undefined && !dma.iommuMapped) {
        throw new Error(
          `type1: mapping ${dma.describe()} is not IOMMU-mapped although domain ${state.domain.id} exists`,
        );
      }
      if (dma.iommuMapped && dma.iommuPinnedPages !== dma.pages) {
        throw new Error(
          `type1: mapping ${dma.describe()} is IOMMU-mapped with ${dma.iommuPinnedPages} of ${dma.pages} pages`,
        );
      }
    }
    const live = this.emulated.livePins;
    if (slots !== live) throw new Error(`type1: ${live} live pin slots but ${slots} referenced`);
  }
}
