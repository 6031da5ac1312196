"""The admin socket, served from the daemon's nursery: `<run-dir>/admin.sock`, mode 0600.

Only root may ask: the socket file is root's alone and every connection's peer credentials
(SO_PEERCRED) are checked as well, so a process that got past the file mode (a capability,
a descriptor passed on) is still refused. A connection carries any number of requests, one
reply each, in order; idle or slow clients are dropped after `IDLE_TIMEOUT` so they cannot
pile up, and at most `MAX_CLIENTS` are served at once. A 1 s sampler task beside the server
feeds the history (rates, sync times) the status document needs.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import trio

from . import protocol
from .history import History
from .snapshot import Sources, answer, new_history, sample

log = logging.getLogger("pmxcfs.admin")

IDLE_TIMEOUT = 10.0
MAX_CLIENTS = 16
SAMPLE_INTERVAL = 1.0
_UCRED = struct.Struct("3i")  # pid, uid, gid
REFUSED = "permission denied: only root may use the pmxcfs admin socket"


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected `sock`."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _in_use(path: str) -> bool:
    """True if something accepts connections on `path` (another daemon's live socket)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a Unix socket answers at once: accepted, refused or full
    try:
        probe.connect(path)
        return True
    except BlockingIOError:
        return True  # a full backlog: someone listens and does not accept
    except OSError:
        return False
    finally:
        probe.close()


def bind(path: str) -> socket.socket:
    """A listening socket at `path`, mode 0600 from the first moment it is reachable.

    It is bound under a temporary name, restricted, then renamed over `path` (replacing a
    stale socket of a dead daemon; a live one is left alone: OSError EADDRINUSE). Nothing
    here waits, so the daemon can create it without yielding during its startup.
    """
    if os.path.exists(path) and _in_use(path):
        raise OSError(errno.EADDRINUSE, f"another process serves {path}")
    tmp = f"{path}.{os.getpid()}.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        sock.bind(tmp)
        try:
            os.chmod(tmp, 0o600)
            sock.listen(MAX_CLIENTS)
            os.rename(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except BaseException:
        sock.close()
        raise
    return sock


class AdminServer:
    """Serve `handle` (request -> plain result) on a Unix socket until cancelled."""

    def __init__(
        self,
        path: str,
        handle: Callable[[protocol.Request], Any],
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = path
        self.handle = handle
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.clients = 0
        self.refused = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listens (or raises OSError) before `started`; removes the socket when cancelled."""
        sock = bind(self.path)
        task_status.started()
        await self.serve(sock)

    async def serve(self, sock: socket.socket) -> None:
        """Accept on a socket from `bind` until cancelled, then remove it."""
        ident = os.stat(self.path)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:  # out of descriptors: wait, never end the daemon
                        log.error("admin socket: accept failed: %s", exc)
                        await trio.sleep(1)
                        continue
                    nursery.start_soon(self._connection, stream)
        finally:  # nothing awaited here: the scope is cancelled
            _remove_if_ours(self.path, ident)
            sock.close()

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                pid, uid, _gid = peer_credentials(stream.socket)
            except OSError as exc:
                log.warning("admin socket: cannot read peer credentials: %s", exc)
                return
            if uid != 0:
                self.refused += 1
                log.warning("admin socket: refused connection of uid %d (pid %d)", uid, pid)
                await self._send(stream, protocol.encode_error(REFUSED))
                return
            if self.clients >= self.max_clients:
                await self._send(stream, protocol.encode_error("too many admin connections"))
                return
            self.clients += 1
            try:
                await self._serve(stream)
            finally:
                self.clients -= 1

    async def _serve(self, stream: trio.SocketStream) -> None:
        reader = protocol.FrameReader(protocol.MAX_REQUEST)
        while True:
            data = b""
            with trio.move_on_after(self.idle_timeout):
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if not data:
                return  # closed, or idle too long
            try:
                bodies = reader.feed(data)
            except protocol.ProtocolError as exc:
                await self._send(stream, protocol.encode_error(str(exc)))
                return
            for body in bodies:
                if not await self._send(stream, self._reply(body)):
                    return

    def _reply(self, body: bytes) -> bytes:
        try:
            req = protocol.decode_request(body)
        except protocol.ProtocolError as exc:
            return protocol.encode_error(str(exc))
        try:
            return protocol.encode_reply(self.handle(req))
        except Exception as exc:  # a bug must cost one reply, not the daemon
            log.error(
                "admin socket: %s failed: %s: %s", type(req).__name__, type(exc).__name__, exc
            )
            return protocol.encode_error(f"internal error: {type(exc).__name__}: {exc}")

    async def _send(self, stream: trio.SocketStream, data: bytes) -> bool:
        """False if the client is gone or does not read within the idle timeout."""
        with trio.move_on_after(self.idle_timeout):
            try:
                await stream.send_all(data)
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return False


def _remove_if_ours(path: str, ident: os.stat_result) -> None:
    """Unlink the socket unless another daemon has replaced it meanwhile."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == (ident.st_dev, ident.st_ino):
            os.unlink(path)
    except OSError:
        pass


async def _sampler(src: Sources, hist: History) -> None:
    failing = False
    while True:
        try:
            sample(src, hist, time.monotonic(), time.time())
            failing = False
        except Exception as exc:  # a bug costs the rates, not the daemon; logged once
            if not failing:
                log.error("admin socket: sampling failed: %s: %s", type(exc).__name__, exc)
            failing = True
        await trio.sleep(SAMPLE_INTERVAL)


def start_admin(nursery: trio.Nursery, src: Sources, path: str) -> AdminServer:
    """Create the admin socket (OSError if it cannot be) and serve it and its sampler in
    `nursery`, without yielding: the daemon's startup goes on at once."""
    hist = new_history(src, time.time())
    server = AdminServer(path, lambda req: answer(src, hist, req))
    sock = bind(path)
    src.status.quorum_listeners.append(lambda q: hist.quorum.flip(q, time.time()))
    nursery.start_soon(server.serve, sock)
    nursery.start_soon(_sampler, src, hist)
    return server
