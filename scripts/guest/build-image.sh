#!/usr/bin/env bash
# Builds a small boot image for a real Linux guest of our devices, from Debian bookworm packages only (see
# ../shared/reference/real-guest.md): the packages are fetched with `apt-get download` and unpacked with `dpkg -x`
# under OUT; nothing is installed on the host.
#
#   kernel    bookworm's newest linux-image-6.1.0-N-amd64-unsigned (8250_pci built in; i915 a module)
#   userland  busybox-static; lspci (pciutils, libpci3, pci.ids) with the libraries the loader lists for it, taken
#             from their own packages (libc6, libkmod2, ...), and the loader
#   modules   i915 and its dependency closure (read from each .ko's `depends=`), modules.dep by busybox depmod
#   igt       intel-gpu-tools' test programs from sid's igt-gpu-tools-tests (bookworm ships none): the tests in IGT_TESTS
#             under /opt/igt/bin, with sid's loader and the libraries it lists for them under /opt/igt/lib (they need a
#             newer glibc than bookworm's, so they run as `/opt/igt/lib/ld-linux-x86-64.so.2 --library-path
#             /opt/igt/lib TEST`). sid is read through a private apt view (OUT/apt-sid) over the same mirror as the
#             host's bookworm sources; the host's apt state is not touched.
#   /init     scripts/guest/init: mounts proc, sys, devtmpfs, debugfs; runs the test named by `vgpu.test=` on the
#             kernel command line (mtty, i915, igt, shell); prints its report between markers on the console; powers off
#
# usage: scripts/guest/build-image.sh [--no-igt] [OUT]     (default /tmp/vgpu-guest)
# Env:   KERNEL_PKG=linux-image-6.1.0-N-amd64-unsigned to pin a kernel package.
#        IGT_TESTS="core_getversion i915_query ..." the igt programs to include (default: the seven of issue 14).
# Output: OUT/vmlinuz and OUT/initrd.img (cpio newc, gzip), OUT/manifest.txt; the last two lines printed are
# "vmlinuz: PATH" and "initrd: PATH". OUT/debs is the download cache, reused on re-runs (delete it to refresh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WITH_IGT=1
if [ "${1:-}" = --no-igt ]; then
  WITH_IGT=0
  shift
fi
OUT=$(realpath -m "${1:-/tmp/vgpu-guest}")
IGT_TESTS=${IGT_TESTS:-core_getversion i915_query gem_exec_basic gem_exec_nop gem_exec_store gem_ctx_create gem_blits}
DEBS=$OUT/debs   # downloaded .deb files (cache)
X=$OUT/x         # each package unpacked in its own directory (cache)
ROOT=$OUT/root   # the initramfs tree, rebuilt every run
START=$(date +%s.%N)

say() { echo "build-image: $*"; }
die() {
  echo "build-image: error: $*" >&2
  exit 1
}
for tool in apt-get apt-cache dpkg dpkg-deb gzip find sort; do
  command -v "$tool" >/dev/null || die "'$tool' not found (this script needs a Debian system)"
done
mkdir -p "$DEBS" "$X"

# ---- package lists ----
candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }'; }
if [ -z "$(candidate busybox-static)" ] || [ "$(candidate busybox-static)" = "(none)" ]; then
  say "no apt package lists: apt-get update"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
  [ "$(candidate busybox-static)" != "(none)" ] || die "apt knows no busybox-static: are Debian's sources configured?"
fi

# ---- which packages ----
KERNEL_PKG=${KERNEL_PKG:-$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' |
  awk '{ print $1 }' | sort -V | tail -1)}
[ -n "$KERNEL_PKG" ] || die "no linux-image-6.1.0-*-amd64-unsigned package known to apt (bookworm's main and security)"
# lspci's runtime closure: Depends and Pre-Depends, recursively.
deps() {
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances "$@" \
    2>/dev/null | awk '$1 == "Depends:" || $1 == "PreDepends:" { print $2 }' | grep -v '^<' | sort -u
}
LSPCI_PKGS=" pciutils "
todo=pciutils
while [ -n "$todo" ]; do
  next=
  # shellcheck disable=SC2086 # a list of package names
  for p in $(deps $todo); do
    case "$LSPCI_PKGS" in *" $p "*) ;; *)
      LSPCI_PKGS="$LSPCI_PKGS$p "
      next="$next $p"
      ;;
    esac
  done
  todo=$next
done
PKGS="$KERNEL_PKG busybox-static$LSPCI_PKGS"
# shellcheck disable=SC2086
set -- $PKGS

# ---- download (cached) and unpack (cached) ----
deb_of() { # deb_of PKG: the cached .deb of PKG, if any
  local f
  for f in "$DEBS/$1"_*.deb; do [ -e "$f" ] && echo "$f" && return 0; done
  return 0
}
missing=()
for p in "$@"; do [ -n "$(deb_of "$p")" ] || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt-get download ${missing[*]}"
  # As root, apt's sandbox user cannot write here: download as root, quietly.
  (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "${missing[@]}" 2>&1) | grep -v '^Get:' || true
  for p in "${missing[@]}"; do [ -n "$(deb_of "$p")" ] || die "apt-get download $p failed"; done
else
  say "all ${#} packages in the download cache $DEBS"
fi
for p in "$@"; do
  deb=$(deb_of "$p")
  stamp="$X/$p/.unpacked-$(basename "$deb")"
  if [ ! -e "$stamp" ]; then
    rm -rf "${X:?}/$p"
    mkdir -p "$X/$p"
    dpkg -x "$deb" "$X/$p"
    touch "$stamp"
  fi
done
BB=$X/busybox-static/bin/busybox
KX=$X/$KERNEL_PKG
KVER=$(basename "$(ls -d "$KX"/lib/modules/*)")
VMLINUZ_SRC=$KX/boot/vmlinuz-$KVER
[ -f "$VMLINUZ_SRC" ] || die "no $VMLINUZ_SRC in $KERNEL_PKG"

# ---- the tree ----
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,lib/modules/"$KVER"}
cp "$BB" "$ROOT/bin/busybox"
while read -r applet; do # busybox --list-full: bin/sh, sbin/modprobe, usr/bin/stty, ...
  [ -e "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done < <("$BB" --list-full)
install -m 0755 "$HERE/init" "$ROOT/init"

# i915's module closure.
MODDIR=$KX/lib/modules/$KVER
declare -A KO=()
while read -r f; do
  n=${f##*/}
  n=${n%.ko}
  KO[${n//-/_}]=$f
done < <(cd "$MODDIR" && find kernel -name '*.ko')
want=(i915)
declare -A HAVE=()
while [ "${#want[@]}" -gt 0 ]; do
  m=${want[0]}
  want=("${want[@]:1}")
  key=${m//-/_}
  [ -n "${HAVE[$key]:-}" ] && continue
  f=${KO[$key]:-}
  [ -n "$f" ] || die "module $m not found in $KERNEL_PKG"
  HAVE[$key]=$f
  mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$f")"
  cp "$MODDIR/$f" "$ROOT/lib/modules/$KVER/$f"
  # .modinfo holds NUL-separated key=value strings; "depends=a,b" names the modules this one needs.
  d=$(tr '\0' '\n' <"$MODDIR/$f" | sed -n 's/^depends=//p' | head -1)
  IFS=, read -r -a more <<<"$d"
  want+=("${more[@]}")
done
cp "$MODDIR"/modules.builtin "$MODDIR"/modules.order "$ROOT/lib/modules/$KVER/" 2>/dev/null || true
"$BB" depmod -b "$ROOT" "$KVER"
MODULES=$(printf '%s\n' "${!HAVE[@]}" | sort | tr '\n' ' ')

# lspci, its libraries as the loader lists them (ldd's way: ld.so --list), and the loader.
SYSROOT=$OUT/sysroot # lspci's packages unpacked together, to resolve its libraries
rm -rf "$SYSROOT"
mkdir -p "$SYSROOT"
for p in $LSPCI_PKGS; do cp -a "$X/$p/." "$SYSROOT/"; done
LOADER=$SYSROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[ -e "$LOADER" ] || LOADER=$SYSROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[ -e "$LOADER" ] || die "no loader in libc6"
LIBPATH=$SYSROOT/lib/x86_64-linux-gnu:$SYSROOT/usr/lib/x86_64-linux-gnu
cp "$SYSROOT/usr/bin/lspci" "$ROOT/usr/bin/lspci"
LIBS=$("$LOADER" --library-path "$LIBPATH" --list "$SYSROOT/usr/bin/lspci")
if grep -q 'not found' <<<"$LIBS"; then die "lspci: $(grep 'not found' <<<"$LIBS" | tr -s ' \t' ' ')"; fi
while read -r lib; do
  rel=${lib#"$SYSROOT"}
  mkdir -p "$ROOT/$(dirname "$rel")"
  cp -L "$lib" "$ROOT/$rel"
done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$LIBS")
mkdir -p "$ROOT/lib64" "$ROOT/lib/x86_64-linux-gnu"
[ -e "$ROOT/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] || cp -L "$LOADER" "$ROOT/lib/x86_64-linux-gnu/"
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOT/lib64/ld-linux-x86-64.so.2" # as libc6 has it
mkdir -p "$ROOT/usr/share/misc"
cp "$SYSROOT/usr/share/misc/pci.ids" "$ROOT/usr/share/misc/pci.ids"
rm -rf "$SYSROOT"

# ---- igt (from sid, with sid's loader and libraries) ----
IGT_NOTE="igt: not included (--no-igt)"
IGT_MANIFEST=()
if [ "$WITH_IGT" -eq 1 ]; then
  AV=$OUT/apt-sid # a private apt view of sid: its own sources, lists and cache
  mkdir -p "$AV/etc/sources.list.d" "$AV/etc/preferences.d" "$AV/state/lists/partial" "$AV/cache/archives/partial"
  # The mirror of the host's own Debian sources (deb822 or one-line format), with suite sid.
  MIRROR=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/\{0,1\} *$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  [ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list 2>/dev/null | head -1)
  [ -n "$MIRROR" ] || die "no Debian mirror in /etc/apt/sources.list{,.d}: cannot read sid for igt (or pass --no-igt)"
  printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "${MIRROR%/}" >"$AV/etc/sources.list.d/sid.sources"
  : >"$AV/etc/sources.list"
  SIDAPT=(-o "Dir::Etc::SourceList=$AV/etc/sources.list" -o "Dir::Etc::SourceParts=$AV/etc/sources.list.d"
    -o "Dir::State=$AV/state" -o "Dir::State::status=$AV/state/status" -o "Dir::Cache=$AV/cache"
    -o "Dir::Etc::Preferences=$AV/etc/preferences" -o "Dir::Etc::PreferencesParts=$AV/etc/preferences.d"
    -o APT::Sandbox::User=root -o Debug::NoLocking=1)
  : >>"$AV/state/status"
  if ! ls "$AV/state/lists/"*_Packages* >/dev/null 2>&1; then
    say "apt-get update (sid, private view $AV)"
    apt-get "${SIDAPT[@]}" update -qq 2>&1 | grep -v '^W: ' || true
  fi
  ls "$AV/state/lists/"*_Packages* >/dev/null 2>&1 || die "apt-get update of sid failed (private view $AV)"
  IDEBS=$AV/debs
  mkdir -p "$IDEBS"
  # igt-gpu-tools-tests' library closure: Depends and Pre-Depends, recursively; the Python, font, data and tool
  # packages of that closure hold no library the tests load, so they are not fetched.
  sid_deps() {
    apt-cache "${SIDAPT[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
      --no-enhances "$@" 2>/dev/null | awk '$1 == "Depends:" || $1 == "PreDepends:" { print $2 }' | grep -v '^<' |
      sort -u
  }
  IGT_PKGS=" igt-gpu-tools-tests "
  todo=igt-gpu-tools-tests
  while [ -n "$todo" ]; do
    next=
    # shellcheck disable=SC2086
    for p in $(sid_deps $todo); do
      case "$p" in python3* | libpython* | fonts-* | tzdata | netbase | readline-common | *-data | intel-gpu-tools | \
        fontconfig-config | openssl-provider-legacy | libc-gconv-modules-extra) continue ;; esac
      case "$IGT_PKGS" in *" $p "*) ;; *)
        IGT_PKGS="$IGT_PKGS$p "
        next="$next $p"
        ;;
      esac
    done
    todo=$next
  done
  sid_deb() { # sid_deb PKG: the cached .deb of PKG, if any
    local f
    for f in "$IDEBS/$1"_*.deb; do [ -e "$f" ] && echo "$f" && return 0; done
    return 0
  }
  missing=()
  for p in $IGT_PKGS; do [ -n "$(sid_deb "$p")" ] || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get download (sid) ${#missing[@]} packages for igt"
    (cd "$IDEBS" && apt-get "${SIDAPT[@]}" download -q "${missing[@]}" 2>&1) | grep -v '^Get:' || true
    for p in "${missing[@]}"; do [ -n "$(sid_deb "$p")" ] || die "apt-get download $p (sid) failed"; done
  fi
  ISYS=$OUT/igt-sysroot # igt's packages unpacked together, to resolve its libraries
  rm -rf "$ISYS"
  mkdir -p "$ISYS"
  for p in $IGT_PKGS; do dpkg -x "$(sid_deb "$p")" "$ISYS"; done
  ILOADER=$ISYS/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
  [ -e "$ILOADER" ] || ILOADER=$ISYS/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
  [ -e "$ILOADER" ] || die "no loader in sid's libc6"
  ILIBPATH=$ISYS/usr/lib/x86_64-linux-gnu:$ISYS/lib/x86_64-linux-gnu
  mkdir -p "$ROOT/opt/igt/bin" "$ROOT/opt/igt/lib"
  cp -L "$ILOADER" "$ROOT/opt/igt/lib/ld-linux-x86-64.so.2"
  for t in $IGT_TESTS; do
    bin=$ISYS/usr/libexec/igt-gpu-tools/$t
    [ -x "$bin" ] || die "igt test '$t' is not in igt-gpu-tools-tests"
    cp "$bin" "$ROOT/opt/igt/bin/$t"
    libs=$("$ILOADER" --library-path "$ILIBPATH" --list "$bin")
    if grep -q 'not found' <<<"$libs"; then die "igt $t: $(grep 'not found' <<<"$libs" | tr -s ' \t' ' ')"; fi
    while read -r lib; do
      [ -e "$ROOT/opt/igt/lib/${lib##*/}" ] || cp -L "$lib" "$ROOT/opt/igt/lib/"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$libs")
  done
  for p in $IGT_PKGS; do IGT_MANIFEST+=("igt-package: $(basename "$(sid_deb "$p")" .deb)"); done
  rm -rf "$ISYS"
  IGT_VERSION=$(basename "$(sid_deb igt-gpu-tools-tests)" .deb | cut -d_ -f2)
  IGT_NOTE="igt $IGT_VERSION (sid): $(echo "$IGT_TESTS" | wc -w) tests, $(find "$ROOT/opt/igt/lib" -type f | wc -l) libraries"
fi

# ---- the image ----
cp "$VMLINUZ_SRC" "$OUT/vmlinuz"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -6 >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
{
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel: $KVER"
  for p in "$@"; do echo "package: $(basename "$(deb_of "$p")" .deb)"; done
  echo "modules: $MODULES"
  [ "$WITH_IGT" -eq 0 ] || echo "igt-tests: $IGT_TESTS"
  [ "${#IGT_MANIFEST[@]}" -eq 0 ] || printf '%s\n' "${IGT_MANIFEST[@]}"
} >"$OUT/manifest.txt"
ELAPSED=$(awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
size() { awk -v n="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MiB", n / 1048576 }'; }
say "kernel $KVER ($KERNEL_PKG), busybox $("$BB" 2>&1 | head -1 | awk '{ print $2 }'), lspci, modules: $MODULES"
say "$IGT_NOTE"
say "vmlinuz $(size "$OUT/vmlinuz"), initrd $(size "$OUT/initrd.img"), built in ${ELAPSED} s"
echo "vmlinuz: $OUT/vmlinuz"
echo "initrd: $OUT/initrd.img"
