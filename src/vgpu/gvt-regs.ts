/**
 * Registers a guest i915 (Linux 6.1, Skylake GT2) reads or polls on a vGPU that the physical GPU model of src/gpu does
 * not define: names, offsets and bits as i915 spells them (i915_reg.h, gt/intel_engine_regs.h, gt/intel_gt_regs.h,
 * intel_pcode.h), values as ../shared/reference/i915-guest.md section 3 records them. The vendor driver's register
 * table (mmio-table.ts) says what each does. Private to src/vgpu (not exported by the folder's index): when the GPU
 * model grows execlists and these registers, their definitions move to gpu/regs.ts and this file shrinks.
 */

// ---- per engine, offsets from the engine's MMIO base (engines.ts) ---------------------------------------------------

/** Hardware status page address (GGTT), already in gpu/regs.ts as RING_HWS_PGA; listed for the table's reader. */
export const RING_EMR = 0xb4;
/** Error status: non-zero after an engine resumes makes i915 print "resumed still in error" and reset it. */
export const RING_ESR = 0xb8;
export const RING_HWSTAM = 0x98;
/** MI_MODE (masked): STOP_RING asks the command streamer to stop; MODE_IDLE says it has. */
export const RING_MI_MODE = 0x9c;
export const STOP_RING = 1 << 8;
export const MODE_IDLE = 1 << 9;
export const RING_IMR = 0xa8;
export const RING_INSTPM = 0xc0;
/** RESET_CTL (masked): i915 requests a reset with REQUEST and polls READY before GDRST (gen8_engine_reset_prepare). */
export const RING_RESET_CTL = 0xd0;
export const RESET_CTL_REQUEST_RESET = 1 << 0;
export const RESET_CTL_READY_TO_RESET = 1 << 1;
/** CSFE_CHICKEN1 (masked; a workaround register of every engine). */
export const RING_CSFE_CHICKEN1 = 0xd4;
/** Execlist submit port: four dword writes (element 1 high, low, element 0 high, low). */
export const RING_ELSP = 0x230;
/** Execlist status, two dwords (read-only, emulated). */
export const RING_EXECLIST_STATUS_LO = 0x234;
export const RING_EXECLIST_STATUS_HI = 0x238;
export const RING_CONTEXT_CONTROL = 0x244;
/** GFX_MODE (RING_MODE_GEN7, masked): RUN_LIST enables execlists. */
export const RING_MODE_GEN7 = 0x29c;
export const GFX_RUN_LIST_ENABLE = 1 << 15;
export const GFX_PPGTT_ENABLE = 1 << 9;
/** GVT-g's ring_mode_mmio_write: a masked enable of bit 0 here is a guest GVT-g does not support. */
export const GFX_MODE_UNSUPPORTED = 1 << 0;
export const RING_TIMESTAMP = 0x358;
/** Context status buffer (MMIO copy): 6 entries of 2 dwords (read-only, emulated). */
export const RING_CONTEXT_STATUS_BUF = 0x370;
export const CSB_ENTRIES = 6;
/** Context status pointer (masked): write pointer bits 2..0, read pointer bits 10..8. */
export const RING_CONTEXT_STATUS_PTR = 0x3a0;
export const CSB_WRITE_PTR_MASK = 0x7;
export const CSB_READ_PTR_SHIFT = 8;
/** The write pointer's reset value: "nothing written yet" (GVT-g's init_vgpu_execlist). */
export const CSB_WRITE_PTR_RESET = 0x7;

// ---- in the hardware status page (byte offsets; gt/intel_engine.h) ---------------------------------------------------

/** I915_HWS_CSB_BUF0_INDEX (dword 0x10): the CSB's first entry. */
export const HWSP_CSB_BUF0 = 0x10 * 4;
/** The gen9 CSB write pointer index (dword 0x1f). */
export const HWSP_CSB_WRITE_PTR = 0x1f * 4;

// ---- global registers ------------------------------------------------------------------------------------------------

/**
 * The gen8 TLB invalidation registers (GEN8_RTCR, M1TCR, M2TCR, BTCR, VTCR; render, media, media 2, blitter, video
 * enhancement): i915's intel_gt_invalidate_tlbs writes 1 and polls for 0 (4 ms).
 */
export const GEN8_RTCR = 0x4260;
export const GEN8_TLB_CONTROL_REGS = 5;

/** FPGA_DBG: i915 checks RM_NOCLAIM (unclaimed access) at init; writing it clears it. */
export const FPGA_DBG = 0x42300;
export const FPGA_DBG_RM_NOCLAIM = 1 << 31;

/** More GEN6_GDRST domains (gpu/regs.ts has FULL, RENDER, BLT). */
export const GEN6_GRDOM_MEDIA = 1 << 2;
export const GEN6_GRDOM_VECS = 1 << 4;
export const GEN9_GRDOM_GUC = 1 << 5;
export const GEN8_GRDOM_MEDIA2 = 1 << 7;

/** GUC_STATUS: i915 resets the GuC (GDRST GUC domain) at sanitize and WARNs unless MIA_IN_RESET then reads 1. */
export const GUC_STATUS = 0xc000;
export const GS_MIA_IN_RESET = 1 << 0;

/** GEN8_FUSE2: slice enable bits 27..25, subslice disable bits 23..20. */
export const GEN8_FUSE2 = 0x9120;
/** One slice, subslices 0..2 enabled, subslice 3 disabled: a Skylake GT2 (24 EUs). */
export const SKL_GT2_FUSE2 = 0x0280_0000;
/** GEN9_EU_DISABLE(slice): 8 bits of disabled EUs per subslice; gen9 has up to 3 slices. */
export const GEN9_EU_DISABLE0 = 0x9134;
export const GEN9_MAX_SLICES = 3;

/** GEN6_RP_STATE_CAP (MCHBAR mirror): 0 means max <= min frequency, so i915 leaves RPS off. */
export const GEN6_RP_STATE_CAP = 0x145998;

/** The PCODE mailbox (intel_pcode.c): READY (bit 31) set while a command runs; error code in bits 7..0. */
export const GEN6_PCODE_MAILBOX = 0x138124;
export const GEN6_PCODE_DATA = 0x138128;
export const GEN6_PCODE_DATA1 = 0x13812c;
export const GEN6_PCODE_READY = 1 << 31;
export const GEN6_PCODE_ERROR_MASK = 0xff;
export const GEN6_PCODE_ILLEGAL_CMD = 0x1;
/** Commands GVT-g answers with canned data, and the one this model refuses. */
export const GEN6_PCODE_READ_RC6VIDS = 0x5;
export const GEN9_PCODE_READ_MEM_LATENCY = 0x6;
export const SKL_PCODE_CDCLK_CONTROL = 0x7;
export const SKL_CDCLK_READY_FOR_CHANGE = 0x3;
export const GEN9_PCODE_SAGV_CONTROL = 0x21;
/** Skylake memory latencies GVT-g answers (first read: levels 0-3, second: levels 4-7). */
export const SKL_MEM_LATENCY_LOW = 0x1e1a_1100;
export const SKL_MEM_LATENCY_HIGH = 0x6151_4b3d;

/** SKL_DFSM: display fuses; pipe A/B/C disable bits. */
export const SKL_DFSM = 0x51000;
export const SKL_DFSM_PIPE_A_DISABLE = 1 << 30;
export const SKL_DFSM_PIPE_B_DISABLE = 1 << 21;
export const SKL_DFSM_PIPE_C_DISABLE = 1 << 28;

/** PCH_RAWCLK_FREQ: the raw clock in MHz (bits 9..0); a Sunrise Point PCH runs it at 24 MHz. */
export const PCH_RAWCLK_FREQ = 0xc6204;
export const SPT_RAWCLK_MHZ = 24;

/** HSW_GTT_CACHE_EN: i915 WARNs if it reads back 0 after writing it. */
export const HSW_GTT_CACHE_EN = 0x4024;
export const GAM_ECOCHK = 0x4090;
export const GEN8_GAMW_ECO_DEV_RW_IA = 0x4080;
export const GEN8_PRIVATE_PAT_LO = 0x40e0;
export const GEN8_PRIVATE_PAT_HI = 0x40e4;
export const GEN8_MCR_SELECTOR = 0xfdc;
/**
 * Display power wells: i915 6.1 enables them at init even without a display pipe (intel_power_domains_init_hw).
 * HSW_PWR_WELL_CTL2 is the driver's request register; on Skylake well i's REQUEST is bit 2i + 1 and its STATE bit 2i
 * (MISC_IO 0, DDI_A_E 1, DDI_B 2, DDI_C 3, DDI_D 4, PW_1 14, PW_2 15). SKL_FUSE_STATUS reports the power gates'
 * fuse distribution done (PG0-2: bits 27-25) and the fuse download (bit 31).
 */
export const HSW_PWR_WELL_CTL1 = 0x45400;
export const HSW_PWR_WELL_CTL2 = 0x45404;
export const SKL_PWR_WELL_REQUESTS = (1 << 31) | (1 << 29) | (1 << 9) | (1 << 7) | (1 << 5) | (1 << 3) | (1 << 1);
export const SKL_FUSE_STATUS = 0x42000;
export const SKL_FUSE_DONE = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25);

/** DC_STATE_EN: i915 rereads it until it holds what it wrote (gen9_write_dc_state), with or without display. */
export const DC_STATE_EN = 0x45504;
/** MOCS tables: GEN9_GFX_MOCS(0..) (0xc800-0xcfff, every engine's) and the L3 table GEN9_LNCFCMOCS(0..31). */
export const GEN9_GFX_MOCS0 = 0xc800;
export const GEN9_GFX_MOCS_BYTES = 0x800;
export const GEN9_LNCFCMOCS0 = 0xb020;
export const GEN9_LNCFCMOCS_BYTES = 0x80;

/**
 * Workaround and chicken registers with masked writes (bits 31..16 select which of bits 15..0 a write changes), as
 * GVT-g's F_MODE_MASK rows for Skylake: what i915's workaround lists write with _MASKED_BIT_ENABLE and may read back.
 */
export const MASKED_WA_REGS: readonly { readonly name: string; readonly offset: number }[] = [
  { name: "GEN7_FF_SLICE_CS_CHICKEN1", offset: 0x20e0 },
  { name: "FF_SLICE_CS_CHICKEN2", offset: 0x20e4 },
  { name: "GEN9_CS_DEBUG_MODE1", offset: 0x20ec },
  { name: "0x20dc", offset: 0x20dc },
  { name: "0x2088", offset: 0x2088 },
  { name: "_3D_CHICKEN3", offset: 0x2090 },
  { name: "CACHE_MODE_0", offset: 0x2120 },
  { name: "0x2124", offset: 0x2124 },
  { name: "0x2470", offset: 0x2470 },
  { name: "GEN8_CS_CHICKEN1", offset: 0x2580 },
  { name: "ARB_MODE", offset: 0x4030 },
  { name: "GEN9_WM_CHICKEN3", offset: 0x5580 },
  { name: "CACHE_MODE_0_GEN7", offset: 0x7000 },
  { name: "CACHE_MODE_1", offset: 0x7004 },
  { name: "GEN7_GT_MODE", offset: 0x7008 },
  { name: "GEN7_COMMON_SLICE_CHICKEN1", offset: 0x7010 },
  { name: "COMMON_SLICE_CHICKEN2", offset: 0x7014 },
  { name: "0x7018", offset: 0x7018 },
  { name: "HDC_CHICKEN0", offset: 0x7300 },
  { name: "GEN8_HDC_CHICKEN1", offset: 0x7304 },
  { name: "GEN7_HALF_SLICE_CHICKEN1", offset: 0xe100 },
  { name: "HALF_SLICE_CHICKEN2", offset: 0xe180 },
  { name: "HSW_HALF_SLICE_CHICKEN3", offset: 0xe184 },
  { name: "GEN9_HALF_SLICE_CHICKEN5", offset: 0xe188 },
  { name: "GEN9_HALF_SLICE_CHICKEN7", offset: 0xe194 },
  { name: "GEN8_ROW_CHICKEN", offset: 0xe4f0 },
  { name: "GEN7_ROW_CHICKEN2", offset: 0xe4f4 },
];

/**
 * Interrupt register sets other than the GT banks (ISR, IMR, IIR, IER at +0, +4, +8, +0xc): i915 resets and checks
 * them (gen3_assert_iir_is_zero WARNs if an IIR reads non-zero after the reset writes), so their IIR must clear on
 * write 1 as hardware's does. The vGPU raises no display, PCU or PCH event.
 */
export const OTHER_IRQ_BANKS: readonly { readonly name: string; readonly isr: number }[] = [
  { name: "GEN8_DE_PIPE_A", isr: 0x44400 },
  { name: "GEN8_DE_PIPE_B", isr: 0x44410 },
  { name: "GEN8_DE_PIPE_C", isr: 0x44420 },
  { name: "GEN8_DE_PORT", isr: 0x44440 },
  { name: "GEN8_DE_MISC", isr: 0x44460 },
  { name: "GEN8_PCU", isr: 0x444e0 },
  { name: "SDE", isr: 0xc4000 },
];
export const IRQ_ISR = 0x0;
export const IRQ_IMR = 0x4;
export const IRQ_IIR = 0x8;
export const IRQ_IER = 0xc;

/** GEN8_GT_ISR(n) = 0x44300 + 0x10 n, n = 0..3. */
export const GEN8_GT_BANKS = 4;
export function gen8GtIsr(bank: number): number {
  return 0x44300 + 0x10 * bank;
}

// ---- masked writes ---------------------------------------------------------------------------------------------------

/** A masked register after a write of `value` (bits 31..16 select which of bits 15..0 change): CALC_MODE_MASK_REG. */
export function maskedWrite(old: number, value: number): number {
  const mask = value >>> 16;
  return ((old & ~mask) | (value & mask)) & 0xffff;
}

/** Whether a masked write enables `bit` (IS_MASKED_BITS_ENABLED). */
export function maskedEnables(value: number, bit: number): boolean {
  return ((value >>> 16) & bit) === bit && (value & bit) === bit;
}

/** Whether a masked write disables `bit`. */
export function maskedDisables(value: number, bit: number): boolean {
  return ((value >>> 16) & bit) === bit && (value & bit) === 0;
}
