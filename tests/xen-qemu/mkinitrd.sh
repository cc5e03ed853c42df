#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# mkinitrd.sh OUT: builds, from the host's Debian packages (setup-host.sh), two busybox roots:
#   OUT/guest.cpio.gz  the guest's initramfs;
#   OUT/dom0.cpio.gz   dom0's: the xl toolstack (Debian's xen-utils-4.17), Debian's kernel and
#                      guest.cpio.gz for the guest, and /etc/xen/guest1.cfg.
# Each /init loads the Xen drivers Debian builds as modules (evtchn, privcmd, xenfs; dom0 also
# gntdev, gntalloc), then runs /test/run.sh when the root has one: the guest's as soon as it is up,
# dom0's once it has created the guest. dom0 then prints the guest's console log (the only way
# the guest's output reaches the serial log), destroys what is left and powers off.
#
# Environment:
#   DOM0_EXTRA, GUEST_EXTRA  directories copied over the roots (e.g. /test/run.sh, binaries:
#                            static ones, or with their libraries, see copy_bin)
#   GUEST      pv (default), pvh (shadow paging and native TSC: see tests/xen-qemu/README.md), or
#              none (dom0 creates no guest)
#   GUEST_MEM  the guest's memory in MiB (default 128)
#   KVER       the kernel version (default the newest /boot/vmlinuz-*-amd64)
set -euo pipefail
out=${1:?usage: mkinitrd.sh OUT}
guest=${GUEST:-pv}
kver=${KVER:-$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -n 1 | sed 's|^/boot/vmlinuz-||')}
kmods=/lib/modules/$kver/kernel/drivers/xen
xl_dir=/usr/lib/xen-4.17/bin   # /usr/sbin/xl is a wrapper that picks a version directory
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

copy_bin() { # ROOT FILE...: each file and the shared libraries ldd names for it
  local root=$1 f lib; shift
  for f in "$@"; do
    install -D -m 755 "$f" "$root$f"
    for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
      [ -e "$root$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
    done
  done
}
base_root() { # ROOT MODULE...
  local root=$1 a m; shift
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,test,lib/modules}
  install -m 755 /bin/busybox "$root/bin/busybox"
  for a in $(/bin/busybox --list); do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done
  copy_bin "$root" /usr/bin/xenstore
  for a in read write ls list exists watch rm chmod; do ln -s xenstore "$root/usr/bin/xenstore-$a"; done
  # glibc dlopens libgcc_s.so.1 (thread cancellation) without ldd seeing it: xl aborts without.
  install -D -m 644 "$(readlink -f /lib/x86_64-linux-gnu/libgcc_s.so.1)" "$root/lib/x86_64-linux-gnu/libgcc_s.so.1"
  for m in "$@"; do install -m 644 "$kmods/$m.ko" "$root/lib/modules/"; done
}
pack() { # ROOT FILE
  (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) >"$2"
}

# --- the guest
g=$work/guest
base_root "$g" xen-evtchn xen-privcmd xenfs/xenfs
[ -n "${GUEST_EXTRA:-}" ] && cp -a "$GUEST_EXTRA/." "$g/"
cat >"$g/init" <<'EOS'
#!/bin/sh
export PATH=/bin:/usr/bin:/usr/local/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in xen-evtchn xen-privcmd xenfs; do insmod /lib/modules/$m.ko; done
mkdir -p /proc/xen; mount -t xenfs xenfs /proc/xen
echo "=== GUEST-UP domid=$(xenstore-read domid) ==="
if [ -x /test/run.sh ]; then /test/run.sh; echo "=== GUEST-TEST-EXIT rc=$? ==="; fi
exec sleep 100000
EOS
chmod 755 "$g/init"
pack "$g" "$out/guest.cpio.gz"

# --- dom0
r=$work/dom0
base_root "$r" xen-evtchn xen-privcmd xenfs/xenfs xen-gntdev xen-gntalloc
mkdir -p "$r"/{etc/xen,var/lib/xen,var/lib/xenstored,var/log/xen/console,guest}
ln -s ../run "$r/var/run"
copy_bin "$r" $xl_dir/xl $xl_dir/xenstored $xl_dir/xenconsoled $xl_dir/xen-init-dom0 $xl_dir/libxl-save-helper
if [ "$guest" != none ]; then
  install -m 644 "/boot/vmlinuz-$kver" "$r/guest/vmlinuz"
  install -m 644 "$out/guest.cpio.gz" "$r/guest/initrd.gz"
  {
    echo 'name = "guest1"'
    case $guest in
      pv) echo 'type = "pv"' ;;
      # QEMU's SVM breaks HAP (a bogus CR0-read exit) and RDTSCP exits: shadow paging, native TSC.
      pvh) printf 'type = "pvh"\nhap = 0\ntsc_mode = "native"\n' ;;
      *) echo "mkinitrd.sh: GUEST=$guest: pv, pvh or none" >&2; exit 1 ;;
    esac
    printf 'kernel = "/guest/vmlinuz"\nramdisk = "/guest/initrd.gz"\n'
    printf 'extra = "console=hvc0 rdinit=/init quiet"\nmemory = %s\nvcpus = 1\n' "${GUEST_MEM:-128}"
    printf 'on_poweroff = "destroy"\non_crash = "destroy"\n'
  } >"$r/etc/xen/guest1.cfg"
fi
[ -n "${DOM0_EXTRA:-}" ] && cp -a "$DOM0_EXTRA/." "$r/"
cat >"$r/init" <<'EOS'
#!/bin/sh
export PATH=/bin:/usr/bin:/usr/local/bin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run/xen /run/xenstored /run/lock; mount -t devpts devpts /dev/pts
for m in xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc; do insmod /lib/modules/$m.ko; done
mkdir -p /proc/xen; mount -t xenfs xenfs /proc/xen
ifconfig lo up
xenstored --pid-file=/run/xen/xenstored.pid
n=0; while [ ! -S /run/xenstored/socket ] && [ $n -lt 100 ]; do sleep 0.2; n=$((n + 1)); done
xen-init-dom0
xenconsoled --pid-file=/run/xen/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
echo "=== DOM0-UP ==="
if [ -f /etc/xen/guest1.cfg ]; then
  xl create /etc/xen/guest1.cfg && echo "=== GUEST-CREATED ===" || echo "=== GUEST-CREATE-FAILED ==="
fi
if [ -x /test/run.sh ]; then /test/run.sh; echo "=== DOM0-TEST-EXIT rc=$? ==="; fi
for f in /var/log/xen/console/guest-*.log; do
  [ -f "$f" ] && { echo "--- console of ${f##*/guest-}"; cat "$f"; }
done
for d in $(xl list 2>/dev/null | awk 'NR > 2 { print $1 }'); do xl destroy "$d"; done
echo "=== DOM0-DONE ==="
poweroff -f
EOS
chmod 755 "$r/init"
pack "$r" "$out/dom0.cpio.gz"
ls -l "$out"/*.cpio.gz
