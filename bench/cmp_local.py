"""Local-mode and IPC workloads of bench/compare.py.

One harness node (network + mount + UTS namespaces, no corosync) whose /etc/pve,
/var/lib/pve-cluster, /run, /var/lib/rrdcached and /dev/shm are private, /etc/hosts maps
its hostname (node1) to a 10.x address, and `@pve2` is its own: exactly what the
reference needs, since it has no path options.  One daemon at a time runs there, ours or
the reference, both with their default paths, each round on a fresh database.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmp_common import Agent, BenchError, Results, cpu_ns, rss_kib

from tests.cluster.harness import DEFAULT_PRIVATE_DIRS, PVE_PRIVATE_DIRS, REPO_ROOT, Cluster

PRIVATE_DIRS = (*DEFAULT_PRIVATE_DIRS, *PVE_PRIVATE_DIRS, "/var/lib/rrdcached")
#: directories whose contents make a daemon's state (cleared before every start)
STATE_DIRS = ("/var/lib/pve-cluster", "/run/pve-cluster", "/var/lib/rrdcached")
#: the reference often aborts or hangs at SIGTERM (its README): SIGKILL after this long
REFERENCE_STOP_TIMEOUT = 8.0

# pve2 request ids (pmxcfs/ipc/ops.py)
GET_FS_VERSION, GET_CLUSTER_INFO, GET_GUEST_LIST, SET_STATUS, GET_STATUS, GET_CONFIG = (
    1,
    2,
    3,
    4,
    5,
    6,
)
NAME_FIELD = 256
CONFIG_PATH = "nodes/node1/qemu-server/100.conf"
STATUS_KEY = b"bench/status"


@dataclass
class LocalConfig:
    files: int = 500
    read_passes: int = 5
    stat_passes: int = 20
    readdir_passes: int = 200
    big_files: int = 40
    big_size: int = 512 * 1024
    ipc_count: int = 20000


def _field(b: bytes) -> bytes:
    return b.ljust(NAME_FIELD, b"\0")


def ipc_requests(nodename: str) -> list[tuple[str, int, bytes]]:
    """(label, op, payload) of every measured pve2 request."""
    return [
        ("GET_FS_VERSION", GET_FS_VERSION, b""),
        ("GET_CLUSTER_INFO", GET_CLUSTER_INFO, b""),
        ("GET_GUEST_LIST", GET_GUEST_LIST, b""),
        ("GET_CONFIG 4 KiB", GET_CONFIG, CONFIG_PATH.encode() + b"\0"),
        ("GET_STATUS", GET_STATUS, _field(STATUS_KEY) + _field(nodename.encode())),
        ("SET_STATUS", SET_STATUS, _field(STATUS_KEY) + b"s" * 128),
    ]


def _guest_config(vmid: int, size: int) -> bytes:
    head = f"name: vm{vmid}\nmemory: 2048\ncores: 2\n".encode()
    filler = b"".join(f"description: line {i:04d} ................\n".encode() for i in range(200))
    return (head + filler)[: size - 1] + b"\n"


class LocalNode:
    """The namespace node, its workload agent, and the one daemon running in it."""

    def __init__(self, reference: Path, bins: dict[str, Path]) -> None:
        self.reference = reference
        self.bins = bins
        self.daemon: subprocess.Popen[bytes] | None = None
        self.kind = ""
        self.cluster = Cluster(1, private_dirs=PRIVATE_DIRS, start=False)
        try:
            self.node = self.cluster[1]
            # local mode everywhere: no corosync.conf for anyone to import
            self.node.host_path("/etc/corosync/corosync.conf").unlink()
            self.agent = Agent(self.node)
        except BaseException:
            self.cluster.teardown()
            raise
        self.log = self.node.tmpdir / "daemon.log"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.cluster.teardown()

    # ------------------------------------------------------------------- daemon

    def argv(self, kind: str) -> list[str]:
        if kind == "reference":
            return [str(self.reference), "-f", "-l"]
        # the reference's default paths, node name and IP (from /etc/hosts): same setup
        return [sys.executable, "-m", "pmxcfs", "-f", "-l"]

    def mounted(self) -> bool:
        try:
            text = Path(f"/proc/{self.node.holder_pid}/mounts").read_text()
        except OSError:
            return False
        return any(ln.split()[1] == "/etc/pve" for ln in text.splitlines())

    def start(self, kind: str, timeout: float = 60.0) -> int:
        """Fresh state, then the daemon; returns its pid once /etc/pve answers."""
        assert self.daemon is None
        for d in STATE_DIRS:
            host = self.node.host_path(d)
            if host.exists():
                for p in host.iterdir():
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
        self.node.run("rm -rf /dev/shm/qb-*", check=False)
        with open(self.log, "ab") as logf:
            logf.write(f"\n===== {kind} at {time.time():.3f}\n".encode())
            logf.flush()
            self.daemon = self.node.popen(
                self.argv(kind), cwd=str(REPO_ROOT), stdout=logf, stderr=subprocess.STDOUT
            )
        self.kind = kind
        deadline = time.monotonic() + timeout
        while True:
            if self.daemon.poll() is not None:
                rc = self.daemon.returncode
                self.daemon = None
                raise BenchError(f"{kind} daemon exited {rc}:\n{self.log_tail()}")
            if self.mounted():
                with contextlib.suppress(BenchError):
                    self.agent.call("stat_path", timeout=10, path=".version")
                    return self.daemon.pid
            if time.monotonic() > deadline:
                raise BenchError(f"{kind} daemon did not mount:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        p, self.daemon = self.daemon, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(REFERENCE_STOP_TIMEOUT if self.kind == "reference" else 30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        if self.mounted():  # a killed reference leaves its dead mount behind
            self.node.run(["umount", "-l", "/etc/pve"], check=False, timeout=30)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ---------------------------------------------------------------- workloads

    def fs_workloads(self, kind: str, res: Results, cfg: LocalConfig) -> None:
        assert self.daemon is not None
        pid, a, n = self.daemon.pid, self.agent, cfg.files
        a.call("mkdirs", paths=["bench", "big"])

        def measured(name: str, unit: str, ops: int, op: str, **kw: Any) -> None:
            c0 = cpu_ns(pid)
            span = a.call(op, **kw)
            cpu = (cpu_ns(pid) - c0) / 1e3 / ops
            res.add("local", name, unit, "higher", kind, ops / (span["end"] - span["start"]), cpu)

        measured("create+write 500 B", "files/s", n, "create", dir="bench", count=n, size=500)
        measured("overwrite 500 B", "files/s", n, "overwrite", dir="bench", count=n, size=500)
        a.call("read", dir="bench", count=n, passes=1)  # warm, as a reader in steady state
        p = cfg.read_passes
        measured("open+read+close", "files/s", n * p, "read", dir="bench", count=n, passes=p)
        p = cfg.stat_passes
        measured("stat", "stats/s", n * p, "stat", dir="bench", count=n, passes=p)
        p = cfg.readdir_passes
        measured(
            f"readdir of {n} entries", "readdirs/s", p, "readdir", dir="bench", entries=n, passes=p
        )
        res.add("local", f"RSS, tree of {n} small files", "MiB", "lower", kind, rss_kib(pid) / 1024)
        c0 = cpu_ns(pid)
        span = a.call("bigwrite", dir="big", count=cfg.big_files, size=cfg.big_size)
        cpu = (cpu_ns(pid) - c0) / 1e3 / cfg.big_files
        mb = cfg.big_files * cfg.big_size / 1e6
        res.add(
            "local",
            f"{cfg.big_size // 1024} KiB writes",
            "MB/s",
            "higher",
            kind,
            mb / (span["end"] - span["start"]),
            cpu,
        )

    def ipc_setup(self) -> None:
        a = self.agent
        a.call("mkdirs", paths=["nodes/node1/qemu-server"])
        a.call("write", path=CONFIG_PATH, hex=_guest_config(100, 4096).hex())
        for vmid in range(101, 110):
            a.call(
                "write",
                path=f"nodes/node1/qemu-server/{vmid}.conf",
                data=f"name: vm{vmid}\nmemory: 512\n",
            )
        # GET_STATUS needs a value: one SET_STATUS first
        self._rps(SET_STATUS, _field(STATUS_KEY) + b"s" * 128, 1, warmup=0)

    def _rps(self, op: int, payload: bytes, count: int, warmup: int = 200) -> dict[str, Any]:
        argv = [str(self.bins["ipc_rps"]), "pve2", str(op), payload.hex(), str(count), str(warmup)]
        out = self.node.run(argv, check=False, timeout=600)
        try:
            r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"ipc_rps failed ({out.returncode}): {out.stderr}") from None
        if out.returncode != 0 or r.get("errors"):
            raise BenchError(f"ipc_rps op {op}: {r} {out.stderr.strip()}")
        return r

    def ipc_workloads(self, kind: str, res: Results, cfg: LocalConfig) -> None:
        assert self.daemon is not None
        pid = self.daemon.pid
        self.ipc_setup()
        client: list[float] = []
        for label, op, payload in ipc_requests("node1"):
            c0 = cpu_ns(pid)
            r = self._rps(op, payload, cfg.ipc_count)
            cpu = (cpu_ns(pid) - c0) / 1e3 / (cfg.ipc_count + 200)
            res.add(
                "ipc, one connection",
                label,
                "req/s",
                "higher",
                kind,
                r["count"] / r["seconds"],
                cpu,
            )
            client.append(1e6 * r["client_cpu_s"] / r["count"])
        res.add(
            "ipc client cost",
            "C client (libqb) CPU per request, mean of ops",
            "us",
            "lower",
            kind,
            sum(client) / len(client),
        )
        r = self.agent.call("ipc_py", request=GET_FS_VERSION, count=cfg.ipc_count)
        res.add(
            "ipc client cost",
            "Python client (cffi) GET_FS_VERSION",
            "req/s",
            "higher",
            kind,
            r["count"] / r["seconds"],
        )
        res.add(
            "ipc client cost",
            "Python client CPU per request",
            "us",
            "lower",
            kind,
            1e6 * r["client_cpu_s"] / r["count"],
        )


def run_local_round(
    ln: LocalNode, kind: str, res: Results, cfg: LocalConfig, fs: bool, ipc: bool
) -> None:
    """One round of one kind: a fresh daemon, the IPC workloads on its small tree, then
    the filesystem workloads."""
    ln.start(kind)
    try:
        if ipc:
            ln.ipc_workloads(kind, res, cfg)
        if fs:
            ln.fs_workloads(kind, res, cfg)
    finally:
        ln.stop()
