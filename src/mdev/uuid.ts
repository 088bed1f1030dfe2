/**
 * Mediated-device UUIDs, as Linux reads and names them.
 *
 * Linux's uuid_is_valid / guid_parse (lib/uuid.c) accept exactly the 8-4-4-4-12 form: hex digits in either case and
 * dashes at offsets 8, 13, 18 and 23, checking the first 36 characters. An mdev's device name is the UUID printed
 * with %pUl: lower case. `parseUuid` returns that name; `isValidUuid` is the test alone. Unlike uuid_is_valid, which
 * never looks past character 36, both require the string to be exactly 36 characters: trailing bytes are the
 * caller's business (the `create` attribute decides what it tolerates, see sysfs.ts).
 *
 * `randomUuid` makes a version-4 UUID from an injected Rng (mdevctl generates one when none is given), so runs stay
 * replayable.
 */
import { Errno, KernelError, type Rng } from "../core/index.ts";

/** UUID_STRING_LEN */
export const UUID_STRING_LEN = 36;

const DASHES = [8, 13, 18, 23];

function isHex(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66);
}

/** True for a 36-character 8-4-4-4-12 hex UUID (either case). */
export function isValidUuid(text: string): boolean {
  if (text.length !== UUID_STRING_LEN) return false;
  for (let i = 0; i < UUID_STRING_LEN; i++) {
    const c = text.charCodeAt(i);
    if (DASHES.includes(i)) {
      if (c !== 0x2d) return false;
    } else if (!isHex(c)) {
      return false;
    }
  }
  return true;
}

/** The device name of a UUID (lower case). EINVAL, quoting the text, when it is not a UUID. */
export function parseUuid(text: string): string {
  if (!isValidUuid(text)) {
    throw new KernelError(
      Errno.EINVAL,
      `'${printable(text)}' is not a UUID: expected 36 characters, 8-4-4-4-12 hex digits separated by dashes ` +
        "(e.g. 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001)",
    );
  }
  return text.toLowerCase();
}

/** A version-4 (random), variant-1 UUID from `rng`, lower case. */
export function randomUuid(rng: Rng): string {
  const b = new Uint8Array(16);
  rng.fill(b);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Shows control characters (a trailing newline, say) in messages instead of breaking the line. */
export function printable(text: string): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x0a) out += "\\n";
    else if (c < 0x20 || c === 0x7f) out += `\\x${c.toString(16).padStart(2, "0")}`;
    else out += text[i];
  }
  return out;
}
