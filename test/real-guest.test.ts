/**
 * A real Linux guest drives mtty-2 over vfio-user: `scripts/guest/run.sh --device mtty-2` boots bookworm's 6.1 kernel
 * under QEMU (TCG) with the device served by `vgpu serve`, and the guest's own 8250_pci driver must bind it, loop a
 * short and a longer-than-FIFO message back on both ports and take the device's interrupts.
 *
 * Runs only where QEMU with vfio-user-pci and the guest image exist (a clean machine has neither, so CI skips it):
 * QEMU from $QEMU (default /tmp/qemu-vfio-user/src/build/qemu-system-x86_64, built by
 * ../shared/tools/build-qemu-vfio-user.sh) and the image from $VGPU_GUEST_DIR (default /tmp/vgpu-guest, built by
 * scripts/guest/build-image.sh). A boot takes ~10-25 s; the test gives it 240 s.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

const REPO = new URL("..", import.meta.url).pathname;
const QEMU = process.env.QEMU ?? "/tmp/qemu-vfio-user/src/build/qemu-system-x86_64";
const IMAGE = process.env.VGPU_GUEST_DIR ?? "/tmp/vgpu-guest";
const LIMIT_MS = 240_000;

function missing(): string[] {
  const out: string[] = [];
  if (!existsSync(QEMU)) {
    out.push(
      `no QEMU at ${QEMU} (build it: ../shared/tools/build-qemu-vfio-user.sh /tmp/qemu-vfio-user, or set QEMU=)`,
    );
  }
  if (!existsSync(join(IMAGE, "vmlinuz")) || !existsSync(join(IMAGE, "initrd.img"))) {
    out.push(`no guest image in ${IMAGE} (build it: scripts/guest/build-image.sh ${IMAGE}, or set VGPU_GUEST_DIR=)`);
  }
  return out;
}

/** Runs the script in its own process group, so that a timeout takes QEMU and the server down with it. */
function run(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn("bash", [join(REPO, "scripts/guest/run.sh"), ...args], {
      cwd: REPO,
      env: { ...process.env, QEMU, VGPU_GUEST_DIR: IMAGE },
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
      out += `\n(killed after ${LIMIT_MS} ms)\n`;
      try {
        process.kill(-child.pid!, "SIGTERM");
      } catch {
        // already gone
      }
    }, LIMIT_MS);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

test("a real Debian guest binds mtty-2 with 8250_pci: loopback and interrupts on both ports", {
  timeout: LIMIT_MS + 30_000,
}, async (t) => {
  const absent = missing();
  if (absent.length > 0) {
    t.skip(absent.join("; "));
    return;
  }
  const { code, out } = await run(["--device", "mtty-2", "--timeout", "180"]);
  if (out.startsWith("SKIP:")) {
    t.skip(out.trim()); // e.g. this QEMU has no vfio-user-pci, or its option ROMs are missing
    return;
  }
  assert.equal(code, 0, out);
  assert.match(out, /^CHECK driver bound: PASS/m, out);
  assert.match(out, /^CHECK ports: PASS \(2: ttyS4 ttyS5/m, out);
  for (const port of ["ttyS4", "ttyS5"]) {
    for (const check of ["loopback short", "loopback long", "tx/rx counters", "interrupts"]) {
      assert.match(out, new RegExp(`^CHECK ${port} ${check}: PASS`, "m"), out);
    }
  }
  assert.match(out, /^VERDICT: PASS$/m, out);
  assert.match(out, /^RESULT: PASS/m, out);
});
