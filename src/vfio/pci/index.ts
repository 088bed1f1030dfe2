/**
 * vfio/pci: vfio-pci, the vfio bus driver for whole-device assignment of a physical PCI function. The driver binds
 * devices and registers them with vfio-core (vfio-pci.ts); each bound device implements VfioDeviceOps with a
 * virtualized config space (config.ts), interrupts forwarded to eventfds (intrs.ts) and trapped BAR access (rdwr.ts).
 */
export { VfioPciConfig, type VfioPciConfigHooks, type VfioPciConfigOptions } from "./config.ts";
export { VfioPciIrqs, type VfioPciIrqsOptions } from "./intrs.ts";
export { vfioPciBarRw } from "./rdwr.ts";
export {
  VFIO_PCI_DRIVER_NAME,
  type VfioCoreForPci,
  VfioPciDevice,
  type VfioPciDeviceOptions,
  VfioPciDriver,
  type VfioPciDriverOptions,
} from "./vfio-pci.ts";
