/**
 * Test fixture for the vGPU vendor driver (used by its tests, the cross-layer tests in test/ and the benchmark; not
 * exported by the folder's index): a whole host with the real GPU and host driver (src/gpu), vfio-core with type1,
 * the mdev core with the GVT-g parent registered, and a VMM process per guest that attaches a vGPU exactly as QEMU
 * does (container, group, TYPE1v2, device fd) and maps guest RAM with MAP_DMA.
 *
 * `GuestSession` plays the guest driver through the VMM's device fd: MMIO and GTT writes are pwrites to BAR0, guest
 * memory is the VMM's mapping of guest RAM (GPA x is at hva base + x). It allocates guest pages and graphics memory
 * with simple bump allocators and builds rings and batches the way a guest driver would. Nothing here reaches into
 * the driver's internals except through `parent` (for stats and invariants), as a test may.
 *
 * `TestEngineBackend` is the test-only `VirtualEngineBackend`: it completes each workload at once (or holds it until
 * the test completes it), so that the virtual execlists' CSB and interrupt sequences can be asserted without a GPU
 * that runs contexts. Production code never uses it (virtual-engine.ts).
 */

import {
  Errno,
  type Gma,
  type Hva,
  type Iova,
  KernelError,
  PAGE_SIZE,
  type Pfn,
  type TraceRecorder,
  VirtualClock,
} from "../core/index.ts";
import {
  batchBufferStart,
  type CreatedGpu,
  CTX_RING_TAIL,
  colorBlt,
  createGpu,
  ENGINE_BASE,
  type EngineId,
  GEN8_GT_IER0,
  GEN8_GT_IIR0,
  GEN8_GT_IMR0,
  GEN8_MASTER_IRQ,
  GEN8_MASTER_IRQ_CONTROL,
  GTT_OFFSET,
  type GtEngineId,
  LRC_PAGES,
  LRC_STATE_OFFSET,
  lrcDescriptor,
  lrcRegisterState,
  MI_BATCH_BUFFER_END,
  MI_NOOP,
  MI_USER_INTERRUPT,
  PVINFO,
  RING_CTL,
  RING_HEAD,
  RING_START,
  RING_TAIL,
  RING_VALID,
  type SubmissionMode,
  srcCopyBlt,
  storeDataImm,
  VGT_PVINFO_PAGE,
} from "../gpu/index.ts";
import { type EventFd, GiB, type Host, PROT_READ, PROT_WRITE, type Process } from "../host/index.ts";
import type { MdevCore } from "../mdev/index.ts";
import { testWorld } from "../mdev/testing.ts";
import {
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_TYPE1v2_IOMMU,
  VfioContainerHandle,
  type VfioCore,
  type VfioDeviceHandle,
  VfioGroupHandle,
} from "../vfio/index.ts";
import type { VEngineId } from "./engines.ts";
import { GvtParent } from "./parent.ts";
import type { Vgpu } from "./vgpu.ts";
import type { ExeclistWorkload, VirtualEngineBackend, WorkloadCompletion } from "./virtual-engine.ts";

export const MiB = 1024 * 1024;

export interface AttachOptions {
  readonly ramBytes?: number;
  readonly mapChunkBytes?: number;
  readonly rlimitMemlockBytes?: number;
}

export interface VgpuWorldOptions {
  /** The GPU's aperture (default 512 MiB). */
  readonly apertureSize?: number;
  readonly memoryBytes?: number;
  /** Record trace events (default true). */
  readonly trace?: boolean;
  /** The virtual execlists' backend (default: each vGPU's own, which runs guest contexts on the GPU). */
  readonly execlistBackend?: VirtualEngineBackend;
  /** How the host driver submits (default "ring": guest contexts then stay pending). */
  readonly submission?: SubmissionMode;
  /** TEST ONLY: the planted bug of GvtParentOptions.unsafeTrustGuestPtes. */
  readonly unsafeTrustGuestPtes?: boolean;
}

/** TEST ONLY: a backend that completes workloads at once (`auto`) or when the test says (`complete`). */
export class TestEngineBackend implements VirtualEngineBackend {
  readonly name = "test";
  /** Complete each workload inside `run` (true) or hold it until `complete` (false). */
  auto = true;
  /** What completions report about MI_USER_INTERRUPT. */
  userInterrupt = false;
  /** Set to refuse workloads (as the production backend does) with this error. */
  refuse: KernelError | undefined;
  readonly ran: ExeclistWorkload[] = [];
  readonly cancelled: ExeclistWorkload[] = [];
  private readonly held: { w: ExeclistWorkload; done: (c: WorkloadCompletion) => void }[] = [];

  run(w: ExeclistWorkload, done: (c: WorkloadCompletion) => void): KernelError | undefined {
    if (this.refuse !== undefined) return this.refuse;
    this.ran.push(w);
    if (this.auto) done({ userInterrupt: this.userInterrupt });
    else this.held.push({ w, done });
    return undefined;
  }

  cancel(w: ExeclistWorkload): void {
    this.cancelled.push(w);
    const i = this.held.findIndex((h) => h.w === w);
    if (i >= 0) this.held.splice(i, 1);
  }

  /** Workloads held (auto = false) and not yet completed. */
  get holding(): readonly ExeclistWorkload[] {
    return this.held.map((h) => h.w);
  }

  /** Completes the oldest held workload of `engine` (default: any) with `c`. */
  complete(engine?: VEngineId, c: WorkloadCompletion = { userInterrupt: this.userInterrupt }): ExeclistWorkload {
    const i = this.held.findIndex((h) => engine === undefined || h.w.engine === engine);
    if (i < 0) throw new Error(`no held workload${engine !== undefined ? ` on ${engine}` : ""}`);
    const [h] = this.held.splice(i, 1);
    h!.done(c);
    return h!.w;
  }
}

let uuidSeq = 0;
/** A fresh, valid, lower-case UUID (deterministic per process). */
export function nextUuid(): string {
  uuidSeq++;
  return `00000000-0000-4000-8000-${uuidSeq.toString(16).padStart(12, "0")}`;
}

/** A host with the GPU, vfio, mdev and the GVT-g parent. */
export class VgpuWorld {
  readonly clock = new VirtualClock();
  readonly host: Host;
  readonly recorder: TraceRecorder | undefined;
  readonly vfio: VfioCore;
  readonly mdev: MdevCore;
  readonly gpu: CreatedGpu;
  readonly parent: GvtParent;

  constructor(opts: VgpuWorldOptions = {}) {
    // The shared test world (Host + vfio-core/type1 + mdev core), with this world's clock.
    const w = testWorld({ memoryBytes: opts.memoryBytes ?? 8 * GiB, clock: this.clock, trace: opts.trace !== false });
    this.host = w.host;
    this.recorder = opts.trace === false ? undefined : w.rec;
    this.vfio = w.vfio;
    this.mdev = w.mdev;
    this.gpu = createGpu(this.host, {
      ...(opts.apertureSize !== undefined ? { apertureSize: opts.apertureSize } : {}),
      ...(opts.submission !== undefined ? { submission: opts.submission } : {}),
    });
    this.parent = new GvtParent({
      gpu: this.gpu.driver,
      clock: this.clock,
      tracer: this.host.tracer,
      ...(opts.execlistBackend !== undefined ? { execlistBackend: opts.execlistBackend } : {}),
      ...(opts.unsafeTrustGuestPtes ? { unsafeTrustGuestPtes: true } : {}),
    });
    this.mdev.registerParent(this.parent);
  }

  get driver() {
    return this.gpu.driver;
  }

  /** Creates a vGPU of `typeId` ("GVTg_V5_8") through the mdev core; returns its UUID. */
  create(typeId: string, uuid = nextUuid()): string {
    this.mdev.create(this.parent.parentName, typeId, uuid);
    return uuid;
  }

  vgpu(uuid: string): Vgpu {
    const v = this.parent.vgpu(uuid);
    if (v === undefined) throw new Error(`no vGPU ${uuid}`);
    return v;
  }

  /**
   * Starts a VMM that attaches vGPU `uuid` and maps `ramBytes` of guest RAM at GPA 0, in MAP_DMA pieces of
   * `mapChunkBytes` (default: one piece) so that a test can unmap one piece.
   */
  attach(uuid: string, opts: AttachOptions = {}): GuestSession {
    return new GuestSession(this, uuid, opts);
  }

  /** Runs the clock forward (engines complete, the scheduler ticks). */
  run(ns: number): void {
    this.clock.advance(ns);
  }

  checkInvariants(): void {
    this.parent.checkInvariants();
    this.driver.checkInvariants({ scanGgtt: false });
    this.mdev.checkInvariants();
    this.vfio.checkInvariants();
  }
}

/** The guest driver, seen through the VMM that runs it. */
export class GuestSession {
  readonly qemu: Process;
  readonly container: VfioContainerHandle;
  readonly group: VfioGroupHandle;
  readonly device: VfioDeviceHandle;
  readonly ram: Hva;
  readonly ramBytes: number;
  /** The vGPU's partition as PVINFO tells it. */
  readonly aperture: { base: number; size: number };
  readonly hidden: { base: number; size: number };
  msi: EventFd | undefined;
  private nextGpa = 0;
  private nextApertureGma: number;
  private nextHiddenGma: number;
  private readonly u32 = new Uint8Array(4);

  constructor(
    readonly world: VgpuWorld,
    readonly uuid: string,
    opts: AttachOptions,
  ) {
    const host = world.host;
    const ramBytes = opts.ramBytes ?? 16 * MiB;
    this.qemu = host.spawn("qemu", { rlimitMemlockBytes: opts.rlimitMemlockBytes ?? 1 * GiB });
    const info = world.mdev.device(uuid);
    if (info === undefined) throw new Error(`no mdev ${uuid}`);
    this.container = VfioContainerHandle.open(this.qemu);
    this.group = VfioGroupHandle.open(this.qemu, info.group);
    this.group.setContainer(this.container);
    this.container.setIommu(VFIO_TYPE1v2_IOMMU);
    this.device = this.group.getDevice(uuid);
    this.ramBytes = ramBytes;
    this.ram = this.qemu.mm.mmap(ramBytes, PROT_READ | PROT_WRITE, { name: "guest-ram" });
    const chunk = opts.mapChunkBytes ?? ramBytes;
    for (let at = 0; at < ramBytes; at += chunk) {
      this.container.mapDma({ vaddr: this.ram + at, iova: at, size: chunk, read: true, write: true });
    }
    this.aperture = {
      base: this.mmio(VGT_PVINFO_PAGE + PVINFO.mappableBase),
      size: this.mmio(VGT_PVINFO_PAGE + PVINFO.mappableSize),
    };
    this.hidden = {
      base: this.mmio(VGT_PVINFO_PAGE + PVINFO.nonmappableBase),
      size: this.mmio(VGT_PVINFO_PAGE + PVINFO.nonmappableSize),
    };
    this.nextApertureGma = this.aperture.base;
    this.nextHiddenGma = this.hidden.base;
  }

  get vgpu(): Vgpu {
    return this.world.vgpu(this.uuid);
  }

  // ---- registers ------------------------------------------------------------------------------------------------

  mmio(offset: number): number {
    const b = this.device.read(VFIO_PCI_BAR0_REGION_INDEX, offset, 4);
    return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  }

  setMmio(offset: number, value: number): void {
    const b = this.u32;
    b[0] = value & 0xff;
    b[1] = (value >>> 8) & 0xff;
    b[2] = (value >>> 16) & 0xff;
    b[3] = (value >>> 24) & 0xff;
    this.device.write(VFIO_PCI_BAR0_REGION_INDEX, offset, b);
  }

  /** Writes GTT entry `index` (8 bytes, or as two 4-byte halves low then high). */
  gttWrite(index: number, pte: number, halves = false): void {
    const lo = pte % 2 ** 32;
    const hi = Math.floor(pte / 2 ** 32);
    const b = new Uint8Array(8);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, lo, true);
    dv.setUint32(4, hi, true);
    const off = GTT_OFFSET + index * 8;
    if (!halves) this.device.write(VFIO_PCI_BAR0_REGION_INDEX, off, b);
    else {
      this.device.write(VFIO_PCI_BAR0_REGION_INDEX, off, b.subarray(0, 4));
      this.device.write(VFIO_PCI_BAR0_REGION_INDEX, off + 4, b.subarray(4, 8));
    }
  }

  gttRead(index: number): number {
    const b = this.device.read(VFIO_PCI_BAR0_REGION_INDEX, GTT_OFFSET + index * 8, 8);
    const dv = new DataView(b.buffer, b.byteOffset, 8);
    return dv.getUint32(0, true) + dv.getUint32(4, true) * 2 ** 32;
  }

  configRead16(offset: number): number {
    const b = this.device.read(VFIO_PCI_CONFIG_REGION_INDEX, offset, 2);
    return b[0]! | (b[1]! << 8);
  }

  // ---- guest memory ------------------------------------------------------------------------------------------------

  /** A fresh guest page (GPA). */
  allocPage(): number {
    if (this.nextGpa + PAGE_SIZE > this.ramBytes) throw new Error("guest RAM exhausted");
    const gpa = this.nextGpa;
    this.nextGpa += PAGE_SIZE;
    return gpa;
  }

  writeGpa(gpa: number, data: Uint8Array): void {
    this.qemu.mm.write((this.ram + gpa) as Hva, data);
  }

  readGpa(gpa: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.qemu.mm.read((this.ram + gpa) as Hva, out);
    return out;
  }

  /**
   * Graphics memory backed by fresh guest pages: `pages` pages from the aperture (or hidden) partition, each GTT entry
   * written with its page. Returns the GMA and the GPA of each page.
   */
  allocGm(pages: number, where: "aperture" | "hidden" = "aperture"): { gma: number; gpas: number[] } {
    const gma = where === "aperture" ? this.nextApertureGma : this.nextHiddenGma;
    const gpas: number[] = [];
    for (let i = 0; i < pages; i++) {
      const gpa = this.allocPage();
      gpas.push(gpa);
      this.gttWrite(gma / PAGE_SIZE + i, gpa + 1);
    }
    if (where === "aperture") this.nextApertureGma += pages * PAGE_SIZE;
    else this.nextHiddenGma += pages * PAGE_SIZE;
    return { gma, gpas };
  }

  /** Writes dwords into graphics memory allocated by `allocGm` (through the guest pages behind it). */
  writeGm(mem: { gma: number; gpas: number[] }, byteOffset: number, dwords: readonly number[]): void {
    const bytes = new Uint8Array(dwords.length * 4);
    const dv = new DataView(bytes.buffer);
    for (let i = 0; i < dwords.length; i++) dv.setUint32(i * 4, dwords[i]! >>> 0, true);
    for (let done = 0; done < bytes.length; ) {
      const at = byteOffset + done;
      const page = Math.floor(at / PAGE_SIZE);
      const n = Math.min(bytes.length - done, PAGE_SIZE - (at % PAGE_SIZE));
      this.writeGpa(mem.gpas[page]! + (at % PAGE_SIZE), bytes.subarray(done, done + n));
      done += n;
    }
  }

  readGmU32(mem: { gma: number; gpas: number[] }, byteOffset: number): number {
    const b = this.readGpa(mem.gpas[Math.floor(byteOffset / PAGE_SIZE)]! + (byteOffset % PAGE_SIZE), 4);
    return new DataView(b.buffer).getUint32(0, true);
  }

  // ---- rings -------------------------------------------------------------------------------------------------------

  /** A ring of `pages` pages in the aperture, programmed and enabled. */
  setupRing(engine: EngineId, pages = 1): Ring {
    const mem = this.allocGm(pages);
    const base = ENGINE_BASE[engine];
    this.setMmio(base + RING_CTL, 0);
    this.setMmio(base + RING_START, mem.gma);
    this.setMmio(base + RING_HEAD, 0);
    this.setMmio(base + RING_TAIL, 0);
    this.setMmio(base + RING_CTL, (((pages - 1) << 12) | RING_VALID) >>> 0);
    return new Ring(this, engine, mem, pages * PAGE_SIZE);
  }

  /** Enables MSI in config space, installs an MSI eventfd and unmasks the user and error interrupts. */
  enableInterrupts(): EventFd {
    const cap = this.vgpu.config.msiCap;
    const flags = this.configRead16(cap + 2);
    this.device.write(VFIO_PCI_CONFIG_REGION_INDEX, cap + 2, new Uint8Array([(flags | 1) & 0xff, flags >>> 8]));
    const fd = this.qemu.eventfd();
    this.device.setIrqsEventfd(VFIO_PCI_MSI_IRQ_INDEX, 0, [fd]);
    this.msi = this.qemu.eventfdOf(fd);
    this.setMmio(GEN8_GT_IMR0, 0);
    this.setMmio(GEN8_GT_IER0, 0xffff_ffff);
    this.setMmio(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    return this.msi;
  }

  /**
   * What i915 does before it submits through execlists on `engine` (base `base`): reads PVINFO (if not yet),
   * enables RUN_LIST in GFX_MODE, clears STOP_RING, points HWS_PGA at `hwsGma`, and resets the CSB pointers as
   * reset_csb_pointers does (read and write pointer 5, so that the first event lands in entry 0).
   */
  enableExeclists(base: number, hwsGma: number): void {
    this.mmio(VGT_PVINFO_PAGE + PVINFO.magic);
    this.setMmio(base + 0x29c, ((1 << 15) << 16) | (1 << 15));
    this.setMmio(base + 0x9c, (1 << 8) << 16);
    this.setMmio(base + 0x80, hwsGma);
    this.setMmio(base + 0x3a0, (0x0707 << 16) | 0x0505);
  }

  /** One ELSP submission: element 0 and element 1 (0, 0 for none), each [lo, hi], in i915's dword order. */
  elsp(base: number, e0: readonly [number, number], e1: readonly [number, number] = [0, 0]): void {
    for (const v of [e1[1], e1[0], e0[1], e0[0]]) this.setMmio(base + 0x230, v);
  }

  /** An INTx eventfd (MSI left disabled). */
  enableIntx(): EventFd {
    const fd = this.qemu.eventfd();
    this.device.setIrqsEventfd(VFIO_PCI_INTX_IRQ_INDEX, 0, [fd]);
    this.setMmio(GEN8_GT_IMR0, 0);
    this.setMmio(GEN8_GT_IER0, 0xffff_ffff);
    this.setMmio(GEN8_MASTER_IRQ, GEN8_MASTER_IRQ_CONTROL);
    return this.qemu.eventfdOf(fd);
  }

  /** Reads and acknowledges the guest's IIR (as an interrupt handler). */
  ackIir(): number {
    const iir = this.mmio(GEN8_GT_IIR0);
    if (iir !== 0) this.setMmio(GEN8_GT_IIR0, iir);
    return iir;
  }

  /** UNMAP_DMA of [gpa, gpa + size). */
  unmap(gpa: number, size: number): number {
    return this.container.unmapDma({ iova: gpa, size });
  }

  close(): void {
    this.device.close();
    this.group.close();
    this.container.close();
  }
}

/** A guest ring buffer: append commands, then `submit` (TAIL write). */
export class Ring {
  private tailOffset = 0;
  constructor(
    readonly session: GuestSession,
    readonly engine: EngineId,
    readonly mem: { gma: number; gpas: number[] },
    readonly size: number,
  ) {}

  /** Appends dwords (padded to a qword with MI_NOOP) and writes TAIL. */
  submit(dwords: readonly number[]): void {
    const d = dwords.length % 2 === 1 ? [...dwords, MI_NOOP] : [...dwords];
    for (const v of d) {
      this.session.writeGm(this.mem, this.tailOffset, [v]);
      this.tailOffset = (this.tailOffset + 4) % this.size;
    }
    this.session.setMmio(ENGINE_BASE[this.engine] + RING_TAIL, this.tailOffset);
  }

  get head(): number {
    return this.session.mmio(ENGINE_BASE[this.engine] + RING_HEAD);
  }

  /** The TAIL this ring last wrote. */
  get tail(): number {
    return this.tailOffset;
  }
}

// ---- command builders (what a guest driver emits): the GPU's encoders (src/gpu/commands.ts) ----------------------

/** MI_STORE_DATA_IMM of `value` at global GMA `gma`. */
export const storeDword = storeDataImm;
/** MI_BATCH_BUFFER_START of the batch at global GMA `gma`. */
export const batchStart = batchBufferStart;
export { colorBlt, MI_BATCH_BUFFER_END, MI_NOOP, MI_USER_INTERRUPT, srcCopyBlt };

/** Makes `dma.mapPage` of the host GPU fail while `fail()` returns true (DMA mapping error injection). */
export function injectDmaMapFailure(world: VgpuWorld, fail: () => boolean): void {
  const dma = world.driver.dma;
  const orig = dma.mapPage.bind(dma);
  dma.mapPage = (pfn: Pfn, offset: number, size: number, dir) => {
    if (fail()) throw new KernelError(Errno.ENOMEM, "DMA mapping failed (injected): IOVA space exhausted");
    return orig(pfn, offset, size, dir);
  };
}

export type { Gma, Iova };

// ---- a guest's PPGTT and logical ring contexts, as i915 builds them (for the execlist path) ------------------------

const TWO32 = 4294967296;
/** PVINFO pdp[0] (pvinfo.ts PVINFO_EXTRA.pdp) and the g2v L4 create / destroy notifications, as i915 spells them. */
const PVINFO_PDP0 = 0x838;
const G2V_L4_CREATE = 4;
const G2V_L4_DESTROY = 5;

/**
 * A guest's 4-level PPGTT in its own RAM, as i915's gen8_ppgtt builds one: every table a guest page, entries holding
 * guest-physical addresses. With `scratch` (i915's way) every unused entry of every level points at a scratch table
 * (and, at the last level, a scratch page), so the tables are full of present entries; without it they are zeros.
 */
export class GuestPpgtt {
  /** GPA of the PML4 (what the context's PDP0 holds and g2v announces). */
  readonly pml4: number;
  /** Guest tables by GPA: their level (0 = PML4). */
  readonly tables = new Map<number, number>();
  /** With scratch: the entry every unused slot of a level-n table holds (n = 0 for the PML4). */
  private readonly scratchEntry: number[] = [];

  constructor(
    readonly session: GuestSession,
    opts: { readonly scratch?: boolean } = {},
  ) {
    if (opts.scratch) {
      // Scratch page, then scratch PT, PD, PDP, each filled with the one below (gen8_init_scratch).
      let below = session.allocPage() + 3; // present | RW
      for (let level = 3; level >= 1; level--) {
        const t = session.allocPage();
        this.fill(t, below);
        this.scratchEntry[level] = below;
        below = t + 3;
      }
      this.scratchEntry[0] = below;
    }
    this.pml4 = this.newTable(0);
  }

  /**
   * Announces this PPGTT to the vGPU as i915's gen8_ppgtt_notify_vgt does: pdp[0] = the PML4's address, then
   * g2v_notify = L4 create (`destroy`: L4 destroy).
   */
  announce(destroy = false): void {
    this.session.setMmio(VGT_PVINFO_PAGE + PVINFO_PDP0, this.pml4 % TWO32);
    this.session.setMmio(VGT_PVINFO_PAGE + PVINFO_PDP0 + 4, Math.floor(this.pml4 / TWO32));
    this.session.setMmio(VGT_PVINFO_PAGE + PVINFO.g2vNotify, destroy ? G2V_L4_DESTROY : G2V_L4_CREATE);
  }

  /** Maps PPGTT address `addr` (page aligned) to guest page `gpa` (writable unless `readOnly`). */
  map(addr: number, gpa: number, readOnly = false): void {
    this.setPte(addr, gpa + (readOnly ? 1 : 3));
  }

  /** Writes the raw 64-bit PTE of `addr` (allocating the tables on the way). */
  setPte(addr: number, pte: number): void {
    this.session.writeGpa(this.pteGpa(addr), qword(pte));
  }

  /** Reads the raw PTE of `addr` (0 if its tables do not exist). */
  pte(addr: number): number {
    const b = this.session.readGpa(this.pteGpa(addr), 8);
    const dv = new DataView(b.buffer);
    return dv.getUint32(0, true) + dv.getUint32(4, true) * TWO32;
  }

  /** GPA of the PTE of `addr`, allocating the tables above it. */
  pteGpa(addr: number): number {
    const page = Math.floor(addr / PAGE_SIZE);
    let table = this.pml4;
    for (let level = 0; level < 3; level++) {
      const index = Math.floor(page / 2 ** (9 * (3 - level))) % 512;
      const at = table + 8 * index;
      const b = this.session.readGpa(at, 8);
      const dv = new DataView(b.buffer);
      const e = dv.getUint32(0, true) + dv.getUint32(4, true) * TWO32;
      const next = e - (e % PAGE_SIZE);
      if ((e & 1) === 0 || this.scratchEntry[level] === e) {
        const t = this.newTable(level + 1);
        this.session.writeGpa(at, qword(t + 3));
        table = t;
      } else {
        table = next;
      }
    }
    return table + 8 * (page % 512);
  }

  private newTable(level: number): number {
    const t = this.session.allocPage();
    this.fill(t, this.scratchEntry[level] ?? 0);
    this.tables.set(t, level);
    return t;
  }

  private fill(table: number, entry: number): void {
    const b = new Uint8Array(PAGE_SIZE);
    const dv = new DataView(b.buffer);
    for (let i = 0; i < 512; i++) {
      dv.setUint32(8 * i, entry % TWO32, true);
      dv.setUint32(8 * i + 4, Math.floor(entry / TWO32), true);
    }
    this.session.writeGpa(table, b);
  }
}

function qword(v: number): Uint8Array {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, v % TWO32, true);
  dv.setUint32(4, Math.floor(v / TWO32), true);
  return b;
}

/**
 * A guest logical ring context on `engine`, as i915 builds one: the image (LRC_PAGES pages of GGTT-mapped guest
 * memory, register state from lrcRegisterState, restore-inhibit set for a new context) and a ring of `ringPages`
 * pages, both in the vGPU's aperture; PDP0 = the PML4 of `ppgtt`. `emit` appends dwords at the ring's tail and
 * updates CTX_RING_TAIL in the image, as execlists_update_context does; `descriptor` is what i915 writes to ELSP.
 */
export class GuestContext {
  readonly image: { gma: number; gpas: number[] };
  readonly ring: { gma: number; gpas: number[] };
  readonly ringBytes: number;
  private tailOffset = 0;

  constructor(
    readonly session: GuestSession,
    readonly engine: GtEngineId,
    readonly ppgtt: GuestPpgtt,
    opts: { readonly ringPages?: number } = {},
  ) {
    const ringPages = opts.ringPages ?? 1;
    this.ringBytes = ringPages * PAGE_SIZE;
    this.image = session.allocGm(LRC_PAGES[engine]);
    this.ring = session.allocGm(ringPages);
    const regs = lrcRegisterState(engine, { ringStart: this.ring.gma, ringBytes: this.ringBytes, pml4: ppgtt.pml4 });
    session.writeGm(this.image, LRC_STATE_OFFSET, Array.from(regs));
  }

  /** i915's descriptor (valid, legacy 64-bit, privileged, the LRCA) with context id `ccid`, as [lo, hi]. */
  descriptor(ccid: number): [number, number] {
    const d = lrcDescriptor(this.image.gma, ccid);
    return [d.lo, d.hi];
  }

  /** Appends `dwords` (padded to a qword with MI_NOOP) to the ring and moves CTX_RING_TAIL past them. */
  emit(dwords: readonly number[]): void {
    const d = dwords.length % 2 === 1 ? [...dwords, MI_NOOP] : [...dwords];
    for (const v of d) {
      this.session.writeGm(this.ring, this.tailOffset, [v]);
      this.tailOffset = (this.tailOffset + 4) % this.ringBytes;
    }
    this.setReg(CTX_RING_TAIL, this.tailOffset);
  }

  get tail(): number {
    return this.tailOffset;
  }

  /** Dword `index` of the register state (a CTX_* value index). */
  reg(index: number): number {
    return this.session.readGmU32(this.image, LRC_STATE_OFFSET + 4 * index);
  }

  setReg(index: number, value: number): void {
    this.session.writeGm(this.image, LRC_STATE_OFFSET + 4 * index, [value]);
  }
}
