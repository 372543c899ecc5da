#!/usr/bin/env bash
# bench/lifecycle: VirtualMachine create -> domain running through a real edgevirtd, and the
# daemon's memory, against `virsh "define X; start N"` of the same domain XML on an embedded QEMU
# driver as the reference (not `virsh create`: the embedded driver kills its transient domains
# when virsh exits, and that kill would be timed). Prints ONE JSON object on stdout (progress on
# stderr).
#
#   edgevirt 1 VM        --runs x: POST a VM (runStrategy Always, 1 vCPU, 256Mi, the test guest
#                        as hostDisk) -> its VMI reports phase Running (watch); delete, wait gone
#   edgevirt N VMs       --vms VMs POSTed at once (one thread each): create -> Running per VM,
#                        p50/p95, and the wall time until all are Running
#   edgevirtd memory     VmRSS idle (no VM yet), with the N VMs Running (after settling), per VM
#                        ((rssN - idle) / N), VmHWM
#   reference            the domain XML edgevirtd defined (dumpxml --inactive, renamed, new UUID,
#                        fresh per-domain dirs and disks) on a fresh embedded root with the same
#                        qemu.conf: `virsh "define X; start N"` exec -> exit (--runs x, removed
#                        in between), N define+starts in ONE virsh process (an embedded root is
#                        locked by the process that opened it), and a no-op `virsh list`
#                        (process start + driver init, which edgevirtd pays once, not per VM)
#
# Targets (reported, not asserted): edgevirt 1-VM p50 <= 1.5 x virsh's; idle RSS <= 40 MiB;
# <= 2 MiB of daemon RSS per running VM.
#
# Usage: run.sh [--quick] [--runs N] [--vms N] [--edgevirtd PATH] [--guest-dir DIR]
# Defaults: 5 runs, 20 VMs, build/daemon/edgevirtd of the repository, the guest in
# build/tests/fixtures/guest (tests/fixtures/guest/build-test-guest.sh DIR builds one).
# --quick: 1 run, 3 VMs, shorter settling (the CTest smoke). Needs root, virsh, python3.
set -euo pipefail

# The VMs get NICs on a bridge edgevirtd makes (with nft rules and dnsmasq): run everything in a
# network namespace of our own, never the machine's.
if [[ -z ${EDGEVIRT_BENCH_NETNS:-} ]]; then
  export EDGEVIRT_BENCH_NETNS=1
  exec unshare --net -- bash -c 'ip link set lo up && exec "$0" "$@"' "$0" "$@"
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
quick=0
runs=5
vms=20
edgevirtd="$repo/build/daemon/edgevirtd"
guest_dir="$repo/build/tests/fixtures/guest"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --runs) runs=$2; shift 2 ;;
    --vms) vms=$2; shift 2 ;;
    --edgevirtd) edgevirtd=$2; shift 2 ;;
    --guest-dir) guest_dir=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
idle_wait=3
settle=5
if [[ $quick == 1 ]]; then
  runs=1
  vms=3
  idle_wait=2
  settle=2
fi
[[ -x "$edgevirtd" ]] || { echo "run.sh: edgevirtd not found: $edgevirtd (--edgevirtd)" >&2; exit 2; }
[[ -f "$guest_dir/guest.raw" ]] || { echo "run.sh: no $guest_dir/guest.raw (--guest-dir)" >&2; exit 2; }
for t in virsh python3 stdbuf; do
  command -v "$t" > /dev/null || { echo "run.sh: $t not found" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (QEMU runs as an unprivileged user)" >&2; exit 2; }

# Not /tmp: it may be a tmpfs (no O_DIRECT, so a different disk cache mode). The path must stay
# short: edgevirtd refuses a stateDir whose socket paths would exceed 108 bytes.
tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/ev-lc.XXXXXX")
# QEMU runs as an unprivileged user and must traverse to its disks and per-VMI files.
chmod 0711 "$tmp"
state="$tmp/edgevirt"
# A private cgroup root and pin root for this run's VMs, removed by cleanup.
cg_name="ev-lc-${tmp##*.}"
cg_mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
ref_uri="qemu:///embed?root=$tmp/ref/root"
daemon_pid=""

# QEMU processes (not zombies) whose command line mentions the temp dir.
qemu_pids() {
  local p
  for p in /proc/[0-9]*; do
    [[ -r $p/cmdline ]] || continue
    if tr '\0' ' ' < "$p/cmdline" 2> /dev/null | grep -q "qemu-system.*$tmp"; then
      echo "${p#/proc/}"
    fi
  done
}

cleanup() {
  local pid
  if [[ -n $daemon_pid ]]; then
    kill -TERM "$daemon_pid" 2> /dev/null || true
    for _ in $(seq 100); do
      kill -0 "$daemon_pid" 2> /dev/null || break
      sleep 0.1
    done
    kill -KILL "$daemon_pid" 2> /dev/null || true
    wait "$daemon_pid" 2> /dev/null || true
  fi
  # edgevirtd's and virsh's QEMU processes outlive them by design.
  for pid in $(qemu_pids); do
    kill -KILL "$pid" 2> /dev/null || true
  done
  for _ in $(seq 50); do
    [[ -z $(qemu_pids) ]] && break
    sleep 0.1
  done
  # edgevirtd's dnsmasq (the VMs' DHCP) outlives it by design, too.
  pkill -KILL -f -- "--conf-file=$tmp/run/net/dnsmasq.conf" 2> /dev/null || true
  # The VM cgroups (emptied above) and the pinned device filters.
  if [[ -n $cg_mount && -d $cg_mount/$cg_name ]]; then
    find "$cg_mount/$cg_name" -depth -type d -exec rmdir {} + 2> /dev/null || true
  fi
  rm -rf "/sys/fs/bpf/$cg_name" 2> /dev/null || true
  if [[ -n ${BENCH_KEEP_TMP:-} ]]; then
    log "kept $tmp (BENCH_KEEP_TMP)"
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench/lifecycle: $*" >&2; }
cut -d' ' -f1 /proc/loadavg > "$tmp/load.start"
accel=tcg
if [[ -r /dev/kvm ]] && grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then
  accel=kvm
fi

# --- edgevirtd -------------------------------------------------------------------------------
mkdir -p "$tmp/disks"
chmod 0711 "$tmp/disks"
cat > "$tmp/edgevirtd.yaml" << EOF
stateDir: $state
runDir: $tmp/run
api:
  listen:
    - http://127.0.0.1:0
  auth:
    plainHttp: none
vms:
  hostDiskDirs: [$tmp/disks]
cgroups:
  root: $cg_name
  bpfRoot: /sys/fs/bpf/$cg_name
log:
  level: info
  target: stderr
shutdown:
  timeout: 10s
EOF
"$edgevirtd" --config "$tmp/edgevirtd.yaml" 2> "$tmp/edgevirtd.log" &
daemon_pid=$!
ev_url=""
for _ in $(seq 600); do
  ev_url=$(grep -o 'serving on http://127\.0\.0\.1:[0-9]*' "$tmp/edgevirtd.log" | head -n1 | sed 's/^serving on //' || true)
  [[ -n "$ev_url" ]] && break
  kill -0 "$daemon_pid" 2> /dev/null || { cat "$tmp/edgevirtd.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$ev_url" ]] || { log "edgevirtd did not start"; cat "$tmp/edgevirtd.log" >&2; exit 1; }
for _ in $(seq 600); do
  curl -sf "$ev_url/readyz" > /dev/null && break
  sleep 0.1
done
curl -sf "$ev_url/readyz" > /dev/null || { log "edgevirtd not ready"; cat "$tmp/edgevirtd.log" >&2; exit 1; }
log "edgevirtd $daemon_pid on $ev_url ($accel); $runs x 1 VM, then $vms VMs at once"

python3 "$here/lifecycle.py" edgevirt "$ev_url" "$daemon_pid" "$tmp/disks" "$guest_dir/guest.raw" \
  "$runs" "$vms" "$idle_wait" "$settle" > "$tmp/edgevirt.json" || {
  tail -n 50 "$tmp/edgevirtd.log" >&2
  exit 1
}

# --- the domain XML edgevirtd made; then edgevirtd and its domains go -------------------------
# SIGTERM stops the daemon; its QEMU processes keep running by design.
kill -TERM "$daemon_pid"
wait "$daemon_pid" || { log "edgevirtd exited with $?"; tail -n 20 "$tmp/edgevirtd.log" >&2; exit 1; }
daemon_pid=""
ev_uri="qemu:///embed?root=$state/libvirt"
# Every virsh process that opens the root reconnects to all its running domains, one thread
# each; with 20 of them, libvirt 9.0 has crashed (SIGSEGV in libnuma, thread "init-<domain>")
# here now and then: retry the dumpxml, and tear down in one process, tolerating a crash.
for attempt in 1 2 3; do
  virsh -q -c "$ev_uri" dumpxml --inactive default_lc20-00 > "$tmp/domain.xml" && break
  log "virsh dumpxml failed (attempt $attempt)"
  [[ $attempt == 3 ]] && exit 1
done
teardown=""
for d in $(virsh -q -c "$ev_uri" list --all --name || true); do
  teardown+="destroy $d; undefine $d; "
done
if [[ -n $teardown ]]; then
  virsh -q -c "$ev_uri" "$teardown" > /dev/null 2>&1 ||
    log "virsh teardown of edgevirtd's root failed; killing its QEMUs"
fi
for pid in $(qemu_pids); do
  kill -KILL "$pid" 2> /dev/null || true
done
for _ in $(seq 50); do
  [[ -z $(qemu_pids) ]] && break
  sleep 0.1
done

# --- reference: virsh on a fresh embedded root with edgevirtd's qemu.conf ---------------------
mkdir -p "$tmp/ref/root/etc" "$tmp/ref/vms"
chmod 0755 "$tmp/ref" "$tmp/ref/root" "$tmp/ref/vms"
cp "$state/libvirt/etc/qemu.conf" "$tmp/ref/root/etc/qemu.conf"
qemu_group=$(sed -n 's/^group = "\(.*\)"$/\1/p' "$tmp/ref/root/etc/qemu.conf")
python3 "$here/lifecycle.py" rewrite "$tmp/domain.xml" "$tmp/ref/xml" "$vms" "$tmp/ref/vms" \
  "${qemu_group:-kvm}" "$tmp/disks" > /dev/null
python3 "$here/lifecycle.py" virsh "$ref_uri" "$tmp/ref/xml" "$runs" "$vms" > "$tmp/virsh.json"
teardown=""
for d in $(virsh -q -c "$ref_uri" list --all --name || true); do
  teardown+="destroy $d; undefine $d; "
done
if [[ -n $teardown ]]; then
  virsh -q -c "$ref_uri" "$teardown" > /dev/null 2>&1 ||
    log "virsh teardown of the reference root failed; cleanup kills its QEMUs"
fi

cut -d' ' -f1 /proc/loadavg > "$tmp/load.end"
python3 - "$tmp" "$vms" "$runs" "$quick" "$accel" << 'EOF'
import json, os, sys
tmp, vms, runs, quick, accel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
ev = json.load(open(f"{tmp}/edgevirt.json"))
vs = json.load(open(f"{tmp}/virsh.json"))
def load(which):
    return float(open(f"{tmp}/load.{which}").read().strip())
def ratio(a, b):
    return round(a / b, 3) if b > 0 else None
ev1, evn = ev["create_to_running_1vm_ms"], ev[f"create_to_running_{vms}vms_ms"]
vs1, vs1c, vsn = vs["create_1vm_ms"], vs["create_1vm_minus_noop_ms"], vs[f"create_{vms}vms_ms"]
r1 = ratio(ev1["p50"], vs1["p50"])
out = {
    "bench": "lifecycle",
    "mode": "quick" if quick else "full",
    "accelerator": accel,
    "host": {"cpus": os.cpu_count(), "loadavg_1m_start": load("start"), "loadavg_1m_end": load("end")},
    "runs": runs,
    "vms": vms,
    "edgevirt": ev,
    "virsh": vs,
    "ratio_p50_1vm": r1,
    "ratio_p50_1vm_vs_create_only": ratio(ev1["p50"], vs1c["p50"]),
    f"ratio_p50_{vms}vms": ratio(evn["p50"], vsn["p50"]),
    f"ratio_wall_{vms}vms": ratio(evn["wall"], vsn["wall"]),
    "targets": {
        "p50_le_1_5x_virsh": r1 is not None and r1 <= 1.5,
        "p50_le_1_5x_virsh_create_only": vs1c["p50"] > 0 and ev1["p50"] <= 1.5 * vs1c["p50"],
        "idle_rss_le_40mib": ev["rss_idle_mib"] <= 40,
        "per_vm_le_2mib": ev["rss_per_vm_mib"] <= 2,
        "per_vm_marginal_le_2mib": ev["rss_per_vm_marginal_mib"] <= 2,
    },
}
print(json.dumps(out))
EOF
