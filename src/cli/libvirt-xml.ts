/**
 * libvirt node-device XML for mediated devices, as `virsh nodedev-dumpxml` prints it (virNodeDeviceDefFormat in
 * libvirt's src/conf/node_device_conf.c): `<device>` with `<name>`, `<path>`, `<parent>`, `<driver>`, then
 * `<capability type='mdev'>` holding `<type id=.../>`, `<uuid>`, `<parent_addr>`, `<iommuGroup number=.../>` and one
 * `<attr name=... value=.../>` per attribute, indented by two spaces per level.
 *
 * Names follow libvirt >= 7.8: a mediated device is `mdev_<uuid>_<parent>` with every character that is not a
 * letter or digit turned into `_` (so one UUID defined under two parents gives two names), and a PCI parent is
 * `pci_<domain>_<bus>_<slot>_<function>`.
 *
 * Differences from libvirt, on purpose: a defined device that is not running has no `<path>`, `<driver>` or
 * `<iommuGroup>` (libvirt prints group 0 for it, which is no group at all), and attribute values are escaped
 * (libvirt writes them raw).
 */
import type { MdevAttr } from "./mdevctl-json.ts";

export interface NodeDeviceInput {
  readonly uuid: string;
  readonly parent: string;
  readonly mdevType: string;
  readonly attrs: readonly MdevAttr[];
  /** Only for running devices. */
  readonly iommuGroup?: number;
  readonly sysfsPath?: string;
  readonly driver?: string;
}

const PCI_BDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i;

function sanitize(s: string): string {
  return s.replace(/[^A-Za-z0-9]/g, "_");
}

/** libvirt's node-device name of a parent device. */
export function parentNodeName(parent: string): string {
  return PCI_BDF.test(parent) ? `pci_${sanitize(parent.toLowerCase())}` : sanitize(parent);
}

/** libvirt's node-device name of a mediated device. */
export function mdevNodeName(uuid: string, parent: string): string {
  return `mdev_${sanitize(uuid)}_${sanitize(parent)}`;
}

export function escapeXml(s: string): string {
  return s.replace(/[&<>'"]/g, (c) =>
    c === "&" ? "&amp;" : c === "<" ? "&lt;" : c === ">" ? "&gt;" : c === "'" ? "&apos;" : "&quot;",
  );
}

/** One `<device>` element, with a trailing newline. */
export function formatNodeDeviceXml(d: NodeDeviceInput): string {
  const lines: string[] = ["<device>"];
  lines.push(`  <name>${escapeXml(mdevNodeName(d.uuid, d.parent))}</name>`);
  if (d.sysfsPath !== undefined) lines.push(`  <path>${escapeXml(d.sysfsPath)}</path>`);
  lines.push(`  <parent>${escapeXml(parentNodeName(d.parent))}</parent>`);
  if (d.driver !== undefined) {
    lines.push("  <driver>", `    <name>${escapeXml(d.driver)}</name>`, "  </driver>");
  }
  lines.push("  <capability type='mdev'>");
  lines.push(`    <type id='${escapeXml(d.mdevType)}'/>`);
  lines.push(`    <uuid>${escapeXml(d.uuid)}</uuid>`);
  lines.push(`    <parent_addr>${escapeXml(d.parent)}</parent_addr>`);
  if (d.iommuGroup !== undefined) lines.push(`    <iommuGroup number='${d.iommuGroup}'/>`);
  for (const a of d.attrs) lines.push(`    <attr name='${escapeXml(a.name)}' value='${escapeXml(a.value)}'/>`);
  lines.push("  </capability>", "</device>");
  return `${lines.join("\n")}\n`;
}
