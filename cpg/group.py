"""Closed Process Groups (libcpg) for trio.

pmxcfs needs exactly this subset: join/leave a group, learn our nodeid, multicast with
``CPG_TYPE_AGREED`` from several buffers, and receive deliveries and membership changes
(confchg) in corosync's total order.  Events are produced by ``cpg_dispatch`` inside
:meth:`Cpg.run` and either handed to a synchronous handler or queued without bound
for :meth:`Cpg.receive` / ``async for``.

Group names are bytes compared by length *and* content: pmxcfs joins
``b"pve_dcdb_v1\\0"`` (length 12, the NUL counts).  :func:`group_name` makes that
choice explicit with its required ``include_nul`` argument.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import trio

from ._base import MCAST_MAX_ATTEMPTS, RETRY_DELAY, EventQueue, Service
from ._corosync import ffi, lib
from .errors import (
    CS_OK,
    CorosyncError,
    CpgNameError,
    CpgNotJoined,
    CSErrExist,
    CSErrTooBig,
    CSErrTryAgain,
    error_for,
)

CPG_MAX_NAME_LENGTH: int = lib.CPG_MAX_NAME_LENGTH
CPG_TYPE_AGREED: int = lib.CPG_TYPE_AGREED
#: corosync carries the message length as uint32
MAX_MESSAGE_SIZE = 0xFFFFFFFF
#: libcpg copies iovecs into ``struct iovec iov[64]`` next to its own header
MAX_IOVECS = 63

Buffer = bytes | bytearray | memoryview


class CpgReason(enum.IntEnum):
    """Why a member appears in a confchg's left/joined list (``cpg_reason_t``)."""

    UNDEFINED = 0
    JOIN = 1
    LEAVE = 2
    NODEDOWN = 3
    NODEUP = 4
    PROCDOWN = 5


class CpgAddress(NamedTuple):
    nodeid: int
    pid: int
    reason: CpgReason


@dataclass(frozen=True, slots=True)
class CpgDeliver:
    """One message, in agreed order; *group* is the exact name bytes (NUL included)."""

    group: bytes
    nodeid: int
    pid: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CpgConfchg:
    """A membership change of *group* (virtually synchronous with deliveries)."""

    group: bytes
    members: tuple[CpgAddress, ...]
    left: tuple[CpgAddress, ...]
    joined: tuple[CpgAddress, ...]


CpgEvent = CpgDeliver | CpgConfchg


def group_name(name: bytes | str, *, include_nul: bool) -> bytes:
    """The exact bytes corosync will see for *name*.

    With *include_nul* the terminating NUL is part of the name, as pmxcfs does
    (``length = strlen + 1``); a group joined without it is a *different* group.
    Raises :class:`CpgNameError` if the result is empty or longer than 128 bytes.
    """
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if include_nul:
        if b"\0" in raw:
            raise CpgNameError(f"group name {raw!r} contains a NUL byte")
        raw += b"\0"
    if not raw:
        raise CpgNameError("empty CPG group name")
    if len(raw) > CPG_MAX_NAME_LENGTH:
        raise CpgNameError(
            f"CPG group name is {len(raw)} bytes, more than CPG_MAX_NAME_LENGTH "
            f"({CPG_MAX_NAME_LENGTH}){' including the NUL' if include_nul else ''}"
        )
    return raw


def _cpg_name(raw: bytes) -> Any:
    cname = ffi.new("struct cpg_name *")
    cname.length = len(raw)
    ffi.memmove(cname.value, raw, len(raw))
    return cname


def _addresses(arr: Any, n: int) -> tuple[CpgAddress, ...]:
    return tuple(
        CpgAddress(int(arr[i].nodeid), int(arr[i].pid), _reason(int(arr[i].reason)))
        for i in range(n)
    )


def _reason(value: int) -> CpgReason:
    try:
        return CpgReason(value)
    except ValueError:
        return CpgReason.UNDEFINED


_REGISTRY: dict[int, Cpg] = {}


@ffi.def_extern()
def _py_cpg_deliver(handle: int, group: Any, nodeid: int, pid: int, msg: Any, msg_len: int) -> None:
    self = _REGISTRY.get(int(handle))
    if self is None:
        return
    try:
        fast = self._deliver_handler
        if fast is not None:
            fast(int(nodeid), int(pid), ffi.buffer(msg, msg_len)[:] if msg_len else b"")
            return
        ev = CpgDeliver(
            bytes(ffi.buffer(group.value, group.length)),
            int(nodeid),
            int(pid),
            bytes(ffi.buffer(msg, msg_len)) if msg_len else b"",
        )
        self._emit(ev)
    except BaseException as exc:
        self._store_callback_error(exc)


@ffi.def_extern()
def _py_cpg_confchg(
    handle: int,
    group: Any,
    members: Any,
    n_members: int,
    left: Any,
    n_left: int,
    joined: Any,
    n_joined: int,
) -> None:
    self = _REGISTRY.get(int(handle))
    if self is None:
        return
    try:
        ev = CpgConfchg(
            bytes(ffi.buffer(group.value, group.length)),
            _addresses(members, n_members),
            _addresses(left, n_left),
            _addresses(joined, n_joined),
        )
        self._emit(ev)
    except BaseException as exc:
        self._store_callback_error(exc)


class Cpg(Service):
    """A libcpg handle.

    Typical use::

        async with trio.open_nursery() as nursery, Cpg() as cpg:
            nursery.start_soon(cpg.run)
            await cpg.join(b"pve_dcdb_v1", include_nul=True)
            await cpg.mcast(header, payload)
            async for ev in cpg:
                ...

    Pass *handler* to get each event synchronously from inside ``cpg_dispatch`` instead
    of queueing it (what the C DFSM does); exceptions it raises propagate out of
    :meth:`run`.  *deliver_handler*, if given, takes deliveries instead, as
    ``(nodeid, pid, payload)`` without building an event (the hot path); confchgs still
    go to *handler* or the queue.  ``cpg_initialize`` connects to corosync at
    construction and raises :class:`~cpg.errors.CorosyncUnavailable` when corosync is not
    running.
    """

    _kind = "cpg"

    def __init__(
        self,
        *,
        handler: Callable[[CpgEvent], None] | None = None,
        deliver_handler: Callable[[int, int, bytes], None] | None = None,
    ) -> None:
        super().__init__()
        self._handler = handler
        self._deliver_handler = deliver_handler
        self._events: EventQueue[CpgEvent] = EventQueue()
        #: how often cpg_mcast_joined answered CS_ERR_TRY_AGAIN (flow control)
        self.try_again_count = 0
        #: our corosync nodeid (``cpg_local_get`` at connect time)
        self.nodeid: int = 0
        #: the group joined through this handle (exact bytes), None when not joined
        self.group: bytes | None = None
        self._has_left = False
        self._io_lock = trio.Lock()
        self._thread_busy = False
        self._max_atomic = 0
        callbacks = ffi.new("cpg_callbacks_t *")
        callbacks.cpg_deliver_fn = lib._py_cpg_deliver
        callbacks.cpg_confchg_fn = lib._py_cpg_confchg
        hp = ffi.new("cpg_handle_t *")
        rc = lib.cpg_initialize(hp, callbacks)
        if rc != CS_OK:
            raise error_for(rc, "cpg_initialize")
        self._handle = int(hp[0])
        _REGISTRY[self._handle] = self
        try:
            fdp = ffi.new("int *")
            self._check(lib.cpg_fd_get(self._handle, fdp), "cpg_fd_get")
            self._fd = int(fdp[0])
            self.nodeid = self.local_get()
            self._max_atomic = self.max_atomic_msgsize()
        except BaseException:
            self.finalize()
            raise

    # -- Service hooks
    def _lib_finalize(self, handle: int) -> None:
        lib.cpg_finalize(handle)

    def _lib_dispatch(self, handle: int, flags: int) -> int:
        return int(lib.cpg_dispatch(handle, flags))

    def _unregister(self, handle: int) -> None:
        _REGISTRY.pop(handle, None)

    def _on_closed(self, error: BaseException | None) -> None:
        self._events.close(error)

    def _emit(self, ev: CpgEvent) -> None:
        if self._handler is not None:
            self._handler(ev)
        else:
            self._events.put(ev)

    # -- queries
    def local_get(self) -> int:
        """Our corosync nodeid (``cpg_local_get``); also cached as :attr:`nodeid`."""
        out = ffi.new("unsigned int *")
        self._check(lib.cpg_local_get(self._sync_h("cpg_local_get"), out), "cpg_local_get")
        return int(out[0])

    def max_atomic_msgsize(self) -> int:
        """Largest message corosync sends without fragmenting it."""
        out = ffi.new("uint32_t *")
        rc = lib.cpg_max_atomic_msgsize_get(self._sync_h("cpg_max_atomic_msgsize_get"), out)
        self._check(rc, "cpg_max_atomic_msgsize_get")
        return int(out[0])

    def flow_control_enabled(self) -> bool:
        """corosync asks senders to pause (pmxcfs ignores this; TRY_AGAIN is the limit)."""
        out = ffi.new("cpg_flow_control_state_t *")
        rc = lib.cpg_flow_control_state_get(self._sync_h("cpg_flow_control_state_get"), out)
        self._check(rc, "cpg_flow_control_state_get")
        return bool(out[0])

    def membership(
        self, name: bytes | str | None = None, *, include_nul: bool | None = None
    ) -> tuple[CpgAddress, ...]:
        """Current members of a group (``cpg_membership_get``); default: our group."""
        if name is None:
            if self.group is None:
                raise CpgNotJoined("cpg_membership_get: no group given and none joined")
            raw = self.group
        elif include_nul is None:
            raise TypeError("membership(name) needs include_nul=True/False")
        else:
            raw = group_name(name, include_nul=include_nul)
        members = ffi.new("struct cpg_address[]", lib.CPG_MEMBERS_MAX)
        count = ffi.new("int *", lib.CPG_MEMBERS_MAX)
        handle = self._sync_h("cpg_membership_get")
        rc = lib.cpg_membership_get(handle, _cpg_name(raw), members, count)
        self._check(rc, "cpg_membership_get")
        return _addresses(members, count[0])

    # -- membership
    async def join(
        self,
        name: bytes | str,
        *,
        include_nul: bool,
        retry_delay: float = RETRY_DELAY,
        max_attempts: int | None = None,
    ) -> bytes:
        """Join a group; returns its exact name bytes (what events carry as ``group``).

        A handle is in at most one group at a time, and corosync 3 does not let it
        join again after :meth:`leave` (both answer CS_ERR_EXIST).
        CS_ERR_TRY_AGAIN is retried every 100 ms without limit by default, like pmxcfs.
        """
        raw = group_name(name, include_nul=include_nul)
        try:
            await self._retry(lambda h: lib.cpg_join(h, _cpg_name(raw)), "cpg_join",
                              retry_delay, max_attempts)  # fmt: skip
        except CSErrExist as exc:
            if self._has_left:
                raise CSErrExist(
                    "cpg_join",
                    detail="corosync does not let a handle rejoin after "
                    "cpg_leave; finalize it and join with a new Cpg",
                ) from exc
            raise
        self.group = raw
        return raw

    async def leave(
        self, *, retry_delay: float = RETRY_DELAY, max_attempts: int | None = None
    ) -> None:
        """Leave the joined group (TRY_AGAIN retried like :meth:`join`).

        corosync leaves the handle's group whatever name is passed, so this takes none.
        The confchg that removes us still arrives through :meth:`run`.
        """
        self._h("cpg_leave")
        if self.group is None:
            raise CpgNotJoined("cpg_leave: this handle has not joined a group")
        raw = self.group
        await self._retry(lambda h: lib.cpg_leave(h, _cpg_name(raw)), "cpg_leave",
                          retry_delay, max_attempts)  # fmt: skip
        self.group = None
        self._has_left = True

    async def _retry(
        self,
        call: Callable[[int], int],
        func: str,
        retry_delay: float,
        max_attempts: int | None,
    ) -> None:
        async with self._io_lock:
            attempt = 0
            while True:
                attempt += 1
                rc = int(call(self._h(func)))
                if rc == CSErrTryAgain.code and (max_attempts is None or attempt < max_attempts):
                    await trio.sleep(retry_delay)
                    continue
                self._check(rc, func)
                break
        await trio.lowlevel.checkpoint()

    # -- sending
    def _prepare(self, buffers: tuple[Buffer, ...]) -> tuple[tuple[Buffer, ...], int]:
        """Validate the iovec; returns (buffers, total length)."""
        total = sum(memoryview(b).nbytes for b in buffers)
        if total > MAX_MESSAGE_SIZE:
            raise CSErrTooBig(
                "cpg_mcast_joined",
                detail=f"message of {total} bytes; corosync's msglen is 32-bit "
                f"(max {MAX_MESSAGE_SIZE})",
            )
        if len(buffers) > MAX_IOVECS:
            # libcpg copies the iovec into a fixed 64-entry array: never pass more
            buffers = (b"".join(buffers),)
        return buffers, total

    @staticmethod
    def _mcast_c(handle: int, buffers: tuple[Buffer, ...], guarantee: int) -> int:
        n = len(buffers)
        if n == 1:
            # the common case (pmxcfs sends one buffer): one iovec, no list of keep-alives
            iov1 = ffi.new("struct iovec *")
            cbuf = ffi.from_buffer(buffers[0])
            iov1.iov_base = cbuf
            iov1.iov_len = len(cbuf)
            return int(lib.cpg_mcast_joined(handle, guarantee, iov1, 1))
        iov = ffi.new("struct iovec[]", max(n, 1))
        keep = []
        for i, buf in enumerate(buffers):
            cbuf = ffi.from_buffer(buf)
            keep.append(cbuf)
            iov[i].iov_base = cbuf
            iov[i].iov_len = len(cbuf)
        return int(lib.cpg_mcast_joined(handle, guarantee, iov, n))

    def _joined(self, func: str) -> None:
        # corosync drops an unjoined handle's multicast without telling the sender
        if self.group is None:
            raise CpgNotJoined(f"{func}: join a group before sending")

    def _sync_h(self, func: str) -> int:
        """Handle for a synchronous request, refused while a worker thread uses it."""
        handle = self._h(func)
        if self._thread_busy:
            raise CorosyncError(f"{func}: cpg handle is busy sending a large message")
        return handle

    def mcast_nowait(self, *buffers: Buffer, guarantee: int = CPG_TYPE_AGREED) -> None:
        """One ``cpg_mcast_joined`` attempt; the buffers are sent as one message.

        Raises :class:`~cpg.errors.CSErrTryAgain` when corosync wants the sender to
        back off.  Messages above :meth:`max_atomic_msgsize` are fragmented by libcpg
        with blocking waits -- use :meth:`mcast`, which moves those to a thread.
        """
        handle = self._sync_h("cpg_mcast_joined")
        self._joined("cpg_mcast_joined")
        bufs, _total = self._prepare(buffers)
        rc = self._mcast_c(handle, bufs, guarantee)
        if rc == CSErrTryAgain.code:
            self.try_again_count += 1
        self._check(rc, "cpg_mcast_joined")

    def mcast_direct(self, *buffers: Buffer, guarantee: int = CPG_TYPE_AGREED) -> bool:
        """Send now if that cannot block; False asks the caller to use :meth:`mcast`.

        False when a send is queued or in progress on this handle, when the message is
        above :meth:`max_atomic_msgsize` (libcpg would block while fragmenting), or when
        corosync answers CS_ERR_TRY_AGAIN (counted, not retried).  Other errors raise.
        """
        if self._io_lock.locked() or self._thread_busy:
            return False
        handle = self._h("cpg_mcast_joined")
        self._joined("cpg_mcast_joined")
        bufs, total = self._prepare(buffers)
        if total > self._max_atomic:
            return False
        rc = self._mcast_c(handle, bufs, guarantee)
        if rc == CSErrTryAgain.code:
            self.try_again_count += 1
            return False
        self._check(rc, "cpg_mcast_joined")
        return True

    async def mcast(
        self,
        *buffers: Buffer,
        guarantee: int = CPG_TYPE_AGREED,
        max_attempts: int = MCAST_MAX_ATTEMPTS,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        """Multicast the concatenation of *buffers* to the joined group(s).

        Retries CS_ERR_TRY_AGAIN every 100 ms up to 100 attempts (pmxcfs' policy, about
        10 s) and then raises :class:`~cpg.errors.CSErrTryAgain`.  Our own copy comes
        back as a :class:`CpgDeliver` in the group's total order.  Sends are serialized
        per handle; messages too big for one IPC chunk are sent from a worker thread
        because libcpg's fragmenting path blocks.
        """
        self._h("cpg_mcast_joined")
        self._joined("cpg_mcast_joined")
        bufs, total = self._prepare(buffers)
        big = total > self._max_atomic
        attempt = 0
        if not big and not self._io_lock.locked():
            # fast path: nobody is queued before us and the call cannot block
            attempt = 1
            rc = self._mcast_c(self._h("cpg_mcast_joined"), bufs, guarantee)
            if rc != CSErrTryAgain.code:
                self._check(rc, "cpg_mcast_joined")
                await trio.lowlevel.checkpoint()
                return
            self.try_again_count += 1
            if attempt >= max_attempts:
                self._check(rc, "cpg_mcast_joined")
        async with self._io_lock:
            while True:
                if attempt:
                    await trio.sleep(retry_delay)
                attempt += 1
                handle = self._h("cpg_mcast_joined")
                if big:
                    # the handle must outlive the thread: finalize() defers while busy
                    self._thread_busy = True
                    self._busy += 1
                    try:
                        rc = await trio.to_thread.run_sync(self._mcast_c, handle, bufs, guarantee)
                    finally:
                        self._busy -= 1
                        self._thread_busy = False
                        self._release_if_pending()
                else:
                    rc = self._mcast_c(handle, bufs, guarantee)
                if rc == CSErrTryAgain.code:
                    self.try_again_count += 1
                    if attempt < max_attempts:
                        continue
                self._check(rc, "cpg_mcast_joined")
                break
        await trio.lowlevel.checkpoint()

    async def dispatch_pending(self, *, retry_delay: float = RETRY_DELAY) -> None:
        """As :meth:`Service.dispatch_pending`, but never alongside a threaded send."""
        if self._thread_busy:
            async with self._io_lock:
                pass
        await super().dispatch_pending(retry_delay=retry_delay)

    # -- receiving
    @property
    def pending(self) -> int:
        """Events dispatched but not yet received."""
        return len(self._events)

    async def receive(self) -> CpgEvent:
        """Next event.  Raises the :class:`~cpg.errors.CorosyncUnavailable` that ended
        the handle, or :class:`~cpg.errors.HandleClosedError` after :meth:`finalize`."""
        try:
            return await self._events.get()
        except trio.EndOfChannel:
            raise self._closed_error() from None

    def _closed_error(self) -> Exception:
        try:
            self._h("cpg_receive")
        except Exception as exc:
            return exc
        return RuntimeError("event stream ended")  # pragma: no cover

    def __aiter__(self) -> Cpg:
        return self

    async def __anext__(self) -> CpgEvent:
        """Iteration ends quietly after :meth:`finalize`; a lost corosync raises."""
        try:
            return await self._events.get()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
