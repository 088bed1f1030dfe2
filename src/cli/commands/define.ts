/**
 * `vgpu define`: writes a persistent definition (`<root>/mdevctl.d/<parent>/<uuid>`). `-u` alone defines a running
 * device with its parent, type and attributes; without `-u` a UUID is generated and printed. `--jsonfile` supplies
 * type, start mode and attributes. The parent and type must exist on the host unless `-f` is given; with no host
 * running the definition is written without those checks, and a warning says so. A type may be named without its
 * driver prefix (`GVTg_V5_4` for `i915-GVTg_V5_4`). Callout scripts may veto it (`-f` overrides).
 */
import { type Command, Option } from "commander";
import {
  type CliIo,
  callHost,
  configureCommandOutput,
  type RootOption,
  readJsonFile,
  typeOption,
  usageError,
  uuidOption,
  withRoot,
} from "./common.ts";

interface DefineOptions extends RootOption {
  readonly uuid?: string;
  readonly parent?: string;
  readonly type?: string;
  readonly auto?: boolean;
  readonly jsonfile?: string;
  readonly force?: boolean;
}

export async function runDefine(opts: DefineOptions, io: CliIo): Promise<void> {
  if (opts.uuid === undefined && opts.parent === undefined) {
    throw usageError("pass -u UUID (a running device) or -p PARENT -t TYPE");
  }
  const uuid = uuidOption(opts.uuid);
  const type = typeOption(opts.type);
  const definition = opts.jsonfile !== undefined ? await readJsonFile(opts.jsonfile, io) : undefined;
  const r = await callHost(
    io,
    opts,
    "define",
    {
      ...(uuid !== undefined ? { uuid } : {}),
      ...(opts.parent !== undefined ? { parent: opts.parent } : {}),
      ...(type !== undefined ? { type } : {}),
      auto: opts.auto === true,
      ...(definition ? { definition } : {}),
      force: opts.force === true,
    },
    { offline: true },
  );
  if (r.generated) io.out(`${r.uuid}\n`);
}

export function registerDefine(program: Command, io: CliIo): void {
  const cmd = program
    .command("define")
    .description("define a persistent mediated device")
    .option("-u, --uuid <uuid>", "UUID of the device (generated and printed if omitted)")
    .option("-p, --parent <parent>", "parent device")
    .option("-t, --type <type>", "mdev type (see `vgpu types`)")
    .option("-a, --auto", "start the device automatically when its parent appears")
    .addOption(
      new Option("--jsonfile <file>", "type, start mode and attributes from a JSON file").conflicts(["type", "auto"]),
    )
    .option(
      "-f, --force",
      "skip the checks against the running host (a parent that is not there yet) and go ahead despite a callout",
    );
  withRoot(configureCommandOutput(cmd, io)).action((opts: DefineOptions) => runDefine(opts, io));
}
