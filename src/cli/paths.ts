/**
 * Where things live under the state directory (`<root>`), the one place that names them:
 * - `<root>/vgpu.sock`: the host's control socket; `<root>/<uuid>.sock`: a started device over vfio-user;
 * - `<root>/mdevctl.d/<parent>/<uuid>`: definitions (mdevctl's `/etc/mdevctl.d`);
 * - `<root>/scripts.d/callouts/` and `<root>/scripts.d/notifiers/`: callout and notifier scripts (mdevctl's
 *   `/usr/lib/mdevctl/scripts.d/...`), then `<root>/mdevctl.d/scripts.d/callouts/` and `.../notifiers/`, mdevctl's
 *   older location under its configuration folder, searched second as mdevctl does.
 * Pure: nothing here touches a file.
 */
import { join } from "node:path";

export const SOCKET_NAME = "vgpu.sock";

/** `--root`, else $VGPU_ROOT, else `$XDG_RUNTIME_DIR/vgpu`, else `/run/vgpu`. */
export function defaultRoot(env: NodeJS.ProcessEnv): string {
  if (env.VGPU_ROOT) return env.VGPU_ROOT;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, "vgpu");
  return "/run/vgpu";
}

export function socketPathOf(root: string): string {
  return join(root, SOCKET_NAME);
}

export function definitionsDirOf(root: string): string {
  return join(root, "mdevctl.d");
}

/** Callout script folders, searched in this order. */
export function calloutDirsOf(root: string): readonly string[] {
  return [join(root, "scripts.d", "callouts"), join(definitionsDirOf(root), "scripts.d", "callouts")];
}

/** Notifier script folders; every script in each is run. */
export function notifierDirsOf(root: string): readonly string[] {
  return [join(root, "scripts.d", "notifiers"), join(definitionsDirOf(root), "scripts.d", "notifiers")];
}
