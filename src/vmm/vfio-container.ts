/**
 * The VMM's VFIO containers and groups (QEMU hw/vfio/container.c and listener.c): which /dev/vfio/<N> groups are
 * open, which container each is in, and the DMA mappings of guest RAM in every container.
 *
 * - Groups are opened once and shared by the devices attached from them. Opening checks GET_STATUS; a group that is
 *   not viable is refused with EPERM and a sentence naming the device in the way and its driver, read from sysfs
 *   (/sys/kernel/iommu_groups/<N>/devices/<bdf>/driver), as QEMU does not (it only says "not viable").
 * - Containers are shared when possible, as QEMU does: SET_CONTAINER is tried on each existing container first; only
 *   when every one refuses is a new container opened (API version check, TYPE1v2 if the kernel has it, else TYPE1),
 *   the group set into it, the IOMMU set, and every RAM block mapped (the memory listener's first replay):
 *   MAP_DMA(iova = GPA, vaddr = HVA, size, READ | WRITE) after checking each block fits the IOVA ranges the backend
 *   reports. Any failure undoes what this call did (unset, close), so nothing is left half-attached.
 * - RAM added later is mapped in every container; RAM removed is unmapped from every container first (UNMAP_DMA: type1
 *   calls the dma_unmap of every mdev that pinned pages in it, which unpins them), and only then munmapped by the VMM.
 * - When a group loses its last device it leaves its container (UNSET_CONTAINER) and is closed; when a container
 *   loses its last group its mappings are unmapped (QEMU releases the listener first) and it is closed, which
 *   releases everything type1 still held.
 *
 * Errors are KernelErrors keeping the kernel's errno with a sentence saying which step failed for what, e.g.
 * "MAP_DMA of 16 GiB at 0x100000000 (ram-above-4g) failed: ENOMEM: RLIMIT_MEMLOCK exceeded ...".
 *
 * Not modelled: no-IOMMU groups (/dev/vfio/noiommu-<N>), iommufd (/dev/iommu and cdev device files), mapping mmap'd
 * BARs for peer-to-peer DMA (QEMU maps them and tolerates failure), discard managers (virtio-mem), dirty tracking.
 */
import { defineTraceEvents, Errno, hex, isKernelError, KernelError, type Tracer } from "../core/index.ts";
import type { Process, Sysfs } from "../host/index.ts";
import {
  VFIO_API_VERSION,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VfioContainerHandle,
  VfioGroupHandle,
  type VfioIommuInfo,
} from "../vfio/index.ts";
import { formatBytes, type RamBlock } from "./memory.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vmm.ram.map": { vm: string; block: string; gpa: number; size: number; hva: number; container: number };
    "vmm.ram.unmap": { vm: string; block: string; gpa: number; size: number; container: number; bytes: number };
    "vmm.group.open": { vm: string; group: number; container: number; newContainer: boolean };
    "vmm.group.close": { vm: string; group: number; container: number };
    "vmm.container.open": { vm: string; container: number; fd: number; iommu: string };
    "vmm.container.close": { vm: string; container: number };
  }
}
defineTraceEvents("vmm", {
  "vmm.ram.map": "{vm}: MAP_DMA {block} gpa {gpa} size {size} from hva {hva} in container {container}",
  "vmm.ram.unmap": "{vm}: UNMAP_DMA {block} gpa {gpa} size {size} from container {container} ({bytes} bytes)",
  "vmm.group.open": "{vm}: group {group} opened in container {container} (new container {newContainer})",
  "vmm.group.close": "{vm}: group {group} left container {container} and was closed",
  "vmm.container.open": "{vm}: container {container} (fd {fd}) opened with {iommu}",
  "vmm.container.close": "{vm}: container {container} closed",
});

/** What the container layer needs from the VMM. */
export interface VfioSpaceEnv {
  readonly vm: string;
  readonly proc: Process;
  readonly sysfs: Pick<Sysfs, "readdir" | "readlink" | "exists">;
  readonly tracer: Tracer;
  /** The RAM blocks mapped into a new container. */
  ramBlocks(): readonly RamBlock[];
}

/** One open container. */
export class VmmContainer {
  readonly groups = new Set<VmmGroup>();
  /** RAM blocks mapped in it. */
  readonly mapped = new Set<RamBlock>();
  iommuInfo: VfioIommuInfo | undefined;

  constructor(
    /** The VMM's own number for it (1, 2, ...), for messages and traces. */
    readonly id: number,
    readonly handle: VfioContainerHandle,
    readonly iommuType: number,
  ) {}
}

/** One open group. */
export class VmmGroup {
  /** Names of the devices attached from it. */
  readonly devices = new Set<string>();

  constructor(
    readonly id: number,
    readonly handle: VfioGroupHandle,
    readonly container: VmmContainer,
  ) {}
}

/** Keeps KernelError's errno and says which step failed: "<step> failed: ENOMEM: <why>[; <hint>]". */
export function failed(step: string, e: unknown, hint = ""): never {
  if (isKernelError(e)) {
    const msg = `${step} failed: ${e.code}: ${e.message}${hint === "" ? "" : `; ${hint}`}`;
    throw new KernelError(e.errno, msg, e.detail ? { ...e.detail } : undefined);
  }
  throw e;
}

/** Keeps KernelError's errno and prefixes where it happened: "<where>: <message>". */
export function within(where: string, e: unknown): never {
  if (isKernelError(e))
    throw new KernelError(e.errno, `${where}: ${e.message}`, e.detail ? { ...e.detail } : undefined);
  throw e;
}

function iommuName(type: number): string {
  return type === VFIO_TYPE1v2_IOMMU ? "VFIO_TYPE1v2_IOMMU" : "VFIO_TYPE1_IOMMU";
}

/** The VMM's VFIO address space: its containers and groups. */
export class VfioSpace {
  private readonly containers: VmmContainer[] = [];
  private readonly groupsById = new Map<number, VmmGroup>();
  private nextContainer = 1;

  constructor(private readonly env: VfioSpaceEnv) {}

  /** The group if already open. */
  group(id: number): VmmGroup | undefined {
    return this.groupsById.get(id);
  }

  groups(): readonly VmmGroup[] {
    return [...this.groupsById.values()];
  }

  containerList(): readonly VmmContainer[] {
    return this.containers.slice();
  }

  /** Opens group `id` into a container (an existing one if it accepts the group), or returns it if already open. */
  openGroup(id: number): VmmGroup {
    const existing = this.groupsById.get(id);
    if (existing !== undefined) return existing;
    const { proc } = this.env;
    let handle: VfioGroupHandle;
    try {
      handle = VfioGroupHandle.open(proc, id);
    } catch (e) {
      if (isKernelError(e) && e.errno === Errno.EBUSY) {
        failed(`open /dev/vfio/${id} (group ${id} is already open, by another VMM or another process)`, e);
      }
      if (isKernelError(e) && (e.errno === Errno.ENOENT || e.errno === Errno.ENODEV)) {
        failed(`open /dev/vfio/${id} (no vfio driver owns IOMMU group ${id}: bind its devices to vfio-pci)`, e);
      }
      failed(`open /dev/vfio/${id}`, e);
    }
    try {
      let status: ReturnType<VfioGroupHandle["status"]>;
      try {
        status = handle.status();
      } catch (e) {
        failed(`VFIO_GROUP_GET_STATUS on group ${id}`, e);
      }
      if (!status.viable) throw new KernelError(Errno.EPERM, this.explainNotViable(id), { group: id });
      const group = this.connect(id, handle);
      this.groupsById.set(id, group);
      return group;
    } catch (e) {
      handle.close();
      throw e;
    }
  }

  /** Drops a device from its group; the group is closed (and its container too, if emptied) with its last device. */
  releaseDevice(group: VmmGroup, device: string): void {
    group.devices.delete(device);
    if (group.devices.size > 0) return;
    this.closeGroup(group);
  }

  /** Maps a new RAM block into every container; on failure undoes the containers already mapped and rethrows. */
  mapBlock(block: RamBlock): void {
    const done: VmmContainer[] = [];
    try {
      for (const c of this.containers) {
        this.mapInto(c, block);
        done.push(c);
      }
    } catch (e) {
      for (const c of done) this.unmapFrom(c, block);
      throw e;
    }
  }

  /** Unmaps a RAM block from every container (before the VMM munmaps it). Errors name the container and block. */
  unmapBlock(block: RamBlock): void {
    for (const c of this.containers) if (c.mapped.has(block)) this.unmapFrom(c, block);
  }

  /** Closes every group and container (shutdown); devices must be closed already. */
  closeAll(): void {
    for (const g of [...this.groupsById.values()]) this.closeGroup(g);
  }

  /** Forgets everything without a syscall (the process died: exit closed every fd). */
  forget(): void {
    this.groupsById.clear();
    this.containers.length = 0;
  }

  // ---- internals -------------------------------------------------------------------------------------------------

  /** QEMU's vfio_connect_container: an existing container if one accepts the group, else a new one. */
  private connect(id: number, handle: VfioGroupHandle): VmmGroup {
    for (const c of this.containers) {
      try {
        handle.setContainer(c.handle);
      } catch {
        continue; // QEMU tries the next container, then a new one
      }
      const g = new VmmGroup(id, handle, c);
      c.groups.add(g);
      this.traceGroupOpen(g, false);
      return g;
    }
    return this.newContainer(id, handle);
  }

  private newContainer(id: number, group: VfioGroupHandle): VmmGroup {
    const { proc, tracer, vm } = this.env;
    let handle: VfioContainerHandle;
    try {
      handle = VfioContainerHandle.open(proc);
    } catch (e) {
      failed("open /dev/vfio/vfio", e);
    }
    let inContainer = false;
    try {
      const version = handle.apiVersion();
      if (version !== VFIO_API_VERSION) {
        throw new KernelError(
          Errno.EINVAL,
          `/dev/vfio/vfio speaks VFIO API version ${version}, this VMM speaks ${VFIO_API_VERSION}`,
        );
      }
      const type = handle.checkExtension(VFIO_TYPE1v2_IOMMU)
        ? VFIO_TYPE1v2_IOMMU
        : handle.checkExtension(VFIO_TYPE1_IOMMU)
          ? VFIO_TYPE1_IOMMU
          : 0;
      if (type === 0) {
        throw new KernelError(
          Errno.EINVAL,
          "the kernel offers neither VFIO_TYPE1v2_IOMMU nor VFIO_TYPE1_IOMMU: load vfio_iommu_type1",
        );
      }
      try {
        group.setContainer(handle);
      } catch (e) {
        failed(`VFIO_GROUP_SET_CONTAINER of group ${id} into a new container`, e);
      }
      inContainer = true;
      try {
        handle.setIommu(type);
      } catch (e) {
        failed(`VFIO_SET_IOMMU(${iommuName(type)}) for group ${id}`, e);
      }
      const typed = new VmmContainer(this.nextContainer, handle, type);
      try {
        typed.iommuInfo = handle.getInfo();
      } catch {
        typed.iommuInfo = undefined; // QEMU tolerates a backend without GET_INFO (it assumes 4 KiB pages)
      }
      if (tracer.enabled) {
        tracer.emit("vmm.container.open", { vm, container: typed.id, fd: handle.fd, iommu: iommuName(type) });
      }
      // The memory listener's replay: every RAM block, IOVA = GPA.
      for (const b of this.env.ramBlocks()) this.mapInto(typed, b);
      this.nextContainer++;
      this.containers.push(typed);
      const g = new VmmGroup(id, group, typed);
      typed.groups.add(g);
      this.traceGroupOpen(g, true);
      return g;
    } catch (e) {
      // Closing the container releases every mapping and pin type1 made for it.
      if (inContainer) {
        try {
          group.unsetContainer();
        } catch {
          // the group fd is closed by the caller, which unsets it anyway
        }
      }
      handle.close();
      throw e;
    }
  }

  private mapInto(c: VmmContainer, b: RamBlock): void {
    const { tracer, vm } = this.env;
    this.checkIovaRange(c, b);
    try {
      c.handle.mapDma({ iova: b.gpa, vaddr: b.hva, size: b.size, read: true, write: true });
    } catch (e) {
      const hint =
        isKernelError(e) && e.errno === Errno.ENOMEM
          ? "a device that does DMA through the host IOMMU pins all guest RAM at MAP_DMA: RLIMIT_MEMLOCK must cover " +
            `the guest's ${formatBytes(this.ramTotal())} of RAM, or the VMM needs CAP_IPC_LOCK`
          : "";
      failed(`MAP_DMA of ${formatBytes(b.size)} at ${hex(b.gpa)} (${b.name}, vaddr ${hex(b.hva)})`, e, hint);
    }
    c.mapped.add(b);
    if (tracer.enabled) {
      tracer.emit("vmm.ram.map", { vm, block: b.name, gpa: b.gpa, size: b.size, hva: b.hva, container: c.id });
    }
  }

  private unmapFrom(c: VmmContainer, b: RamBlock): void {
    const { tracer, vm } = this.env;
    let bytes: number;
    try {
      bytes = c.handle.unmapDma({ iova: b.gpa, size: b.size });
    } catch (e) {
      failed(`UNMAP_DMA of ${formatBytes(b.size)} at ${hex(b.gpa)} (${b.name}) in container ${c.id}`, e);
    }
    c.mapped.delete(b);
    if (tracer.enabled) {
      tracer.emit("vmm.ram.unmap", { vm, block: b.name, gpa: b.gpa, size: b.size, container: c.id, bytes });
    }
  }

  private checkIovaRange(c: VmmContainer, b: RamBlock): void {
    const ranges = c.iommuInfo?.iovaRanges;
    if (ranges === undefined || ranges.length === 0) return;
    const start = BigInt(b.gpa);
    const last = BigInt(b.gpa + b.size - 1);
    if (ranges.some((r) => r.start <= start && last <= r.end)) return;
    throw new KernelError(
      Errno.EINVAL,
      `RAM block ${b.name} at ${hex(b.gpa)}+${formatBytes(b.size)} is outside the IOVA ranges container ${c.id} ` +
        `allows (${ranges.map((r) => `${hex(r.start)}-${hex(r.end)}`).join(", ")}): shrink the guest's RAM or move it`,
    );
  }

  private closeGroup(g: VmmGroup): void {
    const { tracer, vm } = this.env;
    const c = g.container;
    c.groups.delete(g);
    this.groupsById.delete(g.id);
    const last = c.groups.size === 0;
    let error: unknown;
    if (last) {
      // QEMU releases the listener (unmapping every section) before unsetting the last group.
      for (const b of [...c.mapped]) {
        try {
          this.unmapFrom(c, b);
        } catch (e) {
          error ??= e;
        }
      }
    }
    try {
      g.handle.unsetContainer();
    } catch (e) {
      error ??= e;
    }
    g.handle.close();
    if (tracer.enabled) tracer.emit("vmm.group.close", { vm, group: g.id, container: c.id });
    if (last) {
      c.handle.close();
      const i = this.containers.indexOf(c);
      if (i >= 0) this.containers.splice(i, 1);
      if (tracer.enabled) tracer.emit("vmm.container.close", { vm, container: c.id });
    }
    if (error !== undefined) throw error;
  }

  private traceGroupOpen(g: VmmGroup, newContainer: boolean): void {
    const { tracer, vm } = this.env;
    if (tracer.enabled) tracer.emit("vmm.group.open", { vm, group: g.id, container: g.container.id, newContainer });
  }

  private ramTotal(): number {
    let n = 0;
    for (const b of this.env.ramBlocks()) n += b.size;
    return n;
  }

  /** The sentence for a group that is not viable, naming the device in the way and its driver (from sysfs). */
  private explainNotViable(id: number): string {
    const { sysfs } = this.env;
    const dir = `/sys/kernel/iommu_groups/${id}/devices`;
    let names: string[] = [];
    try {
      names = sysfs.readdir(dir);
    } catch {
      names = [];
    }
    for (const name of names) {
      const link = `${dir}/${name}/driver`;
      if (!sysfs.exists(link)) continue;
      const driver = sysfs.readlink(link).split("/").pop() ?? "";
      if (driver !== "vfio-pci") {
        return (
          `group ${id} is not viable: device ${name} is bound to ${driver}; bind it to vfio-pci ` +
          `(every device of IOMMU group ${id} must be bound to vfio-pci or to no driver)`
        );
      }
    }
    return (
      `group ${id} is not viable: a device of IOMMU group ${id} is bound to a host driver ` +
      `(${names.length > 0 ? names.join(", ") : `see /sys/kernel/iommu_groups/${id}/devices`}); bind every ` +
      "device of the group to vfio-pci"
    );
  }
}
