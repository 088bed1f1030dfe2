/**
 * `vgpu start`: starts a defined device (`-u`, with `-p` when the UUID is defined under several parents), or a
 * transient one (`-p -t`, or `-p --jsonfile`; a UUID is generated and printed when `-u` is omitted). The
 * definition's attributes are written to the device's sysfs attributes in order; if one fails, the device is
 * removed again.
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

interface StartOptions extends RootOption {
  readonly uuid?: string;
  readonly parent?: string;
  readonly type?: string;
  readonly jsonfile?: string;
  readonly force?: boolean;
}

export async function runStart(opts: StartOptions, io: CliIo): Promise<void> {
  if (opts.uuid === undefined && opts.parent === undefined) {
    throw usageError("pass -u UUID (a defined device) or -p PARENT -t TYPE");
  }
  const uuid = uuidOption(opts.uuid);
  const type = typeOption(opts.type);
  const definition = opts.jsonfile !== undefined ? await readJsonFile(opts.jsonfile, io) : undefined;
  const r = await callHost(io, opts, "start", {
    ...(uuid !== undefined ? { uuid } : {}),
    ...(opts.parent !== undefined ? { parent: opts.parent } : {}),
    ...(type !== undefined ? { type } : {}),
    ...(definition ? { definition } : {}),
    force: opts.force === true,
  });
  if (r.generated) io.out(`${r.uuid}\n`);
}

export function registerStart(program: Command, io: CliIo): void {
  const cmd = program
    .command("start")
    .description("start a mediated device")
    .option("-u, --uuid <uuid>", "UUID of the device (generated and printed if omitted with -p -t)")
    .option("-p, --parent <parent>", "parent device")
    .option("-t, --type <type>", "mdev type")
    .addOption(new Option("--jsonfile <file>", "type and attributes from a JSON file").conflicts("type"))
    .option("-f, --force", "go ahead despite a callout script's veto");
  withRoot(configureCommandOutput(cmd, io)).action((opts: StartOptions) => runStart(opts, io));
}
