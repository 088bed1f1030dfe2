/**
 * The comparison's HTML page: self-contained (no script, stylesheet, font or image fetched: it opens with no
 * network), one SVG chart per figure, a card per design; and, where Debian's chromium is installed, rendered by a
 * real browser (playwright-core, headless) without a console error or a failed request, with a screenshot left in
 * the temporary directory for a person to look at.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import {
  type CompareResult,
  compareHtml,
  compareJson,
  formatCompare,
  runCompare,
  runExperiments,
} from "../src/compare/index.ts";
import { loadScenarioFile } from "../src/scenario/index.ts";

const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));

describe("vgpu compare reports", () => {
  let html: string;
  let text: string[];
  let json: string;
  let result: CompareResult;
  before(() => {
    const r = runCompare(loadScenarioFile(new URL("../scenarios/compare.json", import.meta.url).pathname), {
      designs: ["identity", "dma-api", "ats"],
    });
    result = r;
    html = compareHtml(r);
    text = formatCompare(r);
    json = compareJson(r);
  });

  it("the terminal table has a row per design and the verdicts", () => {
    assert.match(text.find((l) => l.startsWith("2 identity"))!, /COLLISION/);
    assert.match(text.find((l) => l.startsWith("5 dma-api"))!, /isolated/);
    assert.ok(text.some((l) => /address 0x[0-9a-f]+: vgpu\d+'s page .* the host driver's IOVA holds it/.test(l)));
  });

  it("the JSON carries every design, NaN as null, and the cost model with sources", () => {
    const j = JSON.parse(json) as {
      results: { design: { id: string }; atcHitRate: number | null }[];
      costs: { key: string; source: string }[];
    };
    assert.deepEqual(
      j.results.map((r) => r.design.id),
      ["identity", "dma-api", "ats"],
    );
    assert.equal(j.results[1]!.atcHitRate, null);
    assert.ok(j.costs.every((c) => c.source.length > 0));
  });

  it("the page is self-contained", () => {
    assert.ok(html.startsWith("<!doctype html>"));
    assert.doesNotMatch(html, /<script|<link|<img|<iframe|@import|url\(|\b(src|href)\s*=/i);
    assert.equal((html.match(/<svg /g) ?? []).length, 6);
    assert.equal((html.match(/class="card /g) ?? []).length, 3);
  });

  it("the cost model's experiments add three charts", () => {
    const withExp = compareHtml(result, runExperiments());
    assert.equal((withExp.match(/<svg /g) ?? []).length, 9);
    assert.match(withExp, /FAST&#39;15|FAST'15/);
  });

  it("renders in a real chromium without errors", {
    skip: CHROMIUM === undefined ? "no chromium installed (apt-get install chromium)" : false,
  }, async () => {
    let pw: typeof import("playwright-core");
    try {
      pw = await import("playwright-core");
    } catch {
      return; // the dev dependency is not installed: nothing to drive the browser with
    }
    const dir = mkdtempSync(join(tmpdir(), "vgpu-compare-"));
    const file = join(dir, "compare.html");
    writeFileSync(file, html);
    const browser = await pw.chromium.launch({ executablePath: CHROMIUM!, args: ["--no-sandbox"] });
    try {
      const page = await browser.newPage({ viewport: { width: 1240, height: 900 } });
      const problems: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error") problems.push(m.text());
      });
      page.on("requestfailed", (r) => problems.push(`request ${r.url()}`));
      page.on("request", (r) => {
        if (!r.url().startsWith("file:")) problems.push(`network request ${r.url()}`);
      });
      await page.goto(`file://${file}`);
      assert.deepEqual(problems, []);
      assert.equal(await page.locator("svg").count(), 6);
      const box = await page.locator("svg").first().boundingBox();
      assert.ok(box !== null && box.width > 300 && box.height > 150, JSON.stringify(box));
      const bars = await page.locator("svg rect").count();
      assert.ok(bars > 20, `${bars} bars drawn`);
      await page.screenshot({ path: join(dir, "compare.png"), fullPage: true });
    } finally {
      await browser.close();
    }
  });
});
