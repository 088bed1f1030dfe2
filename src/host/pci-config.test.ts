import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_MSI,
  PCI_COMMAND,
  PCI_MSI_FLAGS,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PciConfigSpace,
} from "./pci-config.ts";

const gpuLike = () =>
  new PciConfigSpace({
    vendorId: 0x8086,
    deviceId: 0x1912,
    classCode: 0x030000,
    revision: 6,
    interruptPin: 1,
    bars: [
      { index: 0, size: 16 * 1024 * 1024, kind: "mem64" },
      { index: 2, size: 256 * 1024 * 1024, kind: "mem64", prefetchable: true },
      { index: 4, size: 64, kind: "io" },
    ],
    msiVectors: 1,
  });

describe("PciConfigSpace", () => {
  it("holds identity fields read-only", () => {
    const c = gpuLike();
    assert.equal(c.read(0, 4), 0x19128086);
    c.write(0, 4, 0);
    assert.equal(c.read(0, 2), 0x8086);
    assert.equal(c.read(0x08, 4), 0x03000006);
    assert.equal(c.read(0x3d, 1), 1);
  });
  it("answers BAR sizing probes as firmware expects", () => {
    const c = gpuLike();
    // 64-bit 16 MiB BAR0: low dword reads ~(size-1) | type bits, high dword all ones.
    c.write(PCI_BASE_ADDRESS_0, 4, 0xffffffff);
    c.write(PCI_BASE_ADDRESS_0 + 4, 4, 0xffffffff);
    assert.equal(c.read(PCI_BASE_ADDRESS_0, 4), 0xff000004);
    assert.equal(c.read(PCI_BASE_ADDRESS_0 + 4, 4), 0xffffffff);
    // Prefetchable 64-bit BAR2.
    c.write(PCI_BASE_ADDRESS_0 + 8, 4, 0xffffffff);
    assert.equal(c.read(PCI_BASE_ADDRESS_0 + 8, 4), 0xf000000c);
    // I/O BAR4 of 64 bytes.
    c.write(PCI_BASE_ADDRESS_0 + 16, 4, 0xffffffff);
    assert.equal(c.read(PCI_BASE_ADDRESS_0 + 16, 4), 0xffffffc1);
    // Unimplemented BAR5 reads 0.
    c.write(PCI_BASE_ADDRESS_0 + 20, 4, 0xffffffff);
    assert.equal(c.read(PCI_BASE_ADDRESS_0 + 20, 4), 0);
    c.setBarAddress(0, 0x2_0000_0000 + 0x100_0000);
    assert.equal(c.barAddress(0), 0x2_0100_0000);
    c.setBarAddress(2, 0xc000_0000);
    assert.equal(c.barAddress(2), 0xc000_0000);
  });
  it("decodes any size probe back to the BAR size", () => {
    fc.assert(
      fc.property(fc.integer({ min: 4, max: 36 }), fc.boolean(), (k, is64) => {
        const size = 2 ** k;
        if (!is64 && k > 31) return true;
        const c = new PciConfigSpace({
          vendorId: 1,
          deviceId: 2,
          classCode: 0,
          bars: [{ index: 0, size, kind: is64 ? "mem64" : "mem32" }],
        });
        c.write(0x10, 4, 0xffffffff);
        if (is64) c.write(0x14, 4, 0xffffffff);
        const lo = (c.read(0x10, 4) & ~0xf) >>> 0;
        const hi = is64 ? c.read(0x14, 4) : 0xffffffff;
        const mask = hi * 2 ** 32 + lo;
        return 2 ** 64 - mask === size || 2 ** 64 - mask - size < 2 ** 12; // float rounding at 2^64
      }),
    );
  });
  it("has an MSI capability in the list and resets writable state", () => {
    const c = gpuLike();
    assert.equal(c.read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST, PCI_STATUS_CAP_LIST);
    const m = c.findCapability(PCI_CAP_ID_MSI);
    assert.equal(m, 0x40);
    c.write(m + 4, 4, 0xfee00000);
    c.write(m + 12, 2, 0x4041);
    c.write(m + PCI_MSI_FLAGS, 2, 1);
    assert.deepEqual(c.msi(), { enabled: true, vectors: 1, address: 0xfee00000, data: 0x4041 });
    c.write(PCI_COMMAND, 2, 0x6);
    assert.equal(c.busMasterEnabled(), true);
    c.reset();
    assert.equal(c.busMasterEnabled(), false);
    assert.equal(c.msi().enabled, false);
    assert.equal(c.read(0, 2), 0x8086);
    assert.equal(c.findCapability(PCI_CAP_ID_MSI), 0x40);
  });
  it("rejects bad accesses and bad BARs", () => {
    const c = gpuLike();
    assert.throws(() => c.read(0, 3), /1, 2 or 4/);
    assert.throws(() => c.read(255, 2), /past the 256-byte/);
    assert.throws(
      () =>
        new PciConfigSpace({ vendorId: 1, deviceId: 1, classCode: 0, bars: [{ index: 0, size: 100, kind: "mem32" }] }),
      /power of two/,
    );
    assert.throws(
      () =>
        new PciConfigSpace({ vendorId: 1, deviceId: 1, classCode: 0, bars: [{ index: 5, size: 4096, kind: "mem64" }] }),
      /invalid/,
    );
  });
});
