import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { decodeCommand } from "../gpu/index.ts";
import { br13, CommandBuffer, lower32, upper32 } from "./commands.ts";

const hexes = (w: Uint32Array) => [...w].map((d) => `0x${d.toString(16).padStart(8, "0")}`);

describe("guest commands: encodings match the datasheet dword by dword", () => {
  it("encodes the MI commands", () => {
    const c = new CommandBuffer()
      .noop()
      .userInterrupt()
      .batchBufferEnd()
      .storeDataImm(0x1234_5678, 0xcafe_f00d)
      .batchBufferStart(0x0800_1000)
      .loadRegisterImm(0x20c0, 0xffff_0001);
    assert.deepEqual(hexes(c.words), [
      "0x00000000", // MI_NOOP
      "0x01000000", // MI_USER_INTERRUPT: opcode 0x02 << 23
      "0x05000000", // MI_BATCH_BUFFER_END: 0x0a << 23
      "0x10400002", // MI_STORE_DATA_IMM: 0x20 << 23 | MI_USE_GGTT (bit 22) | length 4 - 2
      "0x12345678",
      "0x00000000",
      "0xcafef00d",
      "0x18800001", // MI_BATCH_BUFFER_START gen8: 0x31 << 23 | 3 - 2, GGTT (bit 8 clear)
      "0x08001000",
      "0x00000000",
      "0x11000001", // MI_LOAD_REGISTER_IMM(1): 0x22 << 23 | 2n - 1
      "0x000020c0",
      "0xffff0001",
    ]);
  });

  it("encodes XY_COLOR_BLT (7 dwords) with 32 bpp, PATCOPY, pitch, corners, 48-bit address, colour", () => {
    const c = new CommandBuffer().colorBlt(0x1_2345_6000, 260, 3, 4, 65, 36, 0x80ff_0102);
    assert.deepEqual(hexes(c.words), [
      "0x54300005", // 2 << 29 | 0x50 << 22 | BLT_WRITE_RGBA (3 << 20) | 7 - 2
      "0x03f00104", // 32 bpp (3 << 24) | ROP 0xf0 << 16 | pitch 260
      "0x00040003", // y1 << 16 | x1
      "0x00240041", // y2 << 16 | x2
      "0x23456000",
      "0x00000001",
      "0x80ff0102",
    ]);
    const info = decodeCommand(c.words[0]!);
    assert.equal(info?.name, "XY_COLOR_BLT");
    assert.equal(info?.length(c.words[0]!), 7);
  });

  it("encodes XY_SRC_COPY_BLT (10 dwords) with SRCCOPY, both pitches and origins", () => {
    const c = new CommandBuffer().srcCopyBlt(0x40_0000, 4096, 1, 2, 11, 22, 0x80_0000, 512, 5, 6);
    assert.deepEqual(hexes(c.words), [
      "0x54f00008", // 2 << 29 | 0x53 << 22 | 3 << 20 | 10 - 2
      "0x03cc1000", // 32 bpp | ROP 0xcc << 16 | dst pitch 4096
      "0x00020001", // dst y1 << 16 | x1
      "0x0016000b", // dst y2 << 16 | x2
      "0x00400000",
      "0x00000000",
      "0x00060005", // src y << 16 | x
      "0x00000200", // src pitch
      "0x00800000",
      "0x00000000",
    ]);
    assert.equal(decodeCommand(c.words[0]!)?.length(c.words[0]!), 10);
  });

  it("every encoded command decodes to its own length (the scanner walks them)", () => {
    const c = new CommandBuffer()
      .storeDataImm(0x1000, 1)
      .colorBlt(0, 64, 0, 0, 16, 16, 0)
      .srcCopyBlt(0, 64, 0, 0, 16, 16, 0x1000, 64, 0, 0)
      .loadRegisterImm(0x22200, 0)
      .batchBufferStart(0x2000)
      .userInterrupt()
      .noop()
      .batchBufferEnd();
    const names: string[] = [];
    for (let i = 0; i < c.length; ) {
      const info = decodeCommand(c.words[i]!);
      assert.ok(info, `dword ${i} decodes`);
      names.push(info.name);
      i += info.length(c.words[i]!);
    }
    assert.deepEqual(names, [
      "MI_STORE_DATA_IMM",
      "XY_COLOR_BLT",
      "XY_SRC_COPY_BLT",
      "MI_LOAD_REGISTER_IMM",
      "MI_BATCH_BUFFER_START",
      "MI_USER_INTERRUPT",
      "MI_NOOP",
      "MI_BATCH_BUFFER_END",
    ]);
  });

  it("splits addresses into dwords exactly and builds BR13", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 48 - 1 }), (a) => {
        assert.equal(upper32(a) * 2 ** 32 + lower32(a), a);
        assert.ok(lower32(a) >= 0 && lower32(a) < 2 ** 32);
      }),
      { numRuns: 200 },
    );
    assert.equal(br13(0xcc, 0xffff), 0x03ccffff);
  });

  it("grows without losing dwords, pads to a qword, and resets", () => {
    const c = new CommandBuffer(16);
    for (let i = 0; i < 1000; i++) c.dword(i);
    assert.equal(c.length, 1000);
    assert.equal(c.words[999], 999);
    assert.equal(c.bytes, 4000);
    c.reset().noop();
    assert.equal(c.alignQword().length, 2);
    assert.equal(c.alignQword().length, 2);
    c.append(new Uint32Array([7, 8, 9]));
    assert.deepEqual([...c.words], [0, 0, 7, 8, 9]);
  });
});
