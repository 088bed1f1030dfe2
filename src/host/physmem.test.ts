import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, hpa, KernelError, type Pfn, TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { type ExternalBacking, hpaToPfn, PhysicalMemory, pfnToHpa } from "./physmem.ts";

const mk = (bytes = 64 * 1024 * 1024) => {
  const tracer = new Tracer(new VirtualClock());
  return { mem: new PhysicalMemory({ sizeBytes: bytes, tracer }), tracer };
};

describe("PhysicalMemory", () => {
  it("declares terabytes and pays only for touched frames", () => {
    const { mem } = mk(4 * 2 ** 40);
    assert.equal(mem.totalFrames, 2 ** 30);
    const f = mem.allocFrame();
    assert.equal(mem.stats().touchedFrames, 0);
    assert.equal(
      mem.frameForRead(f)!.every((b) => b === 0),
      true,
    );
    mem.write(pfnToHpa(f, 10), new Uint8Array([1, 2, 3]));
    assert.equal(mem.stats().touchedFrames, 1);
    const out = new Uint8Array(3);
    mem.read(pfnToHpa(f, 10), out);
    assert.deepEqual([...out], [1, 2, 3]);
  });
  it("reads and writes across frame boundaries", () => {
    const { mem } = mk();
    const base = mem.allocContiguous(3);
    const data = new Uint8Array(8192 + 100).map((_, i) => i & 0xff);
    mem.write(pfnToHpa(base, 4000), data);
    const back = new Uint8Array(data.length);
    mem.read(pfnToHpa(base, 4000), back);
    assert.deepEqual(back, data);
    mem.writeU32(pfnToHpa(base, 4094), 0xdeadbeef);
    assert.equal(mem.readU32(pfnToHpa(base, 4094)), 0xdeadbeef);
    mem.fill(pfnToHpa(base, 4090), 0xaa, 10);
    assert.equal(mem.frameForRead((base + 1) as Pfn)![3], 0xaa);
  });
  it("frees a frame when its last reference goes and hands out zeroed frames", () => {
    const { mem } = mk();
    const f = mem.allocFrame(7);
    assert.equal(mem.owner(f), 7);
    mem.writeU32(pfnToHpa(f), 0x12345678);
    mem.get(f);
    mem.put(f);
    assert.equal(mem.isAllocated(f), true);
    mem.put(f);
    assert.equal(mem.isAllocated(f), false);
    assert.equal(mem.owner(f), 0);
    const g = mem.allocFrame();
    assert.equal(g, f, "free list reuses the frame");
    assert.equal(mem.readU32(pfnToHpa(g)), 0);
    assert.throws(() => {
      mem.put(g);
      mem.put(g);
    }, /not allocated/);
  });
  it("a pin keeps the frame alive after its owner drops it", () => {
    const { mem } = mk();
    const f = mem.allocFrame();
    mem.pin(f);
    assert.equal(mem.pinCount(f), 1);
    assert.equal(mem.stats().pinnedFrames, 1);
    mem.put(f);
    assert.equal(mem.isAllocated(f), true);
    mem.unpin(f);
    assert.equal(mem.isAllocated(f), false);
    assert.equal(mem.stats().pinnedFrames, 0);
  });
  it("reports ENOMEM when RAM runs out", () => {
    const { mem } = mk(2 * 1024 * 1024); // 512 frames, 256 usable above 1 MiB
    const got: Pfn[] = [];
    assert.throws(
      () => {
        for (;;) got.push(mem.allocFrame());
      },
      (e: unknown) => e instanceof KernelError && e.errno === Errno.ENOMEM,
    );
    assert.equal(got.length, 256);
    assert.equal(mem.freeFrames(), 0);
    assert.throws(() => mem.allocContiguous(1), /contiguous/);
  });
  it("external buffers are frames above RAM that alias the caller's bytes", () => {
    const { mem, tracer } = mk();
    const rec = new TraceRecorder(tracer);
    const buf = new Uint8Array(3 * 4096);
    const base = mem.registerExternal(buf, "guest-ram");
    assert.ok(base >= mem.externalBase && base >= mem.totalFrames);
    mem.write(pfnToHpa(base, 4096 + 5), new Uint8Array([9]));
    assert.equal(buf[4096 + 5], 9, "writes land in the external buffer");
    buf[2 * 4096] = 77;
    assert.equal(mem.frameForRead((base + 2) as Pfn)![0], 77);
    mem.pin((base + 1) as Pfn);
    mem.releaseExternal(base);
    assert.equal(mem.externalRegions().length, 1, "a pinned frame keeps the region listed");
    mem.unpin((base + 1) as Pfn);
    assert.equal(mem.externalRegions().length, 0);
    assert.equal(rec.count("mem.external.release"), 1);
    assert.throws(() => mem.registerExternal(new Uint8Array(100), "bad"), /multiple of 4096/);
    assert.throws(() => mem.releaseExternal(base), /no external buffer/);
  });
  it("reuses the frame numbers of a released external region only after its last pin, and shrinks back", () => {
    const { mem } = mk();
    const a = mem.registerExternal(new Uint8Array(3 * 4096), "a");
    const b = mem.registerExternal(new Uint8Array(2 * 4096), "b");
    mem.pin((a + 2) as Pfn);
    mem.releaseExternal(a);
    const c = mem.registerExternal(new Uint8Array(2 * 4096), "c");
    assert.notEqual(c, a, "a pinned frame keeps its region's numbers out of the pool");
    mem.unpin((a + 2) as Pfn);
    const cBuf = new Uint8Array(2 * 4096).fill(5);
    const d = mem.registerExternal(cBuf, "d");
    assert.equal(d, a, "first fit: the released range is reused");
    assert.equal(mem.frameForRead(d)![0], 5, "the reused numbers reach the new buffer");
    assert.deepEqual(mem.externalSpan(), { top: 3 * 4096, free: 0 }, "regions take whole 16 MiB chunks");
    for (const r of [b, c, d]) mem.releaseExternal(r);
    assert.deepEqual(mem.externalSpan(), { top: 0, free: 0 }, "all numbers back to the fresh pool");
    assert.equal(mem.frameForRead(a), undefined, "nothing reachable through released numbers");
  });
  it("external regions: any register/release sequence keeps live regions disjoint and ends with nothing held", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ pages: fc.integer({ min: 1, max: 9000 }), release: fc.nat(7) }), { maxLength: 40 }),
        (ops) => {
          const { mem } = mk();
          const live: { base: number; pages: number; buf: Uint8Array }[] = [];
          for (const op of ops) {
            if (op.release < 3 && live.length > 0) {
              const [r] = live.splice(op.release % live.length, 1);
              mem.releaseExternal(r!.base as Pfn);
              continue;
            }
            const buf = new Uint8Array(op.pages * 4096);
            buf[0] = live.length + 1;
            const base = mem.registerExternal(buf, "r");
            for (const o of live) {
              assert.ok(base + op.pages <= o.base || o.base + o.pages <= base, "live regions never overlap");
            }
            live.push({ base, pages: op.pages, buf });
          }
          for (const o of live)
            assert.equal(mem.frameForRead(o.base as Pfn)![0], o.buf[0], "each region sees its bytes");
          for (const o of live) mem.releaseExternal(o.base as Pfn);
          assert.deepEqual(mem.externalSpan(), { top: 0, free: 0 });
          assert.equal(mem.externalRegions().length, 0);
        },
      ),
      { numRuns: 60 },
    );
  });
  it("registers a 64 GiB external region in O(1): frames materialise on use and go with the region", () => {
    const { mem } = mk();
    const bytes = 64 * 2 ** 30;
    const views: number[] = [];
    const store = new Map<number, Uint8Array>();
    // A fake memory backing: a 2 MiB block per view, made on demand (as the vfio-user server's mmap views are).
    const backing: ExternalBacking = {
      bytes,
      memory: true,
      view: (offset, len) => {
        views.push(offset);
        let v = store.get(offset);
        if (v === undefined) {
          v = new Uint8Array(len);
          store.set(offset, v);
        }
        return v;
      },
      read: () => Errno.EIO,
      write: () => Errno.EIO,
    };
    const chunksBefore = mem.chunkCount();
    const base = mem.registerExternal(backing, "guest-64g", 7);
    assert.equal(mem.chunkCount(), chunksBefore, "no metadata until a frame is used");
    assert.equal(mem.refCount((base + 16 * 2 ** 20 - 1) as Pfn), 1, "the last frame is held by the registration");
    assert.equal(mem.owner((base + 12345) as Pfn), 7);
    const far = (base + 15 * 2 ** 20 + 3) as Pfn;
    mem.pin(far);
    mem.write(pfnToHpa(far, 10), new Uint8Array([1, 2, 3]));
    assert.deepEqual([...mem.frameForRead(far)!.subarray(10, 13)], [1, 2, 3]);
    assert.equal(mem.chunkCount(), chunksBefore + 1, "one chunk materialised for the pinned frame");
    assert.equal(views.length, 1, "one 2 MiB view made");
    mem.releaseExternal(base);
    assert.equal(mem.externalRegions().length, 1, "the pin keeps the region");
    assert.equal(mem.externalRegions()[0]!.live, 1);
    assert.deepEqual([...mem.frameForRead(far)!.subarray(10, 13)], [1, 2, 3], "a pinned frame stays readable");
    assert.equal(mem.frameForRead((far + 1) as Pfn), undefined, "an unpinned frame of a released region is gone");
    mem.unpin(far);
    assert.equal(mem.externalRegions().length, 0);
    assert.equal(mem.chunkCount(), chunksBefore, "its chunks went with it");
    assert.deepEqual(mem.externalSpan(), { top: 0, free: 0 });
  });
  it("a copy-backed region whose backing fails reads as undefined and refuses writes (a fault, not a crash)", () => {
    const { mem } = mk();
    const data = new Uint8Array(2 * 4096);
    let size = data.length;
    const backing: ExternalBacking = {
      bytes: data.length,
      memory: false,
      view: () => undefined,
      read: (offset, dst, off, len) => {
        if (offset + len > size) return Errno.EFAULT;
        dst.set(data.subarray(offset, offset + len), off);
        return 0;
      },
      write: (offset, src, off, len) => {
        if (offset + len > size) return Errno.EFAULT;
        data.set(src.subarray(off, off + len), offset);
        return 0;
      },
    };
    const base = mem.registerExternal(backing, "file");
    mem.write(pfnToHpa((base + 1) as Pfn, 4), new Uint8Array([5, 6]));
    assert.deepEqual([...data.subarray(4096 + 4, 4096 + 6)], [5, 6], "writes go through the backing");
    assert.equal(mem.frameForRead((base + 1) as Pfn)![5], 6);
    assert.throws(() => mem.frameForWrite(base), /writeBytes/, "no view of a copy-backed frame");
    size = 4096; // the client shrank the file
    assert.equal(mem.frameForRead((base + 1) as Pfn), undefined);
    assert.equal(mem.writeBytes((base + 1) as Pfn, 0, new Uint8Array(1), 0, 1), false);
    assert.equal(mem.fillBytes((base + 1) as Pfn, 0, 1, 8), false);
    assert.throws(() => mem.read(pfnToHpa((base + 1) as Pfn), new Uint8Array(4)), { errno: Errno.EFAULT });
    assert.equal(mem.frameForRead(base)![0], 0, "the first page is still there");
    mem.releaseExternal(base);
  });
  it("shares frames with an outside buffer (a memfd export) and takes them back with their bytes", () => {
    const { mem } = mk();
    const f = mem.allocContiguous(2);
    mem.frameForWrite(f)[5] = 42;
    const backing = new Uint8Array(2 * 4096).fill(0xee);
    mem.shareFrames(f, 2, backing);
    assert.equal(backing[5], 42, "the frame's bytes moved into the buffer");
    assert.equal(backing[4096], 0, "an untouched frame is zeros there");
    backing[4096 + 1] = 7;
    assert.equal(mem.frameForRead((f + 1) as Pfn)![1], 7, "stores into the buffer are the frame's");
    mem.frameForWrite(f)[6] = 9;
    assert.equal(backing[6], 9, "and the frame's stores are the buffer's");
    mem.unshareFrames(f, 2);
    backing[5] = 0;
    assert.equal(mem.frameForRead(f)![5], 42, "after unsharing the frame keeps its bytes, detached");
    assert.equal(mem.frameForRead((f + 1) as Pfn)![1], 7);
    assert.throws(() => mem.shareFrames(f, 2, new Uint8Array(4096)), /needs 8192 bytes/);
    const ext = mem.registerExternal(new Uint8Array(4096), "x");
    assert.throws(() => mem.shareFrames(ext, 1, new Uint8Array(4096)), /external/);
    assert.throws(() => mem.shareFrames((f + 5) as Pfn, 1, new Uint8Array(4096)), /not allocated/);
  });
  it("balances: any sequence of alloc/get/put/pin/unpin returns to empty", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 4 }), fc.nat()), { maxLength: 200 }), (ops) => {
        const { mem } = mk(8 * 1024 * 1024);
        const refs = new Map<Pfn, { r: number; p: number }>();
        for (const [op, k] of ops) {
          const keys = [...refs.keys()];
          const f = keys.length ? keys[k % keys.length]! : undefined;
          if (op === 0 || f === undefined) {
            refs.set(mem.allocFrame(), { r: 1, p: 0 });
          } else if (op === 1) {
            mem.get(f);
            refs.get(f)!.r++;
          } else if (op === 2) {
            mem.pin(f);
            refs.get(f)!.p++;
          } else if (op === 3) {
            const s = refs.get(f)!;
            if (s.p > 0) {
              mem.unpin(f);
              s.p--;
            }
          } else {
            const s = refs.get(f)!;
            if (s.r > 0) {
              mem.put(f);
              s.r--;
            }
          }
          for (const [g, s] of refs) {
            if (mem.refCount(g) !== s.r + s.p || mem.pinCount(g) !== s.p) return false;
          }
          for (const [g, s] of [...refs]) if (s.r + s.p === 0) refs.delete(g);
        }
        for (const [g, s] of refs) {
          for (let i = 0; i < s.p; i++) mem.unpin(g);
          for (let i = 0; i < s.r; i++) mem.put(g);
        }
        return mem.stats().allocatedFrames === 0 && mem.stats().pinnedFrames === 0;
      }),
      { numRuns: 100 },
    );
  });
  it("rejects a bad size", () => {
    const tracer = new Tracer(new VirtualClock());
    assert.throws(() => new PhysicalMemory({ sizeBytes: 1000, tracer }), /multiple of 4096/);
    assert.equal(hpaToPfn(hpa(8191)), 1);
  });
});
