/**
 * The physical GPU as a PCI device model: a gen9-like Intel integrated GPU (8086:1912) reduced to what the vGPU stack
 * exercises. `docs/gpu-programming.md` is its datasheet; `regs.ts` holds its tables.
 *
 * Config space: vendor 0x8086, device 0x1912, class 0x030000 (VGA), revision 6, subsystem 8086:2212, INTA#, one
 * 64-bit MSI vector. BAR0 (GTTMMADR): 16 MiB, 64-bit, non-prefetchable: MMIO registers in [0, 2 MiB), the GTT window
 * in [8 MiB, 16 MiB), nothing in between. BAR2 (GMADR): the aperture, 64-bit prefetchable, `apertureSize` bytes
 * (a host setting, power of two from 128 MiB to 2 GiB, default 512 MiB: the size GVT-g's published type table
 * assumes). Both BARs are trapped (no `barFrames`): aperture accesses are translated on every access, and so cannot be
 * mmapped.
 *
 * BAR0 accesses: registers take 4-byte accesses at 4-byte-aligned offsets and 8-byte accesses at 8-byte-aligned
 * offsets (two registers, low one first); the GTT window takes 8-byte accesses (a whole PTE) and 4-byte accesses (the
 * low or high half of one). Any other access to BAR0, an unimplemented register and the hole read as 0 and ignore
 * writes. BAR2 accepts 1, 2, 4 and 8-byte accesses at any offset inside the aperture: the access at aperture offset X
 * is a GPU memory access at GMA X (GGTT entry X >> 12, then the DMA path); a GTT or IOMMU fault reads as 0 and drops
 * the write (and is counted).
 *
 * Engines: the four of a Skylake GT2 (engine.ts): rcs, bcs, vcs, vecs, each with its register block at its base
 * (GT_ENGINE_BASE), legacy ring submission and execlists (execlists.ts). An engine waiting on MI_SEMAPHORE_WAIT is
 * re-evaluated (in the fixed order rcs, bcs, vcs, vecs) after any other engine has executed commands, and on
 * `pollSemaphores`. `executingEngine` names the engine executing right now (runs are synchronous, so every DMA the
 * GPU makes happens inside one).
 *
 * Interrupts: the GT interrupt logic (interrupts.ts, four banks) drives one line. With MSI enabled in config space its
 * rising edge sends MSI vector 0 through `PciBus.raiseMsi` (delivered only while Bus Master Enable is set and a driver
 * is bound); with MSI disabled the line is INTx.
 *
 * Resets: GEN6_GDRST resets engines (ring registers, execlists, errors); function-level reset (PciBus.reset) returns
 * every register, the GGTT (all entries not present) and the fences to power-on values. The engines' time accounting
 * stays.
 *
 * Not modelled: display, power management, forcewake, the I/O BAR, fence-based detiling through this device's own
 * aperture (fence registers are stored only: the host driver never fences; a vGPU's BAR2 detiles with its guest's
 * fences, vgpu.ts, with tiling.ts's layouts), memory decode enable (accesses work whatever PCI_COMMAND_MEMORY says), and every
 * register the datasheet does not list.
 */
import { type Clock, defineTraceEvents, Errno, KernelError, type Tracer } from "../core/index.ts";
import {
  type Bdf,
  type DeviceDma,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_ENABLE,
  type PciBus,
  PciConfigSpace,
  type PciDeviceModel,
} from "../host/index.ts";
import { Blitter } from "./blitter.ts";
import { type CostModel, costModel } from "./cost.ts";
import { Engine, type EngineContext } from "./engine.ts";
import { Ggtt } from "./ggtt.ts";
import { GtInterrupts } from "./interrupts.ts";
import { GpuMemory } from "./memory.ts";
import {
  BAR0_SIZE,
  BAR2_INDEX,
  ENGINE_BLOCK_SIZE,
  ENGINE_RESET_DOMAIN,
  FENCE_REG_GEN6_LO,
  GEN6_GDRST,
  GEN6_GRDOM_FULL,
  GEN8_GT_BANKS,
  GEN8_GT_ISR0,
  GEN8_MASTER_IRQ,
  GM_SIZE,
  GPU_CLASS_CODE,
  GPU_DEVICE_ID,
  GPU_REVISION,
  GPU_VENDOR_ID,
  GT_ENGINES,
  GTT_ENTRIES,
  GTT_OFFSET,
  GTT_SIZE,
  type GtEngineId,
  MMIO_SIZE,
  NUM_FENCES,
} from "./regs.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "gpu.gtt.write": { bdf: string; index: number; pte: number };
    "gpu.gtt.fill": { bdf: string; index: number; count: number; pte: number };
    "gpu.irq": { bdf: string; iir: number; delivery: string };
    "gpu.fence.write": { bdf: string; fence: number; value: number };
    "gpu.reset": { bdf: string; domains: string };
  }
}
defineTraceEvents("gpu", {
  "gpu.gtt.write": "{bdf}: GGTT[{index}] = {pte}",
  "gpu.gtt.fill": "{bdf}: GGTT[{index}..+{count}] = {pte}",
  "gpu.irq": "{bdf}: interrupt (IIR {iir}) by {delivery}",
  "gpu.fence.write": "{bdf}: fence {fence} = {value}",
  "gpu.reset": "{bdf}: reset of {domains}",
});

export const MiB = 1024 * 1024;
/** Default aperture (BAR2) size: 512 MiB, the size GVT-g's documented type table is computed for. */
export const DEFAULT_APERTURE_SIZE = 512 * MiB;
export const MIN_APERTURE_SIZE = 128 * MiB;
export const MAX_APERTURE_SIZE = 2048 * MiB;
export const GPU_SUBSYSTEM_VENDOR_ID = 0x8086;
export const GPU_SUBSYSTEM_ID = 0x2212;
const TWO32 = 4294967296;
/** Bounds the rounds of semaphore re-evaluation after one run (each round must have made progress). */
const MAX_POLL_ROUNDS = 64;

export interface GpuDeviceOptions {
  readonly bdf: Bdf;
  /** The bus the GPU sits on (interrupts are raised through it). */
  readonly bus: PciBus;
  /** The device's DMA path (host.deviceDma(bdf)). */
  readonly dma: DeviceDma;
  readonly tracer: Tracer;
  /** For the engines' busy-time timeline. */
  readonly clock: Clock;
  /** BAR2 size in bytes: a power of two in [128 MiB, 2 GiB]; default 512 MiB. */
  readonly apertureSize?: number;
  readonly cost?: Partial<CostModel>;
}

export interface GpuStats {
  readonly gttWrites: number;
  readonly gttFaults: number;
  readonly iommuFaults: number;
  readonly interrupts: number;
  readonly engines: Readonly<
    Record<
      GtEngineId,
      { readonly runs: number; readonly commands: number; readonly busyNs: number; readonly busyUntil: number }
    >
  >;
}

export class GpuDevice implements PciDeviceModel {
  readonly bdf: Bdf;
  readonly config: PciConfigSpace;
  readonly apertureSize: number;
  readonly cost: CostModel;
  readonly ggtt = new Ggtt();
  readonly memory: GpuMemory;
  readonly blitter: Blitter;
  readonly irq: GtInterrupts;
  readonly rcs: Engine;
  readonly bcs: Engine;
  readonly vcs: Engine;
  readonly vecs: Engine;
  /** Fence registers as 32-bit halves: [2n] low, [2n + 1] high. */
  readonly fences = new Uint32Array(NUM_FENCES * 2);
  gttWrites = 0;
  interrupts = 0;

  private readonly bus: PciBus;
  private readonly tracer: Tracer;
  private readonly scratch = new Uint8Array(8);
  private readonly engineList: readonly Engine[];
  /** Engines executing, innermost last (an LRI may write another engine's TAIL or ELSP: a nested run). */
  private readonly executingStack: GtEngineId[] = [];
  private polling = false;
  private pollAgain = false;

  constructor(opts: GpuDeviceOptions) {
    const ap = opts.apertureSize ?? DEFAULT_APERTURE_SIZE;
    if (!Number.isInteger(Math.log2(ap)) || ap < MIN_APERTURE_SIZE || ap > MAX_APERTURE_SIZE) {
      throw new KernelError(
        Errno.EINVAL,
        `GPU aperture size ${ap} bytes must be a power of two from 128 MiB to 2048 MiB (default 512 MiB)`,
      );
    }
    this.bdf = opts.bdf;
    this.bus = opts.bus;
    this.tracer = opts.tracer;
    this.apertureSize = ap;
    this.cost = costModel(opts.cost);
    this.config = new PciConfigSpace({
      vendorId: GPU_VENDOR_ID,
      deviceId: GPU_DEVICE_ID,
      classCode: GPU_CLASS_CODE,
      revision: GPU_REVISION,
      subsystemVendorId: GPU_SUBSYSTEM_VENDOR_ID,
      subsystemId: GPU_SUBSYSTEM_ID,
      interruptPin: 1,
      bars: [
        { index: 0, size: BAR0_SIZE, kind: "mem64" },
        { index: BAR2_INDEX, size: ap, kind: "mem64", prefetchable: true },
      ],
      msiVectors: 1,
    });
    this.memory = new GpuMemory(this.ggtt, opts.dma, opts.tracer, opts.bdf);
    this.blitter = new Blitter(this.memory);
    this.irq = new GtInterrupts((level) => this.interruptLine(level));
    const ctx: EngineContext = {
      bdf: opts.bdf,
      memory: this.memory,
      blitter: this.blitter,
      irq: this.irq,
      cost: this.cost,
      clock: opts.clock,
      tracer: opts.tracer,
      writeRegister: (off, v) => this.writeRegister(off, v),
      busMasterEnabled: () => this.config.busMasterEnabled(),
      executing: (id) => {
        if (id !== undefined) this.executingStack.push(id);
        else this.executingStack.pop();
      },
      afterRun: (_e, progressed) => {
        if (progressed) this.pollSemaphores();
      },
    };
    this.rcs = new Engine("rcs", ctx);
    this.bcs = new Engine("bcs", ctx);
    this.vcs = new Engine("vcs", ctx);
    this.vecs = new Engine("vecs", ctx);
    this.engineList = [this.rcs, this.bcs, this.vcs, this.vecs];
  }

  engine(id: GtEngineId): Engine {
    switch (id) {
      case "rcs":
        return this.rcs;
      case "bcs":
        return this.bcs;
      case "vcs":
        return this.vcs;
      default:
        return this.vecs;
    }
  }

  /** The engine executing right now (inside a synchronous run), or undefined. */
  get executingEngine(): GtEngineId | undefined {
    return this.executingStack.at(-1);
  }

  /**
   * Re-evaluates every engine waiting on an MI_SEMAPHORE_WAIT, in the order rcs, bcs, vcs, vecs, and again while one
   * of them made progress (its commands may satisfy another's wait). Called after every run that executed commands;
   * software may call it after changing memory the GPU waits on (hardware polls on its own).
   */
  pollSemaphores(): void {
    if (this.polling) {
      this.pollAgain = true;
      return;
    }
    this.polling = true;
    try {
      for (let round = 0; round < MAX_POLL_ROUNDS; round++) {
        this.pollAgain = false;
        for (const e of this.engineList) if (e.waiting) e.retryWait();
        if (!this.pollAgain) break;
      }
    } finally {
      this.polling = false;
    }
  }

  /** Graphics memory size (4 GiB: what the GGTT maps). */
  get gmSize(): number {
    return GM_SIZE;
  }

  // ---- PciDeviceModel ---------------------------------------------------------------------------------------------

  barRead(bar: number, offset: number, size: number): number {
    if (bar === 0) {
      if (offset >= GTT_OFFSET && offset < GTT_OFFSET + GTT_SIZE) return this.gttRead(offset - GTT_OFFSET, size);
      if (offset >= 0 && offset < MMIO_SIZE) {
        if (size === 4 && offset % 4 === 0) return this.readRegister(offset);
        if (size === 8 && offset % 8 === 0) return this.readRegister(offset) + this.readRegister(offset + 4) * TWO32;
      }
      return 0;
    }
    if (bar === BAR2_INDEX) return this.apertureRead(offset, size);
    return 0;
  }

  barWrite(bar: number, offset: number, size: number, value: number): void {
    if (bar === 0) {
      if (offset >= GTT_OFFSET && offset < GTT_OFFSET + GTT_SIZE) {
        this.gttWrite(offset - GTT_OFFSET, size, value);
        return;
      }
      if (offset >= 0 && offset < MMIO_SIZE) {
        if (size === 4 && offset % 4 === 0) this.writeRegister(offset, value >>> 0);
        else if (size === 8 && offset % 8 === 0) {
          const hi = Math.floor(value / TWO32);
          this.writeRegister(offset, (value - hi * TWO32) >>> 0);
          this.writeRegister(offset + 4, hi >>> 0);
        }
      }
      return;
    }
    if (bar === BAR2_INDEX) this.apertureWrite(offset, size, value);
  }

  /** Function-level reset: registers, GGTT and fences to power-on values. */
  reset(): void {
    for (const e of this.engineList) e.reset();
    this.irq.reset();
    this.ggtt.reset();
    this.fences.fill(0);
    if (this.tracer.enabled) this.tracer.emit("gpu.reset", { bdf: this.bdf, domains: "function" });
  }

  // ---- registers -------------------------------------------------------------------------------------------------

  /** A 4-byte MMIO register read (offset in BAR0). */
  readRegister(off: number): number {
    const e = this.engineAt(off);
    if (e !== undefined) return e.readRegister(off - e.base);
    if (off >= GEN8_GT_ISR0 && off < GEN8_GT_ISR0 + 0x10 * GEN8_GT_BANKS) {
      const b = this.irq.bank((off - GEN8_GT_ISR0) >>> 4);
      const r = off & 0xf;
      return r === 0 ? b.isr : r === 4 ? b.imr : r === 8 ? b.iir : b.ier;
    }
    switch (off) {
      case GEN8_MASTER_IRQ:
        return this.irq.readMaster();
      case GEN6_GDRST:
        return 0; // resets complete at once
      default:
        if (off >= FENCE_REG_GEN6_LO && off < FENCE_REG_GEN6_LO + NUM_FENCES * 8) {
          return this.fences[(off - FENCE_REG_GEN6_LO) / 4]!;
        }
        return 0;
    }
  }

  /** A 4-byte MMIO register write (offset in BAR0): CPU writes and MI_LOAD_REGISTER_IMM both land here. */
  writeRegister(off: number, value: number): void {
    const v = value >>> 0;
    const e = this.engineAt(off);
    if (e !== undefined) {
      e.writeRegister(off - e.base, v);
      return;
    }
    if (off >= GEN8_GT_ISR0 && off < GEN8_GT_ISR0 + 0x10 * GEN8_GT_BANKS) {
      const n = (off - GEN8_GT_ISR0) >>> 4;
      const r = off & 0xf;
      if (r === 4) this.irq.writeImr(v, n);
      else if (r === 8) this.irq.writeIir(v, n);
      else if (r === 0xc) this.irq.writeIer(v, n);
      return;
    }
    switch (off) {
      case GEN8_MASTER_IRQ:
        this.irq.writeMaster(v);
        return;
      case GEN6_GDRST:
        this.gdrst(v);
        return;
      default:
        if (off >= FENCE_REG_GEN6_LO && off < FENCE_REG_GEN6_LO + NUM_FENCES * 8) {
          const i = (off - FENCE_REG_GEN6_LO) / 4;
          this.fences[i] = v;
          if (this.tracer.enabled) {
            const n = i >> 1;
            this.tracer.emit("gpu.fence.write", { bdf: this.bdf, fence: n, value: this.fence(n) });
          }
        }
        return;
    }
  }

  /** Fence register `n` as a 64-bit number. */
  fence(n: number): number {
    return this.fences[2 * n]! + this.fences[2 * n + 1]! * TWO32;
  }

  /** The engine whose register block holds `off`, or undefined. */
  private engineAt(off: number): Engine | undefined {
    for (const e of this.engineList) if (off >= e.base && off < e.base + ENGINE_BLOCK_SIZE) return e;
    return undefined;
  }

  private gdrst(v: number): void {
    const full = (v & GEN6_GRDOM_FULL) !== 0;
    const domains: string[] = [];
    for (const id of GT_ENGINES) {
      if (full || (v & ENGINE_RESET_DOMAIN[id]) !== 0) {
        this.engine(id).reset();
        domains.push(id);
      }
    }
    if (this.tracer.enabled && domains.length > 0) {
      this.tracer.emit("gpu.reset", { bdf: this.bdf, domains: domains.join(",") });
    }
  }

  // ---- GTT window ------------------------------------------------------------------------------------------------

  private gttRead(off: number, size: number): number {
    if (size === 8 && off % 8 === 0) return this.ggtt.read(off / 8);
    if (size === 4 && off % 4 === 0) return this.ggtt.readHalf(Math.floor(off / 8), off % 8 === 4);
    return 0;
  }

  private gttWrite(off: number, size: number, value: number): void {
    let index: number;
    if (size === 8 && off % 8 === 0) {
      index = off / 8;
      this.ggtt.write(index, value);
    } else if (size === 4 && off % 4 === 0) {
      index = Math.floor(off / 8);
      this.ggtt.writeHalf(index, off % 8 === 4, value);
    } else return;
    this.gttWrites++;
    if (this.tracer.enabled) this.tracer.emit("gpu.gtt.write", { bdf: this.bdf, index, pte: this.ggtt.read(index) });
  }

  /**
   * Sets `count` GGTT entries from `first` to `pte` in one call: the host driver's clear-range loop (i915 writes every
   * entry through the GTT window; one trace event here instead of a million).
   */
  fillGgtt(first: number, count: number, pte: number): void {
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count < 0 || first + count > GTT_ENTRIES) {
      throw new KernelError(
        Errno.EINVAL,
        `GGTT range [${first}, ${first}+${count}) is outside the ${GTT_ENTRIES} entries`,
      );
    }
    this.ggtt.fill(first, count, pte);
    this.gttWrites += count;
    if (this.tracer.enabled) this.tracer.emit("gpu.gtt.fill", { bdf: this.bdf, index: first, count, pte });
  }

  // ---- aperture --------------------------------------------------------------------------------------------------

  private apertureRead(offset: number, size: number): number {
    if (!this.apertureAccessOk(offset, size)) return 0;
    const mem = this.memory;
    mem.use("aperture", mem.ggtt);
    if (size === 4 && offset % 4 === 0) {
      return Math.max(0, mem.readU32(offset));
    }
    const b = this.scratch;
    if (!mem.read(offset, b, 0, size)) return 0;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
    return v;
  }

  private apertureWrite(offset: number, size: number, value: number): void {
    if (!this.apertureAccessOk(offset, size)) return;
    const mem = this.memory;
    mem.use("aperture", mem.ggtt);
    if (size === 4 && offset % 4 === 0) {
      mem.writeU32(offset, value >>> 0);
      return;
    }
    const b = this.scratch;
    let v = value;
    for (let i = 0; i < size; i++) {
      const q = Math.floor(v / 256);
      b[i] = v - q * 256;
      v = q;
    }
    mem.write(offset, b, 0, size);
  }

  private apertureAccessOk(offset: number, size: number): boolean {
    return (
      (size === 1 || size === 2 || size === 4 || size === 8) &&
      Number.isInteger(offset) &&
      offset >= 0 &&
      offset + size <= this.apertureSize
    );
  }

  /**
   * Bulk CPU access through the aperture (what a driver's write-combined mapping of BAR2 does, without a call per
   * dword): reads `dst.length` bytes at aperture offset `offset`. False on an IOMMU fault (GTT faults read zeros).
   */
  readAperture(offset: number, dst: Uint8Array): boolean {
    this.checkApertureRange(offset, dst.length);
    this.memory.use("aperture", this.memory.ggtt);
    return this.memory.read(offset, dst, 0, dst.length);
  }

  writeAperture(offset: number, src: Uint8Array): boolean {
    this.checkApertureRange(offset, src.length);
    this.memory.use("aperture", this.memory.ggtt);
    return this.memory.write(offset, src, 0, src.length);
  }

  private checkApertureRange(offset: number, len: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset + len > this.apertureSize) {
      throw new KernelError(
        Errno.EINVAL,
        `aperture access [0x${offset.toString(16)}, +${len}) is outside the ${this.apertureSize / MiB} MiB aperture`,
      );
    }
  }

  // ---- interrupts ------------------------------------------------------------------------------------------------

  private interruptLine(level: boolean): void {
    const c = this.config.msiCap;
    const msi = c !== 0 && (this.config.bytes[c + PCI_MSI_FLAGS]! & PCI_MSI_FLAGS_ENABLE) !== 0;
    if (!this.bus.has(this.bdf)) return;
    if (msi) {
      if (!level) return;
      this.interrupts++;
      const delivered = this.bus.raiseMsi(this.bdf, 0);
      if (this.tracer.enabled) {
        this.tracer.emit("gpu.irq", {
          bdf: this.bdf,
          iir: this.irq.iir,
          delivery: delivered ? "msi" : "msi (dropped)",
        });
      }
      return;
    }
    if (level) this.interrupts++;
    this.bus.setIntx(this.bdf, level);
    if (this.tracer.enabled && level)
      this.tracer.emit("gpu.irq", { bdf: this.bdf, iir: this.irq.iir, delivery: "intx" });
  }

  stats(): GpuStats {
    const e = (x: Engine) => ({
      runs: x.runs,
      commands: x.totalCommands,
      busyNs: x.totalBusyNs,
      busyUntil: x.busyUntil,
    });
    return {
      gttWrites: this.gttWrites,
      gttFaults: this.memory.gttFaults,
      iommuFaults: this.memory.iommuFaults,
      interrupts: this.interrupts,
      engines: { rcs: e(this.rcs), bcs: e(this.bcs), vcs: e(this.vcs), vecs: e(this.vecs) },
    };
  }
}
