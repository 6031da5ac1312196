"""The daemon as a process: options, startup errors, persistence, crashes, shutdown (spec §9)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.daemon_harness import PYTHON, REPO, Pmxcfs, is_mounted
from tests.unit.test_storage import BAD_DATABASES, FIXTURE, MANIFEST, make_bad


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "pmxcfs", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_help_and_bad_options() -> None:
    assert run_cli("--help").returncode == 0
    bad = run_cli("--no-such-option")
    assert bad.returncode == 1 and "option parsing failed" in bad.stderr
    extra = run_cli("-f", "positional")
    assert extra.returncode == 255 and "too many arguments" in extra.stderr


def test_persistence_across_restart(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs()
    d.start()
    (d.mount / "dir").mkdir()
    (d.mount / "dir" / "f.cfg").write_bytes(b"persist me")
    os.utime(d.mount / "dir" / "f.cfg", (1700000000, 1700000000))
    d.restart()
    assert (d.mount / "dir" / "f.cfg").read_bytes() == b"persist me"
    assert (d.mount / "dir" / "f.cfg").stat().st_mtime == 1700000000
    assert d.stop() == 0
    assert not is_mounted(d.mount)
    # the restart flag marks a clean shutdown and the pid file is gone
    flag = (d.run_dir / "cfs-restart-flag").stat()
    assert (flag.st_mode & 0o777, flag.st_uid, flag.st_gid) == (0o440, 0, 33)
    assert not d.pid_file.exists()
    # the restart flag is removed once the next instance is up
    d.start()
    assert not (d.run_dir / "cfs-restart-flag").exists()


def test_sigkill_loses_no_acknowledged_write(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs()
    d.start()
    expected = {}
    for i in range(200):
        data = f"config {i}\n".encode() * (i % 7 + 1)
        (d.mount / f"f{i}.cfg").write_bytes(data)
        expected[f"f{i}.cfg"] = data
    d.kill()
    assert d.proc is None
    d.start()
    for name, data in expected.items():
        assert (d.mount / name).read_bytes() == data


def test_fixture_database_through_fuse(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs(nodename="pve1")
    shutil.copy(FIXTURE, d.db)
    d.start()
    for item in json.loads(MANIFEST.read_text()):
        p = d.mount / item["path"]
        st = os.lstat(p)
        assert stat_mode_string(st.st_mode) == item["mode"], item["path"]
        assert int(st.st_mtime) == item["mtime"], item["path"]
        if item["type"] == "file":
            data = p.read_bytes()
            assert len(data) == item["size"] == st.st_size
            assert hashlib.sha256(data).hexdigest() == item["sha256"]
    vmlist = json.loads((d.mount / ".vmlist").read_text())
    assert len(vmlist["ids"]) == 40


def stat_mode_string(mode: int) -> str:
    import stat

    return stat.filemode(mode)


@pytest.mark.parametrize("kind", sorted(BAD_DATABASES))
def test_bad_database_exits_255_and_is_untouched(make_pmxcfs, kind: str) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs()
    make_bad(d.db, kind)
    before = (hashlib.sha256(d.db.read_bytes()).hexdigest(), d.db.stat().st_mode)
    out = subprocess.run(d.args(), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 255
    assert "memdb_open failed" in out.stderr
    assert (hashlib.sha256(d.db.read_bytes()).hexdigest(), d.db.stat().st_mode) == before
    assert not is_mounted(d.mount)


def test_nonempty_mountpoint_refused(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs()
    (d.mount / "stray").write_text("x")
    out = subprocess.run(d.args(), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 255 and "fuse_mount error: File exists" in out.stderr


def test_instance_lock_busy(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs()
    fd = os.open(d.db_dir / ".pmxcfs.lockfile", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        t0 = time.monotonic()
        out = subprocess.run(d.args(), cwd=REPO, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
    finally:
        os.close(fd)
    assert out.returncode == 255
    assert "unable to acquire pmxcfs lock - trying again" in out.stderr
    assert "unable to acquire pmxcfs lock:" in out.stderr
    assert took >= 9


def test_daemonizes_and_parent_exits_after_mount(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs()
    out = subprocess.run(d.args(foreground=False), cwd=REPO, capture_output=True, timeout=30)
    try:
        assert out.returncode == 0
        assert is_mounted(d.mount)  # the parent exits only once the mount is ready
        pid = int(d.pid_file.read_text())
        assert d.pid_file.read_text() == f"{pid}\n"
        assert os.getsid(pid) == pid
        assert not (d.run_dir / "cfs-restart-flag").exists()
        (d.mount / "x").write_text("y")
    finally:
        pid = int(d.pid_file.read_text())
        os.kill(pid, signal.SIGHUP)  # SIGHUP ends the daemon cleanly, like SIGTERM
        deadline = time.monotonic() + 15
        while is_mounted(d.mount) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not is_mounted(d.mount)
    deadline = time.monotonic() + 5
    while d.pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not d.pid_file.exists()


def test_fresh_database_imports_corosync_conf(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs()
    d.corosync_conf.write_text("totem {\n  config_version: 3\n}\n")
    out = subprocess.run([*d.args(local=False), "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    d.start(local=False)  # cluster mode without a reachable corosync: read-only
    assert (d.mount / "corosync.conf").read_text() == d.corosync_conf.read_text()
    con = sqlite3.connect(f"file:{d.db}?mode=ro", uri=True)
    row = con.execute("SELECT inode, version FROM tree WHERE name='corosync.conf'").fetchone()
    con.close()
    assert row == (2, 3)
    assert os.lstat(d.mount / "local").st_mode & 0o200 == 0  # not quorate
    with pytest.raises(PermissionError):
        (d.mount / "new.cfg").write_text("x")


def test_local_flag_ignores_corosync_conf(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    d: Pmxcfs = make_pmxcfs()
    d.corosync_conf.write_text("totem {}\n")
    d.start()  # -l: nothing imported into the fresh database, writable
    assert not (d.mount / "corosync.conf").exists()
    (d.mount / "ok.cfg").write_text("x")
    assert os.lstat(d.mount / "local").st_mode & 0o200


def test_version_counters_count_the_load_and_each_change(pmxcfs: Pmxcfs) -> None:
    doc = json.loads((pmxcfs.mount / ".version").read_text())
    assert doc["storage.cfg"] == doc["user.cfg"] == 1  # the load counts once
    (pmxcfs.mount / "storage.cfg").write_text("dir: local\n")  # create + write
    (pmxcfs.mount / "nodes").mkdir()  # mkdir counts nothing
    doc = json.loads((pmxcfs.mount / ".version").read_text())
    assert doc["storage.cfg"] == 3 and doc["user.cfg"] == 1


def test_repeated_signals_during_shutdown_still_end_cleanly(make_pmxcfs) -> None:  # type: ignore[no-untyped-def]
    """A second SIGTERM (systemd, a harness stopping everything) while the first is being
    handled must not kill the daemon before it unmounts and writes its final state."""
    d: Pmxcfs = make_pmxcfs()
    d.start()
    (d.mount / "x").write_text("y")
    assert d.proc is not None
    p = d.proc
    for _ in range(5):
        p.send_signal(signal.SIGTERM)
        time.sleep(0.002)
    assert p.wait(15) == 0
    d.proc = None
    assert not is_mounted(d.mount)
    assert (d.run_dir / "cfs-restart-flag").exists()
