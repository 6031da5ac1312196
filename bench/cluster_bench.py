"""Cluster replication benchmark.

Default (simulator, sans-I/O, deterministic in-memory CPG): the hot paths that do not
depend on corosync -- message decode, NORMAL delivery through DFSM + DCDB into the tree on
every node, and a full state transfer (STATE, leader choice, UPDATEs, follower commit with
index compare) for a large tree.

    .venv/bin/python bench/cluster_bench.py [--nodes 3] [--ops 5000] [--files 5000]

``--real`` (root): a 3-node cluster of our daemons on real corosync, each node in its own
namespaces (tests/cluster/pve_nodes.py); files are written through the FUSE mounts.
Prints create+write/s and writes/s with one writer, total rates with one writer on every
node at once, replication latency (write on node1 until node2 reads it) p50/p90, the time
a restarted node needs to catch up after --catchup files changed while it was down, and
the RSS of every daemon.  Figures only, no assertions on time.

    .venv/bin/python bench/cluster_bench.py --real [--files 500] [--writes 1000]
        [--samples 100] [--catchup 1000] [--probe] [--no-rt]

``--probe`` adds a round with a bare trio+cffi CPG member (it only peeks at headers) in
node2, and prints its CPU per delivered message next to the daemons': the floor of receiving
a message in a Python process on the same box under the same load.  ``--no-rt`` runs
corosync without its default realtime scheduling (``system { sched_rr: no }``): with three
nodes on two cores, three SCHED_RR corosyncs passing the token preempt every daemon.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.codec import PROTOCOL_VERSION, FuseOp, Subtype, decode_fuse
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.machine import Dfsm
from pmxcfs.dfsm.sim import Sim
from pmxcfs.tree import Tree


def _cluster(trees: list[Tree]) -> tuple[Sim, list[DcdbApp]]:
    sim = Sim(total_nodes=len(trees))
    apps = [DcdbApp(t) for t in trees]
    for i, app in enumerate(apps, 1):
        sim.add(Dfsm(i, 1000 + i, app, PROTOCOL_VERSION, name=f"n{i}"))
    return sim, apps


def bench_decode(n: int) -> float:
    op = FuseOp(b"nodes/n1/qemu-server/100.conf", data=b"x" * 200)
    msg = codec.encode_normal(Subtype.WRITE, 1, 0, 1, op.encode())

    t = time.perf_counter()
    for _ in range(n):
        m = codec.decode(msg)
        assert isinstance(m, codec.NormalMessage)
        decode_fuse(m.payload)
    return n / (time.perf_counter() - t)


def bench_ops(nodes: int, ops: int) -> float:
    sim, apps = _cluster([Tree() for _ in range(nodes)])
    first = (1, 1001)
    sim.join(first)
    for i in range(2, nodes + 1):
        sim.join((i, 1000 + i), first)
    sim.run()
    sim.request(first, Subtype.CREATE, FuseOp(b"f.cfg").encode())
    sim.run()
    t = time.perf_counter()
    for i in range(ops):
        sim.request((i % nodes + 1, 1000 + i % nodes + 1), Subtype.WRITE,
                    FuseOp(b"f.cfg", data=b"line %d\n" % i).encode())  # fmt: skip
        sim.run()
    dt = time.perf_counter() - t
    assert len({a.tree.encode_index() for a in apps}) == 1
    return ops / dt


def bench_sync(files: int) -> tuple[float, int]:
    big = Tree()
    big.mkdir("d", 0, 1)
    for i in range(files):
        big.create(f"d/f{i}", 0, 1)
        big.write(f"d/f{i}", 0, b"content %d\n" % i, 0, 1)
    sim, apps = _cluster([big, Tree()])
    sim.join((1, 1001))
    t = time.perf_counter()
    sim.join((2, 1002), (1, 1001))
    n = sim.run()
    dt = time.perf_counter() - t
    assert apps[0].tree.encode_index() == apps[1].tree.encode_index()
    return dt, n


# ---------------------------------------------------------------------------- real cluster


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """utime + stime of *pid* (all threads) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _preemptions(pid: int) -> int:
    """Involuntary context switches of every thread of *pid*."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("nonvoluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def bench_real(
    files: int, writes: int, samples: int, catchup: int, probe: bool, sched_rr: bool = True
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.cluster.pve_nodes import PveCluster, PveNode

    def timed(results: list[tuple[PveNode, int]], timeout: float = 600) -> float:
        """Wall time from the earliest start to the latest end (agent-side clocks)."""
        res = [pn.result(rid, timeout) for pn, rid in results]
        for r in res:
            if not r["ok"]:
                raise RuntimeError(f"benchmark step failed: {r}")
        return float(max(r["t1"] for r in res) - min(r["t0"] for r in res))

    t = time.monotonic()
    with PveCluster(3, sched_rr=sched_rr) as pc:
        n1, n2, n3 = pc[1], pc[2], pc[3]
        sched = "SCHED_RR 99 (its default)" if sched_rr else "without realtime scheduling"
        print(f"3-node cluster of pmxcfs daemons up (quorate, mounted) in "
              f"{time.monotonic() - t:.1f} s; corosync {sched}")  # fmt: skip
        for d in ("b1", "b3", "lat", "cu", *(f"b3/{pn.name}" for pn in pc)):
            n1.ok("mkdir", path=d)
        rss0 = {pn.name: _rss_kib(pn.daemon_pid) for pn in pc}

        # one writer: create+write of new files (three rounds: this box is noisy), with the
        # CPU each process spent per file and how often the daemons were preempted
        daemons = {pn.name: pn.daemon_pid for pn in pc}
        procs = dict(daemons)
        procs.update({f"corosync {pn.name}": pn.node.corosync.pid for pn in pc
                      if pn.node.corosync is not None})  # fmt: skip
        rates: list[float] = []
        for rnd in range(3):
            cpu0 = {k: _cpu_s(p) for k, p in procs.items()}
            pre0 = {k: _preemptions(p) for k, p in daemons.items()}
            dt = timed([(n1, n1.send("burst", prefix=f"b1/r{rnd}f", count=files, tag="b"))])
            rates.append(files / dt)
            cpu1 = {k: _cpu_s(p) for k, p in procs.items()}
            pre1 = {k: _preemptions(p) for k, p in daemons.items()}
        rate = statistics.median(rates)
        print(f"one writer, create+write: {rate:,.0f} files/s, median of 3 rounds of {files} "
              f"({', '.join(f'{r:,.0f}' for r in rates)}; {2 * rate:,.0f} replicated ops/s)")
        cpu = ", ".join(f"{k} {1000 * (cpu1[k] - cpu0[k]) / files:.2f}" for k in procs)
        pre = ", ".join(f"{k} {(pre1[k] - pre0[k]) / (2 * files):.1f}" for k in daemons)
        print(f"  last round, CPU ms per file: {cpu}")
        print(f"  last round, daemon preemptions per replicated op: {pre}")
        dt = timed([(n1, n1.send("pwrite_loop", path="b1/w", data="x" * 100, count=writes))])
        print(f"one writer, 100-byte writes: {writes / dt:,.0f} writes/s")

        # one writer on every node at once
        dt = timed([(pn, pn.send("burst", prefix=f"b3/{pn.name}/f", count=files, tag=pn.name))
                    for pn in pc])  # fmt: skip
        print(f"3 writers at once, create+write: {3 * files / dt:,.0f} files/s total "
              f"({6 * files / dt:,.0f} replicated ops/s)")  # fmt: skip
        dt = timed([(pn, pn.send("pwrite_loop", path=f"b3/{pn.name}/w", data="y" * 100,
                                 count=writes)) for pn in pc])  # fmt: skip
        print(f"3 writers at once, 100-byte writes: {3 * writes / dt:,.0f} writes/s total")

        # replication latency node1 -> node2: one replicated WRITE (same-length pwrite)
        lat: list[float] = []
        ack: list[float] = []
        n1.write("lat/f", f"sample {0:06d}")
        assert n2.agent is not None
        for i in range(1, samples + 1):
            want = f"sample {i:06d}"
            mark = n2.agent.mark()
            wid = n2.send("watch", path="lat/f", data=want, timeout=30)
            n2.agent.wait_for("watching", start=mark, timeout=30)
            w = n1.result(n1.send("write", path="lat/f", data=want, mode="r+"))
            seen = n2.result(wid)
            if not (w["ok"] and seen["ok"]):
                raise RuntimeError(f"latency sample failed: {w} {seen}")
            lat.append(float(seen["value"]) - float(w["t0"]))
            ack.append(float(w["t1"]) - float(w["t0"]))
        print(f"replication latency node1 -> node2 ({samples} samples, 1 ms polling): "
              f"p50 {1000 * statistics.median(lat):.1f} ms, p90 {1000 * _pct(lat, 0.9):.1f} ms "
              f"(writer's own open+pwrite+close: p50 {1000 * statistics.median(ack):.1f} ms, "
              f"p90 {1000 * _pct(ack, 0.9):.1f} ms)")  # fmt: skip

        # catch-up of a restarted node: every one of --catchup files rewritten while it is down
        timed([(n1, n1.send("burst", prefix="cu/f", count=catchup, tag="v1"))])
        pc.wait_converged(timeout=120)
        assert n3.stop_daemon() == 0
        timed([(n1, n1.send("burst", prefix="cu/f", count=catchup, tag="v2"))])
        n1.write("cu/sentinel", "all changed")
        t0 = time.monotonic()
        n3.start_daemon()
        t_mount = time.monotonic() - t0
        n3.ok("watch", path="cu/sentinel", data="all changed", timeout=300, interval=0.01)
        t_sync = time.monotonic() - t0
        pc.wait_converged(timeout=120)
        saved = sum(len(f) for _r, _d, f in os.walk(n3.lost_found))
        print(
            f"restarted node catches up on {catchup} changed files: {t_sync:.2f} s from "
            f"daemon start ({t_mount:.2f} s to mount, {t_sync - t_mount:.2f} s mount to synced; "
            f"it wrote {saved} superseded files to its lost+found)"
        )

        rss = {pn.name: _rss_kib(pn.daemon_pid) for pn in pc}
        total = len(n1.snapshot())
        print(f"daemon RSS (KiB) at start: {rss0}; at the end ({total} tree entries): {rss}")

        if probe:
            _probe_round(pc, files)


def _probe_round(pc: Any, files: int) -> None:
    """The floor: CPU per delivered message of a bare trio+cffi CPG member (it only peeks at
    headers) next to the daemons', in the same cluster under the same one-writer load."""
    n1, n2 = pc[1], pc[2]
    probe = n2.node.spawn_json(
        [sys.executable, "-u", "-m", "tests.cluster.pve_nodes", "hostile"], name="bench-probe"
    )
    try:
        probe.wait_for("ready", timeout=30)
        pc.wait_ready(timeout=60)
        pids = {"pmxcfs node1 (writer)": n1.daemon_pid, "pmxcfs node2": n2.daemon_pid,
                "bare CPG member on node2": probe.pid}  # fmt: skip
        n1.ok("mkdir", path="probe")
        cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
        res = n1.result(n1.send("burst", prefix="probe/f", count=files, tag="p"), 600)
        cpu1 = {k: _cpu_s(p) for k, p in pids.items()}
        per = ", ".join(f"{k} {1e6 * (cpu1[k] - cpu0[k]) / (2 * files):.0f}" for k in pids)
        rate = files / (res["t1"] - res["t0"])
        print(f"receive floor ({rate:,.0f} files/s with the probe): CPU us per message: {per}")
    finally:
        probe.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--ops", type=int, default=3000)
    ap.add_argument(
        "--files",
        type=int,
        default=None,
        help="simulator: state transfer size (5000); --real: files per writer (500)",
    )
    ap.add_argument("--real", action="store_true", help="3 real daemons on real corosync (root)")
    ap.add_argument("--writes", type=int, default=1000, help="--real: writes per writer")
    ap.add_argument("--samples", type=int, default=100, help="--real: latency samples")
    ap.add_argument("--catchup", type=int, default=1000, help="--real: files changed while down")
    ap.add_argument(
        "--probe", action="store_true", help="--real: also measure a bare CPG member's CPU floor"
    )
    ap.add_argument(
        "--no-rt",
        action="store_true",
        help="--real: corosync without realtime scheduling (system.sched_rr: no)",
    )
    args = ap.parse_args()
    if args.real:
        bench_real(
            args.files or 500, args.writes, args.samples, args.catchup, args.probe, not args.no_rt
        )
        return
    files = args.files or 5000
    print(f"decode WRITE message + payload: {bench_decode(100_000):,.0f} msg/s")
    rate = bench_ops(args.nodes, args.ops)
    print(f"replicated WRITE, {args.nodes} nodes (applied on all): {rate:,.0f} ops/s")
    dt, n = bench_sync(files)
    print(f"full state transfer of {files} files: {dt:.2f} s ({n} messages)")


if __name__ == "__main__":
    main()
