/**
 * The benchmarks' baseline peer: a process that accepts one connection on a UNIX socket and echoes every vfio-user
 * message back as a reply with the same payload, through the same Channel, reactor and koffi layer as the server, but
 * with no device behind it: `node --import tsx echo-child.ts <socket path>`. Prints "ready" when listening; exits
 * when the connection closes. Received fds are closed (the Channel does it).
 */
import { SystemClock } from "../../core/index.ts";
import { Channel } from "../connection.ts";
import { acceptUnix, closeFd, listenUnix } from "../native.ts";
import { VFIO_USER_F_TYPE_REPLY } from "../protocol.ts";
import { EPOLLIN, Reactor } from "../reactor.ts";

const path = process.argv[2]!;
const listenFd = listenUnix(path, 1);
const watch = Reactor.shared().watch(
  listenFd,
  EPOLLIN,
  () => {
    const fd = acceptUnix(listenFd);
    if (fd < 0) return;
    watch.close();
    closeFd(listenFd);
    const ch: Channel = new Channel(
      fd,
      {
        label: "echo",
        maxMsgSize: 2 << 20,
        maxRecvFds: 16,
        maxSendFds: 16,
        writeTimeoutMs: 5000,
        maxQueuedBytes: 64 << 20,
        clock: new SystemClock(),
        watch: true,
        ref: true,
      },
      {
        onFrame: (f) => ch.send(f.id, f.cmd, VFIO_USER_F_TYPE_REPLY, 0, f.payload),
        onClose: () => process.exit(0),
      },
    );
  },
  true,
);
process.stdout.write("ready\n");
