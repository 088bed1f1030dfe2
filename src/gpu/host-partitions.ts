/**
 * How the host driver divides the GPU between itself and the vGPUs: graphics memory (GM, 4 GiB) and fence registers,
 * and the vendor driver's access to the GGTT entries and fences of the partitions it was given.
 *
 * GM is laid out as GVT-g does (`gmLayout`):
 *   [0, 128 MiB)                              host aperture reservation (rings, status pages: host-buffers.ts)
 *   [128 MiB, aperture)                       vGPU aperture region: contiguous partitions for vGPUs
 *   [aperture, aperture + 384 MiB)            host hidden reservation (shadow buffers: host-buffers.ts)
 *   [aperture + 384 MiB, 4 GiB)               vGPU hidden region
 * and fences 0..3 stay with the host, 4..31 go to vGPUs (any free ones, lowest first). A partition is one contiguous
 * range of each vGPU region (first fit from the bottom, as drm_mm) and some fences; it is handed out with its GGTT
 * entries on the host driver's scratch page and its fences zeroed, and when freed its entries go back to the scratch
 * page and its fences to zero.
 *
 * Every GGTT entry and every fence carries an owner tag: free, the host, or one partition. `writeGgtt`, `fillGgtt`
 * (bulk), `writeFence` and `writeFenceHalves` accept only entries and fences of a live partition, so the vendor driver
 * cannot overwrite the host's mappings or reach another vGPU's; what it writes inside its own partition is its
 * business (src/vgpu checks that).
 *
 * Not here: the host's own buffers inside its reservations (host-buffers.ts), submission (host-submission.ts), the
 * checks that the two never collide (host-invariants.ts).
 *
 * Invariants (checked by host-invariants.ts): partitions are disjoint and inside the vGPU regions; the owner tag of
 * every entry of a partition names it, and no other entry does; fences 0..3 are the host's and each other fence is
 * free or owned by exactly one live partition.
 */
import { defineTraceEvents, Errno, hex, KernelError, PAGE_SIZE, type Tracer } from "../core/index.ts";
import type { Bdf } from "../host/index.ts";
import type { GmRange, GpuCapacity, GpuResourceRequest, GpuResources } from "./contract.ts";
import { GmRegionAllocator } from "./gm-region-allocator.ts";
import { type GpuDevice, MiB } from "./gpu.ts";
import type { HostGgtt } from "./host-ggtt.ts";
import { mmioWrite, mmioWrite64 } from "./host-mmio.ts";
import { FENCE_REG_GEN6_LO, GM_SIZE, GTT_ENTRIES, NUM_FENCES } from "./regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "i915.partition.alloc": {
      bdf: string;
      apertureBase: number;
      apertureSize: number;
      hiddenBase: number;
      hiddenSize: number;
      fences: readonly number[];
    };
    "i915.partition.free": { bdf: string; apertureBase: number; hiddenBase: number; fences: readonly number[] };
    "i915.partition.enospc": { bdf: string; reason: string };
  }
}
defineTraceEvents("gpu", {
  "i915.partition.alloc":
    "{bdf}: vGPU partition: aperture {apertureBase}+{apertureSize}, hidden {hiddenBase}+{hiddenSize}, fences {fences}",
  "i915.partition.free":
    "{bdf}: vGPU partition at aperture {apertureBase} / hidden {hiddenBase} freed (fences {fences})",
  "i915.partition.enospc": "{bdf}: no room for a vGPU partition: {reason}",
});

/** What the host keeps for itself (GVT-g's figures). */
export const HOST_APERTURE_RESERVED = 128 * MiB;
export const HOST_HIDDEN_RESERVED = 384 * MiB;
export const HOST_FENCES = 4;

/** Owner tags of GGTT entries and fences. */
export const OWNER_FREE = 0;
export const OWNER_HOST = 1;
/** Owner tags from here on are vGPU partitions (slot + OWNER_PARTITION). */
export const OWNER_PARTITION = 2;

/** A region of GM: [start, start + size). */
export interface GmRegion {
  readonly name: string;
  readonly start: number;
  readonly size: number;
}

/** The four regions of GM for a GPU whose aperture (BAR2) is `apertureSize` bytes. */
export interface GmLayout {
  readonly hostAperture: GmRegion;
  readonly vgpuAperture: GmRegion;
  readonly hostHidden: GmRegion;
  readonly vgpuHidden: GmRegion;
}

export function gmLayout(apertureSize: number): GmLayout {
  const ap = apertureSize;
  return {
    hostAperture: { name: "host aperture", start: 0, size: HOST_APERTURE_RESERVED },
    vgpuAperture: { name: "vGPU aperture", start: HOST_APERTURE_RESERVED, size: ap - HOST_APERTURE_RESERVED },
    hostHidden: { name: "host hidden", start: ap, size: HOST_HIDDEN_RESERVED },
    vgpuHidden: {
      name: "vGPU hidden",
      start: ap + HOST_HIDDEN_RESERVED,
      size: GM_SIZE - ap - HOST_HIDDEN_RESERVED,
    },
  };
}

/** An allocator over one region of the layout. */
export function regionAllocator(r: GmRegion): GmRegionAllocator {
  return new GmRegionAllocator(r.name, r.start, r.size);
}

/** "64 MiB", "1.50 MiB": sizes in the driver's messages. */
export function mib(bytes: number): string {
  const m = bytes / MiB;
  return `${Number.isInteger(m) ? m : m.toFixed(2)} MiB`;
}

/** A live partition: its slot (owner tag OWNER_PARTITION + slot) and what it holds. */
export interface Partition {
  readonly slot: number;
  readonly resources: GpuResources;
}

export interface HostPartitionsOptions {
  readonly bdf: Bdf;
  readonly gpu: GpuDevice;
  readonly tracer: Tracer;
  readonly layout: GmLayout;
  /** The PTE of the host driver's scratch page: what a partition's entries hold when handed out and when freed. */
  readonly scratchPte: number;
  /** Where GGTT writes go. */
  readonly ggtt: HostGgtt;
}

export class HostPartitions {
  readonly vgpuAperture: GmRegionAllocator;
  readonly vgpuHidden: GmRegionAllocator;
  private readonly ggtt: HostGgtt;
  private readonly bdf: Bdf;
  private readonly gpu: GpuDevice;
  private readonly tracer: Tracer;
  private readonly scratchPte: number;
  /** Owner of each GGTT entry: OWNER_FREE, OWNER_HOST, or OWNER_PARTITION + slot. */
  private readonly entryOwner = new Uint16Array(GTT_ENTRIES);
  /** Owner of each fence, same tags. */
  private readonly fenceOwners = new Uint16Array(NUM_FENCES);
  private readonly partitions = new Map<number, Partition>();
  private readonly byApertureBase = new Map<number, number>();
  private readonly freeSlots: number[] = [];
  private nextSlot = 0;

  constructor(opts: HostPartitionsOptions) {
    this.bdf = opts.bdf;
    this.gpu = opts.gpu;
    this.tracer = opts.tracer;
    this.scratchPte = opts.scratchPte;
    this.ggtt = opts.ggtt;
    const { hostAperture, hostHidden } = opts.layout;
    this.vgpuAperture = regionAllocator(opts.layout.vgpuAperture);
    this.vgpuHidden = regionAllocator(opts.layout.vgpuHidden);
    for (const r of [hostAperture, hostHidden]) {
      this.entryOwner.fill(OWNER_HOST, r.start / PAGE_SIZE, (r.start + r.size) / PAGE_SIZE);
    }
    this.fenceOwners.fill(OWNER_HOST, 0, HOST_FENCES);
  }

  /** Live partitions. */
  get count(): number {
    return this.partitions.size;
  }

  capacity(): GpuCapacity {
    let fencesFree = 0;
    for (let f = 0; f < NUM_FENCES; f++) if (this.fenceOwners[f] === OWNER_FREE) fencesFree++;
    return {
      apertureTotal: this.vgpuAperture.size,
      apertureFree: this.vgpuAperture.free,
      apertureLargestFree: this.vgpuAperture.largestFree(),
      hiddenTotal: this.vgpuHidden.size,
      hiddenFree: this.vgpuHidden.free,
      hiddenLargestFree: this.vgpuHidden.largestFree(),
      fencesTotal: NUM_FENCES - HOST_FENCES,
      fencesFree,
    };
  }

  /** Carves a partition: EINVAL for a malformed request, ENOSPC (naming the short resource) when it does not fit. */
  alloc(req: GpuResourceRequest): GpuResources {
    for (const [name, v] of [
      ["aperture", req.aperture],
      ["hidden", req.hidden],
    ] as const) {
      if (!Number.isSafeInteger(v) || v <= 0 || v % PAGE_SIZE !== 0) {
        throw new KernelError(Errno.EINVAL, `vGPU ${name} size ${v} bytes is not a positive multiple of 4 KiB`);
      }
    }
    if (!Number.isInteger(req.fences) || req.fences < 0 || req.fences > NUM_FENCES) {
      throw new KernelError(Errno.EINVAL, `vGPU fence count ${req.fences} is not an integer from 0 to ${NUM_FENCES}`);
    }
    const cap = this.capacity();
    const why =
      shortage("aperture", req.aperture, cap.apertureFree, cap.apertureLargestFree) ??
      shortage("hidden", req.hidden, cap.hiddenFree, cap.hiddenLargestFree) ??
      (cap.fencesFree < req.fences ? `fences: ${cap.fencesFree} left, needs ${req.fences}` : undefined);
    if (why !== undefined) {
      if (this.tracer.enabled) this.tracer.emit("i915.partition.enospc", { bdf: this.bdf, reason: why });
      throw new KernelError(Errno.ENOSPC, `cannot allocate a vGPU partition on ${this.bdf}: ${why}`, {
        request: req,
        capacity: cap,
      });
    }
    const slot = this.freeSlots.pop() ?? this.nextSlot++;
    const owner = OWNER_PARTITION + slot;
    // The capacity check above found a range of each size.
    const apBase = this.vgpuAperture.alloc(req.aperture)!;
    const hiBase = this.vgpuHidden.alloc(req.hidden)!;
    const fences: number[] = [];
    for (let f = 0; f < NUM_FENCES && fences.length < req.fences; f++) {
      if (this.fenceOwners[f] === OWNER_FREE) {
        this.fenceOwners[f] = owner;
        fences.push(f);
      }
    }
    this.entryOwner.fill(owner, apBase / PAGE_SIZE, (apBase + req.aperture) / PAGE_SIZE);
    this.entryOwner.fill(owner, hiBase / PAGE_SIZE, (hiBase + req.hidden) / PAGE_SIZE);
    for (const f of fences) mmioWrite64(this.gpu, FENCE_REG_GEN6_LO + 8 * f, 0);
    const resources: GpuResources = Object.freeze({
      aperture: Object.freeze({ base: apBase, size: req.aperture }),
      hidden: Object.freeze({ base: hiBase, size: req.hidden }),
      fences: Object.freeze(fences),
    });
    this.partitions.set(slot, { slot, resources });
    this.byApertureBase.set(apBase, slot);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.partition.alloc", {
        bdf: this.bdf,
        apertureBase: apBase,
        apertureSize: req.aperture,
        hiddenBase: hiBase,
        hiddenSize: req.hidden,
        fences,
      });
    }
    return resources;
  }

  /** Frees a live partition (EINVAL for anything else): entries back to the scratch page, fences zeroed. */
  free(r: GpuResources): void {
    const slot = this.byApertureBase.get(r.aperture.base);
    const p = slot === undefined ? undefined : this.partitions.get(slot);
    const same =
      p !== undefined &&
      p.resources.aperture.size === r.aperture.size &&
      p.resources.hidden.base === r.hidden.base &&
      p.resources.hidden.size === r.hidden.size &&
      p.resources.fences.length === r.fences.length &&
      p.resources.fences.every((f, i) => r.fences[i] === f);
    if (p === undefined || !same) {
      throw new KernelError(
        Errno.EINVAL,
        `no vGPU partition with aperture ${hex(r.aperture.base)}+${mib(r.aperture.size)} and hidden ${hex(r.hidden.base)}+${mib(r.hidden.size)} is allocated on ${this.bdf}`,
      );
    }
    const res = p.resources;
    for (const range of [res.aperture, res.hidden]) {
      this.ggtt.fill(range.base / PAGE_SIZE, range.size / PAGE_SIZE, this.scratchPte);
      this.entryOwner.fill(OWNER_FREE, range.base / PAGE_SIZE, (range.base + range.size) / PAGE_SIZE);
    }
    for (const f of res.fences) {
      mmioWrite64(this.gpu, FENCE_REG_GEN6_LO + 8 * f, 0);
      this.fenceOwners[f] = OWNER_FREE;
    }
    this.vgpuAperture.release(res.aperture.base);
    this.vgpuHidden.release(res.hidden.base);
    this.partitions.delete(p.slot);
    this.byApertureBase.delete(res.aperture.base);
    this.freeSlots.push(p.slot);
    if (this.tracer.enabled) {
      this.tracer.emit("i915.partition.free", {
        bdf: this.bdf,
        apertureBase: res.aperture.base,
        hiddenBase: res.hidden.base,
        fences: [...res.fences],
      });
    }
  }

  /** The live partitions' resources, by aperture base. */
  liveResources(): GpuResources[] {
    return [...this.partitions.values()].map((p) => p.resources).sort((a, b) => a.aperture.base - b.aperture.base);
  }

  /** The live partitions with their slots (for the invariants). */
  live(): Iterable<Partition> {
    return this.partitions.values();
  }

  /** Owner tag of GGTT entry `index` (OWNER_FREE, OWNER_HOST, OWNER_PARTITION + slot). */
  ownerOfEntry(index: number): number {
    return this.entryOwner[index]!;
  }

  /** Owner tag of fence `fence`. */
  ownerOfFence(fence: number): number {
    return this.fenceOwners[fence]!;
  }

  // ---- the vendor driver's access to its partitions' GGTT entries and fences -----------------------------------

  writeGgtt(index: number, pte: number): void {
    if (!Number.isInteger(index) || index < 0 || index >= GTT_ENTRIES || this.entryOwner[index]! < OWNER_PARTITION) {
      throw new KernelError(
        Errno.EINVAL,
        `GGTT entry ${index} (GMA ${Number.isInteger(index) ? hex(index * PAGE_SIZE) : "?"}) is not inside a vGPU partition on ${this.bdf}`,
      );
    }
    if (!Number.isSafeInteger(pte) || pte < 0) {
      throw new KernelError(Errno.EINVAL, `GGTT entry value ${pte} is not an integer in [0, 2^53)`);
    }
    this.ggtt.write(index, pte);
  }

  /**
   * Points `count` entries from `first` at one PTE: one bulk write, one trace event. EINVAL unless
   * [first, first + count) lies inside the aperture or the hidden piece of one live partition.
   */
  fillGgtt(first: number, count: number, pte: number): void {
    const owner = Number.isInteger(first) && first >= 0 && first < GTT_ENTRIES ? this.entryOwner[first]! : OWNER_FREE;
    const p = owner >= OWNER_PARTITION ? this.partitions.get(owner - OWNER_PARTITION) : undefined;
    const inside = (r: GmRange) => first >= r.base / PAGE_SIZE && first + count <= (r.base + r.size) / PAGE_SIZE;
    if (
      p === undefined ||
      !Number.isInteger(count) ||
      count < 1 ||
      !(inside(p.resources.aperture) || inside(p.resources.hidden))
    ) {
      throw new KernelError(
        Errno.EINVAL,
        `GGTT entries [${first}, ${first}+${count}) are not inside one piece of a live vGPU partition on ${this.bdf}`,
      );
    }
    if (!Number.isSafeInteger(pte) || pte < 0) {
      throw new KernelError(Errno.EINVAL, `GGTT entry value ${pte} is not an integer in [0, 2^53)`);
    }
    this.ggtt.fill(first, count, pte);
  }

  /** Any entry (the GGTT is readable whole); EINVAL outside the table. */
  readGgtt(index: number): number {
    if (!Number.isInteger(index) || index < 0 || index >= GTT_ENTRIES) {
      throw new KernelError(Errno.EINVAL, `GGTT entry ${index} is outside the ${GTT_ENTRIES} entries`);
    }
    return this.ggtt.read(index);
  }

  writeFence(fence: number, value: number): void {
    this.checkFence(fence);
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new KernelError(Errno.EINVAL, `fence value ${value} is not an integer in [0, 2^53)`);
    }
    mmioWrite64(this.gpu, FENCE_REG_GEN6_LO + 8 * fence, value);
  }

  /** Writes a fence as two 32-bit halves (a gen6 fence's end address sits in bits 44..63, beyond a number's 2^53). */
  writeFenceHalves(fence: number, lo: number, hi: number): void {
    this.checkFence(fence);
    for (const [name, v] of [
      ["low", lo],
      ["high", hi],
    ] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
        throw new KernelError(Errno.EINVAL, `fence ${name} half ${v} is not a 32-bit unsigned integer`);
      }
    }
    mmioWrite(this.gpu, FENCE_REG_GEN6_LO + 8 * fence, lo);
    mmioWrite(this.gpu, FENCE_REG_GEN6_LO + 8 * fence + 4, hi);
  }

  private checkFence(fence: number): void {
    if (!Number.isInteger(fence) || fence < 0 || fence >= NUM_FENCES || this.fenceOwners[fence]! < OWNER_PARTITION) {
      throw new KernelError(Errno.EINVAL, `fence ${fence} is not assigned to a vGPU partition on ${this.bdf}`);
    }
  }
}

function shortage(name: string, need: number, free: number, largest: number): string | undefined {
  if (free < need) return `${name}: ${mib(free)} left, needs ${mib(need)}`;
  if (largest < need) {
    return `${name}: ${mib(free)} left but the largest contiguous range is ${mib(largest)}, needs ${mib(need)}`;
  }
  return undefined;
}
