/**
 * `lsmdev`: mdevctl's second executable, `list` under its own name (`lsmdev -d`, `lsmdev -u UUID --dumpjson`, ...),
 * with the same options, output and errors as `vgpu list`. bin/lsmdev.js runs it.
 */
import { Command } from "commander";
import { configureCommandOutput, processIo, reportError, withRoot } from "./commands/common.ts";
import { listOptions, runList } from "./commands/list.ts";
import { VERSION } from "./version.ts";

process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(0);
  throw e;
});

const program = withRoot(
  listOptions(
    configureCommandOutput(new Command().name("lsmdev"), processIo)
      .description("list running mediated devices, or with -d the defined ones (vgpu list)")
      .version(`lsmdev (vgpu) ${VERSION}`, "-V, --version", "print the version"),
  ),
).action((opts) => runList(opts, processIo));

try {
  await program.parseAsync(process.argv);
} catch (e) {
  process.exitCode = reportError(e, processIo);
}
