"""Clusters of real pmxcfs daemons on real corosync (tests/cluster/harness.py nodes).

:class:`PveCluster` builds an N-node corosync cluster with the harness (each node in its
own network + mount + UTS namespace), gives every node a private ``/etc/pve`` and
``/var/lib/pve-cluster``, starts our daemon in cluster mode on an empty database in each
(the fresh database imports ``/etc/corosync/corosync.conf``: that is how a node joins),
and waits until every daemon is mounted and quorate with all nodes online.
:meth:`PveCluster.teardown` stops everything, also after a failed start.

FUSE mounts are only visible inside a node's mount namespace, so every node also runs a
small *fs agent* (this module with ``fs``): JSON-line commands on stdin, one result per
command on stdout, errors reported as errno names instead of raised.  A *hostile* agent
(``hostile``) joins the dcdb CPG group like a daemon, answers syncs with a minimal valid
STATE, and multicasts whatever raw bytes the test hands it.

    python -m tests.cluster.pve_nodes fs /etc/pve
    python -m tests.cluster.pve_nodes hostile
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.cluster.harness import (
    DEFAULT_PRIVATE_DIRS,
    PVE_PRIVATE_DIRS,
    REPO_ROOT,
    Cluster,
    HarnessError,
    JsonProc,
    Node,
    reap_stale_clusters,
)
from tests.shared import SHARED

MOUNT = "/etc/pve"
DB_DIR = "/var/lib/pve-cluster"
RUN_DIR = "/run/pve-cluster"
RRD_DIR = "/run/rrdcached/db"
COROSYNC_CONF = "/etc/corosync/corosync.conf"
#: env var naming the reference (C) daemon binary; default ../shared/reference/pmxcfs
REFERENCE_ENV = "PMXCFS_REFERENCE"
#: the reference writes RRD files here (no path option): private on its nodes
REFERENCE_PRIVATE_DIRS: tuple[str, ...] = ("/var/lib/rrdcached",)
#: the reference often aborts or hangs at SIGTERM (README): SIGKILL after this long
REFERENCE_STOP_TIMEOUT = 8.0
#: root entries that are not tree entries (generated files, symlinks)
FIXED_ROOT = frozenset(
    {".version", ".members", ".vmlist", ".rrd", ".clusterlog", ".debug",
     "local", "qemu-server", "lxc", "openvz"}
)  # fmt: skip

Snapshot = dict[str, tuple[str, int, int, int, str]]  # path -> kind, mode, size, mtime, sha256


# ============================================================================ fs agent


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _stat_dict(st: os.stat_result) -> dict[str, int]:
    return {"mode": st.st_mode, "size": st.st_size, "mtime": int(st.st_mtime)}


def _snapshot(mount: str, root: str = "") -> dict[str, list[Any]]:
    """Every tree entry below *mount*/*root* (paths relative to *mount*): kind, permission
    bits, size, mtime, sha256.  A missing *root* gives an empty snapshot."""
    out: dict[str, list[Any]] = {}

    def walk(rel: str) -> None:
        base = os.path.join(mount, rel) if rel else mount
        for name in sorted(os.listdir(base)):
            if not rel and name in FIXED_ROOT:
                continue
            p = f"{rel}/{name}" if rel else name
            full = os.path.join(mount, p)
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                out[p] = ["d", st.st_mode & 0o7777, 0, int(st.st_mtime), ""]
                walk(p)
            else:
                with open(full, "rb") as f:
                    data = f.read()
                kind = "f" if stat.S_ISREG(st.st_mode) else "?"
                out[p] = [kind, st.st_mode & 0o7777, len(data), int(st.st_mtime),
                          hashlib.sha256(data).hexdigest()]  # fmt: skip

    root = root.strip("/")
    if root:
        try:
            st = os.lstat(os.path.join(mount, root))
        except FileNotFoundError:
            return out
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "snapshot root is not a directory", root)
    walk(root)
    return out


def _data(cmd: dict[str, Any]) -> bytes:
    if "b64" in cmd:
        return base64.b64decode(cmd["b64"])
    return str(cmd.get("data", "")).encode()


def _write(mount: str, cmd: dict[str, Any]) -> int:
    """mode: w (create/truncate), x (O_EXCL), a (append), r+ (pwrite at offset)."""
    mode = cmd.get("mode", "w")
    flags = {
        "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
        "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
        "a": os.O_WRONLY | os.O_APPEND,
        "r+": os.O_WRONLY,
        "c": os.O_WRONLY | os.O_CREAT,
    }[mode]
    fd = os.open(os.path.join(mount, cmd["path"]), flags, 0o640)
    try:
        data = _data(cmd)
        if mode == "r+":
            return os.pwrite(fd, data, int(cmd.get("offset", 0)))
        return os.write(fd, data) if data else 0
    finally:
        os.close(fd)


def _fs_command(mount: str, cmd: dict[str, Any], emit: Callable[..., None]) -> Any:
    op = cmd["op"]
    path = os.path.join(mount, cmd.get("path", ""))
    if op == "write":
        return _write(mount, cmd)
    if op == "read":
        with open(path, "rb") as f:
            return base64.b64encode(f.read()).decode()
    if op == "stat":
        return _stat_dict(os.stat(path))
    if op == "lstat":
        return _stat_dict(os.lstat(path))
    if op == "listdir":
        return sorted(os.listdir(path))
    if op == "mkdir":
        os.mkdir(path)
        return 0
    if op == "rmdir":
        os.rmdir(path)
        return 0
    if op == "unlink":
        os.unlink(path)
        return 0
    if op == "rename":
        os.rename(path, os.path.join(mount, cmd["to"]))
        return 0
    if op == "truncate":
        os.truncate(path, int(cmd["size"]))
        return 0
    if op == "utime":
        t = int(cmd["mtime"])
        os.utime(path, (t, t))
        return 0
    if op == "snapshot":
        return _snapshot(mount, str(cmd.get("root", "")))
    if op == "burst":
        # write files one by one; an "ack" event per acknowledged write (close succeeded)
        done = 0
        shared = list(cmd.get("shared", []))
        for i in range(int(cmd["count"])):
            name = f"{cmd['prefix']}{i}"
            content = f"{cmd.get('tag', '')}:{name}:{i}\n".encode() * int(cmd.get("repeat", 1))
            _write(mount, {"path": name, "b64": base64.b64encode(content).decode()})
            if shared:
                target = shared[i % len(shared)]
                _write(mount, {"path": target, "data": f"{cmd.get('tag', '')}:{i}\n"})
            done += 1
            if cmd.get("acks"):
                emit(ev="ack", id=cmd["id"], path=name,
                     sha=hashlib.sha256(content).hexdigest())  # fmt: skip
        return done
    if op == "pwrite_loop":
        # count replicated WRITEs through one descriptor (the file is created if needed)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            data = _data(cmd)
            for _ in range(int(cmd["count"])):
                os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
        return int(cmd["count"])
    if op == "watch":
        # poll until *path* holds the wanted bytes; returns the monotonic time it was seen
        want = _data(cmd)
        deadline = time.monotonic() + float(cmd.get("timeout", 30))
        emit(ev="watching", id=cmd["id"])
        while True:
            try:
                with open(path, "rb") as f:
                    if f.read() == want:
                        return time.monotonic()
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(errno.ETIMEDOUT, "content did not appear", path)
            time.sleep(float(cmd.get("interval", 0.001)))
    raise ValueError(f"unknown op {op!r}")


def fs_agent_main(mount: str) -> None:
    def emit(**obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    emit(ev="ready", pid=os.getpid())
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        t0 = time.monotonic()
        try:
            value = _fs_command(mount, cmd, emit)
            res: dict[str, Any] = {"ok": True, "value": value}
        except OSError as exc:
            res = {"ok": False, "errno": _errname(exc), "msg": str(exc)}
            if cmd.get("op") == "burst":
                res["partial"] = True
        t1 = time.monotonic()
        emit(ev="result", id=cmd.get("id"), t0=t0, t1=t1, dt=t1 - t0, **res)


# ============================================================================ hostile agent


def hostile_agent_main() -> None:
    """Join pve_dcdb_v1 like a daemon; answer every SYNC_START with a minimal STATE (an
    empty tree's index, so we are never the data leader); multicast raw bytes on demand.

    stdin: {"op": "mcast", "hex": "..."} | {"op": "leave"} | {"op": "exit"}
    stdout: ready, confchg, state_sent, synced (UPDATE_COMPLETE in our epoch), own (one of
    our messages delivered back), sent, error.
    """
    import trio

    from cpg import CorosyncError, Cpg, CpgConfchg, CpgDeliver
    from pmxcfs.dcdb.codec import GROUP as PVE_DCDB_GROUP
    from pmxcfs.dcdb.codec import PROTOCOL_VERSION as DCDB_PROTOCOL_VERSION
    from pmxcfs.dfsm import codec
    from pmxcfs.tree import Tree

    def emit(**obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    index = Tree().encode_index()
    me = os.getpid()

    async def main() -> None:
        cpg = Cpg()
        epoch: list[codec.Epoch] = []
        outbox_tx, outbox_rx = trio.open_memory_channel[bytes](1000)

        def on_deliver(ev: CpgDeliver) -> None:
            data = bytes(ev.payload)
            if (ev.nodeid, ev.pid) == (cpg.nodeid, me):
                emit(ev="own", len=len(data), head=data[:32].hex())
            try:
                mtype, _sub, version, _t = codec.peek_header(data)
                if version != DCDB_PROTOCOL_VERSION or len(data) < codec.STATE_SIZE:
                    return
                msg = codec.decode(data)
            except codec.WireError:
                return
            if not isinstance(msg, codec.StateMessage):
                return
            if mtype == codec.MsgType.SYNC_START:
                epoch[:] = [msg.epoch]
                state = codec.encode_state(
                    codec.MsgType.STATE, 1, int(time.time()), msg.epoch, index
                )
                outbox_tx.send_nowait(state)
                emit(ev="state_sent", epoch=msg.epoch.pack().hex(), from_node=ev.nodeid)
            elif mtype == codec.MsgType.UPDATE_COMPLETE and epoch and msg.epoch == epoch[0]:
                emit(ev="synced", from_node=ev.nodeid)

        async def pump() -> None:
            async for ev in cpg:
                if isinstance(ev, CpgConfchg):
                    emit(ev="confchg", members=[[m.nodeid, m.pid] for m in ev.members],
                         left=[[m.nodeid, m.pid] for m in ev.left],
                         joined=[[m.nodeid, m.pid] for m in ev.joined])  # fmt: skip
                elif isinstance(ev, CpgDeliver):
                    on_deliver(ev)

        async def sender() -> None:
            async for data in outbox_rx:
                try:
                    await cpg.mcast(data)
                    emit(ev="sent", len=len(data))
                except CorosyncError as exc:
                    emit(ev="error", where="mcast", msg=str(exc), len=len(data))

        async def commands(cancel: trio.CancelScope) -> None:
            stream = trio.lowlevel.FdStream(os.dup(0))
            buf = b""
            while True:
                chunk = await stream.receive_some(1 << 20)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    cmd = json.loads(line)
                    if cmd["op"] == "mcast":
                        await outbox_tx.send(bytes.fromhex(cmd["hex"]))
                    elif cmd["op"] == "leave":
                        await cpg.leave()
                        emit(ev="left")
                    elif cmd["op"] == "exit":
                        cancel.cancel()
                        return
            cancel.cancel()

        try:
            async with trio.open_nursery() as n:
                n.start_soon(cpg.run)
                n.start_soon(pump)
                await cpg.join(PVE_DCDB_GROUP, include_nul=False)
                emit(ev="ready", nodeid=cpg.nodeid, pid=me, group=PVE_DCDB_GROUP.hex())
                n.start_soon(sender)
                n.start_soon(commands, n.cancel_scope)
        finally:
            cpg.finalize()

    trio.run(main)


# ============================================================================ test side


class FsError(AssertionError):
    """An fs agent command failed unexpectedly."""


def reference_binary() -> Path:
    """The C daemon to run on reference nodes: $PMXCFS_REFERENCE or ../shared/reference."""
    env = os.environ.get(REFERENCE_ENV)
    return Path(env) if env else SHARED / "reference" / "pmxcfs"


class PveNode:
    """One node of a :class:`PveCluster`: harness node, its daemon (ours, or the reference
    C binary when *is_reference*), the fs agent."""

    def __init__(self, pc: PveCluster, node: Node, is_reference: bool = False) -> None:
        self.pc = pc
        self.node = node
        self.name = node.name
        self.is_reference = is_reference
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_local = False
        #: more options for our daemon (e.g. ``--verify-interval``); the reference has none
        self.extra_args: list[str] = []
        self.agent: JsonProc | None = None
        self._next_id = 1
        self.log_path = node.tmpdir / "pmxcfs.log"

    # -- paths on the host side
    @property
    def db_dir(self) -> Path:
        return self.node.host_path(DB_DIR)

    @property
    def lost_found(self) -> Path:
        return self.db_dir / "lost+found"

    # -- daemon
    @property
    def daemon_running(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    @property
    def daemon_pid(self) -> int:
        if self.daemon is None:
            raise HarnessError(f"{self.name}: no daemon")
        return self.daemon.pid

    @property
    def kind(self) -> str:
        return "reference" if self.is_reference else "ours"

    def daemon_argv(self, local: bool = False) -> list[str]:
        if self.is_reference:
            # no path options: /etc/pve, /var/lib/pve-cluster, /run/pve-cluster and the
            # host corosync.conf are the node's private copies (harness bind mounts)
            return [str(reference_binary()), "-f", *(["-l"] if local else [])]
        argv = [sys.executable, "-m", "pmxcfs", "-f"]
        if local:
            argv.append("-l")
        return [
            *argv,
            "--mount", MOUNT, "--db-dir", DB_DIR, "--run-dir", RUN_DIR,
            "--pid-file", f"{RUN_DIR}/pmxcfs.pid", "--corosync-conf", COROSYNC_CONF,
            "--nodename", self.name, "--node-ip", self.node.addr,
            "--rrd-dir", RRD_DIR,  # private (under /run), never the host's RRD files
            *self.extra_args,
        ]  # fmt: skip

    def mounted(self) -> bool:
        """Our FUSE mount at /etc/pve in the node's mount namespace (seen from the host)."""
        try:
            text = Path(f"/proc/{self.node.holder_pid}/mounts").read_text()
        except OSError:
            return False
        return any(
            ln.split()[1] == MOUNT and ln.split()[2].startswith("fuse") for ln in text.splitlines()
        )

    def start_daemon(self, *, local: bool = False, timeout: float = 30.0) -> None:
        """Start the daemon (foreground) and wait until it answers on /etc/pve."""
        if self.daemon_running:
            raise HarnessError(f"{self.name}: daemon already running")
        if self.is_reference and self.mounted():
            # a killed (or aborted) reference leaves its dead FUSE mount; it cannot mount
            # over it, unlike ours
            self.node.run(["umount", "-l", MOUNT], check=False, timeout=30)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n===== start {self.kind} local={local} at {time.time():.3f}\n".encode())
            logf.flush()
            # the reference runs in the node's tmpdir: a core file of a crash stays there
            cwd = self.node.tmpdir if self.is_reference else REPO_ROOT
            self.daemon = self.node.popen(
                self.daemon_argv(local), cwd=str(cwd), stdout=logf, stderr=subprocess.STDOUT
            )
        self.daemon_local = local
        deadline = time.monotonic() + timeout
        while True:
            if self.daemon.poll() is not None:
                raise HarnessError(
                    f"{self.name}: daemon exited {self.daemon.returncode}\n{self.log_tail()}"
                )
            if self.mounted() and self.call("stat", path=".version", timeout=10)["ok"]:
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"{self.name}: daemon did not mount\n{self.log_tail()}")
            time.sleep(0.05)

    def stop_daemon(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and reap; SIGKILL if it does not exit.  Returns the exit status.

        The reference often aborts (-SIGABRT) or hangs at SIGTERM: it gets at most
        :data:`REFERENCE_STOP_TIMEOUT`, and either outcome counts as stopped."""
        p = self.daemon
        if p is None:
            return None
        if self.is_reference:
            timeout = min(timeout, REFERENCE_STOP_TIMEOUT)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.daemon = None
        return p.returncode

    def kill_daemon(self) -> None:
        """SIGKILL (a crash): the mount stays behind, dead; the next start clears it."""
        p = self.daemon
        if p is None:
            return
        if p.poll() is None:
            p.kill()
        p.wait(10)
        self.daemon = None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            lines = ["(no log)"]
        return f"--- {self.name} ({self.kind}) pmxcfs.log ---\n" + "\n".join(lines)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- fs agent
    def start_agent(self) -> None:
        if self.agent is not None and self.agent.popen.poll() is None:
            return
        self.agent = self.node.spawn_json(
            [sys.executable, "-u", "-m", "tests.cluster.pve_nodes", "fs", MOUNT],
            name=f"{self.name}-fs",
        )
        self.agent.wait_for("ready", timeout=30)

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.close(timeout=5)
            self.agent = None

    def send(self, op: str, **kw: Any) -> int:
        """Send a command without waiting; returns its id (see :meth:`result`)."""
        if self.agent is None:
            raise HarnessError(f"{self.name}: no fs agent")
        rid = self._next_id
        self._next_id += 1
        self.agent.send(id=rid, op=op, **kw)
        return rid

    def result(self, rid: int, timeout: float = 60.0) -> dict[str, Any]:
        assert self.agent is not None
        return self.agent.wait_for(
            lambda e: e.get("ev") == "result" and e.get("id") == rid, timeout=timeout
        )

    def call(self, op: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        """Run one fs command; the result dict has ok, value or errno."""
        return self.result(self.send(op, **kw), timeout)

    def ok(self, op: str, timeout: float = 60.0, **kw: Any) -> Any:
        """Run one fs command that must succeed; returns its value."""
        res = self.call(op, timeout, **kw)
        if not res["ok"]:
            raise FsError(f"{self.name}: {op} {kw} failed: {res.get('errno')} {res.get('msg')}")
        return res["value"]

    def err(self, op: str, timeout: float = 60.0, **kw: Any) -> str | None:
        """errno name of a command (None if it succeeded)."""
        res = self.call(op, timeout, **kw)
        return None if res["ok"] else str(res["errno"])

    def read(self, path: str) -> bytes | None:
        res = self.call("read", path=path)
        if not res["ok"]:
            if res["errno"] == "ENOENT":
                return None
            raise FsError(f"{self.name}: read {path}: {res['errno']}")
        return base64.b64decode(res["value"])

    def write(self, path: str, data: bytes | str, mode: str = "w", offset: int = 0) -> int:
        raw = data.encode() if isinstance(data, str) else data
        return int(self.ok("write", path=path, b64=base64.b64encode(raw).decode(),
                           mode=mode, offset=offset))  # fmt: skip

    def members(self) -> dict[str, Any]:
        raw = self.read(".members")
        return json.loads(raw or b"{}")

    def snapshot(self, root: str = "") -> Snapshot:
        snap = self.ok("snapshot", timeout=120, root=root)
        return {k: tuple(v) for k, v in snap.items()}

    def quorate_online(self) -> tuple[bool, list[str]]:
        """(quorate, online node names) as ``.members`` shows them."""
        m = self.members()
        q = bool(m.get("cluster", {}).get("quorate"))
        online = sorted(k for k, v in m.get("nodelist", {}).items() if v.get("online"))
        return q, online


class PveCluster:
    """N corosync nodes, each running a daemon in cluster mode.  Context manager.

    Nodes whose nodeid is in *reference* run the reference C daemon
    (:func:`reference_binary`), the others ours: a mixed cluster.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        reference: frozenset[int] = frozenset(),
        ready_timeout: float = 90.0,
        **cluster_kw: Any,
    ) -> None:
        reference = frozenset(reference)
        if not reference <= set(range(1, n + 1)):
            raise ValueError(f"reference nodeids {sorted(reference)} not in 1..{n}")
        if reference and not os.access(reference_binary(), os.X_OK):
            raise HarnessError(
                f"reference daemon {reference_binary()} is missing (set {REFERENCE_ENV})"
            )
        reap_stale_clusters()
        extra = REFERENCE_PRIVATE_DIRS if reference else ()
        self.cluster = Cluster(
            n, private_dirs=DEFAULT_PRIVATE_DIRS + PVE_PRIVATE_DIRS + extra, **cluster_kw
        )
        self.reference = reference
        self.nodes: list[PveNode] = []
        self._torn_down = False
        try:
            self.nodes = [PveNode(self, nd, nd.nodeid in reference) for nd in self.cluster]
            # One corosync.conf for every node (the harness makes per-node logfile paths):
            # the fresh databases then import the same bytes and no node's copy is "lost".
            conf = self.cluster[1].host_path(COROSYNC_CONF).read_bytes()
            for nd in self.cluster.nodes[1:]:
                nd.host_path(COROSYNC_CONF).write_bytes(conf)
            for pn in self.nodes:
                pn.start_agent()
            for pn in self.nodes:
                pn.start_daemon()
            self.wait_ready(timeout=ready_timeout)
        except BaseException:
            self.teardown()
            raise

    def __getitem__(self, i: int) -> PveNode:
        """``pc[1]`` is node1."""
        return self.nodes[i - 1]

    def __iter__(self) -> Iterator[PveNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __enter__(self) -> PveCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def logs(self) -> str:
        return "\n".join(pn.log_tail() for pn in self.nodes)

    def wait_ready(self, nodes: Sequence[PveNode] | None = None, timeout: float = 90.0) -> None:
        """Every node in *nodes* (default all) is quorate and sees all *nodes* online."""
        check = list(self.nodes if nodes is None else nodes)
        want = sorted(pn.name for pn in check)
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] = {}
        while True:
            for pn in check:
                if not pn.daemon_running:
                    raise HarnessError(f"{pn.name}: daemon is not running\n{pn.log_tail()}")
                q, online = pn.quorate_online()
                seen[pn.name] = (q, online)
            if all(q and set(want) <= set(on) for q, on in seen.values()):
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"cluster not ready after {timeout}s: {seen}\n{self.logs()}")
            time.sleep(0.2)

    def wait_converged(
        self, nodes: Sequence[PveNode] | None = None, timeout: float = 60.0, root: str = ""
    ) -> Snapshot:
        """Wait until all *nodes* show identical trees (below *root*); return that tree."""
        check = list(self.nodes if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        while True:
            snaps = [pn.snapshot(root) for pn in check]
            if all(s == snaps[0] for s in snaps[1:]):
                return snaps[0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"trees differ after {timeout}s:\n"
                    + describe_diff({pn.name: s for pn, s in zip(check, snaps, strict=True)})
                    + "\n" + self.logs()
                )  # fmt: skip
            time.sleep(0.3)

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        errors: list[str] = []
        for pn in self.nodes:
            with contextlib.suppress(Exception):
                pn.stop_agent()
        # SIGTERM all daemons at once, then reap (they unmount themselves)
        for pn in self.nodes:
            if pn.daemon is not None and pn.daemon.poll() is None:
                with contextlib.suppress(OSError):
                    pn.daemon.send_signal(signal.SIGTERM)
        for pn in self.nodes:
            try:
                pn.stop_daemon(timeout=15)
            except Exception as exc:
                errors.append(f"{pn.name} daemon: {exc}")
        try:
            self.cluster.teardown()
        except HarnessError as exc:
            errors.append(str(exc))
        if errors:
            raise HarnessError("; ".join(errors))


def describe_diff(snaps: dict[str, Snapshot]) -> str:
    """Human-readable differences between per-node snapshots (at most 20 lines)."""
    names = list(snaps)
    paths = sorted(set().union(*[set(s) for s in snaps.values()]))
    lines = []
    for p in paths:
        vals = {n: snaps[n].get(p) for n in names}
        if len({json.dumps(v) for v in vals.values()}) > 1:
            lines.append(f"  {p}: " + "; ".join(f"{n}={v}" for n, v in vals.items()))
    more = f"\n  ... {len(lines) - 20} more" if len(lines) > 20 else ""
    return "\n".join(lines[:20]) + more


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "fs":
        fs_agent_main(sys.argv[2] if len(sys.argv) > 2 else MOUNT)
    elif len(sys.argv) >= 2 and sys.argv[1] == "hostile":
        hostile_agent_main()
    else:
        sys.exit(f"usage: {sys.argv[0]} fs [MOUNT] | hostile")
