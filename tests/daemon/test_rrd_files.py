"""RRD files on disk (status-ipc §4.3): what is written (rrdfiles), and the writer with real
librrd, a real rrdcached of our own, and a real daemon. Files are checked with the rrdtool CLI.

Every rrdcached here is started by the test (`-g`, so the Popen pid is the daemon's) and
stopped by that pid; the host's rrdcached, if any, is never used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pmxcfs.daemon import node_config
from pmxcfs.node import start_rrd_writer
from pmxcfs.options import parse
from pmxcfs.status import rrdfiles
from pmxcfs.status.librrd import LibRrd, RrdLibraryError
from pmxcfs.status.rrdfiles import Refusal, RrdFile, day_start, plan
from pmxcfs.status.rrdwriter import RrdWriter
from pmxcfs.status.state import ClusterStatus, NodeInfo
from tests.daemon.test_ipc_server import NetnsPmxcfs, name

NODE_DATA = "93211:c:{ts}:0.15:8:0.0213:0.0011:16651378688:4123504640:8589930496:0:100861726720:9261178880:48237112:3198911"  # noqa: E501
VM_DATA = "3601:web1:running:0:{ts}:2:0.0127:2147483648:1123819520:34359738368:0:1345213:993212:0:0"
LEGACY_VM_DATA = "3601:x:{ts}:2:0.0127:2147483648:1123819520:34359738368:0:1345213:993212:0:0"
STORAGE_DATA = "{ts}:100861726720:9261178880"

NODE_DS = [
    "DS:loadavg:GAUGE:120:0:U", "DS:maxcpu:GAUGE:120:0:U", "DS:cpu:GAUGE:120:0:U",
    "DS:iowait:GAUGE:120:0:U", "DS:memtotal:GAUGE:120:0:U", "DS:memused:GAUGE:120:0:U",
    "DS:swaptotal:GAUGE:120:0:U", "DS:swapused:GAUGE:120:0:U", "DS:roottotal:GAUGE:120:0:U",
    "DS:rootused:GAUGE:120:0:U", "DS:netin:DERIVE:120:0:U", "DS:netout:DERIVE:120:0:U",
]  # fmt: skip
VM_DS = [
    "DS:maxcpu:GAUGE:120:0:U", "DS:cpu:GAUGE:120:0:U", "DS:maxmem:GAUGE:120:0:U",
    "DS:mem:GAUGE:120:0:U", "DS:maxdisk:GAUGE:120:0:U", "DS:disk:GAUGE:120:0:U",
    "DS:netin:DERIVE:120:0:U", "DS:netout:DERIVE:120:0:U", "DS:diskread:DERIVE:120:0:U",
    "DS:diskwrite:DERIVE:120:0:U",
]  # fmt: skip
STORAGE_DS = ["DS:total:GAUGE:120:0:U", "DS:used:GAUGE:120:0:U"]
RRAS = [
    "RRA:AVERAGE:0.5:1:70", "RRA:AVERAGE:0.5:30:70", "RRA:AVERAGE:0.5:180:70",
    "RRA:AVERAGE:0.5:720:70", "RRA:AVERAGE:0.5:10080:70",
    "RRA:MAX:0.5:1:70", "RRA:MAX:0.5:30:70", "RRA:MAX:0.5:180:70",
    "RRA:MAX:0.5:720:70", "RRA:MAX:0.5:10080:70",
]  # fmt: skip


def now_ts() -> int:
    return int(time.time())


# ---------------------------------------------------------------------- rrdfiles (pure)


def test_plan_node() -> None:
    now = time.time()
    job = plan("pve2-node/node1", NODE_DATA.format(ts=1700000000), now)
    assert isinstance(job, RrdFile)
    assert job.path == "pve2-node/node1"
    assert job.values == (
        "1700000000:0.15:8:0.0213:0.0011:16651378688:4123504640:8589930496:0:100861726720"
        ":9261178880:48237112:3198911"
    )
    assert job.step == 60
    assert list(job.create_args) == NODE_DS + RRAS
    assert job.start == day_start(now)


@pytest.mark.parametrize(
    ("key", "data", "path", "values", "ds"),
    [
        ("pve2.3-vm/100", VM_DATA, "pve2-vm/100",
         "{ts}:2:0.0127:2147483648:1123819520:34359738368:0:1345213:993212:0:0", VM_DS),
        ("pve2-vm/100", LEGACY_VM_DATA, "pve2-vm/100",
         "{ts}:2:0.0127:2147483648:1123819520:34359738368:0:1345213:993212:0:0", VM_DS),
        ("pve2-storage/node1/local", STORAGE_DATA, "pve2-storage/node1/local",
         "{ts}:100861726720:9261178880", STORAGE_DS),
        ("pve2.3-vm/101", "0:db1:stopped:0:{ts}:4:U:4294967296:U:8589934592:0:U:U:U:U",
         "pve2-vm/101", "{ts}:4:U:4294967296:U:8589934592:0:U:U:U:U", VM_DS),
    ],
)  # fmt: skip
def test_plan_vm_and_storage(key: str, data: str, path: str, values: str, ds: list[str]) -> None:
    job = plan(key, data.format(ts=1700000123), 1700000000)
    assert isinstance(job, RrdFile)
    assert (job.path, job.values) == (path, values.format(ts=1700000123))
    assert list(job.create_args) == ds + RRAS


def test_day_start_is_local_midnight() -> None:
    now = time.time()
    start = day_start(now)
    t = time.localtime(start)
    assert (t.tm_hour, t.tm_min, t.tm_sec) == (0, 0, 0)
    assert time.localtime(now)[:3] == t[:3]
    assert start <= now < start + 25 * 3600


@pytest.mark.parametrize(
    "key",
    [
        "", "pve2-node", "pve2-node/", "pve2-node/a/b", "pve2-node//", "pve2-nodex/a",
        "pve2.3-vm", "pve2.3-vm/", "pve2.3-vm/100/", "pve2.3-vm/1/2", "pve2-vm/", "pve2-vm/1/2",
        "pve2-storage/node1", "pve2-storage/node1/", "pve2-storage//local",
        "pve2-storage/node1/local/x", "pve2-storage/", "pve2-storage//",
        # newer releases' keys: stored and dumped, but no file
        "pve-node-9.0/node1", "pve-vm-9.0/100", "pve-storage-9.0/node1/local",
        # stricter than the reference: no escape from the type directory, no control chars
        "pve2-node/..", "pve2-node/.", "pve2-storage/../x", "pve2-storage/n/..", "pve2-node/a\nb",
        "other/x",
    ],
)  # fmt: skip
def test_plan_refuses_wrong_keys(key: str) -> None:
    r = plan(key, NODE_DATA.format(ts=1700000000), 1700000000)
    assert r == Refusal(f"RRD update error: unknown/wrong key {key}")


@pytest.mark.parametrize(
    ("key", "data", "why"),
    [
        ("pve2-node/n1", "1:c:1700000000:0.1", "too few fields (4, expected 15)"),
        ("pve2-node/n1", "", "too few fields (1, expected 15)"),
        ("pve2-node/n1", NODE_DATA + ":7", "too many fields (16, expected 15)"),
        ("pve2.3-vm/100", "3601:web1:running:0", "too few fields (4, expected 15)"),
        ("pve2-vm/100", VM_DATA, "too many fields (15, expected 13)"),
        ("pve2-storage/n1/local", "1700000000:1", "too few fields (2, expected 3)"),
        ("pve2-storage/n1/local", "1700000000:1 :2", "bad characters in '1700000000:1 :2'"),
        ("pve2-storage/n1/local", "1700000000:1:2\n", "bad characters in '1700000000:1:2\\n'"),
    ],
)
def test_plan_refuses_bad_data(key: str, data: str, why: str) -> None:
    r = plan(key, data.format(ts=1700000000), 1700000000)
    assert isinstance(r, Refusal)
    assert r.path and r.reason == f"RRD update error {r.path}: {why}"


def test_ten_rras_and_step() -> None:
    assert list(rrdfiles.RRAS) == RRAS and rrdfiles.STEP == 60


# ---------------------------------------------------------------------- rrdtool CLI helpers


def rrdinfo(path: Path) -> dict[str, str]:
    out = subprocess.run(["rrdtool", "info", str(path)], capture_output=True, text=True, check=True)
    info = {}
    for line in out.stdout.splitlines():
        k, _, v = line.partition(" = ")
        info[k] = v.strip('"')
    return info


def lastupdate(path: Path, daemon: Path | None = None) -> tuple[int, list[str]]:
    """(last update time, its values) as the file holds them, or via rrdcached (which flushes)."""
    cmd = ["rrdtool", "lastupdate", str(path)]
    if daemon is not None:
        cmd += ["--daemon", f"unix:{daemon}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split("\n")
    ts, _, vals = out[2].partition(":")
    return int(ts), vals.split()


def check_layout(path: Path, ds: list[str]) -> dict[str, str]:
    info = rrdinfo(path)
    assert info["step"] == "60"
    names = [d.split(":")[1] for d in ds]
    types = {k[3:-6]: v for k, v in info.items() if k.startswith("ds[") and k.endswith("].type")}
    assert types == {d.split(":")[1]: d.split(":")[2] for d in ds}
    assert [info[f"ds[{n}].index"] for n in names] == [str(i) for i in range(len(ds))]
    for n in names:
        assert info[f"ds[{n}].minimal_heartbeat"] == "120"
        assert float(info[f"ds[{n}].min"]) == 0 and info[f"ds[{n}].max"] == "NaN"
    rras = []
    for i in range(10):
        xff = float(info[f"rra[{i}].xff"])
        steps, rows = info[f"rra[{i}].pdp_per_row"], info[f"rra[{i}].rows"]
        rras.append(f"RRA:{info[f'rra[{i}].cf']}:{xff}:{steps}:{rows}")
    assert rras == RRAS and "rra[10].cf" not in info
    return info


# ---------------------------------------------------------------------- writer fixtures


@pytest.fixture
def writers() -> Iterator[list[RrdWriter]]:
    """Writers made by a test, closed after it (their threads end)."""
    made: list[RrdWriter] = []
    try:
        yield made
    finally:
        for w in made:
            w.close()
            assert not w._thread.is_alive()


class Rrdcached:
    """Our own rrdcached on a socket in the test's directory, started and stopped by pid."""

    def __init__(self, tmp: Path, base: Path) -> None:
        self.sock = tmp / "rrdcached.sock"
        self.base = base
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        (tmp / "journal").mkdir(exist_ok=True)
        base.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        assert self.proc is None
        with open(self.tmp / "rrdcached.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["rrdcached", "-g", "-F", "-l", f"unix:{self.sock}", "-b", str(self.base), "-B",
                 "-p", str(self.tmp / "rrdcached.pid"), "-j", str(self.tmp / "journal")],
                stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, (self.tmp / "rrdcached.log").read_text()
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(self.sock))
                    return
                except OSError:
                    assert time.monotonic() < deadline, "rrdcached did not start"
                    time.sleep(0.05)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def rrdcached(tmp_path: Path) -> Iterator[Rrdcached]:
    d = Rrdcached(tmp_path, tmp_path / "db")
    try:
        d.start()
        yield d
    finally:
        d.stop()


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


# ---------------------------------------------------------------------- direct librrd


def test_direct_creates_and_updates(
    tmp_path: Path, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "pmxcfs.status")
    base = tmp_path / "db"
    w = RrdWriter(str(base), str(tmp_path / "no-rrdcached.sock"), retry_interval=0)
    writers.append(w)
    ts = now_ts()
    w.submit("pve2-node/node1", NODE_DATA.format(ts=ts))
    w.submit("pve2.3-vm/100", VM_DATA.format(ts=ts))
    w.submit("pve2-storage/node1/local", STORAGE_DATA.format(ts=ts))
    assert w.wait_idle(30)
    assert (w.direct_updates, w.cached_updates) == (3, 0)

    node = base / "pve2-node" / "node1"
    info = check_layout(node, NODE_DS)
    assert info["last_update"] == str(ts)
    assert lastupdate(node) == (ts, NODE_DATA.format(ts=ts).split(":")[3:])
    vm = base / "pve2-vm" / "100"
    assert check_layout(vm, VM_DS)["last_update"] == str(ts)
    assert lastupdate(vm) == (ts, VM_DATA.format(ts=ts).split(":")[5:])
    st = base / "pve2-storage" / "node1" / "local"
    assert check_layout(st, STORAGE_DS)["last_update"] == str(ts)
    assert lastupdate(st) == (ts, ["100861726720", "9261178880"])
    assert sorted(os.listdir(base)) == ["pve2-node", "pve2-storage", "pve2-vm"]
    umask = os.umask(0)
    os.umask(umask)
    for d in (base, base / "pve2-node", base / "pve2-storage" / "node1"):
        assert d.stat().st_mode & 0o777 == 0o755 & ~umask

    # later updates go to the same files; the absent rrdcached was reported once
    w.submit("pve2-node/node1", NODE_DATA.format(ts=ts + 60))
    w.submit("pve2-storage/node1/local", f"{ts + 60}:5:3")
    assert w.wait_idle(30)
    assert lastupdate(node)[0] == ts + 60
    assert lastupdate(st) == (ts + 60, ["5", "3"])
    down = messages(caplog, "not usable")
    assert len(down) == 1 and "No such file or directory" in down[0].getMessage()


def test_no_rrdcached_configured(tmp_path: Path, writers: list[RrdWriter]) -> None:
    w = RrdWriter(str(tmp_path / "db"), "")
    writers.append(w)
    ts = now_ts()
    w.submit("pve2-storage/n1/s1", STORAGE_DATA.format(ts=ts))
    assert w.wait_idle(30) and w.direct_updates == 1
    assert lastupdate(tmp_path / "db" / "pve2-storage" / "n1" / "s1")[0] == ts


def test_missing_librrd_only_disables_direct_writes(
    tmp_path: Path, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmxcfs.status")
    w = RrdWriter(str(tmp_path / "db"), "", librrd_name="librrd-missing.so.99")
    writers.append(w)
    ts = now_ts()
    for i in range(3):
        w.submit("pve2-storage/n1/s", STORAGE_DATA.format(ts=ts + i))
    assert w.wait_idle(30)
    assert w.direct_updates == 0 and not (tmp_path / "db").exists()
    said = messages(caplog, "cannot load librrd-missing.so.99")
    assert len(said) == 1 and "install librrd8" in said[0].getMessage()
    with pytest.raises(RrdLibraryError):
        LibRrd("librrd-missing.so.99")


# ---------------------------------------------------------------------- through rrdcached


def test_through_rrdcached_fallback_and_reconnect(
    rrdcached: Rrdcached, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmxcfs.status")
    w = RrdWriter(str(rrdcached.base), f"unix:{rrdcached.sock}", retry_interval=0)
    writers.append(w)
    node = rrdcached.base / "pve2-node" / "node1"
    vm = rrdcached.base / "pve2-vm" / "100"
    ts = now_ts()
    w.submit("pve2-node/node1", NODE_DATA.format(ts=ts))
    w.submit("pve2.3-vm/100", VM_DATA.format(ts=ts))
    assert w.wait_idle(30)
    # spec question 5: rrdcached -b base -B takes the absolute path inside its base
    assert (w.cached_updates, w.direct_updates) == (2, 0)
    check_layout(node, NODE_DS)  # created directly, empty until rrdcached writes it
    assert lastupdate(node)[0] == day_start(ts)
    assert lastupdate(node, rrdcached.sock) == (ts, NODE_DATA.format(ts=ts).split(":")[3:])
    assert lastupdate(vm, rrdcached.sock)[0] == ts

    # rrdcached goes away mid-stream (-F: it writes what it holds): updates land directly
    rrdcached.stop()
    for i in (1, 2, 3):
        w.submit("pve2-node/node1", NODE_DATA.format(ts=ts + 60 * i))
    assert w.wait_idle(30)
    assert (w.cached_updates, w.direct_updates) == (2, 3)
    assert lastupdate(node)[0] == ts + 180
    assert len(messages(caplog, "not usable")) == 1

    # back again: the writer reconnects and uses it
    rrdcached.start()
    w.submit("pve2-node/node1", NODE_DATA.format(ts=ts + 240))
    assert w.wait_idle(30)
    assert (w.cached_updates, w.direct_updates) == (3, 3)
    assert lastupdate(node)[0] == ts + 180
    assert lastupdate(node, rrdcached.sock)[0] == ts + 240
    assert len(messages(caplog, "works again")) == 1
    assert len(messages(caplog, "not usable")) == 1


def test_rrdcached_refusal_falls_back_in_order(
    rrdcached: Rrdcached, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmxcfs.status")
    w = RrdWriter(str(rrdcached.base), str(rrdcached.sock), retry_interval=0)
    writers.append(w)
    st = rrdcached.base / "pve2-storage" / "n1" / "local"
    ts = now_ts()
    w.submit("pve2-storage/n1/local", f"{ts}:10:1")
    w.submit("pve2-storage/n1/local", f"{ts}:20:2")  # same time again: refused everywhere
    w.submit("pve2-storage/n1/local", f"{ts + 60}:30:3")
    assert w.wait_idle(30)
    assert w.cached_updates == 2 and w.direct_updates == 0
    assert lastupdate(st, rrdcached.sock) == (ts + 60, ["30", "3"])
    refused = messages(caplog, "RRD update error")
    assert len(refused) == 1 and "illegal attempt to update" in refused[0].getMessage()
    assert not messages(caplog, "not usable")  # the connection stayed fine


def test_rrdcached_outside_its_base_updates_directly(
    tmp_path: Path, rrdcached: Rrdcached, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    """A --rrd-dir that is not rrdcached's -b: it refuses the path, the file is written
    directly, and that is said once per file."""
    caplog.set_level(logging.INFO, "pmxcfs.status")
    other = tmp_path / "elsewhere"
    w = RrdWriter(str(other), str(rrdcached.sock), retry_interval=0)
    writers.append(w)
    ts = now_ts()
    for i in range(3):
        w.submit("pve2-node/n1", NODE_DATA.format(ts=ts + 60 * i))
    assert w.wait_idle(30)
    assert (w.cached_updates, w.direct_updates) == (0, 3)
    assert lastupdate(other / "pve2-node" / "n1")[0] == ts + 120
    said = messages(caplog, "rrdcached refused")
    assert len(said) == 1 and "Permission denied" in said[0].getMessage()


# ---------------------------------------------------------------------- bad input


def test_wrong_keys_write_nothing(
    tmp_path: Path, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmxcfs.status")
    base = tmp_path / "db"
    w = RrdWriter(str(base), "")
    writers.append(w)
    ts = now_ts()
    for key in ("pve-node-9.0/n1", "pve-node-9.0/n1", "pve2-node/a/b", "pve2-storage/n1",
                "pve2-storage/../x", "pve2-vm/"):  # fmt: skip
        w.submit(key, NODE_DATA.format(ts=ts))
    w.submit("pve2-node/n1", "1:2:3")  # too few fields
    assert w.wait_idle(30)
    assert not base.exists()
    assert w.direct_updates == 0
    crit = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert [r.getMessage() for r in crit] == [
        "RRD update error: unknown/wrong key pve-node-9.0/n1",  # once, though sent twice
        "RRD update error: unknown/wrong key pve2-node/a/b",
        "RRD update error: unknown/wrong key pve2-storage/n1",
        "RRD update error: unknown/wrong key pve2-storage/../x",
        "RRD update error: unknown/wrong key pve2-vm/",
    ]
    assert len(messages(caplog, "too few fields")) == 1


def test_refused_values_are_logged_and_later_ones_work(
    tmp_path: Path, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmxcfs.status")
    base = tmp_path / "db"
    w = RrdWriter(str(base), "")
    writers.append(w)
    node = base / "pve2-node" / "n1"
    ts = now_ts()
    good = NODE_DATA.format(ts=ts).split(":")
    w.submit("pve2-node/n1", ":".join(good))
    w.submit("pve2-node/n1", ":".join(good))  # not after the last update
    w.submit("pve2-node/n1", ":".join(good))  # still failing: not logged again
    assert w.wait_idle(30)
    errors = messages(caplog, "RRD update error")
    assert len(errors) == 1 and "illegal attempt to update" in errors[0].getMessage()
    bad = [*good]
    bad[2], bad[-1] = str(ts + 60), "12abc"  # netout is a DERIVE: an integer
    w.submit("pve2-node/n1", ":".join(bad))
    assert w.wait_idle(30)
    assert lastupdate(node)[0] == ts  # refused, but (still failing) not logged again
    good[2] = str(ts + 120)
    w.submit("pve2-node/n1", ":".join(good))
    bad[2] = str(ts + 180)
    w.submit("pve2-node/n1", ":".join(bad))  # after a success: a new failure, logged
    assert w.wait_idle(30)
    assert lastupdate(node) == (ts + 120, good[3:])
    errors = messages(caplog, "RRD update error")
    assert len(errors) == 2 and "12abc" in errors[1].getMessage()
    assert w.direct_updates == 2


def test_unwritable_base_only_logs(
    tmp_path: Path, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pmxcfs.status")
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    w = RrdWriter(str(blocker / "db"), "")  # root can write anywhere, but not below a file
    writers.append(w)
    ts = now_ts()
    for i in range(3):
        w.submit("pve2-node/n1", NODE_DATA.format(ts=ts + i))
    assert w.wait_idle(30)
    assert w.direct_updates == 0
    said = messages(caplog, "cannot create")
    assert len(said) == 1 and "Not a directory" in said[0].getMessage()
    assert blocker.read_bytes() == b""


def test_hung_rrdcached_and_full_queue(
    tmp_path: Path, writers: list[RrdWriter], caplog: pytest.LogCaptureFixture
) -> None:
    """A socket that accepts and never answers: one timeout, then direct writes; the queue
    bound drops what does not fit, with one line."""
    caplog.set_level(logging.INFO, "pmxcfs.status")
    path = tmp_path / "hung.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    t = threading.Thread(target=accept)
    t.start()
    try:
        w = RrdWriter(str(tmp_path / "db"), str(path), max_queue=2, timeout=1.0)
        writers.append(w)
        ts = now_ts()
        for i in range(6):
            w.submit(f"pve2-storage/n1/s{i}", STORAGE_DATA.format(ts=ts))
        assert w.dropped == 4  # the first waits for rrdcached, one more fits the queue
        assert w.wait_idle(30)
        assert w.direct_updates == 6 - w.dropped
        assert (tmp_path / "db" / "pve2-storage" / "n1" / "s0").exists()
        assert len(messages(caplog, "queue full")) == 1
        assert len(messages(caplog, "caught up")) == 1
        down = messages(caplog, "not usable")
        assert len(down) == 1 and "timed out" in down[0].getMessage()
    finally:
        stop.set()
        t.join()
        for s in accepted:
            s.close()
        server.close()


def test_close_stops_the_thread(tmp_path: Path) -> None:
    w = RrdWriter(str(tmp_path / "db"), "")
    ts = now_ts()
    w.submit("pve2-storage/n1/s", STORAGE_DATA.format(ts=ts))
    w.close()
    assert not w._thread.is_alive()
    assert lastupdate(tmp_path / "db" / "pve2-storage" / "n1" / "s")[0] == ts  # drained first
    w.submit("pve2-storage/n1/s", STORAGE_DATA.format(ts=ts + 60))  # ignored after close
    w.close()


def test_status_feeds_local_and_peer_updates(tmp_path: Path, writers: list[RrdWriter]) -> None:
    status = ClusterStatus("n1")
    status.set_cluster_info("c", 1, [NodeInfo("n1", 1), NodeInfo("n2", 2)])
    w = RrdWriter(str(tmp_path / "db"), "")
    writers.append(w)
    status.rrd_listeners.append(w.submit)
    ts = now_ts()
    assert status.set_local(b"rrd/pve2-storage/n1/local", f"{ts}:5:1\0".encode())
    assert status.set_remote(2, b"rrd/pve2-node/n2", NODE_DATA.format(ts=ts).encode() + b"\0")
    assert not status.set_remote(9, b"rrd/pve2-node/n9", NODE_DATA.format(ts=ts).encode() + b"\0")
    assert not status.set_local(b"rrd/pve2-node/n1", b"no NUL")  # invalid: not stored, no file
    status.set_local(b"tasklist", b"[]\0")  # not an rrd key
    assert w.wait_idle(30)
    assert lastupdate(tmp_path / "db" / "pve2-storage" / "n1" / "local") == (ts, ["5", "1"])
    assert lastupdate(tmp_path / "db" / "pve2-node" / "n2")[0] == ts
    assert os.listdir(tmp_path / "db" / "pve2-node") == ["n2"]
    assert w.direct_updates == 2


def test_options_and_daemon_wiring(tmp_path: Path) -> None:
    assert (parse([]).rrd_dir, parse([]).rrdcached_socket) == (
        "/var/lib/rrdcached/db", "/var/run/rrdcached.sock")  # fmt: skip
    off = parse(["--rrd-dir", ""])
    status = ClusterStatus("n1")
    assert start_rrd_writer(node_config(off, "n1", "127.0.0.1", 33), status) is None
    assert status.rrd_listeners == []
    on = parse(["--rrd-dir", str(tmp_path / "db"), "--rrdcached-socket", ""])
    w = start_rrd_writer(node_config(on, "n1", "127.0.0.1", 33), status)
    assert w is not None and w.rrdcached == "" and w.base_dir == str(tmp_path / "db")
    try:
        assert status.rrd_listeners == [w.submit]
    finally:
        w.close()


# ---------------------------------------------------------------------- through the daemon


def test_daemon_writes_rrd_files(tmp_path: Path) -> None:
    d = NetnsPmxcfs(tmp_path / "n1", nodename="n1")
    try:
        d.start()
        ts = now_ts()
        data = NODE_DATA.format(ts=ts).encode()
        assert d.call(
            (4, name(b"rrd/pve2-node/n1") + data + b"\0"),
            (4, name(b"rrd/pve-node-9.0/n1") + data + b"\0"),
        ) == [(0, b""), (0, b"")]
        node = d.rrd_dir / "pve2-node" / "n1"
        deadline = time.monotonic() + 20
        while not node.exists() or lastupdate(node)[0] != ts:
            assert time.monotonic() < deadline, d.log.read_text()
            time.sleep(0.1)
        assert lastupdate(node) == (ts, data.decode().split(":")[3:])
        check_layout(node, NODE_DS)
        # the newer key stays in the table, writes no file and is reported
        rrd = d.path(".rrd").read_text()
        assert f"pve-node-9.0/n1:{data.decode()}\n" in rrd
        assert os.listdir(d.rrd_dir) == ["pve2-node"]
        assert "RRD update error: unknown/wrong key pve-node-9.0/n1" in d.log.read_text()
        assert d.stop() == 0  # the writer is closed at shutdown without trouble
        assert "Traceback" not in d.log.read_text()
    finally:
        d.stop()
