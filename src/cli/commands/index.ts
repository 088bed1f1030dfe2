/**
 * The mdevctl-compatible commands and the host daemon command, registered on a commander program, plus `runCli`,
 * which runs them in process with captured output (what the golden-file tests use; `vgpu` itself goes through
 * src/cli/main.ts). The client commands load only the protocol and the formatting code, never the model, so they
 * start quickly.
 */
import { Command } from "commander";
import { type CliIo, configureCommandOutput, reportError, withRoot } from "./common.ts";
import { registerDefine } from "./define.ts";
import type { HostOptions } from "./host.ts";
import { registerList } from "./list.ts";
import { registerModify } from "./modify.ts";
import { registerStart } from "./start.ts";
import { registerStartParent } from "./start-parent.ts";
import { registerStop } from "./stop.ts";
import { registerTypes } from "./types.ts";
import { registerUndefine } from "./undefine.ts";

export type { CliIo } from "./common.ts";
export { processIo, reportError } from "./common.ts";

/** `vgpu host`; its implementation (the whole model) is loaded only when it runs. */
function registerHost(program: Command, io: CliIo): void {
  const cmd = program
    .command("host")
    .description("run a model host and serve the mdev control API on <root>/vgpu.sock (stop with SIGTERM or Ctrl-C)")
    .option(
      "--config <file>",
      "host config (JSON: memory, iommu, seed, parents); default: 16 GiB, IOMMU on, a GVT-g-like GPU at " +
        "0000:00:02.0 (types i915-GVTg_V5_*) and the mtty sample parent with 24 ports",
    )
    .option(
      "--poll-max-us <us>",
      "poll each served device's client socket up to this long before sleeping, adaptively; yields to any other " +
        "work of the daemon (default 200; 0: off)",
    );
  withRoot(configureCommandOutput(cmd, io)).action(async (opts: HostOptions) => {
    const { runHost } = await import("./host.ts");
    await runHost(opts, io);
  });
}

/** Adds `host`, `types`, `list`, `define`, `undefine`, `modify`, `start`, `stop` and `start-parent-mdevs`. */
export function registerMdevCommands(program: Command, io: CliIo): void {
  registerHost(program, io);
  registerTypes(program, io);
  registerList(program, io);
  registerDefine(program, io);
  registerUndefine(program, io);
  registerModify(program, io);
  registerStart(program, io);
  registerStop(program, io);
  registerStartParent(program, io);
}

/**
 * Runs one mdevctl-style command line (`argv` without "node vgpu", e.g. ["list", "-d"]) in process and returns
 * its exit code. Output goes to `io`; errors are reported as `vgpu` reports them.
 */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  const program = configureCommandOutput(new Command().name("vgpu"), io);
  registerMdevCommands(program, io);
  try {
    await program.parseAsync([...argv], { from: "user" });
    return 0;
  } catch (e) {
    return reportError(e, io);
  }
}
