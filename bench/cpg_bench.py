"""Benchmark of the cpg bindings: messages/s and round-trip latency.

``python bench/cpg_bench.py [--nodes N] [--count N] [--size B]`` (as root) builds a
harness cluster (default: 1 node, i.e. corosync on the node's loopback-only network
namespace), then runs the measurement inside node1:

* throughput: one sender multicasts ``--count`` messages of ``--size`` bytes with
  CPG_TYPE_AGREED as fast as ``Cpg.mcast`` allows, while the dispatch task receives them;
  msgs/s = count / (time from the first send to our own last delivery);
* latency: ``--rtt`` sequential round trips (mcast, then wait for our own delivery),
  reported as p50/p90/p99.

``--c-floor`` also builds ``bench/cpg_rtt.c`` (gcc, pkg-config libcpg) and runs the same
sequential round trips from C in the same node, so the difference between the two is what
Python (trio's loop, the cffi callbacks) adds to every message.

Only figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


async def _measure(count: int, size: int, rtt_samples: int) -> dict[str, float]:
    import trio

    from cpg import Cpg, CpgDeliver

    async def own_delivery(c: Cpg) -> CpgDeliver:
        while True:
            ev = await c.receive()
            if isinstance(ev, CpgDeliver) and ev.nodeid == c.nodeid:
                return ev

    result: dict[str, float] = {}
    with Cpg() as cpg:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cpg.run)
            await cpg.join("cpg_bench", include_nul=True)
            await cpg.receive()  # our join confchg
            payload = b"x" * size

            # warm-up
            for _ in range(200):
                await cpg.mcast(payload)
            for _ in range(200):
                await own_delivery(cpg)

            received = 0
            done = trio.Event()

            async def consume() -> None:
                nonlocal received
                while received < count:
                    await own_delivery(cpg)
                    received += 1
                done.set()

            nursery.start_soon(consume)
            t0 = time.perf_counter()
            for _ in range(count):
                await cpg.mcast(payload)
            t_sent = time.perf_counter()
            await done.wait()
            t_end = time.perf_counter()
            result["throughput_msgs_per_s"] = count / (t_end - t0)
            result["send_rate_msgs_per_s"] = count / (t_sent - t0)
            result["try_again"] = cpg.try_again_count

            samples = []
            for _ in range(rtt_samples):
                t = time.perf_counter()
                await cpg.mcast(payload)
                await own_delivery(cpg)
                samples.append((time.perf_counter() - t) * 1e6)
            q = statistics.quantiles(samples, n=100)
            result["rtt_p50_us"] = statistics.median(samples)
            result["rtt_p90_us"] = q[89]
            result["rtt_p99_us"] = q[98]
            cpg.finalize()
    return result


def inner(args: argparse.Namespace) -> None:
    import resource

    import trio

    figures = trio.run(_measure, args.count, args.size, args.rtt)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    figures["client_cpu_s"] = ru.ru_utime + ru.ru_stime
    print(json.dumps(figures), flush=True)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* in seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def outer(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from tests.cluster.harness import Cluster

    with Cluster(args.nodes) as cluster:
        assert cluster[1].corosync is not None
        coro_pid = cluster[1].corosync.pid
        coro_cpu = _cpu_seconds(coro_pid)
        wall = time.perf_counter()
        res = cluster[1].run(
            [sys.executable, str(Path(__file__).resolve()), "--inner",
             "--count", str(args.count), "--size", str(args.size), "--rtt", str(args.rtt)],
            cwd=str(REPO), timeout=600,
        )  # fmt: skip
        wall = time.perf_counter() - wall
        coro_cpu = _cpu_seconds(coro_pid) - coro_cpu
        figures = json.loads(res.stdout.strip().splitlines()[-1])
        c_figures = _c_floor(cluster, args) if args.c_floor else None
    print(f"cpg bench: {args.nodes}-node cluster, {args.size}-byte messages, one sender")
    print(f"  throughput      {figures['throughput_msgs_per_s']:10.0f} msgs/s "
          f"({args.count} msgs, mcast to own delivery)")  # fmt: skip
    print(f"  send rate       {figures['send_rate_msgs_per_s']:10.0f} msgs/s "
          f"(TRY_AGAIN answers: {figures['try_again']:.0f})")  # fmt: skip
    print(f"  round trip p50  {figures['rtt_p50_us']:10.0f} us   "
          f"p90 {figures['rtt_p90_us']:.0f} us   p99 {figures['rtt_p99_us']:.0f} us "
          f"({args.rtt} sequential samples)")  # fmt: skip
    print(f"  CPU during run  client {figures['client_cpu_s']:.1f} s, node1 corosync "
          f"{coro_cpu:.1f} s, wall {wall:.1f} s ({os.cpu_count()} CPUs)")  # fmt: skip
    if c_figures is not None:
        print(f"  C round trip p50 {c_figures['rtt_p50_us']:9.0f} us   "
              f"p90 {c_figures['rtt_p90_us']:.0f} us   p99 {c_figures['rtt_p99_us']:.0f} us, "
              f"client CPU {c_figures['cpu_us_per_rtt']:.0f} us per round trip "
              f"(bench/cpg_rtt.c, same node, {args.rtt} samples)")  # fmt: skip


def _c_floor(cluster: Any, args: argparse.Namespace) -> dict[str, float]:
    """Build bench/cpg_rtt.c into a temporary directory and run it in node1."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cpg-rtt-") as tmp:
        exe = Path(tmp) / "cpg_rtt"
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libcpg"], check=True,
                               capture_output=True, text=True).stdout.split()  # fmt: skip
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(REPO / "bench/cpg_rtt.c"),
                        *flags], check=True)  # fmt: skip
        res = cluster[1].run([str(exe), str(args.rtt), str(args.size)], timeout=600)
        return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rtt", type=int, default=2000)
    parser.add_argument("--c-floor", action="store_true", help="also time round trips from C")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    (inner if args.inner else outer)(args)


if __name__ == "__main__":
    main()
