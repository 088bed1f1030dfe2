/**
 * `vgpu list` (mdevctl's `list`/`lsmdev`): running devices, or with `-d` the definitions, filtered by `-u` and `-p`;
 * `-v` adds attributes, `--dumpjson` prints mdevctl's JSON, `--xml` prints libvirt node-device XML per device.
 * `list -d` reads the definition files itself when no host runs. `bin/lsmdev.js` runs this command.
 */
import type { Command } from "commander";
import { formatNodeDeviceXml } from "../libvirt-xml.ts";
import { formatListJson, formatListText } from "../mdevctl-text.ts";
import {
  type CliIo,
  callHost,
  configureCommandOutput,
  type RootOption,
  usageError,
  uuidOption,
  withRoot,
} from "./common.ts";

interface ListOptions extends RootOption {
  readonly defined?: boolean;
  readonly dumpjson?: boolean;
  readonly verbose?: boolean;
  readonly uuid?: string;
  readonly parent?: string;
  readonly xml?: boolean;
}

export async function runList(opts: ListOptions, io: CliIo): Promise<void> {
  if (opts.xml && opts.dumpjson) throw usageError("--xml and --dumpjson are mutually exclusive");
  const uuid = uuidOption(opts.uuid);
  const r = await callHost(
    io,
    opts,
    "list",
    {
      defined: opts.defined === true,
      ...(uuid !== undefined ? { uuid } : {}),
      ...(opts.parent !== undefined ? { parent: opts.parent } : {}),
    },
    { offline: opts.defined === true },
  );
  if (opts.dumpjson) io.out(formatListJson(r.devices, uuid !== undefined));
  else if (opts.xml) io.out(r.devices.map((d) => formatNodeDeviceXml(d)).join(""));
  else io.out(formatListText(r.devices, opts.defined === true, opts.verbose === true));
}

/** The options of `list` (and of `lsmdev`, which is `list` under its own name). */
export function listOptions(cmd: Command): Command {
  return cmd
    .option("-d, --defined", "list defined devices, running or not")
    .option("--dumpjson", "print JSON (mdevctl's format)")
    .option("-v, --verbose", "also print each device's attributes")
    .option("-u, --uuid <uuid>", "only the device with this UUID")
    .option("-p, --parent <parent>", "only the devices of this parent device")
    .option("--xml", "print libvirt node-device XML for each device");
}

export function registerList(program: Command, io: CliIo): void {
  const cmd = listOptions(
    program.command("list").alias("lsmdev").description("list running mediated devices, or with -d the defined ones"),
  );
  withRoot(configureCommandOutput(cmd, io)).action((opts: ListOptions) => runList(opts, io));
}
