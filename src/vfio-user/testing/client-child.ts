/**
 * A client process that holds a DMA test device busy and then waits to be killed (tests of abrupt disconnects):
 * `node --import tsx client-child.ts <dma socket>`. It maps 64 KiB of memfd guest RAM, wires an MSI eventfd, makes
 * the device pin two pages, prints "ready" and waits on stdin.
 */

import { GuestMemory, VfioUserClient } from "../client.ts";
import { eventfdCreate } from "../native.ts";
import { DMA_TEST_CMD, DMA_TEST_REG } from "./dma-device.ts";

const socketPath = process.argv[2]!;
const client = VfioUserClient.connect({ socketPath });
const ram = GuestMemory.create("guest-ram", 64 * 1024);
client.dmaMap({ iova: 0x100000, size: ram.size, memory: ram });
client.setIrqEventfds(1, 0, [eventfdCreate()]);
const w = (off: number, v: number) => client.regionWrite(0, off, new Uint8Array(new Uint32Array([v]).buffer));
w(DMA_TEST_REG.ADDR_LO, 0x100ff0);
w(DMA_TEST_REG.LEN, 32);
w(DMA_TEST_REG.PATTERN, 0x42);
w(DMA_TEST_REG.CMD, DMA_TEST_CMD.PIN_FILL);
process.stdout.write(`ready ${ram.bytes[0xff0]}\n`);
process.stdin.resume();
