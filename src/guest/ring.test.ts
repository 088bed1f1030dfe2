import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, gma, gpa, isKernelError, PAGE_SIZE } from "../core/index.ts";
import { MI_NOOP, RING_HEAD, RING_TAIL } from "../gpu/index.ts";
import { GuestRing, RING_FREE_SPACE, type RingIo } from "./ring.ts";
import { FakeMemory } from "./test-support/fake-gpu.ts";

const RING_GPA = 0x10_0000;

/** An engine that consumes the ring only when told to (`consume`), recording every TAIL write. */
class SlowEngine implements RingIo {
  head = 0;
  tail = 0;
  tails: number[] = [];
  waits = 0;
  /** Bytes the engine consumes per wait step (0: it is stuck). */
  rate = 0;
  constructor(private readonly size: number) {}
  readEngine(offset: number): number {
    return offset === RING_HEAD ? this.head : offset === RING_TAIL ? this.tail : 0;
  }
  writeEngine(offset: number, value: number): void {
    if (offset === RING_TAIL) {
      this.tail = value;
      this.tails.push(value);
    }
  }
  wait(done: () => boolean): boolean {
    for (let i = 0; i < 100; i++) {
      if (done()) return true;
      this.waits++;
      this.consume(this.rate);
    }
    return done();
  }
  consume(bytes: number): void {
    const pending = (this.tail - this.head + this.size) % this.size;
    this.head = (this.head + Math.min(bytes, pending)) % this.size;
  }
}

function setup(size = PAGE_SIZE) {
  const mem = new FakeMemory(4 * 1024 * 1024);
  const io = new SlowEngine(size);
  const ring = new GuestRing(mem, io, gpa(RING_GPA), gma(0x1000), size);
  return { mem, io, ring };
}

describe("guest ring buffer", () => {
  it("writes dwords at the tail, pads TAIL to a qword and publishes it", () => {
    const { mem, io, ring } = setup();
    assert.equal(ring.begin(3), true);
    ring.emitAll(new Uint32Array([0xa, 0xb, 0xc]));
    mem.writeU32(gpa(RING_GPA + 12), 0xffff_ffff); // stale data where the pad goes
    ring.advance();
    assert.deepEqual(io.tails, [16]);
    assert.deepEqual(
      [0, 4, 8, 12].map((o) => mem.readU32(gpa(RING_GPA + o))),
      [0xa, 0xb, 0xc, MI_NOOP],
    );
    assert.equal(ring.space(), PAGE_SIZE - 16 - RING_FREE_SPACE);
  });

  it("wraps: pads the rest of the ring with MI_NOOP and restarts at 0, never splitting a sequence", () => {
    const { mem, io, ring } = setup();
    io.rate = 1 << 20; // the engine keeps up
    // Fill up to 16 bytes before the end.
    for (let off = 0; off < PAGE_SIZE - 16; off += 8) {
      ring.begin(2);
      ring.emit(0x100 + off);
      ring.emit(0x200 + off);
      ring.advance();
      io.consume(8);
    }
    assert.equal(ring.tail, PAGE_SIZE - 16);
    mem.writeU32(gpa(RING_GPA + PAGE_SIZE - 16), 0xdead);
    // 4 dwords + the qword pad allowance do not fit in 16 bytes: wrap.
    assert.equal(ring.begin(4), true);
    assert.equal(ring.wraps, 1);
    assert.equal(ring.tail, 0);
    for (let o = PAGE_SIZE - 16; o < PAGE_SIZE; o += 4) assert.equal(mem.readU32(gpa(RING_GPA + o)), MI_NOOP);
    ring.emitAll(new Uint32Array([1, 2, 3, 4]));
    ring.advance();
    assert.equal(io.tails.at(-1), 16);
    assert.equal(ring.bytesSubmitted, PAGE_SIZE + 16);
  });

  it("waits for the engine to free space, and gives up (false) when it never does", () => {
    const { io, ring } = setup();
    const fill = () => {
      while (ring.space() >= 64 + 8) {
        ring.begin(16);
        for (let i = 0; i < 16; i++) ring.emit(0);
        ring.advance();
      }
    };
    fill();
    io.rate = 0;
    assert.equal(ring.begin(16), false, "a stuck engine: no room");
    assert.ok(io.waits > 0);
    io.rate = 64;
    assert.equal(ring.begin(16), true, "room appears as the engine consumes");
    assert.ok(ring.space() >= 16 * 4 + 8);
  });

  it("tracks idleness and resyncs", () => {
    const { io, ring } = setup();
    ring.begin(2);
    ring.emit(0);
    ring.emit(0);
    ring.advance();
    assert.equal(ring.idle(), false);
    io.consume(8);
    assert.equal(ring.idle(), true);
    ring.resync(64);
    assert.equal(ring.tail, 64);
  });

  it("refuses a sequence that can never fit (EINVAL, telling to use a batch buffer)", () => {
    const { ring } = setup();
    assert.throws(
      () => ring.begin(PAGE_SIZE / 4),
      (e) => isKernelError(e) && e.errno === Errno.EINVAL && /batch buffer/.test(e.message),
    );
  });
});
