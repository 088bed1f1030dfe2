/**
 * compare: the seed thread's debate, runnable. The six DMA designs (designs.ts) run one scenario each on a fresh
 * host (run.ts), the vendor driver mapping guest pages through each design's mapper (mappers.ts); the cost-model
 * experiments (experiments.ts); and the comparison's reports (report-text.ts, report-html.ts). Depends on scenario
 * and every layer below it.
 */
export * from "./designs.ts";
export * from "./mappers.ts";
export * from "./run.ts";
