/**
 * A whole model system from a small JSON config: the Host (memory, IOMMU, PCI, devfs), its /sys, vfio-core with the
 * type1 IOMMU driver, the mdev core, and the mdev parent devices the config lists. `vgpu host` runs one; tests and
 * scenarios build one in process.
 *
 * ```json
 * { "memory": "16 GiB", "iommu": true, "seed": 1,
 *   "parents": [{ "kind": "mtty", "name": "mtty", "ports": 24 }, { "kind": "gvt", "bdf": "0000:00:02.0" }],
 *   "assigned": [{ "kind": "gpu", "bdf": "0000:00:03.0" }] }
 * ```
 * Every field is optional: the default is a 16 GiB host with its IOMMU on and one mtty parent. Parent kinds are a
 * table (`PARENT_KINDS`): each kind is a zod schema for its config entry and a function that builds its parent driver
 * from the assembled system, so a new kind is one entry. Kinds today: `mtty` (the sample serial-port parent) and
 * `gvt` (a physical GPU with the i915-like host driver bound, mediated into vGPUs by the GVT-g parent; gpus.ts).
 * Parents are registered with the mdev core in config order; a duplicate parent name is reported with both entries.
 * `assigned` lists physical devices bound to vfio-pci for whole-device assignment (today: `gpu`). Every GPU, mediated
 * or assigned, is recorded in `System.gpus`.
 *
 * Config errors are KernelError(EINVAL) naming the JSON path ("parents[1].ports: must be an integer from 0 to
 * 1024"), and, for a file, the file. What this does not do: hot-plug (parents appear only at assembly; a later issue
 * adds parents at run time), or persist anything.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { Errno, KernelError, type SchedulingClock, type Tracer } from "../core/index.ts";
import { createMttyParent, MTTY_MAX_PORTS } from "../devices/index.ts";
import { GiB, Host, type Sysfs } from "../host/index.ts";
import { MdevCore, type MdevParentDriver } from "../mdev/index.ts";
import { type Type1Driver, type1Driver, VfioCore, VfioPciDriver } from "../vfio/index.ts";
import { createAssignedGpu, createMediatedGpu, type GpuInstance } from "./gpus.ts";
import { sizeField } from "./schema.ts";
import { MiB, TiB } from "./units.ts";

/** What a parent kind's factory gets: the system assembled so far. */
export interface SystemParts {
  readonly host: Host;
  readonly sysfs: Sysfs;
  readonly vfio: VfioCore;
  readonly mdev: MdevCore;
  readonly vfioPci: VfioPciDriver;
  /** GPUs assembled so far; a GPU kind appends its instance. */
  readonly gpus: GpuInstance[];
}

/** A GPU's aperture: "512 MiB" or bytes, a power of two from 128 MiB to 2 GiB (as a scenario's). */
const apertureSchema = sizeField(128 * MiB, 2 * GiB, (b) =>
  (b & (b - 1)) === 0 ? undefined : "must be a power of two from 128 MiB to 2 GiB",
);

const gpuOptionFields = {
  name: z.string({ error: "must be a string" }).min(1, { error: "must not be empty" }).optional(),
  bdf: z
    .string({ error: 'must be a PCI address such as "0000:00:02.0"' })
    .regex(/^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/, { error: 'must be a PCI address such as "0000:00:02.0"' })
    .optional(),
  aperture: apertureSchema.optional(),
  ats: z.boolean({ error: "must be true or false" }).optional(),
  dmaMaskBits: z
    .number({ error: "must be an integer from 24 to 64" })
    .int({ error: "must be an integer from 24 to 64" })
    .min(24, { error: "must be an integer from 24 to 64" })
    .max(64, { error: "must be an integer from 24 to 64" })
    .optional(),
  cost: z.record(z.string(), z.number()).optional(),
};

function gpuOptions(c: {
  name?: string | undefined;
  bdf?: string | undefined;
  aperture?: number | undefined;
  ats?: boolean | undefined;
  dmaMaskBits?: number | undefined;
  cost?: Record<string, number> | undefined;
}) {
  return {
    ...(c.name !== undefined ? { name: c.name } : {}),
    ...(c.bdf !== undefined ? { bdf: c.bdf } : {}),
    ...(c.aperture !== undefined ? { apertureSize: c.aperture } : {}),
    ...(c.ats !== undefined ? { ats: c.ats } : {}),
    ...(c.dmaMaskBits !== undefined ? { dmaMaskBits: c.dmaMaskBits } : {}),
    ...(c.cost !== undefined ? { cost: c.cost } : {}),
  };
}

/** One row of the parent-kind table. */
export interface ParentKind<C> {
  /** Validates one `parents[]` entry (including its `kind`). */
  readonly schema: z.ZodType<C>;
  readonly create: (config: C, parts: SystemParts) => MdevParentDriver;
  /** One line for `--help` and the README. */
  readonly summary: string;
}

function parentKind<S extends z.ZodType>(
  schema: S,
  summary: string,
  create: (config: z.infer<S>, parts: SystemParts) => MdevParentDriver,
): ParentKind<z.infer<S>> {
  return { schema: schema as z.ZodType<z.infer<S>>, create, summary };
}

/** The parent kinds a config may list. Add a row for a new kind. */
export const PARENT_KINDS: Readonly<Record<string, ParentKind<unknown>>> = {
  mtty: parentKind(
    z.strictObject({
      kind: z.literal("mtty"),
      name: z.string({ error: "must be a string" }).min(1, { error: "must not be empty" }).optional(),
      ports: z
        .number({ error: `must be an integer from 0 to 1024 (default ${MTTY_MAX_PORTS})` })
        .int({ error: "must be an integer from 0 to 1024" })
        .min(0, { error: "must be an integer from 0 to 1024" })
        .max(1024, { error: "must be an integer from 0 to 1024" })
        .optional(),
    }),
    `the mtty sample serial-port parent (options: name, default "mtty"; ports, default ${MTTY_MAX_PORTS})`,
    (c, parts) =>
      createMttyParent({
        tracer: parts.host.tracer,
        ...(c.name !== undefined ? { parentName: c.name } : {}),
        ...(c.ports !== undefined ? { ports: c.ports } : {}),
      }),
  ) as ParentKind<unknown>,
  gvt: parentKind(
    z.strictObject({
      kind: z.literal("gvt"),
      ...gpuOptionFields,
      submission: z.enum(["ring", "execlists"], { error: 'must be "ring" or "execlists"' }).optional(),
      unsafeSkipAddressAudit: z.boolean({ error: "must be true or false" }).optional(),
    }),
    "a physical GPU driven by i915 and mediated into GVT-g vGPUs, parent named by its PCI address (options: name; " +
      "bdf, default 0000:00:02.0; " +
      'aperture, default 512 MiB; ats; dmaMaskBits; cost; submission, "ring" (default) or "execlists": how the host ' +
      "driver submits, and whether guest contexts can run)",
    (c, parts) => {
      // The mdev parent is named by the GPU's PCI address, as in Linux; `name` is the config's handle for it.
      const gpu = createMediatedGpu(parts.host, {
        ...gpuOptions(c),
        ...(c.submission !== undefined ? { submission: c.submission } : {}),
        ...(c.unsafeSkipAddressAudit ? { unsafeSkipAddressAudit: true } : {}),
      });
      parts.gpus.push(gpu);
      return gpu.parent!;
    },
  ) as ParentKind<unknown>,
};

/** Devices an `assigned` entry may name: bound to vfio-pci for whole-device assignment. */
const assignedEntrySchema = z.strictObject(
  { kind: z.literal("gpu", { error: 'must be "gpu" (the only assignable device kind)' }), ...gpuOptionFields },
  { error: "must be an object with a kind" },
);

/** "16 GiB", "512MiB", "4096" (bytes) or a number of bytes: the host's RAM, worded as a scenario's. */
const memorySchema = sizeField(64 * MiB, 1024 * TiB);

const parentEntrySchema = z
  .object(
    { kind: z.string({ error: `is required (one of: ${Object.keys(PARENT_KINDS).join(", ")})` }) },
    {
      error: "must be an object with a kind",
    },
  )
  .passthrough()
  .superRefine((entry, ctx) => {
    const kind = PARENT_KINDS[entry.kind];
    if (!kind) {
      ctx.addIssue({
        code: "custom",
        path: ["kind"],
        message: `unknown parent kind '${entry.kind}' (known: ${Object.keys(PARENT_KINDS).join(", ")})`,
      });
      return;
    }
    const r = kind.schema.safeParse(entry);
    if (!r.success)
      for (const issue of r.error.issues) ctx.addIssue({ ...issue, code: "custom", message: issue.message });
  });

export const systemConfigSchema = z.strictObject(
  {
    memory: memorySchema.optional(),
    iommu: z.boolean({ error: "must be true or false" }).optional(),
    seed: z.number().int().min(0).max(0xffff_ffff, { error: "must be an integer from 0 to 2^32-1" }).optional(),
    parents: z.array(parentEntrySchema, { error: "must be an array" }).optional(),
    assigned: z.array(assignedEntrySchema, { error: "must be an array" }).optional(),
  },
  { error: "must be a JSON object" },
);

export type SystemConfigInput = z.input<typeof systemConfigSchema>;

/** A validated config with its defaults filled in. */
export interface SystemConfig {
  readonly memoryBytes: number;
  readonly iommu: boolean;
  readonly seed: number;
  readonly parents: readonly Readonly<Record<string, unknown> & { kind: string }>[];
  /** Devices bound to vfio-pci at assembly. */
  readonly assigned: readonly z.output<typeof assignedEntrySchema>[];
}

/** The embedded host: 16 GiB, IOMMU on, a GVT-g-like GPU at 0000:00:02.0 and the mtty sample parent. */
export const DEFAULT_SYSTEM_CONFIG: SystemConfigInput = {
  memory: "16 GiB",
  iommu: true,
  seed: 1,
  // One GVT-g-like GPU (the project's subject) and the mtty sample (the smallest mdev, handy for interop tests).
  parents: [{ kind: "gvt" }, { kind: "mtty" }],
};

function formatIssuePath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
  return out === "" ? "(top level)" : out;
}

/** Validates a config value. EINVAL naming the JSON path of the first problem (and `source`, if given). */
export function parseSystemConfig(value: unknown, source?: string): SystemConfig {
  const r = systemConfigSchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const where = source !== undefined ? `invalid host config ${source}: ` : "invalid host config: ";
    const message = issue.code === "unrecognized_keys" ? `unknown member(s) ${issue.keys.join(", ")}` : issue.message;
    throw new KernelError(Errno.EINVAL, `${where}${formatIssuePath(issue.path)}: ${message}`);
  }
  const c = r.data;
  return {
    memoryBytes: c.memory ?? 16 * GiB,
    iommu: c.iommu ?? true,
    seed: c.seed ?? 1,
    parents: (c.parents ?? [{ kind: "mtty" }]) as SystemConfig["parents"],
    assigned: c.assigned ?? [],
  };
}

/** Reads and validates a config file. */
export function loadSystemConfigFile(path: string): SystemConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KernelError(
      code === "ENOENT" ? Errno.ENOENT : Errno.EIO,
      `cannot read host config ${path}: ${code === "ENOENT" ? "no such file" : (e as Error).message}`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new KernelError(Errno.EINVAL, `invalid host config ${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseSystemConfig(value, path);
}

/** An assembled system. */
export interface System extends Omit<SystemParts, "gpus"> {
  readonly config: SystemConfig;
  readonly type1: Type1Driver;
  /** Registered parents, in config order. */
  readonly parents: readonly MdevParentDriver[];
  readonly gpus: readonly GpuInstance[];
}

/** What the embedding program supplies instead of the defaults (a scenario runs on its own virtual clock). */
export interface CreateSystemOptions {
  /** Default: a VirtualClock at 0 (the Host's default). */
  readonly clock?: SchedulingClock;
  readonly tracer?: Tracer;
}

/** Builds the system a config describes. */
export function createSystem(
  config: SystemConfig = parseSystemConfig(DEFAULT_SYSTEM_CONFIG),
  opts: CreateSystemOptions = {},
): System {
  const host = new Host({
    memoryBytes: config.memoryBytes,
    iommu: { enabled: config.iommu },
    seed: config.seed,
    ...(opts.clock !== undefined ? { clock: opts.clock } : {}),
    ...(opts.tracer !== undefined ? { tracer: opts.tracer } : {}),
  });
  const sysfs = host.sysfs;
  const vfio = new VfioCore({ devfs: host.devfs, pci: host.pci, iommu: host.iommu, tracer: host.tracer });
  const type1 = type1Driver({ iommu: host.iommu, physmem: host.physmem, tracer: host.tracer });
  vfio.registerIommuDriver(type1);
  const mdev = new MdevCore({ sysfs, vfio, tracer: host.tracer });
  const vfioPci = new VfioPciDriver({ bus: host.pci, core: vfio, tracer: host.tracer });
  const gpus: GpuInstance[] = [];
  const parts: SystemParts = { host, sysfs, vfio, mdev, vfioPci, gpus };
  const parents: MdevParentDriver[] = [];
  const seen = new Map<string, number>();
  config.parents.forEach((entry, i) => {
    const kind = PARENT_KINDS[entry.kind];
    if (!kind)
      throw new KernelError(
        Errno.EINVAL,
        `invalid host config: parents[${i}].kind: unknown parent kind '${entry.kind}'`,
      );
    const driver = kind.create(kind.schema.parse(entry), parts);
    const first = seen.get(driver.parentName);
    if (first !== undefined) {
      throw new KernelError(
        Errno.EEXIST,
        `invalid host config: parents[${i}] and parents[${first}] are both named '${driver.parentName}': give one a different name`,
      );
    }
    seen.set(driver.parentName, i);
    mdev.registerParent(driver);
    parents.push(driver);
  });
  config.assigned.forEach((entry, i) => {
    const bdf = entry.bdf ?? "0000:00:02.0";
    if (gpus.some((g) => g.bdf === bdf)) {
      throw new KernelError(
        Errno.EEXIST,
        `invalid host config: assigned[${i}]: PCI address ${bdf} is already taken by another GPU: give it a bdf`,
      );
    }
    gpus.push(createAssignedGpu(host, vfioPci, host.tracer, gpuOptions({ ...entry, bdf })));
  });
  return { config, host, sysfs, vfio, mdev, vfioPci, type1, parents, gpus };
}
