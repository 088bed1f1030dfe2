/**
 * The architecture holds by itself: the layer diagram of docs/ARCHITECTURE.md ("Layers (imports point down only)") is
 * read from the document, and every import in src/ is checked against it.
 * - Each top-level folder of src/ appears in the diagram (a new layer is placed before it is used).
 * - An import from one top-level folder into another points down: to a folder on a lower row of the diagram (folders
 *   on the same row are siblings and do not import each other).
 * - It goes through that folder's public face, `index.ts`, never past it to a file inside.
 * Test files (`*.test.ts`) and fixtures (`testing.ts`, files under `testing/` or `test-support/`, which no index.ts
 * exports) may assemble several layers and are exempt as importers.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { describe, it } from "node:test";

const ROOT = resolve(import.meta.dirname, "..");
const SRC = join(ROOT, "src");

/** Rows of the diagram, top first: each a list of folder names. */
function layerRows(): string[][] {
  const doc = readFileSync(join(ROOT, "docs", "ARCHITECTURE.md"), "utf8");
  const section = doc.split(/^## /m).find((s) => s.startsWith("Layers"));
  assert.ok(section, "docs/ARCHITECTURE.md has a '## Layers' section");
  const block = section.split("```")[1];
  assert.ok(block, "the Layers section has a code block with the diagram");
  const rows: string[][] = [];
  for (const line of block.split("\n")) {
    if (line.length === 0 || line.startsWith(" ")) continue; // descriptions are indented
    const folders: string[] = [];
    for (const tok of line.split(/\s+/)) {
      const m = /^([a-z][a-z0-9-]*)\/$/.exec(tok);
      if (m === null) break;
      folders.push(m[1]!);
    }
    if (folders.length > 0) rows.push(folders);
  }
  return rows;
}

function sourceFiles(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) sourceFiles(p, out);
    else if (name.endsWith(".ts")) out.push(p);
  }
  return out;
}

function isExempt(file: string): boolean {
  const rel = relative(SRC, file).split(sep);
  return (
    file.endsWith(".test.ts") ||
    rel.includes("testing") ||
    rel.includes("test-support") ||
    rel[rel.length - 1] === "testing.ts"
  );
}

/** Relative imports and re-exports of a file (type-only ones included: they are dependencies too). */
function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?\bfrom\s+"(\.{1,2}\/[^"]+)"/gms)) out.push(m[1]!);
  for (const m of text.matchAll(/\bimport\(\s*"(\.{1,2}\/[^"]+)"\s*\)/g)) out.push(m[1]!);
  return out;
}

describe("layering", () => {
  const rows = layerRows();
  const rank = new Map<string, number>();
  rows.forEach((row, i) => {
    for (const f of row) rank.set(f, i);
  });

  it("places every folder of src/ in the diagram of docs/ARCHITECTURE.md", () => {
    const folders = readdirSync(SRC).filter((n) => statSync(join(SRC, n)).isDirectory());
    const missing = folders.filter((f) => !rank.has(f));
    assert.deepEqual(missing, [], `folders missing from the Layers diagram: ${missing.join(", ")}`);
    assert.ok(rows.length >= 5, `the diagram parsed into ${rows.length} rows`);
  });

  it("points every import between layers down the diagram, through the target's index.ts", () => {
    const files = sourceFiles(SRC)
      .filter((f) => !isExempt(f))
      .map((f) => ({ path: relative(SRC, f), imports: importsOf(f) }));
    const problems = violations(files, rank);
    assert.deepEqual(problems, [], `layering violations:\n${problems.join("\n")}`);
  });

  it("catches planted violations (the checker is not vacuous)", () => {
    const planted = violations(
      [
        { path: "host/iommu.ts", imports: ["../scenario/index.ts"] },
        { path: "vgpu/gtt.ts", imports: ["../gpu/regs.ts", "../gpu/index.ts", "./types.ts"] },
        { path: "vmm/vmm.ts", imports: ["../guest/index.ts"] },
      ],
      rank,
    );
    assert.equal(planted.length, 3, planted.join("\n"));
    assert.match(planted[0]!, /scenario\/ is above host\//);
    assert.match(planted[1]!, /past gpu\/index\.ts/);
    assert.match(planted[2]!, /a sibling of vmm\//);
  });
});

/** Layering problems of files (paths relative to src/) with their relative import specifiers. */
function violations(files: { path: string; imports: string[] }[], rank: Map<string, number>): string[] {
  const problems: string[] = [];
  for (const { path, imports } of files) {
    const from = path.split("/")[0]!;
    for (const spec of imports) {
      const rel = relative(SRC, resolve(SRC, dirname(path), spec)).split(sep);
      if (rel[0] === ".." || rel.length < 2) continue; // outside src/ (none expected) or src/ itself
      const to = rel[0]!;
      if (to === from) continue;
      const where = `src/${path} imports ${spec}`;
      const rf = rank.get(from);
      const rt = rank.get(to);
      if (rf === undefined || rt === undefined) continue; // reported by the first test
      if (rt <= rf)
        problems.push(`${where}: ${to}/ is ${rt === rf ? "a sibling of" : "above"} ${from}/ in the diagram`);
      if (!(rel.length === 2 && rel[1] === "index.ts")) {
        problems.push(`${where}: past ${to}/index.ts (import the folder's public face)`);
      }
    }
  }
  return problems;
}
