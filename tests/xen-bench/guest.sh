#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
# /test/run.sh of the guest for tests/xen-bench/run: v4vd and `v4v-bench serve` on port 7700,
# which runs the benchmark's V4V peers for dom0. Once it listens, this says so in xenstore and
# then only waits: nothing here polls while the benchmark runs. (Its output reaches the serial
# log when dom0 prints the guest's console at the end.)
. /test/lib.sh
G=$(xenstore-read domid)
KD=/local/domain/$G/data/e2e
# V4V needs /dev/xen/privcmd unrestricted in a domU (XSA-482).
umount /proc/xen && rmmod xenfs && rmmod xen_privcmd &&
  insmod /lib/modules/xen-privcmd.ko unrestricted=1 && insmod /lib/modules/xenfs.ko &&
  mount -t xenfs xenfs /proc/xen || echo "BENCH-GUEST cannot reload xen-privcmd unrestricted"
if ! start_v4vd; then put serving "v4vd failed: $(tail -n 3 /tmp/v4vd.log | tr '\n' ' ')"; exit 1; fi
v4v-bench serve --port 7700 --pids "$V4VD_PID" >/tmp/serve.out 2>/tmp/serve.err &
sp=$!
if until_true 30 has_port 7700; then put serving 7700
else put serving "serve failed: $(head -c 300 /tmp/serve.err)"; fi
# Once dom0's benchmark is over (it writes bench-done: a watch, not a poll), how many times this
# v4vd logged that Xen rejected a multicall (its batches then fell back to a hypercall per send).
(xenstore-watch -n 2 "$KD/bench-done" >/dev/null 2>&1
 put multicall-rejected "$(grep -c 'rejected a multicall' /tmp/v4vd.log)") &
wait $sp
echo "BENCH-GUEST serve exited $?: $(tail -n 5 /tmp/serve.err)"
