/**
 * Property: random sequences of MAP/UNMAP, vfio_pin_pages/unpin_pages, vfio_dma_rw, IOMMU group attach/detach and
 * dirty tracking keep pins, locked_vm and physical-memory pin counts balanced after every step (whatever fails with an
 * errno), and release returns all of them to zero.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { iova, KernelError, PAGE_SIZE, type Pfn } from "../../core/index.ts";
import type { VfioGroupAttachment } from "../driver.ts";
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
  VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP,
} from "../uapi/index.ts";
import { FakeMdev, Type1Fixture } from "./testing.ts";

const RAM_PAGES = 256;
const IOVA_PAGES = 64;

type Op =
  | { op: "map"; start: number; len: number; voff: number; flags: number }
  | { op: "unmap"; start: number; len: number }
  /** Unmap whole mappings: `count` of them from the `pick`-th (so v2 accepts it and pinned pages get notified). */
  | { op: "unmapWhole"; pick: number; count: number }
  | { op: "unmapAll" }
  /** `pick` chooses a mapped page when any exists (raw IOVA page otherwise, or when `raw`). */
  | { op: "pin"; dev: number; page: number; pick: number; raw: boolean; npage: number; prot: number }
  | { op: "unpin"; dev: number; pick: number }
  | { op: "rw"; page: number; len: number; write: boolean }
  | { op: "iommu"; attach: boolean }
  | { op: "dirty"; flags: number }
  | { op: "bitmap" };

const page = fc.nat({ max: IOVA_PAGES - 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      op: fc.constant("map" as const),
      start: page,
      len: fc.integer({ min: 1, max: 6 }),
      voff: fc.nat({ max: RAM_PAGES - 8 }),
      flags: fc.constantFrom(
        VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        VFIO_DMA_MAP_FLAG_READ,
        VFIO_DMA_MAP_FLAG_WRITE,
      ),
    }),
    weight: 4,
  },
  {
    arbitrary: fc.record({ op: fc.constant("unmap" as const), start: page, len: fc.integer({ min: 1, max: 12 }) }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      op: fc.constant("unmapWhole" as const),
      pick: fc.nat(),
      count: fc.integer({ min: 1, max: 2 }),
    }),
    weight: 2,
  },
  { arbitrary: fc.constant({ op: "unmapAll" as const }), weight: 1 },
  {
    arbitrary: fc.record({
      op: fc.constant("pin" as const),
      dev: fc.nat({ max: 1 }),
      page,
      pick: fc.nat(),
      raw: fc.nat({ max: 4 }).map((n) => n === 0),
      npage: fc.integer({ min: 1, max: 3 }),
      prot: fc.integer({ min: 1, max: 3 }),
    }),
    weight: 5,
  },
  { arbitrary: fc.record({ op: fc.constant("unpin" as const), dev: fc.nat({ max: 1 }), pick: fc.nat() }), weight: 3 },
  {
    arbitrary: fc.record({
      op: fc.constant("rw" as const),
      page,
      len: fc.integer({ min: 1, max: 3 * PAGE_SIZE }),
      write: fc.boolean(),
    }),
    weight: 1,
  },
  { arbitrary: fc.record({ op: fc.constant("iommu" as const), attach: fc.boolean() }), weight: 1 },
  {
    arbitrary: fc.record({
      op: fc.constant("dirty" as const),
      flags: fc.constantFrom(VFIO_IOMMU_DIRTY_PAGES_FLAG_START, VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP),
    }),
    weight: 1,
  },
  { arbitrary: fc.constant({ op: "bitmap" as const }), weight: 1 },
);

function run(ops: readonly Op[], rlimitPages: number): void {
  const f = new Type1Fixture({ rlimitMemlockBytes: rlimitPages * PAGE_SIZE, trace: false });
  const ram = f.ram(RAM_PAGES * PAGE_SIZE);
  f.emulatedGroup("mdev-0");
  f.emulatedGroup("mdev-1");
  const devs = [new FakeMdev("mdev-0", () => f.backend), new FakeMdev("mdev-1", () => f.backend)];
  for (const d of devs) f.backend.registerDevice(d);
  const iommuGroup = f.iommuGroup({ attach: false });
  let attached: VfioGroupAttachment | undefined;
  const physmem = f.host.physmem;

  const check = (step: string) => {
    f.backend.checkInvariants();
    const s = f.backend.stats();
    assert.equal(f.mm.lockedVm(), s.lockedVm, `${step}: locked_vm`);
    assert.equal(f.mm.stats().pinnedPages, s.iommuPinnedPages + s.emulatedPinnedPages, `${step}: mm pins`);
    // Every emulated pin's reference count is what the devices believe they hold.
    const held = new Map<number, number>();
    for (const d of devs) for (const [a, n] of d.pinned) held.set(a, (held.get(a) ?? 0) + n);
    const pins = new Map<number, number>();
    // Physmem pins expected per frame: one per emulated pin (whatever its reference count) and one per IOMMU-mapped
    // page (mappings may alias the same memory, so a frame can be pinned several times).
    const want = new Map<number, number>();
    const add = (pfn: number) => want.set(pfn, (want.get(pfn) ?? 0) + 1);
    const domain = f.backend.iommuDomain();
    for (const m of f.backend.mappings()) {
      for (const p of m.pins) {
        pins.set(p.iova, p.refCount);
        add(p.pfn);
      }
      if (m.iommuMapped) {
        for (let a = m.iova; a < m.iova + m.size; a += PAGE_SIZE) {
          const hpa = domain!.iovaToPhys(iova(a));
          assert.notEqual(hpa, -1, `${step}: iova ${a} of an IOMMU-mapped mapping is not in the domain`);
          add(hpa / PAGE_SIZE);
        }
      }
    }
    assert.deepEqual(pins, held, `${step}: reference counts`);
    for (const [pfn, n] of want) assert.equal(physmem.pinCount(pfn as Pfn), n, `${step}: pin count of pfn ${pfn}`);
    let total = 0;
    for (const n of want.values()) total += n;
    assert.equal(total, f.mm.stats().pinnedPages, `${step}: pins taken through the VMM`);
  };

  for (const [i, o] of ops.entries()) {
    try {
      switch (o.op) {
        case "map":
          f.map(o.start * PAGE_SIZE, ram + o.voff * PAGE_SIZE, o.len * PAGE_SIZE, o.flags);
          break;
        case "unmap":
          f.unmap(o.start * PAGE_SIZE, o.len * PAGE_SIZE);
          break;
        case "unmapAll":
          f.unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL);
          break;
        case "pin": {
          const mapped: number[] = [];
          for (const m of f.backend.mappings())
            for (let a = m.iova; a < m.iova + m.size; a += PAGE_SIZE) mapped.push(a);
          const at = o.raw || mapped.length === 0 ? o.page * PAGE_SIZE : mapped[o.pick % mapped.length]!;
          devs[o.dev]!.pin(at, o.npage, o.prot);
          break;
        }
        case "unmapWhole": {
          const maps = f.backend.mappings();
          if (maps.length === 0) break;
          const first = maps[o.pick % maps.length]!;
          const last = maps[Math.min(maps.length - 1, (o.pick % maps.length) + o.count - 1)]!;
          f.unmap(first.iova, last.iova + last.size - first.iova);
          break;
        }
        case "unpin": {
          const keys = [...devs[o.dev]!.pinned.keys()];
          if (keys.length > 0) devs[o.dev]!.unpin(keys[o.pick % keys.length]!);
          break;
        }
        case "rw":
          f.backend.dmaRw(iova(o.page * PAGE_SIZE), new Uint8Array(o.len), o.write);
          break;
        case "iommu":
          if (o.attach && attached === undefined) {
            f.backend.attachGroup(iommuGroup.group);
            attached = iommuGroup.group;
          } else if (!o.attach && attached !== undefined) {
            f.backend.detachGroup(attached);
            attached = undefined;
          }
          break;
        case "dirty":
          f.dirty(o.flags);
          break;
        case "bitmap":
          f.getBitmap(0, IOVA_PAGES * PAGE_SIZE);
          break;
      }
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
    }
    check(`step ${i} ${o.op}`);
  }
  f.backend.release();
  assert.equal(f.mm.lockedVm(), 0);
  assert.equal(f.mm.stats().pinnedPages, 0);
  assert.equal(physmem.stats().pinnedFrames, 0);
  assert.equal(f.backend.stats().mappings, 0);
  assert.equal(f.host.iommu.domainOf(iommuGroup.bdf), f.host.iommu.group(iommuGroup.group.id).defaultDomain);
  assert.ok(
    f.host.iommu.domains().every((d) => d.type !== "unmanaged"),
    "the container's domain is freed",
  );
}

describe("type1 balance (property)", () => {
  it("pins, locked_vm and physmem pins stay balanced and return to zero after release", () => {
    fc.assert(
      fc.property(
        fc.array(opArb, { minLength: 1, maxLength: 40, size: "max" }),
        fc.constantFrom(8, 40, 100_000),
        (ops, limit) => {
          run(ops, limit);
        },
      ),
      { numRuns: 120 },
    );
  });
});
