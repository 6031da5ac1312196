"""When this node may accept a configuration write (issue 10: no acknowledged write is lost).

corosync's quorate flag alone is not enough, for two reasons the reference shares in part:

* it arrives on its own socket, unordered against CPG deliveries, so a delivery can be judged
  against a flag that is already stale (a write sent as the link went down, delivered after the
  confchg that left this node alone, was acknowledged);
* votequorum counts corosync members, not replication peers: a stale node that is quorate
  together with a peer whose pmxcfs has left ``pve_dcdb_v1`` is alone in the group, counts as
  synced, and would serve writes that the next sync overwrites.

So a write is accepted only while corosync is quorate **and** the members of the replication
group hold the votes corosync needs for quorum; a delivered one is applied while the group
holds them (the one fact in the same order as the deliveries). Any two such groups
share a member, and a sync always picks the highest version, so every acknowledged write
survives every later sync. The group comes from the confchg in the same totem order as the
deliveries, so each delivery is judged at its place in that order. Sans I/O: the cluster
service feeds corosync's facts in; the DCDB application feeds the group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping


class WriteGate:
    """corosync quorum + vote quorum of the replication group, with flip listeners."""

    __slots__ = (
        "_group_ok",
        "_last",
        "_quorate",
        "extra_votes",
        "group",
        "listeners",
        "needed",
        "node_votes",
    )

    def __init__(self, quorate: Callable[[], bool] = lambda: True) -> None:
        self._quorate = quorate
        #: votes corosync needs for quorum (votequorum's ``quorum``); 0 = unknown, then a
        #: majority of the nodelist's votes (or any group, without a nodelist)
        self.needed = 0
        #: votes of a quorum device cast for our partition (a vote, but no replica)
        self.extra_votes = 0
        #: nodeid -> votes from the nodelist; nodes not listed count one vote
        self.node_votes: Mapping[int, int] = {}
        #: nodeids in the replication group since its last confchg (None before the first)
        self.group: frozenset[int] | None = None
        self.listeners: list[Callable[[bool], None]] = []
        self._last = False
        #: group_quorate, computed when an input changes (asked once per delivery)
        self._group_ok = False

    # ------------------------------------------------------------------ queries

    @property
    def quorate(self) -> bool:
        """corosync's own flag."""
        return self._quorate()

    def threshold(self) -> int:
        if self.needed > 0:
            return self.needed
        if self.node_votes:
            return sum(self.node_votes.values()) // 2 + 1
        return 1

    def group_votes(self) -> int:
        if self.group is None:
            return 0
        votes = self.node_votes
        return sum(votes.get(n, 1) for n in self.group) + self.extra_votes

    @property
    def group_quorate(self) -> bool:
        return self._group_ok

    @property
    def applies(self) -> bool:
        """May a delivered write be applied here? Judged by the group at the delivery's
        place in the total order; corosync's own flag arrives on another socket and may
        already speak of a later membership. Without any vote figures yet (before corosync
        told them), the reference's rule: corosync's flag."""
        if self.needed > 0 or self.node_votes:
            return self.group_quorate
        return self._quorate()

    @property
    def writable(self) -> bool:
        return self._quorate() and self.group_quorate

    def reason(self) -> str:
        """Why a write is refused, for the log line."""
        if not self._quorate():
            return "not quorate"
        return self.group_reason()

    def group_reason(self) -> str:
        return (
            f"replication group holds {self.group_votes()} of the {self.threshold()} votes "
            "needed for quorum"
        )

    # ------------------------------------------------------------------ facts

    def set_group(self, nodeids: Iterable[int]) -> None:
        self.group = frozenset(nodeids)
        self.changed()

    def set_votes(
        self, needed: int, extra_votes: int = 0, node_votes: Mapping[int, int] | None = None
    ) -> None:
        self.needed = max(0, needed)
        self.extra_votes = max(0, extra_votes)
        if node_votes is not None:
            self.node_votes = dict(node_votes)
        self.changed()

    def changed(self) -> None:
        """Re-evaluate after any input changed (quorate flips too); listeners hear flips."""
        self._group_ok = self.group is not None and self.group_votes() >= self.threshold()
        now = self.writable
        if now != self._last:
            self._last = now
            for fn in self.listeners:
                fn(now)
