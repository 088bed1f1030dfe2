/**
 * vfio-user end to end: the server in a child process (a real socket, real memfd guest RAM, real eventfds), our
 * client and RemoteVfioDevice in this process. An mtty UART driven through REGION_WRITE/READ with its interrupt
 * delivered on an eventfd; a DMA test device writing into the client's memfd (through type1, vfio_dma_rw and pinned
 * frames) and into windows without an fd (DMA_READ/DMA_WRITE); refusal of a second client; release of everything
 * after a clean close, a SIGKILLed client, and a client that stops reading.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Errno, type Iova, isKernelError } from "../src/core/index.ts";
import { UART_IER, UART_IER_RDI, UART_IIR, UART_LSR, UART_RX, UART_TX } from "../src/devices/index.ts";
import {
  type IrqTrigger,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  type VfioDmaAccess,
} from "../src/vfio/index.ts";
import { GuestMemory, RemoteVfioDevice, VfioUserClient } from "../src/vfio-user/index.ts";
import { closeFd, connectUnix, eventfdCreate, eventfdRead, MsgIo, NativeBuffer } from "../src/vfio-user/native.ts";
import { VFIO_USER_REGION_READ, VfioUserHeader } from "../src/vfio-user/protocol.ts";
import { DMA_TEST_CMD, DMA_TEST_ID, DMA_TEST_REG } from "../src/vfio-user/testing/dma-device.ts";
import { ServerChild } from "../src/vfio-user/testing/harness.ts";

class Counter implements IrqTrigger {
  n = 0;
  signal(): void {
    this.n++;
  }
}

const tick = (ms = 10) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const t0 = performance.now();
  while (!cond() && performance.now() - t0 < ms) await tick();
}

function u32(dev: RemoteVfioDevice, off: number): number {
  const b = new Uint8Array(4);
  dev.regionRead(VFIO_PCI_BAR0_REGION_INDEX, off, b);
  return new DataView(b.buffer).getUint32(0, true);
}
function w32(dev: RemoteVfioDevice, off: number, v: number): void {
  dev.regionWrite(VFIO_PCI_BAR0_REGION_INDEX, off, new Uint8Array(new Uint32Array([v]).buffer));
}
function dmaCommand(dev: RemoteVfioDevice, cmd: number, addr: number, len: number, pattern = 0): number {
  w32(dev, DMA_TEST_REG.ADDR_LO, addr);
  w32(dev, DMA_TEST_REG.ADDR_HI, 0);
  w32(dev, DMA_TEST_REG.LEN, len);
  w32(dev, DMA_TEST_REG.PATTERN, pattern);
  w32(dev, DMA_TEST_REG.CMD, cmd);
  return u32(dev, DMA_TEST_REG.STATUS);
}

let server: ServerChild;
/** The server's open fd count with no client, measured after a first client came and went. */
let baselineFds = 0;

before(async () => {
  server = await ServerChild.start({ writeTimeoutMs: 500 });
  const c = VfioUserClient.connect({ socketPath: server.sockets.mtty });
  c.close();
  const s = await server.waitState((x) => x.servers.mtty.connection === undefined);
  baselineFds = s.fds;
});
after(async () => {
  await server.stop();
});

async function assertClean(what: string): Promise<void> {
  const s = await server.waitState(
    (x) =>
      x.servers.mtty.connection === undefined &&
      x.servers.dma.connection === undefined &&
      x.externalRegions === 0 &&
      x.fds === baselineFds,
  );
  assert.equal(s.servers.mtty.connection, undefined, `${what}: mtty client gone`);
  assert.equal(s.servers.dma.connection, undefined, `${what}: dma client gone`);
  assert.equal(s.externalRegions, 0, `${what}: external frames released`);
  assert.equal(s.pinnedFrames, 0, `${what}: no frame pinned`);
  assert.equal(s.liveProcesses, 0, `${what}: per-connection host processes exited`);
  assert.equal(s.containers, 0, `${what}: containers released`);
  assert.deepEqual(s.openDevices, [], `${what}: devices closed`);
  assert.equal(s.dma.pinned, 0, `${what}: device pins released`);
  assert.equal(s.mtty.irq.type, "none", `${what}: mtty interrupt wiring released`);
  assert.equal(s.fds, baselineFds, `${what}: server fds back to ${baselineFds}`);
  assert.deepEqual([...s.servers.mtty.problems, ...s.servers.dma.problems], [], `${what}: no problems`);
}

describe("vfio-user end to end (server in a child process)", () => {
  it("drives an mtty UART through RemoteVfioDevice and gets its MSI and INTx eventfds signalled", async () => {
    const client = VfioUserClient.connect({ socketPath: server.sockets.mtty });
    const dev = new RemoteVfioDevice(client, { name: "mtty" });
    dev.open(undefined);
    assert.deepEqual(dev.info(), { flags: 3, numRegions: 9, numIrqs: 5 });
    assert.equal(dev.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX).size, 0x100);
    assert.equal(dev.irqInfo(VFIO_PCI_INTX_IRQ_INDEX).count, 1);
    const cfg = new Uint8Array(4);
    dev.regionRead(VFIO_PCI_CONFIG_REGION_INDEX, 0, cfg);
    assert.deepEqual([...cfg], [0x48, 0x43, 0x53, 0x32]);

    const msi = new Counter();
    dev.setIrqs({
      action: "trigger",
      index: VFIO_PCI_MSI_IRQ_INDEX,
      start: 0,
      count: 1,
      data: { kind: "eventfd", triggers: [msi] },
    });
    dev.regionWrite(VFIO_PCI_BAR0_REGION_INDEX, UART_IER, Uint8Array.of(UART_IER_RDI));
    dev.regionWrite(VFIO_PCI_BAR0_REGION_INDEX, UART_TX, Uint8Array.of(0x41));
    // The server signalled the eventfd before replying, so a synchronous look finds it at once.
    assert.equal(dev.pollInterrupts(), 1);
    assert.equal(msi.n, 1);
    const lsr = new Uint8Array(1);
    dev.regionRead(VFIO_PCI_BAR0_REGION_INDEX, UART_LSR, lsr);
    assert.equal(lsr[0]! & 1, 1, "data ready");
    const rx = new Uint8Array(1);
    dev.regionRead(VFIO_PCI_BAR0_REGION_INDEX, UART_RX, rx);
    assert.equal(rx[0], 0x41);
    // Delivered by the reactor when nobody polls.
    dev.regionWrite(VFIO_PCI_BAR0_REGION_INDEX, UART_TX, Uint8Array.of(0x42));
    await until(() => msi.n === 2);
    assert.equal(msi.n, 2);
    dev.regionRead(VFIO_PCI_BAR0_REGION_INDEX, UART_RX, rx);
    assert.equal(rx[0], 0x42, "the FIFO is empty again, so the next byte interrupts again");

    // Switch to INTx: the MSI index is disabled first (mtty takes one index at a time).
    dev.setIrqs({ action: "trigger", index: VFIO_PCI_MSI_IRQ_INDEX, start: 0, count: 0, data: { kind: "none" } });
    assert.equal(dev.eventfdOf(VFIO_PCI_MSI_IRQ_INDEX, 0), undefined);
    const intx = new Counter();
    dev.setIrqs({
      action: "trigger",
      index: VFIO_PCI_INTX_IRQ_INDEX,
      start: 0,
      count: 1,
      data: { kind: "eventfd", triggers: [intx] },
    });
    dev.regionWrite(VFIO_PCI_BAR0_REGION_INDEX, UART_TX, Uint8Array.of(0x43));
    dev.pollInterrupts();
    assert.equal(intx.n, 1);
    const iir = new Uint8Array(1);
    dev.regionRead(VFIO_PCI_BAR0_REGION_INDEX, UART_IIR, iir);
    assert.equal(iir[0]! & 0x0f, 0x04, "receive data interrupt pending");
    dev.setIrqs({ action: "unmask", index: VFIO_PCI_INTX_IRQ_INDEX, start: 0, count: 1, data: { kind: "none" } });
    const s = await server.state();
    assert.equal(s.mtty.irq.type, "intx");
    assert.equal(s.servers.mtty.eventfds, 1);
    dev.close();
    client.close();
    await assertClean("after the mtty client closed");
  });

  it("refuses a second client with EBUSY and a sentence, and serves the next one", async () => {
    const first = VfioUserClient.connect({ socketPath: server.sockets.mtty });
    assert.throws(
      () => VfioUserClient.connect({ socketPath: server.sockets.mtty }),
      (e: unknown) => isKernelError(e) && e.errno === Errno.EBUSY && /one at a time/.test(e.message),
    );
    first.close();
    await server.waitState((x) => x.servers.mtty.connection === undefined);
    const next = VfioUserClient.connect({ socketPath: server.sockets.mtty });
    assert.equal(next.deviceInfo().numRegions, 9);
    next.close();
    await assertClean("after refusing and serving again");
  });

  it("lets a device DMA into memfd guest RAM: vfio_dma_rw through type1, and pinned frames", async () => {
    const client = VfioUserClient.connect({ socketPath: server.sockets.dma });
    const dev = new RemoteVfioDevice(client);
    const ram = GuestMemory.create("guest-ram", 1 << 20);
    client.dmaMap({ iova: 0x100000, size: ram.size, memory: ram });
    assert.equal(u32(dev, DMA_TEST_REG.ID), DMA_TEST_ID);
    assert.equal(dmaCommand(dev, DMA_TEST_CMD.FILL, 0x100000 + 0x123, 1000, 0xa5), 0);
    assert.deepEqual(
      [ram.bytes[0x122], ram.bytes[0x123], ram.bytes[0x123 + 999], ram.bytes[0x123 + 1000]],
      [0, 0xa5, 0xa5, 0],
    );
    assert.equal(dmaCommand(dev, DMA_TEST_CMD.PIN_FILL, 0x100000 + 0x7ff0, 0x20, 0x3c), 0);
    assert.equal(u32(dev, DMA_TEST_REG.PINNED), 2);
    assert.deepEqual([ram.bytes[0x7ff0], ram.bytes[0x800f]], [0x3c, 0x3c]);
    ram.bytes.set([1, 2, 3, 4], 0x9000);
    assert.equal(dmaCommand(dev, DMA_TEST_CMD.READ, 0x109000, 4), 0);
    assert.equal(u32(dev, DMA_TEST_REG.BUF), 0x04030201);
    const s = await server.state();
    assert.equal(s.externalRegions, 1);
    assert.equal(s.pinnedFrames, 2);
    // Unmapping makes type1 call the device's dma_unmap, which unpins.
    client.dmaUnmap({ iova: 0x100000, size: ram.size });
    assert.equal(u32(dev, DMA_TEST_REG.PINNED), 0);
    assert.equal(u32(dev, DMA_TEST_REG.UNMAPS), 1);
    assert.equal(dmaCommand(dev, DMA_TEST_CMD.FILL, 0x100000, 4, 1), Errno.EINVAL, "unmapped");
    client.close();
    ram.close();
    await assertClean("after the DMA client closed");
  });

  it("serves the device's DMA into windows without an fd with DMA_READ/DMA_WRITE, also between requests", async () => {
    const client = VfioUserClient.connect({ socketPath: server.sockets.dma });
    const dev = new RemoteVfioDevice(client, { postedWrites: false });
    const rom = GuestMemory.create("rom", 256 * 1024);
    client.dmaMap({ iova: 0xc0000, size: rom.size, memory: rom, sendFd: false });
    assert.equal(dmaCommand(dev, DMA_TEST_CMD.FILL, 0xc0010, 3000, 0x5a), 0);
    assert.deepEqual([rom.bytes[0x10], rom.bytes[0x10 + 2999], rom.bytes[0x10 + 3000]], [0x5a, 0x5a, 0]);
    rom.bytes.set([9, 8, 7, 6], 0x2000);
    assert.equal(dmaCommand(dev, DMA_TEST_CMD.READ, 0xc2000, 4), 0);
    assert.equal(u32(dev, DMA_TEST_REG.BUF), 0x06070809);
    assert.ok(client.dmaRequests >= 2);
    // Read-only window: the server refuses a device write there itself (EPERM), without asking us.
    client.dmaMap({ iova: 0x200000, size: 0x1000, memory: rom, sendFd: false, write: false });
    assert.equal(dmaCommand(dev, DMA_TEST_CMD.FILL, 0x200000, 4, 1), Errno.EPERM);
    // A window with no bytes of ours: the device's access goes to what the device was opened with.
    const seen: number[] = [];
    const access: VfioDmaAccess = {
      pinPages: () => [],
      unpinPages: () => {},
      dmaRw: (iova: Iova, buf: Uint8Array, write: boolean) => {
        seen.push(iova, buf.length, write ? 1 : 0);
      },
    };
    dev.open(access);
    client.dmaMap({ iova: 0x40000000, size: 0x10000 });
    assert.equal(dmaCommand(dev, DMA_TEST_CMD.FILL, 0x40000100, 16, 7), 0);
    assert.deepEqual(seen, [0x40000100, 16, 1]);
    // A posted command: the server's DMA_WRITE arrives while no request waits, and the event loop serves it.
    const posted = new RemoteVfioDevice(client, { postedWrites: true });
    const before = client.dmaRequests;
    w32(dev, DMA_TEST_REG.ADDR_LO, 0xc8000);
    w32(dev, DMA_TEST_REG.LEN, 16);
    w32(dev, DMA_TEST_REG.PATTERN, 0x77);
    posted.regionWrite(
      VFIO_PCI_BAR0_REGION_INDEX,
      DMA_TEST_REG.CMD,
      new Uint8Array(new Uint32Array([DMA_TEST_CMD.FILL]).buffer),
    );
    await until(() => client.dmaRequests > before);
    assert.equal(rom.bytes[0x8000], 0x77);
    client.close();
    rom.close();
    await assertClean("after the DMA_READ/DMA_WRITE client closed");
  });

  it("releases everything when a client process is killed with SIGKILL mid-session", async () => {
    const script = fileURLToPath(new URL("../src/vfio-user/testing/client-child.ts", import.meta.url));
    const child = spawn(process.execPath, ["--import", "tsx", script, server.sockets.dma], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    const line = await new Promise<string>((resolve) =>
      createInterface({ input: child.stdout! }).once("line", resolve),
    );
    assert.equal(line, "ready 66");
    const busy = await server.state();
    assert.equal(busy.pinnedFrames, 2);
    assert.equal(busy.servers.dma.eventfds, 1);
    const gone = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await gone;
    await assertClean("after SIGKILL");
    const s = await server.state();
    assert.ok(s.dma.unmaps >= 1, "the device was told to unpin through dma_unmap");
  });

  it("drops a client that stops reading its replies, then serves the next", async () => {
    const fd = connectUnix(server.sockets.dma);
    const io = new MsgIo(1);
    const buf = new NativeBuffer(64 * 32);
    const version = Buffer.from('\0\0\0\0{"capabilities":{}}\0', "latin1");
    VfioUserHeader.encode({ msg_id: 1, cmd: 1, msg_size: 16 + version.length, flags: 0, error_no: 0 }, buf.bytes);
    buf.bytes.set(version, 16);
    io.send(fd, buf.address, 16 + version.length, undefined, true);
    // 64 REGION_READs of the 4 KiB BAR0 per send, never reading the replies.
    for (let i = 0; i < 64; i++) {
      const at = 32 * i;
      VfioUserHeader.encode(
        { msg_id: 2 + i, cmd: VFIO_USER_REGION_READ, msg_size: 32, flags: 0, error_no: 0 },
        buf.bytes,
        at,
      );
      buf.view.setUint32(at + 28, 4096, true);
    }
    let sent = 0;
    for (let round = 0; round < 400; round++) {
      const n = io.send(fd, buf.address, 64 * 32, undefined, false);
      if (n < 0) break;
      sent += n;
      if (round % 50 === 0) await tick(1);
    }
    assert.ok(sent > 0);
    const s = await server.waitState((x) => x.servers.dma.connection === undefined, 5000);
    assert.equal(s.servers.dma.connection, undefined, "the server gave up on the client");
    closeFd(fd);
    io.free();
    buf.free();
    await assertClean("after dropping a client that stopped reading");
    const next = VfioUserClient.connect({ socketPath: server.sockets.dma });
    assert.equal(next.deviceInfo().numIrqs, 5);
    next.close();
    await assertClean("after the next client");
  });

  it("speaks the spec's DMA_READ/DMA_WRITE layout when both ends are told to", async () => {
    const spec = await ServerChild.start({ dmaRwLayout: "spec" });
    try {
      const client = VfioUserClient.connect({ socketPath: spec.sockets.dma, dmaRwLayout: "spec" });
      const dev = new RemoteVfioDevice(client);
      const rom = GuestMemory.create("rom", 64 * 1024);
      client.dmaMap({ iova: 0x10000, size: rom.size, memory: rom, sendFd: false });
      assert.equal(dmaCommand(dev, DMA_TEST_CMD.FILL, 0x10004, 10, 0x6b), 0);
      assert.deepEqual([rom.bytes[3], rom.bytes[4], rom.bytes[13], rom.bytes[14]], [0, 0x6b, 0x6b, 0]);
      client.close();
      rom.close();
      const efd = eventfdCreate();
      assert.equal(eventfdRead(efd), 0);
      closeFd(efd);
    } finally {
      await spec.stop();
    }
  });
});
