import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, type Hva, KernelError, TraceRecorder } from "../core/index.ts";
import type { FileOps } from "./files.ts";
import { GiB, Host } from "./host.ts";
import { PROT_READ, PROT_WRITE } from "./mm.ts";
import { pfnToHpa } from "./physmem.ts";
import { asSyscall } from "./process.ts";

const errno = (n: number) => (e: unknown) => e instanceof KernelError && e.errno === n;

describe("Process", () => {
  it("opens device nodes, dispatches ioctl/pread/pwrite, and passes its context to the driver", () => {
    const host = new Host({ memoryBytes: GiB });
    let seenPid = -1;
    let released = 0;
    host.devfs.register("/dev/thing", (ctx) => {
      seenPid = ctx.pid;
      const ops: FileOps = {
        kind: "thing",
        ioctl: (req, arg) => (typeof arg === "number" ? req + arg : arg.length),
        read: (buf, off) => {
          buf.fill(off & 0xff);
          return buf.length;
        },
        release: () => released++,
      };
      return ops;
    });
    const p = host.spawn("vmm");
    const fd = p.open("/dev/thing");
    assert.equal(seenPid, p.pid);
    assert.equal(p.ioctl(fd, 10, 5), 15);
    assert.equal(p.ioctl(fd, 10, new Uint8Array(7)), 7);
    const b = new Uint8Array(4);
    assert.equal(p.pread(fd, b, 0x42), 4);
    assert.equal(b[0], 0x42);
    assert.throws(() => p.pwrite(fd, b, 0), errno(Errno.EINVAL));
    assert.equal(p.sysOpen("/dev/nothing"), -Errno.ENOENT);
    assert.equal(p.sysIoctl(99, 1), -Errno.EBADF);
    p.close(fd);
    assert.equal(released, 1);
  });
  it("ENOTTY for ioctl on a file without it; eventfds resolve by fd", () => {
    const host = new Host({ memoryBytes: GiB });
    const p = host.spawn("vmm");
    const efd = p.eventfd();
    assert.throws(() => p.ioctl(efd, 1), errno(Errno.ENOTTY));
    p.eventfdOf(efd).signal();
    const buf = new Uint8Array(8);
    assert.equal(p.pread(efd, buf, 0), 8);
    assert.equal(buf[0], 1);
    host.devfs.register("/dev/x", () => ({ kind: "x" }));
    const x = p.open("/dev/x");
    assert.throws(() => p.eventfdOf(x), /not an eventfd/);
  });
  it("maps files through the driver's frames and exits cleanly", () => {
    const host = new Host({ memoryBytes: GiB });
    const rec = new TraceRecorder(host.tracer);
    const frames = host.physmem.allocContiguous(2);
    host.physmem.write(pfnToHpa(frames), new Uint8Array([0xab]));
    let released = 0;
    host.devfs.register("/dev/mem-ish", () => ({
      kind: "memdev",
      mmap: () => ({ basePfn: frames, label: "bar" }),
      release: () => released++,
    }));
    const p = host.spawn("vmm");
    const fd = p.open("/dev/mem-ish");
    const at = p.mmapFile(fd, 0, 8192, PROT_READ | PROT_WRITE);
    const b = new Uint8Array(1);
    p.mm.read(at, b);
    assert.equal(b[0], 0xab);
    const ram = p.mm.mmap(1 << 20, PROT_READ | PROT_WRITE);
    p.mm.write(ram as Hva, new Uint8Array([1]));
    p.exit();
    assert.equal(released, 1);
    assert.equal(p.isAlive, false);
    assert.throws(() => p.open("/dev/mem-ish"), errno(Errno.ESRCH));
    assert.equal(rec.count("proc.exit"), 1);
    assert.equal(host.processes().length, 0);
    // The driver's frames are still its own; the process's RAM is gone.
    assert.equal(host.physmem.stats().allocatedFrames, 2);
  });
  it("asSyscall maps KernelErrors to -errno and rethrows bugs", () => {
    assert.equal(
      asSyscall(() => {
        throw new KernelError(Errno.EBUSY, "x");
      }),
      -16,
    );
    assert.throws(() =>
      asSyscall(() => {
        throw new TypeError("bug");
      }),
    );
  });
});

describe("Host.reap", () => {
  it("forgets an exited process and refuses a live or unknown one", () => {
    const host = new Host({ memoryBytes: GiB });
    const p = host.spawn("worker");
    assert.throws(() => host.reap(p.pid), errno(Errno.EBUSY));
    p.exit();
    assert.equal(host.process(p.pid)?.isAlive, false, "an exited process stays inspectable until reaped");
    assert.equal(host.reap(p.pid), p);
    assert.equal(host.process(p.pid), undefined);
    assert.throws(() => host.reap(p.pid), errno(Errno.ECHILD));
  });
});
