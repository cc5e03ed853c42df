#!/usr/bin/env bash
# SPDX-License-Identifier: MIT OR Apache-2.0
#
# The C library as a C user gets it: installs it into a temporary prefix (scripts/install-c-lib),
# compiles tests/c/test_client.c and examples/c/v4v-echo.c with
# `gcc $(pkg-config --cflags --libs libv4v)` (and once against libv4v.a), starts v4v-sim and a
# v4vd for domains 1 and 2 (the workspace's debug binaries: `cargo build --workspace` first), and
# runs the programs under valgrind (errors and leaks fail). Needs gcc, pkg-config, valgrind, socat.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/debug
work=$(mktemp -d /tmp/v4v-c-api.XXXXXX)
pids=()
cleanup() {
  # Daemons before the simulator (it goes first in the list), so none reports losing it.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

CARGO_PROFILE=${CARGO_PROFILE:-dev} scripts/install-c-lib "$work/prefix" >/dev/null
export PKG_CONFIG_PATH=$work/prefix/lib/pkgconfig
libdir=$(pkg-config --variable=libdir libv4v)
readelf -d "$libdir/libv4v.so" | grep 'SONAME.*\[libv4v\.so\.0\]' >/dev/null || { echo "no SONAME libv4v.so.0"; exit 1; }
cflags="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g"
# shellcheck disable=SC2046
gcc $cflags -o "$work/test_client" libv4v-c/tests/c/test_client.c $(pkg-config --cflags --libs libv4v) -Wl,-rpath,"$libdir"
# shellcheck disable=SC2046
gcc $cflags -o "$work/v4v-echo" examples/c/v4v-echo.c $(pkg-config --cflags --libs libv4v) -Wl,-rpath,"$libdir"
# shellcheck disable=SC2046
gcc $cflags -o "$work/test_static" libv4v-c/tests/c/test_client.c $(pkg-config --cflags libv4v) \
  "$libdir/libv4v.a" $(pkg-config --libs-only-l --static libv4v | sed 's/-lv4v //')
readelf -d "$work/test_client" | grep 'NEEDED.*\[libv4v\.so\.0\]' >/dev/null || { echo "not linked to libv4v.so.0"; exit 1; }
if readelf -d "$work/test_static" | grep -q 'NEEDED.*libv4v'; then echo "static build links the .so"; exit 1; fi

"$bin/v4v-sim" --socket "$work/sim.sock" --log-level warn </dev/null & pids+=($!)
for _ in $(seq 500); do [ -S "$work/sim.sock" ] && break; sleep 0.02; done
for d in 1 2; do
  V4VD_LOG=warn "$bin/v4vd" --hypervisor "sim:$work/sim.sock" --domid "$d" --socket "$work/d$d.sock" </dev/null & pids+=($!)
  for _ in $(seq 500); do
    printf 'STATUS\n' | socat - "UNIX-CONNECT:$work/d$d.sock" 2>/dev/null | grep '^OK' >/dev/null && break
    sleep 0.02
  done
done

vg=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible)
"${vg[@]}" "$work/test_client" "$work/d1.sock" "$work/d2.sock"
"$work/test_static" "$work/d1.sock" "$work/d2.sock"

# The example, server in domain 2 and client in domain 1, both under valgrind.
V4V_SOCKET=$work/d2.sock "${vg[@]}" "$work/v4v-echo" serve 7000 1 2>"$work/serve.err" & server=$!
pids+=("$server")
for _ in $(seq 500); do
  printf 'STATUS\n' | socat - "UNIX-CONNECT:$work/d2.sock" | grep 'ports=[^ ]*7000/listen' >/dev/null && break
  sleep 0.02
done
out=$(V4V_SOCKET=$work/d1.sock "${vg[@]}" "$work/v4v-echo" send 2:7000 "hello over V4V" 2>"$work/send.err")
[ "$out" = "hello over V4V" ] || { echo "echo: got '$out'"; cat "$work/send.err"; exit 1; }
grep -q "closed orderly" "$work/send.err" || { cat "$work/send.err"; exit 1; }
wait "$server" || { echo "v4v-echo serve failed"; cat "$work/serve.err"; exit 1; }
grep -q "^1:.*closed orderly" "$work/serve.err" || { cat "$work/serve.err"; exit 1; }
echo "C API: test_client (shared, under valgrind), test_static and the v4v-echo example passed"
