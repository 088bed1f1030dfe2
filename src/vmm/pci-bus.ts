/**
 * The guest-visible PCI bus: slots with functions the guest reaches through config cycles, the windows BARs are
 * placed in, and the dispatch of guest MMIO and port I/O to the BAR that decodes an address.
 *
 * - Config access (`configRead/configWrite` by guest BDF): an empty slot reads all ones and ignores writes, as a
 *   master abort does. Bus 0 only; slot 0 is the host bridge and slot 1 the ISA bridge of a PC (not modelled, never
 *   given to devices), so devices get slots 2..31.
 * - Placement (`WindowAllocator`): first fit, naturally aligned (a BAR's address is a multiple of its size, as PCI
 *   requires), over the windows of the guest layout: I/O BARs in the port window, 32-bit memory BARs in the PCI hole,
 *   64-bit ones above RAM. Memory BARs are at least a page apart (4 KiB alignment minimum) so that an mmap-able BAR
 *   never shares a guest page with another (QEMU handles sub-page BARs with a relocation quirk instead).
 * - Dispatch (`AddressDispatch`): a sorted array of [start, end) entries searched by bisection; the hot path allocates
 *   nothing. Each entry names a `BarAccess` target and its BAR number, so one object serves all of a device's BARs.
 *
 * Not modelled: bridges and secondary buses, PCI Express (ECAM/MMCONFIG), the host bridge's own registers, the
 * 0xcf8/0xcfc port mechanism (callers name the BDF), prefetchable windows distinct from non-prefetchable ones.
 *
 * Invariants: entries of a dispatch space never overlap and stay sorted; allocated ranges of a window never overlap
 * and lie inside it; a slot holds at most one function.
 */
import { Errno, hex, KernelError } from "../core/index.ts";
import { type AddressWindow, formatBytes } from "./memory.ts";

/** The first slot a device may take (0: host bridge, 1: ISA bridge). */
export const FIRST_DEVICE_SLOT = 2;
export const PCI_SLOTS = 32;

/** What a guest BAR mapping reaches: a device's BAR accessors (offsets are within the BAR). */
export interface BarAccess {
  barRead(bar: number, offset: number, size: number): number;
  barWrite(bar: number, offset: number, size: number, value: number): void;
}

/** A function on the guest bus as config cycles reach it. */
export interface ConfigAccess {
  configRead(offset: number, size: number): number;
  configWrite(offset: number, size: number, value: number): void;
}

/** All ones of an access size: what a read that nobody decodes returns. */
export function allOnes(size: number): number {
  return size >= 8 ? 2 ** 53 - 1 : 2 ** (8 * size) - 1;
}

/** "0000:00:03.0" for a slot on bus 0. */
export function guestBdf(slot: number): string {
  return `0000:00:${slot.toString(16).padStart(2, "0")}.0`;
}

interface Allocation {
  readonly start: number;
  readonly end: number;
  readonly owner: string;
}

/** First-fit allocator of naturally aligned ranges in one window. */
export class WindowAllocator {
  private readonly used: Allocation[] = [];

  constructor(
    readonly name: string,
    readonly window: AddressWindow,
  ) {}

  /**
   * Places `size` bytes aligned to `align` (both powers of two); ENOSPC naming the window and what holds it when no
   * gap fits.
   */
  alloc(size: number, align: number, owner: string): number {
    let cursor = this.window.start;
    for (let i = 0; i <= this.used.length; i++) {
      const next = this.used[i];
      const start = Math.ceil(cursor / align) * align;
      const limit = next === undefined ? this.window.end : next.start;
      if (start + size <= limit) {
        this.used.splice(i, 0, { start, end: start + size, owner });
        return start;
      }
      if (next !== undefined) cursor = Math.max(cursor, next.end);
    }
    throw new KernelError(
      Errno.ENOSPC,
      `no room for ${formatBytes(size)} (aligned to ${formatBytes(align)}) for ${owner} in the ${this.name} window ` +
        `${hex(this.window.start)}-${hex(this.window.end)}` +
        (this.used.length > 0 ? ` (in use: ${this.used.map((u) => `${u.owner} ${hex(u.start)}`).join(", ")})` : ""),
    );
  }

  /** Releases the range that starts at `start` (no-op if none). */
  free(start: number): void {
    const i = this.used.findIndex((u) => u.start === start);
    if (i >= 0) this.used.splice(i, 1);
  }

  /** Allocated ranges, in address order. */
  allocations(): readonly Allocation[] {
    return this.used.slice();
  }
}

interface DispatchEntry {
  readonly start: number;
  readonly end: number;
  readonly target: BarAccess;
  readonly bar: number;
  readonly owner: string;
}

/** One address space of the guest (memory or I/O ports): which BAR decodes which address. */
export class AddressDispatch {
  private readonly entries: DispatchEntry[] = [];
  private last = -1;

  constructor(readonly name: string) {}

  /** Maps [start, start + size) to `target`'s BAR `bar`; EEXIST when it overlaps a mapping. */
  map(start: number, size: number, target: BarAccess, bar: number, owner: string): void {
    const end = start + size;
    let i = 0;
    while (i < this.entries.length && this.entries[i]!.end <= start) i++;
    const next = this.entries[i];
    if (next !== undefined && next.start < end) {
      throw new KernelError(
        Errno.EEXIST,
        `${this.name} ${hex(start)}-${hex(end)} for ${owner} overlaps ${next.owner} at ${hex(next.start)}-${hex(next.end)}`,
      );
    }
    this.entries.splice(i, 0, { start, end, target, bar, owner });
    this.last = -1;
  }

  /** Removes the mapping of `target`'s BAR `bar` (no-op if unmapped). */
  unmap(target: BarAccess, bar: number): void {
    const i = this.entries.findIndex((e) => e.target === target && e.bar === bar);
    if (i >= 0) this.entries.splice(i, 1);
    this.last = -1;
  }

  /** Index of the entry decoding `addr`, or -1. */
  find(addr: number): number {
    const l = this.last;
    if (l >= 0) {
      const e = this.entries[l]!;
      if (addr >= e.start && addr < e.end) return l;
    }
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.entries[mid]!.end <= addr) lo = mid + 1;
      else hi = mid;
    }
    const e = this.entries[lo];
    if (e === undefined || !(e.start <= addr)) return -1;
    this.last = lo;
    return lo;
  }

  /** A read of `size` bytes at `addr`, or -1 if nothing decodes it (the caller turns that into all ones). */
  read(addr: number, size: number): number {
    const i = this.find(addr);
    if (i < 0) return -1;
    const e = this.entries[i]!;
    return e.target.barRead(e.bar, addr - e.start, size);
  }

  /** A write; returns false if nothing decodes the address. */
  write(addr: number, size: number, value: number): boolean {
    const i = this.find(addr);
    if (i < 0) return false;
    const e = this.entries[i]!;
    e.target.barWrite(e.bar, addr - e.start, size, value);
    return true;
  }

  /** The mappings, in address order (for tests and the dashboard). */
  mappings(): readonly {
    readonly start: number;
    readonly end: number;
    readonly owner: string;
    readonly bar: number;
  }[] {
    return this.entries.map((e) => ({ start: e.start, end: e.end, owner: e.owner, bar: e.bar }));
  }
}

/** The guest's PCI bus 0, its BAR windows and its two address spaces. */
export class GuestPciBus {
  readonly io: WindowAllocator;
  readonly mmio32: WindowAllocator;
  readonly mmio64: WindowAllocator;
  readonly ioSpace = new AddressDispatch("I/O port range");
  readonly memSpace = new AddressDispatch("MMIO range");
  private readonly slots: (ConfigAccess | undefined)[] = new Array(PCI_SLOTS).fill(undefined);

  constructor(windows: { readonly io: AddressWindow; readonly mmio32: AddressWindow; readonly mmio64: AddressWindow }) {
    this.io = new WindowAllocator("I/O", windows.io);
    this.mmio32 = new WindowAllocator("32-bit MMIO", windows.mmio32);
    this.mmio64 = new WindowAllocator("64-bit MMIO", windows.mmio64);
  }

  /** Reserves a slot (the requested one, or the first free from 2); EBUSY / EINVAL / ENOSPC naming the slot. */
  reserveSlot(slot?: number): number {
    if (slot !== undefined) {
      if (!Number.isInteger(slot) || slot < FIRST_DEVICE_SLOT || slot >= PCI_SLOTS) {
        throw new KernelError(Errno.EINVAL, `PCI slot ${slot} is not one a device may take (2..31)`);
      }
      if (this.slots[slot] !== undefined) {
        throw new KernelError(Errno.EBUSY, `PCI slot ${slot} (${guestBdf(slot)}) is already taken`);
      }
      return slot;
    }
    for (let s = FIRST_DEVICE_SLOT; s < PCI_SLOTS; s++) if (this.slots[s] === undefined) return s;
    throw new KernelError(Errno.ENOSPC, "every PCI slot of bus 0 (2..31) is taken");
  }

  plug(slot: number, fn: ConfigAccess): void {
    if (this.slots[slot] !== undefined) {
      throw new KernelError(Errno.EBUSY, `PCI slot ${slot} (${guestBdf(slot)}) is already taken`);
    }
    this.slots[slot] = fn;
  }

  unplug(slot: number): void {
    this.slots[slot] = undefined;
  }

  /** The function in `slot`, if any. */
  function(slot: number): ConfigAccess | undefined {
    return this.slots[slot];
  }

  /** A config read by the guest: all ones for an empty slot. */
  configRead(slot: number, offset: number, size: number): number {
    const fn = this.slots[slot];
    return fn === undefined ? allOnes(size) : fn.configRead(offset, size);
  }

  configWrite(slot: number, offset: number, size: number, value: number): void {
    this.slots[slot]?.configWrite(offset, size, value);
  }

  /** Occupied slots in order. */
  occupied(): number[] {
    const out: number[] = [];
    for (let s = 0; s < PCI_SLOTS; s++) if (this.slots[s] !== undefined) out.push(s);
    return out;
  }
}
