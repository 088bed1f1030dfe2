/**
 * The host driver's invariants, checked from the outside of its parts (for tests and `checkInvariants`): that the
 * host's buffers (host-buffers.ts) and the vGPU partitions (host-partitions.ts) never collide.
 *
 * - GM: every piece (a host buffer, a partition's aperture or hidden range) lies in its region, the pieces are
 *   pairwise disjoint, and the owner tag of each of their GGTT entries names their owner.
 * - Fences: 0..3 are the host's; a partition's fences are its own, each in one partition; no fence is owned by a
 *   partition that is gone.
 * - IOVAs: host buffers' IOVAs are disjoint and still map to their own frames (through the IOMMU domain when it
 *   translates); the GGTT entries of a mapped buffer encode its IOVAs.
 * - With `scanGgtt` (all 1 Mi entries, a few ms): free entries are the scratch page, unused host entries too, and no
 *   vGPU entry points at a host ring, status page or shadow buffer (the scratch page excepted). A live partition's
 *   entries hold whatever the vendor driver wrote (guest pages, its own scratch page, this driver's scratch page):
 *   which of those is right is the vendor driver's invariant, not this one.
 *
 * A violation throws an Error naming what collided; nothing here changes state.
 */
import { hex, type Iova, PAGE_SIZE } from "../core/index.ts";
import type { Bdf, DmaDevice, Iommu } from "../host/index.ts";
import type { GpuDevice } from "./gpu.ts";
import type { HostBuffers } from "./host-buffers.ts";
import { HOST_FENCES, type HostPartitions, OWNER_FREE, OWNER_HOST, OWNER_PARTITION } from "./host-partitions.ts";
import { GTT_ENTRIES, gen8PteEncode, NUM_FENCES } from "./regs.ts";

export interface InvariantOptions {
  /** Also scan all 1 Mi GGTT entries (a few ms): free entries at scratch, no vGPU entry at a host buffer. */
  readonly scanGgtt?: boolean;
}

/** What the checks read: the driver's parts, its device and its DMA API. */
export interface HostDriverParts {
  readonly bdf: Bdf;
  readonly gpu: GpuDevice;
  readonly dma: DmaDevice;
  readonly iommu: Iommu;
  readonly partitions: HostPartitions;
  readonly buffers: HostBuffers;
}

/** Throws (an Error naming what collided) if any allocation of the host and the vGPUs overlaps. */
export function checkHostDriverInvariants(d: HostDriverParts, opts: InvariantOptions = {}): void {
  const fail = (what: string): never => {
    throw new Error(`i915 ${d.bdf} invariant violated: ${what}`);
  };
  const { partitions, buffers } = d;
  const hostLow = buffers.hostAperture;
  const hostHigh = buffers.hostHidden;
  const vgpuLow = partitions.vgpuAperture;
  const vgpuHigh = partitions.vgpuHidden;
  for (const a of [hostLow, hostHigh, vgpuLow, vgpuHigh]) a.check();

  // GM: every piece inside its region, all pieces pairwise disjoint.
  const pieces: { base: number; size: number; what: string; owner: number }[] = [];
  for (const b of buffers.all()) {
    if (b.gma === undefined) continue;
    if (!hostLow.contains(b.gma, b.buf.size) && !hostHigh.contains(b.gma, b.buf.size)) {
      fail(`${b.kind} at GMA ${hex(b.gma)} is outside the host's reservations`);
    }
    pieces.push({ base: b.gma, size: b.buf.size, what: b.kind, owner: OWNER_HOST });
  }
  for (const p of partitions.live()) {
    const r = p.resources;
    if (!vgpuLow.contains(r.aperture.base, r.aperture.size)) fail(`partition ${p.slot} aperture outside region`);
    if (!vgpuHigh.contains(r.hidden.base, r.hidden.size)) fail(`partition ${p.slot} hidden outside region`);
    const owner = OWNER_PARTITION + p.slot;
    pieces.push({ base: r.aperture.base, size: r.aperture.size, what: `partition ${p.slot} aperture`, owner });
    pieces.push({ base: r.hidden.base, size: r.hidden.size, what: `partition ${p.slot} hidden`, owner });
  }
  pieces.sort((a, b) => a.base - b.base);
  for (let i = 1; i < pieces.length; i++) {
    const prev = pieces[i - 1]!;
    const cur = pieces[i]!;
    if (prev.base + prev.size > cur.base)
      fail(`${prev.what} at ${hex(prev.base)} overlaps ${cur.what} at ${hex(cur.base)}`);
  }
  for (const p of pieces) {
    for (let i = p.base / PAGE_SIZE; i < (p.base + p.size) / PAGE_SIZE; i++) {
      const tag = partitions.ownerOfEntry(i);
      if (tag !== p.owner) fail(`GGTT entry ${i} of ${p.what} has owner tag ${tag}`);
    }
  }

  // Fences: host's 0..3; each partition fence owned by exactly that partition.
  const seen = new Set<number>();
  for (let f = 0; f < HOST_FENCES; f++)
    if (partitions.ownerOfFence(f) !== OWNER_HOST) fail(`host fence ${f} was given away`);
  for (const p of partitions.live()) {
    for (const f of p.resources.fences) {
      if (f < HOST_FENCES || f >= NUM_FENCES) fail(`partition ${p.slot} holds fence ${f}`);
      if (seen.has(f)) fail(`fence ${f} is in two partitions`);
      seen.add(f);
      if (partitions.ownerOfFence(f) !== OWNER_PARTITION + p.slot) fail(`fence ${f} owner tag is wrong`);
    }
  }
  for (let f = HOST_FENCES; f < NUM_FENCES; f++) {
    if (partitions.ownerOfFence(f) !== OWNER_FREE && !seen.has(f)) fail(`fence ${f} is owned by no live partition`);
  }

  // IOVAs: host buffers disjoint, each still mapped to its own frames; host GGTT entries point at them.
  const domain = d.dma.translated ? d.iommu.domainOf(d.bdf) : undefined;
  const iovas = [...buffers.all()].map((b) => ({ b, lo: b.buf.dmaAddr as number, hi: b.buf.dmaAddr + b.buf.size }));
  iovas.sort((x, y) => x.lo - y.lo);
  for (let i = 1; i < iovas.length; i++) {
    if (iovas[i - 1]!.hi > iovas[i]!.lo) {
      fail(
        `IOVA of ${iovas[i - 1]!.b.kind} [${hex(iovas[i - 1]!.lo)}, ${hex(iovas[i - 1]!.hi)}) overlaps ${iovas[i]!.b.kind} at ${hex(iovas[i]!.lo)}`,
      );
    }
  }
  for (const { b } of iovas) {
    for (let k = 0; k < b.buf.pages; k++) {
      const dmaAddr = b.buf.dmaAddr + k * PAGE_SIZE;
      const phys = domain === undefined ? dmaAddr : domain.iovaToPhys(dmaAddr as Iova);
      if (phys !== (b.buf.pfn + k) * PAGE_SIZE)
        fail(`${b.kind} page ${k} at IOVA ${hex(dmaAddr)} maps to ${hex(phys)}`);
      if (b.gma !== undefined) {
        const pte = d.gpu.ggtt.read(b.gma / PAGE_SIZE + k);
        if (pte !== gen8PteEncode(dmaAddr))
          fail(`GGTT entry of ${b.kind} at GMA ${hex(b.gma + k * PAGE_SIZE)} is ${hex(pte)}`);
      }
    }
  }

  if (opts.scanGgtt ?? true) {
    // Every host buffer but the scratch page: a vGPU entry reaching one could read or rewrite the host's rings or
    // another vGPU's audited shadow batches.
    const scratchPte = buffers.scratchPte;
    const hostIovas = iovas.filter((x) => x.b.kind !== "scratch");
    const ggtt = d.gpu.ggtt.entries;
    for (let i = 0; i < GTT_ENTRIES; i++) {
      const owner = partitions.ownerOfEntry(i);
      const pte = ggtt[i]!;
      if (owner === OWNER_FREE) {
        if (pte !== scratchPte) fail(`free GGTT entry ${i} is ${hex(pte)}, not the scratch page`);
      } else if (owner >= OWNER_PARTITION) {
        const a = pte - (pte % PAGE_SIZE);
        for (const h of hostIovas) {
          if (a >= h.lo && a < h.hi) fail(`vGPU GGTT entry ${i} points at the host's ${h.b.kind} (${hex(a)})`);
        }
      }
    }
    const hostUsed = new Set<number>();
    for (const b of buffers.all()) {
      if (b.gma !== undefined) for (let k = 0; k < b.buf.pages; k++) hostUsed.add(b.gma / PAGE_SIZE + k);
    }
    for (const r of [hostLow, hostHigh]) {
      for (let i = r.start / PAGE_SIZE; i < r.end / PAGE_SIZE; i++) {
        if (!hostUsed.has(i) && ggtt[i] !== scratchPte) fail(`unused host GGTT entry ${i} is not the scratch page`);
      }
    }
  }
}
