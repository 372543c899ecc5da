#!/usr/bin/env bash
# Defines every golden domain XML in vmm/testdata in libvirt's real QEMU driver, embedded in a
# fresh private root (qemu:///embed?root=TMP), then undefines it. Defining runs the QEMU
# driver's own validation against the probed QEMU binary, which the schema and the test
# driver do not (e.g. "readonly sata disks are not supported"). Nothing is started.
#
# Facts this script works with (libvirt 9.0 / QEMU 7.2, Debian 12):
#  - The build machines have no usable KVM, so type='kvm' is defined as type='qemu' (TCG);
#    the rest of the XML is checked as written. (AlmaLinux's qemu-kvm is built without TCG,
#    so there this test needs a host with KVM; not checked yet.)
#  - A privileged (root) QEMU driver resolves its compiled-in default user 'libvirt-qemu'
#    before it reads qemu.conf, and fails when that user does not exist (it is created by
#    libvirt-daemon-system, which edgevirt does not need). As root, this script therefore runs
#    virsh as 'nobody' (an unprivileged embedded driver does no user lookup).
set -euo pipefail
dir=${1:?usage: qemu_define_golden.sh TESTDATA_DIR}
for tool in virsh setpriv; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "qemu_define_golden: $tool not found (scripts/install-deps.sh installs it)" >&2
    exit 1
  fi
done

root=$(mktemp -d /var/tmp/vmm-qemu-define.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc" "$root/xml"
# cgroup_controllers: QEMU stays in the caller's cgroup (edgevirt owns VM cgroups);
# stdio_handler: no virtlogd.
printf 'cgroup_controllers = [ ]\nstdio_handler = "file"\n' >"$root/etc/qemu.conf"

shopt -s nullglob
files=("$dir"/*.xml)
if ((${#files[@]} == 0)); then
  echo "qemu_define_golden: no golden files in $dir" >&2
  exit 1
fi
for f in "${files[@]}"; do
  sed "s/<domain type='kvm'>/<domain type='qemu'>/" "$f" >"$root/xml/$(basename "$f")"
done

run=()
if [[ $(id -u) -eq 0 ]]; then
  chown -R nobody:nogroup "$root" 2>/dev/null || chown -R nobody "$root"
  chmod 755 "$root"
  run=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups --)
fi
uri="qemu:///embed?root=$root"
failed=0
for f in "$root"/xml/*.xml; do
  name=$(sed -n 's#^  <name>\(.*\)</name>$#\1#p' "$f")
  if out=$(HOME=$root "${run[@]}" virsh -q -c "$uri" define "$f" 2>&1); then
    echo "$(basename "$f"): the QEMU driver defines $name"
    HOME=$root "${run[@]}" virsh -q -c "$uri" undefine --nvram "$name" >/dev/null
  else
    echo "$(basename "$f"): the QEMU driver refuses it: $out" >&2
    failed=1
  fi
done
exit $failed
