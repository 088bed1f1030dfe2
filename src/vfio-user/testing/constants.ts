/** Names the test server (server-child.ts) and its in-process twin (harness.ts) give their devices. */
export const CHILD_MTTY_UUID = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
export const CHILD_DMA_DEVICE = "dma-test-0";
