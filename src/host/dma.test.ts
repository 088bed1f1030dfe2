import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, type Iova, KernelError, type Pfn, TraceRecorder } from "../core/index.ts";
import { parseBdf } from "./bdf.ts";
import { DmaDirection } from "./dma.ts";
import { GiB, Host } from "./host.ts";
import type { PciDeviceModel } from "./pci.ts";
import { PciConfigSpace } from "./pci-config.ts";
import { pfnToHpa } from "./physmem.ts";

function dev(bdf = "0000:00:02.0"): PciDeviceModel {
  return {
    bdf: parseBdf(bdf),
    config: new PciConfigSpace({ vendorId: 0x8086, deviceId: 1, classCode: 0x030000, bars: [] }),
    barRead: () => 0,
    barWrite: () => {},
    reset: () => {},
  };
}

const errno = (n: number) => (e: unknown) => e instanceof KernelError && e.errno === n;

function setup(iommu: { enabled: boolean; defaultDomainType?: "dma" | "identity" } = { enabled: true }) {
  const host = new Host({ memoryBytes: GiB, iommu });
  const d = dev();
  host.addPciDevice(d);
  return { host, d, dma: host.dmaApi(d.bdf), bus: host.deviceDma(d.bdf) };
}

describe("DMA API with an IOMMU (iommu-dma)", () => {
  it("maps a page to an IOVA the device can use, below 4 GiB first, avoiding the MSI window", () => {
    const { host, dma, bus } = setup();
    const f = host.physmem.allocFrame();
    host.physmem.write(pfnToHpa(f, 100), new Uint8Array([1, 2, 3]));
    const iova = dma.mapPage(f, 100, 3, DmaDirection.TO_DEVICE);
    assert.equal(iova % 4096, 100, "offset within the page is kept");
    assert.ok(iova < 2 ** 32 && (iova < 0xfee00000 || iova > 0xfeefffff));
    const got = new Uint8Array(3);
    assert.equal(bus.read(iova, got), 0);
    assert.deepEqual([...got], [1, 2, 3]);
    // TO_DEVICE means the device may only read.
    assert.notEqual(bus.write(iova, new Uint8Array([9])), 0);
    assert.equal(host.iommu.lastFault()?.reason, "write-denied");
    dma.unmapPage(iova, 3, DmaDirection.TO_DEVICE);
    assert.notEqual(bus.read(iova, got), 0, "unmapped IOVA faults");
    assert.equal(dma.mappings(), 0);
  });
  it("gives the host driver's coherent buffers and streaming maps distinct IOVAs from one space", () => {
    const { host, dma } = setup();
    const ring = dma.allocCoherent(3 * 4096);
    const seen = new Set<number>();
    for (let p = 0; p < ring.pages; p++) seen.add(Math.floor(ring.dmaAddr / 4096) + p);
    const maps: Iova[] = [];
    for (let i = 0; i < 50; i++) {
      const iova = dma.mapPage(host.physmem.allocFrame(), 0, 4096, DmaDirection.BIDIRECTIONAL);
      assert.equal(seen.has(iova / 4096), false, "no IOVA collision");
      seen.add(iova / 4096);
      maps.push(iova);
    }
    for (const m of maps) dma.unmapPage(m, 4096, DmaDirection.BIDIRECTIONAL);
    dma.dmaFreeCoherent(ring);
    assert.equal(dma.mappedBytes(), 0);
  });
  it("maps a scatterlist into one contiguous IOVA range", () => {
    const { host, dma, bus } = setup();
    const a = host.physmem.allocFrame();
    const b = host.physmem.allocFrame();
    host.physmem.write(pfnToHpa(a, 4000), new Uint8Array(96).fill(7));
    host.physmem.write(pfnToHpa(b), new Uint8Array(10).fill(8));
    const segs = dma.mapSg(
      [
        { pfn: a, offset: 4000, length: 96 },
        { pfn: b, offset: 0, length: 10 },
      ],
      DmaDirection.BIDIRECTIONAL,
    );
    assert.equal(segs.length, 1);
    const out = new Uint8Array(106);
    assert.equal(bus.read(segs[0]!.iova, out), 0);
    assert.equal(out[0], 7);
    assert.equal(out[96], 8);
    dma.unmapSg(segs, DmaDirection.BIDIRECTIONAL);
    assert.equal(dma.mappings(), 0);
  });
  it("refuses bad unmaps like CONFIG_DMA_API_DEBUG", () => {
    const { host, dma } = setup();
    const f = host.physmem.allocFrame();
    const iova = dma.mapPage(f, 0, 4096, DmaDirection.FROM_DEVICE);
    assert.throws(() => dma.unmapPage((iova + 4096) as Iova, 4096, DmaDirection.FROM_DEVICE), /not mapped/);
    assert.throws(() => dma.unmapPage(iova, 8192, DmaDirection.FROM_DEVICE), /size 4096, unmapped with 8192/);
    assert.throws(() => dma.unmapPage(iova, 4096, DmaDirection.TO_DEVICE), /mapped from-device, unmapped to-device/);
    dma.unmapPage(iova, 4096, DmaDirection.FROM_DEVICE);
    assert.throws(() => dma.unmapPage(iova, 4096, DmaDirection.FROM_DEVICE), errno(Errno.EINVAL));
    assert.throws(() => dma.mapPage(f, 0, 0, DmaDirection.TO_DEVICE), errno(Errno.EINVAL));
    assert.throws(() => dma.mapPage(f, 0, 4096, 7 as DmaDirection), /direction 7/);
  });
  it("fails with ENOMEM when the device's IOVA space is exhausted, and recovers after frees", () => {
    const host = new Host({ memoryBytes: GiB, iommu: { enabled: true } });
    const d = dev();
    host.addPciDevice(d);
    const dma = host.dmaApi(d.bdf, { dmaMaskBits: 24 }); // 16 MiB of IOVA space = 4096 pages (minus page 0)
    const f = host.physmem.allocFrame();
    const got: Iova[] = [];
    const rec = new TraceRecorder(host.tracer);
    assert.throws(() => {
      for (;;) got.push(dma.mapPage(f, 0, 4096, DmaDirection.BIDIRECTIONAL));
    }, errno(Errno.ENOMEM));
    assert.equal(got.length, 4095);
    assert.equal(rec.count("dma.map_error"), 1);
    dma.unmapPage(got.pop()!, 4096, DmaDirection.BIDIRECTIONAL);
    got.push(dma.mapPage(f, 0, 4096, DmaDirection.BIDIRECTIONAL));
    for (const g of got) dma.unmapPage(g, 4096, DmaDirection.BIDIRECTIONAL);
  });
  it("balances: random map/unmap sequences leave no mapping, IOVA or IOMMU entry behind", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 20000 }), fc.nat(4095)), { maxLength: 60 }),
        (ops) => {
          const { host, dma, bus } = setup();
          const live: { iova: Iova; size: number }[] = [];
          for (const [map, size, off] of ops) {
            if (map || live.length === 0) {
              const pages = Math.ceil((off + size) / 4096);
              const f = host.physmem.allocContiguous(pages);
              live.push({ iova: dma.mapPage(f, off, size, DmaDirection.BIDIRECTIONAL), size });
            } else {
              const m = live.splice(size % live.length, 1)[0]!;
              dma.unmapPage(m.iova, m.size, DmaDirection.BIDIRECTIONAL);
              if (bus.read(m.iova, new Uint8Array(1)) === 0) return false;
            }
          }
          for (const m of live) dma.unmapPage(m.iova, m.size, DmaDirection.BIDIRECTIONAL);
          const domain = host.iommu.domainOf(parseBdf("0000:00:02.0"));
          return dma.mappings() === 0 && dma.mappedBytes() === 0 && (domain.pgtable?.mappedBytes ?? 0) === 0;
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe("DMA API without translation (dma-direct)", () => {
  it("uses the host-physical address when the IOMMU is off", () => {
    const { host, dma, bus } = setup({ enabled: false });
    const f = host.physmem.allocFrame();
    const iova = dma.mapPage(f, 8, 16, DmaDirection.BIDIRECTIONAL);
    assert.equal(iova, f * 4096 + 8);
    assert.equal(bus.write(iova, new Uint8Array([5])), 0);
    assert.equal(host.physmem.frameForRead(f)![8], 5);
    const buf = dma.allocCoherent(4096);
    assert.equal(buf.dmaAddr, pfnToHpa(buf.pfn));
    dma.dmaFreeCoherent(buf);
    dma.unmapPage(iova, 16, DmaDirection.BIDIRECTIONAL);
    assert.equal(dma.translated, false);
  });
  it("identity domain: IOVA = HPA too, through the IOMMU", () => {
    const { host, dma } = setup({ enabled: true, defaultDomainType: "identity" });
    const f = host.physmem.allocFrame();
    assert.equal(dma.mapPage(f, 0, 4096, DmaDirection.TO_DEVICE), f * 4096);
  });
  it("fails with EIO above the DMA mask (no bounce buffers)", () => {
    const host = new Host({ memoryBytes: 64 * GiB, iommu: { enabled: false } });
    const d = dev();
    host.addPciDevice(d);
    const dma = host.dmaApi(d.bdf, { dmaMaskBits: 32 });
    assert.throws(
      () => dma.mapPage(((5 * GiB) / 4096) as Pfn, 0, 4096, DmaDirection.TO_DEVICE),
      /above the 32-bit DMA mask/,
    );
  });
});
