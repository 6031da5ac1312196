"""trio adapter for a Dfsm: performs its actions and lets callers wait for their results.

Deliveries and confchgs are fed synchronously (from the CPG dispatch callback), so the hot
path is one `Dfsm.feed` call. Multicasts go out from one task in the order the state machine
emitted them, which keeps NORMAL `count`s increasing on the wire (§4.8). A caller's request
resolves when the state machine replies: its own delivery, a send failure or an abort.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .machine import (
    Action,
    Dfsm,
    Event,
    Leave,
    LocalRequest,
    Reply,
    Reset,
    Send,
    SendFailed,
)

log = logging.getLogger("pmxcfs.dfsm")

Mcast = Callable[[bytes], Awaitable[None]]


class _Waiter:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result = 0


class DfsmDriver:
    """Owns one Dfsm; `mcast` is the transport (cpg.Cpg.mcast or a test bus)."""

    def __init__(self, dfsm: Dfsm) -> None:
        self.dfsm = dfsm
        self._send_tx, self._send_rx = trio.open_memory_channel[Send](float("inf"))
        self._waiters: dict[int, _Waiter] = {}
        self._next_rid = 1
        self.leave_requested = trio.Event()
        self.mcast: Mcast | None = None

    # ------------------------------------------------------------------ feeding

    def feed(self, event: Event) -> None:
        self._perform(self.dfsm.feed(event))

    def _perform(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._send_tx.send_nowait(a)
            elif isinstance(a, Reply):
                w = self._waiters.pop(a.request_id, None)
                if w is not None:
                    w.result = a.result
                    w.done.set()
            elif isinstance(a, Leave):
                self.leave_requested.set()

    def reset(self) -> None:
        """Service (re)initialisation: drop unsent messages, abort waiters (§2.2)."""
        while True:
            try:
                s = self._send_rx.receive_nowait()
            except trio.WouldBlock:
                break
            self.feed(SendFailed(s, "service restarted"))
        self.leave_requested = trio.Event()
        self.feed(Reset())

    def disconnect(self) -> None:
        """The transport is gone: fail unsent messages and every waiter with EBUSY."""
        self.reset()
        self.dfsm.joined = False

    # ------------------------------------------------------------------ requests

    async def request(self, subtype: int, payload: bytes) -> int:
        """Send and wait for our own delivery's result (no timeout, like the reference)."""
        rid = self._next_rid
        self._next_rid += 1
        w = _Waiter()
        self._waiters[rid] = w
        try:
            self.feed(LocalRequest(subtype, payload, rid))
            await w.done.wait()
        finally:
            self._waiters.pop(rid, None)
        return w.result

    def send_nowait(self, subtype: int, payload: bytes) -> None:
        """Fire and forget (unlock request)."""
        self.feed(LocalRequest(subtype, payload, None))

    # ------------------------------------------------------------------ sending task

    async def run_sender(self, mcast: Mcast) -> None:
        """Multicast queued messages in order until cancelled."""
        async for s in self._send_rx:
            try:
                await mcast(s.data)
            except trio.Cancelled:
                raise
            except Exception as exc:  # transport errors become DFSM events
                log.warning("%s: multicast failed: %s", self.dfsm.name, exc)
                self.feed(SendFailed(s, str(exc)))
