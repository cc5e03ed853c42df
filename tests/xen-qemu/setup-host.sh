#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Installs what building Xen and booting it under QEMU needs on Debian 12 (bookworm), as root.
# Safe to run again: sources already present are kept, installed packages are skipped by apt.
#   - the hypervisor build: bison, flex, bc, python3, a C toolchain; dpkg-dev for `apt-get source`;
#   - the boot: Debian's kernel (dom0 and guest kernel), busybox-static (both roots), the xl
#     toolstack (xen-utils-4.17), and QEMU 10 from bookworm-backports: bookworm's own QEMU 7.2
#     conflicts with the backports qemu-utils these machines have, and its SMAP emulation crashes
#     a PV dom0.
# deb-src lines for bookworm are added because fetch-xen-source.sh uses `apt-get source xen`.
set -eu
[ "$(id -u)" = 0 ] || { echo "setup-host.sh: run as root" >&2; exit 1; }
d=/etc/apt/sources.list.d
add_source() { # FILE TYPE SUITE
  printf 'Types: %s\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$2" "$3" >"$d/$1"
}
# Only what apt does not know already (the machine may have its own lines for either).
apt-cache policy 2>/dev/null | grep -q ' bookworm-backports/main ' ||
  add_source v4v-bookworm-backports.sources deb bookworm-backports
[ -n "$(apt-cache showsrc xen 2>/dev/null)" ] || add_source v4v-bookworm-src.sources deb-src bookworm
apt-get update -qq
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends \
  build-essential bison flex bc python3 cpio dpkg-dev xz-utils \
  linux-image-amd64 busybox-static xen-utils-4.17 libxen-dev
apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86
