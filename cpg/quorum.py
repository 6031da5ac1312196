"""corosync quorum state (libquorum, v0 API) for trio.

pmxcfs only needs the quorate flag and to hear when it changes (status-ipc.md §5.4):
``quorum_initialize`` with a notify callback, a type check for ``QUORUM_SET``, then
``quorum_trackstart(CS_TRACK_CHANGES)``.  corosync sends one notification right after
trackstart and one per change; they arrive through :meth:`Quorum.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ._base import EventQueue, Service
from ._corosync import ffi, lib
from .errors import CS_OK, QuorumNotConfigured, error_for


@dataclass(frozen=True, slots=True)
class QuorumChange:
    """One quorum notification: flag, ring sequence and the member nodeids."""

    quorate: bool
    ring_seq: int
    members: tuple[int, ...]


_REGISTRY: dict[int, Quorum] = {}


@ffi.def_extern()
def _py_quorum_notify(handle: int, quorate: int, ring_seq: int, n: int, view: Any) -> None:
    self = _REGISTRY.get(int(handle))
    if self is None:
        return
    try:
        self._notify(QuorumChange(bool(quorate), int(ring_seq),
                                  tuple(int(view[i]) for i in range(n))))  # fmt: skip
    except BaseException as exc:
        self._store_callback_error(exc)


class Quorum(Service):
    """Tracks corosync's quorate flag.

    :attr:`quorate` is False until the first notification (as in pmxcfs) and becomes
    False again when the handle is lost.  Run :meth:`run` in a task; wait with
    :meth:`wait_quorate` or consume :class:`QuorumChange` events via ``async for``.
    """

    _kind = "quorum"

    def __init__(self, *, handler: Callable[[QuorumChange], None] | None = None) -> None:
        super().__init__()
        self._handler = handler
        self._events: EventQueue[QuorumChange] = EventQueue()
        self._lot = trio.lowlevel.ParkingLot()
        self.quorate = False
        self.last: QuorumChange | None = None
        callbacks = ffi.new("quorum_callbacks_t *")
        callbacks.quorum_notify_fn = lib._py_quorum_notify
        hp = ffi.new("quorum_handle_t *")
        qtype = ffi.new("uint32_t *")
        rc = lib.quorum_initialize(hp, callbacks, qtype)
        if rc != CS_OK:
            raise error_for(rc, "quorum_initialize")
        self._handle = int(hp[0])
        _REGISTRY[self._handle] = self
        try:
            if qtype[0] != lib.QUORUM_SET:
                raise QuorumNotConfigured(
                    f"quorum_initialize: type {qtype[0]} is not QUORUM_SET (no quorum provider)"
                )
            fdp = ffi.new("int *")
            self._check(lib.quorum_fd_get(self._handle, fdp), "quorum_fd_get")
            self._fd = int(fdp[0])
            self._check(lib.quorum_trackstart(self._handle, lib.CS_TRACK_CHANGES),
                        "quorum_trackstart")  # fmt: skip
        except BaseException:
            self.finalize()
            raise

    def _lib_finalize(self, handle: int) -> None:
        lib.quorum_finalize(handle)

    def _lib_dispatch(self, handle: int, flags: int) -> int:
        return int(lib.quorum_dispatch(handle, flags))

    def _unregister(self, handle: int) -> None:
        _REGISTRY.pop(handle, None)

    def _on_closed(self, error: BaseException | None) -> None:
        self.quorate = False
        self._events.close(error)
        self._lot.unpark_all()

    def _notify(self, change: QuorumChange) -> None:
        self.quorate = change.quorate
        self.last = change
        self._lot.unpark_all()
        if self._handler is not None:
            self._handler(change)
        else:
            self._events.put(change)

    def getquorate(self) -> bool:
        """Ask corosync directly (synchronous IPC round trip)."""
        out = ffi.new("int *")
        self._check(lib.quorum_getquorate(self._h("quorum_getquorate"), out),
                    "quorum_getquorate")  # fmt: skip
        return bool(out[0])

    async def wait_quorate(self, value: bool = True) -> None:
        """Wait until a notification set :attr:`quorate` to *value* (needs :meth:`run`)."""
        while self.quorate is not value or self.last is None:
            self._h("quorum_wait")
            await self._lot.park()

    async def receive(self) -> QuorumChange:
        """Next notification; raises why the handle ended once drained."""
        try:
            return await self._events.get()
        except trio.EndOfChannel:
            self._h("quorum_receive")
            raise

    def __aiter__(self) -> Quorum:
        return self

    async def __anext__(self) -> QuorumChange:
        try:
            return await self._events.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
