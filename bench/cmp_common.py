"""Shared parts of bench/compare.py: the workload agent, process CPU/RSS, the figures."""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.cluster.harness import JsonProc, Node  # noqa: E402

KINDS = ("ours", "reference")


class BenchError(RuntimeError):
    """A workload failed (not a slow one: a wrong result or an error)."""


# ------------------------------------------------------------------------ processes


def cpu_ns(pid: int) -> int:
    """CPU time of every live thread of *pid* (ns, from schedstat: not tick-rounded).
    Threads that already exited are not counted; both daemons keep theirs."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def cpu_sum_ns(pids: list[int]) -> int:
    return sum(cpu_ns(p) for p in pids)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# ---------------------------------------------------------------------------- agent


class Agent:
    """bench/bench_agent.py running in a node (JSON lines through the harness)."""

    def __init__(self, node: Node, mount: str = "/etc/pve", name: str | None = None) -> None:
        self.node = node
        self.jp: JsonProc = node.spawn_json(
            [sys.executable, "-u", str(BENCH / "bench_agent.py"), mount],
            name=name or f"{node.name}-bench",
        )
        self.jp.wait_for("ready", timeout=60)
        self._next = 1

    def send(self, op: str, **kw: Any) -> int:
        rid = self._next
        self._next += 1
        self.jp.send(id=rid, op=op, **kw)
        return rid

    def result(self, rid: int, timeout: float = 600.0) -> dict[str, Any]:
        res = self.jp.wait_for(
            lambda e: e.get("ev") == "result" and e.get("id") == rid, timeout=timeout
        )
        if not res["ok"]:
            raise BenchError(f"{self.jp.name}: command {rid}: {res['errno']} {res.get('msg')}")
        return res

    def wait_event(self, ev: str, rid: int, start: int, timeout: float = 60.0) -> None:
        """Wait for event *ev* of command *rid* (e.g. "watching")."""

        def match(e: dict[str, Any]) -> bool:
            return bool(e.get("ev") == ev and e.get("id") == rid)

        self.jp.wait_for(match, timeout=timeout, start=start)

    def call(self, op: str, timeout: float = 600.0, **kw: Any) -> Any:
        return self.result(self.send(op, **kw), timeout)["value"]

    def close(self) -> None:
        self.jp.close(timeout=5)


# -------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One row of the table: values per kind (one per round) and daemon CPU per op."""

    group: str
    name: str
    unit: str
    better: str  # "higher" or "lower"
    values: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    cpu_us: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def median(self, kind: str) -> float | None:
        v = self.values[kind]
        return statistics.median(v) if v else None

    def cpu_median(self, kind: str) -> float | None:
        v = self.cpu_us[kind]
        return statistics.median(v) if v else None


class Results:
    """Figures in the order they were first recorded."""

    def __init__(self) -> None:
        self.figures: dict[tuple[str, str], Figure] = {}

    def add(
        self,
        group: str,
        name: str,
        unit: str,
        better: str,
        kind: str,
        value: float,
        cpu_us: float | None = None,
    ) -> None:
        key = (group, name)
        fig = self.figures.get(key)
        if fig is None:
            fig = self.figures[key] = Figure(group, name, unit, better)
        fig.values[kind].append(value)
        if cpu_us is not None:
            fig.cpu_us[kind].append(cpu_us)
        print(
            f"  [{kind}] {group}: {name} = {_num(value)} {unit}"
            + (f" (daemon CPU {cpu_us:,.0f} us/op)" if cpu_us is not None else ""),
            flush=True,
        )

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {
                "group": f.group,
                "name": f.name,
                "unit": f.unit,
                "better": f.better,
                "values": f.values,
                "daemon_cpu_us_per_op": f.cpu_us,
            }
            for f in self.figures.values()
        ]

    def table(self) -> str:
        head = (
            "workload",
            "unit",
            "ours",
            "reference",
            "ours/ref",
            "better",
            "CPU us/op ours",
            "ref",
        )
        rows: list[tuple[str, ...]] = [head]
        group = None
        for f in self.figures.values():
            if f.group != group:
                group = f.group
                rows.append((f"[{group}]", "", "", "", "", "", "", ""))
            o, r = f.median("ours"), f.median("reference")
            ratio = f"{o / r:.2f}x" if o is not None and r else "-"
            co, cr = f.cpu_median("ours"), f.cpu_median("reference")
            rows.append(
                (
                    "  " + f.name,
                    f.unit,
                    _num(o),
                    _num(r),
                    ratio,
                    f.better,
                    _num(co),
                    _num(cr),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        out = []
        for row in rows:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)]
            out.append("  ".join(cells).rstrip())
        return "\n".join(out)


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"
