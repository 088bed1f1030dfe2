/**
 * A vfio-user server process for tests and benchmarks: `node --import tsx server-child.ts '<json>'`.
 *
 * Builds the default model system (mtty parent), creates an mtty-2 mdev and registers a DmaTestDevice, serves both on
 * `<dir>/mtty.sock`, `<dir>/dma.sock` (BAR2 trapped) and `<dir>/dma-mmap.sock` (BAR2's second page mmap-able), then prints one JSON line `{"ready": true, ...}` on stdout. Commands, one
 * per stdin line, each answered by one JSON line: `state` (what a leak check needs: the process's open fds, model
 * external regions, pinned frames, live host processes, vfio containers, the devices' state, server states), `exit`.
 * stdin closing also ends the process. Options (JSON): dir, and server options (writeTimeoutMs, replyTimeoutMs,
 * maxDataXferSize, dmaRwLayout).
 */
import { readdirSync } from "node:fs";
import { createInterface } from "node:readline";
import type { MttyParent } from "../../devices/index.ts";
import { createSystem, parseSystemConfig } from "../../scenario/system.ts";
import { serveDevice, type VfioUserServer } from "../index.ts";
import { Reactor } from "../reactor.ts";
import { CHILD_DMA_DEVICE, CHILD_MTTY_UUID } from "./constants.ts";
import { DmaTestDevice } from "./dma-device.ts";

interface ChildOptions {
  readonly dir: string;
  readonly writeTimeoutMs?: number;
  readonly replyTimeoutMs?: number;
  readonly maxDataXferSize?: number;
  readonly dmaRwLayout?: "qemu" | "spec";
}

const opts = JSON.parse(process.argv[2] ?? "{}") as ChildOptions;
const system = createSystem(parseSystemConfig({ memory: "4 GiB", parents: [{ kind: "mtty" }] }));
const mtty = system.parents[0] as MttyParent;
system.mdev.create("mtty", "mtty-2", CHILD_MTTY_UUID);
// Trapped BAR2: QEMU keeps posting region writes (see dma-device.ts), which the fd-less DMA_READ checks rely on.
const dmaDev = new DmaTestDevice(CHILD_DMA_DEVICE, system.host.physmem, { mmapBar2: false });
const dmaGroup = system.vfio.registerEmulatedDevice(dmaDev);
// The same device with BAR2's second page mmap-able: exported to the client as a memfd.
const mmapDev = new DmaTestDevice(`${CHILD_DMA_DEVICE}-mmap`, system.host.physmem);
const mmapGroup = system.vfio.registerEmulatedDevice(mmapDev);

const common = {
  ...(opts.writeTimeoutMs !== undefined ? { writeTimeoutMs: opts.writeTimeoutMs } : {}),
  ...(opts.replyTimeoutMs !== undefined ? { replyTimeoutMs: opts.replyTimeoutMs } : {}),
  ...(opts.maxDataXferSize !== undefined ? { maxDataXferSize: opts.maxDataXferSize } : {}),
  ...(opts.dmaRwLayout !== undefined ? { dmaRwLayout: opts.dmaRwLayout } : {}),
};
const servers: { readonly mtty: VfioUserServer; readonly dma: VfioUserServer; readonly dmaMmap: VfioUserServer } = {
  mtty: serveDevice({ socketPath: `${opts.dir}/mtty.sock`, system, uuid: CHILD_MTTY_UUID, ...common }),
  dma: serveDevice({
    socketPath: `${opts.dir}/dma.sock`,
    host: system.host,
    group: dmaGroup,
    device: CHILD_DMA_DEVICE,
    ...common,
  }),
  dmaMmap: serveDevice({
    socketPath: `${opts.dir}/dma-mmap.sock`,
    host: system.host,
    group: mmapGroup,
    device: `${CHILD_DMA_DEVICE}-mmap`,
    ...common,
  }),
};

function state(): unknown {
  const h = system.host;
  const m = mtty.device(CHILD_MTTY_UUID)!;
  return {
    fds: readdirSync("/proc/self/fd").length,
    externalRegions: h.physmem.externalRegions().length,
    pinnedFrames: h.physmem.stats().pinnedFrames,
    liveProcesses: h.processes().length,
    containers: system.vfio.inspect().containers.length,
    openDevices: system.vfio
      .inspect()
      .groups.flatMap((g) => g.devices)
      .filter((d) => d.openCount > 0)
      .map((d) => d.name),
    mtty: { irq: m.irqState(), uart: m.ports[0]!.inspect(), bar0: m.config.read(0x10, 4) },
    dma: {
      pinned: dmaDev.pinnedPages,
      unmaps: dmaDev.unmapNotifications,
      opened: dmaDev.opened,
      // The first u32 of the mmap device's BAR2 mmap page, as the device sees it (interop: QEMU's store through its
      // mapping of the exported memfd).
      bar2Mapped: mmapDev.peekBar2(0x1000),
      bar2Trapped: mmapDev.bar2Trapped,
    },
    reactorWatches: Reactor.shared().size,
    servers: Object.fromEntries(Object.entries(servers).map(([k, s]) => [k, s.state()])),
  };
}

function reply(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v)}\n`);
}

function shutdown(): void {
  for (const s of Object.values(servers)) s.close();
  process.exit(0);
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "state") reply(state());
  else if (cmd === "exit") shutdown();
  else reply({ error: `unknown command ${cmd}` });
});
rl.on("close", shutdown);
process.on("SIGTERM", shutdown);
reply({
  ready: true,
  pid: process.pid,
  sockets: { mtty: servers.mtty.socketPath, dma: servers.dma.socketPath, dmaMmap: servers.dmaMmap.socketPath },
});
