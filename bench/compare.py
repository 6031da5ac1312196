"""Side by side: the same workloads on our daemon and on the reference (C) daemon, in one
run, rounds alternating ours/reference, and a table of medians and ours/reference ratios.

    .venv/bin/python bench/compare.py [--local] [--cluster] [--ipc] [--rounds 3]
        [--reference PATH] [--quick] [--json FILE]

Groups (all three when none is named):
  --local    one node in private namespaces, local mode: create+write, overwrite,
             open+read+close, stat, readdir, 512 KiB writes, RSS (bench/cmp_local.py)
  --ipc      pve2 requests per second on one connection, from a C libqb client, in the
             same local-mode setup (bench/cmp_local.py, bench/ipc_rps.c)
  --cluster  3-node corosync clusters, one of ours and one of the reference, both up for
             the whole run: one writer, one writer per node, eight writer processes on one
             node, reads, replication latency, catch-up, RSS (bench/cmp_cluster.py)

Each round runs every group on ours and on the reference; the order flips every round.
Figures only: nothing asserts on time.  Needs root (namespaces, mounts, corosync).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cbuild import build_all
from cmp_common import KINDS, REPO, Results
from cmp_local import LocalConfig, LocalNode, run_local_round

DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "pmxcfs"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--local", action="store_true", help="local-mode filesystem workloads")
    ap.add_argument("--cluster", action="store_true", help="3-node cluster workloads")
    ap.add_argument("--ipc", action="store_true", help="pve2 IPC requests per second")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per daemon (3; quick: 1)")
    ap.add_argument(
        "--reference",
        type=Path,
        default=DEFAULT_REFERENCE,
        help=f"the reference pmxcfs binary (default {DEFAULT_REFERENCE})",
    )
    ap.add_argument("--quick", action="store_true", help="small counts, one round: a smoke run")
    ap.add_argument("--files", type=int, default=None, help="small files per workload (500)")
    ap.add_argument("--ipc-count", type=int, default=None, help="requests per IPC op (20000)")
    ap.add_argument("--samples", type=int, default=None, help="latency samples (100)")
    ap.add_argument("--catchup", type=int, default=None, help="changes while down (1000)")
    ap.add_argument(
        "--no-rt", action="store_true", help="corosync without realtime scheduling (sched_rr: no)"
    )
    ap.add_argument("--json", type=Path, help="also write every round's figures here")
    args = ap.parse_args()
    if not (args.local or args.cluster or args.ipc):
        args.local = args.cluster = args.ipc = True
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    return args


def kinds_for(rnd: int) -> tuple[str, ...]:
    """ours first in even rounds, the reference first in odd ones."""
    return KINDS if rnd % 2 == 0 else KINDS[::-1]


def run_local(args: argparse.Namespace, bins: dict[str, Path], res: Results) -> None:
    cfg = LocalConfig()
    if args.quick:
        cfg = LocalConfig(
            files=100, read_passes=5, stat_passes=20, readdir_passes=50, big_files=8, ipc_count=2000
        )
    if args.files:
        cfg.files = args.files
    if args.ipc_count:
        cfg.ipc_count = args.ipc_count
    t = time.monotonic()
    ln = LocalNode(args.reference, bins)
    try:
        for rnd in range(args.rounds):
            for kind in kinds_for(rnd):
                print(f"local round {rnd + 1}/{args.rounds}: {kind}", flush=True)
                run_local_round(ln, kind, res, cfg, fs=args.local, ipc=args.ipc)
    finally:
        ln.close()
    print(f"local/ipc groups done in {time.monotonic() - t:.0f} s", flush=True)


def run_cluster(args: argparse.Namespace, bins: dict[str, Path], res: Results) -> None:
    from cmp_cluster import ClusterConfig, ClusterPair

    from tests.cluster.pve_nodes import PveCluster

    if "reference" not in inspect.signature(PveCluster).parameters:
        print(
            "tests/cluster/pve_nodes.py cannot run reference nodes yet "
            "(PveCluster(reference=...)): cluster group on ours only",
            flush=True,
        )
        with_reference = False
    else:
        with_reference = True
    cfg = ClusterConfig()
    if args.quick:
        cfg = ClusterConfig(files=80, samples=20, catchup=200, read_passes=2)
    if args.files:
        cfg.files = args.files
    if args.samples:
        cfg.samples = args.samples
    if args.catchup:
        cfg.catchup = args.catchup
    t = time.monotonic()
    with ClusterPair(args.reference, with_reference, sched_rr=not args.no_rt) as pair:
        print(f"clusters up in {time.monotonic() - t:.0f} s: {', '.join(pair.kinds)}", flush=True)
        for rnd in range(args.rounds):
            for kind in kinds_for(rnd):
                if kind in pair.kinds:
                    print(f"cluster round {rnd + 1}/{args.rounds}: {kind}", flush=True)
                    pair.round(kind, rnd, res, cfg)
    print(f"cluster group done in {time.monotonic() - t:.0f} s", flush=True)


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("compare.py needs root (namespaces, FUSE mounts, corosync)")
    if not os.access(args.reference, os.X_OK):
        sys.exit(f"reference daemon {args.reference} is missing or not executable")
    res = Results()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pmxcfs-compare-") as tmp:
        os.chmod(tmp, 0o755)
        bins = build_all(["ipc_rps"], Path(tmp))
        try:
            if args.local or args.ipc:
                run_local(args, bins, res)
            if args.cluster:
                run_cluster(args, bins, res)
        finally:
            if args.json:
                args.json.write_text(json.dumps(res.as_json(), indent=1))
            print()
            print(
                f"ours vs reference ({args.reference}), median of {args.rounds} round(s) each,"
                f" {time.monotonic() - started:.0f} s; ratio = ours/reference, 'better' says"
                " which way is good; CPU = daemon CPU time per operation"
                " (all daemons of the cluster)"
            )
            print(res.table())


if __name__ == "__main__":
    main()
