/**
 * `--poll-max-us`, shared by `vgpu serve` and `vgpu host`: how long a served client's socket is polled after each
 * message before the server sleeps (QEMU's poll-max-ns rule, in microseconds; 0 turns it off). Default 200 for both:
 * a client on another CPU answers a DMA_MAP/UNMAP in ~100-150 us here, and a shorter window missed it
 * (BENCHMARKS.md). In the daemon, whose one event loop serves every device and the control socket, a poll stops as
 * soon as any other fd of the loop has work (ChannelOptions.loopBusy), so no client can hold the others back.
 */
import { Errno, KernelError } from "../../core/index.ts";
import { MAX_POLL_NS } from "../../vfio-user/index.ts";
import { wholeNumberOf } from "./common.ts";

/** The commands' default window, microseconds. */
export const DEFAULT_POLL_MAX_US = 200;

/** Parses a `--poll-max-us` value (a string as commander passes it, or a number) into nanoseconds; EINVAL if bad. */
export function pollMaxNsOf(v: string | number): number {
  const n = wholeNumberOf(v);
  if (!Number.isSafeInteger(n) || n < 0 || n * 1000 > MAX_POLL_NS) {
    throw new KernelError(
      Errno.EINVAL,
      `--poll-max-us must be a whole number of microseconds from 0 (off) to ${MAX_POLL_NS / 1000}, got ${v}`,
    );
  }
  return n * 1000;
}
