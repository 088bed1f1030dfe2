/**
 * PCI addresses: segment (domain), bus, device, function, written "0000:00:02.0" as lspci and sysfs do.
 *
 * `Bdf` is a branded string in the canonical long, lower-case form, so two spellings of one device ("00:02.0" and
 * "0000:00:02.0") compare equal as strings and a plain string cannot be passed where a checked address is wanted.
 * `parseBdf` accepts the long form and lspci's short form (segment 0 implied) and rejects anything else with EINVAL.
 *
 * The 16-bit requester id (bus << 8 | device << 3 | function) is what a device puts on the bus and what VT-d uses as
 * the fault record's source id; `requesterId` computes it.
 *
 * Not modelled: ARI (extended function numbers), bus numbers assigned by enumeration.
 */
import { Errno, KernelError } from "../core/index.ts";

declare const bdfBrand: unique symbol;
/** A PCI address in canonical form "ssss:bb:dd.f" (lower-case hex), produced only by `parseBdf` / `formatBdf`. */
export type Bdf = string & { readonly [bdfBrand]: "Bdf" };

export interface BdfFields {
  /** PCI segment (domain), 0..0xffff. */
  readonly segment: number;
  /** 0..0xff */
  readonly bus: number;
  /** 0..0x1f */
  readonly device: number;
  /** 0..7 */
  readonly fn: number;
}

const LONG = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;
const SHORT = /^([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;

function hexPad(n: number, width: number): string {
  return n.toString(16).padStart(width, "0");
}

/** Builds the canonical address from its fields; EINVAL naming the field that is out of range. */
export function formatBdf(f: BdfFields): Bdf {
  const check = (name: string, v: number, max: number): void => {
    if (!Number.isInteger(v) || v < 0 || v > max) {
      throw new KernelError(Errno.EINVAL, `PCI ${name} ${v} is out of range: expected an integer in [0, ${max}]`);
    }
  };
  check("segment", f.segment, 0xffff);
  check("bus", f.bus, 0xff);
  check("device", f.device, 0x1f);
  check("function", f.fn, 7);
  return `${hexPad(f.segment, 4)}:${hexPad(f.bus, 2)}:${hexPad(f.device, 2)}.${f.fn}` as Bdf;
}

/**
 * Parses "ssss:bb:dd.f" or "bb:dd.f" (hex, either case) into the canonical `Bdf`.
 * EINVAL with the offending text when the syntax is wrong or the device number exceeds 0x1f.
 */
export function parseBdf(text: string): Bdf {
  const long = LONG.exec(text);
  const m = long ?? SHORT.exec(text);
  if (m === null) {
    throw new KernelError(
      Errno.EINVAL,
      `'${text}' is not a PCI address: expected segment:bus:device.function in hex, e.g. 0000:00:02.0`,
    );
  }
  const parts = long ? m.slice(1) : ["0000", ...m.slice(1)];
  const device = Number.parseInt(parts[2]!, 16);
  if (device > 0x1f) {
    throw new KernelError(
      Errno.EINVAL,
      `'${text}' is not a PCI address: device number 0x${device.toString(16)} exceeds 0x1f`,
    );
  }
  return formatBdf({
    segment: Number.parseInt(parts[0]!, 16),
    bus: Number.parseInt(parts[1]!, 16),
    device,
    fn: Number.parseInt(parts[3]!, 10),
  });
}

/** True when `text` parses as a PCI address (either form). */
export function isBdf(text: string): boolean {
  const m = LONG.exec(text) ?? SHORT.exec(text);
  if (m === null) return false;
  const dev = m.length === 5 ? m[3]! : m[2]!;
  return Number.parseInt(dev, 16) <= 0x1f;
}

/** The fields of a canonical address. */
export function bdfFields(bdf: Bdf): BdfFields {
  const m = LONG.exec(bdf);
  if (m === null) throw new KernelError(Errno.EINVAL, `'${bdf}' is not a canonical PCI address`);
  return {
    segment: Number.parseInt(m[1]!, 16),
    bus: Number.parseInt(m[2]!, 16),
    device: Number.parseInt(m[3]!, 16),
    fn: Number.parseInt(m[4]!, 10),
  };
}

/** PCIe requester id: bus << 8 | device << 3 | function (the segment is not part of it). */
export function requesterId(bdf: Bdf): number {
  const f = bdfFields(bdf);
  return (f.bus << 8) | (f.device << 3) | f.fn;
}
