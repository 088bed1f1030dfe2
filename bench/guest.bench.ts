/**
 * The guest GPU driver end to end (src/guest on the real stack: VMM, vfio, type1, the vGPU's mediation, the GPU
 * model), each figure beside its baseline measured in the same run: the same guest driver on the whole GPU passed
 * through with vfio-pci (no mediation: no trapped ring, no command scan, no shadow batch, no scheduler).
 * - submit + wait of one small fill (64 x 64 px), in host wall time: the per-submission cost of the whole path
 *   (ring writes through guest memory, TAIL trap, scan, schedule, execute, interrupt injection, handler);
 * - a pipelined batch workload (16 fills of 256 x 256 px per batch buffer, up to 4 batches in flight), in guest time:
 *   the bandwidth the guest sees, which the cost model and the vGPU scheduler's slices decide. Baseline: the engine's
 *   nominal fill rate (the cost model's fillBytesPerNs). The whole GPU is no baseline here: its engine runs inside
 *   the TAIL write and raises MI_USER_INTERRUPT at once, so a passthrough guest sees its work take no guest time.
 * And the same guest driver on execlists (a context per engine, PPGTT addresses, one ELSP per submission) on a vGPU
 * whose host driver submits through execlists: the shadow context, the PPGTT re-walk and the context switch of every
 * submission, beside the legacy-ring vGPU above.
 * Tracing is off.
 */
import { DEFAULT_COST } from "../src/gpu/index.ts";
import { CommandBuffer } from "../src/guest/commands.ts";
import { GuestGpuDriver } from "../src/guest/driver.ts";
import { PassthroughStack, VgpuStack } from "../src/guest/test-support/real-stack.ts";
import { runWorkload } from "../src/guest/workloads.ts";
import { opsPerSecond, record } from "./lib.ts";

const SUITE = "guest";

function submitRate(d: GuestGpuDriver): number {
  const t = d.allocBuffer(64 * 64 * 4);
  const cmds = new CommandBuffer().colorBlt(d.gpuAddress(t), 256, 0, 0, 64, 64, 0x12345678);
  return opsPerSecond((n) => {
    for (let i = 0; i < n; i++) {
      if (d.run("bcs", cmds.words) !== "completed") throw new Error("fill did not complete");
    }
  });
}

function guestBandwidth(d: GuestGpuDriver, opsPerSubmission = 16): number {
  const r = runWorkload(d, {
    kind: "fill",
    via: "batch",
    count: 128,
    opsPerSubmission,
    width: 256,
    height: 256,
    seed: 1,
  });
  if (!r.ok) throw new Error("workload failed");
  return r.bytes / r.elapsedNs; // bytes per ns = GB/s
}

export async function run(): Promise<void> {
  const vs = new VgpuStack();
  const vgpu = GuestGpuDriver.open(vs.startGuest(vs.createVgpu()).platform);
  const ps = new PassthroughStack();
  const whole = GuestGpuDriver.open(ps.startGuest().platform);

  const base = submitRate(whole);
  const med = submitRate(vgpu);
  record({ suite: SUITE, name: "submit+wait 64x64 fill, whole GPU (baseline)", value: base, unit: "ops/s" });
  record({
    suite: SUITE,
    name: "submit+wait 64x64 fill, vGPU",
    value: med,
    unit: "ops/s",
    note: `${(med / base).toFixed(2)}x the whole GPU in host time`,
  });

  const xs = new VgpuStack({ submission: "execlists" });
  const execlists = GuestGpuDriver.open(xs.startGuest(xs.createVgpu()).platform, { submission: "execlists" });
  const exe = submitRate(execlists);
  record({
    suite: SUITE,
    name: "submit+wait 64x64 fill, vGPU, guest on execlists (PPGTT)",
    value: exe,
    unit: "ops/s",
    note: `${(exe / med).toFixed(2)}x the legacy-ring vGPU, ${(exe / base).toFixed(2)}x the whole GPU in host time`,
  });

  const nominal = DEFAULT_COST.fillBytesPerNs;
  const bwExe = guestBandwidth(execlists);
  const bwMed = guestBandwidth(vgpu);
  const bwExe1 = guestBandwidth(execlists, 1);
  const bwMed1 = guestBandwidth(vgpu, 1);
  record({
    suite: SUITE,
    name: "batched fills, guest-time bandwidth, vGPU",
    value: bwMed,
    unit: "GB/s",
    note: `${(bwMed / nominal).toFixed(2)}x the engine's nominal ${nominal} GB/s fill rate (gVirt: up to 0.95 of native)`,
  });
  record({
    suite: SUITE,
    name: "batched fills, guest-time bandwidth, vGPU, guest on execlists",
    value: bwExe,
    unit: "GB/s",
    note:
      `${(bwExe / bwMed).toFixed(2)}x the legacy-ring vGPU's: 16 fills of one surface per submission, so one TLB ` +
      "refill and one context switch per 16 fills (measured to the guest's 100 us wait steps)",
  });
  record({
    suite: SUITE,
    name: "one fill per submission, guest-time bandwidth, vGPU (legacy ring)",
    value: bwMed1,
    unit: "GB/s",
  });
  record({
    suite: SUITE,
    name: "one fill per submission, guest-time bandwidth, guest on execlists",
    value: bwExe1,
    unit: "GB/s",
    note: `${(bwExe1 / bwMed1).toFixed(2)}x the legacy ring's: a context switch and a PPGTT re-walk per fill`,
  });
}
