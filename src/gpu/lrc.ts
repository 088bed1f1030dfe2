/**
 * The logical ring context (LRC) as data: the image layout an engine restores from and saves to, the context
 * descriptor written to ELSP, and the context status buffer (CSB) entries. The engine (execlists.ts) reads and writes
 * images through these tables; drivers build images with `lrcRegisterState` (the host driver's kernel contexts, the
 * vendor driver's shadow contexts, tests).
 *
 * Image (in graphics memory, GGTT, page aligned; `LRC_PAGES` pages per engine as i915 allocates them):
 * - page 0, the per-process hardware status page (PPHWSP): where MI_FLUSH_DW / PIPE_CONTROL store-index writes of
 *   this context land (byte offset = the command's index);
 * - page 1, the register state: an MI_LOAD_REGISTER_IMM stream (NOOP; LRI(14) of the ring context; NOOP x3; LRI(9)
 *   of the timestamp and the four PDPs; NOOP x13; LRI(1); MI_BATCH_BUFFER_END), each register as its MMIO offset
 *   then its value, so each value sits at a fixed dword index (`CTX_*`, the value indices i915's intel_lrc_reg.h
 *   names);
 * - pages 2.. (render only): engine state. The model keeps none (there is no 3D pipeline): never read or written.
 *
 * The engine reads and writes only the `CTX_*` values: the LRI stream's offsets are for the reader (and for a
 * driver that checks it, as i915's live_lrc_layout does); they are not executed.
 */
import {
  CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT,
  CTX_CTRL_INHIBIT_SYN_CTX_SWITCH,
  GEN8_CTX_ADDRESSING_MODE_MASK,
  GEN8_CTX_ADDRESSING_MODE_SHIFT,
  GEN8_CTX_LRCA_MASK,
  GEN8_CTX_PRIVILEGE,
  GEN8_CTX_STATUS_ACTIVE_IDLE,
  GEN8_CTX_STATUS_COMPLETE,
  GEN8_CTX_STATUS_ELEMENT_SWITCH,
  GEN8_CTX_STATUS_IDLE_ACTIVE,
  GEN8_CTX_STATUS_LITE_RESTORE,
  GEN8_CTX_STATUS_PREEMPTED,
  GEN8_CTX_VALID,
  GT_ENGINE_BASE,
  type GtEngineId,
  gen8RingPdpLdw,
  gen8RingPdpUdw,
  INTEL_LEGACY_64B_CONTEXT,
  MI_BATCH_BUFFER_END,
  MI_LRI_FORCE_POSTED,
  MI_NOOP,
  maskedBitDisable,
  maskedBitEnable,
  miLoadRegisterImm,
  RING_BB_PER_CTX_PTR,
  RING_BBADDR,
  RING_BBADDR_UDW,
  RING_BBSTATE,
  RING_CONTEXT_CONTROL,
  RING_CTL,
  RING_CTX_TIMESTAMP,
  RING_HEAD,
  RING_INDIRECT_CTX,
  RING_INDIRECT_CTX_OFFSET,
  RING_START,
  RING_TAIL,
  RING_VALID,
} from "./regs.ts";

const TWO32 = 4294967296;

/** Page numbers within an image (LRC_PPHWSP_PN, LRC_STATE_PN). */
export const LRC_PPHWSP_PN = 0;
export const LRC_STATE_PN = 1;
/** Pages of a context image per engine (i915's context sizes on gen9: render 22, the others 2). */
export const LRC_PAGES: Readonly<Record<GtEngineId, number>> = { rcs: 22, bcs: 2, vcs: 2, vecs: 2 };
/** Byte offset of the register state page within the image. */
export const LRC_STATE_OFFSET = LRC_STATE_PN * 4096;
/** Byte offset in the PPHWSP that i915 points its request-start flushes at (LRC_PPHWSP_SCRATCH_ADDR). */
export const LRC_PPHWSP_SCRATCH_ADDR = 0x34 * 4;

// Value indices in the register state page (the register's MMIO offset is the dword before each).
export const CTX_CONTEXT_CONTROL = 0x03;
export const CTX_RING_HEAD = 0x05;
export const CTX_RING_TAIL = 0x07;
export const CTX_RING_START = 0x09;
export const CTX_RING_CTL = 0x0b;
export const CTX_BB_ADDR_UDW = 0x0d;
export const CTX_BB_ADDR = 0x0f;
export const CTX_BB_STATE = 0x11;
export const CTX_BB_PER_CTX_PTR = 0x19;
export const CTX_INDIRECT_CTX = 0x1b;
export const CTX_INDIRECT_CTX_OFFSET = 0x1d;
export const CTX_TIMESTAMP = 0x23;
export const CTX_PDP3_UDW = 0x25;
export const CTX_PDP3_LDW = 0x27;
export const CTX_PDP2_UDW = 0x29;
export const CTX_PDP2_LDW = 0x2b;
export const CTX_PDP1_UDW = 0x2d;
export const CTX_PDP1_LDW = 0x2f;
export const CTX_PDP0_UDW = 0x31;
export const CTX_PDP0_LDW = 0x33;
/** Dwords of the register state the engine reads on a restore (everything up to PDP0's value). */
export const LRC_RESTORE_DWORDS = CTX_PDP0_LDW + 1;

/** The ring-context registers of the first LRI block, in image order (offsets from the engine base). */
const BLOCK1: readonly number[] = [
  RING_CONTEXT_CONTROL,
  RING_HEAD,
  RING_TAIL,
  RING_START,
  RING_CTL,
  RING_BBADDR_UDW,
  RING_BBADDR,
  RING_BBSTATE,
  0x11c, // second-level batch address, upper dword
  0x114, // second-level batch address
  0x118, // second-level batch state
  RING_BB_PER_CTX_PTR,
  RING_INDIRECT_CTX,
  RING_INDIRECT_CTX_OFFSET,
];
/** The second LRI block: the context timestamp, then PDP3..PDP0, upper dword first. */
const BLOCK2: readonly number[] = [
  RING_CTX_TIMESTAMP,
  gen8RingPdpUdw(3),
  gen8RingPdpLdw(3),
  gen8RingPdpUdw(2),
  gen8RingPdpLdw(2),
  gen8RingPdpUdw(1),
  gen8RingPdpLdw(1),
  gen8RingPdpUdw(0),
  gen8RingPdpLdw(0),
];
const BLOCK2_AT = 0x21;
const BLOCK3_AT = 0x41;
/** GEN8_R_PWR_CLK_STATE on the render engine (base + 0xc8), RING 0x200 on the others: one register, value 0. */
const BLOCK3_RCS = 0xc8;
const BLOCK3_XCS = 0x200;

/** What a driver puts into a new context's register state. */
export interface LrcRegisterValues {
  /** Ring buffer GMA (page aligned), its length in bytes (4 KiB .. 2 MiB, whole pages), HEAD and TAIL offsets. */
  readonly ringStart: number;
  readonly ringBytes: number;
  readonly head?: number;
  readonly tail?: number;
  /** CTX_CONTEXT_CONTROL as a masked write (default `contextControl(true)`: a new context, nothing to restore). */
  readonly contextControl?: number;
  /** DMA address of the PPGTT's PML4 (PDP0); 0 for none. */
  readonly pml4?: number;
  readonly timestamp?: number;
}

/**
 * The CTX_CONTEXT_CONTROL value i915 writes: synchronous context switches inhibited, and engine restore inhibited
 * while the context has never run (`restoreInhibit`: nothing valid to restore beyond the ring context).
 */
export function contextControl(restoreInhibit: boolean): number {
  return (
    (restoreInhibit
      ? maskedBitEnable(CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT)
      : maskedBitDisable(CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT)) | maskedBitEnable(CTX_CTRL_INHIBIT_SYN_CTX_SWITCH)
  );
}

/** RING_CTL for a ring of `bytes` (whole pages): (pages - 1) << 12 | RING_VALID. */
export function ringCtlFor(bytes: number): number {
  return (((bytes / 4096 - 1) << 12) | RING_VALID) >>> 0;
}

/** The register state page (1024 dwords) of a context on `engine`. */
export function lrcRegisterState(engine: GtEngineId, v: LrcRegisterValues): Uint32Array {
  const base = GT_ENGINE_BASE[engine];
  const r = new Uint32Array(1024);
  r[0] = MI_NOOP;
  r[1] = (miLoadRegisterImm(BLOCK1.length) | MI_LRI_FORCE_POSTED) >>> 0;
  BLOCK1.forEach((off, i) => {
    r[2 + 2 * i] = base + off;
  });
  r[BLOCK2_AT] = (miLoadRegisterImm(BLOCK2.length) | MI_LRI_FORCE_POSTED) >>> 0;
  BLOCK2.forEach((off, i) => {
    r[BLOCK2_AT + 1 + 2 * i] = base + off;
  });
  r[BLOCK3_AT] = (miLoadRegisterImm(1) | MI_LRI_FORCE_POSTED) >>> 0;
  r[BLOCK3_AT + 1] = base + (engine === "rcs" ? BLOCK3_RCS : BLOCK3_XCS);
  r[BLOCK3_AT + 3] = MI_BATCH_BUFFER_END;
  r[CTX_CONTEXT_CONTROL] = v.contextControl ?? contextControl(true);
  r[CTX_RING_HEAD] = v.head ?? 0;
  r[CTX_RING_TAIL] = v.tail ?? 0;
  r[CTX_RING_START] = v.ringStart >>> 0;
  r[CTX_RING_CTL] = ringCtlFor(v.ringBytes);
  r[CTX_TIMESTAMP] = (v.timestamp ?? 0) >>> 0;
  const pml4 = v.pml4 ?? 0;
  r[CTX_PDP0_LDW] = (pml4 % TWO32) >>> 0;
  r[CTX_PDP0_UDW] = Math.floor(pml4 / TWO32) >>> 0;
  return r;
}

/** The PML4 DMA address in a register state (PDP0). */
export function lrcPml4(state: Uint32Array): number {
  return state[CTX_PDP0_LDW]! - (state[CTX_PDP0_LDW]! % 4096) + (state[CTX_PDP0_UDW]! & 0xfffff) * TWO32;
}

// ---- descriptors ------------------------------------------------------------------------------------------------

/** A context descriptor as the two dwords written to ELSP. */
export interface ContextDescriptor {
  readonly lo: number;
  readonly hi: number;
}

/**
 * The descriptor i915 builds (lrc_descriptor): valid, legacy 64-bit addressing (4-level PPGTT), privileged, the
 * image's GGTT address; the high dword is the context id the CSB reports (`ccid`).
 */
export function lrcDescriptor(lrca: number, ccid: number, flags = 0): ContextDescriptor {
  return {
    lo:
      (GEN8_CTX_VALID |
        (INTEL_LEGACY_64B_CONTEXT << GEN8_CTX_ADDRESSING_MODE_SHIFT) |
        GEN8_CTX_PRIVILEGE |
        flags |
        (lrca & GEN8_CTX_LRCA_MASK)) >>>
      0,
    hi: ccid >>> 0,
  };
}

export function descriptorValid(lo: number): boolean {
  return (lo & GEN8_CTX_VALID) !== 0;
}
export function descriptorAddressingMode(lo: number): number {
  return (lo & GEN8_CTX_ADDRESSING_MODE_MASK) >>> GEN8_CTX_ADDRESSING_MODE_SHIFT;
}
export function descriptorLrca(lo: number): number {
  return (lo & GEN8_CTX_LRCA_MASK) >>> 0;
}

// ---- context status buffer ----------------------------------------------------------------------------------------

/** One CSB entry: the status bits (low dword) and the context id (high dword). */
export interface CsbEvent {
  readonly status: number;
  readonly ctxId: number;
}

const CSB_NAMES: readonly [number, string][] = [
  [GEN8_CTX_STATUS_IDLE_ACTIVE, "IDLE_TO_ACTIVE"],
  [GEN8_CTX_STATUS_PREEMPTED, "PREEMPTED"],
  [GEN8_CTX_STATUS_ELEMENT_SWITCH, "ELEMENT_SWITCH"],
  [GEN8_CTX_STATUS_ACTIVE_IDLE, "ACTIVE_TO_IDLE"],
  [GEN8_CTX_STATUS_COMPLETE, "COMPLETE"],
  [GEN8_CTX_STATUS_LITE_RESTORE, "LITE_RESTORE"],
];

/** The status bits of a CSB entry by name, e.g. "ELEMENT_SWITCH|COMPLETE". */
export function csbStatusName(status: number): string {
  const names = CSB_NAMES.filter(([bit]) => (status & bit) !== 0).map(([, n]) => n);
  return names.length > 0 ? names.join("|") : "0";
}
