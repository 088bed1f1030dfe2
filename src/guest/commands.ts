/**
 * Command encoding for the guest driver: a growable dword buffer with one method per command the GPU executes
 * (docs/gpu-programming.md, "Commands"; encodings from src/gpu/regs.ts). The ring and batch buffers are filled from
 * one of these, so every command's bytes are produced in exactly one place and unit tests can compare them with the
 * datasheet dword by dword.
 *
 * Addresses in commands are graphics memory addresses (GMAs), 48 bits on gen8, written as a low and a high dword.
 * The guest's GMAs are below 4 GiB, so the high dword is 0; the hostile mode writes larger ones on purpose.
 *
 * Not modelled: PPGTT addressing (every address here is global, MI_USE_GGTT / bit 8 of MI_BATCH_BUFFER_START clear),
 * tiled surfaces, colour depths other than 32 bpp, raster operations other than PATCOPY (fill) and SRCCOPY (copy).
 *
 * Invariants: `length` dwords of `words` are valid commands in emission order; appending never allocates unless the
 * buffer has to grow (doubling), so a reused `CommandBuffer` (`reset`) builds commands without allocation.
 */
import {
  BLT_WRITE_RGBA,
  BR13_32BPP,
  blitInstr,
  MI_BATCH_BUFFER_END,
  MI_BATCH_BUFFER_START_GEN8,
  MI_NOOP,
  MI_STORE_DWORD_IMM_GEN4,
  MI_USE_GGTT,
  MI_USER_INTERRUPT,
  miLoadRegisterImm,
  ROP_PATCOPY,
  ROP_SRCCOPY,
  XY_COLOR_BLT_DWORDS,
  XY_COLOR_BLT_OPCODE,
  XY_SRC_COPY_BLT_DWORDS,
  XY_SRC_COPY_BLT_OPCODE,
} from "../gpu/index.ts";

const TWO32 = 4294967296;

/** Low dword of a (up to 53-bit) address. */
export function lower32(addr: number): number {
  return (addr % TWO32) >>> 0;
}
/** High dword of a (up to 53-bit) address. */
export function upper32(addr: number): number {
  return Math.floor(addr / TWO32) >>> 0;
}

/** First dword of XY_COLOR_BLT (gen8, 7 dwords, 32 bpp: alpha and RGB written). */
export const XY_COLOR_BLT_CMD = (blitInstr(XY_COLOR_BLT_OPCODE, XY_COLOR_BLT_DWORDS) | BLT_WRITE_RGBA) >>> 0;
/** First dword of XY_SRC_COPY_BLT (gen8, 10 dwords, 32 bpp). */
export const XY_SRC_COPY_BLT_CMD = (blitInstr(XY_SRC_COPY_BLT_OPCODE, XY_SRC_COPY_BLT_DWORDS) | BLT_WRITE_RGBA) >>> 0;
/** MI_STORE_DATA_IMM to a global GMA (4 dwords). */
export const MI_STORE_DATA_IMM_GGTT = (MI_STORE_DWORD_IMM_GEN4 | MI_USE_GGTT) >>> 0;

/** BR13 of a 32-bpp blit: depth, raster operation, pitch in bytes. */
export function br13(rop: number, pitch: number): number {
  return (BR13_32BPP | (rop << 16) | (pitch & 0xffff)) >>> 0;
}
/** A blit coordinate dword: y in bits 16..31, x in bits 0..15. */
export function blitXy(x: number, y: number): number {
  return (((y & 0xffff) << 16) | (x & 0xffff)) >>> 0;
}

export class CommandBuffer {
  private buf: Uint32Array;
  /** Dwords written. */
  length = 0;

  constructor(initialDwords = 256) {
    this.buf = new Uint32Array(Math.max(16, initialDwords));
  }

  /** The commands written so far (a view: valid until the next append or `reset`). */
  get words(): Uint32Array {
    return this.buf.subarray(0, this.length);
  }

  get bytes(): number {
    return this.length * 4;
  }

  reset(): this {
    this.length = 0;
    return this;
  }

  /** Appends one raw dword (the hostile mode's way to write what no method encodes). */
  dword(value: number): this {
    if (this.length === this.buf.length) this.grow();
    this.buf[this.length++] = value >>> 0;
    return this;
  }

  /** Appends the dwords of `words`. */
  append(words: Uint32Array): this {
    while (this.length + words.length > this.buf.length) this.grow();
    this.buf.set(words, this.length);
    this.length += words.length;
    return this;
  }

  noop(): this {
    return this.dword(MI_NOOP);
  }

  /** Pads with MI_NOOP to an even number of dwords (rings and batch buffers end on a qword boundary). */
  alignQword(): this {
    if (this.length % 2 !== 0) this.noop();
    return this;
  }

  userInterrupt(): this {
    return this.dword(MI_USER_INTERRUPT);
  }

  batchBufferEnd(): this {
    return this.dword(MI_BATCH_BUFFER_END);
  }

  /** MI_BATCH_BUFFER_START (gen8, 3 dwords) of a batch buffer at global GMA `gma`. */
  batchBufferStart(gma: number): this {
    return this.dword(MI_BATCH_BUFFER_START_GEN8).dword(lower32(gma)).dword(upper32(gma));
  }

  /** MI_STORE_DATA_IMM of one dword `value` at global GMA `gma` (4-byte aligned). */
  storeDataImm(gma: number, value: number): this {
    return this.dword(MI_STORE_DATA_IMM_GGTT).dword(lower32(gma)).dword(upper32(gma)).dword(value);
  }

  /** MI_LOAD_REGISTER_IMM writing one register (MMIO offset `reg`) with `value`. */
  loadRegisterImm(reg: number, value: number): this {
    return this.dword(miLoadRegisterImm(1)).dword(reg).dword(value);
  }

  /**
   * XY_COLOR_BLT: fills [x1, x2) x [y1, y2) of the 32-bpp surface at `dst` (row pitch `pitch` bytes) with `color`
   * (0xAARRGGBB, stored little-endian per pixel).
   */
  colorBlt(dst: number, pitch: number, x1: number, y1: number, x2: number, y2: number, color: number): this {
    return this.dword(XY_COLOR_BLT_CMD)
      .dword(br13(ROP_PATCOPY, pitch))
      .dword(blitXy(x1, y1))
      .dword(blitXy(x2, y2))
      .dword(lower32(dst))
      .dword(upper32(dst))
      .dword(color);
  }

  /**
   * XY_SRC_COPY_BLT: copies the rectangle at (sx, sy) of the surface at `src` (pitch `srcPitch`) to
   * [x1, x2) x [y1, y2) of the surface at `dst` (pitch `dstPitch`).
   */
  srcCopyBlt(
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
  ): this {
    return this.dword(XY_SRC_COPY_BLT_CMD)
      .dword(br13(ROP_SRCCOPY, dstPitch))
      .dword(blitXy(x1, y1))
      .dword(blitXy(x2, y2))
      .dword(lower32(dst))
      .dword(upper32(dst))
      .dword(blitXy(sx, sy))
      .dword(srcPitch & 0xffff)
      .dword(lower32(src))
      .dword(upper32(src));
  }

  private grow(): void {
    const next = new Uint32Array(this.buf.length * 2);
    next.set(this.buf);
    this.buf = next;
  }
}
