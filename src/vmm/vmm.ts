/**
 * A QEMU-like VMM: one host process that owns guest RAM and attaches devices through the VFIO ioctl interface only,
 * knowing nothing device-specific. What a real QEMU with `-device vfio-pci,sysfsdev=...` does, step by step:
 *
 * ```ts
 * const vmm = Vmm.create(host, { name: "vm1", memoryBytes: 4 * GiB, rlimitMemlockBytes: 8 * GiB });
 * const gpu = vmm.attach({ sysfsdev: `/sys/bus/mdev/devices/${uuid}` });   // or { host: "0000:00:04.0" }
 * vmm.mmioWrite(gpu.barAddress(0) + 0x2030, 4, 1);                          // the guest's MMIO
 * vmm.onInterrupt(gpu, (vector) => ...);                                    // the guest's handler
 * vmm.ram.writeU64(0x1000, entry);                                  // the guest's RAM
 * vmm.shutdown();
 * ```
 *
 * - create: spawns the process (`host.spawn`, with its RLIMIT_MEMLOCK and CAP_IPC_LOCK), computes the PC layout
 *   (memory.ts) and mmaps one anonymous block per RAM range. Nothing is touched: a 16 GiB guest costs no frame.
 * - attach: resolves the sysfs path (realpath; the group number from readlink(<dev>/iommu_group); the device name is
 *   the path's basename, as QEMU), opens the group into a container (vfio-container.ts: GET_STATUS, SET_CONTAINER on
 *   an existing container first, else a new one with TYPE1v2 and MAP_DMA of every RAM block), gets the device fd, and
 *   realizes the device on the guest bus (vfio-pci-dev.ts). A failure at any step undoes the steps before it.
 * - the guest: `mmioRead/mmioWrite` (a BAR, else RAM, else unassigned: all ones), `ioRead/ioWrite` (I/O BARs), the
 *   PCI bus's config cycles (`pci`), `ram` (RAM through the VMM's HVAs), `onInterrupt` (injection).
 * - memory hot-plug: `plugMemory` maps a new block in every container; `unplugMemory` UNMAP_DMAs it from every
 *   container (type1 makes every mdev that pinned pages there unpin them) and then munmaps it.
 * - `detach` (hot-unplug), `resetDevice` (VFIO_DEVICE_RESET), `shutdown` (everything closed in order, then the process
 *   exits) and `kill` (the process dies at once: exit closes the fds and the kernel side releases everything).
 *
 * After `shutdown` or `kill` every method fails with ESRCH naming the VM.
 *
 * Not modelled: vCPUs, KVM (interrupts are delivered by callback, not into a virtual APIC), machine types other than
 * the PC layout, migration, vfio-user devices (src/vfio-user), iommufd, no-IOMMU groups.
 */
import {
  defineTraceEvents,
  Errno,
  type Gpa,
  gpa,
  hex,
  isKernelError,
  KernelError,
  PAGE_SIZE,
  SZ_4G,
  type Tracer,
} from "../core/index.ts";
import { type Host, PROT_READ, PROT_WRITE, type Process } from "../host/index.ts";
import type { VfioDeviceHandle } from "../vfio/index.ts";
import { type InterruptHandler, InterruptSource } from "./irq.ts";
import {
  DIMM_ALIGN,
  formatBytes,
  type GuestLayout,
  GuestMemoryMap,
  MappedGuestRam,
  pcLayout,
  type RamBlock,
} from "./memory.ts";
import { allOnes, GuestPciBus, WindowAllocator } from "./pci-bus.ts";
import { failed, VfioSpace, type VmmGroup, within } from "./vfio-container.ts";
import { type AttachedDevice, VfioPciFrontend } from "./vfio-pci.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vmm.create": { vm: string; pid: number; memoryBytes: number; lowMemBytes: number; highMemBytes: number };
    "vmm.ram.add": { vm: string; block: string; gpa: number; size: number; hva: number; hotplugged: boolean };
    "vmm.attach": {
      vm: string;
      device: string;
      sysfsdev: string;
      group: number;
      guestBdf: string;
      irq: string;
      bars: readonly string[];
    };
    "vmm.unplug": { vm: string; block: string; gpa: number; size: number };
    "vmm.detach": { vm: string; device: string; group: number; guestBdf: string };
    "vmm.reset": { vm: string; device: string };
    "vmm.mmio.unassigned": { vm: string; space: string; addr: number; size: number; write: boolean };
    "vmm.shutdown": { vm: string; pid: number; devices: number; blocks: number };
    "vmm.kill": { vm: string; pid: number; devices: number };
  }
}
defineTraceEvents("vmm", {
  "vmm.create": "{vm}: process {pid}, {memoryBytes} bytes of RAM ({lowMemBytes} below 4 GiB, {highMemBytes} above)",
  "vmm.ram.add": "{vm}: RAM block {block} at gpa {gpa}, {size} bytes, hva {hva} (hot-plugged {hotplugged})",
  "vmm.attach": "{vm}: attached {device} ({sysfsdev}) from group {group} at {guestBdf}, irq {irq}, BARs {bars}",
  "vmm.unplug": "{vm}: RAM block {block} at gpa {gpa} ({size} bytes) unplugged",
  "vmm.detach": "{vm}: detached {device} (group {group}) from {guestBdf}",
  "vmm.reset": "{vm}: {device} reset",
  "vmm.mmio.unassigned": "{vm}: unassigned {space} access at {addr} ({size} bytes, write {write})",
  "vmm.shutdown": "{vm}: shut down: {devices} device(s) detached, {blocks} RAM block(s) unmapped, process {pid} exited",
  "vmm.kill": "{vm}: process {pid} killed with {devices} device(s) attached",
});

/** What the VMM needs of the host: a process, the sysfs tree, the tracer (a `Host` provides them). */
export type VmmHost = Pick<Host, "spawn" | "sysfs" | "tracer">;

export interface VmmOptions {
  /** The VM's name (the process's comm is "qemu-<name>"). */
  readonly name: string;
  /** Boot RAM, a multiple of 4 KiB. */
  readonly memoryBytes: number;
  /** RAM below 4 GiB; default min(memoryBytes, 3 GiB). */
  readonly lowMemBytes?: number;
  /** Boot RAM plus what may be hot-plugged (QEMU's maxmem); default memoryBytes + 4 GiB. */
  readonly maxMemoryBytes?: number;
  /** Size of the 64-bit PCI window; default 32 GiB. */
  readonly pciHole64Bytes?: number;
  /** The process's RLIMIT_MEMLOCK (default Linux's 8 MiB). */
  readonly rlimitMemlockBytes?: number;
  readonly capIpcLock?: boolean;
}

/** `sysfsdev` (an mdev or PCI device directory in sysfs) or `host` (a PCI BDF, QEMU's host= property). */
export type AttachOptions = (
  | { readonly sysfsdev: string; readonly host?: undefined }
  | { readonly host: string; readonly sysfsdev?: undefined }
) & {
  /** Guest PCI slot (2..31); default the first free one. */
  readonly slot?: number;
  /** "attach" (default): the VMM enables MSI at attach when the device has it; "guest": when the guest does. */
  readonly msi?: "attach" | "guest";
};

/** A snapshot of the VMM for tests and the dashboard. */
export interface VmmState {
  readonly name: string;
  readonly pid: number;
  readonly alive: boolean;
  readonly ram: readonly { readonly name: string; readonly gpa: number; readonly size: number; readonly hva: number }[];
  readonly devices: readonly {
    readonly name: string;
    readonly group: number;
    readonly guestBdf: string;
    readonly irq: string;
    readonly interrupts: number;
  }[];
  readonly containers: readonly {
    readonly id: number;
    readonly groups: readonly number[];
    readonly mapped: readonly string[];
  }[];
  readonly unassignedAccesses: number;
}

interface Attached {
  readonly dev: VfioPciFrontend;
  readonly group: VmmGroup;
  readonly source: InterruptSource;
}

export class Vmm {
  readonly name: string;
  readonly process: Process;
  readonly layout: GuestLayout;
  /** The guest's RAM as its CPU sees it. */
  readonly ram: MappedGuestRam;
  /** The guest's PCI bus (config cycles by slot, BAR windows, dispatch). */
  readonly pci: GuestPciBus;
  private readonly tracer: Tracer;
  private readonly memMap = new GuestMemoryMap();
  private readonly hotplug: WindowAllocator;
  private readonly space: VfioSpace;
  private readonly attached = new Map<VfioPciFrontend, Attached>();
  private nextDimm = 0;
  private alive = true;
  private unassigned = 0;

  private constructor(
    private readonly host: VmmHost,
    opts: VmmOptions,
  ) {
    this.name = opts.name;
    this.tracer = host.tracer;
    this.layout = pcLayout(opts);
    this.process = host.spawn(`qemu-${opts.name}`, {
      ...(opts.rlimitMemlockBytes !== undefined ? { rlimitMemlockBytes: opts.rlimitMemlockBytes } : {}),
      ...(opts.capIpcLock !== undefined ? { capIpcLock: opts.capIpcLock } : {}),
    });
    this.ram = new MappedGuestRam(this.memMap, this.process.mm);
    this.pci = new GuestPciBus(this.layout);
    this.hotplug = new WindowAllocator("memory hot-plug", this.layout.hotplug);
    this.space = new VfioSpace({
      vm: this.name,
      proc: this.process,
      sysfs: host.sysfs,
      tracer: this.tracer,
      ramBlocks: () => this.memMap.blocks(),
    });
  }

  /** Spawns the VMM process and maps its boot RAM (EINVAL for a bad layout, before anything is spawned). */
  static create(host: VmmHost, opts: VmmOptions): Vmm {
    pcLayout(opts); // validate before spawning
    const vmm = new Vmm(host, opts);
    const l = vmm.layout;
    if (vmm.tracer.enabled) {
      vmm.tracer.emit("vmm.create", {
        vm: vmm.name,
        pid: vmm.process.pid,
        memoryBytes: l.memoryBytes,
        lowMemBytes: l.lowMemBytes,
        highMemBytes: l.highMemBytes,
      });
    }
    try {
      if (l.lowMemBytes > 0) vmm.addBlock("ram-below-4g", gpa(0), l.lowMemBytes, false);
      if (l.highMemBytes > 0) vmm.addBlock("ram-above-4g", gpa(SZ_4G), l.highMemBytes, false);
    } catch (e) {
      vmm.process.exit();
      vmm.alive = false;
      throw e;
    }
    return vmm;
  }

  get isAlive(): boolean {
    return this.alive;
  }

  /** RAM blocks in GPA order. */
  ramBlocks(): readonly RamBlock[] {
    return this.memMap.blocks();
  }

  /** Attached devices in attach order. */
  devices(): readonly AttachedDevice[] {
    return [...this.attached.keys()];
  }

  // ---- devices ---------------------------------------------------------------------------------------------------

  /** Attaches a device by sysfs path or PCI BDF (see the module comment). Errors name the step and keep the errno. */
  attach(opts: AttachOptions): AttachedDevice {
    this.checkAlive("attach a device");
    const sysfsdev = (opts.sysfsdev ?? `/sys/bus/pci/devices/${opts.host}`).replace(/\/+$/, "");
    const where = `${this.name}: attach ${sysfsdev}`;
    const sysfs = this.host.sysfs;
    try {
      sysfs.realpath(sysfsdev);
    } catch (e) {
      failed(`${where}: resolving the device in sysfs`, e);
    }
    const name = sysfsdev.slice(sysfsdev.lastIndexOf("/") + 1);
    for (const a of this.attached.keys()) {
      if (a.name === name) {
        throw new KernelError(Errno.EBUSY, `${where}: device ${name} is already attached at ${a.guestBdf}`);
      }
    }
    let groupId: number;
    try {
      const link = sysfs.readlink(`${sysfsdev}/iommu_group`);
      groupId = Number.parseInt(link.slice(link.lastIndexOf("/") + 1), 10);
    } catch (e) {
      failed(
        `${where}: readlink ${sysfsdev}/iommu_group (the device has no IOMMU group: the host IOMMU is off, or ` +
          "this is not a device vfio can assign)",
        e,
      );
    }
    if (!Number.isSafeInteger(groupId) || groupId < 0) {
      throw new KernelError(Errno.EINVAL, `${where}: ${sysfsdev}/iommu_group does not name a group number`);
    }
    const slot = this.pci.reserveSlot(opts.slot);

    let group: VmmGroup;
    try {
      group = this.space.openGroup(groupId);
    } catch (e) {
      within(where, e);
    }
    let handle: VfioDeviceHandle;
    try {
      handle = group.handle.getDevice(name);
    } catch (e) {
      this.releaseGroupQuietly(group, name);
      failed(`${where}: VFIO_GROUP_GET_DEVICE_FD(${name}) on group ${groupId}`, e);
    }
    group.devices.add(name);
    const source = new InterruptSource(this.name, name, this.tracer);
    const dev = new VfioPciFrontend(handle, {
      vm: this.name,
      proc: this.process,
      tracer: this.tracer,
      bus: this.pci,
      source,
      sysfsdev,
      group: groupId,
      slot,
      msi: opts.msi ?? "attach",
    });
    try {
      dev.realize();
      this.pci.plug(slot, dev);
    } catch (e) {
      try {
        dev.release();
      } catch {
        // the first error is the one to report
      }
      this.releaseGroupQuietly(group, name);
      within(where, e);
    }
    this.attached.set(dev, { dev, group, source });
    if (this.tracer.enabled) {
      this.tracer.emit("vmm.attach", {
        vm: this.name,
        device: name,
        sysfsdev,
        group: groupId,
        guestBdf: dev.guestBdf,
        irq: dev.irqMode,
        bars: dev.bars.map((b) => `BAR${b.index} ${b.kind} ${formatBytes(b.size)} @${hex(b.placedAt)}`),
      });
    }
    return dev;
  }

  /** Hot-unplug: interrupts off, BARs unmapped, device fd closed, group and container released when emptied. */
  detach(device: AttachedDevice): void {
    this.checkAlive("detach a device");
    const a = this.lookup(device);
    this.attached.delete(a.dev);
    this.pci.unplug(a.dev.slot);
    let error: unknown;
    try {
      a.dev.release();
    } catch (e) {
      error = e;
    }
    try {
      this.space.releaseDevice(a.group, a.dev.name);
    } catch (e) {
      error ??= e;
    }
    if (this.tracer.enabled) {
      this.tracer.emit("vmm.detach", {
        vm: this.name,
        device: a.dev.name,
        group: a.group.id,
        guestBdf: a.dev.guestBdf,
      });
    }
    if (error !== undefined) within(`${this.name}: detach ${a.dev.name}`, error);
  }

  /** VFIO_DEVICE_RESET with the VMM's pre/post reset steps (see vfio-pci-dev.ts). */
  resetDevice(device: AttachedDevice): void {
    this.checkAlive("reset a device");
    const a = this.lookup(device);
    try {
      a.dev.reset();
    } catch (e) {
      within(`${this.name}: reset of ${a.dev.name}`, e);
    }
    if (this.tracer.enabled) this.tracer.emit("vmm.reset", { vm: this.name, device: a.dev.name });
  }

  /** Registers the guest's handler for a device's interrupts; returns the function that removes it. */
  onInterrupt(device: AttachedDevice, handler: InterruptHandler): () => void {
    return this.lookup(device).source.subscribe(handler);
  }

  /** Interrupts injected from one device, or from all of them. */
  interruptCount(device?: AttachedDevice): number {
    if (device !== undefined) return this.lookup(device).source.delivered;
    let n = 0;
    for (const a of this.attached.values()) n += a.source.delivered;
    return n;
  }

  // ---- the guest's accesses --------------------------------------------------------------------------------------

  /** A guest load from guest-physical `gpa`: a BAR that decodes it, else RAM, else all ones (unassigned). */
  mmioRead(gpa: Gpa, size: number): number {
    this.checkAccess(gpa, size);
    const v = this.pci.memSpace.read(gpa, size);
    if (v >= 0) return v;
    const m = this.ram;
    if (m.hvaOf(gpa) >= 0) {
      return size === 1 ? m.readU8(gpa) : size === 2 ? m.readU16(gpa) : size === 4 ? m.readU32(gpa) : m.readU64(gpa);
    }
    this.noteUnassigned("memory", gpa, size, false);
    return allOnes(size);
  }

  /** A guest store to guest-physical `gpa`: a BAR, else RAM, else dropped. */
  mmioWrite(gpa: Gpa, size: number, value: number): void {
    this.checkAccess(gpa, size);
    if (this.pci.memSpace.write(gpa, size, value)) return;
    const m = this.ram;
    if (m.hvaOf(gpa) >= 0) {
      if (size === 1) m.writeU8(gpa, value);
      else if (size === 2) m.writeU16(gpa, value);
      else if (size === 4) m.writeU32(gpa, value);
      else m.writeU64(gpa, value);
      return;
    }
    this.noteUnassigned("memory", gpa, size, true);
  }

  /** A guest `in` from an I/O port: an I/O BAR that decodes it, else all ones. */
  ioRead(port: number, size: number): number {
    this.checkAccess(port, size);
    const v = this.pci.ioSpace.read(port, size);
    if (v >= 0) return v;
    this.noteUnassigned("I/O", port, size, false);
    return allOnes(size);
  }

  /** A guest `out` to an I/O port. */
  ioWrite(port: number, size: number, value: number): void {
    this.checkAccess(port, size);
    if (!this.pci.ioSpace.write(port, size, value)) this.noteUnassigned("I/O", port, size, true);
  }

  /** Guest accesses no device or RAM decoded. */
  get unassignedAccesses(): number {
    return this.unassigned;
  }

  // ---- memory hot-plug -------------------------------------------------------------------------------------------

  /** Hot-plugs a RAM block of `sizeBytes` in the hot-plug window and maps it in every container. */
  plugMemory(sizeBytes: number): RamBlock {
    this.checkAlive("plug memory");
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % PAGE_SIZE !== 0) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.name}: hot-plugged memory size ${sizeBytes} must be a multiple of 4 KiB`,
      );
    }
    const name = `dimm${this.nextDimm}`;
    const at = gpa(this.hotplug.alloc(sizeBytes, DIMM_ALIGN, name));
    try {
      const b = this.addBlock(name, at, sizeBytes, true);
      this.nextDimm++;
      return b;
    } catch (e) {
      this.hotplug.free(at);
      throw e;
    }
  }

  /**
   * Unplugs the RAM block that starts at `range.gpa` and is `range.size` long (type1v2 unmaps whole mappings only):
   * UNMAP_DMA from every container, then munmap. EINVAL naming the blocks when no block matches; a failed UNMAP_DMA
   * (an mdev that would not unpin: EBUSY) leaves the block in place.
   */
  unplugMemory(range: { readonly gpa: Gpa; readonly size: number }): void {
    this.checkAlive("unplug memory");
    const b = this.memMap.exact(range.gpa, range.size);
    if (b === undefined) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.name}: no RAM block is exactly ${hex(range.gpa)}+${formatBytes(range.size)} (RAM: ${this.memMap.describe()})`,
      );
    }
    try {
      this.space.unmapBlock(b);
    } catch (e) {
      within(`${this.name}: unplug of ${b.name}`, e);
    }
    this.memMap.remove(b);
    this.process.mm.munmap(b.hva, b.size);
    if (b.hotplugged) this.hotplug.free(b.gpa);
    if (this.tracer.enabled) this.tracer.emit("vmm.unplug", { vm: this.name, block: b.name, gpa: b.gpa, size: b.size });
  }

  // ---- lifetime ---------------------------------------------------------------------------------------------------

  /**
   * Orderly shutdown: every device detached (groups and containers closed, which unmaps and unpins), RAM munmapped,
   * the process exits. Every step runs; the first failure is rethrown after the process is gone.
   */
  shutdown(): void {
    if (!this.alive) return;
    const devices = this.attached.size;
    let error: unknown;
    for (const d of [...this.attached.keys()]) {
      try {
        this.detach(d);
      } catch (e) {
        error ??= e;
      }
    }
    try {
      this.space.closeAll();
    } catch (e) {
      error ??= e;
    }
    const blocks = this.memMap.blocks();
    for (const b of blocks) {
      this.memMap.remove(b);
      this.process.mm.munmap(b.hva, b.size);
    }
    this.process.exit();
    this.alive = false;
    if (this.tracer.enabled) {
      this.tracer.emit("vmm.shutdown", { vm: this.name, pid: this.process.pid, devices, blocks: blocks.length });
    }
    if (error !== undefined) throw error;
  }

  /** The process dies abruptly: exit closes every fd; the kernel side must release everything by itself. */
  kill(): void {
    if (!this.alive) return;
    const devices = this.attached.size;
    this.process.exit();
    for (const a of this.attached.values()) {
      this.pci.unplug(a.dev.slot);
      a.dev.forget();
    }
    this.attached.clear();
    this.space.forget();
    for (const b of this.memMap.blocks()) this.memMap.remove(b);
    this.alive = false;
    if (this.tracer.enabled) this.tracer.emit("vmm.kill", { vm: this.name, pid: this.process.pid, devices });
  }

  /** A snapshot for tests and the dashboard. */
  state(): VmmState {
    return {
      name: this.name,
      pid: this.process.pid,
      alive: this.alive,
      ram: this.memMap.blocks().map((b) => ({ name: b.name, gpa: b.gpa, size: b.size, hva: b.hva })),
      devices: [...this.attached.values()].map((a) => ({
        name: a.dev.name,
        group: a.group.id,
        guestBdf: a.dev.guestBdf,
        irq: a.dev.irqMode,
        interrupts: a.source.delivered,
      })),
      containers: this.space.containerList().map((c) => ({
        id: c.id,
        groups: [...c.groups].map((g) => g.id),
        mapped: [...c.mapped].map((b) => b.name),
      })),
      unassignedAccesses: this.unassigned,
    };
  }

  // ---- internals -------------------------------------------------------------------------------------------------

  private addBlock(name: string, gpa: Gpa, size: number, hotplugged: boolean): RamBlock {
    const hva = this.process.mm.mmap(size, PROT_READ | PROT_WRITE, { name: `${this.name}:${name}` });
    const block: RamBlock = { name, gpa, size, hva, hotplugged };
    this.memMap.add(block);
    try {
      this.space.mapBlock(block);
    } catch (e) {
      this.memMap.remove(block);
      this.process.mm.munmap(hva, size);
      within(`${this.name}: plugging ${formatBytes(size)} of RAM at ${hex(gpa)} (${name})`, e);
    }
    if (this.tracer.enabled) {
      this.tracer.emit("vmm.ram.add", { vm: this.name, block: name, gpa, size, hva, hotplugged });
    }
    return block;
  }

  private lookup(device: AttachedDevice): Attached {
    const a = device instanceof VfioPciFrontend ? this.attached.get(device) : undefined;
    if (a === undefined) {
      throw new KernelError(Errno.ENODEV, `${this.name}: ${device.name} is not attached to this VM`);
    }
    return a;
  }

  private releaseGroupQuietly(group: VmmGroup, name: string): void {
    try {
      this.space.releaseDevice(group, name);
    } catch (e) {
      if (!isKernelError(e)) throw e;
    }
  }

  private checkAlive(what: string): void {
    if (!this.alive) {
      throw new KernelError(Errno.ESRCH, `${this.name} (process ${this.process.pid}) is gone: cannot ${what}`);
    }
  }

  private checkAccess(addr: number, size: number): void {
    if (!this.alive) throw new KernelError(Errno.ESRCH, `${this.name} is gone: its guest cannot access anything`);
    if ((size !== 1 && size !== 2 && size !== 4 && size !== 8) || !Number.isSafeInteger(addr) || addr < 0) {
      throw new KernelError(
        Errno.EINVAL,
        `${this.name}: guest access of ${size} byte(s) at ${addr}: bad size or address`,
      );
    }
  }

  private noteUnassigned(space: string, addr: number, size: number, write: boolean): void {
    this.unassigned++;
    if (this.tracer.enabled) this.tracer.emit("vmm.mmio.unassigned", { vm: this.name, space, addr, size, write });
  }
}
