/**
 * Named trace events: one event per state change a user would want to see, in the manner of QEMU's trace-events.
 *
 * Each layer declares its events twice, once for the compiler and once for people:
 *
 * ```ts
 * declare module "../core/trace.ts" {
 *   interface TraceEventMap { "iova.alloc": { domain: number; pfnLo: number; pages: number } }
 * }
 * defineTraceEvents("host", { "iova.alloc": "domain {domain}: allocated {pages} page(s) at pfn {pfnLo}" });
 * ```
 *
 * `Tracer.emit` is then checked against the declared fields. The tracer keeps nothing itself; sinks (a
 * `TraceRecorder` in tests, the dashboard's stream, a JSON-lines file) subscribe. With no sink attached `enabled` is
 * false and hot paths skip building the fields object at all: `if (tracer.enabled) tracer.emit(...)`.
 */
import type { Clock } from "./clock.ts";

/** Augmented by every layer with its events (declaration merging). */
// biome-ignore lint/suspicious/noEmptyInterface: filled by declaration merging in each layer
export interface TraceEventMap {}

export type TraceName = keyof TraceEventMap & string;
export type TraceFieldValue = number | string | boolean | null | readonly number[] | readonly string[];
export type TraceFields = Readonly<Record<string, TraceFieldValue | undefined>>;

export interface TraceRecord<N extends TraceName = TraceName> {
  /** Position in this tracer's stream, from 0. */
  readonly seq: number;
  /** Clock time in ns. */
  readonly time: number;
  readonly name: N;
  readonly fields: TraceEventMap[N];
}

export interface TraceEventInfo {
  readonly name: string;
  readonly layer: string;
  /** A format with {field} placeholders: the line a person reads. */
  readonly format: string;
}

const catalogue = new Map<string, TraceEventInfo>();

/** Declares a layer's events and their human formats; the catalogue is what the dashboard and `vgpu trace` list. */
export function defineTraceEvents(layer: string, formats: Readonly<Record<string, string>>): void {
  for (const [name, format] of Object.entries(formats)) catalogue.set(name, { name, layer, format });
}

export function traceCatalogue(): readonly TraceEventInfo[] {
  return [...catalogue.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/** Renders a record through its declared format: "iova.alloc domain 1: allocated 1 page(s) at pfn 0xfffff". */
export function formatTrace(r: TraceRecord): string {
  const info = catalogue.get(r.name);
  const fields = r.fields as unknown as Record<string, unknown>;
  if (!info) return `${r.name} ${JSON.stringify(fields)}`;
  return `${r.name} ${info.format.replace(/\{(\w+)\}/g, (_, k: string) => {
    const v = fields[k];
    return typeof v === "number" && (k.toLowerCase().endsWith("addr") || /iova|gpa|hva|hpa|gma|pfn|gfn/i.test(k))
      ? `0x${v.toString(16)}`
      : String(v);
  })}`;
}

export type TraceSink = (record: TraceRecord) => void;

export class Tracer {
  private sinks: TraceSink[] = [];
  private seq = 0;
  /** True while at least one sink listens; hot paths test it before building fields. */
  enabled = false;

  constructor(private readonly clock: Clock) {}

  emit<N extends TraceName>(name: N, fields: TraceEventMap[N]): void {
    if (!this.enabled) return;
    const record: TraceRecord<N> = { seq: this.seq++, time: this.clock.now(), name, fields };
    for (const s of this.sinks) s(record as unknown as TraceRecord);
  }

  /** Adds a sink; returns the function that removes it. */
  subscribe(sink: TraceSink): () => void {
    this.sinks.push(sink);
    this.enabled = true;
    return () => {
      this.sinks = this.sinks.filter((s) => s !== sink);
      this.enabled = this.sinks.length > 0;
    };
  }
}

/** Keeps records in memory (bounded) for tests, reports and the dashboard. */
export class TraceRecorder {
  readonly records: TraceRecord[] = [];
  private detach: (() => void) | undefined;
  dropped = 0;

  constructor(
    tracer?: Tracer,
    private readonly capacity = 1_000_000,
  ) {
    if (tracer) this.attach(tracer);
  }

  attach(tracer: Tracer): this {
    this.detach?.();
    this.detach = tracer.subscribe((r) => {
      if (this.records.length >= this.capacity) {
        this.records.shift();
        this.dropped++;
      }
      this.records.push(r);
    });
    return this;
  }

  stop(): void {
    this.detach?.();
    this.detach = undefined;
  }

  clear(): void {
    this.records.length = 0;
  }

  /** Records of one event name, typed. */
  named<N extends TraceName>(name: N): TraceRecord<N>[] {
    return this.records.filter((r): r is TraceRecord<N> => r.name === name) as TraceRecord<N>[];
  }

  count(name: TraceName): number {
    let n = 0;
    for (const r of this.records) if (r.name === name) n++;
    return n;
  }

  /** One JSON object per line: {"seq","time","name",...fields}. */
  toJsonLines(): string {
    return this.records
      .map((r) => JSON.stringify({ seq: r.seq, time: r.time, name: r.name, ...(r.fields as object) }))
      .join("\n");
  }
}
