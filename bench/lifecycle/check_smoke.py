#!/usr/bin/env python3
"""Checks bench/lifecycle/run.sh output (stdin): exactly one JSON object of the documented
shape, every timing and memory figure a positive number, the targets booleans."""
import json
import sys

text = sys.stdin.read()
lines = [l for l in text.splitlines() if l.strip()]
assert len(lines) == 1, f"expected one line of JSON, got {len(lines)}: {text[:2000]}"
d = json.loads(lines[0])
assert d["bench"] == "lifecycle", d
assert d["accelerator"] in ("tcg", "kvm"), d
n = d["vms"]
assert isinstance(n, int) and n > 0, d


def positive(v, what):
    assert isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, (what, v)


def dist(s, what, runs=None, wall=False):
    for k in ("p50", "p95", "min", "max"):
        positive(s[k], f"{what}.{k}")
    assert s["min"] <= s["p50"] <= s["p95"] <= s["max"], (what, s)
    if runs is not None:
        assert s["runs"] == runs, (what, s)
    if wall:
        positive(s["wall"], f"{what}.wall")
        assert s["wall"] >= s["max"] * 0.99, (what, s)


ev = d["edgevirt"]
dist(ev["create_to_running_1vm_ms"], "edgevirt 1 VM", runs=d["runs"])
dist(ev[f"create_to_running_{n}vms_ms"], f"edgevirt {n} VMs", runs=n, wall=True)
for k in ("rss_idle_mib", f"rss_{n}vms_mib", "hwm_mib", "rss_before_batch_mib"):
    positive(ev[k], k)
assert ev["hwm_mib"] >= ev[f"rss_{n}vms_mib"], ev
# A per-VM delta can be ~0 or even negative if the allocator returned memory; it must exist.
for k in ("rss_per_vm_mib", "rss_per_vm_marginal_mib"):
    assert isinstance(ev[k], (int, float)) and not isinstance(ev[k], bool), (k, ev)
positive(ev["first_create_to_running_ms"], "edgevirt first create")

vs = d["virsh"]
positive(vs["noop_ms"], "virsh noop")
positive(vs["warmup_ms"], "virsh warm-up")
assert vs["command"] == "define+start", vs
dist(vs["create_1vm_ms"], "virsh 1 VM", runs=d["runs"])
dist(vs[f"create_{n}vms_ms"], f"virsh {n} VMs", runs=n, wall=True)
assert "create_1vm_minus_noop_ms" in vs, vs

for k in ("ratio_p50_1vm", "ratio_p50_1vm_vs_create_only", f"ratio_p50_{n}vms"):
    positive(d[k], k)
t = d["targets"]
for k in ("p50_le_1_5x_virsh", "p50_le_1_5x_virsh_create_only", "idle_rss_le_40mib",
          "per_vm_le_2mib", "per_vm_marginal_le_2mib"):
    assert isinstance(t[k], bool), (k, t)
print(json.dumps(d, indent=2))
