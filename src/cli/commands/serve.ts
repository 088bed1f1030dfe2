/**
 * `vgpu serve --type mtty-2 --socket /tmp/mtty.sock [--uuid U] [--config FILE] [--once] [--trace]
 * [--handshake-timeout MS] [--poll-max-us US]`: builds a model host (the embedded default, or a config file), creates
 * one mdev of the given type on the first parent that offers it, and serves it over vfio-user until SIGINT/SIGTERM
 * (or, with --once, until the first client leaves). A real VMM attaches it with
 * `-device '{"driver":"vfio-user-pci","socket":{"path":"/tmp/mtty.sock","type":"unix"}}'`. A client that sends no
 * VERSION within the handshake timeout (default 5000 ms) is dropped, freeing the device. `--poll-max-us` sets the
 * adaptive polling of the client's socket (QEMU's poll-max-ns, in microseconds; default 200, 0 turns it off): the
 * server keeps reading for up to that long after each message before it sleeps, which saves the wake-up when the
 * client answers quickly from another CPU, at the price of the CPU it spins; the window shrinks to nothing while the
 * client is slower than that.
 *
 * The socket path is checked before anything is built: too long for sun_path is ENAMETOOLONG; a live server answering
 * at it is EADDRINUSE (it is not taken over); a dead socket file there is replaced. If serving fails, the mdev is
 * removed again.
 *
 * The served host runs on real time, and its GVT-g GPUs submit through execlists (unless the config sets
 * `submission`), so a stock guest i915's contexts run; the scenario's isolation checker watches every DMA of a served
 * vGPU's GPU and its summary is printed when the server stops.
 *
 * Output: one line "vgpu serve: serving <type> <uuid> on <path>" on stdout when the socket is ready (scripts wait
 * for it), disconnects and problems on stderr; with --trace every vfio-user and device trace event on stderr.
 * Errors are KernelErrors (unknown type: ENOENT naming the types on offer). Also runnable directly with tsx
 * (`node --import tsx src/cli/commands/serve.ts --type mtty-2 --socket PATH`).
 */
import { statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Command } from "commander";
import { checkSocketPath, Errno, formatTrace, KernelError, SystemClock, strerror } from "../../core/index.ts";
import {
  createSystem,
  DEFAULT_SYSTEM_CONFIG,
  describeViolation,
  IsolationChecker,
  loadSystemConfigFile,
  parseSystemConfig,
  type System,
  type SystemConfig,
} from "../../scenario/index.ts";
import { serveDevice, type VfioUserServer } from "../../vfio-user/index.ts";
import type { Vgpu } from "../../vgpu/index.ts";
import { uuidOption, wholeNumberOf } from "./common.ts";
import { DEFAULT_POLL_MAX_US, pollMaxNsOf } from "./poll-option.ts";

/** The UUID `vgpu serve` gives its mdev unless told otherwise (the mtty sample's documented one). */
export const DEFAULT_SERVE_UUID = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

export interface ServeCommandOptions {
  readonly type: string;
  readonly socket: string;
  readonly uuid?: string;
  readonly config?: string;
  readonly once?: boolean;
  readonly trace?: boolean;
  /** Milliseconds a client has to send VERSION (a string as commander passes it, or a number). */
  readonly handshakeTimeout?: string | number;
  /** Adaptive polling window, microseconds (0: off). */
  readonly pollMaxUs?: string | number;
}

export interface RunningServe {
  readonly server: VfioUserServer;
  readonly uuid: string;
  readonly type: string;
  /** For a vGPU: what the isolation checker saw so far (undefined for other devices). */
  isolation(): IsolationSummary | undefined;
  stop(): void;
}

/** The isolation checker's view of a served vGPU: every DMA of the GPU, attributed and checked. */
export interface IsolationSummary {
  readonly pieces: number;
  readonly bytes: number;
  readonly vgpuPieces: number;
  readonly violations: number;
  readonly first: readonly string[];
  /** The vGPU's own account: guest contexts per engine, shadow PPGTT work, pins, failsafe. */
  readonly vgpu: readonly string[];
}

/**
 * Watches every DMA of the GPU behind a served vGPU with the scenario's isolation checker; the vGPU is bound to the
 * connection's host process once a client has negotiated (its memory is then that process's). Undefined for a device
 * that is not a vGPU.
 */
function watchIsolation(system: System, parentName: string, uuid: string) {
  const inst = system.gpus.find((g) => g.parent?.parentName === parentName);
  const vgpu = inst?.parent?.vgpu(uuid);
  if (inst === undefined || vgpu === undefined) return undefined;
  const checker = new IsolationChecker({ host: system.host });
  checker.watch(inst);
  let boundPid: number | undefined;
  let timer: ReturnType<typeof setInterval> | undefined;
  return {
    attach(server: VfioUserServer): void {
      const bind = (): void => {
        const pid = server.state().pid;
        if (pid === undefined || pid === boundPid) return;
        boundPid = pid;
        checker.bindVgpu(inst.name, vgpu.id, "guest", pid, vgpu.scratch.pfn);
      };
      server.onConnect(() => bind());
      // The session's process exists once VERSION was answered: look for it until then.
      timer = setInterval(bind, 20);
      timer.unref();
    },
    detach(): void {
      if (timer !== undefined) clearInterval(timer);
    },
    summary(): IsolationSummary {
      const c = checker.stats(inst.name, vgpu.id);
      return {
        pieces: checker.checked.pieces,
        bytes: checker.checked.bytes,
        vgpuPieces: c.pieces,
        violations: checker.violationCount,
        first: checker.violations().slice(0, 5).map(describeViolation),
        vgpu: vgpuAccount(vgpu),
      };
    },
  };
}

/** Starts serving (without signal handling): what the command does, for tests. */
export function startServe(o: ServeCommandOptions, log: (line: string) => void): RunningServe {
  checkSocketPath(o.socket);
  checkSocketFolder(o.socket);
  const handshakeTimeoutMs = o.handshakeTimeout === undefined ? undefined : positiveMs(o.handshakeTimeout);
  const pollMaxNs = pollMaxNsOf(o.pollMaxUs ?? DEFAULT_POLL_MAX_US);
  const loaded = o.config !== undefined ? loadSystemConfigFile(o.config) : parseSystemConfig(DEFAULT_SYSTEM_CONFIG);
  // A served device meets a real VMM and a real guest: the host runs on real time (a guest's work must complete
  // without anyone advancing a virtual clock), and GVT-g GPUs submit through execlists (a stock i915 submits logical
  // ring contexts, which only an execlists host driver can run) unless the config says otherwise.
  const config: SystemConfig = {
    ...loaded,
    parents: loaded.parents.map((p) =>
      p.kind === "gvt" && p.submission === undefined ? { ...p, submission: "execlists" } : p,
    ),
  };
  const system = createSystem(config, { clock: new SystemClock() });
  if (o.trace) system.host.tracer.subscribe((r) => log(formatTrace(r)));
  const offered: string[] = [];
  let parent: string | undefined;
  let type = o.type;
  for (const p of system.mdev.parents()) {
    for (const t of system.mdev.types(p.name)) {
      offered.push(t.type);
      // A type may be named without its driver prefix ("GVTg_V5_4" for "i915-GVTg_V5_4").
      if (parent === undefined && (t.type === o.type || t.type === `${t.type.split("-")[0]}-${o.type}`)) {
        parent = p.name;
        type = t.type;
      }
    }
  }
  if (parent === undefined) {
    throw new KernelError(
      Errno.ENOENT,
      `no parent offers mdev type ${o.type}; the host offers: ${offered.join(", ") || "none"}`,
    );
  }
  const uuid = uuidOption(o.uuid) ?? DEFAULT_SERVE_UUID;
  system.mdev.create(parent, type, uuid);
  const watched = watchIsolation(system, parent, uuid);
  let server: VfioUserServer;
  try {
    server = serveDevice({
      socketPath: o.socket,
      system,
      uuid,
      ...(handshakeTimeoutMs !== undefined ? { handshakeTimeoutMs } : {}),
      pollMaxNs,
    });
  } catch (e) {
    // Nothing half-done: the socket path was refused, so the device goes too.
    system.mdev.remove(uuid);
    // The native layer's "bind(PATH) failed: errno N", as a sentence.
    if (e instanceof KernelError && / failed: errno \d+$/.test(e.message)) {
      throw new KernelError(e.errno, `cannot serve on ${o.socket}: ${strerror(e.errno)}; pick another --socket`);
    }
    throw e;
  }
  watched?.attach(server);
  return {
    server,
    uuid,
    type,
    isolation: () => watched?.summary(),
    stop: () => {
      watched?.detach();
      server.close();
      try {
        system.mdev.remove(uuid);
      } catch {
        // The process is ending: an mdev that cannot go now goes with it.
      }
    },
  };
}

/** The socket's folder must exist (ENOENT) and be a folder (ENOTDIR): said before the model is built. */
function checkSocketFolder(socket: string): void {
  const dir = dirname(resolve(socket));
  const st = statSync(dir, { throwIfNoEntry: false });
  if (st === undefined) {
    throw new KernelError(
      Errno.ENOENT,
      `cannot serve on ${socket}: the folder ${dir} does not exist; create it or pick another --socket`,
    );
  }
  if (!st.isDirectory()) {
    throw new KernelError(Errno.ENOTDIR, `cannot serve on ${socket}: ${dir} is not a folder; pick another --socket`);
  }
}

function positiveMs(v: string | number): number {
  const n = wholeNumberOf(v);
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new KernelError(Errno.EINVAL, `--handshake-timeout must be a positive number of milliseconds, got ${v}`);
  }
  return n;
}

/** Registers `vgpu serve` on the program. */
export function registerServe(program: Command): void {
  program
    .command("serve")
    .description("serve one mediated device over vfio-user on a UNIX socket (for QEMU's vfio-user-pci)")
    .requiredOption("-t, --type <type>", "mdev type to create, e.g. mtty-2")
    .requiredOption("-s, --socket <path>", "UNIX socket path to serve on (created with mode 0600)")
    .option("-u, --uuid <uuid>", `UUID of the mdev (default ${DEFAULT_SERVE_UUID})`)
    .option(
      "-c, --config <file>",
      "host config file (default: the embedded host: a GVT-g-like GPU at 0000:00:02.0 and the mtty sample parent)",
    )
    .option("--once", "exit after the first client disconnects")
    .option("--trace", "print trace events on stderr")
    .option("--handshake-timeout <ms>", "drop a client that sends no VERSION within this (default 5000)")
    .option(
      "--poll-max-us <us>",
      `poll the client's socket up to this long before sleeping, adaptively (default ${DEFAULT_POLL_MAX_US}; 0: off)`,
    )
    .action(async (o: ServeCommandOptions) => {
      const log = (line: string): void => {
        process.stderr.write(`vgpu serve: ${line}\n`);
      };
      const running = startServe(o, log);
      process.stdout.write(`vgpu serve: serving ${running.type} ${running.uuid} on ${running.server.socketPath}\n`);
      await new Promise<void>((resolve) => {
        let stopped = false;
        const stop = (why: string): void => {
          if (stopped) return;
          stopped = true;
          log(`stopping (${why})`);
          // The checker's and the vGPU's account, while the vGPU still exists.
          const iso = running.isolation();
          if (iso !== undefined) {
            log(
              `isolation checker: ${iso.pieces} DMA piece(s), ${iso.bytes} bytes checked, ${iso.vgpuPieces} of them ` +
                `the vGPU's; ${iso.violations} violation(s)`,
            );
            for (const v of iso.first) log(`  violation: ${v}`);
            for (const line of iso.vgpu) log(line);
          }
          running.stop();
          resolve();
        };
        process.once("SIGINT", () => stop("SIGINT"));
        process.once("SIGTERM", () => stop("SIGTERM"));
        running.server.onConnect((id) => log(`client connection ${id} accepted`));
        running.server.onDisconnect((id, reason) => {
          log(`client connection ${id} ended: ${reason}`);
          if (o.once) stop("the client left (--once)");
        });
      });
      for (const p of running.server.state().problems) log(`problem: ${p}`);
    });
}

// Runnable on its own (`node --import tsx src/cli/commands/serve.ts --type mtty-2 --socket PATH`) until the
// command is registered in the main CLI.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const program = new Command().name("vgpu");
  registerServe(program);
  try {
    await program.parseAsync(["node", "vgpu", "serve", ...process.argv.slice(2)]);
  } catch (e) {
    process.stderr.write(`vgpu serve: ${e instanceof KernelError ? e.describe() : String(e)}\n`);
    process.exitCode = 1;
  }
}

/** The vGPU's account of a guest, one line per engine (what the README's real-guest record quotes). */
function vgpuAccount(vgpu: Vgpu): string[] {
  const st = vgpu.stats();
  const lines = [
    `vgpu${vgpu.id}: contexts ${JSON.stringify(st.contexts)}, ppgtt ${JSON.stringify(st.ppgtt)}, failsafe ` +
      `${st.failsafe === undefined ? "no" : `${st.failsafe.reason}: ${st.failsafe.detail}`}, pinned ${st.pinnedPages}`,
  ];
  for (const [engine, x] of Object.entries(st.execlists)) {
    lines.push(
      `  ${engine}: virtual execlist ${x.submissions} ELSP, ${x.completed} completed, ${x.failed} failed, ` +
        `${x.rejected} rejected, ${x.csbEvents} CSB`,
    );
  }
  return lines;
}
