/**
 * Finds the stages of one guest access in a run's trace records, for the flow arrows of the Perfetto export
 * (chrome-trace.ts `addChain`): the guest's GTT (or PPGTT) write -> the pin (vfio_pin_pages) -> dma_map_page -> the
 * shadow entry the vendor driver writes -> the engine's DMA at that address -> the IOMMU's translation of it.
 *
 * An access is named by its guest page (gfn), the DMA address the shadow entry holds (`dmaAddr`: an IOVA, or an HPA
 * without an IOMMU) and, for GGTT accesses, its GMA. The shadow entry is the anchor: the write, pin and map are the
 * last matching records before it, the DMA and the translation the first after it. Stages the records lack (an access
 * no engine made) are left out; the caller can add them from elsewhere (the explanation of `vgpu explain`).
 */
import type { TraceInput } from "./chrome-trace.ts";

export interface AccessKey {
  readonly vgpu: number;
  readonly gfn: number;
  readonly dmaAddr: number;
  readonly gma?: number;
}

export interface FoundStage {
  readonly label: string;
  readonly seq: number;
}

const PAGE = 4096;

function f(r: TraceInput, k: string): unknown {
  return "fields" in r
    ? (r.fields as Readonly<Record<string, unknown>>)[k]
    : (r as Readonly<Record<string, unknown>>)[k];
}

function num(v: unknown): number {
  if (typeof v === "number") return v;
  if (typeof v === "string" && /^0x[0-9a-f]+$/i.test(v)) return Number.parseInt(v, 16);
  return Number.NaN;
}

/** The page an entry (GGTT PTE, PPGTT PTE, a hex string or number) points at: bits 12..47. */
function entryPage(v: unknown): number {
  const n = num(v);
  if (!Number.isFinite(n)) return -1;
  return Math.floor(n / PAGE) % 2 ** 36;
}

/** Records of an engine starting the work whose DMA follows (the model runs an engine synchronously from these). */
const ENGINE_STARTS = new Set(["gpu.ring.tail", "gpu.execlist.in", "i915.submit", "i915.context.submit"]);

/** The stages found for `key`, in chain order (see the module comment). */
export function findAccessChain(records: readonly TraceInput[], key: AccessKey): FoundStage[] {
  const page = Math.floor(key.dmaAddr / PAGE);
  const isShadow = (r: TraceInput): boolean =>
    (r.name === "vgpu.gtt.shadow" && f(r, "vgpu") === key.vgpu && Math.floor(num(f(r, "iova")) / PAGE) === page) ||
    (r.name === "vgpu.ppgtt.shadow_entry" && f(r, "vgpu") === key.vgpu && entryPage(f(r, "entry")) === page);
  const s = records.findIndex(isShadow);
  if (s < 0) return [];
  const before = (pred: (r: TraceInput) => boolean, from = s): number => {
    for (let i = from - 1; i >= 0; i--) if (pred(records[i]!)) return i;
    return -1;
  };
  const after = (pred: (r: TraceInput) => boolean, from = s): number => {
    for (let i = from + 1; i < records.length; i++) if (pred(records[i]!)) return i;
    return -1;
  };
  const map = before(
    (r) => (r.name === "dma.map" || r.name === "iommu.map") && Math.floor(num(f(r, "iova")) / PAGE) === page,
  );
  // vfio_pin_pages comes before the map; the vendor driver's own record of the pin (vgpu.gfn.pin) after it.
  let pin = before((r) => r.name === "vfio.type1.pin" && num(f(r, "iova")) === key.gfn * PAGE, map >= 0 ? map : s);
  if (pin < 0) pin = before((r) => r.name === "vgpu.gfn.pin" && f(r, "vgpu") === key.vgpu && f(r, "gfn") === key.gfn);
  const write = before(
    (r) =>
      (r.name === "vgpu.gtt.write" && f(r, "vgpu") === key.vgpu && entryPage(f(r, "pte")) === key.gfn) ||
      (r.name === "vgpu.ppgtt.spt_guest_change" && f(r, "vgpu") === key.vgpu && entryPage(f(r, "after")) === key.gfn),
    pin >= 0 ? pin : s,
  );
  // The translation is the first walk (or ATS request) for the page after the shadow entry; the DMA that made it is
  // the engine's PPGTT translation to the page, or else the engine's start (RING_TAIL, a context switched in, a
  // submission) just before it: a blit's own record comes when it completes, after its translations.
  const walk = after(
    (r) => (r.name === "iommu.walk" || r.name === "ats.translate") && Math.floor(num(f(r, "iova")) / PAGE) === page,
  );
  let dma = -1;
  if (walk >= 0) {
    for (let i = walk - 1; i > s && dma < 0; i--) {
      const r = records[i]!;
      if (r.name === "gpu.ppgtt.gma_translate" && Math.floor(num(f(r, "dmaAddr")) / PAGE) === page) dma = i;
    }
    for (let i = walk - 1; i > s && dma < 0; i--) if (ENGINE_STARTS.has(records[i]!.name)) dma = i;
  }
  const out: FoundStage[] = [];
  const push = (label: string, i: number) => {
    if (i >= 0) out.push({ label, seq: records[i]!.seq });
  };
  push("guest writes the GTT entry (GMA -> GPA)", write);
  push("vfio_pin_pages (GPA -> HPA)", pin);
  push("dma_map_page (HPA -> IOVA)", map);
  push("shadow entry (GMA -> IOVA)", s);
  if (dma >= 0) {
    push("engine DMA at the IOVA", dma);
    push("IOMMU translation (IOVA -> HPA)", walk);
  }
  return out;
}

/**
 * The first access of the run whose six stages are all in the records: an IOMMU walk, the engine DMA before it and
 * the shadow entry, map, pin and guest write behind that. Undefined when none is complete.
 */
export function firstCompleteChain(
  records: readonly TraceInput[],
): { key: AccessKey; stages: FoundStage[] } | undefined {
  const shadowByPage = new Map<number, { vgpu: number; gfn: number; gma: number | undefined }>();
  const gfnOfPinIova = new Map<number, number>();
  let tried = 0;
  for (const r of records) {
    if (r.name === "vgpu.gfn.pin") gfnOfPinIova.set(Math.floor(num(f(r, "iova")) / PAGE), Number(f(r, "gfn")));
    else if (r.name === "vgpu.gtt.shadow") {
      const p = Math.floor(num(f(r, "iova")) / PAGE);
      shadowByPage.set(p, { vgpu: Number(f(r, "vgpu")), gfn: Number(f(r, "gfn")), gma: Number(f(r, "index")) * PAGE });
    } else if (r.name === "vgpu.ppgtt.shadow_entry" && f(r, "level") === "PTE") {
      const p = entryPage(f(r, "entry"));
      const gfn = gfnOfPinIova.get(p);
      if (gfn !== undefined) shadowByPage.set(p, { vgpu: Number(f(r, "vgpu")), gfn, gma: undefined });
    } else if (r.name === "iommu.walk" || r.name === "ats.translate") {
      const p = Math.floor(num(f(r, "iova")) / PAGE);
      const s = shadowByPage.get(p);
      if (s === undefined || ++tried > 256) continue;
      const key: AccessKey = {
        vgpu: s.vgpu,
        gfn: s.gfn,
        dmaAddr: p * PAGE,
        ...(s.gma !== undefined ? { gma: s.gma } : {}),
      };
      const stages = findAccessChain(records, key);
      if (stages.length === 6) return { key, stages };
    }
  }
  return undefined;
}
