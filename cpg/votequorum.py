"""corosync vote counts (libvotequorum) for status output.

pmxcfs-style status only needs expected/total votes and the quorum threshold, so this
wraps ``votequorum_getinfo`` and nothing else (no tracking, no qdevice calls).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._base import Service
from ._corosync import ffi, lib
from .errors import CS_OK, error_for

#: ``votequorum_info.flags`` bit: this node is quorate.
INFO_QUORATE: int = lib.VOTEQUORUM_INFO_QUORATE
#: ``votequorum_info.flags`` bit: a quorum device casts its votes for this partition.
INFO_QDEVICE_CAST_VOTE: int = lib.VOTEQUORUM_INFO_QDEVICE_CAST_VOTE


@dataclass(frozen=True, slots=True)
class VotequorumInfo:
    node_id: int
    node_state: int
    node_votes: int
    node_expected_votes: int
    highest_expected: int
    total_votes: int
    quorum: int
    flags: int
    qdevice_votes: int
    qdevice_name: str

    @property
    def quorate(self) -> bool:
        return bool(self.flags & INFO_QUORATE)

    @property
    def qdevice_votes_cast(self) -> int:
        """Votes the quorum device gives this partition (0 when it casts none)."""
        return self.qdevice_votes if self.flags & INFO_QDEVICE_CAST_VOTE else 0


class Votequorum(Service):
    """A libvotequorum handle used for synchronous queries only."""

    _kind = "votequorum"

    def __init__(self) -> None:
        super().__init__()
        callbacks = ffi.new("votequorum_callbacks_t *")  # zeroed: no notifications
        hp = ffi.new("votequorum_handle_t *")
        rc = lib.votequorum_initialize(hp, callbacks)
        if rc != CS_OK:
            raise error_for(rc, "votequorum_initialize")
        self._handle = int(hp[0])

    def _lib_finalize(self, handle: int) -> None:
        lib.votequorum_finalize(handle)

    def _lib_dispatch(self, handle: int, flags: int) -> int:  # pragma: no cover
        raise NotImplementedError("votequorum is used for queries only")

    def getinfo(self, nodeid: int) -> VotequorumInfo:
        """``votequorum_getinfo`` for *nodeid* (use our own nodeid for the local view)."""
        info = ffi.new("struct votequorum_info *")
        rc = lib.votequorum_getinfo(self._h("votequorum_getinfo"), nodeid, info)
        self._check(rc, "votequorum_getinfo")
        return VotequorumInfo(
            int(info.node_id), int(info.node_state), int(info.node_votes),
            int(info.node_expected_votes), int(info.highest_expected), int(info.total_votes),
            int(info.quorum), int(info.flags), int(info.qdevice_votes),
            ffi.string(info.qdevice_name).decode(errors="replace"),
        )  # fmt: skip
