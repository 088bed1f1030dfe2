/**
 * The VMM provides the guest's platform: `VmmGuestPlatform` has the shape of guest/platform.ts's `GuestPlatform` (a
 * compile-time check: the two folders are siblings and only meet here, in tests and in the scenario runner), and each
 * part reaches what it should: RAM through the VMM's mappings, pages above 1 MiB, the device's BAR and config space
 * where the VMM placed them, guest time over the host's virtual clock.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { gpa, PAGE_SIZE } from "../core/index.ts";
import type { GuestPlatform } from "../guest/index.ts";
import { PCI_VENDOR_ID } from "../host/index.ts";
import { GUEST_ALLOC_START } from "./guest-pages.ts";
import { VmmGuestPlatform } from "./guest-platform.ts";
import { createMdev, pinParent, vmmTestHost } from "./testing.ts";
import { Vmm } from "./vmm.ts";

const MiB = 1024 * 1024;

function setup() {
  const h = vmmTestHost();
  const parent = pinParent();
  h.mdev.registerParent(parent);
  const sysfsdev = createMdev(h, "pintest", "pintest-pin", "7a1c0c7e-0000-4000-8000-00000000b001");
  const vmm = Vmm.create(h.host, { name: "vm1", memoryBytes: 64 * MiB, rlimitMemlockBytes: 64 * MiB });
  const device = vmm.attach({ sysfsdev });
  // What the guest driver is handed: the compiler checks the VMM's platform against the guest's interface here.
  const platform: GuestPlatform = new VmmGuestPlatform(vmm, device, h.clock);
  return { h, vmm, device, platform };
}

describe("VmmGuestPlatform", () => {
  it("gives the guest its RAM, pages above 1 MiB, the device where the VMM placed it, and time", () => {
    const { h, vmm, device, platform } = setup();
    try {
      const at = platform.pages.allocPages(2);
      assert.ok(at >= GUEST_ALLOC_START);
      platform.memory.writeU32(gpa(at + PAGE_SIZE), 0xfeedbeef);
      assert.equal(vmm.ram.readU32(gpa(at + PAGE_SIZE)), 0xfeedbeef, "the same RAM the VMM maps");
      platform.pages.freePages(at, 2);

      assert.equal(platform.device.configRead(PCI_VENDOR_ID, 2), 0x1b36);
      const bar0 = platform.device.barAddress(0)!;
      assert.equal(bar0, device.barAddress(0));
      assert.equal(platform.device.barSize(0), 4096);
      assert.equal(platform.device.barAddress(5), undefined, "no BAR5");
      // The pin device: writing a GPA to register 0x00 pins that page; 0x08 counts pinned pages.
      platform.device.mmioWrite(gpa(bar0), 4, GUEST_ALLOC_START);
      assert.equal(platform.device.mmioRead(gpa(bar0 + 0x08), 4), 1);

      const t0 = platform.time.now();
      let ticks = 0;
      assert.equal(
        platform.time.waitUntil(() => ++ticks > 3, 1e6),
        true,
      );
      assert.ok(platform.time.now() > t0 && h.clock.now() === platform.time.now(), "the host's clock moved");
      assert.equal(
        platform.time.waitUntil(() => false, 5000),
        false,
      );
    } finally {
      vmm.shutdown();
    }
  });
});
