/**
 * What the mdevctl-style commands share: where output goes (`CliIo`, so tests run the real commands in process),
 * the state directory (`--root`), the call to the host with its warnings on stderr, `--jsonfile` reading, and the
 * one place errors become "vgpu: ..." lines and exit codes.
 *
 * Output conventions: results on stdout exactly as mdevctl prints them; warnings on stderr as
 * "vgpu: warning: <sentence>"; an error on stderr as "vgpu: <CODE> (<strerror>): <sentence>", with exit code 2 for
 * a usage error (options that do not go together, a malformed UUID: what mdevctl's clap refuses with 2) and 1 for
 * anything else.
 *
 * The files-only commands (`list -d`, `define`, `undefine`, `modify` without `--live`) work without a host, as
 * mdevctl works on /etc/mdevctl.d: `callHost(..., { offline: true })` runs the same service in process on
 * `<root>/mdevctl.d` when no host answers at `<root>/vgpu.sock` (offline.ts), and says when the checks against the
 * host were skipped. Everything else needs the host and says so with the `--root` it looked in.
 *
 * Only what the quick commands need is imported here (no zod, no model): `vgpu list` starts in about 1.5x the time
 * of `node -e 0` (BENCHMARKS.md).
 */
import { readFileSync, statSync } from "node:fs";
import { resolve } from "node:path";
import { type Command, CommanderError } from "commander";
import { Errno, isKernelError, KernelError } from "../../core/index.ts";
import { HostClient, HostUnreachable } from "../client.ts";
import { attrNameProblem, invalidUuidMessage, mdevTypeProblem, parseUuid } from "../mdevctl-text.ts";
import { defaultRoot, socketPathOf } from "../paths.ts";
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

/**
 * The state folder: `--root`, else $VGPU_ROOT, else the default. ENOTDIR when it exists and is not a folder (a
 * socket or definitions under it could never be found).
 */
export function rootOf(opts: RootOption, io: CliIo): string {
  const root = resolve(io.cwd, opts.root ?? defaultRoot(io.env));
  const st = statSync(root, { throwIfNoEntry: false });
  if (st !== undefined && !st.isDirectory()) {
    const given = opts.root !== undefined ? "--root" : io.env.VGPU_ROOT ? "$VGPU_ROOT" : "the default state folder";
    throw new KernelError(
      Errno.ENOTDIR,
      `${root} (${given}) is not a folder: pass --root DIR with a folder (it is created when missing)`,
    );
  }
  return root;
}

/** The methods that work on the definition files alone when no host runs. */
export type OfflineMethod = "list" | "define" | "undefine" | "modify";

/**
 * Calls the host; its warnings go to stderr whether the call succeeds or not. With `offline`, a root where no host
 * answers is served from its files in process instead (see the module comment).
 */
export async function callHost<M extends Method>(
  io: CliIo,
  opts: RootOption,
  method: M,
  params: ParamsOf<M>,
  how: { readonly offline?: boolean } = {},
): Promise<ResultOf<M>> {
  const root = rootOf(opts, io);
  const warn = (warnings: readonly string[]) => {
    for (const w of warnings) io.err(`vgpu: warning: ${w}\n`);
  };
  const client = new HostClient(socketPathOf(root));
  try {
    const { result } = await client.call(method, params, warn);
    return result;
  } catch (e) {
    if (!(e instanceof HostUnreachable) || how.offline !== true) throw e;
  }
  const { callOffline } = await import("../offline.ts");
  return callOffline(root, method as M & OfflineMethod, params as ParamsOf<M & OfflineMethod>, warn) as ResultOf<M>;
}

/** A mistake in the command line itself: exit status 2, as clap (mdevctl's parser) exits. */
export class UsageError extends KernelError {}

export function usageError(message: string): KernelError {
  return new UsageError(Errno.EINVAL, message);
}

/** A UUID option, canonicalised; EINVAL naming the option for anything else. */
export function uuidOption(text: string | undefined, flag = "-u/--uuid"): string | undefined {
  if (text === undefined) return undefined;
  const u = parseUuid(text);
  if (u === undefined) throw usageError(invalidUuidMessage(text, flag));
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

/**
 * A numeric option's value as commander passes it (a string) or as a caller gives it (a number): the whole number it
 * spells (digits only, surrounding blanks ignored), else NaN, for the caller's range check to refuse.
 */
export function wholeNumberOf(v: string | number): number {
  if (typeof v === "number") return v;
  const t = v.trim();
  return /^\d+$/.test(t) ? Number(t) : Number.NaN;
}

/** `-i/--index`: a non-negative integer. */
export function indexOption(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw usageError(`invalid index '${text}' for -i/--index: expected a number from 0 up`);
  return Number(text);
}

/** Reads and validates a `--jsonfile`: errors name the file and the bad field (and line and column for bad JSON). */
export async function readJsonFile(file: string, io: CliIo): Promise<WireDefinition> {
  const { parseDefinitionText } = await import("../mdevctl-json.ts");
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

/**
 * Commander's own usage errors as "vgpu: EINVAL (Invalid argument): <its message>: see `vgpu CMD --help`", thrown
 * (not exited) so that the caller decides the exit status (2).
 */
export function configureCommandOutput(cmd: Command, io: CliIo): Command {
  return cmd.exitOverride().configureOutput({
    writeOut: (s) => io.out(s),
    writeErr: (s) => io.err(s),
    outputError: (s, write) => {
      const text = s.replace(/^error: /, "").replace(/\n+$/, "");
      const name = commandPath(cmd);
      write(`vgpu: EINVAL (Invalid argument): ${text}: see \`${name} --help\`\n`);
    },
  });
}

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c !== null; c = c.parent) names.unshift(c.name());
  return names.join(" ");
}

/** Commander's codes for --help and --version, which exit 0. */
const COMMANDER_OK = new Set(["commander.helpDisplayed", "commander.help", "commander.version"]);

/** Node's errno codes that a user can meet through a path (`--trace`, `--config`, a scenario file). */
function nodeErrnoOf(e: unknown): keyof typeof Errno | undefined {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  return typeof code === "string" && Object.hasOwn(Errno, code) ? (code as keyof typeof Errno) : undefined;
}

/**
 * Turns a thrown error into stderr text and an exit status: 2 for usage errors, 1 for everything else, never a
 * stack trace. A Node system error (ENOENT, EACCES, ...) keeps its errno; anything else is a bug in vgpu, reported
 * as one line (`VGPU_DEBUG=1` adds the stack).
 */
export function reportError(e: unknown, io: CliIo): number {
  if (e instanceof CommanderError) {
    // Help shown because a command was missing (`vgpu` alone) comes with exit code 1: a usage error, 2.
    if (COMMANDER_OK.has(e.code) && e.exitCode === 0) return 0;
    return 2;
  }
  if (isKernelError(e)) {
    io.err(`vgpu: ${e.describe()}\n`);
    return e instanceof UsageError ? 2 : 1;
  }
  const code = nodeErrnoOf(e);
  if (code !== undefined) {
    const x = e as NodeJS.ErrnoException;
    const what = x.path !== undefined ? `cannot ${x.syscall ?? "use"} ${x.path}` : x.message.replace(/^[A-Z]+: /, "");
    const err = new KernelError(Errno[code], `${what}: check the path and its permissions`);
    io.err(`vgpu: ${err.describe()}\n`);
    return 1;
  }
  const message = e instanceof Error ? e.message : String(e);
  io.err(
    `vgpu: EIO (Input/output error): internal error: ${message}; this is a bug in vgpu, please report it ` +
      "(VGPU_DEBUG=1 prints the details)\n",
  );
  if (io.env.VGPU_DEBUG === "1" && e instanceof Error && e.stack !== undefined) io.err(`${e.stack}\n`);
  return 1;
}
