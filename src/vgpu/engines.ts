/**
 * The vGPU's engines as data: the four engines of a Skylake GT2 that a guest i915 drives (RCS, BCS, VCS, VECS), each
 * with its MMIO base, its place in the gen8 GT interrupt banks and its GEN6_GDRST domain bit. GVT-g exposes every
 * engine of the host; i915 6.1 submits on all four at init (gen9 has no fuse that hides one), so the vendor driver
 * answers the registers of all four whether or not the physical GPU model executes on them.
 *
 * `VEngineId` is the physical GPU's `EngineId` widened by the engines src/gpu does not model yet; when the GPU grows
 * them, the union collapses into `EngineId` and the bases below come from its `ENGINE_BASE`. Which virtual engine runs
 * where is not decided here: the legacy ring path (vgpu.ts) submits only to engines the physical GPU has, and the
 * virtual execlists (execlist.ts) hand workloads to a `VirtualEngineBackend`.
 *
 * Invariant: bases are distinct 4 KiB-aligned engine pages; (bank, shift) pairs are distinct.
 */
import { ENGINE_BASE, type EngineId } from "../gpu/index.ts";

/** An engine of the virtual GPU: the physical GPU's engines plus the ones a gen9 GT2 guest expects. */
export type VEngineId = EngineId | "vcs" | "vecs";

/** One engine of the vGPU. */
export interface VEngineInfo {
  readonly id: VEngineId;
  /** i915's name for it in its messages ("rcs'0"). */
  readonly i915Name: string;
  /** MMIO base of its register page (RENDER_RING_BASE, BLT_RING_BASE, GEN6_BSD_RING_BASE, VEBOX_RING_BASE). */
  readonly base: number;
  /** GT interrupt bank n (GEN8_GT_IIR(n)) and the bit shift of its 16-bit field there. */
  readonly irqBank: number;
  readonly irqShift: number;
  /** Its GEN6_GDRST domain bit (GEN6_GRDOM_RENDER, _BLT, _MEDIA, _VECS). */
  readonly gdrstDomain: number;
}

/** The engines of a Skylake GT2, in i915's order. */
export const VGPU_ENGINES: readonly VEngineInfo[] = [
  { id: "rcs", i915Name: "rcs'0", base: ENGINE_BASE.rcs, irqBank: 0, irqShift: 0, gdrstDomain: 1 << 1 },
  { id: "bcs", i915Name: "bcs'0", base: ENGINE_BASE.bcs, irqBank: 0, irqShift: 16, gdrstDomain: 1 << 3 },
  { id: "vcs", i915Name: "vcs'0", base: 0x12000, irqBank: 1, irqShift: 0, gdrstDomain: 1 << 2 },
  { id: "vecs", i915Name: "vecs'0", base: 0x1a000, irqBank: 3, irqShift: 0, gdrstDomain: 1 << 4 },
];

/** Engine ids in table order. */
export const VENGINE_IDS: readonly VEngineId[] = VGPU_ENGINES.map((e) => e.id);

const BY_ID = new Map<VEngineId, VEngineInfo>(VGPU_ENGINES.map((e) => [e.id, e]));

/** The table row of engine `id`. */
export function vengine(id: VEngineId): VEngineInfo {
  return BY_ID.get(id)!;
}

/** Whether `id` is an engine the physical GPU model has (the legacy ring path submits only to those). */
export function isPhysicalEngine(id: VEngineId): id is EngineId {
  return Object.hasOwn(ENGINE_BASE, id);
}
