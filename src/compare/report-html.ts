/**
 * The comparison as one self-contained HTML page: inline CSS and SVG charts, no script, no font or image fetched, so
 * it opens from a file with no network. Charts: isolation (violations and clashing addresses), translations per DMA,
 * IOTLB and ATC hit rates, IOVA space, map/unmap/invalidate calls, and modelled time broken down by operation; then a
 * card per design (the thread's words, the chain, the verdict with its first examples, the trust probe) and the cost
 * table with the source of every figure.
 */
import { COST_TABLE } from "../cost/index.ts";
import { formatSize, formatTime } from "../scenario/index.ts";
import type { FragmentationPoint, ReachPoint, UnmapModeResult } from "./experiments.ts";
import { verdictWord } from "./report-text.ts";
import type { CompareResult, DesignResult } from "./run.ts";

const esc = (s: string): string =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

const PALETTE = ["#3b6ea5", "#e07b39", "#5aa469", "#b0413e", "#8e6bb8", "#c9a227", "#4aa3a2", "#777777"];

interface Series {
  readonly name: string;
  readonly values: readonly number[];
}

interface ChartOptions {
  readonly title: string;
  readonly categories: readonly string[];
  readonly series: readonly Series[];
  readonly format: (v: number) => string;
  /** Log scale (values <= 0 drawn as nothing), in powers of `logBase` (default 10; 1024 for bytes). */
  readonly log?: boolean;
  readonly logBase?: number;
  /** The axis' top (default: the largest value, rounded up). */
  readonly max?: number;
  /** Stack the series instead of grouping them. */
  readonly stacked?: boolean;
  readonly note?: string;
}

/** 1, 2 or 5 times a power of ten, at least `v`: an axis top that reads well. */
function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** A grouped (or stacked) vertical bar chart as an SVG element. */
export function barChart(o: ChartOptions): string {
  const W = 560;
  const H = 280;
  const left = 64;
  const right = 10;
  const top = 30;
  const bottom = 78;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const n = o.categories.length;
  const totals = o.categories.map((_, i) =>
    o.stacked
      ? o.series.reduce((s, x) => s + Math.max(0, x.values[i] ?? 0), 0)
      : Math.max(...o.series.map((x) => x.values[i] ?? 0)),
  );
  const max = o.max ?? Math.max(...totals.filter((v) => Number.isFinite(v)), 0);
  const base = o.logBase ?? 10;
  const logOf = (v: number): number => Math.log(v) / Math.log(base);
  const positive = o.series.flatMap((x) => x.values).filter((v) => v > 0);
  const lo = o.log ? Math.max(0, Math.floor(logOf(Math.min(...positive, max || 1)))) : 0;
  const hi = o.log ? Math.max(lo + 1, Math.ceil(logOf(Math.max(max, 1e-9)))) : max === 0 ? 1 : (o.max ?? niceCeil(max));
  const y = (v: number): number => {
    if (o.log) {
      if (!(v > 0)) return top + plotH;
      const t = (logOf(Math.max(v, base ** lo)) - lo) / (hi - lo);
      return top + plotH - t * plotH;
    }
    return top + plotH - (Math.max(0, Number.isFinite(v) ? v : 0) / hi) * plotH;
  };
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(o.title)}">`,
  );
  parts.push(`<text x="${left}" y="18" class="ct">${esc(o.title)}</text>`);
  // Grid and axis labels.
  const ticks = o.log
    ? Array.from({ length: hi - lo + 1 }, (_, k) => base ** (lo + k))
    : Array.from({ length: 5 }, (_, k) => (hi * k) / 4);
  for (const t of ticks) {
    const yy = y(t);
    parts.push(`<line x1="${left}" x2="${W - right}" y1="${yy.toFixed(1)}" y2="${yy.toFixed(1)}" class="grid"/>`);
    parts.push(
      `<text x="${left - 6}" y="${(yy + 4).toFixed(1)}" class="tick" text-anchor="end">${esc(o.format(t))}</text>`,
    );
  }
  const groupW = plotW / n;
  const barW = o.stacked ? groupW * 0.6 : (groupW * 0.8) / o.series.length;
  o.categories.forEach((cat, i) => {
    const gx = left + i * groupW;
    let acc = 0;
    o.series.forEach((s, k) => {
      const v = s.values[i] ?? 0;
      const color = PALETTE[k % PALETTE.length]!;
      let x: number;
      let y0: number;
      let y1: number;
      if (o.stacked) {
        x = gx + (groupW - barW) / 2;
        y1 = y(acc);
        acc += Math.max(0, v);
        y0 = y(acc);
      } else {
        x = gx + groupW * 0.1 + k * barW;
        y0 = y(v);
        y1 = y(0);
        if (o.log && v > 0) y1 = top + plotH;
      }
      const h = Math.max(0, y1 - y0);
      if (h > 0) {
        parts.push(
          `<rect x="${x.toFixed(1)}" y="${y0.toFixed(1)}" width="${Math.max(1, barW - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${color}"><title>${esc(`${cat} — ${s.name}: ${o.format(v)}`)}</title></rect>`,
        );
      }
      if (!o.stacked && barW >= 30) {
        const label = Number.isNaN(v) ? "n/a" : o.format(v);
        parts.push(
          `<text x="${(x + barW / 2).toFixed(1)}" y="${(Math.min(y0, top + plotH) - 3).toFixed(1)}" class="val" text-anchor="middle">${esc(label)}</text>`,
        );
      }
    });
    if (o.stacked) {
      parts.push(
        `<text x="${(gx + groupW / 2).toFixed(1)}" y="${(y(acc) - 3).toFixed(1)}" class="val" text-anchor="middle">${esc(o.format(acc))}</text>`,
      );
    }
    parts.push(
      `<text x="${(gx + groupW / 2).toFixed(1)}" y="${top + plotH + 16}" class="cat" text-anchor="middle">${esc(cat)}</text>`,
    );
  });
  parts.push(`<line x1="${left}" x2="${W - right}" y1="${top + plotH}" y2="${top + plotH}" class="axis"/>`);
  // Legend, wrapped onto a second row when it does not fit.
  let lx = left;
  let ly = H - 34;
  o.series.forEach((s, k) => {
    const w = 24 + s.name.length * 6.3;
    if (lx + w > W - right && lx > left) {
      lx = left;
      ly += 13;
    }
    parts.push(`<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${PALETTE[k % PALETTE.length]}"/>`);
    parts.push(`<text x="${lx + 14}" y="${ly}" class="leg">${esc(s.name)}</text>`);
    lx += w;
  });
  if (o.note !== undefined) parts.push(`<text x="${left}" y="${H - 4}" class="note">${esc(o.note)}</text>`);
  parts.push("</svg>");
  return parts.join("");
}

/** A legend name for a cost key: "iommuMapCallNs" -> "iommu map call". */
function shortName(key: string): string {
  return key
    .replace(/Ns$/, "")
    .replace(/([A-Z])/g, " $1")
    .toLowerCase()
    .replace("iotlb", "IOTLB")
    .replace("atc", "ATC")
    .replace("ats", "ATS")
    .replace("iova", "IOVA")
    .replace("dma api", "DMA API");
}

function card(r: DesignResult): string {
  const v = r.verdict;
  const word = verdictWord(r);
  const cls = r.refused !== undefined ? "refused" : v.isolated ? (word === "isolated" ? "ok" : "warn") : "bad";
  const lines: string[] = [];
  lines.push(`<section class="card ${cls}" id="design-${r.design.id}">`);
  lines.push(`<h3>${r.design.n}. ${esc(r.design.title)} <span class="badge">${esc(word)}</span></h3>`);
  lines.push(`<blockquote>${esc(r.design.quote)}</blockquote>`);
  lines.push(`<p class="chain">${esc(r.design.chain)}</p>`);
  lines.push(`<p><b>Verdict:</b> ${esc(v.summary)}</p>`);
  if (v.examples.length > 0) {
    lines.push(
      `<p><b>First violations</b> (isolation checker):</p><ul>${v.examples.map((x) => `<li><code>${esc(x)}</code></li>`).join("")}</ul>`,
    );
  }
  if (v.clashExamples.length > 0) {
    const rows = v.clashExamples
      .map(
        (c) =>
          `<tr><td><code>0x${c.address.toString(16)}</code></td><td>vgpu${c.vgpu} gfn 0x${c.gfn.toString(16)} (frame 0x${c.pfn.toString(16)})</td><td>${c.holder === "host" ? "host driver IOVA" : `vgpu${c.holderVgpu}`}</td><td>frame 0x${c.reachesPfn.toString(16)}</td></tr>`,
      )
      .join("");
    lines.push(
      `<p><b>Addresses that mean two things</b> (${v.clashes} in all):</p><table class="small"><tr><th>address</th><th>wanted by</th><th>held by</th><th>DMA lands in</th></tr>${rows}</table>`,
    );
  }
  const t = v.trust;
  if (t !== undefined) {
    lines.push(
      `<p><b>Trust probe:</b> a write marked as translated, from the GPU to ${esc(t.target)}: <b>${t.translatedWrite}</b>` +
        (t.afterAtsDisabled !== undefined
          ? `; with the IOMMU's ATS control off for the GPU: <b>${t.afterAtsDisabled}</b>`
          : "") +
        (t.reachableBytes > 0
          ? `. A device sending such requests reaches all ${formatSize(t.reachableBytes)} of RAM.`
          : ".") +
        "</p>",
    );
  }
  if (r.error !== undefined)
    lines.push(`<p class="err">Run stopped: ${esc(r.error.errno)}: ${esc(r.error.message)}</p>`);
  lines.push("</section>");
  return lines.join("\n");
}

/** The cost model's experiments (experiments.ts), drawn under the comparison when given. */
export interface ExperimentResults {
  readonly fragmentation: readonly FragmentationPoint[];
  /** strict and deferred, without and with ATS. */
  readonly unmap: readonly { readonly ats: boolean; readonly result: UnmapModeResult }[];
  readonly reach: readonly ReachPoint[];
}

function experimentCharts(x: ExperimentResults): string[] {
  const ns = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(1)} us` : `${v.toFixed(0)} ns`);
  const out: string[] = [];
  out.push(
    barChart({
      title: "IOVA allocation under fragmentation (FAST'15): ns per allocation",
      categories: x.fragmentation.map((p) => `${p.liveRanges} ranges`),
      series: [
        { name: "Linux iova.c (linear walk)", values: x.fragmentation.map((p) => p.linuxNs) },
        { name: "ours (O(log n))", values: x.fragmentation.map((p) => p.oursNs) },
      ],
      format: ns,
      log: true,
    }),
  );
  const modes = ["strict", "deferred"] as const;
  out.push(
    barChart({
      title: "Unmap: ns per map + unmap pair",
      categories: [...modes],
      series: [false, true].map((ats) => ({
        name: ats ? "with ATS (device-IOTLB too)" : "IOTLB only",
        values: modes.map((m) => x.unmap.find((u) => u.ats === ats && u.result.mode === m)?.result.nsPerPair ?? 0),
      })),
      format: ns,
      note: "deferred: one flush per 256 unmaps; until it, the device still reaches unmapped pages",
    }),
  );
  const sizes = [...new Set(x.reach.map((p) => p.pages))].sort((a, b) => a - b);
  out.push(
    barChart({
      title: "IOTLB reach: ns of translation per access (1024-entry IOTLB)",
      categories: sizes.map((n) => formatSize(n * 4096)),
      series: (["4K", "2M"] as const).map((ps) => ({
        name: ps === "4K" ? "4 KiB pages" : "2 MiB pages",
        values: sizes.map((n) => x.reach.find((p) => p.pages === n && p.pageSize === ps)?.nsPerAccess ?? 0),
      })),
      format: ns,
      note: "working set swept in order; past 4 MiB every 4 KiB access misses and walks 4 levels",
    }),
  );
  return out;
}

/** The page (with the cost model's experiments when given). */
export function compareHtml(c: CompareResult, experiments?: ExperimentResults): string {
  const ran = c.results.filter((r) => r.refused === undefined);
  const cats = ran.map((r) => `${r.design.n} ${r.design.id}`);
  const col = (f: (r: DesignResult) => number) => ran.map(f);
  const int = (v: number) =>
    v >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : v >= 1e4 ? `${(v / 1e3).toFixed(0)}k` : `${Math.round(v)}`;
  const charts: string[] = [];
  charts.push(
    barChart({
      title: "Isolation: violations found by the checker, and clashing addresses",
      categories: cats,
      series: [
        { name: "violations", values: col((r) => r.verdict.violations) },
        { name: "clashing addresses", values: col((r) => r.verdict.clashes) },
      ],
      format: int,
      log: true,
      note: "log scale; 0 draws no bar",
    }),
  );
  charts.push(
    barChart({
      title: "Translations per DMA (per 4 KiB piece)",
      categories: cats,
      series: [
        { name: "GPU MMU (GGTT)", values: col((r) => r.translations.gpuMmuPerDma) },
        { name: "IOMMU (IOTLB or walk)", values: col((r) => r.translations.iommuPerDma) },
        { name: "pre-translated (ATC)", values: col((r) => r.translations.preTranslatedPerDma) },
      ],
      format: (v) => v.toFixed(2),
    }),
  );
  charts.push(
    barChart({
      title: "Translation cache hit rates",
      categories: cats,
      series: [
        { name: "IOTLB", values: col((r) => 100 * r.iotlbHitRate) },
        { name: "GPU ATC", values: col((r) => 100 * r.atcHitRate) },
      ],
      format: (v) => `${v.toFixed(0)}%`,
      max: 100,
      note: "n/a: no such cache (no IOMMU, no ATS)",
    }),
  );
  charts.push(
    barChart({
      title: "DMA address space in use at the end of the workload",
      categories: cats,
      series: [{ name: "IOVA space", values: col((r) => r.iovaSpaceBytes) }],
      format: formatSize,
      log: true,
      logBase: 1024,
      note: "log scale: per-VM ranges reserve each VM's whole guest-physical span",
    }),
  );
  charts.push(
    barChart({
      title: "IOMMU calls during the workload",
      categories: cats,
      series: [
        { name: "iommu_map", values: col((r) => r.counts.iommuMapCalls) },
        { name: "iommu_unmap", values: col((r) => r.counts.iommuUnmapCalls) },
        { name: "IOTLB inval", values: col((r) => r.counts.iotlbInvalidations) },
        { name: "ATC inval", values: col((r) => r.counts.atcInvalidations) },
      ],
      format: int,
    }),
  );
  // Modelled chain time by operation: the five costliest keys over all designs, the rest as "other".
  const totals = new Map<string, number>();
  for (const r of ran) for (const it of r.priced.items) totals.set(it.key, (totals.get(it.key) ?? 0) + it.ns);
  const top = [...totals.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 5)
    .map(([k]) => k);
  const series: Series[] = top.map((k) => ({
    name: shortName(k),
    values: ran.map((r) => (r.priced.items.find((i) => i.key === k)?.ns ?? 0) / 1e6),
  }));
  series.push({
    name: "other",
    values: ran.map((r) => r.priced.items.filter((i) => !top.includes(i.key)).reduce((s, i) => s + i.ns, 0) / 1e6),
  });
  charts.push(
    barChart({
      title: "Modelled time of the DMA chain, by operation (ms)",
      categories: cats,
      series,
      format: (v) => `${v.toFixed(2)}`,
      stacked: true,
      note: "engine time (the same workload in every design) is not in this chart",
    }),
  );
  const tableRows = c.results
    .map((r) =>
      r.refused !== undefined
        ? `<tr><td>${r.design.n} ${esc(r.design.id)}</td><td colspan="9">refused: ${esc(r.refused)}</td></tr>`
        : `<tr><td>${r.design.n} ${esc(r.design.id)}</td><td>${esc(verdictWord(r))}</td><td>${r.verdict.violations}</td><td>${r.verdict.clashes}</td><td>${r.translations.iommuPerDma.toFixed(2)}</td><td>${Number.isNaN(r.iotlbHitRate) ? "-" : `${(100 * r.iotlbHitRate).toFixed(1)}%`}</td><td>${Number.isNaN(r.atcHitRate) ? "-" : `${(100 * r.atcHitRate).toFixed(1)}%`}</td><td>${formatSize(r.iovaSpaceBytes)}</td><td>${r.counts.pinPages}</td><td>${formatTime(Math.round(r.modelledNs))}</td></tr>`,
    )
    .join("\n");
  const costRows = COST_TABLE.map(
    (e) =>
      `<tr><td><code>${e.key}</code></td><td>${esc(String(c.costs[e.key]))} ns / ${esc(e.per)}</td><td>${esc(e.what)}</td><td>${esc(e.source)}</td></tr>`,
  ).join("\n");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vgpu compare: ${esc(c.scenario)}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; } h3 { font-size: 16px; margin: 0 0 6px; }
.sub { color: #555; margin-top: 0; }
.charts { display: grid; grid-template-columns: repeat(2, 1fr); gap: 12px; }
.charts svg { background: #fafafa; border: 1px solid #e3e3e3; border-radius: 6px; width: 100%; height: auto; }
.ct { font: bold 13px system-ui, sans-serif; fill: #222; } .tick, .val, .leg, .note { font: 10px system-ui, sans-serif; fill: #555; }
.cat { font: 11px system-ui, sans-serif; fill: #222; } .grid { stroke: #e6e6e6; } .axis { stroke: #888; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #e3e3e3; padding: 4px 8px; text-align: left; vertical-align: top; }
table.small { font-size: 12px; } code { font: 12px ui-monospace, monospace; }
.cards { display: grid; grid-template-columns: repeat(2, 1fr); gap: 12px; }
.card { border: 1px solid #ddd; border-left: 6px solid #999; border-radius: 6px; padding: 10px 14px; background: #fff; }
.card.ok { border-left-color: #5aa469; } .card.warn { border-left-color: #c9a227; } .card.bad { border-left-color: #b0413e; } .card.refused { border-left-color: #999; }
.badge { font-size: 11px; background: #eee; border-radius: 10px; padding: 2px 8px; margin-left: 6px; vertical-align: middle; }
blockquote { margin: 6px 0; padding-left: 10px; border-left: 3px solid #ddd; color: #444; font-style: italic; }
.chain { font: 12px ui-monospace, monospace; color: #333; } .err { color: #b0413e; }
</style>
</head>
<body>
<h1>The seed thread's DMA designs, side by side</h1>
<p class="sub">Scenario <b>${esc(c.scenario)}</b>, seed ${c.seed}: the same VMs, workloads, hostile guest and memory unplug under each design
(docs/designs.md). Per DMA = per 4 KiB piece of a GPU DMA. Times are modelled: the operations each run made, priced by the cost
model below (docs/cost-model.md), plus the engines' busy time.</p>
<table>
<tr><th>design</th><th>verdict</th><th>violations</th><th>clashes</th><th>IOMMU/DMA</th><th>IOTLB hit</th><th>ATC hit</th><th>IOVA space</th><th>pages pinned</th><th>modelled time</th></tr>
${tableRows}
</table>
<h2>Charts</h2>
<div class="charts">
${charts.join("\n")}
</div>
<h2>Each design</h2>
<div class="cards">
${c.results.map(card).join("\n")}
</div>
${
  experiments !== undefined
    ? `<h2>Cost-model experiments</h2>
<p class="sub">The same structures, priced by the same cost model (docs/cost-model.md; asserted by test/compare-costs.test.ts).</p>
<div class="charts">
${experimentCharts(experiments).join("\n")}
</div>`
    : ""
}
<h2>Cost model</h2>
<table class="small">
<tr><th>key</th><th>value</th><th>what</th><th>source of the default</th></tr>
${costRows}
</table>
</body>
</html>
`;
}
