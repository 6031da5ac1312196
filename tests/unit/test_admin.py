"""pmxcfs-admin against real SQLite files: round trip, check/repair, backup/restore, locking."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pmxcfs.storage import Database, DatabaseError
from tests.shared import FIXTURES

REPO = Path(__file__).resolve().parents[2]
FIXTURE = FIXTURES / "config.db"
MANIFEST = json.loads((FIXTURES / "config.db.manifest.json").read_text())
MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(not FIXTURE.exists(), reason="fixture database missing")


def admin(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pmxcfs.admin", *map(str, args)],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    return sha(path.read_bytes())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A writable copy of the reference fixture."""
    target = tmp_path / "config.db"
    shutil.copyfile(FIXTURE, target)
    target.chmod(0o600)
    return target


def rows_of(path: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(path)
    con.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        return con.execute("SELECT * FROM tree ORDER BY inode").fetchall()
    finally:
        con.close()


def sql(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    try:
        for s in statements:
            con.execute(s)
        con.commit()
    finally:
        con.close()


def tree_view(path: Path) -> dict[str, dict[str, Any]]:
    """path -> type/size/sha256/mtime, computed from raw rows independently of pmxcfs code."""
    rows = {r[0]: r for r in rows_of(path)}

    def full(inode: int) -> str:
        parts = []
        while inode != 0:
            r = rows[inode]
            parts.append(r[6])
            inode = r[1]
        return "/".join(reversed(parts))

    out = {}
    for inode, r in rows.items():
        if inode == 0:
            continue
        data = r[7] or b""
        item: dict[str, Any] = {"type": "dir" if r[5] == 4 else "file", "mtime": r[4]}
        if r[5] == 8:
            item.update(size=len(data), sha256=sha(data))
        out[full(inode)] = item
    return out


def manifest_view() -> dict[str, dict[str, Any]]:
    keys = ("type", "mtime", "size", "sha256")
    return {m["path"]: {k: m[k] for k in keys if k in m} for m in MANIFEST}


def blobs(path: Path) -> Counter[bytes]:
    return Counter(r[7] for r in rows_of(path) if r[7])


# ---------------------------------------------------------------------------------- basics


@pytest.mark.parametrize(
    "cmd", ["check", "ls", "cat", "export", "import", "backup", "restore", "repair", "diff"]
)
def test_every_subcommand_has_help(cmd: str) -> None:
    res = admin(cmd, "--help")
    assert res.returncode == 0
    assert res.stdout.startswith(f"usage: pmxcfs-admin {cmd}")
    assert "exit codes" in res.stdout


def test_usage_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    assert admin().returncode == 2
    res = admin("check", tmp_path / "missing.db")
    assert res.returncode == 2
    assert res.stderr.strip() == f"pmxcfs-admin: {tmp_path / 'missing.db'}: no such file"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    res = admin("ls", garbage)
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr


def test_readonly_commands_leave_fixture_untouched(tmp_path: Path) -> None:
    before = file_sha(FIXTURE)
    assert admin("check", FIXTURE).returncode == 0
    assert admin("ls", "-lR", FIXTURE).returncode == 0
    assert admin("export", FIXTURE, tmp_path / "out").returncode == 0
    assert admin("diff", FIXTURE, FIXTURE).returncode == 0
    assert file_sha(FIXTURE) == before


def test_readonly_commands_do_not_change_a_wal_database(db: Path) -> None:
    Database.open(str(db))[0].close()  # now in WAL mode, as the daemon leaves it
    before = file_sha(db)
    for args in (("check", db), ("ls", "-R", db), ("diff", db, db), ("cat", db, "user.cfg")):
        assert admin(*args).returncode == 0
    assert file_sha(db) == before


def test_ls_shows_the_manifest() -> None:
    res = admin("ls", "-R", "--json", FIXTURE)
    assert res.returncode == 0
    listed = {i["path"]: i for i in json.loads(res.stdout)}
    assert set(listed) == {m["path"] for m in MANIFEST}
    for m in MANIFEST:
        got = listed[m["path"]]
        assert (got["type"], got["mode"], got["mtime"]) == (m["type"], m["mode"], m["mtime"])
        assert got["size"] == m.get("size", 0)
    long = admin("ls", "-l", FIXTURE, "nodes/n1").stdout.splitlines()
    assert [line.split()[-1] for line in long] == sorted(
        ["lxc", "openvz", "priv", "pve-ssl.key", "pve-ssl.pem", "qemu-server"]
    )
    assert long[3].startswith("-rw-r-----       69 v48")


def test_cat_prints_exact_bytes() -> None:
    for m in MANIFEST:
        if m["path"] in ("storage.cfg", "priv/authkey.key", "nodes/n1/qemu-server/101.conf"):
            res = subprocess.run(
                [sys.executable, "-m", "pmxcfs.admin", "cat", str(FIXTURE), m["path"]],
                cwd=REPO,
                capture_output=True,
            )
            assert res.returncode == 0
            assert sha(res.stdout) == m["sha256"]
    assert admin("cat", FIXTURE, "nodes").returncode == 1
    assert admin("cat", FIXTURE, "nope").returncode == 1


# ---------------------------------------------------------------------------------- export/import


def test_round_trip_matches_manifest(tmp_path: Path) -> None:
    out = tmp_path / "export"
    res = admin("export", FIXTURE, out)
    assert res.returncode == 0, res.stderr
    on_disk = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        item: dict[str, Any] = {
            "type": "dir" if p.is_dir() else "file",
            "mtime": int(p.stat().st_mtime),
        }
        if p.is_file():
            item.update(size=p.stat().st_size, sha256=file_sha(p))
        on_disk[rel] = item
    assert on_disk == manifest_view()

    new = tmp_path / "db" / "config.db"
    new.parent.mkdir()
    res = admin("import", out, new)
    assert res.returncode == 0, res.stderr
    assert tree_view(new) == manifest_view()
    assert admin("check", new).returncode == 0
    # Written through Tree + Database: the daemon's version/inode rules hold.
    rows = rows_of(new)
    version = rows[0][2]
    assert rows[0][6] == "__version__"
    assert version >= max(max(r[0], r[2]) for r in rows)
    db, _tree = Database.open(str(new))
    db.close()
    assert oct(new.stat().st_mode & 0o777) == "0o600"
    assert not Path(str(new) + "-wal").exists()


def test_import_refuses_existing_db_unless_forced(db: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.cfg").write_bytes(b"hello\n")
    before = file_sha(db)
    res = admin("import", src, db)
    assert res.returncode == 1 and "--force" in res.stderr
    assert file_sha(db) == before
    res = admin("import", "--force", src, db)
    assert res.returncode == 0, res.stderr
    assert set(tree_view(db)) == {"sub", "sub/a.cfg"}
    kept = [p for p in db.parent.iterdir() if p.name.startswith("config.db.bak-")]
    assert len(kept) == 1 and file_sha(kept[0]) == before


def test_import_refuses_big_files_and_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"x" * MiB)  # exactly 1 MiB is allowed
    (src / "big").write_bytes(b"x" * (MiB + 1))
    target = tmp_path / "new.db"
    res = admin("import", src, target)
    assert res.returncode == 1
    assert "big: 1048577 bytes, more than the pmxcfs limit" in res.stderr
    assert not target.exists()
    (src / "big").unlink()
    (src / "link").symlink_to("ok")
    res = admin("import", src, target)
    assert res.returncode == 1 and "symlink" in res.stderr
    (src / "link").unlink()
    assert admin("import", src, target).returncode == 0
    assert tree_view(target)["ok"]["size"] == MiB


def test_import_skips_git_and_export_force_mirrors(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    assert admin("export", FIXTURE, out).returncode == 0
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref\n")
    (out / "stale.cfg").write_text("old\n")
    assert admin("export", FIXTURE, out).returncode == 1  # not empty
    assert admin("export", "--force", FIXTURE, out).returncode == 0
    assert not (out / "stale.cfg").exists()
    assert (out / ".git" / "HEAD").exists()
    new = tmp_path / "new.db"
    assert admin("import", out, new).returncode == 0
    assert tree_view(new) == manifest_view()


def test_import_reports_duplicate_vmids(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for node in ("a", "b"):
        d = src / "nodes" / node / "qemu-server"
        d.mkdir(parents=True)
        (d / "100.conf").write_text("memory: 512\n")
    res = admin("import", src, tmp_path / "new.db")
    assert res.returncode == 1
    assert "nodes/b/qemu-server/100.conf" in res.stderr and "VMID 100" in res.stderr
    assert not (tmp_path / "new.db").exists()


# ---------------------------------------------------------------------------------- check/repair

V1000 = "UPDATE tree SET version = 1000 WHERE inode = 0"  # keep new inodes below the version
CORRUPTIONS: dict[str, tuple[list[str], str, int | None, bool, bool]] = {
    # name: (statements, kind, inode, daemon refuses to load, repair fixes it)
    "orphan": (["UPDATE tree SET parent = 9999 WHERE inode = 51"], "orphan", 51, True, True),
    "cycle": (
        [
            V1000,
            "INSERT INTO tree VALUES (500, 501, 500, 0, 1, 4, 'cyc-a', NULL)",
            "INSERT INTO tree VALUES (501, 500, 501, 0, 1, 4, 'cyc-b', NULL)",
            "INSERT INTO tree VALUES (502, 500, 502, 0, 1, 8, 'inner', x'c0ffee')",
        ],
        "cycle",
        500,
        True,
        True,
    ),
    "parent-not-dir": (
        ["UPDATE tree SET parent = 2 WHERE inode = 135"],
        "parent-not-dir",
        135,
        True,
        True,
    ),
    "duplicate-name": (
        [V1000, "INSERT INTO tree VALUES (600, 21, 600, 0, 1, 8, 'resources.cfg', x'00ff')"],
        "duplicate-name",
        600,
        True,
        True,
    ),
    "duplicate-vmid": (
        [
            V1000,
            "INSERT INTO tree VALUES (601, 22, 601, 0, 1, 4, 'n2', NULL)",
            "INSERT INTO tree VALUES (602, 601, 602, 0, 1, 4, 'qemu-server', NULL)",
            "INSERT INTO tree VALUES (603, 602, 603, 0, 1, 8, '101.conf', x'6e6577')",
        ],
        "duplicate-vmid",
        55,  # the older copy loses
        True,
        True,
    ),
    "vm-dir-not-dir": (
        [
            V1000,
            "INSERT INTO tree VALUES (604, 22, 604, 0, 1, 4, 'n3', NULL)",
            "INSERT INTO tree VALUES (605, 604, 605, 0, 1, 8, 'lxc', x'41')",
        ],
        "vm-dir-not-dir",
        605,
        True,
        True,
    ),
    "empty-name": (["UPDATE tree SET name = '' WHERE inode = 4"], "bad-name", 4, True, True),
    "slash-name": (["UPDATE tree SET name = 'a/b' WHERE inode = 4"], "bad-name", 4, True, True),
    "dot-name": (["UPDATE tree SET name = '.' WHERE inode = 4"], "bad-name", 4, True, True),
    "dotdot-name": (["UPDATE tree SET name = '..' WHERE inode = 20"], "bad-name", 20, True, True),
    "non-utf8-name": (
        ["UPDATE tree SET name = CAST(x'ff41' AS TEXT) WHERE inode = 4"],
        "bad-name",
        4,
        True,
        True,
    ),
    "dir-data": (["UPDATE tree SET data = x'414243' WHERE inode = 21"], "dir-data", 21, True, True),
    "version-missing": (["DELETE FROM tree WHERE inode = 0"], "version-missing", 0, False, True),
    "version-low": (
        ["UPDATE tree SET version = 50 WHERE inode = 0"],
        "version-low",
        0,
        False,
        True,
    ),
    "bad-version-row": (
        ["UPDATE tree SET name = 'root' WHERE inode = 0"],
        "bad-version-row",
        0,
        True,
        True,
    ),
    "oversize": (
        [f"UPDATE tree SET data = zeroblob({MiB + 1}) WHERE inode = 2"],
        "oversize",
        2,
        False,
        False,
    ),
    "bad-type": (["UPDATE tree SET type = 5 WHERE inode = 4"], "bad-type", 4, True, False),
    "schema": (["CREATE INDEX extra ON tree (parent)"], "schema", None, False, False),
}


def check_json(path: Path) -> tuple[int, dict[str, Any]]:
    res = admin("check", "--json", path)
    return res.returncode, json.loads(res.stdout)


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_check_finds_and_repair_fixes(case: str, db: Path, tmp_path: Path) -> None:
    statements, kind, inode, refused, fixable = CORRUPTIONS[case]
    sql(db, *statements)
    rc, report = check_json(db)
    assert rc == 1
    assert {(p["kind"], p["inode"]) for p in report["problems"]} == {(kind, inode)}
    assert all(p["fixable"] == fixable for p in report["problems"])
    text = admin("check", db)
    assert text.returncode == 1 and text.stdout.startswith(f"{kind}: ")

    # The checker agrees with what the daemon's loader does with this database.
    probe = tmp_path / "probe.db"
    shutil.copyfile(db, probe)
    if refused:
        with pytest.raises((DatabaseError, UnicodeDecodeError)):
            Database.open(str(probe))
    else:
        Database.open(str(probe))[0].close()

    before_bytes = db.read_bytes()
    before_rows = rows_of(db)
    before_blobs = blobs(db)
    res = admin("repair", "--yes", db)
    if not fixable:
        assert res.returncode == 1
        assert "cannot fix " + kind in res.stdout
        assert db.read_bytes() == before_bytes
        return
    assert res.returncode == 0, res.stdout + res.stderr
    rc, after = check_json(db)
    assert (rc, after["problems"]) == (0, [])
    assert not before_blobs - blobs(db)  # no bytes lost
    assert len(rows_of(db)) >= len(before_rows)
    kept = [p for p in db.parent.iterdir() if p.name.startswith("config.db.bak-")]
    assert len(kept) == 1 and rows_of(kept[0]) == before_rows
    Database.open(str(db))[0].close()


def test_repair_places_entries_as_announced(db: Path) -> None:
    sql(db, *CORRUPTIONS["orphan"][0], *CORRUPTIONS["duplicate-vmid"][0][1:])
    sql(db, *CORRUPTIONS["dir-data"][0])
    res = admin("repair", "--yes", db)
    assert res.returncode == 0, res.stdout + res.stderr
    view = tree_view(db)
    assert view["lost+found"]["type"] == "dir"
    assert (
        view["lost+found/resources.cfg"]["sha256"] == manifest_view()["ha/resources.cfg"]["sha256"]
    )
    assert view["lost+found/ha.data-21"]["sha256"] == sha(b"ABC")
    assert "nodes/n1/qemu-server/101.conf" not in view
    assert view["nodes/n1/qemu-server/101.conf.dup-55"]["size"] == 354
    assert view["nodes/n2/qemu-server/101.conf"]["sha256"] == sha(b"new")
    rows = rows_of(db)
    assert rows[0][2] >= max(max(r[0], r[2]) for r in rows)


def test_check_reports_all_problems_at_once(db: Path) -> None:
    for case in ("orphan", "dir-data", "empty-name", "version-low", "oversize"):
        sql(db, *CORRUPTIONS[case][0])
    rc, report = check_json(db)
    assert rc == 1
    kinds = sorted(p["kind"] for p in report["problems"])
    assert kinds == ["bad-name", "dir-data", "orphan", "oversize", "version-low"]
    res = admin("repair", "--yes", db)
    assert res.returncode == 1  # the oversize file has no safe fix and stays
    rc, report = check_json(db)
    assert [p["kind"] for p in report["problems"]] == ["oversize"]
    assert blobs(db)[bytes(MiB + 1)] == 1


def test_repair_asks_first(db: Path) -> None:
    sql(db, *CORRUPTIONS["orphan"][0])
    before = db.read_bytes()
    res = admin("repair", db, stdin="n\n")
    assert res.returncode == 1 and "apply 2 changes (orphan, version)? [y/N]" in res.stderr
    assert "fix orphan: " in res.stdout
    assert db.read_bytes() == before
    assert admin("repair", "--dry-run", "--yes", db).returncode == 1
    assert db.read_bytes() == before
    res = admin("repair", db, stdin="y\n")
    assert res.returncode == 0
    assert admin("check", db).returncode == 0
    assert admin("repair", db).stdout.endswith("nothing to repair\n")


# ---------------------------------------------------------------------------------- backup/restore


def test_backup_during_write_burst(db: Path, tmp_path: Path) -> None:
    """Each backup equals the database at one version, while a writer keeps committing."""
    database, tree = Database.open(str(db))
    start = tree.version
    log: list[tuple[int, str, str]] = []  # (version after the commit, path, sha256 of content)
    stop = threading.Event()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                name = f"burst{i % 7}"
                if tree.lookup(name) is None:
                    tree.create(name, 0, i)
                    log.append((tree.version, name, sha(b"")))
                data = os.urandom(1000 + (i * 7919) % 60000)
                tree.write(name, 0, data, 0, i, truncate=True)
                log.append((tree.version, name, sha(data)))
                i += 1
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(log) < 50:
            threading.Event().wait(0.01)
        copies = []
        for k in range(3):
            out = tmp_path / f"backup{k}.db"
            res = admin("backup", db, out)
            assert res.returncode == 0, res.stderr
            copies.append(out)
    finally:
        stop.set()
        thread.join()
        database.close()
    assert not failure
    end = log[-1][0]
    versions = []
    for out in copies:
        view = tree_view(out)
        version = rows_of(out)[0][2]
        versions.append(version)
        expected: dict[str, str] = {}
        for v, name, digest in log:
            if v <= version:
                expected[name] = digest
        burst = {p: i["sha256"] for p, i in view.items() if p.startswith("burst")}
        assert burst == expected, f"backup at version {version} is not a point in time"
        assert {p: i for p, i in view.items() if not p.startswith("burst")} == manifest_view()
        probe = tmp_path / "probe.db"
        shutil.copyfile(out, probe)
        Database.open(str(probe))[0].close()
        probe.unlink()
        assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert any(start < v < end for v in versions), (start, versions, end)


def test_backup_refuses_existing_file(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.db"
    out.write_bytes(b"keep me")
    assert admin("backup", db, out).returncode == 1
    assert out.read_bytes() == b"keep me"
    assert admin("backup", "--force", db, out).returncode == 0
    assert tree_view(out) == manifest_view()


def _corrupt_files(tmp_path: Path) -> list[tuple[Path, int]]:
    """Broken backups with the exit code expected: 2 unreadable, 1 fails the checks."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(24576))
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(FIXTURE.read_bytes()[:12288])
    duplicate = tmp_path / "duplicate.db"
    shutil.copyfile(FIXTURE, duplicate)
    duplicate.chmod(0o600)
    sql(duplicate, *CORRUPTIONS["duplicate-vmid"][0])
    return [(garbage, 2), (truncated, 1), (duplicate, 1)]


def test_restore_refuses_corrupt_files(db: Path, tmp_path: Path) -> None:
    sql(db, "UPDATE tree SET data = x'01' WHERE inode = 2")  # distinguish from the fixture
    src_dir = tmp_path / "bad"
    src_dir.mkdir()
    before = db.read_bytes()
    listing = sorted(os.listdir(db.parent))
    for bad, code in _corrupt_files(src_dir):
        res = admin("restore", bad, db)
        assert res.returncode == code, (bad, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1
        assert db.read_bytes() == before
        assert sorted(os.listdir(db.parent)) == listing


def test_restore_replaces_and_keeps_old_with_wal(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    target = node / "config.db"
    shutil.copyfile(FIXTURE, target)
    target.chmod(0o600)
    # A database whose last commit still sits in its WAL (as after a crash).
    con = sqlite3.connect(target)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("INSERT INTO tree VALUES (700, 0, 700, 0, 1, 8, 'only-in-wal', x'57')")
    con.execute("UPDATE tree SET version = 700 WHERE inode = 0")
    con.commit()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(str(target) + suffix, str(crashed / "config.db") + suffix)
    con.close()
    target = crashed / "config.db"

    backup = tmp_path / "backup.db"
    assert admin("backup", FIXTURE, backup).returncode == 0
    res = admin("restore", backup, target)
    assert res.returncode == 0, res.stderr
    assert tree_view(target) == manifest_view()
    assert not Path(str(target) + "-wal").exists()
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    kept = [p for p in crashed.iterdir() if p.name.startswith("config.db.bak-")]
    main = [p for p in kept if not p.name.endswith(("-wal", "-shm"))]
    assert len(main) == 1 and Path(str(main[0]) + "-wal").exists()
    assert tree_view(main[0])["only-in-wal"]["sha256"] == sha(b"W")


# ---------------------------------------------------------------------------------- locking


@pytest.fixture
def held_lock(db: Path) -> Any:
    """Another process holding the daemon's instance lock, like a running pmxcfs."""
    if shutil.which("flock") is None:
        pytest.skip("flock(1) not installed")
    lockfile = db.parent / ".pmxcfs.lockfile"
    proc = subprocess.Popen(
        ["flock", "-x", "-o", str(lockfile), "-c", "echo held; exec sleep 60"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield lockfile
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_writing_commands_refuse_a_locked_db(db: Path, tmp_path: Path, held_lock: Path) -> None:
    sql(db, *CORRUPTIONS["orphan"][0])  # give repair something to do
    before = db.read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("x")
    backup = tmp_path / "elsewhere" / "b.db"
    backup.parent.mkdir()
    assert admin("backup", FIXTURE, backup).returncode == 0
    for args in (
        ("import", "--force", src, db),
        ("restore", backup, db),
        ("repair", "--yes", db),
    ):
        res = admin(*args)
        assert res.returncode == 3, (args, res.stdout, res.stderr)
        assert "in use by a running pmxcfs" in res.stderr
        assert db.read_bytes() == before
    # Reading stays possible while the daemon runs.
    assert admin("backup", db, tmp_path / "live.db").returncode == 0
    assert admin("check", db).returncode == 1


def test_lock_is_free_again_after_commands(db: Path) -> None:
    """The tool's own lock ends with it (a daemon started later is not blocked)."""
    sql(db, *CORRUPTIONS["orphan"][0])
    assert admin("repair", "--yes", db).returncode == 0
    res = subprocess.run(["flock", "-n", "-x", str(db.parent / ".pmxcfs.lockfile"), "true"])
    assert res.returncode == 0


# ---------------------------------------------------------------------------------- diff


def test_diff_reports_each_kind_of_change(db: Path) -> None:
    res = admin("diff", FIXTURE, db)
    assert res.returncode == 0 and res.stdout.startswith("no differences")
    sql(
        db,
        "UPDATE tree SET data = x'00', version = 140 WHERE inode = 2",  # storage.cfg content
        "UPDATE tree SET version = 141, mtime = 5 WHERE inode = 4",  # datacenter.cfg touched
        "DELETE FROM tree WHERE inode = 135",  # firewall/101.fw
        "INSERT INTO tree VALUES (142, 21, 142, 2, 7, 8, 'groups.cfg', x'41')",
        "UPDATE tree SET version = 142 WHERE inode = 0",
    )
    res = admin("diff", FIXTURE, db)
    assert res.returncode == 1
    marks = [line.split("  ")[0] for line in res.stdout.splitlines()]
    assert marks == ["V datacenter.cfg", "- firewall/101.fw", "+ ha/groups.cfg", "M storage.cfg"]
    data = json.loads(admin("diff", "--json", FIXTURE, db).stdout)
    assert data["db1"]["version"] == 139 and data["db2"]["version"] == 142
    changes = {d["path"]: d["change"] for d in data["differences"]}
    assert changes == {
        "datacenter.cfg": "version",
        "firewall/101.fw": "removed",
        "ha/groups.cfg": "added",
        "storage.cfg": "content",
    }
