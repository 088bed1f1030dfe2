/**
 * Sizes and times as scenario files write them, and as reports print them: "16 GiB", "512MiB", "4096" (bytes);
 * "10 ms", "250us", "1.5 s", or a number of nanoseconds. Parsing is exact (binary units, integers of bytes and of
 * nanoseconds); formatting picks the largest unit that keeps the figure readable.
 *
 * Not handled: decimal (SI) byte units ("16 GB" is rejected, not guessed), negative values.
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

const SIZE_UNITS: Readonly<Record<string, number>> = { B: 1, KiB, MiB, GiB, TiB };
const TIME_UNITS: Readonly<Record<string, number>> = { ns: 1, us: 1e3, ms: 1e6, s: 1e9 };

/** Bytes of "16 GiB" / "1.5 GiB" / "4096" / 4096, or NaN when the text is not a size. */
export function parseSize(v: number | string): number {
  if (typeof v === "number") return Number.isSafeInteger(v) ? v : Number.NaN;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?\s*$/.exec(v);
  if (!m) return Number.NaN;
  const bytes = Number(m[1]) * SIZE_UNITS[m[2] ?? "B"]!;
  return Number.isSafeInteger(bytes) ? bytes : Number.NaN;
}

/** Nanoseconds of "10 ms" / "250us" / "1.5 s" / 1000 (ns), or NaN. */
export function parseTime(v: number | string): number {
  if (typeof v === "number") return Number.isSafeInteger(v) && v >= 0 ? v : Number.NaN;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s)?\s*$/.exec(v);
  if (!m) return Number.NaN;
  const ns = Number(m[1]) * TIME_UNITS[m[2] ?? "ns"]!;
  return Number.isSafeInteger(ns) ? ns : Number.NaN;
}

/** "16 GiB", "1.5 MiB", "4 KiB", "100 B". */
export function formatSize(bytes: number): string {
  const units: readonly [number, string][] = [
    [TiB, "TiB"],
    [GiB, "GiB"],
    [MiB, "MiB"],
    [KiB, "KiB"],
  ];
  for (const [u, name] of units) {
    if (bytes >= u) {
      const v = bytes / u;
      return `${Number.isInteger(v) ? v : v.toFixed(v < 10 ? 2 : 1)} ${name}`;
    }
  }
  return `${bytes} B`;
}

/** "12.345 ms", "850 us", "2.000 s": three significant decimals in the largest unit below the value. */
export function formatTime(ns: number): string {
  if (ns >= 1e9) return `${(ns / 1e9).toFixed(3)} s`;
  if (ns >= 1e6) return `${(ns / 1e6).toFixed(3)} ms`;
  if (ns >= 1e3) return `${(ns / 1e3).toFixed(1)} us`;
  return `${ns} ns`;
}

/** "t=12.345 ms" with a fixed-width millisecond figure: step lines in a report line up. */
export function formatStamp(ns: number): string {
  return `t=${(ns / 1e6).toFixed(3).padStart(8)} ms`;
}

/** "87.5%" */
export function formatPercent(fraction: number): string {
  return Number.isFinite(fraction) ? `${(fraction * 100).toFixed(1)}%` : "-";
}
