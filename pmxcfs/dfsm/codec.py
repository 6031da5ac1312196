"""DFSM wire headers and message framing (wire-protocol §3, §4.9, §8).

Pure functions over bytes. Decoders validate exactly what the reference requires and raise
`WireError` (a ValueError with a one-line reason) for anything else, so the state machine can
turn a malformed message into its "fatal" path without guessing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

BASE_HEADER = struct.Struct("<HHIII")
NORMAL_HEADER = struct.Struct("<HHIIIQ")
STATE_HEADER = struct.Struct("<HHIIIIIII")
EPOCH = struct.Struct("<IIII")
U64 = struct.Struct("<Q")

BASE_SIZE = BASE_HEADER.size  # 16
NORMAL_SIZE = NORMAL_HEADER.size  # 24
STATE_SIZE = STATE_HEADER.size  # 32
VERIFY_REQUEST_SIZE = 8
VERIFY_SIZE = 40

U32 = 0xFFFFFFFF


class WireError(ValueError):
    """A message that violates the wire format; the text says which rule."""


class MsgType(IntEnum):
    NORMAL = 0
    SYNC_START = 1
    STATE = 2
    UPDATE = 3
    UPDATE_COMPLETE = 4
    VERIFY_REQUEST = 5
    VERIFY = 6


class Mode(IntEnum):
    START = 0
    START_SYNC = 1
    SYNCED = 2
    UPDATE = 3
    LEAVE = 253
    VERSION_ERROR = 254
    ERROR = 255

    @property
    def is_error(self) -> bool:
        return self >= 128


@dataclass(frozen=True, slots=True, order=True)
class Epoch:
    """Sync epoch; compared as its 16 packed bytes, as the reference does."""

    epoch: int = 0
    time: int = 0
    nodeid: int = 0
    pid: int = 0

    def pack(self) -> bytes:
        return EPOCH.pack(self.epoch, self.time & U32, self.nodeid, self.pid)

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> Epoch:
        return cls(*EPOCH.unpack_from(data, offset))


ZERO_EPOCH = Epoch()


@dataclass(frozen=True, slots=True)
class NormalMessage:
    """type 0: application message with the sender's per-process count."""

    subtype: int
    protocol_version: int
    time: int
    count: int
    payload: bytes
    reserved: int = 0

    def encode(self) -> bytes:
        return (
            NORMAL_HEADER.pack(
                MsgType.NORMAL,
                self.subtype,
                self.protocol_version,
                self.time & U32,
                self.reserved,
                self.count,
            )
            + self.payload
        )


@dataclass(frozen=True, slots=True)
class StateMessage:
    """types 1-6 (and unknown types, which the reference treats as state messages)."""

    type: int
    protocol_version: int
    time: int
    epoch: Epoch
    payload: bytes
    subtype: int = 0
    reserved: int = 0

    def encode(self) -> bytes:
        e = self.epoch
        return (
            STATE_HEADER.pack(
                self.type,
                self.subtype,
                self.protocol_version,
                self.time & U32,
                self.reserved,
                e.epoch,
                e.time & U32,
                e.nodeid,
                e.pid,
            )
            + self.payload
        )


Message = NormalMessage | StateMessage


def peek_header(data: bytes) -> tuple[int, int, int, int]:
    """(type, subtype, protocol_version, time) of any message >= 16 bytes."""
    if len(data) < BASE_SIZE:
        raise WireError(f"message too short ({len(data)} < {BASE_SIZE} bytes)")
    mtype, subtype, version, mtime, _reserved = BASE_HEADER.unpack_from(data)
    return mtype, subtype, version, mtime


def decode(data: bytes) -> Message:
    """Split header and payload (§3.5 length rules; protocol_version is the caller's check)."""
    mtype, subtype, version, mtime = peek_header(data)
    if mtype == MsgType.NORMAL:
        if len(data) < NORMAL_SIZE:
            raise WireError(f"NORMAL message too short ({len(data)} < {NORMAL_SIZE} bytes)")
        _t, _s, _v, _tm, reserved, count = NORMAL_HEADER.unpack_from(data)
        return NormalMessage(subtype, version, mtime, count, bytes(data[NORMAL_SIZE:]), reserved)
    if len(data) < STATE_SIZE:
        raise WireError(f"state message type {mtype} too short ({len(data)} < {STATE_SIZE})")
    reserved = BASE_HEADER.unpack_from(data)[4]
    return StateMessage(
        mtype,
        version,
        mtime,
        Epoch.unpack(data, BASE_SIZE),
        bytes(data[STATE_SIZE:]),
        subtype,
        reserved,
    )


def encode_normal(subtype: int, version: int, mtime: int, count: int, payload: bytes) -> bytes:
    return NORMAL_HEADER.pack(MsgType.NORMAL, subtype, version, mtime & U32, 0, count) + payload


def encode_state(
    mtype: MsgType, version: int, mtime: int, epoch: Epoch, payload: bytes = b""
) -> bytes:
    return (
        STATE_HEADER.pack(
            mtype,
            0,
            version,
            mtime & U32,
            0,
            epoch.epoch,
            epoch.time & U32,
            epoch.nodeid,
            epoch.pid,
        )
        + payload
    )


def decode_verify_request(payload: bytes) -> int:
    if len(payload) != VERIFY_REQUEST_SIZE:
        raise WireError(f"VERIFY_REQUEST payload is {len(payload)} bytes, expected 8")
    return int(U64.unpack(payload)[0])


def encode_verify_request(csum_id: int) -> bytes:
    return U64.pack(csum_id)


def decode_verify(payload: bytes) -> tuple[int, bytes]:
    if len(payload) != VERIFY_SIZE:
        raise WireError(f"VERIFY payload is {len(payload)} bytes, expected 40")
    return int(U64.unpack_from(payload)[0]), bytes(payload[8:])


def encode_verify(csum_id: int, csum: bytes) -> bytes:
    if len(csum) != 32:
        raise WireError("VERIFY checksum must be 32 bytes")
    return U64.pack(csum_id) + csum
