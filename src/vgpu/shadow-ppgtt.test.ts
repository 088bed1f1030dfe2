import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, type Gfn, type Gpa, type Iova, KernelError, PAGE_SIZE, Tracer, VirtualClock } from "../core/index.ts";
import { type PpgttRef, ShadowPpgtt, type ShadowTablePage } from "./shadow-ppgtt.ts";

const TWO32 = 4294967296;
/** Fake DMA addresses: guest pages at PIN_BASE + gfn pages, shadow tables from TABLE_BASE. */
const PIN_BASE = 0x100_0000_0000;
const TABLE_BASE = 0x200_0000_0000;
const SCRATCH = 0x300_0000_0000 as Iova;

/**
 * A guest with `ramPages` pages of RAM (gfns 0..ramPages-1), page tables it writes into that RAM, and the vendor
 * driver's side of the deps: vfio_dma_rw, a gfn cache with reference counts, shadow table pages.
 */
class FakeVm {
  readonly ram = new Map<number, Uint32Array>();
  readonly refs = new Map<number, number>();
  readonly tables = new Map<number, Uint8Array>();
  private nextPage = 1;
  private nextTable = 0;
  readonly shadow: ShadowPpgtt;

  constructor(
    readonly ramPages: number,
    opts: { maxTables?: number } = {},
  ) {
    this.shadow = new ShadowPpgtt({
      vgpuId: 1,
      tracer: new Tracer(new VirtualClock()),
      readGuest: (at: Gpa, into: Uint8Array) => {
        const g = Math.floor(at / PAGE_SIZE);
        if (g >= this.ramPages) throw new KernelError(Errno.EFAULT, `gpa ${at} is not mapped`);
        const page = this.page(g);
        into.set(new Uint8Array(page.buffer, at % PAGE_SIZE, into.length));
      },
      pinGuestPage: (g: Gfn) => {
        if (g >= this.ramPages) return new KernelError(Errno.EINVAL, `gfn ${g} is not mapped`);
        this.refs.set(g, (this.refs.get(g) ?? 0) + 1);
        return (PIN_BASE + g * PAGE_SIZE) as Iova;
      },
      unpinGuestPage: (g: Gfn) => {
        const n = this.refs.get(g) ?? 0;
        assert.ok(n > 0, `unpin of gfn ${g} with no reference`);
        if (n === 1) this.refs.delete(g);
        else this.refs.set(g, n - 1);
      },
      allocTable: (): ShadowTablePage => {
        const dmaAddr = (TABLE_BASE + this.nextTable++ * PAGE_SIZE) as Iova;
        const data = new Uint8Array(PAGE_SIZE);
        this.tables.set(dmaAddr, data);
        return {
          dmaAddr,
          write: (off, d) => data.set(d, off),
          read: (off, into) => into.set(data.subarray(off, off + into.length)),
          free: () => {
            assert.ok(this.tables.delete(dmaAddr), "double free of a shadow table");
          },
        };
      },
      scratch: SCRATCH,
      ...(opts.maxTables !== undefined ? { maxTables: opts.maxTables } : {}),
    });
  }

  page(g: number): Uint32Array {
    let p = this.ram.get(g);
    if (p === undefined) {
      p = new Uint32Array(1024);
      this.ram.set(g, p);
    }
    return p;
  }

  allocPage(): number {
    return this.nextPage++;
  }

  entry(table: number, i: number): number {
    const p = this.page(table);
    return p[2 * i]! + p[2 * i + 1]! * TWO32;
  }

  setEntry(table: number, i: number, v: number): void {
    const p = this.page(table);
    p[2 * i] = v % TWO32;
    p[2 * i + 1] = Math.floor(v / TWO32);
  }

  /** What the engine reaches at page `vpn` through the shadow rooted at `root`: [DMA address, writable] or null. */
  walkShadow(root: number, vpn: number): [number, boolean] | null {
    let table = root;
    let rw = true;
    for (let level = 0; level < 4; level++) {
      const i = Math.floor(vpn / 2 ** (9 * (3 - level))) % 512;
      const data = this.tables.get(table);
      assert.ok(data !== undefined, `the shadow names table ${table.toString(16)}, which is not a live shadow page`);
      const dv = new DataView(data.buffer);
      const lo = dv.getUint32(8 * i, true);
      const hi = dv.getUint32(8 * i + 4, true);
      if ((lo & 1) === 0) return null;
      if ((lo & 2) === 0) rw = false;
      table = (lo & 0xfffff000) + (hi & 0xfffff) * TWO32;
    }
    return [table, rw];
  }
}

/** A guest PPGTT in a FakeVm's RAM, and the reference map of what it maps. */
class GuestTables {
  readonly pml4: number;
  readonly ref = new Map<number, { gfn: number; rw: boolean }>();

  constructor(readonly vm: FakeVm) {
    this.pml4 = vm.allocPage();
  }

  /** Maps page `vpn` to `gfn` (allocating tables), or unmaps it (`gfn` undefined: the PTE cleared). */
  set(vpn: number, gfn: number | undefined, rw = true): void {
    let table = this.pml4;
    for (let level = 0; level < 3; level++) {
      const i = Math.floor(vpn / 2 ** (9 * (3 - level))) % 512;
      const e = this.vm.entry(table, i);
      if ((e & 1) === 0) {
        if (gfn === undefined) return;
        const t = this.vm.allocPage();
        this.vm.setEntry(table, i, t * PAGE_SIZE + 3);
        table = t;
      } else table = Math.floor(e / PAGE_SIZE);
    }
    this.vm.setEntry(table, vpn % 512, gfn === undefined ? 0 : gfn * PAGE_SIZE + (rw ? 3 : 1));
    if (gfn === undefined) this.ref.delete(vpn);
    else this.ref.set(vpn, { gfn, rw });
  }
}

/** Every page the reference maps is reached through the shadow, and nothing else in `probe` is. */
function assertShadowMatches(vm: FakeVm, g: GuestTables, ref: PpgttRef, probe: readonly number[]): void {
  for (const vpn of new Set([...probe, ...g.ref.keys()])) {
    const want = g.ref.get(vpn);
    const got = vm.walkShadow(ref.pml4, vpn);
    if (want === undefined) assert.equal(got, null, `vpn ${vpn} is not mapped by the guest`);
    else assert.deepEqual(got, [PIN_BASE + want.gfn * PAGE_SIZE, want.rw], `vpn ${vpn}`);
  }
  const named = new Map<number, number>();
  for (const { gfn } of g.ref.values()) named.set(gfn, (named.get(gfn) ?? 0) + 1);
  assert.deepEqual(new Map([...vm.refs].sort()), new Map([...named].sort()), "one pin reference per PTE");
  vm.shadow.checkInvariants();
}

// Pages spread over the 48-bit space, so that tables at every level are shared and split.
const vpnArb = fc.oneof(
  fc.integer({ min: 0, max: 2047 }),
  fc.integer({ min: 0, max: 2 ** 36 - 1 }),
  fc.constantFrom(0, 511, 512, 2 ** 18, 2 ** 27, 2 ** 36 - 1),
);

describe("shadow PPGTT", () => {
  it("matches a reference map through any sequence of guest changes, re-walked at each submission", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.array(fc.tuple(vpnArb, fc.option(fc.integer({ min: 1, max: 200 }), { nil: undefined }), fc.boolean()), {
            maxLength: 12,
          }),
          { minLength: 1, maxLength: 6 },
        ),
        (rounds) => {
          const vm = new FakeVm(4096);
          const g = new GuestTables(vm);
          const root = (g.pml4 * PAGE_SIZE) as Gpa;
          // Announced (g2v): the shadow lives across the rounds, so each walk compares with the last one.
          assert.equal(vm.shadow.announce(root), undefined);
          const probe: number[] = [];
          for (const changes of rounds) {
            for (const [vpn, gfn, rw] of changes) {
              // Guest data pages live above the table pages the test allocates (1..~250).
              g.set(vpn, gfn === undefined ? undefined : 1000 + gfn, rw);
              probe.push(vpn);
            }
            const ref = vm.shadow.acquire(root);
            assert.ok(!(ref instanceof KernelError), ref instanceof KernelError ? ref.message : "");
            assertShadowMatches(vm, g, ref, probe);
            vm.shadow.release(ref);
          }
          vm.shadow.unannounce(root);
          assert.equal(vm.refs.size, 0, "the shadow goes with the last announcement");
          assert.equal(vm.tables.size, 0);
        },
      ),
      { numRuns: 60 },
    );
  });

  it("an announced root keeps its shadow between submissions and re-shadows only what changed", () => {
    const vm = new FakeVm(4096);
    const g = new GuestTables(vm);
    for (let i = 0; i < 64; i++) g.set(i, 1000 + i);
    assert.equal(vm.shadow.announce((g.pml4 * PAGE_SIZE) as Gpa), undefined);
    const first = vm.shadow.stats();
    assert.equal(first.tables, 4);
    assert.equal(first.pteRefs, 64);
    g.set(5, 2000);
    const ref = vm.shadow.acquire((g.pml4 * PAGE_SIZE) as Gpa) as PpgttRef;
    const st = vm.shadow.stats();
    assert.equal(st.entryChanges - first.entryChanges, 1, "one PTE re-shadowed");
    assert.equal(st.tableReads - first.tableReads, 4, "every guest table read once");
    assertShadowMatches(vm, g, ref, [5]);
    vm.shadow.release(ref);
    vm.shadow.unannounce((g.pml4 * PAGE_SIZE) as Gpa);
    assert.equal(vm.refs.size, 0);
    assert.equal(vm.tables.size, 0);
  });

  it("rejects a PTE outside the VM's memory, a table outside it and a huge page; nothing is half-shadowed", () => {
    const vm = new FakeVm(256);
    const g = new GuestTables(vm);
    g.set(1, 100);
    g.set(2, 9999); // beyond 256 pages of RAM
    const bad = vm.shadow.acquire((g.pml4 * PAGE_SIZE) as Gpa);
    assert.ok(bad instanceof KernelError);
    assert.equal(bad.errno, Errno.ENXIO);
    assert.match(bad.message, /maps GPA 0x270f000, which is not memory of this VM/);
    assert.equal(vm.refs.size, 0, "the pin taken before the failure is dropped with the failed walk's tables");
    assert.equal(vm.tables.size, 0);
    g.set(2, undefined);
    // A PDE pointing at a table outside memory.
    vm.setEntry(g.pml4, 1, 9000 * PAGE_SIZE + 3);
    const t = vm.shadow.acquire((g.pml4 * PAGE_SIZE) as Gpa);
    assert.ok(t instanceof KernelError);
    assert.equal(t.errno, Errno.EFAULT);
    vm.setEntry(g.pml4, 1, 0);
    // A 2 MiB page in a PD.
    const pd = vm.allocPage();
    const pdp = vm.allocPage();
    vm.setEntry(g.pml4, 2, pdp * PAGE_SIZE + 3);
    vm.setEntry(pdp, 0, pd * PAGE_SIZE + 3);
    vm.setEntry(pd, 0, 100 * PAGE_SIZE + 3 + 0x80);
    const h = vm.shadow.acquire((g.pml4 * PAGE_SIZE) as Gpa);
    assert.ok(h instanceof KernelError);
    assert.match(h.message, /2 MiB page/);
    assert.equal(vm.refs.size, 0);
    assert.equal(vm.tables.size, 0);
  });

  it("bounds the shadow tables a guest can make it allocate", () => {
    const vm = new FakeVm(100_000, { maxTables: 8 });
    const g = new GuestTables(vm);
    for (let i = 0; i < 10; i++) g.set(i * 2 ** 27, 50_000 + i); // ten PDPs, PDs and PTs
    const r = vm.shadow.acquire((g.pml4 * PAGE_SIZE) as Gpa);
    assert.ok(r instanceof KernelError);
    assert.equal(r.errno, Errno.ENOSPC);
    assert.equal(vm.tables.size, 0);
  });

  it("dma_unmap points the shadow PTEs at the scratch page, drops the pins, and the next walk re-checks them", () => {
    const vm = new FakeVm(4096);
    const g = new GuestTables(vm);
    g.set(7, 1500);
    g.set(8, 1501);
    vm.shadow.announce((g.pml4 * PAGE_SIZE) as Gpa);
    assert.equal(vm.shadow.dmaUnmap(1500 as Gfn, 1500 as Gfn), 1);
    assert.equal(vm.refs.get(1500), undefined);
    const ref = vm.shadow.acquire((g.pml4 * PAGE_SIZE) as Gpa) as PpgttRef;
    assert.deepEqual(vm.walkShadow(ref.pml4, 7), [PIN_BASE + 1500 * PAGE_SIZE, true], "re-shadowed (re-mapped)");
    vm.shadow.dmaUnmap(1500 as Gfn, 1501 as Gfn);
    assert.deepEqual(vm.walkShadow(ref.pml4, 7), [SCRATCH, true]);
    vm.shadow.release(ref);
    vm.shadow.reset();
    assert.equal(vm.refs.size, 0);
    assert.equal(vm.tables.size, 0);
  });
});
