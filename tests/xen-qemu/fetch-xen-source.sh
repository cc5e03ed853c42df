#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# fetch-xen-source.sh DIR: unpacks the upstream tarball of Debian's xen 4.17 source package into
# DIR (which must not exist yet). Needs the deb-src lines setup-host.sh adds. Several versions may
# be listed (bookworm, bookworm-security); the newest one with its source on the mirror wins: the
# security pocket's newest sometimes has none.
set -eu
dir=${1:?usage: fetch-xen-source.sh DIR}
[ -e "$dir" ] && { echo "fetch-xen-source.sh: $dir exists" >&2; exit 1; }
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
got=
for v in $(apt-cache showsrc xen | sed -n 's/^Version: //p' | sort -urV); do
  if (cd "$dl" && apt-get source --download-only -qq "xen=$v" >/dev/null 2>&1); then got=$v; break; fi
done
[ -n "$got" ] || { echo "fetch-xen-source.sh: no xen source package could be downloaded" >&2; exit 1; }
tarball=$(ls "$dl"/xen_*.orig.tar.* | head -n 1)
mkdir -p "$dir"
tar -xf "$tarball" -C "$dir" --strip-components=1
echo "fetch-xen-source.sh: $(basename "$tarball") (Debian $got) in $dir"
