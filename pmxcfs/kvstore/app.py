"""The kvstore group's DFSM Application (protocol version 0, status-ipc §2.3-§2.5, §3.5, §3.6).

Every callback works on the node's ClusterStatus and ClusterLog only; nothing here does I/O.
Like C's callbacks, the state step returns the kv re-broadcast (`StateOutcome.sends`) and
entering SYNCED returns the nodeip announce (`synced`); the generic machine sends both.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence

from ..dfsm.codec import WireError
from ..dfsm.machine import DeliverOutcome, Member, StateOutcome
from ..status.clusterlog import ClusterLog, valid_state
from ..status.state import NODEIP_KEY, ClusterStatus, status_key
from .codec import KvSubtype, KvUpdate, decode_kv_update, decode_log_entry

log = logging.getLogger("pmxcfs.kvstore")

UPDATE = int(KvSubtype.UPDATE)
LOG = int(KvSubtype.LOG)
_NO_OP = DeliverOutcome()


def update_payload(key: bytes, value: bytes) -> bytes:
    """KVSTORE_UPDATE payload of a key as C keeps it (up to its first NUL, at most 255
    bytes); the bytes after the key's NUL are zeros (C: stack garbage)."""
    return KvUpdate.make(status_key(key), value).encode()


class KvstoreApp:
    """Status callbacks of one node; `node_ip` is announced until a stored one replaces it."""

    def __init__(self, status: ClusterStatus, clog: ClusterLog, node_ip: str) -> None:
        self.status = status
        self.clog = clog
        self.node_ip = node_ip
        self.local_member: Member = (0, 0)  # kept current by KvstoreDfsm

    # ------------------------------------------------------------------ local operations

    def set_status(self, key: bytes, value: bytes) -> tuple[int, bytes | None]:
        """§2.5 set_status steps 1, 2 and 4: (result, payload to multicast or None).

        The payload is returned even when the local store failed: C sends it anyway (step 3);
        a value too large (-EFBIG) is neither stored nor sent.
        """
        res = self.status.set_status(key, value)
        return res, (None if res == -errno.EFBIG else update_payload(key, value))

    def log_entry(
        self, ident: str | bytes, tag: str | bytes, priority: int, msg: str | bytes,
        pid: int | None = None,
    ) -> bytes | None:  # fmt: skip
        """§3.2: insert a local entry; its KVSTORE_LOG payload, or None (priority >= 8)."""
        e = self.clog.add_local(ident, tag, priority, msg, pid)
        return None if e is None else e.encode(0, 0)

    def synced(self) -> list[tuple[int, bytes]]:
        """§2.4 step 4 (entering SYNCED): re-announce our IP, stored or configured."""
        ip = self.status.node_ips.get(self.status.nodename) or self.node_ip
        _res, payload = self.set_status(NODEIP_KEY, ip.encode() + b"\x00")
        return [] if payload is None else [(UPDATE, payload)]

    # ------------------------------------------------------------------ Application

    def get_state(self) -> bytes | None:
        return self.clog.state_blob()

    def process_state(
        self, states: Sequence[tuple[Member, bytes]], local: Member
    ) -> StateOutcome | None:
        blobs: list[bytes | None] = []
        names: list[str] = []
        for member, blob in states:
            if member == local:
                blobs.append(None)  # merge the live log, not the blob we sent
            elif valid_state(blob):
                blobs.append(blob)
            else:
                log.error("kvstore: bad cluster log state from node %d/%d skipped", *member)
                continue
            names.append(f"node {member[0]}/{member[1]}")
        self.clog.merge(blobs, names)
        rebroadcast = [(UPDATE, update_payload(k, v.data)) for k, v in self.status.kv.items()]
        return StateOutcome(synced=frozenset(m for m, _ in states), sends=rebroadcast)

    def process_update(self, sender: Member, payload: bytes) -> bool:
        log.error("kvstore: UPDATE from node %d/%d but this group never sends any", *sender)
        return False

    def commit(self) -> bool:
        log.error("kvstore: UPDATE_COMPLETE but this group never sends any")
        return False

    def cleanup_sync(self) -> None:
        pass

    def deliver(
        self, sender: Member, subtype: int, count: int, mtime: int, payload: bytes, lowest: bool
    ) -> DeliverOutcome:
        if sender == self.local_member:
            return _NO_OP  # applied locally when it was made
        if subtype == UPDATE:
            self._on_update(sender, payload)
        elif subtype == LOG:
            self._on_log(sender, payload)
        else:
            log.error("kvstore: unknown message type %d from node %d/%d", subtype, *sender)
        return _NO_OP

    def _on_update(self, sender: Member, payload: bytes) -> None:
        try:
            kv = decode_kv_update(payload)
        except WireError as exc:
            log.error("kvstore: cant parse update message from node %d: %s", sender[0], exc)
            return
        self.status.set_remote(sender[0], kv.key, kv.value)

    def _on_log(self, sender: Member, payload: bytes) -> None:
        try:
            entry = decode_log_entry(payload)
        except WireError as exc:
            log.error("kvstore: cant parse log message from node %d: %s", sender[0], exc)
            return
        self.clog.insert(entry)

    def checksum(self) -> bytes | None:
        return None

    def confchg(self, members: Sequence[Member]) -> None:
        self.status.set_online({nodeid for nodeid, _pid in members})
