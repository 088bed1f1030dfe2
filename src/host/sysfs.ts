/**
 * /sys: a tree of directories, attribute files and symlinks, with Linux's path resolution and errno values, plus the
 * PCI / IOMMU-group part of it kept in step with the host (`attachPciSysfs`).
 *
 * What user space does with sysfs is what this models: QEMU turns `sysfsdev=/sys/bus/mdev/devices/<uuid>` into a
 * group number from the basename of `readlink(<dev>/iommu_group)` (libvirt and tools use realpath); mdevctl writes a UUID into `mdev_supported_types/<type>/create`;
 * libvirt reads `vendor`, `class`, `driver`. Attribute files are not stored text: each has `read()` / `write()`
 * handlers (sysfs's show/store) called on every access, so a file always shows the live state.
 *
 * Semantics, as Linux (fs/namei.c, fs/kernfs, fs/sysfs):
 * - Paths are absolute. Every component but the last is followed through symlinks; `realpath` follows all of them,
 *   relative targets resolve against the link's directory, `..` goes to the physical parent (as after a `cd -P`).
 *   More than 40 links in one lookup: ELOOP. A missing component: ENOENT. A file used as a directory: ENOTDIR.
 * - `read` of a directory: EISDIR. `write`: EISDIR for a directory.
 * - Permissions: sysfs checks at open whether the attribute has the operation and its mode allows it, for root too
 *   (kernfs KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK): reading a write-only attribute (mode 0200, e.g. `create`) or writing
 *   a read-only one (0444) fails with EACCES. We return EACCES from `read` / `write` (there is no separate open).
 * - `write` returns the bytes consumed. An empty write returns 0 without calling the handler (sysfs_kf_write); a
 *   write longer than a page is cut to its first 4096 bytes (a short write, as kernfs does for attributes without an
 *   atomic write length). Handlers throw KernelError (EINVAL, EEXIST, ...), which propagates unchanged.
 * - Builders (`mkdir`, `addAttribute`, `addSymlink`, `remove`) are the kernel side: `mkdir` and the `add*` calls
 *   create missing parent directories (mkdir -p); adding a name that exists is EEXIST (sysfs_create_link's
 *   duplicate warning); `remove` deletes a whole subtree, or just the link when given a link.
 *
 * Refreshers: a subsystem whose state lives elsewhere (the PCI bus binding drivers, a parent driver hiding a type)
 * registers a refresher; every user-side access (`read`, `write`, `readdir`, `readlink`, `realpath`, `stat`, ...)
 * first runs them, so the tree never shows stale state and nobody has to remember to call a hook. Refreshers are
 * idempotent reconcilers and are not re-entered by the builder calls they make.
 *
 * Layout (a simplification of Linux's, consistent throughout): real device directories live under /sys/devices
 * (PCI functions at /sys/devices/pci<segment>:<bus>/<bdf>, every function directly under its root bus: bridges are
 * not modelled); /sys/bus/<bus>/devices/<name> and /sys/class/<class>/<name> are relative symlinks to them, and
 * `iommu_group`, `driver` links are relative too, exactly as Linux writes them.
 *
 * Not modelled: binary attributes (`config`, `resource<N>`), uevents, poll, ownership, file offsets (a read returns
 * the whole text), the 4096-byte limit on what a read shows.
 */
import { Errno, KernelError } from "../core/index.ts";
import { type Bdf, bdfFields } from "./bdf.ts";
import { formatReservedRegions, type Iommu } from "./iommu.ts";
import type { PciBus } from "./pci.ts";

export type SysfsKind = "dir" | "file" | "link";

/** An attribute file: sysfs's show/store. Mode defaults to 0444 | 0200 according to the handlers given. */
export interface SysfsAttribute {
  /** show(): the whole contents, conventionally ending in "\n". Throws KernelError to fail the read. */
  read?(): string;
  /** store(): receives the bytes written (at most 4096). Throws KernelError (EINVAL, ...) to fail the write. */
  write?(data: string): void;
  /** Permission bits (0444 read-only, 0200 write-only, 0644 both). */
  mode?: number;
}

export interface SysfsStat {
  readonly kind: SysfsKind;
  /** Permission bits: 0755 for directories, 0777 for links, the attribute's mode for files. */
  readonly mode: number;
  /** For links: the target as stored. */
  readonly target?: string;
}

export interface SysfsEntry extends SysfsStat {
  readonly path: string;
}

/** The most a single write(2) hands to a store() handler (PAGE_SIZE). */
export const SYSFS_WRITE_MAX = 4096;

/** Symlinks followed in one lookup before ELOOP (MAXSYMLINKS). */
const MAX_SYMLINKS = 40;

interface DirNode {
  readonly kind: "dir";
  readonly children: Map<string, Node>;
}
interface FileNode {
  readonly kind: "file";
  readonly attr: SysfsAttribute;
  readonly mode: number;
}
interface LinkNode {
  readonly kind: "link";
  readonly target: string;
}
type Node = DirNode | FileNode | LinkNode;

const newDir = (): DirNode => ({ kind: "dir", children: new Map() });

function components(path: string): string[] {
  return path.split("/").filter((c) => c !== "" && c !== ".");
}

function checkAbsolute(path: string): void {
  if (!path.startsWith("/")) throw new KernelError(Errno.EINVAL, `sysfs path '${path}' is not absolute`);
}

/** Components of a path given to a builder: absolute, with no `..` (builders name nodes, they do not navigate). */
function builderComponents(path: string): string[] {
  checkAbsolute(path);
  const cs = components(path);
  if (cs.includes("..")) throw new KernelError(Errno.EINVAL, `sysfs path '${path}' must not contain '..'`);
  return cs;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The relative target Linux stores for a link at `linkPath` pointing at the absolute `targetPath`. */
export function relativeLinkTarget(linkPath: string, targetPath: string): string {
  const from = components(linkPath).slice(0, -1);
  const to = components(targetPath);
  let common = 0;
  while (common < from.length && common < to.length && from[common] === to[common]) common++;
  const ups = from.length - common;
  const parts = [...new Array<string>(ups).fill(".."), ...to.slice(common)];
  return parts.length === 0 ? "." : parts.join("/");
}

export class Sysfs {
  private readonly root: DirNode = newDir();
  private readonly refreshers: (() => void)[] = [];
  private refreshing = false;

  constructor() {
    for (const d of ["/sys/bus", "/sys/class", "/sys/devices", "/sys/kernel"]) this.mkdir(d);
  }

  // ---- refreshers ------------------------------------------------------------------------------------------------

  /** Runs `fn` before every user-side access (see the module comment). Returns the function that removes it. */
  addRefresher(fn: () => void): () => void {
    this.refreshers.push(fn);
    return () => {
      const i = this.refreshers.indexOf(fn);
      if (i >= 0) this.refreshers.splice(i, 1);
    };
  }

  private refresh(): void {
    if (this.refreshing || this.refreshers.length === 0) return;
    this.refreshing = true;
    try {
      for (const fn of this.refreshers) fn();
    } finally {
      this.refreshing = false;
    }
  }

  // ---- builders (kernel side) ------------------------------------------------------------------------------------

  /** mkdir -p. ENOTDIR when a component is a file; links to directories are followed. */
  mkdir(path: string): void {
    this.mkdirp(builderComponents(path), path);
  }

  /** Creates an attribute file. EEXIST if the name is taken; EINVAL without handlers or with a bad mode. */
  addAttribute(path: string, attr: SysfsAttribute): void {
    const cs = builderComponents(path);
    const name = cs.pop();
    if (name === undefined) throw new KernelError(Errno.EINVAL, "cannot create an attribute at /");
    if (attr.read === undefined && attr.write === undefined) {
      throw new KernelError(Errno.EINVAL, `attribute ${path} has neither a read nor a write handler`);
    }
    const mode = attr.mode ?? (attr.read ? 0o444 : 0) | (attr.write ? 0o200 : 0);
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
      throw new KernelError(Errno.EINVAL, `attribute ${path}: mode 0${mode.toString(8)} is not a permission mask`);
    }
    const dir = this.mkdirp(cs, path);
    if (dir.children.has(name)) throw new KernelError(Errno.EEXIST, `${path} already exists`);
    dir.children.set(name, { kind: "file", attr, mode });
  }

  /** Creates a symlink whose target is stored as given (relative to the link's directory unless absolute). */
  addSymlink(path: string, target: string): void {
    const cs = builderComponents(path);
    const name = cs.pop();
    if (name === undefined) throw new KernelError(Errno.EINVAL, "cannot create a link at /");
    if (target.length === 0) throw new KernelError(Errno.ENOENT, `link ${path} needs a non-empty target`);
    const dir = this.mkdirp(cs, path);
    if (dir.children.has(name)) throw new KernelError(Errno.EEXIST, `${path} already exists`);
    dir.children.set(name, { kind: "link", target });
  }

  /** Removes a node and everything under it (a link is removed, not followed). ENOENT if absent. */
  remove(path: string): void {
    const cs = builderComponents(path);
    const name = cs.pop();
    if (name === undefined) throw new KernelError(Errno.EBUSY, "cannot remove /");
    const parent = this.lookup(`/${cs.join("/")}`, true, path).node;
    if (parent.kind !== "dir" || !parent.children.delete(name)) {
      throw new KernelError(Errno.ENOENT, `${path}: no such file or directory`);
    }
  }

  /**
   * Kernel-side existence test (lstat semantics: a link counts, dangling or not). Unlike the user-side calls it does
   * not run the refreshers, so a refresher may use it.
   */
  has(path: string): boolean {
    try {
      this.lookup(path, false, path);
      return true;
    } catch (e) {
      if (e instanceof KernelError) return false;
      throw e;
    }
  }

  // ---- user side -------------------------------------------------------------------------------------------------

  /** Names in a directory, sorted. ENOTDIR for a file. */
  readdir(path: string): string[] {
    this.refresh();
    const { node } = this.lookup(path, true, path);
    if (node.kind !== "dir") throw new KernelError(Errno.ENOTDIR, `${path}: not a directory`);
    return [...node.children.keys()].sort();
  }

  /** The target of a link, as stored. EINVAL if `path` is not a link. */
  readlink(path: string): string {
    this.refresh();
    const { node } = this.lookup(path, false, path);
    if (node.kind !== "link") throw new KernelError(Errno.EINVAL, `${path} is not a symbolic link`);
    return node.target;
  }

  /** The canonical path with every link resolved (realpath(3)). ENOENT for a missing or dangling path. */
  realpath(path: string): string {
    this.refresh();
    return `/${this.lookup(path, true, path).names.join("/")}`;
  }

  /** The contents of an attribute. EISDIR for a directory, EACCES for a write-only attribute. */
  read(path: string): string {
    this.refresh();
    const node = this.lookup(path, true, path).node;
    if (node.kind === "dir") throw new KernelError(Errno.EISDIR, `${path}: is a directory`);
    const file = node as FileNode;
    if (file.attr.read === undefined || (file.mode & 0o444) === 0) {
      throw new KernelError(Errno.EACCES, `${path}: permission denied (mode 0${file.mode.toString(8)}: not readable)`);
    }
    return file.attr.read();
  }

  /** Writes to an attribute; returns the bytes consumed. EISDIR, EACCES for a read-only attribute. */
  write(path: string, data: string): number {
    this.refresh();
    const node = this.lookup(path, true, path).node;
    if (node.kind === "dir") throw new KernelError(Errno.EISDIR, `${path}: is a directory`);
    const file = node as FileNode;
    if (file.attr.write === undefined || (file.mode & 0o222) === 0) {
      throw new KernelError(Errno.EACCES, `${path}: permission denied (mode 0${file.mode.toString(8)}: not writable)`);
    }
    const bytes = encoder.encode(data);
    if (bytes.length === 0) return 0;
    if (bytes.length > SYSFS_WRITE_MAX) {
      file.attr.write(decoder.decode(bytes.subarray(0, SYSFS_WRITE_MAX)));
      return SYSFS_WRITE_MAX;
    }
    file.attr.write(data);
    return bytes.length;
  }

  /** True when the path resolves (links followed; a dangling link is false). */
  exists(path: string): boolean {
    this.refresh();
    try {
      this.lookup(path, true, path);
      return true;
    } catch (e) {
      if (e instanceof KernelError) return false;
      throw e;
    }
  }

  /** stat(2): links followed. */
  stat(path: string): SysfsStat {
    this.refresh();
    return statOf(this.lookup(path, true, path).node);
  }

  /** lstat(2): the last component is not followed. */
  lstat(path: string): SysfsStat {
    this.refresh();
    return statOf(this.lookup(path, false, path).node);
  }

  /** What `path` itself is (not following a final link), or undefined when it does not exist. */
  kind(path: string): SysfsKind | undefined {
    try {
      return this.lstat(path).kind;
    } catch (e) {
      if (e instanceof KernelError) return undefined;
      throw e;
    }
  }

  /** Every node under `path` (itself included), depth first in name order; links are listed, not followed. */
  tree(path = "/sys"): SysfsEntry[] {
    this.refresh();
    const { node, names } = this.lookup(path, true, path);
    const out: SysfsEntry[] = [];
    const visit = (p: string, n: Node): void => {
      out.push({ path: p, ...statOf(n) });
      if (n.kind !== "dir") return;
      for (const name of [...n.children.keys()].sort()) visit(`${p === "/" ? "" : p}/${name}`, n.children.get(name)!);
    };
    visit(`/${names.join("/")}`, node);
    return out;
  }

  // ---- resolution ----------------------------------------------------------------------------------------------

  /**
   * Resolves `path` (namei): returns the node and its canonical components. `followLast` follows a final link (a
   * trailing slash forces it, as in Linux). `shown` is the path named in error messages.
   */
  private lookup(path: string, followLast: boolean, shown: string): { node: Node; names: string[] } {
    checkAbsolute(path);
    const follow = followLast || path.endsWith("/");
    const pending = components(path).reverse();
    const nodes: Node[] = [this.root];
    const names: string[] = [];
    let hops = 0;
    while (pending.length > 0) {
      const c = pending.pop()!;
      const cur = nodes[nodes.length - 1]!;
      if (cur.kind !== "dir") {
        throw new KernelError(Errno.ENOTDIR, `${shown}: /${names.join("/")} is not a directory`);
      }
      if (c === "..") {
        if (names.length > 0) {
          nodes.pop();
          names.pop();
        }
        continue;
      }
      const child = cur.children.get(c);
      if (child === undefined) {
        throw new KernelError(Errno.ENOENT, `${shown}: no such file or directory (/${names.join("/")} has no '${c}')`);
      }
      if (child.kind === "link" && (pending.length > 0 || follow)) {
        if (++hops > MAX_SYMLINKS) {
          throw new KernelError(Errno.ELOOP, `${shown}: too many levels of symbolic links`);
        }
        if (child.target.startsWith("/")) {
          nodes.length = 1;
          names.length = 0;
        }
        const t = components(child.target);
        for (let i = t.length - 1; i >= 0; i--) pending.push(t[i]!);
        continue;
      }
      nodes.push(child);
      names.push(c);
    }
    return { node: nodes[nodes.length - 1]!, names };
  }

  private mkdirp(cs: readonly string[], shown: string): DirNode {
    let dir = this.root;
    let names: string[] = [];
    for (const c of cs) {
      let child = dir.children.get(c);
      if (child === undefined) {
        child = newDir();
        dir.children.set(c, child);
      }
      if (child.kind === "link") {
        const r = this.lookup(`/${[...names, c].join("/")}`, true, shown);
        child = r.node;
        names = r.names;
      } else {
        names.push(c);
      }
      if (child.kind !== "dir") {
        throw new KernelError(Errno.ENOTDIR, `${shown}: /${names.join("/")} is not a directory`);
      }
      dir = child;
    }
    return dir;
  }
}

function statOf(n: Node): SysfsStat {
  switch (n.kind) {
    case "dir":
      return { kind: "dir", mode: 0o755 };
    case "file":
      return { kind: "file", mode: n.mode };
    case "link":
      return { kind: "link", mode: 0o777, target: n.target };
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// PCI devices and IOMMU groups

/** The real directory of a PCI function: /sys/devices/pci<segment>:<bus>/<bdf> (bridges not modelled). */
export function pciDeviceDir(bdf: Bdf): string {
  const f = bdfFields(bdf);
  return `/sys/devices/pci${f.segment.toString(16).padStart(4, "0")}:${f.bus.toString(16).padStart(2, "0")}/${bdf}`;
}

export const IOMMU_GROUPS_DIR = "/sys/kernel/iommu_groups";

/** /sys/kernel/iommu_groups/<id> */
export function iommuGroupDir(id: number): string {
  return `${IOMMU_GROUPS_DIR}/${id}`;
}

const hex = (v: number, digits: number): string => `0x${v.toString(16).padStart(digits, "0")}\n`;

/** What /sys/kernel/iommu_groups/N/type prints for a default domain type (iommu_group_show_type). */
const DOMAIN_TYPE_TEXT: Readonly<Record<string, string>> = {
  dma: "DMA\n",
  identity: "identity\n",
  unmanaged: "unmanaged\n",
  blocked: "blocked\n",
};

interface PciEntry {
  group: number | undefined;
  driver: string | undefined;
}

/**
 * Keeps the PCI and IOMMU-group part of /sys equal to the host's PciBus and Iommu:
 * - `/sys/devices/pci<seg>:<bus>/<bdf>/` with `vendor`, `device`, `subsystem_vendor`, `subsystem_device`, `class`,
 *   `revision` (read live from config space, formatted as Linux: "0x8086\n", class "0x030000\n"), `iommu_group` ->
 *   ../../../kernel/iommu_groups/<N> (only when the IOMMU is enabled, as Linux), `driver` ->
 *   ../../../bus/pci/drivers/<name> while bound;
 * - `/sys/bus/pci/devices/<bdf>` -> ../../../devices/pci<seg>:<bus>/<bdf>;
 * - `/sys/bus/pci/drivers/<name>/<bdf>` links for bound devices; a driver directory appears the first time a device
 *   is bound to it and then stays (a loaded module keeps its directory);
 * - `/sys/kernel/iommu_groups/<N>/` with `reserved_regions` (Iommu.groupReservedRegions, live), `type` (the default
 *   domain's type, read-only here) and `devices/<bdf>` -> the device directory.
 *
 * `sync()` reconciles; `attachPciSysfs` runs it now and before every sysfs access (a refresher), so binding through
 * PciBus.bind, adding through Host.addPciDevice, removing through PciBus.remove all show up without hooks. It owns
 * only the nodes it created: an IOMMU group directory someone else made (the mdev core's groups) is left alone.
 */
export class PciSysfs {
  private readonly devices = new Map<string, PciEntry>();
  private readonly groups = new Map<number, Set<string>>();
  private readonly drivers = new Set<string>();

  constructor(
    readonly sysfs: Sysfs,
    private readonly pci: PciBus,
    private readonly iommu: Iommu,
  ) {
    sysfs.mkdir("/sys/bus/pci/devices");
    sysfs.mkdir("/sys/bus/pci/drivers");
    sysfs.mkdir(IOMMU_GROUPS_DIR);
  }

  /** Makes the tree match the bus and the IOMMU now. */
  sync(): void {
    const present = new Map<string, Bdf>();
    for (const dev of this.pci.list()) present.set(dev.bdf, dev.bdf);
    for (const [bdf, e] of this.devices) {
      if (!present.has(bdf)) this.removeDevice(bdf as Bdf, e);
    }
    for (const bdf of present.values()) {
      let e = this.devices.get(bdf);
      if (e === undefined) e = this.addDevice(bdf);
      this.syncDriver(bdf, e);
    }
    this.syncGroups();
    for (const [bdf, e] of this.devices) this.syncGroupLink(bdf as Bdf, e);
  }

  private addDevice(bdf: Bdf): PciEntry {
    const s = this.sysfs;
    const dir = pciDeviceDir(bdf);
    const cfg = (): { read(offset: number, size: number): number } => this.pci.get(bdf).config;
    s.mkdir(dir);
    s.addAttribute(`${dir}/vendor`, { read: () => hex(cfg().read(0x00, 2), 4) });
    s.addAttribute(`${dir}/device`, { read: () => hex(cfg().read(0x02, 2), 4) });
    s.addAttribute(`${dir}/revision`, { read: () => hex(cfg().read(0x08, 1), 2) });
    s.addAttribute(`${dir}/class`, { read: () => hex(cfg().read(0x08, 4) >>> 8, 6) });
    s.addAttribute(`${dir}/subsystem_vendor`, { read: () => hex(cfg().read(0x2c, 2), 4) });
    s.addAttribute(`${dir}/subsystem_device`, { read: () => hex(cfg().read(0x2e, 2), 4) });
    const link = `/sys/bus/pci/devices/${bdf}`;
    s.addSymlink(link, relativeLinkTarget(link, dir));
    const e: PciEntry = { group: undefined, driver: undefined };
    this.devices.set(bdf, e);
    return e;
  }

  private removeDevice(bdf: Bdf, e: PciEntry): void {
    if (e.driver !== undefined) this.sysfs.remove(`/sys/bus/pci/drivers/${e.driver}/${bdf}`);
    this.sysfs.remove(`/sys/bus/pci/devices/${bdf}`);
    this.sysfs.remove(pciDeviceDir(bdf));
    this.devices.delete(bdf);
  }

  private syncDriver(bdf: Bdf, e: PciEntry): void {
    const want = this.pci.driverOf(bdf);
    if (want === e.driver) return;
    const dir = pciDeviceDir(bdf);
    if (e.driver !== undefined) {
      this.sysfs.remove(`${dir}/driver`);
      this.sysfs.remove(`/sys/bus/pci/drivers/${e.driver}/${bdf}`);
    }
    e.driver = want;
    if (want === undefined) return;
    const drvDir = `/sys/bus/pci/drivers/${want}`;
    if (!this.drivers.has(want)) {
      this.sysfs.mkdir(drvDir);
      this.drivers.add(want);
    }
    this.sysfs.addSymlink(`${dir}/driver`, relativeLinkTarget(`${dir}/driver`, drvDir));
    this.sysfs.addSymlink(`${drvDir}/${bdf}`, relativeLinkTarget(`${drvDir}/${bdf}`, dir));
  }

  private syncGroups(): void {
    const want = new Map<number, string[]>();
    if (this.iommu.enabled) for (const g of this.iommu.groups()) want.set(g.id, g.bdfs());
    for (const [id, members] of this.groups) {
      if (!want.has(id)) {
        this.sysfs.remove(iommuGroupDir(id));
        this.groups.delete(id);
        continue;
      }
      const now = new Set(want.get(id));
      for (const bdf of members) {
        if (!now.has(bdf)) {
          this.sysfs.remove(`${iommuGroupDir(id)}/devices/${bdf}`);
          members.delete(bdf);
        }
      }
    }
    for (const [id, bdfs] of want) {
      let members = this.groups.get(id);
      if (members === undefined) {
        const dir = iommuGroupDir(id);
        if (this.sysfs.has(dir)) continue; // someone else's group (an mdev's): not ours to manage
        this.sysfs.mkdir(`${dir}/devices`);
        this.sysfs.addAttribute(`${dir}/reserved_regions`, {
          read: () => formatReservedRegions(this.iommu.groupReservedRegions(id)),
        });
        this.sysfs.addAttribute(`${dir}/type`, {
          read: () => DOMAIN_TYPE_TEXT[this.iommu.group(id).defaultDomain.type] ?? "unknown\n",
        });
        members = new Set();
        this.groups.set(id, members);
      }
      for (const bdf of bdfs) {
        if (members.has(bdf) || !this.devices.has(bdf)) continue;
        const link = `${iommuGroupDir(id)}/devices/${bdf}`;
        this.sysfs.addSymlink(link, relativeLinkTarget(link, pciDeviceDir(bdf as Bdf)));
        members.add(bdf);
      }
    }
  }

  private syncGroupLink(bdf: Bdf, e: PciEntry): void {
    let want: number | undefined;
    if (this.iommu.enabled && this.iommu.hasDevice(bdf)) {
      const id = this.iommu.groupOf(bdf);
      if (this.groups.get(id)?.has(bdf)) want = id;
    }
    if (want === e.group) return;
    const link = `${pciDeviceDir(bdf)}/iommu_group`;
    if (e.group !== undefined) this.sysfs.remove(link);
    e.group = want;
    if (want !== undefined) this.sysfs.addSymlink(link, relativeLinkTarget(link, iommuGroupDir(want)));
  }
}

/** Creates the PCI/IOMMU part of `sysfs` and keeps it current (a refresher). Returns the reconciler. */
export function attachPciSysfs(sysfs: Sysfs, pci: PciBus, iommu: Iommu): PciSysfs {
  const p = new PciSysfs(sysfs, pci, iommu);
  p.sync();
  sysfs.addRefresher(() => p.sync());
  return p;
}
