"""The Debian package (issue 13), built and installed for real on this machine.

`scripts/build-deb` builds it once for the module. The tests check its contents and metadata,
install it with apt, run the installed /usr/bin/pmxcfs in local mode in private namespaces,
purge it and look for anything left behind; then the divert path, with a stand-in pve-cluster
package that owns a /usr/bin/pmxcfs. Every change to the machine is undone in `finally`
blocks, also when a check fails: our package, the stand-in and whatever apt pulled in for
them are purged, and leftover diversions removed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import PYTHON, REPO, Pmxcfs, is_mounted, lazy_unmount
from tests.polling import wait_until

pytestmark = pytest.mark.slow

ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PRIV = Path("/usr/lib/pmxcfs-py")
UNIT = Path("/lib/systemd/system/pve-cluster.service")
UNIT_MARK = "# pmxcfs-py: "
DIVERSIONS = {
    "/usr/bin/pmxcfs": "/usr/bin/pmxcfs.distrib",
    "/usr/share/man/man8/pmxcfs.8.gz": "/usr/share/man/man8/pmxcfs.distrib.8.gz",
}
# Runtime libraries the issue names: corosync's clients, libqb, fuse3, librrd.
RUNTIME_LIBS = (
    "libcpg4", "libquorum5", "libcmap4", "libvotequorum8", "libcorosync-common4", "libqb100",
    "fuse3", "librrd8",
)  # fmt: skip
DEBIAN_PYTHON = ("python3-trio", "python3-pyfuse3", "python3-msgpack", "python3-cffi")

STANDIN_BIN = b"#!/bin/sh\necho 'stand-in for the reference pmxcfs'\n"
STANDIN_MAN = gzip.compress(b".TH PMXCFS 8\n.SH NAME\npmxcfs \\- stand-in\n", mtime=0)
STANDIN_UNIT = b"# stand-in pve-cluster unit\n[Service]\nExecStart=/usr/bin/pmxcfs\n"


def run(*cmd: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd="/")
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def arch() -> str:
    return run("dpkg", "--print-architecture").stdout.strip()


def status(pkg: str) -> str:
    """dpkg's state of `pkg`: '' when unknown, else e.g. 'installed', 'config-files'."""
    r = run("dpkg-query", "-W", "-f=${db:Status-Status}", pkg, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def present(pkg: str) -> bool:
    """Installed, or left in some state (config files, half-installed): something to purge."""
    return status(pkg) not in ("", "not-installed")


def installed() -> set[str]:
    out = run("dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n").stdout
    return {n for n, s in (line.split(" ", 1) for line in out.splitlines()) if s != "not-installed"}


def diverted_by(path: str) -> str:
    return run("dpkg-divert", "--listpackage", path).stdout.strip()


def owned(path: str) -> bool:
    return run("dpkg-query", "-S", path, check=False).returncode == 0


def new_packages(apt_output: str) -> set[str]:
    """The packages apt said it would newly install (its 'NEW packages' list)."""
    names: set[str] = set()
    grab = False
    for line in apt_output.splitlines():
        if line.startswith("The following NEW packages will be installed"):
            grab = True
        elif grab and line.startswith(" "):
            names.update(n.split(":")[0] for n in line.split())
        else:
            grab = False
    return names


class Host:
    """What these tests install on the machine, and how all of it is taken away again."""

    def __init__(self) -> None:
        self.before = installed()
        self.new: set[str] = set()

    def apt(self, *args: str) -> str:
        r = run(*APT, *args)
        self.new |= new_packages(r.stdout)
        return r.stdout + r.stderr

    def install(self, deb: Path) -> str:
        try:
            return self.apt("install", str(deb))
        except AssertionError as exc:
            if "Unable to fetch" not in str(exc) and "404" not in str(exc):
                raise
            run(*APT, "update")  # stale package lists on this machine
            return self.apt("install", str(deb))

    def purge(self, *pkgs: str) -> str:
        return self.apt("purge", *pkgs)

    def restore(self) -> None:
        """Purge everything these tests installed; fall back to dpkg and by-hand cleanup."""
        errors: list[str] = []
        ours = [p for p in ("pmxcfs-py", "pve-cluster") if present(p)]
        if ours:
            r = run(*APT, "purge", *ours, check=False)
            if r.returncode != 0:
                errors.append(r.stdout + r.stderr)
                run("dpkg", "--purge", "--force-remove-reinstreq", *ours, check=False)
        for path, to in DIVERSIONS.items():
            if diverted_by(path) == "pmxcfs-py":
                errors.append(f"diversion of {path} left behind")
                run("dpkg-divert", "--package", "pmxcfs-py", "--remove", "--rename",
                    "--divert", to, path, check=False)  # fmt: skip
        if UNIT.is_file() and UNIT.read_text().startswith(UNIT_MARK) and not owned(str(UNIT)):
            errors.append(f"{UNIT} left behind")
            UNIT.unlink()
        extra = sorted((installed() - self.before) & self.new)
        if extra:
            run(*APT, "purge", *extra, check=False)
        assert not errors, "cleanup needed help:\n" + "\n".join(errors)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    assert os.geteuid() == 0, "installs packages: run as root"
    for pkg in ("pmxcfs-py", "pve-cluster"):
        # Installed before the tests: they could not give the machine back as they found it.
        assert not present(pkg), f"{pkg} is already installed here"
    h = Host()
    try:
        yield h
    finally:
        h.restore()


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per test run, from this checkout, into a scratch directory."""
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), str(out)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-6000:]
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.name == f"pmxcfs-py_{VERSION}_{arch()}.deb" and path.parent == out
    return path


def deb_files(deb: Path) -> dict[str, tarfile.TarInfo]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        return {m.name.removeprefix(".").rstrip("/"): m for m in tar.getmembers()}


def deb_file(deb: Path, path: str) -> bytes:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(data.stdout)) as tar:
        f = tar.extractfile("." + path)
        assert f is not None
        return f.read()


def depends(field: str) -> set[str]:
    return {alt.split("(")[0].split(":")[0].strip() for dep in field.split(",") for alt in
            dep.split("|")}  # fmt: skip


# --------------------------------------------------------------------------------- contents


def test_contents_and_metadata(deb: Path) -> None:
    fields = {
        f: run("dpkg-deb", "-f", str(deb), f).stdout.strip()
        for f in ("Package", "Version", "Architecture", "Depends", "Section", "Description")
    }
    assert fields["Package"] == "pmxcfs-py"
    assert fields["Version"] == VERSION
    assert fields["Architecture"] == arch()
    assert fields["Section"] == "admin"
    deps = depends(fields["Depends"])
    assert set(RUNTIME_LIBS) <= deps, fields["Depends"]
    assert set(DEBIAN_PYTHON) <= deps, fields["Depends"]
    assert "python3-apsw" not in deps  # Debian 12's is too old: ours is private

    listing = run("dpkg-deb", "-c", str(deb)).stdout
    files = deb_files(deb)
    assert set(files) == {re.split(r"\s+", line, maxsplit=5)[5].removeprefix(".").rstrip("/")
                          for line in listing.splitlines()}  # fmt: skip
    for exe in ("/usr/bin/pmxcfs", "/usr/bin/pmxcfs-admin"):
        assert files[exe].isfile() and files[exe].mode == 0o755, exe
        assert deb_file(deb, exe).startswith(b"#!/usr/bin/python3 -I\n")
    for path in (
        "/usr/lib/pmxcfs-py/pmxcfs/daemon.py",
        "/usr/lib/pmxcfs-py/pmxcfs/admin/cli.py",
        "/usr/lib/pmxcfs-py/cpg/group.py",
        "/usr/lib/pmxcfs-py/apsw/__init__.pyi",
        "/usr/lib/pmxcfs-py/pve-cluster.service",
        "/usr/share/man/man8/pmxcfs.8.gz",
        "/usr/share/man/man8/pmxcfs-admin.8.gz",
        "/usr/share/doc/pmxcfs-py/copyright",
        "/usr/share/doc/pmxcfs-py/changelog.gz",
    ):
        assert files[path].isfile(), path
    names = list(files)
    # the cffi extension, compiled at build time, and APSW's, from its wheel
    for so in (r"cpg/_corosync", r"apsw/__init__"):
        assert any(re.fullmatch(rf"/usr/lib/pmxcfs-py/{so}\.cpython-\d+.*\.so", n) for n in names)
    # Debian's own packages serve for these: no private copies; no bytecode, no checkout leftovers
    for name in ("trio", "pyfuse3", "msgpack", "cffi", "_cffi_backend", "outcome"):
        assert not any(n.startswith(f"/usr/lib/pmxcfs-py/{name}") for n in names), name
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".c", ".o"))]
    assert not [n for n in names if n.startswith("/usr/lib/pmxcfs-py/bin")]
    # the unit is not a dpkg file (pve-cluster ships the same path): postinst copies it
    assert not [n for n in names if "systemd/system" in n]
    unit = deb_file(deb, "/usr/lib/pmxcfs-py/pve-cluster.service").decode()
    first, rest = unit.split("\n", 1)
    assert first.startswith(UNIT_MARK)
    assert rest == (REPO / "systemd" / "pve-cluster.service").read_text()
    var = files["/var/lib/pve-cluster"]
    assert var.isdir() and var.mode == 0o755 and (var.uname, var.gname) == ("root", "root")

    copyright_text = deb_file(deb, "/usr/share/doc/pmxcfs-py/copyright").decode()
    assert "License: AGPL-3.0-or-later" in copyright_text
    changelog = gzip.decompress(deb_file(deb, "/usr/share/doc/pmxcfs-py/changelog.gz")).decode()
    assert changelog.startswith(f"pmxcfs-py ({VERSION})")
    for page, sections in (
        ("pmxcfs", ("OPTIONS", "SIGNALS", "EXIT STATUS", "FILES", "SWITCHING")),
        ("pmxcfs-admin", ("COMMANDS", "EXIT STATUS", "FILES")),
    ):
        roff = gzip.decompress(deb_file(deb, f"/usr/share/man/man8/{page}.8.gz")).decode()
        assert roff.startswith(f".TH {page.upper().replace('-', chr(92) + '-')} 8 ")
        for s in ("NAME", "SYNOPSIS", "DESCRIPTION", *sections):
            assert re.search(rf'^\.SH "?{s}"?$', roff, re.M), (page, s)


def test_maintainer_scripts_never_start_the_service(deb: Path, tmp_path: Path) -> None:
    """Only the administrator switches /etc/pve to the new binary (stop on removal is fine)."""
    run("dpkg-deb", "-e", str(deb), str(tmp_path / "control"))
    scripts = {p.name: p.read_text() for p in (tmp_path / "control").iterdir()
               if p.name in ("preinst", "postinst", "prerm", "postrm")}  # fmt: skip
    assert set(scripts) == {"preinst", "postinst", "prerm", "postrm"}
    start = re.compile(
        r"^[ \t]*(deb-systemd-invoke|invoke-rc\.d|service|systemctl)[ \t]+(\S+[ \t]+)*?"
        r"(start|restart|try-restart|reload-or-restart|condrestart)\b", re.M
    )  # fmt: skip
    for name, text in scripts.items():
        assert not start.search(text), name
    assert "dpkg-divert --package pmxcfs-py --add --rename" in scripts["preinst"]
    assert "dpkg-divert --package pmxcfs-py --remove --rename" in scripts["postrm"]


# ---------------------------------------------------------------- install, run, purge


# Where the package, its maintainer scripts or its service could leave something.
WATCH: tuple[tuple[str, str], ...] = (
    ("/usr/bin", "pmxcfs*"),
    ("/usr/lib", "pmxcfs-py"),
    ("/usr/share/doc", "pmxcfs-py"),
    ("/usr/share/man/man8", "pmxcfs*"),
    ("/usr/share/python3/runtime.d", "pmxcfs*"),
    ("/lib/systemd/system", "pve-cluster*"),
    ("/etc/systemd/system", "**/pve-cluster*"),
    ("/var/lib/systemd", "**/*pve-cluster*"),
    ("/var/lib", "pve-cluster"),
    ("/var/lib/dpkg/info", "pmxcfs-py*"),
    ("/var/lib/dpkg/info", "pve-cluster*"),
)


def _describe(p: Path) -> str:
    st = os.lstat(p)
    if p.is_symlink():
        return "link " + os.readlink(p)
    if p.is_dir():
        return f"dir {st.st_mode:o}"
    if str(p).startswith("/var/lib/pve-cluster/"):  # other tests may touch these files' data
        return f"file {st.st_mode:o}"
    return f"file {st.st_mode:o} " + hashlib.sha256(p.read_bytes()).hexdigest()


def snapshot() -> dict[str, str]:
    found: dict[str, str] = {}
    for base, pattern in WATCH:
        for p in Path(base).glob(pattern):
            found[str(p)] = _describe(p)
            if p.is_dir() and not p.is_symlink():
                found.update((str(q), _describe(q)) for q in p.rglob("*"))
    return found


def pmxcfs_diversions() -> list[str]:
    return [ln for ln in run("dpkg-divert", "--list").stdout.splitlines() if "pmxcfs" in ln]


class InstalledPmxcfs(Pmxcfs):
    """The harness's daemon (private dirs, own network and UTS namespaces), but run as the
    installed /usr/bin/pmxcfs instead of the checkout's modules."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.netns_prefix = ["unshare", "--net", "--uts", "--"]

    def args(self, *extra: str, local: bool = True, foreground: bool = True) -> list[str]:
        a = super().args(*extra, local=local, foreground=foreground)
        i = a.index(PYTHON)
        assert a[i + 1 : i + 3] == ["-m", "pmxcfs"]
        return [*a[:i], "/usr/bin/pmxcfs", *a[i + 3 :]]


def check_python_stack() -> None:
    """Debian's trio, pyfuse3, msgpack and cffi; APSW and our modules from the private dir."""
    code = (
        "import json, sys; sys.path.insert(0, '/usr/lib/pmxcfs-py'); "
        "import trio, pyfuse3, msgpack, cffi, apsw, pmxcfs.daemon, cpg._corosync; "
        "print(json.dumps({m.__name__: m.__file__ for m in "
        "(trio, pyfuse3, msgpack, cffi, apsw, pmxcfs, cpg._corosync)}))"
    )
    where = json.loads(run("/usr/bin/python3", "-I", "-c", code).stdout)
    for mod in ("trio", "pyfuse3", "msgpack", "cffi"):
        assert where[mod].startswith("/usr/lib/python3/dist-packages/"), where
    for mod in ("apsw", "pmxcfs", "cpg._corosync"):
        assert where[mod].startswith("/usr/lib/pmxcfs-py/"), where


def run_installed_daemon(base: Path) -> None:
    d = InstalledPmxcfs(base)
    with d.running():
        assert d.proc is not None
        cmdline = Path(f"/proc/{d.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:3] == [b"/usr/bin/python3", b"-I", b"/usr/bin/pmxcfs"], cmdline
        conf = d.path("nodes/testnode/qemu-server/100.conf")
        conf.parent.mkdir(parents=True)
        conf.write_text("memory: 2048\ncores: 2\n")
        assert d.path("qemu-server/100.conf").read_text() == "memory: 2048\ncores: 2\n"
        vmlist = json.loads(d.path(".vmlist").read_text())
        assert list(vmlist["ids"]) == ["100"]
        assert vmlist["ids"]["100"]["node"] == "testnode"
        assert vmlist["ids"]["100"]["type"] == "qemu"
        maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
        assert "/usr/lib/pmxcfs-py/cpg/_corosync." in maps  # the IPC server runs
        assert "/usr/lib/pmxcfs-py/apsw/" in maps
        assert str(REPO) not in maps
        assert d.stop() == 0
    log = d.log.read_text()
    assert "exit proxmox configuration filesystem (0)" in log, log
    admin = run("/usr/bin/pmxcfs-admin", "cat", str(d.db), "nodes/testnode/qemu-server/100.conf")
    assert admin.stdout == "memory: 2048\ncores: 2\n"
    check = run("/usr/bin/pmxcfs-admin", "check", str(d.db))
    assert "ok" in check.stdout


def run_installed_forking(base: Path) -> None:
    """Without -f, as pve-cluster.service starts it: the parent exits once /etc/pve is up."""
    d = InstalledPmxcfs(base)
    r = subprocess.run(d.args(foreground=False), capture_output=True, text=True, timeout=60)
    pid = int(d.pid_file.read_text()) if d.pid_file.exists() else None
    try:
        assert r.returncode == 0, r.stderr
        assert pid is not None and is_mounted(d.mount)
        assert json.loads(d.path(".vmlist").read_text())["ids"]["100"]["node"] == "testnode"
        os.kill(pid, signal.SIGTERM)
        wait_until("the daemon to unmount and remove its PID file",
                   lambda: not is_mounted(d.mount) and not d.pid_file.exists())  # fmt: skip
    finally:
        if pid is not None and is_mounted(d.mount):  # a failed check above: never leave it
            os.kill(pid, signal.SIGKILL)
        lazy_unmount(d.mount)


def test_install_run_purge(deb: Path, host: Host, tmp_path: Path) -> None:
    before = snapshot()
    diversions = pmxcfs_diversions()
    files = deb_files(deb)
    existed = {path for path in files if os.path.lexists(path or "/")}
    try:
        out = host.install(deb)
        assert status("pmxcfs-py") == "installed"
        assert "systemctl enable --now pve-cluster" in out  # no pve-cluster: the unit is ours
        for mod in DEBIAN_PYTHON:
            assert status(mod) == "installed", mod
        # the unit, installed by postinst since no package ships it here
        assert UNIT.read_text() == (PRIV / "pve-cluster.service").read_text()
        assert not owned(str(UNIT))
        assert diverted_by("/usr/bin/pmxcfs") == "pmxcfs-py"  # ready for a later pve-cluster
        assert not Path("/usr/bin/pmxcfs.distrib").exists()
        if "/var/lib/pve-cluster" not in existed:  # else dpkg keeps the directory as it was
            st = os.stat("/var/lib/pve-cluster")
            assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o755, 0, 0)
        assert run("/usr/bin/pmxcfs", "--help").returncode == 0
        assert run("/usr/bin/pmxcfs", "--no-such-option", check=False).returncode == 1
        assert "backup" in run("/usr/bin/pmxcfs-admin", "--help").stdout
        check_python_stack()
        run_installed_daemon(tmp_path)
        run_installed_forking(tmp_path)  # the same database: 100.conf is there
        # an upgrade (here: the same version again) keeps the diversion and the unit copy
        host.apt("install", "--reinstall", str(deb))
        assert diverted_by("/usr/bin/pmxcfs") == "pmxcfs-py"
        assert UNIT.read_text() == (PRIV / "pve-cluster.service").read_text()
    finally:
        if present("pmxcfs-py"):
            host.purge("pmxcfs-py")
    assert not present("pmxcfs-py")
    assert pmxcfs_diversions() == diversions
    after = snapshot()
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() ^ after.keys()}
    for path in files:  # nothing that the package brought stays, unless it was there before
        assert os.path.lexists(path or "/") == (path in existed), path
    assert not PRIV.exists()


# ---------------------------------------------------------------------------- divert path


def build_standin(tmp_path: Path) -> Path:
    """A stand-in 'pve-cluster' owning /usr/bin/pmxcfs, its man page and the unit."""
    root = tmp_path / "standin"
    for rel, data, mode in (
        ("usr/bin/pmxcfs", STANDIN_BIN, 0o755),
        ("usr/share/man/man8/pmxcfs.8.gz", STANDIN_MAN, 0o644),
        ("lib/systemd/system/pve-cluster.service", STANDIN_UNIT, 0o644),
    ):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        "Package: pve-cluster\nVersion: 8.1.0+pmxcfs.standin\nArchitecture: all\n"
        "Maintainer: pmxcfs-py tests <root@localhost>\nSection: admin\nPriority: optional\n"
        "Description: stand-in for Proxmox VE's pve-cluster\n"
        " Built by tests/daemon/test_deb.py; owns /usr/bin/pmxcfs like the real one.\n"
    )
    for d in [root, *root.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    out = tmp_path / "pve-cluster_standin_all.deb"
    run("dpkg-deb", "--root-owner-group", "--build", str(root), str(out))
    return out


def assert_reference_in_place() -> None:
    assert Path("/usr/bin/pmxcfs").read_bytes() == STANDIN_BIN
    assert Path("/usr/share/man/man8/pmxcfs.8.gz").read_bytes() == STANDIN_MAN
    assert UNIT.read_bytes() == STANDIN_UNIT
    for to in DIVERSIONS.values():
        assert not os.path.lexists(to), to
    assert diverted_by("/usr/bin/pmxcfs") == ""
    assert run("dpkg", "--verify", "pve-cluster").stdout == ""


def assert_diverted() -> None:
    for path, to in DIVERSIONS.items():
        assert diverted_by(path) == "pmxcfs-py", path
        assert run("dpkg-divert", "--truename", path).stdout.strip() == to
    assert Path("/usr/bin/pmxcfs.distrib").read_bytes() == STANDIN_BIN
    assert Path("/usr/share/man/man8/pmxcfs.distrib.8.gz").read_bytes() == STANDIN_MAN
    assert Path("/usr/bin/pmxcfs").read_bytes().startswith(b"#!/usr/bin/python3 -I\n")
    assert "diversion by pmxcfs-py" in run("dpkg-query", "-S", "/usr/bin/pmxcfs").stdout
    # the rest of pve-cluster is untouched: its unit stays (no copy of ours), its files verify
    assert UNIT.read_bytes() == STANDIN_UNIT
    assert run("dpkg", "--verify", "pve-cluster").stdout == ""


def test_divert_reference_and_give_it_back(deb: Path, host: Host, tmp_path: Path) -> None:
    standin = build_standin(tmp_path)
    before = snapshot()
    diversions = pmxcfs_diversions()
    try:
        # A Proxmox VE node: pve-cluster first, then pmxcfs-py.
        host.install(standin)
        assert_reference_in_place()
        out = host.install(deb)
        assert "enable --now" not in out  # pve-cluster's unit, not ours
        assert_diverted()
        host.purge("pmxcfs-py")
        assert_reference_in_place()
        host.purge("pve-cluster")

        # pmxcfs-py first, then pve-cluster: the reference lands beside ours, not over it.
        host.install(deb)
        assert UNIT.read_text().startswith(UNIT_MARK)
        host.install(standin)
        assert_diverted()
        host.purge("pmxcfs-py")
        assert_reference_in_place()
    finally:
        left = [p for p in ("pmxcfs-py", "pve-cluster") if present(p)]
        if left:
            host.purge(*left)
    assert pmxcfs_diversions() == diversions
    for path in (*DIVERSIONS, *DIVERSIONS.values(), str(UNIT)):
        assert os.path.lexists(path) == (path in before), path
    after = snapshot()
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() ^ after.keys()}
