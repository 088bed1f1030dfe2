/**
 * A vGPU's virtual PCI configuration space (GVT-g cfg_space.c), as a table over the shared `PciConfigSpace`.
 *
 * The guest sees the physical GPU's identity (vendor 0x8086, the gen9 device id, VGA class, revision), so its stock
 * graphics driver binds; BAR0 is the 16 MiB 64-bit register + GTT window BAR; BAR2 is a 64-bit prefetchable BAR the
 * size of the vGPU's own aperture partition (GVT-g instead exposes the whole physical aperture and lets the guest
 * use only its part; here the guest's BAR2 offset 0 is its partition's first byte); one MSI vector; INTA#. Sizing
 * probes (all ones) read back ~(size - 1) | flags through the write masks; command, BARs, interrupt line and the MSI
 * control/address/data fields are writable, everything else is read-only.
 *
 * Region access (the vfio CONFIG region) is split as kvmgt does into naturally aligned 4/2/1-byte pieces.
 *
 * Not modelled: the PCI Express and power-management capabilities, the OpRegion (ASLS at 0xfc), the legacy I/O BAR4,
 * config space beyond 256 bytes. Invariant: identity and capability structure never change after creation.
 */
import { Errno, hex, KernelError } from "../core/index.ts";
import { BAR0_SIZE, GPU_CLASS_CODE, GPU_DEVICE_ID, GPU_REVISION, GPU_VENDOR_ID } from "../gpu/index.ts";
import { PciConfigSpace } from "../host/index.ts";

/** Bytes of the vfio CONFIG region (conventional config space). */
export const VGPU_CONFIG_SIZE = 256;
/** Subsystem ids of the virtual device: Intel's own, as on a reference board. */
export const VGPU_SUBSYSTEM_VENDOR_ID = GPU_VENDOR_ID;
export const VGPU_SUBSYSTEM_ID = 0x2015;

/** Builds the config space of a vGPU whose aperture partition is `apertureSize` bytes (a power of two). */
export function createVgpuConfig(apertureSize: number): PciConfigSpace {
  return new PciConfigSpace({
    vendorId: GPU_VENDOR_ID,
    deviceId: GPU_DEVICE_ID,
    classCode: GPU_CLASS_CODE,
    revision: GPU_REVISION,
    subsystemVendorId: VGPU_SUBSYSTEM_VENDOR_ID,
    subsystemId: VGPU_SUBSYSTEM_ID,
    interruptPin: 1,
    bars: [
      { index: 0, size: BAR0_SIZE, kind: "mem64" },
      { index: 2, size: apertureSize, kind: "mem64", prefetchable: true },
    ],
    size: VGPU_CONFIG_SIZE,
    msiVectors: 1,
  });
}

/** Reads `buf.length` config bytes at `offset` (EINVAL past the end). */
export function configRead(config: PciConfigSpace, offset: number, buf: Uint8Array): number {
  checkRange(offset, buf.length);
  const bytes = config.bytes;
  for (let i = 0; i < buf.length; i++) buf[i] = bytes[offset + i]!;
  return buf.length;
}

/** Writes `buf` at `offset` through the write masks, in naturally aligned pieces (EINVAL past the end). */
export function configWrite(config: PciConfigSpace, offset: number, buf: Uint8Array): number {
  const len = buf.length;
  checkRange(offset, len);
  for (let done = 0, pos = offset; done < len; ) {
    const size = pieceSize(pos, len - done);
    let value = 0;
    for (let k = size - 1; k >= 0; k--) value = value * 256 + buf[done + k]!;
    config.write(pos, size, value);
    done += size;
    pos += size;
  }
  return len;
}

/** 4 bytes if aligned and available, else 2 likewise, else 1 (kvmgt's intel_vgpu_read/write split). */
export function pieceSize(pos: number, remaining: number): number {
  if (remaining >= 4 && pos % 4 === 0) return 4;
  if (remaining >= 2 && pos % 2 === 0) return 2;
  return 1;
}

function checkRange(offset: number, len: number): void {
  if (!Number.isInteger(offset) || offset < 0 || offset + len > VGPU_CONFIG_SIZE) {
    throw new KernelError(
      Errno.EINVAL,
      `config access [${hex(offset)}, ${hex(offset + len)}) runs past the vGPU's ${VGPU_CONFIG_SIZE}-byte config space`,
    );
  }
}
