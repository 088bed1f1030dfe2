/**
 * core: the vocabulary every layer shares. Address kinds, errno and errors, trace events, time and randomness.
 * Depends on nothing else in the project.
 */
export * from "./address.ts";
export * from "./clock.ts";
export * from "./errno.ts";
export * from "./error.ts";
export * from "./rng.ts";
export * from "./sorted.ts";
export * from "./struct.ts";
export * from "./trace.ts";
export * from "./unix-socket.ts";
