import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  Errno,
  type Hva,
  hva,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  TraceRecorder,
  Tracer,
  VirtualClock,
} from "../core/index.ts";
import {
  AddressSpace,
  type AddressSpaceOptions,
  DEFAULT_MMAP_BASE,
  MMAP_MIN_ADDR,
  PROT_EXEC,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  TASK_SIZE,
} from "./mm.ts";
import { PhysicalMemory } from "./physmem.ts";

const RW = PROT_READ | PROT_WRITE;
const TiB = 2 ** 40;
/** physmem never hands out the frames below 1 MiB. */
const RESERVED_FRAMES = 0x100;

function mk(opts: { frames?: number; as?: Partial<AddressSpaceOptions> } = {}) {
  const tracer = new Tracer(new VirtualClock());
  const physmem = new PhysicalMemory({ sizeBytes: (RESERVED_FRAMES + (opts.frames ?? 4096)) * PAGE_SIZE, tracer });
  const as = new AddressSpace({ physmem, tracer, pid: 42, ...opts.as });
  return { tracer, physmem, as };
}

function errno(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    if (e instanceof KernelError) return e.errno;
    throw e;
  }
  assert.fail("expected a KernelError");
}

const at = (a: number): Hva => hva(a);

describe("AddressSpace mmap", () => {
  it("rejects length 0, bad lengths, unknown prot bits and unaligned MAP_FIXED with EINVAL", () => {
    const { as } = mk();
    assert.equal(
      errno(() => as.mmap(0, RW)),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() => as.mmap(-4096, RW)),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() => as.mmap(1.5, RW)),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() => as.mmap(4096, 8)),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() => as.mmap(4096, RW, { fixed: at(0x10000123) })),
      Errno.EINVAL,
    );
    assert.equal(as.stats().vmas, 0);
  });

  it("fails MAP_FIXED below mmap_min_addr with EPERM and beyond TASK_SIZE with ENOMEM", () => {
    const { as } = mk();
    assert.equal(
      errno(() => as.mmap(4096, RW, { fixed: at(MMAP_MIN_ADDR - PAGE_SIZE) })),
      Errno.EPERM,
    );
    assert.equal(
      errno(() => as.mmap(2 * PAGE_SIZE, RW, { fixed: at(TASK_SIZE - PAGE_SIZE) })),
      Errno.ENOMEM,
    );
    assert.equal(
      errno(() => as.mmap(TASK_SIZE + PAGE_SIZE, RW)),
      Errno.ENOMEM,
    );
  });

  it("rounds lengths up to pages and places mappings top-down below mmapBase, deterministically", () => {
    const { as } = mk();
    const a = as.mmap(100, RW);
    assert.equal(a, DEFAULT_MMAP_BASE - PAGE_SIZE);
    const b = as.mmap(3 * PAGE_SIZE, PROT_READ);
    assert.equal(b, a - 3 * PAGE_SIZE);
    assert.equal(as.vmaAt(a)?.end, DEFAULT_MMAP_BASE);
    assert.equal(as.stats().mappedBytes, 4 * PAGE_SIZE);
    // A hole left by munmap is reused by the next mapping that fits (highest first).
    as.munmap(a, PAGE_SIZE);
    assert.equal(as.mmap(PAGE_SIZE, RW), a);
    const other = mk().as;
    assert.equal(other.mmap(100, RW), a, "same sequence, same addresses");
  });

  it("falls back to bottom-up above mmapBase when nothing fits below", () => {
    const base = MMAP_MIN_ADDR + 4 * PAGE_SIZE;
    const { as } = mk({ as: { mmapBase: base } });
    assert.equal(as.mmap(2 * PAGE_SIZE, RW), base - 2 * PAGE_SIZE);
    assert.equal(as.mmap(4 * PAGE_SIZE, RW), base);
    assert.equal(as.mmap(PAGE_SIZE, RW), MMAP_MIN_ADDR + PAGE_SIZE);
    assert.equal(as.mmap(PAGE_SIZE, RW), MMAP_MIN_ADDR);
    assert.equal(as.mmap(PAGE_SIZE, RW), base + 4 * PAGE_SIZE);
  });

  it("rejects an unaligned or out-of-range mmapBase", () => {
    assert.throws(() => mk({ as: { mmapBase: 0x1234 } }), KernelError);
    assert.throws(() => mk({ as: { mmapBase: TASK_SIZE + PAGE_SIZE } }), KernelError);
  });

  it("MAP_FIXED replaces what was mapped and drops its page references", () => {
    const { as, physmem } = mk();
    const base = at(0x10000000);
    as.mmap(4 * PAGE_SIZE, RW, { fixed: base, name: "old" });
    as.write(at(base + PAGE_SIZE), new Uint8Array([9]));
    assert.equal(physmem.stats().allocatedFrames, 1);
    as.mmap(2 * PAGE_SIZE, PROT_READ, { fixed: at(base + PAGE_SIZE), name: "new" });
    assert.equal(physmem.stats().allocatedFrames, 0);
    assert.deepEqual(
      as.vmas().map((v) => [v.start - base, v.end - base, v.prot, v.name]),
      [
        [0, PAGE_SIZE, RW, "old"],
        [PAGE_SIZE, 3 * PAGE_SIZE, PROT_READ, "new"],
        [3 * PAGE_SIZE, 4 * PAGE_SIZE, RW, "old"],
      ],
    );
    const b = new Uint8Array(1);
    as.read(at(base + PAGE_SIZE), b);
    assert.equal(b[0], 0, "the new mapping is fresh zeroed memory");
  });

  it("maps 1 TiB for nothing until touched, and unmaps it without visiting its pages", () => {
    const { as, physmem } = mk();
    const a = as.mmap(TiB, RW);
    assert.equal(as.stats().residentPages, 0);
    assert.equal(physmem.stats().allocatedFrames, 0);
    const last = at(a + TiB - PAGE_SIZE);
    as.write(last, new Uint8Array([1]));
    as.fault(a, false);
    assert.equal(as.stats().residentPages, 2);
    assert.equal(as.residentIn(a, TiB), 2);
    const before = as.pageTableEntriesExamined;
    as.munmap(a, TiB);
    // Two touched pages live in two 512-entry leaves: the unmap examines those, not the 2^28 pages of the VMA.
    assert.ok(
      as.pageTableEntriesExamined - before <= 2 + 2 * 512,
      "munmap of a sparse 1 TiB VMA examines touched leaves",
    );
    assert.equal(physmem.stats().allocatedFrames, 0);
    assert.equal(as.stats().mappedBytes, 0);
  });

  it("refuses to map an external run whose frames are not allocated", () => {
    const { as, physmem } = mk();
    const base = physmem.registerExternal(new Uint8Array(4 * PAGE_SIZE), "ram");
    assert.equal(
      errno(() => as.mmap(8 * PAGE_SIZE, RW, { backing: { kind: "external", basePfn: base, label: "ram" } })),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() =>
        as.mmap(PAGE_SIZE, RW, { backing: { kind: "external", basePfn: (base + 100) as Pfn, label: "nothing" } }),
      ),
      Errno.EINVAL,
    );
  });

  it("prints /proc/pid/maps lines", () => {
    const { as, physmem } = mk();
    const ext = physmem.registerExternal(new Uint8Array(PAGE_SIZE), "guest-ram");
    as.mmap(PAGE_SIZE, RW, { fixed: at(0x10000000), name: "heap" });
    as.mmap(PAGE_SIZE, PROT_READ | PROT_EXEC, {
      fixed: at(0x20000000),
      backing: { kind: "external", basePfn: ext, label: "guest-ram" },
    });
    assert.equal(as.maps(), "000010000000-000010001000 rw-p [anon:heap]\n000020000000-000020001000 r-xs guest-ram");
  });
});

describe("AddressSpace munmap and mprotect", () => {
  it("munmap splits a VMA, drops the references of the range and leaves the rest mapped", () => {
    const { as, physmem } = mk();
    const a = as.mmap(8 * PAGE_SIZE, RW);
    for (let k = 0; k < 8; k++) as.fault(at(a + k * PAGE_SIZE), true);
    const kept = as.translate(at(a + 6 * PAGE_SIZE));
    as.munmap(at(a + 2 * PAGE_SIZE), 3 * PAGE_SIZE);
    assert.deepEqual(
      as.vmas().map((v) => [v.start - a, v.end - a]),
      [
        [0, 2 * PAGE_SIZE],
        [5 * PAGE_SIZE, 8 * PAGE_SIZE],
      ],
    );
    assert.equal(physmem.stats().allocatedFrames, 5);
    assert.equal(as.translate(at(a + 3 * PAGE_SIZE)), undefined);
    assert.equal(as.translate(at(a + 6 * PAGE_SIZE)), kept);
    assert.equal(
      errno(() => as.fault(at(a + 3 * PAGE_SIZE), false)),
      Errno.EFAULT,
    );
    assert.equal(as.stats().mappedBytes, 5 * PAGE_SIZE);
  });

  it("munmap rejects an unaligned address and length 0; a hole is fine", () => {
    const { as } = mk();
    const a = as.mmap(PAGE_SIZE, RW);
    assert.equal(
      errno(() => as.munmap(at(a + 1), PAGE_SIZE)),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() => as.munmap(a, 0)),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() => as.munmap(at(TASK_SIZE - PAGE_SIZE), 2 * PAGE_SIZE)),
      Errno.EINVAL,
    );
    as.munmap(at(0x10000000), 16 * PAGE_SIZE);
    as.munmap(at(a - PAGE_SIZE), 3 * PAGE_SIZE);
    assert.equal(as.stats().vmas, 0);
  });

  it("mprotect splits, changes later access checks, and fails with ENOMEM on a hole without changing anything", () => {
    const { as } = mk();
    const a = as.mmap(4 * PAGE_SIZE, RW);
    as.fault(at(a + PAGE_SIZE), true);
    as.mprotect(at(a + PAGE_SIZE), PAGE_SIZE, PROT_READ);
    assert.deepEqual(
      as.vmas().map((v) => v.prot),
      [RW, PROT_READ, RW],
    );
    assert.notEqual(as.translate(at(a + PAGE_SIZE)), undefined, "present pages stay present");
    assert.equal(
      errno(() => as.fault(at(a + PAGE_SIZE), true)),
      Errno.EFAULT,
    );
    as.fault(at(a + PAGE_SIZE), false);
    as.munmap(at(a + 3 * PAGE_SIZE), PAGE_SIZE);
    assert.equal(
      errno(() => as.mprotect(a, 4 * PAGE_SIZE, PROT_NONE)),
      Errno.ENOMEM,
    );
    assert.deepEqual(
      as.vmas().map((v) => v.prot),
      [RW, PROT_READ, RW],
    );
    assert.equal(
      errno(() => as.mprotect(at(a + 8), PAGE_SIZE, PROT_READ)),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() => as.mprotect(a, PAGE_SIZE, 0x10)),
      Errno.EINVAL,
    );
    as.mprotect(a, 0, PROT_NONE);
    assert.equal(as.vmaAt(a)?.prot, RW, "length 0 changes nothing");
  });
});

describe("AddressSpace faults and CPU access", () => {
  it("EFAULT outside any VMA and when the protection forbids the access", () => {
    const { as } = mk();
    const ro = as.mmap(PAGE_SIZE, PROT_READ);
    const none = as.mmap(PAGE_SIZE, PROT_NONE);
    const wo = as.mmap(PAGE_SIZE, PROT_WRITE);
    assert.equal(
      errno(() => as.fault(at(0x10000000), false)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.fault(ro, true)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.fault(none, false)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.fault(wo, false)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.write(ro, new Uint8Array(1))),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.read(none, new Uint8Array(1))),
      Errno.EFAULT,
    );
    as.fault(ro, false);
    as.fault(wo, true);
    assert.equal(as.stats().residentPages, 2);
  });

  it("faults once per page, allocating with the owner tag, and ENOMEM when host memory is out", () => {
    const { as, physmem } = mk({ frames: 2, as: { owner: 7 } });
    const a = as.mmap(4 * PAGE_SIZE, RW);
    const f = as.fault(a, false);
    assert.equal(as.fault(at(a + 100), true), f);
    assert.equal(physmem.owner(f), 7);
    as.fault(at(a + PAGE_SIZE), true);
    const e = (() => {
      try {
        as.fault(at(a + 2 * PAGE_SIZE), true);
      } catch (err) {
        return err as KernelError;
      }
      return undefined;
    })();
    assert.equal(e?.errno, Errno.ENOMEM);
    assert.match(e?.message ?? "", /page fault at 0x/);
    assert.equal(as.translate(at(a + 2 * PAGE_SIZE)), undefined);
  });

  it("read and write cross page boundaries and land in the frames translate() names", () => {
    const { as, physmem } = mk();
    const a = as.mmap(3 * PAGE_SIZE, RW);
    const data = new Uint8Array(PAGE_SIZE + 200).map((_, i) => (i * 7) & 0xff);
    as.write(at(a + PAGE_SIZE - 100), data);
    const back = new Uint8Array(data.length + 2);
    as.read(at(a + PAGE_SIZE - 100), back, 1, data.length);
    assert.deepEqual(back.subarray(1, 1 + data.length), data);
    const small = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    as.write(at(a + 2 * PAGE_SIZE - 5), small);
    const smallBack = new Uint8Array(10);
    as.read(at(a + 2 * PAGE_SIZE - 5), smallBack);
    assert.deepEqual(smallBack, small);
    const f1 = as.translate(at(a + PAGE_SIZE))!;
    assert.equal(physmem.frameForRead(f1)![0], data[100]);
    assert.equal(as.translate(a) !== undefined && as.translate(at(a + 2 * PAGE_SIZE)) !== undefined, true);
  });
});

describe("AddressSpace get_user_pages and pin_user_pages", () => {
  it("get_user_pages takes a reference per page; putPages drops them", () => {
    const { as, physmem } = mk();
    const a = as.mmap(4 * PAGE_SIZE, RW);
    const pfns = as.getUserPages(a, 4, true);
    assert.equal(pfns.length, 4);
    for (const f of pfns) assert.equal(physmem.refCount(f), 2);
    as.munmap(a, 4 * PAGE_SIZE);
    for (const f of pfns) assert.equal(physmem.refCount(f), 1, "the GUP reference outlives munmap");
    as.putPages(pfns);
    assert.equal(physmem.stats().allocatedFrames, 0);
  });

  it("get_user_pages is all-or-nothing and EFAULTs on a hole or a read-only page for write", () => {
    const { as, physmem } = mk();
    const a = as.mmap(4 * PAGE_SIZE, RW, { fixed: at(0x10000000) });
    as.mprotect(at(a + 2 * PAGE_SIZE), PAGE_SIZE, PROT_READ);
    assert.equal(
      errno(() => as.getUserPages(a, 4, true)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.getUserPages(a, 5, false)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.getUserPages(at(0x20000000), 1, false)),
      Errno.EFAULT,
    );
    for (let k = 0; k < 4; k++) {
      const f = as.translate(at(a + k * PAGE_SIZE));
      if (f !== undefined) assert.equal(physmem.refCount(f), 1, "no GUP reference left behind");
    }
    assert.equal(as.getUserPages(a, 4, false).length, 4, "read access crosses the read-only VMA");
    assert.equal(
      errno(() => as.getUserPages(a, -1, false)),
      Errno.EINVAL,
    );
    assert.deepEqual(as.getUserPages(a, 0, false), []);
  });

  it("pin_user_pages EFAULTs on PROT_NONE, on write to read-only and outside any VMA, pinning nothing", () => {
    const { as, physmem } = mk();
    const none = as.mmap(PAGE_SIZE, PROT_NONE);
    const ro = as.mmap(2 * PAGE_SIZE, PROT_READ);
    assert.equal(
      errno(() => as.pinUserPages(none, 1, false)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.pinUserPages(none, 1, true)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.pinUserPages(ro, 1, true)),
      Errno.EFAULT,
    );
    assert.equal(
      errno(() => as.pinUserPages(at(0x10000000), 1, false)),
      Errno.EFAULT,
    );
    // ro is directly below none: pages 0-1 pin, page 2 (PROT_NONE) fails, so the whole call is undone.
    assert.equal(
      errno(() => as.pinUserPages(ro, 3, false)),
      Errno.EFAULT,
    );
    assert.equal(physmem.stats().pinnedFrames, 0);
    assert.equal(as.stats().pinnedPages, 0);
    assert.equal(as.pinUserPages(ro, 2, false), 2);
    assert.equal(physmem.stats().pinnedFrames, 2);
  });

  it("pin_user_pages is all-or-nothing on ENOMEM", () => {
    const { as, physmem } = mk({ frames: 3 });
    const a = as.mmap(4 * PAGE_SIZE, RW);
    const out = new Float64Array(4);
    assert.equal(
      errno(() => as.pinUserPages(a, 4, true, out)),
      Errno.ENOMEM,
    );
    assert.equal(physmem.stats().pinnedFrames, 0);
    assert.equal(as.stats().residentPages, 3, "pages faulted before the failure stay mapped, as in Linux");
    as.munmap(a, 4 * PAGE_SIZE);
    assert.equal(physmem.stats().allocatedFrames, 0);
  });

  it("pins into a Float64Array or an array, and a pinned page outlives munmap and exit with its contents", () => {
    const { as, physmem } = mk();
    const a = as.mmap(2 * PAGE_SIZE, RW);
    as.write(at(a + PAGE_SIZE + 5), new Uint8Array([0xab]));
    const out = new Float64Array(2);
    assert.equal(as.pinUserPages(a, 2, true, out), 2);
    const list: Pfn[] = [];
    as.pinUserPages(at(a + PAGE_SIZE), 1, false, list);
    assert.equal(list[0], out[1]);
    assert.equal(physmem.pinCount(list[0]!), 2);
    as.munmap(a, 2 * PAGE_SIZE);
    as.exit();
    assert.equal(physmem.frameForRead(out[1] as Pfn)![5], 0xab);
    as.unpinUserPages(list);
    as.unpinUserPages(out, 1);
    assert.equal(physmem.isAllocated(out[0] as Pfn), false);
    assert.equal(physmem.isAllocated(out[1] as Pfn), true);
    as.unpinUserPages(out.subarray(1));
    assert.equal(physmem.stats().allocatedFrames, 0);
    assert.equal(as.stats().pinnedPages, 0);
  });

  it("maps external frames contiguously, keeps the run aligned across splits and never frees them", () => {
    const { as, physmem } = mk();
    const buf = new Uint8Array(8 * PAGE_SIZE);
    buf[5 * PAGE_SIZE] = 0x55;
    const base = physmem.registerExternal(buf, "guest-ram");
    const a = as.mmap(8 * PAGE_SIZE, RW, { backing: { kind: "external", basePfn: base, label: "guest-ram" } });
    as.munmap(a, 2 * PAGE_SIZE);
    assert.equal(as.vmaAt(at(a + 2 * PAGE_SIZE))?.basePfn, base + 2);
    assert.equal(as.fault(at(a + 5 * PAGE_SIZE), false), base + 5);
    const b = new Uint8Array(1);
    as.read(at(a + 5 * PAGE_SIZE), b);
    assert.equal(b[0], 0x55);
    as.write(at(a + 6 * PAGE_SIZE), new Uint8Array([0x66]));
    assert.equal(buf[6 * PAGE_SIZE], 0x66, "writes land in the shared buffer");
    const pinned = new Float64Array(1);
    as.pinUserPages(at(a + 6 * PAGE_SIZE), 1, true, pinned);
    assert.equal(physmem.refCount((base + 6) as Pfn), 3);
    as.munmap(a, 8 * PAGE_SIZE);
    assert.equal(physmem.refCount((base + 5) as Pfn), 1, "the registration keeps the frame");
    assert.equal(physmem.refCount((base + 6) as Pfn), 2);
    as.unpinUserPages(pinned);
    assert.equal(physmem.refCount((base + 6) as Pfn), 1);
  });

  it("EFAULTs on an external page whose buffer was released under the mapping", () => {
    const { as, physmem } = mk();
    const base = physmem.registerExternal(new Uint8Array(2 * PAGE_SIZE), "memfd");
    const a = as.mmap(2 * PAGE_SIZE, RW, { backing: { kind: "external", basePfn: base, label: "memfd" } });
    as.fault(a, true);
    physmem.releaseExternal(base);
    assert.equal(as.translate(a), base, "a present page keeps its frame");
    assert.equal(
      errno(() => as.fault(at(a + PAGE_SIZE), false)),
      Errno.EFAULT,
    );
    as.munmap(a, 2 * PAGE_SIZE);
    assert.equal(physmem.isAllocated(base), false);
  });
});

describe("AddressSpace locked_vm accounting", () => {
  it("charges up to RLIMIT_MEMLOCK (8 MiB by default) and fails beyond it with ENOMEM", () => {
    const { as } = mk();
    as.accountLockedVm(2048, true);
    assert.equal(as.lockedVm(), 2048);
    let e: KernelError | undefined;
    try {
      as.accountLockedVm(1, true);
    } catch (err) {
      e = err as KernelError;
    }
    assert.equal(e?.errno, Errno.ENOMEM);
    assert.match(e?.message ?? "", /RLIMIT_MEMLOCK exceeded/);
    assert.equal(as.lockedVm(), 2048, "a refused charge changes nothing");
  });

  it("CAP_IPC_LOCK bypasses the limit; setRlimitMemlock changes it; Infinity is unlimited", () => {
    const { as } = mk({ as: { rlimitMemlockBytes: 4 * PAGE_SIZE } });
    assert.equal(
      errno(() => as.accountLockedVm(5, true)),
      Errno.ENOMEM,
    );
    as.setCapIpcLock(true);
    as.accountLockedVm(5, true);
    as.setCapIpcLock(false);
    assert.equal(
      errno(() => as.accountLockedVm(1, true)),
      Errno.ENOMEM,
    );
    as.setRlimitMemlock(Number.POSITIVE_INFINITY);
    as.accountLockedVm(1e9, true);
    assert.equal(as.lockedVm(), 1e9 + 5);
    assert.equal(
      errno(() => as.setRlimitMemlock(-1)),
      Errno.EINVAL,
    );
    assert.equal(
      errno(() => as.accountLockedVm(-1, true)),
      Errno.EINVAL,
    );
  });

  it("never goes below 0 and keeps balancing after exit, while new charges fail with ESRCH", () => {
    const { as } = mk();
    as.accountLockedVm(10, true);
    as.accountLockedVm(15, false);
    assert.equal(as.lockedVm(), 0);
    as.accountLockedVm(3, true);
    as.exit();
    assert.equal(
      errno(() => as.accountLockedVm(1, true)),
      Errno.ESRCH,
    );
    as.accountLockedVm(3, false);
    assert.equal(as.lockedVm(), 0);
  });

  it("pinning does not touch locked_vm", () => {
    const { as } = mk();
    const a = as.mmap(PAGE_SIZE, RW);
    as.pinUserPages(a, 1, true);
    assert.equal(as.lockedVm(), 0);
  });
});

describe("AddressSpace exit and traces", () => {
  it("exit frees every unpinned page, refuses mmap with ESRCH and EFAULTs faults", () => {
    const { as, physmem } = mk();
    const a = as.mmap(4 * PAGE_SIZE, RW);
    for (let k = 0; k < 4; k++) as.fault(at(a + k * PAGE_SIZE), true);
    as.exit();
    as.exit();
    assert.equal(physmem.stats().allocatedFrames, 0);
    assert.deepEqual(as.stats(), { vmas: 0, mappedBytes: 0, residentPages: 0, lockedVm: 0, pinnedPages: 0 });
    assert.equal(as.exited, true);
    assert.equal(
      errno(() => as.mmap(PAGE_SIZE, RW)),
      Errno.ESRCH,
    );
    assert.equal(
      errno(() => as.mprotect(a, PAGE_SIZE, PROT_READ)),
      Errno.ESRCH,
    );
    assert.equal(
      errno(() => as.pinUserPages(a, 1, false)),
      Errno.EFAULT,
    );
    as.munmap(a, PAGE_SIZE);
  });

  it("emits a named event for every state change", () => {
    const { as, tracer } = mk();
    const rec = new TraceRecorder(tracer);
    const a = as.mmap(2 * PAGE_SIZE, RW, { name: "ram" });
    as.fault(a, true);
    const pf = new Float64Array(1);
    as.pinUserPages(a, 1, true, pf);
    as.accountLockedVm(1, true);
    as.unpinUserPages(pf);
    as.accountLockedVm(1, false);
    as.putPages(as.getUserPages(a, 1, false));
    as.mprotect(a, PAGE_SIZE, PROT_READ);
    as.munmap(a, PAGE_SIZE);
    as.exit();
    assert.deepEqual(
      rec.records.map((r) => r.name),
      [
        "mm.mmap",
        "mm.fault",
        "mm.pin",
        "mm.locked_vm",
        "mm.unpin",
        "mm.locked_vm",
        "mm.gup",
        "mm.put_pages",
        "mm.mprotect",
        "mm.munmap",
        "mm.exit",
      ],
    );
    assert.deepEqual(rec.named("mm.mmap")[0]?.fields, {
      pid: 42,
      addr: a,
      length: 2 * PAGE_SIZE,
      prot: "rw-",
      backing: "anonymous",
      name: "ram",
    });
    assert.deepEqual(rec.named("mm.locked_vm")[0]?.fields, {
      pid: 42,
      delta: 1,
      lockedVm: 1,
      limit: 2048,
      capIpcLock: false,
    });
    assert.equal(rec.named("mm.munmap")[0]?.fields.pages, 1);
  });
});

// ---- properties ------------------------------------------------------------------------------------------------------

/** All operations target a 64-page window: MAP_FIXED into it, and top-down mmaps land in its upper half. */
const WIN_PAGES = 32;
const WIN_LO = 0x10000000;
const EXT_PAGES = 16;
const HOST_FRAMES = 5;
const LIMIT_PAGES = 256;

type Op =
  | { op: "mmapFixed"; page: number; pages: number; prot: number; ext: boolean; extOff: number }
  | { op: "mmap"; pages: number; prot: number }
  | { op: "munmap"; page: number; pages: number }
  | { op: "mprotect"; page: number; pages: number; prot: number }
  | { op: "fault"; page: number; write: boolean }
  | { op: "pin"; page: number; pages: number; write: boolean }
  | { op: "unpin"; idx: number }
  | { op: "gup"; page: number; pages: number; write: boolean }
  | { op: "put"; idx: number }
  | { op: "account"; n: number; inc: boolean };

const page = fc.integer({ min: 0, max: WIN_PAGES - 1 });
/** Biased towards read-write so that accesses succeed often enough to matter. */
const prot = fc.constantFrom(PROT_NONE, PROT_READ, PROT_WRITE, RW, RW, RW);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant("mmapFixed" as const),
      page,
      pages: fc.integer({ min: 1, max: 8 }),
      prot,
      ext: fc.boolean(),
      extOff: fc.integer({ min: 0, max: EXT_PAGES - 1 }),
    }),
  },
  fc.record({ op: fc.constant("mmap" as const), pages: fc.integer({ min: 1, max: 4 }), prot }),
  fc.record({ op: fc.constant("munmap" as const), page, pages: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ op: fc.constant("mprotect" as const), page, pages: fc.integer({ min: 1, max: 4 }), prot }),
  { weight: 2, arbitrary: fc.record({ op: fc.constant("fault" as const), page, write: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("pin" as const),
      page,
      pages: fc.integer({ min: 1, max: 4 }),
      write: fc.boolean(),
    }),
  },
  fc.record({ op: fc.constant("unpin" as const), idx: fc.nat() }),
  fc.record({ op: fc.constant("gup" as const), page, pages: fc.integer({ min: 1, max: 3 }), write: fc.boolean() }),
  fc.record({ op: fc.constant("put" as const), idx: fc.nat() }),
  fc.record({ op: fc.constant("account" as const), n: fc.integer({ min: 0, max: 200 }), inc: fc.boolean() }),
);

interface ModelVma {
  prot: number;
  /** External frame of this page, or undefined for anonymous. */
  ext: number | undefined;
}

/** A reference model: which pages are mapped (with protection and backing) and which frame each present page holds. */
class Model {
  readonly mapped = new Map<number, ModelVma>();
  /** vpn -> frame; -1 while a frame the model cannot predict (a fresh anonymous one) awaits adoption. */
  readonly present = new Map<number, number>();
  locked = 0;

  unmap(vpn: number, pages: number): void {
    for (let v = vpn; v < vpn + pages; v++) {
      this.mapped.delete(v);
      this.present.delete(v);
    }
  }

  /** Predicts an access page by page: the errno of the first failure, or 0. Marks pages faulted on the way. */
  access(vpn: number, pages: number, write: boolean, freeFrames: () => number): number {
    let free = freeFrames();
    for (let v = vpn; v < vpn + pages; v++) {
      const m = this.mapped.get(v);
      if (m === undefined || (m.prot & (write ? PROT_WRITE : PROT_READ)) === 0) return Errno.EFAULT;
      if (this.present.has(v)) continue;
      if (m.ext !== undefined) {
        this.present.set(v, m.ext);
      } else {
        if (free === 0) return Errno.ENOMEM;
        free--;
        this.present.set(v, -1);
      }
    }
    return 0;
  }
}

function outcome(fn: () => void): number {
  try {
    fn();
    return 0;
  } catch (e) {
    if (e instanceof KernelError) return e.errno;
    throw e;
  }
}

const vpnOf = (p: number) => WIN_LO / PAGE_SIZE + p;
const addrOf = (p: number) => hva(WIN_LO + p * PAGE_SIZE);

describe("AddressSpace properties", () => {
  it("agrees with a Map model; pins, references and locked_vm balance; every frame comes back", () => {
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 5, maxLength: 60, size: "max" }), fc.boolean(), (ops, byExit) => {
        const tracer = new Tracer(new VirtualClock());
        const physmem = new PhysicalMemory({ sizeBytes: (RESERVED_FRAMES + HOST_FRAMES) * PAGE_SIZE, tracer });
        const ext = physmem.registerExternal(new Uint8Array(EXT_PAGES * PAGE_SIZE), "guest");
        const as = new AddressSpace({
          physmem,
          tracer,
          pid: 1,
          mmapBase: WIN_LO + WIN_PAGES * PAGE_SIZE,
          rlimitMemlockBytes: LIMIT_PAGES * PAGE_SIZE,
        });
        const startAllocated = physmem.stats().allocatedFrames;
        const m = new Model();
        const pins: Pfn[][] = [];
        const refs: Pfn[][] = [];
        const free = () => physmem.freeFrames();

        for (const o of ops) {
          switch (o.op) {
            case "mmapFixed": {
              const pages = Math.min(o.pages, WIN_PAGES - o.page, o.ext ? EXT_PAGES - o.extOff : WIN_PAGES);
              const backing = o.ext
                ? { kind: "external" as const, basePfn: (ext + o.extOff) as Pfn, label: "guest" }
                : undefined;
              as.mmap(pages * PAGE_SIZE, o.prot, { fixed: addrOf(o.page), backing });
              m.unmap(vpnOf(o.page), pages);
              for (let k = 0; k < pages; k++) {
                m.mapped.set(vpnOf(o.page + k), { prot: o.prot, ext: o.ext ? ext + o.extOff + k : undefined });
              }
              break;
            }
            case "mmap": {
              let a: number;
              try {
                a = as.mmap(o.pages * PAGE_SIZE, o.prot);
              } catch (e) {
                assert.ok(e instanceof KernelError && e.errno === Errno.ENOMEM);
                break;
              }
              const v0 = a / PAGE_SIZE;
              for (let v = v0; v < v0 + o.pages; v++) {
                assert.equal(m.mapped.has(v), false, "a top-down mmap never overlaps a mapping");
                m.mapped.set(v, { prot: o.prot, ext: undefined });
              }
              // The model only watches the window; a mapping outside it is removed again.
              if (v0 < vpnOf(0)) {
                as.munmap(hva(a), o.pages * PAGE_SIZE);
                m.unmap(v0, o.pages);
              }
              break;
            }
            case "munmap":
              as.munmap(addrOf(o.page), o.pages * PAGE_SIZE);
              m.unmap(vpnOf(o.page), o.pages);
              break;
            case "mprotect": {
              let hole = false;
              for (let k = 0; k < o.pages; k++) if (!m.mapped.has(vpnOf(o.page + k))) hole = true;
              const got = outcome(() => as.mprotect(addrOf(o.page), o.pages * PAGE_SIZE, o.prot));
              assert.equal(got, hole ? Errno.ENOMEM : 0);
              if (!hole) for (let k = 0; k < o.pages; k++) m.mapped.get(vpnOf(o.page + k))!.prot = o.prot;
              break;
            }
            case "fault": {
              const want = m.access(vpnOf(o.page), 1, o.write, free);
              let f = 0;
              const got = outcome(() => {
                f = as.fault(addrOf(o.page), o.write);
              });
              assert.equal(got, want);
              if (got === 0) {
                const known = m.present.get(vpnOf(o.page));
                if (known !== -1) assert.equal(f, known);
              }
              break;
            }
            case "pin":
            case "gup": {
              const pinnedBefore = physmem.stats().pinnedFrames;
              const want = m.access(vpnOf(o.page), o.pages, o.write, free);
              let pfns: Pfn[] = [];
              const got = outcome(() => {
                if (o.op === "pin") as.pinUserPages(addrOf(o.page), o.pages, o.write, pfns);
                else pfns = as.getUserPages(addrOf(o.page), o.pages, o.write);
              });
              assert.equal(got, want);
              if (got === 0) {
                (o.op === "pin" ? pins : refs).push(pfns);
                for (let k = 0; k < o.pages; k++) {
                  const known = m.present.get(vpnOf(o.page + k));
                  if (known !== -1) assert.equal(pfns[k], known);
                }
              } else {
                assert.equal(physmem.stats().pinnedFrames, pinnedBefore, "a failed pin pins nothing");
              }
              break;
            }
            case "unpin":
            case "put": {
              const list = o.op === "unpin" ? pins : refs;
              if (list.length === 0) break;
              const [batch] = list.splice(o.idx % list.length, 1);
              if (o.op === "unpin") as.unpinUserPages(batch!);
              else as.putPages(batch!);
              break;
            }
            case "account": {
              const want = o.inc && m.locked + o.n > LIMIT_PAGES ? Errno.ENOMEM : 0;
              assert.equal(
                outcome(() => as.accountLockedVm(o.n, o.inc)),
                want,
              );
              if (want === 0) m.locked = o.inc ? m.locked + o.n : Math.max(0, m.locked - o.n);
              break;
            }
          }
          // Adopt the frames the model could not predict, then (c): translate agrees with the model everywhere.
          for (const [v, f] of m.present) {
            if (f !== -1) continue;
            const real = as.translate(hva(v * PAGE_SIZE));
            assert.ok(real !== undefined && physmem.isAllocated(real) && !physmem.isExternal(real));
            m.present.set(v, real);
          }
          for (let p = 0; p < WIN_PAGES; p++) assert.equal(as.translate(addrOf(p)), m.present.get(vpnOf(p)));
          assert.equal(as.stats().residentPages, m.present.size);
          assert.equal(as.lockedVm(), m.locked);
          const distinctPinned = new Set(pins.flat());
          assert.equal(physmem.stats().pinnedFrames, distinctPinned.size);
        }

        // (a) everything unpinned and un-accounted: pins and locked_vm are back to zero.
        for (const b of pins) as.unpinUserPages(b);
        for (const b of refs) as.putPages(b);
        as.accountLockedVm(m.locked, false);
        assert.equal(as.lockedVm(), 0);
        assert.equal(as.stats().pinnedPages, 0);
        assert.equal(physmem.stats().pinnedFrames, 0);
        // (b) after munmap (or exit) every frame is back; external frames hold only their registration.
        if (byExit) as.exit();
        else as.munmap(hva(WIN_LO), WIN_PAGES * PAGE_SIZE);
        assert.equal(as.stats().residentPages, 0);
        assert.equal(physmem.stats().allocatedFrames, startAllocated);
        for (let k = 0; k < EXT_PAGES; k++) assert.equal(physmem.refCount((ext + k) as Pfn), 1);
      }),
      { numRuns: 300 },
    );
  });

  it("(d) a pinned page keeps its contents after munmap or exit and is freed by its last unpin", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }).chain((n) =>
          fc.record({
            bytes: fc.uint8Array({ minLength: n, maxLength: n }),
            pinFrom: fc.integer({ min: 0, max: n - 1 }),
            pinCount: fc.integer({ min: 1, max: n }),
            teardown: fc.constantFrom("munmap", "exit", "fixed-remap"),
          }),
        ),
        ({ bytes, pinFrom, pinCount, teardown }) => {
          const { as, physmem } = mk({ frames: 64 });
          const n = bytes.length;
          const count = Math.min(pinCount, n - pinFrom);
          const a = as.mmap(n * PAGE_SIZE, RW);
          for (let k = 0; k < n; k++) as.write(hva(a + k * PAGE_SIZE + k), bytes.subarray(k, k + 1));
          const pinned = new Float64Array(count);
          as.pinUserPages(hva(a + pinFrom * PAGE_SIZE), count, true, pinned);
          if (teardown === "munmap") as.munmap(a, n * PAGE_SIZE);
          else if (teardown === "exit") as.exit();
          else as.mmap(n * PAGE_SIZE, RW, { fixed: a });
          assert.equal(as.stats().residentPages, 0);
          assert.equal(physmem.stats().allocatedFrames, count, "only the pinned frames survive");
          for (let k = 0; k < count; k++) {
            const f = pinned[k] as Pfn;
            assert.equal(physmem.frameForRead(f)![pinFrom + k], bytes[pinFrom + k]);
          }
          as.unpinUserPages(pinned);
          for (let k = 0; k < count; k++) assert.equal(physmem.isAllocated(pinned[k] as Pfn), false);
          assert.equal(physmem.stats().allocatedFrames, 0);
        },
      ),
      { numRuns: 200 },
    );
  });
});
