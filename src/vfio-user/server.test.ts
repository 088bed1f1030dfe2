/**
 * The server in process, talked to by the asynchronous test client (the real client blocks, which would keep an
 * in-process server from running): every command's wire handling, errors, refusal, and cleanup on disconnect.
 */
import assert from "node:assert/strict";
import { closeSync, openSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { Errno, isKernelError, readU32LE, writeU32LE } from "../core/index.ts";
import {
  decodeSparseMmapCap,
  parseCapChain,
  uapi,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
} from "../vfio/index.ts";
import { GuestMemory } from "./client.ts";
import {
  closeFd,
  eventfdCreate,
  eventfdRead,
  MAP_SHARED,
  mmapFd,
  PROT_READ,
  PROT_WRITE,
  setNonblocking,
  unixSocketPair,
  writeFd,
} from "./native.ts";
import {
  VFIO_USER_DEVICE_FEATURE,
  VFIO_USER_DEVICE_GET_INFO,
  VFIO_USER_DEVICE_GET_IRQ_INFO,
  VFIO_USER_DEVICE_GET_REGION_INFO,
  VFIO_USER_DEVICE_GET_REGION_IO_FDS,
  VFIO_USER_DEVICE_RESET,
  VFIO_USER_DEVICE_SET_IRQS,
  VFIO_USER_DMA_MAP,
  VFIO_USER_DMA_READ,
  VFIO_USER_DMA_UNMAP,
  VFIO_USER_F_TYPE_REPLY,
  VFIO_USER_REGION_READ,
  VFIO_USER_REGION_WRITE,
  VFIO_USER_REGION_WRITE_MULTI,
  VfioUserDmaMap,
  VfioUserDmaUnmap,
} from "./protocol.ts";
import { serveDevice, VfioUserServer } from "./server.ts";
import { DMA_TEST_CMD, DMA_TEST_REG } from "./testing/dma-device.ts";
import { AsyncClient, isError, type Message, serverSystem, tempDir } from "./testing/harness.ts";

const tmp = tempDir();
after(() => tmp.cleanup());
let n = 0;

function setup(opts: { replyTimeoutMs?: number } = {}) {
  const s = serverSystem();
  const mttySock = join(tmp.dir, `mtty-${++n}.sock`);
  const dmaSock = join(tmp.dir, `dma-${n}.sock`);
  const mtty = serveDevice({ socketPath: mttySock, system: s.system, uuid: s.mttyUuid, ...opts });
  const dma = serveDevice({
    socketPath: dmaSock,
    host: s.system.host,
    group: s.dmaGroup,
    device: s.dmaDevice.name,
    ...opts,
  });
  return {
    ...s,
    mtty,
    dma,
    mttySock,
    dmaSock,
    close: () => {
      mtty.close();
      dma.close();
    },
  };
}

const access = (offset: number, region: number, count: number, data?: number[]) => {
  const b = new Uint8Array(16 + (data?.length ?? 0));
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(offset), true);
  v.setUint32(8, region, true);
  v.setUint32(12, count, true);
  if (data) b.set(data, 16);
  return b;
};
const u32 = (v: number) => Array.from(new Uint8Array(new Uint32Array([v]).buffer));

async function connected(sock: string): Promise<AsyncClient> {
  const c = new AsyncClient(sock);
  const r = await c.version();
  assert.ok(!isError(r), "VERSION succeeds");
  return c;
}

async function bar0(c: AsyncClient, off: number, v: number): Promise<Message> {
  return c.request(VFIO_USER_REGION_WRITE, access(off, 0, 4, u32(v)));
}
async function readBar0(c: AsyncClient, off: number): Promise<number> {
  const r = await c.request(VFIO_USER_REGION_READ, access(off, 0, 4));
  return readU32LE(r.payload, 16);
}

describe("vfio-user server (in process)", () => {
  it("creates its socket with mode 0600, replaces a stale socket, refuses to replace another file", () => {
    const t = setup();
    assert.equal(statSync(t.mttySock).mode & 0o777, 0o600);
    t.close();
    const again = serveDevice({ socketPath: t.mttySock, system: t.system, uuid: t.mttyUuid });
    again.close();
    const file = join(tmp.dir, "plain-file");
    writeFileSync(file, "x");
    assert.throws(
      () => VfioUserServer.listen({ socketPath: file, host: t.system.host, group: t.dmaGroup, device: "x" }),
      (e: unknown) => isKernelError(e) && e.errno === Errno.EEXIST,
    );
    assert.throws(
      () =>
        serveDevice({
          socketPath: join(tmp.dir, "n.sock"),
          system: t.system,
          uuid: "00000000-0000-0000-0000-000000000000",
        }),
      (e: unknown) => isKernelError(e) && e.errno === Errno.ENODEV,
    );
  });

  it("wants VERSION first and only once, and answers device info as QEMU asks for it", async () => {
    const t = setup();
    const c = new AsyncClient(t.mttySock);
    const early = await c.request(
      VFIO_USER_DEVICE_GET_INFO,
      Uint8Array.from(u32(16).concat(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    );
    assert.ok(isError(early));
    assert.equal(early.errorNo, Errno.EINVAL);
    assert.ok(!isError(await c.version()));
    assert.equal((await c.version()).errorNo, Errno.EINVAL);
    const q = new Uint8Array(16);
    writeU32LE(q, 0, 16);
    const info = await c.request(VFIO_USER_DEVICE_GET_INFO, q);
    assert.equal(info.payload.length, 16, "QEMU receives the reply in a 32-byte buffer");
    assert.deepEqual([readU32LE(info.payload, 4), readU32LE(info.payload, 8), readU32LE(info.payload, 12)], [3, 9, 5]);
    const wide = new Uint8Array(64);
    writeU32LE(wide, 0, 64);
    const info64 = await c.request(VFIO_USER_DEVICE_GET_INFO, wide);
    assert.equal(info64.payload.length, 16, "a larger argsz still gets the 16-byte struct (libvfio-user)");
    assert.equal(readU32LE(info64.payload, 0), 16, "argsz is the struct's size, not the client's");
    const irq = await c.request(
      VFIO_USER_DEVICE_GET_IRQ_INFO,
      uapi.VfioIrqInfo.encode({ argsz: 16, flags: 0, index: 0, count: 0 }),
    );
    assert.equal(readU32LE(irq.payload, 12), 1);
    const bad = await c.request(
      VFIO_USER_DEVICE_GET_IRQ_INFO,
      uapi.VfioIrqInfo.encode({ argsz: 16, flags: 0, index: 9, count: 0 }),
    );
    assert.equal(bad.errorNo, Errno.EINVAL);
    const io = await c.request(
      VFIO_USER_DEVICE_GET_REGION_IO_FDS,
      Uint8Array.from([...u32(64), ...u32(0), ...u32(0), ...u32(0)]),
    );
    assert.equal(readU32LE(io.payload, 12), 0, "no ioeventfds");
    assert.equal(io.fds.length, 0);
    c.close();
    t.close();
  });

  it("exports an mmap-able region as a memfd: MMAP and its areas kept, the mapping shares the device's memory", async () => {
    const t = setup();
    const c = await connected(t.dmaSock);
    const ask = async (argsz: number) => {
      const q = new Uint8Array(argsz);
      writeU32LE(q, 0, argsz);
      writeU32LE(q, 8, 2);
      return c.request(VFIO_USER_DEVICE_GET_REGION_INFO, q);
    };
    const short = await ask(32);
    for (const fd of short.fds) closeFd(fd);
    assert.equal(short.payload.length, 32);
    const needed = readU32LE(short.payload, 0);
    assert.ok(needed > 32);
    assert.equal(readU32LE(short.payload, 12), 0, "no chain when it does not fit");
    assert.equal(readU32LE(short.payload, 4) & VFIO_REGION_INFO_FLAG_CAPS, 0, "nor the CAPS flag (QEMU rejects it)");
    const reply = await ask(needed);
    const full = reply.payload;
    const flags = readU32LE(full, 4);
    assert.equal(flags & VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_MMAP, "MMAP kept");
    assert.equal(flags & VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_CAPS);
    assert.equal(readU32LE(full, 0), full.length);
    assert.equal(readU32LE(full, 24), 0, "offset 0 into the fd");
    const chain = parseCapChain(full, readU32LE(full, 12));
    assert.deepEqual(
      chain.map((x) => x.id),
      [VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE],
    );
    assert.deepEqual(
      decodeSparseMmapCap(chain[0]!.bytes).areas.map((a) => [Number(a.offset), Number(a.size)]),
      [[0x1000, 0x1000]],
    );
    assert.equal(reply.fds.length, 1, "the region's fd comes with the reply");
    const fd = reply.fds[0]!;
    const m = mmapFd(fd, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    assert.ok(typeof m !== "number");
    // Client store through the mapping -> the device's frames (REGION_READ goes through the model).
    m.bytes.set([1, 2, 3, 4], 0x1000);
    assert.deepEqual(
      [...(await c.request(VFIO_USER_REGION_READ, access(0x1000, 2, 4))).payload.subarray(16)],
      [1, 2, 3, 4],
    );
    // Device-side store -> the client's mapping.
    assert.ok(!isError(await c.request(VFIO_USER_REGION_WRITE, access(0x1ffc, 2, 4, [9, 8, 7, 6]))));
    assert.deepEqual([...m.bytes.subarray(0x1ffc, 0x2000)], [9, 8, 7, 6]);
    // The first page is not an mmap area: not shared.
    assert.ok(!isError(await c.request(VFIO_USER_REGION_WRITE, access(0, 2, 1, [0x55]))));
    assert.equal(m.bytes[0], 0);
    // A second REGION_INFO hands out the same memory (another fd for it), exported once.
    const again = await ask(needed);
    assert.equal(again.fds.length, 1);
    const m2 = mmapFd(again.fds[0]!, 8192, PROT_READ, MAP_SHARED, 0);
    assert.ok(typeof m2 !== "number");
    assert.equal(m2.bytes[0x1001], 2);
    m2.unmap();
    closeFd(again.fds[0]!);
    c.close();
    await t.dma.idle();
    // The device's frames have their own memory again, with the bytes they held; our mapping no longer reaches them.
    m.bytes[0x1000] = 0x77;
    const d = await connected(t.dmaSock);
    assert.deepEqual(
      [...(await d.request(VFIO_USER_REGION_READ, access(0x1000, 2, 4))).payload.subarray(16)],
      [1, 2, 3, 4],
    );
    d.close();
    m.unmap();
    closeFd(fd);
    t.close();
  });

  it("bridges SET_IRQS eventfds to the device: mtty's UART interrupt reaches the client's eventfd", async () => {
    const t = setup();
    const c = await connected(t.mttySock);
    const efd = eventfdCreate();
    const set = (flags: number, index: number, count: number, fds?: number[]) =>
      c.request(VFIO_USER_DEVICE_SET_IRQS, uapi.VfioIrqSet.encode({ argsz: 20, flags, index, start: 0, count }), fds);
    const trig = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
    assert.equal((await set(trig, 1, 2, [efd])).errorNo, Errno.EINVAL, "count and fds disagree");
    assert.ok(!isError(await set(trig, 1, 1, [efd])));
    assert.equal(t.mtty.state().eventfds, 1);
    await c.request(VFIO_USER_REGION_WRITE, access(1, 0, 1, [1]));
    await c.request(VFIO_USER_REGION_WRITE, access(0, 0, 1, [0x41]));
    assert.equal(eventfdRead(efd), 1, "the MSI eventfd was signalled");
    assert.equal((await c.request(VFIO_USER_REGION_READ, access(0, 0, 1))).payload[16], 0x41);
    assert.ok(!isError(await set(VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE, 1, 0)));
    assert.equal(t.mtty.state().eventfds, 0, "count 0 with DATA_NONE disables: the bridge is closed");
    assert.equal(t.mtty.device.length > 0, true);
    const withFd = await c.request(VFIO_USER_REGION_READ, access(0, 0, 1), [efd]);
    assert.equal(withFd.errorNo, Errno.EINVAL, "fds on a command that takes none");
    closeFd(efd);
    c.close();
    t.close();
  });

  it("refuses SET_IRQS fds that are not eventfds, and never blocks on a client's full eventfd", async () => {
    const t = setup();
    const c = await connected(t.mttySock);
    const set = (index: number, fds: number[]) =>
      c.request(
        VFIO_USER_DEVICE_SET_IRQS,
        uapi.VfioIrqSet.encode({
          argsz: 20,
          flags: VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
          index,
          start: 0,
          count: fds.length,
        }),
        fds,
      );
    const [sock, peer] = unixSocketPair(false);
    const devnull = openSync("/dev/null", "r");
    for (const fd of [sock, devnull]) {
      const r = await set(1, [fd]);
      assert.equal(r.errorNo, Errno.EINVAL, "a socket or a file is not an eventfd");
    }
    assert.equal(t.mtty.state().eventfds, 0, "nothing was bridged");
    // A blocking eventfd whose counter is one below its maximum: a blocking write of 1 would wait forever.
    const efd = eventfdCreate();
    setNonblocking(efd, false);
    const max = new Uint8Array([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert.equal(writeFd(efd, max), 8);
    assert.ok(!isError(await set(1, [efd])));
    await c.request(VFIO_USER_REGION_WRITE, access(1, 0, 1, [1]));
    for (let i = 0; i < 3; i++) await c.request(VFIO_USER_REGION_WRITE, access(0, 0, 1, [0x41 + i]));
    const r = await c.request(VFIO_USER_REGION_READ, access(0, 0, 1));
    assert.equal(r.payload[16], 0x41, "the server still answers: the full counter cost edges, not a hang");
    assert.ok(t.mtty.state().lostSignals >= 1, "the lost edges are counted");
    for (const fd of [sock, peer, efd]) closeFd(fd);
    closeSync(devnull);
    c.close();
    t.close();
  });

  it("handles region writes: posted (no reply), multi, and errors for bad regions and counts", async () => {
    const t = setup();
    const c = await connected(t.mttySock);
    c.post(VFIO_USER_REGION_WRITE, access(7, 0, 1, [0x5a]));
    assert.equal(
      (await c.request(VFIO_USER_REGION_READ, access(7, 0, 1))).payload[16],
      0x5a,
      "posted write done in order",
    );
    const multi = new Uint8Array(8 + 24 * 2);
    multi[0] = 2;
    multi.set(access(7, 0, 1, [0x11]).subarray(0, 16), 8);
    multi[8 + 16] = 0x11;
    multi.set(access(7, 1, 1).subarray(0, 16), 32);
    multi[32 + 16] = 0x22;
    c.post(VFIO_USER_REGION_WRITE_MULTI, multi);
    assert.equal((await c.request(VFIO_USER_REGION_READ, access(7, 0, 1))).payload[16], 0x11);
    assert.equal((await c.request(VFIO_USER_REGION_READ, access(7, 1, 1))).payload[16], 0x22);
    assert.equal((await c.request(VFIO_USER_REGION_READ, access(0, 12, 1))).errorNo, Errno.EINVAL, "no region 12");
    assert.equal((await c.request(VFIO_USER_REGION_READ, access(2 ** 41, 0, 1))).errorNo, Errno.EINVAL);
    assert.equal((await c.request(VFIO_USER_REGION_READ, access(0, 0, 2 << 20))).errorNo, Errno.E2BIG);
    assert.equal((await c.request(VFIO_USER_REGION_WRITE, access(0, 0, 4, [1]))).errorNo, Errno.EINVAL, "short data");
    const rr = await c.request(VFIO_USER_REGION_READ, access(0, 7, 4));
    assert.equal(readU32LE(rr.payload, 12), 4);
    assert.ok(!isError(await c.request(VFIO_USER_DEVICE_RESET)));
    assert.equal((await c.request(VFIO_USER_DEVICE_FEATURE, new Uint8Array(8))).errorNo, Errno.EOPNOTSUPP);
    assert.equal((await c.request(VFIO_USER_DMA_READ, new Uint8Array(16))).errorNo, Errno.EINVAL, "wrong direction");
    assert.equal(
      (await c.request(200, new Uint8Array(8))).errorNo,
      Errno.EINVAL,
      "unknown command: EINVAL (libvfio-user)",
    );
    c.close();
    t.close();
  });

  it("maps DMA windows with an fd into the model and answers DMA_MAP/UNMAP errors as libvfio-user does", async () => {
    const t = setup();
    const c = await connected(t.dmaSock);
    const ram = GuestMemory.create("ram", 64 * 1024);
    const map = (addr: number, size: number, fd?: number, flags = 3) =>
      c.request(
        VFIO_USER_DMA_MAP,
        VfioUserDmaMap.encode({ argsz: 32, flags, offset: 0, addr, size }),
        fd === undefined ? undefined : [fd],
      );
    const unmap = (addr: number, size: number, flags = 0) =>
      c.request(VFIO_USER_DMA_UNMAP, VfioUserDmaUnmap.encode({ argsz: 24, flags, addr, size }));
    assert.ok(!isError(await map(0x100000, ram.size, ram.fd)));
    assert.equal((await map(0x108000, 0x1000)).errorNo, Errno.EEXIST);
    assert.equal((await map(0x200000, 0x1000, ram.fd, 8)).errorNo, Errno.EINVAL);
    await bar0(c, DMA_TEST_REG.ADDR_LO, 0x100040);
    await bar0(c, DMA_TEST_REG.LEN, 8);
    await bar0(c, DMA_TEST_REG.PATTERN, 0x99);
    await bar0(c, DMA_TEST_REG.CMD, DMA_TEST_CMD.FILL);
    assert.equal(await readBar0(c, DMA_TEST_REG.STATUS), 0);
    assert.deepEqual([ram.bytes[0x40], ram.bytes[0x47], ram.bytes[0x48]], [0x99, 0x99, 0]);
    assert.equal((await unmap(0x100000, 0x1000)).errorNo, Errno.ENOENT);
    assert.equal((await unmap(0, 0, 1)).errorNo, Errno.EOPNOTSUPP, "dirty bitmap");
    assert.equal((await unmap(0x100000, 0, 2)).errorNo, Errno.EINVAL, "UNMAP_ALL with an address");
    const ok = await unmap(0x100000, ram.size);
    assert.ok(!isError(ok));
    assert.equal(ok.payload.length, 24, "the request echoed");
    assert.equal(t.system.host.physmem.externalRegions().length, 0);
    assert.deepEqual(t.system.host.physmem.externalSpan(), { top: 0, free: 0 }, "frame numbers back in the pool");
    assert.ok(!isError(await map(0x100000, ram.size, ram.fd)));
    assert.ok(!isError(await unmap(0, 0, 2)));
    assert.equal(t.dma.state().windows, 0);
    ram.close();
    c.close();
    t.close();
  });

  it("refuses a second client with EBUSY and serves the next one after the first leaves", async () => {
    const t = setup();
    const first = await connected(t.mttySock);
    const second = new AsyncClient(t.mttySock);
    const r = await second.version();
    assert.equal(r.errorNo, Errno.EBUSY);
    await second.closed();
    assert.equal(t.mtty.state().refused, 1);
    first.close();
    await t.mtty.idle();
    const third = await connected(t.mttySock);
    assert.equal(t.mtty.state().connection, 3);
    third.close();
    t.close();
  });

  it("answers a reply sent where a command is expected with EINVAL, and goes on serving", async () => {
    const t = setup();
    const c = await connected(t.mttySock);
    const r = await c.request(VFIO_USER_DEVICE_RESET, undefined, undefined, VFIO_USER_F_TYPE_REPLY);
    assert.equal(r.errorNo, Errno.EINVAL);
    assert.ok(!isError(await c.request(VFIO_USER_DEVICE_RESET)), "the connection lives");
    assert.notEqual(t.mtty.state().connection, undefined);
    c.close();
    t.close();
  });

  it("gives up on a client that does not answer DMA_WRITE, and releases everything", async () => {
    const t = setup({ replyTimeoutMs: 100 });
    const c = await connected(t.dmaSock);
    await c.request(
      VFIO_USER_DMA_MAP,
      VfioUserDmaMap.encode({ argsz: 32, flags: 3, offset: 0, addr: 0xf0000, size: 0x1000 }),
    );
    await bar0(c, DMA_TEST_REG.ADDR_LO, 0xf0000);
    await bar0(c, DMA_TEST_REG.LEN, 4);
    // The server waits for our answer to its DMA_WRITE while we cannot run: it times out and drops us.
    c.post(VFIO_USER_REGION_WRITE, access(DMA_TEST_REG.CMD, 0, 4, u32(DMA_TEST_CMD.FILL)));
    await c.closed();
    await t.dma.idle();
    assert.ok(
      c.unsolicited.some((m) => m.cmd === 12),
      "the DMA_WRITE reached us",
    );
    assert.equal(t.dma.state().problems.length, 0);
    assert.equal(t.system.host.processes().length, 0);
    t.close();
  });

  it("releases everything when the client goes: windows, pins, eventfds, device state, host processes", async () => {
    const t = setup();
    const host = t.system.host;
    const before = { procs: host.processes().length, ext: host.physmem.externalRegions().length };
    const c = await connected(t.dmaSock);
    const ram = GuestMemory.create("ram", 32 * 1024);
    await c.request(
      VFIO_USER_DMA_MAP,
      VfioUserDmaMap.encode({ argsz: 32, flags: 3, offset: 0, addr: 0, size: ram.size }),
      [ram.fd],
    );
    const efd = eventfdCreate();
    await c.request(
      VFIO_USER_DEVICE_SET_IRQS,
      uapi.VfioIrqSet.encode({
        argsz: 20,
        flags: VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
        index: 1,
        start: 0,
        count: 1,
      }),
      [efd],
    );
    await bar0(c, DMA_TEST_REG.ADDR_LO, 0x1000);
    await bar0(c, DMA_TEST_REG.LEN, 0x2000);
    await bar0(c, DMA_TEST_REG.CMD, DMA_TEST_CMD.PIN_FILL);
    assert.equal(t.dmaDevice.pinnedPages, 2);
    assert.equal(eventfdRead(efd), 1, "one MSI per command");
    assert.equal(t.system.vfio.inspect().containers.length, 1);
    c.close();
    await t.dma.idle();
    assert.equal(t.dmaDevice.pinnedPages, 0);
    assert.ok(t.dmaDevice.unmapNotifications >= 1, "unpinned through type1's dma_unmap");
    assert.equal(host.physmem.externalRegions().length, before.ext);
    assert.equal(host.physmem.stats().pinnedFrames, 0);
    assert.equal(host.processes().length, before.procs);
    assert.equal(t.system.vfio.inspect().containers.length, 0);
    assert.equal(readU32LE(new Uint8Array(8), 0), 0);
    t.system.vfio.checkInvariants();
    closeFd(efd);
    ram.close();
    t.close();
  });
});
