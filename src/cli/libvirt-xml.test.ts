/** libvirt node-device XML: names as libvirt >= 7.8 builds them, element order as virNodeDeviceDefFormat. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { escapeXml, formatNodeDeviceXml, mdevNodeName, parentNodeName } from "./libvirt-xml.ts";

const U = "4b20d080-1b54-4048-85b3-a6a62d165c01";

describe("libvirt node-device XML", () => {
  it("names PCI and virtual parents, and mdevs with their parent", () => {
    assert.equal(parentNodeName("0000:00:02.0"), "pci_0000_00_02_0");
    assert.equal(parentNodeName("0000:0A:00.1"), "pci_0000_0a_00_1");
    assert.equal(parentNodeName("mtty"), "mtty");
    assert.equal(mdevNodeName(U, "0000:00:02.0"), "mdev_4b20d080_1b54_4048_85b3_a6a62d165c01_0000_00_02_0");
  });

  it("prints a running device with path, driver and IOMMU group, attributes last", () => {
    assert.equal(
      formatNodeDeviceXml({
        uuid: U,
        parent: "0000:00:02.0",
        mdevType: "i915-GVTg_V5_4",
        attrs: [{ name: "a<b", value: "'x'&" }],
        iommuGroup: 7,
        sysfsPath: `/sys/devices/pci0000:00/0000:00:02.0/${U}`,
        driver: "i915",
      }),
      [
        "<device>",
        "  <name>mdev_4b20d080_1b54_4048_85b3_a6a62d165c01_0000_00_02_0</name>",
        `  <path>/sys/devices/pci0000:00/0000:00:02.0/${U}</path>`,
        "  <parent>pci_0000_00_02_0</parent>",
        "  <driver>",
        "    <name>i915</name>",
        "  </driver>",
        "  <capability type='mdev'>",
        "    <type id='i915-GVTg_V5_4'/>",
        `    <uuid>${U}</uuid>`,
        "    <parent_addr>0000:00:02.0</parent_addr>",
        "    <iommuGroup number='7'/>",
        "    <attr name='a&lt;b' value='&apos;x&apos;&amp;'/>",
        "  </capability>",
        "</device>",
        "",
      ].join("\n"),
    );
  });

  it("leaves out what only a running device has", () => {
    const xml = formatNodeDeviceXml({ uuid: U, parent: "mtty", mdevType: "mtty-1", attrs: [] });
    assert.doesNotMatch(xml, /<path>|<driver>|iommuGroup/);
    assert.match(xml, /<parent>mtty<\/parent>/);
    assert.equal(escapeXml(`<&>"'`), "&lt;&amp;&gt;&quot;&apos;");
  });
});
