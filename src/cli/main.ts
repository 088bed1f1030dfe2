/**
 * The `vgpu` command line. Each subcommand lives in its own module under src/cli/commands and is registered here.
 *
 * Start-up is part of the interface: `vgpu --version` loads nothing, and an mdevctl command loads commander, its
 * own module and the client side only (no model, no zod: commands/quick.ts), so they start within 2x the time of
 * `node -e 0` (BENCHMARKS.md, "Start-up"). The scenario and serving commands (`demo`, `run`, `compare`, `explain`,
 * `serve`, and any other name, help included) are imported only when the command line names one of them.
 *
 * Errors, one format everywhere: "vgpu: ERRNO (text): what to do" on stderr, exit status 2 for a usage error and 1
 * for any other; never a stack trace (commands/common.ts, `reportError`).
 */
import { VERSION } from "./version.ts";

// `vgpu list | head`: a reader that goes away is not an error.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

/** The scenario and serving commands; each module is imported only when needed. */
async function registerTheRest(program: import("commander").Command): Promise<void> {
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

async function main(args: readonly string[]): Promise<void> {
  const [{ Command }, { configureCommandOutput, processIo, reportError }, { QUICK_COMMANDS }] = await Promise.all([
    import("commander"),
    import("./commands/common.ts"),
    import("./commands/quick.ts"),
  ]);
  const program = configureCommandOutput(new Command().name("vgpu"), processIo)
    .description("VFIO mediated-device passthrough for virtual GPUs: a deterministic host model and a vfio-user device")
    .version(`vgpu ${VERSION}`, "-V, --version", "print the version");
  try {
    const first = args.find((a) => !a.startsWith("-"));
    const quick = first === undefined ? undefined : QUICK_COMMANDS.get(first);
    if (quick !== undefined) await quick(program, processIo);
    else {
      (await import("./commands/index.ts")).registerMdevCommands(program, processIo);
      if (first !== "host") await registerTheRest(program);
    }
    await program.parseAsync(["node", "vgpu", ...args]);
  } catch (e) {
    process.exitCode = reportError(e, processIo);
  }
}

const args = process.argv.slice(2);
// The version alone needs nothing else loaded.
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) process.stdout.write(`vgpu ${VERSION}\n`);
else await main(args);
