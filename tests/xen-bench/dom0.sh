#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
# /test/run.sh of dom0 for tests/xen-bench/run: starts v4vd, waits until the guest's
# `v4v-bench serve` listens (the guest says so in xenstore under $KD), runs the benchmark with its
# peers in the guest, and prints its progress, table and JSON between markers on the serial
# console.
. /test/lib.sh
G=$(xl domid guest1)
KD=/local/domain/$G/data/e2e
echo "BENCH-DOM0 guest=$G"
start_v4vd || { echo "BENCH-FAIL v4vd in dom0: $(tail -n 5 /tmp/v4vd.log | tr '\n' ' ')"; exit 1; }
v=$(await serving 240)
case "$v" in
  7700) ;;
  *) echo "BENCH-FAIL the guest's server: ${v:-no answer}"; exit 1 ;;
esac
# shellcheck disable=SC2046 # the sizes are words
set -- $(cat /test/bench.args)
t0=$(date +%s)
# Event upcalls to dom0's v4vd (its /dev/xen/evtchn binding's interrupts, all CPUs) over the run.
irqs() { grep -a 'evtchn:v4vd' /proc/interrupts | awk '{ for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print s + 0 }'; }
irq0=$(irqs)
# Its progress and then its table (stderr) go straight to the console; the JSON after them.
echo "BENCH-TABLE-BEGIN"
# Bounded, so that a hung run still ends with the logs (the guest's console is printed after).
timeout "$(cat /test/bench.timeout)" v4v-bench --json --peer-at "$G:7700" --pids "$V4VD_PID" "$@" >/tmp/bench.json
rc=$?
echo "BENCH-TABLE-END"
echo "BENCH-RUN rc=$rc secs=$(( $(date +%s) - t0 )) dom0-v4vd-upcalls=$(( $(irqs) - irq0 ))"
echo "BENCH-JSON-BEGIN"; cat /tmp/bench.json; echo "BENCH-JSON-END"
# Each v4vd's count of multicalls Xen rejected as a whole (the guest's sent the datagrams).
put bench-done yes
echo "BENCH-MULTICALL rejected: guest $(await multicall-rejected 60 || echo '?'), dom0 $(grep -c 'rejected a multicall' /tmp/v4vd.log)"
[ "$rc" = 0 ] || { echo "BENCH-FAIL v4vd log:"; tail -n 20 /tmp/v4vd.log; }
exit "$rc"
