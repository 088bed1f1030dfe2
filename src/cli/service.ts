/**
 * The host-side service behind `vgpu types|list|define|undefine|modify|start|stop`: mdevctl's semantics over the
 * model's mdev core and the definition store. The daemon exposes it on its socket; tests run it in process.
 *
 * It sees the host through `MdevHostApi`, a narrow view (parents, types with availability, running devices, create,
 * remove, vendor attributes) that host-api.ts implements over an assembled System (src/scenario/system.ts), so the
 * service can be tested against a fake and does not depend on the mdev core's internals.
 *
 * Behaviour follows mdevctl (src/main.rs), with these choices where mdevctl is silent or unhelpful:
 * - every failure is a KernelError with an errno and a sentence that names the values and what to do;
 * - `define`, and `modify -t`, check the parent and type against the running host; `--force` skips the check, so a
 *   device can be defined for a parent that will appear later (mdevctl never checks; its --force is about callout
 *   scripts, and ours is about both);
 * - a UUID defined under several parents needs `-p` wherever mdevctl would pick one, and the error names the
 *   parents; only one device per UUID runs at a time, whatever its parent;
 * - parent names are case-sensitive (they are sysfs names, mdevctl #60), but a name that matches only when letter
 *   case is ignored gets "did you mean" (mdevctl #61); UUIDs are compared in canonical lower case;
 * - starting a device is all or nothing: if a vendor attribute write fails, the device is removed again;
 * - a running device lists the attributes the service applied when it started it (mdevctl shows attributes of
 *   running devices only through a callout script);
 * - `modify --jsonfile` needs an existing definition (mdevctl would create one), and `-t` alone is a modification
 *   (mdevctl asks for one more option); `--delattr` on a definition without attributes changes nothing, as in mdevctl.
 *
 * Callout scripts (callouts.ts) run around every action as mdevctl runs them: `pre` may veto (`force` overrides
 * it), `post` and the notifiers follow; a running device lists the attributes its `get attributes` script reports.
 * `--force` therefore means both "skip the host checks" and "go ahead despite a callout".
 *
 * Everything is synchronous: one request runs to completion before the next, so the checks and the change they
 * guard cannot interleave with another client's.
 */
import { Errno, KernelError } from "../core/index.ts";
import type { CalloutDevice, Callouts } from "./callouts.ts";
import { type DefinitionStore, invalidParentName, parentFolderProblem, type StoredDefinition } from "./definitions.ts";
import {
  badComponentName,
  byteOrder,
  invalidUuidMessage,
  type MdevAttr,
  type MdevDefinition,
  parseUuid,
} from "./mdevctl-json.ts";
import { type Method, type ParamsOf, PROTOCOL_VERSION, type ResultOf, type WireDevice } from "./protocol.ts";

/** One type a parent offers now. */
export interface HostTypeInfo {
  /** `<driver>-<id>`, the sysfs directory name ("mtty-2"). */
  readonly type: string;
  readonly name: string;
  readonly description: string;
  readonly deviceApi: string;
  readonly availableInstances: number;
  readonly reason?: string;
}

/** One running mediated device. */
export interface HostDevice {
  readonly uuid: string;
  readonly parent: string;
  readonly type: string;
  readonly iommuGroup?: number;
  readonly sysfsPath?: string;
  readonly driver?: string;
  /** Where the daemon serves it over vfio-user, if it does. */
  readonly vfioUserSocket?: string;
}

/** What the service needs from the host (implemented over MdevCore and sysfs by host-api.ts). */
export interface MdevHostApi {
  /** Parent device names registered with the mdev core. */
  parents(): readonly string[];
  /** ENODEV for an unknown parent. */
  types(parent: string): readonly HostTypeInfo[];
  devices(): readonly HostDevice[];
  /** Writes `uuid` to the type's `create`. Throws KernelError (ENOSPC, EEXIST, ...). */
  create(parent: string, type: string, uuid: string): void;
  /** Writes 1 to the device's `remove`. Throws KernelError (EBUSY while it is open). */
  remove(uuid: string): void;
  /** Vendor attribute names of a running device. */
  attributeNames(uuid: string): readonly string[];
  /** Throws KernelError (EINVAL with the vendor's sentence) for a bad value. */
  writeAttribute(uuid: string, name: string, value: string): void;
}

export interface MdevServiceOptions {
  readonly host: MdevHostApi;
  readonly store: DefinitionStore;
  /** Source of new UUIDs for `define`/`start` without `-u` (default: crypto.randomUUID). */
  readonly newUuid?: () => string;
  /** The state directory, reported by `hello`. */
  readonly root?: string;
  readonly pid?: number;
  /** Callout and notifier scripts run around each action (none when omitted). */
  readonly callouts?: Callouts;
  /**
   * Check parents and types against the host on define and modify (default true). False when the service runs
   * on the files alone, with no host (offline.ts).
   */
  readonly hostChecks?: boolean;
}

/** Auto-start outcome for one parent. */
export interface AutostartReport {
  readonly parent: string;
  readonly started: readonly string[];
  readonly failed: readonly { readonly uuid: string; readonly message: string }[];
}

interface Target {
  readonly parent: string;
  readonly mdevType: string;
  readonly attrs: readonly MdevAttr[];
}

function list(names: readonly string[]): string {
  return names.length === 0 ? "none" : names.join(", ");
}

function attrsHint(uuid: string, attrs: readonly MdevAttr[]): string {
  if (attrs.length === 0) return `device ${uuid} has no attributes`;
  return `its attributes: ${attrs.map((a, i) => `@{${i}} ${a.name}=${a.value}`).join(", ")}`;
}

export class MdevService {
  private readonly host: MdevHostApi;
  private readonly store: DefinitionStore;
  private readonly newUuid: () => string;
  private readonly root: string;
  private readonly pid: number;
  private readonly callouts: Callouts | undefined;
  private readonly hostChecks: boolean;
  /** Attributes applied when the service started each running device. */
  private readonly applied = new Map<string, readonly MdevAttr[]>();

  constructor(opts: MdevServiceOptions) {
    this.host = opts.host;
    this.store = opts.store;
    this.newUuid = opts.newUuid ?? (() => crypto.randomUUID());
    this.root = opts.root ?? "";
    this.pid = opts.pid ?? process.pid;
    this.callouts = opts.callouts;
    this.hostChecks = opts.hostChecks ?? true;
  }

  /** Runs `fn` between the device's pre and post callouts (just `fn` when there are no scripts). */
  private withCallouts<T>(
    action: "start" | "stop" | "define" | "undefine" | "modify",
    device: CalloutDevice,
    force: boolean,
    warnings: string[],
    fn: () => T,
  ): T {
    if (this.callouts === undefined) return fn();
    return this.callouts.for(device, warnings).invoke(action, force, fn);
  }

  /** A running device's attributes: what its `get attributes` script reports, else what the service applied. */
  private runningAttrs(run: HostDevice, warnings: string[]): MdevAttr[] {
    const applied = [...(this.applied.get(run.uuid) ?? [])];
    if (this.callouts === undefined) return applied;
    try {
      const fromScript = this.callouts
        .for({ uuid: run.uuid, parent: run.parent, mdevType: run.type }, warnings)
        .getAttributes();
      return fromScript ?? applied;
    } catch (e) {
      if (!(e instanceof KernelError)) throw e;
      warnings.push(`${e.message}; listing the attributes the host applied instead`);
      return applied;
    }
  }

  /** Runs one method. Warnings for the user are appended to `warnings`. */
  dispatch<M extends Method>(method: M, params: ParamsOf<M>, warnings: string[]): ResultOf<M> {
    // Each branch returns the result type of its own method; the casts restate what the switch proves.
    switch (method) {
      case "hello":
        return this.hello() as ResultOf<M>;
      case "types":
        return this.types(params as ParamsOf<"types">, warnings) as ResultOf<M>;
      case "list":
        return this.list(params as ParamsOf<"list">, warnings) as ResultOf<M>;
      case "define":
        return this.define(params as ParamsOf<"define">, warnings) as ResultOf<M>;
      case "undefine":
        return this.undefine(params as ParamsOf<"undefine">, warnings) as ResultOf<M>;
      case "modify":
        return this.modify(params as ParamsOf<"modify">, warnings) as ResultOf<M>;
      case "start":
        return this.start(params as ParamsOf<"start">, warnings) as ResultOf<M>;
      case "stop":
        return this.stop(params as ParamsOf<"stop">, warnings) as ResultOf<M>;
      case "startParent":
        return this.startParent((params as ParamsOf<"startParent">).parent, warnings) as ResultOf<M>;
    }
    throw new KernelError(Errno.ENOSYS, `unknown method ${String(method)}`);
  }

  hello(): ResultOf<"hello"> {
    return {
      server: "vgpu host",
      protocol: PROTOCOL_VERSION,
      pid: this.pid,
      root: this.root,
      parents: [...this.host.parents()].sort(byteOrder),
    };
  }

  // ---- lookups -------------------------------------------------------------------------------------------------

  private loadDefinitions(warnings: string[]): readonly StoredDefinition[] {
    const r = this.store.load();
    for (const w of r.warnings) warnings.push(w);
    return r.definitions;
  }

  private uuidOf(text: string): string {
    const u = parseUuid(text);
    if (u === undefined) {
      throw new KernelError(Errno.EINVAL, invalidUuidMessage(text, "the device"));
    }
    return u;
  }

  private checkParentName(parent: string): void {
    const bad = badComponentName(parent);
    if (bad) throw new KernelError(Errno.EINVAL, `invalid parent name '${parent}': it ${bad}`);
  }

  /** A parent a definition is written under: the store's own rule (what its loader reads). */
  private checkDefinitionParent(parent: string): void {
    const problem = parentFolderProblem(parent);
    if (problem !== undefined) throw invalidParentName(parent, problem);
  }

  /** A name differing only in letter case, for "did you mean". */
  private caseHint(name: string, candidates: Iterable<string>): string | undefined {
    const lower = name.toLowerCase();
    for (const c of candidates) if (c !== name && c.toLowerCase() === lower) return c;
    return undefined;
  }

  private requireHostParent(parent: string, forceHint = false): void {
    this.checkParentName(parent);
    const parents = this.host.parents();
    if (parents.includes(parent)) return;
    const hint = this.caseHint(parent, parents);
    if (hint !== undefined) {
      throw new KernelError(
        Errno.ENODEV,
        `no parent device '${parent}' on this host; did you mean '${hint}'? (parent names are case-sensitive)`,
      );
    }
    throw new KernelError(
      Errno.ENODEV,
      `no parent device '${parent}' on this host (parents: ${list([...parents].sort(byteOrder))}; see \`vgpu types\`)` +
        (forceHint ? "; pass -f to define it for a parent that is not there yet" : ""),
    );
  }

  /**
   * The parent's type named `type`, or named `type` without its driver prefix ("GVTg_V5_4" for "i915-GVTg_V5_4",
   * as GVT-g's own documentation and scenario files name them) when exactly one type matches so.
   */
  private requireType(parent: string, type: string): HostTypeInfo {
    const types = this.host.types(parent);
    const t = types.find((x) => x.type === type);
    if (t) return t;
    const unprefixed = types.filter(
      (x) => x.type.endsWith(`-${type}`) && !x.type.slice(0, -type.length - 1).includes("-"),
    );
    if (unprefixed.length === 1) return unprefixed[0]!;
    const names = types.map((x) => x.type).sort(byteOrder);
    const hint = this.caseHint(type, names);
    throw new KernelError(
      Errno.EINVAL,
      hint !== undefined
        ? `parent ${parent} has no mdev type '${type}'; did you mean '${hint}'?`
        : `parent ${parent} has no mdev type '${type}' (its types: ${list(names)}; see \`vgpu types -p ${parent}\`)`,
    );
  }

  private running(uuid: string): HostDevice | undefined {
    return this.host.devices().find((d) => d.uuid === uuid);
  }

  private generateUuid(defs: readonly StoredDefinition[]): string {
    for (let i = 0; i < 64; i++) {
      const u = parseUuid(this.newUuid());
      if (u === undefined) continue;
      if (defs.some((d) => d.uuid === u) || this.running(u)) continue;
      return u;
    }
    throw new KernelError(Errno.EAGAIN, "could not generate a UUID that is not already in use");
  }

  /** The one definition a UUID (and optional parent) names; ENOENT or ambiguity errors otherwise. */
  private definedOne(defs: readonly StoredDefinition[], uuid: string, parent: string | undefined): StoredDefinition {
    const all = defs.filter((d) => d.uuid === uuid);
    const matches = parent === undefined ? all : all.filter((d) => d.parent === parent);
    if (matches.length === 1) return matches[0]!;
    if (matches.length > 1) {
      throw new KernelError(
        Errno.EINVAL,
        `UUID ${uuid} is defined under several parents (${matches.map((d) => d.parent).join(", ")}): pass -p PARENT to choose one`,
      );
    }
    throw this.notDefined(uuid, parent, all);
  }

  private notDefined(uuid: string, parent: string | undefined, all: readonly StoredDefinition[]): KernelError {
    if (parent === undefined)
      return new KernelError(Errno.ENOENT, `device ${uuid} is not defined (see \`vgpu list -d\`)`);
    const elsewhere = all.map((d) => d.parent);
    const hint = this.caseHint(parent, elsewhere);
    return new KernelError(
      Errno.ENOENT,
      `device ${uuid} is not defined under parent ${parent}` +
        (hint !== undefined
          ? `; did you mean '${hint}'? (parent names are case-sensitive)`
          : elsewhere.length > 0
            ? ` (it is defined under ${elsewhere.join(", ")})`
            : ""),
    );
  }

  private parentFilterHint(parent: string | undefined, known: Iterable<string>, warnings: string[]): void {
    if (parent === undefined) return;
    const names = new Set(known);
    if (names.has(parent)) return;
    const hint = this.caseHint(parent, names);
    if (hint !== undefined) {
      warnings.push(`no parent named '${parent}'; did you mean '${hint}'? (parent names are case-sensitive)`);
    }
  }

  // ---- types and list ------------------------------------------------------------------------------------------

  types(p: ParamsOf<"types">, warnings: string[]): ResultOf<"types"> {
    const all = [...this.host.parents()].sort(byteOrder);
    this.parentFilterHint(p.parent, all, warnings);
    const parents = all.filter((x) => p.parent === undefined || x === p.parent);
    return {
      parents: parents.map((parent) => ({
        parent,
        types: this.host.types(parent).map((t) => ({
          type: t.type,
          availableInstances: t.availableInstances,
          deviceApi: t.deviceApi,
          name: t.name,
          description: t.description,
          ...(t.reason !== undefined ? { reason: t.reason } : {}),
        })),
      })),
    };
  }

  list(p: ParamsOf<"list">, warnings: string[]): ResultOf<"list"> {
    const uuid = p.uuid === undefined ? undefined : this.uuidOf(p.uuid);
    const defs = this.loadDefinitions(warnings);
    const devices = this.host.devices();
    this.parentFilterHint(p.parent, [...this.host.parents(), ...defs.map((d) => d.parent)], warnings);
    const out: WireDevice[] = [];
    if (p.defined) {
      for (const d of defs) {
        if (uuid !== undefined && d.uuid !== uuid) continue;
        if (p.parent !== undefined && d.parent !== p.parent) continue;
        const run = devices.find((x) => x.uuid === d.uuid && x.parent === d.parent && x.type === d.definition.mdevType);
        out.push({
          uuid: d.uuid,
          parent: d.parent,
          mdevType: d.definition.mdevType,
          start: d.definition.start,
          attrs: [...d.definition.attrs],
          active: run !== undefined,
          defined: true,
          ...(run ? runningExtras(run) : {}),
        });
      }
    } else {
      for (const run of devices) {
        if (uuid !== undefined && run.uuid !== uuid) continue;
        if (p.parent !== undefined && run.parent !== p.parent) continue;
        const d = defs.find((x) => x.uuid === run.uuid && x.parent === run.parent);
        out.push({
          uuid: run.uuid,
          parent: run.parent,
          mdevType: run.type,
          start: d?.definition.start ?? "manual",
          attrs: this.runningAttrs(run, warnings),
          active: true,
          defined: d !== undefined,
          ...runningExtras(run),
        });
      }
    }
    out.sort((a, b) => byteOrder(a.parent, b.parent) || byteOrder(a.uuid, b.uuid));
    return { devices: out };
  }

  // ---- define, undefine, modify --------------------------------------------------------------------------------

  define(p: ParamsOf<"define">, warnings: string[]): ResultOf<"define"> {
    const defs = this.loadDefinitions(warnings);
    const uuidGiven = p.uuid !== undefined;
    const uuid = p.uuid !== undefined ? this.uuidOf(p.uuid) : this.generateUuid(defs);
    let parent: string;
    let definition: MdevDefinition;
    let runningDevice: HostDevice | undefined;
    if (p.definition) {
      if (p.type !== undefined) throw new KernelError(Errno.EINVAL, "the type comes from the JSON file: drop -t");
      if (p.parent === undefined) {
        throw new KernelError(Errno.EINVAL, "a parent is required to define a device from a JSON file: pass -p PARENT");
      }
      parent = p.parent;
      this.checkDefinitionParent(parent);
      if (defs.some((d) => d.uuid === uuid && d.parent === parent)) {
        throw new KernelError(
          Errno.EEXIST,
          `refusing to overwrite the existing definition of ${parent}/${uuid}: use \`vgpu modify --jsonfile\` or undefine it first`,
        );
      }
      definition = p.definition;
    } else {
      const run = uuidGiven ? this.running(uuid) : undefined;
      if (p.parent === undefined && (run === undefined || p.type !== undefined)) {
        throw new KernelError(
          Errno.EINVAL,
          run === undefined
            ? `no parent given for ${uuid}: pass -p PARENT (only a running device lends its parent and type)`
            : "no parent given: pass -p PARENT with -t TYPE",
        );
      }
      parent = p.parent ?? run!.parent;
      this.checkDefinitionParent(parent);
      const type = p.type ?? run?.type;
      if (type === undefined) throw new KernelError(Errno.EINVAL, "no type given: pass -t TYPE (see `vgpu types`)");
      const existing = defs.find((d) => d.uuid === uuid && d.parent === parent);
      if (existing) {
        throw new KernelError(
          Errno.EEXIST,
          `device ${uuid} is already defined under parent ${parent} (see \`vgpu list -d -u ${uuid}\`)`,
        );
      }
      definition = { mdevType: type, start: p.auto ? "auto" : "manual", attrs: [] };
      // Defining a running device keeps the attributes it was started with (as its callout script reports them).
      if (run && run.parent === parent && run.type === type) runningDevice = run;
    }
    if (!p.force && this.hostChecks) {
      this.requireHostParent(parent, true);
      definition = { ...definition, mdevType: this.requireType(parent, definition.mdevType).type };
    }
    const device = { uuid, parent, mdevType: definition.mdevType, start: definition.start, attrs: definition.attrs };
    this.withCallouts("define", device, p.force, warnings, () => {
      if (runningDevice !== undefined) {
        const fromScript = this.callouts?.for({ uuid, parent, mdevType: runningDevice.type }, warnings).getAttributes();
        definition = { ...definition, attrs: fromScript ?? [...(this.applied.get(uuid) ?? [])] };
      }
      this.store.save(parent, uuid, definition);
    });
    return { uuid, parent, generated: !uuidGiven };
  }

  undefine(p: ParamsOf<"undefine">, warnings: string[]): ResultOf<"undefine"> {
    const uuid = this.uuidOf(p.uuid);
    const defs = this.loadDefinitions(warnings);
    const all = defs.filter((d) => d.uuid === uuid);
    const matches = p.parent === undefined ? all : all.filter((d) => d.parent === p.parent);
    if (matches.length === 0) throw this.notDefined(uuid, p.parent, all);
    const removed: { uuid: string; parent: string }[] = [];
    let firstError: KernelError | undefined;
    // Each definition on its own, as mdevctl does: one vetoed by its callout does not keep the others.
    for (const d of matches) {
      try {
        this.withCallouts("undefine", deviceOf(d), p.force, warnings, () => this.store.remove(d.file));
        removed.push({ uuid, parent: d.parent });
      } catch (e) {
        if (!(e instanceof KernelError)) throw e;
        if (matches.length > 1) warnings.push(`the definition under ${d.parent} stays: ${e.message}`);
        firstError ??= e;
      }
    }
    if (firstError !== undefined) {
      if (matches.length === 1) throw firstError;
      throw new KernelError(
        firstError.errno,
        `${removed.length} of ${matches.length} definitions of ${uuid} removed` +
          (removed.length > 0 ? ` (under ${removed.map((r) => r.parent).join(", ")})` : "") +
          "; see the warnings for the others",
      );
    }
    return { removed };
  }

  modify(p: ParamsOf<"modify">, warnings: string[]): ResultOf<"modify"> {
    const uuid = this.uuidOf(p.uuid);
    if (p.live) return this.modifyLive(uuid, p, warnings);
    if (p.auto && p.manual) throw new KernelError(Errno.EINVAL, "--auto and --manual are mutually exclusive");
    const defs = this.loadDefinitions(warnings);
    const d = this.definedOne(defs, uuid, p.parent);
    let mdevType: string;
    let start: "auto" | "manual";
    let attrs: MdevAttr[];
    if (p.definition) {
      ({ mdevType, start } = p.definition);
      attrs = [...p.definition.attrs];
    } else {
      mdevType = p.type ?? d.definition.mdevType;
      start = p.auto ? "auto" : p.manual ? "manual" : d.definition.start;
      attrs = [...d.definition.attrs];
    }
    if (p.addattr !== undefined) {
      if (p.value === undefined) {
        throw new KernelError(Errno.EINVAL, `no value for attribute ${p.addattr}: pass --value VALUE`);
      }
      const at = p.index ?? attrs.length;
      if (at > attrs.length) {
        throw new KernelError(Errno.EINVAL, `attribute index ${at} is invalid (${attrsHint(uuid, attrs)})`);
      }
      attrs.splice(at, 0, { name: p.addattr, value: p.value });
    } else if (p.delattr) {
      // No index: the last attribute, if any (mdevctl: deleting from an empty list changes nothing).
      if (p.index === undefined) attrs.pop();
      else if (p.index >= attrs.length) {
        throw new KernelError(Errno.EINVAL, `attribute index ${p.index} is invalid (${attrsHint(uuid, attrs)})`);
      } else attrs.splice(p.index, 1);
    }
    if (mdevType !== d.definition.mdevType && !p.force && this.host.parents().includes(d.parent)) {
      mdevType = this.requireType(d.parent, mdevType).type;
    }
    const device = { uuid, parent: d.parent, mdevType, start, attrs };
    this.withCallouts("modify", device, p.force, warnings, () =>
      this.store.save(d.parent, uuid, { mdevType, start, attrs }, d.file),
    );
    return { uuid, parent: d.parent };
  }

  private modifyLive(uuid: string, p: ParamsOf<"modify">, warnings: string[]): ResultOf<"modify"> {
    if (p.type !== undefined) throw new KernelError(Errno.EINVAL, "the type of a running device cannot be changed");
    if (p.auto || p.manual) {
      throw new KernelError(Errno.EINVAL, "the start mode belongs to the definition: drop --live, or add --defined");
    }
    if (!p.definition) throw new KernelError(Errno.EINVAL, "--live needs --jsonfile FILE with the attributes to apply");
    const run = this.running(uuid);
    if (!run || (p.parent !== undefined && run.parent !== p.parent)) {
      throw new KernelError(
        Errno.ENODEV,
        `device ${uuid} is not running${p.parent !== undefined ? ` under parent ${p.parent}` : ""}`,
      );
    }
    if (p.definition.mdevType !== run.type) {
      throw new KernelError(
        Errno.EINVAL,
        `the type of a running device cannot be changed (${uuid} runs as ${run.type}, the file says ${p.definition.mdevType})`,
      );
    }
    let stored: StoredDefinition | undefined;
    if (p.defined) {
      const defs = this.loadDefinitions(warnings);
      stored = this.definedOne(defs, uuid, run.parent);
      if (stored.definition.mdevType !== run.type) {
        throw new KernelError(
          Errno.EINVAL,
          `the running device (${run.type}) and its definition (${stored.definition.mdevType}) differ in type`,
        );
      }
    }
    const definition = p.definition;
    const apply = () => {
      this.applyAttributes(uuid, definition.attrs, false);
      this.applied.set(uuid, [...definition.attrs]);
    };
    const device = { uuid, parent: run.parent, mdevType: run.type, start: definition.start, attrs: definition.attrs };
    if (this.callouts === undefined) apply();
    else this.callouts.for(device, warnings).modifyLive(apply);
    if (stored) {
      const file = stored.file;
      this.withCallouts("modify", device, p.force, warnings, () => this.store.save(run.parent, uuid, definition, file));
    }
    return { uuid, parent: run.parent };
  }

  // ---- start and stop ------------------------------------------------------------------------------------------

  start(p: ParamsOf<"start">, warnings: string[]): ResultOf<"start"> {
    const defs = this.loadDefinitions(warnings);
    const uuidGiven = p.uuid !== undefined;
    let uuid = p.uuid !== undefined ? this.uuidOf(p.uuid) : undefined;
    let target: Target | undefined;
    if (p.definition) {
      if (p.type !== undefined) throw new KernelError(Errno.EINVAL, "the type comes from the JSON file: drop -t");
      if (p.parent === undefined) {
        throw new KernelError(Errno.EINVAL, "a parent is required to start a device from a JSON file: pass -p PARENT");
      }
      target = { parent: p.parent, mdevType: p.definition.mdevType, attrs: p.definition.attrs };
    } else {
      if (uuid !== undefined) {
        const u = uuid;
        const matches = defs.filter((d) => d.uuid === u && (p.parent === undefined || d.parent === p.parent));
        if (matches.length > 1) {
          throw new KernelError(
            Errno.EINVAL,
            `UUID ${u} is defined under several parents (${matches.map((d) => d.parent).join(", ")}): pass -p PARENT to choose one`,
          );
        }
        const d = matches[0];
        if (d) {
          if (p.type !== undefined && p.type !== d.definition.mdevType) {
            throw new KernelError(
              Errno.EEXIST,
              `device ${u} is defined under parent ${d.parent} with type ${d.definition.mdevType}, not ${p.type}: drop -t, or undefine it first`,
            );
          }
          target = { parent: d.parent, mdevType: d.definition.mdevType, attrs: d.definition.attrs };
        }
      }
      if (!target) {
        if (p.type !== undefined && p.parent === undefined) {
          throw new KernelError(Errno.EINVAL, "a type needs its parent: pass -p PARENT with -t TYPE");
        }
        if (p.type === undefined || p.parent === undefined) {
          if (uuid !== undefined) {
            const all = defs.filter((d) => d.uuid === uuid);
            if (p.parent !== undefined && all.length > 0) throw this.notDefined(uuid, p.parent, all);
            throw new KernelError(
              Errno.ENOENT,
              `device ${uuid} is not defined${p.parent !== undefined ? ` under parent ${p.parent}` : ""}: ` +
                "pass -p PARENT and -t TYPE to start it without a definition",
            );
          }
          throw new KernelError(Errno.EINVAL, "the device is not fully specified: pass -t TYPE with -p PARENT");
        }
        target = { parent: p.parent, mdevType: p.type, attrs: [] };
      }
    }
    uuid ??= this.generateUuid(defs);
    const u = uuid;
    const t = target;
    const start = defs.find((d) => d.uuid === u && d.parent === t.parent)?.definition.start ?? "manual";
    const device = { uuid: u, parent: t.parent, mdevType: t.mdevType, start, attrs: t.attrs };
    this.withCallouts("start", device, p.force, warnings, () => this.startDevice(u, t));
    return { uuid, parent: target.parent, mdevType: target.mdevType, generated: !uuidGiven };
  }

  /** Creates the device and applies its attributes in order; all or nothing. */
  private startDevice(uuid: string, t: Target): void {
    const run = this.running(uuid);
    if (run) {
      throw new KernelError(
        Errno.EEXIST,
        `UUID ${uuid} is already running under parent ${run.parent} (type ${run.type}); stop it first with \`vgpu stop -u ${uuid}\``,
      );
    }
    this.requireHostParent(t.parent);
    const type = this.requireType(t.parent, t.mdevType);
    if (type.availableInstances <= 0) {
      throw new KernelError(
        Errno.ENOSPC,
        `type ${type.type} has ${type.availableInstances} available instances on ${t.parent}` +
          (type.reason ? ` (${type.reason})` : ""),
      );
    }
    try {
      this.host.create(t.parent, type.type, uuid);
    } catch (e) {
      if (e instanceof KernelError) {
        throw new KernelError(e.errno, `cannot create ${uuid} (type ${type.type} on ${t.parent}): ${e.message}`);
      }
      throw e;
    }
    this.applyAttributes(uuid, t.attrs, true);
    this.applied.set(uuid, [...t.attrs]);
  }

  /**
   * Writes attributes in order. Names are all checked before the first write. On a failed write of a device just
   * created (`removeOnFailure`), the device is removed again.
   */
  private applyAttributes(uuid: string, attrs: readonly MdevAttr[], removeOnFailure: boolean): void {
    if (attrs.length === 0) return;
    const names = this.host.attributeNames(uuid);
    const fail = (i: number, a: MdevAttr, e: KernelError): never => {
      let tail = "";
      if (removeOnFailure) {
        try {
          this.host.remove(uuid);
          tail = "; the device was removed again";
        } catch (r) {
          tail = `; removing the device again failed too: ${r instanceof Error ? r.message : String(r)}`;
        }
      } else if (i > 0) {
        tail = `; attributes @{0}..@{${i - 1}} were applied`;
      }
      throw new KernelError(
        e.errno,
        `device ${uuid}: cannot set attribute @{${i}} ${a.name}=${a.value}: ${e.message}${tail}`,
      );
    };
    attrs.forEach((a, i) => {
      if (!names.includes(a.name)) {
        fail(
          i,
          a,
          new KernelError(Errno.ENOENT, `no such attribute (the device has: ${list([...names].sort(byteOrder))})`),
        );
      }
    });
    attrs.forEach((a, i) => {
      try {
        this.host.writeAttribute(uuid, a.name, a.value);
      } catch (e) {
        if (e instanceof KernelError) fail(i, a, e);
        throw e;
      }
    });
  }

  stop(p: ParamsOf<"stop">, warnings: string[]): ResultOf<"stop"> {
    const uuid = this.uuidOf(p.uuid);
    const run = this.running(uuid);
    if (!run) {
      const defs = this.loadDefinitions(warnings).filter((d) => d.uuid === uuid);
      throw new KernelError(
        Errno.ENODEV,
        `device ${uuid} is not running` +
          (defs.length > 0 ? ` (it is defined under ${defs.map((d) => d.parent).join(", ")})` : ""),
      );
    }
    const d = this.loadDefinitions(warnings).find((x) => x.uuid === uuid && x.parent === run.parent);
    const device = {
      uuid,
      parent: run.parent,
      mdevType: run.type,
      start: d?.definition.start ?? "manual",
      attrs: this.applied.get(uuid) ?? [],
    };
    this.withCallouts("stop", device, p.force, warnings, () => {
      try {
        this.host.remove(uuid);
      } catch (e) {
        if (e instanceof KernelError) throw new KernelError(e.errno, `cannot stop ${uuid}: ${e.message}`);
        throw e;
      }
    });
    this.applied.delete(uuid);
    return { uuid, parent: run.parent };
  }

  // ---- auto-start ----------------------------------------------------------------------------------------------

  /** mdevctl's start-parent-mdevs: starts every `auto` definition of a parent that is not running; never throws. */
  startParent(parent: string, warnings: string[]): AutostartReport {
    return this.autostart(parent, this.loadDefinitions(warnings), warnings);
  }

  /** Auto-starts the definitions of every parent present, parents in byte order. */
  autostartAll(warnings: string[]): AutostartReport[] {
    const defs = this.loadDefinitions(warnings);
    return [...this.host.parents()].sort(byteOrder).map((p) => this.autostart(p, defs, warnings));
  }

  private autostart(parent: string, defs: readonly StoredDefinition[], warnings: string[]): AutostartReport {
    const started: string[] = [];
    const failed: { uuid: string; message: string }[] = [];
    for (const d of defs) {
      if (d.parent !== parent || d.definition.start !== "auto") continue;
      try {
        const target = { parent, mdevType: d.definition.mdevType, attrs: d.definition.attrs };
        this.withCallouts("start", deviceOf(d), false, warnings, () => this.startDevice(d.uuid, target));
        started.push(d.uuid);
      } catch (e) {
        if (!(e instanceof KernelError)) throw e;
        failed.push({ uuid: d.uuid, message: e.describe() });
      }
    }
    return { parent, started, failed };
  }
}

function deviceOf(d: StoredDefinition): CalloutDevice {
  return {
    uuid: d.uuid,
    parent: d.parent,
    mdevType: d.definition.mdevType,
    start: d.definition.start,
    attrs: d.definition.attrs,
  };
}

function runningExtras(run: HostDevice): Partial<WireDevice> {
  return {
    ...(run.iommuGroup !== undefined ? { iommuGroup: run.iommuGroup } : {}),
    ...(run.sysfsPath !== undefined ? { sysfsPath: run.sysfsPath } : {}),
    ...(run.driver !== undefined ? { driver: run.driver } : {}),
    ...(run.vfioUserSocket !== undefined ? { vfioUserSocket: run.vfioUserSocket } : {}),
  };
}
