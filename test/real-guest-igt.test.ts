/**
 * intel-gpu-tools in a real guest, on the vGPU: `scripts/guest/run.sh --device i915-GVTg_V5_4 --igt LIST` boots the
 * image (built with igt, scripts/guest/build-image.sh), lets i915 bind, runs each igt test in the guest and reports
 * igt's own verdict per test; the server's isolation checker watches every DMA. Each test must end in SUCCESS (igt's
 * exit code 0, no subtest FAIL) with 0 violations.
 *
 * Runs the quick tests (~1 minute in all under TCG). `gem_blits@basic` reads ~100 MB of tiled buffers through GTT
 * mmaps, each 8-byte access a vfio-user round trip, and takes tens of minutes under TCG: it runs only with
 * VGPU_IGT_SLOW=1 (README, "intel-gpu-tools in the guest", has its record). Skips where QEMU, the image, or igt in
 * the image is absent (CI).
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { assertIsolationClean, GUEST_IMAGE, guestMissing, runGuestWithServerLog } from "./test-support/real-guest.ts";

const QUICK = [
  "core_getversion",
  "i915_query",
  "gem_exec_basic@basic",
  "gem_exec_nop@basic-series",
  "gem_exec_store@basic",
  "gem_ctx_create@basic",
];
const SLOW = process.env.VGPU_IGT_SLOW === "1" ? ["gem_blits@basic"] : [];
const LIST = [...QUICK, ...SLOW];
/** The whole run's bound: a boot, the quick tests, and (VGPU_IGT_SLOW) gem_blits' hour at most. */
const LIMIT_S = SLOW.length > 0 ? 4200 : 600;

function igtMissing(): string | undefined {
  const manifest = join(GUEST_IMAGE, "manifest.txt");
  if (!existsSync(manifest) || !/^igt-tests: /m.test(readFileSync(manifest, "utf8"))) {
    return `the image in ${GUEST_IMAGE} has no igt (rebuild it: scripts/guest/build-image.sh ${GUEST_IMAGE})`;
  }
  return undefined;
}

test(`igt in a real Debian guest on the vGPU: ${LIST.join(", ")} end in SUCCESS, 0 isolation violations`, {
  timeout: (LIMIT_S + 60) * 1000,
}, async (t) => {
  const absent = guestMissing();
  const noIgt = absent.length === 0 ? igtMissing() : undefined;
  if (absent.length > 0 || noIgt !== undefined) {
    t.skip([...absent, ...(noIgt !== undefined ? [noIgt] : [])].join("; "));
    return;
  }
  const r = await runGuestWithServerLog(
    [
      "--device",
      "i915-GVTg_V5_4",
      "--igt",
      LIST.join(","),
      "--igt-timeout",
      String(LIMIT_S - 120),
      "--timeout",
      String(LIMIT_S),
    ],
    (LIMIT_S + 30) * 1000,
  );
  if ("skipped" in r) {
    t.skip(r.skipped);
    return;
  }
  const { code, out, server, both } = r;
  for (const spec of LIST) {
    const m = new RegExp(`^IGT ${spec}: (\\S+) \\(([\\d.]+) s, exit (\\d+)\\)`, "m").exec(out);
    assert.ok(m !== null, `no verdict for ${spec}\n${both}`);
    assert.equal(m[1], "SUCCESS", `${spec}: igt's verdict\n${both}`);
    t.diagnostic(`${spec}: ${m[1]} in ${m[2]} s`);
  }
  assert.match(out, /^RESULT: PASS/m, both);
  assertIsolationClean(server, both);
  assert.match(server, /failsafe no/, both);
  assert.equal(code, 0, both);
});
