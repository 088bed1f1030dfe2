/**
 * The PVINFO page (struct vgt_if, i915_pvinfo.h) at BAR0 0x78000: how a vGPU tells its guest that it is a vGPU, what
 * it can do, and which graphics memory it owns, so that the guest balloons out (never uses) everything else. As GVT-g's
 * populate_pvinfo_page (vgpu.c) and pvinfo_mmio_read/write (handlers.c).
 *
 * Contents: magic 'vGTvGTvG' (a 64-bit field: i915 reads it with one readq), version 1.0, vgt_id, vgt_caps =
 * FULL_PPGTT | HWSP_EMULATION (0x0C: the two i915 6.1 requires; no HUGE_GTT, so it maps 4 KiB pages only), the
 * ballooning layout (`gvtBalloon`), fence_num, cursor_x/y_hot = 0xFFFFFFFF. Everything else reads 0.
 *
 * The ballooning layout is GVT-g's: the mappable range is the vGPU's aperture partition at its host GGTT address, the
 * non-mappable range its hidden partition at its host GGTT address; the guest uses host GGTT addresses unchanged (no
 * GMA translation anywhere in the vendor driver). BAR2 is the whole host aperture (vconfig.ts), so the three rules
 * i915's intel_vgt_balloon checks hold for every type: m_base + m_size <= BAR2 size (mappable_end), u_base >=
 * mappable_end, u_base + u_size <= the GGTT's total (4 GiB: GGMS in GMCH_CTRL says 8 MiB of entries).
 *
 * Guest writes, by field (`PVINFO_WRITES`): display_ready and g2v_notify are stored and acted on (the vGPU's
 * `PvinfoSink`); cursor hot spots, pdp[0..3] and the execlist context descriptor are stored; a write into rsv5 sends
 * the vGPU to failsafe (GVT-g's "insufficient resource" verdict); any other write is dropped. Any read of the page
 * tells the vendor driver that the guest is PV-aware (`pv_notified`): enabling execlists without having read it is a
 * guest GVT-g does not support (failsafe). The page is rebuilt on every device reset.
 */
import { defineTraceEvents, hex } from "../core/index.ts";
import {
  GM_SIZE,
  type GpuResources,
  PVINFO,
  VGT_MAGIC,
  VGT_PVINFO_PAGE,
  VGT_VERSION_MAJOR,
  VGT_VERSION_MINOR,
} from "../gpu/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.pvinfo.write": { vgpu: number; field: string; value: number };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.pvinfo.write": "vgpu{vgpu}: guest wrote PVINFO {field} = {value}",
});

/** vgt_caps bits (VGT_CAPS_*). */
export const VGT_CAPS_FULL_PPGTT = 1 << 2;
export const VGT_CAPS_HWSP_EMULATION = 1 << 3;
export const VGT_CAPS_HUGE_GTT = 1 << 4;
/** What this vGPU offers: the two capabilities i915 6.1 requires (no huge GTT: 4 KiB pages only). */
export const VGPU_CAPS = VGT_CAPS_FULL_PPGTT | VGT_CAPS_HWSP_EMULATION;

/** Fields of struct vgt_if beyond gpu/regs.ts's PVINFO (offsets within the page, from compiling the struct). */
export const PVINFO_EXTRA = {
  rsv5: 0x808, // u32[4], 0x808..0x817
  cursorXHot: 0x830,
  cursorYHot: 0x834,
  pdp: 0x838, // struct { u32 lo, hi } pdp[4], 0x838..0x857
  execlistDescLo: 0x858,
  execlistDescHi: 0x85c,
} as const;

/** g2v_notify values (enum vgt_g2v_type). */
export const VGT_G2V_PPGTT_L3_PAGE_TABLE_CREATE = 2;
export const VGT_G2V_PPGTT_L3_PAGE_TABLE_DESTROY = 3;
export const VGT_G2V_PPGTT_L4_PAGE_TABLE_CREATE = 4;
export const VGT_G2V_PPGTT_L4_PAGE_TABLE_DESTROY = 5;
export const VGT_G2V_EXECLIST_CONTEXT_CREATE = 6;
export const VGT_G2V_EXECLIST_CONTEXT_DESTROY = 7;

/** What a guest write to a PVINFO field does. */
export type PvinfoWriteAction = "display-ready" | "g2v" | "store" | "failsafe" | "drop";

/** A PVINFO field a guest write can reach, and what the write does. */
export interface PvinfoField {
  readonly name: string;
  readonly action: PvinfoWriteAction;
}

const field = (name: string, action: PvinfoWriteAction): PvinfoField => ({ name, action });

/** The fields a guest write does something with, by offset within the page. Offsets not listed drop the write. */
export const PVINFO_WRITES: ReadonlyMap<number, PvinfoField> = new Map<number, PvinfoField>([
  [PVINFO.displayReady, field("display_ready", "display-ready")],
  [PVINFO.g2vNotify, field("g2v_notify", "g2v")],
  [PVINFO_EXTRA.cursorXHot, field("cursor_x_hot", "store")],
  [PVINFO_EXTRA.cursorYHot, field("cursor_y_hot", "store")],
  ...[0, 1, 2, 3].flatMap((i): [number, PvinfoField][] => [
    [PVINFO_EXTRA.pdp + 8 * i, field(`pdp[${i}].lo`, "store")],
    [PVINFO_EXTRA.pdp + 8 * i + 4, field(`pdp[${i}].hi`, "store")],
  ]),
  [PVINFO_EXTRA.execlistDescLo, field("execlist_context_descriptor_lo", "store")],
  [PVINFO_EXTRA.execlistDescHi, field("execlist_context_descriptor_hi", "store")],
  ...[0, 1, 2, 3].map((i): [number, PvinfoField] => [PVINFO_EXTRA.rsv5 + 4 * i, field(`rsv5[${i}]`, "failsafe")]),
]);

/** The field at `offsetInPage` (dword aligned) and what a guest write to it does ("drop" for unlisted offsets). */
export function pvinfoWriteField(offsetInPage: number): PvinfoField {
  return PVINFO_WRITES.get(offsetInPage) ?? field(`offset ${hex(offsetInPage)}`, "drop");
}

/** The ranges a vGPU's guest may use (avail_rs), in host GGTT addresses. */
export interface GvtBalloon {
  readonly mappableBase: number;
  readonly mappableSize: number;
  readonly nonmappableBase: number;
  readonly nonmappableSize: number;
  readonly fenceNum: number;
}

/** GVT-g's layout for a vGPU with partition `resources`: its two ranges at their host GGTT addresses. */
export function gvtBalloon(resources: GpuResources): GvtBalloon {
  return {
    mappableBase: resources.aperture.base,
    mappableSize: resources.aperture.size,
    nonmappableBase: resources.hidden.base,
    nonmappableSize: resources.hidden.size,
    fenceNum: resources.fences.length,
  };
}

/**
 * Why i915's intel_vgt_balloon would refuse `b` on a device whose BAR2 is `bar2Size` bytes and whose GGTT covers
 * `ggttTotal` bytes (default: the whole 4 GiB), or undefined if it accepts it (the message is i915's complaint).
 */
export function balloonViolation(b: GvtBalloon, bar2Size: number, ggttTotal: number = GM_SIZE): string | undefined {
  if (b.mappableBase + b.mappableSize > bar2Size) {
    return `mappable [${hex(b.mappableBase)}, ${hex(b.mappableBase + b.mappableSize)}) ends beyond BAR2's ${hex(bar2Size)} bytes`;
  }
  if (b.nonmappableBase < bar2Size) {
    return `non-mappable base ${hex(b.nonmappableBase)} lies below the end of the mappable aperture ${hex(bar2Size)}`;
  }
  if (b.nonmappableBase + b.nonmappableSize > ggttTotal) {
    return `non-mappable [${hex(b.nonmappableBase)}, ${hex(b.nonmappableBase + b.nonmappableSize)}) ends beyond the GGTT's ${hex(ggttTotal)} bytes`;
  }
  return undefined;
}

const MAGIC_LO = Number(VGT_MAGIC & 0xffff_ffffn);
const MAGIC_HI = Number(VGT_MAGIC >> 32n);

/**
 * Fills the PVINFO page inside `vreg`, the vGPU's MMIO registers indexed by dword (vreg[offset / 4]), for vGPU `id`
 * with partition `resources`. Everything else in the page is zeroed.
 */
export function populatePvinfo(vreg: Uint32Array, id: number, resources: GpuResources): void {
  const base = VGT_PVINFO_PAGE / 4;
  vreg.fill(0, base, base + 0x1000 / 4);
  const set = (field: number, v: number) => {
    vreg[base + field / 4] = v >>> 0;
  };
  const b = gvtBalloon(resources);
  set(PVINFO.magic, MAGIC_LO);
  set(PVINFO.magic + 4, MAGIC_HI);
  // version_major (u16 at 0x08) and version_minor (u16 at 0x0a) share one dword.
  set(PVINFO.versionMajor, VGT_VERSION_MAJOR | (VGT_VERSION_MINOR << 16));
  set(PVINFO.vgtId, id);
  set(PVINFO.vgtCaps, VGPU_CAPS);
  set(PVINFO.mappableBase, b.mappableBase);
  set(PVINFO.mappableSize, b.mappableSize);
  set(PVINFO.nonmappableBase, b.nonmappableBase);
  set(PVINFO.nonmappableSize, b.nonmappableSize);
  set(PVINFO.fenceNum, b.fenceNum);
  set(PVINFO_EXTRA.cursorXHot, 0xffff_ffff);
  set(PVINFO_EXTRA.cursorYHot, 0xffff_ffff);
}
