/**
 * `npm run bench`: runs every suite (or those named on the command line) and prints figures with their baselines.
 * Record the output in BENCHMARKS.md with the date and the machine.
 */
import { cpus, totalmem } from "node:os";
import { allFigures } from "./lib.ts";

type Suite = { name: string; load: () => Promise<{ run: () => Promise<void> | void }> };

const suites: Suite[] = [
  { name: "iova", load: () => import("./iova.bench.ts") },
  { name: "iommu", load: () => import("./iommu.bench.ts") },
  { name: "memory", load: () => import("./memory.bench.ts") },
  { name: "vfio", load: () => import("./vfio.bench.ts") },
  { name: "vfio-user", load: () => import("./vfio-user.bench.ts") },
  { name: "vmm", load: () => import("./vmm.bench.ts") },
  { name: "guest", load: () => import("./guest.bench.ts") },
  { name: "vgpu", load: () => import("./vgpu.bench.ts") },
  { name: "gpu", load: () => import("./gpu.bench.ts") },
  { name: "scenario", load: () => import("./scenario.bench.ts") },
  { name: "compare", load: () => import("./compare.bench.ts") },
];

const wanted = process.argv.slice(2);
const cpu = cpus()[0]?.model ?? "unknown cpu";
console.log(`vgpu-mdev benchmarks — ${new Date().toISOString().slice(0, 10)} — node ${process.version}`);
console.log(`machine: ${cpus().length} x ${cpu}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB\n`);
for (const s of suites) {
  if (wanted.length > 0 && !wanted.includes(s.name)) continue;
  console.log(`[${s.name}]`);
  const mod = await s.load();
  await mod.run();
  console.log();
}
const missed = allFigures().filter((f) => f.met === false);
console.log(missed.length === 0 ? "all stated targets met" : `${missed.length} target(s) missed`);
