/**
 * scenario: assembling whole model systems from a config (system.ts); later, scenario files, the runner, the
 * isolation checker and reports.
 */
export * from "./system.ts";
