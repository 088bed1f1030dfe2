import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  Errno,
  hpa,
  type Iova,
  iova,
  KernelError,
  type Pfn,
  Rng,
  SZ_1G,
  SZ_2M,
  Tracer,
  VirtualClock,
} from "../core/index.ts";
import { parseBdf } from "./bdf.ts";
import { DeviceDma, DMA_OK, type DmaFault } from "./device-dma.ts";
import { IOMMU_READ, IOMMU_WRITE } from "./io-pgtable.ts";
import { Iommu } from "./iommu.ts";
import { PhysicalMemory, pfnToHpa } from "./physmem.ts";

const SZ_4K = 4096;
const RW = IOMMU_READ | IOMMU_WRITE;
const GPU = parseBdf("0000:00:02.0");

const mk = (opts: { enabled?: boolean; ats?: boolean } = {}) => {
  const clock = new VirtualClock();
  const tracer = new Tracer(clock);
  const physmem = new PhysicalMemory({ sizeBytes: 4 * SZ_1G, tracer });
  const iommu = new Iommu({ physmem, clock, tracer, rng: new Rng(1), enabled: opts.enabled ?? true });
  iommu.addDevice(GPU, { ats: opts.ats ?? false });
  const dma = new DeviceDma({ iommu, physmem, bdf: GPU });
  return { iommu, physmem, dma, domain: iommu.domainOf(GPU) };
};
const pattern = (n: number, seed = 1) => new Rng(seed).fill(new Uint8Array(n));
const asFault = (r: unknown): DmaFault => {
  assert.notEqual(r, DMA_OK);
  return r as DmaFault;
};

describe("DeviceDma", () => {
  it("writes and reads through the IOMMU, landing in the mapped host frames", () => {
    const { physmem, dma, domain } = mk();
    const frames = [physmem.allocFrame(), physmem.allocFrame(), physmem.allocFrame()];
    // Three scattered frames behind three consecutive IOVA pages.
    for (const [i, f] of frames.entries()) domain.map(iova(0x100000 + i * SZ_4K), pfnToHpa(f), SZ_4K, RW);
    const data = pattern(2 * SZ_4K + 100);
    assert.equal(dma.write(iova(0x100000 + 1000), data), DMA_OK);
    const back = new Uint8Array(data.length);
    assert.equal(dma.read(iova(0x100000 + 1000), back), DMA_OK);
    assert.deepEqual(back, data);
    // The bytes really are in the scattered frames.
    const direct = new Uint8Array(SZ_4K - 1000);
    physmem.read(pfnToHpa(frames[0]!, 1000), direct);
    assert.deepEqual(direct, data.subarray(0, SZ_4K - 1000));
    physmem.read(pfnToHpa(frames[2]!, 0), direct.subarray(0, 100 + 1000));
    assert.deepEqual(direct.subarray(0, 1100), data.subarray(2 * SZ_4K - 1000, 2 * SZ_4K + 100));
    assert.equal(dma.bytesWritten, data.length);
    assert.equal(dma.bytesRead, data.length);
  });

  it("stops at the first faulting page, having done the pages before it", () => {
    const { iommu, physmem, dma, domain } = mk();
    const f0 = physmem.allocFrame();
    const f1 = physmem.allocFrame();
    domain.map(iova(0x200000), pfnToHpa(f0), SZ_4K, RW);
    domain.map(iova(0x201000), pfnToHpa(f1), SZ_4K, RW);
    const data = pattern(3 * SZ_4K).fill(0xab);
    const f = asFault(dma.write(iova(0x200800), data));
    assert.equal(f.errno, Errno.EFAULT);
    assert.equal(f.iova, 0x202000);
    assert.equal(f.access, IOMMU_WRITE);
    assert.equal(f.reason, "not-present");
    assert.equal(f.completed, 2 * SZ_4K - 0x800);
    assert.equal(dma.lastFault, f);
    assert.equal(physmem.frameForRead(f1)![SZ_4K - 1], 0xab, "the page before the fault was written");
    assert.equal(iommu.stats().faults, 1);
    // Read of a read-protected region: the reason comes from the IOMMU.
    domain.map(iova(0x300000), pfnToHpa(physmem.allocFrame()), SZ_4K, IOMMU_WRITE);
    const r = asFault(dma.read(iova(0x300000), new Uint8Array(16)));
    assert.equal(r.reason, "read-denied");
    assert.equal(r.completed, 0);
    assert.equal(dma.faultCount, 2);
  });

  it("copies between mappings (across page boundaries, superpages, and within one frame)", () => {
    const { physmem, dma, domain } = mk();
    const src = physmem.allocContiguous(4);
    const dst = physmem.allocContiguous(512 + 512); // room for a 2 MiB aligned chunk
    const dstBase = Math.ceil(pfnToHpa(dst) / SZ_2M) * SZ_2M;
    domain.map(iova(0x400000), pfnToHpa(src), 4 * SZ_4K, IOMMU_READ);
    domain.map(iova(SZ_2M * 8), hpa(dstBase), SZ_2M, RW);
    const data = pattern(4 * SZ_4K, 3);
    physmem.write(pfnToHpa(src), data);
    // Unaligned on both sides, so every chunk is bounded by one of the two page edges.
    assert.equal(dma.copy(iova(SZ_2M * 8 + 100), iova(0x400000 + 7), 3 * SZ_4K), DMA_OK);
    const back = new Uint8Array(3 * SZ_4K);
    physmem.read(hpa(dstBase + 100), back);
    assert.deepEqual(back, data.subarray(7, 7 + 3 * SZ_4K));
    // Whole aligned pages.
    assert.equal(dma.copy(iova(SZ_2M * 8 + SZ_4K * 10), iova(0x400000), 4 * SZ_4K), DMA_OK);
    const whole = new Uint8Array(4 * SZ_4K);
    physmem.read(hpa(dstBase + SZ_4K * 10), whole);
    assert.deepEqual(whole, data);
    // Overlapping move inside one frame behaves as memmove.
    const one = pattern(64, 9);
    assert.equal(dma.write(iova(SZ_2M * 8 + SZ_4K * 20), one), DMA_OK);
    assert.equal(dma.copy(iova(SZ_2M * 8 + SZ_4K * 20 + 8), iova(SZ_2M * 8 + SZ_4K * 20), 40), DMA_OK);
    const moved = new Uint8Array(48);
    assert.equal(dma.read(iova(SZ_2M * 8 + SZ_4K * 20), moved), DMA_OK);
    assert.deepEqual(moved.subarray(8, 48), one.subarray(0, 40));
    // Copying into the read-only source faults on the write side.
    const f = asFault(dma.copy(iova(0x400000), iova(SZ_2M * 8), 16));
    assert.equal(f.reason, "write-denied");
    assert.equal(f.access, IOMMU_WRITE);
  });

  it("fills, and does 32/64-bit accesses, including across a page boundary", () => {
    const { physmem, dma, domain } = mk();
    const base = physmem.allocContiguous(2);
    domain.map(iova(0x10000), pfnToHpa(base), 2 * SZ_4K, RW);
    assert.equal(dma.fill(iova(0x10000 + 4090), 0x5a, 10), DMA_OK);
    assert.equal(physmem.frameForRead(base)![4095], 0x5a);
    assert.equal(physmem.frameForRead((base + 1) as Pfn)![3], 0x5a);
    assert.equal(physmem.frameForRead((base + 1) as Pfn)![4], 0);
    assert.equal(dma.writeU32(iova(0x10010), 0xdeadbeef), DMA_OK);
    assert.equal(dma.readU32(iova(0x10010)), 0xdeadbeef);
    assert.equal(physmem.readU32(pfnToHpa(base, 0x10)), 0xdeadbeef);
    assert.equal(dma.writeU32(iova(0x10ffe), 0x01020304), DMA_OK);
    assert.equal(dma.readU32(iova(0x10ffe)), 0x01020304);
    const big = 2 ** 52 + 12345;
    assert.equal(dma.writeU64(iova(0x10ffc), big), DMA_OK);
    assert.equal(dma.readU64(iova(0x10ffc)), big);
    assert.equal(dma.writeU64(iova(0x10100), 0x1_0000_0001), DMA_OK);
    assert.equal(dma.readU32(iova(0x10104)), 1);
    // Faults: -1 for reads, a DmaFault for writes; a u64 that faults on its second half reports 4 bytes done.
    assert.equal(dma.readU32(iova(0x50000)), -1);
    assert.equal(dma.lastFault?.reason, "not-present");
    assert.equal(dma.readU64(iova(0x11ffc)), -1);
    assert.equal(dma.lastFault?.completed, 4);
    assert.equal(dma.lastFault?.iova, 0x12000);
    const wf = asFault(dma.writeU64(iova(0x11ffc), 7));
    assert.equal(wf.completed, 4);
    assert.equal(physmem.frameForRead((base + 1) as Pfn)![4092], 7, "low half written before the fault");
    assert.throws(
      () => dma.writeU64(iova(0x10000), -1),
      (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL,
    );
  });

  it("rejects buffer arguments that do not fit (a caller bug, thrown)", () => {
    const { dma } = mk();
    const einval = (fn: () => unknown) =>
      assert.throws(
        fn,
        (e: unknown) => e instanceof KernelError && e.errno === Errno.EINVAL && /does not fit/.test(e.message),
      );
    einval(() => dma.read(iova(0), new Uint8Array(4), 2, 4));
    einval(() => dma.write(iova(0), new Uint8Array(4), -1, 2));
    assert.throws(() => dma.copy(iova(0), iova(0), -5), /not a non-negative integer/);
    assert.equal(dma.read(iova(0), new Uint8Array(4), 0, 0), DMA_OK, "zero length touches nothing");
  });

  it("calls the observer for every page piece touched, with host frame and direction", () => {
    const { physmem, dma, domain } = mk();
    const a = physmem.allocFrame();
    const b = physmem.allocFrame();
    domain.map(iova(0x1000), pfnToHpa(a), SZ_4K, RW);
    domain.map(iova(0x2000), pfnToHpa(b), SZ_4K, RW);
    const seen: [string, number, number, number, number, boolean][] = [];
    dma.setObserver((bdf, io, pfn, off, len, write) => seen.push([bdf, io, pfn, off, len, write]));
    dma.write(iova(0x1ff0), new Uint8Array(0x20));
    dma.copy(iova(0x2000), iova(0x1000), 8);
    dma.readU32(iova(0x2004));
    assert.deepEqual(seen, [
      [GPU, 0x1ff0, a, 0xff0, 0x10, true],
      [GPU, 0x2000, b, 0, 0x10, true],
      [GPU, 0x1000, a, 0, 8, false],
      [GPU, 0x2000, b, 0, 8, true],
      [GPU, 0x2004, b, 4, 4, false],
    ]);
    dma.setObserver(undefined);
    dma.fill(iova(0x1000), 1, 4);
    assert.equal(seen.length, 5);
  });

  it("uses the device ATC when ATS is on", () => {
    const { iommu, physmem, dma, domain } = mk({ ats: true });
    const f = physmem.allocContiguous(4);
    domain.map(iova(0x8000), pfnToHpa(f), 4 * SZ_4K, RW);
    const buf = pattern(4 * SZ_4K);
    for (let i = 0; i < 3; i++) assert.equal(dma.write(iova(0x8000), buf), DMA_OK);
    const s = iommu.stats();
    assert.equal(s.atsTranslationRequests, 4);
    assert.equal(s.atsHits, 8);
    domain.unmap(iova(0x9000), SZ_4K);
    const fault = asFault(dma.write(iova(0x8000), buf));
    assert.equal(fault.completed, SZ_4K, "the ATC entry of the unmapped page was invalidated");
  });

  it("with the IOMMU disabled, DMA addresses are host-physical addresses", () => {
    const { physmem, dma } = mk({ enabled: false });
    const f = physmem.allocFrame();
    assert.equal(dma.writeU32(iova(pfnToHpa(f, 8)), 0xcafe), DMA_OK);
    assert.equal(physmem.readU32(pfnToHpa(f, 8)), 0xcafe);
  });

  it("follows the device into another domain and survives re-adding it", () => {
    const { iommu, physmem, dma } = mk();
    const u = iommu.allocDomain("unmanaged");
    const f = physmem.allocFrame();
    u.map(iova(0), pfnToHpa(f), SZ_4K, RW);
    assert.equal(dma.readU32(iova(0)), -1);
    iommu.attachGroup(iommu.groupOf(GPU), u);
    assert.equal(dma.writeU32(iova(0), 5), DMA_OK);
    iommu.detachGroup(iommu.groupOf(GPU));
    iommu.removeDevice(GPU);
    assert.equal(dma.readU32(iova(0)), -1);
    assert.equal(dma.lastFault?.reason, "no-domain");
    iommu.addDevice(GPU);
    iommu.attachGroup(iommu.groupOf(GPU), u);
    assert.equal(dma.readU32(iova(0)), 5);
  });

  it("matches a flat byte model under random reads, writes, fills and copies over superpage mappings (property)", () => {
    // 6 MiB of IOVA: a 2 MiB superpage, 512 scattered 4 KiB pages, another superpage.
    const region = 3 * SZ_2M;
    const base = SZ_1G;
    const op = fc.oneof(
      fc.record({
        t: fc.constant(0),
        a: fc.nat(region - 1),
        n: fc.integer({ min: 0, max: 3 * SZ_4K }),
        seed: fc.nat(),
      }),
      fc.record({
        t: fc.constant(1),
        a: fc.nat(region - 1),
        n: fc.integer({ min: 0, max: 3 * SZ_4K }),
        seed: fc.nat(),
      }),
      fc.record({
        t: fc.constant(2),
        a: fc.nat(region - 1),
        n: fc.integer({ min: 0, max: 3 * SZ_4K }),
        seed: fc.nat(255),
      }),
      fc.record({
        t: fc.constant(3),
        a: fc.nat(region - 1),
        n: fc.integer({ min: 0, max: 3 * SZ_4K }),
        seed: fc.nat(region - 1),
      }),
    );
    fc.assert(
      fc.property(fc.array(op, { minLength: 5, maxLength: 30, size: "max" }), (ops) => {
        const { physmem, dma, domain } = mk();
        const sp = physmem.allocContiguous(3 * 512);
        const spBase = Math.ceil(pfnToHpa(sp) / SZ_2M) * SZ_2M;
        domain.map(iova(base), hpa(spBase), SZ_2M, RW);
        for (let i = 0; i < 512; i++)
          domain.map(iova(base + SZ_2M + i * SZ_4K), pfnToHpa(physmem.allocFrame()), SZ_4K, RW);
        domain.map(iova(base + 2 * SZ_2M), hpa(spBase + SZ_2M), SZ_2M, RW);
        const model = new Uint8Array(region);
        for (const o of ops) {
          const n = Math.min(o.n, region - o.a);
          const at = iova(base + o.a) as Iova;
          if (o.t === 0) {
            const data = pattern(n, o.seed);
            assert.equal(dma.write(at, data), DMA_OK);
            model.set(data, o.a);
          } else if (o.t === 1) {
            const out = new Uint8Array(n);
            assert.equal(dma.read(at, out), DMA_OK);
            assert.deepEqual(out, model.subarray(o.a, o.a + n));
          } else if (o.t === 2) {
            assert.equal(dma.fill(at, o.seed, n), DMA_OK);
            model.fill(o.seed, o.a, o.a + n);
          } else {
            const m = Math.min(n, region - o.seed);
            // Overlapping copies across pages are memcpy (undefined order); keep the model to disjoint ones.
            if (o.seed < o.a + m && o.a < o.seed + m) continue;
            assert.equal(dma.copy(at, iova(base + o.seed), m), DMA_OK);
            model.copyWithin(o.a, o.seed, o.seed + m);
          }
        }
        const all = new Uint8Array(region);
        assert.equal(dma.read(iova(base), all), DMA_OK);
        assert.deepEqual(all, model);
      }),
      { numRuns: 25 },
    );
  });
});
