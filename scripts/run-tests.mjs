#!/usr/bin/env node
// Runs every *.test.ts under src/ and test/ with Node's built-in runner (Node 20 has no --test globs), two files at a
// time, each in its own process (as `node --test` does), and prints one line per file as it finishes, the failures
// of a failing file under its line, and a summary. The full TAP of every file goes to
// node_modules/.cache/vgpu/test-results.tap (the summary names it); VGPU_TEST_TAP=1 prints the TAP on stdout instead,
// as `node --test` would. VGPU_TEST_JOBS=N runs N files at a time.
// Usage: node scripts/run-tests.mjs [filter-substring ...]
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";

function walk(dir, out) {
  let entries;
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of entries) {
    if (name === "node_modules") continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith(".test.ts")) out.push(p);
  }
  return out;
}

const filters = process.argv.slice(2);
const files = [...walk("src", []), ...walk("test", [])]
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();
if (files.length === 0) {
  console.error("no test files matched");
  process.exit(1);
}

const tapOnStdout = process.env.VGPU_TEST_TAP === "1";
const jobs = Math.max(1, Number(process.env.VGPU_TEST_JOBS) || 2);
const tapDir = join("node_modules", ".cache", "vgpu");
const tapFile = join(tapDir, "test-results.tap");
const started = Date.now();
const totals = { files: 0, failedFiles: 0, tests: 0, pass: 0, fail: 0, skipped: 0, todo: 0 };
const taps = new Map();
const width = String(files.length).length;

/** The `# name N` counters at the end of a TAP stream. */
function counter(tap, name) {
  const m = new RegExp(`^# ${name} (\\d+)$`, "m").exec(tap);
  return m ? Number(m[1]) : 0;
}

/** The failing tests of a TAP stream, with their error blocks, for the reader (at most `max` lines). */
function failures(tap, max = 60) {
  const lines = tap.split("\n");
  const out = [];
  for (let i = 0; i < lines.length && out.length < max; i++) {
    const line = lines[i];
    if (!/^\s*not ok \d+/.test(line)) continue;
    // Only leaves: a parent's "N subtests failed" repeats what its children said.
    const block = [line.replace(/^\s*/, "  ")];
    let j = i + 1;
    while (j < lines.length && !/^\s*(not )?ok \d+/.test(lines[j]) && !/^\s*# Subtest/.test(lines[j])) {
      const l = lines[j].trim();
      j++;
      if (l === "stack: |-") break; // the location line says where; the frames are the runner's
      if (/^(duration_ms|failureType|code|name|type):/.test(l) || /^1\.\.\d+$/.test(l)) continue;
      block.push(`    ${l}`);
    }
    if (block.some((l) => /subtests? failed/.test(l))) continue;
    out.push(...block.filter((l) => l.trim() !== "" && !/^\s*(---|\.\.\.)$/.test(l)));
  }
  return out.slice(0, max);
}

function runFile(file) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, ["--import", "tsx", "--test", "--test-reporter=tap", file], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let tap = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      tap += d;
      if (tapOnStdout) process.stdout.write(d);
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("close", (code, signal) => {
      taps.set(file, tap);
      const n = { tests: counter(tap, "tests"), pass: counter(tap, "pass"), fail: counter(tap, "fail") };
      const skipped = counter(tap, "skipped");
      const todo = counter(tap, "todo");
      const failed = code !== 0 || n.fail > 0;
      totals.files++;
      totals.tests += n.tests;
      totals.pass += n.pass;
      totals.fail += n.fail;
      totals.skipped += skipped;
      totals.todo += todo;
      if (failed) totals.failedFiles++;
      if (!tapOnStdout) {
        const secs = ((Date.now() - t0) / 1000).toFixed(1);
        const extra = [skipped > 0 ? `${skipped} skipped` : "", todo > 0 ? `${todo} todo` : ""].filter((x) => x);
        const what = failed
          ? `${n.fail} of ${n.tests} failed${signal ? `, killed by ${signal}` : code !== 0 && n.fail === 0 ? `, exit ${code}` : ""}`
          : `${n.tests} tests${extra.length > 0 ? `, ${extra.join(", ")}` : ""}`;
        const pos = `${String(totals.files).padStart(width)}/${files.length}`;
        let text = `${failed ? "FAIL" : "ok  "} ${pos}  ${relative(".", file)}  (${what}, ${secs} s)\n`;
        if (failed) {
          const f = failures(tap);
          text += f.length > 0 ? `${f.join("\n")}\n` : "";
          if (f.length === 0 && stderr.trim() !== "") text += `${stderr.trim().split("\n").slice(-20).join("\n")}\n`;
        }
        process.stdout.write(text);
      }
      resolve();
    });
  });
}

let next = 0;
async function worker() {
  while (next < files.length) {
    const i = next++;
    await runFile(files[i]);
  }
}
await Promise.all(Array.from({ length: Math.min(jobs, files.length) }, () => worker()));

if (!tapOnStdout) {
  try {
    mkdirSync(tapDir, { recursive: true });
    writeFileSync(tapFile, files.map((f) => `# file: ${f}\n${taps.get(f) ?? ""}`).join(""));
  } catch {
    // The summary still says how it went.
  }
  const secs = ((Date.now() - started) / 1000).toFixed(0);
  const extra = [
    totals.skipped > 0 ? `${totals.skipped} skipped` : "",
    totals.todo > 0 ? `${totals.todo} todo` : "",
  ].filter((x) => x);
  process.stdout.write(
    `\n${totals.files} files, ${totals.tests} tests: ${totals.pass} passed, ${totals.fail} failed` +
      `${extra.length > 0 ? `, ${extra.join(", ")}` : ""} in ${secs} s` +
      `${totals.failedFiles > 0 ? ` (${totals.failedFiles} file(s) failed)` : ""}; TAP in ${tapFile}\n`,
  );
}
process.exit(totals.failedFiles > 0 ? 1 : 0);
