/**
 * The files-only commands without a host: `list -d`, `define`, `undefine` and `modify` (not `--live`) on
 * `<root>/mdevctl.d`, as mdevctl works on /etc/mdevctl.d. The same MdevService the host runs is used in process,
 * with the same definition store and callout scripts, over a host that has no parents and no running devices.
 *
 * What a missing host changes, and says (a warning on stderr):
 * - `define` and `modify -t` cannot check the parent and type against a host: they are written as `-f` writes
 *   them, and the warning names the socket where no host answered;
 * - `list -d` shows no definition as active (nothing runs without a host).
 * Everything that needs a running host (types, list of running devices, start, stop, `modify --live`,
 * start-parent-mdevs) never comes here: those report that no host runs under the `--root` they used.
 */
import { Errno, KernelError } from "../core/index.ts";
import { Callouts } from "./callouts.ts";
import { DefinitionStore } from "./definitions.ts";
import { definitionsDirOf, socketPathOf } from "./paths.ts";
import type { ParamsOf, ResultOf } from "./protocol.ts";
import { type MdevHostApi, MdevService } from "./service.ts";

export type OfflineMethod = "list" | "define" | "undefine" | "modify";

/** A host with nothing on it: what the service sees when no host runs. */
function absentHost(root: string): MdevHostApi {
  const none = (): never => {
    throw new KernelError(
      Errno.ENODEV,
      `no host is running at ${socketPathOf(root)}: start one with \`vgpu host --root ${root}\``,
    );
  };
  return {
    parents: () => [],
    types: none,
    devices: () => [],
    create: none,
    remove: none,
    attributeNames: () => [],
    writeAttribute: none,
  };
}

/** Runs one files-only method on `<root>` in process; `warn` gets the warnings, as the client's would. */
export function callOffline<M extends OfflineMethod>(
  root: string,
  method: M,
  params: ParamsOf<M>,
  warn: (warnings: readonly string[]) => void,
): ResultOf<M> {
  const warnings: string[] = [];
  const service = new MdevService({
    host: absentHost(root),
    store: new DefinitionStore({ dir: definitionsDirOf(root) }),
    callouts: new Callouts({ root }),
    root,
    hostChecks: false,
  });
  if (method === "modify" && (params as ParamsOf<"modify">).live) {
    throw new KernelError(
      Errno.ENOENT,
      `\`modify --live\` changes a running device, and no host is running at ${socketPathOf(root)}: start one with ` +
        `\`vgpu host --root ${root}\``,
    );
  }
  try {
    const result = service.dispatch(method, params, warnings);
    const p = params as { readonly force?: boolean; readonly type?: string };
    if ((method === "define" || (method === "modify" && p.type !== undefined)) && p.force !== true) {
      warnings.push(
        `no host is running at ${socketPathOf(root)}, so the parent and type were not checked against one ` +
          "(as with -f); `vgpu start` checks them when a host runs",
      );
    }
    return result;
  } finally {
    warn(warnings);
  }
}
