"""Jepsen-style fault schedules on real corosync clusters (issue 10).

A schedule is drawn from a seed (:func:`make_schedule`): faults one every few seconds --
minority partitions and heals (the node's veth down/up), SIGKILL or SIGTERM of a daemon and
its restart, SIGSTOP/SIGCONT pauses.  While :class:`FaultRun` plays it on a
:class:`PveCluster`, a writer in every node (tests/cluster/fault_writer.py) creates new files
and reports each one acknowledged.  At the end everything is healed and restarted, the
cluster converges, and :class:`Report` says whether any acknowledged file was lost, whether
trees differ, whether a daemon died that the schedule did not kill, and whether a syscall
hung past the bound.  A failed report carries the seed, the fault log with times, where lost
files went (lost+found) and the daemons' log tails, so any run can be replayed:

    scripts/fault-schedule --seeds 7 --kind overlap --seconds 60 --nodes 3 --mix ours

Kinds: ``mixed`` (every fault), ``partition`` (partitions and heals only), ``overlap``
(a heal and the next partition of another node in the same second: issue 10's loss 2).
Mixes: ``ours`` (all nodes ours), ``mixed`` (ours on node1, the reference elsewhere),
``reversed`` (the reference on node1, ours elsewhere); and, to compare, ``reference``
(the reference everywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pmxcfs.fs.deathwatch import connection_of
from tests.cluster.fault_report import Lost, Report
from tests.cluster.harness import HarnessError, JsonProc
from tests.cluster.pve_nodes import MOUNT, PveCluster, PveNode, Snapshot, describe_diff

KINDS = ("mixed", "partition", "overlap")
MIXES = ("ours", "mixed", "reversed")
SUBDIR = "jepsen"
#: errors that say the daemon went away, not that the call failed: it may have taken effect
INDETERMINATE = frozenset({"ECONNABORTED", "ENOTCONN", "EINTR"})
#: restarts of a daemon that keeps exiting on its own before the run stops trying
MAX_RESTARTS = 3
#: SIGTERM grace before SIGKILL (the harness then waits 10 s more): together longer than the
#: default hang bound, so a caller stuck on a daemon that does not stop counts as hung
STOP_TIMEOUT = 25.0

# ============================================================================ schedule


@dataclass(frozen=True)
class Fault:
    """One planned fault: *op* on node *node* at *t* seconds after the schedule starts.

    op: partition, heal, kill (SIGKILL), term (SIGTERM), start (restart the daemon),
    pause (SIGSTOP), cont (SIGCONT)."""

    t: float
    op: str
    node: int

    def __str__(self) -> str:
        return f"+{self.t:6.2f}s {self.op:9} node{self.node}"


def make_schedule(
    seed: int, kind: str, nodes: int, seconds: float, gap: tuple[float, float] = (3.0, 8.0)
) -> list[Fault]:
    """The faults of (*seed*, *kind*) on *nodes* nodes within *seconds* (recoveries of the
    last ones may come a little later).  At most a minority is ever partitioned, and at most
    a minority of daemons is down or paused at once; the same arguments give the same list."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    rng = random.Random(f"{seed}:{kind}:{nodes}")
    minority = (nodes - 1) // 2
    ids = list(range(1, nodes + 1))
    parted: set[int] = set()
    busy_until = dict.fromkeys(ids, 0.0)  # daemon down or paused until then
    out: list[Fault] = []

    def partition(t: float, exclude: Sequence[int] = ()) -> None:
        free = [i for i in ids if i not in parted and i not in exclude]
        if free and len(parted) < minority:
            n = rng.choice(free)
            parted.add(n)
            out.append(Fault(t, "partition", n))

    def heal(t: float) -> int:
        n = rng.choice(sorted(parted))
        parted.discard(n)
        out.append(Fault(t, "heal", n))
        return n

    def net_step(t: float, p_overlap: float) -> None:
        if parted and (len(parted) >= minority or rng.random() < 0.6):
            healed = heal(t)
            if rng.random() < p_overlap:  # the next partition in the same second
                partition(round(t + rng.uniform(0.05, 0.9), 2), exclude=[healed])
        else:
            partition(t)

    def daemon_step(t: float, op: str) -> None:
        busy = [i for i in ids if busy_until[i] > t]
        free = [i for i in ids if busy_until[i] <= t]
        if len(busy) >= minority or not free:
            net_step(t, 0.3)
            return
        n = rng.choice(free)
        if op == "pause":
            back = round(t + rng.uniform(1.0, 6.0), 2)
            out.extend([Fault(t, "pause", n), Fault(back, "cont", n)])
        else:
            back = round(t + rng.uniform(0.0 if op == "kill" else 0.5, 3.0), 2)
            out.extend([Fault(t, op, n), Fault(back, "start", n)])
        busy_until[n] = back + 1.0

    t = round(rng.uniform(1.0, gap[0]), 2)
    while t < seconds:
        if kind == "partition":
            net_step(t, 0.0)
        elif kind == "overlap":
            net_step(t, 0.85)
        else:
            r = rng.random()
            if r < 0.4:
                net_step(t, 0.3)
            else:
                daemon_step(t, "kill" if r < 0.6 else "term" if r < 0.8 else "pause")
        t = round(t + rng.uniform(*gap), 2)
    return sorted(out, key=lambda f: f.t)  # stable: same-time faults keep their order


def reference_nodes(mix: str, nodes: int) -> frozenset[int]:
    """Node ids that run the reference daemon for *mix*."""
    if mix == "ours":
        return frozenset()
    if mix == "mixed":
        return frozenset(range(2, nodes + 1))
    if mix == "reversed":
        return frozenset({1})
    if mix == "reference":
        return frozenset(range(1, nodes + 1))
    raise ValueError(f"mix must be one of {MIXES}, not {mix!r}")


# ============================================================================ runner


@dataclass
class _Writer:
    pn: PveNode
    proc: JsonProc
    reference: bool
    stopped_at: float | None = None


class FaultRun:
    """Play *schedule* on *pc* with a writer in every node, then heal, converge and check."""

    def __init__(
        self,
        pc: PveCluster,
        schedule: Sequence[Fault],
        report: Report,
        *,
        writer_pause: float = 0.02,
        say: Callable[[str], None] = lambda s: None,
    ) -> None:
        self.pc = pc
        self.schedule = list(schedule)
        self.rep = report
        self.pause = writer_pause
        self.say = say
        self.t0 = time.monotonic()
        self.writers: list[_Writer] = []
        self.by_id = {pn.node.nodeid: pn for pn in pc}
        self.paused: set[int] = set()
        #: daemons the schedule stopped and has not restarted yet
        self.down: set[int] = set()
        #: daemon pid -> its FUSE connection (to abort it if the daemon gets stuck)
        self.fuse_conn: dict[int, str | None] = {}
        #: daemons that exited unexpectedly: restarted at most MAX_RESTARTS times
        self.restarts: Counter[int] = Counter()

    # -- helpers
    def now(self) -> float:
        return time.monotonic() - self.t0

    def node(self, i: int) -> PveNode:
        return self.by_id[i]

    @staticmethod
    def is_ref(pn: PveNode) -> bool:
        return pn.is_reference

    def log(self, text: str, at: float | None = None) -> None:
        """One line of the fault log (*at*: when the action began, default now), also
        appended to every daemon log (they have no timestamps of their own) so a log tail
        shows where each fault fell."""
        line = f"+{self.now() if at is None else at:7.2f}s {text}"
        self.rep.fault_log.append(line)
        self.say(line)
        for pn in self.pc:
            with contextlib.suppress(OSError), open(pn.log_path, "a") as f:
                f.write(f"=== fault {line}\n")

    # -- the run
    def run(self, seconds: float) -> Report:
        self._prepare()
        self.t0 = time.monotonic()
        self.log(f"start: seed={self.rep.seed} kind={self.rep.kind} mix={self.rep.mix}")
        try:
            for f in self.schedule:
                self._sleep_until(f.t)
                self._apply(f)
            self._sleep_until(seconds)
        finally:
            self._finish()
        return self.rep

    def _prepare(self) -> None:
        for pn in self.pc:
            self.fuse_conn[pn.daemon_pid] = fuse_connection(pn)
        first = self.pc.nodes[0]
        first.ok("mkdir", path=SUBDIR)
        for pn in self.pc:
            deadline = time.monotonic() + 60
            while not pn.call("stat", path=SUBDIR)["ok"]:
                if time.monotonic() > deadline:
                    raise HarnessError(f"{pn.name}: {SUBDIR} did not appear\n{self.pc.logs()}")
                time.sleep(0.2)
        for pn in self.pc:
            proc = pn.node.spawn_json(
                [sys.executable, "-u", "-m", "tests.cluster.fault_writer", MOUNT, SUBDIR,
                 pn.name, "--pause", str(self.pause)],
                name=f"{pn.name}-writer",
            )  # fmt: skip
            proc.wait_for("ready", timeout=30)
            self.writers.append(_Writer(pn, proc, self.is_ref(pn)))

    def _sleep_until(self, t: float) -> None:
        while True:
            self._check_daemons()
            left = t - self.now()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    def _check_daemons(self) -> None:
        """A daemon that exited without the schedule stopping it is a failure; restart it
        so the run goes on."""
        for i, pn in self.by_id.items():
            if i in self.down:
                continue
            p = pn.daemon
            if p is None or p.poll() is None:
                continue
            rc = pn.stop_daemon()
            self._unexpected(pn, f"exited rc={rc}")
            self.paused.discard(i)
            self.restarts[i] += 1
            if self.restarts[i] > MAX_RESTARTS:
                self.log(f"UNEXPECTED exit of {pn.name} rc={rc}; given up on it")
                self.down.add(i)
                continue
            self.log(f"UNEXPECTED exit of {pn.name} rc={rc}; restarting")
            self._start(pn)

    def _stop(self, pn: PveNode, *, kill: bool) -> int | None:
        """SIGKILL, or SIGTERM (SIGKILL after a while), and reap.  A daemon that SIGKILL
        does not end within 10 s is stuck in the kernel (a thread waiting on a FUSE request
        of its own mount): its FUSE connection is aborted so it and its callers can go."""
        p = pn.daemon
        if p is None:
            return None
        try:
            if kill:
                pn.kill_daemon()
                return p.returncode
            return pn.stop_daemon(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._unexpected(pn, f"pid {p.pid} did not exit 10 s after SIGKILL: "
                             f"aborting its FUSE connection ({process_state(p.pid)})")  # fmt: skip
            self.log(f"  {pn.name} pid {p.pid} survives SIGKILL ({process_state(p.pid)}); "
                     f"aborting FUSE: {abort_fuse(self.fuse_conn.get(p.pid))}")  # fmt: skip
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                self._unexpected(pn, f"pid {p.pid} still alive after the abort; left behind")
            pn.daemon = None
            return p.returncode

    def stop_daemons(self) -> None:
        """Stop every daemon before the cluster's teardown, which cannot free a stuck one."""
        for pn in self.pc:
            if pn.daemon is not None:
                rc = self._stop(pn, kill=False)
                if rc not in (0, None) and not self.is_ref(pn):
                    self._unexpected(pn, f"SIGTERM at the end gave rc={rc}")

    def _unexpected(self, pn: PveNode, what: str) -> None:
        where = self.rep.ref_unexpected if self.is_ref(pn) else self.rep.unexpected
        where.append(f"+{self.now():.2f}s {pn.name} {what}")

    def _start(self, pn: PveNode) -> None:
        t = time.monotonic()
        try:
            if pn.daemon is not None:
                pn.stop_daemon()  # reap
            pn.start_daemon(timeout=60)
        except HarnessError as exc:
            msg = str(exc).splitlines()[0]
            self._unexpected(pn, f"start failed: {msg}")
            self.log(f"start {pn.name} FAILED: {msg}")
            return
        self.fuse_conn[pn.daemon_pid] = fuse_connection(pn)
        self.log(f"  {pn.name} started (pid {pn.daemon_pid}) in {time.monotonic() - t:.1f}s")

    def _apply(self, f: Fault) -> None:
        pn = self.node(f.node)
        at = self.now()
        tag = f"[{f}]"
        if f.op == "partition":
            pn.node.partition()
            self.log(f"{tag} partition {pn.name}", at)
        elif f.op == "heal":
            pn.node.heal()
            self.log(f"{tag} heal {pn.name}", at)
        elif f.op in ("kill", "term", "pause") and not pn.daemon_running:
            self.log(f"{tag} skipped: {pn.name} has no running daemon", at)
        elif f.op == "kill":
            self.down.add(f.node)
            self.log(f"{tag} SIGKILL {pn.name} pid {pn.daemon_pid}", at)
            self._stop(pn, kill=True)
        elif f.op == "term":
            self.down.add(f.node)
            pid = pn.daemon_pid
            t = time.monotonic()
            self.log(f"{tag} SIGTERM {pn.name} pid {pid}", at)
            rc = self._stop(pn, kill=False)
            self.log(f"  {pn.name} stopped: rc={rc} after {time.monotonic() - t:.1f}s")
            if self.is_ref(pn):
                if rc != 0:
                    self.rep.ref_stops.append(f"+{self.now():.2f}s {pn.name} rc={rc}")
            elif rc != 0:
                self._unexpected(pn, f"SIGTERM gave rc={rc}")
        elif f.op == "start":
            if f.node in self.down:
                self.down.discard(f.node)
                self.log(f"{tag} restart {pn.name}", at)
                self._start(pn)
            else:
                self.log(f"{tag} skipped: {pn.name} was not stopped", at)
        elif f.op == "pause":
            os.kill(pn.daemon_pid, signal.SIGSTOP)
            self.paused.add(f.node)
            self.log(f"{tag} SIGSTOP {pn.name} pid {pn.daemon_pid}", at)
        elif f.op == "cont":
            if f.node in self.paused and pn.daemon_running:
                os.kill(pn.daemon_pid, signal.SIGCONT)
                self.log(f"{tag} SIGCONT {pn.name} pid {pn.daemon_pid}", at)
            else:
                self.log(f"{tag} skipped: {pn.name} was not paused", at)
            self.paused.discard(f.node)
        else:
            raise ValueError(f"unknown fault {f.op!r}")

    # -- the end
    def _finish(self) -> None:
        self.log("end of schedule: stop writers, heal all, continue and restart daemons")
        for w in self.writers:
            with contextlib.suppress(OSError):
                w.proc.send(op="stop")
        self.pc.cluster.heal_all()
        for i in sorted(self.paused):
            pn = self.node(i)
            if pn.daemon_running:
                os.kill(pn.daemon_pid, signal.SIGCONT)
        self.paused.clear()
        for i in sorted(self.down):
            self._start(self.node(i))
        self.down.clear()
        self._check_daemons()
        # writers finish the operation in flight; one still blocked after the bound hangs
        deadline = time.monotonic() + self.rep.hang_bound + 10
        for w in self.writers:
            try:
                w.proc.wait_for("done", timeout=max(1.0, deadline - time.monotonic()))
            except HarnessError:
                self.log(f"writer of {w.pn.name} did not stop; killing it")
            w.stopped_at = time.monotonic()
            try:
                w.proc.close(timeout=2)
            except subprocess.TimeoutExpired:
                # unkillable: blocked in a syscall its daemon never answers (a hang, which
                # the writer analysis reports); the report must still be made
                self.log(f"writer of {w.pn.name} cannot be ended (blocked in a syscall)")
                self.rep.problems_other.append(
                    f"writer of {w.pn.name} ({w.pn.kind}) stuck in a syscall after the schedule"
                )
        self.log("writers stopped; waiting for the cluster")
        try:
            self.pc.wait_ready(timeout=180)
        except HarnessError as exc:
            self.rep.problems_other.append("cluster not ready: " + str(exc).splitlines()[0])
        self._check_daemons()
        self._verify()

    def _verify(self) -> None:
        rep = self.rep
        snaps, errors = self._converge(timeout=120)
        if errors:
            rep.trees_differ = "\n".join(errors)
        elif any(s != snaps[self.pc.nodes[0].name] for s in snaps.values()):
            rep.trees_differ = describe_diff(snaps)
        self.log("converged" if not rep.trees_differ else "trees DIFFER")
        self._analyse_writers(snaps)
        self._daemon_health()

    def _converge(self, timeout: float) -> tuple[dict[str, Snapshot], list[str]]:
        """Snapshots of every node once they are identical (or the last ones at *timeout*),
        and the nodes whose snapshot failed the last time.  A snapshot can fail while a sync
        still changes the tree (a listed file gone at open): that is retried, not judged."""
        deadline = time.monotonic() + timeout
        while True:
            snaps: dict[str, Snapshot] = {}
            errors: list[str] = []
            for pn in self.pc:
                try:
                    snaps[pn.name] = pn.snapshot()
                except (AssertionError, HarnessError) as exc:
                    errors.append(f"{pn.name}: snapshot failed: {str(exc)[:300]}")
            same = not errors and all(s == snaps[self.pc.nodes[0].name] for s in snaps.values())
            if same or time.monotonic() > deadline:
                return snaps, errors
            time.sleep(0.5)

    def _analyse_writers(self, snaps: dict[str, Snapshot]) -> None:
        rep = self.rep
        lf_index = self._lost_found_index()
        for w in self.writers:
            name = w.pn.name
            starts: dict[int, dict[str, Any]] = {}
            ends: dict[int, dict[str, Any]] = {}
            acks: list[dict[str, Any]] = []
            fails: Counter[str] = Counter()
            windows: list[list[Any]] = []  # [what, first t, last t, count] of failure runs
            for e in w.proc.events():
                ev = e.get("ev")
                if ev == "start":
                    starts[e["seq"]] = e
                elif ev == "ack":
                    ends[e["seq"]] = e
                    acks.append(e)
                    if windows and windows[-1][0] != "ack":
                        windows.append(["ack", 0.0, 0.0, 0])  # ends a run of failures
                elif ev == "fail":
                    ends[e["seq"]] = e
                    what = f"{e['stage']}:{e['errno']}"
                    fails[what] += 1
                    t = e["t"] - self.t0
                    if windows and windows[-1][0] == what:
                        windows[-1][2:] = [t, windows[-1][3] + 1]
                    else:
                        windows.append([what, t, t, 1])
                    if (e["stage"] == "create" and e["errno"] not in INDETERMINATE
                            and any(e["path"] in s for s in snaps.values())):  # fmt: skip
                        took = f"{e['path']} create {e['errno']} at +{t:.2f}s"
                        rep.failed_took_effect.append(took)
            rep.acks[name] = len(acks)
            rep.fails[name] = fails
            rep.fail_windows[name] = [f"{w_[0]} x{w_[3]} +{w_[1]:.1f}..{w_[2]:.1f}s"
                                      for w_ in windows if w_[0] != "ack"]  # fmt: skip
            end = w.stopped_at or time.monotonic()
            longest = 0.0
            for seq, s in starts.items():
                done = ends.get(seq)
                dur = (done["t"] if done else end) - s["t"]
                longest = max(longest, dur)
                if dur > rep.hang_bound:
                    took = f"took {dur:.1f}s" if done else "never returned"
                    what = f"{name} {s['path']} started +{s['t'] - self.t0:.2f}s {took}"
                    (rep.ref_hangs if w.reference else rep.hangs).append(what)
            rep.max_op[name] = longest
            for a in acks:
                path = a["path"]
                bad = [n for n, s in snaps.items()
                       if path not in s or s[path][0] != "f" or s[path][4] != a["sha"]]  # fmt: skip
                if bad:
                    who = f"{name} (reference)" if w.reference else name
                    rep.lost.append(Lost(who, path, a["t"] - self.t0, bad,
                                         lf_index.get(path, [])))  # fmt: skip

    def _lost_found_index(self) -> dict[str, list[str]]:
        """path -> where lost+found of any node keeps a copy (``node:<dir>/<path>.vN``)."""
        out: dict[str, list[str]] = {}
        for pn in self.pc:
            base = pn.lost_found
            if not base.is_dir():
                continue
            for root, _dirs, files in os.walk(base):
                for fn in files:
                    rel = str((Path(root) / fn).relative_to(base))
                    top, _, inner = rel.partition("/")
                    stem, dot, _ver = inner.rpartition(".v")
                    if dot:
                        out.setdefault(stem, []).append(f"{pn.name}:{top}/{inner}")
        return out

    def _daemon_health(self) -> None:
        rep = self.rep
        tails = []
        for pn in self.pc:
            text = pn.log_text()
            if not self.is_ref(pn) and "Traceback" in text:
                at = text.index("Traceback")
                rep.tracebacks.append(f"{pn.name}: " + text[at : at + 600].replace("\n", " | "))
            notable = [ln for ln in text.splitlines()
                       if ln.startswith("=== fault") or "quorum" in ln or "lost+found" in ln
                       or "resync" in ln or "err" in ln.split(":", 1)[0]]  # fmt: skip
            tails.append(f"--- {pn.name}{' (reference)' if self.is_ref(pn) else ''}: "
                         f"notable lines (last 60) ---\n" + "\n".join(notable[-60:]))  # fmt: skip
            tails.append(pn.log_tail(40))
        rep.log_tails = "\n".join(tails)


# ============================================================================ one run


def run_schedule(
    seed: int,
    kind: str,
    *,
    nodes: int = 3,
    seconds: float = 60.0,
    mix: str = "ours",
    gap: tuple[float, float] = (3.0, 8.0),
    hang_bound: float = 30.0,
    writer_pause: float = 0.02,
    say: Callable[[str], None] = lambda s: None,
) -> Report:
    """Build a cluster for *mix*, play the schedule of (*seed*, *kind*), check, tear down."""
    schedule = make_schedule(seed, kind, nodes, seconds, gap)
    rep = Report(seed, kind, nodes, mix, seconds, gap, hang_bound)
    say(f"== {rep.replay}: {len(schedule)} faults")
    try:
        pc = PveCluster(nodes, reference=reference_nodes(mix, nodes))
    except HarnessError as exc:
        rep.problems_other.append("cluster setup: " + _exc_text(exc))
        return rep
    fr = FaultRun(pc, schedule, rep, writer_pause=writer_pause, say=say)
    try:
        fr.run(seconds)
    except (HarnessError, AssertionError) as exc:  # the run broke off (FsError: a failed call)
        rep.problems_other.append("run: " + _exc_text(exc))
        if not rep.log_tails:
            with contextlib.suppress(Exception):
                fr._daemon_health()
    finally:
        try:  # a daemon of ours that does not stop at SIGTERM fails the run too
            fr.stop_daemons()
            pc.teardown()
        except HarnessError as exc:
            rep.problems_other.append("teardown: " + _exc_text(exc))
    return rep


def process_state(pid: int) -> str:
    """State and kernel wait channel of every thread of *pid* (why it does not die)."""
    out = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            task = Path(f"/proc/{pid}/task/{tid}")
            with contextlib.suppress(OSError):
                state = next(ln for ln in (task / "status").read_text().splitlines()
                             if ln.startswith("State:")).split()[1]  # fmt: skip
                out.append(f"{tid}:{state}:{(task / 'wchan').read_text().strip() or '-'}")
    except OSError:
        return "gone"
    return " ".join(out) or "gone"


def fuse_connection(pn: PveNode) -> str | None:
    """The FUSE connection (device minor) of the mount at /etc/pve in *pn*'s namespace, the
    top one if several are stacked; to abort it later, even once it is detached."""
    try:
        conn = connection_of(MOUNT, f"/proc/{pn.node.holder_pid}/mountinfo")
    except OSError:
        return None
    return None if conn is None else str(conn)


def abort_fuse(conn: str | None) -> str:
    """Abort FUSE connection *conn* through a fusectl mounted in a private mount namespace
    (the host's mounts stay as they are): what a daemon stuck in the kernel needs to exit,
    and what frees the callers waiting on it."""
    if conn is None:
        return "no FUSE connection recorded"
    with tempfile.TemporaryDirectory(prefix="fusectl-") as d:
        res = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f'mount -t fusectl fusectl "$1" && echo 1 > "$1/{conn}/abort"', "sh", d],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    return f"connection {conn}: rc={res.returncode} {res.stderr.strip()}"


def _exc_text(exc: BaseException) -> str:
    """An exception and the one it happened while handling (a failed setup's teardown
    error hides the setup error otherwise)."""
    text = str(exc)
    if exc.__context__ is not None:
        text += f"\n  while handling: {type(exc.__context__).__name__}: {exc.__context__}"
    return text[:4000]


# ============================================================================ CLI


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="scripts/fault-schedule",
        description="Fault schedules (issue 10) on real corosync clusters; exits 1 on any "
        "lost acknowledged write, hang of ours, unexpected exit or tree difference.",
    )
    ap.add_argument("--seeds", default="1-10", help="e.g. 7 or 1-20 or 3,5,9 (default 1-10)")
    ap.add_argument("--seconds", type=float, default=120.0, help="faults per run (default 120)")
    ap.add_argument("--nodes", type=int, default=3, choices=(3, 4, 5))
    ap.add_argument("--mix", default="ours", choices=(*MIXES, "reference", "all"),
                    help="all: ours, mixed and reversed; reference: the C daemon everywhere")
    ap.add_argument("--kind", default="all", choices=(*KINDS, "all"))
    ap.add_argument("--gap", default="3-8", help="seconds between faults, MIN-MAX (default 3-8)")
    ap.add_argument("--hang-bound", type=float, default=30.0, help="seconds (default 30)")
    ap.add_argument("--writer-pause", type=float, default=0.02)
    ap.add_argument("--keep", metavar="DIR", help="write every run's full report to DIR")
    ap.add_argument("-q", "--quiet", action="store_true", help="no fault log while running")
    a = ap.parse_args(argv)
    lo, _, hi = a.gap.partition("-")
    gap = (float(lo), float(hi or lo))
    kinds = KINDS if a.kind == "all" else (a.kind,)
    mixes = MIXES if a.mix == "all" else (a.mix,)
    say: Callable[[str], None] = (lambda s: None) if a.quiet else (lambda s: print(s, flush=True))
    results: list[Report] = []
    for seed in _seeds(a.seeds):
        for mix in mixes:
            for kind in kinds:
                try:
                    rep = run_schedule(seed, kind, nodes=a.nodes, seconds=a.seconds, mix=mix,
                                       gap=gap, hang_bound=a.hang_bound,
                                       writer_pause=a.writer_pause, say=say)  # fmt: skip
                except HarnessError as exc:
                    rep = Report(seed, kind, a.nodes, mix, a.seconds, gap, a.hang_bound)
                    rep.problems_other.append("harness: " + str(exc)[:2000])
                results.append(rep)
                print(rep.text(tails=not rep.ok) if not rep.ok else rep.summary(), flush=True)
                if a.keep:
                    Path(a.keep).mkdir(parents=True, exist_ok=True)
                    name = f"{len(results):03d}-seed{seed}-{kind}-{mix}-{a.nodes}n.txt"
                    (Path(a.keep) / name).write_text(rep.text() + "\n")
    print("\n== summary")
    for rep in results:
        print(rep.summary())
    bad = [r for r in results if not r.ok]
    print(f"{len(results) - len(bad)}/{len(results)} runs ok; "
          f"lost acknowledged writes: {sum(len(r.lost) for r in results)}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
