/**
 * vfio-pci's virtualized config space: what the user reads and writes through region 7 (VFIO_PCI_CONFIG_REGION_INDEX),
 * after drivers/vfio/pci/vfio_pci_config.c.
 *
 * Every byte of config space has, per bit, a "virtualized" flag (reads and writes go to `vconfig`, a shadow copy
 * taken from the hardware at open) and a "writable" flag (a write of a non-virtualized, writable bit goes to the
 * hardware; other bits of a write are dropped). Which table applies to a byte depends on which capability it belongs
 * to (`pci_config_map`):
 *
 * - Standard header (0x00-0x3f), Linux's basic perms: vendor/device ids and the interrupt pin are virtual and
 *   read-only; INTx Disable in the command register is virtual (vfio-pci uses the real bit to mask INTx, and emulates
 *   the user's bit by masking); the other command bits (memory, I/O, bus master, ...) are written through; status
 *   reads from the hardware except Capabilities List; cache line, latency timer and BIST are written through; the
 *   six BARs and the ROM BAR are wholly virtual: writes never reach the hardware, and reads are fixed up from the real
 *   BAR sizes and flags (`vfio_bar_fixup`), so a sizing probe (write all ones, read back) answers ~(size - 1) | flags
 *   while the hardware keeps the host's addresses. The capability pointer and interrupt line are virtual.
 *   A command write that enables memory or I/O when the hardware shows it disabled behind our back, or finds the BARs
 *   changed, restores the host's BAR values first (`vfio_bar_restore`).
 * - MSI: the flags' low byte, the address and the data are virtual; a write of the flags keeps Enable only while MSI
 *   is in use through SET_IRQS, caps the queue size at what SET_IRQS allocated, and is written to the hardware too.
 *   (Linux's read hook also rewrites a vconfig byte that is read from the hardware, so the user sees the device's
 *   own Multiple Message Capable field; this model shows the same.)
 * - Vendor-specific capabilities: read from the hardware (with the id and next pointer from vconfig) and written
 *   through raw, as Linux does.
 * - PM, VPD, PCI-X, PCI Express and Advanced Features: visible and read-only with the next pointer virtual.
 *   Simplification: Linux lets some of their control fields through and emulates FLR, MPS/MRRS and power states.
 * - MSI-X and AGP: visible, read directly from the hardware, writes dropped (Linux gives both its default
 *   direct-read perms; there is no MSI-X handler in vfio_pci_config.c). So the MSI-X Enable and Function Mask bits are
 *   not virtualized: the user reads them as vfio-pci set them through SET_IRQS (MSIX), and a write to them is lost. A
 *   VMM emulates the guest's MSI-X capability and table itself and drives the real one only through SET_IRQS, as
 *   QEMU's vfio-pci does.
 * - Every other capability is hidden: unlinked from the chain in vconfig (Linux hides those its table gives length
 *   0, and cannot size HyperTransport and SATA without their registers, which this model does not know either).
 * - Bytes in no visible capability (gaps, hidden capabilities, 0x100 and up): raw access to the hardware, as Linux's
 *   "unassigned" perms (some devices hide registers there). Extended capabilities are not walked: Linux does the same
 *   when the device lists none, which is every device this model builds.
 *
 * Accesses are split as Linux splits them: aligned 4-, 2- or 1-byte pieces that never cross a capability boundary;
 * an access outside the config space is EFAULT.
 *
 * A BAR is "implemented" when the device's config space declares it (its `BarSpec`). Linux tests the host-assigned
 * resource start instead; the model does not assign host BAR addresses, so an unassigned BAR would otherwise vanish.
 */
import { Errno, KernelError } from "../../core/index.ts";
import {
  PCI_BASE_ADDRESS_0,
  PCI_BASE_ADDRESS_MEM_PREFETCH,
  PCI_BASE_ADDRESS_MEM_TYPE_64,
  PCI_BASE_ADDRESS_SPACE_IO,
  PCI_CAP_ID_EXP,
  PCI_CAP_ID_MSI,
  PCI_CAP_ID_MSIX,
  PCI_CAP_ID_PM,
  PCI_CAP_ID_VNDR,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MEMORY,
  PCI_DEVICE_ID,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_MSI_ADDRESS_HI,
  PCI_MSI_ADDRESS_LO,
  PCI_MSI_DATA_32,
  PCI_MSI_DATA_64,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_64BIT,
  PCI_MSI_FLAGS_ENABLE,
  PCI_MSI_FLAGS_QSIZE,
  PCI_ROM_ADDRESS,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PCI_VENDOR_ID,
  type PciConfigSpace,
} from "../../host/index.ts";

/** Linux's PCI_STD_HEADER_SIZEOF: the type 0 header. */
const PCI_STD_HEADER_SIZEOF = 0x40;
const PCI_CACHE_LINE_SIZE = 0x0c;
const PCI_LATENCY_TIMER = 0x0d;
const PCI_BIST = 0x0f;
const PCI_CAP_ID_VPD = 0x03;
const PCI_CAP_ID_AGP = 0x02;
const PCI_CAP_ID_PCIX = 0x07;
const PCI_CAP_ID_AF = 0x13;
const PCI_CAP_ID_MAX = 0x14;
/** Per-vector masking bit of the MSI flags. */
const PCI_MSI_FLAGS_MASKBIT = 0x100;
const PCI_MSI_MASK_32 = 12;
const PCI_MSI_MASK_64 = 16;
const PCI_MSI_PENDING_32 = 16;
const PCI_MSI_PENDING_64 = 20;
const PCI_EXP_FLAGS = 2;
const PCI_EXP_FLAGS_VERS = 0x000f;
const PCI_EXP_FLAGS_TYPE = 0x00f0;
const PCI_EXP_TYPE_RC_END = 0x9;

/** pci_config_map value of the standard header (Linux's fake PCI_CAP_ID_BASIC). */
const CAP_BASIC = 0;
/** pci_config_map value of bytes in no capability. */
const CAP_INVALID = 0xff;

// How a byte is accessed (Linux's perm_bits readfn/writefn pairs).
const H_BASIC = 1; // default read/write plus BAR fixup, command handling
const H_MSI = 2; // default read/write plus MSI flags fixup
const H_DEFAULT = 3; // default read/write (read-only caps with a virtual next pointer)
const H_DIRECT_RO = 4; // direct read (id/next from vconfig), writes dropped
const H_VNDR = 5; // direct read, raw write
const H_RAW = 6; // unassigned: raw read and write

/** What the config space needs from the interrupt side (vfio_pci_intrs.c state). */
export interface VfioPciConfigHooks {
  /** vdev->irq_type == VFIO_PCI_MSI_IRQ_INDEX */
  msiInUse(): boolean;
  /** vdev->msi_qmax: log2 of the vectors SET_IRQS allocated (0 until then). */
  msiQmax(): number;
  /** The user set INTx Disable: mask INTx (vfio_pci_intx_mask). */
  intxMask(): void;
  /** The user cleared INTx Disable: unmask INTx (vfio_pci_intx_unmask). */
  intxUnmask(): void;
  /** The virtual INTx Disable state (vdev->virq_disabled), kept by the interrupt side. */
  virqDisabled: boolean;
  /** Notified after the host's BAR values were written back to the hardware. */
  barsRestored?(): void;
}

export interface VfioPciConfigOptions {
  /** Hide INTx: the pin reads 0 (vdev->nointx). */
  readonly nointx?: boolean;
}

export class VfioPciConfig {
  /** The shadow copy (vdev->vconfig). */
  readonly vconfig: Uint8Array;
  /** Capability id owning each byte (vdev->pci_config_map). */
  private readonly map: Uint8Array;
  private readonly handler: Uint8Array;
  private readonly virt: Uint8Array;
  private readonly wr: Uint8Array;
  /** The host's BAR and ROM dwords at open, restored after a reset behind our back (vdev->rbar). */
  private readonly rbar = new Float64Array(7);
  private bardirty = true;
  /** Visible capabilities: [id, offset, length] triples, for tests and reports. */
  readonly capabilities: { readonly id: number; readonly offset: number; readonly length: number }[] = [];

  constructor(
    private readonly hw: PciConfigSpace,
    private readonly hooks: VfioPciConfigHooks,
    opts: VfioPciConfigOptions = {},
  ) {
    const size = hw.bytes.length;
    this.vconfig = new Uint8Array(size);
    this.map = new Uint8Array(size).fill(CAP_INVALID);
    this.handler = new Uint8Array(size).fill(H_RAW);
    this.virt = new Uint8Array(size);
    this.wr = new Uint8Array(size);
    this.initBasic(opts.nointx === true);
    this.initCaps();
  }

  /** Size of the region (pdev->cfg_size). */
  get size(): number {
    return this.vconfig.length;
  }

  /** __vfio_pci_memory_enabled: BAR accesses need the user's Memory Space bit. */
  memoryEnabled(): boolean {
    return (this.vconfig[PCI_COMMAND]! & PCI_COMMAND_MEMORY) !== 0;
  }

  /** The interrupt pin the user sees (vfio_pci_get_irq_count reads it for INTx). */
  interruptPin(): number {
    return this.vconfig[PCI_INTERRUPT_PIN]!;
  }

  /**
   * vfio_pci_config_rw: reads or writes `buf.length` bytes at `pos`, in aligned pieces; returns the bytes done.
   * EFAULT if any byte is outside the config space.
   */
  rw(pos: number, buf: Uint8Array, write: boolean): number {
    const size = this.vconfig.length;
    if (!Number.isInteger(pos) || pos < 0 || pos >= size || pos + buf.length > size) {
      throw new KernelError(
        Errno.EFAULT,
        `config access of ${buf.length} byte(s) at 0x${pos.toString(16)} is outside the ${size}-byte config space`,
      );
    }
    let done = 0;
    while (done < buf.length) {
      const p = pos + done;
      let count = Math.min(buf.length - done, this.remainingInDword(p));
      if (count >= 4 && p % 4 === 0) count = 4;
      else if (count >= 2 && p % 2 === 0) count = 2;
      else count = 1;
      if (write) this.writePiece(p, count, getLe(buf, done, count));
      else setLe(buf, done, count, this.readPiece(p, count));
      done += count;
    }
    return done;
  }

  /** Reads `size` bytes as the user sees them (a convenience over `rw`). */
  read(pos: number, size: 1 | 2 | 4): number {
    const b = new Uint8Array(size);
    this.rw(pos, b, false);
    return getLe(b, 0, size);
  }

  /** Writes `size` bytes as the user would (a convenience over `rw`). */
  write(pos: number, size: 1 | 2 | 4, value: number): void {
    const b = new Uint8Array(size);
    setLe(b, 0, size, value);
    this.rw(pos, b, true);
  }

  // ---- initialisation (vfio_config_init, vfio_cap_init) ----------------------------------------------------------

  private initBasic(nointx: boolean): void {
    const hw = this.hw.bytes;
    this.vconfig.set(hw.subarray(0, PCI_STD_HEADER_SIZEOF));
    this.map.fill(CAP_BASIC, 0, PCI_STD_HEADER_SIZEOF);
    this.handler.fill(H_BASIC, 0, PCI_STD_HEADER_SIZEOF);
    // Everything readable from the hardware, nothing writable, unless listed (init_pci_cap_basic_perm).
    this.setPerm(PCI_VENDOR_ID, 2, 0xffff, 0);
    this.setPerm(PCI_DEVICE_ID, 2, 0xffff, 0);
    this.setPerm(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE, 0xffff);
    this.setPerm(PCI_STATUS, 2, PCI_STATUS_CAP_LIST, 0);
    this.setPerm(PCI_CACHE_LINE_SIZE, 1, 0, 0xff);
    this.setPerm(PCI_LATENCY_TIMER, 1, 0, 0xff);
    this.setPerm(PCI_BIST, 1, 0, 0xff);
    for (let i = 0; i < 6; i++) this.setPerm(PCI_BASE_ADDRESS_0 + 4 * i, 4, 0xffffffff, 0xffffffff);
    this.setPerm(PCI_ROM_ADDRESS, 4, 0xffffffff, 0xffffffff);
    this.setPerm(PCI_CAPABILITY_LIST, 1, 0xff, 0);
    this.setPerm(PCI_INTERRUPT_LINE, 1, 0xff, 0xff);
    this.setPerm(PCI_INTERRUPT_PIN, 1, 0xff, 0);
    this.bardirty = true;
    for (let i = 0; i < 6; i++) this.rbar[i] = this.hw.read(PCI_BASE_ADDRESS_0 + 4 * i, 4);
    this.rbar[6] = this.hw.read(PCI_ROM_ADDRESS, 4);
    if (nointx) this.vconfig[PCI_INTERRUPT_PIN] = 0;
  }

  private initCaps(): void {
    const hw = this.hw.bytes;
    if ((hw[PCI_STATUS]! & PCI_STATUS_CAP_LIST) === 0) return;
    let pos = hw[PCI_CAPABILITY_LIST]!;
    let prev = PCI_CAPABILITY_LIST;
    let caps = 0;
    // Capabilities are dword aligned in 0x40-0xff: at most 48 of them (bounds a looped list).
    for (let loops = (256 - PCI_STD_HEADER_SIZEOF) / 4; pos !== 0 && loops > 0; loops--) {
      const id = hw[pos]!;
      const next = hw[pos + 1]!;
      const len = id !== 0 && id <= PCI_CAP_ID_MAX ? this.capLength(id, pos) : 0;
      if (len === 0 || pos + len > 256) {
        // Hidden: unlink it; its bytes stay unassigned (raw), as in Linux.
        this.vconfig[prev] = next;
        pos = next;
        continue;
      }
      this.map.fill(id, pos, pos + len);
      this.vconfig.set(hw.subarray(pos, pos + len), pos);
      this.initCapPerms(id, pos, len);
      this.capabilities.push({ id, offset: pos, length: len });
      prev = pos + 1;
      pos = next;
      caps++;
    }
    if (caps === 0) this.vconfig[PCI_STATUS] = this.vconfig[PCI_STATUS]! & ~PCI_STATUS_CAP_LIST;
  }

  /** Length the user sees for a capability, 0 to hide it (pci_cap_length and vfio_cap_len). */
  private capLength(id: number, pos: number): number {
    const hw = this.hw.bytes;
    switch (id) {
      case PCI_CAP_ID_PM:
        return 8;
      case PCI_CAP_ID_AGP:
        return 12;
      case PCI_CAP_ID_VPD:
        return 8;
      case PCI_CAP_ID_MSI: {
        const flags = hw[pos + PCI_MSI_FLAGS]! | (hw[pos + PCI_MSI_FLAGS + 1]! << 8);
        return 10 + ((flags & PCI_MSI_FLAGS_64BIT) !== 0 ? 4 : 0) + ((flags & PCI_MSI_FLAGS_MASKBIT) !== 0 ? 10 : 0);
      }
      case PCI_CAP_ID_PCIX:
        return 8; // version 0 size; a version 2 (24-byte) PCI-X capability is not modelled
      case PCI_CAP_ID_VNDR:
        return hw[pos + 2]!; // length byte follows the next pointer
      case PCI_CAP_ID_EXP: {
        const flags = hw[pos + PCI_EXP_FLAGS]! | (hw[pos + PCI_EXP_FLAGS + 1]! << 8);
        const rcEnd = (flags & PCI_EXP_FLAGS_TYPE) >> 4 === PCI_EXP_TYPE_RC_END;
        if ((flags & PCI_EXP_FLAGS_VERS) === 1) return rcEnd ? 0xc : 0x14;
        return rcEnd ? 0x2c : 0x3c;
      }
      case PCI_CAP_ID_MSIX:
        return 12;
      case PCI_CAP_ID_AF:
        return 6;
      default:
        return 0;
    }
  }

  private initCapPerms(id: number, pos: number, len: number): void {
    switch (id) {
      case PCI_CAP_ID_MSI: {
        this.handler.fill(H_MSI, pos, pos + len);
        const flags = this.hw.read(pos + PCI_MSI_FLAGS, 2);
        this.setPerm(pos + 1, 1, 0xff, 0);
        this.setPerm(pos + PCI_MSI_FLAGS, 1, 0xff, 0xff);
        this.setPerm(pos + PCI_MSI_ADDRESS_LO, 4, 0xffffffff, 0xffffffff);
        if ((flags & PCI_MSI_FLAGS_64BIT) !== 0) {
          this.setPerm(pos + PCI_MSI_ADDRESS_HI, 4, 0xffffffff, 0xffffffff);
          this.setPerm(pos + PCI_MSI_DATA_64, 2, 0xffff, 0xffff);
          if ((flags & PCI_MSI_FLAGS_MASKBIT) !== 0) {
            this.setPerm(pos + PCI_MSI_MASK_64, 4, 0, 0xffffffff);
            this.setPerm(pos + PCI_MSI_PENDING_64, 4, 0, 0xffffffff);
          }
        } else {
          this.setPerm(pos + PCI_MSI_DATA_32, 2, 0xffff, 0xffff);
          if ((flags & PCI_MSI_FLAGS_MASKBIT) !== 0) {
            this.setPerm(pos + PCI_MSI_MASK_32, 4, 0, 0xffffffff);
            this.setPerm(pos + PCI_MSI_PENDING_32, 4, 0, 0xffffffff);
          }
        }
        return;
      }
      case PCI_CAP_ID_VNDR:
        this.handler.fill(H_VNDR, pos, pos + len);
        return;
      case PCI_CAP_ID_PM:
      case PCI_CAP_ID_VPD:
      case PCI_CAP_ID_PCIX:
      case PCI_CAP_ID_EXP:
      case PCI_CAP_ID_AF:
        this.handler.fill(H_DEFAULT, pos, pos + len);
        this.setPerm(pos + 1, 1, 0xff, 0);
        return;
      default:
        this.handler.fill(H_DIRECT_RO, pos, pos + len);
    }
  }

  private setPerm(off: number, size: number, virt: number, write: number): void {
    for (let i = 0; i < size; i++) {
      this.virt[off + i] = Math.floor(virt / 256 ** i) & 0xff;
      this.wr[off + i] = Math.floor(write / 256 ** i) & 0xff;
    }
  }

  // ---- access -----------------------------------------------------------------------------------------------------

  /** vfio_pci_cap_remaining_dword: bytes from `pos` to the dword end that belong to the same capability. */
  private remainingInDword(pos: number): number {
    const cap = this.map[pos]!;
    let i = 1;
    while ((pos + i) % 4 !== 0 && pos + i < this.map.length && this.map[pos + i] === cap) i++;
    return i;
  }

  /** vfio_find_cap_start. */
  private capStart(pos: number): number {
    const cap = this.map[pos]!;
    if (cap === CAP_BASIC) return 0;
    if (cap === CAP_INVALID) return pos;
    let p = pos;
    while (p - 1 >= PCI_STD_HEADER_SIZEOF && this.map[p - 1] === cap) p--;
    return p;
  }

  private readPiece(pos: number, count: number): number {
    switch (this.handler[pos]!) {
      case H_BASIC:
        if (isBar(pos)) this.barFixup();
        return this.defaultRead(pos, count);
      case H_MSI:
      case H_DEFAULT:
        return this.defaultRead(pos, count);
      case H_DIRECT_RO:
      case H_VNDR:
        return this.directRead(pos, count);
      default:
        return this.hw.read(pos, count);
    }
  }

  private writePiece(pos: number, count: number, val: number): void {
    switch (this.handler[pos]!) {
      case H_BASIC:
        this.basicWrite(pos, count, val);
        return;
      case H_MSI:
        this.msiWrite(pos, count, val);
        return;
      case H_DEFAULT:
        this.defaultWrite(pos, count, val);
        return;
      case H_DIRECT_RO:
        return;
      default: // H_VNDR and unassigned bytes: raw
        this.hw.write(pos, count, val);
    }
  }

  /** vfio_default_config_read: virtual bits from vconfig, the rest from the hardware. */
  private defaultRead(pos: number, count: number): number {
    let v = 0;
    for (let i = count - 1; i >= 0; i--) {
      const m = this.virt[pos + i]!;
      const b = (this.hw.bytes[pos + i]! & ~m) | (this.vconfig[pos + i]! & m);
      v = v * 256 + (b & 0xff);
    }
    return v;
  }

  /** vfio_default_config_write: writable virtual bits to vconfig, writable real bits to the hardware. */
  private defaultWrite(pos: number, count: number, val: number): void {
    let anyWrite = false;
    let anyHw = false;
    for (let i = 0; i < count; i++) {
      const w = this.wr[pos + i]!;
      if (w === 0) continue;
      anyWrite = true;
      const m = this.virt[pos + i]!;
      const b = Math.floor(val / 256 ** i) & 0xff;
      const vw = w & m;
      if (vw !== 0) this.vconfig[pos + i] = (this.vconfig[pos + i]! & ~vw) | (b & vw);
      if ((w & ~m & 0xff) !== 0) anyHw = true;
    }
    if (!anyWrite || !anyHw) return;
    // Read-modify-write of the whole piece, as pci_user_write_config_* does.
    let phys = this.hw.read(pos, count);
    let out = 0;
    for (let i = count - 1; i >= 0; i--) {
      const hwMask = this.wr[pos + i]! & ~this.virt[pos + i]! & 0xff;
      const pb = Math.floor(phys / 256 ** i) & 0xff;
      const b = Math.floor(val / 256 ** i) & 0xff;
      out = out * 256 + ((pb & ~hwMask) | (b & hwMask));
    }
    phys = out;
    this.hw.write(pos, count, phys);
  }

  /** vfio_direct_config_read: the hardware, except a capability's id and next pointer come from vconfig. */
  private directRead(pos: number, count: number): number {
    let v = this.hw.read(pos, count);
    if (pos >= PCI_STD_HEADER_SIZEOF && pos < 256) {
      const offset = pos - this.capStart(pos);
      if (offset === 0 && count > 1) {
        // Id and next pointer (count is 2 or 4 here: the first two bytes).
        v = v - (v % 65536) + (this.vconfig[pos]! | (this.vconfig[pos + 1]! << 8));
      } else if (offset === 1) {
        v = v - (v % 256) + this.vconfig[pos]!;
      }
    }
    return v;
  }

  /** vfio_basic_config_write: command handling, INTx Disable emulation, BAR dirtiness. */
  private basicWrite(pos: number, count: number, val: number): void {
    let newCmd = 0;
    if (pos === PCI_COMMAND) {
      const phys = this.hw.read(PCI_COMMAND, 2);
      const virt = this.vconfig[PCI_COMMAND]!;
      newCmd = val & 0xffff;
      const newMem = (newCmd & PCI_COMMAND_MEMORY) !== 0;
      const newIo = (newCmd & PCI_COMMAND_IO) !== 0;
      const restore =
        (newMem && (virt & PCI_COMMAND_MEMORY) !== 0 && (phys & PCI_COMMAND_MEMORY) === 0) ||
        (newIo && (virt & PCI_COMMAND_IO) !== 0 && (phys & PCI_COMMAND_IO) === 0) ||
        this.needBarRestore();
      if (restore) this.barRestore();
    }
    this.defaultWrite(pos, count, val);
    if (pos === PCI_COMMAND) {
      const mask = PCI_COMMAND_MEMORY | PCI_COMMAND_IO;
      this.vconfig[PCI_COMMAND] = (this.vconfig[PCI_COMMAND]! & ~mask) | (newCmd & mask);
    }
    if (pos >= PCI_COMMAND && pos <= PCI_COMMAND + 1) {
      const virtIntxDisable = ((this.vconfig[PCI_COMMAND + 1]! << 8) & PCI_COMMAND_INTX_DISABLE) !== 0;
      if (virtIntxDisable && !this.hooks.virqDisabled) {
        this.hooks.virqDisabled = true;
        this.hooks.intxMask();
      } else if (!virtIntxDisable && this.hooks.virqDisabled) {
        this.hooks.virqDisabled = false;
        this.hooks.intxUnmask();
      }
    }
    if (isBar(pos)) this.bardirty = true;
  }

  /** vfio_msi_config_write: Enable only via SET_IRQS; queue size capped at what was allocated; flags to hardware. */
  private msiWrite(pos: number, count: number, val: number): void {
    this.defaultWrite(pos, count, val);
    const start = this.capStart(pos);
    const offset = pos - start;
    if (offset <= PCI_MSI_FLAGS && offset + count >= PCI_MSI_FLAGS) {
      const at = start + PCI_MSI_FLAGS;
      let flags = this.vconfig[at]! | (this.vconfig[at + 1]! << 8);
      if (!this.hooks.msiInUse()) flags &= ~PCI_MSI_FLAGS_ENABLE;
      const qmax = this.hooks.msiQmax();
      if ((flags & PCI_MSI_FLAGS_QSIZE) >> 4 > qmax) flags = (flags & ~PCI_MSI_FLAGS_QSIZE) | (qmax << 4);
      this.vconfig[at] = flags & 0xff;
      this.vconfig[at + 1] = (flags >> 8) & 0xff;
      this.hw.write(at, 2, flags);
    }
  }

  /** vfio_bar_fixup: the user's BARs masked to the real sizes, with the real flags. */
  private barFixup(): void {
    if (!this.bardirty) return;
    for (let i = 0; i < 6; i++) {
      const off = PCI_BASE_ADDRESS_0 + 4 * i;
      const spec = this.hw.barSpec(i);
      if (spec === undefined) {
        setLe(this.vconfig, off, 4, 0); // unimplemented (or the upper half of a 64-bit BAR, handled below)
        continue;
      }
      const lowMask = spec.size >= 2 ** 32 ? 0 : (0x100000000 - spec.size) >>> 0;
      let flags = 0;
      if (spec.kind === "io") flags = PCI_BASE_ADDRESS_SPACE_IO;
      else {
        flags =
          (spec.prefetchable ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0) |
          (spec.kind === "mem64" ? PCI_BASE_ADDRESS_MEM_TYPE_64 : 0);
      }
      setLe(this.vconfig, off, 4, ((getLe(this.vconfig, off, 4) & lowMask) | flags) >>> 0);
      if (spec.kind === "mem64" && i < 5) {
        const highMask = spec.size > 2 ** 32 ? (0x100000000 - spec.size / 2 ** 32) >>> 0 : 0xffffffff;
        setLe(this.vconfig, off + 4, 4, (getLe(this.vconfig, off + 4, 4) & highMask) >>> 0);
        i++;
      }
    }
    // No expansion ROM in the model: the ROM BAR is unimplemented.
    setLe(this.vconfig, PCI_ROM_ADDRESS, 4, 0);
    this.bardirty = false;
  }

  /** vfio_need_bar_restore: the hardware BARs differ from the host's values saved at open. */
  private needBarRestore(): boolean {
    for (let i = 0; i < 6; i++) {
      const saved = this.rbar[i]!;
      if (saved !== 0 && this.hw.read(PCI_BASE_ADDRESS_0 + 4 * i, 4) !== saved) return true;
    }
    return false;
  }

  /** vfio_bar_restore: writes the host's BAR values back after a reset we did not see. */
  private barRestore(): void {
    for (let i = 0; i < 6; i++) this.hw.write(PCI_BASE_ADDRESS_0 + 4 * i, 4, this.rbar[i]!);
    this.hw.write(PCI_ROM_ADDRESS, 4, this.rbar[6]!);
    this.hooks.barsRestored?.();
  }
}

/** is_bar(): BAR0-5 or the ROM BAR. */
function isBar(pos: number): boolean {
  return (
    (pos >= PCI_BASE_ADDRESS_0 && pos < PCI_BASE_ADDRESS_0 + 24) ||
    (pos >= PCI_ROM_ADDRESS && pos < PCI_ROM_ADDRESS + 4)
  );
}

/** Little-endian read of 1, 2 or 4 bytes. */
function getLe(b: Uint8Array, off: number, count: number): number {
  let v = 0;
  for (let i = count - 1; i >= 0; i--) v = v * 256 + b[off + i]!;
  return v;
}

function setLe(b: Uint8Array, off: number, count: number, v: number): void {
  for (let i = 0; i < count; i++) b[off + i] = Math.floor(v / 256 ** i) & 0xff;
}
