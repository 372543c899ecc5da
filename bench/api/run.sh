#!/usr/bin/env bash
# bench/api: the KubeVirt API of a real edgevirtd on loopback, against a single-node etcd as the
# reference for durable writes. Prints ONE JSON object on stdout (progress on stderr).
#
#   edgevirt GET one VM       wrk -t2 -c64                  req/s, p50/p99
#   edgevirt LIST 1000 VMs    wrk -t2 -c16                  req/s, p50/p99
#   edgevirt POST distinct VMs wrk -t2 -c64 (Lua: unique names)   req/s, p99, errors
#   edgevirt watch fan-out    100 watchers, sequential creates: ack -> event, p50/p99
#   etcd 3.4 durable puts     wrk -t2 -c64, POST /v3/kv/put of the same JSON bytes
#   ratio                     edgevirt POST/s / etcd put/s
#   CPU per write             edgevirtd's CPU us per POST and etcd's per put (user+system time
#                             from /proc/PID/stat around each phase, divided by its requests)
#
# The POST and etcd phases alternate, `--runs` times each; figures are medians over the runs.
# Both servers keep their default durability (edgevirt acknowledges after the LMDB commit is
# durable; etcd fsyncs its WAL before answering) and their data in the same temp directory.
#
# Usage: run.sh [--quick] [--runs N] [--duration SECONDS]
#               [--edgevirtd PATH] [--tool PATH] [--etcd PATH] [--wrk PATH] [--io-threads N]
# Defaults: build/daemon/edgevirtd and build/bench/api/bench_api_tool of the repository,
# etcd and wrk from PATH. --quick: 1 run of 2 s per phase, 10 watch writes (the CTest smoke).
# --io-threads sets edgevirtd's api.ioThreads (default: the daemon's own default).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
quick=0
runs=3
duration=10
edgevirtd="$repo/build/daemon/edgevirtd"
tool="$repo/build/bench/api/bench_api_tool"
etcd_bin=$(command -v etcd || true)
wrk_bin=$(command -v wrk || true)
io_threads=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --runs) runs=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --edgevirtd) edgevirtd=$2; shift 2 ;;
    --tool) tool=$2; shift 2 ;;
    --etcd) etcd_bin=$2; shift 2 ;;
    --wrk) wrk_bin=$2; shift 2 ;;
    --io-threads) io_threads=$2; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
watch_writes=50
if [[ $quick == 1 ]]; then
  runs=1
  duration=2
  watch_writes=10
fi
for f in "$edgevirtd" "$tool" "$etcd_bin" "$wrk_bin"; do
  if [[ -z "$f" || ! -x "$f" ]]; then
    echo "run.sh: missing executable: '${f}' (see --help in the header)" >&2
    exit 2
  fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ev-bench-api.XXXXXX")
# A private cgroup root and pin root for the daemon, removed by cleanup.
cg_name="ev-api-${tmp##*.}"
cg_mount=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    # SIGKILL what did not stop within 10 s.
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
  if [[ -n $cg_mount && -d $cg_mount/$cg_name ]]; then
    find "$cg_mount/$cg_name" -depth -type d -exec rmdir {} + 2>/dev/null || true
  fi
  rm -rf "/sys/fs/bpf/$cg_name" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench/api: $*" >&2; }
# Other work on the machine skews every figure: the load is part of the result.
cut -d' ' -f1 /proc/loadavg > "$tmp/load.start"

# A free loopback port (for etcd, which cannot report one it chose itself).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- edgevirtd -------------------------------------------------------------------------------
cat > "$tmp/edgevirtd.yaml" <<EOF
stateDir: $tmp/edgevirt
runDir: $tmp/run
api:
  listen:
    - http://127.0.0.1:0
  auth:
    plainHttp: none
  maxConnections: 4096
${io_threads:+  ioThreads: $io_threads}
cgroups:
  root: $cg_name
  bpfRoot: /sys/fs/bpf/$cg_name
log:
  level: info
  target: stderr
EOF
"$edgevirtd" --config "$tmp/edgevirtd.yaml" 2> "$tmp/edgevirtd.log" &
pids+=($!)
ev_url=""
for _ in $(seq 200); do
  ev_url=$(grep -o 'serving on http://127\.0\.0\.1:[0-9]*' "$tmp/edgevirtd.log" | head -n1 | sed 's/^serving on //' || true)
  [[ -n "$ev_url" ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$tmp/edgevirtd.log" >&2; exit 1; }
  sleep 0.1
done
[[ -n "$ev_url" ]] || { log "edgevirtd did not start"; cat "$tmp/edgevirtd.log" >&2; exit 1; }
"$tool" wait "$ev_url" /readyz 20 > /dev/null
log "edgevirtd on $ev_url"

# --- etcd (single node, default durability) --------------------------------------------------
etcd_client=$(free_port)
etcd_peer=$(free_port)
"$etcd_bin" --name bench --data-dir "$tmp/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_client" \
  --advertise-client-urls "http://127.0.0.1:$etcd_client" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "bench=http://127.0.0.1:$etcd_peer" \
  --log-level error > "$tmp/etcd.log" 2>&1 &
pids+=($!)
etcd_url="http://127.0.0.1:$etcd_client"
"$tool" wait "$etcd_url" /health 30 > /dev/null || { cat "$tmp/etcd.log" >&2; exit 1; }
log "etcd $("$etcd_bin" --version | head -n1) on $etcd_url"

template="$here/vm-template.json"
lua="$here/wrk_bench.lua"
vms=/apis/kubevirt.io/v1/namespaces

# wrk NAME ARGS... -> appends the BENCH_JSON line to $tmp/NAME.jsonl
wrk_phase() {
  local name=$1
  shift
  "$wrk_bin" -t2 --timeout 10s -d "${duration}s" -s "$lua" "$@" > "$tmp/$name.out" 2>&1 || {
    cat "$tmp/$name.out" >&2
    exit 1
  }
  sed -n 's/^BENCH_JSON //p' "$tmp/$name.out" >> "$tmp/$name.jsonl"
}

# CPU time (user + system, all threads) of process $1 so far, in clock ticks. The fields are
# counted after the last ')' so that a command name with spaces cannot shift them.
clk_tck=$(getconf CLK_TCK)
cpu_ticks() {
  local stat
  stat=$(< "/proc/$1/stat")
  stat=${stat##*) }
  awk '{print $12 + $13}' <<< "$stat"
}

# wrk_cpu_phase NAME PID ARGS...: wrk_phase, and PID's CPU time over it -> $tmp/NAME.cpu.jsonl
wrk_cpu_phase() {
  local name=$1 pid=$2 before after
  shift 2
  before=$(cpu_ticks "$pid")
  wrk_phase "$name" "$@"
  after=$(cpu_ticks "$pid")
  echo "{\"cpu_ticks\": $((after - before)), \"clk_tck\": $clk_tck}" >> "$tmp/$name.cpu.jsonl"
}

# --- GET one VM ------------------------------------------------------------------------------
"$tool" preload "$ev_url" bench-get vm 1 1 "$template" > /dev/null
log "GET one VM: ${runs} x ${duration}s, 64 connections"
for r in $(seq "$runs"); do
  wrk_phase get -c64 "$ev_url$vms/bench-get/virtualmachines/vm-0" -- get
done

# --- LIST 1000 VMs ---------------------------------------------------------------------------
"$tool" preload "$ev_url" bench-list vm 1000 16 "$template" > "$tmp/preload.json"
log "LIST 1000 VMs (preloaded: $(cat "$tmp/preload.json")): ${runs} x ${duration}s, 16 connections"
for r in $(seq "$runs"); do
  wrk_phase list -c16 "$ev_url$vms/bench-list/virtualmachines" -- get
done

# --- watch fan-out ---------------------------------------------------------------------------
log "watch fan-out: 100 watchers, $watch_writes writes"
"$tool" watch "$ev_url" bench-watch 100 "$watch_writes" "$template" > "$tmp/watch.json"

# --- durable creates: edgevirt POST and etcd put, alternating ---------------------------------
log "POST distinct VMs vs etcd puts: ${runs} x ${duration}s each, 64 connections"
for r in $(seq "$runs"); do
  wrk_cpu_phase post "${pids[0]}" -c64 "$ev_url$vms/bench-post/virtualmachines" -- \
    post "$template" bench-post "r$r"
  wrk_cpu_phase etcd "${pids[1]}" -c64 "$etcd_url/v3/kv/put" -- etcd "$template" bench-post "r$r"
done

cut -d' ' -f1 /proc/loadavg > "$tmp/load.end"
python3 - "$tmp" "$runs" "$duration" "$quick" "$io_threads" <<'EOF'
import json, statistics, sys
tmp, runs, duration, quick = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
io_threads = int(sys.argv[5]) if sys.argv[5] else None

def load(name):
    with open(f"{tmp}/{name}.jsonl") as f:
        return [json.loads(l) for l in f if l.strip()]

def median(rows, *path):
    vals = []
    for r in rows:
        v = r
        for p in path:
            v = v[p]
        vals.append(v)
    return statistics.median(vals)

def summary(name):
    rows = load(name)
    errors = sum(sum(r["errors"].values()) for r in rows)
    return {
        "rps": round(median(rows, "rps"), 1),
        "p50_ms": round(median(rows, "latency_us", "p50") / 1000, 3),
        "p99_ms": round(median(rows, "latency_us", "p99") / 1000, 3),
        "requests": sum(r["requests"] for r in rows),
        "errors": errors,
        "runs": [{"rps": r["rps"], "p99_ms": r["latency_us"]["p99"] / 1000, "errors": r["errors"]} for r in rows],
    }

get, lst, post, etcd = summary("get"), summary("list"), summary("post"), summary("etcd")

def cpu_us_per_request(name):
    # Per run: the server's CPU time over the phase / the requests wrk completed; the median.
    rows, cpu = load(name), load(f"{name}.cpu")
    per_run = [c["cpu_ticks"] * 1e6 / c["clk_tck"] / r["requests"]
               for r, c in zip(rows, cpu) if r["requests"]]
    return {
        "cpu_us_per_request": round(statistics.median(per_run), 1) if per_run else None,
        "cpu_us_per_request_runs": [round(v, 1) for v in per_run],
    }

post.update(cpu_us_per_request("post"))
etcd.update(cpu_us_per_request("etcd"))
with open(f"{tmp}/watch.json") as f:
    w = json.load(f)
ratio = post["rps"] / etcd["rps"] if etcd["rps"] else 0.0
import os
def loadavg(which):
    with open(f"{tmp}/load.{which}") as f:
        return float(f.read().strip())
out = {
    "benchmark": "bench/api",
    "host": {"cpus": os.cpu_count(), "loadavg_1m_start": loadavg("start"), "loadavg_1m_end": loadavg("end")},
    "mode": "quick" if quick else "full",
    "runs": runs,
    "duration_s_per_run": duration,
    "edgevirtd_io_threads": io_threads or "default",
    "edgevirt": {
        "get_one_vm": {"connections": 64, **get},
        "list_1000_vms": {"connections": 16, **lst},
        "post_vm": {"connections": 64, **post},
        "watch_fanout": {
            "watchers": w["watchers"], "writes": w["writes"], "delivered": w["delivered"],
            "missing": w["missing"], "delivered_before_ack": w["delivered_before_ack"],
            "p50_ms": round(w["latency_us"]["p50"] / 1000, 3),
            "p99_ms": round(w["latency_us"]["p99"] / 1000, 3),
            "max_ms": round(w["latency_us"]["max"] / 1000, 3),
        },
    },
    "etcd": {"put": {"connections": 64, **etcd}},
    "ratio_edgevirt_post_per_etcd_put": round(ratio, 3),
    "cpu_us_per_write": {"edgevirt_post": post["cpu_us_per_request"],
                         "etcd_put": etcd["cpu_us_per_request"]},
    "targets": {
        "get_rps_ge_20000": get["rps"] >= 20000,
        "get_p99_lt_5ms": get["p99_ms"] < 5,
        "post_rps_ge_etcd_put_rps": ratio >= 1.0,
    },
}
print(json.dumps(out))
EOF
