/**
 * Process address spaces (src/host/mm.ts): what a huge, mostly untouched mapping costs, how fast pages fault in on
 * first touch, and how fast present pages pin and unpin (type1's per-page work for an mdev vfio_pin_pages).
 *
 * Heap figures are exact only with `node --expose-gc --import tsx bench/run.ts memory` (heapUsedMiB collects garbage
 * when `gc` is exposed); they count the JS heap plus ArrayBuffer backing stores, where typed arrays live.
 */
import { hva, PAGE_SIZE, type Pfn, SystemClock, Tracer } from "../src/core/index.ts";
import { AddressSpace, PROT_READ, PROT_WRITE } from "../src/host/mm.ts";
import { PhysicalMemory } from "../src/host/physmem.ts";
import { heapUsedMiB, opsPerSecond, record, timeMs } from "./lib.ts";

const SUITE = "memory";
const TiB = 2 ** 40;
const RW = PROT_READ | PROT_WRITE;
/** Pages faulted per mmap/munmap round in the fault-rate loops (64 MiB of data at most alive at once). */
const ROUND_PAGES = 16384;

/**
 * JS heap plus ArrayBuffer backing stores, after collections when gc is exposed. Backing stores of dead buffers are
 * released asynchronously, so collect, yield to the event loop, and collect again before reading.
 */
async function memoryMiB(): Promise<number> {
  heapUsedMiB();
  await new Promise((r) => setImmediate(r));
  const heap = heapUsedMiB();
  return heap + process.memoryUsage().arrayBuffers / (1024 * 1024);
}

function host(sizeBytes: number): { physmem: PhysicalMemory; as: AddressSpace } {
  const tracer = new Tracer(new SystemClock());
  const physmem = new PhysicalMemory({ sizeBytes, tracer });
  return { physmem, as: new AddressSpace({ physmem, tracer, pid: 1, capIpcLock: true }) };
}

export async function run(): Promise<void> {
  const gcNote = globalThis.gc ? "gc exposed" : "run with --expose-gc for exact figures";

  // ---- 1 TiB mapped, untouched ------------------------------------------------------------------------------------
  const before = await memoryMiB();
  const big = host(64 * 2 ** 30);
  const a = big.as.mmap(TiB, RW, { name: "guest-ram" });
  const untouched = Math.max(0, (await memoryMiB()) - before);
  const denseMiB = ((TiB / PAGE_SIZE) * 8) / 2 ** 20;
  record({
    suite: SUITE,
    name: "1 TiB mapped, untouched: heap + array buffers",
    value: untouched,
    unit: "MiB",
    note: `baseline dense 8-byte page table ${denseMiB} MiB (computed): ${(denseMiB / Math.max(untouched, 0.001)).toFixed(0)}x less; target < 10 MiB; ${gcNote}`,
    met: untouched < 10,
  });
  // One page per GiB: every touch lands in its own 2 MiB leaf, the worst case for the sparse table.
  const one = new Uint8Array([1]);
  for (let g = 0; g < 1024; g++) big.as.write(hva(a + g * 2 ** 30), one);
  const sparse = (await memoryMiB()) - before;
  record({
    suite: SUITE,
    name: "1 TiB mapped, 1024 pages touched (1 per GiB)",
    value: sparse,
    unit: "MiB",
    // MiB spread over 1024 pages is KiB per page.
    note: `${(sparse - untouched).toFixed(1)} KiB per touched page, with its 4 KiB of data and its own 2 MiB leaf; ${gcNote}`,
  });
  const unmapMs = timeMs(() => {
    const t = host(64 * 2 ** 30);
    const b = t.as.mmap(TiB, RW);
    for (let g = 0; g < 1024; g++) t.as.fault(hva(b + g * 2 ** 30), true);
    t.as.munmap(b, TiB);
  });
  record({
    suite: SUITE,
    name: "mmap + touch 1024 pages + munmap of 1 TiB",
    value: unmapMs,
    unit: "ms",
    note: "cost follows touched pages, not mapped size",
  });
  big.as.exit();

  // ---- fault-in rate ------------------------------------------------------------------------------------------------
  const baseline = opsPerSecond((n) => {
    const keep: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      const p = new Uint8Array(PAGE_SIZE);
      p[0] = 1;
      keep.push(p);
      if (keep.length === ROUND_PAGES) keep.length = 0;
    }
  });
  record({ suite: SUITE, name: "baseline: new Uint8Array(4096) per page", value: baseline, unit: "pages/s" });

  const ft = host(16 * 2 ** 30);
  const touchRate = opsPerSecond((n) => {
    for (let left = n; left > 0; left -= ROUND_PAGES) {
      const c = Math.min(left, ROUND_PAGES);
      const base = ft.as.mmap(c * PAGE_SIZE, RW);
      for (let i = 0; i < c; i++) ft.as.write(hva(base + i * PAGE_SIZE), one);
      ft.as.munmap(base, c * PAGE_SIZE);
    }
  });
  record({
    suite: SUITE,
    name: "first-touch write (fault + zeroed 4 KiB frame), incl. munmap",
    value: touchRate,
    unit: "pages/s",
    note: `${(touchRate / baseline).toFixed(2)}x baseline`,
  });
  const faultRate = opsPerSecond((n) => {
    for (let left = n; left > 0; left -= ROUND_PAGES) {
      const c = Math.min(left, ROUND_PAGES);
      const base = ft.as.mmap(c * PAGE_SIZE, RW);
      for (let i = 0; i < c; i++) ft.as.fault(hva(base + i * PAGE_SIZE), true);
      ft.as.munmap(base, c * PAGE_SIZE);
    }
  });
  record({
    suite: SUITE,
    name: "fault() only (frame allocated, data not yet touched), incl. munmap",
    value: faultRate,
    unit: "pages/s",
    note: `${(faultRate / baseline).toFixed(2)}x baseline`,
  });

  // ---- pin + unpin of present pages --------------------------------------------------------------------------------
  const BATCH = 512;
  const pp = host(2 ** 30);
  const pa = pp.as.mmap(BATCH * PAGE_SIZE, RW);
  const frames = new Float64Array(BATCH);
  pp.as.pinUserPages(pa, BATCH, true, frames);
  pp.as.unpinUserPages(frames);
  const rawRate = opsPerSecond((n) => {
    for (let i = 0; i < n; i++) {
      const f = frames[i & (BATCH - 1)]! as Pfn;
      pp.physmem.pin(f);
      pp.physmem.unpin(f);
    }
  });
  record({ suite: SUITE, name: "baseline: physmem.pin + unpin of a known frame", value: rawRate, unit: "pages/s" });
  const one1 = new Float64Array(1);
  const singleRate = opsPerSecond((n) => {
    for (let i = 0; i < n; i++) {
      pp.as.pinUserPages(hva(pa + (i & (BATCH - 1)) * PAGE_SIZE), 1, true, one1);
      pp.as.unpinUserPages(one1, 1);
    }
  });
  record({
    suite: SUITE,
    name: "pin_user_pages + unpin, 1 present page per call",
    value: singleRate,
    unit: "pages/s",
    note: `${(singleRate / rawRate).toFixed(2)}x raw physmem pin`,
  });
  const batchRate = opsPerSecond((n) => {
    for (let done = 0; done < n; done += BATCH) {
      pp.as.pinUserPages(pa, BATCH, true, frames);
      pp.as.unpinUserPages(frames);
    }
  });
  record({
    suite: SUITE,
    name: `pin_user_pages + unpin, ${BATCH} present pages per call`,
    value: batchRate,
    unit: "pages/s",
    note: `${(batchRate / rawRate).toFixed(2)}x raw physmem pin`,
  });
}
