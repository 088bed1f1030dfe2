/**
 * The definition store: mdevctl-format definition files under `<root>/mdevctl.d/<parent>/<uuid>`.
 *
 * The folder is the source of truth and is read afresh by every `load()`, so files a person edits by hand take
 * effect on the next command, as with mdevctl. Loading never throws for bad content: each file or folder that is
 * not a definition is skipped with a warning that names it and says why —
 * - a file whose name is not a UUID (`notes.txt`), an editor backup (`<uuid>~`, `#<uuid>#`, `<uuid>.swp`),
 * - a plain file where a parent folder belongs, a folder inside a parent folder,
 * - a file that is not valid JSON or not a valid definition (with the JSON path of the bad field),
 * - two files of one parent naming the same UUID in different letter cases (the canonical lower-case one wins),
 * - a temporary file left by an interrupted write (see below);
 * and a missing `mdevctl.d` is simply an empty store (mdevctl #56). mdevctl's own `scripts.d` is skipped silently.
 *
 * Writes are atomic: the new contents go to a temporary file in the same folder (`.<uuid>.tmp-<pid>-<n>`, a name no
 * load mistakes for a definition), which is fsynced, then renamed over the definition, and the folder is fsynced.
 * A crash at any point leaves either the old file or the new one, never a mix; a leftover temporary is reported by
 * `load()` and removed by `removeTemporaries()` (the daemon calls it at start). Files are written in mdevctl's
 * format (pretty printed, keys in mdevctl's order), named by the canonical lower-case UUID.
 *
 * What it does not do: locking between processes. Only the host daemon writes here, one request at a time.
 */
import {
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { Errno, KernelError } from "../core/index.ts";
import {
  badComponentName,
  byteOrder,
  formatDefinitionFile,
  isCanonicalUuid,
  type MdevDefinition,
  parseDefinitionText,
  parseUuid,
} from "./mdevctl-json.ts";

/** A definition as loaded, with the file it came from. */
export interface StoredDefinition {
  readonly parent: string;
  readonly uuid: string;
  readonly definition: MdevDefinition;
  readonly file: string;
}

export interface LoadResult {
  /** Sorted by parent (byte order), then UUID. */
  readonly definitions: readonly StoredDefinition[];
  readonly warnings: readonly string[];
}

export interface DefinitionStoreOptions {
  /** The `mdevctl.d` folder. */
  readonly dir: string;
  /**
   * Called after the temporary file is written and synced, before it is renamed over the definition: tests throw
   * here to model a crash between the two steps.
   */
  readonly beforeRename?: (tempPath: string, finalPath: string) => void;
}

/** Matches the store's own temporary files. */
const TEMP_FILE = /^\.(.+)\.tmp-\d+-\d+$/;
/** mdevctl keeps its callout scripts beside the parent folders. */
const MDEVCTL_SCRIPTS_DIR = "scripts.d";

function isEditorLeftover(name: string): boolean {
  return (
    name.endsWith("~") ||
    (name.startsWith("#") && name.endsWith("#")) ||
    /\.(swp|swo|swx|bak|orig|rej|tmp|save)$/i.test(name) ||
    name.startsWith(".#")
  );
}

export class DefinitionStore {
  readonly dir: string;
  private readonly beforeRename: ((tempPath: string, finalPath: string) => void) | undefined;
  private tempCounter = 0;

  constructor(opts: DefinitionStoreOptions) {
    this.dir = opts.dir;
    this.beforeRename = opts.beforeRename;
  }

  /** Reads every definition. Never throws for bad content; see the module comment for what is skipped. */
  load(): LoadResult {
    const warnings: string[] = [];
    const definitions: StoredDefinition[] = [];
    let parents: string[];
    try {
      parents = readdirSync(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return { definitions, warnings };
      throw new KernelError(Errno.EIO, `cannot read the definitions folder ${this.dir}: ${(e as Error).message}`);
    }
    parents.sort(byteOrder);
    for (const parent of parents) {
      const parentPath = join(this.dir, parent);
      if (parent === MDEVCTL_SCRIPTS_DIR) continue;
      const st = lstatSync(parentPath, { throwIfNoEntry: false });
      if (!st) continue;
      if (!st.isDirectory()) {
        warnings.push(`ignoring ${parentPath}: not a parent folder (definitions live in ${this.dir}/<parent>/<uuid>)`);
        continue;
      }
      const bad = badComponentName(parent);
      if (bad || isEditorLeftover(parent)) {
        warnings.push(`ignoring folder ${parentPath}: not a parent name (${bad ?? "looks like an editor backup"})`);
        continue;
      }
      this.loadParent(parent, parentPath, definitions, warnings);
    }
    return { definitions, warnings };
  }

  private loadParent(parent: string, parentPath: string, out: StoredDefinition[], warnings: string[]): void {
    let names: string[];
    try {
      names = readdirSync(parentPath);
    } catch (e) {
      warnings.push(`ignoring folder ${parentPath}: cannot read it (${(e as Error).message})`);
      return;
    }
    names.sort(byteOrder);
    const byUuid = new Map<string, StoredDefinition>();
    for (const name of names) {
      const file = join(parentPath, name);
      const st = lstatSync(file, { throwIfNoEntry: false });
      if (!st) continue;
      if (TEMP_FILE.test(name)) {
        warnings.push(
          `ignoring ${file}: temporary file left by an interrupted write (the definition it was replacing is intact)`,
        );
        continue;
      }
      if (st.isDirectory()) {
        warnings.push(`ignoring folder ${file}: a parent folder holds only definition files`);
        continue;
      }
      if (!st.isFile()) {
        warnings.push(`ignoring ${file}: not a regular file`);
        continue;
      }
      const uuid = parseUuid(name);
      if (uuid === undefined) {
        warnings.push(
          isEditorLeftover(name)
            ? `ignoring ${file}: editor backup, not a definition`
            : `ignoring ${file}: not a definition (the file name is not a UUID)`,
        );
        continue;
      }
      let text: string;
      try {
        text = readFileSync(file, "utf8");
      } catch (e) {
        warnings.push(`ignoring ${file}: cannot read it (${(e as Error).message})`);
        continue;
      }
      const parsed = parseDefinitionText(text);
      if (!parsed.ok) {
        warnings.push(`ignoring definition ${file}: ${parsed.problem}`);
        continue;
      }
      const def: StoredDefinition = { parent, uuid, definition: parsed.definition, file };
      const prev = byUuid.get(uuid);
      if (prev) {
        // Two spellings of one UUID: keep the canonical file name, whatever the directory order.
        const keep = isCanonicalUuid(name) ? def : prev;
        const drop = keep === def ? prev : def;
        warnings.push(`ignoring ${drop.file}: duplicate of ${keep.file} (the same UUID in another letter case)`);
        byUuid.set(uuid, keep);
        continue;
      }
      byUuid.set(uuid, def);
    }
    const list = [...byUuid.values()].sort((a, b) => byteOrder(a.uuid, b.uuid));
    for (const d of list) out.push(d);
  }

  /** The canonical path of a definition. */
  pathOf(parent: string, uuid: string): string {
    const bad = badComponentName(parent);
    if (bad) throw new KernelError(Errno.EINVAL, `invalid parent name '${parent}': it ${bad}`);
    const canonical = parseUuid(uuid);
    if (canonical === undefined) throw new KernelError(Errno.EINVAL, `invalid UUID '${uuid}'`);
    return join(this.dir, parent, canonical);
  }

  /**
   * Writes a definition atomically (see the module comment). `replacing` is the file the definition was loaded
   * from, when its name is not the canonical one: it is removed after the new file is in place.
   */
  save(parent: string, uuid: string, definition: MdevDefinition, replacing?: string): string {
    const finalPath = this.pathOf(parent, uuid);
    const folder = join(this.dir, parent);
    try {
      mkdirSync(folder, { recursive: true, mode: 0o755 });
    } catch (e) {
      throw new KernelError(Errno.EIO, `cannot create ${folder}: ${(e as Error).message}`);
    }
    const name = finalPath.slice(folder.length + 1);
    const tempPath = join(folder, `.${name}.tmp-${process.pid}-${this.tempCounter++}`);
    const text = formatDefinitionFile(definition);
    let fd: number | undefined;
    try {
      fd = openSync(tempPath, "wx", 0o644);
      const buf = Buffer.from(text, "utf8");
      let off = 0;
      while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
      fsyncSync(fd);
      closeSync(fd);
      fd = undefined;
      this.beforeRename?.(tempPath, finalPath);
      renameSync(tempPath, finalPath);
    } catch (e) {
      if (fd !== undefined) closeSync(fd);
      rmSync(tempPath, { force: true });
      if (e instanceof KernelError) throw e;
      throw new KernelError(
        Errno.EIO,
        `cannot write ${finalPath}: ${(e as Error).message} (the previous file is unchanged)`,
      );
    }
    syncFolder(folder);
    if (replacing !== undefined && replacing !== finalPath) {
      rmSync(replacing, { force: true });
      syncFolder(folder);
    }
    return finalPath;
  }

  /** Removes a definition file (the one it was loaded from). ENOENT if it is not there. */
  remove(file: string): void {
    try {
      unlinkSync(file);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT") throw new KernelError(Errno.ENOENT, `definition file ${file} is already gone`);
      throw new KernelError(Errno.EIO, `cannot remove ${file}: ${(e as Error).message}`);
    }
    const folder = join(file, "..");
    syncFolder(folder);
  }

  /** Deletes temporary files left by interrupted writes; returns their paths. */
  removeTemporaries(): string[] {
    const removed: string[] = [];
    let parents: string[];
    try {
      parents = readdirSync(this.dir);
    } catch {
      return removed;
    }
    for (const parent of parents.sort(byteOrder)) {
      const folder = join(this.dir, parent);
      if (!lstatSync(folder, { throwIfNoEntry: false })?.isDirectory()) continue;
      let names: string[];
      try {
        names = readdirSync(folder);
      } catch {
        continue;
      }
      for (const name of names.sort(byteOrder)) {
        if (!TEMP_FILE.test(name)) continue;
        const p = join(folder, name);
        rmSync(p, { force: true });
        removed.push(p);
      }
    }
    return removed;
  }
}

/** fsync on a folder makes a rename or unlink in it durable. */
function syncFolder(folder: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(folder, "r");
    fsyncSync(fd);
  } catch {
    // Some filesystems refuse fsync on directories; the rename itself is still atomic.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
