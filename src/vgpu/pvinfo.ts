/**
 * The PVINFO page (struct vgt_if, i915_pvinfo.h) at BAR0 0x78000: how a vGPU tells its guest that it is a vGPU and
 * which graphics memory it owns, so the guest driver balloons out (never uses) everything else. Modelled on GVT-g's
 * populate_pvinfo_page and pvinfo_mmio_write (handlers.c).
 *
 * Contents: magic 'vGTvGTvG', version 1.0, vgt_id, vgt_caps 0 (this model offers no PPGTT, HWSP emulation or huge
 * GTT), avail_rs: the mappable (aperture) partition's base and size, the non-mappable (hidden) partition's base and
 * size, and the number of fences. The guest may write `display_ready` and `g2v_notify` (stored, traced); every other
 * write into the page is dropped and counted as an unknown register write (GVT-g also accepts its cursor-hot and
 * execlist-descriptor fields, which this model does not have). Reads return what is stored; the page is rebuilt on
 * every reset.
 */
import { defineTraceEvents } from "../core/index.ts";
import {
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

/** The guest-writable PVINFO fields, by offset within the page. */
export const PVINFO_WRITABLE: Readonly<Record<number, string>> = {
  [PVINFO.displayReady]: "display_ready",
  [PVINFO.g2vNotify]: "g2v_notify",
};

const MAGIC_LO = Number(VGT_MAGIC & 0xffff_ffffn);
const MAGIC_HI = Number(VGT_MAGIC >> 32n);

/**
 * Fills the PVINFO page inside `vreg`, the vGPU's MMIO registers indexed by dword (vreg[offset / 4]), for vGPU `id`
 * with `resources`. Everything else in the page is zeroed.
 */
export function populatePvinfo(vreg: Uint32Array, id: number, resources: GpuResources): void {
  const base = VGT_PVINFO_PAGE / 4;
  vreg.fill(0, base, base + 0x1000 / 4);
  const set = (field: number, v: number) => {
    vreg[base + field / 4] = v >>> 0;
  };
  set(PVINFO.magic, MAGIC_LO);
  set(PVINFO.magic + 4, MAGIC_HI);
  // version_major (u16 at 0x08) and version_minor (u16 at 0x0a) share one dword.
  set(PVINFO.versionMajor, VGT_VERSION_MAJOR | (VGT_VERSION_MINOR << 16));
  set(PVINFO.vgtId, id);
  set(PVINFO.vgtCaps, 0);
  set(PVINFO.mappableBase, resources.aperture.base);
  set(PVINFO.mappableSize, resources.aperture.size);
  set(PVINFO.nonmappableBase, resources.hidden.base);
  set(PVINFO.nonmappableSize, resources.hidden.size);
  set(PVINFO.fenceNum, resources.fences.length);
}

/** The name of the writable field at `offsetInPage` (dword aligned), or undefined when the guest may not write it. */
export function pvinfoWritableField(offsetInPage: number): string | undefined {
  return PVINFO_WRITABLE[offsetInPage];
}
