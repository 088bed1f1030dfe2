// Shared by bin/vgpu.js and bin/lsmdev.js: runs the compiled entry dist/cli/<name>.js, built by `npm install` (the
// `prepare` script) or `npm run build`. In a checkout where a file under src/ is newer than the build
// (dist/.build-stamp), or with VGPU_FROM_SOURCE=1, it runs src/cli/<name>.ts through tsx instead, so an edit takes
// effect at once (at a slower start, ~1 s) until the next build; without tsx (an install without dev dependencies)
// it runs dist/ as it is. Checking costs a stat per source file (~2 ms). VGPU_FROM_DIST=1 runs dist/ whatever its
// age (bench/startup.mjs measures the build while others edit src/).
import { readdirSync, statSync } from "node:fs";

const root = new URL("..", import.meta.url);

function mtimeOf(url) {
  return statSync(url, { throwIfNoEntry: false })?.mtimeMs ?? -1;
}

/** Whether any .ts file under `dir` (a path) was modified after `since` (ms). */
function newerSource(dir, since) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return false;
  }
  for (const e of entries) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) {
      if (newerSource(p, since)) return true;
    } else if (e.name.endsWith(".ts") && !e.name.endsWith(".test.ts") && statSync(p).mtimeMs > since) {
      return true;
    }
  }
  return false;
}

export async function launch(name) {
  const built = mtimeOf(new URL("dist/.build-stamp", root));
  const srcDir = new URL("src", root).pathname;
  const fromSource =
    process.env.VGPU_FROM_SOURCE === "1" ||
    built < 0 ||
    (process.env.VGPU_FROM_DIST !== "1" && newerSource(decodeURIComponent(srcDir), built));
  const compiled = new URL(`dist/cli/${name}.js`, root);
  if (fromSource) {
    let tsx;
    try {
      tsx = await import("tsx/esm/api");
    } catch {
      tsx = undefined;
    }
    if (tsx !== undefined) {
      tsx.register();
      await import(new URL(`src/cli/${name}.ts`, root).href);
      return;
    }
    if (mtimeOf(compiled) < 0) {
      process.stderr.write(
        "vgpu: ENOENT (No such file or directory): no build in dist/ and no tsx to run the sources: run `npm install`\n",
      );
      process.exit(1);
    }
  }
  await import(compiled.href);
}
