"""pmxcfs-admin against a database that the real, mounted daemon holds."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from tests.daemon_harness import PYTHON, REPO, Pmxcfs


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "pmxcfs.admin", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_backup_during_write_burst_is_a_point_in_time(pmxcfs: Pmxcfs, tmp_path: Path) -> None:
    stop = threading.Event()
    written: list[int] = []

    def burst() -> None:
        i = 0
        while not stop.is_set() and i < 3000:
            (pmxcfs.mount / f"burst{i}.cfg").write_text(f"{i}\n")
            written.append(i)
            i += 1

    t = threading.Thread(target=burst)
    t.start()
    try:
        while len(written) < 50:
            time.sleep(0.01)
        backups = []
        for n in range(3):
            out = tmp_path / f"backup{n}.db"
            r = admin("backup", str(pmxcfs.db), str(out))
            assert r.returncode == 0, r.stderr
            backups.append(out)
    finally:
        stop.set()
        t.join()
    for b in backups:
        assert admin("check", str(b)).returncode == 0
        con = sqlite3.connect(b)
        names = {r[0] for r in con.execute("SELECT name FROM tree WHERE name LIKE 'burst%'")}
        version = con.execute("SELECT version FROM tree WHERE inode=0").fetchone()[0]
        con.close()
        ids = sorted(int(n[5:-4]) for n in names)
        # the files written one after another: a point in time holds a prefix of them
        assert ids == list(range(len(ids))), ids[:10]
        assert version >= 2 * len(ids)


def test_writing_subcommands_refuse_a_running_daemon(pmxcfs: Pmxcfs, tmp_path: Path) -> None:
    (pmxcfs.mount / "keep.cfg").write_text("keep\n")
    backup = tmp_path / "b.db"
    assert admin("backup", str(pmxcfs.db), str(backup)).returncode == 0
    src = tmp_path / "tree"
    src.mkdir()
    (src / "x.cfg").write_text("x")
    before = pmxcfs.db.read_bytes()
    for args in (
        ("import", "--force", str(src), str(pmxcfs.db)),
        ("restore", str(backup), str(pmxcfs.db)),
        ("repair", "--yes", str(pmxcfs.db)),
    ):
        r = admin(*args)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
    assert pmxcfs.db.read_bytes() == before
    assert (pmxcfs.mount / "keep.cfg").read_text() == "keep\n"
    # reading is always allowed
    assert admin("cat", str(pmxcfs.db), "keep.cfg").stdout == "keep\n"
