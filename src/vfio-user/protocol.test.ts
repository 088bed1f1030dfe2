/** The protocol tables against QEMU's hw/vfio-user/protocol.h: header, payload sizes, both DMA_READ/WRITE layouts. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  commandInfo,
  commandName,
  DMA_RW_FIXED,
  DMA_RW_LAYOUTS,
  HEADER_SIZE,
  VFIO_USER_COMMANDS,
  VfioUserDmaMap,
  VfioUserDmaUnmap,
  VfioUserHeader,
  VfioUserRegionAccess,
  VfioUserRegionIoFds,
  VfioUserVersion,
  VfioUserWriteOne,
} from "./protocol.ts";

describe("vfio-user protocol tables", () => {
  it("lays the header out as QEMU's VFIOUserHdr: id, command, size, flags, error_reply", () => {
    assert.equal(HEADER_SIZE, 16);
    assert.deepEqual(
      VfioUserHeader.fieldNames.map((f) => VfioUserHeader.offsetof(f)),
      [0, 2, 4, 8, 12],
    );
    const b = VfioUserHeader.encode({ msg_id: 0x1234, cmd: 9, msg_size: 32, flags: 0x11, error_no: 22 });
    assert.deepEqual([...b.subarray(0, 8)], [0x34, 0x12, 9, 0, 32, 0, 0, 0]);
  });

  it("matches QEMU hw/vfio-user/protocol.h payload sizes (minus the 16-byte header)", () => {
    assert.equal(VfioUserVersion.sizeof, 4);
    assert.equal(VfioUserDmaMap.sizeof, 32);
    assert.equal(VfioUserDmaMap.offsetof("offset"), 8);
    assert.equal(VfioUserDmaMap.offsetof("addr"), 16);
    assert.equal(VfioUserDmaUnmap.sizeof, 24);
    assert.equal(VfioUserRegionAccess.sizeof, 16);
    assert.equal(VfioUserWriteOne.sizeof, 24);
    assert.equal(VfioUserRegionIoFds.sizeof, 16);
  });

  it("names both DMA_READ/DMA_WRITE layouts, each 32 + count bytes long", () => {
    // QEMU: struct { hdr; u64 offset; u32 count; char data[]; } puts data at 28 (12 after the header).
    assert.equal(DMA_RW_LAYOUTS.qemu.dataOffset, 12);
    assert.equal(DMA_RW_LAYOUTS.qemu.countBytes, 4);
    assert.equal(DMA_RW_LAYOUTS.spec.dataOffset, 16);
    assert.equal(HEADER_SIZE + DMA_RW_FIXED, 32);
  });

  it("has one row per command number 1-18 with a name", () => {
    const nums = VFIO_USER_COMMANDS.map((c) => c.cmd);
    assert.deepEqual(
      nums,
      Array.from({ length: 18 }, (_, i) => i + 1),
    );
    assert.equal(new Set(VFIO_USER_COMMANDS.map((c) => c.name)).size, 18);
    assert.equal(commandName(10), "REGION_WRITE");
    assert.equal(commandName(99), "command 99");
    assert.equal(commandInfo(11)?.direction, "server-to-client");
    assert.equal(commandInfo(8)?.requestFds, "eventfds");
  });
});
