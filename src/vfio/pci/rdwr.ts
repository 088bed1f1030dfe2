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
 * The excluded range (do_io_rw's x_start/x_end): in the BAR holding the MSI-X table, the table's bytes
 * [offset, offset + 16 * N) never reach the device: reads of them return 0xff bytes and writes are dropped, as Linux
 * does (the host owns the physical table; a VMM emulates its own table for the guest, as QEMU does). Pieces are cut at
 * the range's start so no access straddles it, and filling the range needs no Memory Space (no device access happens).
 * The PBA is not excluded: it reads from the device.
 *
 * Values cross as little-endian bytes. An 8-byte value is a JavaScript number on the device side: exact below 2^53,
 * and any value >= 2^64 - 1 (a device's "all ones", see EDU_ALL_ONES_64) is encoded as eight 0xff bytes.
 *
 * Not modelled: ROM BAR reads (no expansion ROMs), legacy VGA ranges.
 */
import { Errno, KernelError } from "../../core/index.ts";
import type { PciDeviceModel } from "../../host/index.ts";

const TWO32 = 4294967296;

/**
 * vfio_pci_bar_rw for BAR `bar`: transfers `buf` at `pos` within the BAR; returns the bytes transferred.
 * `memoryEnabled` is the user's Memory Space bit (vfio_pci_memory_enabled). [`excludeStart`, `excludeEnd`) is the
 * excluded range within this BAR (the MSI-X table), empty by default.
 */
export function vfioPciBarRw(
  pdev: PciDeviceModel,
  bar: number,
  pos: number,
  buf: Uint8Array,
  write: boolean,
  memoryEnabled: boolean,
  excludeStart = 0,
  excludeEnd = 0,
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
  const gated = spec.kind !== "io" && !memoryEnabled;
  let done = 0;
  while (done < count) {
    const off = pos + done;
    let left = count - done;
    if (off >= excludeStart && off < excludeEnd) {
      const filled = Math.min(left, excludeEnd - off);
      if (!write) buf.fill(0xff, done, done + filled);
      done += filled;
      continue;
    }
    if (off < excludeStart) left = Math.min(left, excludeStart - off);
    if (gated) {
      throw new KernelError(
        Errno.EIO,
        `BAR${bar} of ${pdev.bdf} is not accessible: Memory Space is disabled in the command register`,
      );
    }
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
