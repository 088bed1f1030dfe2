/**
 * A real Linux guest's i915 binds the vGPU and runs its contexts: `scripts/guest/run.sh --device i915-GVTg_V5_4`
 * (`vgpu serve`: a host driver with execlists, real time, the isolation checker attached) boots bookworm's 6.1
 * kernel under QEMU (TCG), and
 * `modprobe i915` must end in "[drm] Initialized i915" with no error line, the GPU not wedged, every engine idle with
 * its ring run to its end, and on the server's side every guest context completed with 0 isolation violations.
 *
 * Runs only where QEMU with vfio-user-pci and the guest image exist (CI skips it), as test/real-guest.test.ts does.
 * A boot takes ~15-25 s; the test gives it 240 s.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  assertIsolationClean,
  GUEST_LIMIT_MS,
  guestMissing,
  runGuestWithServerLog,
} from "./test-support/real-guest.ts";

test("a real Debian guest's i915 binds the vGPU: initialized, not wedged, every engine's contexts run, 0 violations", {
  timeout: GUEST_LIMIT_MS + 30_000,
}, async (t) => {
  const absent = guestMissing();
  if (absent.length > 0) {
    t.skip(absent.join("; "));
    return;
  }
  const r = await runGuestWithServerLog(["--device", "i915-GVTg_V5_4", "--timeout", "180", "--expect-bound"]);
  if ("skipped" in r) {
    t.skip(r.skipped);
    return;
  }
  const { code, out, server, both } = r;
  assert.equal(code, 0, both);
  assert.match(out, /\[drm\] Initialized i915/, both);
  assert.doesNotMatch(out, /\*ERROR\*|timed out|declaring it wedged/, both);
  assert.match(out, /^i915_wedged: 0$/m, both);
  for (const engine of ["rcs0", "bcs0", "vcs0", "vecs0"]) {
    const block = new RegExp(
      `^  ${engine}\\n(?:    .*\\n)*?    RING_HEAD:  (0x[0-9a-f]+)\\n    RING_TAIL:  (0x[0-9a-f]+)`,
      "m",
    );
    const m = block.exec(out);
    assert.ok(m !== null, `${engine} in i915_engine_info\n${both}`);
    assert.equal(m[1], m[2], `${engine}: HEAD == TAIL (the ring ran to its end)`);
    assert.notEqual(m[1], "0x00000000", `${engine}: requests ran`);
  }
  assert.match(out, /^RESULT: BOUND/m, both);
  assertIsolationClean(server, both);
  assert.match(server, /"engineErrors":0,"rejected":\{"context":0,"ppgtt":0,"ring":0,"command":0,"host":0\}/, both);
  for (const e of ["rcs", "bcs", "vcs", "vecs"]) {
    assert.match(server, new RegExp(`  ${e}: virtual execlist (\\d+) ELSP, \\1 completed, 0 failed`), both);
  }
});
