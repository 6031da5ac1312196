"""Cluster workloads of bench/compare.py: a 3-node cluster of ours and a 3-node cluster of
the reference (tests/cluster/pve_nodes.py, one corosync per node in its own namespaces),
both up for the whole run, measured in alternating rounds by the same agents
(bench/bench_agent.py, one per node).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_agent import payload
from cmp_common import Agent, BenchError, Results, cpu_sum_ns, pct, rss_kib

from tests.cluster import pve_nodes
from tests.cluster.pve_nodes import PveCluster

GROUP = "3-node cluster"


@dataclass
class ClusterConfig:
    files: int = 500
    writers: int = 8
    read_passes: int = 5
    samples: int = 100
    catchup: int = 1000
    #: how often the latency watcher re-reads the file (s)
    poll_interval: float = 0.0005


class ClusterSide:
    """One 3-node cluster (all ours, or all reference) and a bench agent per node."""

    def __init__(self, kind: str, sched_rr: bool) -> None:
        self.kind = kind
        ref = frozenset({1, 2, 3}) if kind == "reference" else frozenset()
        kw: dict[str, Any] = {"sched_rr": sched_rr}
        if ref:
            kw["reference"] = ref
        self.pc = PveCluster(3, **kw)
        try:
            self.agents = [Agent(pn.node, name=f"{pn.name}-bench") for pn in self.pc]
        except BaseException:
            self.pc.teardown()
            raise
        self.prepared = False

    def close(self) -> None:
        for a in getattr(self, "agents", []):
            with contextlib.suppress(Exception):
                a.close()
        self.pc.teardown()

    def daemon_pids(self) -> list[int]:
        return [pn.daemon_pid for pn in self.pc]

    def converge(self, d: str, timeout: float = 180.0) -> None:
        """Wait until every node shows the same files below *d* as node1."""
        want = self.agents[0].call("digest", dir=d)
        deadline = time.monotonic() + timeout
        for a in self.agents[1:]:
            while a.call("digest", dir=d) != want:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.kind}: {d} did not converge\n{self.pc.logs()}")
                time.sleep(0.2)


class ClusterPair:
    """Both clusters, built one after the other; torn down on exit (also on failure)."""

    def __init__(self, reference: Path, with_reference: bool, sched_rr: bool = True) -> None:
        os.environ[getattr(pve_nodes, "REFERENCE_ENV", "PMXCFS_REFERENCE")] = str(reference)
        self.sides: dict[str, ClusterSide] = {}
        try:
            for kind in ("ours", "reference") if with_reference else ("ours",):
                t = time.monotonic()
                self.sides[kind] = ClusterSide(kind, sched_rr)
                print(f"  {kind} cluster up in {time.monotonic() - t:.0f} s", flush=True)
        except BaseException:
            self.close()
            raise

    @property
    def kinds(self) -> list[str]:
        return list(self.sides)

    def close(self) -> None:
        errors = []
        for side in self.sides.values():
            try:
                side.close()
            except Exception as exc:
                errors.append(f"{side.kind}: {exc}")
        self.sides.clear()
        if errors:
            raise BenchError("cluster teardown: " + "; ".join(errors))

    def __enter__(self) -> ClusterPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def round(self, kind: str, rnd: int, res: Results, cfg: ClusterConfig) -> None:
        side = self.sides[kind]
        if not side.prepared:
            _prepare(side, cfg)
        _round(side, rnd, res, cfg)


def _prepare(side: ClusterSide, cfg: ClusterConfig) -> None:
    """Directories, the latency file and the catch-up files (untimed)."""
    a1 = side.agents[0]
    a1.call("mkdirs", paths=["w1", "w3", "m8", "lat", "cu"])
    a1.call("write", path="lat/f", data=_sample(0, 0))
    a1.call("create", dir="cu", count=cfg.catchup, size=200, tag="v0")
    side.converge("cu")
    side.converge("lat")
    side.prepared = True


def _sample(rnd: int, i: int) -> str:
    return f"sample {rnd:03d} {i:06d}"


def _rate(n: int, span: dict[str, float]) -> float:
    return n / (span["end"] - span["start"])


def _round(side: ClusterSide, rnd: int, res: Results, cfg: ClusterConfig) -> None:
    kind, pc = side.kind, side.pc
    a1, a2, a3 = side.agents
    pids = side.daemon_pids()
    n = cfg.files

    def cpu_per(c0: int, ops: int) -> float:
        return (cpu_sum_ns(pids) - c0) / 1e3 / ops

    def add(name: str, unit: str, better: str, value: float, cpu: float | None = None) -> None:
        res.add(GROUP, name, unit, better, kind, value, cpu)

    # one writer: create+write of new 500-byte files on node1
    d = f"w1/r{rnd}"
    a1.call("mkdirs", paths=[d])
    c0 = cpu_sum_ns(pids)
    span = a1.call("create", dir=d, count=n, size=500, tag=f"w{rnd}")
    add("one writer, create+write 500 B", "files/s", "higher", _rate(n, span), cpu_per(c0, n))

    # reads on node2 of what node1 wrote (once it is there)
    last = payload(f"w{rnd}", n - 1, 500).hex()
    a2.call("wait_content", path=f"{d}/f{n - 1}.cfg", hex=last, timeout=300)
    a2.call("read", dir=d, count=n, passes=1)
    ops = n * cfg.read_passes
    c0 = cpu_sum_ns(pids)
    span = a2.call("read", dir=d, count=n, passes=cfg.read_passes)
    add("reads on node2, open+read+close", "files/s", "higher", _rate(ops, span), cpu_per(c0, ops))

    # one writer on every node at once
    dirs = [f"w3/r{rnd}/{pn.name}" for pn in pc]
    a1.call("mkdirs", paths=dirs)
    for a in (a2, a3):
        a.call("wait_exists", paths=dirs, timeout=120)
    c0 = cpu_sum_ns(pids)
    rids = [
        (a, a.send("create", dir=dd, count=n, size=500, tag=f"x{rnd}"))
        for a, dd in zip(side.agents, dirs, strict=True)
    ]
    spans = [a.result(rid)["value"] for a, rid in rids]
    whole = {"start": min(s["start"] for s in spans), "end": max(s["end"] for s in spans)}
    add(
        "one writer per node at once, total",
        "files/s",
        "higher",
        _rate(3 * n, whole),
        cpu_per(c0, 3 * n),
    )

    # eight writer processes on node1
    d = f"m8/r{rnd}"
    a1.call("mkdirs", paths=[d])
    per = math.ceil(n / cfg.writers)
    c0 = cpu_sum_ns(pids)
    span = a1.call("multi_burst", dir=d, procs=cfg.writers, count=per, size=500, tag=f"m{rnd}")
    total = per * cfg.writers
    add(
        f"{cfg.writers} writer processes on node1, total",
        "files/s",
        "higher",
        _rate(total, span),
        cpu_per(c0, total),
    )

    # replication latency node1 -> node2: one same-length pwrite, polled for on node2
    lat: list[float] = []
    for i in range(1, cfg.samples + 1):
        want = _sample(rnd + 1, i)
        mark = a2.jp.mark()
        wid = a2.send(
            "wait_content", path="lat/f", data=want, interval=cfg.poll_interval, timeout=60
        )
        a2.wait_event("watching", wid, start=mark, timeout=60)
        w = a1.result(a1.send("write", path="lat/f", data=want, mode="r+"))
        seen = a2.result(wid)["value"]
        lat.append(1e3 * (float(seen) - float(w["t0"])))
    add("replication latency node1 -> node2, p50", "ms", "lower", statistics.median(lat))
    add("replication latency node1 -> node2, p90", "ms", "lower", pct(lat, 0.9))

    add("RSS per daemon (mean of 3)", "MiB", "lower", sum(rss_kib(p) for p in pids) / 3 / 1024)

    # catch-up: node3's daemon down while node1 changes every catch-up file once
    pn3 = pc[3]
    pn3.stop_daemon()
    a1.call("overwrite", dir="cu", count=cfg.catchup, size=200, tag=f"v{rnd + 1}")
    sentinel = f"round {rnd} done"
    a1.call("write", path="cu/sentinel", data=sentinel)
    t0 = time.monotonic()
    pn3.start_daemon(timeout=120)
    t_mount = time.monotonic()
    seen = float(
        a3.call("wait_content", path="cu/sentinel", data=sentinel, interval=0.005, timeout=600)
    )
    add(f"catch-up after {cfg.catchup} changes, from daemon start", "s", "lower", seen - t0)
    add("catch-up, from mounted to synced", "s", "lower", max(0.0, seen - t_mount))
    side.converge("cu")
    saved = sum(len(f) for _r, _d, f in os.walk(pn3.lost_found))
    if saved:  # a node that was merely behind should save nothing (README)
        print(f"  note: {kind} node3 has {saved} files in lost+found after catching up")
