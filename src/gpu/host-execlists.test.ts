import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, type Hpa, type Iova, KernelError, type Pfn, TraceRecorder, VirtualClock } from "../core/index.ts";
import { DmaDirection, Host, pfnToHpa } from "../host/index.ts";
import { GVT_TYPES } from "../vgpu/index.ts";
import { colorBlt, semaphoreWait, storeDataImm } from "./commands.ts";
import type { ContextSubmissionResult, GpuResourceRequest, ShadowBuffer, SubmissionResult } from "./contract.ts";
import { DEFAULT_COST } from "./cost.ts";
import { MiB } from "./gpu.ts";
import { type CreateGpuOptions, createGpu } from "./host-driver.ts";
import { CTX_RING_HEAD, LRC_STATE_OFFSET, lrcRegisterState } from "./lrc.ts";
import {
  GEN8_CTX_STATUS_ACTIVE_IDLE,
  GEN8_CTX_STATUS_COMPLETE,
  GEN8_CTX_STATUS_IDLE_ACTIVE,
  GEN8_PAGE_PRESENT,
  GEN8_PAGE_RW,
  GFX_RUN_LIST_ENABLE,
  GT_ENGINE_BASE,
  GT_ENGINES,
  type GtEngineId,
  gen8GtIer,
  gen8PteEncode,
  MI_NOOP,
  MI_SEMAPHORE_SAD_EQ_SDD,
  MI_USER_INTERRUPT,
  RING_HWS_PGA,
  RING_MODE_GEN7,
} from "./regs.ts";

const PAGE = 4096;
const TWO32 = 4294967296;
const V5_8: GpuResourceRequest = (() => {
  const t = GVT_TYPES.find((x) => x.id === "GVTg_V5_8")!;
  return { aperture: t.aperture, hidden: t.hidden, fences: t.fences };
})();

function setup(opts: CreateGpuOptions = {}) {
  const clock = new VirtualClock();
  const host = new Host({ memoryBytes: 2048 * MiB, clock, iommu: { enabled: true } });
  const rec = new TraceRecorder(host.tracer);
  const { gpu, driver } = createGpu(host, { submission: "execlists", ...opts });
  const mapPage = (index: number): Pfn => {
    const pfn = host.physmem.allocFrame();
    const iova = driver.dma.mapPage(pfn, 0, PAGE, DmaDirection.BIDIRECTIONAL);
    driver.writeGgtt(index, gen8PteEncode(iova));
    return pfn;
  };
  const u32 = (pfn: Pfn, off = 0) => host.physmem.readU32(pfnToHpa(pfn, off));
  const submit = (engine: "rcs" | "bcs", words: readonly number[], owner = 1) => {
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
  return { host, clock, gpu, driver, rec, mapPage, u32, submit };
}

/**
 * What a vendor driver does for a GVT-g workload, minimally: a shadow PPGTT in coherent DMA pages mapping `pages`
 * fresh frames at PPGTT address `va`, a shadow ring and a shadow context image in shadow buffers.
 */
function shadowWorkload(
  s: ReturnType<typeof setup>,
  engine: GtEngineId,
  dwords: readonly number[],
  va = 0x4_0000_0000,
) {
  const { host, driver } = s;
  const table = () => {
    const b = driver.dma.allocCoherent(PAGE);
    host.physmem.fill(pfnToHpa(b.pfn), 0, PAGE);
    return b;
  };
  const entry = (pfn: Pfn, i: number, v: number) => {
    host.physmem.writeU32(pfnToHpa(pfn, 8 * i), v % TWO32);
    host.physmem.writeU32(pfnToHpa(pfn, 8 * i + 4), Math.floor(v / TWO32));
  };
  const [pml4, pdp, pd, pt] = [table(), table(), table(), table()];
  const page = va / PAGE;
  const rw = GEN8_PAGE_PRESENT + GEN8_PAGE_RW;
  entry(pml4.pfn, Math.floor(page / 2 ** 27) % 512, pdp.dmaAddr + rw);
  entry(pdp.pfn, Math.floor(page / 2 ** 18) % 512, pd.dmaAddr + rw);
  entry(pd.pfn, Math.floor(page / 512) % 512, pt.dmaAddr + rw);
  const data = host.physmem.allocFrame();
  entry(pt.pfn, page % 512, driver.dma.mapPage(data, 0, PAGE, DmaDirection.BIDIRECTIONAL) + rw);
  const ring = driver.allocShadow(PAGE);
  const words = dwords.length % 2 === 1 ? [...dwords, MI_NOOP] : [...dwords];
  ring.write(0, new Uint8Array(new Uint32Array(words).buffer));
  const image = driver.allocShadow(2 * PAGE);
  const state = lrcRegisterState(engine, { ringStart: ring.gma, ringBytes: PAGE, tail: words.length * 4 });
  image.write(LRC_STATE_OFFSET, new Uint8Array(state.buffer));
  return { image, ring, pml4: pml4.dmaAddr as Iova, data, va, tail: words.length * 4 };
}

function runContext(s: ReturnType<typeof setup>, engine: GtEngineId, image: ShadowBuffer, pml4: Iova, owner = 3) {
  const out: { result?: ContextSubmissionResult } = {};
  s.driver.submitContext({ engine, image, pml4, owner, onComplete: (r) => (out.result = r) });
  return out;
}

describe("host driver with execlists: probe", () => {
  it("switches all four engines to execlists with a kernel context each, and enables their interrupts", () => {
    const s = setup();
    assert.equal(s.driver.submissionMode, "execlists");
    assert.deepEqual(s.driver.contextEngines, GT_ENGINES);
    for (const e of GT_ENGINES) {
      const base = GT_ENGINE_BASE[e];
      assert.equal(s.gpu.barRead(0, base + RING_MODE_GEN7, 4) & GFX_RUN_LIST_ENABLE, GFX_RUN_LIST_ENABLE, e);
      assert.notEqual(s.gpu.barRead(0, base + RING_HWS_PGA, 4), 0);
    }
    for (const bank of [0, 1, 3]) assert.notEqual(s.gpu.barRead(0, gen8GtIer(bank), 4), 0, `bank ${bank}`);
    assert.equal(s.rec.count("i915.execlists"), 1);
    const frames = s.driver.hostGpuFrames();
    for (const what of ["ring", "status page", "context", "page table"] as const) {
      assert.ok(
        frames.some((f) => f.what === what),
        what,
      );
    }
    assert.ok(frames.filter((f) => f.what === "context").every((f) => f.write));
    s.driver.checkInvariants({ scanGgtt: true });
  });

  it("ring submission refuses contexts with EOPNOTSUPP", () => {
    const s = setup({ submission: "ring" });
    assert.deepEqual(s.driver.contextEngines, []);
    const image = s.driver.allocShadow(2 * PAGE);
    assert.throws(
      () => s.driver.submitContext({ engine: "rcs", image, pml4: 0x1000 as Iova, owner: 1, onComplete: () => {} }),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.EOPNOTSUPP,
    );
  });
});

describe("host driver with execlists: the legacy submission contract", () => {
  it("runs a submission in the kernel context, completes after its busy time, and queues behind earlier work", () => {
    const s = setup();
    const r = s.driver.allocResources(V5_8);
    const pages = [0, 1, 2, 3].map((i) => s.mapPage(r.aperture.base / PAGE + i));
    const owners: number[] = [];
    s.host.deviceDma(s.driver.bdf).setObserver(() => owners.push(s.driver.executingOwner));
    const a = s.submit("bcs", colorBlt(r.aperture.base, PAGE, 0, 0, 1024, 3, 0x11111111), 1);
    const b = s.submit("bcs", [...storeDataImm(r.aperture.base + 3 * PAGE + 16, 7), MI_USER_INTERRUPT], 2);
    const c = DEFAULT_COST;
    // Restore and save, the blit (3 pages: 3 walks of the aliasing PPGTT), the pad MI_NOOP.
    const busyA = Math.ceil(
      c.contextSwitchNs + 2 * c.commandNs + c.blitSetupNs + (3 * PAGE) / c.fillBytesPerNs + 3 * c.ppgttWalkNs,
    );
    assert.equal(s.u32(pages[2]!), 0x11111111, "through the aliasing PPGTT to the partition's pages");
    assert.equal(a.result, undefined);
    s.clock.advance(busyA - 1);
    assert.equal(a.result, undefined);
    s.clock.advance(1);
    assert.deepEqual(a.result, { busyNs: busyA, commands: 2, faults: 0, userInterrupts: 0 });
    s.clock.advance(10_000);
    assert.equal(b.result?.userInterrupts, 1);
    assert.equal(s.u32(pages[3]!, 16), 7);
    const st = s.driver.engineStats("bcs");
    assert.equal(st.submissions, 2);
    assert.equal(st.userInterrupts, 1);
    assert.equal(st.contextSwitches >= 2, true, "context-switch interrupts reached the handler");
    assert.deepEqual(new Set(owners), new Set([1, 2]), "every DMA of a run (restore, commands, save) is its owner's");
    assert.equal(s.driver.ownerBusyNs(1), busyA);
    assert.equal(s.rec.count("gpu.execlist.csb"), 4);
    s.driver.checkInvariants();
  });

  it("splits work that does not fit the ring, even inside a command (lite restore of the kernel context)", () => {
    const s = setup({ ringBytes: PAGE });
    const r = s.driver.allocResources(V5_8);
    const pfn = s.mapPage(r.aperture.base / PAGE);
    const words: number[] = [];
    for (let i = 0; i < 1000; i++) words.push(...storeDataImm(r.aperture.base + (i % 1024) * 4, i + 1));
    const done = s.submit("rcs", words);
    s.clock.advance(10_000_000);
    assert.equal(done.result?.error, undefined);
    assert.equal(done.result?.commands, 1000);
    assert.equal(s.u32(pfn, 999 * 4), 1000);
    assert.ok(s.rec.named("gpu.execlist.in").some((e) => e.fields.restore === "lite"));
  });

  it("reports a malformed command and a truncated submission, and recovers the engine each time", () => {
    const s = setup();
    const r = s.driver.allocResources(V5_8);
    const pfn = s.mapPage(r.aperture.base / PAGE);
    const store = storeDataImm;
    const bad = s.submit("rcs", [...store(r.aperture.base, 1), 0x1f80_0000, ...store(r.aperture.base + 4, 2)]);
    const truncated = s.submit("rcs", store(r.aperture.base + 8, 3).slice(0, 2));
    const good = s.submit("rcs", store(r.aperture.base + 12, 4));
    s.clock.advance(1_000_000);
    assert.match(bad.result?.error ?? "", /unknown command/);
    assert.equal(bad.result?.commands, 1);
    assert.match(truncated.result?.error ?? "", /ends inside a command/);
    assert.equal(good.result?.error, undefined);
    assert.deepEqual([s.u32(pfn), s.u32(pfn, 4), s.u32(pfn, 8), s.u32(pfn, 12)], [1, 0, 0, 4]);
    assert.equal(s.driver.engineStats("rcs").errors, 2);
    assert.equal(s.rec.count("i915.recover"), 1);
    assert.equal(s.rec.count("i915.engine.reset"), 1);
  });

  it("the aliasing PPGTT follows GGTT writes and shares uniform tables; a not-present entry stops a blit", () => {
    const s = setup();
    const parts = [s.driver.allocResources(V5_8), s.driver.allocResources(V5_8)];
    const pfn = s.mapPage(parts[1]!.hidden.base / PAGE + 5);
    const gma = parts[1]!.hidden.base + 5 * PAGE;
    const done = s.submit("bcs", colorBlt(gma, PAGE, 0, 0, 16, 1, 0xabcdef01));
    s.clock.advance(100_000);
    assert.equal(done.result?.error, undefined);
    assert.equal(s.u32(pfn, 60), 0xabcdef01);
    s.driver.writeGgtt(parts[1]!.hidden.base / PAGE + 6, 0);
    const stopped = s.submit("bcs", colorBlt(gma + PAGE, PAGE, 0, 0, 16, 1, 1));
    s.clock.advance(100_000);
    assert.match(stopped.result?.error ?? "", /PPGTT fault .* not present/);
    for (const p of parts) s.driver.freeResources(p);
    const after = s.submit("bcs", storeDataImm(0x1000_0000, 5));
    s.clock.advance(100_000);
    assert.equal(after.result?.error, undefined, "the engine took work again after the error");
  });
});

describe("host driver with execlists: shadow contexts (submitContext)", () => {
  it("runs a shadow context on each engine: PPGTT writes land, HEAD written back, CSB events, accounting", () => {
    const s = setup();
    for (const [i, engine] of GT_ENGINES.entries()) {
      const w = shadowWorkload(s, engine, [...storeDataImm(0x4_0000_0010, 0x100 + i, "ppgtt"), MI_USER_INTERRUPT]);
      const done = runContext(s, engine, w.image, w.pml4, 7);
      assert.equal(s.host.physmem.readU32((w.data * PAGE + 0x10) as Hpa), 0x100 + i, `${engine}: ran at once`);
      s.clock.advance(100_000);
      const r = done.result!;
      assert.equal(r.error, undefined, engine);
      assert.equal(r.head, w.tail, `${engine}: head written back`);
      assert.equal(r.tail, w.tail);
      assert.deepEqual(
        r.events.map((e) => e.status),
        [GEN8_CTX_STATUS_IDLE_ACTIVE, GEN8_CTX_STATUS_ACTIVE_IDLE | GEN8_CTX_STATUS_COMPLETE],
      );
      assert.ok(r.events.every((e) => e.ctxId === r.ctxId));
      assert.equal(r.userInterrupts, 1);
      assert.equal(r.commands, 2 + (w.tail / 4 - 5), `${engine}: store, user interrupt (and the pad)`);
      assert.ok(r.timestamp > 0);
      const img = new Uint8Array(4);
      w.image.read(LRC_STATE_OFFSET + 4 * CTX_RING_HEAD, img);
      assert.equal(new DataView(img.buffer).getUint32(0, true), w.tail);
    }
    assert.ok(s.driver.ownerBusyNs(7) > 4 * DEFAULT_COST.contextSwitchNs);
    assert.equal(s.rec.count("i915.context.complete"), 4);
  });

  it("refuses an image that is not a live shadow buffer of at least 2 pages, and a bad PML4 address", () => {
    const s = setup();
    const einval = (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL;
    const small = s.driver.allocShadow(PAGE);
    const good = s.driver.allocShadow(2 * PAGE);
    const freed = s.driver.allocShadow(2 * PAGE);
    freed.free();
    const fake: ShadowBuffer = { gma: good.gma, size: 2 * PAGE, write() {}, read() {}, free() {} };
    const sub =
      (image: ShadowBuffer, pml4 = 0x1000) =>
      () =>
        s.driver.submitContext({ engine: "vcs", image, pml4: pml4 as Iova, owner: 1, onComplete: () => {} });
    assert.throws(sub(small), einval);
    assert.throws(sub(freed), einval);
    assert.throws(sub(fake), einval);
    assert.throws(sub(good, 0), einval);
    assert.throws(sub(good, 0x1234), einval);
  });

  it("a context waiting on a semaphore holds its engine until another engine's work releases it", () => {
    const s = setup();
    const r = s.driver.allocResources(V5_8);
    const pfn = s.mapPage(r.aperture.base / PAGE);
    const flag = r.aperture.base;
    const w = shadowWorkload(s, "vcs", [
      ...semaphoreWait(MI_SEMAPHORE_SAD_EQ_SDD, 1, flag),
      ...storeDataImm(0x4_0000_0000, 0x5a, "ppgtt"),
    ]);
    const waiting = runContext(s, "vcs", w.image, w.pml4);
    const behind = runContext(s, "vcs", shadowWorkload(s, "vcs", [MI_NOOP, MI_NOOP]).image, w.pml4);
    s.clock.advance(1_000_000);
    assert.equal(waiting.result === undefined, true);
    assert.equal(behind.result === undefined, true, "queued behind the waiting context");
    assert.equal(s.driver.engineStats("vcs").inFlight, true);
    const release = s.submit("bcs", storeDataImm(flag, 1));
    s.clock.advance(1_000_000);
    assert.equal(release.result?.error, undefined);
    assert.equal(s.u32(pfn), 1);
    assert.equal(waiting.result?.error, undefined);
    assert.equal(s.host.physmem.readU32((w.data * PAGE) as Hpa), 0x5a);
    assert.equal(behind.result?.error, undefined);
  });

  it("a PPGTT fault in a context is reported, and the engine runs the next context", () => {
    const s = setup();
    const w = shadowWorkload(s, "bcs", storeDataImm(0x5_0000_0000, 1, "ppgtt"));
    const bad = runContext(s, "bcs", w.image, w.pml4);
    const w2 = shadowWorkload(s, "bcs", storeDataImm(0x4_0000_0004, 2, "ppgtt"));
    const good = runContext(s, "bcs", w2.image, w2.pml4);
    s.clock.advance(1_000_000);
    assert.match(bad.result?.error ?? "", /PPGTT fault at address 0x500000000: PDPE\[20\] not present/);
    assert.equal(bad.result?.events.at(-1)?.status, GEN8_CTX_STATUS_ACTIVE_IDLE | GEN8_CTX_STATUS_COMPLETE);
    assert.equal(good.result?.error, undefined);
    assert.equal(s.host.physmem.readU32((w2.data * PAGE + 4) as Hpa), 2);
    assert.equal(s.driver.engineStats("bcs").csErrors, 1);
  });

  it("unbinds when idle and frees every buffer, the aliasing PPGTT included", () => {
    const s = setup();
    s.driver.remove();
    assert.equal(s.driver.dma.mappedBytes(), 0);
  });
});
