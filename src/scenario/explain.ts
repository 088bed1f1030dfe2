/**
 * `vgpu explain`: the translation chain of one graphics memory address of a VM, layer by layer, read from the data
 * structure that holds each translation, and whether the layers agree.
 *
 * A vGPU (the seed's chain):
 *   1 guest GTT entry       the vGPU's virtual GTT (what the guest wrote at BAR0 + 8 MiB + 8 x index)   GMA -> GPA
 *   2 VMM RAM block         the VMM's RAM block (QEMU's RAMBlock; type1's MAP_DMA entry holds the same)  GPA -> HVA
 *   3 process page table    the VMM process's page table: the frame, pinned by vfio_pin_pages           HVA -> HPA
 *   4 gfn cache / DMA API   the vGPU's gfn cache slot, made by dma_map_page on the pinned frame          GFN -> IOVA
 *   5 physical GGTT entry   the physical GPU's GGTT (the shadow entry the vendor driver wrote)           GMA -> IOVA
 *   6 IOMMU page table      the GPU's DMA domain (what a page walk finds; the IOTLB caches it)          IOVA -> HPA
 * They agree when 4 and 5 give the same IOVA, and 3, 4 and 6 the same frame.
 *
 * A GPU assigned whole to the VM has no mediator: the guest writes the physical GGTT itself with guest-physical
 * addresses, which are IOVAs of the VM's type1 domain:
 *   1 physical GGTT entry (written by the guest)  GMA -> IOVA (= GPA);  2 VMM RAM block  GPA -> HVA;
 *   3 process page table (pinned by type1 at MAP_DMA)  HVA -> HPA;  4 IOMMU page table (type1's domain)  IOVA -> HPA.
 * They agree when 3 and 4 give the same frame.
 *
 * A GPU virtual address of a guest's PPGTT (execlists: the address its contexts' commands name), on a vGPU:
 *   1 guest PPGTT           the guest's PML4 -> PDP -> PD -> PT in its RAM (the root its contexts' PDP0 names)   GVA -> GPA
 *   2 VMM RAM block, 3 process page table                                                  GPA -> HVA -> HPA
 *   4 gfn cache / DMA API   the vGPU's gfn cache slot (shared by the GTT and the PPGTT)                       GFN -> IOVA
 *   5 shadow PPGTT          the vendor driver's shadow tables, walked as the engine walks them (each table
 *                           read through the IOMMU), from the shadow PML4 the shadow context's PDP0 names     GVA -> IOVA
 *   6 IOMMU page table                                                                        IOVA -> HPA
 * They agree when 4 and 5 give the same IOVA, and 3 and 6 the same frame. The shadow is what the last submission
 * validated: a page the guest mapped since then is not in it yet, which is no disagreement (said so in the note). On a GPU assigned whole the engine walks
 * the guest's own tables, whose entries are guest-physical addresses, i.e. IOVAs of type1's domain: 1 guest PPGTT,
 * 2 RAM block, 3 page table, 4 IOMMU; they agree when 3 and 4 give the same frame.
 *
 * Outside the vGPU's graphics memory a GMA has no chain: the note names the vGPU's two ranges.
 *
 * Reading changes nothing: no fault is taken, no IOTLB lookup counted (the IOMMU's page table is read directly).
 */
import {
  gpa as asGpa,
  iova as asIova,
  Errno,
  type Gpa,
  type Hpa,
  hex,
  type Iova,
  KernelError,
  PAGE_SIZE,
} from "../core/index.ts";
import { GTT_ENTRIES, gen8PteDecode } from "../gpu/index.ts";
import { type Host, pfnToHpa } from "../host/index.ts";
import type { Vgpu } from "../vgpu/index.ts";
import { hvaIn, type Vmm } from "../vmm/index.ts";
import type { GpuInstance } from "./gpus.ts";
import { formatSize } from "./units.ts";

/** One layer of the chain. */
export interface ExplainLayer {
  readonly layer: string;
  /** The data structure that holds this translation. */
  readonly holder: string;
  /** "GMA 0x..." -> "GPA 0x..." */
  readonly from: string;
  readonly to: string;
  /** The translated address (a GPA, HVA, HPA or IOVA), -1 if this layer has none. */
  readonly value: number;
}

export interface Explanation {
  readonly vm: string;
  /** The GMA explained (a GGTT chain), or the GMA of the same buffer when known (a PPGTT chain; -1 if not). */
  readonly gma: number;
  /** A PPGTT chain: the GPU virtual address explained. */
  readonly gva?: number;
  readonly mode: "vgpu" | "assigned";
  readonly layers: readonly ExplainLayer[];
  /** Every layer translated and the layers agree. */
  readonly agree: boolean;
  /** Why not, or what is worth knowing. */
  readonly note: string;
}

/** What explaining needs of a running VM. */
export interface ExplainTarget {
  readonly vm: string;
  readonly vmm: Vmm;
  readonly gpu: GpuInstance;
  /** The vGPU, or undefined for a GPU assigned whole. */
  readonly vgpu: Vgpu | undefined;
  readonly host: Host;
}

const TWO32 = 4294967296;

/** The chain of `gma` in `t` (EINVAL if the GMA is outside graphics memory). */
export function explainGma(t: ExplainTarget, gma: number): Explanation {
  if (!Number.isSafeInteger(gma) || gma < 0 || gma >= GTT_ENTRIES * PAGE_SIZE) {
    throw new KernelError(Errno.EINVAL, `GMA ${hex(gma)} is outside the GPU's 4 GiB of graphics memory`);
  }
  return t.vgpu !== undefined ? explainVgpu(t, t.vgpu, gma) : explainAssigned(t, gma);
}

function explainVgpu(t: ExplainTarget, vgpu: Vgpu, gma: number): Explanation {
  const layers: ExplainLayer[] = [];
  const index = Math.floor(gma / PAGE_SIZE);
  const offset = gma - index * PAGE_SIZE;
  const done = (agree: boolean, note: string): Explanation => ({
    vm: t.vm,
    gma,
    mode: "vgpu",
    layers,
    agree,
    note,
  });

  // 1. The guest's own entry, in the vGPU's virtual GTT.
  const pte = vgpu.gtt.readHalf(index, 0) + vgpu.gtt.readHalf(index, 1) * TWO32;
  const gpaPage = gen8PteDecode(pte);
  // The guest's PTE holds a guest-physical address: its decode is where the number becomes a GPA.
  const gpa: Gpa | -1 = gpaPage < 0 ? -1 : asGpa(gpaPage + offset);
  layers.push({
    layer: "guest GTT entry",
    holder: `vgpu${vgpu.id}'s virtual GTT[${hex(index)}] (the guest wrote ${hex(pte)} at BAR0 + ${hex(0x800000 + index * 8)})`,
    from: `GMA ${hex(gma)}`,
    to: gpa < 0 ? "not present" : `GPA ${hex(gpa)}`,
    value: gpa,
  });
  if (gpa === -1) {
    return done(
      false,
      vgpu.gtt.inPartition(gma, 1) ? "the guest has not mapped this GMA" : `${hex(gma)} is ${partitionText(vgpu)}`,
    );
  }

  // 2-3. The VMM's RAM block and its process page table.
  const hpaFromMm = ramLayers(t, gpa, layers);

  // 4. The gfn cache: the pinned frame and its DMA mapping.
  const { iova: cacheIova, pfn: cachePfn } = gfnCacheLayer(t, vgpu, gpa, layers);

  // 5. The physical GGTT entry the vendor driver wrote.
  const physIova = physicalGgttLayer(t, index, offset, "the shadow entry the vendor driver wrote", layers);

  // 6. The IOMMU.
  const hpa = iommuLayer(t, physIova, layers);

  const scratch = t.gpu.hostDriver?.scratch;
  if (scratch !== undefined && physIova >= 0 && physIova - offset === scratch.dmaAddr) {
    return done(
      false,
      "the physical entry is the scratch page: the vendor driver could not (or no longer) pin the page",
    );
  }
  const agree =
    cacheIova >= 0 &&
    cacheIova === physIova &&
    hpaFromMm >= 0 &&
    hpa === hpaFromMm &&
    Math.floor(hpa / PAGE_SIZE) === cachePfn;
  return done(
    agree,
    agree
      ? "the layers agree: the GPU's access reaches the very frame the guest's page is in"
      : "the layers disagree (see each layer)",
  );
}

function explainAssigned(t: ExplainTarget, gma: number): Explanation {
  const layers: ExplainLayer[] = [];
  const index = Math.floor(gma / PAGE_SIZE);
  const offset = gma - index * PAGE_SIZE;
  const iova = physicalGgttLayer(t, index, offset, "written by the guest itself: there is no mediator", layers);
  const done = (agree: boolean, note: string): Explanation => ({
    vm: t.vm,
    gma,
    mode: "assigned",
    layers,
    agree,
    note,
  });
  if (iova === -1) return done(false, "the guest has not mapped this GMA");
  // The guest wrote a guest-physical address into the physical GGTT, and the VMM mapped guest RAM at IOVA = GPA in
  // type1's domain: the same number is both (a decode of the guest's own entry, not a conversion).
  const hpaFromMm = ramLayers(t, asGpa(iova), layers);
  const hpa = iommuLayer(t, iova, layers);
  const agree = hpaFromMm >= 0 && hpa === hpaFromMm;
  return done(
    agree,
    agree
      ? "the layers agree: type1 maps guest RAM at IOVA = GPA and pinned every page of it at MAP_DMA"
      : "the layers disagree (see each layer)",
  );
}

/** "outside vgpuN's graphics memory: aperture [..) and hidden [..)", the ranges a GMA must be in. */
function partitionText(vgpu: Vgpu): string {
  const r = (x: { readonly base: number; readonly size: number }) =>
    `[${hex(x.base)}, ${hex(x.base + x.size)}) (${formatSize(x.size)})`;
  return (
    `outside vgpu${vgpu.id}'s graphics memory: its GMAs are the aperture range ${r(vgpu.resources.aperture)} and ` +
    `the hidden range ${r(vgpu.resources.hidden)}`
  );
}

/**
 * The PPGTT chain of GPU virtual address `gva` of the guest PPGTT rooted at `root` (the guest's PML4), `gma` the
 * same buffer's GMA if known (-1 otherwise). EINVAL past 2^48.
 */
export function explainGva(t: ExplainTarget, gva: number, root: Gpa, gma = -1): Explanation {
  if (!Number.isSafeInteger(gva) || gva < 0 || gva >= 2 ** 48) {
    throw new KernelError(Errno.EINVAL, `GPU virtual address ${hex(gva)} is outside the PPGTT's 48 bits`);
  }
  const layers: ExplainLayer[] = [];
  const mode = t.vgpu !== undefined ? "vgpu" : "assigned";
  const done = (agree: boolean, note: string): Explanation => ({ vm: t.vm, gma, gva, mode, layers, agree, note });
  const offset = gva % PAGE_SIZE;
  // 1. The guest's own tables, read from its RAM.
  const buf = new Uint8Array(8);
  const dv = new DataView(buf.buffer);
  const guest = walkTables(root, gva, (at) => {
    if (!t.vmm.ramBlocks().some((b) => at >= b.gpa && at + 8 <= b.gpa + b.size)) return undefined;
    t.vmm.ram.read(asGpa(at), buf);
    return dv.getUint32(0, true) + dv.getUint32(4, true) * TWO32;
  });
  const gpa: Gpa | -1 = guest.page < 0 ? -1 : asGpa(guest.page + offset);
  layers.push({
    layer: "guest PPGTT",
    holder: `${t.vm}'s PPGTT in its RAM (PML4 at GPA ${hex(root)}, its contexts' PDP0): ${guest.path}`,
    from: `GVA ${hex(gva)}`,
    to: gpa < 0 ? "not present" : `GPA ${hex(gpa)}`,
    value: gpa,
  });
  if (gpa === -1) return done(false, "the guest's PPGTT does not map this address");
  const hpaFromMm = ramLayers(t, gpa, layers);
  const vgpu = t.vgpu;
  if (vgpu === undefined) {
    // The engine walks the guest's tables itself; their entries are GPAs, which are IOVAs of type1's domain.
    const hpa = iommuLayer(t, asIova(gpa), layers);
    const agree = hpaFromMm >= 0 && hpa === hpaFromMm;
    return done(
      agree,
      agree
        ? "the layers agree: the engine walks the guest's own tables, whose GPAs type1 maps at IOVA = GPA"
        : "the layers disagree (see each layer)",
    );
  }
  const cache = gfnCacheLayer(t, vgpu, gpa, layers);
  // 5. The shadow tables, read as the engine reads them: each through the IOMMU.
  const shadowRoot = vgpu.ppgtt.shadowRoot(root);
  const iommu = t.host.iommu;
  const toHpa = (a: number): number => (iommu.enabled ? iommu.domainOf(t.gpu.gpu.bdf).iovaToPhys(asIova(a)) : a);
  const shadow =
    shadowRoot === undefined
      ? undefined
      : walkTables(shadowRoot, gva, (at) => {
          const h = toHpa(at);
          if (h < 0) return undefined;
          t.host.physmem.read(h as Hpa, buf);
          return dv.getUint32(0, true) + dv.getUint32(4, true) * TWO32;
        });
  const shadowIova: Iova | -1 = shadow === undefined || shadow.page < 0 ? -1 : asIova(shadow.page + offset);
  layers.push({
    layer: "shadow PPGTT",
    holder:
      shadow === undefined
        ? `vgpu${vgpu.id}: no shadow of the PPGTT at GPA ${hex(root)} (not announced, no workload holds it)`
        : `vgpu${vgpu.id}'s shadow tables (PML4 at IOVA ${hex(shadowRoot!)}, the shadow context's PDP0): ${shadow.path}`,
    from: `GVA ${hex(gva)}`,
    to: shadowIova < 0 ? "not present" : `IOVA ${hex(shadowIova)}`,
    value: shadowIova,
  });
  const hpa = iommuLayer(t, shadowIova, layers);
  if (shadow !== undefined && shadowIova === -1 && cache.iova >= 0) {
    // Not a contradiction: without write-tracking the shadow follows the guest's tables at each submission only.
    return done(
      hpaFromMm >= 0,
      "the guest's tables map it and the shadow does not yet: the guest mapped it after its last submission, and " +
        "the next submission validates it (datasheet 10.11)",
    );
  }
  const agree =
    cache.iova >= 0 &&
    cache.iova === shadowIova &&
    hpaFromMm >= 0 &&
    hpa === hpaFromMm &&
    Math.floor(hpa / PAGE_SIZE) === cache.pfn;
  return done(
    agree,
    agree
      ? "the layers agree: the guest's tables and the shadow tables reach the very frame the guest's page is in"
      : "the layers disagree (see each layer)",
  );
}

const PPGTT_LEVEL_NAMES = ["PML4", "PDP", "PD", "PT"] as const;

/** Walks 4-level tables from `root` for `va`, reading entries with `read`; the page address (or -1) and the path. */
function walkTables(
  root: number,
  va: number,
  read: (at: number) => number | undefined,
): { readonly page: number; readonly path: string } {
  const steps: string[] = [];
  let table = root;
  const page = Math.floor(va / PAGE_SIZE);
  for (let level = 0; level < 4; level++) {
    const index = Math.floor(page / 2 ** (9 * (3 - level))) % 512;
    const e = read(table + 8 * index);
    if (e === undefined) {
      steps.push(`${PPGTT_LEVEL_NAMES[level]}[${index}] unreadable`);
      return { page: -1, path: steps.join(" -> ") };
    }
    steps.push(`${PPGTT_LEVEL_NAMES[level]}[${index}] = ${hex(e)}`);
    if (e % 2 === 0) return { page: -1, path: `${steps.join(" -> ")} (not present)` };
    table = e - (e % PAGE_SIZE) - Math.floor(e / 2 ** 52) * 2 ** 52;
  }
  return { page: table, path: steps.join(" -> ") };
}

/** Layer: the gfn cache slot of `gpa`'s page and its DMA mapping. */
function gfnCacheLayer(
  t: ExplainTarget,
  vgpu: Vgpu,
  gpa: Gpa,
  layers: ExplainLayer[],
): { readonly iova: number; readonly pfn: number } {
  const offset = gpa % PAGE_SIZE;
  const gfn = Math.floor(gpa / PAGE_SIZE);
  const slot = vgpu.gtt.cache.slot(gfn);
  const cacheIova = slot < 0 ? -1 : vgpu.gtt.cache.iova(slot) + offset;
  const cachePfn = slot < 0 ? -1 : vgpu.gtt.cache.pfn(slot);
  layers.push({
    layer: "gfn cache / DMA API",
    holder:
      slot < 0
        ? `vgpu${vgpu.id}'s gfn cache: no entry for gfn ${hex(gfn)}`
        : `vgpu${vgpu.id}'s gfn cache slot ${slot} (pfn ${hex(cachePfn)}, ${vgpu.gtt.cache.ref(slot)} reference(s)), ` +
          `dma_map_page on ${t.gpu.bdf}`,
    from: `GFN ${hex(gfn)}`,
    to: cacheIova < 0 ? "not mapped" : `IOVA ${hex(cacheIova)}`,
    value: cacheIova,
  });
  return { iova: cacheIova, pfn: cachePfn };
}

/** Layers 2 and 3: RAM block (GPA -> HVA) and page table (HVA -> HPA). Returns the HPA or -1. */
function ramLayers(t: ExplainTarget, gpa: Gpa, layers: ExplainLayer[]): Hpa | -1 {
  const block = t.vmm.ramBlocks().find((b) => gpa >= b.gpa && gpa < b.gpa + b.size);
  if (block === undefined) {
    layers.push({
      layer: "VMM RAM block",
      holder: `${t.vm}: no RAM block holds it (RAM: ${t.vmm
        .ramBlocks()
        .map((b) => b.name)
        .join(", ")})`,
      from: `GPA ${hex(gpa)}`,
      to: "not RAM",
      value: -1,
    });
    return -1;
  }
  const hva = hvaIn(block, gpa);
  layers.push({
    layer: "VMM RAM block",
    holder: `${t.vm} RAM block "${block.name}" (GPA ${hex(block.gpa)} + ${formatSize(block.size)} at HVA ${hex(block.hva)}; type1's MAP_DMA entry)`,
    from: `GPA ${hex(gpa)}`,
    to: `HVA ${hex(hva)}`,
    value: hva,
  });
  const mm = t.vmm.process.mm;
  const pfn = mm.exited ? undefined : mm.translate(hva);
  const pm = t.host.physmem;
  const hpa = pfn === undefined ? -1 : pfnToHpa(pfn, hva % PAGE_SIZE);
  layers.push({
    layer: "process page table",
    holder:
      pfn === undefined
        ? `${t.vmm.process.comm} (pid ${t.vmm.process.pid}): no page mapped at this HVA`
        : `${t.vmm.process.comm} (pid ${t.vmm.process.pid}) page table: pfn ${hex(pfn)}, pin count ${pm.pinCount(pfn)}`,
    from: `HVA ${hex(hva)}`,
    to: hpa < 0 ? "not mapped" : `HPA ${hex(hpa)}`,
    value: hpa,
  });
  return hpa;
}

function physicalGgttLayer(
  t: ExplainTarget,
  index: number,
  offset: number,
  what: string,
  layers: ExplainLayer[],
): Iova | -1 {
  const pte = t.gpu.gpu.ggtt.read(index);
  const page = gen8PteDecode(pte);
  // A physical GGTT entry holds a DMA address: an IOVA behind the IOMMU (its decode is the edge).
  const iova: Iova | -1 = page < 0 ? -1 : asIova(page + offset);
  layers.push({
    layer: "physical GGTT entry",
    holder: `${t.gpu.name} (${t.gpu.bdf}) GGTT[${hex(index)}] = ${hex(pte)} (${what})`,
    from: `GMA ${hex(index * PAGE_SIZE + offset)}`,
    to: iova < 0 ? "not present" : `IOVA ${hex(iova)}`,
    value: iova,
  });
  return iova;
}

function iommuLayer(t: ExplainTarget, iova: Iova | -1, layers: ExplainLayer[]): number {
  const iommu = t.host.iommu;
  if (iova === -1) return -1;
  if (!iommu.enabled) {
    layers.push({
      layer: "IOMMU",
      holder: "none: the host's IOMMU is off, DMA addresses are host-physical",
      from: `DMA ${hex(iova)}`,
      to: `HPA ${hex(iova)}`,
      value: iova,
    });
    return iova;
  }
  const domain = iommu.domainOf(t.gpu.gpu.bdf);
  const hpa = domain.iovaToPhys(iova);
  const atc =
    iommu.device(t.gpu.gpu.bdf).atc !== undefined ? "; the GPU's ATC caches it (ATS)" : "; the IOTLB caches it";
  layers.push({
    layer: "IOMMU page table",
    holder: `IOMMU domain ${domain.id} (${domain.type}) of ${t.gpu.bdf}, group ${t.gpu.group}${atc}`,
    from: `IOVA ${hex(iova)}`,
    to: hpa < 0 ? "not mapped (a DMA here faults)" : `HPA ${hex(hpa)}`,
    value: hpa,
  });
  return hpa;
}

/** The chain as aligned text lines. */
export function formatExplanation(e: Explanation): string[] {
  const out: string[] = [];
  if (e.gva !== undefined) {
    out.push(
      `translation chain of ${e.vm}'s GPU virtual address ${hex(e.gva)}` +
        (e.gma >= 0 ? ` (the same buffer as GMA ${hex(e.gma)})` : "") +
        ` through its PPGTT (${e.mode === "vgpu" ? "vGPU: the guest's tables, then the shadow tables" : "whole GPU assigned: the guest's own tables"})`,
    );
  } else {
    out.push(
      `translation chain of ${e.vm}'s GMA ${hex(e.gma)} (${e.mode === "vgpu" ? "vGPU: the seed's chain" : "whole GPU assigned"})`,
    );
  }
  const w = Math.max(...e.layers.map((l) => `${l.from} -> ${l.to}`.length));
  e.layers.forEach((l, i) => {
    out.push(`  ${i + 1} ${l.layer.padEnd(20)} ${`${l.from} -> ${l.to}`.padEnd(w)}  ${l.holder}`);
  });
  out.push(`  ${e.agree ? "agree" : "DISAGREE"}: ${e.note}`);
  return out;
}
