/**
 * mdevctl's callout and notifier scripts, with mdevctl's contract (its src/callouts.rs), so scripts written for
 * mdevctl run unchanged against `<root>`:
 *
 * - Folders (paths.ts): `<root>/scripts.d/callouts/`, then `<root>/mdevctl.d/scripts.d/callouts/`; notifiers in
 *   the `notifiers/` folders beside them.
 * - A script is called as `SCRIPT -t TYPE -e EVENT -a ACTION -s STATE -u UUID -p PARENT`, with the environment of
 *   the process that runs the command plus `VGPU_ROOT=<root>`, and, for `pre`, `post` and `live`, the device's
 *   definition as one line of JSON on stdin (`{"mdev_type":...,"start":...,"attrs":[...]}`); `get` and `notify`
 *   get no stdin.
 * - Events: `pre` (before an action; a non-zero exit vetoes it, unless `-f`), `post` (after it, with the state
 *   `success` or `failure`; its exit status is ignored), `get` (`-a attributes`: the running device's attributes as
 *   JSON on stdout; `-a capabilities`: what the script supports), `live` (`modify --live`), `notify` (after every
 *   action, to every notifier; nothing it does changes the outcome).
 * - Which script answers: unless a script declares versioned support (below), the scripts of a folder are tried in
 *   file-name order and the first whose exit status is not 2 is the device's script ("2" means "not my device
 *   type"); a script killed by a signal is passed over, and a folder where no script answers gives way to the next.
 *   A script that answered `pre` is the one called for `post`.
 * - Versioned scripts: before each action every script is asked `-e get -a capabilities` with
 *   `{"provides":{"version":2,"actions":[...],"events":[...]}}` on stdin; the first whose stdout is
 *   `{"supports":{"version":N,"actions":[...],"events":[...]}}` (trailing NUL bytes allowed) is the device's script
 *   for every event, and an event or action it does not list is an error (so a `pre` it does not support vetoes).
 *   Only a versioned script is called for `live`.
 * - A script's stderr is shown to the user, prefixed with the script's file name.
 *
 * Differences, on purpose: a script that runs longer than `timeoutMs` (default 30 s) is killed and treated as killed
 * by a signal (mdevctl waits forever, and here the host daemon would stop answering), and errors are KernelErrors
 * (EPERM for a veto) with the script's path and what to do.
 *
 * Scripts run synchronously (spawnSync): the service runs one request to completion, and so do the scripts around it.
 */
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { Errno, KernelError } from "../core/index.ts";
import { type MdevAttr, type MdevDefinition, parseAttrsJson } from "./mdevctl-json.ts";
import { byteOrder, definitionToJson } from "./mdevctl-text.ts";
import { calloutDirsOf, notifierDirsOf } from "./paths.ts";

export type CalloutEvent = "pre" | "post" | "live" | "notify" | "get";
export type CalloutAction = "start" | "stop" | "define" | "undefine" | "modify" | "attributes" | "capabilities";
export type CalloutState = "none" | "success" | "failure";

const ALL_ACTIONS: readonly CalloutAction[] = [
  "start",
  "stop",
  "define",
  "undefine",
  "modify",
  "attributes",
  "capabilities",
];
const ALL_EVENTS: readonly CalloutEvent[] = ["pre", "post", "notify", "get", "live"];
/** What a script that never declared a version supports (mdevctl's version 1). */
const V1 = {
  actions: ["start", "stop", "define", "undefine", "modify", "attributes"] as readonly string[],
  events: ["pre", "post", "notify", "get"] as readonly string[],
};
/** What mdevctl offers scripts on stdin of `get capabilities` (its version 2). */
const PROVIDES = JSON.stringify({ provides: { version: 2, actions: ALL_ACTIONS, events: ALL_EVENTS } });

/** The device a callout is about. */
export interface CalloutDevice {
  readonly uuid: string;
  readonly parent: string;
  readonly mdevType: string;
  /** What goes to stdin: the definition (or, for a device without one, its type with no attributes). */
  readonly start?: "auto" | "manual";
  readonly attrs?: readonly MdevAttr[];
}

/** One finished script. `status` is null when a signal (or the time limit) ended it. */
export interface ScriptResult {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** It could not be run at all (not executable, ...). */
  readonly failedToRun?: string;
}

export type ScriptRunner = (
  path: string,
  args: readonly string[],
  stdin: string | undefined,
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
) => ScriptResult;

export const spawnScript: ScriptRunner = (path, args, stdin, env, timeoutMs) => {
  const r = spawnSync(path, args, {
    input: stdin ?? "",
    env,
    timeout: timeoutMs,
    maxBuffer: 16 << 20,
    encoding: "utf8",
  });
  if (r.error !== undefined && r.status === null && r.signal === null) {
    return { status: null, stdout: "", stderr: "", failedToRun: r.error.message };
  }
  return { status: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
};

export interface CalloutOptions {
  readonly root: string;
  /** Default: spawnSync. */
  readonly run?: ScriptRunner;
  /** Default: the process environment. */
  readonly env?: NodeJS.ProcessEnv;
  readonly timeoutMs?: number;
}

interface Script {
  readonly path: string;
  readonly actions: readonly string[];
  readonly events: readonly string[];
  readonly versioned: boolean;
}

/** Files of a folder in byte order of their names; none when it is not a folder. */
function scriptsIn(dir: string): string[] {
  let names: string[];
  try {
    if (!statSync(dir).isDirectory()) return [];
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .sort(byteOrder)
    .map((n) => join(dir, n))
    .filter((p) => {
      try {
        return statSync(p).isFile();
      } catch {
        return false;
      }
    });
}

function parseSupports(stdout: string): { actions: string[]; events: string[] } | undefined {
  let v: unknown;
  try {
    v = JSON.parse(stdout.replace(/\0+$/, ""));
  } catch {
    return undefined;
  }
  const s = (v as { supports?: unknown } | null)?.supports;
  if (typeof s !== "object" || s === null) return undefined;
  const { version, actions, events } = s as { version?: unknown; actions?: unknown; events?: unknown };
  if (!Number.isInteger(version) || !Array.isArray(actions) || !Array.isArray(events)) return undefined;
  if (!actions.every((a) => typeof a === "string") || !events.every((e) => typeof e === "string")) return undefined;
  return { actions: actions as string[], events: events as string[] };
}

/** One command's conversation with the scripts about one device (mdevctl's `Callout`). */
export class Callout {
  private state: CalloutState = "none";
  private script: Script | undefined;
  private readonly run: ScriptRunner;
  private readonly env: NodeJS.ProcessEnv;
  private readonly timeoutMs: number;

  constructor(
    private readonly opts: CalloutOptions,
    private readonly device: CalloutDevice,
    private readonly warnings: string[],
  ) {
    this.run = opts.run ?? spawnScript;
    this.env = { ...(opts.env ?? process.env), VGPU_ROOT: opts.root };
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  private stdinJson(): string {
    return JSON.stringify(
      definitionToJson({
        mdevType: this.device.mdevType,
        start: this.device.start ?? "manual",
        attrs: this.device.attrs ?? [],
      } satisfies MdevDefinition),
    );
  }

  private exec(path: string, event: CalloutEvent, action: CalloutAction, stdin: string | undefined): ScriptResult {
    const d = this.device;
    const args = ["-t", d.mdevType, "-e", event, "-a", action, "-s", this.state, "-u", d.uuid, "-p", d.parent];
    return this.run(path, args, stdin, this.env, this.timeoutMs);
  }

  private showStderr(path: string, r: ScriptResult): void {
    const text = r.stderr.replace(/\n$/, "");
    if (text !== "") for (const line of text.split("\n")) this.warnings.push(`${basename(path)}: ${line}`);
  }

  /** The versioned script for this device, if a script declares its support (mdevctl's find_versioned_script). */
  private findVersioned(): Script | undefined {
    for (const dir of calloutDirsOf(this.opts.root)) {
      for (const path of scriptsIn(dir)) {
        const r = this.exec(path, "get", "capabilities", PROVIDES);
        if (r.failedToRun !== undefined || r.status === null || r.status === 2) continue;
        const supports = parseSupports(r.stdout);
        if (supports === undefined) continue;
        this.showStderr(path, r);
        return { path, ...supports, versioned: true };
      }
    }
    return undefined;
  }

  private failure(path: string, event: CalloutEvent, action: CalloutAction, status: number): KernelError {
    return new KernelError(
      Errno.EPERM,
      `callout script ${path} failed the ${action} (${event}, exit status ${status})` +
        (event === "pre" ? "; pass -f to go ahead despite it" : ""),
    );
  }

  /**
   * Runs one event through the device's script (mdevctl's `callout`). Returns the script's result, or undefined
   * when no script answers. Throws EPERM when the script fails (exit status not 0) or does not support the event.
   */
  private callout(event: CalloutEvent, action: CalloutAction, stdin: string | undefined): ScriptResult | undefined {
    const s = this.script;
    if (s !== undefined) {
      if (!s.actions.includes(action) || !s.events.includes(event)) {
        throw new KernelError(
          Errno.EPERM,
          `callout script ${s.path} does not support ${event} ${action}` +
            (event === "pre" ? "; pass -f to go ahead without it" : ""),
        );
      }
      const r = this.exec(s.path, event, action, stdin);
      if (r.failedToRun !== undefined) {
        throw new KernelError(Errno.EACCES, `cannot run callout script ${s.path}: ${r.failedToRun}`);
      }
      this.showStderr(s.path, r);
      if (r.status !== null && r.status !== 0) throw this.failure(s.path, event, action, r.status);
      return r;
    }
    for (const dir of calloutDirsOf(this.opts.root)) {
      for (const path of scriptsIn(dir)) {
        const r = this.exec(path, event, action, stdin);
        if (r.failedToRun !== undefined) continue;
        if (r.status === null) {
          this.warnings.push(`callout script ${path} was killed by a signal (or ran too long); trying the next one`);
          continue;
        }
        if (r.status === 2) continue;
        this.showStderr(path, r);
        if (r.status !== 0) throw this.failure(path, event, action, r.status);
        this.script = { path, ...V1, versioned: false };
        return r;
      }
    }
    return undefined;
  }

  /**
   * Runs `fn` between the `pre` and `post` callouts, then the notifiers (mdevctl's `invoke`). A failed `pre` vetoes
   * `fn` (it is not called) unless `force`, which turns the veto into a warning.
   */
  invoke<T>(action: Exclude<CalloutAction, "attributes" | "capabilities">, force: boolean, fn: () => T): T {
    this.script = this.findVersioned();
    const conf = this.stdinJson();
    try {
      try {
        this.callout("pre", action, conf);
      } catch (e) {
        if (!force || !(e instanceof KernelError)) throw e;
        this.warnings.push(`going ahead with the ${action} despite the callout (-f): ${e.message}`);
      }
      let result: T;
      try {
        result = fn();
        this.state = "success";
      } catch (e) {
        this.state = "failure";
        this.post(action, conf);
        throw e;
      }
      this.post(action, conf);
      return result;
    } finally {
      this.notify(action);
    }
  }

  private post(action: CalloutAction, conf: string): void {
    try {
      this.callout("post", action, conf);
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      // mdevctl ignores a failed post callout: the action has happened.
    }
  }

  /**
   * The running device's attributes as its script reports them (`get attributes`), or undefined when no script
   * answers or it prints nothing. Throws EPERM when the script fails and EINVAL when its output is not a JSON
   * attribute list.
   */
  getAttributes(): MdevAttr[] | undefined {
    this.script = this.findVersioned();
    const r = this.callout("get", "attributes", undefined);
    if (r === undefined || r.stdout === "") return undefined;
    const text = r.stdout === "[{}]" ? "[]" : r.stdout.replace(/\0+$/, "");
    const parsed = parseAttrsJson(text);
    if (!parsed.ok) {
      throw new KernelError(
        Errno.EINVAL,
        `callout script ${this.script?.path ?? "?"} printed attributes that are not a JSON attribute list (${parsed.problem})`,
      );
    }
    return parsed.attrs;
  }

  /**
   * `modify --live`: a versioned script that supports `live` is called first (a failure stops the change), then
   * `apply` changes the running device, then the notifiers run. Unlike mdevctl, which can change a running device
   * only through such a script, the host writes the attributes itself, so no script is needed.
   */
  modifyLive(apply: () => void): void {
    this.script = this.findVersioned();
    try {
      if (this.script !== undefined) this.callout("live", "modify", this.stdinJson());
      apply();
    } finally {
      this.notify("modify");
    }
  }

  /** Every notifier script, in name order; their outcome changes nothing. */
  notify(action: CalloutAction): void {
    for (const dir of notifierDirsOf(this.opts.root)) {
      for (const path of scriptsIn(dir)) this.exec(path, "notify", action, undefined);
    }
  }
}

/** Makes a Callout per device and command; what the service holds. */
export class Callouts {
  constructor(private readonly opts: CalloutOptions) {}

  for(device: CalloutDevice, warnings: string[]): Callout {
    return new Callout(this.opts, device, warnings);
  }

  /** Whether any callout or notifier script is present (the service skips the work when none is). */
  any(): boolean {
    return [...calloutDirsOf(this.opts.root), ...notifierDirsOf(this.opts.root)].some((d) => scriptsIn(d).length > 0);
  }
}
