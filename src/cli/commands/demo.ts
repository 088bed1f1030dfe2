/**
 * `vgpu demo`: the main command. Runs the default scenario (scenarios/demo.json) on a model host and tells its story
 * top to bottom: one host with a GVT-g-like GPU; three VMs with different vGPU types running copy and fill workloads
 * at once while the scheduler shares the engines by weight; a hostile guest whose attacks are all rejected or ignored;
 * a VM whose VMM unplugs memory its vGPU has pinned (type1 makes the vendor driver unpin first); a second GPU
 * assigned whole to a VM for contrast (type1 pins all of its RAM); the translation chain of one access layer by layer
 * (GMA -> GPA -> HVA -> HPA, GFN -> IOVA, GMA -> IOVA -> HPA) and that the layers agree; the per-VM and per-vGPU
 * figures; the isolation invariant checked on every DMA (0 violations); and a teardown that leaves nothing.
 *
 * Deterministic (virtual clock, seeded choices): the output is golden-tested. `--trace FILE` writes every trace event
 * as JSON lines; `--json` prints the report for tools; `--seed N` changes every random choice.
 */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { type CliIo, configureCommandOutput, processIo } from "./common.ts";
import { runAndPrint, seedOption } from "./run.ts";

/** The default scenario, shipped with the package. */
export const DEMO_SCENARIO = new URL("../../../scenarios/demo.json", import.meta.url);

export interface DemoOptions {
  readonly seed?: string;
  readonly json?: boolean;
  readonly trace?: string;
  readonly perfetto?: string;
}

/** Runs the demo, printing to `io`; returns the exit code. */
export async function runDemo(opts: DemoOptions, io: CliIo): Promise<number> {
  seedOption(opts.seed);
  const { parseScenario } = await import("../../scenario/index.ts");
  const scenario = parseScenario(JSON.parse(readFileSync(DEMO_SCENARIO, "utf8")), "scenarios/demo.json");
  const header = [
    "vgpu demo: VFIO mediated-device passthrough for virtual GPUs, on a deterministic model host",
    "",
    "The chain every guest DMA follows (the seed's design):",
    "  guest driver writes a GTT entry     GMA -> GPA               (a trapped write into its vGPU's BAR0)",
    "  vendor driver pins the page         GPA -> HVA -> HPA        (vfio_pin_pages: type1's MAP_DMA + the page table)",
    "  ... and maps it for the GPU         HPA -> IOVA              (dma_map_page in the host driver's IOVA space)",
    "  ... and writes the shadow entry     GMA -> IOVA              (the physical GGTT)",
    "  the GPU's DMA                       IOVA -> HPA              (the system IOMMU: IOTLB or page walk)",
    "",
  ];
  return runAndPrint(scenario, opts, io, header);
}

export function registerDemo(program: Command, io: CliIo = processIo): void {
  const cmd = program
    .command("demo")
    .description(
      "run the default scenario: vGPUs sharing a GPU, a hostile guest, memory unplugged while pinned, a whole GPU, " +
        "the translation chain",
    )
    .option("--seed <n>", "seed of every random choice (default 1)")
    .option("--json", "print the report as JSON")
    .option("--trace <file>", "write every trace event, one JSON object per line")
    .option("--perfetto <file>", "write the trace as Chrome Trace Event JSON (open it in ui.perfetto.dev)");
  configureCommandOutput(cmd, io).action(async (opts: DemoOptions) => {
    process.exitCode = await runDemo(opts, io);
  });
}
