"""A deterministic in-memory CPG for DFSM tests and benchmarks.

Models what pmxcfs relies on (wire-protocol §2.3, U3): each connected component has one total
order that includes the sender's own messages and the membership changes; every member of a
component sees the same sequence. Partitions split components; messages not yet delivered when
the view changes are delivered after the new confchg to the sender's new component (the
epoch checks must cope with that). Quorum is a strict majority of all known nodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .machine import (
    Action,
    ConfChg,
    Deliver,
    Dfsm,
    Event,
    Leave,
    LocalRequest,
    Member,
    Reply,
    Reset,
    Send,
    SendFailed,
)


@dataclass
class SimProc:
    member: Member
    dfsm: Dfsm
    quorate: bool = False
    joined: bool = False
    left: bool = False  # left after a fatal condition; the start job may bring it back
    results: dict[int, int] = field(default_factory=dict)
    sent: int = 0


@dataclass
class Component:
    members: list[Member]
    queue: deque[tuple[Member, bytes]] = field(default_factory=deque)


class Sim:
    """Drive several Dfsm instances through one deterministic totem order per component."""

    def __init__(self, total_nodes: int | None = None) -> None:
        self.procs: dict[Member, SimProc] = {}
        self.components: list[Component] = []
        self.total_nodes = total_nodes
        self.next_rid = 1
        self.fail_sends: Callable[[Member, Send], bool] | None = None
        self.log: list[tuple[str, Member, object]] = []
        self.auto_rejoin = True
        self.delivered = 0
        self.groups: list[set[int]] | None = None  # current partition, for rejoining
        #: False: quorum flags stay as a test sets them (corosync's view can lag the CPG's
        #: or count nodes whose process left the group)
        self.auto_quorum = True

    # ------------------------------------------------------------------ topology

    def add(self, dfsm: Dfsm) -> SimProc:
        p = SimProc(dfsm.me, dfsm)
        self.procs[dfsm.me] = p
        return p

    def _component_of(self, m: Member) -> Component | None:
        for c in self.components:
            if m in c.members:
                return c
        return None

    def _update_quorum(self) -> None:
        if not self.auto_quorum:
            return
        total = self.total_nodes or len({m[0] for m in self.procs})
        for c in self.components:
            nodes = {m[0] for m in c.members}
            for m in c.members:
                self.procs[m].quorate = len(nodes) * 2 > total

    def _confchg(self, c: Component, left: Iterable[Member], joined: Iterable[Member]) -> None:
        self._update_quorum()
        ev = ConfChg(tuple(sorted(c.members)), tuple(left), tuple(joined))
        for m in list(c.members):
            self._feed(m, ev)

    def join(self, member: Member, with_: Member | None = None) -> None:
        """`member` joins the component of `with_` (or a new one)."""
        p = self.procs[member]
        if p.joined:
            raise ValueError(f"{member} is already joined")
        p.joined = True
        c = self._component_of(with_) if with_ is not None else None
        if c is None:
            c = Component([])
            self.components.append(c)
        c.members.append(member)
        self._confchg(c, (), (member,))

    def remove(self, member: Member) -> None:
        """Process leaves or dies: the others see it in the left list."""
        c = self._component_of(member)
        self.procs[member].joined = False
        if c is None:
            return
        c.members.remove(member)
        if c.members:
            self._confchg(c, (member,), ())
        else:
            self.components.remove(c)

    def partition(self, groups: list[set[int]]) -> None:
        """Regroup every joined process by nodeid; undelivered messages follow their sender."""
        carried: list[tuple[Member, bytes]] = []
        old_of: dict[Member, set[Member]] = {}
        for c in self.components:
            carried.extend(c.queue)
            for m in c.members:
                old_of[m] = set(c.members)
        joined = [m for c in self.components for m in c.members]
        new: list[Component] = []
        for g in groups:
            ms = sorted(m for m in joined if m[0] in g)
            if ms:
                new.append(Component(ms))
        self.components = new
        self.groups = [set(g) for g in groups]
        for c in new:
            for s, data in carried:
                if s in c.members:
                    c.queue.append((s, data))
        self._update_quorum()
        for c in new:
            members = set(c.members)
            for m in list(c.members):
                before = old_of.get(m, set())
                ev = ConfChg(
                    tuple(sorted(c.members)),
                    tuple(sorted(before - members)),
                    tuple(sorted(members - before)),
                )
                self._feed(m, ev)

    # ------------------------------------------------------------------ actions

    def request(self, member: Member, subtype: int, payload: bytes, wait: bool = True) -> int:
        rid = self.next_rid
        self.next_rid += 1
        self._feed(member, LocalRequest(subtype, payload, rid if wait else None))
        return rid

    def _feed(self, member: Member, ev: Event) -> None:
        p = self.procs[member]
        self._run_actions(p, p.dfsm.feed(ev))

    def _run_actions(self, p: SimProc, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                c = self._component_of(p.member)
                failed = c is None or not p.joined
                if not failed and self.fail_sends is not None:
                    failed = self.fail_sends(p.member, a)
                if failed:
                    self._run_actions(p, p.dfsm.feed(SendFailed(a, "simulated failure")))
                else:
                    assert c is not None
                    c.queue.append((p.member, a.data))
                    p.sent += 1
            elif isinstance(a, Reply):
                p.results[a.request_id] = a.result
            elif isinstance(a, Leave):
                self.log.append(("leave", p.member, a.mode))
                p.left = True
                self.remove(p.member)

    def step(self) -> bool:
        for c in self.components:
            if c.queue:
                sender, data = c.queue.popleft()
                for m in list(c.members):
                    self.delivered += 1
                    self._feed(m, Deliver(sender[0], sender[1], data))
                return True
        return False

    def rejoin_left(self) -> bool:
        """Restart services that left with a restartable mode (the 5 s start job)."""
        did = False
        for m, p in self.procs.items():
            if p.left and p.dfsm.restartable and self.auto_rejoin:
                p.left = False
                reach = next((g for g in self.groups or () if m[0] in g), None)
                others = [
                    c.members[0]
                    for c in self.components
                    if c.members and (reach is None or c.members[0][0] in reach)
                ]
                self._run_actions(p, p.dfsm.feed(Reset()))
                self.join(m, others[0] if others else None)
                did = True
        return did

    def run(self, limit: int = 100_000) -> int:
        n = 0
        while n < limit:
            if self.step():
                n += 1
                continue
            if not self.rejoin_left():
                return n
        raise RuntimeError("simulation did not settle")
