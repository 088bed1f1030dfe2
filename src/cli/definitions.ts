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
 * What the loader skips, the writer refuses, so a definition that is written is always listed: one predicate
 * (`parentFolderProblem`) names the parent folders the loader reads, and `save()` checks the definition with the
 * loader's own parser (the field schemas of mdevctl-json.ts) and refuses any it would not read back unchanged. A
 * parent folder that is a symbolic link is skipped on read and never written through: the writer opens the folder
 * with O_NOFOLLOW and refuses with ELOOP, and refuses to replace anything but a regular file at a definition's path.
 *
 * Writes are atomic: the new contents go to a temporary file in the same folder (`.<uuid>.tmp-<pid>-<n>`, a name no
 * load mistakes for a definition), which is fsynced, then renamed over the definition, and the folder is fsynced.
 * A crash at any point leaves either the old file or the new one, never a mix; a leftover temporary is reported by
 * `load()` and removed by `removeTemporaries()` (the daemon calls it at start). Files are written in mdevctl's
 * format (pretty printed, keys in mdevctl's order), named by the canonical lower-case UUID.
 *
 * What it does not do: locking between processes (the host daemon writes one request at a time, and with no host
 * the files-only commands write in their own process, as mdevctl does: two at once each write atomically, and the
 * last rename wins), or
 * guard the folder against a rename race: Node has no openat(), so the temporary file is created by path after the
 * folder was checked; the daemon's root is 0700, so only its owner could swap the folder in between.
 */
import {
  closeSync,
  constants,
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
import { isDeepStrictEqual } from "node:util";
import { Errno, KernelError } from "../core/index.ts";
import {
  badComponentName,
  byteOrder,
  describeZodError,
  formatDefinitionFile,
  isCanonicalUuid,
  type MdevDefinition,
  mdevDefinitionSchema,
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

/**
 * Why `name` cannot be a parent folder of the store, as a sentence fragment ("starts with '.'"), or undefined. The
 * loader skips every folder this refuses and the writer refuses to create one: the one rule for both.
 */
export function parentFolderProblem(name: string): string | undefined {
  const bad = badComponentName(name);
  if (bad !== undefined) return bad;
  if (name === MDEVCTL_SCRIPTS_DIR) return "is mdevctl's folder of callout scripts";
  if (isEditorLeftover(name)) return "looks like an editor backup";
  return undefined;
}

/** The EINVAL for a parent name the store cannot hold. */
export function invalidParentName(parent: string, problem: string): KernelError {
  return new KernelError(
    Errno.EINVAL,
    `invalid parent name '${parent}': it ${problem}, so \`vgpu list -d\` would never show a definition under it; ` +
      "use the parent's device name (see `vgpu types`)",
  );
}

const O_NOFOLLOW = constants.O_NOFOLLOW;
const O_DIRECTORY = constants.O_DIRECTORY;

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
      if (st.isSymbolicLink()) {
        warnings.push(`ignoring ${parentPath}: a symbolic link (a parent folder must be a real folder)`);
        continue;
      }
      if (!st.isDirectory()) {
        warnings.push(`ignoring ${parentPath}: not a parent folder (definitions live in ${this.dir}/<parent>/<uuid>)`);
        continue;
      }
      const problem = parentFolderProblem(parent);
      if (problem !== undefined) {
        warnings.push(`ignoring folder ${parentPath}: not a parent name (${problem})`);
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

  /** The canonical path of a definition. EINVAL for a parent name the loader would skip, or a bad UUID. */
  pathOf(parent: string, uuid: string): string {
    const problem = parentFolderProblem(parent);
    if (problem !== undefined) throw invalidParentName(parent, problem);
    const canonical = parseUuid(uuid);
    if (canonical === undefined) throw new KernelError(Errno.EINVAL, `invalid UUID '${uuid}'`);
    return join(this.dir, parent, canonical);
  }

  /**
   * Writes a definition atomically (see the module comment). `replacing` is the file the definition was loaded
   * from, when its name is not the canonical one: it is removed after the new file is in place. Refuses (EINVAL) a
   * definition the loader would not read back as it is, and (ELOOP, ENOTDIR, EEXIST) a parent folder or a
   * definition path that is not what the loader reads.
   */
  save(parent: string, uuid: string, definition: MdevDefinition, replacing?: string): string {
    const finalPath = this.pathOf(parent, uuid);
    const text = checkedDefinitionText(parent, uuid, definition);
    const folder = join(this.dir, parent);
    const dirFd = this.openParentFolder(folder);
    try {
      const existing = lstatSync(finalPath, { throwIfNoEntry: false });
      if (existing !== undefined && !existing.isFile()) {
        const what = existing.isSymbolicLink() ? "a symbolic link" : "not a regular file";
        throw new KernelError(
          existing.isSymbolicLink() ? Errno.ELOOP : Errno.EEXIST,
          `cannot write ${finalPath}: it is ${what}, which \`vgpu list -d\` skips and the store never writes ` +
            "through; move it away first",
        );
      }
      const name = finalPath.slice(folder.length + 1);
      const tempPath = join(folder, `.${name}.tmp-${process.pid}-${this.tempCounter++}`);
      let fd: number | undefined;
      try {
        // O_EXCL with O_CREAT never follows a link; O_NOFOLLOW says so outright.
        fd = openSync(tempPath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | O_NOFOLLOW, 0o644);
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
      syncFd(dirFd);
      if (replacing !== undefined && replacing !== finalPath) {
        rmSync(replacing, { force: true });
        syncFd(dirFd);
      }
      return finalPath;
    } finally {
      closeSync(dirFd);
    }
  }

  /**
   * Creates the parent folder if needed and opens it without following a link: a symbolic link there is ELOOP (the
   * loader skips it, so a definition written through it would never list), anything but a folder ENOTDIR.
   */
  private openParentFolder(folder: string): number {
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o755 });
      mkdirSync(folder, { mode: 0o755 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new KernelError(Errno.EIO, `cannot create ${folder}: ${(e as Error).message}`);
      }
    }
    try {
      return openSync(folder, constants.O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // Linux answers ENOTDIR rather than ELOOP for a link opened with O_DIRECTORY | O_NOFOLLOW: tell them apart.
      if (code === "ELOOP" || lstatSync(folder, { throwIfNoEntry: false })?.isSymbolicLink()) {
        throw new KernelError(
          Errno.ELOOP,
          `cannot write under ${folder}: it is a symbolic link, which \`vgpu list -d\` skips and the store never ` +
            "writes through; replace it with a real folder",
        );
      }
      if (code === "ENOTDIR") {
        throw new KernelError(
          Errno.ENOTDIR,
          `cannot write under ${folder}: it is not a folder; move it away so the parent folder can be created`,
        );
      }
      throw new KernelError(Errno.EIO, `cannot open ${folder}: ${(e as Error).message}`);
    }
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
    syncFd(fd);
  } catch {
    // Cannot open it: nothing to make durable.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function syncFd(fd: number): void {
  try {
    fsyncSync(fd);
  } catch {
    // Some filesystems refuse fsync on directories; the rename itself is still atomic.
  }
}

/**
 * The file text for a definition, after checking it with the loader's own parser: the typed schema (an attribute
 * name is a path inside the device's folder, a type is not empty) and a read-back of the exact text that will be
 * written, which must give the same definition. EINVAL naming the field otherwise.
 */
function checkedDefinitionText(parent: string, uuid: string, definition: MdevDefinition): string {
  const where = `the definition of ${parent}/${uuid}`;
  const typed = mdevDefinitionSchema.safeParse(definition);
  if (!typed.success) throw new KernelError(Errno.EINVAL, `${where} is invalid: ${describeZodError(typed.error)}`);
  const text = formatDefinitionFile(typed.data);
  const back = parseDefinitionText(text);
  if (!back.ok) throw new KernelError(Errno.EINVAL, `${where} would not load back: ${back.problem}`);
  if (!isDeepStrictEqual(back.definition, typed.data)) {
    throw new KernelError(Errno.EINVAL, `${where} would load back differently; it was not written`);
  }
  return text;
}
