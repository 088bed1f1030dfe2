/**
 * Injected time. Nothing in the model reads the wall clock: every component takes a `Clock`, so a run with a
 * `VirtualClock` is replayable event for event. Time is in nanoseconds (a number: exact for 104 days).
 */
export interface Clock {
  /** Nanoseconds since the clock's epoch. */
  now(): number;
}

export interface TimerHandle {
  cancel(): void;
}

/** A clock that can also run callbacks at a future time: what schedulers and delayed work (IOVA depot trim) use. */
export interface SchedulingClock extends Clock {
  /** Runs `fn` when the clock reaches `atNs` (or at once on the next advance if already past). */
  at(atNs: number, fn: () => void): TimerHandle;
  after(delayNs: number, fn: () => void): TimerHandle;
}

export const NS_PER_US = 1_000;
export const NS_PER_MS = 1_000_000;
export const NS_PER_S = 1_000_000_000;

interface Timer {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/**
 * Deterministic time that moves only when told to. Timers fire in (time, insertion order) order during `advance`,
 * and the clock reads the timer's time while its callback runs.
 */
export class VirtualClock implements SchedulingClock {
  private nowNs: number;
  private seq = 0;
  private timers: Timer[] = [];

  constructor(startNs = 0) {
    this.nowNs = startNs;
  }

  now(): number {
    return this.nowNs;
  }

  at(atNs: number, fn: () => void): TimerHandle {
    const t: Timer = { at: Math.max(atNs, this.nowNs), seq: this.seq++, fn, cancelled: false };
    // Insert sorted; timer counts are small (one per scheduler or cache), so a linear insert is fine.
    let i = this.timers.length;
    while (i > 0) {
      const prev = this.timers[i - 1]!;
      if (prev.at < t.at || (prev.at === t.at && prev.seq < t.seq)) break;
      i--;
    }
    this.timers.splice(i, 0, t);
    return {
      cancel: () => {
        t.cancelled = true;
      },
    };
  }

  after(delayNs: number, fn: () => void): TimerHandle {
    return this.at(this.nowNs + delayNs, fn);
  }

  /** Moves time forward by `deltaNs`, firing every timer due on the way. */
  advance(deltaNs: number): void {
    if (!(deltaNs >= 0)) throw new RangeError(`VirtualClock.advance: delta must be >= 0, got ${deltaNs}`);
    this.advanceTo(this.nowNs + deltaNs);
  }

  advanceTo(targetNs: number): void {
    for (;;) {
      const t = this.timers[0];
      if (!t || t.at > targetNs) break;
      this.timers.shift();
      if (t.cancelled) continue;
      this.nowNs = t.at;
      t.fn();
    }
    if (targetNs > this.nowNs) this.nowNs = targetNs;
  }

  /** Number of timers not yet fired or cancelled. */
  pending(): number {
    return this.timers.filter((t) => !t.cancelled).length;
  }
}

/** Real monotonic time, for the daemon and benchmarks. Timers use the Node event loop. */
export class SystemClock implements SchedulingClock {
  private readonly origin = process.hrtime.bigint();
  now(): number {
    return Number(process.hrtime.bigint() - this.origin);
  }
  at(atNs: number, fn: () => void): TimerHandle {
    return this.after(atNs - this.now(), fn);
  }
  after(delayNs: number, fn: () => void): TimerHandle {
    const h = setTimeout(fn, Math.max(0, delayNs / NS_PER_MS));
    h.unref();
    return { cancel: () => clearTimeout(h) };
  }
}
