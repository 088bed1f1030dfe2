/** The PC layout, GPA -> HVA translation (against a linear-scan reference) and the guest CPU's RAM accesses. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, gpa, hva, isKernelError, SZ_1G } from "../core/index.ts";
import { Host, PROT_READ, PROT_WRITE } from "../host/index.ts";
import {
  formatBytes,
  GuestMemoryMap,
  MAX_LOW_MEM_BYTES,
  MappedGuestRam,
  PCI_MMIO32_END,
  pcLayout,
  type RamBlock,
} from "./memory.ts";

const MiB = 1024 * 1024;
const GiB = SZ_1G;

const isErrno = (errno: number, re?: RegExp) => (e: unknown) =>
  isKernelError(e) && e.errno === errno && (re === undefined || re.test(e.message));

describe("pcLayout", () => {
  it("puts 3 GiB below 4 GiB, the rest above, then the hot-plug window, then the 64-bit PCI window", () => {
    const l = pcLayout({ memoryBytes: 16 * GiB });
    assert.deepEqual([l.lowMemBytes, l.highMemBytes], [3 * GiB, 13 * GiB]);
    assert.deepEqual(l.pciHole, { start: 3 * GiB, end: 4 * GiB });
    assert.deepEqual(l.mmio32, { start: 3 * GiB, end: PCI_MMIO32_END });
    assert.deepEqual(l.hotplug, { start: 17 * GiB, end: 21 * GiB }, "maxmem defaults to memory + 4 GiB");
    assert.deepEqual(l.mmio64, { start: 21 * GiB, end: 53 * GiB });
    assert.deepEqual(l.io, { start: 0xc000, end: 0x10000 });
  });

  it("keeps a small guest entirely below 4 GiB with the 32-bit window still from 3 GiB", () => {
    const l = pcLayout({ memoryBytes: 64 * MiB, maxMemoryBytes: 64 * MiB });
    assert.deepEqual([l.lowMemBytes, l.highMemBytes], [64 * MiB, 0]);
    assert.deepEqual(l.pciHole, { start: 64 * MiB, end: 4 * GiB });
    assert.equal(l.mmio32.start, 3 * GiB);
    assert.deepEqual(l.hotplug, { start: 4 * GiB, end: 4 * GiB }, "no hot-plug room: an empty window");
    assert.equal(l.mmio64.start, 4 * GiB);
  });

  it("honours lowMemBytes up to 3.5 GiB and refuses bad sizes with a sentence", () => {
    const l = pcLayout({ memoryBytes: 8 * GiB, lowMemBytes: MAX_LOW_MEM_BYTES });
    assert.equal(l.mmio32.start, MAX_LOW_MEM_BYTES);
    assert.equal(l.highMemBytes, 8 * GiB - MAX_LOW_MEM_BYTES);
    assert.throws(() => pcLayout({ memoryBytes: 8 * GiB, lowMemBytes: 0xf0000000 }), isErrno(Errno.EINVAL, /at most/));
    assert.throws(() => pcLayout({ memoryBytes: GiB, lowMemBytes: 2 * GiB }), isErrno(Errno.EINVAL, /memoryBytes/));
    assert.throws(() => pcLayout({ memoryBytes: 4097 }), isErrno(Errno.EINVAL, /multiple of the page size/));
    assert.throws(() => pcLayout({ memoryBytes: 0 }), isErrno(Errno.EINVAL));
    assert.throws(() => pcLayout({ memoryBytes: GiB, maxMemoryBytes: MiB }), isErrno(Errno.EINVAL, /maxMemoryBytes/));
  });

  it("formats sizes with the largest exact unit", () => {
    assert.equal(formatBytes(16 * GiB), "16 GiB");
    assert.equal(formatBytes(1536 * MiB), "1536 MiB");
    assert.equal(formatBytes(4096), "4 KiB");
    assert.equal(formatBytes(100), "100 bytes");
  });
});

function block(name: string, at: number, size: number, base: number): RamBlock {
  return { name, gpa: gpa(at), size, hva: hva(base), hotplugged: false };
}

describe("GuestMemoryMap", () => {
  it("translates GPA -> HVA as a linear scan would, for any set of disjoint blocks", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 0, max: 16 })), {
          minLength: 1,
          maxLength: 12,
        }),
        fc.array(fc.integer({ min: 0, max: 2000 }), { minLength: 1, maxLength: 40 }),
        (shape, probes) => {
          const map = new GuestMemoryMap();
          const blocks: RamBlock[] = [];
          let at = 0;
          shape.forEach(([pages, gap], i) => {
            at += gap * 4096;
            const b = block(`b${i}`, at, pages * 4096, 0x7000_0000_0000 + i * 0x1_0000_0000);
            blocks.push(b);
            at += pages * 4096;
          });
          // Insert in a scrambled order: the map keeps them sorted.
          for (const b of [...blocks].reverse()) map.add(b);
          for (const p of probes) {
            const addr = p * 2048;
            const ref = blocks.find((b) => addr >= b.gpa && addr < b.gpa + b.size);
            assert.equal(map.translate(gpa(addr)), ref === undefined ? -1 : ref.hva + (addr - ref.gpa));
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  it("refuses an overlapping block and finds exact ranges for unplug", () => {
    const map = new GuestMemoryMap();
    map.add(block("a", 0, 8192, 0x10000));
    map.add(block("b", 0x10000, 4096, 0x20000));
    assert.throws(() => map.add(block("c", 4096, 8192, 0x30000)), isErrno(Errno.EEXIST, /'c' .* overlaps 'a'/));
    assert.equal(map.exact(gpa(0x10000), 4096)?.name, "b");
    assert.equal(map.exact(gpa(0x10000), 8192), undefined);
    assert.equal(map.describe(), "a 0x0+8 KiB, b 0x10000+4 KiB");
    map.remove(map.exact(gpa(0), 8192)!);
    assert.equal(map.translate(gpa(0)), -1);
    assert.equal(map.totalBytes, 4096);
  });
});

describe("MappedGuestRam", () => {
  function guest() {
    const host = new Host({ memoryBytes: 64 * MiB });
    const mm = host.spawn("t").mm;
    const map = new GuestMemoryMap();
    const a = mm.mmap(2 * 4096, PROT_READ | PROT_WRITE);
    const b = mm.mmap(2 * 4096, PROT_READ | PROT_WRITE);
    // Two adjacent blocks in GPA space, far apart in HVA space; then a hole.
    map.add(block("lo", 0, 8192, a));
    map.add(block("hi", 8192, 8192, b));
    return { mm, mem: new MappedGuestRam(map, mm), a, b };
  }

  it("reads and writes across pages and blocks through each block's own HVA", () => {
    const { mm, mem, b } = guest();
    const data = Uint8Array.from({ length: 100 }, (_, i) => i + 1);
    mem.write(gpa(8192 - 50), data);
    const back = new Uint8Array(100);
    mem.read(gpa(8192 - 50), back);
    assert.deepEqual(back, data);
    const second = new Uint8Array(50);
    mm.read(hva(b), second);
    assert.deepEqual(second, data.subarray(50), "the second half landed in the second block's mapping");
  });

  it("round-trips fixed-size values, 64-bit exact below 2^53", () => {
    const { mem } = guest();
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 16384 - 8 }), fc.maxSafeNat(), (at, v) => {
        mem.writeU64(gpa(at), v);
        assert.equal(mem.readU64(gpa(at)), v);
        mem.writeU32(gpa(at), v % 2 ** 32);
        assert.equal(mem.readU32(gpa(at)), v % 2 ** 32);
        mem.writeU16(gpa(at), v & 0xffff);
        assert.equal(mem.readU16(gpa(at)), v & 0xffff);
        mem.writeU8(gpa(at), v & 0xff);
        assert.equal(mem.readU8(gpa(at)), v & 0xff);
      }),
      { numRuns: 200 },
    );
  });

  it("fails with EFAULT naming the GPA and the RAM map outside RAM", () => {
    const { mem } = guest();
    assert.throws(
      () => mem.readU32(gpa(16384)),
      isErrno(Errno.EFAULT, /GPA 0x4000 is not RAM \(RAM: lo 0x0\+8 KiB, hi/),
    );
    assert.throws(() => mem.write(gpa(16384 - 2), new Uint8Array(4)), isErrno(Errno.EFAULT));
    assert.equal(mem.hvaOf(gpa(16384)), -1);
  });
});
