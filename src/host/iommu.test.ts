import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  Errno,
  hpa,
  type Iova,
  iova,
  KernelError,
  Rng,
  SZ_1G,
  SZ_2M,
  TraceRecorder,
  Tracer,
  VirtualClock,
} from "../core/index.ts";
import { type Bdf, parseBdf } from "./bdf.ts";
import { IOMMU_READ, IOMMU_WRITE } from "./io-pgtable.ts";
import { formatReservedRegions, Iommu, type IommuOptions, MSI_WINDOW_END, MSI_WINDOW_START } from "./iommu.ts";
import { PhysicalMemory } from "./physmem.ts";

const SZ_4K = 4096;
const RW = IOMMU_READ | IOMMU_WRITE;
const GPU = parseBdf("0000:00:02.0");
const NIC = parseBdf("0000:03:00.0");
const NIC2 = parseBdf("0000:03:00.1");

type Opts = Partial<Omit<IommuOptions, "physmem" | "clock" | "tracer" | "rng">>;
const mk = (opts: Opts = {}) => {
  const clock = new VirtualClock(1000);
  const tracer = new Tracer(clock);
  const rec = new TraceRecorder(tracer);
  const physmem = new PhysicalMemory({ sizeBytes: 8 * SZ_1G, tracer });
  const iommu = new Iommu({ physmem, clock, tracer, rng: new Rng(1), enabled: true, ...opts });
  return { iommu, physmem, rec, clock, tracer };
};
const errno = (fn: () => unknown, code: number, re?: RegExp) =>
  assert.throws(
    fn,
    (e: unknown) => e instanceof KernelError && e.errno === code && (re === undefined || re.test(e.message)),
  );

describe("Iommu: groups and domains", () => {
  it("puts each device in a new group on a default 'dma' domain, or in a given group", () => {
    const { iommu, rec } = mk();
    assert.equal(iommu.addDevice(GPU), 0);
    assert.equal(iommu.addDevice(NIC), 1);
    assert.equal(iommu.addDevice(NIC2, { group: 1 }), 1);
    assert.deepEqual(iommu.group(1).bdfs(), [NIC, NIC2]);
    assert.equal(iommu.groupOf(NIC2), 1);
    const d = iommu.domainOf(GPU);
    assert.equal(d.type, "dma");
    assert.equal(d.id, 1);
    assert.deepEqual(d.aperture, { start: 0, end: 2 ** 48 - 1 });
    assert.equal(iommu.domainOf(NIC), iommu.domainOf(NIC2));
    assert.notEqual(iommu.domainOf(NIC), d);
    errno(() => iommu.addDevice(GPU), Errno.EEXIST, /already in IOMMU group 0/);
    errno(() => iommu.addDevice(parseBdf("00:04.0"), { group: 9 }), Errno.EINVAL, /no such group/);
    errno(() => iommu.domainOf(parseBdf("00:1f.0")), Errno.ENODEV, /not behind this IOMMU/);
    assert.equal(rec.count("iommu.device.add"), 3);
    assert.equal(rec.count("iommu.domain.alloc"), 2);
  });

  it("uses the shared identity domain when the default type is 'identity' and passes addresses through", () => {
    const { iommu } = mk({ defaultDomainType: "identity" });
    iommu.addDevice(GPU);
    iommu.addDevice(NIC);
    const d = iommu.domainOf(GPU);
    assert.equal(d.type, "identity");
    assert.equal(iommu.domainOf(NIC), d);
    assert.equal(iommu.translate(GPU, iova(0x123456), IOMMU_WRITE), 0x123456);
    assert.equal(d.iovaToPhys(iova(0x5000)), 0x5000);
    errno(() => d.map(iova(0), hpa(0), SZ_4K, RW), Errno.EINVAL, /identity domain without a page table/);
    errno(() => iommu.freeDomain(d), Errno.EBUSY, /shared identity/);
    // Beyond declared RAM is not memory: not present.
    assert.equal(iommu.translate(GPU, iova(9 * SZ_1G), IOMMU_READ), -1);
    assert.equal(iommu.lastFault()?.reason, "not-present");
  });

  it("attaches a group to an unmanaged domain and detaches it back to its default", () => {
    const { iommu, rec } = mk();
    iommu.addDevice(GPU);
    const def = iommu.domainOf(GPU);
    const u = iommu.allocDomain("unmanaged");
    u.map(iova(0x10000), hpa(0x200000), SZ_4K, RW);
    iommu.attachGroup(0, u);
    assert.equal(iommu.domainOf(GPU), u);
    assert.deepEqual(u.groups(), [0]);
    assert.equal(iommu.translate(GPU, iova(0x10010), IOMMU_READ), 0x200010);
    const other = iommu.allocDomain("unmanaged");
    errno(() => iommu.attachGroup(0, other), Errno.EBUSY, /already attached to domain 2: detach it first/);
    errno(() => iommu.freeDomain(u), Errno.EBUSY, /still attached to group\(s\) 0/);
    errno(() => iommu.freeDomain(def), Errno.EBUSY, /default domain of group 0/);
    iommu.detachGroup(0);
    assert.equal(iommu.domainOf(GPU), def);
    errno(() => iommu.detachGroup(0), Errno.EINVAL, /on its default domain/);
    errno(() => iommu.attachGroup(7, u), Errno.EINVAL, /no IOMMU group 7/);
    iommu.freeDomain(u);
    assert.equal(u.freed, true);
    errno(() => iommu.freeDomain(u), Errno.EINVAL, /not a live domain/);
    errno(() => u.map(iova(0), hpa(0), SZ_4K, RW), Errno.EINVAL, /has been freed/);
    errno(() => iommu.attachGroup(0, u), Errno.EINVAL, /not live/);
    const names = rec.records.map((r) => r.name).filter((n) => n.startsWith("iommu.") && n !== "iommu.device.add");
    assert.deepEqual(names, [
      "iommu.domain.alloc",
      "iommu.domain.alloc",
      "iommu.map",
      "iommu.attach",
      "iommu.walk",
      "iommu.domain.alloc",
      "iommu.detach",
      "iommu.domain.free",
    ]);
    const att = rec.named("iommu.attach")[0]!.fields;
    assert.deepEqual(att, { group: 0, domain: u.id, type: "unmanaged", previous: def.id });
    // Freed ids are reused, as VT-d's domain-id bitmap does.
    assert.equal(iommu.allocDomain("dma").id, u.id);
  });

  it("removes devices; an emptied group goes away with its default domain", () => {
    const { iommu } = mk();
    iommu.addDevice(GPU);
    const def = iommu.domainOf(GPU);
    const u = iommu.allocDomain("unmanaged");
    iommu.attachGroup(0, u);
    iommu.removeDevice(GPU);
    assert.equal(iommu.hasDevice(GPU), false);
    assert.equal(def.freed, true);
    assert.deepEqual(u.groups(), []);
    errno(() => iommu.group(0), Errno.ENOENT);
    iommu.freeDomain(u);
    assert.equal(iommu.stats().domains, 0);
  });

  it("reports reserved regions as iommu_get_resv_regions and the sysfs file do", () => {
    const { iommu } = mk();
    iommu.addDevice(GPU, { reservedRegions: [{ start: 0xc0000000, end: 0xc0ffffff, type: "direct" }] });
    iommu.addDevice(NIC2, { group: 0, reservedRegions: [{ start: 0xfef00000, end: 0xfeffffff, type: "msi" }] });
    assert.deepEqual(iommu.reservedRegions(GPU), [
      { start: 0xc0000000, end: 0xc0ffffff, type: "direct" },
      { start: MSI_WINDOW_START, end: MSI_WINDOW_END, type: "msi" },
    ]);
    const merged = iommu.groupReservedRegions(0);
    assert.deepEqual(merged, [
      { start: 0xc0000000, end: 0xc0ffffff, type: "direct" },
      { start: 0xfee00000, end: 0xfeffffff, type: "msi" },
    ]);
    assert.equal(
      formatReservedRegions(merged),
      "0x00000000c0000000 0x00000000c0ffffff direct\n0x00000000fee00000 0x00000000feffffff msi\n",
    );
    errno(
      () => iommu.addDevice(NIC, { reservedRegions: [{ start: 10, end: 5, type: "reserved" }] }),
      Errno.EINVAL,
      /not a valid inclusive range/,
    );
  });

  it("with the IOMMU disabled, DMA addresses are host-physical and no domains exist", () => {
    const { iommu } = mk({ enabled: false });
    iommu.addDevice(GPU);
    assert.equal(iommu.translate(GPU, iova(0x42000), IOMMU_WRITE), 0x42000);
    assert.equal(iommu.translate(NIC, iova(0x1000), IOMMU_READ), 0x1000, "even for a device never added");
    assert.equal(iommu.translate(GPU, iova(8 * SZ_1G), IOMMU_READ), -1);
    assert.deepEqual(iommu.lastFault()?.domain, -1);
    assert.deepEqual(iommu.reservedRegions(GPU), []);
    errno(() => iommu.allocDomain("unmanaged"), Errno.ENODEV, /IOMMU is disabled/);
    errno(() => iommu.attachGroup(0, iommu.domainOf(GPU)), Errno.ENODEV);
  });

  it("passes through external buffers registered above RAM in identity mode", () => {
    const { iommu, physmem } = mk({ enabled: false });
    const base = physmem.registerExternal(new Uint8Array(2 * SZ_4K), "guest-ram");
    assert.equal(iommu.translate(GPU, iova(base * SZ_4K + 5), IOMMU_READ), base * SZ_4K + 5);
    assert.equal(iommu.translate(GPU, iova((base + 2) * SZ_4K), IOMMU_READ), -1);
  });
});

describe("Iommu: translation and faults", () => {
  it("translates through the IOTLB, walking only on a miss", () => {
    const { iommu } = mk();
    iommu.addDevice(GPU);
    const d = iommu.domainOf(GPU);
    d.map(iova(SZ_2M), hpa(4 * SZ_2M), SZ_2M, RW);
    assert.equal(iommu.translate(GPU, iova(SZ_2M + 0x1234), IOMMU_READ), 4 * SZ_2M + 0x1234);
    assert.equal(iommu.translate(GPU, iova(SZ_2M + 0x1ff0), IOMMU_WRITE), 4 * SZ_2M + 0x1ff0);
    assert.equal(iommu.translate(GPU, iova(SZ_2M + 0x2000), IOMMU_READ), 4 * SZ_2M + 0x2000);
    const s = iommu.stats();
    assert.equal(s.translations, 3);
    assert.equal(s.walks, 2, "two distinct 4 KiB pages of the superpage");
    assert.equal(s.iotlbHits, 1);
    assert.equal(s.iotlbMisses, 2);
    assert.equal(s.faults, 0);
    assert.equal(s.pageTables, 3, "the default dma domain: root, a level-3 and a level-2 table holding the 2 MiB leaf");
  });

  it("records, counts and traces a fault for an unmapped IOVA and never serves it", () => {
    const { iommu, rec, clock } = mk();
    iommu.addDevice(GPU);
    clock.advance(500);
    assert.equal(iommu.translate(GPU, iova(0xdead000), IOMMU_WRITE), -1);
    const f = iommu.lastFault()!;
    assert.deepEqual(f, {
      seq: 0,
      time: 1500,
      bdf: GPU,
      domain: 1,
      iova: 0xdead000,
      access: IOMMU_WRITE,
      reason: "not-present",
    });
    assert.equal(iommu.stats().faultsByReason["not-present"], 1);
    const ev = rec.named("iommu.fault");
    assert.equal(ev.length, 1);
    assert.deepEqual(ev[0]!.fields, {
      seq: 0,
      bdf: GPU,
      domain: 1,
      iova: 0xdead000,
      access: "write",
      reason: "not-present",
    });
    // A fault is not cached: mapping the page afterwards needs no invalidation.
    iommu.domainOf(GPU).map(iova(0xdead000), hpa(0x1000), SZ_4K, RW);
    assert.equal(iommu.translate(GPU, iova(0xdead000), IOMMU_WRITE), 0x1000);
  });

  it("enforces permissions: write to read-only faults write-denied, read of write-only read-denied", () => {
    const { iommu } = mk();
    iommu.addDevice(GPU);
    const d = iommu.domainOf(GPU);
    d.map(iova(0x1000), hpa(0x5000), SZ_4K, IOMMU_READ);
    d.map(iova(0x2000), hpa(0x6000), SZ_4K, IOMMU_WRITE);
    assert.equal(iommu.translate(GPU, iova(0x1000), IOMMU_READ), 0x5000);
    assert.equal(iommu.translate(GPU, iova(0x1008), IOMMU_WRITE), -1, "IOTLB hit, still denied");
    assert.equal(iommu.lastFault()?.reason, "write-denied");
    assert.equal(iommu.translate(GPU, iova(0x2000), IOMMU_READ), -1, "walk path");
    assert.equal(iommu.lastFault()?.reason, "read-denied");
    assert.equal(iommu.translate(GPU, iova(0x2000), IOMMU_WRITE), 0x6000);
  });

  it("faults 'blocked', 'outside-aperture', 'no-domain' and 'msi-window'", () => {
    const { iommu } = mk({ addressWidth: 39 });
    iommu.addDevice(GPU);
    iommu.addDevice(NIC);
    const dom = iommu.domainOf(GPU);
    assert.equal(dom.aperture.end, 2 ** 39 - 1);
    assert.equal(iommu.translate(GPU, iova(2 ** 39), IOMMU_READ), -1);
    assert.equal(iommu.lastFault()?.reason, "outside-aperture");
    // Mapping the MSI window is the caller's problem and allowed, but a DMA there is not a memory access.
    dom.map(iova(MSI_WINDOW_START), hpa(0x10000), SZ_4K, RW);
    assert.equal(iommu.translate(GPU, iova(MSI_WINDOW_START + 4), IOMMU_WRITE), -1);
    assert.equal(iommu.lastFault()?.reason, "msi-window");
    assert.equal(iommu.translate(parseBdf("00:1f.3"), iova(0), IOMMU_READ), -1);
    assert.equal(iommu.lastFault()?.reason, "no-domain");
    const b = iommu.allocDomain("blocked");
    iommu.attachGroup(1, b);
    assert.equal(iommu.translate(NIC, iova(0), IOMMU_READ), -1);
    assert.equal(iommu.lastFault()?.reason, "blocked");
    assert.equal(iommu.lastFault()?.domain, b.id);
    const s = iommu.stats();
    assert.equal(s.faults, 4);
    assert.deepEqual(
      [
        s.faultsByReason["outside-aperture"],
        s.faultsByReason["msi-window"],
        s.faultsByReason["no-domain"],
        s.faultsByReason.blocked,
      ],
      [1, 1, 1, 1],
    );
  });

  it("keeps a bounded fault ring, dropping the oldest", () => {
    const { iommu } = mk({ faultLogSize: 4 });
    iommu.addDevice(GPU);
    for (let i = 0; i < 6; i++) iommu.translate(GPU, iova(i * SZ_4K), IOMMU_READ);
    assert.deepEqual(
      iommu.faults().map((f) => f.seq),
      [2, 3, 4, 5],
    );
    const s = iommu.stats();
    assert.equal(s.faults, 6);
    assert.equal(s.faultsDropped, 2);
    iommu.clearFaults();
    assert.deepEqual(iommu.faults(), []);
    assert.equal(iommu.lastFault(), undefined);
    iommu.translate(GPU, iova(0), IOMMU_READ);
    assert.equal(iommu.lastFault()?.seq, 6);
  });

  it("flushes the IOTLB on unmap (traced), or defers it with flush: false until domain.flush", () => {
    const { iommu, rec } = mk();
    iommu.addDevice(GPU);
    const d = iommu.domainOf(GPU);
    d.map(iova(0x40000), hpa(0x80000), 4 * SZ_4K, RW);
    assert.equal(iommu.translate(GPU, iova(0x41000), IOMMU_READ), 0x81000);
    assert.equal(d.unmap(iova(0x40000), 4 * SZ_4K), 4 * SZ_4K);
    assert.equal(iommu.translate(GPU, iova(0x41000), IOMMU_READ), -1);
    assert.deepEqual(rec.named("iommu.iotlb.inval")[0]!.fields, {
      domain: d.id,
      granularity: "range",
      iova: 0x40000,
      size: 4 * SZ_4K,
    });
    assert.deepEqual(rec.named("iommu.unmap")[0]!.fields, {
      domain: d.id,
      iova: 0x40000,
      size: 4 * SZ_4K,
      unmapped: 4 * SZ_4K,
      flushed: true,
    });
    // Lazy: the page table entry is gone but the cached translation survives until the flush (Linux's lazy mode).
    d.map(iova(0x50000), hpa(0x90000), SZ_4K, RW);
    assert.equal(iommu.translate(GPU, iova(0x50000), IOMMU_READ), 0x90000);
    assert.equal(d.unmap(iova(0x50000), SZ_4K, { flush: false }), SZ_4K);
    assert.equal(d.iovaToPhys(iova(0x50000)), -1);
    assert.equal(iommu.translate(GPU, iova(0x50000), IOMMU_READ), 0x90000, "stale until flushed");
    d.flush(iova(0x50000), SZ_4K);
    assert.equal(iommu.translate(GPU, iova(0x50000), IOMMU_READ), -1);
    assert.equal(rec.named("iommu.iotlb.inval").at(-1)!.fields.granularity, "page");
    d.flush();
    assert.equal(rec.named("iommu.iotlb.inval").at(-1)!.fields.granularity, "domain");
  });

  it("invalidates the whole superpage span when an unmap starts inside one", () => {
    const { iommu } = mk();
    iommu.addDevice(GPU);
    const d = iommu.domainOf(GPU);
    d.map(iova(SZ_2M), hpa(SZ_2M * 3), SZ_2M, RW);
    assert.equal(iommu.translate(GPU, iova(SZ_2M), IOMMU_READ), SZ_2M * 3);
    assert.equal(iommu.translate(GPU, iova(SZ_2M + 0x100000), IOMMU_READ), SZ_2M * 3 + 0x100000);
    assert.equal(d.unmap(iova(SZ_2M + 0x100000), SZ_4K), SZ_2M);
    assert.equal(iommu.translate(GPU, iova(SZ_2M), IOMMU_READ), -1, "the cached first page went too");
  });
});

describe("Iommu: properties", () => {
  const sizeArb = fc.constantFrom(SZ_4K, SZ_2M, SZ_1G);

  it("translateFrame(page, offset): the page table's frame or the documented fault, with the full IOVA recorded", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            // Mapped pages (the second half read-only), unmapped ones, the MSI window and its edges, past the 48-bit
            // aperture, negative.
            page: fc.oneof(
              fc.integer({ min: 0x100, max: 0x10f }),
              fc.integer({ min: 0, max: 2 ** 36 + 5 }),
              fc.integer({ min: MSI_WINDOW_START / SZ_4K, max: Math.floor(MSI_WINDOW_END / SZ_4K) }),
              // Edges: around the MSI window and the end of the aperture.
              fc.constantFrom(0xfedff, 0xfee00, 0xfeeff, 0xfef00, 2 ** 36 - 1, 2 ** 36),
              fc.integer({ min: -3, max: -1 }),
            ),
            offset: fc.integer({ min: 0, max: SZ_4K - 1 }),
            write: fc.boolean(),
          }),
          { maxLength: 60 },
        ),
        fc.boolean(),
        (accesses, ats) => {
          const { iommu } = mk();
          iommu.addDevice(GPU, { ats });
          const d = iommu.domainOf(GPU);
          d.map(iova(0x100 * SZ_4K), hpa(0x5000 * SZ_4K), 8 * SZ_4K, RW);
          d.map(iova(0x108 * SZ_4K), hpa(0x7000 * SZ_4K), 8 * SZ_4K, IOMMU_READ);
          const dev = iommu.device(GPU);
          for (const x of accesses) {
            const access = x.write ? IOMMU_WRITE : IOMMU_READ;
            const addr = x.page * SZ_4K + x.offset;
            const before = iommu.stats().faults;
            const f = iommu.translateFrame(dev, x.page, x.offset, access);
            let reason: string | undefined;
            let frame = -1;
            if (addr < 0 || addr > 2 ** 48 - 1) reason = "outside-aperture";
            else if (addr >= MSI_WINDOW_START && addr <= MSI_WINDOW_END) reason = "msi-window";
            else {
              const pa = d.iovaToPhys(addr as Iova);
              if (pa < 0) reason = "not-present";
              else if (x.write && x.page >= 0x108) reason = "write-denied";
              else frame = Math.floor(pa / SZ_4K);
            }
            assert.equal(f, frame, `page 0x${x.page.toString(16)}`);
            if (reason === undefined) assert.equal(iommu.stats().faults, before, "no fault");
            else {
              const rec = iommu.lastFault()!;
              assert.equal(rec.reason, reason);
              assert.equal(rec.iova, addr, "the fault records the full IOVA, offset included");
            }
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  it("translate(map(x)) = x for random mappings of all page sizes, and unmapped addresses fault", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(
          fc.record({
            slot: fc.integer({ min: 0, max: 200 }),
            size: sizeArb,
            hpaUnit: fc.integer({ min: 0, max: 6 }),
            probe: fc.nat(),
          }),
          { selector: (m) => m.slot, minLength: 1, maxLength: 10, size: "max" },
        ),
        fc.integer({ min: 0, max: 200 }),
        (ms, holeSlot) => {
          const { iommu, rec } = mk();
          iommu.addDevice(GPU);
          const d = iommu.domainOf(GPU);
          for (const m of ms) d.map(iova(m.slot * SZ_1G * 2), hpa(m.hpaUnit * m.size), m.size, RW);
          for (const m of ms) {
            const off = m.probe % m.size;
            assert.equal(iommu.translate(GPU, iova(m.slot * SZ_1G * 2 + off), IOMMU_READ), m.hpaUnit * m.size + off);
            assert.equal(iommu.translate(GPU, iova(m.slot * SZ_1G * 2 + off), IOMMU_WRITE), m.hpaUnit * m.size + off);
          }
          // The odd gigabyte after each slot is never mapped.
          const hole = holeSlot * SZ_1G * 2 + SZ_1G + 123;
          const before = iommu.stats().faults;
          assert.equal(iommu.translate(GPU, iova(hole), IOMMU_READ), -1);
          assert.equal(iommu.stats().faults, before + 1);
          assert.equal(iommu.lastFault()?.iova, hole);
          assert.equal(rec.named("iommu.fault").at(-1)!.fields.iova, hole);
        },
      ),
      { numRuns: 80 },
    );
  });

  it("permissions are enforced for every page size", () => {
    fc.assert(
      fc.property(sizeArb, fc.constantFrom(IOMMU_READ, IOMMU_WRITE), fc.nat(), (size, prot, probe) => {
        const { iommu } = mk();
        iommu.addDevice(GPU);
        iommu.domainOf(GPU).map(iova(size), hpa(size), size, prot);
        const a = iova(size + (probe % size));
        const other = prot === IOMMU_READ ? IOMMU_WRITE : IOMMU_READ;
        assert.equal(iommu.translate(GPU, a, prot), size + (probe % size));
        assert.equal(iommu.translate(GPU, a, other), -1);
        assert.equal(iommu.lastFault()?.reason, other === IOMMU_WRITE ? "write-denied" : "read-denied");
      }),
      { numRuns: 60 },
    );
  });

  it("the IOTLB never yields a stale translation under random map/unmap/translate/attach (vs a Map model)", () => {
    const op = fc.oneof(
      fc.record({
        t: fc.constant("map" as const),
        page: fc.integer({ min: 0, max: 31 }),
        n: fc.integer({ min: 1, max: 4 }),
        frame: fc.integer({ min: 1, max: 1000 }),
        prot: fc.constantFrom(1, 2, 3),
      }),
      fc.record({
        t: fc.constant("unmap" as const),
        page: fc.integer({ min: 0, max: 31 }),
        n: fc.integer({ min: 1, max: 6 }),
      }),
      fc.record({
        t: fc.constant("xlate" as const),
        page: fc.integer({ min: 0, max: 35 }),
        access: fc.constantFrom(1, 2) as fc.Arbitrary<1 | 2>,
        dev: fc.constantFrom(0, 1),
      }),
      fc.record({ t: fc.constant("swap" as const) }),
    );
    fc.assert(
      fc.property(
        fc.array(op, { minLength: 40, maxLength: 120, size: "max" }),
        fc.constantFrom(1, 2, 8),
        (ops, ways) => {
          // A tiny IOTLB so that evictions and conflicts happen.
          const { iommu } = mk({ iotlb: { entries: 8, ways, replacement: "lru" } });
          const devs: Bdf[] = [GPU, NIC];
          iommu.addDevice(GPU);
          iommu.addDevice(NIC, { group: 0 });
          const domains = [iommu.domainOf(GPU), iommu.allocDomain("unmanaged")];
          const models = [
            new Map<number, { frame: number; prot: number }>(),
            new Map<number, { frame: number; prot: number }>(),
          ];
          let cur = 0;
          for (const o of ops) {
            if (o.t === "map") {
              const m = models[cur]!;
              let clash = false;
              for (let p = o.page; p < o.page + o.n; p++) if (m.has(p)) clash = true;
              if (clash) continue;
              domains[cur]!.map(iova(o.page * SZ_4K), hpa(o.frame * SZ_4K), o.n * SZ_4K, o.prot);
              for (let p = o.page; p < o.page + o.n; p++) m.set(p, { frame: o.frame + p - o.page, prot: o.prot });
            } else if (o.t === "unmap") {
              const m = models[cur]!;
              let expect = 0;
              for (let p = o.page; p < o.page + o.n; p++) if (m.delete(p)) expect += SZ_4K;
              assert.equal(domains[cur]!.unmap(iova(o.page * SZ_4K), o.n * SZ_4K), expect);
            } else if (o.t === "swap") {
              if (cur === 0) iommu.attachGroup(0, domains[1]!);
              else iommu.detachGroup(0);
              cur = 1 - cur;
            } else {
              const got = iommu.translate(devs[o.dev]!, iova(o.page * SZ_4K + 8), o.access);
              const want = models[cur]!.get(o.page);
              const ok = want !== undefined && (want.prot & o.access) !== 0;
              assert.equal(got, ok ? want.frame * SZ_4K + 8 : -1);
            }
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});
