/**
 * The system IOMMU's hot paths (src/host/iotlb.ts, io-pgtable.ts, iommu.ts, device-dma.ts), each beside a baseline
 * measured in the same run:
 * - IOTLB hits per second vs a plain `Map.get` loop over the same keys (target >= 30 million/s);
 * - full page walks per second (IOTLB disabled) vs `Map.get` on a flat page map (target >= 5 million/s);
 * - DMA copy of 4 KiB pages through the IOMMU (IOTLB hits), and with ATS (ATC hits), vs a raw `Buffer.copy` of the
 *   same bytes between the same number of 4 KiB buffers (target >= 50% of raw).
 */
import { hpa, type Iova, iova, PAGE_SIZE, Rng, SystemClock, Tracer } from "../src/core/index.ts";
import { parseBdf } from "../src/host/bdf.ts";
import { DeviceDma, DMA_OK } from "../src/host/device-dma.ts";
import { IOMMU_READ, IOMMU_WRITE, IoPageTable, WalkResult } from "../src/host/io-pgtable.ts";
import { Iommu } from "../src/host/iommu.ts";
import { Iotlb } from "../src/host/iotlb.ts";
import { PhysicalMemory, pfnToHpa } from "../src/host/physmem.ts";
import { opsPerSecond, record } from "./lib.ts";

const SUITE = "iommu";
const RW = IOMMU_READ | IOMMU_WRITE;
const GPU = parseBdf("0000:00:02.0");
const NIC = parseBdf("0000:03:00.0");
/** Pages in the copy working set (per side); fits the 1024-entry IOTLB and the enlarged ATC. */
const COPY_PAGES = 256;
/** IOVAs of the copy's source and destination: below 4 GiB, where the DMA API allocates for PCI devices first. */
const SRC_IOVA = 0x80000000;
const DST_IOVA = 0xc0000000;

/** A value the optimiser cannot prove unused. */
let sink = 0;

/**
 * Rates of several bodies measured in alternation, best of `rounds` each: on a shared machine a burst of load then
 * hits every body alike instead of skewing one ratio.
 */
function interleaved<K extends string>(bodies: Record<K, (n: number) => void>, rounds = 4): Record<K, number> {
  // Short rounds, many of them: the best one of each body is the least disturbed.
  const best = {} as Record<K, number>;
  for (let r = 0; r < rounds; r++) {
    for (const k of Object.keys(bodies) as K[]) {
      const rate = opsPerSecond(bodies[k], { minMs: 100, rounds: 2 });
      best[k] = Math.max(best[k] ?? 0, rate);
    }
  }
  return best;
}

function host(opts: { iotlbEntries?: number; ats?: boolean } = {}) {
  const clock = new SystemClock();
  const tracer = new Tracer(clock);
  const physmem = new PhysicalMemory({ sizeBytes: 16 * 2 ** 30, tracer });
  const iommu = new Iommu({
    physmem,
    clock,
    tracer,
    rng: new Rng(1),
    enabled: true,
    iotlb: { entries: opts.iotlbEntries ?? 1024, ways: 8, replacement: "lru" },
    atc: { entries: 1024, ways: 8, replacement: "lru" },
  });
  return { physmem, iommu };
}

function iotlbHits(): void {
  const pages = 512;
  const t = new Iotlb({ entries: 1024, ways: 8, replacement: "lru" });
  const m = new Map<number, number>();
  // Sparse page numbers, like IOVAs allocated top-down below 4 GiB.
  const keys = new Float64Array(pages);
  for (let i = 0; i < pages; i++) {
    keys[i] = 0xfffff - i * 3;
    t.fill(1, keys[i]!, 0x1000 + i, RW);
    m.set(keys[i]!, 0x1000 + i);
  }
  const { iommu } = host();
  iommu.addDevice(GPU);
  const d = iommu.domainOf(GPU);
  d.map(iova(0x100000000), hpa(0x40000000), pages * PAGE_SIZE, RW);
  const dev = iommu.device(GPU);
  const iovas = new Float64Array(pages);
  for (let i = 0; i < pages; i++) iovas[i] = 0x100000000 + i * PAGE_SIZE + 8;
  for (let i = 0; i < pages; i++) iommu.translateDevice(dev, iovas[i]! as Iova, IOMMU_READ);
  const framePages = Array.from(iovas, (a) => Math.floor(a / PAGE_SIZE));

  const r = interleaved({
    iotlb: (n) => {
      let acc = 0;
      for (let i = 0; i < n; i++) {
        const s = t.lookup(1, keys[i & (pages - 1)]!);
        acc += t.frame(s);
      }
      sink += acc;
    },
    map: (n) => {
      let acc = 0;
      for (let i = 0; i < n; i++) acc += m.get(keys[i & (pages - 1)]!)!;
      sink += acc;
    },
    translate: (n) => {
      let acc = 0;
      for (let i = 0; i < n; i++) acc += iommu.translateDevice(dev, iovas[i & (pages - 1)]! as Iova, IOMMU_READ);
      sink += acc;
    },
    frame: (n) => {
      let acc = 0;
      for (let i = 0; i < n; i++) acc += iommu.translateFrame(dev, framePages[i & (pages - 1)]!, 8, IOMMU_READ);
      sink += acc;
    },
  });
  record({
    suite: SUITE,
    name: "IOTLB hits (1024 entries, 8-way, lru)",
    value: r.iotlb,
    unit: "lookups/s",
    note: `${(r.iotlb / r.map).toFixed(2)}x Map.get baseline (${(r.map / 1e6).toFixed(1)} M/s); target >= 30 M/s`,
    met: r.iotlb >= 30e6,
  });
  record({
    suite: SUITE,
    name: "Iommu.translateDevice, IOTLB hit (byte addresses above 4 GiB)",
    value: r.translate,
    unit: "translations/s",
    note: `${(r.translate / r.map).toFixed(2)}x Map.get baseline`,
  });
  record({
    suite: SUITE,
    name: "Iommu.translateFrame, IOTLB hit (DeviceDma's path: page in, frame out)",
    value: r.frame,
    unit: "translations/s",
    note: `${(r.frame / r.map).toFixed(2)}x Map.get baseline; ${(r.frame / r.translate).toFixed(2)}x translateDevice`,
  });
}

/** Maps `count` 4 KiB pages at the given IOVAs into `pt` (frames 0x100...) and into a flat Map baseline. */
function populate(pt: IoPageTable, iovas: Float64Array): Map<number, number> {
  const flat = new Map<number, number>();
  for (let i = 0; i < iovas.length; i++) {
    pt.map(iova(iovas[i]!), hpa((0x100 + i) * PAGE_SIZE), PAGE_SIZE, RW);
    flat.set(iovas[i]! / PAGE_SIZE, 0x100 + i);
  }
  return flat;
}

function shuffled(rng: Rng, a: Float64Array): Float64Array {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    const t = a[i]!;
    a[i] = a[j]!;
    a[j] = t;
  }
  return a;
}

function pageWalks(): void {
  const rng = new Rng(7);
  const count = 65536;
  // Realistic layout: 16 regions of 16 MiB (4096 pages each) spread over the 48-bit space, like the DMA API's
  // top-down allocations and type1's guest-RAM ranges, walked in random order. Every walk goes 4 levels deep.
  const dense = new Float64Array(count);
  for (let r = 0; r < 16; r++) {
    const base = 0xffff00000000 - r * 0x10_0000_0000; // 64 GiB apart, 16 MiB aligned
    for (let i = 0; i < 4096; i++) dense[r * 4096 + i] = base + i * PAGE_SIZE;
  }
  const ptDense = new IoPageTable();
  const flatDense = populate(ptDense, dense);
  shuffled(rng, dense);
  // Worst case: every page alone in its own tables (cache-cold walks, ~124 Ki tables).
  const sparse = new Float64Array(count);
  const seen = new Set<number>();
  for (let i = 0; i < count; i++) {
    let p: number;
    do p = rng.int(0, 2 ** 36 - 1);
    while (seen.has(p));
    seen.add(p);
    sparse[i] = p * PAGE_SIZE;
  }
  const ptSparse = new IoPageTable();
  populate(ptSparse, sparse);

  // translate() with the IOTLB disabled: every access is a full walk.
  const { iommu } = host({ iotlbEntries: 0 });
  iommu.addDevice(GPU);
  const d = iommu.domainOf(GPU);
  for (let i = 0; i < count; i++)
    d.map(iova(dense[i]!), hpa(flatDense.get(dense[i]! / PAGE_SIZE)! * PAGE_SIZE), PAGE_SIZE, RW);
  const dev = iommu.device(GPU);

  const w = new WalkResult();
  const mask = count - 1;
  const r = interleaved({
    dense: (n) => {
      let acc = 0;
      for (let i = 0; i < n; i++) {
        ptDense.walk(dense[i & mask]! as Iova, w);
        acc += w.phys;
      }
      sink += acc;
    },
    map: (n) => {
      let acc = 0;
      for (let i = 0; i < n; i++) acc += flatDense.get(dense[i & mask]! / PAGE_SIZE)!;
      sink += acc;
    },
    translate: (n) => {
      let acc = 0;
      for (let i = 0; i < n; i++) acc += iommu.translateDevice(dev, dense[i & mask]! as Iova, IOMMU_READ);
      sink += acc;
    },
    sparse: (n) => {
      let acc = 0;
      for (let i = 0; i < n; i++) {
        ptSparse.walk(sparse[i & mask]! as Iova, w);
        acc += w.phys;
      }
      sink += acc;
    },
  });
  record({
    suite: SUITE,
    name: "IoPageTable.walk, 4 levels, 64 Ki pages in 16 regions, random order",
    value: r.dense,
    unit: "walks/s",
    note: `${(r.dense / r.map).toFixed(2)}x Map.get on a flat page map (${(r.map / 1e6).toFixed(1)} M/s); target >= 5 M/s; ${ptDense.tableCount} tables`,
    met: r.dense >= 5e6,
  });
  const s = iommu.stats();
  record({
    suite: SUITE,
    name: "Iommu.translateDevice, IOTLB disabled (full walk each time)",
    value: r.translate,
    unit: "translations/s",
    note: `${(r.translate / r.map).toFixed(2)}x Map.get baseline; target >= 5 M/s; walks ${s.walks === s.translations ? "=" : "!="} translations`,
    met: r.translate >= 5e6 && s.walks === s.translations,
  });
  record({
    suite: SUITE,
    name: "IoPageTable.walk, worst case: 64 Ki isolated random pages",
    value: r.sparse,
    unit: "walks/s",
    note: `${(r.sparse / r.map).toFixed(2)}x the dense Map.get baseline; ${ptSparse.tableCount} tables, walks miss the CPU caches`,
  });
}

function dmaCopy(): void {
  // Raw baseline: Buffer.copy between COPY_PAGES pairs of separate 4 KiB buffers.
  const rng = new Rng(3);
  const rawSrc: Buffer[] = [];
  const rawDst: Buffer[] = [];
  for (let i = 0; i < COPY_PAGES; i++) {
    rawSrc.push(Buffer.from(rng.fill(new Uint8Array(PAGE_SIZE))));
    rawDst.push(Buffer.alloc(PAGE_SIZE));
  }

  const setup = (ats: boolean) => {
    const { physmem, iommu } = host();
    const bdf = ats ? NIC : GPU;
    iommu.addDevice(bdf, { ats });
    const d = iommu.domainOf(bdf);
    // Scattered frames (every other frame), each touched so reads hit real data.
    for (let i = 0; i < COPY_PAGES; i++) {
      const fs = physmem.allocFrame();
      physmem.allocFrame();
      const fd = physmem.allocFrame();
      physmem.frameForWrite(fs).set(rawSrc[i]!);
      physmem.frameForWrite(fd);
      d.map(iova(SRC_IOVA + i * PAGE_SIZE), pfnToHpa(fs), PAGE_SIZE, IOMMU_READ);
      d.map(iova(DST_IOVA + i * PAGE_SIZE), pfnToHpa(fd), PAGE_SIZE, RW);
    }
    return { iommu, dma: new DeviceDma({ iommu, physmem, bdf }) };
  };
  const copyLoop = (dma: DeviceDma) => (n: number) => {
    let bad = 0;
    for (let i = 0; i < n; i++) {
      const k = (i % COPY_PAGES) * PAGE_SIZE;
      if (dma.copy((DST_IOVA + k) as Iova, (SRC_IOVA + k) as Iova, PAGE_SIZE) !== DMA_OK) bad++;
    }
    if (bad > 0) throw new Error(`${bad} DMA copies faulted in the benchmark`);
  };
  const plain = setup(false);
  const ats = setup(true);
  const r = interleaved(
    {
      raw: (n) => {
        for (let i = 0; i < n; i++) {
          const k = i % COPY_PAGES;
          rawSrc[k]!.copy(rawDst[k]!, 0, 0, PAGE_SIZE);
        }
      },
      iommu: copyLoop(plain.dma),
      ats: copyLoop(ats.dma),
    },
    6,
  );

  const gbs = (pagesPerSec: number) => ((pagesPerSec * PAGE_SIZE) / 1e9).toFixed(2);
  record({
    suite: SUITE,
    name: "DMA copy 4 KiB pages through the IOMMU (IOTLB hits)",
    value: r.iommu,
    unit: "pages/s",
    note: `${gbs(r.iommu)} GB/s; ${(r.iommu / r.raw).toFixed(2)}x raw Buffer.copy (${gbs(r.raw)} GB/s); target >= 0.5`,
    met: r.iommu / r.raw >= 0.5,
  });
  const s = ats.iommu.stats();
  record({
    suite: SUITE,
    name: "DMA copy 4 KiB pages with ATS (ATC hits, 1024-entry ATC)",
    value: r.ats,
    unit: "pages/s",
    note: `${gbs(r.ats)} GB/s; ${(r.ats / r.raw).toFixed(2)}x raw Buffer.copy; ${s.atsHits} ATS hits, ${s.iotlbHits} IOTLB hits; target >= 0.5`,
    met: r.ats / r.raw >= 0.5 && s.atsHits > 0,
  });
}

export async function run(): Promise<void> {
  iotlbHits();
  pageWalks();
  dmaCopy();
  if (sink === 0.5) console.log("(unreachable: keeps the benchmark results alive)");
}
