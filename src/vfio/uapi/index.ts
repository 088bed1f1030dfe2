/**
 * vfio/uapi: include/uapi/linux/vfio.h as data. Ioctl request numbers, constants, struct codecs at Linux's byte
 * offsets, and capability chains. Used by the ioctl layer (simulated processes pass byte buffers in Linux's layouts)
 * and by vfio-user, whose messages carry these same structs. Depends only on core.
 */
export * from "./caps.ts";
export * from "./constants.ts";
export * from "./ioctl.ts";
export * from "./structs.ts";
