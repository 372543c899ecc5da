#!/usr/bin/env python3
"""Checks bench_network output (stdin): exactly one JSON object of the documented shape, every
timing positive and ordered, and one nft transaction faster than rule-at-a-time (ratio > 1)."""
import json
import sys

text = sys.stdin.read()
lines = [l for l in text.splitlines() if l.strip()]
assert len(lines) == 1, f"expected one line of JSON, got {len(lines)}: {text[:2000]}"
d = json.loads(lines[0])
assert d["bench"] == "network", d
runs = d["runs"]
assert runs > 0, d
assert d["nft_version"].startswith("nftables"), d


def positive(v, what):
    assert isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, (what, v)


def summary(s, what):
    assert s["samples"] == runs, (what, s)
    for k in ("median_ms", "min_ms", "max_ms"):
        positive(s[k], f"{what}.{k}")
    assert s["min_ms"] <= s["median_ms"] <= s["max_ms"], (what, s)


f = d["forwards"]
assert f["count"] > 0, f
summary(f["edgevirt_one_transaction"], "edgevirt_one_transaction")
summary(f["nft_add_rule_each"], "nft_add_rule_each")
positive(f["ratio"], "ratio")
assert f["ratio"] > 1, ("one transaction not faster than rule-at-a-time", f)
r = d["restore"]
assert r["vms"] > 0, r
summary(r["warm"], "restore.warm")
summary(r["cold"], "restore.cold")
positive(r["warm_per_vm_ms"], "warm_per_vm_ms")
print(json.dumps(d, indent=2))
