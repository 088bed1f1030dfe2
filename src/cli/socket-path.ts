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
import { Errno, KernelError } from "../core/index.ts";

/** The longest UNIX socket path in bytes: sun_path's 108 bytes less the terminating NUL. */
export const UNIX_SOCKET_PATH_MAX = 107;

/** The daemon serves each started device on `<dir>/<uuid>.sock` (a canonical UUID is 36 characters). */
export function deviceSocketPathOf(dir: string, uuid: string): string {
  return join(dir, `${uuid}.sock`);
}

/** A UUID-shaped placeholder: the length of every device socket path under a folder. */
export const SAMPLE_UUID = "00000000-0000-0000-0000-000000000000";

/** Bytes a path takes in sun_path (UTF-8, without the NUL). */
export function socketPathBytes(path: string): number {
  return Buffer.byteLength(path, "utf8");
}

/**
 * Throws ENAMETOOLONG unless `path` fits in sun_path. `remedy` is what the user should do ("pick a shorter --socket
 * path"); `shown` is how the path is named in the sentence (default: the path itself, e.g. `<root>/<uuid>.sock` for a
 * pattern). An empty path is EINVAL.
 */
export function checkSocketPathLength(path: string, remedy: string, shown: string = path): void {
  if (path.length === 0) throw new KernelError(Errno.EINVAL, `the socket path is empty: ${remedy}`);
  const bytes = socketPathBytes(path);
  if (bytes > UNIX_SOCKET_PATH_MAX) {
    throw new KernelError(
      Errno.ENAMETOOLONG,
      `socket path ${shown} is ${bytes} bytes, longer than the ${UNIX_SOCKET_PATH_MAX} bytes a UNIX socket path can ` +
        `hold (sun_path is 108 bytes with its NUL): ${remedy}`,
      { path: shown, bytes, limit: UNIX_SOCKET_PATH_MAX },
    );
  }
}
