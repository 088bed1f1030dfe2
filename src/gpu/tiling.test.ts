import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  checkPitch,
  contiguousSpan,
  decodeFence,
  detile,
  encodeFence,
  TILE_BYTES,
  TILE_HEIGHT,
  TILE_WIDTH,
  tiledOffset,
} from "./tiling.ts";

const tiled = fc.constantFrom("x" as const, "y" as const);

describe("tiled layouts", () => {
  it("place known bytes where the Gen9 layouts put them", () => {
    // X: 512-byte tile rows, 8 rows a tile; the next tile to the right is 4 KiB on.
    assert.equal(tiledOffset("x", 2048, 0, 1), 512);
    assert.equal(tiledOffset("x", 2048, 512, 0), 4096);
    assert.equal(tiledOffset("x", 2048, 0, 8), 4 * 4096, "row 8 starts the second row of tiles (4 tiles across)");
    // Y: 16-byte columns of 32 rows, 128 bytes (8 columns) a tile.
    assert.equal(tiledOffset("y", 512, 0, 1), 16);
    assert.equal(tiledOffset("y", 512, 16, 0), 512);
    assert.equal(tiledOffset("y", 512, 128, 0), 4096);
    assert.equal(tiledOffset("y", 512, 0, 32), 4 * 4096);
    assert.equal(tiledOffset("linear", 300, 7, 2), 607);
  });

  it("map every byte of a band of whole tile rows to a distinct byte of the same band (property)", () => {
    fc.assert(
      fc.property(tiled, fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 2 }), (t, tilesAcross, rows) => {
        const pitch = tilesAcross * TILE_WIDTH[t];
        const height = rows * TILE_HEIGHT[t];
        const seen = new Uint8Array(pitch * height);
        for (let y = 0; y < height; y++) {
          for (let xb = 0; xb < pitch; xb++) {
            const o = tiledOffset(t, pitch, xb, y);
            assert.ok(o >= 0 && o < seen.length, `(${xb}, ${y}) -> ${o}`);
            assert.equal(seen[o], 0, `(${xb}, ${y}) -> ${o} twice`);
            seen[o] = 1;
          }
        }
      }),
      { numRuns: 20 },
    );
  });

  it("keep a contiguous span contiguous, and end it where the layout jumps (property)", () => {
    fc.assert(
      fc.property(tiled, fc.integer({ min: 1, max: 8 }), fc.nat(), fc.nat({ max: 63 }), (t, across, xr, y) => {
        const pitch = across * TILE_WIDTH[t];
        const xb = xr % pitch;
        const span = contiguousSpan(t, pitch, xb);
        assert.ok(span >= 1 && xb + span <= pitch);
        const base = tiledOffset(t, pitch, xb, y);
        for (let i = 1; i < span; i++) assert.equal(tiledOffset(t, pitch, xb + i, y), base + i);
        if (xb + span < pitch) assert.notEqual(tiledOffset(t, pitch, xb + span, y), base + span);
      }),
    );
  });

  it("refuse pitches that no tile row fits", () => {
    assert.equal(checkPitch("linear", 4), undefined);
    assert.equal(checkPitch("x", 1024), undefined);
    assert.match(checkPitch("x", 256) ?? "", /multiple of 512/);
    assert.match(checkPitch("y", 64) ?? "", /multiple of 128/);
    assert.match(checkPitch("y", 0) ?? "", /positive/);
  });
});

describe("fence registers", () => {
  it("decode what i915 writes, and encode back (property)", () => {
    fc.assert(
      fc.property(
        tiled,
        fc.nat({ max: 0xfff00 }),
        fc.integer({ min: 1, max: 256 }),
        fc.integer({ min: 1, max: 32 }),
        (t, startPage, pages, pitchTiles) => {
          const f = {
            start: startPage * TILE_BYTES,
            end: (startPage + pages) * TILE_BYTES,
            pitch: pitchTiles * TILE_WIDTH[t],
            tiling: t,
          };
          const [lo, hi] = encodeFence(f);
          assert.deepEqual(decodeFence(lo, hi), f);
        },
      ),
    );
  });

  it("ignore an invalid fence and one whose pitch no tile fits", () => {
    assert.equal(decodeFence(0x10000, 0x20000), undefined, "valid bit clear");
    // X-tiling with pitch 128 bytes (field 0): not a multiple of 512.
    assert.equal(decodeFence(0x10001, 0x20000), undefined);
    assert.deepEqual(decodeFence(0x10003, 0x20000), { start: 0x10000, end: 0x21000, pitch: 128, tiling: "y" });
  });

  it("detile a linear aperture view onto the tiled layout, run by run", () => {
    const f = { start: 0x10000, end: 0x10000 + 8 * TILE_BYTES, pitch: 1024, tiling: "x" as const };
    assert.deepEqual(detile(f, 0x10000, 4096), { at: 0x10000, run: 512 });
    assert.deepEqual(detile(f, 0x10000 + 512, 4096), { at: 0x10000 + 4096, run: 512 }, "same row, next tile");
    assert.deepEqual(detile(f, 0x10000 + 1024, 8), { at: 0x10000 + 512, run: 8 }, "row 1");
    // 8 pages = 2 rows of tiles of 2 tiles; a range that does not end on a tile row maps its tail to itself.
    const g = { ...f, end: f.start + 5 * TILE_BYTES };
    assert.deepEqual(detile(g, g.start + 4 * TILE_BYTES + 8, 100), { at: g.start + 4 * TILE_BYTES + 8, run: 100 });
  });
});
