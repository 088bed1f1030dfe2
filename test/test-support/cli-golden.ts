/**
 * What the mdevctl-behaviour tests share: running one `vgpu` command line in process against a state directory
 * (`runVgpu`, its exit code and output with the temporary base path shown as `<tmp>`), and comparing its transcript
 * with a golden file (`goldenStep`; UPDATE_GOLDEN=1 writes the file instead, to be reviewed).
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { type CliIo, runCli } from "../../src/cli/commands/index.ts";

export interface CliRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `vgpu ARGV --root ROOT` in process (in `cwd`, default `base`); `base` is shown as `<tmp>` in its output. */
export async function runVgpu(argv: readonly string[], root: string, base: string, cwd = base): Promise<CliRun> {
  let stdout = "";
  let stderr = "";
  const io: CliIo = {
    out: (t) => {
      stdout += t;
    },
    err: (t) => {
      stderr += t;
    },
    env: {},
    cwd,
  };
  const code = await runCli([...argv, "--root", root], io);
  const hide = (t: string) => t.split(base).join("<tmp>");
  return { code, stdout: hide(stdout), stderr: hide(stderr) };
}

/** A shell-quoted argument (as a transcript shows it). */
function quote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`;
}

/** The command's transcript: the command line, its exit code, its stdout and stderr. */
export function transcript(argv: readonly string[], r: CliRun): string {
  let t = `$ vgpu ${argv.map(quote).join(" ")}\n--- exit ${r.code}\n`;
  for (const [label, text] of [
    ["stdout", r.stdout],
    ["stderr", r.stderr],
  ] as const) {
    if (text === "") continue;
    t += `--- ${label}\n${text}`;
    if (!text.endsWith("\n")) t += `\n\\ no newline at end of ${label}\n`;
  }
  return t;
}

/** Checks `actual` against `<golden>/<name>.txt` (UPDATE_GOLDEN=1: writes it instead). */
export function checkGolden(golden: URL, name: string, actual: string): void {
  const file = new URL(`${name}.txt`, golden);
  if (process.env.UPDATE_GOLDEN === "1") {
    mkdirSync(dirname(file.pathname), { recursive: true });
    writeFileSync(file, actual);
  } else {
    assert.ok(existsSync(file), `missing ${file.pathname}: run with UPDATE_GOLDEN=1 and review it`);
    assert.equal(actual, readFileSync(file, "utf8"), `differs from ${file.pathname}`);
  }
}

/** Runs the command (in `cwd`, default `base`) and checks its transcript against `<golden>/<name>.txt`. */
export async function goldenStep(
  golden: URL,
  name: string,
  argv: readonly string[],
  root: string,
  base: string,
  cwd = base,
): Promise<CliRun> {
  const r = await runVgpu(argv, root, base, cwd);
  checkGolden(golden, name, transcript(argv, r));
  return r;
}
