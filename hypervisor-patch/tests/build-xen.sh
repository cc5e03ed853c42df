#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# Build a V4V-patched Xen 4.17 hypervisor:
#   1. Debian's Xen 4.17 source, unpacked once into $V4V_CACHE/xen-pristine
#      (default /var/tmp/v4v-cache) by tests/xen-qemu/fetch-xen-source.sh;
#   2. copied to $V4V_WORK/xen (default /var/tmp/v4v-work), patched with
#      hypervisor-patch/apply; the mkseries mail is checked to apply with
#      git am and patch -p1 to the same result (check-series.sh);
#   3. the hypervisor only, defconfig (CONFIG_V4V=y by default), -Werror as
#      Xen always builds, and any "warning:" in the log fails the build too.
# Result: $V4V_WORK/xen/xen/xen (QEMU -kernel image). Prints the timings.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
qemu_dir=$repo/tests/xen-qemu
cache=${V4V_CACHE:-/var/tmp/v4v-cache}
work=${V4V_WORK:-/var/tmp/v4v-work}
t0=$(date +%s)

if [ ! -f "$cache/xen-pristine/xen/Makefile" ]; then
  command -v apt-get >/dev/null || { echo "need apt-get to fetch the source" >&2; exit 1; }
  if ! apt-cache showsrc xen >/dev/null 2>&1 || ! command -v bison >/dev/null; then
    sh "$qemu_dir/setup-host.sh"
  fi
  mkdir -p "$cache"
  rm -rf "$cache/xen-pristine.tmp"
  sh "$qemu_dir/fetch-xen-source.sh" "$cache/xen-pristine.tmp"
  mv "$cache/xen-pristine.tmp" "$cache/xen-pristine"
fi
t1=$(date +%s)

mkdir -p "$work"
rm -rf "$work/xen"
cp -a "$cache/xen-pristine" "$work/xen"
"$repo/hypervisor-patch/apply" "$work/xen"
"$repo/hypervisor-patch/apply" "$work/xen" >/dev/null   # idempotence
sh "$here/check-series.sh" "$cache/xen-pristine" "$work/xen"  # git am, patch -p1

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

# V4V_XSM=1: also build with XSM, FLASK and SILO (and FLASK's built-in policy,
# with tools/flask/policy, when checkpolicy is installed) in $V4V_WORK/xen-xsm.
[ "${V4V_XSM:-0}" = 1 ] || exit 0
rm -rf "$work/xen-xsm"
cp -a "$work/xen" "$work/xen-xsm"
sed -i '/^# CONFIG_XSM is not set$/d' "$work/xen-xsm/xen/.config"
printf 'CONFIG_XSM=y\nCONFIG_XSM_FLASK=y\nCONFIG_XSM_SILO=y\n' >>"$work/xen-xsm/xen/.config"
make -s -C "$work/xen-xsm/xen" olddefconfig >/dev/null
for c in XSM XSM_FLASK XSM_SILO V4V; do
  grep -qx "CONFIG_$c=y" "$work/xen-xsm/xen/.config" || { echo "FAIL: CONFIG_$c is not y" >&2; exit 1; }
done
log="$work/build-xsm.log"
if ! make -s -C "$work/xen-xsm/xen" -j"$(nproc)" >"$log" 2>&1; then
  tail -n 40 "$log"; echo "FAIL: Xen build with XSM failed (log: $log)" >&2; exit 1
fi
if grep -n 'warning:' "$log"; then
  echo "FAIL: the XSM build printed warnings (log: $log)" >&2; exit 1
fi
for s in do_v4v_op flask_v4v_send silo_v4v_send; do
  nm "$work/xen-xsm/xen/xen-syms" | grep -q " [Tt] $s\$" || { echo "FAIL: $s not linked" >&2; exit 1; }
done
t3=$(date +%s)
ls -l "$work/xen-xsm/xen/xen"
echo "build-xen: XSM build $((t3 - t2)) s ($(grep -x 'CONFIG_XSM_FLASK_POLICY=y' "$work/xen-xsm/xen/.config" >/dev/null &&
  echo 'with FLASK built-in policy' || echo 'no checkpolicy: no built-in FLASK policy'))"
