#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
# Harness checks, Xen build, QEMU boot test; prints the total time.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
t0=$(date +%s)
make -s -C "$here/../harness" check
sh "$here/build-xen.sh"
sh "$here/boot-test.sh"
echo "run-all: $(( $(date +%s) - t0 )) s in total"
