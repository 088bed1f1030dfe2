/**
 * wire.ts's shapes are the command line's copy of protocol.ts's result schemas: this keeps the two equal (every
 * method, every field, optional or not), and checks that the shape checker accepts what zod accepts and names the
 * first bad field.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { z } from "zod";
import { methods } from "./protocol.ts";
import { checkResponse, resultShapes, type Shape, shapeProblem } from "./wire.ts";

interface Def {
  readonly type: string;
  readonly shape?: Readonly<Record<string, z.ZodType>>;
  readonly element?: z.ZodType;
  readonly innerType?: z.ZodType;
  readonly entries?: Readonly<Record<string, string>>;
}

/** The shape a zod schema describes (the kinds protocol.ts uses). */
function shapeOf(schema: z.ZodType): Shape {
  const def = (schema as unknown as { _zod: { def: Def } })._zod.def;
  switch (def.type) {
    case "optional": {
      const inner = shapeOf(def.innerType!);
      assert.equal(typeof inner, "string", "only leaves are optional in results");
      return `${inner as string}?` as Shape;
    }
    case "object":
      return Object.fromEntries(Object.entries(def.shape!).map(([k, v]) => [k, shapeOf(v)]));
    case "array":
      return [shapeOf(def.element!)];
    case "string":
    case "literal":
      return "string";
    case "number":
      return "int";
    case "boolean":
      return "boolean";
    case "enum":
      assert.deepEqual(Object.values(def.entries!), ["auto", "manual"]);
      return "start";
    default:
      throw new Error(`unexpected zod type ${def.type}`);
  }
}

describe("wire shapes", () => {
  it("equal protocol.ts's result schemas, method by method", () => {
    assert.deepEqual(Object.keys(resultShapes).sort(), Object.keys(methods).sort());
    for (const [method, m] of Object.entries(methods)) {
      assert.deepEqual(shapeOf(m.result), resultShapes[method as keyof typeof resultShapes], method);
    }
  });

  it("accept what zod accepts and name the first bad field", () => {
    const good = {
      devices: [
        {
          uuid: "u",
          parent: "p",
          mdevType: "t",
          start: "auto",
          attrs: [{ name: "a", value: "1" }],
          active: true,
          defined: false,
        },
      ],
    };
    assert.equal(methods.list.result.safeParse(good).success, true);
    assert.equal(shapeProblem(good, resultShapes.list), undefined);
    const bad = { devices: [{ ...good.devices[0], start: "sometimes" }] };
    assert.equal(methods.list.result.safeParse(bad).success, false);
    assert.equal(shapeProblem(bad, resultShapes.list), 'devices[0].start: must be "auto" or "manual"');
    assert.equal(
      shapeProblem({ devices: [{ ...good.devices[0], iommuGroup: 1.5 }] }, resultShapes.list),
      "devices[0].iommuGroup: must be an integer",
    );
    assert.equal(shapeProblem({}, resultShapes.list), "devices: is required");
    assert.equal(shapeProblem([], resultShapes.list), "(top level): must be an object");
  });

  it("check the response envelope", () => {
    assert.deepEqual(checkResponse({ id: 1, ok: true, result: {}, warnings: [] }), {
      response: { id: 1, ok: true, result: {}, warnings: [] },
    });
    assert.deepEqual(checkResponse({ id: 1, ok: "yes" }), { problem: "ok: must be true or false" });
    assert.deepEqual(checkResponse({ id: 1, ok: false, error: { errno: 0, code: "X", message: "m" }, warnings: [] }), {
      problem: "error.errno: must be positive",
    });
    assert.deepEqual(checkResponse({ id: 1, ok: false, warnings: [] }), { problem: "error: is required" });
  });
});
