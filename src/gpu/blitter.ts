/**
 * The 2D blitter's data path: filling and copying rectangles of 32-bpp pixels in linear, X-tiled or Y-tiled surfaces
 * (tiling.ts), through the address
 * space the engine selected (`GpuMemory.space`: the GGTT, or the executing context's PPGTT) and the device's DMA path.
 * The engine decodes XY_COLOR_BLT / XY_SRC_COPY_BLT and calls this.
 *
 * Geometry: a surface is a GMA, a pitch (bytes from one row to the next) and a tiling; pixel (x, y) of a linear
 * surface is at base + y * pitch + x * 4, of a tiled one at base + tiledOffset(x * 4, y). A tiled row is copied in
 * the pieces that stay contiguous on both sides (512 bytes in X tiles, 16 in Y tiles). A rectangle is [x1, x2) x [y1, y2) (bottom-right exclusive, as on hardware); an empty
 * one does nothing. When a surface's pitch equals the rectangle's row width the rows are contiguous and the whole
 * rectangle is one linear run.
 *
 * Speed: a run is cut into pieces that stay inside one GMA page on each side; each GMA page is translated through the
 * GGTT once, and consecutive pages whose DMA addresses are also consecutive (as the DMA API's mappings usually are)
 * are merged into one `DeviceDma.copy` / `fill` / `write`, which then walks the IOMMU page by page. Nothing is done
 * byte by byte and nothing is allocated per blit: a fill whose four colour bytes differ writes from a preallocated
 * pattern buffer.
 *
 * Faults (counted by `GpuMemory`): a page whose GGTT entry is not present reads as zeros and drops writes, and the
 * blit goes on; a PPGTT fault or an IOMMU fault stops the blit at the faulting page and the call returns false.
 *
 * Overlap: rows are copied top to bottom, each in ascending address order (memmove within one page). Overlapping
 * rectangles in one surface therefore copy correctly only when the destination is above (at lower addresses than)
 * the source; hardware blitters choose the direction, which the model does not.
 */
import { type Iova, PAGE_SIZE } from "../core/index.ts";
import { DMA_OK, IOMMU_READ } from "../host/index.ts";
import { type GpuMemory, PAGE_FAULT, PAGE_NOT_PRESENT } from "./memory.ts";
import { contiguousSpan, type Tiling, tiledOffset } from "./tiling.ts";

/** A fill with a multi-byte colour writes at most this many bytes per DMA operation (the pattern buffer's size). */
const PATTERN_BYTES = 64 * 1024;

export class Blitter {
  /** Bytes the blitter was asked to write (filled or copied), successful or not. */
  bytesFilled = 0;
  bytesCopied = 0;

  /** PATTERN_BYTES of the fill colour, plus 4 so that a run may start at any byte phase of the colour. */
  private readonly pattern = new Uint8Array(PATTERN_BYTES + 4);
  private readonly pattern32 = new Uint32Array(this.pattern.buffer);
  private patternColor = -1;

  constructor(private readonly mem: GpuMemory) {}

  /**
   * Fills [x1, x2) x [y1, y2) of the surface at `dst` (row pitch `pitch` bytes, layout `tiling`) with `color`. False on
   * an IOMMU fault.
   */
  fill(
    dst: number,
    pitch: number,
    x1: number,
    y1: number,
    x2: number,
    y2: number,
    color: number,
    tiling: Tiling = "linear",
  ): boolean {
    const w = (x2 - x1) * 4;
    const h = y2 - y1;
    if (w <= 0 || h <= 0) return true;
    this.bytesFilled += w * h;
    const c = color >>> 0;
    const b0 = c & 0xff;
    const uniform = b0 === ((c >>> 8) & 0xff) && b0 === ((c >>> 16) & 0xff) && b0 === c >>> 24;
    if (!uniform && this.patternColor !== c) {
      this.pattern32.fill(c);
      this.patternColor = c;
    }
    if (tiling !== "linear") {
      for (let y = y1; y < y2; y++) {
        for (let xb = x1 * 4; xb < x2 * 4; ) {
          const n = Math.min(x2 * 4 - xb, contiguousSpan(tiling, pitch, xb));
          if (!this.fillRun(dst + tiledOffset(tiling, pitch, xb, y), n, uniform, b0)) return false;
          xb += n;
        }
      }
      return true;
    }
    const start = dst + y1 * pitch + x1 * 4;
    if (pitch === w) return this.fillRun(start, w * h, uniform, b0);
    for (let y = 0; y < h; y++) {
      if (!this.fillRun(start + y * pitch, w, uniform, b0)) return false;
    }
    return true;
  }

  /**
   * Copies [x1, x2) x [y1, y2) of the surface at `dst` (pitch `dstPitch`, layout `dstTiling`) from the same-sized
   * rectangle at (sx, sy) of the surface at `src` (pitch `srcPitch`, layout `srcTiling`). False on an IOMMU fault.
   */
  copy(
    dst: number,
    dstPitch: number,
    x1: number,
    y1: number,
    x2: number,
    y2: number,
    src: number,
    srcPitch: number,
    sx: number,
    sy: number,
    dstTiling: Tiling = "linear",
    srcTiling: Tiling = "linear",
  ): boolean {
    const w = (x2 - x1) * 4;
    const h = y2 - y1;
    if (w <= 0 || h <= 0) return true;
    this.bytesCopied += w * h;
    if (dstTiling !== "linear" || srcTiling !== "linear") {
      for (let y = 0; y < h; y++) {
        for (let k = 0; k < w; ) {
          const dxb = x1 * 4 + k;
          const sxb = sx * 4 + k;
          const n = Math.min(w - k, contiguousSpan(dstTiling, dstPitch, dxb), contiguousSpan(srcTiling, srcPitch, sxb));
          const d = dst + tiledOffset(dstTiling, dstPitch, dxb, y1 + y);
          const s = src + tiledOffset(srcTiling, srcPitch, sxb, sy + y);
          if (!this.copyRun(d, s, n)) return false;
          k += n;
        }
      }
      return true;
    }
    const d = dst + y1 * dstPitch + x1 * 4;
    const s = src + sy * srcPitch + sx * 4;
    if (dstPitch === w && srcPitch === w) return this.copyRun(d, s, w * h);
    for (let y = 0; y < h; y++) {
      if (!this.copyRun(d + y * dstPitch, s + y * srcPitch, w)) return false;
    }
    return true;
  }

  /**
   * Fills `len` bytes at GMA `gma`; `len` and the run start are whole pixels, so the colour phase starts at 0. Each
   * GMA page is translated once; DMA-contiguous stretches go to one DeviceDma.fill / write.
   */
  private fillRun(gma: number, len: number, uniform: boolean, byte: number): boolean {
    const mem = this.mem;
    const space = mem.space;
    const dma = mem.dma;
    let page = Math.floor(gma / PAGE_SIZE);
    let po = gma - page * PAGE_SIZE;
    let base = space.pageDma(page, true);
    let done = 0;
    while (done < len) {
      if (base < 0) {
        if (base === PAGE_FAULT) {
          mem.translationFault(gma + done, true);
          return false;
        }
        const piece = Math.min(len - done, PAGE_SIZE - po);
        mem.gttFault(gma + done, true);
        done += piece;
        po += piece;
        if (po === PAGE_SIZE) {
          po = 0;
          base = done < len ? space.pageDma(++page, true) : PAGE_NOT_PRESENT;
        }
        continue;
      }
      const at = base + po;
      const cap = uniform ? len - done : Math.min(len - done, PATTERN_BYTES);
      let run = 0;
      for (;;) {
        const piece = Math.min(cap - run, PAGE_SIZE - po);
        run += piece;
        po += piece;
        if (po === PAGE_SIZE) {
          // Translate the next page only if the run goes on there (a PPGTT walk has a cost and may fault).
          po = 0;
          base = done + run < len ? space.pageDma(++page, true) : PAGE_NOT_PRESENT;
        }
        if (run === cap || base + po !== at + run) break;
      }
      // The colour's byte phase: runs start on pixel boundaries except after a PATTERN_BYTES cut (a multiple of 4).
      const r = uniform ? dma.fill(at as Iova, byte, run) : dma.write(at as Iova, this.pattern, done & 3, run);
      if (r !== DMA_OK) {
        mem.iommuFault(gma + done + r.completed, r.iova, true);
        return false;
      }
      done += run;
    }
    return true;
  }

  /**
   * Copies `len` bytes from GMA `d0` to GMA `s0`, ascending. Walks both sides page by page, translating each GMA page
   * once, and hands every stretch that stays DMA-contiguous on both sides to one DeviceDma.copy.
   */
  private copyRun(d0: number, s0: number, len: number): boolean {
    const mem = this.mem;
    const space = mem.space;
    const dma = mem.dma;
    let dp = Math.floor(d0 / PAGE_SIZE);
    let sp = Math.floor(s0 / PAGE_SIZE);
    let dpo = d0 - dp * PAGE_SIZE;
    let spo = s0 - sp * PAGE_SIZE;
    let dBase = space.pageDma(dp, true);
    let sBase = space.pageDma(sp, false);
    let done = 0;
    while (done < len) {
      if (dBase < 0 || sBase < 0) {
        if (sBase === PAGE_FAULT) {
          mem.translationFault(s0 + done, false);
          return false;
        }
        if (dBase === PAGE_FAULT) {
          mem.translationFault(d0 + done, true);
          return false;
        }
        // A piece up to the nearer page boundary with a side not present: the source reads as zeros, a missing
        // destination drops the write.
        const piece = Math.min(len - done, PAGE_SIZE - Math.max(dpo, spo));
        if (sBase < 0) mem.gttFault(s0 + done, false);
        if (dBase < 0) mem.gttFault(d0 + done, true);
        else {
          const r = dma.fill((dBase + dpo) as Iova, 0, piece);
          if (r !== DMA_OK) {
            mem.iommuFault(d0 + done + r.completed, r.iova, true);
            return false;
          }
        }
        done += piece;
        dpo += piece;
        spo += piece;
        if (dpo === PAGE_SIZE) {
          dpo = 0;
          dBase = done < len ? space.pageDma(++dp, true) : PAGE_NOT_PRESENT;
        }
        if (spo === PAGE_SIZE) {
          spo = 0;
          sBase = done < len ? space.pageDma(++sp, false) : PAGE_NOT_PRESENT;
        }
        continue;
      }
      const dAt = dBase + dpo;
      const sAt = sBase + spo;
      let run = 0;
      for (;;) {
        const piece = Math.min(len - done - run, PAGE_SIZE - Math.max(dpo, spo));
        run += piece;
        dpo += piece;
        spo += piece;
        const more = done + run < len;
        if (dpo === PAGE_SIZE) {
          dpo = 0;
          dBase = more ? space.pageDma(++dp, true) : PAGE_NOT_PRESENT;
        }
        if (spo === PAGE_SIZE) {
          spo = 0;
          sBase = more ? space.pageDma(++sp, false) : PAGE_NOT_PRESENT;
        }
        // Go on while the next byte on both sides follows the run in DMA space (false for a missing page: -1).
        if (done + run === len || dBase + dpo !== dAt + run || sBase + spo !== sAt + run) break;
      }
      const r = dma.copy(dAt as Iova, sAt as Iova, run);
      if (r !== DMA_OK) {
        if (r.access === IOMMU_READ) mem.iommuFault(s0 + done + r.completed, r.iova, false);
        else mem.iommuFault(d0 + done + r.completed, r.iova, true);
        return false;
      }
      done += run;
    }
    return true;
  }
}
