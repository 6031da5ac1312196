"""Single-node benchmark: mounts the daemon in local mode and prints one figure per line.

Run as root: .venv/bin/python bench/fs_bench.py [--files 500] [--big-files 50000]
Figures, not assertions: compare them with the reference's on the same machine.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon_harness import Pmxcfs


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def small_file_figures(d: Pmxcfs, n: int) -> None:
    base = d.mount / "bench"
    base.mkdir()
    payload = b"x" * 500
    names = [base / f"f{i}.cfg" for i in range(n)]

    def create() -> None:
        for p in names:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            os.write(fd, payload)
            os.close(fd)

    def overwrite() -> None:
        for p in names:
            fd = os.open(p, os.O_WRONLY)
            os.write(fd, payload)
            os.close(fd)

    def read_all() -> None:
        for p in names:
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)

    def stat_all() -> None:
        for _ in range(20):
            for p in names:
                os.stat(p)

    def readdir() -> None:
        for _ in range(200):
            os.listdir(base)

    print(f"create+write 500 B: {rate(n, timed(create))}")
    print(f"overwrite 500 B: {rate(n, timed(overwrite))}")
    read_all()
    print(f"open+read+close: {rate(n * 5, timed(lambda: [read_all() for _ in range(5)]))}")
    print(f"stat: {rate(n * 20, timed(stat_all))}")
    print(f"readdir of {n} entries: {rate(200, timed(readdir))}")


def big_file_figures(d: Pmxcfs, count: int = 40) -> None:
    base = d.mount / "big"
    base.mkdir()
    payload = os.urandom(512 * 1024)

    def write_big() -> None:
        for i in range(count):
            fd = os.open(base / f"b{i}", os.O_WRONLY | os.O_CREAT, 0o640)
            os.write(fd, payload)
            os.close(fd)

    secs = timed(write_big)
    print(f"write 512 KiB files: {count * len(payload) / secs / 1e6:.1f} MB/s")


def make_db(path: Path, files: int) -> None:
    """A database of many small files, written directly (as a long-lived cluster would)."""
    from pmxcfs.storage import Database

    db, tree = Database.open(str(path))
    tree.mkdir("many", 0, 1)
    per_dir = 1000
    rows = []
    v = tree.version
    for i in range(files):
        if i % per_dir == 0:
            v += 1
            d_inode = v
            rows.append((d_inode, tree.lookup("many").inode, v, 0, 1, 4, f"d{i // per_dir}", None))  # type: ignore[union-attr]
        v += 1
        rows.append((v, d_inode, v, 0, 1, 8, f"f{i}.conf", b"k: v\n" * 20))
    rows.append((0, 0, v, 0, 1, 8, "__version__", None))
    db.commit(rows, ())
    db.close()


def mount_time_figures(tmp: Path, files: int) -> None:
    d = Pmxcfs(tmp / "large")
    make_db(d.db, files)
    size_mb = d.db.stat().st_size / 1e6
    t0 = time.perf_counter()
    d.start()
    secs = time.perf_counter() - t0
    try:
        con = sqlite3.connect(f"file:{d.db}?mode=ro", uri=True)
        rows = con.execute("SELECT count(*) FROM tree").fetchone()[0]
        con.close()
        print(f"mount with {rows - 1} entries ({size_mb:.1f} MB database): {secs:.2f} s")
        assert d.proc is not None
        print(f"daemon RSS with {rows - 1} entries: {rss_kib(d.proc.pid) / 1024:.1f} MiB")
    finally:
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--big-files", type=int, default=50000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmxcfs-bench-") as tmp:
        d = Pmxcfs(Path(tmp) / "small")
        d.start()
        try:
            small_file_figures(d, args.files)
            big_file_figures(d)
            assert d.proc is not None
            print(f"daemon RSS after the small-file run: {rss_kib(d.proc.pid) / 1024:.1f} MiB")
        finally:
            d.stop()
        mount_time_figures(Path(tmp), args.big_files)


if __name__ == "__main__":
    main()
