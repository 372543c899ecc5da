#!/usr/bin/env bash
# Checks every golden domain XML in vmm/testdata against libvirt itself:
#  1. virt-xml-validate FILE domain — libvirt's RelaxNG schema for domains;
#  2. virsh -c test:///default define FILE — libvirt's domain parser and its post-parse checks
#     (e.g. <sysinfo> UUID equal to <uuid>, unique boot orders), in libvirt's in-process test
#     driver: no daemon, nothing on the host is touched.
# Both tools come from libvirt-clients (Debian) / libvirt-client (AlmaLinux); scripts/install-deps.sh
# installs them, so a missing tool is a failure, not a skip.
set -euo pipefail
dir=${1:?usage: validate_golden.sh TESTDATA_DIR}
for tool in virt-xml-validate virsh; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "validate_golden: $tool not found (install libvirt-clients: scripts/install-deps.sh)" >&2
    exit 1
  fi
done
shopt -s nullglob
files=("$dir"/*.xml)
if ((${#files[@]} == 0)); then
  echo "validate_golden: no golden files in $dir" >&2
  exit 1
fi
failed=0
for f in "${files[@]}"; do
  if ! virt-xml-validate "$f" domain; then
    failed=1
  fi
  if out=$(virsh -q -c test:///default define "$f" 2>&1); then
    echo "$f: libvirt test driver defines it"
  else
    echo "$f: libvirt test driver refuses it: $out" >&2
    failed=1
  fi
done
exit $failed
