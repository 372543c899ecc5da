#!/usr/bin/env python3
"""Checks bench/api/run.sh output (stdin): exactly one JSON object, every figure non-zero."""
import json
import sys

text = sys.stdin.read()
lines = [l for l in text.splitlines() if l.strip()]
assert len(lines) == 1, f"expected one line of JSON, got {len(lines)}: {text[:2000]}"
d = json.loads(lines[0])
ev = d["edgevirt"]
for phase in ("get_one_vm", "list_1000_vms", "post_vm"):
    p = ev[phase]
    assert p["rps"] > 0 and p["requests"] > 0, (phase, p)
    assert p["p50_ms"] > 0 and p["p99_ms"] > 0, (phase, p)
    assert p["errors"] == 0, (phase, p)
w = ev["watch_fanout"]
assert w["watchers"] == 100 and w["delivered"] == w["watchers"] * w["writes"] > 0, w
assert w["missing"] == 0 and w["p99_ms"] > 0, w
e = d["etcd"]["put"]
assert e["rps"] > 0 and e["p99_ms"] > 0 and e["errors"] == 0, e
assert d["ratio_edgevirt_post_per_etcd_put"] > 0, d
cpu = d["cpu_us_per_write"]
assert cpu["edgevirt_post"] > 0 and cpu["etcd_put"] > 0, cpu
print(json.dumps(d, indent=2))
