# SPDX-License-Identifier: MIT OR Apache-2.0
# Helpers for the scripts run in dom0 and in the guest (sourced as /test/lib.sh).
# Both sides meet in xenstore under $KD = /local/domain/GUEST/data/e2e, which the guest owns and
# dom0 can write: V4V is what is under test, so it is never the control channel.
export PATH=/bin:/usr/bin:/usr/local/bin:/usr/lib/xen-4.17/bin
export V4VD_LOG=${V4VD_LOG:-warn}

put() { xenstore-write "$KD/$1" "$2"; }
get() { xenstore-read "$KD/$1" 2>/dev/null; }
# await KEY SECONDS: print KEY's value once it exists; fail after SECONDS.
await() {
  _n=$(($2 * 5))
  while [ "$_n" -gt 0 ]; do
    if _v=$(get "$1") && [ -n "$_v" ]; then echo "$_v"; return 0; fi
    sleep 0.2; _n=$((_n - 1))
  done
  echo "E2E-TIMEOUT waiting for $1 ($2 s)" >&2
  return 1
}
# until_true SECONDS COMMAND...: retry COMMAND every 0.2 s.
until_true() {
  _n=$(($1 * 5)); shift
  while [ "$_n" -gt 0 ]; do "$@" && return 0; sleep 0.2; _n=$((_n - 1)); done
  return 1
}
# v4v-cli status's text view has a line matching the extended regex $1.
status_has() { v4v-cli status 2>/dev/null | grep -Eq "$1"; }
# Port $1 is bound (a row of the ports table: PORT KIND PEER OWNER).
has_port() { status_has "^ +$1 +(dgram|listen|peer) "; }
# The daemon's socket answers.
v4vd_up() { v4v-cli status >/dev/null 2>&1; }
start_v4vd() { # [V4VD-ARGS...]
  v4vd "$@" >/tmp/v4vd.log 2>&1 &
  V4VD_PID=$!
  until_true 30 v4vd_up
}
# ranges: sorted numbers on stdin as "1-5 7 9-12" (a repeated number breaks a range).
ranges() {
  awk 'NR == 1 { s = e = $1; next } $1 == e + 1 { e = $1; next }
       { printf "%s ", (s == e ? s : s "-" e); s = e = $1 }
       END { if (NR) printf "%s", (s == e ? s : s "-" e) }'
}
# ended PID: the process is gone or a zombie (kill -0 succeeds on a child not waited for yet).
ended() {
  ! kill -0 "$1" 2>/dev/null || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]
}
# exit_of SECONDS PID: PID's exit status once it ended, or 124 (and it is killed) after SECONDS.
exit_of() {
  if until_true "$1" ended "$2"; then wait "$2"; return; fi
  kill "$2" 2>/dev/null; wait "$2" 2>/dev/null; return 124
}
# A stdin that never ends, for clients that must keep their side of a stream open: a FIFO
# held open by a writer that writes nothing. (Not `sleep | client`: ash's `wait PID` waits for
# the whole pipeline, sleep included.)
held_stdin() {
  [ -p /tmp/held ] || { mkfifo /tmp/held; sleep 100000 >/tmp/held & }
}
