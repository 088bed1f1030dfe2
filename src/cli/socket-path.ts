/**
 * The length rule for UNIX socket paths, checked before anything is created.
 *
 * A socket's path travels in `struct sockaddr_un`, whose `sun_path` holds 108 bytes including the terminating NUL,
 * so a path may be at most 107 bytes of UTF-8. Node's `listen()` does not refuse a longer one: it binds the path cut
 * to 107 bytes, which can name a socket outside the intended folder, and then nothing finds the socket at the path
 * that was asked for. So every path the daemon (or `vgpu serve`) will bind is checked up front with
 * `checkSocketPathLength`, which throws ENAMETOOLONG naming the path, its length and the limit.
 *
 * Nothing here touches a file.
 */
import { join } from "node:path";
import { checkSocketPath, UNIX_PATH_MAX } from "../core/index.ts";

/** The longest UNIX socket path in bytes (core's rule). */
export const UNIX_SOCKET_PATH_MAX = UNIX_PATH_MAX;

/** The daemon serves each started device on `<dir>/<uuid>.sock` (a canonical UUID is 36 characters). */
export function deviceSocketPathOf(dir: string, uuid: string): string {
  return join(dir, `${uuid}.sock`);
}

/** A UUID-shaped placeholder: the length of every device socket path under a folder. */
export const SAMPLE_UUID = "00000000-0000-0000-0000-000000000000";

/** Throws ENAMETOOLONG unless `path` fits in sun_path: core's `checkSocketPath`, with the daemon's wording. */
export function checkSocketPathLength(path: string, remedy: string, shown: string = path): void {
  checkSocketPath(path, remedy, shown);
}
