/**
 * A whole model system from a small JSON config: the Host (memory, IOMMU, PCI, devfs), its /sys, vfio-core with the
 * type1 IOMMU driver, the mdev core, and the mdev parent devices the config lists. `vgpu host` runs one; tests and
 * scenarios build one in process.
 *
 * ```json
 * { "memory": "16 GiB", "iommu": true, "seed": 1, "parents": [{ "kind": "mtty", "name": "mtty", "ports": 24 }] }
 * ```
 * Every field is optional: the default is a 16 GiB host with its IOMMU on and one mtty parent (the embedded host
 * until a GPU parent exists). Parent kinds are a table (`PARENT_KINDS`): each kind is a zod schema for its config
 * entry and a function that builds its parent driver from the assembled system, so a new kind (a GPU) is one entry.
 * Parents are registered with the mdev core in config order; a duplicate parent name is reported with both entries.
 *
 * Config errors are KernelError(EINVAL) naming the JSON path ("parents[1].ports: must be an integer from 0 to
 * 1024"), and, for a file, the file. What this does not do: hot-plug (parents appear only at assembly; a later issue
 * adds parents at run time), or persist anything.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { Errno, KernelError } from "../core/index.ts";
import { createMttyParent, MTTY_MAX_PORTS } from "../devices/index.ts";
import { GiB, Host, type Sysfs } from "../host/index.ts";
import { MdevCore, type MdevParentDriver } from "../mdev/index.ts";
import { type Type1Driver, type1Driver, VfioCore } from "../vfio/index.ts";

/** What a parent kind's factory gets: the system assembled so far. */
export interface SystemParts {
  readonly host: Host;
  readonly sysfs: Sysfs;
  readonly vfio: VfioCore;
  readonly mdev: MdevCore;
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
};

const UNITS: Readonly<Record<string, number>> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: GiB, TiB: 1024 * GiB };

/** "16 GiB", "512MiB", "4096" (bytes) or a number of bytes. */
const memorySchema = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const m = typeof v === "number" ? [String(v), String(v), "B"] : /^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*$/.exec(v);
  const bytes = m ? Number(m[1]) * UNITS[m[2] ?? "B"]! : Number.NaN;
  if (!Number.isSafeInteger(bytes) || bytes < 64 * 1024 ** 2 || bytes > 1024 * 1024 * GiB) {
    ctx.addIssue({
      code: "custom",
      message: 'must be a size from 64 MiB to 1 PiB, e.g. "16 GiB" or a number of bytes',
    });
    return z.NEVER;
  }
  return bytes;
});

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
}

/** The embedded host: 16 GiB, IOMMU on, one mtty parent. */
export const DEFAULT_SYSTEM_CONFIG: SystemConfigInput = {
  memory: "16 GiB",
  iommu: true,
  seed: 1,
  parents: [{ kind: "mtty" }],
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
export interface System extends SystemParts {
  readonly config: SystemConfig;
  readonly type1: Type1Driver;
  /** Registered parents, in config order. */
  readonly parents: readonly MdevParentDriver[];
}

/** Builds the system a config describes. */
export function createSystem(config: SystemConfig = parseSystemConfig(DEFAULT_SYSTEM_CONFIG)): System {
  const host = new Host({ memoryBytes: config.memoryBytes, iommu: { enabled: config.iommu }, seed: config.seed });
  const sysfs = host.sysfs;
  const vfio = new VfioCore({ devfs: host.devfs, pci: host.pci, iommu: host.iommu, tracer: host.tracer });
  const type1 = type1Driver({ iommu: host.iommu, physmem: host.physmem, tracer: host.tracer });
  vfio.registerIommuDriver(type1);
  const mdev = new MdevCore({ sysfs, vfio, tracer: host.tracer });
  const parts: SystemParts = { host, sysfs, vfio, mdev };
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
  return { config, host, sysfs, vfio, mdev, type1, parents };
}
