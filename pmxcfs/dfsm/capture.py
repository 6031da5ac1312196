"""Reader for the recorded CPG captures (`*.jsonl.gz`, format in shared/README.md).

Used by the replay tests and the benchmark; kept in the package so both read captures the
same way.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass

Member = tuple[int, int]


@dataclass(frozen=True, slots=True)
class CapOp:
    t: float
    op: str


@dataclass(frozen=True, slots=True)
class CapDeliver:
    t: float
    node: str
    group: str
    nodeid: int
    pid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CapConfChg:
    t: float
    node: str
    group: str
    members: tuple[Member, ...]
    left: tuple[Member, ...]
    joined: tuple[Member, ...]


CapEvent = CapOp | CapDeliver | CapConfChg


def _members(raw: list[list[int]]) -> tuple[Member, ...]:
    return tuple((int(m[0]), int(m[1])) for m in raw)


def read_capture(path: str) -> Iterator[CapEvent]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            o = json.loads(line)
            ev = o["ev"]
            if ev == "op":
                yield CapOp(o["t"], o["op"])
            elif ev == "deliver":
                data = bytes.fromhex(o["hex"])
                if len(data) != o["len"]:
                    raise ValueError(f"capture line with len {o['len']} but {len(data)} bytes")
                yield CapDeliver(o["t"], o["node"], o["group"], o["nodeid"], o["pid"], data)
            elif ev == "confchg":
                yield CapConfChg(
                    o["t"],
                    o["node"],
                    o["group"],
                    _members(o["members"]),
                    _members(o["left"]),
                    _members(o["joined"]),
                )
