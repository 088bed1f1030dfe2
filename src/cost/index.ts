/**
 * cost: what the host model's operations cost. A `CostMeter` counts each operation of the DMA chain where it happens
 * (the host's IOMMU, IOVA allocator, DMA API and page pinning bump it); a `CostModel` prices the counts, with a
 * published default and its source for every figure (docs/cost-model.md), overridable per scenario. Depends only on
 * core.
 */
export * from "./meter.ts";
export * from "./model.ts";
