/**
 * A vGPU's virtual PCI configuration space (GVT-g cfg_space.c), as a table over the shared `PciConfigSpace`.
 *
 * The guest sees the physical GPU's identity (vendor 0x8086, device 0x1912, VGA class, revision 6: a stepping i915
 * knows), so its stock graphics driver binds; BAR0 is the 16 MiB 64-bit register + GTT window BAR; BAR2 is a 64-bit
 * prefetchable BAR **the size of the whole host aperture**, as GVT-g makes it: guest BAR2 offset X is host graphics
 * memory address X, and only the vGPU's own aperture partition answers there (vgpu.ts). That is what makes GVT-g's
 * ballooning layout consistent (pvinfo.ts): the mappable range sits at its host GGTT address, which lies below the
 * BAR2 size, and the non-mappable range above it. One MSI vector (GVT-g injects only MSI); INTA# is declared but
 * never asserted (irq.ts). Sizing probes (all ones) read back ~(size - 1) | flags through the write masks; command,
 * BARs, interrupt line and the MSI control/address/data fields are writable, everything else is read-only.
 *
 * Intel-specific fields, as GVT-g presents them:
 * - GMCH_CTRL (0x50, 16 bits): GGMS (bits 7..6) says the GGTT is 8 MiB of entries (4 GiB of graphics memory, the
 *   size of the GTT window in BAR0); GMS (bits 15..8, stolen memory) is 0: a vGPU has no stolen memory, so the
 *   kernel's early quirk reserves nothing and i915 uses none.
 * - BDSM (0x5C, base of stolen memory): 0.
 * - ASLS (0xFC, the OpRegion address): 0, no OpRegion (i915 logs "ACPI OpRegion not supported!" at debug level and
 *   goes on). GVT-g exports a virtual OpRegion as an extra vfio region; this vGPU has no display to describe.
 *
 * Region access (the vfio CONFIG region) is split as kvmgt does into naturally aligned 4/2/1-byte pieces.
 *
 * Not modelled: the PCI Express and power-management capabilities, the OpRegion, the legacy I/O BAR4, config space
 * beyond 256 bytes. Invariant: identity and capability structure never change after creation.
 */
import { Errno, hex, KernelError } from "../core/index.ts";
import { BAR0_SIZE, GPU_CLASS_CODE, GPU_DEVICE_ID, GPU_REVISION, GPU_VENDOR_ID, GTT_SIZE } from "../gpu/index.ts";
import { PciConfigSpace } from "../host/index.ts";

/** Bytes of the vfio CONFIG region (conventional config space). */
export const VGPU_CONFIG_SIZE = 256;
/** Subsystem ids of the virtual device: Intel's own, as on a reference board. */
export const VGPU_SUBSYSTEM_VENDOR_ID = GPU_VENDOR_ID;
export const VGPU_SUBSYSTEM_ID = 0x2015;

/** GMCH_CTRL (u16 at 0x50): GGMS in bits 7..6, GMS (stolen memory size) in bits 15..8. */
export const GMCH_CTRL = 0x50;
export const GMCH_GGMS_SHIFT = 6;
export const GMCH_GGMS_MASK = 0x3;
export const GMCH_GMS_SHIFT = 8;
/** BDSM (u32 at 0x5C): base of stolen memory. ASLS (u32 at 0xFC): the ACPI OpRegion's address. */
export const BDSM = 0x5c;
export const ASLS = 0xfc;
/** GGMS for the model's GGTT: the size of the entries in MiB is 1 << GGMS (8 MiB: 4 GiB of graphics memory). */
export const VGPU_GGMS = Math.log2(GTT_SIZE / (1024 * 1024));

/** Builds the config space of a vGPU whose BAR2 is `bar2Size` bytes (the host aperture, a power of two). */
export function createVgpuConfig(bar2Size: number): PciConfigSpace {
  const config = new PciConfigSpace({
    vendorId: GPU_VENDOR_ID,
    deviceId: GPU_DEVICE_ID,
    classCode: GPU_CLASS_CODE,
    revision: GPU_REVISION,
    subsystemVendorId: VGPU_SUBSYSTEM_VENDOR_ID,
    subsystemId: VGPU_SUBSYSTEM_ID,
    interruptPin: 1,
    bars: [
      { index: 0, size: BAR0_SIZE, kind: "mem64" },
      { index: 2, size: bar2Size, kind: "mem64", prefetchable: true },
    ],
    size: VGPU_CONFIG_SIZE,
    msiVectors: 1,
  });
  // Read-only fields (PciConfigSpace.reset keeps them): GGMS as the GGTT is, no stolen memory, no OpRegion.
  const gmch = (VGPU_GGMS & GMCH_GGMS_MASK) << GMCH_GGMS_SHIFT;
  config.bytes[GMCH_CTRL] = gmch & 0xff;
  config.bytes[GMCH_CTRL + 1] = gmch >>> 8;
  config.bytes.fill(0, BDSM, BDSM + 4);
  config.bytes.fill(0, ASLS, ASLS + 4);
  return config;
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
