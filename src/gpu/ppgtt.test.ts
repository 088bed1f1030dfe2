import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import type { Hpa } from "../core/index.ts";
import { pfnToHpa } from "../host/index.ts";
import { colorBlt, storeDataImm } from "./commands.ts";
import { PAGE_FAULT } from "./memory.ts";
import { Ppgtt } from "./ppgtt.ts";
import {
  GEN8_CTX_STATUS_ACTIVE_IDLE,
  GEN8_CTX_STATUS_COMPLETE,
  GEN8_PDE_IPS_64K,
  GEN8_PDE_PS_2M,
  GEN8_PDPE_PS_1G,
  GT_ENGINE_BASE,
  I915_ERROR_PAGE_TABLE,
  RING_EIR,
} from "./regs.ts";
import { gpuRig, PAGE, RIG_BDF, type TestPpgtt } from "./test-support/gpu-rig.ts";

const TWO32 = 4294967296;

function walker(r: ReturnType<typeof gpuRig>, root: number): Ppgtt {
  const p = new Ppgtt(r.gpu.memory.dma, r.host.tracer, RIG_BDF, "test");
  p.load(root);
  return p;
}

/** Sets bits in an entry (HPA of its low dword). */
function orEntry(r: ReturnType<typeof gpuRig>, at: Hpa, bits: number): void {
  r.host.physmem.writeU32(at, (r.host.physmem.readU32(at) | bits) >>> 0);
}

/** Virtual page numbers drawn from a few indices per level, so that tables are shared and the walk has depth. */
const vpage = fc
  .tuple(
    fc.constantFrom(0, 1, 511),
    fc.constantFrom(0, 3, 511),
    fc.constantFrom(0, 7, 511),
    fc.integer({ min: 0, max: 511 }),
  )
  .map(([a, b, c, d]) => ((a * 512 + b) * 512 + c) * 512 + d);

describe("PPGTT walker (48-bit, 4 levels)", () => {
  it("translates like a reference map: present pages, read-only pages, huge pages refused, IPS ignored", () => {
    const r = gpuRig();
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(vpage, fc.boolean()), { minLength: 1, maxLength: 24, selector: (m) => m[0] }),
        fc.array(fc.tuple(fc.constantFrom("pdpe-1g", "pde-2m", "pde-ips"), fc.nat()), { maxLength: 3 }),
        fc.array(fc.tuple(vpage, fc.boolean()), { maxLength: 24 }),
        (mappings, marks, extra) => {
          const pt: TestPpgtt = r.ppgtt();
          const ref = new Map<number, { iova: number; writable: boolean }>();
          for (const [page, writable] of mappings) {
            const m = pt.map(page * PAGE, { writable });
            ref.set(page, { iova: m.iova, writable });
          }
          // Marks on directory entries of mapped pages: 1G / 2M bits fault every page below, IPS changes nothing.
          const huge = new Set<string>();
          for (const [kind, n] of marks) {
            const page = mappings[n % mappings.length]![0];
            const level = kind === "pdpe-1g" ? 1 : 2;
            orEntry(
              r,
              pt.entryHpa(page * PAGE, level),
              kind === "pdpe-1g" ? GEN8_PDPE_PS_1G : kind === "pde-2m" ? GEN8_PDE_PS_2M : GEN8_PDE_IPS_64K,
            );
            if (kind !== "pde-ips") huge.add(`${level}:${Math.floor(page / 512 ** (3 - level))}`);
          }
          const p = walker(r, pt.root);
          const queries = [...mappings.map(([page]) => [page, false] as const), ...extra];
          for (const [page, write] of queries) {
            const m = ref.get(page);
            const faulty =
              huge.has(`1:${Math.floor(page / 512 ** 2)}`) ||
              huge.has(`2:${Math.floor(page / 512)}`) ||
              m === undefined ||
              (write && !m.writable);
            const got = p.translate(page * PAGE + 0x123, write);
            if (faulty) assert.equal(got, PAGE_FAULT, `page ${page.toString(16)} write ${write}: ${p.faultReason()}`);
            else assert.equal(got, m!.iova + 0x123, `page ${page.toString(16)}`);
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it("names the level and the reason of each fault, and traces walks and faults", () => {
    const r = gpuRig();
    const pt = r.ppgtt();
    pt.map(0x80_0000_0000); // PML4E[1] PDPE[0] PDE[0] PTE[0]
    const p = walker(r, pt.root);
    assert.equal(p.translate(0x1000), PAGE_FAULT);
    assert.match(p.faultReason(), /^PML4E\[0\] not present/);
    assert.equal(p.translate(0x80_0020_0000), PAGE_FAULT);
    assert.match(p.faultReason(), /^PDE\[1\] not present/);
    assert.equal(p.translate(0x80_0000_1000), PAGE_FAULT);
    assert.match(p.faultReason(), /^PTE\[1\] not present/);
    assert.equal(p.translate(2 ** 48), PAGE_FAULT);
    assert.match(p.faultReason(), /beyond the 48-bit PPGTT/);
    assert.equal(walker(r, -1).translate(0), PAGE_FAULT);
    // A table the IOMMU does not translate.
    pt.writeEntry(pt.entryHpa(0x100_0000_0000, 0), 0x7fff_0000_0000 + 3);
    assert.equal(p.translate(0x100_0000_0000), PAGE_FAULT);
    assert.match(p.faultReason(), /^PDPE\[0\] the table at DMA address 0x7fff00000000 faulted in the IOMMU/);
    assert.ok(p.translate(0x80_0000_0010) > 0);
    assert.ok(r.rec.named("gpu.ppgtt.gma_translate").length >= 1);
    assert.ok(r.rec.named("gpu.ppgtt.fault").some((e) => e.fields.level === "PDE"));
  });

  it("caches translations until invalidated (the TLB), per page and with writability", () => {
    const r = gpuRig();
    const pt = r.ppgtt();
    const a = pt.map(0x1000, { writable: false });
    const p = walker(r, pt.root);
    assert.equal(p.translate(0x1000), a.iova);
    assert.equal(p.translate(0x1000, true), PAGE_FAULT, "a cached read-only translation does not serve a write");
    const frame = r.host.physmem.allocFrame();
    const iova = r.dma.mapPage(frame, 0, PAGE, 0);
    pt.writeEntry(pt.entryHpa(0x1000, 3), iova + 3);
    const walks = p.walks;
    assert.equal(p.translate(0x1000), a.iova, "stale until invalidated, as on hardware");
    assert.equal(p.walks, walks);
    p.invalidate();
    assert.equal(p.translate(0x1000, true), iova);
  });

  it("an engine in a PPGTT context blits and stores through it; a fault halts it with a page-table error", () => {
    const r = gpuRig();
    r.enableExeclists("bcs");
    const pt = r.ppgtt();
    const surface = 0x1_2345_6000; // above 4 GiB: a 48-bit address
    pt.mapRange(surface, 3 * PAGE);
    const c = r.newContext("bcs", { pml4: pt.root });
    c.emit([...colorBlt(surface, 4096, 0, 0, 1024, 3, 0x11223344), ...storeDataImm(surface + 8, 7, "ppgtt")]);
    r.elsp("bcs", c.desc);
    assert.equal(r.gpu.bcs.eir, 0, r.gpu.bcs.last.error);
    assert.equal(pt.u32(surface), 0x11223344);
    assert.equal(pt.u32(surface + 2 * PAGE + 4092), 0x11223344);
    assert.equal(pt.u32(surface + 8), 7);
    // Page 3 is not mapped: the fill faults there.
    const d = r.newContext("bcs", { pml4: pt.root });
    d.emit(colorBlt(surface, 4096, 0, 0, 1024, 4, 0x55667788));
    r.elsp("bcs", d.desc);
    assert.equal(r.reg(GT_ENGINE_BASE.bcs + RING_EIR), I915_ERROR_PAGE_TABLE);
    assert.match(r.gpu.bcs.execlists.lastOut!.error!, /PPGTT fault at address 0x123459000: PTE\[\d+\] not present/);
    assert.equal(
      r.gpu.bcs.execlists.lastOut!.events.at(-1)!.status,
      GEN8_CTX_STATUS_ACTIVE_IDLE | GEN8_CTX_STATUS_COMPLETE,
    );
    assert.equal(pt.u32(surface + 2 * PAGE), 0x55667788, "pages before the fault were written");
    assert.equal(r.gpu.memory.ppgttFaults, 1);
    // The PML4 DMA address round-trips through the image's PDP0 and the PDP registers.
    assert.equal(pt.root % TWO32, r.host.physmem.readU32(pfnToHpa(r.frames.get(d.lrca / PAGE + 1)!, 0x33 * 4)));
  });
});

describe("PPGTT walker and engines on garbage", () => {
  it("a walk through random table contents returns an address or a fault, never throws", () => {
    const r = gpuRig();
    const pt = r.ppgtt();
    const p = walker(r, pt.root);
    fc.assert(
      fc.property(
        fc.array(
          fc.tuple(
            fc.integer({ min: 0, max: 511 }),
            fc.integer({ min: 0, max: 0xffffffff }),
            fc.integer({ min: 0, max: 0xffffffff }),
          ),
          { maxLength: 16 },
        ),
        fc.integer({ min: 0, max: 2 ** 49 }),
        fc.boolean(),
        (entries, addr, write) => {
          const root = pfnToHpa(pt.tables.get(pt.root)!);
          for (const [i, lo, hi] of entries) {
            r.host.physmem.writeU32((root + 8 * i) as Hpa, lo);
            r.host.physmem.writeU32((root + 8 * i + 4) as Hpa, hi);
          }
          p.invalidate();
          const got = p.translate(addr, write);
          assert.ok(got === PAGE_FAULT || (Number.isSafeInteger(got) && got >= 0));
        },
      ),
      { numRuns: 300 },
    );
  });

  it("an engine in a context fed random dwords and a garbage PPGTT completes or halts, never throws", () => {
    const r = gpuRig();
    r.enableExeclists("rcs");
    const pt = r.ppgtt();
    pt.mapRange(0x1000, 2 * PAGE);
    const root = pfnToHpa(pt.tables.get(pt.root)!);
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 0xffffffff }), { minLength: 1, maxLength: 64 }),
        fc.integer({ min: 0, max: 0xffffffff }),
        (words, junk) => {
          r.host.physmem.writeU32((root + 8 * 3) as Hpa, junk);
          const c = r.newContext("rcs", { pml4: pt.root, ringBytes: 2 * PAGE });
          c.emit(words.slice(0, 1000));
          r.elsp("rcs", c.desc);
          const e = r.gpu.rcs;
          assert.ok(e.eir !== 0 || e.execlists.active || e.execlists.lastOut?.ctxId === c.desc.hi);
          // Recover for the next case: a halted engine or a waiting context is reset.
          r.setReg(0x941c, 0x2);
          r.enableExeclists("rcs");
        },
      ),
      { numRuns: 200 },
    );
  });
});
