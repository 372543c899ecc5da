#!/usr/bin/env python3
"""Checks bench_streams output (stdin): exactly one JSON object of the documented shape, every
figure positive and ordered, and port-forward not far below the direct connection (ratio > 0.3;
the target, 0.8, is reported by the bench, not asserted by the smoke)."""
import json
import sys

text = sys.stdin.read()
lines = [l for l in text.splitlines() if l.strip()]
assert len(lines) == 1, f"expected one line of JSON, got {len(lines)}: {text[:2000]}"
d = json.loads(lines[0])
assert d["bench"] == "streams", d


def positive(v, what):
    assert isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, (what, v)


h = d["host"]
for k in ("loadavg_1m_start", "loadavg_1m_end"):
    assert isinstance(h[k], (int, float)) and h[k] >= 0, (k, h)
vm = d["vm"]
positive(vm["create_to_running_ms"], "create_to_running_ms")
assert vm["create_to_address_ms"] >= vm["create_to_running_ms"], vm
assert vm["guest_ip"].startswith("10.208.0."), vm

c = d["console_rtt"]
assert c["samples"] > 0, c
for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
    positive(c[k], f"console_rtt.{k}")
assert c["min_ms"] <= c["p50_ms"] <= c["p95_ms"] <= c["p99_ms"] <= c["max_ms"], c

pf = d["portforward"]
positive(pf["chunk_bytes"], "chunk_bytes")
positive(pf["window_bytes"], "window_bytes")
for name in ("echo", "download"):
    s = pf[name]
    positive(s["bytes"], f"{name}.bytes")
    assert s["runs"] > 0, s
    for side in ("portforward", "direct"):
        t = s[side]
        positive(t["mib_s"], f"{name}.{side}.mib_s")
        assert len(t["runs_mib_s"]) == s["runs"], t
        for v in t["runs_mib_s"]:
            positive(v, f"{name}.{side}.runs_mib_s")
        for k in ("edgevirtd_cpu_pct", "qemu_cpu_pct", "client_cpu_pct",
                  "edgevirtd_cpu_ms_per_mib", "qemu_cpu_ms_per_mib"):
            assert isinstance(t[k], (int, float)) and t[k] >= 0, (name, side, k, t)
        # Every payload byte crossed the guest's tap: at most ~64 KiB per packet (GSO).
        assert t["guest_packets_per_mib"] >= 16, (name, side, t)
    # (CPU shares are sampled in clock ticks: a short transfer may show 0.)
    positive(s["ratio"], f"{name}.ratio")
    want = s["portforward"]["mib_s"] / s["direct"]["mib_s"]
    assert abs(s["ratio"] - want) < 0.01, (name, s)
    assert s["ratio"] > 0.3, (f"{name}: port-forward below 0.3x the direct connection", s)

r = d["rest_get_vmi"]
for k in ("idle", "busy"):
    assert r[k]["samples"] > 0, r
    positive(r[k]["p50_ms"], f"rest_get_vmi.{k}.p50_ms")
    assert r[k]["p50_ms"] <= r[k]["p99_ms"], r
assert r["busy_sessions"]["portforward_echo"] > 0, r
positive(r["busy_portforward_mib_s"], "busy_portforward_mib_s")
print(json.dumps(d, indent=2))
