#!/usr/bin/env bash
# verify-unit.sh UNIT BINARY: `systemd-analyze verify` on a copy of UNIT whose ExecStart runs
# BINARY (verify insists that the command exists; the installed path need not exist here).
# Fails on any message: a clean unit makes systemd-analyze print nothing.
set -euo pipefail
unit=$1
binary=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
name=$(basename "$unit")
while IFS= read -r line; do
  if [[ $line == ExecStart=* ]]; then
    read -ra argv <<<"${line#ExecStart=}"
    argv[0]=$binary
    line="ExecStart=${argv[*]}"
  fi
  printf '%s\n' "$line"
done <"$unit" >"$tmp/$name"
out=$(systemd-analyze verify --man=no "$tmp/$name" 2>&1) || {
  printf 'systemd-analyze verify failed:\n%s\n' "$out" >&2
  exit 1
}
if [[ -n $out ]]; then
  printf 'systemd-analyze verify is not clean:\n%s\n' "$out" >&2
  exit 1
fi
echo "systemd-analyze verify: $name clean"
