/**
 * What the real-guest tests share: where QEMU and the guest image are ($QEMU, default the one
 * ../shared/tools/build-qemu-vfio-user.sh builds; $VGPU_GUEST_DIR, default the one scripts/guest/build-image.sh
 * builds), the sentence naming what is missing, and `runGuest`, which runs scripts/guest/run.sh in its own process
 * group so that a timeout takes QEMU and the server down with it.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const REPO = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
export const QEMU = process.env.QEMU ?? "/tmp/qemu-vfio-user/src/build/qemu-system-x86_64";
export const GUEST_IMAGE = process.env.VGPU_GUEST_DIR ?? "/tmp/vgpu-guest";
/** How long one boot may take, whole (a boot takes ~10-25 s under TCG here). */
export const GUEST_LIMIT_MS = 240_000;

/** What is missing to boot a real guest (empty: both QEMU and the image are there). */
export function guestMissing(): string[] {
  const out: string[] = [];
  if (!existsSync(QEMU)) {
    out.push(
      `no QEMU at ${QEMU} (build it: ../shared/tools/build-qemu-vfio-user.sh /tmp/qemu-vfio-user, or set QEMU=)`,
    );
  }
  if (!existsSync(join(GUEST_IMAGE, "vmlinuz")) || !existsSync(join(GUEST_IMAGE, "initrd.img"))) {
    out.push(
      `no guest image in ${GUEST_IMAGE} (build it: scripts/guest/build-image.sh ${GUEST_IMAGE}, or set VGPU_GUEST_DIR=)`,
    );
  }
  return out;
}

/** Runs scripts/guest/run.sh with `args` (killed after `limitMs`); its exit code and everything it printed. */
export function runGuest(args: string[], limitMs = GUEST_LIMIT_MS): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn("bash", [join(REPO, "scripts/guest/run.sh"), ...args], {
      cwd: REPO,
      env: { ...process.env, QEMU, VGPU_GUEST_DIR: GUEST_IMAGE },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    let out = "";
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
    });
    child.stderr.on("data", (b: Buffer) => {
      out += b.toString();
    });
    const timer = setTimeout(() => {
      out += `\n(killed after ${limitMs} ms)\n`;
      try {
        process.kill(-child.pid!, "SIGTERM");
      } catch {
        // already gone
      }
    }, limitMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/**
 * Boots with `args` and `--keep-log` in a temporary folder (removed after): the exit code, what run.sh printed, the
 * server's log, and both together for assertion messages; undefined when run.sh said SKIP (with its line in `skipped`).
 */
export async function runGuestWithServerLog(
  args: string[],
  limitMs = GUEST_LIMIT_MS,
): Promise<{ code: number | null; out: string; server: string; both: string } | { skipped: string }> {
  const dir = mkdtempSync(join(tmpdir(), "vgpu-real-guest-"));
  try {
    const log = join(dir, "guest.log");
    const { code, out } = await runGuest([...args, "--keep-log", log], limitMs);
    if (out.startsWith("SKIP:")) return { skipped: out.trim() };
    const server = existsSync(`${log}.server`) ? readFileSync(`${log}.server`, "utf8") : "";
    return { code, out, server, both: `${out}\n--- server ---\n${server}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The server's isolation checker saw every DMA piece as the vGPU's and counted no violation. */
export function assertIsolationClean(server: string, both: string): void {
  assert.match(
    server,
    /isolation checker: (\d+) DMA piece\(s\), \d+ bytes checked, \1 of them the vGPU's; 0 violation\(s\)/,
    both,
  );
}
