"""The reference's SHA-256 digests and the state index (wire-protocol §6.1, §6.9).

Over anything shaped like a tree entry (`Digestible`): the tree uses these digests, so this
module must not know the tree."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Protocol


class Digestible(Protocol):
    """The fields of a tree entry the digests cover."""

    @property
    def inode(self) -> int: ...
    @property
    def parent(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def writer(self) -> int: ...
    @property
    def mtime(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def type(self) -> int: ...
    @property
    def name_bytes(self) -> bytes: ...
    @property
    def data(self) -> bytes: ...

_DIGEST_FIELDS = struct.Struct("<QIIIBQ")
_LOCK_FIELDS = struct.Struct("<QQIIIBQ")
INDEX_HEADER = struct.Struct("<QQIIII")
INDEX_RECORD = struct.Struct("<Q32s")


class Hollow(bytes):
    """Zero bytes the reference holds as a size without a buffer (quirk Q1, wire §10.5).

    An empty file truncated upward keeps only its size in C: its digests hash no payload,
    and its next write starts from nothing (the size becomes offset+len).  We serve these
    bytes as zeros (C crashes reading them) but keep that state in the type of the content,
    so it travels with a tree row; a database or an UPDATE carries plain zeros.
    """

    __slots__ = ()


def _payload(e: Digestible) -> bytes:
    if e.type != 8 or not e.data or isinstance(e.data, Hollow):
        return b""
    return e.data


def entry_digest(e: Digestible) -> bytes:
    """Digest A: index record digest (no inode)."""
    h = hashlib.sha256(_DIGEST_FIELDS.pack(e.version, e.writer, e.mtime, e.size, e.type, e.parent))
    h.update(e.name_bytes)
    h.update(_payload(e))
    return h.digest()


def lock_input(e: Digestible) -> bytes:
    return (
        _LOCK_FIELDS.pack(e.inode, e.version, e.writer, e.mtime, e.size, e.type, e.parent)
        + e.name_bytes
        + _payload(e)
    )


def lock_checksum(e: Digestible) -> bytes:
    """Digest B: identity of a lock directory."""
    return hashlib.sha256(lock_input(e)).digest()


def verify_checksum(entries: Iterable[Digestible]) -> bytes:
    """Digest C: one SHA-256 over every entry's B input in ascending inode order."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda x: x.inode):
        h.update(lock_input(e))
    return h.digest()


def encode_index(version: int, writer: int, mtime: int, entries: Iterable[Digestible]) -> bytes:
    """The STATE payload: header plus (inode, digest A) sorted by inode, root included."""
    ordered = sorted(entries, key=lambda x: x.inode)
    count = len(ordered)
    last_inode = ordered[-1].inode if ordered else 0
    parts = [INDEX_HEADER.pack(version, last_inode, writer, mtime, count, 32 + 40 * count)]
    parts.extend(INDEX_RECORD.pack(e.inode, entry_digest(e)) for e in ordered)
    return b"".join(parts)
