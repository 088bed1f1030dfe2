/**
 * Tiled surface layouts and fence registers (Gen9, as i915 and igt program them).
 *
 * A tiled surface is stored as 4 KiB tiles, row-major; `pitch` bytes per row of pixels, a multiple of the tile width.
 * - X-tiling: a tile is 512 bytes wide and 8 rows high, each tile row 512 contiguous bytes.
 * - Y-tiling: a tile is 128 bytes wide and 32 rows high, stored as eight 16-byte columns of 32 rows each (a column is
 *   512 contiguous bytes: row 0 bytes 0..15, row 1 bytes 0..15, ...).
 * Gen8+ does no bit-6 swizzling (i915 reports I915_BIT_6_SWIZZLE_NONE there), so none is modelled.
 *
 * Who uses which: the blitter reads tiling from XY_*_BLT's tiled bits (X) and, on the blitter engine, BCS_SWCTRL's
 * Y bits (a masked register). CPU accesses through the aperture are detiled by a fence register covering the
 * address: a 64-bit value, low dword = start address (4 KiB aligned) | Y-tiling bit 1 | valid bit 0, high dword =
 * address of the last 4 KiB page | (pitch / 128 - 1) in bits 0..11.
 */

import { BR13_PITCH_MASK } from "./regs.ts";

export type Tiling = "linear" | "x" | "y";

/** Bytes per tile row (width) and rows per tile of each tiled layout; a tile is always 4 KiB. */
export const TILE_WIDTH = { x: 512, y: 128 } as const;
export const TILE_HEIGHT = { x: 8, y: 32 } as const;
export const TILE_BYTES = 4096;
/** Y-tiling's column width in bytes (an OWord). */
const Y_COLUMN = 16;

/** BCS_SWCTRL (blitter engine, offset 0x200 from its base 0x22000): bit 0 the source is Y-tiled, bit 1 the destination. */
export const BCS_SWCTRL = 0x200;
export const BCS_SRC_Y = 1 << 0;
export const BCS_DST_Y = 1 << 1;

/** Fence register bits (gen6+ layout, as 32-bit halves). */
export const FENCE_VALID = 1 << 0;
export const FENCE_TILING_Y = 1 << 1;
const FENCE_PITCH_MASK = 0xfff; // high dword: pitch / 128 - 1
const FENCE_PITCH_UNIT = 128;

/**
 * A blit surface's pitch in bytes from its command field (BR13's low 16 bits, or the source pitch dword): the field
 * counts bytes for a linear surface and dwords for a tiled one.
 */
export function bltPitchBytes(dword: number, tiled: boolean): number {
  const field = dword & BR13_PITCH_MASK;
  return tiled ? field * 4 : field;
}

/** Why a pitch cannot hold the layout, or undefined. */
export function checkPitch(tiling: Tiling, pitch: number): string | undefined {
  if (tiling === "linear") return undefined;
  const w = TILE_WIDTH[tiling];
  if (pitch <= 0 || pitch % w !== 0) {
    return `a ${tiling.toUpperCase()}-tiled surface needs a pitch that is a positive multiple of ${w} bytes (got ${pitch})`;
  }
  return undefined;
}

/** Byte offset of the byte at column `xb` (bytes) of row `y` in a surface of `pitch` bytes per row. */
export function tiledOffset(tiling: Tiling, pitch: number, xb: number, y: number): number {
  switch (tiling) {
    case "linear":
      return y * pitch + xb;
    case "x": {
      const tileCol = Math.floor(xb / 512);
      const tileRow = Math.floor(y / 8);
      return tileRow * pitch * 8 + tileCol * TILE_BYTES + (y % 8) * 512 + (xb % 512);
    }
    case "y": {
      const tileCol = Math.floor(xb / 128);
      const tileRow = Math.floor(y / 32);
      const inTile = xb % 128;
      return (
        tileRow * pitch * 32 +
        tileCol * TILE_BYTES +
        Math.floor(inTile / Y_COLUMN) * (32 * Y_COLUMN) +
        (y % 32) * Y_COLUMN +
        (inTile % Y_COLUMN)
      );
    }
  }
}

/** How many bytes from column `xb` on stay contiguous in memory along one row (never past the row's end). */
export function contiguousSpan(tiling: Tiling, pitch: number, xb: number): number {
  const rowLeft = pitch - xb;
  switch (tiling) {
    case "linear":
      return rowLeft;
    case "x":
      return Math.min(rowLeft, 512 - (xb % 512));
    case "y":
      return Math.min(rowLeft, Y_COLUMN - (xb % Y_COLUMN));
  }
}

/** A valid fence register, decoded: CPU accesses through the aperture in [start, end) are detiled. */
export interface Fence {
  readonly start: number;
  /** Exclusive. */
  readonly end: number;
  readonly pitch: number;
  readonly tiling: "x" | "y";
}

/** Decodes a fence register's halves; undefined when it is not valid or describes nothing. */
export function decodeFence(lo: number, hi: number): Fence | undefined {
  if ((lo & FENCE_VALID) === 0) return undefined;
  const start = (lo >>> 0) - ((lo >>> 0) % TILE_BYTES);
  const end = (hi >>> 0) - ((hi >>> 0) % TILE_BYTES) + TILE_BYTES;
  if (end <= start) return undefined;
  const pitch = ((hi & FENCE_PITCH_MASK) + 1) * FENCE_PITCH_UNIT;
  const tiling = (lo & FENCE_TILING_Y) !== 0 ? "y" : "x";
  if (checkPitch(tiling, pitch) !== undefined) return undefined;
  return { start, end, pitch, tiling };
}

/** Encodes a fence (what i915's i965_write_fence_reg writes), as [lo, hi]. */
export function encodeFence(f: Fence): [number, number] {
  const lo = (f.start | (f.tiling === "y" ? FENCE_TILING_Y : 0) | FENCE_VALID) >>> 0;
  const hi = ((f.end - TILE_BYTES) | (f.pitch / FENCE_PITCH_UNIT - 1)) >>> 0;
  return [lo, hi];
}

/**
 * Where a CPU access at graphics memory address `gma` through a fenced aperture lands, and how many bytes from there
 * stay contiguous (at most `len`): the fence's linear view of its range mapped onto the tiled layout. Bytes of the
 * range past the last whole row of tiles land on themselves (hardware leaves them untiled).
 */
export function detile(f: Fence, gma: number, len: number): { at: number; run: number } {
  const off = gma - f.start;
  const y = Math.floor(off / f.pitch);
  const xb = off - y * f.pitch;
  const tileRowBytes = f.pitch * TILE_HEIGHT[f.tiling];
  const wholeRows = Math.floor((f.end - f.start) / tileRowBytes);
  if (Math.floor(y / TILE_HEIGHT[f.tiling]) >= wholeRows) return { at: gma, run: Math.min(len, f.end - gma) };
  const run = Math.min(len, contiguousSpan(f.tiling, f.pitch, xb));
  return { at: f.start + tiledOffset(f.tiling, f.pitch, xb, y), run };
}
