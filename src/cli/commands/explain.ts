/**
 * `vgpu explain`: for a VM and a graphics memory address, each layer's translation and the data structure that holds
 * it (guest GTT entry in the vGPU's virtual GTT -> GPA; VMM RAM block -> HVA; process page table -> HPA; gfn cache /
 * DMA API mapping -> IOVA; physical GGTT entry -> IOVA; IOMMU page table -> HPA), and whether they agree.
 *
 * With `--gva`, a GPU virtual address of the VM's guest PPGTT (a driver on execlists): the guest's PML4/PDP/PD/PT ->
 * GPA -> HVA -> HPA, and the shadow side: the vendor driver's shadow tables -> IOVA -> HPA, and whether they agree.
 *
 * The scenario (default: the demo's) is run to its end, the chain is read from the live host, then the host is torn
 * down. Without `--gma` or `--gva`, the VM's first kept buffer (an alloc step) is explained, else its guest driver's
 * status page: its GMA chain, and its PPGTT chain too when the guest driver has a PPGTT. A GMA outside a vGPU's
 * graphics memory is explained as such, with the vGPU's two ranges (exit 1).
 */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { Errno, KernelError } from "../../core/index.ts";
import type { Explanation } from "../../scenario/index.ts";
import { type CliIo, configureCommandOutput, processIo } from "./common.ts";
import { DEMO_SCENARIO } from "./demo.ts";
import { loadScenario, seedOption } from "./run.ts";

export interface ExplainOptions {
  readonly vm?: string;
  readonly gma?: string;
  readonly gva?: string;
  readonly seed?: string;
  readonly json?: boolean;
}

function parseAddress(option: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const v = /^0x[0-9a-f]+$/i.test(text) ? Number.parseInt(text, 16) : /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(v)) {
    throw new KernelError(Errno.EINVAL, `invalid --${option} '${text}': expected a number, e.g. 0x8009000`);
  }
  return v;
}

/** Runs the scenario and explains; returns the exit code. */
export async function runExplain(file: string | undefined, opts: ExplainOptions, io: CliIo): Promise<number> {
  const seed = seedOption(opts.seed);
  const gma = parseAddress("gma", opts.gma);
  const gva = parseAddress("gva", opts.gva);
  if (gma !== undefined && gva !== undefined) {
    throw new KernelError(Errno.EINVAL, "give --gma or --gva, not both: they name addresses of different tables");
  }
  const s = await import("../../scenario/index.ts");
  const scenario =
    file !== undefined
      ? await loadScenario(file, io)
      : s.parseScenario(JSON.parse(readFileSync(DEMO_SCENARIO, "utf8")), "scenarios/demo.json");
  const vm = opts.vm ?? scenario.vms.find((v) => v.devices.some((d) => d.kind !== "mtty"))?.name;
  if (vm === undefined) throw new KernelError(Errno.EINVAL, "the scenario has no VM with a GPU device: give --vm");
  if (!scenario.vms.some((v) => v.name === vm)) {
    throw new KernelError(
      Errno.EINVAL,
      `no VM "${vm}" in ${scenario.source ?? "the scenario"} (VMs: ${scenario.vms.map((v) => v.name).join(", ")})`,
    );
  }
  const explanations: Explanation[] = [];
  let failure: unknown;
  const { report } = s.runWithReport(scenario, seed !== undefined ? { seed } : {}, (run) => {
    try {
      if (gva !== undefined) explanations.push(run.explainPpgtt(vm, gva));
      else {
        explanations.push(run.explain(vm, gma));
        if (gma === undefined && run.vms.get(vm)?.driver?.ppgtt !== undefined) {
          explanations.push(run.explainPpgtt(vm));
        }
      }
    } catch (e) {
      failure = e;
    }
  });
  if (failure !== undefined) throw failure;
  if (explanations.length === 0) {
    const why = report.error !== null ? `${report.error.errno}: ${report.error.message}` : "no result";
    throw new KernelError(Errno.EIO, `the scenario did not get far enough to explain: ${why}`);
  }
  if (opts.json) {
    io.out(`${JSON.stringify(explanations.length === 1 ? explanations[0] : explanations, null, 2)}\n`);
  } else io.out(`${explanations.map((e) => s.formatExplanation(e).join("\n")).join("\n\n")}\n`);
  return explanations.every((e) => e.agree) ? 0 : 1;
}

export function registerExplain(program: Command, io: CliIo = processIo): void {
  const cmd = program
    .command("explain")
    .description("show each layer's translation of a VM's graphics memory address and which data structure holds it")
    .argument("[file]", "scenario file (default: the demo's)")
    .option("--vm <name>", "the VM (default: the first with a GPU device)")
    .option("--gma <addr>", "graphics memory address, e.g. 0x8009000 (default: the VM's first kept buffer)")
    .option("--gva <addr>", "GPU virtual address of the VM's PPGTT (a guest driver on execlists), e.g. 0x100001000")
    .option("--seed <n>", "seed of every random choice")
    .option("--json", "print the chain as JSON");
  configureCommandOutput(cmd, io).action(async (file: string | undefined, opts: ExplainOptions) => {
    process.exitCode = await runExplain(file, opts, io);
  });
}
