"""The blocking side of the admin socket, for `pmxcfs-admin`: one request, one reply, within
a deadline. Every way of not getting an answer is a `DaemonUnavailable` with one line that
says which (not running, refused, stuck), never a hang or a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from typing import Any

from ..constants import RUN_DIR
from . import protocol

DEFAULT_SOCKET = os.path.join(RUN_DIR, protocol.SOCKET_NAME)
DEFAULT_TIMEOUT = 5.0


class DaemonUnavailable(Exception):
    """No running pmxcfs answered; the text is the one line the user sees."""


def call(
    req: protocol.Request, path: str = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT
) -> Any:
    """Send `req`, return the daemon's result; RemoteError if it refused the request."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise DaemonUnavailable(f"pmxcfs is not running (no admin socket {path})") from None
        except ConnectionRefusedError:
            raise DaemonUnavailable(f"pmxcfs is not running (nothing listens on {path})") from None
        except PermissionError:
            raise DaemonUnavailable(f"permission denied on {path} (only root may ask)") from None
        except (TimeoutError, BlockingIOError):
            raise _stuck(path, timeout) from None
        except OSError as exc:
            raise DaemonUnavailable(f"cannot connect to {path}: {_reason(exc)}") from None
        try:
            # a refusal may come first, and then the daemon hangs up: read that answer
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(protocol.encode_request(req))
            reader = protocol.FrameReader(protocol.MAX_REPLY)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                data = sock.recv(1 << 20)
                if not data:
                    raise DaemonUnavailable(
                        f"pmxcfs closed the connection on {path} without a reply"
                    )
                bodies = reader.feed(data)
                if bodies:
                    return protocol.decode_reply(bodies[0])
        except TimeoutError:
            raise _stuck(path, timeout) from None
        except protocol.ProtocolError as exc:
            raise DaemonUnavailable(f"bad reply on {path}: {exc}") from None
        except OSError as exc:
            raise DaemonUnavailable(f"connection to {path} failed: {_reason(exc)}") from None
    finally:
        sock.close()


def _stuck(path: str, timeout: float) -> DaemonUnavailable:
    return DaemonUnavailable(f"pmxcfs did not answer within {timeout:g} s on {path} (stuck?)")


def _reason(exc: OSError) -> str:
    if exc.errno is not None:
        return f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc)
