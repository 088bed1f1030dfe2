/**
 * The six DMA designs of the seed thread (docs/seed-thread-2015.txt, explained in docs/designs.md) as data: what the
 * thread says of each, what a scenario's host must offer to run it (`refusal`, checked before anything runs), how the
 * scenario's host is set for it (`configure`) and which mapper the vendor driver uses (`mapper`, mappers.ts).
 *
 * Not here: running them (run.ts) and reporting (report-*.ts).
 */
import { hex } from "../core/index.ts";
import type { DesignId, Scenario } from "../scenario/index.ts";

export interface Design {
  readonly id: DesignId;
  /** Its number in the issue and docs/designs.md (1..6). */
  readonly n: number;
  readonly title: string;
  /** The thread's words for it. */
  readonly quote: string;
  /** What the shadow GTT holds, and what translates it. */
  readonly chain: string;
  /** The vendor driver's mapping of a pinned page: dma_map_page (undefined) or one of mappers.ts. */
  readonly mapper: "identity" | "gpa" | "per-vm-iova" | undefined;
}

export const DESIGNS: readonly Design[] = [
  {
    id: "no-iommu",
    n: 1,
    title: "No IOMMU",
    quote: "KVMGT doesn't require IOMMU. All DMA targets are already replaced with HPA thru shadow GTT.",
    chain: "GMA -> HPA (shadow GTT); no IOMMU: the mediator alone keeps DMA inside each VM",
    mapper: undefined,
  },
  {
    id: "identity",
    n: 2,
    title: "Identity map HPA->HPA",
    quote:
      "one simple approach is to have vGPU IOMMU driver configure system IOMMU with identity mapping (HPA->HPA) ... " +
      "we also can't have the conflict that an HPA could overlap an IOVA for a previously mapped page",
    chain: "GMA -> HPA (shadow GTT) -> HPA (identity entry in the domain where the host driver's IOVAs live)",
    mapper: "identity",
  },
  {
    id: "gpa",
    n: 3,
    title: "GPA->HPA in the device's IOMMU entry",
    quote: "We can't use (GPA->HPA) since GPAs from multiple VMs are conflicting.",
    chain: "GMA -> GPA (shadow GTT) -> HPA (one IOMMU entry for the GPU, shared by every VM's GPAs)",
    mapper: "gpa",
  },
  {
    id: "per-vm-iova",
    n: 4,
    title: "Per-VM IOVA from iova.c",
    quote:
      "vGPU IOMMU driver needs to allocate IOVA from iova.c for each VM w/ vGPU assigned ... " +
      "It adds one additional mapping layer (GPA->IOVA->HPA).",
    chain: "GMA -> IOVA = VM range base + GPA (shadow GTT) -> HPA (IOMMU)",
    mapper: "per-vm-iova",
  },
  {
    id: "dma-api",
    n: 5,
    title: "dma_map_page through the shared domain",
    quote:
      "dma_map_page() receives that page, programs the system IOMMU and provides an IOVA; " +
      "the GPU MMU can then be programmed with the GPA to IOVA translations",
    chain: "GMA -> IOVA from the host's allocator (shadow GTT) -> HPA (IOMMU)",
    mapper: undefined,
  },
  {
    id: "ats",
    n: 6,
    title: "ATS: pre-translated requests",
    quote:
      "The only solution to this would be for the GPU to participate in ATS and provide pre-translated transactions " +
      "from the GPU.",
    chain: "GMA -> IOVA (shadow GTT) -> HPA cached in the GPU's ATC; requests marked translated skip the IOMMU",
    mapper: undefined,
  },
];

export function design(id: DesignId): Design {
  return DESIGNS.find((d) => d.id === id)!;
}

/**
 * Why `scenario`'s host cannot run design `id` (a sentence naming the field and what to change), or undefined.
 * Checked for every design before any runs.
 */
export function refusal(id: DesignId, scenario: Scenario): string | undefined {
  const h = scenario.host;
  const mediated = h.gpus.filter((g) => g.driver === "i915");
  const vgpuVms = scenario.vms.filter((v) => v.devices.some((d) => d.kind === "vgpu"));
  if (mediated.length === 0 || vgpuVms.length === 0) {
    return "the scenario has no VM with a vGPU: there is no vendor-driver DMA to compare (add a vgpu device)";
  }
  if (id === "no-iommu") {
    const whole = h.gpus.findIndex((g) => g.driver === "vfio-pci");
    if (whole >= 0) {
      return (
        `host.gpus[${whole}] (${h.gpus[whole]!.name}) is assigned whole through vfio-pci, which needs the IOMMU ` +
        "(type1 isolates it through the IOMMU; vfio-noiommu would give the VM all of memory): remove it or drop no-iommu"
      );
    }
    const ats = h.gpus.findIndex((g) => g.ats);
    if (ats >= 0) return `host.gpus[${ats}] (${h.gpus[ats]!.name}) uses ATS, which needs the IOMMU: set ats false`;
    return undefined;
  }
  if (!h.iommu) return `the ${id} design needs the system IOMMU, and host.iommu is false: set host.iommu true`;
  if (id === "identity") {
    for (const [i, g] of h.gpus.entries()) {
      if (g.driver !== "i915" || g.dmaMaskBits === undefined || g.dmaMaskBits >= 53) continue;
      const reach = 2 ** g.dmaMaskBits;
      if (h.memoryBytes > reach) {
        return (
          `identity maps HPA -> HPA, so ${g.name} must address every frame a guest page can be in: host memory ends ` +
          `at ${hex(h.memoryBytes)}, above host.gpus[${i}].dmaMaskBits (${g.dmaMaskBits} bits, ${hex(reach)}): ` +
          "raise the mask or shrink host.memory"
        );
      }
    }
  }
  return undefined;
}

/** The scenario as design `id` runs it: the IOMMU off for no-iommu, ATS on the mediated GPUs for ats only. */
export function configure(id: DesignId, scenario: Scenario): Scenario {
  return {
    ...scenario,
    host: {
      ...scenario.host,
      iommu: id === "no-iommu" ? false : scenario.host.iommu,
      gpus: scenario.host.gpus.map((g) => (g.driver === "i915" ? { ...g, ats: id === "ats" } : g)),
    },
  };
}
