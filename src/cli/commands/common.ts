/**
 * What the mdevctl-style commands share: where output goes (`CliIo`, so tests run the real commands in process),
 * the state directory (`--root`), the call to the host with its warnings on stderr, `--jsonfile` reading, and the
 * one place errors become "vgpu: ..." lines and exit codes.
 *
 * Output conventions: results on stdout exactly as mdevctl prints them; warnings on stderr as
 * "vgpu: warning: <sentence>"; an error on stderr as "vgpu: <CODE> (<strerror>): <sentence>" with exit code 1.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { type Command, CommanderError } from "commander";
import { Errno, isKernelError, KernelError } from "../../core/index.ts";
import { HostClient } from "../client.ts";
import { defaultRoot, socketPathOf } from "../daemon.ts";
import { attrNameProblem, mdevTypeProblem, parseDefinitionText, parseUuid } from "../mdevctl-json.ts";
import type { Method, ParamsOf, ResultOf, WireDefinition } from "../protocol.ts";

export interface CliIo {
  /** Writes to stdout as is (no newline added). */
  out(text: string): void;
  /** Writes to stderr as is. */
  err(text: string): void;
  readonly env: NodeJS.ProcessEnv;
  /** Relative `--jsonfile` paths resolve against this. */
  readonly cwd: string;
}

export const processIo: CliIo = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  env: process.env,
  cwd: process.cwd(),
};

export interface RootOption {
  readonly root?: string;
}

/** Adds `--root DIR` (mdevctl's environment root) to a command. */
export function withRoot(cmd: Command): Command {
  return cmd.option("--root <dir>", "state directory (default: $VGPU_ROOT, $XDG_RUNTIME_DIR/vgpu or /run/vgpu)");
}

export function rootOf(opts: RootOption, io: CliIo): string {
  return resolve(io.cwd, opts.root ?? defaultRoot(io.env));
}

/** Calls the host; its warnings go to stderr whether the call succeeds or not. */
export async function callHost<M extends Method>(
  io: CliIo,
  opts: RootOption,
  method: M,
  params: ParamsOf<M>,
): Promise<ResultOf<M>> {
  const client = new HostClient(socketPathOf(rootOf(opts, io)));
  const { result } = await client.call(method, params, (warnings) => {
    for (const w of warnings) io.err(`vgpu: warning: ${w}\n`);
  });
  return result;
}

export function usageError(message: string): KernelError {
  return new KernelError(Errno.EINVAL, message);
}

/** A UUID option, canonicalised; EINVAL naming the option for anything else. */
export function uuidOption(text: string | undefined, flag = "-u/--uuid"): string | undefined {
  if (text === undefined) return undefined;
  const u = parseUuid(text);
  if (u === undefined) throw usageError(`invalid UUID '${text}' for ${flag}: expected 32 hex digits as 8-4-4-4-12`);
  return u;
}

/** `-t/--type`: the same rule as a definition file's `mdev_type` (not empty). */
export function typeOption(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const problem = mdevTypeProblem(text);
  if (problem !== undefined) throw usageError(`the type given with -t/--type ${problem}: see \`vgpu types\``);
  return text;
}

/** `--addattr NAME`: the same rule as an attribute name in a definition file. */
export function attrNameOption(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const problem = attrNameProblem(text);
  if (problem !== undefined) {
    throw usageError(
      `invalid attribute name '${text}' for --addattr: it ${problem}; an attribute name is a path inside the ` +
        "device's sysfs folder, like assign_adapter or vendor/name",
    );
  }
  return text;
}

/** `-i/--index`: a non-negative integer. */
export function indexOption(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw usageError(`invalid index '${text}' for -i/--index: expected a number from 0 up`);
  return Number(text);
}

/** Reads and validates a `--jsonfile`: errors name the file and the bad field. */
export function readJsonFile(file: string, io: CliIo): WireDefinition {
  const path = resolve(io.cwd, file);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new KernelError(Errno.ENOENT, `cannot read JSON file ${file}: no such file`);
    if (code === "EISDIR") throw new KernelError(Errno.EISDIR, `cannot read JSON file ${file}: it is a directory`);
    throw new KernelError(Errno.EIO, `cannot read JSON file ${file}: ${(e as Error).message}`);
  }
  const r = parseDefinitionText(text);
  if (!r.ok) throw new KernelError(Errno.EINVAL, `invalid definition in ${file}: ${r.problem}`);
  const d = r.definition;
  return { mdevType: d.mdevType, start: d.start, attrs: d.attrs.map((a) => ({ name: a.name, value: a.value })) };
}

/** Prefixes commander's own usage errors with "vgpu: ". */
export function configureCommandOutput(cmd: Command, io: CliIo): Command {
  return cmd.configureOutput({
    writeOut: (s) => io.out(s),
    writeErr: (s) => io.err(s),
    outputError: (s, write) => write(`vgpu: ${s.replace(/^error: /, "")}`),
  });
}

/** Turns a thrown error into stderr text and an exit code. Anything but a KernelError or usage error is a bug. */
export function reportError(e: unknown, io: CliIo): number {
  if (isKernelError(e)) {
    io.err(`vgpu: ${e.describe()}\n`);
    return 1;
  }
  if (e instanceof CommanderError) return e.exitCode;
  throw e;
}
