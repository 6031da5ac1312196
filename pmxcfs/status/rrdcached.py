"""A blocking client of rrdcached's text protocol on its unix socket (for the RRD writer thread).

One command per line, one reply: `<status> <message>`; a negative status is an error, a
positive one counts further lines that follow. Paths are sent absolute, as the reference does;
rrdcached run with `-b <base> -B` (PVE's setup) accepts absolute paths inside its base
(checked against rrdcached 1.7.2: `UPDATE /base/pve2-node/x ...` -> `0 errors, enqueued 1
value(s).`, while a path outside the base, or one with `..` in it, gets `-1 ...: Permission
denied`).
"""

from __future__ import annotations

import socket
from typing import BinaryIO


class RrdcachedError(Exception):
    """rrdcached answered with an error status: the connection itself is fine."""


class ProtocolError(OSError):
    """rrdcached closed the connection or sent something that is not a reply."""


def socket_path(address: str) -> str:
    """`unix:/path` or `/path` -> `/path` (only unix sockets are supported)."""
    return address.removeprefix("unix:")


def escape(field: str) -> str | None:
    """A protocol field: backslash before spaces and backslashes; None if it cannot be sent."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in field):
        return None
    return field.replace("\\", "\\\\").replace(" ", "\\ ")


def _field(path: str) -> str:
    field = escape(path)
    if field is None:
        raise RrdcachedError(f"path {path!r} cannot be sent to rrdcached")
    return field


class RrdcachedClient:
    """One connection; any OSError means it is unusable and must be closed."""

    def __init__(self, path: str, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._reader: BinaryIO | None = None
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            self._reader = self._sock.makefile("rb")
        except OSError:
            self._sock.close()
            raise

    def command(self, line: str) -> str:
        """Send one command; its reply message, or RrdcachedError for a negative status."""
        assert self._reader is not None
        self._sock.sendall(line.encode("utf-8", "surrogateescape") + b"\n", socket.MSG_NOSIGNAL)
        status, msg = self._read_status()
        for _ in range(max(status, 0)):
            self._readline()
        if status < 0:
            raise RrdcachedError(msg)
        return msg

    def update(self, path: str, values: str) -> None:
        """Queue one `<ts>:<v1>:...` update (values hold no spaces: rrdfiles checks them)."""
        self.command(f"UPDATE {_field(path)} {values}")

    def flush(self, path: str) -> None:
        """Write what rrdcached holds for `path` to the file; returns when it is written."""
        self.command(f"FLUSH {_field(path)}")

    def _readline(self) -> str:
        assert self._reader is not None
        raw = self._reader.readline(65536)
        if not raw.endswith(b"\n"):
            raise ProtocolError("connection closed" if not raw else "reply line too long")
        return raw[:-1].decode("utf-8", "replace")

    def _read_status(self) -> tuple[int, str]:
        line = self._readline()
        head, _, msg = line.partition(" ")
        try:
            return int(head), msg
        except ValueError:
            raise ProtocolError(f"unexpected reply {line[:80]!r}") from None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._sock.close()
