/**
 * The vGPU's virtual MMIO registers (BAR0 below 2 MiB), as GVT-g's handlers.c: a table of tracked registers by
 * offset or range, each with a handler kind, dispatched with a switch. Values live in `vreg` (the guest's view,
 * indexed by dword); the physical GPU's registers are never touched from here: the handlers call back into the vGPU
 * (`MmioSink`) for what has effects (a ring TAIL write submits work, GDRST resets engines, a fence write programs
 * the vGPU's physical fence).
 *
 * Tracked registers:
 * - per engine (rcs, bcs): RING_TAIL, RING_HEAD, RING_START, RING_CTL (guest-written, masked as hardware keeps them),
 *   RING_ACTHD (read-only: where the engine is), RING_HWS_PGA (stored);
 * - interrupts: GEN8_MASTER_IRQ and GT bank 0 ISR/IMR/IIR/IER (the guest's own, in `VirtualIrq`);
 * - fences 0..31 (8 bytes each at 0x100000): guest fence i < fence_num is the vGPU's physical fence `fences[i]`;
 *   fences past fence_num read 0 and drop writes;
 * - GEN6_GDRST: a write requests a reset of the named engines; it reads 0 (the reset completes at once);
 * - the PVINFO page (pvinfo.ts): read-only except display_ready and g2v_notify.
 * Everything else reads 0 and drops writes; both are counted, and dropped writes traced.
 *
 * Access: 1, 2 or 4 bytes within one dword (the region layer splits larger accesses as kvmgt does). A narrow write is
 * merged into the dword with `mask` telling the handler which bytes the guest wrote (IIR clears only those).
 */
import { defineTraceEvents, Errno, hex, KernelError, type Tracer } from "../core/index.ts";
import {
  ENGINE_BASE,
  type EngineId,
  FENCE_REG_GEN6_LO,
  FENCE_STRIDE,
  GEN6_GDRST,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_GT_ISR0,
  GEN8_MASTER_IRQ,
  HEAD_ADDR,
  MMIO_SIZE,
  NUM_FENCES,
  RING_ACTHD,
  RING_CTL,
  RING_HEAD,
  RING_HWS_PGA,
  RING_START,
  RING_TAIL,
  TAIL_ADDR,
  VGT_PVINFO_PAGE,
  VGT_PVINFO_SIZE,
} from "../gpu/index.ts";
import type { VirtualIrq } from "./irq.ts";
import { pvinfoWritableField } from "./pvinfo.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.mmio.dropped": { vgpu: number; offset: number; value: number; reason: string };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.mmio.dropped": "vgpu{vgpu}: MMIO write of {value} to {offset} dropped: {reason}",
});

/** What a tracked register does. */
export type MmioHandlerKind = "ring" | "ring-ro" | "irq" | "fence" | "gdrst" | "pvinfo";

/** One row of the tracked-register table. */
export interface MmioRegInfo {
  readonly name: string;
  readonly offset: number;
  /** Bytes covered (4 for a register; a multiple of 4 for a range). */
  readonly size: number;
  readonly kind: MmioHandlerKind;
  /** For ring registers: the engine and the register's offset from the engine base. */
  readonly engine?: EngineId;
  readonly ringReg?: number;
  /** Bits the guest can set (ring registers). */
  readonly writeMask?: number;
}

const RING_REGS: readonly { name: string; reg: number; mask: number; ro?: boolean }[] = [
  { name: "RING_TAIL", reg: RING_TAIL, mask: TAIL_ADDR },
  { name: "RING_HEAD", reg: RING_HEAD, mask: HEAD_ADDR },
  { name: "RING_START", reg: RING_START, mask: 0xffff_f000 },
  { name: "RING_CTL", reg: RING_CTL, mask: 0xffff_ffff },
  { name: "RING_ACTHD", reg: RING_ACTHD, mask: 0, ro: true },
  { name: "RING_HWS_PGA", reg: RING_HWS_PGA, mask: 0xffff_f000 },
];

function buildTable(): MmioRegInfo[] {
  const t: MmioRegInfo[] = [];
  for (const engine of Object.keys(ENGINE_BASE) as EngineId[]) {
    for (const r of RING_REGS) {
      t.push({
        name: `${engine.toUpperCase()}_${r.name}`,
        offset: ENGINE_BASE[engine] + r.reg,
        size: 4,
        kind: r.ro ? "ring-ro" : "ring",
        engine,
        ringReg: r.reg,
        writeMask: r.mask,
      });
    }
  }
  t.push(
    { name: "GEN8_MASTER_IRQ", offset: GEN8_MASTER_IRQ, size: 4, kind: "irq" },
    { name: "GEN8_GT_ISR0", offset: GEN8_GT_ISR0, size: 4, kind: "irq" },
    { name: "GEN8_GT_IMR0", offset: GEN8_GT_IMR0, size: 4, kind: "irq" },
    { name: "GEN8_GT_IIR0", offset: GEN8_GT_IIR0, size: 4, kind: "irq" },
    { name: "GEN8_GT_IER0", offset: GEN8_GT_IER0, size: 4, kind: "irq" },
    { name: "GEN6_GDRST", offset: GEN6_GDRST, size: 4, kind: "gdrst" },
    { name: "FENCE_REG_GEN6", offset: FENCE_REG_GEN6_LO, size: NUM_FENCES * FENCE_STRIDE, kind: "fence" },
    { name: "PVINFO", offset: VGT_PVINFO_PAGE, size: VGT_PVINFO_SIZE, kind: "pvinfo" },
  );
  return t;
}

/** The tracked registers, by offset (ranges listed once, at their first byte). */
export const VGPU_MMIO_TABLE: readonly MmioRegInfo[] = buildTable();

/** Dword offset -> table row, for single registers; ranges are found by comparison. */
const SINGLE = new Map<number, MmioRegInfo>();
const RANGES: MmioRegInfo[] = [];
for (const r of VGPU_MMIO_TABLE) {
  if (r.size === 4) SINGLE.set(r.offset, r);
  else RANGES.push(r);
}

/** The tracked register covering dword `offset`, or undefined. */
export function findMmioReg(offset: number): MmioRegInfo | undefined {
  const r = SINGLE.get(offset);
  if (r !== undefined) return r;
  for (const x of RANGES) if (offset >= x.offset && offset < x.offset + x.size) return x;
  return undefined;
}

/** The effects of register writes, implemented by the vGPU. */
export interface MmioSink {
  /** A ring register was written (vreg already holds the masked value). */
  ringWritten(engine: EngineId, reg: number): void;
  /** GDRST written with `domains` (GEN6_GRDOM_* bits). */
  gdrst(domains: number): void;
  /** Guest fence `fence` (< fence_num) now holds lo/hi; returns a reason if the write was refused, else undefined. */
  fenceWritten(fence: number, lo: number, hi: number): string | undefined;
}

export interface VgpuMmioOptions {
  readonly vgpuId: number;
  readonly fenceNum: number;
  readonly irq: VirtualIrq;
  readonly sink: MmioSink;
  readonly tracer: Tracer;
}

/** Counters of the register file. */
export interface MmioStats {
  /** Writes dropped: unknown registers, read-only registers, fences past fence_num, refused fence values. */
  readonly droppedWrites: number;
  /** Reads of unknown registers (answered 0). */
  readonly unknownReads: number;
}

export class VgpuMmio {
  /** The guest's view of every register, by dword (vreg[offset / 4]). */
  readonly vreg = new Uint32Array(MMIO_SIZE / 4);
  private readonly vgpuId: number;
  private readonly fenceNum: number;
  private readonly irq: VirtualIrq;
  private readonly sink: MmioSink;
  private readonly tracer: Tracer;
  private dropped = 0;
  private unknownReads = 0;

  constructor(opts: VgpuMmioOptions) {
    this.vgpuId = opts.vgpuId;
    this.fenceNum = opts.fenceNum;
    this.irq = opts.irq;
    this.sink = opts.sink;
    this.tracer = opts.tracer;
  }

  /** Reads `size` (1, 2, 4) bytes at `offset`, within one dword. */
  read(offset: number, size: number): number {
    this.check(offset, size);
    const dw = offset - (offset % 4);
    const v = this.readDword(dw);
    const shift = (offset % 4) * 8;
    return size === 4 ? v : (v >>> shift) & (size === 2 ? 0xffff : 0xff);
  }

  /** Writes `size` (1, 2, 4) bytes of `value` at `offset`, within one dword. */
  write(offset: number, size: number, value: number): void {
    this.check(offset, size);
    const dw = offset - (offset % 4);
    const shift = (offset % 4) * 8;
    const mask = size === 4 ? 0xffff_ffff : ((size === 2 ? 0xffff : 0xff) << shift) >>> 0;
    this.writeDword(dw, ((value << shift) & mask) >>> 0, mask);
  }

  /** The value of dword register `offset` as the guest reads it. */
  readDword(offset: number): number {
    const r = findMmioReg(offset);
    if (r === undefined) {
      this.unknownReads++;
      return 0;
    }
    switch (r.kind) {
      case "irq":
        return this.irq.read(offset);
      case "gdrst":
        return 0;
      case "fence":
        return this.fenceOf(offset) < this.fenceNum ? this.vreg[offset / 4]! : 0;
      default:
        return this.vreg[offset / 4]!;
    }
  }

  /** A guest write to dword register `offset`: `value` in the bytes of `mask` (other bytes of `value` are 0). */
  writeDword(offset: number, value: number, mask: number): void {
    const r = findMmioReg(offset);
    if (r === undefined) {
      this.drop(offset, value, "not a register the vGPU emulates");
      return;
    }
    const i = offset / 4;
    const merged = ((this.vreg[i]! & ~mask) | (value & mask)) >>> 0;
    switch (r.kind) {
      case "ring":
        this.vreg[i] = (merged & r.writeMask!) >>> 0;
        this.sink.ringWritten(r.engine!, r.ringReg!);
        return;
      case "ring-ro":
        this.drop(offset, value, `${r.name} is read-only`);
        return;
      case "irq":
        if (!this.irq.write(offset, value, mask)) this.drop(offset, value, `${r.name} is read-only`);
        return;
      case "gdrst":
        this.sink.gdrst(merged);
        return;
      case "fence": {
        const fence = this.fenceOf(offset);
        if (fence >= this.fenceNum) {
          this.drop(offset, value, `fence ${fence} is beyond the vGPU's ${this.fenceNum} fences`);
          return;
        }
        this.vreg[i] = merged;
        const lo = FENCE_REG_GEN6_LO / 4 + fence * 2;
        const why = this.sink.fenceWritten(fence, this.vreg[lo]!, this.vreg[lo + 1]!);
        if (why !== undefined) this.drop(offset, value, why);
        return;
      }
      case "pvinfo": {
        const field = pvinfoWritableField(offset - VGT_PVINFO_PAGE);
        if (field === undefined) {
          this.drop(offset, value, `PVINFO offset ${hex(offset - VGT_PVINFO_PAGE)} is not guest-writable`);
          return;
        }
        this.vreg[i] = merged;
        if (this.tracer.enabled) {
          this.tracer.emit("vgpu.pvinfo.write", { vgpu: this.vgpuId, field, value: merged });
        }
        return;
      }
    }
  }

  /** A read of BAR0 space that holds no registers (2 MiB to 8 MiB): counted; it reads 0. */
  unknownRead(): void {
    this.unknownReads++;
  }

  /** A write to BAR0 space that holds no registers: dropped and counted. */
  dropUnknown(offset: number, value: number): void {
    this.drop(offset, value, "nothing is decoded between the registers and the GTT window");
  }

  /** Ring registers of `engine` back to 0 (engine reset). */
  resetEngine(engine: EngineId): void {
    const base = ENGINE_BASE[engine];
    for (const r of RING_REGS) this.vreg[(base + r.reg) / 4] = 0;
  }

  /** Every register back to 0 (the caller repopulates PVINFO and resets the interrupts). */
  resetAll(): void {
    this.vreg.fill(0);
  }

  stats(): MmioStats {
    return { droppedWrites: this.dropped, unknownReads: this.unknownReads };
  }

  private fenceOf(offset: number): number {
    return Math.floor((offset - FENCE_REG_GEN6_LO) / FENCE_STRIDE);
  }

  private drop(offset: number, value: number, reason: string): void {
    this.dropped++;
    if (this.tracer.enabled) this.tracer.emit("vgpu.mmio.dropped", { vgpu: this.vgpuId, offset, value, reason });
  }

  private check(offset: number, size: number): void {
    if (
      (size !== 1 && size !== 2 && size !== 4) ||
      !Number.isInteger(offset) ||
      offset < 0 ||
      offset + size > MMIO_SIZE ||
      Math.floor(offset / 4) !== Math.floor((offset + size - 1) / 4)
    ) {
      throw new KernelError(
        Errno.EINVAL,
        `vgpu${this.vgpuId}: MMIO access of ${size} byte(s) at ${hex(offset)} must be 1, 2 or 4 bytes within one ` +
          `register below ${hex(MMIO_SIZE)}`,
      );
    }
  }
}
