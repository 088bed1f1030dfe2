/**
 * `vgpu modify -u UUID`: changes a definition: type (`-t`), start mode (`-a`/`-m`), attributes (`--addattr NAME
 * --value V [-i N]`, `--delattr [-i N]`), or all of it from `--jsonfile`. `--live --jsonfile` applies the file's
 * attributes to the running device instead; `--live --defined` does both. Without `--live` it works on the files
 * alone when no host runs.
 */
import { type Command, Option } from "commander";
import {
  attrNameOption,
  type CliIo,
  callHost,
  configureCommandOutput,
  indexOption,
  type RootOption,
  readJsonFile,
  typeOption,
  usageError,
  uuidOption,
  withRoot,
} from "./common.ts";

interface ModifyOptions extends RootOption {
  readonly uuid: string;
  readonly parent?: string;
  readonly type?: string;
  readonly addattr?: string;
  readonly delattr?: boolean;
  readonly index?: string;
  readonly value?: string;
  readonly auto?: boolean;
  readonly manual?: boolean;
  readonly live?: boolean;
  readonly defined?: boolean;
  readonly jsonfile?: string;
  readonly force?: boolean;
}

export async function runModify(opts: ModifyOptions, io: CliIo): Promise<void> {
  if (
    !opts.auto &&
    !opts.manual &&
    opts.addattr === undefined &&
    !opts.delattr &&
    opts.jsonfile === undefined &&
    opts.type === undefined
  ) {
    throw usageError("nothing to modify: pass one of -t, -a, -m, --addattr, --delattr or --jsonfile");
  }
  if (opts.auto && opts.manual) throw usageError("--auto and --manual are mutually exclusive");
  if (opts.addattr !== undefined && opts.value === undefined) {
    throw usageError(`no value for attribute ${opts.addattr}: pass --value VALUE`);
  }
  if (opts.value !== undefined && opts.addattr === undefined) throw usageError("--value needs --addattr NAME");
  if (opts.addattr !== undefined && opts.delattr) throw usageError("--addattr and --delattr are mutually exclusive");
  if (opts.live && opts.jsonfile === undefined) {
    throw usageError("--live needs --jsonfile FILE with the attributes to apply");
  }
  if (opts.live && (opts.addattr !== undefined || opts.delattr)) {
    throw usageError("--live applies a --jsonfile; --addattr and --delattr change only the definition");
  }
  const uuid = uuidOption(opts.uuid)!;
  const type = typeOption(opts.type);
  const addattr = attrNameOption(opts.addattr);
  const index = indexOption(opts.index);
  const definition = opts.jsonfile !== undefined ? await readJsonFile(opts.jsonfile, io) : undefined;
  if (definition && !opts.live && opts.parent === undefined) {
    throw usageError("a parent is required to modify a device from a JSON file: pass -p PARENT");
  }
  await callHost(
    io,
    opts,
    "modify",
    {
      uuid,
      ...(opts.parent !== undefined ? { parent: opts.parent } : {}),
      ...(type !== undefined ? { type } : {}),
      ...(addattr !== undefined ? { addattr } : {}),
      ...(opts.value !== undefined ? { value: opts.value } : {}),
      delattr: opts.delattr === true,
      ...(index !== undefined ? { index } : {}),
      auto: opts.auto === true,
      manual: opts.manual === true,
      live: opts.live === true,
      defined: opts.defined === true,
      ...(definition ? { definition } : {}),
      force: opts.force === true,
    },
    { offline: opts.live !== true },
  );
}

export function registerModify(program: Command, io: CliIo): void {
  const cmd = program
    .command("modify")
    .description("modify the definition of a mediated device (or, with --live, a running device's attributes)")
    .requiredOption("-u, --uuid <uuid>", "UUID of the device")
    .option("-p, --parent <parent>", "parent, when the UUID is defined under several")
    .option("-t, --type <type>", "new mdev type")
    .option("--addattr <name>", "add an attribute (with --value)")
    .addOption(new Option("--delattr", "delete an attribute (the last, or the one at --index)"))
    .option("-i, --index <n>", "position of the attribute to add or delete")
    .addOption(new Option("--value <value>", "value of the attribute added by --addattr").conflicts("delattr"))
    .addOption(new Option("-a, --auto", "start automatically when the parent appears").conflicts(["index", "value"]))
    .addOption(new Option("-m, --manual", "start only on request").conflicts(["index", "value"]))
    .addOption(
      new Option("-l, --live", "apply --jsonfile's attributes to the running device").conflicts([
        "type",
        "index",
        "value",
      ]),
    )
    .option("-d, --defined", "with --live: also store the change in the definition")
    .addOption(
      new Option("--jsonfile <file>", "type, start mode and attributes from a JSON file").conflicts([
        "type",
        "index",
        "value",
      ]),
    )
    .option("-f, --force", "skip the checks against the running host and go ahead despite a callout");
  withRoot(configureCommandOutput(cmd, io)).action((opts: ModifyOptions) => runModify(opts, io));
}
