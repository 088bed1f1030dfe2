/**
 * The GPU's programming interface as tables: BAR layout, MMIO register map, GTT entry format, interrupt bits, command
 * encodings, and the PVINFO page. Modelled on Intel Gen8/Gen9 graphics (i915 register names and encodings, legacy
 * ring-buffer submission), scaled to what the model executes. The physical GPU model, the vGPU's virtual registers and
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

export type EngineId = "rcs" | "bcs";

/** MMIO base of each engine's register block (RENDER_RING_BASE, BLT_RING_BASE). */
export const ENGINE_BASE: Readonly<Record<EngineId, number>> = { rcs: 0x02000, bcs: 0x22000 };

/** Offsets from the engine base (RING_TAIL(base) = base + 0x30 ...). */
export const RING_TAIL = 0x30;
export const RING_HEAD = 0x34;
export const RING_START = 0x38;
export const RING_CTL = 0x3c;
export const RING_ACTHD = 0x74;
export const RING_HWS_PGA = 0x80;

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

// ---- interrupts (gen8 GT bank 0) -----------------------------------------------------------------------------------

export const GEN8_MASTER_IRQ = 0x44200;
/** Master enable: interrupts reach MSI only while set. */
export const GEN8_MASTER_IRQ_CONTROL = 0x8000_0000;
/** Read-only: bank 0 of the GT has a pending interrupt. */
export const GEN8_GT_RCS_IRQ = 0x1;
export const GEN8_GT_BCS_IRQ = 0x2;

export const GEN8_GT_ISR0 = 0x44300;
export const GEN8_GT_IMR0 = 0x44304;
export const GEN8_GT_IIR0 = 0x44308;
export const GEN8_GT_IER0 = 0x4430c;

/** Bit shifts of each engine's 16-bit field in bank 0. */
export const GEN8_RCS_IRQ_SHIFT = 0;
export const GEN8_BCS_IRQ_SHIFT = 16;
/** Per-engine bits within its field. */
export const GT_RENDER_USER_INTERRUPT = 1 << 0;
/** Raised when a submission is rejected (by the vGPU's command scanner, or a malformed command on hardware). */
export const GT_CS_MASTER_ERROR_INTERRUPT = 1 << 3;

export const ENGINE_IRQ_SHIFT: Readonly<Record<EngineId, number>> = {
  rcs: GEN8_RCS_IRQ_SHIFT,
  bcs: GEN8_BCS_IRQ_SHIFT,
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
export const GEN6_GRDOM_BLT = 0x8;

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
export const MI_BATCH_BUFFER_END = miInstr(0x0a, 0);
/** gen8: 4 dwords: header, address low, address high, data. Bit 22 selects the GGTT. */
export const MI_STORE_DWORD_IMM_GEN4 = miInstr(0x20, 2);
export const MI_USE_GGTT = 1 << 22;
/** gen8: 5 dwords: header, address low, address high, data low, data high (address 8-byte aligned). */
export const MI_STORE_QWORD_IMM_GEN8 = miInstr(0x20, 3);
/** MI_LOAD_REGISTER_IMM(n): 1 + 2n dwords: header, then (register offset, value) pairs. */
export function miLoadRegisterImm(n: number): number {
  return miInstr(0x22, 2 * n - 1);
}
/** gen8: 3 dwords: header, address low, address high (GGTT when bit 8 is clear). */
export const MI_BATCH_BUFFER_START_GEN8 = miInstr(0x31, 1);
export const MI_BATCH_PPGTT = 1 << 8;

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

/** Every command the model decodes, as a table: opcode match, length rule, name (what the scanner audits). */
export interface CommandInfo {
  readonly name: string;
  readonly client: number;
  /** Opcode field value: bits 23..28 for MI, bits 22..28 for 2D. */
  readonly opcode: number;
  /** Total length in dwords given the header; fixed-length commands ignore it. */
  length(header: number): number;
}

export const COMMANDS: readonly CommandInfo[] = [
  { name: "MI_NOOP", client: INSTR_MI_CLIENT, opcode: 0x00, length: () => 1 },
  { name: "MI_USER_INTERRUPT", client: INSTR_MI_CLIENT, opcode: 0x02, length: () => 1 },
  { name: "MI_BATCH_BUFFER_END", client: INSTR_MI_CLIENT, opcode: 0x0a, length: () => 1 },
  { name: "MI_STORE_DATA_IMM", client: INSTR_MI_CLIENT, opcode: 0x20, length: (h) => (h & 0x3ff) + 2 },
  { name: "MI_LOAD_REGISTER_IMM", client: INSTR_MI_CLIENT, opcode: 0x22, length: (h) => (h & 0xff) + 2 },
  { name: "MI_BATCH_BUFFER_START", client: INSTR_MI_CLIENT, opcode: 0x31, length: (h) => (h & 0xff) + 2 },
  { name: "XY_COLOR_BLT", client: INSTR_BC_CLIENT, opcode: XY_COLOR_BLT_OPCODE, length: (h) => (h & 0xff) + 2 },
  { name: "XY_SRC_COPY_BLT", client: INSTR_BC_CLIENT, opcode: XY_SRC_COPY_BLT_OPCODE, length: (h) => (h & 0xff) + 2 },
];

/** Finds the table row of a command header, or undefined for a command the model does not implement. */
export function decodeCommand(header: number): CommandInfo | undefined {
  const client = header >>> INSTR_CLIENT_SHIFT;
  const opcode = client === INSTR_MI_CLIENT ? (header >>> 23) & 0x3f : (header >>> 22) & 0x7f;
  return COMMANDS.find((c) => c.client === client && c.opcode === opcode);
}

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
