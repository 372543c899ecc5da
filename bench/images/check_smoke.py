#!/usr/bin/env python3
"""Checks bench_images output (stdin): one JSON object, every throughput and CPU-per-MiB figure
positive, the puller's RSS growth under 32 MiB, the target flags present."""
import json
import sys

text = sys.stdin.read()
lines = [l for l in text.splitlines() if l.strip()]
assert len(lines) == 1, f"expected one line of JSON, got {len(lines)}: {text[:2000]}"
d = json.loads(lines[0])
assert d["bench"] == "images", d
assert d["layer_bytes"] >= 64 << 20, d
for k in ("edgevirt", "curl", "curl_then_sync", "skopeo"):
    assert d[k]["seconds"] > 0 and d[k]["mib_per_s"] > 0, (k, d)
for k in ("edgevirt", "curl"):
    assert d[k]["cpu_ms_per_mib"] > 0, (k, d)
assert d["ratio_vs_curl"] > 0 and d["ratio_vs_skopeo"] > 0, d
assert 0 <= d["edgevirt_rss_growth_kib"] < 32 * 1024, d
for k in ("ratio_vs_curl_ge_0_9", "ratio_vs_skopeo_ge_1_5", "rss_growth_lt_32_mib"):
    assert isinstance(d["targets"][k], bool), d
print(json.dumps(d, indent=2))
