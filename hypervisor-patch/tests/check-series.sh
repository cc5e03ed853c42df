#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# usage: check-series.sh PRISTINE_TREE APPLIED_TREE
#
# The one-mail series from hypervisor-patch/mkseries must apply to a pristine
# Xen 4.17 tree both with "git am" and with "patch -p1", and give exactly the
# files that hypervisor-patch/apply gave in APPLIED_TREE. Works on a scratch
# copy of only the files the series touches, so it takes a second or two.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
pristine=${1:?usage: $0 PRISTINE_TREE APPLIED_TREE}
applied=${2:?usage: $0 PRISTINE_TREE APPLIED_TREE}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

"$here/../mkseries" "$tmp/v4v.patch" >/dev/null
files=$(sed -n 's|^+++ b/\([^	]*\).*|\1|p' "$tmp/v4v.patch" | sort -u)

for t in git patch; do
  mkdir "$tmp/$t"
  for f in $files; do
    [ -e "$pristine/$f" ] || continue     # a new file
    mkdir -p "$tmp/$t/$(dirname "$f")"
    cp "$pristine/$f" "$tmp/$t/$f"
  done
done

(
  cd "$tmp/git"
  git init -q .
  git add -A
  git -c user.name=check -c user.email=check@localhost commit -q -m pristine
  git -c user.name=check -c user.email=check@localhost am -q "$tmp/v4v.patch"
) || { echo "check-series: git am failed" >&2; exit 1; }
patch -p1 -s -f -d "$tmp/patch" <"$tmp/v4v.patch" ||
  { echo "check-series: patch -p1 failed" >&2; exit 1; }

n=0
for f in $files; do
  for t in git patch; do
    cmp -s "$tmp/$t/$f" "$applied/$f" ||
      { echo "check-series: $f after $t differs from apply's" >&2; exit 1; }
  done
  n=$((n + 1))
done
find "$tmp/patch" -name '*.orig' -o -name '*.rej' | grep . &&
  { echo "check-series: patch left .orig/.rej files (fuzz?)" >&2; exit 1; }
echo "check-series: git am and patch -p1 apply the series; $n files as apply makes them"
