/**
 * The guest's GPU driver (a small i915): written from docs/gpu-programming.md against `GuestPlatform` only, so the
 * same code drives a vGPU (mediated by the vendor driver), a whole physical GPU assigned to the guest, or a fake
 * device in a unit test.
 *
 * Bring-up (`open` = `probe` + `init`):
 * 1. probe: vendor/device/class in config space must be the GPU's (ENODEV otherwise); Memory Space and Bus Master are
 *    enabled in PCI_COMMAND; BAR0 (registers + GTT window) and BAR2 (aperture) are located; the MSI capability is
 *    found by walking the capability list.
 * 2. PVINFO (BAR0 + 0x78000): the magic 'vGTvGTvG' says the device is a vGPU; then version 1.x is required and the
 *    mappable and non-mappable ranges it names are the only graphics memory the driver ever allocates (ballooning).
 *    Another major version is refused (EOPNOTSUPP) rather than run as if the GPU were whole: that would use GM the
 *    guest does not own. Without the magic the device is a whole GPU: the driver owns all 4 GiB of graphics memory
 *    (minus `reservedGm`; a passed-through GPU has no host driver, so nothing is reserved by default).
 * 3. A status page, then one ring per engine (rcs, bcs), each in guest pages mapped through GTT entries the driver
 *    writes itself (gen8 PTEs with the page's guest-physical address; 8-byte writes, or 4-byte halves written so the
 *    entry is never present with a stale half). Rings are programmed in the datasheet's order (6.1): CTL = 0,
 *    HEAD = TAIL = 0, HWS_PGA = status page, START = GMA, CTL = length | valid.
 * 4. Interrupts in the datasheet's order (8): IIR cleared, IER and IMR for each engine's user interrupt and
 *    command-streamer error, MSI enabled in config space (INTx disabled), master enable. A vGPU guest then writes
 *    PVINFO display_ready = 1, as i915 does.
 *
 * Submission: commands go into the ring followed by a fence: MI_STORE_DATA_IMM of the engine's next sequence number
 * into its slot of the status page, and MI_USER_INTERRUPT; RING_TAIL publishes them. `wait` lets guest time pass
 * (GuestTime.waitUntil) until the interrupt handler has seen the fence's sequence number in the status page. The
 * handler follows i915's gen8 pattern: read the master register (nothing pending: not ours), master off, read and
 * acknowledge IIR, handle each engine's field, master on (re-entry from that last write is looped, not nested).
 *
 * Errors: GT_CS_MASTER_ERROR_INTERRUPT means the engine stopped on a command (a whole GPU: RING_EIR set, the engine
 * halted) or the vendor driver's command scanner rejected a submission (a vGPU: that submission is dropped and HEAD
 * moves past it once earlier work drains). The error is settled when the engine has drained (HEAD == TAIL) or halted:
 * every submission made before the error that has not completed by then never will, and is reported `rejected`
 * (i915 would reset the engine and replay innocent work; this driver does not replay). Before the next submission on
 * the engine the driver recovers it: it waits for the settle point, writes RING_EIR = ~0 if set, moves HEAD to TAIL
 * (skipping what a halted engine left), and resumes at TAIL. Rejected ranges are kept, so `wait` reports a rejected
 * fence as rejected even after later fences completed (the last 32 errors' ranges).
 *
 * Execlists (`submission: "execlists"`, datasheet 6.6-6.8 and 10.11; execlists.ts, ppgtt.ts): as i915 on gen8+, each
 * engine gets a status page for its CSB and a logical ring context (an image and a ring in graphics memory) whose
 * PDP0 names the driver's PPGTT, a 4-level table tree in guest pages, announced to a vGPU through PVINFO g2v_notify as
 * i915's gen8_ppgtt_notify_vgt does. Every buffer is then also mapped into the PPGTT at a GPU virtual address (`gva`,
 * above 4 GiB), and commands name buffers by that address (`gpuAddress`): blits, PPGTT batch buffers. The ring and its
 * fences are the same as in ring mode (the fence's store stays a GGTT write into the status page); publishing a TAIL
 * writes CTX_RING_TAIL and the context's descriptor to ELSP. A context that never completes (a vGPU refused it: no
 * context status event, GVT-g's hang) is found when a wait times out: the driver resets the engine as i915 does,
 * reports every submission in flight rejected, and skips the ring to its TAIL. `createContext` makes another GPU
 * context (i915's GEM context with a VM of its own): a PPGTT of its own, announced, and a logical ring context per
 * engine; it reaches only the buffers bound into it (`bindBuffer`). Submissions of every context of an engine go to
 * the device in the order they were made, so the engine's breadcrumbs still complete in order.
 *
 * Not modelled: display, fences (tiling), power management, the aperture as a CPU
 * mapping (the driver reads its buffers through guest memory, where they live), replay after an engine error.
 *
 * Invariants: every GMA the driver maps or puts in a command it builds lies in a range the device gave it
 * (`GmAllocator.owns`); sequence numbers per engine are strictly increasing; `completed <= submitted`.
 */
import {
  defineTraceEvents,
  Errno,
  type Gma,
  type Gpa,
  gma,
  gpa,
  hex,
  KernelError,
  NS_PER_S,
  PAGE_SIZE,
  type Tracer,
} from "../core/index.ts";
import {
  BAR0_SIZE,
  BAR2_INDEX,
  ENGINE_BASE,
  ENGINE_IRQ_SHIFT,
  type EngineId,
  GEN8_GT_BCS_IRQ,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_GT_RCS_IRQ,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GEN8_PAGE_PRESENT,
  GM_SIZE,
  GPU_CLASS_CODE,
  GPU_DEVICE_ID,
  GPU_VENDOR_ID,
  GT_CONTEXT_SWITCH_INTERRUPT,
  GT_CS_MASTER_ERROR_INTERRUPT,
  GT_RENDER_USER_INTERRUPT,
  GTT_ENTRIES,
  GTT_OFFSET,
  gen8PteEncode,
  LRC_PAGES,
  PVINFO,
  RING_ACTHD,
  RING_CTL,
  RING_EIR,
  RING_ELSP,
  RING_HEAD,
  RING_HWS_PGA,
  RING_MAX_BYTES,
  RING_START,
  RING_TAIL,
  RING_VALID,
  TAIL_ADDR,
  VGT_MAGIC,
  VGT_PVINFO_PAGE,
  VGT_VERSION_MAJOR,
} from "../gpu/index.ts";
import {
  PCI_CAP_ID_MSI,
  PCI_CAPABILITY_LIST,
  PCI_CLASS_PROG,
  PCI_COMMAND,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_DEVICE_ID,
  PCI_MSI_ADDRESS_HI,
  PCI_MSI_ADDRESS_LO,
  PCI_MSI_DATA_32,
  PCI_MSI_DATA_64,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_64BIT,
  PCI_MSI_FLAGS_ENABLE,
  PCI_MSI_FLAGS_QSIZE,
  PCI_REVISION_ID,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PCI_SUBSYSTEM_ID,
  PCI_SUBSYSTEM_VENDOR_ID,
  PCI_VENDOR_ID,
} from "../host/index.ts";
import { CommandBuffer, lower32 } from "./commands.ts";
import {
  type ExeclistHost,
  ExeclistPort,
  LogicalContext,
  type PortStats,
  VGT_G2V_PPGTT_L4_CREATE,
  VGT_G2V_PPGTT_L4_DESTROY,
  VGT_PVINFO_PDP0,
} from "./execlists.ts";
import { GmAllocator, type GmExtent, type GmZone } from "./gm.ts";
import type { GuestPlatform } from "./platform.ts";
import { GuestPpgtt, type Gva, gva } from "./ppgtt.ts";
import { GuestRing, type RingIo } from "./ring.ts";

declare module "../core/trace.ts" {
  interface TraceEventMap {
    "guest.probe": { device: string; mode: string; bar0: number; bar2: number; bar2Size: number };
    "guest.balloon": { mappableBase: number; mappableSize: number; nonmappableBase: number; nonmappableSize: number };
    "guest.ring.init": { engine: string; gma: number; gpa: number; size: number };
    "guest.submit": { engine: string; seqno: number; dwords: number; tail: number; batch: boolean };
    "guest.fence": { engine: string; seqno: number; status: string; waitedNs: number };
    "guest.irq": { vector: number; iir: number; master: number };
    "guest.engine.error": { engine: string; eir: number; acthd: number; head: number; tail: number; seqno: number };
    "guest.reject": { engine: string; from: number; to: number };
  }
}
defineTraceEvents("guest", {
  "guest.probe": "guest: GPU {device} probed as {mode}: BAR0 at {bar0}, BAR2 at {bar2} ({bar2Size} bytes)",
  "guest.balloon":
    "guest: ballooned to mappable [{mappableBase} +{mappableSize}] and non-mappable [{nonmappableBase} +{nonmappableSize}]",
  "guest.ring.init": "guest: {engine} ring of {size} bytes at gma {gma} (guest pages at gpa {gpa})",
  "guest.submit": "guest: {engine} submission seqno {seqno} ({dwords} dwords, batch {batch}), TAIL = {tail}",
  "guest.fence": "guest: {engine} fence {seqno} {status} after {waitedNs} ns",
  "guest.irq": "guest: interrupt vector {vector}, IIR {iir}, master {master}",
  "guest.engine.error":
    "guest: {engine} error interrupt (RING_EIR {eir}, ACTHD {acthd}, HEAD {head}, TAIL {tail}) with seqno {seqno} submitted",
  "guest.reject": "guest: {engine} submissions {from}..{to} rejected (never completed after the error)",
});

/**
 * How GTT entries are written through the BAR0 window: one 8-byte write; or two 4-byte halves, "halves" in the safe
 * order of datasheet section 4 (the half holding the present bit last when mapping, first when unmapping, so the
 * entry in between is never present with a stale half), or a fixed order (what a careless driver does; it lets tests
 * check that a vGPU pairs halves whatever their order).
 */
export type GttWriteMode = "qword" | "halves" | "halves-low-first" | "halves-high-first";
/** What became of a submission. */
export type FenceStatus = "completed" | "rejected" | "timeout";
/** A vGPU (PVINFO present) or a whole physical GPU. */
export type DeviceMode = "vgpu" | "physical";
/** How the driver gives engines work: legacy rings (RING_TAIL), or execlists with contexts and a PPGTT. */
export type SubmissionKind = "ring" | "execlists";

export const ENGINES: readonly EngineId[] = ["rcs", "bcs"];
/** Default bytes per ring: 16 KiB (4 pages). */
export const DEFAULT_RING_BYTES = 4 * PAGE_SIZE;
/** Default wait for a fence or for ring space, in guest ns. */
export const DEFAULT_TIMEOUT_NS = NS_PER_S;
/** The MSI message the driver programs: the x86 local APIC doorbell and a vector above the legacy range. */
export const MSI_ADDRESS = 0xfee0_0000;
export const MSI_VECTOR = 0x41;
/** Offset of each engine's sequence-number slot in the status page (a cache line apart). */
export const STATUS_SLOT: Readonly<Record<EngineId, number>> = { rcs: 0x00, bcs: 0x40 };

const TWO32 = 4294967296;
const MAGIC_LO = Number(VGT_MAGIC & 0xffff_ffffn);
const MAGIC_HI = Number(VGT_MAGIC >> 32n);
/** Dwords of the fence that follows every submission: MI_STORE_DATA_IMM (4) + MI_USER_INTERRUPT (1). */
const FENCE_DWORDS = 5;

export interface GuestGpuDriverOptions {
  /** Default "qword". */
  readonly gttWriteMode?: GttWriteMode;
  /** Bytes per ring: a multiple of 4 KiB up to 2 MiB; default 16 KiB. */
  readonly ringBytes?: number;
  /** Engines to bring up; default both. */
  readonly engines?: readonly EngineId[];
  /** Default timeout of `wait` and of waiting for ring space, in guest ns; default 1 s. */
  readonly timeoutNs?: number;
  /** Interrupt delivery; default "msi". */
  readonly interrupts?: "msi" | "intx";
  /** Whole-GPU mode: graphics memory the driver must not use (the datasheet's reserved ranges). */
  readonly reservedGm?: readonly GmExtent[];
  /** Guest trace events (optional). */
  readonly tracer?: Tracer;
  /** Default "ring". */
  readonly submission?: SubmissionKind;
}

/** What `probe` found in config space. */
export interface ProbedDevice {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly revision: number;
  readonly classCode: number;
  readonly subsystemVendorId: number;
  readonly subsystemId: number;
  readonly bar0: Gpa;
  readonly bar0Size: number;
  readonly bar2: Gpa | undefined;
  readonly bar2Size: number;
  /** Config offset of the MSI capability, 0 if none. */
  readonly msiCap: number;
}

/** The PVINFO page as read at init. */
export interface PvInfo {
  readonly versionMajor: number;
  readonly versionMinor: number;
  readonly vgtId: number;
  readonly caps: number;
  readonly mappable: GmExtent;
  readonly nonmappable: GmExtent;
  readonly fences: number;
}

/** Guest pages mapped into graphics memory: CPU access through `gpa`, GPU access through `gma`. */
export interface GpuBuffer {
  readonly gma: Gma;
  /** First guest-physical byte; the pages are contiguous. */
  readonly gpa: Gpa;
  readonly size: number;
  readonly zone: GmZone;
  /** With execlists: where the buffer is mapped in the driver's PPGTT (what commands name). */
  readonly gva?: Gva;
}

/**
 * A GPU context of the driver as i915's GEM context: a PPGTT of its own and a logical ring context on each engine.
 * The driver's default context holds every buffer (`GpuBuffer.gva`); another context reaches a buffer only once it is
 * bound into its PPGTT (`bindBuffer`): what one context's commands can touch, another's cannot.
 */
export interface GpuContext {
  readonly id: number;
  readonly ppgtt: GuestPpgtt;
  readonly lrcs: ReadonlyMap<EngineId, LogicalContext>;
}

interface GpuContextState extends GpuContext {
  readonly lrcs: Map<EngineId, LogicalContext>;
  /** Buffers bound into this context's PPGTT (by GMA), for contexts other than the default one. */
  readonly bindings: Map<number, Gva>;
}

/** The last error an engine reported. */
export interface EngineError {
  readonly engine: EngineId;
  readonly eir: number;
  readonly acthd: number;
  readonly head: number;
  readonly tail: number;
  /** Submissions reported rejected because of it. */
  readonly rejected: number;
  readonly atNs: number;
}

export interface EngineStats {
  /** Submissions (fences) emitted. */
  readonly submitted: number;
  /** Submissions whose fence signalled. */
  readonly completed: number;
  /** Submissions reported rejected (in flight when an engine error arrived). */
  readonly rejected: number;
  /** Submissions neither completed nor rejected yet. */
  readonly inFlight: number;
  /** Sequence number of the last submission, and of the last completed one. */
  readonly lastSeqno: number;
  readonly completedSeqno: number;
  readonly userInterrupts: number;
  readonly errorInterrupts: number;
  readonly ringWraps: number;
  readonly ringBytes: number;
}

export interface GuestDriverStats {
  readonly submission: SubmissionKind;
  readonly interrupts: number;
  /** Interrupts with nothing pending (the master register shows no engine): not ours. */
  readonly spuriousInterrupts: number;
  readonly gttWrites: number;
  readonly buffers: number;
  readonly gmUsedBytes: number;
  readonly engines: Readonly<Partial<Record<EngineId, EngineStats>>>;
  /** With execlists: each engine's ELSP port (ELSP writes, CSB entries, completions, engine resets). */
  readonly execlists: Readonly<Partial<Record<EngineId, PortStats>>>;
  /** With execlists: pages mapped in the PPGTT and its table pages. */
  readonly ppgttPages: number;
  readonly ppgttTables: number;
}

/** i915_seqno_passed: a is at or after b in 32-bit sequence space. */
function seqnoPassed(a: number, b: number): boolean {
  return ((a - b) | 0) >= 0;
}

/** Per-engine driver state. */
class EngineState implements RingIo {
  readonly base: number;
  readonly irqShift: number;
  /** Last sequence number emitted. */
  submitted = 0;
  /** Last sequence number the interrupt handler found in the status page. */
  completed = 0;
  /** Submissions reported rejected. */
  rejected = 0;
  /** Settled rejections as inclusive sequence-number ranges [from, to, from, to, ...], the most recent last. */
  readonly rejectedRanges: number[] = [];
  /** The last sequence number submitted when the latest error interrupt arrived (valid while `needsRecovery`). */
  errorSeqno = 0;
  userInterrupts = 0;
  errorInterrupts = 0;
  /** An error arrived: its rejections are settled once the engine drains or halts, and recovered before new work. */
  needsRecovery = false;
  lastError: EngineError | undefined;
  ring!: GuestRing;
  ringBuffer!: GpuBuffer;
  /** With execlists: the engine's port and its context. */
  port: ExeclistPort | undefined;
  ctx: LogicalContext | undefined;
  /** The engine has consumed everything published, or halted on an error: what an error waits for to settle. */
  readonly drainedOrHalted = (): boolean => this.halted() || this.ring.head() === this.ring.published;

  constructor(
    readonly id: EngineId,
    private readonly driver: GuestGpuDriver,
  ) {
    this.base = ENGINE_BASE[id];
    this.irqShift = ENGINE_IRQ_SHIFT[id];
  }

  readEngine(offset: number): number {
    return this.driver.mmioRead32(this.base + offset);
  }
  writeEngine(offset: number, value: number): void {
    this.driver.mmioWrite32(this.base + offset, value);
  }
  wait(done: () => boolean): boolean {
    return this.driver.platform.time.waitUntil(done, this.driver.timeoutNs);
  }
  /** RING_EIR is non-zero: a whole GPU's engine stopped on an error (a vGPU drops rejected work instead). */
  halted(): boolean {
    return this.readEngine(RING_EIR) !== 0;
  }
  /** Whether `seqno` lies in a settled rejection. */
  isRejected(seqno: number): boolean {
    const r = this.rejectedRanges;
    for (let i = r.length - 2; i >= 0; i -= 2) {
      if (seqnoPassed(seqno, r[i]!) && seqnoPassed(r[i + 1]!, seqno)) return true;
    }
    return false;
  }
}

export class GuestGpuDriver {
  readonly timeoutNs: number;
  readonly gttWriteMode: GttWriteMode;
  private readonly opts: GuestGpuDriverOptions;
  private readonly tracer: Tracer | undefined;
  private probed: ProbedDevice | undefined;
  private pv: PvInfo | undefined;
  private allocator: GmAllocator | undefined;
  private readonly engineState = new Map<EngineId, EngineState>();
  /** The same engines as an array: the interrupt handler walks it without allocating an iterator. */
  private engineList: EngineState[] = [];
  private statusPage: GpuBuffer | undefined;
  private readonly buffers = new Set<GpuBuffer>();
  readonly submission: SubmissionKind;
  /** With execlists: the default context's PPGTT (every buffer is mapped there). */
  private vm: GuestPpgtt | undefined;
  /** With execlists: the default context (index 0) and those `createContext` made. */
  private readonly gpuContexts: GpuContextState[] = [];
  private nextCcidTag = 0;
  private readonly fenceCmds = new CommandBuffer(16);
  private bar0 = 0;
  private interrupts = 0;
  private spurious = 0;
  private gttWrites = 0;
  private inIrq = false;
  private irqAgain = false;
  private initialized = false;
  // The fence being waited for (fields, so that the wait predicate is one preallocated closure).
  private waitEngine: EngineState | undefined;
  private waitSeqno = 0;
  private readonly fenceSignalled = (): boolean => this.isSignalled(this.waitEngine!, this.waitSeqno);
  private readonly onInterrupt = (vector: number): void => this.handleInterrupt(vector);

  constructor(
    readonly platform: GuestPlatform,
    opts: GuestGpuDriverOptions = {},
  ) {
    this.opts = opts;
    this.tracer = opts.tracer;
    this.timeoutNs = opts.timeoutNs ?? DEFAULT_TIMEOUT_NS;
    this.gttWriteMode = opts.gttWriteMode ?? "qword";
    this.submission = opts.submission ?? "ring";
    const ring = opts.ringBytes ?? DEFAULT_RING_BYTES;
    if (!Number.isInteger(ring) || ring <= 0 || ring % PAGE_SIZE !== 0 || ring > RING_MAX_BYTES) {
      throw new KernelError(Errno.EINVAL, `ring size ${ring} bytes must be a multiple of 4096 up to ${RING_MAX_BYTES}`);
    }
  }

  /** Probes and initialises: the driver's whole bring-up. */
  static open(platform: GuestPlatform, opts: GuestGpuDriverOptions = {}): GuestGpuDriver {
    const d = new GuestGpuDriver(platform, opts);
    d.probe();
    d.init();
    return d;
  }

  // ---- probe -----------------------------------------------------------------------------------------------------

  /** Identifies the device through config space, enables it, and locates its BARs and MSI capability. */
  probe(): ProbedDevice {
    const dev = this.platform.device;
    const vendorId = dev.configRead(PCI_VENDOR_ID, 2);
    const deviceId = dev.configRead(PCI_DEVICE_ID, 2);
    const classCode = dev.configRead(PCI_CLASS_PROG, 1) | (dev.configRead(PCI_CLASS_PROG + 1, 2) << 8);
    if (vendorId !== GPU_VENDOR_ID || deviceId !== GPU_DEVICE_ID || classCode !== GPU_CLASS_CODE) {
      throw new KernelError(
        Errno.ENODEV,
        `PCI function ${hex(vendorId)}:${hex(deviceId)} class ${hex(classCode)} is not the GPU this driver supports ` +
          `(${hex(GPU_VENDOR_ID)}:${hex(GPU_DEVICE_ID)} class ${hex(GPU_CLASS_CODE)})`,
      );
    }
    const bar0 = dev.barAddress(0);
    const bar0Size = dev.barSize(0);
    if (bar0 === undefined || bar0Size < BAR0_SIZE) {
      throw new KernelError(
        Errno.ENODEV,
        `GPU BAR0 is ${bar0 === undefined ? "absent" : `${bar0Size} bytes`}: the registers and GTT window need ${BAR0_SIZE}`,
      );
    }
    const bar2 = dev.barAddress(BAR2_INDEX);
    const bar2Size = bar2 === undefined ? 0 : dev.barSize(BAR2_INDEX);
    const cmd = dev.configRead(PCI_COMMAND, 2);
    dev.configWrite(PCI_COMMAND, 2, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const after = dev.configRead(PCI_COMMAND, 2);
    if ((after & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)) !== (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)) {
      throw new KernelError(Errno.EIO, `PCI_COMMAND reads ${hex(after)} after enabling memory space and bus mastering`);
    }
    this.bar0 = bar0;
    this.probed = {
      vendorId,
      deviceId,
      revision: dev.configRead(PCI_REVISION_ID, 1),
      classCode,
      subsystemVendorId: dev.configRead(PCI_SUBSYSTEM_VENDOR_ID, 2),
      subsystemId: dev.configRead(PCI_SUBSYSTEM_ID, 2),
      bar0,
      bar0Size,
      bar2,
      bar2Size,
      msiCap: this.findCapability(PCI_CAP_ID_MSI),
    };
    return this.probed;
  }

  /** pci_find_capability: the config offset of capability `id`, 0 if absent. */
  findCapability(id: number): number {
    const dev = this.platform.device;
    if ((dev.configRead(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST) === 0) return 0;
    let p = dev.configRead(PCI_CAPABILITY_LIST, 1) & ~3;
    for (let guard = 0; p >= 0x40 && guard < 48; guard++) {
      if (dev.configRead(p, 1) === id) return p;
      p = dev.configRead(p + 1, 1) & ~3;
    }
    return 0;
  }

  get device(): ProbedDevice {
    if (!this.probed) throw new KernelError(Errno.ENODEV, "the GPU has not been probed: call probe() first");
    return this.probed;
  }

  // ---- init --------------------------------------------------------------------------------------------------------

  /** Reads PVINFO, balloons, and brings up the status page, the rings and interrupts. */
  init(): void {
    if (this.initialized) throw new KernelError(Errno.EBUSY, "the GPU driver is already initialised");
    const dev = this.device;
    this.pv = this.readPvinfo();
    this.allocator = this.pv ? this.balloon(this.pv) : this.wholeGpu(dev);
    if (this.tracer?.enabled) {
      this.tracer.emit("guest.probe", {
        device: `${hex(dev.vendorId)}:${hex(dev.deviceId)}`,
        mode: this.mode,
        bar0: dev.bar0,
        bar2: dev.bar2 ?? -1,
        bar2Size: dev.bar2Size,
      });
    }
    // Status page: sequence numbers, one slot per engine.
    this.statusPage = this.allocBuffer(PAGE_SIZE, { zone: "mappable" });
    this.platform.memory.write(this.statusPage.gpa, new Uint8Array(PAGE_SIZE));
    if (this.submission === "execlists") {
      this.vm = new GuestPpgtt(this.platform.memory, this.platform.pages);
      this.announcePpgtt(this.vm, VGT_G2V_PPGTT_L4_CREATE);
      this.gpuContexts.push({ id: 0, ppgtt: this.vm, lrcs: new Map(), bindings: new Map() });
      // The status page is a buffer like any other: mapped into the PPGTT as well.
      this.statusPage = this.mapIntoPpgtt(this.statusPage);
    }
    for (const id of this.opts.engines ?? ENGINES) this.initEngine(id);
    this.initInterrupts();
    if (this.pv) this.mmioWrite32(VGT_PVINFO_PAGE + PVINFO.displayReady, 1);
    this.initialized = true;
  }

  /** Reads the PVINFO page; undefined if the magic is absent (a physical GPU). EOPNOTSUPP for an unknown version. */
  readPvinfo(): PvInfo | undefined {
    const at = (field: number) => this.mmioRead32(VGT_PVINFO_PAGE + field);
    if (at(PVINFO.magic) !== MAGIC_LO || at(PVINFO.magic + 4) !== MAGIC_HI) return undefined;
    const version = at(PVINFO.versionMajor);
    const versionMajor = version & 0xffff;
    const versionMinor = version >>> 16;
    if (versionMajor !== VGT_VERSION_MAJOR) {
      throw new KernelError(
        Errno.EOPNOTSUPP,
        `PVINFO version ${versionMajor}.${versionMinor}: this driver speaks version ${VGT_VERSION_MAJOR}.x`,
      );
    }
    return {
      versionMajor,
      versionMinor,
      vgtId: at(PVINFO.vgtId),
      caps: at(PVINFO.vgtCaps),
      mappable: { base: gma(at(PVINFO.mappableBase)), size: at(PVINFO.mappableSize) },
      nonmappable: { base: gma(at(PVINFO.nonmappableBase)), size: at(PVINFO.nonmappableSize) },
      fences: at(PVINFO.fenceNum),
    };
  }

  /** Ballooning: the allocator holds only the ranges PVINFO names. */
  private balloon(pv: PvInfo): GmAllocator {
    const bar2 = this.device.bar2Size;
    for (const [name, r] of [
      ["mappable", pv.mappable],
      ["non-mappable", pv.nonmappable],
    ] as const) {
      if (r.base % PAGE_SIZE !== 0 || r.size % PAGE_SIZE !== 0 || r.base + r.size > GM_SIZE) {
        throw new KernelError(Errno.EINVAL, `PVINFO ${name} range ${hex(r.base)} +${hex(r.size)} is not usable`);
      }
    }
    if (bar2 > 0 && pv.mappable.size > bar2) {
      throw new KernelError(
        Errno.EINVAL,
        `PVINFO mappable size ${hex(pv.mappable.size)} exceeds the ${hex(bar2)}-byte aperture BAR`,
      );
    }
    if (this.tracer?.enabled) {
      this.tracer.emit("guest.balloon", {
        mappableBase: pv.mappable.base,
        mappableSize: pv.mappable.size,
        nonmappableBase: pv.nonmappable.base,
        nonmappableSize: pv.nonmappable.size,
      });
    }
    return new GmAllocator([pv.mappable], [pv.nonmappable]);
  }

  /** A whole GPU: mappable = the aperture's span [0, BAR2 size), non-mappable = the rest, minus reserved ranges. */
  private wholeGpu(dev: ProbedDevice): GmAllocator {
    const reserved = [...(this.opts.reservedGm ?? [])].sort((a, b) => a.base - b.base);
    const carve = (start: number, end: number): GmExtent[] => {
      const out: GmExtent[] = [];
      let cursor = start;
      for (const r of reserved) {
        const rs = Math.max(r.base, start);
        const re = Math.min(r.base + r.size, end);
        if (re <= rs) continue;
        if (rs > cursor) out.push({ base: gma(cursor), size: rs - cursor });
        cursor = Math.max(cursor, re);
      }
      if (end > cursor) out.push({ base: gma(cursor), size: end - cursor });
      return out;
    };
    return new GmAllocator(carve(0, dev.bar2Size), carve(dev.bar2Size, GM_SIZE));
  }

  private initEngine(id: EngineId): void {
    if (this.engineState.has(id)) return;
    const e = new EngineState(id, this);
    const size = this.opts.ringBytes ?? DEFAULT_RING_BYTES;
    const buf = this.allocBuffer(size, { zone: "mappable" });
    // MI_NOOP is 0: a zeroed ring holds no stale commands.
    this.platform.memory.write(buf.gpa, new Uint8Array(size));
    e.ringBuffer = buf;
    if (this.vm !== undefined) {
      this.initContext(e, buf);
      return;
    }
    e.ring = new GuestRing(this.platform.memory, e, buf.gpa, buf.gma, size);
    e.writeEngine(RING_CTL, 0);
    e.writeEngine(RING_HEAD, 0);
    e.writeEngine(RING_TAIL, 0);
    e.writeEngine(RING_HWS_PGA, this.statusPage!.gma);
    e.writeEngine(RING_START, buf.gma);
    e.writeEngine(RING_CTL, (((size / PAGE_SIZE - 1) << 12) | RING_VALID) >>> 0);
    if ((e.readEngine(RING_CTL) & RING_VALID) === 0 || e.readEngine(RING_START) !== buf.gma) {
      throw new KernelError(
        Errno.EIO,
        `${id} ring did not start: RING_START reads ${hex(e.readEngine(RING_START))}, RING_CTL ${hex(e.readEngine(RING_CTL))}`,
      );
    }
    this.engineState.set(id, e);
    this.engineList.push(e);
    if (this.tracer?.enabled) this.tracer.emit("guest.ring.init", { engine: id, gma: buf.gma, gpa: buf.gpa, size });
  }

  /**
   * Execlists on engine `e` (datasheet 6.6, 6.7): a status page for its CSB, execlists enabled, and a context whose
   * image (LRC_PAGES pages) and ring (`ring`, already allocated) are in graphics memory and whose PDP0 is the PPGTT.
   */
  private initContext(e: EngineState, ring: GpuBuffer): void {
    const hws = this.allocBuffer(PAGE_SIZE, { zone: "mappable", ppgtt: false });
    const image = this.allocBuffer(LRC_PAGES[e.id] * PAGE_SIZE, { zone: "mappable", ppgtt: false });
    const port = new ExeclistPort(this.execlistHost, e.id, hws, () => e.halted());
    this.platform.memory.write(hws.gpa, new Uint8Array(PAGE_SIZE));
    port.enable();
    // i915's ccid: (1 + tag) << 5, a tag per engine here.
    const ctx = new LogicalContext(port, image, ring, this.vm!, (1 + this.nextCcidTag++) << 5);
    this.gpuContexts[0]!.lrcs.set(e.id, ctx);
    e.port = port;
    e.ctx = ctx;
    e.ring = ctx.ring;
    this.engineState.set(e.id, e);
    this.engineList.push(e);
    if (this.tracer?.enabled) {
      this.tracer.emit("guest.ring.init", { engine: e.id, gma: ring.gma, gpa: ring.gpa, size: ring.size });
    }
  }

  /** What the execlist ports need of the driver. */
  private get execlistHost(): ExeclistHost {
    return {
      memory: this.platform.memory,
      mmioRead32: (offset: number): number => this.mmioRead32(offset),
      mmioWrite32: (offset: number, value: number): void => this.mmioWrite32(offset, value),
      wait: (done: () => boolean): boolean => this.platform.time.waitUntil(done, this.timeoutNs),
      tracer: this.tracer,
    };
  }

  /** On a vGPU, i915's gen8_ppgtt_notify_vgt: PVINFO pdp[0] = the PML4's GPA, then g2v_notify (create or destroy). */
  private announcePpgtt(vm: GuestPpgtt, msg: number): void {
    if (!this.pv) return;
    this.mmioWrite32(VGT_PVINFO_PAGE + VGT_PVINFO_PDP0, lower32(vm.pml4));
    this.mmioWrite32(VGT_PVINFO_PAGE + VGT_PVINFO_PDP0 + 4, Math.floor(vm.pml4 / TWO32));
    this.mmioWrite32(VGT_PVINFO_PAGE + PVINFO.g2vNotify, msg);
  }

  /** Datasheet section 8's order: IIR cleared, IER, IMR, MSI enabled in config space, master enable. */
  private initInterrupts(): void {
    const dev = this.platform.device;
    let events = 0;
    for (const e of this.engineState.values()) {
      const ctxSwitch = e.port !== undefined ? GT_CONTEXT_SWITCH_INTERRUPT : 0;
      events |= (GT_RENDER_USER_INTERRUPT | GT_CS_MASTER_ERROR_INTERRUPT | ctxSwitch) << e.irqShift;
    }
    this.mmioWrite32(GEN8_MASTER_IRQ, 0);
    this.mmioWrite32(GEN8_GT_IIR0, 0xffff_ffff);
    this.mmioWrite32(GEN8_GT_IER0, events >>> 0);
    this.mmioWrite32(GEN8_GT_IMR0, ~events >>> 0);
    dev.onInterrupt(this.onInterrupt);
    const c = this.device.msiCap;
    if ((this.opts.interrupts ?? "msi") === "msi") {
      if (c === 0)
        throw new KernelError(Errno.ENODEV, "the GPU has no MSI capability; open it with interrupts: 'intx'");
      const flags = dev.configRead(c + PCI_MSI_FLAGS, 2);
      dev.configWrite(c + PCI_MSI_ADDRESS_LO, 4, MSI_ADDRESS);
      if ((flags & PCI_MSI_FLAGS_64BIT) !== 0) {
        dev.configWrite(c + PCI_MSI_ADDRESS_HI, 4, 0);
        dev.configWrite(c + PCI_MSI_DATA_64, 2, MSI_VECTOR);
      } else dev.configWrite(c + PCI_MSI_DATA_32, 2, MSI_VECTOR);
      // One vector (QSIZE = 0), enabled; INTx off.
      dev.configWrite(c + PCI_MSI_FLAGS, 2, (flags & ~PCI_MSI_FLAGS_QSIZE) | PCI_MSI_FLAGS_ENABLE);
      dev.configWrite(PCI_COMMAND, 2, dev.configRead(PCI_COMMAND, 2) | PCI_COMMAND_INTX_DISABLE);
    } else {
      if (c !== 0) dev.configWrite(c + PCI_MSI_FLAGS, 2, dev.configRead(c + PCI_MSI_FLAGS, 2) & ~PCI_MSI_FLAGS_ENABLE);
      dev.configWrite(PCI_COMMAND, 2, dev.configRead(PCI_COMMAND, 2) & ~PCI_COMMAND_INTX_DISABLE);
    }
    this.mmioWrite32(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
  }

  /** Quiesces the device: interrupts off, rings stopped, every buffer unmapped and freed, bus mastering off. */
  shutdown(): void {
    if (!this.initialized) return;
    this.mmioWrite32(GEN8_MASTER_IRQ, 0);
    this.mmioWrite32(GEN8_GT_IER0, 0);
    this.mmioWrite32(GEN8_GT_IMR0, 0xffff_ffff);
    for (const e of this.engineState.values()) {
      if (e.port !== undefined) e.port.disable();
      else e.writeEngine(RING_CTL, 0);
    }
    for (const c of this.gpuContexts.slice(1).reverse()) this.releaseContext(c);
    for (const b of [...this.buffers]) this.freeBuffer(b);
    if (this.vm !== undefined) {
      this.announcePpgtt(this.vm, VGT_G2V_PPGTT_L4_DESTROY);
      this.vm.destroy();
      this.vm = undefined;
    }
    this.gpuContexts.length = 0;
    this.engineState.clear();
    this.engineList = [];
    this.statusPage = undefined;
    const dev = this.platform.device;
    const c = this.device.msiCap;
    if (c !== 0) dev.configWrite(c + PCI_MSI_FLAGS, 2, dev.configRead(c + PCI_MSI_FLAGS, 2) & ~PCI_MSI_FLAGS_ENABLE);
    dev.configWrite(PCI_COMMAND, 2, dev.configRead(PCI_COMMAND, 2) & ~PCI_COMMAND_MASTER);
    this.initialized = false;
  }

  // ---- state -------------------------------------------------------------------------------------------------------

  get mode(): DeviceMode {
    return this.pv ? "vgpu" : "physical";
  }

  /** The PVINFO page as read at init (undefined on a whole GPU). */
  get pvinfo(): PvInfo | undefined {
    return this.pv;
  }

  /** With execlists: the driver's PPGTT. */
  get ppgtt(): GuestPpgtt | undefined {
    return this.vm;
  }

  /** With execlists: `engine`'s logical ring context of the default context, or of `ctx`. */
  context(engine: EngineId, ctx?: GpuContext): LogicalContext | undefined {
    return ctx !== undefined ? ctx.lrcs.get(engine) : this.engine(engine).ctx;
  }

  /** With execlists: the default GPU context (every buffer mapped in its PPGTT). */
  get defaultContext(): GpuContext | undefined {
    return this.gpuContexts[0];
  }

  /**
   * The address commands name `buf` by: on the legacy ring its GMA; with execlists its PPGTT address in the default
   * context, or in `ctx` (EINVAL if the buffer is not bound there).
   */
  gpuAddress(buf: GpuBuffer, ctx?: GpuContext): number {
    if (ctx === undefined || ctx.id === 0) return buf.gva ?? buf.gma;
    const at = this.contextState(ctx).bindings.get(buf.gma);
    if (at === undefined) {
      throw new KernelError(Errno.EINVAL, `buffer at GMA ${hex(buf.gma)} is not bound into context ${ctx.id}`);
    }
    return at;
  }

  /**
   * i915's context create with a VM of its own: a new PPGTT (announced to a vGPU) and a logical ring context (image
   * and ring) on every engine. EINVAL on the legacy ring path.
   */
  createContext(): GpuContext {
    if (this.vm === undefined) {
      throw new KernelError(Errno.EINVAL, "contexts need execlists: open the driver with submission 'execlists'");
    }
    const ppgtt = new GuestPpgtt(this.platform.memory, this.platform.pages);
    this.announcePpgtt(ppgtt, VGT_G2V_PPGTT_L4_CREATE);
    const c: GpuContextState = { id: this.gpuContexts.length, ppgtt, lrcs: new Map(), bindings: new Map() };
    for (const e of this.engineList) {
      const size = this.opts.ringBytes ?? DEFAULT_RING_BYTES;
      const ring = this.allocBuffer(size, { zone: "mappable", ppgtt: false });
      const image = this.allocBuffer(LRC_PAGES[e.id] * PAGE_SIZE, { zone: "mappable", ppgtt: false });
      c.lrcs.set(e.id, new LogicalContext(e.port!, image, ring, ppgtt, (1 + this.nextCcidTag++) << 5));
    }
    this.gpuContexts.push(c);
    return c;
  }

  /** Maps `buf` into `ctx`'s PPGTT too (a no-op for the default context); returns its address there. */
  bindBuffer(ctx: GpuContext, buf: GpuBuffer): number {
    if (ctx.id === 0) return this.gpuAddress(buf);
    const c = this.contextState(ctx);
    const bound = c.bindings.get(buf.gma);
    if (bound !== undefined) return bound;
    const at = c.ppgtt.allocVa(buf.size);
    c.ppgtt.map(at, buf.gpa, buf.size / PAGE_SIZE);
    c.bindings.set(buf.gma, at);
    return at;
  }

  /** Waits for the engines, then frees `ctx`'s images, rings and PPGTT (announcing its destruction). */
  destroyContext(ctx: GpuContext): void {
    const c = this.contextState(ctx);
    if (c.id === 0) throw new KernelError(Errno.EINVAL, "the default context lives as long as the driver");
    this.idle();
    this.releaseContext(c);
  }

  /** Frees a context's images, rings and PPGTT (nothing of it in flight any more, or the engines stopped). */
  private releaseContext(c: GpuContextState): void {
    for (const lrc of c.lrcs.values()) {
      for (const b of [...this.buffers]) {
        if (b.gma === lrc.image.gma || b.gma === lrc.ringBuffer.gma) this.freeBuffer(b);
      }
    }
    this.announcePpgtt(c.ppgtt, VGT_G2V_PPGTT_L4_DESTROY);
    c.ppgtt.destroy();
    this.gpuContexts.splice(this.gpuContexts.indexOf(c), 1);
  }

  private contextState(ctx: GpuContext): GpuContextState {
    const c = this.gpuContexts.find((x) => x === ctx);
    if (c === undefined) throw new KernelError(Errno.EINVAL, `context ${ctx.id} is not a live context of this driver`);
    return c;
  }

  /** Every logical ring context on engine `e` (after a reset or an error each skips to its TAIL). */
  private lrcsOn(e: EngineState): LogicalContext[] {
    const out: LogicalContext[] = [];
    for (const c of this.gpuContexts) {
      const l = c.lrcs.get(e.id);
      if (l !== undefined) out.push(l);
    }
    return out;
  }

  /** The graphics-memory allocator (what ballooning left this guest). */
  get gm(): GmAllocator {
    if (!this.allocator) throw new KernelError(Errno.ENODEV, "the GPU driver is not initialised: call init() first");
    return this.allocator;
  }

  get engines(): readonly EngineId[] {
    return [...this.engineState.keys()];
  }

  /** The status page (sequence numbers). */
  get status(): GpuBuffer {
    if (!this.statusPage) throw new KernelError(Errno.ENODEV, "the GPU driver is not initialised: call init() first");
    return this.statusPage;
  }

  ring(engine: EngineId): GuestRing {
    return this.engine(engine).ring;
  }

  lastError(engine: EngineId): EngineError | undefined {
    return this.engine(engine).lastError;
  }

  /** The last sequence number the interrupt handler saw complete on `engine`. */
  completedSeqno(engine: EngineId): number {
    return this.engine(engine).completed;
  }

  stats(): GuestDriverStats {
    const engines: Partial<Record<EngineId, EngineStats>> = {};
    for (const e of this.engineState.values()) {
      const r = e.rejectedRanges;
      const settledTo = r.length > 0 && seqnoPassed(r[r.length - 1]!, e.completed) ? r[r.length - 1]! : e.completed;
      const inFlight = seqnoPassed(settledTo, e.submitted) ? 0 : (e.submitted - settledTo) | 0;
      engines[e.id] = {
        submitted: e.submitted,
        completed: e.submitted - e.rejected - inFlight,
        rejected: e.rejected,
        inFlight,
        lastSeqno: e.submitted,
        completedSeqno: e.completed,
        userInterrupts: e.userInterrupts,
        errorInterrupts: e.errorInterrupts,
        ringWraps: e.ring.wraps,
        ringBytes: e.ring.bytesSubmitted,
      };
    }
    const execlists: Partial<Record<EngineId, PortStats>> = {};
    for (const e of this.engineState.values()) if (e.port !== undefined) execlists[e.id] = e.port.stats();
    return {
      submission: this.submission,
      interrupts: this.interrupts,
      spuriousInterrupts: this.spurious,
      gttWrites: this.gttWrites,
      buffers: this.buffers.size,
      gmUsedBytes: this.allocator?.usedBytes ?? 0,
      engines,
      execlists,
      ppgttPages: this.vm?.mappedPages ?? 0,
      ppgttTables: this.vm?.tables.size ?? 0,
    };
  }

  // ---- MMIO and GTT ------------------------------------------------------------------------------------------------

  /** A 32-bit register read at `offset` in BAR0. */
  mmioRead32(offset: number): number {
    return this.platform.device.mmioRead(gpa(this.bar0 + offset), 4) >>> 0;
  }

  mmioWrite32(offset: number, value: number): void {
    this.platform.device.mmioWrite(gpa(this.bar0 + offset), 4, value >>> 0);
  }

  /** Writes GTT entry `index` (GMA = index << 12) with the 64-bit `pte`, in the driver's GTT write mode. */
  writePte(index: number, pte: number, mode: GttWriteMode = this.gttWriteMode): void {
    if (!Number.isInteger(index) || index < 0 || index >= GTT_ENTRIES) {
      throw new KernelError(Errno.EINVAL, `GTT index ${index} is outside the ${GTT_ENTRIES}-entry table`);
    }
    const at = this.bar0 + GTT_OFFSET + index * 8;
    const dev = this.platform.device;
    this.gttWrites++;
    if (mode === "qword") {
      dev.mmioWrite(gpa(at), 8, pte);
      return;
    }
    const hi = Math.floor(pte / TWO32) >>> 0;
    const lo = lower32(pte);
    const lowFirst = mode === "halves-low-first" || (mode === "halves" && (lo & GEN8_PAGE_PRESENT) === 0);
    if (lowFirst) {
      dev.mmioWrite(gpa(at), 4, lo);
      dev.mmioWrite(gpa(at + 4), 4, hi);
    } else {
      dev.mmioWrite(gpa(at + 4), 4, hi);
      dev.mmioWrite(gpa(at), 4, lo);
    }
  }

  /** Reads GTT entry `index` back (two 4-byte reads). */
  readPte(index: number): number {
    const at = this.bar0 + GTT_OFFSET + index * 8;
    const dev = this.platform.device;
    return (dev.mmioRead(gpa(at), 4) >>> 0) + (dev.mmioRead(gpa(at + 4), 4) >>> 0) * TWO32;
  }

  /**
   * Points `pages` GTT entries from `at` at the guest pages from `pages_gpa` on. EINVAL if the range is not graphics
   * memory this guest owns (the driver never maps outside its balloon; the hostile mode uses `writePte`).
   */
  mapGm(at: Gma, pagesGpa: Gpa, pages: number): void {
    if (!this.gm.owns(at, pages * PAGE_SIZE)) {
      throw new KernelError(
        Errno.EINVAL,
        `GM range ${hex(at)} +${hex(pages * PAGE_SIZE)} is outside the graphics memory this guest owns`,
      );
    }
    const first = at / PAGE_SIZE;
    for (let i = 0; i < pages; i++) this.writePte(first + i, gen8PteEncode(pagesGpa + i * PAGE_SIZE));
  }

  /** Marks `pages` GTT entries from `at` not present. */
  unmapGm(at: Gma, pages: number): void {
    const first = at / PAGE_SIZE;
    for (let i = 0; i < pages; i++) this.writePte(first + i, 0);
  }

  // ---- buffers -----------------------------------------------------------------------------------------------------

  /**
   * Guest pages for `bytes` (rounded up to pages), a GM range, and the GTT entries between them; with execlists also
   * a range of the PPGTT (unless `ppgtt` is false: the driver's own rings, images and status pages are GGTT only).
   * `allocPages` places the buffer's own pages (e.g. in one RAM block); page tables come from the guest's allocator.
   */
  allocBuffer(
    bytes: number,
    opts: {
      readonly zone?: GmZone;
      readonly ppgtt?: boolean;
      readonly allocPages?: (count: number) => Gpa;
    } = {},
  ): GpuBuffer {
    const pages = Math.ceil(bytes / PAGE_SIZE);
    if (!(pages > 0)) throw new KernelError(Errno.EINVAL, `buffer of ${bytes} bytes: must be at least one byte`);
    const range = this.gm.alloc(pages * PAGE_SIZE, opts.zone ? { zone: opts.zone } : {});
    let pagesGpa: Gpa;
    try {
      pagesGpa = (opts.allocPages ?? ((n: number) => this.platform.pages.allocPages(n)))(pages);
    } catch (e) {
      this.gm.release(range.base);
      throw e;
    }
    this.mapGm(range.base, pagesGpa, pages);
    let buf: GpuBuffer = { gma: range.base, gpa: pagesGpa, size: pages * PAGE_SIZE, zone: range.zone };
    this.buffers.add(buf);
    if (this.vm !== undefined && opts.ppgtt !== false) buf = this.mapIntoPpgtt(buf);
    return buf;
  }

  /** Maps a live buffer into the PPGTT at a fresh GPU virtual address; returns the buffer with its `gva`. */
  private mapIntoPpgtt(buf: GpuBuffer): GpuBuffer {
    const vm = this.vm!;
    const at = vm.allocVa(buf.size);
    vm.map(at, buf.gpa, buf.size / PAGE_SIZE);
    const mapped: GpuBuffer = { ...buf, gva: at };
    this.buffers.delete(buf);
    this.buffers.add(mapped);
    return mapped;
  }

  /** Unmaps a buffer's GTT entries, then frees its GM range and guest pages. */
  freeBuffer(buf: GpuBuffer): void {
    if (!this.buffers.delete(buf)) {
      throw new KernelError(Errno.EINVAL, `buffer at GMA ${hex(buf.gma)} is not a live buffer of this driver`);
    }
    const pages = buf.size / PAGE_SIZE;
    if (buf.gva !== undefined) this.vm?.unmap(buf.gva, pages);
    for (const c of this.gpuContexts) {
      const at = c.bindings.get(buf.gma);
      if (at === undefined) continue;
      c.ppgtt.unmap(gva(at), pages);
      c.bindings.delete(buf.gma);
    }
    this.unmapGm(buf.gma, pages);
    this.gm.release(buf.gma);
    this.platform.pages.freePages(buf.gpa, pages);
  }

  /** CPU write into a buffer (through guest memory). */
  writeBuffer(buf: GpuBuffer, offset: number, data: Uint8Array): void {
    this.checkBufferRange(buf, offset, data.length);
    this.platform.memory.write(gpa(buf.gpa + offset), data);
  }

  readBuffer(buf: GpuBuffer, offset: number, into: Uint8Array): void {
    this.checkBufferRange(buf, offset, into.length);
    this.platform.memory.read(gpa(buf.gpa + offset), into);
  }

  /**
   * Writes `commands` into the batch buffer `buf` at `offset`, followed by MI_BATCH_BUFFER_END (and an MI_NOOP to
   * end on a qword). Returns the batch's length in bytes.
   */
  writeBatch(buf: GpuBuffer, commands: Uint32Array, offset = 0): number {
    const dwords = commands.length + 1 + ((commands.length + 1) % 2);
    this.checkBufferRange(buf, offset, dwords * 4);
    const mem = this.platform.memory;
    let at = buf.gpa + offset;
    for (let i = 0; i < commands.length; i++, at += 4) mem.writeU32(gpa(at), commands[i]!);
    mem.writeU32(gpa(at), this.batchEnd);
    if (dwords > commands.length + 1) mem.writeU32(gpa(at + 4), 0);
    return dwords * 4;
  }

  private readonly batchEnd = new CommandBuffer(1).batchBufferEnd().words[0]!;

  private checkBufferRange(buf: GpuBuffer, offset: number, len: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset + len > buf.size) {
      throw new KernelError(
        Errno.EINVAL,
        `access [${offset}, ${offset + len}) is outside the ${buf.size}-byte buffer at GMA ${hex(buf.gma)}`,
      );
    }
  }

  // ---- submission --------------------------------------------------------------------------------------------------

  /**
   * Puts `commands` in `engine`'s ring followed by a fence and publishes them (RING_TAIL). Returns the fence's
   * sequence number for `wait`. ETIMEDOUT if the ring does not drain enough to take them.
   */
  submit(engine: EngineId, commands: Uint32Array, ctx?: GpuContext): number {
    return this.emit(this.engine(engine), commands, false, this.lrcOf(engine, ctx));
  }

  /** The logical ring context of `ctx` on `engine` (undefined: the engine's default one). */
  private lrcOf(engine: EngineId, ctx: GpuContext | undefined): LogicalContext | undefined {
    if (ctx === undefined || ctx.id === 0) return undefined;
    return this.contextState(ctx).lrcs.get(engine);
  }

  /** Runs the batch buffer at `batch` (written with `writeBatch`) on `engine`: MI_BATCH_BUFFER_START + fence. */
  submitBatch(engine: EngineId, batch: Gma): number {
    const c = this.fenceCmds.reset().batchBufferStart(batch);
    return this.emit(this.engine(engine), c.words, true);
  }

  /**
   * Runs the batch buffer `buf` (written with `writeBatch`) on `engine`: through the PPGTT with execlists (i915's
   * user batches), through the GGTT in ring mode.
   */
  submitBatchBuffer(engine: EngineId, buf: GpuBuffer, ctx?: GpuContext): number {
    const c =
      buf.gva !== undefined
        ? this.fenceCmds.reset().batchBufferStart(this.gpuAddress(buf, ctx), "ppgtt")
        : this.fenceCmds.reset().batchBufferStart(buf.gma);
    return this.emit(this.engine(engine), c.words, true, this.lrcOf(engine, ctx));
  }

  /**
   * Lets guest time pass until fence `seqno` of `engine` completes, is rejected, or `timeoutNs` elapses. With
   * execlists, a fence whose context is still in flight when the time is up is a hang: the engine is reset and every
   * submission in flight is rejected.
   */
  wait(engine: EngineId, seqno: number, timeoutNs: number = this.timeoutNs): FenceStatus {
    const e = this.engine(engine);
    const t0 = this.platform.time.now();
    if (!this.isSignalled(e, seqno)) {
      this.waitEngine = e;
      this.waitSeqno = seqno;
      this.platform.time.waitUntil(this.fenceSignalled, timeoutNs);
      this.waitEngine = undefined;
    }
    if (e.port?.active !== undefined && !this.isSignalled(e, seqno)) {
      this.resetEngine(engine, `fence ${seqno} did not complete within ${timeoutNs} ns (no context status event)`);
    }
    // Rejected first: a later submission's completion moves `completed` past a rejected one.
    const status: FenceStatus = e.isRejected(seqno)
      ? "rejected"
      : seqnoPassed(e.completed, seqno)
        ? "completed"
        : "timeout";
    if (this.tracer?.enabled) {
      this.tracer.emit("guest.fence", { engine, seqno, status, waitedNs: this.platform.time.now() - t0 });
    }
    return status;
  }

  /** `submit` then `wait`. */
  run(engine: EngineId, commands: Uint32Array, timeoutNs?: number): FenceStatus {
    return this.wait(engine, this.submit(engine, commands), timeoutNs);
  }

  /** Waits for every engine's last submission. True if all completed (none rejected, none timed out). */
  idle(timeoutNs: number = this.timeoutNs): boolean {
    let ok = true;
    for (const e of this.engineState.values()) {
      if (e.submitted !== e.completed && this.wait(e.id, e.submitted, timeoutNs) !== "completed") ok = false;
    }
    return ok;
  }

  private isSignalled(e: EngineState, seqno: number): boolean {
    if (e.isRejected(seqno) || seqnoPassed(e.completed, seqno)) return true;
    if (e.needsRecovery && seqnoPassed(e.errorSeqno, seqno) && e.drainedOrHalted()) {
      this.settle(e);
      return true;
    }
    return false;
  }

  /**
   * Settles an error once the engine has drained or halted: every submission up to the error's sequence number that
   * has not completed by now never will, and is rejected.
   */
  private settle(e: EngineState): void {
    const r = e.rejectedRanges;
    const lastSettled = r.length > 0 ? r[r.length - 1]! : 0;
    const from = (seqnoPassed(e.completed, lastSettled) ? e.completed : lastSettled) + 1;
    const count = seqnoPassed(e.errorSeqno, from) ? ((e.errorSeqno - from) | 0) + 1 : 0;
    if (count > 0) {
      r.push(from >>> 0, e.errorSeqno);
      // Keep the recent ranges only: a wait on a much older rejected fence would report it completed.
      if (r.length > 64) r.splice(0, 2);
      e.rejected += count;
      if (this.tracer?.enabled) this.tracer.emit("guest.reject", { engine: e.id, from: from >>> 0, to: e.errorSeqno });
    }
    if (e.lastError) e.lastError = { ...e.lastError, rejected: e.lastError.rejected + count };
    e.errorSeqno = e.completed;
  }

  /**
   * With execlists, i915's hang recovery: resets `engine` (RING_RESET_CTL, GDRST), enables execlists again, reports
   * every submission in flight rejected and skips the context's ring to its TAIL. EINVAL in ring mode.
   */
  resetEngine(engine: EngineId, reason: string): void {
    const e = this.engine(engine);
    if (e.port === undefined || e.ctx === undefined) {
      throw new KernelError(Errno.EINVAL, `${engine} submits through its legacy ring: there is no context to reset`);
    }
    e.port.reset(reason);
    e.errorSeqno = e.submitted;
    this.settle(e);
    e.needsRecovery = false;
    for (const l of this.lrcsOn(e)) l.skipToTail();
  }

  /**
   * Four raw ELSP dwords on `engine` (element 1 absent): what a hostile guest writes. The driver's own port does not
   * know of it; `resetEngine` puts the engine back in a known state afterwards.
   */
  writeElsp(engine: EngineId, lo: number, hi: number): void {
    const at = ENGINE_BASE[engine] + RING_ELSP;
    this.mmioWrite32(at, 0);
    this.mmioWrite32(at, 0);
    this.mmioWrite32(at, hi >>> 0);
    this.mmioWrite32(at, lo >>> 0);
  }

  private emit(e: EngineState, commands: Uint32Array, batch: boolean, lrc?: LogicalContext): number {
    if (e.needsRecovery) this.recover(e);
    const ring = lrc?.ring ?? e.ring;
    const seqno = (e.submitted + 1) >>> 0 || 1;
    const slot = this.status.gma + STATUS_SLOT[e.id];
    if (!ring.begin(commands.length + FENCE_DWORDS)) {
      throw new KernelError(
        Errno.ETIMEDOUT,
        `${e.id} ring has no room for ${commands.length + FENCE_DWORDS} dwords after ${this.timeoutNs} ns: ` +
          `HEAD ${hex(ring.head())}, tail ${hex(ring.tail)} (the engine is not consuming its ring)`,
      );
    }
    ring.emitAll(commands);
    // Build the fence after copying `commands`: they may be this.fenceCmds' own words (submitBatch).
    const fence = this.fenceCmds.reset().storeDataImm(slot, seqno).userInterrupt();
    ring.emitAll(fence.words);
    e.submitted = seqno;
    if (this.tracer?.enabled) {
      this.tracer.emit("guest.submit", {
        engine: e.id,
        seqno,
        dwords: commands.length + FENCE_DWORDS,
        tail: ring.tail,
        batch,
      });
    }
    ring.advance();
    return seqno;
  }

  /**
   * After an engine error: wait for the engine to drain or halt and settle the rejections, acknowledge RING_EIR,
   * skip whatever the engine left between HEAD and TAIL, and resume submission at TAIL.
   */
  private recover(e: EngineState): void {
    if (!e.drainedOrHalted()) this.platform.time.waitUntil(e.drainedOrHalted, this.timeoutNs);
    this.settle(e);
    e.needsRecovery = false;
    // Datasheet 6.5: RING_EIR = all ones. A vGPU does not implement RING_EIR (it reads 0): no write then.
    if (e.readEngine(RING_EIR) !== 0) e.writeEngine(RING_EIR, 0xffff_ffff);
    if (e.ctx !== undefined) {
      // Datasheet 6.5 with execlists: the failed context was switched out; fix its image (HEAD = TAIL).
      e.port!.forget();
      for (const l of this.lrcsOn(e)) l.skipToTail();
      return;
    }
    const tail = e.readEngine(RING_TAIL) & TAIL_ADDR;
    if ((e.readEngine(RING_HEAD) & TAIL_ADDR) !== tail) e.writeEngine(RING_HEAD, tail);
    e.ring.resync(tail);
  }

  private engine(id: EngineId): EngineState {
    const e = this.engineState.get(id);
    if (!e) throw new KernelError(Errno.ENODEV, `engine ${id} is not initialised on this GPU driver`);
    return e;
  }

  // ---- interrupts ----------------------------------------------------------------------------------------------------

  /** gen8_irq_handler: master off, read and acknowledge IIR, handle, master on (a new edge if more arrived). */
  private handleInterrupt(vector: number): void {
    if (this.inIrq) {
      // Re-entered from our own register writes (the master-on edge): handle it in the loop below.
      this.irqAgain = true;
      return;
    }
    this.inIrq = true;
    try {
      do {
        this.irqAgain = false;
        this.interrupts++;
        const master = this.mmioRead32(GEN8_MASTER_IRQ);
        if ((master & (GEN8_GT_RCS_IRQ | GEN8_GT_BCS_IRQ)) === 0) {
          // Nothing pending in IIR & IER: not ours (a shared INTx line, or an edge already handled).
          this.spurious++;
          if (this.tracer?.enabled) this.tracer.emit("guest.irq", { vector, iir: 0, master });
          continue;
        }
        this.mmioWrite32(GEN8_MASTER_IRQ, 0);
        const iir = this.mmioRead32(GEN8_GT_IIR0);
        if (this.tracer?.enabled) this.tracer.emit("guest.irq", { vector, iir, master });
        if (iir !== 0) {
          this.mmioWrite32(GEN8_GT_IIR0, iir);
          const list = this.engineList;
          for (let i = 0; i < list.length; i++) this.engineInterrupt(list[i]!, (iir >>> list[i]!.irqShift) & 0xffff);
        }
        this.mmioWrite32(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
      } while (this.irqAgain);
    } finally {
      this.inIrq = false;
    }
  }

  private engineInterrupt(e: EngineState, bits: number): void {
    if ((bits & GT_RENDER_USER_INTERRUPT) !== 0) {
      e.userInterrupts++;
      const seqno = this.platform.memory.readU32(gpa(this.status.gpa + STATUS_SLOT[e.id]));
      if (seqnoPassed(seqno, e.completed) && seqnoPassed(e.submitted, seqno)) e.completed = seqno;
    }
    if ((bits & GT_CS_MASTER_ERROR_INTERRUPT) !== 0) {
      e.errorInterrupts++;
      e.errorSeqno = e.submitted;
      e.needsRecovery = true;
      e.lastError = {
        engine: e.id,
        eir: e.readEngine(RING_EIR),
        acthd: e.readEngine(RING_ACTHD),
        head: e.readEngine(RING_HEAD) & TAIL_ADDR,
        tail: e.readEngine(RING_TAIL) & TAIL_ADDR,
        rejected: 0,
        atNs: this.platform.time.now(),
      };
      if (this.tracer?.enabled) {
        const { eir, acthd, head, tail } = e.lastError;
        this.tracer.emit("guest.engine.error", { engine: e.id, eir, acthd, head, tail, seqno: e.submitted });
      }
    }
    // After the error: the port does not submit to a halted engine.
    if ((bits & GT_CONTEXT_SWITCH_INTERRUPT) !== 0) e.port?.processCsb();
  }
}
