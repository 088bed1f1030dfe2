/** The version `vgpu --version` prints (package.json's; test/cli-startup.test.ts keeps them equal). */
export const VERSION = "0.1.0";
