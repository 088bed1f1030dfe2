/**
 * A fake machine for unit-testing the guest driver without the host stack: guest RAM, a page allocator, a guest clock
 * with timers, and a small GPU implementing just enough of docs/gpu-programming.md: config space (identity, BARs,
 * MSI), the ring registers, the gen8 GT interrupt registers, the GTT window, an optional PVINFO page, and an engine
 * that executes MI_NOOP, MI_USER_INTERRUPT, MI_STORE_DATA_IMM, MI_LOAD_REGISTER_IMM, MI_BATCH_BUFFER_START/END,
 * XY_COLOR_BLT and XY_SRC_COPY_BLT, with GTT entries holding guest-physical addresses directly (no IOMMU).
 *
 * It can also play a crude mediator, to exercise the guest's error paths (`audit`):
 * - "none": a whole GPU; unknown commands halt the engine with RING_EIR set and the error interrupt;
 * - "at-execution": each command is checked as it runs (addresses inside the PVINFO ranges, size <= 36 MiB, LRI only
 *   to an allowed register); a violation drops the rest of the submission (HEAD = TAIL) and raises the error interrupt;
 * - "at-submission": the same checks run over the ring and batch contents when TAIL is written, but execution reads
 *   guest memory again later (no shadow copy): the time-of-check/time-of-use hole real mediators close by shadowing.
 * GTT writes outside the PVINFO ranges are ignored (read back 0) whenever PVINFO is present.
 *
 * Not a model of anything: no cost model, no IOMMU, no fences, no scheduler. Execution happens inside the TAIL write,
 * or `execDelayNs` later on the fake clock.
 */
import { Errno, type Gpa, gpa, hex, KernelError, PAGE_SIZE } from "../../core/index.ts";
import {
  BAR0_SIZE,
  BAR2_INDEX,
  ENGINE_BASE,
  ENGINE_IRQ_SHIFT,
  type EngineId,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_GT_ISR0,
  GEN8_GT_RCS_IRQ,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GPU_CLASS_CODE,
  GPU_DEVICE_ID,
  GPU_REVISION,
  GPU_VENDOR_ID,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_RENDER_USER_INTERRUPT,
  GTT_OFFSET,
  GTT_SIZE,
  gen8PteDecode,
  HEAD_ADDR,
  I915_ERROR_INSTRUCTION,
  PVINFO,
  RING_ACTHD,
  RING_CTL,
  RING_EIR,
  RING_HEAD,
  RING_HWS_PGA,
  RING_START,
  RING_TAIL,
  RING_VALID,
  ringCtlLength,
  TAIL_ADDR,
  VGT_MAGIC,
  VGT_PVINFO_PAGE,
} from "../../gpu/index.ts";
import { PciConfigSpace } from "../../host/index.ts";
import type { GmExtent } from "../gm.ts";
import type { GuestPageAllocator, GuestPciFunction, GuestPlatform, GuestRam, GuestTime } from "../platform.ts";

const TWO32 = 4294967296;
export const FAKE_BAR0 = 0x40_0000_0000;
export const FAKE_BAR2 = 0x40_1000_0000;
export const FAKE_MAX_OP = 36 * 1024 * 1024;
/** LRI targets the fake mediator allows. */
export const FAKE_LRI_ALLOWED = new Set([0x20c0, 0x22200]);

// ---- memory and pages --------------------------------------------------------------------------------------------

export class FakeMemory implements GuestRam {
  private readonly pages = new Map<number, Uint8Array>();
  constructor(readonly size: number) {}

  private page(addr: number, len: number): Uint8Array {
    if (!(addr >= 0 && addr + len <= this.size)) {
      throw new KernelError(Errno.EFAULT, `guest access ${hex(addr)} +${len} is outside RAM (${hex(this.size)})`);
    }
    const n = Math.floor(addr / PAGE_SIZE);
    let p = this.pages.get(n);
    if (!p) {
      p = new Uint8Array(PAGE_SIZE);
      this.pages.set(n, p);
    }
    return p;
  }

  contains(addr: number, len: number): boolean {
    return addr >= 0 && addr + len <= this.size;
  }

  read(at: Gpa, into: Uint8Array): void {
    for (let done = 0; done < into.length; ) {
      const a = at + done;
      const off = a % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, into.length - done);
      into.set(this.page(a, n).subarray(off, off + n), done);
      done += n;
    }
  }

  write(at: Gpa, data: Uint8Array): void {
    for (let done = 0; done < data.length; ) {
      const a = at + done;
      const off = a % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, data.length - done);
      this.page(a, n).set(data.subarray(done, done + n), off);
      done += n;
    }
  }

  readU32(at: Gpa): number {
    const p = this.page(at, 4);
    const o = at % PAGE_SIZE;
    return (p[o]! | (p[o + 1]! << 8) | (p[o + 2]! << 16) | (p[o + 3]! << 24)) >>> 0;
  }

  writeU32(at: Gpa, v: number): void {
    const p = this.page(at, 4);
    const o = at % PAGE_SIZE;
    p[o] = v & 0xff;
    p[o + 1] = (v >>> 8) & 0xff;
    p[o + 2] = (v >>> 16) & 0xff;
    p[o + 3] = (v >>> 24) & 0xff;
  }
}

/** Bump allocator from 1 MiB that reuses exactly-sized freed runs. */
export class FakePages implements GuestPageAllocator {
  private next = 0x10_0000;
  private readonly freed: { gpa: number; count: number }[] = [];
  live = 0;
  constructor(private readonly limit: number) {}

  allocPages(count: number): Gpa {
    const i = this.freed.findIndex((f) => f.count === count);
    this.live += count;
    if (i >= 0) return gpa(this.freed.splice(i, 1)[0]!.gpa);
    if (this.next + count * PAGE_SIZE > this.limit) {
      this.live -= count;
      throw new KernelError(Errno.ENOMEM, `guest out of memory allocating ${count} pages`);
    }
    const at = this.next;
    this.next += count * PAGE_SIZE;
    return gpa(at);
  }

  freePages(at: Gpa, count: number): void {
    this.live -= count;
    this.freed.push({ gpa: at, count });
  }
}

// ---- time --------------------------------------------------------------------------------------------------------

export class FakeTime implements GuestTime {
  private t = 0;
  private readonly timers: { at: number; fn: () => void }[] = [];
  /** Granularity of waiting when no timer is due (interrupt-driven waits need none). */
  step = 1000;

  now(): number {
    return this.t;
  }

  after(delay: number, fn: () => void): void {
    this.timers.push({ at: this.t + delay, fn });
    this.timers.sort((a, b) => a.at - b.at);
  }

  advanceTo(target: number): void {
    for (;;) {
      const next = this.timers[0];
      if (!next || next.at > target) break;
      this.timers.shift();
      this.t = Math.max(this.t, next.at);
      next.fn();
    }
    this.t = Math.max(this.t, target);
  }

  waitUntil(done: () => boolean, timeoutNs: number): boolean {
    const deadline = this.t + timeoutNs;
    while (!done()) {
      if (this.t >= deadline) return false;
      const next = this.timers[0];
      this.advanceTo(next && next.at <= deadline ? next.at : Math.min(deadline, this.t + this.step));
    }
    return true;
  }
}

// ---- the GPU -----------------------------------------------------------------------------------------------------

export interface FakePvinfo {
  readonly mappable: GmExtent;
  readonly nonmappable: GmExtent;
  readonly vgtId?: number;
  readonly fences?: number;
  readonly versionMajor?: number;
}

export type FakeAudit = "none" | "at-execution" | "at-submission";

export interface FakeGpuOptions {
  readonly ramBytes?: number;
  /** PVINFO contents; absent = a whole physical GPU. */
  readonly pvinfo?: FakePvinfo;
  readonly apertureSize?: number;
  readonly execDelayNs?: number;
  readonly audit?: FakeAudit;
  /** Config identity overrides (probe tests). */
  readonly deviceId?: number;
  /** Ranges the mediator audits against, if not PVINFO's (a mediator that disagrees with what it told the guest). */
  readonly auditRanges?: readonly GmExtent[];
  /** A broken blitter: every blit writes its last pixel's lowest byte wrong (verification tests). */
  readonly corruptBlits?: boolean;
}

class FakeEngine {
  start = 0;
  ctl = 0;
  head = 0;
  tail = 0;
  eir = 0;
  acthd = 0;
  hws = 0;
  scheduled = false;
  constructor(
    readonly id: EngineId,
    readonly shift: number,
  ) {}
}

/** Raised inside execution when the fake mediator rejects a command. */
class Reject extends Error {}

export class FakeGpu implements GuestPciFunction {
  readonly config: PciConfigSpace;
  readonly gtt = new Float64Array(GTT_SIZE / 8);
  readonly engines: Record<EngineId, FakeEngine> = {
    rcs: new FakeEngine("rcs", ENGINE_IRQ_SHIFT.rcs),
    bcs: new FakeEngine("bcs", ENGINE_IRQ_SHIFT.bcs),
  };
  /** Every BAR0 write, in order: offset within BAR0, size, value. */
  readonly writes: { offset: number; size: number; value: number }[] = [];
  /** Registers written by MI_LOAD_REGISTER_IMM. */
  readonly lriWrites: { reg: number; value: number }[] = [];
  readonly rejections: string[] = [];
  gttFaults = 0;
  gttIgnored = 0;
  /** Commands executed, by name. */
  readonly executed = new Map<string, number>();
  master = 0;
  isr = 0;
  imr = 0xffffffff;
  iir = 0;
  ier = 0;
  interruptsSent = 0;
  private line = false;
  private handler: ((vector: number) => void) | undefined;
  private readonly pvregs = new Uint32Array(0x1000 / 4);
  private readonly apertureSize: number;

  constructor(
    private readonly mem: FakeMemory,
    private readonly time: FakeTime,
    private readonly opts: FakeGpuOptions,
  ) {
    this.apertureSize = opts.apertureSize ?? 256 * 1024 * 1024;
    this.config = new PciConfigSpace({
      vendorId: GPU_VENDOR_ID,
      deviceId: opts.deviceId ?? GPU_DEVICE_ID,
      classCode: GPU_CLASS_CODE,
      revision: GPU_REVISION,
      interruptPin: 1,
      bars: [
        { index: 0, size: BAR0_SIZE, kind: "mem64" },
        { index: BAR2_INDEX, size: this.apertureSize, kind: "mem64", prefetchable: true },
      ],
      msiVectors: 1,
    });
    this.config.setBarAddress(0, FAKE_BAR0);
    this.config.setBarAddress(BAR2_INDEX, FAKE_BAR2);
    const pv = opts.pvinfo;
    if (pv) {
      const set = (off: number, v: number) => {
        this.pvregs[off / 4] = v >>> 0;
      };
      set(PVINFO.magic, Number(VGT_MAGIC & 0xffffffffn));
      set(PVINFO.magic + 4, Number(VGT_MAGIC >> 32n));
      set(PVINFO.versionMajor, pv.versionMajor ?? 1);
      set(PVINFO.vgtId, pv.vgtId ?? 1);
      set(PVINFO.mappableBase, pv.mappable.base);
      set(PVINFO.mappableSize, pv.mappable.size);
      set(PVINFO.nonmappableBase, pv.nonmappable.base);
      set(PVINFO.nonmappableSize, pv.nonmappable.size);
      set(PVINFO.fenceNum, pv.fences ?? 4);
    }
  }

  // ---- GuestPciFunction --------------------------------------------------------------------------------------------

  configRead(offset: number, size: 1 | 2 | 4): number {
    return this.config.read(offset, size);
  }
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.config.write(offset, size, value);
  }
  barAddress(index: number): Gpa | undefined {
    const s = this.config.barSpec(index);
    return s ? gpa(this.config.barAddress(index)) : undefined;
  }
  barSize(index: number): number {
    return this.config.barSpec(index)?.size ?? 0;
  }
  onInterrupt(handler: (vector: number) => void): void {
    this.handler = handler;
  }

  mmioRead(at: Gpa, size: 1 | 2 | 4 | 8): number {
    const off = at - FAKE_BAR0;
    if (off >= 0 && off < BAR0_SIZE) {
      if (off >= GTT_OFFSET) {
        const i = Math.floor((off - GTT_OFFSET) / 8);
        if (!this.inPartition(i * PAGE_SIZE, PAGE_SIZE)) return 0;
        const e = this.gtt[i]!;
        if (size === 8) return e;
        const hi = Math.floor(e / TWO32);
        return off % 8 === 4 ? hi : e - hi * TWO32;
      }
      if (size === 8) return this.readReg(off) + this.readReg(off + 4) * TWO32;
      return this.readReg(off);
    }
    const a = at - FAKE_BAR2;
    if (a >= 0 && a < this.apertureSize && size === 4) {
      const g = this.translate(a);
      return g < 0 ? 0 : this.mem.readU32(gpa(g));
    }
    throw new KernelError(Errno.EFAULT, `MMIO read at ${hex(at)} hits no BAR`);
  }

  mmioWrite(at: Gpa, size: 1 | 2 | 4 | 8, value: number): void {
    const off = at - FAKE_BAR0;
    if (!(off >= 0 && off < BAR0_SIZE)) throw new KernelError(Errno.EFAULT, `MMIO write at ${hex(at)} hits no BAR0`);
    this.writes.push({ offset: off, size, value });
    if (off >= GTT_OFFSET) {
      const i = Math.floor((off - GTT_OFFSET) / 8);
      if (!this.inPartition(i * PAGE_SIZE, PAGE_SIZE)) {
        this.gttIgnored++;
        return;
      }
      if (size === 8) this.gtt[i] = value;
      else {
        const e = this.gtt[i]!;
        const hi = Math.floor(e / TWO32);
        const lo = e - hi * TWO32;
        this.gtt[i] = off % 8 === 4 ? (value >>> 0) * TWO32 + lo : hi * TWO32 + (value >>> 0);
      }
      return;
    }
    if (size === 8) {
      this.writeReg(off, (value % TWO32) >>> 0);
      this.writeReg(off + 4, Math.floor(value / TWO32) >>> 0);
    } else this.writeReg(off, value >>> 0);
  }

  // ---- registers ---------------------------------------------------------------------------------------------------

  private engineAt(off: number): FakeEngine | undefined {
    for (const e of Object.values(this.engines))
      if (off >= ENGINE_BASE[e.id] && off < ENGINE_BASE[e.id] + 0x1000) return e;
    return undefined;
  }

  readReg(off: number): number {
    if (off >= VGT_PVINFO_PAGE && off < VGT_PVINFO_PAGE + 0x1000) return this.pvregs[(off - VGT_PVINFO_PAGE) / 4]!;
    const e = this.engineAt(off);
    if (e) {
      switch (off - ENGINE_BASE[e.id]) {
        case RING_TAIL:
          return e.tail;
        case RING_HEAD:
          return e.head;
        case RING_START:
          return e.start;
        case RING_CTL:
          return e.ctl;
        case RING_EIR:
          return e.eir;
        case RING_ACTHD:
          return e.acthd;
        case RING_HWS_PGA:
          return e.hws;
      }
      return 0;
    }
    switch (off) {
      case GEN8_MASTER_IRQ: {
        let v = this.master;
        const p = this.iir & this.ier;
        if ((p & 0xffff) !== 0) v |= GEN8_GT_RCS_IRQ;
        if (p >>> 16 !== 0) v |= GEN8_GT_BCS_IRQ;
        return v >>> 0;
      }
      case GEN8_GT_ISR0:
        return this.isr;
      case GEN8_GT_IMR0:
        return this.imr;
      case GEN8_GT_IIR0:
        return this.iir;
      case GEN8_GT_IER0:
        return this.ier;
    }
    return 0;
  }

  writeReg(off: number, v: number): void {
    if (off >= VGT_PVINFO_PAGE && off < VGT_PVINFO_PAGE + 0x1000) {
      if (off - VGT_PVINFO_PAGE === PVINFO.displayReady) this.pvregs[PVINFO.displayReady / 4] = v;
      return;
    }
    const e = this.engineAt(off);
    if (e) {
      switch (off - ENGINE_BASE[e.id]) {
        case RING_TAIL:
          e.tail = v & TAIL_ADDR;
          this.tailWritten(e);
          return;
        case RING_HEAD:
          e.head = v & HEAD_ADDR;
          return;
        case RING_START:
          e.start = (v & 0xfffff000) >>> 0;
          return;
        case RING_CTL:
          e.ctl = v;
          return;
        case RING_EIR:
          e.eir = (e.eir & ~v) >>> 0;
          return;
        case RING_HWS_PGA:
          e.hws = v;
          return;
      }
      return;
    }
    switch (off) {
      case GEN8_MASTER_IRQ:
        this.master = (v & GEN8_MASTER_IRQ_CONTROL) >>> 0;
        break;
      case GEN8_GT_IMR0:
        this.imr = v;
        return;
      case GEN8_GT_IIR0:
        this.iir = (this.iir & ~v) >>> 0;
        this.isr = (this.isr & ~v) >>> 0;
        break;
      case GEN8_GT_IER0:
        this.ier = v;
        break;
      default:
        return;
    }
    this.updateLine();
  }

  /** Calls the driver's interrupt handler with nothing pending (a shared line, a stale edge). */
  spuriousInterrupt(): void {
    this.handler?.(this.config.msi().data);
  }

  /** PVINFO display_ready as the driver last wrote it. */
  get displayReady(): number {
    return this.pvregs[PVINFO.displayReady / 4]!;
  }

  private event(bits: number): void {
    this.isr = (this.isr | bits) >>> 0;
    const latched = bits & ~this.imr;
    if (latched !== 0) {
      this.iir = (this.iir | latched) >>> 0;
      this.updateLine();
    }
  }

  private updateLine(): void {
    const level = (this.master & GEN8_MASTER_IRQ_CONTROL) !== 0 && (this.iir & this.ier) !== 0;
    if (level === this.line) return;
    this.line = level;
    if (!level || !this.handler) return;
    const msi = this.config.msi();
    this.interruptsSent++;
    this.handler(msi.enabled ? msi.data : 0);
  }

  // ---- memory through the GTT ----------------------------------------------------------------------------------------

  private inPartition(g: number, len: number): boolean {
    const pv = this.opts.pvinfo;
    if (!pv) return g >= 0 && g + len <= TWO32;
    const inside = (r: GmExtent) => g >= r.base && g + len <= r.base + r.size;
    return inside(pv.mappable) || inside(pv.nonmappable);
  }

  /** GMA -> GPA, or -1 (not present, beyond the table, or not RAM). */
  translate(g: number): number {
    const i = Math.floor(g / PAGE_SIZE);
    if (!(i >= 0 && i < this.gtt.length)) return -1;
    const a = gen8PteDecode(this.gtt[i]!);
    if (a < 0 || !this.mem.contains(a, PAGE_SIZE)) {
      this.gttFaults++;
      return -1;
    }
    return a + (g % PAGE_SIZE);
  }

  private readGm(g: number): number {
    const a = this.translate(g);
    return a < 0 ? 0 : this.mem.readU32(gpa(a));
  }

  private writeGm(g: number, v: number): void {
    const a = this.translate(g);
    if (a >= 0) this.mem.writeU32(gpa(a), v);
  }

  // ---- execution -----------------------------------------------------------------------------------------------------

  private tailWritten(e: FakeEngine): void {
    if ((e.ctl & RING_VALID) === 0 || e.eir !== 0) return;
    if (this.opts.audit === "at-submission") {
      const why = this.scanRing(e);
      if (why !== undefined) {
        this.reject(e, why);
        return;
      }
    }
    const delay = this.opts.execDelayNs ?? 0;
    if (delay === 0) this.runRing(e);
    else if (!e.scheduled) {
      e.scheduled = true;
      this.time.after(delay, () => {
        e.scheduled = false;
        this.runRing(e);
      });
    }
  }

  private reject(e: FakeEngine, why: string): void {
    this.rejections.push(why);
    e.head = e.tail;
    this.event(GT_CS_MASTER_ERROR_INTERRUPT << e.shift);
  }

  private ringDword(e: FakeEngine, off: number): number {
    return this.readGm(e.start + (off % ringCtlLength(e.ctl)));
  }

  /** Audits everything from HEAD to TAIL (and batches) without executing it. */
  private scanRing(e: FakeEngine): string | undefined {
    const len = ringCtlLength(e.ctl);
    let p = e.head;
    const cmd = new Uint32Array(16);
    while (p !== e.tail) {
      const h = this.ringDword(e, p);
      const n = this.length(h);
      if (n < 0) return `unknown command ${hex(h)}`;
      for (let i = 0; i < n; i++) cmd[i] = this.ringDword(e, p + 4 * i);
      const why = this.audit(cmd, n);
      if (why) return why;
      if (this.name(h) === "BB_START") {
        let b = cmd[1]! + cmd[2]! * TWO32;
        for (let guard = 0; guard < 4096; guard++) {
          const bh = this.readGm(b);
          const bn = this.length(bh);
          if (bn < 0) return `unknown command ${hex(bh)} in batch`;
          for (let i = 0; i < bn; i++) cmd[i] = this.readGm(b + 4 * i);
          const bwhy = this.audit(cmd, bn);
          if (bwhy) return bwhy;
          if (this.name(bh) === "BB_END") break;
          b += 4 * bn;
        }
      }
      p = (p + 4 * n) % len;
    }
    return undefined;
  }

  private name(h: number): string {
    const client = h >>> 29;
    if (client === 0) {
      switch ((h >>> 23) & 0x3f) {
        case 0x00:
          return "NOOP";
        case 0x02:
          return "USER_INTERRUPT";
        case 0x0a:
          return "BB_END";
        case 0x20:
          return "STORE";
        case 0x22:
          return "LRI";
        case 0x31:
          return "BB_START";
      }
    } else if (client === 2) {
      const op = (h >>> 22) & 0x7f;
      if (op === 0x50) return "COLOR_BLT";
      if (op === 0x53) return "SRC_COPY_BLT";
    }
    return "";
  }

  /** Command length in dwords, or -1 for an unknown command. */
  private length(h: number): number {
    switch (this.name(h)) {
      case "NOOP":
      case "USER_INTERRUPT":
      case "BB_END":
        return 1;
      case "STORE":
        return (h & 0x3ff) + 2;
      case "LRI":
      case "BB_START":
      case "COLOR_BLT":
      case "SRC_COPY_BLT":
        return Math.min(16, (h & 0xff) + 2);
      default:
        return -1;
    }
  }

  /** The fake mediator's checks; undefined when the command may run. */
  private audit(cmd: Uint32Array, n: number): string | undefined {
    if (!this.opts.pvinfo || (this.opts.audit ?? "none") === "none") return undefined;
    const h = cmd[0]!;
    const range = (g: number, len: number, what: string) => {
      if (len > FAKE_MAX_OP) return `${what} of ${len} bytes exceeds ${FAKE_MAX_OP}`;
      const ok = this.opts.auditRanges
        ? this.opts.auditRanges.some((r) => g >= r.base && g + len <= r.base + r.size)
        : this.inPartition(g, len);
      return ok ? undefined : `${what} [${hex(g)}, +${len}) outside the partition`;
    };
    switch (this.name(h)) {
      case "STORE":
        return range(cmd[1]! + cmd[2]! * TWO32, 4, "store");
      case "LRI":
        for (let i = 1; i + 1 < n; i += 2) if (!FAKE_LRI_ALLOWED.has(cmd[i]!)) return `LRI to ${hex(cmd[i]!)}`;
        return undefined;
      case "BB_START":
        return range(cmd[1]! + cmd[2]! * TWO32, 8, "batch");
      case "COLOR_BLT": {
        const pitch = cmd[1]! & 0xffff;
        const h2 = (cmd[3]! >>> 16) - (cmd[2]! >>> 16);
        return range(cmd[4]! + cmd[5]! * TWO32, pitch * h2, "fill");
      }
      case "SRC_COPY_BLT": {
        const h2 = (cmd[3]! >>> 16) - (cmd[2]! >>> 16);
        return (
          range(cmd[4]! + cmd[5]! * TWO32, (cmd[1]! & 0xffff) * h2, "copy dst") ??
          range(cmd[8]! + cmd[9]! * TWO32, (cmd[7]! & 0xffff) * h2, "copy src")
        );
      }
      case "BB_END":
      case "NOOP":
      case "USER_INTERRUPT":
        return undefined;
      default:
        return `unknown command ${hex(h)}`;
    }
  }

  private runRing(e: FakeEngine): void {
    const len = ringCtlLength(e.ctl);
    const cmd = new Uint32Array(16);
    try {
      while (e.head !== e.tail && e.eir === 0) {
        const h = this.ringDword(e, e.head);
        const n = this.length(h);
        e.acthd = e.start + e.head;
        if (n < 0) throw new Reject(`unknown command ${hex(h)}`);
        for (let i = 0; i < n; i++) cmd[i] = this.ringDword(e, e.head + 4 * i);
        e.head = (e.head + 4 * n) % len;
        this.exec(e, cmd, n);
      }
    } catch (err) {
      if (!(err instanceof Reject)) throw err;
      if (this.opts.pvinfo && this.opts.audit === "at-execution") this.reject(e, err.message);
      else {
        // Hardware: the engine halts at the command with RING_EIR set.
        e.eir |= I915_ERROR_INSTRUCTION;
        this.rejections.push(err.message);
        this.event(GT_CS_MASTER_ERROR_INTERRUPT << e.shift);
      }
    }
  }

  private exec(e: FakeEngine, cmd: Uint32Array, n: number): void {
    if (this.opts.audit === "at-execution") {
      const why = this.audit(cmd, n);
      if (why) throw new Reject(why);
    }
    const name = this.name(cmd[0]!);
    this.executed.set(name, (this.executed.get(name) ?? 0) + 1);
    switch (name) {
      case "USER_INTERRUPT":
        this.event(GT_RENDER_USER_INTERRUPT << e.shift);
        return;
      case "STORE":
        this.writeGm(cmd[1]! + cmd[2]! * TWO32, cmd[3]!);
        return;
      case "LRI":
        for (let i = 1; i + 1 < n; i += 2) {
          this.lriWrites.push({ reg: cmd[i]!, value: cmd[i + 1]! });
          this.writeReg(cmd[i]!, cmd[i + 1]!);
        }
        return;
      case "BB_START": {
        let b = cmd[1]! + cmd[2]! * TWO32;
        const bc = new Uint32Array(16);
        for (let guard = 0; guard < 1 << 20; guard++) {
          const h = this.readGm(b);
          const bn = this.length(h);
          if (bn < 0) throw new Reject(`unknown command ${hex(h)} in batch`);
          if (this.name(h) === "BB_END") return;
          for (let i = 0; i < bn; i++) bc[i] = this.readGm(b + 4 * i);
          b += 4 * bn;
          this.exec(e, bc, bn);
        }
        return;
      }
      case "COLOR_BLT":
      case "SRC_COPY_BLT":
        this.blit(name, cmd);
        if (this.opts.corruptBlits) {
          const pitch = cmd[1]! & 0xffff;
          const last = cmd[4]! + cmd[5]! * TWO32 + ((cmd[3]! >>> 16) - 1) * pitch + ((cmd[3]! & 0xffff) - 1) * 4;
          this.writeGm(last, this.readGm(last) ^ 1);
        }
        return;
      default:
        return;
    }
  }

  private blit(name: string, cmd: Uint32Array): void {
    switch (name) {
      case "COLOR_BLT": {
        const pitch = cmd[1]! & 0xffff;
        const dst = cmd[4]! + cmd[5]! * TWO32;
        for (let y = cmd[2]! >>> 16; y < cmd[3]! >>> 16; y++) {
          const end = dst + y * pitch + (cmd[3]! & 0xffff) * 4;
          for (let g = dst + y * pitch + (cmd[2]! & 0xffff) * 4; g < end; ) {
            // Skip a whole page at once when it is not mapped (the oversize attack touches 38 MB of nothing).
            if (this.translate(g) < 0) {
              g = Math.min(end, (Math.floor(g / PAGE_SIZE) + 1) * PAGE_SIZE);
              continue;
            }
            this.writeGm(g, cmd[6]!);
            g += 4;
          }
        }
        return;
      }
      case "SRC_COPY_BLT": {
        const dp = cmd[1]! & 0xffff;
        const sp = cmd[7]! & 0xffff;
        const dst = cmd[4]! + cmd[5]! * TWO32;
        const src = cmd[8]! + cmd[9]! * TWO32;
        const x1 = cmd[2]! & 0xffff;
        const y1 = cmd[2]! >>> 16;
        const sx = cmd[6]! & 0xffff;
        const sy = cmd[6]! >>> 16;
        for (let y = 0; y < (cmd[3]! >>> 16) - y1; y++) {
          for (let x = 0; x < (cmd[3]! & 0xffff) - x1; x++) {
            this.writeGm(dst + (y1 + y) * dp + (x1 + x) * 4, this.readGm(src + (sy + y) * sp + (sx + x) * 4));
          }
        }
        return;
      }
      default:
        return;
    }
  }
}

/** The whole fake machine. */
export class FakePlatform implements GuestPlatform {
  readonly memory: FakeMemory;
  readonly pages: FakePages;
  readonly time = new FakeTime();
  readonly device: FakeGpu;

  constructor(opts: FakeGpuOptions = {}) {
    const ram = opts.ramBytes ?? 64 * 1024 * 1024;
    this.memory = new FakeMemory(ram);
    this.pages = new FakePages(ram);
    this.device = new FakeGpu(this.memory, this.time, opts);
  }
}
