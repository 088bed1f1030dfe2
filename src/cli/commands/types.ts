/**
 * `vgpu types [-p PARENT] [--dumpjson]`: the mdev types each parent offers and how many more fit, as mdevctl prints
 * them (text, or JSON with `--dumpjson`). A type that cannot fit shows why next to its count.
 */
import type { Command } from "commander";
import { formatTypesJson, formatTypesText } from "../mdevctl-text.ts";
import { type CliIo, callHost, configureCommandOutput, type RootOption, withRoot } from "./common.ts";

interface TypesOptions extends RootOption {
  readonly parent?: string;
  readonly dumpjson?: boolean;
}

export async function runTypes(opts: TypesOptions, io: CliIo): Promise<void> {
  const r = await callHost(io, opts, "types", opts.parent !== undefined ? { parent: opts.parent } : {});
  io.out(opts.dumpjson ? formatTypesJson(r.parents) : formatTypesText(r.parents));
}

export function registerTypes(program: Command, io: CliIo): void {
  const cmd = program
    .command("types")
    .description("list the mdev types offered by each parent device, with available instances")
    .option("-p, --parent <parent>", "only the types of this parent device")
    .option("--dumpjson", "print JSON (mdevctl's format)");
  withRoot(configureCommandOutput(cmd, io)).action((opts: TypesOptions) => runTypes(opts, io));
}
