/**
 * `vgpu start-parent-mdevs PARENT`: starts every `start: auto` definition of PARENT that is not running, as udev
 * runs mdevctl's command when a parent device appears (`vgpu host` does the same for every parent at start-up).
 * As in mdevctl, a definition that fails to start is a warning naming it and its reason, and the others still
 * start; the exit status is 0. Needs a running host.
 */
import type { Command } from "commander";
import { type CliIo, callHost, configureCommandOutput, type RootOption, withRoot } from "./common.ts";

export async function runStartParent(parent: string, opts: RootOption, io: CliIo): Promise<void> {
  const r = await callHost(io, opts, "startParent", { parent });
  for (const f of r.failed) io.err(`vgpu: warning: auto-start of ${f.uuid} on ${r.parent} failed: ${f.message}\n`);
}

export function registerStartParent(program: Command, io: CliIo): void {
  const cmd = program
    .command("start-parent-mdevs")
    .description("start the parent's devices defined with start: auto (what udev calls when a parent appears)")
    .argument("<parent>", "parent device, e.g. 0000:00:02.0 or mtty");
  withRoot(configureCommandOutput(cmd, io)).action((parent: string, opts: RootOption) =>
    runStartParent(parent, opts, io),
  );
}
