/**
 * The GPU's blitter data path (src/gpu): XY_SRC_COPY_BLT and XY_COLOR_BLT of 4 MiB surfaces submitted through the
 * host driver, every page going GMA -> GGTT -> IOVA -> IOMMU (IOTLB or page walk; with ATS, the device ATC) -> host
 * frame, beside a raw copy of the same bytes measured in the same run.
 *
 * Surfaces are 1024 x 1024 pixels of 32 bpp (pitch 4096) in a vGPU partition's hidden memory. "Scattered": each GMA
 * page is its own frame mapped with dma_map_page, as the vendor driver maps pinned guest pages (consecutive GMA pages
 * get non-consecutive IOVAs, so every page is a separate DMA operation). "Contiguous": one dma_alloc_coherent buffer
 * per surface (consecutive IOVAs: the blitter merges the surface into one DeviceDma call).
 *
 * Baseline: `Buffer.copy` of the same bytes laid out as they are in host memory, 1024 separate 4 KiB frames per
 * surface (as bench/iommu.bench.ts measures its DMA copy); the note also gives one 4 MiB `Buffer.copy`.
 * Target: copy bandwidth >= 50% of the baseline with ATS off and on, on a host whose IOTLB and ATC hold the copy's
 * 2048 translations (4096 entries each): that measures the GPU's path, not IOTLB reach. With the host's default
 * 1024-entry IOTLB a 4 MiB + 4 MiB copy misses on every page (LRU, sequential) and pays a page walk per page: that
 * figure is reported too, without a target.
 */
import { type Pfn, VirtualClock } from "../src/core/index.ts";
import { colorBlt, createGpu, gen8PteEncode, type HostGpuDriver, srcCopyBlt } from "../src/gpu/index.ts";
import { type DmaDevice, DmaDirection, GiB, Host } from "../src/host/index.ts";
import { opsPerSecond, record } from "./lib.ts";

const SUITE = "gpu";
const PAGE = 4096;
const SURFACE = 4 * 1024 * 1024;
const MiB = 1024 * 1024;

let sink = 0;

/** Rates measured in alternation, best of each (see bench/iommu.bench.ts). */
function interleaved<K extends string>(bodies: Record<K, (n: number) => void>, rounds = 4): Record<K, number> {
  const best = {} as Record<K, number>;
  for (let r = 0; r < rounds; r++) {
    for (const k of Object.keys(bodies) as K[]) {
      best[k] = Math.max(best[k] ?? 0, opsPerSecond(bodies[k], { minMs: 150, rounds: 2 }));
    }
  }
  return best;
}

function mapScattered(driver: HostGpuDriver, host: Host, dma: DmaDevice, gma: number, seed: number): void {
  for (let i = 0; i < SURFACE / PAGE; i++) {
    const pfn = host.physmem.allocFrame();
    host.physmem.frameForWrite(pfn).fill((seed + i) & 0xff);
    driver.writeGgtt(gma / PAGE + i, gen8PteEncode(dma.mapPage(pfn as Pfn, 0, PAGE, DmaDirection.BIDIRECTIONAL)));
  }
}

function mapContiguous(driver: HostGpuDriver, host: Host, dma: DmaDevice, gma: number, seed: number): void {
  const buf = dma.allocCoherent(SURFACE);
  for (let i = 0; i < SURFACE / PAGE; i++) {
    host.physmem.frameForWrite((buf.pfn + i) as Pfn).fill((seed + i) & 0xff);
    driver.writeGgtt(gma / PAGE + i, gen8PteEncode(buf.dmaAddr + i * PAGE));
  }
}

/** A GPU with a vGPU partition holding a source and a destination surface; `blit(cmds, n)` runs cmds n times. */
function rig(ats: boolean, contiguous: boolean, resident = true) {
  const clock = new VirtualClock();
  const caches = { entries: 4096, ways: 8, replacement: "lru" } as const;
  const host = new Host({
    memoryBytes: 4 * GiB,
    clock,
    ...(resident ? { iommu: { iotlb: caches, atc: caches } } : {}),
  });
  const { gpu, driver } = createGpu(host, { ats });
  const part = driver.allocResources({ aperture: 64 * MiB, hidden: 384 * MiB, fences: 4 });
  const src = part.hidden.base;
  const dst = src + SURFACE;
  const map = contiguous ? mapContiguous : mapScattered;
  map(driver, host, driver.dma, src, 1);
  map(driver, host, driver.dma, dst, 2);
  const pitch = 4096;
  const rows = SURFACE / pitch;
  const copy = new Uint32Array(srcCopyBlt(dst, pitch, 0, 0, pitch / 4, rows, src, pitch, 0, 0));
  const fill = (color: number) => new Uint32Array(colorBlt(dst, pitch, 0, 0, pitch / 4, rows, color));
  let failures = 0;
  const onComplete = (r: { error?: string; faults: number }) => {
    if (r.error !== undefined || r.faults !== 0) failures++;
  };
  const blit = (commands: Uint32Array) => (n: number) => {
    for (let i = 0; i < n; i++) {
      driver.submit({ engine: "bcs", commands, owner: 1, onComplete });
      clock.advanceTo(gpu.bcs.busyUntil);
    }
    if (failures > 0) throw new Error(`${failures} blit(s) failed`);
  };
  return { copy: blit(copy), fillUniform: blit(fill(0x5a5a5a5a)), fillColor: blit(fill(0x11223344)), host };
}

export async function run(): Promise<void> {
  const pages = SURFACE / PAGE;
  const srcFrames = Array.from({ length: pages }, (_, i) => Buffer.alloc(PAGE, i));
  const dstFrames = Array.from({ length: pages }, () => Buffer.alloc(PAGE));
  const a = Buffer.alloc(SURFACE, 1);
  const b = Buffer.alloc(SURFACE, 2);
  const raw = {
    frames: (n: number) => {
      for (let k = 0; k < n; k++) for (let i = 0; i < pages; i++) sink += srcFrames[i]!.copy(dstFrames[i]!);
    },
    whole: (n: number) => {
      for (let k = 0; k < n; k++) sink += a.copy(b);
    },
    fill: (n: number) => {
      for (let k = 0; k < n; k++) for (let i = 0; i < pages; i++) dstFrames[i]!.fill(k & 0xff);
      sink += dstFrames[0]![0]!;
    },
  };
  const off = rig(false, false);
  const on = rig(true, false);
  const offC = rig(false, true);
  const offSmall = rig(false, false, false);
  const r = interleaved({
    raw: raw.frames,
    rawWhole: raw.whole,
    rawFill: raw.fill,
    off: off.copy,
    on: on.copy,
    offContiguous: offC.copy,
    offDefault: offSmall.copy,
    fillUniform: off.fillUniform,
    fillColor: off.fillColor,
  });
  const gbs = (opsPerS: number) => (opsPerS * SURFACE) / 1e9;
  const base = `Buffer.copy of 4 KiB frames ${gbs(r.raw).toFixed(2)} GB/s (one 4 MiB Buffer.copy ${gbs(r.rawWhole).toFixed(2)})`;
  for (const [name, v] of [
    ["XY_SRC_COPY_BLT 4 MiB, scattered pages, IOMMU (IOTLB hits)", r.off],
    ["XY_SRC_COPY_BLT 4 MiB, scattered pages, ATS (ATC hits)", r.on],
  ] as const) {
    const ratio = v / r.raw;
    record({
      suite: SUITE,
      name,
      value: gbs(v),
      unit: "GB/s",
      note: `${ratio.toFixed(2)}x ${base}; target >= 0.5`,
      met: ratio >= 0.5,
    });
  }
  record({
    suite: SUITE,
    name: "XY_SRC_COPY_BLT 4 MiB, DMA-contiguous surfaces, IOMMU",
    value: gbs(r.offContiguous),
    unit: "GB/s",
    note: `${(r.offContiguous / r.raw).toFixed(2)}x baseline`,
  });
  record({
    suite: SUITE,
    name: "XY_SRC_COPY_BLT 4 MiB, scattered, default 1024-entry IOTLB",
    value: gbs(r.offDefault),
    unit: "GB/s",
    note: `${(r.offDefault / r.raw).toFixed(2)}x baseline: a page walk per page`,
  });
  const rawFill = `Buffer.fill of 4 KiB frames ${gbs(r.rawFill).toFixed(2)} GB/s`;
  record({
    suite: SUITE,
    name: "XY_COLOR_BLT 4 MiB, uniform colour (byte fill), IOMMU",
    value: gbs(r.fillUniform),
    unit: "GB/s",
    note: `${(r.fillUniform / r.rawFill).toFixed(2)}x ${rawFill}`,
  });
  record({
    suite: SUITE,
    name: "XY_COLOR_BLT 4 MiB, 4-byte colour (pattern write), IOMMU",
    value: gbs(r.fillColor),
    unit: "GB/s",
    note: `${(r.fillColor / r.rawFill).toFixed(2)}x ${rawFill}`,
  });
  const st = on.host.iommu.stats();
  record({
    suite: SUITE,
    name: "ATS run: share of translations served by the ATC",
    value: st.translations === 0 ? 0 : st.atsHits / st.translations,
    unit: "",
    note: `${st.atsHits} ATC hits, ${st.walks} page walks`,
  });
  if (sink === 0.5) console.log(sink);
}
