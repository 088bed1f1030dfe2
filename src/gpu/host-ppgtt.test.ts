import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { AliasingPpgtt } from "./host-ppgtt.ts";
import { PAGE_FAULT } from "./memory.ts";
import { Ppgtt } from "./ppgtt.ts";
import { gen8PteEncode } from "./regs.ts";
import { gpuRig, RIG_BDF } from "./test-support/gpu-rig.ts";

const PAGE = 4096;

describe("aliasing PPGTT (the host driver's mirror of the GGTT)", () => {
  it("translates every page as the GGTT would after any sequence of writes and fills, and shrinks back", () => {
    const r = gpuRig();
    // A few DMA pages the entries point at (their contents do not matter: only translations are compared).
    const targets = [0, 1, 2, 3].map(() => r.dma.allocCoherent(PAGE).dmaAddr as number);
    const scratch = gen8PteEncode(targets[0]!);
    // Entries in a few 2 MiB tables, at their edges too.
    const index = fc
      .tuple(fc.constantFrom(0, 1, 7, 2047), fc.integer({ min: 0, max: 511 }))
      .map(([t, i]) => t * 512 + i);
    const pte = fc.oneof(
      fc.integer({ min: 0, max: 3 }).map((i) => gen8PteEncode(targets[i]!)),
      fc.constant(0),
    );
    const op = fc.oneof(
      fc.tuple(fc.constant("write" as const), index, pte),
      fc.tuple(fc.constant("fill" as const), index, fc.integer({ min: 1, max: 1100 }), pte),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 30 }), (ops) => {
        const a = new AliasingPpgtt(r.dma, r.host.physmem, scratch);
        const initial = a.tablePages;
        const ggtt = new Map<number, number>();
        const at = (i: number) => ggtt.get(i) ?? scratch;
        for (const o of ops) {
          if (o[0] === "write") {
            a.write(o[1], o[2]);
            ggtt.set(o[1], o[2]);
          } else {
            const count = Math.min(o[2], 1024 * 1024 - o[1]);
            a.fill(o[1], count, o[3]);
            for (let i = o[1]; i < o[1] + count; i++) ggtt.set(i, o[3]);
          }
        }
        const walk = new Ppgtt(r.gpu.memory.dma, r.host.tracer, RIG_BDF, "test");
        walk.load(a.root);
        const probes = new Set<number>([...ggtt.keys(), 0, 511, 512, 1024 * 1024 - 1, 3 * 512 + 9]);
        for (const i of probes) {
          const want = at(i) % 2 === 1 ? at(i) - 1 : PAGE_FAULT;
          assert.equal(walk.translate(i * PAGE, true), want, `entry ${i}`);
        }
        // Everything back to the scratch page: the tables are shared again.
        for (const i of ggtt.keys()) a.write(i, scratch);
        assert.equal(a.tablePages, initial);
        a.free();
      }),
      { numRuns: 60 },
    );
  });
});
