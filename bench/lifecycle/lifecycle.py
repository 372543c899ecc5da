#!/usr/bin/env python3
"""bench/lifecycle measurements, driven by run.sh (which owns the processes and the cleanup).

  lifecycle.py edgevirt URL PID DISKS GUEST_RAW RUNS VMS IDLE_WAIT SETTLE
      Against a running edgevirtd: its idle RSS, a warm-up VM, RUNS x (create one VM -> VMI
      Running, delete, wait until gone), then VMS VMs POSTed at once, their RSS after SETTLE
      seconds. JSON on stdout.
  lifecycle.py rewrite XML_IN OUT_DIR COUNT REF_VMS QEMU_GROUP DISKS
      The domain XML that edgevirtd defined, made into COUNT reference domains lc-ref-<i>: new
      name and UUID, per-domain directories under REF_VMS (owned root:QEMU_GROUP 0750, vnc/
      0770, as daemon/vmi_domain.cc makes them) and the disk DISKS/lc20-<i>.raw. Prints the
      paths of the XML files.
  lifecycle.py virsh URI XML_DIR RUNS COUNT
      The reference: a warm-up define+start, no-op `virsh list` (RUNS times, at least 3),
      `virsh "define X; start N"` of one domain (RUNS times, removed in between), then COUNT
      define+starts in one virsh process. JSON on stdout.

Create -> Running is timed with a watch, not polling: the watch starts from the resourceVersion
of a LIST made before the POST (so no event can fall between the two), costs the daemon nothing
while it waits, and reports the Running status write within about a millisecond (polling every
20 ms would add up to 20 ms of error and, with 20 VMs, 1000 GETs/s of load on the daemon under
test).
"""
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

NS = "default"
VMS = f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines"
VMIS = f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances"


def log(msg):
    print(f"bench/lifecycle: {msg}", file=sys.stderr, flush=True)


def pct(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def summary(values):
    return {
        "p50": round(statistics.median(values), 1),
        "p95": round(pct(values, 95), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "runs": len(values),
    }


# --- edgevirt ----------------------------------------------------------------------------------


class Api:
    def __init__(self, url):
        m = re.match(r"http://([^:/]+):(\d+)$", url)
        if not m:
            raise SystemExit(f"lifecycle.py: bad url {url}")
        self.host, self.port = m.group(1), int(m.group(2))

    def conn(self, timeout=60):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None):
        c = self.conn()
        try:
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
                body = json.dumps(body)
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            return r.status, (json.loads(data) if data else None)
        finally:
            c.close()


class Watch:
    """VMI watch from the current resourceVersion; records when each VMI first reports Running."""

    def __init__(self, api, name=None):
        sel = f"fieldSelector=metadata.name%3D{name}" if name else ""
        status, lst = api.request("GET", f"{VMIS}?{sel}")
        if status != 200:
            raise SystemExit(f"lifecycle.py: LIST VMIs: {status} {lst}")
        rv = lst["metadata"]["resourceVersion"]
        self.conn = api.conn(timeout=600)
        self.conn.request("GET", f"{VMIS}?watch=true&resourceVersion={rv}&{sel}")
        # Kept to end the stream from another thread: http.client drops conn.sock once the
        # response is read until the connection closes.
        self.sock = self.conn.sock
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise SystemExit(f"lifecycle.py: watch VMIs: {self.resp.status} {self.resp.read()}")
        self.running = {}  # name -> time.monotonic() when first seen Running
        self.failed = {}  # name -> phase, for VMIs that ended before running
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                line = self.resp.readline()
            except (OSError, ValueError, http.client.HTTPException):
                return
            if not line:
                return
            now = time.monotonic()
            if not line.strip():
                continue
            ev = json.loads(line)
            obj = ev.get("object") or {}
            name = obj.get("metadata", {}).get("name", "")
            phase = obj.get("status", {}).get("phase", "")
            with self.cond:
                if phase == "Running" and name not in self.running:
                    self.running[name] = now
                elif phase in ("Failed", "Succeeded") and name not in self.running:
                    self.failed[name] = phase
                self.cond.notify_all()

    def wait(self, names, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(n in self.running or n in self.failed for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in names if n not in self.running]
                    raise SystemExit(f"lifecycle.py: not Running after {timeout}s: {missing}")
                self.cond.wait(left)
            bad = {n: self.failed[n] for n in names if n not in self.running}
            if bad:
                raise SystemExit(f"lifecycle.py: VMIs ended before Running: {bad}")
            return {n: self.running[n] for n in names}

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(5)
        self.conn.close()


def vm_manifest(name, disk):
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    # Deleted VMs are destroyed at once: a guest still booting under TCG would
                    # not see the ACPI power button, and the bench would wait out the grace.
                    "terminationGracePeriodSeconds": 0,
                    "domain": {
                        "cpu": {"cores": 1},
                        "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                        "resources": {"requests": {"memory": "256Mi"}},
                    },
                    "volumes": [
                        {"name": "root", "hostDisk": {"path": disk, "type": "Disk"}}
                    ],
                },
            },
        },
    }


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise SystemExit(f"lifecycle.py: no {key} in /proc/{pid}/status")


def mib(kib):
    return round(kib / 1024, 2)


def private_disk(disks, guest_raw, name):
    path = os.path.join(disks, name + ".raw")
    if not os.path.exists(path):
        subprocess.run(["cp", "--sparse=always", guest_raw, path], check=True)
    return path


def post_vm(api, name, disk):
    status, body = api.request("POST", VMS, vm_manifest(name, disk))
    if status != 201:
        raise SystemExit(f"lifecycle.py: POST {name}: {status} {body}")


def delete_and_wait(api, names, timeout=180):
    for n in names:
        status, body = api.request("DELETE", f"{VMS}/{n}")
        if status not in (200, 202, 404):
            raise SystemExit(f"lifecycle.py: DELETE {n}: {status} {body}")
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        if time.monotonic() > deadline:
            raise SystemExit(f"lifecycle.py: not gone after {timeout}s: {pending}")
        pending = [
            n for n in pending
            if api.request("GET", f"{VMS}/{n}")[0] != 404
            or api.request("GET", f"{VMIS}/{n}")[0] != 404
        ]
        if pending:
            time.sleep(0.1)


def cmd_edgevirt(url, pid, disks, guest_raw, runs, vms, idle_wait, settle):
    api = Api(url)
    pid = int(pid)
    runs, vms, idle_wait, settle = int(runs), int(vms), float(idle_wait), float(settle)

    time.sleep(idle_wait)
    rss_idle = proc_status_kib(pid, "VmRSS")
    log(f"edgevirtd idle: VmRSS {mib(rss_idle)} MiB")

    disk = private_disk(disks, guest_raw, "lc1")

    def one_vm(name):
        w = Watch(api, name)
        t0 = time.monotonic()
        post_vm(api, name, disk)
        t1 = w.wait([name], 300)[name]
        w.close()
        delete_and_wait(api, [name])
        return (t1 - t0) * 1000

    # Warm-up, reported apart: the first start on a fresh root probes QEMU's capabilities.
    first = one_vm("lc1-warm")
    log(f"1 VM, warm-up (capability probe): create -> Running {first:.0f} ms")
    one = []
    for r in range(runs):
        one.append(one_vm(f"lc1-{r}"))
        log(f"1 VM, run {r + 1}/{runs}: create -> Running {one[-1]:.0f} ms")
    rss_before = proc_status_kib(pid, "VmRSS")

    names = [f"lc20-{i:02d}" for i in range(vms)]
    batch_disks = {n: private_disk(disks, guest_raw, n) for n in names}
    w = Watch(api)
    t0 = {}
    errors = []
    barrier = threading.Barrier(vms)

    def create(n):
        try:
            barrier.wait()
            t0[n] = time.monotonic()
            post_vm(api, n, batch_disks[n])
        except BaseException as e:  # SystemExit from post_vm included
            errors.append(f"{n}: {e}")

    threads = [threading.Thread(target=create, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"lifecycle.py: {errors}")
    t1 = w.wait(names, 600)
    w.close()
    many = [(t1[n] - t0[n]) * 1000 for n in names]
    wall = (max(t1.values()) - min(t0.values())) * 1000
    log(f"{vms} VMs at once: all Running after {wall:.0f} ms")

    time.sleep(settle)
    rss_n = proc_status_kib(pid, "VmRSS")
    hwm = proc_status_kib(pid, "VmHWM")
    log(f"edgevirtd with {vms} VMs: VmRSS {mib(rss_n)} MiB, VmHWM {mib(hwm)} MiB")
    out = {
        "first_create_to_running_ms": round(first, 1),
        "create_to_running_1vm_ms": summary(one),
        f"create_to_running_{vms}vms_ms": {**summary(many), "wall": round(wall, 1)},
        "rss_idle_mib": mib(rss_idle),
        "rss_before_batch_mib": mib(rss_before),
        f"rss_{vms}vms_mib": mib(rss_n),
        "rss_per_vm_mib": round((rss_n - rss_idle) / 1024 / vms, 3),
        # Without the one-time growth of the first start (capabilities, libvirt's driver state).
        "rss_per_vm_marginal_mib": round((rss_n - rss_before) / 1024 / vms, 3),
        "hwm_mib": mib(hwm),
    }
    print(json.dumps(out))


# --- reference: virsh ----------------------------------------------------------------------------


def cmd_rewrite(xml_in, out_dir, count, ref_vms, qemu_group, disks):
    with open(xml_in) as f:
        xml = f.read()
    old_name = re.search(r"<name>([^<]+)</name>", xml).group(1)
    old_uuid = re.search(r"<uuid>([^<]+)</uuid>", xml).group(1)
    # Per-VMI files live in <stateDir>/vms/<vmi uid>/ (serial, guest agent, VNC sockets, log).
    dirs = set(re.findall(r"(/[^'\"<>]*/vms/[0-9a-f-]{36})/", xml))
    if len(dirs) != 1:
        raise SystemExit(f"lifecycle.py: expected one per-VMI directory in the XML, got {dirs}")
    old_dir = dirs.pop()
    old_disk = re.search(r"<source file='([^']+\.raw)'", xml).group(1)
    gid = int(subprocess.run(["getent", "group", qemu_group], check=True, capture_output=True,
                             text=True).stdout.split(":")[2])
    os.makedirs(out_dir, exist_ok=True)
    for i in range(int(count)):
        name = f"lc-ref-{i:02d}"
        d = os.path.join(ref_vms, name)
        os.makedirs(os.path.join(d, "vnc"), exist_ok=True)
        os.chown(d, 0, gid)
        os.chmod(d, 0o750)
        os.chown(os.path.join(d, "vnc"), 0, gid)
        os.chmod(os.path.join(d, "vnc"), 0o770)
        new = (xml.replace(old_dir, d).replace(old_uuid, str(uuid.uuid4()))
               .replace(old_disk, os.path.join(disks, f"lc20-{i:02d}.raw"))
               .replace(f"<name>{old_name}</name>", f"<name>{name}</name>"))
        # NICs on edgevirtd's bridge: libvirt names the copies' taps and picks their MACs (the
        # tap name and MAC of edgevirtd's VM are its own).
        new = re.sub(r"\s*<target dev='[^']*'/>", "", new)
        new = re.sub(r"\s*<mac address='[^']*'/>", "", new)
        path = os.path.join(out_dir, f"{name}.xml")
        with open(path, "w") as f:
            f.write(new)
        print(path)


def virsh(uri, *args, check=True):
    t0 = time.monotonic()
    p = subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True)
    ms = (time.monotonic() - t0) * 1000
    if check and p.returncode != 0:
        raise SystemExit(f"lifecycle.py: virsh {' '.join(args)}: {p.stderr.strip()}")
    return ms


def cmd_virsh(uri, xml_dir, runs, count):
    runs, count = int(runs), int(count)
    names = [f"lc-ref-{i:02d}" for i in range(count)]
    xmls = [os.path.join(xml_dir, f"{n}.xml") for n in names]

    def remove(name):
        virsh(uri, f"destroy {name}; undefine {name}")

    # `define; start` in one virsh process, not `virsh create`: the embedded driver kills its
    # transient domains when the process that embeds it exits (QEMU logs "terminating on signal
    # 15 from pid <virsh>", libvirt "shutting down, reason=daemon"), and that kill would be timed
    # too. Persistent domains outlive virsh, as edgevirtd's do (it also defines, then starts).
    # Warm-up: the first start on a root probes QEMU's capabilities (then cached under it), like
    # the first VM of a fresh edgevirtd.
    warm = virsh(uri, f"define {xmls[0]}; start {names[0]}")
    remove(names[0])
    log(f"virsh warm-up (first define+start, capability probe): {warm:.0f} ms")
    noop = [virsh(uri, "list") for _ in range(max(runs, 3))]
    noop_p50 = statistics.median(noop)
    log(f"virsh no-op list: p50 {noop_p50:.0f} ms")

    one = []
    for r in range(runs):
        one.append(virsh(uri, f"define {xmls[0]}; start {names[0]}"))
        log(f"virsh define+start, run {r + 1}/{runs}: {one[-1]:.0f} ms")
        remove(names[0])

    # One virsh process defining and starting every domain in turn: an embedded root is locked
    # by the process that opened it, so parallel virsh processes on one root would fail. Each
    # start's completion is timed from its "Domain ... started" line (line-buffered stdout).
    script = "; ".join(f"define {x}; start {n}" for x, n in zip(xmls, names))
    t0 = time.monotonic()
    p = subprocess.Popen(["stdbuf", "-oL", "virsh", "-c", uri, script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    done = []
    for line in p.stdout:
        if re.match(r"Domain '.*' started", line):
            done.append((time.monotonic() - t0) * 1000)
    err = p.stderr.read()
    rc = p.wait()
    wall = (time.monotonic() - t0) * 1000
    if rc != 0 or len(done) != count:
        raise SystemExit(f"lifecycle.py: virsh batch: rc {rc}, {len(done)}/{count} started: {err}")
    log(f"virsh: {count} define+start in one process: {wall:.0f} ms")
    out = {
        "command": "define+start",
        "warmup_ms": round(warm, 1),
        "noop_ms": round(noop_p50, 1),
        "noop_runs_ms": [round(v, 1) for v in noop],
        "create_1vm_ms": summary(one),
        "create_1vm_minus_noop_ms": summary([v - noop_p50 for v in one]),
        f"create_{count}vms_ms": {**summary(done), "wall": round(wall, 1)},
    }
    print(json.dumps(out))


def main():
    cmds = {"edgevirt": (cmd_edgevirt, 8), "rewrite": (cmd_rewrite, 6), "virsh": (cmd_virsh, 4)}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds or len(sys.argv) - 2 != cmds[sys.argv[1]][1]:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmds[sys.argv[1]][0](*sys.argv[2:])


if __name__ == "__main__":
    main()
