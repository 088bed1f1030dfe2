#!/usr/bin/env node
// Start-up of the command line, against `node -e 0` measured in the same run (hyperfine is not installed here):
// each command is run RUNS times in turn with the others, and the median and minimum wall times are printed with the
// ratio of each median to node's. The target (issue 16): `vgpu --version` and `vgpu list` within 2x of `node -e 0`.
// `vgpu list` talks to a small host started for the purpose (mtty only: the host's own start-up is not measured);
// `vgpu list -d` with no host reads the definition files itself (and loads zod to check them).
// Runs the build in dist/ through bin/vgpu.js, so `npm run build` first (when src/ is newer it sets
// VGPU_FROM_DIST=1 and says so).
// Usage: node bench/startup.mjs [RUNS]   (npm run bench:startup)
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;
const RUNS = Number(process.argv[2]) || 30;

function newestSource(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestSource(p));
    else if (e.name.endsWith(".ts") && !e.name.endsWith(".test.ts")) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

const stamp = statSync(join(ROOT, "dist", ".build-stamp"), { throwIfNoEntry: false });
if (stamp === undefined) {
  console.error("bench/startup: no build in dist/: run `npm run build` first");
  process.exit(1);
}
const stale = newestSource(join(ROOT, "src")) > stamp.mtimeMs;
if (stale) console.error("bench/startup: note: src/ changed since the build; measuring the build in dist/ as it is");

const work = mkdtempSync(join(tmpdir(), "vgpu-startup-"));
const hostRoot = join(work, "host");
const filesRoot = join(work, "files");
const config = join(work, "host.json");
writeFileSync(config, JSON.stringify({ memory: "1 GiB", parents: [{ kind: "mtty", ports: 4 }] }));
const vgpu = join(ROOT, "bin", "vgpu.js");
// The build in dist/: as a user's start runs it (the launcher's check of src/ included), or, when src/ is newer,
// whatever its age (bin/launch.js would otherwise run the sources through tsx).
const env = { ...process.env, VGPU_ROOT: filesRoot, ...(stale ? { VGPU_FROM_DIST: "1" } : {}) };

const host = spawn(process.execPath, [vgpu, "host", "--root", hostRoot, "--config", config], {
  env,
  stdio: ["ignore", "ignore", "pipe"],
});
await new Promise((resolve, reject) => {
  let err = "";
  host.stderr.on("data", (d) => {
    err += d;
    if (err.includes("serving on")) resolve();
  });
  host.on("exit", () => reject(new Error(`the host exited:\n${err}`)));
});
for (const args of [
  ["start", "-p", "mtty", "-t", "mtty-1", "--root", hostRoot],
  ["define", "-p", "mtty", "-t", "mtty-2", "-f"],
]) {
  spawnSync(process.execPath, [vgpu, ...args], { env, stdio: "ignore" });
}

const commands = [
  { name: "node -e 0", argv: ["-e", "0"] },
  { name: "vgpu --version", argv: [vgpu, "--version"] },
  { name: "vgpu list (host running)", argv: [vgpu, "list", "--root", hostRoot] },
  { name: "vgpu list -d (no host)", argv: [vgpu, "list", "-d"] },
  { name: "lsmdev -d (no host)", argv: [join(ROOT, "bin", "lsmdev.js"), "-d"] },
];
const times = commands.map(() => []);
for (let i = 0; i < RUNS; i++) {
  commands.forEach((c, k) => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(process.execPath, c.argv, { env, stdio: "ignore" });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r.status !== 0) throw new Error(`${c.name} exited ${r.status}`);
    times[k].push(ms);
  });
}
host.kill("SIGTERM");
await new Promise((resolve) => host.on("exit", resolve));
rmSync(work, { recursive: true, force: true });

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const base = median(times[0]);
console.log(
  `start-up, ${RUNS} runs each, interleaved; node ${process.version}, ${cpus().length} x ${cpus()[0]?.model}`,
);
console.log(`${"command".padEnd(28)} ${"median".padStart(9)} ${"min".padStart(9)}  vs node -e 0 (median)`);
commands.forEach((c, k) => {
  const m = median(times[k]);
  const min = Math.min(...times[k]);
  console.log(
    `${c.name.padEnd(28)} ${m.toFixed(1).padStart(6)} ms ${min.toFixed(1).padStart(6)} ms  ${(m / base).toFixed(2)}x`,
  );
});
