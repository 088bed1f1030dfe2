/**
 * A by-hand harness for the real-guest check of the vGPU's execlist path (README "A real Linux guest"): serves one
 * vGPU over vfio-user as `vgpu serve` does, but from a host assembled here with what `vgpu serve` does not offer yet:
 * - the i915-like host driver in execlists mode (`createGpu(..., { submission: "execlists" })`): guest contexts run;
 * - a SystemClock: the model's completions (engine busy time, the scheduler's slices) happen in real time (`vgpu
 *   serve`'s host runs on a VirtualClock that nothing advances, so no submission would ever complete);
 * - the scenario's isolation checker on the GPU, bound to the vfio-user session's process once the client has
 *   negotiated, and a summary on stderr when the client leaves: DMA pieces checked, violations, the vGPU's figures.
 *
 * Usage (the arguments of `vgpu serve`): node --import tsx test/support/serve-gvt.ts --type i915-GVTg_V5_4
 * --socket PATH [--once] [--trace] [--trace-filter PREFIX,...]. Prints "vgpu serve: serving ..." on stdout when
 * ready, as `vgpu serve` does, so scripts/guest/run.sh's wait works with it.
 *
 * Not a test and not exported: what `vgpu serve` should gain is written in the final report of the session that
 * added it (a `submission` option of the gvt parent kind, and a real clock for served hosts).
 */
import { parseArgs } from "node:util";
import { formatTrace, hex, SystemClock } from "../../src/core/index.ts";
import { createGpu, GT_ENGINES } from "../../src/gpu/index.ts";
import { GiB, Host } from "../../src/host/index.ts";
import { MdevCore } from "../../src/mdev/index.ts";
import { describeViolation, type GpuInstance, IsolationChecker } from "../../src/scenario/index.ts";
import { type1Driver, VfioCore } from "../../src/vfio/index.ts";
import { VfioUserServer } from "../../src/vfio-user/index.ts";
import { GvtParent } from "../../src/vgpu/index.ts";

const { values: o } = parseArgs({
  options: {
    type: { type: "string" },
    socket: { type: "string" },
    uuid: { type: "string", default: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001" },
    once: { type: "boolean", default: false },
    trace: { type: "boolean", default: false },
    "trace-filter": { type: "string" },
  },
});
if (o.type === undefined || o.socket === undefined) {
  process.stderr.write("usage: serve-gvt.ts --type i915-GVTg_V5_4 --socket PATH [--once] [--trace]\n");
  process.exit(2);
}
const log = (line: string): void => {
  process.stderr.write(`vgpu serve: ${line}\n`);
};

const clock = new SystemClock();
const host = new Host({ memoryBytes: 16 * GiB, iommu: { enabled: true }, seed: 1, clock });
if (o.trace) {
  const filter = o["trace-filter"]?.split(",");
  host.tracer.subscribe((r) => {
    if (filter === undefined || filter.some((f) => r.name.startsWith(f))) log(formatTrace(r));
  });
}
const vfio = new VfioCore({ devfs: host.devfs, pci: host.pci, iommu: host.iommu, tracer: host.tracer });
vfio.registerIommuDriver(type1Driver({ iommu: host.iommu, physmem: host.physmem, tracer: host.tracer }));
const mdev = new MdevCore({ sysfs: host.sysfs, vfio, tracer: host.tracer });
const created = createGpu(host, { submission: "execlists" });
const parent = new GvtParent({ gpu: created.driver, clock, tracer: host.tracer });
mdev.registerParent(parent);
const typeId = o.type.replace(/^i915-/, "");
mdev.create(parent.parentName, typeId, o.uuid);
const vgpu = parent.vgpu(o.uuid)!;
const inst: GpuInstance = {
  name: "gpu0",
  bdf: created.driver.bdf,
  driver: "i915",
  gpu: created.gpu,
  group: created.group,
  hostDriver: created.driver,
  parent,
};
const checker = new IsolationChecker({ host });
checker.watch(inst);
const info = mdev.device(o.uuid)!;
const server = VfioUserServer.listen({ socketPath: o.socket, host, group: info.group, device: o.uuid });
process.stdout.write(`vgpu serve: serving ${o.type} ${o.uuid} on ${server.socketPath}\n`);

let bound = false;
const bind = setInterval(() => {
  const pid = server.state().pid;
  if (pid === undefined || bound) return;
  bound = true;
  checker.bindVgpu("gpu0", vgpu.id, "guest", pid, vgpu.scratch.pfn);
  log(`isolation checker bound vgpu${vgpu.id} to the session's process ${pid}`);
}, 20);

function summary(): void {
  const c = checker.stats("gpu0", vgpu.id);
  const all = checker.checked;
  log(
    `isolation checker: ${all.pieces} DMA piece(s), ${all.bytes} bytes checked; vgpu${vgpu.id}: ${c.pieces} piece(s), ` +
      `${c.violations} violation(s); total violations ${checker.violationCount}`,
  );
  for (const v of checker.violations()) log(`  violation: ${describeViolation(v)}`);
  const st = vgpu.stats();
  log(
    `vgpu${vgpu.id}: contexts ${JSON.stringify(st.contexts)}, ppgtt ${JSON.stringify(st.ppgtt)}, failsafe ` +
      `${st.failsafe === undefined ? "no" : `${st.failsafe.reason}: ${st.failsafe.detail}`}, pinned ${st.pinnedPages}`,
  );
  for (const e of GT_ENGINES) {
    const x = st.execlists[e];
    const h = created.driver.engineStats(e);
    log(
      `  ${e}: virtual execlist ${x.submissions} ELSP, ${x.completed} completed, ${x.failed} failed, ${x.rejected} ` +
        `rejected, ${x.csbEvents} CSB; host ${h.submissions} submission(s), ${h.commands} command(s), ${h.errors} error(s)`,
    );
  }
  log(`rejected legacy submissions ${st.rejectedCommands}, scratch page ${hex(vgpu.scratch.dmaAddr)}`);
}

const stop = (why: string): void => {
  log(`stopping (${why})`);
  clearInterval(bind);
  summary();
  server.close();
  process.exit(0);
};
process.once("SIGINT", () => stop("SIGINT"));
process.once("SIGTERM", () => stop("SIGTERM"));
server.onDisconnect((id, reason) => {
  log(`client connection ${id} ended: ${reason}`);
  if (o.once) stop("the client left (--once)");
});
