import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, type Hpa, KernelError, type Pfn, TraceRecorder, VirtualClock } from "../core/index.ts";
import {
  DmaDirection,
  Host,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
} from "../host/index.ts";
// The type table lives with the vendor driver, above this layer; a test may assemble both.
import { GVT_TYPES } from "../vgpu/index.ts";
import { srcCopyBlt, storeDataImm, colorBlt as xyColorBlt } from "./commands.ts";
import type { GpuResourceRequest, GpuResources, ShadowBuffer, SubmissionResult } from "./contract.ts";
import { DEFAULT_COST } from "./cost.ts";
import { MiB } from "./gpu.ts";
import { type CreateGpuOptions, createGpu, HOST_APERTURE_RESERVED, HOST_HIDDEN_RESERVED } from "./host-driver.ts";
import {
  ENGINE_BASE,
  type EngineId,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GTT_OFFSET,
  gen8PteEncode,
  MI_BATCH_BUFFER_END,
  MI_BATCH_BUFFER_START_GEN8,
  MI_NOOP,
  MI_USER_INTERRUPT,
  RING_CTL,
  RING_VALID,
} from "./regs.ts";

const PAGE = 4096;
/** What each of GVT-g's gen9 types asks of the host driver: the vendor driver's own table (src/vgpu/types.ts). */
const TYPES: Record<string, GpuResourceRequest> = Object.fromEntries(
  GVT_TYPES.map((t) => [t.id, { aperture: t.aperture, hidden: t.hidden, fences: t.fences }]),
);

function setup(opts: CreateGpuOptions & { iommu?: boolean; trace?: boolean } = {}) {
  const clock = new VirtualClock();
  const host = new Host({ memoryBytes: 2048 * MiB, clock, iommu: { enabled: opts.iommu ?? true } });
  const rec = opts.trace === false ? undefined : new TraceRecorder(host.tracer);
  const { gpu, driver, group } = createGpu(host, opts);
  /** A "guest page" behind GGTT entry `index`: a frame mapped with dma_map_page, as the vendor driver does. */
  const mapPage = (index: number): Pfn => {
    const pfn = host.physmem.allocFrame();
    const iova = driver.dma.mapPage(pfn, 0, PAGE, DmaDirection.BIDIRECTIONAL);
    driver.writeGgtt(index, gen8PteEncode(iova));
    return pfn;
  };
  const u32 = (pfn: Pfn, off = 0) => host.physmem.readU32((pfn * PAGE + off) as Hpa);
  /** Submits and returns a holder the completion fills in. */
  const submit = (engine: EngineId, words: readonly number[], owner = 1) => {
    const out: { result?: SubmissionResult; at?: number } = {};
    driver.submit({
      engine,
      commands: new Uint32Array(words.map((w) => w >>> 0)),
      owner,
      onComplete: (r) => {
        out.result = r;
        out.at = clock.now();
      },
    });
    return out;
  };
  return { host, clock, gpu, driver, group, rec, mapPage, u32, submit };
}

const store = storeDataImm;
/** A fill of a w x h rectangle at the surface's origin. */
const colorBlt = (dst: number, pitch: number, w: number, h: number, color: number) =>
  xyColorBlt(dst, pitch, 0, 0, w, h, color);
/** A copy of a w x h rectangle between two surfaces of the same pitch, origin to origin. */
const copyBlt = (dst: number, src: number, pitch: number, w: number, h: number) =>
  srcCopyBlt(dst, pitch, 0, 0, w, h, src, pitch, 0, 0);

const enospc = (re: RegExp) => (e: unknown) =>
  e instanceof KernelError && e.errno === Errno.ENOSPC && re.test(e.message);

describe("host driver probe", () => {
  it("binds as i915, enables MSI and bus mastering, maps its rings and points every other entry at scratch", () => {
    const { host, gpu, driver, rec } = setup();
    assert.equal(host.pci.driverOf(driver.bdf), "i915");
    assert.ok(gpu.config.busMasterEnabled());
    assert.equal(gpu.config.read(gpu.config.msiCap + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE, PCI_MSI_FLAGS_ENABLE);
    assert.ok(driver.dma.translated, "the GPU's DMA goes through a paging IOMMU domain");
    assert.notEqual(driver.scratch.dmaAddr, driver.scratch.pfn * PAGE, "IOVA, not identity");
    const scratchPte = gen8PteEncode(driver.scratch.dmaAddr);
    assert.equal(driver.readGgtt(HOST_APERTURE_RESERVED / PAGE), scratchPte);
    assert.equal(driver.readGgtt(1024 * 1024 - 1), scratchPte);
    for (const e of driver.engines) {
      assert.equal(gpu.barRead(0, ENGINE_BASE[e] + RING_CTL, 4) & RING_VALID, RING_VALID);
      const ring = driver.readGgtt(driver.ringGma(e) / PAGE);
      assert.notEqual(ring, scratchPte);
    }
    assert.notEqual(gpu.barRead(0, GEN8_GT_IER0, 4), 0);
    assert.equal(rec?.count("i915.probe"), 1);
    driver.checkInvariants();
  });

  it("works without an IOMMU (dma-direct: DMA addresses are host-physical)", () => {
    const s = setup({ iommu: false });
    assert.equal(s.driver.dma.translated, false);
    assert.equal(s.driver.scratch.dmaAddr, s.driver.scratch.pfn * PAGE);
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const pfn = s.mapPage(r.aperture.base / PAGE);
    const done = s.submit("bcs", colorBlt(r.aperture.base, PAGE, 1024, 1, 0x01020304));
    s.clock.advance(1_000_000);
    assert.equal(done.result?.error, undefined);
    assert.equal(s.u32(pfn, 4092), 0x01020304);
    s.driver.checkInvariants();
  });
});

describe("vGPU partitions", () => {
  it("fits GVT-g's documented counts in a 512 MiB aperture and explains ENOSPC with numbers", () => {
    const fit = (t: GpuResourceRequest) => {
      const { driver } = setup({ trace: false });
      let n = 0;
      for (;;) {
        try {
          driver.allocResources(t);
          n++;
        } catch (e) {
          return { n, error: e as KernelError };
        }
      }
    };
    const t8 = fit(TYPES.GVTg_V5_8!);
    assert.equal(t8.n, 6);
    assert.ok(enospc(/aperture: 0 MiB left, needs 64 MiB/)(t8.error), t8.error.message);
    assert.equal(fit(TYPES.GVTg_V5_4!).n, 3);
    assert.equal(fit(TYPES.GVTg_V5_2!).n, 1);
    const t1 = fit(TYPES.GVTg_V5_1!);
    assert.equal(t1.n, 0);
    assert.match(t1.error.message, /aperture: 384 MiB left, needs 512 MiB/);
  });

  it("names hidden memory, fences and fragmentation when they are what is missing", () => {
    const big = setup({ apertureSize: 2048 * MiB, trace: false });
    for (let i = 0; i < 4; i++) big.driver.allocResources(TYPES.GVTg_V5_8!);
    assert.throws(() => big.driver.allocResources(TYPES.GVTg_V5_8!), enospc(/hidden: 128 MiB left, needs 384 MiB/));
    const f = setup({ trace: false });
    const small = { aperture: 4 * MiB, hidden: 4 * MiB, fences: 10 };
    f.driver.allocResources(small);
    f.driver.allocResources(small);
    assert.throws(() => f.driver.allocResources(small), enospc(/fences: 8 left, needs 10/));
    const g = setup({ trace: false });
    const parts = [0, 1, 2, 3, 4, 5].map(() => g.driver.allocResources(TYPES.GVTg_V5_8!));
    g.driver.freeResources(parts[1]!);
    g.driver.freeResources(parts[3]!);
    assert.throws(
      () => g.driver.allocResources(TYPES.GVTg_V5_4!),
      enospc(/aperture: 128 MiB left but the largest contiguous range is 64 MiB, needs 128 MiB/),
    );
    assert.throws(() => g.driver.allocResources({ aperture: 100, hidden: PAGE, fences: 0 }), KernelError);
  });

  it("partitions are contiguous, disjoint and inside the vGPU regions; fences are the host's 4 excluded", () => {
    const { driver, gpu } = setup();
    const a = driver.allocResources(TYPES.GVTg_V5_4!);
    const b = driver.allocResources(TYPES.GVTg_V5_8!);
    assert.equal(a.aperture.base, HOST_APERTURE_RESERVED);
    assert.equal(b.aperture.base, HOST_APERTURE_RESERVED + 128 * MiB);
    assert.equal(a.hidden.base, gpu.apertureSize + HOST_HIDDEN_RESERVED);
    assert.deepEqual(a.fences, [4, 5, 6, 7]);
    assert.deepEqual(b.fences, [8, 9, 10, 11]);
    const c = driver.capacity();
    assert.equal(c.apertureFree, 512 * MiB - 128 * MiB - 192 * MiB);
    assert.equal(c.fencesFree, 28 - 8);
    driver.checkInvariants();
  });

  it("freeing points the partition's GGTT entries back at scratch and zeroes its fences", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    s.mapPage(r.aperture.base / PAGE);
    s.mapPage(r.hidden.base / PAGE + 7);
    s.driver.writeFence(r.fences[0]!, 0x1234_5000);
    assert.equal(s.gpu.fence(r.fences[0]!), 0x1234_5000);
    s.driver.freeResources(r);
    const scratch = gen8PteEncode(s.driver.scratch.dmaAddr);
    assert.equal(s.driver.readGgtt(r.aperture.base / PAGE), scratch);
    assert.equal(s.driver.readGgtt(r.hidden.base / PAGE + 7), scratch);
    assert.equal(s.gpu.fence(r.fences[0]!), 0);
    assert.equal(s.driver.capacity().apertureFree, 384 * MiB);
    assert.throws(() => s.driver.freeResources(r), /no vGPU partition/);
    const forged: GpuResources = { ...s.driver.allocResources(TYPES.GVTg_V5_8!), fences: [20, 21, 22, 23] };
    assert.throws(() => s.driver.freeResources(forged), /no vGPU partition/);
    s.driver.checkInvariants();
  });

  it("writeGgtt and writeFence accept only what belongs to a live partition", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    assert.throws(() => s.driver.writeGgtt(0, gen8PteEncode(0x1000)), /not inside a vGPU partition/);
    assert.throws(() => s.driver.writeGgtt(s.gpu.apertureSize / PAGE, 1), /not inside a vGPU partition/);
    assert.throws(() => s.driver.writeGgtt((r.aperture.base + r.aperture.size) / PAGE, 1), /not inside/);
    s.driver.writeGgtt(r.hidden.base / PAGE, gen8PteEncode(0x5000));
    assert.equal(s.driver.readGgtt(r.hidden.base / PAGE), 0x5001);
    assert.throws(() => s.driver.writeFence(0, 1), /fence 0 is not assigned/);
    assert.throws(() => s.driver.writeFence(31, 1), /fence 31/);
    s.driver.writeFence(r.fences[3]!, 2 ** 40 + 1);
    assert.equal(s.gpu.fence(r.fences[3]!), 2 ** 40 + 1);
    s.driver.writeFenceHalves(r.fences[2]!, 0x0010_0001, 0xfff0_0000);
    assert.deepEqual([...s.gpu.fences.subarray(2 * r.fences[2]!, 2 * r.fences[2]! + 2)], [0x0010_0001, 0xfff0_0000]);
    assert.throws(() => s.driver.writeFenceHalves(1, 0, 0), /fence 1 is not assigned/);
    assert.throws(() => s.driver.writeFenceHalves(r.fences[2]!, 0, 2 ** 32), /32-bit/);
  });

  it("fillGgtt writes a run of entries in one piece of a live partition, in one call and one trace event", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const other = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const buf = s.driver.dma.allocCoherent(PAGE);
    const pte = gen8PteEncode(buf.dmaAddr);
    const ap = r.aperture.base / PAGE;
    const hi = r.hidden.base / PAGE;
    const n = r.aperture.size / PAGE;
    const writes0 = s.rec!.named("gpu.gtt.write").length;
    s.driver.fillGgtt(ap, n, pte);
    s.driver.fillGgtt(hi + 10, 5, pte);
    assert.equal(s.rec!.named("gpu.gtt.write").length, writes0, "no per-entry events");
    assert.deepEqual(
      s
        .rec!.named("gpu.gtt.fill")
        .slice(-2)
        .map((e) => [e.fields.index, e.fields.count, e.fields.pte]),
      [
        [ap, n, pte],
        [hi + 10, 5, pte],
      ],
    );
    assert.ok(s.gpu.ggtt.entries.subarray(ap, ap + n).every((e) => e === pte));
    assert.deepEqual(
      [s.driver.readGgtt(hi + 9), s.driver.readGgtt(hi + 10), s.driver.readGgtt(hi + 15)],
      [gen8PteEncode(s.driver.scratch.dmaAddr), pte, gen8PteEncode(s.driver.scratch.dmaAddr)],
    );
    const bad = /not inside one piece of a live vGPU partition/;
    assert.throws(() => s.driver.fillGgtt(0, 1, pte), bad, "the host's entries");
    assert.throws(() => s.driver.fillGgtt(ap - 1, 2, pte), bad, "starts below the partition");
    assert.throws(() => s.driver.fillGgtt(ap, n + 1, pte), bad, "runs into the next partition");
    assert.throws(() => s.driver.fillGgtt(ap + n - 1, (r.hidden.base - r.aperture.base) / PAGE + 1, pte), bad);
    assert.throws(() => s.driver.fillGgtt(ap, 0, pte), bad);
    assert.throws(() => s.driver.fillGgtt(-1, 1, pte), bad);
    assert.throws(() => s.driver.fillGgtt(ap, 1, -1), /not an integer/);
    s.driver.freeResources(r);
    assert.throws(() => s.driver.fillGgtt(ap, 1, pte), bad, "freed: back to nobody");
    assert.ok(s.gpu.ggtt.entries.subarray(ap, ap + n).every((e) => e === gen8PteEncode(s.driver.scratch.dmaAddr)));
    s.driver.fillGgtt(other.aperture.base / PAGE, 1, pte);
    s.driver.checkInvariants();
    s.driver.freeResources(other);
    s.driver.dma.dmaFreeCoherent(buf);
  });

  it("checkInvariants catches a vGPU entry pointing at a host shadow buffer or ring", () => {
    const s = setup({ trace: false });
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const sh = s.driver.allocShadow(PAGE) as ShadowBuffer & { dmaAddr: number };
    s.driver.writeGgtt(r.hidden.base / PAGE, gen8PteEncode(sh.dmaAddr));
    assert.throws(() => s.driver.checkInvariants(), /vGPU GGTT entry \d+ points at the host's shadow/);
    s.driver.writeGgtt(r.hidden.base / PAGE, gen8PteEncode(s.driver.scratch.dmaAddr));
    s.driver.checkInvariants(); // the host's scratch page is allowed
    const ring = s.driver.readGgtt(s.driver.ringGma("bcs") / PAGE);
    s.driver.fillGgtt(r.aperture.base / PAGE, 3, ring);
    assert.throws(() => s.driver.checkInvariants(), /points at the host's ring/);
    s.driver.freeResources(r);
    sh.free();
    s.driver.checkInvariants();
  });

  it("random allocate/free sequences keep partitions disjoint, inside the vGPU regions and accounted (property)", () => {
    const s = setup({ trace: false });
    const names = Object.keys(TYPES);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 3 }), fc.nat()), { minLength: 1, maxLength: 24 }),
        (ops) => {
          const live: GpuResources[] = [];
          for (const [alloc, t, pick] of ops) {
            if (alloc || live.length === 0) {
              try {
                live.push(s.driver.allocResources(TYPES[names[t]!]!));
              } catch (e) {
                assert.ok(e instanceof KernelError && e.errno === Errno.ENOSPC);
              }
            } else {
              s.driver.freeResources(live.splice(pick % live.length, 1)[0]!);
            }
            s.driver.checkInvariants({ scanGgtt: false });
            const c = s.driver.capacity();
            const sum = (f: (r: GpuResources) => number) => live.reduce((n, r) => n + f(r), 0);
            assert.equal(c.apertureFree + sum((r) => r.aperture.size), c.apertureTotal);
            assert.equal(c.hiddenFree + sum((r) => r.hidden.size), c.hiddenTotal);
            assert.equal(c.fencesFree + sum((r) => r.fences.length), c.fencesTotal);
          }
          for (const r of live) s.driver.freeResources(r);
        },
      ),
      { numRuns: 40 },
    );
    s.driver.checkInvariants();
  });
});

describe("shadow buffers", () => {
  it("are host GM backed by coherent frames: a batch written there runs, and freeing unmaps it", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const target = s.mapPage(r.hidden.base / PAGE);
    const sh = s.driver.allocShadow(10_000);
    assert.equal(sh.size, 10_000);
    assert.ok(sh.gma >= s.gpu.apertureSize && sh.gma < s.gpu.apertureSize + HOST_HIDDEN_RESERVED);
    const batch = new Uint32Array([...store(r.hidden.base + 8, 0xb00c), MI_BATCH_BUFFER_END]);
    sh.write(PAGE + 4, new Uint8Array(batch.buffer));
    const back = new Uint8Array(batch.byteLength);
    sh.read(PAGE + 4, back);
    assert.deepEqual(back, new Uint8Array(batch.buffer));
    const done = s.submit("rcs", [MI_BATCH_BUFFER_START_GEN8, sh.gma + PAGE + 4, 0, MI_NOOP]);
    s.clock.advance(1_000_000);
    assert.equal(done.result?.error, undefined);
    assert.equal(s.u32(target, 8), 0xb00c);
    s.driver.checkInvariants();
    sh.free();
    assert.equal(s.driver.readGgtt(sh.gma / PAGE), gen8PteEncode(s.driver.scratch.dmaAddr));
    assert.throws(() => sh.free(), /already freed/);
    assert.throws(() => sh.write(0, new Uint8Array(4)), /was freed/);
    assert.throws(() => s.driver.allocShadow(0), KernelError);
    s.driver.checkInvariants();
  });

  it("the shadow observer hears every allocation and every free (before the pages go), until it is removed", () => {
    const s = setup({ trace: false });
    const heard: [number, number, boolean][] = [];
    s.driver.setShadowObserver((b, alive) => heard.push([b.gma, b.size, alive]));
    const a = s.driver.allocShadow(10_000);
    const b = s.driver.allocShadow(PAGE);
    a.free();
    assert.throws(() => a.free(), /already freed/);
    assert.deepEqual(heard, [
      [a.gma, 10_000, true],
      [b.gma, PAGE, true],
      [a.gma, 10_000, false],
    ]);
    s.driver.setShadowObserver(undefined);
    b.free();
    s.driver.allocShadow(PAGE).free();
    assert.equal(heard.length, 3);
  });

  it("run out with ENOSPC naming the host's reservation", () => {
    const s = setup({ trace: false });
    const a = s.driver.allocShadow(200 * MiB);
    assert.throws(() => s.driver.allocShadow(200 * MiB), enospc(/host hidden reservation .* 184 MiB free/));
    a.free();
    s.driver.allocShadow(200 * MiB).free();
  });
});

describe("submission", () => {
  it("runs on the engine, completes on the clock after its busy time, and queues behind earlier work", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const pages = [0, 1, 2, 3].map((i) => s.mapPage(r.aperture.base / PAGE + i));
    const a = s.submit("bcs", colorBlt(r.aperture.base, PAGE, 1024, 3, 0x11111111), 1);
    const b = s.submit("bcs", [...store(r.aperture.base + 3 * PAGE + 16, 7), MI_USER_INTERRUPT], 2);
    const c = DEFAULT_COST;
    const busyA = Math.ceil(c.commandNs + c.blitSetupNs + (3 * PAGE) / c.fillBytesPerNs + c.commandNs); // + pad NOOP
    const busyB = 3 * c.commandNs + c.storeNs + c.interruptNs; // store, user interrupt, pad NOOP
    assert.equal(a.result, undefined, "nothing completes before the clock moves");
    assert.equal(s.u32(pages[2]!), 0x11111111, "but the work itself ran (memory effects are immediate)");
    assert.equal(s.driver.engineStats("bcs").queued, 1);
    s.clock.advance(busyA - 1);
    assert.equal(a.result, undefined);
    assert.equal(s.u32(pages[3]!, 16), 0, "b waits for a to complete");
    s.clock.advance(1);
    assert.deepEqual(a.result, { busyNs: busyA, commands: 2, faults: 0, userInterrupts: 0 });
    assert.equal(a.at, busyA);
    assert.equal(b.result, undefined);
    assert.equal(s.u32(pages[3]!, 16), 7, "b started when a completed");
    s.clock.advance(busyB);
    assert.deepEqual(b.result, { busyNs: busyB, commands: 3, faults: 0, userInterrupts: 1 });
    assert.equal(b.at, busyA + busyB);
    assert.equal(s.u32(pages[3]!, 16), 7);
    // The user interrupt reached the driver by MSI and was acknowledged.
    assert.equal(s.driver.irqStats().msi, 1);
    assert.equal(s.driver.engineStats("bcs").userInterrupts, 1);
    assert.equal(s.gpu.barRead(0, GEN8_GT_IIR0, 4), 0);
    const st = s.driver.engineStats("bcs");
    assert.equal(st.submissions, 2);
    assert.equal(st.busyNs, busyA + busyB);
    assert.equal(s.rec?.count("i915.complete"), 2);
    assert.deepEqual([s.driver.ownerBusyNs(1), s.driver.ownerBusyNs(2), s.driver.ownerBusyNs(3)], [busyA, busyB, 0]);
  });

  it("splits work that does not fit the ring, even inside a command", () => {
    const s = setup({ ringBytes: PAGE });
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const pfn = s.mapPage(r.aperture.base / PAGE);
    const words: number[] = [];
    for (let i = 0; i < 1000; i++) words.push(...store(r.aperture.base + (i % 1024) * 4, i + 1));
    const done = s.submit("rcs", words);
    s.clock.advance(10_000_000);
    assert.equal(done.result?.error, undefined);
    assert.equal(done.result?.commands, 1000);
    for (let i = 0; i < 1000; i += 97) assert.equal(s.u32(pfn, i * 4), i + 1);
    assert.equal(s.u32(pfn, 999 * 4), 1000);
  });

  it("reports a malformed command and recovers the engine for the next submission", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const pfn = s.mapPage(r.aperture.base / PAGE);
    const bad = s.submit("rcs", [...store(r.aperture.base, 1), 0x1f80_0000, ...store(r.aperture.base + 4, 2)]);
    const truncated = s.submit("rcs", store(r.aperture.base + 8, 3).slice(0, 2));
    const good = s.submit("rcs", store(r.aperture.base + 12, 4));
    s.clock.advance(1_000_000);
    assert.match(bad.result?.error ?? "", /unknown command/);
    assert.equal(bad.result?.commands, 1);
    assert.match(truncated.result?.error ?? "", /ends inside a command/);
    assert.equal(good.result?.error, undefined);
    assert.deepEqual([s.u32(pfn), s.u32(pfn, 4), s.u32(pfn, 8), s.u32(pfn, 12)], [1, 0, 0, 4]);
    const st = s.driver.engineStats("rcs");
    assert.equal(st.errors, 2);
    assert.equal(st.csErrors, 1, "the CS error interrupt reached the driver");
    assert.equal(s.rec?.count("i915.recover"), 2);
  });

  it("counts GTT faults (work goes on) and IOMMU faults (work stops) in the result", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const ok = s.mapPage(r.aperture.base / PAGE);
    s.driver.writeGgtt(r.aperture.base / PAGE + 1, 0); // not present
    s.driver.writeGgtt(r.aperture.base / PAGE + 2, gen8PteEncode(0x7654_3000)); // present, IOVA not mapped
    const gtt = s.submit("bcs", [...store(r.aperture.base + PAGE, 1), ...store(r.aperture.base, 2)]);
    const iommu = s.submit("bcs", [...store(r.aperture.base + 2 * PAGE, 1), ...store(r.aperture.base + 4, 3)]);
    const after = s.submit("bcs", store(r.aperture.base + 8, 4));
    s.clock.advance(1_000_000);
    assert.deepEqual(
      { faults: gtt.result?.faults, error: gtt.result?.error },
      { faults: 1, error: undefined },
      "GTT fault: counted, no error",
    );
    assert.equal(iommu.result?.faults, 1);
    assert.match(iommu.result?.error ?? "", /IOMMU fault at GMA 0x[0-9a-f]+ \(DMA address 0x76543000\)/);
    assert.equal(after.result?.error, undefined);
    assert.deepEqual([s.u32(ok), s.u32(ok, 4), s.u32(ok, 8)], [2, 0, 4]);
  });

  it("ATS on and off give the same results", () => {
    const run = (ats: boolean) => {
      const s = setup({ ats, trace: false });
      const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
      const src = Array.from({ length: 8 }, (_, i) => s.mapPage(r.hidden.base / PAGE + i));
      const dst = Array.from({ length: 8 }, (_, i) => s.mapPage(r.hidden.base / PAGE + 8 + i));
      for (const [i, p] of src.entries()) s.host.physmem.write((p * PAGE) as Hpa, new Uint8Array(PAGE).fill(i + 1));
      const done = s.submit("bcs", [
        ...copyBlt(r.hidden.base + 8 * PAGE, r.hidden.base, PAGE, 1024, 8),
        ...colorBlt(r.hidden.base + 12 * PAGE + 64, 256, 16, 4, 0xfeedface),
      ]);
      s.clock.advance(10_000_000);
      const mem = new Uint8Array(8 * PAGE);
      for (const [i, p] of dst.entries()) s.host.physmem.read((p * PAGE) as Hpa, mem, i * PAGE, PAGE);
      return { result: done.result, mem, atsHits: s.host.iommu.stats().atsHits };
    };
    const on = run(true);
    const off = run(false);
    assert.deepEqual(on.result, off.result);
    assert.deepEqual(on.mem, off.mem);
    assert.equal(on.mem[3 * PAGE], 4);
    assert.ok(on.atsHits > 0);
    assert.equal(off.atsHits, 0);
  });
});

describe("invariants and unbinding", () => {
  it("checkInvariants catches a clobbered host mapping and a vGPU entry pointing at a host ring", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    const ringIdx = s.driver.ringGma("rcs") / PAGE;
    const ringPte = s.driver.readGgtt(ringIdx);
    s.driver.writeGgtt(r.aperture.base / PAGE, ringPte);
    assert.throws(() => s.driver.checkInvariants(), /points at the host's ring/);
    s.driver.writeGgtt(r.aperture.base / PAGE, 0);
    s.driver.checkInvariants();
    s.gpu.barWrite(0, GTT_OFFSET + ringIdx * 8, 8, gen8PteEncode(s.driver.scratch.dmaAddr));
    assert.throws(() => s.driver.checkInvariants(), /GGTT entry of ring/);
  });

  it("unbinds only when idle, and refuses service afterwards", () => {
    const s = setup();
    const r = s.driver.allocResources(TYPES.GVTg_V5_8!);
    assert.throws(
      () => s.driver.remove(),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.EBUSY,
    );
    s.driver.freeResources(r);
    const mapped = s.driver.dma.mappedBytes();
    assert.ok(mapped > 0);
    s.driver.remove();
    assert.equal(s.host.pci.driverOf(s.driver.bdf), undefined);
    assert.equal(s.driver.dma.mappedBytes(), 0, "every coherent buffer was freed");
    assert.equal(s.gpu.ggtt.pageDma(0), -1);
    assert.throws(
      () => s.driver.allocResources(TYPES.GVTg_V5_8!),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.ENODEV,
    );
    assert.equal(s.gpu.config.read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER, 0, "bus mastering disabled");
    assert.equal(s.gpu.config.msi().enabled, false);
  });
});
