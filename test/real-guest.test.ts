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
import { test } from "node:test";
import { GUEST_LIMIT_MS, guestMissing, runGuest } from "./test-support/real-guest.ts";

test("a real Debian guest binds mtty-2 with 8250_pci: loopback and interrupts on both ports", {
  timeout: GUEST_LIMIT_MS + 30_000,
}, async (t) => {
  const absent = guestMissing();
  if (absent.length > 0) {
    t.skip(absent.join("; "));
    return;
  }
  const { code, out } = await runGuest(["--device", "mtty-2", "--timeout", "180"]);
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
