/**
 * The vGPU's shadow GTT (src/vgpu/gtt.ts) on the real GPU model and type1, each figure beside baselines measured in
 * the same run:
 * - a guest GTT write naming a new page: gfn cache miss -> vfio_pin_pages (type1: GPA -> HVA -> pin_user_pages,
 *   locked_vm) -> dma_map_page (IOVA allocation + IOMMU map) -> physical GGTT write, and the entry's previous page
 *   released (dma_unmap_page with its IOTLB flush + vfio_unpin_pages). Steady state: every write replaces one pinned
 *   page by another. Baselines: vfio pin + unpin of one page alone, and dma_map_page + dma_unmap_page alone.
 * - a guest GTT write naming a page already in the gfn cache (another entry holds it): refcount + physical GGTT write.
 *   Baseline: a plain Map insert + delete, the cheapest thing a cache can do.
 * Both are measured at the vendor driver's entry point (ShadowGtt.write) and, for the hot case, also through the
 * VMM's pwrite on the device fd (vfio-core dispatch and kvmgt-style access splitting included). Tracing is off.
 *
 * And the execlist path (src/vgpu/execlist-backend.ts, shadow-ppgtt.ts), on a host driver with execlists:
 * - shadow PPGTT population per 4 KiB page: a guest PPGTT mapping 4096 pages (i915's layout: scratch tables, one PT
 *   per 2 MiB) shadowed from nothing (g2v create: every table read, every page pinned and DMA-mapped, every shadow
 *   table written) and released (g2v destroy); and its re-validation when nothing changed (what every submission
 *   costs: each guest table read and compared). Baseline: a shadow GTT write of a new page (the same pin + map);
 * - per 2 MiB page: the vGPU has no HUGE_GTT (a PDE with the 2 MiB bit is refused: checked once), so a guest maps
 *   2 MiB as one page table of 512 4 KiB entries; a 16 MiB mapping (8 full page tables of distinct pages) shadowed
 *   and released, per 2 MiB. Baseline: the 4 KiB figure of the same run (512 of them);
 * - re-validation per submission as the guest PPGTT grows: 1 MiB, 16 MiB, 256 MiB and 4 GiB mapped (tables built as
 *   a guest builds them; the leaves name 2 MiB of guest pages over and over, so the pins stay few and the walk is
 *   what is measured). Baseline: the 1 MiB figure;
 * - a guest request (i915's shape: flush, a PPGTT store, a GGTT breadcrumb, a user interrupt) submitted by the
 *   guest through the vGPU (ring write, ELSP through the device fd, context read and audited, PPGTT re-walked, ring
 *   scanned, shadow ring and image, scheduler, submitContext, write-back, CSB) to completion, vs the same context
 *   (same ring dwords, same PPGTT) submitted by the host driver directly (`HostGpu.submitContext` of a prepared
 *   image): the difference is the mediation's overhead per request.
 */
import { type Gpa, type Hva, type Iova, KernelError, PAGE_SIZE } from "../src/core/index.ts";
import {
  arbOnOff,
  type ContextSubmissionResult,
  contextControl,
  flushDw,
  GTT_OFFSET,
  LRC_STATE_OFFSET,
  lrcRegisterState,
  MI_USER_INTERRUPT,
  storeDataImm,
} from "../src/gpu/index.ts";
import { DmaDirection, IOMMU_READ, IOMMU_WRITE } from "../src/host/index.ts";
import { VFIO_PCI_BAR0_REGION_INDEX, type VfioEmulatedDevice } from "../src/vfio/index.ts";
import { Type1Fixture } from "../src/vfio/type1/testing.ts";
import { vengine } from "../src/vgpu/index.ts";
import { GuestContext, GuestPpgtt, MiB, VgpuWorld } from "../src/vgpu/testing.ts";
import { opsPerSecond, record } from "./lib.ts";

const SUITE = "vgpu";
/** Guest RAM pages the miss benchmark cycles through, and entries it writes. */
const RAM_PAGES = 16 * 1024;
const ENTRIES = 1024;
/** The miss path allocates (type1's pin bookkeeping, IOVA tree nodes): longer rounds smooth out GC pauses. */
const SLOW = { minMs: 600, rounds: 5 };

export async function run(): Promise<void> {
  const w = new VgpuWorld({ trace: false, memoryBytes: 4 * 1024 * MiB });
  const uuid = w.create("GVTg_V5_8");
  const g = w.attach(uuid, { ramBytes: RAM_PAGES * PAGE_SIZE });
  const v = w.vgpu(uuid);
  const gtt = v.gtt;
  const first = g.aperture.base / PAGE_SIZE;
  // Fault guest RAM in once, as a running guest's memory is.
  for (let p = 0; p < RAM_PAGES; p++) g.writeGpa(p * PAGE_SIZE, new Uint8Array(1));

  // ---- new page: pin + dma map (and the replaced page's unmap + unpin) ---------------------------------------------
  let step = 0;
  const miss = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      const i = step % ENTRIES;
      const gfn = step % RAM_PAGES;
      gtt.write((first + i) * 8, 8, gfn * PAGE_SIZE + 1, 0);
      step++;
    }
  }, SLOW);
  const missStats = v.stats();
  v.checkInvariants();

  // Baselines: the two halves of the miss path alone. vfio pin/unpin through a type1 backend of its own (an emulated
  // group, as the vGPU's), on the same amount of faulted-in guest RAM.
  const f = new Type1Fixture({ trace: false });
  f.emulatedGroup("bench-mdev");
  const dev: VfioEmulatedDevice = { name: "bench-mdev", dmaUnmap: () => {} };
  f.backend.registerDevice(dev);
  const pinRam = f.ram(1024 * PAGE_SIZE);
  for (let p = 0; p < 1024; p++) f.mm.write((pinRam + p * PAGE_SIZE) as Hva, new Uint8Array(1));
  f.map(0, pinRam, 1024 * PAGE_SIZE);
  let pinStep = 0;
  const vfioPin = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      const gpa = ((pinStep++ % 1024) * PAGE_SIZE) as Iova;
      f.backend.pinPages(dev, gpa, 1, IOMMU_READ | IOMMU_WRITE);
      f.backend.unpinPages(dev, gpa, 1);
    }
  }, SLOW);
  // dma_map_page + dma_unmap_page in the same steady state as the miss path: 1024 live mappings, each op maps one more
  // frame and unmaps the oldest (a lone map/unmap pair would also free and rebuild IOMMU page-table pages each time).
  const frames = Array.from({ length: ENTRIES }, () => w.host.physmem.allocFrame());
  const live = new Float64Array(ENTRIES).fill(-1);
  let dmaStep = 0;
  const dmaMap = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      const slot = dmaStep++ % ENTRIES;
      const old = live[slot]!;
      if (old >= 0) w.driver.dma.unmapPage(old as Iova, PAGE_SIZE, DmaDirection.BIDIRECTIONAL);
      live[slot] = w.driver.dma.mapPage(frames[slot]!, 0, PAGE_SIZE, DmaDirection.BIDIRECTIONAL);
    }
  }, SLOW);
  for (const a of live) if (a >= 0) w.driver.dma.unmapPage(a as Iova, PAGE_SIZE, DmaDirection.BIDIRECTIONAL);

  // ---- hot: the gfn is cached (held by entries 0 and 1), entries 2.. flip between them ------------------------------
  v.reset();
  gtt.write(first * 8, 8, 0x1000 + 1, 0);
  gtt.write((first + 1) * 8, 8, 0x2000 + 1, 0);
  let flip = 0;
  const hot = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      const i = 2 + (flip % ENTRIES);
      gtt.write((first + i) * 8, 8, ((flip & 1) === 0 ? 0x1000 : 0x2000) + 1, 0);
      flip++;
    }
  });
  const hotStats = v.stats();
  v.checkInvariants();
  const buf = new Uint8Array(8);
  const view = new DataView(buf.buffer);
  const hotPwrite = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      const i = 2 + (flip % ENTRIES);
      view.setUint32(0, ((flip & 1) === 0 ? 0x1000 : 0x2000) + 1, true);
      g.device.write(VFIO_PCI_BAR0_REGION_INDEX, GTT_OFFSET + (first + i) * 8, buf);
      flip++;
    }
  });

  const map = new Map<number, number>();
  let mk = 0;
  const mapInsert = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      map.set(mk, k);
      map.delete(mk - ENTRIES);
      mk++;
    }
  });

  record({ suite: SUITE, name: "baseline: Map insert + delete", value: mapInsert, unit: "ops/s" });
  record({
    suite: SUITE,
    name: "baseline: vfio_pin_pages + vfio_unpin_pages, 1 page",
    value: vfioPin,
    unit: "pairs/s",
  });
  record({ suite: SUITE, name: "baseline: dma_map_page + dma_unmap_page, 1024 live", value: dmaMap, unit: "pairs/s" });
  record({
    suite: SUITE,
    name: "shadow GTT write, new page (pin + dma map + old released)",
    value: miss,
    unit: "writes/s",
    note:
      `${(mapInsert / miss).toFixed(0)}x slower than a Map insert; pin+unpin alone ${(vfioPin / miss).toFixed(2)}x, ` +
      `map+unmap alone ${(dmaMap / miss).toFixed(2)}x this rate; ${missStats.cacheMisses} misses, ${missStats.pinnedPages} pinned at the end`,
  });
  record({
    suite: SUITE,
    name: "shadow GTT write, gfn cache hot (refcount + GGTT write)",
    value: hot,
    unit: "writes/s",
    note: `${(hot / miss).toFixed(1)}x a new page; ${(mapInsert / hot).toFixed(2)}x slower than a Map insert; ${hotStats.cacheHits} hits`,
  });
  record({
    suite: SUITE,
    name: "shadow GTT write, cache hot, through the VMM's pwrite",
    value: hotPwrite,
    unit: "writes/s",
    note: `${(hot / hotPwrite).toFixed(2)}x slower than the vendor entry point (vfio-core dispatch and splitting)`,
  });
  g.close();
  w.mdev.remove(uuid);
  runExeclists(miss);
}

/**
 * A guest PPGTT as a guest builds it, written table by table: `pages` 4 KiB leaves from GPU virtual address 4 GiB on,
 * naming `dataBytes` of guest pages over and over; with `hugePde`, one PDE with the 2 MiB bit instead of a page table.
 */
function buildPpgtt(
  g: ReturnType<VgpuWorld["attach"]>,
  pages: number,
  dataBytes: number,
  opts: { readonly hugePde?: boolean } = {},
): { readonly root: Gpa } {
  const data: number[] = [];
  for (let i = 0; i < dataBytes / PAGE_SIZE; i++) data.push(g.allocPage());
  const table = () => g.allocPage();
  const entry = (dv: DataView, i: number, v: number) => {
    dv.setUint32(8 * i, v % 2 ** 32, true);
    dv.setUint32(8 * i + 4, Math.floor(v / 2 ** 32), true);
  };
  const page = new Uint8Array(PAGE_SIZE);
  const dv = new DataView(page.buffer);
  // One leaf table's contents: the data pages, present and writable.
  const leaf = new Uint8Array(PAGE_SIZE);
  const ldv = new DataView(leaf.buffer);
  for (let i = 0; i < 512; i++) entry(ldv, i, data[i % data.length]! + 3);
  const pts = Math.ceil(pages / 512);
  const pds = Math.ceil(pts / 512);
  const pml4 = table();
  const pdp = table();
  page.fill(0);
  entry(dv, 0, pdp + 3);
  g.writeGpa(pml4, page);
  page.fill(0);
  // GVA 4 GiB on: PDP index 4 onwards.
  const pdPages: number[] = [];
  for (let d = 0; d < pds; d++) {
    const pd = table();
    pdPages.push(pd);
    entry(dv, 4 + d, pd + 3);
  }
  g.writeGpa(pdp, page);
  for (let d = 0; d < pds; d++) {
    page.fill(0);
    for (let i = 0; i < 512 && d * 512 + i < pts; i++) {
      if (opts.hugePde) {
        entry(dv, i, data[0]! + 3 + 0x80);
        continue;
      }
      const pt = table();
      g.writeGpa(pt, leaf);
      entry(dv, i, pt + 3);
    }
    g.writeGpa(pdPages[d]!, page);
  }
  return { root: pml4 as Gpa };
}

/** The execlist path (see the module comment); `gttMiss` is the shadow GTT's new-page rate of this run. */
function runExeclists(gttMiss: number): void {
  const w = new VgpuWorld({ trace: false, memoryBytes: 4 * 1024 * MiB, submission: "execlists" });
  const uuid = w.create("GVTg_V5_8");
  const g = w.attach(uuid, { ramBytes: 64 * MiB });
  const v = w.vgpu(uuid);
  g.mmio(0x78000); // the guest read PVINFO

  // ---- population per page -----------------------------------------------------------------------------------
  const PAGES = 4096;
  const ppgtt = new GuestPpgtt(g, { scratch: true });
  const VA = 0x1_0000_0000;
  for (let i = 0; i < PAGES; i++) ppgtt.map(VA + i * PAGE_SIZE, g.allocPage());
  const root = ppgtt.pml4 as Gpa;
  const populate = opsPerSecond(
    (n) => {
      for (let k = 0; k < n; k++) {
        const err = v.ppgtt.announce(root);
        if (err !== undefined) throw err;
        v.ppgtt.unannounce(root);
      }
    },
    { minMs: 800, rounds: 3 },
  );
  v.ppgtt.announce(root);
  const tables = v.ppgtt.stats().tables;
  const revalidate = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      const ref = v.ppgtt.acquire(root);
      if (ref instanceof KernelError) throw ref;
      v.ppgtt.release(ref);
    }
  });
  v.ppgtt.unannounce(root);
  v.checkInvariants();

  // ---- per 2 MiB page: full page tables ---------------------------------------------------------------------------
  const HUGE = 8;
  const huge = buildPpgtt(g, HUGE * 512, HUGE * 2 * MiB);
  const populateHuge = opsPerSecond(
    (n) => {
      for (let k = 0; k < n; k++) {
        const err = v.ppgtt.announce(huge.root);
        if (err !== undefined) throw err;
        v.ppgtt.unannounce(huge.root);
      }
    },
    { minMs: 800, rounds: 3 },
  );
  const ps = buildPpgtt(g, 512, PAGE_SIZE, { hugePde: true });
  const psRefused = v.ppgtt.announce(ps.root);
  v.ppgtt.unannounce(ps.root);
  v.checkInvariants();

  // ---- re-validation per submission as the PPGTT grows ---------------------------------------------------------
  const sizes = [1 * MiB, 16 * MiB, 256 * MiB, 4096 * MiB];
  const revalidation: { bytes: number; us: number; tables: number; populateMs: number }[] = [];
  for (const bytes of sizes) {
    const tree = buildPpgtt(g, bytes / PAGE_SIZE, 2 * MiB);
    const t0 = performance.now();
    const err = v.ppgtt.announce(tree.root);
    const populateMs = performance.now() - t0;
    if (err !== undefined) throw err;
    const rate = opsPerSecond(
      (n) => {
        for (let k = 0; k < n; k++) {
          const r = v.ppgtt.acquire(tree.root);
          if (r instanceof KernelError) throw r;
          v.ppgtt.release(r);
        }
      },
      { minMs: 300, rounds: 3 },
    );
    revalidation.push({ bytes, us: 1e6 / rate, tables: v.ppgtt.stats().tables, populateMs });
    v.ppgtt.unannounce(tree.root);
  }
  v.checkInvariants();

  // ---- one request: through the vGPU, and the same context by the host driver ------------------------------------
  const engine = "bcs";
  const hws = g.allocGm(1);
  g.enableExeclists(vengine(engine).base, hws.gma);
  const small = new GuestPpgtt(g, { scratch: true });
  small.map(VA, g.allocPage());
  small.announce(); // as i915 announces every PPGTT it creates (g2v): its shadow then lives across submissions
  const ctx = new GuestContext(g, engine, small, { ringPages: 4 });
  const req = [
    ...arbOnOff(false),
    ...flushDw({ post: "store", target: { kind: "index", offset: 0xd0 }, invalidateTlb: true }),
    ...storeDataImm(VA, 1, "ppgtt"),
    ...storeDataImm(hws.gma + 0x100, 1),
    MI_USER_INTERRUPT,
    ...arbOnOff(true),
  ];
  const desc = ctx.descriptor(0x20);
  const before = v.stats().contexts!.completed;
  const viaVgpu = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      ctx.emit(req);
      g.elsp(vengine(engine).base, desc);
      w.run(20_000);
    }
  });
  const done = v.stats().contexts!.completed - before;
  v.checkInvariants();

  const hd = w.driver;
  const ref = v.ppgtt.acquire(small.pml4 as Gpa);
  if (ref instanceof KernelError) throw ref;
  const image = hd.allocShadow(2 * PAGE_SIZE);
  const ring = hd.allocShadow(PAGE_SIZE);
  const dwords = Uint32Array.from(req.length % 2 === 0 ? req : [...req, 0]);
  const ringBytes = new Uint8Array(dwords.buffer);
  let hostDone = 0;
  const onComplete = (r: ContextSubmissionResult): void => {
    if (r.error !== undefined) throw new Error(r.error);
    hostDone++;
  };
  const direct = opsPerSecond((n) => {
    for (let k = 0; k < n; k++) {
      ring.write(0, ringBytes);
      const regs = lrcRegisterState(engine, {
        ringStart: ring.gma,
        ringBytes: PAGE_SIZE,
        tail: ringBytes.length,
        contextControl: contextControl(false),
      });
      image.write(LRC_STATE_OFFSET, new Uint8Array(regs.buffer));
      hd.submitContext({ engine, image, pml4: ref.pml4, owner: 0, onComplete });
      w.run(20_000);
    }
  });
  image.free();
  ring.free();
  v.ppgtt.release(ref);

  record({
    suite: SUITE,
    name: "shadow PPGTT population, per 4 KiB page",
    value: populate * PAGES,
    unit: "pages/s",
    note:
      `${PAGES} pages, ${tables} shadow tables, populated and released ${populate.toFixed(1)} times/s; ` +
      `${((populate * PAGES) / gttMiss).toFixed(2)}x the shadow GTT's new-page rate (the same pin + map)`,
  });
  record({
    suite: SUITE,
    name: "shadow PPGTT re-validation, nothing changed, per 4 KiB page",
    value: revalidate * PAGES,
    unit: "pages/s",
    note: `a re-walk of ${tables} guest tables: ${(1e6 / revalidate).toFixed(1)} us per submission for ${PAGES} mapped pages`,
  });
  record({
    suite: SUITE,
    name: "shadow PPGTT population, per 2 MiB page (a full PT)",
    value: populateHuge * HUGE,
    unit: "2MiB/s",
    note:
      `${HUGE} full page tables of distinct pages (${HUGE * 2} MiB), populated and released ` +
      `${populateHuge.toFixed(2)} times/s: ` +
      `${((populateHuge * HUGE * 512) / (populate * PAGES)).toFixed(2)}x the 4 KiB rate per page; a PDE with the ` +
      `2 MiB bit is refused (${psRefused !== undefined ? psRefused.message.slice(0, 60) : "NOT REFUSED"}...)`,
    met: psRefused !== undefined,
  });
  const base = revalidation[0]!;
  for (const r of revalidation) {
    record({
      suite: SUITE,
      name: `shadow PPGTT re-validation per submission, ${r.bytes >= 1024 * MiB ? `${r.bytes / 1024 / MiB} GiB` : `${r.bytes / MiB} MiB`} mapped`,
      value: r.us,
      unit: "us",
      note:
        `${r.tables} shadow tables; ${(r.us / base.us).toFixed(1)}x the 1 MiB figure; ` +
        `${(((r.bytes / PAGE_SIZE) * 1e6) / r.us / 1e6).toFixed(1)} M pages/s; first population ${r.populateMs.toFixed(0)} ms`,
    });
  }
  record({
    suite: SUITE,
    name: "baseline: the same context by the host driver (submitContext)",
    value: direct,
    unit: "requests/s",
  });
  record({
    suite: SUITE,
    name: "guest request through the vGPU (ELSP to CSB)",
    value: viaVgpu,
    unit: "requests/s",
    note:
      `${(direct / viaVgpu).toFixed(2)}x the host driver's time: ${(1e6 / viaVgpu - 1e6 / direct).toFixed(1)} us more ` +
      `per request (mediation, and the guest's own ring and ELSP writes); ${done} completed, ${hostDone} direct`,
  });
  g.close();
  w.mdev.remove(uuid);
}
