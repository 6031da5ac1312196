"""Admin socket protocol: length-framed msgpack requests and replies, validated, no I/O.

A frame is a 4-byte big-endian body length and a msgpack body. A request is a map
`{"v": 1, "op": ...}` with the operation's arguments; a reply is `{"v": 1, "ok": true,
"result": ...}` or `{"v": 1, "ok": false, "error": "one line"}`. Both sides refuse oversized
frames before reading them, so a confused peer cannot make the other allocate much.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1
SOCKET_NAME = "admin.sock"  # in the daemon's run directory
HEADER = struct.Struct(">I")
MAX_REQUEST = 64 * 1024  # requests are a few bytes
MAX_REPLY = 16 * 1024 * 1024  # the whole cluster log fits many times


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol; the text says how (one line)."""


class RemoteError(Exception):
    """The daemon understood the request and refused it; the text is its one-line reason."""


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Status:
    pass


@dataclass(frozen=True, slots=True)
class Log:
    max_entries: int = 0  # 0: every entry the ring holds


@dataclass(frozen=True, slots=True)
class Debug:
    on: bool | None = None  # None: only ask


Request = Ping | Status | Log | Debug


# ---------------------------------------------------------------------------- frames


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Bytes in, complete frame bodies out; raises ProtocolError on an oversized frame."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 between frames)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > self.max_size:
                raise ProtocolError(f"frame of {size} bytes exceeds the limit of {self.max_size}")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[HEADER.size : end]))
            del self._buf[:end]
        return out


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _unpack(body: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, TypeError) as exc:  # msgpack's errors are ValueErrors
        raise ProtocolError(f"not a msgpack message: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is a {type(obj).__name__}, not a map")
    v = obj.get("v")
    if v != VERSION:
        raise ProtocolError(f"unsupported protocol version {v!r} (this side speaks {VERSION})")
    return obj


# ---------------------------------------------------------------------------- requests


def encode_request(req: Request) -> bytes:
    """The framed request."""
    msg: dict[str, Any] = {"v": VERSION}
    if isinstance(req, Ping):
        msg["op"] = "ping"
    elif isinstance(req, Status):
        msg["op"] = "status"
    elif isinstance(req, Log):
        msg["op"] = "log"
        msg["max"] = req.max_entries
    else:
        msg["op"] = "debug"
        if req.on is not None:
            msg["on"] = req.on
    return frame(_pack(msg))


def _int(msg: dict[str, Any], key: str, default: int, limit: int) -> int:
    v = msg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
        raise ProtocolError(f"'{key}' must be an integer from 0 to {limit}")
    return v


def decode_request(body: bytes) -> Request:
    """A request body (without its header) as a Request; ProtocolError says what is wrong."""
    msg = _unpack(body)
    op = msg.get("op")
    known: dict[str, set[str]] = {"ping": set(), "status": set(), "log": {"max"}, "debug": {"on"}}
    if not isinstance(op, str) or op not in known:
        raise ProtocolError(f"unknown operation {op!r}")
    extra = set(msg) - {"v", "op"} - known[op]
    if extra:
        raise ProtocolError(f"unexpected argument(s) for {op}: {', '.join(sorted(extra))}")
    if op == "ping":
        return Ping()
    if op == "status":
        return Status()
    if op == "log":
        return Log(_int(msg, "max", 0, 1 << 20))
    on = msg.get("on")
    if on is not None and not isinstance(on, bool):
        raise ProtocolError("'on' must be a boolean")
    return Debug(on)


# ---------------------------------------------------------------------------- replies


def encode_reply(result: Any) -> bytes:
    """A framed success reply; `result` must be plain data (maps with str keys)."""
    return frame(_pack({"v": VERSION, "ok": True, "result": result}))


def encode_error(message: str) -> bytes:
    return frame(_pack({"v": VERSION, "ok": False, "error": message}))


def decode_reply(body: bytes) -> Any:
    """The result of a reply body; RemoteError for a refusal, ProtocolError for garbage."""
    msg = _unpack(body)
    ok = msg.get("ok")
    if ok is True and "result" in msg:
        return msg["result"]
    if ok is False and isinstance(msg.get("error"), str):
        raise RemoteError(msg["error"])
    raise ProtocolError("reply is neither a result nor an error")
