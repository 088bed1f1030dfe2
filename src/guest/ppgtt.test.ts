import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { type Gpa, gpa, KernelError, PAGE_SIZE } from "../core/index.ts";
import { GEN8_PAGE_PRESENT, GEN8_PAGE_RW } from "../gpu/index.ts";
import { GuestPpgtt, GVA_BASE, gva } from "./ppgtt.ts";
import { FakeMemory, FakePages } from "./test-support/fake-gpu.ts";

function setup() {
  const memory = new FakeMemory(64 * 1024 * 1024);
  const pages = new FakePages(memory.size);
  return { memory, pages, vm: new GuestPpgtt(memory, pages) };
}

describe("guest PPGTT (4-level, guest-physical entries)", () => {
  it("maps pages through PML4 -> PDP -> PD -> PT, each entry present | RW | GPA, and walks them back", () => {
    const { memory, vm } = setup();
    const at = vm.allocVa(3 * PAGE_SIZE);
    assert.ok(at >= GVA_BASE, "GPU virtual addresses start above the 4 GiB of graphics memory");
    vm.map(at, gpa(0x20_0000), 3);
    const w = vm.walk(at + PAGE_SIZE + 0x18);
    assert.equal(w.gpa, 0x20_1018);
    assert.deepEqual(
      w.steps.map((s) => s.level),
      ["PML4E", "PDPE", "PDE", "PTE"],
    );
    for (const s of w.steps) assert.equal(s.entry % 4, GEN8_PAGE_PRESENT | GEN8_PAGE_RW);
    assert.equal(w.steps[0]!.table, vm.pml4);
    // The PTE is in guest memory where the walk says.
    const pte = memory.readU32(gpa(w.steps[3]!.table + 8 * w.steps[3]!.index));
    assert.equal(pte, 0x20_1000 | GEN8_PAGE_PRESENT | GEN8_PAGE_RW);
    assert.equal(vm.mappedPages, 3);
    assert.equal(vm.tables.size, 4, "one table per level for a small range");
    vm.map(at, gpa(0x30_0000), 1, true);
    assert.equal(vm.walk(at).steps[3]!.entry, 0x30_0000 | GEN8_PAGE_PRESENT, "read-only: RW clear");
    vm.unmap(at, 3);
    assert.equal(vm.walk(at).gpa, undefined);
    assert.equal(vm.mappedPages, 0);
  });

  it("property: every mapped address walks to its page, every other one does not", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ page: fc.integer({ min: 0, max: 2 ** 24 }), target: fc.integer({ min: 1, max: 4000 }) }), {
          maxLength: 40,
        }),
        (maps) => {
          const { vm } = setup();
          const ref = new Map<number, number>();
          for (const m of maps) {
            const at = gva(GVA_BASE + m.page * PAGE_SIZE);
            vm.map(at, gpa(m.target * PAGE_SIZE), 1);
            ref.set(at, m.target * PAGE_SIZE);
          }
          for (const [at, target] of ref) assert.equal(vm.walk(at + 5).gpa, target + 5);
          assert.equal(vm.walk(GVA_BASE + (2 ** 24 + 1) * PAGE_SIZE).gpa, undefined);
          assert.equal(vm.mappedPages, ref.size);
        },
      ),
      { numRuns: 50 },
    );
  });

  it("refuses unaligned or out-of-range addresses with EINVAL, and frees every table on destroy", () => {
    const { pages, vm } = setup();
    assert.throws(
      () => vm.map(gva(GVA_BASE + 1), gpa(0), 1),
      (e: unknown) => e instanceof KernelError && e.errno === 22,
    );
    assert.throws(() => vm.map(gva(2 ** 48), gpa(0), 1), /below 2\^48/);
    vm.map(vm.allocVa(PAGE_SIZE), gpa(0x1000) as Gpa, 1);
    const live = pages.live;
    vm.destroy();
    assert.equal(pages.live, live - 4);
    assert.equal(vm.tables.size, 0);
  });
});
