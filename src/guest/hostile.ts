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
 * Every attack cleans up what it allocated; the driver stays usable afterwards (an engine error is recovered by the
 * driver before its next submission).
 */
import { type Gma, gma, hex, PAGE_SIZE } from "../core/index.ts";
import { type EngineId, FENCE_REG_GEN6_LO, GM_SIZE, gen8PteEncode, miInstr } from "../gpu/index.ts";
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
] as const;
export type AttackName = (typeof ATTACK_NAMES)[number];

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

function fenceDetail(status: FenceStatus): string {
  return status === "rejected"
    ? "the submission ended in a command-streamer error interrupt"
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
    detail: `XY_COLOR_BLT of ${SMALL_W}x${SMALL_H} px at GMA ${hex(target)}: ${fenceDetail(status)}`,
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
      fenceDetail(status),
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
    detail: `MI_LOAD_REGISTER_IMM ${hex(reg)} = ${hex(value)}: ${fenceDetail(status)}; the register reads ${hex(after)}`,
  };
}

/** An unknown command in the ring. */
export function attackUnknownOpcode(driver: GuestGpuDriver, o: HostileOptions = {}): AttackReport {
  const cmds = new CommandBuffer().dword(UNKNOWN_MI_COMMAND).noop();
  const status = driver.run(engineOf(o), cmds.words, o.timeoutNs);
  return {
    name: "unknown-opcode",
    outcome: fenceOutcome(status),
    detail: `command ${hex(UNKNOWN_MI_COMMAND)}: ${fenceDetail(status)}`,
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
    const surface = driver.allocBuffer(SMALL_PITCH * SMALL_H);
    owned.push(surface);
    driver.writeBuffer(surface, 0, new Uint8Array(surface.size));
    const batch = driver.allocBuffer(PAGE_SIZE);
    owned.push(batch);
    const benign = new CommandBuffer().colorBlt(surface.gma, SMALL_PITCH, 0, 0, SMALL_W, SMALL_H, colorA);
    driver.writeBatch(batch, benign.words);
    const seqno = driver.submitBatch(engine, batch.gma);
    const evil = new CommandBuffer()
      .colorBlt(surface.gma, SMALL_PITCH, 0, 0, SMALL_W, SMALL_H, colorB)
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
        `${fenceDetail(status)}; our surface holds ${hex(seen)} (submitted ${hex(colorA)}, rewritten ${hex(colorB)})`,
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
      .srcCopyBlt(surface.gma, 128, 0, 0, 32, 32, window, 128, 0, 0);
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
        ` (outside RAM): ${fenceDetail(status)}; reading back the first gave ${hex(seen)}` +
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
};

/** Runs the named attacks (default all, in ATTACK_NAMES order) and returns one report each. */
export function runAttacks(
  driver: GuestGpuDriver,
  o: HostileOptions = {},
  names: readonly AttackName[] = ATTACK_NAMES,
): AttackReport[] {
  return names.map((n) => ATTACKS[n](driver, o));
}
