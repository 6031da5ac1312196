"""A clock the test sets by hand (`clock.t = ...`), for trees, DFSMs and status objects."""

from __future__ import annotations


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t
