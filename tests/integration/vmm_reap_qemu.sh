#!/usr/bin/env bash
# CTest FIXTURES_CLEANUP of the vmm integration tests: the safety net for a test that was killed
# (CTest timeout, SIGKILL) before its scope guard could stop its guests. Each test root is
# registered as a file in BUILD_DIR/vmm_test_roots/ (holding the root's path) while it exists;
# for every registered root this kills each QEMU whose command line names it, detaches the
# loop devices backed by files under it, then removes the root and its registration. Only
# roots of this build dir are touched.
# Usage: vmm_reap_qemu.sh BUILD_DIR. Exits 0 (the test that left them has failed already).
set -uo pipefail
reg=${1:?usage: vmm_reap_qemu.sh BUILD_DIR}/vmm_test_roots
shopt -s nullglob
killed=0
for marker in "$reg"/*; do
  root=$(head -1 "$marker")
  [[ $root == /* ]] || continue
  for dir in /proc/[0-9]*; do
    cmd=$( { tr '\0' ' ' <"$dir/cmdline"; } 2>/dev/null) || continue
    [[ $cmd == *qemu-system* && $cmd == *"$root/"* ]] || continue
    echo "vmm_reap_qemu: killing leftover QEMU ${dir#/proc/} of $root"
    kill -KILL "${dir#/proc/}" 2>/dev/null && killed=$((killed + 1))
  done
  sleep 1
  # Loop devices a test attached to files under the root (tests/support/loop_device.h).
  while read -r dev file; do
    [[ $file == "$root/"* ]] || continue
    echo "vmm_reap_qemu: detaching leftover loop device $dev ($file)"
    losetup --detach "$dev" 2>/dev/null
  done < <(losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null)
  rm -rf "$root"
  rm -f "$marker"
done
echo "vmm_reap_qemu: $killed leftover QEMU process(es) killed"
