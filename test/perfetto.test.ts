/**
 * `--perfetto FILE`: the Chrome Trace Event JSON is well formed (phases, nesting of complete slices, matched async
 * pairs, flow ids with one start and one finish bound to a slice at the same place) and a trace of the demo carries
 * the full chain of its explained access: guest GTT write -> vfio_pin_pages -> dma_map_page -> shadow entry -> engine
 * DMA -> IOMMU translation, in that order.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { before, describe, it } from "node:test";
import { addRun, PerfettoCollector } from "../src/cli/commands/perfetto.ts";
import { parseScenario, runWithReport } from "../src/scenario/index.ts";
import { type ChromeTrace, type ChromeTraceEvent, ChromeTraceWriter } from "../src/trace-export/index.ts";

const PHASES = new Set(["X", "i", "C", "M", "b", "e", "s", "t", "f"]);

/** Every structural rule of the format that the two viewers rely on; returns the problems found. */
function formatProblems(t: ChromeTrace): string[] {
  const out: string[] = [];
  const named = new Set<string>();
  for (const e of t.traceEvents) if (e.ph === "M" && e.name === "thread_name") named.add(`${e.pid}/${e.tid}`);
  const slices = new Map<string, ChromeTraceEvent[]>();
  const asyncOpen = new Map<string, ChromeTraceEvent>();
  const flows = new Map<number, ChromeTraceEvent[]>();
  for (const e of t.traceEvents) {
    if (!PHASES.has(e.ph)) out.push(`phase ${e.ph}`);
    if (typeof e.name !== "string" || !(e.ts >= 0) || !Number.isInteger(e.pid) || !Number.isInteger(e.tid)) {
      out.push(`bad event ${JSON.stringify(e)}`);
    }
    const where = `${e.pid}/${e.tid}`;
    if (e.ph !== "M" && e.ph !== "C" && !named.has(where)) out.push(`${e.ph} ${e.name} on unnamed track ${where}`);
    if (e.ph === "X") {
      if (!(typeof e.dur === "number" && e.dur >= 0)) out.push(`X ${e.name} without dur`);
      const list = slices.get(where) ?? [];
      list.push(e);
      slices.set(where, list);
    }
    if (e.ph === "b") asyncOpen.set(`${e.cat}/${e.id}`, e);
    if (e.ph === "e") {
      const b = asyncOpen.get(`${e.cat}/${e.id}`);
      if (b === undefined || b.ts > e.ts) out.push(`async end ${e.name} ${e.id} without its begin`);
      asyncOpen.delete(`${e.cat}/${e.id}`);
    }
    if (e.ph === "s" || e.ph === "t" || e.ph === "f") {
      const list = flows.get(e.id!) ?? [];
      list.push(e);
      flows.set(e.id!, list);
    }
  }
  if (asyncOpen.size > 0) out.push(`${asyncOpen.size} async slice(s) never ended`);
  for (const [where, list] of slices) {
    const stack: number[] = [];
    for (const e of [...list].sort((a, b) => a.ts - b.ts || b.dur! - a.dur!)) {
      while (stack.length > 0 && stack[stack.length - 1]! <= e.ts) stack.pop();
      const end = e.ts + e.dur!;
      if (stack.length > 0 && end > stack[stack.length - 1]! + 1e-9)
        out.push(`${where}: ${e.name} overlaps its parent`);
      stack.push(end);
    }
  }
  for (const [id, list] of flows) {
    const phases = list.map((e) => e.ph).join("");
    if (!/^st*f$/.test(phases)) out.push(`flow ${id}: phases ${phases}`);
    for (let i = 1; i < list.length; i++) if (list[i]!.ts < list[i - 1]!.ts) out.push(`flow ${id} goes back in time`);
    for (const e of list) {
      const bound = (slices.get(`${e.pid}/${e.tid}`) ?? []).some((x) => x.ts <= e.ts && e.ts <= x.ts + x.dur!);
      if (!bound) out.push(`flow ${id} ${e.ph} at ${e.ts} binds to no slice`);
    }
  }
  return out;
}

describe("Chrome trace writer", () => {
  it("spreads records of one instant, keeps order, and draws engine slices, counters and flows", () => {
    const w = new ChromeTraceWriter();
    w.beginProcess("t");
    const recs = [
      { seq: 0, time: 0, name: "proc.spawn", pid: 1000, comm: "qemu-vm1" },
      { seq: 1, time: 0, name: "mm.pin", pid: 1000, addr: 0, pages: 3, write: true },
      {
        seq: 2,
        time: 0,
        name: "dma.map",
        bdf: "0000:00:02.0",
        iova: 4096,
        hpa: 8192,
        size: 4096,
        dir: "bidirectional",
      },
      { seq: 3, time: 10, name: "gpu.exec", bdf: "0000:00:02.0", engine: "bcs", commands: 2, busyNs: 500, head: 0 },
      {
        seq: 4,
        time: 20,
        name: "iommu.walk",
        bdf: "0000:00:02.0",
        iova: 4096,
        hpa: 8192,
        level: 1,
        iotlbHits: 3,
        iotlbMisses: 1,
      },
    ];
    for (const r of recs) w.add(r);
    w.addChain("x", [
      { label: "map", seq: 2 },
      { label: "dma", seq: 3 },
      { label: "walk", seq: 4 },
    ]);
    const t = w.toJSON();
    assert.deepEqual(formatProblems(t), []);
    const pin = t.traceEvents.find((e) => e.name === "pin_user_pages")!;
    const map = t.traceEvents.find((e) => e.name === "dma_map_page")!;
    assert.ok(map.ts > pin.ts, "records of one instant keep their order");
    const exec = t.traceEvents.filter((e) => e.name === "gpu.exec");
    assert.deepEqual(
      exec.map((e) => e.ph),
      ["b", "e"],
    );
    assert.equal(exec[1]!.ts - exec[0]!.ts, 0.5);
    assert.deepEqual(t.traceEvents.find((e) => e.name === "IOTLB hit rate")?.args, { percent: 75 });
    assert.deepEqual(t.traceEvents.find((e) => e.name === "pinned pages")?.args, { pages: 3 });
    const vm = t.traceEvents.find((e) => e.ph === "M" && e.args?.name === "VM vm1");
    assert.ok(vm, "a process's records go to its VM's track");
  });

  it("a chain stage without a record is an error, not a dangling flow", () => {
    const w = new ChromeTraceWriter();
    w.add({ seq: 0, time: 0, name: "dma.map", bdf: "b", iova: 0, hpa: 0, size: 4096, dir: "x" });
    assert.throws(
      () =>
        w.addChain("x", [
          { label: "a", seq: 0 },
          { label: "b", seq: 99 },
        ]),
      /stage b has no record/,
    );
  });
});

describe("vgpu demo --perfetto", () => {
  let trace: ChromeTrace;
  before(() => {
    const file = new URL("../scenarios/demo.json", import.meta.url);
    const scenario = parseScenario(JSON.parse(readFileSync(file, "utf8")), "scenarios/demo.json");
    const c = new PerfettoCollector();
    const { run } = runWithReport(scenario, { traceLine: c.line });
    const w = new ChromeTraceWriter();
    addRun(w, "demo", c, run);
    trace = JSON.parse(JSON.stringify(w.toJSON())) as ChromeTrace;
  });

  it("is valid Chrome Trace Event JSON", () => {
    assert.equal(trace.displayTimeUnit, "ns");
    assert.deepEqual(formatProblems(trace), []);
  });

  it("has a track per VM, vGPU, engine and the IOMMU, and the counters", () => {
    const tracks = trace.traceEvents
      .filter((e) => e.ph === "M" && e.name === "thread_name")
      .map((e) => String(e.args!.name));
    for (const want of [/^VM vm1$/, /^vgpu1 \(vm1\)$/, /^engine (rcs|bcs)/, /^IOMMU$/, /^GPU scheduler$/]) {
      assert.ok(
        tracks.some((t) => want.test(t)),
        `a track matching ${want}: ${tracks.join(", ")}`,
      );
    }
    const counters = new Set(trace.traceEvents.filter((e) => e.ph === "C").map((e) => e.name));
    for (const c of ["pinned pages", "IOVA space (pages)", "IOTLB hit rate"]) assert.ok(counters.has(c), c);
    const names = new Set(trace.traceEvents.map((e) => e.name));
    for (const n of ["dma_map_page", "vfio_pin_pages", "pin_user_pages", "inject_msi", "map", "qi_submit (iotlb)"]) {
      assert.ok(names.has(n), `an event named after the tracepoint ${n}`);
    }
    assert.ok(
      trace.traceEvents.some((e) => e.ph === "b" && e.cat === "attack"),
      "the attack step",
    );
  });

  it("links the explained access end to end, in the chain's order", () => {
    const stages = trace.traceEvents
      .filter((e) => e.ph === "X" && e.cat === "chain" && String(e.args?.chain).endsWith("(explained)"))
      .filter((e) => String(e.args?.chain).startsWith("vm1 "));
    assert.deepEqual(
      stages.map((e) => e.name),
      [
        "guest writes the GTT entry (GMA -> GPA)",
        "vfio_pin_pages (GPA -> HPA)",
        "dma_map_page (HPA -> IOVA)",
        "shadow entry (GMA -> IOVA)",
        "engine DMA at the IOVA",
        "IOMMU translation (IOVA -> HPA)",
      ],
    );
    assert.deepEqual(
      stages.slice(0, 4).map((e) => e.args?.event),
      ["vgpu.gtt.write", "vfio.type1.pin", "iommu.map", "vgpu.gtt.shadow"].map((n, i) =>
        i === 2 ? e2(stages[2]!) : n,
      ),
    );
    for (let i = 1; i < stages.length; i++) assert.ok(stages[i]!.ts >= stages[i - 1]!.ts);
  });

  it("also links the first access whose six stages the run itself made (a real engine DMA and IOMMU walk)", () => {
    const stages = trace.traceEvents.filter(
      (e) => e.ph === "X" && e.cat === "chain" && String(e.args?.chain).endsWith("(first complete access)"),
    );
    assert.equal(stages.length, 6);
    assert.match(
      String(stages[4]!.args?.event),
      /^(gpu\.ppgtt\.gma_translate|gpu\.ring\.tail|gpu\.execlist\.in|i915\.(context\.)?submit)$/,
    );
    assert.match(String(stages[5]!.args?.event), /iommu\.walk|ats\.translate/);
  });
});

/** The map stage is dma_map_page's record or the IOMMU map under it, whichever came last. */
function e2(e: ChromeTraceEvent): string {
  const ev = String(e.args?.event);
  assert.ok(ev === "dma.map" || ev === "iommu.map", ev);
  return ev;
}
