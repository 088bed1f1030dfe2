/**
 * The cost of `vgpu compare` (src/compare): the six designs on the default workload (scenarios/compare.json), each on
 * a fresh host, in wall time; beside the same scenario run once by the plain runner under the default design (what
 * `vgpu run scenarios/compare.json` costs) in the same run, so the figure reads as "N runs' worth". Also with the
 * Perfetto trace collected (every design's records kept for the export), and the report builders (text, JSON, HTML).
 * Target: the whole comparison in under a minute on this machine (issue 15).
 */

import { addRun, PerfettoCollector } from "../src/cli/commands/perfetto.ts";
import { runCompare } from "../src/compare/index.ts";
import { compareHtml } from "../src/compare/report-html.ts";
import { compareJson, formatCompare } from "../src/compare/report-text.ts";
import { loadScenarioFile, runScenario } from "../src/scenario/index.ts";
import { ChromeTraceWriter } from "../src/trace-export/index.ts";
import { record, timeMs } from "./lib.ts";

const SUITE = "compare";

export async function run(): Promise<void> {
  const scenario = loadScenarioFile(new URL("../scenarios/compare.json", import.meta.url).pathname);
  let result = runCompare(scenario); // warms the JIT for both figures
  const single = timeMs(() => void runScenario(scenario), 3);
  const all = timeMs(() => {
    result = runCompare(scenario);
  }, 2);
  record({
    suite: SUITE,
    name: "vgpu compare: 6 designs on scenarios/compare.json",
    value: all,
    unit: "ms",
    note: `${(all / single).toFixed(1)}x one plain run of the scenario (${single.toFixed(0)} ms); target < 60 s`,
    met: all < 60_000,
  });
  const traced = timeMs(() => {
    const collectors = new Map<string, PerfettoCollector>();
    const r = runCompare(scenario, {
      trace: (id) => {
        const c = new PerfettoCollector();
        collectors.set(id, c);
        return c.record;
      },
    });
    const w = new ChromeTraceWriter();
    for (const d of r.results) addRun(w, d.design.id, collectors.get(d.design.id)!);
    JSON.stringify(w.toJSON());
  }, 1);
  record({
    suite: SUITE,
    name: "vgpu compare --perfetto (records kept, trace written)",
    value: traced,
    unit: "ms",
    note: `${(traced / all).toFixed(2)}x without the trace`,
  });
  const reports = timeMs(() => {
    formatCompare(result);
    compareJson(result);
    compareHtml(result);
  }, 3);
  record({ suite: SUITE, name: "reports: table + JSON + HTML page", value: reports, unit: "ms" });
}
