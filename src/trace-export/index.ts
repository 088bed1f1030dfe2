/**
 * trace-export: the model's trace records as Chrome Trace Event JSON, which Perfetto's UI and chrome://tracing open
 * (chrome-trace.ts: tracks per VM, vGPU, engine and IOMMU, slices, instants, counters, flows), and the stages of one
 * guest access found in the records for its flow arrows (chain.ts). Depends only on core.
 */
export * from "./chain.ts";
export * from "./chrome-trace.ts";
