/**
 * The mdevctl commands one at a time: `vgpu list` registers and loads `list` alone (commands/index.ts registers them
 * all, for help and for `runCli`). Each loader imports only its command's module.
 */
import type { Command } from "commander";
import type { CliIo } from "./common.ts";

type Loader = (program: Command, io: CliIo) => Promise<void>;

const list: Loader = async (p, io) => (await import("./list.ts")).registerList(p, io);

export const QUICK_COMMANDS: ReadonlyMap<string, Loader> = new Map<string, Loader>([
  ["types", async (p, io) => (await import("./types.ts")).registerTypes(p, io)],
  ["list", list],
  ["lsmdev", list],
  ["define", async (p, io) => (await import("./define.ts")).registerDefine(p, io)],
  ["undefine", async (p, io) => (await import("./undefine.ts")).registerUndefine(p, io)],
  ["modify", async (p, io) => (await import("./modify.ts")).registerModify(p, io)],
  ["start", async (p, io) => (await import("./start.ts")).registerStart(p, io)],
  ["stop", async (p, io) => (await import("./stop.ts")).registerStop(p, io)],
  ["start-parent-mdevs", async (p, io) => (await import("./start-parent.ts")).registerStartParent(p, io)],
]);
