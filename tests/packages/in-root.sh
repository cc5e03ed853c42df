#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# Run by tests/packages/run inside the clean Debian root (chroot, own PID namespace), with the
# packages and examples/c/v4v-echo.c in /v4v-test. Fails on the first check that does not hold.
set -euo pipefail
# With pipefail, `cmd | grep -q` fails when grep exits at its match before cmd has written
# everything (cmd gets SIGPIPE): the checks below let grep read all of it.
cd /v4v-test
fail() { echo "FAILED: $*" >&2; exit 1; }
wait_for() { # DESCRIPTION COMMAND...: up to 10 s
  local what=$1; shift
  for _ in $(seq 500); do "$@" >/dev/null 2>&1 && return 0; sleep 0.02; done
  fail "$what"
}
# Every path outside the runtime and dpkg's own bookkeeping.
snapshot() {
  find / -xdev \( -path /proc -o -path /dev -o -path /run -o -path /tmp -o -path /v4v-test \
    -o -path /var/lib/dpkg -o -path /var/log -o -path /var/cache -o -path /sys \) -prune -o -print |
    sort
}
pkgs=(v4v v4v-sim libv4v0 libv4v-dev)

snapshot >/tmp/before
dpkg -i ./*.deb >/tmp/dpkg-install.log 2>&1 || { cat /tmp/dpkg-install.log; fail "dpkg -i"; }
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" | grep "install ok installed" >/dev/null || fail "$p not installed"
  dpkg -L "$p" >>/tmp/listed
done
grep -qx /etc/v4v/v4vd.conf /var/lib/dpkg/info/v4v.conffiles || fail "v4vd.conf is not a conffile"

v4vd --version | grep -x "v4vd 0.1.0" >/dev/null || fail "v4vd --version: $(v4vd --version)"
v4v-cli --version | grep -x "v4v-cli 0.1.0" >/dev/null || fail "v4v-cli --version"
v4vd --config /etc/v4v/v4vd.conf --check-config | grep -x 'hypervisor = "xen"' >/dev/null ||
  fail "the shipped config does not check"

# Man pages: every one renders, without warnings, and man finds them by name.
pages=$(dpkg -L v4v | grep '/usr/share/man/.*\.gz$')
[ "$(echo "$pages" | wc -l)" -ge 5 ] || fail "too few man pages: $pages"
for p in $pages; do
  out=$(MANWIDTH=80 man --warnings -l "$p" 2>/tmp/man.err)
  [ -s /tmp/man.err ] && { cat /tmp/man.err; fail "man -l $p warns"; }
  [ "$(echo "$out" | wc -l)" -gt 10 ] || fail "man -l $p: nearly empty"
done
for name in "8 v4vd" "1 v4v-cli" "1 v4v-cli-send" "5 v4vd.conf" "5 v4v-acl.rules"; do
  # shellcheck disable=SC2086
  man -w $name >/dev/null || fail "man $name not found"
done
MANWIDTH=80 man 5 v4vd.conf | grep "migrate-config" >/dev/null || fail "v4vd.conf(5) lacks the migration rule"

# The units.
systemd-analyze verify /lib/systemd/system/v4vd.service /lib/systemd/system/v4vd.socket \
  >/tmp/verify.log 2>&1 || { cat /tmp/verify.log; fail "systemd-analyze verify"; }
if grep -q v4v /tmp/verify.log; then cat /tmp/verify.log; fail "systemd-analyze verify warns"; fi
grep -qx "Type=notify" /lib/systemd/system/v4vd.service || fail "not Type=notify"

# Completions: bash loads them.
bash -c '. /usr/share/bash-completion/bash_completion; . /usr/share/bash-completion/completions/v4v-cli;
         . /usr/share/bash-completion/completions/v4vd; complete -p v4v-cli && complete -p v4vd' \
  >/dev/null || fail "bash completions"
for f in /usr/share/zsh/vendor-completions/_v4vd /usr/share/fish/vendor_completions.d/v4v-cli.fish; do
  [ -s "$f" ] || fail "$f missing"
done

# The installed stack: v4v-sim, dom0's v4vd from the shipped config (sim backend) under a
# notify socket and a journal, dom1's v4vd, v4v-cli.
v4v-sim --socket /run/v4v-sim.sock --log-level warn </dev/null &
wait_for "v4v-sim socket" test -S /run/v4v-sim.sock
socat -u UNIX-RECV:/run/notify.sock OPEN:/tmp/notify.log,creat,append &
mkdir -p /run/systemd/journal
socat -u UNIX-RECV:/run/systemd/journal/socket OPEN:/tmp/journal.log,creat,append &
wait_for "fake sockets" test -S /run/notify.sock -a -S /run/systemd/journal/socket
: >/tmp/v4vd0.err
NOTIFY_SOCKET=/run/notify.sock JOURNAL_STREAM=$(stat -c %d:%i /tmp/v4vd0.err) \
  v4vd --config /etc/v4v/v4vd.conf --hypervisor sim:/run/v4v-sim.sock --domid 0 \
  </dev/null 2>>/tmp/v4vd0.err &
d0=$!
wait_for "READY=1 from v4vd" grep -q READY=1 /tmp/notify.log
v4v-cli status | grep -E "^domain +0$" >/dev/null || fail "v4v-cli status: $(v4v-cli status 2>&1)"
[ "$(stat -c %a /run/v4v/v4vd.sock)" = 666 ] || fail "socket mode"
V4VD_LOG=warn v4vd --hypervisor sim:/run/v4v-sim.sock --domid 1 --socket /run/v4v/d1.sock </dev/null &
d1=$!
wait_for "dom1's v4vd" v4v-cli --socket /run/v4v/d1.sock status

# The C example against the installed dev package.
# shellcheck disable=SC2046
gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -o /tmp/v4v-echo v4v-echo.c \
  $(pkg-config --cflags --libs libv4v) || fail "compiling against libv4v-dev"
ldd /tmp/v4v-echo | grep -E "libv4v.so.0 => (/usr)?/lib/x86_64-linux-gnu/libv4v.so.0" >/dev/null ||
  fail "not linked to the installed libv4v.so.0: $(ldd /tmp/v4v-echo)"
[ "$(pkg-config --modversion libv4v)" = 0.1.0 ] || fail "pkg-config --modversion libv4v"
# shellcheck disable=SC2046
gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -o /tmp/v4v-echo-static v4v-echo.c \
  $(pkg-config --cflags libv4v) /usr/lib/x86_64-linux-gnu/libv4v.a \
  $(pkg-config --static --libs-only-l libv4v | sed 's/-lv4v //') || fail "linking libv4v.a"
ldd /tmp/v4v-echo-static | grep libv4v >/dev/null && fail "the static build links libv4v.so"
V4V_SOCKET=/run/v4v/d1.sock /tmp/v4v-echo serve 7000 1 2>/tmp/serve.err &
server=$!
wait_for "v4v-echo listening" sh -c 'v4v-cli --socket /run/v4v/d1.sock status --json | grep -q 7000'
out=$(/tmp/v4v-echo send 1:7000 "hello from the package" 2>/tmp/send.err)
[ "$out" = "hello from the package" ] || { cat /tmp/send.err; fail "v4v-echo: got '$out'"; }
wait "$server" || { cat /tmp/serve.err; fail "v4v-echo serve"; }
V4V_SOCKET=/run/v4v/d1.sock /tmp/v4v-echo-static serve 7001 1 2>/tmp/serve.err &
server=$!
wait_for "static v4v-echo listening" sh -c 'v4v-cli --socket /run/v4v/d1.sock status --json | grep -q 7001'
out=$(/tmp/v4v-echo-static send 1:7001 "static" 2>/tmp/send.err)
[ "$out" = "static" ] || { cat /tmp/send.err; fail "static v4v-echo: got '$out'"; }
wait "$server" || { cat /tmp/serve.err; fail "static v4v-echo serve"; }

# A user refused a privileged port: a warning with the user's uid and the port as fields.
setpriv --reuid=nobody --regid=nogroup --clear-groups v4v-cli recv 80 --timeout 1 2>/dev/null &&
  fail "nobody bound port 80"
wait_for "the refusal in the journal" grep -aq "^MESSAGE=privileged port refused" /tmp/journal.log
grep -aq "^V4V_UID=65534$" /tmp/journal.log || fail "no V4V_UID field"
grep -aq "^V4V_PORT=80$" /tmp/journal.log || fail "no V4V_PORT field"
grep -aq "^PRIORITY=4$" /tmp/journal.log || fail "no PRIORITY=4 entry"
# Journal entries: priorities, the identifier, fields; nothing on stderr.
grep -aq "^PRIORITY=6$" /tmp/journal.log || fail "no PRIORITY=6 entry"
grep -aq "^SYSLOG_IDENTIFIER=v4vd$" /tmp/journal.log || fail "no SYSLOG_IDENTIFIER"
grep -aq "^V4V_DOMID=0$" /tmp/journal.log || fail "no V4V_DOMID field: $(cat -v /tmp/journal.log)"
grep -aq "^MESSAGE=listening" /tmp/journal.log || fail "no 'listening' entry"
[ -s /tmp/v4vd0.err ] && { cat /tmp/v4vd0.err; fail "v4vd wrote to stderr with a journal"; }

kill "$d1" "$d0"
wait "$d0" || fail "dom0's v4vd exited with $?"
wait "$d1" || true
grep -q STOPPING=1 /tmp/notify.log || fail "no STOPPING=1"
[ -e /run/v4v/v4vd.sock ] && fail "v4vd left its socket"

# Purge: nothing of the packages is left, and nothing else changed.
dpkg --purge "${pkgs[@]}" >/tmp/dpkg-purge.log 2>&1 || { cat /tmp/dpkg-purge.log; fail "dpkg --purge"; }
for p in "${pkgs[@]}"; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case $st in "" | *not-installed) ;; *) fail "$p still known to dpkg: $st" ;; esac
done
while read -r f; do
  [ -e "$f" ] || continue
  # Directories other packages own (/usr/share/man, or /lib/systemd, /lib being /usr/lib).
  grep -qx "$(readlink -f "$f")" /tmp/before || fail "$f is left after purge"
done </tmp/listed
[ -e /etc/v4v ] && fail "/etc/v4v is left after purge"
snapshot >/tmp/after
diff /tmp/before /tmp/after || fail "the purge did not restore the root"
echo "in the clean root: install, v4vd --version, $(echo "$pages" | wc -l) man pages, systemd-analyze verify, completions, the stack (READY, journal fields V4V_UID and V4V_PORT), the C example, purge: all passed"
