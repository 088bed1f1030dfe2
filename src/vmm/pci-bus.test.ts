/** BAR windows (natural alignment, disjointness under random alloc/free), address dispatch and the guest bus. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, isKernelError } from "../core/index.ts";
import { AddressDispatch, allOnes, type BarAccess, GuestPciBus, guestBdf, WindowAllocator } from "./pci-bus.ts";

const isErrno = (errno: number, re?: RegExp) => (e: unknown) =>
  isKernelError(e) && e.errno === errno && (re === undefined || re.test(e.message));

describe("WindowAllocator", () => {
  it("places naturally aligned, disjoint ranges inside the window, reusing freed space", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.record({ alloc: fc.integer({ min: 2, max: 16 }) }), fc.record({ free: fc.nat(20) })), {
          maxLength: 60,
        }),
        (ops) => {
          const w = new WindowAllocator("test", { start: 0x10000, end: 0x90000 });
          const live: number[] = [];
          for (const op of ops) {
            if ("alloc" in op) {
              const size = 2 ** op.alloc;
              try {
                live.push(w.alloc(size, size, `r${live.length}`));
              } catch (e) {
                assert.ok(isKernelError(e) && e.errno === Errno.ENOSPC);
              }
            } else if (live.length > 0) {
              const [start] = live.splice(op.free % live.length, 1);
              w.free(start!);
            }
          }
          const a = w.allocations();
          for (let i = 0; i < a.length; i++) {
            const r = a[i]!;
            const size = r.end - r.start;
            assert.equal(r.start % size, 0, "naturally aligned");
            assert.ok(r.start >= 0x10000 && r.end <= 0x90000, "inside the window");
            if (i > 0) assert.ok(a[i - 1]!.end <= r.start, "disjoint and sorted");
          }
          assert.equal(a.length, live.length);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("says which window is full and what holds it", () => {
    const w = new WindowAllocator("32-bit MMIO", { start: 0, end: 0x2000 });
    w.alloc(0x1000, 0x1000, "dev BAR0");
    w.alloc(0x1000, 0x1000, "dev BAR1");
    assert.throws(
      () => w.alloc(16, 16, "late BAR"),
      isErrno(Errno.ENOSPC, /late BAR in the 32-bit MMIO window .*dev BAR0 0x0/),
    );
  });
});

class Recorder implements BarAccess {
  readonly log: string[] = [];
  barRead(bar: number, offset: number, size: number): number {
    this.log.push(`r${bar}:${offset}:${size}`);
    return 0x1234;
  }
  barWrite(bar: number, offset: number, size: number, value: number): void {
    this.log.push(`w${bar}:${offset}:${size}=${value}`);
  }
}

describe("AddressDispatch", () => {
  it("sends an access to the BAR decoding it, with the offset inside the BAR", () => {
    const d = new AddressDispatch("MMIO range");
    const t = new Recorder();
    d.map(0x2000, 0x1000, t, 2, "dev BAR2");
    d.map(0x1000, 0x1000, t, 0, "dev BAR0");
    assert.equal(d.read(0x1004, 4), 0x1234);
    assert.equal(d.write(0x2ff8, 8, 7), true);
    assert.equal(d.read(0x3000, 4), -1, "nothing decodes the end address");
    assert.equal(d.write(0xfff, 1, 0), false);
    assert.deepEqual(t.log, ["r0:4:4", "w2:4088:8=7"]);
    assert.throws(() => d.map(0x1800, 0x1000, t, 4, "other"), isErrno(Errno.EEXIST, /overlaps dev BAR0/));
    d.unmap(t, 0);
    assert.equal(d.read(0x1004, 4), -1);
    assert.deepEqual(
      d.mappings().map((m) => m.owner),
      ["dev BAR2"],
    );
  });
});

describe("GuestPciBus", () => {
  it("hands out slots from 2, refuses taken or reserved ones, and reads all ones from empty slots", () => {
    const bus = new GuestPciBus({
      io: { start: 0xc000, end: 0x10000 },
      mmio32: { start: 0xc0000000, end: 0xfec00000 },
      mmio64: { start: 2 ** 33, end: 2 ** 34 },
    });
    assert.equal(bus.reserveSlot(), 2);
    const fn = { configRead: () => 0x11, configWrite: () => {} };
    bus.plug(2, fn);
    assert.equal(bus.reserveSlot(), 3);
    assert.throws(() => bus.reserveSlot(2), isErrno(Errno.EBUSY, /0000:00:02.0/));
    assert.throws(() => bus.reserveSlot(1), isErrno(Errno.EINVAL));
    assert.equal(bus.configRead(2, 0, 4), 0x11);
    assert.equal(bus.configRead(5, 0, 4), 0xffffffff);
    assert.equal(bus.configRead(5, 0, 2), 0xffff);
    assert.deepEqual(bus.occupied(), [2]);
    bus.unplug(2);
    assert.equal(bus.reserveSlot(), 2);
    assert.equal(guestBdf(0x1f), "0000:00:1f.0");
    assert.equal(allOnes(1), 0xff);
  });
});
