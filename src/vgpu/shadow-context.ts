/**
 * A guest's logical ring context as the vendor driver reads, checks, shadows and updates it: the context half of
 * GVT-g's workload (intel_vgpu_create_workload's reads of the ring registers, populate_shadow_context,
 * update_guest_context). Pure functions over the guest's graphics memory (`ContextMemory`: the vGPU's GGTT as its
 * shadow GTT maps it); no state of its own.
 *
 * Reading (`readGuestContext`): the descriptor's LRCA must be the start of a whole context image inside the vGPU's
 * partition (LRC_PAGES of the engine: 22 pages for rcs, 2 for the others); page 1, the register state, is read through
 * the shadow GTT (GMA -> pinned guest page -> vfio_dma_rw). From it: CTX_CONTEXT_CONTROL (restore-inhibit), ring
 * HEAD, TAIL, START, CTL (ring start, size), CTX_TIMESTAMP and PDP0 (the PML4). Rejected, with a reason:
 * - an LRCA outside the partition (or a context image running out of it), or a page of it with no guest page behind;
 * - an addressing mode other than legacy 64-bit (3): legacy 32-bit (1) passes the ELSP check, as GVT-g accepts it, but
 *   the GPU walks 4-level tables only, so it is refused here (a stated difference; i915 never builds one on Skylake);
 * - a ring that is not enabled, not inside the partition, or whose HEAD or TAIL lies beyond it;
 * - a PDP0 that is 0 (no PPGTT) or not page aligned;
 * - a register state that loads a register the vGPU must not let a guest write (`auditRegisterState`).
 *
 * The register state audit: hardware restores a context by executing page 1 as an MI_LOAD_REGISTER_IMM stream, so
 * what matters is every (register, value) pair the stream names. The first RING_CTX_DWORDS (the ring context: ring
 * registers, batch state, workaround batch pointers, timestamp, PDPs, i915's and GVT-g's "ring context") are never
 * taken from the guest: the shadow's are the vendor driver's own (`shadowRegisterState`), only CONTEXT_CONTROL and
 * CTX_TIMESTAMP values are copied, as GVT-g's COPY_REG. The rest of the page is copied as GVT-g copies it, and is
 * audited first: it may hold only MI_NOOP, MI_LOAD_REGISTER_IMM and MI_BATCH_BUFFER_END (which ends it), and every
 * register an LRI there names must be one of the engine's own context registers (inside its 4 KiB register page)
 * and none of those that name memory or control submission (`CONTEXT_FORBIDDEN`: ring, status page, batch and
 * workaround-batch pointers, PDPs, ELSP, GFX_MODE, RESET_CTL, the CSB). i915 6.1's image passes: after the ring
 * context it loads 44 registers of the engine page (gen9_xcs_offsets / gen9_rcs_offsets), none forbidden.
 *
 * Not copied (stated differences from GVT-g): the engine state pages (2.., render only) and the per-context
 * workaround batch pointers (BB_PER_CTX_PTR, INDIRECT_CTX): the GPU model keeps no engine state and never runs those
 * batches (datasheet 6.7), so the shadow starts from zeros there; GVT-g copies (and for the batches, shadows) them.
 * The PPHWSP (page 0) is the shadow's own, as in GVT-g: store-index writes of the guest's commands land there.
 *
 * Write-back (`writeBackGuestContext`, update_guest_context): CTX_RING_HEAD := the workload's TAIL (the engine ran
 * the ring to its end), CTX_CONTEXT_CONTROL and CTX_TIMESTAMP := the shadow's as the engine saved them. Nothing else
 * is written (GVT-g also writes back the engine state pages and page 1 beyond the ring context, which the model's
 * engine never changes).
 */
import { type Gpa, gpa, hex, PAGE_SIZE } from "../core/index.ts";
import {
  CTX_CONTEXT_CONTROL,
  CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT,
  CTX_PDP0_LDW,
  CTX_PDP0_UDW,
  CTX_RING_CTL,
  CTX_RING_HEAD,
  CTX_RING_START,
  CTX_RING_TAIL,
  CTX_TIMESTAMP,
  GT_ENGINE_BASE,
  type GtEngineId,
  HEAD_ADDR,
  INSTR_CLIENT_SHIFT,
  INSTR_MI_CLIENT,
  LRC_PAGES,
  LRC_STATE_OFFSET,
  lrcRegisterState,
  ppgttEntryAddress,
  RING_VALID,
  ringCtlLength,
  TAIL_ADDR,
} from "../gpu/index.ts";
import { type ContextDescriptor, CTX_ADDRESSING_LEGACY_64 } from "./execlist-state.ts";

/** Dwords of the ring context (GVT-g's RING_CTX_SIZE, 320 bytes): never taken from the guest but for two values. */
export const RING_CTX_DWORDS = 0x50;
/** Dwords of the register state page. */
const STATE_DWORDS = PAGE_SIZE / 4;

/**
 * Registers (offsets from the engine's base) a guest's context image may not load outside the ring context: they
 * name memory (ring, status page, batches, workaround batches, page directories) or control submission and resets.
 */
export const CONTEXT_FORBIDDEN: readonly { readonly offset: number; readonly name: string }[] = [
  { offset: 0x30, name: "RING_TAIL" },
  { offset: 0x34, name: "RING_HEAD" },
  { offset: 0x38, name: "RING_START" },
  { offset: 0x3c, name: "RING_CTL" },
  { offset: 0x80, name: "RING_HWS_PGA" },
  { offset: 0xd0, name: "RING_RESET_CTL" },
  { offset: 0x110, name: "RING_BBSTATE" },
  { offset: 0x114, name: "RING_SBBADDR" },
  { offset: 0x118, name: "RING_SBBSTATE" },
  { offset: 0x11c, name: "RING_SBBADDR_UDW" },
  { offset: 0x140, name: "RING_BBADDR" },
  { offset: 0x168, name: "RING_BBADDR_UDW" },
  { offset: 0x1c0, name: "RING_BB_PER_CTX_PTR" },
  { offset: 0x1c4, name: "RING_INDIRECT_CTX" },
  { offset: 0x1c8, name: "RING_INDIRECT_CTX_OFFSET" },
  { offset: 0x230, name: "RING_ELSP" },
  { offset: 0x244, name: "RING_CONTEXT_CONTROL" },
  ...[0, 1, 2, 3].flatMap((n) => [
    { offset: 0x270 + 8 * n, name: `GEN8_RING_PDP_LDW(${n})` },
    { offset: 0x274 + 8 * n, name: `GEN8_RING_PDP_UDW(${n})` },
  ]),
  { offset: 0x29c, name: "RING_MODE_GEN7" },
  ...[0, 1, 2, 3, 4, 5].flatMap((n) => [
    { offset: 0x370 + 8 * n, name: `RING_CONTEXT_STATUS_BUF_LO(${n})` },
    { offset: 0x374 + 8 * n, name: `RING_CONTEXT_STATUS_BUF_HI(${n})` },
  ]),
  { offset: 0x3a0, name: "RING_CONTEXT_STATUS_PTR" },
];
const FORBIDDEN = new Map(CONTEXT_FORBIDDEN.map((r) => [r.offset, r.name]));
const ENGINE_PAGE = 0x1000;
const MI_OPCODE_NOOP = 0x00;
const MI_OPCODE_BB_END = 0x0a;
const MI_OPCODE_LRI = 0x22;
const TWO32 = 4294967296;

/** The guest's graphics memory as the vendor driver reaches it (the shadow GTT). */
export interface ContextMemory {
  /** [gma, gma + length) lies wholly inside the aperture or the hidden partition. */
  inPartition(gma: number, length: number): boolean;
  /** Copies guest graphics memory; -1 on success, else the GMA of the first page with no guest page behind. */
  readGm(gma: number, dst: Uint8Array): number;
  writeGm(gma: number, src: Uint8Array): number;
  /** "aperture [a, b), hidden [c, d)". */
  describe(): string;
}

/** A guest context, read and checked. */
export interface GuestContext {
  readonly engine: GtEngineId;
  readonly lrca: number;
  /** The register state page as read (1024 dwords). */
  readonly regs: Uint32Array;
  readonly contextControl: number;
  readonly restoreInhibit: boolean;
  /** Byte offsets in the ring. */
  readonly head: number;
  readonly tail: number;
  readonly ringStart: number;
  readonly ringBytes: number;
  readonly timestamp: number;
  /** The guest-physical address of its PML4. */
  readonly pml4: Gpa;
}

/** Reads and checks the context `d` names on `engine`: the context, or why it is rejected. */
export function readGuestContext(mem: ContextMemory, engine: GtEngineId, d: ContextDescriptor): GuestContext | string {
  const lrca = d.lrca;
  const bytes = LRC_PAGES[engine] * PAGE_SIZE;
  if (!mem.inPartition(lrca, bytes)) {
    return (
      `the context image at LRCA ${hex(lrca)} (${LRC_PAGES[engine]} pages) is outside the vGPU's graphics memory ` +
      `(${mem.describe()})`
    );
  }
  if (d.addressingMode !== CTX_ADDRESSING_LEGACY_64) {
    return (
      `addressing mode ${d.addressingMode} (legacy 32-bit, a 3-level PPGTT): the GPU walks 4-level PPGTTs only ` +
      "(legacy 64-bit, 3)"
    );
  }
  const regs = new Uint32Array(STATE_DWORDS);
  const bad = mem.readGm(lrca + LRC_STATE_OFFSET, new Uint8Array(regs.buffer));
  if (bad >= 0) return `the context's register state page at GMA ${hex(bad)} has no guest page behind it`;
  const ctl = regs[CTX_RING_CTL]!;
  const ringStart = (regs[CTX_RING_START]! & 0xfffff000) >>> 0;
  const ringBytes = ringCtlLength(ctl);
  if ((ctl & RING_VALID) === 0) return `its ring is not enabled (CTX_RING_CTL ${hex(ctl)} lacks RING_VALID)`;
  if (!mem.inPartition(ringStart, ringBytes)) {
    return (
      `its ring [${hex(ringStart)}, ${hex(ringStart + ringBytes)}) is outside the vGPU's graphics memory ` +
      `(${mem.describe()})`
    );
  }
  const head = regs[CTX_RING_HEAD]! & HEAD_ADDR;
  const tail = regs[CTX_RING_TAIL]! & TAIL_ADDR;
  if (head >= ringBytes || tail >= ringBytes) {
    return `its ring HEAD ${hex(head)} or TAIL ${hex(tail)} lies beyond the ${ringBytes}-byte ring`;
  }
  const pml4 = ppgttEntryAddress(regs[CTX_PDP0_LDW]!, regs[CTX_PDP0_UDW]!);
  const rawPdp0 = regs[CTX_PDP0_LDW]! + (regs[CTX_PDP0_UDW]! & 0xfffff) * TWO32;
  if (pml4 === 0 || rawPdp0 % PAGE_SIZE !== 0) {
    return `its PDP0 ${hex(rawPdp0)} is ${pml4 === 0 ? "0: a context without a PPGTT" : "not a page-aligned PML4 address"}`;
  }
  const audit = auditRegisterState(engine, regs);
  if (audit !== undefined) return audit;
  const contextControl = regs[CTX_CONTEXT_CONTROL]!;
  return {
    engine,
    lrca,
    regs,
    contextControl,
    restoreInhibit: (contextControl & CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT) !== 0,
    head,
    tail,
    ringStart,
    ringBytes,
    timestamp: regs[CTX_TIMESTAMP]!,
    pml4: gpa(pml4),
  };
}

/**
 * Why the register state `regs` of a context on `engine` may not be restored, or undefined: the LRI stream from
 * RING_CTX_DWORDS on (the part the shadow copies) may hold only MI_NOOP, MI_LOAD_REGISTER_IMM and
 * MI_BATCH_BUFFER_END, and each register it loads must be a context register of the engine and not forbidden.
 */
export function auditRegisterState(engine: GtEngineId, regs: Uint32Array): string | undefined {
  const base = GT_ENGINE_BASE[engine];
  let pos = 0;
  while (pos < STATE_DWORDS) {
    const h = regs[pos]!;
    const client = h >>> INSTR_CLIENT_SHIFT;
    const opcode = (h >>> 23) & 0x3f;
    if (client === INSTR_MI_CLIENT && opcode === MI_OPCODE_NOOP) {
      pos++;
      continue;
    }
    if (client === INSTR_MI_CLIENT && opcode === MI_OPCODE_BB_END) return undefined;
    if (client !== INSTR_MI_CLIENT || opcode !== MI_OPCODE_LRI) {
      return `its register state holds ${hex(h >>> 0)} at dword ${hex(pos)}: only MI_NOOP, MI_LOAD_REGISTER_IMM and MI_BATCH_BUFFER_END may appear there`;
    }
    const len = (h & 0xff) + 2;
    if ((len - 1) % 2 !== 0)
      return `its register state has an MI_LOAD_REGISTER_IMM of ${len} dwords at dword ${hex(pos)}`;
    for (let k = pos + 1; k + 1 < pos + len && k < STATE_DWORDS; k += 2) {
      if (k < RING_CTX_DWORDS) continue; // the ring context: replaced by the shadow's own
      const reg = regs[k]!;
      const off = reg - base;
      const name = FORBIDDEN.get(off);
      if ((reg & ~0x7ffffc) !== 0 || off < 0 || off >= ENGINE_PAGE || name !== undefined) {
        return (
          `its register state loads ${name ?? `register ${hex(reg)}`} (dword ${hex(k)}), which a guest context may not ` +
          `load: ${name !== undefined ? "it names memory or controls submission" : `it is not a context register of ${engine}`}`
        );
      }
    }
    pos += len;
  }
  return undefined;
}

/** Copies the guest's ring between HEAD and TAIL (wrapping) out of its graphics memory; the dwords, or why not. */
export function readGuestRing(mem: ContextMemory, ctx: GuestContext): Uint32Array | string {
  const { head, tail, ringStart, ringBytes } = ctx;
  const bytes = (tail - head + ringBytes) % ringBytes;
  const out = new Uint32Array(bytes / 4);
  const raw = new Uint8Array(out.buffer);
  const first = Math.min(bytes, ringBytes - head);
  let bad = mem.readGm(ringStart + head, raw.subarray(0, first));
  if (bad < 0 && first < bytes) bad = mem.readGm(ringStart, raw.subarray(first));
  if (bad >= 0) return `its ring page at GMA ${hex(bad)} has no guest page behind it`;
  return out;
}

/**
 * The shadow's register state page (GVT-g's shadow ring context): the vendor driver's own ring context, running the
 * shadow ring `ring` from 0 to its `tail`, with the guest's CONTEXT_CONTROL (made a full masked write, as
 * COPY_REG_MASKED) and CTX_TIMESTAMP; then the guest's audited dwords from RING_CTX_DWORDS on. PDP0 is left 0: the
 * host driver points it at the shadow PML4 when it submits the context.
 */
export function shadowRegisterState(
  ctx: GuestContext,
  ring: { readonly gma: number; readonly bytes: number; readonly tail: number },
): Uint32Array {
  const regs = lrcRegisterState(ctx.engine, {
    ringStart: ring.gma,
    ringBytes: ring.bytes,
    head: 0,
    tail: ring.tail,
    contextControl: (ctx.contextControl | 0xffff_0000) >>> 0,
    timestamp: ctx.timestamp,
  });
  regs.set(ctx.regs.subarray(RING_CTX_DWORDS), RING_CTX_DWORDS);
  return regs;
}

/** What the engine saved into the shadow image at switch-out. */
export interface SavedContext {
  readonly contextControl: number;
  readonly timestamp: number;
}

/** update_guest_context: HEAD := TAIL, CONTEXT_CONTROL and CTX_TIMESTAMP as saved. Undefined, or why it failed. */
export function writeBackGuestContext(mem: ContextMemory, ctx: GuestContext, saved: SavedContext): string | undefined {
  const base = ctx.lrca + LRC_STATE_OFFSET;
  const word = new Uint8Array(4);
  const dv = new DataView(word.buffer);
  for (const [i, v] of [
    [CTX_RING_HEAD, ctx.tail],
    [CTX_CONTEXT_CONTROL, saved.contextControl],
    [CTX_TIMESTAMP, saved.timestamp],
  ] as const) {
    dv.setUint32(0, v >>> 0, true);
    const bad = mem.writeGm(base + 4 * i, word);
    if (bad >= 0) return `the context's register state page at GMA ${hex(bad)} has no guest page behind it`;
  }
  return undefined;
}
