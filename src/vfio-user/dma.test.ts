/**
 * DmaTable against a real host model and real memfds, without a socket: windows made model memory and reached by the
 * device's DMA, libvfio-user's checks, and the EBUSY/zombie path of a device that keeps its pins.
 */
import assert from "node:assert/strict";
import {
  constants,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Errno, isKernelError } from "../core/index.ts";
import { VFIO_PCI_BAR0_REGION_INDEX, VFIO_TYPE1v2_IOMMU, VfioContainerHandle, VfioGroupHandle } from "../vfio/index.ts";
import { GuestMemory } from "./client.ts";
import { DmaTable, LAZY_FDS } from "./dma.ts";
import { addSeals, closeFd, dupCloexec, F_SEAL_WRITE, fdTarget, memfdCreate } from "./native.ts";
import { VFIO_USER_F_DMA_REGION_READ as R, VFIO_USER_F_DMA_REGION_WRITE as W } from "./protocol.ts";
import { DMA_TEST_CMD, DMA_TEST_REG } from "./testing/dma-device.ts";
import { serverSystem } from "./testing/harness.ts";

/** A connection's worth of setup, as Session.open does it. */
function connection(maxWindows = 8) {
  const s = serverSystem();
  const host = s.system.host;
  const proc = host.spawn("vfio-user:test", { capIpcLock: true });
  const container = VfioContainerHandle.open(proc);
  const group = VfioGroupHandle.open(proc, s.dmaGroup);
  group.setContainer(container);
  container.setIommu(VFIO_TYPE1v2_IOMMU);
  const dev = group.getDevice(s.dmaDevice.name);
  const table = new DmaTable({
    proc,
    containerFd: container.fd,
    physmem: host.physmem,
    maxWindows,
    tracer: host.tracer,
    device: s.dmaDevice.name,
  });
  const reg = (off: number, v: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    dev.write(VFIO_PCI_BAR0_REGION_INDEX, off, b);
  };
  const read = (off: number) => new DataView(dev.read(VFIO_PCI_BAR0_REGION_INDEX, off, 4).buffer).getUint32(0, true);
  const command = (cmd: number, addr: number, len: number, pattern = 0) => {
    reg(DMA_TEST_REG.ADDR_LO, addr % 2 ** 32);
    reg(DMA_TEST_REG.ADDR_HI, Math.floor(addr / 2 ** 32));
    reg(DMA_TEST_REG.LEN, len);
    reg(DMA_TEST_REG.PATTERN, pattern);
    reg(DMA_TEST_REG.CMD, cmd);
    return read(DMA_TEST_REG.STATUS);
  };
  return { ...s, host, proc, container, group, dev, table, command, read };
}

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    if (isKernelError(e)) return e.errno;
    throw e;
  }
  return 0;
}

describe("DmaTable", () => {
  it("makes a memfd window real memory of the model: the device's DMA lands in the client's bytes", () => {
    const c = connection();
    const ram = GuestMemory.create("ram", 64 * 1024);
    const w = c.table.map({ iova: 0x100000, size: ram.size, offset: 0, prot: R | W }, dupCloexec(ram.fd));
    assert.equal(w.backing, "fd");
    assert.equal(c.host.physmem.externalRegions().length, 1);
    assert.equal(c.command(DMA_TEST_CMD.FILL, 0x100000 + 10, 20, 0xee), 0);
    assert.deepEqual([ram.bytes[9], ram.bytes[10], ram.bytes[29], ram.bytes[30]], [0, 0xee, 0xee, 0]);
    ram.bytes.fill(0x11, 0x2000, 0x2010);
    assert.equal(c.command(DMA_TEST_CMD.READ, 0x102000, 16), 0);
    assert.equal(c.read(DMA_TEST_REG.BUF), 0x11111111);
    // vfio_pin_pages: frames pinned, and a write through them is seen by the client.
    assert.equal(c.command(DMA_TEST_CMD.PIN_FILL, 0x103ff8, 16, 0x77), 0);
    assert.equal(c.dmaDevice.pinnedPages, 2);
    assert.deepEqual([ram.bytes[0x3ff8], ram.bytes[0x4007]], [0x77, 0x77]);
    // UNMAP: type1 tells the device, which unpins; the frames and the real mapping go.
    c.table.unmap(0x100000, ram.size);
    assert.equal(c.dmaDevice.pinnedPages, 0);
    assert.equal(c.dmaDevice.unmapNotifications, 1);
    assert.equal(c.host.physmem.externalRegions().length, 0);
    assert.equal(c.host.physmem.stats().pinnedFrames, 0);
    assert.equal(c.command(DMA_TEST_CMD.FILL, 0x100000, 4, 1), Errno.EINVAL, "nothing mapped there any more");
    ram.close();
  });

  it("owns the fd it was given: closed at once if the map fails, kept until first access or unmap otherwise", () => {
    const c = connection();
    const ram = GuestMemory.create("ram-owned", 8192);
    const ok = dupCloexec(ram.fd);
    c.table.map({ iova: 0, size: 8192, offset: 0, prot: R | W }, ok);
    assert.match(fdTarget(ok) ?? "", /memfd:ram-owned/, "kept while the window waits for its first access");
    assert.equal(c.command(DMA_TEST_CMD.FILL, 0, 4, 1), 0);
    assert.equal(fdTarget(ok), undefined, "closed once the window is mapped");
    const bad = dupCloexec(ram.fd);
    assert.equal(
      errnoOf(() => c.table.map({ iova: 0x10000, size: 8192, offset: 4096, prot: R }, bad)),
      Errno.EINVAL,
    );
    assert.equal(closeFd(bad), -Errno.EBADF);
    const untouched = dupCloexec(ram.fd);
    c.table.map({ iova: 0x20000, size: 8192, offset: 0, prot: R | W }, untouched);
    c.table.unmap(0x20000, 8192);
    assert.equal(fdTarget(untouched), undefined, "closed when an untouched window goes");
    c.table.release();
    ram.close();
  });

  it("mmaps a window on its first access only, and never more than LAZY_FDS windows wait with their fd", () => {
    const c = connection(LAZY_FDS + 8);
    const fdCount = () => readdirSync("/proc/self/fd").length;
    const ram = GuestMemory.create("ram-lazy", 4096);
    const fds = fdCount();
    const mappings = () =>
      readFileSync("/proc/self/maps", "utf8")
        .split("\n")
        .filter((l) => l.includes("memfd:ram-lazy")).length;
    const own = mappings(); // the client's own mapping of its RAM
    c.table.map({ iova: 0, size: 4096, offset: 0, prot: R | W }, dupCloexec(ram.fd));
    assert.equal(mappings(), own, "DMA_MAP alone maps nothing");
    assert.equal(c.table.unmappedCount, 1);
    ram.bytes[5] = 0x5c;
    assert.equal(c.command(DMA_TEST_CMD.READ, 4, 4), 0);
    assert.equal(
      (c.read(DMA_TEST_REG.BUF) >>> 8) & 0xff,
      0x5c,
      "the first access maps it and reads the client's bytes",
    );
    assert.equal(mappings(), own + 1);
    assert.equal(c.table.unmappedCount, 0);
    c.table.unmap(0, 4096);
    assert.equal(mappings(), own, "unmapped with the window");
    const room = LAZY_FDS - DmaTable.waitingWindows; // the budget is the process's, over every connection
    for (let i = 0; i <= room; i++) {
      c.table.map({ iova: 0x100000 + i * 4096, size: 4096, offset: 0, prot: R | W }, dupCloexec(ram.fd));
    }
    assert.equal(c.table.unmappedCount, room, "the window past the budget was mapped at once");
    assert.equal(DmaTable.waitingWindows, LAZY_FDS);
    assert.equal(mappings(), own + 1);
    assert.equal(fdCount(), fds + room, "each waiting window holds its fd, the mapped one none");
    c.table.release();
    assert.equal(mappings(), own);
    assert.equal(fdCount(), fds, "release closed every fd");
    assert.equal(c.host.physmem.externalRegions().length, 0);
    ram.close();
  });

  it("refuses at DMA_MAP an fd a lazy mmap could not map: not a regular file, write-only, read-only or write-sealed for a writable window", () => {
    const c = connection();
    const dir = mkdtempSync(join(tmpdir(), "vgpu-dma-"));
    const path = join(dir, "ram");
    const rw = openSync(path, "w+");
    ftruncateSync(rw, 8192);
    try {
      const fdOf = (flags: string) => openSync(flags === "dir" ? dir : path, flags === "dir" ? "r" : flags);
      const map = (fd: number, prot = R | W) =>
        errnoOf(() => c.table.map({ iova: 0, size: 8192, offset: 0, prot }, fd));
      assert.equal(map(fdOf("dir")), Errno.EINVAL, "a directory");
      assert.equal(map(openSync(path, constants.O_WRONLY)), Errno.EACCES, "write-only");
      assert.equal(map(fdOf("r")), Errno.EACCES, "read-only fd, writable window");
      assert.equal(c.table.size, 0);
      writeSync(rw, Buffer.from([1, 2, 3, 4]), 0, 4, 0);
      assert.equal(map(fdOf("r"), R), 0, "read-only fd, read-only window");
      assert.equal(c.command(DMA_TEST_CMD.READ, 0, 4), 0);
      assert.equal(c.read(DMA_TEST_REG.BUF), 0x04030201);
      c.table.unmapAll();
      const sealed = memfdCreate("ram-write-sealed", 8192);
      writeSync(sealed, Buffer.from([5, 6, 7, 8]), 0, 4, 0);
      assert.equal(addSeals(sealed, F_SEAL_WRITE), 0);
      assert.equal(map(dupCloexec(sealed)), Errno.EPERM, "a memfd sealed against writes, writable window");
      assert.equal(map(dupCloexec(sealed), R), 0, "the same, read-only window: mapped private");
      assert.equal(c.command(DMA_TEST_CMD.READ, 0, 4), 0);
      assert.equal(c.read(DMA_TEST_REG.BUF), 0x08070605);
      c.table.release();
      closeFd(sealed);
    } finally {
      closeFd(rw);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("checks windows as libvfio-user does: flags, alignment, overlap, count, fd size", () => {
    const c = connection(3);
    const ram = GuestMemory.create("ram", 16384);
    const map = (iova: number, size: number, fd?: boolean, prot = R | W, offset = 0) =>
      errnoOf(() => c.table.map({ iova, size, offset, prot }, fd ? dupCloexec(ram.fd) : undefined));
    assert.equal(map(0, 4096, false, 4), Errno.EINVAL, "unknown flag");
    assert.equal(map(0, 0), Errno.EINVAL, "empty");
    assert.equal(map(100, 4096), Errno.EINVAL, "unaligned addr");
    assert.equal(map(0, 4096, true, R | W, 100), Errno.EINVAL, "unaligned offset");
    assert.equal(map(2 ** 53, 4096), Errno.EINVAL, "beyond 2^53");
    assert.equal(map(0, 32768, true), Errno.EINVAL, "fd shorter than the window");
    assert.equal(map(0x10000, 0x4000, true), 0);
    assert.equal(map(0x13000, 0x1000), Errno.EEXIST, "overlaps the end");
    assert.equal(map(0xf000, 0x2000), Errno.EEXIST, "overlaps the start");
    assert.equal(map(0x14000, 0x1000), 0, "adjacent is fine");
    assert.equal(map(0xf000, 0x1000), 0);
    assert.equal(map(0x20000, 0x1000), Errno.ENOSPC, "max_dma_maps");
    assert.deepEqual(
      c.table.windows().map((w) => [w.iova, w.backing]),
      [
        [0xf000, "remote"],
        [0x10000, "fd"],
        [0x14000, "remote"],
      ],
    );
    assert.equal(
      errnoOf(() => c.table.unmap(0x10000, 0x1000)),
      Errno.ENOENT,
      "must match a map exactly",
    );
    assert.equal(
      errnoOf(() => c.table.unmap(0x11000, 0x3000)),
      Errno.ENOENT,
    );
    assert.ok(c.table.remoteAt(0xf100, 0x100));
    assert.equal(c.table.remoteAt(0xf100, 0x1000), undefined, "crosses into the fd window");
    assert.equal(c.table.remoteAt(0x10000, 4), undefined, "fd windows are not remote");
    assert.equal(c.table.unmapAll(), 3);
    assert.equal(c.host.physmem.externalRegions().length, 0);
    ram.close();
  });

  it("keeps a window type1 cannot unmap, and at release keeps its memory mapped until the pins go", () => {
    const c = connection();
    const ram = GuestMemory.create("ram", 16384);
    c.table.map({ iova: 0, size: ram.size, offset: 0, prot: R | W }, dupCloexec(ram.fd));
    c.dmaDevice.ignoreUnmap = true;
    assert.equal(c.command(DMA_TEST_CMD.PIN_FILL, 0, 8, 3), 0);
    assert.equal(
      errnoOf(() => c.table.unmap(0, ram.size)),
      Errno.EBUSY,
    );
    assert.equal(c.table.size, 1, "the window stays, as in type1");
    assert.equal(
      errnoOf(() => c.table.release()),
      Errno.EBUSY,
      "release goes on and reports type1's refusal",
    );
    assert.equal(c.table.size, 0);
    assert.equal(c.table.zombieCount, 1, "pinned frames keep the real mapping alive");
    assert.equal(c.host.physmem.externalRegions().length, 1);
    // The device's close (last fd) drops its pins; the connection's process exit releases type1.
    c.dev.close();
    c.group.close();
    c.container.close();
    c.proc.exit();
    c.table.retryZombies();
    assert.equal(c.table.zombieCount, 0);
    assert.equal(c.host.physmem.externalRegions().length, 0);
    ram.close();
  });

  it("maps a window larger than 4 GiB lazily: DMA and pins above 4 GiB reach the client's bytes", () => {
    const c = connection();
    const size = 8 * 2 ** 30;
    const fd = memfdCreate("ram-8g", size);
    const chunks = c.host.physmem.chunkCount();
    const w = c.table.map({ iova: 2 ** 32, size, offset: 0, prot: R | W }, dupCloexec(fd));
    assert.equal(w.backing, "fd");
    assert.equal(w.guarded, false, "a memfd made with sealing is sealed and shared");
    assert.equal(c.host.physmem.chunkCount(), chunks, "registering 8 GiB materialises no frame");
    const high = 2 ** 32 + 6 * 2 ** 30 + 0x1234;
    assert.equal(c.command(DMA_TEST_CMD.FILL, high, 8, 0xab), 0);
    const got = Buffer.alloc(10);
    readSync(fd, got, 0, 10, high - 2 ** 32 - 1);
    assert.deepEqual([...got], [0, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0]);
    assert.equal(c.command(DMA_TEST_CMD.PIN_FILL, 2 ** 32 + size - 4096, 16, 0x5a), 0);
    readSync(fd, got, 0, 2, size - 4096);
    assert.deepEqual([...got.subarray(0, 2)], [0x5a, 0x5a]);
    c.table.unmap(2 ** 32, size);
    assert.equal(c.host.physmem.externalRegions().length, 0);
    assert.equal(c.host.physmem.chunkCount(), chunks, "the frames that materialised went with the window");
    closeFd(fd);
  });

  it("serves a window it cannot seal by guarded copies: a shrunk file is a DMA fault, not a SIGBUS", () => {
    const c = connection();
    const dir = mkdtempSync(join(tmpdir(), "vgpu-dma-"));
    const path = join(dir, "ram");
    const fd = openSync(path, "w+");
    try {
      ftruncateSync(fd, 4 * 4096);
      const w = c.table.map({ iova: 0x200000, size: 4 * 4096, offset: 0, prot: R | W }, dupCloexec(fd));
      assert.equal(w.guarded, true, "a regular file cannot be sealed");
      assert.equal(c.command(DMA_TEST_CMD.FILL, 0x200000 + 3 * 4096, 4, 0x42), 0);
      assert.equal(readFileSync(path)[3 * 4096 + 3], 0x42, "DMA reaches the file");
      writeSync(fd, Buffer.from([7, 7, 7, 7]), 0, 4, 4096);
      assert.equal(c.command(DMA_TEST_CMD.READ, 0x200000 + 4096, 4), 0);
      assert.equal(c.read(DMA_TEST_REG.BUF), 0x07070707);
      assert.equal(c.command(DMA_TEST_CMD.PIN_FILL, 0x200000 + 2 * 4096, 4, 0x33), 0, "pins work on guarded frames");
      assert.equal(readFileSync(path)[2 * 4096], 0x33);
      ftruncateSync(fd, 4096); // the client shrinks the file under the window
      assert.equal(c.command(DMA_TEST_CMD.FILL, 0x200000 + 3 * 4096, 4, 1), Errno.EFAULT, "a fault, the process lives");
      assert.equal(c.command(DMA_TEST_CMD.READ, 0x200000 + 3 * 4096, 4), Errno.EFAULT);
      assert.equal(c.command(DMA_TEST_CMD.FILL, 0x200000, 4, 9), 0, "what is left of the file still works");
      c.table.release();
      assert.equal(c.host.physmem.externalRegions().length, 0);
    } finally {
      closeFd(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
