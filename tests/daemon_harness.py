"""Run the real daemon on a real FUSE mount in a private directory, and always clean up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


def lazy_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


class Pmxcfs:
    """One daemon instance: its dirs, its process (by pid) and helpers to restart it."""

    def __init__(self, base: Path, nodename: str = "testnode") -> None:
        self.base = base
        self.mount = base / "mnt"
        self.db_dir = base / "db"
        self.run_dir = base / "run"
        self.pid_file = base / "run" / "pmxcfs.pid"
        self.corosync_conf = base / "corosync.conf"
        self.nodename = nodename
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "daemon.log"
        self.rrd_dir = base / "rrd"
        #: how the daemon gets its network namespace (a test may join another one instead)
        self.netns_prefix: list[str] = ["unshare", "--net", "--"]
        for d in (self.mount, self.db_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def db(self) -> Path:
        return self.db_dir / "config.db"

    def args(self, *extra: str, local: bool = True, foreground: bool = True) -> list[str]:
        # Alone in a fresh network namespace: the daemon's `pve2` IPC socket is abstract, and
        # this machine may run other pmxcfs daemons. unshare execs, so the pid is the daemon's.
        a = [*self.netns_prefix, PYTHON, "-m", "pmxcfs"]
        if foreground:
            a.append("-f")
        if local:
            a.append("-l")
        a += [
            "--mount",
            str(self.mount),
            "--db-dir",
            str(self.db_dir),
            "--run-dir",
            str(self.run_dir),
            "--pid-file",
            str(self.pid_file),
            "--corosync-conf",
            str(self.corosync_conf),
            "--nodename",
            self.nodename,
            "--node-ip",
            "10.213.0.1",
            # RRD files in our own directory, never the host's rrdcached (this one is absent)
            "--rrd-dir",
            str(self.rrd_dir),
            "--rrdcached-socket",
            str(self.base / "rrdcached.sock"),
        ]
        return a + list(extra)

    def start(self, *extra: str, local: bool = True, timeout: float = 20) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                self.args(*extra, local=local), cwd=REPO, stdout=logf, stderr=logf
            )
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mount):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not mount in time: " + self.log.read_text())
            time.sleep(0.02)
        # the mount is visible before the daemon answers; wait until it does
        while True:
            try:
                os.stat(self.mount / ".version")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.proc = None
        lazy_unmount(self.mount)
        return p.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, *extra: str, local: bool = True) -> None:
        assert self.stop() == 0
        self.start(*extra, local=local)

    def path(self, rel: str) -> Path:
        return self.mount / rel

    @contextlib.contextmanager
    def running(self) -> Iterator[Pmxcfs]:
        """Started for the block, stopped (and unmounted) after it, even on failure."""
        try:
            self.start()
            yield self
        finally:
            self.stop()


@pytest.fixture
def pmxcfs(tmp_path: Path) -> Iterator[Pmxcfs]:
    """A fresh local-mode daemon on a fresh database."""
    with Pmxcfs(tmp_path).running() as d:
        yield d


@pytest.fixture
def make_pmxcfs(tmp_path: Path) -> Iterator[type[Pmxcfs]]:
    """Factory for tests that set up the database or options themselves."""
    made: list[Pmxcfs] = []

    def factory(name: str = "node", nodename: str = "testnode") -> Pmxcfs:
        d = Pmxcfs(tmp_path / name, nodename)
        made.append(d)
        return d

    try:
        yield factory  # type: ignore[misc]
    finally:
        for d in made:
            d.stop()
