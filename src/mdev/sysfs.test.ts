import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Errno, KernelError } from "../core/index.ts";
import { checkVendorAttributeName, kstrtoul, mdevTypeDirName, parseCreateWrite, parseRemoveWrite } from "./sysfs.ts";

const U = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const errno = (e: Errno) => (err: unknown) => err instanceof KernelError && err.errno === e;

describe("mdev attribute parsing", () => {
  it("create takes 36 bytes, or 37 whatever the last byte is (Linux never reads it)", () => {
    assert.equal(parseCreateWrite(U), U);
    assert.equal(parseCreateWrite(`${U}\n`), U);
    assert.equal(parseCreateWrite(`${U} `), U);
    assert.equal(parseCreateWrite(U.toUpperCase()), U);
    assert.throws(() => parseCreateWrite(U.slice(0, 35)), errno(Errno.EINVAL));
    assert.throws(() => parseCreateWrite(`${U}\n\n`), /got 38 bytes/);
    assert.throws(() => parseCreateWrite(`${U.slice(0, 35)}g`), /not a UUID/);
    // 35 ASCII characters and a 2-byte one: 37 bytes, but the 36th byte is not a hex digit
    assert.throws(() => parseCreateWrite(`${U.slice(0, 35)}é`), /not a UUID/);
  });

  it("kstrtoul(buf, 0) reads decimal, 0x hex and 0 octal with one optional newline", () => {
    const ok: [string, bigint][] = [
      ["0", 0n],
      ["1", 1n],
      ["1\n", 1n],
      ["+7", 7n],
      ["0x1f", 31n],
      ["0X1F\n", 31n],
      ["017", 15n],
      ["00", 0n],
      ["18446744073709551615", 0xffff_ffff_ffff_ffffn],
    ];
    for (const [text, v] of ok) assert.equal(kstrtoul(text), v, text);
    for (const bad of ["", "\n", "abc", "-1", " 1", "1 ", "1\n\n", "08", "0x", "0xg", "1.0", "++1"]) {
      assert.throws(() => kstrtoul(bad), errno(Errno.EINVAL), JSON.stringify(bad));
    }
    assert.throws(() => kstrtoul("18446744073709551616"), errno(Errno.ERANGE));
  });

  it("remove: nonzero removes, zero does not, anything else is EINVAL (overflow too)", () => {
    assert.equal(parseRemoveWrite("1"), true);
    assert.equal(parseRemoveWrite("0x10\n"), true);
    assert.equal(parseRemoveWrite("0"), false);
    assert.throws(() => parseRemoveWrite("abc"), errno(Errno.EINVAL));
    assert.throws(() => parseRemoveWrite("99999999999999999999"), errno(Errno.EINVAL));
  });

  it("names types <driver>-<id> and vets vendor attribute names", () => {
    assert.equal(mdevTypeDirName("i915", "GVTg_V5_8"), "i915-GVTg_V5_8");
    checkVendorAttributeName("i915", "intel_vgpu/vgpu_id");
    for (const bad of ["", "remove", "iommu_group/x", "../x", "a//b", "a/./b", "/abs"]) {
      assert.throws(() => checkVendorAttributeName("drv", bad), errno(Errno.EINVAL), bad);
    }
  });
});
