/**
 * `--poll-max-us`, shared by `vgpu serve` and `vgpu host`: how long a served client's socket is polled after each
 * message before the server sleeps (QEMU's poll-max-ns rule, in microseconds; 0 turns it off). The defaults differ:
 * `vgpu serve` serves one device, whose client owns the event loop, so spinning delays nobody else (default 200);
 * the `vgpu host` daemon shares one loop among every device and its control socket, so it polls only when told to
 * (default 0), and then one device's client may delay the others by up to the window per message.
 */
import { Errno, KernelError } from "../../core/index.ts";
import { MAX_POLL_NS } from "../../vfio-user/index.ts";

/** `vgpu serve`'s default window, microseconds. */
export const DEFAULT_SERVE_POLL_MAX_US = 200;
/** `vgpu host`'s default window: off. */
export const DEFAULT_HOST_POLL_MAX_US = 0;

/** Parses a `--poll-max-us` value (a string as commander passes it, or a number) into nanoseconds; EINVAL if bad. */
export function pollMaxNsOf(v: string | number): number {
  const n = typeof v === "number" ? v : /^\d+$/.test(v.trim()) ? Number(v.trim()) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 0 || n * 1000 > MAX_POLL_NS) {
    throw new KernelError(
      Errno.EINVAL,
      `--poll-max-us must be a whole number of microseconds from 0 (off) to ${MAX_POLL_NS / 1000}, got ${v}`,
    );
  }
  return n * 1000;
}
