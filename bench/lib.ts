/**
 * Benchmark helpers: plain timed loops (no per-iteration closures in the measured loop when `batch` is used), each
 * figure printed beside the baseline measured in the same run, so ratios survive a noisy machine. Never used in tests.
 */
export interface Figure {
  readonly suite: string;
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  /** Text comparing against the baseline or the target, e.g. "0.82x raw copy (target >= 0.5)". */
  readonly note?: string;
  /** Whether a stated target was met (undefined: no target). */
  readonly met?: boolean;
}

const figures: Figure[] = [];

export function record(f: Figure): Figure {
  figures.push(f);
  const v = f.value >= 100 ? Math.round(f.value).toLocaleString("en-US") : f.value.toPrecision(4);
  const mark = f.met === undefined ? "" : f.met ? "  [target met]" : "  [TARGET MISSED]";
  console.log(`  ${f.name.padEnd(58)} ${v.padStart(16)} ${f.unit}${f.note ? `  (${f.note})` : ""}${mark}`);
  return f;
}

export function allFigures(): readonly Figure[] {
  return figures;
}

/**
 * Runs `body(n)` (which must perform n operations) with growing n until it takes at least `minMs`, repeats `rounds`
 * times and returns the best rate in operations per second.
 */
export function opsPerSecond(body: (n: number) => void, opts: { minMs?: number; rounds?: number } = {}): number {
  const minMs = opts.minMs ?? 200;
  const rounds = opts.rounds ?? 3;
  let n = 1;
  // Calibrate (also warms up the JIT).
  for (;;) {
    const t0 = performance.now();
    body(n);
    const dt = performance.now() - t0;
    if (dt >= minMs / 4) {
      n = Math.max(1, Math.ceil((n * minMs) / Math.max(dt, 0.001)));
      break;
    }
    n *= 4;
  }
  let best = 0;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    body(n);
    const dt = (performance.now() - t0) / 1000;
    best = Math.max(best, n / dt);
  }
  return best;
}

/** Wall time of one call, in milliseconds (best of `rounds`). */
export function timeMs(fn: () => void, rounds = 3): number {
  let best = Number.POSITIVE_INFINITY;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

export function heapUsedMiB(): number {
  globalThis.gc?.();
  return process.memoryUsage().heapUsed / (1024 * 1024);
}
