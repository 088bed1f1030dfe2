/**
 * The engine time cost model: how long (in ns of the injected clock) the GPU's engines are busy with the work they
 * execute. The model has no threads: an engine executes its commands synchronously inside the MMIO write that moves
 * RING_TAIL, and this table turns what was executed into busy time, which the engine adds to its timeline
 * (`Engine.busyUntil`) and the host driver uses to complete submissions later on the clock. So the vGPU scheduler and
 * its fairness counters measure engine time that depends on the work, deterministically, whatever the host machine's
 * speed.
 *
 * The figures are order-of-magnitude choices for a gen9 GT2 on dual-channel DDR4 (about 34 GB/s peak), not
 * measurements: every command costs `commandNs` (fetch and decode), plus its own term below. Blits cost a setup time
 * plus their bytes at the blitter's bandwidth (a copy reads and writes every byte, so it is half the fill rate).
 * Faulting accesses cost the same as successful ones. Execlists add a context restore and save per context switch
 * (charged to the incoming context) and a PPGTT walk per TLB miss (four dependent memory reads); flushes with their
 * post-sync writes and semaphore evaluations cost the same in both submission modes. Work of the legacy interface
 * (which uses none of these commands) on a legacy ring costs exactly what it did before they existed.
 */
import { Errno, KernelError } from "../core/index.ts";

export interface CostModel {
  /** Fetch and decode of any command. */
  readonly commandNs: number;
  /** MI_BATCH_BUFFER_START: the prefetcher restarts at a new address. */
  readonly batchStartNs: number;
  /** MI_STORE_DATA_IMM: per dword written. */
  readonly storeNs: number;
  /** MI_LOAD_REGISTER_IMM: per register written. */
  readonly registerWriteNs: number;
  /** MI_USER_INTERRUPT. */
  readonly interruptNs: number;
  /** XY_COLOR_BLT / XY_SRC_COPY_BLT setup. */
  readonly blitSetupNs: number;
  /** XY_COLOR_BLT bandwidth, bytes per ns (= GB/s). */
  readonly fillBytesPerNs: number;
  /** XY_SRC_COPY_BLT bandwidth, bytes per ns (= GB/s). */
  readonly copyBytesPerNs: number;
  /** An execlists context restore plus its save at switch-out (the ring context of the LRC image). */
  readonly contextSwitchNs: number;
  /** A PPGTT walk: four dependent reads of page-table entries (a TLB miss). */
  readonly ppgttWalkNs: number;
  /** MI_FLUSH_DW or PIPE_CONTROL: the flush itself; a post-sync write adds `storeNs` per dword. */
  readonly flushNs: number;
  /** One evaluation of MI_SEMAPHORE_WAIT's condition (poll mode). */
  readonly semaphoreNs: number;
}

export const DEFAULT_COST: CostModel = {
  commandNs: 20,
  batchStartNs: 250,
  storeNs: 40,
  registerWriteNs: 30,
  interruptNs: 50,
  blitSetupNs: 500,
  fillBytesPerNs: 16,
  copyBytesPerNs: 8,
  contextSwitchNs: 1000,
  ppgttWalkNs: 80,
  flushNs: 100,
  semaphoreNs: 40,
};

/** A cost model with some figures overridden; every figure must be a finite number >= 0 (bandwidths > 0). */
export function costModel(overrides: Partial<CostModel> = {}): CostModel {
  const c = { ...DEFAULT_COST, ...overrides };
  for (const [k, v] of Object.entries(c)) {
    const bandwidth = k.endsWith("PerNs");
    if (!Number.isFinite(v) || v < 0 || (bandwidth && v === 0)) {
      throw new KernelError(
        Errno.EINVAL,
        `GPU cost ${k} = ${v}: must be a finite number ${bandwidth ? "> 0" : ">= 0"}`,
      );
    }
  }
  return c;
}
