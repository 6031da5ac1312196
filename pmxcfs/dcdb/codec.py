"""The `pve_dcdb_v1` group on the wire: its name, protocol version and payloads (FUSE
operations, unlock messages, the STATE index and UPDATE entries; wire-protocol §2.1, §5.2,
§5.4, §6.1, §6.6, §8).

Strings keep their raw bytes (without the terminating NUL) so that decode/encode round-trips
exactly; `pmxcfs.cstr.c_str()` gives what a C receiver actually sees (up to the first NUL).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ..constants import DT_DIR, DT_REG
from ..dfsm.codec import WireError

GROUP = b"pve_dcdb_v1\x00"  # joined with length 12: the NUL is part of the name
PROTOCOL_VERSION = 1

FUSE_HEADER = struct.Struct("<IIIII")
FUSE_SIZE = FUSE_HEADER.size  # 20
INDEX_HEADER = struct.Struct("<QQIIII")
INDEX_HEADER_SIZE = INDEX_HEADER.size  # 32
INDEX_RECORD = struct.Struct("<Q32s")
INDEX_RECORD_SIZE = INDEX_RECORD.size  # 40
UPDATE_HEADER = struct.Struct("<QQQIIIIB")
UPDATE_SIZE = UPDATE_HEADER.size  # 41
CSUM_SIZE = 32
UNLOCK_MIN = CSUM_SIZE + 1


class Subtype(IntEnum):
    WRITE = 1
    MKDIR = 2
    DELETE = 3
    RENAME = 4
    CREATE = 5
    MTIME = 6
    UNLOCK_REQUEST = 7
    UNLOCK = 8


FUSE_SUBTYPES = frozenset(range(Subtype.WRITE, Subtype.MTIME + 1))


def _cstring_field(raw: bytes | None) -> bytes:
    return b"" if raw is None else raw + b"\x00"


@dataclass(frozen=True, slots=True)
class FuseOp:
    """Payload of subtypes 1-6. path/to are None when their length field is 0."""

    path: bytes | None
    to: bytes | None = None
    data: bytes = b""
    offset: int = 0
    flags: int = 0

    def encode(self) -> bytes:
        p = _cstring_field(self.path)
        t = _cstring_field(self.to)
        return FUSE_HEADER.pack(len(self.data), self.offset, len(p), len(t), self.flags) + (
            p + t + self.data
        )


def decode_fuse(payload: bytes) -> FuseOp:
    if len(payload) < FUSE_SIZE:
        raise WireError(f"FUSE payload too short ({len(payload)} < {FUSE_SIZE})")
    size, offset, pathlen, tolen, flags = FUSE_HEADER.unpack_from(payload)
    if len(payload) - FUSE_SIZE != size + pathlen + tolen:
        raise WireError(
            f"FUSE payload length {len(payload)} != 20 + size {size} + pathlen {pathlen}"
            f" + tolen {tolen}"
        )
    pos = FUSE_SIZE
    path: bytes | None = None
    to: bytes | None = None
    if pathlen:
        if payload[pos + pathlen - 1] != 0:
            raise WireError("FUSE path is not NUL-terminated")
        path = bytes(payload[pos : pos + pathlen - 1])
        pos += pathlen
    if tolen:
        if payload[pos + tolen - 1] != 0:
            raise WireError("FUSE target path is not NUL-terminated")
        to = bytes(payload[pos : pos + tolen - 1])
        pos += tolen
    return FuseOp(path, to, bytes(payload[pos:]), offset, flags)


@dataclass(frozen=True, slots=True)
class UnlockMsg:
    """Payload of UNLOCK_REQUEST / UNLOCK: lock checksum (hash B) and the lock dir path."""

    csum: bytes
    path: bytes

    def encode(self) -> bytes:
        if len(self.csum) != CSUM_SIZE:
            raise WireError("unlock checksum must be 32 bytes")
        return self.csum + self.path + b"\x00"


def decode_unlock(payload: bytes) -> UnlockMsg:
    if len(payload) < UNLOCK_MIN:
        raise WireError(f"unlock payload too short ({len(payload)} < {UNLOCK_MIN})")
    if payload[-1] != 0:
        raise WireError("unlock path is not NUL-terminated")
    return UnlockMsg(bytes(payload[:CSUM_SIZE]), bytes(payload[CSUM_SIZE:-1]))


@dataclass(frozen=True, slots=True)
class Index:
    """A decoded STATE payload; `raw` is kept because sync compares indexes byte for byte."""

    version: int
    last_inode: int
    writer: int
    mtime: int
    records: tuple[tuple[int, bytes], ...]
    raw: bytes

    @property
    def size(self) -> int:
        return len(self.records)


def decode_index(payload: bytes) -> Index:
    """Strict: bytes field == length (reference check) and == 32 + 40 * size (never read past)."""
    if len(payload) < INDEX_HEADER_SIZE:
        raise WireError(f"index too short ({len(payload)} < {INDEX_HEADER_SIZE})")
    version, last_inode, writer, mtime, size, nbytes = INDEX_HEADER.unpack_from(payload)
    if nbytes != len(payload):
        raise WireError(f"index bytes field {nbytes} != payload length {len(payload)}")
    if INDEX_HEADER_SIZE + INDEX_RECORD_SIZE * size != nbytes:
        raise WireError(f"index of {nbytes} bytes cannot hold {size} entries")
    records = tuple(
        (inode, bytes(digest))
        for inode, digest in INDEX_RECORD.iter_unpack(memoryview(payload)[INDEX_HEADER_SIZE:])
    )
    return Index(version, last_inode, writer, mtime, records, bytes(payload))


def encode_index(
    version: int, last_inode: int, writer: int, mtime: int, records: list[tuple[int, bytes]]
) -> bytes:
    n = len(records)
    head = INDEX_HEADER.pack(version, last_inode, writer, mtime, n, 32 + 40 * n)
    return head + b"".join(INDEX_RECORD.pack(i, d) for i, d in records)


@dataclass(frozen=True, slots=True)
class UpdateEntry:
    """One tree entry as the data leader ships it. `name` excludes the NUL (root: b"")."""

    parent: int
    inode: int
    version: int
    writer: int
    mtime: int
    type: int
    name: bytes
    data: bytes = b""

    def encode(self) -> bytes:
        return (
            UPDATE_HEADER.pack(
                self.parent,
                self.inode,
                self.version,
                self.writer,
                self.mtime,
                len(self.data),
                len(self.name) + 1,
                self.type,
            )
            + self.name
            + b"\x00"
            + self.data
        )


def decode_update(payload: bytes) -> UpdateEntry:
    if len(payload) < UPDATE_SIZE:
        raise WireError(f"UPDATE payload too short ({len(payload)} < {UPDATE_SIZE})")
    parent, inode, version, writer, mtime, size, namelen, etype = UPDATE_HEADER.unpack_from(payload)
    if etype not in (DT_DIR, DT_REG):
        raise WireError(f"UPDATE entry has unknown type {etype}")
    if len(payload) - UPDATE_SIZE != size + namelen:
        raise WireError(
            f"UPDATE payload length {len(payload)} != 41 + namelen {namelen} + size {size}"
        )
    if namelen < 1 or payload[UPDATE_SIZE + namelen - 1] != 0:
        raise WireError("UPDATE entry name is not NUL-terminated")
    if etype == DT_DIR and size:
        raise WireError(f"UPDATE directory entry carries {size} data bytes")
    name = bytes(payload[UPDATE_SIZE : UPDATE_SIZE + namelen - 1])
    return UpdateEntry(
        parent, inode, version, writer, mtime, etype, name, bytes(payload[UPDATE_SIZE + namelen :])
    )
