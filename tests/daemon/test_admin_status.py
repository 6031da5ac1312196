"""`pmxcfs-admin status|log|debug` against the real daemon in local mode: what it answers,
and how it fails when the daemon is gone, killed or stuck (one line, exit 4, never a hang)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.test_ipc_server import NetnsPmxcfs
from tests.daemon_harness import PYTHON, REPO
from tests.polling import wait_until

NOBODY = 65534


def admin(d: NetnsPmxcfs, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "pmxcfs.admin", *args, "--run-dir", str(d.run_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=timeout,
    )  # fmt: skip


def status(d: NetnsPmxcfs) -> dict[str, Any]:
    r = admin(d, "status", "--json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


@pytest.fixture
def node() -> Iterator[NetnsPmxcfs]:
    """A local-mode daemon whose directories every user may traverse (to test the socket's
    own mode), in its own network namespace (so IPC clients can add cluster log entries)."""
    base = Path(tempfile.mkdtemp(prefix="pmxcfs-status-"))
    base.chmod(0o711)
    d = NetnsPmxcfs(base, nodename="n1")
    try:
        d.start()
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            os.kill(d.proc.pid, signal.SIGCONT)  # a test may leave it stopped
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_local_mode_status(node: NetnsPmxcfs) -> None:
    (node.mount / "a.cfg").write_text("x\n")
    (node.mount / "nodes").mkdir()
    doc = status(node)
    assert doc["mode"] == "local"
    assert doc["nodename"] == "n1"
    assert doc["quorate"] is True
    assert node.proc is not None and doc["pid"] == node.proc.pid
    assert doc["members"] == [{"name": "n1", "nodeid": None, "online": True, "ip": "10.213.0.1"}]
    assert "groups" not in doc
    assert doc["problems"] == []
    db = doc["database"]
    with contextlib.closing(sqlite3.connect(f"file:{node.db}?mode=ro", uri=True)) as conn:
        version = conn.execute("SELECT version FROM tree WHERE inode = 0").fetchone()[0]
    assert db["version"] == db["last_commit"]["version"] == version
    assert db["entries"] == 2
    assert db["size"] > 0 and db["error"] is False
    assert db["path"] == str(node.db)
    assert doc["lost_found"] == {"path": str(node.db_dir / "lost+found"), "count": 0, "latest": []}
    assert doc["rrd"]["enabled"] is True and doc["rrd"]["queued"] == 0
    assert doc["rrd"]["rrdcached"] in ("untried", "unreachable")  # its socket does not exist
    assert doc["ipc"] == {"serving": True, "connections": 0}
    assert doc["kernel_cache"]["inodes"] >= 3  # root, a.cfg, nodes
    assert doc["debug"] is False

    sock = node.run_dir / "admin.sock"
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0

    text = admin(node, "status")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].startswith("node       n1 (local mode, pid ")
    assert "problems   none" in text.stdout
    assert "quorum" not in text.stdout  # local mode shows what applies

    (node.mount / "lost").mkdir()
    lf = node.db_dir / "lost+found"
    (lf / "20240101-000000-v5").mkdir(parents=True)
    (lf / "20240301-000000-v9").mkdir()
    assert status(node)["lost_found"]["latest"] == ["20240301-000000-v9", "20240101-000000-v5"]


def test_watch_refreshes(node: NetnsPmxcfs) -> None:
    r = admin(node, "status", "--watch", "--json", "-n", "3")
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(docs) == 3
    assert docs[0]["time"] < docs[1]["time"] < docs[2]["time"]
    assert "\x1b" not in r.stdout  # no screen control codes when not on a terminal


def test_debug_on_off(node: NetnsPmxcfs) -> None:
    assert admin(node, "debug").stdout == "debug off\n"
    assert admin(node, "debug", "on").stdout == "debug on\n"
    assert (node.mount / ".debug").read_text() == "1\n"
    assert status(node)["debug"] is True
    r = admin(node, "debug", "off", "--json")
    assert json.loads(r.stdout) == {"debug": False}
    assert (node.mount / ".debug").read_text() == "0\n"


def log_msg(node: NetnsPmxcfs, msg: str) -> None:
    """A cluster log entry through the pve2 IPC LOG_CLUSTER_MSG, as PVE tools make them."""
    payload = bytes([6, 9, 9]) + b"root@pam\0vzdump12\0" + msg.encode() + b"\0"
    assert node.call((7, payload)) == [(0, b"")]


def test_log_and_follow(node: NetnsPmxcfs) -> None:
    log_msg(node, "first entry")
    r = admin(node, "log")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert node.proc is not None
    assert lines[0].endswith(f"n1 cluster[{node.proc.pid}] root info: starting cluster log")
    assert lines[-1].endswith("root@pam info: first entry")
    assert " n1 vzdump12[" in lines[-1]
    entries = json.loads(admin(node, "log", "--json", "-n", "1").stdout)
    assert [e["msg"] for e in entries] == ["first entry"]
    assert entries[0]["user"] == "root@pam" and entries[0]["tag"] == "vzdump12"

    follow = subprocess.Popen(
        [PYTHON, "-m", "pmxcfs.admin", "log", "--follow", "-n", "1", "--json",
         "--run-dir", str(node.run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        assert json.loads(follow.stdout.readline())["msg"] == "first entry"
        log_msg(node, "second entry")
        log_msg(node, "third entry")
        assert json.loads(follow.stdout.readline())["msg"] == "second entry"
        assert json.loads(follow.stdout.readline())["msg"] == "third entry"
        node.stop()  # following a daemon that goes away ends with one line and exit 4
        assert follow.wait(60) == 4
        assert follow.stderr is not None
        assert follow.stderr.read().startswith("pmxcfs-admin: pmxcfs is not running")
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()


def test_stopped_killed_and_stuck_daemon(node: NetnsPmxcfs) -> None:
    assert node.proc is not None
    node.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = admin(node, "status", "--timeout", "2")
        took = time.monotonic() - t0
    finally:
        node.proc.send_signal(signal.SIGCONT)
    print(f"stuck daemon: status gave up after {took:.1f}s")
    assert r.returncode == 4
    assert r.stdout == ""
    sock = node.run_dir / "admin.sock"
    assert r.stderr == f"pmxcfs-admin: pmxcfs did not answer within 2 s on {sock} (stuck?)\n"
    wait_until("daemon answers again", lambda: admin(node, "status").returncode == 0)

    node.kill()  # SIGKILL: the socket file stays behind, nobody listens
    assert sock.exists()
    r = admin(node, "status")
    assert (r.returncode, r.stdout) == (4, "")
    assert r.stderr == f"pmxcfs-admin: pmxcfs is not running (nothing listens on {sock})\n"

    node.start()  # takes over the stale socket
    assert status(node)["mode"] == "local"
    node.stop()
    assert not sock.exists()
    r = admin(node, "status", "--json")
    assert (r.returncode, r.stdout) == (4, "")
    assert r.stderr == f"pmxcfs-admin: pmxcfs is not running (no admin socket {sock})\n"


CHILD = """
import os, sys
from pmxcfs.admin.cli import build_parser, main
build_parser().parse_args(sys.argv[1:])  # every lazy import while the stdlib is readable
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
sys.exit(main(sys.argv[1:]))
"""


def test_only_root_may_ask(node: NetnsPmxcfs) -> None:
    def as_nobody() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-c", CHILD, "status", "--run-dir", str(node.run_dir)],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip

    r = as_nobody()  # the file mode stops it
    sock = node.run_dir / "admin.sock"
    assert (r.returncode, r.stdout) == (4, "")
    assert r.stderr == f"pmxcfs-admin: permission denied on {sock} (only root may ask)\n"
    sock.chmod(0o666)  # past the file mode, the daemon checks the peer's credentials
    r = as_nobody()
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        "pmxcfs-admin: pmxcfs refused: permission denied: only root may use the pmxcfs admin "
        "socket\n"
    )
    assert "admin socket: refused connection of uid 65534" in node.log.read_text()
