/**
 * Command encoding for the guest driver: a growable dword buffer with one method per command the GPU executes
 * (docs/gpu-programming.md, "Commands"). The dwords come from the GPU's encoders (src/gpu/commands.ts), the one place
 * every command's bytes are produced; this buffer only makes room and appends. The ring and batch buffers are filled
 * from one of these, and unit tests compare them with the datasheet dword by dword.
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
  type AddressSpaceKind,
  blitXy,
  br13,
  encodeBatchBufferStart,
  encodeColorBlt,
  encodeLoadRegisterImm,
  encodeSrcCopyBlt,
  encodeStoreDataImm,
  lower32,
  MI_BATCH_BUFFER_END,
  MI_BATCH_BUFFER_START_DWORDS,
  MI_LOAD_REGISTER_IMM_1_DWORDS,
  MI_NOOP,
  MI_STORE_DATA_IMM_DWORDS,
  MI_STORE_DATA_IMM_GGTT,
  MI_USER_INTERRUPT,
  upper32,
  XY_COLOR_BLT_CMD,
  XY_COLOR_BLT_DWORDS,
  XY_SRC_COPY_BLT_CMD,
  XY_SRC_COPY_BLT_DWORDS,
} from "../gpu/index.ts";

// The encoders and field helpers are the GPU's (src/gpu/commands.ts); re-exported for the guest's callers.
export { blitXy, br13, lower32, MI_STORE_DATA_IMM_GGTT, upper32, XY_COLOR_BLT_CMD, XY_SRC_COPY_BLT_CMD };

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
    this.reserve(words.length);
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

  /**
   * MI_BATCH_BUFFER_START (gen8, 3 dwords) of a batch buffer at `addr`: a global GMA, or with `space` "ppgtt" a GPU
   * virtual address of the context's PPGTT (MI_BATCH_PPGTT; execlists only).
   */
  batchBufferStart(addr: number, space: AddressSpaceKind = "ggtt"): this {
    this.reserve(MI_BATCH_BUFFER_START_DWORDS);
    this.length = encodeBatchBufferStart(this.buf, this.length, addr, space);
    return this;
  }

  /** MI_STORE_DATA_IMM of one dword `value` at `addr` (4-byte aligned): a global GMA, or a PPGTT address. */
  storeDataImm(addr: number, value: number, space: AddressSpaceKind = "ggtt"): this {
    this.reserve(MI_STORE_DATA_IMM_DWORDS);
    this.length = encodeStoreDataImm(this.buf, this.length, addr, value, space);
    return this;
  }

  /** MI_LOAD_REGISTER_IMM writing one register (MMIO offset `reg`) with `value`. */
  loadRegisterImm(reg: number, value: number): this {
    this.reserve(MI_LOAD_REGISTER_IMM_1_DWORDS);
    this.length = encodeLoadRegisterImm(this.buf, this.length, reg, value);
    return this;
  }

  /**
   * XY_COLOR_BLT: fills [x1, x2) x [y1, y2) of the 32-bpp surface at `dst` (row pitch `pitch` bytes) with `color`
   * (0xAARRGGBB, stored little-endian per pixel).
   */
  colorBlt(dst: number, pitch: number, x1: number, y1: number, x2: number, y2: number, color: number): this {
    this.reserve(XY_COLOR_BLT_DWORDS);
    this.length = encodeColorBlt(this.buf, this.length, dst, pitch, x1, y1, x2, y2, color);
    return this;
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
    this.reserve(XY_SRC_COPY_BLT_DWORDS);
    this.length = encodeSrcCopyBlt(this.buf, this.length, dst, dstPitch, x1, y1, x2, y2, src, srcPitch, sx, sy);
    return this;
  }

  /** Grows the buffer until `dwords` more fit. */
  private reserve(dwords: number): void {
    while (this.length + dwords > this.buf.length) this.grow();
  }

  private grow(): void {
    const next = new Uint32Array(this.buf.length * 2);
    next.set(this.buf);
    this.buf = next;
  }
}
