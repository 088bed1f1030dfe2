/**
 * vfio-pci BAR access through the device fd (drivers/vfio/pci/vfio_pci_rdwr.c): pread/pwrite of regions 0-5 become
 * trapped accesses to the physical device (`PciDeviceModel.barRead/barWrite`), split as Linux's
 * vfio_pci_core_do_io_rw splits them: naturally aligned 8-, 4-, 2- or 1-byte accesses, the widest that fits.
 *
 * Rules kept from Linux: a BAR the device does not implement is EINVAL; a start at or past the BAR's end is EINVAL
 * and a transfer running past it is cut short (the byte count returned says how much was done); a memory BAR is
 * accessible only while the user's Memory Space bit is set in the virtual command register (else EIO, as Linux's
 * test_mem); I/O BARs are not gated.
 *
 * Values cross as little-endian bytes. An 8-byte value is a JavaScript number on the device side: exact below 2^53,
 * and any value >= 2^64 - 1 (a device's "all ones", see EDU_ALL_ONES_64) is encoded as eight 0xff bytes.
 *
 * Not modelled: the MSI-X table exclusion (no MSI-X), ROM BAR reads (no expansion ROMs), legacy VGA ranges.
 */
import { Errno, KernelError } from "../../core/index.ts";
import type { PciDeviceModel } from "../../host/index.ts";

const TWO32 = 4294967296;

/**
 * vfio_pci_bar_rw for BAR `bar`: transfers `buf` at `pos` within the BAR; returns the bytes transferred.
 * `memoryEnabled` is the user's Memory Space bit (vfio_pci_memory_enabled).
 */
export function vfioPciBarRw(
  pdev: PciDeviceModel,
  bar: number,
  pos: number,
  buf: Uint8Array,
  write: boolean,
  memoryEnabled: boolean,
): number {
  const spec = pdev.config.barSpec(bar);
  if (spec === undefined) {
    throw new KernelError(Errno.EINVAL, `${pdev.bdf} has no BAR${bar}: region ${bar} cannot be read or written`);
  }
  if (!Number.isInteger(pos) || pos < 0 || pos >= spec.size) {
    throw new KernelError(
      Errno.EINVAL,
      `offset 0x${pos.toString(16)} is outside BAR${bar} of ${pdev.bdf} (size 0x${spec.size.toString(16)})`,
    );
  }
  const count = Math.min(buf.length, spec.size - pos);
  if (count > 0 && spec.kind !== "io" && !memoryEnabled) {
    throw new KernelError(
      Errno.EIO,
      `BAR${bar} of ${pdev.bdf} is not accessible: Memory Space is disabled in the command register`,
    );
  }
  let done = 0;
  while (done < count) {
    const off = pos + done;
    const left = count - done;
    let size: number;
    if (left >= 8 && off % 8 === 0) size = 8;
    else if (left >= 4 && off % 4 === 0) size = 4;
    else if (left >= 2 && off % 2 === 0) size = 2;
    else size = 1;
    if (write) pdev.barWrite(bar, off, size, decodeLe(buf, done, size));
    else encodeLe(buf, done, size, pdev.barRead(bar, off, size));
    done += size;
  }
  return done;
}

/** Little-endian bytes to a number (8-byte values lose precision above 2^53). */
export function decodeLe(b: Uint8Array, off: number, size: number): number {
  if (size === 8) return decodeLe(b, off, 4) + decodeLe(b, off + 4, 4) * TWO32;
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + b[off + i]!;
  return v;
}

/** A number to little-endian bytes; 8-byte values >= 2^64 - 1 become all ones. */
export function encodeLe(b: Uint8Array, off: number, size: number, v: number): void {
  if (size === 8) {
    if (v >= 2 ** 64 - 1) {
      b.fill(0xff, off, off + 8);
      return;
    }
    encodeLe(b, off, 4, v % TWO32);
    encodeLe(b, off + 4, 4, Math.floor(v / TWO32));
    return;
  }
  for (let i = 0; i < size; i++) b[off + i] = Math.floor(v / 256 ** i) & 0xff;
}
