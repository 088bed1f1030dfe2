/**
 * `vgpu run FILE`: runs a scenario file (docs/scenarios.md) on an in-process model host and prints its report: the
 * text summary for people, or `--json` for tools; `--trace FILE` writes the trace as JSON lines (one event per line,
 * byte-identical for the same file and seed). A run that failed (an errno at a step, an unmet expectation, an
 * isolation violation, a teardown that left something) exits 1, with the errno line on stderr. While a long run goes,
 * a progress line is drawn on stderr when stderr is a terminal.
 *
 * Also the pieces `vgpu demo` and `vgpu explain` share: loading a scenario, the progress line, the trace file. The
 * model is imported only when a command runs, so the other `vgpu` commands start without it.
 */
import { closeSync, openSync, readFileSync, statSync, writeSync } from "node:fs";
import { relative, resolve } from "node:path";
import type { Command } from "commander";
import { Errno, KernelError, strerror } from "../../core/index.ts";
import type { Scenario, ScenarioReport } from "../../scenario/index.ts";
import { jsonErrorOffset, lineColumn } from "../mdevctl-text.ts";
import { type CliIo, configureCommandOutput, processIo } from "./common.ts";

export interface RunOptions {
  readonly seed?: string;
  readonly json?: boolean;
  readonly trace?: string;
  /** Write Chrome Trace Event JSON for Perfetto here (perfetto.ts). */
  readonly perfetto?: string;
  readonly quiet?: boolean;
}

/** A `--seed` value: an integer from 0 to 2^32 - 1 (EINVAL otherwise). */
export function seedOption(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) > 0xffff_ffff) {
    throw new KernelError(Errno.EINVAL, `invalid --seed '${text}': expected an integer from 0 to 4294967295`);
  }
  return Number(text);
}

/** Loads and validates a scenario file; messages name it as the user wrote it (relative to the working directory). */
export async function loadScenario(file: string, io: CliIo): Promise<Scenario> {
  const { loadScenarioFile } = await import("../../scenario/index.ts");
  const path = resolve(io.cwd, file);
  const shown = relative(io.cwd, path) || file;
  checkScenarioText(path, shown);
  try {
    return { ...loadScenarioFile(path), source: shown };
  } catch (e) {
    if (e instanceof Error) e.message = e.message.split(path).join(shown);
    throw e;
  }
}

/**
 * What the scenario loader would report less clearly: a folder given as the file (EISDIR), and JSON syntax errors
 * with their line and column, as definition files report them. A missing file is left to the loader (ENOENT).
 */
function checkScenarioText(path: string, shown: string): void {
  const st = statSync(path, { throwIfNoEntry: false });
  if (st === undefined) return;
  if (st.isDirectory()) {
    throw new KernelError(
      Errno.EISDIR,
      `cannot read scenario ${shown}: it is a folder; pass a scenario file such as scenarios/demo.json`,
    );
  }
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return; // the loader reports it
  }
  try {
    JSON.parse(text);
  } catch {
    const where = text.trim() === "" ? "the file is empty" : lineColumn(text, jsonErrorOffset(text));
    throw new KernelError(Errno.EINVAL, `invalid scenario ${shown}: not valid JSON (${where})`);
  }
}

/** The reasons a run did not hold up that `failures` does not already list (isolation, teardown). */
export function extraFailures(report: ScenarioReport): string[] {
  const out: string[] = [];
  if (report.isolation.violations > 0) {
    out.push(
      `isolation: ${report.isolation.violations} violation(s) of the isolation invariant (the first in isolation.samples)`,
    );
  }
  if (report.teardown !== null && !report.teardown.clean) {
    out.push(`teardown: not clean: ${report.teardown.problems.join("; ")}`);
  }
  return out;
}

/** A progress line on stderr ("[#####.....] 12/40 steps  t=123.456 ms"), only when stderr is a terminal. */
export function progressLine(
  io: CliIo,
  isTty: boolean,
): {
  update: (done: number, total: number, timeNs: number) => void;
  clear: () => void;
} {
  if (!isTty) return { update: () => {}, clear: () => {} };
  let shown = false;
  let last = -1;
  return {
    update: (done, total, timeNs) => {
      const width = 30;
      const filled = total === 0 ? width : Math.round((done / total) * width);
      if (filled === last && done !== total) return;
      last = filled;
      shown = true;
      io.err(
        `\r[${"#".repeat(filled)}${".".repeat(width - filled)}] ${done}/${total} steps  t=${(timeNs / 1e6).toFixed(3)} ms`,
      );
    },
    clear: () => {
      if (shown) io.err(`\r${" ".repeat(70)}\r`);
    },
  };
}

/** A JSON-lines trace file writer (synchronous appends: the model runs synchronously). */
export function traceFile(path: string, io: CliIo): { line: (l: string) => void; close: () => void } {
  let fd: number;
  try {
    fd = openSync(resolve(io.cwd, path), "w");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? "EIO";
    const errno = Object.hasOwn(Errno, code) ? (Errno as Readonly<Record<string, Errno>>)[code]! : Errno.EIO;
    throw new KernelError(
      errno,
      `cannot write the trace to ${path}: ${strerror(errno)}; pass --trace a file in a folder you can write`,
    );
  }
  let buf = "";
  return {
    line: (l) => {
      buf += `${l}\n`;
      if (buf.length > 1 << 20) {
        writeSync(fd, buf);
        buf = "";
      }
    },
    close: () => {
      if (buf.length > 0) writeSync(fd, buf);
      closeSync(fd);
    },
  };
}

/** Runs `scenario` and prints its report; returns the exit code. */
export async function runAndPrint(
  scenario: Scenario,
  opts: RunOptions,
  io: CliIo,
  header: readonly string[] = [],
): Promise<number> {
  const s = await import("../../scenario/index.ts");
  const seed = seedOption(opts.seed);
  const progress = progressLine(io, io === processIo && process.stderr.isTTY === true && opts.json !== true);
  const trace = opts.trace !== undefined ? traceFile(opts.trace, io) : undefined;
  const perfetto = opts.perfetto !== undefined ? await import("./perfetto.ts") : undefined;
  const collector = perfetto !== undefined ? new perfetto.PerfettoCollector() : undefined;
  const traceLine =
    trace !== undefined && collector !== undefined
      ? (l: string) => {
          trace.line(l);
          collector.line(l);
        }
      : (trace?.line ?? collector?.line);
  let reported: ReturnType<typeof s.runWithReport>;
  try {
    reported = s.runWithReport(scenario, {
      ...(seed !== undefined ? { seed } : {}),
      ...(traceLine !== undefined ? { traceLine } : {}),
      progress: progress.update,
    });
  } finally {
    progress.clear();
    trace?.close();
  }
  const { report } = reported;
  if (perfetto !== undefined && collector !== undefined && opts.perfetto !== undefined) {
    const { ChromeTraceWriter } = await import("../../trace-export/index.ts");
    const w = new ChromeTraceWriter();
    perfetto.addRun(w, scenario.name, collector, reported.run);
    perfetto.writePerfetto(opts.perfetto, io, w);
  }
  // `failures` lists every reason the run did not hold up, isolation and teardown included, for tools.
  const extra = extraFailures(report);
  const shown = extra.length > 0 ? { ...report, failures: [...report.failures, ...extra] } : report;
  if (opts.json) io.out(`${s.reportJson(shown)}\n`);
  else if (!opts.quiet) io.out(`${[...header, ...s.formatReport(report)].join("\n")}\n`);
  if (report.error !== null) {
    const code = report.error.errno;
    // An own member only: a name such as "constructor" must not reach Object.prototype.
    const errno = Object.hasOwn(Errno, code) ? (Errno as Readonly<Record<string, number>>)[code]! : Errno.EIO;
    io.err(`vgpu: ${report.error.errno} (${strerror(errno)}): ${report.error.message}\n`);
  } else if (!report.ok) {
    const why = [
      report.isolation.violations > 0 ? `${report.isolation.violations} isolation violation(s)` : "",
      report.failures.length > 0 ? `${report.failures.length} unmet expectation(s)` : "",
      report.teardown !== null && !report.teardown.clean ? "a teardown that left something behind" : "",
    ].filter((x) => x !== "");
    io.err(`vgpu: the run did not hold up: ${why.join(", ")} (see the report)\n`);
  }
  return report.ok ? 0 : 1;
}

export function registerRun(program: Command, io: CliIo = processIo): void {
  const cmd = program
    .command("run")
    .description("run a scenario file on a model host and report per VM and vGPU (see docs/scenarios.md)")
    .argument("<file>", "scenario file (JSON; schema/scenario.schema.json)")
    .option("--seed <n>", "seed of every random choice (default: the file's, else 1)")
    .option("--json", "print the report as JSON")
    .option("--trace <file>", "write the trace, one JSON object per line")
    .option("--perfetto <file>", "write the trace as Chrome Trace Event JSON (open it in ui.perfetto.dev)")
    .option("-q, --quiet", "print nothing but errors (the exit code says how it went)");
  configureCommandOutput(cmd, io).action(async (file: string, opts: RunOptions) => {
    seedOption(opts.seed);
    const scenario = await loadScenario(file, io);
    process.exitCode = await runAndPrint(scenario, opts, io);
  });
}
