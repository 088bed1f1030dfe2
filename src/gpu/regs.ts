/**
 * The GPU's programming interface as tables: BAR layout, MMIO register map, GTT entry format, interrupt bits, command
 * encodings, execlists and logical ring contexts, PPGTT entries, and the PVINFO page. Modelled on Intel Gen9 graphics as
 * i915 drives a Skylake GT2 (i915 register names and encodings; legacy ring-buffer submission and execlists), scaled to
 * what the model executes. The command decoder table is command-table.ts, the LRC image layout lrc.ts. The physical GPU model, the vGPU's virtual registers and
 * the guest driver all read these tables; `docs/gpu-programming.md` is the datasheet written from them.
 *
 * Sources: Linux drivers/gpu/drm/i915 (i915_reg.h, gt/intel_gpu_commands.h, gt/intel_engine_regs.h,
 * gt/intel_gt_regs.h, i915_pvinfo.h) and drivers/gpu/drm/i915/gvt.
 */

// ---- PCI identity ------------------------------------------------------------------------------------------------

export const GPU_VENDOR_ID = 0x8086;
/** Skylake GT2 (HD Graphics 530), the gen9 part GVT-g's GVTg_V5_* types describe. */
export const GPU_DEVICE_ID = 0x1912;
export const GPU_CLASS_CODE = 0x030000; // VGA-compatible display controller
export const GPU_REVISION = 0x06;

// ---- BARs --------------------------------------------------------------------------------------------------------

/** BAR0 (GTTMMADR): 16 MiB, 64-bit. Registers in the first 2 MiB, the GTT window in the upper 8 MiB. */
export const BAR0_SIZE = 16 * 1024 * 1024;
export const MMIO_SIZE = 2 * 1024 * 1024;
export const GTT_OFFSET = 8 * 1024 * 1024;
/** 8 MiB of 8-byte PTEs = 1 Mi entries = 4 GiB of graphics memory. */
export const GTT_SIZE = 8 * 1024 * 1024;
export const GTT_ENTRIES = GTT_SIZE / 8;
export const GM_SIZE = GTT_ENTRIES * 4096;
/** BAR2 (GMADR): the aperture, CPU access to the low ("mappable") graphics memory through the GTT. */
export const BAR2_INDEX = 2;

// ---- GTT entries (gen8 GGTT PTE) ---------------------------------------------------------------------------------

/** Bit 0: the entry is valid; the GPU faults (reads scratch) on an invalid one. */
export const GEN8_PAGE_PRESENT = 0x1;
/** Bits 12..51: the DMA address (an IOVA when the system IOMMU translates, else a host-physical address). */
export const GEN8_PTE_ADDR_MASK = 0x000f_ffff_ffff_f000;
/** Builds a PTE for a page-aligned DMA address. */
export function gen8PteEncode(dmaAddr: number): number {
  return dmaAddr - (dmaAddr % 4096) + GEN8_PAGE_PRESENT;
}
/** The DMA address of a PTE, or -1 if it is not present. */
export function gen8PteDecode(pte: number): number {
  if (pte % 2 === 0) return -1;
  return (pte - (pte % 4096)) % 2 ** 52;
}

// ---- engines -----------------------------------------------------------------------------------------------------

/**
 * The engines of the legacy interface the vGPU and the guest driver use (a ring each): render and blitter. The
 * physical GPU has four engines (`GtEngineId`); these two are the ones `HostGpu.submit` and a vGPU's rings reach.
 */
export type EngineId = "rcs" | "bcs";

/** MMIO base of each engine's register block (RENDER_RING_BASE, BLT_RING_BASE). */
export const ENGINE_BASE: Readonly<Record<EngineId, number>> = { rcs: 0x02000, bcs: 0x22000 };

/**
 * Every engine of a Skylake GT2 (`G75_FEATURES` in i915: RCS0, BCS0, VCS0, VECS0; gen9 has no fuse that hides one).
 * VCS and VECS execute MI commands only: there is no media pipeline in the model.
 */
export type GtEngineId = EngineId | "vcs" | "vecs";
export const GT_ENGINES: readonly GtEngineId[] = ["rcs", "bcs", "vcs", "vecs"];

/** MMIO base of every engine (RENDER_RING_BASE, BLT_RING_BASE, GEN6_BSD_RING_BASE, VEBOX_RING_BASE). */
export const GT_ENGINE_BASE: Readonly<Record<GtEngineId, number>> = {
  rcs: 0x02000,
  bcs: 0x22000,
  vcs: 0x12000,
  vecs: 0x1a000,
};

/** Size of one engine's register block in the MMIO range (every engine register is below base + 0x1000). */
export const ENGINE_BLOCK_SIZE = 0x1000;

/** Offsets from the engine base (RING_TAIL(base) = base + 0x30 ...). */
export const RING_TAIL = 0x30;
export const RING_HEAD = 0x34;
export const RING_START = 0x38;
export const RING_CTL = 0x3c;
export const RING_ACTHD = 0x74;
export const RING_HWS_PGA = 0x80;
/** Error mask (stored) and error status (reads 0: the model reports errors in RING_EIR only). */
export const RING_EMR = 0xb4;
export const RING_ESR = 0xb8;
/** RING_RESET_CTL (masked): bit 0 REQUEST_RESET (software), bit 1 READY_TO_RESET (follows bit 0). */
export const RING_RESET_CTL = 0xd0;
export const RESET_CTL_REQUEST_RESET = 1 << 0;
export const RESET_CTL_READY_TO_RESET = 1 << 1;
/** RING_MI_MODE (masked): bit 8 STOP_RING (software), bit 9 MODE_IDLE (read-only: 1 when the engine is idle). */
export const RING_MI_MODE = 0x9c;
export const STOP_RING = 1 << 8;
export const MODE_IDLE = 1 << 9;
/** Batch buffer state: RING_BBSTATE (bit 5 RING_BB_PPGTT), RING_BBADDR / _UDW (the batch's next dword). */
export const RING_BBSTATE = 0x110;
export const RING_BB_PPGTT = 1 << 5;
export const RING_BBADDR = 0x140;
export const RING_BBADDR_UDW = 0x168;
/** Per-context workaround batch pointers (stored in the LRC image; the model does not run them). */
export const RING_BB_PER_CTX_PTR = 0x1c0;
export const RING_INDIRECT_CTX = 0x1c4;
export const RING_INDIRECT_CTX_OFFSET = 0x1c8;
/** ELSP: the execlist submit port. Four dword writes: element 1 high, element 1 low, element 0 high, element 0 low. */
export const RING_ELSP = 0x230;
export const RING_EXECLIST_STATUS_LO = 0x234;
export const RING_EXECLIST_STATUS_HI = 0x238;
/** RING_CONTEXT_CONTROL (masked; the LRC image's CTX_CONTEXT_CONTROL). */
export const RING_CONTEXT_CONTROL = 0x244;
export const CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT = 1 << 0;
export const CTX_CTRL_RS_CTX_ENABLE = 1 << 1;
export const CTX_CTRL_ENGINE_CTX_SAVE_INHIBIT = 1 << 2;
export const CTX_CTRL_INHIBIT_SYN_CTX_SWITCH = 1 << 3;
/** PPGTT directory pointers: PDP n lower / upper dword at +0x270 + 8n / +0x274 + 8n (PDP0 = the PML4 in 4-level mode). */
export const GEN8_RING_PDP_LDW0 = 0x270;
export function gen8RingPdpLdw(n: number): number {
  return GEN8_RING_PDP_LDW0 + 8 * n;
}
export function gen8RingPdpUdw(n: number): number {
  return GEN8_RING_PDP_LDW0 + 8 * n + 4;
}
/** GFX_MODE (RING_MODE_GEN7, masked): bit 15 GFX_RUN_LIST_ENABLE selects execlists submission. */
export const RING_MODE_GEN7 = 0x29c;
export const GFX_RUN_LIST_ENABLE = 1 << 15;
/** The context status buffer's MMIO copy: 6 entries of (status, context id) dwords. */
export const RING_CONTEXT_STATUS_BUF_BASE = 0x370;
/** RING_CONTEXT_STATUS_PTR (masked): bits 0..2 the write pointer (hardware), bits 8..10 the read pointer (software). */
export const RING_CONTEXT_STATUS_PTR = 0x3a0;
export const GEN8_CSB_WRITE_PTR_MASK = 0x7;
export const GEN8_CSB_READ_PTR_MASK = 0x7 << 8;
export const GEN8_CSB_ENTRIES = 6;
/** The context timestamp (CTX_TIMESTAMP in the image), in CS timestamp ticks (12 MHz on SKL). */
export const RING_CTX_TIMESTAMP = 0x3a8;
export const CS_TIMESTAMP_HZ = 12_000_000;

/** RING_CTL: bit 0 enables the ring; bits 12..20 are (length in pages - 1). */
export const RING_VALID = 0x1;
export const RING_NR_PAGES = 0x001f_f000;
/** HEAD/TAIL hold a byte offset within the ring, 8-byte aligned (bits 3..20); HEAD bit 0..: wrap count unused. */
export const HEAD_ADDR = 0x001f_fffc;
export const TAIL_ADDR = 0x001f_fff8;

/**
 * RING_EIR (error identity): set by the engine when it stops on an error; the engine stays halted while any bit is
 * set. Write 1s to clear. I915_ERROR_INSTRUCTION: a command the engine cannot execute (unknown opcode, bad length,
 * unsupported mode). I915_ERROR_PAGE_TABLE: a memory access faulted in the system IOMMU.
 */
export const RING_EIR = 0xb0;
export const I915_ERROR_INSTRUCTION = 1 << 0;
export const I915_ERROR_PAGE_TABLE = 1 << 4;

/** Largest ring: RING_NR_PAGES holds up to 511 = 512 pages (2 MiB). */
export const RING_MAX_BYTES = 512 * 4096;

export function ringCtlLength(ctl: number): number {
  return ((ctl & RING_NR_PAGES) >>> 12) * 4096 + 4096;
}

// ---- masked registers ------------------------------------------------------------------------------------------

/**
 * A masked register (MI_MODE, GFX_MODE, RESET_CTL, CONTEXT_CONTROL, CSB_PTR) takes writes whose bits 16..31 say which
 * of bits 0..15 the write changes: `_MASKED_BIT_ENABLE(b)` = b << 16 | b, `_MASKED_BIT_DISABLE(b)` = b << 16.
 */
export function maskedBitEnable(bits: number): number {
  return ((bits << 16) | bits) >>> 0;
}
export function maskedBitDisable(bits: number): number {
  return (bits << 16) >>> 0;
}
export function maskedField(mask: number, value: number): number {
  return ((mask << 16) | (value & mask)) >>> 0;
}
/** The new low 16 bits of a masked register holding `old` after a write of `v`. */
export function maskedWrite(old: number, v: number): number {
  const mask = v >>> 16;
  return ((old & ~mask) | (v & mask)) & 0xffff;
}

// ---- execlists (gen8/9) ------------------------------------------------------------------------------------------

/** Context descriptor, low dword (lrc_descriptor): valid, restore forcing, addressing mode, privilege, LRCA. */
export const GEN8_CTX_VALID = 1 << 0;
export const GEN8_CTX_FORCE_PD_RESTORE = 1 << 1;
export const GEN8_CTX_FORCE_RESTORE = 1 << 2;
export const GEN8_CTX_ADDRESSING_MODE_SHIFT = 3;
export const GEN8_CTX_ADDRESSING_MODE_MASK = 3 << 3;
/** Addressing modes: 1 legacy 32-bit (3-level, 4 PDPs), 3 legacy 64-bit (4-level, PDP0 = PML4): SKL uses 3. */
export const INTEL_LEGACY_32B_CONTEXT = 1;
export const INTEL_ADVANCED_CONTEXT = 2;
export const INTEL_LEGACY_64B_CONTEXT = 3;
export const GEN8_CTX_PRIVILEGE = 1 << 8;
/** Bits 12..31: the GGTT address of the LRC image (page 0 PPHWSP, page 1 register state). */
export const GEN8_CTX_LRCA_MASK = 0xfffff000;

/** Context status buffer entry, low dword (the high dword is the context id: the descriptor's high dword). */
export const GEN8_CTX_STATUS_IDLE_ACTIVE = 1 << 0;
export const GEN8_CTX_STATUS_PREEMPTED = 1 << 1;
export const GEN8_CTX_STATUS_ELEMENT_SWITCH = 1 << 2;
export const GEN8_CTX_STATUS_ACTIVE_IDLE = 1 << 3;
export const GEN8_CTX_STATUS_COMPLETE = 1 << 4;
export const GEN8_CTX_STATUS_LITE_RESTORE = 1 << 15;

/** The hardware status page (at RING_HWS_PGA): CSB entries from dword 0x10 (2 dwords each), write pointer at 0x1f. */
export const I915_HWS_CSB_BUF0_INDEX = 0x10;
export const I915_HWS_CSB_WRITE_INDEX = 0x1f;

/** RING_EXECLIST_STATUS_LO bits (the model's subset of gen8's layout; the high dword is the running context id). */
export const EXECLIST_STATUS_LIST_VALID = 1 << 4;
export const EXECLIST_STATUS_SWITCH_REASON_SHIFT = 5;
export const EXECLIST_STATUS_ARB_ENABLE = 1 << 16;
export const EXECLIST_STATUS_ELEMENT1_ACTIVE = 1 << 17;
export const EXECLIST_STATUS_ELEMENT0_ACTIVE = 1 << 18;

// ---- PPGTT (gen8 48-bit, 4 levels) -----------------------------------------------------------------------------

/** Bits of every PPGTT entry (PML4E, PDPE, PDE, PTE). */
export const GEN8_PAGE_RW = 1 << 1;
/** PDPE bit 7: a 1 GiB page; PDE bit 7: a 2 MiB page. SKL never uses them: the model refuses them (a fault). */
export const GEN8_PDPE_PS_1G = 1 << 7;
export const GEN8_PDE_PS_2M = 1 << 7;
/** PDE bit 11: the page table maps 64 KiB pages (every 16th PTE); i915 still writes all 16 4 KiB PTEs. */
export const GEN8_PDE_IPS_64K = 1 << 11;
/** 512 entries of 8 bytes per table; addresses are 48 bits. */
export const GEN8_PTES_PER_TABLE = 512;
export const GEN8_PPGTT_ADDRESS_BITS = 48;

// ---- interrupts (gen8 GT banks 0..3 and the master) --------------------------------------------------------------

export const GEN8_MASTER_IRQ = 0x44200;
/** Master enable: interrupts reach MSI only while set. */
export const GEN8_MASTER_IRQ_CONTROL = 0x8000_0000;
/** Read-only: bank 0 of the GT has a pending interrupt. */
export const GEN8_GT_RCS_IRQ = 0x1;
export const GEN8_GT_BCS_IRQ = 0x2;
/** Bank 1: VCS0 (bits 0..15) and VCS1 (16..31, absent on GT2); bank 2: PM (no events); bank 3: VECS. */
export const GEN8_GT_VCS0_IRQ = 1 << 2;
export const GEN8_GT_VCS1_IRQ = 1 << 3;
export const GEN8_GT_PM_IRQ = 1 << 4;
export const GEN8_GT_VECS_IRQ = 1 << 6;

export const GEN8_GT_ISR0 = 0x44300;
export const GEN8_GT_IMR0 = 0x44304;
export const GEN8_GT_IIR0 = 0x44308;
export const GEN8_GT_IER0 = 0x4430c;
/** GT bank n (0..3): ISR, IMR, IIR, IER at 0x44300 + 0x10 * n + 0 / 4 / 8 / 0xc. */
export const GEN8_GT_BANKS = 4;
export function gen8GtIsr(bank: number): number {
  return 0x44300 + 0x10 * bank;
}
export function gen8GtImr(bank: number): number {
  return 0x44304 + 0x10 * bank;
}
export function gen8GtIir(bank: number): number {
  return 0x44308 + 0x10 * bank;
}
export function gen8GtIer(bank: number): number {
  return 0x4430c + 0x10 * bank;
}

/** Bit shifts of each engine's 16-bit field in bank 0. */
export const GEN8_RCS_IRQ_SHIFT = 0;
export const GEN8_BCS_IRQ_SHIFT = 16;
/** Per-engine bits within its field. */
export const GT_RENDER_USER_INTERRUPT = 1 << 0;
/** Raised when a submission is rejected (by the vGPU's command scanner, or a malformed command on hardware). */
export const GT_CS_MASTER_ERROR_INTERRUPT = 1 << 3;
/** An execlists context switch: a new entry in the context status buffer. */
export const GT_CONTEXT_SWITCH_INTERRUPT = 1 << 8;

export const ENGINE_IRQ_SHIFT: Readonly<Record<EngineId, number>> = {
  rcs: GEN8_RCS_IRQ_SHIFT,
  bcs: GEN8_BCS_IRQ_SHIFT,
};

/** Where each engine's 16-bit interrupt field lives: GT bank and bit shift (RCS 0/0, BCS 0/16, VCS 1/0, VECS 3/0). */
export const GT_ENGINE_IRQ: Readonly<Record<GtEngineId, { readonly bank: number; readonly shift: number }>> = {
  rcs: { bank: 0, shift: 0 },
  bcs: { bank: 0, shift: 16 },
  vcs: { bank: 1, shift: 0 },
  vecs: { bank: 3, shift: 0 },
};

// ---- fences ------------------------------------------------------------------------------------------------------

export const FENCE_REG_GEN6_LO = 0x100000;
export const FENCE_STRIDE = 8;
export const NUM_FENCES = 32;

// ---- misc registers the model implements -----------------------------------------------------------------------------

/** Graphics reset domain control (gen6+): writing GEN6_GRDOM_FULL resets every engine. */
export const GEN6_GDRST = 0x941c;
export const GEN6_GRDOM_FULL = 0x1;
export const GEN6_GRDOM_RENDER = 0x2;
export const GEN6_GRDOM_MEDIA = 0x4;
export const GEN6_GRDOM_BLT = 0x8;
export const GEN6_GRDOM_VECS = 0x10;
/** The GDRST bit that resets each engine (GEN6_GRDOM_FULL resets all four). */
export const ENGINE_RESET_DOMAIN: Readonly<Record<GtEngineId, number>> = {
  rcs: GEN6_GRDOM_RENDER,
  bcs: GEN6_GRDOM_BLT,
  vcs: GEN6_GRDOM_MEDIA,
  vecs: GEN6_GRDOM_VECS,
};

// ---- command streamer -----------------------------------------------------------------------------------------

/** Bits 29..31 of a command's first dword: the client (0 = MI, 2 = 2D/blitter, 3 = render). */
export const INSTR_CLIENT_SHIFT = 29;
export const INSTR_MI_CLIENT = 0x0;
export const INSTR_BC_CLIENT = 0x2;
export const INSTR_RC_CLIENT = 0x3;

/** MI_INSTR(opcode, flags) = (opcode << 23) | flags. */
export function miInstr(opcode: number, flags: number): number {
  return ((opcode << 23) | flags) >>> 0;
}
export const MI_NOOP = miInstr(0x00, 0);
export const MI_USER_INTERRUPT = miInstr(0x02, 0);
/** A preemption point; a no-op in the model (nothing preempts a running context: see the datasheet). */
export const MI_ARB_CHECK = miInstr(0x05, 0);
/** Arbitration on (bit 0 set) or off: stored, reported in RING_EXECLIST_STATUS. */
export const MI_ARB_ON_OFF = miInstr(0x08, 0);
export const MI_ARB_ENABLE = 1 << 0;
export const MI_ARB_DISABLE = 0;
export const MI_BATCH_BUFFER_END = miInstr(0x0a, 0);
/**
 * gen8 MI_SEMAPHORE_WAIT, 4 dwords: header, semaphore data (the inline value), address low, address high. The engine
 * compares the dword at the address with the inline value (bits 12..14 select the operator) and waits until it holds.
 */
export const MI_SEMAPHORE_WAIT = miInstr(0x1c, 2);
export const MI_SEMAPHORE_GLOBAL_GTT = 1 << 22;
export const MI_SEMAPHORE_POLL = 1 << 15;
export const MI_SEMAPHORE_SAD_SHIFT = 12;
export const MI_SEMAPHORE_SAD_MASK = 7 << 12;
/** Compare operators: memory value (SAD) op inline value (SDD). */
export const MI_SEMAPHORE_SAD_GT_SDD = 0 << 12;
export const MI_SEMAPHORE_SAD_GTE_SDD = 1 << 12;
export const MI_SEMAPHORE_SAD_LT_SDD = 2 << 12;
export const MI_SEMAPHORE_SAD_LTE_SDD = 3 << 12;
export const MI_SEMAPHORE_SAD_EQ_SDD = 4 << 12;
export const MI_SEMAPHORE_SAD_NEQ_SDD = 5 << 12;
/** gen8: 4 dwords: header, address low, address high, data. Bit 22 selects the GGTT. */
export const MI_STORE_DWORD_IMM_GEN4 = miInstr(0x20, 2);
export const MI_USE_GGTT = 1 << 22;
/** gen8: 5 dwords: header, address low, address high, data low, data high (address 8-byte aligned). */
export const MI_STORE_QWORD_IMM_GEN8 = miInstr(0x20, 3);
/** MI_LOAD_REGISTER_IMM(n): 1 + 2n dwords: header, then (register offset, value) pairs. */
export function miLoadRegisterImm(n: number): number {
  return miInstr(0x22, 2 * n - 1);
}
/** MI_LOAD_REGISTER_IMM bit 12: posted writes (what the LRC image's register lists carry; no effect in the model). */
export const MI_LRI_FORCE_POSTED = 1 << 12;
/** gen8: 3 dwords: header, address low, address high (GGTT when bit 8 is clear). */
export const MI_BATCH_BUFFER_START_GEN8 = miInstr(0x31, 1);
export const MI_BATCH_PPGTT = 1 << 8;
/**
 * MI_FLUSH_DW (gen8: 4 dwords with a dword post-sync write, 5 with a qword): header, address low (bit 2
 * MI_FLUSH_DW_USE_GTT), address high, data low[, data high]. i915 emits `MI_FLUSH_DW + 1` (4 dwords).
 */
export const MI_FLUSH_DW = miInstr(0x26, 1);
export const MI_FLUSH_DW_STORE_INDEX = 1 << 21;
export const MI_INVALIDATE_TLB = 1 << 18;
export const MI_FLUSH_DW_OP_MASK = 3 << 14;
export const MI_FLUSH_DW_OP_NONE = 0 << 14;
export const MI_FLUSH_DW_OP_STOREDW = 1 << 14;
export const MI_FLUSH_DW_OP_STAMP = 3 << 14;
export const MI_FLUSH_DW_NOTIFY = 1 << 8;
export const MI_INVALIDATE_BSD = 1 << 7;
/** In the address dword: the post-sync address is a GGTT address (else the context's PPGTT). */
export const MI_FLUSH_DW_USE_GTT = 1 << 2;

/** 2D (blitter) commands: (2 << 29) | (opcode << 22) | (length - 2). */
export function blitInstr(opcode: number, dwords: number): number {
  return ((INSTR_BC_CLIENT << INSTR_CLIENT_SHIFT) | (opcode << 22) | (dwords - 2)) >>> 0;
}
export const XY_COLOR_BLT_OPCODE = 0x50;
export const XY_SRC_COPY_BLT_OPCODE = 0x53;
/** gen8 XY_COLOR_BLT: 7 dwords; XY_SRC_COPY_BLT: 10 dwords. */
export const XY_COLOR_BLT_DWORDS = 7;
export const XY_SRC_COPY_BLT_DWORDS = 10;
/** Bits 20..21 of the header: write alpha and RGB (32 bpp). */
export const BLT_WRITE_RGBA = 3 << 20;
/** BR13 (dword 1): bits 24..25 color depth (3 = 32 bpp), bits 16..23 raster op, bits 0..15 pitch in bytes. */
export const BR13_32BPP = 3 << 24;
export const ROP_PATCOPY = 0xf0;
export const ROP_SRCCOPY = 0xcc;
export const BR13_COLOR_DEPTH_MASK = 3 << 24;
export const BR13_ROP_SHIFT = 16;
export const BR13_PITCH_MASK = 0xffff;
/** Header bits selecting tiled (X/Y-major) surfaces; the model implements linear surfaces only. */
export const XY_SRC_COPY_BLT_SRC_TILED = 1 << 15;
export const XY_SRC_COPY_BLT_DST_TILED = 1 << 11;

/**
 * Render-client (type 3) commands: bits 27..28 subtype (0 common, 1 single-dword/non-pipelined, 2 media, 3 3D),
 * 24..26 opcode, 16..23 sub-opcode, 0..7 length - 2 (with the exceptions command-table.ts lists).
 */
export function gfxInstr(subtype: number, opcode: number, subOpcode: number, dwords: number): number {
  return (
    ((INSTR_RC_CLIENT << INSTR_CLIENT_SHIFT) | (subtype << 27) | (opcode << 24) | (subOpcode << 16) | (dwords - 2)) >>>
    0
  );
}
/** PIPE_CONTROL (gen8: 6 dwords): header, flags, address low, address high, data low, data high. */
export function gfxOpPipeControl(dwords: number): number {
  return gfxInstr(3, 2, 0, dwords);
}
export const PIPE_CONTROL_DWORDS = 6;
export const PIPE_CONTROL_GLOBAL_GTT_IVB = 1 << 24;
export const PIPE_CONTROL_STORE_DATA_INDEX = 1 << 21;
export const PIPE_CONTROL_CS_STALL = 1 << 20;
export const PIPE_CONTROL_TLB_INVALIDATE = 1 << 18;
export const PIPE_CONTROL_MEDIA_STATE_CLEAR = 1 << 16;
/** Post-sync operation, bits 14..15: 1 write immediate data (a qword), 2 write PS_DEPTH_COUNT, 3 write TIMESTAMP. */
export const PIPE_CONTROL_POST_SYNC_OP_MASK = 3 << 14;
export const PIPE_CONTROL_QW_WRITE = 1 << 14;
export const PIPE_CONTROL_WRITE_DEPTH_COUNT = 2 << 14;
export const PIPE_CONTROL_WRITE_TIMESTAMP = 3 << 14;
export const PIPE_CONTROL_DEPTH_STALL = 1 << 13;
export const PIPE_CONTROL_RENDER_TARGET_CACHE_FLUSH = 1 << 12;
export const PIPE_CONTROL_INSTRUCTION_CACHE_INVALIDATE = 1 << 11;
export const PIPE_CONTROL_TEXTURE_CACHE_INVALIDATE = 1 << 10;
export const PIPE_CONTROL_INDIRECT_STATE_DISABLE = 1 << 9;
export const PIPE_CONTROL_NOTIFY = 1 << 8;
export const PIPE_CONTROL_FLUSH_ENABLE = 1 << 7;
export const PIPE_CONTROL_DC_FLUSH_ENABLE = 1 << 5;
export const PIPE_CONTROL_VF_CACHE_INVALIDATE = 1 << 4;
export const PIPE_CONTROL_CONST_CACHE_INVALIDATE = 1 << 3;
export const PIPE_CONTROL_STATE_CACHE_INVALIDATE = 1 << 2;
export const PIPE_CONTROL_STALL_AT_SCOREBOARD = 1 << 1;
export const PIPE_CONTROL_DEPTH_CACHE_FLUSH = 1 << 0;
/** PIPELINE_SELECT (gen9, 1 dword): bits 8..9 are the select mask, bits 0..1 the pipeline (0 3D, 1 media, 2 GPGPU). */
export const PIPELINE_SELECT_GEN9 = (gfxInstr(1, 1, 4, 2) & ~0xff) >>> 0;
export const PIPELINE_SELECT_MASK = 3 << 8;
/** 3DSTATE_VF_STATISTICS (1 dword; bit 0 enables statistics). */
export const GFX_OP_VF_STATISTICS = (gfxInstr(1, 0, 0x0b, 2) & ~0xff) >>> 0;
/** 3DSTATE_SO_DECL_LIST: a 9-bit length field (bits 0..8). */
export const GFX_OP_3DSTATE_SO_DECL_LIST = (gfxInstr(3, 1, 0x17, 2) & ~0xff) >>> 0;
/** 3DPRIMITIVE (gen8: 7 dwords). */
export const GFX_OP_3DPRIMITIVE = gfxInstr(3, 3, 0, 7);

// ---- PVINFO (the page a vGPU uses to tell its guest what it owns) -----------------------------------------------------

/** i915_pvinfo.h: struct vgt_if at MMIO offset 0x78000, one page. */
export const VGT_PVINFO_PAGE = 0x78000;
export const VGT_PVINFO_SIZE = 0x1000;
/** 'vGTvGTvG' */
export const VGT_MAGIC = 0x4776544776544776n;
export const VGT_VERSION_MAJOR = 1;
export const VGT_VERSION_MINOR = 0;

/** Offsets within struct vgt_if. */
export const PVINFO = {
  magic: 0x00, // u64
  versionMajor: 0x08, // u16
  versionMinor: 0x0a, // u16
  vgtId: 0x0c, // u32
  vgtCaps: 0x10, // u32
  mappableBase: 0x40, // avail_rs.mappable_gmadr.base, u32
  mappableSize: 0x44,
  nonmappableBase: 0x48, // avail_rs.nonmappable_gmadr.base
  nonmappableSize: 0x4c,
  fenceNum: 0x50,
  displayReady: 0x804,
  g2vNotify: 0x818,
} as const;
