"""trio adapter for a Dfsm: performs its actions and lets callers wait for their results.

Deliveries and confchgs are fed synchronously (from the CPG dispatch callback), so the hot
path is one `Dfsm.feed` call. Multicasts leave in the order the state machine emitted them,
which keeps NORMAL `count`s increasing on the wire (§4.8): directly from `feed` while nothing
is queued (one non-blocking cpg_mcast_joined, as the reference does from its callbacks), else
through one sender task that retries. A caller's request resolves when the state machine
replies: its own delivery, a send failure or an abort.

Within a batch (`begin_batch` .. `end_batch`, one CPG dispatch) replies are held and the
callers woken only at its end, so that whoever owns the batch can first make its effects
durable (group commit) or turn the results into a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .machine import (
    RESULT_ABORTED,
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
#: sends at once if it can without blocking; False = use the sender task (busy, big, TRY_AGAIN)
DirectMcast = Callable[[bytes], bool]


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
        self.direct: DirectMcast | None = None
        self._held: list[_Waiter] | None = None  # a batch is open: replies wait here
        self._closing = False
        self._queued = 0  # handed to the sender task, not yet multicast

    # ------------------------------------------------------------------ feeding

    def feed(self, event: Event) -> None:
        self._perform(self.dfsm.feed(event))

    def deliver(self, nodeid: int, pid: int, data: bytes) -> None:
        """A CPG delivery (called from inside cpg_dispatch)."""
        self._perform(self.dfsm.deliver(nodeid, pid, data))

    def _perform(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._send(a)
            elif isinstance(a, Reply):
                w = self._waiters.pop(a.request_id, None)
                if w is not None:
                    w.result = a.result
                    if self._held is not None:
                        self._held.append(w)
                    else:
                        w.done.set()
            elif isinstance(a, Leave):
                self.leave_requested.set()

    def _send(self, s: Send) -> None:
        direct = self.direct
        if direct is not None and not self._queued:
            try:
                if direct(s.data):
                    return
            except Exception as exc:
                log.warning("%s: multicast failed: %s", self.dfsm.name, exc)
                self.feed(SendFailed(s, str(exc)))
                return
        self._queued += 1
        self._send_tx.send_nowait(s)

    # ------------------------------------------------------------------ batches

    def begin_batch(self) -> None:
        """Hold replies until `end_batch` (idempotent while a batch is open)."""
        if self._held is None:
            self._held = []

    @property
    def held(self) -> int:
        """Replies held in the open batch (callers answered, not yet woken)."""
        return len(self._held) if self._held else 0

    def end_batch(self, failure: int | None = None) -> None:
        """Wake the callers answered in the batch; with *failure*, successful results
        become that error first (their effect never reached the disk)."""
        held, self._held = self._held, None
        for w in held or ():
            if failure is not None and w.result >= 0:
                w.result = failure
            w.done.set()

    def fail(self, reason: str) -> None:
        self._perform(self.dfsm.fail(reason))

    def reset(self) -> None:
        """Service (re)initialisation: drop unsent messages, abort waiters (§2.2)."""
        self.direct = None
        while True:
            try:
                s = self._send_rx.receive_nowait()
            except trio.WouldBlock:
                break
            self.feed(SendFailed(s, "service restarted"))
        self._queued = 0  # a send cancelled mid-flight is aborted by the Reset below
        self.leave_requested = trio.Event()
        self.feed(Reset())

    def close(self) -> None:
        """Shutdown: every waiting caller is answered now (EBUSY) and new requests at once.

        A syscall left without an answer when the loop stops would hold its directory lock
        for good, and a cache invalidation waiting for that lock would keep the process from
        ever exiting. The message may still be delivered elsewhere (the reference gives up on
        its waiters the same way)."""
        self._closing = True
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for w in waiters:
            w.result = RESULT_ABORTED
            w.done.set()
        self.end_batch()

    def disconnect(self) -> None:
        """The transport is gone: fail unsent messages and every waiter with EBUSY."""
        self.reset()
        self.dfsm.detach()

    # ------------------------------------------------------------------ requests

    async def request(self, subtype: int, payload: bytes) -> int:
        """Send and wait for our own delivery's result (no timeout, like the reference)."""
        if self._closing:
            return RESULT_ABORTED
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
                self._queued -= 1
                log.warning("%s: multicast failed: %s", self.dfsm.name, exc)
                self.feed(SendFailed(s, str(exc)))
            else:
                self._queued -= 1
