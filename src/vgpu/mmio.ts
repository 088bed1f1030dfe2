/**
 * The vGPU's virtual MMIO registers (BAR0 below 2 MiB), as GVT-g's handlers.c and mmio.c: each behaviour of the
 * register table (mmio-table.ts) implemented once, dispatched by the row's kind. Values live in `vreg` (the guest's
 * view, indexed by dword); the physical GPU's registers are never touched from here: what has effects beyond the
 * register file (a ring TAIL write, GDRST, a fence, PVINFO notifications, GFX_MODE, HWS_PGA, ELSP) is handed to the
 * vGPU (`MmioSink`).
 *
 * Untracked offsets are plain storage, as GVT-g's untracked registers: they read what was last written (0 after
 * reset). Reads and writes of them are counted; writes are traced. Dropped writes (read-only registers, fences past
 * fence_num, refused fence values or status page addresses, PVINFO fields the guest may not write) are counted and
 * traced with the reason. In failsafe (failsafe.ts) every register is plain storage and nothing has effects.
 *
 * The PCU mailbox answers as GVT-g's mailbox_write: never busy (READY and the error code clear), canned DATA for the
 * commands GVT-g answers (memory latency: Skylake's two words; CDCLK control: ready for change; RC6 VIDs: bit 0 set),
 * DATA unchanged for the others. One difference: SAGV control (0x21) answers error 1 (illegal command), which i915
 * reads as "No SAGV found on system, ignoring"; GVT-g answers success for a SAGV the vGPU does not have.
 *
 * Access: 1, 2 or 4 bytes within one dword (the region layer splits larger accesses as kvmgt does). A narrow write is
 * merged into the dword with `mask` telling the handler which bytes the guest wrote (IIR clears only those).
 */
import { defineTraceEvents, Errno, hex, KernelError, type Tracer } from "../core/index.ts";
import {
  FENCE_REG_GEN6_LO,
  FENCE_STRIDE,
  MMIO_SIZE,
  RING_ACTHD,
  RING_CTL,
  RING_HEAD,
  RING_HWS_PGA,
  RING_START,
  RING_TAIL,
  VGT_PVINFO_PAGE,
} from "../gpu/index.ts";
import { type VEngineId, vengine } from "./engines.ts";
import {
  FPGA_DBG_RM_NOCLAIM,
  GEN6_PCODE_DATA,
  GEN6_PCODE_ERROR_MASK,
  GEN6_PCODE_ILLEGAL_CMD,
  GEN6_PCODE_READ_RC6VIDS,
  GEN6_PCODE_READY,
  GEN9_GRDOM_GUC,
  GEN9_PCODE_READ_MEM_LATENCY,
  GEN9_PCODE_SAGV_CONTROL,
  GS_MIA_IN_RESET,
  GUC_STATUS,
  MODE_IDLE,
  maskedWrite,
  RESET_CTL_READY_TO_RESET,
  RESET_CTL_REQUEST_RESET,
  SKL_CDCLK_READY_FOR_CHANGE,
  SKL_MEM_LATENCY_HIGH,
  SKL_MEM_LATENCY_LOW,
  SKL_PCODE_CDCLK_CONTROL,
  SKL_PWR_WELL_REQUESTS,
} from "./gvt-regs.ts";
import type { VirtualIrq } from "./irq.ts";
import { applyResetValues, findMmioReg } from "./mmio-table.ts";
import { type PvinfoWriteAction, pvinfoWriteField } from "./pvinfo.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.mmio.dropped": { vgpu: number; offset: number; value: number; reason: string };
    "vgpu.mmio.untracked": { vgpu: number; reg: string; value: number };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.mmio.dropped": "vgpu{vgpu}: MMIO write of {value} to {offset} dropped: {reason}",
  "vgpu.mmio.untracked": "vgpu{vgpu}: MMIO write of {value} to untracked register {reg} stored",
});

/** The effects of register accesses, implemented by the vGPU. */
export interface MmioSink {
  /** Failsafe: every register is plain storage. */
  inFailsafe(): boolean;
  /** A ring register was written (vreg already holds the masked value). */
  ringWritten(engine: VEngineId, reg: number): void;
  /** GDRST written with `domains` (GEN6_GRDOM_* bits). */
  gdrst(domains: number): void;
  /** Guest fence `fence` (< fence_num) now holds lo/hi; returns a reason if the write was refused, else undefined. */
  fenceWritten(fence: number, lo: number, hi: number): string | undefined;
  /** The guest read the PVINFO page (GVT-g's pv_notified). */
  pvinfoRead(): void;
  /** The guest wrote PVINFO field `field` (vreg already holds it for "store", "display-ready" and "g2v"). */
  pvinfoWritten(field: string, action: PvinfoWriteAction, value: number): void;
  /** GFX_MODE of `engine` written with `value` (the raw masked write; vreg already updated). */
  gfxModeWritten(engine: VEngineId, value: number): void;
  /** HWS_PGA of `engine` is to hold `value`: a reason when refused (not stored), else undefined. */
  hwsPgaWritten(engine: VEngineId, value: number): string | undefined;
  /** A dword written to `engine`'s ELSP port. */
  elspWritten(engine: VEngineId, value: number): void;
  /** Whether `engine` has no work (MI_MODE's MODE_IDLE). */
  engineIdle(engine: VEngineId): boolean;
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
  /** Writes dropped: read-only registers, fences past fence_num, refused values, non-writable PVINFO fields. */
  readonly droppedWrites: number;
  /** Accesses of registers the table does not track (plain storage). */
  readonly untrackedReads: number;
  readonly untrackedWrites: number;
}

/** The end of the registers a full GPU reset restores (GVT-g's GVT_GEN8_MMIO_RESET_OFFSET: interrupts and up stay). */
export const GEN8_MMIO_RESET_END = 0x44200;

export class VgpuMmio {
  /** The guest's view of every register, by dword (vreg[offset / 4]). */
  readonly vreg = new Uint32Array(MMIO_SIZE / 4);
  private readonly vgpuId: number;
  private readonly fenceNum: number;
  private readonly irq: VirtualIrq;
  private readonly sink: MmioSink;
  private readonly tracer: Tracer;
  private dropped = 0;
  private untrackedReads = 0;
  private untrackedWrites = 0;

  constructor(opts: VgpuMmioOptions) {
    this.vgpuId = opts.vgpuId;
    this.fenceNum = opts.fenceNum;
    this.irq = opts.irq;
    this.sink = opts.sink;
    this.tracer = opts.tracer;
    applyResetValues(this.vreg);
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
    const i = offset / 4;
    const r = findMmioReg(offset);
    if (r === undefined) {
      this.untrackedReads++;
      return this.vreg[i]!;
    }
    if (this.sink.inFailsafe()) return this.vreg[i]!;
    switch (r.kind) {
      case "gt-irq":
        return this.irq.read(offset);
      case "fence":
        return this.fenceOf(offset) < this.fenceNum ? this.vreg[i]! : 0;
      case "mi-mode":
        return ((this.vreg[i]! & ~MODE_IDLE) | (this.sink.engineIdle(r.engine!) ? MODE_IDLE : 0)) >>> 0;
      case "pvinfo":
        this.sink.pvinfoRead();
        return this.vreg[i]!;
      case "guc-status": {
        // guc_status_read: MIA_IN_RESET is seen once, then cleared.
        const v = this.vreg[i]!;
        this.vreg[i] = (v & ~GS_MIA_IN_RESET) >>> 0;
        return v;
      }
      default:
        return this.vreg[i]!;
    }
  }

  /** A guest write to dword register `offset`: `value` in the bytes of `mask` (other bytes of `value` are 0). */
  writeDword(offset: number, value: number, mask: number): void {
    const i = offset / 4;
    const old = this.vreg[i]!;
    const merged = ((old & ~mask) | (value & mask)) >>> 0;
    const r = findMmioReg(offset);
    if (r === undefined) {
      this.untrackedWrites++;
      this.vreg[i] = merged;
      if (this.tracer.enabled) {
        this.tracer.emit("vgpu.mmio.untracked", { vgpu: this.vgpuId, reg: hex(offset), value: merged });
      }
      return;
    }
    if (this.sink.inFailsafe()) {
      this.vreg[i] = merged;
      return;
    }
    const written = (value & mask) >>> 0;
    switch (r.kind) {
      case "ram":
        this.vreg[i] = merged;
        return;
      case "masked":
        this.vreg[i] = maskedWrite(old, written);
        return;
      case "ro":
      case "ring-ro":
      case "execlist-ro":
        this.drop(offset, value, `${r.name} is read-only`);
        return;
      case "w1c":
        this.vreg[i] = (old & ~written) >>> 0;
        return;
      case "fpga-dbg":
        this.vreg[i] = (merged & ~FPGA_DBG_RM_NOCLAIM) >>> 0;
        return;
      case "reset-ctl": {
        // Only REQUEST (and its mask bit) is the guest's; READY follows it (ring_reset_ctl_write).
        const v = maskedWrite(old, written & (RESET_CTL_REQUEST_RESET | (RESET_CTL_REQUEST_RESET << 16)));
        this.vreg[i] =
          (v & RESET_CTL_REQUEST_RESET) !== 0 ? v | RESET_CTL_READY_TO_RESET : v & ~RESET_CTL_READY_TO_RESET;
        return;
      }
      case "gdrst":
        this.vreg[i] = 0;
        if ((merged & GEN9_GRDOM_GUC) !== 0)
          this.vreg[GUC_STATUS / 4] = (this.vreg[GUC_STATUS / 4]! | GS_MIA_IN_RESET) >>> 0;
        this.sink.gdrst(merged);
        return;
      case "guc-status":
        this.vreg[i] = merged;
        return;
      case "tlb-control":
        this.vreg[i] = 0;
        return;
      case "power-well": {
        const requests = merged & SKL_PWR_WELL_REQUESTS;
        this.vreg[i] = (requests | (requests >>> 1)) >>> 0;
        return;
      }
      case "pcode-mailbox":
        this.mailbox(i, merged);
        return;
      case "mi-mode":
        this.vreg[i] = maskedWrite(old, written) & ~MODE_IDLE;
        return;
      case "gfx-mode":
        // GVT-g strips a masked enable of bit 0 before storing (and sends such a guest to failsafe).
        this.vreg[i] = maskedWrite(old, written & ~0x0001_0001);
        this.sink.gfxModeWritten(r.engine!, written);
        return;
      case "hws-pga": {
        const why = this.sink.hwsPgaWritten(r.engine!, merged);
        if (why === undefined) this.vreg[i] = merged;
        else this.drop(offset, value, why);
        return;
      }
      case "elsp":
        this.sink.elspWritten(r.engine!, merged);
        return;
      case "ring":
        this.vreg[i] = (merged & r.writeMask!) >>> 0;
        this.sink.ringWritten(r.engine!, r.engineReg!);
        return;
      case "gt-irq":
        if (!this.irq.write(offset, value, mask)) this.drop(offset, value, `${nameOfIrq(offset)} is read-only`);
        return;
      case "fence":
        this.fenceWrite(offset, merged, value);
        return;
      case "pvinfo":
        this.pvinfoWrite(offset, merged, value);
        return;
    }
  }

  /** A read of BAR0 space that holds no registers (2 MiB to 8 MiB): counted; it reads 0. */
  unknownRead(): void {
    this.untrackedReads++;
  }

  /** A write to BAR0 space that holds no registers: dropped and counted. */
  dropUnknown(offset: number, value: number): void {
    this.drop(offset, value, "nothing is decoded between the registers and the GTT window");
  }

  /** Ring buffer registers of `engine` back to 0 (engine reset). */
  resetEngine(engine: VEngineId): void {
    const base = vengine(engine).base;
    for (const reg of RING_BUFFER_REGS) this.vreg[(base + reg) / 4] = 0;
  }

  /** A full GPU reset: every register below the interrupt registers back to its reset value. */
  resetGpuRange(): void {
    this.vreg.fill(0, 0, GEN8_MMIO_RESET_END / 4);
    applyResetValues(this.vreg, 0, GEN8_MMIO_RESET_END);
  }

  /** Every register back to its reset value (the caller repopulates PVINFO and resets the interrupts). */
  resetAll(): void {
    this.vreg.fill(0);
    applyResetValues(this.vreg);
  }

  stats(): MmioStats {
    return { droppedWrites: this.dropped, untrackedReads: this.untrackedReads, untrackedWrites: this.untrackedWrites };
  }

  // ---- behaviours with more than one line ------------------------------------------------------------------------

  /** mailbox_write: the command completes at once; READY and the error code read clear (SAGV: illegal command). */
  private mailbox(i: number, value: number): void {
    const cmd = value & 0xff;
    const data = GEN6_PCODE_DATA / 4;
    let error = 0;
    switch (cmd) {
      case GEN9_PCODE_READ_MEM_LATENCY:
        this.vreg[data] = this.vreg[data] === 0 ? SKL_MEM_LATENCY_LOW : SKL_MEM_LATENCY_HIGH;
        break;
      case SKL_PCODE_CDCLK_CONTROL:
        this.vreg[data] = SKL_CDCLK_READY_FOR_CHANGE;
        break;
      case GEN6_PCODE_READ_RC6VIDS:
        this.vreg[data] = (this.vreg[data]! | 1) >>> 0;
        break;
      case GEN9_PCODE_SAGV_CONTROL:
        error = GEN6_PCODE_ILLEGAL_CMD;
        break;
    }
    this.vreg[i] = ((value & ~(GEN6_PCODE_READY | GEN6_PCODE_ERROR_MASK)) | error) >>> 0;
  }

  private fenceWrite(offset: number, merged: number, value: number): void {
    const fence = this.fenceOf(offset);
    if (fence >= this.fenceNum) {
      this.drop(offset, value, `fence ${fence} is beyond the vGPU's ${this.fenceNum} fences`);
      return;
    }
    this.vreg[offset / 4] = merged;
    const lo = FENCE_REG_GEN6_LO / 4 + fence * 2;
    const why = this.sink.fenceWritten(fence, this.vreg[lo]!, this.vreg[lo + 1]!);
    if (why !== undefined) this.drop(offset, value, why);
  }

  private pvinfoWrite(offset: number, merged: number, value: number): void {
    const field = pvinfoWriteField(offset - VGT_PVINFO_PAGE);
    if (field.action === "drop" || field.action === "failsafe") {
      this.drop(offset, value, `PVINFO ${field.name} is not guest-writable`);
    } else {
      this.vreg[offset / 4] = merged;
    }
    if (field.action !== "drop") this.sink.pvinfoWritten(field.name, field.action, merged);
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

/** The ring buffer registers an engine reset clears (TAIL, HEAD, START, CTL, ACTHD, HWS_PGA). */
const RING_BUFFER_REGS: readonly number[] = [RING_TAIL, RING_HEAD, RING_START, RING_CTL, RING_ACTHD, RING_HWS_PGA];

function nameOfIrq(offset: number): string {
  return findMmioReg(offset)?.name ?? hex(offset);
}
