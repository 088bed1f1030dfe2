/**
 * The command scanner (GVT-g cmd_parser.c): every dword a guest submits is decoded and audited before anything of it
 * reaches the physical engine, and batch buffers are shadowed so the guest cannot change them after the audit.
 *
 * Input: a private copy of the guest's ring contents between the scan position and TAIL (so the ring itself is
 * shadowed by construction), and the mode (`ScanMode`): "ring" for the legacy path (the rules below), "context" for
 * a guest context run through execlists (the rules below with the changes listed after them). For each command
 * (decodeCommand of regs.ts; an unknown command, or one without a rule in the mode, is rejected):
 * - MI_NOOP, MI_USER_INTERRUPT (counted: completion raises the guest's user interrupt);
 * - MI_STORE_DATA_IMM: 4 dwords (a dword) or 5 (a qword, 8-byte aligned), GGTT only (bit 22); its target is audited;
 * - MI_LOAD_REGISTER_IMM: (register, value) pairs; every register must be in `LRI_ALLOWED` (no ring, interrupt,
 *   fence, GTT or reset register is in it), and the register dword may carry no bits beyond the offset field;
 * - MI_BATCH_BUFFER_START (3 dwords, GGTT only): the batch is read from guest graphics memory page by page through
 *   the shadow GTT up to its MI_BATCH_BUFFER_END, audited command by command, copied into a host-owned
 *   `ShadowBuffer` (HostGpu.allocShadow), and the copy's address is patched into the command. A batch may not start
 *   another batch (nested batch buffers are rejected, as the GPU runs one level only), nor exceed the GPU's batch
 *   limit (MAX_BATCH_BYTES, 4 MiB, below the 36 MiB operation limit);
 * - MI_BATCH_BUFFER_END: ends a batch; in the ring it is a no-op, as on the GPU (the audit goes on after it);
 * - XY_COLOR_BLT (7 dwords) and XY_SRC_COPY_BLT (10 dwords): the full extent of each rectangle,
 *   [base + y1 * pitch + x1 * cpp, base + (y2 - 1) * pitch + x2 * cpp), is audited for the destination and, for a
 *   copy, the source (same width and height at the source origin, with the source pitch). A pitch with bit 15 set
 *   (negative on hardware, which reads it signed; the model reads it unsigned) is rejected, so the audit never
 *   depends on the reading. A tiled surface (the header's tiled bits; its pitch field is in dwords) is audited by
 *   whole rows of the tallest tile (32 rows, Y-tiling; X tiles are 8 rows, so the audit covers either layout, whatever
 *   BCS_SWCTRL holds): [base + floor(y1 / 32) * 32 * pitch, base + (floor((y2 - 1) / 32) + 1) * 32 * pitch). What the
 *   GPU cannot execute (colour depths other than 32 bpp, raster operations other than PATCOPY / SRCCOPY) is rejected
 *   too: it would only halt the engine. An empty rectangle
 *   (x2 <= x1 or y2 <= y1) passes these checks first, then passes without an address audit: the GPU writes nothing.
 * Address audit: each range must lie wholly inside the vGPU's aperture partition or wholly inside its hidden
 * partition; an operation larger than 36 MiB (GVT-g's max_surface_size) is rejected whatever its address. A 64-bit
 * address is taken whole (high dword included), so an address at or above 4 GiB is simply outside.
 *
 * In a context (GVT-g's cmd_parser.c rules for what i915 emits): PPGTT addresses need no audit (the context's shadow
 * PPGTT maps only the VM's pages) and GGTT ones are audited as above; MI_STORE_DATA_IMM may use either;
 * MI_BATCH_BUFFER_START may start a PPGTT batch (any 48-bit address), read through the context's shadow PPGTT
 * (`ScannerPpgtt`, the translation the engine will use), shadowed into host graphics memory and re-pointed there as a
 * GGTT batch; MI_USER_INTERRUPT is counted and patched to MI_NOOP (the backend raises it at completion);
 * MI_ARB_CHECK and MI_ARB_ON_OFF pass; MI_FLUSH_DW and PIPE_CONTROL pass, their post-sync GGTT targets audited (a
 * store-index target lands in the context's own PPHWSP), a PIPE_CONTROL MMIO write refused; MI_SEMAPHORE_WAIT is
 * refused (GVT-g); PIPELINE_SELECT, 3D / media state and 3DPRIMITIVE pass by length (no 3D pipeline: nothing they
 * name is accessed); blits get their mode checks but no address audit (PPGTT surfaces); on vcs and vecs anything but
 * MI commands is refused. With a tracer, each command of a context is traced ("vgpu.gvt_command", GVT-g's
 * gvt_command tracepoint).
 *
 * Output: the patched command dwords, the shadow buffers (to free after execution), and the number of user
 * interrupts; or a rejection: a sentence naming the command, where it is, and the bad value. On rejection every
 * shadow allocated for the submission is freed: nothing of it executes.
 *
 * Decoding agrees with the GPU model's (src/gpu/engine.ts) wherever an address is formed: where the GPU masks (the low
 * two bits of a store or batch address, the high dword to 16 bits), the audit takes the unmasked value, which can only
 * reject more.
 *
 * Not modelled: indirect state, MI commands beyond the table of regs.ts, per-engine command legality on the legacy
 * path (blits are accepted on every engine, as the GPU model does).
 */
import { defineTraceEvents, hex, type Tracer } from "../core/index.ts";
import {
  BR13_32BPP,
  BR13_COLOR_DEPTH_MASK,
  BR13_ROP_SHIFT,
  bltPitchBytes,
  type CommandInfo,
  decodeCommand,
  type GtEngineId,
  INSTR_BC_CLIENT,
  INSTR_CLIENT_SHIFT,
  INSTR_MI_CLIENT,
  MAX_BATCH_BYTES,
  MI_BATCH_PPGTT,
  MI_FLUSH_DW_OP_MASK,
  MI_FLUSH_DW_OP_NONE,
  MI_FLUSH_DW_OP_STAMP,
  MI_FLUSH_DW_OP_STOREDW,
  MI_FLUSH_DW_STORE_INDEX,
  MI_FLUSH_DW_USE_GTT,
  MI_NOOP,
  MI_USE_GGTT,
  PIPE_CONTROL_GLOBAL_GTT_IVB,
  PIPE_CONTROL_POST_SYNC_OP_MASK,
  PIPE_CONTROL_STORE_DATA_INDEX,
  ROP_PATCOPY,
  ROP_SRCCOPY,
  type ShadowBuffer,
  XY_SRC_COPY_BLT_DST_TILED,
  XY_SRC_COPY_BLT_SRC_TILED,
} from "../gpu/index.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "vgpu.gvt_command": { vgpu: number; engine: string; where: string; name: string; dwords: number };
  }
}
defineTraceEvents("vgpu", {
  "vgpu.gvt_command": "vgpu{vgpu}: {engine} {where}: {name} ({dwords} dwords) audited",
});

/** GVT-g's device_info.max_surface_size: the largest operation (surface, batch) a command may touch. */
export const MAX_OP_SIZE = 36 * 1024 * 1024;

/**
 * MI_LOAD_REGISTER_IMM targets a guest may program: state with no effect on addressing, on interrupts or on other
 * vGPUs. The rows after the first eight are the context workaround registers i915 6.1 loads on a Skylake render
 * engine (gen9_ctx_workarounds_init, emitted by intel_engine_emit_ctx_wa), each marked F_CMD_ACCESS in GVT-g's
 * register table (gvt/handlers.c): GVT-g lets a guest's commands write them. The GPU model implements none of them.
 */
export const LRI_ALLOWED: readonly { readonly offset: number; readonly name: string }[] = [
  { offset: 0x20c0, name: "INSTPM" },
  { offset: 0x20d0, name: "GEN6_GT_MODE" },
  { offset: 0x7000, name: "GEN7_CACHE_MODE_0" },
  { offset: 0x7004, name: "GEN7_CACHE_MODE_1" },
  { offset: 0x7008, name: "GEN7_GT_MODE" },
  { offset: 0x7300, name: "HDC_CHICKEN0" },
  { offset: 0xe184, name: "HALF_SLICE_CHICKEN3" },
  { offset: 0x22200, name: "BCS_SWCTRL" },
  { offset: 0x2580, name: "GEN8_CS_CHICKEN1" },
  { offset: 0x7014, name: "COMMON_SLICE_CHICKEN2" },
  { offset: 0xe180, name: "HALF_SLICE_CHICKEN2" },
  { offset: 0xe188, name: "GEN9_HALF_SLICE_CHICKEN5" },
  { offset: 0xe194, name: "GEN9_HALF_SLICE_CHICKEN7" },
  { offset: 0xe4f0, name: "GEN8_ROW_CHICKEN" },
  { offset: 0xe4f4, name: "GEN7_ROW_CHICKEN2" },
];
const LRI_ALLOWED_SET: ReadonlySet<number> = new Set(LRI_ALLOWED.map((r) => r.offset));
/** Rows of the tallest tile (Y-tiling): a tiled blit surface is audited by whole rows of such tiles. */
const AUDIT_TILE_ROWS = 32;
/** PIPE_CONTROL dword 1 bit 23: write an MMIO register after the flush (an LRI in disguise). */
const PIPE_CONTROL_MMIO_WRITE = 1 << 23;
/** The end of a 48-bit PPGTT. */
const PPGTT_LIMIT = 2 ** 48;
/** The register field of an LRI register dword (bits 2..22). */
const LRI_REG_MASK = 0x7f_fffc;

/** The GPU blits 32-bpp surfaces only. */
const BLT_CPP = 4;
/** The longest batch the scanner follows: the GPU's own limit, which is below the operation limit. */
const MAX_BATCH = Math.min(MAX_BATCH_BYTES, MAX_OP_SIZE);

/** What the scanner needs of the vGPU: its graphics memory as the shadow GTT maps it. */
export interface ScannerMemory {
  /** [gma, gma + length) lies inside the aperture or inside the hidden partition. */
  inPartition(gma: number, length: number): boolean;
  /** Copies guest graphics memory; -1 on success, else the GMA of the first page not backed by a guest page. */
  readGm(gma: number, dst: Uint8Array): number;
  /** The partition for messages: "aperture [a, b), hidden [c, d)". */
  describe(): string;
}

/**
 * A context's PPGTT as the scanner reads it: the shadow the engine will walk (shadow-ppgtt.ts), so a PPGTT batch is
 * read through the very translation that will run it.
 */
export interface ScannerPpgtt {
  /** Copies PPGTT memory [gma, gma + dst.length); -1 on success, else the address of the first page not mapped. */
  read(gma: number, dst: Uint8Array): number;
}

/**
 * What the scanned commands run in, which decides the rules for addresses that are not GGTT addresses:
 * - "ring": the legacy ring path (vgpu.ts): GGTT only, every PPGTT form is rejected;
 * - "context": a guest context on `engine` through execlists (execlist-backend.ts): commands may address the
 *   context's PPGTT (its shadow only maps this VM's pages, so a PPGTT address needs no audit), PPGTT batches are read
 *   through `ppgtt`, and the rules of GVT-g's cmd_parser.c for what i915 emits apply (see the module comment).
 */
export type ScanMode =
  | { readonly kind: "ring" }
  | { readonly kind: "context"; readonly engine: GtEngineId; readonly ppgtt: ScannerPpgtt };

const RING_MODE: ScanMode = { kind: "ring" };

export interface CommandScannerOptions {
  readonly memory: ScannerMemory;
  /** HostGpu.allocShadow; may throw KernelError (ENOSPC). */
  readonly allocShadow: (size: number) => ShadowBuffer;
  /** Frees a shadow `allocShadow` returned (default: its own `free`). */
  readonly freeShadow?: (b: ShadowBuffer) => void;
  /** With a tracer and the vGPU's id, each command scanned in a context is traced ("vgpu.gvt_command"). */
  readonly tracer?: Tracer;
  readonly vgpuId?: number;
}

export type ScanResult =
  | {
      readonly ok: true;
      readonly commands: Uint32Array;
      readonly shadows: readonly ShadowBuffer[];
      /** Commands audited (ring and batches). */
      readonly count: number;
      readonly userInterrupts: number;
    }
  | { readonly ok: false; readonly reason: string };

/** Thrown inside a scan and caught at its top: the reason a submission is rejected. */
class Reject {
  constructor(readonly reason: string) {}
}

export class CommandScanner {
  private readonly memory: ScannerMemory;
  private readonly allocShadow: (size: number) => ShadowBuffer;
  private readonly freeShadow: (b: ShadowBuffer) => void;
  private readonly tracer: Tracer | undefined;
  private readonly vgpuId: number;
  private engineName = "";
  /** Reused buffer for reading batch buffers (grown as needed). */
  private batch = new Uint32Array(1024);
  private batchBytes = new Uint8Array(this.batch.buffer);
  private shadows: ShadowBuffer[] = [];
  private mode: ScanMode = RING_MODE;
  private count = 0;
  private userInterrupts = 0;

  constructor(opts: CommandScannerOptions) {
    this.memory = opts.memory;
    this.allocShadow = opts.allocShadow;
    this.freeShadow = opts.freeShadow ?? ((b) => b.free());
    this.tracer = opts.tracer;
    this.vgpuId = opts.vgpuId ?? 0;
  }

  /**
   * Audits `ring` (a private copy of the submitted dwords; batch addresses are patched in place). `ringOffset` is
   * where the copy starts in the guest's ring, for messages.
   */
  scan(engine: string, ring: Uint32Array, ringOffset: number, mode: ScanMode = RING_MODE): ScanResult {
    this.shadows = [];
    this.count = 0;
    this.userInterrupts = 0;
    this.mode = mode;
    this.engineName = engine;
    const what = mode.kind === "ring" ? "ring" : "context ring";
    try {
      this.scanList(ring, ring.length, false, (pos) => `${engine} ${what} offset ${hex(ringOffset + pos * 4)}`);
      return {
        ok: true,
        commands: ring,
        shadows: this.shadows,
        count: this.count,
        userInterrupts: this.userInterrupts,
      };
    } catch (e) {
      for (const s of this.shadows) this.freeShadow(s);
      if (!(e instanceof Reject)) throw e;
      return { ok: false, reason: e.reason };
    }
  }

  // ---- internals -----------------------------------------------------------------------------------------------

  /** Audits the commands of `d[0..n)`; in a batch, stops after MI_BATCH_BUFFER_END and returns its end (dwords). */
  private scanList(d: Uint32Array, n: number, inBatch: boolean, where: (pos: number) => string): number {
    let pos = 0;
    while (pos < n) {
      const h = d[pos]!;
      const info = decodeCommand(h);
      if (info === undefined) throw new Reject(`${where(pos)}: unknown command ${describeHeader(h)}`);
      const len = info.length(h);
      if (pos + len > n) {
        throw new Reject(
          `${where(pos)}: ${info.name} is ${len} dwords but only ${n - pos} remain before ${inBatch ? "the end of the batch read" : "TAIL"}`,
        );
      }
      this.count++;
      if (this.mode.kind === "context" && this.tracer?.enabled) this.traceCommand(where(pos), info.name, len);
      if (this.audit(d, pos, len, info, inBatch, where)) return pos + 1;
      pos += len;
    }
    return pos;
  }

  /** Audits one command; returns true for MI_BATCH_BUFFER_END in a batch. */
  private audit(
    d: Uint32Array,
    pos: number,
    len: number,
    info: CommandInfo,
    inBatch: boolean,
    where: (pos: number) => string,
  ): boolean {
    const h = d[pos]!;
    const ctx = this.mode.kind === "context" ? this.mode : undefined;
    if (
      ctx !== undefined &&
      (ctx.engine === "vcs" || ctx.engine === "vecs") &&
      h >>> INSTR_CLIENT_SHIFT !== INSTR_MI_CLIENT
    ) {
      throw new Reject(
        `${where(pos)}: ${info.name} on ${ctx.engine}, which executes MI commands only (the video engines have no ` +
          `${h >>> INSTR_CLIENT_SHIFT === INSTR_BC_CLIENT ? "blitter" : "render pipeline"})`,
      );
    }
    switch (info.name) {
      case "MI_NOOP":
        return false;
      case "MI_USER_INTERRUPT":
        this.userInterrupts++;
        // GVT-g patches it out and raises the guest's user interrupt when the workload completes.
        if (ctx !== undefined) d[pos] = MI_NOOP;
        return false;
      case "MI_BATCH_BUFFER_END":
        return inBatch;
      case "MI_ARB_CHECK":
      case "MI_ARB_ON_OFF":
        if (ctx === undefined) break; // the legacy path knows no arbitration
        return false;
      case "MI_STORE_DATA_IMM": {
        if (len !== 4 && len !== 5) {
          throw new Reject(`${where(pos)}: MI_STORE_DATA_IMM of ${len} dwords: only 4 (dword) or 5 (qword)`);
        }
        const global = (h & MI_USE_GGTT) !== 0;
        if (!global && ctx === undefined) {
          throw new Reject(`${where(pos)}: MI_STORE_DATA_IMM uses PPGTT addressing, which the vGPU does not offer`);
        }
        const gma = addr64(d, pos + 1);
        if (len === 5 && gma % 8 !== 0) {
          throw new Reject(`${where(pos)}: MI_STORE_DATA_IMM of a qword to unaligned GMA ${hex(gma)}`);
        }
        // A PPGTT target needs no audit: the context's shadow PPGTT maps only this VM's pages.
        if (global) this.checkRange(where(pos), info.name, "target", gma, (len - 3) * 4);
        return false;
      }
      case "MI_LOAD_REGISTER_IMM": {
        if (len < 3 || (len - 1) % 2 !== 0) {
          throw new Reject(`${where(pos)}: MI_LOAD_REGISTER_IMM of ${len} dwords is not whole (register, value) pairs`);
        }
        for (let k = pos + 1; k < pos + len; k += 2) {
          const reg = d[k]!;
          if ((reg & ~LRI_REG_MASK) !== 0 || !LRI_ALLOWED_SET.has(reg)) {
            throw new Reject(
              `${where(pos)}: MI_LOAD_REGISTER_IMM to register ${hex(reg)} is not allowed (allowed: ${LRI_ALLOWED.map((r) => r.name).join(", ")})`,
            );
          }
        }
        return false;
      }
      case "MI_BATCH_BUFFER_START": {
        if (inBatch)
          throw new Reject(`${where(pos)}: nested batch buffers (a batch starting a batch) are not supported`);
        if (len !== 3) throw new Reject(`${where(pos)}: MI_BATCH_BUFFER_START must be 3 dwords, not ${len}`);
        const ppgtt = (h & MI_BATCH_PPGTT) !== 0;
        if (ppgtt && ctx === undefined) {
          throw new Reject(`${where(pos)}: MI_BATCH_BUFFER_START uses PPGTT addressing, which the vGPU does not offer`);
        }
        const gma = addr64(d, pos + 1);
        const shadow = this.shadowBatch(gma, where(pos), ppgtt ? ctx!.ppgtt : undefined);
        // The shadow copy is host graphics memory: the command now names it in the GGTT.
        if (ppgtt) d[pos] = (h & ~MI_BATCH_PPGTT) >>> 0;
        d[pos + 1] = shadow.gma % 2 ** 32;
        d[pos + 2] = Math.floor(shadow.gma / 2 ** 32);
        return false;
      }
      case "MI_FLUSH_DW":
        if (ctx === undefined) break;
        this.flushDw(d, pos, len, where);
        return false;
      case "PIPE_CONTROL":
        if (ctx === undefined) break;
        this.pipeControl(d, pos, len, where);
        return false;
      case "MI_SEMAPHORE_WAIT":
        if (ctx === undefined) break;
        // GVT-g refuses it (a guest's wait could hold a physical engine for ever); i915 never emits it on a vGPU.
        throw new Reject(`${where(pos)}: MI_SEMAPHORE_WAIT is not allowed on a vGPU`);
      case "PIPELINE_SELECT":
      case "3DSTATE_VF_STATISTICS":
      case "3DSTATE_SO_DECL_LIST":
      case "3DPRIMITIVE":
      case "GFX_STATE":
        // Decoded by length and skipped by the GPU (no 3D pipeline): nothing they name is ever accessed.
        if (ctx === undefined) break;
        return false;
      case "XY_COLOR_BLT": {
        if (len !== 7) throw new Reject(`${where(pos)}: XY_COLOR_BLT must be 7 dwords, not ${len}`);
        const br13 = d[pos + 1]!;
        this.bltMode(br13, ROP_PATCOPY, where(pos), info.name);
        const tiled = (h & XY_SRC_COPY_BLT_DST_TILED) !== 0;
        const pitch = this.pitch(br13, tiled, where(pos), info.name, "destination");
        const rect = this.rect(d[pos + 2]!, d[pos + 3]!);
        // In a context, blits address the context's PPGTT (its shadow bounds them).
        if (rect === undefined || ctx !== undefined) return false;
        this.checkRect(where(pos), info.name, "destination", addr64(d, pos + 4), rect, pitch, tiled);
        return false;
      }
      case "XY_SRC_COPY_BLT": {
        if (len !== 10) throw new Reject(`${where(pos)}: XY_SRC_COPY_BLT must be 10 dwords, not ${len}`);
        const br13 = d[pos + 1]!;
        this.bltMode(br13, ROP_SRCCOPY, where(pos), info.name);
        const dstTiled = (h & XY_SRC_COPY_BLT_DST_TILED) !== 0;
        const srcTiled = (h & XY_SRC_COPY_BLT_SRC_TILED) !== 0;
        const pitch = this.pitch(br13, dstTiled, where(pos), info.name, "destination");
        const srcPitch = this.pitch(d[pos + 7]!, srcTiled, where(pos), info.name, "source");
        const rect = this.rect(d[pos + 2]!, d[pos + 3]!);
        if (rect === undefined || ctx !== undefined) return false;
        this.checkRect(where(pos), info.name, "destination", addr64(d, pos + 4), rect, pitch, dstTiled);
        const srcTl = d[pos + 6]!;
        const sx = srcTl & 0xffff;
        const sy = srcTl >>> 16;
        const src = { x1: sx, y1: sy, x2: sx + (rect.x2 - rect.x1), y2: sy + (rect.y2 - rect.y1) };
        this.checkRect(where(pos), info.name, "source", addr64(d, pos + 8), src, srcPitch, srcTiled);
        return false;
      }
      default:
        break;
    }
    throw new Reject(`${where(pos)}: ${info.name} is decoded but has no audit rule`);
  }

  /**
   * MI_FLUSH_DW in a context (GVT-g's cmd_handler_mi_flush_dw): a post-sync write to a GGTT address (USE_GTT) is
   * audited; a store-index write lands in the context's own PPHWSP, which for a shadow context is the vendor
   * driver's shadow image (the index cannot leave that page); a PPGTT target goes through the shadow PPGTT.
   */
  private flushDw(d: Uint32Array, pos: number, len: number, where: (pos: number) => string): void {
    const h = d[pos]!;
    if (len < 3 || len > 5) throw new Reject(`${where(pos)}: MI_FLUSH_DW of ${len} dwords (3 to 5)`);
    const op = h & MI_FLUSH_DW_OP_MASK;
    if (op === MI_FLUSH_DW_OP_NONE) return;
    if (op !== MI_FLUSH_DW_OP_STOREDW && op !== MI_FLUSH_DW_OP_STAMP) {
      throw new Reject(`${where(pos)}: MI_FLUSH_DW with reserved post-sync operation ${op >>> 14}`);
    }
    if (len < 4) throw new Reject(`${where(pos)}: MI_FLUSH_DW with a post-sync write needs 4 dwords`);
    if ((h & MI_FLUSH_DW_STORE_INDEX) !== 0) return;
    const lo = d[pos + 1]!;
    if ((lo & MI_FLUSH_DW_USE_GTT) === 0) return;
    const gma = ((lo & ~7) >>> 0) + d[pos + 2]! * 2 ** 32;
    const qword = op === MI_FLUSH_DW_OP_STAMP || len === 5;
    this.checkRange(where(pos), "MI_FLUSH_DW", "post-sync target", gma, qword ? 8 : 4);
  }

  /** PIPE_CONTROL in a context (GVT-g's cmd_handler_pipe_control): as MI_FLUSH_DW, with GLOBAL_GTT for USE_GTT. */
  private pipeControl(d: Uint32Array, pos: number, len: number, where: (pos: number) => string): void {
    if (len < 2) throw new Reject(`${where(pos)}: PIPE_CONTROL of ${len} dwords`);
    const flags = d[pos + 1]!;
    if ((flags & PIPE_CONTROL_MMIO_WRITE) !== 0) {
      throw new Reject(`${where(pos)}: PIPE_CONTROL with an MMIO write (LRI post-sync) is not allowed`);
    }
    if ((flags & PIPE_CONTROL_POST_SYNC_OP_MASK) === 0) return;
    if (len < 6) throw new Reject(`${where(pos)}: PIPE_CONTROL of ${len} dwords: a post-sync write needs 6`);
    if ((flags & PIPE_CONTROL_STORE_DATA_INDEX) !== 0 || (flags & PIPE_CONTROL_GLOBAL_GTT_IVB) === 0) return;
    const gma = ((d[pos + 2]! & ~7) >>> 0) + d[pos + 3]! * 2 ** 32;
    this.checkRange(where(pos), "PIPE_CONTROL", "post-sync target", gma, 8);
  }

  /** A blit surface's pitch in bytes (the field counts dwords for a tiled surface). */
  private pitch(dw: number, tiled: boolean, at: string, cmd: string, which: string): number {
    const p = dw & 0xffff;
    if ((p & 0x8000) !== 0) throw new Reject(`${at}: ${cmd} ${which} pitch ${hex(p)} is negative`);
    return bltPitchBytes(dw, tiled);
  }

  /** The rectangle [x1, x2) x [y1, y2), or undefined when it is empty (the GPU then touches nothing). */
  private rect(tl: number, br: number): { x1: number; y1: number; x2: number; y2: number } | undefined {
    const r = { x1: tl & 0xffff, y1: tl >>> 16, x2: br & 0xffff, y2: br >>> 16 };
    return r.x2 <= r.x1 || r.y2 <= r.y1 ? undefined : r;
  }

  /** Rejects a blit the GPU would refuse: colour depth other than 32 bpp, another raster operation. */
  private bltMode(br13: number, rop: number, at: string, cmd: string): void {
    if ((br13 & BR13_COLOR_DEPTH_MASK) !== BR13_32BPP) {
      throw new Reject(`${at}: ${cmd} with colour depth ${(br13 & BR13_COLOR_DEPTH_MASK) >>> 24}: only 32 bpp (3)`);
    }
    const r = (br13 >>> BR13_ROP_SHIFT) & 0xff;
    if (r !== rop) throw new Reject(`${at}: ${cmd} with raster operation ${hex(r)}: only ${hex(rop)}`);
  }

  private checkRect(
    at: string,
    cmd: string,
    which: string,
    base: number,
    r: { x1: number; y1: number; x2: number; y2: number },
    pitch: number,
    tiled: boolean,
  ): void {
    if (tiled) {
      const start = base + Math.floor(r.y1 / AUDIT_TILE_ROWS) * AUDIT_TILE_ROWS * pitch;
      const end = base + (Math.floor((r.y2 - 1) / AUDIT_TILE_ROWS) + 1) * AUDIT_TILE_ROWS * pitch;
      this.checkRange(at, cmd, which, start, end - start);
      return;
    }
    const start = base + r.y1 * pitch + r.x1 * BLT_CPP;
    const end = base + (r.y2 - 1) * pitch + r.x2 * BLT_CPP;
    this.checkRange(at, cmd, which, start, end - start);
  }

  private checkRange(at: string, cmd: string, which: string, gma: number, size: number): void {
    if (size > MAX_OP_SIZE) {
      throw new Reject(
        `${at}: ${cmd} ${which} of ${size} bytes exceeds the ${MAX_OP_SIZE / 2 ** 20} MiB operation limit`,
      );
    }
    if (!this.memory.inPartition(gma, size)) {
      throw new Reject(
        `${at}: ${cmd} ${which} [${hex(gma)}, ${hex(gma + size)}) is outside the vGPU's graphics memory (${this.memory.describe()})`,
      );
    }
  }

  /**
   * Reads, audits and shadows the batch at `gma` (a GGTT address, or with `ppgtt` an address in the context's
   * PPGTT, read through its shadow); returns its shadow.
   */
  private shadowBatch(gma: number, at: string, ppgtt?: ScannerPpgtt): ShadowBuffer {
    if (gma % 4 !== 0) throw new Reject(`${at}: batch buffer address ${hex(gma)} is not dword aligned`);
    const space = ppgtt === undefined ? "GMA" : "PPGTT address";
    let fetched = 0; // bytes of the batch read so far
    const fetch = (bytes: number) => {
      if (bytes > MAX_BATCH) {
        throw new Reject(
          `${at}: batch buffer at ${hex(gma)} has no MI_BATCH_BUFFER_END within the ${MAX_BATCH / 2 ** 20} MiB batch limit`,
        );
      }
      while (fetched < bytes) {
        const a = gma + fetched;
        const chunk = 4096 - (a % 4096);
        if (ppgtt === undefined && !this.memory.inPartition(a, chunk)) {
          throw new Reject(
            `${at}: batch buffer at ${hex(gma)} runs to ${hex(a)}, outside the vGPU's graphics memory (${this.memory.describe()}), without MI_BATCH_BUFFER_END`,
          );
        }
        if (ppgtt !== undefined && a + chunk > PPGTT_LIMIT) {
          throw new Reject(`${at}: PPGTT batch buffer at ${hex(gma)} runs past the 48-bit address space`);
        }
        this.ensureBatch(fetched + chunk);
        const into = this.batchBytes.subarray(fetched, fetched + chunk);
        const bad = ppgtt === undefined ? this.memory.readGm(a, into) : ppgtt.read(a, into);
        if (bad >= 0) {
          throw new Reject(
            `${at}: batch buffer page at ${space} ${hex(bad)} is not backed by guest memory (${ppgtt === undefined ? "scratch page" : "not present in the context's PPGTT"})`,
          );
        }
        fetched += chunk;
      }
    };
    // Scan incrementally: each command's header, then its whole length, must have been fetched.
    let pos = 0;
    for (;;) {
      fetch((pos + 1) * 4);
      const h = this.batch[pos]!;
      const info = decodeCommand(h);
      const where = `batch at ${hex(gma)} + ${hex(pos * 4)} (from ${at})`;
      if (info === undefined) throw new Reject(`${where}: unknown command ${describeHeader(h)}`);
      const len = info.length(h);
      fetch((pos + len) * 4);
      this.count++;
      if (this.mode.kind === "context" && this.tracer?.enabled) this.traceCommand(where, info.name, len);
      if (this.audit(this.batch, pos, len, info, true, () => where)) {
        pos += 1;
        break;
      }
      pos += len;
    }
    const size = pos * 4;
    let shadow: ShadowBuffer;
    try {
      shadow = this.allocShadow(size);
    } catch (e) {
      throw new Reject(
        `${at}: no host graphics memory for a ${size}-byte shadow batch buffer: ${(e as Error).message}`,
      );
    }
    this.shadows.push(shadow);
    shadow.write(0, this.batchBytes.subarray(0, size));
    return shadow;
  }

  private traceCommand(where: string, name: string, dwords: number): void {
    this.tracer!.emit("vgpu.gvt_command", { vgpu: this.vgpuId, engine: this.engineName, where, name, dwords });
  }

  private ensureBatch(bytes: number): void {
    if (bytes <= this.batchBytes.length) return;
    let n = this.batchBytes.length;
    while (n < bytes) n *= 2;
    const next = new Uint32Array(n / 4);
    next.set(this.batch);
    this.batch = next;
    this.batchBytes = new Uint8Array(next.buffer);
  }
}

/** A 64-bit address from dwords d[k] (low) and d[k + 1] (high), taken whole. */
function addr64(d: Uint32Array, k: number): number {
  return d[k + 1]! * 2 ** 32 + d[k]!;
}

function describeHeader(h: number): string {
  const client = h >>> INSTR_CLIENT_SHIFT;
  const opcode = client === INSTR_MI_CLIENT ? (h >>> 23) & 0x3f : (h >>> 22) & 0x7f;
  return `${hex(h >>> 0)} (client ${client}, opcode ${hex(opcode)})`;
}
