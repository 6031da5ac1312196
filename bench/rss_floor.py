"""RSS floor: what a Python process needs before our daemon holds anything of its own.

    .venv/bin/python bench/rss_floor.py [--daemon] [--files 500]

Each step is a fresh interpreter (this venv's) that imports one more module the daemon cannot
run without, then waits; its RSS is read from /proc/PID/status (anonymous memory and mapped
files apart).  Then the trivial pyfuse3-on-trio filesystem of bench/floors.py, mounted in a
private mount namespace, after a few hundred requests; then the same with the other imports
too: the floor our daemon stands on.  `--daemon` adds ours in local mode (private mount and
network namespaces, its RRD writer on a scratch directory) with a tree of FILES small files,
the workload of `compare.py --local` before its RSS line, and its largest mappings.

Figures only, nothing asserted.  Run as root (FUSE mounts).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

#: (label, import statement) applied cumulatively
STEPS: list[tuple[str, str]] = [
    ("python3 (with site)", ""),
    ("+ trio", "import trio"),
    ("+ pyfuse3", "import pyfuse3"),
    ("+ apsw", "import apsw"),
    ("+ cpg._corosync (cffi)", "import cpg._corosync"),
    ("+ msgpack", "import msgpack"),
]

WAIT = "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n"


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem and thread count of *pid* (KiB)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
            out[key] = int(val.split()[0])
    return out


def measure_imports(code: str, *, no_site: bool = False) -> dict[str, int]:
    argv = [sys.executable, *(["-S"] if no_site else []), "-c", code + "\n" + WAIT]
    p = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"step failed: {code!r}")
        return status_kib(p.pid)
    finally:
        if p.stdin is not None:
            p.stdin.close()
        p.wait(10)


def _wait_mounted(pid: int, mnt: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            mounts = Path(f"/proc/{pid}/mounts").read_text()
        except OSError as exc:
            raise RuntimeError(f"process {pid} exited") from exc
        if any(ln.split()[1] == mnt for ln in mounts.splitlines()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{mnt} not mounted in process {pid}")


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def serve_floor_fs(mnt: str, full: bool) -> None:
    """The trivial filesystem of bench/floors.py (one 4 KiB file), importing nothing else:
    floors.py itself imports the bench harness, which would count here.  *full* also
    imports the rest of the floor (apsw, the corosync bindings, msgpack)."""
    import errno

    if full:
        import apsw  # noqa: F401
        import cpg._corosync  # noqa: F401
        import msgpack  # noqa: F401

    import pyfuse3
    import trio

    content = b"x" * 4096

    class FloorFs(pyfuse3.Operations):
        def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            a.st_mode, a.st_nlink = (0o040755, 2) if ino == pyfuse3.ROOT_INODE else (0o100644, 1)
            a.st_size = 0 if ino == pyfuse3.ROOT_INODE else len(content)
            a.attr_timeout = a.entry_timeout = 0
            return a

        async def lookup(
            self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.EntryAttributes:
            if parent_inode != pyfuse3.ROOT_INODE or name != b"file":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(2)

        async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            return self._attr(inode)

        async def open(
            self, inode: int, flags: int, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.FileInfo:
            return pyfuse3.FileInfo(fh=1, direct_io=True)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            return content[off : off + size]

    pyfuse3.init(FloorFs(), mnt, {"default_permissions", "fsname=rss_floor"})

    async def main() -> None:
        async with trio.open_nursery() as n:

            async def fuse() -> None:
                await pyfuse3.main()
                n.cancel_scope.cancel()

            n.start_soon(fuse)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                print("ready", flush=True)
                async for _ in sigs:
                    n.cancel_scope.cancel()
                    return

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)


def measure_floor_fs(full: bool, requests: int = 500) -> dict[str, int]:
    """The trivial filesystem, mounted in its own mount namespace, after *requests*
    stat+read calls through /proc/PID/root (its view of the mounts)."""
    tmp = tempfile.mkdtemp(prefix="rss-floor-")
    mnt = os.path.join(tmp, "mnt")
    os.mkdir(mnt)
    argv = ["unshare", "-m", "--propagation", "private", "--",
            sys.executable, str(Path(__file__).resolve()), "--serve", mnt]  # fmt: skip
    if full:
        argv.append("full")
    p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        if p.stdout.readline().strip() != b"ready":
            raise RuntimeError("the pyfuse3 floor filesystem did not start")
        _wait_mounted(p.pid, mnt)
        path = f"/proc/{p.pid}/root{mnt}/file"
        for _ in range(requests):
            os.stat(path)
            with open(path, "rb") as f:
                f.read()
        return status_kib(p.pid)
    finally:
        _stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def largest_mappings(pid: int, n: int = 12) -> list[tuple[int, int, str]]:
    """(Rss KiB, Anonymous KiB, name) of the *n* largest mappings by RSS, merged by name."""
    by_name: dict[str, list[int]] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if not head:
            continue
        if "-" in head[0] and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else "[anon]"
            by_name.setdefault(name, [0, 0])
        elif head[0] == "Rss:":
            by_name[name][0] += int(head[1])
        elif head[0] == "Anonymous:":
            by_name[name][1] += int(head[1])
    rows = sorted(((r, a, k) for k, (r, a) in by_name.items()), reverse=True)
    return rows[:n]


def measure_daemon(files: int) -> tuple[dict[str, int], list[tuple[int, int, str]]]:
    """Ours, local mode, private paths, after compare.py's local workload shape."""
    tmp = tempfile.mkdtemp(prefix="rss-daemon-")
    mnt, db, run = (os.path.join(tmp, d) for d in ("mnt", "db", "run"))
    for d in (mnt, db, run):
        os.mkdir(d)
    argv = ["unshare", "-m", "-n", "--propagation", "private", "--",
            sys.executable, "-m", "pmxcfs", "-f", "-l", "--mount", mnt, "--db-dir", db,
            "--run-dir", run, "--pid-file", os.path.join(run, "pid"), "--nodename", "node1",
            "--node-ip", "10.0.0.1", "--rrd-dir", os.path.join(tmp, "rrd"),
            "--rrdcached-socket", ""]  # fmt: skip
    p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_mounted(p.pid, mnt, 60)
        base = f"/proc/{p.pid}/root{mnt}/bench"
        deadline = time.monotonic() + 30
        while True:
            try:
                os.mkdir(base)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        names = [os.path.join(base, f"f{i}.cfg") for i in range(files)]
        for tag in ("c", "o"):
            for i, name in enumerate(names):
                with open(name, "wb") as f:
                    f.write(f"{tag}:{i}:".encode().ljust(499, b"x") + b"\n")
        for _ in range(5):
            for name in names:
                with open(name, "rb") as f:
                    f.read()
        for _ in range(20):
            for name in names:
                os.stat(name)
        for _ in range(200):
            os.listdir(base)
        return status_kib(p.pid), largest_mappings(p.pid)
    finally:
        _stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def _mib(kib: int) -> str:
    return f"{kib / 1024:6.1f}"


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve_floor_fs(sys.argv[2], full=sys.argv[3:] == ["full"])
        return
    import argparse  # not in the served floor: it counts what it imports

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--daemon", action="store_true", help="also measure ours with a small tree")
    ap.add_argument("--files", type=int, default=500)
    args = ap.parse_args()

    print(f"{'step':36} {'RSS MiB':>8} {'anon':>6} {'file':>6} {'delta':>6}  threads")
    rows = [("python3 -S (no site)", measure_imports("", no_site=True))]
    code = ""
    for label, stmt in STEPS:
        code += stmt + "\n"
        rows.append((label, measure_imports(code)))
    rows.append(("trivial pyfuse3 fs on trio, mounted", measure_floor_fs(False)))
    rows.append(("  + apsw, cpg._corosync, msgpack", measure_floor_fs(True)))
    if args.daemon:
        st, maps = measure_daemon(args.files)
        rows.append((f"ours, local, {args.files} files", st))
    prev = 0
    for label, s in rows:
        delta = "" if not prev else f"{(s['VmRSS'] - prev) / 1024:+6.1f}"
        print(f"{label:36} {_mib(s['VmRSS']):>8} {_mib(s['RssAnon']):>6} "
              f"{_mib(s['RssFile']):>6} {delta:>6}  {s['Threads']}")  # fmt: skip
        prev = s["VmRSS"]
    if args.daemon:
        print("\nours: largest mappings (RSS KiB, anonymous KiB)")
        for rss, anon, name in maps:
            print(f"  {rss:7} {anon:7}  {name}")


if __name__ == "__main__":
    main()
