"""Soak: minutes of steady load on a 3-node cluster of our daemons, watching what grows.

Every node runs a load worker (this script with ``worker``, inside the node's namespaces) that
keeps a steady pace of

* file writes through /etc/pve: overwrites of a fixed set of files, VM configs rewritten,
  files created and deleted, write-then-rename replacements (the tree does not grow);
* pve2 IPC requests on one connection (re-opened every 500 requests): SET_STATUS (plain keys
  and, every 10 s, the node's RRD update as pvestatd sends it), LOG_CLUSTER_MSG and every GET_*
  (FS_VERSION, CLUSTER_INFO, GUEST_LIST, STATUS, CONFIG, CLUSTER_LOG, RRD_DUMP,
  GUEST_CONFIG_PROPERTY/PROPERTIES) plus VERIFY_TOKEN.

The main process samples every daemon every ``--interval`` seconds: RSS and open file
descriptors from /proc, and the DFSM queues of both groups (dcdb, kvstore) from the daemon's
admin socket (the document ``pmxcfs-admin status --json`` prints): ``queued`` is what waits
for delivery (the DFSM's message and sync queues), ``unsent`` what waits to be multicast. The
queues are also probed every 5 s, and each report shows the largest value seen since the last.
At the end it fits a line through every figure after a warm-up and compares the first and the
last third of the samples, and says which grew. Figures only: nothing is asserted.

    .venv/bin/python bench/soak.py [--minutes 30] [--interval 30] [--writes 10] [--ipc 50]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import statistics
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

QUEUE_PROBE = 5.0  # seconds between probes of the DFSM queues
RECONNECT_EVERY = 500  # IPC requests per connection
RRD_EVERY = 10.0  # seconds between a node's RRD updates (pvestatd's pace)
FILES = 50  # files each node overwrites in turn
VMS = 5  # VM configs per node
GROUPS = ("dcdb", "kvstore")
LOAD_MARGIN = 15.0  # the load runs this much longer than the samples: the last is under load

# ================================================================================ worker


def _name(text: str) -> bytes:
    return text.encode().ljust(256, b"\0")[:256]


class Load:
    """One node's steady load: `write()` and `ipc()` each do the next operation of their cycle."""

    def __init__(self, mount: str, node: str, peers: list[str], vmbase: int) -> None:
        from cpg.ipcs import IpcClient

        self.mount = mount
        self.node = node
        self.peers = peers
        self.vmids = [vmbase + k for k in range(VMS)]
        self.rnd = random.Random(node)
        self.client_type = IpcClient
        self.client: Any = None
        self.requests = 0
        self.writes = 0
        self.errors: Counter[str] = Counter()  # unexpected failures, by operation and errno
        self.expected: Counter[str] = Counter()  # ENOENT for a key a peer did not set yet etc.
        self.next_rrd = 0.0
        self.dir = f"soak/{node}"
        os.makedirs(os.path.join(mount, self.dir), exist_ok=True)
        os.makedirs(os.path.join(mount, f"nodes/{node}/qemu-server"), exist_ok=True)
        for vmid in self.vmids:
            self._put(f"nodes/{node}/qemu-server/{vmid}.conf", self._vm_config(vmid))

    # -- files
    def _put(self, rel: str, data: bytes) -> None:
        with open(os.path.join(self.mount, rel), "wb") as f:
            f.write(data)

    def _vm_config(self, vmid: int) -> bytes:
        mem = self.rnd.choice((512, 1024, 2048, 4096))
        return (
            f"boot: order=scsi0\ncores: {self.rnd.randrange(1, 8)}\nmemory: {mem}\n"
            f"name: soak-{vmid}\nnet0: virtio=BC:24:11:00:00:{vmid % 256:02X},bridge=vmbr0\n"
            f"memory: {mem * 2}\n[snap1]\nmemory: 1\n"
        ).encode()

    def write(self) -> None:
        i = self.writes
        self.writes += 1
        kind = i % 10
        try:
            if kind <= 5:
                size = self.rnd.randrange(100, 3000)
                self._put(f"{self.dir}/f{i % FILES}", os.urandom(size // 2).hex().encode())
            elif kind == 6:
                vmid = self.vmids[i % VMS]
                self._put(f"nodes/{self.node}/qemu-server/{vmid}.conf", self._vm_config(vmid))
            elif kind == 7:
                tmp = f"{self.dir}/tmp{i}"
                self._put(tmp, b"short-lived\n")
                os.unlink(os.path.join(self.mount, tmp))
            elif kind == 8:
                tmp = os.path.join(self.mount, f"{self.dir}/g.tmp")
                with open(tmp, "wb") as f:
                    f.write(f"replaced {i}\n".encode())
                os.rename(tmp, os.path.join(self.mount, f"{self.dir}/g{i % 10}"))
            else:
                with open(os.path.join(self.mount, f"{self.dir}/log"), "ab") as f:
                    f.write(f"line {i}\n".encode()[:64])
                if i % 200 == 9:
                    os.truncate(os.path.join(self.mount, f"{self.dir}/log"), 0)
        except OSError as exc:
            self.errors[f"write/{kind}: {errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1

    # -- IPC
    def _request(self, what: str, op: int, payload: bytes, ok_errors: tuple[int, ...] = ()) -> None:
        if self.client is None or self.requests % RECONNECT_EVERY == 0:
            if self.client is not None:
                self.client.close()
            self.client = self.client_type("pve2")
        self.requests += 1
        try:
            err, _data = self.client.request(op, payload)
        except OSError as exc:
            self.errors[f"{what}: {errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
            with contextlib.suppress(OSError):
                self.client.close()
            self.client = None
            return
        if err == 0:
            return
        name = errno.errorcode.get(-err, str(err))
        target = self.expected if -err in ok_errors else self.errors
        target[f"{what}: {name}"] += 1

    def ipc(self) -> None:
        from pmxcfs.ipc import ops

        i = self.requests
        kind = i % 12
        peer = self.peers[i % len(self.peers)]
        vmid = self.vmids[i % VMS]
        if kind == 0:
            value = os.urandom(self.rnd.randrange(32, 128)).hex().encode()
            self._request("SET_STATUS", ops.SET_STATUS, _name(f"soak/k{i % 20}") + value)
        elif kind == 1:
            ident, tag = b"root@pam\0", b"soak\0"
            msg = f"soak message {i} from {self.node}\0".encode()
            head = bytes([6, len(ident), len(tag)])
            self._request("LOG_CLUSTER_MSG", ops.LOG_CLUSTER_MSG, head + ident + tag + msg)
        elif kind == 2:
            self._request("GET_FS_VERSION", ops.GET_FS_VERSION, b"")
        elif kind == 3:
            self._request("GET_CLUSTER_INFO", ops.GET_CLUSTER_INFO, b"")
        elif kind == 4:
            self._request("GET_GUEST_LIST", ops.GET_GUEST_LIST, b"")
        elif kind == 5:
            payload = _name(f"soak/k{i % 20}") + _name(peer)
            self._request("GET_STATUS", ops.GET_STATUS, payload, (errno.ENOENT,))
        elif kind == 6:
            path = f"{self.dir}/f{i % FILES}\0".encode()
            self._request("GET_CONFIG", ops.GET_CONFIG, path, (errno.ENOENT,))
        elif kind == 7:
            payload = struct.pack("=4I", 50, 0, 0, 0) + b"root@pam\0"
            self._request("GET_CLUSTER_LOG", ops.GET_CLUSTER_LOG, payload)
        elif kind == 8:
            self._request("GET_RRD_DUMP", ops.GET_RRD_DUMP, b"")
        elif kind == 9:
            payload = struct.pack("=I", vmid) + b"memory\0"
            self._request("GET_GUEST_CONFIG_PROPERTY", ops.GET_GUEST_CONFIG_PROPERTY, payload)
        elif kind == 10:
            payload = struct.pack("=IB", 0, 2) + b"memory\0cores\0"
            self._request("GET_GUEST_CONFIG_PROPERTIES", ops.GET_GUEST_CONFIG_PROPERTIES, payload)
        elif time.monotonic() >= self.next_rrd:
            self.next_rrd = time.monotonic() + RRD_EVERY
            now = int(time.time())
            data = (
                f"{now - 1000}:c:{now}:0.15:2:0.02:0.001:4000000000:{self.rnd.randrange(10**9)}:"
                f"0:0:100000000000:9000000000:{i * 100}:{i * 50}\0"
            )
            key = _name(f"rrd/pve2-node/{self.node}")
            self._request("SET_STATUS(rrd)", ops.SET_STATUS, key + data.encode())
        else:
            self._request("VERIFY_TOKEN", ops.VERIFY_TOKEN, b"root@pam!soak x\0", (errno.ENOENT,))


def worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="soak.py worker")
    p.add_argument("--mount", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--peers", required=True)
    p.add_argument("--vmbase", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--writes", type=float, required=True)
    p.add_argument("--ipc", type=float, required=True)
    a = p.parse_args(argv)

    def emit(**obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    load = Load(a.mount, a.node, a.peers.split(","), a.vmbase)
    emit(ev="ready", pid=os.getpid())
    start = time.monotonic()
    end = start + a.seconds
    next_w = next_i = next_tick = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_tick:
            next_tick += 5.0
            emit(ev="tick", writes=load.writes, ipc=load.requests, errors=dict(load.errors),
                 expected=dict(load.expected))  # fmt: skip
        if now >= next_w:
            load.write()
            next_w = max(next_w + 1 / a.writes, now - 1.0)  # catch up at most 1 s behind
        if now >= next_i:
            load.ipc()
            next_i = max(next_i + 1 / a.ipc, now - 1.0)
        wait = min(next_w, next_i, next_tick, end) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    emit(ev="done", writes=load.writes, ipc=load.requests, errors=dict(load.errors),
         expected=dict(load.expected))  # fmt: skip
    return 0


# ================================================================================ sampling


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def admin_status(socket_path: Path) -> dict[str, Any] | None:
    """The daemon's status document from its admin socket, or None (not there, no answer)."""
    try:
        from pmxcfs.control import client, protocol
    except ImportError:
        return None
    try:
        doc = client.call(protocol.Status(), path=str(socket_path), timeout=5.0)
    except (client.DaemonUnavailable, protocol.RemoteError, protocol.ProtocolError, OSError):
        return None
    return doc if isinstance(doc, dict) else None


def queues(doc: dict[str, Any] | None) -> dict[str, int | None]:
    """queued/unsent per group (None: not observable)."""
    out: dict[str, int | None] = {}
    groups = (doc or {}).get("groups") or {}
    for g in GROUPS:
        info = groups.get(g) or {}
        out[f"{g}.queued"] = info.get("queued")
        out[f"{g}.unsent"] = info.get("unsent")
    return out


@dataclass
class NodeSeries:
    name: str
    pid: int
    socket: Path
    t: list[float] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    qmax: dict[str, int] = field(default_factory=dict)  # since the last report
    queues_seen: bool = False

    def probe_queues(self) -> None:
        for k, q in queues(admin_status(self.socket)).items():
            if q is not None:
                self.queues_seen = True
                self.qmax[k] = max(self.qmax.get(k, 0), q)

    def sample(self, t: float) -> dict[str, float]:
        q = queues(admin_status(self.socket))
        row: dict[str, float] = {
            "rss_kib": float(_rss_kib(self.pid)),
            "fds": float(_fds(self.pid)),
            "threads": float(_threads(self.pid)),
        }
        for k, n in q.items():
            if n is not None:
                self.queues_seen = True
                row[k] = float(n)
                row[k + ".max"] = float(max(self.qmax.get(k, 0), n))
        self.qmax.clear()
        self.t.append(t)
        for k, v in row.items():
            self.values.setdefault(k, []).append(v)
        return row


# ================================================================================ analysis

# metric -> (absolute tolerance, relative tolerance) before a rise counts as growth
TOLERANCE: dict[str, tuple[float, float]] = {
    "rss_kib": (2048.0, 0.03),
    "fds": (0.5, 0.0),
    "threads": (0.5, 0.0),
}
QUEUE_TOLERANCE = (5.0, 0.0)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two distinct xs)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


@dataclass(frozen=True)
class Trend:
    first: float
    last: float
    per_min: float
    span_min: float
    grew: bool


def trend(metric: str, ts: list[float], ys: list[float]) -> Trend:
    third = max(1, len(ys) // 3)
    first, last = statistics.fmean(ys[:third]), statistics.fmean(ys[-third:])
    per_min = slope(ts, ys) * 60.0
    span_min = (ts[-1] - ts[0]) / 60.0 if len(ts) > 1 else 0.0
    absolute, relative = TOLERANCE.get(metric, QUEUE_TOLERANCE)
    limit = max(absolute, relative * abs(first))
    grew = last - first > limit and per_min * span_min > limit
    return Trend(first, last, per_min, span_min, grew)


def _fmt(metric: str, v: float) -> str:
    return f"{v / 1024:.1f} MiB" if metric == "rss_kib" else f"{v:.1f}"


# ================================================================================ main


def _row_text(row: dict[str, float]) -> str:
    parts = [f"rss {row['rss_kib'] / 1024:6.1f} MiB", f"fds {int(row['fds']):3d}",
             f"thr {int(row['threads']):2d}"]  # fmt: skip
    for g in GROUPS:
        if f"{g}.queued" in row:
            parts.append(
                f"{g} queued {int(row[f'{g}.queued'])} (max {int(row[f'{g}.queued.max'])}) "
                f"unsent {int(row[f'{g}.unsent'])} (max {int(row[f'{g}.unsent.max'])})"
            )
        else:
            parts.append(f"{g} queue n/a")
    return "  ".join(parts)


def _load_counts(events: list[dict[str, Any]]) -> tuple[int, int, int]:
    """writes, IPC requests and unexpected errors of the newest tick/done event."""
    if not events:
        return 0, 0, 0
    e = events[-1]
    return int(e["writes"]), int(e["ipc"]), sum(e["errors"].values())


def run(a: argparse.Namespace) -> int:
    from tests.cluster.pve_nodes import MOUNT, RUN_DIR, PveCluster

    seconds = a.minutes * 60.0
    warmup = min(a.warmup, seconds / 5)
    t0 = time.monotonic()
    with PveCluster(3, sched_rr=not a.no_rt) as pc:
        print(f"3-node cluster up in {time.monotonic() - t0:.1f} s; {a.minutes:g} min of load: "
              f"{a.writes:g} writes/s and {a.ipc:g} IPC requests/s per node; report every "
              f"{a.interval:g} s", flush=True)  # fmt: skip
        pc[1].ok("mkdir", path="soak")
        names = [pn.name for pn in pc]
        series = [
            NodeSeries(pn.name, pn.daemon_pid, pn.node.host_path(RUN_DIR) / "admin.sock")
            for pn in pc
        ]
        workers = []
        for k, pn in enumerate(pc):
            peers = ",".join(n for n in names if n != pn.name)
            workers.append(pn.node.spawn_json(
                [sys.executable, "-u", str(Path(__file__).resolve()), "worker", "--mount", MOUNT,
                 "--node", pn.name, "--peers", peers, "--vmbase", str(1000 + 100 * k),
                 "--seconds", str(seconds + LOAD_MARGIN), "--writes", str(a.writes),
                 "--ipc", str(a.ipc)],
                name=f"{pn.name}-soak",
            ))  # fmt: skip
        for w in workers:
            w.wait_for("ready", timeout=60)
        start = time.monotonic()
        last_counts = [(0, 0)] * len(pc)
        next_report = start
        next_probe = start + QUEUE_PROBE
        while True:
            now = time.monotonic()
            if now >= next_report:
                t = now - start
                print(f"t={t:5.0f} s", flush=True)
                for k, (s, pn) in enumerate(zip(series, pc, strict=True)):
                    if not pn.daemon_running:
                        print(f"  {s.name}: daemon exited!\n{pn.log_tail()}", flush=True)
                        return 1
                    row = s.sample(t)
                    ticks = workers[k].events("tick")
                    writes, ipc, errs = _load_counts(ticks)
                    dw, di = writes - last_counts[k][0], ipc - last_counts[k][1]
                    last_counts[k] = (writes, ipc)
                    print(f"  {s.name}: {_row_text(row)}  | +{dw} writes +{di} ipc, "
                          f"{errs} errors so far", flush=True)  # fmt: skip
                if now - start >= seconds:
                    break
                next_report = min(next_report + a.interval, start + seconds)
            if now >= next_probe:
                for s in series:
                    s.probe_queues()
                next_probe += QUEUE_PROBE
            time.sleep(max(0.0, min(next_report, next_probe) - time.monotonic()))
        done = [w.wait_for("done", timeout=120) for w in workers]
        pc.wait_converged(timeout=180, root="soak")
        print("\nload done; trees below /etc/pve/soak identical on every node")
        for s, d in zip(series, done, strict=True):
            err_text, exp_text = d["errors"] or "none", d["expected"] or "none"
            print(f"  {s.name}: {d['writes']} writes, {d['ipc']} IPC requests; "
                  f"unexpected errors {err_text}; expected {exp_text}")  # fmt: skip
        return report(series, warmup)


def report(series: list[NodeSeries], warmup: float) -> int:
    print(f"\ntrends after a {warmup:.0f} s warm-up (linear fit; mean of the first vs the last "
          "third of the samples):")  # fmt: skip
    grown: list[str] = []
    for s in series:
        idx = [i for i, t in enumerate(s.t) if t >= warmup]
        if len(idx) < 3:
            print(f"  {s.name}: too few samples after the warm-up")
            continue
        ts = [s.t[i] for i in idx]
        for metric, ys_all in s.values.items():
            if metric.endswith(".max"):
                continue
            ys = [ys_all[i] for i in idx]
            tr = trend(metric, ts, ys)
            flag = "GREW" if tr.grew else "flat"
            per_min = tr.per_min / 1024 if metric == "rss_kib" else tr.per_min
            unit = " MiB" if metric == "rss_kib" else ""
            first, last = _fmt(metric, tr.first), _fmt(metric, tr.last)
            print(f"  {s.name} {metric:16s} {first:>10s} -> {last:>10s}  "
                  f"slope {per_min:+.3f}{unit}/min  {flag}")  # fmt: skip
            if tr.grew:
                grown.append(f"{s.name} {metric}")
        if not s.queues_seen:
            print(f"  {s.name}: DFSM queues not observable (no admin socket answered)")
    print("grew: " + ", ".join(grown) if grown else "nothing grew")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="length of the load (default 30)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between reports")
    p.add_argument("--writes", type=float, default=10.0, help="file writes per second per node")
    p.add_argument("--ipc", type=float, default=50.0, help="IPC requests per second per node")
    p.add_argument("--warmup", type=float, default=60.0,
                   help="seconds left out of the trends (at most a fifth of the run)")  # fmt: skip
    p.add_argument("--no-rt", action="store_true", help="corosync without realtime scheduling")
    a = p.parse_args()
    if os.geteuid() != 0:
        print("soak.py needs root (network and mount namespaces)", file=sys.stderr)
        return 2
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
