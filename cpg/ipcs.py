"""A libqb IPC *server* (``qb_ipcs_*``) driven by trio, and a blocking client for tests/tools.

libqb does the whole transport (the listening abstract socket, the SCM_CREDENTIALS handshake,
the shared-memory rings); it only asks its host for an event loop through
``qb_ipcs_poll_handlers``.  Here that loop is trio's:

* ``dispatch_add/mod/del(fd, events, fn)`` keep libqb's fds in a private level-triggered
  epoll; one trio task waits for that epoll's fd, reads every ready fd with its exact
  revents in one ``epoll_wait(0)`` and calls libqb's ``fn`` for each; a return < 0 removes
  the fd, as in libqb's own loop.  While no other task is runnable it waits for the next
  request without leaving the task (:class:`HotWait`), as libqb's own loop would;
* ``job_add(fn, data)`` runs ``fn(data)`` soon, from a task of the same nursery.

Everything runs on the trio thread and libqb never blocks (its sockets and rings are
non-blocking), so a request is parsed, handled and answered synchronously inside
``msg_process``, like the reference.  The Python side only sees :class:`IpcConnection`
(peer uid/gid/pid plus whatever ``accept`` returned) and request bytes, and returns
``(error, payload)``.

libqb's poll handlers carry no user pointer, so one :class:`IpcServer` can run per process
at a time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ._corosync import ffi, lib
from .hotwait import HotWait

log = logging.getLogger("cpg.ipcs")

REQUEST_HEADER_SIZE = 16  # struct qb_ipc_request_header: i32 id, i32 size, 8-byte aligned
RESPONSE_HEADER_SIZE = 24  # struct qb_ipc_response_header: i32 id, i32 size, i32 error
_REQ_HDR = struct.Struct("=i4xi4x")
_REQ_ID = struct.Struct("=i")
_RESP_HDR = struct.Struct("=i4xi4xi4x")


@dataclass(eq=False)
class IpcConnection:
    """One client: kernel credentials from the handshake and the accept hook's context."""

    uid: int
    gid: int
    pid: int
    context: Any = None
    requests: int = 0
    closed: bool = field(default=False)
    bufsize: int = field(default=0, repr=False)  # libqb's buffer, cached at the first request


#: accept(uid, gid, pid) -> context, or None to refuse the client
AcceptFn = Callable[[int, int, int], Any]
#: process(connection, request bytes incl. the 16-byte header) -> (error <= 0, payload)
ProcessFn = Callable[[IpcConnection, bytes], tuple[int, bytes]]


@dataclass(eq=False, slots=True)
class _Watch:
    fd: int
    events: int
    data: Any
    fn: Any
    dead: bool = False


_ACTIVE: IpcServer | None = None

#: the poll(2) bits libqb may ask for that epoll knows (POLLNVAL has no epoll twin: epoll
#: never reports a closed fd, libqb learns it from dispatch_del or a failed call)
_EPOLL_WANT = select.POLLIN | select.POLLPRI | select.POLLOUT
#: what an epoll event may carry that poll(2) would report (same bit values)
_REVENTS = _EPOLL_WANT | select.POLLERR | select.POLLHUP


class IpcServer:
    """``qb_ipcs_create(name, service_id, QB_IPC_SHM)`` served from a trio nursery.

    Use ``await nursery.start(server.run)``: it returns once libqb listens (or raises
    ``OSError`` if it cannot), and tears the service down when cancelled (calling
    ``on_stop`` first, while clients are still connected).
    """

    def __init__(
        self,
        name: str,
        service_id: int,
        *,
        accept: AcceptFn,
        process: ProcessFn,
        on_close: Callable[[IpcConnection], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        ipc_type: int | None = None,
        hot_wait: bool = True,
    ) -> None:
        self.name = name
        self.service_id = service_id
        self.accept = accept
        self.process = process
        self.on_close = on_close
        self.on_stop = on_stop  # called when a started server is about to be torn down
        self.ipc_type = lib.QB_IPC_SHM if ipc_type is None else ipc_type
        self.hot_wait = hot_wait  # False: always wait through trio (see HotWait)
        #: keyed by the connection's cdata pointer (cffi hashes and compares it by address)
        self.connections: dict[Any, IpcConnection] = {}
        self._service: Any = None
        self._nursery: trio.Nursery | None = None
        self._watches: dict[int, _Watch] = {}
        #: libqb's fds: [the epoll trio waits on] + [the hot wait's epoll, if any]
        self._epolls: list[select.epoll] = []
        self._hot: HotWait | None = None
        self._stopping = False
        # libqb copies both structs, but keep them (and the names) alive with the service
        self._c_name = ffi.new("char[]", name.encode())
        self._c_handlers = ffi.new("struct qb_ipcs_service_handlers *")
        self._c_handlers.connection_accept = lib._py_qbs_accept
        self._c_handlers.connection_created = lib._py_qbs_created
        self._c_handlers.msg_process = lib._py_qbs_msg_process
        self._c_handlers.connection_closed = lib._py_qbs_closed
        self._c_handlers.connection_destroyed = lib._py_qbs_destroyed
        self._c_poll = ffi.new("struct qb_ipcs_poll_handlers *")
        self._c_poll.job_add = lib._py_qb_job_add
        self._c_poll.dispatch_add = lib._py_qb_dispatch_add
        self._c_poll.dispatch_mod = lib._py_qb_dispatch_mod
        self._c_poll.dispatch_del = lib._py_qb_dispatch_del

    @property
    def running(self) -> bool:
        return self._service is not None

    async def run(
        self, *, task_status: trio.TaskStatus[IpcServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        global _ACTIVE
        if _ACTIVE is not None:
            raise RuntimeError("only one libqb IPC server can run per process")
        failed: OSError | None = None
        self._hot = HotWait.create() if self.hot_wait else None
        self._epolls = [select.epoll()]
        if self._hot is not None:
            self._epolls.append(self._hot.epoll)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                _ACTIVE = self
                try:
                    self._start()
                except OSError as exc:
                    failed = exc  # raised below, outside the nursery (no ExceptionGroup)
                    self._stopping = True
                    _ACTIVE = None
                else:
                    try:
                        nursery.start_soon(self._pump)
                        task_status.started(self)
                        await trio.sleep_forever()
                    finally:
                        self._stop(nursery)
        finally:
            # the pump is gone with the nursery: trio no longer waits on the epoll fd
            for ep in self._epolls:
                ep.close()
            self._epolls, self._hot = [], None
        if failed is not None:
            raise failed

    def _stop(self, nursery: trio.Nursery) -> None:
        global _ACTIVE
        if self.on_stop is not None:
            try:
                self.on_stop()
            except Exception:
                log.exception("IPC on_stop hook failed")
        # stop the pump and every pending job first: nothing may call into libqb once the
        # service is gone; then let libqb close its connections and fds
        nursery.cancel_scope.cancel()
        self._stopping = True
        try:
            self._destroy()
        finally:
            _ACTIVE = None

    def _start(self) -> None:
        s = lib.qb_ipcs_create(self._c_name, self.service_id, self.ipc_type, self._c_handlers)
        if s == ffi.NULL:
            err = ffi.errno or errno.ENOMEM
            raise OSError(err, f"qb_ipcs_create({self.name!r}) failed: {os.strerror(err)}")
        lib.qb_ipcs_poll_handlers_set(s, self._c_poll)
        self._service = s
        rc = lib.qb_ipcs_run(s)
        if rc != 0:
            self._service = None  # a failed qb_ipcs_run already freed the service
            for w in list(self._watches.values()):
                self._drop(w)
            raise OSError(-rc, f"qb_ipcs_run({self.name!r}) failed: {os.strerror(-rc)}")

    def _destroy(self) -> None:
        s, self._service = self._service, None
        if s is not None:
            lib.qb_ipcs_destroy(s)
        for w in list(self._watches.values()):
            self._drop(w)

    # ------------------------------------------------------------------ poll handlers

    def _job_add(self, data: Any, fn: Any) -> int:
        if self._stopping or self._nursery is None:
            return -errno.ESHUTDOWN
        self._nursery.start_soon(self._run_job, data, fn)
        return 0

    async def _run_job(self, data: Any, fn: Any) -> None:
        await trio.lowlevel.checkpoint()
        if not self._stopping:
            fn(data)

    def _dispatch_add(self, fd: int, events: int, data: Any, fn: Any) -> int:
        if self._stopping or self._nursery is None:
            return -errno.ESHUTDOWN
        if fd in self._watches:
            return -errno.EEXIST
        done: list[select.epoll] = []
        try:
            for ep in self._epolls:
                ep.register(fd, events & _EPOLL_WANT)
                done.append(ep)
        except OSError as exc:
            for ep in done:
                ep.unregister(fd)
            return -(exc.errno or errno.EINVAL)
        self._watches[fd] = _Watch(fd, events, data, fn)
        return 0

    def _dispatch_mod(self, fd: int, events: int, data: Any, fn: Any) -> int:
        w = self._watches.get(fd)
        if w is None:
            return -errno.ENOENT
        if (w.events ^ events) & _EPOLL_WANT:
            try:
                for ep in self._epolls:
                    ep.modify(fd, events & _EPOLL_WANT)
            except OSError as exc:
                return -(exc.errno or errno.EINVAL)
        w.events, w.data, w.fn = events, data, fn
        return 0

    def _dispatch_del(self, fd: int) -> int:
        w = self._watches.get(fd)
        if w is None:
            return -errno.ENOENT
        self._drop(w)  # before libqb closes the fd
        return 0

    def _drop(self, w: _Watch) -> None:
        w.dead = True
        if self._watches.get(w.fd) is w:
            del self._watches[w.fd]
            for ep in self._epolls:
                with contextlib.suppress(OSError, ValueError):  # fd closed: epoll forgot it
                    ep.unregister(w.fd)

    async def _pump(self) -> None:
        """The one task that serves every libqb fd.

        libqb's fds sit in a private level-triggered epoll, registered once; trio waits on
        that epoll's fd.  One ``epoll_wait(0)`` per wakeup then names every ready fd with
        its exact revents (no poll(2) per fd, no re-registration per request), and every
        ready connection is served before the task waits again.

        After serving, once trio has nothing else to run, the task stays *hot*: it blocks
        in a second epoll that holds libqb's fds and trio's own epoll fd, so the client's
        next request is served without a trip through trio's scheduler, and any event of
        trio's (I/O, a signal, a thread's ``run_sync_soon``), a task made runnable or trio's
        next deadline sends it back at once (see :class:`HotWait`).
        """
        wait_readable = trio.lowlevel.wait_readable
        idle = self._epolls[0]
        idle_fd, idle_poll = idle.fileno(), idle.poll
        hot = self._hot
        while True:
            await wait_readable(idle_fd)
            self._serve(idle_poll(0))
            if hot is not None:
                hot.run(self._serve)

    def _serve(self, ready: list[tuple[int, int]]) -> None:
        watches = self._watches
        if len(ready) == 1:
            fd, revents = ready[0]
            w = watches.get(fd)
            if w is not None:
                self._dispatch(w, revents)
            return
        # look every fd up first: a dispatch may delete a later one (and libqb may reuse its
        # number for a new connection within the same batch)
        for w, revents in [(watches.get(fd), ev) for fd, ev in ready]:
            if w is not None and not w.dead and not self._stopping:
                self._dispatch(w, revents)

    def _dispatch(self, w: _Watch, revents: int) -> None:
        try:
            rc = w.fn(w.fd, revents & _REVENTS, w.data)
        except Exception:  # a bug here must not take the daemon down: drop this fd only
            log.exception("IPC: dispatching fd %d failed", w.fd)
            rc = -1
        if rc < 0 and not w.dead:  # as libqb's own loop: a failed dispatch drops the fd
            self._drop(w)

    # ------------------------------------------------------------------ service handlers

    def _on_accept(self, c: Any, uid: int, gid: int) -> int:
        stats = ffi.new("struct qb_ipcs_connection_stats *")
        pid = stats.client_pid if lib.qb_ipcs_connection_stats_get(c, stats, 0) == 0 else 0
        try:
            ctx = self.accept(uid, gid, pid)
        except Exception:
            log.exception("IPC accept hook failed")
            ctx = None
        if ctx is None:
            return -errno.EACCES
        self.connections[c] = IpcConnection(uid, gid, pid, ctx)
        return 0

    def _on_msg(self, c: Any, data: Any, size: int) -> int:
        # libqb passes the header's size field, not the received length; a value outside
        # [header, buffer] is answered without reading past what libqb mapped
        conn = self.connections.get(c)
        if conn is None:
            req_id = _REQ_ID.unpack_from(ffi.buffer(data, 4))[0]
            error, payload = -errno.EACCES, b""
        else:
            bufsize = conn.bufsize
            if not bufsize:  # fixed for the connection's life, known once it is set up
                bufsize = conn.bufsize = max(
                    lib.qb_ipcs_connection_get_buffer_size(c), REQUEST_HEADER_SIZE
                )
            if REQUEST_HEADER_SIZE <= size <= bufsize:
                request = ffi.buffer(data, size)[:]
                req_id = _REQ_ID.unpack_from(request)[0]
                conn.requests += 1
                try:
                    error, payload = self.process(conn, request)
                    if not isinstance(error, int) or not -(2**31) <= error <= 0:
                        raise TypeError(f"bad error code {error!r}")
                    if type(payload) is not bytes:
                        payload = bytes(payload)
                except Exception:  # the client must get an answer: it may wait forever
                    log.exception("IPC request handler failed")
                    error, payload = -errno.EIO, b""
            else:
                req_id = _REQ_ID.unpack_from(ffi.buffer(data, 4))[0]
                error, payload = -errno.EINVAL, b""
        if error:
            resp = _RESP_HDR.pack(req_id, RESPONSE_HEADER_SIZE, error)
        else:
            resp = _RESP_HDR.pack(req_id, RESPONSE_HEADER_SIZE + len(payload), 0) + payload
        rc = lib.qb_ipcs_response_send(c, resp, len(resp))
        if rc < 0:
            log.critical("qb_ipcs_response_send: %s", os.strerror(-rc))
            self._disconnect_soon(c)
        return 0

    def _disconnect_soon(self, c: Any) -> None:
        """Drop a client, but not from inside libqb's dispatch of its request (which goes
        on using the connection after msg_process returns)."""
        if self._stopping or self._nursery is None:
            return
        lib.qb_ipcs_connection_ref(c)
        self._nursery.start_soon(self._disconnect_task, c)

    async def _disconnect_task(self, c: Any) -> None:
        try:
            await trio.lowlevel.checkpoint()
        finally:
            if not self._stopping:  # at shutdown qb_ipcs_destroy disconnects everyone
                lib.qb_ipcs_disconnect(c)
                lib.qb_ipcs_connection_unref(c)

    def _on_destroyed(self, c: Any) -> None:
        conn = self.connections.pop(c, None)
        if conn is not None:
            conn.closed = True
            if self.on_close is not None:
                self.on_close(conn)


# ---------------------------------------------------------------------- C callbacks


def _guard(default: int, what: str, fn: Callable[[IpcServer], int]) -> int:
    srv = _ACTIVE
    if srv is None:
        return default
    try:
        return fn(srv)
    except Exception:  # never raise through C
        log.exception("libqb %s callback failed", what)
        return default


@ffi.def_extern()
def _py_qb_job_add(p: int, data: Any, fn: Any) -> int:
    return _guard(-errno.EINVAL, "job_add", lambda s: s._job_add(data, fn))


@ffi.def_extern()
def _py_qb_dispatch_add(p: int, fd: int, events: int, data: Any, fn: Any) -> int:
    return _guard(-errno.EINVAL, "dispatch_add", lambda s: s._dispatch_add(fd, events, data, fn))


@ffi.def_extern()
def _py_qb_dispatch_mod(p: int, fd: int, events: int, data: Any, fn: Any) -> int:
    return _guard(-errno.EINVAL, "dispatch_mod", lambda s: s._dispatch_mod(fd, events, data, fn))


@ffi.def_extern()
def _py_qb_dispatch_del(fd: int) -> int:
    return _guard(-errno.EINVAL, "dispatch_del", lambda s: s._dispatch_del(fd))


@ffi.def_extern()
def _py_qbs_accept(c: Any, uid: int, gid: int) -> int:
    return _guard(-errno.EACCES, "connection_accept", lambda s: s._on_accept(c, uid, gid))


@ffi.def_extern()
def _py_qbs_created(c: Any) -> None:
    pass


@ffi.def_extern()
def _py_qbs_msg_process(c: Any, data: Any, size: int) -> int:
    srv = _ACTIVE  # _guard inlined: this runs once per request
    if srv is None:
        return 0
    try:
        return srv._on_msg(c, data, size)
    except Exception:  # never raise through C
        log.exception("libqb msg_process callback failed")
        return 0


@ffi.def_extern()
def _py_qbs_closed(c: Any) -> int:
    return 0


@ffi.def_extern()
def _py_qbs_destroyed(c: Any) -> None:
    def run(s: IpcServer) -> int:
        s._on_destroyed(c)
        return 0

    _guard(0, "connection_destroyed", run)


# ---------------------------------------------------------------------- client


class IpcClient:
    """A blocking libqb client (``qb_ipcc_connect``/``qb_ipcc_sendv_recv``), as PVE::IPCC."""

    def __init__(self, name: str, max_msg_size: int = 1024 * 1024) -> None:
        c = lib.qb_ipcc_connect(name.encode(), max_msg_size)
        if c == ffi.NULL:
            err = ffi.errno or errno.ECONNREFUSED
            raise OSError(err, f"qb_ipcc_connect({name!r}): {os.strerror(err)}")
        self._c: Any = c
        self._buf = ffi.new("char[]", max_msg_size)
        self._bufsize = max_msg_size

    def request_raw(self, raw: bytes, timeout_ms: int = 5000) -> tuple[int, int, bytes]:
        """Send *raw* (header included, unchanged); (id, error, payload), or OSError."""
        if self._c is None:
            raise OSError(errno.ENOTCONN, "disconnected")
        data = ffi.from_buffer(raw)
        iov = ffi.new("struct iovec *")
        iov.iov_base = ffi.cast("void *", data)
        iov.iov_len = len(raw)
        rc = lib.qb_ipcc_sendv_recv(self._c, iov, 1, self._buf, self._bufsize, timeout_ms)
        if rc < 0:
            raise OSError(-rc, f"qb_ipcc_sendv_recv: {os.strerror(-rc)}")
        resp = bytes(ffi.buffer(self._buf, rc))
        req_id, size, error = _RESP_HDR.unpack_from(resp)
        return req_id, error, resp[RESPONSE_HEADER_SIZE:size]

    def request(self, op: int, payload: bytes = b"") -> tuple[int, bytes]:
        """One PVE::IPCC-style request: (error, payload)."""
        raw = _REQ_HDR.pack(op, REQUEST_HEADER_SIZE + len(payload)) + payload
        _id, error, data = self.request_raw(raw)
        return error, data

    def close(self) -> None:
        c, self._c = self._c, None
        if c is not None:
            lib.qb_ipcc_disconnect(c)

    def __enter__(self) -> IpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
