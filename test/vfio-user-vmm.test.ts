/**
 * Our VMM, unchanged, against a device in another process: an mtty served by vfio-user from a child process appears
 * in the VMM's host as an ordinary mdev (a one-type parent whose devices are RemoteVfioDevices), the VMM attaches it
 * by sysfs path through VFIO ioctls, and the guest drives the UART through port I/O and takes its INTx in its
 * handler. Every access crosses the socket; the interrupt comes back on a real eventfd.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Errno, KernelError } from "../src/core/index.ts";
import { UART_IER, UART_IER_RDI, UART_LSR, UART_RX, UART_TX } from "../src/devices/index.ts";
import type { MdevDeviceInstance, MdevParentDriver } from "../src/mdev/index.ts";
import { VFIO_DEVICE_API_PCI_STRING } from "../src/vfio/index.ts";
import { RemoteVfioDevice, VfioUserClient } from "../src/vfio-user/index.ts";
import { ServerChild } from "../src/vfio-user/testing/harness.ts";
import { Vmm } from "../src/vmm/index.ts";
import { createMdev, vmmTestHost } from "../src/vmm/testing.ts";

const UUID = "7e57a11e-0000-4000-8000-00000000beef";

/** An mdev parent whose one type is "the device at this vfio-user socket". */
function remoteParent(socketPath: string, made: RemoteVfioDevice[]): MdevParentDriver {
  return {
    parentName: "vfio-user",
    driverName: "vfio_user",
    types: [{ id: "remote", name: "vfio-user device", description: socketPath, deviceApi: VFIO_DEVICE_API_PCI_STRING }],
    availability: () => ({ instances: made.length === 0 ? 1 : 0 }),
    create: (uuid: string): MdevDeviceInstance => {
      const dev = new RemoteVfioDevice(VfioUserClient.connect({ socketPath }), { name: uuid });
      made.push(dev);
      return { ops: dev };
    },
    destroy: (instance: MdevDeviceInstance) => {
      const dev = made.find((d) => d === instance.ops);
      if (dev === undefined) throw new KernelError(Errno.ENODEV, "not ours");
      dev.client.close();
      made.splice(made.indexOf(dev), 1);
    },
  };
}

function drain(vmm: Vmm, port: number): string {
  let s = "";
  while (vmm.ioRead(port + UART_LSR, 1) & 0x01) s += String.fromCharCode(vmm.ioRead(port + UART_RX, 1));
  return s;
}

let server: ServerChild;
before(async () => {
  server = await ServerChild.start();
});
after(async () => {
  await server.stop();
});

describe("our VMM with a vfio-user device", () => {
  it("attaches a remote mtty by sysfs path; the guest's port I/O and INTx work across the socket", async () => {
    const h = vmmTestHost();
    const made: RemoteVfioDevice[] = [];
    h.mdev.registerParent(remoteParent(server.sockets.mtty, made));
    const sysfsdev = createMdev(h, "vfio-user", "vfio_user-remote", UUID);
    const vmm = Vmm.create(h.host, { name: "vm1", memoryBytes: 256 * 1024 * 1024 });
    const dev = vmm.attach({ sysfsdev });
    assert.equal(dev.name, UUID);
    assert.equal(dev.configRead(0, 2), 0x4348, "the remote device's config space, read through the socket");
    assert.equal(dev.bars.length, 2);
    assert.equal(dev.irqMode, "intx");
    const port = dev.barAddress(0);

    for (const c of "remote!") vmm.ioWrite(port + UART_TX, 1, c.charCodeAt(0));
    assert.equal(drain(vmm, port), "remote!");

    let received = "";
    const vectors: number[] = [];
    vmm.onInterrupt(dev, (v) => {
      vectors.push(v);
      received += drain(vmm, port);
    });
    vmm.ioWrite(port + UART_IER, 1, UART_IER_RDI);
    vmm.ioWrite(port + UART_TX, 1, 0x61);
    // The server wrote the eventfd; the reactor delivers it to the VMM's eventfd, which injects into the guest.
    const t0 = performance.now();
    while (received.length < 1 && performance.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 5));
    assert.equal(received, "a");
    // Synchronously, as a vCPU loop would look: the next interrupt (INTx was unmasked by the guest's EOI).
    vmm.ioWrite(port + UART_TX, 1, 0x62);
    assert.equal(made[0]!.pollInterrupts(), 1);
    assert.equal(received, "ab");
    assert.deepEqual(vectors, [dev.configRead(0x3c, 1), dev.configRead(0x3c, 1)]);
    const busy = await server.state();
    assert.equal(busy.mtty.irq.type, "intx");

    vmm.shutdown();
    h.mdev.remove(UUID);
    assert.equal(made.length, 0);
    const s = await server.waitState((x) => x.servers.mtty.connection === undefined);
    assert.equal(s.servers.mtty.connection, undefined, "the client went with the mdev");
    assert.equal(s.mtty.irq.type, "none");
    assert.equal(s.liveProcesses, 0);
  });
});
