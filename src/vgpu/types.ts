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
 * `gvtFit` answers the question a planner asks before creating anything: can vGPUs of these types all fit this GPU,
 * and if not, which resource is short (errno and sentence). Types appear in sysfs as `i915-<type id>`
 * (`GVT_DRIVER_NAME`, `gvtTypeDirName`); `gvtTypeId` takes either form back to the id.
 *
 * Invariant: the table is ordered by ascending size (GVT-g's order, _8 first), and every size is a power of two
 * (each is also a vGPU's BAR2 size).
 */
import { Errno } from "../core/index.ts";
import type { GpuCapacity } from "../gpu/index.ts";
import { type MdevAvailability, type MdevTypeSpec, mdevTypeDirName } from "../mdev/index.ts";

const MiB = 1024 * 1024;

/** The driver name the GVT-g parent registers under: its types show in sysfs as `i915-<type id>`. */
export const GVT_DRIVER_NAME = "i915";

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

/** The table row of type id `typeId` ("GVTg_V5_8"; see `gvtTypeId` for a name with the driver prefix), or undefined. */
export function findGvtType(typeId: string): GvtTypeSpec | undefined {
  return GVT_TYPES.find((t) => t.id === typeId);
}

/** The type id of a type named with or without the driver prefix: "i915-GVTg_V5_8" and "GVTg_V5_8" give "GVTg_V5_8". */
export function gvtTypeId(name: string): string {
  const prefix = `${GVT_DRIVER_NAME}-`;
  return name.startsWith(prefix) ? name.slice(prefix.length) : name;
}

/** The directory of a type under mdev_supported_types: "GVTg_V5_8" (or "i915-GVTg_V5_8") gives "i915-GVTg_V5_8". */
export function gvtTypeDirName(typeId: string): string {
  return mdevTypeDirName(GVT_DRIVER_NAME, gvtTypeId(typeId));
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

/** What vGPUs of several types take together from one GPU. */
export interface GvtDemand {
  readonly vgpus: number;
  readonly aperture: number;
  readonly hidden: number;
  readonly fences: number;
}

/** The resource that stops a set of vGPUs from fitting, with its numbers (bytes for memory, counts otherwise). */
export interface GvtShortage {
  /** ENOSPC when a resource is short; EINVAL for a type name the table does not have. */
  readonly errno: Errno;
  /** "aperture: they need 1024 MiB, 384 MiB is free for vGPUs". */
  readonly message: string;
  readonly resource: "type" | "vGPU ids" | "aperture" | "hidden" | "fences";
  readonly needs: number;
  readonly free: number;
}

/** The sum of what the vGPUs of `types` take. */
export function gvtDemand(types: readonly GvtTypeSpec[]): GvtDemand {
  let aperture = 0;
  let hidden = 0;
  let fences = 0;
  for (const t of types) {
    aperture += t.aperture;
    hidden += t.hidden;
    fences += t.fences;
  }
  return { vgpus: types.length, aperture, hidden, fences };
}

/**
 * Whether vGPUs of the types `typeIds` (one name per vGPU, with or without the `i915-` prefix) can all exist at once
 * on a GPU whose host driver reports `cap`, with `idsLeft` vGPU ids free (default: all of them): undefined if they
 * fit, else the first shortage in the order type names, vGPU ids, aperture, hidden, fences. Without `cap` only the
 * names and the ids are checked (what can be known before the GPU exists).
 *
 * Totals are compared (free bytes, not the largest free range): exact for a GPU whose vGPU regions are each one free
 * range (no vGPU created yet, or all destroyed), since partitions are carved first fit from the bottom; an upper bound
 * once the free space is fragmented, and then `create` fails with the host driver's ENOSPC naming the range.
 */
export function gvtFit(
  typeIds: readonly string[],
  cap?: GpuCapacity,
  idsLeft: number = GVT_MAX_VGPUS,
): GvtShortage | undefined {
  const types: GvtTypeSpec[] = [];
  for (const name of typeIds) {
    const t = findGvtType(gvtTypeId(name));
    if (t === undefined) {
      return {
        errno: Errno.EINVAL,
        message: `unknown vGPU type "${name}"; GVT-g offers ${GVT_TYPES.map((x) => x.id).join(", ")}`,
        resource: "type",
        needs: 1,
        free: 0,
      };
    }
    types.push(t);
  }
  const d = gvtDemand(types);
  if (d.vgpus > idsLeft) {
    return {
      errno: Errno.ENOSPC,
      message: `vGPU ids: they need ${d.vgpus}, ${idsLeft} of ${GVT_MAX_VGPUS} are free (ids 1..${GVT_MAX_VGPUS}; id 0 is the idle vGPU)`,
      resource: "vGPU ids",
      needs: d.vgpus,
      free: idsLeft,
    };
  }
  if (cap === undefined) return undefined;
  const short = (resource: GvtShortage["resource"], what: string, needs: number, free: number): GvtShortage => ({
    errno: Errno.ENOSPC,
    message:
      resource === "fences"
        ? `fences: they need ${needs}, ${free} are free`
        : `${what}: they need ${mib(needs)}, ${mib(free)} is free for vGPUs`,
    resource,
    needs,
    free,
  });
  if (d.aperture > cap.apertureFree) return short("aperture", "aperture", d.aperture, cap.apertureFree);
  if (d.hidden > cap.hiddenFree) return short("hidden", "hidden graphics memory", d.hidden, cap.hiddenFree);
  if (d.fences > cap.fencesFree) return short("fences", "fences", d.fences, cap.fencesFree);
  return undefined;
}
