/**
 * The `vgpu` command line. Each subcommand lives in its own module under src/cli/commands and is registered here.
 * Errors that are KernelErrors print as "vgpu: EINVAL (Invalid argument): <sentence>" and exit 1; anything else is a
 * bug and prints its stack. Commander's own usage errors print as "vgpu: <message>" and exit 1.
 */
import { Command } from "commander";
import { isKernelError } from "../core/index.ts";
import { configureCommandOutput } from "./commands/common.ts";
import { registerDemo } from "./commands/demo.ts";
import { registerExplain } from "./commands/explain.ts";
import { processIo, registerMdevCommands } from "./commands/index.ts";
import { registerRun } from "./commands/run.ts";
import { registerServe } from "./commands/serve.ts";

// `vgpu list | head`: a reader that goes away is not an error.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

const program = new Command();
program
  .name("vgpu")
  .description("VFIO mediated-device passthrough for virtual GPUs: a deterministic host model and a vfio-user device")
  .version("0.1.0");
configureCommandOutput(program, processIo);

registerDemo(program);
registerRun(program);
registerExplain(program);
registerMdevCommands(program, processIo);
registerServe(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (isKernelError(e)) {
    process.stderr.write(`vgpu: ${e.describe()}\n`);
    process.exitCode = 1;
  } else {
    throw e;
  }
}
