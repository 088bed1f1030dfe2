/**
 * Linux errno values (asm-generic/errno-base.h and errno.h, as on x86_64 and arm64).
 * Only the values this project returns are listed; each is the number Linux uses, so a wire protocol (vfio-user's
 * error_no) or an ioctl return (-errno) carries them unchanged.
 */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENODATA: 61,
  EPROTO: 71,
  EOVERFLOW: 75,
  EBADFD: 77,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EALREADY: 114,
  EINPROGRESS: 115,
  ECANCELED: 125,
} as const;

export type ErrnoName = keyof typeof Errno;
export type Errno = (typeof Errno)[ErrnoName];

const names = new Map<number, ErrnoName>();
for (const [k, v] of Object.entries(Errno)) names.set(v, k as ErrnoName);

/** Symbolic name of an errno value ("EINVAL"), or "E<n>" for one this table does not list. */
export function errnoName(errno: number): string {
  return names.get(errno) ?? `E${errno}`;
}

/** strerror(3) texts for the listed values, as glibc prints them. */
const strings: Partial<Record<ErrnoName, string>> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  ESRCH: "No such process",
  EINTR: "Interrupted system call",
  EIO: "Input/output error",
  ENXIO: "No such device or address",
  E2BIG: "Argument list too long",
  EBADF: "Bad file descriptor",
  ECHILD: "No child processes",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EFAULT: "Bad address",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  ENODEV: "No such device",
  ENOTDIR: "Not a directory",
  EISDIR: "Is a directory",
  EINVAL: "Invalid argument",
  EMFILE: "Too many open files",
  ENOTTY: "Inappropriate ioctl for device",
  ENOSPC: "No space left on device",
  EROFS: "Read-only file system",
  EPIPE: "Broken pipe",
  ERANGE: "Numerical result out of range",
  ENOSYS: "Function not implemented",
  ENOTEMPTY: "Directory not empty",
  EPROTO: "Protocol error",
  EOVERFLOW: "Value too large for defined data type",
  EBADFD: "File descriptor in bad state",
  EMSGSIZE: "Message too long",
  EOPNOTSUPP: "Operation not supported",
  ECONNRESET: "Connection reset by peer",
  ENOTCONN: "Transport endpoint is not connected",
  EADDRINUSE: "Address already in use",
  EALREADY: "Operation already in progress",
  EINPROGRESS: "Operation now in progress",
  ECANCELED: "Operation canceled",
  ENODATA: "No data available",
  EXDEV: "Invalid cross-device link",
  ELOOP: "Too many levels of symbolic links",
  ENAMETOOLONG: "File name too long",
  EFBIG: "File too large",
  ENFILE: "Too many open files in system",
  ESPIPE: "Illegal seek",
  EDEADLK: "Resource deadlock avoided",
  ETIMEDOUT: "Connection timed out",
  ECONNREFUSED: "Connection refused",
};

export function strerror(errno: number): string {
  const n = names.get(errno);
  return (n && strings[n]) ?? `Unknown error ${errno}`;
}
