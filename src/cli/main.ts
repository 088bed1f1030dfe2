/**
 * The `vgpu` command line. Each subcommand lives in its own module under src/cli/commands and is registered here.
 *
 * Start-up is part of the interface: `vgpu --version` and the mdevctl commands load commander and the client side
 * only (no model, no zod), so they start in about 1.5x the time of `node -e 0` (BENCHMARKS.md, "Start-up"). The
 * scenario and serving commands (`demo`, `run`, `compare`, `explain`, `serve`, and any other name, help included) are imported
 * only when the command line names one of them.
 *
 * Errors, one format everywhere: "vgpu: ERRNO (text): what to do" on stderr, exit status 2 for a usage error and 1
 * for any other; never a stack trace (commands/common.ts, `reportError`).
 */
import { Command } from "commander";
import { configureCommandOutput, processIo, reportError } from "./commands/common.ts";
import { registerMdevCommands } from "./commands/index.ts";
import { VERSION } from "./version.ts";

// `vgpu list | head`: a reader that goes away is not an error.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

/** The commands registered without loading anything else (commands/index.ts). */
const QUICK = new Set([
  "host",
  "types",
  "list",
  "lsmdev",
  "define",
  "undefine",
  "modify",
  "start",
  "stop",
  "start-parent-mdevs",
]);

/** The scenario and serving commands; each module is imported only when needed. */
async function registerTheRest(program: Command): Promise<void> {
  const [demo, run, explain, serve, compare] = await Promise.all([
    import("./commands/demo.ts"),
    import("./commands/run.ts"),
    import("./commands/explain.ts"),
    import("./commands/serve.ts"),
    import("./commands/compare.ts"),
  ]);
  demo.registerDemo(program);
  run.registerRun(program);
  compare.registerCompare(program);
  explain.registerExplain(program);
  serve.registerServe(program);
}

const program = configureCommandOutput(new Command().name("vgpu"), processIo)
  .description("VFIO mediated-device passthrough for virtual GPUs: a deterministic host model and a vfio-user device")
  .version(`vgpu ${VERSION}`, "-V, --version", "print the version");

try {
  registerMdevCommands(program, processIo);
  const args = process.argv.slice(2);
  const first = args.find((a) => !a.startsWith("-"));
  const versionOnly = first === undefined && args.some((a) => a === "-V" || a === "--version");
  if (!versionOnly && (first === undefined || !QUICK.has(first))) await registerTheRest(program);
  await program.parseAsync(process.argv);
} catch (e) {
  process.exitCode = reportError(e, processIo);
}
