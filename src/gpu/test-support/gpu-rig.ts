/**
 * A test rig for the GPU model with no driver: a host with the GPU on its bus and a stub bound to it that counts
 * MSIs, graphics memory backed on demand (one frame per page, each mapped with dma_map_page, so consecutive pages
 * have non-consecutive IOVAs), CPU access to that memory behind the GPU's back, a PPGTT builder (tables in coherent
 * DMA pages, written by the CPU) and execlists helpers (an engine switched to execlists with its status page, logical
 * ring contexts with their ring, ELSP writes, the CSB read back from the status page).
 *
 * Test support only: no index.ts exports it.
 */
import assert from "node:assert/strict";
import { type Hpa, type Iova, type Pfn, TraceRecorder, VirtualClock } from "../../core/index.ts";
import {
  type Bdf,
  type DmaDevice,
  DmaDirection,
  Host,
  PCI_CAP_ID_MSI,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  parseBdf,
  pfnToHpa,
} from "../../host/index.ts";
import { GpuDevice, MiB } from "../gpu.ts";
import { type ContextDescriptor, type CsbEvent, LRC_STATE_OFFSET, lrcDescriptor, lrcRegisterState } from "../lrc.ts";
import {
  GEN8_CSB_READ_PTR_MASK,
  GEN8_CSB_WRITE_PTR_MASK,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GEN8_PAGE_PRESENT,
  GEN8_PAGE_RW,
  GFX_RUN_LIST_ENABLE,
  GT_CONTEXT_SWITCH_INTERRUPT,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_ENGINE_BASE,
  GT_ENGINE_IRQ,
  GT_ENGINES,
  GT_RENDER_USER_INTERRUPT,
  GTT_OFFSET,
  type GtEngineId,
  gen8GtIer,
  gen8GtImr,
  gen8PteEncode,
  I915_HWS_CSB_BUF0_INDEX,
  I915_HWS_CSB_WRITE_INDEX,
  MI_NOOP,
  maskedBitDisable,
  maskedBitEnable,
  maskedField,
  RING_CONTEXT_STATUS_PTR,
  RING_ELSP,
  RING_HWS_PGA,
  RING_MI_MODE,
  RING_MODE_GEN7,
  STOP_RING,
} from "../regs.ts";

export const PAGE = 4096;
const TWO32 = 4294967296;
export const RIG_BDF: Bdf = parseBdf("0000:00:02.0");

/** A PPGTT built by the CPU in coherent DMA pages: every table one page, entries written in place. */
export class TestPpgtt {
  /** DMA address of the PML4 (what a context's PDP0 holds). */
  readonly root: Iova;
  /** Every table page: DMA address -> frame. */
  readonly tables = new Map<number, Pfn>();
  /** Data pages mapped: virtual page -> frame. */
  readonly pages = new Map<number, { pfn: Pfn; iova: Iova }>();

  constructor(private readonly rig: { readonly host: Host; readonly dma: DmaDevice }) {
    this.root = this.newTable();
  }

  private newTable(): Iova {
    const buf = this.rig.dma.allocCoherent(PAGE);
    this.rig.host.physmem.fill(pfnToHpa(buf.pfn), 0, PAGE);
    this.tables.set(buf.dmaAddr, buf.pfn);
    return buf.dmaAddr;
  }

  /** HPA of the entry for `va` at `level` (0 PML4 .. 3 PT), creating present RW tables down to it. */
  entryHpa(va: number, level: number): Hpa {
    let table = this.root as number;
    const page = Math.floor(va / PAGE);
    for (let l = 0; l <= level; l++) {
      const index = Math.floor(page / 2 ** (9 * (3 - l))) % 512;
      const pfn = this.tables.get(table);
      assert.ok(pfn !== undefined, `no table at DMA address ${table.toString(16)}`);
      const at = pfnToHpa(pfn, index * 8);
      if (l === level) return at;
      const lo = this.rig.host.physmem.readU32(at);
      const hi = this.rig.host.physmem.readU32((at + 4) as Hpa);
      if ((lo & GEN8_PAGE_PRESENT) === 0) {
        const next = this.newTable();
        this.writeEntry(at, next + GEN8_PAGE_PRESENT + GEN8_PAGE_RW);
        table = next;
      } else table = ((lo & 0xfffff000) >>> 0) + (hi & 0xfffff) * TWO32;
    }
    throw new Error("unreachable");
  }

  /** Writes an 8-byte entry at `at`. */
  writeEntry(at: Hpa, value: number): void {
    this.rig.host.physmem.writeU32(at, value % TWO32);
    this.rig.host.physmem.writeU32((at + 4) as Hpa, Math.floor(value / TWO32));
  }

  /** Maps virtual page `va` (aligned) to a new frame (or `pfn`), writable unless told otherwise. */
  map(va: number, o: { readonly writable?: boolean; readonly pfn?: Pfn } = {}): { pfn: Pfn; iova: Iova } {
    const pfn = o.pfn ?? this.rig.host.physmem.allocFrame();
    const iova = this.rig.dma.mapPage(pfn, 0, PAGE, DmaDirection.BIDIRECTIONAL);
    this.writeEntry(this.entryHpa(va, 3), iova + GEN8_PAGE_PRESENT + (o.writable === false ? 0 : GEN8_PAGE_RW));
    const m = { pfn, iova };
    this.pages.set(Math.floor(va / PAGE), m);
    return m;
  }

  /** Maps [va, va + bytes). */
  mapRange(va: number, bytes: number): void {
    for (let a = va; a < va + bytes; a += PAGE) this.map(a);
  }

  /** The HPA behind virtual address `va` (mapped with `map`). */
  hpa(va: number): Hpa {
    const m = this.pages.get(Math.floor(va / PAGE));
    assert.ok(m !== undefined, `PPGTT address ${va.toString(16)} is not mapped`);
    return pfnToHpa(m.pfn, va % PAGE);
  }

  u32(va: number): number {
    return this.rig.host.physmem.readU32(this.hpa(va));
  }
}

/** A logical ring context built in GGTT memory for tests. */
export interface TestContext {
  readonly engine: GtEngineId;
  readonly lrca: number;
  readonly ring: number;
  readonly ringBytes: number;
  readonly desc: ContextDescriptor;
  /** Where the next dword goes in the ring (the driver's tail). */
  tail: number;
  /** Writes dwords at the ring's tail (NOOP padding to a qword) and the new TAIL into the image. */
  emit(dwords: readonly number[]): void;
  /** Writes a register state value (a CTX_* index) in the image. */
  setState(index: number, value: number): void;
  state(index: number): number;
}

export type GpuRig = ReturnType<typeof gpuRig>;

export function gpuRig(opts: { readonly memoryBytes?: number } = {}) {
  const clock = new VirtualClock();
  const host = new Host({ memoryBytes: opts.memoryBytes ?? 1024 * MiB, clock, iommu: { enabled: true } });
  const rec = new TraceRecorder(host.tracer);
  const gpu = new GpuDevice({ bdf: RIG_BDF, bus: host.pci, dma: host.deviceDma(RIG_BDF), tracer: host.tracer, clock });
  host.addPciDevice(gpu, { ats: false });
  const msis: number[] = [];
  host.pci.bind(RIG_BDF, "gpu-test", { msi: (v) => msis.push(v), intx: () => {} });
  gpu.config.write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  const dma = host.dmaApi(RIG_BDF);
  const frames = new Map<number, Pfn>();
  const reg = (off: number): number => gpu.barRead(0, off, 4);
  const setReg = (off: number, v: number): void => gpu.barWrite(0, off, 4, v >>> 0);
  /** Next free GMA for `alloc`. */
  let nextGma = 0x10_0000;

  function back(gma: number, bytes: number): void {
    for (let p = gma / PAGE; p < (gma + bytes) / PAGE; p++) {
      if (frames.has(p)) continue;
      const pfn = host.physmem.allocFrame();
      const iova = dma.mapPage(pfn, 0, PAGE, DmaDirection.BIDIRECTIONAL);
      gpu.barWrite(0, GTT_OFFSET + p * 8, 8, gen8PteEncode(iova));
      frames.set(p, pfn);
    }
  }
  /** Backs `bytes` of fresh GM (page aligned) and returns its GMA. */
  function alloc(bytes: number): number {
    const gma = nextGma;
    nextGma += Math.ceil(bytes / PAGE) * PAGE;
    back(gma, bytes);
    return gma;
  }
  function hpaOf(gma: number): Hpa {
    const f = frames.get(Math.floor(gma / PAGE));
    assert.ok(f !== undefined, `GMA ${gma.toString(16)} is not backed`);
    return pfnToHpa(f, gma % PAGE);
  }
  const u32 = (gma: number): number => host.physmem.readU32(hpaOf(gma));
  const setU32 = (gma: number, v: number): void => host.physmem.writeU32(hpaOf(gma), v >>> 0);
  function writeDwords(gma: number, dwords: readonly number[]): void {
    dwords.forEach((d, i) => {
      setU32(gma + 4 * i, d);
    });
  }

  /** Status page per engine (execlists). */
  const hws = new Map<GtEngineId, number>();
  /** Switches `engine` to execlists as i915's enable_execlists does, with a fresh status page; resets the CSB. */
  function enableExeclists(engine: GtEngineId): number {
    const base = GT_ENGINE_BASE[engine];
    const page = alloc(PAGE);
    hws.set(engine, page);
    setReg(base + RING_MODE_GEN7, maskedBitEnable(GFX_RUN_LIST_ENABLE));
    setReg(base + RING_MI_MODE, maskedBitDisable(STOP_RING));
    setReg(base + RING_HWS_PGA, page);
    resetCsb(engine);
    return page;
  }
  /** reset_csb_pointers: write pointer 5 in the HWSP and the register, entries -1. */
  function resetCsb(engine: GtEngineId): void {
    const page = hws.get(engine)!;
    for (let i = 0; i < 12; i++) setU32(page + 4 * (I915_HWS_CSB_BUF0_INDEX + i), 0xffffffff);
    setU32(page + 4 * I915_HWS_CSB_WRITE_INDEX, 5);
    csbHead.set(engine, 5);
    setReg(
      GT_ENGINE_BASE[engine] + RING_CONTEXT_STATUS_PTR,
      maskedField(GEN8_CSB_READ_PTR_MASK, 5 << 8) | maskedField(GEN8_CSB_WRITE_PTR_MASK, 5),
    );
  }
  /** The CSB entries written since the last call (from the HWSP, as i915's process_csb reads them). */
  const csbHead = new Map<GtEngineId, number>();
  function csb(engine: GtEngineId): CsbEvent[] {
    const page = hws.get(engine)!;
    const wp = u32(page + 4 * I915_HWS_CSB_WRITE_INDEX);
    let head = csbHead.get(engine) ?? 5;
    const out: CsbEvent[] = [];
    while (head !== wp) {
      head = (head + 1) % 6;
      out.push({
        status: u32(page + 4 * (I915_HWS_CSB_BUF0_INDEX + 2 * head)),
        ctxId: u32(page + 4 * (I915_HWS_CSB_BUF0_INDEX + 2 * head + 1)),
      });
    }
    csbHead.set(engine, head);
    return out;
  }

  let nextCcid = 0x20;
  /** A context on `engine`: image (2 pages) and ring (`ringBytes`) in fresh GM, PPGTT root `pml4` (0: none). */
  function newContext(
    engine: GtEngineId,
    o: { readonly ringBytes?: number; readonly pml4?: number; readonly contextControl?: number } = {},
  ): TestContext {
    const ringBytes = o.ringBytes ?? PAGE;
    const lrca = alloc(2 * PAGE);
    const ring = alloc(ringBytes);
    const state = lrcRegisterState(engine, {
      ringStart: ring,
      ringBytes,
      pml4: o.pml4 ?? 0,
      ...(o.contextControl !== undefined ? { contextControl: o.contextControl } : {}),
    });
    writeDwords(lrca + LRC_STATE_OFFSET, Array.from(state));
    const ccid = nextCcid;
    nextCcid += 0x20;
    const c: TestContext = {
      engine,
      lrca,
      ring,
      ringBytes,
      desc: lrcDescriptor(lrca, ccid),
      tail: 0,
      emit(dwords) {
        const words = dwords.length % 2 === 1 ? [...dwords, MI_NOOP] : [...dwords];
        for (const w of words) {
          setU32(ring + c.tail, w);
          c.tail = (c.tail + 4) % ringBytes;
        }
        c.setState(7, c.tail); // CTX_RING_TAIL
      },
      setState(index, value) {
        setU32(lrca + LRC_STATE_OFFSET + 4 * index, value);
      },
      state(index) {
        return u32(lrca + LRC_STATE_OFFSET + 4 * index);
      },
    };
    return c;
  }
  /** Writes ELSP: element 1 (high, low) then element 0 (high, low). */
  function elsp(engine: GtEngineId, d0: ContextDescriptor, d1?: ContextDescriptor): void {
    const at = GT_ENGINE_BASE[engine] + RING_ELSP;
    setReg(at, d1?.hi ?? 0);
    setReg(at, d1?.lo ?? 0);
    setReg(at, d0.hi);
    setReg(at, d0.lo);
  }
  /** Enables user, CS error and context-switch interrupts of every engine, MSI and the master. */
  function enableIrqs(): void {
    const on = GT_RENDER_USER_INTERRUPT | GT_CS_MASTER_ERROR_INTERRUPT | GT_CONTEXT_SWITCH_INTERRUPT;
    const banks = [0, 0, 0, 0];
    for (const e of GT_ENGINES) {
      const { bank, shift } = GT_ENGINE_IRQ[e];
      banks[bank] = banks[bank]! | (on << shift);
    }
    banks.forEach((bits, n) => {
      setReg(gen8GtIer(n), bits >>> 0);
      setReg(gen8GtImr(n), ~bits >>> 0);
    });
    const c = gpu.config.findCapability(PCI_CAP_ID_MSI);
    gpu.config.write(c + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE);
    setReg(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
  }

  const rig = {
    clock,
    host,
    rec,
    gpu,
    msis,
    dma,
    frames,
    reg,
    setReg,
    back,
    alloc,
    hpaOf,
    u32,
    setU32,
    writeDwords,
    enableExeclists,
    resetCsb,
    csb,
    newContext,
    elsp,
    enableIrqs,
    hws,
    ppgtt: (): TestPpgtt => new TestPpgtt(rig),
  };
  return rig;
}
