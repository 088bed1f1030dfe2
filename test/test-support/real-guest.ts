/**
 * What the real-guest tests share: where QEMU and the guest image are ($QEMU, default the one
 * ../shared/tools/build-qemu-vfio-user.sh builds; $VGPU_GUEST_DIR, default the one scripts/guest/build-image.sh
 * builds), the sentence naming what is missing, and `runGuest`, which runs scripts/guest/run.sh in its own process
 * group so that a timeout takes QEMU and the server down with it.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
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
