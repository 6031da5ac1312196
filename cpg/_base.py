"""Plumbing shared by the CPG, quorum, cmap and votequorum wrappers.

corosync's client libraries are driven the same way for every service: a handle, an
fd that becomes readable when events are pending, and a ``*_dispatch`` call that runs
the C callbacks synchronously.  :class:`Service` owns that life cycle (including the
"corosync went away" and "finalized" states) and :class:`EventQueue` is the unbounded
buffer the callbacks feed, so a slow consumer never makes us drop an event.
"""

from __future__ import annotations

import collections
import contextlib
import select
from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

import trio

from .errors import (
    CS_OK,
    CorosyncUnavailable,
    CSError,
    CSErrTryAgain,
    HandleClosedError,
    error_for,
)
from .hotwait import HotWait

_DISPATCH_ALL: list[int] = []


def _dispatch_all_flag() -> int:
    """CS_DISPATCH_ALL, read once from the compiled module (imported lazily: building it
    must not be a side effect of importing this package)."""
    if not _DISPATCH_ALL:
        from ._corosync import lib

        _DISPATCH_ALL.append(int(lib.CS_DISPATCH_ALL))
    return _DISPATCH_ALL[0]


T = TypeVar("T")
S = TypeVar("S", bound="Service")

#: Sleep between retries on CS_ERR_TRY_AGAIN (pmxcfs: 100 ms everywhere).
RETRY_DELAY = 0.1
#: cpg_mcast_joined attempts before giving up with CS_ERR_TRY_AGAIN (pmxcfs: 100).
MCAST_MAX_ATTEMPTS = 100


class EventQueue(Generic[T]):
    """Unbounded FIFO filled synchronously from C callbacks, drained by async consumers.

    Memory is the only limit: corosync keeps queuing for a slow client anyway (its
    per-connection outq is unbounded too), and dropping would break virtual synchrony.
    """

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        self._items.append(item)
        self._lot.unpark_all()

    def close(self, error: BaseException | None = None) -> None:
        """No more items; consumers get *error* (or end of stream) once drained."""
        if not self._closed:
            self._closed = True
            self._error = error
        self._lot.unpark_all()

    def get_nowait(self) -> T | None:
        return self._items.popleft() if self._items else None

    async def get(self) -> T:
        """Next item; raises the close error, or :class:`trio.EndOfChannel`."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise trio.EndOfChannel
            await self._lot.park()
        await trio.lowlevel.checkpoint()
        return self._items.popleft()


class Service:
    """One corosync library handle plus its dispatch fd.

    Subclasses set ``_kind`` and implement :meth:`_lib_finalize` and
    :meth:`_lib_dispatch`.  Not thread-safe: use a handle from one trio run.
    """

    _kind: ClassVar[str] = "corosync"
    #: see :meth:`run`; set before running (the DCDB group's handle uses it)
    hot_wait: bool = False

    def __init__(self) -> None:
        self._dispatch_name = f"{self._kind}_dispatch"  # for errors; built once
        self._handle: int | None = None
        self._fd: int = -1
        self._closed = False
        self._failure: CSError | None = None
        self._busy = 0  # C calls in progress that use the handle
        self._release_pending = False
        self._callback_error: BaseException | None = None
        #: called after every dispatch (also one a callback failed in), before the
        #: dispatching task yields: the end of a batch of callbacks (group commit)
        self.after_dispatch: Callable[[], None] | None = None
        #: called right before every dispatch: lets events of another handle that are
        #: already pending (quorum) take priority over this one's
        self.before_dispatch: Callable[[], None] | None = None
        self._poller: select.poll | None = None  # for dispatch_ready
        self._poller_fd = -1

    # -- subclass hooks
    def _lib_finalize(self, handle: int) -> None:
        raise NotImplementedError

    def _lib_dispatch(self, handle: int, flags: int) -> int:
        raise NotImplementedError

    def _unregister(self, handle: int) -> None:
        """Remove the handle from the callback registry."""

    def _on_closed(self, error: BaseException | None) -> None:
        """Hook: the handle is gone (finalized or corosync lost)."""

    # -- state
    @property
    def closed(self) -> bool:
        """True after :meth:`finalize` or once corosync was lost."""
        return self._closed or self._failure is not None

    @property
    def failure(self) -> CSError | None:
        """The :class:`CorosyncUnavailable` that ended this handle, if any."""
        return self._failure

    def fileno(self) -> int:
        """The dispatch fd (readable when callbacks are pending)."""
        self._h("fileno")
        return self._fd

    def _h(self, func: str) -> int:
        """The live C handle, or a clear exception if there is none any more."""
        if self._closed:
            raise HandleClosedError(f"{func}: {self._kind} handle already finalized")
        if self._failure is not None:
            raise self._failure_error(func)
        if self._handle is None:  # pragma: no cover - not reachable via the API
            raise HandleClosedError(f"{func}: {self._kind} handle is not connected")
        return self._handle

    def _failure_error(self, func: str) -> CSError:
        assert self._failure is not None
        err = error_for(self._failure.code, func)
        err.__cause__ = self._failure
        return err

    def _check(self, rc: int, func: str) -> None:
        """Raise for a non-OK *rc*; a lost corosync also retires this handle."""
        if rc == CS_OK:
            return
        err = error_for(rc, func)
        if isinstance(err, CorosyncUnavailable):
            self._lost(err)
        raise err

    def _lost(self, err: CSError) -> None:
        """corosync is gone: remember why and free the C side (never while dispatching)."""
        if self._failure is None and not self._closed:
            self._failure = err
            self._release()
            self._on_closed(err)

    # -- teardown
    def _release(self) -> None:
        handle = self._handle
        if handle is None:
            return
        if self._busy:
            # freeing the handle under a running C call (dispatch) is undefined: defer
            self._release_pending = True
            return
        self._handle = None
        fd, self._fd = self._fd, -1
        if fd >= 0:
            # outside trio.run (RuntimeError) nobody can be waiting on the fd
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(fd)
        self._unregister(handle)
        self._lib_finalize(handle)  # errors ignored: the connection may be dead already

    def _release_if_pending(self) -> None:
        if self._release_pending and not self._busy:
            self._release_pending = False
            self._release()

    def finalize(self) -> None:
        """Close the handle.  Idempotent; later calls raise :class:`HandleClosedError`."""
        if self._closed:
            return
        self._closed = True
        self._release()
        self._on_closed(None)

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.finalize()

    def __del__(self) -> None:
        # best effort: a forgotten handle should not leak a corosync connection
        if getattr(self, "_handle", None) is not None and not self._busy:
            try:
                handle, self._handle = self._handle, None
                self._unregister(handle)  # type: ignore[arg-type]
                self._lib_finalize(handle)  # type: ignore[arg-type]
            except Exception:
                pass

    # -- dispatch
    def _store_callback_error(self, exc: BaseException) -> None:
        """C callbacks cannot raise through C: keep the first error for after dispatch."""
        if self._callback_error is None:
            self._callback_error = exc

    def _dispatch_all(self, handle: int) -> int:
        """One ``*_dispatch(CS_DISPATCH_ALL)``; re-raises what a callback raised."""
        self._busy += 1
        try:
            rc = self._lib_dispatch(handle, _dispatch_all_flag())
        finally:
            self._busy -= 1
        self._release_if_pending()
        err, self._callback_error = self._callback_error, None
        if err is not None:
            raise err
        return rc

    async def dispatch_pending(self, *, retry_delay: float = RETRY_DELAY) -> None:
        """Run ``*_dispatch(CS_DISPATCH_ALL)`` once (non-blocking), retrying TRY_AGAIN.

        Callbacks run synchronously inside it.  Raises :class:`CorosyncUnavailable` if
        the connection is gone, and re-raises an exception a handler raised.
        """
        while not self._dispatch_once():
            await trio.sleep(retry_delay)

    def _dispatch_once(self) -> bool:
        """One dispatch between the before/after hooks; False if corosync answered
        TRY_AGAIN (the caller decides when to retry), other errors raise."""
        name = self._dispatch_name
        handle = self._h(name)
        if self.before_dispatch is not None:
            self.before_dispatch()
        try:
            rc = self._dispatch_all(handle)
        finally:
            if self.after_dispatch is not None:
                self.after_dispatch()
        if rc == CSErrTryAgain.code:
            return False
        self._check(rc, name)
        return True

    def dispatch_ready(self) -> None:
        """Run the callbacks of events already pending, synchronously, without waiting.

        For priority between handles (quorum before CPG deliveries); TRY_AGAIN and a lost
        connection are left to the task running :meth:`run`.
        """
        if self.closed or self._busy:
            return
        poller = self._poller
        if poller is None or self._poller_fd != self._fd:
            poller = self._poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            self._poller_fd = self._fd
        if not poller.poll(0):
            return
        rc = self._dispatch_all(self._h(self._dispatch_name))
        if rc != CS_OK and rc != CSErrTryAgain.code:
            self._check(rc, self._dispatch_name)

    async def run(self) -> None:
        """Dispatch loop driven by fd readiness (``wait_readable``), never by polling.

        With :attr:`hot_wait`, after each dispatch and while trio has nothing else to do,
        the next events are waited for and dispatched without a trip through trio's
        scheduler (cpg/hotwait.py): a delivery then costs no epoll re-arm and no task
        switch. Returns once the handle is finalized (also from inside a callback); raises
        :class:`CorosyncUnavailable` when corosync goes away (the handle is then
        retired: make a new object), :class:`HandleClosedError` if already finalized.
        """
        self._h(f"{self._kind}_run")
        hot = HotWait.create() if self.hot_wait else None
        hot_fd = -1
        try:
            while True:
                if self._closed:
                    return
                if self._failure is not None:
                    raise self._failure_error(f"{self._kind}_dispatch")
                try:
                    await trio.lowlevel.wait_readable(self._fd)
                except trio.ClosedResourceError:
                    continue  # finalized or lost meanwhile: decided at the loop top
                if self.closed:
                    continue
                await self.dispatch_pending()
                if hot is not None and not self.closed:
                    if hot_fd != self._fd:
                        hot.epoll.register(self._fd, select.EPOLLIN)
                        hot_fd = self._fd
                    hot.run(self._hot_dispatch)
        finally:
            if hot is not None:
                hot.epoll.close()

    def _hot_dispatch(self, ready: list[tuple[int, int]]) -> bool:
        """One dispatch from the hot wait; False ends it (closed, or corosync asks us to
        retry later: the plain path sleeps before that)."""
        if self.closed or self._busy:
            return False
        return self._dispatch_once() and not self.closed
