/**
 * vfio-pci: the vfio bus driver for whole-device assignment of a physical PCI function (drivers/vfio/pci/vfio_pci.c
 * and vfio_pci_core.c). Binding a device to "vfio-pci" takes it from the host (PciBus driver binding, interrupts
 * routed here) and registers it with vfio-core as a device of its host IOMMU group; a VMM then opens the group, and
 * the device fd's ioctls, reads, writes and mmaps land in `VfioPciDevice`, which implements `VfioDeviceOps`.
 *
 * What the user sees (as Linux reports it for such a device):
 * - GET_INFO: flags PCI | RESET (every model device resets through PciBus.reset), 9 regions, 5 irqs.
 * - Regions 0-5 (BARs): size of the BAR, READ | WRITE, plus MMAP when the BAR is memory-backed (`barFrames`); an
 *   unimplemented BAR (or the upper half of a 64-bit one) has size 0 and no flags. Region 6 (ROM): size 0, no flags
 *   (the model has no expansion ROMs). Region 7 (config): the config space size, READ | WRITE, virtualized by
 *   config.ts. Region 8 (VGA): EINVAL, as for any device when CONFIG_VFIO_PCI_VGA is off (legacy VGA ranges are not
 *   modelled). Indices >= 9: EINVAL (no device-specific regions).
 * - The BAR holding the MSI-X table: reads and writes of the table's bytes are excluded (0xff / dropped, rdwr.ts).
 *   A trapped BAR has no MMAP flag and so no capability. A memory-backed one is mmap-able except the page(s) holding
 *   the table: a SPARSE_MMAP capability lists the areas around them, and an mmap overlapping them is EINVAL. That is
 *   Linux before 4.16; since then Linux lets the whole BAR be mapped and reports MSIX_MAPPABLE (the host's interrupt
 *   remapping makes a guest's table writes harmless). The model keeps the table trapped because its MMU cannot trap
 *   loads and stores, and the device model keeps the table in its MsixTable, not in the BAR's frames. (The PBA is not
 *   excluded, as in Linux: a device model with its PBA in a memory-backed BAR shows its frames there when mapped.)
 * - Irqs: see intrs.ts (INTx, MSI, MSI-X, ERR, REQ).
 *
 * Lifecycle, after vfio_pci_core_enable / vfio_pci_core_disable:
 * - open (first device fd): bus mastering off, device enabled (Memory/I/O Space on for its BARs), function reset with
 *   the config state saved around it (pci_try_reset_function), the state saved for close, INTx Disable cleared, the
 *   virtual config space built from the hardware.
 * - close (last fd): bus mastering off, interrupts torn down, ERR/REQ eventfds dropped, INTx Disable set, the
 *   function reset, and the config state saved at open written back (so the host gets the device as it lent it).
 * - VFIO_DEVICE_RESET: a function reset with the config state (BARs, command, MSI, MSI-X) saved and restored around
 *   it, so interrupts stay enabled with their eventfds (pci_try_reset_function; Linux does not tear interrupts down
 *   here either); the virtual config space is unchanged. For MSI-X, restoring means what __pci_restore_msix_state
 *   does: every table entry (message and Mask bit) written back with the function masked, then Message Control.
 * BAR mmaps: Linux maps MMIO lazily and faults with SIGBUS while Memory Space is off, and zaps mappings around resets;
 * the model maps memory-backed BAR frames eagerly and cannot revoke them (its MMU has no fault hook for device memory).
 * Trapped BARs (no `barFrames`) cannot be mmapped in the model, because its MMU cannot trap loads and stores.
 *
 * Unbinding while the device is open asks the user to release it (signals the REQ eventfd) and then fails with EBUSY:
 * Linux would block the unbinding process until the user lets go.
 *
 * Not modelled: hot reset (VFIO_DEVICE_PCI_HOT_RESET), ioeventfd, runtime PM, SR-IOV / VF tokens, the denylist,
 * device-specific regions (IGD OpRegion), AER.
 */
import { defineTraceEvents, Errno, KernelError, PAGE_SIZE, type Tracer } from "../../core/index.ts";
import {
  type Bdf,
  type FileMapping,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_HEADER_TYPE,
  PCI_INTERRUPT_PIN,
  PCI_MSI_ADDRESS_HI,
  PCI_MSI_ADDRESS_LO,
  PCI_MSI_DATA_64,
  PCI_MSI_FLAGS,
  PCI_MSIX_ENTRY_SIZE,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  type PciBus,
  type PciDeviceModel,
} from "../../host/index.ts";
import type {
  VfioCapability,
  VfioDeviceInfo,
  VfioDeviceOps,
  VfioDmaAccess,
  VfioIrqInfo,
  VfioIrqSet,
  VfioRegionInfo,
} from "../driver.ts";
import {
  sparseMmapCap,
  VFIO_CAP_VERSION_1,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_PCI_BAR5_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_ROM_REGION_INDEX,
  VFIO_PCI_VGA_REGION_INDEX,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  vfioPciRegionName,
} from "../uapi/index.ts";
import { VfioPciConfig } from "./config.ts";
import { VfioPciIrqs } from "./intrs.ts";
import { vfioPciBarRw } from "./rdwr.ts";

declare module "../../core/trace.ts" {
  interface TraceEventMap {
    "vfio_pci.bind": { bdf: string; group: number };
    "vfio_pci.unbind": { bdf: string };
    "vfio_pci.open": { bdf: string };
    "vfio_pci.close": { bdf: string };
    "vfio_pci.reset": { bdf: string; reason: string };
    "vfio_pci.request": { bdf: string; signalled: boolean };
    "vfio_pci.bar_restore": { bdf: string };
  }
}
defineTraceEvents("vfio", {
  "vfio_pci.bind": "{bdf} bound to vfio-pci, vfio group {group}",
  "vfio_pci.unbind": "{bdf} unbound from vfio-pci",
  "vfio_pci.open": "{bdf}: opened by a user (device enabled and reset)",
  "vfio_pci.close": "{bdf}: released by its user (interrupts off, device reset, state restored)",
  "vfio_pci.reset": "{bdf}: function reset ({reason})",
  "vfio_pci.request": "{bdf}: user asked to release the device (REQ eventfd signalled: {signalled})",
  "vfio_pci.bar_restore": "{bdf}: BARs restored after a reset behind vfio-pci's back",
});

export const VFIO_PCI_DRIVER_NAME = "vfio-pci";

/** Standard header dwords 1-15 (command/status through interrupt line), restored after a reset. */
const HEADER_DWORDS = 16;

/** A snapshot of what pci_save_state keeps: the header, the MSI registers, MSI-X control and table entries. */
interface SavedState {
  readonly header: Float64Array;
  readonly msi: Float64Array | undefined;
  /** Message Control, then four dwords per table entry. */
  readonly msix: Float64Array | undefined;
}

export interface VfioPciDeviceOptions {
  readonly pdev: PciDeviceModel;
  readonly bus: PciBus;
  readonly tracer: Tracer;
  /** Hide INTx (vdev->nointx): pin reads 0, INTx count 0. */
  readonly nointx?: boolean;
}

/** One device bound to vfio-pci: struct vfio_pci_core_device. */
export class VfioPciDevice implements VfioDeviceOps {
  readonly name: string;
  readonly bdf: Bdf;
  readonly pdev: PciDeviceModel;
  readonly irqs: VfioPciIrqs;
  /** Open sessions' virtual config space; undefined while no user has the device open. */
  private vconfig: VfioPciConfig | undefined;
  private saved: SavedState | undefined;
  private readonly bus: PciBus;
  private readonly tracer: Tracer;
  private readonly nointx: boolean;
  /** vdev->msix_bar (-1 without MSI-X), msix_offset and msix_size (the table's bytes). */
  private readonly msixBar: number;
  private readonly msixOffset: number;
  private readonly msixSize: number;

  constructor(opts: VfioPciDeviceOptions) {
    this.pdev = opts.pdev;
    this.bdf = opts.pdev.bdf;
    this.name = opts.pdev.bdf;
    this.bus = opts.bus;
    this.tracer = opts.tracer;
    this.nointx = opts.nointx === true;
    const msix = this.pdev.config.msix();
    this.msixBar = msix.vectors > 0 ? msix.tableBar : -1;
    this.msixOffset = msix.tableOffset;
    this.msixSize = msix.vectors * PCI_MSIX_ENTRY_SIZE;
    this.irqs = new VfioPciIrqs({
      bdf: this.bdf,
      config: this.pdev.config,
      tracer: this.tracer,
      msixTable: this.pdev.msixTable,
      interruptPin: () =>
        this.vconfig !== undefined
          ? this.vconfig.interruptPin()
          : this.nointx
            ? 0
            : this.pdev.config.bytes[PCI_INTERRUPT_PIN]!,
    });
  }

  /** True between open and close (the user holds a device fd). */
  get isOpen(): boolean {
    return this.vconfig !== undefined;
  }

  /** The virtual config space of the current session (ENODEV when the device is not open). */
  get config(): VfioPciConfig {
    if (this.vconfig === undefined) {
      throw new KernelError(Errno.ENODEV, `${this.bdf} is not open: there is no user config space`);
    }
    return this.vconfig;
  }

  // ---- open / close (vfio_pci_core_enable / vfio_pci_core_disable) ------------------------------------------------

  open(_dma: VfioDmaAccess | undefined): void {
    const hw = this.pdev.config;
    this.clearMaster();
    this.enableDevice();
    this.resetFunction("open");
    this.saved = this.saveState();
    const cmd = hw.read(PCI_COMMAND, 2);
    if ((cmd & PCI_COMMAND_INTX_DISABLE) !== 0) hw.write(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_INTX_DISABLE);
    const irqs = this.irqs;
    this.vconfig = new VfioPciConfig(
      hw,
      {
        msiInUse: () => irqs.irqType === VFIO_PCI_MSI_IRQ_INDEX,
        msiQmax: () => irqs.msiQmax,
        intxMask: () => {
          irqs.intxMask("INTx Disable set in config space");
        },
        intxUnmask: () => irqs.intxUnmask(),
        get virqDisabled(): boolean {
          return irqs.virqDisabled;
        },
        set virqDisabled(v: boolean) {
          irqs.virqDisabled = v;
        },
        barsRestored: () => {
          if (this.tracer.enabled) this.tracer.emit("vfio_pci.bar_restore", { bdf: this.bdf });
        },
      },
      { nointx: this.nointx },
    );
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.open", { bdf: this.bdf });
  }

  close(): void {
    const hw = this.pdev.config;
    this.clearMaster();
    this.irqs.disableAll();
    this.vconfig = undefined;
    const saved = this.saved ?? this.saveState();
    this.saved = undefined;
    // Disable INTx and MSI decoding during the reset, then restore what open saved (not a "try" reset: that would
    // save and restore the session's state instead).
    hw.write(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE);
    this.bus.reset(this.bdf);
    this.restoreState(saved);
    this.clearMaster(); // pci_disable_device
    if (this.tracer.enabled) {
      this.tracer.emit("vfio_pci.reset", { bdf: this.bdf, reason: "release" });
      this.tracer.emit("vfio_pci.close", { bdf: this.bdf });
    }
  }

  // ---- info -------------------------------------------------------------------------------------------------------

  info(): VfioDeviceInfo {
    return {
      flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
      numRegions: VFIO_PCI_NUM_REGIONS,
      numIrqs: VFIO_PCI_NUM_IRQS,
    };
  }

  regionInfo(index: number): VfioRegionInfo {
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) {
      return {
        index,
        flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
        size: this.pdev.config.bytes.length,
      };
    }
    if (Number.isInteger(index) && index >= 0 && index <= VFIO_PCI_BAR5_REGION_INDEX) {
      const spec = this.pdev.config.barSpec(index);
      if (spec === undefined) return { index, flags: 0, size: 0 };
      let flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
      if (!this.barMmapSupported(index)) return { index, flags, size: spec.size };
      flags |= VFIO_REGION_INFO_FLAG_MMAP;
      if (index !== this.msixBar) return { index, flags, size: spec.size };
      return { index, flags, size: spec.size, caps: [this.msixSparseMmapCap(spec.size)] };
    }
    if (index === VFIO_PCI_ROM_REGION_INDEX) return { index, flags: 0, size: 0 };
    if (index === VFIO_PCI_VGA_REGION_INDEX) {
      throw new KernelError(Errno.EINVAL, `${this.bdf} has no VGA region (legacy VGA access is not provided)`);
    }
    throw new KernelError(
      Errno.EINVAL,
      `region index ${index} is out of range: ${this.bdf} has ${VFIO_PCI_NUM_REGIONS} regions`,
    );
  }

  irqInfo(index: number): VfioIrqInfo {
    return this.irqs.info(index);
  }

  setIrqs(set: VfioIrqSet): void {
    this.irqs.set(set);
  }

  /** VFIO_DEVICE_RESET: pci_try_reset_function, the config state saved and restored around the reset. */
  reset(): void {
    this.resetFunction("VFIO_DEVICE_RESET");
  }

  // ---- regions ----------------------------------------------------------------------------------------------------

  regionRead(index: number, offset: number, buf: Uint8Array): number {
    return this.regionRw(index, offset, buf, false);
  }

  regionWrite(index: number, offset: number, buf: Uint8Array): number {
    return this.regionRw(index, offset, buf, true);
  }

  regionMmap(index: number, offset: number, length: number, _prot: number): FileMapping {
    if (!Number.isInteger(index) || index < 0 || index >= VFIO_PCI_ROM_REGION_INDEX) {
      throw new KernelError(Errno.EINVAL, `${vfioPciRegionName(index)} of ${this.bdf} cannot be mmapped`);
    }
    if (!this.barMmapSupported(index)) {
      throw new KernelError(
        Errno.EINVAL,
        `BAR${index} of ${this.bdf} is not mmap-able (${this.pdev.config.barSpec(index) === undefined ? "not implemented" : "trapped MMIO"})`,
      );
    }
    const size = this.pdev.config.barSpec(index)!.size;
    const physLen = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
    if (offset % PAGE_SIZE !== 0 || length <= 0 || offset + length > physLen) {
      throw new KernelError(
        Errno.EINVAL,
        `mmap of [0x${offset.toString(16)}, +0x${length.toString(16)}) does not fit BAR${index} of ${this.bdf} (0x${physLen.toString(16)} bytes)`,
      );
    }
    if (index === this.msixBar) {
      const [start, end] = this.msixPages();
      if (offset < end && offset + length > start) {
        throw new KernelError(
          Errno.EINVAL,
          `mmap of [0x${offset.toString(16)}, +0x${length.toString(16)}) of BAR${index} of ${this.bdf} overlaps the ` +
            `MSI-X table pages [0x${start.toString(16)}, 0x${end.toString(16)}): map around them (SPARSE_MMAP)`,
        );
      }
    }
    const base = this.pdev.barFrames!(index)!;
    return { basePfn: (base + offset / PAGE_SIZE) as typeof base, label: `vfio-pci ${this.bdf} BAR${index}` };
  }

  // ---- requests from the host -------------------------------------------------------------------------------------

  /** vfio_pci_core_request: the host wants the device back; signals REQ. Returns whether an eventfd was there. */
  request(): boolean {
    const signalled = this.irqs.request();
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.request", { bdf: this.bdf, signalled });
    return signalled;
  }

  // ---- internals --------------------------------------------------------------------------------------------------

  private regionRw(index: number, offset: number, buf: Uint8Array, write: boolean): number {
    if (!Number.isInteger(index) || index < 0 || index >= VFIO_PCI_NUM_REGIONS) {
      throw new KernelError(
        Errno.EINVAL,
        `region index ${index} is out of range: ${this.bdf} has ${VFIO_PCI_NUM_REGIONS} regions`,
      );
    }
    if (buf.length === 0) return 0;
    const cfg = this.config;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return cfg.rw(offset, buf, write);
    if (index <= VFIO_PCI_BAR5_REGION_INDEX) {
      if (index === this.msixBar) {
        const end = this.msixOffset + this.msixSize;
        return vfioPciBarRw(this.pdev, index, offset, buf, write, cfg.memoryEnabled(), this.msixOffset, end);
      }
      return vfioPciBarRw(this.pdev, index, offset, buf, write, cfg.memoryEnabled());
    }
    if (index === VFIO_PCI_ROM_REGION_INDEX) {
      throw new KernelError(
        Errno.EINVAL,
        write ? `the ROM region of ${this.bdf} is read-only` : `${this.bdf} has no expansion ROM`,
      );
    }
    throw new KernelError(Errno.EINVAL, `${this.bdf} has no VGA region (legacy VGA access is not provided)`);
  }

  /** The page-aligned span of the MSI-X table, [start, end). */
  private msixPages(): [number, number] {
    const start = Math.floor(this.msixOffset / PAGE_SIZE) * PAGE_SIZE;
    return [start, Math.ceil((this.msixOffset + this.msixSize) / PAGE_SIZE) * PAGE_SIZE];
  }

  /** msix_sparse_mmap_cap (Linux before 4.16): the mmap-able areas of the MSI-X BAR, around the table's pages. */
  private msixSparseMmapCap(barSize: number): VfioCapability {
    const [start, end] = this.msixPages();
    const areas: { offset: number; size: number }[] = [];
    if (start > 0) areas.push({ offset: 0, size: start });
    if (end < barSize) areas.push({ offset: end, size: barSize - end });
    // VfioCapability carries the body after the 8-byte header; vfio-core writes the header.
    return {
      id: VFIO_REGION_INFO_CAP_SPARSE_MMAP,
      version: VFIO_CAP_VERSION_1,
      body: sparseMmapCap(areas).subarray(8),
    };
  }

  /** vfio_pci_probe_mmaps, narrowed to what the model can map: memory BARs whose frames the device exposes. */
  private barMmapSupported(bar: number): boolean {
    const spec = this.pdev.config.barSpec(bar);
    if (spec === undefined || spec.kind === "io") return false;
    return this.pdev.barFrames?.(bar) !== undefined;
  }

  private clearMaster(): void {
    const hw = this.pdev.config;
    const cmd = hw.read(PCI_COMMAND, 2);
    if ((cmd & PCI_COMMAND_MASTER) !== 0) hw.write(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MASTER);
  }

  /** pci_enable_device: decoding on for the kinds of BAR the device has. */
  private enableDevice(): void {
    const hw = this.pdev.config;
    let bits = 0;
    for (let i = 0; i < 6; i++) {
      const spec = hw.barSpec(i);
      if (spec !== undefined) bits |= spec.kind === "io" ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY;
    }
    const cmd = hw.read(PCI_COMMAND, 2);
    if ((cmd | bits) !== cmd) hw.write(PCI_COMMAND, 2, cmd | bits);
  }

  /** pci_try_reset_function: save the config state, reset the function, restore the state. */
  private resetFunction(reason: string): void {
    const state = this.saveState();
    this.bus.reset(this.bdf);
    this.restoreState(state);
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.reset", { bdf: this.bdf, reason });
  }

  /** pci_save_state, as far as the model's config spaces go: header dwords, MSI registers, MSI-X control and table. */
  private saveState(): SavedState {
    const hw = this.pdev.config;
    const header = new Float64Array(HEADER_DWORDS);
    for (let i = 0; i < HEADER_DWORDS; i++) header[i] = hw.read(i * 4, 4);
    const cap = hw.msiCap;
    let msi: Float64Array | undefined;
    if (cap !== 0) {
      msi = Float64Array.of(
        hw.read(cap + PCI_MSI_ADDRESS_LO, 4),
        hw.read(cap + PCI_MSI_ADDRESS_HI, 4),
        hw.read(cap + PCI_MSI_DATA_64, 2),
        hw.read(cap + PCI_MSI_FLAGS, 2),
      );
    }
    let msix: Float64Array | undefined;
    const t = this.pdev.msixTable;
    const xcap = hw.msixCap;
    if (xcap !== 0 && t !== undefined) {
      msix = new Float64Array(1 + 4 * t.vectors);
      msix[0] = hw.read(xcap + PCI_MSIX_FLAGS, 2);
      for (let i = 0; i < 4 * t.vectors; i++) msix[1 + i] = t.read(t.tableBar, t.tableOffset + 4 * i, 4);
    }
    return { header, msi, msix };
  }

  /** pci_restore_state: header dwords 15 down to 1 where they differ (BARs before command), then MSI. */
  private restoreState(s: SavedState): void {
    const hw = this.pdev.config;
    for (let i = HEADER_DWORDS - 1; i >= 1; i--) {
      const off = i * 4;
      if (hw.read(off, 4) !== s.header[i]) hw.write(off, 4, s.header[i]!);
    }
    const cap = hw.msiCap;
    if (cap !== 0 && s.msi !== undefined) {
      hw.write(cap + PCI_MSI_ADDRESS_LO, 4, s.msi[0]!);
      hw.write(cap + PCI_MSI_ADDRESS_HI, 4, s.msi[1]!);
      hw.write(cap + PCI_MSI_DATA_64, 2, s.msi[2]!);
      hw.write(cap + PCI_MSI_FLAGS, 2, s.msi[3]!);
    }
    const t = this.pdev.msixTable;
    const xcap = hw.msixCap;
    if (xcap !== 0 && t !== undefined && s.msix !== undefined) {
      const control = s.msix[0]!;
      if ((control & PCI_MSIX_FLAGS_ENABLE) !== 0) {
        // __pci_restore_msix_state: entries written back while the function is masked.
        hw.write(xcap + PCI_MSIX_FLAGS, 2, control | PCI_MSIX_FLAGS_MASKALL);
        for (let i = 0; i < 4 * t.vectors; i++) t.write(t.tableBar, t.tableOffset + 4 * i, 4, s.msix[1 + i]!);
      }
      hw.write(xcap + PCI_MSIX_FLAGS, 2, control);
    }
  }
}

/** What vfio-pci needs from vfio-core (satisfied by `VfioCore`). */
export interface VfioCoreForPci {
  registerBusDriver(name: string): void;
  registerDevice(ops: VfioDeviceOps, reg: { readonly type: "iommu"; readonly bdf: Bdf }): number;
  unregisterDevice(name: string): void;
}

export interface VfioPciDriverOptions {
  readonly bus: PciBus;
  readonly core: VfioCoreForPci;
  readonly tracer: Tracer;
  /** Module option nointxmask-like switch: hide INTx on every device (vdev->nointx). Default false. */
  readonly nointx?: boolean;
}

/** The vfio-pci driver: binds PCI functions and registers them with vfio-core (vfio_pci_probe / vfio_pci_remove). */
export class VfioPciDriver {
  readonly name = VFIO_PCI_DRIVER_NAME;
  private readonly bus: PciBus;
  private readonly core: VfioCoreForPci;
  private readonly tracer: Tracer;
  private readonly nointx: boolean;
  private readonly bound = new Map<string, VfioPciDevice>();

  constructor(opts: VfioPciDriverOptions) {
    this.bus = opts.bus;
    this.core = opts.core;
    this.tracer = opts.tracer;
    this.nointx = opts.nointx === true;
    this.core.registerBusDriver(VFIO_PCI_DRIVER_NAME);
  }

  /**
   * Binds `bdf` (echo bdf > /sys/bus/pci/drivers/vfio-pci/bind): EINVAL for a non-type-0 header, EBUSY if another
   * driver has it, and vfio-core's errors (no IOMMU group) with the binding undone. Returns the vfio device.
   */
  bind(bdf: Bdf): VfioPciDevice {
    const pdev = this.bus.get(bdf);
    const headerType = pdev.config.bytes[PCI_HEADER_TYPE]! & 0x7f;
    if (headerType !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `${bdf} has header type ${headerType}: vfio-pci only takes type 0 (endpoint) functions, not bridges`,
      );
    }
    const dev = new VfioPciDevice({ pdev, bus: this.bus, tracer: this.tracer, nointx: this.nointx });
    this.bus.bind(bdf, VFIO_PCI_DRIVER_NAME, dev.irqs.handler);
    let group: number;
    try {
      group = this.core.registerDevice(dev, { type: "iommu", bdf });
    } catch (e) {
      this.bus.unbind(bdf);
      throw e;
    }
    this.bound.set(bdf, dev);
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.bind", { bdf, group });
    return dev;
  }

  /**
   * Unbinds `bdf`. If a user holds the device, the user is asked to release it (REQ eventfd) and EBUSY is returned:
   * Linux would block here until the user closes the device. ENODEV if `bdf` is not bound to vfio-pci.
   */
  unbind(bdf: Bdf): void {
    const dev = this.device(bdf);
    if (dev.isOpen) dev.request();
    this.core.unregisterDevice(dev.name);
    this.bound.delete(bdf);
    this.bus.unbind(bdf);
    if (this.tracer.enabled) this.tracer.emit("vfio_pci.unbind", { bdf });
  }

  /** The vfio-pci device for `bdf`; ENODEV if it is not bound here. */
  device(bdf: Bdf): VfioPciDevice {
    const d = this.bound.get(bdf);
    if (d === undefined) throw new KernelError(Errno.ENODEV, `${bdf} is not bound to vfio-pci`);
    return d;
  }

  has(bdf: Bdf): boolean {
    return this.bound.has(bdf);
  }

  /** Bound devices, by address. */
  list(): Bdf[] {
    return [...this.bound.keys()].sort() as Bdf[];
  }
}
