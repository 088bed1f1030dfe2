/**
 * Command encoders: the dwords of every command the GPU executes, built from the encodings in regs.ts. Every producer
 * of commands uses these (the guest driver's `CommandBuffer`, the vendor driver's test fixture, the GPU's own tests and
 * the benchmarks), so each command's bytes come from one place and follow the datasheet (docs/gpu-programming.md,
 * "Commands"). The decoders are elsewhere: the engines (engine.ts) and the vGPU's command scanner read the same tables.
 *
 * Two forms of each encoder:
 * - `encodeX(out, at, ...)` writes the command into `out` from index `at` and returns the index after it; the caller
 *   makes room first (`X_DWORDS` each). Nothing is allocated: this is the guest driver's hot path.
 * - `x(...)` returns the command as a fresh `number[]` (for tests and fixtures that splice commands together).
 *
 * Addresses in commands are graphics memory addresses (GMAs), 48 bits on gen8, written as a low and a high dword.
 * They are plain numbers here, not branded: a command is wire format, and the hostile guest writes addresses no
 * allocator would hand out. Coordinates and pitches are 16-bit fields and are masked to 16 bits, as the hardware
 * reads them.
 *
 * Not encoded: PPGTT addressing (every address is global: MI_USE_GGTT set, bit 8 of MI_BATCH_BUFFER_START clear),
 * tiled surfaces, colour depths other than 32 bpp, raster operations other than PATCOPY (fill) and SRCCOPY (copy).
 */
import {
  BLT_WRITE_RGBA,
  BR13_32BPP,
  BR13_PITCH_MASK,
  BR13_ROP_SHIFT,
  blitInstr,
  MI_BATCH_BUFFER_START_GEN8,
  MI_STORE_DWORD_IMM_GEN4,
  MI_USE_GGTT,
  miLoadRegisterImm,
  ROP_PATCOPY,
  ROP_SRCCOPY,
  XY_COLOR_BLT_DWORDS,
  XY_COLOR_BLT_OPCODE,
  XY_SRC_COPY_BLT_DWORDS,
  XY_SRC_COPY_BLT_OPCODE,
} from "./regs.ts";

const TWO32 = 4294967296;

/** Low dword of an address (up to 53 bits). */
export function lower32(addr: number): number {
  return (addr % TWO32) >>> 0;
}
/** High dword of an address (up to 53 bits). */
export function upper32(addr: number): number {
  return Math.floor(addr / TWO32) >>> 0;
}

/** First dword of XY_COLOR_BLT (gen8, 7 dwords, 32 bpp: alpha and RGB written). */
export const XY_COLOR_BLT_CMD = (blitInstr(XY_COLOR_BLT_OPCODE, XY_COLOR_BLT_DWORDS) | BLT_WRITE_RGBA) >>> 0;
/** First dword of XY_SRC_COPY_BLT (gen8, 10 dwords, 32 bpp). */
export const XY_SRC_COPY_BLT_CMD = (blitInstr(XY_SRC_COPY_BLT_OPCODE, XY_SRC_COPY_BLT_DWORDS) | BLT_WRITE_RGBA) >>> 0;
/** MI_STORE_DATA_IMM of one dword to a global GMA. */
export const MI_STORE_DATA_IMM_GGTT = (MI_STORE_DWORD_IMM_GEN4 | MI_USE_GGTT) >>> 0;
export const MI_STORE_DATA_IMM_DWORDS = 4;
export const MI_BATCH_BUFFER_START_DWORDS = 3;
/** MI_LOAD_REGISTER_IMM of one register. */
export const MI_LOAD_REGISTER_IMM_1_DWORDS = 3;

/** BR13 of a 32-bpp blit: colour depth, raster operation, pitch in bytes. */
export function br13(rop: number, pitch: number): number {
  return (BR13_32BPP | (rop << BR13_ROP_SHIFT) | (pitch & BR13_PITCH_MASK)) >>> 0;
}
/** A blit coordinate dword: y in bits 16..31, x in bits 0..15. */
export function blitXy(x: number, y: number): number {
  return (((y & 0xffff) << 16) | (x & 0xffff)) >>> 0;
}

// ---- writers (no allocation) -----------------------------------------------------------------------------------

/** MI_STORE_DATA_IMM of one dword `value` at global GMA `gma` (4-byte aligned). */
export function encodeStoreDataImm(out: Uint32Array, at: number, gma: number, value: number): number {
  out[at] = MI_STORE_DATA_IMM_GGTT;
  out[at + 1] = lower32(gma);
  out[at + 2] = upper32(gma);
  out[at + 3] = value >>> 0;
  return at + MI_STORE_DATA_IMM_DWORDS;
}

/** MI_BATCH_BUFFER_START (gen8) of a batch buffer at global GMA `gma`. */
export function encodeBatchBufferStart(out: Uint32Array, at: number, gma: number): number {
  out[at] = MI_BATCH_BUFFER_START_GEN8;
  out[at + 1] = lower32(gma);
  out[at + 2] = upper32(gma);
  return at + MI_BATCH_BUFFER_START_DWORDS;
}

/** MI_LOAD_REGISTER_IMM writing one register (MMIO offset `reg`) with `value`. */
export function encodeLoadRegisterImm(out: Uint32Array, at: number, reg: number, value: number): number {
  out[at] = miLoadRegisterImm(1);
  out[at + 1] = reg >>> 0;
  out[at + 2] = value >>> 0;
  return at + MI_LOAD_REGISTER_IMM_1_DWORDS;
}

/**
 * XY_COLOR_BLT: fills [x1, x2) x [y1, y2) of the 32-bpp surface at `dst` (row pitch `pitch` bytes) with `color`
 * (0xAARRGGBB, stored little-endian per pixel).
 */
export function encodeColorBlt(
  out: Uint32Array,
  at: number,
  dst: number,
  pitch: number,
  x1: number,
  y1: number,
  x2: number,
  y2: number,
  color: number,
): number {
  out[at] = XY_COLOR_BLT_CMD;
  out[at + 1] = br13(ROP_PATCOPY, pitch);
  out[at + 2] = blitXy(x1, y1);
  out[at + 3] = blitXy(x2, y2);
  out[at + 4] = lower32(dst);
  out[at + 5] = upper32(dst);
  out[at + 6] = color >>> 0;
  return at + XY_COLOR_BLT_DWORDS;
}

/**
 * XY_SRC_COPY_BLT: copies the rectangle at (sx, sy) of the surface at `src` (pitch `srcPitch`) to [x1, x2) x [y1, y2)
 * of the surface at `dst` (pitch `dstPitch`).
 */
export function encodeSrcCopyBlt(
  out: Uint32Array,
  at: number,
  dst: number,
  dstPitch: number,
  x1: number,
  y1: number,
  x2: number,
  y2: number,
  src: number,
  srcPitch: number,
  sx: number,
  sy: number,
): number {
  out[at] = XY_SRC_COPY_BLT_CMD;
  out[at + 1] = br13(ROP_SRCCOPY, dstPitch);
  out[at + 2] = blitXy(x1, y1);
  out[at + 3] = blitXy(x2, y2);
  out[at + 4] = lower32(dst);
  out[at + 5] = upper32(dst);
  out[at + 6] = blitXy(sx, sy);
  out[at + 7] = srcPitch & BR13_PITCH_MASK;
  out[at + 8] = lower32(src);
  out[at + 9] = upper32(src);
  return at + XY_SRC_COPY_BLT_DWORDS;
}

// ---- array forms (tests, fixtures) -------------------------------------------------------------------------------

/** `encodeStoreDataImm` as an array. */
export function storeDataImm(gma: number, value: number): number[] {
  const out = new Uint32Array(MI_STORE_DATA_IMM_DWORDS);
  encodeStoreDataImm(out, 0, gma, value);
  return Array.from(out);
}

/** `encodeBatchBufferStart` as an array. */
export function batchBufferStart(gma: number): number[] {
  const out = new Uint32Array(MI_BATCH_BUFFER_START_DWORDS);
  encodeBatchBufferStart(out, 0, gma);
  return Array.from(out);
}

/** `encodeColorBlt` as an array. */
export function colorBlt(
  dst: number,
  pitch: number,
  x1: number,
  y1: number,
  x2: number,
  y2: number,
  color: number,
): number[] {
  const out = new Uint32Array(XY_COLOR_BLT_DWORDS);
  encodeColorBlt(out, 0, dst, pitch, x1, y1, x2, y2, color);
  return Array.from(out);
}

/** `encodeSrcCopyBlt` as an array. */
export function srcCopyBlt(
  dst: number,
  dstPitch: number,
  x1: number,
  y1: number,
  x2: number,
  y2: number,
  src: number,
  srcPitch: number,
  sx: number,
  sy: number,
): number[] {
  const out = new Uint32Array(XY_SRC_COPY_BLT_DWORDS);
  encodeSrcCopyBlt(out, 0, dst, dstPitch, x1, y1, x2, y2, src, srcPitch, sx, sy);
  return Array.from(out);
}
