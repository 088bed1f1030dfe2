/**
 * The service's host API over a real model system: started devices are served over vfio-user on <dir>/<uuid>.sock
 * with the daemon's polling window, the socket goes before the device, and a device that cannot be served is not
 * left running.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Errno, isKernelError, TraceRecorder } from "../core/index.ts";
import { createSystem, parseSystemConfig } from "../scenario/index.ts";
import { systemHostApi } from "./host-api.ts";

const U1 = "11111111-1111-4111-8111-111111111111";
const U2 = "22222222-2222-4222-8222-222222222222";
const base = mkdtempSync(join(tmpdir(), "vgpu-hostapi-"));
after(() => rmSync(base, { recursive: true, force: true }));

function mttySystem() {
  return createSystem(parseSystemConfig({ memory: "256 MiB", parents: [{ kind: "mtty", ports: 4 }] }));
}

describe("systemHostApi", () => {
  it("serves each started device with the daemon's polling window, and removes the socket before the device", () => {
    for (const pollMaxNs of [undefined, 50_000]) {
      const system = mttySystem();
      const rec = new TraceRecorder(system.host.tracer);
      const dir = mkdtempSync(join(base, "serve-"));
      const api = systemHostApi(system, { serveDir: dir, ...(pollMaxNs !== undefined ? { pollMaxNs } : {}) });
      api.create("mtty", "mtty-1", U1);
      const sock = join(dir, `${U1}.sock`);
      assert.equal(existsSync(sock), true);
      assert.equal(api.devices()[0]?.vfioUserSocket, sock);
      const listen = rec.named("vfiouser.listen");
      assert.equal(listen.length, 1);
      assert.equal(listen[0]!.fields.pollMaxNs, pollMaxNs ?? 0, "off unless the daemon was told to poll");
      api.remove(U1);
      assert.equal(existsSync(sock), false);
      assert.equal(system.mdev.device(U1), undefined);
      rec.stop();
    }
  });

  it("does not leave a device running that it could not serve", () => {
    const system = mttySystem();
    const dir = mkdtempSync(join(base, "taken-"));
    // A regular file where the socket goes: the server cannot bind, and the device is removed again.
    writeFileSync(join(dir, `${U2}.sock`), "not a socket");
    const api = systemHostApi(system, { serveDir: dir });
    assert.throws(() => api.create("mtty", "mtty-1", U2), isKernelError);
    assert.equal(system.mdev.device(U2), undefined);
    assert.deepEqual(api.devices(), []);
  });

  it("refuses a polling window outside 0..10 ms at the device's start, leaving nothing running", () => {
    const system = mttySystem();
    const dir = mkdtempSync(join(base, "bad-"));
    const api = systemHostApi(system, { serveDir: dir, pollMaxNs: 10_000_001 });
    assert.throws(
      () => api.create("mtty", "mtty-1", U1),
      (e: unknown) => isKernelError(e) && e.errno === Errno.EINVAL && /pollMaxNs/.test(e.message),
    );
    assert.equal(system.mdev.device(U1), undefined);
    assert.equal(existsSync(join(dir, `${U1}.sock`)), false);
  });
});
