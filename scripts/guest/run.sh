#!/usr/bin/env bash
# Boots a real Linux guest (the image of scripts/guest/build-image.sh) under QEMU with one device served by
# `vgpu serve` over vfio-user, and prints the guest's verdict (see ../shared/reference/real-guest.md, "Boot").
#
# usage: scripts/guest/run.sh --device mtty-2|i915-GVTg_V5_4 [--memory 512M] [--timeout 180] [--keep-log FILE]
#                             [--debug] [--trace] [--expect-bound] [--igt LIST [--igt-timeout S]] [--image DIR]
#   --device TYPE    the mdev type `vgpu serve --type` serves (mtty-N: the guest checks N ports; i915-*: the vGPU)
#   --igt LIST       vGPU: once i915 binds, run intel-gpu-tools' tests in the guest (TEST[@SUBTEST],...; `all`: every
#                    test in the image); PASS only when igt's own verdict is SUCCESS for each and the server's
#                    isolation checker counted 0 violations
#   --igt-timeout S  each igt test is killed after S seconds (default 300)
#   --memory SIZE    guest RAM, a shared memfd (default 512M)
#   --timeout SEC    QEMU is killed after this (default 180; a TCG boot takes ~20 s)
#   --keep-log FILE  keep the guest's serial log (CR stripped) in FILE and the server's stderr in FILE.server
#   --debug          vGPU: boot with drm.debug=0x1e log_buf_len=4M (every i915 debug line in the report); with
#                    --igt, igt's tests also run with --debug
#   --trace          pass --trace to `vgpu serve` (every region access; see --keep-log)
#   --expect-bound   vGPU: exit 1 when i915 does not bind (by default NOT BOUND is reported and exits 0)
#   --image DIR      the image directory (default $VGPU_GUEST_DIR, else /tmp/vgpu-guest)
# Env: QEMU (default /tmp/qemu-vfio-user/src/build/qemu-system-x86_64), QEMU_ROMS (default /tmp/qemu-vfio-user/roms:
# linuxboot_dma.bin), SEABIOS_DIR (default /usr/share/seabios), VGPU_GUEST_DIR, SERVE_NODE_FLAGS (extra node flags for
# the server, e.g. "--cpu-prof --cpu-prof-dir=DIR").
#
# The guest's report is printed between its markers, then one line "RESULT: ...".
# Exit status: 0 mtty PASS, vGPU reported (BOUND, or NOT BOUND without --expect-bound), or SKIP (QEMU or the image
# absent: one line naming the command that builds it); 1 a check failed, the guest did not report, or NOT BOUND with
# --expect-bound; 2 usage.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"

usage() {
  sed -n '4,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
DEVICE=
MEMORY=512M
TIMEOUT=180
KEEP_LOG=
DEBUG=0
TRACE=0
EXPECT_BOUND=0
IGT=
IGT_TIMEOUT=300
IMAGE=${VGPU_GUEST_DIR:-/tmp/vgpu-guest}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:?}; shift 2 ;;
    --memory) MEMORY=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --keep-log) KEEP_LOG=${2:?}; shift 2 ;;
    --image) IMAGE=${2:?}; shift 2 ;;
    --debug) DEBUG=1; shift ;;
    --trace) TRACE=1; shift ;;
    --expect-bound) EXPECT_BOUND=1; shift ;;
    --igt) IGT=${2:?}; shift 2 ;;
    --igt-timeout) IGT_TIMEOUT=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "run.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$DEVICE" in
  mtty-[0-9]*) TEST=mtty; EXTRA="vgpu.ports=${DEVICE#mtty-}" ;;
  i915-*) TEST=i915; EXTRA= ;;
  *) echo "run.sh: --device mtty-N or i915-<type> is required" >&2; usage ;;
esac
if [ -n "$IGT" ]; then
  [ "$TEST" = i915 ] || { echo "run.sh: --igt needs a vGPU (--device i915-<type>)" >&2; usage; }
  TEST=igt
  [ "$IGT" = all ] || EXTRA="${EXTRA:+$EXTRA }vgpu.igt=$IGT"
  [ "$DEBUG" -eq 0 ] || EXTRA="$EXTRA vgpu.igt_debug=1"
  EXTRA="${EXTRA:+$EXTRA }vgpu.igt_timeout=$IGT_TIMEOUT"
fi
[ "$DEBUG" -eq 1 ] && EXTRA="${EXTRA:+$EXTRA }drm.debug=0x1e log_buf_len=4M"

# ---- what is needed, or SKIP ----
QEMU=${QEMU:-/tmp/qemu-vfio-user/src/build/qemu-system-x86_64}
QEMU_ROMS=${QEMU_ROMS:-/tmp/qemu-vfio-user/roms}
SEABIOS_DIR=${SEABIOS_DIR:-/usr/share/seabios}
VMLINUZ=$IMAGE/vmlinuz
INITRD=$IMAGE/initrd.img
skip=()
if [ ! -x "$QEMU" ] || ! "$QEMU" -device help 2>/dev/null | grep -q vfio-user-pci; then
  skip+=("no QEMU with vfio-user-pci at $QEMU (build it: ../shared/tools/build-qemu-vfio-user.sh /tmp/qemu-vfio-user, or set QEMU=)")
elif [ ! -f "$QEMU_ROMS/linuxboot_dma.bin" ]; then
  skip+=("no linuxboot_dma.bin in $QEMU_ROMS (built by ../shared/tools/build-qemu-vfio-user.sh; or set QEMU_ROMS=)")
fi
[ -f "$SEABIOS_DIR/bios-256k.bin" ] || skip+=("no SeaBIOS in $SEABIOS_DIR (apt-get install seabios, or set SEABIOS_DIR=)")
if [ ! -f "$VMLINUZ" ] || [ ! -f "$INITRD" ]; then
  skip+=("no guest image in $IMAGE (build it: scripts/guest/build-image.sh $IMAGE)")
fi
if [ "${#skip[@]}" -gt 0 ]; then
  msg=$(printf '%s; ' "${skip[@]}")
  echo "SKIP: ${msg%; }"
  exit 0
fi

WORK=$(mktemp -d /tmp/vgpu-guest-run.XXXXXX)
SOCK=$WORK/dev.sock
LOG=$WORK/serial.log
SERVE_PID=
QEMU_PID=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { # (errexit is on: nothing here may fail before the rm)
  if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; fi
  if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
keep_logs() {
  [ -n "$KEEP_LOG" ] || return 0
  tr -d '\r' <"$LOG" >"$KEEP_LOG" 2>/dev/null || true
  cat "$WORK/serve.out" "$WORK/serve.err" >"$KEEP_LOG.server" 2>/dev/null || true
}
finish() { # finish CODE RESULT...
  local code=$1
  shift
  keep_logs
  echo "RESULT: $*"
  exit "$code"
}

# ---- the server ----
SERVE_ARGS=(--type "$DEVICE" --socket "$SOCK" --once)
[ "$TRACE" -eq 1 ] && SERVE_ARGS+=(--trace)
# shellcheck disable=SC2086 # extra node flags, split on spaces
node ${SERVE_NODE_FLAGS:-} --import tsx src/cli/commands/serve.ts "${SERVE_ARGS[@]}" >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
for _ in $(seq 1 300); do
  grep -q "serving" "$WORK/serve.out" 2>/dev/null && break
  kill -0 "$SERVE_PID" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q "serving" "$WORK/serve.out"; then
  sed 's/^/server: /' "$WORK/serve.err"
  finish 1 "FAIL (vgpu serve --type $DEVICE did not come up)"
fi

# ---- the guest ----
QEMU_VERSION=$("$QEMU" --version | head -1 | awk '{ print $4 }')
APPEND="console=ttyS0 tsc=reliable 8250.nr_uarts=8 rdinit=/init panic=-1 vgpu.test=$TEST $EXTRA"
echo "run: QEMU $QEMU_VERSION (TCG, q35, $MEMORY), $DEVICE over vfio-user at 00:02.0, image $IMAGE" \
  "($(sed -n 's/^kernel: //p' "$IMAGE/manifest.txt" 2>/dev/null || echo '?'))"
T0=$(date +%s.%N)
"$QEMU" -M q35 -accel tcg -m "$MEMORY" -smp 1 -nodefaults -display none -vga none -no-reboot \
  -L "$QEMU_ROMS" -L "$SEABIOS_DIR" \
  -object "memory-backend-memfd,id=ram,size=$MEMORY,share=on" -machine memory-backend=ram \
  -serial "file:$LOG" -monitor none -kernel "$VMLINUZ" -initrd "$INITRD" -append "$APPEND" \
  -device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$SOCK\",\"type\":\"unix\"},\"addr\":\"02.0\"}" \
  </dev/null >"$WORK/qemu.out" 2>"$WORK/qemu.err" &
QEMU_PID=$!
QEMU_RC=
for _ in $(seq 1 $((TIMEOUT * 10))); do
  if ! kill -0 "$QEMU_PID" 2>/dev/null; then
    QEMU_RC=0
    wait "$QEMU_PID" || QEMU_RC=$?
    break
  fi
  sleep 0.1
done
if [ -z "$QEMU_RC" ]; then
  kill "$QEMU_PID" 2>/dev/null
  wait "$QEMU_PID" 2>/dev/null || true
fi
QEMU_PID=
BOOT=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
# The server (--once) exits when QEMU's connection goes.
for _ in $(seq 1 50); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVE_PID" 2>/dev/null; then kill "$SERVE_PID" 2>/dev/null; fi
wait "$SERVE_PID" 2>/dev/null || true
SERVE_PID=

# ---- the report ----
tr -d '\r' <"$LOG" >"$WORK/serial.txt"
REPORT=$(sed -n '/^=== vgpu-guest begin/,/^=== vgpu-guest end/p' "$WORK/serial.txt")
if ! grep -q '^=== vgpu-guest end' <<<"$REPORT"; then
  echo "--- the guest did not report; last lines of its serial log ---"
  tail -25 "$WORK/serial.txt"
  echo "--- QEMU stderr ---"
  tail -5 "$WORK/qemu.err"
  echo "--- server stderr ---"
  tail -5 "$WORK/serve.err"
  if [ -z "$QEMU_RC" ]; then finish 1 "FAIL (no report within $TIMEOUT s: QEMU killed)"; fi
  finish 1 "FAIL (no report; QEMU exited with $QEMU_RC after $BOOT s)"
fi
echo "$REPORT"
UP=$(sed -n 's/^=== vgpu-guest end uptime=\([0-9.]*\).*/\1/p' <<<"$REPORT")
echo "run: QEMU ran ${BOOT} s (guest uptime at the end of the report: ${UP:-?} s)"
# QEMU's one known complaint (mtty's config region is 255 bytes) is not worth a line each boot.
grep -v 'vfio_pci_read_config.*0xfc, 0x4) failed' "$WORK/qemu.err" | sed 's/^/qemu: /' | head -5 || true
grep -E 'problem' "$WORK/serve.err" | sed 's/^/server: /' | head -5 || true
VERDICT=$(sed -n 's/^VERDICT: //p' <<<"$REPORT" | tail -1)
case "$TEST:$VERDICT" in
  mtty:PASS) finish 0 "PASS ($DEVICE: real 8250_pci driver, loopback and interrupts on every port)" ;;
  mtty:*) finish 1 "FAIL ($DEVICE: $VERDICT)" ;;
  igt:PASS | igt:FAIL)
    VIOL=$(sed -n 's/.*isolation checker: .* \([0-9][0-9]*\) violation(s).*/\1/p' "$WORK/serve.out" "$WORK/serve.err" | tail -1)
    SUMMARY=$(grep '^IGT ' <<<"$REPORT" | sed 's/^IGT //; s/ subtests:.*//' | tr '\n' ';' | sed 's/;$//; s/;/; /g')
    if [ "$VERDICT" = PASS ] && [ "${VIOL:-x}" = 0 ]; then finish 0 "PASS (igt: $SUMMARY; isolation: 0 violations)"; fi
    finish 1 "FAIL (igt: ${SUMMARY:-none run}; isolation: ${VIOL:-no summary} violations)"
    ;;
  i915:BOUND) finish 0 "BOUND ($DEVICE: i915 initialized, not wedged)" ;;
  i915:NOT\ BOUND*)
    if [ "$EXPECT_BOUND" -eq 1 ]; then finish 1 "NOT BOUND ($DEVICE; --expect-bound)"; fi
    finish 0 "NOT BOUND ($DEVICE: reported; expected today, see issue 13)"
    ;;
  *) finish 1 "FAIL (unexpected verdict '$VERDICT')" ;;
esac
