"""The `pve_kvstore_v1` group on the wire: its name, protocol version and payloads
(status-ipc §2.1, §2.3, §3.1, §3.3), decode/encode only.

The status layer owns what these mean; this module exists so that the group's captures can be
checked at the byte level and so that a receiver never indexes past a hostile buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from ..cstr import c_str
from ..dfsm.codec import WireError

GROUP = b"pve_kvstore_v1\x00"  # joined with length 15: the NUL is part of the name
PROTOCOL_VERSION = 0

KEY_FIELD = 256
LOG_HEADER = struct.Struct("<IIIIQQIBBBBI")  # 44 bytes; strings start here
LOG_FIXED = LOG_HEADER.size + 4  # the C struct is 48 bytes: 4 trailing bytes after msg
LOG_MAX = 4096
CLOG_HEADER = struct.Struct("<II")


class KvSubtype(IntEnum):
    UPDATE = 1
    UPDATE_COMPLETE = 2
    LOG = 3


@dataclass(frozen=True, slots=True)
class KvUpdate:
    """KVSTORE_UPDATE: a 256-byte key field (C leaves stack garbage after the NUL) + value."""

    key_field: bytes
    value: bytes

    @property
    def key(self) -> bytes:
        return c_str(self.key_field)

    @classmethod
    def make(cls, key: bytes, value: bytes) -> KvUpdate:
        if len(key) > KEY_FIELD - 1 or b"\x00" in key:
            raise WireError("kvstore key too long or contains NUL")
        return cls(key.ljust(KEY_FIELD, b"\x00"), value)

    def encode(self) -> bytes:
        return self.key_field + self.value


def decode_kv_update(payload: bytes) -> KvUpdate:
    if len(payload) < KEY_FIELD:
        raise WireError(f"kvstore update too short ({len(payload)} < {KEY_FIELD})")
    if b"\x00" not in payload[:KEY_FIELD]:
        raise WireError("kvstore key is not NUL-terminated")
    return KvUpdate(bytes(payload[:KEY_FIELD]), bytes(payload[KEY_FIELD:]))


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One cluster-log entry; strings exclude their NUL; `pad` is the 4 trailing bytes."""

    uid: int
    time: int
    node_digest: int
    ident_digest: int
    pid: int
    priority: int
    node: bytes
    ident: bytes
    tag: bytes
    msg: bytes
    prev: int = 0
    next: int = 0
    pad: bytes = b"\x00\x00\x00\x00"

    @property
    def size(self) -> int:
        return LOG_FIXED + len(self.node) + len(self.ident) + len(self.tag) + len(self.msg) + 4

    def encode(self, prev: int | None = None, next_: int | None = None) -> bytes:
        return (
            LOG_HEADER.pack(
                self.prev if prev is None else prev,
                self.next if next_ is None else next_,
                self.uid,
                self.time,
                self.node_digest,
                self.ident_digest,
                self.pid,
                self.priority,
                len(self.node) + 1,
                len(self.ident) + 1,
                len(self.tag) + 1,
                len(self.msg) + 1,
            )
            + b"\x00".join((self.node, self.ident, self.tag, self.msg))
            + b"\x00"
            + self.pad
        )


def decode_log_entry(buf: bytes | bytearray, offset: int = 0, limit: int | None = None) -> LogEntry:
    """Parse one entry at offset; with limit=None the entry must fill buf exactly (wire form)."""
    end = len(buf) if limit is None else limit
    if end - offset < LOG_FIXED:
        raise WireError(f"log entry too short ({end - offset} < {LOG_FIXED})")
    (prev, nxt, uid, tm, nd, idg, pid, prio, nl, il, tl, ml) = LOG_HEADER.unpack_from(buf, offset)
    if min(nl, il, tl, ml) < 1:
        raise WireError("log entry has an empty string field")
    size = LOG_FIXED + nl + il + tl + ml
    if (limit is None and end - offset != size) or end - offset < size:
        raise WireError(f"log entry length {end - offset} does not match its fields ({size})")
    pos = offset + LOG_HEADER.size
    fields: list[bytes] = []
    for n in (nl, il, tl, ml):
        if buf[pos + n - 1] != 0:
            raise WireError("log entry string is not NUL-terminated")
        fields.append(bytes(buf[pos : pos + n - 1]))
        pos += n
    node, ident, tag, msg = fields
    return LogEntry(
        uid, tm, nd, idg, pid, prio, node, ident, tag, msg, prev, nxt, bytes(buf[pos : pos + 4])
    )


@dataclass(frozen=True, slots=True)
class ClogState:
    """The cluster-log ring as sent in a STATE: entries oldest first."""

    size: int
    entries: tuple[LogEntry, ...]

    def encode(self) -> bytes:
        """The sorted contiguous layout the reference sends (status-ipc §3.3)."""
        buf = bytearray(self.size)
        pos = 8
        prev = 0
        cpos = 0
        for e in self.entries:
            real = (e.size + 7) & ~7
            if pos + real >= self.size:
                break
            buf[pos : pos + e.size] = e.encode(prev, pos + real)
            prev = cpos = pos
            pos += real
        CLOG_HEADER.pack_into(buf, 0, self.size, cpos)
        return bytes(buf)


def iter_clog(payload: bytes | bytearray) -> Iterator[tuple[int, LogEntry]]:
    """Walk a ring newest to oldest (status-ipc §3.3): (offset, entry) pairs.

    Bounds-checked where C is not: raises WireError at the first offset or entry that leaves
    the buffer, is malformed, or loops; everything yielded before that is sound.
    """
    if len(payload) <= 8:
        raise WireError(f"clog state too short ({len(payload)})")
    size, cpos = CLOG_HEADER.unpack_from(payload)
    if size != len(payload):
        raise WireError(f"clog size field {size} != payload length {len(payload)}")
    pos = cpos
    seen = 0
    while pos != 0 and (pos <= cpos or pos > cpos + LOG_MAX):
        if pos < 8 or pos + LOG_FIXED > size:
            raise WireError(f"clog entry offset {pos} out of bounds")
        e = decode_log_entry(payload, pos, min(size, pos + LOG_MAX))
        seen += 1
        if seen > size // LOG_FIXED:
            raise WireError("clog entry chain loops")
        yield pos, e
        if e.prev == 0 or pos < e.prev <= cpos:
            return
        pos = e.prev


def decode_clog(payload: bytes) -> ClogState:
    """Walk a ring from newest to oldest with bounds checks; return entries oldest first."""
    out = [e for _pos, e in iter_clog(payload)]
    out.reverse()
    return ClogState(len(payload), tuple(out))
