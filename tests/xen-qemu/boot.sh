#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# boot.sh XEN INITRD LOG [SECONDS]: boots the hypervisor image XEN (xen/xen of a build, a
# multiboot ELF) under QEMU's software emulator, with Debian's kernel as dom0 and INITRD (from
# mkinitrd.sh) as its initramfs. The serial console (Xen, then dom0 on hvc0) goes to LOG. QEMU is
# stopped after SECONDS (default 300; exit status 124 then). /dev/kvm cannot run Xen on these
# machines, so it is TCG only; one QEMU thread per vCPU.
#
# Environment:
#   XEN_ARGS  Xen's command line after the defaults below (e.g. "v4v=1", "dom0=pvh,shadow ...")
#   DOM0_ARGS dom0 kernel arguments after "console=hvc0 earlyprintk=xen"
#   CPU       QEMU CPU model (default max: AMD SVM with nested paging, so Xen runs PVH guests)
#   MACHINE   QEMU machine (default pc; a PVH dom0 needs q35 and QEMU_ARGS="-device intel-iommu,intremap=on")
#   QEMU_ARGS more QEMU options; MEM (MiB, default 1024), SMP (default 2)
#   KERNEL    dom0 kernel (default the newest /boot/vmlinuz-*-amd64)
set -eu
xen=$1 initrd=$2 log=$3 secs=${4:-300}
kernel=${KERNEL:-$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -n 1)}
# bootscrub=0: scrubbing touches all free memory, and QEMU's RSS would grow to the full MEM.
# xsave=0: under TCG, with Xen using XSAVE, a PV domain's vector registers are corrupted across
#   context switches: glibc's AVX memcpy damages data 32-64 bytes at a time and processes crash,
#   with or without V4V (measured with a plain memcpy loop: dozens of bad copies a minute; none
#   with xsave=0, where domains fall back to SSE state).
# dom0_mem: fixed, so that what is left for guests does not depend on MEM's rounding.
defaults="console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all console_timestamps=boot bootscrub=0 xsave=0 dom0_mem=${DOM0_MEM:-512M},max:${DOM0_MEM:-512M}"
# shellcheck disable=SC2086 # QEMU_ARGS is a list of options
exec timeout "$secs" qemu-system-x86_64 -accel tcg,thread=multi \
  -machine "${MACHINE:-pc}" -cpu "${CPU:-max}" -m "${MEM:-1024}" -smp "${SMP:-2}" ${QEMU_ARGS:-} \
  -nographic -no-reboot -monitor none -display none -serial "file:$log" \
  -kernel "$xen" -append "$defaults ${XEN_ARGS:-}" \
  -initrd "$kernel console=hvc0 earlyprintk=xen ${DOM0_ARGS:-},$initrd"
