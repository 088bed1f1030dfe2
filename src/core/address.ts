/**
 * Address kinds and page arithmetic.
 *
 * Every address in the model is a JavaScript number (exact to 2^53, enough for 52-bit physical addresses), branded by
 * what it addresses so that passing a guest-physical address where an IOVA is wanted fails to compile:
 *
 * - `Gpa`  guest-physical address (what the guest programs into its GTT entries)
 * - `Hva`  host-virtual address in one process (what the VMM hands to MAP_DMA as `vaddr`)
 * - `Hpa`  host-physical address (a frame of host memory)
 * - `Iova` I/O virtual address (what a device puts on the bus; translated by the system IOMMU)
 * - `Gma`  graphics memory address (what the GPU's engines use; translated by the GTT)
 *
 * Frame numbers are addresses shifted right by 12: `Pfn` (host frame), `Gfn` (guest frame), `IovaPfn`, `Vpn` (virtual
 * page in a process). BigInt appears only at wire and struct edges (see vfio/uapi).
 *
 * The brands cost nothing at run time: `gpa(x)` returns `x`. The checked constructors (`toGpa` and friends) validate
 * and are meant for values arriving from outside (ioctl arguments, scenario files).
 */
import { Errno } from "./errno.ts";
import { KernelError } from "./error.ts";

declare const brand: unique symbol;
/** A number branded with the kind of address it is. */
export type Branded<K extends string> = number & { readonly [brand]: K };

export type Gpa = Branded<"Gpa">;
export type Hva = Branded<"Hva">;
export type Hpa = Branded<"Hpa">;
export type Iova = Branded<"Iova">;
export type Gma = Branded<"Gma">;
export type Pfn = Branded<"Pfn">;
export type Gfn = Branded<"Gfn">;
export type IovaPfn = Branded<"IovaPfn">;
export type Vpn = Branded<"Vpn">;

export type AddressKind = "Gpa" | "Hva" | "Hpa" | "Iova" | "Gma";

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_MASK = PAGE_SIZE - 1;
export const SZ_2M = 2 * 1024 * 1024;
export const SZ_1G = 1024 * 1024 * 1024;
export const SZ_4G = 4 * SZ_1G;
/** Largest address the model represents exactly (52-bit physical / 57-bit virtual both fit under 2^53). */
export const MAX_ADDRESS = Number.MAX_SAFE_INTEGER;

export const gpa = (n: number): Gpa => n as Gpa;
export const hva = (n: number): Hva => n as Hva;
export const hpa = (n: number): Hpa => n as Hpa;
export const iova = (n: number): Iova => n as Iova;
export const gma = (n: number): Gma => n as Gma;
export const pfn = (n: number): Pfn => n as Pfn;
export const gfn = (n: number): Gfn => n as Gfn;
export const iovaPfn = (n: number): IovaPfn => n as IovaPfn;
export const vpn = (n: number): Vpn => n as Vpn;

/** Frame number of an address (address / 4096, exact for every safe integer). */
export function pageOf(addr: number): number {
  return Math.floor(addr / PAGE_SIZE);
}
/** First byte of a frame number. */
export function pageBase(frame: number): number {
  return frame * PAGE_SIZE;
}
/** Offset of an address within its 4 KiB page. */
export function pageOffset(addr: number): number {
  return addr % PAGE_SIZE;
}
export function isPageAligned(n: number): boolean {
  return n % PAGE_SIZE === 0;
}
export function alignDown(n: number, align: number): number {
  return n - (n % align);
}
export function alignUp(n: number, align: number): number {
  const r = n % align;
  return r === 0 ? n : n + (align - r);
}
/** Number of 4 KiB pages touched by [addr, addr+len). */
export function pagesSpanned(addr: number, len: number): number {
  if (len === 0) return 0;
  return pageOf(addr + len - 1) - pageOf(addr) + 1;
}
export function isPowerOfTwo(n: number): boolean {
  return n > 0 && Number.isInteger(Math.log2(n)) && 2 ** Math.log2(n) === n;
}
/** Smallest power of two >= n (n >= 1). */
export function roundUpPowerOfTwo(n: number): number {
  if (n <= 1) return 1;
  return 2 ** Math.ceil(Math.log2(n));
}
/** Linux's fls_long(x): index (1-based) of the most significant set bit, 0 for 0. */
export function fls(n: number): number {
  return n <= 0 ? 0 : Math.floor(Math.log2(n)) + 1;
}

/** Hex with 0x prefix, for messages and traces: `hex(0x1000)` = "0x1000". */
export function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

/** Validates a number arriving from outside as an address of the given kind. */
export function checkAddress(kind: AddressKind, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new KernelError(Errno.EINVAL, `${kind} ${n} is not a valid address: expected an integer in [0, 2^53)`);
  }
}
export function toGpa(n: number): Gpa {
  checkAddress("Gpa", n);
  return n as Gpa;
}
export function toHva(n: number): Hva {
  checkAddress("Hva", n);
  return n as Hva;
}
export function toHpa(n: number): Hpa {
  checkAddress("Hpa", n);
  return n as Hpa;
}
export function toIova(n: number): Iova {
  checkAddress("Iova", n);
  return n as Iova;
}
export function toGma(n: number): Gma {
  checkAddress("Gma", n);
  return n as Gma;
}

/** Converts a u64 read from a wire struct to a number, or fails with EINVAL/EOVERFLOW naming the field. */
export function u64ToNumber(v: bigint, field: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new KernelError(Errno.EOVERFLOW, `${field} = ${hex(v)} is beyond 2^53, which this model cannot represent`);
  }
  return Number(v);
}
