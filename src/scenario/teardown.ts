/**
 * The end of a scenario: every VM shut down (or killed, if its shutdown fails), every mdev removed through sysfs, the
 * isolation checker detached, and then the audit: the host must hold nothing of the run. No pinned frame, no open vfio
 * container or device, no VMM process alive, no locked memory left in any VMM, each GPU's DMA mappings back to what
 * the host driver held right after boot, no vGPU left on any GPU. Each finding is a sentence in `problems`; the
 * outcome is a `scenario.teardown` trace event and a `TeardownResult`.
 *
 * What it does not do: stop a VM itself (the runner's `stopVm` does, with the guest driver's orderly shutdown), or
 * throw for a problem (a teardown always finishes; problems are reported).
 *
 * Invariant: after `tearDown`, no VM of the run is running and every mdev it created is removed or named in a problem.
 */
import { defineTraceEvents, isKernelError } from "../core/index.ts";
import type { IsolationChecker } from "./checker.ts";
import type { System } from "./system.ts";
import type { VmRun } from "./vm-run.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "scenario.teardown": { clean: boolean; problems: readonly string[] };
  }
}
defineTraceEvents("scenario", {
  "scenario.teardown": "teardown: clean {clean} {problems}",
});

export interface TeardownResult {
  readonly clean: boolean;
  readonly problems: readonly string[];
}

/** What a teardown works on. */
export interface TeardownSubject {
  readonly system: System;
  readonly vms: ReadonlyMap<string, VmRun>;
  readonly checker: IsolationChecker | undefined;
  /** DMA mappings each GPU's host driver held right after boot, by GPU name. */
  readonly gpuDmaMappings: ReadonlyMap<string, number>;
  /** The runner's orderly stop of a running VM (guest driver down, VMM shut down). */
  stopVm(v: VmRun): void;
}

/** Shuts everything down, removes every mdev, and audits the host (see the module comment). */
export function tearDown(t: TeardownSubject): TeardownResult {
  const problems: string[] = [];
  const sys = t.system;
  for (const v of t.vms.values()) {
    if (v.state === "running") {
      try {
        t.stopVm(v);
      } catch (e) {
        problems.push(`shutdown of ${v.spec.name} failed: ${isKernelError(e) ? e.describe() : String(e)}`);
        try {
          v.vmm?.kill();
        } catch {
          // already gone
        }
        v.state = "killed";
      }
    } else if (v.vmm?.isAlive) {
      v.vmm.kill();
    }
    for (const m of v.mdevs) {
      if (m.removed) continue;
      try {
        sys.sysfs.write(`/sys/bus/mdev/devices/${m.uuid}/remove`, "1\n");
        m.removed = true;
      } catch (e) {
        problems.push(`removing mdev ${m.uuid} failed: ${isKernelError(e) ? e.describe() : String(e)}`);
      }
    }
  }
  t.checker?.dispose();
  auditHost(t, problems);
  const result = { clean: problems.length === 0, problems };
  const tracer = sys.host.tracer;
  if (tracer.enabled) tracer.emit("scenario.teardown", { clean: problems.length === 0, problems });
  return result;
}

/** The audit: what the host still holds of the run, one sentence per finding. */
function auditHost(t: TeardownSubject, problems: string[]): void {
  const sys = t.system;
  const host = sys.host;
  const pinned = host.physmem.stats().pinnedFrames;
  if (pinned !== 0) problems.push(`${pinned} host frame(s) are still pinned`);
  const st = sys.vfio.inspect();
  if (st.containers.length !== 0) problems.push(`${st.containers.length} vfio container(s) are still open`);
  for (const g of st.groups) {
    for (const d of g.devices) if (d.openCount > 0) problems.push(`vfio device ${d.name} is still open`);
  }
  for (const v of t.vms.values()) {
    if (v.vmm?.isAlive) problems.push(`${v.spec.name}'s VMM process ${v.pid} is still alive`);
    if (v.vmm !== undefined && v.vmm.process.mm.lockedVm() !== 0) {
      problems.push(`${v.spec.name}'s locked_vm is ${v.vmm.process.mm.lockedVm()} pages, not 0`);
    }
  }
  for (const g of sys.gpus) {
    const now = host.dmaApi(g.gpu.bdf).mappings();
    const base = t.gpuDmaMappings.get(g.name) ?? 0;
    if (now !== base) problems.push(`${g.name} has ${now} DMA mappings, ${base} after boot`);
    if (g.parent !== undefined && g.parent.vgpus().length > 0) {
      problems.push(`${g.name} still has ${g.parent.vgpus().length} vGPU(s)`);
    }
  }
}
