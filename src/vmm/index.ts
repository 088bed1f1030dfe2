/**
 * vmm: a QEMU-like VMM. One host process owns guest RAM laid out like a PC (memory.ts) and attaches devices by sysfs
 * path through the VFIO ioctl interface only (vfio-container.ts: containers, groups, device fds), with one generic
 * vfio-pci frontend for every device (vfio-pci.ts, with its BARs in vfio-region.ts and its interrupts in
 * vfio-interrupts.ts): an mdev vGPU, an mtty, a whole physical device. The guest's side is its MMIO and port I/O
 * (pci-bus.ts), its PCI config cycles, its RAM and its interrupt handlers (irq.ts); for a guest driver the VMM provides
 * the machine as guest/platform.ts describes it (guest-platform.ts, with the guest kernel's page allocator in
 * guest-pages.ts). Depends on core, host and vfio.
 */
export * from "./guest-pages.ts";
export * from "./guest-platform.ts";
export * from "./irq.ts";
export * from "./memory.ts";
export * from "./pci-bus.ts";
export { VfioSpace, type VfioSpaceEnv, VmmContainer, VmmGroup } from "./vfio-container.ts";
export * from "./vfio-interrupts.ts";
export * from "./vfio-pci.ts";
export * from "./vfio-region.ts";
export * from "./vmm.ts";
