/**
 * The hostile guest: the attacks a malicious VM aims at a mediated GPU, each a named function that tries one thing
 * through the ordinary driver and reports what the guest could observe. What the host actually did (whether another
 * VM's memory changed, whether host memory was read) is for the test harness to check from outside; this module
 * only sees what a guest sees.
 *
 * Outcomes, from the guest's side:
 * - "rejected": the device refused: the submission ended in GT_CS_MASTER_ERROR_INTERRUPT (the command scanner, or the
 *   hardware's own error);
 * - "ignored": the device accepted the request but it had no effect the guest can see: a GTT write that does not read
 *   back, a batch rewritten after submission whose new contents did not run, accesses that landed in a scratch page,
 *   or a submission that was dropped without completing;
 * - "executed": the request took effect as asked, as far as the guest can tell.
 * On a vGPU every attack must be rejected or ignored. On a whole physical GPU (no mediation) several are executed:
 * the guest owns the hardware, and only the system IOMMU stands between it and host memory.
 *
 * The attacks (the vGPU issue's list): blits aimed at another vGPU's graphics memory, at the host's, and past the end
 * of graphics memory; an operation larger than 36 MiB inside the guest's own range; MI_LOAD_REGISTER_IMM to a
 * register outside the allowed set; an unknown opcode; a GTT write outside the guest's partition; rewriting a batch
 * buffer after submission (time of check to time of use); GTT entries naming guest-physical addresses outside the
 * guest's RAM.
 *
 * With execlists (the driver's contexts and PPGTT) six more, each aimed at what the vendor driver shadows: a PPGTT
 * entry naming memory the VM does not own; a context descriptor whose LRCA lies outside the vGPU's graphics memory;
 * a context image whose register state loads a register a guest must not write (RING_START); a PPGTT batch that
 * stores into graphics memory outside the partition through the GGTT; an ELSP write with a malformed descriptor
 * (advanced addressing mode, no PRIVILEGE); a PPGTT entry rewritten between the ELSP write and the execution (the
 * time-of-check-to-time-of-use of the shadow PPGTT). The same nine run too: in a context a blit names a PPGTT address,
 * so the GMAs the nine aim at are addresses the guest's PPGTT does not map, and the GPU faults.
 * On a vGPU a refused context is a hang for the guest (no context status event): the driver resets the engine and
 * the attack's submission ends "rejected". A command the scanner refuses in a context also sends the vGPU to failsafe
 * (as GVT-g: its GPU does nothing until a device reset), so `runAttacks` runs those attacks last on an execlists
 * driver (`ENDS_MEDIATION`), and the ones after the first find a GPU that does nothing (still "rejected").
 *
 * Every attack cleans up what it allocated; the driver stays usable afterwards (an engine error is recovered by the
 * driver before its next submission, a hang by an engine reset), failsafe apart.
 */
import { type Gma, gma, gpa, hex, PAGE_SIZE } from "../core/index.ts";
import {
  ENGINE_BASE,
  type EngineId,
  FENCE_REG_GEN6_LO,
  GEN8_CTX_ADDRESSING_MODE_SHIFT,
  GEN8_CTX_PRIVILEGE,
  GEN8_PAGE_PRESENT,
  GEN8_PAGE_RW,
  GM_SIZE,
  gen8PteEncode,
  I915_HWS_CSB_WRITE_INDEX,
  LRC_STATE_OFFSET,
  lrcDescriptor,
  MI_BATCH_BUFFER_END,
  miInstr,
  miLoadRegisterImm,
  RING_START,
} from "../gpu/index.ts";
import { CommandBuffer } from "./commands.ts";
import type { FenceStatus, GpuBuffer, GuestGpuDriver } from "./driver.ts";
import type { GmExtent } from "./gm.ts";

export type AttackOutcome = "rejected" | "ignored" | "executed";

export const ATTACK_NAMES = [
  "gm-other-vgpu",
  "gm-host",
  "gm-past-end",
  "oversize",
  "lri-forbidden",
  "unknown-opcode",
  "gtt-outside-partition",
  "batch-toctou",
  "gtt-foreign-gpa",
  "ppgtt-foreign-gpa",
  "lrca-outside-partition",
  "context-forbidden-register",
  "ppgtt-batch-ggtt",
  "elsp-malformed",
  "ppgtt-toctou",
] as const;
export type AttackName = (typeof ATTACK_NAMES)[number];

/** The nine attacks of the legacy ring path (a driver without execlists runs only these). */
export const RING_ATTACK_NAMES: readonly AttackName[] = ATTACK_NAMES.slice(0, 9);
/** Attacks that need the driver's contexts and PPGTT. */
export const EXECLIST_ATTACK_NAMES: readonly AttackName[] = ATTACK_NAMES.slice(9);
/**
 * On an execlists driver, attacks whose refusal by a vGPU's command scanner sends the vGPU to failsafe (GVT-g's
 * guest-error): `runAttacks` runs them last.
 */
export const ENDS_MEDIATION: ReadonlySet<AttackName> = new Set<AttackName>([
  "lri-forbidden",
  "unknown-opcode",
  "ppgtt-batch-ggtt",
]);

export interface AttackReport {
  readonly name: AttackName;
  readonly outcome: AttackOutcome;
  /** What the guest saw, in a sentence. */
  readonly detail: string;
}

export interface HostileOptions {
  /** Engine the command attacks use; default "bcs". */
  readonly engine?: EngineId;
  /** A GMA in another vGPU's range; default the first page past this guest's mappable range. */
  readonly victimGma?: number;
  /** A GMA in the host's range; default 0 (the host driver's reservation starts the aperture). */
  readonly hostGma?: number;
  /** A guest-physical address outside the guest's RAM; default 2^46. */
  readonly foreignGpa?: number;
  /** Register for the LRI attack; default fence register 0 (a register the guest may write by MMIO, not by LRI). */
  readonly lriRegister?: number;
  readonly timeoutNs?: number;
}

/** The colour hostile blits write: easy to spot in a victim's memory. */
export const HOSTILE_COLOR = 0xdeadbeef;
const SMALL_W = 16;
const SMALL_H = 16;
const SMALL_PITCH = SMALL_W * 4;
/** An MI opcode the GPU does not implement (0x3f). */
export const UNKNOWN_MI_COMMAND = miInstr(0x3f, 0);
/** Above the 36 MiB limit: 8000 px x 4 B = 32000 B pitch, 1200 rows = 38.4 MB. */
const OVERSIZE_PITCH = 32000;
const OVERSIZE_ROWS = 1200;

function engineOf(o: HostileOptions): EngineId {
  return o.engine ?? "bcs";
}

function fenceOutcome(status: FenceStatus): AttackOutcome {
  return status === "rejected" ? "rejected" : status === "completed" ? "executed" : "ignored";
}

function fenceDetail(status: FenceStatus, driver?: GuestGpuDriver): string {
  return status === "rejected"
    ? driver?.submission === "execlists"
      ? "the context never completed (an engine error or a hang): the driver reset the engine"
      : "the submission ended in a command-streamer error interrupt"
    : status === "completed"
      ? "the submission completed without error"
      : "the submission never completed (dropped)";
}

/** The default victim: the first page after this guest's mappable range (another partition, or nothing). */
export function defaultVictimGma(driver: GuestGpuDriver): number {
  const r: GmExtent | undefined = driver.gm.ranges("mappable")[0];
  return r ? r.base + r.size : 0;
}

function blitAt(driver: GuestGpuDriver, name: AttackName, target: number, o: HostileOptions): AttackReport {
  const cmds = new CommandBuffer().colorBlt(target, SMALL_PITCH, 0, 0, SMALL_W, SMALL_H, HOSTILE_COLOR);
  const status = driver.run(engineOf(o), cmds.words, o.timeoutNs);
  return {
    name,
    outcome: fenceOutcome(status),
    detail: `XY_COLOR_BLT of ${SMALL_W}x${SMALL_H} px at GMA ${hex(target)}: ${fenceDetail(status, driver)}`,
  };
}

/** A fill aimed at another vGPU's graphics memory. */
export function attackOtherVgpuGm(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  return blitAt(driver, "gm-other-vgpu", o.victimGma ?? defaultVictimGma(driver), o);
}

/** A fill aimed at the host driver's graphics memory. */
export function attackHostGm(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  return blitAt(driver, "gm-host", o.hostGma ?? 0, o);
}

/** A fill at 4 GiB and beyond: past the end of graphics memory (the GMA's high dword is set). */
export function attackPastEnd(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  return blitAt(driver, "gm-past-end", GM_SIZE + PAGE_SIZE, o);
}

/** A 38.4 MB fill starting inside the guest's own largest range: above the 36 MiB operation limit. */
export function attackOversize(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const ranges = [...driver.gm.ranges("nonmappable"), ...driver.gm.ranges("mappable")];
  const largest = ranges.reduce((a, b) => (b.size > a.size ? b : a), ranges[0]!);
  const cmds = new CommandBuffer().colorBlt(
    largest.base,
    OVERSIZE_PITCH,
    0,
    0,
    OVERSIZE_PITCH / 4,
    OVERSIZE_ROWS,
    HOSTILE_COLOR,
  );
  const status = driver.run(engineOf(o), cmds.words, o.timeoutNs);
  const bytes = OVERSIZE_PITCH * OVERSIZE_ROWS;
  return {
    name: "oversize",
    outcome: fenceOutcome(status),
    detail:
      `XY_COLOR_BLT of ${bytes} bytes at GMA ${hex(largest.base)} (own range of ${largest.size} bytes): ` +
      fenceDetail(status, driver),
  };
}

/** MI_LOAD_REGISTER_IMM to a register outside the allowed set; "executed" if the register then reads the value. */
export function attackLri(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const reg = o.lriRegister ?? FENCE_REG_GEN6_LO;
  const value = 0xbad0_0001;
  const before = driver.mmioRead32(reg);
  const status = driver.run(engineOf(o), new CommandBuffer().loadRegisterImm(reg, value).words, o.timeoutNs);
  const after = driver.mmioRead32(reg);
  // Put the register back if the write went through (the guest's own fence, on a vGPU).
  if (after !== before) driver.mmioWrite32(reg, before);
  const outcome: AttackOutcome = status === "rejected" ? "rejected" : after === value ? "executed" : "ignored";
  return {
    name: "lri-forbidden",
    outcome,
    detail: `MI_LOAD_REGISTER_IMM ${hex(reg)} = ${hex(value)}: ${fenceDetail(status, driver)}; the register reads ${hex(after)}`,
  };
}

/** An unknown command in the ring. */
export function attackUnknownOpcode(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const cmds = new CommandBuffer().dword(UNKNOWN_MI_COMMAND).noop();
  const status = driver.run(engineOf(o), cmds.words, o.timeoutNs);
  return {
    name: "unknown-opcode",
    outcome: fenceOutcome(status),
    detail: `command ${hex(UNKNOWN_MI_COMMAND)}: ${fenceDetail(status, driver)}`,
  };
}

/**
 * A GTT write outside the guest's partition (at the victim's GMA), pointing at one of the guest's own pages: the
 * entry reads back as written only if the device accepted it.
 */
export function attackGttOutsidePartition(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const target = o.victimGma ?? defaultVictimGma(driver);
  const index = Math.floor(target / PAGE_SIZE);
  const page = driver.platform.pages.allocPages(1);
  try {
    const before = driver.readPte(index);
    const pte = gen8PteEncode(page);
    driver.writePte(index, pte);
    const after = driver.readPte(index);
    const executed = after === pte;
    if (executed) driver.writePte(index, before);
    return {
      name: "gtt-outside-partition",
      outcome: executed ? "executed" : "ignored",
      detail: `GTT[${index}] (GMA ${hex(target)}) written with ${hex(pte)}: reads back ${hex(after)} (was ${hex(before)})`,
    };
  } finally {
    driver.platform.pages.freePages(page, 1);
  }
}

/**
 * Time of check to time of use: submit a harmless batch (fill our own surface with colour A), then rewrite it at once,
 * before waiting, into one that fills our surface with colour B and the victim's memory. If our surface ends up B,
 * the rewritten (never audited) batch ran.
 */
export function attackBatchToctou(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const engine = engineOf(o);
  const victim = o.victimGma ?? defaultVictimGma(driver);
  const colorA = 0x11111111;
  const colorB = 0x22222222;
  const owned: GpuBuffer[] = [];
  try {
    // Nothing in flight: the submission goes to the device at once, so the rewrite comes after it.
    driver.idle(o.timeoutNs);
    const surface = driver.allocBuffer(SMALL_PITCH * SMALL_H);
    owned.push(surface);
    driver.writeBuffer(surface, 0, new Uint8Array(surface.size));
    const batch = driver.allocBuffer(PAGE_SIZE);
    owned.push(batch);
    const at = driver.gpuAddress(surface);
    const benign = new CommandBuffer().colorBlt(at, SMALL_PITCH, 0, 0, SMALL_W, SMALL_H, colorA);
    driver.writeBatch(batch, benign.words);
    const seqno = driver.submitBatchBuffer(engine, batch);
    const evil = new CommandBuffer()
      .colorBlt(at, SMALL_PITCH, 0, 0, SMALL_W, SMALL_H, colorB)
      .colorBlt(victim, SMALL_PITCH, 0, 0, SMALL_W, SMALL_H, HOSTILE_COLOR);
    driver.writeBatch(batch, evil.words);
    const status = driver.wait(engine, seqno, o.timeoutNs);
    const px = new Uint8Array(4);
    driver.readBuffer(surface, 0, px);
    const seen = (px[0]! | (px[1]! << 8) | (px[2]! << 16) | (px[3]! << 24)) >>> 0;
    // Colour B anywhere means rewritten (unaudited) commands ran, even if a later one was then refused.
    const outcome: AttackOutcome = seen === colorB ? "executed" : status === "rejected" ? "rejected" : "ignored";
    return {
      name: "batch-toctou",
      outcome,
      detail:
        `batch at GMA ${hex(batch.gma)} rewritten after submission to also fill GMA ${hex(victim)}: ` +
        `${fenceDetail(status, driver)}; our surface holds ${hex(seen)} (submitted ${hex(colorA)}, rewritten ${hex(colorB)})`,
    };
  } finally {
    for (const b of owned) driver.freeBuffer(b);
  }
}

/**
 * GTT entries naming guest-physical addresses outside the guest's RAM: two of our own GMA pages are pointed at two
 * different foreign addresses; we fill the first with colour 1, the second with colour 2, then copy the first into a
 * surface of ours. Colour 1 means the two entries reached two distinct real pages ("executed"); colour 2 means both
 * landed in one scratch page, and zeros mean the accesses were dropped ("ignored").
 */
export function attackGttForeignGpa(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const engine = engineOf(o);
  const foreign = o.foreignGpa ?? 2 ** 46;
  const color1 = 0x5a5a0001;
  const color2 = 0xa5a50002;
  const owned: GpuBuffer[] = [];
  let window: Gma | undefined;
  try {
    const range = driver.gm.alloc(2 * PAGE_SIZE);
    window = range.base;
    const first = window / PAGE_SIZE;
    driver.writePte(first, gen8PteEncode(foreign));
    driver.writePte(first + 1, gen8PteEncode(foreign + 16 * PAGE_SIZE));
    const surface = driver.allocBuffer(PAGE_SIZE);
    owned.push(surface);
    driver.writeBuffer(surface, 0, new Uint8Array(PAGE_SIZE).fill(0x77));
    // One page = 32 x 32 px at a 128-byte pitch.
    const cmds = new CommandBuffer()
      .colorBlt(window, 128, 0, 0, 32, 32, color1)
      .colorBlt(window + PAGE_SIZE, 128, 0, 0, 32, 32, color2)
      .srcCopyBlt(driver.gpuAddress(surface), 128, 0, 0, 32, 32, window, 128, 0, 0);
    const status = driver.run(engine, cmds.words, o.timeoutNs);
    const px = new Uint8Array(4);
    driver.readBuffer(surface, 0, px);
    const seen = (px[0]! | (px[1]! << 8) | (px[2]! << 16) | (px[3]! << 24)) >>> 0;
    const outcome: AttackOutcome =
      status === "rejected" ? "rejected" : status === "completed" && seen === color1 ? "executed" : "ignored";
    return {
      name: "gtt-foreign-gpa",
      outcome,
      detail:
        `GTT entries for GMA ${hex(window)} and +0x1000 point at GPAs ${hex(foreign)} and ${hex(foreign + 16 * PAGE_SIZE)}` +
        ` (outside RAM): ${fenceDetail(status, driver)}; reading back the first gave ${hex(seen)}` +
        ` (${seen === color1 ? "its own page" : seen === color2 ? "an aliased scratch page" : "no data"})`,
    };
  } finally {
    if (window !== undefined) {
      driver.unmapGm(gma(window), 2);
      driver.gm.release(window);
    }
    for (const b of owned) driver.freeBuffer(b);
  }
}

// ---- execlists: contexts and the PPGTT ------------------------------------------------------------------------------

/** A GPA far outside any guest's RAM (2^46). */
const FOREIGN_GPA = 2 ** 46;
/** The context id hostile descriptors carry (not one of the driver's). */
const HOSTILE_CCID = 0x7e0;

function needsExeclists(driver: GuestGpuDriver, name: AttackName): AttackReport | undefined {
  if (driver.submission === "execlists" && driver.ppgtt !== undefined) return undefined;
  return { name, outcome: "ignored", detail: "not attempted: the driver submits through legacy rings (no contexts)" };
}

function readU32(driver: GuestGpuDriver, buf: GpuBuffer, offset: number): number {
  const px = new Uint8Array(4);
  driver.readBuffer(buf, offset, px);
  return (px[0]! | (px[1]! << 8) | (px[2]! << 16) | (px[3]! << 24)) >>> 0;
}

/**
 * A PPGTT entry naming a guest-physical address outside the VM's RAM, then a fill through it: "executed" if the fill
 * completed (the page would be someone else's), "rejected" if the context never ran.
 */
export function attackPpgttForeignGpa(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const skip = needsExeclists(driver, "ppgtt-foreign-gpa");
  if (skip) return skip;
  const vm = driver.ppgtt!;
  const foreign = o.foreignGpa ?? FOREIGN_GPA;
  const at = vm.allocVa(PAGE_SIZE);
  vm.setPte(at, foreign + GEN8_PAGE_PRESENT + GEN8_PAGE_RW);
  try {
    const cmds = new CommandBuffer().colorBlt(at, SMALL_PITCH, 0, 0, SMALL_W, SMALL_H, HOSTILE_COLOR);
    const status = driver.run(engineOf(o), cmds.words, o.timeoutNs);
    return {
      name: "ppgtt-foreign-gpa",
      outcome: fenceOutcome(status),
      detail: `PPGTT entry of ${hex(at)} -> GPA ${hex(foreign)} (outside RAM), then a fill there: ${fenceDetail(status, driver)}`,
    };
  } finally {
    // The vendor driver re-validates the whole PPGTT at each submission: leave no bad entry behind.
    vm.setPte(at, 0);
  }
}

/**
 * Writes a raw descriptor to ELSP and lets time pass: "executed" if the engine reported a context status event for
 * it, else "rejected" (then the engine is reset, as after any hang).
 */
function rawElsp(driver: GuestGpuDriver, name: AttackName, lo: number, what: string, o: HostileOptions): AttackReport {
  const engine = engineOf(o);
  driver.idle(o.timeoutNs);
  const hws = driver.context(engine)!.port.hws;
  const wpAt = gpa(hws.gpa + 4 * I915_HWS_CSB_WRITE_INDEX);
  const before = driver.platform.memory.readU32(wpAt);
  driver.writeElsp(engine, lo, HOSTILE_CCID);
  const seen = driver.platform.time.waitUntil(
    () => driver.platform.memory.readU32(wpAt) !== before,
    o.timeoutNs ?? driver.timeoutNs,
  );
  driver.resetEngine(engine, `after a hostile ELSP write (${what})`);
  return {
    name,
    outcome: seen ? "executed" : "rejected",
    detail: `ELSP of ${what} (descriptor ${hex(lo)}): ${
      seen ? "the engine reported a context status event" : "no context status event: the device refused it"
    }; the driver reset the engine`,
  };
}

/** A context descriptor whose LRCA is the victim's graphics memory (outside the vGPU's partition). */
export function attackLrcaOutsidePartition(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const skip = needsExeclists(driver, "lrca-outside-partition");
  if (skip) return skip;
  const lrca = Math.floor((o.victimGma ?? defaultVictimGma(driver)) / PAGE_SIZE) * PAGE_SIZE;
  return rawElsp(
    driver,
    "lrca-outside-partition",
    lrcDescriptor(lrca, HOSTILE_CCID).lo,
    `a context at LRCA ${hex(lrca)}`,
    o,
  );
}

/** A descriptor with the advanced addressing mode (2) and without PRIVILEGE: malformed for a vGPU. */
export function attackElspMalformed(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const skip = needsExeclists(driver, "elsp-malformed");
  if (skip) return skip;
  const own = driver.context(engineOf(o))!.image.gma;
  const good = lrcDescriptor(own, HOSTILE_CCID).lo;
  const lo =
    ((good & ~(3 << GEN8_CTX_ADDRESSING_MODE_SHIFT) & ~GEN8_CTX_PRIVILEGE) | (2 << GEN8_CTX_ADDRESSING_MODE_SHIFT)) >>>
    0;
  return rawElsp(driver, "elsp-malformed", lo, "a descriptor with addressing mode 2 and no PRIVILEGE", o);
}

/**
 * The driver's own context image, its register state extended (beyond the ring context, as i915's images are) by an
 * MI_LOAD_REGISTER_IMM of the engine's RING_START: a register that would point the engine at memory the guest chose.
 */
export function attackContextForbiddenRegister(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const skip = needsExeclists(driver, "context-forbidden-register");
  if (skip) return skip;
  const engine = engineOf(o);
  const ctx = driver.context(engine)!;
  const reg = ENGINE_BASE[engine] + RING_START;
  const target = o.victimGma ?? defaultVictimGma(driver);
  // The driver's image ends its LRI stream with MI_BATCH_BUFFER_END at dword 0x44; the attack turns that into an
  // MI_NOOP so the stream goes on into dword 0x50, the first the vendor driver copies from the guest.
  const state = ctx.image.gpa + LRC_STATE_OFFSET;
  const end = gpa(state + 4 * 0x44);
  const at = gpa(state + 4 * 0x50);
  const mem = driver.platform.memory;
  driver.idle(o.timeoutNs);
  const words = [miLoadRegisterImm(1), reg, target >>> 0, MI_BATCH_BUFFER_END];
  mem.writeU32(end, 0);
  for (let i = 0; i < words.length; i++) mem.writeU32(gpa(at + 4 * i), words[i]! >>> 0);
  try {
    const status = driver.run(engine, new CommandBuffer().noop().words, o.timeoutNs);
    return {
      name: "context-forbidden-register",
      outcome: fenceOutcome(status),
      detail:
        `context image loads ${hex(reg)} (RING_START) = ${hex(target)} on restore, then a submission: ` +
        fenceDetail(status, driver),
    };
  } finally {
    for (let i = 0; i < words.length; i++) mem.writeU32(gpa(at + 4 * i), 0);
    mem.writeU32(end, MI_BATCH_BUFFER_END);
  }
}

/** A batch run through the PPGTT that stores (MI_USE_GGTT) into the victim's graphics memory. */
export function attackPpgttBatchGgtt(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const skip = needsExeclists(driver, "ppgtt-batch-ggtt");
  if (skip) return skip;
  const victim = o.victimGma ?? defaultVictimGma(driver);
  const batch = driver.allocBuffer(PAGE_SIZE);
  try {
    driver.writeBatch(batch, new CommandBuffer().storeDataImm(victim, HOSTILE_COLOR).words);
    const status = driver.wait(engineOf(o), driver.submitBatchBuffer(engineOf(o), batch), o.timeoutNs);
    return {
      name: "ppgtt-batch-ggtt",
      outcome: fenceOutcome(status),
      detail: `PPGTT batch at ${hex(batch.gva ?? 0)} storing into GMA ${hex(victim)}: ${fenceDetail(status, driver)}`,
    };
  } finally {
    driver.freeBuffer(batch);
  }
}

/**
 * Time of check to time of use on the PPGTT: a fill of our own buffer is submitted, and at once (before it runs) the
 * buffer's PPGTT entry is rewritten to a GPA outside RAM; then a second fill. "executed" if the second fill completed
 * (the rewritten entry was followed), "rejected" if the first landed in our page as validated and the second was
 * refused, "ignored" otherwise.
 */
export function attackPpgttToctou(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const skip = needsExeclists(driver, "ppgtt-toctou");
  if (skip) return skip;
  const engine = engineOf(o);
  const vm = driver.ppgtt!;
  const foreign = o.foreignGpa ?? FOREIGN_GPA;
  driver.idle(o.timeoutNs);
  const surface = driver.allocBuffer(PAGE_SIZE);
  const at = surface.gva!;
  try {
    driver.writeBuffer(surface, 0, new Uint8Array(PAGE_SIZE));
    const colorA = 0x3c3c0001;
    const first = driver.submit(engine, new CommandBuffer().colorBlt(at, 128, 0, 0, 32, 32, colorA).words);
    vm.setPte(at, foreign + GEN8_PAGE_PRESENT + GEN8_PAGE_RW);
    const s1 = driver.wait(engine, first, o.timeoutNs);
    const seen = readU32(driver, surface, 0);
    const s2 = driver.run(
      engine,
      new CommandBuffer().colorBlt(at, 128, 0, 0, 32, 32, HOSTILE_COLOR).words,
      o.timeoutNs,
    );
    const outcome: AttackOutcome =
      s2 === "completed"
        ? "executed"
        : s1 === "completed" && seen === colorA && s2 === "rejected"
          ? "rejected"
          : "ignored";
    return {
      name: "ppgtt-toctou",
      outcome,
      detail:
        `PTE of ${hex(at)} rewritten to GPA ${hex(foreign)} after the ELSP write: the fill ${s1}, our page holds ` +
        `${hex(seen)} (the entry validated at submission); the next fill through it: ${fenceDetail(s2, driver)}`,
    };
  } finally {
    vm.map(at, surface.gpa, 1);
    driver.freeBuffer(surface);
  }
}

export const ATTACKS: Readonly<Record<AttackName, (driver: GuestGpuDriver, o?: HostileOptions) => AttackReport>> = {
  "gm-other-vgpu": attackOtherVgpuGm,
  "gm-host": attackHostGm,
  "gm-past-end": attackPastEnd,
  oversize: attackOversize,
  "lri-forbidden": attackLri,
  "unknown-opcode": attackUnknownOpcode,
  "gtt-outside-partition": attackGttOutsidePartition,
  "batch-toctou": attackBatchToctou,
  "gtt-foreign-gpa": attackGttForeignGpa,
  "ppgtt-foreign-gpa": attackPpgttForeignGpa,
  "lrca-outside-partition": attackLrcaOutsidePartition,
  "context-forbidden-register": attackContextForbiddenRegister,
  "ppgtt-batch-ggtt": attackPpgttBatchGgtt,
  "elsp-malformed": attackElspMalformed,
  "ppgtt-toctou": attackPpgttToctou,
};

/**
 * The attacks a driver runs by default: the nine of the ring path on a ring driver; all of them on an execlists
 * driver, those in `ENDS_MEDIATION` last (each later one would otherwise find a vGPU in failsafe).
 */
export function defaultAttacks(driver: GuestGpuDriver): AttackName[] {
  if (driver.submission !== "execlists") return [...RING_ATTACK_NAMES];
  return [...ATTACK_NAMES.filter((n) => !ENDS_MEDIATION.has(n)), ...ATTACK_NAMES.filter((n) => ENDS_MEDIATION.has(n))];
}

/** Runs the named attacks (default `defaultAttacks`) in the order given and returns one report each. */
export function runAttacks(
  driver: GuestGpuDriver,
  o: HostileOptions = {},
  names: readonly AttackName[] = defaultAttacks(driver),
): AttackReport[] {
  return names.map((n) => ATTACKS[n](driver, o));
}
