#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
# /test/run.sh of the PV guest: the guest's half of tests/xen-e2e/run. dom0's half (dom0.sh) says
# when to act through xenstore keys under $KD; results go back the same way. The guest's console
# reaches the serial log only through dom0 (it prints the guest's console log at the end).
. /test/lib.sh
G=$(xenstore-read domid)
KD=/local/domain/$G/data/e2e
# Xen's guest type as Linux sees it (PV, PVH or HVM), for the host's check.
gtype=$(cat /sys/hypervisor/guest_type 2>/dev/null)
[ -n "$gtype" ] || { dmesg | grep -q 'Booting kernel on Xen PVH' && gtype=PVH || gtype=unknown; }
echo "E2E-GUEST-BEGIN domid=$G type=$gtype"

# Linux restricts /dev/xen/privcmd in unprivileged domains since XSA-482: V4V needs it
# unrestricted. On the way, what v4vd says without the driver, and with it restricted.
missing_msg() { v4vd --socket /tmp/probe.sock 2>&1 | tail -n 1 | sed 's/.*ERROR v4vd: //' | head -c 400; }
put err-restricted "$(missing_msg)"
umount /proc/xen && rmmod xenfs && rmmod xen_privcmd
put err-nodriver "$(missing_msg)"
insmod /lib/modules/xen-privcmd.ko unrestricted=1 && insmod /lib/modules/xenfs.ko &&
  mount -t xenfs xenfs /proc/xen || echo "E2E-GUEST cannot reload xen-privcmd unrestricted"
put guest-up "$G"

# Re-created by dom0 under the same name (dom0.sh section 6, kernel argument e2e=names): only
# the check that dom0's rule by name applies to this new domain id.
if grep -q 'e2e=names' /proc/cmdline; then
  start_v4vd || put named-v4vd "failed: $(tail -n 3 /tmp/v4vd.log | tr '\n' ' ')"
  # Domain-0 resolves once dom0's v4vd has published it for us.
  until_true 60 v4v-cli send Domain-0:7301 "named-$G" 2>/tmp/e; put named-ok "rc=$? $(head -c 200 /tmp/e)"
  v4v-cli send Domain-0:7300 "named-$G" 2>/tmp/e; put named-denied "rc=$? $(head -c 200 /tmp/e)"
  echo "E2E-GUEST-END (re-created)"
  exit 0
fi

# 1. conformance: the agent runs the guest's steps for dom0's runner.
v4v-conformance --backend xen --xen-agent /scenarios 2>/tmp/agent.log
rc=$?
echo "E2E-GUEST agent exit $rc"; tail -n 5 /tmp/agent.log
put agent "rc=$rc"
await conformance-checked 120 >/dev/null  # dom0 looks for leftovers before we register more

# 2. v4vd, and datagrams both ways.
# The resume module says when it registers the rings again (section 4b reports it).
export V4VD_LOG=warn,v4vd::daemon::resume=info
if start_v4vd; then
  v4v-cli status >/tmp/status 2>&1; echo "E2E-GUEST v4v-cli status exit $?:"; cat /tmp/status
  put v4vd "ok $(tr -s ' \n' ' ' </tmp/status)"
else put v4vd "failed: $(tail -n 3 /tmp/v4vd.log | tr '\n' ' ')"; fi
v4v-cli recv 5000 --count 1 --timeout 60 --verbose >/tmp/r1 2>&1 &
rp=$!
until_true 20 has_port 5000
put recv1-ready yes
wait $rp; rc=$?
put recv1 "rc=$rc $(tr '\t' ' ' </tmp/r1)"
await recv2-ready 60 >/dev/null
v4v-cli send 0:5001 "hello-from-guest-$G"; put send2 "rc=$?"

# 3. a 16 MiB stream to dom0.
# 16 MiB of 8-byte lines that dom0 can regenerate to locate any damage.
seq -w 0 2097151 >/tmp/big
put sha "$(sha256sum </tmp/big | cut -d' ' -f1)"
await listen-ready 60 >/dev/null
t0=$(date +%s)
v4v-cli connect 0:6000 </tmp/big >/dev/null 2>/tmp/connect.err
rc=$?
put stream "rc=$rc secs=$(( $(date +%s) - t0 )) $(head -c 200 /tmp/connect.err)"

# 4. the ACL: dom0's rule stops us, its removal lets us through, and we may not edit it.
await acl-set 60 >/dev/null
v4v-cli send 0:5002 "while-denied" 2>/tmp/e; put acl-denied "rc=$? $(head -c 200 /tmp/e)"
await acl-cleared 60 >/dev/null
v4v-cli send 0:5002 "restored" 2>/tmp/e; put acl-restored "rc=$? $(head -c 200 /tmp/e)"
v4v-cli acl add 'reject *:* -> *:*' 2>/tmp/e; put acl-edit "rc=$? $(head -c 200 /tmp/e)"

# 4a. Domains by name: Domain-0, as dom0's v4vd publishes it for us, both ways; and v4v-cli
#     forward relaying a stream from dom0 back to dom0 through this domain.
await names-ready 120 >/dev/null
v4v-cli recv 5200 --count 1 --timeout 60 --verbose >/tmp/r5 2>&1 &
rp=$!
until_true 20 has_port 5200; put names-recv-ready yes
until_true 30 v4v-cli send Domain-0:5201 by-name-from-guest 2>/tmp/e5; src=$?
exit_of 90 $rp; rrc=$?
put names "send rc=$src $(head -c 100 /tmp/e5); recv rc=$rrc $(tr '\t' ' ' </tmp/r5)"
await fwd-ready 120 >/dev/null
v4v-cli forward v4v-listen:6600 v4v:Domain-0:6500 2>/tmp/fwd.log &
fp=$!
until_true 20 has_port 6600; put fwd-listening yes
await fwd-done 300 >/dev/null
kill $fp 2>/dev/null
put fwd-log "$(head -c 300 /tmp/fwd.log | tr '\n' ' ')"

# 4b. dom0 saves and restores us, then migrates us to the same host: each time we come back as a
#     new domain (a new domid, so a new $KD), and this script, v4vd and the clients carry on.
#     A datagram port (5100), a listening port (6200), a stream from dom0 to it and one to dom0.
v4v-cli recv 5100 --verbose >/tmp/dg 2>&1 &
# (stdin never ends: the streams stay open from this side, as an idle server's do)
held_stdin
v4v-cli listen 6200 </tmp/held >/tmp/l6200 2>/tmp/l6200.err &
until_true 20 has_port 5100; until_true 20 has_port 6200
await listen6300 60 >/dev/null
v4v-cli connect 0:6300 </tmp/held >/dev/null 2>/tmp/c6300.err &
cp=$!
put resume-ready yes
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# new_domain WHAT: wait until we are a new domain, then say how long v4vd took to serve as it
# (its STATUS names the new domain, with both ports), measured from when this script noticed.
serves_as_new() { # v4vd's STATUS names domain $G and has both ports
  _s=$(v4v-cli status 2>/dev/null)
  printf '%s\n' "$_s" | grep -Eq "^domain +$G\$" || return 1
  printf '%s\n' "$_s" | grep -Eq '^ +5100 +dgram ' || return 1
  printf '%s\n' "$_s" | grep -Eq '^ +6200 +listen '
}
new_domain() {
  old=$G
  until_true 900 sh -c "[ \"\$(xenstore-read domid)\" != $old ]"
  G=$(xenstore-read domid); KD=/local/domain/$G/data/e2e; t0=$(uptime_s)
  until_true 30 serves_as_new
  ok=$?; t1=$(uptime_s)
  echo "E2E-GUEST $1: domain $old is now $G"
  put "$1" "rc=$ok secs=$(echo "$t0 $t1" | awk '{ printf "%.1f", $2 - $1 }') $(v4v-cli status 2>&1 | tr -s ' \n' ' ' | head -c 300) v4vd: $(grep -a 'resume' /tmp/v4vd.log | tail -n 2 | tr '\n' ' ' | head -c 400)"
}
new_domain restored
exit_of 60 $cp; put c6300 "rc=$? $(head -c 300 /tmp/c6300.err)"
await dgram-after-restore 60 >/dev/null
until_true 20 grep -q after-restore /tmp/dg
put dg "$(tr '\t\n' ' ;' </tmp/dg | head -c 300)"
await stream-after-restore 60 >/dev/null
until_true 20 grep -q after-restore-stream /tmp/l6200
put l6200 "out: $(head -c 200 /tmp/l6200 | tr '\n' ' ') err: $(head -c 300 /tmp/l6200.err | tr '\n' ' ')"
await migrate 60 >/dev/null
new_domain migrated
await flow-done 300 >/dev/null
sleep 2
# Every datagram of the flow, as received: its number if its payload is intact, else "bad".
awk -F'\t' '$2 ~ /^mig-/ { p = $2; sub(/^mig-/, "", p); n = p; sub(/-.*/, "", n); sub(/^[0-9]*-/, "", p)
  if (length(p) != 3000 || p ~ /[^x]/) print "bad"; else print n }' /tmp/dg >/tmp/flow-ids
put flow "bad=$(grep -c bad /tmp/flow-ids) ids=$(grep -v bad /tmp/flow-ids | sort -n | ranges)"

# 5. rings and a pending send, then dom0 destroys us: a stream listener (dom0's daemon then has a
#    ring for us alone), and datagrams into a dom0 port nobody reads until a send blocks.
sleep 100000 | v4v-cli listen 6100 >/dev/null 2>&1 &
until_true 20 has_port 6100
put listen6100 yes
await fill-ready 120 >/dev/null
i=0
while [ $i -lt 400 ]; do
  head -c 60000 /dev/zero | v4v-cli send 0:7000 || break
  i=$((i + 1)); put sent "$i"
done &
put pending started
echo "E2E-GUEST v4vd log:"; tail -n 20 /tmp/v4vd.log
echo "E2E-GUEST-END (waiting to be destroyed)"
