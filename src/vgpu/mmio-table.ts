/**
 * The vGPU's tracked MMIO registers as a table: register -> behaviour (and value after reset), GVT-g's handlers.c
 * rows reduced to what a Linux 6.1 i915 reads, writes or polls on a Skylake GT2, plus what this project's own guest
 * driver uses. `mmio.ts` implements each behaviour once; this file only says which register has which. Every offset
 * not in the table lies in the register range and behaves as plain storage (GVT-g's untracked registers).
 *
 * Behaviours:
 * - `ram`: stores what the guest writes and reads it back (GVT-g's default read/write);
 * - `masked`: bits 31..16 of a write select which of bits 15..0 it changes (GVT-g's F_MODE_MASK);
 * - `ro`: reads its value; writes are dropped (fuses and capability registers);
 * - `w1c`: writing 1 clears a bit (RING_EIR, the IIR of register sets the vGPU raises nothing in);
 * - `fpga-dbg`: storage whose bit 31 (unclaimed access) never reads 1 (fpga_dbg_mmio_write);
 * - `reset-ctl`: masked; READY_TO_RESET follows REQUEST_RESET (ring_reset_ctl_write);
 * - `gdrst`: a write resets the named engines of the vGPU; reads 0 (gdrst_mmio_write);
 * - `tlb-control`: a TLB invalidation request completes at once: reads 0 (gvt_reg_tlb_control_handler; the shadow
 *   PPGTT is re-walked at every submission and the GPU's TLB is flushed at every context restore, so nothing is left
 *   to invalidate);
 * - `guc-status`: GUC_STATUS: MIA_IN_RESET reads 1 once after a GuC reset (guc_status_read);
 * - `power-well`: the driver's power well requests; each well's STATE follows its REQUEST (skl_power_well_ctl_write);
 * - `pcode-mailbox`: the PCU mailbox: never busy, canned answers (mailbox_write; SAGV refused, see mmio.ts);
 * - `mi-mode`: masked; MODE_IDLE (bit 9) reads 1 while the virtual engine has no work;
 * - `gfx-mode`: masked; RUN_LIST switches the engine to execlists; failsafe rules (ring_mode_mmio_write);
 * - `hws-pga`: stored when it names a page of the vGPU's graphics memory (hws_pga_write), else dropped;
 * - `elsp`: the execlist submit port (elsp_mmio_write);
 * - `execlist-ro`: the execlist status and the CSB copy: written by the virtual execlists only;
 * - `ring`, `ring-ro`: ring buffer registers of the legacy submission path (RING_TAIL submits; ACTHD read-only);
 * - `gt-irq`: the master interrupt and the four GT banks (irq.ts);
 * - `fence`: fence registers (the vGPU's physical fences, vgpu.ts);
 * - `pvinfo`: the PVINFO page (pvinfo.ts).
 *
 * Values after reset are GVT-g's host snapshot where i915 cares (a Skylake GT2 with one slice of 3 subslices, no RPS,
 * a 24 MHz raw clock, no display, its power-gate fuses distributed) and 0 elsewhere. **SKL_DFSM is a stated difference from GVT-g**: GVT-g copies the
 * host's DFSM and emulates a display (virtual pipes, ports, EDID, power wells); this vGPU has no display and sets the
 * three pipe-disable fuses, so i915 finds no pipe (HAS_DISPLAY false) and skips display initialisation entirely
 * (i915.disable_display=1 would not: on 6.1 it only stops output probing). What i915 still touches of the display
 * without a pipe (power wells, their fuses, DC state) is answered as GVT-g answers it.
 *
 * Invariant: rows do not overlap; every row lies in [0, MMIO_SIZE).
 */
import {
  FENCE_REG_GEN6_LO,
  FENCE_STRIDE,
  GEN6_GDRST,
  GEN8_MASTER_IRQ,
  HEAD_ADDR,
  MMIO_SIZE,
  NUM_FENCES,
  RING_ACTHD,
  RING_CTL,
  RING_EIR,
  RING_HEAD,
  RING_HWS_PGA,
  RING_START,
  RING_TAIL,
  TAIL_ADDR,
  VGT_PVINFO_PAGE,
  VGT_PVINFO_SIZE,
} from "../gpu/index.ts";
import { type VEngineId, VGPU_ENGINES } from "./engines.ts";
import {
  CSB_ENTRIES,
  CSB_WRITE_PTR_RESET,
  DC_STATE_EN,
  FPGA_DBG,
  GAM_ECOCHK,
  GEN6_PCODE_DATA,
  GEN6_PCODE_DATA1,
  GEN6_PCODE_MAILBOX,
  GEN6_RP_STATE_CAP,
  GEN8_FUSE2,
  GEN8_GAMW_ECO_DEV_RW_IA,
  GEN8_GT_BANKS,
  GEN8_MCR_SELECTOR,
  GEN8_PRIVATE_PAT_HI,
  GEN8_PRIVATE_PAT_LO,
  GEN8_RTCR,
  GEN8_TLB_CONTROL_REGS,
  GEN9_EU_DISABLE0,
  GEN9_GFX_MOCS_BYTES,
  GEN9_GFX_MOCS0,
  GEN9_LNCFCMOCS_BYTES,
  GEN9_LNCFCMOCS0,
  GEN9_MAX_SLICES,
  GUC_STATUS,
  gen8GtIsr,
  HSW_GTT_CACHE_EN,
  HSW_PWR_WELL_CTL1,
  HSW_PWR_WELL_CTL2,
  IRQ_IER,
  IRQ_IIR,
  IRQ_IMR,
  IRQ_ISR,
  MASKED_WA_REGS,
  OTHER_IRQ_BANKS,
  PCH_RAWCLK_FREQ,
  RING_CONTEXT_CONTROL,
  RING_CONTEXT_STATUS_BUF,
  RING_CONTEXT_STATUS_PTR,
  RING_CSFE_CHICKEN1,
  RING_ELSP,
  RING_EMR,
  RING_ESR,
  RING_EXECLIST_STATUS_LO,
  RING_HWSTAM,
  RING_IMR,
  RING_INSTPM,
  RING_MI_MODE,
  RING_MODE_GEN7,
  RING_RESET_CTL,
  RING_TIMESTAMP,
  SKL_DFSM,
  SKL_DFSM_PIPE_A_DISABLE,
  SKL_DFSM_PIPE_B_DISABLE,
  SKL_DFSM_PIPE_C_DISABLE,
  SKL_FUSE_DONE,
  SKL_FUSE_STATUS,
  SKL_GT2_FUSE2,
  SPT_RAWCLK_MHZ,
} from "./gvt-regs.ts";

/** What a tracked register does (see the module comment). */
export type MmioBehaviour =
  | "ram"
  | "masked"
  | "ro"
  | "w1c"
  | "fpga-dbg"
  | "reset-ctl"
  | "gdrst"
  | "tlb-control"
  | "guc-status"
  | "power-well"
  | "pcode-mailbox"
  | "mi-mode"
  | "gfx-mode"
  | "hws-pga"
  | "elsp"
  | "execlist-ro"
  | "ring"
  | "ring-ro"
  | "gt-irq"
  | "fence"
  | "pvinfo";

/** One row of the table. */
export interface MmioRegInfo {
  readonly name: string;
  readonly offset: number;
  /** Bytes covered (4 for a register; a multiple of 4 for a range). */
  readonly size: number;
  readonly kind: MmioBehaviour;
  /** Value of every dword of the row after a device reset (default 0). */
  readonly init?: number;
  /** For per-engine registers: the engine and the register's offset from the engine base. */
  readonly engine?: VEngineId;
  readonly engineReg?: number;
  /** For `ring` registers: the bits the guest can set. */
  readonly writeMask?: number;
}

/** Per-engine rows: offset from the base, name, behaviour. */
const ENGINE_ROWS: readonly {
  readonly reg: number;
  readonly name: string;
  readonly kind: MmioBehaviour;
  readonly size?: number;
  readonly init?: number;
  readonly writeMask?: number;
}[] = [
  { reg: RING_TAIL, name: "RING_TAIL", kind: "ring", writeMask: TAIL_ADDR },
  { reg: RING_HEAD, name: "RING_HEAD", kind: "ring", writeMask: HEAD_ADDR },
  { reg: RING_START, name: "RING_START", kind: "ring", writeMask: 0xffff_f000 },
  { reg: RING_CTL, name: "RING_CTL", kind: "ring", writeMask: 0xffff_ffff },
  { reg: RING_ACTHD, name: "RING_ACTHD", kind: "ring-ro" },
  { reg: RING_HWS_PGA, name: "RING_HWS_PGA", kind: "hws-pga" },
  { reg: RING_HWSTAM, name: "RING_HWSTAM", kind: "ram" },
  { reg: RING_MI_MODE, name: "RING_MI_MODE", kind: "mi-mode" },
  { reg: RING_IMR, name: "RING_IMR", kind: "ram" },
  { reg: RING_EIR, name: "RING_EIR", kind: "w1c" },
  { reg: RING_EMR, name: "RING_EMR", kind: "ram" },
  { reg: RING_ESR, name: "RING_ESR", kind: "ro" },
  { reg: RING_INSTPM, name: "RING_INSTPM", kind: "masked" },
  { reg: RING_RESET_CTL, name: "RING_RESET_CTL", kind: "reset-ctl" },
  { reg: RING_CSFE_CHICKEN1, name: "CSFE_CHICKEN1", kind: "masked" },
  { reg: RING_ELSP, name: "RING_ELSP", kind: "elsp" },
  { reg: RING_EXECLIST_STATUS_LO, name: "RING_EXECLIST_STATUS", kind: "execlist-ro", size: 8 },
  { reg: RING_CONTEXT_CONTROL, name: "RING_CONTEXT_CONTROL", kind: "ram" },
  { reg: RING_MODE_GEN7, name: "RING_MODE_GEN7", kind: "gfx-mode" },
  { reg: RING_TIMESTAMP, name: "RING_TIMESTAMP", kind: "ram" },
  { reg: RING_CONTEXT_STATUS_BUF, name: "RING_CONTEXT_STATUS_BUF", kind: "execlist-ro", size: 8 * CSB_ENTRIES },
  { reg: RING_CONTEXT_STATUS_PTR, name: "RING_CONTEXT_STATUS_PTR", kind: "masked", init: CSB_WRITE_PTR_RESET },
];

function buildTable(): MmioRegInfo[] {
  const t: MmioRegInfo[] = [];
  for (const e of VGPU_ENGINES) {
    for (const r of ENGINE_ROWS) {
      t.push({
        name: `${e.id.toUpperCase()}_${r.name}`,
        offset: e.base + r.reg,
        size: r.size ?? 4,
        kind: r.kind,
        ...(r.init !== undefined ? { init: r.init } : {}),
        engine: e.id,
        engineReg: r.reg,
        ...(r.writeMask !== undefined ? { writeMask: r.writeMask } : {}),
      });
    }
  }
  t.push(
    { name: "GEN8_MASTER_IRQ", offset: GEN8_MASTER_IRQ, size: 4, kind: "gt-irq" },
    { name: "GEN8_GT_ISR..IER(0..3)", offset: gen8GtIsr(0), size: 0x10 * GEN8_GT_BANKS, kind: "gt-irq" },
  );
  for (const b of OTHER_IRQ_BANKS) {
    t.push(
      { name: `${b.name}_ISR`, offset: b.isr + IRQ_ISR, size: 4, kind: "ro" },
      { name: `${b.name}_IMR`, offset: b.isr + IRQ_IMR, size: 4, kind: "ram", init: 0xffff_ffff },
      { name: `${b.name}_IIR`, offset: b.isr + IRQ_IIR, size: 4, kind: "w1c" },
      { name: `${b.name}_IER`, offset: b.isr + IRQ_IER, size: 4, kind: "ram" },
    );
  }
  t.push(
    { name: "FPGA_DBG", offset: FPGA_DBG, size: 4, kind: "fpga-dbg" },
    { name: "GEN6_GDRST", offset: GEN6_GDRST, size: 4, kind: "gdrst" },
    { name: "GEN8_RTCR..VTCR", offset: GEN8_RTCR, size: 4 * GEN8_TLB_CONTROL_REGS, kind: "tlb-control" },
    { name: "GUC_STATUS", offset: GUC_STATUS, size: 4, kind: "guc-status" },
    { name: "HSW_PWR_WELL_CTL1", offset: HSW_PWR_WELL_CTL1, size: 4, kind: "ram" },
    { name: "HSW_PWR_WELL_CTL2", offset: HSW_PWR_WELL_CTL2, size: 4, kind: "power-well" },
    { name: "SKL_FUSE_STATUS", offset: SKL_FUSE_STATUS, size: 4, kind: "ro", init: SKL_FUSE_DONE },
    { name: "GEN8_FUSE2", offset: GEN8_FUSE2, size: 4, kind: "ro", init: SKL_GT2_FUSE2 },
    { name: "GEN9_EU_DISABLE(0..2)", offset: GEN9_EU_DISABLE0, size: 4 * GEN9_MAX_SLICES, kind: "ro" },
    { name: "GEN6_RP_STATE_CAP", offset: GEN6_RP_STATE_CAP, size: 4, kind: "ro" },
    { name: "GEN6_PCODE_MAILBOX", offset: GEN6_PCODE_MAILBOX, size: 4, kind: "pcode-mailbox" },
    { name: "GEN6_PCODE_DATA", offset: GEN6_PCODE_DATA, size: 4, kind: "ram" },
    { name: "GEN6_PCODE_DATA1", offset: GEN6_PCODE_DATA1, size: 4, kind: "ram" },
    {
      name: "SKL_DFSM",
      offset: SKL_DFSM,
      size: 4,
      kind: "ro",
      init: SKL_DFSM_PIPE_A_DISABLE | SKL_DFSM_PIPE_B_DISABLE | SKL_DFSM_PIPE_C_DISABLE,
    },
    { name: "PCH_RAWCLK_FREQ", offset: PCH_RAWCLK_FREQ, size: 4, kind: "ro", init: SPT_RAWCLK_MHZ },
    { name: "HSW_GTT_CACHE_EN", offset: HSW_GTT_CACHE_EN, size: 4, kind: "ram" },
    { name: "GEN8_GAMW_ECO_DEV_RW_IA", offset: GEN8_GAMW_ECO_DEV_RW_IA, size: 4, kind: "ram" },
    { name: "GAM_ECOCHK", offset: GAM_ECOCHK, size: 4, kind: "ram" },
    { name: "GEN8_PRIVATE_PAT_LO", offset: GEN8_PRIVATE_PAT_LO, size: 4, kind: "ram" },
    { name: "GEN8_PRIVATE_PAT_HI", offset: GEN8_PRIVATE_PAT_HI, size: 4, kind: "ram" },
    { name: "GEN8_MCR_SELECTOR", offset: GEN8_MCR_SELECTOR, size: 4, kind: "ram" },
    { name: "DC_STATE_EN", offset: DC_STATE_EN, size: 4, kind: "ram" },
    { name: "GEN9_GFX_MOCS", offset: GEN9_GFX_MOCS0, size: GEN9_GFX_MOCS_BYTES, kind: "ram" },
    { name: "GEN9_LNCFCMOCS", offset: GEN9_LNCFCMOCS0, size: GEN9_LNCFCMOCS_BYTES, kind: "ram" },
    ...MASKED_WA_REGS.map((r) => ({ name: r.name, offset: r.offset, size: 4, kind: "masked" as const })),
    { name: "FENCE_REG_GEN6", offset: FENCE_REG_GEN6_LO, size: NUM_FENCES * FENCE_STRIDE, kind: "fence" },
    { name: "PVINFO", offset: VGT_PVINFO_PAGE, size: VGT_PVINFO_SIZE, kind: "pvinfo" },
  );
  return t;
}

/** The tracked registers (ranges listed once, at their first byte). */
export const VGPU_MMIO_TABLE: readonly MmioRegInfo[] = buildTable();

/** Dword offset / 4 -> row, for every dword every row covers. */
const BY_DWORD = new Map<number, MmioRegInfo>();
for (const r of VGPU_MMIO_TABLE) {
  if (r.offset % 4 !== 0 || r.size % 4 !== 0 || r.offset + r.size > MMIO_SIZE) {
    throw new Error(`mmio table: ${r.name} at 0x${r.offset.toString(16)} (+${r.size}) is malformed`);
  }
  for (let o = r.offset; o < r.offset + r.size; o += 4) {
    const other = BY_DWORD.get(o / 4);
    if (other !== undefined) throw new Error(`mmio table: ${r.name} overlaps ${other.name} at 0x${o.toString(16)}`);
    BY_DWORD.set(o / 4, r);
  }
}

/** The tracked register covering dword `offset`, or undefined (an untracked register: plain storage). */
export function findMmioReg(offset: number): MmioRegInfo | undefined {
  return BY_DWORD.get(Math.floor(offset / 4));
}

/** Writes every row's reset value into `vreg` for rows starting in [from, to) (other dwords untouched). */
export function applyResetValues(vreg: Uint32Array, from = 0, to = MMIO_SIZE): void {
  for (const r of VGPU_MMIO_TABLE) {
    if (r.init === undefined || r.offset < from || r.offset >= to) continue;
    vreg.fill(r.init >>> 0, r.offset / 4, (r.offset + r.size) / 4);
  }
}
