/**
 * /dev: character-device nodes that drivers register and processes open by path. vfio registers /dev/vfio/vfio and
 * one /dev/vfio/<group> per group; opening a path nobody registered is ENOENT, as in Linux.
 */
import { defineTraceEvents, Errno, KernelError, type Tracer } from "../core/index.ts";
import type { FileOps, OpenContext } from "./files.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "devfs.add": { path: string };
    "devfs.remove": { path: string };
  }
}
defineTraceEvents("host", { "devfs.add": "device node {path} created", "devfs.remove": "device node {path} removed" });

/** Called on every open: returns the driver's per-open file, or throws KernelError (EBUSY, ENODEV, ...). */
export type DeviceOpener = (ctx: OpenContext) => FileOps;

export class Devfs {
  private readonly nodes = new Map<string, DeviceOpener>();
  constructor(private readonly tracer: Tracer) {}

  register(path: string, opener: DeviceOpener): void {
    if (!path.startsWith("/dev/")) throw new KernelError(Errno.EINVAL, `device node path ${path} is not under /dev`);
    if (this.nodes.has(path)) throw new KernelError(Errno.EEXIST, `device node ${path} already exists`);
    this.nodes.set(path, opener);
    if (this.tracer.enabled) this.tracer.emit("devfs.add", { path });
  }

  unregister(path: string): void {
    if (!this.nodes.delete(path)) throw new KernelError(Errno.ENOENT, `device node ${path} does not exist`);
    if (this.tracer.enabled) this.tracer.emit("devfs.remove", { path });
  }

  exists(path: string): boolean {
    return this.nodes.has(path);
  }

  open(path: string, ctx: OpenContext): FileOps {
    const opener = this.nodes.get(path);
    if (!opener) throw new KernelError(Errno.ENOENT, `${path}: no such device node`);
    return opener(ctx);
  }

  list(): string[] {
    return [...this.nodes.keys()].sort();
  }
}
