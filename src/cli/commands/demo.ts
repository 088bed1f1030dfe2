/**
 * `vgpu demo`: the main job. Today it walks one guest page through the host layer of the seed's chain — the four key
 * points of the thread, done by hand on the model:
 *
 *   the type1 IOMMU stores GPA -> HVA          (here: the VMM's guest-RAM mapping, base + GPA)
 *   get_user_pages() on the HVA pins the page  (AddressSpace.pinUserPages -> host frame, HPA)
 *   dma_map_page() programs the system IOMMU   (DmaDevice.mapPage -> IOVA from iova.c's allocator)
 *   the GPU MMU is programmed with the IOVA    (the device DMAs to the IOVA, translated back to the HPA)
 *
 * and shows the host graphics driver's own coherent buffer sharing the same IOVA space, the IOTLB at work, a blocked
 * DMA in the fault log, and every count back to zero after teardown. Later issues replace the hand-driven steps with
 * the real vendor driver, VMM and guest.
 */
import type { Command } from "commander";
import { formatTrace, type Hva, hex, type Iova, type Pfn, TraceRecorder } from "../../core/index.ts";
import {
  DmaDirection,
  GiB,
  Host,
  PciConfigSpace,
  type PciDeviceModel,
  PROT_READ,
  PROT_WRITE,
  parseBdf,
  pfnToHpa,
} from "../../host/index.ts";

/** A bare stand-in for the physical GPU until src/gpu exists: identity and BARs, no behaviour. */
function gpuStub(): PciDeviceModel {
  return {
    bdf: parseBdf("0000:00:02.0"),
    config: new PciConfigSpace({
      vendorId: 0x8086,
      deviceId: 0x1912,
      classCode: 0x030000,
      bars: [
        { index: 0, size: 16 * 1024 * 1024, kind: "mem64" },
        { index: 2, size: 256 * 1024 * 1024, kind: "mem64", prefetchable: true },
      ],
      msiVectors: 1,
    }),
    barRead: () => 0,
    barWrite: () => {},
    reset: () => {},
  };
}

export interface DemoOptions {
  readonly trace?: boolean;
  readonly seed?: string;
}

export function runDemo(opts: DemoOptions, out: (line: string) => void): void {
  const host = new Host({ memoryBytes: 16 * GiB, iommu: { enabled: true }, seed: Number(opts.seed ?? 1) });
  const rec = new TraceRecorder(host.tracer);
  const gpu = gpuStub();
  const group = host.addPciDevice(gpu);
  const dma = host.dmaApi(gpu.bdf);
  const bus = host.deviceDma(gpu.bdf);

  out("vgpu demo: one guest page through the host layer of the seed's chain");
  out(`host: 16 GiB RAM, IOMMU on (VT-d style, 48-bit IOVA), GPU ${gpu.bdf} in IOMMU group ${group}`);
  out("");

  // The host graphics driver allocates its ring from the same IOVA space the vGPU's pages will use.
  const ring = dma.allocCoherent(4 * 4096);
  out(
    `host driver  dma_alloc_coherent(16 KiB) for its ring: hpa ${hex(pfnToHpa(ring.pfn))} -> iova ${hex(ring.dmaAddr)}`,
  );

  // The VMM owns guest RAM as ordinary anonymous memory in its address space.
  const vmm = host.spawn("qemu-vm1", { rlimitMemlockBytes: 64 * 1024 * 1024 });
  const ramSize = 4 * GiB;
  const ramBase = vmm.mm.mmap(ramSize, PROT_READ | PROT_WRITE, { name: "pc.ram" });
  out(`VMM          mmap(4 GiB) guest RAM at hva ${hex(ramBase)} (nothing allocated until touched)`);

  const gpa = 0x1234_5000;
  const hva = (ramBase + gpa) as Hva;
  const msg = new TextEncoder().encode("hello from the guest");
  vmm.mm.write(hva, msg);
  out(`guest        writes "hello from the guest" at gpa ${hex(gpa)} (hva ${hex(hva)}, faulted in on first touch)`);

  // Key point 2: pin the page behind the HVA.
  const frames: Pfn[] = [];
  vmm.mm.accountLockedVm(1, true);
  vmm.mm.pinUserPages(hva, 1, true, frames);
  const pfn = frames[0]!;
  out(
    `vendor drv   pin_user_pages(hva) -> frame ${hex(pfn)} (hpa ${hex(pfnToHpa(pfn))}), locked_vm ${vmm.mm.lockedVm()} page`,
  );

  // Key point 3: dma_map_page through the system IOMMU.
  const iova: Iova = dma.mapPage(pfn, 0, 4096, DmaDirection.BIDIRECTIONAL);
  out(`vendor drv   dma_map_page(frame) -> iova ${hex(iova)} (top-down below 4 GiB, next to the ring: no collision)`);

  // Key point 4: the device uses the IOVA; the IOMMU translates it back to the frame.
  const buf = new Uint8Array(msg.length);
  const before = host.iommu.stats();
  bus.read(iova, buf);
  bus.read(iova, buf);
  const after = host.iommu.stats();
  out(
    `GPU          DMA read at iova ${hex(iova)}: "${new TextDecoder().decode(buf)}" ` +
      `(IOTLB misses +${after.iotlbMisses - before.iotlbMisses}, page walks +${after.walks - before.walks}, hits +${after.iotlbHits - before.iotlbHits})`,
  );
  bus.write((iova + 64) as Iova, new TextEncoder().encode("and back from the GPU"));
  const back = new Uint8Array(21);
  vmm.mm.read((hva + 64) as Hva, back);
  out(`guest        reads gpa ${hex(gpa + 64)}: "${new TextDecoder().decode(back)}"`);
  out("");
  out("translation chain of that access:");
  out(`  GPA ${hex(gpa)} -> HVA ${hex(hva)} (VMM mapping) -> HPA ${hex(pfnToHpa(pfn))} (process page table)`);
  out(
    `  HPA -> IOVA ${hex(iova)} (dma_map_page) -> HPA ${hex(host.iommu.domainOf(gpu.bdf).iovaToPhys(iova))} (IOMMU page walk)`,
  );
  out("");

  // A DMA to an IOVA nobody mapped is blocked and logged.
  const stray = 0x8000_0000 as Iova;
  const r = bus.write(stray, new Uint8Array([0xde, 0xad]));
  const fault = host.iommu.lastFault();
  out(
    `GPU          stray DMA write to iova ${hex(stray)}: ${r === 0 ? "served (BUG)" : "blocked"}; fault log: ${fault ? `${fault.reason} in domain ${fault.domain}` : "empty"}`,
  );

  // Teardown: everything returns to zero.
  dma.unmapPage(iova, 4096, DmaDirection.BIDIRECTIONAL);
  vmm.mm.unpinUserPages([pfn]);
  vmm.mm.accountLockedVm(1, false);
  dma.dmaFreeCoherent(ring);
  vmm.exit();
  const mem = host.physmem.stats();
  out("");
  out(
    `teardown     DMA mappings ${dma.mappings()}, pinned frames ${mem.pinnedFrames}, allocated frames ${mem.allocatedFrames}, ` +
      `IOMMU faults ${host.iommu.stats().faults}, trace events ${rec.records.length}`,
  );
  if (opts.trace) {
    out("");
    out("trace:");
    for (const t of rec.records) out(`  ${formatTrace(t)}`);
  }
}

export function registerDemo(program: Command): void {
  program
    .command("demo")
    .description("run the built-in host and walk a guest page through every layer of the chain")
    .option("--trace", "print every trace event")
    .option("--seed <n>", "seed of the host's random choices", "1")
    .action((opts: DemoOptions) => runDemo(opts, (l) => console.log(l)));
}
