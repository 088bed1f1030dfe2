/**
 * The bytes of one guest access (1, 2, 4 or 8 bytes, little-endian) on their way between a trapped MMIO, port or
 * config access and the device fd: one 8-byte buffer with a view per size, so an access costs no allocation. Used by
 * the vfio-pci frontend's config space and by its BARs.
 */
export class AccessBuffer {
  private readonly buf = new ArrayBuffer(8);
  private readonly b1 = new Uint8Array(this.buf, 0, 1);
  private readonly b2 = new Uint8Array(this.buf, 0, 2);
  private readonly b4 = new Uint8Array(this.buf, 0, 4);
  private readonly b8 = new Uint8Array(this.buf, 0, 8);
  private readonly view = new DataView(this.buf);

  /** The first `size` bytes (1, 2, 4; anything else: 8), to read or write through a device fd. */
  bytes(size: number): Uint8Array {
    return size === 1 ? this.b1 : size === 2 ? this.b2 : size === 4 ? this.b4 : this.b8;
  }

  /** The value the first `size` bytes hold (8 bytes: exact below 2^53). */
  load(size: number): number {
    const v = this.view;
    if (size === 1) return v.getUint8(0);
    if (size === 2) return v.getUint16(0, true);
    if (size === 4) return v.getUint32(0, true);
    return v.getUint32(0, true) + v.getUint32(4, true) * 2 ** 32;
  }

  /** Puts `value` into the first `size` bytes. */
  store(size: number, value: number): void {
    const v = this.view;
    if (size === 1) v.setUint8(0, value & 0xff);
    else if (size === 2) v.setUint16(0, value & 0xffff, true);
    else if (size === 4) v.setUint32(0, value >>> 0, true);
    else {
      v.setUint32(0, (value % 2 ** 32) >>> 0, true);
      v.setUint32(4, Math.floor(value / 2 ** 32) >>> 0, true);
    }
  }
}
