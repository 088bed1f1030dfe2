/**
 * The vGPU types as data: GVT-g's gen9 type table (drivers/gpu/drm/i915/gvt/vgpu.c, intel_vgpu_configs[]) and the
 * capacity arithmetic behind `available_instances` (kvmgt.c, intel_vgpu_get_available).
 *
 * A type fixes what one vGPU takes from the physical GPU: a contiguous range of low ("mappable", aperture) graphics
 * memory, a contiguous range of high ("hidden") graphics memory, 4 fence registers, and a scheduling weight. Its
 * `description` is kvmgt's text (low_gm_size, high_gm_size, fence, resolution of the virtual EDID, weight).
 *
 * available_instances = min(aperture left / low, hidden left / high, fences left / 4, vGPU ids left), with "left"
 * taken from the host driver's capacity. A vGPU's ranges must be contiguous, so a type gets 0 when the largest free
 * range of either kind is smaller than its size, even if the total free would do; otherwise the total free is divided
 * (an upper bound when free space is fragmented; `create` then fails with the host driver's ENOSPC, which names the
 * numbers). Types whose low size exceeds the largest free aperture range are not listed at all (`listedTypes`), as
 * GVT-g drops types that no longer fit the aperture; Linux decides that once at probe time, this model on every
 * listing. At most 7 vGPUs exist per GPU (8 ids, id 0 is the idle vGPU).
 *
 * Invariant: the table is ordered by ascending size (GVT-g's order, _8 first), and every size is a power of two
 * (each is also a vGPU's BAR2 size).
 */
import type { GpuCapacity } from "../gpu/index.ts";
import type { MdevAvailability, MdevTypeSpec } from "../mdev/index.ts";

const MiB = 1024 * 1024;

/** GVT_MAX_VGPU: vGPU ids 0..7; id 0 is the idle vGPU the scheduler runs when nobody has work. */
export const GVT_MAX_VGPU_IDS = 8;
export const GVT_MAX_VGPUS = GVT_MAX_VGPU_IDS - 1;
/** VGPU_MAX_WEIGHT */
export const GVT_MAX_WEIGHT = 16;

/** Resolutions of the virtual EDID a type advertises (GVT_EDID_1024_768, GVT_EDID_1920_1200). */
export type GvtEdid = "1024x768" | "1920x1200";

/** One row of the type table. */
export interface GvtTypeSpec extends MdevTypeSpec {
  /** The `<n>` of GVTg_V5_<n>: how many of this type fill the GPU GVT-g was sized for. */
  readonly instancesHint: number;
  /** Low (aperture) graphics memory, bytes. */
  readonly aperture: number;
  /** High (hidden) graphics memory, bytes. */
  readonly hidden: number;
  readonly fences: number;
  readonly weight: number;
  readonly edid: GvtEdid;
}

function gvtType(n: number, lowMiB: number, highMiB: number, weight: number, edid: GvtEdid): GvtTypeSpec {
  return {
    id: `GVTg_V5_${n}`,
    name: `GVTg_V5_${n}`,
    // kvmgt's description_show: "low_gm_size: %dMB\nhigh_gm_size: %dMB\nfence: %d\nresolution: %s\nweight: %d\n"
    description:
      `low_gm_size: ${lowMiB}MB\nhigh_gm_size: ${highMiB}MB\nfence: 4\nresolution: ${edid}\n` + `weight: ${weight}\n`,
    deviceApi: "vfio-pci",
    instancesHint: n,
    aperture: lowMiB * MiB,
    hidden: highMiB * MiB,
    fences: 4,
    weight,
    edid,
  };
}

/** intel_vgpu_configs[] (gen9: the V5 generation of GVT-g's types). */
export const GVT_TYPES: readonly GvtTypeSpec[] = [
  gvtType(8, 64, 384, 2, "1024x768"),
  gvtType(4, 128, 512, 4, "1920x1200"),
  gvtType(2, 256, 1024, 8, "1920x1200"),
  gvtType(1, 512, 2048, 16, "1920x1200"),
];

/** The table row of `typeId`, or undefined. */
export function findGvtType(typeId: string): GvtTypeSpec | undefined {
  return GVT_TYPES.find((t) => t.id === typeId);
}

const mib = (bytes: number): string => `${Math.floor(bytes / MiB)} MiB`;

/**
 * How many more vGPUs of `type` fit, and when none, which resource stops it (the first in the order vGPU ids,
 * aperture, hidden, fences) with its numbers: "aperture: 64 MiB left, needs 256 MiB".
 */
export function gvtAvailability(type: GvtTypeSpec, cap: GpuCapacity, idsLeft: number): MdevAvailability {
  if (idsLeft <= 0) {
    return { instances: 0, reason: `vGPU ids: all ${GVT_MAX_VGPUS} in use (id 0 is the idle vGPU)` };
  }
  const byAperture = cap.apertureLargestFree < type.aperture ? 0 : Math.floor(cap.apertureFree / type.aperture);
  if (byAperture === 0) return { instances: 0, reason: shortOf("aperture", cap.apertureLargestFree, type.aperture) };
  const byHidden = cap.hiddenLargestFree < type.hidden ? 0 : Math.floor(cap.hiddenFree / type.hidden);
  if (byHidden === 0) return { instances: 0, reason: shortOf("hidden", cap.hiddenLargestFree, type.hidden) };
  const byFences = Math.floor(cap.fencesFree / type.fences);
  if (byFences === 0) {
    return { instances: 0, reason: `fences: ${cap.fencesFree} left, needs ${type.fences}` };
  }
  return { instances: Math.min(byAperture, byHidden, byFences, idsLeft) };
}

function shortOf(what: string, largest: number, needs: number): string {
  return `${what}: ${mib(largest)} left, needs ${mib(needs)}`;
}

/** The types offered now: those whose aperture size fits the largest free aperture range. */
export function listedTypes(cap: GpuCapacity): readonly GvtTypeSpec[] {
  return GVT_TYPES.filter((t) => t.aperture <= cap.apertureLargestFree);
}
