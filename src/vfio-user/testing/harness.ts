/**
 * Test support for vfio-user (not exported from the index): a server system in process, an asynchronous raw client
 * that can live in the same process as the server (the real client blocks and cannot), and a server in a child
 * process with a line protocol for state queries (server-child.ts).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { SystemClock } from "../../core/index.ts";
import type { MttyParent } from "../../devices/index.ts";
import { createSystem, parseSystemConfig, type System } from "../../scenario/index.ts";
import { encodeVersion } from "../caps.ts";
import { Channel, type Frame, isReply } from "../connection.ts";
import { connectUnix } from "../native.ts";
import {
  HEADER_SIZE,
  VFIO_USER_F_ERROR,
  VFIO_USER_F_NO_REPLY,
  VFIO_USER_F_TYPE_COMMAND,
  VFIO_USER_VERSION,
} from "../protocol.ts";
import { CHILD_DMA_DEVICE, CHILD_MTTY_UUID } from "./constants.ts";
import { DmaTestDevice } from "./dma-device.ts";

export { CHILD_DMA_DEVICE, CHILD_MTTY_UUID };

/** A fresh temporary directory for sockets; `cleanup` removes it. */
export function tempDir(prefix = "vfio-user-"): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface ServerSystem {
  readonly system: System;
  readonly mtty: MttyParent;
  readonly mttyUuid: string;
  readonly dmaDevice: DmaTestDevice;
  readonly dmaGroup: number;
}

/** The model the child server builds, in process: 4 GiB host, an mtty-2 mdev, a DmaTestDevice. */
export function serverSystem(): ServerSystem {
  const system = createSystem(parseSystemConfig({ memory: "4 GiB", parents: [{ kind: "mtty" }] }));
  const mtty = system.parents[0] as MttyParent;
  system.mdev.create("mtty", "mtty-2", CHILD_MTTY_UUID);
  const dmaDevice = new DmaTestDevice(CHILD_DMA_DEVICE, system.host.physmem);
  const dmaGroup = system.vfio.registerEmulatedDevice(dmaDevice);
  return { system, mtty, mttyUuid: CHILD_MTTY_UUID, dmaDevice, dmaGroup };
}

/** A received message, copied (payload and fds owned by the receiver). */
export interface Message {
  readonly id: number;
  readonly cmd: number;
  readonly flags: number;
  readonly errorNo: number;
  readonly payload: Uint8Array;
  readonly fds: number[];
}

/**
 * An asynchronous client over a Channel: requests resolve when the reply arrives through the reactor, so it can
 * talk to a server in the same process. Messages nobody waits for (server requests) are collected in `unsolicited`.
 */
export class AsyncClient {
  readonly channel: Channel;
  private readonly pending = new Map<number, (m: Message) => void>();
  private readonly closeWaiters: (() => void)[] = [];
  readonly unsolicited: Message[] = [];
  private nextId = 1;

  constructor(socketPath: string) {
    const fd = connectUnix(socketPath);
    this.channel = new Channel(
      fd,
      {
        label: `test client of ${socketPath}`,
        maxMsgSize: HEADER_SIZE + 4 * 1024 * 1024,
        maxRecvFds: 16,
        maxSendFds: 16,
        writeTimeoutMs: 5000,
        maxQueuedBytes: 256 * 1024 * 1024,
        clock: new SystemClock(),
        watch: true,
        ref: true,
      },
      {
        onFrame: (f) => this.onFrame(f),
        onClose: () => {
          for (const w of this.closeWaiters.splice(0)) w();
          for (const p of this.pending.values())
            p({ id: -1, cmd: -1, flags: -1, errorNo: -1, payload: new Uint8Array(), fds: [] });
          this.pending.clear();
        },
      },
    );
  }

  private onFrame(f: Frame): void {
    const m: Message = {
      id: f.id,
      cmd: f.cmd,
      flags: f.flags,
      errorNo: f.errorNo,
      payload: f.payload.slice(),
      fds: f.fds.slice(),
    };
    for (let i = 0; i < f.fds.length; i++) f.fds[i] = -1;
    const p = isReply(f) ? this.pending.get(f.id) : undefined;
    if (p !== undefined) {
      this.pending.delete(f.id);
      p(m);
    } else this.unsolicited.push(m);
  }

  /** Sends a command; resolves with its reply (a message with id -1 if the connection closed first). */
  request(
    cmd: number,
    payload?: Uint8Array,
    fds?: readonly number[],
    type = VFIO_USER_F_TYPE_COMMAND,
  ): Promise<Message> {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff;
    const p = new Promise<Message>((resolve) => this.pending.set(id, resolve));
    this.channel.send(id, cmd, type, 0, payload, fds);
    return p;
  }

  /** Sends a posted command (NO_REPLY). */
  post(cmd: number, payload?: Uint8Array): void {
    const id = this.nextId;
    this.nextId = (this.nextId + 1) & 0xffff;
    this.channel.send(id, cmd, VFIO_USER_F_TYPE_COMMAND | VFIO_USER_F_NO_REPLY, 0, payload);
  }

  /** VERSION with default capabilities; resolves with the reply. */
  version(): Promise<Message> {
    return this.request(
      VFIO_USER_VERSION,
      encodeVersion(0, 0, {
        maxMsgFds: 16,
        maxDataXferSize: 1 << 20,
        maxDmaMaps: 65535,
        pgsizes: 4096,
        writeMultiple: true,
      }),
    );
  }

  /** Resolves when the channel closes. */
  closed(): Promise<void> {
    if (this.channel.closed) return Promise.resolve();
    return new Promise((r) => this.closeWaiters.push(r));
  }

  close(): void {
    this.channel.close("test client done");
  }
}

export function isError(m: Message): boolean {
  return (m.flags & VFIO_USER_F_ERROR) !== 0;
}

/** What server-child.ts reports for `state`. */
export interface ChildState {
  readonly fds: number;
  readonly externalRegions: number;
  readonly pinnedFrames: number;
  readonly liveProcesses: number;
  readonly containers: number;
  readonly openDevices: readonly string[];
  readonly mtty: { readonly irq: { type: string; signalled: number; msiEventfd: boolean; intxEventfd: boolean } };
  readonly dma: { readonly pinned: number; readonly unmaps: number; readonly opened: number };
  readonly reactorWatches: number;
  readonly servers: Record<
    "mtty" | "dma",
    { connection?: number; windows: number; eventfds: number; connections: number; refused: number; problems: string[] }
  >;
}

/** A server-child.ts process. */
export class ServerChild {
  readonly dir: string;
  readonly proc: ChildProcess;
  readonly sockets: { readonly mtty: string; readonly dma: string };
  private readonly lines: string[] = [];
  private waiter: ((l: string) => void) | undefined;
  private readonly cleanupDir: () => void;
  stderr = "";

  private constructor(dir: string, cleanupDir: () => void, proc: ChildProcess) {
    this.dir = dir;
    this.cleanupDir = cleanupDir;
    this.proc = proc;
    this.sockets = { mtty: join(dir, "mtty.sock"), dma: join(dir, "dma.sock") };
    createInterface({ input: proc.stdout! }).on("line", (l) => {
      const w = this.waiter;
      if (w !== undefined) {
        this.waiter = undefined;
        w(l);
      } else this.lines.push(l);
    });
    proc.stderr!.on("data", (d: Buffer) => {
      this.stderr += d.toString();
    });
  }

  /** Starts the child and waits for its ready line. `options` are server-child options besides `dir`. */
  static async start(options: Record<string, unknown> = {}): Promise<ServerChild> {
    const { dir, cleanup } = tempDir();
    const script = fileURLToPath(new URL("./server-child.ts", import.meta.url));
    const proc = spawn(process.execPath, ["--import", "tsx", script, JSON.stringify({ dir, ...options })], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    const child = new ServerChild(dir, cleanup, proc);
    const ready = JSON.parse(await child.nextLine(30_000)) as { ready?: boolean };
    if (ready.ready !== true) throw new Error(`server child did not start: ${child.stderr}`);
    return child;
  }

  private nextLine(timeoutMs: number): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`server child: no output within ${timeoutMs} ms; stderr: ${this.stderr}`));
      }, timeoutMs);
      this.waiter = (line) => {
        clearTimeout(t);
        resolve(line);
      };
    });
  }

  async state(): Promise<ChildState> {
    this.proc.stdin!.write("state\n");
    return JSON.parse(await this.nextLine(10_000)) as ChildState;
  }

  /** Polls `state()` until `done(state)` or the timeout; returns the last state. */
  async waitState(done: (s: ChildState) => boolean, timeoutMs = 5000): Promise<ChildState> {
    const t0 = performance.now();
    for (;;) {
      const s = await this.state();
      if (done(s) || performance.now() - t0 > timeoutMs) return s;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async stop(): Promise<void> {
    if (this.alive) {
      const exited = new Promise((r) => this.proc.once("exit", r));
      this.proc.stdin!.end();
      await exited;
    }
    this.cleanupDir();
  }
}
