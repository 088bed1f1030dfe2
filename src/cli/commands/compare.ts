/**
 * `vgpu compare [FILE]`: runs a scenario (default scenarios/compare.json) under each DMA design of the seed thread
 * (src/compare; docs/designs.md) and prints the comparison: a table and each design's verdict for people, `--json`
 * for tools, `--html FILE` a self-contained page with charts, `--perfetto FILE` the runs' traces (one process per
 * design). `--design ID` (repeatable or comma-separated) picks designs; the file's `designs` section otherwise.
 *
 * A design the scenario's host cannot run is refused before anything runs, with its reason on stderr, and the
 * command exits 1 after running the others. Cost overrides come from the file's `costs` section (validated with the
 * JSON path of the field).
 */
import { writeFileSync } from "node:fs";
import { resolve } from "node:path";
import type { Command } from "commander";
import { Errno, KernelError } from "../../core/index.ts";
import type { ScenarioRun } from "../../scenario/index.ts";
import { type CliIo, configureCommandOutput, processIo } from "./common.ts";
import { loadScenario, seedOption } from "./run.ts";

/** The comparison's default workload, shipped with the package. */
export const COMPARE_SCENARIO = new URL("../../../scenarios/compare.json", import.meta.url);

export interface CompareCliOptions {
  readonly seed?: string;
  readonly json?: boolean;
  readonly html?: string;
  readonly perfetto?: string;
  readonly design?: readonly string[];
  readonly quiet?: boolean;
}

export async function runCompareCommand(file: string | undefined, opts: CompareCliOptions, io: CliIo): Promise<number> {
  const seed = seedOption(opts.seed);
  const [{ DESIGN_IDS }, cmp] = await Promise.all([
    import("../../scenario/index.ts"),
    import("../../compare/index.ts"),
  ]);
  const scenario = await loadScenario(file ?? COMPARE_SCENARIO.pathname, io);
  const wanted = (opts.design ?? []).flatMap((d) => d.split(",")).filter((d) => d !== "");
  for (const d of wanted) {
    if (!(DESIGN_IDS as readonly string[]).includes(d)) {
      throw new KernelError(Errno.EINVAL, `unknown design '${d}': expected one of ${DESIGN_IDS.join(", ")}`);
    }
  }
  const designs = wanted.length > 0 ? (wanted as (typeof DESIGN_IDS)[number][]) : (scenario.designs ?? DESIGN_IDS);
  const refused = cmp.refusals(scenario, designs);
  for (const r of refused)
    io.err(`vgpu: EINVAL (Invalid argument): design ${r.id} refused before the run: ${r.reason}\n`);
  const perfetto = opts.perfetto !== undefined ? await import("./perfetto.ts") : undefined;
  const collectors = new Map<string, InstanceType<NonNullable<typeof perfetto>["PerfettoCollector"]>>();
  const runs = new Map<string, ScenarioRun>();
  const result = cmp.runCompare(scenario, {
    designs,
    ...(seed !== undefined ? { seed } : {}),
    ...(perfetto !== undefined
      ? {
          trace: (id: string) => {
            const c = new perfetto.PerfettoCollector();
            collectors.set(id, c);
            return c.record;
          },
          onRun: (id: string, run) => {
            runs.set(id, run);
          },
        }
      : {}),
  });
  if (opts.json) io.out(`${cmp.compareJson(result)}\n`);
  else if (!opts.quiet) io.out(`${cmp.formatCompare(result).join("\n")}\n`);
  if (opts.html !== undefined) {
    writeFileSync(resolve(io.cwd, opts.html), cmp.compareHtml(result, cmp.runExperiments(result.costs)));
  }
  if (perfetto !== undefined && opts.perfetto !== undefined) {
    const { ChromeTraceWriter } = await import("../../trace-export/index.ts");
    const w = new ChromeTraceWriter();
    for (const r of result.results) {
      const c = collectors.get(r.design.id);
      if (c !== undefined) perfetto.addRun(w, `${r.design.n} ${r.design.id}`, c, runs.get(r.design.id));
    }
    perfetto.writePerfetto(opts.perfetto, io, w);
  }
  return refused.length > 0 ? 1 : 0;
}

export function registerCompare(program: Command, io: CliIo = processIo): void {
  const cmd = program
    .command("compare")
    .description(
      "run one workload under each DMA design of the seed thread (no IOMMU, identity, GPA, per-VM IOVA, " +
        "dma_map_page, ATS) and compare isolation, translations, caches, IOVA space, calls and modelled time",
    )
    .argument("[file]", "scenario file (default: scenarios/compare.json)")
    .option("--design <ids...>", "designs to run (no-iommu, identity, gpa, per-vm-iova, dma-api, ats)")
    .option("--seed <n>", "seed of every random choice (default: the file's, else 1)")
    .option("--json", "print the comparison as JSON")
    .option("--html <file>", "write a self-contained HTML page with the comparison's and the cost model's charts")
    .option("--perfetto <file>", "write every design's trace as Chrome Trace Event JSON (ui.perfetto.dev)")
    .option("-q, --quiet", "print nothing but errors");
  configureCommandOutput(cmd, io).action(async (file: string | undefined, opts: CompareCliOptions) => {
    process.exitCode = await runCompareCommand(file, opts, io);
  });
}
