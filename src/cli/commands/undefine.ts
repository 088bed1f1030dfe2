/**
 * `vgpu undefine -u UUID [-p PARENT]`: removes the definition(s) of a UUID, under every parent unless `-p` is given.
 * Running devices are not touched. Works on the files alone when no host runs.
 */
import type { Command } from "commander";
import { type CliIo, callHost, configureCommandOutput, type RootOption, uuidOption, withRoot } from "./common.ts";

interface UndefineOptions extends RootOption {
  readonly uuid: string;
  readonly parent?: string;
  readonly force?: boolean;
}

export async function runUndefine(opts: UndefineOptions, io: CliIo): Promise<void> {
  await callHost(
    io,
    opts,
    "undefine",
    {
      uuid: uuidOption(opts.uuid)!,
      ...(opts.parent !== undefined ? { parent: opts.parent } : {}),
      force: opts.force === true,
    },
    { offline: true },
  );
}

export function registerUndefine(program: Command, io: CliIo): void {
  const cmd = program
    .command("undefine")
    .description("remove the definition of a mediated device (a running device keeps running)")
    .requiredOption("-u, --uuid <uuid>", "UUID of the device")
    .option("-p, --parent <parent>", "only the definition under this parent")
    .option("-f, --force", "go ahead despite a callout script's veto");
  withRoot(configureCommandOutput(cmd, io)).action((opts: UndefineOptions) => runUndefine(opts, io));
}
