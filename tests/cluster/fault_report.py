"""The verdict of one fault-schedule run (tests/cluster/faults.py) and its text: counts,
what was lost and where lost+found keeps it, hangs, unexpected exits, the fault log with
times, log tails, and the command that replays the schedule.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def replay_command(seed: int, kind: str, nodes: int, seconds: float, mix: str,
                   gap: tuple[float, float]) -> str:  # fmt: skip
    extra = "" if gap == (3.0, 8.0) else f" --gap {gap[0]:g}-{gap[1]:g}"
    return (f"scripts/fault-schedule --seeds {seed} --kind {kind} --seconds {seconds:g} "
            f"--nodes {nodes} --mix {mix}{extra}")  # fmt: skip


@dataclass
class Lost:
    node: str  # the writer's node (with " (reference)" on a reference node)
    path: str
    acked_at: float  # seconds after the start
    missing_on: list[str]  # nodes where it is absent or has other content
    lost_found: list[str]  # where copies are kept


@dataclass
class Report:
    seed: int
    kind: str
    nodes: int
    mix: str
    seconds: float
    gap: tuple[float, float]
    hang_bound: float
    fault_log: list[str] = field(default_factory=list)
    acks: dict[str, int] = field(default_factory=dict)
    fails: dict[str, Counter[str]] = field(default_factory=dict)  # node -> "stage:ERRNO" counts
    fail_windows: dict[str, list[str]] = field(default_factory=dict)  # runs of one failure
    lost: list[Lost] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)  # ours
    ref_hangs: list[str] = field(default_factory=list)  # the reference's
    unexpected: list[str] = field(default_factory=list)  # exits/failed starts of ours
    ref_unexpected: list[str] = field(default_factory=list)  # the same of the reference
    ref_stops: list[str] = field(default_factory=list)  # reference aborts/hangs at SIGTERM
    failed_took_effect: list[str] = field(default_factory=list)
    max_op: dict[str, float] = field(default_factory=dict)
    tracebacks: list[str] = field(default_factory=list)
    trees_differ: str = ""
    problems_other: list[str] = field(default_factory=list)
    log_tails: str = ""

    @property
    def eacces_after_create(self) -> int:
        return sum(c[k] for c in self.fails.values() for k in c
                   if k in ("write:EACCES", "close:EACCES"))  # fmt: skip

    @property
    def ok(self) -> bool:
        """The verdict: no acknowledged write lost (by any writer), no hang and no
        unexpected exit of ours, identical trees.  The reference's hangs and exits are
        reported, not judged (yet)."""
        return not (self.lost or self.hangs or self.unexpected or self.trees_differ
                    or self.problems_other)  # fmt: skip

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.kind, self.nodes, self.seconds, self.mix, self.gap)

    def summary(self) -> str:
        return (
            f"seed={self.seed} kind={self.kind} nodes={self.nodes} mix={self.mix}: "
            f"{'ok' if self.ok else 'FAILED'}; acks={sum(self.acks.values())} "
            f"lost={len(self.lost)} hangs={len(self.hangs)} ref_hangs={len(self.ref_hangs)} "
            f"unexpected_exits={len(self.unexpected)} ref_exits={len(self.ref_unexpected)} "
            f"eacces_after_create={self.eacces_after_create} "
            f"trees={'DIFFER' if self.trees_differ else 'same'}"
        )

    def lost_runs(self) -> list[str]:
        """Lost files grouped into runs of consecutive writes of one writer: a loss usually
        takes every write a node acknowledged in one window."""
        runs: list[list[Lost]] = []
        for lo in sorted(self.lost, key=lambda x: (x.node, x.path)):
            prev = runs[-1][-1] if runs else None
            if prev and prev.node == lo.node and _seq(lo.path) == _seq(prev.path) + 1:
                runs[-1].append(lo)
            else:
                runs.append([lo])
        out = []
        for r in runs:
            kept = sum(1 for lo in r if lo.lost_found)
            out.append(f"{r[0].node}: {len(r)} files {r[0].path}..{r[-1].path.rsplit('/', 1)[1]}"
                       f" acked +{r[0].acked_at:.2f}s..+{r[-1].acked_at:.2f}s,"
                       f" {kept} of them in lost+found")  # fmt: skip
        return out

    def text(self, tails: bool = True) -> str:
        lines = [self.summary(), f"replay: {self.replay}"]
        for name in sorted(self.acks):
            fails = ", ".join(f"{k}={v}" for k, v in sorted(self.fails.get(name, {}).items()))
            lines.append(f"  {name}: acks={self.acks[name]} max_op={self.max_op.get(name, 0):.1f}s"
                         f" fails: {fails or '-'}")  # fmt: skip
            if self.fail_windows.get(name):
                runs = self.fail_windows[name]
                more = f"; ... {len(runs) - 25} more" if len(runs) > 25 else ""
                lines.append("    failure runs: " + "; ".join(runs[:25]) + more)
        for title, items in (
            ("hung syscalls (ours)", self.hangs),
            ("hung syscalls (reference)", self.ref_hangs),
            ("unexpected exits of ours", self.unexpected),
            ("unexpected exits of the reference", self.ref_unexpected),
            ("reference stops at SIGTERM (treated as stops)", self.ref_stops),
            ("failed calls that took effect", self.failed_took_effect),
            ("other problems", self.problems_other),
            ("tracebacks in our logs", self.tracebacks),
        ):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {x}" for x in items[:20]]
        if self.lost:
            lines.append(f"LOST acknowledged files ({len(self.lost)}), by writer and ack time:")
            lines += [f"  {x}" for x in self.lost_runs()]
            lines.append("LOST files one by one:")
            for lo in self.lost[:40]:
                where = ", ".join(lo.lost_found) if lo.lost_found else "not in any lost+found"
                lines.append(f"  {lo.path} (by {lo.node}, acked +{lo.acked_at:.2f}s) missing on "
                             f"{','.join(lo.missing_on)}; {where}")  # fmt: skip
            if len(self.lost) > 40:
                lines.append(f"  ... {len(self.lost) - 40} more")
        if self.trees_differ:
            lines.append("trees differ:\n" + self.trees_differ)
        lines.append("fault log (seconds after start; planned, then actual):")
        lines += [f"  {x}" for x in self.fault_log]
        if tails and self.log_tails:
            lines.append(self.log_tails)
        return "\n".join(lines)


def _seq(path: str) -> int:
    return int(path.rsplit("-", 1)[1])
