/**
 * Guest contexts of two VMs on one GPU through execlists, watched by the scenario's isolation checker: every DMA of
 * their workloads (context restore and save, the shadow rings, PPGTT walks of the shadow tables, PPGTT stores into
 * guest pages, GGTT breadcrumbs, batch fetches) is attributed to its vGPU and stays in its VM's memory, its scratch
 * page and its shadow buffers: 0 violations. A planted bug (the test-only switch that puts guest PTEs into the shadow
 * unchecked) lets one VM's PPGTT store reach the other's page, and the checker reports it. A PTE the guest rewrites
 * between its ELSP write and the execution is not followed: the workload runs on the validated shadow.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { PAGE_SIZE } from "../src/core/index.ts";
import {
  arbOnOff,
  batchBufferStart,
  colorBlt,
  flushDw,
  GT_ENGINES,
  type GtEngineId,
  MI_BATCH_BUFFER_END,
  MI_USER_INTERRUPT,
  PIPE_CONTROL_CS_STALL,
  PIPE_CONTROL_QW_WRITE,
  PIPE_CONTROL_STORE_DATA_INDEX,
  pipeControl,
  storeDataImm,
} from "../src/gpu/index.ts";
import { type GpuInstance, IsolationChecker } from "../src/scenario/index.ts";
import { vengine } from "../src/vgpu/index.ts";
import { GuestContext, GuestPpgtt, type GuestSession, MiB, VgpuWorld } from "../src/vgpu/testing.ts";

const VA = 0x1_0000_0000;

interface Vm {
  readonly g: GuestSession;
  readonly uuid: string;
  readonly id: number;
}

function world(opts: { unsafeTrustGuestPtes?: boolean } = {}) {
  const w = new VgpuWorld({
    submission: "execlists",
    ...(opts.unsafeTrustGuestPtes ? { unsafeTrustGuestPtes: true } : {}),
  });
  const inst: GpuInstance = {
    name: "gpu0",
    bdf: w.driver.bdf,
    driver: "i915",
    gpu: w.gpu.gpu,
    group: w.gpu.group,
    hostDriver: w.driver,
    parent: w.parent,
  };
  const checker = new IsolationChecker({ host: w.host });
  checker.watch(inst);
  const vm = (name: string, type: string): Vm => {
    const uuid = w.create(type);
    const g = w.attach(uuid, { ramBytes: 16 * MiB });
    const v = w.vgpu(uuid);
    checker.bindVgpu("gpu0", v.id, name, g.qemu.pid, v.scratch.pfn);
    g.enableInterrupts();
    return { g, uuid, id: v.id };
  };
  return { w, checker, vm };
}

function request(engine: GtEngineId, va: number, value: number, breadcrumb: number): number[] {
  const start =
    engine === "rcs"
      ? pipeControl(PIPE_CONTROL_CS_STALL | PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_STORE_DATA_INDEX, 0xd0)
      : flushDw({ post: "store", target: { kind: "index", offset: 0xd0 }, invalidateTlb: true });
  return [
    ...arbOnOff(false),
    ...start,
    ...storeDataImm(va, value, "ppgtt"),
    ...storeDataImm(breadcrumb, value),
    MI_USER_INTERRUPT,
    ...arbOnOff(true),
  ];
}

function readU32(g: GuestSession, gpa: number): number {
  return new DataView(g.readGpa(gpa, 4).buffer).getUint32(0, true);
}

function u32s(dwords: readonly number[]): Uint8Array {
  const b = new Uint8Array(dwords.length * 4);
  const dv = new DataView(b.buffer);
  for (const [i, d] of dwords.entries()) dv.setUint32(4 * i, d >>> 0, true);
  return b;
}

describe("isolation of guest contexts (execlists, shadow PPGTT)", () => {
  it("two VMs' contexts on every engine: stores, batches and blits through their PPGTTs, 0 violations", () => {
    const { w, checker, vm } = world();
    const vms = [vm("a", "GVTg_V5_4"), vm("b", "GVTg_V5_8")];
    for (const [k, m] of vms.entries()) {
      for (const engine of GT_ENGINES) {
        const hws = m.g.allocGm(1);
        m.g.enableExeclists(vengine(engine).base, hws.gma);
        const ppgtt = new GuestPpgtt(m.g, { scratch: true });
        const data = [m.g.allocPage(), m.g.allocPage()];
        const batch = m.g.allocPage();
        ppgtt.map(VA, data[0]!);
        ppgtt.map(VA + PAGE_SIZE, data[1]!);
        ppgtt.map(VA + 2 * PAGE_SIZE, batch);
        m.g.writeGpa(batch, u32s([...storeDataImm(VA + PAGE_SIZE, 0xb0 + k, "ppgtt"), MI_BATCH_BUFFER_END]));
        const ctx = new GuestContext(m.g, engine, ppgtt);
        const blit = engine === "bcs" ? colorBlt(VA, 256, 0, 0, 16, 4, 0xff00ff00) : [];
        ctx.emit([
          ...request(engine, VA + 0x800, 0xa0 + k, hws.gma + 0x100),
          ...batchBufferStart(VA + 2 * PAGE_SIZE, "ppgtt"),
          ...blit,
        ]);
        m.g.elsp(vengine(engine).base, ctx.descriptor(0x20));
        w.run(2_000_000);
        assert.equal(readU32(m.g, data[0]! + 0x800), 0xa0 + k, `${engine}: PPGTT store`);
        assert.equal(readU32(m.g, data[1]!), 0xb0 + k, `${engine}: PPGTT batch`);
        if (engine === "bcs") assert.equal(readU32(m.g, data[0]!), 0xff00ff00, "PPGTT blit");
      }
    }
    for (const m of vms) {
      const c = checker.stats("gpu0", m.id);
      assert.ok(c.pieces > 100, `vgpu${m.id}: its DMA was seen (${c.pieces} pieces)`);
      assert.equal(c.violations, 0);
      assert.equal(w.vgpu(m.uuid).stats().contexts!.completed, 4);
    }
    assert.equal(
      checker.violationCount,
      0,
      checker
        .violations()
        .map((v) => JSON.stringify(v))
        .join("\n"),
    );
    assert.equal(checker.gpuStats("gpu0").violations, 0);
    w.checkInvariants();
  });

  it("a planted bug (guest PTEs trusted): one VM's PPGTT store reaches the other's page, and the checker says so", () => {
    for (const bug of [true, false]) {
      const { w, checker, vm } = world({ unsafeTrustGuestPtes: bug });
      const victim = vm("victim", "GVTg_V5_4");
      const attacker = vm("attacker", "GVTg_V5_8");
      // The victim's page, mapped for the GPU through its GGTT: its IOVA is what the attacker aims at.
      const secret = victim.g.allocGm(1);
      const v = w.vgpu(victim.uuid);
      const iova = v.gtt.cache.iova(v.gtt.cache.slot(secret.gpas[0]! / PAGE_SIZE));
      const hws = attacker.g.allocGm(1);
      attacker.g.enableExeclists(vengine("rcs").base, hws.gma);
      const ppgtt = new GuestPpgtt(attacker.g, { scratch: true });
      ppgtt.map(VA, iova); // a "GPA" that is the victim's IOVA
      const ctx = new GuestContext(attacker.g, "rcs", ppgtt);
      ctx.emit(request("rcs", VA, 0x0bad, hws.gma + 0x100));
      attacker.g.elsp(vengine("rcs").base, ctx.descriptor(0x20));
      w.run(2_000_000);
      const a = checker.stats("gpu0", attacker.id);
      if (bug) {
        assert.equal(victim.g.readGmU32(secret, 0), 0x0bad, "the planted bug lets the write through");
        assert.ok(a.violations > 0, "and the checker catches it");
        const s = checker.violations()[0]!;
        assert.equal(s.vm, "attacker");
        assert.equal(s.write, true);
        assert.match(s.frameOwnerName, /^VM victim \(pid \d+\)$/);
      } else {
        assert.equal(victim.g.readGmU32(secret, 0), 0);
        assert.equal(a.violations, 0);
        assert.equal(w.vgpu(attacker.uuid).stats().contexts!.rejected.ppgtt, 1, "the sound mediator rejects it");
      }
    }
  });

  it("a PTE changed between the ELSP write and the execution is not followed: the validated shadow runs", () => {
    const { w, checker, vm } = world();
    const a = vm("a", "GVTg_V5_4");
    const b = vm("b", "GVTg_V5_8");
    // b keeps rcs busy: a's workload waits in the scheduler after its ELSP write.
    const bh = b.g.allocGm(1);
    b.g.enableExeclists(vengine("rcs").base, bh.gma);
    const bp = new GuestPpgtt(b.g, { scratch: true });
    bp.map(VA, b.g.allocPage());
    const bc = new GuestContext(b.g, "rcs", bp, { ringPages: 4 });
    const busy: number[] = [];
    for (let i = 0; i < 600; i++) busy.push(...storeDataImm(VA + 4 * (i % 1024), i, "ppgtt"));
    bc.emit(busy);
    b.g.elsp(vengine("rcs").base, bc.descriptor(0x20));

    const ah = a.g.allocGm(1);
    a.g.enableExeclists(vengine("rcs").base, ah.gma);
    const ap = new GuestPpgtt(a.g, { scratch: true });
    const page = a.g.allocPage();
    ap.map(VA, page);
    const ac = new GuestContext(a.g, "rcs", ap);
    ac.emit(request("rcs", VA, 0x600d, ah.gma + 0x100));
    a.g.elsp(vengine("rcs").base, ac.descriptor(0x40));
    assert.equal(a.g.readGmU32(ah, 0x100), 0, "not run yet: b owns the GPU");
    ap.map(VA, 15 * MiB); // after the submission: another page of a's
    w.run(5_000_000);
    assert.equal(a.g.readGmU32(ah, 0x100), 0x600d, "it ran");
    assert.equal(readU32(a.g, page), 0x600d, "through the shadow validated at submission");
    assert.equal(readU32(a.g, 15 * MiB), 0, "not through the PTE written afterwards");
    // The next submission sees the change (validated, and here legitimate).
    ac.emit(request("rcs", VA, 0x2, ah.gma + 0x104));
    a.g.elsp(vengine("rcs").base, ac.descriptor(0x40));
    w.run(5_000_000);
    assert.equal(readU32(a.g, 15 * MiB), 2);
    assert.equal(checker.violationCount, 0);
    w.checkInvariants();
  });
});
