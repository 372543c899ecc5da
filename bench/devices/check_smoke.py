#!/usr/bin/env python3
"""Checks bench_devices output (stdin): exactly one JSON object of the documented shape, every
latency positive and ordered, both filters enforcing, the runc-style cgroup holding exactly one
program (the replace did not append), and the map update faster than the rebuild (ratio > 1)."""
import json
import sys

text = sys.stdin.read()
lines = [l for l in text.splitlines() if l.strip()]
assert len(lines) == 1, f"expected one line of JSON, got {len(lines)}: {text[:2000]}"
d = json.loads(lines[0])
assert d["bench"] == "devices", d
assert d["iterations"] > 0, d
assert d["cases"], d


def positive(v, what):
    assert isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, (what, v)


def dist(s, what, samples):
    assert s["samples"] == samples, (what, s)
    for k in ("p50_us", "p99_us", "mean_us", "min_us", "max_us"):
        positive(s[k], f"{what}.{k}")
    assert s["min_us"] <= s["p50_us"] <= s["p99_us"] <= s["max_us"], (what, s)
    assert s["enforces"] is True, (what, s)


for c in d["cases"]:
    n = c["extra_rules"]
    assert c["rules"] >= n + 19, c
    dist(c["edgevirt"], f"edgevirt/{n}", 2 * d["iterations"])
    r = c["runc_style"]
    dist(r, f"runc_style/{n}", 2 * d["iterations"])
    assert r["attached_programs"] == 1, r
    assert r["program_insns"] > c["rules"] * 3, r
    for k in ("generate", "load", "replace"):
        positive(r["phase_mean_us"][k], f"runc_style/{n}.{k}")
    positive(c["ratio_p50"], "ratio_p50")
    positive(c["ratio_mean"], "ratio_mean")
    assert c["ratio_p50"] > 1, ("map update not faster than a program rebuild", c)
assert isinstance(d["targets"]["map_update_10x_faster"], bool), d
print(json.dumps(d, indent=2))
