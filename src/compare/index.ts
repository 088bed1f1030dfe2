/**
 * compare: the seed thread's debate, runnable. The six DMA designs (designs.ts) run one scenario each on a fresh
 * host (run.ts), the vendor driver mapping guest pages through each design's mapper (mappers.ts); the cost-model
 * experiments (experiments.ts); and the comparison's reports (report-text.ts: the table and JSON; report-html.ts: a
 * self-contained page with SVG charts). Depends on scenario and every layer below it.
 */
export * from "./designs.ts";
export * from "./experiments.ts";
export * from "./mappers.ts";
export * from "./report-html.ts";
export * from "./report-text.ts";
export * from "./run.ts";
