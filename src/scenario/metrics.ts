/**
 * The figures a scenario's `check` step can ask for (schema.ts `CheckMetric`), of one VM or of the whole host, read
 * from the structure that holds each: the VMM process's address space (pinned pages, locked memory), the vGPU's own
 * statistics (IOVAs, shadow entries, scratch fallbacks, rejected commands, rejected contexts), the isolation checker (faults and
 * violations in the VM's context), the runner's records (workloads that failed, VMs alive).
 *
 * A host-wide figure is the host's own where it has one (pinned frames, violations over every context, workloads
 * failed, VMs running), else the sum over the VMs.
 *
 * What it does not do: compare (the check step does), or change anything.
 */
import { Errno, KernelError, PAGE_SIZE } from "../core/index.ts";
import type { Host } from "../host/index.ts";
import type { VgpuStats } from "../vgpu/index.ts";
import type { IsolationChecker } from "./checker.ts";
import type { CheckMetric } from "./schema.ts";
import type { VmRun } from "./vm-run.ts";

/**
 * Guest contexts the vendor driver refused: ELSP writes it rejected (a malformed descriptor) plus workloads it would
 * not run, at every stage (context, PPGTT, ring, command, host).
 */
export function rejectedContexts(st: VgpuStats): number {
  let n = 0;
  for (const e of Object.values(st.execlists)) n += e.rejected;
  if (st.contexts !== undefined) for (const k of Object.values(st.contexts.rejected)) n += k;
  return n;
}

/** What the metrics read: the VMs, the checker, the host. */
export interface MetricSources {
  readonly vms: ReadonlyMap<string, VmRun>;
  readonly checker: IsolationChecker;
  readonly host: Host;
}

/** A check metric of VM `vm`, or of the whole host when `vm` is undefined (ENOENT: no such VM). */
export function metricOf(src: MetricSources, vm: string | undefined, m: CheckMetric): number {
  const { host, checker } = src;
  if (vm === undefined) {
    switch (m) {
      case "violations":
        return checker.violationCount;
      case "pinnedPages":
        return host.physmem.stats().pinnedFrames;
      case "workloadsFailed":
        return [...src.vms.values()].reduce((n, v) => n + v.workloads.filter((w) => !w.ok).length, 0);
      case "alive":
        return [...src.vms.values()].filter((v) => v.state === "running").length;
      default: {
        let n = 0;
        for (const v of src.vms.keys()) n += metricOf(src, v, m);
        return n;
      }
    }
  }
  const v = src.vms.get(vm);
  if (v === undefined) throw new KernelError(Errno.ENOENT, `no VM "${vm}" in this run`);
  const st = v.vgpu?.stats();
  const mm = v.vmm?.process.mm;
  const ctx = v.gpu !== undefined ? checker.stats(v.gpu.name, v.vgpu?.id) : undefined;
  switch (m) {
    case "alive":
      return v.state === "running" ? 1 : 0;
    case "pinnedPages":
      return mm?.stats().pinnedPages ?? 0;
    case "lockedBytes":
      return (mm?.lockedVm() ?? 0) * PAGE_SIZE;
    case "iovas":
      return st !== undefined
        ? st.iovasMapped
        : v.gpu !== undefined && v.state === "running"
          ? (mm?.lockedVm() ?? 0)
          : 0;
    case "shadowEntries":
      return st?.shadowEntries ?? 0;
    case "scratchFallbacks":
      return st?.scratchFallbacks ?? 0;
    case "rejectedCommands":
      return st?.rejectedCommands ?? 0;
    case "rejectedContexts":
      return st !== undefined ? rejectedContexts(st) : 0;
    case "faults":
      return (ctx?.gttFaults ?? 0) + (ctx?.iommuFaults ?? 0);
    case "violations":
      return ctx?.violations ?? 0;
    case "workloadsFailed":
      return v.workloads.filter((w) => !w.ok).length;
  }
}
