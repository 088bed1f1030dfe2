/**
 * Errors as values: a Linux errno plus a sentence a person can act on.
 *
 * Model code throws `KernelError` where Linux returns -errno; boundaries that speak numbers (the syscall layer, the
 * vfio-user wire) catch it and pass `errno` on. `Result<T>` is for callers that prefer to branch rather than catch.
 * Any other thrown value is a bug in the model, never an expected outcome.
 */
import { type Errno, errnoName, strerror } from "./errno.ts";

export class KernelError extends Error {
  override readonly name = "KernelError";
  readonly errno: Errno;
  /** What the caller passed or what state was found, for tools that want more than the sentence. */
  readonly detail: Readonly<Record<string, unknown>> | undefined;

  constructor(errno: Errno, message: string, detail?: Record<string, unknown>) {
    super(message);
    this.errno = errno;
    this.detail = detail;
  }

  /** "EINVAL" */
  get code(): string {
    return errnoName(this.errno);
  }

  /** "EINVAL (Invalid argument): <sentence>" — the form the CLI prints. */
  describe(): string {
    return `${this.code} (${strerror(this.errno)}): ${this.message}`;
  }
}

export function isKernelError(e: unknown): e is KernelError {
  return e instanceof KernelError;
}

export type Ok<T> = { readonly ok: true; readonly value: T };
export type Err = { readonly ok: false; readonly error: KernelError };
export type Result<T> = Ok<T> | Err;

export const ok = <T>(value: T): Ok<T> => ({ ok: true, value });
export const err = (error: KernelError): Err => ({ ok: false, error });

/** Runs `fn`, turning a thrown KernelError into an `Err`; anything else is rethrown (it is a bug). */
export function attempt<T>(fn: () => T): Result<T> {
  try {
    return ok(fn());
  } catch (e) {
    if (e instanceof KernelError) return err(e);
    throw e;
  }
}

/** Throws EINVAL with the sentence unless `cond` holds: the common argument check. */
export function check(cond: boolean, errno: Errno, message: string | (() => string)): asserts cond {
  if (!cond) throw new KernelError(errno, typeof message === "string" ? message : message());
}
