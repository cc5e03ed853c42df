#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
# Run each test command (a binary, optionally with arguments, as one word),
# add up their "N passed, M failed" lines, print the total as the last line;
# exit non-zero on any failure or crash.
set -u
tp=0 tf=0
for cmd in "$@"; do
  t=${cmd%% *}
  # shellcheck disable=SC2086 # the command's arguments are split on purpose
  out=$($cmd 2>"$t.stderr"); rc=$?
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  if [ -z "$line" ]; then
    echo "$t: crashed or aborted (rc=$rc); stderr follows"; tail -n 30 "$t.stderr"
    tf=$((tf + 1)); continue
  fi
  p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed}
  grep '^FAIL' "$t.stderr" || true
  echo "$t: $line (rc=$rc)"
  tp=$((tp + p)); tf=$((tf + f))
  [ "$rc" -eq 0 ] || [ "$f" -gt 0 ] || tf=$((tf + 1))
  rm -f "$t.stderr"
done
echo "$tp passed, $tf failed"
[ "$tf" -eq 0 ]
