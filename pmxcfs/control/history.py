"""What one reading of the daemon cannot show: message rates, when the last sync ran, since
when quorum holds. Sans I/O: the server's sampler feeds it a reading every second (and the
quorum listener every flip); the snapshot asks it at query time.

The DFSM keeps counters, not times, so a sync is seen from outside: its start is the sync
epoch's time (set at the membership change that began it, on the coordinator's clock, whole
seconds), its end is the first sample that finds the sync counter grown, so `end` and
`duration` are late by up to one sample interval.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

RATE_WINDOW = 10.0  # seconds of samples a rate is computed over
SYNCING = frozenset({"start_sync", "update"})


@dataclass(frozen=True, slots=True)
class GroupReading:
    """One group's counters and state at one moment."""

    mode: str  # Mode name, lower case
    syncs: int  # times SYNCED was entered
    epoch_time: int  # the current sync epoch's time (0 before the first membership)
    sent: int
    delivered: int


@dataclass(slots=True)
class SyncTimes:
    start: float
    end: float

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass
class GroupHistory:
    window: float = RATE_WINDOW
    last: SyncTimes | None = None
    syncing_since: float | None = None
    _points: deque[tuple[float, int, int]] = field(default_factory=deque)
    _syncs: int | None = None

    def observe(self, mono: float, wall: float, r: GroupReading) -> None:
        points = self._points
        points.append((mono, r.sent, r.delivered))
        while len(points) > 1 and mono - points[1][0] >= self.window:
            points.popleft()
        grown = self._syncs is None or r.syncs > self._syncs
        if grown and r.syncs > 0 and r.mode == "synced":
            start = float(r.epoch_time) if r.epoch_time else wall
            self.last = SyncTimes(min(start, wall), wall)
        self._syncs = r.syncs
        if r.mode in SYNCING:
            self.syncing_since = float(r.epoch_time) if r.epoch_time else wall
        else:
            self.syncing_since = None

    def rates(self, mono: float, sent: int, delivered: int) -> tuple[float | None, float | None]:
        """Messages per second over the window up to now (None until a second has passed)."""
        if not self._points:
            return None, None
        t0, s0, d0 = self._points[0]
        dt = mono - t0
        if dt < 1.0:
            return None, None
        return max(0, sent - s0) / dt, max(0, delivered - d0) / dt


@dataclass
class QuorumHistory:
    """When quorum last changed (or when we started watching)."""

    since: float
    quorate: bool

    def flip(self, quorate: bool, wall: float) -> None:
        if quorate != self.quorate:
            self.quorate = quorate
            self.since = wall


@dataclass
class History:
    quorum: QuorumHistory
    groups: dict[str, GroupHistory] = field(default_factory=dict)

    def group(self, name: str) -> GroupHistory:
        g = self.groups.get(name)
        if g is None:
            g = self.groups[name] = GroupHistory()
        return g
