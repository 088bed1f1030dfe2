import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, hpa, iova, KernelError, SZ_1G, SZ_2M } from "../core/index.ts";
import { IOMMU_READ, IOMMU_WRITE, IoPageTable, WalkResult } from "./io-pgtable.ts";

const SZ_4K = 4096;
const RW = IOMMU_READ | IOMMU_WRITE;
const errno = (fn: () => unknown, code: number, re?: RegExp) =>
  assert.throws(
    fn,
    (e: unknown) => e instanceof KernelError && e.errno === code && (re === undefined || re.test(e.message)),
  );

const walkOf = (pt: IoPageTable, a: number) => {
  const w = new WalkResult();
  return pt.walk(iova(a), w)
    ? { phys: w.phys, prot: w.prot, pageSize: w.pageSize, level: w.level, frame: w.frame }
    : undefined;
};

describe("IoPageTable", () => {
  it("maps a 4 KiB page and walks it with the offset kept", () => {
    const pt = new IoPageTable();
    pt.map(iova(0x1000), hpa(0x7000), SZ_4K, IOMMU_READ);
    assert.deepEqual(walkOf(pt, 0x1abc), { phys: 0x7abc, prot: IOMMU_READ, pageSize: SZ_4K, level: 1, frame: 7 });
    assert.equal(walkOf(pt, 0x2000), undefined);
    assert.equal(pt.iovaToPhys(iova(0x1004)), 0x7004);
    assert.equal(pt.iovaToPhys(iova(0x3000)), -1);
    // 4 levels: root + one table per lower level.
    assert.equal(pt.tableCount, 4);
  });

  it("picks the largest page size that alignment and length allow, as iommu_pgsize does", () => {
    const pt = new IoPageTable();
    // 2 MiB-aligned iova and hpa, 2 MiB + 8 KiB long: one 2 MiB leaf then two 4 KiB leaves.
    pt.map(iova(SZ_2M * 3), hpa(SZ_2M * 5), SZ_2M + 2 * SZ_4K, RW);
    let s = pt.stats();
    assert.equal(s.leaves2M, 1);
    assert.equal(s.leaves4K, 2);
    assert.equal(walkOf(pt, SZ_2M * 3 + 0x12345)?.pageSize, SZ_2M);
    assert.equal(walkOf(pt, SZ_2M * 3 + 0x12345)?.phys, SZ_2M * 5 + 0x12345);
    assert.equal(walkOf(pt, SZ_2M * 3 + 0x12345)?.frame, (SZ_2M * 5 + 0x12000) / SZ_4K);
    assert.equal(walkOf(pt, SZ_2M * 4 + SZ_4K)?.pageSize, SZ_4K);
    // 1 GiB aligned on both sides: a single 1 GiB leaf.
    pt.map(iova(SZ_1G * 7), hpa(SZ_1G * 2), SZ_1G, IOMMU_WRITE);
    s = pt.stats();
    assert.equal(s.leaves1G, 1);
    assert.deepEqual(walkOf(pt, SZ_1G * 7 + 0x3456789), {
      phys: SZ_1G * 2 + 0x3456789,
      prot: IOMMU_WRITE,
      pageSize: SZ_1G,
      level: 3,
      frame: (SZ_1G * 2 + 0x3456000) / SZ_4K,
    });
    // hpa misaligned for 2 MiB: only 4 KiB leaves.
    const pt2 = new IoPageTable();
    pt2.map(iova(0), hpa(SZ_4K), SZ_2M, RW);
    assert.equal(pt2.stats().leaves4K, 512);
    assert.equal(pt2.stats().leaves2M, 0);
    // A bitmap without superpages forces 4 KiB leaves.
    const pt3 = new IoPageTable({ pgsizeBitmap: SZ_4K });
    pt3.map(iova(0), hpa(0), SZ_2M, RW);
    assert.equal(pt3.stats().leaves4K, 512);
  });

  it("fails with EEXIST on any overlap and changes nothing", () => {
    const pt = new IoPageTable();
    pt.map(iova(SZ_2M), hpa(0), SZ_2M, RW);
    pt.map(iova(0x10000), hpa(0x10000), SZ_4K, RW);
    const before = [...pt.mappings()];
    const tables = pt.tableCount;
    errno(() => pt.map(iova(0), hpa(0), 2 * SZ_2M, RW), Errno.EEXIST, /IOVA 0x10000 is already mapped/);
    errno(() => pt.map(iova(SZ_2M + SZ_2M - SZ_4K), hpa(0), 2 * SZ_4K, RW), Errno.EEXIST, /0x3ff000/);
    assert.deepEqual([...pt.mappings()], before);
    assert.equal(pt.tableCount, tables);
    assert.equal(pt.mappedBytes, SZ_2M + SZ_4K);
  });

  it("rejects bad arguments", () => {
    const pt = new IoPageTable();
    errno(() => pt.map(iova(0x800), hpa(0), SZ_4K, RW), Errno.EINVAL, /4 KiB aligned/);
    errno(() => pt.map(iova(0), hpa(0x800), SZ_4K, RW), Errno.EINVAL, /HPA 0x800/);
    errno(() => pt.map(iova(0), hpa(0), 100, RW), Errno.EINVAL, /positive multiple of 4096/);
    errno(() => pt.map(iova(0), hpa(0), 0, RW), Errno.EINVAL);
    errno(() => pt.map(iova(0), hpa(0), SZ_4K, 0), Errno.EINVAL, /permission 0/);
    errno(() => pt.map(iova(0), hpa(0), SZ_4K, 4), Errno.EINVAL, /permission 4/);
    errno(() => pt.map(iova(2 ** 48 - SZ_4K), hpa(0), 2 * SZ_4K, RW), Errno.EFAULT, /48-bit/);
    errno(() => pt.unmap(iova(0x10), SZ_4K), Errno.EINVAL);
    errno(() => pt.unmap(iova(0), 0), Errno.EINVAL);
    errno(() => new IoPageTable({ pgsizeBitmap: SZ_2M }), Errno.EINVAL, /must include 4 KiB/);
  });

  it("unmaps whole superpages even when the range starts inside one, skipping holes", () => {
    const pt = new IoPageTable();
    pt.map(iova(SZ_2M), hpa(SZ_2M), SZ_2M, RW);
    pt.map(iova(3 * SZ_2M), hpa(0), SZ_4K, RW);
    // Starts 64 KiB into the superpage and covers only 4 KiB of it: the whole 2 MiB leaf goes.
    assert.equal(pt.unmap(iova(SZ_2M + 0x10000), SZ_4K), SZ_2M);
    assert.equal(pt.lastUnmapStart, SZ_2M);
    assert.equal(pt.lastUnmapEnd, 2 * SZ_2M);
    assert.equal(walkOf(pt, SZ_2M), undefined);
    // Nothing there now: 0 bytes, and the span is empty.
    assert.equal(pt.unmap(iova(SZ_2M), SZ_2M), 0);
    assert.equal(pt.lastUnmapStart, pt.lastUnmapEnd);
    // A range with a hole before the mapping still finds it.
    assert.equal(pt.unmap(iova(0), 4 * SZ_2M), SZ_4K);
    assert.equal(pt.mappedBytes, 0);
  });

  it("releases emptied tables and keeps only the root when everything is unmapped", () => {
    const pt = new IoPageTable();
    pt.map(iova(0x1000), hpa(0x1000), SZ_4K, RW);
    pt.map(iova(2 ** 40), hpa(0x2000), SZ_4K, RW);
    assert.equal(pt.tableCount, 7); // root + 3 per distinct level-4 slot
    pt.unmap(iova(0x1000), SZ_4K);
    assert.equal(pt.tableCount, 4);
    pt.unmap(iova(2 ** 40), SZ_4K);
    const s = pt.stats();
    assert.equal(s.tables, 1);
    assert.equal(s.tablesAllocated, 7);
    assert.equal(s.tablesFreed, 6);
    // Walking an unmapped address allocates no table.
    walkOf(pt, 0x5000);
    assert.equal(pt.tableCount, 1);
  });

  it("handles high IOVAs (page numbers above 2^32) and the 39-bit, 3-level layout", () => {
    const pt = new IoPageTable();
    const high = 2 ** 48 - SZ_2M;
    pt.map(iova(high), hpa(SZ_2M * 9), SZ_2M, IOMMU_READ);
    pt.map(iova(high - 2 ** 44), hpa(SZ_4K * 3), SZ_4K, IOMMU_READ);
    assert.equal(walkOf(pt, high + 5)?.phys, SZ_2M * 9 + 5);
    assert.equal(walkOf(pt, high - 2 ** 44 + 7)?.phys, SZ_4K * 3 + 7);
    assert.equal(walkOf(pt, high - 2 ** 36), undefined);
    const p39 = new IoPageTable({ addressWidth: 39 });
    assert.equal(p39.levels, 3);
    p39.map(iova(2 ** 39 - SZ_4K), hpa(0x5000), SZ_4K, RW);
    assert.equal(walkOf(p39, 2 ** 39 - 1)?.phys, 0x5fff);
    assert.equal(walkOf(p39, 2 ** 39), undefined);
    errno(() => p39.map(iova(2 ** 39), hpa(0), SZ_4K, RW), Errno.EFAULT, /39-bit/);
    assert.equal(p39.tableCount, 3);
  });

  it("translate(map(x)) = x for random mappings of all page sizes; unmap all empties the table (property)", () => {
    // Each slot is a disjoint 1 GiB window of IOVA; the mapping inside it has a random size class and offset.
    const mappingArb = fc.record({
      slot: fc.integer({ min: 0, max: 255 }),
      kind: fc.constantFrom(SZ_4K, SZ_2M, SZ_1G),
      pages: fc.integer({ min: 1, max: 3 }),
      hpaUnit: fc.integer({ min: 0, max: 64 }),
      prot: fc.constantFrom(1, 2, 3),
      probe: fc.double({ min: 0, max: 1, noNaN: true }),
    });
    fc.assert(
      fc.property(fc.uniqueArray(mappingArb, { selector: (m) => m.slot, maxLength: 12, size: "max" }), (ms) => {
        const pt = new IoPageTable();
        const placed: { iova: number; hpa: number; size: number; prot: number; probe: number }[] = [];
        for (const m of ms) {
          const size = m.kind === SZ_1G ? SZ_1G : m.kind * m.pages;
          const base = m.slot * SZ_1G * 2 ** 9 + (m.slot % 5) * SZ_1G; // distinct level-4 slots, varied level-3 index
          const a = base;
          const p = m.hpaUnit * m.kind;
          pt.map(iova(a), hpa(p), size, m.prot);
          placed.push({ iova: a, hpa: p, size, prot: m.prot, probe: m.probe });
        }
        for (const m of placed) {
          const off = Math.floor(m.probe * (m.size - 1));
          const w = walkOf(pt, m.iova + off);
          assert.ok(w, `mapped iova ${m.iova + off} must walk`);
          assert.equal(w.phys, m.hpa + off);
          assert.equal(w.prot, m.prot);
          assert.equal(walkOf(pt, m.iova + m.size), undefined);
        }
        assert.equal(
          pt.mappedBytes,
          placed.reduce((s, m) => s + m.size, 0),
        );
        for (const m of placed) assert.equal(pt.unmap(iova(m.iova), m.size), m.size);
        assert.equal(pt.tableCount, 1);
        assert.deepEqual([...pt.mappings()], []);
      }),
      { numRuns: 150 },
    );
  });

  it("agrees with a page-level model under random map/unmap of 4 KiB and 2 MiB pages (property)", () => {
    // Work in a 16 MiB window so that 2 MiB leaves and 4 KiB leaves collide often.
    const op = fc.oneof(
      fc.record({
        t: fc.constant("map" as const),
        page: fc.integer({ min: 0, max: 4095 }),
        n: fc.integer({ min: 1, max: 600 }),
        big: fc.boolean(),
      }),
      fc.record({
        t: fc.constant("unmap" as const),
        page: fc.integer({ min: 0, max: 4095 }),
        n: fc.integer({ min: 1, max: 700 }),
        big: fc.boolean(),
      }),
    );
    fc.assert(
      fc.property(fc.array(op, { minLength: 5, maxLength: 25, size: "max" }), (ops) => {
        const pt = new IoPageTable();
        const model = new Map<number, number>(); // iova page -> hpa page
        const leafOf = new Map<number, { start: number; pages: number }>(); // page -> leaf it belongs to
        for (const o of ops) {
          const start = o.big ? o.page - (o.page % 512) : o.page;
          const pages = Math.min(o.big ? 512 : o.n, 4096 - start);
          if (o.t === "map") {
            const hpaPage = o.big ? 512 * 7 : 100;
            let clash = false;
            for (let p = start; p < start + pages; p++) if (model.has(p)) clash = true;
            if (clash) {
              assert.throws(() => pt.map(iova(start * SZ_4K), hpa(hpaPage * SZ_4K), pages * SZ_4K, RW));
              continue;
            }
            pt.map(iova(start * SZ_4K), hpa(hpaPage * SZ_4K), pages * SZ_4K, RW);
            const leafPages = o.big && pages === 512 ? 512 : 1;
            for (let p = start; p < start + pages; p++) {
              model.set(p, hpaPage + (p - start));
              leafOf.set(p, leafPages === 512 ? { start, pages: 512 } : { start: p, pages: 1 });
            }
          } else {
            // Every leaf touching the range goes, whole.
            let expected = 0;
            const gone = new Set<number>();
            for (let p = start; p < start + pages; p++) {
              const leaf = leafOf.get(p);
              if (leaf && !gone.has(leaf.start)) {
                gone.add(leaf.start);
                expected += leaf.pages * SZ_4K;
                for (let q = leaf.start; q < leaf.start + leaf.pages; q++) {
                  model.delete(q);
                  leafOf.delete(q);
                }
              }
            }
            assert.equal(pt.unmap(iova(start * SZ_4K), pages * SZ_4K), expected);
          }
        }
        for (let p = 0; p < 4096; p += 7) {
          const w = walkOf(pt, p * SZ_4K);
          const m = model.get(p);
          assert.equal(w === undefined ? undefined : w.phys / SZ_4K, m);
        }
      }),
      { numRuns: 120 },
    );
  });
});
