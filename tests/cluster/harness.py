"""Real multi-node corosync test clusters on one machine.

Each node is a network namespace (veth to a private bridge, own 10.213.X.i address)
plus a mount+UTS namespace held open by a long-lived "holder" process.  Inside it,
tmpdirs are bind-mounted over the per-node private directories (corosync config, state,
/run, ...), /etc/hosts resolves every node name, /dev/shm is a private tmpfs (libqb IPC
files) and the hostname is ``nodeN``.  Every node runs its own ``corosync -f``.

Everything the harness creates is recorded in a state file under ``STATE_DIR`` so that
teardown is idempotent and a later run can reap what a killed run (SIGKILL of pytest)
left behind -- but only resources whose recorded owner process is gone.  Processes are
only ever signalled by pid (checked against their start time), never by name.

Must run as root (namespaces, veths, bridges, mounts).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

#: Directories every node gets its own (empty) copy of.  Extend per cluster with the
#: ``private_dirs`` argument (e.g. ``DEFAULT_PRIVATE_DIRS + PVE_PRIVATE_DIRS``).
DEFAULT_PRIVATE_DIRS: tuple[str, ...] = (
    "/etc/corosync",
    "/var/lib/corosync",
    "/var/log/corosync",
    "/run",
)
#: What pmxcfs tests will want on top of the corosync ones.
PVE_PRIVATE_DIRS: tuple[str, ...] = ("/etc/pve", "/var/lib/pve-cluster")

STATE_DIR = Path("/run/pmxcfs-test-clusters")
#: inside each node (a private dir), so every node's corosync.conf is identical
COROSYNC_LOG = "/var/log/corosync/corosync.log"
MAX_NODES = 5
REPO_ROOT = Path(__file__).resolve().parents[2]
CPG_AGENT = Path(__file__).resolve().parent / "cpg_agent.py"

Argv = Sequence[str] | str


class HarnessError(RuntimeError):
    """The test cluster could not be built or did not reach the wanted state."""


# --------------------------------------------------------------------------- helpers


def _proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of *pid*, to tell a pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    """*pid* still runs the process started at *start* (zombies count as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] not in ("Z", "X") and (start is None or int(fields[19]) == start)


def _sh(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host command (ip ...) and raise with its stderr on failure."""
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and res.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _netns_inode(ns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return None


def _pids_in_netns(ns: str) -> list[int]:
    """All processes living in our network namespace *ns* (all of them are ours)."""
    ino = _netns_inode(ns)
    if ino is None:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _terminate(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM, wait, SIGKILL -- a Popen we own (not yet reaped, so the pid is ours)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def _kill_recorded(pids: Sequence[tuple[int, int | None]], timeout: float = 3.0) -> None:
    """Signal recorded (pid, start) pairs still alive: TERM, then KILL."""
    live = [(p, s) for p, s in pids if _alive(p, s)]
    for p, _s in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in live):
        time.sleep(0.05)
    for p, s in live:
        if _alive(p, s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def _argv(cmd: Argv) -> list[str]:
    return ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)


# ----------------------------------------------------------------- JSON line processes


class JsonProc:
    """A process in a node that prints one JSON object per stdout line.

    A reader thread appends every parsed line to ``history``; tests wait on it with
    :meth:`wait_for` (bounded timeouts) and send commands as JSON lines on stdin.
    """

    def __init__(self, popen: subprocess.Popen[str], name: str, stderr_path: Path) -> None:
        self.popen = popen
        self.name = name
        self.stderr_path = stderr_path
        self.history: list[dict[str, Any]] = []
        self.noise: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._reader, name=f"json-{name}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _reader(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                with self._cond:
                    self.noise.append(line)
                continue
            with self._cond:
                self.history.append(obj)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def send(self, **cmd: Any) -> None:
        """Write one command line (``send(op="mcast", data="x")``)."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(cmd) + "\n")
        self.popen.stdin.flush()

    def mark(self) -> int:
        """Position in ``history``; pass it as *start* to only look at newer events."""
        with self._cond:
            return len(self.history)

    def events(self, ev: str | None = None, start: int = 0) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.history[start:] if ev is None or e.get("ev") == ev]

    def stderr_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_for(
        self,
        pred: Callable[[dict[str, Any]], bool] | str,
        timeout: float = 30.0,
        start: int = 0,
    ) -> dict[str, Any]:
        """First event at index >= *start* matching *pred* (or with ``ev == pred``)."""
        match = (lambda e: e.get("ev") == pred) if isinstance(pred, str) else pred
        deadline = time.monotonic() + timeout
        idx = start
        with self._cond:
            while True:
                while idx < len(self.history):
                    if match(self.history[idx]):
                        return self.history[idx]
                    idx += 1
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    break
                self._cond.wait(left)
        raise HarnessError(
            f"{self.name}: no matching event within {timeout}s "
            f"(eof={self._eof}, rc={self.popen.poll()}); last events: {self.history[-5:]}\n"
            f"stderr:\n{self.stderr_tail()}"
        )

    def wait_count(
        self,
        pred: Callable[[dict[str, Any]], bool] | str,
        n: int,
        timeout: float = 30.0,
        start: int = 0,
    ) -> list[dict[str, Any]]:
        """Wait until at least *n* matching events exist; return all of them."""
        match = (lambda e: e.get("ev") == pred) if isinstance(pred, str) else pred
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.history[start:] if match(e)]
                if len(found) >= n:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    break
                self._cond.wait(left)
        raise HarnessError(
            f"{self.name}: {len(found)}/{n} matching events within {timeout}s "
            f"(eof={self._eof}, rc={self.popen.poll()}); last: {self.history[-3:]}\n"
            f"stderr:\n{self.stderr_tail()}"
        )

    def close(self, timeout: float = 5.0) -> int | None:
        """Close stdin (agents exit on EOF), then terminate if needed."""
        if self.popen.stdin and not self.popen.stdin.closed:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate(self.popen)
        self._thread.join(timeout=5)
        return self.popen.returncode


# ------------------------------------------------------------------------------ nodes


class Node:
    """One cluster node: namespaces, private dirs, its corosync, processes started in it."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.nodeid = index
        self.name = f"node{index}"
        self.addr = f"{cluster.subnet}.{index}"
        self.netns = f"pxc{cluster.suffix}n{index}"
        self.veth_host = f"pxv{cluster.suffix}{index}"
        self.veth_peer = f"pxp{cluster.suffix}{index}"
        self.tmpdir = cluster.tmpdir / self.name
        self.holder: subprocess.Popen[str] | None = None
        self.corosync: subprocess.Popen[bytes] | None = None
        self.procs: list[subprocess.Popen[Any]] = []
        self.json_procs: list[JsonProc] = []
        self.partitioned = False

    # -- paths
    def host_path(self, path: str) -> Path:
        """Host-side path of *path* as seen inside the node (for private dirs only)."""
        p = "/" + path.lstrip("/")
        for d in sorted(self.cluster.private_dirs, key=len, reverse=True):
            if p == d or p.startswith(d.rstrip("/") + "/"):
                return self.tmpdir / "fs" / p.lstrip("/")
        raise ValueError(f"{path} is not inside a private dir of {self.name}")

    @property
    def corosync_log(self) -> Path:
        """Host path of the node's corosync log (``/var/log/corosync/corosync.log``)."""
        return self.host_path(COROSYNC_LOG)

    @property
    def holder_pid(self) -> int:
        if self.holder is None:
            raise HarnessError(f"{self.name} is not set up")
        return self.holder.pid

    # -- running things inside
    def ns_argv(self, cmd: Argv, cwd: str | None = None) -> list[str]:
        """argv that runs *cmd* inside this node's mount, UTS and network namespaces."""
        return [
            "nsenter", "-t", str(self.holder_pid), "-m", "-u", "-n",
            f"--wd={cwd or '/'}", "--", *_argv(cmd),
        ]  # fmt: skip

    def run(
        self,
        cmd: Argv,
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run *cmd* in the node to completion; stdout/stderr captured as text."""
        res = subprocess.run(
            self.ns_argv(cmd, cwd),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=None if env is None else {**os.environ, **env},
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise HarnessError(
                f"{self.name}: {_argv(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}"
            )
        return res

    def popen(
        self,
        cmd: Argv,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        die_with_parent: bool = True,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start a long-lived process in the node; it is killed at teardown.

        With *die_with_parent* it gets PR_SET_PDEATHSIG (``setpriv``) so it dies with the
        test process where the kernel keeps that setting (corosync loses it); whatever
        survives a killed pytest is removed by the cluster's guardian process.
        """
        argv = self.ns_argv(cmd, cwd)
        if die_with_parent:
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            argv, env=None if env is None else {**os.environ, **env}, **kwargs
        )
        self.procs.append(proc)
        self.cluster._record_pid(proc.pid)
        return proc

    def spawn_json(
        self, cmd: Argv, *, name: str | None = None, env: Mapping[str, str] | None = None
    ) -> JsonProc:
        """Start a JSON-lines process (stdin commands, stdout events) in the node."""
        name = name or f"{self.name}-json{len(self.json_procs)}"
        err_path = self.tmpdir / f"{name}.stderr"
        err = open(err_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = self.popen(
                cmd,
                cwd=str(REPO_ROOT),
                env={"PYTHONUNBUFFERED": "1", **(env or {})},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        finally:
            err.close()
        jp = JsonProc(proc, name, err_path)
        self.json_procs.append(jp)
        return jp

    def cpg_agent(self, *args: str, name: str | None = None) -> JsonProc:
        """Start ``tests/cluster/cpg_agent.py ARGS`` in the node with this interpreter."""
        return self.spawn_json([sys.executable, "-u", str(CPG_AGENT), *args], name=name)

    # -- corosync
    @property
    def corosync_running(self) -> bool:
        return self.corosync is not None and self.corosync.poll() is None

    def start_corosync(self) -> None:
        """Start ``corosync -f`` in the node (no-op if it already runs)."""
        if self.corosync_running:
            return
        out = open(self.tmpdir / "corosync.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.corosync = self.popen(["corosync", "-f"], stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()

    def stop_corosync(self, *, kill: bool = False, timeout: float = 20.0) -> None:
        """Stop this node's corosync: SIGTERM (or SIGKILL with *kill*) and reap it."""
        proc = self.corosync
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
            proc.wait(timeout=10)
        else:
            _terminate(proc, timeout)

    def quorumtool(self) -> dict[str, str]:
        """``corosync-quorumtool -s`` as a dict of its ``Key: value`` lines."""
        res = self.run(["corosync-quorumtool", "-s"], check=False, timeout=15)
        info: dict[str, str] = {"_rc": str(res.returncode)}
        for line in res.stdout.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
        return info

    def member_count(self) -> int | None:
        """Totem membership size seen by this node's corosync (None if unreachable)."""
        if not self.corosync_running:
            return None
        info = self.quorumtool()
        try:
            return int(info["Nodes"])
        except (KeyError, ValueError):
            return None

    def quorate(self) -> bool | None:
        if not self.corosync_running:
            return None
        q = self.quorumtool().get("Quorate")
        return None if q is None else q.lower().startswith("yes")

    # -- network
    def partition(self) -> None:
        """Cut this node off the bridge (host side of its veth down)."""
        _sh(["ip", "link", "set", self.veth_host, "down"])
        self.partitioned = True

    def heal(self) -> None:
        _sh(["ip", "link", "set", self.veth_host, "up"])
        self.partitioned = False

    # -- setup / teardown
    def _setup(self) -> None:
        c = self.cluster
        fs = self.tmpdir / "fs"
        for d in c.private_dirs:
            (fs / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        _sh(["ip", "netns", "add", self.netns])
        c._record("netns", self.netns)
        _sh(["ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_peer])
        c._record("links", self.veth_host)
        _sh(["ip", "link", "set", self.veth_peer, "netns", self.netns])
        _sh(["ip", "link", "set", self.veth_host, "master", c.bridge, "up"])
        n = ["ip", "-n", self.netns]
        _sh([*n, "link", "set", self.veth_peer, "name", "eth0"])
        _sh([*n, "addr", "add", f"{self.addr}/24", "dev", "eth0"])
        _sh([*n, "link", "set", "eth0", "up"])
        _sh([*n, "link", "set", "lo", "up"])

        self.holder = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", "ip", "netns", "exec", self.netns,
             "unshare", "--mount", "--uts", "--propagation", "private", "--",
             "sh", "-c", "echo ready; exec sleep infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        c._record_pid(self.holder.pid)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            raise HarnessError(f"{self.name}: namespace holder failed (rc={self.holder.poll()})")
        self.holder.stdout.close()

        # private dirs (parents first), hosts file, private /dev/shm, hostname
        for d in sorted(c.private_dirs, key=len):
            if not os.path.isdir(d):
                # a mountpoint must exist; an empty directory is left on the host
                os.makedirs(d, exist_ok=True)
            self.run(["mount", "--bind", str(fs / d.lstrip("/")), d])
        hosts = self.tmpdir / "hosts"
        hosts.write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
            + "".join(f"{nd.addr}\t{nd.name}\n" for nd in c.nodes)
        )
        self.run(["mount", "--bind", str(hosts), "/etc/hosts"])
        self.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs", "/dev/shm"])
        self.run(["hostname", self.name])

        cdir = self.host_path("/etc/corosync")
        (cdir / "corosync.conf").write_text(c.corosync_conf(self))
        key = cdir / "authkey"
        key.write_bytes(c.authkey)
        key.chmod(0o400)

    def _teardown_procs(self) -> None:
        for jp in list(self.json_procs):
            with contextlib.suppress(Exception):
                if jp.popen.stdin:
                    jp.popen.stdin.close()
        for proc in reversed(self.procs):
            if proc is self.corosync:
                continue
            with contextlib.suppress(Exception):
                _terminate(proc, 3.0)
        with contextlib.suppress(Exception):
            self.stop_corosync(timeout=10.0)
        # anything else left in our namespace (children of the above, holder) is ours
        pids = [(p, _proc_start_time(p)) for p in _pids_in_netns(self.netns)]
        _kill_recorded(pids, timeout=2.0)
        if self.holder is not None:
            with contextlib.suppress(Exception):
                _terminate(self.holder, 2.0)
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        for jp in self.json_procs:
            jp._thread.join(timeout=2)


# ---------------------------------------------------------------------------- cluster

_LIVE: set[Cluster] = set()


class Cluster:
    """N corosync nodes in namespaces on a private bridge.  Use as a context manager
    or via the ``cluster`` / ``module_cluster`` fixtures; :meth:`teardown` is idempotent.

    *private_dirs* are bind-mounted per node on top of :data:`DEFAULT_PRIVATE_DIRS`
    (always included).  With ``start=False`` nothing runs yet: adjust files, then
    :meth:`start` and :meth:`wait_members`.
    """

    def __init__(
        self,
        n: int,
        *,
        private_dirs: Sequence[str] = DEFAULT_PRIVATE_DIRS,
        cluster_name: str = "testclu",
        config_version: int = 1,
        token: int = 1000,
        sched_rr: bool = True,
        start: bool = True,
        wait: bool = True,
        wait_timeout: float = 60.0,
    ) -> None:
        if os.geteuid() != 0:
            raise HarnessError("the cluster harness needs root (namespaces, veths, mounts)")
        if not 1 <= n <= MAX_NODES:
            raise ValueError(f"1..{MAX_NODES} nodes, not {n}")
        self.suffix = secrets.token_hex(3)
        self.subnet = f"10.213.{secrets.randbelow(250) + 1}"
        self.bridge = f"pxb{self.suffix}"
        self.cluster_name = cluster_name
        self.config_version = config_version
        self.token = token
        #: corosync's default realtime scheduling (SCHED_RR 99), as on PVE hosts
        self.sched_rr = sched_rr
        #: nodeid -> name written into the nodelist instead of "nodeN"
        self.conf_names: dict[int, str] = {}
        # corosync's own dirs are always private; *private_dirs* adds to them
        dirs = [*DEFAULT_PRIVATE_DIRS, *private_dirs]
        self.private_dirs = tuple(dict.fromkeys("/" + d.strip("/") for d in dirs))
        self.authkey = os.urandom(128)
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"pxc-{self.suffix}-"))
        self.state_file = STATE_DIR / f"{self.suffix}.json"
        self._state: dict[str, Any] = {
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
            "bridge": None,
            "links": [],
            "netns": [],
            "pids": [],
            "tmpdir": str(self.tmpdir),
        }
        self._torn_down = False
        self.nodes = [Node(self, i) for i in range(1, n + 1)]
        _LIVE.add(self)
        self._save_state()
        # A guardian process outside every namespace cleans up if we are SIGKILLed:
        # it waits for EOF on this pipe (our death closes it), then removes whatever
        # the state file still lists.  Its own session keeps it out of Ctrl-C.
        self._guard: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, __file__, "--guard", str(self.state_file)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            self._setup()
            if start:
                self.start()
                if wait:
                    self.wait_members(n, timeout=wait_timeout)
        except BaseException:
            self.teardown()
            raise

    # -- state file (for reaping after a killed run)
    def _save_state(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self.state_file)

    def _record(self, kind: str, value: str) -> None:
        self._state[kind].append(value)
        self._save_state()

    def _record_pid(self, pid: int) -> None:
        self._state["pids"].append([pid, _proc_start_time(pid)])
        self._save_state()

    # -- lifecycle
    def _setup(self) -> None:
        _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._state["bridge"] = self.bridge
        self._save_state()
        _sh(["ip", "link", "set", self.bridge, "up"])
        for node in self.nodes:
            node.tmpdir.mkdir()
            node._setup()

    def corosync_conf(self, node: Node) -> str:
        """corosync.conf text (the same for every node; *node* kept for overrides)."""
        nodes = "".join(
            f"  node {{\n    name: {self.conf_names.get(nd.nodeid, nd.name)}\n"
            f"    nodeid: {nd.nodeid}\n"
            f"    quorum_votes: 1\n    ring0_addr: {nd.addr}\n  }}\n"
            for nd in self.nodes
        )
        return (
            "totem {\n  version: 2\n"
            f"  cluster_name: {self.cluster_name}\n  config_version: {self.config_version}\n"
            "  transport: knet\n"
            f"  token: {self.token}\n"
            "  crypto_cipher: aes256\n  crypto_hash: sha256\n"
            "  interface {\n    linknumber: 0\n  }\n}\n"
            f"nodelist {{\n{nodes}}}\n"
            + ("" if self.sched_rr else "system {\n  sched_rr: no\n}\n")
            + "quorum {\n  provider: corosync_votequorum\n}\n"
            "logging {\n  to_stderr: yes\n  to_syslog: no\n  to_logfile: yes\n"
            f"  logfile: {COROSYNC_LOG}\n  timestamp: on\n  debug: off\n}}\n"
        )

    def write_config(self) -> None:
        """(Re)write every node's corosync.conf from the current settings."""
        for node in self.nodes:
            (node.host_path("/etc/corosync") / "corosync.conf").write_text(self.corosync_conf(node))

    def reload_config(
        self, *, config_version: int | None = None, names: Mapping[int, str] | None = None
    ) -> None:
        """Change config_version / node names in every corosync.conf and make the
        running corosyncs re-read it (``corosync-cfgtool -R``), like a PVE config edit."""
        if config_version is not None:
            self.config_version = config_version
        if names is not None:
            self.conf_names = dict(names)
        self.write_config()
        node = next(nd for nd in self.nodes if nd.corosync_running)
        node.run(["corosync-cfgtool", "-R"], timeout=30)

    def start(self) -> None:
        for node in self.nodes:
            node.start_corosync()

    def wait_members(
        self, n: int | None = None, nodes: Sequence[Node] | None = None, timeout: float = 60.0
    ) -> None:
        """Wait until every node in *nodes* (default: all) sees *n* (default: all) members."""
        want = len(self.nodes) if n is None else n
        check = list(self.nodes if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        while True:
            seen = {nd.name: nd.member_count() for nd in check}
            if all(v == want for v in seen.values()):
                return
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"members: want {want}, seen {seen} after {timeout}s\n" + self.log_tail()
                )
            time.sleep(0.25)

    def wait_quorate(
        self, value: bool, nodes: Sequence[Node] | None = None, timeout: float = 60.0
    ) -> None:
        check = list(self.nodes if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        while True:
            seen = {nd.name: nd.quorate() for nd in check}
            if all(v is value for v in seen.values()):
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"quorate: want {value}, seen {seen} after {timeout}s")
            time.sleep(0.25)

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for nd in self.nodes:
            try:
                text = nd.corosync_log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log)"]
            out.append(f"--- {nd.name} corosync.log ---\n" + "\n".join(text))
        return "\n".join(out)

    def heal_all(self) -> None:
        for nd in self.nodes:
            if nd.partitioned:
                nd.heal()

    def teardown(self) -> None:
        """Stop everything and delete every resource this cluster created. Idempotent."""
        if self._torn_down:
            return
        errors: list[str] = []
        # signal everything first so the nodes shut down in parallel
        for node in self.nodes:
            for proc in [*node.procs, node.corosync]:
                if proc is not None and proc.poll() is None:
                    with contextlib.suppress(OSError):
                        proc.terminate()
        for node in self.nodes:
            try:
                node._teardown_procs()
            except Exception as e:  # keep going: the rest must still be removed
                errors.append(f"{node.name} procs: {e}")
        errors += _remove_resources(self._state)
        with contextlib.suppress(OSError):
            self.state_file.unlink()
        if self._guard is not None:
            with contextlib.suppress(Exception):
                assert self._guard.stdin is not None
                self._guard.stdin.close()
                self._guard.wait(timeout=10)
            self._guard = None
        self._torn_down = True
        _LIVE.discard(self)
        if errors:
            raise HarnessError("teardown problems: " + "; ".join(errors))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def __getitem__(self, i: int) -> Node:
        """``cluster[1]`` is node1 (1-based like the node ids)."""
        return self.nodes[i - 1]

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __hash__(self) -> int:
        return id(self)


def _remove_resources(state: Mapping[str, Any]) -> list[str]:
    """Kill recorded processes and delete netns/links/bridge/tmpdir from a state record."""
    errors: list[str] = []
    pids = [(int(p), s) for p, s in state.get("pids", [])]
    for ns in state.get("netns", []):
        pids += [(p, _proc_start_time(p)) for p in _pids_in_netns(ns)]
    _kill_recorded(pids, timeout=3.0)
    for link in state.get("links", []):
        if Path(f"/sys/class/net/{link}").exists():
            res = _sh(["ip", "link", "del", link], check=False)
            if res.returncode != 0 and Path(f"/sys/class/net/{link}").exists():
                errors.append(f"link {link}: {res.stderr.strip()}")
    for ns in state.get("netns", []):
        if Path(f"/run/netns/{ns}").exists():
            res = _sh(["ip", "netns", "del", ns], check=False)
            if res.returncode != 0:
                errors.append(f"netns {ns}: {res.stderr.strip()}")
    br = state.get("bridge")
    if br and Path(f"/sys/class/net/{br}").exists():
        res = _sh(["ip", "link", "del", br], check=False)
        if res.returncode != 0:
            errors.append(f"bridge {br}: {res.stderr.strip()}")
    tmp = state.get("tmpdir")
    if tmp and os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    return errors


def reap_stale_clusters() -> list[str]:
    """Remove clusters recorded by harness runs whose owner process no longer exists."""
    reaped: list[str] = []
    if not STATE_DIR.is_dir():
        return reaped
    for f in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(state["owner_pid"]), state.get("owner_start")):
            continue  # a live run (maybe another developer's): not ours to touch
        _remove_resources(state)
        with contextlib.suppress(OSError):
            f.unlink()
        reaped.append(f.stem)
    return reaped


def _guard_main(state_file: str) -> None:
    """Guardian: after the owner died (pipe EOF), remove what it left behind."""
    sys.stdin.buffer.read()
    path = Path(state_file)
    deadline = time.monotonic() + 60
    while path.exists() and time.monotonic() < deadline:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.2)
            continue
        if not _alive(int(state["owner_pid"]), state.get("owner_start")):
            _remove_resources(state)
            with contextlib.suppress(OSError):
                path.unlink()
            return
        time.sleep(0.2)  # owner still finishing its own teardown


@atexit.register
def _teardown_live_clusters() -> None:
    """Last resort when pytest is interrupted before fixture finalizers ran."""
    for c in list(_LIVE):
        with contextlib.suppress(Exception):
            c.teardown()


# ---------------------------------------------------------------------------- fixtures


class ClusterFactory:
    """Callable that builds clusters and tears all of them down on :meth:`close`."""

    def __init__(self) -> None:
        self.clusters: list[Cluster] = []
        reap_stale_clusters()

    def __call__(self, n: int = 3, **kwargs: Any) -> Cluster:
        c = Cluster(n, **kwargs)
        self.clusters.append(c)
        return c

    def close(self) -> None:
        errors = []
        for c in reversed(self.clusters):
            try:
                c.teardown()
            except HarnessError as e:
                errors.append(str(e))
        self.clusters.clear()
        if errors:
            raise HarnessError("; ".join(errors))


@pytest.fixture
def cluster() -> Iterator[ClusterFactory]:
    """Factory fixture: ``c = cluster(3)`` gives a running 3-node cluster, torn down
    after the test (also on failure)."""
    factory = ClusterFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_cluster() -> Iterator[ClusterFactory]:
    """Like ``cluster`` but torn down after the module, so tests can share one."""
    factory = ClusterFactory()
    try:
        yield factory
    finally:
        factory.close()


__all__ = [
    "DEFAULT_PRIVATE_DIRS",
    "PVE_PRIVATE_DIRS",
    "Cluster",
    "ClusterFactory",
    "HarnessError",
    "JsonProc",
    "Node",
    "cluster",
    "module_cluster",
    "reap_stale_clusters",
]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--guard":
    _guard_main(sys.argv[2])
