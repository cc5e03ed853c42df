#!/bin/sh
# SPDX-License-Identifier: MIT OR Apache-2.0
# /test/run.sh of dom0 (runs once the guest is created): dom0's half of tests/xen-e2e/run. It
# drives the guest's half (guest.sh) through xenstore keys under $KD and prints one
# "E2E-RESULT ok|fail NAME: detail" line per check for the host to collect from the serial log.
. /test/lib.sh
G=$(xl domid guest1)
KD=/local/domain/$G/data/e2e
echo "E2E-DOM0-BEGIN guest=$G"
result() { # ok|fail NAME DETAIL
  echo "E2E-RESULT $1 $2: $3"
}
expect() { # NAME CONDITION-COMMAND... (DETAIL in $detail)
  _name=$1; shift
  if "$@"; then result ok "$_name" "$detail"; else result fail "$_name" "$detail"; fi
}
# The boot without v4v=1 only checks what v4vd says.
if ! xl info | grep -q '^xen_commandline.* v4v=1'; then
  v=$(v4vd --socket /tmp/probe.sock 2>&1 | tail -n 1 | sed 's/.*ERROR v4vd: //'); detail=$v
  ok() { echo "$v" | grep -q "booted without v4v=1"; }
  expect "v4vd says what is missing: v4v=1 on Xen's command line" ok
  echo "E2E-DOM0-END"
  exit 0
fi
rc_of() { echo "$1" | sed -n 's/^rc=\([0-9]*\).*/\1/p'; }
dump() { # TAG: the V4V debug key's output, one line per "V4V" line, into /tmp/TAG
  xl dmesg -c >/dev/null
  xl debug-keys 4
  xl dmesg -c | grep -a 'V4V' | sed 's/^.*V4V/V4V/' >"/tmp/$1"
  sed "s/^/$1 /" "/tmp/$1"
}

await guest-up 180 >/dev/null || echo "E2E-DOM0 the guest did not come up"
# What libv4v says when something is missing (the guest tried before loading the driver right).
v=$(get err-nodriver); detail=$v
ok() { echo "$v" | grep -q "xen-privcmd module is not loaded"; }
expect "v4vd says what is missing: the xen-privcmd driver" ok
v=$(get err-restricted); detail=$v
ok() { echo "$v" | grep -q "unrestricted=1"; }
expect "v4vd says what is missing: privcmd restricted in a domU (XSA-482)" ok

# 1. conformance across dom0 and the guest.
echo "E2E-CONF-BEGIN"
t0=$(date +%s)
v4v-conformance --backend xen --xen-peer "$G" /scenarios
rc=$?
echo "E2E-CONF-END rc=$rc secs=$(( $(date +%s) - t0 ))"
a=$(await agent 120); echo "E2E-DOM0 guest agent: $a"
dump AFTER-CONF
held=$(sed -n 's/^V4V page references held: \([0-9]*\).*/\1/p' /tmp/AFTER-CONF)
rings=$(grep -c '^V4V  ring port' /tmp/AFTER-CONF)
detail="rings left $rings, page references held ${held:-?}"
ok() { [ "$rings" = 0 ] && [ "$held" = 0 ]; }
expect "conformance leaves no ring or page reference behind (debug key 4)" ok
put conformance-checked yes

# 2. v4vd in both domains, datagrams both ways. dom0 publishes its own name and the guest's for
#    guests (section 4a); its audit lines about names are kept in the log.
export V4VD_LOG=warn,v4vd::daemon::names=info
if start_v4vd --publish-names "Domain-0 guest1"; then detail="$(v4v-cli status | tr -s ' \n' ' ')"; result ok "v4vd serves in dom0" "$detail"
else result fail "v4vd serves in dom0" "$(tail -n 5 /tmp/v4vd.log | tr '\n' ' ')"; fi
v=$(await v4vd 120); detail=$v
ok() { [ "${v%% *}" = ok ] && echo "$v" | grep -q "domain $G "; }
expect "v4vd serves in the guest" ok
await recv1-ready 60 >/dev/null
v4v-cli send "$G:5000" "hello-from-dom0"; src=$?
v=$(await recv1 90); detail="send exit $src; guest recv: $v"
ok() { [ "$src" = 0 ] && [ "$(rc_of "$v")" = 0 ] && echo "$v" | grep -q "0:[0-9]* hello-from-dom0"; }
expect "datagram dom0 -> guest (v4v-cli send/recv)" ok
v4v-cli recv 5001 --count 1 --timeout 60 --verbose >/tmp/r2 2>&1 &
rp=$!
until_true 20 has_port 5001; put recv2-ready yes
wait $rp; rrc=$?
v=$(await send2 60); detail="guest send: $v; dom0 recv exit $rrc: $(cat /tmp/r2)"
ok() { [ "$rrc" = 0 ] && grep -q "^$G:[0-9]*	hello-from-guest-$G\$" /tmp/r2; }
expect "datagram guest -> dom0 (v4v-cli send/recv)" ok

# 3. 16 MiB stream guest -> dom0.
v4v-cli listen 6000 --once </dev/null >/tmp/in 2>/tmp/listen.err &
lp=$!
until_true 20 has_port 6000; put listen-ready yes
v=$(await stream 300); wait $lp; lrc=$?
want=$(await sha 10); got=$(sha256sum </tmp/in | cut -d' ' -f1); size=$(wc -c </tmp/in)
detail="guest connect: $v; dom0 listen exit $lrc; $size bytes; sha256 sent $want, received $got"
ok() { [ "$lrc" = 0 ] && [ "$size" = 16777216 ] && [ "$want" = "$got" ] && [ "$(rc_of "$v")" = 0 ]; }
if ! ok; then  # where the received bytes differ from what the guest sent (the same seq output)
  seq -w 0 2097151 >/tmp/sent
  n=$(cmp -l /tmp/sent /tmp/in 2>/dev/null | wc -l)
  detail="$detail; $n bytes differ, first: $(cmp -l /tmp/sent /tmp/in 2>/dev/null | head -n 3 | tr '\n' ' ')last: $(cmp -l /tmp/sent /tmp/in 2>/dev/null | tail -n 1)"
  rm -f /tmp/sent
fi
expect "16 MiB stream guest -> dom0, checksums match" ok
rm -f /tmp/in

# 4. the ACL.
v4v-cli recv 5002 --count 1 --timeout 120 --verbose >/tmp/r3 2>&1 &
rp=$!
until_true 20 has_port 5002
v4v-cli acl add "reject $G:* -> 0:*"; arc=$?
put acl-set yes
v=$(await acl-denied 60); detail="acl add exit $arc; guest send: $v (6: denied by the ACL)"
ok() { [ "$arc" = 0 ] && [ "$(rc_of "$v")" = 6 ]; }
expect "ACL rule in dom0 stops guest -> dom0" ok
v4v-cli acl delete "reject $G:* -> 0:*"; drc=$?
put acl-cleared yes
v=$(await acl-restored 60); wait $rp; rrc=$?
detail="acl delete exit $drc; guest send: $v; dom0 recv exit $rrc: $(cat /tmp/r3)"
ok() { [ "$drc" = 0 ] && [ "$(rc_of "$v")" = 0 ] && [ "$rrc" = 0 ] && grep -q "^$G:[0-9]*	restored" /tmp/r3; }
expect "removing the rule restores guest -> dom0" ok
v=$(await acl-edit 60); detail="guest acl add: $v (9: not permitted); table now: $(v4v-cli acl list | tr '\n' ' ')"
ok() { [ "$(rc_of "$v")" = 9 ] && ! v4v-cli acl list | grep -q reject; }
expect "the guest's ACL edit is refused" ok

# 4a. Domains by name, both ways; a rule by name; and a stream through the guest's v4v-cli forward.
v4v-cli recv 5201 --count 1 --timeout 90 --verbose >/tmp/r5 2>&1 &
rp=$!
until_true 20 has_port 5201
put names-ready yes
await names-recv-ready 60 >/dev/null
v4v-cli send guest1:5200 "by-name-from-dom0" 2>/tmp/e5; nsrc=$?
exit_of 90 $rp; rrc=$?
v=$(await names 120)
detail="dom0: send guest1:5200 exit $nsrc $(head -c 100 /tmp/e5), recv exit $rrc: $(cat /tmp/r5); guest: $v"
ok() { [ $nsrc = 0 ] && [ $rrc = 0 ] && grep -q "^$G:[0-9]*	by-name-from-guest\$" /tmp/r5 &&
       echo "$v" | grep -q "recv rc=0 0:[0-9]* by-name-from-dom0"; }
expect "names: guest1 and Domain-0 resolve in dom0 and in the guest (v4v-cli send NAME:PORT)" ok
v4v-cli acl add "reject name:guest1:* -> 0:7300"; narc=$?
v4v-cli acl check guest1:1 0:7300 >/tmp/chk; ncrc=$?
detail="acl add exit $narc; check exit $ncrc: $(cat /tmp/chk); table: $(v4v-cli acl list | tr -s ' \n' ' ')"
ok() { [ $narc = 0 ] && [ $ncrc = 6 ] && v4v-cli acl list | grep -q "guest1 = domain $G)"; }
expect "names: a rule by name is in the hypervisor's table as the guest's id" ok
v4v-cli listen 6500 --once </dev/null >/tmp/fwd.out 2>/tmp/fwd.err &
lp=$!
until_true 20 has_port 6500; put fwd-ready yes
await fwd-listening 60 >/dev/null
seq -w 0 131071 >/tmp/fwd.in
v4v-cli connect guest1:6600 </tmp/fwd.in >/dev/null 2>/tmp/fwdc.err; fcrc=$?
exit_of 60 $lp; flrc=$?
put fwd-done yes
v=$(await fwd-log 60)
a=$(sha256sum </tmp/fwd.in | cut -d' ' -f1); b=$(sha256sum </tmp/fwd.out | cut -d' ' -f1)
detail="connect guest1:6600 exit $fcrc $(head -c 100 /tmp/fwdc.err), listen exit $flrc, $(wc -c </tmp/fwd.out) of $(wc -c </tmp/fwd.in) bytes, sha256 $a / $b; guest's forward: $v"
ok() { [ $fcrc = 0 ] && [ $flrc = 0 ] && [ "$a" = "$b" ]; }
expect "forward: a 1 MiB stream dom0 -> the guest's v4v-cli forward -> dom0, checksums match" ok
rm -f /tmp/fwd.in /tmp/fwd.out

# 4b. Save and restore, then a localhost migration, of the guest while its v4vd holds a datagram
#     port (5100), a listening port (6200) and streams both ways. Each time the guest comes back
#     as a new domain: $G and $KD follow it.
held_stdin
v4v-cli listen 6300 --once </tmp/held >/dev/null 2>/tmp/l6300.err &
l3=$!
until_true 20 has_port 6300; put listen6300 yes
await resume-ready 60 >/dev/null
v4v-cli connect "$G:6200" </tmp/held >/dev/null 2>/tmp/c6200.err &
c2=$!
v4v-cli send "$G:5100" "before-save"
until_true 30 status_has '^streams +2$'
echo "E2E-DOM0 before save: $(v4v-cli status | tr -s ' \n' ' ')"
mkdir -p /save && mount -t tmpfs -o size=400m tmpfs /save   # the whole guest memory goes there
t0=$(date +%s)
xl save guest1 /save/guest1 >/tmp/save.log 2>&1; svrc=$?
t1=$(date +%s)
xl restore /save/guest1 >/tmp/restore.log 2>&1; rsrc=$?
t2=$(date +%s)
rm -f /save/guest1
OLD=$G; G=$(xl domid guest1); KD=/local/domain/$G/data/e2e
echo "E2E-DOM0 xl save exit $svrc ($((t1 - t0)) s), xl restore exit $rsrc ($((t2 - t1)) s): domain $OLD is now $G"
[ $svrc = 0 ] && [ $rsrc = 0 ] || { tail -n 5 /tmp/save.log /tmp/restore.log; }
v=$(await restored 120); detail="xl save exit $svrc, restore exit $rsrc, domain $OLD -> ${G:-?}; guest: $v"
secs=$(echo "$v" | sed -n 's/^rc=0 secs=\([0-9.]*\).*/\1/p')
ok() { [ $svrc = 0 ] && [ $rsrc = 0 ] && [ -n "$G" ] && [ "$G" != "$OLD" ] && [ -n "$secs" ] &&
       awk -v s="$secs" 'BEGIN { exit !(s < 5) }'; }
expect "save/restore: the restored guest's v4vd registers its ports again within 5 s (5100/dgram, 6200/listen)" ok
exit_of 60 $c2; c2rc=$?; exit_of 60 $l3; l3rc=$?
v=$(await c6300 60)
detail="guest: connect to 0:6300 $v; dom0: connect to $OLD:6200 exit $c2rc: $(head -c 200 /tmp/c6200.err), listener on 6300 exit $l3rc: $(head -c 200 /tmp/l6300.err)"
ok() { echo "$v" | grep -q 'the domain was restored' && [ $c2rc != 0 ] && grep -q 'reset' /tmp/c6200.err &&
       [ $l3rc != 0 ] && grep -q 'reset' /tmp/l6300.err; }
expect "save/restore: open streams end with a reset and its reason on both sides" ok
v4v-cli send "$G:5100" "after-restore"; src=$?
put dgram-after-restore yes
v=$(await dg 60); detail="send exit $src; the guest's receiver (started before the save) got: $v"
ok() { [ $src = 0 ] && echo "$v" | grep -q '0:[0-9]* before-save;0:[0-9]* after-restore;'; }
expect "save/restore: the datagram port works again, its client never reconnected" ok
# The guest's side never closes (its listener's stdin never ends): the connect is ended here.
(echo after-restore-stream; sleep 100000) | v4v-cli connect "$G:6200" >/dev/null 2>/tmp/c6200b.err &
cb=$!
put stream-after-restore yes
v=$(await l6200 60); detail="connect to $G:6200: $(head -c 100 /tmp/c6200b.err); guest listener $v"
kill $cb 2>/dev/null
ok() { echo "$v" | grep -q 'out: after-restore-stream' && echo "$v" | grep -q 'the domain was restored'; }
expect "save/restore: the listening port accepts again, its listener never reconnected" ok
dump AFTER-RESTORE
held=$(sed -n 's/^V4V page references held: \([0-9]*\).*/\1/p' /tmp/AFTER-RESTORE)
pages=$(sed -n 's/.* pages \([0-9]*\) .*/\1/p' /tmp/AFTER-RESTORE | awk '{s += $1} END {print s + 0}')
left=$(grep -cE "^V4V d$OLD:|waiter d$OLD |partner $OLD " /tmp/AFTER-RESTORE)
st=$(v4v-cli status | tr -s ' \n' ' ')
detail="lines naming d$OLD: $left; page references held $held, pages of live rings $pages; dom0: $st"
ok() { [ "$left" = 0 ] && [ "$held" = "$pages" ] && ! echo "$st" | grep -q "/peer$OLD" &&
       grep -q "^V4V  ring port 0x13ec partner 32756" /tmp/AFTER-RESTORE; }
expect "save/restore: nothing of the old domain is left, dom0's v4vd forgot it (debug key 4)" ok

# Live migration to this host while dom0 sends datagrams to the guest, ~3 KB each, without
# waiting for space: each accepted one must arrive whole, the flow must go on afterwards.
head -c 3000 /dev/zero | tr '\0' x >/tmp/pad
rm -f /tmp/flow /tmp/flow-stop
(i=0; while [ ! -e /tmp/flow-stop ] && [ $i -lt 600 ]; do
   i=$((i + 1)); d=$(xl domid guest1 2>/dev/null)
   { printf 'mig-%d-' $i; cat /tmp/pad; } | v4v-cli send --nowait "$d:5100" >/dev/null 2>&1
   echo "$i $? $d" >>/tmp/flow
 done) &
fp=$!
until_true 30 sh -c '[ "$(grep -c " 0 " /tmp/flow 2>/dev/null)" -ge 5 ]'
put migrate yes
OLD=$G; t0=$(date +%s)
xl migrate -s '' guest1 'xl migrate-receive' >/tmp/migrate.log 2>&1; mrc=$?
t1=$(date +%s)
G=$(xl domid guest1); KD=/local/domain/$G/data/e2e
echo "E2E-DOM0 xl migrate exit $mrc ($((t1 - t0)) s): domain $OLD is now $G"
[ $mrc = 0 ] || tail -n 5 /tmp/migrate.log
v=$(await migrated 120)
until_true 60 sh -c "[ \"\$(grep -c ' 0 $G\$' /tmp/flow 2>/dev/null)\" -ge 10 ]"
touch /tmp/flow-stop; wait $fp
put flow-done yes
v2=$(await flow 120)
sent_old=$(grep -c " 0 $OLD\$" /tmp/flow); sent_new=$(grep -c " 0 $G\$" /tmp/flow)
refused=$(grep -vc ' 0 ' /tmp/flow)
want=$(awk '$2 == 0 { print $1 }' /tmp/flow | sort -n | ranges)
got=$(echo "$v2" | sed 's/^bad=[0-9]* ids=//')
bad=$(echo "$v2" | sed -n 's/^bad=\([0-9]*\).*/\1/p')
detail="xl migrate exit $mrc ($((t1 - t0)) s), domain $OLD -> $G; guest: $v"
ok() { [ $mrc = 0 ] && [ "$G" != "$OLD" ] && echo "$v" | grep -q '^rc=0 '; }
expect "migration: xl migrate to localhost succeeds and the guest's v4vd serves as the new domain" ok
detail="accepted by domain $OLD: $sent_old, by domain $G: $sent_new, not accepted: $refused; corrupted: ${bad:-?}; accepted: $want; received intact: $got"
ok() { [ "$bad" = 0 ] && [ "$want" = "$got" ] && [ "$sent_old" -ge 5 ] && [ "$sent_new" -ge 10 ]; }
expect "migration: datagrams flow again afterwards, none accepted is lost or corrupted" ok
dump AFTER-MIGRATE
left=$(grep -cE "^V4V d$OLD:|waiter d$OLD |partner $OLD " /tmp/AFTER-MIGRATE)
detail="lines naming d$OLD: $left"
ok() { [ "$left" = 0 ] && grep -q "^V4V d$G: .*rings [1-9]" /tmp/AFTER-MIGRATE; }
expect "migration: nothing of the old domain is left, the new one has its rings (debug key 4)" ok

# 5. destroy the guest while it has rings and a pending send.
v4v-cli recv 7000 --verbose 2>/dev/null | sleep 100000 &
until_true 20 has_port 7000
put fill-ready yes
await listen6100 60 >/dev/null
sleep 100000 | v4v-cli connect "$G:6100" >/dev/null 2>&1 &
until_true 30 status_has "^ +[0-9]+ +peer +$G "
await pending 60 >/dev/null
# a port of dom0's own, bound before the destroy and used after it
v4v-cli recv 7100 --count 1 --timeout 120 --verbose >/tmp/r4 2>&1 &
rp=$!
until_true 20 has_port 7100
waiter=no
for i in $(seq 60); do
  dump BEFORE >/dev/null
  if grep -q "waiter d$G " /tmp/BEFORE; then waiter=yes; break; fi
  sleep 1
done
sed 's/^/BEFORE /' /tmp/BEFORE
grep -q "^V4V d$G: .*rings [1-9]" /tmp/BEFORE && grings=yes || grings=no
grep -q "partner $G " /tmp/BEFORE && prings=yes || prings=no
detail="guest's rings: $grings; dom0 ring for the guest alone: $prings; guest waiting on a dom0 ring: $waiter; guest sent $(get sent) datagrams"
ok() { [ $grings = yes ] && [ $waiter = yes ] && [ $prings = yes ]; }
expect "before xl destroy: the guest has rings and a pending send" ok
# dom0's rings not meant for the guest alone, as (port, partner, len)
ringset() { sed -n "/^V4V d0:/,/^V4V d[1-9]/p" "$1" | sed -n 's/^V4V  ring port \([^ ]*\) partner \([0-9]*\) len \([0-9]*\).*/\1 \2 \3/p' | grep -v " $G " | sort; }
ringset /tmp/BEFORE >/tmp/rings-before
echo "E2E-DOM0 guest console so far:"; cat /var/log/xen/console/guest-guest1.log 2>/dev/null | sed 's/^/GUEST /'
xl destroy guest1; xrc=$?
echo "E2E-DOM0 xl destroy exit $xrc"
sleep 3
dump AFTER
st=$(v4v-cli status 2>&1); src=$?
detail="exit $src: $(echo "$st" | tr -s ' \n' ' ')"
ok() { [ "$src" = 0 ] && kill -0 "$V4VD_PID"; }
expect "after xl destroy: dom0's v4vd still answers (v4v-cli status)" ok
v4v-cli send 0:7100 "local-after-destroy"; src=$?
wait $rp; rrc=$?
detail="send exit $src, recv exit $rrc: $(cat /tmp/r4)"
ok() { [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q "^0:[0-9]*	local-after-destroy" /tmp/r4; }
expect "after xl destroy: dom0-local send/recv works" ok
pages=$(sed -n 's/.* pages \([0-9]*\) .*/\1/p' /tmp/AFTER | awk '{s += $1} END {print s + 0}')
held=$(sed -n 's/^V4V page references held: \([0-9]*\).*/\1/p' /tmp/AFTER)
left=$(grep -cE "^V4V d$G:|waiter d$G |partner $G " /tmp/AFTER)
detail="lines naming d$G: $left; page references held $held, pages of live rings $pages"
ok() { [ "$left" = 0 ] && [ -n "$held" ] && [ "$held" = "$pages" ]; }
expect "after xl destroy: no ring, waiter or page reference left for the dead domain (debug key 4)" ok
ringset /tmp/AFTER >/tmp/rings-after
missing=$(grep -vxF -f /tmp/rings-after /tmp/rings-before | tr '\n' ';')
detail="dom0 rings before: $(tr '\n' ';' </tmp/rings-before) missing after: ${missing:-none}"
ok() { [ -s /tmp/rings-before ] && [ -z "$missing" ]; }
expect "after xl destroy: dom0's own rings intact" ok

# 6. The guest created again under its name is a new domain id: dom0's rule by name (section 4a)
#    matches nothing while no domain is guest1, then applies to the new id.
v4v-cli acl list >/tmp/acl-gone 2>&1
v4v-cli recv 7300 --timeout 400 >/dev/null 2>&1 &
r7300=$!
v4v-cli recv 7301 --count 1 --timeout 400 --verbose >/tmp/r7301 2>&1 &
r7301=$!
until_true 20 has_port 7300; until_true 20 has_port 7301
OLD=$G
sed 's/^extra = "/extra = "e2e=names /' /etc/xen/guest1.cfg >/tmp/guest1-names.cfg
xl create /tmp/guest1-names.cfg >/tmp/create2.log 2>&1; x2rc=$?
G=$(xl domid guest1); KD=/local/domain/$G/data/e2e
echo "E2E-DOM0 guest1 created again (exit $x2rc): domain $G"
until_true 60 sh -c "v4v-cli acl list | grep -q 'guest1 = domain $G)'"; bound=$?
v1=$(await named-ok 400); v2=$(await named-denied 60)
exit_of 60 $r7301; r1rc=$?
kill $r7300 2>/dev/null
audit=$(grep -a 'name guest1' /tmp/v4vd.log | tail -n 3 | sed 's/^.*INFO //' | tr '\n' ';')
detail="while gone: $(grep guest1 /tmp/acl-gone | tr -s ' ' ' '); xl create exit $x2rc, domain $OLD -> $G, table bound: $bound; guest: 0:7301 $v1, 0:7300 $v2 (6: denied); dom0 recv: $(cat /tmp/r7301); audit: $audit"
ok() { grep -q "no domain is named guest1" /tmp/acl-gone && [ $x2rc = 0 ] && [ "$G" != "$OLD" ] &&
       [ $bound = 0 ] && [ "$(rc_of "$v1")" = 0 ] && [ "$(rc_of "$v2")" = 6 ] && [ $r1rc = 0 ] &&
       grep -q "^$G:[0-9]*	named-$G" /tmp/r7301 && echo "$audit" | grep -q "name guest1 is now domain $G"; }
expect "names: after xl destroy and xl create the rule by name applies to the guest's new id (audited)" ok
echo "E2E-DOM0 v4vd log:"; tail -n 20 /tmp/v4vd.log
echo "E2E-DOM0-END"
