/** `vgpu stop -u UUID`: removes a running device (its definition, if any, stays). */
import type { Command } from "commander";
import { type CliIo, callHost, configureCommandOutput, type RootOption, uuidOption, withRoot } from "./common.ts";

interface StopOptions extends RootOption {
  readonly uuid: string;
  readonly force?: boolean;
}

export async function runStop(opts: StopOptions, io: CliIo): Promise<void> {
  await callHost(io, opts, "stop", { uuid: uuidOption(opts.uuid)!, force: opts.force === true });
}

export function registerStop(program: Command, io: CliIo): void {
  const cmd = program
    .command("stop")
    .description("stop a running mediated device")
    .requiredOption("-u, --uuid <uuid>", "UUID of the device")
    .option("-f, --force", "go ahead despite a callout script's veto");
  withRoot(configureCommandOutput(cmd, io)).action((opts: StopOptions) => runStop(opts, io));
}
