/**
 * The host daemon's control API: JSON lines over a UNIX socket, every message validated with zod on both ends.
 *
 * A client writes one request per line, `{"id": N, "method": M, "params": {...}}`, and reads one response line per
 * request, in order: `{"id": N, "ok": true, "result": {...}, "warnings": [...]}` or
 * `{"id": N, "ok": false, "error": {"errno": 28, "code": "ENOSPC", "message": "..."}, "warnings": [...]}`.
 * `warnings` carries what a person should see on stderr even when the request succeeds (a skipped definition file,
 * a parent name that differs only in case). Errors carry the Linux errno, its symbolic code and a sentence.
 *
 * The methods mirror mdevctl's commands. The command line checks its own option combinations and reads `--jsonfile`
 * itself (the daemon never opens a path a client names); the daemon checks everything that depends on state.
 * Methods and their params/result schemas are a table (`methods`), so a new method is one entry.
 *
 * Names in requests follow the same rules as definition files (mdevctl-json.ts): an attribute name is a path inside
 * the device's sysfs folder and a type is not empty, checked by the same schemas when the request is decoded, so
 * nothing a client sends can name `../../x` or write a definition the loader would skip.
 *
 * A line longer than `MAX_LINE_BYTES` bytes is refused (EMSGSIZE) and the connection closed.
 */
import { z } from "zod";
import {
  attrNameSchema,
  mdevAttrSchema,
  mdevDefinitionSchema,
  mdevTypeSchema,
  startModeSchema,
} from "./mdevctl-json.ts";

export { encodeLine, LineSplitter, MAX_LINE_BYTES, PROTOCOL_VERSION, type SplitLines } from "./wire.ts";

const attr = mdevAttrSchema;
const startMode = startModeSchema;
export const definitionSchema = mdevDefinitionSchema;

const listedDevice = z.object({
  uuid: z.string(),
  parent: z.string(),
  mdevType: z.string(),
  start: startMode,
  attrs: z.array(attr),
  active: z.boolean(),
  defined: z.boolean(),
  /** Running devices: what libvirt's node-device XML shows. */
  iommuGroup: z.number().int().optional(),
  sysfsPath: z.string().optional(),
  driver: z.string().optional(),
  /** The vfio-user socket the daemon serves the device on (`<root>/<uuid>.sock`). */
  vfioUserSocket: z.string().optional(),
});

const typeInfo = z.object({
  type: z.string(),
  availableInstances: z.number().int(),
  deviceApi: z.string(),
  name: z.string(),
  description: z.string(),
  reason: z.string().optional(),
});

const empty = z.object({});

/** Each method: its params and its result. */
export const methods = {
  hello: {
    params: empty,
    result: z.object({
      server: z.literal("vgpu host"),
      protocol: z.number().int(),
      pid: z.number().int(),
      root: z.string(),
      parents: z.array(z.string()),
    }),
  },
  types: {
    params: z.object({ parent: z.string().optional() }),
    result: z.object({ parents: z.array(z.object({ parent: z.string(), types: z.array(typeInfo) })) }),
  },
  list: {
    params: z.object({ defined: z.boolean(), uuid: z.string().optional(), parent: z.string().optional() }),
    result: z.object({ devices: z.array(listedDevice) }),
  },
  define: {
    params: z.object({
      uuid: z.string().optional(),
      parent: z.string().optional(),
      type: mdevTypeSchema.optional(),
      auto: z.boolean(),
      /** From --jsonfile. */
      definition: definitionSchema.optional(),
      force: z.boolean(),
    }),
    result: z.object({ uuid: z.string(), parent: z.string(), generated: z.boolean() }),
  },
  undefine: {
    params: z.object({ uuid: z.string(), parent: z.string().optional(), force: z.boolean() }),
    result: z.object({ removed: z.array(z.object({ uuid: z.string(), parent: z.string() })) }),
  },
  modify: {
    params: z.object({
      uuid: z.string(),
      parent: z.string().optional(),
      type: mdevTypeSchema.optional(),
      addattr: attrNameSchema.optional(),
      value: z.string().optional(),
      delattr: z.boolean(),
      index: z.number().int().nonnegative().optional(),
      auto: z.boolean(),
      manual: z.boolean(),
      live: z.boolean(),
      defined: z.boolean(),
      definition: definitionSchema.optional(),
      force: z.boolean(),
    }),
    result: z.object({ uuid: z.string(), parent: z.string() }),
  },
  start: {
    params: z.object({
      uuid: z.string().optional(),
      parent: z.string().optional(),
      type: mdevTypeSchema.optional(),
      definition: definitionSchema.optional(),
      force: z.boolean(),
    }),
    result: z.object({ uuid: z.string(), parent: z.string(), mdevType: z.string(), generated: z.boolean() }),
  },
  stop: {
    params: z.object({ uuid: z.string(), force: z.boolean() }),
    result: z.object({ uuid: z.string(), parent: z.string() }),
  },
  /** mdevctl's start-parent-mdevs: start the parent's `auto` definitions that are not running. */
  startParent: {
    params: z.object({ parent: z.string() }),
    result: z.object({
      parent: z.string(),
      started: z.array(z.string()),
      failed: z.array(z.object({ uuid: z.string(), message: z.string() })),
    }),
  },
} as const;

export type Method = keyof typeof methods;
export type ParamsOf<M extends Method> = z.infer<(typeof methods)[M]["params"]>;
export type ResultOf<M extends Method> = z.infer<(typeof methods)[M]["result"]>;
export type WireDefinition = z.infer<typeof definitionSchema>;
export type WireDevice = z.infer<typeof listedDevice>;
export type WireTypeInfo = z.infer<typeof typeInfo>;

const methodNames = Object.keys(methods) as [Method, ...Method[]];

/** The envelope; params are checked against the method's own schema afterwards. */
export const requestSchema = z.object({
  id: z.number().int().nonnegative(),
  method: z.enum(methodNames, { error: (iss) => `unknown method ${JSON.stringify(iss.input)}` }),
  params: z.unknown(),
});

export const wireErrorSchema = z.object({ errno: z.number().int().positive(), code: z.string(), message: z.string() });
export type WireError = z.infer<typeof wireErrorSchema>;

export const responseSchema = z.discriminatedUnion("ok", [
  z.object({ id: z.number().int(), ok: z.literal(true), result: z.unknown(), warnings: z.array(z.string()) }),
  z.object({ id: z.number().int(), ok: z.literal(false), error: wireErrorSchema, warnings: z.array(z.string()) }),
]);
export type Response = z.infer<typeof responseSchema>;

export interface Request<M extends Method = Method> {
  readonly id: number;
  readonly method: M;
  readonly params: ParamsOf<M>;
}
