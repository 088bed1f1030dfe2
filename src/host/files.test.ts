import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, KernelError, TraceRecorder, Tracer, VirtualClock } from "../core/index.ts";
import { Devfs } from "./devfs.ts";
import { EFD_NONBLOCK, EFD_SEMAPHORE, EventFd } from "./eventfd.ts";
import { FdTable, type FileOps, type OpenContext, OpenFile } from "./files.ts";
import type { AddressSpace } from "./mm.ts";

const ctx: OpenContext = {
  pid: 1,
  flags: 2,
  mm: {} as AddressSpace,
  resolveFile: () => {
    throw new Error("unused");
  },
  installFile: () => {
    throw new Error("unused");
  },
};

const errno = (n: number) => (e: unknown) => e instanceof KernelError && e.errno === n;

describe("FdTable", () => {
  it("hands out the lowest free fd from 3 and releases on the last reference", () => {
    let released = 0;
    const ops: FileOps = { kind: "x", release: () => released++ };
    const t = new FdTable();
    const a = t.install(new OpenFile(ops, "/a"));
    const b = t.install(new OpenFile(ops, "/b"));
    assert.deepEqual([a, b], [3, 4]);
    const c = t.dup(a);
    assert.equal(c, 5);
    t.close(a);
    assert.equal(released, 0, "dup keeps the description open");
    assert.equal(t.install(new OpenFile(ops, "/d")), 3);
    assert.equal(t.close(c).released, true);
    assert.equal(released, 1);
    assert.throws(() => t.get(c), errno(Errno.EBADF));
    assert.throws(() => t.close(99), errno(Errno.EBADF));
    assert.throws(() => t.get(-1), errno(Errno.EBADF));
  });
  it("enforces RLIMIT_NOFILE with EMFILE and drops the file", () => {
    let released = 0;
    const t = new FdTable(5);
    t.install(new OpenFile({ kind: "x" }, "/1"));
    t.install(new OpenFile({ kind: "x" }, "/2"));
    assert.throws(() => t.install(new OpenFile({ kind: "x", release: () => released++ }, "/3")), errno(Errno.EMFILE));
    assert.equal(released, 1);
  });
  it("a held file outlives its fd", () => {
    let released = 0;
    const t = new FdTable();
    const f = new OpenFile({ kind: "x", release: () => released++ }, "/c");
    const fd = t.install(f);
    f.hold();
    t.close(fd);
    assert.equal(released, 0);
    assert.equal(f.drop(), true);
    assert.equal(released, 1);
    assert.throws(() => f.hold(), /released/);
  });
});

describe("EventFd", () => {
  it("counts signals and resets on read", () => {
    const e = new EventFd(0, EFD_NONBLOCK);
    let woke = 0;
    const off = e.onSignal(() => woke++);
    e.signal();
    e.signal();
    assert.equal(woke, 2);
    const buf = new Uint8Array(8);
    assert.equal(e.read(buf), 8);
    assert.equal(new DataView(buf.buffer).getBigUint64(0, true), 2n);
    assert.throws(() => e.read(buf), errno(Errno.EAGAIN));
    off();
    e.signal();
    assert.equal(woke, 2);
  });
  it("semaphore mode returns 1 per read; writes add; bad writes fail", () => {
    const e = new EventFd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    assert.equal(e.consume(), 1n);
    assert.equal(e.counter, 2n);
    const w = new Uint8Array(8);
    new DataView(w.buffer).setBigUint64(0, 5n, true);
    e.write(w);
    assert.equal(e.counter, 7n);
    new DataView(w.buffer).setBigUint64(0, 2n ** 64n - 1n, true);
    assert.throws(() => e.write(w), errno(Errno.EINVAL));
    assert.throws(() => e.read(new Uint8Array(4)), errno(Errno.EINVAL));
    assert.throws(() => new EventFd(0, 0x1000_0000), errno(Errno.EINVAL));
  });
});

describe("Devfs", () => {
  it("opens registered nodes, ENOENT otherwise, and traces changes", () => {
    const tracer = new Tracer(new VirtualClock());
    const rec = new TraceRecorder(tracer);
    const d = new Devfs(tracer);
    d.register("/dev/vfio/vfio", () => ({ kind: "vfio-container" }));
    assert.equal(d.open("/dev/vfio/vfio", ctx).kind, "vfio-container");
    assert.throws(() => d.open("/dev/vfio/7", ctx), errno(Errno.ENOENT));
    assert.throws(() => d.register("/dev/vfio/vfio", () => ({ kind: "x" })), errno(Errno.EEXIST));
    assert.throws(() => d.register("/tmp/x", () => ({ kind: "x" })), errno(Errno.EINVAL));
    d.unregister("/dev/vfio/vfio");
    assert.equal(d.exists("/dev/vfio/vfio"), false);
    assert.deepEqual(
      rec.records.map((r) => r.name),
      ["devfs.add", "devfs.remove"],
    );
  });
});
