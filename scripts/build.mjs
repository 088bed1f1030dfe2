#!/usr/bin/env node
// Compiles src/ (tests excluded) to dist/ with tsc (tsconfig.build.json: .ts imports rewritten to .js; --noCheck:
// emit only, type checking is `npm run typecheck`, part of `npm test`), then writes
// dist/.build-stamp with the time the build started: bin/vgpu.js runs dist/ only while no file under src/ is newer
// than the stamp (a source edited during the build makes the next start use the sources). `npm install` runs this
// through the `prepare` script, `npm run build` by hand.
import { spawnSync } from "node:child_process";
import { rmSync, utimesSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const started = new Date();
rmSync(`${root}dist`, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const r = spawnSync(process.execPath, [tsc, "-p", `${root}tsconfig.build.json`, "--noCheck"], { stdio: "inherit" });
if (r.status !== 0) {
  console.error("vgpu build: tsc failed; bin/vgpu.js runs the TypeScript sources through tsx until a build succeeds");
  process.exit(r.status ?? 1);
}
const stamp = `${root}dist/.build-stamp`;
writeFileSync(stamp, `${started.toISOString()}\n`);
utimesSync(stamp, started, started);
