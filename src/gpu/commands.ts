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
 * Addresses are global (GGTT) unless an encoder takes an `AddressSpaceKind` of "ppgtt": then the command's address goes
 * through the executing context's PPGTT (execlists only; the legacy ring path has no PPGTT).
 *
 * Not encoded: tiled surfaces, colour depths other than 32 bpp, raster operations other than PATCOPY (fill) and SRCCOPY
 * (copy), the post-sync operations the model does not execute, and 3D state beyond a generic `gfxState` (the model has
 * no 3D pipeline: it only skips such commands by length).
 */
import {
  BLT_WRITE_RGBA,
  BR13_32BPP,
  BR13_PITCH_MASK,
  BR13_ROP_SHIFT,
  blitInstr,
  gfxInstr,
  gfxOpPipeControl,
  MI_ARB_CHECK,
  MI_ARB_ENABLE,
  MI_ARB_ON_OFF,
  MI_BATCH_BUFFER_END,
  MI_BATCH_BUFFER_START_GEN8,
  MI_BATCH_PPGTT,
  MI_FLUSH_DW,
  MI_FLUSH_DW_OP_NONE,
  MI_FLUSH_DW_OP_STAMP,
  MI_FLUSH_DW_OP_STOREDW,
  MI_FLUSH_DW_STORE_INDEX,
  MI_FLUSH_DW_USE_GTT,
  MI_INVALIDATE_BSD,
  MI_INVALIDATE_TLB,
  MI_NOOP,
  MI_SEMAPHORE_GLOBAL_GTT,
  MI_SEMAPHORE_POLL,
  MI_SEMAPHORE_SAD_MASK,
  MI_SEMAPHORE_WAIT,
  MI_STORE_DWORD_IMM_GEN4,
  MI_USE_GGTT,
  MI_USER_INTERRUPT,
  miLoadRegisterImm,
  PIPE_CONTROL_DWORDS,
  PIPELINE_SELECT_GEN9,
  PIPELINE_SELECT_MASK,
  ROP_PATCOPY,
  ROP_SRCCOPY,
  XY_COLOR_BLT_DWORDS,
  XY_COLOR_BLT_OPCODE,
  XY_SRC_COPY_BLT_DWORDS,
  XY_SRC_COPY_BLT_OPCODE,
} from "./regs.ts";

const TWO32 = 4294967296;

/** Which translation a command's address goes through: the global GTT, or the executing context's PPGTT. */
export type AddressSpaceKind = "ggtt" | "ppgtt";

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
/** MI_FLUSH_DW as i915 emits it (`MI_FLUSH_DW + 1`): 4 dwords; 5 with a qword store. */
export const MI_FLUSH_DW_DWORDS = 4;
export const MI_SEMAPHORE_WAIT_DWORDS = 4;

/** BR13 of a 32-bpp blit: colour depth, raster operation, pitch in bytes. */
export function br13(rop: number, pitch: number): number {
  return (BR13_32BPP | (rop << BR13_ROP_SHIFT) | (pitch & BR13_PITCH_MASK)) >>> 0;
}
/** A blit coordinate dword: y in bits 16..31, x in bits 0..15. */
export function blitXy(x: number, y: number): number {
  return (((y & 0xffff) << 16) | (x & 0xffff)) >>> 0;
}

// ---- writers (no allocation) -----------------------------------------------------------------------------------

/** One-dword commands: MI_NOOP. */
export function encodeNoop(out: Uint32Array, at: number): number {
  out[at] = MI_NOOP;
  return at + 1;
}

/** MI_USER_INTERRUPT: raises the engine's user interrupt. */
export function encodeUserInterrupt(out: Uint32Array, at: number): number {
  out[at] = MI_USER_INTERRUPT;
  return at + 1;
}

/** MI_BATCH_BUFFER_END: ends a batch buffer (a no-op in a ring). */
export function encodeBatchBufferEnd(out: Uint32Array, at: number): number {
  out[at] = MI_BATCH_BUFFER_END;
  return at + 1;
}

/** MI_ARB_CHECK: a preemption point. */
export function encodeArbCheck(out: Uint32Array, at: number): number {
  out[at] = MI_ARB_CHECK;
  return at + 1;
}

/** MI_ARB_ON_OFF: arbitration on (`enable`) or off. */
export function encodeArbOnOff(out: Uint32Array, at: number, enable: boolean): number {
  out[at] = (MI_ARB_ON_OFF | (enable ? MI_ARB_ENABLE : 0)) >>> 0;
  return at + 1;
}

/**
 * MI_STORE_DATA_IMM of one dword `value` at address `addr` (4-byte aligned): a global GMA (MI_USE_GGTT), or with
 * `space` "ppgtt" an address in the executing context's PPGTT.
 */
export function encodeStoreDataImm(
  out: Uint32Array,
  at: number,
  addr: number,
  value: number,
  space: AddressSpaceKind = "ggtt",
): number {
  out[at] = space === "ggtt" ? MI_STORE_DATA_IMM_GGTT : MI_STORE_DWORD_IMM_GEN4;
  out[at + 1] = lower32(addr);
  out[at + 2] = upper32(addr);
  out[at + 3] = value >>> 0;
  return at + MI_STORE_DATA_IMM_DWORDS;
}

/** MI_BATCH_BUFFER_START (gen8) of a batch buffer at `addr`: a global GMA, or with `space` "ppgtt" a PPGTT address. */
export function encodeBatchBufferStart(
  out: Uint32Array,
  at: number,
  addr: number,
  space: AddressSpaceKind = "ggtt",
): number {
  out[at] = space === "ggtt" ? MI_BATCH_BUFFER_START_GEN8 : (MI_BATCH_BUFFER_START_GEN8 | MI_BATCH_PPGTT) >>> 0;
  out[at + 1] = lower32(addr);
  out[at + 2] = upper32(addr);
  return at + MI_BATCH_BUFFER_START_DWORDS;
}

/** Where a post-sync write (MI_FLUSH_DW, PIPE_CONTROL) lands. */
export type PostSyncTarget =
  /** A byte offset in the status page: the context's PPHWSP (execlists) or the engine's HWSP (legacy ring). */
  | { readonly kind: "index"; readonly offset: number }
  | { readonly kind: "ggtt"; readonly address: number }
  | { readonly kind: "ppgtt"; readonly address: number };

export interface FlushDwOptions {
  /** Post-sync operation: none, store `value` (a dword, or a qword with `valueHigh`), or store the engine timestamp. */
  readonly post?: "none" | "store" | "timestamp";
  readonly target?: PostSyncTarget;
  readonly value?: number;
  /** With `post` "store": also store this high dword (a 5-dword command writing a qword). */
  readonly valueHigh?: number;
  readonly invalidateTlb?: boolean;
  /** MI_INVALIDATE_BSD: what i915 adds on the video engine. */
  readonly invalidateBsd?: boolean;
}

/** MI_FLUSH_DW (gen8) with an optional post-sync write (4 dwords; 5 for a qword store). */
export function encodeFlushDw(out: Uint32Array, at: number, o: FlushDwOptions = {}): number {
  const post = o.post ?? "none";
  const qword = post === "store" && o.valueHigh !== undefined;
  const t = o.target ?? { kind: "ggtt", address: 0 };
  let h = MI_FLUSH_DW + (qword ? 2 : 1);
  h |= post === "store" ? MI_FLUSH_DW_OP_STOREDW : post === "timestamp" ? MI_FLUSH_DW_OP_STAMP : MI_FLUSH_DW_OP_NONE;
  if (post !== "none" && t.kind === "index") h |= MI_FLUSH_DW_STORE_INDEX;
  if (o.invalidateTlb) h |= MI_INVALIDATE_TLB;
  if (o.invalidateBsd) h |= MI_INVALIDATE_BSD;
  const addr = t.kind === "index" ? t.offset : t.address;
  out[at] = h >>> 0;
  out[at + 1] = (lower32(addr) | (post !== "none" && t.kind !== "ppgtt" ? MI_FLUSH_DW_USE_GTT : 0)) >>> 0;
  out[at + 2] = upper32(addr);
  out[at + 3] = (o.value ?? 0) >>> 0;
  if (qword) out[at + 4] = (o.valueHigh ?? 0) >>> 0;
  return at + (qword ? 5 : 4);
}

/**
 * PIPE_CONTROL (gen8, 6 dwords): `flags` is dword 1 (PIPE_CONTROL_* bits: flushes, invalidations, the post-sync
 * operation, PIPE_CONTROL_STORE_DATA_INDEX or PIPE_CONTROL_GLOBAL_GTT_IVB); `address` a byte offset in the status
 * page with STORE_DATA_INDEX, else a GGTT or PPGTT address as GLOBAL_GTT says; then the data qword.
 */
export function encodePipeControl(
  out: Uint32Array,
  at: number,
  flags: number,
  address = 0,
  dataLow = 0,
  dataHigh = 0,
): number {
  out[at] = gfxOpPipeControl(PIPE_CONTROL_DWORDS);
  out[at + 1] = flags >>> 0;
  out[at + 2] = lower32(address);
  out[at + 3] = upper32(address);
  out[at + 4] = dataLow >>> 0;
  out[at + 5] = dataHigh >>> 0;
  return at + PIPE_CONTROL_DWORDS;
}

/**
 * MI_SEMAPHORE_WAIT (gen8, poll mode): waits until (the dword at `addr`) `op` `value` holds, `op` one of the
 * MI_SEMAPHORE_SAD_* compare operators. `space` says whether `addr` is a GGTT or a PPGTT address.
 */
export function encodeSemaphoreWait(
  out: Uint32Array,
  at: number,
  op: number,
  value: number,
  addr: number,
  space: AddressSpaceKind = "ggtt",
): number {
  out[at] =
    (MI_SEMAPHORE_WAIT |
      MI_SEMAPHORE_POLL |
      (op & MI_SEMAPHORE_SAD_MASK) |
      (space === "ggtt" ? MI_SEMAPHORE_GLOBAL_GTT : 0)) >>>
    0;
  out[at + 1] = value >>> 0;
  out[at + 2] = lower32(addr);
  out[at + 3] = upper32(addr);
  return at + MI_SEMAPHORE_WAIT_DWORDS;
}

/** PIPELINE_SELECT (gen9, 1 dword): selects pipeline 0 (3D), 1 (media) or 2 (GPGPU); the model only decodes it. */
export function encodePipelineSelect(out: Uint32Array, at: number, pipeline: number): number {
  out[at] = (PIPELINE_SELECT_GEN9 | PIPELINE_SELECT_MASK | (pipeline & 3)) >>> 0;
  return at + 1;
}

/**
 * A render-client state command of `dwords` dwords with a zero body (3DSTATE_*, STATE_*, MEDIA_*: the model skips
 * them by length): subtype, opcode and sub-opcode as in regs.ts `gfxInstr`. For tests of the decoder and the skip.
 */
export function encodeGfxState(
  out: Uint32Array,
  at: number,
  subtype: number,
  opcode: number,
  subOpcode: number,
  dwords: number,
): number {
  out[at] = gfxInstr(subtype, opcode, subOpcode, dwords);
  out.fill(0, at + 1, at + dwords);
  return at + dwords;
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
export function storeDataImm(addr: number, value: number, space: AddressSpaceKind = "ggtt"): number[] {
  const out = new Uint32Array(MI_STORE_DATA_IMM_DWORDS);
  encodeStoreDataImm(out, 0, addr, value, space);
  return Array.from(out);
}

/** `encodeBatchBufferStart` as an array. */
export function batchBufferStart(addr: number, space: AddressSpaceKind = "ggtt"): number[] {
  const out = new Uint32Array(MI_BATCH_BUFFER_START_DWORDS);
  encodeBatchBufferStart(out, 0, addr, space);
  return Array.from(out);
}

/** MI_LOAD_REGISTER_IMM of every (register, value) pair, as an array (1 + 2n dwords, n from 1 to 128). */
export function loadRegisterImm(pairs: readonly (readonly [number, number])[]): number[] {
  if (pairs.length < 1 || pairs.length > 128) throw new RangeError(`MI_LOAD_REGISTER_IMM of ${pairs.length} registers`);
  const out = [miLoadRegisterImm(pairs.length)];
  for (const [reg, value] of pairs) out.push(reg >>> 0, value >>> 0);
  return out;
}

/** `encodeArbOnOff` as an array. */
export function arbOnOff(enable: boolean): number[] {
  const out = new Uint32Array(1);
  encodeArbOnOff(out, 0, enable);
  return Array.from(out);
}

/** `encodeFlushDw` as an array. */
export function flushDw(o: FlushDwOptions = {}): number[] {
  const out = new Uint32Array(5);
  return Array.from(out.subarray(0, encodeFlushDw(out, 0, o)));
}

/** `encodePipeControl` as an array. */
export function pipeControl(flags: number, address = 0, dataLow = 0, dataHigh = 0): number[] {
  const out = new Uint32Array(PIPE_CONTROL_DWORDS);
  encodePipeControl(out, 0, flags, address, dataLow, dataHigh);
  return Array.from(out);
}

/** `encodeSemaphoreWait` as an array. */
export function semaphoreWait(op: number, value: number, addr: number, space: AddressSpaceKind = "ggtt"): number[] {
  const out = new Uint32Array(MI_SEMAPHORE_WAIT_DWORDS);
  encodeSemaphoreWait(out, 0, op, value, addr, space);
  return Array.from(out);
}

/** `encodePipelineSelect` as an array. */
export function pipelineSelect(pipeline: number): number[] {
  const out = new Uint32Array(1);
  encodePipelineSelect(out, 0, pipeline);
  return Array.from(out);
}

/** `encodeGfxState` as an array. */
export function gfxState(subtype: number, opcode: number, subOpcode: number, dwords: number): number[] {
  const out = new Uint32Array(dwords);
  encodeGfxState(out, 0, subtype, opcode, subOpcode, dwords);
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
