/**
 * The command sequence of i915's gen9 null render state batch (gt/gen9_renderstate.c, emitted on the render engine
 * when i915 records its default context image): each command's header dword and its length in dwords, in order,
 * ending with MI_BATCH_BUFFER_END. The lengths are where the next header starts in that batch (85 entries: PIPE_CONTROL,
 * PIPELINE_SELECT, 81 3D/state commands, 3DPRIMITIVE, MI_BATCH_BUFFER_END; 886 dwords in all). Only the headers are
 * kept (bodies are zeros here: the model skips 3D state), so this is the shape of the stream, not its contents.
 *
 * Test data only: no index.ts exports it.
 */
export const NULL_RENDER_STATE: readonly (readonly [number, number])[] = [
  [0x7a000004, 6],
  [0x69040300, 1],
  [0x78140000, 2],
  [0x7820000a, 12],
  [0x78130002, 4],
  [0x781f0004, 6],
  [0x78510009, 11],
  [0x78100007, 9],
  [0x781b0007, 9],
  [0x78110008, 10],
  [0x781e0003, 5],
  [0x781d0009, 11],
  [0x78120002, 4],
  [0x78500003, 5],
  [0x781c0002, 4],
  [0x780c0000, 2],
  [0x78520003, 5],
  [0x78300000, 2],
  [0x78310000, 2],
  [0x78320000, 2],
  [0x78330000, 2],
  [0x79190002, 4],
  [0x791a0002, 4],
  [0x791b0002, 4],
  [0x79120000, 2],
  [0x79130000, 2],
  [0x79140000, 2],
  [0x79150000, 2],
  [0x79160000, 2],
  [0x78150009, 11],
  [0x78190009, 11],
  [0x781a0009, 11],
  [0x78160009, 11],
  [0x78170009, 11],
  [0x78490001, 3],
  [0x784a0000, 2],
  [0x784b0000, 2],
  [0x79170101, 259],
  [0x79180006, 8],
  [0x79180006, 8],
  [0x79180006, 8],
  [0x79180006, 8],
  [0x61010011, 19],
  [0x61020001, 3],
  [0x79000002, 4],
  [0x78050006, 8],
  [0x79040002, 4],
  [0x79040002, 4],
  [0x79040002, 4],
  [0x79040002, 4],
  [0x79080001, 3],
  [0x790a0001, 3],
  [0x78060003, 5],
  [0x78070003, 5],
  [0x78040001, 3],
  [0x79110000, 2],
  [0x780d0000, 2],
  [0x79060000, 2],
  [0x7907001f, 33],
  [0x7902000f, 17],
  [0x790c000f, 17],
  [0x780a0003, 5],
  [0x78080083, 133],
  [0x78090043, 69],
  [0x78550003, 5],
  [0x680b0001, 1],
  [0x780e0000, 2],
  [0x78240000, 2],
  [0x784f0000, 2],
  [0x784d0000, 2],
  [0x782b0000, 2],
  [0x782c0000, 2],
  [0x782d0000, 2],
  [0x782e0000, 2],
  [0x782f0000, 2],
  [0x780f0000, 2],
  [0x78230000, 2],
  [0x78210000, 2],
  [0x78260000, 2],
  [0x78270000, 2],
  [0x78280000, 2],
  [0x78290000, 2],
  [0x782a0000, 2],
  [0x7b000005, 7],
  [0x05000000, 1],
];

/** The batch's dwords: each header followed by zeros to its length. */
export function nullRenderStateBatch(): Uint32Array {
  const total = NULL_RENDER_STATE.reduce((n, [, len]) => n + len, 0);
  const out = new Uint32Array(total);
  let at = 0;
  for (const [header, len] of NULL_RENDER_STATE) {
    out[at] = header;
    at += len;
  }
  return out;
}
