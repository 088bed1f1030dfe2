/** VERSION negotiation: QEMU 10.2's real message, defaults, malformed JSON, and a round-trip property. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Errno, isKernelError } from "../core/index.ts";
import { DEFAULT_CAPS, decodeVersion, encodeVersion, negotiate, parseCapsJson } from "./caps.ts";

const LIMITS = { maxMsgFds: 16, maxDataXferSize: 1 << 20, maxDmaMaps: 65535 };

/** What QEMU 10.2 sends (hw/vfio-user/proxy.c caps_json). */
const QEMU_JSON =
  '{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, ' +
  '"migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}';

function versionPayload(major: number, minor: number, json: string | undefined): Uint8Array {
  const j = json === undefined ? new Uint8Array() : Buffer.from(`${json}\0`, "utf8");
  const out = new Uint8Array(4 + j.length);
  new DataView(out.buffer).setUint16(0, major, true);
  new DataView(out.buffer).setUint16(2, minor, true);
  out.set(j, 4);
  return out;
}

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    if (isKernelError(e)) return e.errno;
    throw e;
  }
  return 0;
}

describe("VERSION negotiation", () => {
  it("answers QEMU 10.2 with 0.0, a short reply, and the limits of both sides", () => {
    const q = versionPayload(0, 0, QEMU_JSON);
    const client = decodeVersion(q);
    assert.equal(client.caps.maxMsgFds, 16);
    assert.equal(client.caps.writeMultiple, true);
    assert.deepEqual(client.caps.migration, { pgsize: 4096, maxBitmapSize: 268435456 });
    const { reply, negotiated } = negotiate(client, { ...LIMITS, maxDmaMaps: 1000 });
    const back = decodeVersion(reply);
    assert.equal(back.major, 0);
    assert.equal(back.minor, 0);
    assert.equal(back.caps.writeMultiple, true);
    assert.equal(back.caps.maxDmaMaps, 1000);
    assert.equal(back.caps.migration, undefined);
    // QEMU receives the reply into its own request's buffer.
    assert.ok(reply.length <= q.length, `reply ${reply.length} bytes, request ${q.length}`);
    assert.equal(reply[reply.length - 1], 0);
    assert.equal(negotiated.maxDmaMaps, 1000);
    assert.equal(negotiated.clientMaxDataXferSize, 1048576);
  });

  it("never answers a greater minor than the client's, and refuses another major", () => {
    assert.equal(negotiate(decodeVersion(versionPayload(0, 7, "{}")), LIMITS).negotiated.minor, 0);
    assert.equal(
      errnoOf(() => negotiate(decodeVersion(versionPayload(1, 0, "{}")), LIMITS)),
      Errno.EINVAL,
    );
  });

  it("takes the protocol defaults for absent data and members", () => {
    assert.deepEqual(decodeVersion(versionPayload(0, 0, undefined)).caps, DEFAULT_CAPS);
    assert.deepEqual(parseCapsJson('{"capabilities":{}}'), DEFAULT_CAPS);
    assert.deepEqual(parseCapsJson("{}"), DEFAULT_CAPS);
    assert.equal(parseCapsJson('{"capabilities":{"future_cap":[1,2]}}').maxMsgFds, 1);
  });

  it("rejects malformed data with EINVAL naming the problem", () => {
    for (const bad of [
      "not json",
      "[]",
      '{"capabilities": 3}',
      '{"capabilities":{"max_msg_fds":-1}}',
      '{"capabilities":{"max_data_xfer_size":1.5}}',
      '{"capabilities":{"pgsizes":512}}',
      '{"capabilities":{"write_multiple":"yes"}}',
      '{"capabilities":{"migration":7}}',
    ]) {
      assert.equal(
        errnoOf(() => parseCapsJson(bad)),
        Errno.EINVAL,
        bad,
      );
    }
    const noNul = versionPayload(0, 0, "{}").subarray(0, 6);
    assert.equal(
      errnoOf(() => decodeVersion(noNul)),
      Errno.EINVAL,
    );
    assert.equal(
      errnoOf(() => decodeVersion(new Uint8Array(3))),
      Errno.EINVAL,
    );
    assert.equal(
      errnoOf(() => negotiate(decodeVersion(versionPayload(0, 0, '{"capabilities":{"pgsizes":8192}}')), LIMITS)),
      Errno.EINVAL,
    );
  });

  it("round-trips any capabilities it can express", () => {
    const nat = fc.integer({ min: 0, max: 2 ** 40 });
    fc.assert(
      fc.property(
        fc.record({
          maxMsgFds: fc.integer({ min: 0, max: 253 }),
          maxDataXferSize: nat,
          maxDmaMaps: nat,
          pgsizes: fc.integer({ min: 1, max: 2 ** 20 }).map((n) => n * 4096),
          writeMultiple: fc.boolean(),
        }),
        fc.integer({ min: 0, max: 0xffff }),
        (caps, minor) => {
          const v = decodeVersion(encodeVersion(0, minor, caps));
          assert.deepEqual(v.caps, { ...caps });
          assert.equal(v.minor, minor);
        },
      ),
      { numRuns: 200 },
    );
  });
});
