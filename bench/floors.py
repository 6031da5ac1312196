"""Floors: what one bare request costs in our stack against the same in C, same client.

    .venv/bin/python bench/floors.py [--fuse] [--cpg] [--ipc] [--rounds 3] [--quick]

  --fuse  a trivial filesystem (one 4 KiB file, attribute/entry timeouts 0, direct_io)
          in pyfuse3 on trio (here) against the same in C on libfuse3's low-level API,
          one thread (bench/fuse_floor_fs.c); client bench/fuse_client.c: fstat (one
          GETATTR per call) and pread (one READ per call), in a private mount namespace
  --cpg   mcast + wait for our own delivery on a 1-node corosync (harness node): trio +
          cffi (cpg.Cpg with a deliver handler, the daemon's hot path) against libcpg
          from C (bench/cpg_rtt.c, via bench/cpg_bench.py)
  --ipc   a libqb shared-memory server answering every request with an empty reply: ours
          (cpg/ipcs.py in trio) against libqb's own loop in C
          (bench/ipc_floor_server.c); client bench/ipc_rps.c, in private namespaces

Per pair: wall time per operation, the server's CPU per operation (the client's for CPG,
where the client is the server), and ours/C.  The C programs are compiled with gcc into a
temporary directory.  Rounds alternate C and ours.  Figures only, nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from cbuild import build_all  # noqa: E402
from cmp_common import cpu_ns  # noqa: E402

Row = dict[str, float]


# ------------------------------------------------------------------------ helpers


def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_server(argv: list[str], timeout: float = 30.0) -> subprocess.Popen[str]:
    """A server that prints "ready" once it serves; it dies with us."""
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent
    )
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "ready":
        stop_server(p)
        raise RuntimeError(
            f"{argv[0]} did not start: {line!r} {p.stderr.read() if p.stderr else ''}"
        )
    return p


def stop_server(p: subprocess.Popen[str]) -> str:
    """SIGTERM, then SIGKILL; returns its stderr."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return p.stderr.read() if p.stderr else ""


def run_json(argv: list[str], timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    try:
        res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr}") from None
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {res} {out.stderr}")
    return res


def is_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


# --------------------------------------------------------------- pyfuse3 floor fs


def serve_pyfuse3(mnt: str) -> None:
    """The trivial filesystem in pyfuse3 + trio (the twin of bench/fuse_floor_fs.c)."""
    import errno

    import pyfuse3
    import trio

    file_ino, size = 2, 4096
    content = b"x" * size

    class FloorFs(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.requests = 0

        def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            if ino == pyfuse3.ROOT_INODE:
                a.st_mode, a.st_nlink = 0o040755, 2
            else:
                a.st_mode, a.st_nlink, a.st_size = 0o100644, 1, size
            a.attr_timeout = a.entry_timeout = 0
            return a

        async def lookup(
            self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.EntryAttributes:
            self.requests += 1
            if parent_inode != pyfuse3.ROOT_INODE or name != b"file":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(file_ino)

        async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            self.requests += 1
            if inode not in (pyfuse3.ROOT_INODE, file_ino):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(inode)

        async def open(
            self, inode: int, flags: int, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.FileInfo:
            self.requests += 1
            if inode != file_ino:
                raise pyfuse3.FUSEError(errno.EISDIR)
            return pyfuse3.FileInfo(fh=1, direct_io=True)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            self.requests += 1
            return content[off : off + size]

        async def release(self, fh: int) -> None:
            self.requests += 1

    fs = FloorFs()
    pyfuse3.init(fs, mnt, {"default_permissions", "fsname=floor_py"})

    async def main() -> None:
        async with trio.open_nursery() as n:

            async def fuse() -> None:
                await pyfuse3.main()
                n.cancel_scope.cancel()

            async def signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        n.cancel_scope.cancel()
                        return

            n.start_soon(fuse)
            n.start_soon(signals)
            await trio.sleep(0)
            print("ready", flush=True)

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
        print(f"requests {fs.requests}", file=sys.stderr)


def serve_ipc(name: str) -> None:
    """The trivial libqb server on cpg/ipcs.py (twin of bench/ipc_floor_server.c)."""
    import trio

    from cpg.ipcs import IpcServer

    async def main() -> None:
        server = IpcServer(
            name, 1, accept=lambda uid, gid, pid: True, process=lambda conn, req: (0, b"")
        )
        async with trio.open_nursery() as n:
            await n.start(server.run)
            print("ready", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    n.cancel_scope.cancel()
                    return

    trio.run(main)


# --------------------------------------------------------------- inner runners


def inner_fuse(bins: Path, count: int, rounds: int) -> None:
    """In a private mount namespace: both filesystems in turn, the same client."""
    servers: dict[str, list[str]] = {
        "C libfuse3": [str(bins / "fuse_floor_fs")],
        "pyfuse3 + trio": [sys.executable, str(Path(__file__).resolve()), "--serve-pyfuse3"],
    }
    out: dict[str, dict[str, list[Row]]] = {}
    with tempfile.TemporaryDirectory(prefix="fuse-floor-") as mnt:
        for rnd in range(rounds):
            order = list(servers) if rnd % 2 == 0 else list(servers)[::-1]
            for name in order:
                p = start_server([*servers[name], mnt])
                try:
                    deadline = time.monotonic() + 30
                    while not os.path.exists(os.path.join(mnt, "file")):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{name}: mount did not appear")
                        time.sleep(0.02)
                    for op in ("fstat", "pread"):
                        c0 = cpu_ns(p.pid)
                        r = run_json(
                            [str(bins / "fuse_client"), os.path.join(mnt, "file"), op, str(count)]
                        )
                        server = (cpu_ns(p.pid) - c0) / 1e3 / count
                        out.setdefault(op, {}).setdefault(name, []).append(
                            {
                                "us": 1e6 * r["seconds"] / count,
                                "server_cpu_us": server,
                                "client_cpu_us": 1e6 * r["client_cpu_s"] / count,
                            }
                        )
                finally:
                    err = stop_server(p)
                    if is_mounted(mnt):
                        subprocess.run(["umount", "-l", mnt], check=False)
                requests = [ln for ln in err.splitlines() if ln.startswith("requests")]
                print(json.dumps({"log": f"{name}: {requests}"}), flush=True)
    print(json.dumps(out), flush=True)


def inner_ipc(bins: Path, count: int, rounds: int) -> None:
    """In private mount + network namespaces (own /dev/shm, own abstract sockets)."""
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", "/dev/shm"], check=True
    )
    name = "floor"
    servers: dict[str, list[str]] = {
        "C libqb loop": [str(bins / "ipc_floor_server"), name],
        "cpg/ipcs.py + trio": [sys.executable, str(Path(__file__).resolve()), "--serve-ipc", name],
    }
    out: dict[str, dict[str, list[Row]]] = {"request": {}}
    for rnd in range(rounds):
        order = list(servers) if rnd % 2 == 0 else list(servers)[::-1]
        for sname in order:
            p = start_server(servers[sname])
            try:
                c0 = cpu_ns(p.pid)
                r = run_json([str(bins / "ipc_rps"), name, "1", "", str(count), "200"])
                server = (cpu_ns(p.pid) - c0) / 1e3 / (count + 200)
                out["request"].setdefault(sname, []).append(
                    {
                        "us": 1e6 * r["seconds"] / count,
                        "server_cpu_us": server,
                        "client_cpu_us": 1e6 * r["client_cpu_s"] / count,
                    }
                )
            finally:
                stop_server(p)
    print(json.dumps(out), flush=True)


def inner_cpg(samples: int, size: int) -> None:
    """In a harness node: sequential mcast + own delivery through cpg.Cpg's hot path."""
    import trio

    from cpg import Cpg

    async def main() -> Row:
        got = 0
        me = os.getpid()
        arrived = trio.Event()

        def on_deliver(nodeid: int, pid: int, payload: bytes) -> None:
            nonlocal got, arrived
            if pid == me:
                got += 1
                arrived.set()

        cpg = Cpg(deliver_handler=on_deliver)
        rtt: list[float] = []
        async with trio.open_nursery() as n:
            n.start_soon(cpg.run)
            await cpg.join("floor_cpg_py", include_nul=True)
            data = b"x" * size
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            for i in range(samples + 200):
                if i == 200:
                    ru0 = resource.getrusage(resource.RUSAGE_SELF)
                t = time.perf_counter()
                arrived = trio.Event()
                await cpg.mcast(data)
                await arrived.wait()
                if i >= 200:
                    rtt.append(1e6 * (time.perf_counter() - t))
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            cpg.finalize()
            n.cancel_scope.cancel()
        cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        return {
            "us": statistics.median(rtt),
            "p90_us": sorted(rtt)[len(rtt) * 9 // 10],
            "server_cpu_us": 1e6 * cpu / samples,
        }

    print(json.dumps(trio.run(main)), flush=True)


# --------------------------------------------------------------- outer drivers


def _ns_inner(unshare: list[str], mode: str, bins: Path, count: int, rounds: int) -> Any:
    """Run an inner measurement in fresh namespaces: its mounts vanish with it."""
    argv = [
        "setpriv",
        "--pdeathsig",
        "KILL",
        "--",
        "unshare",
        *unshare,
        "--propagation",
        "private",
        "--",
        sys.executable,
        str(Path(__file__).resolve()),
        mode,
        str(bins),
        str(count),
        str(rounds),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=REPO)
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    for ln in lines[:-1]:
        print(f"  {ln.get('log', ln)}")
    return lines[-1]


def fuse_pair(bins: Path, count: int, rounds: int) -> dict[str, dict[str, list[Row]]]:
    res: dict[str, dict[str, list[Row]]] = _ns_inner(["-m"], "--inner-fuse", bins, count, rounds)
    return {f"FUSE {op}": v for op, v in res.items()}


def ipc_pair(bins: Path, count: int, rounds: int) -> dict[str, dict[str, list[Row]]]:
    res = _ns_inner(["-m", "-n"], "--inner-ipc", bins, count, rounds)
    return {"libqb IPC request": res["request"]}


def cpg_pair(samples: int, rounds: int, size: int = 100) -> dict[str, dict[str, list[Row]]]:
    import cpg_bench

    from tests.cluster.harness import Cluster

    rows: dict[str, list[Row]] = {"C libcpg": [], "trio + cffi": []}
    with Cluster(1) as cluster:
        node = cluster[1]
        for rnd in range(rounds):
            for name in list(rows) if rnd % 2 == 0 else list(rows)[::-1]:
                if name == "C libcpg":
                    ns = argparse.Namespace(rtt=samples, size=size)
                    c = cpg_bench._c_floor(cluster, ns)
                    rows[name].append(
                        {
                            "us": c["rtt_p50_us"],
                            "p90_us": c["rtt_p90_us"],
                            "server_cpu_us": c["cpu_us_per_rtt"],
                        }
                    )
                else:
                    r = node.run(
                        [
                            sys.executable,
                            str(Path(__file__).resolve()),
                            "--inner-cpg",
                            str(samples),
                            str(size),
                        ],
                        cwd=str(REPO),
                        timeout=600,
                    )
                    rows[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
    return {f"CPG round trip ({size} B, 1 node)": rows}


def _med(rows: list[Row], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def print_table(pairs: dict[str, dict[str, list[Row]]]) -> None:
    head = (
        "floor",
        "C: us/op",
        "ours: us/op",
        "ours/C",
        "C: CPU us/op",
        "ours: CPU us/op",
        "ours/C",
        "client CPU us/op C / ours",
    )
    rows = [head]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "-"

    for floor, by_impl in pairs.items():
        (c_name, c_rows), (o_name, o_rows) = sorted(by_impl.items(), key=lambda kv: kv[0][0] != "C")
        cu, ou = _med(c_rows, "us"), _med(o_rows, "us")
        cc, oc = _med(c_rows, "server_cpu_us"), _med(o_rows, "server_cpu_us")
        client = f"{f(_med(c_rows, 'client_cpu_us'))} / {f(_med(o_rows, 'client_cpu_us'))}"
        rows.append(
            (
                f"{floor} [{c_name} vs {o_name}]",
                f(cu),
                f(ou),
                ratio(ou, cu),
                f(cc),
                f(oc),
                ratio(oc, cc),
                client,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print(
            "  ".join(
                [
                    r[0].ljust(widths[0]),
                    *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)),
                ]
            )
        )


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1].startswith(("--inner-", "--serve-")):
        mode, rest = sys.argv[1], sys.argv[2:]
        inner: dict[str, Callable[[], None]] = {
            "--serve-pyfuse3": lambda: serve_pyfuse3(rest[0]),
            "--serve-ipc": lambda: serve_ipc(rest[0]),
            "--inner-fuse": lambda: inner_fuse(Path(rest[0]), int(rest[1]), int(rest[2])),
            "--inner-ipc": lambda: inner_ipc(Path(rest[0]), int(rest[1]), int(rest[2])),
            "--inner-cpg": lambda: inner_cpg(int(rest[0]), int(rest[1])),
        }
        inner[mode]()
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--fuse", action="store_true")
    ap.add_argument("--cpg", action="store_true")
    ap.add_argument("--ipc", action="store_true")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per implementation (3)")
    ap.add_argument("--count", type=int, default=None, help="operations per round (20000)")
    ap.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    args = ap.parse_args()
    if not (args.fuse or args.cpg or args.ipc):
        args.fuse = args.cpg = args.ipc = True
    rounds = args.rounds or (1 if args.quick else 3)
    count = args.count or (2000 if args.quick else 20000)
    if os.geteuid() != 0:
        sys.exit("floors.py needs root (namespaces, FUSE mounts, corosync)")
    pairs: dict[str, dict[str, list[Row]]] = {}
    with tempfile.TemporaryDirectory(prefix="pmxcfs-floors-") as tmp:
        os.chmod(tmp, 0o755)
        bins = Path(tmp)
        build_all(["fuse_floor_fs", "fuse_client", "ipc_floor_server", "ipc_rps"], bins)
        if args.fuse:
            print("FUSE floors ...", flush=True)
            pairs.update(fuse_pair(bins, count, rounds))
        if args.ipc:
            print("libqb IPC floors ...", flush=True)
            pairs.update(ipc_pair(bins, count, rounds))
        if args.cpg:
            print("CPG floors ...", flush=True)
            pairs.update(cpg_pair(max(200, count // 10), rounds))
    print()
    print(
        f"floors, median of {rounds} round(s); us/op = wall time per operation (CPG: p50 of "
        "sequential round trips); CPU = the server's CPU per operation (CPG: the client's "
        "own, it is both ends)"
    )
    print_table(pairs)


if __name__ == "__main__":
    main()
