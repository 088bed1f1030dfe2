/**
 * The guest's PPGTT roots as it announces them through PVINFO g2v_notify (GVT-g's handle_g2v_notification and its
 * list of ppgtt_mm objects): before it creates a 4-level address space i915 writes the PML4's DMA address (a GPA on a
 * vGPU) into pdp[0] and sends L4 create; when it frees one it sends L4 destroy with the same root. A 3-level (legacy
 * 32-bit) space is announced with its four PDP addresses in pdp[0..3] (i915 6.1 never sends it on Skylake).
 *
 * This table is what the virtual execlists will look roots up in when a context's descriptor names a PPGTT; the
 * shadowing itself (walking the guest's tables, pinning and mapping what they reference) is the next step and is
 * not done here. A root announced twice is counted twice (GVT-g takes a reference); destroy drops one and forgets the
 * root at zero. Destroying a root that was never announced, or a malformed notification, is an error value with a
 * reason, as GVT-g logs it; nothing else changes.
 *
 * Invariant: every root has count >= 1; roots are keyed by level and addresses.
 */
import { defineTraceEvents, Errno, type Gpa, gpa, hex, KernelError, type Tracer } from "../core/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.ppgtt.root": { vgpu: number; change: string; levels: number; root: string; refs: number };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.ppgtt.root": "vgpu{vgpu}: guest PPGTT {levels}-level root {root} {change} ({refs} reference(s))",
});

/** One guest address space the guest announced. */
export interface GuestPpgttRoot {
  /** 4: pdps[0] is the PML4; 3: pdps[0..3] are the four page-directory pointers. */
  readonly levels: 3 | 4;
  readonly pdps: readonly Gpa[];
  readonly refs: number;
}

export class GuestPpgttRoots {
  private readonly roots = new Map<string, { levels: 3 | 4; pdps: Gpa[]; refs: number }>();

  constructor(
    private readonly vgpuId: number,
    private readonly tracer: Tracer,
  ) {}

  /** Records a create of a `levels`-level space whose root entries are `pdps` (only pdps[0] for 4 levels). */
  create(levels: 3 | 4, pdps: readonly number[]): GuestPpgttRoot {
    const used = levels === 4 ? pdps.slice(0, 1) : pdps.slice(0, 4);
    const key = keyOf(levels, used);
    let r = this.roots.get(key);
    if (r === undefined) {
      r = { levels, pdps: used.map((p) => gpa(p)), refs: 0 };
      this.roots.set(key, r);
    }
    r.refs++;
    this.trace("created", r);
    return { levels: r.levels, pdps: r.pdps, refs: r.refs };
  }

  /** Drops one reference of the space; ENOENT (with a sentence) when no such root was announced. */
  destroy(levels: 3 | 4, pdps: readonly number[]): KernelError | undefined {
    const used = levels === 4 ? pdps.slice(0, 1) : pdps.slice(0, 4);
    const key = keyOf(levels, used);
    const r = this.roots.get(key);
    if (r === undefined) {
      return new KernelError(
        Errno.ENOENT,
        `vgpu${this.vgpuId}: the guest destroyed a ${levels}-level PPGTT with root ${used.map((p) => hex(p)).join(", ")} that it never created`,
      );
    }
    r.refs--;
    if (r.refs === 0) this.roots.delete(key);
    this.trace("destroyed", r);
    return undefined;
  }

  /** The 4-level root whose PML4 is at `pml4`, if the guest announced it. */
  findL4(pml4: number): GuestPpgttRoot | undefined {
    return this.roots.get(keyOf(4, [pml4]));
  }

  /** Every live root, in announcement order. */
  list(): GuestPpgttRoot[] {
    return [...this.roots.values()].map((r) => ({ levels: r.levels, pdps: r.pdps, refs: r.refs }));
  }

  get size(): number {
    return this.roots.size;
  }

  /** Device reset: the guest's address spaces are gone (GVT-g's intel_vgpu_destroy_all_ppgtt_mm). */
  clear(): void {
    this.roots.clear();
  }

  private trace(change: string, r: { levels: 3 | 4; pdps: Gpa[]; refs: number }): void {
    if (!this.tracer.enabled) return;
    const root = r.pdps.map((p) => hex(p)).join(",");
    this.tracer.emit("vgpu.ppgtt.root", { vgpu: this.vgpuId, change, levels: r.levels, root, refs: r.refs });
  }
}

function keyOf(levels: number, pdps: readonly number[]): string {
  return `${levels}:${pdps.join(",")}`;
}
