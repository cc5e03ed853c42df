#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# Build a V4V-patched Xen 4.17 hypervisor:
#   1. Debian's Xen 4.17 source, unpacked once into $V4V_CACHE/xen-pristine
#      (default /var/tmp/v4v-cache) by ../shared/xen-qemu/fetch-xen-source.sh;
#   2. copied to $V4V_WORK/xen (default /var/tmp/v4v-work), patched with
#      hypervisor-patch/apply;
#   3. the hypervisor only, defconfig (CONFIG_V4V=y by default), -Werror as
#      Xen always builds, and any "warning:" in the log fails the build too.
# Result: $V4V_WORK/xen/xen/xen (QEMU -kernel image). Prints the timings.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=$(cd "$repo/../shared/xen-qemu" && pwd)
cache=${V4V_CACHE:-/var/tmp/v4v-cache}
work=${V4V_WORK:-/var/tmp/v4v-work}
t0=$(date +%s)

if [ ! -f "$cache/xen-pristine/xen/Makefile" ]; then
  command -v apt-get >/dev/null || { echo "need apt-get to fetch the source" >&2; exit 1; }
  if ! apt-cache showsrc xen >/dev/null 2>&1 || ! command -v bison >/dev/null; then
    sh "$shared/setup-host.sh"
  fi
  mkdir -p "$cache"
  rm -rf "$cache/xen-pristine.tmp"
  sh "$shared/fetch-xen-source.sh" "$cache/xen-pristine.tmp"
  mv "$cache/xen-pristine.tmp" "$cache/xen-pristine"
fi
t1=$(date +%s)

mkdir -p "$work"
rm -rf "$work/xen"
cp -a "$cache/xen-pristine" "$work/xen"
"$repo/hypervisor-patch/apply" "$work/xen"
"$repo/hypervisor-patch/apply" "$work/xen" >/dev/null   # idempotence

make -s -C "$work/xen/xen" defconfig >/dev/null
grep -qx 'CONFIG_V4V=y' "$work/xen/xen/.config" || { echo "FAIL: CONFIG_V4V is not y" >&2; exit 1; }
log="$work/build.log"
if ! make -s -C "$work/xen/xen" -j"$(nproc)" >"$log" 2>&1; then
  tail -n 40 "$log"; echo "FAIL: Xen build failed (log: $log)" >&2; exit 1
fi
if grep -n 'warning:' "$log"; then
  echo "FAIL: the build printed warnings (log: $log)" >&2; exit 1
fi
nm "$work/xen/xen/xen-syms" | grep -q ' T do_v4v_op$' || { echo "FAIL: do_v4v_op not linked" >&2; exit 1; }
t2=$(date +%s)
ls -l "$work/xen/xen/xen"
echo "build-xen: source $((t1 - t0)) s, copy+apply+build $((t2 - t1)) s"
