/**
 * The command decoder: which command a header dword is and how many dwords it has, as one table that every reader of
 * a command stream uses (the engines in engine.ts, the vGPU's command scanner, tests). The encodings are regs.ts; the
 * encoders commands.ts; what each command does is the datasheet (docs/gpu-programming.md, section 7).
 *
 * Bits 29..31 of a header select the client:
 * - 0 MI: opcode bits 23..28; the length field (total - 2) is bits 0..7, except MI_STORE_DATA_IMM (0..9) and
 *   MI_FLUSH_DW (0..5); MI_NOOP, MI_USER_INTERRUPT, MI_ARB_CHECK, MI_ARB_ON_OFF and MI_BATCH_BUFFER_END are 1 dword.
 * - 2 2D (blitter): opcode bits 22..28; length bits 0..7.
 * - 3 render (GFX): subtype bits 27..28, opcode 24..26, sub-opcode 16..23. Subtype 1 commands are single dwords
 *   (PIPELINE_SELECT, 3DSTATE_VF_STATISTICS); media commands (subtype 2) have a 16-bit length field;
 *   3DSTATE_SO_DECL_LIST a 9-bit one; every other render command an 8-bit one. PIPE_CONTROL executes; every other
 *   render command is decoded by length and skipped: there is no 3D or media pipeline in the model.
 * Anything else (clients 1, 4..7, MI opcodes not listed) is unknown.
 *
 * `commandKind` and `commandLength` are the engines' hot path (a switch, no search, no allocation); `decodeCommand`
 * returns the table row (a name for messages and the vGPU scanner's audit switch).
 */
import {
  INSTR_BC_CLIENT,
  INSTR_CLIENT_SHIFT,
  INSTR_MI_CLIENT,
  XY_COLOR_BLT_OPCODE,
  XY_SRC_COPY_BLT_OPCODE,
} from "./regs.ts";

// Command kinds: small integers, one per row of COMMANDS.
export const K_UNKNOWN = 0;
export const K_NOOP = 1;
export const K_USER_INTERRUPT = 2;
export const K_BB_END = 3;
export const K_STORE = 4;
export const K_LRI = 5;
export const K_BB_START = 6;
export const K_COLOR_BLT = 7;
export const K_SRC_COPY_BLT = 8;
export const K_ARB_CHECK = 9;
export const K_ARB_ON_OFF = 10;
export const K_SEMAPHORE_WAIT = 11;
export const K_FLUSH_DW = 12;
export const K_PIPE_CONTROL = 13;
export const K_PIPELINE_SELECT = 14;
export const K_VF_STATISTICS = 15;
export const K_SO_DECL_LIST = 16;
export const K_3DPRIMITIVE = 17;
/** Any other render-client command (3D state, media state, common state): skipped by length. */
export const K_GFX_STATE = 18;

/** The longest command: a media command with a 16-bit length field. */
export const MAX_COMMAND_DWORDS = 0xffff + 2;

const RC_CLIENT = 3;

/** The kind of the command whose first dword is `header` (K_UNKNOWN for a command the GPU does not decode). */
export function commandKind(header: number): number {
  const client = header >>> INSTR_CLIENT_SHIFT;
  if (client === INSTR_MI_CLIENT) {
    switch ((header >>> 23) & 0x3f) {
      case 0x00:
        return K_NOOP;
      case 0x02:
        return K_USER_INTERRUPT;
      case 0x05:
        return K_ARB_CHECK;
      case 0x08:
        return K_ARB_ON_OFF;
      case 0x0a:
        return K_BB_END;
      case 0x1c:
        return K_SEMAPHORE_WAIT;
      case 0x20:
        return K_STORE;
      case 0x22:
        return K_LRI;
      case 0x26:
        return K_FLUSH_DW;
      case 0x31:
        return K_BB_START;
      default:
        return K_UNKNOWN;
    }
  }
  if (client === INSTR_BC_CLIENT) {
    const op = (header >>> 22) & 0x7f;
    if (op === XY_COLOR_BLT_OPCODE) return K_COLOR_BLT;
    if (op === XY_SRC_COPY_BLT_OPCODE) return K_SRC_COPY_BLT;
    return K_UNKNOWN;
  }
  if (client === RC_CLIENT) {
    switch ((header >>> 16) & 0x1fff) {
      case 0x1a00: // subtype 3, opcode 2, sub-opcode 0
        return K_PIPE_CONTROL;
      case 0x0904: // subtype 1, opcode 1, sub-opcode 4
        return K_PIPELINE_SELECT;
      case 0x080b: // subtype 1, opcode 0, sub-opcode 0x0b
        return K_VF_STATISTICS;
      case 0x1917: // subtype 3, opcode 1, sub-opcode 0x17
        return K_SO_DECL_LIST;
      case 0x1b00: // subtype 3, opcode 3, sub-opcode 0
        return K_3DPRIMITIVE;
      default:
        return K_GFX_STATE;
    }
  }
  return K_UNKNOWN;
}

/** Total length in dwords of a command of known `kind` with first dword `header`. */
export function commandLength(kind: number, header: number): number {
  switch (kind) {
    case K_STORE:
      return (header & 0x3ff) + 2;
    case K_FLUSH_DW:
      return (header & 0x3f) + 2;
    case K_LRI:
    case K_BB_START:
    case K_SEMAPHORE_WAIT:
    case K_COLOR_BLT:
    case K_SRC_COPY_BLT:
    case K_PIPE_CONTROL:
    case K_3DPRIMITIVE:
      return (header & 0xff) + 2;
    case K_SO_DECL_LIST:
      return (header & 0x1ff) + 2;
    case K_GFX_STATE: {
      const subtype = (header >>> 27) & 3;
      if (subtype === 1) return 1;
      if (subtype === 2) return (header & 0xffff) + 2;
      return (header & 0xff) + 2;
    }
    default:
      return 1;
  }
}

/** Every command the model decodes, as a table: opcode match, length rule, name (what the scanner audits). */
export interface CommandInfo {
  readonly name: string;
  readonly client: number;
  /**
   * Opcode field value: bits 23..28 for MI, bits 22..28 for 2D, bits 16..28 (subtype, opcode, sub-opcode) for render
   * commands; -1 for the row that stands for every other render command.
   */
  readonly opcode: number;
  /** Total length in dwords given the header; fixed-length commands ignore it. */
  length(header: number): number;
}

function row(kind: number, name: string, client: number, opcode: number): CommandInfo {
  return { name, client, opcode, length: (h) => commandLength(kind, h) };
}

/** Indexed by kind (K_*); K_UNKNOWN has no row. */
const ROWS: readonly (CommandInfo | undefined)[] = [
  undefined,
  row(K_NOOP, "MI_NOOP", INSTR_MI_CLIENT, 0x00),
  row(K_USER_INTERRUPT, "MI_USER_INTERRUPT", INSTR_MI_CLIENT, 0x02),
  row(K_BB_END, "MI_BATCH_BUFFER_END", INSTR_MI_CLIENT, 0x0a),
  row(K_STORE, "MI_STORE_DATA_IMM", INSTR_MI_CLIENT, 0x20),
  row(K_LRI, "MI_LOAD_REGISTER_IMM", INSTR_MI_CLIENT, 0x22),
  row(K_BB_START, "MI_BATCH_BUFFER_START", INSTR_MI_CLIENT, 0x31),
  row(K_COLOR_BLT, "XY_COLOR_BLT", INSTR_BC_CLIENT, XY_COLOR_BLT_OPCODE),
  row(K_SRC_COPY_BLT, "XY_SRC_COPY_BLT", INSTR_BC_CLIENT, XY_SRC_COPY_BLT_OPCODE),
  row(K_ARB_CHECK, "MI_ARB_CHECK", INSTR_MI_CLIENT, 0x05),
  row(K_ARB_ON_OFF, "MI_ARB_ON_OFF", INSTR_MI_CLIENT, 0x08),
  row(K_SEMAPHORE_WAIT, "MI_SEMAPHORE_WAIT", INSTR_MI_CLIENT, 0x1c),
  row(K_FLUSH_DW, "MI_FLUSH_DW", INSTR_MI_CLIENT, 0x26),
  row(K_PIPE_CONTROL, "PIPE_CONTROL", RC_CLIENT, 0x1a00),
  row(K_PIPELINE_SELECT, "PIPELINE_SELECT", RC_CLIENT, 0x0904),
  row(K_VF_STATISTICS, "3DSTATE_VF_STATISTICS", RC_CLIENT, 0x080b),
  row(K_SO_DECL_LIST, "3DSTATE_SO_DECL_LIST", RC_CLIENT, 0x1917),
  row(K_3DPRIMITIVE, "3DPRIMITIVE", RC_CLIENT, 0x1b00),
  row(K_GFX_STATE, "GFX_STATE", RC_CLIENT, -1),
];

export const COMMANDS: readonly CommandInfo[] = ROWS.filter((r): r is CommandInfo => r !== undefined);

/** Finds the table row of a command header, or undefined for a command the model does not implement. */
export function decodeCommand(header: number): CommandInfo | undefined {
  return ROWS[commandKind(header)];
}
