/**
 * The scenario file: a host (GPUs, IOMMU, memory), VMs (memory, locked-memory limit, devices) and timed steps (guest
 * workloads, hostile attacks, VMM actions, checks), as a zod schema. The same schema validates files
 * (`parseScenario`, `loadScenarioFile`) and produces the published JSON schema (`scenarioJsonSchema`, committed as
 * schema/scenario.schema.json), so the two cannot drift. docs/scenarios.md is the reference for people.
 *
 * Validation is in two passes. The shape (types, ranges, unknown members) is zod's; then cross-references: names are
 * unique, every `vm` / `gpu` / `victim` a step or device names exists, a vGPU sits on a GPU driven by i915 and a whole
 * GPU on one bound to vfio-pci (and is given to one VM only), a VM has at most one GPU device, steps are in time
 * order. The first problem is reported as KernelError(EINVAL) with its JSON path and what was expected:
 * `invalid scenario demo.json: steps[3].count: must be an integer from 1 to 100000 (got -1)`.
 *
 * Resource limits (host memory, vGPU instances, IOVA space, locked memory) are not the schema's business: the runner
 * checks what it can before starting and reports the rest, with its errno, at the step that hits it.
 *
 * Sizes are "16 GiB"-style strings or byte counts; times are "10 ms"-style strings or nanoseconds (units.ts). The
 * parsed form (`Scenario`) holds numbers only, with every default filled in.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { Errno, type ErrnoName, KernelError } from "../core/index.ts";
import { COST_TABLE, type CostKey, validateCost } from "../cost/index.ts";
import { ATTACK_NAMES, type AttackName, EXECLIST_ATTACK_NAMES, RING_ATTACK_NAMES } from "../guest/index.ts";
import { GVT_TYPES, gvtTypeDirName, gvtTypeId } from "../vgpu/index.ts";
import { GiB, MiB, parseSize, parseTime, TiB } from "./units.ts";

// ---- building blocks ---------------------------------------------------------------------------------------------

const NAME_RE = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;
const BDF_RE = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/;
const ERRNO_NAMES = Object.keys(Errno) as [ErrnoName, ...ErrnoName[]];
const GVT_TYPE_IDS = GVT_TYPES.map((t) => t.id) as [string, ...string[]];
export const ENGINE_IDS = ["rcs", "bcs"] as const;

const name = (what: string) =>
  z
    .string({ error: `must be a ${what} name (a letter, then up to 31 letters, digits, - or _)` })
    .regex(NAME_RE, { error: `must be a ${what} name (a letter, then up to 31 letters, digits, - or _)` });

function int(min: number, max: number, what = "an integer") {
  const msg = `must be ${what} from ${min} to ${max}`;
  return z.number({ error: msg }).int({ error: msg }).min(min, { error: msg }).max(max, { error: msg });
}

const bool = () => z.boolean({ error: "must be true or false" });

/**
 * A size field: "512 MiB", "16 GiB" or a number of bytes in [min, max], with `extra` for a further rule. The one
 * wording of a size mistake, for scenario files and host configs alike.
 */
export function sizeField(min: number, max: number, extra?: (bytes: number) => string | undefined) {
  const expected = `must be a size from ${fmt(min)} to ${fmt(max)}, e.g. "${fmt(Math.max(min, Math.min(max, GiB)))}" or a number of bytes`;
  return z
    .union([z.number(), z.string()], { error: expected })
    .transform((v, ctx) => {
      const bytes = parseSize(v);
      if (!(bytes >= min && bytes <= max)) {
        ctx.addIssue({ code: "custom", message: `${expected} (got ${JSON.stringify(v)})` });
        return z.NEVER;
      }
      const bad = extra?.(bytes);
      if (bad !== undefined) {
        ctx.addIssue({ code: "custom", message: `${bad} (got ${JSON.stringify(v)})` });
        return z.NEVER;
      }
      return bytes;
    })
    .meta({ description: `a size: "512 MiB", "16 GiB" (binary units B, KiB, MiB, GiB, TiB) or a number of bytes` });
}

function fmt(bytes: number): string {
  for (const [u, n] of [
    [TiB, "TiB"],
    [GiB, "GiB"],
    [MiB, "MiB"],
  ] as const) {
    if (bytes >= u && bytes % u === 0) return `${bytes / u} ${n}`;
  }
  return `${bytes} bytes`;
}

const timeField = () => {
  const expected = 'must be a time such as "10 ms", "250 us", "1.5 s" or a number of nanoseconds';
  return z
    .union([z.number(), z.string()], { error: expected })
    .transform((v, ctx) => {
      const ns = parseTime(v);
      if (!(ns >= 0 && ns <= 3600e9)) {
        ctx.addIssue({ code: "custom", message: `${expected}, up to 1 hour (got ${JSON.stringify(v)})` });
        return z.NEVER;
      }
      return ns;
    })
    .meta({ description: 'a time on the virtual clock: "10 ms", "250 us", "1.5 s" or a number of nanoseconds' });
};

const isPow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

// ---- host ----------------------------------------------------------------------------------------------------------

const costSchema = z
  .strictObject({
    commandNs: z.number().min(0).optional(),
    batchStartNs: z.number().min(0).optional(),
    storeNs: z.number().min(0).optional(),
    registerWriteNs: z.number().min(0).optional(),
    interruptNs: z.number().min(0).optional(),
    blitSetupNs: z.number().min(0).optional(),
    fillBytesPerNs: z.number().gt(0).optional(),
    copyBytesPerNs: z.number().gt(0).optional(),
  })
  .meta({ description: "engine time cost model overrides (src/gpu/cost.ts); bandwidths in bytes per ns (GB/s)" });

const gpuSchema = z
  .strictObject({
    name: name("GPU"),
    bdf: z
      .string({ error: 'must be a PCI address such as "0000:00:02.0"' })
      .regex(BDF_RE, { error: 'must be a PCI address such as "0000:00:02.0" (lower-case hex)' })
      .optional()
      .meta({ description: "PCI address; default 0000:00:02.0, 0000:00:03.0, ... in list order" }),
    driver: z
      .enum(["i915", "vfio-pci"], {
        error: 'must be "i915" (the host driver, mediated into vGPUs) or "vfio-pci" (whole-device assignment)',
      })
      .optional()
      .meta({ description: 'host driver: "i915" (GVT-g vGPUs, the default) or "vfio-pci" (assigned whole to one VM)' }),
    aperture: sizeField(128 * MiB, 2 * GiB, (b) =>
      isPow2(b) ? undefined : "must be a power of two from 128 MiB to 2 GiB",
    ).optional(),
    ats: bool().optional().meta({ description: "the GPU uses ATS (a device ATC in front of the IOMMU)" }),
    dmaMaskBits: int(24, 64)
      .optional()
      .meta({ description: "DMA mask of the GPU (dma_set_mask): limits the IOVA space the host driver maps into" }),
    cost: costSchema.optional(),
    submission: z.enum(["ring", "execlists"], { error: 'must be "ring" or "execlists"' }).optional().meta({
      description:
        'how the host driver (i915) submits: "ring" (legacy rings, the default) or "execlists" (guests\' contexts and PPGTTs run)',
    }),
    unsafeSkipAddressAudit: bool().optional().meta({
      description: "TEST ONLY: the vendor driver's command scanner skips its address audit (a broken mediator)",
    }),
  })
  .meta({ description: "one physical GPU" });

const mttySchema = z.strictObject({
  name: name("mtty parent"),
  ports: int(0, 1024).optional(),
});

const hostSchema = z
  .strictObject({
    memory: sizeField(64 * MiB, 1024 * TiB).optional(),
    iommu: bool().optional().meta({ description: "system IOMMU on (default) or off" }),
    gpus: z.array(gpuSchema, { error: "must be an array of GPUs" }).max(256).optional(),
    mtty: z.array(mttySchema, { error: "must be an array of mtty parents" }).max(1024).optional(),
  })
  .meta({ description: "the host machine" });

// ---- VMs -----------------------------------------------------------------------------------------------------------

const deviceSchema = z.discriminatedUnion(
  "kind",
  [
    z.strictObject({
      kind: z.literal("vgpu"),
      gpu: name("GPU"),
      // Named as GVT-g's documentation does (GVTg_V5_4) or as `vgpu types` lists it (i915-GVTg_V5_4); read as the id.
      type: z
        .enum([...GVT_TYPE_IDS, ...GVT_TYPE_IDS.map(gvtTypeDirName)] as [string, ...string[]], {
          error: `must be a GVT-g vGPU type: ${GVT_TYPE_IDS.join(", ")} (the i915- prefix is optional)`,
        })
        .transform(gvtTypeId),
    }),
    z.strictObject({ kind: z.literal("gpu"), gpu: name("GPU") }),
    z.strictObject({
      kind: z.literal("mtty"),
      parent: name("mtty parent"),
      type: z.enum(["mtty-1", "mtty-2"], { error: 'must be "mtty-1" or "mtty-2"' }).optional(),
    }),
  ],
  { error: 'must be a device with kind "vgpu" (gpu, type), "gpu" (gpu: whole-device assignment) or "mtty"' },
);

const guestDriverSchema = z.strictObject({
  gttWriteMode: z.enum(["qword", "halves", "halves-high-first"]).optional(),
  ringBytes: sizeField(4096, 2 * MiB, (b) => (b % 4096 === 0 ? undefined : "must be a multiple of 4 KiB")).optional(),
  interrupts: z.enum(["msi", "intx"]).optional(),
  timeout: timeField().optional(),
  submission: z
    .enum(["ring", "execlists"], { error: 'must be "ring" or "execlists"' })
    .optional()
    .meta({
      description:
        'how the guest driver submits: "ring" (legacy ring, GGTT) or "execlists" (contexts and a PPGTT); default: the ' +
        'GPU\'s host submission for a vGPU, "ring" for a whole GPU',
    }),
});

const vmSchema = z
  .strictObject({
    name: name("VM"),
    memory: sizeField(16 * MiB, 16 * TiB, (b) => (b % 4096 === 0 ? undefined : "must be a multiple of 4 KiB")),
    maxMemory: sizeField(16 * MiB, 16 * TiB)
      .optional()
      .meta({ description: "boot RAM plus what may be hot-plugged (QEMU's maxmem); default memory + 4 GiB" }),
    memlock: z
      .union([sizeField(0, 64 * TiB), z.literal("unlimited")])
      .optional()
      .meta({ description: "RLIMIT_MEMLOCK of the VMM process; default memory + 1 GiB (libvirt's rule)" }),
    capIpcLock: bool().optional(),
    devices: z.array(deviceSchema, { error: "must be an array of devices" }).max(16).optional(),
    driver: guestDriverSchema.optional(),
  })
  .meta({ description: "one VM: a VMM process with guest RAM and devices, started at t=0 in file order" });

// ---- steps ---------------------------------------------------------------------------------------------------------

const expectErrno = z
  .enum(ERRNO_NAMES, { error: 'must be an errno name such as "ENOMEM"' })
  .meta({ description: "the step must fail with this errno (the run goes on)" });

const common = {
  at: timeField().optional().meta({ description: "when the step starts; default: when the previous step ended" }),
  note: z
    .string({ error: "must be a string of at most 200 characters" })
    .max(200, { error: "must be a string of at most 200 characters" })
    .optional()
    .meta({ description: "a label shown in the report" }),
};

const workloadStep = z.strictObject({
  action: z.literal("workload"),
  vm: name("VM"),
  kind: z.enum(["fill", "copy"], { error: 'must be "fill" or "copy"' }),
  count: int(1, 100_000),
  width: int(1, 8191),
  height: int(1, 65535),
  pitch: int(4, 32767).optional(),
  via: z.enum(["ring", "batch"]).optional(),
  engine: z.enum(ENGINE_IDS).optional(),
  opsPerSubmission: int(1, 4096).optional(),
  rects: z.enum(["full", "random"]).optional(),
  pattern: z.enum(["random", "gradient"]).optional(),
  zone: z.enum(["mappable", "nonmappable"]).optional(),
  seed: int(0, 0xffff_ffff).optional(),
  wait: bool()
    .optional()
    .meta({ description: "wait for completion and verify (default); false: submit and go on (a later wait verifies)" }),
  expect: z.strictObject({ ok: bool().optional(), errno: expectErrno.optional() }).optional(),
  ...common,
});

const waitStep = z.strictObject({
  action: z.literal("wait"),
  vm: name("VM").optional().meta({ description: "default: every VM with workloads in flight" }),
  timeout: timeField().optional(),
  expect: z.strictObject({ errno: expectErrno.optional() }).optional(),
  ...common,
});

const attackStep = z.strictObject({
  action: z.literal("attack"),
  vm: name("VM"),
  attacks: z
    .array(z.enum(ATTACK_NAMES as unknown as [AttackName, ...AttackName[]]))
    .min(1)
    .optional()
    .meta({
      description:
        `default: every attack the guest's driver can make (${RING_ATTACK_NAMES.join(", ")} on legacy rings; with ` +
        `execlists also ${EXECLIST_ATTACK_NAMES.join(", ")}, the ones that end mediation last)`,
    }),
  victim: name("VM")
    .optional()
    .meta({ description: "aim at this VM's first kept buffer (alloc step); default: the next partition" }),
  expect: z
    .strictObject({
      contained: bool().optional().meta({ description: "true: every attack rejected or ignored" }),
      errno: expectErrno.optional(),
    })
    .optional(),
  ...common,
});

const allocStep = z.strictObject({
  action: z.literal("alloc"),
  vm: name("VM"),
  name: name("buffer"),
  bytes: sizeField(1, 256 * MiB),
  block: z
    .string()
    .optional()
    .meta({ description: 'guest pages from this RAM block ("ram-below-4g", "dimm0", ...); default: any' }),
  zone: z.enum(["mappable", "nonmappable"]).optional(),
  expect: z.strictObject({ errno: expectErrno.optional() }).optional(),
  ...common,
});

const vmOnlyStep = <A extends string>(action: A, description: string) =>
  z
    .strictObject({
      action: z.literal(action),
      vm: name("VM"),
      expect: z.strictObject({ errno: expectErrno.optional() }).optional(),
      ...common,
    })
    .meta({ description });

const freeStep = z.strictObject({
  action: z.literal("free"),
  vm: name("VM"),
  name: name("buffer"),
  expect: z.strictObject({ errno: expectErrno.optional() }).optional(),
  ...common,
});

const plugStep = z.strictObject({
  action: z.literal("plug"),
  vm: name("VM"),
  bytes: sizeField(2 * MiB, 1 * TiB, (b) => (b % (2 * MiB) === 0 ? undefined : "must be a multiple of 2 MiB")),
  expect: z.strictObject({ errno: expectErrno.optional() }).optional(),
  ...common,
});

const unplugStep = z.strictObject({
  action: z.literal("unplug"),
  vm: name("VM"),
  block: z.string().min(1).meta({ description: 'the RAM block to unplug, e.g. "dimm0"' }),
  expect: z.strictObject({ errno: expectErrno.optional() }).optional(),
  ...common,
});

/** Metrics a check step may compare (report.ts computes them). */
export const CHECK_METRICS = [
  "alive",
  "pinnedPages",
  "lockedBytes",
  "iovas",
  "shadowEntries",
  "scratchFallbacks",
  "rejectedCommands",
  "rejectedContexts",
  "faults",
  "violations",
  "workloadsFailed",
] as const;
export type CheckMetric = (typeof CHECK_METRICS)[number];

const bound = z.union([z.number(), z.strictObject({ min: z.number().optional(), max: z.number().optional() })]);

const checkStep = z.strictObject({
  action: z.literal("check"),
  vm: name("VM").optional().meta({ description: "default: the whole host (violations, pinned frames)" }),
  expect: z.partialRecord(z.enum(CHECK_METRICS), bound).meta({
    description: `metric -> exact value or {min, max}; metrics: ${CHECK_METRICS.join(", ")}`,
  }),
  ...common,
});

const explainStep = z.strictObject({
  action: z.literal("explain"),
  vm: name("VM"),
  buffer: name("buffer").optional().meta({ description: "a kept buffer (alloc step); default: the VM's first" }),
  offset: int(0, 256 * MiB).optional(),
  gma: z.union([int(0, 2 ** 32 - 1), z.string().regex(/^0x[0-9a-fA-F]+$/)]).optional(),
  ...common,
});

const stepSchema = z.discriminatedUnion(
  "action",
  [
    workloadStep,
    waitStep,
    attackStep,
    allocStep,
    freeStep,
    plugStep,
    unplugStep,
    vmOnlyStep("kill", "the VMM process dies at once (SIGKILL): the kernel side must release everything"),
    vmOnlyStep("shutdown", "orderly shutdown of the VM: devices detached, RAM unmapped, the process exits"),
    checkStep,
    explainStep,
  ],
  {
    error:
      "must be a step with an action: workload, wait, attack, alloc, free, plug, unplug, kill, shutdown, check, explain",
  },
);

// ---- designs and costs (vgpu compare) --------------------------------------------------------------------------

/**
 * The DMA designs of the seed thread, by the names `vgpu compare` and a scenario's `designs` section use
 * (docs/designs.md; src/compare runs them).
 */
export const DESIGN_IDS = ["no-iommu", "identity", "gpa", "per-vm-iova", "dma-api", "ats"] as const;
export type DesignId = (typeof DESIGN_IDS)[number];

const designsSchema = z
  .array(z.enum(DESIGN_IDS, { error: `must be one of ${DESIGN_IDS.map((d) => `"${d}"`).join(", ")}` }), {
    error: "must be an array of design names",
  })
  .min(1, { error: "must name at least one design" })
  .meta({ description: "the designs `vgpu compare` runs this scenario under, in order (default: all six)" });

function costField(e: (typeof COST_TABLE)[number]) {
  return z
    .union([z.number(), z.string()], { error: 'must be a time such as "55 ns" or "1.2 us", or a number of ns' })
    .transform((v, ctx) => {
      const ns = typeof v === "number" ? v : parseTime(v);
      const bad = validateCost(e.key, ns);
      if (bad !== undefined) {
        ctx.addIssue({ code: "custom", message: `${bad} (got ${JSON.stringify(v)})` });
        return z.NEVER;
      }
      return ns;
    })
    .optional()
    .meta({ description: `${e.what}, per ${e.per} (default ${e.defaultNs} ns: ${e.source})` });
}

const costsSchema = z
  .strictObject(
    Object.fromEntries(COST_TABLE.map((e) => [e.key, costField(e)])) as Record<CostKey, ReturnType<typeof costField>>,
    { error: "must be an object of costs (docs/cost-model.md)" },
  )
  .meta({ description: 'cost model overrides for `vgpu compare` (docs/cost-model.md): ns, or times such as "55 ns"' });

export const scenarioSchema = z
  .strictObject(
    {
      $schema: z.string().optional(),
      name: name("scenario"),
      description: z.string().max(2000).optional(),
      seed: int(0, 0xffff_ffff).optional().meta({ description: "seed of every random choice (default 1)" }),
      host: hostSchema.optional(),
      vms: z.array(vmSchema, { error: "must be an array of VMs" }).max(4096),
      steps: z.array(stepSchema, { error: "must be an array of steps" }).max(100_000).optional(),
      designs: designsSchema.optional(),
      costs: costsSchema.optional(),
    },
    { error: "must be a JSON object" },
  )
  .meta({
    title: "vgpu scenario",
    description: "A host, VMs and timed steps for `vgpu run` (see docs/scenarios.md).",
  });

export type ScenarioInput = z.input<typeof scenarioSchema>;
type Parsed = z.output<typeof scenarioSchema>;
export type StepSpec = NonNullable<Parsed["steps"]>[number];
export type DeviceSpec = NonNullable<Parsed["vms"][number]["devices"]>[number];
export type CostSpec = z.output<typeof costSchema>;

// ---- the parsed form -----------------------------------------------------------------------------------------------

export interface ScenarioGpu {
  readonly name: string;
  readonly bdf: string;
  readonly driver: "i915" | "vfio-pci";
  readonly apertureBytes: number | undefined;
  readonly ats: boolean;
  readonly dmaMaskBits: number | undefined;
  readonly cost: CostSpec | undefined;
  /** How the host driver submits (i915 GPUs; "ring" by default). */
  readonly submission: "ring" | "execlists";
  readonly unsafeSkipAddressAudit: boolean;
}

export interface ScenarioVm {
  readonly name: string;
  readonly memoryBytes: number;
  readonly maxMemoryBytes: number | undefined;
  /** RLIMIT_MEMLOCK in bytes; Infinity for "unlimited". */
  readonly memlockBytes: number;
  readonly capIpcLock: boolean;
  readonly devices: readonly DeviceSpec[];
  readonly driver: z.output<typeof guestDriverSchema>;
}

/** A step with its start time resolved (`at` in ns, never before the previous step's). */
export type ScenarioStep = StepSpec & { readonly index: number; readonly atNs: number | undefined };

export interface Scenario {
  readonly name: string;
  readonly description: string;
  readonly seed: number;
  readonly host: {
    readonly memoryBytes: number;
    readonly iommu: boolean;
    readonly gpus: readonly ScenarioGpu[];
    readonly mtty: readonly { readonly name: string; readonly ports: number | undefined }[];
  };
  readonly vms: readonly ScenarioVm[];
  readonly steps: readonly ScenarioStep[];
  /** The designs `vgpu compare` runs it under (undefined: all six). */
  readonly designs: readonly DesignId[] | undefined;
  /** Cost model overrides in ns (docs/cost-model.md). */
  readonly costs: Readonly<Partial<Record<CostKey, number>>>;
  /** Where it came from (a file path), for messages. */
  readonly source: string | undefined;
}

function formatIssuePath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
  return out === "" ? "(top level)" : out;
}

function invalid(source: string | undefined, path: readonly PropertyKey[], message: string): KernelError {
  const where = source !== undefined ? `invalid scenario ${source}: ` : "invalid scenario: ";
  return new KernelError(Errno.EINVAL, `${where}${formatIssuePath(path)}: ${message}`, { path: [...path] });
}

/** A readable message for one zod issue: what was expected, and what was found where that helps. */
function issueMessage(issue: z.core.$ZodIssue, input: unknown): string {
  if (issue.code === "unrecognized_keys") {
    const keys = issue.keys.map((k) => JSON.stringify(k)).join(", ");
    const parent = valueAt(input, issue.path.slice(0, -1)) as { action?: unknown } | undefined;
    const known =
      issue.path[issue.path.length - 1] === "expect" && parent?.action === "check"
        ? ` (metrics: ${CHECK_METRICS.join(", ")})`
        : "";
    return `unknown member(s) ${keys}${known}`;
  }
  if (issue.code === "invalid_union" && "discriminator" in issue && issue.path.length > 0) {
    const got = valueAt(input, issue.path);
    return got === undefined ? `is required (${issue.message})` : `${issue.message} (got ${JSON.stringify(got)})`;
  }
  if (issue.code === "invalid_type" && valueAt(input, issue.path) === undefined) {
    return `is required: ${issue.message.replace(/^Invalid input: /, "")}`;
  }
  const got = valueAt(input, issue.path);
  const shown = got === undefined || typeof got === "object" ? "" : ` (got ${JSON.stringify(got)})`;
  return issue.message.includes("(got ") ? issue.message : `${issue.message}${shown}`;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let v = input;
  for (const p of path) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<PropertyKey, unknown>)[p];
  }
  return v;
}

/** Validates a scenario value (see the module comment); `source` names the file in messages. */
export function parseScenario(value: unknown, source?: string): Scenario {
  const r = scenarioSchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw invalid(source, issue.path, issueMessage(issue, value));
  }
  const s = r.data;
  const fail = (path: readonly PropertyKey[], message: string): never => {
    throw invalid(source, path, message);
  };

  // GPUs: unique names and PCI addresses.
  const gpus: ScenarioGpu[] = [];
  const gpuByName = new Map<string, ScenarioGpu>();
  const bdfs = new Map<string, number>();
  (s.host?.gpus ?? []).forEach((g, i) => {
    if (gpuByName.has(g.name)) fail(["host", "gpus", i, "name"], `GPU name "${g.name}" is used twice`);
    const bdf = g.bdf ?? `0000:00:${(2 + i).toString(16).padStart(2, "0")}.0`;
    const other = bdfs.get(bdf);
    if (other !== undefined) fail(["host", "gpus", i, "bdf"], `PCI address ${bdf} is also host.gpus[${other}]'s`);
    bdfs.set(bdf, i);
    const gpu: ScenarioGpu = {
      name: g.name,
      bdf,
      driver: g.driver ?? "i915",
      apertureBytes: g.aperture,
      ats: g.ats ?? false,
      dmaMaskBits: g.dmaMaskBits,
      cost: g.cost,
      submission: g.submission ?? "ring",
      unsafeSkipAddressAudit: g.unsafeSkipAddressAudit ?? false,
    };
    if (gpu.driver === "vfio-pci" && gpu.unsafeSkipAddressAudit) {
      fail(["host", "gpus", i, "unsafeSkipAddressAudit"], "applies to a GPU driven by i915 (there is no mediator)");
    }
    gpus.push(gpu);
    gpuByName.set(g.name, gpu);
  });
  const mtty = (s.host?.mtty ?? []).map((m) => ({ name: m.name, ports: m.ports }));
  const mttyNames = new Set<string>();
  mtty.forEach((m, i) => {
    if (mttyNames.has(m.name) || gpuByName.has(m.name))
      fail(["host", "mtty", i, "name"], `name "${m.name}" is used twice`);
    mttyNames.add(m.name);
  });

  // VMs: unique names, devices that exist and suit their GPU's driver.
  const vms: ScenarioVm[] = [];
  const vmNames = new Set<string>();
  const assigned = new Map<string, string>();
  s.vms.forEach((vm, i) => {
    if (vmNames.has(vm.name)) fail(["vms", i, "name"], `VM name "${vm.name}" is used twice`);
    vmNames.add(vm.name);
    if (vm.maxMemory !== undefined && vm.maxMemory < vm.memory) {
      fail(["vms", i, "maxMemory"], `must be at least memory (${fmt(vm.memory)})`);
    }
    let gpuDevices = 0;
    (vm.devices ?? []).forEach((d, j) => {
      const at = ["vms", i, "devices", j];
      if (d.kind === "mtty") {
        if (!mttyNames.has(d.parent)) fail([...at, "parent"], `no mtty parent "${d.parent}" in host.mtty`);
        return;
      }
      gpuDevices++;
      if (gpuDevices > 1) fail(at, "a VM has at most one GPU device (vgpu or gpu): its guest driver drives one");
      const gpu = gpuByName.get(d.gpu);
      if (gpu === undefined) fail([...at, "gpu"], `no GPU "${d.gpu}" in host.gpus`);
      else if (d.kind === "vgpu" && gpu.driver !== "i915") {
        fail([...at, "gpu"], `GPU "${d.gpu}" is bound to vfio-pci: vGPUs need a GPU driven by i915`);
      } else if (d.kind === "vgpu" && vm.driver?.submission === "execlists" && gpu.submission !== "execlists") {
        fail(
          ["vms", i, "driver", "submission"],
          `GPU "${d.gpu}" submits through legacy rings: a vGPU guest's contexts would never run; ` +
            `set host.gpus "${d.gpu}" submission to "execlists"`,
        );
      } else if (d.kind === "gpu") {
        if (gpu.driver !== "vfio-pci") {
          fail([...at, "gpu"], `GPU "${d.gpu}" is driven by i915: whole-device assignment needs driver "vfio-pci"`);
        }
        const other = assigned.get(d.gpu);
        if (other !== undefined) fail([...at, "gpu"], `GPU "${d.gpu}" is already assigned to VM "${other}"`);
        assigned.set(d.gpu, vm.name);
      }
    });
    const memlock = vm.memlock;
    vms.push({
      name: vm.name,
      memoryBytes: vm.memory,
      maxMemoryBytes: vm.maxMemory,
      memlockBytes: memlock === "unlimited" ? Number.POSITIVE_INFINITY : (memlock ?? vm.memory + GiB),
      capIpcLock: vm.capIpcLock ?? false,
      devices: vm.devices ?? [],
      driver: vm.driver ?? {},
    });
  });

  // Steps: references and time order.
  const steps: ScenarioStep[] = [];
  let last = 0;
  (s.steps ?? []).forEach((st, i) => {
    const at = ["steps", i];
    if ("vm" in st && st.vm !== undefined && !vmNames.has(st.vm)) fail([...at, "vm"], `no VM "${st.vm}" in vms`);
    if (st.action === "attack" && st.victim !== undefined && !vmNames.has(st.victim)) {
      fail([...at, "victim"], `no VM "${st.victim}" in vms`);
    }
    if (st.action === "explain" && st.gma !== undefined && st.buffer !== undefined) {
      fail([...at, "gma"], "give either gma or buffer, not both");
    }
    if (st.at !== undefined) {
      if (st.at < last) {
        fail([...at, "at"], `${st.at} ns is before the previous step's ${last} ns: steps run in file order`);
      }
      last = st.at;
    }
    steps.push({ ...st, index: i, atNs: st.at });
  });

  return {
    name: s.name,
    description: s.description ?? "",
    seed: s.seed ?? 1,
    host: {
      memoryBytes: s.host?.memory ?? 16 * GiB,
      iommu: s.host?.iommu ?? true,
      gpus,
      mtty,
    },
    vms,
    steps,
    designs: uniqueDesigns(s.designs, fail),
    costs: Object.fromEntries(Object.entries(s.costs ?? {}).filter(([, v]) => v !== undefined)),
    source,
  };
}

/** The `designs` section with each design named once (EINVAL at the second naming). */
function uniqueDesigns(
  designs: readonly DesignId[] | undefined,
  fail: (path: readonly PropertyKey[], message: string) => never,
): readonly DesignId[] | undefined {
  designs?.forEach((d, i) => {
    if (designs.indexOf(d) !== i) fail(["designs", i], `design "${d}" is listed twice`);
  });
  return designs;
}

/** Reads and validates a scenario file: ENOENT if it is missing, EINVAL (with the JSON path) if it is malformed. */
export function loadScenarioFile(path: string): Scenario {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KernelError(
      code === "ENOENT" ? Errno.ENOENT : Errno.EIO,
      `cannot read scenario ${path}: ${code === "ENOENT" ? "no such file" : (e as Error).message}`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new KernelError(Errno.EINVAL, `invalid scenario ${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseScenario(value, path);
}

/** The published JSON schema (draft 2020-12) of scenario files, generated from `scenarioSchema`. */
export function scenarioJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(scenarioSchema, { io: "input", unrepresentable: "any" }) as Record<string, unknown>;
}
