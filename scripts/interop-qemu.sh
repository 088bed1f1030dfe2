#!/usr/bin/env bash
# Interop check by hand: a real QEMU (>= 10.1, with the vfio-user-pci client) attaches an mtty served by `vgpu serve`
# over vfio-user, and this script acts as the guest through QEMU's qtest protocol:
#   1. finds the device by scanning PCI config space (outl 0xcf8 / inl 0xcfc) for vendor:device 4348:3253;
#   2. sizes and programs its I/O BAR0, enables I/O decoding;
#   3. drives the UART through port I/O: IER = RDI, THR = 'A' (mtty loops it back), LSR shows data ready, IIR shows
#      the receive interrupt, RBR returns 'A';
#   4. checks that the device's INTx reached the guest's IOAPIC (qtest "IRQ raise" after irq_intercept_in ioapic);
#   5. quits QEMU and checks that the server released the session cleanly ("problems: none").
# Then a DMA check with the test-only DMA device (src/vfio-user/testing): the guest programs its memory BAR, makes it
# fill guest RAM through vfio_dma_rw (memfd window, type1) and through pinned host frames, reads RAM and the BIOS ROM
# back (the ROM window has no fd: the server reads it with DMA_READ messages in QEMU's layout), and the server's host
# model is checked for leaks after QEMU leaves. Last, when the host model offers a vGPU type, QEMU attaches one and
# reads the PVINFO magic from its BAR0 through MMIO.
# The guest RAM is shared (memory-backend-memfd or memory-backend-file, share=on), so QEMU's DMA_MAP messages carry
# fds and the server maps the RAM into the host model; its ROMs come without fds. Guests of 8 GiB (RAM above 4 GiB,
# one memfd in two windows) and RAM in a plain file (which cannot be sealed: the server serves it by guarded copies,
# and a file the client shrinks turns DMA into EFAULT instead of killing the server) are checked too.
#
# usage: scripts/interop-qemu.sh            (QEMU from $QEMU, else /tmp/qemu-vfio-user/src/build/qemu-system-x86_64;
#                                             build one with /work/shared/tools/build-qemu-vfio-user.sh)
# Exit status: 0 passed or skipped (no QEMU; says so), 1 a check failed.
set -uo pipefail
cd "$(dirname "$0")/.."

QEMU=${QEMU:-/tmp/qemu-vfio-user/src/build/qemu-system-x86_64}
if [ ! -x "$QEMU" ]; then
  echo "SKIP: no QEMU with vfio-user-pci found (set QEMU=/path/to/qemu-system-x86_64, or build one with" \
    "/work/shared/tools/build-qemu-vfio-user.sh /tmp/qemu-vfio-user)"
  exit 0
fi
if ! "$QEMU" -device help 2>/dev/null | grep -q vfio-user-pci; then
  echo "SKIP: $QEMU has no vfio-user-pci device (QEMU >= 10.1 built with CONFIG_VFIO_USER is needed)"
  exit 0
fi
BIOSDIR=${BIOSDIR:-/usr/share/seabios}

WORK=$(mktemp -d /tmp/vgpu-interop.XXXXXX)
SOCK="$WORK/mtty.sock"
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null
  [ -n "${QT_PID:-}" ] && kill "$QT_PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  echo "--- server log ---"; cat "$WORK/serve.err" 2>/dev/null
  echo "--- qemu stderr ---"; cat "$WORK/qemu.err" 2>/dev/null
  exit 1
}

# ---- the server ----
node --import tsx src/cli/commands/serve.ts --type mtty-2 --socket "$SOCK" --once \
  >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
for _ in $(seq 1 100); do
  grep -q "serving" "$WORK/serve.out" 2>/dev/null && break
  kill -0 "$SERVE_PID" 2>/dev/null || fail "vgpu serve exited early"
  sleep 0.1
done
grep -q "serving" "$WORK/serve.out" || fail "vgpu serve did not come up within 10 s"
echo "server: $(cat "$WORK/serve.out")"

# ---- QEMU as a qtest target ----
start_qemu() { # start_qemu <socket> [memory-backend object] [size]: default a 256M shared memfd
  local backend=${2:-memory-backend-memfd,id=ram,size=256M,share=on} size=${3:-256M}
  coproc QT {
    exec "$QEMU" -M q35 -accel qtest -qtest stdio -qtest-log /dev/null -display none -nodefaults -L "$BIOSDIR" \
      -object "$backend" -machine memory-backend=ram -m "$size" \
      -device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$1\",\"type\":\"unix\"}}" 2>"$WORK/qemu.err"
  }
  QT_PID=$QT_PID
  IRQS=()
}
stop_qemu() { # end of input: QEMU leaves, which closes its vfio-user connection
  eval "exec ${QT[1]}>&-"
  for _ in $(seq 1 50); do kill -0 "$QT_PID" 2>/dev/null || break; sleep 0.1; done
  kill "$QT_PID" 2>/dev/null
  wait "$QT_PID" 2>/dev/null
  QT_PID=
}
# Sends one qtest command and sets REPLY_VALUE to its answer (the text after "OK", empty for none).
qt() {
  echo "$1" >&"${QT[1]}" || fail "QEMU went away (sending '$1')"
  local line
  while :; do
    IFS= read -r -t 10 line <&"${QT[0]}" || fail "no answer from QEMU to '$1'"
    case "$line" in
      IRQ*) IRQS+=("$line") ;;
      OK*) REPLY_VALUE=${line#OK}; REPLY_VALUE=${REPLY_VALUE# }; return 0 ;;
      *) fail "QEMU answered '$line' to '$1'" ;;
    esac
  done
}
expect() { # expect <what> <got> <want>
  if [ "$(($2))" -ne "$(($3))" ]; then fail "$1: got $2, expected $3"; fi
  echo "ok: $1 = $2"
}

find_device() { # find_device <vendor:device as 0xDDDDVVVV> <name>: sets CFG to its config address
  local s
  for s in $(seq 0 31); do
    qt "outl 0xcf8 $(printf '0x%x' $((0x80000000 | (s << 11))))"
    qt "inl 0xcfc"
    if [ "$((REPLY_VALUE))" -eq $(($1)) ]; then
      CFG=$((0x80000000 | (s << 11)))
      echo "ok: $2 found at 00:$(printf '%02x' "$s").0"
      return 0
    fi
  done
  fail "no $2 on bus 0"
}
cfg() { qt "outl 0xcf8 $(printf '0x%x' $((CFG | $1)))"; }

echo "== mtty over vfio-user (guest RAM: memory-backend-file share=on) =="
start_qemu "$SOCK" "memory-backend-file,id=ram,size=256M,share=on,mem-path=$WORK/mtty-ram" 256M
qt "irq_intercept_in ioapic"
find_device 0x32534348 "mtty (4348:3253)"

cfg 0x08; qt "inl 0xcfc"; expect "class/revision" "$REPLY_VALUE" 0x07000210
cfg 0x10; qt "outl 0xcfc 0xffffffff"; qt "inl 0xcfc"; expect "BAR0 sizing (8-byte I/O)" "$REPLY_VALUE" 0xfffffff9
IO=0xc000
qt "outl 0xcfc $IO"; qt "inl 0xcfc"; expect "BAR0 programmed" "$REPLY_VALUE" $((IO | 1))
cfg 0x3c; qt "inl 0xcfc"; expect "interrupt pin (INTA#)" "$(( (REPLY_VALUE >> 8) & 0xff ))" 1
cfg 0x04; qt "outw 0xcfc 0x0001"; qt "inw 0xcfc"; expect "command (I/O on)" "$REPLY_VALUE" 1

qt "outb $((IO + 1)) 0x01"                            # IER = RDI
qt "outb $((IO + 0)) 0x41"                            # THR = 'A' (looped back)
qt "inb $((IO + 5))"; expect "LSR data ready" "$((REPLY_VALUE & 1))" 1
qt "inb $((IO + 2))"; expect "IIR receive interrupt" "$((REPLY_VALUE & 0x0f))" 0x04
qt "inb $((IO + 0))"; expect "RBR" "$REPLY_VALUE" 0x41
qt "inb $((IO + 5))"; expect "LSR empty again" "$((REPLY_VALUE & 1))" 0
qt "outb $((IO + 7)) 0x5a"; qt "inb $((IO + 7))"; expect "SCR scratch" "$REPLY_VALUE" 0x5a
# A posted-write burst, then a read that must see all of it (vfio-user messages are handled in order).
for b in 1 2 3 4 5 6 7 8; do qt "outb $((IO + 0)) 0x3$b"; done
qt "inb $((IO + 0))"; expect "first of 8 bytes looped back" "$REPLY_VALUE" 0x31
qt "clock_step 1000000"
if [ "${#IRQS[@]}" -eq 0 ]; then fail "no interrupt reached the IOAPIC"; fi
echo "ok: interrupts seen by the guest: ${IRQS[*]}"

stop_qemu

for _ in $(seq 1 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$SERVE_PID" 2>/dev/null && fail "vgpu serve --once did not exit after QEMU left"
wait "$SERVE_PID"; rc=$?
SERVE_PID=
[ "$rc" -eq 0 ] || fail "vgpu serve exited with $rc"
grep -q "problem:" "$WORK/serve.err" && fail "the server reported problems releasing the session"
grep "ended:" "$WORK/serve.err" | sed 's/^/server: /'

# ---- DMA: the test device served by the test server process ----
echo "== DMA test device over vfio-user =="
mkfifo "$WORK/ctl"
node --import tsx src/vfio-user/testing/server-child.ts "{\"dir\":\"$WORK\"}" <"$WORK/ctl" >"$WORK/child.out" \
  2>"$WORK/serve.err" &
SERVE_PID=$!
exec {CTL}>"$WORK/ctl"
for _ in $(seq 1 100); do grep -q ready "$WORK/child.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$WORK/child.out" || fail "the test server did not come up"
start_qemu "$WORK/dma.sock"
find_device 0x0d3a1b36 "DMA test device (1b36:0d3a)"
BAR=0xfe000000
cfg 0x10; qt "outl 0xcfc $BAR"
cfg 0x04; qt "outw 0xcfc 0x0006"
rl() { qt "readl $(printf '0x%x' $(($1)))"; }
wl() { qt "writel $(printf '0x%x' $(($1))) $(printf '0x%x' $(($2)))"; }
rl "$BAR + 0x00"; expect "device id register" "$REPLY_VALUE" 0x0d3a7e57
# FILL 64 bytes of guest RAM at 1 MiB with 0xa5 (vfio_dma_rw through the memfd window and type1)
wl "$BAR + 0x08" 0x100000; wl "$BAR + 0x0c" 0; wl "$BAR + 0x10" 64; wl "$BAR + 0x14" 0xa5; wl "$BAR + 0x18" 1
rl "$BAR + 0x1c"; expect "FILL status" "$REPLY_VALUE" 0
rl 0x100000; expect "guest RAM at 0x100000" "$REPLY_VALUE" 0xa5a5a5a5
rl 0x10003c; expect "guest RAM at 0x10003c" "$REPLY_VALUE" 0xa5a5a5a5
rl 0x100040; expect "guest RAM at 0x100040 untouched" "$REPLY_VALUE" 0
# PIN_FILL across a page boundary: vfio_pin_pages, then writes through the host frames
wl "$BAR + 0x08" 0x200ff0; wl "$BAR + 0x10" 32; wl "$BAR + 0x14" 0x3c; wl "$BAR + 0x18" 3
rl "$BAR + 0x1c"; expect "PIN_FILL status" "$REPLY_VALUE" 0
rl "$BAR + 0x20"; expect "pages pinned" "$REPLY_VALUE" 2
rl 0x200ff0; expect "guest RAM at 0x200ff0" "$REPLY_VALUE" 0x3c3c3c3c
rl 0x20100c; expect "guest RAM at 0x20100c" "$REPLY_VALUE" 0x3c3c3c3c
# READ guest RAM the guest wrote
qt "writel 0x300000 0x12345678"
wl "$BAR + 0x08" 0x300000; wl "$BAR + 0x10" 16; wl "$BAR + 0x18" 2
rl "$BAR + 0x100"; expect "device read of guest RAM" "$REPLY_VALUE" 0x12345678
# READ the BIOS reset vector: a window without fd, so the server sends DMA_READ to QEMU
rl 0xfffffff0; WANT=$REPLY_VALUE
wl "$BAR + 0x08" 0xfffffff0; wl "$BAR + 0x10" 16; wl "$BAR + 0x18" 2
# The posted CMD write makes the server send DMA_READ to QEMU, which QEMU answers from its main loop. A REGION_READ
# sent before that runs blocks the main loop until QEMU's reply timeout (QEMU's design, not the server's): give the
# main loop a moment, as a guest polling a status register would.
sleep 0.3
rl "$BAR + 0x1c"; expect "READ of ROM status" "$REPLY_VALUE" 0
rl "$BAR + 0x100"; expect "device read of the BIOS ROM (DMA_READ)" "$REPLY_VALUE" "$WANT"
# A write into the read-only ROM window is refused by the server (EPERM = 1), not sent to QEMU
wl "$BAR + 0x08" 0xfffffff0; wl "$BAR + 0x10" 4; wl "$BAR + 0x14" 0; wl "$BAR + 0x18" 1
rl "$BAR + 0x1c"; expect "FILL of read-only ROM refused (EPERM)" "$REPLY_VALUE" 1
stop_qemu
sleep 0.5
echo state >&"$CTL"
for _ in $(seq 1 50); do [ "$(grep -c . "$WORK/child.out")" -ge 2 ] && break; sleep 0.1; done
STATE=$(sed -n 2p "$WORK/child.out")
echo "server state after QEMU left: $STATE" | cut -c1-400
node -e '
const s = JSON.parse(process.argv[1]);
const bad = [];
if (s.externalRegions !== 0) bad.push(`external regions ${s.externalRegions}`);
if (s.pinnedFrames !== 0) bad.push(`pinned frames ${s.pinnedFrames}`);
if (s.liveProcesses !== 0) bad.push(`host processes ${s.liveProcesses}`);
if (s.openDevices.length !== 0) bad.push(`open devices ${s.openDevices}`);
if (s.dma.pinned !== 0) bad.push(`device pins ${s.dma.pinned}`);
if (s.servers.dma.problems.length !== 0) bad.push(`problems ${s.servers.dma.problems}`);
if (bad.length) { console.log("leaks: " + bad.join(", ")); process.exit(1); }
console.log(`ok: nothing left in the host model (${s.dma.unmaps} dma_unmap notification(s) unpinned the device)`);
' "$STATE" || fail "the server kept state after QEMU left"
# ---- mmap: the same device with BAR2's second page mmap-able, exported as a memfd ----
echo "== mmap-able BAR over vfio-user (memfd export) =="
start_qemu "$WORK/dma-mmap.sock"
find_device 0x0d3a1b36 "DMA test device with an mmap-able BAR2"
BAR2=0xfd000000
cfg 0x18; qt "outl 0xcfc $BAR2"
cfg 0x04; qt "outw 0xcfc 0x0006"
# QEMU mapped the page: this store goes to the memfd the device's frames live in, with no message.
wl "$BAR2 + 0x1000" 0xcafef00d
rl "$BAR2 + 0x1000"; expect "BAR2 mmap page read back" "$REPLY_VALUE" 0xcafef00d
wl "$BAR2 + 0x0" 0x5a5a5a5a
rl "$BAR2 + 0x0"; expect "BAR2 first page, trapped (REGION_WRITE/READ)" "$REPLY_VALUE" 0x5a5a5a5a
echo state >&"$CTL"
for _ in $(seq 1 50); do [ "$(grep -c . "$WORK/child.out")" -ge 3 ] && break; sleep 0.1; done
read -r MAPPED TRAPPED < <(node -e 'const d = JSON.parse(process.argv[1]).dma; console.log(d.bar2Mapped, d.bar2Trapped)' \
  "$(sed -n 3p "$WORK/child.out")")
expect "the device sees QEMU's store through the mapping" "$MAPPED" 0xcafef00d
expect "BAR2 messages: only the first page's write and read (the mmap page sent none)" "$TRAPPED" 2
stop_qemu
sleep 0.5
echo state >&"$CTL"
for _ in $(seq 1 50); do [ "$(grep -c . "$WORK/child.out")" -ge 4 ] && break; sleep 0.1; done
node -e '
const s = JSON.parse(process.argv[1]);
const bad = [];
if (s.externalRegions !== 0) bad.push(`external regions ${s.externalRegions}`);
if (s.openDevices.length !== 0) bad.push(`open devices ${s.openDevices}`);
if (s.servers.dmaMmap.problems.length !== 0) bad.push(`problems ${s.servers.dmaMmap.problems}`);
if (s.dma.bar2Mapped !== 0xcafef00d) bad.push("BAR2 lost its bytes when the export was undone");
if (bad.length) { console.log("leaks: " + bad.join(", ")); process.exit(1); }
console.log("ok: export undone after QEMU left (BAR2 kept its bytes, nothing left in the host model)");
' "$(sed -n 4p "$WORK/child.out")" || fail "the server kept state after QEMU left the mmap device"

# ---- guest RAM beyond 4 GiB, and RAM in a file that cannot be sealed ----
dma_setup() { # dma_setup <name>: finds the DMA test device and programs BAR0 at $BAR
  find_device 0x0d3a1b36 "$1"
  cfg 0x10; qt "outl 0xcfc $BAR"
  cfg 0x04; qt "outw 0xcfc 0x0006"
}
dma_cmd() { # dma_cmd <addr> <len> <pattern> <cmd>: sets REPLY_VALUE to the status
  wl "$BAR + 0x08" $(($1 & 0xffffffff)); wl "$BAR + 0x0c" $(($1 >> 32)); wl "$BAR + 0x10" "$2"
  wl "$BAR + 0x14" "$3"; wl "$BAR + 0x18" "$4"; rl "$BAR + 0x1c"
}
check_released() { # check_released <state line number> <what>
  echo state >&"$CTL"
  for _ in $(seq 1 50); do [ "$(grep -c . "$WORK/child.out")" -ge "$1" ] && break; sleep 0.1; done
  node -e '
const s = JSON.parse(process.argv[1]);
const bad = [];
if (s.externalRegions !== 0) bad.push(`external regions ${s.externalRegions}`);
if (s.pinnedFrames !== 0) bad.push(`pinned frames ${s.pinnedFrames}`);
if (s.openDevices.length !== 0) bad.push(`open devices ${s.openDevices}`);
if (s.servers.dma.problems.length !== 0) bad.push(`problems ${s.servers.dma.problems}`);
if (bad.length) { console.log("leaks: " + bad.join(", ")); process.exit(1); }
console.log(`ok: nothing left in the host model after ${process.argv[2]}`);
' "$(sed -n "$1"p "$WORK/child.out")" "$2" || fail "the server kept state after $2"
}

echo "== 8 GiB guest (memory-backend-memfd, RAM above 4 GiB) =="
start_qemu "$WORK/dma.sock" memory-backend-memfd,id=ram,size=8G,share=on 8G
dma_setup "DMA test device"
# q35 puts 2 GiB of an 8 GiB guest below 4 GiB and 6 GiB from 4 GiB up: one memfd, two windows at two offsets.
HIGH=$((0x100000000 + 5 * 0x40000000 + 0x1000))
dma_cmd $HIGH 64 0x6b 1; expect "FILL at 9 GiB (7 GiB into the RAM file) status" "$REPLY_VALUE" 0
rl $HIGH; expect "guest RAM at $(printf '0x%x' $HIGH)" "$REPLY_VALUE" 0x6b6b6b6b
TOP=$((0x100000000 + 0x170000000 - 0x10))
dma_cmd $TOP 32 0x71 3; expect "PIN_FILL across a page boundary at 9.75 GiB status" "$REPLY_VALUE" 0
rl $TOP; expect "guest RAM at $(printf '0x%x' $TOP)" "$REPLY_VALUE" 0x71717171
dma_cmd 0x100000 16 0x19 1; expect "FILL below 4 GiB status" "$REPLY_VALUE" 0
rl 0x100000; expect "guest RAM at 0x100000" "$REPLY_VALUE" 0x19191919
stop_qemu
sleep 0.5
check_released 5 "the 8 GiB guest left"

echo "== guest RAM in a file (memory-backend-file share=on: no seals) =="
start_qemu "$WORK/dma.sock" "memory-backend-file,id=ram,size=256M,share=on,mem-path=$WORK/guest-ram" 256M
dma_setup "DMA test device"
dma_cmd 0x400000 64 0x5e 1; expect "FILL into file-backed RAM status" "$REPLY_VALUE" 0
rl 0x400000; expect "guest RAM at 0x400000" "$REPLY_VALUE" 0x5e5e5e5e
dma_cmd 0x500ff8 16 0x4d 3; expect "PIN_FILL into file-backed RAM status" "$REPLY_VALUE" 0
rl 0x501004; expect "guest RAM at 0x501004" "$REPLY_VALUE" 0x4d4d4d4d
qt "writel 0x600000 0x89abcdef"
dma_cmd 0x600000 16 0 2; rl "$BAR + 0x100"; expect "device read of file-backed RAM" "$REPLY_VALUE" 0x89abcdef
# A hostile client shrinks the file under its own window: the server must fault the DMA, not die of SIGBUS.
truncate -s 1M "$WORK/guest-ram"
dma_cmd 0x400000 64 0x11 1; expect "FILL after the file shrank: EFAULT (14), the server lives" "$REPLY_VALUE" 14
kill -0 "$SERVE_PID" 2>/dev/null || fail "the server died after the client shrank its RAM file"
rl "$BAR + 0x00"; expect "device still answers" "$REPLY_VALUE" 0x0d3a7e57
stop_qemu
sleep 0.5
check_released 6 "the file-backed guest left"

echo exit >&"$CTL"
exec {CTL}>&-
wait "$SERVE_PID" 2>/dev/null
SERVE_PID=

# ---- a vGPU, when the host model offers one ----
# The vGPU and mtty under both kinds of guest RAM: an 8 GiB memfd and a file that cannot be sealed.
VGPU=passed
serve_and_attach() { # serve_and_attach <type> <vendor:device> <backend> <size> <label>
  local sock="$WORK/attach.sock"
  node --import tsx src/cli/commands/serve.ts --type "$1" --socket "$sock" --once \
    >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVE_PID=$!
  for _ in $(seq 1 100); do
    grep -q "serving" "$WORK/serve.out" 2>/dev/null && break
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "serving" "$WORK/serve.out"; then
    echo "skipped: $(tail -1 "$WORK/serve.err")"
    SERVE_PID=
    VGPU=skipped
    return 0
  fi
  echo "== $1 over vfio-user, $5 =="
  start_qemu "$sock" "$3" "$4"
  find_device "$2" "$1 ($5)"
  if [ "$1" = mtty-2 ]; then
    cfg 0x08; qt "inl 0xcfc"; expect "class/revision" "$REPLY_VALUE" 0x07000210
  else
    cfg 0x08; qt "inl 0xcfc"; expect "class (display controller)" "$(( REPLY_VALUE >> 8 ))" 0x030000
    cfg 0x10; qt "outl 0xcfc 0xe0000000"; cfg 0x14; qt "outl 0xcfc 0"
    cfg 0x04; qt "outw 0xcfc 0x0006"
    rl 0xe0078000; expect "PVINFO magic, low dword (BAR0 MMIO through vfio-user)" "$REPLY_VALUE" 0x76544776
    rl 0xe0078004; expect "PVINFO magic, high dword" "$REPLY_VALUE" 0x47765447
  fi
  stop_qemu
  for _ in $(seq 1 100); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
  wait "$SERVE_PID" 2>/dev/null
  SERVE_PID=
  grep -q "problem:" "$WORK/serve.err" && fail "the $1 server reported problems releasing the session"
  rm -f "$WORK/attach-ram"
}
MEMFD8G="memory-backend-memfd,id=ram,size=8G,share=on"
FILE512="memory-backend-file,id=ram,size=512M,share=on,mem-path=$WORK/attach-ram"
serve_and_attach i915-GVTg_V5_4 0x19128086 "$MEMFD8G" 8G "8 GiB memfd guest"
serve_and_attach i915-GVTg_V5_4 0x19128086 "$FILE512" 512M "file-backed guest (share=on)"
serve_and_attach mtty-2 0x32534348 "$MEMFD8G" 8G "8 GiB memfd guest"
serve_and_attach mtty-2 0x32534348 "$FILE512" 512M "file-backed guest (share=on)"
echo "PASS: QEMU $("$QEMU" --version | head -1 | awk '{print $4}') attached the devices over vfio-user: UART, INTx," \
  "DMA into guest RAM (memfd, pinned frames) and DMA_READ of its ROM; an mmap-able BAR exported as a memfd;" \
  "an 8 GiB guest (DMA above 4 GiB); file-backed RAM (unsealable: guarded, a shrunk file faults DMA);" \
  "vGPU and mtty attached by 8 GiB and file-backed guests;" \
  "vGPU MMIO: $VGPU"
