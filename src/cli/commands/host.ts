/**
 * `vgpu host [--config FILE] [--root DIR] [--poll-max-us US]`: runs a model host in the foreground and serves the control API on
 * `<root>/vgpu.sock` until SIGTERM or SIGINT, which stop it cleanly (socket removed, exit 0).
 *
 * Start-up, in order: check that every socket path under the root fits in sun_path (ENAMETOOLONG naming the path,
 * its length and the limit, before anything is created); build the system from the config (the embedded default:
 * a GVT-g-like GPU at 0000:00:02.0 and the mtty sample parent); remove temporary files left in `<root>/mdevctl.d` by an interrupted write; bind the socket
 * (refusing if a host answers there, replacing a stale socket with a message); then auto-start the `start: auto`
 * definitions of every parent, as udev's `mdevctl start-parent-mdevs` does when a parent appears. A definition that fails to start is logged with its
 * reason and the others still start (mdevctl #53). The log goes to stderr, one "vgpu host: ..." line per event.
 * `--poll-max-us` (poll-option.ts) sets the adaptive polling of each served device's client socket (default 200 us,
 * 0: off); a polling device gives the loop back as soon as another fd (a device, the control socket) has work.
 *
 * `startHost` is the same without the signal handling, for tests that want a real daemon in process. The command is
 * registered in index.ts, which imports this module only when `vgpu host` runs: the client commands never load the
 * model.
 */
import {
  createSystem,
  DEFAULT_SYSTEM_CONFIG,
  loadSystemConfigFile,
  parseSystemConfig,
  type System,
  type SystemConfig,
} from "../../scenario/index.ts";
import { checkPollMaxNs } from "../../vfio-user/index.ts";
import { Callouts } from "../callouts.ts";
import { type Daemon, definitionsDirOf, makeStateFolder, SOCKET_NAME, socketPathOf, startDaemon } from "../daemon.ts";
import { DefinitionStore } from "../definitions.ts";
import { systemHostApi } from "../host-api.ts";
import { MdevService } from "../service.ts";
import { checkSocketPathLength, deviceSocketPathOf, SAMPLE_UUID, UNIX_SOCKET_PATH_MAX } from "../socket-path.ts";
import { type CliIo, type RootOption, rootOf } from "./common.ts";
import { DEFAULT_POLL_MAX_US, pollMaxNsOf } from "./poll-option.ts";

export interface StartHostOptions {
  readonly root: string;
  /** Default: the embedded host (a GVT-g-like GPU and the mtty sample parent). */
  readonly config?: SystemConfig;
  /** Build the system yourself (tests add parents of their own); `config` is then ignored. */
  readonly system?: System;
  readonly log: (line: string) => void;
  /** Source of generated UUIDs (default crypto.randomUUID). */
  readonly newUuid?: () => string;
  /** Serve each started device over vfio-user on `<root>/<uuid>.sock` (default true). */
  readonly serve?: boolean;
  /** Adaptive polling of each served device's client socket, ns (0..MAX_POLL_NS; default 0: off; the command: 200 us). */
  readonly pollMaxNs?: number;
}

export interface RunningHost {
  readonly system: System;
  readonly service: MdevService;
  readonly daemon: Daemon;
  close(): Promise<void>;
}

/**
 * Throws ENAMETOOLONG, before anything is created, unless every socket the host will bind under `root` fits in
 * sun_path: `<root>/vgpu.sock`, and when it serves devices, each `<root>/<uuid>.sock`.
 */
export function checkHostSocketPaths(root: string, serve: boolean): void {
  const longest = serve ? `${SAMPLE_UUID}.sock` : SOCKET_NAME;
  const remedy = `nothing was created; pick a --root of at most ${UNIX_SOCKET_PATH_MAX - 1 - longest.length} bytes`;
  checkSocketPathLength(socketPathOf(root), remedy);
  if (serve) {
    checkSocketPathLength(
      deviceSocketPathOf(root, SAMPLE_UUID),
      `${remedy} (each started device is served on <root>/<uuid>.sock)`,
      deviceSocketPathOf(root, "<uuid>"),
    );
  }
}

/** Builds the system, binds the socket, auto-starts definitions. Throws KernelError if the socket is taken. */
export async function startHost(opts: StartHostOptions): Promise<RunningHost> {
  checkHostSocketPaths(opts.root, opts.serve !== false);
  // Checked here, not first at the first device's start: a bad window is said before anything is created.
  const pollMaxNs = opts.pollMaxNs ?? 0;
  if (opts.serve !== false) checkPollMaxNs(pollMaxNs);
  // Before the model is built (seconds): a root that cannot be created is said at once.
  makeStateFolder(opts.root);
  const system = opts.system ?? createSystem(opts.config ?? parseSystemConfig(DEFAULT_SYSTEM_CONFIG));
  const store = new DefinitionStore({ dir: definitionsDirOf(opts.root) });
  const hostApi = systemHostApi(system, opts.serve === false ? {} : { serveDir: opts.root, pollMaxNs });
  const service = new MdevService({
    host: hostApi,
    store,
    callouts: new Callouts({ root: opts.root }),
    root: opts.root,
    ...(opts.newUuid ? { newUuid: opts.newUuid } : {}),
  });
  const daemon = await startDaemon({ root: opts.root, service, log: opts.log });
  for (const t of store.removeTemporaries()) opts.log(`removed ${t}: temporary file left by an interrupted write`);
  const warnings: string[] = [];
  const reports = service.autostartAll(warnings);
  for (const w of warnings) opts.log(`warning: ${w}`);
  for (const r of reports) {
    for (const u of r.started) opts.log(`auto-started ${u} on ${r.parent}`);
    for (const f of r.failed) opts.log(`auto-start of ${f.uuid} on ${r.parent} failed: ${f.message}`);
  }
  const parents =
    system.mdev
      .parents()
      .map((p) => p.name)
      .join(", ") || "none";
  opts.log(`serving on ${daemon.socketPath} (parents: ${parents})`);
  return {
    system,
    service,
    daemon,
    close: async () => {
      hostApi.closeServers();
      await daemon.close();
    },
  };
}

export interface HostOptions extends RootOption {
  readonly config?: string;
  /** Adaptive polling window of each device's client, microseconds (a string as commander passes it; 0: off). */
  readonly pollMaxUs?: string | number;
}

/** The `vgpu host` action: runs until SIGTERM or SIGINT. */
export async function runHost(opts: HostOptions, io: CliIo): Promise<void> {
  const root = rootOf(opts, io);
  const pollMaxNs = pollMaxNsOf(opts.pollMaxUs ?? DEFAULT_POLL_MAX_US);
  const config = opts.config !== undefined ? loadSystemConfigFile(opts.config) : undefined;
  const log = (line: string) => io.err(`vgpu host: ${line}\n`);
  // Signal handlers go in before the host announces itself: a supervisor (or a test) may send SIGTERM the moment
  // "serving on" appears, and Node's default action would kill the process without removing the socket.
  let host: RunningHost | undefined;
  let pending: NodeJS.Signals | undefined;
  let finish: () => void = () => {};
  const done = new Promise<void>((resolve) => {
    finish = resolve;
  });
  const shutDown = (signal: NodeJS.Signals, running: RunningHost) => {
    log(`${signal}: stopping`);
    running.close().then(() => {
      log(`stopped; removed ${running.daemon.socketPath}`);
      finish();
    }, finish);
  };
  const stop = (signal: NodeJS.Signals) => {
    process.off("SIGTERM", stop);
    process.off("SIGINT", stop);
    if (host === undefined) pending = signal;
    else shutDown(signal, host);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  try {
    host = await startHost({ root, log, pollMaxNs, ...(config ? { config } : {}) });
  } catch (e) {
    process.off("SIGTERM", stop);
    process.off("SIGINT", stop);
    throw e;
  }
  if (pending !== undefined) shutDown(pending, host);
  await done;
}
