/** The koffi layer on the real OS: memfd + mmap sharing, eventfd counters, SCM_RIGHTS passing and truncation. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  addSeals,
  closeFd,
  eventfdCreate,
  eventfdRead,
  eventfdWrite,
  F_SEAL_SHRINK,
  fileSize,
  getSeals,
  MAP_SHARED,
  MsgIo,
  memfdCreate,
  mmapFd,
  NativeBuffer,
  POLLIN,
  PROT_READ,
  PROT_WRITE,
  pollFd,
  unixSocketPair,
} from "./native.ts";

describe("native (koffi) layer", () => {
  it("maps one memfd twice and both views see the same bytes", () => {
    const fd = memfdCreate("t", 8192);
    assert.equal(fileSize(fd), 8192);
    const a = mmapFd(fd, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    const b = mmapFd(fd, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 4096);
    assert.ok(typeof a !== "number" && typeof b !== "number");
    a.bytes[4096 + 7] = 0x5a;
    assert.equal(b.bytes[7], 0x5a);
    assert.notEqual(a.address, b.address);
    a.unmap();
    b.unmap();
    assert.equal(a.mapped, false);
    assert.equal(addSeals(fd, F_SEAL_SHRINK), 0);
    assert.equal(getSeals(fd) & F_SEAL_SHRINK, F_SEAL_SHRINK);
    assert.equal(closeFd(fd), 0);
    assert.equal(closeFd(fd), -9, "a second close is EBADF");
  });

  it("reports mmap failures as -errno", () => {
    const fd = memfdCreate("t", 4096);
    assert.equal(mmapFd(fd, 4096, PROT_READ, MAP_SHARED, 123), -22);
    closeFd(fd);
  });

  it("counts eventfd signals and reads 0 from an empty counter", () => {
    const e = eventfdCreate();
    assert.equal(eventfdRead(e), 0);
    eventfdWrite(e, 1);
    eventfdWrite(e, 2);
    assert.equal(pollFd(e, POLLIN, 0) & POLLIN, POLLIN);
    assert.equal(eventfdRead(e), 3);
    assert.equal(pollFd(e, POLLIN, 0), 0);
    closeFd(e);
  });

  it("passes fds with SCM_RIGHTS; a memfd received maps the sender's bytes", () => {
    const [s0, s1] = unixSocketPair(true);
    const io0 = new MsgIo(4);
    const io1 = new MsgIo(4);
    const data = new NativeBuffer(64);
    const mem = memfdCreate("shared", 4096);
    const m = mmapFd(mem, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 0);
    assert.ok(typeof m !== "number");
    m.bytes[100] = 42;
    data.bytes.set([1, 2, 3]);
    assert.equal(io0.send(s0, data.address, 3, [mem], false), 3);
    assert.equal(io1.recv(s1, data.address + 32, 32), 3);
    assert.deepEqual([...data.bytes.subarray(32, 35)], [1, 2, 3]);
    assert.equal(io1.fdCount, 1);
    const got = io1.fds[0]!;
    assert.notEqual(got, mem);
    const m2 = mmapFd(got, 4096, PROT_READ, MAP_SHARED, 0);
    assert.ok(typeof m2 !== "number");
    assert.equal(m2.bytes[100], 42);
    assert.equal(io1.recv(s1, data.address, 32), -11, "EAGAIN when nothing is waiting");
    m.unmap();
    m2.unmap();
    for (const f of [s0, s1, mem, got]) closeFd(f);
    io0.free();
    io1.free();
    data.free();
  });

  it("flags a message carrying more fds than the receiver accepts", () => {
    const [s0, s1] = unixSocketPair(true);
    const io0 = new MsgIo(8);
    const io1 = new MsgIo(2);
    const data = new NativeBuffer(16);
    const fds = [eventfdCreate(), eventfdCreate(), eventfdCreate(), eventfdCreate()];
    assert.equal(io0.send(s0, data.address, 1, fds, false), 1);
    assert.equal(io1.recv(s1, data.address, 16), 1);
    assert.equal(io1.truncated, true);
    for (let i = 0; i < io1.fdCount; i++) closeFd(io1.fds[i]!);
    for (const f of [s0, s1, ...fds]) closeFd(f);
    io0.free();
    io1.free();
    data.free();
  });
});
