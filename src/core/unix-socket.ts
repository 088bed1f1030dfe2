/**
 * The length rule for UNIX socket paths, checked before anything is created (the one copy: the vfio-user server,
 * `vgpu serve` and the `vgpu host` daemon all use it).
 *
 * A socket's path travels in `struct sockaddr_un`, whose `sun_path` holds 108 bytes including the terminating NUL,
 * so a path may be at most 107 bytes of UTF-8. Neither bind(2) through koffi nor Node's `listen()` refuses a longer
 * one cleanly (Node binds the path cut to 107 bytes, which can name a socket outside the intended folder). Touches
 * nothing.
 */
import { Errno } from "./errno.ts";
import { KernelError } from "./error.ts";

/** The longest UNIX socket path in bytes: sun_path's 108 bytes less the terminating NUL. */
export const UNIX_PATH_MAX = 107;

/** Bytes a path takes in sun_path (UTF-8, without the NUL). */
export function socketPathBytes(path: string): number {
  return Buffer.byteLength(path, "utf8");
}

/**
 * Throws ENAMETOOLONG unless `path` fits in sun_path (EINVAL for an empty path). `remedy` says what to do; `shown` is
 * how the path is named in the sentence (default: the path itself, e.g. `<root>/<uuid>.sock` for a pattern).
 */
export function checkSocketPath(path: string, remedy = "pick a shorter socket path", shown: string = path): void {
  if (path.length === 0) throw new KernelError(Errno.EINVAL, `the socket path is empty: ${remedy}`);
  const bytes = socketPathBytes(path);
  if (bytes > UNIX_PATH_MAX) {
    throw new KernelError(
      Errno.ENAMETOOLONG,
      `socket path ${shown} is ${bytes} bytes, longer than the ${UNIX_PATH_MAX} bytes a UNIX socket path can hold ` +
        `(sun_path is 108 bytes with its NUL): ${remedy}`,
      { path: shown, bytes, limit: UNIX_PATH_MAX },
    );
  }
}
