import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  type BarSpec,
  type MsixSpec,
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_MSI,
  PCI_CAP_ID_MSIX,
  PCI_COMMAND,
  PCI_MSI_FLAGS,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PCI_MSIX_PBA,
  PCI_MSIX_TABLE,
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

describe("PciConfigSpace: MSI-X capability", () => {
  const withMsix = (msix: MsixSpec, bars: readonly BarSpec[] = gpuLike().spec.bars) =>
    new PciConfigSpace({ vendorId: 0x8086, deviceId: 0x1912, classCode: 0x030000, bars, msiVectors: 1, msix });

  it("follows MSI in the list with table size N-1, Function Mask and Enable writable, BIR/offsets read-only", () => {
    const c = withMsix({ vectors: 16, tableBar: 0, tableOffset: 0x2000, pbaBar: 2, pbaOffset: 0x3000 });
    const x = c.findCapability(PCI_CAP_ID_MSIX);
    assert.equal(x, c.msixCap);
    assert.equal(x, 0x58, "after the 24-byte MSI capability at 0x40");
    assert.equal(c.read(0x40 + 1, 1), x, "MSI's next pointer");
    assert.equal(c.read(x, 2), PCI_CAP_ID_MSIX, "id 0x11, end of the list");
    assert.equal(c.read(x + PCI_MSIX_FLAGS, 2), 15);
    assert.equal(c.read(x + PCI_MSIX_TABLE, 4), 0x2000, "offset 0x2000, BIR 0");
    assert.equal(c.read(x + PCI_MSIX_PBA, 4), 0x3002, "offset 0x3000, BIR 2");
    c.write(x + PCI_MSIX_FLAGS, 2, 0xffff);
    assert.equal(c.read(x + PCI_MSIX_FLAGS, 2), PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL | 15);
    c.write(x + PCI_MSIX_TABLE, 4, 0xffffffff);
    c.write(x + PCI_MSIX_PBA, 4, 0);
    assert.deepEqual(c.msix(), {
      enabled: true,
      functionMasked: true,
      vectors: 16,
      tableBar: 0,
      tableOffset: 0x2000,
      pbaBar: 2,
      pbaOffset: 0x3000,
    });
    assert.equal(c.msixEnabled(), true);
    assert.equal(c.msixFunctionMasked(), true);
    c.reset();
    assert.equal(c.read(x + PCI_MSIX_FLAGS, 2), 15, "reset clears Enable and Function Mask");
    assert.equal(c.msixEnabled(), false);
  });

  it("leaves BAR sizing alone", () => {
    const c = withMsix({ vectors: 2048, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 0x8000 });
    c.write(PCI_BASE_ADDRESS_0, 4, 0xffffffff);
    c.write(PCI_BASE_ADDRESS_0 + 8, 4, 0xffffffff);
    c.write(PCI_BASE_ADDRESS_0 + 12, 4, 0xffffffff);
    assert.equal(c.read(PCI_BASE_ADDRESS_0, 4), 0xff000004);
    assert.equal(c.read(PCI_BASE_ADDRESS_0 + 8, 4), 0xf000000c);
    assert.equal(c.read(PCI_BASE_ADDRESS_0 + 12, 4), 0xffffffff);
    assert.equal(c.msix().vectors, 2048);
  });

  it("tells its listener about writes that reach Message Control, and only those", () => {
    const c = withMsix({ vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x40 });
    let calls = 0;
    c.setMsixControlListener(() => calls++);
    c.write(c.msixCap, 4, 0x80000000); // dword write covering id, next and control
    c.write(c.msixCap + 3, 1, 0);
    c.write(c.msixCap + PCI_MSIX_TABLE, 4, 0);
    c.write(c.msixCap, 2, 0);
    c.write(PCI_COMMAND, 2, 0);
    assert.equal(calls, 2);
  });

  it("rejects tables and PBAs that are not in a memory BAR, misaligned, too large or overlapping", () => {
    const bars: BarSpec[] = [
      { index: 0, size: 0x1000, kind: "mem32" },
      { index: 1, size: 64, kind: "io" },
    ];
    const bad: [MsixSpec, RegExp][] = [
      [{ vectors: 0, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 }, /1 to 2048/],
      [{ vectors: 2049, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 }, /1 to 2048/],
      [{ vectors: 4, tableBar: 1, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 }, /BIR 1 does not name a memory BAR/],
      [{ vectors: 4, tableBar: 3, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800 }, /BIR 3/],
      [{ vectors: 4, tableBar: 0, tableOffset: 4, pbaBar: 0, pbaOffset: 0x800 }, /multiple of 8/],
      [{ vectors: 4, tableBar: 0, tableOffset: 0xfc8, pbaBar: 0, pbaOffset: 0x800 }, /runs past the end of BAR0/],
      [{ vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x1000 }, /PBA .* runs past/],
      [{ vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x38 }, /overlap/],
    ];
    for (const [spec, re] of bad) assert.throws(() => withMsix(spec, bars), re);
    assert.equal(withMsix({ vectors: 4, tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x40 }, bars).msixCap, 0x58);
  });
});
