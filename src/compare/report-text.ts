/**
 * The comparison for people (a table and each design's verdict with its first examples) and for tools (JSON with
 * NaN as null). The HTML page is report-html.ts.
 */
import { COST_TABLE } from "../cost/index.ts";
import { formatPercent, formatSize, formatTime } from "../scenario/index.ts";
import type { CompareResult, DesignResult } from "./run.ts";

const ratio = (x: number): string => x.toFixed(2);

/** The verdict in a word or two. */
export function verdictWord(r: DesignResult): string {
  if (r.refused !== undefined) return "refused";
  if (r.error !== undefined) return "run failed";
  if (r.design.id === "identity" && r.verdict.clashes > 0) return "COLLISION";
  if (r.design.id === "gpa" && r.verdict.clashes > 0) return "CONFLICT";
  if (r.verdict.violations > 0) return "VIOLATED";
  if (r.design.id === "ats" && r.verdict.trust?.translatedWrite === "reached") return "isolated*";
  if (r.design.id === "no-iommu") return "mediator only";
  return "isolated";
}

export function formatCompare(c: CompareResult): string[] {
  const head = [
    "design",
    "verdict",
    "violations",
    "clashes",
    "GPU MMU/DMA",
    "IOMMU/DMA",
    "ATC/DMA",
    "IOTLB hit",
    "ATC hit",
    "IOVA space",
    "pins",
    "maps",
    "unmaps",
    "inval IOTLB/ATC",
    "chain time",
    "modelled",
  ];
  const rows = c.results.map((r) => {
    const d = `${r.design.n} ${r.design.id}`;
    if (r.refused !== undefined) return [d, "refused", ...head.slice(2).map(() => "-")];
    return [
      d,
      verdictWord(r),
      String(r.verdict.violations),
      String(r.verdict.clashes),
      ratio(r.translations.gpuMmuPerDma),
      ratio(r.translations.iommuPerDma),
      ratio(r.translations.preTranslatedPerDma),
      formatPercent(r.iotlbHitRate),
      formatPercent(r.atcHitRate),
      formatSize(r.iovaSpaceBytes),
      String(r.counts.pinPages),
      String(r.counts.iommuMapCalls),
      String(r.counts.iommuUnmapCalls),
      `${r.counts.iotlbInvalidations}/${r.counts.atcInvalidations}`,
      formatTime(Math.round(r.chainNs)),
      formatTime(Math.round(r.modelledNs)),
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((x, i) => (i < 2 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!)))
      .join("  ")
      .trimEnd();
  const out = [
    `vgpu compare: the seed thread's DMA designs on one workload (${c.scenario}, seed ${c.seed})`,
    "",
    line(head),
    ...rows.map(line),
    "",
    "per DMA = per 4 KiB piece of a GPU DMA; chain time = the DMA chain's operations priced by the cost model",
    "(docs/cost-model.md); modelled = chain time + engine time; isolated* = isolated, trusting the device (see 6)",
    "",
  ];
  for (const r of c.results) {
    out.push(`${r.design.n} ${r.design.title} (${r.design.id})`);
    out.push(`  thread:  "${r.design.quote}"`);
    out.push(`  chain:   ${r.design.chain}`);
    out.push(`  verdict: ${r.verdict.summary}`);
    for (const x of r.verdict.examples.slice(0, 2)) out.push(`    e.g. ${x}`);
    for (const cl of r.verdict.clashExamples.slice(0, 2)) {
      const a = `0x${cl.address.toString(16)}`;
      const who = cl.holder === "host" ? "the host driver's IOVA" : `vgpu${cl.holderVgpu}'s entry`;
      out.push(
        `    address ${a}: vgpu${cl.vgpu}'s page (gfn 0x${cl.gfn.toString(16)}, frame 0x${cl.pfn.toString(16)}) ` +
          `wanted it, ${who} holds it: DMA lands in frame 0x${cl.reachesPfn.toString(16)}`,
      );
    }
    const t = r.verdict.trust;
    if (t !== undefined && (r.design.id === "ats" || r.design.id === "no-iommu" || r.design.id === "dma-api")) {
      out.push(
        `  trust:   a translated write to ${t.target} ${t.translatedWrite}` +
          (t.afterAtsDisabled !== undefined ? `; with ATS disabled for the GPU: ${t.afterAtsDisabled}` : "") +
          (t.reachableBytes > 0 ? `; a device can reach ${formatSize(t.reachableBytes)}` : ""),
      );
    }
    out.push("");
  }
  return out;
}

/** JSON for tools: every figure, NaN and absent values as null, the cost model with its sources. */
export function compareJson(c: CompareResult): string {
  const costs = COST_TABLE.map((e) => ({ key: e.key, ns: c.costs[e.key], per: e.per, source: e.source }));
  return JSON.stringify(
    { ...c, costs },
    (_k, v: unknown) => (v === undefined || (typeof v === "number" && !Number.isFinite(v)) ? null : v),
    2,
  );
}
